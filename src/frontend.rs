//! A frontend's running state: its counters, its connection limit, the
//! route (backend pool and timeouts) that reloads swap under it, and the
//! signal that tells its accept loops the backend's availability changed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Semaphore, watch};

use crate::config;
use crate::pool::Pool;

/// Why a frontend turned a client away; labels `lbd_frontend_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// No server was eligible for the connection.
    NoServer,
    /// Every dial (first and retries) failed.
    DialFailed,
}

impl RejectReason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [RejectReason; 2] = [RejectReason::NoServer, RejectReason::DialFailed];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NoServer => "no_server",
            RejectReason::DialFailed => "dial_failed",
        }
    }
}

/// Counters of one frontend.
#[derive(Debug, Default)]
pub struct FrontendStats {
    /// Connections accepted since start.
    pub total: AtomicU64,
    /// Connections open right now.
    pub active: AtomicU64,
    /// Bytes received from clients.
    pub bytes_in: AtomicU64,
    /// Bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// Connections turned away, indexed by [`RejectReason::ALL`] order.
    pub rejected: [AtomicU64; RejectReason::ALL.len()],
}

/// Where a frontend's connections go and how long they may live; replaced
/// as a whole on reload so a connection sees one consistent route.
#[derive(Debug)]
pub struct Route {
    /// The backend pool.
    pub pool: Arc<Pool>,
    /// Closes connections silent in both directions this long.
    pub idle_timeout: Duration,
    /// Closes half-closed connections whose other side is silent this long.
    pub fin_timeout: Duration,
    /// Accept queue length of listeners opened from now on. A socket
    /// already listening keeps the one it was opened with, also when it
    /// resumes after a pause (listen() again on an open socket would undo
    /// a pause the accept loop relies on).
    pub backlog: u32,
}

/// One frontend, shared by its listeners and kept across reloads by name.
#[derive(Debug)]
pub struct Frontend {
    /// The frontend's name.
    pub name: String,
    /// Counters.
    pub stats: FrontendStats,
    /// The current route; reloads store a new one.
    pub route: ArcSwap<Route>,
    /// One permit per open connection: `max_connections`.
    pub limit: Arc<Semaphore>,
    max_connections: AtomicU64,
    /// Bumped whenever the backend's availability may have changed.
    availability: watch::Sender<u64>,
}

impl Frontend {
    /// A frontend with no connection yet.
    pub fn new(spec: &config::Frontend, pool: Arc<Pool>) -> Frontend {
        Frontend {
            name: spec.name.clone(),
            stats: FrontendStats::default(),
            route: ArcSwap::from_pointee(Route::new(spec, pool)),
            limit: Arc::new(Semaphore::new(spec.max_connections)),
            max_connections: AtomicU64::new(spec.max_connections as u64),
            availability: watch::Sender::new(0),
        }
    }

    /// Applies a reloaded spec: new route, new connection limit.
    pub fn update(&self, spec: &config::Frontend, pool: Arc<Pool>) {
        self.route.store(Arc::new(Route::new(spec, pool)));
        self.availability_changed();
        let new = spec.max_connections as u64;
        let old = self.max_connections.swap(new, Relaxed);
        if new > old {
            self.limit.add_permits((new - old) as usize);
        } else if old > new {
            // Permits held by live connections are forgotten as they return.
            let mut to_forget = (old - new) as usize;
            to_forget -= self.limit.forget_permits(to_forget);
            if to_forget > 0 {
                let limit = Arc::clone(&self.limit);
                tokio::spawn(async move {
                    if let Ok(permits) = limit.acquire_many(to_forget as u32).await {
                        permits.forget();
                    }
                });
            }
        }
    }

    /// Counts a client turned away.
    pub fn count_rejected(&self, reason: RejectReason) {
        let index = RejectReason::ALL
            .iter()
            .position(|&r| r == reason)
            .unwrap_or(0);
        self.stats.rejected[index].fetch_add(1, Relaxed);
    }

    /// The configured connection limit.
    pub fn max_connections(&self) -> u64 {
        self.max_connections.load(Relaxed)
    }

    /// Whether a new connection would be given a server right now.
    pub fn can_serve(&self) -> bool {
        self.route.load().pool.availability().can_serve()
    }

    /// `Ok` when the backend has a healthy server; otherwise why not (for
    /// `/readyz` and logs).
    pub fn readiness(&self) -> Result<(), String> {
        let route = self.route.load();
        route
            .pool
            .readiness()
            .map_err(|why| format!("backend {}: {why}", route.pool.spec.name))
    }

    /// Tells the accept loops to look at the backend's availability again:
    /// called on health transitions, admin changes and route swaps.
    pub fn availability_changed(&self) {
        self.availability.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that wakes on every [`Frontend::availability_changed`].
    pub fn watch_availability(&self) -> watch::Receiver<u64> {
        self.availability.subscribe()
    }
}

impl Route {
    fn new(spec: &config::Frontend, pool: Arc<Pool>) -> Route {
        Route {
            pool,
            idle_timeout: spec.idle_timeout,
            fin_timeout: spec.fin_timeout,
            backlog: spec.backlog,
        }
    }
}
