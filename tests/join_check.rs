//! `lbctl join-check` against a stand-in kube-apiserver (tests/support/
//! apiserver.rs) on 127.0.0.1, directly and through a real lbd in front of
//! it: one test per step that can fail, and the good case.

mod support;

use std::net::SocketAddr;

use serde_json::Value;
use support::apiserver::{Anonymous, ApiServer, ClusterCa, Spec, detached_jws};
use support::{LbctlOutput, Lbd, lbctl};

const TOKEN_ID: &str = "abcdef";
const SECRET: &str = "0123456789abcdef";
const TOKEN: &str = "abcdef.0123456789abcdef";

/// A cluster that signs for the test's token and advertises the endpoint in use.
fn healthy_spec() -> Spec {
    Spec {
        tokens: vec![(TOKEN_ID.into(), SECRET.into())],
        server: None,
        anonymous: Anonymous::Allowed,
    }
}

/// A stand-in whose certificate covers 127.0.0.1, signed by `ca`.
fn apiserver(ca: &ClusterCa, spec: Spec) -> ApiServer {
    ApiServer::start(ca, &["kubernetes", "127.0.0.1"], ca, spec)
}

/// lbd with one frontend in front of `server`.
fn lbd_in_front_of(server: SocketAddr) -> Lbd {
    Lbd::start(&format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[frontend]]
name = "api"
listen = ["127.0.0.1:0"]
backend = "control-plane"

[[backend]]
name = "control-plane"
servers = [ {{ name = "cp1", address = "{server}" }} ]
"#
    ))
}

/// Runs `lbctl join-check ENDPOINT args…` directly against `server`, then
/// through lbd in front of it: [(route, output); 2].
fn both(server: SocketAddr, args: &[&str]) -> Vec<(&'static str, LbctlOutput)> {
    let direct = run(server, args);
    let lbd = lbd_in_front_of(server);
    let through = run(lbd.addr("api"), args);
    vec![("direct", direct), ("through lbd", through)]
}

fn run(endpoint: SocketAddr, args: &[&str]) -> LbctlOutput {
    let endpoint = endpoint.to_string();
    let mut full = vec!["join-check", endpoint.as_str()];
    full.extend_from_slice(args);
    lbctl(&full)
}

/// The line of step `n` of a human run.
fn step_line(out: &LbctlOutput, n: usize) -> &str {
    out.stdout
        .lines()
        .find(|l| l.starts_with(&format!("{n} ")))
        .unwrap_or_else(|| panic!("no line for step {n}:\n{}{}", out.stdout, out.stderr))
}

/// The result word of each step, in order.
fn results(out: &LbctlOutput) -> Vec<String> {
    (1..=9)
        .map(|n| {
            step_line(out, n)
                .split_whitespace()
                .nth(2)
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn assert_failed_at(route: &str, out: &LbctlOutput, step: usize, name: &str) {
    assert_eq!(
        out.code, 1,
        "{route}: exit 1 expected:\n{}{}",
        out.stdout, out.stderr
    );
    let line = step_line(out, step);
    assert!(
        line.starts_with(&format!("{step} {name} ")) && line.contains(" FAIL "),
        "{route}: step {step} must fail:\n{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(&format!("would fail: step {step} {name}")),
        "{route}:\n{}",
        out.stdout
    );
}

#[test]
fn the_stand_in_signs_as_kubernetes_does() {
    // cluster-bootstrap/token/jws/jws_test.go's vector: the stand-in's JWS
    // is the real algorithm, not a copy of lbd's.
    assert_eq!(
        detached_jws(
            "Hello from the other side. I must have called a thousand times.",
            "joshua",
            "my voice is my passcode"
        ),
        "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8"
    );
}

#[test]
fn a_healthy_cluster_passes_every_step() {
    let ca = ClusterCa::new();
    let server = apiserver(&ca, healthy_spec());
    for (route, out) in both(
        server.addr,
        &["--token", TOKEN, "--discovery-token-ca-cert-hash", &ca.hash],
    ) {
        assert_eq!(out.code, 0, "{route}:\n{}{}", out.stdout, out.stderr);
        assert_eq!(
            results(&out),
            ["ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "skip"],
            "{route}:\n{}",
            out.stdout
        );
        assert!(
            out.stdout
                .contains("kubeadm's token discovery would succeed"),
            "{route}:\n{}",
            out.stdout
        );
        assert!(step_line(&out, 6).contains(&ca.hash), "{}", out.stdout);
    }
}

#[test]
fn json_gives_the_same_steps_and_the_real_pin() {
    let ca = ClusterCa::new();
    let server = apiserver(&ca, healthy_spec());
    let out = run(
        server.addr,
        &[
            "--token",
            TOKEN,
            "--discovery-token-ca-cert-hash",
            &ca.hash,
            "--json",
        ],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let report: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["token_id"], TOKEN_ID);
    assert!(!out.stdout.contains(SECRET), "the secret is never printed");
    let steps = report["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "dial",
            "tls",
            "cluster-info",
            "token",
            "signature",
            "ca-pin",
            "serving-cert",
            "server",
            "certificate-key"
        ]
    );
    assert_eq!(report["ca_cert_hashes"][0], ca.hash);
    assert_eq!(report["server"], format!("https://{}", server.addr));
    assert_eq!(report["tls"]["certificate"]["subject"], "CN=kube-apiserver");
}

#[test]
fn step_1_a_refused_dial_is_explained() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    // Through lbd, whose only server is that closed port: lbd refuses too.
    for (route, out) in both(
        closed,
        &[
            "--token",
            TOKEN,
            "--discovery-token-ca-cert-hash",
            &ClusterCa::new().hash,
        ],
    ) {
        assert_failed_at(route, &out, 1, "dial");
        assert!(
            step_line(&out, 1).contains("nothing listens"),
            "{}",
            out.stdout
        );
        assert_eq!(results(&out)[1..8], ["skip"; 7], "{route}:\n{}", out.stdout);
    }
}

#[test]
fn step_2_a_port_that_does_not_speak_tls_is_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    for (route, out) in both(
        addr,
        &[
            "--token",
            TOKEN,
            "--discovery-token-unsafe-skip-ca-verification",
        ],
    ) {
        assert_failed_at(route, &out, 2, "tls");
        assert!(
            step_line(&out, 2).contains("an HTTP answer on a TLS port"),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn step_3_anonymous_discovery_disabled() {
    let ca = ClusterCa::new();
    let server = apiserver(
        &ca,
        Spec {
            anonymous: Anonymous::Forbidden,
            ..healthy_spec()
        },
    );
    let args = [
        "--token",
        TOKEN,
        "--discovery-token-ca-cert-hash",
        ca.hash.as_str(),
    ];
    for (route, out) in both(server.addr, &args) {
        assert_failed_at(route, &out, 3, "cluster-info");
        let line = step_line(&out, 3);
        assert!(line.contains("answered 403"), "{line}");
        assert!(line.contains("anonymous discovery is disabled"), "{line}");
        assert!(
            line.contains("kubeadm init phase bootstrap-token"),
            "{line}"
        );
    }
    server.update(|spec| spec.anonymous = Anonymous::Unauthenticated);
    let out = run(server.addr, &args);
    assert_failed_at("direct", &out, 3, "cluster-info");
    assert!(
        step_line(&out, 3).contains("answered 401"),
        "{}",
        out.stdout
    );
    assert!(
        step_line(&out, 3).contains("--anonymous-auth=false"),
        "{}",
        out.stdout
    );
}

#[test]
fn step_4_an_expired_token_has_no_signature() {
    let ca = ClusterCa::new();
    // The token was deleted (or expired): only another one is signed.
    let server = apiserver(
        &ca,
        Spec {
            tokens: vec![("x1y2z3".into(), "aaaaaaaaaaaaaaaa".into())],
            ..healthy_spec()
        },
    );
    for (route, out) in both(
        server.addr,
        &["--token", TOKEN, "--discovery-token-ca-cert-hash", &ca.hash],
    ) {
        assert_failed_at(route, &out, 4, "token");
        let line = step_line(&out, 4);
        assert!(line.contains("no jws-kubeconfig-abcdef"), "{line}");
        assert!(line.contains("expired"), "{line}");
        assert!(
            line.contains("kubeadm token create --print-join-command"),
            "{line}"
        );
        assert_eq!(results(&out)[4], "skip", "{}", out.stdout);
        // The CA and the server are still checked, so one run says all it can.
        assert_eq!(results(&out)[5..8], ["ok", "ok", "ok"], "{}", out.stdout);
    }
}

#[test]
fn step_5_a_wrong_secret_fails_the_signature() {
    let ca = ClusterCa::new();
    let server = apiserver(&ca, healthy_spec());
    let wrong = "abcdef.ffffffffffffffff";
    for (route, out) in both(
        server.addr,
        &["--token", wrong, "--discovery-token-ca-cert-hash", &ca.hash],
    ) {
        assert_failed_at(route, &out, 5, "signature");
        assert_eq!(
            results(&out)[3],
            "ok",
            "the signature exists: {}",
            out.stdout
        );
        assert!(
            step_line(&out, 5).contains("after the dot is wrong"),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn step_6_a_hash_from_another_cluster_prints_the_real_pin() {
    let ca = ClusterCa::new();
    let other = ClusterCa::new();
    let server = apiserver(&ca, healthy_spec());
    for (route, out) in both(
        server.addr,
        &[
            "--token",
            TOKEN,
            "--discovery-token-ca-cert-hash",
            &other.hash,
        ],
    ) {
        assert_failed_at(route, &out, 6, "ca-pin");
        let line = step_line(&out, 6);
        assert!(
            line.contains(&format!("has the pin {}, not {}", ca.hash, other.hash)),
            "{line}"
        );
        assert!(
            line.contains(&format!("--discovery-token-ca-cert-hash {}", ca.hash)),
            "{line}"
        );
    }
    // Several hashes: one match is enough, as in kubeadm.
    let hashes = format!("{},{}", other.hash, ca.hash);
    let out = run(
        server.addr,
        &["--token", TOKEN, "--discovery-token-ca-cert-hash", &hashes],
    );
    assert_eq!(out.code, 0, "{}", out.stdout);
    // No hash at all: kubeadm refuses, unless told to skip the pin.
    let out = run(server.addr, &["--token", TOKEN]);
    assert_failed_at("direct", &out, 6, "ca-pin");
    assert!(step_line(&out, 6).contains(&ca.hash), "{}", out.stdout);
    let out = run(
        server.addr,
        &[
            "--token",
            TOKEN,
            "--discovery-token-unsafe-skip-ca-verification",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(results(&out)[5], "warn", "{}", out.stdout);
}

#[test]
fn step_7_a_certificate_without_the_endpoint_in_its_sans() {
    let ca = ClusterCa::new();
    let server = ApiServer::start(
        &ca,
        &["kubernetes", "10.96.0.1", "cp1.lab"],
        &ca,
        healthy_spec(),
    );
    for (route, out) in both(
        server.addr,
        &["--token", TOKEN, "--discovery-token-ca-cert-hash", &ca.hash],
    ) {
        assert_failed_at(route, &out, 7, "serving-cert");
        let line = step_line(&out, 7);
        assert!(line.contains("127.0.0.1 is not in the SANs"), "{line}");
        assert!(line.contains("certSANs"), "{line}");
        assert!(
            line.contains("--apiserver-cert-extra-sans=127.0.0.1"),
            "{line}"
        );
    }
}

#[test]
fn step_7_a_certificate_from_another_ca() {
    let ca = ClusterCa::new();
    let other = ClusterCa::new();
    // cluster-info names `ca`, but the apiserver's certificate is `other`'s.
    let server = ApiServer::start(&other, &["127.0.0.1"], &ca, healthy_spec());
    let out = run(
        server.addr,
        &["--token", TOKEN, "--discovery-token-ca-cert-hash", &ca.hash],
    );
    assert_failed_at("direct", &out, 7, "serving-cert");
    assert!(
        step_line(&out, 7).contains("not signed by the CA in cluster-info"),
        "{}",
        out.stdout
    );
}

#[test]
fn step_8_another_server_in_cluster_info_is_a_warning_naming_both() {
    let ca = ClusterCa::new();
    let server = apiserver(
        &ca,
        Spec {
            server: Some("https://10.0.0.11:6443".into()),
            ..healthy_spec()
        },
    );
    for (route, out) in both(
        server.addr,
        &["--token", TOKEN, "--discovery-token-ca-cert-hash", &ca.hash],
    ) {
        assert_eq!(out.code, 0, "{route}: a warning only:\n{}", out.stdout);
        let line = step_line(&out, 8);
        assert!(
            line.starts_with("8 server ") && line.contains(" warn "),
            "{line}"
        );
        assert!(line.contains("https://10.0.0.11:6443"), "{line}");
        let endpoint = out
            .stdout
            .lines()
            .last()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned();
        assert!(line.contains(&format!("not {endpoint}")), "{line}");
    }
}

#[test]
fn step_9_the_certificate_key_must_be_64_hex_digits() {
    let ca = ClusterCa::new();
    let server = apiserver(&ca, healthy_spec());
    let base = [
        "--token",
        TOKEN,
        "--discovery-token-ca-cert-hash",
        ca.hash.as_str(),
        "--control-plane",
    ];
    let good = "a".repeat(64);
    let out = run(
        server.addr,
        &[&base[..], &["--certificate-key", &good]].concat(),
    );
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(results(&out)[8], "ok", "{}", out.stdout);
    for (route, out) in both(
        server.addr,
        &[&base[..], &["--certificate-key", "a1b2c3"]].concat(),
    ) {
        assert_failed_at(route, &out, 9, "certificate-key");
        let line = step_line(&out, 9);
        assert!(
            line.contains("has 6 hex digits; kubeadm needs 64"),
            "{line}"
        );
        assert!(
            line.contains("kubeadm init phase upload-certs --upload-certs"),
            "{line}"
        );
    }
}

#[test]
fn a_printed_join_command_runs_as_is_with_notes_for_kubeadm_only_flags() {
    let ca = ClusterCa::new();
    let server = apiserver(&ca, healthy_spec());
    let out = run(
        server.addr,
        &[
            "--token",
            TOKEN,
            "--discovery-token-ca-cert-hash",
            &ca.hash,
            "--cri-socket",
            "unix:///run/containerd/containerd.sock",
            "--node-name=worker-1",
            "--v=5",
        ],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("note: --cri-socket ignored"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("note: --node-name ignored"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("note: --v ignored"), "{}", out.stdout);
}

#[test]
fn malformed_flags_are_usage_errors() {
    for (args, says) in [
        (
            vec!["127.0.0.1:6443", "--token", "abcdef0123456789abcdef"],
            "--token",
        ),
        (
            vec![
                "127.0.0.1:6443",
                "--token",
                TOKEN,
                "--discovery-token-ca-cert-hash",
                "abc",
            ],
            "sha256:HEX",
        ),
        (vec!["https://127.0.0.1:6443", "--token", TOKEN], "ENDPOINT"),
        (vec!["127.0.0.1:6443"], "--token"),
        (
            vec!["127.0.0.1:6443", "--token", TOKEN, "--no-such-flag"],
            "--no-such-flag",
        ),
    ] {
        let out = lbctl(&[&["join-check"][..], &args].concat());
        assert_eq!(out.code, 2, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn a_named_endpoint_is_checked_by_name() {
    let ca = ClusterCa::new();
    let named = ApiServer::start(&ca, &["kubernetes", "localhost"], &ca, healthy_spec());
    let endpoint = format!("localhost:{}", named.addr.port());
    let args = [
        "join-check",
        &endpoint,
        "--token",
        TOKEN,
        "--discovery-token-ca-cert-hash",
        &ca.hash,
    ];
    let out = lbctl(&args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        step_line(&out, 7).contains("localhost is in its SANs"),
        "{}",
        out.stdout
    );
    assert!(
        step_line(&out, 8).contains(&format!("https://{endpoint}, the endpoint in use")),
        "{}",
        out.stdout
    );

    let unnamed = apiserver(&ca, healthy_spec());
    let endpoint = format!("localhost:{}", unnamed.addr.port());
    let args = [
        "join-check",
        &endpoint,
        "--token",
        TOKEN,
        "--discovery-token-ca-cert-hash",
        &ca.hash,
    ];
    let out = lbctl(&args);
    assert_failed_at("direct", &out, 7, "serving-cert");
    assert!(
        step_line(&out, 7).contains("--apiserver-cert-extra-sans=localhost"),
        "{}",
        out.stdout
    );
}

#[test]
fn discovery_token_takes_precedence_over_token() {
    let ca = ClusterCa::new();
    let server = apiserver(&ca, healthy_spec());
    let args = [
        "--token",
        "zzzzzz.zzzzzzzzzzzzzzzz",
        "--discovery-token",
        TOKEN,
        "--discovery-token-ca-cert-hash",
        &ca.hash,
    ];
    let out = run(server.addr, &args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}
