//! Socket activation (sd_listen_fds(3)): listening sockets systemd opened for
//! lbd (fd 3 onwards, counted by `LISTEN_FDS`, named by `LISTEN_FDNAMES`),
//! matched to frontends so the daemon serves them instead of binding.
//!
//! With a socket unit, systemd owns the listening socket across restarts and
//! upgrades: connections arriving while lbd restarts wait in the kernel's
//! accept queue instead of being refused.
//!
//! Matching: a socket whose `FileDescriptorName=` is a frontend's name belongs
//! to that frontend; any other socket belongs to the one frontend listening on
//! its address. A frontend skips binding the listen addresses its inherited
//! sockets already cover (`[::]:6443` from `ListenStream=6443` covers
//! `0.0.0.0:6443`) and binds the rest as usual.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::{Socket, Type};
use tracing::warn;

use crate::config;

/// The first inherited descriptor (`SD_LISTEN_FDS_START`): after stdin, stdout, stderr.
pub const LISTEN_FDS_START: RawFd = 3;

/// Accept queue for an inherited socket that must listen again: lbd.socket's
/// `Backlog=` and the frontends' default `backlog`.
const RELISTEN_BACKLOG: i32 = 4096;

/// Why the inherited sockets cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// A `LISTEN_*` variable is malformed.
    #[error("socket activation: {var}={value:?} is invalid: {why}")]
    BadEnvironment {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// An inherited descriptor is not a listening TCP socket.
    #[error(
        "socket activation: fd {fd} ({name:?}) {problem}; lbd takes listening TCP sockets only (ListenStream= with a port or IP:port, Accept=no)"
    )]
    NotTcpListener {
        /// The descriptor number.
        fd: RawFd,
        /// Its `FileDescriptorName=`.
        name: String,
        /// What it is instead.
        problem: String,
    },
    /// Inherited sockets that belong to no frontend.
    #[error(
        "socket activation: {} (set FileDescriptorName= to the frontend's name, or ListenStream= to one of its listen addresses)",
        UnmatchedList(.0)
    )]
    Unmatched(Vec<UnmatchedSocket>),
}

/// An inherited socket no frontend claims, for the error message.
#[derive(Debug)]
pub struct UnmatchedSocket {
    /// The descriptor number.
    pub fd: RawFd,
    /// Its `FileDescriptorName=`.
    pub name: String,
    /// Its bound address.
    pub local: SocketAddr,
    /// Frontends it could belong to by address (more than one: ambiguous).
    pub candidates: Vec<String>,
}

struct UnmatchedList<'a>(&'a [UnmatchedSocket]);

impl fmt::Display for UnmatchedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, socket) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(
                f,
                "inherited fd {} ({:?}, {}) ",
                socket.fd, socket.name, socket.local
            )?;
            if socket.candidates.is_empty() {
                f.write_str("matches no frontend by name or listen address")?;
            } else {
                write!(
                    f,
                    "is ambiguous: frontends {} all listen on its port",
                    socket.candidates.join(", ")
                )?;
            }
        }
        Ok(())
    }
}

/// One listening socket handed over by the service manager.
#[derive(Debug)]
pub struct InheritedSocket {
    /// The descriptor number it arrived as.
    pub fd: RawFd,
    /// Its `FileDescriptorName=` (`unknown` when systemd gave none).
    pub name: String,
    /// The address it is bound to.
    pub local: SocketAddr,
    v6_only: bool,
    listener: TcpListener,
}

impl InheritedSocket {
    /// Checks that `fd` is a listening TCP socket and makes it non-blocking
    /// and close-on-exec, ready for tokio.
    fn new(fd: RawFd, name: String, owned: OwnedFd) -> Result<InheritedSocket, ActivationError> {
        let socket = Socket::from(owned);
        let problem = |problem: String| ActivationError::NotTcpListener {
            fd,
            name: name.clone(),
            problem,
        };
        let local = socket
            .local_addr()
            .map_err(|e| problem(format!("has no address: {e}")))?
            .as_socket()
            .ok_or_else(|| problem("is not an IP socket (a unix socket?)".into()))?;
        if socket.r#type().map_err(|e| problem(e.to_string()))? != Type::STREAM {
            return Err(problem(format!("on {local} is not a stream socket")));
        }
        if !socket.is_listener().map_err(|e| problem(e.to_string()))? {
            if socket.peer_addr().is_ok() {
                return Err(problem(format!(
                    "on {local} is a connection, not a listening socket (Accept=yes?)"
                )));
            }
            // A previous lbd paused it (no server left, see `pausable`) and
            // died before resuming: the socket systemd holds stopped
            // listening with it. Listen again rather than refuse to start.
            socket
                .listen(RELISTEN_BACKLOG)
                .map_err(|e| problem(format!("on {local} is not listening: {e}")))?;
            warn!(fd, name = %name, address = %local, "inherited socket was not listening (a previous lbd paused it); listening again");
        }
        let v6_only = local.is_ipv6() && socket.only_v6().map_err(|e| problem(e.to_string()))?;
        socket
            .set_nonblocking(true)
            .and_then(|()| socket.set_cloexec(true))
            .map_err(|e| problem(e.to_string()))?;
        Ok(InheritedSocket {
            fd,
            name,
            local,
            v6_only,
            listener: socket.into(),
        })
    }

    /// The `listen` address this socket stands for: the first one it covers,
    /// else its own address (a socket matched by name alone).
    pub fn configured_as(&self, listen: &[SocketAddr]) -> SocketAddr {
        listen
            .iter()
            .copied()
            .find(|&addr| self.covers(addr))
            .unwrap_or(self.local)
    }

    /// Whether this socket serves the configured address `addr`.
    pub fn serves(&self, addr: SocketAddr) -> bool {
        self.covers(addr)
    }

    /// The listening socket, to hand to the accept loop.
    pub fn into_listener(self) -> TcpListener {
        self.listener
    }

    /// Whether this socket already takes connections for `addr`.
    fn covers(&self, addr: SocketAddr) -> bool {
        covers(self.local, self.v6_only, addr)
    }

    /// The index of the frontend this socket belongs to, or the names of the
    /// frontends it could belong to when that is not exactly one.
    fn frontend_among(&self, frontends: &[config::Frontend]) -> Result<usize, Vec<String>> {
        if let Some(index) = frontends.iter().position(|f| f.name == self.name) {
            return Ok(index);
        }
        let exact: Vec<usize> = positions(frontends, |f| f.listen.contains(&self.local));
        if let [index] = exact[..] {
            return Ok(index);
        }
        let covering = positions(frontends, |f| f.listen.iter().any(|&a| self.covers(a)));
        match covering[..] {
            [index] => Ok(index),
            _ => Err(covering
                .iter()
                .map(|&i| frontends[i].name.clone())
                .collect()),
        }
    }
}

fn positions(
    frontends: &[config::Frontend],
    wanted: impl Fn(&config::Frontend) -> bool,
) -> Vec<usize> {
    (0..frontends.len())
        .filter(|&i| wanted(&frontends[i]))
        .collect()
}

/// Whether a socket bound to `local` takes the connections a socket bound to
/// `addr` would (binding `addr` beside it would fail with EADDRINUSE): same
/// port, and the same IP or a wildcard of its family; `[::]` without
/// IPV6_V6ONLY also takes IPv4.
fn covers(local: SocketAddr, v6_only: bool, addr: SocketAddr) -> bool {
    if local.port() != addr.port() || local.port() == 0 {
        return false;
    }
    if local.ip() == addr.ip() {
        return true;
    }
    local.ip().is_unspecified()
        && (local.is_ipv4() == addr.is_ipv4() || (local.is_ipv6() && !v6_only && addr.is_ipv4()))
}

/// The listening sockets this process was started with; empty (the default)
/// without socket activation, when every address is bound as usual.
#[derive(Debug, Default)]
pub struct InheritedListeners {
    sockets: Vec<InheritedSocket>,
}

impl InheritedListeners {
    /// Takes the sockets `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` announce
    /// and unsets those variables, as sd_listen_fds(3) with
    /// `unset_environment` does, so no child inherits them.
    ///
    /// # Safety
    /// Call it once, before any other thread exists: it changes the
    /// environment (see [`std::env::remove_var`]) and takes ownership of
    /// descriptors 3 and up, which nothing else in the process may own.
    pub unsafe fn take_from_env() -> Result<InheritedListeners, ActivationError> {
        let vars = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"].map(std::env::var);
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // SAFETY: the caller guarantees no other thread reads or writes
            // the environment now.
            unsafe { std::env::remove_var(name) };
        }
        let [pid, fds, names] = vars.each_ref().map(|v| v.as_deref().ok());
        let Some(names) = names_from_env(pid, fds, names, std::process::id())? else {
            return Ok(InheritedListeners::default());
        };
        let mut sockets = Vec::with_capacity(names.len());
        for (fd, name) in (LISTEN_FDS_START..).zip(names) {
            // SAFETY: F_GETFD only reads the flags of a descriptor number.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(ActivationError::NotTcpListener {
                    fd,
                    name,
                    problem: "is not open".into(),
                });
            }
            // SAFETY: LISTEN_PID names this process, so the manager passed it
            // descriptors 3.. for it to own; the fd is open (checked above),
            // and the caller guarantees nothing else has taken it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            sockets.push(InheritedSocket::new(fd, name, owned)?);
        }
        Ok(InheritedListeners { sockets })
    }

    /// Inherited sockets, for tests and callers that already hold them.
    pub fn from_sockets(sockets: Vec<InheritedSocket>) -> InheritedListeners {
        InheritedListeners { sockets }
    }

    /// Whether no socket was inherited.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Hands each socket to its frontend (config order). Every socket must
    /// find one: a socket nobody serves would queue connections forever.
    pub fn assign(self, frontends: &[config::Frontend]) -> Result<Assignment, ActivationError> {
        let mut assignment = Assignment {
            sockets: frontends.iter().map(|_| Vec::new()).collect(),
            covered: frontends.iter().map(|_| Vec::new()).collect(),
        };
        let mut unmatched = Vec::new();
        for socket in self.sockets {
            match socket.frontend_among(frontends) {
                Ok(index) => {
                    let covered = frontends[index]
                        .listen
                        .iter()
                        .filter(|&&a| socket.covers(a));
                    assignment.covered[index].extend(covered);
                    assignment.sockets[index].push(socket);
                }
                Err(candidates) => unmatched.push(UnmatchedSocket {
                    fd: socket.fd,
                    name: socket.name,
                    local: socket.local,
                    candidates,
                }),
            }
        }
        if unmatched.is_empty() {
            Ok(assignment)
        } else {
            Err(ActivationError::Unmatched(unmatched))
        }
    }
}

/// Which inherited sockets each frontend serves, by config index.
#[derive(Debug)]
pub struct Assignment {
    sockets: Vec<Vec<InheritedSocket>>,
    covered: Vec<Vec<SocketAddr>>,
}

impl Assignment {
    /// Whether frontend `index` already has a socket for `addr`, so it must
    /// not bind it.
    pub fn covers(&self, index: usize, addr: SocketAddr) -> bool {
        self.covered
            .get(index)
            .is_some_and(|covered| covered.contains(&addr))
    }

    /// Takes the inherited sockets of frontend `index`.
    pub fn take(&mut self, index: usize) -> Vec<InheritedSocket> {
        self.sockets
            .get_mut(index)
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

/// The descriptor names announced for this process, one per fd, or `None`
/// when the variables are absent or meant for another process (a wrapper
/// that exec'd us without clearing them).
fn names_from_env(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    own_pid: u32,
) -> Result<Option<Vec<String>>, ActivationError> {
    let bad = |var, value: &str, why: &str| ActivationError::BadEnvironment {
        var,
        value: value.to_owned(),
        why: why.to_owned(),
    };
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .parse()
        .map_err(|_| bad("LISTEN_PID", pid, "not a process id"))?;
    if pid != own_pid {
        return Ok(None);
    }
    let count: usize = fds
        .parse()
        .map_err(|_| bad("LISTEN_FDS", fds, "not a count"))?;
    if count == 0 {
        return Ok(None);
    }
    match names {
        None => Ok(Some(vec!["unknown".to_owned(); count])),
        Some(value) => {
            let names: Vec<String> = value.split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err(bad(
                    "LISTEN_FDNAMES",
                    value,
                    &format!("{} names for LISTEN_FDS={count}", names.len()),
                ));
            }
            Ok(Some(names))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Duration;

    use super::*;

    fn frontend(name: &str, listen: &[&str]) -> config::Frontend {
        config::Frontend {
            name: name.into(),
            listen: listen.iter().map(|a| a.parse().unwrap()).collect(),
            backend: "pool".into(),
            max_connections: 10,
            max_connections_per_source: None,
            backlog: 16,
            idle_timeout: Duration::from_secs(1),
            fin_timeout: Duration::from_secs(1),
            routes: Vec::new(),
            inspect_timeout: Duration::from_secs(5),
            accept_proxy: None,
            ready_file: None,
        }
    }

    fn listening(name: &str, fd: RawFd) -> InheritedSocket {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        InheritedSocket::new(fd, name.into(), listener.into()).unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn env_names_each_descriptor_or_defaults_to_unknown() {
        let names = names_from_env(Some("7"), Some("2"), Some("api:etcd"), 7).unwrap();
        assert_eq!(names, Some(vec!["api".to_owned(), "etcd".to_owned()]));
        let names = names_from_env(Some("7"), Some("1"), None, 7).unwrap();
        assert_eq!(names, Some(vec!["unknown".to_owned()]));
    }

    #[test]
    fn env_for_another_process_or_absent_is_no_activation() {
        assert!(
            names_from_env(Some("8"), Some("1"), None, 7)
                .unwrap()
                .is_none()
        );
        assert!(names_from_env(None, Some("1"), None, 7).unwrap().is_none());
        assert!(names_from_env(Some("7"), None, None, 7).unwrap().is_none());
        assert!(
            names_from_env(Some("7"), Some("0"), None, 7)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn malformed_env_is_an_error_naming_the_variable() {
        let err = names_from_env(Some("7"), Some("2"), Some("api"), 7).unwrap_err();
        assert!(err.to_string().contains("LISTEN_FDNAMES=\"api\""), "{err}");
        assert!(
            err.to_string().contains("1 names for LISTEN_FDS=2"),
            "{err}"
        );
        let err = names_from_env(Some("7"), Some("x"), None, 7).unwrap_err();
        assert!(err.to_string().contains("LISTEN_FDS"), "{err}");
        let err = names_from_env(Some("me"), Some("1"), None, 7).unwrap_err();
        assert!(err.to_string().contains("LISTEN_PID"), "{err}");
    }

    #[test]
    fn coverage_follows_what_the_kernel_would_refuse_to_bind() {
        let any6 = addr("[::]:6443");
        assert!(covers(any6, false, addr("0.0.0.0:6443")));
        assert!(covers(any6, false, addr("10.0.0.1:6443")));
        assert!(covers(any6, false, addr("[::1]:6443")));
        assert!(!covers(any6, true, addr("0.0.0.0:6443")));
        assert!(!covers(any6, false, addr("0.0.0.0:6444")));
        let any4 = addr("0.0.0.0:6443");
        assert!(covers(any4, false, addr("127.0.0.1:6443")));
        assert!(!covers(any4, false, addr("[::]:6443")));
        let one = addr("127.0.0.1:6443");
        assert!(covers(one, false, one));
        assert!(!covers(one, false, addr("0.0.0.0:6443")));
        assert!(!covers(one, false, addr("127.0.0.2:6443")));
        assert!(!covers(addr("127.0.0.1:0"), false, addr("127.0.0.1:0")));
    }

    #[test]
    fn a_socket_goes_to_the_frontend_it_is_named_after() {
        let socket = listening("etcd", 3);
        let port = socket.local.port();
        let frontends = [
            frontend("api", &[&format!("127.0.0.1:{port}")]),
            frontend("etcd", &["127.0.0.1:2379"]),
        ];
        let mut assignment = InheritedListeners::from_sockets(vec![socket])
            .assign(&frontends)
            .unwrap();
        // Named for etcd, so api keeps binding its own address…
        assert!(!assignment.covers(0, frontends[0].listen[0]));
        assert!(!assignment.covers(1, frontends[1].listen[0]));
        assert!(assignment.take(0).is_empty());
        assert_eq!(assignment.take(1).len(), 1);
    }

    #[test]
    fn an_unnamed_socket_goes_to_the_frontend_listening_on_its_address() {
        let socket = listening("unknown", 3);
        let local = socket.local;
        let frontends = [
            frontend("api", &["127.0.0.1:1", &local.to_string()]),
            frontend("etcd", &["127.0.0.1:2"]),
        ];
        let mut assignment = InheritedListeners::from_sockets(vec![socket])
            .assign(&frontends)
            .unwrap();
        let mut taken = assignment.take(0);
        assert!(assignment.covers(0, local), "still known once taken");
        assert!(!assignment.covers(0, addr("127.0.0.1:1")));
        assert_eq!(taken.len(), 1);
        let listener = taken.pop().unwrap().into_listener();
        assert_eq!(listener.local_addr().unwrap(), local);
    }

    #[test]
    fn unmatched_and_ambiguous_sockets_are_named_in_the_error() {
        let stray = listening("stray", 3);
        let stray_addr = stray.local;
        let frontends = [frontend("api", &["127.0.0.1:1"])];
        let err = InheritedListeners::from_sockets(vec![stray])
            .assign(&frontends)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("fd 3 (\"stray\", {stray_addr})")),
            "{err}"
        );
        assert!(err.contains("matches no frontend"), "{err}");
        assert!(err.contains("FileDescriptorName="), "{err}");

        let shared = socket2::Socket::new(socket2::Domain::IPV4, Type::STREAM, None).unwrap();
        shared.bind(&addr("0.0.0.0:0").into()).unwrap();
        shared.listen(1).unwrap();
        let port = shared.local_addr().unwrap().as_socket().unwrap().port();
        let wildcard = InheritedSocket::new(4, "unknown".into(), shared.into()).unwrap();
        let frontends = [
            frontend("a", &[&format!("127.0.0.1:{port}")]),
            frontend("b", &[&format!("127.0.0.2:{port}")]),
        ];
        let err = InheritedListeners::from_sockets(vec![wildcard])
            .assign(&frontends)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ambiguous: frontends a, b"), "{err}");
    }

    #[test]
    fn only_listening_tcp_sockets_are_taken() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = InheritedSocket::new(3, "dns".into(), udp.into()).unwrap_err();
        assert!(err.to_string().contains("not a stream socket"), "{err}");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (connection, _) = listener.accept().unwrap();
        let err = InheritedSocket::new(4, "api".into(), connection.into()).unwrap_err();
        assert!(err.to_string().contains("is a connection"), "{err}");
        drop(client);

        let (unix, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = InheritedSocket::new(5, "admin".into(), unix.into()).unwrap_err();
        assert!(err.to_string().contains("not an IP socket"), "{err}");
    }

    #[test]
    fn a_socket_left_paused_by_a_previous_lbd_listens_again() {
        // An explicit port, as ListenStream= always gives (a kernel-chosen
        // one would be released by the pause).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let local = listener.local_addr().unwrap();
        // What `pausable` does: the socket leaves the listening table.
        socket2::SockRef::from(&listener)
            .shutdown(std::net::Shutdown::Read)
            .unwrap();
        assert!(std::net::TcpStream::connect(local).is_err());
        let socket = InheritedSocket::new(3, "api".into(), listener.into()).unwrap();
        let listener = socket.into_listener();
        let client = std::net::TcpStream::connect(local).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
    }
}
