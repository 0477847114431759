//! SIGUSR2: a new lbd takes the listening sockets over and serves at once,
//! while the old one drains its live connections in the background.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Backend, Lbd, TempDir, config_for, echo_round_trip, greeting, hold, wait_until};

/// Connects every 20 ms until stopped; records (since start, served).
fn client_loop(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Arc<Mutex<Vec<(Duration, bool, String)>>> {
    let results = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&results);
    let start = Instant::now();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let at = start.elapsed();
            let outcome = greeting(addr);
            let ok = outcome.is_ok();
            let detail = match outcome {
                Ok(name) => name,
                Err(e) => e.to_string(),
            };
            r.lock().unwrap().push((at, ok, detail));
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    results
}

#[test]
fn sigusr2_hands_the_sockets_to_a_new_lbd_while_the_old_one_drains() {
    let dir = TempDir::new("upgrade");
    let ready = dir.0.join("api.ready");
    let cp1 = Backend::named("cp1");
    // Fixed ports, as in a real config: the new lbd must find the address
    // it inherits in its config, and the admin API where the old one was.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (api, admin) = (free(), free());
    let config = config_for(
        &[&cp1],
        "",
        &format!("ready_file = \"{}\"", ready.display()),
    )
    .replace("[admin]", "[global]\ndrain_timeout = \"30s\"\n\n[admin]")
    .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{admin}\""))
    .replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"{api}\"]"),
    ) + "[backend.health]\ninterval = \"200ms\"\nfast_interval = \"100ms\"\n";
    let mut old = Lbd::start(&config);
    let addr = old.addr("api");
    assert_eq!((addr, old.admin_addr()), (api, admin));
    wait_until(Duration::from_secs(10), "ready", || {
        std::fs::read_to_string(&ready).unwrap_or_default() == "0\n"
    });

    // A long-lived connection (a watch) on the old process.
    let (name, mut watch) = hold(addr);
    assert_eq!(name, "cp1");
    let stop = Arc::new(AtomicBool::new(false));
    let results = client_loop(addr, Arc::clone(&stop));
    wait_until(Duration::from_secs(5), "the client loop to run", || {
        results.lock().unwrap().len() > 5
    });

    old.signal(libc::SIGUSR2);
    let line = old.wait_for_log(
        "the new lbd serves; draining this one",
        Duration::from_secs(30),
    );
    let new_pid: i32 = support::field(&line, "pid").unwrap().parse().unwrap();
    assert_ne!(new_pid, old.pid());
    // The old one drains: still running, still relaying its watch…
    std::thread::sleep(Duration::from_secs(1));
    assert!(old.is_running(), "the old lbd must drain, not exit");
    assert_eq!(
        echo_round_trip(&mut watch, b"still here").unwrap(),
        b"still here"
    );
    // …while new clients keep being served, by the new one (the old one
    // stopped accepting).
    let served_after = results.lock().unwrap().len();
    wait_until(
        Duration::from_secs(5),
        "clients served after the hand-over",
        || {
            results.lock().unwrap()[served_after..]
                .iter()
                .filter(|r| r.1)
                .count()
                >= 10
        },
    );
    let (code, _) = support::http(admin, "GET", "/healthz");
    assert_eq!(code, 200, "the new lbd serves the admin API");

    // The watch ends: the old one exits cleanly, and leaves the ready file
    // to the new one (its guardian writes nothing).
    drop(watch);
    assert!(old.wait_exit(Duration::from_secs(10)).success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read_to_string(&ready).unwrap(), "0\n");
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(100));
    let failed: Vec<_> = results
        .lock()
        .unwrap()
        .iter()
        .filter(|r| !r.1)
        .cloned()
        .collect();
    assert!(
        failed.is_empty(),
        "clients failed during the upgrade: {failed:?}"
    );
    assert!(TcpStream::connect(addr).is_ok());

    // SAFETY: kill(2) on the pid the old lbd started and logged.
    unsafe { libc::kill(new_pid, libc::SIGKILL) };
    wait_until(
        Duration::from_secs(5),
        "the guardian to mark the file not ready",
        || std::fs::read_to_string(&ready).unwrap_or_default() == "1\n",
    );
}
