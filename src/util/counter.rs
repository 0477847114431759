//! A counter the data path adds to from every thread without contention.
//!
//! Byte counters are bumped per chunk by every connection of a server, from
//! every runtime thread. One shared `AtomicU64` would bounce its cache line
//! between cores on each add; here each thread adds to its own cache-line
//! sized shard and a reader (a metrics scrape) sums the shards. The method
//! names mirror `AtomicU64`'s, so readers call `load(Relaxed)` as before.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Shards per counter: more threads than this share shards (less contended
/// still than one atomic).
const SHARDS: usize = 8;

/// One shard, alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard(AtomicU64);

/// A monotonically growing total, cheap to add to from many threads.
#[derive(Debug, Default)]
pub struct ShardedCounter {
    shards: [Shard; SHARDS],
}

thread_local! {
    /// This thread's shard, handed out round-robin on first use.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    SHARD
        .try_with(|shard| {
            let mut index = shard.get();
            if index == usize::MAX {
                index = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
                shard.set(index);
            }
            index
        })
        .unwrap_or(0)
}

impl ShardedCounter {
    /// Adds `n` to this thread's shard.
    pub fn fetch_add(&self, n: u64, order: Ordering) {
        self.shards[shard_index()].0.fetch_add(n, order);
    }

    /// The total over all shards.
    pub fn load(&self, order: Ordering) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |sum, shard| sum.wrapping_add(shard.0.load(order)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn sums_what_every_thread_added() {
        let counter = Arc::new(ShardedCounter::default());
        let threads: Vec<_> = (0..12)
            .map(|t| {
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counter.fetch_add(t + 1, Relaxed);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(counter.load(Relaxed), 1000 * (1..=12).sum::<u64>());
    }
}
