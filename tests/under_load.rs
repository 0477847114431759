//! lbd's lifecycle under load, through the real binary: SIGTERM while
//! transfers run and long-lived connections stay open, and a hundred
//! reloads in a row. Nothing may be cut early, fail, or leak.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Backend, EchoClient, Lbd, config_for, greeting, wait_until};

#[test]
fn sigterm_under_load_completes_or_closes_every_connection_and_exits_zero() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let config = config_for(&[&a, &b], "", "")
        .replace("[admin]", "[global]\ndrain_timeout = \"3s\"\n\n[admin]");
    let mut lbd = Lbd::start(&config);
    let addr = lbd.addr("api");
    // Long-lived connections that never finish on their own…
    let long: Vec<EchoClient> = (0..10)
        .map(|_| EchoClient::start(addr, Duration::from_millis(20)).unwrap())
        .collect();
    // …and transfers that finish within the drain deadline.
    let short: Vec<_> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut greeting = [0u8; 2];
            stream.read_exact(&mut greeting).unwrap();
            std::thread::spawn(move || -> std::io::Result<usize> {
                let mut moved = 0;
                for round in 0..40u8 {
                    let chunk = [round; 4096];
                    stream.write_all(&chunk)?;
                    let mut back = [0u8; 4096];
                    stream.read_exact(&mut back)?;
                    assert_eq!(back, chunk);
                    moved += chunk.len();
                    std::thread::sleep(Duration::from_millis(25));
                }
                Ok(moved)
            })
        })
        .collect();
    wait_until(Duration::from_secs(5), "the long clients to echo", || {
        long.iter().all(|c| c.rounds() > 2)
    });
    let signalled = Instant::now();
    lbd.signal(libc::SIGTERM);
    lbd.wait_for_log("shutting down", Duration::from_secs(5));
    wait_until(Duration::from_secs(5), "new connections refused", || {
        TcpStream::connect(addr).is_err()
    });
    for transfer in short {
        let moved = transfer
            .join()
            .unwrap()
            .expect("a transfer cut by the drain");
        assert_eq!(moved, 40 * 4096);
    }
    // The long ones keep working until the deadline closes them.
    assert!(
        long.iter().all(|c| !c.ended()),
        "closed before the deadline"
    );
    wait_until(
        Duration::from_secs(10),
        "the deadline to close the rest",
        || long.iter().all(EchoClient::ended),
    );
    let closed_after = signalled.elapsed();
    eprintln!(
        "SIGTERM under load: 20 transfers done, 10 long-lived closed {closed_after:?} after the signal"
    );
    assert!(
        closed_after >= Duration::from_secs(2),
        "closed after {closed_after:?}"
    );
    for client in long {
        assert!(
            client.finish().is_err(),
            "a long-lived client was not closed"
        );
    }
    assert!(lbd.wait_exit(Duration::from_secs(10)).success());
    lbd.wait_for_log("shutdown complete", Duration::from_secs(1));
}

#[test]
fn a_hundred_reloads_under_load_drop_nothing_and_leak_nothing() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let c = Backend::named("c");
    // Two configs to alternate between: a third server comes and goes, a
    // weight and the connection limit change.
    let two = config_for(&[&a, &b], "", "max_connections = 1000");
    let three = config_for(&[&a, &b, &c], "", "max_connections = 2000").replace(
        &format!("address = \"{}\" }}", b.addr),
        &format!("address = \"{}\", weight = 3 }}", b.addr),
    );
    let lbd = Lbd::start(&two);
    let addr = lbd.addr("api");
    let baseline = lbd.settled();

    // Long-lived connections, echoing all along, and a stream of short ones.
    let long: Vec<EchoClient> = (0..20)
        .map(|_| EchoClient::start(addr, Duration::from_millis(10)).unwrap())
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let short = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match greeting(addr) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    for i in 0..100 {
        lbd.rewrite_config(if i % 2 == 0 { &three } else { &two });
        let (code, body) = lbd.post("/api/v1/reload");
        assert_eq!(code, 200, "reload {i}: {body}");
        assert!(
            long.iter().all(|c| !c.ended()),
            "reload {i} cut a long-lived connection"
        );
        if i < 2 {
            let servers = lbd.server_names("pool");
            assert_eq!(servers.contains(&"c".to_owned()), i == 0, "{servers:?}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = short.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} short connections failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    let rounds: usize = long.iter().map(EchoClient::rounds).sum();
    for client in long {
        client
            .finish()
            .expect("a long-lived connection broke across the reloads");
    }
    let after = lbd.settled();
    eprintln!(
        "100 reloads: {ok} short connections, {rounds} echo rounds on 20 long ones; before {baseline:?}, after {after:?}"
    );
    assert!(ok >= 20, "only {ok} short connections during the reloads");
    assert_eq!(after.fds, baseline.fds, "descriptors leaked across reloads");
    assert_eq!(after.tasks, baseline.tasks, "tasks leaked across reloads");
    assert!(
        after.rss_kib < baseline.rss_kib + 8 * 1024,
        "RSS grew from {} to {} KiB",
        baseline.rss_kib,
        after.rss_kib
    );
}
