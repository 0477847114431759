//! Certificate rotation by reload: the TLS files a health check names are
//! part of the desired state, so replacing a file's contents and reloading
//! rebuilds the checks, even though no line of the config changed. Before,
//! a renewed client certificate or a rotated CA took every server down
//! until lbd restarted.

mod support;

use std::path::Path;
use std::time::Duration;

use support::https::{HttpsServer, Pki};
use support::{Backend, Lbd, TempDir, config_for, greeting, wait_until};

/// The health and last check result of the only server.
fn server_state(lbd: &Lbd) -> (String, String) {
    let status = lbd.status();
    let server = &status["backends"][0]["servers"][0];
    (
        server["health"].as_str().unwrap().to_owned(),
        server["last_check"]["result"]
            .as_str()
            .unwrap_or("none")
            .to_owned(),
    )
}

fn wait_for_health(lbd: &Lbd, health: &str) {
    wait_until(
        Duration::from_secs(10),
        &format!("the server to be {health}"),
        || server_state(lbd).0 == health,
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::write(to, std::fs::read(from).unwrap()).unwrap();
}

/// POST /api/v1/reload, which must succeed; its answer.
fn reload(lbd: &Lbd) -> String {
    let (code, body) = lbd.post("/api/v1/reload");
    assert_eq!(code, 200, "{body}");
    body
}

#[test]
fn a_rotated_ca_file_is_used_after_a_reload() {
    let pki = Pki::new(&["127.0.0.1"]);
    let other = Pki::new(&["127.0.0.1"]);
    let health = HttpsServer::start(&pki, 200);
    let files = TempDir::new("rotation-ca");
    let ca = files.0.join("ca.crt");
    // The wrong CA first: the chain cannot be verified.
    copy(&other.ca_file, &ca);
    let a = Backend::named("a");
    let config = config_for(&[&a], "", "")
        + &format!(
            "[backend.health]\ncheck = \"tls\"\nport = {}\nca_file = {ca:?}\ninterval = \"200ms\"\nfall = 1\nrise = 1\n",
            health.addr.port()
        );
    let lbd = Lbd::start(&config);
    wait_for_health(&lbd, "down");
    assert_eq!(server_state(&lbd).1, "tls_error");

    // The operator installs the right CA under the same name and reloads.
    copy(&pki.ca_file, &ca);
    let answer = reload(&lbd);
    assert!(answer.contains("backend pool changed"), "{answer}");
    wait_for_health(&lbd, "up");
    assert_eq!(greeting(lbd.addr("api")).unwrap(), "a");

    // Nothing changed on disk: nothing to report, nothing rebuilt.
    let answer = reload(&lbd);
    assert!(!answer.contains("changed"), "{answer}");

    // A broken replacement is refused where it is named; the checks go on
    // with the CA they have.
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let (code, body) = lbd.post("/api/v1/reload");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("cannot use ca_file"), "{body}");
    assert!(body.contains("lbd.toml:"), "{body}");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(server_state(&lbd), ("up".to_owned(), "ok".to_owned()));
}

#[test]
fn a_renewed_client_certificate_is_used_after_sighup() {
    let pki = Pki::new(&["127.0.0.1"]);
    let stale = Pki::new(&["127.0.0.1"]);
    let readyz = HttpsServer::start_requiring_client_cert(&pki, 200);
    let files = TempDir::new("rotation-client");
    let (cert, key) = (files.0.join("client.crt"), files.0.join("client.key"));
    // A certificate the apiserver no longer accepts (another CA signed it).
    copy(&stale.client_cert_file, &cert);
    copy(&stale.client_key_file, &key);
    let a = Backend::named("a");
    let config = config_for(&[&a], "", "")
        + &format!(
            "[backend.health]\ncheck = \"https\"\nport = {}\nca_file = {:?}\ncert_file = {cert:?}\nkey_file = {key:?}\ninterval = \"200ms\"\nfall = 1\nrise = 1\n",
            readyz.addr.port(),
            pki.ca_file,
        );
    let lbd = Lbd::start(&config);
    wait_for_health(&lbd, "down");

    // kubeadm renewed the certificate in place; the operator sends SIGHUP.
    copy(&pki.client_cert_file, &cert);
    copy(&pki.client_key_file, &key);
    lbd.signal(libc::SIGHUP);
    lbd.wait_for_log("backend pool changed", Duration::from_secs(5));
    wait_for_health(&lbd, "up");
    assert!(readyz.requests() > 0);
    assert_eq!(greeting(lbd.addr("api")).unwrap(), "a");
}
