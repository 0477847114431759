//! lbd as a systemd service, driven as systemd drives it: sockets handed over
//! by `systemd-socket-activate` (LISTEN_FDS), notifications read from a
//! datagram socket the test binds as NOTIFY_SOCKET, and the shipped unit
//! files checked by `systemd-analyze`.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Backend, Lbd, config_for, free_port, greeting, have, output_of, wait_until};

fn require(program: &str) {
    assert!(
        have(program),
        "{program} is not installed: `apt-get install systemd` (.ci/run does it when CI=true)"
    );
}

/// A config whose frontend `api` listens on `listen` (TOML array items).
fn config_listening(backends: &[&Backend], listen: &str) -> String {
    config_for(backends, "", "").replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [{listen}]"),
    )
}

/// Connects to `addr`, retrying while nothing listens there yet.
fn connect_when_listening(addr: SocketAddr) -> TcpStream {
    let mut stream = None;
    wait_until(Duration::from_secs(10), "the socket to listen", || {
        stream = TcpStream::connect(addr).ok();
        stream.is_some()
    });
    stream.unwrap()
}

fn read_greeting(stream: TcpStream) -> String {
    use std::io::BufRead;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .unwrap();
    line.trim_end().to_owned()
}

#[test]
fn a_connection_queued_before_lbd_starts_is_served_through_the_inherited_socket() {
    require("systemd-socket-activate");
    let cp1 = Backend::named("cp1");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = config_listening(&[&cp1], &format!("\"{addr}\""));
    // systemd-socket-activate listens first and execs lbd on the first
    // connection, like a socket unit: the client waits in the accept queue.
    let listen = format!("--listen={addr}");
    let mut lbd = Lbd::spawn_under(
        &["systemd-socket-activate", &listen, "--fdname=api"],
        &config,
        |_| {},
    );
    let queued = connect_when_listening(addr);
    assert_eq!(read_greeting(queued), "cp1");
    lbd.wait_listening();
    let inherited = lbd.wait_for_log("inherited from systemd", Duration::from_secs(5));
    assert!(
        inherited.contains("fd=3") && inherited.contains("name=api"),
        "{inherited}"
    );
    assert_eq!(greeting(addr).unwrap(), "cp1");

    // A reload keeps serving the inherited socket (nothing to rebind).
    lbd.signal(libc::SIGHUP);
    lbd.wait_for_log("config reloaded", Duration::from_secs(10));
    assert_eq!(greeting(addr).unwrap(), "cp1");
    assert!(
        lbd.logs_matching("stopped listening").is_empty(),
        "{:#?}",
        lbd.logs()
    );

    lbd.signal(libc::SIGTERM);
    assert!(lbd.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn an_unnamed_socket_is_matched_by_address_and_other_addresses_are_bound() {
    require("systemd-socket-activate");
    let cp1 = Backend::named("cp1");
    let inherited = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let bound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = config_listening(&[&cp1], &format!("\"{inherited}\", \"{bound}\""));
    let listen = format!("--listen={inherited}");
    let mut lbd = Lbd::spawn_under(&["systemd-socket-activate", &listen], &config, |_| {});
    let queued = connect_when_listening(inherited);
    assert_eq!(read_greeting(queued), "cp1");
    lbd.wait_listening();
    assert_eq!(greeting(bound).unwrap(), "cp1");
    let mut addrs = lbd.addrs("api");
    addrs.sort();
    let mut expected = vec![inherited, bound];
    expected.sort();
    assert_eq!(addrs, expected);
    assert_eq!(
        lbd.logs_matching("inherited from systemd").len(),
        1,
        "{:#?}",
        lbd.logs()
    );
}

#[test]
fn an_inherited_socket_no_frontend_claims_stops_the_start_and_is_named() {
    require("systemd-socket-activate");
    let cp1 = Backend::named("cp1");
    let stray = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = config_for(&[&cp1], "", "");
    let listen = format!("--listen={stray}");
    let mut lbd = Lbd::spawn_under(
        &["systemd-socket-activate", &listen, "--fdname=stray"],
        &config,
        |_| {},
    );
    let _queued = connect_when_listening(stray);
    let status = lbd.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let error = lbd.wait_for_log("socket activation", Duration::from_secs(5));
    assert!(
        error.contains(&format!("fd 3 (\"stray\", {stray})"))
            && error.contains("FileDescriptorName="),
        "{error}"
    );
}

/// The datagram socket a test binds as NOTIFY_SOCKET, collecting what lbd sends.
struct NotifySocket {
    messages: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind(socket: UnixDatagram) -> NotifySocket {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends when the test drops its side (the Arc has one owner left).
            while Arc::strong_count(&sink) > 1 {
                if let Ok(n) = socket.recv(&mut buf) {
                    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().unwrap().push(message);
                }
            }
        });
        NotifySocket { messages }
    }

    fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// The lifecycle assignments in order (READY, RELOADING, STOPPING),
    /// without watchdog pings and status lines.
    fn states(&self) -> Vec<String> {
        self.messages()
            .iter()
            .flat_map(|m| m.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter(|l| {
                ["READY=", "RELOADING=", "STOPPING="]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .collect()
    }

    fn wait_for(&self, what: &str, mut condition: impl FnMut(&[String]) -> bool) {
        wait_until(Duration::from_secs(20), what, || {
            condition(&self.messages())
        });
    }
}

#[test]
fn ready_reloading_ready_stopping_watchdog_and_status_reach_notify_socket() {
    let dir = support::TempDir::new("notify");
    let path = dir.0.join("notify.sock");
    let notify = NotifySocket::bind(UnixDatagram::bind(&path).unwrap());
    let cp1 = Backend::named("cp1");
    let mut lbd = Lbd::start_with(&config_for(&[&cp1], "", ""), |command| {
        command
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "200000");
    });
    notify.wait_for("READY=1", |m| m.iter().any(|m| m == "READY=1"));
    // READY=1 waits for the first round of health checks (same log stream,
    // so the order of the two lines is the order of the events).
    lbd.wait_for_log("told systemd READY=1", Duration::from_secs(5));
    let logs = lbd.logs();
    let position = |needle: &str| {
        logs.iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?}: {logs:#?}"))
    };
    assert!(
        position(support::FIRST_CHECKS_DONE) < position("told systemd READY=1"),
        "{logs:#?}"
    );
    notify.wait_for("two watchdog pings", |m| {
        m.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2
    });
    let statuses: Vec<String> = notify
        .messages()
        .into_iter()
        .filter(|m| m.starts_with("STATUS="))
        .collect();
    assert_eq!(
        statuses.first().map(String::as_str),
        Some("STATUS=starting: first health checks")
    );
    // The one server answers its check: up by the time READY=1 is sent.
    assert_eq!(
        statuses.get(1).map(String::as_str),
        Some("STATUS=1/1 servers up, 0 connections"),
        "{statuses:?}"
    );
    assert!(
        lbd.logs_matching("watchdog")
            .iter()
            .any(|l| l.contains("100ms")),
        "{:#?}",
        lbd.logs()
    );

    // SIGHUP (systemctl reload): RELOADING=1 with the monotonic clock, then READY=1.
    lbd.signal(libc::SIGHUP);
    notify.wait_for("READY=1 after the reload", |_| {
        notify.states() == ["READY=1", "RELOADING=1", "READY=1"]
    });
    let reloading = notify
        .messages()
        .into_iter()
        .find(|m| m.starts_with("RELOADING=1"))
        .unwrap();
    let usec = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|n| n.parse::<u64>().ok());
    assert!(usec.is_some_and(|n| n > 0), "{reloading:?}");
    lbd.wait_for_log("config reloaded", Duration::from_secs(5));

    lbd.signal(libc::SIGTERM);
    assert!(lbd.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(
        notify.states(),
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    );
}

#[test]
fn a_reload_during_the_drain_is_refused_and_stopping_is_the_last_word() {
    let dir = support::TempDir::new("notify-drain");
    let path = dir.0.join("notify.sock");
    let notify = NotifySocket::bind(UnixDatagram::bind(&path).unwrap());
    let cp1 = Backend::named("cp1");
    let draining = config_for(&[&cp1], "", "") + "\n[global]\ndrain_timeout = \"30s\"\n";
    let mut lbd = Lbd::start_with(&draining, |command| {
        command.env("NOTIFY_SOCKET", &path);
    });
    notify.wait_for("READY=1", |m| m.iter().any(|m| m == "READY=1"));
    let (_, mut held) = support::hold(lbd.addr("api"));

    lbd.signal(libc::SIGTERM);
    lbd.wait_for_log("draining connections", Duration::from_secs(10));
    // The admin API still answers during the drain; a reload adding a
    // listener must not open it.
    let added = SocketAddr::from(([127, 0, 0, 1], free_port()));
    lbd.rewrite_config(&draining.replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"127.0.0.1:0\", \"{added}\"]"),
    ));
    let (code, body) = lbd.post("/api/v1/reload");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    lbd.signal(libc::SIGHUP);
    lbd.wait_for_log(
        "SIGHUP ignored: lbd is shutting down",
        Duration::from_secs(10),
    );
    assert!(
        TcpStream::connect(added).is_err(),
        "a reload during the drain opened {added}"
    );
    assert_eq!(lbd.addrs("api").len(), 1, "{:#?}", lbd.logs());
    assert_eq!(
        support::echo_round_trip(&mut held, b"still draining").unwrap(),
        b"still draining"
    );

    drop(held);
    assert!(lbd.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(notify.states(), ["READY=1", "STOPPING=1"]);
}

#[test]
fn an_abstract_notify_socket_hears_ready() {
    let name = format!("lbd-test-notify-{}", std::process::id());
    let socket =
        UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let notify = NotifySocket::bind(socket);
    let cp1 = Backend::named("cp1");
    let _lbd = Lbd::start_with(&config_for(&[&cp1], "", ""), |command| {
        command.env("NOTIFY_SOCKET", format!("@{name}"));
    });
    notify.wait_for("READY=1", |m| m.iter().any(|m| m == "READY=1"));
    assert!(
        !notify.messages().iter().any(|m| m == "WATCHDOG=1"),
        "no WATCHDOG_USEC, no pings"
    );
}

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs systemd/install.sh with `env`, returning its stdout; panics with
/// its output if it fails.
fn install(env: &[(&str, &std::path::Path)]) -> String {
    let binaries = std::path::Path::new(env!("CARGO_BIN_EXE_lbd"))
        .parent()
        .unwrap();
    let mut command = std::process::Command::new("sh");
    command
        .arg(repo_file("systemd/install.sh"))
        .env("LBD_BINARIES", binaries)
        .env("CREATE_USER", "no")
        .env_remove("DESTDIR");
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "install.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn installed_units_pass_systemd_analyze_verify() {
    require("systemd-analyze");
    // verify wants ExecStart's binary to exist: install for real into a
    // temporary prefix, so the units name binaries that are there.
    let root = support::TempDir::new("prefix");
    let (prefix, etc) = (root.0.join("usr"), root.0.join("etc"));
    install(&[("PREFIX", &prefix), ("SYSCONFDIR", &etc)]);
    let units = prefix.join("lib/systemd/system");
    let service = std::fs::read_to_string(units.join("lbd.service")).unwrap();
    assert!(
        service.contains(&format!(
            "ExecStart={}/bin/lbd --config {}/lbd/lbd.toml",
            prefix.display(),
            etc.display()
        )),
        "{service}"
    );
    let (status, said) = output_of(
        std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(units.join("lbd.service"))
            .arg(units.join("lbd.socket")),
    );
    // verify exits 0 on unknown keys too, but says so: it must say nothing.
    assert!(status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_service_scores_at_most_2_in_systemd_analyze_security() {
    require("systemd-analyze");
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(repo_file("systemd/lbd.service"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no score in:\n{report}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{report}");
}

#[test]
fn install_stages_into_destdir_and_keeps_an_existing_config() {
    let root = support::TempDir::new("destdir");
    let said = install(&[
        ("DESTDIR", &root.0),
        ("PREFIX", std::path::Path::new("/usr")),
    ]);
    let file = |path: &str| root.0.join(path);
    for path in [
        "usr/bin/lbd",
        "usr/bin/lbctl",
        "usr/lib/systemd/system/lbd.socket",
        "usr/lib/sysusers.d/lbd.conf",
        "usr/share/man/man8/lbd.8",
        "usr/share/man/man8/lbctl.8",
        "usr/share/bash-completion/completions/lbctl",
        "usr/share/zsh/site-functions/_lbd",
        "usr/share/fish/vendor_completions.d/lbd.fish",
        "usr/share/doc/lbd/examples/keepalived/keepalived.conf",
        "usr/share/doc/lbd/examples/static-pod/lbd.yaml",
    ] {
        assert!(
            file(path).is_file(),
            "{path} missing after install:\n{said}"
        );
    }
    let service = std::fs::read_to_string(file("usr/lib/systemd/system/lbd.service")).unwrap();
    assert!(
        service.contains("ExecStart=/usr/bin/lbd --config /etc/lbd/lbd.toml"),
        "{service}"
    );
    let man = std::fs::read_to_string(file("usr/share/man/man8/lbd.8")).unwrap();
    assert!(
        man.contains("\\-\\-config") || man.contains("--config"),
        "{man}"
    );
    let users = std::fs::read_to_string(file("usr/lib/sysusers.d/lbd.conf")).unwrap();
    assert!(users.lines().any(|l| l.starts_with("u lbd ")), "{users}");
    let config = file("etc/lbd/lbd.toml");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        std::fs::read_to_string(repo_file("config/lbd.toml")).unwrap()
    );

    std::fs::write(&config, "# edited by the operator\n").unwrap();
    let said = install(&[
        ("DESTDIR", &root.0),
        ("PREFIX", std::path::Path::new("/usr")),
    ]);
    assert!(said.contains("kept the existing"), "{said}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# edited by the operator\n"
    );
}
