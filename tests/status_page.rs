//! The status page at `GET /` in a real headless browser (Debian's
//! chromium, driven over the DevTools protocol): it shows the servers and
//! what is down, follows changes without a reload, its drain button
//! drains, and with a token configured it shows nothing but the prompt
//! until the token is typed in.
//!
//! `LBD_SCREENSHOT_DIR=docs cargo test --test status_page` also writes the
//! README's screenshot, `status-page.png`, from the same browser.

mod support;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::json;
use support::browser::{self, Browser};
use support::{Backend, Lbd, TempDir, config_for, hold, http_raw, parse_http_answer, wait_until};

/// Long enough for a check round, a page refresh (2 s) and a slow CI box.
const PATIENCE: Duration = Duration::from_secs(20);

const TOKEN: &str = "5e0c1f2a3b4d5c6e7f8091a2b3c4d5e6";

/// A config for `backends` with checks fast enough to see changes quickly.
fn config(backends: &[&Backend], admin_extra: &str) -> String {
    config_for(backends, "connect_timeout = \"200ms\"", "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}"),
    ) + "[backend.health]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1\n"
}

/// The page's row of `server` in backend `pool` has `state` (its
/// `data-state`, and the same word as the badge's text).
fn row_state(server: &str, state: &str) -> String {
    format!(
        "(() => {{ const r = document.querySelector('tr[data-server=\"pool/{server}\"]'); \
         return !!r && r.dataset.state === '{state}' && r.querySelector('.badge').textContent === '{state}'; }})()"
    )
}

fn admin_state(lbd: &Lbd, server: &str) -> String {
    lbd.status()["backends"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == server)
        .map(|s| s["admin"].as_str().unwrap().to_owned())
        .unwrap()
}

#[test]
fn the_page_shows_servers_follows_changes_and_its_buttons_drain() {
    if !browser::available("the_page_shows_servers_follows_changes_and_its_buttons_drain") {
        return;
    }
    let (a, b, c) = (
        Backend::named("a"),
        Backend::named("b"),
        Backend::named("c"),
    );
    c.stop();
    let lbd = Lbd::start(&config(&[&a, &b, &c], ""));
    // Connections held open through lbd, for the counts and sparklines.
    let held: Vec<(String, TcpStream)> = (0..5).map(|_| hold(lbd.addr("api"))).collect();
    let url = format!("http://{}/", lbd.admin_addr());
    let mut page = Browser::start(1280, 900);
    page.navigate(&url);

    // The servers, and the down one shown by word and listed first.
    page.wait_for(PATIENCE, "a up", &row_state("a", "up"));
    page.wait_for(PATIENCE, "c down", &row_state("c", "down"));
    let attention = page.eval("document.getElementById('attention-list').innerText");
    let attention = attention.as_str().unwrap();
    assert!(
        attention.contains(&format!("pool/c ({}) is down", c.addr)),
        "{attention}"
    );
    assert!(attention.contains("refused"), "{attention}");
    let frontend = page.eval("document.querySelector('tr[data-frontend=\"api\"]').innerText");
    assert!(
        frontend
            .as_str()
            .unwrap()
            .contains(&lbd.addr("api").to_string()),
        "{frontend}"
    );
    let active: u64 = ["a", "b"]
        .iter()
        .map(|s| {
            page.eval(&format!(
                "Number(document.querySelector('tr[data-server=\"pool/{s}\"] td[data-label=\"Active\"]').innerText)"
            ))
            .as_u64()
            .unwrap()
        })
        .sum();
    assert_eq!(active, held.len() as u64);

    // A change shows up in the same document, without a reload.
    page.eval("window.__sameDocument = true");
    b.stop();
    page.wait_for(PATIENCE, "b down", &row_state("b", "down"));
    let b = Backend::named_at("b", b.addr);
    page.wait_for(PATIENCE, "b up again", &row_state("b", "up"));
    assert_eq!(page.eval("window.__sameDocument === true"), json!(true));

    // The drain button drains: lbd itself says so, then the page.
    page.click("tr[data-server=\"pool/a\"] button[data-action=\"drain\"]");
    wait_until(PATIENCE, "lbd to drain a", || {
        admin_state(&lbd, "a") == "drain"
    });
    page.wait_for(PATIENCE, "a draining", &row_state("a", "draining"));
    // And by keyboard: focus Enable, press Enter.
    page.eval("document.querySelector('tr[data-server=\"pool/a\"] button[data-action=\"enable\"]').focus()");
    page.press("Enter", 13);
    wait_until(PATIENCE, "lbd to enable a again", || {
        admin_state(&lbd, "a") == "ready"
    });
    page.wait_for(PATIENCE, "a up again", &row_state("a", "up"));
    assert_eq!(page.eval("window.__sameDocument === true"), json!(true));

    // What needs attention: a frontend whose backend has no server left
    // to take a connection (c is down, a and b disabled)…
    for server in ["a", "b"] {
        let path = format!("/api/v1/backends/pool/servers/{server}/disable");
        assert_eq!(lbd.post(&path).0, 200);
    }
    page.wait_for(
        PATIENCE,
        "frontend api shown paused",
        "document.querySelector('tr[data-frontend=\"api\"] .badge').textContent === 'paused' \
         && document.getElementById('attention-list').innerText.includes('frontend api is paused')",
    );
    for server in ["a", "b"] {
        let path = format!("/api/v1/backends/pool/servers/{server}/enable");
        assert_eq!(lbd.post(&path).0, 200);
    }
    // … and a reload that failed, with where in the file.
    let good = std::fs::read_to_string(&lbd.config_path).unwrap();
    std::fs::write(&lbd.config_path, format!("{good}\n[oops\n")).unwrap();
    assert_eq!(lbd.post("/api/v1/reload").0, 422);
    let line = good.lines().count() + 2;
    let place = format!("lbd.toml:{line}:");
    page.wait_for(
        PATIENCE,
        "the failed reload with its file:line",
        &format!(
            "document.getElementById('attention-list').innerText.includes('reload failed') \
             && document.getElementById('attention-list').innerText.includes('{place}')"
        ),
    );
    std::fs::write(&lbd.config_path, good).unwrap();
    assert_eq!(lbd.post("/api/v1/reload").0, 200);
    page.wait_for(
        PATIENCE,
        "the failed reload gone",
        "!document.getElementById('attention-list').innerText.includes('reload failed')",
    );

    // On a phone: the tables become cards, nothing is wider than the screen.
    page.resize(390, 800, true);
    page.wait_for(
        PATIENCE,
        "a phone-width layout",
        "innerWidth === 390 && document.documentElement.scrollWidth <= innerWidth \
         && getComputedStyle(document.querySelector('tr[data-server=\"pool/a\"]')).display === 'block'",
    );
    page.resize(1280, 900, false);

    // The policy let everything the page needs run.
    assert_eq!(page.eval("window.__cspViolations"), json!([]));

    if let Some(dir) = browser::screenshot_dir() {
        // Something to look at: a drained server, connections coming and
        // going for the sparklines (a refresh every 2 s draws a point).
        assert_eq!(lbd.post("/api/v1/backends/pool/servers/b/drain").0, 200);
        let mut more = Vec::new();
        for round in 0..8 {
            if round < 5 {
                more.extend((0..3).map(|_| hold(lbd.addr("api"))));
            } else {
                more.truncate(more.len().saturating_sub(5));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        page.eval(
            "document.activeElement.blur(); document.getElementById('notice').textContent = ''",
        );
        page.screenshot(&dir.join("status-page.png"));
    }
    drop((held, b));
}

#[test]
fn with_a_token_nothing_but_the_prompt_shows_until_it_is_typed() {
    if !browser::available("with_a_token_nothing_but_the_prompt_shows_until_it_is_typed") {
        return;
    }
    let secret_server = Backend::named("zebra7");
    let dir = TempDir::new("token");
    let token = dir.write("admin.token", &format!("{TOKEN}\n"));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let lbd = Lbd::start(&config(
        &[&secret_server],
        &format!("token_file = {token:?}"),
    ));
    let url = format!("http://{}/", lbd.admin_addr());
    let mut page = Browser::start(800, 600);
    page.navigate(&url);

    let prompt_shown = "!document.getElementById('prompt').hidden \
                        && document.getElementById('content').hidden";
    page.wait_for(PATIENCE, "the token prompt", prompt_shown);
    // Nothing lbd knows is anywhere in the document, shown or hidden.
    let leaks = |page: &mut Browser| {
        let html = page.eval("document.documentElement.outerHTML");
        let html = html.as_str().unwrap().to_owned();
        let config_path = lbd.config_path.display().to_string();
        for secret in [
            "zebra7",
            &secret_server.addr.to_string(),
            &config_path,
            &lbd.addr("api").to_string(),
        ] {
            assert!(!html.contains(secret), "the page shows {secret:?}:\n{html}");
        }
    };
    leaks(&mut page);

    // A wrong token: refused, still nothing else.
    page.eval("document.getElementById('token').focus()");
    page.type_text("not-the-token-at-all");
    page.press("Enter", 13);
    page.wait_for(
        PATIENCE,
        "the wrong token refused",
        "document.getElementById('token-error').textContent.includes('refused')",
    );
    assert_eq!(page.eval(prompt_shown), json!(true));
    leaks(&mut page);

    // The right one: the servers show, and the token is kept in this tab
    // only (session storage), never in local storage.
    page.eval("document.getElementById('token').focus()");
    page.type_text(TOKEN);
    page.press("Enter", 13);
    page.wait_for(PATIENCE, "zebra7 up", &row_state("zebra7", "up"));
    assert_eq!(
        page.eval("[sessionStorage.length, localStorage.length]"),
        json!([1, 0])
    );
    // The buttons send it too.
    page.click("tr[data-server=\"pool/zebra7\"] button[data-action=\"drain\"]");
    wait_until(PATIENCE, "lbd to drain zebra7", || {
        let raw = format!(
            "GET /api/v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        );
        let (_, body) = parse_http_answer(&http_raw(lbd.admin_addr(), raw.as_bytes()));
        body.contains("\"admin\":\"drain\"")
    });
    assert_eq!(page.eval("window.__cspViolations"), json!([]));
}

#[test]
fn the_page_is_served_without_the_token_and_locked_down() {
    let backend = Backend::named("zebra7");
    let dir = TempDir::new("token");
    let token = dir.write("admin.token", &format!("{TOKEN}\n"));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let lbd = Lbd::start(&config(&[&backend], &format!("token_file = {token:?}")));
    let answer = http_raw(
        lbd.admin_addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let (status, body) = parse_http_answer(&answer);
    assert_eq!(status, 200, "{answer}");
    let head = answer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("x-frame-options: deny"), "{head}");
    let csp = head
        .lines()
        .find_map(|l| l.strip_prefix("content-security-policy: "))
        .expect("a Content-Security-Policy");
    for directive in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(
        body.contains("<script nonce="),
        "inline script with a nonce"
    );
    assert!(!body.contains("zebra7"), "the shell holds no data");
    // The data itself still needs the token.
    assert_eq!(lbd.get("/api/v1/status").0, 401);
}
