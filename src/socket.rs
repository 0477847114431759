//! Socket options in one place: how listeners are bound and how every proxied
//! stream (client side and server side) is tuned.

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
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

/// Applies TCP_NODELAY and keepalive to a proxied stream. Failures are
/// ignored: a socket without them still works, and the peer may already be gone.
pub fn tune_stream(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Closes a stream with RST instead of FIN (SO_LINGER 0), so the client sees
/// "connection refused/reset" at once rather than an empty, clean close.
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
