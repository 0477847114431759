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
use crate::backend::pool::{AdminState, NotReady, Server};
use crate::config::{Config, ConfigError};
use crate::daemon::reload::{self, Desired, DnsReport};
use crate::daemon::systemd;

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
        // Off the runtime threads: the file and the TLS files it names are
        // read here, and a slow disk must not stall a relay.
        let path = self.shared.config_path.clone();
        let checked = tokio::task::spawn_blocking(move || Config::load_with_warnings(&path))
            .await
            .map_err(|e| ConfigError::Read {
                path: self.shared.config_path.clone(),
                reason: format!("the reading task failed: {e}"),
            })??;
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
        let (desired, dns) = Desired::resolve(config, &lookups, Some(&self.snapshot().desired));
        let plan = self.plan(&desired);
        self.apply(desired, &plan)?;
        self.note_dns_failures(&mut state, &dns);
        Ok(ReloadReport {
            changes: plan.describe(),
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

    /// Resolves DNS-named servers again and applies the change if any
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
        let (desired, dns) = Desired::resolve(resolved_for, &lookups, Some(&old.desired));
        self.note_dns_failures(&mut state, &dns);
        let plan = self.plan(&desired);
        if plan.is_empty() {
            return Ok(false);
        }
        info!(changes = %plan.describe().join("; "), "DNS answers changed the servers");
        self.apply(desired, &plan)?;
        Ok(true)
    }

    pub(super) async fn note_dns_results(&self, dns: &DnsReport) {
        let mut state = self.shared.reload_lock.lock().await;
        self.note_dns_failures(&mut state, dns);
    }

    /// Logs a DNS name when it starts failing and when it works again, not
    /// at every attempt in between.
    fn note_dns_failures(&self, state: &mut ReloadState, dns: &DnsReport) {
        for failure in &dns.failures {
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
        for key in &dns.resolved {
            if state.dns_failing.remove(key) {
                info!(backend = %key.0, server = %key.1, "DNS resolution works again");
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
            .filter(|s| crate::config::is_address_of(&s.name, server))
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
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.is_shutting_down() {
            return Err(shutting_down());
        }
        let snapshot = self.snapshot();
        let reasons: Vec<String> = snapshot
            .frontends
            .iter()
            .filter_map(|f| {
                f.readiness()
                    .err()
                    .map(|why| why.of(format_args!("frontend {}", f.name)).0)
            })
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(NotReady(reasons.join("; ")))
        }
    }

    /// Like [`Daemon::readiness`] for one frontend: whether it can give a new
    /// connection a server. `None` when no frontend has that name.
    pub fn frontend_readiness(&self, frontend: &str) -> Option<Result<(), NotReady>> {
        let snapshot = self.snapshot();
        let found = snapshot.frontends.iter().find(|f| f.name == frontend)?;
        if self.is_shutting_down() {
            return Some(Err(shutting_down()));
        }
        Some(
            found
                .readiness()
                .map_err(|why| why.of(format_args!("frontend {frontend}"))),
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

fn shutting_down() -> NotReady {
    NotReady("lbd is shutting down: no new connections are accepted".into())
}
