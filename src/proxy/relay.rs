//! Copying bytes both ways between a client and its server.
//!
//! Each direction waits for readability *without* a buffer, takes one from
//! the per-thread pool only to move bytes, and gives it back at once: an idle
//! connection (a kubectl watch between events) holds no buffer at all.
//! End of stream in one direction is forwarded as a half-close (`shutdown`
//! of the write side) while the other direction keeps flowing.
//!
//! Small exchanges are copied through a pooled buffer; a direction that
//! keeps filling it is a bulk stream and moves to splice(2) through a pooled
//! pipe (see [`crate::proxy::splice`]), or to a large buffer when splice is off or
//! unavailable. A short read or write tells tokio the socket is drained or
//! full at once, saving the EAGAIN call a plain loop makes per message.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::backend::connections::CloseReason;
use crate::net::socket;
use crate::proxy::buffer::{self, Buffer, Size};
use crate::proxy::splice::{self, Pipe};
use crate::util::counter::ShardedCounter;

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
    /// A rebalance chose this connection to move to another server.
    Rebalanced,
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
            RelayEnd::Rebalanced => "rebalanced",
        }
    }

    /// Why lbd closed the connection itself, if it did.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self {
            RelayEnd::ServerDown => Some(CloseReason::Down),
            RelayEnd::Rebalanced => Some(CloseReason::Rebalance),
            RelayEnd::Shutdown => Some(CloseReason::DrainDeadline),
            RelayEnd::IdleTimeout | RelayEnd::FinTimeout => Some(CloseReason::Idle),
            RelayEnd::Closed | RelayEnd::Aborted(_) => None,
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
    /// Of all those bytes, how many went through splice(2) without a copy.
    pub spliced: u64,
    /// Why it ended.
    pub end: RelayEnd,
}

/// Shared byte counters a relay adds to as data moves (live, so long-lived
/// connections show up in metrics before they close).
#[derive(Debug, Clone, Copy)]
pub struct Counters<'a> {
    /// Counters for client → server bytes.
    pub to_server: [&'a ShardedCounter; 2],
    /// Counters for server → client bytes.
    pub to_client: [&'a ShardedCounter; 2],
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
    let (mut to_server, mut to_client) = (Moved::default(), Moved::default());
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
        // The first expiry also arms keepalive on the server side: only
        // connections that outlive it pay for the setsockopt calls.
        let timer = tokio::time::sleep(timeouts.idle.min(socket::KEEPALIVE_ARM_AFTER));
        let mut keepalive_armed = false;
        tokio::pin!(timer);
        loop {
            let half_closed = upstream_done || downstream_done;
            let limit = if half_closed {
                timeouts.idle.min(timeouts.fin)
            } else {
                timeouts.idle
            };
            tokio::select! {
                biased;
                result = &mut upstream, if !upstream_done => {
                    if let Err(e) = result { break RelayEnd::Aborted(e) }
                    upstream_done = true;
                    if !downstream_done {
                        half_close(server, &activity);
                    }
                }
                result = &mut downstream, if !downstream_done => {
                    if let Err(e) = result { break RelayEnd::Aborted(e) }
                    downstream_done = true;
                    if !upstream_done {
                        half_close(client, &activity);
                    }
                }
                () = &mut timer => {
                    if !keepalive_armed {
                        socket::enable_keepalive(server);
                        keepalive_armed = true;
                    }
                    let silent = activity.silent_for();
                    if silent >= limit {
                        break if half_closed { RelayEnd::FinTimeout } else { RelayEnd::IdleTimeout };
                    }
                    timer.as_mut().reset(Instant::now() + (limit - silent));
                    continue;
                }
                end = &mut close => break end,
            }
            // Both ended: closing both sockets sends the last FIN, no
            // shutdown needed.
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
        to_server: to_server.bytes,
        to_client: to_client.bytes,
        spliced: to_server.spliced + to_client.spliced,
        end,
    }
}

/// Consecutive reads that fill the buffer after which a direction counts as
/// a bulk stream: large buffers, or splice when available.
const BULK_AFTER: u32 = 2;

/// Forwards an end of stream: no more bytes will be written to `to`.
fn half_close(to: &TcpStream, activity: &Activity) {
    // A half-close is activity: the FIN timeout counts from here, not from
    // the last byte, or a long-quiet client that half-closes would lose the
    // server's answer at once.
    activity.touch();
    // The peer may already be gone; its own error surfaces elsewhere.
    let _ = SockRef::from(to).shutdown(Shutdown::Write);
}

/// Moves bytes from `from` to `to` until `from` ends (the caller forwards
/// the end of stream).
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    counters: [&ShardedCounter; 2],
    activity: &Activity,
    moved: &mut Moved,
) -> io::Result<()> {
    let mut full_reads = 0u32;
    let mut may_splice = splice::enabled();
    let count = |n: usize| {
        for counter in counters {
            counter.fetch_add(n as u64, Relaxed);
        }
    };
    loop {
        readable(from).await?;
        let bulk = full_reads >= BULK_AFTER;
        if bulk && may_splice {
            let mut account = |n: usize| {
                moved.bytes += n as u64;
                moved.spliced += n as u64;
                count(n);
            };
            match splice_burst(from, to, activity, &mut account).await? {
                Burst::Ended => return Ok(()),
                Burst::Drained(bytes) => {
                    if bytes < buffer::SMALL {
                        full_reads = 0; // a trickle now: back to small copies
                    }
                    continue;
                }
                Burst::NoPipe => {}
                Burst::Unsupported => may_splice = false,
            }
        }
        let mut buf = Buffer::take(if bulk { Size::Large } else { Size::Small });
        let n = match read_some(from, &mut buf)? {
            None => continue,
            Some(0) => return Ok(()),
            Some(n) => n,
        };
        // Bytes arrived: the idle clock restarts now, not once they are
        // written, so a chunk after a long silence gets the whole timeout.
        activity.touch();
        let kept_up = n == buf.len() || (bulk && n >= buffer::SMALL);
        full_reads = if kept_up {
            full_reads.saturating_add(1)
        } else {
            0
        };
        write_all(to, &buf[..n]).await?;
        drop(buf);
        moved.bytes += n as u64;
        count(n);
        activity.touch();
    }
}

/// Bytes one direction moved.
#[derive(Debug, Default)]
struct Moved {
    bytes: u64,
    spliced: u64,
}

/// How a splice burst ended.
enum Burst {
    /// `from` reached end of stream.
    Ended,
    /// `from` has nothing more to read for now; this many bytes moved.
    Drained(usize),
    /// No full-size pipe to be had right now: copy this time.
    NoPipe,
    /// The kernel cannot splice these sockets: copy from now on.
    Unsupported,
}

/// Splices from `from` to `to` through a pooled pipe until `from` has
/// nothing more to read; the pipe goes back to the pool empty.
async fn splice_burst(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    account: &mut impl FnMut(usize),
) -> io::Result<Burst> {
    let Ok(mut pipe) = Pipe::take() else {
        return Ok(Burst::NoPipe);
    };
    let (mut burst, mut since_yield) = (0, 0);
    loop {
        let n = match from.try_io(Interest::READABLE, || pipe.fill_from(from.as_raw_fd())) {
            Ok(0) => return Ok(Burst::Ended),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained(burst)),
            Err(e) if splice::is_unsupported(&e) => return Ok(Burst::Unsupported),
            Err(e) => return Err(e),
        };
        activity.touch();
        while pipe.pending() > 0 {
            let result = to.try_io(Interest::WRITABLE, || {
                let before = pipe.pending();
                let n = pipe.drain_to(to.as_raw_fd())?;
                short_means_full(n, before)
            });
            match result {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if pipe.pending() > 0 {
                        writable(to).await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        burst += n;
        account(n);
        activity.touch();
        since_yield += n;
        if since_yield >= YIELD_AFTER {
            // Splicing never waits while both sockets keep up: let the
            // thread's other connections (and health checks, admin) run.
            since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// Bytes a splice burst moves before it lets the other tasks of its
/// thread run.
const YIELD_AFTER: usize = 1 << 20;

/// Reads what `from` has; `None` when it has nothing after all (a spurious
/// wakeup). A read shorter than the buffer emptied the socket, so tokio is
/// told at once (saving the EAGAIN read the next turn would otherwise make).
fn read_some(from: &TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let mut got = None;
    let result = from.try_io(Interest::READABLE, || {
        // SAFETY: `buf` is valid for writes of its length for the whole call.
        let n = unsafe { libc::recv(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        got = Some(n);
        if n == 0 {
            Ok(0)
        } else {
            short_means_full(n, buf.len())
        }
    });
    match result {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(got),
        Err(e) => Err(e),
    }
}

/// Writes all of `data` to `to`, waiting for room as needed.
async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut wrote = 0;
        let result = to.try_io(Interest::WRITABLE, || {
            // SAFETY: `data` is valid for reads of its length for the whole call.
            let n = unsafe {
                libc::send(
                    to.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            wrote = n as usize;
            short_means_full(wrote, data.len())
        });
        match result {
            Ok(_) => data = &data[wrote..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                data = &data[wrote..];
                if !data.is_empty() {
                    writable(to).await?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until `stream` may be readable. Unlike `TcpStream::readable`, the
/// waker sits in the socket's own reader slot rather than in the future,
/// which keeps an idle connection's task ~130 bytes smaller per direction;
/// the slot suffices because only this connection's task reads `stream`.
async fn readable(stream: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await
}

/// Waits until `stream` may be writable; see [`readable`].
async fn writable(stream: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| stream.poll_write_ready(cx)).await
}

/// A socket call that moved fewer bytes than asked found the socket's queue
/// empty (read) or full (write). Saying `WouldBlock` makes tokio clear the
/// readiness it cached, exactly as its own `poll_read`/`poll_write` do; the
/// caller keeps the count it recorded.
fn short_means_full(done: usize, asked: usize) -> io::Result<usize> {
    if done < asked {
        Err(io::ErrorKind::WouldBlock.into())
    } else {
        Ok(done)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, far)
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_is_armed_only_on_a_server_connection_that_lasts() {
        let (client, _client_peer) = pair().await;
        let (server, _server_peer) = pair().await;
        let counter = ShardedCounter::default();
        let counters = Counters {
            to_server: [&counter, &counter],
            to_client: [&counter, &counter],
        };
        let timeouts = Timeouts {
            idle: Duration::from_secs(3600),
            fin: Duration::from_secs(60),
        };
        let relay = relay(&client, &server, timeouts, counters, std::future::pending());
        tokio::pin!(relay);
        let keepalive = || SockRef::from(&server).keepalive().unwrap();
        tokio::select! {
            _ = &mut relay => panic!("relay ended"),
            () = tokio::time::sleep(socket::KEEPALIVE_ARM_AFTER - Duration::from_secs(1)) => {}
        }
        assert!(!keepalive(), "a short connection pays for keepalive");
        tokio::select! {
            _ = &mut relay => panic!("relay ended"),
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        assert!(keepalive(), "a lasting connection has no keepalive");
    }
}
