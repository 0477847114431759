//! Discovery as a daemon task: one watch per backend with
//! `[backend.discovery]`, each feeding the cluster's list to the same
//! diff/apply path a reload takes ([`Desired::with_discovered`]).
//!
//! A supervisor starts a backend's watch when the config asks for it, and
//! stops or restarts it when a reload removes or changes its settings (the
//! kubeconfig's bytes included). Every task is a daemon task: shutdown
//! cancels and waits for it, and every wait in it wakes on cancellation.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Daemon, ReloadError};
use crate::backend::discovery::{
    Candidates, Membership, PoolConnector, SavedList, WatchEvent, build_client, run_watch,
};
use crate::backend::pool::Health;
use crate::config::{Discovery, KubeAccess};

/// How a backend's discovery is doing (`backends[].discovery.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryPhase {
    /// No answer from the cluster yet, and no saved list.
    Starting,
    /// Serving the list saved at the last run until the cluster answers.
    Saved,
    /// In sync with the cluster.
    Watching,
    /// The latest list or watch failed; the servers stay as they were.
    Failing,
}

impl DiscoveryPhase {
    /// The status JSON's word.
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoveryPhase::Starting => "starting",
            DiscoveryPhase::Saved => "saved",
            DiscoveryPhase::Watching => "watching",
            DiscoveryPhase::Failing => "failing",
        }
    }
}

/// Results counted in `lbd_discovery_updates_total{result}`.
pub const UPDATE_RESULTS: [&str; 4] = ["applied", "unchanged", "empty", "error"];

/// One backend's discovery, for status and metrics.
#[derive(Debug, Clone)]
pub struct DiscoveryState {
    /// How it is doing.
    pub phase: DiscoveryPhase,
    /// How many servers the cluster lists (or the saved list held).
    pub servers: usize,
    /// When the cluster's list was last taken.
    pub last_update: Option<SystemTime>,
    /// The latest failure, until the watch works again.
    pub error: Option<String>,
    /// Updates by result (see [`UPDATE_RESULTS`]); kept across restarts of the watch.
    pub updates: BTreeMap<&'static str, u64>,
}

impl DiscoveryState {
    fn new() -> DiscoveryState {
        DiscoveryState {
            phase: DiscoveryPhase::Starting,
            servers: 0,
            last_update: None,
            error: None,
            updates: UPDATE_RESULTS.iter().map(|r| (*r, 0)).collect(),
        }
    }
}

/// The daemon's discovery bookkeeping.
#[derive(Debug)]
pub(super) struct DiscoveryRegistry {
    states: Mutex<HashMap<String, DiscoveryState>>,
    /// Bumped by every apply, so the supervisor sees a reload's new settings.
    applied: watch::Sender<u64>,
}

impl Default for DiscoveryRegistry {
    fn default() -> Self {
        DiscoveryRegistry {
            states: Mutex::default(),
            applied: watch::channel(0).0,
        }
    }
}

impl DiscoveryRegistry {
    /// Tells the supervisor a new snapshot is in place.
    pub(super) fn note_applied(&self) {
        self.applied.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn update(&self, backend: &str, change: impl FnOnce(&mut DiscoveryState)) {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        change(
            states
                .entry(backend.to_owned())
                .or_insert_with(DiscoveryState::new),
        );
    }

    fn count(&self, backend: &str, result: &'static str) {
        self.update(backend, |s| *s.updates.entry(result).or_insert(0) += 1);
    }
}

impl Daemon {
    /// The discovery of the named backend; `None` when it has none.
    pub fn discovery_status(&self, backend: &str) -> Option<DiscoveryState> {
        let enabled = self
            .snapshot()
            .config
            .backends
            .iter()
            .any(|b| b.name == backend && b.discovery.is_some());
        if !enabled {
            return None;
        }
        let states = self.shared.discovery.states.lock();
        let states = states.unwrap_or_else(PoisonError::into_inner);
        Some(
            states
                .get(backend)
                .cloned()
                .unwrap_or_else(DiscoveryState::new),
        )
    }

    /// Starts, restarts and stops each backend's watch as the running
    /// config asks, until shutdown.
    pub(super) async fn supervise_discovery(self) {
        let mut applied = self.shared.discovery.applied.subscribe();
        let mut running: HashMap<String, (Discovery, CancellationToken)> = HashMap::new();
        loop {
            let config = self.snapshot().config.clone();
            running.retain(|backend, (spec, token)| {
                let keep = config
                    .backends
                    .iter()
                    .any(|b| &b.name == backend && b.discovery.as_ref() == Some(spec));
                if !keep {
                    token.cancel();
                }
                keep
            });
            for backend in &config.backends {
                let Some(spec) = &backend.discovery else {
                    continue;
                };
                if running.contains_key(&backend.name) {
                    continue;
                }
                let token = self.shared.stop_accepting.child_token();
                running.insert(backend.name.clone(), (spec.clone(), token.clone()));
                let task = self
                    .clone()
                    .discover(backend.name.clone(), spec.clone(), token);
                self.spawn(task);
            }
            tokio::select! {
                () = self.shared.stop_accepting.cancelled() => return,
                changed = applied.changed() => if changed.is_err() { return },
            }
        }
    }

    /// One backend's discovery until `cancel`: the saved list first, then
    /// every list the cluster gives, and removals as they fall due.
    async fn discover(self, backend: String, spec: Discovery, cancel: CancellationToken) {
        let registry = &self.shared.discovery;
        let access = match KubeAccess::parse(&spec.kubeconfig) {
            Ok(access) => access,
            Err(e) => {
                return self
                    .fail_until_cancelled(&backend, e.to_string(), &cancel)
                    .await;
            }
        };
        info!(
            backend = %backend,
            service = %spec.service,
            tls_server_name = %access.tls_server_name,
            kubeconfig_server = access.server.as_deref().unwrap_or("-"),
            "discovery starts: watching the cluster's EndpointSlices through the backend's own servers (never the kubeconfig's server)"
        );
        let state_dir = self.snapshot().config.global.state_dir.clone();
        let running = self.snapshot().desired.discovered(&backend);
        let initial = if running.is_empty() {
            let saved = self.load_saved(&state_dir, &backend, &spec.service).await;
            if !saved.is_empty() {
                registry.update(&backend, |s| {
                    s.phase = DiscoveryPhase::Saved;
                    s.servers = saved.len();
                });
                info!(backend = %backend, servers = saved.len(), "serving the servers saved at the last run until the cluster answers");
                if let Err(ReloadError::ShuttingDown) =
                    self.apply_discovered(&backend, &spec, &saved).await
                {
                    return;
                }
            }
            saved
        } else {
            running
        };
        let mut membership = Membership::new(spec.remove_after, &initial);
        let mut last_saved = initial.clone();

        let connect_timeout = self
            .snapshot()
            .pool(&backend)
            .map_or(std::time::Duration::from_secs(2), |p| {
                p.spec.connect_timeout
            });
        let candidates: Candidates = {
            let daemon = self.clone();
            let backend = backend.clone();
            Arc::new(move || daemon.api_candidates(&backend))
        };
        let log_backend = backend.clone();
        let connector = PoolConnector::new(candidates, connect_timeout, move |addr| {
            debug!(backend = %log_backend, server = %addr, "discovery connected to the API");
        });
        let client = match build_client(&access, connector) {
            Ok(client) => client,
            Err(e) => {
                return self
                    .fail_until_cancelled(&backend, e.to_string(), &cancel)
                    .await;
            }
        };
        let (events, mut received) = mpsc::channel(16);
        let watch = run_watch(client, &spec.service, events);
        tokio::pin!(watch);
        loop {
            let due = membership.next_removal();
            let event = tokio::select! {
                () = cancel.cancelled() => return,
                () = &mut watch => return,
                Some(event) = received.recv() => Some(event),
                () = sleep_until(due) => None,
            };
            let now = Instant::now();
            match event {
                Some(WatchEvent::Listed(list)) if list.is_empty() => {
                    registry.count(&backend, "empty");
                    registry.update(&backend, |s| {
                        s.error = Some(
                            "the cluster lists no server: keeping the servers as they are".into(),
                        );
                    });
                    warn!(backend = %backend, service = %spec.service, "the cluster lists no server for the service; nothing is removed");
                }
                Some(WatchEvent::Listed(list)) => {
                    membership.update(now, &list);
                    let result = match self
                        .apply_discovered(&backend, &spec, &membership.members())
                        .await
                    {
                        Err(ReloadError::ShuttingDown) => return,
                        Err(e) => {
                            warn!(backend = %backend, "discovery could not apply the cluster's list: {e}");
                            "error"
                        }
                        Ok(true) => "applied",
                        Ok(false) => "unchanged",
                    };
                    registry.count(&backend, result);
                    let was_failing = std::cell::Cell::new(false);
                    registry.update(&backend, |s| {
                        was_failing.set(s.phase == DiscoveryPhase::Failing);
                        s.phase = DiscoveryPhase::Watching;
                        s.servers = list.len();
                        s.last_update = Some(SystemTime::now());
                        s.error = None;
                    });
                    if was_failing.get() {
                        info!(backend = %backend, servers = list.len(), "discovery works again");
                    }
                    if list != last_saved {
                        self.save(&state_dir, &backend, &spec.service, &list).await;
                        last_saved = list;
                    }
                }
                Some(WatchEvent::Failed(error)) => {
                    registry.count(&backend, "error");
                    let mut first = false;
                    registry.update(&backend, |s| {
                        first = s.phase != DiscoveryPhase::Failing;
                        s.phase = DiscoveryPhase::Failing;
                        s.error = Some(error.clone());
                    });
                    if first {
                        warn!(backend = %backend, "discovery failed, the servers stay as they are; retrying with backoff: {error}");
                    } else {
                        debug!(backend = %backend, "discovery failed again: {error}");
                    }
                }
                None => {
                    if membership.expire(now) {
                        let result = match self
                            .apply_discovered(&backend, &spec, &membership.members())
                            .await
                        {
                            Err(ReloadError::ShuttingDown) => return,
                            Err(_) => "error",
                            Ok(true) => "applied",
                            Ok(false) => "unchanged",
                        };
                        registry.count(&backend, result);
                    }
                }
            }
        }
    }

    /// Records a failure that retrying cannot fix (the kubeconfig) and
    /// waits for a reload to bring other settings, or for shutdown.
    async fn fail_until_cancelled(&self, backend: &str, error: String, cancel: &CancellationToken) {
        warn!(backend = %backend, "discovery cannot start: {error}");
        self.shared.discovery.count(backend, "error");
        self.shared.discovery.update(backend, |s| {
            s.phase = DiscoveryPhase::Failing;
            s.error = Some(error);
        });
        cancel.cancelled().await;
    }

    /// Makes `members` the discovered servers of `backend` through the one
    /// diff/apply path; returns whether anything changed. Nothing changes
    /// when a reload has meanwhile changed the backend's discovery settings
    /// (the supervisor restarts the watch with the new ones).
    async fn apply_discovered(
        &self,
        backend: &str,
        spec: &Discovery,
        members: &[SocketAddr],
    ) -> Result<bool, ReloadError> {
        let _swap = self.shared.reload_lock.lock().await;
        if self.is_shutting_down() {
            return Err(ReloadError::ShuttingDown);
        }
        let old = self.snapshot();
        let current = old.config.backends.iter().find(|b| b.name == backend);
        if current.and_then(|b| b.discovery.as_ref()) != Some(spec) {
            return Ok(false);
        }
        let Some(desired) = old.desired.with_discovered(backend, members) else {
            return Ok(false);
        };
        let plan = self.plan(&desired);
        if plan.is_empty() {
            return Ok(false);
        }
        info!(backend = %backend, changes = %plan.describe().join("; "), "the cluster's list changed the servers");
        self.apply(desired, &plan)?;
        Ok(true)
    }

    /// Where the API can be reached: the backend's servers that are up,
    /// then those not checked yet, then the rest as a last resort.
    fn api_candidates(&self, backend: &str) -> Vec<SocketAddr> {
        let snapshot = self.snapshot();
        let Some(pool) = snapshot.pool(backend) else {
            return Vec::new();
        };
        let mut servers: Vec<(u8, SocketAddr)> = pool
            .servers
            .iter()
            .map(|s| {
                let rank = match s.health() {
                    Health::Up => 0,
                    Health::Unknown => 1,
                    Health::Down => 2,
                };
                (rank, s.addr)
            })
            .collect();
        servers.sort_by_key(|(rank, _)| *rank);
        let mut addrs: Vec<SocketAddr> = servers.into_iter().map(|(_, a)| a).collect();
        let mut seen = std::collections::HashSet::new();
        addrs.retain(|a| seen.insert(*a));
        addrs
    }

    async fn load_saved(
        &self,
        state_dir: &std::path::Path,
        backend: &str,
        service: &str,
    ) -> Vec<SocketAddr> {
        let (dir, name, svc) = (state_dir.to_owned(), backend.to_owned(), service.to_owned());
        match tokio::task::spawn_blocking(move || SavedList::load(&dir, &name, &svc)).await {
            Ok(Ok(Some(list))) => list.servers,
            Ok(Ok(None)) => Vec::new(),
            Ok(Err(e)) => {
                warn!(backend = %backend, "the saved server list is not used: {e}");
                Vec::new()
            }
            Err(e) => {
                warn!(backend = %backend, "reading the saved server list failed: {e}");
                Vec::new()
            }
        }
    }

    async fn save(
        &self,
        state_dir: &std::path::Path,
        backend: &str,
        service: &str,
        list: &[SocketAddr],
    ) {
        let saved = SavedList {
            backend: backend.to_owned(),
            service: service.to_owned(),
            servers: list.to_vec(),
        };
        let dir: PathBuf = state_dir.to_owned();
        match tokio::task::spawn_blocking(move || saved.save(&dir)).await {
            Ok(Ok(())) => {
                debug!(backend = %backend, servers = list.len(), "discovered servers saved")
            }
            Ok(Err(e)) => {
                warn!(backend = %backend, "cannot save the discovered servers for the next start: {e}")
            }
            Err(e) => warn!(backend = %backend, "saving the discovered servers failed: {e}"),
        }
    }
}

/// Sleeps until `due`, or forever when nothing is due.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
