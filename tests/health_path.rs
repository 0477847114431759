//! A health `path` lbd could not send (a space, CR/LF, 100 KiB of text) is
//! refused where the operator writes it, by `lbd --check-config` and by a
//! reload, while the running config keeps serving clients. Before, such a
//! path passed both, and every check then failed as the server's
//! `http_error`: every server down, the endpoint refused.

mod support;

use std::time::Duration;

use support::https::{HttpsServer, Pki};
use support::{Backend, EchoClient, Lbd, TempDir, config_for, greeting, wait_until};

/// A config for `a` with an https check of `path`, given as a TOML string
/// (escapes and all); the path is on the config's last line.
fn with_path(a: &Backend, pki: &Pki, port: u16, path: &str) -> String {
    config_for(&[a], "connect_timeout = \"200ms\"", "")
        + &format!(
            "[backend.health]\ncheck = \"https\"\nport = {port}\nsni = \"kubernetes\"\nca_file = {:?}\n\
             interval = \"200ms\"\nfall = 1\npath = {path}\n",
            pki.ca_file
        )
}

#[test]
fn an_unsendable_health_path_is_refused_by_check_config_and_by_reload_while_clients_are_served() {
    let pki = Pki::new(&["kubernetes", "127.0.0.1"]);
    let ready = HttpsServer::start(&pki, 200);
    let port = ready.addr.port();
    let a = Backend::named("a");
    let lbd = Lbd::start(&with_path(&a, &pki, port, "\"/readyz\""));
    let addr = lbd.addr("api");
    let client = EchoClient::start(addr, Duration::from_millis(5)).unwrap();
    let dir = TempDir::new("health-path");

    let long = format!("\"/readyz?{}\"", "x".repeat(100 * 1024));
    for (path, problem) in [
        ("\"/ready z\"", "contains a space at byte 6"),
        (
            "\"/readyz\\r\\nX-Injected: 1\"",
            "contains the character '\\r' at byte 7",
        ),
        (long.as_str(), "is 102408 bytes long; at most 2048"),
    ] {
        let bad = with_path(&a, &pki, port, path);
        // The path is on the last line, its value at column 8.
        let line = bad.lines().count();
        let place = format!(":{line}:8: health `path` ");

        let file = dir.write("bad.toml", &bad);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lbd"))
            .arg("--check-config")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{path:.40}: {stderr}");
        assert!(stderr.contains(&place), "{path:.40}: {stderr:.600}");
        assert!(stderr.contains(problem), "{path:.40}: {stderr:.600}");

        let rounds = client.rounds();
        lbd.rewrite_config(&bad);
        let (code, body) = lbd.post("/api/v1/reload");
        assert!((400..500).contains(&code), "{path:.40}: {code} {body:.600}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(&place), "{path:.40}: {body:.600}");
        assert!(error.contains(problem), "{path:.40}: {body:.600}");
        let out = lbd.lbctl(&["reload"]);
        assert_ne!(out.code, 0, "{path:.40}: {out:?}");
        assert!(
            out.stderr.contains(problem),
            "{path:.40}: {:.600}",
            out.stderr
        );

        // The old config goes on: checks pass, clients are served.
        let checks = ready.requests();
        wait_until(Duration::from_secs(5), "more checks and echoes", || {
            ready.requests() >= checks + 3 && client.rounds() >= rounds + 20
        });
        assert_eq!(greeting(addr).unwrap(), "a");
        let status = lbd.status();
        assert_eq!(status["config"]["last_reload"]["ok"], false);
        assert_eq!(status["backends"][0]["servers"][0]["health"], "up");
    }
    assert!(lbd.logs_matching(" a down").is_empty());
    client
        .finish()
        .expect("the client connection across the refused reloads");
}
