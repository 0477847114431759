//! When the checker itself is the problem: a check that cannot run (its
//! TLS files went away) and passive failures racing each other must not
//! take servers down that may be fine.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_checker_that_cannot_run_keeps_the_verdict_and_records_check_error() {
    let snapshot = snapshot(1, "fall = 1\ninterval = \"2s\"\nfast_interval = \"500ms\"");
    let (checks, fake, server) = checking_up(&snapshot).await;

    fake.set(Answer::Broken);
    let broken = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(server.health(), Health::Up, "not the server's fault");
    assert_eq!(server.stats.transitions.load(Relaxed), 0);
    let record = server.last_check().unwrap();
    assert_eq!(
        (record.result.as_str(), record.check),
        ("check_error", "tcp")
    );
    assert!(record.detail.contains("ca_file"), "{}", record.detail);
    let check_error = crate::backend::pool::CHECK_RESULTS
        .iter()
        .position(|&r| r == "check_error")
        .unwrap();
    let counted = server.stats.check_results[check_error].load(Relaxed);
    let tried: Vec<Instant> = fake.calls().into_iter().filter(|&t| t >= broken).collect();
    assert_eq!(counted, tried.len() as u64);
    // At the steady interval, not the fast one: nothing is changing.
    assert!((4..=6).contains(&tried.len()), "{tried:?}");

    // It works again: judged as before.
    fake.set(Answer::Refused);
    wait_for(&server, Health::Down, Duration::from_secs(3)).await;
    checks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn running_out_of_file_descriptors_marks_no_server_down() {
    let snapshot = snapshot(1, "fall = 1\ninterval = \"2s\"");
    let (checks, fake, server) = checking_up(&snapshot).await;

    fake.set(Answer::OutOfFds);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        server.health(),
        Health::Up,
        "lbd's shortage, not the server's"
    );
    assert_eq!(server.stats.transitions.load(Relaxed), 0);
    let record = server.last_check().unwrap();
    assert_eq!(record.result, "check_error");
    assert!(
        record.detail.contains("Too many open files"),
        "{}",
        record.detail
    );
    checks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_checker_that_cannot_run_from_the_start_leaves_the_server_unknown_but_ends_the_first_round()
 {
    let snapshot = snapshot(1, DEFAULTS);
    let (checks, _, server) = checking(&snapshot, Answer::Broken);
    tokio::time::timeout(Duration::from_secs(1), checks.first_round())
        .await
        .expect("READY is not held back by a broken checker");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(server.health(), Health::Unknown);
    assert_eq!(server.last_check().unwrap().result, "check_error");
    checks.shutdown().await;
}

#[tokio::test]
async fn unusable_tls_material_is_a_check_error_and_no_file_is_read() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Contents validation would have refused, held by a spec built in code;
    // the path does not exist: a check must not go and read it.
    let spec = config::Health {
        check: config::CheckKind::Tls,
        ca_file: Some(config::FileContents {
            path: "/nonexistent/ca.crt".into(),
            bytes: b"not PEM\n".as_slice().into(),
        }),
        ..config::Health::default()
    };
    let mut check = ActiveCheck::new(&CheckSetup::new(&spec), closed, "127.0.0.1");
    for _ in 0..2 {
        match check.run().await {
            Err(e @ CheckError::Setup(_)) => {
                assert_eq!(e.result(), "check_error");
                assert!(e.detail().contains("cannot use ca_file"), "{e}");
                assert!(e.detail().contains("no PEM certificate"), "{e}");
            }
            other => panic!("expected a check_error, got {other:?}"),
        }
    }
}

#[test]
fn passive_failures_at_once_never_take_the_last_servers_down_together() {
    const SERVERS: usize = 4;
    let snapshot = snapshot(SERVERS, DEFAULTS);
    let checks = HealthChecks::new();
    checks.set_topology(&snapshot);
    let servers = &snapshot.pools[0].servers;
    for round in 0..300 {
        for server in servers {
            server.set_health(Health::Up);
        }
        let start = std::sync::Barrier::new(SERVERS);
        std::thread::scope(|scope| {
            for server in servers {
                let (shared, start) = (&checks.shared, &start);
                scope.spawn(move || {
                    start.wait();
                    shared.passive_failure(server, true, || {
                        // The machine's and the log's work before the fall lands.
                        std::thread::yield_now();
                        server.set_health(Health::Down);
                    });
                });
            }
        });
        let up = servers.iter().filter(|s| s.health() == Health::Up).count();
        assert_eq!(up, 1, "round {round}: {up} servers left up");
    }
}
