//! Leak check: many short connections and a crowd of idle ones through the
//! real binary, in rounds. After each round lbd must be back where it
//! started in file descriptors and runtime tasks, and its memory must not
//! grow round after round.
//!
//! Three sizes, each three rounds: `soak_small` runs with every `cargo
//! test`; `soak_ci` (`--ignored`, run by `.ci/run`) and `soak_full` (over a
//! million short connections in all, 10 000 idle ones held through each
//! round; `--ignored`, run by hand, see docs/reliability.md). Each reports
//! its figures on stderr.

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Backend, Lbd, config_for};

/// `count` connections over `threads` threads, each connecting, reading the
/// backend's greeting and closing. Returns how many failed.
fn short_connections(addr: SocketAddr, count: usize, threads: usize) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (next, failed) = (Arc::clone(&next), Arc::clone(&failed));
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let ok = TcpStream::connect(addr).and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(10)))?;
                        let mut greeting = [0u8; 2];
                        s.read_exact(&mut greeting)
                    });
                    if ok.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    failed.load(Ordering::Relaxed)
}

/// Opens `count` connections, each greeted, and keeps them open.
fn idle_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|i| {
            let mut stream =
                TcpStream::connect(addr).unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut greeting = [0u8; 2];
            stream
                .read_exact(&mut greeting)
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
            stream
        })
        .collect()
}

/// Idle connections that fit the descriptor limits of this test process
/// (each holds a client and a backend socket here) and of lbd (two each).
fn idle_that_fit(wanted: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let fit = (limit.rlim_cur.saturating_sub(1000) / 2) as usize;
    if fit < wanted {
        eprintln!(
            "soak: {wanted} idle connections need {} descriptors; RLIMIT_NOFILE is {}: using {fit}",
            wanted * 2 + 1000,
            limit.rlim_cur
        );
    }
    wanted.min(fit)
}

/// Rounds of `short` short connections with `idle` idle ones held
/// meanwhile. Every round must end at the baseline's descriptors and tasks;
/// memory may grow in steps as caches fill, but a leak grows every round,
/// so the smaller growth of the last two rounds must stay under 1 MiB.
fn soak(short: usize, idle: usize) {
    let idle = idle_that_fit(idle);
    let backend = Backend::named("b");
    // One malloc arena: fewer allocator steps to tell apart from a leak.
    let lbd = Lbd::start_with(&config_for(&[&backend], "", ""), |command| {
        command.env("MALLOC_ARENA_MAX", "1");
    });
    let addr = lbd.addr("api");
    let baseline = lbd.settled();
    eprintln!("soak: baseline {baseline:?}");
    let mut rss = vec![baseline.rss_kib];
    for round in 1..=3 {
        let started = Instant::now();
        let held = idle_connections(addr, idle);
        let failed = short_connections(addr, short, 4);
        let peak = lbd.stats();
        drop(held);
        let after = lbd.settled();
        eprintln!(
            "soak: round {round}: {short} short + {idle} idle connections in {:?}, {failed} failed; \
             peak {} fds, {} KiB; after {after:?}",
            started.elapsed(),
            peak.fds,
            peak.rss_kib
        );
        assert_eq!(failed, 0, "round {round}: {failed} connections failed");
        assert_eq!(after.fds, baseline.fds, "round {round}: descriptors leaked");
        assert_eq!(after.tasks, baseline.tasks, "round {round}: tasks leaked");
        rss.push(after.rss_kib);
    }
    eprintln!("soak: RSS after each round (KiB): {rss:?}");
    let growth = |round: usize| rss[round].saturating_sub(rss[round - 1]);
    let least = growth(2).min(growth(3));
    assert!(
        least < 1024,
        "RSS grew in every round, at least {least} KiB ({} bytes per connection): {rss:?}",
        least * 1024 / (short + idle) as u64
    );
}

#[test]
fn soak_small() {
    soak(1_500, 200);
}

#[test]
#[ignore = "about a minute: run by .ci/run with --ignored"]
fn soak_ci() {
    soak(20_000, 2_000);
}

#[test]
#[ignore = "long (1 million connections): run by hand, see docs/reliability.md"]
fn soak_full() {
    soak(340_000, 10_000);
}
