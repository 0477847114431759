//! Rebalance: when a server comes up or joins a backend with `rebalance`
//! set (healthy again, enabled again, added by a reload, DNS or discovery),
//! close the connections other servers hold above their weighted share,
//! one at a time, spread evenly over the window, so long-lived clients
//! (kubectl and client-go watches) reconnect a few at a time and land on the
//! new server. `POST /api/v1/backends/{b}/rebalance` starts one now.
//!
//! The watcher is a daemon task: it wakes when a pool's availability
//! changes or a new snapshot is applied, and compares which servers take
//! traffic with what it saw before. Each rebalance is its own daemon task;
//! a newer one of the same backend replaces it. Neither touches the
//! connection path beyond picking one registered connection per close.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{Daemon, UnknownServer};
use crate::backend::pool::{Pool, Server};
use crate::backend::rebalance::{self, Excess};
use crate::config::format_duration;

/// The window of a rebalance asked for by hand on a backend without
/// `rebalance` set.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// The rebalances under way, and the signal that a new snapshot was applied.
#[derive(Debug)]
pub(super) struct Rebalancer {
    /// Per backend: the id and stop token of its running rebalance.
    running: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next_id: AtomicU64,
    applied: watch::Sender<u64>,
}

impl Default for Rebalancer {
    fn default() -> Self {
        Rebalancer {
            running: Mutex::default(),
            next_id: AtomicU64::new(0),
            applied: watch::Sender::new(0),
        }
    }
}

impl Rebalancer {
    /// Tells the watcher a new snapshot (perhaps new servers) is running.
    pub(super) fn applied(&self) {
        self.applied.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// What a rebalance set out to do, for the admin API and lbctl.
#[derive(Debug, Clone, Serialize)]
pub struct RebalanceStarted {
    /// The backend.
    pub backend: String,
    /// Over how long the closes are spread ("2s", "5m").
    pub window: String,
    /// Connections to close, over every server.
    pub closing: u64,
    /// Per server above its share: how many of its connections close.
    pub servers: Vec<ServerExcess>,
    /// Why nothing is closed, when nothing is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One server's part of a rebalance.
#[derive(Debug, Clone, Serialize)]
pub struct ServerExcess {
    /// The server's name.
    pub name: String,
    /// Its open connections when the rebalance started.
    pub active_connections: u64,
    /// How many of them close.
    pub closing: u64,
}

impl Daemon {
    /// Starts a rebalance of `backend` now, over `window`, or the backend's
    /// `rebalance`, or [`DEFAULT_WINDOW`]; replaces one under way.
    pub fn rebalance_now(
        &self,
        backend: &str,
        window: Option<Duration>,
    ) -> Result<RebalanceStarted, UnknownServer> {
        let snapshot = self.snapshot();
        let pool = snapshot
            .pool(backend)
            .ok_or_else(|| UnknownServer::Backend {
                backend: backend.to_owned(),
                known: snapshot.pools.iter().map(|p| p.spec.name.clone()).collect(),
            })?;
        let window = window.or(pool.spec.rebalance).unwrap_or(DEFAULT_WINDOW);
        info!(backend, window = %format_duration(window), "rebalance asked for");
        Ok(self.start_rebalance(pool, window))
    }

    /// Plans a rebalance of `pool` from its counters now and runs it as a
    /// daemon task, stopping any earlier one of the same backend.
    fn start_rebalance(&self, pool: &Arc<Pool>, window: Duration) -> RebalanceStarted {
        let backend = pool.spec.name.clone();
        let mut started = RebalanceStarted {
            backend: backend.clone(),
            window: format_duration(window),
            closing: 0,
            servers: Vec::new(),
            note: None,
        };
        let rebalancer = &self.shared.rebalancer;
        let mut running = rebalancer
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, stop)) = running.remove(&backend) {
            stop.cancel();
        }
        let over = match rebalance::excess(&pool.servers) {
            Excess::TooFewUp(up) => {
                started.note = Some(format!(
                    "{up} server(s) up: a rebalance needs at least two, so nothing is closed"
                ));
                return started;
            }
            Excess::Over(over) => over,
        };
        for &(i, closing) in &over {
            let server = &pool.servers[i];
            started.closing += closing;
            started.servers.push(ServerExcess {
                name: server.name.clone(),
                active_connections: server.active(),
                closing,
            });
        }
        if started.closing == 0 {
            started.note = Some("no server holds more than its share: nothing to close".into());
            debug!(backend, "rebalance: no server holds more than its share");
            return started;
        }
        let order: Vec<Arc<Server>> = rebalance::order(&over)
            .into_iter()
            .map(|i| Arc::clone(&pool.servers[i]))
            .collect();
        info!(
            backend,
            closing = started.closing,
            window = %started.window,
            "rebalance: closing the connections above each server's share, spread over the window"
        );
        let id = rebalancer.next_id.fetch_add(1, Relaxed);
        let stop = self.shared.stop_accepting.child_token();
        running.insert(backend.clone(), (id, stop.clone()));
        drop(running);
        self.spawn(self.clone().run_rebalance(backend, order, window, id, stop));
        started
    }

    /// Closes one connection of each server in `order`, at evenly spaced
    /// moments over `window`; each only while that server is still above
    /// its share and at least two servers take traffic.
    async fn run_rebalance(
        self,
        backend: String,
        order: Vec<Arc<Server>>,
        window: Duration,
        id: u64,
        stop: CancellationToken,
    ) {
        let start = tokio::time::Instant::now();
        let mut closed = 0u64;
        for (step, server) in order.iter().enumerate() {
            let at = start + rebalance::offset(step, order.len(), window);
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = stop.cancelled() => return,
            }
            let Some(pool) = self.snapshot().pool(&backend).cloned() else {
                break;
            };
            if !pool.servers.iter().any(|s| Arc::ptr_eq(s, server)) {
                continue; // removed meanwhile
            }
            match rebalance::still_over(&pool.servers, server) {
                None => {
                    info!(
                        backend,
                        closed, "rebalance stopped: fewer than two servers are up"
                    );
                    break;
                }
                Some(false) => continue,
                Some(true) => {
                    if server.connections.close_one() {
                        closed += 1;
                    }
                }
            }
        }
        info!(backend, closed, "rebalance done");
        let mut running = self
            .shared
            .rebalancer
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if running.get(&backend).is_some_and(|(ours, _)| *ours == id) {
            running.remove(&backend);
        }
    }

    /// The watcher: starts a rebalance of a backend with `rebalance` set
    /// whenever a server starts taking traffic there (up and ready, having
    /// not been, or new). Ends with shutdown.
    pub(super) async fn watch_for_joins(self) {
        let stop = self.shared.stop_accepting.clone();
        let mut applied = self.shared.rebalancer.applied.subscribe();
        let mut taking: HashMap<String, HashSet<String>> = HashMap::new();
        loop {
            applied.borrow_and_update();
            let snapshot = self.snapshot();
            // Subscribed before looking, so a change after the look wakes us.
            let mut watches: Vec<watch::Receiver<u64>> = snapshot
                .pools
                .iter()
                .map(|p| p.watch_availability())
                .collect();
            let mut now_taking = HashMap::with_capacity(snapshot.pools.len());
            for pool in &snapshot.pools {
                let names: HashSet<String> = pool
                    .servers
                    .iter()
                    .filter(|s| rebalance::takes_traffic(s))
                    .map(|s| s.name.clone())
                    .collect();
                let before = taking.get(&pool.spec.name);
                let joined: Vec<&String> = names
                    .iter()
                    .filter(|n| before.is_none_or(|b| !b.contains(*n)))
                    .collect();
                if let Some(window) = pool.spec.rebalance
                    && !joined.is_empty()
                    && names.len() >= 2
                {
                    info!(backend = %pool.spec.name, joined = ?joined, "server(s) took traffic: rebalancing");
                    self.start_rebalance(pool, window);
                }
                now_taking.insert(pool.spec.name.clone(), names);
            }
            taking = now_taking;
            tokio::select! {
                () = stop.cancelled() => return,
                changed = applied.changed() => if changed.is_err() { return },
                () = any_changed(&mut watches) => {}
            }
        }
    }
}

/// Completes when any of `watches` sees a new value (or its sender is gone).
async fn any_changed(watches: &mut [watch::Receiver<u64>]) {
    let mut changes: Vec<_> = watches.iter_mut().map(|w| Box::pin(w.changed())).collect();
    std::future::poll_fn(|cx| {
        if changes.iter_mut().any(|c| c.as_mut().poll(cx).is_ready()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}
