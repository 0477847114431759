//! Who stays a discovered member: every address the cluster lists now,
//! and those gone from its list for less than `remove_after`. Pure: the
//! caller gives the time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// The discovered members of one backend.
#[derive(Debug, Clone)]
pub struct Membership {
    remove_after: Duration,
    listed: BTreeSet<SocketAddr>,
    /// Addresses no longer listed, and since when.
    gone: BTreeMap<SocketAddr, Instant>,
}

impl Membership {
    /// Members to start with (the saved list, or those already running):
    /// they count as listed until the cluster's first answer says otherwise.
    pub fn new(remove_after: Duration, initial: &[SocketAddr]) -> Membership {
        Membership {
            remove_after,
            listed: initial.iter().copied().collect(),
            gone: BTreeMap::new(),
        }
    }

    /// Takes the cluster's full list at `now`. An empty list says nothing
    /// (a cluster never lists no apiserver while one answers): it is
    /// ignored and `false` returned. Returns whether the list was taken.
    pub fn update(&mut self, now: Instant, list: &[SocketAddr]) -> bool {
        if list.is_empty() {
            return false;
        }
        let new: BTreeSet<SocketAddr> = list.iter().copied().collect();
        for addr in self.listed.difference(&new) {
            self.gone.entry(*addr).or_insert(now);
        }
        for addr in &new {
            self.gone.remove(addr);
        }
        self.listed = new;
        self.expire(now);
        true
    }

    /// Drops the addresses gone for `remove_after` or longer at `now`;
    /// returns whether any left.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.gone.len();
        let remove_after = self.remove_after;
        self.gone
            .retain(|_, since| now.saturating_duration_since(*since) < remove_after);
        self.gone.len() != before
    }

    /// When the next gone address is due to leave, if any is waiting.
    pub fn next_removal(&self) -> Option<Instant> {
        self.gone
            .values()
            .min()
            .map(|since| *since + self.remove_after)
    }

    /// The members: listed, and gone but not yet removed, in address order.
    pub fn members(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self
            .listed
            .iter()
            .chain(self.gone.keys())
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The addresses the cluster lists now.
    pub fn listed(&self) -> Vec<SocketAddr> {
        self.listed.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 6443))
    }

    #[test]
    fn a_gone_address_stays_for_remove_after_then_leaves() {
        let start = Instant::now();
        let mut m = Membership::new(Duration::from_secs(30), &[addr(1), addr(2)]);
        assert!(m.update(start, &[addr(1), addr(3)]));
        assert_eq!(m.members(), [addr(1), addr(2), addr(3)]);
        assert_eq!(m.next_removal(), Some(start + Duration::from_secs(30)));
        assert!(!m.expire(start + Duration::from_secs(29)));
        assert!(m.expire(start + Duration::from_secs(30)));
        assert_eq!(m.members(), [addr(1), addr(3)]);
        assert_eq!(m.next_removal(), None);
    }

    #[test]
    fn an_address_listed_again_is_no_longer_due_to_leave() {
        let start = Instant::now();
        let mut m = Membership::new(Duration::from_secs(30), &[addr(1), addr(2)]);
        m.update(start, &[addr(1)]);
        m.update(start + Duration::from_secs(10), &[addr(1), addr(2)]);
        assert!(!m.expire(start + Duration::from_secs(60)));
        assert_eq!(m.members(), [addr(1), addr(2)]);
    }

    #[test]
    fn an_empty_list_removes_nothing() {
        let start = Instant::now();
        let mut m = Membership::new(Duration::ZERO, &[addr(1)]);
        assert!(!m.update(start, &[]));
        assert_eq!(m.members(), [addr(1)]);
    }

    #[test]
    fn zero_remove_after_removes_at_once() {
        let start = Instant::now();
        let mut m = Membership::new(Duration::ZERO, &[addr(1), addr(2)]);
        m.update(start, &[addr(2)]);
        assert_eq!(m.members(), [addr(2)]);
    }
}
