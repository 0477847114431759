//! The desired state: what the operator (the config file, with the bytes of
//! every TLS file it names) and the world (DNS answers) want running. Pure
//! data, built without I/O from a config and the lookups' answers; the
//! running daemon is changed only by applying the [`diff`](super::diff) of
//! two of these.

use std::net::SocketAddr;
use std::sync::Arc;

use super::Lookups;
use crate::config::{self, Config, dns_server_name, is_address_of};

/// Everything lbd should be running, as pure data.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The validated config, TLS file contents included.
    pub config: Arc<Config>,
    /// The servers of each backend after DNS, in config order (one list per
    /// backend, same order as `config.backends`).
    pub servers: Vec<Vec<DesiredServer>>,
}

/// Where a server of the desired state comes from (`source` in the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerSource {
    /// An IP literal in the config.
    Config,
    /// One address of a DNS name in the config.
    Dns,
    /// An address the cluster lists for the backend's `[backend.discovery]`.
    Discovered,
}

impl ServerSource {
    /// The status JSON's word.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerSource::Config => "config",
            ServerSource::Dns => "dns",
            ServerSource::Discovered => "discovered",
        }
    }
}

/// One server lbd should forward to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredServer {
    /// Its name: the configured one, or `name@ip` for an address of a DNS name.
    pub name: String,
    /// The configured server it stands for.
    pub configured: String,
    /// Where to dial.
    pub addr: SocketAddr,
    /// Its share of new connections.
    pub weight: u32,
    /// Where it comes from.
    pub source: ServerSource,
}

/// A DNS-named server whose name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsFailure {
    /// The backend.
    pub backend: String,
    /// The configured server name.
    pub server: String,
    /// The resolver's words.
    pub error: String,
    /// How many last known addresses were kept.
    pub kept: usize,
}

/// What resolving a config's names said, for the logs.
#[derive(Debug, Default)]
pub struct DnsReport {
    /// Names that failed to resolve this time (their last known addresses were kept).
    pub failures: Vec<DnsFailure>,
    /// Configured servers (backend, name) with a DNS name that did resolve.
    pub resolved: Vec<(String, String)>,
}

impl Desired {
    /// The desired state of `config` given the DNS `lookups`. A name that
    /// failed keeps the addresses it had in `previous`. Pure: no I/O.
    pub fn resolve(
        config: Arc<Config>,
        lookups: &Lookups,
        previous: Option<&Desired>,
    ) -> (Desired, DnsReport) {
        let mut report = DnsReport::default();
        let mut servers = Vec::with_capacity(config.backends.len());
        for backend in &config.backends {
            let kept_before = previous.and_then(|p| p.servers_of(&backend.name));
            let mut list = Vec::new();
            for spec in &backend.servers {
                list.extend(resolve_server(
                    spec,
                    kept_before,
                    lookups,
                    &backend.name,
                    &mut report,
                ));
            }
            // Discovered servers are the cluster's answer, not the file's:
            // a reload or DNS refresh keeps them while discovery stays on.
            if backend.discovery.is_some() {
                let discovered: Vec<SocketAddr> = kept_before
                    .unwrap_or_default()
                    .iter()
                    .filter(|s| s.source == ServerSource::Discovered)
                    .map(|s| s.addr)
                    .collect();
                add_discovered(&mut list, &discovered);
            }
            servers.push(list);
        }
        (Desired { config, servers }, report)
    }

    /// No frontend and no backend, with `config`'s other settings: what a
    /// starting daemon diffs its first desired state against.
    pub fn nothing(config: &Config) -> Desired {
        Desired {
            config: Arc::new(Config {
                frontends: Vec::new(),
                backends: Vec::new(),
                ..config.clone()
            }),
            servers: Vec::new(),
        }
    }

    /// This desired state with the discovered servers of `backend` replaced
    /// by `addrs` (the configured servers stay; an address one of them
    /// already serves is not added twice). `None` when there is no such
    /// backend. Pure: no I/O.
    pub fn with_discovered(&self, backend: &str, addrs: &[SocketAddr]) -> Option<Desired> {
        let index = self
            .config
            .backends
            .iter()
            .position(|b| b.name == backend)?;
        let mut servers = self.servers.clone();
        let list = servers.get_mut(index)?;
        list.retain(|s| s.source != ServerSource::Discovered);
        add_discovered(list, addrs);
        Some(Desired {
            config: Arc::clone(&self.config),
            servers,
        })
    }

    /// The addresses discovery added to the named backend.
    pub fn discovered(&self, backend: &str) -> Vec<SocketAddr> {
        self.servers_of(backend)
            .unwrap_or_default()
            .iter()
            .filter(|s| s.source == ServerSource::Discovered)
            .map(|s| s.addr)
            .collect()
    }

    /// The desired servers of the named backend.
    pub fn servers_of(&self, backend: &str) -> Option<&[DesiredServer]> {
        let index = self
            .config
            .backends
            .iter()
            .position(|b| b.name == backend)?;
        self.servers.get(index).map(Vec::as_slice)
    }
}

/// Appends a discovered server for each of `addrs` (in address order) that
/// no server of `list` already has, by address or by name. A discovered
/// server is named by its address.
fn add_discovered(list: &mut Vec<DesiredServer>, addrs: &[SocketAddr]) {
    let mut addrs = addrs.to_vec();
    addrs.sort_unstable();
    addrs.dedup();
    for addr in addrs {
        let name = addr.to_string();
        if list.iter().any(|s| s.addr == addr || s.name == name) {
            continue;
        }
        list.push(DesiredServer {
            configured: name.clone(),
            name,
            addr,
            weight: 1,
            source: ServerSource::Discovered,
        });
    }
}

/// The servers one configured server stands for: one for an IP literal,
/// one per address for a DNS name (named `name@ip`, so a server keeps its
/// name and state while the name's other addresses come and go). A name
/// that failed keeps its servers of `before`.
fn resolve_server(
    spec: &config::ServerSpec,
    before: Option<&[DesiredServer]>,
    lookups: &Lookups,
    backend: &str,
    report: &mut DnsReport,
) -> Vec<DesiredServer> {
    let server = |name: String, addr, source| DesiredServer {
        name,
        configured: spec.name.clone(),
        addr,
        weight: spec.weight,
        source,
    };
    if let Some(addr) = spec.address.ip() {
        return vec![server(spec.name.clone(), addr, ServerSource::Config)];
    }
    match lookups.get(&spec.address.host, spec.address.port) {
        Ok(addrs) => {
            report
                .resolved
                .push((backend.to_owned(), spec.name.clone()));
            addrs
                .into_iter()
                .map(|addr| server(dns_server_name(&spec.name, addr), addr, ServerSource::Dns))
                .collect()
        }
        Err(error) => {
            let kept: Vec<DesiredServer> = before
                .unwrap_or_default()
                .iter()
                .filter(|s| s.source == ServerSource::Dns && is_address_of(&s.name, &spec.name))
                .map(|s| server(s.name.clone(), s.addr, ServerSource::Dns))
                .collect();
            report.failures.push(DnsFailure {
                backend: backend.to_owned(),
                server: spec.name.clone(),
                error,
                kept: kept.len(),
            });
            kept
        }
    }
}
