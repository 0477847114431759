//! Turns the raw file into a [`Config`]: applies defaults, checks ranges and
//! references, and collects every problem with its place in the file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::{Located, RawBackend, RawConfig, RawFrontend, RawHealth, RawServer};
use super::tls_files;
use super::{
    Admin, AdminListen, Backend, CheckKind, Config, ConfigError, Frontend, Global, Health, Problem,
    ServerAddress, ServerSpec, format_duration,
};

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);

pub(super) fn validate(path: &Path, text: &str, raw: RawConfig) -> Result<Config, ConfigError> {
    let mut checker = Checker {
        path,
        text,
        problems: Vec::new(),
    };
    let config = checker.config(raw);
    if checker.problems.is_empty() {
        Ok(config)
    } else {
        checker.problems.sort_by_key(|p| (p.line, p.column));
        Err(ConfigError::Invalid {
            problems: checker.problems,
        })
    }
}

struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems.push(Problem::at(
            self.path,
            self.text,
            Some(span),
            message.into(),
        ));
    }

    fn error_without_place(&mut self, message: impl Into<String>) {
        self.problems
            .push(Problem::at(self.path, self.text, None, message.into()));
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
        value: &Located<u64>,
        key: &str,
        default: u64,
        allowed: RangeInclusive<u64>,
    ) -> u64 {
        let Some(value) = value else { return default };
        let n = *value.get_ref();
        if !allowed.contains(&n) {
            self.error(
                value.span(),
                format!(
                    "`{key}` = {n} is out of range: expected between {} and {}",
                    allowed.start(),
                    allowed.end()
                ),
            );
            return default;
        }
        n
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
            .find(|c| c.is_whitespace() || c.is_control() || *c == '/')
        {
            self.error(
                name.span(),
                format!("{what} name {text:?} contains {bad:?}: use letters, digits, `.`, `-`, `_` or `:`"),
            );
        }
        text.clone()
    }

    fn unique<'n>(&mut self, seen: &mut HashSet<&'n str>, name: &'n Spanned<String>, what: &str) {
        if !seen.insert(name.get_ref().as_str()) {
            self.error(
                name.span(),
                format!(
                    "duplicate {what} name {:?}: names must be unique",
                    name.get_ref()
                ),
            );
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let global = Global {
            drain_timeout: self.duration(
                &raw.global.drain_timeout,
                "drain_timeout",
                30 * SECOND,
                Duration::ZERO..=DAY,
            ),
            resolve_interval: self.duration(
                &raw.global.resolve_interval,
                "resolve_interval",
                30 * SECOND,
                SECOND..=DAY,
            ),
        };
        let admin = Admin {
            listen: match &raw.admin.listen {
                None => AdminListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 8404))),
                Some(listen) => self.admin_listen(listen),
            },
        };

        if raw.frontends.is_empty() {
            self.error_without_place(
                "no [[frontend]] defined: lbd needs at least one address to listen on",
            );
        }
        let mut names = HashSet::new();
        for b in &raw.backends {
            self.unique(&mut names, &b.name, "backend");
        }
        let backend_names = names;
        let mut names = HashSet::new();
        let mut listen_seen: Vec<SocketAddr> = Vec::new();
        for f in &raw.frontends {
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
                        "frontend {:?} names backend {:?}, which does not exist: {known}",
                        f.name.get_ref(),
                        f.backend.get_ref()
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
                    AdminListen::Tcp(a) => Some(*a),
                    AdminListen::Unix(_) => None,
                };
                if let Some(other) = listen_seen
                    .iter()
                    .chain(&admin_addr)
                    .find(|&&other| binds_clash(addr, other))
                {
                    let other = if Some(*other) == admin_addr {
                        format!("the admin API's {other}")
                    } else {
                        other.to_string()
                    };
                    self.error(l.span(), format!("listen address {addr} clashes with {other}: both cannot be bound at once"));
                }
                listen_seen.push(addr);
            }
        }

        let frontends = raw.frontends.iter().map(|f| self.frontend(f)).collect();
        let backends = raw.backends.iter().map(|b| self.backend(b)).collect();
        Config {
            global,
            admin,
            frontends,
            backends,
        }
    }

    fn admin_listen(&mut self, listen: &Spanned<String>) -> AdminListen {
        let text = listen.get_ref();
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                self.error(listen.span(), format!("admin socket path {path:?} must be absolute, e.g. \"unix:/run/lbd/admin.sock\""));
            }
            return AdminListen::Unix(PathBuf::from(path));
        }
        match text.parse() {
            Ok(addr) => AdminListen::Tcp(addr),
            Err(_) => {
                self.error(listen.span(), format!("admin listen {text:?} is not an address: expected \"IP:PORT\" such as \"127.0.0.1:8404\" or \"unix:/run/lbd/admin.sock\""));
                AdminListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 8404)))
            }
        }
    }

    fn frontend(&mut self, raw: &RawFrontend) -> Frontend {
        let name = self.name(&raw.name, "frontend");
        if raw.listen.get_ref().is_empty() {
            self.error(
                raw.listen.span(),
                format!(
                    "frontend {name:?} has an empty `listen` list: give at least one \"IP:PORT\""
                ),
            );
        }
        let listen = raw
            .listen
            .get_ref()
            .iter()
            .filter_map(|l| match l.get_ref().parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.error(l.span(), format!(
                        "listen address {:?} is not IP:PORT: expected e.g. \"0.0.0.0:6443\" or \"[::]:6443\"",
                        l.get_ref()
                    ));
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
                1..=10_000_000,
            ) as usize,
            backlog: self.integer(&raw.backlog, "backlog", 4096, 1..=65_535) as u32,
            idle_timeout: self.duration(&raw.idle_timeout, "idle_timeout", HOUR, SECOND..=7 * DAY),
            fin_timeout: self.duration(&raw.fin_timeout, "fin_timeout", 60 * SECOND, SECOND..=DAY),
        }
    }

    fn backend(&mut self, raw: &RawBackend) -> Backend {
        let name = self.name(&raw.name, "backend");
        if raw.servers.get_ref().is_empty() {
            self.error(
                raw.servers.span(),
                format!(
                    "backend {name:?} has no servers: add at least one {{ address = \"IP:PORT\" }}"
                ),
            );
        }
        let mut seen = HashSet::new();
        let servers = raw
            .servers
            .get_ref()
            .iter()
            .map(|s| {
                let spec = self.server(s);
                if !seen.insert(spec.name.clone()) {
                    let span = s.name.as_ref().map_or(s.address.span(), Spanned::span);
                    self.error(
                        span,
                        format!(
                            "duplicate server name {:?} in backend {name:?}: names must be unique",
                            spec.name
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
        Backend {
            name,
            balance: raw.balance.unwrap_or_default(),
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
            on_no_server: raw.on_no_server.unwrap_or_default(),
            servers,
            health,
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
        let expected = "expected \"IP:PORT\", \"[IPv6]:PORT\" or \"HOSTNAME:PORT\"";
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                self.error(
                    raw.span(),
                    format!("server address {text:?} has port 0: {expected}"),
                );
            }
            return ServerAddress {
                host: addr.ip().to_string(),
                port: addr.port(),
            };
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            self.error(
                raw.span(),
                format!("server address {text:?} has no port: {expected}"),
            );
            return ServerAddress {
                host: text.clone(),
                port: 0,
            };
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => {
                self.error(raw.span(), format!("server address {text:?} has port {port:?}: expected a number from 1 to 65535"));
                0
            }
        };
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !valid_host {
            self.error(
                raw.span(),
                format!("server address {text:?} has an invalid host {host:?}: {expected}"),
            );
        }
        ServerAddress {
            host: host.to_owned(),
            port,
        }
    }

    fn health(&mut self, raw: &Spanned<RawHealth>) -> Health {
        let defaults = Health::default();
        let h = raw.get_ref();
        let check = h.check.unwrap_or_default();
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
            && !path.get_ref().starts_with('/')
        {
            self.error(
                path.span(),
                format!(
                    "health `path` {:?} must start with '/', e.g. \"/readyz\"",
                    path.get_ref()
                ),
            );
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
        if tls {
            self.tls_settings(h, check);
        }
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
            ca_file: h.ca_file.as_ref().map(|p| PathBuf::from(p.get_ref())),
            cert_file: h.cert_file.as_ref().map(|p| PathBuf::from(p.get_ref())),
            key_file: h.key_file.as_ref().map(|p| PathBuf::from(p.get_ref())),
            passive: h.passive.unwrap_or(defaults.passive),
            close_on_down,
        }
    }
}

impl Checker<'_> {
    /// The TLS files must be readable and hold what their key says (the
    /// checks would fail on every server otherwise), and `sni` must be a
    /// name TLS can send.
    fn tls_settings(&mut self, h: &RawHealth, check: CheckKind) {
        if let Some(ca) = &h.ca_file
            && let Err(e) = tls_files::load_roots(Path::new(ca.get_ref()))
        {
            self.error(ca.span(), e.to_string());
        }
        if check == CheckKind::Https
            && let (Some(cert), Some(key)) = (&h.cert_file, &h.key_file)
        {
            let provider = rustls::crypto::ring::default_provider();
            let loaded = tls_files::load_client(
                Path::new(cert.get_ref()),
                Path::new(key.get_ref()),
                &provider,
            );
            if let Err(e) = loaded {
                let span = if e.key == "cert_file" {
                    cert.span()
                } else {
                    key.span()
                };
                self.error(span, e.to_string());
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
