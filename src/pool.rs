//! Servers, the pools they form, and the snapshot the data path reads.
//!
//! A [`Server`] keeps its *health* (what checks found) apart from its *admin
//! state* (what the operator asked for); both are atomics so the connection
//! path reads them without a lock. A [`Pool`] is immutable: reloads build a
//! new one around the same `Arc<Server>`s and swap it in, so a pick never
//! locks and a server's state and counters survive reloads.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::balance::Balancer;
use crate::config::{self, Config};
use crate::dial::DialErrorKind;
use crate::frontend::Frontend;
use crate::histogram::Histogram;

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
    /// Bytes sent from clients to this server.
    pub bytes_to_server: AtomicU64,
    /// Bytes sent from this server to clients.
    pub bytes_to_client: AtomicU64,
    /// Failed dials, indexed by [`DialErrorKind::index`].
    pub connect_errors: [AtomicU64; DialErrorKind::ALL.len()],
    /// Health changes (up ⇄ down) since the server was first configured.
    pub transitions: AtomicU64,
    /// Time successful dials took.
    pub connect_duration: Histogram,
    /// Time health checks took.
    pub check_duration: Histogram,
}

/// The outcome of the latest health check of a server, for status and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRecord {
    /// `ok`, a dial error kind (`refused`, `timeout`…), or a TLS/HTTP verdict
    /// such as `tls_error`, `http_error` or `auth_error`.
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
    last_check: Mutex<Option<CheckRecord>>,
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
            last_check: Mutex::new(None),
        }
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
        Health::from_u8(self.health.swap(health as u8, Relaxed))
    }

    /// The operator's admin state.
    pub fn admin(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Relaxed))
    }

    /// Changes the admin state, returning the previous one.
    pub fn set_admin(&self, admin: AdminState) -> AdminState {
        AdminState::from_u8(self.admin.swap(admin as u8, Relaxed))
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

    /// Counts a connection for as long as the returned guard lives.
    pub fn connection(self: &Arc<Self>) -> ActiveConnection {
        self.stats.total.fetch_add(1, Relaxed);
        self.stats.active.fetch_add(1, Relaxed);
        ActiveConnection(Arc::clone(self))
    }

    /// Counts a failed dial of the given kind.
    pub fn count_connect_error(&self, kind: DialErrorKind) {
        self.stats.connect_errors[kind.index()].fetch_add(1, Relaxed);
    }

    /// How much a new connection wants this server: `Some(0)` healthy,
    /// `Some(1)` not checked yet (a fresh start or a newly added server),
    /// `None` not at all (down, draining or disabled).
    fn rank(&self) -> Option<u8> {
        if self.admin() != AdminState::Ready {
            return None;
        }
        match self.health() {
            Health::Up => Some(0),
            Health::Unknown => Some(1),
            Health::Down => None,
        }
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

/// A backend's servers and its balancer, immutable once built.
#[derive(Debug)]
pub struct Pool {
    /// The backend's settings.
    pub spec: config::Backend,
    /// The servers, in config order (a DNS name adds one per address).
    pub servers: Vec<Arc<Server>>,
    balancer: Balancer,
}

impl Pool {
    /// Builds the pool and its balancer over `servers`.
    pub fn new(spec: config::Backend, servers: Vec<Arc<Server>>) -> Pool {
        let weights: Vec<u32> = servers.iter().map(|s| s.weight()).collect();
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        let balancer = Balancer::new(spec.balance, &weights, &names);
        Pool {
            spec,
            servers,
            balancer,
        }
    }

    /// Picks a server for a client, skipping those in `tried`. Returns its index.
    pub fn pick(&self, client: IpAddr, tried: &Tried) -> Option<usize> {
        self.balancer.pick(&self.servers, client, |i| {
            if tried.contains(i) {
                None
            } else {
                self.servers[i].rank()
            }
        })
    }

    /// Whether a new connection could be given a server right now.
    pub fn has_available_server(&self) -> bool {
        self.pick(IpAddr::from([0, 0, 0, 0]), &Tried::default())
            .is_some()
    }
}

/// Everything the admin plane reads about the running configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// The config this snapshot was built from.
    pub config: Arc<Config>,
    /// One pool per backend, in config order.
    pub pools: Vec<Arc<Pool>>,
    /// Running frontends, in config order.
    pub frontends: Vec<Arc<Frontend>>,
}

impl Snapshot {
    /// The pool of the named backend.
    pub fn pool(&self, backend: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.spec.name == backend)
    }

    /// The named server of the named backend.
    pub fn server(&self, backend: &str, server: &str) -> Option<&Arc<Server>> {
        self.pool(backend)?
            .servers
            .iter()
            .find(|s| s.name == server)
    }
}
