//! Every sentence `lbctl join-check` says beyond the probe's: what a step
//! found, what it means for `kubeadm join`, and the fix, in kubeadm's terms.

use std::time::Duration;

use super::cluster_info::ClusterInfo;
use super::network::CLUSTER_INFO_PATH;
use crate::cli::probe::cert::CertInfo;
use crate::cli::probe::tls::TlsReport;
use crate::config::format_duration;

/// Where kubeadm prints a new join command, with a fresh token and the CA pin.
const NEW_JOIN_COMMAND: &str = "on a control-plane node: kubeadm token create --print-join-command";

/// Step 2 passed: what the endpoint presented.
pub(crate) fn tls_ok(report: &TlsReport) -> String {
    let version = report.version.as_deref().unwrap_or("TLS");
    let Some(cert) = &report.certificate else {
        return format!("{version}; the certificate does not parse");
    };
    let sans = if cert.sans.is_empty() {
        "no SANs".to_owned()
    } else {
        format!("SANs {}", cert.sans.join(", "))
    };
    let more = match report.chain.len() {
        0 => String::new(),
        n => format!(", and {n} more certificate(s): {}", report.chain.join("; ")),
    };
    format!(
        "{version}; the endpoint presents {}, issued by {}, valid until {}, {sans}{more}",
        cert.subject, cert.issuer, cert.not_after
    )
}

/// Step 3: no answer in time.
pub(crate) fn get_timeout(timeout: Duration) -> String {
    format!(
        "TLS is up, but GET {CLUSTER_INFO_PATH} got no answer within {} — kube-apiserver is \
         overloaded or not started, or a proxy in between stalls",
        format_duration(timeout)
    )
}

/// Step 3: the connection ended before an answer.
pub(crate) fn get_failed(error: &str) -> String {
    format!(
        "TLS is up, but the connection ended before an answer to GET {CLUSTER_INFO_PATH} \
         ({error}) — the server behind the endpoint is not a kube-apiserver speaking HTTP/1.1"
    )
}

/// Step 3: an answer other than 200.
pub(crate) fn cluster_info_status(status: u16, body: &str) -> (String, String) {
    // kube-apiserver answers errors with a Status object; its message is the point.
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|status| status["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned());
    let said = if message.is_empty() || message.len() > 300 {
        String::new()
    } else {
        format!(" ({message})")
    };
    match status {
        401 => (
            format!(
                "anonymous GET of cluster-info answered 401{said}: anonymous discovery is \
                 disabled, kube-apiserver runs with --anonymous-auth=false"
            ),
            format!(
                "allow anonymous requests to this one path (an AuthenticationConfiguration with \
                 anonymous.enabled and the condition path {CLUSTER_INFO_PATH}), or \
                 --anonymous-auth=true; or join with file discovery (--discovery-file)"
            ),
        ),
        403 => (
            format!(
                "anonymous GET of cluster-info answered 403{said}: anonymous discovery is \
                 disabled, RBAC no longer lets system:anonymous get it"
            ),
            "restore kubeadm's Role and RoleBinding kubeadm:bootstrap-signer-clusterinfo in \
             kube-public: kubeadm init phase bootstrap-token on a control-plane node"
                .into(),
        ),
        404 => (
            format!(
                "GET of cluster-info answered 404{said}: kube-public has no cluster-info \
                 ConfigMap — the cluster was not set up with kubeadm's bootstrap tokens"
            ),
            "create it: kubeadm init phase bootstrap-token on a control-plane node".into(),
        ),
        500..=599 => (
            format!(
                "GET of cluster-info answered {status}{said}: kube-apiserver runs but cannot \
                 serve it"
            ),
            "check the apiserver behind the endpoint: lbctl probe --tls --http-path \
             /readyz?verbose, and its log (crictl logs)"
                .into(),
        ),
        _ => (
            format!("GET of cluster-info answered {status}{said}; kubeadm needs 200"),
            "check that the endpoint leads to kube-apiserver (lbctl probe --tls --http-path \
             /readyz?verbose)"
                .into(),
        ),
    }
}

/// Step 3: cluster-info without its kubeconfig.
pub(crate) fn no_kubeconfig() -> (String, String) {
    (
        "cluster-info has no kubeconfig key: this API server isn't set up for token \
         bootstrapping"
            .into(),
        "recreate it: kubeadm init phase bootstrap-token on a control-plane node".into(),
    )
}

/// Step 3 passed.
pub(crate) fn cluster_info_ok(info: &ClusterInfo) -> String {
    let signed = if info.signatures.is_empty() {
        "no token".to_owned()
    } else {
        let ids: Vec<&str> = info.signatures.keys().map(String::as_str).collect();
        format!("token(s) {}", ids.join(", "))
    };
    format!("anonymous GET of cluster-info answered 200; it is signed for {signed}")
}

/// Step 4: the token's signature is not in cluster-info.
pub(crate) fn no_signature(id: &str, info: &ClusterInfo) -> (String, String) {
    let others = if info.signatures.is_empty() {
        "it is signed for no token at all".to_owned()
    } else {
        let ids: Vec<&str> = info.signatures.keys().map(String::as_str).collect();
        format!("it is signed for {}", ids.join(", "))
    };
    (
        format!(
            "cluster-info has no jws-kubeconfig-{id} ({others}): token {id} expired (tokens live \
             24h by default) or was deleted — kubeadm waits for it, then fails"
        ),
        format!("make a new token and join command, {NEW_JOIN_COMMAND}"),
    )
}

/// Step 5: the signature was made with another secret.
pub(crate) fn wrong_secret(id: &str) -> (String, String) {
    (
        format!(
            "the signature jws-kubeconfig-{id} does not verify with the given secret: the part \
             of --token after the dot is wrong (kubeadm: failed to verify JWS signature of \
             received cluster info object)"
        ),
        format!("copy the whole token again (kubeadm token list), or {NEW_JOIN_COMMAND}"),
    )
}

/// Step 6: no pin and no permission to go without.
pub(crate) fn no_pin(subjects: &str, real: &str) -> (String, String) {
    (
        format!(
            "no --discovery-token-ca-cert-hash: kubeadm refuses token discovery without a CA \
             pin; the CA in cluster-info ({subjects}) has the pin {real}"
        ),
        format!(
            "check that pin {NEW_JOIN_COMMAND} prints it, then add \
             --discovery-token-ca-cert-hash {real}"
        ),
    )
}

/// Step 6: the pins given match no CA in cluster-info.
pub(crate) fn pin_mismatch(subjects: &str, real: &str, given: &str) -> (String, String) {
    (
        format!(
            "the CA in cluster-info ({subjects}) has the pin {real}, not {given}: the hash is \
             from another cluster (or an old CA), or the endpoint leads to another cluster"
        ),
        format!(
            "print this cluster's join command {NEW_JOIN_COMMAND}; if it shows {real}, use \
             --discovery-token-ca-cert-hash {real}"
        ),
    )
}

fn san_fix(host: &str) -> String {
    format!(
        "add {host} to apiServer.certSANs in the kubeadm ClusterConfiguration \
         (kubeadm init --apiserver-cert-extra-sans={host}), then on every control-plane node \
         move apiserver.crt and apiserver.key out of /etc/kubernetes/pki, run kubeadm init phase \
         certs apiserver --config FILE and restart kube-apiserver"
    )
}

/// Step 7: the certificate does not name the endpoint's host.
pub(crate) fn san_missing(host: &str, leaf: &CertInfo) -> (String, String) {
    let sans = if leaf.sans.is_empty() {
        "it has none".to_owned()
    } else {
        leaf.sans.join(", ")
    };
    (
        format!(
            "{host} is not in the SANs of the apiserver's certificate ({sans}): kubeadm's \
             verified connection to {host} fails (x509: certificate is valid for …, not {host})"
        ),
        san_fix(host),
    )
}

/// Step 7: the chain does not lead to cluster-info's CA, or is out of date.
pub(crate) fn chain_rejected(
    error: &rustls::Error,
    leaf: &CertInfo,
    host: &str,
    covered: bool,
) -> (String, String) {
    use rustls::CertificateError as E;
    let sans_too = if covered {
        String::new()
    } else {
        format!(
            "; {host} is not in its SANs ({}) either",
            leaf.sans.join(", ")
        )
    };
    let (what, fix) = match error {
        rustls::Error::InvalidCertificate(E::Expired | E::ExpiredContext { .. }) => (
            format!("the apiserver's certificate expired on {}", leaf.not_after),
            "renew it on every control-plane node (kubeadm certs renew apiserver) and restart \
             kube-apiserver"
                .to_owned(),
        ),
        rustls::Error::InvalidCertificate(E::NotValidYet | E::NotValidYetContext { .. }) => (
            format!(
                "the apiserver's certificate is valid only from {}",
                leaf.not_before
            ),
            "fix the clock on this host or on the node (timedatectl)".to_owned(),
        ),
        rustls::Error::InvalidCertificate(E::UnknownIssuer | E::BadSignature) => (
            format!(
                "the apiserver's certificate ({}, issued by {}) is not signed by the CA in \
                 cluster-info",
                leaf.subject, leaf.issuer
            ),
            "the endpoint forwards to an apiserver of another cluster, or something in between \
             terminates TLS: make it pass TLS through to this cluster's apiservers"
                .to_owned(),
        ),
        other => (
            format!(
                "the apiserver's certificate does not verify against cluster-info's CA ({other})"
            ),
            "check the certificate on the control-plane nodes (kubeadm certs check-expiration)"
                .to_owned(),
        ),
    };
    let fix = if covered {
        fix
    } else {
        format!("{fix}; and {}", san_fix(host))
    };
    (
        format!("{what}{sans_too}: kubeadm's verified connection fails"),
        fix,
    )
}

/// Step 8: cluster-info advertises another address than the endpoint.
pub(crate) fn server_differs(server: &str, endpoint: &str) -> String {
    format!(
        "cluster-info advertises server {server}, not {endpoint}: discovery goes through \
         {endpoint}, but after it kubeadm and kubelet use {server} (the TLS bootstrap, then \
         /etc/kubernetes/kubelet.conf), bypassing the endpoint"
    )
}

/// Step 8: how to make cluster-info name the endpoint.
pub(crate) fn server_fix(endpoint: &str) -> String {
    format!(
        "if https://{endpoint} is the control-plane endpoint, set server: in cluster-info \
         (kubectl -n kube-public edit configmap cluster-info; the bootstrap signer re-signs it) \
         and controlPlaneEndpoint in kubeadm-config (kubectl -n kube-system edit configmap \
         kubeadm-config)"
    )
}

/// Step 9: how to get a good certificate key.
pub(crate) fn certificate_key_fix() -> String {
    "copy the key again, or upload the certificates anew and get a new key on a control-plane \
     node: kubeadm init phase upload-certs --upload-certs"
        .into()
}
