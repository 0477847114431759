//! When the first round of health checks is over: every server of the
//! first snapshot has had its first check, the moment systemd is told
//! READY. A guard per task still waiting for its first check, plus one held
//! by the first `sync` while it starts them, keep the round open; the last
//! one dropped ends it.

use std::sync::Arc;

use tracing::info;

use super::Shared;
use crate::backend::pool::Health;

/// Holds the first round open: one per task until its server's first check
/// is done, and one held by the first `sync` until every task is started.
#[derive(Debug)]
pub(super) struct FirstRoundGuard(Arc<Shared>);

impl FirstRoundGuard {
    /// Opens the first round, once (the first sync): the guard stands for
    /// the sync itself.
    pub(super) fn open(shared: &Arc<Shared>) -> Option<FirstRoundGuard> {
        let opened = shared.first_round.send_if_modified(|left| {
            let first = left.is_none();
            if first {
                *left = Some(1);
            }
            first
        });
        opened.then(|| FirstRoundGuard(Arc::clone(shared)))
    }

    /// A guard for a task starting while the first round is open.
    pub(super) fn join(shared: &Arc<Shared>) -> Option<FirstRoundGuard> {
        let joined = shared.first_round.send_if_modified(|left| match left {
            Some(open) if *open > 0 => {
                *open += 1;
                true
            }
            _ => false,
        });
        joined.then(|| FirstRoundGuard(Arc::clone(shared)))
    }
}

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

impl Shared {
    pub(super) fn first_round_finished(&self) {
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
