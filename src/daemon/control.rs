//! Changing the running daemon: reloading the config file, following DNS
//! changes, and the operator's per-server admin state. Each builds a new
//! snapshot and swaps it in, so the connection path never waits.
//!
//! Locking: DNS lookups, which can take seconds, happen before any lock.
//! The reload lock is held only to compare and swap: build the new pools
//! from the current snapshot and the lookups' answers, bind new listeners,
//! store. Admin changes take it too, so none lands on a server a reload is
//! replacing, and shutdown takes it to mark the daemon stopping, after which
//! nothing is swapped in. Reloads also take turns among themselves (one file
//! read and applied at a time), without holding the reload lock meanwhile.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use tracing::{debug, error, info, warn};

use super::Daemon;
use crate::config::{Config, ConfigError};
use crate::frontend::Frontend;
use crate::pool::{AdminState, Server, Snapshot};
use crate::reload::{self, DnsFailure};
use crate::systemd;

use super::listeners::BindError;

/// State only reloads and DNS refreshes touch, behind their lock.
#[derive(Debug, Default)]
pub(super) struct ReloadState {
    /// (backend, server) whose DNS name is failing, so the log says so once.
    dns_failing: HashSet<(String, String)>,
}

/// The outcome of the latest load of the config file (the first one included).
#[derive(Debug, Clone, PartialEq)]
pub struct LastReload {
    /// Whether it was applied.
    pub ok: bool,
    /// Why not, as `file:line:col: message`.
    pub error: Option<String>,
    /// When it happened.
    pub at: SystemTime,
    /// The timing lint's warnings about the file.
    pub warnings: Vec<String>,
}

impl LastReload {
    pub(super) fn loaded(warnings: Vec<String>) -> LastReload {
        LastReload {
            ok: true,
            error: None,
            at: SystemTime::now(),
            warnings,
        }
    }
}

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadReport {
    /// One line per change (`server pool/c added`); empty when the file did not change.
    pub changes: Vec<String>,
    /// The timing lint's warnings about the new file.
    pub warnings: Vec<String>,
}

/// Why a reload was refused; the running config stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is unreadable or invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A new listen address could not be bound.
    #[error("{0}")]
    Bind(#[from] BindError),
    /// Shutdown has begun: nothing changes any more while connections drain.
    #[error(
        "lbd is shutting down (draining connections): the reload was not applied; the next lbd reads the file when it starts"
    )]
    ShuttingDown,
}

impl ReloadError {
    /// One line: `file:line:col: message` for config errors.
    pub fn summary(&self) -> String {
        match self {
            ReloadError::Config(err) => err.summary(),
            ReloadError::Bind(err) => err.to_string(),
            ReloadError::ShuttingDown => self.to_string(),
        }
    }
}

/// No such server to change: the backend or the server does not exist.
#[derive(Debug, thiserror::Error)]
pub enum UnknownServer {
    /// No backend of that name.
    #[error("no backend {backend:?}: the backends are {}", known.join(", "))]
    Backend {
        /// The backend asked for.
        backend: String,
        /// The backends there are.
        known: Vec<String>,
    },
    /// The backend exists; no server of that name in it.
    #[error("no server {server:?} in backend {backend:?}: see `lbctl status` for the names")]
    Server {
        /// The backend asked for.
        backend: String,
        /// The server asked for.
        server: String,
    },
}

/// One server's admin state before and after an operator's request.
#[derive(Debug, Clone)]
pub struct AdminChange {
    /// The server.
    pub server: Arc<Server>,
    /// Its admin state before.
    pub previous: AdminState,
}

impl Daemon {
    /// Reads the config file again and applies it; on any error the running
    /// config is left untouched. Reloads run one at a time; once shutdown
    /// has begun they are refused ([`ReloadError::ShuttingDown`]).
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _turn = self.shared.reload_turn.lock().await;
        if self.is_shutting_down() {
            warn!("reload refused: lbd is shutting down");
            return Err(ReloadError::ShuttingDown);
        }
        // systemd shows the unit reloading until the guard says READY=1 again.
        let _reloading = systemd::notifier().reloading();
        info!(path = %self.shared.config_path.display(), "reloading the config");
        let result = self.reload_in_turn().await;
        if let Err(ReloadError::ShuttingDown) = result {
            // Not the file's fault: last_reload and the counters stay.
            warn!("reload refused: lbd is shutting down");
            return result;
        }
        let mut last = self.shared.last_reload.lock().expect("last reload lock");
        match &result {
            Ok(report) => {
                self.shared.reloads_ok.fetch_add(1, Relaxed);
                *last = LastReload::loaded(report.warnings.clone());
                if report.changes.is_empty() {
                    info!("config reloaded: nothing changed");
                } else {
                    info!(changes = %report.changes.join("; "), "config reloaded");
                }
            }
            Err(err) => {
                self.shared.reloads_failed.fetch_add(1, Relaxed);
                *last = LastReload {
                    ok: false,
                    error: Some(err.summary()),
                    at: SystemTime::now(),
                    warnings: Vec::new(),
                };
                error!("reload refused, the running config stays: {err}");
            }
        }
        result
    }

    async fn reload_in_turn(&self) -> Result<ReloadReport, ReloadError> {
        let checked = Config::load_with_warnings(&self.shared.config_path)?;
        let warnings: Vec<String> = checked.warnings.iter().map(|w| w.one_line()).collect();
        for warning in &warnings {
            warn!("{warning}");
        }
        let config = Arc::new(checked.config);
        let lookups = reload::resolve_names(&config, &self.shared.resolver).await;

        let mut state = self.shared.reload_lock.lock().await;
        if self.is_shutting_down() {
            return Err(ReloadError::ShuttingDown);
        }
        // Read under the lock: a DNS refresh or admin change made while the
        // names resolved is built upon, not undone.
        let old = self.snapshot();
        let diff = reload::diff(&old.config, &config);
        let resolved = reload::assemble_pools(&config, Some(&old), &lookups);

        // Everything that can fail happens before the first change.
        let plan = self.plan_listeners(&diff, |name| {
            config
                .frontends
                .iter()
                .find(|f| f.name == name)
                .map_or(4096, |f| f.backlog)
        })?;

        let mut frontends = Vec::with_capacity(config.frontends.len());
        for spec in &config.frontends {
            let pool = resolved.pool_of(spec);
            let frontend = match old.frontends.iter().find(|f| f.name == spec.name) {
                Some(kept) => {
                    kept.update(spec, pool);
                    Arc::clone(kept)
                }
                None => Arc::new(Frontend::new(spec, pool)),
            };
            frontends.push(frontend);
        }
        let snapshot = Arc::new(Snapshot {
            config,
            pools: resolved.pools,
            frontends,
        });
        self.install_snapshot(Arc::clone(&snapshot));
        self.resize_global_limit(&snapshot.config);
        self.apply_listeners(plan, &snapshot.frontends);
        self.note_dns_failures(&mut state, &resolved.dns_failures, &resolved.dns_resolved);
        self.log_new_and_gone_servers(&old, &snapshot);
        Ok(ReloadReport {
            changes: diff.describe(),
            warnings,
        })
    }

    /// Re-resolves DNS-named servers every `resolve_interval` until shutdown.
    pub(super) async fn refresh_dns_periodically(self) {
        loop {
            let interval = self.snapshot().config.global.resolve_interval;
            tokio::select! {
                () = self.shared.stop_accepting.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            if let Err(ReloadError::ShuttingDown) = self.refresh_dns().await {
                return;
            }
        }
    }

    /// Resolves DNS-named servers again and swaps a new snapshot in if any
    /// address came or went; returns whether it did. A name that fails keeps
    /// its last addresses. The lookups run before the reload lock is taken;
    /// if a reload swapped another config in meanwhile, its own lookups
    /// stand and this refresh changes nothing.
    pub async fn refresh_dns(&self) -> Result<bool, ReloadError> {
        let resolved_for = self.snapshot().config.clone();
        if !reload::has_dns_names(&resolved_for) {
            return Ok(false);
        }
        let lookups = reload::resolve_names(&resolved_for, &self.shared.resolver).await;

        let mut state = self.shared.reload_lock.lock().await;
        if self.is_shutting_down() {
            return Err(ReloadError::ShuttingDown);
        }
        let old = self.snapshot();
        if !Arc::ptr_eq(&old.config, &resolved_for) {
            debug!("DNS refresh dropped: a reload applied another config meanwhile");
            return Ok(false);
        }
        let resolved = reload::assemble_pools(&old.config, Some(&old), &lookups);
        self.note_dns_failures(&mut state, &resolved.dns_failures, &resolved.dns_resolved);
        let changed = old.pools.len() != resolved.pools.len()
            || old
                .pools
                .iter()
                .zip(&resolved.pools)
                .any(|(a, b)| !Arc::ptr_eq(a, b));
        if !changed {
            return Ok(false);
        }
        for frontend in &old.frontends {
            let spec = old
                .config
                .frontends
                .iter()
                .find(|f| f.name == frontend.name);
            let pool = spec.and_then(|s| resolved.pool(&s.backend));
            if let (Some(spec), Some(pool)) = (spec, pool) {
                frontend.update(spec, Arc::clone(pool));
            }
        }
        let snapshot = Arc::new(Snapshot {
            config: Arc::clone(&old.config),
            pools: resolved.pools,
            frontends: old.frontends.clone(),
        });
        self.install_snapshot(Arc::clone(&snapshot));
        self.log_new_and_gone_servers(&old, &snapshot);
        Ok(true)
    }

    pub(super) async fn note_dns_results(
        &self,
        failures: &[DnsFailure],
        resolved: &[(String, String)],
    ) {
        let mut state = self.shared.reload_lock.lock().await;
        self.note_dns_failures(&mut state, failures, resolved);
    }

    /// Logs a DNS name when it starts failing and when it works again, not
    /// at every attempt in between.
    fn note_dns_failures(
        &self,
        state: &mut ReloadState,
        failures: &[DnsFailure],
        resolved: &[(String, String)],
    ) {
        for failure in failures {
            let key = (failure.backend.clone(), failure.server.clone());
            if state.dns_failing.insert(key) {
                warn!(
                    backend = %failure.backend,
                    server = %failure.server,
                    error = %failure.error,
                    kept = failure.kept,
                    "DNS resolution failed; keeping the last known addresses until it works again"
                );
            }
        }
        for key in resolved {
            if state.dns_failing.remove(key) {
                info!(backend = %key.0, server = %key.1, "DNS resolution works again");
            }
        }
    }

    fn log_new_and_gone_servers(&self, old: &Snapshot, new: &Snapshot) {
        let listed = |s: &Snapshot| -> Vec<Arc<Server>> {
            s.pools
                .iter()
                .flat_map(|p| p.servers.iter().cloned())
                .collect()
        };
        let (before, after) = (listed(old), listed(new));
        for server in &after {
            if !before.iter().any(|s| Arc::ptr_eq(s, server)) {
                info!(backend = %server.backend, server = %server.name, address = %server.addr, "server added; state unknown until checked");
            }
        }
        for server in &before {
            if !after.iter().any(|s| Arc::ptr_eq(s, server)) {
                info!(backend = %server.backend, server = %server.name, address = %server.addr, active = server.active(), "server removed: no new connections, live ones go on");
            }
        }
    }

    /// Sets the admin state of a server, or of every address of a DNS-named
    /// server when `server` is its configured name.
    ///
    /// Holds the reload lock: a reload or DNS refresh never swaps a server
    /// out from under the change (the change lands before the swap, and the
    /// new snapshot carries it over, or after it, on the new servers).
    pub async fn set_admin(
        &self,
        backend: &str,
        server: &str,
        admin: AdminState,
    ) -> Result<Vec<AdminChange>, UnknownServer> {
        let _swap = self.shared.reload_lock.lock().await;
        let snapshot = self.snapshot();
        let unknown = || UnknownServer::Server {
            backend: backend.to_owned(),
            server: server.to_owned(),
        };
        let pool = snapshot
            .pool(backend)
            .ok_or_else(|| UnknownServer::Backend {
                backend: backend.to_owned(),
                known: snapshot.pools.iter().map(|p| p.spec.name.clone()).collect(),
            })?;
        let targets: Vec<&Arc<Server>> = pool
            .servers
            .iter()
            .filter(|s| reload::is_address_of(&s.name, server))
            .collect();
        if targets.is_empty() {
            return Err(unknown());
        }
        let mut changes = Vec::with_capacity(targets.len());
        for target in targets {
            let previous = target.set_admin(admin);
            if previous != admin {
                info!(
                    backend = %target.backend,
                    server = %target.name,
                    from = previous.as_str(),
                    to = admin.as_str(),
                    active = target.active(),
                    "server admin state changed"
                );
                // Wakes the server's checks (paused while disabled) and lets
                // the accept loops re-evaluate whether the backend can serve.
                self.check_now(target);
            }
            changes.push(AdminChange {
                server: Arc::clone(target),
                previous,
            });
        }
        Ok(changes)
    }

    /// `Ok` when every frontend can give a new connection a server, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_shutting_down() {
            return Err("lbd is shutting down: no new connections are accepted".into());
        }
        let snapshot = self.snapshot();
        let reasons: Vec<String> = snapshot
            .frontends
            .iter()
            .filter_map(|f| {
                f.readiness()
                    .err()
                    .map(|why| format!("frontend {}: {why}", f.name))
            })
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }

    /// Like [`Daemon::readiness`] for one frontend: whether it can give a new
    /// connection a server. `None` when no frontend has that name.
    pub fn frontend_readiness(&self, frontend: &str) -> Option<Result<(), String>> {
        let snapshot = self.snapshot();
        let found = snapshot.frontends.iter().find(|f| f.name == frontend)?;
        if self.is_shutting_down() {
            return Some(Err(
                "lbd is shutting down: no new connections are accepted".into()
            ));
        }
        Some(
            found
                .readiness()
                .map_err(|why| format!("frontend {frontend}: {why}")),
        )
    }

    /// The outcome of the latest load of the config file.
    pub fn last_reload(&self) -> LastReload {
        self.shared
            .last_reload
            .lock()
            .expect("last reload lock")
            .clone()
    }

    /// Reloads since start: (applied, refused).
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.shared.reloads_ok.load(Relaxed),
            self.shared.reloads_failed.load(Relaxed),
        )
    }
}
