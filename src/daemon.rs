//! The running daemon: binds the frontends, builds the first snapshot, owns
//! the cancellation tree, and drains on shutdown.
//!
//! Cancellation tree: `stop_accepting` ends every accept loop (SIGTERM);
//! `close_connections` ends every live relay (the drain deadline). The
//! connection tasks are tracked so shutdown knows when they are all gone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, ConfigError};
use crate::frontend::Frontend;
use crate::limit::{self, ConnectionLimit, FdBudget};
use crate::listener;
use crate::pool::Snapshot;
use crate::reload;
use crate::socket;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config file is unreadable or invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A listen address could not be bound.
    #[error(
        "frontend {frontend:?}: cannot listen on {addr}: {source} (is another process using the port, or does binding below 1024 need CAP_NET_BIND_SERVICE?)"
    )]
    Bind {
        /// The frontend that owns the address.
        frontend: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bound listening socket and the token that stops its accept loop.
#[derive(Debug)]
struct BoundListener {
    frontend: String,
    local: SocketAddr,
    #[allow(dead_code)]
    stop: CancellationToken,
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
    listeners: Mutex<Vec<BoundListener>>,
    connections: TaskTracker,
    global_limit: Arc<ConnectionLimit>,
    fd_budget: FdBudget,
    stop_accepting: CancellationToken,
    close_connections: CancellationToken,
}

impl Daemon {
    /// Binds every frontend of `config` and starts serving.
    pub async fn start(config_path: &Path, config: Config) -> Result<Daemon, StartError> {
        let config = Arc::new(config);
        let pools = reload::build_pools(&config, None).await;
        let mut frontends = Vec::with_capacity(config.frontends.len());
        let mut bound = Vec::new();
        for spec in &config.frontends {
            let pool = pools
                .iter()
                .find(|p| p.spec.name == spec.backend)
                .cloned()
                .expect("validation guarantees the backend exists");
            let frontend = Arc::new(Frontend::new(spec, pool));
            for &addr in &spec.listen {
                let listener = socket::bind_listener(addr, spec.backlog).map_err(|source| {
                    StartError::Bind {
                        frontend: spec.name.clone(),
                        addr,
                        source,
                    }
                })?;
                bound.push((Arc::clone(&frontend), listener));
            }
            frontends.push(frontend);
        }

        let servers = pools.iter().map(|p| p.servers.len() as u64).sum();
        let fd_budget = limit::fd_budget(limit::open_fds(), servers);
        let global_limit = Arc::new(ConnectionLimit::new(global_max_connections(
            &config, fd_budget,
        )));
        let shared = Arc::new(Shared {
            config_path: config_path.to_owned(),
            snapshot: ArcSwap::from_pointee(Snapshot {
                config: Arc::clone(&config),
                pools,
                frontends,
            }),
            listeners: Mutex::new(Vec::new()),
            connections: TaskTracker::new(),
            global_limit,
            fd_budget,
            stop_accepting: CancellationToken::new(),
            close_connections: CancellationToken::new(),
        });
        let daemon = Daemon { shared };
        for (frontend, listener) in bound {
            daemon.spawn_accept_loop(frontend, listener);
        }
        Ok(daemon)
    }

    fn spawn_accept_loop(&self, frontend: Arc<Frontend>, listener: tokio::net::TcpListener) {
        let local = listener
            .local_addr()
            .expect("a bound socket has a local address");
        info!(frontend = %frontend.name, address = %local, "listening");
        let stop = self.shared.stop_accepting.child_token();
        self.shared
            .listeners
            .lock()
            .expect("listener list lock")
            .push(BoundListener {
                frontend: frontend.name.clone(),
                local,
                stop: stop.clone(),
            });
        tokio::spawn(listener::accept_loop(
            listener,
            frontend,
            Arc::clone(&self.shared.global_limit),
            stop,
            self.shared.connections.clone(),
            self.shared.close_connections.clone(),
        ));
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

    /// The addresses a frontend actually listens on (port 0 resolved).
    pub fn local_addrs(&self, frontend: &str) -> Vec<SocketAddr> {
        self.shared
            .listeners
            .lock()
            .expect("listener list lock")
            .iter()
            .filter(|l| l.frontend == frontend)
            .map(|l| l.local)
            .collect()
    }

    /// Stops accepting at once, lets live connections finish for up to
    /// `drain_timeout`, then closes the rest. Returns when all are gone.
    pub async fn shutdown(&self) {
        let drain_timeout = self.snapshot().config.global.drain_timeout;
        self.shared.stop_accepting.cancel();
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
