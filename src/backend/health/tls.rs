//! The `tls` check: a TCP connection and a full TLS handshake (rustls).
//!
//! A kube-apiserver whose process hangs still completes TCP handshakes in
//! the kernel; only a TLS handshake proves the process answers. With
//! `ca_file` the chain and the name (`sni`, else the server's host) are
//! verified; without it any chain is accepted, but the handshake's own
//! signatures are still checked, so the peer holds the certificate's key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::ServerName;
use rustls::sign::SingleCertAndKey;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{Alive, CheckError};
use crate::config::{self, TlsFileError, TlsFiles};
use crate::net::dial;
use crate::net::tls::AcceptAnyChain;

/// The TLS client side of one backend's checks, built once per
/// `[backend.health]` (the files read once) and shared by its servers.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    /// `cert_file`/`key_file` are set: a client certificate is presented.
    has_client_cert: bool,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").finish_non_exhaustive()
    }
}

/// What a TLS (or HTTPS) check of one server needs: the backend's client
/// and the name to send and verify.
#[derive(Clone)]
pub struct TlsProbe {
    connector: TlsConnector,
    name: ServerName<'static>,
    has_client_cert: bool,
}

impl std::fmt::Debug for TlsProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsProbe")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A TLS setting that cannot be used: an unreadable or invalid file.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{0}; fix the file or the [backend.health] setting")]
    File(#[from] TlsFileError),
    /// The name to check the certificate against is not a DNS name or IP.
    #[error("TLS server name {0:?} is not a valid DNS name or IP address; set `sni`")]
    Name(String),
    /// rustls refused the settings.
    #[error("TLS settings rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The `ca_file` certificates cannot verify anything.
    #[error("ca_file unusable: {0}")]
    Roots(#[from] rustls::client::VerifierBuilderError),
}

impl TlsClient {
    /// Builds the client side from the backend's health settings and the
    /// contents of its files, read when the config was loaded ([`TlsFiles`],
    /// the same parser config validation uses): no file I/O here.
    /// `alpn` lists the protocols to offer (`http/1.1` for HTTPS checks).
    pub fn new(spec: &config::Health, alpn: &[&[u8]]) -> Result<TlsClient, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = TlsFiles::parse(spec, &provider)?;
        let verifier: Arc<dyn ServerCertVerifier> = match files.roots {
            Some(roots) => {
                WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider)).build()?
            }
            None => Arc::new(AcceptAnyChain::new(Arc::clone(&provider))),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let has_client_cert = files.client.is_some();
        let mut tls = match files.client {
            Some(client) => {
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(client)))
            }
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(tls)),
            has_client_cert,
        })
    }
}

impl TlsProbe {
    /// The check of one server through `client`; `host` is the server's
    /// configured host, the name used when `sni` is not set.
    pub fn new(
        client: &TlsClient,
        spec: &config::Health,
        host: &str,
    ) -> Result<TlsProbe, TlsSetupError> {
        let name = spec.sni.as_deref().unwrap_or(host).to_owned();
        let name = ServerName::try_from(name.clone()).map_err(|_| TlsSetupError::Name(name))?;
        Ok(TlsProbe {
            connector: client.connector.clone(),
            name,
            has_client_cert: client.has_client_cert,
        })
    }

    /// Dials `addr` and completes a TLS handshake, all within `timeout`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, CheckError> {
        let deadline = Instant::now() + timeout;
        let stream = dial::connect(addr, timeout).await?;
        match tokio::time::timeout_at(deadline, self.connector.connect(self.name.clone(), stream))
            .await
        {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) if client_cert_required(&e) => Err(CheckError::Tls(format!(
                "TLS handshake failed: {}",
                self.client_cert_words()
            ))),
            Ok(Err(e)) => Err(CheckError::Tls(format!("TLS handshake failed: {e}"))),
            Err(_) => Err(CheckError::Tls(format!(
                "TCP connected but no TLS handshake within {}",
                super::machine::format_elapsed(timeout)
            ))),
        }
    }

    /// What a server's "certificate required" alert means for this check,
    /// in the words `lbctl probe` uses for the same server.
    pub(crate) fn client_cert_words(&self) -> &'static str {
        if self.has_client_cert {
            "the server rejected the client certificate — check that cert_file is signed by \
             the CA the server trusts and that key_file belongs to it"
        } else {
            "the server requires a client certificate — set cert_file and key_file in \
             [backend.health] (kubeadm: /etc/kubernetes/pki/apiserver-kubelet-client.crt and .key)"
        }
    }

    /// The `tls` check: a handshake, then a clean close.
    pub async fn check(&self, addr: SocketAddr, timeout: Duration) -> Result<Alive, CheckError> {
        let tls = self.connect(addr, timeout).await?;
        let (_, session) = tls.get_ref();
        let version = session
            .protocol_version()
            .map_or_else(|| "TLS".to_owned(), |v| format!("{v:?}"));
        let (tcp, _) = tls.into_inner();
        crate::net::socket::reset(tcp);
        Ok(Alive::Ok(format!("{version} handshake with {addr}")))
    }
}

/// Whether `err` or one of its causes is the server's "certificate
/// required" alert. A TLS 1.3 server sends it after the client's side of
/// the handshake is done, so it can surface in the first read (hyper's
/// error) as well as in the handshake. An `io::Error` hides the rustls
/// error it wraps from `source()`, hence the `get_ref`.
pub(crate) fn client_cert_required(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        let tls = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .or_else(|| e.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)) =
            tls
        {
            return true;
        }
        cause = e.source();
    }
    false
}
