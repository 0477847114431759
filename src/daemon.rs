//! The running daemon: binds the frontends, builds the first snapshot, owns
//! the cancellation tree, serves the admin API, reloads, and drains on
//! shutdown.
//!
//! Cancellation tree: `stop_accepting` ends every accept loop (SIGTERM);
//! `close_connections` ends every live relay (the drain deadline). The
//! connection tasks are tracked so shutdown knows when they are all gone.
//!
//! Health checks follow the snapshot: every snapshot stored goes through
//! [`Daemon::install_snapshot`], which also syncs the health tasks.

mod control;
mod listeners;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{self, AdminError, AdminServer};
use crate::config::{Config, ConfigError};
use crate::frontend::Frontend;
use crate::health::HealthChecks;
use crate::limit::{self, ConnectionLimit, FdBudget};
use crate::pool::{Server, Snapshot};
use crate::reload;
use crate::runtime;
use crate::socket;
use crate::systemd::{self, ActivationError, InheritedListeners};

pub use control::{AdminChange, LastReload, ReloadError, ReloadReport, UnknownServer};
pub use listeners::BindError;

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
    /// The admin API could not listen.
    #[error("{0}")]
    Admin(#[from] AdminError),
    /// Sockets inherited from systemd cannot be served.
    #[error("{0}")]
    Activation(#[from] ActivationError),
}

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
    admin: Mutex<Option<AdminServer>>,
    health: HealthChecks,
}

impl Daemon {
    /// Loads the config at `path` (logging the timing lint's warnings) and starts.
    pub async fn start_from_file(path: &Path) -> Result<Daemon, StartError> {
        Daemon::start_from_file_with(path, InheritedListeners::default()).await
    }

    /// Like [`Daemon::start_from_file`], serving the sockets systemd handed
    /// over (socket activation) and binding only the addresses they do not cover.
    pub async fn start_from_file_with(
        path: &Path,
        inherited: InheritedListeners,
    ) -> Result<Daemon, StartError> {
        let checked = Config::load_with_warnings(path)?;
        for warning in &checked.warnings {
            warn!("{}", warning.one_line());
        }
        let warnings = checked.warnings.iter().map(|w| w.one_line()).collect();
        Daemon::start_with_warnings(
            path,
            checked.config,
            warnings,
            inherited,
            reload::Resolver::system(),
        )
        .await
    }

    /// Binds every frontend of `config`, the admin API, and starts serving.
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
        let resolved = reload::assemble_pools(&config, None, &lookups);
        let mut frontends = Vec::with_capacity(config.frontends.len());
        let mut bound = Vec::new();
        for (index, spec) in config.frontends.iter().enumerate() {
            let pool = resolved.pool_of(spec);
            let frontend = Arc::new(Frontend::new(spec, pool));
            for socket in inherited.take(index) {
                let addr = socket.local;
                info!(frontend = %spec.name, fd = socket.fd, name = %socket.name, address = %addr, "serving a socket inherited from systemd");
                let configured = socket.configured_as(&spec.listen);
                bound.push((
                    Arc::clone(&frontend),
                    configured,
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
                bound.push((Arc::clone(&frontend), addr, listeners));
            }
            frontends.push(frontend);
        }
        admin::auth::Policy::new(&config.admin)
            .check()
            .map_err(AdminError::from)?;
        let admin_listener = admin::bind(&config.admin.listen).await?;

        let servers = resolved.pools.iter().map(|p| p.servers.len() as u64).sum();
        // Each accept loop's socket gets a second descriptor, the daemon's,
        // when its loop starts (see `daemon::listeners`): count them now.
        let duplicates: u64 = bound
            .iter()
            .map(|(_, _, sockets)| sockets.len() as u64)
            .sum();
        let fd_budget = limit::fd_budget(limit::open_fds() + duplicates, servers);
        let global_limit = Arc::new(ConnectionLimit::new(global_max_connections(
            &config, fd_budget,
        )));
        let shared = Arc::new(Shared {
            config_path: config_path.to_owned(),
            snapshot: ArcSwap::from_pointee(Snapshot {
                config: Arc::clone(&config),
                pools: resolved.pools,
                frontends,
            }),
            listeners: Mutex::new(Listeners::default()),
            connections: TaskTracker::new(),
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
            admin: Mutex::new(None),
            health: HealthChecks::new(),
        });
        let daemon = Daemon { shared };
        daemon
            .note_dns_results(&resolved.dns_failures, &resolved.dns_resolved)
            .await;
        // Checks start before the listeners: the first ones finish within
        // milliseconds, so few clients meet an unchecked server.
        daemon.sync_health_checks(&daemon.snapshot());
        for (frontend, configured, listener) in bound {
            daemon.spawn_accept_loop(frontend, configured, listener);
        }
        // The admin API outlives `stop_accepting`: /readyz says "shutting
        // down" and /metrics keeps answering while connections drain.
        let admin = admin::serve(admin_listener, daemon.clone());
        *daemon.shared.admin.lock().expect("admin lock") = Some(admin);
        tokio::spawn(daemon.clone().refresh_dns_periodically());
        tokio::spawn(crate::ready_file::keep(daemon.clone()));
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

    /// Makes `snapshot` the running one and brings the health checks in
    /// line with it (new servers checked at once, removed ones no longer).
    /// Reloads and DNS changes store every snapshot through here.
    pub fn install_snapshot(&self, snapshot: Arc<Snapshot>) {
        self.shared.snapshot.store(Arc::clone(&snapshot));
        self.sync_health_checks(&snapshot);
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

    /// Stops the admin API now, so that a successor can bind its address.
    pub fn stop_admin(&self) {
        if let Some(admin) = self.shared.admin.lock().expect("admin lock").take() {
            admin.stop();
        }
    }

    /// Serves the admin API again after [`Daemon::stop_admin`] (a successor
    /// that failed to start).
    pub async fn restart_admin(&self) -> Result<(), AdminError> {
        let listener = admin::bind(&self.snapshot().config.admin.listen).await?;
        let admin = admin::serve(listener, self.clone());
        *self.shared.admin.lock().expect("admin lock") = Some(admin);
        Ok(())
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
    pub fn liveness(&self) -> Result<(), String> {
        let dead = self.listeners().dead_accept_loops();
        if let Some((frontend, addr)) = dead.first() {
            return Err(format!(
                "the accept loop of frontend {frontend} on {addr} has ended ({} in all): nothing accepts there",
                dead.len()
            ));
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
                return Err(format!(
                    "the health task of {}/{} has not run for {} (its checks are due every {}): health checking is stuck or dead",
                    server.backend,
                    server.name,
                    crate::config::format_duration(silence),
                    crate::config::format_duration(pool.spec.health.interval),
                ));
            }
        }
        Ok(())
    }

    /// Called after every snapshot swap (start, reload, DNS change): starts
    /// checks for servers that are new, stops those of servers that are gone.
    fn sync_health_checks(&self, snapshot: &Arc<Snapshot>) {
        self.shared.health.sync(snapshot);
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
        if let Some(admin) = self.shared.admin.lock().expect("admin lock").take() {
            admin.stop();
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
