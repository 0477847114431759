//! The running daemon: binds the frontends, builds the first snapshot, owns
//! the cancellation tree, reloads, and drains on shutdown. The admin API
//! reads it; [`crate::run`] starts and stops both.
//!
//! Cancellation tree: `stop_accepting` ends every accept loop (SIGTERM);
//! `close_connections` ends every live relay (the drain deadline). The
//! connection tasks are tracked so shutdown knows when they are all gone.
//!
//! Every change after the start goes through one path: a new desired state
//! ([`Desired`]), its diff against the running one (a plan), and `apply`
//! (`daemon/apply.rs`), the only code that changes the running daemon.

mod apply;
mod control;
mod discovery;
mod listeners;
pub mod ready_file;
mod rebalance;
pub mod reload;
pub mod rlimit;
pub mod service;
pub mod signals;
mod snapshot;
pub mod systemd;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backend::health::HealthChecks;
use crate::backend::pool::Server;
use crate::config::{Checked, Config, ConfigError};
use crate::daemon::reload::Desired;
use crate::net::socket;
use crate::proxy::frontend::Frontend;
use crate::proxy::limit::{self, ConnectionLimit, FdBudget};
use crate::proxy::runtime;
use systemd::{ActivationError, InheritedListeners};

pub use control::{AdminChange, LastReload, ReloadError, ReloadReport, UnknownServer};
pub use discovery::{DiscoveryPhase, DiscoveryState, UPDATE_RESULTS as DISCOVERY_RESULTS};
pub use listeners::BindError;
pub use rebalance::{DEFAULT_WINDOW as DEFAULT_REBALANCE_WINDOW, RebalanceStarted, ServerExcess};
pub use snapshot::Snapshot;

use listeners::Listeners;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config file is unreadable or invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A listen address could not be bound.
    #[error("{0}")]
    Bind(#[from] BindError),
    /// Sockets inherited from systemd cannot be served.
    #[error("{0}")]
    Activation(#[from] ActivationError),
}

/// What shows lbd is not working (for the systemd watchdog): an accept
/// loop that ended, a health task that stopped turning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotAlive(pub String);

/// A running lbd: frontends listening, connections being forwarded.
#[derive(Debug, Clone)]
pub struct Daemon {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config_path: PathBuf,
    snapshot: ArcSwap<Snapshot>,
    listeners: Mutex<Listeners>,
    connections: TaskTracker,
    /// The daemon's own tasks (DNS refresh, reloads a signal asked for):
    /// shutdown waits for them too.
    tasks: TaskTracker,
    global_limit: Arc<ConnectionLimit>,
    fd_budget: FdBudget,
    stop_accepting: CancellationToken,
    close_connections: CancellationToken,
    /// Held to compare and swap snapshots (reload, DNS refresh), to change a
    /// server's admin state, and by shutdown to mark the daemon stopping.
    /// Never held across a DNS lookup.
    reload_lock: tokio::sync::Mutex<control::ReloadState>,
    /// Reloads take turns: one file read and applied at a time.
    reload_turn: tokio::sync::Mutex<()>,
    /// How DNS-named servers are resolved.
    resolver: reload::Resolver,
    last_reload: Mutex<LastReload>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    started_at: SystemTime,
    health: HealthChecks,
    /// Rebalances under way, and the watcher's wake-up on apply.
    rebalancer: rebalance::Rebalancer,
    /// Each backend's discovery, for status and metrics.
    discovery: discovery::DiscoveryRegistry,
}

impl Daemon {
    /// Loads the config at `path` (logging the timing lint's warnings) and starts.
    pub async fn start_from_file(path: &Path) -> Result<Daemon, StartError> {
        let checked = Config::load_with_warnings(path)?;
        Daemon::start_checked(
            path,
            checked,
            InheritedListeners::default(),
            reload::Resolver::system(),
        )
        .await
    }

    /// Starts from a loaded config (logging its lint warnings), serving the
    /// sockets systemd handed over (socket activation) and binding only the
    /// addresses they do not cover; DNS names are resolved with `resolver`.
    pub async fn start_checked(
        path: &Path,
        checked: Checked,
        inherited: InheritedListeners,
        resolver: reload::Resolver,
    ) -> Result<Daemon, StartError> {
        for warning in &checked.warnings {
            warn!("{}", warning.one_line());
        }
        let warnings = checked.warnings.iter().map(|w| w.one_line()).collect();
        Daemon::start_with_warnings(path, checked.config, warnings, inherited, resolver).await
    }

    /// Binds every frontend of `config` and starts serving.
    pub async fn start(config_path: &Path, config: Config) -> Result<Daemon, StartError> {
        Daemon::start_with_warnings(
            config_path,
            config,
            Vec::new(),
            InheritedListeners::default(),
            reload::Resolver::system(),
        )
        .await
    }

    async fn start_with_warnings(
        config_path: &Path,
        config: Config,
        warnings: Vec<String>,
        inherited: InheritedListeners,
        resolver: reload::Resolver,
    ) -> Result<Daemon, StartError> {
        let config = Arc::new(config);
        let mut inherited = inherited.assign(&config.frontends)?;
        let lookups = reload::resolve_names(&config, &resolver).await;
        let (desired, dns) = Desired::resolve(Arc::clone(&config), &lookups, None);
        // The first plan adds everything; its listeners are bound here, not
        // by `apply`, since some may be systemd's.
        let plan = reload::diff(&Desired::nothing(&config), &desired, &[]);
        let pools = reload::build_pools(&desired, &plan, &[]);
        let mut frontends = Vec::with_capacity(config.frontends.len());
        let mut bound = Vec::new();
        let mut covered_too = Vec::new();
        for (index, spec) in config.frontends.iter().enumerate() {
            let frontend = Arc::new(Frontend::new(spec, snapshot::route_pools(&pools, spec)));
            for socket in inherited.take(index) {
                let addr = socket.local;
                info!(frontend = %spec.name, fd = socket.fd, name = %socket.name, address = %addr, "serving a socket inherited from systemd");
                let configured = socket.configured_as(&spec.listen);
                let also: Vec<SocketAddr> = spec
                    .listen
                    .iter()
                    .copied()
                    .filter(|&a| a != configured && socket.serves(a))
                    .collect();
                covered_too.push((spec.name.clone(), configured, also));
                bound.push((
                    Arc::clone(&frontend),
                    configured,
                    spec.backlog,
                    vec![socket.into_listener()],
                ));
            }
            for &addr in &spec.listen {
                if inherited.covers(index, addr) {
                    continue;
                }
                let listeners =
                    socket::bind_listeners(addr, spec.backlog, runtime::acceptor_count()).map_err(
                        |source| BindError {
                            frontend: spec.name.clone(),
                            addr,
                            source,
                        },
                    )?;
                bound.push((Arc::clone(&frontend), addr, spec.backlog, listeners));
            }
            frontends.push(frontend);
        }

        let servers = pools.iter().map(|p| p.servers.len() as u64).sum();
        // Each accept loop's socket gets a second descriptor, the daemon's,
        // when its loop starts (see `daemon::listeners`): count them now.
        let duplicates: u64 = bound
            .iter()
            .map(|(_, _, _, sockets)| sockets.len() as u64)
            .sum();
        let fd_budget = limit::fd_budget(limit::open_fds() + duplicates, servers);
        let global_limit = Arc::new(ConnectionLimit::new(global_max_connections(
            &config, fd_budget,
        )));
        let shared = Arc::new(Shared {
            config_path: config_path.to_owned(),
            snapshot: ArcSwap::from_pointee(Snapshot {
                desired: Arc::new(desired),
                config: Arc::clone(&config),
                pools,
                frontends,
            }),
            listeners: Mutex::new(Listeners::default()),
            connections: TaskTracker::new(),
            tasks: TaskTracker::new(),
            global_limit,
            fd_budget,
            stop_accepting: CancellationToken::new(),
            close_connections: CancellationToken::new(),
            reload_lock: tokio::sync::Mutex::new(control::ReloadState::default()),
            reload_turn: tokio::sync::Mutex::new(()),
            resolver,
            last_reload: Mutex::new(LastReload::loaded(warnings)),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            started_at: SystemTime::now(),
            health: HealthChecks::new(),
            rebalancer: rebalance::Rebalancer::default(),
            discovery: discovery::DiscoveryRegistry::default(),
        });
        let daemon = Daemon { shared };
        daemon.note_dns_results(&dns).await;
        // Checks start before the listeners: the first ones finish within
        // milliseconds, so few clients meet an unchecked server.
        daemon.sync_health_checks(&daemon.snapshot(), &plan);
        for (frontend, configured, backlog, listener) in bound {
            daemon.spawn_accept_loop(frontend, configured, backlog, listener);
        }
        for (frontend, configured, also) in covered_too {
            daemon.listeners().also_covers(&frontend, configured, also);
        }
        daemon.spawn(daemon.clone().refresh_dns_periodically());
        daemon.spawn(daemon.clone().watch_for_joins());
        daemon.spawn(daemon.clone().supervise_discovery());
        daemon.spawn(crate::daemon::ready_file::keep(daemon.clone()));
        Ok(daemon)
    }

    /// Applies a reloaded config's global `max_connections` (within the
    /// descriptor budget found at start).
    pub fn resize_global_limit(&self, config: &Config) {
        let size = global_max_connections(config, self.shared.fd_budget);
        self.shared.global_limit.resize(size);
    }

    /// How many connections may be open at once over all frontends.
    pub fn global_max_connections(&self) -> u64 {
        self.shared.global_limit.size()
    }

    /// The config file this daemon reloads from.
    pub fn config_path(&self) -> &Path {
        &self.shared.config_path
    }

    /// The current snapshot: config, pools and frontends.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Runs `task` as one of the daemon's own (a reload a signal asked for,
    /// the DNS refresh): shutdown waits for it.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.shared.tasks.spawn(task);
    }

    /// When the daemon started.
    pub fn started_at(&self) -> SystemTime {
        self.shared.started_at
    }

    /// The health checks: `check_now` after an admin change, `first_round`
    /// before telling systemd READY.
    pub fn health(&self) -> &HealthChecks {
        &self.shared.health
    }

    /// The bound listening sockets and their accept loops, locked.
    fn listeners(&self) -> MutexGuard<'_, Listeners> {
        self.shared.listeners.lock().expect("listener list lock")
    }

    /// The addresses a frontend actually listens on (port 0 resolved).
    pub fn local_addrs(&self, frontend: &str) -> Vec<SocketAddr> {
        self.listeners().local_addrs(frontend)
    }

    /// A duplicate of every listening socket with its frontend's name
    /// (see [`crate::upgrade`]).
    pub fn listening_sockets(&self) -> std::io::Result<Vec<(String, std::net::TcpListener)>> {
        self.listeners().duplicates()
    }

    /// Resolves once shutdown has begun (no new connections are accepted).
    pub async fn stopping(&self) {
        self.shared.stop_accepting.cancelled().await;
    }

    /// Whether shutdown has begun (no new connections are accepted).
    pub fn is_shutting_down(&self) -> bool {
        self.shared.stop_accepting.is_cancelled()
    }

    /// Evidence that lbd works, for the systemd watchdog: every accept loop
    /// that should run still runs, and every listed server's health task
    /// turned recently (see [`health_task_bound`]). `Err` says what is wrong.
    /// Health checks end when shutdown begins, so a drain only needs the
    /// accept loops' part (there are none left by then).
    pub fn liveness(&self) -> Result<(), NotAlive> {
        let dead = self.listeners().dead_accept_loops();
        if let Some((frontend, addr)) = dead.first() {
            return Err(NotAlive(format!(
                "the accept loop of frontend {frontend} on {addr} has ended ({} in all): nothing accepts there",
                dead.len()
            )));
        }
        if self.is_shutting_down() {
            return Ok(());
        }
        let snapshot = self.snapshot();
        for pool in &snapshot.pools {
            let bound = health_task_bound(&pool.spec.health);
            let stalled = pool
                .servers
                .iter()
                .map(|server| (server, server.health_task_silence()))
                .filter(|(_, silence)| *silence > bound);
            if let Some((server, silence)) = stalled.max_by_key(|(_, silence)| *silence) {
                return Err(NotAlive(format!(
                    "the health task of {}/{} has not run for {} (its checks are due every {}): health checking is stuck or dead",
                    server.backend,
                    server.name,
                    crate::config::format_duration(silence),
                    crate::config::format_duration(pool.spec.health.interval),
                )));
            }
        }
        Ok(())
    }

    /// Checks a server right away (an operator drained, disabled or enabled it).
    fn check_now(&self, server: &Arc<Server>) {
        self.shared.health.check_now(server);
    }

    /// Ends the drain now: every live connection is closed at once.
    pub fn close_connections_now(&self, why: &str) {
        warn!(
            signal = why,
            connections = self.shared.connections.len(),
            "second signal: closing the remaining connections now"
        );
        self.shared.close_connections.cancel();
    }

    /// Stops accepting at once, lets live connections finish for up to
    /// `drain_timeout`, then closes the rest. Returns when all are gone.
    pub async fn shutdown(&self) {
        let drain_timeout = self.snapshot().config.global.drain_timeout;
        {
            // Under the reload lock: a reload or DNS refresh either finished
            // before (its listeners are closed below) or sees the daemon
            // stopping and changes nothing. The admin API stays up during the
            // drain, so reloads can still be asked for.
            let _swap = self.shared.reload_lock.lock().await;
            systemd::notifier().stopping();
            self.shared.stop_accepting.cancel();
            // The daemon's own descriptors go too, so each socket closes as
            // its accept loop ends.
            self.listeners().close_all();
        }
        self.shared.health.shutdown().await;
        // A reload under way sees the daemon stopping and ends; the DNS
        // refresh ends with `stop_accepting`. A lookup can take its timeout.
        self.shared.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.shared.tasks.wait())
            .await
            .is_err()
        {
            warn!("a reload or DNS refresh did not end within 10s of shutdown; going on");
        }
        let connections = &self.shared.connections;
        connections.close();
        let live = connections.len();
        if live > 0 {
            info!(connections = live, deadline = ?drain_timeout, "draining connections");
        }
        if tokio::time::timeout(drain_timeout, connections.wait())
            .await
            .is_err()
        {
            warn!(
                connections = connections.len(),
                "drain deadline reached; closing the remaining connections"
            );
            self.shared.close_connections.cancel();
            // Relays end at once on cancellation; this bound is only a backstop.
            let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
        }
        info!("shutdown complete");
    }
}

/// The global connection limit: the configured one, but never more than the
/// descriptor limit can carry, since past it every accept or dial fails
/// with EMFILE instead of the client waiting its turn in the backlog.
fn global_max_connections(config: &Config, budget: FdBudget) -> usize {
    let configured = config.global.max_connections;
    let size = configured.unwrap_or(usize::MAX).min(budget.connections);
    match (configured, budget.nofile) {
        (Some(wanted), Some(nofile)) if wanted > size => warn!(
            configured = wanted,
            using = size,
            nofile,
            "global max_connections needs more file descriptors than RLIMIT_NOFILE allows; raise LimitNOFILE"
        ),
        (None, Some(nofile)) => {
            info!(
                max_connections = size,
                nofile, "global connection limit from RLIMIT_NOFILE"
            );
        }
        _ => {}
    }
    size
}

#[cfg(test)]
impl Daemon {
    /// Ends every accept loop abruptly, as a bug would, and waits until
    /// they are gone.
    pub(crate) async fn abort_accept_loops_for_test(&self) {
        self.listeners().abort_accept_loops();
        while self.listeners().dead_accept_loops().is_empty() {
            tokio::task::yield_now().await;
        }
    }
}

/// The longest a working health task stays silent: it sleeps up to an
/// `interval` (plus 10% jitter) and checks for up to `timeout` per turn;
/// three intervals leave room for a busy machine, and one second for tiny
/// intervals.
pub fn health_task_bound(health: &crate::config::Health) -> Duration {
    (health.interval * 3 + health.timeout).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests;
