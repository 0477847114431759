//! `lbctl probe` against real listeners on 127.0.0.1: the real binary, its
//! exit status, its human lines and its JSON Lines.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use support::TempDir;
use support::blackhole::blackhole_listener;

/// What one `lbctl probe` run printed and returned.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The JSON Lines of a `--json` run, each one parsed.
    fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", self.stdout))
            })
            .collect()
    }

    /// The single attempt of a one-target `--json` run.
    fn only(&self) -> Value {
        let lines = self.json();
        assert_eq!(lines.len(), 1, "one attempt expected:\n{}", self.stdout);
        lines.into_iter().next().unwrap()
    }
}

async fn lbctl_probe(args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lbctl"));
    command.arg("probe").args(args);
    run_probe(command).await
}

/// Runs `lbctl probe args…` inside `unshare FLAGS sh -c SETUP`, where
/// SETUP prepares the namespace and ends in `exec "$@"`; `None` (after
/// saying why) when unprivileged namespaces are not allowed here.
async fn lbctl_probe_in_namespace(flags: &str, setup: &str, args: &[&str]) -> Option<Run> {
    let allowed = std::process::Command::new("unshare")
        .args([flags, "true"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !allowed {
        eprintln!("SKIPPED: `unshare {flags}` is not allowed here; cannot build the namespace");
        return None;
    }
    let mut command = tokio::process::Command::new("unshare");
    command
        .args([flags, "sh", "-c", setup, "sh"])
        .arg(env!("CARGO_BIN_EXE_lbctl"))
        .arg("probe")
        .args(args);
    Some(run_probe(command).await)
}

/// Runs `lbctl probe args…` in a mount namespace where `/etc/hosts` is
/// empty, DNS goes to 127.0.0.1 where nothing answers, and the hosts line
/// of nsswitch.conf is `nsswitch`: no lookup ever leaves this host.
async fn lbctl_probe_with_resolver(nsswitch: &str, args: &[&str]) -> Option<Run> {
    let dir = TempDir::new("probe-dns");
    let hosts = dir.write("hosts", "127.0.0.1 localhost\n");
    let resolv = dir.write(
        "resolv.conf",
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    );
    let nss = dir.write("nsswitch.conf", &format!("hosts: {nsswitch}\n"));
    let setup = format!(
        "mount --bind {hosts:?} /etc/hosts && mount --bind {resolv:?} /etc/resolv.conf && \
         mount --bind {nss:?} /etc/nsswitch.conf && exec \"$@\""
    );
    lbctl_probe_in_namespace("-Urm", &setup, args).await
}

async fn run_probe(mut command: tokio::process::Command) -> Run {
    let output = command.output().await.expect("run lbctl");
    Run {
        code: output.status.code().expect("lbctl exited by a signal"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A listener that accepts, then closes (FIN) or resets (RST) at once: an
/// accept-first proxy with no backend.
async fn accept_then_close(reset: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if reset {
                // Linger 0 makes the close a RST; it does not block at 0.
                socket2::SockRef::from(&stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            drop(stream);
        }
    });
    addr
}

/// A listener that answers every connection with `answer` and closes.
async fn answering(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(answer).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn open_port_exits_zero() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let run = lbctl_probe(&[&addr, "--hold", "100ms", "--json"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let attempt = run.only();
    assert_eq!(attempt["target"], addr);
    assert_eq!(attempt["address"], addr);
    assert_eq!(attempt["result"], "open");
    assert!(attempt["elapsed_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(attempt["hold_ms"], 100.0);
    assert!(attempt["detail"].as_str().unwrap().contains("kept it open"));
}

#[tokio::test]
async fn closed_port_is_refused_with_the_kubeadm_meaning() {
    let addr = closed_port();
    let run = lbctl_probe(&[&addr.to_string(), "--json"]).await;
    assert_eq!(run.code, 1);
    let attempt = run.only();
    assert_eq!(attempt["result"], "refused");
    let detail = attempt["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("nothing listens on port {}", addr.port())),
        "{detail}"
    );
    assert!(
        detail.contains("expected until kube-apiserver starts"),
        "{detail}"
    );
}

#[tokio::test]
async fn full_accept_queue_is_a_timeout() {
    let blackhole = blackhole_listener();
    let run = lbctl_probe(&[&blackhole.addr.to_string(), "--timeout", "300ms", "--json"]).await;
    assert_eq!(run.code, 1);
    let attempt = run.only();
    assert_eq!(attempt["result"], "timeout", "{}", run.stdout);
    assert!(attempt["elapsed_ms"].as_f64().unwrap() >= 300.0);
    let detail = attempt["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("nothing answered within 300ms"),
        "{detail}"
    );
    assert!(
        detail.contains("firewall, security group or route"),
        "{detail}"
    );
    // A hung process whose queue is full looks the same from outside.
    assert!(detail.contains("accept queue is full"), "{detail}");
    assert!(detail.contains("a process that hangs"), "{detail}");
}

#[tokio::test]
async fn unresolvable_name_is_a_dns_error() {
    // Only /etc/hosts is consulted: the name is missing, and no DNS query is sent.
    let Some(run) =
        lbctl_probe_with_resolver("files", &["no-such-host.invalid:6443", "--json"]).await
    else {
        return;
    };
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let attempt = run.only();
    assert_eq!(attempt["result"], "dns_error");
    assert_eq!(attempt["address"], Value::Null);
    let detail = attempt["detail"].as_str().unwrap();
    assert!(detail.contains("no-such-host.invalid"), "{detail}");
    assert!(detail.contains("/etc/hosts"), "{detail}");
    assert!(!detail.contains("resolver did not answer"), "{detail}");
}

#[tokio::test]
async fn a_resolver_that_does_not_answer_is_not_a_bad_name() {
    // DNS goes to 127.0.0.1:53, where nothing listens: the resolver fails.
    let Some(run) = lbctl_probe_with_resolver("files dns", &["cp1.lab.test:6443", "--json"]).await
    else {
        return;
    };
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let attempt = run.only();
    assert_eq!(attempt["result"], "dns_error");
    let detail = attempt["detail"].as_str().unwrap();
    assert!(detail.contains("cp1.lab.test"), "{detail}");
    assert!(
        detail.contains("the resolver did not answer, so the name may well be right"),
        "{detail}"
    );
    assert!(detail.contains("/etc/resolv.conf"), "{detail}");
    assert!(!detail.contains("fix the name"), "{detail}");
}

#[tokio::test]
async fn no_route_from_this_host_is_not_the_node_being_down() {
    // A network namespace of our own: 10.9.0.0/16 has an `unreachable`
    // route (EHOSTUNREACH, as when a router says the host is gone);
    // 10.10.0.0/16 has no route at all (ENETUNREACH).
    if !support::have("ip") {
        eprintln!("SKIPPED: no `ip` command (iproute2) to set up routes");
        return;
    }
    let setup = "ip link set lo up && ip route add unreachable 10.9.0.0/16 && exec \"$@\"";
    let Some(run) = lbctl_probe_in_namespace(
        "-Urn",
        setup,
        &["10.10.0.1:6443", "10.9.0.1:6443", "--json"],
    )
    .await
    else {
        return;
    };
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let attempts = run.json();
    assert_eq!(attempts.len(), 2, "{}", run.stdout);
    let (no_route, host_gone) = (&attempts[0], &attempts[1]);
    assert_eq!(no_route["result"], "unreachable", "{}", run.stdout);
    let detail = no_route["detail"].as_str().unwrap();
    assert!(detail.contains("unreachable from this host"), "{detail}");
    assert!(detail.contains("nothing about the node"), "{detail}");
    assert!(!detail.contains("node is down"), "{detail}");
    assert_eq!(host_gone["result"], "unreachable", "{}", run.stdout);
    let detail = host_gone["detail"].as_str().unwrap();
    assert!(detail.contains("the node is down"), "{detail}");
}

#[tokio::test]
async fn accept_then_close_is_not_open() {
    for reset in [false, true] {
        let addr = accept_then_close(reset).await.to_string();
        let run = lbctl_probe(&[&addr, "--json"]).await;
        assert_eq!(run.code, 1, "reset={reset}: {}", run.stdout);
        let attempt = run.only();
        assert_eq!(attempt["result"], "accepted_closed", "reset={reset}");
        let detail = attempt["detail"].as_str().unwrap();
        let how = if reset { "then reset" } else { "then closed" };
        assert!(detail.contains(how), "{detail}");
        assert!(
            detail.contains("a proxy with no reachable backend"),
            "{detail}"
        );
    }
}

#[tokio::test]
async fn accept_then_close_is_caught_during_a_tls_handshake() {
    let addr = accept_then_close(false).await.to_string();
    let run = lbctl_probe(&[&addr, "--tls", "--json"]).await;
    assert_eq!(run.code, 1);
    let attempt = run.only();
    assert_eq!(attempt["result"], "accepted_closed", "{}", run.stdout);
    assert!(
        attempt["detail"]
            .as_str()
            .unwrap()
            .contains("during the TLS handshake")
    );
}

#[tokio::test]
async fn a_greeting_is_reported() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    let run = lbctl_probe(&[&addr, "--json"]).await;
    let attempt = run.only();
    assert_eq!(attempt["result"], "open");
    assert_eq!(attempt["greeting"], "SSH-2.0-OpenSSH_9.2");
    assert!(
        attempt["detail"]
            .as_str()
            .unwrap()
            .contains("something else listens here")
    );
}

#[tokio::test]
async fn count_repeats_and_summarises_like_ping() {
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_addr = open.local_addr().unwrap().to_string();
    let closed_addr = closed_port().to_string();
    let args = [
        open_addr.as_str(),
        closed_addr.as_str(),
        "--count",
        "3",
        "--interval",
        "10ms",
        "--hold",
        "0s",
    ];
    let run = lbctl_probe(&args).await;
    assert_eq!(run.code, 1, "one target is refused");
    let summaries: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains(" summary "))
        .collect();
    assert_eq!(summaries.len(), 2, "{}", run.stdout);
    assert!(summaries[0].starts_with(&open_addr), "{}", summaries[0]);
    assert!(
        summaries[0].contains("3 attempts, 3 open, 0 lost (0%); time min/avg/max"),
        "{}",
        summaries[0]
    );
    assert!(summaries[1].starts_with(&closed_addr), "{}", summaries[1]);
    assert!(
        summaries[1].contains("3 attempts, 0 open, 3 lost (100%): refused 3"),
        "{}",
        summaries[1]
    );

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let run = lbctl_probe(&json_args).await;
    let attempts = run.json();
    assert_eq!(attempts.len(), 6, "one object per attempt, no summary");
    let seqs: Vec<u64> = attempts
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 1, 2, 2, 3, 3]);
}

#[tokio::test]
async fn human_output_is_aligned_greppable_and_plain_when_piped() {
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_addr = open.local_addr().unwrap().to_string();
    let closed_addr = closed_port().to_string();
    let run = lbctl_probe(&[&open_addr, &closed_addr, "--hold", "50ms"]).await;
    assert!(!run.stdout.contains('\x1b'), "no colour into a pipe");
    let mut lines = run.stdout.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("TARGET"), "{header}");
    let detail_column = header.find("DETAIL").unwrap();
    for line in lines {
        assert!(
            line.starts_with(&open_addr) || line.starts_with(&closed_addr),
            "every line names its target: {line}"
        );
        // The key or result column is followed by the time, then the detail.
        assert_eq!(
            line.char_indices().nth(detail_column - 1).map(|(_, c)| c),
            Some(' '),
            "{line}"
        );
    }
    assert!(run.stdout.contains(" open "));
    assert!(run.stdout.contains(" refused "));
}

#[tokio::test]
async fn ipv6_targets_take_brackets() {
    let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    let addr = listener.local_addr().unwrap().to_string();
    assert!(addr.starts_with("[::1]:"));
    let run = lbctl_probe(&[&addr, "--hold", "0s", "--json"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.only()["address"], addr);
}

#[tokio::test]
async fn usage_errors_exit_two() {
    let run = lbctl_probe(&["10.0.0.1"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("HOST:PORT"), "{}", run.stderr);
    let run = lbctl_probe(&["::1:6443"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("brackets"), "{}", run.stderr);
    let run = lbctl_probe(&[]).await;
    assert_eq!(run.code, 2, "no target and no --config");
    let run = lbctl_probe(&["127.0.0.1:1", "--http-path", "readyz"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("must start with '/'"), "{}", run.stderr);
    let run = lbctl_probe(&["127.0.0.1:1", "--tls", "--ca", "/nonexistent/ca.crt"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("/nonexistent/ca.crt"), "{}", run.stderr);
}

#[tokio::test]
async fn what_an_operator_mistypes_is_a_usage_error_saying_what_to_write() {
    // Each would otherwise probe something and fail for the wrong reason.
    let run = lbctl_probe(&["127.0.0.1:1", "--timeout", "0s"]).await;
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("--timeout 3s"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "nothing probed: {}", run.stdout);

    let run = lbctl_probe(&["127.0.0.1:1", "--sni", "k8s api.example"]).await;
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("--sni \"k8s api.example\" is not a DNS name or an IP address"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("e.g. --sni kubernetes"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "nothing probed: {}", run.stdout);

    let run = lbctl_probe(&["https://10.0.0.1:6443"]).await;
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("not a URL: write 10.0.0.1:6443 --tls"),
        "{}",
        run.stderr
    );
    let run = lbctl_probe(&["https://10.0.0.1:6443/readyz"]).await;
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("write 10.0.0.1:6443 --http-path /readyz"),
        "{}",
        run.stderr
    );
}

// ---- TLS and HTTP -------------------------------------------------------

/// A test CA that issues server and client certificates.
struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

/// A certificate and its key, in DER for rustls and PEM for lbctl's files.
struct Issued {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, cn: &str, sans: &[&str], expired: bool) -> Issued {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key_pem = key.serialize_pem();
        Issued {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            cert_pem: cert.pem(),
            key_pem,
        }
    }

    fn ca_file(&self, dir: &TempDir) -> PathBuf {
        dir.write("ca.crt", &self.ca_pem)
    }
}

/// How the test apiserver answers `GET path`, given whether the client
/// presented a certificate.
type Respond = fn(&str, bool) -> (u16, &'static str);

/// A TLS server that answers one HTTP/1.1 request per connection, like
/// kube-apiserver's /readyz would. With `client_ca`, client certificates
/// signed by it are accepted (and optional).
async fn https_server(server: &Issued, client_ca: Option<&Pki>, respond: Respond) -> SocketAddr {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(pki) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(server.chain.clone(), server.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&request);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let has_cert = tls.get_ref().1.peer_certificates().is_some();
                let (status, body) = respond(&path, has_cert);
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

fn ready(_: &str, _: bool) -> (u16, &'static str) {
    (200, "ok")
}

const READYZ_ETCD_DOWN: &str = "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n\
     [+]poststarthook/start-kube-apiserver-admission-initializer ok\nreadyz check failed\n";

fn etcd_down(_: &str, _: bool) -> (u16, &'static str) {
    (500, READYZ_ETCD_DOWN)
}

fn needs_client_cert(_: &str, has_cert: bool) -> (u16, &'static str) {
    if has_cert {
        (200, "ok")
    } else {
        (
            401,
            "{\"kind\":\"Status\",\"reason\":\"Unauthorized\",\"code\":401}",
        )
    }
}

#[tokio::test]
async fn tls_reports_the_certificate_and_passes_when_the_san_matches() {
    let pki = Pki::new("kubernetes");
    let server = pki.issue("kube-apiserver", &["kubernetes", "127.0.0.1"], false);
    let addr = https_server(&server, None, ready).await.to_string();
    let dir = TempDir::new("probe");
    let ca = pki.ca_file(&dir);
    let ca = ca.to_str().unwrap();

    // By IP: the IP must be an IP SAN. Without --ca the chain is only reported.
    let run = lbctl_probe(&[&addr, "--tls", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    let attempt = run.only();
    assert_eq!(attempt["result"], "open");
    let tls = &attempt["tls"];
    assert_eq!(tls["version"], "TLSv1.3");
    assert_eq!(
        tls["alpn"], "h2",
        "a bare TLS probe offers h2, as kubectl does"
    );
    assert_eq!(tls["certificate"]["subject"], "CN=kube-apiserver");
    assert_eq!(tls["certificate"]["issuer"], "CN=kubernetes");
    assert_eq!(
        tls["certificate"]["sans"],
        serde_json::json!(["DNS:kubernetes", "IP:127.0.0.1"])
    );
    assert!(
        tls["certificate"]["not_after"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(tls["checked_name"], "127.0.0.1");
    assert_eq!(tls["name_in_sans"], true);
    assert_eq!(tls["chain_verified"], Value::Null);
    assert!(
        attempt["detail"]
            .as_str()
            .unwrap()
            .contains("chain not verified")
    );

    // By name, verified against the CA.
    let run = lbctl_probe(&[&addr, "--sni", "kubernetes", "--ca", ca, "--json"]).await;
    let attempt = run.only();
    assert_eq!(attempt["result"], "open", "{}", run.stdout);
    assert_eq!(run.code, 0);
    assert_eq!(attempt["tls"]["sni"], "kubernetes", "--sni implies --tls");
    assert_eq!(attempt["tls"]["chain_verified"], true);

    // The human output shows the certificate, every line led by the target.
    let run = lbctl_probe(&[&addr, "--tls"]).await;
    for key in ["  subject", "  issuer", "  validity", "  sans"] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no {key} line:\n{}", run.stdout));
        assert!(line.starts_with(&addr), "{line}");
    }
}

#[tokio::test]
async fn tls_flags_a_name_missing_from_the_sans_with_the_kubeadm_fix() {
    let pki = Pki::new("kubernetes");
    let server = pki.issue("kube-apiserver", &["kubernetes", "10.96.0.1"], false);
    let addr = https_server(&server, None, ready).await.to_string();

    for (sni, name) in [
        (None, "127.0.0.1"),
        (Some("lb.example.test"), "lb.example.test"),
    ] {
        let mut args = vec![addr.as_str(), "--tls", "--json"];
        if let Some(sni) = sni {
            args.extend(["--sni", sni]);
        }
        let run = lbctl_probe(&args).await;
        assert_eq!(run.code, 1, "{}", run.stdout);
        let attempt = run.only();
        assert_eq!(attempt["result"], "tls_error");
        assert_eq!(attempt["tls"]["name_in_sans"], false);
        let detail = attempt["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!("{name} is not in the certificate's SANs")),
            "{detail}"
        );
        assert!(detail.contains("apiServer.certSANs"), "{detail}");
        assert!(
            detail.contains("kubeadm init phase certs apiserver"),
            "{detail}"
        );
    }
}

#[tokio::test]
async fn tls_rejects_a_chain_from_another_ca_and_an_expired_certificate() {
    let pki = Pki::new("kubernetes");
    let other = Pki::new("another-cluster");
    let server = pki.issue("kube-apiserver", &["127.0.0.1"], false);
    let addr = https_server(&server, None, ready).await.to_string();
    let dir = TempDir::new("probe");
    let other_ca = other.ca_file(&dir);
    let run = lbctl_probe(&[&addr, "--ca", other_ca.to_str().unwrap(), "--json"]).await;
    assert_eq!(run.code, 1);
    let attempt = run.only();
    assert_eq!(attempt["result"], "tls_error", "{}", run.stdout);
    assert_eq!(attempt["tls"]["chain_verified"], false);
    assert!(
        attempt["detail"]
            .as_str()
            .unwrap()
            .contains("not signed by the CA")
    );

    let expired = pki.issue("kube-apiserver", &["127.0.0.1"], true);
    let addr = https_server(&expired, None, ready).await.to_string();
    let run = lbctl_probe(&[&addr, "--tls", "--json"]).await;
    let attempt = run.only();
    assert_eq!(attempt["result"], "tls_error");
    let detail = attempt["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("the certificate expired on 2001-01-01T00:00:00Z"),
        "{detail}"
    );
    assert!(detail.contains("kubeadm certs renew apiserver"), "{detail}");
}

#[tokio::test]
async fn an_http_answer_on_a_tls_port_is_named() {
    let addr = answering(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        .await
        .to_string();
    let run = lbctl_probe(&[&addr, "--tls", "--json"]).await;
    assert_eq!(run.code, 1);
    let attempt = run.only();
    assert_eq!(attempt["result"], "tls_error", "{}", run.stdout);
    let detail = attempt["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("an HTTP answer on a TLS port (\"HTTP/1.1 400 Bad Request\")"),
        "{detail}"
    );
}

#[tokio::test]
async fn readyz_200_is_open() {
    let pki = Pki::new("kubernetes");
    let server = pki.issue("kube-apiserver", &["127.0.0.1"], false);
    let addr = https_server(&server, None, ready).await.to_string();
    let run = lbctl_probe(&[&addr, "--http-path", "/readyz?verbose", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    let attempt = run.only();
    assert_eq!(attempt["result"], "open");
    assert_eq!(attempt["http"]["status"], 200);
    assert_eq!(attempt["http"]["body"], "ok");
    assert_eq!(attempt["tls"]["alpn"], "http/1.1");
}

#[tokio::test]
async fn readyz_500_names_the_failing_checks() {
    let pki = Pki::new("kubernetes");
    let server = pki.issue("kube-apiserver", &["127.0.0.1"], false);
    let addr = https_server(&server, None, etcd_down).await.to_string();
    let run = lbctl_probe(&[&addr, "--http-path", "/readyz?verbose", "--json"]).await;
    assert_eq!(run.code, 1);
    let attempt = run.only();
    assert_eq!(attempt["result"], "http_error");
    assert_eq!(attempt["http"]["status"], 500);
    assert_eq!(
        attempt["http"]["failed_checks"],
        serde_json::json!(["etcd failed: reason withheld"])
    );
    let detail = attempt["detail"].as_str().unwrap();
    assert!(detail.contains("not ready; failing: etcd"), "{detail}");

    let run = lbctl_probe(&[&addr, "--http-path", "/readyz?verbose"]).await;
    let failing = run
        .stdout
        .lines()
        .find(|l| l.contains("  failing "))
        .unwrap_or_else(|| panic!("no failing line:\n{}", run.stdout));
    assert!(failing.starts_with(&addr), "{failing}");
    assert!(
        failing.ends_with("etcd failed: reason withheld"),
        "{failing}"
    );
}

#[tokio::test]
async fn readyz_401_asks_for_a_client_certificate_which_then_works() {
    let pki = Pki::new("kubernetes");
    let server = pki.issue("kube-apiserver", &["127.0.0.1"], false);
    let addr = https_server(&server, Some(&pki), needs_client_cert)
        .await
        .to_string();
    let run = lbctl_probe(&[&addr, "--http-path", "/readyz", "--json"]).await;
    assert_eq!(run.code, 1);
    let attempt = run.only();
    assert_eq!(attempt["result"], "http_error");
    assert_eq!(attempt["http"]["status"], 401);
    assert_eq!(
        attempt["detail"],
        "the endpoint answered 401; anonymous access is disabled — pass --cert/--key or check RBAC"
    );

    let client = pki.issue("kubernetes-admin", &[], false);
    let dir = TempDir::new("probe");
    let cert = dir.write("client.crt", &client.cert_pem);
    let key = dir.write("client.key", &client.key_pem);
    let run = lbctl_probe(&[
        &addr,
        "--http-path",
        "/readyz",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.only()["http"]["status"], 200);
}

#[tokio::test]
async fn a_key_that_is_not_the_certificates_stops_the_probe_before_any_dial() {
    let pki = Pki::new("kubernetes");
    let client = pki.issue("kubernetes-admin", &[], false);
    let other = pki.issue("someone-else", &[], false);
    let dir = TempDir::new("probe");
    let cert = dir.write("client.crt", &client.cert_pem);
    let key = dir.write("other.key", &other.key_pem);
    let run = lbctl_probe(&[
        "127.0.0.1:1",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ])
    .await;
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(key.to_str().unwrap())
            && run.stderr.contains("is not the key of the certificate"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn config_probes_every_server_and_frontend_in_one_table() {
    let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = up.local_addr().unwrap();
    let down_addr = closed_port();
    let frontend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let frontend_addr = frontend.local_addr().unwrap();
    let dir = TempDir::new("probe");
    let config = dir.write(
        "lbd.toml",
        &format!(
            r#"
[[frontend]]
name = "kube-apiserver"
listen = ["{frontend_addr}"]
backend = "control-plane"

[[backend]]
name = "control-plane"
servers = [
  {{ name = "cp1", address = "{up_addr}" }},
  {{ name = "cp2", address = "{down_addr}" }},
]
"#
        ),
    );
    let config = config.to_str().unwrap();
    let run = lbctl_probe(&["--config", config, "--hold", "50ms", "--json"]).await;
    assert_eq!(run.code, 1, "cp2 is down: {}{}", run.stdout, run.stderr);
    let attempts = run.json();
    let rows: Vec<(&str, &str, &str)> = attempts
        .iter()
        .map(|a| {
            (
                a["role"].as_str().unwrap(),
                a["name"].as_str().unwrap(),
                a["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("server", "control-plane/cp1", "open"),
            ("server", "control-plane/cp2", "refused"),
            ("frontend", "kube-apiserver", "open"),
        ]
    );
    assert_eq!(attempts[1]["address"], down_addr.to_string());

    let run = lbctl_probe(&["--config", config, "--hold", "50ms"]).await;
    let header = run.stdout.lines().next().unwrap();
    assert!(header.starts_with("TARGET"), "{}", run.stdout);
    let result_column = header.find("RESULT").unwrap();
    for (label, result) in [
        ("server control-plane/cp1 ", "open"),
        ("server control-plane/cp2 ", "refused"),
        ("frontend kube-apiserver ", "open"),
    ] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label}line:\n{}", run.stdout));
        assert_eq!(
            &line[result_column..result_column + result.len()],
            result,
            "{line}"
        );
    }
}

// ---- lbd's own frontend -------------------------------------------------

/// A config for lbd with frontend `kube-apiserver` on `listen` in front of
/// one server `cp1` at `server`, its admin API on `admin`.
fn lbd_config(admin: &str, listen: &str, server: SocketAddr) -> String {
    format!(
        r#"[admin]
listen = "{admin}"

[[frontend]]
name = "kube-apiserver"
listen = ["{listen}"]
backend = "control-plane"

[[backend]]
name = "control-plane"
servers = [ {{ name = "cp1", address = "{server}" }} ]
[backend.health]
interval = "200ms"
"#
    )
}

/// Waits until lbd has paused its frontend: no server is up.
fn wait_paused(lbd: &support::Lbd) {
    support::wait_until(Duration::from_secs(10), "lbd to pause its frontend", || {
        lbd.status()["frontends"][0]["paused"] == true
    });
}

#[test]
fn lbd_refusing_because_no_server_is_up_is_named_with_the_servers_and_why() {
    let down = closed_port();
    let lbd = support::Lbd::start(&lbd_config("127.0.0.1:0", "127.0.0.1:0", down));
    wait_paused(&lbd);
    let frontend = lbd.addr("kube-apiserver").to_string();

    // lbctl --admin ADDR probe FRONTEND: the admin API says whose it is.
    let run = lbd.lbctl(&["probe", &frontend, "--json"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let attempt: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(attempt["result"], "refused", "{attempt}");
    let detail = attempt["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("lbd is refusing: no apiserver is up"),
        "{detail}"
    );
    assert!(detail.contains("frontend kube-apiserver"), "{detail}");
    assert!(
        detail.contains(&format!("cp1 {down} down (refused: ")),
        "{detail}"
    );
    assert!(
        !detail.contains("crictl"),
        "not advice for an apiserver host: {detail}"
    );

    // With no admin API to ask (nothing on that address), it is any refused port.
    let nobody = closed_port().to_string();
    let run = support::lbctl(&["--admin", &nobody, "probe", &frontend, "--json"]);
    let attempt: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(attempt["result"], "refused");
    assert!(
        attempt["detail"].as_str().unwrap().contains("crictl"),
        "{attempt}"
    );
}

#[test]
fn probe_config_knows_lbds_frontend_and_admin_api_from_the_file() {
    let down = closed_port();
    let admin = format!("127.0.0.1:{}", support::free_port());
    let listen = format!("127.0.0.1:{}", support::free_port());
    let config = lbd_config(&admin, &listen, down);
    let mut lbd = support::Lbd::start(&config);
    wait_paused(&lbd);

    // No --admin, no LBD_ADMIN: the config names the admin API.
    let path = lbd.config_path.to_str().unwrap().to_owned();
    let run = support::lbctl(&["probe", "--config", &path]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("frontend kube-apiserver "))
        .unwrap_or_else(|| panic!("no frontend line:\n{}", run.stdout));
    assert!(line.contains(" refused "), "{line}");
    assert!(
        line.contains("lbd is refusing: no apiserver is up"),
        "{line}"
    );
    assert!(line.contains(&format!("cp1 {down} down")), "{line}");

    // lbd stopped: the admin API is silent, the table still tells.
    lbd.signal(libc::SIGTERM);
    lbd.wait_exit(Duration::from_secs(10));
    let run = support::lbctl(&["probe", "--config", &path, "--json"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let frontend = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|a| a["role"] == "frontend")
        .unwrap();
    assert_eq!(frontend["result"], "refused", "{frontend}");
    let detail = frontend["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("no apiserver is up: every server of backend control-plane fails"),
        "{detail}"
    );
    assert!(detail.contains("systemctl status lbd"), "{detail}");
    assert!(
        detail.contains(&format!("cannot reach lbd admin API at {admin}")),
        "{detail}"
    );
}

#[test]
fn an_admin_api_that_never_answers_does_not_hold_the_probe() {
    // The admin address drops SYNs; the probe must still end, with the
    // plain sentence, after at most its short admin timeout.
    let blackhole = blackhole_listener();
    let admin = blackhole.addr.to_string();
    let target = closed_port().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["--admin", &admin, "probe", &target, "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Not a speed test: a connect to that address would wait for the
    // kernel's SYN retries (minutes); half a minute means it hangs.
    let mut status = None;
    let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        support::wait_until(Duration::from_secs(30), "lbctl probe to end", || {
            status = child.try_wait().unwrap();
            status.is_some()
        })
    }));
    if ended.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("lbctl probe hung on an admin API that never answers");
    }
    assert_eq!(status.unwrap().code(), Some(1));
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let attempt: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(attempt["result"], "refused");
    assert!(
        attempt["detail"]
            .as_str()
            .unwrap()
            .contains("nothing listens"),
        "{attempt}"
    );
}
