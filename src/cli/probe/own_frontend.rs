//! A refused endpoint that is lbd's own frontend. lbd pauses a frontend's
//! listeners while no server of its backend can take a connection (see
//! [`crate::net::pausable`]), so a client's SYN gets RST: "refused" then means
//! "no apiserver is up", not "start kube-apiserver on the balancer".
//!
//! The probe learns which addresses are lbd's from `--config` (its
//! frontends' listen addresses, its `[admin]` address) or from the admin
//! API's `GET /api/v1/status` when that answers, and asks the admin API
//! which servers are down and why. Only after a refusal, with a short
//! timeout, and by default only on loopback or a unix socket: a probe of
//! some host must not wait on an admin API that is not there.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use hyper::StatusCode;

use super::attempt::{Attempt, Outcome};
use super::target::Role;
use crate::admin::status::{BackendStatus, FrontendStatus, ServerStatus, Status};
use crate::cli::{AdminAddr, AdminClient};
use crate::config::{AdminListen, Config};
use crate::net::dial::DialErrorKind;

/// The longest wait for the admin API: on this host it answers in
/// milliseconds; one that takes longer is not going to explain anything.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Where lbctl was told lbd's admin API is (`--admin`, `LBD_ADMIN`, or the default).
#[derive(Debug, Clone)]
pub struct AdminHint {
    /// The address.
    pub addr: AdminAddr,
    /// The bearer token of `--token-file`, if given.
    pub token: Option<String>,
    /// Set when the operator named the address (flag or environment): it
    /// is asked even when it is not on this host.
    pub explicit: bool,
}

/// What the probe knows about lbd: the admin API to ask, and from
/// `--config`, which backend each frontend sends to.
#[derive(Debug)]
pub(crate) struct OwnFrontends {
    /// The admin API to ask, when asking is allowed.
    client: Option<AdminClient>,
    /// From `--config`: frontend name → backend name.
    backends: HashMap<String, String>,
    /// From `--config`: backend name → its servers' `backend/server` labels.
    servers: HashMap<String, Vec<String>>,
}

/// What the admin API said, once per round.
enum Answer {
    Status(Status),
    /// Why there is no status: unreachable, timed out, wants a token…
    Silent(String),
}

impl OwnFrontends {
    /// Picks the admin API to ask: an explicit `--admin` first, then the
    /// config's `[admin] listen`, then the default; only a loopback or unix
    /// address unless named explicitly.
    pub(crate) fn new(hint: Option<AdminHint>, config: Option<&Config>, timeout: Duration) -> Self {
        let mut backends = HashMap::new();
        let mut servers = HashMap::new();
        if let Some(config) = config {
            for frontend in &config.frontends {
                backends.insert(frontend.name.clone(), frontend.backend.clone());
            }
            for backend in &config.backends {
                let names = backend
                    .servers
                    .iter()
                    .map(|s| format!("{}/{}", backend.name, s.name))
                    .collect();
                servers.insert(backend.name.clone(), names);
            }
        }
        let from_config = config.and_then(|c| config_admin(c).map(|addr| (addr, c)));
        let chosen = match (hint, from_config) {
            (Some(hint), _) if hint.explicit => Some((hint.addr, hint.token)),
            (hint, Some((addr, config))) => {
                let token = hint.and_then(|h| h.token).or_else(|| {
                    let file = config.admin.token_file.as_deref()?;
                    crate::cli::read_token_file(file).ok()
                });
                Some((addr, token))
            }
            (Some(hint), None) if is_local(&hint.addr) => Some((hint.addr, hint.token)),
            _ => None,
        };
        let client = chosen.map(|(addr, token)| {
            AdminClient::new(addr, ADMIN_TIMEOUT.min(timeout)).with_token(token)
        });
        OwnFrontends {
            client,
            backends,
            servers,
        }
    }

    /// Rewrites the sentence of every refused attempt that lands on one of
    /// lbd's frontends. Asks the admin API at most once, and only if
    /// something was refused.
    pub(crate) async fn explain_refusals(&self, attempts: &mut [Attempt]) {
        let refused = |a: &Attempt| a.outcome == Outcome::Dial(DialErrorKind::Refused);
        if !attempts.iter().any(refused) {
            return;
        }
        let answer = match &self.client {
            Some(client) => Some(ask(client).await),
            None => None,
        };
        let failed_servers = self.failed_servers(attempts);
        for attempt in attempts.iter_mut().filter(|a| refused(a)) {
            let Some(address) = attempt.address else {
                continue;
            };
            let config_name = (attempt.target.role == Some(Role::Frontend))
                .then(|| attempt.target.name.clone())
                .flatten();
            let detail = match &answer {
                Some(Answer::Status(status)) => {
                    find_frontend(status, address, config_name.as_deref())
                        .map(|frontend| status_says(status, frontend, address))
                }
                _ => None,
            };
            let detail = detail.or_else(|| {
                let name = config_name?;
                let silent = match &answer {
                    Some(Answer::Silent(why)) => why.clone(),
                    Some(Answer::Status(_)) => {
                        "its status lists no frontend on this address".into()
                    }
                    None => "no admin API to ask (set --admin)".into(),
                };
                Some(self.config_says(&name, address, &failed_servers, &silent))
            });
            if let Some(detail) = detail {
                attempt.detail = detail;
            }
        }
    }

    /// From `--config`: per backend, whether every server line of this
    /// round failed (`Some(true)`), some passed, or none was probed.
    fn failed_servers(&self, attempts: &[Attempt]) -> HashMap<String, bool> {
        let mut all_failed: HashMap<String, bool> = HashMap::new();
        for (backend, labels) in &self.servers {
            let lines: Vec<&Attempt> = attempts
                .iter()
                .filter(|a| a.target.role == Some(Role::Server))
                .filter(|a| a.target.name.as_ref().is_some_and(|n| labels.contains(n)))
                .collect();
            if !lines.is_empty() {
                all_failed.insert(backend.clone(), lines.iter().all(|a| !a.passed()));
            }
        }
        all_failed
    }

    /// What the config alone says about a refused frontend of it.
    fn config_says(
        &self,
        frontend: &str,
        address: SocketAddr,
        failed_servers: &HashMap<String, bool>,
        silent: &str,
    ) -> String {
        let backend = self
            .backends
            .get(frontend)
            .map_or("its backend", String::as_str);
        let port = address.port();
        match failed_servers.get(backend) {
            Some(true) => format!(
                "no apiserver is up: every server of backend {backend} fails on the server lines \
                 of this table, and lbd refuses on frontend {frontend} until one is back — fix \
                 them first; if lbd should be running, check it too (systemctl status lbd). The \
                 admin API: {silent}"
            ),
            _ => format!(
                "nothing listens on port {port}, lbd's frontend {frontend}: lbd refuses there while \
                 no server of backend {backend} is up (see the server lines of this table), or lbd \
                 is not running or has not bound {address} (systemctl status lbd; journalctl -u \
                 lbd). The admin API: {silent}"
            ),
        }
    }
}

/// The config's admin address, as a client on this host reaches it.
fn config_admin(config: &Config) -> Option<AdminAddr> {
    match &config.admin.listen {
        AdminListen::Unix(path) => Some(AdminAddr::Unix(path.clone())),
        // Port 0 is a test setup: only the running daemon knows the port.
        AdminListen::Tcp(addr) if addr.port() == 0 => None,
        AdminListen::Tcp(addr) => {
            let ip = match addr.ip() {
                IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            Some(AdminAddr::Tcp(SocketAddr::new(ip, addr.port()).to_string()))
        }
    }
}

/// Whether an admin address is on this host: a unix socket, a loopback IP
/// or `localhost`.
fn is_local(addr: &AdminAddr) -> bool {
    match addr {
        AdminAddr::Unix(_) => true,
        AdminAddr::Tcp(text) => {
            let host = text
                .rsplit_once(':')
                .map_or(text.as_str(), |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.to_canonical().is_loopback())
        }
    }
}

/// `GET /api/v1/status`, or why there is none.
async fn ask(client: &AdminClient) -> Answer {
    let at = client.addr();
    match client.get("/api/v1/status").await {
        Ok(answer) if answer.status == StatusCode::OK => {
            match serde_json::from_slice::<Status>(&answer.body) {
                Ok(status) => Answer::Status(status),
                Err(e) => Answer::Silent(format!(
                    "{at} answered something else than lbd's status: {e}"
                )),
            }
        }
        Ok(answer)
            if answer.status == StatusCode::UNAUTHORIZED
                || answer.status == StatusCode::FORBIDDEN =>
        {
            Answer::Silent(format!(
                "{at} wants the admin token; pass --token-file to see which servers are down"
            ))
        }
        Ok(answer) => Answer::Silent(format!("{at} answered {}", answer.status)),
        Err(e) => Answer::Silent(e.to_string()),
    }
}

/// The running frontend that listens on `address`: by the config's name,
/// by its exact address, or on a wildcard address of the same port when
/// `address` is one of this host's.
fn find_frontend<'a>(
    status: &'a Status,
    address: SocketAddr,
    config_name: Option<&str>,
) -> Option<&'a FrontendStatus> {
    let listens_on = |f: &FrontendStatus| {
        f.listen
            .iter()
            .filter_map(|l| l.parse::<SocketAddr>().ok())
            .any(|l| {
                l == address
                    || (l.ip().is_unspecified()
                        && l.port() == address.port()
                        && l.is_ipv4() == address.is_ipv4()
                        && is_this_hosts(address.ip()))
            })
    };
    status
        .frontends
        .iter()
        .find(|f| config_name == Some(f.name.as_str()) || listens_on(f))
}

/// Whether `ip` is an address of this host (binding to it succeeds).
fn is_this_hosts(ip: IpAddr) -> bool {
    ip.is_loopback() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// What lbd's own status says about a refused frontend.
fn status_says(status: &Status, frontend: &FrontendStatus, address: SocketAddr) -> String {
    let backend = status.backends.iter().find(|b| b.name == frontend.backend);
    let servers = backend.map_or_else(
        || format!("backend {} is not in lbd's status", frontend.backend),
        servers_text,
    );
    let none_up = backend.is_none_or(|b| !b.servers.iter().any(can_serve));
    if frontend.paused || none_up {
        format!(
            "lbd is refusing: no apiserver is up — its frontend {} stops accepting until a \
             server of backend {} is up; {servers}. Fix those servers (lbctl probe --config \
             probes each; lbctl status lists them)",
            frontend.name, frontend.backend
        )
    } else {
        format!(
            "refused, though lbd's frontend {} on {address} is not paused now ({servers}) — a \
             server just came back, or lbd was rebinding its listeners; probe again",
            frontend.name
        )
    }
}

/// Whether lbd would send a connection to this server.
fn can_serve(server: &ServerStatus) -> bool {
    server.health == "up" && server.admin == "ready"
}

/// `cp1 10.0.0.11:6443 down (refused: connection refused), cp2 … disabled`.
fn servers_text(backend: &BackendStatus) -> String {
    if backend.servers.is_empty() {
        return format!("backend {} has no servers", backend.name);
    }
    let each: Vec<String> = backend
        .servers
        .iter()
        .map(|s| {
            let why = match &s.last_check {
                Some(check) if s.health != "up" && !check.detail.is_empty() => {
                    format!(" ({}: {})", check.result, check.detail)
                }
                Some(check) if s.health != "up" => format!(" ({})", check.result),
                _ => String::new(),
            };
            format!("{} {} {}{why}", s.name, s.address, s.state)
        })
        .collect();
    format!("its servers: {}", each.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_admin_address_elsewhere_is_never_asked() {
        let hint = |addr: &str, explicit| {
            Some(AdminHint {
                addr: AdminAddr::Tcp(addr.into()),
                token: None,
                explicit,
            })
        };
        let timeout = Duration::from_secs(3);
        let asks = |hint| OwnFrontends::new(hint, None, timeout).client.is_some();
        assert!(asks(hint("127.0.0.1:8404", false)));
        assert!(!asks(hint("10.0.0.5:8404", false)));
        assert!(asks(hint("10.0.0.5:8404", true)), "named by the operator");
        let client = OwnFrontends::new(hint("127.0.0.1:8404", true), None, timeout).client;
        // However long --timeout is, a silent admin API costs at most 1s.
        assert!(format!("{client:?}").contains("timeout: 1s"), "{client:?}");
    }

    #[test]
    fn only_this_hosts_admin_addresses_count_as_local() {
        for local in ["127.0.0.1:8404", "localhost:8404", "[::1]:8404"] {
            assert!(is_local(&AdminAddr::Tcp(local.into())), "{local}");
        }
        assert!(is_local(&AdminAddr::Unix("/run/lbd/admin.sock".into())));
        assert!(!is_local(&AdminAddr::Tcp("10.0.0.5:8404".into())));
        assert!(!is_local(&AdminAddr::Tcp("lb.example:8404".into())));
    }
}
