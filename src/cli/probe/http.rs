//! The HTTP step of a probe: one GET over the probe's TLS connection with
//! hyper's HTTP/1.1 client, and what kube-apiserver's `/readyz?verbose` body
//! says about the checks that fail.

use std::error::Error as _;
use std::time::Duration;

use http_body_util::Empty;
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{ACCEPT, HOST, USER_AGENT};
use rustls::AlertDescription;
use serde::Serialize;

use super::tls::ProbeTlsStream;
use crate::net::http_client;

/// Enough of a body for `/readyz?verbose` (about 2 KiB) and an error page.
const BODY_LIMIT: usize = 16 * 1024;

/// The answer to the probe's GET.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HttpReport {
    /// The path requested.
    pub path: String,
    /// The status code.
    pub status: u16,
    /// The status's reason phrase, e.g. `Internal Server Error`.
    pub reason: String,
    /// The body as text, cut at 16 KiB.
    pub body: String,
    /// `/readyz?verbose` lines of failing checks, e.g. `etcd failed: reason withheld`.
    pub failed_checks: Vec<String>,
}

/// A GET that got no answer.
#[derive(Debug)]
pub(crate) struct HttpFailure {
    /// Nothing came back within the timeout.
    pub timed_out: bool,
    /// The server ended the TLS session asking for a client certificate
    /// (TLS 1.3 servers say so only after the handshake).
    pub client_cert_required: bool,
    /// hyper's or the OS's words.
    pub error: String,
}

/// Sends `GET path` with `Host: authority` and reads the answer within `timeout`.
pub(crate) async fn get(
    stream: ProbeTlsStream,
    authority: &str,
    path: &str,
    timeout: Duration,
) -> Result<HttpReport, HttpFailure> {
    match tokio::time::timeout(timeout, exchange(stream, authority, path)).await {
        Ok(result) => result,
        Err(_) => Err(HttpFailure {
            timed_out: true,
            client_cert_required: false,
            error: format!("no HTTP answer within {timeout:?}"),
        }),
    }
}

async fn exchange(
    stream: ProbeTlsStream,
    authority: &str,
    path: &str,
) -> Result<HttpReport, HttpFailure> {
    let request = Request::get(path)
        .header(HOST, authority)
        .header(
            USER_AGENT,
            concat!("lbctl-probe/", env!("CARGO_PKG_VERSION")),
        )
        .header(ACCEPT, "*/*")
        .body(Empty::<Bytes>::new())
        .map_err(|e| HttpFailure {
            timed_out: false,
            client_cert_required: false,
            error: format!("cannot build GET {path}: {e}"),
        })?;
    // A body cut short, or at the limit, still tells what the server meant.
    let answer = http_client::exchange(stream, request, BODY_LIMIT)
        .await
        .map_err(failure)?;
    let body = String::from_utf8_lossy(&answer.body).into_owned();
    Ok(HttpReport {
        path: path.to_owned(),
        status: answer.status.as_u16(),
        reason: answer.status.canonical_reason().unwrap_or("").to_owned(),
        failed_checks: failed_checks(&body),
        body,
    })
}

fn failure(err: hyper::Error) -> HttpFailure {
    let mut client_cert_required = false;
    let mut words = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        words = format!("{words}: {cause}");
        let tls = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .or_else(|| cause.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::AlertReceived(AlertDescription::CertificateRequired)) = tls {
            client_cert_required = true;
        }
        source = cause.source();
    }
    HttpFailure {
        timed_out: false,
        client_cert_required,
        error: words,
    }
}

/// The `[-]name failed: why` lines of a `/readyz?verbose` or `/livez?verbose` body.
pub(crate) fn failed_checks(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| line.trim().strip_prefix("[-]"))
        .map(|check| check.trim().to_owned())
        .collect()
}

/// The check's name from a failing-check line: `etcd failed: …` → `etcd`.
pub(crate) fn check_name(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_failing_readyz_checks() {
        let body = "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n\
                    [+]informer-sync ok\n[-]poststarthook/rbac/bootstrap-roles failed: not finished\n\
                    readyz check failed\n";
        let failed = failed_checks(body);
        assert_eq!(
            failed,
            [
                "etcd failed: reason withheld",
                "poststarthook/rbac/bootstrap-roles failed: not finished"
            ]
        );
        assert_eq!(check_name(&failed[0]), "etcd");
        assert!(failed_checks("ok").is_empty());
    }
}
