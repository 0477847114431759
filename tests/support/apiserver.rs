//! A stand-in kube-apiserver for `lbctl join-check`: a kubeadm-like PKI
//! (a cluster CA, an apiserver certificate it signed) and an HTTPS server
//! answering the anonymous GET of `kube-public/cluster-info` as a kubeadm
//! cluster does, with each token's detached JWS made by the real algorithm.
//! Written apart from lbd's own code, so the two check each other.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// The path kubeadm's discovery GETs.
pub const CLUSTER_INFO_PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";

/// A cluster CA, as `kubeadm init` makes /etc/kubernetes/pki/ca.crt.
pub struct ClusterCa {
    /// ca.crt.
    pub pem: String,
    /// What `kubeadm init` prints after --discovery-token-ca-cert-hash.
    pub hash: String,
    issuer: Issuer<'static, KeyPair>,
}

impl ClusterCa {
    pub fn new() -> ClusterCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "kubernetes");
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        // kubeadm's pubkeypin: sha256 over the DER SubjectPublicKeyInfo.
        let spki = key.subject_public_key_info();
        let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
        let hash = format!(
            "sha256:{}",
            digest
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        ClusterCa {
            pem,
            hash,
            issuer: Issuer::new(params, key),
        }
    }

    /// An apiserver serving certificate for `sans`, as kubeadm init phase
    /// certs apiserver makes one (signed directly by the CA).
    fn serving(&self, sans: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }
}

/// How the stand-in answers an anonymous GET of cluster-info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anonymous {
    /// 200 with the ConfigMap, as kubeadm's RBAC rule allows.
    Allowed,
    /// 401: kube-apiserver --anonymous-auth=false.
    Unauthenticated,
    /// 403: the RBAC rule for system:anonymous is gone.
    Forbidden,
}

/// What the cluster looks like; changed live with [`ApiServer::update`].
#[derive(Debug, Clone)]
pub struct Spec {
    /// Tokens the bootstrap signer signs cluster-info for: (id, secret).
    pub tokens: Vec<(String, String)>,
    /// The kubeconfig's `server:`; `None` advertises the endpoint the
    /// client used (its Host header), as a cluster whose cluster-info names
    /// the endpoint in use.
    pub server: Option<String>,
    /// How anonymous requests are treated.
    pub anonymous: Anonymous,
}

/// The stand-in, on 127.0.0.1.
pub struct ApiServer {
    pub addr: SocketAddr,
    spec: Arc<Mutex<Spec>>,
    _stop: oneshot::Sender<()>,
}

impl ApiServer {
    /// Serves `spec` with a certificate for `sans` signed by `ca`; cluster-info
    /// carries `advertised_ca` (usually the same CA).
    pub fn start(
        ca: &ClusterCa,
        sans: &[&str],
        advertised_ca: &ClusterCa,
        spec: Spec,
    ) -> ApiServer {
        let (cert, key) = ca.serving(sans);
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let spec = Arc::new(Mutex::new(spec));
        let (stop, stopped) = oneshot::channel::<()>();
        let ca_pem = advertised_ca.pem.clone();
        let shared = Arc::clone(&spec);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        let (acceptor, spec, ca_pem) =
                            (acceptor.clone(), Arc::clone(&shared), ca_pem.clone());
                        tokio::spawn(async move {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                respond(tls, &spec, &ca_pem).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        ApiServer {
            addr,
            spec,
            _stop: stop,
        }
    }

    /// Changes the cluster, as `kubeadm token delete` or an edit would.
    pub fn update(&self, change: impl FnOnce(&mut Spec)) {
        change(&mut self.spec.lock().unwrap());
    }
}

/// Reads one request and answers it, as kube-apiserver would for an
/// anonymous client.
async fn respond<S>(mut tls: S, spec: &Mutex<Spec>, ca_pem: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&request).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let host = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("host: ")
                .or_else(|| l.strip_prefix("Host: "))
        })
        .unwrap_or("")
        .trim()
        .to_owned();
    let spec = spec.lock().unwrap().clone();
    let (status, body) = if path != CLUSTER_INFO_PATH {
        (
            404,
            status_body(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        )
    } else {
        match spec.anonymous {
            Anonymous::Unauthenticated => (401, status_body(401, "Unauthorized", "Unauthorized")),
            Anonymous::Forbidden => (
                403,
                status_body(
                    403,
                    "Forbidden",
                    "configmaps \\\"cluster-info\\\" is forbidden: User \\\"system:anonymous\\\" \
                     cannot get resource \\\"configmaps\\\" in API group \\\"\\\" in the \
                     namespace \\\"kube-public\\\"",
                ),
            ),
            Anonymous::Allowed => {
                let server = spec.server.clone().unwrap_or(format!("https://{host}"));
                (200, cluster_info(&server, ca_pem, &spec.tokens))
            }
        }
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        _ => "Not Found",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(response.as_bytes()).await;
    let _ = tls.shutdown().await;
}

fn status_body(code: u16, reason: &str, message: &str) -> String {
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"{message}","reason":"{reason}","code":{code}}}"#
    )
}

/// The ConfigMap as kubeadm's bootstrap-token phase writes it
/// (clientcmd's YAML kubeconfig) and the bootstrap signer signs it.
pub fn cluster_info(server: &str, ca_pem: &str, tokens: &[(String, String)]) -> String {
    let kubeconfig = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: \
         {server}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\n\
         preferences: {{}}\nusers: null\n",
        STANDARD.encode(ca_pem)
    );
    let mut data = serde_json::Map::new();
    for (id, secret) in tokens {
        data.insert(
            format!("jws-kubeconfig-{id}"),
            detached_jws(&kubeconfig, id, secret).into(),
        );
    }
    data.insert("kubeconfig".into(), kubeconfig.into());
    serde_json::json!({
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {
            "name": "cluster-info",
            "namespace": "kube-public",
            "uid": "6f1d4c2e-0000-4000-8000-000000000001",
            "resourceVersion": "321",
            "creationTimestamp": "2026-12-01T10:00:00Z"
        },
        "data": data
    })
    .to_string()
}

/// The detached JWS of staging/src/k8s.io/cluster-bootstrap/token/jws/jws.go
/// (ComputeDetachedSignature): go-jose's compact HS256 serialization of
/// `content` with the protected header {"alg":"HS256","kid":ID} (keys in
/// Go's sorted map order), the key being the secret zero-padded to 32
/// bytes, and the payload part removed: `header..signature`.
pub fn detached_jws(content: &str, id: &str, secret: &str) -> String {
    let header = serde_json::json!({ "alg": "HS256", "kid": id }).to_string();
    let header = URL_SAFE_NO_PAD.encode(header);
    let payload = URL_SAFE_NO_PAD.encode(content);
    let mut key = [0u8; 32];
    let secret = secret.as_bytes();
    let key: Vec<u8> = if secret.len() >= key.len() {
        secret.to_vec()
    } else {
        key[..secret.len()].copy_from_slice(secret);
        key.to_vec()
    };
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        format!("{header}.{payload}").as_bytes(),
    );
    format!("{header}..{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}
