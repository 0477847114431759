//! Connection limits: a resizable count of slots (a frontend's
//! `max_connections`, the global `max_connections`), the per-source-IP
//! count, and the file-descriptor budget the global limit never exceeds.
//!
//! A slot is taken *before* `accept`, so over a slot limit clients wait in
//! the kernel backlog rather than being accepted and dropped. The source
//! limit can only be applied after `accept` (the address is not known
//! before), so over it a client is refused with a reset.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// A limit on connections open at once, resizable on reload.
#[derive(Debug)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    size: AtomicU64,
}

impl ConnectionLimit {
    /// A limit of `size` connections.
    pub fn new(size: usize) -> ConnectionLimit {
        let size = size.min(Semaphore::MAX_PERMITS);
        ConnectionLimit {
            slots: Arc::new(Semaphore::new(size)),
            size: AtomicU64::new(size as u64),
        }
    }

    /// The configured number of slots.
    pub fn size(&self) -> u64 {
        self.size.load(Relaxed)
    }

    /// A slot if one is free now.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    /// Waits for a free slot.
    pub async fn take(&self) -> Result<OwnedSemaphorePermit, AcquireError> {
        Arc::clone(&self.slots).acquire_owned().await
    }

    /// Changes the number of slots. Growing frees slots at once; shrinking
    /// retires free slots now and the rest as live connections return them.
    pub fn resize(&self, new: usize) {
        let new = new.min(Semaphore::MAX_PERMITS) as u64;
        let old = self.size.swap(new, Relaxed);
        if new > old {
            self.slots.add_permits((new - old) as usize);
        } else if old > new {
            let mut to_retire = (old - new) as usize;
            to_retire -= self.slots.forget_permits(to_retire);
            if to_retire > 0 {
                let slots = Arc::clone(&self.slots);
                let to_retire = u32::try_from(to_retire).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(permits) = slots.acquire_many(to_retire).await {
                        permits.forget();
                    }
                });
            }
        }
    }
}

/// Everything one connection holds against the limits, released on drop:
/// its frontend slot, its global slot, its count against its source, and
/// its count on the runtime it lives on.
#[derive(Debug)]
pub struct ConnectionSlot {
    /// The frontend's `max_connections` slot.
    pub frontend: OwnedSemaphorePermit,
    /// The global `max_connections` slot.
    pub global: OwnedSemaphorePermit,
    /// The count against `max_connections_per_source`, when that is set.
    pub source: Option<SourceSlot>,
    /// The count the accept loops balance the runtimes by.
    pub runtime: crate::proxy::runtime::LiveConnection,
}

/// Sub-maps of the source counts: a connection locks one shard, so clients
/// from different addresses rarely wait on each other.
const SOURCE_SHARDS: usize = 16;

/// Open connections per client address, capped at a limit (0 = off).
///
/// IPv6 clients are counted per /64: one host usually owns a whole /64, and
/// counting per address would let it open the limit once per address.
#[derive(Debug)]
pub struct SourceLimit {
    limit: AtomicU32,
    hasher: std::hash::RandomState,
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

/// One connection counted against its source; uncounts on drop.
#[derive(Debug)]
pub struct SourceSlot {
    owner: Arc<SourceLimit>,
    source: IpAddr,
}

impl SourceLimit {
    /// A source limit of `limit` connections per address, or none.
    pub fn new(limit: Option<u32>) -> SourceLimit {
        SourceLimit {
            limit: AtomicU32::new(limit.unwrap_or(0)),
            hasher: std::hash::RandomState::new(),
            shards: (0..SOURCE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    /// Changes the limit; connections already open stay open.
    pub fn set(&self, limit: Option<u32>) {
        self.limit.store(limit.unwrap_or(0), Relaxed);
    }

    /// The limit, if one is set.
    pub fn get(&self) -> Option<u32> {
        match self.limit.load(Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Counts a connection from `source`: `Ok(None)` when no limit is set
    /// (nothing is counted or locked), `Err(())` when the source is at its limit.
    #[allow(clippy::result_unit_err)]
    pub fn enter(self: &Arc<Self>, source: IpAddr) -> Result<Option<SourceSlot>, ()> {
        let limit = self.limit.load(Relaxed);
        if limit == 0 {
            return Ok(None);
        }
        let source = source_key(source);
        let mut counts = self.shard(source);
        let count = counts.entry(source).or_insert(0);
        if *count >= limit {
            return Err(());
        }
        *count += 1;
        Ok(Some(SourceSlot {
            owner: Arc::clone(self),
            source,
        }))
    }

    /// Sources with at least one counted connection (for tests and status).
    pub fn tracked_sources(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    fn shard(&self, source: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        let index = self.hasher.hash_one(source) as usize % SOURCE_SHARDS;
        // A panic elsewhere cannot leave a count half-written: keep going.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.shard(self.source);
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// The address a source is counted under: IPv4 as is (also when mapped into
/// IPv6), IPv6 by its /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// File descriptors kept back from connections for everything else: the
/// admin API, health checks, DNS lookups, log files, reloads.
const FD_HEADROOM: u64 = 64;

/// How many proxied connections the soft RLIMIT_NOFILE can carry (the
/// binary raises it to the hard limit first, see [`crate::daemon::rlimit`]): each
/// needs two descriptors (client and server), after `already_open`, one per
/// server for checks, the splice pipes, and [`FD_HEADROOM`].
pub fn fd_budget(already_open: u64, servers: u64) -> FdBudget {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return FdBudget {
            nofile: None,
            connections: usize::MAX,
        };
    }
    let soft = limit.rlim_cur;
    let reserved = already_open + servers + FD_HEADROOM + crate::proxy::splice::reserved_fds();
    let connections = (soft.saturating_sub(reserved) / 2).max(1);
    FdBudget {
        nofile: Some(soft),
        connections: usize::try_from(connections).unwrap_or(usize::MAX),
    }
}

/// How many connections the process's descriptor limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft RLIMIT_NOFILE after raising it, if finite.
    pub nofile: Option<u64>,
    /// Connections that fit.
    pub connections: usize,
}

/// Descriptors this process has open now (0 if /proc is not mounted).
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_limit_counts_per_address_and_uncounts_on_drop() {
        let limit = Arc::new(SourceLimit::new(Some(2)));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limit.enter(a).unwrap().unwrap();
        let _second = limit.enter(a).unwrap().unwrap();
        assert!(limit.enter(a).is_err());
        assert!(limit.enter(b).unwrap().is_some());
        drop(first);
        assert!(limit.enter(a).unwrap().is_some());
        assert_eq!(limit.tracked_sources(), 1, "b's slot was dropped at once");
    }

    #[test]
    fn without_a_limit_nothing_is_tracked() {
        let limit = Arc::new(SourceLimit::new(None));
        let slot = limit.enter("10.0.0.1".parse().unwrap()).unwrap();
        assert!(slot.is_none());
        assert_eq!(limit.tracked_sources(), 0);
    }

    #[test]
    fn ipv6_sources_share_their_slash_64() {
        let limit = Arc::new(SourceLimit::new(Some(1)));
        let _held = limit.enter("2001:db8::1".parse().unwrap()).unwrap();
        assert!(limit.enter("2001:db8::2".parse().unwrap()).is_err());
        assert!(limit.enter("2001:db8:0:1::1".parse().unwrap()).is_ok());
        let _v4 = limit.enter("192.0.2.1".parse().unwrap()).unwrap();
        assert!(limit.enter("::ffff:192.0.2.1".parse().unwrap()).is_err());
    }

    #[tokio::test]
    async fn resizing_frees_or_retires_slots() {
        let limit = ConnectionLimit::new(1);
        let held = limit.try_take().unwrap();
        assert!(limit.try_take().is_none());
        limit.resize(2);
        let second = limit.try_take().unwrap();
        limit.resize(1);
        drop(held);
        drop(second);
        tokio::task::yield_now().await;
        let _one = limit.try_take().unwrap();
        assert!(limit.try_take().is_none(), "shrunk back to one slot");
    }

    #[test]
    fn the_fd_budget_leaves_headroom_and_two_fds_per_connection() {
        let budget = fd_budget(10, 3);
        if let Some(nofile) = budget.nofile {
            let reserved = 10 + 3 + FD_HEADROOM + crate::proxy::splice::reserved_fds();
            let expected = (nofile.saturating_sub(reserved) / 2).max(1);
            assert_eq!(budget.connections as u64, expected);
        }
    }
}
