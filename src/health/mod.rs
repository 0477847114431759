//! Health checking: which servers can take a connection right now.
//!
//! Every server of every backend gets one task (`task.rs`) that runs the
//! backend's active check (`tcp`, `tls` or `https`) on an interval
//! with jitter, faster while the server is changing state, and feeds the
//! results to a rise/fall state machine (`machine.rs`). Failed dials on client
//! traffic (passive health) feed the same machine at once. The verdict is
//! stored on the [`Server`] (an atomic the data path reads); every change is
//! logged at info with its reason, counted, and wakes the frontends so they
//! can pause their listeners when no server is left.
//!
//! [`HealthChecks`] owns the tasks: the daemon creates it and calls
//! [`HealthChecks::sync`] after every snapshot swap (start and reload), so
//! new servers are checked at once, removed ones stop being checked, and
//! servers that stay keep their task and state.

mod https;
mod machine;
mod task;
mod tcp;
mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{self, CheckKind};
use crate::dial::DialError;
use crate::frontend::Frontend;
use crate::pool::{Availability, Health, Pool, Server, Snapshot};

pub use https::HttpsProbe;
pub use machine::{RiseFall, Transition, format_elapsed};
pub use tls::{TlsProbe, TlsSetupError};

/// A check that found the server alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alive {
    /// It answered as a healthy server does; the detail says how.
    Ok(String),
    /// HTTP 401/403: alive and answering, but the check is not let in.
    AuthError(String),
}

/// Why a check failed; [`CheckError::result`] is its `last_check.result`.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The TCP connection failed: refused, timeout, unreachable…
    #[error(transparent)]
    Dial(#[from] DialError),
    /// TCP connected but TLS did not work out (or its settings are unusable).
    #[error("{0}")]
    Tls(String),
    /// TLS worked but the HTTP answer was missing or not 2xx.
    #[error("{0}")]
    Http(String),
}

impl CheckError {
    /// The result label: a dial error kind, `tls_error` or `http_error`.
    pub fn result(&self) -> &'static str {
        match self {
            CheckError::Dial(e) => e.kind.as_str(),
            CheckError::Tls(_) => "tls_error",
            CheckError::Http(_) => "http_error",
        }
    }

    /// The human part: the OS's words, the TLS alert, the HTTP status.
    pub fn detail(&self) -> String {
        match self {
            CheckError::Dial(e) => e.detail.clone(),
            CheckError::Tls(d) | CheckError::Http(d) => d.clone(),
        }
    }
}

/// One kind of active check against one server, as the task runs it.
pub trait Check: Send + 'static {
    /// The kind's name in `last_check.check`: `tcp`, `tls` or `https`.
    fn kind(&self) -> &'static str;
    /// Runs the check once, bounded by the backend's `timeout`.
    fn run(&mut self) -> impl Future<Output = Result<Alive, CheckError>> + Send + '_;
}

/// The configured check of one server: where it goes and how.
#[derive(Debug)]
pub struct ActiveCheck {
    addr: SocketAddr,
    host: String,
    spec: config::Health,
    probe: Probe,
}

#[derive(Debug)]
enum Probe {
    Tcp,
    Tls(TlsProbe),
    Https(HttpsProbe),
    /// The TLS settings could not be loaded; tried again before each check.
    Unusable(String),
}

impl ActiveCheck {
    /// The check `spec` describes for a server at `addr` whose configured
    /// host is `host` (the TLS name when `sni` is not set).
    pub fn new(spec: &config::Health, addr: SocketAddr, host: &str) -> ActiveCheck {
        let addr = SocketAddr::new(addr.ip(), spec.port.unwrap_or(addr.port()));
        let mut check = ActiveCheck {
            addr,
            host: host.to_owned(),
            spec: spec.clone(),
            probe: Probe::Tcp,
        };
        check.probe = check.build_probe();
        check
    }

    fn build_probe(&self) -> Probe {
        let built = match self.spec.check {
            CheckKind::Tcp => return Probe::Tcp,
            CheckKind::Tls => TlsProbe::new(&self.spec, &self.host, &[]).map(Probe::Tls),
            CheckKind::Https => HttpsProbe::new(&self.spec, &self.host).map(Probe::Https),
        };
        built.unwrap_or_else(|e| {
            warn!(address = %self.addr, error = %e, "health check cannot be set up; the server counts as failing it");
            Probe::Unusable(e.to_string())
        })
    }
}

impl Check for ActiveCheck {
    fn kind(&self) -> &'static str {
        self.spec.check.as_str()
    }

    async fn run(&mut self) -> Result<Alive, CheckError> {
        if let Probe::Unusable(_) = self.probe {
            self.probe = self.build_probe();
        }
        let timeout = self.spec.timeout;
        match &self.probe {
            Probe::Tcp => tcp::check(self.addr, timeout).await,
            Probe::Tls(probe) => probe.check(self.addr, timeout).await,
            Probe::Https(probe) => probe.check(self.addr, timeout).await,
            Probe::Unusable(why) => Err(CheckError::Tls(why.clone())),
        }
    }
}

/// The health tasks of a daemon: one per server of the current snapshot.
#[derive(Debug, Clone)]
pub struct HealthChecks {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    stop: CancellationToken,
    tracker: TaskTracker,
    /// Keyed by the server's `Arc` address: a server kept across a reload is
    /// the same `Arc`, so it keeps its task.
    tasks: Mutex<HashMap<usize, TaskHandle>>,
    topology: ArcSwap<Topology>,
    /// Servers of the first sync not checked yet; `None` before that sync.
    first_round: watch::Sender<Option<usize>>,
    /// The last availability logged per backend, so changes are logged once.
    pool_states: Mutex<HashMap<String, Availability>>,
}

#[derive(Debug)]
struct TaskHandle {
    /// Held so the key (this `Arc`'s address) cannot be reused by another
    /// server while the entry exists.
    server: Arc<Server>,
    spec: config::Health,
    stop: CancellationToken,
    wake: Arc<Notify>,
}

/// The pools and frontends of the latest snapshot, for the tasks to consult.
#[derive(Debug, Default)]
struct Topology {
    pools: Vec<Arc<Pool>>,
    frontends: Vec<Arc<Frontend>>,
}

impl Default for HealthChecks {
    fn default() -> Self {
        HealthChecks::new()
    }
}

impl HealthChecks {
    /// No task yet; [`HealthChecks::sync`] starts them.
    pub fn new() -> HealthChecks {
        HealthChecks {
            shared: Arc::new(Shared {
                stop: CancellationToken::new(),
                tracker: TaskTracker::new(),
                tasks: Mutex::new(HashMap::new()),
                topology: ArcSwap::from_pointee(Topology::default()),
                first_round: watch::Sender::new(None),
                pool_states: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Follows a new snapshot: starts a task for every server not checked
    /// yet (its first check runs at once), restarts those whose backend's
    /// health settings changed, and stops those no longer listed. Call it
    /// after every snapshot swap.
    pub fn sync(&self, snapshot: &Snapshot) {
        self.set_topology(snapshot);
        let mut tasks = self.shared.tasks.lock().expect("health task map lock");
        let first = self.shared.first_round.borrow().is_none();
        let mut seen = HashMap::with_capacity(tasks.len());
        let mut started = 0;
        for pool in &snapshot.pools {
            for server in &pool.servers {
                let key = key_of(server);
                seen.insert(key, ());
                if let Some(task) = tasks.get(&key) {
                    if task.spec == pool.spec.health {
                        continue;
                    }
                    task.stop.cancel();
                }
                let check =
                    ActiveCheck::new(&pool.spec.health, server.addr, &host_of(pool, server));
                let handle = self.spawn(Arc::clone(server), &pool.spec.health, check, first);
                tasks.insert(key, handle);
                started += 1;
            }
        }
        tasks.retain(|key, task| {
            let keep = seen.contains_key(key);
            if !keep {
                task.stop.cancel();
            }
            keep
        });
        drop(tasks);
        if first {
            self.shared.first_round.send_replace(Some(started));
            if started == 0 {
                self.shared.first_round_finished();
            }
        }
        for frontend in &self.shared.topology.load().frontends {
            frontend.availability_changed();
        }
    }

    /// Checks `server` at once (a newly enabled server) and tells its
    /// frontends to look at their backend again (its admin state may have
    /// changed). Returns whether the server has a task.
    pub fn check_now(&self, server: &Arc<Server>) -> bool {
        let found = self
            .shared
            .tasks
            .lock()
            .expect("health task map lock")
            .get(&key_of(server))
            .filter(|task| Arc::ptr_eq(&task.server, server))
            .map(|task| task.wake.notify_one())
            .is_some();
        self.shared.pool_changed(&server.backend);
        found
    }

    /// Completes once every server of the first snapshot has had its first
    /// check (or is disabled): the moment to tell systemd READY.
    pub async fn first_round(&self) {
        let mut rx = self.shared.first_round.subscribe();
        let _ = rx.wait_for(|left| *left == Some(0)).await;
    }

    /// How many servers are being checked.
    pub fn len(&self) -> usize {
        self.shared
            .tasks
            .lock()
            .expect("health task map lock")
            .len()
    }

    /// Whether no server is being checked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops every task and waits for them to end.
    pub async fn shutdown(&self) {
        self.shared.stop.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }

    fn set_topology(&self, snapshot: &Snapshot) {
        self.shared.topology.store(Arc::new(Topology {
            pools: snapshot.pools.clone(),
            frontends: snapshot.frontends.clone(),
        }));
    }

    fn spawn(
        &self,
        server: Arc<Server>,
        spec: &config::Health,
        check: impl Check,
        first_round: bool,
    ) -> TaskHandle {
        let stop = self.shared.stop.child_token();
        let wake = Arc::new(Notify::new());
        let task = task::ServerTask {
            server: Arc::clone(&server),
            spec: spec.clone(),
            check,
            shared: Arc::clone(&self.shared),
            wake: Arc::clone(&wake),
            stop: stop.clone(),
            first_round: first_round.then(|| FirstRoundGuard(Arc::clone(&self.shared))),
        };
        self.shared.tracker.spawn(task.run());
        TaskHandle {
            server,
            spec: spec.clone(),
            stop,
            wake,
        }
    }
}

impl Shared {
    /// Whether a server other than `server` in its pool can take new
    /// connections on its health (up or unchecked, and ready).
    fn others_can_serve(&self, server: &Arc<Server>) -> bool {
        self.topology
            .load()
            .pools
            .iter()
            .filter(|p| p.servers.iter().any(|s| Arc::ptr_eq(s, server)))
            .flat_map(|p| p.servers.iter())
            .any(|s| !Arc::ptr_eq(s, server) && s.is_eligible())
    }

    /// A server of `backend` changed health or admin state: log the
    /// backend's availability if it changed, and wake its frontends.
    fn pool_changed(&self, backend: &str) {
        let topology = self.topology.load();
        if let Some(pool) = topology.pools.iter().find(|p| p.spec.name == backend) {
            let now = pool.availability();
            let before = self
                .pool_states
                .lock()
                .expect("pool state lock")
                .insert(backend.to_owned(), now);
            if before != Some(now) {
                match now {
                    Availability::Healthy
                        if matches!(
                            before,
                            Some(Availability::Panic | Availability::Unavailable)
                        ) =>
                    {
                        info!(backend, "backend {backend} has a healthy server again");
                    }
                    Availability::Panic | Availability::Unavailable => {
                        if let Err(why) = pool.readiness() {
                            warn!(backend, "backend {backend}: {why}");
                        }
                    }
                    Availability::Healthy | Availability::Unchecked => {}
                }
            }
        }
        for frontend in &topology.frontends {
            if frontend.route.load().pool.spec.name == backend {
                frontend.availability_changed();
            }
        }
    }

    fn first_round_finished(&self) {
        let topology = self.topology.load();
        let servers = topology.pools.iter().flat_map(|p| p.servers.iter());
        let (mut up, mut down, mut other) = (0, 0, 0);
        for server in servers {
            match server.health() {
                Health::Up => up += 1,
                Health::Down => down += 1,
                Health::Unknown => other += 1,
            }
        }
        info!("first health checks done: {up} up, {down} down, {other} not checked");
    }
}

/// Held by a task until its server's first check is done.
#[derive(Debug)]
struct FirstRoundGuard(Arc<Shared>);

impl Drop for FirstRoundGuard {
    fn drop(&mut self) {
        let mut finished = false;
        self.0.first_round.send_modify(|left| {
            if let Some(n) = left {
                *n = n.saturating_sub(1);
                finished = *n == 0;
            }
        });
        if finished {
            self.0.first_round_finished();
        }
    }
}

fn key_of(server: &Arc<Server>) -> usize {
    Arc::as_ptr(server) as usize
}

/// The name a TLS check expects in the certificate by default: the DNS name
/// the server was configured with, else its IP.
fn host_of(pool: &Pool, server: &Server) -> String {
    pool.spec
        .servers
        .iter()
        .find(|spec| crate::reload::is_address_of(&server.name, &spec.name))
        .filter(|spec| spec.address.ip().is_none())
        .map_or_else(
            || server.addr.ip().to_string(),
            |spec| spec.address.host.clone(),
        )
}

/// A random duration in `[0, max)`, for jitter.
fn random_below(max: Duration) -> Duration {
    let micros = usize::try_from(max.as_micros()).unwrap_or(usize::MAX);
    if micros == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(crate::balance::random_below(micros) as u64)
}

/// `d` give or take 10%, so checks of many servers drift apart.
fn jittered(d: Duration) -> Duration {
    d - d / 10 + random_below(d / 5)
}

#[cfg(test)]
mod tests;
