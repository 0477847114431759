//! The kube client discovery watches with: kube's HTTP stack (TLS with the
//! kubeconfig's CA and client certificate, its bearer-token layer), with
//! lbd's own connector underneath. The connector dials the backend's own
//! servers, never the kubeconfig's `server:` URL, which is usually the very
//! endpoint lbd serves: a discovery client that had to pass through its own
//! load balancer could not bootstrap it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::client::{Body, ConfigExt};
use tokio::net::TcpStream;
use tower::ServiceBuilder;

use crate::config::KubeAccess;
use crate::net::dial;

/// The addresses the API may be reached at right now, best first (the
/// backend's servers that are up, then those not yet checked).
pub type Candidates = Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>;

/// The URL kube's requests are built on. Its host is never dialed (the
/// connector picks a server of the pool); it only keys hyper's connection pool.
const BASE_URL: &str = "https://kubernetes";

/// The kube client could not be built from the kubeconfig.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the discovery client: {0}")]
pub struct ClientError(#[from] kube::Error);

/// A connector (a tower service from URI to stream) that ignores the URI
/// and dials the first of the backend's servers that answers.
#[derive(Clone)]
pub struct PoolConnector {
    candidates: Candidates,
    timeout: Duration,
    /// The server each connection went to, for tests and logs.
    dialed: Arc<dyn Fn(SocketAddr) + Send + Sync>,
}

impl PoolConnector {
    /// Dials the `candidates` in order, each within `timeout`; `dialed`
    /// hears which one answered.
    pub fn new(
        candidates: Candidates,
        timeout: Duration,
        dialed: impl Fn(SocketAddr) + Send + Sync + 'static,
    ) -> PoolConnector {
        PoolConnector {
            candidates,
            timeout,
            dialed: Arc::new(dialed),
        }
    }
}

impl tower::Service<Uri> for PoolConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _ignored: Uri) -> Self::Future {
        let candidates = (self.candidates)();
        let (timeout, dialed) = (self.timeout, Arc::clone(&self.dialed));
        Box::pin(async move {
            if candidates.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "no server of the backend is up to reach the API through",
                ));
            }
            let mut failures = Vec::with_capacity(candidates.len());
            for addr in candidates {
                match dial::connect(addr, timeout).await {
                    Ok(stream) => {
                        dialed(addr);
                        return Ok(TokioIo::new(stream));
                    }
                    Err(e) => failures.push(format!("{addr}: {} ({})", e.kind.as_str(), e.detail)),
                }
            }
            Err(io::Error::other(format!(
                "no server of the backend answered: {}",
                failures.join("; ")
            )))
        })
    }
}

/// A kube client that reaches the API through `connector`, verifying the
/// apiserver against the kubeconfig's CA for its `tls-server-name` (by
/// default `kubernetes`), and authenticating with its client certificate or token.
pub fn build_client(
    access: &KubeAccess,
    connector: PoolConnector,
) -> Result<kube::Client, ClientError> {
    let mut config = kube::Config::new(Uri::from_static(BASE_URL));
    config.default_namespace = "default".to_owned();
    config.root_cert = Some(access.roots.iter().map(|c| c.to_vec()).collect());
    config.tls_server_name = Some(access.tls_server_name.clone());
    config.auth_info = access.credentials.auth_info().clone();
    let https = config.rustls_https_connector_with_connector(connector)?;
    let http: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        // Both arms of the optional auth layer must fail alike.
        .map_err(tower::BoxError::from)
        .service(http);
    Ok(kube::Client::new(service, config.default_namespace))
}
