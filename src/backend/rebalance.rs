//! Which connections a rebalance moves: the servers that hold more than
//! their weighted share of a backend's connections, by how much, and an
//! order of closes that takes from them evenly. Pure arithmetic over a
//! pool's live counters; the daemon runs the schedule (`daemon/rebalance.rs`).
//!
//! Only servers that take new connections (up and ready) count: a server
//! draining or down is emptied by its own mechanism, and its connections
//! are no one's share.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::pool::{AdminState, Health, Server};

/// Whether `server` takes new connections now (up and ready).
pub fn takes_traffic(server: &Server) -> bool {
    server.admin() == AdminState::Ready && server.health() == Health::Up
}

/// What a rebalance of a pool would close now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Excess {
    /// Fewer than two servers take traffic: nothing can move anywhere.
    TooFewUp(usize),
    /// Per server (index into the pool's servers) with more than its share,
    /// how many connections over it; empty when the pool is balanced.
    Over(Vec<(usize, u64)>),
}

/// How far each server is over its weighted share of the connections held
/// by the servers that take traffic. A share is rounded up, so a server is
/// never asked to go below it: with 31 connections over three equal
/// servers (share 10.3), one holding 16 gives up 5.
pub fn excess(servers: &[Arc<Server>]) -> Excess {
    let up: Vec<usize> = (0..servers.len())
        .filter(|&i| takes_traffic(&servers[i]))
        .collect();
    if up.len() < 2 {
        return Excess::TooFewUp(up.len());
    }
    let total: u64 = up.iter().map(|&i| servers[i].active()).sum();
    let weights: u64 = up.iter().map(|&i| u64::from(servers[i].weight())).sum();
    let over = up
        .into_iter()
        .filter_map(|i| {
            let over = over_share(servers[i].active(), servers[i].weight(), total, weights);
            (over > 0).then_some((i, over))
        })
        .collect();
    Excess::Over(over)
}

/// Whole connections `active` is above `total * weight / weights` (0 when
/// at or below it): floor(active - share).
fn over_share(active: u64, weight: u32, total: u64, weights: u64) -> u64 {
    let held = u128::from(active) * u128::from(weights);
    let share = u128::from(total) * u128::from(weight);
    u64::try_from(held.saturating_sub(share) / u128::from(weights.max(1))).unwrap_or(u64::MAX)
}

/// Whether `server` (one of `servers`) still holds at least one connection
/// more than its share right now; `None` when fewer than two servers take
/// traffic. Asked before each close, since clients come and go meanwhile.
pub fn still_over(servers: &[Arc<Server>], server: &Arc<Server>) -> Option<bool> {
    match excess(servers) {
        Excess::TooFewUp(_) => None,
        Excess::Over(over) => Some(over.iter().any(|&(i, _)| Arc::ptr_eq(&servers[i], server))),
    }
}

/// The order of closes: always from the server with the most still to
/// give (the lower index on a tie), so every donor is emptied at the same
/// pace over the window.
pub fn order(over: &[(usize, u64)]) -> Vec<usize> {
    let mut left: Vec<(usize, u64)> = over.to_vec();
    let total: u64 = left.iter().map(|&(_, n)| n).sum();
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let Some(most) = left
            .iter_mut()
            .filter(|(_, n)| *n > 0)
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        else {
            break;
        };
        most.1 -= 1;
        order.push(most.0);
    }
    order
}

/// When close `step` of `steps` happens, from the start of the window:
/// in the middle of its own equal slice, so the last one comes half a
/// slice before the window ends and its client has time to reconnect.
pub fn offset(step: usize, steps: usize, window: Duration) -> Duration {
    let steps = steps.max(1) as u128;
    let nanos = window.as_nanos() * (2 * step as u128 + 1) / (2 * steps);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    /// Servers holding `active[i]` connections each, weights `weights[i]`, all up.
    fn servers(active: &[u64], weights: &[u32]) -> Vec<Arc<Server>> {
        active
            .iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (&n, &w))| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
                let server = Server::new("b", &format!("s{i}"), addr, w);
                server.set_health(Health::Up);
                server
                    .stats
                    .active
                    .store(n, std::sync::atomic::Ordering::Relaxed);
                Arc::new(server)
            })
            .collect()
    }

    #[test]
    fn only_the_part_above_the_share_is_moved() {
        // 30 on two of three servers: each gives up 5, the third takes 10.
        let s = servers(&[15, 15, 0], &[1, 1, 1]);
        assert_eq!(excess(&s), Excess::Over(vec![(0, 5), (1, 5)]));
        // A share is rounded up: 31 over three, 16 gives up 5, not 6.
        let s = servers(&[16, 15, 0], &[1, 1, 1]);
        assert_eq!(excess(&s), Excess::Over(vec![(0, 5), (1, 4)]));
        // Balanced (within one) moves nothing.
        let s = servers(&[11, 10, 10], &[1, 1, 1]);
        assert_eq!(excess(&s), Excess::Over(vec![]));
    }

    #[test]
    fn weights_set_the_share() {
        // Weight 2 of 4: half of 40 is its share.
        let s = servers(&[30, 10, 0], &[2, 1, 1]);
        assert_eq!(excess(&s), Excess::Over(vec![(0, 10)]));
    }

    #[test]
    fn nothing_moves_with_fewer_than_two_servers_up() {
        let s = servers(&[30, 0], &[1, 1]);
        s[1].set_health(Health::Down);
        assert_eq!(excess(&s), Excess::TooFewUp(1));
        assert_eq!(still_over(&s, &s[0]), None);
        // Draining or disabled servers take no traffic either.
        s[1].set_health(Health::Up);
        s[1].set_admin(AdminState::Drain);
        assert_eq!(excess(&s), Excess::TooFewUp(1));
        s[1].set_admin(AdminState::Ready);
        assert_eq!(still_over(&s, &s[0]), Some(true));
        assert_eq!(still_over(&s, &s[1]), Some(false));
    }

    #[test]
    fn closes_alternate_between_donors_and_fill_the_window() {
        assert_eq!(order(&[(0, 3), (2, 2)]), [0, 0, 2, 0, 2]);
        assert_eq!(order(&[(0, 2), (1, 2)]), [0, 1, 0, 1]);
        let window = Duration::from_secs(10);
        assert_eq!(offset(0, 5, window), Duration::from_secs(1));
        assert_eq!(offset(4, 5, window), Duration::from_secs(9));
        assert_eq!(offset(0, 1, window), Duration::from_secs(5));
    }
}
