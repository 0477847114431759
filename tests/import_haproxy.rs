//! `lbctl import haproxy`: real haproxy.cfg files (kubeadm's HA guide, a
//! richer multi-frontend one, an SNI + PROXY protocol one in tests/import/)
//! import to configs `lbd --check-config` accepts, and lbd started on the
//! result sends connections to the servers the HAProxy config names.
//!
//! The fixtures keep `${NAME}` placeholders, as kubeadm's guide does; each
//! test fills them (as the guide's reader does) with its loopback servers.
//! When `haproxy` is installed (`.ci/run` installs it), `haproxy -c` checks
//! each filled fixture first, so they stay configs HAProxy itself accepts.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use support::https::{HttpsServer, Pki};
use support::{Backend, LbctlOutput, Lbd, TempDir, hold, lbctl, wait_until};

/// The SNI `routes`, `inspect_timeout`, `accept_proxy` and `send_proxy` keys
/// come with issue 16's lbd side (branch issue-16a). Until this branch is
/// merged with it, lbd's schema refuses them, so the SNI/PROXY fixture's
/// check-config and forwarding assertions are off and only the rest of its
/// output is checked. Switch this on at the merge.
const SNI_AND_PROXY_IN_SCHEMA: bool = true;

/// The fixture `name` with `${KEY}` replaced by `vars`, written to `dir`.
fn fill(dir: &TempDir, name: &str, vars: &HashMap<&str, String>) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/import")
        .join(name);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (key, value) in vars {
        text = text.replace(&format!("${{{key}}}"), value);
    }
    assert!(
        !text.contains("${"),
        "{name}: a placeholder was not filled:\n{text}"
    );
    dir.write(name, &text)
}

/// `haproxy -c -f` on the fixture filled with `vars`, where HAProxy is installed.
fn haproxy_accepts(name: &str, vars: &HashMap<&str, String>) {
    let dir = TempDir::new("haproxy-cfg");
    let path = fill(&dir, name, vars);
    let Ok(out) = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
    else {
        eprintln!(
            "haproxy is not installed (apt-get install haproxy): not checking {name} with haproxy -c"
        );
        return;
    };
    assert!(
        out.status.success(),
        "haproxy -c refuses {name}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `lbctl import haproxy` on the fixture filled with `vars`.
fn import(name: &str, vars: &HashMap<&str, String>) -> LbctlOutput {
    let dir = TempDir::new("import");
    let path = fill(&dir, name, vars);
    lbctl(&["import", "haproxy", path.to_str().unwrap()])
}

/// `lbd --check-config` on `config`: (accepted, its output).
fn lbd_check_config(config: &str) -> (bool, String) {
    let dir = TempDir::new("imported");
    let path = dir.write("lbd.toml", config);
    let out = Command::new(env!("CARGO_BIN_EXE_lbd"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Waits until every server of every backend is up.
fn all_up(lbd: &Lbd) {
    wait_until(Duration::from_secs(20), "every server up", || {
        lbd.status()["backends"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b["servers"].as_array().unwrap().iter())
            .all(|s| s["health"] == "up")
    });
}

/// A loopback address on the port lbd logged for `frontend` (which may
/// listen on 0.0.0.0).
fn frontend_addr(lbd: &Lbd, frontend: &str) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], lbd.addr(frontend).port()))
}

/// A TLS handshake to `addr` with server name `sni`, verified against
/// `pki`'s CA, then `GET /`: whether an HTTP answer came back.
fn tls_get(addr: SocketAddr, sni: &str, pki: &Pki) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    if tls
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 ")
}

#[test]
fn kubeadm_guide_haproxy_cfg_imports_and_forwards_to_its_apiservers() {
    let pki = Pki::new(&["kubernetes"]);
    let apiservers: Vec<HttpsServer> = (0..3).map(|_| HttpsServer::start(&pki, 200)).collect();
    let mut vars = HashMap::from([("APISERVER_DEST_PORT", "6443".to_owned())]);
    for (i, (server, src)) in apiservers
        .iter()
        .zip([
            "APISERVER_SRC_PORT",
            "APISERVER_SRC2_PORT",
            "APISERVER_SRC3_PORT",
        ])
        .enumerate()
    {
        vars.insert(
            ["HOST1_ID", "HOST2_ID", "HOST3_ID"][i],
            format!("cp{}", i + 1),
        );
        vars.insert(
            ["HOST1_ADDRESS", "HOST2_ADDRESS", "HOST3_ADDRESS"][i],
            "127.0.0.1".into(),
        );
        vars.insert(src, server.addr.port().to_string());
    }
    haproxy_accepts("kubeadm.cfg", &vars);

    // lbd picks the frontend's port itself.
    vars.insert("APISERVER_DEST_PORT", "0".into());
    let out = import("kubeadm.cfg", &vars);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let (ok, said) = lbd_check_config(&out.stdout);
    assert!(
        ok,
        "lbd --check-config refuses the import:\n{said}\n{}",
        out.stdout
    );
    for server in &apiservers {
        assert!(
            out.stdout.contains(&format!("\"{}\"", server.addr)),
            "{}",
            out.stdout
        );
    }
    // `option ssl-hello-chk` is the check in force: a TLS handshake.
    assert!(
        out.stdout.contains("[backend.health]\ncheck = \"tls\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("imported 1 frontend, 1 backend, 3 servers"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout
            .contains("# not imported: option                  httplog")
    );

    let lbd = Lbd::start(&out.stdout);
    all_up(&lbd);
    let front = frontend_addr(&lbd, "apiserver");
    for _ in 0..6 {
        assert!(tls_get(front, "kubernetes", &pki), "a TLS GET through lbd");
    }
    let served: Vec<usize> = apiservers.iter().map(HttpsServer::requests).collect();
    assert_eq!(served.iter().sum::<usize>(), 6, "{served:?}");
    assert!(
        served.iter().all(|&n| n > 0),
        "round-robin reaches every apiserver: {served:?}"
    );
}

#[test]
fn a_richer_haproxy_cfg_imports_and_each_frontend_reaches_its_servers() {
    let servers: HashMap<&str, Backend> = ["cp1", "cp2", "cp3", "k1", "e1", "e2"]
        .into_iter()
        .map(|name| (name, Backend::named(name)))
        .collect();
    let k1_health = Backend::echo();
    let mut vars: HashMap<&str, String> = servers
        .iter()
        .map(|(name, b)| (name_var(name), b.addr.to_string()))
        .collect();
    vars.insert("K1_HEALTH_PORT", k1_health.addr.port().to_string());
    for (i, port) in ["API_PORT", "KONNECTIVITY_PORT", "ETCD_PORT", "STATS_PORT"]
        .into_iter()
        .enumerate()
    {
        vars.insert(port, (16443 + i).to_string());
    }
    haproxy_accepts("rich.cfg", &vars);

    for port in ["API_PORT", "KONNECTIVITY_PORT", "ETCD_PORT", "STATS_PORT"] {
        vars.insert(port, "0".into());
    }
    let out = import("rich.cfg", &vars);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let (ok, said) = lbd_check_config(&out.stdout);
    assert!(
        ok,
        "lbd --check-config refuses the import:\n{said}\n{}",
        out.stdout
    );
    let text = &out.stdout;
    for expected in [
        "[global]\nmax_connections = 4000",
        "max_connections = 20000",
        "balance = \"least-connections\"",
        "balance = \"source-hash\"",
        "balance = \"first\"",
        &format!(
            "{{ name = \"cp1\", address = \"{}\", weight = 2 }}",
            servers["cp1"].addr
        ),
        &format!("port = {}", k1_health.addr.port()),
        "idle_timeout = \"10m\"",
        "fin_timeout = \"30s\"",
        "interval = \"1s\"\nfast_interval = \"500ms\"\nrise = 2\nfall = 3",
        &format!(
            "# not imported: server cp3 {} check backup",
            servers["cp3"].addr
        ),
        "# not imported: frontend stats (line 50): mode http",
    ] {
        assert!(text.contains(expected), "{expected:?} in\n{text}");
    }
    assert!(!text.contains("name = \"stats\""), "{text}");

    let lbd = Lbd::start(text);
    all_up(&lbd);
    // leastconn over cp1 (weight 2) and cp2; cp3 is a backup, left out.
    let api = frontend_addr(&lbd, "apiserver");
    let held: Vec<_> = (0..6).map(|_| hold(api)).collect();
    let seen: BTreeSet<&str> = held.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(seen, BTreeSet::from(["cp1", "cp2"]));
    assert_eq!(hold(frontend_addr(&lbd, "konnectivity")).0, "k1");
    // `balance first` on the listen section: always the first server.
    let etcd = frontend_addr(&lbd, "etcd-metrics");
    let held: Vec<_> = (0..3).map(|_| hold(etcd)).collect();
    assert!(
        held.iter().all(|(name, _)| name == "e1"),
        "balance first keeps to e1"
    );
    assert_eq!(
        servers["cp3"]
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

fn name_var(server: &str) -> &'static str {
    match server {
        "cp1" => "CP1",
        "cp2" => "CP2",
        "cp3" => "CP3",
        "k1" => "K1",
        "e1" => "E1",
        _ => "E2",
    }
}

/// The lines of `config` without the keys lbd's schema gets with issue 16a.
fn without_sni_and_proxy_keys(config: &str) -> String {
    let mut out = String::new();
    let mut in_routes = false;
    for line in config.lines() {
        if line.starts_with("routes = [") {
            in_routes = true;
        }
        let new_key = ["accept_proxy", "send_proxy", "inspect_timeout"]
            .iter()
            .any(|k| line.starts_with(k));
        if !in_routes && !new_key {
            out.push_str(line);
            out.push('\n');
        }
        if in_routes && line == "]" {
            in_routes = false;
        }
    }
    out
}

/// A server that expects PROXY protocol: records the first bytes of each
/// connection that sends any (health checks connect and send nothing).
fn proxy_protocol_server() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = vec![0u8; 28];
                if stream.read_exact(&mut head).is_ok() {
                    sink.lock().unwrap().push(head);
                }
            });
        }
    });
    (addr, seen)
}

const PROXY_V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY protocol v2 header for TCP over IPv4 from 192.0.2.7:5555.
fn proxy_v2_header(to: SocketAddr) -> Vec<u8> {
    let mut header = PROXY_V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 7, 127, 0, 0, 1]);
    header.extend_from_slice(&5555u16.to_be_bytes());
    header.extend_from_slice(&to.port().to_be_bytes());
    header
}

#[test]
fn sni_routes_and_proxy_protocol_import() {
    let pki = Pki::new(&["lab-a.example", "api.lab-b.example", "x.lab-c.example"]);
    let labs: Vec<HttpsServer> = (0..3).map(|_| HttpsServer::start(&pki, 200)).collect();
    let (proxy_target, received) = proxy_protocol_server();
    let mut vars = HashMap::from([
        ("LAB_A", labs[0].addr.to_string()),
        ("LAB_B", labs[1].addr.to_string()),
        ("LAB_C", labs[2].addr.to_string()),
        ("PROXY_TARGET", proxy_target.to_string()),
        ("TLS_PORT", "16443".into()),
        ("PROXIED_PORT", "16444".into()),
    ]);
    haproxy_accepts("sni-proxy.cfg", &vars);

    vars.insert("TLS_PORT", "0".into());
    vars.insert("PROXIED_PORT", "0".into());
    let out = import("sni-proxy.cfg", &vars);
    let text = &out.stdout;
    for expected in [
        "routes = [\n  { sni = \"api.lab-b.example\", backend = \"lab-b\" },\n  { sni = \"*.lab-c.example\", backend = \"lab-c\" },\n]",
        "backend = \"lab-a\"",
        "inspect_timeout = \"5s\"",
        "accept_proxy = \"v2\"",
        "send_proxy = \"v2\"",
    ] {
        assert!(text.contains(expected), "{expected:?} in\n{text}");
    }
    assert!(
        !text.contains("\n# not imported"),
        "every line carries over:\n{text}"
    );
    let (ok, said) = lbd_check_config(&without_sni_and_proxy_keys(text));
    assert!(
        ok,
        "apart from the SNI/PROXY keys, lbd accepts the import:\n{said}"
    );
    if !SNI_AND_PROXY_IN_SCHEMA {
        eprintln!("SNI/PROXY keys not in this lbd's schema yet: not starting lbd on the import");
        return;
    }

    assert_eq!(out.code, 0, "{text}\n{}", out.stderr);
    let (ok, said) = lbd_check_config(text);
    assert!(ok, "lbd --check-config refuses the import:\n{said}\n{text}");
    let lbd = Lbd::start(text);
    all_up(&lbd);
    let front = frontend_addr(&lbd, "tls-passthrough");
    for (sni, lab) in [
        ("api.lab-b.example", 1),
        ("x.lab-c.example", 2),
        ("lab-a.example", 0),
    ] {
        let before: Vec<usize> = labs.iter().map(HttpsServer::requests).collect();
        assert!(tls_get(front, sni, &pki), "TLS through lbd with SNI {sni}");
        let after: Vec<usize> = labs.iter().map(HttpsServer::requests).collect();
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            assert_eq!(
                a - b,
                usize::from(i == lab),
                "SNI {sni} reaches lab {lab} only"
            );
        }
    }

    // A client behind a proxy: lbd reads its address from the header it
    // got and passes it on in the one it sends.
    let proxied = frontend_addr(&lbd, "from-proxy");
    let mut client = TcpStream::connect(proxied).unwrap();
    client.write_all(&proxy_v2_header(proxied)).unwrap();
    client.write_all(b"hello").unwrap();
    wait_until(
        Duration::from_secs(10),
        "the server to get a PROXY header",
        || !received.lock().unwrap().is_empty(),
    );
    let head = received.lock().unwrap()[0].clone();
    assert_eq!(&head[..12], PROXY_V2_SIGNATURE);
    assert_eq!(
        &head[16..20],
        &[192, 0, 2, 7],
        "the client's address from the first header"
    );
}

#[test]
fn usage_errors_exit_2_and_an_unusable_result_exits_1() {
    assert_eq!(
        lbctl(&["import", "nginx", "nginx.conf"]).code,
        2,
        "unknown source kind"
    );
    assert_eq!(lbctl(&["import", "haproxy"]).code, 2, "no path");
    let missing = lbctl(&["import", "haproxy", "/nonexistent/haproxy.cfg"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing
            .stderr
            .contains("cannot read /nonexistent/haproxy.cfg"),
        "{}",
        missing.stderr
    );

    // Only an HTTP frontend: nothing lbd can serve, so the result is not usable.
    let dir = TempDir::new("import");
    let path = dir.write(
        "haproxy.cfg",
        "frontend web\n    mode http\n    bind :80\n    default_backend web\nbackend web\n    mode http\n    server w1 10.0.0.1:80\n",
    );
    let out = lbctl(&["import", "haproxy", path.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("# not imported: bind :80"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("the result is not usable as is"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("haproxy.cfg:1: `frontend web`: skipped, mode http"),
        "{}",
        out.stderr
    );
}
