//! The keepalived pair shipped in config/keepalived: keepalived's own config
//! check accepts it, its tracks agree with config/lbd.toml, and `lbctl
//! ready --frontend` (the manual check the docs give) answers as the VIP
//! needs. tests/failover.rs runs the pair for real.

mod support;

use std::path::Path;
use std::process::Command;

use std::time::Duration;

use support::{Backend, Lbd, TempDir, config_for, have, lbctl, output_of, wait_until};

const SHIPPED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/config/keepalived/keepalived.conf"
);

/// A network interface keepalived can run VRRP on (not loopback), preferring
/// one that is up.
fn vrrp_interface() -> String {
    let mut candidates: Vec<(bool, String)> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "lo")
        .map(|name| {
            let state = std::fs::read_to_string(format!("/sys/class/net/{name}/operstate"))
                .unwrap_or_default();
            (state.trim() != "up", name)
        })
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .next()
        .map(|(_, name)| name)
        .expect("a non-loopback network interface for keepalived -t")
}

/// Replaces `from` (which must occur) with `to` in `text`.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{SHIPPED} no longer contains {from:?}");
    text.replace(from, to)
}

/// Runs `keepalived -t` on a copy of the shipped `path` that names this
/// machine's interface (keepalived rejects one it cannot find).
fn keepalived_accepts(path: &str) {
    assert!(
        have("keepalived"),
        "keepalived is not installed: `apt-get install keepalived` (.ci/run does it when CI=true)"
    );
    // keepalived -t exits 0 for a missing file: make sure it is there.
    let shipped = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let local = substitute(
        &shipped,
        "interface eth0 ",
        &format!("interface {} ", vrrp_interface()),
    );
    let dir = TempDir::new("keepalived");
    let copy = dir.write("keepalived.conf", &local);
    assert!(Path::new(&copy).is_file());

    let (status, said) = output_of(
        Command::new("keepalived")
            .args(["--config-test", "--use-file"])
            .arg(&copy),
    );
    assert!(
        status.success() && said.trim().is_empty(),
        "keepalived -t rejects {path} ({status}):\n{said}\n--- tested copy ---\n{local}"
    );
}

#[test]
fn keepalived_accepts_the_shipped_pair_config() {
    keepalived_accepts(SHIPPED);
}

#[test]
fn keepalived_and_bird_accept_the_shipped_bgp_configs() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config/bgp");
    keepalived_accepts(&format!("{dir}/keepalived.conf"));
    assert!(
        have("bird"),
        "BIRD 2 is not installed: `apt-get install bird2` (.ci/run does it when CI=true)"
    );
    for file in ["bird.conf", "bird-router.conf"] {
        let (status, said) = output_of(
            Command::new("bird")
                .arg("-p")
                .arg("-c")
                .arg(format!("{dir}/{file}")),
        );
        assert!(
            status.success(),
            "bird -p rejects config/bgp/{file}:\n{said}"
        );
    }
}

/// Runs `lbctl ready --frontend kube-apiserver`, the check the docs give
/// for a keepalived `vrrp_script` (LBD_ADMIN names the daemon).
fn vrrp_check(admin: &str) -> i32 {
    Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["ready", "--frontend", "kube-apiserver"])
        .env("LBD_ADMIN", admin)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
        .status
        .code()
        .unwrap_or(-1)
}

/// The values of every `key N` line in the shipped config.
fn shipped_numbers(key: &str) -> Vec<i64> {
    let shipped = std::fs::read_to_string(SHIPPED).expect("config/keepalived/keepalived.conf");
    let numbers: Vec<i64> = shipped
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix(&format!("{key} ")))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(!numbers.is_empty(), "{SHIPPED} has no `{key} N` line");
    numbers
}

#[test]
fn a_failing_check_lowers_the_priority_below_a_healthy_peer_instead_of_dropping_the_vip() {
    let shipped = std::fs::read_to_string(SHIPPED).expect("config/keepalived/keepalived.conf");
    // Without a weight, one failed track puts the host in FAULT: when both
    // fail (bootstrap, control plane down) neither holds the VIP.
    let weights = shipped_numbers("weight");
    assert_eq!(weights.len(), 2, "the ready file and lbd's process");
    let priority = shipped_numbers("priority")[0];
    // Both hosts have this priority (README.md): a failing holder must fall
    // strictly below a healthy peer, and stay a valid VRRP priority.
    for weight in weights {
        assert!(weight < 0, "every track needs a negative weight");
        assert!(
            priority + weight >= 1 && priority + weight < priority,
            "priority {priority} with weight {weight}"
        );
    }
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/keepalived/README.md"
    ))
    .unwrap();
    assert!(
        readme.contains(&format!("`priority {priority}`")),
        "README.md must keep both hosts at priority {priority}"
    );
    // nopreempt would keep a healthy backup from taking the VIP from a
    // holder whose priority dropped.
    assert!(
        !shipped
            .lines()
            .any(|l| l.split('#').next().unwrap().trim() == "nopreempt"),
        "nopreempt defeats the weight"
    );
    // keepalived tracks the very file lbd writes.
    let lbd_toml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/lbd.toml")).unwrap();
    let ready_file = lbd_toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("ready_file = "))
        .expect("config/lbd.toml sets the kube-apiserver frontend's ready_file");
    assert!(
        shipped.contains(&format!("file {ready_file}\n")),
        "keepalived.conf must track {ready_file}"
    );
}

#[test]
fn lbctl_ready_for_the_apiserver_frontend_passes_only_while_lbd_can_forward() {
    let cp1 = Backend::named("cp1");
    // A second frontend whose only server is dead: its trouble must not
    // move the apiserver's VIP.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let config = config_for(&[&cp1], "", "").replace("name = \"api\"", "name = \"kube-apiserver\"")
        + "[backend.health]\ninterval = \"200ms\"\nfast_interval = \"100ms\"\nfall = 2\nrise = 1\n"
        + &format!(
            "\n[[frontend]]\nname = \"konnectivity\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"other\"\n\n\
             [[backend]]\nname = \"other\"\nservers = [{{ name = \"gone\", address = \"{dead_addr}\" }}]\n"
        );
    let mut lbd = Lbd::start(&config);
    let admin = lbd.admin_addr().to_string();
    wait_until(Duration::from_secs(10), "the check to pass", || {
        vrrp_check(&admin) == 0
    });
    let everything = lbctl(&["--admin", &admin, "ready"]);
    assert_eq!(everything.code, 1, "{everything:?}");
    assert!(
        everything.stderr.contains("frontend konnectivity"),
        "{everything:?}"
    );
    let typo = lbctl(&["--admin", &admin, "ready", "--frontend", "kube-apiservr"]);
    assert_eq!(typo.code, 1, "{typo:?}");
    assert!(
        typo.stderr.contains("no frontend \"kube-apiservr\""),
        "{typo:?}"
    );

    // The only apiserver dies: health checks take it down, and keepalived
    // must give the VIP up; it comes back, and so does the check.
    let addr = cp1.addr;
    cp1.stop();
    wait_until(Duration::from_secs(10), "the check to fail", || {
        vrrp_check(&admin) != 0
    });
    let cp1 = Backend::named_at("cp1", addr);
    wait_until(Duration::from_secs(10), "the check to pass again", || {
        vrrp_check(&admin) == 0
    });

    // An operator takes the last server out: no server to forward to either.
    let disabled = lbctl(&["--admin", &admin, "disable", "pool/cp1"]);
    assert_eq!(disabled.code, 0, "{}", disabled.stderr);
    assert_ne!(vrrp_check(&admin), 0);
    assert_eq!(lbctl(&["--admin", &admin, "enable", "pool/cp1"]).code, 0);
    wait_until(
        Duration::from_secs(10),
        "the check to pass once enabled",
        || vrrp_check(&admin) == 0,
    );
    drop(cp1);

    // lbd gone: the check fails too.
    lbd.signal(libc::SIGTERM);
    assert!(lbd.wait_exit(Duration::from_secs(10)).success());
    assert_ne!(vrrp_check(&admin), 0);
}

#[test]
fn the_keepalived_drop_in_restarts_a_dead_keepalived_after_lbd_started() {
    let drop_in = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/keepalived/restart.conf"
    ))
    .unwrap();
    let lines: Vec<&str> = drop_in
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect();
    // A killed keepalived leaves the VIP behind: it must come back and
    // remove it. And it tracks a file lbd creates: start it after lbd.
    let service = lines.iter().position(|l| *l == "[Service]").unwrap();
    assert!(
        lines[service..].contains(&"Restart=on-failure"),
        "{drop_in}"
    );
    let unit = lines.iter().position(|l| *l == "[Unit]").unwrap();
    assert!(
        lines[unit..service].contains(&"After=lbd.service"),
        "{drop_in}"
    );
}
