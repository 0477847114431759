//! `sync` against snapshots: tasks started, kept, replaced and stopped, the
//! first round (systemd READY) ended exactly once every first check is in,
//! and TLS files read once per backend.

use super::*;

#[tokio::test]
async fn sync_starts_keeps_and_stops_tasks_with_the_snapshot() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut first = snapshot(2, "interval = \"1s\"");
    let pool = &first.pools[0];
    let servers: Vec<Arc<Server>> = (0..2)
        .map(|i| Arc::new(Server::new("b", &format!("s{i}"), addr, 1)))
        .collect();
    first.pools = vec![Arc::new(Pool::new(pool.spec.clone(), servers.clone()))];
    let checks = HealthChecks::new();
    checks.sync(&first, &BTreeSet::new());
    assert_eq!(checks.len(), 2);
    tokio::time::timeout(Duration::from_secs(5), checks.first_round())
        .await
        .expect("first round");
    assert!(servers.iter().all(|s| s.health() == Health::Up));

    // A reload that drops s1 and keeps s0 (the same Arc).
    let mut second = snapshot(1, "interval = \"1s\"");
    second.pools = vec![Arc::new(Pool::new(
        first.pools[0].spec.clone(),
        vec![Arc::clone(&servers[0])],
    ))];
    checks.sync(&second, &BTreeSet::new());
    assert_eq!(checks.len(), 1);
    assert!(checks.check_now(&servers[0]));
    assert!(!checks.check_now(&servers[1]));
    checks.shutdown().await;
}

/// `n` servers all listening nowhere (a port that was just closed): each
/// first check is refused in microseconds, racing `sync`'s own loop.
fn closed_port_snapshot(n: usize) -> Topology {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut snapshot = snapshot(1, "interval = \"1s\"\nfast_interval = \"100ms\"");
    let spec = snapshot.pools[0].spec.clone();
    let servers = (0..n)
        .map(|i| Arc::new(Server::new("b", &format!("s{i}"), closed, 1)))
        .collect();
    snapshot.pools = vec![Arc::new(Pool::new(spec, servers))];
    snapshot
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_round_ends_even_when_checks_finish_before_sync_returns() {
    for round in 0..5 {
        let snapshot = closed_port_snapshot(300);
        let checks = HealthChecks::new();
        checks.sync(&snapshot, &BTreeSet::new());
        tokio::time::timeout(Duration::from_secs(5), checks.first_round())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the first round never ended"));
        assert!(
            snapshot.pools[0]
                .servers
                .iter()
                .all(|s| s.health() != Health::Unknown),
            "every server has its first verdict"
        );
        checks.shutdown().await;
    }
}

/// A snapshot with the servers of `old` under other health settings, as a
/// reload that changes `[backend.health]` makes.
fn respecified(old: &Topology, health: &str) -> Topology {
    let mut new = snapshot(1, health);
    let spec = new.pools[0].spec.clone();
    new.pools = vec![Arc::new(Pool::new(spec, old.pools[0].servers.clone()))];
    new
}

#[tokio::test(start_paused = true)]
async fn a_task_replaced_during_the_first_round_holds_it_open_until_its_own_check() {
    let first = snapshot(1, "fast_interval = \"100ms\"\ntimeout = \"5s\"");
    let server = Arc::clone(&first.pools[0].servers[0]);
    let checks = HealthChecks::new();
    let slow = Fake::slow(Answer::Ok, Duration::from_secs(3));
    checks.sync_with(&first, &BTreeSet::new(), |_, _| slow.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(slow.calls().len(), 1, "the first check is under way");

    // A reload changes the health settings before that check ends: the
    // task is replaced, and READY must wait for the new task's check.
    let second = respecified(
        &first,
        "fast_interval = \"100ms\"\ntimeout = \"5s\"\nrise = 3",
    );
    let replacing = Fake::slow(Answer::Ok, Duration::from_secs(3));
    checks.sync_with(&second, &BTreeSet::from(["b".to_owned()]), |_, _| {
        replacing.clone()
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(2), checks.first_round())
            .await
            .is_err(),
        "the first round ended before the replacing task's first check"
    );
    assert_eq!(server.health(), Health::Unknown);
    tokio::time::timeout(Duration::from_secs(5), checks.first_round())
        .await
        .expect("the first round ends with the replacing task's first check");
    assert_eq!(server.health(), Health::Up);
    assert_eq!(slow.calls().len(), 1, "the replaced task checks no more");
    checks.shutdown().await;
}

#[test]
fn the_tls_files_are_read_once_per_backend_not_once_per_server() {
    let https = "check = \"https\"";
    let one = snapshot(3, https);
    let two = snapshot(2, https);
    let mut factory = CheckFactory::default();
    for snapshot in [&one, &two] {
        let pool = &snapshot.pools[0];
        for server in &pool.servers {
            factory.check_for(pool, server.addr, "127.0.0.1");
        }
    }
    assert_eq!(factory.setups_built(), 2);
}
