//! Copying bytes both ways between a client and its server.
//!
//! Each direction waits for readability *without* a buffer, takes one from
//! the per-thread pool only to move bytes, and gives it back at once: an idle
//! connection (a kubectl watch between events) holds no buffer at all.
//! End of stream in one direction is forwarded as a half-close (`shutdown`
//! of the write side) while the other direction keeps flowing.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::buffer::Buffer;

/// How long a connection may stay silent.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// No byte in either direction for this long closes the connection.
    pub idle: Duration,
    /// Once one direction has ended, silence this long closes the other.
    pub fin: Duration,
}

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed their write side: a clean end.
    Closed,
    /// Nothing moved for the idle timeout.
    IdleTimeout,
    /// Half-closed, and the other side stayed silent for the FIN timeout.
    FinTimeout,
    /// A read or write failed (usually a reset); both sides were reset.
    Aborted(io::Error),
    /// lbd's shutdown deadline closed the connection.
    Shutdown,
    /// The server was marked down and `close_on_down` closed the connection.
    ServerDown,
}

impl RelayEnd {
    /// A short label for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            RelayEnd::Closed => "closed",
            RelayEnd::IdleTimeout => "idle_timeout",
            RelayEnd::FinTimeout => "fin_timeout",
            RelayEnd::Aborted(_) => "aborted",
            RelayEnd::Shutdown => "shutdown",
            RelayEnd::ServerDown => "server_down",
        }
    }
}

/// Bytes moved and how the relay ended.
#[derive(Debug)]
pub struct Relayed {
    /// Bytes from the client to the server.
    pub to_server: u64,
    /// Bytes from the server to the client.
    pub to_client: u64,
    /// Why it ended.
    pub end: RelayEnd,
}

/// Shared byte counters a relay adds to as data moves (live, so long-lived
/// connections show up in metrics before they close).
#[derive(Debug, Clone, Copy)]
pub struct Counters<'a> {
    /// Counters for client → server bytes.
    pub to_server: [&'a AtomicU64; 2],
    /// Counters for server → client bytes.
    pub to_client: [&'a AtomicU64; 2],
}

/// Copies between `client` and `server` until both directions end, a
/// timeout fires, or `close` completes (with the reason it gives: the
/// shutdown deadline, or the server marked down).
pub async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    timeouts: Timeouts,
    counters: Counters<'_>,
    close: impl Future<Output = RelayEnd>,
) -> Relayed {
    let activity = Activity::new();
    let (mut to_server, mut to_client) = (0u64, 0u64);
    let end = {
        let upstream = pump(
            client,
            server,
            counters.to_server,
            &activity,
            &mut to_server,
        );
        let downstream = pump(
            server,
            client,
            counters.to_client,
            &activity,
            &mut to_client,
        );
        tokio::pin!(upstream, downstream, close);
        let (mut upstream_done, mut downstream_done) = (false, false);
        let timer = tokio::time::sleep(timeouts.idle);
        tokio::pin!(timer);
        loop {
            let half_closed = upstream_done || downstream_done;
            let limit = if half_closed {
                timeouts.idle.min(timeouts.fin)
            } else {
                timeouts.idle
            };
            tokio::select! {
                result = &mut upstream, if !upstream_done => {
                    if let Err(e) = result { break RelayEnd::Aborted(e) }
                    upstream_done = true;
                }
                result = &mut downstream, if !downstream_done => {
                    if let Err(e) = result { break RelayEnd::Aborted(e) }
                    downstream_done = true;
                }
                () = &mut timer => {
                    let silent = activity.silent_for();
                    if silent >= limit {
                        break if half_closed { RelayEnd::FinTimeout } else { RelayEnd::IdleTimeout };
                    }
                    timer.as_mut().reset(Instant::now() + (limit - silent));
                    continue;
                }
                end = &mut close => break end,
            }
            if upstream_done && downstream_done {
                break RelayEnd::Closed;
            }
            // One side just ended: the shorter FIN timeout now applies.
            let silent = activity.silent_for();
            let fin_limit = timeouts.idle.min(timeouts.fin);
            timer
                .as_mut()
                .reset(Instant::now() + fin_limit.saturating_sub(silent));
        }
    };
    if matches!(end, RelayEnd::Aborted(_)) {
        // Pass the failure on as a reset, so neither peer mistakes it for a
        // clean end of stream.
        for stream in [client, server] {
            let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
        }
    }
    Relayed {
        to_server,
        to_client,
        end,
    }
}

/// Moves bytes from `from` to `to` until `from` ends, then half-closes `to`.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    counters: [&AtomicU64; 2],
    activity: &Activity,
    moved: &mut u64,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let mut buf = Buffer::take();
        let n = match from.try_read(&mut buf) {
            Ok(0) => {
                // A half-close is activity: the FIN timeout counts from here,
                // not from the last byte, or a long-quiet client that half-
                // closes would lose the server's answer at once.
                activity.touch();
                // The peer may already be gone; its own error surfaces elsewhere.
                let _ = SockRef::from(to).shutdown(Shutdown::Write);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        activity.touch();
        write_all(to, &buf[..n]).await?;
        drop(buf);
        *moved += n as u64;
        for counter in counters {
            counter.fetch_add(n as u64, Relaxed);
        }
        activity.touch();
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// When bytes last moved, in milliseconds since the relay began. An atomic
/// rather than a `Cell` only so the relay future stays `Send`; it is never
/// shared across threads.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = self.start + Duration::from_millis(self.last_ms.load(Relaxed));
        Instant::now().saturating_duration_since(last)
    }
}
