//! The daemon's listening sockets: which frontend each one feeds, and how a
//! reload opens new ones, closes removed ones, and hands a socket that
//! changes frontend over without closing it.
//!
//! The daemon keeps a duplicate descriptor of every listening socket: the
//! accept loop owns one, the daemon the other, so a socket moving to another
//! frontend stays open (and keeps queuing clients) while one accept loop
//! ends and the next begins. A socket closes once both are dropped.
//!
//! With one runtime per core (see [`crate::proxy::runtime`]) an address lbd binds
//! itself has one SO_REUSEPORT socket per runtime, each with its own accept
//! loop; a socket inherited from systemd has one accept loop, which hands
//! connections to the other runtimes as its own fills up (see
//! [`crate::proxy::runtime::place`]).

use std::net::SocketAddr;
use std::sync::Arc;

use socket2::SockRef;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::Daemon;
use crate::daemon::reload::{BoundAddress, ListenerChanges};
use crate::net::socket;
use crate::proxy::frontend::Frontend;
use crate::proxy::listener;
use crate::proxy::runtime;

/// A listen address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("frontend {frontend:?}: cannot listen on {addr}: {source}{}", bind_hint(*.addr, .source))]
pub struct BindError {
    /// The frontend that owns the address.
    pub frontend: String,
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    pub source: std::io::Error,
}

/// What to do about a bind error, for the errors that have one answer.
fn bind_hint(addr: SocketAddr, error: &std::io::Error) -> String {
    let port = addr.port();
    match error.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) if port < 1024 => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE, which the shipped lbd.service grants)".into()
        }
        Some(libc::EADDRINUSE) => format!(
            " (port {port} is already in use: `ss -ltnp 'sport = :{port}'` shows by what)"
        ),
        _ => String::new(),
    }
}

/// A bound listening socket, its accept loop, and the token that stops it.
#[derive(Debug)]
struct BoundListener {
    frontend: String,
    /// The address as configured (port 0 stays 0), to match reloads against.
    configured: SocketAddr,
    /// Other configured addresses the same socket serves (a dual-stack
    /// socket from systemd covers `0.0.0.0:P` and `[::]:P` alike).
    also: Vec<SocketAddr>,
    /// The address actually bound.
    local: SocketAddr,
    /// The accept queue length it listens with.
    backlog: u32,
    stop: CancellationToken,
    /// The daemon's descriptors of the address's sockets (each accept loop
    /// has another).
    sockets: Vec<std::net::TcpListener>,
    /// The accept loops; one finished while `stop` is not cancelled died.
    tasks: Vec<JoinHandle<()>>,
}

/// Every listening socket of the daemon.
#[derive(Debug, Default)]
pub(super) struct Listeners {
    bound: Vec<BoundListener>,
}

impl Listeners {
    pub(super) fn local_addrs(&self, frontend: &str) -> Vec<SocketAddr> {
        self.bound
            .iter()
            .filter(|l| l.frontend == frontend)
            .map(|l| l.local)
            .collect()
    }

    /// Every address being served, for the diff to compare the desired
    /// listeners with: an address whose accept loop could not start is not
    /// here, so the next change opens it again.
    pub(super) fn bound_addresses(&self) -> Vec<BoundAddress> {
        self.bound
            .iter()
            .flat_map(|l| {
                std::iter::once(l.configured)
                    .chain(l.also.iter().copied())
                    .map(|addr| BoundAddress {
                        frontend: l.frontend.clone(),
                        addr,
                        backlog: l.backlog,
                    })
            })
            .collect()
    }

    /// (frontend, address) of every accept loop that ended without being
    /// told to: a listener nobody serves any more.
    pub(super) fn dead_accept_loops(&self) -> Vec<(String, SocketAddr)> {
        self.bound
            .iter()
            .filter(|l| l.tasks.iter().any(JoinHandle::is_finished) && !l.stop.is_cancelled())
            .map(|l| (l.frontend.clone(), l.local))
            .collect()
    }

    /// Ends every accept loop abruptly, as a bug would (tests only).
    #[cfg(test)]
    pub(super) fn abort_accept_loops(&self) {
        for task in self.bound.iter().flat_map(|bound| &bound.tasks) {
            task.abort();
        }
    }

    /// A duplicate of every listening socket with its frontend's name, for
    /// a successor process to serve (see [`crate::upgrade`]).
    pub(super) fn duplicates(&self) -> std::io::Result<Vec<(String, std::net::TcpListener)>> {
        let mut all = Vec::new();
        for bound in &self.bound {
            for socket in &bound.sockets {
                all.push((bound.frontend.clone(), socket.try_clone()?));
            }
        }
        Ok(all)
    }

    /// Stops every accept loop; each socket closes as its loop ends.
    pub(super) fn close_all(&mut self) {
        for bound in self.bound.drain(..) {
            bound.stop.cancel();
        }
    }

    /// Records that the socket of `frontend` configured as `addr` also
    /// serves the configured addresses `also`.
    pub(super) fn also_covers(&mut self, frontend: &str, addr: SocketAddr, also: Vec<SocketAddr>) {
        if let Some(bound) = self
            .bound
            .iter_mut()
            .find(|l| l.frontend == frontend && l.configured == addr)
        {
            bound.also = also;
        }
    }

    /// Takes out the listener of `frontend` configured as `addr`.
    fn take(&mut self, frontend: &str, addr: SocketAddr) -> Option<BoundListener> {
        let index = self.bound.iter().position(|l| {
            l.frontend == frontend && (l.configured == addr || l.also.contains(&addr))
        })?;
        Some(self.bound.remove(index))
    }
}

/// The sockets a plan opens, bound before anything changes so a failed
/// bind leaves the running daemon whole; dropping them closes them.
#[derive(Debug, Default)]
pub(super) struct Opened {
    sockets: Vec<(String, SocketAddr, u32, Vec<std::net::TcpListener>)>,
}

impl Daemon {
    /// Binds the sockets `changes` opens. Nothing running changes.
    pub(super) fn bind_planned(&self, changes: &ListenerChanges) -> Result<Opened, BindError> {
        let mut opened = Opened::default();
        for (frontend, addr, backlog) in &changes.open {
            let sockets = socket::bind_listeners(*addr, *backlog, runtime::acceptor_count())
                .map_err(|source| BindError {
                    frontend: frontend.clone(),
                    addr: *addr,
                    source,
                })?;
            opened
                .sockets
                .push((frontend.clone(), *addr, *backlog, sockets));
        }
        Ok(opened)
    }

    /// Carries the listener part of a plan out against the frontends of the
    /// new snapshot, with the sockets [`Daemon::bind_planned`] opened.
    pub(super) fn apply_listeners(
        &self,
        changes: &ListenerChanges,
        opened: Opened,
        frontends: &[Arc<Frontend>],
    ) {
        let find = |name: &str| {
            frontends
                .iter()
                .find(|f| f.name == name)
                .cloned()
                .expect("the plan only names frontends of the new config")
        };
        for (frontend, addr) in &changes.close {
            let taken = self.listeners().take(frontend, *addr);
            if let Some(bound) = taken {
                bound.stop.cancel();
                info!(frontend = %frontend, address = %bound.local, "stopped listening; live connections go on");
            }
        }
        for (from, to, addr, backlog) in &changes.hand_over {
            self.restart_accept_loop(from, find(to), *addr, *backlog);
        }
        for (frontend, addr, backlog) in &changes.relisten {
            self.restart_accept_loop(frontend, find(frontend), *addr, *backlog);
        }
        for (frontend, addr, backlog, sockets) in opened.sockets {
            self.spawn_accept_loop(find(&frontend), addr, backlog, sockets);
        }
    }

    /// Ends the accept loop of `from` on `addr` and starts one for `to` on
    /// the same sockets, listening with `backlog`: an address changing
    /// frontend or accept queue length never closes, so no queued client is
    /// lost. If it fails, the address is no longer bound, and the next change
    /// of desired state opens it afresh.
    fn restart_accept_loop(&self, from: &str, to: Arc<Frontend>, addr: SocketAddr, backlog: u32) {
        let taken = self.listeners().take(from, addr);
        let Some(bound) = taken else { return };
        bound.stop.cancel();
        // listen() again sets the new queue length, and wakes a socket the
        // old accept loop had paused (the new loop pauses it again if its
        // backend cannot serve).
        let relistened = bound.sockets.iter().try_for_each(|socket| {
            SockRef::from(socket).listen(i32::try_from(backlog).unwrap_or(i32::MAX))
        });
        match relistened {
            Ok(()) => {
                if from != to.name {
                    info!(from = %from, frontend = %to.name, address = %bound.local, "listener handed over");
                }
                self.spawn_accept_loop(to, addr, backlog, bound.sockets);
            }
            Err(err) => {
                error!(frontend = %to.name, address = %addr, error = %err, "cannot listen again on the socket; the address is opened afresh at the next reload");
            }
        }
    }

    /// Starts accepting for `frontend` on `listeners`, the sockets of one
    /// address: one accept loop per runtime when there is a socket for each,
    /// else one loop (on this runtime) that spreads its connections.
    pub(super) fn spawn_accept_loop(
        &self,
        frontend: Arc<Frontend>,
        configured: SocketAddr,
        backlog: u32,
        listeners: Vec<std::net::TcpListener>,
    ) {
        let Some(local) = listeners.first().and_then(|l| l.local_addr().ok()) else {
            error!(frontend = %frontend.name, address = %configured, "a listening socket has no address; not serving it");
            return;
        };
        let mut bound = self.listeners();
        // Shutdown closes every listener under this lock: one arriving after
        // it (callers check first; this is the backstop) would listen,
        // unserved, until the process exits.
        if self.shared.stop_accepting.is_cancelled() {
            info!(frontend = %frontend.name, address = %local, "not listening: lbd is shutting down");
            return;
        }
        let sockets = match listeners.iter().map(duplicate).collect() {
            Ok(sockets) => sockets,
            Err(err) => {
                error!(frontend = %frontend.name, address = %local, error = %err, "cannot keep a descriptor of the listener (out of file descriptors?); not serving this address until the next reload");
                return;
            }
        };
        info!(frontend = %frontend.name, address = %local, "listening");
        let stop = self.shared.stop_accepting.child_token();
        let name = frontend.name.clone();
        let paused = Arc::new(listener::PausedSockets::default());
        let tasks = listeners
            .into_iter()
            .zip(runtime::handles())
            .enumerate()
            .map(|(home, (listener, runtime))| {
                let accepting = listener::AcceptLoop {
                    frontend: Arc::clone(&frontend),
                    global: Arc::clone(&self.shared.global_limit),
                    stop: stop.clone(),
                    tracker: self.shared.connections.clone(),
                    close: self.shared.close_connections.clone(),
                    home,
                    paused: Arc::clone(&paused),
                };
                runtime.spawn(async move {
                    // Registered with the reactor of the runtime it runs on.
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accepting.run(listener).await,
                        Err(err) => {
                            error!(frontend = %accepting.frontend.name, address = %local, error = %err, "cannot start an accept loop");
                        }
                    }
                })
            })
            .collect();
        bound.bound.push(BoundListener {
            frontend: name,
            configured,
            also: Vec::new(),
            local,
            backlog,
            stop,
            sockets,
            tasks,
        });
    }
}

/// A second descriptor of a listening socket, outside tokio's reactor.
fn duplicate(listener: &std::net::TcpListener) -> std::io::Result<std::net::TcpListener> {
    let socket = SockRef::from(listener).try_clone()?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod bind_hint_tests {
    use super::*;

    fn message(addr: &str, errno: i32) -> String {
        BindError {
            frontend: "api".into(),
            addr: addr.parse().unwrap(),
            source: std::io::Error::from_raw_os_error(errno),
        }
        .to_string()
    }

    #[test]
    fn the_capability_hint_is_only_for_a_refused_port_below_1024() {
        assert!(message("0.0.0.0:443", libc::EACCES).contains("CAP_NET_BIND_SERVICE"));
        assert!(message("0.0.0.0:443", libc::EPERM).contains("CAP_NET_BIND_SERVICE"));
        assert!(!message("0.0.0.0:6443", libc::EACCES).contains("CAP_NET_BIND_SERVICE"));
        let in_use = message("0.0.0.0:443", libc::EADDRINUSE);
        assert!(in_use.contains("port 443 is already in use"), "{in_use}");
        assert!(!in_use.contains("CAP_NET_BIND_SERVICE"), "{in_use}");
        let other = message("10.9.9.9:6443", libc::EADDRNOTAVAIL);
        assert!(
            other.ends_with(&std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL).to_string()),
            "{other}"
        );
    }
}
