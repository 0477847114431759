//! A stand-in for kube-apiserver's health endpoint: TLS with a certificate
//! made at test time (rcgen) and a tiny HTTP responder whose status the
//! test sets, as an apiserver's `/readyz` turns 500 in its shutdown delay.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::TempDir;

/// A test CA and a server certificate it signed.
pub struct Pki {
    /// Holds `ca.crt`.
    pub dir: TempDir,
    /// The CA certificate, for `ca_file`.
    pub ca_file: PathBuf,
    /// A client certificate the CA signed, for `cert_file`.
    pub client_cert_file: PathBuf,
    /// Its key, for `key_file`.
    pub client_key_file: PathBuf,
    server: Arc<rustls::ServerConfig>,
    /// The same server certificate, demanding a client certificate this CA signed.
    server_mtls: Arc<rustls::ServerConfig>,
}

impl Pki {
    /// The server certificate, demanding a client certificate this CA signed
    /// (kube-apiserver's `--client-ca-file`).
    pub fn mtls_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.server_mtls)
    }

    /// A CA and a server certificate for `names` (DNS names or IPs), like
    /// kubeadm's apiserver certificate (`kubernetes`, the node's IP…).
    pub fn new(names: &[&str]) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "lbd test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();

        let client_key = KeyPair::generate().unwrap();
        let client = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .signed_by(&client_key, &ca)
            .unwrap();

        let dir = TempDir::new("pki");
        let ca_file = dir.write("ca.crt", &ca.pem());
        let client_cert_file = dir.write("client.crt", &client.pem());
        let client_key_file = dir.write("client.key", &client_key.serialize_pem());
        let chain = vec![cert.der().clone(), CertificateDer::clone(ca.der())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .unwrap();
        let mut client_roots = rustls::RootCertStore::empty();
        client_roots.add(CertificateDer::clone(ca.der())).unwrap();
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(client_roots),
            Arc::clone(&provider),
        )
        .build()
        .unwrap();
        let server_mtls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain, key)
            .unwrap();
        Pki {
            dir,
            ca_file,
            client_cert_file,
            client_key_file,
            server: Arc::new(server),
            server_mtls: Arc::new(server_mtls),
        }
    }
}

/// An HTTPS server answering every request with the status the test sets.
pub struct HttpsServer {
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
    requests: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl HttpsServer {
    /// Starts answering `status` on 127.0.0.1 (a port of its own).
    pub fn start(pki: &Pki, status: u16) -> HttpsServer {
        HttpsServer::start_at(pki, "127.0.0.1:0".parse().unwrap(), status)
    }

    /// Starts answering `status` on 127.0.0.1 to clients that present a
    /// certificate `pki`'s CA signed (kube-apiserver's client-certificate
    /// authentication); the handshake fails for any other.
    pub fn start_requiring_client_cert(pki: &Pki, status: u16) -> HttpsServer {
        HttpsServer::serve(&pki.server_mtls, "127.0.0.1:0".parse().unwrap(), status)
    }

    /// Starts answering `status` on `addr`.
    pub fn start_at(pki: &Pki, addr: SocketAddr, status: u16) -> HttpsServer {
        HttpsServer::serve(&pki.server, addr, status)
    }

    fn serve(config: &Arc<rustls::ServerConfig>, addr: SocketAddr, status: u16) -> HttpsServer {
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let requests = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = oneshot::channel();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
        let (st, rq) = (Arc::clone(&status), Arc::clone(&requests));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        let (acceptor, st, rq) =
                            (acceptor.clone(), Arc::clone(&st), Arc::clone(&rq));
                        tokio::spawn(async move {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                respond(tls, &st, &rq).await;
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
        HttpsServer {
            addr,
            status,
            requests,
            _stop: stop,
        }
    }

    /// Changes the status every later request gets.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Reads one request head and answers it with `status`, then closes.
async fn respond(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    status: &AtomicU16,
    requests: &AtomicUsize,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    requests.fetch_add(1, Ordering::Relaxed);
    let status = status.load(Ordering::Relaxed);
    let (reason, body) = match status {
        200 => ("OK", "ok"),
        401 => (
            "Unauthorized",
            "{\"kind\":\"Status\",\"reason\":\"Unauthorized\",\"code\":401}",
        ),
        403 => ("Forbidden", "forbidden"),
        _ => (
            "Internal Server Error",
            "[+]ping ok\n[-]shutdown failed: reason withheld\nreadyz check failed\n",
        ),
    };
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(answer.as_bytes()).await;
    let _ = tls.shutdown().await;
}
