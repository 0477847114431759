//! PROXY protocol against a real HAProxy: lbd's `send_proxy` v1 and v2 to
//! an HAProxy frontend with `accept-proxy` that answers with the client
//! address it parsed, and lbd's `accept_proxy = "v2"` behind an HAProxy
//! that sends `send-proxy-v2`. A connection without the header is closed
//! and counted, never forwarded. `.ci/run` installs haproxy.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::metrics::value;
use support::{Lbd, TempDir, free_port, have, wait_until};

/// An HAProxy child process, killed on drop.
struct Haproxy(Child, #[allow(dead_code)] TempDir);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_haproxy(config: &str, ports: &[u16]) -> Haproxy {
    let dir = TempDir::new("haproxy");
    let path = dir.write("haproxy.cfg", config);
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy refuses the test config: {}",
        String::from_utf8_lossy(&check.stdout) + String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let haproxy = Haproxy(child, dir);
    for &port in ports {
        wait_until(Duration::from_secs(10), "haproxy to listen", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }
    haproxy
}

/// `GET /` through `addr`: the body, and the client's own address.
fn reported_source(addr: SocketAddr) -> (String, SocketAddr) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let local = stream.local_addr().unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_owned();
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
    (body, local)
}

#[test]
fn haproxy_sees_the_client_through_lbd_and_lbd_through_haproxy() {
    if !have("haproxy") {
        eprintln!("SKIPPED: haproxy is not installed (.ci/run installs it in CI)");
        return;
    }
    let (reporter, front) = (free_port(), free_port());
    let lbd = Lbd::start(&format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[frontend]]
name = "v1"
listen = ["127.0.0.1:0"]
backend = "reporter-v1"

[[frontend]]
name = "v2"
listen = ["127.0.0.1:0"]
backend = "reporter-v2"

[[frontend]]
name = "behind"
listen = ["127.0.0.1:0"]
backend = "reporter-v1"
accept_proxy = "v2"
inspect_timeout = "500ms"

[[backend]]
name = "reporter-v1"
send_proxy = "v1"
servers = [{{ address = "127.0.0.1:{reporter}" }}]

[[backend]]
name = "reporter-v2"
send_proxy = "v2"
servers = [{{ address = "127.0.0.1:{reporter}" }}]
"#
    ));
    let behind = lbd.addr("behind");
    // The reporter answers with the source its PROXY header named; it
    // accepts no connection without one.
    let _haproxy = start_haproxy(
        &format!(
            r#"defaults
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend reporter
    mode http
    bind 127.0.0.1:{reporter} accept-proxy
    http-request return status 200 content-type text/plain lf-string "%[src]:%[src_port]"

frontend front
    mode tcp
    bind 127.0.0.1:{front}
    default_backend lbd

backend lbd
    mode tcp
    server lbd {behind} send-proxy-v2
"#
        ),
        &[reporter, front],
    );
    wait_until(
        Duration::from_secs(10),
        "the reporter to be up (plain health checks)",
        || {
            lbd.status()["backends"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["servers"][0]["health"] == "up")
        },
    );

    // lbd → HAProxy, v1 and v2: HAProxy sees the client's own address and port.
    for frontend in ["v1", "v2"] {
        let (seen, client) = reported_source(lbd.addr(frontend));
        assert_eq!(seen, client.to_string(), "send_proxy {frontend}");
    }

    // client → HAProxy (send-proxy-v2) → lbd (accept_proxy v2, send_proxy
    // v1) → HAProxy: the address lbd passes on is the one HAProxy sent it.
    let (seen, client) = reported_source(SocketAddr::from(([127, 0, 0, 1], front)));
    assert_eq!(seen, client.to_string(), "through HAProxy and lbd");

    // `lbctl probe` of a server that expects the header says it may.
    let probe = support::lbctl(&["probe", &format!("127.0.0.1:{reporter}"), "--tls"]);
    assert_ne!(probe.code, 0);
    assert!(probe.stdout.contains("PROXY protocol"), "{}", probe.stdout);

    // Straight to the accept_proxy frontend without a header: closed,
    // counted, never forwarded (the reporter would answer 400 or 200).
    let mut bare = TcpStream::connect(behind).unwrap();
    bare.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    bare.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = bare.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    // A silent client is closed at inspect_timeout, counted the same way.
    let mut silent = TcpStream::connect(behind).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(silent.read(&mut [0u8; 8]).unwrap_or(0), 0);
    let rejected = value(
        &lbd.metrics(),
        "lbd_frontend_rejected_total",
        &[("frontend", "behind"), ("reason", "proxy_header")],
    );
    assert_eq!(rejected, 2.0);
}
