//! Socket options in one place: how listeners are bound and how every proxied
//! stream (client side and server side) is tuned.
//!
//! Options are set where they cost least: Linux copies TCP_NODELAY and the
//! keepalive settings of a listening socket to every socket it accepts, so
//! the client side of a connection costs no setsockopt at all. The server
//! side gets TCP_NODELAY before its connect, and keepalive only once the
//! connection has lived a few seconds (see [`KEEPALIVE_ARM_AFTER`]): the
//! short connections of a burst never pay for it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};

/// Idle time before the first keepalive probe: a dead peer behind a silent
/// network is found in about `TIME + INTERVAL * RETRIES` (~90 s), well before
/// the kernel default of two hours.
const KEEPALIVE_TIME: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// Binds a listening socket the way lbd's frontends need it.
///
/// SO_REUSEADDR lets a restarted lbd bind while old connections sit in
/// TIME_WAIT; IPv6 sockets are V6ONLY so `[::]:6443` and `0.0.0.0:6443` can
/// both be listed without clashing, whatever the sysctl default is.
pub fn bind_listener(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, backlog, false)?)
}

/// Binds `count` listening sockets on `addr`, one per accept loop, that
/// share its connections (SO_REUSEPORT: the kernel spreads clients over
/// them); `count == 1` is [`bind_listener`]'s socket.
pub fn bind_listeners(
    addr: SocketAddr,
    backlog: u32,
    count: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    if count <= 1 {
        return Ok(vec![bind_std(addr, backlog, false)?]);
    }
    // The first bind is exclusive, so an address another process holds is
    // still in use; the socket then stays bound while it opens the group,
    // leaving no moment in which a second lbd could join it. Its port
    // (port 0 resolved) is the one the others bind.
    let first = bound(addr, false)?;
    let addr = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("a TCP socket bound to a non-IP address"))?;
    first.set_reuse_port(true)?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(bound(addr, true)?);
    }
    sockets
        .into_iter()
        .map(|socket| listening(socket, backlog))
        .collect()
}

fn bind_std(addr: SocketAddr, backlog: u32, shared: bool) -> io::Result<std::net::TcpListener> {
    listening(bound(addr, shared)?, backlog)
}

/// A socket bound to `addr` with lbd's options, not yet listening.
fn bound(addr: SocketAddr, shared: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if shared {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn listening(socket: Socket, backlog: u32) -> io::Result<std::net::TcpListener> {
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    let socket: std::net::TcpListener = socket.into();
    tune_listener(&socket);
    Ok(socket)
}

/// Sets on a listening socket the options its accepted sockets inherit
/// (TCP_NODELAY, keepalive). Also for listeners lbd did not bind itself
/// (systemd socket activation). Failures are ignored: a socket without them
/// still works.
pub fn tune_listener(listener: &impl std::os::fd::AsFd) {
    let socket = SockRef::from(listener);
    let _ = socket.set_tcp_nodelay(true);
    let _ = socket.set_tcp_keepalive(&keepalive());
}

/// A server-side connection that lives this long gets keepalive probes;
/// shorter ones are spared the four setsockopt calls.
pub const KEEPALIVE_ARM_AFTER: Duration = Duration::from_secs(5);

fn keepalive() -> TcpKeepalive {
    TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES)
}

/// Turns on keepalive probes for a stream (a long-lived server connection).
/// Failures are ignored: the peer may already be gone.
pub fn enable_keepalive(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive());
}

/// Closes a stream with RST instead of FIN (SO_LINGER 0), so the client sees
/// "connection refused/reset" at once rather than an empty, clean close.
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_listeners_split_one_port_and_an_address_in_use_is_refused() {
        let listeners = bind_listeners("127.0.0.1:0".parse().unwrap(), 64, 2).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        assert_eq!(listeners[1].local_addr().unwrap(), addr);
        // The kernel spreads clients (by address and port) over both sockets.
        let clients: Vec<_> = (0..64)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let accepted: Vec<usize> = listeners
            .iter()
            .map(|l| std::iter::from_fn(|| l.accept().ok()).count())
            .collect();
        assert_eq!(accepted.iter().sum::<usize>(), clients.len());
        assert!(accepted.iter().all(|&n| n > 0), "{accepted:?}");
        // Another process (or a second lbd) on the address is still an error.
        let err = bind_listeners(addr, 64, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        let err = std::net::TcpListener::bind(addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }

    /// lbd relies on Linux copying these options from the listener to the
    /// accepted socket instead of setting them per connection.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_keepalive() {
        let listener = bind_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let socket = SockRef::from(&accepted);
        assert!(socket.tcp_nodelay().unwrap(), "TCP_NODELAY not inherited");
        assert!(socket.keepalive().unwrap(), "SO_KEEPALIVE not inherited");
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_TIME);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
    }
}
