//! TLS passthrough routing: a frontend's `routes`, matched against the
//! server name of the client's ClientHello, which is peeked (MSG_PEEK),
//! never consumed or altered, so the server sees the client's own bytes.
//!
//! Matching: an exact name wins; else the longest `*.suffix` whose suffix
//! ends the name (any depth: `*.lab.example` takes `a.b.lab.example`, as
//! HAProxy's `req.ssl_sni -m end .lab.example` does); else the frontend's
//! default backend. No SNI, or not TLS at all, goes to the default too.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::backend::pool::Pool;
use crate::config;
use crate::net::client_hello::{self, Hello, MAX_HELLO_BYTES};

/// A frontend's routes, in file order, and their counters.
#[derive(Debug)]
pub struct SniRoutes {
    /// The routes.
    pub routes: Vec<SniRoute>,
    /// Connections that went to the default backend (no route matched).
    pub default_connections: Arc<AtomicU64>,
    /// How long a client may take to send its ClientHello.
    pub inspect_timeout: Duration,
}

/// One route: a pattern, its backend's pool, and how many connections took it.
#[derive(Debug)]
pub struct SniRoute {
    /// `name` or `*.suffix`, lowercase, as configured.
    pub sni: String,
    /// The backend's pool.
    pub pool: Arc<Pool>,
    /// Connections routed here; kept across reloads while the pattern stays.
    pub connections: Arc<AtomicU64>,
}

impl SniRoutes {
    /// The routes of `spec` over `pools` (index-aligned with `spec.routes`),
    /// counting on where `previous` counted for the same patterns.
    pub fn new(
        spec: &config::Frontend,
        pools: Vec<Arc<Pool>>,
        previous: Option<&SniRoutes>,
    ) -> SniRoutes {
        let counter = |sni: &str| {
            previous
                .and_then(|p| p.routes.iter().find(|r| r.sni == sni))
                .map_or_else(Arc::default, |r| Arc::clone(&r.connections))
        };
        SniRoutes {
            routes: spec
                .routes
                .iter()
                .zip(pools)
                .map(|(route, pool)| SniRoute {
                    connections: counter(&route.sni),
                    sni: route.sni.clone(),
                    pool,
                })
                .collect(),
            default_connections: previous
                .map_or_else(Arc::default, |p| Arc::clone(&p.default_connections)),
            inspect_timeout: spec.inspect_timeout,
        }
    }

    /// The route for server name `name` (lowercase); `None`: the default.
    pub fn select(&self, name: Option<&str>) -> Option<&SniRoute> {
        let index = best_match(self.routes.iter().map(|r| r.sni.as_str()), name?)?;
        self.routes.get(index)
    }
}

/// The index of the pattern that takes `name`: an exact one, else the
/// longest matching `*.suffix`.
fn best_match<'a>(patterns: impl Iterator<Item = &'a str> + Clone, name: &str) -> Option<usize> {
    if let Some(exact) = patterns.clone().position(|p| p == name) {
        return Some(exact);
    }
    patterns
        .enumerate()
        .filter(|(_, p)| {
            p.strip_prefix('*')
                .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
        })
        .max_by_key(|(_, p)| p.len())
        .map(|(index, _)| index)
}

/// What a client's first bytes gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspected {
    /// The server name of its ClientHello (lowercase), or `None`: no SNI,
    /// not TLS, or a ClientHello still incomplete at the deadline.
    Name(Option<String>),
    /// Nothing at all within the timeout.
    Silent,
    /// The client closed without sending a byte.
    Closed,
}

/// Peeks at `stream`'s first bytes until they tell a ClientHello's server
/// name (or that there is none), for at most `timeout`. Consumes nothing.
pub async fn inspect(stream: &TcpStream, timeout: Duration) -> io::Result<Inspected> {
    let mut buf = vec![0u8; 2048];
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if tokio::time::timeout_at(deadline, stream.readable())
            .await
            .is_err()
        {
            return Ok(if seen == 0 {
                Inspected::Silent
            } else {
                Inspected::Name(None)
            });
        }
        // A peek that finds the hello still incomplete reports WouldBlock,
        // which clears the socket's readiness: the next `readable` waits
        // for more bytes instead of peeking the same ones in a busy loop.
        let peeked = stream.try_io(Interest::READABLE, || {
            let n = peek(stream, &mut buf)?;
            seen = n;
            if n == 0 {
                return Ok(Inspected::Closed);
            }
            match client_hello::parse(&buf[..n]) {
                Hello::ClientHello(name) => Ok(Inspected::Name(name)),
                Hello::NotTls => Ok(Inspected::Name(None)),
                Hello::Incomplete if n == buf.len() && n < MAX_HELLO_BYTES => {
                    // Room for more is what is missing, not bytes: peek again.
                    Err(io::Error::from(io::ErrorKind::Interrupted))
                }
                Hello::Incomplete if n >= MAX_HELLO_BYTES => Ok(Inspected::Name(None)),
                Hello::Incomplete => Err(io::ErrorKind::WouldBlock.into()),
            }
        });
        match peeked {
            Ok(inspected) => return Ok(inspected),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                let grown = (buf.len() * 4).min(MAX_HELLO_BYTES);
                buf.resize(grown, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// recv(MSG_PEEK) without waiting: the bytes stay queued for the relay.
fn peek(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, and the
    // descriptor is the stream's own, open while it is borrowed.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select<'a>(patterns: &[&'a str], name: &str) -> Option<&'a str> {
        best_match(patterns.iter().copied(), name).map(|i| patterns[i])
    }

    #[test]
    fn exact_names_win_then_the_longest_wildcard() {
        let p = ["*.lab.example", "api.lab.example", "*.b.lab.example"];
        assert_eq!(select(&p, "api.lab.example"), Some("api.lab.example"));
        assert_eq!(select(&p, "x.lab.example"), Some("*.lab.example"));
        assert_eq!(select(&p, "a.b.lab.example"), Some("*.b.lab.example"));
        assert_eq!(select(&p, "lab.example"), None);
        assert_eq!(select(&p, "xlab.example"), None);
    }

    /// A connected pair on loopback: (client side, server side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_hello_in_pieces_is_waited_for_and_left_unread() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, mut server) = pair().await;
        let hello = crate::net::client_hello::tests_support::hello("api.lab.example");
        let (first, rest) = hello.split_at(40);
        client.write_all(first).await.unwrap();
        let rest = rest.to_vec();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(&rest).await.unwrap();
            client
        });
        let inspected = inspect(&server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(inspected, Inspected::Name(Some("api.lab.example".into())));
        let _client = writer.await.unwrap();
        // Nothing was consumed: the server reads the client's bytes whole.
        let mut read = vec![0u8; hello.len()];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(read, hello);
    }

    #[tokio::test]
    async fn silence_and_a_close_are_told_apart() {
        let (client, server) = pair().await;
        let inspected = inspect(&server, Duration::from_millis(50)).await.unwrap();
        assert_eq!(inspected, Inspected::Silent);
        drop(client);
        let inspected = inspect(&server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(inspected, Inspected::Closed);
    }
}
