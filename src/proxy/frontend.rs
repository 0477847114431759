//! A frontend's running state: its counters, its connection limits, the
//! route (backend pool and timeouts) that reloads swap under it, and the
//! watch that tells its accept loops the backend's availability changed
//! (the backend publishes it; it knows nothing of frontends).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::backend::pool::{NotReady, Pool};
use crate::config;
use crate::proxy::limit::{ConnectionLimit, SourceLimit};
use crate::util::counter::ShardedCounter;

/// Why a frontend turned a client away; labels `lbd_frontend_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// No server was eligible for the connection.
    NoServer,
    /// Every dial (first and retries) failed.
    DialFailed,
    /// The frontend's `max_connections` was full: a listener paused
    /// accepting and new clients waited in the kernel backlog. Names the
    /// wait in logs; a wait turns no client away, so it is never counted.
    MaxConnections,
    /// The global `max_connections` (or the descriptor budget) was full:
    /// a listener paused accepting and new clients waited in the backlog.
    /// Like `MaxConnections`, logged and never counted.
    GlobalMaxConnections,
    /// The client's address already held `max_connections_per_source`
    /// connections; this one was refused with a reset.
    SourceLimit,
}

impl RejectReason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [RejectReason; 5] = [
        RejectReason::NoServer,
        RejectReason::DialFailed,
        RejectReason::MaxConnections,
        RejectReason::GlobalMaxConnections,
        RejectReason::SourceLimit,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NoServer => "no_server",
            RejectReason::DialFailed => "dial_failed",
            RejectReason::MaxConnections => "max_connections",
            RejectReason::GlobalMaxConnections => "global_max_connections",
            RejectReason::SourceLimit => "source_limit",
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
    /// Bytes received from clients (added per chunk by every thread: sharded).
    pub bytes_in: ShardedCounter,
    /// Bytes sent to clients.
    pub bytes_out: ShardedCounter,
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
    /// Accept queue length of the frontend's sockets: an accept loop uses it
    /// when it resumes after a pause. A reload that changes it listens
    /// again on the open sockets and restarts their accept loops.
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
    /// One slot per open connection: `max_connections`.
    pub limit: ConnectionLimit,
    /// Open connections per client address: `max_connections_per_source`.
    pub source_limit: Arc<SourceLimit>,
    /// Bumped whenever a reload swaps the route (another pool, or the same
    /// one with other settings).
    routes: watch::Sender<u64>,
}

impl Frontend {
    /// A frontend with no connection yet.
    pub fn new(spec: &config::Frontend, pool: Arc<Pool>) -> Frontend {
        Frontend {
            name: spec.name.clone(),
            stats: FrontendStats::default(),
            route: ArcSwap::from_pointee(Route::new(spec, pool)),
            limit: ConnectionLimit::new(spec.max_connections),
            source_limit: Arc::new(SourceLimit::new(spec.max_connections_per_source)),
            routes: watch::Sender::new(0),
        }
    }

    /// Applies a reloaded spec: new route, new connection limits.
    pub fn update(&self, spec: &config::Frontend, pool: Arc<Pool>) {
        self.route.store(Arc::new(Route::new(spec, pool)));
        self.routes.send_modify(|n| *n = n.wrapping_add(1));
        self.limit.resize(spec.max_connections);
        self.source_limit.set(spec.max_connections_per_source);
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
        self.limit.size()
    }

    /// Whether a new connection would be given a server right now.
    pub fn can_serve(&self) -> bool {
        self.route.load().pool.availability().can_serve()
    }

    /// `Ok` when the backend has a healthy server; otherwise why not (for
    /// `/readyz` and logs).
    pub fn readiness(&self) -> Result<(), NotReady> {
        let route = self.route.load();
        route
            .pool
            .readiness()
            .map_err(|why| why.of(format_args!("backend {}", route.pool.spec.name)))
    }

    /// A watch that wakes when the frontend's backend may have become able
    /// or unable to serve: the pool's own publication, or a route swap.
    pub fn watch_availability(self: &Arc<Self>) -> AvailabilityWatch {
        AvailabilityWatch {
            routes: self.routes.subscribe(),
            pool: self.route.load().pool.watch_availability(),
            frontend: Arc::clone(self),
        }
    }
}

/// Follows a frontend's backend availability across route swaps.
#[derive(Debug)]
pub struct AvailabilityWatch {
    frontend: Arc<Frontend>,
    routes: watch::Receiver<u64>,
    pool: watch::Receiver<u64>,
}

impl AvailabilityWatch {
    /// Completes when the availability may have changed.
    pub async fn changed(&mut self) {
        tokio::select! {
            routed = self.routes.changed() => {
                if routed.is_ok() {
                    // Another pool, perhaps: follow its publication from now on.
                    self.pool = self.frontend.route.load().pool.watch_availability();
                } else {
                    std::future::pending::<()>().await;
                }
            }
            published = self.pool.changed() => {
                if published.is_err() {
                    // The pool was replaced; the route swap wakes us.
                    let _ = self.routes.changed().await;
                    self.pool = self.frontend.route.load().pool.watch_availability();
                }
            }
        }
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
