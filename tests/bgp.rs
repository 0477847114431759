//! The BGP (active-active) deployment run for real: two balancer hosts
//! (lbd, keepalived holding the VIP on loopback while lbd is ready, BIRD
//! announcing it), a router running BIRD that installs one multipath route
//! to the VIP, three stand-in apiservers, and a client behind the router,
//! each in its own network namespace, on test subnets (10.255.15.0/24 for
//! the balancers' LAN, 10.255.16.0/24 for the client's) that exist only
//! inside those namespaces.
//!
//! The configs are the shipped `config/lbd.toml` and `config/bgp/`, with
//! only addresses, ids and file paths substituted. The test prints
//! `MEASURED bgp` lines for docs/high-availability.md:
//! `cargo test --test bgp -- --nocapture 2>&1 | grep MEASURED`.
//!
//! Root only (network namespaces); it says why it skips otherwise.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::netns::{self, ClientLoop, Daemon, Lab, addr};
use support::{Backend, Lbd, TempDir, wait_until};

const CONFIG: &str = env!("CARGO_MANIFEST_DIR");
const HOSTS: [&str; 2] = ["lb1", "lb2"];
const LB_ADDRS: [u8; 2] = [21, 22];
const API_ADDRS: [u8; 3] = [11, 12, 13];
const ROUTER: u8 = 1;
const VIP: u8 = 10;

fn shipped(path: &str) -> String {
    std::fs::read_to_string(Path::new(CONFIG).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Replaces `from` (which must occur) with `to`.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "a shipped config no longer contains {from:?}"
    );
    text.replace(from, to)
}

/// The shipped addresses 10.0.0.N become the lab's 10.255.15.N.
fn lab_addresses(text: &str) -> String {
    text.replace("10.0.0.", "10.255.15.")
}

fn client_addr() -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 255, 16, 30)
}

struct Bgp {
    dir: TempDir,
    _apis: Vec<Backend>,
    lbd: Vec<Option<Lbd>>,
    _keepalived: Vec<Daemon>,
    _bird: Vec<Daemon>,
    // Last: the processes above end before their namespaces go.
    lab: Lab,
}

impl Bgp {
    fn ready_file(&self, index: usize) -> PathBuf {
        self.dir.0.join(format!("{}.ready", HOSTS[index]))
    }

    fn start_lbd(&mut self, index: usize) {
        let config = substitute(
            &shipped("config/lbd.toml"),
            "\"/run/lbd/kube-apiserver.ready\"",
            &format!("\"{}\"", self.ready_file(index).display()),
        );
        let config = lab_addresses(&config);
        let ns = self.lab.ns(HOSTS[index]);
        let mut lbd = Lbd::spawn_under(&["ip", "netns", "exec", &ns], &config, |_| {});
        lbd.wait_listening();
        self.lbd[index] = Some(lbd);
    }

    fn bird(&self, host: &str, config: &str) -> Daemon {
        let path = self.dir.write(&format!("bird-{host}.conf"), config);
        let mut command = self.lab.command(host, "bird");
        command
            .arg("-f")
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(self.dir.0.join(format!("bird-{host}.ctl")))
            .arg("-P")
            .arg(self.dir.0.join(format!("bird-{host}.pid")));
        Daemon::spawn(command, self.dir.0.join(format!("bird-{host}.log")))
    }

    /// The balancers the router's route to the VIP leads to now.
    fn next_hops(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-n", &self.lab.ns("router"), "-4", "route", "show"])
            .arg(format!("{}/32", addr(VIP)))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut hops: Vec<String> = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| {
                LB_ADDRS
                    .iter()
                    .position(|last| w[1] == addr(*last).to_string())
                    .map(|i| HOSTS[i].to_owned())
            })
            .collect();
        hops.sort();
        hops.dedup();
        hops
    }

    /// Waits until the route leads to exactly `hosts`; returns when, on
    /// `clock`.
    fn wait_hops(&self, hosts: &[&str], within: Duration, clock: Instant) -> Duration {
        let deadline = Instant::now() + within;
        loop {
            let hops = self.next_hops();
            if hops == hosts {
                return clock.elapsed();
            }
            if Instant::now() >= deadline {
                panic!(
                    "after {within:?} the VIP's route leads to {hops:?}, not {hosts:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn logs(&self) -> String {
        self._keepalived
            .iter()
            .chain(&self._bird)
            .map(|d| d.logs())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    /// Connections lbd on `host` has accepted so far.
    fn accepted(&self, index: usize) -> u64 {
        let admin: SocketAddr = "127.0.0.1:8404".parse().unwrap();
        let (code, body) = self.lab.within(HOSTS[index], move || {
            support::http(admin, "GET", "/api/v1/status")
        });
        assert_eq!(code, 200, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        status["frontends"][0]["connections_total"]
            .as_u64()
            .unwrap()
    }
}

fn start() -> Option<Bgp> {
    if let Some(why) = netns::unavailable(&["keepalived", "bird"]) {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let lab = Lab::new("bgp");
    lab.bridge("br1");
    for (host, last) in HOSTS.iter().zip(LB_ADDRS) {
        lab.host(host, &[addr(last)]);
        netns::ip(&[
            "-n",
            &lab.ns(host),
            "route",
            "add",
            "10.255.16.0/24",
            "via",
            &addr(ROUTER).to_string(),
        ]);
    }
    lab.host("api", &API_ADDRS.map(addr));
    lab.host("router", &[addr(ROUTER)]);
    lab.attach(
        "router",
        "br1",
        "eth1",
        &[std::net::Ipv4Addr::new(10, 255, 16, 1)],
    );
    for sysctl in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.fib_multipath_hash_policy=1",
    ] {
        let status = lab
            .command("router", "sysctl")
            .args(["-q", "-w", sysctl])
            .status()
            .unwrap();
        assert!(status.success(), "sysctl {sysctl}");
    }
    lab.host_on("br1", "client", &[client_addr()]);
    netns::ip(&[
        "-n",
        &lab.ns("client"),
        "route",
        "add",
        "default",
        "via",
        "10.255.16.1",
    ]);

    let apis = lab.within("api", || {
        API_ADDRS
            .iter()
            .enumerate()
            .map(|(i, last)| {
                Backend::named_at(
                    &format!("cp{}", i + 1),
                    SocketAddr::from((addr(*last), 6443)),
                )
            })
            .collect()
    });
    let mut bgp = Bgp {
        lab,
        dir: TempDir::new("bgp"),
        _apis: apis,
        lbd: vec![None, None],
        _keepalived: Vec::new(),
        _bird: Vec::new(),
    };
    for i in 0..2 {
        bgp.start_lbd(i);
    }
    // The router first, so the balancers' first connect finds it.
    let router = bgp.bird(
        "router",
        &lab_addresses(&shipped("config/bgp/bird-router.conf")),
    );
    bgp._bird.push(router);
    for (i, host) in HOSTS.iter().enumerate() {
        let bird = substitute(
            &lab_addresses(&shipped("config/bgp/bird.conf")),
            "10.255.15.21",
            &addr(LB_ADDRS[i]).to_string(),
        );
        let daemon = bgp.bird(host, &bird);
        bgp._bird.push(daemon);
        let keepalived = shipped("config/bgp/keepalived.conf");
        let keepalived = substitute(
            &keepalived,
            "router_id lb1-bgp",
            &format!("router_id {host}-bgp"),
        );
        let keepalived = substitute(
            &keepalived,
            "virtual_router_id 61",
            &format!("virtual_router_id {}", 61 + i),
        );
        let keepalived = substitute(
            &lab_addresses(&keepalived),
            "\"/run/lbd/kube-apiserver.ready\"",
            &format!("\"{}\"", bgp.ready_file(i).display()),
        );
        let path = bgp
            .dir
            .write(&format!("keepalived-{host}.conf"), &keepalived);
        let mut command = bgp.lab.command(host, "keepalived");
        command
            .args(["--dont-fork", "--log-console", "--log-detail", "--vrrp"])
            .arg("--use-file")
            .arg(&path)
            .arg("--pid")
            .arg(bgp.dir.0.join(format!("keepalived-{host}.pid")))
            .arg("--vrrp_pid")
            .arg(bgp.dir.0.join(format!("vrrp-{host}.pid")));
        let daemon = Daemon::spawn(command, bgp.dir.0.join(format!("keepalived-{host}.log")));
        bgp._keepalived.push(daemon);
    }
    Some(bgp)
}

/// Waits for the route to lose `lost` after `t0`, then prints and checks
/// the withdraw time and the failed connections.
fn withdrawn(
    bgp: &Bgp,
    client: &ClientLoop,
    t0: Duration,
    remaining: &str,
    event: &str,
) -> Duration {
    let at = bgp.wait_hops(&[remaining], Duration::from_secs(10), client.started);
    let took = at.saturating_sub(t0);
    std::thread::sleep(Duration::from_secs(2));
    let failed = client.failed_between(t0, at + Duration::from_secs(1));
    let total = client
        .attempts()
        .iter()
        .filter(|a| a.at >= t0 && a.at < at + Duration::from_secs(1))
        .count();
    eprintln!(
        "MEASURED bgp | {event} | withdrawn after {:.2} s | {} of {} new connections failed",
        took.as_secs_f64(),
        failed.len(),
        total
    );
    assert!(
        took < Duration::from_secs(5),
        "the withdraw took {took:?} after {event}"
    );
    assert!(failed.len() <= 60, "{failed:?}");
    at
}

#[test]
fn bgp_announces_the_vip_only_while_lbd_is_ready_and_spreads_clients() {
    let Some(mut bgp) = start() else {
        return;
    };
    let started = Instant::now();
    bgp.wait_hops(&["lb1", "lb2"], Duration::from_secs(30), started);

    // ECMP: the clients' connections spread over both balancers.
    let before = [bgp.accepted(0), bgp.accepted(1)];
    let client = ClientLoop::start(
        &bgp.lab,
        "client",
        SocketAddr::from((addr(VIP), 6443)),
        started,
    );
    client.wait_success_after(Duration::ZERO, Duration::from_secs(10), "a client served");
    wait_until(
        Duration::from_secs(10),
        "both balancers to serve clients",
        || bgp.accepted(0) > before[0] + 3 && bgp.accepted(1) > before[1] + 3,
    );

    // Unready: lb1 loses its routes to every apiserver.
    let t0 = client.now();
    let ns = bgp.lab.ns("lb1");
    for last in API_ADDRS {
        netns::ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "unreachable",
            &format!("{}/32", addr(last)),
        ]);
    }
    wait_until(Duration::from_secs(10), "lb1's lbd to be unready", || {
        std::fs::read_to_string(bgp.ready_file(0)).unwrap_or_default() == "1\n"
    });
    let unready = client.now();
    let at = withdrawn(&bgp, &client, t0, "lb2", "lb1 loses every apiserver");
    eprintln!(
        "MEASURED bgp | lb1 loses every apiserver | lbd marked them down after {:.2} s, withdrawn {:.2} s later",
        unready.saturating_sub(t0).as_secs_f64(),
        at.saturating_sub(unready).as_secs_f64()
    );
    // Recovery: announced again.
    for last in API_ADDRS {
        netns::ip(&[
            "-n",
            &ns,
            "route",
            "del",
            "unreachable",
            &format!("{}/32", addr(last)),
        ]);
    }
    let t1 = client.now();
    let back = bgp.wait_hops(&["lb1", "lb2"], Duration::from_secs(15), started);
    eprintln!(
        "MEASURED bgp | lb1's apiservers reachable again | announced after {:.2} s",
        back.saturating_sub(t1).as_secs_f64()
    );

    // lbd stopped (SIGTERM): withdrawn as the drain begins.
    let t0 = client.now();
    bgp.lbd[0].as_ref().unwrap().signal(libc::SIGTERM);
    withdrawn(&bgp, &client, t0, "lb2", "lbd on lb1 stopped (SIGTERM)");
    bgp.lbd[0].take();
    bgp.start_lbd(0);
    bgp.wait_hops(&["lb1", "lb2"], Duration::from_secs(15), started);

    // lbd SIGKILLed: its guardian marks it not ready.
    let t0 = client.now();
    bgp.lbd[1].as_ref().unwrap().signal(libc::SIGKILL);
    withdrawn(&bgp, &client, t0, "lb1", "lbd on lb2 SIGKILLed");
    bgp.lbd[1].take();
    bgp.start_lbd(1);
    bgp.wait_hops(&["lb1", "lb2"], Duration::from_secs(15), started);

    // The host drops off the network (nothing on it says goodbye): BFD
    // notices, not the 3 s BGP hold time.
    let t0 = client.now();
    netns::ip(&["-n", &bgp.lab.ns("lb2"), "link", "set", "eth0", "down"]);
    withdrawn(&bgp, &client, t0, "lb1", "lb2 drops off the network (BFD)");
    drop(client);
}
