//! The TOML config: schema, defaults and validation (DESIGN.md §3.1).
//!
//! `load`/`parse` read a file into [`raw`] structs (strict serde, unknown keys
//! rejected), then `validate` turns them into a [`Config`] with every default
//! applied, or into a [`ConfigError`] listing each problem with its line and
//! column. Validation also reads the TLS files a health check names
//! ([`TlsFiles`]), so the start, a reload and `--check-config` all refuse a
//! file the checks could not use. Nothing else in lbd sees an unvalidated value.

mod address;
mod discovery;
mod duration;
mod error;
mod http_path;
mod lint;
mod raw;
mod server_names;
mod tls_files;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use discovery::{DEFAULT_STATE_DIR, Discovery, KubeAccess, KubeCredentials, KubeconfigError};
pub use duration::{DurationError, HumanDuration, format_duration, parse_duration};
pub use error::{ConfigError, Problem};
pub use lint::{APISERVER_SHUTDOWN_WINDOW, MIN_IDLE_TIMEOUT};
pub use server_names::{dns_server_name, is_address_of};
pub use tls_files::{FileContents, TlsFileError, TlsFiles};

/// The largest `retries` a backend may ask for; also sizes the per-connection
/// record of servers already tried.
pub const MAX_RETRIES: u32 = 16;

/// Where `lbd` looks for its config when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/lbd/lbd.toml";

/// Largest config file lbd reads. Real configs are kilobytes; anything near
/// this is a wrong path (a log, a disk image, `/dev/zero`), and reading it
/// whole would only exhaust memory before saying so.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A validated lbd configuration: every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Process-wide settings.
    pub global: Global,
    /// How the process runs (`[global]` `runtime`, `threads`, `splice`):
    /// read at start only.
    pub process: Process,
    /// Where the admin API listens.
    pub admin: Admin,
    /// Listening endpoints, in file order.
    pub frontends: Vec<Frontend>,
    /// Server pools, in file order.
    pub backends: Vec<Backend>,
}

/// Process-wide settings (`[global]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// How long live connections may finish after SIGTERM.
    pub drain_timeout: Duration,
    /// How often DNS-named servers are resolved again.
    pub resolve_interval: Duration,
    /// Connections served at once over all frontends; more wait in the
    /// kernel backlog. Unset: as many as RLIMIT_NOFILE allows.
    pub max_connections: Option<usize>,
    /// Where discovery keeps the last server list it learned from the cluster.
    pub state_dir: PathBuf,
}

/// How the process runs, from `[global]`: set once at start (a reload that
/// changes them says they take effect when lbd restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    /// The shape of the async runtime.
    pub runtime: RuntimeKind,
    /// Threads to run connections on. Unset: the CPUs lbd may use.
    pub threads: Option<usize>,
    /// Whether bulk bytes may take the zero-copy splice(2) path (else the
    /// copy loop carries everything).
    pub splice: bool,
}

impl Default for Process {
    fn default() -> Self {
        Process {
            runtime: RuntimeKind::default(),
            threads: None,
            splice: true,
        }
    }
}

/// `[global] runtime`: how connections are spread over the threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeKind {
    /// One current-thread runtime per thread, an SO_REUSEPORT socket and
    /// accept loop each.
    #[default]
    PerCore,
    /// One work-stealing runtime, one accept loop per address.
    MultiThread,
}

impl RuntimeKind {
    /// Every choice.
    pub const ALL: [RuntimeKind; 2] = [RuntimeKind::PerCore, RuntimeKind::MultiThread];

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::PerCore => "per-core",
            RuntimeKind::MultiThread => "multi-thread",
        }
    }
}

/// The admin API's settings (`[admin]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// TCP address or unix socket path of the admin API.
    pub listen: AdminListen,
    /// A file holding the bearer token every request must carry. Required
    /// when `listen` is reachable from other hosts; read on each request,
    /// so replacing the file rotates the token.
    pub token_file: Option<PathBuf>,
    /// `/metrics`, `/healthz` and `/readyz` answer without the token (for
    /// Prometheus and health probes); everything else still needs it.
    pub anonymous_read_only: bool,
}

impl AdminListen {
    /// Whether only this host can connect: a loopback address or a unix socket.
    pub fn is_local(&self) -> bool {
        match self {
            AdminListen::Tcp(addr) => addr.ip().is_loopback(),
            AdminListen::Unix(_) => true,
        }
    }
}

/// Where the admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    /// `"127.0.0.1:8404"`.
    Tcp(SocketAddr),
    /// `"unix:/run/lbd/admin.sock"`.
    Unix(PathBuf),
}

/// A listening endpoint (`[[frontend]]`) that forwards to one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Frontend {
    /// Unique name, used in logs, metrics and the admin API.
    pub name: String,
    /// Addresses to listen on; port 0 picks a free port.
    pub listen: Vec<SocketAddr>,
    /// Name of the backend that receives this frontend's connections.
    pub backend: String,
    /// Connections served at once; more wait in the kernel backlog.
    pub max_connections: usize,
    /// Connections one client address (IPv6: one /64) may hold at once;
    /// more are refused with a reset. Unset: no limit.
    pub max_connections_per_source: Option<u32>,
    /// Kernel accept queue length for each listening socket.
    pub backlog: u32,
    /// A connection that carries no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// A half-closed connection whose other side stays silent this long is closed.
    pub fin_timeout: Duration,
    /// TLS passthrough routes by the ClientHello's server name, in file
    /// order; a connection no route matches goes to `backend`. Empty: no
    /// inspection at all.
    pub routes: Vec<SniRoute>,
    /// With `routes`: how long a client may take to send its first bytes.
    pub inspect_timeout: Duration,
    /// Clients come through a proxy that sends a PROXY protocol header of
    /// this version first; a connection without it is closed.
    pub accept_proxy: Option<ProxyVersion>,
    /// A file lbd keeps at `0` while this frontend can give a new connection
    /// a server and at `1` otherwise, for keepalived's `track_file`
    /// (see [`crate::daemon::ready_file`]). Unset: no file.
    pub ready_file: Option<PathBuf>,
}

/// One `routes` entry of a frontend: connections whose ClientHello names
/// `sni` go to `backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    /// An exact server name, or `*.suffix` for any name under `suffix`;
    /// lowercase (server names compare without case).
    pub sni: String,
    /// The backend that receives the matching connections.
    pub backend: String,
}

/// A PROXY protocol version (`accept_proxy`, `send_proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyVersion {
    /// The human-readable text line.
    #[default]
    V1,
    /// The binary header.
    V2,
}

impl ProxyVersion {
    /// Every version.
    pub const ALL: [ProxyVersion; 2] = [ProxyVersion::V1, ProxyVersion::V2];

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        }
    }
}

/// A pool of servers and how to pick among them (`[[backend]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// Unique name, used in logs, metrics and the admin API.
    pub name: String,
    /// How a server is picked for each new connection.
    pub balance: Balance,
    /// How long one dial to a server may take.
    pub connect_timeout: Duration,
    /// Further servers tried after a failed dial.
    pub retries: u32,
    /// What new connections meet when no server is eligible.
    pub on_no_server: OnNoServer,
    /// Sends the servers a PROXY protocol header of this version before
    /// the client's bytes (health checks stay plain).
    pub send_proxy: Option<ProxyVersion>,
    /// When a server comes up or joins, close the connections other servers
    /// hold above their weighted share, spread over this window. Unset: off.
    pub rebalance: Option<Duration>,
    /// The servers, in file order.
    pub servers: Vec<ServerSpec>,
    /// Active health checking.
    pub health: Health,
    /// Servers learned from the cluster (`[backend.discovery]`), if any.
    pub discovery: Option<Discovery>,
}

/// What a backend does with new connections when no server is up (or
/// unchecked) and ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnNoServer {
    /// Refuse them at once: the frontend's listeners are paused so a client's
    /// SYN gets RST ("connection refused"), and already-queued ones are reset.
    #[default]
    Refuse,
    /// Panic mode: ignore health and try every ready server anyway, because
    /// the checks themselves may be what is broken.
    Panic,
}

impl OnNoServer {
    /// Every choice.
    pub const ALL: [OnNoServer; 2] = [OnNoServer::Refuse, OnNoServer::Panic];

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            OnNoServer::Refuse => "refuse",
            OnNoServer::Panic => "panic",
        }
    }
}

/// One server of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Unique within its backend; defaults to the address.
    pub name: String,
    /// Where to connect: an IP or a DNS name, and a port.
    pub address: ServerAddress,
    /// Relative share of new connections.
    pub weight: u32,
}

/// A server's address as configured: a literal IP or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddress {
    /// IP literal (without brackets) or DNS name.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl ServerAddress {
    /// The address as a socket address when the host is an IP literal.
    pub fn ip(&self) -> Option<SocketAddr> {
        self.host
            .parse()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Balancing algorithm of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Smooth weighted round-robin.
    #[default]
    RoundRobin,
    /// Fewest active connections per weight.
    LeastConnections,
    /// Power of two random choices, by active connections per weight.
    RandomTwo,
    /// Consistent hash of the client's IP address.
    SourceHash,
    /// The first available server in file order.
    First,
}

impl Balance {
    /// Every algorithm, in the order the docs list them.
    pub const ALL: [Balance; 5] = [
        Balance::RoundRobin,
        Balance::LeastConnections,
        Balance::RandomTwo,
        Balance::SourceHash,
        Balance::First,
    ];

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConnections => "least-connections",
            Balance::RandomTwo => "random-two",
            Balance::SourceHash => "source-hash",
            Balance::First => "first",
        }
    }
}

/// What an active health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// A TCP connect.
    #[default]
    Tcp,
    /// A TCP connect and a full TLS handshake.
    Tls,
    /// A TLS handshake and `GET path` expecting 2xx.
    Https,
}

impl CheckKind {
    /// Every kind of check.
    pub const ALL: [CheckKind; 3] = [CheckKind::Tcp, CheckKind::Tls, CheckKind::Https];

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Tls => "tls",
            CheckKind::Https => "https",
        }
    }
}

/// Active health check settings of a backend (`[backend.health]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// The kind of check.
    pub check: CheckKind,
    /// Time between checks of one server.
    pub interval: Duration,
    /// Time between checks while a server is changing state (a failure seen
    /// while up, a success while down, or not checked yet); at most `interval`.
    pub fast_interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Consecutive successes that bring a server up.
    pub rise: u32,
    /// Consecutive failures that take a server down.
    pub fall: u32,
    /// Checks this port instead of the server's.
    pub port: Option<u16>,
    /// HTTP path for `https` checks.
    pub path: String,
    /// TLS server name; defaults to the server's host.
    pub sni: Option<String>,
    /// CA bundle that verifies the server's chain; without it the chain is
    /// not verified. Its contents are part of the config (see [`FileContents`]).
    pub ca_file: Option<FileContents>,
    /// Client certificate for `https` checks, with its contents.
    pub cert_file: Option<FileContents>,
    /// Key of the client certificate, with its contents.
    pub key_file: Option<FileContents>,
    /// Passive health: a failed dial on client traffic counts as a failed
    /// check at once (HAProxy's `observe layer4`).
    pub passive: bool,
    /// When set, a server marked down has its open connections closed, spread
    /// at random over this window; when unset they are left alone.
    pub close_on_down: Option<Duration>,
}

/// The default `fast_interval`: quick enough to confirm a failure within a
/// second or two, never slower than `interval` itself.
pub const DEFAULT_FAST_INTERVAL: Duration = Duration::from_millis(500);

impl Default for Health {
    fn default() -> Self {
        Health {
            check: CheckKind::Tcp,
            interval: Duration::from_secs(2),
            fast_interval: DEFAULT_FAST_INTERVAL,
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            port: None,
            path: "/readyz".into(),
            sni: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            passive: true,
            close_on_down: None,
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::io::Read;
        let read_error = |reason: String| ConfigError::Read {
            path: path.to_owned(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| read_error(e.to_string()))?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| read_error(e.to_string()))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(read_error(format!(
                "the file is larger than {} MiB; is this the right file?",
                MAX_FILE_BYTES >> 20
            )));
        }
        Config::parse_bytes(path, &bytes)
    }

    /// Validates file contents; `path` only labels the errors.
    pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Config, ConfigError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Config::parse(path, text),
            Err(e) => {
                let hint = if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
                    " (it looks like UTF-16: save it as UTF-8)"
                } else {
                    ": save it as UTF-8"
                };
                Err(ConfigError::Invalid {
                    problems: vec![Problem::at(
                        path,
                        &String::from_utf8_lossy(&bytes[..e.valid_up_to()]),
                        Some(e.valid_up_to()..e.valid_up_to()),
                        format!("the file is not valid UTF-8{hint}"),
                    )],
                })
            }
        }
    }

    /// Validates config text; `path` only labels the errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            problems: vec![syntax_problem(path, text, &e)],
        })?;
        validate::validate(path, text, raw)
    }

    /// Reads and validates the file at `path`, and lints the result.
    pub fn load_with_warnings(path: &Path) -> Result<Checked, ConfigError> {
        let bytes = std::fs::read(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let config = Config::parse_bytes(path, &bytes)?;
        // parse_bytes succeeded, so the file is UTF-8 and valid TOML.
        let text = String::from_utf8_lossy(&bytes);
        Ok(Checked {
            warnings: Config::lint(path, &text, &config),
            config,
        })
    }

    /// Validates config text and lints the result; `path` only labels the messages.
    pub fn parse_with_warnings(path: &Path, text: &str) -> Result<Checked, ConfigError> {
        let config = Config::parse(path, text)?;
        Ok(Checked {
            warnings: Config::lint(path, text, &config),
            config,
        })
    }

    /// The timing lint's warnings about a config parsed from `text`.
    fn lint(path: &Path, text: &str, config: &Config) -> Vec<Problem> {
        match toml::from_str::<raw::RawConfig>(text) {
            Ok(raw) => lint::lint(path, text, &raw, config),
            Err(_) => Vec::new(),
        }
    }

    /// The backend a frontend forwards to.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// A one-line description, printed by `--check-config` on success.
    pub fn summary(&self) -> String {
        let listeners: usize = self.frontends.iter().map(|f| f.listen.len()).sum();
        let servers: usize = self.backends.iter().map(|b| b.servers.len()).sum();
        format!(
            "{} frontend{} ({} listener{}), {} backend{}, {} server{}",
            self.frontends.len(),
            plural(self.frontends.len()),
            listeners,
            plural(listeners),
            self.backends.len(),
            plural(self.backends.len()),
            servers,
            plural(servers),
        )
    }
}

/// The parser's error as a located problem. The parser gives no place for a
/// key path nested past its limit, so that one is found here.
fn syntax_problem(path: &Path, text: &str, error: &toml::de::Error) -> Problem {
    let message = error.message().trim_end().to_owned();
    match error.span() {
        Some(span) => Problem::at(path, text, Some(span), message),
        None if message == "recursion limit" => Problem::at(
            path,
            text,
            deepest_key(text),
            "keys or tables nest too deeply: use fewer `.`-separated levels".into(),
        ),
        None => Problem::at(path, text, None, message),
    }
}

/// The start of the first key (`a.b.c = …` or `[a.b.c]`) with the most dots,
/// a best guess at what tripped the parser's recursion limit.
fn deepest_key(text: &str) -> Option<std::ops::Range<usize>> {
    let mut best: Option<(usize, usize)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let key = trimmed.split(['=', ']', '#']).next().unwrap_or("");
        let dots = key.matches('.').count();
        if dots > 0 && best.is_none_or(|(most, _)| dots > most) {
            best = Some((dots, offset + line.len() - trimmed.len()));
        }
        offset += line.len();
    }
    best.map(|(_, at)| at..at)
}

/// A valid config and the timing lint's warnings about it.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The config, ready to serve.
    pub config: Config,
    /// Valid but risky settings, located like errors.
    pub warnings: Vec<Problem>,
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
