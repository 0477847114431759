//! Servers, the pools they form, and the snapshot the data path reads.
//!
//! A [`Server`] keeps its *health* (what checks found) apart from its *admin
//! state* (what the operator asked for); both are atomics so the connection
//! path reads them without a lock. A [`Pool`] is immutable: reloads build a
//! new one around the same `Arc<Server>`s and swap it in, so a pick never
//! locks and a server's state and counters survive reloads.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::backend::balance::{Balancer, Load};
use crate::backend::connections::{CloseReason, Connections};
use crate::config::{self, OnNoServer};
use crate::net::dial::DialErrorKind;
use crate::util::counter::ShardedCounter;
use crate::util::histogram::Histogram;

/// What the health checks found out about a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Not checked yet.
    Unknown = 0,
    /// Passing its checks.
    Up = 1,
    /// Failing its checks.
    Down = 2,
}

impl Health {
    /// Every state, in the order of their numbers.
    pub const ALL: [Health; 3] = [Health::Unknown, Health::Up, Health::Down];

    /// The name used in status JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }

    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }
}

/// What the operator asked of a server, independent of its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminState {
    /// Takes new connections when healthy.
    Ready = 0,
    /// No new connections; existing ones go on (HAProxy's drain).
    Drain = 1,
    /// Maintenance: no traffic and no health checks.
    Disabled = 2,
}

impl AdminState {
    /// The name used in status JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Disabled => "disabled",
        }
    }

    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Disabled,
            _ => AdminState::Ready,
        }
    }
}

/// Counters of one server, updated on the connection path.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections open right now.
    pub active: AtomicU64,
    /// Connections established since the server was first configured.
    pub total: AtomicU64,
    /// Bytes sent from clients to this server (added per chunk by every
    /// thread: sharded).
    pub bytes_to_server: ShardedCounter,
    /// Bytes sent from this server to clients.
    pub bytes_to_client: ShardedCounter,
    /// Failed dials, indexed by [`DialErrorKind::index`].
    pub connect_errors: [AtomicU64; DialErrorKind::ALL.len()],
    /// Health changes between up and down since the server was first
    /// configured (a first verdict out of `unknown` is not counted).
    pub transitions: AtomicU64,
    /// Time successful dials took.
    pub connect_duration: Histogram,
    /// Time health checks took.
    pub check_duration: Histogram,
    /// Active health checks by result, indexed like [`CHECK_RESULTS`].
    pub check_results: [AtomicU64; CHECK_RESULTS.len()],
    /// Connections lbd closed itself, indexed by [`CloseReason::index`].
    pub closed: [AtomicU64; CloseReason::ALL.len()],
}

/// Every result an active check can record in `last_check.result`: `ok`,
/// `auth_error` (alive, but 401/403), a dial error kind, `tls_error`,
/// `http_error`, or `check_error` (the checker could not run the check, so
/// the server was not judged). The order of [`ServerStats::check_results`].
pub const CHECK_RESULTS: [&str; 11] = [
    "ok",
    "auth_error",
    "refused",
    "timeout",
    "unreachable",
    "reset",
    "dns_error",
    "other",
    "tls_error",
    "http_error",
    "check_error",
];

/// The outcome of the latest health check of a server, for status and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRecord {
    /// `ok`, a dial error kind (`refused`, `timeout`…), a TLS/HTTP verdict
    /// such as `tls_error`, `http_error` or `auth_error`, or `check_error`
    /// (the checker could not run; the server was not judged).
    pub result: String,
    /// The kind of check that ran (`tcp`, `tls`, `https`, or `passive`).
    pub check: &'static str,
    /// How long the check took.
    pub elapsed: Duration,
    /// When it finished.
    pub at: SystemTime,
    /// Human detail: the OS error, the HTTP status, the TLS alert.
    pub detail: String,
}

/// One server address of a backend, shared by every snapshot that lists it.
#[derive(Debug)]
pub struct Server {
    /// The backend this server belongs to.
    pub backend: String,
    /// Unique within the backend.
    pub name: String,
    /// Where connections go.
    pub addr: SocketAddr,
    weight: AtomicU32,
    health: AtomicU8,
    admin: AtomicU8,
    /// Connection and byte counters.
    pub stats: ServerStats,
    /// Its established connections, each closable alone (rebalance).
    pub connections: Connections,
    last_check: Mutex<Option<CheckRecord>>,
    passive: PassiveReports,
    /// Cancelled when the server is marked down with `close_on_down` set;
    /// replaced by a fresh token at once, so later connections start clean.
    down_signal: ArcSwap<CancellationToken>,
    /// When the server's health task last turned ([`monotonic_millis`]):
    /// the watchdog's evidence that health checking is alive.
    health_beat: AtomicU64,
    /// When its health or admin state last changed (or it was created),
    /// in milliseconds since the Unix epoch: the status page's "since".
    state_changed: AtomicU64,
}

/// Dial failures met by client traffic, waiting for the health checker to
/// weigh them (passive health). Written by the data path with two atomic
/// stores and a wake-up, read by the server's health task.
#[derive(Debug, Default)]
struct PassiveReports {
    failures: AtomicU32,
    last_kind: AtomicU8,
    wake: Notify,
}

impl Server {
    /// A server that has not been checked yet and takes traffic.
    pub fn new(backend: &str, name: &str, addr: SocketAddr, weight: u32) -> Server {
        Server {
            backend: backend.to_owned(),
            name: name.to_owned(),
            addr,
            weight: AtomicU32::new(weight),
            health: AtomicU8::new(Health::Unknown as u8),
            admin: AtomicU8::new(AdminState::Ready as u8),
            stats: ServerStats::default(),
            connections: Connections::default(),
            last_check: Mutex::new(None),
            passive: PassiveReports::default(),
            down_signal: ArcSwap::from_pointee(CancellationToken::new()),
            health_beat: AtomicU64::new(monotonic_millis()),
            state_changed: AtomicU64::new(unix_millis(SystemTime::now())),
        }
    }

    /// Passive health: reports a failed dial on client traffic to this
    /// server's health task, which counts it against the server at once.
    pub fn report_dial_failure(&self, kind: DialErrorKind) {
        self.passive.last_kind.store(kind as u8, Relaxed);
        self.passive.failures.fetch_add(1, Relaxed);
        self.passive.wake.notify_one();
    }

    /// Waits until client traffic reports a failed dial (for the health task).
    pub async fn dial_failure_reported(&self) {
        self.passive.wake.notified().await;
    }

    /// Takes the failed dials reported since the last call: how many, and
    /// the kind of the latest.
    pub fn take_dial_failures(&self) -> Option<(u32, DialErrorKind)> {
        let failures = self.passive.failures.swap(0, Relaxed);
        let kind = DialErrorKind::ALL
            .get(usize::from(self.passive.last_kind.load(Relaxed)))
            .copied()
            .unwrap_or(DialErrorKind::Other);
        (failures > 0).then_some((failures, kind))
    }

    /// Stamped by the server's health task on every turn of its loop.
    pub fn health_task_beat(&self) {
        self.health_beat.store(monotonic_millis(), Relaxed);
    }

    /// How long since the health task last turned (or the server was created).
    pub fn health_task_silence(&self) -> Duration {
        let last = self.health_beat.load(Relaxed);
        Duration::from_millis(monotonic_millis().saturating_sub(last))
    }

    /// The token a relay watches to close its connection when this server is
    /// marked down with `close_on_down`; one clone per connection, taken
    /// before its dial (see [`Pool::down_signal`]).
    pub fn down_signal(&self) -> CancellationToken {
        CancellationToken::clone(&self.down_signal.load())
    }

    /// Tells every connection open to this server, or being dialled to it,
    /// that it went down (each closes after its own random delay) and arms a
    /// fresh signal for connections picked later (panic mode may still send
    /// some here).
    pub fn signal_down(&self) {
        self.down_signal
            .swap(Arc::new(CancellationToken::new()))
            .cancel();
    }

    /// The latest health check's outcome, if any check ran yet.
    pub fn last_check(&self) -> Option<CheckRecord> {
        self.last_check.lock().ok()?.clone()
    }

    /// Stores a check's outcome (health checks only: never on the data path).
    pub fn record_check(&self, record: CheckRecord) {
        if let Ok(mut last) = self.last_check.lock() {
            *last = Some(record);
        }
    }

    /// The current health.
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Relaxed))
    }

    /// Records a new health, returning the previous one.
    pub fn set_health(&self, health: Health) -> Health {
        let previous = Health::from_u8(self.health.swap(health as u8, Relaxed));
        if previous != health {
            self.stamp_state_change();
        }
        previous
    }

    /// The operator's admin state.
    pub fn admin(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Relaxed))
    }

    /// Changes the admin state, returning the previous one.
    pub fn set_admin(&self, admin: AdminState) -> AdminState {
        let previous = AdminState::from_u8(self.admin.swap(admin as u8, Relaxed));
        if previous != admin {
            self.stamp_state_change();
        }
        previous
    }

    /// When its health or admin state last changed, or it was created.
    pub fn changed_at(&self) -> SystemTime {
        std::time::UNIX_EPOCH + Duration::from_millis(self.state_changed.load(Relaxed))
    }

    fn stamp_state_change(&self) {
        self.state_changed
            .store(unix_millis(SystemTime::now()), Relaxed);
    }

    /// Whether new connections may come here on health alone: ready, and up
    /// or not checked yet (panic mode aside).
    pub fn is_eligible(&self) -> bool {
        self.rank(OnNoServer::Refuse).is_some()
    }

    /// Relative share of new connections.
    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    /// Updates the weight on reload; the balancer is rebuilt by the caller.
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Relaxed);
    }

    /// Health and admin state combined for display: `up`, `down`, `unknown`,
    /// `draining` or `disabled`.
    pub fn state(&self) -> &'static str {
        match self.admin() {
            AdminState::Disabled => "disabled",
            AdminState::Drain => "draining",
            AdminState::Ready => self.health().as_str(),
        }
    }

    /// Open connections right now.
    pub fn active(&self) -> u64 {
        self.stats.active.load(Relaxed)
    }

    /// Counts a connection as active for as long as the returned guard
    /// lives. Taken before the dial, so least-connections sees a burst of
    /// new clients spread out instead of all landing on one server while
    /// their dials are in flight; [`Server::count_established`] counts it
    /// in `total` once the dial succeeds.
    pub fn connection(self: &Arc<Self>) -> ActiveConnection {
        self.stats.active.fetch_add(1, Relaxed);
        ActiveConnection(Arc::clone(self))
    }

    /// Counts a connection that reached the server.
    pub fn count_established(&self) {
        self.stats.total.fetch_add(1, Relaxed);
    }

    /// Counts a connection lbd closed itself.
    pub fn count_closed(&self, reason: CloseReason) {
        self.stats.closed[reason.index()].fetch_add(1, Relaxed);
    }

    /// Counts an active check's result (one of [`CHECK_RESULTS`]).
    pub fn count_check_result(&self, result: &str) {
        if let Some(i) = CHECK_RESULTS.iter().position(|&r| r == result) {
            self.stats.check_results[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts a failed dial of the given kind.
    pub fn count_connect_error(&self, kind: DialErrorKind) {
        self.stats.connect_errors[kind.index()].fetch_add(1, Relaxed);
    }

    /// How much a new connection wants this server: `Some(0)` healthy,
    /// `Some(1)` not checked yet (a fresh start or a newly added server),
    /// `Some(2)` down but the backend is in panic mode, `None` not at all
    /// (down, draining or disabled).
    fn rank(&self, on_no_server: OnNoServer) -> Option<u8> {
        if self.admin() != AdminState::Ready {
            return None;
        }
        match (self.health(), on_no_server) {
            (Health::Up, _) => Some(0),
            (Health::Unknown, _) => Some(1),
            (Health::Down, OnNoServer::Panic) => Some(2),
            (Health::Down, OnNoServer::Refuse) => None,
        }
    }
}

impl Load for Server {
    fn active(&self) -> u64 {
        Server::active(self)
    }

    fn weight(&self) -> u32 {
        Server::weight(self)
    }
}

/// Keeps a server's `active` count raised while a connection is open.
#[derive(Debug)]
pub struct ActiveConnection(Arc<Server>);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Relaxed);
    }
}

/// Servers already dialed for one client connection, so a retry goes elsewhere.
#[derive(Debug, Default)]
pub struct Tried {
    indices: [u32; Tried::CAPACITY],
    len: usize,
}

impl Tried {
    /// One first dial plus the largest `retries` the config accepts.
    const CAPACITY: usize = config::MAX_RETRIES as usize + 1;

    /// Whether server `index` was dialed already.
    pub fn contains(&self, index: usize) -> bool {
        self.indices[..self.len].contains(&(index as u32))
    }

    /// Records a dial of server `index`.
    pub fn insert(&mut self, index: usize) {
        if self.len < Self::CAPACITY {
            self.indices[self.len] = index as u32;
            self.len += 1;
        }
    }

    /// How many servers were dialed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no server was dialed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Why new connections cannot be served as they should, for `/readyz`
/// and the logs: which servers are in which state, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotReady(pub String);

impl NotReady {
    /// The same reason, said of `what` (`backend cp: …`).
    pub fn of(self, what: impl std::fmt::Display) -> NotReady {
        NotReady(format!("{what}: {}", self.0))
    }
}

/// A backend's servers and its balancer, immutable once built.
#[derive(Debug)]
pub struct Pool {
    /// The backend's settings.
    pub spec: config::Backend,
    /// The servers, in config order (a DNS name adds one per address).
    pub servers: Vec<Arc<Server>>,
    balancer: Balancer,
    /// Bumped whenever a server's health or admin state may have changed
    /// whether the pool can serve: the backend publishes its availability,
    /// and whoever routes to it (accept loops) subscribes.
    availability: watch::Sender<u64>,
}

impl Pool {
    /// The named server.
    pub fn server(&self, name: &str) -> Option<&Arc<Server>> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// Builds the pool and its balancer over `servers`.
    pub fn new(spec: config::Backend, servers: Vec<Arc<Server>>) -> Pool {
        let weights: Vec<u32> = servers.iter().map(|s| s.weight()).collect();
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        let balancer = Balancer::new(spec.balance, &weights, &names);
        Pool {
            spec,
            servers,
            balancer,
            availability: watch::Sender::new(0),
        }
    }

    /// Tells the subscribers to look at [`Pool::availability`] again.
    pub fn availability_changed(&self) {
        self.availability.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that wakes on every [`Pool::availability_changed`].
    pub fn watch_availability(&self) -> watch::Receiver<u64> {
        self.availability.subscribe()
    }

    /// Picks a server for a client, skipping those in `tried`. Returns its index.
    pub fn pick(&self, client: IpAddr, tried: &Tried) -> Option<usize> {
        self.balancer.pick(&self.servers, client, |i| {
            if tried.contains(i) {
                None
            } else {
                self.servers[i].rank(self.spec.on_no_server)
            }
        })
    }

    /// The `close_on_down` signal for a connection to server `index`, taken
    /// before its dial: a mark-down while the dial is in flight (a server
    /// whose `/readyz` fails while its port still accepts) cancels this very
    /// token, so the connection is closed like those already open. Had the
    /// server been marked down between the pick and this call, the token is
    /// already a fresh one: then, unless panic mode picked a down server on
    /// purpose, the returned token is cancelled.
    pub fn down_signal(&self, index: usize) -> CancellationToken {
        let server = &self.servers[index];
        let signal = server.down_signal();
        if server.health() == Health::Down && self.availability() != Availability::Panic {
            let marked_down = CancellationToken::new();
            marked_down.cancel();
            return marked_down;
        }
        signal
    }

    /// What a new connection would meet right now; cheap (a few atomic loads
    /// per server), allocation-free.
    pub fn availability(&self) -> Availability {
        let best = self
            .servers
            .iter()
            .filter_map(|s| s.rank(self.spec.on_no_server))
            .min();
        match best {
            Some(0) => Availability::Healthy,
            Some(1) => Availability::Unchecked,
            Some(_) => Availability::Panic,
            None => Availability::Unavailable,
        }
    }

    /// How many servers take new connections now (up and ready, by the
    /// same rank picks use) and how many the operator holds back.
    pub fn server_counts(&self) -> ServerCounts {
        let mut counts = ServerCounts::default();
        for server in &self.servers {
            counts.total += 1;
            if server.rank(OnNoServer::Refuse) == Some(0) {
                counts.up += 1;
            }
            match server.admin() {
                AdminState::Ready => {}
                AdminState::Drain => counts.draining += 1,
                AdminState::Disabled => counts.disabled += 1,
            }
        }
        counts
    }

    /// `Ok` when a healthy server takes new connections; otherwise why not,
    /// naming each server's state and its latest check (the first
    /// [`MAX_LISTED`], then a count), for `/readyz` and logs.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let availability = self.availability();
        let mut why = match availability {
            Availability::Healthy => return Ok(()),
            Availability::Unchecked => {
                "no server is checked up yet; connections go to unchecked servers".to_owned()
            }
            Availability::Panic => {
                "no server is up; panic mode sends connections to every ready server anyway"
                    .to_owned()
            }
            Availability::Unavailable => {
                "no server can take a connection; new connections are refused".to_owned()
            }
        };
        why.push_str(" (");
        // A DNS-named server whose name never resolved has no address, so
        // no server: say so rather than list nothing.
        let unresolved = self.spec.servers.iter().filter(|spec| {
            spec.address.ip().is_none()
                && !self
                    .servers
                    .iter()
                    .any(|s| config::is_address_of(&s.name, &spec.name))
        });
        let mut entries: Vec<String> = unresolved
            .map(|spec| {
                format!(
                    "{}: the name {} did not resolve, so it has no address",
                    spec.name, spec.address.host
                )
            })
            .collect();
        let total = entries.len() + self.servers.len();
        for server in self
            .servers
            .iter()
            .take(MAX_LISTED.saturating_sub(entries.len()))
        {
            let mut entry = format!("{} {}", server.name, server.state());
            if let Some(check) = server.last_check()
                && server.health() == Health::Down
            {
                let _ = write!(entry, ": {}", check.result);
                if !check.detail.is_empty() {
                    let _ = write!(entry, " ({})", check.detail);
                }
            }
            entries.push(entry);
        }
        entries.truncate(MAX_LISTED);
        why.push_str(&entries.join(", "));
        if total > entries.len() {
            let _ = write!(why, " and {} more", total - entries.len());
        }
        why.push(')');
        Err(NotReady(why))
    }
}

/// Servers a readiness answer names one by one; the rest are counted, so
/// `/readyz` and the log lines that quote it stay short for any pool.
pub const MAX_LISTED: usize = 10;
/// Servers counted by what they can take, for one-line summaries such as
/// systemd's status: `2/3 servers up (1 draining)`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServerCounts {
    /// Every server.
    pub total: usize,
    /// Up and ready: taking new connections.
    pub up: usize,
    /// Drained by the operator, whatever their health.
    pub draining: usize,
    /// Disabled by the operator.
    pub disabled: usize,
}

impl std::ops::AddAssign for ServerCounts {
    fn add_assign(&mut self, other: ServerCounts) {
        self.total += other.total;
        self.up += other.up;
        self.draining += other.draining;
        self.disabled += other.disabled;
    }
}

impl std::fmt::Display for ServerCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} servers up", self.up, self.total)?;
        let held = [(self.draining, "draining"), (self.disabled, "disabled")];
        let mut held = held.iter().filter(|(n, _)| *n > 0);
        if let Some((n, what)) = held.next() {
            write!(f, " ({n} {what}")?;
            for (n, what) in held {
                write!(f, ", {n} {what}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// What a pool offers a new connection, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// At least one server is up and ready.
    Healthy,
    /// None is up, but some are not checked yet and get the connections.
    Unchecked,
    /// None is up or unchecked; panic mode sends connections to down servers.
    Panic,
    /// No server can take a connection: new ones are refused.
    Unavailable,
}

impl Availability {
    /// Whether a new connection would be given a server.
    pub fn can_serve(self) -> bool {
        self != Availability::Unavailable
    }
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
fn unix_millis(time: SystemTime) -> u64 {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds on a process-wide monotonic clock (cheap to store in an atomic).
fn monotonic_millis() -> u64 {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::Config;

    fn pool(on_no_server: OnNoServer, n: usize) -> Pool {
        let text = format!(
            "[[frontend]]\nname = \"f\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"b\"\n\
             [[backend]]\nname = \"b\"\non_no_server = \"{}\"\nservers = [{{ address = \"127.0.0.1:1\" }}]\n",
            on_no_server.as_str()
        );
        let config = Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let servers = (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
                Arc::new(Server::new("b", &format!("s{i}"), addr, 1))
            })
            .collect();
        Pool::new(config.backends[0].clone(), servers)
    }

    fn pick(pool: &Pool) -> Option<usize> {
        pool.pick(IpAddr::from([10, 0, 0, 1]), &Tried::default())
    }

    #[test]
    fn a_connection_to_a_server_already_marked_down_gets_a_cancelled_down_signal() {
        let pool = pool(OnNoServer::Refuse, 2);
        pool.servers[0].set_health(Health::Up);
        pool.servers[1].set_health(Health::Up);
        let before = pool.down_signal(0);
        assert!(!before.is_cancelled());
        // Marked down after the pick, before the connection took its signal.
        pool.servers[0].set_health(Health::Down);
        pool.servers[0].signal_down();
        assert!(before.is_cancelled(), "a dial in flight is told");
        assert!(pool.down_signal(0).is_cancelled(), "a late taker is told");
        assert!(!pool.down_signal(1).is_cancelled());

        // Panic mode sends connections to down servers on purpose: kept.
        let panic = self::pool(OnNoServer::Panic, 1);
        panic.servers[0].set_health(Health::Down);
        panic.servers[0].signal_down();
        assert_eq!(panic.availability(), Availability::Panic);
        assert!(!panic.down_signal(0).is_cancelled());
    }

    #[test]
    fn availability_goes_from_healthy_to_unavailable() {
        let pool = pool(OnNoServer::Refuse, 2);
        assert_eq!(pool.availability(), Availability::Unchecked);
        assert!(pool.readiness().unwrap_err().0.contains("unchecked"));
        pool.servers[1].set_health(Health::Up);
        assert_eq!(pool.availability(), Availability::Healthy);
        assert_eq!(pool.readiness(), Ok(()));
        pool.servers[0].set_health(Health::Down);
        pool.servers[1].set_admin(AdminState::Drain);
        assert_eq!(pool.availability(), Availability::Unavailable);
        assert_eq!(pick(&pool), None);
        pool.servers[0].record_check(CheckRecord {
            result: "refused".into(),
            check: "tcp",
            elapsed: Duration::ZERO,
            at: SystemTime::now(),
            detail: "Connection refused".into(),
        });
        let why = pool.readiness().unwrap_err().0;
        assert_eq!(
            why,
            "no server can take a connection; new connections are refused \
             (s0 down: refused (Connection refused), s1 draining)"
        );
    }

    #[test]
    fn panic_mode_sends_to_down_servers_only_when_nothing_better_exists() {
        let pool = pool(OnNoServer::Panic, 2);
        pool.servers[0].set_health(Health::Down);
        pool.servers[1].set_health(Health::Up);
        for _ in 0..10 {
            assert_eq!(pick(&pool), Some(1));
        }
        pool.servers[1].set_health(Health::Down);
        assert_eq!(pool.availability(), Availability::Panic);
        assert!(pool.availability().can_serve());
        assert!(pick(&pool).is_some());
        assert!(pool.readiness().unwrap_err().0.contains("panic mode"));
        // Admin states still hold in panic mode.
        pool.servers[0].set_admin(AdminState::Disabled);
        pool.servers[1].set_admin(AdminState::Drain);
        assert_eq!(pick(&pool), None);
        assert!(!pool.servers[0].is_eligible());
    }

    #[test]
    fn server_counts_say_what_takes_traffic() {
        let pool = pool(OnNoServer::Refuse, 4);
        for server in &pool.servers {
            server.set_health(Health::Up);
        }
        assert_eq!(pool.server_counts().to_string(), "4/4 servers up");
        // Up but drained or disabled takes no new connection: not "up" here,
        // as /readyz and the balancer see it.
        pool.servers[1].set_admin(AdminState::Drain);
        pool.servers[2].set_admin(AdminState::Disabled);
        pool.servers[3].set_health(Health::Down);
        let counts = pool.server_counts();
        assert_eq!(
            counts.to_string(),
            "1/4 servers up (1 draining, 1 disabled)"
        );
        let mut both = counts;
        both += pool.server_counts();
        assert_eq!((both.total, both.up, both.draining), (8, 2, 2));
        pool.servers[2].set_admin(AdminState::Ready);
        pool.servers[3].set_health(Health::Unknown);
        assert_eq!(
            pool.server_counts().to_string(),
            "2/4 servers up (1 draining)"
        );
    }

    #[test]
    fn dial_failures_are_taken_once() {
        let server = Server::new("b", "s", SocketAddr::from(([127, 0, 0, 1], 1)), 1);
        assert_eq!(server.take_dial_failures(), None);
        server.report_dial_failure(DialErrorKind::Refused);
        server.report_dial_failure(DialErrorKind::Timeout);
        assert_eq!(
            server.take_dial_failures(),
            Some((2, DialErrorKind::Timeout))
        );
        assert_eq!(server.take_dial_failures(), None);
    }
}
