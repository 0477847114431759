//! A listening socket that can stop taking connections without closing.
//!
//! When a backend has no server left, accepting a client only to reset it
//! still lets the client's handshake complete (`nc -v` prints "succeeded").
//! A paused listener is not in the kernel's listening table at all, so a
//! client's SYN is answered with RST and `connect()` fails with "connection
//! refused", while the socket keeps its port for the moment it resumes.
//!
//! This is HAProxy's trick on Linux: `shutdown(fd, SHUT_RD)` on a listening
//! socket stops listening (connections still in the accept queue are reset),
//! and `listen(fd)` on the same socket starts again (a port the kernel chose
//! for port 0 is released by the pause and bound again first). The socket is taken out
//! of tokio's reactor while paused and registered afresh on resume: the
//! shutdown wakes epoll with a hang-up that tokio would otherwise remember
//! for good, turning every later `accept` into a busy loop.

use std::io;
use std::net::{Shutdown, SocketAddr};

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};

/// A listener that can be paused (SYNs refused) and resumed in place.
#[derive(Debug)]
pub struct PausableListener {
    state: State,
    backlog: u32,
    local: SocketAddr,
}

#[derive(Debug)]
enum State {
    Accepting(TcpListener),
    Paused(std::net::TcpListener),
    /// The socket was lost: tokio could not hand it back or take it again.
    Broken,
}

impl PausableListener {
    /// Wraps a bound, listening socket; `backlog` is used again on resume.
    pub fn new(listener: TcpListener, backlog: u32) -> io::Result<PausableListener> {
        let local = listener.local_addr()?;
        Ok(PausableListener {
            state: State::Accepting(listener),
            backlog,
            local,
        })
    }

    /// The address the socket is bound to, paused or not.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether the socket is refusing connections right now.
    pub fn is_paused(&self) -> bool {
        !matches!(self.state, State::Accepting(_))
    }

    /// Stops listening: new SYNs get RST, queued connections are reset. On
    /// error the listener keeps accepting (the caller falls back to
    /// accept-and-reset).
    pub fn pause(&mut self) -> io::Result<()> {
        let listener = match std::mem::replace(&mut self.state, State::Broken) {
            State::Accepting(listener) => listener,
            paused => {
                self.state = paused;
                return Ok(());
            }
        };
        let listener = listener.into_std()?;
        if let Err(e) = SockRef::from(&listener).shutdown(Shutdown::Read) {
            self.state = State::Accepting(TcpListener::from_std(listener)?);
            return Err(e);
        }
        self.state = State::Paused(listener);
        Ok(())
    }

    /// Listens again on the same socket and port. On error the listener
    /// stays paused and the caller may try again later.
    pub fn resume(&mut self) -> io::Result<()> {
        let listener = match std::mem::replace(&mut self.state, State::Broken) {
            State::Paused(listener) => listener,
            State::Accepting(listener) => {
                self.state = State::Accepting(listener);
                return Ok(());
            }
            State::Broken => {
                return Err(io::Error::other(
                    "the listening socket was lost while pausing; restart lbd to listen again",
                ));
            }
        };
        let backlog = i32::try_from(self.backlog).unwrap_or(i32::MAX);
        if let Err(e) = self
            .rebind_if_released(&listener)
            .and_then(|()| SockRef::from(&listener).listen(backlog))
        {
            self.state = State::Paused(listener);
            return Err(e);
        }
        self.state = State::Accepting(TcpListener::from_std(listener)?);
        Ok(())
    }

    /// A socket bound to port 0 lets go of the kernel-chosen port when it
    /// stops listening (only an explicitly bound port stays locked to it),
    /// and `listen` would pick another one: bind the old port again first.
    /// A socket that kept its port refuses the bind with EINVAL, which is fine.
    fn rebind_if_released(&self, listener: &std::net::TcpListener) -> io::Result<()> {
        match SockRef::from(listener).bind(&self.local.into()) {
            Err(e) if e.raw_os_error() != Some(libc::EINVAL) => Err(e),
            _ => Ok(()),
        }
    }

    /// Accepts the next connection; never completes while paused.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        match &self.state {
            State::Accepting(listener) => listener.accept().await,
            State::Paused(_) | State::Broken => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;
    use crate::net::socket;

    fn listener(addr: &str) -> PausableListener {
        PausableListener::new(
            socket::bind_listener(addr.parse().unwrap(), 16).unwrap(),
            16,
        )
        .unwrap()
    }

    fn connect(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    }

    async fn accept_one(listener: &PausableListener) -> TcpStream {
        tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("a connection to accept")
            .unwrap()
            .0
    }

    /// Pauses `listener` (a client is refused) and resumes it (a client on
    /// the same address is accepted).
    async fn pause_refuses_and_resume_accepts(listener: &mut PausableListener) {
        let addr = listener.local_addr();
        listener.pause().unwrap();
        assert_eq!(
            connect(addr).unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
        listener.resume().unwrap();
        let _client = connect(addr).unwrap();
        accept_one(listener).await;
    }

    #[tokio::test]
    async fn a_paused_listener_refuses_and_a_resumed_one_accepts_on_the_same_port() {
        let mut listener = listener("127.0.0.1:0");
        let addr = listener.local_addr();

        listener.pause().unwrap();
        assert!(listener.is_paused());
        let err = connect(addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        // Pausing twice is harmless.
        listener.pause().unwrap();

        listener.resume().unwrap();
        assert!(!listener.is_paused());
        let mut client = connect(addr).unwrap();
        let server = accept_one(&listener).await;
        server.try_write(b"hi").unwrap();
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        client.write_all(b"x").unwrap();

        // Another pause/resume cycle works just the same.
        pause_refuses_and_resume_accepts(&mut listener).await;
    }

    #[tokio::test]
    async fn an_explicit_port_is_kept_through_pause_and_resume() {
        // The production case: a fixed port, which the kernel keeps bound.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let mut listener = listener(&addr.to_string());
        assert_eq!(listener.local_addr(), addr);
        pause_refuses_and_resume_accepts(&mut listener).await;
    }

    #[tokio::test]
    async fn pausing_resets_connections_still_in_the_accept_queue() {
        let mut listener = listener("127.0.0.1:0");
        // The handshake completes in the kernel before anyone accepts.
        let mut queued = connect(listener.local_addr()).unwrap();
        listener.pause().unwrap();
        queued
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1];
        let err = queued.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    }

    #[tokio::test]
    async fn a_resumed_listener_waits_quietly_for_the_next_client() {
        let mut listener = listener("127.0.0.1:0");
        listener.pause().unwrap();
        listener.resume().unwrap();
        // No stale readiness from the pause: accept waits instead of
        // returning an error or spinning.
        let waited = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(waited.is_err(), "accept returned {waited:?} with no client");
        let _client = connect(listener.local_addr()).unwrap();
        accept_one(&listener).await;
    }

    #[tokio::test]
    async fn a_paused_listener_never_accepts() {
        let mut listener = listener("127.0.0.1:0");
        listener.pause().unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(waited.is_err());
    }

    #[tokio::test]
    async fn ipv6_listeners_pause_too() {
        let Ok(bound) = socket::bind_listener("[::1]:0".parse().unwrap(), 16) else {
            return; // no IPv6 loopback here
        };
        let mut listener = PausableListener::new(bound, 16).unwrap();
        pause_refuses_and_resume_accepts(&mut listener).await;
    }
}
