//! Every sentence `lbctl probe` says: what an outcome means and what to do
//! next, in the words of the kubeadm HA guide (refused is expected before
//! kube-apiserver starts; a timeout means the path to the node is blocked).
//! Kept in one place so the wording stays consistent and reviewable.

use std::time::Duration;

use super::http::{HttpFailure, HttpReport, check_name};
use super::tls::{TlsFailureKind, TlsReport};
use crate::config::format_duration;
use crate::net::dial::{DialError, DialErrorKind, ResolveError};

/// A measured time as the output shows it: `0.052ms`, `12.3ms`, `3.00s`.
pub(crate) fn elapsed(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.3}ms")
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

/// A failed dial.
pub(crate) fn dial(e: &DialError, timeout: Duration) -> String {
    let (ip, port) = (e.addr.ip(), e.addr.port());
    match e.kind {
        DialErrorKind::Refused => format!(
            "the host answered but nothing listens on port {port} — expected until kube-apiserver \
             starts on it; if it should be running, check it on {ip} (crictl ps --name kube-apiserver)"
        ),
        DialErrorKind::Timeout => format!(
            "nothing answered within {} — a firewall, security group or route drops traffic \
             between this host and the node ({ip}), or the node is down; open that path to port \
             {port}. Or the listener's accept queue is full: a process that hangs and no longer \
             accepts (on {ip}, ss -ltn 'sport = :{port}' shows Recv-Q above Send-Q); restart it",
            format_duration(timeout)
        ),
        DialErrorKind::Unreachable if e.no_route_from_here() => format!(
            "the network is unreachable from this host: it has no route to {ip} — this says \
             nothing about the node; check this host's routes and interface (ip route get {ip}, \
             ip addr), e.g. a missing default route or a VPN that is down"
        ),
        DialErrorKind::Unreachable => format!(
            "the network says there is no route to {ip} — the node is down or on a network this \
             host cannot reach; check the address and the routes (ip route get {ip})"
        ),
        DialErrorKind::Reset => format!(
            "the connection was reset while it was being set up — a firewall rejects port {port} \
             with a reset, or the listener's accept queue overflowed"
        ),
        DialErrorKind::DnsError => dns(&e.detail),
        DialErrorKind::Other => format!(
            "the dial could not start on this host ({}) — a local limit such as open files, \
             not the endpoint",
            e.detail
        ),
    }
}

/// A name that did not resolve; `error` names the name and the resolver's words.
pub(crate) fn dns(error: &str) -> String {
    format!("{error} — fix the name in DNS or /etc/hosts on this host, or probe an IP address")
}

/// A lookup that failed: a name that does not exist, or a resolver that
/// gave no answer, which says nothing about the name.
pub(crate) fn resolve_failure(e: &ResolveError) -> String {
    if e.resolver_down {
        format!(
            "{} — the resolver did not answer, so the name may well be right: check the \
             nameservers this host uses (/etc/resolv.conf, resolvectl status) and that they are \
             reachable, or probe an IP address",
            e.message
        )
    } else {
        dns(&e.message)
    }
}

/// Plain TCP, open, and the peer kept quiet for the whole hold.
pub(crate) fn open_held(port: u16, hold: Duration) -> String {
    format!(
        "port {port} accepted the connection and kept it open for {}: something listens; add \
         --tls --http-path /readyz?verbose to see whether it is a ready kube-apiserver",
        format_duration(hold)
    )
}

/// Plain TCP, open, not watched.
pub(crate) fn open_unwatched(port: u16) -> String {
    format!("port {port} accepted the connection (not watched for accept-then-close: --hold 0s)")
}

/// Plain TCP, open, and the peer sent a greeting before we said anything.
pub(crate) fn spoke_first(port: u16, sample: &str) -> String {
    format!(
        "port {port} is open but the peer spoke first ({sample:?}); kube-apiserver waits for the \
         client's TLS hello, so something else listens here"
    )
}

/// Accepted, then closed or reset without a byte: the accept-first proxy case.
/// `in_table` is set for a frontend of `--config`, whose servers are listed too.
pub(crate) fn accepted_closed(how: &str, after: Duration, in_table: bool) -> String {
    format!(
        "accepted, then {how} after {} without sending a byte: a proxy with no reachable backend \
         — {}; or a server that expects a PROXY protocol header first",
        elapsed(after),
        behind(in_table)
    )
}

fn behind(in_table: bool) -> &'static str {
    if in_table {
        "see why on the server lines of this table"
    } else {
        "probe the servers behind it (lbctl probe --config)"
    }
}

/// A handshake that failed.
pub(crate) fn tls_failure(
    kind: &TlsFailureKind,
    timeout: Duration,
    has_client_cert: bool,
    in_table: bool,
    error: &str,
) -> String {
    match kind {
        TlsFailureKind::AcceptedClosed => format!(
            "accepted, then closed during the TLS handshake without sending a byte: a proxy with \
             no reachable backend — {}; or a server that expects a PROXY protocol header first",
            behind(in_table)
        ),
        TlsFailureKind::Timeout => format!(
            "connected, but no TLS answer within {} — the port does not speak TLS (a plaintext \
             service waiting for input), a proxy is still dialing its backend, or a server \
             that expects a PROXY protocol header first (HAProxy `accept-proxy`, lbd \
             `accept_proxy`): it waits for the header and never reads the hello",
            format_duration(timeout)
        ),
        TlsFailureKind::Plaintext { http: true, sample } => format!(
            "an HTTP answer on a TLS port ({sample:?}): this port speaks plaintext HTTP, not TLS — \
             probe the TLS port (kube-apiserver: 6443) or drop --tls"
        ),
        TlsFailureKind::Plaintext {
            http: false,
            sample,
        } => format!(
            "a plaintext answer on a TLS port ({sample:?}): this port does not speak TLS — check \
             the port, and whether a proxy in front sends or expects a PROXY protocol header"
        ),
        TlsFailureKind::RecordOverflow => "record overflow: the two ends disagree on framing — \
             one of them is not speaking TLS, e.g. a proxy sends a PROXY protocol header the \
             server does not expect, or the port is plaintext"
            .into(),
        TlsFailureKind::ClientCertRequired => client_cert_required(has_client_cert),
        TlsFailureKind::Alert(alert) => format!(
            "the server refused the TLS handshake ({alert}) — it does not accept this client's TLS \
             versions, ciphers or certificate{}",
            if has_client_cert {
                ""
            } else {
                ", or it wants a client certificate (--cert/--key)"
            }
        ),
        TlsFailureKind::Other => {
            format!("the TLS handshake failed ({error}) — check that this port serves TLS")
        }
    }
}

fn client_cert_required(has_client_cert: bool) -> String {
    if has_client_cert {
        "the server rejected the client certificate — check that --cert is signed by the \
         cluster CA and --key belongs to it"
            .into()
    } else {
        "the server requires a client certificate — pass --cert/--key (e.g. kubeadm's \
         /etc/kubernetes/pki/apiserver-kubelet-client.crt and .key)"
            .into()
    }
}

/// The first problem with the certificate the server presented, if any.
pub(crate) fn certificate_problem(
    report: &TlsReport,
    now_unix: i64,
    ca: Option<&std::path::Path>,
) -> Option<String> {
    use super::cert::Validity;
    if let Some(e) = &report.certificate_error {
        return Some(format!(
            "{e} — regenerate it on the node (kubeadm init phase certs apiserver)"
        ));
    }
    let cert = report.certificate.as_ref()?;
    match cert.validity_at(now_unix) {
        Validity::Expired => {
            return Some(format!(
                "the certificate expired on {} — renew it on the control-plane node (kubeadm \
                 certs renew apiserver) and restart kube-apiserver",
                cert.not_after
            ));
        }
        Validity::NotYetValid => {
            return Some(format!(
                "the certificate is valid only from {} — the clock on this host or on the node \
                 is wrong (timedatectl)",
                cert.not_before
            ));
        }
        Validity::Valid => {}
    }
    if let (Some(name), Some(false)) = (&report.checked_name, report.name_in_sans) {
        let sans = if cert.sans.is_empty() {
            "it has none".to_owned()
        } else {
            cert.sans.join(", ")
        };
        return Some(format!(
            "{name} is not in the certificate's SANs ({sans}) — add it to apiServer.certSANs in \
             the kubeadm ClusterConfiguration, then regenerate the certificate with kubeadm init \
             phase certs apiserver (move the old apiserver.crt and apiserver.key aside first) and \
             restart kube-apiserver"
        ));
    }
    if let (Some(false), Some(ca)) = (report.chain_verified, ca) {
        return Some(format!(
            "the certificate is not signed by the CA in {} ({}) — this is another cluster's \
             apiserver, or --ca names the wrong file (kubeadm's is /etc/kubernetes/pki/ca.crt)",
            ca.display(),
            report.chain_error.as_deref().unwrap_or("unknown issuer")
        ));
    }
    None
}

/// A handshake whose certificate passed every check asked for.
pub(crate) fn tls_ok(report: &TlsReport, ca: Option<&std::path::Path>) -> String {
    let version = report.version.as_deref().unwrap_or("TLS");
    let until = report
        .certificate
        .as_ref()
        .map(|c| format!(", certificate valid until {}", c.not_after))
        .unwrap_or_default();
    let name = match &report.checked_name {
        Some(name) => format!(", covers {name}"),
        None => {
            ", name not checked (a wildcard listen address probed through loopback; pass --sni)"
                .into()
        }
    };
    let chain = match ca {
        Some(ca) => format!(", signed by the CA in {}", ca.display()),
        None => ", chain not verified (pass --ca to verify it)".into(),
    };
    format!("TLS handshake done ({version}){until}{name}{chain}")
}

/// Whether an HTTP answer passes, and what it means.
pub(crate) fn http(report: &HttpReport, has_client_cert: bool) -> (bool, String) {
    let HttpReport {
        path,
        status,
        reason,
        ..
    } = report;
    match status {
        200..=299 => {
            let first = report.body.lines().next().unwrap_or("").trim();
            let body = if first.is_empty() || first.len() > 40 {
                String::new()
            } else {
                format!(" ({first:?})")
            };
            (
                true,
                format!(
                    "GET {path} answered {status} {reason}{body}: the endpoint works end to end"
                ),
            )
        }
        401 if has_client_cert => (
            false,
            "the endpoint answered 401: the client certificate was not accepted — check that \
             --cert is signed by the cluster CA"
                .into(),
        ),
        403 if has_client_cert => (
            false,
            format!(
                "the endpoint answered 403: the client certificate's user may not GET {path} — \
                 check RBAC"
            ),
        ),
        401 | 403 => (
            false,
            format!(
                "the endpoint answered {status}; anonymous access is disabled — pass --cert/--key \
                 or check RBAC"
            ),
        ),
        404 => (
            false,
            format!(
                "GET {path} answered 404: this server has no such path — is it kube-apiserver? \
                 (it serves /readyz, /livez and /healthz)"
            ),
        ),
        500..=599 if !report.failed_checks.is_empty() => {
            let names: Vec<&str> = report.failed_checks.iter().map(|c| check_name(c)).collect();
            let etcd = if names.iter().any(|n| n.contains("etcd")) {
                " (etcd: check the etcd member on that node, crictl logs of its etcd container)"
            } else {
                ""
            };
            (
                false,
                format!(
                    "GET {path} answered {status}: kube-apiserver runs but is not ready; failing: \
                     {} — fix those first{etcd}",
                    names.join(", ")
                ),
            )
        }
        500..=599 => (
            false,
            format!(
                "GET {path} answered {status} {reason}: the server runs but is not healthy — {}",
                if path.contains("verbose") {
                    "read its log (crictl logs of the kube-apiserver container)"
                } else {
                    "add ?verbose to the path to see which checks fail"
                }
            ),
        ),
        _ => (
            false,
            format!("GET {path} answered {status} {reason}; expected 2xx"),
        ),
    }
}

/// A GET that got no answer.
pub(crate) fn http_failure(
    failure: &HttpFailure,
    path: &str,
    timeout: Duration,
    has_client_cert: bool,
) -> String {
    if failure.client_cert_required {
        client_cert_required(has_client_cert)
    } else if failure.timed_out {
        format!(
            "TLS is up but GET {path} got no answer within {} — kube-apiserver is overloaded, or \
             a proxy in between stalls",
            format_duration(timeout)
        )
    } else {
        format!(
            "TLS is up but the connection ended before an answer to GET {path} — the server does \
             not speak HTTP/1.1 here"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_keeps_three_significant_figures() {
        assert_eq!(elapsed(Duration::from_micros(52)), "0.052ms");
        assert_eq!(elapsed(Duration::from_micros(12_340)), "12.3ms");
        assert_eq!(elapsed(Duration::from_millis(3004)), "3.00s");
    }

    fn dial_error(kind: DialErrorKind, errno: Option<i32>) -> DialError {
        DialError {
            kind,
            addr: "10.0.0.11:6443".parse().unwrap(),
            elapsed: Duration::ZERO,
            detail: String::new(),
            os_error: errno,
            local: false,
        }
    }

    #[test]
    fn refused_and_timeout_say_what_the_kubeadm_guide_says() {
        let three = Duration::from_secs(3);
        let refused = dial(&dial_error(DialErrorKind::Refused, None), three);
        assert!(
            refused.contains("nothing listens on port 6443"),
            "{refused}"
        );
        assert!(
            refused.contains("expected until kube-apiserver starts"),
            "{refused}"
        );
        let timeout = dial(&dial_error(DialErrorKind::Timeout, None), three);
        assert!(
            timeout.starts_with("nothing answered within 3s"),
            "{timeout}"
        );
        assert!(
            timeout.contains("firewall, security group or route"),
            "{timeout}"
        );
        assert!(timeout.contains("accept queue is full"), "{timeout}");
    }

    #[test]
    fn no_route_from_here_is_not_the_node_being_down() {
        let three = Duration::from_secs(3);
        let net = dial(
            &dial_error(DialErrorKind::Unreachable, Some(libc::ENETUNREACH)),
            three,
        );
        assert!(net.contains("unreachable from this host"), "{net}");
        assert!(!net.contains("node is down"), "{net}");
        let host = dial(
            &dial_error(DialErrorKind::Unreachable, Some(libc::EHOSTUNREACH)),
            three,
        );
        assert!(host.contains("the node is down"), "{host}");
    }
}
