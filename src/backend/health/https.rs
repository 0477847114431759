//! The `https` check: TLS, then `GET path` (default `/readyz`) with hyper.
//!
//! 2xx passes. 401/403 means the apiserver is alive and answering but the
//! check is not allowed in (anonymous auth disabled, no client certificate):
//! that is reported as `auth_error` and counts as alive, so a credentials
//! mistake never takes a whole control plane out of rotation. Any other
//! status fails: this is how a kube-apiserver in its shutdown delay (its
//! `/readyz` failing while TCP still answers) stops getting new connections.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use tokio::time::Instant;

use super::tls::{TlsClient, TlsProbe, TlsSetupError, client_cert_required};
use super::{Alive, CheckError};
use crate::config;
use crate::net::http_client::{self, BodyEnd};

/// How much of a failing answer's body is kept for the check's detail:
/// enough for kube-apiserver's `[-]etcd failed: reason withheld` lines.
const BODY_EXCERPT: usize = 512;

/// An HTTPS check of one server.
#[derive(Debug, Clone)]
pub struct HttpsProbe {
    tls: TlsProbe,
    path: String,
    host: String,
}

impl HttpsProbe {
    /// What the TLS client of an HTTPS check offers: HTTP/1.1 (hyper's
    /// client here speaks nothing else).
    pub const ALPN: &[&[u8]] = &[b"http/1.1"];

    /// The check of one server through `client` (built with [`Self::ALPN`]).
    pub fn new(
        client: &TlsClient,
        spec: &config::Health,
        host: &str,
    ) -> Result<HttpsProbe, TlsSetupError> {
        Ok(HttpsProbe {
            tls: TlsProbe::new(client, spec, host)?,
            path: spec.path.clone(),
            host: spec.sni.clone().unwrap_or_else(|| host.to_owned()),
        })
    }

    /// Connects, shakes hands and asks for the path, all within `timeout`.
    /// A request lbd cannot build is its own failure (`check_error`), found
    /// before any dial: it says nothing of the server.
    pub async fn check(&self, addr: SocketAddr, timeout: Duration) -> Result<Alive, CheckError> {
        let request = self.request()?;
        let deadline = Instant::now() + timeout;
        let tls = self.tls.connect(addr, timeout).await?;
        match tokio::time::timeout_at(deadline, self.exchange(tls, request)).await {
            Ok(result) => result,
            Err(_) => Err(CheckError::Http(format!(
                "GET {}: no answer within {}",
                self.path,
                super::machine::format_elapsed(timeout)
            ))),
        }
    }

    /// The check's request, or why lbd cannot build it (validation refuses
    /// such a `path`; this is the backstop).
    fn request(&self) -> Result<Request<Empty<Bytes>>, CheckError> {
        http_client::get(
            &self.path,
            &self.host,
            concat!("lbd/", env!("CARGO_PKG_VERSION")),
        )
        .map_err(|e| {
            CheckError::Setup(format!(
                "{e}: fix the health check's `path` (or `sni`) in the config"
            ))
        })
    }

    async fn exchange(
        &self,
        tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        request: Request<Empty<Bytes>>,
    ) -> Result<Alive, CheckError> {
        let answer = http_client::exchange(tls, request, BODY_EXCERPT)
            .await
            .map_err(|e| {
                if client_cert_required(&e) {
                    CheckError::Http(format!(
                        "GET {}: {}",
                        self.path,
                        self.tls.client_cert_words()
                    ))
                } else {
                    CheckError::Http(format!("GET {}: {e}", self.path))
                }
            })?;
        // The body is read (its first bytes) so a failure can say why: a
        // long `/readyz?verbose` is quoted from its start; one cut short by
        // a broken connection is not quoted.
        let body = match answer.ended {
            BodyEnd::Whole | BodyEnd::TooLong => answer.body,
            BodyEnd::Broken(_) => Bytes::new(),
        };
        self.verdict(answer.status, &body)
    }

    fn verdict(&self, status: StatusCode, body: &[u8]) -> Result<Alive, CheckError> {
        let mut detail = format!("GET {}: {status}", self.path);
        let excerpt = excerpt(body);
        if !excerpt.is_empty() {
            detail.push_str(": ");
            detail.push_str(&excerpt);
        }
        if status.is_success() {
            Ok(Alive::Ok(format!("GET {}: {status}", self.path)))
        } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            Ok(Alive::AuthError(detail))
        } else {
            Err(CheckError::Http(detail))
        }
    }
}

/// The body's first lines on one line, control characters dropped, cut short.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> HttpsProbe {
        let spec = config::Health::default();
        let client = TlsClient::new(&spec, HttpsProbe::ALPN).unwrap();
        HttpsProbe::new(&client, &spec, "127.0.0.1").unwrap()
    }

    #[test]
    fn statuses_map_to_verdicts() {
        let p = probe();
        assert!(matches!(p.verdict(StatusCode::OK, b"ok"), Ok(Alive::Ok(_))));
        assert!(matches!(
            p.verdict(StatusCode::UNAUTHORIZED, b""),
            Ok(Alive::AuthError(_))
        ));
        assert!(matches!(
            p.verdict(StatusCode::FORBIDDEN, b""),
            Ok(Alive::AuthError(_))
        ));
        match p.verdict(
            StatusCode::INTERNAL_SERVER_ERROR,
            b"[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed\n",
        ) {
            Err(CheckError::Http(detail)) => assert_eq!(
                detail,
                "GET /readyz: 500 Internal Server Error: [+]ping ok [-]etcd failed: reason withheld readyz check failed"
            ),
            other => panic!("{other:?}"),
        }
        assert!(p.verdict(StatusCode::NOT_FOUND, b"").is_err());
    }

    #[tokio::test]
    async fn a_request_lbd_cannot_build_is_a_check_error_and_dials_nothing() {
        // Nothing listens on port 1: a check that dialled would be refused.
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        for path in ["/ready z", "/readyz\r\nHost: evil", "/\u{0}"] {
            let mut p = probe();
            p.path = path.to_owned();
            match p.check(addr, Duration::from_secs(1)).await {
                Err(err @ CheckError::Setup(_)) => {
                    assert_eq!(err.result(), "check_error");
                    assert!(err.to_string().contains("`path`"), "{err}");
                }
                other => panic!("{path:?}: {other:?}"),
            }
        }
    }
}
