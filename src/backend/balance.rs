//! Balancing algorithms: which eligible server gets the next connection.
//!
//! A [`Balancer`] is built once per pool (on start and on reload) and is
//! read-only afterwards, apart from a relaxed atomic cursor: picking never
//! takes a lock. Eligibility (health, admin state, servers already tried) is
//! decided by the caller and passed in, so health changes need no rebuild.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::config::Balance;

/// Ring points per unit of weight for `source-hash`: enough for an even
/// spread over a few servers, bounded by [`MAX_RING_POINTS`] for big pools.
const POINTS_PER_WEIGHT: u64 = 100;
const MAX_RING_POINTS: u64 = 1 << 20;

/// What a balancer reads of a server: its load and its share. The pool's
/// servers implement it; the balancer knows nothing else of them.
pub trait Load {
    /// Connections open to it right now.
    fn active(&self) -> u64;
    /// Its share of new connections.
    fn weight(&self) -> u32;
}

impl<T: Load> Load for Arc<T> {
    fn active(&self) -> u64 {
        (**self).active()
    }

    fn weight(&self) -> u32 {
        (**self).weight()
    }
}

/// A pool's balancing state.
#[derive(Debug)]
pub struct Balancer {
    kind: Kind,
    /// Rotating start point; also breaks ties so equal servers share load.
    cursor: AtomicUsize,
}

#[derive(Debug)]
enum Kind {
    /// Server indices in smooth weighted order, walked by the cursor.
    RoundRobin(Vec<u32>),
    LeastConnections,
    RandomTwo,
    /// Sorted (point, server index) hash ring.
    SourceHash(Vec<(u64, u32)>),
    First,
}

impl Balancer {
    /// Builds the balancer for servers with these weights and names (names
    /// place servers on the hash ring, so a server keeps its points across
    /// reloads whatever its position in the list).
    pub fn new(balance: Balance, weights: &[u32], names: &[&str]) -> Balancer {
        let kind = match balance {
            Balance::RoundRobin => Kind::RoundRobin(smooth_schedule(weights)),
            Balance::LeastConnections => Kind::LeastConnections,
            Balance::RandomTwo => Kind::RandomTwo,
            Balance::SourceHash => Kind::SourceHash(hash_ring(weights, names)),
            Balance::First => Kind::First,
        };
        Balancer {
            kind,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Picks a server index. `rank` says how much a server is wanted:
    /// `None` excludes it, and among the rest only the lowest rank present is
    /// considered (healthy servers before unchecked ones, say).
    pub fn pick(
        &self,
        servers: &[impl Load],
        client: IpAddr,
        rank: impl Fn(usize) -> Option<u8>,
    ) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let best_rank = || (0..n).filter_map(&rank).min();
        match &self.kind {
            Kind::RoundRobin(schedule) => {
                // Each slot looked at is used up, skipped or not: a down
                // server's turns are spread over the others instead of all
                // falling to the server after it.
                let len = schedule.len();
                let order =
                    (0..len).map(|_| schedule[self.cursor.fetch_add(1, Relaxed) % len] as usize);
                first_of_best_rank(order, &rank, best_rank)
            }
            Kind::LeastConnections => {
                // Ties go to each server in turn.
                let start = self.cursor.fetch_add(1, Relaxed) % n;
                least_loaded(servers, rotated(n, start), rank)
            }
            Kind::RandomTwo => {
                // Two distinct random probes; when either is not a top-rank
                // server (a degraded pool), fall back to a full scan.
                let a = random_below(n);
                let b = if n > 1 {
                    (a + 1 + random_below(n - 1)) % n
                } else {
                    a
                };
                if rank(a) == Some(0) && rank(b) == Some(0) {
                    let (sa, sb) = (&servers[a], &servers[b]);
                    // b.active / b.weight < a.active / a.weight, without division.
                    let b_lighter =
                        sb.active() * u64::from(sa.weight()) < sa.active() * u64::from(sb.weight());
                    Some(if b_lighter { b } else { a })
                } else {
                    least_loaded(servers, rotated(n, random_below(n)), rank)
                }
            }
            Kind::SourceHash(ring) => {
                let point = hash_of(&client);
                let at = ring.partition_point(|&(p, _)| p < point);
                let order = (0..ring.len()).map(|k| ring[(at + k) % ring.len()].1 as usize);
                first_of_best_rank(order, &rank, best_rank)
            }
            Kind::First => first_of_best_rank(0..n, &rank, best_rank),
        }
    }
}

/// The first candidate in `order` whose rank is the best any server has.
/// The common case (the first candidate is healthy) costs one step; only
/// otherwise is `best_rank` worked out (once, over the servers, not over a
/// long ring or schedule), and the walk stops at the first match or returns
/// at once when no server is eligible at all.
fn first_of_best_rank(
    mut order: impl Iterator<Item = usize>,
    rank: impl Fn(usize) -> Option<u8>,
    best_rank: impl FnOnce() -> Option<u8>,
) -> Option<usize> {
    let first = order.next()?;
    let first_rank = rank(first);
    if first_rank == Some(0) {
        return Some(first);
    }
    let best = best_rank()?;
    if first_rank == Some(best) {
        return Some(first);
    }
    order.find(|&i| rank(i) == Some(best))
}

/// Every index below `n`, beginning at `start`: a rotation without a
/// division per element.
fn rotated(n: usize, start: usize) -> impl Iterator<Item = usize> {
    (start..n).chain(0..start)
}

/// The candidate of the lowest rank with the fewest active connections per
/// unit of weight; the first one wins ties, so callers rotate the order.
fn least_loaded(
    servers: &[impl Load],
    candidates: impl Iterator<Item = usize>,
    rank: impl Fn(usize) -> Option<u8>,
) -> Option<usize> {
    // (rank, active, weight, index) of the best so far, each read once.
    let mut best: Option<(u8, u64, u64, usize)> = None;
    for i in candidates {
        let Some(r) = rank(i) else { continue };
        let (active, weight) = (servers[i].active(), u64::from(servers[i].weight()));
        // Lower rank first, then active / weight, compared without division;
        // the first of equals wins.
        let better = best.is_none_or(|(best_rank, best_active, best_weight, _)| {
            (r, active * best_weight) < (best_rank, best_active * weight)
        });
        if better {
            best = Some((r, active, weight, i));
        }
    }
    best.map(|(_, _, _, i)| i)
}

/// Stride scheduling: each server advances by `1/weight`, and the one with
/// the smallest pass goes next. The result spreads a heavy server's turns
/// evenly (a, b, a, c, a, b…) rather than in a burst, like nginx's smooth
/// weighted round-robin, in O(total weight × log n).
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let gcd = weights.iter().copied().fold(0, gcd);
    if gcd == 0 {
        return Vec::new();
    }
    let total: u64 = weights.iter().map(|&w| u64::from(w / gcd)).sum();
    let lcm_stride: u64 = 1 << 32;
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Reverse((lcm_stride / u64::from(w / gcd) / 2, i as u32)))
        .collect();
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let Reverse((pass, i)) = heap.pop().expect("heap holds every server");
        schedule.push(i);
        let stride = lcm_stride / u64::from(weights[i as usize] / gcd);
        heap.push(Reverse((pass + stride, i)));
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Consistent hash ring: each server owns points derived from its name, so
/// when a server leaves only the clients that hashed to its points move.
fn hash_ring(weights: &[u32], names: &[&str]) -> Vec<(u64, u32)> {
    let total_weight: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let per_weight = POINTS_PER_WEIGHT
        .min(MAX_RING_POINTS / total_weight.max(1))
        .max(1);
    let mut ring: Vec<(u64, u32)> = weights
        .iter()
        .zip(names)
        .enumerate()
        .flat_map(|(i, (&w, name))| {
            (0..u64::from(w) * per_weight).map(move |replica| (hash_of(&(name, replica)), i as u32))
        })
        .collect();
    ring.sort_unstable();
    ring
}

fn hash_of(value: &impl Hash) -> u64 {
    // DefaultHasher::new() uses fixed keys: the same input lands on the same
    // point for the life of the process, which is all a ring needs.
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// A uniform number in `0..n` from a per-thread xorshift generator: fast,
/// lock-free, and random enough to spread load (not for secrets).
pub(crate) fn random_below(n: usize) -> usize {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        ((u128::from(x) * n as u128) >> 64) as usize
    })
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    hash_of(&(nanos, std::ptr::addr_of!(local) as usize)) | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::pool::Server;
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, SocketAddr};

    fn servers(weights: &[u32]) -> Vec<Arc<Server>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr = SocketAddr::from(([10, 0, 0, i as u8 + 1], 6443));
                Arc::new(Server::new("b", &format!("s{i}"), addr, w))
            })
            .collect()
    }

    fn balancer(kind: Balance, servers: &[Arc<Server>]) -> Balancer {
        let weights: Vec<u32> = servers.iter().map(|s| s.weight()).collect();
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        Balancer::new(kind, &weights, &names)
    }

    fn client(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    fn counts(kind: Balance, weights: &[u32], picks: u32) -> Vec<u32> {
        let servers = servers(weights);
        let b = balancer(kind, &servers);
        let mut counts = vec![0; weights.len()];
        for i in 0..picks {
            counts[b.pick(&servers, client(i), |_| Some(0)).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights_smoothly() {
        assert_eq!(
            counts(Balance::RoundRobin, &[1, 1, 1], 300),
            [100, 100, 100]
        );
        assert_eq!(
            counts(Balance::RoundRobin, &[1, 2, 1], 400),
            [100, 200, 100]
        );
        // Smooth: the heavy server never gets two turns in a row.
        let schedule = smooth_schedule(&[1, 2, 1]);
        assert_eq!(schedule.len(), 4);
        assert!(schedule.windows(2).all(|w| w[0] != w[1]), "{schedule:?}");
        let schedule = smooth_schedule(&[5, 1, 1]);
        assert_eq!(schedule.iter().filter(|&&i| i == 0).count(), 5);
        assert!(schedule.windows(3).all(|w| w.contains(&0)), "{schedule:?}");
    }

    #[test]
    fn round_robin_spreads_a_down_servers_turns_evenly() {
        let servers = servers(&[1, 1, 1]);
        let b = balancer(Balance::RoundRobin, &servers);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[b
                .pick(&servers, client(0), |i| (i != 1).then_some(0))
                .unwrap()] += 1;
        }
        assert_eq!(counts, [150, 0, 150]);
    }

    #[test]
    fn random_two_probes_two_distinct_servers() {
        let servers = servers(&[1, 1]);
        let b = balancer(Balance::RandomTwo, &servers);
        let _busy = servers[0].connection();
        // Distinct probes always see the idle server, so it always wins.
        for _ in 0..200 {
            assert_eq!(b.pick(&servers, client(0), |_| Some(0)), Some(1));
        }
    }

    #[test]
    fn round_robin_skips_ineligible_servers() {
        let servers = servers(&[1, 1, 1]);
        let b = balancer(Balance::RoundRobin, &servers);
        for _ in 0..10 {
            assert_ne!(
                b.pick(&servers, client(0), |i| (i != 1).then_some(0)),
                Some(1)
            );
        }
        assert_eq!(b.pick(&servers, client(0), |_| None), None);
    }

    #[test]
    fn least_connections_prefers_the_idle_server() {
        let servers = servers(&[1, 1, 1]);
        let b = balancer(Balance::LeastConnections, &servers);
        let _busy: Vec<_> = (0..5).map(|_| servers[0].connection()).collect();
        let _one = servers[2].connection();
        for _ in 0..10 {
            assert_eq!(b.pick(&servers, client(0), |_| Some(0)), Some(1));
        }
        // Equal loads are shared, not always the first.
        let _two = servers[1].connection();
        let picks: Vec<_> = (0..10)
            .map(|_| b.pick(&servers, client(0), |_| Some(0)).unwrap())
            .collect();
        assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
    }

    #[test]
    fn least_connections_weighs_load_by_weight() {
        let servers = servers(&[1, 3]);
        let b = balancer(Balance::LeastConnections, &servers);
        let _a = servers[0].connection();
        let _b: Vec<_> = (0..2).map(|_| servers[1].connection()).collect();
        // 1/1 against 2/3: the heavier server is less loaded.
        assert_eq!(b.pick(&servers, client(0), |_| Some(0)), Some(1));
    }

    #[test]
    fn random_two_spreads_and_avoids_the_loaded_server() {
        let spread = counts(Balance::RandomTwo, &[1, 1, 1], 3000);
        assert!(spread.iter().all(|&c| c > 600), "{spread:?}");
        let servers = servers(&[1, 1, 1]);
        let b = balancer(Balance::RandomTwo, &servers);
        let _busy: Vec<_> = (0..5).map(|_| servers[0].connection()).collect();
        let to_busy = (0..3000)
            .filter(|_| b.pick(&servers, client(0), |_| Some(0)) == Some(0))
            .count();
        // Only when both probes land on it: about 1/9 of picks.
        assert!(to_busy < 500, "{to_busy}");
    }

    #[test]
    fn source_hash_is_sticky_and_spread() {
        let spread = counts(Balance::SourceHash, &[1, 1, 1], 3000);
        assert!(spread.iter().all(|&c| c > 700), "{spread:?}");
        let servers = servers(&[1, 1, 1]);
        let b = balancer(Balance::SourceHash, &servers);
        for i in 0..100 {
            let first = b.pick(&servers, client(i), |_| Some(0));
            assert_eq!(b.pick(&servers, client(i), |_| Some(0)), first);
        }
    }

    #[test]
    fn source_hash_moves_only_the_departed_servers_clients() {
        let servers = servers(&[1, 1, 1]);
        let b = balancer(Balance::SourceHash, &servers);
        let before: HashMap<u32, usize> = (0..2000)
            .map(|i| (i, b.pick(&servers, client(i), |_| Some(0)).unwrap()))
            .collect();
        // Server 1 goes down…
        for (&i, &was) in &before {
            let now = b
                .pick(&servers, client(i), |s| (s != 1).then_some(0))
                .unwrap();
            if was != 1 {
                assert_eq!(now, was, "client {i} moved though its server stayed");
            }
        }
        // …or is removed by a reload: the ring is rebuilt from names.
        let remaining = vec![servers[0].clone(), servers[2].clone()];
        let rebuilt = balancer(Balance::SourceHash, &remaining);
        for (&i, &was) in &before {
            let now = rebuilt.pick(&remaining, client(i), |_| Some(0)).unwrap();
            if was != 1 {
                assert_eq!(remaining[now].name, servers[was].name);
            }
        }
    }

    #[test]
    fn lower_ranks_are_used_only_when_no_better_server_exists() {
        let servers = servers(&[1, 1, 1]);
        for kind in [
            Balance::RoundRobin,
            Balance::LeastConnections,
            Balance::RandomTwo,
            Balance::SourceHash,
            Balance::First,
        ] {
            let b = balancer(kind, &servers);
            for i in 0..20 {
                let only_2_is_top = |s: usize| Some(if s == 2 { 0 } else { 1 });
                assert_eq!(
                    b.pick(&servers, client(i), only_2_is_top),
                    Some(2),
                    "{kind:?}"
                );
                let none_top = |s: usize| (s != 0).then_some(1);
                assert_ne!(b.pick(&servers, client(i), none_top), Some(0), "{kind:?}");
            }
        }
        // Two ranks tried in turn must not move the round-robin cursor twice.
        let two = servers[..2].to_vec();
        let b = balancer(Balance::RoundRobin, &two);
        let picks: Vec<_> = (0..4)
            .map(|_| b.pick(&two, client(0), |_| Some(1)).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 0, 1]);
    }

    #[test]
    fn first_fills_in_order() {
        assert_eq!(counts(Balance::First, &[1, 1, 1], 10), [10, 0, 0]);
        let servers = servers(&[1, 1, 1]);
        let b = balancer(Balance::First, &servers);
        assert_eq!(
            b.pick(&servers, client(0), |i| (i > 0).then_some(0)),
            Some(1)
        );
    }
}
