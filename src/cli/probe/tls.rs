//! The TLS step of a probe: a rustls handshake whose verifier records the
//! chain ([`AcceptAnyChain::recording`]), classified failures, and a report
//! of the session.
//! The stream keeps the first bytes the peer sent: a plaintext answer on a
//! TLS port is recognised by them.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{AlertDescription, ClientConfig, InvalidMessage};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::ProbeError;
use super::cert::CertInfo;
use crate::config::{self, TlsFiles};
use crate::net::tls::{AcceptAnyChain, RecordedChain};

/// How much of the peer's first bytes is kept to recognise a plaintext answer.
const HEAD_BYTES: usize = 64;

/// TLS settings shared by every attempt at one target.
#[derive(Debug)]
pub(crate) struct TlsSettings {
    /// Server name sent in the handshake; `None` uses the target's host.
    pub sni: Option<String>,
    /// The `--ca` file, named in messages.
    pub ca_path: Option<PathBuf>,
    verifier: Option<Arc<WebPkiServerVerifier>>,
    client: Option<Arc<CertifiedKey>>,
    alpn: Vec<Vec<u8>>,
    provider: Arc<CryptoProvider>,
}

impl TlsSettings {
    /// Reads the CA bundle and client certificate with the reader lbd's own
    /// checks use ([`TlsFiles`]), so a bad file stops the probe before any
    /// dial instead of failing every attempt.
    pub(crate) fn load(
        sni: Option<String>,
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        for_http: bool,
    ) -> Result<TlsSettings, ProbeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let read = |key: &'static str, path: Option<&Path>| {
            path.map(|path| config::FileContents::read(key, path))
                .transpose()
                .map_err(|e| tls_file(path.unwrap_or(Path::new(&e.path)), &e.reason))
        };
        let files = config::Health {
            ca_file: read("ca_file", ca)?,
            cert_file: read("cert_file", cert)?,
            key_file: read("key_file", key)?,
            ..config::Health::default()
        };
        let files = TlsFiles::parse(&files, &provider).map_err(|e| {
            let path = match e.key {
                "ca_file" => ca,
                "cert_file" => cert,
                _ => key,
            };
            tls_file(path.unwrap_or(Path::new(&e.path)), &e.reason)
        })?;
        let verifier = match (ca, files.roots) {
            (Some(path), Some(roots)) => Some(
                WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                    .build()
                    .map_err(|e| tls_file(path, &e.to_string()))?,
            ),
            _ => None,
        };
        // HTTP/1.1 only when we GET: the probe's client speaks HTTP/1.1. A bare
        // TLS probe offers h2 too, to report what the server picks.
        let alpn = if for_http {
            vec![b"http/1.1".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        Ok(TlsSettings {
            sni,
            ca_path: ca.map(Path::to_path_buf),
            verifier,
            client: files.client,
            alpn,
            provider,
        })
    }

    /// Whether a client certificate is presented.
    pub(crate) fn has_client_cert(&self) -> bool {
        self.client.is_some()
    }

    fn client_config(
        &self,
        recorded: Arc<Mutex<RecordedChain>>,
    ) -> Result<ClientConfig, rustls::Error> {
        let verifier =
            AcceptAnyChain::recording(Arc::clone(&self.provider), self.verifier.clone(), recorded);
        let builder = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match &self.client {
            Some(client) => builder
                .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(Arc::clone(client)))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        Ok(config)
    }
}

fn tls_file(path: &Path, reason: &str) -> ProbeError {
    ProbeError::TlsFile {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    }
}

/// What the server presented, and the probe's verdicts on it.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct TlsReport {
    /// Negotiated protocol, e.g. `TLSv1.3`.
    pub version: Option<String>,
    /// Negotiated cipher suite.
    pub cipher: Option<String>,
    /// Negotiated ALPN protocol (`h2` for kube-apiserver).
    pub alpn: Option<String>,
    /// The SNI sent; none when probing an IP without `--sni`.
    pub sni: Option<String>,
    /// The leaf certificate.
    pub certificate: Option<CertInfo>,
    /// Subjects of the further certificates the server sent.
    pub chain: Vec<String>,
    /// With `--ca`: whether the chain leads to it; without, `null` (not verified).
    pub chain_verified: Option<bool>,
    /// Why the chain did not verify.
    pub chain_error: Option<String>,
    /// The name or IP looked for in the SANs.
    pub checked_name: Option<String>,
    /// Whether `checked_name` is among the SANs.
    pub name_in_sans: Option<bool>,
    /// The certificate could not be parsed.
    pub certificate_error: Option<String>,
    /// The certificates as sent, the leaf first: `lbctl join-check`
    /// verifies them against the CA it learns later.
    #[serde(skip)]
    pub der_chain: Vec<CertificateDer<'static>>,
}

/// Why a handshake failed, in the terms the operator acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsFailureKind {
    /// The peer closed or reset without sending a byte.
    AcceptedClosed,
    /// No answer to the client hello within the timeout.
    Timeout,
    /// The peer answered with something that is not TLS.
    Plaintext {
        /// It looks like an HTTP response.
        http: bool,
        /// The first line (or bytes) the peer sent, for the message.
        sample: String,
    },
    /// The record layer overflowed: the two ends disagree on framing.
    RecordOverflow,
    /// The server demands a client certificate.
    ClientCertRequired,
    /// The server sent a TLS alert.
    Alert(String),
    /// Anything else; the error says what.
    Other,
}

/// A failed handshake: why, rustls's or the OS's words, and what was seen.
#[derive(Debug)]
pub(crate) struct TlsFailure {
    /// The classified reason.
    pub kind: TlsFailureKind,
    /// The underlying error text.
    pub error: String,
    /// Whatever was learned before the failure (the certificate, often).
    pub report: TlsReport,
}

/// The client side of an established probe TLS connection.
pub(crate) type ProbeTlsStream = tokio_rustls::client::TlsStream<Peeking<TcpStream>>;

/// Runs the handshake on a connected stream within `timeout`.
pub(crate) async fn handshake(
    stream: TcpStream,
    settings: &TlsSettings,
    server_name: ServerName<'static>,
    timeout: Duration,
) -> Result<(ProbeTlsStream, TlsReport), TlsFailure> {
    let recorded = Arc::new(Mutex::new(RecordedChain::default()));
    let received = Arc::new(Mutex::new(Received::default()));
    let sni = match &server_name {
        ServerName::DnsName(name) => Some(name.as_ref().to_owned()),
        _ => None,
    };
    let config = settings
        .client_config(Arc::clone(&recorded))
        .map_err(|e| TlsFailure {
            kind: TlsFailureKind::Other,
            error: e.to_string(),
            report: TlsReport::default(),
        })?;
    let connector = TlsConnector::from(Arc::new(config));
    let peeking = Peeking {
        inner: stream,
        received: Arc::clone(&received),
    };
    let outcome = tokio::time::timeout(timeout, connector.connect(server_name, peeking)).await;
    let mut report = recorded_report(&recorded, settings.verifier.is_some());
    report.sni = sni;
    match outcome {
        Ok(Ok(stream)) => {
            let (_, connection) = stream.get_ref();
            report.version = connection.protocol_version().map(|v| {
                let name = format!("{v:?}");
                name.replacen("TLSv1_", "TLSv1.", 1)
            });
            report.cipher = connection
                .negotiated_cipher_suite()
                .map(|suite| format!("{:?}", suite.suite()));
            report.alpn = connection
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            Ok((stream, report))
        }
        Ok(Err(e)) => Err(TlsFailure {
            kind: classify(&e, &lock(&received)),
            error: e.to_string(),
            report,
        }),
        Err(_) => {
            let received = lock(&received);
            let kind = plaintext(&received.head).unwrap_or(if received.total == 0 {
                TlsFailureKind::Timeout
            } else {
                TlsFailureKind::Other
            });
            Err(TlsFailure {
                kind,
                error: format!(
                    "handshake not finished within {timeout:?} ({} bytes received)",
                    received.total
                ),
                report,
            })
        }
    }
}

/// Names what a handshake error means; the first bytes the peer sent come first,
/// since rustls only sees "invalid content type" where the operator needs "HTTP".
fn classify(err: &io::Error, received: &Received) -> TlsFailureKind {
    if let Some(kind) = plaintext(&received.head) {
        return kind;
    }
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidMessage(InvalidMessage::MessageTooLarge))
        | Some(rustls::Error::AlertReceived(AlertDescription::RecordOverflow)) => {
            TlsFailureKind::RecordOverflow
        }
        Some(rustls::Error::AlertReceived(AlertDescription::CertificateRequired)) => {
            TlsFailureKind::ClientCertRequired
        }
        Some(rustls::Error::AlertReceived(alert)) => TlsFailureKind::Alert(format!("{alert:?}")),
        Some(_) => TlsFailureKind::Other,
        None if received.total == 0
            && matches!(
                err.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ) =>
        {
            TlsFailureKind::AcceptedClosed
        }
        None => TlsFailureKind::Other,
    }
}

/// A TLS record starts with a content type 0x14..=0x18 and major version 3;
/// anything else the peer sends first is plaintext (HTTP, SSH, a banner).
fn plaintext(head: &[u8]) -> Option<TlsFailureKind> {
    let looks_tls = match head {
        [] => return None,
        [first] => (0x14..=0x18).contains(first),
        [first, second, ..] => (0x14..=0x18).contains(first) && *second == 0x03,
    };
    if looks_tls {
        return None;
    }
    let line = head
        .split(|b| *b == b'\r' || *b == b'\n')
        .next()
        .unwrap_or_default();
    let sample = if !line.is_empty() && line.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(line).into_owned()
    } else {
        let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("bytes {}", hex.join(" "))
    };
    Some(TlsFailureKind::Plaintext {
        http: head.starts_with(b"HTTP/"),
        sample,
    })
}

fn recorded_report(recorded: &Mutex<RecordedChain>, with_ca: bool) -> TlsReport {
    let recorded = lock(recorded);
    let mut report = TlsReport::default();
    if let Some(leaf) = recorded.chain.first() {
        match CertInfo::parse(leaf) {
            Ok(info) => report.certificate = Some(info),
            Err(e) => report.certificate_error = Some(e),
        }
        report.chain = recorded.chain[1..]
            .iter()
            .map(|der| CertInfo::parse(der).map_or_else(|e| e, |info| info.subject))
            .collect();
        report.der_chain.clone_from(&recorded.chain);
        if with_ca {
            report.chain_verified = Some(recorded.chain_error.is_none());
            report.chain_error.clone_from(&recorded.chain_error);
        }
    }
    report
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Bytes the peer has sent: how many, and the first [`HEAD_BYTES`].
#[derive(Debug, Default)]
struct Received {
    total: u64,
    head: Vec<u8>,
}

/// A stream that remembers the first bytes it read, so a failed handshake
/// can say what the peer sent instead.
#[derive(Debug)]
pub(crate) struct Peeking<S> {
    inner: S,
    received: Arc<Mutex<Received>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Peeking<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let fresh = &buf.filled()[before..];
        if !fresh.is_empty() {
            let mut received = lock(&this.received);
            received.total += fresh.len() as u64;
            let room = HEAD_BYTES.saturating_sub(received.head.len());
            received
                .head
                .extend_from_slice(&fresh[..room.min(fresh.len())]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Peeking<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_plaintext_answers() {
        assert_eq!(
            plaintext(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
            Some(TlsFailureKind::Plaintext {
                http: true,
                sample: "HTTP/1.1 400 Bad Request".into()
            })
        );
        assert_eq!(
            plaintext(b"SSH-2.0-OpenSSH_9.2\r\n"),
            Some(TlsFailureKind::Plaintext {
                http: false,
                sample: "SSH-2.0-OpenSSH_9.2".into()
            })
        );
        assert_eq!(
            plaintext(&[0x00, 0x01]),
            Some(TlsFailureKind::Plaintext {
                http: false,
                sample: "bytes 00 01".into()
            })
        );
        assert_eq!(
            plaintext(&[0x16, 0x03, 0x03, 0x00, 0x7a]),
            None,
            "a handshake record"
        );
        assert_eq!(plaintext(&[0x15, 0x03, 0x03]), None, "an alert record");
        assert_eq!(plaintext(&[]), None);
    }

    #[test]
    fn a_silent_close_is_accept_then_close() {
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(
            classify(&eof, &Received::default()),
            TlsFailureKind::AcceptedClosed
        );
        let overflow = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(InvalidMessage::MessageTooLarge),
        );
        assert_eq!(
            classify(&overflow, &Received::default()),
            TlsFailureKind::RecordOverflow
        );
    }
}
