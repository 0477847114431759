//! Dialing a server, and the one classifier of how a dial went.
//!
//! A dial outcome is a small enum. The same [`DialErrorKind`] picks what
//! `forward` retries and labels `lbd_server_connect_errors_total{kind}`, tells
//! `health` why a server went down, and tells `lbctl probe` what to say.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Why a dial failed, in the terms an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialErrorKind {
    /// The host answered with RST: it is up but nothing listens on the port.
    Refused,
    /// Nothing answered in time: a firewall or route drops the traffic, or the host is off.
    Timeout,
    /// The network reported there is no route to the host (ICMP unreachable).
    Unreachable,
    /// The connection was reset while it was being set up.
    Reset,
    /// The server's name did not resolve.
    DnsError,
    /// Anything else (local resource limits, odd socket errors).
    Other,
}

impl DialErrorKind {
    /// Every kind, in the order metrics list them.
    pub const ALL: [DialErrorKind; 6] = [
        DialErrorKind::Refused,
        DialErrorKind::Timeout,
        DialErrorKind::Unreachable,
        DialErrorKind::Reset,
        DialErrorKind::DnsError,
        DialErrorKind::Other,
    ];

    /// The label used in metrics, logs, status JSON and `lbctl probe --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            DialErrorKind::Refused => "refused",
            DialErrorKind::Timeout => "timeout",
            DialErrorKind::Unreachable => "unreachable",
            DialErrorKind::Reset => "reset",
            DialErrorKind::DnsError => "dns_error",
            DialErrorKind::Other => "other",
        }
    }

    /// Position in [`DialErrorKind::ALL`], for per-kind counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Classifies the error a failed `connect(2)` returned.
    pub fn classify(err: &io::Error) -> DialErrorKind {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => return DialErrorKind::Refused,
            io::ErrorKind::TimedOut => return DialErrorKind::Timeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                return DialErrorKind::Unreachable;
            }
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                return DialErrorKind::Reset;
            }
            _ => {}
        }
        match err.raw_os_error() {
            Some(libc::EHOSTDOWN | libc::ENETDOWN | libc::EHOSTUNREACH | libc::ENETUNREACH) => {
                DialErrorKind::Unreachable
            }
            _ => DialErrorKind::Other,
        }
    }
}

impl std::fmt::Display for DialErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed dial: its kind, the address, how long it took, and the OS's words.
#[derive(Debug, thiserror::Error)]
#[error("dial {addr} failed after {elapsed:?}: {kind} ({detail})")]
pub struct DialError {
    /// The classified reason.
    pub kind: DialErrorKind,
    /// The address dialed.
    pub addr: SocketAddr,
    /// Time from the start of the dial to the failure.
    pub elapsed: Duration,
    /// The operating system's message.
    pub detail: String,
    /// The OS error number, when the OS gave one: it tells apart what one
    /// kind groups (`ENETUNREACH`, no route from this host, against
    /// `EHOSTUNREACH`, the network saying the host is unreachable).
    pub os_error: Option<i32>,
    /// The failure is this host's, not the server's (out of file
    /// descriptors, memory or ephemeral ports): it says nothing about the
    /// server's health.
    pub local: bool,
}

impl DialError {
    /// Whether this host has no route to the address's network
    /// (`ENETUNREACH`): a fault of this host's routes or interface, not a
    /// sign that the server is down.
    pub fn no_route_from_here(&self) -> bool {
        matches!(self.os_error, Some(libc::ENETUNREACH | libc::ENETDOWN))
    }
}

/// Whether an error is lbd's own resource shortage rather than the peer's doing.
fn is_local(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// Connects to `addr` within `timeout`, with TCP_NODELAY set (keepalive is
/// left to the relay, which arms it on connections that last).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, DialError> {
    let started = Instant::now();
    let fail = |e: &io::Error, local: bool| DialError {
        kind: DialErrorKind::classify(e),
        addr,
        elapsed: started.elapsed(),
        detail: e.to_string(),
        os_error: e.raw_os_error(),
        local,
    };
    // Failing to even make a socket is this host's problem.
    let socket = new_socket(addr).map_err(|e| fail(&e, true))?;
    let stream = start_connect(socket, addr).map_err(|e| fail(&e, is_local(&e)))?;
    match tokio::time::timeout(timeout, finish_connect(&stream)).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err(fail(&e, is_local(&e))),
        Err(_) => Err(DialError {
            kind: DialErrorKind::Timeout,
            addr,
            elapsed: started.elapsed(),
            detail: format!("no answer within {timeout:?}"),
            os_error: None,
            local: false,
        }),
    }
}

/// A non-blocking socket for `addr`, in one syscall.
fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
}

/// Starts connecting `socket` to `addr`.
fn start_connect(socket: Socket, addr: SocketAddr) -> io::Result<TcpStream> {
    // Before connect, so the request following the handshake is not held back.
    let _ = socket.set_tcp_nodelay(true);
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    TcpStream::from_std(socket.into())
}

/// Waits for the handshake. Epoll reports a failed connect as a hang-up, so
/// only then is SO_ERROR read: a successful dial costs no getsockopt.
async fn finish_connect(stream: &TcpStream) -> io::Result<()> {
    let ready = stream.ready(Interest::WRITABLE).await?;
    if ready.is_write_closed()
        && let Some(e) = stream.take_error()?
    {
        return Err(e);
    }
    Ok(())
}

/// How long one name lookup may take: a dead resolver must not hold up
/// startup or a reload (getaddrinfo's own retries can take much longer).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves `host:port` to every address it names, or says why not.
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    resolve_classified(host, port).await.map_err(|e| e.message)
}

/// Why a name did not resolve: the message, and whether the resolver
/// itself failed rather than the name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ResolveError {
    /// What failed, naming the name, in the resolver's words.
    pub message: String,
    /// No usable answer came: the resolver timed out or failed
    /// (`EAI_AGAIN`, `EAI_FAIL`), so nothing is known about the name. When
    /// false, the resolver answered that the name does not exist or has no
    /// address (`EAI_NONAME`, NXDOMAIN).
    pub resolver_down: bool,
}

/// Like [`resolve`], telling a resolver that did not answer from a name
/// that does not exist.
pub async fn resolve_classified(host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)));
    let Ok(answer) = lookup.await else {
        return Err(ResolveError {
            message: format!(
                "cannot resolve {host}: no answer from the resolver within {}s",
                RESOLVE_TIMEOUT.as_secs()
            ),
            resolver_down: true,
        });
    };
    match answer {
        Ok(addrs) => {
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                Err(ResolveError {
                    message: format!("{host} has no addresses"),
                    resolver_down: false,
                })
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(ResolveError {
            message: format!("cannot resolve {host}: {e}"),
            resolver_down: resolver_failed(&e),
        }),
    }
}

/// Whether a failed `getaddrinfo` means the resolver failed, not the name.
/// The standard library keeps only `gai_strerror`'s text of the code, so the
/// text is compared with the C library's own words for `EAI_AGAIN` and
/// `EAI_FAIL` (the same on glibc and musl, whatever their wording).
fn resolver_failed(err: &io::Error) -> bool {
    let text = err.to_string();
    [libc::EAI_AGAIN, libc::EAI_FAIL].into_iter().any(|code| {
        // SAFETY: gai_strerror returns a pointer to a static, NUL-terminated
        // string for any code; it is only read here.
        let words = unsafe { std::ffi::CStr::from_ptr(libc::gai_strerror(code)) };
        words
            .to_str()
            .is_ok_and(|words| !words.is_empty() && text.ends_with(words))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_os_errors() {
        let cases = [
            (libc::ECONNREFUSED, DialErrorKind::Refused),
            (libc::ETIMEDOUT, DialErrorKind::Timeout),
            (libc::EHOSTUNREACH, DialErrorKind::Unreachable),
            (libc::ENETUNREACH, DialErrorKind::Unreachable),
            (libc::EHOSTDOWN, DialErrorKind::Unreachable),
            (libc::ECONNRESET, DialErrorKind::Reset),
            (libc::EMFILE, DialErrorKind::Other),
        ];
        for (errno, kind) in cases {
            assert_eq!(
                DialErrorKind::classify(&io::Error::from_raw_os_error(errno)),
                kind,
                "errno {errno}"
            );
        }
    }

    #[test]
    fn no_route_from_here_is_told_from_an_unreachable_host() {
        let dial_error = |errno| DialError {
            kind: DialErrorKind::classify(&io::Error::from_raw_os_error(errno)),
            addr: "10.0.0.1:6443".parse().unwrap(),
            elapsed: Duration::ZERO,
            detail: String::new(),
            os_error: Some(errno),
            local: false,
        };
        assert!(dial_error(libc::ENETUNREACH).no_route_from_here());
        assert!(!dial_error(libc::EHOSTUNREACH).no_route_from_here());
    }

    #[test]
    fn a_resolver_failure_is_told_from_a_missing_name() {
        let gai = |code| {
            // SAFETY: as in resolver_failed.
            let words = unsafe { std::ffi::CStr::from_ptr(libc::gai_strerror(code)) };
            io::Error::other(format!(
                "failed to lookup address information: {}",
                words.to_str().unwrap()
            ))
        };
        assert!(resolver_failed(&gai(libc::EAI_AGAIN)));
        assert!(resolver_failed(&gai(libc::EAI_FAIL)));
        assert!(!resolver_failed(&gai(libc::EAI_NONAME)));
    }

    #[test]
    fn index_matches_all() {
        for (i, kind) in DialErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[tokio::test]
    async fn connects_with_nodelay_to_a_listening_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = connect(listener.local_addr().unwrap(), Duration::from_secs(1))
            .await
            .unwrap();
        assert!(stream.nodelay().unwrap());
        assert_eq!(stream.peer_addr().unwrap(), listener.local_addr().unwrap());
    }

    #[tokio::test]
    async fn times_out_when_syns_are_dropped() {
        // A listener with backlog 0 whose queue is already full drops SYNs.
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let _fills_the_queue = std::net::TcpStream::connect(addr).unwrap();
        let err = connect(addr, Duration::from_millis(200)).await.unwrap_err();
        assert_eq!(err.kind, DialErrorKind::Timeout, "{err}");
    }

    #[tokio::test]
    async fn refused_on_a_closed_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = connect(addr, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(err.kind, DialErrorKind::Refused);
    }
}
