//! What to probe: HOST:PORT arguments, or every server and frontend of an lbd
//! config, each carrying the checks to run on it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::tls::TlsSettings;
use super::{ProbeArgs, ProbeError};
use crate::config::{Backend, CheckKind, Config};

/// Where a `--config` target comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A server of a backend: dialed directly, as lbd dials it.
    Server,
    /// A frontend listen address: dialed as a client of lbd would.
    Frontend,
}

impl Role {
    /// The word used in the human table and the JSON `role` field.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Frontend => "frontend",
        }
    }
}

/// One endpoint to probe and the checks it gets.
#[derive(Debug)]
pub(crate) struct Target {
    /// The endpoint as written: `10.0.0.11:6443`, `[::1]:6443`, `cp3.lab:6443`.
    pub given: String,
    /// IP literal (no brackets) or DNS name.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Set in `--config` mode: what the endpoint is in the config.
    pub role: Option<Role>,
    /// Set in `--config` mode: `backend/server` or the frontend's name.
    pub name: Option<String>,
    /// The name or IP that must be in the certificate's SANs; `None` skips that check.
    pub checked_name: Option<String>,
    /// What to do after the connect.
    pub checks: Arc<Checks>,
}

impl Target {
    /// The first column of the human output: the endpoint, or its role and name.
    pub(crate) fn label(&self) -> String {
        match (self.role, &self.name) {
            (Some(role), Some(name)) => format!("{} {name}", role.as_str()),
            _ => self.given.clone(),
        }
    }

    /// Whether this is a frontend of `--config`, probed beside its servers.
    pub(crate) fn is_frontend(&self) -> bool {
        self.role == Some(Role::Frontend)
    }

    /// `host:port` as an HTTP authority (IPv6 in brackets), for the Host header.
    pub(crate) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The steps after a successful connect.
#[derive(Debug)]
pub(crate) struct Checks {
    /// Limit of each step: resolve, connect, TLS handshake, HTTP answer.
    pub timeout: Duration,
    /// Plain TCP only: how long to watch for an accept-then-close.
    pub hold: Duration,
    /// Do a TLS handshake with these settings.
    pub tls: Option<Arc<TlsSettings>>,
    /// GET this path over the TLS connection.
    pub http_path: Option<String>,
}

/// Turns the command line into the list of targets, or says why it cannot.
/// `config` is the file of `--config`, already loaded.
pub(crate) fn plan(
    args: &ProbeArgs,
    config: Option<&Config>,
) -> Result<Vec<Arc<Target>>, ProbeError> {
    if let Some(path) = &args.http_path
        && !path.starts_with('/')
    {
        return Err(ProbeError::HttpPath(path.clone()));
    }
    if let Some(sni) = &args.sni
        && rustls::pki_types::ServerName::try_from(sni.as_str()).is_err()
    {
        return Err(ProbeError::Sni(sni.clone()));
    }
    let loaded;
    let config = match (config, &args.config) {
        (None, Some(path)) => {
            loaded = Config::load(path)?;
            Some(&loaded)
        }
        (config, _) => config,
    };
    match (&args.config, config) {
        (Some(path), Some(config)) => {
            let targets = from_config(config, args)?;
            if targets.is_empty() {
                return Err(ProbeError::Empty(path.clone()));
            }
            Ok(targets)
        }
        _ => {
            let tls = if wants_tls(args) {
                Some(Arc::new(TlsSettings::load(
                    args.sni.clone(),
                    args.ca.as_deref(),
                    args.cert.as_deref(),
                    args.key.as_deref(),
                    args.http_path.is_some(),
                )?))
            } else {
                None
            };
            let checks = Arc::new(Checks {
                timeout: args.timeout,
                hold: args.hold,
                tls,
                http_path: args.http_path.clone(),
            });
            args.targets
                .iter()
                .map(|arg| {
                    let (host, port) =
                        parse_host_port(arg).map_err(|reason| ProbeError::Target {
                            arg: arg.clone(),
                            reason,
                        })?;
                    Ok(Arc::new(Target {
                        given: arg.clone(),
                        checked_name: Some(args.sni.clone().unwrap_or_else(|| host.clone())),
                        host,
                        port,
                        role: None,
                        name: None,
                        checks: Arc::clone(&checks),
                    }))
                })
                .collect()
        }
    }
}

/// Every server of every backend, then every frontend address, each with its
/// backend's TLS/HTTP settings unless the command line names its own.
fn from_config(config: &Config, args: &ProbeArgs) -> Result<Vec<Arc<Target>>, ProbeError> {
    let mut backend_checks = Vec::with_capacity(config.backends.len());
    for backend in &config.backends {
        backend_checks.push((backend, Arc::new(checks_for(backend, args)?)));
    }
    let mut targets = Vec::new();
    for (backend, checks) in &backend_checks {
        let sni = args.sni.clone().or_else(|| backend.health.sni.clone());
        for server in &backend.servers {
            targets.push(Arc::new(Target {
                given: server.address.to_string(),
                host: server.address.host.clone(),
                port: server.address.port,
                role: Some(Role::Server),
                name: Some(format!("{}/{}", backend.name, server.name)),
                checked_name: Some(sni.clone().unwrap_or_else(|| server.address.host.clone())),
                checks: Arc::clone(checks),
            }));
        }
    }
    for frontend in &config.frontends {
        let Some((backend, checks)) = backend_checks
            .iter()
            .find(|(backend, _)| backend.name == frontend.backend)
        else {
            continue;
        };
        let sni = args.sni.clone().or_else(|| backend.health.sni.clone());
        for listen in &frontend.listen {
            // Port 0 is a test setup: the real port is only known to the running daemon.
            if listen.port() == 0 {
                continue;
            }
            let (dial_to, checked_name) = match wildcard_to_loopback(listen.ip()) {
                // Through loopback the IP is not what clients use: only an
                // explicit server name can be checked against the SANs.
                Some(loopback) => (SocketAddr::new(loopback, listen.port()), sni.clone()),
                None => (
                    *listen,
                    Some(sni.clone().unwrap_or(listen.ip().to_string())),
                ),
            };
            targets.push(Arc::new(Target {
                given: dial_to.to_string(),
                host: dial_to.ip().to_string(),
                port: dial_to.port(),
                role: Some(Role::Frontend),
                name: Some(frontend.name.clone()),
                checked_name,
                checks: Arc::clone(checks),
            }));
        }
    }
    Ok(targets)
}

/// A backend's checks: `--tls`/`--http-path` and friends win, else its `[backend.health]`.
fn checks_for(backend: &Backend, args: &ProbeArgs) -> Result<Checks, ProbeError> {
    let health = &backend.health;
    let http_path = args
        .http_path
        .clone()
        .or_else(|| (health.check == CheckKind::Https).then(|| health.path.clone()));
    let tls = if wants_tls(args) || health.check != CheckKind::Tcp {
        let (cert, key) = match (&args.cert, &args.key) {
            (Some(cert), Some(key)) => (Some(cert.as_path()), Some(key.as_path())),
            _ => (
                health.cert_file.as_ref().map(|f| f.path.as_path()),
                health.key_file.as_ref().map(|f| f.path.as_path()),
            ),
        };
        Some(Arc::new(TlsSettings::load(
            args.sni.clone().or_else(|| health.sni.clone()),
            args.ca
                .as_deref()
                .or(health.ca_file.as_ref().map(|f| f.path.as_path())),
            cert,
            key,
            http_path.is_some(),
        )?))
    } else {
        None
    };
    Ok(Checks {
        timeout: args.timeout,
        hold: args.hold,
        tls,
        http_path,
    })
}

/// Any TLS flag asks for TLS: `--sni`, `--ca` or `--http-path` alone mean it.
fn wants_tls(args: &ProbeArgs) -> bool {
    args.tls
        || args.http_path.is_some()
        || args.sni.is_some()
        || args.ca.is_some()
        || args.cert.is_some()
}

/// `0.0.0.0` and `[::]` are probed through the loopback of the same family.
fn wildcard_to_loopback(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        IpAddr::V6(v6) if v6.is_unspecified() => Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        _ => None,
    }
}

/// Splits `HOST:PORT`, `[IPv6]:PORT` into host (no brackets) and port.
pub(crate) fn parse_host_port(arg: &str) -> Result<(String, u16), String> {
    if let Some((scheme, rest)) = arg.split_once("://") {
        return Err(not_a_url(scheme, rest));
    }
    let (host, port) = if let Some(rest) = arg.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("a '[' opens an IPv6 address that no ']' closes")?;
        let port = after
            .strip_prefix(':')
            .ok_or("give the port after the bracket: [IPv6]:PORT")?;
        (host, port)
    } else {
        let (host, port) = arg
            .rsplit_once(':')
            .ok_or("give HOST:PORT, e.g. 10.0.0.10:6443")?;
        if host.contains(':') {
            return Err("write an IPv6 address in brackets: [IPv6]:PORT".into());
        }
        (host, port)
    };
    if host.is_empty() {
        return Err("the host is empty; give HOST:PORT".into());
    }
    let port = match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(format!("{port:?} is not a port (1-65535)")),
        Ok(port) => port,
    };
    Ok((host.to_owned(), port))
}

/// What to write instead of a URL such as `https://10.0.0.1:6443/readyz`.
fn not_a_url(scheme: &str, rest: &str) -> String {
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    let has_port = match authority.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && !port.is_empty() && !port.contains(']'),
        None => false,
    };
    let endpoint = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:PORT")
    };
    let mut hint = format!("give HOST:PORT, not a URL: write {endpoint}");
    if !has_port {
        hint.push_str(" (kube-apiserver: 6443)");
    }
    if path.len() > 1 {
        hint.push_str(&format!(" --http-path {path}"));
    } else if scheme.eq_ignore_ascii_case("https") {
        hint.push_str(" --tls");
    }
    hint
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_ipv6_and_names() {
        assert_eq!(
            parse_host_port("10.0.0.1:6443"),
            Ok(("10.0.0.1".into(), 6443))
        );
        assert_eq!(parse_host_port("[::1]:6443"), Ok(("::1".into(), 6443)));
        assert_eq!(
            parse_host_port("cp1.lab.internal:443"),
            Ok(("cp1.lab.internal".into(), 443))
        );
    }

    #[test]
    fn rejects_what_is_not_host_port() {
        for bad in [
            "10.0.0.1",
            "::1:6443",
            "[::1]6443",
            "[::1:6443",
            ":6443",
            "a:0",
            "a:70000",
            "a:x",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_url_says_what_to_write_instead() {
        assert_eq!(
            parse_host_port("https://10.0.0.1:6443"),
            Err("give HOST:PORT, not a URL: write 10.0.0.1:6443 --tls".into())
        );
        assert_eq!(
            parse_host_port("https://lb.example:6443/readyz?verbose"),
            Err(
                "give HOST:PORT, not a URL: write lb.example:6443 --http-path /readyz?verbose"
                    .into()
            )
        );
        assert_eq!(
            parse_host_port("https://lb.example/"),
            Err(
                "give HOST:PORT, not a URL: write lb.example:PORT (kube-apiserver: 6443) --tls"
                    .into()
            )
        );
        assert!(
            parse_host_port("tcp://[::1]:6443")
                .unwrap_err()
                .contains("write [::1]:6443")
        );
    }

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        assert_eq!(
            wildcard_to_loopback("0.0.0.0".parse().unwrap()),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            wildcard_to_loopback("::".parse().unwrap()),
            Some("::1".parse().unwrap())
        );
        assert_eq!(wildcard_to_loopback("10.0.0.5".parse().unwrap()), None);
    }
}
