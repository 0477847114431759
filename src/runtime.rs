//! How lbd spreads its connections over the CPUs.
//!
//! Two shapes, chosen at start by `LBD_RUNTIME`:
//! - `per-core` (the default): one current-thread tokio runtime per thread,
//!   `LBD_THREADS` of them (default: the CPUs lbd may use). Every address lbd
//!   binds gets one SO_REUSEPORT socket and one accept loop per runtime, so
//!   the kernel spreads clients over them and a connection lives and dies on
//!   one thread: no cross-thread wakeups, no shared run queue (HAProxy's
//!   model). The first runtime also runs everything else (admin, health,
//!   signals, reloads). A socket inherited from systemd has one accept loop
//!   that hands connections out to every runtime in turn.
//! - `multi-thread`: one work-stealing runtime with `LBD_THREADS` workers
//!   and one accept loop per address.
//!
//! Measured on the end-to-end benchmark (docs/benchmarks.md), per-core
//! serves ~6% more keep-alive requests and ~4% more new connections per
//! second with a lower p99 on 2 cores. The daemon behaves the same either
//! way: drain, reload, pause and hand-over act on every accept loop of an
//! address, and all connections share one task tracker.

use std::io;
use std::sync::OnceLock;

use tokio::runtime::Handle;

/// The runtimes beside the first one (per-core only), set once at start.
static WORKERS: OnceLock<Vec<Handle>> = OnceLock::new();

/// The runtime shape to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One work-stealing runtime with this many worker threads.
    MultiThread(usize),
    /// This many current-thread runtimes, one thread each.
    PerCore(usize),
}

impl Shape {
    /// Reads `LBD_RUNTIME` (`per-core`, the default, or `multi-thread`) and
    /// `LBD_THREADS` (default: the CPUs this process may use).
    pub fn from_env() -> Shape {
        let threads = std::env::var("LBD_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        match std::env::var("LBD_RUNTIME").as_deref() {
            Ok("multi-thread") => Shape::MultiThread(threads),
            _ => Shape::PerCore(threads),
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
                let others = (1..threads)
                    .map(start_worker)
                    .collect::<io::Result<Vec<_>>>()?;
                if WORKERS.set(others).is_err() {
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

/// Every runtime of the process, the current one first, then the other
/// per-core runtimes, if any: where an address's accept loops run, and what
/// the task gauge adds up.
pub fn handles() -> Vec<Handle> {
    let mut handles = vec![Handle::current()];
    if let Some(others) = WORKERS.get() {
        handles.extend(others.iter().cloned());
    }
    handles
}

/// How many accept loops (and sockets) each address lbd binds gets.
pub fn acceptor_count() -> usize {
    1 + WORKERS.get().map_or(0, Vec::len)
}
