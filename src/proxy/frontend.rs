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
use crate::config::{self, ProxyVersion};
use crate::proxy::limit::{ConnectionLimit, SourceLimit};
use crate::proxy::sni::SniRoutes;
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
    /// A frontend with `routes` got no byte within `inspect_timeout`: closed.
    InspectTimeout,
    /// An `accept_proxy` frontend got no valid PROXY protocol header in
    /// time: closed, never forwarded.
    ProxyHeader,
}

impl RejectReason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [RejectReason; 7] = [
        RejectReason::NoServer,
        RejectReason::DialFailed,
        RejectReason::MaxConnections,
        RejectReason::GlobalMaxConnections,
        RejectReason::SourceLimit,
        RejectReason::InspectTimeout,
        RejectReason::ProxyHeader,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NoServer => "no_server",
            RejectReason::DialFailed => "dial_failed",
            RejectReason::MaxConnections => "max_connections",
            RejectReason::GlobalMaxConnections => "global_max_connections",
            RejectReason::SourceLimit => "source_limit",
            RejectReason::InspectTimeout => "inspect_timeout",
            RejectReason::ProxyHeader => "proxy_header",
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
    /// The default backend's pool (the only one without `routes`).
    pub pool: Arc<Pool>,
    /// TLS passthrough routes by server name; `None` when the frontend has
    /// none, so its connections are never inspected.
    pub sni: Option<SniRoutes>,
    /// Expect a PROXY protocol header of this version before anything else.
    pub accept_proxy: Option<ProxyVersion>,
    /// How long the PROXY header and the ClientHello may take to arrive.
    pub inspect_timeout: Duration,
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

/// The pools a frontend forwards to: its default backend's and, in the
/// order of its `routes`, each route's.
#[derive(Debug, Clone)]
pub struct RoutePools {
    /// The default backend's pool.
    pub default: Arc<Pool>,
    /// One pool per route of the spec, in its order.
    pub routed: Vec<Arc<Pool>>,
}

impl From<Arc<Pool>> for RoutePools {
    fn from(default: Arc<Pool>) -> RoutePools {
        RoutePools {
            default,
            routed: Vec::new(),
        }
    }
}

impl RoutePools {
    /// Whether `route` forwards to exactly these pools.
    pub fn same_as(&self, route: &Route) -> bool {
        let routed: Vec<&Arc<Pool>> = route
            .sni
            .iter()
            .flat_map(|sni| sni.routes.iter().map(|r| &r.pool))
            .collect();
        Arc::ptr_eq(&self.default, &route.pool)
            && routed.len() == self.routed.len()
            && routed
                .iter()
                .zip(&self.routed)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Frontend {
    /// A frontend with no connection yet.
    pub fn new(spec: &config::Frontend, pools: impl Into<RoutePools>) -> Frontend {
        Frontend {
            name: spec.name.clone(),
            stats: FrontendStats::default(),
            route: ArcSwap::from_pointee(Route::new(spec, pools.into(), None)),
            limit: ConnectionLimit::new(spec.max_connections),
            source_limit: Arc::new(SourceLimit::new(spec.max_connections_per_source)),
            routes: watch::Sender::new(0),
        }
    }

    /// Applies a reloaded spec: new route, new connection limits. The
    /// counters of routes whose pattern stays carry over.
    pub fn update(&self, spec: &config::Frontend, pools: RoutePools) {
        let previous = self.route.load();
        let route = Route::new(spec, pools, previous.sni.as_ref());
        self.route.store(Arc::new(route));
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

    /// Whether a new connection could be given a server right now. With
    /// `routes`, whether any of the frontend's backends can serve: the
    /// listener pauses only when none can, since which backend a client
    /// wants is known only after accepting it (a client of a routed backend
    /// with no server is then reset, and counted `no_server`).
    pub fn can_serve(&self) -> bool {
        self.route
            .load()
            .pools()
            .any(|pool| pool.availability().can_serve())
    }

    /// `Ok` when a backend of the frontend has a healthy server; otherwise
    /// why not, for each (for `/readyz` and logs).
    pub fn readiness(&self) -> Result<(), NotReady> {
        let route = self.route.load();
        let mut why = Vec::new();
        for pool in route.pools() {
            match pool.readiness() {
                Ok(()) => return Ok(()),
                Err(reason) => {
                    let line = format!("backend {}: {reason}", pool.spec.name);
                    if !why.contains(&line) {
                        why.push(line);
                    }
                }
            }
        }
        Err(NotReady(why.join("; ")))
    }

    /// A watch that wakes when the frontend's backend may have become able
    /// or unable to serve: the pool's own publication, or a route swap.
    pub fn watch_availability(self: &Arc<Self>) -> AvailabilityWatch {
        AvailabilityWatch {
            routes: self.routes.subscribe(),
            pools: self.pool_watches(),
            frontend: Arc::clone(self),
        }
    }

    fn pool_watches(&self) -> Vec<watch::Receiver<u64>> {
        let route = self.route.load();
        let mut pools: Vec<&Arc<Pool>> = Vec::new();
        for pool in route.pools() {
            if !pools.iter().any(|p| Arc::ptr_eq(p, pool)) {
                pools.push(pool);
            }
        }
        pools.iter().map(|p| p.watch_availability()).collect()
    }
}

/// Follows a frontend's backends' availability across route swaps.
#[derive(Debug)]
pub struct AvailabilityWatch {
    frontend: Arc<Frontend>,
    routes: watch::Receiver<u64>,
    /// One per distinct pool of the route (one without `routes`).
    pools: Vec<watch::Receiver<u64>>,
}

impl AvailabilityWatch {
    /// Completes when the availability may have changed.
    pub async fn changed(&mut self) {
        let published = async {
            match self.pools.as_mut_slice() {
                [] => std::future::pending().await,
                [one] => one.changed().await.is_ok(),
                many => {
                    // Only frontends with routes watch several pools.
                    let mut waits: Vec<_> =
                        many.iter_mut().map(|p| Box::pin(p.changed())).collect();
                    std::future::poll_fn(|cx| {
                        for wait in &mut waits {
                            if let std::task::Poll::Ready(r) = wait.as_mut().poll(cx) {
                                return std::task::Poll::Ready(r.is_ok());
                            }
                        }
                        std::task::Poll::Pending
                    })
                    .await
                }
            }
        };
        tokio::select! {
            routed = self.routes.changed() => {
                if routed.is_ok() {
                    // Other pools, perhaps: follow their publication from now on.
                    self.pools = self.frontend.pool_watches();
                } else {
                    std::future::pending::<()>().await;
                }
            }
            alive = published => {
                if !alive {
                    // A pool was replaced; the route swap wakes us.
                    let _ = self.routes.changed().await;
                    self.pools = self.frontend.pool_watches();
                }
            }
        }
    }
}

impl Route {
    fn new(spec: &config::Frontend, pools: RoutePools, previous: Option<&SniRoutes>) -> Route {
        let sni = (!spec.routes.is_empty()).then(|| SniRoutes::new(spec, pools.routed, previous));
        Route {
            pool: pools.default,
            sni,
            accept_proxy: spec.accept_proxy,
            inspect_timeout: spec.inspect_timeout,
            idle_timeout: spec.idle_timeout,
            fin_timeout: spec.fin_timeout,
            backlog: spec.backlog,
        }
    }

    /// Every pool the route forwards to: the default first, then the routes'.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        std::iter::once(&self.pool).chain(
            self.sni
                .iter()
                .flat_map(|sni| sni.routes.iter().map(|r| &r.pool)),
        )
    }
}
