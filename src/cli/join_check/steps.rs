//! The walk: kubeadm's token discovery (cmd/kubeadm/app/discovery/token/
//! token.go), one step at a time, each ending in a [`Step`]. Steps after
//! the first failure still run when they have what they need, so one run
//! names every problem it can see; those without their input are skipped.

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::cluster_info::{ClusterInfo, Kubeconfig};
use super::explain;
use super::jws;
use super::network::{cluster_info_step, dial_step, tls_step};
use super::pin::Pin;
use super::report::{Report, Status};
use super::token::{BootstrapToken, certificate_key_problem};
use crate::cli::probe::cert::CertInfo;

/// The checked flags of one run.
#[derive(Debug)]
pub(crate) struct Inputs {
    /// ENDPOINT as given.
    pub endpoint: String,
    /// Its host (no brackets).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The token discovery uses.
    pub token: BootstrapToken,
    /// The CA pins given.
    pub pins: Vec<Pin>,
    /// `--discovery-token-unsafe-skip-ca-verification`.
    pub skip_ca_verification: bool,
    /// `--control-plane`.
    pub control_plane: bool,
    /// `--certificate-key` as given.
    pub certificate_key: Option<String>,
    /// Per network step.
    pub timeout: Duration,
    /// Notes on the flags, printed after the steps.
    pub notes: Vec<String>,
}

/// Walks every step against the endpoint.
pub(crate) async fn walk(inputs: &Inputs) -> Report {
    let mut report = Report {
        endpoint: inputs.endpoint.clone(),
        address: None,
        token_id: inputs.token.id.clone(),
        passed: false,
        steps: Vec::new(),
        tls: None,
        ca_cert_hashes: Vec::new(),
        server: None,
        notes: inputs.notes.clone(),
    };
    network_steps(inputs, &mut report).await;
    report.skip_network_rest();
    certificate_key_step(inputs, &mut report);
    report.passed = report.steps.iter().all(|s| s.result != Status::Fail);
    report
}

async fn network_steps(inputs: &Inputs, report: &mut Report) {
    let Some(stream) = dial_step(inputs, report).await else {
        return;
    };
    let Some((stream, chain)) = tls_step(inputs, stream, report).await else {
        return;
    };
    let Some(info) = cluster_info_step(inputs, stream, report).await else {
        return;
    };
    let kubeconfig_text = info.kubeconfig.clone().unwrap_or_default();
    token_steps(inputs, &info, &kubeconfig_text, report);
    let Some(kubeconfig) = ca_pin_step(inputs, &kubeconfig_text, report) else {
        return;
    };
    serving_cert_step(inputs, &chain, &kubeconfig.ca, report);
    server_step(inputs, kubeconfig.server.as_deref(), report);
}

/// Steps 4 and 5: the token's signature is there, and the secret made it.
fn token_steps(inputs: &Inputs, info: &ClusterInfo, kubeconfig: &str, report: &mut Report) {
    let token = &inputs.token;
    let Some(found) = info.signatures.get(&token.id) else {
        let (detail, fix) = explain::no_signature(&token.id, info);
        report.fail(detail, Some(fix));
        report.skip("not run: the token has no signature to check".into());
        return;
    };
    report.ok(format!(
        "cluster-info holds {}{}: the token exists and has not expired",
        jws::KEY_PREFIX,
        token.id
    ));
    match jws::check(found, kubeconfig, &token.id, &token.secret) {
        jws::Verdict::Valid => report.ok(format!(
            "the HS256 signature verifies with the secret of token {}: cluster-info is this \
             cluster's",
            token.id
        )),
        jws::Verdict::WrongSecret => {
            let (detail, fix) = explain::wrong_secret(&token.id);
            report.fail(detail, Some(fix));
        }
        jws::Verdict::Malformed { header } => report.fail(
            format!(
                "{}{} is not a bootstrap-signer signature for this token (its header is {header})",
                jws::KEY_PREFIX,
                token.id
            ),
            Some("create a new token: kubeadm token create --print-join-command".into()),
        ),
    }
}

/// Step 6: the CA in cluster-info's kubeconfig against the pins given.
fn ca_pin_step(inputs: &Inputs, kubeconfig: &str, report: &mut Report) -> Option<Kubeconfig> {
    let kubeconfig = match Kubeconfig::parse(kubeconfig) {
        Ok(kubeconfig) => kubeconfig,
        Err(e) => {
            report.fail(
                format!("{e}: kubeadm cannot read the cluster's CA from it"),
                Some(
                    "recreate cluster-info on a control-plane node: kubeadm init phase \
                     bootstrap-token"
                        .into(),
                ),
            );
            return None;
        }
    };
    let mut cas = Vec::new();
    for der in &kubeconfig.ca {
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => cas.push((
                cert.subject().to_string(),
                Pin::of_spki(cert.tbs_certificate.subject_pki.raw),
            )),
            Err(e) => {
                report.fail(
                    format!("the CA certificate in cluster-info does not parse: {e}"),
                    None,
                );
                return None;
            }
        }
    }
    report.ca_cert_hashes = cas.iter().map(|(_, pin)| pin.to_string()).collect();
    let real = report.ca_cert_hashes.join(", ");
    let subjects: Vec<&str> = cas.iter().map(|(subject, _)| subject.as_str()).collect();
    let subjects = subjects.join(", ");
    if inputs.pins.is_empty() {
        if inputs.skip_ca_verification {
            report.add(
                Status::Warn,
                format!(
                    "the CA ({subjects}) is trusted unpinned \
                     (--discovery-token-unsafe-skip-ca-verification): whoever answers on the \
                     endpoint with this token's signature is believed; its pin is {real}"
                ),
                Some(format!("pin it: --discovery-token-ca-cert-hash {real}")),
            );
        } else {
            let (detail, fix) = explain::no_pin(&subjects, &real);
            report.fail(detail, Some(fix));
        }
        return Some(kubeconfig);
    }
    match cas.iter().find(|(_, pin)| inputs.pins.contains(pin)) {
        Some((subject, pin)) => report.ok(format!("the cluster CA ({subject}) matches {pin}")),
        None => {
            let given: Vec<String> = inputs.pins.iter().map(Pin::to_string).collect();
            let (detail, fix) = explain::pin_mismatch(&subjects, &real, &given.join(", "));
            report.fail(detail, Some(fix));
        }
    }
    Some(kubeconfig)
}

/// Step 7: the chain the endpoint presented, verified against cluster-info's
/// CA for the endpoint's host, as kubeadm's second, secure client does.
fn serving_cert_step(
    inputs: &Inputs,
    chain: &[CertificateDer<'static>],
    ca: &[CertificateDer<'static>],
    report: &mut Report,
) {
    let Some((leaf, intermediates)) = chain.split_first() else {
        report.fail("the endpoint presented no certificate".into(), None);
        return;
    };
    let leaf_info = match CertInfo::parse(leaf) {
        Ok(info) => info,
        Err(e) => {
            report.fail(e, None);
            return;
        }
    };
    let mut roots = RootCertStore::empty();
    let (_, rejected) = roots.add_parsable_certificates(ca.iter().cloned());
    if roots.is_empty() {
        report.fail(
            format!("none of the {rejected} CA certificates in cluster-info can be a trust anchor"),
            None,
        );
        return;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        match WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build() {
            Ok(verifier) => verifier,
            Err(e) => {
                report.fail(
                    format!("cannot verify against cluster-info's CA: {e}"),
                    None,
                );
                return;
            }
        };
    let server_name = match ServerName::try_from(inputs.host.clone()) {
        Ok(name) => name,
        Err(e) => {
            report.fail(
                format!("{:?} is not a TLS server name: {e}", inputs.host),
                None,
            );
            return;
        }
    };
    let chain_error = match verifier.verify_server_cert(
        leaf,
        intermediates,
        &server_name,
        &[],
        UnixTime::now(),
    ) {
        Ok(_) => None,
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        )) => None,
        Err(e) => Some(e),
    };
    let covered = leaf_info.covers(&inputs.host);
    match (chain_error, covered) {
        (None, true) => report.ok(format!(
            "{} is signed by the cluster CA and {} is in its SANs",
            leaf_info.subject, inputs.host
        )),
        (None, false) => {
            let (detail, fix) = explain::san_missing(&inputs.host, &leaf_info);
            report.fail(detail, Some(fix));
        }
        (Some(error), covered) => {
            let (detail, fix) = explain::chain_rejected(&error, &leaf_info, &inputs.host, covered);
            report.fail(detail, Some(fix));
        }
    }
}

/// Step 8: the `server:` kubeadm hands to kubelet after discovery.
fn server_step(inputs: &Inputs, server: Option<&str>, report: &mut Report) {
    report.server = server.map(str::to_owned);
    let Some(server) = server else {
        report.add(
            Status::Warn,
            "the kubeconfig in cluster-info names no server: the node will have no address to \
             bootstrap against"
                .into(),
            Some(explain::server_fix(&inputs.endpoint)),
        );
        return;
    };
    if same_endpoint(server, &inputs.host, inputs.port) {
        report.ok(format!(
            "cluster-info advertises {server}, the endpoint in use"
        ));
    } else {
        report.add(
            Status::Warn,
            explain::server_differs(server, &inputs.endpoint),
            Some(explain::server_fix(&inputs.endpoint)),
        );
    }
}

/// Whether `https://HOST[:PORT][/…]` names `host:port` (443 when no port).
fn same_endpoint(server: &str, host: &str, port: u16) -> bool {
    let rest = server.strip_prefix("https://").unwrap_or(server);
    let authority = rest.split('/').next().unwrap_or_default();
    let (server_host, server_port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, after)) => (h, after.strip_prefix(':')),
            None => return false,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let server_port = match server_port {
        None => 443,
        Some(p) => match p.parse::<u16>() {
            Ok(p) => p,
            Err(_) => return false,
        },
    };
    let same_host = match (
        server_host.parse::<std::net::IpAddr>(),
        host.parse::<std::net::IpAddr>(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => server_host
            .trim_end_matches('.')
            .eq_ignore_ascii_case(host.trim_end_matches('.')),
    };
    same_host && server_port == port
}

/// Step 9: the certificate key's form, for a control-plane join.
fn certificate_key_step(inputs: &Inputs, report: &mut Report) {
    match (&inputs.certificate_key, inputs.control_plane) {
        (Some(key), false) => {
            let malformed = certificate_key_problem(key)
                .map(|problem| format!("; and {problem}"))
                .unwrap_or_default();
            report.add(
                Status::Warn,
                format!(
                    "--certificate-key without --control-plane: kubeadm ignores the key and \
                     joins a worker{malformed}"
                ),
                Some("add --control-plane to join as a control-plane node".into()),
            );
        }
        (Some(key), true) => match certificate_key_problem(key) {
            Some(problem) => report.fail(problem, Some(explain::certificate_key_fix())),
            None => report.ok(
                "64 hex digits, the form of a key kubeadm init phase upload-certs prints (whether \
                 it opens the uploaded certificates, which are deleted two hours after the \
                 upload, only kubeadm join can tell)"
                    .into(),
            ),
        },
        (None, true) => report.skip(
            "no --certificate-key: the control-plane certificates (ca, sa, front-proxy-ca, \
             etcd/ca) must already be in /etc/kubernetes/pki on this node"
                .into(),
        ),
        (None, false) => report.skip("a worker join (no --control-plane) needs no key".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_servers_as_endpoints() {
        assert!(same_endpoint("https://10.0.0.10:6443", "10.0.0.10", 6443));
        assert!(same_endpoint("https://CP.lab.:6443/", "cp.lab", 6443));
        assert!(same_endpoint("https://cp.lab", "cp.lab", 443));
        assert!(same_endpoint("https://[::1]:6443", "::1", 6443));
        assert!(same_endpoint("https://[0:0::1]:6443", "::1", 6443));
        assert!(!same_endpoint("https://10.0.0.11:6443", "10.0.0.10", 6443));
        assert!(!same_endpoint("https://10.0.0.10:443", "10.0.0.10", 6443));
        assert!(!same_endpoint("https://[::1", "::1", 6443));
    }
}
