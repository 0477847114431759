//! Steps 1 to 3, on the wire: the dial with the daemon's classifier, the
//! probe's TLS handshake (which keeps the chain for step 7), and the
//! anonymous GET of cluster-info over that connection, as kubeadm's first,
//! insecure client makes them.

use std::time::Instant;

use http_body_util::Empty;
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{ACCEPT, HOST, USER_AGENT};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use super::cluster_info::ClusterInfo;
use super::explain;
use super::report::Report;
use super::steps::Inputs;
use crate::cli::probe::tls::{self, ProbeTlsStream, TlsSettings};
use crate::net::dial::{self, DialErrorKind};
use crate::net::http_client::{self, BodyEnd};

/// The path kubeadm GETs, anonymously.
pub(crate) const CLUSTER_INFO_PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";

/// A cluster-info with a CA and many signatures is a few KiB; this is plenty.
const BODY_LIMIT: usize = 1024 * 1024;

/// Step 1: resolve and dial, with the daemon's classifier and the probe's words.
pub(crate) async fn dial_step(inputs: &Inputs, report: &mut Report) -> Option<TcpStream> {
    let addresses = match dial::resolve(&inputs.host, inputs.port).await {
        Ok(addresses) => addresses,
        Err(error) => {
            report.fail(crate::cli::probe::explain::dns(&error), None);
            return None;
        }
    };
    let mut first_failure = None;
    for address in addresses {
        let started = Instant::now();
        match dial::connect(address, inputs.timeout).await {
            Ok(stream) => {
                report.address = Some(address);
                report.ok(format!(
                    "connected to {address} in {}",
                    crate::cli::probe::explain::elapsed(started.elapsed())
                ));
                return Some(stream);
            }
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    let e = first_failure?;
    report.address = Some(e.addr);
    let detail = match e.kind {
        // connect(2) reports a reset only after the handshake: the
        // accept-first proxy, as the probe names it.
        DialErrorKind::Reset => {
            crate::cli::probe::explain::accepted_closed("reset", e.elapsed, false)
        }
        _ => crate::cli::probe::explain::dial(&e, inputs.timeout),
    };
    report.fail(format!("{detail} ({})", e.detail), None);
    None
}

/// Step 2: the TLS handshake kubeadm's first, insecure client makes; the
/// chain is kept for step 7.
pub(crate) async fn tls_step(
    inputs: &Inputs,
    stream: TcpStream,
    report: &mut Report,
) -> Option<(ProbeTlsStream, Vec<CertificateDer<'static>>)> {
    let settings = match TlsSettings::load(None, None, None, None, true) {
        Ok(settings) => settings,
        Err(e) => {
            report.fail(format!("cannot set up TLS on this host: {e}"), None);
            return None;
        }
    };
    // An IP gives an IP server name (no SNI), as Go's client does.
    let server_name = match ServerName::try_from(inputs.host.clone()) {
        Ok(name) => name,
        Err(e) => {
            report.fail(
                format!("{:?} is not a TLS server name: {e}", inputs.host),
                None,
            );
            return None;
        }
    };
    match tls::handshake(stream, &settings, server_name, inputs.timeout).await {
        Ok((stream, tls_report)) => {
            let chain = tls_report.der_chain.clone();
            report.ok(explain::tls_ok(&tls_report));
            report.tls = Some(tls_report);
            Some((stream, chain))
        }
        Err(failure) => {
            let detail = crate::cli::probe::explain::tls_failure(
                &failure.kind,
                inputs.timeout,
                false,
                false,
                &failure.error,
            );
            report.fail(format!("{detail} ({})", failure.error), None);
            report.tls = Some(failure.report);
            None
        }
    }
}

/// Step 3: the anonymous GET of cluster-info.
pub(crate) async fn cluster_info_step(
    inputs: &Inputs,
    stream: ProbeTlsStream,
    report: &mut Report,
) -> Option<ClusterInfo> {
    let authority = if inputs.host.contains(':') {
        format!("[{}]:{}", inputs.host, inputs.port)
    } else {
        format!("{}:{}", inputs.host, inputs.port)
    };
    let request = Request::get(CLUSTER_INFO_PATH)
        .header(HOST, authority)
        .header(ACCEPT, "application/json")
        .header(
            USER_AGENT,
            concat!("lbctl-join-check/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new());
    let request = match request {
        Ok(request) => request,
        Err(e) => {
            report.fail(format!("cannot build the GET of cluster-info: {e}"), None);
            return None;
        }
    };
    let exchange = http_client::exchange(stream, request, BODY_LIMIT);
    let answer = match tokio::time::timeout(inputs.timeout, exchange).await {
        Err(_) => {
            report.fail(explain::get_timeout(inputs.timeout), None);
            return None;
        }
        Ok(Err(e)) => {
            report.fail(explain::get_failed(&e.to_string()), None);
            return None;
        }
        Ok(Ok(answer)) => answer,
    };
    let status = answer.status.as_u16();
    if status != 200 {
        let body = String::from_utf8_lossy(&answer.body);
        let (detail, fix) = explain::cluster_info_status(status, body.trim());
        report.fail(detail, Some(fix));
        return None;
    }
    if !matches!(answer.ended, BodyEnd::Whole) {
        report.fail(
            format!(
                "GET {CLUSTER_INFO_PATH} answered 200, but the body ended early or passed \
                 {BODY_LIMIT} bytes: {:?}",
                answer.ended
            ),
            None,
        );
        return None;
    }
    let info = match ClusterInfo::from_json(&answer.body) {
        Ok(info) => info,
        Err(e) => {
            report.fail(
                format!("GET {CLUSTER_INFO_PATH} answered 200, but {e}: is this kube-apiserver?"),
                None,
            );
            return None;
        }
    };
    if info.kubeconfig.as_deref().is_none_or(str::is_empty) {
        let (detail, fix) = explain::no_kubeconfig();
        report.fail(detail, Some(fix));
        return None;
    }
    report.ok(explain::cluster_info_ok(&info));
    Some(info)
}
