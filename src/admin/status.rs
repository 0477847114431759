//! The JSON of `GET /api/v1/status` (DESIGN.md §3.3): what the daemon runs,
//! its frontends, and every server's health, admin state and counters.
//! `lbctl` deserializes the same types to print its table.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use crate::backend::pool::Server;
use crate::daemon::Daemon;
use crate::util::clock;

/// The whole status document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The config file and its latest load.
    pub config: ConfigStatus,
    /// Frontends, in config order.
    pub frontends: Vec<FrontendStatus>,
    /// Backends, in config order.
    pub backends: Vec<BackendStatus>,
}

/// The config file and the outcome of its latest load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// The file lbd reloads from.
    pub path: String,
    /// The latest load (at start or by reload).
    pub last_reload: LastReloadStatus,
}

/// The outcome of the latest load of the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastReloadStatus {
    /// Whether it was applied.
    pub ok: bool,
    /// Why not: `file:line:col: message`; `null` when it was applied.
    pub error: Option<String>,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// The timing lint's warnings about the running file.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One frontend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontendStatus {
    /// Its name.
    pub name: String,
    /// The addresses it actually listens on (port 0 resolved).
    pub listen: Vec<String>,
    /// The backend it forwards to.
    pub backend: String,
    /// Connections open right now.
    pub active_connections: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections turned away since start (no server, or every dial failed).
    pub rejected_total: u64,
    /// Whether its listeners stopped accepting because no server of its
    /// backend can take a connection (new clients wait in the backlog).
    #[serde(default)]
    pub paused: bool,
    /// Its TLS passthrough routes (absent without `routes`), the default
    /// route last as `sni` = `default`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteStatus>,
}

/// One route of a frontend and the connections it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStatus {
    /// The server name pattern, or `default`.
    pub sni: String,
    /// The backend it forwards to.
    pub backend: String,
    /// Connections routed here since start.
    pub connections_total: u64,
}

/// One backend and its servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// Its name.
    pub name: String,
    /// What discovery learned from the cluster; absent without `[backend.discovery]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
    /// Its servers; a DNS name contributes one per address (`name@ip`).
    pub servers: Vec<ServerStatus>,
}

/// A backend's discovery: how the watch of the cluster goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryStatus {
    /// `starting` (no answer yet), `saved` (serving the list saved at the
    /// last run until the cluster answers), `watching` (in sync with the
    /// cluster) or `failing` (the last attempt failed; the list stays).
    pub state: String,
    /// How many servers the cluster lists (or the saved list held).
    pub servers: usize,
    /// When the list last changed or was confirmed, RFC 3339 UTC; `null` before the first.
    pub last_update: Option<String>,
    /// The latest failure, `null` while the watch works.
    pub error: Option<String>,
}

impl From<crate::daemon::DiscoveryState> for DiscoveryStatus {
    fn from(state: crate::daemon::DiscoveryState) -> DiscoveryStatus {
        DiscoveryStatus {
            state: state.phase.as_str().to_owned(),
            servers: state.servers,
            last_update: state.last_update.map(clock::rfc3339),
            error: state.error,
        }
    }
}

/// One server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Its name, unique in the backend.
    pub name: String,
    /// `IP:port` connections go to.
    pub address: String,
    /// Where the server comes from: `config` (an address in the file),
    /// `dns` (one address of a name in the file) or `discovered` (listed
    /// by the cluster).
    #[serde(default)]
    pub source: String,
    /// `unknown`, `up` or `down`: what the checks found.
    pub health: String,
    /// `ready`, `drain` or `disabled`: what the operator asked.
    pub admin: String,
    /// The two combined for display: `unknown`, `up`, `down`, `draining` or `disabled`.
    pub state: String,
    /// Connections open right now.
    pub active_connections: u64,
    /// Connections established since the server was first configured.
    pub connections_total: u64,
    /// When its health or admin state last changed (or it was added),
    /// RFC 3339 UTC.
    #[serde(default)]
    pub changed_at: String,
    /// The latest health check, `null` before the first.
    pub last_check: Option<CheckStatus>,
}

/// The outcome of a server's latest health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckStatus {
    /// `ok`, or why it failed (`refused`, `timeout`, `tls_error`…), or
    /// `check_error` when the checker could not run it.
    pub result: String,
    /// The kind of check: `tcp`, `tls`, `https`, or `passive` (a failed
    /// dial on client traffic).
    #[serde(default)]
    pub check: String,
    /// How long the check took, in milliseconds.
    pub elapsed_ms: f64,
    /// When it finished, RFC 3339 UTC.
    pub at: String,
    /// Human detail: the OS error, the HTTP status.
    pub detail: String,
}

impl Status {
    /// The daemon's status right now, read from its current snapshot.
    pub fn collect(daemon: &Daemon) -> Status {
        let snapshot = daemon.snapshot();
        let last = daemon.last_reload();
        let frontends = snapshot
            .frontends
            .iter()
            .map(|f| FrontendStatus {
                name: f.name.clone(),
                listen: daemon
                    .local_addrs(&f.name)
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                backend: f.route.load().pool.spec.name.clone(),
                active_connections: f.stats.active.load(Relaxed),
                connections_total: f.stats.total.load(Relaxed),
                rejected_total: f.stats.rejected.iter().map(|r| r.load(Relaxed)).sum(),
                paused: !f.can_serve(),
                routes: route_status(&f.route.load()),
            })
            .collect();
        let backends = snapshot
            .pools
            .iter()
            .map(|pool| {
                let desired = snapshot.desired.servers_of(&pool.spec.name);
                let servers = pool
                    .servers
                    .iter()
                    .map(|server| {
                        let mut status = ServerStatus::of(server);
                        let source = desired
                            .and_then(|list| list.iter().find(|d| d.name == server.name))
                            .map(|d| d.source.as_str());
                        if let Some(source) = source {
                            source.clone_into(&mut status.source);
                        }
                        status
                    })
                    .collect();
                BackendStatus {
                    name: pool.spec.name.clone(),
                    discovery: daemon
                        .discovery_status(&pool.spec.name)
                        .map(DiscoveryStatus::from),
                    servers,
                }
            })
            .collect();
        Status {
            config: ConfigStatus {
                path: daemon.config_path().display().to_string(),
                last_reload: LastReloadStatus {
                    ok: last.ok,
                    error: last.error,
                    at: clock::rfc3339(last.at),
                    warnings: last.warnings,
                },
            },
            frontends,
            backends,
        }
    }
}

impl ServerStatus {
    /// One server's status right now.
    pub fn of(server: &Arc<Server>) -> ServerStatus {
        ServerStatus {
            name: server.name.clone(),
            address: server.addr.to_string(),
            // Names in the file cannot hold `@`; lbd names each address of a
            // DNS-named server `name@ip` (see reload.rs).
            source: if server.name.contains('@') {
                "dns"
            } else {
                "config"
            }
            .to_owned(),
            health: server.health().as_str().to_owned(),
            admin: server.admin().as_str().to_owned(),
            state: server.state().to_owned(),
            active_connections: server.active(),
            connections_total: server.stats.total.load(Relaxed),
            changed_at: clock::rfc3339(server.changed_at()),
            last_check: server.last_check().map(|check| CheckStatus {
                result: check.result,
                check: check.check.to_owned(),
                elapsed_ms: (check.elapsed.as_secs_f64() * 1e6).round() / 1e3,
                at: clock::rfc3339(check.at),
                detail: check.detail,
            }),
        }
    }
}

/// The routes of a frontend's route for the status, the default last.
fn route_status(route: &crate::proxy::frontend::Route) -> Vec<RouteStatus> {
    let Some(sni) = &route.sni else {
        return Vec::new();
    };
    let entry = |sni: &str, backend: &str, connections: u64| RouteStatus {
        sni: sni.to_owned(),
        backend: backend.to_owned(),
        connections_total: connections,
    };
    sni.routes
        .iter()
        .map(|r| entry(&r.sni, &r.pool.spec.name, r.connections.load(Relaxed)))
        .chain(std::iter::once(entry(
            "default",
            &route.pool.spec.name,
            sni.default_connections.load(Relaxed),
        )))
        .collect()
}
