//! Turns the raw file into a [`Config`]: applies defaults, checks ranges and
//! references, and collects every problem with its place in the file.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::error::{LineIndex, quoted};
use super::raw::{
    Count, Located, RawAdmin, RawBackend, RawConfig, RawDiscovery, RawFrontend, RawHealth,
    RawServer, Table,
};
use super::tls_files::FileContents;
use super::{
    Admin, AdminListen, Backend, Balance, CheckKind, Config, ConfigError, DEFAULT_STATE_DIR,
    Discovery, Frontend, Global, Health, KubeAccess, OnNoServer, Problem, Process, RuntimeKind,
    ServerAddress, ServerSpec, format_duration,
};
use super::{address, tls_files};

mod routes;

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);

/// Problems kept from one file. A generated file gone wrong can hold
/// thousands; the first ones and a count serve better than a flood, and
/// locating each costs a scan of its line.
const MAX_PROBLEMS: usize = 50;

/// Largest connection limit: far above what one host can hold, low enough
/// that a typo (an extra zero or five) is caught.
const MAX_CONNECTIONS: u64 = 10_000_000;

/// Most threads `[global] threads` may ask for: far above any host lbd
/// fronts a control plane on, low enough that a typo is caught.
const MAX_THREADS: u64 = 1024;

/// Longest unix socket path: `sun_path` holds 108 bytes with the final NUL.
const MAX_UNIX_PATH: usize = 107;

pub(super) fn validate(path: &Path, text: &str, raw: RawConfig) -> Result<Config, ConfigError> {
    let mut checker = Checker {
        path,
        lines: LineIndex::new(text),
        problems: Vec::new(),
        not_kept: 0,
        ready_files: HashSet::new(),
    };
    let config = checker.config(raw);
    if checker.problems.is_empty() {
        return Ok(config);
    }
    checker.problems.sort_by_key(|p| (p.line, p.column));
    if checker.not_kept > 0 {
        checker.problems.push(Problem::whole_file(
            path,
            format!(
                "{} more problems not listed: fix the ones above first",
                checker.not_kept
            ),
        ));
    }
    Err(ConfigError::Invalid {
        problems: checker.problems,
    })
}

struct Checker<'a> {
    path: &'a Path,
    lines: LineIndex<'a>,
    problems: Vec<Problem>,
    not_kept: usize,
    /// Every frontend's `ready_file` so far, to refuse one file for two.
    ready_files: HashSet<PathBuf>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.push(Some(span), message.into());
    }

    fn error_without_place(&mut self, message: impl Into<String>) {
        self.push(None, message.into());
    }

    fn push(&mut self, span: Option<Range<usize>>, message: String) {
        if self.problems.len() < MAX_PROBLEMS {
            let problem = self.lines.problem(self.path, span, message);
            self.problems.push(problem);
        } else {
            self.not_kept += 1;
        }
    }

    /// A path read or created at run time: a NUL byte (`\u0000` is valid
    /// TOML) would only fail later, far from the file.
    fn file_path(&mut self, value: &Located<String>, key: &str) -> Option<PathBuf> {
        let value = value.as_ref()?;
        if value.get_ref().contains('\0') {
            self.error(value.span(), format!("`{key}` contains a NUL byte"));
        } else if value.get_ref().is_empty() {
            self.error(value.span(), format!("`{key}` is empty: give a file path"));
        }
        Some(PathBuf::from(value.get_ref()))
    }

    fn duration(
        &mut self,
        value: &Located<super::HumanDuration>,
        key: &str,
        default: Duration,
        allowed: RangeInclusive<Duration>,
    ) -> Duration {
        let Some(value) = value else { return default };
        let d = value.get_ref().0;
        if !allowed.contains(&d) {
            self.error(
                value.span(),
                format!(
                    "`{key}` = \"{}\" is out of range: expected between {} and {}",
                    format_duration(d),
                    format_duration(*allowed.start()),
                    format_duration(*allowed.end()),
                ),
            );
        }
        d
    }

    fn integer(
        &mut self,
        value: &Located<Count>,
        key: &str,
        default: u64,
        allowed: RangeInclusive<u64>,
    ) -> u64 {
        let Some(value) = value else { return default };
        let n = value.get_ref().0;
        match u64::try_from(n) {
            Ok(n) if allowed.contains(&n) => n,
            _ => {
                self.error(
                    value.span(),
                    format!(
                        "`{key}` = {n} is out of range: expected between {} and {}",
                        allowed.start(),
                        allowed.end()
                    ),
                );
                default
            }
        }
    }

    /// One of a fixed set of names (`balance`, `check`); the default when absent.
    fn choice<T: Copy + Default>(
        &mut self,
        value: &Located<String>,
        key: &str,
        all: &[T],
        name: fn(T) -> &'static str,
    ) -> T {
        let Some(value) = value else {
            return T::default();
        };
        if let Some(&found) = all.iter().find(|&&c| name(c) == value.get_ref()) {
            return found;
        }
        let names: Vec<String> = all.iter().map(|&c| format!("\"{}\"", name(c))).collect();
        self.error(
            value.span(),
            format!(
                "`{key}` = {} is not known: expected one of {}",
                quoted(value.get_ref()),
                names.join(", ")
            ),
        );
        T::default()
    }

    /// Names appear in metric labels and admin URLs: keep them printable and slash-free.
    fn name(&mut self, name: &Spanned<String>, what: &str) -> String {
        let text = name.get_ref();
        if text.is_empty() || text.len() > 128 {
            self.error(
                name.span(),
                format!("{what} name must be 1 to 128 characters long"),
            );
        } else if let Some(bad) = text
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')))
        {
            // Names go into admin URLs, metric labels and `name@ip` server
            // names of DNS addresses: `/`, `?`, `#`, `%` or `@` would break one of them.
            self.error(
                name.span(),
                format!(
                    "{what} name {} contains {bad:?}: use letters, digits, `.`, `-`, `_` or `:`",
                    quoted(text)
                ),
            );
        }
        text.clone()
    }

    fn unique<'n>(&mut self, seen: &mut HashSet<&'n str>, name: &'n Spanned<String>, what: &str) {
        if !seen.insert(name.get_ref().as_str()) {
            self.error(
                name.span(),
                format!(
                    "duplicate {what} name {}: names must be unique",
                    quoted(name.get_ref())
                ),
            );
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let global = Global {
            drain_timeout: self.duration(
                &raw.global.0.drain_timeout,
                "drain_timeout",
                30 * SECOND,
                Duration::ZERO..=DAY,
            ),
            resolve_interval: self.duration(
                &raw.global.0.resolve_interval,
                "resolve_interval",
                30 * SECOND,
                SECOND..=DAY,
            ),
            max_connections: raw.global.0.max_connections.as_ref().map(|_| {
                self.integer(
                    &raw.global.0.max_connections,
                    "max_connections",
                    1,
                    1..=MAX_CONNECTIONS,
                ) as usize
            }),
            state_dir: self
                .file_path(&raw.global.0.state_dir, "state_dir")
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        };
        let process = Process {
            runtime: self.choice(
                &raw.global.0.runtime,
                "runtime",
                &RuntimeKind::ALL,
                RuntimeKind::as_str,
            ),
            threads: raw.global.0.threads.as_ref().map(|_| {
                self.integer(&raw.global.0.threads, "threads", 1, 1..=MAX_THREADS) as usize
            }),
            splice: raw.global.0.splice.unwrap_or(true),
        };
        let admin = self.admin(&raw.admin.0);

        if raw.frontends.0.is_empty() {
            self.error_without_place(
                "no [[frontend]] defined: lbd needs at least one address to listen on",
            );
        }
        let mut names = HashSet::new();
        for b in &raw.backends.0 {
            self.unique(&mut names, &b.name, "backend");
        }
        let backend_names = names;
        let mut names = HashSet::new();
        let mut listen_seen = Binds::default();
        for f in &raw.frontends.0 {
            self.unique(&mut names, &f.name, "frontend");
            if !backend_names.contains(f.backend.get_ref().as_str()) {
                let known = if backend_names.is_empty() {
                    "no [[backend]] is defined".to_owned()
                } else {
                    let mut known: Vec<_> = backend_names.iter().copied().collect();
                    known.sort_unstable();
                    format!("expected one of {}", known.join(", "))
                };
                self.error(
                    f.backend.span(),
                    format!(
                        "frontend {} names backend {}, which does not exist: {known}",
                        quoted(f.name.get_ref()),
                        quoted(f.backend.get_ref())
                    ),
                );
            }
            for l in f.listen.get_ref() {
                let Ok(addr) = l.get_ref().parse::<SocketAddr>() else {
                    continue;
                };
                if addr.port() == 0 {
                    continue;
                }
                let admin_addr = match &admin.listen {
                    AdminListen::Tcp(a) => Some(*a).filter(|&a| binds_clash(addr, a)),
                    AdminListen::Unix(_) => None,
                };
                let other = match admin_addr {
                    Some(admin) => Some(format!("the admin API's {admin}")),
                    None => listen_seen.clash(addr).map(|other| other.to_string()),
                };
                if let Some(other) = other {
                    self.error(l.span(), format!("listen address {addr} clashes with {other}: both cannot be bound at once"));
                }
                listen_seen.insert(addr);
            }
        }

        let frontends = raw
            .frontends
            .0
            .iter()
            .map(|f| self.frontend(f, &backend_names))
            .collect();
        let backends = raw.backends.0.iter().map(|b| self.backend(b)).collect();
        Config {
            global,
            process,
            admin,
            frontends,
            backends,
        }
    }

    /// `[admin]`: an address reachable from other hosts needs a token, since
    /// the API can drain every server and reload the config.
    fn admin(&mut self, raw: &RawAdmin) -> Admin {
        let listen = match &raw.listen {
            None => AdminListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 8404))),
            Some(listen) => self.admin_listen(listen),
        };
        let token_file = self.file_path(&raw.token_file, "token_file");
        if let (Some(spanned), AdminListen::Tcp(addr), None) = (&raw.listen, &listen, &token_file)
            && !addr.ip().is_loopback()
        {
            self.error(
                spanned.span(),
                format!(
                    "admin listen {addr} is reachable from other hosts, and the admin API can drain servers and reload: \
                     set `token_file` (a bearer token lbctl sends with --token-file), or listen on 127.0.0.1 or a unix socket"
                ),
            );
        }
        let anonymous_read_only = match &raw.anonymous_read_only {
            Some(flag) if token_file.is_none() && *flag.get_ref() => {
                self.error(
                    flag.span(),
                    "`anonymous_read_only` only makes sense with `token_file`: without a token every route is open already",
                );
                false
            }
            Some(flag) => *flag.get_ref(),
            None => false,
        };
        Admin {
            listen,
            token_file,
            anonymous_read_only,
        }
    }

    fn admin_listen(&mut self, listen: &Spanned<String>) -> AdminListen {
        let text = listen.get_ref();
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                self.error(
                    listen.span(),
                    format!(
                        "admin socket path {} must be absolute, e.g. \"unix:/run/lbd/admin.sock\"",
                        quoted(path)
                    ),
                );
            } else if path.contains('\0') {
                self.error(listen.span(), "admin socket path contains a NUL byte");
            } else if path.len() > MAX_UNIX_PATH {
                self.error(listen.span(), format!("admin socket path is {} bytes long; unix sockets allow at most {MAX_UNIX_PATH}: pick a shorter path such as \"unix:/run/lbd/admin.sock\"", path.len()));
            }
            return AdminListen::Unix(PathBuf::from(path));
        }
        match text.parse() {
            Ok(addr) => {
                if let Some(problem) = address::mapped_listen_problem(addr) {
                    self.error(listen.span(), format!("admin listen {problem}"));
                }
                AdminListen::Tcp(addr)
            }
            Err(_) if address::zone_problem(text).is_some() => {
                let problem = address::zone_problem(text).unwrap_or_default();
                self.error(
                    listen.span(),
                    format!("admin listen {}: {problem}", quoted(text)),
                );
                AdminListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 8404)))
            }
            Err(_) => {
                self.error(listen.span(), format!("admin listen {} is not an address: expected \"IP:PORT\" such as \"127.0.0.1:8404\" or \"unix:/run/lbd/admin.sock\"", quoted(text)));
                AdminListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 8404)))
            }
        }
    }

    fn frontend(&mut self, raw: &RawFrontend, backends: &HashSet<&str>) -> Frontend {
        let name = self.name(&raw.name, "frontend");
        if raw.listen.get_ref().is_empty() {
            self.error(
                raw.listen.span(),
                format!(
                    "frontend {} has an empty `listen` list: give at least one \"IP:PORT\"",
                    quoted(&name)
                ),
            );
        }
        let listen = raw
            .listen
            .get_ref()
            .iter()
            .filter_map(|l| match l.get_ref().parse::<SocketAddr>() {
                Ok(addr) => match address::mapped_listen_problem(addr) {
                    None => Some(addr),
                    Some(problem) => {
                        self.error(l.span(), format!("listen address {problem}"));
                        None
                    }
                },
                Err(_) => {
                    let shown = quoted(l.get_ref());
                    let message = match address::zone_problem(l.get_ref()) {
                        Some(zone) => format!("listen address {shown}: {zone}"),
                        None => format!("listen address {shown} is not IP:PORT: expected e.g. \"0.0.0.0:6443\" or \"[::]:6443\""),
                    };
                    self.error(l.span(), message);
                    None
                }
            })
            .collect();
        Frontend {
            name,
            listen,
            backend: raw.backend.get_ref().clone(),
            max_connections: self.integer(
                &raw.max_connections,
                "max_connections",
                20_000,
                1..=MAX_CONNECTIONS,
            ) as usize,
            max_connections_per_source: raw.max_connections_per_source.as_ref().map(|_| {
                self.integer(
                    &raw.max_connections_per_source,
                    "max_connections_per_source",
                    1,
                    1..=MAX_CONNECTIONS,
                ) as u32
            }),
            backlog: self.integer(&raw.backlog, "backlog", 4096, 1..=65_535) as u32,
            idle_timeout: self.duration(&raw.idle_timeout, "idle_timeout", HOUR, SECOND..=7 * DAY),
            fin_timeout: self.duration(&raw.fin_timeout, "fin_timeout", 60 * SECOND, SECOND..=DAY),
            routes: self.routes(raw, backends),
            inspect_timeout: self.duration(
                &raw.inspect_timeout,
                "inspect_timeout",
                routes::DEFAULT_INSPECT_TIMEOUT,
                Duration::from_millis(10)..=Duration::from_secs(300),
            ),
            accept_proxy: self.proxy_version(&raw.accept_proxy, "accept_proxy"),
            ready_file: self.ready_file(&raw.ready_file),
        }
    }

    /// `ready_file`: an absolute path naming a file, not used by another
    /// frontend (two writers of one file would contradict each other).
    fn ready_file(&mut self, raw: &Located<String>) -> Option<PathBuf> {
        let path = self.file_path(raw, "ready_file")?;
        let spanned = raw.as_ref()?;
        if !path.is_absolute() || path.file_name().is_none() || spanned.get_ref().contains('\n') {
            self.error(
                spanned.span(),
                format!(
                    "`ready_file` = {} is not an absolute file path: expected e.g. \"/run/lbd/kube-apiserver.ready\"",
                    quoted(spanned.get_ref())
                ),
            );
        } else if !self.ready_files.insert(path.clone()) {
            self.error(
                spanned.span(),
                format!(
                    "`ready_file` = {} is already another frontend's: give each frontend its own file",
                    quoted(spanned.get_ref())
                ),
            );
        }
        Some(path)
    }

    fn backend(&mut self, raw: &RawBackend) -> Backend {
        let name = self.name(&raw.name, "backend");
        if raw.servers.get_ref().is_empty() {
            self.error(
                raw.servers.span(),
                format!(
                    "backend {} has no servers: add at least one {{ address = \"IP:PORT\" }}",
                    quoted(&name)
                ),
            );
        }
        let mut seen = HashSet::new();
        let servers = raw
            .servers
            .get_ref()
            .iter()
            .map(|Table(s)| {
                let spec = self.server(s);
                if !seen.insert(spec.name.clone()) {
                    let span = s.name.as_ref().map_or(s.address.span(), Spanned::span);
                    self.error(
                        span,
                        format!(
                            "duplicate server name {} in backend {}: names must be unique",
                            quoted(&spec.name),
                            quoted(&name)
                        ),
                    );
                }
                spec
            })
            .collect();
        let health = match &raw.health {
            None => Health::default(),
            Some(h) => self.health(h),
        };
        let rebalance = raw.rebalance.as_ref().map(|_| {
            self.duration(
                &raw.rebalance,
                "rebalance",
                Duration::from_secs(300),
                Duration::from_secs(1)..=Duration::from_secs(24 * 3600),
            )
        });
        let discovery = raw.discovery.as_ref().map(|d| self.discovery(d));
        Backend {
            name,
            balance: self.choice(&raw.balance, "balance", &Balance::ALL, Balance::as_str),
            connect_timeout: self.duration(
                &raw.connect_timeout,
                "connect_timeout",
                2 * SECOND,
                Duration::from_millis(10)..=Duration::from_secs(300),
            ),
            retries: self.integer(
                &raw.retries,
                "retries",
                2,
                0..=u64::from(super::MAX_RETRIES),
            ) as u32,
            on_no_server: self.choice(
                &raw.on_no_server,
                "on_no_server",
                &OnNoServer::ALL,
                OnNoServer::as_str,
            ),
            send_proxy: self.proxy_version(&raw.send_proxy, "send_proxy"),
            rebalance,
            servers,
            health,
            discovery,
        }
    }

    /// `[backend.discovery]`: the kubeconfig must be readable and usable
    /// (a cluster with a CA, and a client certificate or a token), so a
    /// broken one is refused at load, not found by the watch later.
    fn discovery(&mut self, raw: &Spanned<Table<RawDiscovery>>) -> Discovery {
        let d = &raw.get_ref().0;
        if d.kubeconfig.is_none() {
            self.error(
                raw.span(),
                "[backend.discovery] needs `kubeconfig`: the file with the CA and credentials that may list EndpointSlices",
            );
        }
        let kubeconfig = self.read_file(&d.kubeconfig, "kubeconfig");
        if let (Some(file), Some(located)) = (&kubeconfig, &d.kubeconfig)
            && let Err(e) = KubeAccess::parse(file)
        {
            self.error(located.span(), e.to_string());
        }
        let service = match &d.service {
            Some(name) => self.name(name, "service"),
            None => "kubernetes".to_owned(),
        };
        Discovery {
            kubeconfig: kubeconfig.unwrap_or_else(|| FileContents {
                path: PathBuf::new(),
                bytes: Vec::new().into(),
            }),
            service,
            remove_after: self.duration(
                &d.remove_after,
                "remove_after",
                30 * SECOND,
                Duration::ZERO..=DAY,
            ),
        }
    }

    fn server(&mut self, raw: &RawServer) -> ServerSpec {
        let address = self.server_address(&raw.address);
        let name = match &raw.name {
            Some(name) => self.name(name, "server"),
            None => raw.address.get_ref().clone(),
        };
        ServerSpec {
            name,
            address,
            weight: self.integer(&raw.weight, "weight", 1, 1..=1000) as u32,
        }
    }

    fn server_address(&mut self, raw: &Spanned<String>) -> ServerAddress {
        let text = raw.get_ref();
        let shown = quoted(text);
        let expected = "expected \"IP:PORT\", \"[IPv6]:PORT\" or \"HOSTNAME:PORT\"";
        let unusable = |text: &str| ServerAddress {
            host: text.to_owned(),
            port: 0,
        };
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                self.error(
                    raw.span(),
                    format!("server address {shown} has port 0: {expected}"),
                );
            }
            return ServerAddress {
                host: addr.ip().to_string(),
                port: addr.port(),
            };
        }
        let bare_ip = text.parse::<std::net::IpAddr>().is_ok()
            || text
                .strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        if let Some(zone) = address::zone_problem(text) {
            self.error(raw.span(), format!("server address {shown}: {zone}"));
            return unusable(text);
        }
        let Some((host, port)) = text.rsplit_once(':').filter(|_| !bare_ip) else {
            let hint = if text.parse::<std::net::Ipv6Addr>().is_ok() {
                "it reads as an IPv6 address: write \"[IPv6]:PORT\", e.g. \"[fd00::11]:6443\""
            } else {
                expected
            };
            self.error(
                raw.span(),
                format!("server address {shown} has no port: {hint}"),
            );
            return unusable(text);
        };
        if host.contains(':') {
            self.error(
                raw.span(),
                format!("server address {shown}: an IPv6 address needs brackets, as in \"[fd00::11]:6443\""),
            );
            return unusable(host);
        }
        let Some(port) = port.parse::<u16>().ok().filter(|&p| p != 0) else {
            self.error(
                raw.span(),
                format!(
                    "server address {shown} has port {}: expected a number from 1 to 65535",
                    quoted(port)
                ),
            );
            return unusable(host);
        };
        // One trailing dot (a fully qualified name) is fine; a host made of
        // numbers only (`999.1.1.1`) is a mistyped IP, not a name.
        let name = host.strip_suffix('.').unwrap_or(host);
        let valid_host = !name.is_empty()
            && name.len() <= 253
            && !name
                .split('.')
                .all(|label| label.chars().all(|c| c.is_ascii_digit()))
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !valid_host {
            self.error(
                raw.span(),
                format!(
                    "server address {shown} has an invalid host {}: {expected}",
                    quoted(host)
                ),
            );
        }
        ServerAddress {
            host: host.to_owned(),
            port,
        }
    }

    fn health(&mut self, raw: &Spanned<Table<RawHealth>>) -> Health {
        let defaults = Health::default();
        let h = &raw.get_ref().0;
        let check = self.choice(&h.check, "check", &CheckKind::ALL, CheckKind::as_str);
        let tls = matches!(check, CheckKind::Tls | CheckKind::Https);
        let only_for =
            |checker: &mut Self, field: &Located<String>, key: &str, allowed: bool, kinds: &str| {
                if let (Some(value), false) = (field, allowed) {
                    checker.error(
                    value.span(),
                    format!(
                        "`{key}` is only used by check = {kinds}; this backend's check is \"{}\"",
                        check.as_str()
                    ),
                );
                }
            };
        only_for(
            self,
            &h.path,
            "path",
            check == CheckKind::Https,
            "\"https\"",
        );
        only_for(self, &h.sni, "sni", tls, "\"tls\" or \"https\"");
        only_for(self, &h.ca_file, "ca_file", tls, "\"tls\" or \"https\"");
        only_for(
            self,
            &h.cert_file,
            "cert_file",
            check == CheckKind::Https,
            "\"https\"",
        );
        only_for(
            self,
            &h.key_file,
            "key_file",
            check == CheckKind::Https,
            "\"https\"",
        );
        if h.cert_file.is_some() != h.key_file.is_some() {
            self.error(
                raw.span(),
                "`cert_file` and `key_file` go together: give both or neither",
            );
        }
        if let Some(path) = &h.path
            && let Some(problem) = super::http_path::problem(path.get_ref())
        {
            self.error(path.span(), problem);
        }
        let interval = self.duration(
            &h.interval,
            "interval",
            defaults.interval,
            Duration::from_millis(100)..=HOUR,
        );
        let fast_interval = self.duration(
            &h.fast_interval,
            "fast_interval",
            defaults.fast_interval.min(interval),
            Duration::from_millis(100)..=HOUR,
        );
        if let Some(fast) = &h.fast_interval
            && fast_interval > interval
        {
            self.error(
                fast.span(),
                format!(
                    "`fast_interval` = \"{}\" is longer than `interval` = \"{}\": it is the interval used while a server changes state, so it should be shorter (or leave it out)",
                    format_duration(fast_interval),
                    format_duration(interval),
                ),
            );
        }
        let close_on_down = h.close_on_down.as_ref().map(|_| {
            self.duration(
                &h.close_on_down,
                "close_on_down",
                Duration::ZERO,
                Duration::ZERO..=HOUR,
            )
        });
        let timeout = self.duration(
            &h.timeout,
            "timeout",
            defaults.timeout,
            Duration::from_millis(10)..=Duration::from_secs(300),
        );
        let files = if tls {
            self.tls_settings(h, check)
        } else {
            TlsFileSettings::default()
        };
        Health {
            check,
            interval,
            fast_interval,
            timeout,
            rise: self.integer(&h.rise, "rise", defaults.rise.into(), 1..=100) as u32,
            fall: self.integer(&h.fall, "fall", defaults.fall.into(), 1..=100) as u32,
            port: h
                .port
                .as_ref()
                .map(|_| self.integer(&h.port, "port", 1, 1..=65_535) as u16),
            path: h
                .path
                .as_ref()
                .map_or(defaults.path, |p| p.get_ref().clone()),
            sni: h.sni.as_ref().map(|s| s.get_ref().clone()),
            ca_file: files.ca,
            cert_file: files.cert,
            key_file: files.key,
            passive: h.passive.unwrap_or(defaults.passive),
            close_on_down,
        }
    }
}

/// Listen addresses seen so far, indexed so that each new one is checked
/// against them in constant time (a generated file may list thousands).
#[derive(Default)]
struct Binds {
    /// Every specific address, and per (port, family) the first wildcard
    /// and the first address of any kind.
    exact: HashSet<SocketAddr>,
    wildcard: HashMap<(u16, bool), SocketAddr>,
    any: HashMap<(u16, bool), SocketAddr>,
}

impl Binds {
    /// An address already seen that `addr` cannot be bound beside, per [`binds_clash`].
    fn clash(&self, addr: SocketAddr) -> Option<SocketAddr> {
        let key = (addr.port(), addr.is_ipv4());
        if self.exact.contains(&addr) {
            return Some(addr);
        }
        if let Some(&wildcard) = self.wildcard.get(&key) {
            return Some(wildcard);
        }
        if addr.ip().is_unspecified() {
            return self.any.get(&key).copied();
        }
        None
    }

    fn insert(&mut self, addr: SocketAddr) {
        let key = (addr.port(), addr.is_ipv4());
        self.exact.insert(addr);
        self.any.entry(key).or_insert(addr);
        if addr.ip().is_unspecified() {
            self.wildcard.entry(key).or_insert(addr);
        }
    }
}

/// The TLS files of a health check, read at validation: the desired state
/// carries their bytes (see [`tls_files`]).
#[derive(Default)]
struct TlsFileSettings {
    ca: Option<FileContents>,
    cert: Option<FileContents>,
    key: Option<FileContents>,
}

impl Checker<'_> {
    /// Reads a file the config names; an unreadable one is an error at its key.
    fn read_file(&mut self, value: &Located<String>, key: &'static str) -> Option<FileContents> {
        let path = self.file_path(value, key)?;
        let text = path.as_os_str().as_encoded_bytes();
        if text.is_empty() || text.contains(&0) {
            return None; // file_path said so
        }
        match FileContents::read(key, &path) {
            Ok(contents) => Some(contents),
            Err(e) => {
                let span = value.as_ref().map(|v| v.span());
                if let Some(span) = span {
                    self.error(span, e.to_string());
                }
                None
            }
        }
    }

    /// The TLS files must be readable and hold what their key says (the
    /// checks would fail on every server otherwise), and `sni` must be a
    /// name TLS can send. Returns the files' contents.
    fn tls_settings(&mut self, h: &RawHealth, check: CheckKind) -> TlsFileSettings {
        let mut files = TlsFileSettings {
            ca: self.read_file(&h.ca_file, "ca_file"),
            ..TlsFileSettings::default()
        };
        if let (Some(ca), Some(located)) = (&files.ca, &h.ca_file)
            && let Err(e) = tls_files::parse_roots(ca)
        {
            self.error(located.span(), e.to_string());
        }
        if check == CheckKind::Https
            && let (Some(cert_at), Some(key_at)) = (&h.cert_file, &h.key_file)
        {
            files.cert = self.read_file(&h.cert_file, "cert_file");
            files.key = self.read_file(&h.key_file, "key_file");
            if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
                let provider = rustls::crypto::ring::default_provider();
                if let Err(e) = tls_files::parse_client(cert, key, &provider) {
                    let span = if e.key == "cert_file" {
                        cert_at.span()
                    } else {
                        key_at.span()
                    };
                    self.error(span, e.to_string());
                }
            }
        }
        if let Some(sni) = &h.sni
            && rustls::pki_types::ServerName::try_from(sni.get_ref().as_str()).is_err()
        {
            self.error(
                sni.span(),
                format!(
                    "`sni` = {:?} is not a DNS name or an IP address, e.g. \"kubernetes\"",
                    sni.get_ref()
                ),
            );
        }
        files
    }
}

/// Whether two listening addresses cannot both be bound: the same port and
/// either the same IP or a wildcard of the same family (IPv6 listeners are
/// V6ONLY, so `[::]` and `0.0.0.0` do not clash).
fn binds_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[frontend]]
name = "kube-apiserver"
listen = ["127.0.0.1:6443", "[::1]:6443"]
backend = "control-plane"

[[backend]]
name = "control-plane"
balance = "least-connections"
servers = [
  { name = "cp1", address = "10.0.0.11:6443" },
  { address = "cp3.lab.internal:6443", weight = 2 },
]
[backend.health]
check = "https"
sni = "kubernetes"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("lbd.toml"), text)
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text) {
            Err(ConfigError::Invalid { problems }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn applies_defaults() {
        let config = parse(GOOD).unwrap();
        let f = &config.frontends[0];
        assert_eq!(f.max_connections, 20_000);
        assert_eq!(f.idle_timeout, HOUR);
        let b = &config.backends[0];
        assert_eq!(b.connect_timeout, 2 * SECOND);
        assert_eq!(b.retries, 2);
        assert_eq!(b.servers[1].name, "cp3.lab.internal:6443");
        assert_eq!(b.servers[1].address.host, "cp3.lab.internal");
        assert_eq!(b.servers[1].weight, 2);
        assert_eq!(b.health.path, "/readyz");
        assert_eq!(config.global.drain_timeout, 30 * SECOND);
        assert_eq!(
            config.summary(),
            "1 frontend (2 listeners), 1 backend, 2 servers"
        );
    }

    #[test]
    fn process_settings_default_and_parse() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.process, Process::default());
        assert_eq!(config.process.runtime, RuntimeKind::PerCore);
        assert!(config.process.splice);
        let config = parse(&format!(
            "[global]\nruntime = \"multi-thread\"\nthreads = 3\nsplice = false\n{GOOD}"
        ))
        .unwrap();
        assert_eq!(
            config.process,
            Process {
                runtime: RuntimeKind::MultiThread,
                threads: Some(3),
                splice: false,
            }
        );
    }

    #[test]
    fn unknown_key_is_located() {
        let text = GOOD.replace(
            "backend = \"control-plane\"\n",
            "backend = \"control-plane\"\nlisn = 1\n",
        );
        let p = &problems(&text)[0];
        assert_eq!((p.line, p.column), (6, 1), "{p}");
        assert!(p.message.contains("unknown field `lisn`"), "{p}");
    }

    #[test]
    fn reports_every_semantic_problem_with_its_line() {
        let text = r#"
[[frontend]]
name = "a"
listen = ["127.0.0.1:99999"]
backend = "missing"

[[backend]]
name = "b"
servers = []
connect_timeout = "0s"

[[backend]]
name = "b"
servers = [{ address = "10.0.0.1" }, { address = "10.0.0.2:1", weight = 0 }]
"#;
        let found: Vec<(usize, String)> = problems(text)
            .into_iter()
            .map(|p| (p.line, p.message))
            .collect();
        let lines: Vec<usize> = found.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![4, 5, 9, 10, 13, 14, 14], "{found:#?}");
        assert!(found[1].1.contains("does not exist: expected one of b"));
        assert!(found[4].1.contains("duplicate backend name"));
    }

    #[test]
    fn listeners_that_cannot_both_bind_are_refused() {
        let two = |a: &str, b: &str| {
            format!(
                "[admin]\nlisten = \"127.0.0.1:8404\"\n[[frontend]]\nname = \"a\"\nlisten = [\"{a}\"]\nbackend = \"b\"\n\
                 [[frontend]]\nname = \"c\"\nlisten = [\"{b}\"]\nbackend = \"b\"\n\
                 [[backend]]\nname = \"b\"\nservers = [{{ address = \"10.0.0.1:1\" }}]\n"
            )
        };
        for (a, b) in [
            ("0.0.0.0:6443", "127.0.0.1:6443"),
            ("127.0.0.1:6443", "127.0.0.1:6443"),
            ("[::]:6443", "[::1]:6443"),
            ("0.0.0.0:8404", "127.0.0.2:1"),
        ] {
            let p = &problems(&two(a, b))[0];
            assert!(p.message.contains("clashes with"), "{a} {b}: {p}");
        }
        for (a, b) in [
            ("0.0.0.0:6443", "[::]:6443"),
            ("127.0.0.1:6443", "127.0.0.2:6443"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            assert!(parse(&two(a, b)).is_ok(), "{a} {b}");
        }
    }

    #[test]
    fn names_and_hosts_that_would_break_urls_or_dns_are_refused() {
        let with = |server: &str| {
            format!(
                "[[frontend]]\nname = \"a\"\nlisten = [\"127.0.0.1:1\"]\nbackend = \"b\"\n\
                 [[backend]]\nname = \"b\"\nservers = [{server}]\n"
            )
        };
        for bad in [
            r#"{ name = "cp?1", address = "10.0.0.1:6443" }"#,
            r#"{ name = "cp@x", address = "10.0.0.1:6443" }"#,
            r#"{ name = "50%", address = "10.0.0.1:6443" }"#,
            r#"{ address = "999.1.1.1:6443" }"#,
        ] {
            assert!(parse(&with(bad)).is_err(), "{bad} was accepted");
        }
        for good in [
            r#"{ name = "cp-1.lab_a:x", address = "10.0.0.1:6443" }"#,
            r#"{ address = "cp1.lab.:6443" }"#,
            r#"{ address = "3com.example:6443" }"#,
        ] {
            assert!(
                parse(&with(good)).is_ok(),
                "{good} was refused: {:?}",
                parse(&with(good))
            );
        }
    }

    #[test]
    fn bad_duration_names_the_value() {
        let text = GOOD.replace("balance", "connect_timeout = \"2 secs\"\nbalance");
        let p = &problems(&text)[0];
        assert!(p.message.contains("2 secs"), "{p}");
        assert_eq!(p.line, 9);
    }

    #[test]
    fn https_only_keys_are_refused_on_tcp_checks() {
        let text = GOOD.replace("check = \"https\"", "check = \"tcp\"");
        let p = &problems(&text)[0];
        assert!(p.message.contains("`sni` is only used by"), "{p}");
    }

    #[test]
    fn health_and_no_server_defaults() {
        let b = &parse(GOOD).unwrap().backends[0];
        assert_eq!(b.on_no_server, super::super::OnNoServer::Refuse);
        assert_eq!(b.health.fast_interval, Duration::from_millis(500));
        assert!(b.health.passive);
        assert_eq!(b.health.close_on_down, None);
        // A short interval pulls the default fast interval down with it.
        let text = GOOD.replace(
            "sni = \"kubernetes\"",
            "sni = \"kubernetes\"\ninterval = \"200ms\"",
        );
        let h = &parse(&text).unwrap().backends[0].health;
        assert_eq!(h.fast_interval, Duration::from_millis(200));
    }

    #[test]
    fn health_reaction_keys_parse() {
        let text = GOOD
            .replace(
                "balance = \"least-connections\"",
                "balance = \"least-connections\"\non_no_server = \"panic\"",
            )
            .replace(
                "sni = \"kubernetes\"",
                "sni = \"kubernetes\"\nfast_interval = \"250ms\"\npassive = false\nclose_on_down = \"30s\"",
            );
        let b = &parse(&text).unwrap().backends[0];
        assert_eq!(b.on_no_server, super::super::OnNoServer::Panic);
        assert_eq!(b.health.fast_interval, Duration::from_millis(250));
        assert!(!b.health.passive);
        assert_eq!(b.health.close_on_down, Some(30 * SECOND));
    }

    #[test]
    fn fast_interval_longer_than_interval_is_refused() {
        let text = GOOD.replace(
            "sni = \"kubernetes\"",
            "sni = \"kubernetes\"\ninterval = \"1s\"\nfast_interval = \"3s\"",
        );
        let p = &problems(&text)[0];
        assert_eq!(p.line, 18, "{p}");
        assert!(p.message.contains("longer than `interval`"), "{p}");
    }

    #[test]
    fn bad_no_server_policy_and_close_window_are_located() {
        let text = GOOD.replace(
            "balance = \"least-connections\"",
            "balance = \"least-connections\"\non_no_server = \"retry\"",
        );
        let p = &problems(&text)[0];
        assert_eq!(p.line, 10, "{p}");
        assert!(
            p.message.contains("refuse") && p.message.contains("panic"),
            "{p}"
        );
        let text = GOOD.replace(
            "sni = \"kubernetes\"",
            "sni = \"kubernetes\"\nclose_on_down = \"2h\"",
        );
        let p = &problems(&text)[0];
        assert!(
            p.message
                .contains("`close_on_down` = \"2h\" is out of range"),
            "{p}"
        );
    }

    #[test]
    fn non_utf8_is_an_error_not_a_panic() {
        let err = Config::parse_bytes(Path::new("x.toml"), b"name = \"\xff\"").unwrap_err();
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
    }
}
