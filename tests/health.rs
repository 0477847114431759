//! Health checking through the real `lbd` binary: dead, blackholed,
//! recovering and draining servers, auth problems, and what clients meet
//! when no server is left. Health is observed from the outside, in lbd's logs.

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::https::{HttpsServer, Pki};
use support::metrics::value;
use support::{Backend, Lbd, TempDir, config_for, greeting, wait_until};

/// A config for `backends` with `[backend.health]` set to `health`.
fn with_health(backends: &[&Backend], backend_extra: &str, health: &str) -> String {
    config_for(backends, backend_extra, "") + "[backend.health]\n" + health + "\n"
}

/// The log line announcing `server`'s change to `state` (`up` or `down`).
fn transition(server: &str, state: &str) -> String {
    format!(" {server} {state}: ")
}

/// Waits for the `nth` (1-based) such line and returns it.
fn wait_for_transition(
    lbd: &Lbd,
    server: &str,
    state: &str,
    nth: usize,
    within: Duration,
) -> String {
    let needle = transition(server, state);
    let mut found = None;
    wait_until(within, &format!("log line {nth} with {needle:?}"), || {
        found = lbd.logs_matching(&needle).into_iter().nth(nth - 1);
        found.is_some()
    });
    found.unwrap()
}

/// Connects through lbd and keeps the connection, with the server's name.
fn hold(addr: SocketAddr) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        stream.read_exact(&mut byte).unwrap();
        line.push(byte[0]);
    }
    (String::from_utf8(line).unwrap().trim().to_owned(), stream)
}

fn echo_works(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4];
    stream.write_all(b"ping").is_ok() && stream.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

#[test]
fn a_killed_server_is_marked_down_in_time_and_clients_never_notice() {
    let backends = [
        Backend::named("a"),
        Backend::named("b"),
        Backend::named("c"),
    ];
    let (interval, fall) = (Duration::from_secs(1), 3);
    let bound = interval * (fall + 1);
    let lbd = Lbd::start(&with_health(
        &backends.each_ref(),
        "",
        "interval = \"1s\"\nfall = 3",
    ));
    let addr = lbd.addr("api");

    // Killed under traffic: 200 connections right after, every one served.
    let killed = Instant::now();
    backends[1].stop();
    let mut served: HashMap<String, usize> = HashMap::new();
    for i in 0..200 {
        let name = greeting(addr).unwrap_or_else(|e| panic!("connection {i} failed: {e}"));
        *served.entry(name).or_default() += 1;
    }
    assert_eq!(served.get("b"), None, "{served:?}");
    assert!(served["a"] > 0 && served["c"] > 0, "{served:?}");
    let line = wait_for_transition(&lbd, "b", "down", 1, bound.saturating_sub(killed.elapsed()));
    assert!(line.contains("refused"), "{line}");
    eprintln!(
        "killed under traffic: marked down after {:?}",
        killed.elapsed()
    );

    // Killed quietly: only the active checks can notice.
    let killed = Instant::now();
    backends[2].stop();
    let line = wait_for_transition(&lbd, "c", "down", 1, bound);
    assert!(killed.elapsed() <= bound, "{:?}", killed.elapsed());
    eprintln!("killed quietly: marked down after {:?}", killed.elapsed());
    assert!(line.contains("3 consecutive refused connections"), "{line}");
    for _ in 0..20 {
        assert_eq!(greeting(addr).unwrap(), "a");
    }
}

#[test]
fn a_blackholed_server_is_marked_down_by_timeout_and_costs_a_client_one_dial_at_most() {
    let a = Backend::named("a");
    let b = Backend::blackholable("b");
    let c = Backend::named("c");
    let connect_timeout = Duration::from_millis(500);
    let lbd = Lbd::start(&with_health(
        &[&a, &b, &c],
        "connect_timeout = \"500ms\"",
        "interval = \"1s\"\ntimeout = \"300ms\"\nfall = 3",
    ));
    let addr = lbd.addr("api");

    b.blackhole();
    let blackholed = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let started = Instant::now();
        let name = greeting(addr).unwrap_or_else(|e| panic!("connection {i} failed: {e}"));
        slowest = slowest.max(started.elapsed());
        assert_ne!(name, "b");
    }
    // One dial to b that times out, then the retry's own dial elsewhere.
    assert!(slowest < 2 * connect_timeout, "a client waited {slowest:?}");
    let line = wait_for_transition(&lbd, "b", "down", 1, Duration::from_secs(4));
    assert!(blackholed.elapsed() <= Duration::from_secs(4));
    eprintln!(
        "blackholed: slowest client {slowest:?}, marked down after {:?}",
        blackholed.elapsed()
    );
    assert!(line.contains("timeout"), "{line}");
}

#[test]
fn a_recovered_server_comes_back_after_rise_checks() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let lbd = Lbd::start(&with_health(
        &[&a, &b],
        "",
        "interval = \"500ms\"\nrise = 2\nfall = 2",
    ));
    let addr = lbd.addr("api");
    b.stop();
    wait_for_transition(&lbd, "b", "down", 1, Duration::from_secs(5));
    for _ in 0..6 {
        assert_eq!(greeting(addr).unwrap(), "a");
    }

    let _b = Backend::named_at("b", b.addr);
    // The first "b up" was at start; this is the second.
    let line = wait_for_transition(&lbd, "b", "up", 2, Duration::from_secs(5));
    assert!(line.contains("2 consecutive successful checks"), "{line}");
    let names: Vec<String> = (0..6).map(|_| greeting(addr).unwrap()).collect();
    assert!(names.iter().any(|n| n == "b"), "{names:?}");
}

#[test]
fn readyz_failing_while_tcp_answers_takes_the_server_out_but_keeps_its_connections() {
    // Two apiservers, each with its data port and a /readyz on a shared
    // health port (`port`), on two loopback addresses.
    let pki = Pki::new(&["kubernetes", "127.0.0.1", "127.0.0.2"]);
    let health_a = HttpsServer::start(&pki, 200);
    let port = health_a.addr.port();
    let health_b = HttpsServer::start_at(&pki, SocketAddr::from(([127, 0, 0, 2], port)), 200);
    let a = Backend::named("a");
    let b = Backend::named_at("b", "127.0.0.2:0".parse().unwrap());
    let lbd = Lbd::start(&with_health(
        &[&a, &b],
        "",
        &format!(
            "check = \"https\"\nport = {port}\nsni = \"kubernetes\"\nca_file = {:?}\ninterval = \"500ms\"\nfall = 2",
            pki.ca_file
        ),
    ));
    let addr = lbd.addr("api");
    let up = wait_for_transition(&lbd, "b", "up", 1, Duration::from_secs(5));
    assert!(up.contains("first https check passed"), "{up}");
    let mut on_b = loop {
        let (name, stream) = hold(addr);
        if name == "b" {
            break stream;
        }
    };

    health_b.set_status(500);
    let down = wait_for_transition(&lbd, "b", "down", 1, Duration::from_secs(5));
    assert!(down.contains("2 consecutive HTTP errors"), "{down}");
    assert!(down.contains("500 Internal Server Error"), "{down}");
    assert!(TcpStream::connect(b.addr).is_ok(), "TCP to b still answers");
    assert!(echo_works(&mut on_b), "b's open connection was cut");
    for _ in 0..6 {
        assert_eq!(greeting(addr).unwrap(), "a");
    }
    assert!(health_a.requests() > 0);
}

#[test]
fn a_401_is_an_auth_error_that_keeps_the_server_up_and_says_so_loudly() {
    let pki = Pki::new(&["127.0.0.1"]);
    let health = HttpsServer::start(&pki, 401);
    let a = Backend::named("a");
    let lbd = Lbd::start(&with_health(
        &[&a],
        "",
        &format!("check = \"https\"\nport = {}", health.addr.port()),
    ));
    let warning = lbd.wait_for_log("result=\"auth_error\"", Duration::from_secs(5));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("not authorized"), "{warning}");
    assert!(warning.contains("cert_file"), "{warning}");
    let up = wait_for_transition(&lbd, "a", "up", 1, Duration::from_secs(5));
    assert!(up.contains("result=auth_error"), "{up}");
    assert_eq!(greeting(lbd.addr("api")).unwrap(), "a");

    // Visible where operators look: the status and the metrics.
    let status = lbd.status();
    let server = &status["backends"][0]["servers"][0];
    assert_eq!(server["health"], "up");
    assert_eq!(server["last_check"]["result"], "auth_error", "{server}");
    assert_eq!(server["last_check"]["check"], "https", "{server}");
    assert!(
        server["last_check"]["detail"]
            .as_str()
            .unwrap()
            .contains("401 Unauthorized"),
        "{server}"
    );
    let metrics = lbd.metrics();
    let auth_errors = value(
        &metrics,
        "lbd_health_checks_total",
        &[("server", "a"), ("result", "auth_error")],
    );
    assert!(auth_errors >= 1.0, "{auth_errors}");
    let oks = value(
        &metrics,
        "lbd_health_checks_total",
        &[("server", "a"), ("result", "ok")],
    );
    assert_eq!(oks, 0.0);
}

#[test]
fn an_https_check_names_a_server_that_demands_a_client_certificate() {
    let pki = Pki::new(&["127.0.0.1"]);
    let health = HttpsServer::start_requiring_client_cert(&pki, 200);
    let a = Backend::named("a");
    let lbd = Lbd::start(&with_health(
        &[&a],
        "",
        &format!(
            "check = \"https\"\nport = {}\nca_file = {:?}\ninterval = \"200ms\"",
            health.addr.port(),
            pki.ca_file
        ),
    ));
    let mut detail = String::new();
    wait_until(Duration::from_secs(10), "a failed check of a", || {
        let status = lbd.status();
        let check = &status["backends"][0]["servers"][0]["last_check"];
        detail = check["detail"].as_str().unwrap_or_default().to_owned();
        check["result"].as_str().is_some_and(|r| r != "ok")
    });
    // What `lbctl probe` says of the same server, in the check's own words.
    assert!(
        detail.contains("the server requires a client certificate"),
        "{detail}"
    );
    assert!(detail.contains("cert_file and key_file"), "{detail}");
}

#[test]
fn a_tls_check_with_ca_file_refuses_a_certificate_for_another_name() {
    let pki = Pki::new(&["kubernetes"]);
    let health = HttpsServer::start(&pki, 200);
    let a = Backend::named("a");
    let b = Backend::named("b");
    let config = with_health(
        &[&a, &b],
        "",
        &format!(
            "check = \"tls\"\nport = {}\nsni = \"not-kubernetes\"\nca_file = {:?}",
            health.addr.port(),
            pki.ca_file
        ),
    );
    let lbd = Lbd::start(&config);
    let down = wait_for_transition(&lbd, "a", "down", 1, Duration::from_secs(5));
    assert!(down.contains("tls_error"), "{down}");
    assert!(down.contains("not valid for name"), "{down}");
    drop(lbd);

    // The right name passes.
    let lbd = Lbd::start(&config.replace("not-kubernetes", "kubernetes"));
    let up = wait_for_transition(&lbd, "a", "up", 1, Duration::from_secs(5));
    assert!(up.contains("first tls check passed"), "{up}");
}

#[test]
fn with_every_server_down_clients_are_refused_at_once_until_one_is_back() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    // Four per-core runtimes: four sockets on the address, one log line.
    let lbd = Lbd::start(&format!(
        "[global]\nthreads = 4\n\n{}",
        with_health(&[&a, &b], "", "interval = \"500ms\"\nfall = 2")
    ));
    let addr = lbd.addr("api");
    a.stop();
    b.stop();
    wait_for_transition(&lbd, "a", "down", 1, Duration::from_secs(5));
    wait_for_transition(&lbd, "b", "down", 1, Duration::from_secs(5));
    let paused = lbd.wait_for_log("frontend api paused", Duration::from_secs(5));
    assert!(
        paused.contains("no server can take a connection"),
        "{paused}"
    );
    // Not accepted and reset: the handshake itself is refused, as `nc -v` shows.
    for _ in 0..5 {
        let err = TcpStream::connect(addr).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    }

    let _a = Backend::named_at("a", a.addr);
    wait_for_transition(&lbd, "a", "up", 1, Duration::from_secs(5));
    lbd.wait_for_log("frontend api resumed", Duration::from_secs(5));
    assert_eq!(greeting(addr).unwrap(), "a");
    // Once per address, not once per runtime's socket. (The other sockets
    // act on the same change within milliseconds; give them time to.)
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        lbd.logs_matching("frontend api paused").len(),
        1,
        "{:?}",
        lbd.logs()
    );
    assert_eq!(
        lbd.logs_matching("frontend api resumed").len(),
        1,
        "{:?}",
        lbd.logs()
    );
}

#[test]
fn panic_mode_sends_clients_to_servers_whose_checks_fail() {
    let a = Backend::named("a");
    let closed = Backend::echo();
    closed.stop();
    // The checks look at a closed port: every server is "down", wrongly.
    let lbd = Lbd::start(&with_health(
        &[&a],
        "on_no_server = \"panic\"",
        &format!("port = {}", closed.addr.port()),
    ));
    wait_for_transition(&lbd, "a", "down", 1, Duration::from_secs(5));
    let warning = lbd.wait_for_log("panic mode", Duration::from_secs(5));
    assert!(warning.contains("WARN"), "{warning}");
    for _ in 0..3 {
        assert_eq!(greeting(lbd.addr("api")).unwrap(), "a");
    }
    assert!(lbd.logs_matching("frontend api paused").is_empty());
}

#[test]
fn close_on_down_closes_open_connections_within_the_window() {
    let a = Backend::named("a");
    let check = Backend::echo();
    let lbd = Lbd::start(&with_health(
        &[&a],
        "",
        &format!(
            "port = {}\ninterval = \"500ms\"\nfall = 1\nclose_on_down = \"1s\"",
            check.addr.port()
        ),
    ));
    let (name, mut open) = hold(lbd.addr("api"));
    assert_eq!(name, "a");
    assert!(echo_works(&mut open));

    check.stop();
    wait_for_transition(&lbd, "a", "down", 1, Duration::from_secs(5));
    let down_at = Instant::now();
    let mut buf = [0u8; 1];
    let read = open.read(&mut buf);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "the connection should be closed: {read:?}"
    );
    assert!(
        down_at.elapsed() < Duration::from_secs(3),
        "{:?}",
        down_at.elapsed()
    );
    let closed = lbd.wait_for_log("connection closed", Duration::from_secs(5));
    assert!(
        closed.contains("outcome=\"server_down\"") || closed.contains("outcome=server_down"),
        "{closed}"
    );
    let closed_down = value(
        &lbd.metrics(),
        "lbd_server_closed_total",
        &[("server", "a"), ("reason", "down")],
    );
    assert_eq!(closed_down, 1.0, "counted as closed by lbd: down");
}

#[test]
fn close_on_down_closes_a_connection_whose_dial_completes_after_the_mark_down() {
    // An apiserver whose /readyz starts failing while a client's dial to its
    // data port is still in flight: the port's accept queue is full, so the
    // SYN is dropped and retransmitted, and the handshake completes only
    // after the mark-down. That connection must be closed like the others.
    let pki = Pki::new(&["kubernetes", "127.0.0.1"]);
    let ready = HttpsServer::start(&pki, 200);
    let data = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    data.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    data.listen(0).unwrap();
    let data_addr = data.local_addr().unwrap().as_socket().unwrap();
    let queued = support::blackhole::fill_accept_queue(data_addr);
    let config = format!(
        "[[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"pool\"\n\n\
         [[backend]]\nname = \"pool\"\nconnect_timeout = \"15s\"\n\
         servers = [{{ name = \"slow\", address = \"{data_addr}\" }}]\n\
         [backend.health]\ncheck = \"https\"\nport = {}\nsni = \"kubernetes\"\nca_file = {:?}\n\
         interval = \"200ms\"\nfall = 1\nrise = 100\npassive = false\nclose_on_down = \"500ms\"\n",
        ready.addr.port(),
        pki.ca_file
    );
    let lbd = Lbd::start(&config);

    let mut client = TcpStream::connect(lbd.addr("api")).unwrap();
    wait_until(Duration::from_secs(5), "lbd dialling slow", || {
        lbd.status()["backends"][0]["servers"][0]["active_connections"] == 1
    });
    ready.set_status(500);
    wait_for_transition(&lbd, "slow", "down", 1, Duration::from_secs(5));
    // Make room in the queue: the next retransmitted SYN completes the dial.
    drop(queued);
    let _first = data.accept().unwrap();
    let served = std::thread::spawn(move || {
        let (mut upstream, _) = data.accept().unwrap();
        upstream.write_all(b"slow\n").unwrap();
        // Hold the connection until lbd closes it.
        let _ = upstream.read_to_end(&mut Vec::new());
    });
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut greeting = [0u8; 5];
    client.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"slow\n");

    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let read = client.read(&mut [0u8; 1]);
    assert!(
        matches!(&read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the connection dialled across the mark-down was kept: {read:?}"
    );
    let closed = lbd.wait_for_log("connection closed", Duration::from_secs(5));
    assert!(closed.contains("server_down"), "{closed}");
    served.join().unwrap();
}

#[test]
fn server_health_in_metrics_tells_down_from_not_checked() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let lbd = Lbd::start(&with_health(
        &[&a, &b],
        "",
        "interval = \"500ms\"\nfall = 1",
    ));
    b.stop();
    wait_for_transition(&lbd, "b", "down", 1, Duration::from_secs(5));
    // Disabled: checks paused, health back to unknown.
    let (code, body) = lbd.post("/api/v1/backends/pool/servers/a/disable");
    assert_eq!(code, 200, "{body}");
    wait_until(Duration::from_secs(5), "a to be unknown", || {
        lbd.status()["backends"][0]["servers"][0]["health"] == "unknown"
    });
    let metrics = lbd.metrics();
    let health = |server: &str, state: &str| {
        value(
            &metrics,
            "lbd_server_health",
            &[("server", server), ("state", state)],
        )
    };
    let up = |server: &str| value(&metrics, "lbd_server_up", &[("server", server)]);
    assert_eq!(
        (up("a"), up("b")),
        (0.0, 0.0),
        "lbd_server_up cannot tell them apart"
    );
    assert_eq!(
        (
            health("a", "unknown"),
            health("a", "up"),
            health("a", "down")
        ),
        (1.0, 0.0, 0.0)
    );
    assert_eq!(
        (
            health("b", "unknown"),
            health("b", "up"),
            health("b", "down")
        ),
        (0.0, 0.0, 1.0)
    );
}

/// A config whose https check names a client key at `key_file`.
fn with_client_key(a: &Backend, pki: &Pki, port: u16, key_file: &std::path::Path) -> String {
    with_health(
        &[a],
        "",
        &format!(
            "check = \"https\"\nport = {port}\nca_file = {:?}\ncert_file = {:?}\nkey_file = {key_file:?}",
            pki.ca_file, pki.client_cert_file
        ),
    )
}

#[test]
fn unusable_tls_files_are_refused_by_check_config_start_and_reload() {
    let pki = Pki::new(&["127.0.0.1"]);
    let health = HttpsServer::start(&pki, 200);
    let a = Backend::named("a");
    let port = health.addr.port();
    let dir = TempDir::new("tls-files");
    let missing = dir.0.join("missing.key");
    let bad = with_client_key(&a, &pki, port, &missing);
    let key_line = bad.lines().position(|l| l.starts_with("key_file")).unwrap() + 1;

    // lbd --check-config (systemd's ExecReload runs it) names the key's place.
    let path = dir.write("lbd.toml", &bad);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lbd"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let place = format!("{}:{key_line}:12: cannot use key_file", path.display());
    assert!(stderr.contains(&place), "expected {place:?} in {stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");

    // A reload to it is refused and the running config stays.
    let lbd = Lbd::start(&with_client_key(&a, &pki, port, &pki.client_key_file));
    let up = wait_for_transition(&lbd, "a", "up", 1, Duration::from_secs(5));
    assert!(up.contains("first https check passed"), "{up}");
    lbd.rewrite_config(&bad);
    let (code, body) = lbd.post("/api/v1/reload");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("cannot use key_file"), "{body}");
    let status = lbd.status();
    assert_eq!(status["config"]["last_reload"]["ok"], false);
    assert_eq!(status["backends"][0]["servers"][0]["health"], "up");
    assert_eq!(greeting(lbd.addr("api")).unwrap(), "a");
    drop(lbd);

    // And lbd does not start on it.
    let config_path = dir.write("start.toml", &support::with_admin_on_free_port(&bad));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lbd"))
        .arg("--config")
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot use key_file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
