//! The admin plane locked down: a listener reachable from other hosts needs
//! a bearer token, every route then needs it (the three read-only probes
//! only if `anonymous_read_only` says so), the token is never logged, and
//! a token file anyone can read stops lbd from starting.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{Backend, Lbd, TempDir, config_for, http_raw, parse_http_answer, wait_until};

const TOKEN: &str = "9f2c4e7a1b3d5f60718293a4b5c6d7e8";

/// Writes the token file with `mode` and returns its path.
fn token_file(dir: &TempDir, mode: u32) -> PathBuf {
    let path = dir.write("admin.token", &format!("{TOKEN}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A config with the admin API on loopback port 0 and `admin_extra` in `[admin]`.
fn config(backend: &Backend, admin_extra: &str) -> String {
    config_for(&[backend], "", "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}"),
    )
}

/// `method path` with an optional bearer token: (status, headers+body).
fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: lbd\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    let answer = http_raw(addr, raw.as_bytes());
    (parse_http_answer(&answer).0, answer)
}

#[test]
fn an_admin_api_reachable_from_other_hosts_needs_a_token_to_start() {
    let backend = Backend::named("b");
    let dir = TempDir::new("exposed");
    let exposed = config_for(&[&backend], "", "").replace(
        "listen = \"127.0.0.1:0\"\n\n[[frontend]]",
        "listen = \"0.0.0.0:8404\"\n\n[[frontend]]",
    );
    assert!(exposed.contains("0.0.0.0:8404"), "{exposed}");
    let path = dir.write("lbd.toml", &exposed);
    for args in [vec!["--check-config"], vec!["--config"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_lbd"))
            .args(&args)
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr
                .contains("lbd.toml:2:10: admin listen 0.0.0.0:8404 is reachable from other hosts"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("token_file"), "{stderr}");
    }
    // With a token file it is a valid config.
    let token = token_file(&dir, 0o600);
    let guarded = exposed.replace(
        "listen = \"0.0.0.0:8404\"",
        &format!("listen = \"0.0.0.0:8404\"\ntoken_file = {token:?}"),
    );
    let path = dir.write("guarded.toml", &guarded);
    let out = Command::new(env!("CARGO_BIN_EXE_lbd"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn with_a_token_every_route_needs_it_and_it_is_never_logged() {
    let backend = Backend::named("b");
    let dir = TempDir::new("token");
    let token = token_file(&dir, 0o600);
    let lbd = Lbd::start(&config(&backend, &format!("token_file = {token:?}")));
    let admin = lbd.admin_addr();
    let wrong = "0000000000000000000000000000000000";
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/api/v1/status"),
        ("POST", "/api/v1/reload"),
        ("POST", "/api/v1/backends/pool/servers/b/drain"),
        ("GET", "/no/such/route"),
    ] {
        let (status, answer) = request(admin, method, path, None);
        assert_eq!(status, 401, "{method} {path} without a token: {answer}");
        assert!(
            answer.contains("WWW-Authenticate: Bearer")
                || answer.contains("www-authenticate: Bearer"),
            "{answer}"
        );
        let (status, _) = request(admin, method, path, Some(wrong));
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }
    assert_eq!(request(admin, "GET", "/api/v1/status", Some(TOKEN)).0, 200);
    assert_eq!(request(admin, "POST", "/api/v1/reload", Some(TOKEN)).0, 200);
    let (status, answer) = request(
        admin,
        "POST",
        "/api/v1/backends/pool/servers/b/drain",
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{answer}");
    // lbctl sends it from --token-file, and says so when it is missing.
    let admin_arg = admin.to_string();
    let out = support::lbctl(&[
        "--admin",
        &admin_arg,
        "--token-file",
        token.to_str().unwrap(),
        "status",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("draining"), "{}", out.stdout);
    let out = support::lbctl(&["--admin", &admin_arg, "status"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("bearer token") || out.stdout.contains("bearer token"),
        "{out:?}"
    );
    // Nothing of either token reached the log, even at debug level.
    wait_until(Duration::from_secs(5), "the refusals to be logged", || {
        !lbd.logs_matching("request refused").is_empty()
    });
    for secret in [TOKEN, wrong, &TOKEN[..12]] {
        let leaks = lbd.logs_matching(secret);
        assert!(leaks.is_empty(), "the log shows a token: {leaks:?}");
    }
}

#[test]
fn anonymous_read_only_opens_exactly_the_three_probes() {
    let backend = Backend::named("b");
    let dir = TempDir::new("anon");
    let token = token_file(&dir, 0o640);
    let lbd = Lbd::start(&config(
        &backend,
        &format!("token_file = {token:?}\nanonymous_read_only = true"),
    ));
    let admin = lbd.admin_addr();
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(request(admin, "GET", path, None).0, 200, "GET {path}");
        assert_eq!(request(admin, "POST", path, None).0, 401, "POST {path}");
    }
    assert_eq!(request(admin, "GET", "/api/v1/status", None).0, 401);
    assert_eq!(request(admin, "POST", "/api/v1/reload", None).0, 401);
    assert_eq!(request(admin, "GET", "/api/v1/status", Some(TOKEN)).0, 200);
}

#[test]
fn a_token_file_every_user_can_read_stops_lbd_from_starting() {
    let backend = Backend::named("b");
    let dir = TempDir::new("exposed-token");
    let token = token_file(&dir, 0o644);
    let path = dir.write(
        "lbd.toml",
        &config(&backend, &format!("token_file = {token:?}")),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_lbd"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("every user can read it: chmod 600"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");
}

#[test]
fn the_unix_socket_is_staged_privately_and_left_at_0660() {
    let backend = Backend::named("b");
    let dir = TempDir::new("sock");
    let socket = dir.0.join("admin.sock");
    let lbd = Lbd::start(&config_for(&[&backend], "", "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"unix:{}\"", socket.display()),
    ));
    lbd.wait_for_log("admin API listening", Duration::from_secs(5));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".lbd-admin"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Runs `lbctl --admin ADDR ready` and gives it `within` to exit: its exit
/// code, or `None` if it had not answered by then (killed).
fn lbctl_ready_within(admin: SocketAddr, within: Duration) -> Option<i32> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["--admin", &admin.to_string(), "ready"])
        .env_remove("LBD_ADMIN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn idle_connections_from_lbctls_own_address_cannot_starve_lbctl_ready() {
    // keepalived's check is `lbctl ready`: if a flood of idle connections
    // could make it fail, anyone who can connect could move the VIP.
    let backend = Backend::named("b");
    let lbd = Lbd::start(&config(&backend, ""));
    let admin = lbd.admin_addr();
    wait_until(Duration::from_secs(10), "lbd to be ready", || {
        lbctl_ready_within(admin, Duration::from_secs(10)) == Some(0)
    });
    // 300 connections from 127.0.0.1, like lbctl itself, queued ahead of
    // lbctl's and sending nothing (held for less than the 5 s header
    // timeout, which would otherwise free them by itself).
    let flood: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(admin).unwrap())
        .collect();
    for round in 0..10 {
        let answered = lbctl_ready_within(admin, Duration::from_secs(2));
        assert_eq!(
            answered,
            Some(0),
            "round {round}: lbctl ready under 300 idle connections (None: no answer within 2 s)"
        );
    }
    drop(flood);
}
