//! Rebalance: when a server comes back, lbd closes only the connections the
//! others hold above their share, spread over the window, each with a
//! clean FIN; clients reconnect and least-connections sends them to the
//! server that came back.

mod support;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Backend, Lbd, config_for, metrics, wait_until};

const CLIENTS: usize = 30;
const WINDOW: Duration = Duration::from_secs(2);

/// What the long-lived clients saw.
#[derive(Default)]
struct Seen {
    /// The server each client is on now (from the backend's greeting).
    on: Vec<Option<String>>,
    /// Clean closes (read returned 0), with when they came.
    clean_closes: Vec<Instant>,
    /// Anything else: resets, errors.
    errors: Vec<String>,
}

/// `CLIENTS` clients that each hold a connection, and reconnect when lbd
/// closes it cleanly, as client-go's watches do.
struct Clients {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    fn start(addr: SocketAddr) -> Clients {
        let seen = Arc::new(Mutex::new(Seen {
            on: vec![None; CLIENTS],
            ..Seen::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for slot in 0..CLIENTS {
            let (mine, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || hold(addr, slot, &mine, &stop)));
            // One at a time, so least-connections sees each one land.
            wait_until(Duration::from_secs(10), "a client to connect", || {
                seen.lock().unwrap().on[slot].is_some()
            });
        }
        Clients {
            seen,
            stop,
            threads,
        }
    }

    /// Connections per server name.
    fn per_server(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for name in self.seen.lock().unwrap().on.iter().flatten() {
            *counts.entry(name.clone()).or_default() += 1;
        }
        counts
    }

    fn connected(&self) -> usize {
        self.seen.lock().unwrap().on.iter().flatten().count()
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn hold(addr: SocketAddr, slot: usize, seen: &Mutex<Seen>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut stream = match TcpStream::connect(addr) {
            Ok(stream) => stream,
            Err(e) => {
                seen.lock().unwrap().errors.push(format!("connect: {e}"));
                return;
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        // The greeting: "name\n".
        let mut greeting = Vec::new();
        let mut byte = [0u8; 1];
        while greeting.last() != Some(&b'\n') {
            match stream.read(&mut byte) {
                Ok(1) => greeting.push(byte[0]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                other => {
                    seen.lock()
                        .unwrap()
                        .errors
                        .push(format!("greeting: {other:?}"));
                    return;
                }
            }
        }
        let name = String::from_utf8_lossy(&greeting).trim().to_owned();
        seen.lock().unwrap().on[slot] = Some(name);
        // Held until lbd closes it.
        loop {
            match stream.read(&mut byte) {
                Ok(0) => {
                    let mut seen = seen.lock().unwrap();
                    seen.on[slot] = None;
                    seen.clean_closes.push(Instant::now());
                    break;
                }
                Ok(_) => {
                    seen.lock().unwrap().errors.push("unexpected bytes".into());
                    return;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                Err(e) => {
                    seen.lock().unwrap().errors.push(format!("read: {e}"));
                    return;
                }
            }
        }
    }
}

fn closed_by_rebalance(lbd: &Lbd) -> f64 {
    let samples = lbd.metrics();
    ["a", "b", "c"]
        .iter()
        .map(|server| {
            metrics::value(
                &samples,
                "lbd_server_closed_total",
                &[("server", server), ("reason", "rebalance")],
            )
        })
        .sum()
}

fn active(lbd: &Lbd) -> Vec<u64> {
    let status = lbd.status();
    status["backends"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["active_connections"].as_u64().unwrap())
        .collect()
}

/// Three servers, the third disabled; 30 clients on the first two.
fn setup(backend_extra: &str) -> (Vec<Backend>, Lbd, Clients) {
    let backends: Vec<Backend> = ["a", "b", "c"].iter().map(|n| Backend::named(n)).collect();
    let refs: Vec<&Backend> = backends.iter().collect();
    let extra = format!("balance = \"least-connections\"\n{backend_extra}");
    let config =
        config_for(&refs, &extra, "") + "\n[backend.health]\ninterval = \"200ms\"\nrise = 1\n";
    let lbd = Lbd::start(&config);
    let (code, body) = lbd.post("/api/v1/backends/pool/servers/c/disable");
    assert_eq!(code, 200, "{body}");
    let clients = Clients::start(lbd.addr("api"));
    let counts = clients.per_server();
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [15, 15],
        "{counts:?}"
    );
    assert_eq!(active(&lbd), [15, 15, 0]);
    (backends, lbd, clients)
}

/// Waits until c holds its share (10 of 30) and every client is back.
fn wait_rebalanced(lbd: &Lbd, clients: &Clients, within: Duration) {
    wait_until(within, "c to hold its share of the connections", || {
        clients.per_server().get("c").copied().unwrap_or(0) >= 10 && clients.connected() == CLIENTS
    });
    let _ = lbd;
}

/// Checks that only the excess was closed, cleanly, and spread out.
fn check_only_excess_closed(lbd: &Lbd, clients: &Clients) {
    // Nothing more closes after the window.
    std::thread::sleep(WINDOW);
    let counts = clients.per_server();
    let seen = clients.seen.lock().unwrap();
    assert!(
        seen.errors.is_empty(),
        "clients saw errors: {:?}",
        seen.errors
    );
    let closes = seen.clean_closes.len();
    // Share 10 each: a and b gave up 5 each, c took them.
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{counts:?}"
    );
    assert_eq!(closes, 10, "only the excess is closed");
    assert_eq!(closed_by_rebalance(lbd), closes as f64);
    assert_eq!(active(lbd), [10, 10, 10]);
    // Spread over the window, not all at once.
    let first = *seen.clean_closes.iter().min().unwrap();
    let last = *seen.clean_closes.iter().max().unwrap();
    assert!(
        last - first >= WINDOW / 2,
        "the closes came within {:?}: a storm, not spread over {WINDOW:?}",
        last - first
    );
}

#[test]
fn a_server_that_comes_back_gets_its_share_and_only_the_excess_moves() {
    let (_backends, lbd, clients) = setup("rebalance = \"2s\"");
    let (code, body) = lbd.post("/api/v1/backends/pool/servers/c/enable");
    assert_eq!(code, 200, "{body}");
    wait_rebalanced(&lbd, &clients, WINDOW + Duration::from_secs(10));
    check_only_excess_closed(&lbd, &clients);
    assert!(!lbd.logs_matching("rebalance done").is_empty());
}

#[test]
fn lbctl_rebalance_starts_one_by_hand() {
    // No `rebalance` set: c coming back moves nothing by itself.
    let (_backends, lbd, clients) = setup("");
    let (code, body) = lbd.post("/api/v1/backends/pool/servers/c/enable");
    assert_eq!(code, 200, "{body}");
    wait_until(Duration::from_secs(10), "c to be up", || {
        lbd.status()["backends"][0]["servers"][2]["state"] == "up"
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(clients.seen.lock().unwrap().clean_closes.len(), 0);
    let out = lbd.lbctl(&["rebalance", "pool", "--window", "2s"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("closing 10 connection(s) over 2s"),
        "{out:?}"
    );
    wait_rebalanced(&lbd, &clients, WINDOW + Duration::from_secs(10));
    check_only_excess_closed(&lbd, &clients);

    let unknown = lbd.lbctl(&["rebalance", "nope"]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("nope"), "{unknown:?}");
}

#[test]
fn nothing_closes_while_fewer_than_two_servers_are_up() {
    let b = Backend::named("solo");
    let config = config_for(&[&b], "rebalance = \"2s\"", "");
    let lbd = Lbd::start(&config);
    let (code, body) = lbd.post("/api/v1/backends/pool/rebalance");
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["closing"], 0, "{body}");
    assert!(
        answer["note"].as_str().unwrap().contains("at least two"),
        "{body}"
    );
}

#[test]
fn a_server_added_by_a_reload_gets_its_share() {
    let backends: Vec<Backend> = ["a", "b", "c"].iter().map(|n| Backend::named(n)).collect();
    let config = |servers: &[&Backend]| {
        config_for(
            servers,
            "balance = \"least-connections\"\nrebalance = \"2s\"",
            "",
        ) + "\n[backend.health]\ninterval = \"200ms\"\nrise = 1\n"
    };
    let lbd = Lbd::start(&config(&[&backends[0], &backends[1]]));
    let clients = Clients::start(lbd.addr("api"));
    assert_eq!(active(&lbd), [15, 15]);
    lbd.rewrite_config(&config(&[&backends[0], &backends[1], &backends[2]]));
    let (code, body) = lbd.post("/api/v1/reload");
    assert_eq!(code, 200, "{body}");
    wait_rebalanced(&lbd, &clients, WINDOW + Duration::from_secs(10));
    check_only_excess_closed(&lbd, &clients);
}
