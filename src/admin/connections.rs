//! The admin API's open connections and its two caps (all connections, and
//! connections from one source address). A new connection is never refused
//! for being one too many: the connection that has waited longest without
//! a request in progress (no bytes yet, partial headers, or an idle
//! keep-alive) is let go instead. Idle connections therefore cannot starve
//! `lbctl ready` (keepalived's check), whatever their number or source,
//! and a request already being answered is never cut.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// Admin connections open at once, from all sources together.
pub const MAX_CONNECTIONS: usize = 256;
/// Admin connections open at once from one source address (TCP only: the
/// unix socket's peers count only towards [`MAX_CONNECTIONS`]).
pub const MAX_PER_SOURCE: usize = 32;

/// The open connections. Cheap to share: clone the `Arc`.
#[derive(Debug, Default)]
pub struct Connections {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Orders connection ids and idle moments: smaller is older.
    clock: u64,
    open: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    source: Option<IpAddr>,
    /// When the connection last became idle, or `None` while a request is
    /// being answered.
    idle_since: Option<u64>,
    evict: CancellationToken,
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    connections: Arc<Connections>,
    evict: CancellationToken,
}

/// Marks its connection busy (a request is being answered) until dropped.
#[derive(Debug)]
pub struct Busy {
    id: u64,
    connections: Arc<Connections>,
}

impl Connections {
    /// No connections yet.
    pub fn new() -> Arc<Connections> {
        Arc::new(Connections::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection from `source` (`None`: the unix socket), letting
    /// the oldest idle one go if a cap would be passed. `None` only when
    /// every connection that could make room is answering a request.
    pub fn admit(self: &Arc<Self>, source: Option<IpAddr>) -> Option<Slot> {
        let mut inner = self.lock();
        if let Some(ip) = source {
            let from_source = inner.open.values().filter(|e| e.source == Some(ip)).count();
            if from_source >= MAX_PER_SOURCE && !inner.evict_oldest_idle(|e| e.source == Some(ip)) {
                return None;
            }
        }
        if inner.open.len() >= MAX_CONNECTIONS && !inner.evict_oldest_idle(|_| true) {
            return None;
        }
        inner.clock += 1;
        let id = inner.clock;
        let evict = CancellationToken::new();
        inner.open.insert(
            id,
            Entry {
                source,
                idle_since: Some(id),
                evict: evict.clone(),
            },
        );
        Some(Slot {
            id,
            connections: Arc::clone(self),
            evict,
        })
    }

    /// Connections open now (evicted ones no longer count).
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Lets the longest-idle connection matching `which` go; false if none
    /// of them is idle.
    fn evict_oldest_idle(&mut self, which: impl Fn(&Entry) -> bool) -> bool {
        let oldest = self
            .open
            .iter()
            .filter(|(_, e)| which(e))
            .filter_map(|(id, e)| e.idle_since.map(|since| (since, *id)))
            .min();
        match oldest.and_then(|(_, id)| self.open.remove(&id)) {
            Some(entry) => {
                entry.evict.cancel();
                true
            }
            None => false,
        }
    }
}

impl Slot {
    /// Cancelled when this connection has been chosen to make room.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evict
    }

    /// A request is being answered until the guard is dropped.
    pub fn busy(&self) -> Busy {
        self.connections.set_idle(self.id, false);
        Busy {
            id: self.id,
            connections: Arc::clone(&self.connections),
        }
    }
}

impl Connections {
    fn set_idle(&self, id: u64, idle: bool) {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        if let Some(entry) = inner.open.get_mut(&id) {
            entry.idle_since = idle.then_some(now);
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.connections.set_idle(self.id, true);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.lock().open.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)));

    #[test]
    fn past_the_source_cap_the_oldest_idle_connection_of_that_source_goes() {
        let connections = Connections::new();
        let slots: Vec<Slot> = (0..MAX_PER_SOURCE)
            .map(|_| connections.admit(A).unwrap())
            .collect();
        let _busy = slots[0].busy();
        let newest = connections.admit(A).unwrap();
        // The oldest is answering a request: the next oldest goes instead.
        assert!(!slots[0].evicted().is_cancelled());
        assert!(slots[1].evicted().is_cancelled());
        assert!(!newest.evicted().is_cancelled());
        assert_eq!(connections.len(), MAX_PER_SOURCE);
        // Another source is not touched by this source's cap.
        let other = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));
        assert!(connections.admit(other).is_some());
    }

    #[test]
    fn a_connection_that_just_finished_a_request_is_younger_than_older_idle_ones() {
        let connections = Connections::new();
        let slots: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|_| connections.admit(None).unwrap())
            .collect();
        drop(slots[0].busy());
        connections.admit(None).unwrap();
        assert!(!slots[0].evicted().is_cancelled());
        assert!(slots[1].evicted().is_cancelled());
    }

    #[test]
    fn when_every_connection_is_answering_a_request_the_new_one_is_refused() {
        let connections = Connections::new();
        let slots: Vec<Slot> = (0..MAX_PER_SOURCE)
            .map(|_| connections.admit(A).unwrap())
            .collect();
        let busy: Vec<Busy> = slots.iter().map(Slot::busy).collect();
        assert!(connections.admit(A).is_none());
        drop(busy);
        assert!(connections.admit(A).is_some());
    }
}
