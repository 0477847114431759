//! Building a [`Snapshot`]'s pools from a [`Config`], carrying every server
//! that stays over from the previous snapshot with its state and counters,
//! and the pure [`diff`] of two configs that a reload applies.

mod diff;

pub use diff::{Changes, ConfigDiff, diff};

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::warn;

use crate::config::{self, Config};
use crate::dial;
use crate::pool::{Pool, Server, Snapshot};

/// Pools built from a config, and the DNS names that did not resolve.
#[derive(Debug)]
pub struct ResolvedPools {
    /// One pool per backend, in config order.
    pub pools: Vec<Arc<Pool>>,
    /// Names that failed to resolve this time (their last known addresses were kept).
    pub dns_failures: Vec<DnsFailure>,
    /// Configured servers (backend, name) with a DNS name that did resolve.
    pub dns_resolved: Vec<(String, String)>,
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

/// Builds one pool per backend, logging names that do not resolve. A server
/// keeps its `Arc<Server>` (health, admin state, counters) when its backend,
/// name and address are unchanged.
pub async fn build_pools(config: &Config, previous: Option<&Snapshot>) -> Vec<Arc<Pool>> {
    let resolved = resolve_pools(config, previous).await;
    for failure in &resolved.dns_failures {
        warn!(
            backend = %failure.backend,
            server = %failure.server,
            error = %failure.error,
            kept = failure.kept,
            "DNS resolution failed; keeping the last known addresses"
        );
    }
    resolved.pools
}

/// Builds one pool per backend and reports DNS failures to the caller. A
/// pool whose settings and servers are all unchanged is reused as is, so its
/// balancer keeps its place and callers can tell "nothing changed" by pointer.
pub async fn resolve_pools(config: &Config, previous: Option<&Snapshot>) -> ResolvedPools {
    let mut pools = Vec::with_capacity(config.backends.len());
    let mut dns_failures = Vec::new();
    let mut dns_resolved = Vec::new();
    for backend in &config.backends {
        let mut servers = Vec::new();
        for spec in &backend.servers {
            let addresses = match resolve_server(&backend.name, spec, previous).await {
                Ok(addresses) => {
                    if spec.address.ip().is_none() {
                        dns_resolved.push((backend.name.clone(), spec.name.clone()));
                    }
                    addresses
                }
                Err((error, kept)) => {
                    dns_failures.push(DnsFailure {
                        backend: backend.name.clone(),
                        server: spec.name.clone(),
                        error,
                        kept: kept.len(),
                    });
                    kept
                }
            };
            for (name, addr) in addresses {
                let server = previous
                    .and_then(|p| p.server(&backend.name, &name))
                    .filter(|s| s.addr == addr)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Server::new(&backend.name, &name, addr, spec.weight))
                    });
                server.set_weight(spec.weight);
                servers.push(server);
            }
        }
        let unchanged = previous.and_then(|p| p.pool(&backend.name)).filter(|old| {
            old.spec == *backend
                && old.servers.len() == servers.len()
                && old
                    .servers
                    .iter()
                    .zip(&servers)
                    .all(|(a, b)| Arc::ptr_eq(a, b))
        });
        match unchanged {
            Some(old) => pools.push(Arc::clone(old)),
            None => pools.push(Arc::new(Pool::new(backend.clone(), servers))),
        }
    }
    ResolvedPools {
        pools,
        dns_failures,
        dns_resolved,
    }
}

/// Whether any server of `config` is given by DNS name (and so needs re-resolving).
pub fn has_dns_names(config: &Config) -> bool {
    config
        .backends
        .iter()
        .flat_map(|b| &b.servers)
        .any(|s| s.address.ip().is_none())
}

/// The (server name, address) pairs a configured server stands for: one for
/// an IP literal, one per address for a DNS name, named `name@ip` so a
/// server keeps its name (and state) while the name's other addresses come
/// and go. On failure: the error and the last known pairs.
async fn resolve_server(
    backend: &str,
    spec: &config::ServerSpec,
    previous: Option<&Snapshot>,
) -> Result<Vec<(String, SocketAddr)>, (String, Vec<(String, SocketAddr)>)> {
    if let Some(addr) = spec.address.ip() {
        return Ok(vec![(spec.name.clone(), addr)]);
    }
    match dial::resolve(&spec.address.host, spec.address.port).await {
        Ok(addrs) => Ok(addrs
            .into_iter()
            .map(|addr| (dns_server_name(&spec.name, addr), addr))
            .collect()),
        Err(error) => {
            let prefix = format!("{}@", spec.name);
            let kept = previous
                .and_then(|p| p.pool(backend))
                .map(|pool| {
                    pool.servers
                        .iter()
                        .filter(|s| s.name.starts_with(&prefix))
                        .map(|s| (s.name.clone(), s.addr))
                        .collect()
                })
                .unwrap_or_default();
            Err((error, kept))
        }
    }
}

/// The name of one address of a DNS-named server: `cp3@10.0.0.13`.
pub fn dns_server_name(configured: &str, addr: SocketAddr) -> String {
    format!("{configured}@{}", addr.ip())
}
