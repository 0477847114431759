//! `lbctl` against a running daemon, for every subcommand, and against no
//! daemon at all.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{Backend, Lbd, TempDir, config_for, greeting, hold, lbctl, lbctl_with, wait_until};

fn free_port_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[test]
fn every_command_says_what_to_do_when_lbd_is_not_there() {
    let addr = free_port_addr();
    let expected = format!(
        "lbctl: cannot reach lbd admin API at {addr}: connection refused — is lbd running? set --admin or LBD_ADMIN\n"
    );
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["ready"],
        vec!["reload"],
        vec!["drain", "pool/a"],
        vec!["enable", "pool/a"],
        vec!["disable", "pool/a"],
    ] {
        let mut full = vec!["--admin", addr.as_str()];
        full.extend(&args);
        let out = lbctl(&full);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert_eq!(out.stderr, expected, "{args:?}");
    }
    // LBD_ADMIN is the default; --admin wins over it.
    let out = lbctl_with(&["status"], |c| {
        c.env("LBD_ADMIN", &addr);
    });
    assert_eq!(out.stderr, expected);
    let socket = "unix:/nonexistent/lbd.sock";
    let out = lbctl(&["status", "--admin", socket]);
    assert_eq!(
        out.stderr,
        format!(
            "lbctl: cannot reach lbd admin API at {socket}: no such socket file — is lbd running? set --admin or LBD_ADMIN\n"
        )
    );
    let out = lbctl(&["status", "--admin", "nonsense"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("is not HOST:PORT or unix:/PATH"),
        "{out:?}"
    );
}

#[test]
fn status_prints_a_table_and_json() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let lbd = Lbd::start(&config_for(&[&a, &b], "", ""));
    let (_, _held) = hold(lbd.addr("api"));
    let out = lbd.lbctl(&["status"]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("config {}: loaded ", lbd.config_path.display())),
        "{}",
        out.stdout
    );
    assert!(
        lines[1].starts_with(&format!(
            "frontend api on {}: 1 active, 1 total, 0 rejected",
            lbd.addr("api")
        )),
        "{}",
        out.stdout
    );
    let header = lines
        .iter()
        .position(|l| l.starts_with("FRONTEND"))
        .unwrap();
    let columns: Vec<&str> = lines[header]
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        columns,
        [
            "FRONTEND",
            "BACKEND",
            "SERVER",
            "ADDRESS",
            "STATE",
            "ACTIVE",
            "TOTAL",
            "LAST CHECK"
        ]
    );
    let row_a: Vec<&str> = lines[header + 1].split_whitespace().collect();
    // Lbd::start waits for the first health checks: the last check is "ok in …".
    assert_eq!(
        row_a[..8],
        [
            "api",
            "pool",
            "a",
            &a.addr.to_string(),
            "up",
            "1",
            "1",
            "ok"
        ]
    );
    let row_b: Vec<&str> = lines[header + 2].split_whitespace().collect();
    // Lbd::start waits for the first health checks: the last check is "ok in …".
    assert_eq!(
        row_b[..8],
        [
            "api",
            "pool",
            "b",
            &b.addr.to_string(),
            "up",
            "0",
            "0",
            "ok"
        ]
    );

    // --admin after the subcommand, and --json.
    let admin = lbd.admin_addr().to_string();
    let out = lbctl(&["status", "--json", "--admin", &admin]);
    assert_eq!(out.code, 0, "{out:?}");
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(status["backends"][0]["servers"][1]["name"], "b");
    let out = lbctl_with(&["status"], |c| {
        c.env("LBD_ADMIN", &admin);
    });
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn drain_disable_enable_and_ready() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let lbd = Lbd::start(&config_for(&[&a, &b], "", ""));
    let out = lbd.lbctl(&["ready"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "ready\n"), "{out:?}");

    let out = lbd.lbctl(&["drain", "pool/a"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        "pool/a: draining (was ready), 0 active connections\n"
    );
    let out = lbd.lbctl(&["disable", "pool/b", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let answer: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["servers"][0]["admin"], "disabled");

    let out = lbd.lbctl(&["ready"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr,
        "lbctl: not ready: frontend api: backend pool: no server can take a connection; new connections are refused (a draining, b disabled)\n"
    );
    let out = lbd.lbctl(&["ready", "--json"]);
    let answer: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["ready"], false);

    let out = lbd.lbctl(&["enable", "pool/a"]);
    assert_eq!(out.stdout, "pool/a: up (was drain), 0 active connections\n");
    wait_until(Duration::from_secs(5), "lbctl ready to pass", || {
        lbd.lbctl(&["ready"]).code == 0
    });
    assert_eq!(greeting(lbd.addr("api")).unwrap(), "a");

    let out = lbd.lbctl(&["drain", "pool/nope"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr,
        "lbctl: lbd answered 404 Not Found: no server \"nope\" in backend \"pool\": see `lbctl status` for the names\n"
    );
    let out = lbd.lbctl(&["drain", "nobackend/x"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr,
        "lbctl: lbd answered 404 Not Found: no backend \"nobackend\": the backends are pool\n"
    );
    let out = lbd.lbctl(&["drain", "just-a-name"]);
    assert_eq!(out.code, 2, "a usage error: {out:?}");
    assert!(out.stderr.contains("is not BACKEND/SERVER"), "{out:?}");
}

#[test]
fn usage_errors_exit_2_in_lbctl_and_lbd() {
    // Wrong command lines, whether clap or lbd's own code notices them.
    for args in [
        &["bogus"][..],
        &["--bogus", "status"],
        &["drain"],
        &["drain", "a"],
        &["enable", "/b"],
        &["disable", "a/"],
        &["drain", "--deadline", "1.5s", "--wait", "a/b"],
        &["generate", "foo", "bar"],
    ] {
        let out = lbctl(args);
        assert_eq!(out.code, 2, "lbctl {args:?}: {out:?}");
        assert!(out.stderr.contains("error:"), "lbctl {args:?}: {out:?}");
    }
    for args in [
        &["--bogus"][..],
        &["--check-config"],
        &["--generate", "foo", "bar"],
        &["--demo-listen", "127.0.0.1:1"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_lbd"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "lbd {args:?}: {stderr}");
        assert!(stderr.contains("error:"), "lbd {args:?}: {stderr}");
    }
}

#[test]
fn drain_wait_reports_remaining_connections_until_none_is_left() {
    let a = Backend::named("a");
    let lbd = Lbd::start(&config_for(&[&a], "", ""));
    let (_, first) = hold(lbd.addr("api"));
    let (_, second) = hold(lbd.addr("api"));

    // With a deadline that passes: exit 1, the connections are left alone.
    let out = lbd.lbctl(&["drain", "pool/a", "--wait", "--deadline", "1s"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("pool/a: 2 connections remaining"),
        "{out:?}"
    );
    assert_eq!(
        out.stderr,
        "lbctl: deadline of 1s reached: 2 connections still open on pool/a (left open; lbd still drains it)\n"
    );

    let admin = lbd.admin_addr().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["--admin", &admin, "drain", "pool/a", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let next = || lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(next(), "pool/a: draining (was drain), 2 active connections");
    assert_eq!(next(), "pool/a: 2 connections remaining");
    drop(first);
    assert_eq!(next(), "pool/a: 1 connections remaining");
    drop(second);
    assert_eq!(next(), "pool/a: drained, no connection left");
    let mut status = None;
    wait_until(Duration::from_secs(5), "lbctl to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success());
}

#[test]
fn drain_wait_fails_when_a_reload_removes_the_server_it_waits_for() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let lbd = Lbd::start(&config_for(&[&a, &b], "", ""));
    let (_, _held) = hold(lbd.addr("api"));
    let held_on = lbd.status()["backends"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["active_connections"] == 1)
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .unwrap();
    let (stays, leaves) = if held_on == "a" { (&b, &a) } else { (&a, &b) };
    let target = format!("pool/{}", leaves.name);

    let admin = lbd.admin_addr().to_string();
    let child = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["--admin", &admin, "drain", &target, "--wait", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lbd_logs = || lbd.logs_matching("server admin state changed");
    wait_until(Duration::from_secs(10), "the drain", || {
        !lbd_logs().is_empty()
    });

    // The server goes while its connection lives on: nothing says when that
    // connection ends, so lbctl must not claim "drained".
    lbd.rewrite_config(&config_for(&[stays], "", ""));
    assert_eq!(lbd.lbctl(&["reload"]).code, 0);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("{target} is no longer in lbd's config")),
        "{stderr}"
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["drained"], false, "{stdout}");
    assert_eq!(last["gone"], true, "{stdout}");
}

#[test]
fn reload_reports_changes_or_the_error_with_its_location() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let lbd = Lbd::start(&config_for(&[&a], "", ""));
    let out = lbd.lbctl(&["reload"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "reloaded: nothing changed\n"),
        "{out:?}"
    );

    lbd.rewrite_config(&config_for(&[&a, &b], "", "idle_timeout = \"1m\""));
    let out = lbd.lbctl(&["reload"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        "reloaded:\n  frontend api changed: idle_timeout\n  server pool/b added\n"
    );
    assert!(
        out.stderr.starts_with(&format!(
            "warning: {}:8:16: frontend \"api\": idle_timeout = \"1m\"",
            lbd.config_path.display()
        )),
        "{out:?}"
    );

    lbd.rewrite_config(&config_for(&[&a, &b], "retries = \"two\"", ""));
    let out = lbd.lbctl(&["reload"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .starts_with("lbctl: reload refused; lbd keeps the running config:\n"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(&format!(
            "{}:12:11: invalid type",
            lbd.config_path.display()
        )),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("12 | retries = \"two\""),
        "the caret excerpt: {out:?}"
    );
    let out = lbd.lbctl(&["reload", "--json"]);
    let answer: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["ok"], false);
    assert_eq!(lbd.server_names("pool"), ["a", "b"]);

    let out = lbd.lbctl(&["status"]);
    assert!(out.stdout.contains("last reload FAILED"), "{out:?}");
}

#[test]
fn check_config_prints_the_summary_and_lint_warnings() {
    let dir = TempDir::new("check");
    let a = Backend::named("a");
    let good = dir.write("good.toml", &config_for(&[&a], "", ""));
    let out = lbctl(&["check-config", good.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        format!(
            "{}: OK: 1 frontend (1 listener), 1 backend, 1 server\n",
            good.display()
        )
    );
    assert_eq!(out.stderr, "");

    let risky = dir.write(
        "risky.toml",
        &(config_for(&[&a], "", "idle_timeout = \"30s\"")
            + "[backend.health]\ninterval = \"10s\"\n"),
    );
    let out = lbctl(&["check-config", risky.to_str().unwrap()]);
    assert_eq!(out.code, 0, "warnings do not fail the check: {out:?}");
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    let path = risky.display();
    assert_eq!(warnings.len(), 2, "{}", out.stderr);
    assert!(
        warnings[0].starts_with(&format!(
            "warning: {path}:8:16: frontend \"api\": idle_timeout = \"30s\" is shorter than 5m"
        )),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with(&format!(
            "warning: {path}:17:12: backend \"pool\": (fall + 1) × interval = (3 + 1) × 10s = 40s"
        )),
        "{warnings:?}"
    );
    let out = lbctl(&["check-config", "--json", risky.to_str().unwrap()]);
    let answer: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["warnings"].as_array().unwrap().len(), 2);

    // The daemon logs the same warnings at start.
    let lbd = Lbd::start(&std::fs::read_to_string(&risky).unwrap());
    lbd.wait_for_log(
        "idle_timeout = \"30s\" is shorter than 5m",
        Duration::from_secs(5),
    );

    let bad = dir.write("bad.toml", "[[frontend]]\nname = 1\n");
    let out = lbctl(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!("{}:2:8:", bad.display())),
        "{out:?}"
    );
}
