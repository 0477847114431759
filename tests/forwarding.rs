//! The core data path through the real `lbd` binary: balancing, byte-exact
//! relaying with half-close, retries, timeouts, connection limits, drain.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{Backend, Lbd, config_for, field, greeting, wait_until};

fn three() -> [Backend; 3] {
    [
        Backend::named("a"),
        Backend::named("b"),
        Backend::named("c"),
    ]
}

fn tally(addr: SocketAddr, connections: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..connections {
        *counts.entry(greeting(addr).unwrap()).or_default() += 1;
    }
    counts
}

#[test]
fn round_robin_spreads_evenly_and_by_weight() {
    let backends = three();
    let lbd = Lbd::start(&config_for(
        &backends.each_ref(),
        "balance = \"round-robin\"",
        "",
    ));
    let counts = tally(lbd.addr("api"), 30);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{counts:?}"
    );

    let config = config_for(&backends.each_ref(), "", "").replace(
        &format!("address = \"{}\" }}", backends[1].addr),
        &format!("address = \"{}\", weight = 3 }}", backends[1].addr),
    );
    let lbd = Lbd::start(&config);
    let counts = tally(lbd.addr("api"), 50);
    assert_eq!(
        (counts["a"], counts["b"], counts["c"]),
        (10, 30, 10),
        "{counts:?}"
    );
}

#[test]
fn least_connections_sends_new_clients_to_the_least_busy_server() {
    let backends = three();
    let lbd = Lbd::start(&config_for(
        &backends.each_ref(),
        "balance = \"least-connections\"",
        "",
    ));
    let addr = lbd.addr("api");
    let hold = || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let mut line = String::new();
        BufReader::new(&mut stream).read_line(&mut line).unwrap();
        (line.trim().to_owned(), stream)
    };
    // Six held connections spread two per server…
    let mut held: Vec<(String, TcpStream)> = (0..6).map(|_| hold()).collect();
    let mut per_server: HashMap<String, usize> = HashMap::new();
    for (name, _) in &held {
        *per_server.entry(name.clone()).or_default() += 1;
    }
    assert!(per_server.values().all(|&n| n == 2), "{per_server:?}");
    // …and once b's two end, the next two both go to b (round-robin would not).
    held.retain(|(name, _)| name != "b");
    wait_until(
        Duration::from_secs(5),
        "lbd to see b's connections close",
        || {
            lbd.logs_matching("connection closed")
                .iter()
                .filter(|l| l.contains("server=b"))
                .count()
                == 2
        },
    );
    let next: Vec<String> = (0..2)
        .map(|_| hold())
        .map(|(name, s)| {
            held.push((name.clone(), s));
            name
        })
        .collect();
    assert_eq!(next, ["b", "b"]);
}

#[test]
fn random_two_reaches_every_server() {
    let backends = three();
    let lbd = Lbd::start(&config_for(
        &backends.each_ref(),
        "balance = \"random-two\"",
        "",
    ));
    let counts = tally(lbd.addr("api"), 60);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&c| c >= 5), "{counts:?}");
}

#[test]
fn source_hash_keeps_a_client_on_one_server() {
    let backends = three();
    let lbd = Lbd::start(&config_for(
        &backends.each_ref(),
        "balance = \"source-hash\"",
        "",
    ));
    let addr = lbd.addr("api");
    let mut by_source = HashMap::new();
    for last in 1..=40u8 {
        let source = SocketAddr::from(([127, 0, 0, last], 0));
        let names: Vec<String> = (0..3).map(|_| greeting_from(source, addr)).collect();
        assert!(
            names.windows(2).all(|w| w[0] == w[1]),
            "{source}: {names:?}"
        );
        by_source.insert(last, names[0].clone());
    }
    let servers: std::collections::HashSet<_> = by_source.values().collect();
    assert_eq!(
        servers.len(),
        3,
        "40 sources should reach all 3 servers: {by_source:?}"
    );
}

fn greeting_from(source: SocketAddr, to: SocketAddr) -> String {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&source.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let mut line = String::new();
    BufReader::new(TcpStream::from(socket))
        .read_line(&mut line)
        .unwrap();
    line.trim().to_owned()
}

#[test]
fn first_fills_the_first_server() {
    let backends = three();
    let lbd = Lbd::start(&config_for(&backends.each_ref(), "balance = \"first\"", ""));
    let counts = tally(lbd.addr("api"), 10);
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
}

/// Sends 1 MiB through lbd to an echo server, half-closes, and checks every
/// byte came back; returns lbd's "connection closed" log line.
fn echo_a_mebibyte(lbd: &Lbd) -> String {
    let mut stream = TcpStream::connect(lbd.addr("api")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let payload: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut writer = stream.try_clone().unwrap();
    let sent = payload.clone();
    let send = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        // Half-close: the client has nothing more to say but still wants the answer.
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).unwrap();
    send.join().unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echoed bytes differ");
    lbd.wait_for_log("connection closed", Duration::from_secs(5))
}

#[test]
fn a_mebibyte_is_echoed_exactly_with_client_half_close_through_splice() {
    let backend = Backend::echo();
    let lbd = Lbd::start(&config_for(&[&backend], "", ""));
    let closed = echo_a_mebibyte(&lbd);
    let spliced: u64 = field(&closed, "spliced").unwrap().parse().unwrap();
    assert!(
        spliced > 0,
        "a bulk stream should take the splice path: {closed}"
    );
}

#[test]
fn a_mebibyte_is_echoed_exactly_with_client_half_close_through_the_copy_loop() {
    let backend = Backend::echo();
    let lbd = Lbd::start(&format!(
        "[global]\nsplice = false\n\n{}",
        config_for(&[&backend], "", "")
    ));
    let closed = echo_a_mebibyte(&lbd);
    assert_eq!(field(&closed, "spliced"), Some("0"), "{closed}");
}

/// The default runs one runtime per core with an SO_REUSEPORT socket each;
/// the work-stealing runtime must serve and drain just the same.
#[test]
fn the_multi_thread_runtime_relays_and_drains_too() {
    let backend = Backend::echo();
    let mut lbd = Lbd::start(&format!(
        "[global]\nruntime = \"multi-thread\"\n\n{}",
        config_for(&[&backend], "", "")
    ));
    // tokio names its work-stealing workers; the per-core runtimes are
    // `lbd-worker-N` threads.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", lbd.pid()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    assert!(
        threads.iter().any(|t| t == "tokio-rt-worker"),
        "runtime = \"multi-thread\" should run tokio's workers: {threads:?}"
    );
    let closed = echo_a_mebibyte(&lbd);
    assert_eq!(field(&closed, "outcome"), Some("closed"), "{closed}");
    lbd.signal(libc::SIGTERM);
    assert!(lbd.wait_exit(Duration::from_secs(10)).success());
}

/// lbd with `dead` and `alive` behind round-robin, both checked up once,
/// then `dead` stopped: with the next check an hour away and passive health
/// off, lbd still believes `dead` is up, so only the connection path's own
/// dial and retry stand between a client and the refused port.
fn dead_server_believed_up(retries: u32) -> (Lbd, Backend, Backend) {
    let dead = Backend::named("dead");
    let alive = Backend::named("alive");
    let config = config_for(
        &[&dead, &alive],
        &format!("balance = \"round-robin\"\nretries = {retries}"),
        "",
    ) + "[backend.health]\ninterval = \"1h\"\npassive = false\n";
    let lbd = Lbd::start(&config);
    assert_eq!(server_health(&lbd, "dead"), "up");
    dead.stop();
    (lbd, dead, alive)
}

/// The `health` of a server of the backend `pool` in the status API.
fn server_health(lbd: &Lbd, server: &str) -> String {
    let status = lbd.status();
    status["backends"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == server)
        .map(|s| s["health"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no server {server} in {status}"))
}

#[test]
fn a_failed_dial_is_retried_on_the_next_server() {
    let (lbd, _dead, _alive) = dead_server_believed_up(1);
    for _ in 0..10 {
        assert_eq!(greeting(lbd.addr("api")).unwrap(), "alive");
    }
    // The dials to dead were the connection path's, not a check's: dead
    // still counts as up, and every other client dialled it first.
    assert_eq!(server_health(&lbd, "dead"), "up");
    let dials = lbd.logs_matching("dial failed");
    assert!(
        dials.len() >= 5 && dials.iter().all(|l| l.contains("server=dead")),
        "{dials:?}"
    );
}

#[test]
fn without_the_retry_the_same_refused_dial_fails_the_client() {
    // The control for the test above: the same scenario, retries = 0.
    let (lbd, _dead, _alive) = dead_server_believed_up(0);
    let failed = (0..10)
        .filter(|_| greeting(lbd.addr("api")).is_err())
        .count();
    assert_eq!(failed, 5, "round-robin sends every other client to dead");
    assert_eq!(server_health(&lbd, "dead"), "up");
}

#[test]
fn without_retries_a_failed_dial_resets_the_client() {
    let dead = Backend::named("dead");
    dead.stop();
    // The health check looks at another, open port, so the server counts as
    // up and the dial itself is what fails (a dead server whose checks pass).
    let check_port = Backend::echo();
    let config = config_for(&[&dead], "retries = 0", "")
        + &format!("[backend.health]\nport = {}\n", check_port.addr.port());
    let lbd = Lbd::start(&config);
    let err = greeting(lbd.addr("api")).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
        ),
        "{err}"
    );
}

#[test]
fn idle_timeout_closes_a_silent_connection() {
    let backend = Backend::echo();
    let lbd = Lbd::start(&config_for(&[&backend], "", "idle_timeout = \"1s\""));
    let mut stream = TcpStream::connect(lbd.addr("api")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Traffic keeps it open past the timeout…
    for _ in 0..3 {
        stream.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    // …silence closes it.
    let started = Instant::now();
    let mut buf = [0u8; 1];
    assert_eq!(stream.read(&mut buf).unwrap(), 0);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "closed too early: {waited:?}"
    );
    let closed = lbd.wait_for_log("connection closed", Duration::from_secs(5));
    assert!(closed.contains("idle_timeout"), "{closed}");
    let closed_idle = support::metrics::value(
        &lbd.metrics(),
        "lbd_server_closed_total",
        &[("server", "echo"), ("reason", "idle")],
    );
    assert_eq!(closed_idle, 1.0, "counted as closed by lbd: idle");
}

#[test]
fn fin_timeout_closes_a_half_closed_pair_whose_server_stays_silent() {
    // A server that reads everything and never answers nor closes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in silent.incoming().map_while(Result::ok) {
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
            held.push(stream);
        }
    });
    let config = format!(
        "[[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"pool\"\nfin_timeout = \"1s\"\n\n\
         [[backend]]\nname = \"pool\"\nservers = [{{ address = \"{silent_addr}\" }}]\n"
    );
    let lbd = Lbd::start(&config);
    let mut stream = TcpStream::connect(lbd.addr("api")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"request").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        stream.read(&mut buf).unwrap(),
        0,
        "lbd should close the pair"
    );
    let closed = lbd.wait_for_log("connection closed", Duration::from_secs(5));
    assert!(closed.contains("fin_timeout"), "{closed}");
}

#[test]
fn a_half_close_after_a_long_silence_still_gets_the_answer() {
    // A server that answers only once the client has half-closed, a moment later.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in server.incoming().map_while(Result::ok) {
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
            std::thread::sleep(Duration::from_millis(200));
            let _ = stream.write_all(b"bye");
        }
    });
    let config = format!(
        "[[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"pool\"\nfin_timeout = \"1s\"\n\n\
         [[backend]]\nname = \"pool\"\nservers = [{{ address = \"{server_addr}\" }}]\n"
    );
    let lbd = Lbd::start(&config);
    let mut stream = TcpStream::connect(lbd.addr("api")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Quiet for longer than fin_timeout (well within idle_timeout)…
    std::thread::sleep(Duration::from_millis(1500));
    stream.shutdown(Shutdown::Write).unwrap();
    // …then the answer after the half-close must still arrive.
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "bye");
}

#[test]
fn over_max_connections_clients_wait_in_the_backlog() {
    let backend = Backend::named("only");
    // One health check at start, then none for the test's length.
    let config = config_for(&[&backend], "", "max_connections = 2")
        + "[backend.health]\ninterval = \"1h\"\n";
    let lbd = Lbd::start(&config);
    // The first check has connected; the backend's accept thread may not
    // have counted it yet.
    wait_until(
        Duration::from_secs(5),
        "the first check's connection",
        || backend.accepted() >= 1,
    );
    let checks = backend.accepted();
    let addr = lbd.addr("api");
    let first = TcpStream::connect(addr).unwrap();
    let _second = TcpStream::connect(addr).unwrap();
    wait_until(Duration::from_secs(5), "two backend connections", || {
        backend.accepted() == checks + 2
    });
    // The third completes the TCP handshake in the kernel backlog but is not served…
    let mut third = TcpStream::connect(addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(third.read(&mut buf).is_err(), "served over the limit");
    assert_eq!(backend.accepted(), checks + 2);
    // …until a slot frees: then it is served, not dropped.
    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = third.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"only\n");
}

/// lbd with this `drain_timeout` in front of an echo server, and a client
/// connection through it that has echoed a byte: live when SIGTERM comes.
fn live_connection_with_drain_timeout(drain_timeout: &str) -> (Backend, Lbd, TcpStream) {
    let backend = Backend::echo();
    let config = config_for(&[&backend], "", "").replace(
        "[admin]",
        &format!("[global]\ndrain_timeout = \"{drain_timeout}\"\n\n[admin]"),
    );
    let lbd = Lbd::start(&config);
    let mut live = TcpStream::connect(lbd.addr("api")).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    live.write_all(b"x").unwrap();
    live.read_exact(&mut [0u8; 1]).unwrap();
    (backend, lbd, live)
}

#[test]
fn sigterm_drains_live_connections_refuses_new_ones_and_exits_zero() {
    let (_backend, mut lbd, mut live) = live_connection_with_drain_timeout("10s");
    let addr = lbd.addr("api");

    lbd.signal(libc::SIGTERM);
    lbd.wait_for_log("shutting down", Duration::from_secs(5));
    wait_until(
        Duration::from_secs(5),
        "new connections to be refused",
        || TcpStream::connect(addr).is_err(),
    );
    // The live connection still works during the drain…
    live.write_all(b"during").unwrap();
    let mut buf = [0u8; 6];
    live.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"during");
    assert!(lbd.is_running());
    // …and once it ends, lbd exits cleanly.
    drop(live);
    assert!(lbd.wait_exit(Duration::from_secs(5)).success());
}

#[test]
fn the_drain_deadline_closes_what_is_left_and_still_exits_zero() {
    let (_backend, mut lbd, mut live) = live_connection_with_drain_timeout("1s");
    lbd.signal(libc::SIGTERM);
    // Well under the 5 s backstop after the deadline: the relay itself must end.
    live.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    match live.read(&mut [0u8; 1]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the deadline to close the connection, got {other:?}"),
    }
    let closed = lbd.wait_for_log("connection closed", Duration::from_secs(3));
    assert!(closed.contains("outcome=\"shutdown\""), "{closed}");
    assert!(lbd.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn a_second_sigterm_ends_the_drain_at_once() {
    let (_backend, mut lbd, _live) = live_connection_with_drain_timeout("1h");
    lbd.signal(libc::SIGTERM);
    lbd.wait_for_log("draining connections", Duration::from_secs(5));
    assert!(lbd.is_running(), "the first SIGTERM drains");
    lbd.signal(libc::SIGTERM);
    assert!(lbd.wait_exit(Duration::from_secs(5)).success());
    lbd.wait_for_log("second signal", Duration::from_secs(1));
}

#[test]
fn ipv6_listeners_serve_alongside_ipv4() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let backend = Backend::named("v6");
    let config = config_for(&[&backend], "", "").replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\", \"[::1]:0\"]",
    );
    let lbd = Lbd::start(&config);
    let addrs = lbd.addrs("api");
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    for addr in addrs {
        assert_eq!(greeting(addr).unwrap(), "v6", "{addr}");
    }
}
