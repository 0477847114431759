//! How lbd spreads its connections over the CPUs.
//!
//! Two shapes, chosen at start by `[global] runtime`:
//! - `per-core` (the default): one current-thread tokio runtime per thread,
//!   `[global] threads` of them (default: the CPUs lbd may use). Every address lbd
//!   binds gets one SO_REUSEPORT socket and one accept loop per runtime, so
//!   the kernel spreads clients over them and a connection lives and dies on
//!   one thread: no cross-thread wakeups, no shared run queue (HAProxy's
//!   model). An accept loop hands a connection to another runtime only when
//!   its own carries clearly more ([`place`]): the kernel's hash can be
//!   uneven, and a socket inherited from systemd has a single accept loop.
//!   The first runtime also runs everything else (admin, health, signals,
//!   reloads).
//! - `multi-thread`: one work-stealing runtime with `threads` workers
//!   and one accept loop per address.
//!
//! Measured on the end-to-end benchmark (docs/benchmarks.md), per-core
//! serves ~6% more keep-alive requests and ~4% more new connections per
//! second with a lower p99 on 2 cores. The daemon behaves the same either
//! way: drain, reload, pause and hand-over act on every accept loop of an
//! address, and all connections share one task tracker.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use tokio::runtime::Handle;

use crate::config::{Process, RuntimeKind};

/// The per-core runtimes, the first one (which runs the daemon) at index 0,
/// and the connections each carries; set once at start.
static PER_CORE: OnceLock<PerCore> = OnceLock::new();

struct PerCore {
    handles: Vec<Handle>,
    live: Vec<LiveCount>,
}

/// One runtime's live connections, on a cache line of its own: each is
/// written by its own thread on every connection, and read by the others.
#[derive(Debug, Default)]
#[repr(align(128))]
struct LiveCount(AtomicUsize);

/// The runtime shape to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One work-stealing runtime with this many worker threads.
    MultiThread(usize),
    /// This many current-thread runtimes, one thread each.
    PerCore(usize),
}

impl Shape {
    /// The shape `[global] runtime` and `threads` ask for (threads unset:
    /// the CPUs this process may use).
    pub fn from_config(process: &Process) -> Shape {
        let threads = process
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        match process.runtime {
            RuntimeKind::MultiThread => Shape::MultiThread(threads),
            RuntimeKind::PerCore => Shape::PerCore(threads),
        }
    }

    /// Builds the runtime the caller blocks on; for `PerCore`, also starts
    /// the other threads' runtimes and registers them for [`handles`].
    pub fn build(self) -> io::Result<tokio::runtime::Runtime> {
        match self {
            Shape::MultiThread(threads) => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build(),
            Shape::PerCore(threads) => {
                let first = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let mut handles = vec![first.handle().clone()];
                for index in 1..threads {
                    handles.push(start_worker(index)?);
                }
                let live = handles.iter().map(|_| LiveCount::default()).collect();
                if PER_CORE.set(PerCore { handles, live }).is_err() {
                    return Err(io::Error::other("the runtimes were already built"));
                }
                Ok(first)
            }
        }
    }
}

/// Starts a thread that runs a current-thread runtime for the life of the
/// process, and returns its handle.
fn start_worker(index: usize) -> io::Result<Handle> {
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("lbd-worker-{index}"))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => {
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    // Runs what is spawned onto it until the process exits.
                    runtime.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                }
            }
        })?;
    handle_rx
        .recv()
        .map_err(|_| io::Error::other("a runtime thread died while starting"))?
}

/// Every runtime of the process: with one per core, the first (the
/// daemon's) at index 0, then the others; otherwise just the current one.
/// Where an address's accept loops run, and what the task gauge adds up.
pub fn handles() -> Vec<Handle> {
    match PER_CORE.get() {
        Some(per_core) => per_core.handles.clone(),
        None => vec![Handle::current()],
    }
}

/// How many accept loops (and sockets) each address lbd binds gets.
pub fn acceptor_count() -> usize {
    PER_CORE.get().map_or(1, |per_core| per_core.handles.len())
}

/// The runtime (index in [`handles`]) a connection accepted on runtime
/// `home` should live on: `home`, unless another carries clearly fewer
/// connections. SO_REUSEPORT spreads clients by a hash of their addresses,
/// which can leave one core with far more long-lived connections than
/// another (HAProxy's accept likewise hands a connection to its least
/// loaded thread); the slack keeps short-lived traffic where it landed.
pub fn place(home: usize) -> usize {
    PER_CORE
        .get()
        .map_or(home, |per_core| balance(home, &per_core.live))
}

/// [`place`] over these live connection counts.
fn balance(home: usize, live: &[LiveCount]) -> usize {
    let load = |index: usize| live.get(index).map_or(0, |n| n.0.load(Relaxed));
    let Some((least, least_load)) = (0..live.len())
        .map(|index| (index, load(index)))
        .min_by_key(|&(_, n)| n)
    else {
        return home;
    };
    if load(home) > least_load + least_load / 8 + IMBALANCE_SLACK {
        least
    } else {
        home
    }
}

/// Connections a runtime may carry beyond the least loaded one before new
/// ones go there instead (plus an eighth of that one's load).
const IMBALANCE_SLACK: usize = 4;

/// Counts a connection on runtime `index` (see [`place`]) until dropped.
pub fn count_connection(index: usize) -> LiveConnection {
    let counted = PER_CORE
        .get()
        .and_then(|per_core| per_core.live.get(index))
        .map(|count| &count.0);
    if let Some(live) = counted {
        live.fetch_add(1, Relaxed);
    }
    LiveConnection(counted)
}

/// A connection counted on its runtime; uncounts it on drop.
#[derive(Debug)]
pub struct LiveConnection(Option<&'static AtomicUsize>);

impl Drop for LiveConnection {
    fn drop(&mut self) {
        if let Some(live) = self.0 {
            live.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(counts: &[usize]) -> Vec<LiveCount> {
        counts
            .iter()
            .map(|&n| LiveCount(AtomicUsize::new(n)))
            .collect()
    }

    #[test]
    fn a_connection_stays_home_unless_another_runtime_carries_clearly_fewer() {
        // Even, or off by the slack: stay (short-lived traffic never moves).
        assert_eq!(balance(0, &loads(&[25, 25])), 0);
        assert_eq!(balance(0, &loads(&[29, 25])), 0);
        // An uneven hash: the next connections go to the lighter runtime.
        assert_eq!(balance(0, &loads(&[30, 20])), 1);
        assert_eq!(balance(1, &loads(&[3, 9, 0])), 2);
        // The slack grows with the load: an eighth of the lighter one's.
        assert_eq!(balance(0, &loads(&[1100, 1000])), 0);
        assert_eq!(balance(0, &loads(&[1200, 1000])), 1);
        // No per-core runtimes: always home.
        assert_eq!(balance(0, &[]), 0);
    }
}
