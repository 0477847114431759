//! The established connections of one server, each with a close handle, so
//! lbd can close a chosen few of them (rebalance), and the reasons lbd
//! closes a connection itself (`lbd_server_closed_total{reason}`).
//!
//! Registering and unregistering take one short, uncontended lock: the set
//! is split into shards, and a connection goes to the next shard in turn,
//! so connections opening on many threads at once rarely meet. Nothing
//! holds a shard's lock longer than one map insert or removal; the
//! rebalancer takes one connection out at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// Why lbd closed a connection itself (rather than a peer ending it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its server was marked down with `close_on_down` set.
    Down = 0,
    /// A rebalance moved it off a server holding more than its share.
    Rebalance = 1,
    /// The shutdown drain deadline passed.
    DrainDeadline = 2,
    /// It was silent for `idle_timeout` (or half-closed and silent for
    /// `fin_timeout`).
    Idle = 3,
}

impl CloseReason {
    /// Every reason, in the order of their numbers.
    pub const ALL: [CloseReason; 4] = [
        CloseReason::Down,
        CloseReason::Rebalance,
        CloseReason::DrainDeadline,
        CloseReason::Idle,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Down => "down",
            CloseReason::Rebalance => "rebalance",
            CloseReason::DrainDeadline => "drain_deadline",
            CloseReason::Idle => "idle",
        }
    }

    /// Its place in [`CloseReason::ALL`] (and in a server's counters).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Shards of a server's connection set: enough that threads registering at
/// once seldom share one, few enough to stay small per server.
const SHARDS: usize = 8;

/// The open connections of one server, each closable on its own.
#[derive(Debug)]
pub struct Connections {
    shards: [Mutex<Shard>; SHARDS],
    /// Which shard the next registration goes to.
    turn: AtomicUsize,
    /// Which shard [`Connections::close_one`] looks in first, so closes
    /// spread over the shards.
    close_turn: AtomicUsize,
}

#[derive(Debug, Default)]
struct Shard {
    next_id: u64,
    open: HashMap<u64, Arc<Notify>>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            shards: std::array::from_fn(|_| Mutex::default()),
            turn: AtomicUsize::new(0),
            close_turn: AtomicUsize::new(0),
        }
    }
}

impl Connections {
    fn shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic elsewhere cannot leave a shard half-changed (one insert or
        // removal under the lock): its data is still good.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers an established connection until the returned guard drops.
    pub fn register(&self) -> Registration<'_> {
        let shard = self.turn.fetch_add(1, Relaxed) % SHARDS;
        let close = Arc::new(Notify::new());
        let id = {
            let mut guard = self.shard(shard);
            let id = guard.next_id;
            guard.next_id += 1;
            guard.open.insert(id, Arc::clone(&close));
            id
        };
        Registration {
            connections: self,
            shard,
            id,
            close,
        }
    }

    /// Tells one registered connection to close (it leaves the set at once).
    /// Returns false when none is registered.
    pub fn close_one(&self) -> bool {
        let start = self.close_turn.fetch_add(1, Relaxed);
        for k in 0..SHARDS {
            let taken = {
                let mut shard = self.shard((start + k) % SHARDS);
                let id = shard.open.keys().next().copied();
                id.and_then(|id| shard.open.remove(&id))
            };
            if let Some(close) = taken {
                // A permit is kept if the connection is not waiting yet.
                close.notify_one();
                return true;
            }
        }
        false
    }

    /// How many connections are registered (established and not closing).
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i).open.len()).sum()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A registered connection: [`Registration::closed`] completes when lbd
/// chose to close it; dropping it unregisters.
#[derive(Debug)]
pub struct Registration<'a> {
    connections: &'a Connections,
    shard: usize,
    id: u64,
    close: Arc<Notify>,
}

impl Registration<'_> {
    /// Completes once [`Connections::close_one`] picked this connection.
    pub async fn closed(&self) {
        self.close.notified().await;
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.connections.shard(self.shard).open.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_connection_is_told_once_and_leaves_the_set() {
        let connections = Connections::default();
        let registered: Vec<_> = (0..20).map(|_| connections.register()).collect();
        assert_eq!(connections.len(), 20);
        for _ in 0..5 {
            assert!(connections.close_one());
        }
        assert_eq!(connections.len(), 15);
        let mut told = 0;
        for registration in &registered {
            let closed = registration.closed();
            tokio::pin!(closed);
            if futures_poll_once(closed.as_mut()).await {
                told += 1;
            }
        }
        assert_eq!(told, 5, "exactly the chosen connections are told");
        drop(registered);
        assert!(connections.is_empty());
        assert!(!connections.close_one());
    }

    /// Whether `future` is ready at its first poll.
    async fn futures_poll_once(
        mut future: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> bool {
        std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx).is_ready())).await
    }
}
