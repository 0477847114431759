//! `[[frontend]] ready_file`: the file keepalived's `track_file` reads
//! follows the frontend's readiness, and says "not ready" once lbd is gone,
//! however it ended.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{Backend, Lbd, TempDir, config_for, wait_until};

fn contents(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// lbd in front of `cp1`, with the api frontend's ready file in `dir`.
fn start(cp1: &Backend, dir: &TempDir) -> (Lbd, std::path::PathBuf) {
    let path = dir.0.join("api.ready");
    let config = config_for(&[cp1], "", &format!("ready_file = \"{}\"", path.display()))
        + "[backend.health]\ninterval = \"200ms\"\nfast_interval = \"100ms\"\nfall = 1\nrise = 1\n";
    (Lbd::start(&config), path)
}

#[test]
fn the_ready_file_follows_readiness_and_outlives_a_killed_lbd() {
    let dir = TempDir::new("ready-file");
    let cp1 = Backend::named("cp1");
    let (lbd, path) = start(&cp1, &dir);
    wait_until(Duration::from_secs(10), "the file to say ready", || {
        contents(&path) == "0\n"
    });

    // The only server goes: not ready, without anyone asking.
    let addr = cp1.addr;
    cp1.stop();
    wait_until(Duration::from_secs(10), "the file to say not ready", || {
        contents(&path) == "1\n"
    });
    let cp1 = Backend::named_at("cp1", addr);
    wait_until(
        Duration::from_secs(10),
        "the file to say ready again",
        || contents(&path) == "0\n",
    );

    // SIGKILL: lbd writes nothing more, its guardian does.
    lbd.signal(libc::SIGKILL);
    wait_until(
        Duration::from_secs(5),
        "the guardian to mark the file not ready",
        || contents(&path) == "1\n",
    );
    // Nothing but the file itself is left in the directory (no temporaries).
    let names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("api.ready"))
        .collect();
    assert_eq!(names, ["api.ready"]);
    drop(cp1);
}

#[test]
fn shutdown_marks_the_file_not_ready_before_the_drain_ends() {
    let dir = TempDir::new("ready-file");
    let cp1 = Backend::named("cp1");
    let (mut lbd, path) = start(&cp1, &dir);
    wait_until(Duration::from_secs(10), "the file to say ready", || {
        contents(&path) == "0\n"
    });
    // A live connection keeps the drain going: the VIP must leave at its
    // start, not at its end.
    let (greeting, mut held) = support::hold(lbd.addr("api"));
    assert_eq!(greeting, "cp1");
    assert_eq!(support::echo_round_trip(&mut held, b"x").unwrap(), b"x");
    lbd.signal(libc::SIGTERM);
    wait_until(Duration::from_secs(5), "the file to say not ready", || {
        contents(&path) == "1\n"
    });
    assert!(lbd.is_running(), "lbd should still be draining");
    drop(held);
    assert!(lbd.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(contents(&path), "1\n");
}
