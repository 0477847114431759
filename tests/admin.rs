//! The admin API through the real binary (DESIGN.md §3.3): routes, error
//! answers, the status JSON, drain/enable/disable, readiness, the unix
//! socket, and /metrics as valid OpenMetrics text whose counters move.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use support::metrics::{parse_openmetrics, value};
use support::{
    Backend, Lbd, config_for, echo_round_trip, greeting, hold, http_raw, parse_http_answer,
    wait_until,
};

#[test]
fn routes_methods_and_malformed_requests() {
    let a = Backend::named("a");
    let lbd = Lbd::start(&config_for(&[&a], "", ""));
    let admin = lbd.admin_addr();
    assert_eq!(lbd.get("/healthz"), (200, "ok\n".into()));
    assert_eq!(lbd.get("/readyz"), (200, "ready\n".into()));
    // A 404 points at the route list, in a file the repository has.
    let (code, body) = lbd.get("/nope");
    assert_eq!(code, 404, "{body}");
    let cited = body
        .split_whitespace()
        .find(|w| w.ends_with(".md"))
        .unwrap_or_else(|| panic!("no document cited: {body}"));
    let cited = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(cited);
    assert!(cited.is_file(), "{body} cites {}", cited.display());
    assert!(
        std::fs::read_to_string(&cited)
            .unwrap()
            .contains("| `GET /readyz` |"),
        "{} should hold the route list",
        cited.display()
    );
    assert_eq!(lbd.get("/api/v1/backends/pool/servers/a/explode").0, 404);
    assert_eq!(lbd.post("/metrics").0, 405);
    assert_eq!(lbd.get("/api/v1/reload").0, 405);
    assert_eq!(lbd.get("/api/v1/backends/pool/servers/a/drain").0, 405);
    assert_eq!(lbd.post("/api/v1/backends/pool/servers/zz/drain").0, 404);
    assert_eq!(lbd.post("/api/v1/backends/nope/servers/a/drain").0, 404);
    assert_eq!(lbd.post("/api/v1/backends/pool/servers/%zz/drain").0, 400);

    // An HTTP/2 client (curl --http2-prior-knowledge) hears why, not a
    // silent close.
    let answer = http_raw(
        admin,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(answer.ends_with("HTTP/1.1 only\n"), "{answer:?}");

    // Garbage, a huge body, huge headers: 4xx answers, and lbd lives on.
    let answer = http_raw(admin, b"HELLO\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let big = format!(
        "POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        10 * 1024 * 1024
    );
    assert_eq!(parse_http_answer(&http_raw(admin, big.as_bytes())).0, 413);
    let mut chunked = b"POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..80 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'x'; 0x400]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(parse_http_answer(&http_raw(admin, &chunked)).0, 413);
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "y".repeat(64 * 1024)
    );
    let answer = http_raw(admin, huge_header.as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 431") || answer.starts_with("HTTP/1.1 400"),
        "{answer:?}"
    );
    assert_eq!(lbd.get("/healthz").0, 200);
}

#[test]
fn status_has_every_contract_field() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let lbd = Lbd::start(&config_for(&[&a, &b], "", ""));
    greeting(lbd.addr("api")).unwrap();
    let status = lbd.status();
    let config = &status["config"];
    assert_eq!(config["path"], lbd.config_path.display().to_string());
    let last = &config["last_reload"];
    assert_eq!(last["ok"], true);
    assert!(last["error"].is_null());
    assert!(last["at"].as_str().unwrap().ends_with('Z'), "{last}");

    let frontend = &status["frontends"][0];
    assert_eq!(frontend["name"], "api");
    assert_eq!(
        frontend["listen"],
        serde_json::json!([lbd.addr("api").to_string()])
    );
    assert_eq!(frontend["backend"], "pool");
    wait_until(
        Duration::from_secs(5),
        "the connection to be counted closed",
        || lbd.status()["frontends"][0]["active_connections"] == 0,
    );
    let status = lbd.status();
    let frontend = &status["frontends"][0];
    assert_eq!(frontend["connections_total"], 1);
    assert_eq!(frontend["rejected_total"], 0);

    let backend = &status["backends"][0];
    assert_eq!(backend["name"], "pool");
    let server = &backend["servers"][0];
    let mut keys: Vec<&str> = server
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "active_connections",
            "address",
            "admin",
            "changed_at",
            "connections_total",
            "health",
            "last_check",
            "name",
            "source",
            "state"
        ]
    );
    assert_eq!(server["source"], "config");
    assert_eq!(frontend["paused"], false);
    // The first verdict (unknown -> up) is a change of state.
    let changed_at = server["changed_at"].as_str().unwrap();
    assert!(changed_at.ends_with('Z'), "{changed_at}");
    assert!(changed_at >= last["at"].as_str().unwrap(), "{server}");
    assert_eq!(server["name"], "a");
    assert_eq!(server["address"], a.addr.to_string());
    // Lbd::start waits for the first health checks, so the verdict is in.
    assert_eq!(server["health"], "up");
    assert_eq!(server["admin"], "ready");
    assert_eq!(server["state"], "up");
    let check = server["last_check"].as_object().unwrap();
    let mut check_keys: Vec<&str> = check.keys().map(String::as_str).collect();
    check_keys.sort_unstable();
    assert!(
        ["at", "detail", "elapsed_ms", "result"]
            .iter()
            .all(|k| check_keys.contains(k)),
        "{check_keys:?}"
    );
    assert_eq!(check["result"], "ok");
}

#[test]
fn drain_stops_new_connections_while_existing_ones_go_on() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let lbd = Lbd::start(&config_for(&[&a, &b], "", ""));
    let addr = lbd.addr("api");
    let (first, mut to_a) = hold(addr);
    assert_eq!(first, "a");

    let (code, body) = lbd.post("/api/v1/backends/pool/servers/a/drain");
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["servers"][0]["state"], "draining");
    assert_eq!(answer["servers"][0]["previous"], "ready");
    assert_eq!(answer["servers"][0]["active_connections"], 1);

    // Counted by lbd, not by the backend, whose count includes health checks.
    let connections_to_a =
        || lbd.status()["backends"][0]["servers"][0]["connections_total"].as_u64();
    let before = connections_to_a();
    for _ in 0..6 {
        assert_eq!(greeting(addr).unwrap(), "b");
    }
    assert_eq!(connections_to_a(), before);
    assert_eq!(echo_round_trip(&mut to_a, b"still").unwrap(), b"still");

    // disable: the same for traffic; enable: back in the rotation.
    assert_eq!(lbd.post("/api/v1/backends/pool/servers/a/disable").0, 200);
    assert_eq!(lbd.post("/api/v1/backends/pool/servers/b/disable").0, 200);
    let (code, reason) = lbd.get("/readyz");
    assert_eq!(code, 503);
    assert_eq!(
        reason,
        "not ready: frontend api: backend pool: no server can take a connection; new connections are refused (a disabled, b disabled)\n"
    );
    assert!(
        greeting(addr).is_err(),
        "a connection with no server is refused"
    );
    assert_eq!(lbd.post("/api/v1/backends/pool/servers/a/enable").0, 200);
    // Enabled servers are checked again at once and come back within a moment.
    wait_until(Duration::from_secs(5), "/readyz to pass again", || {
        lbd.get("/readyz").0 == 200
    });
    assert_eq!(greeting(addr).unwrap(), "a");
    assert_eq!(echo_round_trip(&mut to_a, b"and on").unwrap(), b"and on");
}

#[test]
fn readyz_fails_as_soon_as_shutdown_begins() {
    let a = Backend::named("a");
    let config = config_for(&[&a], "", "")
        .replace("[admin]", "[global]\ndrain_timeout = \"10s\"\n\n[admin]");
    let lbd = Lbd::start(&config);
    let (_, _held) = hold(lbd.addr("api"));
    let admin = lbd.admin_addr();
    lbd.signal(libc::SIGTERM);
    lbd.wait_for_log("draining connections", Duration::from_secs(5));
    let (code, body) = support::http(admin, "GET", "/readyz");
    assert_eq!(
        (code, body.as_str()),
        (
            503,
            "not ready: lbd is shutting down: no new connections are accepted\n"
        )
    );
}

#[test]
fn admin_api_on_a_unix_socket_with_mode_0660() {
    let a = Backend::named("a");
    let dir = support::TempDir::new("sock");
    let socket = dir.0.join("admin.sock");
    let config = config_for(&[&a], "", "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"unix:{}\"", socket.display()),
    );
    let lbd = Lbd::start(&config);
    lbd.wait_for_log("admin API listening", Duration::from_secs(5));
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let admin = format!("unix:{}", socket.display());
    let out = support::lbctl(&["--admin", &admin, "status", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(status["backends"][0]["servers"][0]["name"], "a");
    drop(lbd);
}

#[test]
fn metrics_are_valid_openmetrics_and_counters_move() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let lbd = Lbd::start(&config_for(&[&a, &b], "", ""));
    let scrape = || {
        let answer = http_raw(
            lbd.admin_addr(),
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{answer}"
        );
        parse_openmetrics(&parse_http_answer(&answer).1)
    };
    let before = scrape();
    for family in [
        "lbd_frontend_connections_total",
        "lbd_frontend_active_connections",
        "lbd_frontend_rejected_total",
        "lbd_server_up",
        "lbd_server_connections_total",
        "lbd_server_active_connections",
        "lbd_server_connect_errors_total",
        "lbd_server_bytes_total",
        "lbd_connect_duration_seconds_count",
        "lbd_health_check_duration_seconds_count",
        "lbd_config_reloads_total",
        "lbd_server_transitions_total",
        "process_open_fds",
        "process_resident_memory_bytes",
    ] {
        assert!(before.iter().any(|s| s.name == family), "{family} missing");
    }
    assert_eq!(
        value(
            &before,
            "lbd_frontend_connections_total",
            &[("frontend", "api")]
        ),
        0.0
    );

    for _ in 0..4 {
        let (_, mut stream) = hold(lbd.addr("api"));
        assert_eq!(echo_round_trip(&mut stream, b"12345").unwrap(), b"12345");
    }
    let (_, mut open) = hold(lbd.addr("api"));
    let after = scrape();
    let server = |name| [("backend", "pool"), ("server", name)];
    assert_eq!(
        value(
            &after,
            "lbd_frontend_connections_total",
            &[("frontend", "api")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &after,
            "lbd_frontend_active_connections",
            &[("frontend", "api")]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "lbd_server_connections_total", &server("a")),
        3.0
    );
    assert_eq!(
        value(&after, "lbd_server_connections_total", &server("b")),
        2.0
    );
    assert_eq!(
        value(&after, "lbd_server_active_connections", &server("a")),
        1.0
    );
    assert_eq!(
        value(&after, "lbd_connect_duration_seconds_count", &server("a")),
        3.0
    );
    assert_eq!(
        value(
            &after,
            "lbd_connect_duration_seconds_bucket",
            &[("server", "a"), ("le", "+Inf")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &after,
            "lbd_server_bytes_total",
            &[("server", "a"), ("direction", "to_server")]
        ),
        10.0
    );
    // Greetings ("a\n", "b\n") to five clients and four 5-byte echoes.
    wait_until(
        Duration::from_secs(5),
        "bytes to clients to be counted",
        || {
            let now = scrape();
            let to_client = |s| {
                value(
                    &now,
                    "lbd_server_bytes_total",
                    &[("server", s), ("direction", "to_client")],
                )
            };
            to_client("a") + to_client("b") == 30.0
                && value(&now, "lbd_frontend_bytes_total", &[("direction", "out")]) == 30.0
        },
    );
    assert!(value(&after, "process_open_fds", &[]) > 5.0);

    // A refused dial is counted by kind; a removed server vanishes from the next scrape.
    b.stop();
    for _ in 0..2 {
        let _ = greeting(lbd.addr("api"));
    }
    let failed = scrape();
    assert!(
        value(
            &failed,
            "lbd_server_connect_errors_total",
            &[("server", "b"), ("kind", "refused")]
        ) >= 1.0
    );
    lbd.rewrite_config(&config_for(&[&a], "", ""));
    assert_eq!(lbd.post("/api/v1/reload").0, 200);
    let reloaded = scrape();
    assert!(
        !reloaded
            .iter()
            .any(|s| s.labels.get("server").is_some_and(|v| v == "b"))
    );
    assert_eq!(
        value(&reloaded, "lbd_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(echo_round_trip(&mut open, b"x").unwrap(), b"x");
}

#[test]
fn slow_or_crowding_clients_cannot_lock_out_the_admin_api() {
    let a = Backend::named("a");
    let lbd = Lbd::start(&config_for(&[&a], "", ""));
    let admin = lbd.admin_addr();

    // A body announced and never sent is refused at once, not waited for.
    let mut slow = std::net::TcpStream::connect(admin).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    slow.write_all(b"POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 12];
    slow.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");

    // Past the connection caps, a new client is served: the connection idle
    // the longest is let go to make room.
    let mut crowd: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(admin).unwrap())
        .collect();
    assert_eq!(lbd.get("/readyz").0, 200);
    crowd[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        crowd[0].read(&mut byte).unwrap(),
        0,
        "the oldest idle connection is closed"
    );
    drop(crowd);
}

#[test]
fn web_pages_cannot_change_lbd() {
    let a = Backend::named("a");
    let lbd = Lbd::start(&config_for(&[&a], "", ""));
    let request = b"POST /api/v1/backends/pool/servers/a/disable HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\n\r\n";
    let (code, body) = parse_http_answer(&http_raw(lbd.admin_addr(), request));
    assert_eq!(code, 403, "{body}");
    assert_eq!(lbd.status()["backends"][0]["servers"][0]["admin"], "ready");
    // Reading is harmless and stays open to pages (a dashboard may poll it).
    let get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://dash.example\r\nConnection: close\r\n\r\n";
    assert_eq!(parse_http_answer(&http_raw(lbd.admin_addr(), get)).0, 200);
}
