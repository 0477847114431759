//! The EndpointSlices of `default/<service>`, followed with kube's watcher:
//! a list, then a watch from its resourceVersion with bookmarks, a new list
//! when the apiserver says the version is gone (410), and backoff between
//! failed attempts. Each change becomes the full address list.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;

/// The port of a slice whose endpoints are listed: the apiservers' own.
pub const PORT_NAME: &str = "https";

/// What the watch learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The cluster's whole list now (possibly empty), in address order.
    Listed(Vec<SocketAddr>),
    /// A list or watch failed; the watcher tries again after a backoff.
    Failed(String),
}

/// Follows the slices of `service` in namespace `default` until `events`
/// is closed, sending the full list at each change and each failure.
pub async fn run_watch(client: kube::Client, service: &str, events: mpsc::Sender<WatchEvent>) {
    let api: Api<EndpointSlice> = Api::namespaced(client, "default");
    let config =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut slices: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    let mut relisting: Option<BTreeMap<String, Vec<SocketAddr>>> = None;
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(watcher::Event::Init) => {
                relisting = Some(BTreeMap::new());
                continue;
            }
            Ok(watcher::Event::InitApply(slice)) => {
                relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(slice_name(&slice), slice_addresses(&slice));
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                slices = relisting.take().unwrap_or_default();
                listed(&slices)
            }
            Ok(watcher::Event::Apply(slice)) => {
                slices.insert(slice_name(&slice), slice_addresses(&slice));
                listed(&slices)
            }
            Ok(watcher::Event::Delete(slice)) => {
                slices.remove(&slice_name(&slice));
                listed(&slices)
            }
            Err(e) => WatchEvent::Failed(error_chain(&e)),
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

fn slice_name(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

fn listed(slices: &BTreeMap<String, Vec<SocketAddr>>) -> WatchEvent {
    let mut all: Vec<SocketAddr> = slices.values().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    WatchEvent::Listed(all)
}

/// The addresses of a slice's endpoints that are not known to be unready,
/// on its port named `https` (or its only port when that one has no name).
/// Endpoints given by hostname (`FQDN`) are left out: lbd dials addresses.
pub fn slice_addresses(slice: &EndpointSlice) -> Vec<SocketAddr> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(PORT_NAME))
        .or(match ports {
            [only] if only.name.as_deref().unwrap_or("").is_empty() => Some(only),
            _ => None,
        })
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0);
    let Some(port) = port else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| &e.addresses)
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// An error and its causes on one line: kube's top error alone often says
/// only "ServiceError", the cause says "connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_https_port_of_ready_endpoints_is_listed() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": { "name": "kubernetes" },
            "addressType": "IPv4",
            "endpoints": [
                { "addresses": ["10.0.0.1"], "conditions": { "ready": true } },
                { "addresses": ["10.0.0.2"] },
                { "addresses": ["10.0.0.3"], "conditions": { "ready": false } },
                { "addresses": ["cp4.example"] }
            ],
            "ports": [ { "name": "metrics", "port": 9000 }, { "name": "https", "port": 6443, "protocol": "TCP" } ]
        }))
        .unwrap();
        assert_eq!(
            slice_addresses(&slice),
            [
                "10.0.0.1:6443".parse::<SocketAddr>().unwrap(),
                "10.0.0.2:6443".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_slice_without_an_https_port_lists_nothing() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "x" },
            "addressType": "IPv4",
            "endpoints": [ { "addresses": ["10.0.0.1"] } ],
            "ports": [ { "name": "http", "port": 80 }, { "name": "grpc", "port": 90 } ]
        }))
        .unwrap();
        assert!(slice_addresses(&slice).is_empty());
    }
}
