//! Building a [`Snapshot`]'s pools from a [`Config`], carrying every server
//! that stays over from the previous snapshot with its state and counters.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::warn;

use crate::config::{self, Config};
use crate::dial;
use crate::pool::{Pool, Server, Snapshot};

/// Builds one pool per backend. A server keeps its `Arc<Server>` (health,
/// admin state, counters) when its backend, name and address are unchanged.
pub async fn build_pools(config: &Config, previous: Option<&Snapshot>) -> Vec<Arc<Pool>> {
    let mut pools = Vec::with_capacity(config.backends.len());
    for backend in &config.backends {
        let mut servers = Vec::new();
        for spec in &backend.servers {
            for (name, addr) in resolve_server(&backend.name, spec, previous).await {
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
        pools.push(Arc::new(Pool::new(backend.clone(), servers)));
    }
    pools
}

/// The (server name, address) pairs a configured server stands for: one for
/// an IP, one per address for a DNS name. A name that resolves to several
/// addresses gets one server each, named `name@ip`.
async fn resolve_server(
    backend: &str,
    spec: &config::ServerSpec,
    previous: Option<&Snapshot>,
) -> Vec<(String, SocketAddr)> {
    if let Some(addr) = spec.address.ip() {
        return vec![(spec.name.clone(), addr)];
    }
    match dial::resolve(&spec.address.host, spec.address.port).await {
        Ok(addrs) if addrs.len() == 1 => vec![(spec.name.clone(), addrs[0])],
        Ok(addrs) => addrs
            .into_iter()
            .map(|addr| (format!("{}@{}", spec.name, addr.ip()), addr))
            .collect(),
        Err(error) => {
            let kept: Vec<(String, SocketAddr)> = previous
                .and_then(|p| p.pool(backend))
                .map(|pool| {
                    pool.servers
                        .iter()
                        .filter(|s| {
                            s.name == spec.name || s.name.starts_with(&format!("{}@", spec.name))
                        })
                        .map(|s| (s.name.clone(), s.addr))
                        .collect()
                })
                .unwrap_or_default();
            warn!(backend, server = %spec.name, %error, kept = kept.len(), "DNS resolution failed; keeping the last known addresses");
            kept
        }
    }
}
