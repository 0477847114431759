//! Hot reload through the real binary: SIGHUP and POST /api/v1/reload change
//! servers and listeners under load without dropping or failing a
//! connection; a broken file changes nothing; DNS names follow /etc/hosts.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use support::{Backend, Lbd, config_for, echo_round_trip, greeting, hold, wait_until};

/// Short connections in a loop: each must greet and echo. Counts failures
/// and which backend answered.
struct ClientLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Vec<String>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ClientLoop {
    fn start(addr: SocketAddr) -> ClientLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f, n) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failures),
            Arc::clone(&seen),
        );
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let attempt = || -> std::io::Result<String> {
                    let (name, mut stream) = hold(addr);
                    let back = echo_round_trip(&mut stream, b"ping")?;
                    if back != b"ping" {
                        return Err(std::io::Error::other("bad echo"));
                    }
                    Ok(name)
                };
                match std::panic::catch_unwind(attempt) {
                    Ok(Ok(name)) => {
                        o.fetch_add(1, Ordering::Relaxed);
                        n.lock().unwrap().push(name);
                    }
                    Ok(Err(e)) => f.lock().unwrap().push(e.to_string()),
                    Err(_) => f.lock().unwrap().push("connect or greeting failed".into()),
                }
            }
        });
        ClientLoop {
            stop,
            ok,
            failures,
            seen,
            thread: Some(thread),
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    fn seen(&self, name: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|n| *n == name)
            .count()
    }

    /// Stops the loop and returns the failures.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.failures.lock().unwrap().clone()
    }
}

fn hold_until(addr: SocketAddr, wanted: &str) -> TcpStream {
    for _ in 0..50 {
        let (name, stream) = hold(addr);
        if name == wanted {
            return stream;
        }
    }
    panic!("no connection reached {wanted}");
}

#[test]
fn sighup_adds_and_removes_servers_under_load_without_a_failure() {
    let (a, b, c) = (
        Backend::named("a"),
        Backend::named("b"),
        Backend::named("c"),
    );
    let lbd = Lbd::start(&config_for(&[&a, &b], "", ""));
    let addr = lbd.addr("api");
    let mut long_lived = hold_until(addr, "b");

    let clients = ClientLoop::start(addr);
    wait_until(Duration::from_secs(10), "the client loop to run", || {
        clients.ok() > 20
    });
    lbd.rewrite_config(&config_for(&[&a, &c], "", ""));
    lbd.signal(libc::SIGHUP);
    lbd.wait_for_log("config reloaded", Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "c to get connections", || {
        clients.seen("c") > 20
    });
    let b_accepted = b.accepted();
    let before = clients.ok();
    wait_until(Duration::from_secs(10), "more connections", || {
        clients.ok() > before + 50
    });
    let made = clients.ok();
    let failures = clients.finish();
    eprintln!(
        "{made} short connections across the reload, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures: {failures:?}",
        failures.len()
    );
    assert_eq!(
        b.accepted(),
        b_accepted,
        "the removed server got new connections"
    );

    // The connection to the removed server still relays both ways.
    assert_eq!(
        echo_round_trip(&mut long_lived, b"still here").unwrap(),
        b"still here"
    );
    assert_eq!(lbd.server_names("pool"), ["a", "c"]);
    let reload = lbd.logs_matching("config reloaded").join("\n");
    assert!(
        reload.contains("server pool/c added") && reload.contains("server pool/b removed"),
        "{reload}"
    );
}

#[test]
fn servers_that_stay_keep_their_counters_and_admin_state() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let lbd = Lbd::start(&config_for(&[&a, &b], "", ""));
    for _ in 0..4 {
        greeting(lbd.addr("api")).unwrap();
    }
    assert_eq!(lbd.post("/api/v1/backends/pool/servers/a/drain").0, 200);
    let before = lbd.status();
    let total_of = |status: &serde_json::Value, name: &str| {
        status["backends"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| {
                (
                    s["connections_total"].as_u64().unwrap(),
                    s["admin"].as_str().unwrap().to_owned(),
                )
            })
    };
    // A weight change and a new server: a and b are carried over.
    let c = Backend::named("c");
    let config = config_for(&[&a, &b, &c], "", "").replace(
        &format!("address = \"{}\" }}", b.addr),
        &format!("address = \"{}\", weight = 2 }}", b.addr),
    );
    lbd.rewrite_config(&config);
    let (code, body) = lbd.post("/api/v1/reload");
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["ok"], true);
    assert_eq!(
        answer["changes"],
        serde_json::json!(["server pool/b changed: weight 1 → 2", "server pool/c added"])
    );
    let after = lbd.status();
    assert_eq!(total_of(&after, "a"), total_of(&before, "a"));
    assert_eq!(total_of(&after, "a").unwrap().1, "drain");
    assert_eq!(total_of(&after, "b"), total_of(&before, "b"));
    assert_eq!(total_of(&after, "c"), Some((0, "ready".into())));
}

#[test]
fn a_broken_file_keeps_the_running_config_and_says_where_it_is_wrong() {
    let a = Backend::named("a");
    let lbd = Lbd::start(&config_for(&[&a], "", ""));
    let good = std::fs::read_to_string(&lbd.config_path).unwrap();
    lbd.rewrite_config(&good.replace(
        "backend = \"pool\"",
        "backend = \"pool\"\nmax_connection = 5",
    ));
    lbd.signal(libc::SIGHUP);
    lbd.wait_for_log("reload refused", Duration::from_secs(10));
    let status = lbd.status();
    let last = &status["config"]["last_reload"];
    assert_eq!(last["ok"], false, "{status}");
    let error = last["error"].as_str().unwrap();
    let location = format!(
        "{}:8:1: unknown field `max_connection`",
        lbd.config_path.display()
    );
    assert!(error.starts_with(&location), "{error}");
    // Still serving the old config.
    assert_eq!(greeting(lbd.addr("api")).unwrap(), "a");
    assert_eq!(lbd.server_names("pool"), ["a"]);
    // The reload route answers 4xx with the same error.
    let (code, body) = lbd.post("/api/v1/reload");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains(&location), "{body}");
    // Metrics count both refusals.
    let (_, metrics) = lbd.get("/metrics");
    assert!(
        metrics.contains("lbd_config_reloads_total{result=\"error\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lbd_config_last_reload_successful 0"),
        "{metrics}"
    );

    // Fixed again: applied, and status says so.
    lbd.rewrite_config(&good);
    assert_eq!(lbd.post("/api/v1/reload").0, 200);
    assert_eq!(lbd.status()["config"]["last_reload"]["ok"], true);
}

#[test]
fn listeners_open_close_and_move_without_cutting_live_connections() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let fixed = free.local_addr().unwrap();
    drop(free);
    let two_frontends = |second_name: &str, fixed_owner_is_first: bool| {
        let (first_listen, second_listen) = if fixed_owner_is_first {
            (
                format!("\"127.0.0.1:0\", \"{fixed}\""),
                "\"127.0.0.1:0\"".to_owned(),
            )
        } else {
            ("\"127.0.0.1:0\"".to_owned(), format!("\"{fixed}\""))
        };
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[frontend]]\nname = \"api\"\nlisten = [{first_listen}]\nbackend = \"pa\"\n\n\
             [[frontend]]\nname = \"{second_name}\"\nlisten = [{second_listen}]\nbackend = \"pb\"\n\n\
             [[backend]]\nname = \"pa\"\nservers = [{{ name = \"a\", address = \"{}\" }}]\n\n\
             [[backend]]\nname = \"pb\"\nservers = [{{ name = \"b\", address = \"{}\" }}]\n",
            a.addr, b.addr
        )
    };
    let lbd = Lbd::start(&two_frontends("old", true));
    let api = lbd.addr("api");
    let old = lbd.addr("old");
    assert_eq!(greeting(fixed).unwrap(), "a");
    let (_, mut through_old) = hold(old);
    let (_, mut through_fixed) = hold(fixed);

    // "old" is replaced by "new"; the fixed address moves from api to new.
    lbd.rewrite_config(&two_frontends("new", false));
    let (code, body) = lbd.post("/api/v1/reload");
    assert_eq!(code, 200, "{body}");
    wait_until(Duration::from_secs(5), "new to listen", || {
        !lbd.addrs("new").is_empty()
    });
    let new = lbd.addrs("new")[0];

    // api kept its port-0 listener (not re-bound) and serves on.
    assert_eq!(lbd.addrs("api")[0], api);
    assert_eq!(greeting(api).unwrap(), "a");
    // The new frontend listens; the moved address now feeds pb.
    assert_eq!(greeting(new).unwrap(), "b");
    assert_eq!(greeting(fixed).unwrap(), "b");
    // The removed frontend's listener is closed…
    wait_until(Duration::from_secs(5), "old to stop accepting", || {
        TcpStream::connect(old).is_err()
    });
    // …and the connections accepted before the reload go on.
    assert_eq!(echo_round_trip(&mut through_old, b"old").unwrap(), b"old");
    assert_eq!(
        echo_round_trip(&mut through_fixed, b"fixed").unwrap(),
        b"fixed"
    );
    assert!(
        lbd.logs_matching("listener handed over").len() == 1,
        "{:?}",
        lbd.logs()
    );
}

#[test]
fn a_reload_that_cannot_bind_changes_nothing() {
    let a = Backend::named("a");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let lbd = Lbd::start(&config_for(&[&a], "", ""));
    let config = config_for(&[&a], "", "").replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!(
            "listen = [\"127.0.0.1:0\", \"{}\"]",
            taken.local_addr().unwrap()
        ),
    );
    lbd.rewrite_config(&config.replace("name = \"a\"", "name = \"renamed\""));
    let (code, body) = lbd.post("/api/v1/reload");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("cannot listen on"), "{body}");
    // The port is in use: no hint about privileged ports.
    assert!(body.contains("is already in use"), "{body}");
    assert!(!body.contains("CAP_NET_BIND_SERVICE"), "{body}");
    assert_eq!(
        lbd.server_names("pool"),
        ["a"],
        "the server change must not apply either"
    );
    assert_eq!(greeting(lbd.addr("api")).unwrap(), "a");
}

/// Two echo backends on 127.0.0.1:P and 127.0.0.2:P: what one DNS name with
/// two addresses points at.
fn pair_on_one_port() -> (Backend, Backend, u16) {
    for _ in 0..20 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.2", port)).is_ok() {
            drop(first);
            let one = Backend::named_at("one", SocketAddr::from(([127, 0, 0, 1], port)));
            let two = Backend::named_at("two", SocketAddr::from(([127, 0, 0, 2], port)));
            return (one, two, port);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

#[test]
fn a_dns_name_with_two_addresses_is_two_servers_and_follows_changes() {
    let (_one, _two, port) = pair_on_one_port();
    let config = format!(
        "[global]\nresolve_interval = \"1s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"pool\"\n\n\
         [[backend]]\nname = \"pool\"\nservers = [{{ name = \"cp\", address = \"cp.lbd.test:{port}\" }}]\n"
    );
    let both = "127.0.0.1 localhost\n127.0.0.1 cp.lbd.test\n127.0.0.2 cp.lbd.test\n";
    let Some(lbd) = Lbd::start_with_hosts(&config, both) else {
        return;
    };
    assert_eq!(lbd.server_names("pool"), ["cp@127.0.0.1", "cp@127.0.0.2"]);
    let mut seen: Vec<String> = (0..4).map(|_| greeting(lbd.addr("api")).unwrap()).collect();
    seen.sort();
    assert_eq!(seen, ["one", "one", "two", "two"]);
    // Drain the whole name at once by its configured name.
    let (code, body) = lbd.post("/api/v1/backends/pool/servers/cp/drain");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.matches("\"draining\"").count(), 2, "{body}");
    assert_eq!(lbd.post("/api/v1/backends/pool/servers/cp/enable").0, 200);

    // One address goes away: its server follows within a resolve interval,
    // and the one that stays keeps its counters.
    lbd.rewrite_hosts("127.0.0.1 localhost\n127.0.0.2 cp.lbd.test\n");
    wait_until(
        Duration::from_secs(10),
        "127.0.0.1 to leave the pool",
        || lbd.server_names("pool") == ["cp@127.0.0.2"],
    );
    let total = lbd.status()["backends"][0]["servers"][0]["connections_total"].as_u64();
    assert_eq!(total, Some(2));
    assert_eq!(greeting(lbd.addr("api")).unwrap(), "two");

    // The name stops resolving: the last address is kept, and the log says so once.
    lbd.rewrite_hosts("127.0.0.1 localhost\n");
    lbd.wait_for_log(
        "DNS resolution failed; keeping the last known addresses",
        Duration::from_secs(15),
    );
    assert_eq!(lbd.server_names("pool"), ["cp@127.0.0.2"]);
    assert_eq!(greeting(lbd.addr("api")).unwrap(), "two");
    // Two more resolve intervals fail quietly: a failure is logged when it
    // starts, not at every attempt. (Proving an absence needs a wait.)
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(lbd.logs_matching("DNS resolution failed").len(), 1);
    lbd.rewrite_hosts("127.0.0.1 localhost\n127.0.0.1 cp.lbd.test\n127.0.0.2 cp.lbd.test\n");
    lbd.wait_for_log("DNS resolution works again", Duration::from_secs(15));
    wait_until(Duration::from_secs(10), "both addresses back", || {
        lbd.server_names("pool").len() == 2
    });
}

#[test]
fn readyz_says_which_name_did_not_resolve() {
    let config = "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"pool\"\n\n\
         [[backend]]\nname = \"pool\"\nservers = [{ name = \"cp\", address = \"cp.lbd.test:6443\" }]\n";
    let Some(lbd) = Lbd::start_with_hosts(config, "127.0.0.1 localhost\n") else {
        return;
    };
    let (code, body) = lbd.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("(cp: the name cp.lbd.test did not resolve, so it has no address)"),
        "{body}"
    );
}

#[test]
fn a_new_address_of_a_disabled_server_joins_disabled() {
    let (_one, _two, port) = pair_on_one_port();
    let config = |address: &str| {
        format!(
            "[global]\nresolve_interval = \"1s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"pool\"\n\n\
             [[backend]]\nname = \"pool\"\nservers = [{{ name = \"cp\", address = \"{address}\" }}]\n"
        )
    };
    let dns = config(&format!("cp.lbd.test:{port}"));
    let Some(lbd) = Lbd::start_with_hosts(&dns, "127.0.0.1 localhost\n127.0.0.1 cp.lbd.test\n")
    else {
        return;
    };
    let admin_states = || -> Vec<(String, String)> {
        lbd.status()["backends"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().into(),
                    s["admin"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let (code, body) = lbd.post("/api/v1/backends/pool/servers/cp/disable");
    assert_eq!(code, 200, "{body}");

    // DNS gives the name a second address: it joins disabled, like the name.
    lbd.rewrite_hosts("127.0.0.1 localhost\n127.0.0.1 cp.lbd.test\n127.0.0.2 cp.lbd.test\n");
    wait_until(Duration::from_secs(10), "the second address", || {
        lbd.server_names("pool").len() == 2
    });
    assert_eq!(
        admin_states(),
        [
            ("cp@127.0.0.1".to_owned(), "disabled".to_owned()),
            ("cp@127.0.0.2".to_owned(), "disabled".to_owned())
        ]
    );

    // A reload gives `cp` another address: still the operator's disabled cp.
    lbd.rewrite_config(&config(&format!("127.0.0.2:{port}")));
    let (code, body) = lbd.post("/api/v1/reload");
    assert_eq!(code, 200, "{body}");
    assert_eq!(admin_states(), [("cp".to_owned(), "disabled".to_owned())]);
}

/// The accept queue lengths `ss` shows for the sockets listening on `addr`.
fn backlogs(addr: SocketAddr) -> Vec<u32> {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", addr.port())])
        .output()
        .expect("ss (iproute2) runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(&addr.to_string()))
        .map(|line| line.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn a_backlog_change_is_applied_to_the_open_sockets() {
    if !support::have("ss") {
        eprintln!("skipped: needs ss (iproute2) to read the accept queue length");
        return;
    }
    let a = Backend::named("a");
    let lbd = Lbd::start(&config_for(&[&a], "", "backlog = 16"));
    let addr = lbd.addr("api");
    let before = backlogs(addr);
    assert!(
        !before.is_empty() && before.iter().all(|&b| b == 16),
        "{before:?}"
    );

    lbd.rewrite_config(&config_for(&[&a], "", "backlog = 64"));
    let (code, body) = lbd.post("/api/v1/reload");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("listens with backlog 64"), "{body}");
    let after = backlogs(addr);
    assert_eq!(after.len(), before.len(), "the same sockets, none added");
    assert!(after.iter().all(|&b| b == 64), "{after:?}");
    assert_eq!(lbd.addr("api"), addr);
    assert_eq!(greeting(addr).unwrap(), "a");
}

#[test]
fn on_no_server_is_applied_by_reload() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = |on_no_server: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"pool\"\n\n\
             [[backend]]\nname = \"pool\"\non_no_server = \"{on_no_server}\"\nservers = [{{ name = \"dead\", address = \"{dead}\" }}]\n\
             [backend.health]\nfall = 1\n"
        )
    };
    let lbd = Lbd::start(&config("refuse"));
    let addr = lbd.addr("api");
    wait_until(Duration::from_secs(5), "the listener to refuse", || {
        TcpStream::connect(addr).is_err()
    });

    lbd.rewrite_config(&config("panic"));
    let (code, body) = lbd.post("/api/v1/reload");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("backend pool changed: on_no_server"),
        "{body}"
    );
    // Panic mode tries the server anyway: the listener accepts again.
    wait_until(Duration::from_secs(5), "the listener to accept", || {
        TcpStream::connect(addr).is_ok()
    });
}
