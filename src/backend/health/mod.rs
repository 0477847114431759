//! Health checking: which servers can take a connection right now.
//!
//! Every server of every backend gets one task (`task.rs`) that runs the
//! backend's active check (`tcp`, `tls` or `https`) on an interval
//! with jitter, faster while the server is changing state, and feeds the
//! results to a rise/fall state machine (`machine.rs`). Failed dials on client
//! traffic (passive health) feed the same machine at once. The verdict is
//! stored on the [`Server`] (an atomic the data path reads); every change is
//! logged at info with its reason, counted, and published by the pool, so
//! the accept loops routing to it can pause their listeners when no server
//! is left.
//!
//! [`HealthChecks`] owns the tasks: the daemon creates it and calls
//! [`HealthChecks::sync`] after every snapshot swap (start and reload), so
//! new servers are checked at once, removed ones stop being checked, and
//! servers that stay keep their task and state. The checks of a backend
//! share one TLS client (`active.rs`), built off the task map's lock.
//!
//! A check the checker cannot run at all (its TLS files became unusable
//! after validation) is recorded as `check_error` and leaves the verdict
//! alone: a broken checker must not take healthy servers down.

mod active;
mod first_round;
mod https;
mod machine;
mod task;
mod tcp;
mod tls;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backend::pool::{Availability, Pool, Server};
use crate::config;
use crate::net::dial::DialError;

pub use active::{ActiveCheck, CheckFactory, CheckSetup};
use first_round::FirstRoundGuard;
pub use https::HttpsProbe;
pub use machine::{RiseFall, Transition, format_elapsed};
pub use tls::{TlsClient, TlsProbe, TlsSetupError};

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
    Dial(DialError),
    /// TCP connected but TLS did not work out (or its settings are unusable).
    #[error("{0}")]
    Tls(String),
    /// TLS worked but the HTTP answer was missing or not 2xx.
    #[error("{0}")]
    Http(String),
    /// The checker could not run the check at all (its TLS files became
    /// unusable, or lbd is out of descriptors): says nothing about the
    /// server, so it does not count against it.
    #[error("{0}")]
    Setup(String),
}

impl From<DialError> for CheckError {
    fn from(err: DialError) -> CheckError {
        if err.local {
            // lbd's own shortage (out of descriptors or local ports) says
            // nothing of the server: marking it down would turn a full
            // process into an outage.
            CheckError::Setup(format!("cannot dial {}: {}", err.addr, err.detail))
        } else {
            CheckError::Dial(err)
        }
    }
}

impl CheckError {
    /// The result label: a dial error kind, `tls_error`, `http_error` or
    /// `check_error`.
    pub fn result(&self) -> &'static str {
        match self {
            CheckError::Dial(e) => e.kind.as_str(),
            CheckError::Tls(_) => "tls_error",
            CheckError::Http(_) => "http_error",
            CheckError::Setup(_) => "check_error",
        }
    }

    /// The human part: the OS's words, the TLS alert, the HTTP status.
    pub fn detail(&self) -> String {
        match self {
            CheckError::Dial(e) => e.detail.clone(),
            CheckError::Tls(d) | CheckError::Http(d) | CheckError::Setup(d) => d.clone(),
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

/// The health tasks of a daemon: one per server of the current snapshot.
#[derive(Debug, Clone)]
pub struct HealthChecks {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    stop: CancellationToken,
    tracker: TaskTracker,
    /// One `sync` at a time: it reads the task map, builds checks without
    /// the map's lock, then updates the map.
    syncing: Mutex<()>,
    /// Keyed by the server's `Arc` address: a server kept across a reload is
    /// the same `Arc`, so it keeps its task.
    tasks: Mutex<HashMap<usize, TaskHandle>>,
    topology: ArcSwap<Topology>,
    /// Open [`FirstRoundGuard`]s: `None` before the first sync, `Some(0)`
    /// once every server of the first round has had its first check.
    first_round: watch::Sender<Option<usize>>,
    /// The last availability logged per backend, so changes are logged once.
    pool_states: Mutex<HashMap<String, Availability>>,
    /// Held while passive evidence decides whether a server falls, so "is
    /// another server left?" and the fall are one step: two servers failing
    /// at once cannot both fall, each having seen the other still eligible.
    /// Taken only on the rare fall decision, never on the data path.
    passive_fall: Mutex<()>,
}

#[derive(Debug)]
struct TaskHandle {
    /// Held so the key (this `Arc`'s address) cannot be reused by another
    /// server while the entry exists.
    server: Arc<Server>,
    stop: CancellationToken,
    wake: Arc<Notify>,
}

/// The pools of the latest snapshot, for the tasks to consult.
#[derive(Debug, Default)]
pub struct Topology {
    /// Every backend's pool.
    pub pools: Vec<Arc<Pool>>,
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
                syncing: Mutex::new(()),
                tasks: Mutex::new(HashMap::new()),
                topology: ArcSwap::from_pointee(Topology::default()),
                first_round: watch::Sender::new(None),
                pool_states: Mutex::new(HashMap::new()),
                passive_fall: Mutex::new(()),
            }),
        }
    }

    /// Follows the pools an apply installed: starts a task for
    /// every server not checked yet (its first check runs at once), restarts
    /// those of the backends in `rebuild` (the plan's: their health settings
    /// or TLS files changed), and stops those no longer listed.
    pub fn sync(&self, topology: &Topology, rebuild: &BTreeSet<String>) {
        let mut factory = CheckFactory::default();
        self.sync_with(topology, rebuild, |pool, server| {
            factory.check_for(pool, server.addr, &host_of(pool, server))
        });
    }

    /// [`HealthChecks::sync`] with the checks `check_for` makes; it runs
    /// without the task map's lock held.
    fn sync_with<C: Check>(
        &self,
        snapshot: &Topology,
        rebuild: &BTreeSet<String>,
        mut check_for: impl FnMut(&Arc<Pool>, &Arc<Server>) -> C,
    ) {
        let _one_at_a_time = self.shared.syncing.lock().expect("health sync lock");
        // Holds the first round open until every task of this sync is
        // started: a check that ends at once cannot close it early.
        let first_round = FirstRoundGuard::open(&self.shared);
        self.set_topology(snapshot);
        let wanted: Vec<(&Arc<Pool>, &Arc<Server>)> = {
            let tasks = self.shared.tasks.lock().expect("health task map lock");
            snapshot
                .pools
                .iter()
                .flat_map(|pool| pool.servers.iter().map(move |server| (pool, server)))
                .filter(|(pool, server)| {
                    rebuild.contains(&pool.spec.name) || !tasks.contains_key(&key_of(server))
                })
                .collect()
        };
        let prepared: Vec<_> = wanted
            .into_iter()
            .map(|(pool, server)| {
                let check = check_for(pool, server);
                self.prepare(Arc::clone(server), &pool.spec.health, check)
            })
            .collect();
        let listed: HashSet<usize> = snapshot
            .pools
            .iter()
            .flat_map(|pool| pool.servers.iter().map(key_of))
            .collect();
        let mut tasks = self.shared.tasks.lock().expect("health task map lock");
        for (handle, task) in prepared {
            if let Some(replaced) = tasks.insert(key_of(&handle.server), handle) {
                replaced.stop.cancel();
            }
            self.shared.tracker.spawn(task.run());
        }
        tasks.retain(|key, task| {
            let keep = listed.contains(key);
            if !keep {
                task.stop.cancel();
            }
            keep
        });
        drop(tasks);
        drop(first_round);
        for pool in &self.shared.topology.load().pools {
            pool.availability_changed();
        }
    }

    /// Checks `server` at once (a newly enabled server) and publishes its
    /// pool's availability again (its admin state may have changed). Returns
    /// whether the server has a task.
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
    /// check (or is disabled): the moment to tell systemd READY. A task
    /// started while the round is open (a reload during it) holds it open
    /// too, until its own first check.
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

    fn set_topology(&self, topology: &Topology) {
        self.shared.topology.store(Arc::new(Topology {
            pools: topology.pools.clone(),
        }));
    }

    /// A task for `server`, not started yet, and its entry in the task map.
    fn prepare<C: Check>(
        &self,
        server: Arc<Server>,
        spec: &config::Health,
        check: C,
    ) -> (TaskHandle, task::ServerTask<C>) {
        let stop = self.shared.stop.child_token();
        let wake = Arc::new(Notify::new());
        let task = task::ServerTask {
            server: Arc::clone(&server),
            spec: spec.clone(),
            check,
            shared: Arc::clone(&self.shared),
            wake: Arc::clone(&wake),
            stop: stop.clone(),
            first_round: FirstRoundGuard::join(&self.shared),
            setup_warned: None,
        };
        let handle = TaskHandle { server, stop, wake };
        (handle, task)
    }
}

impl Shared {
    /// Weighs passive evidence against `server`: when `would_fall`, runs
    /// `fail` (which may take the server down) only if another server of
    /// its pool can still take connections, and returns `None` otherwise.
    /// Decisions of this kind are taken one at a time, so the "last
    /// eligible server" holds even when every server fails at once.
    fn passive_failure<T>(
        &self,
        server: &Arc<Server>,
        would_fall: bool,
        fail: impl FnOnce() -> T,
    ) -> Option<T> {
        if !would_fall {
            return Some(fail());
        }
        let _one_fall_at_a_time = self.passive_fall.lock().expect("passive fall lock");
        self.others_can_serve(server).then(fail)
    }

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
    /// backend's availability if it changed, and publish it (the accept
    /// loops routing to the backend wake).
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
            pool.availability_changed();
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
        .find(|spec| crate::config::is_address_of(&server.name, &spec.name))
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
    Duration::from_micros(crate::backend::balance::random_below(micros) as u64)
}

/// `d` give or take 10%, so checks of many servers drift apart.
fn jittered(d: Duration) -> Duration {
    d - d / 10 + random_below(d / 5)
}

#[cfg(test)]
mod tests;
