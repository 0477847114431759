//! A stand-in kube-apiserver for discovery: TLS with client-certificate
//! authentication, and the EndpointSlice API as the real one serves it
//! (`GET /apis/discovery.k8s.io/v1/namespaces/default/endpointslices` with
//! a `labelSelector`): the list with its resourceVersion, and the watch as
//! a chunked stream of JSON lines (`ADDED`/`MODIFIED`/`DELETED`, `BOOKMARK`
//! when asked for), which answers a resourceVersion older than its history
//! with an `ERROR` event of code 410, as an apiserver does after
//! compaction. Written apart from lbd's own code (no kube types), so the
//! two check each other; `tests/discovery.rs` also checks it with kubectl.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

use super::https::Pki;

/// The path of the EndpointSlices of namespace `default`.
pub const SLICES_PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

/// What the cluster holds, and how the stand-in misbehaves.
#[derive(Debug)]
struct Cluster {
    /// The service whose slice is served.
    service: String,
    /// The current resourceVersion (bumped by every change).
    version: u64,
    /// The slice's endpoints and port; `None`: the slice does not exist.
    slice: Option<(Vec<String>, u16)>,
    /// Every change as a watch event line, with its version.
    history: Vec<(u64, String)>,
    /// Versions at or below this are gone (compacted): a watch from one gets 410.
    compacted: u64,
    /// Answer every request with this status instead.
    fail_with: Option<u16>,
    /// Bumped to end every open watch stream.
    generation: u64,
}

/// The stand-in, on 127.0.0.1.
pub struct KubeApi {
    pub addr: SocketAddr,
    cluster: Arc<Mutex<Cluster>>,
    changed: watch::Sender<u64>,
    requests: Arc<AtomicUsize>,
    lists: Arc<AtomicUsize>,
    watches: Arc<AtomicUsize>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl KubeApi {
    /// Stops serving: the listener closes and open connections end.
    pub fn stop(&self) {
        drop(self.stop.lock().unwrap().take());
        super::wait_until(Duration::from_secs(5), "the stand-in API to stop", || {
            std::net::TcpStream::connect(self.addr).is_err()
        });
    }

    /// Serves the slice of `service` listing `addresses` on `port` (named
    /// `https`), with `pki`'s server certificate, to clients presenting a
    /// certificate its CA signed.
    pub fn start(pki: &Pki, service: &str, addresses: &[&str], port: u16) -> KubeApi {
        KubeApi::start_at(
            pki,
            "127.0.0.1:0".parse().unwrap(),
            service,
            addresses,
            port,
        )
    }

    /// Like [`KubeApi::start`] on a given address.
    pub fn start_at(
        pki: &Pki,
        addr: SocketAddr,
        service: &str,
        addresses: &[&str],
        port: u16,
    ) -> KubeApi {
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let cluster = Arc::new(Mutex::new(Cluster {
            service: service.to_owned(),
            version: 100,
            slice: None,
            history: Vec::new(),
            compacted: 0,
            fail_with: None,
            generation: 0,
        }));
        let (changed, _) = watch::channel(0);
        let api_parts = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.mtls_config());
        let shared = Shared {
            cluster: Arc::clone(&cluster),
            changed: changed.clone(),
            requests: Arc::clone(&api_parts.0),
            lists: Arc::clone(&api_parts.1),
            watches: Arc::clone(&api_parts.2),
        };
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        let (acceptor, shared) = (acceptor.clone(), shared.clone());
                        tokio::spawn(async move {
                            let Ok(tls) = acceptor.accept(stream).await else {
                                return;
                            };
                            let service = hyper::service::service_fn(move |request| {
                                let shared = shared.clone();
                                async move { Ok::<_, Infallible>(shared.answer(request).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        let api = KubeApi {
            addr,
            cluster,
            changed,
            requests: api_parts.0,
            lists: api_parts.1,
            watches: api_parts.2,
            stop: Mutex::new(Some(stop)),
        };
        api.set_endpoints(addresses, port);
        api
    }

    /// Changes the slice's endpoints (an apiserver joined or left): one
    /// `MODIFIED` event (`ADDED` the first time).
    pub fn set_endpoints(&self, addresses: &[&str], port: u16) {
        let mut cluster = self.cluster.lock().unwrap();
        let kind = if cluster.slice.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        cluster.version += 1;
        cluster.slice = Some((addresses.iter().map(|a| a.to_string()).collect(), port));
        let line = event_line(kind, &slice_json(&cluster).unwrap());
        let version = cluster.version;
        cluster.history.push((version, line));
        drop(cluster);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Answers every request with `status` (`None`: serve again).
    pub fn fail_with(&self, status: Option<u16>) {
        self.cluster.lock().unwrap().fail_with = status;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Ends every open watch stream (a broken watch: the client must watch again).
    pub fn break_watches(&self) {
        self.cluster.lock().unwrap().generation += 1;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Forgets the history (etcd compaction) and ends open watches: a
    /// watch from any version a client holds gets `410 Gone`, and the
    /// client must list again.
    pub fn compact(&self) {
        let mut cluster = self.cluster.lock().unwrap();
        // Other objects changed meanwhile: every version a client holds is now too old.
        cluster.version += 1;
        cluster.compacted = cluster.version;
        cluster.history.clear();
        cluster.generation += 1;
        drop(cluster);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Requests answered so far (any path).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// List requests answered with the slices so far.
    pub fn lists(&self) -> usize {
        self.lists.load(Ordering::Relaxed)
    }

    /// Watch streams started so far.
    pub fn watches(&self) -> usize {
        self.watches.load(Ordering::Relaxed)
    }

    /// A kubeconfig as `kubeadm kubeconfig user` writes it: the CA and a
    /// client certificate embedded, and `server` (which discovery must not use).
    pub fn kubeconfig(pki: &Pki, server: &str) -> String {
        use base64::Engine as _;
        let b64 = |path: &std::path::Path| {
            base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server}\n  name: lab\n\
             contexts:\n- context:\n    cluster: lab\n    user: lbd-discovery\n  name: lbd-discovery@lab\n\
             current-context: lbd-discovery@lab\npreferences: {{}}\nusers:\n- name: lbd-discovery\n  user:\n\
             \x20   client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&pki.ca_file),
            b64(&pki.client_cert_file),
            b64(&pki.client_key_file),
        )
    }
}

#[derive(Clone)]
struct Shared {
    cluster: Arc<Mutex<Cluster>>,
    changed: watch::Sender<u64>,
    requests: Arc<AtomicUsize>,
    lists: Arc<AtomicUsize>,
    watches: Arc<AtomicUsize>,
}

type Body = BoxBody<Bytes, Infallible>;

impl Shared {
    async fn answer(&self, request: Request<Incoming>) -> Response<Body> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let path = request.uri().path().to_owned();
        let query = parse_query(request.uri().query().unwrap_or(""));
        let fail_with = self.cluster.lock().unwrap().fail_with;
        if let Some(code) = fail_with {
            return status_response(code, "InternalError", "the stand-in was told to fail");
        }
        if request.method() != hyper::Method::GET || path != SLICES_PATH {
            return status_response(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        let selector = query.get("labelSelector").cloned().unwrap_or_default();
        if query.get("watch").map(String::as_str) == Some("true")
            || query.get("watch").map(String::as_str) == Some("1")
        {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
            let timeout = query
                .get("timeoutSeconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(300u64);
            self.watches.fetch_add(1, Ordering::Relaxed);
            return self.watch(selector, from, bookmarks, Duration::from_secs(timeout));
        }
        self.lists.fetch_add(1, Ordering::Relaxed);
        let cluster = self.cluster.lock().unwrap();
        let items: Vec<Value> = slice_json(&cluster)
            .filter(|_| selects(&selector, &cluster.service))
            .into_iter()
            .collect();
        let list = json!({
            "kind": "EndpointSliceList",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": { "resourceVersion": cluster.version.to_string() },
            "items": items,
        });
        json_response(200, list.to_string())
    }

    /// A watch: every event after `from`, then each new one as it happens,
    /// one JSON object per line in a chunked body.
    fn watch(
        &self,
        selector: String,
        from: u64,
        bookmarks: bool,
        timeout: Duration,
    ) -> Response<Body> {
        let (frames, body) = tokio::sync::mpsc::channel::<Bytes>(64);
        let shared = self.clone();
        tokio::spawn(async move {
            let mut changed = shared.changed.subscribe();
            let (service, generation, compacted) = {
                let c = shared.cluster.lock().unwrap();
                (c.service.clone(), c.generation, c.compacted)
            };
            if from != 0 && from < compacted {
                let gone = json!({
                    "type": "ERROR",
                    "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure",
                        "message": format!("too old resource version: {from} ({compacted})"),
                        "reason": "Expired", "code": 410
                    }
                });
                let _ = frames.send(Bytes::from(format!("{gone}\n"))).await;
                return;
            }
            let selected = selects(&selector, &service);
            let mut sent = from;
            let deadline = tokio::time::Instant::now() + timeout;
            let mut bookmark = tokio::time::interval(Duration::from_millis(500));
            loop {
                let (lines, version, now_generation) = {
                    let c = shared.cluster.lock().unwrap();
                    let lines: Vec<(u64, String)> = c
                        .history
                        .iter()
                        .filter(|(v, _)| *v > sent)
                        .cloned()
                        .collect();
                    (lines, c.version, c.generation)
                };
                if now_generation != generation {
                    return; // the stream ends: a broken watch
                }
                for (v, line) in lines {
                    sent = v;
                    if selected && frames.send(Bytes::from(line + "\n")).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = bookmark.tick() => {
                        if bookmarks {
                            let mark = json!({
                                "type": "BOOKMARK",
                                "object": {
                                    "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                                    "metadata": { "resourceVersion": version.max(sent).to_string() }
                                }
                            });
                            if frames.send(Bytes::from(format!("{mark}\n"))).await.is_err() {
                                return;
                            }
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => return,
                }
            }
        });
        let stream = futures::stream::unfold(body, |mut body| async move {
            body.recv()
                .await
                .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), body))
        });
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap()
    }
}

fn selects(selector: &str, service: &str) -> bool {
    selector.is_empty() || selector == format!("kubernetes.io/service-name={service}")
}

/// The slice as the apiserver's lease reconciler writes it for `kubernetes`.
fn slice_json(cluster: &Cluster) -> Option<Value> {
    let (addresses, port) = cluster.slice.as_ref()?;
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({ "addresses": [a], "conditions": { "ready": true } }))
        .collect();
    Some(json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": cluster.service,
            "namespace": "default",
            "resourceVersion": cluster.version.to_string(),
            "labels": { "kubernetes.io/service-name": cluster.service },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [ { "name": "https", "port": port, "protocol": "TCP" } ],
    }))
}

fn event_line(kind: &str, object: &Value) -> String {
    json!({ "type": kind, "object": object }).to_string()
}

fn json_response(status: u16, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(body))))
        .unwrap()
}

fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    });
    json_response(code, body.to_string())
}

/// `a=b&c=d`, percent-decoded.
fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
