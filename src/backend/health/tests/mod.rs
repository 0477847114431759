//! The health tasks driven by a scripted check on a paused clock: when
//! checks run, when servers change state, what passive reports and admin
//! changes do. The checks themselves are tested against real sockets in
//! their own modules and in tests/health.rs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::backend::pool::{AdminState, Health};
use crate::config::Config;
use crate::net::dial::{DialError, DialErrorKind};

const MS: Duration = Duration::from_millis(1);

/// A check whose answer the test sets, like a server it can kill and revive.
#[derive(Clone)]
struct Fake(Arc<Mutex<FakeState>>);

struct FakeState {
    answer: Answer,
    takes: Duration,
    calls: Vec<Instant>,
}

#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Ok,
    Auth,
    Refused,
    /// The checker itself cannot run (its TLS files went away).
    Broken,
    /// lbd is out of file descriptors: the dial fails on this side.
    OutOfFds,
}

/// A failed dial of `kind` to a test address, the server's doing.
fn dialed(kind: DialErrorKind, elapsed: Duration) -> DialError {
    DialError {
        kind,
        addr: "127.0.0.1:1".parse().unwrap(),
        elapsed,
        detail: String::new(),
        os_error: None,
        local: false,
    }
}

impl Fake {
    fn new(answer: Answer) -> Fake {
        Fake(Arc::new(Mutex::new(FakeState {
            answer,
            takes: MS,
            calls: Vec::new(),
        })))
    }

    /// A check that takes `takes` to answer.
    fn slow(answer: Answer, takes: Duration) -> Fake {
        let fake = Fake::new(answer);
        fake.0.lock().unwrap().takes = takes;
        fake
    }

    fn set(&self, answer: Answer) {
        self.0.lock().unwrap().answer = answer;
    }

    fn calls(&self) -> Vec<Instant> {
        self.0.lock().unwrap().calls.clone()
    }
}

impl Check for Fake {
    fn kind(&self) -> &'static str {
        "tcp"
    }

    async fn run(&mut self) -> Result<Alive, CheckError> {
        let (answer, takes) = {
            let mut state = self.0.lock().unwrap();
            state.calls.push(Instant::now());
            (state.answer, state.takes)
        };
        tokio::time::sleep(takes).await;
        match answer {
            Answer::Ok => Ok(Alive::Ok("connected".into())),
            Answer::Auth => Ok(Alive::AuthError("GET /readyz: 401 Unauthorized".into())),
            // Through `From`, as a check's `?` converts a failed dial.
            Answer::Refused => Err(CheckError::from(DialError {
                detail: "Connection refused (os error 111)".into(),
                ..dialed(DialErrorKind::Refused, takes)
            })),
            Answer::OutOfFds => Err(CheckError::from(DialError {
                detail: "Too many open files (os error 24)".into(),
                local: true,
                ..dialed(DialErrorKind::Other, takes)
            })),
            Answer::Broken => Err(CheckError::Setup(
                "cannot use ca_file \"/etc/kubernetes/pki/ca.crt\": No such file or directory"
                    .into(),
            )),
        }
    }
}

/// A pool of `n` servers with these health settings, in a snapshot.
fn snapshot(n: usize, health: &str) -> Topology {
    let servers: String = (0..n)
        .map(|i| {
            format!(
                "{{ name = \"s{i}\", address = \"127.0.0.1:{}\" }},",
                10_000 + i
            )
        })
        .collect();
    let text = format!(
        "[[frontend]]\nname = \"f\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"b\"\n\
         [[backend]]\nname = \"b\"\nservers = [{servers}]\n[backend.health]\n{health}\n"
    );
    let config = Config::parse(Path::new("test.toml"), &text).unwrap();
    let spec = config.backends[0].clone();
    let servers = (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16));
            Arc::new(Server::new("b", &format!("s{i}"), addr, 1))
        })
        .collect();
    Topology {
        pools: vec![Arc::new(Pool::new(spec, servers))],
    }
}

/// Starts a task with a fake check for server `index` of the snapshot.
fn start(checks: &HealthChecks, snapshot: &Topology, index: usize, fake: &Fake) -> Arc<Server> {
    checks.set_topology(snapshot);
    let pool = &snapshot.pools[0];
    let server = Arc::clone(&pool.servers[index]);
    let first_round = FirstRoundGuard::open(&checks.shared);
    let (handle, task) = checks.prepare(Arc::clone(&server), &pool.spec.health, fake.clone());
    checks.shared.tracker.spawn(task.run());
    checks
        .shared
        .tasks
        .lock()
        .unwrap()
        .insert(key_of(&server), handle);
    drop(first_round);
    server
}

/// Fresh health tasks checking server 0 of `snapshot` with a fake that
/// gives `answer`.
fn checking(snapshot: &Topology, answer: Answer) -> (HealthChecks, Fake, Arc<Server>) {
    let checks = HealthChecks::new();
    let fake = Fake::new(answer);
    let server = start(&checks, snapshot, 0, &fake);
    (checks, fake, server)
}

/// As [`checking`] with a passing fake, once the server is up.
async fn checking_up(snapshot: &Topology) -> (HealthChecks, Fake, Arc<Server>) {
    let (checks, fake, server) = checking(snapshot, Answer::Ok);
    wait_for(&server, Health::Up, Duration::from_secs(1)).await;
    (checks, fake, server)
}

/// Lets virtual time run until `server` has `health`; returns when.
async fn wait_for(server: &Server, health: Health, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    while server.health() != health {
        assert!(
            Instant::now() < deadline,
            "{} still {:?} after {within:?}, expected {health:?}",
            server.name,
            server.health()
        );
        tokio::time::sleep(MS).await;
    }
    Instant::now()
}

fn between(d: Duration, low_ms: u64, high_ms: u64) -> bool {
    d >= Duration::from_millis(low_ms) && d <= Duration::from_millis(high_ms)
}

const DEFAULTS: &str = "interval = \"2s\"\nfast_interval = \"500ms\"\nrise = 2\nfall = 3";

#[tokio::test(start_paused = true)]
async fn the_first_result_decides_at_once_and_ends_the_first_round() {
    let snapshot = snapshot(1, DEFAULTS);
    let started = Instant::now();
    let (checks, _, server) = checking(&snapshot, Answer::Refused);
    let down_at = wait_for(&server, Health::Down, Duration::from_secs(1)).await;
    // Within the first spread (a quarter of fast_interval) plus the check.
    assert!(
        between(down_at - started, 0, 130),
        "{:?}",
        down_at - started
    );
    tokio::time::timeout(Duration::from_secs(1), checks.first_round())
        .await
        .expect("the first round is over");
    let record = server.last_check().unwrap();
    assert_eq!((record.result.as_str(), record.check), ("refused", "tcp"));
    assert_eq!(
        server.stats.transitions.load(Relaxed),
        0,
        "a first verdict is no transition"
    );
    let refused = crate::backend::pool::CHECK_RESULTS
        .iter()
        .position(|&r| r == "refused")
        .unwrap();
    assert_eq!(server.stats.check_results[refused].load(Relaxed), 1);
    checks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_server_falls_after_fall_checks_at_the_fast_interval() {
    let snapshot = snapshot(1, DEFAULTS);
    let (checks, fake, server) = checking_up(&snapshot).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    // Steady: one check per interval, give or take 10%.
    let calls = fake.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    for gap in calls.windows(2).map(|w| w[1] - w[0]) {
        assert!(between(gap, 1800, 2200), "{gap:?}");
    }

    let killed = Instant::now();
    fake.set(Answer::Refused);
    let down_at = wait_for(&server, Health::Down, Duration::from_secs(10)).await;
    let calls = fake.calls();
    let failing: Vec<Instant> = calls.into_iter().filter(|&t| t >= killed).collect();
    assert_eq!(failing.len(), 3, "fall = 3 failed checks");
    for gap in failing.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            between(gap, 450, 560),
            "fast interval while falling: {gap:?}"
        );
    }
    // Within fall × interval + one interval, as the issue asks; in fact
    // within one interval plus (fall - 1) fast intervals.
    assert!(
        between(down_at - killed, 0, 2200 + 2 * 560),
        "{:?}",
        down_at - killed
    );
    assert_eq!(server.stats.transitions.load(Relaxed), 1);
    checks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_revived_server_rises_after_rise_checks() {
    let snapshot = snapshot(1, DEFAULTS);
    let (checks, fake, server) = checking(&snapshot, Answer::Refused);
    wait_for(&server, Health::Down, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let revived = Instant::now();
    fake.set(Answer::Ok);
    let up_at = wait_for(&server, Health::Up, Duration::from_secs(10)).await;
    let passing: Vec<Instant> = fake.calls().into_iter().filter(|&t| t >= revived).collect();
    assert_eq!(passing.len(), 2, "rise = 2 passed checks");
    assert!(between(passing[1] - passing[0], 450, 560));
    assert!(
        between(up_at - revived, 0, 2200 + 560),
        "{:?}",
        up_at - revived
    );
    checks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_passive_failure_counts_at_once_and_checks_right_away() {
    let snapshot = snapshot(2, DEFAULTS);
    snapshot.pools[0].servers[1].set_health(Health::Up);
    let (checks, fake, server) = checking_up(&snapshot).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let killed = Instant::now();
    fake.set(Answer::Refused);
    for _ in 0..50 {
        server.report_dial_failure(DialErrorKind::Refused);
    }
    tokio::time::sleep(MS).await;
    let calls = fake.calls();
    assert!(
        calls.last().is_some_and(|&t| t >= killed),
        "a passive failure pulls the next check forward"
    );
    let record = server.last_check().unwrap();
    assert_eq!(record.result, "refused");
    let down_at = wait_for(&server, Health::Down, Duration::from_secs(5)).await;
    // A burst of 50 counts once; the immediate check and one more at the
    // fast interval make three.
    assert!(
        between(down_at - killed, 450, 600),
        "{:?}",
        down_at - killed
    );
    checks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn passive_evidence_alone_never_ejects_the_last_server() {
    let one_strike = "fall = 1\nrise = 2";
    // Alone in its pool: the passive report is held back, the active check decides.
    let alone = snapshot(1, one_strike);
    let (checks, _, server) = checking_up(&alone).await;
    server.report_dial_failure(DialErrorKind::Timeout);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.health(), Health::Up);
    assert_eq!(server.last_check().unwrap().check, "tcp");
    checks.shutdown().await;

    // With a healthy peer, one passive strike is enough.
    let pair = snapshot(2, one_strike);
    pair.pools[0].servers[1].set_health(Health::Up);
    let (checks, _, server) = checking_up(&pair).await;
    server.report_dial_failure(DialErrorKind::Timeout);
    tokio::time::sleep(MS).await;
    assert_eq!(server.health(), Health::Down);
    checks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_disabled_server_is_not_checked_until_enabled() {
    let snapshot = snapshot(1, DEFAULTS);
    let (checks, fake, server) = checking_up(&snapshot).await;

    server.set_admin(AdminState::Disabled);
    assert!(checks.check_now(&server));
    wait_for(&server, Health::Unknown, Duration::from_secs(1)).await;
    let before = fake.calls().len();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(fake.calls().len(), before, "no check while disabled");

    server.set_admin(AdminState::Ready);
    let enabled = Instant::now();
    checks.check_now(&server);
    let up_at = wait_for(&server, Health::Up, Duration::from_secs(1)).await;
    assert!(
        between(up_at - enabled, 0, 5),
        "checked at once: {:?}",
        up_at - enabled
    );
    checks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_auth_error_counts_as_alive() {
    let snapshot = snapshot(1, DEFAULTS);
    let (checks, _, server) = checking(&snapshot, Answer::Auth);
    wait_for(&server, Health::Up, Duration::from_secs(1)).await;
    assert_eq!(server.last_check().unwrap().result, "auth_error");
    checks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn close_on_down_signals_the_open_connections() {
    let snapshot = snapshot(1, "fall = 1\nclose_on_down = \"10s\"");
    let (checks, fake, server) = checking_up(&snapshot).await;
    let open = server.down_signal();
    fake.set(Answer::Refused);
    wait_for(&server, Health::Down, Duration::from_secs(5)).await;
    assert!(
        open.is_cancelled(),
        "connections open before the fall are told"
    );
    assert!(
        !server.down_signal().is_cancelled(),
        "later ones start clean"
    );
    checks.shutdown().await;

    // Without the option, nothing is signalled.
    let snapshot = self::snapshot(1, "fall = 1");
    let (checks, fake, server) = checking_up(&snapshot).await;
    let open = server.down_signal();
    fake.set(Answer::Refused);
    wait_for(&server, Health::Down, Duration::from_secs(5)).await;
    assert!(!open.is_cancelled());
    checks.shutdown().await;
}

mod checker;
mod sync;
