//! `apply`: the one place that changes the running daemon. A reload, a DNS
//! answer and (later) cluster discovery each build a new [`Desired`], diff it
//! against the running one (and the sockets actually bound), and hand the
//! [`Plan`] here.

use std::sync::Arc;

use tracing::info;

use super::Daemon;
use super::listeners::BindError;
use super::snapshot::{Snapshot, route_pools};
use crate::backend::health::Topology;
use crate::backend::pool::Server;
use crate::daemon::reload::{self, Desired, Plan};
use crate::proxy::frontend::Frontend;

impl Daemon {
    /// The plan from the running state to `desired`. Call it, and
    /// [`Daemon::apply`], under the reload lock.
    pub(super) fn plan(&self, desired: &Desired) -> Plan {
        let bound = self.listeners().bound_addresses();
        reload::diff(&self.snapshot().desired, desired, &bound)
    }

    /// Carries `plan` out, making `desired` the running state: listeners,
    /// pools, frontends' routes and limits, health checks, the global limit.
    /// Runtime state (health, admin state, counters) carries over for every
    /// server the plan keeps. Everything that can fail (binding new sockets)
    /// happens before the first change, so an error leaves the daemon as it was.
    pub(super) fn apply(&self, desired: Desired, plan: &Plan) -> Result<Arc<Snapshot>, BindError> {
        let opened = self.bind_planned(&plan.listeners)?;
        let old = self.snapshot();
        let desired = Arc::new(desired);
        let pools = reload::build_pools(&desired, plan, &old.pools);
        let frontends: Vec<Arc<Frontend>> = desired
            .config
            .frontends
            .iter()
            .map(|spec| {
                let pools = route_pools(&pools, spec);
                match old.frontends.iter().find(|f| f.name == spec.name) {
                    Some(kept) => {
                        let rerouted = !pools.same_as(&kept.route.load());
                        if rerouted || plan.frontends.changed.contains(&spec.name) {
                            kept.update(spec, pools);
                        }
                        Arc::clone(kept)
                    }
                    None => Arc::new(Frontend::new(spec, pools)),
                }
            })
            .collect();
        let snapshot = Arc::new(Snapshot {
            config: Arc::clone(&desired.config),
            desired,
            pools,
            frontends,
        });
        self.shared.snapshot.store(Arc::clone(&snapshot));
        self.shared.discovery.note_applied();
        self.sync_health_checks(&snapshot, plan);
        if plan.global_changed {
            self.resize_global_limit(&snapshot.config);
        }
        self.apply_listeners(&plan.listeners, opened, &snapshot.frontends);
        log_new_and_gone_servers(&old, &snapshot);
        self.shared.rebalancer.applied();
        Ok(snapshot)
    }

    /// Brings the health tasks in line with `snapshot`: new servers are
    /// checked at once, removed ones no longer, and the backends whose checks
    /// the plan changed start theirs afresh.
    pub(super) fn sync_health_checks(&self, snapshot: &Snapshot, plan: &Plan) {
        let topology = Topology {
            pools: snapshot.pools.clone(),
        };
        self.shared.health.sync(&topology, &plan.checks);
    }
}

fn log_new_and_gone_servers(old: &Snapshot, new: &Snapshot) {
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
