//! Replays every input that once broke a fuzz target (kept in
//! `tests/fuzz/regressions/TARGET/`) through the same checks the target
//! runs, so a crash found by fuzzing stays fixed without cargo-fuzz.

#[path = "fuzz/checks.rs"]
mod checks;

use std::path::Path;

/// Runs `check` on every file of `tests/fuzz/regressions/TARGET/` and of
/// `tests/fuzz/seeds/TARGET/` (the seeds show the harness itself works).
fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut replayed = 0;
    for dir in [
        fuzz.join("regressions").join(target),
        fuzz.join("seeds").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&input));
            assert!(outcome.is_ok(), "{} fails again", path.display());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no inputs to replay for {target}");
}

#[test]
fn config_regressions_stay_fixed() {
    replay("config", checks::config);
}

#[test]
fn admin_request_regressions_stay_fixed() {
    replay("admin_request", checks::admin_request);
}

#[test]
fn proxy_header_regressions_stay_fixed() {
    replay("proxy_header", checks::proxy_header);
}

#[test]
fn client_hello_regressions_stay_fixed() {
    replay("client_hello", checks::client_hello);
}

#[test]
fn the_admin_harness_serves_with_the_token_and_refuses_without() {
    let status = |request: &[u8]| {
        let answer = checks::admin_answer(request);
        String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned()
    };
    let get = b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(status(&[&[1u8][..], get].concat()), "HTTP/1.1 200");
    assert_eq!(status(&[&[0u8][..], get].concat()), "HTTP/1.1 401");
}
