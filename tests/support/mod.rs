//! Helpers shared by the integration tests: the real `lbd` binary run as a
//! child process, backends on 127.0.0.1, and polling instead of sleeping.
#![allow(dead_code)]

pub mod apiserver;
pub mod blackhole;
pub mod browser;
mod echo_client;
pub mod faulty;
pub mod https;
pub mod kube_api;
pub mod metrics;
pub mod netns;
mod process;

// Each test binary uses some of these; the rest would warn as unused.
#[allow(unused_imports)]
pub use echo_client::EchoClient;
#[allow(unused_imports)]
pub use process::{Footprint, ProcStats, clock_ticks_per_second, limit_fds};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Polls `condition` every 10 ms until it holds or `within` passes.
pub fn wait_until(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "lbd-test-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Logged once every server of the first config has had its first check.
pub const FIRST_CHECKS_DONE: &str = "first health checks done";

/// The `lbd` binary running as a child process, its stderr collected.
pub struct Lbd {
    child: Child,
    pub dir: TempDir,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    listeners: usize,
}

impl Lbd {
    /// Starts `lbd --config` on `config` and waits until every listener is up.
    pub fn start(config: &str) -> Lbd {
        Lbd::start_with(config, |_| {})
    }

    /// Like [`Lbd::start`], letting the caller adjust the command (env, args).
    pub fn start_with(config: &str, adjust: impl FnOnce(&mut Command)) -> Lbd {
        Lbd::launch(
            config,
            TempDir::new("lbd"),
            Command::new(env!("CARGO_BIN_EXE_lbd")),
            adjust,
        )
    }

    /// Starts lbd as the last argument of `wrapper` (a program that execs
    /// it, such as `systemd-socket-activate -l ADDR`), without waiting for
    /// it to listen: see [`Lbd::wait_listening`].
    pub fn spawn_under(wrapper: &[&str], config: &str, adjust: impl FnOnce(&mut Command)) -> Lbd {
        let (program, args) = wrapper.split_first().expect("a wrapper program");
        let mut command = Command::new(program);
        command.args(args).arg(env!("CARGO_BIN_EXE_lbd"));
        Lbd::spawn(config, TempDir::new("lbd"), command, adjust)
    }

    /// Starts lbd in its own user and mount namespace where `/etc/hosts`
    /// reads `hosts` (and DNS goes to 127.0.0.1, where nothing answers), so a
    /// test controls what names resolve to, on loopback only. The file can
    /// be rewritten with [`Lbd::rewrite_hosts`]. `None` when the system does
    /// not allow unprivileged namespaces.
    pub fn start_with_hosts(config: &str, hosts: &str) -> Option<Lbd> {
        let probe = Command::new("unshare")
            .args(["-Urm", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            eprintln!("SKIPPED: `unshare -Urm` is not available here; cannot fake /etc/hosts");
            return None;
        }
        let dir = TempDir::new("lbd");
        let hosts_path = dir.write("hosts", hosts);
        let resolv_path = dir.write(
            "resolv.conf",
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        );
        let mut command = Command::new("unshare");
        command
            .args(["-Urm", "sh", "-c"])
            .arg("mount --bind \"$1\" /etc/hosts && mount --bind \"$2\" /etc/resolv.conf && shift 2 && exec \"$@\"")
            .arg("sh")
            .arg(&hosts_path)
            .arg(&resolv_path)
            .arg(env!("CARGO_BIN_EXE_lbd"));
        Some(Lbd::launch(config, dir, command, |_| {}))
    }

    /// Rewrites the hosts file of an lbd started with [`Lbd::start_with_hosts`]
    /// in place (the bind mount follows the file, not its name).
    pub fn rewrite_hosts(&self, hosts: &str) {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.dir.0.join("hosts"))
            .unwrap();
        file.write_all(hosts.as_bytes()).unwrap();
    }

    fn launch(
        config: &str,
        dir: TempDir,
        command: Command,
        adjust: impl FnOnce(&mut Command),
    ) -> Lbd {
        let mut lbd = Lbd::spawn(config, dir, command, adjust);
        lbd.wait_listening();
        lbd
    }

    fn spawn(
        config: &str,
        dir: TempDir,
        mut command: Command,
        adjust: impl FnOnce(&mut Command),
    ) -> Lbd {
        let config = with_admin_on_free_port(config);
        let config = config.as_str();
        let config_path = dir.write("lbd.toml", config);
        command
            .arg("--config")
            .arg(&config_path)
            .arg("--log-level")
            .arg("info,lbd=debug")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        adjust(&mut command);
        let mut child = command.spawn().expect("spawn lbd");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("LBD_TEST_LOGS").is_some() {
                    eprintln!("lbd: {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        // One "listening" line per frontend address (admin excluded).
        let listeners = config
            .lines()
            .filter(|l| l.trim_start().starts_with("listen = ["))
            .map(|l| l.matches(':').count().min(l.matches(',').count() + 1))
            .sum::<usize>()
            .max(1);
        Lbd {
            child,
            dir,
            config_path,
            logs,
            listeners,
        }
    }

    /// Waits until every frontend address is listening; panics with the
    /// logs if lbd exits first.
    pub fn wait_listening(&mut self) {
        let mut exited = None;
        // Listening, and every server's first health check done, so tests
        // see settled health rather than a mix of checked and unchecked.
        wait_until(Duration::from_secs(20), "lbd to listen", || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return true;
            }
            self.logs_matching(" listening frontend=").len() >= self.listeners
                && !self.logs_matching(FIRST_CHECKS_DONE).is_empty()
        });
        if let Some(status) = exited {
            panic!("lbd exited early ({status}):\n{}", self.logs().join("\n"));
        }
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Stderr lines containing `needle`.
    pub fn logs_matching(&self, needle: &str) -> Vec<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        let mut found = None;
        wait_until(within, &format!("a log line with {needle:?}"), || {
            found = self.logs_matching(needle).into_iter().next();
            found.is_some()
        });
        found.unwrap()
    }

    /// The address a frontend listens on (its first listener).
    pub fn addr(&self, frontend: &str) -> SocketAddr {
        self.addrs(frontend)[0]
    }

    /// Every address a frontend listens on, as logged at start.
    pub fn addrs(&self, frontend: &str) -> Vec<SocketAddr> {
        let tag = format!("frontend={frontend} ");
        self.logs_matching(" listening frontend=")
            .iter()
            .filter(|l| l.contains(&tag) || l.ends_with(&format!("frontend={frontend}")))
            .filter_map(|l| field(l, "address")?.parse().ok())
            .collect()
    }

    /// The admin API's address, as logged at start.
    pub fn admin_addr(&self) -> SocketAddr {
        let line = self.wait_for_log("admin API listening", Duration::from_secs(10));
        field(&line, "address").unwrap().parse().unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (libc::SIGTERM, SIGHUP…) to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Waits for the daemon to exit and returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut status = None;
        wait_until(within, "lbd to exit", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }

    /// Whether the daemon is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// `GET path` on the admin API: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.admin_addr(), "GET", path)
    }

    /// `POST path` on the admin API: (status, body).
    pub fn post(&self, path: &str) -> (u16, String) {
        http(self.admin_addr(), "POST", path)
    }

    /// The parsed `GET /metrics` (checked as OpenMetrics on the way).
    pub fn metrics(&self) -> Vec<metrics::Sample> {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "{body}");
        metrics::parse_openmetrics(&body)
    }

    /// The parsed `GET /api/v1/status`.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/api/v1/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Names of the servers of `backend` in the current status.
    pub fn server_names(&self, backend: &str) -> Vec<String> {
        self.status()["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["name"] == backend)
            .flat_map(|b| b["servers"].as_array().unwrap().clone())
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Runs `lbctl --admin ADDR args…` against this daemon.
    pub fn lbctl(&self, args: &[&str]) -> LbctlOutput {
        let admin = self.admin_addr().to_string();
        let mut full = vec!["--admin", admin.as_str()];
        full.extend_from_slice(args);
        lbctl(&full)
    }

    /// Rewrites the config file (for reload tests).
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config_path, with_admin_on_free_port(config)).unwrap();
    }
}

impl Drop for Lbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an `lbctl` run printed and how it exited.
#[derive(Debug)]
pub struct LbctlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `lbctl` binary with `args` (LBD_ADMIN unset unless `args` say so).
pub fn lbctl(args: &[&str]) -> LbctlOutput {
    lbctl_with(args, |_| {})
}

/// Like [`lbctl`], letting the caller adjust the command (env).
pub fn lbctl_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> LbctlOutput {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lbctl"));
    command
        .args(args)
        .env_remove("LBD_ADMIN")
        .stdin(Stdio::null());
    adjust(&mut command);
    let out = command.output().expect("run lbctl");
    LbctlOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A minimal HTTP/1.1 exchange (Connection: close): (status, body). Written
/// by hand so the tests do not share code with the server they check.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    let answer = http_raw(addr, request.as_bytes());
    parse_http_answer(&answer)
}

/// Sends raw bytes to an HTTP server and returns everything it answers.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Splits an HTTP/1.1 answer with a Content-Length body into (status, body).
pub fn parse_http_answer(answer: &str) -> (u16, String) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// Connects through lbd to a named backend and keeps the connection:
/// (the greeting, the stream).
pub fn hold(addr: SocketAddr) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut greeting = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        greeting.push(byte[0]);
    }
    (String::from_utf8(greeting).unwrap(), stream)
}

/// Sends `message` on a held connection and reads the echo back.
pub fn echo_round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(message)?;
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back)?;
    Ok(back)
}

/// Tests run in parallel: a config without `[admin]` would make every lbd
/// race for the default 127.0.0.1:8404, so give it a free port instead.
pub fn with_admin_on_free_port(config: &str) -> String {
    if config.lines().any(|l| l.trim() == "[admin]") {
        config.to_owned()
    } else {
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n{config}")
    }
}

/// The value of a `key=value` field in a log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    Some(
        rest.split_whitespace()
            .next()
            .unwrap_or(rest)
            .trim_matches('"'),
    )
}

/// A backend on 127.0.0.1: says its name on connect (if named), then echoes
/// everything back; half-close aware. Stops (listener closed, connections
/// reset) on [`Backend::stop`] or drop.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Set by [`Backend::blackhole`]: the listener stays open, unaccepted.
    frozen: Arc<std::sync::atomic::AtomicBool>,
    /// The accept thread's word that it saw `frozen` and accepts no more.
    frozen_seen: Mutex<std::sync::mpsc::Receiver<()>>,
    queued: Mutex<Vec<TcpStream>>,
    /// Live connections by accept number; each leaves when it ends, so a
    /// soak through a backend does not pile up descriptors in the test.
    connections: Arc<Mutex<std::collections::HashMap<usize, TcpStream>>>,
}

impl Backend {
    /// An echo server that first sends `"{name}\n"`.
    pub fn named(name: &str) -> Backend {
        Backend::spawn(
            name,
            true,
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        )
    }

    /// A pure echo server (nothing sent before the echo).
    pub fn echo() -> Backend {
        Backend::spawn(
            "echo",
            false,
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        )
    }

    /// A named backend on a given address (to bring a stopped one back).
    pub fn named_at(name: &str, addr: SocketAddr) -> Backend {
        let mut listener = None;
        wait_until(Duration::from_secs(5), "the port to be free again", || {
            listener = std::net::TcpListener::bind(addr).ok();
            listener.is_some()
        });
        Backend::spawn(name, true, listener.unwrap())
    }

    /// A named backend with a small accept queue, so that
    /// [`Backend::blackhole`] can turn it into one that drops SYNs.
    pub fn blackholable(name: &str) -> Backend {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(8).unwrap();
        Backend::spawn(name, true, socket.into())
    }

    /// Stops accepting (the listener stays open) and fills the accept queue:
    /// from now on dials time out, as if the network dropped the traffic.
    /// Connections already open keep working.
    pub fn blackhole(&self) {
        self.frozen.store(true, Ordering::Relaxed);
        // The accept thread must have stopped accepting before the queue
        // fills, or it would drain what we queue.
        self.frozen_seen
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(5))
            .expect("the accept thread stops accepting");
        *self.queued.lock().unwrap() = blackhole::fill_accept_queue(self.addr);
    }

    fn spawn(name: &str, greet: bool, listener: std::net::TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let (frozen_ack, frozen_seen) = std::sync::mpsc::channel();
        let (a, s, f, c, n) = (
            Arc::clone(&accepted),
            Arc::clone(&stop),
            Arc::clone(&frozen),
            Arc::clone(&connections),
            name.to_owned(),
        );
        std::thread::spawn(move || {
            let mut acknowledged = false;
            while !s.load(Ordering::Relaxed) {
                if f.load(Ordering::Relaxed) {
                    if !acknowledged {
                        acknowledged = true;
                        let _ = frozen_ack.send(());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let id = a.fetch_add(1, Ordering::Relaxed);
                        c.lock().unwrap().insert(id, stream.try_clone().unwrap());
                        let (n, c) = (n.clone(), Arc::clone(&c));
                        std::thread::spawn(move || {
                            echo(stream, greet.then_some(n));
                            c.lock().unwrap().remove(&id);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Backend {
            addr,
            name: name.to_owned(),
            accepted,
            stop,
            frozen,
            frozen_seen: Mutex::new(frozen_seen),
            queued: Mutex::new(Vec::new()),
            connections,
        }
    }

    /// Closes the listener (new dials are refused) and resets live connections.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, c) in self.connections.lock().unwrap().drain() {
            let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // The accept thread notices within a few ms and drops the listener.
        wait_until(
            Duration::from_secs(2),
            "the backend to stop listening",
            || TcpStream::connect(self.addr).is_err(),
        );
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn echo(mut stream: TcpStream, greeting: Option<String>) {
    if let Some(name) = greeting
        && stream.write_all(format!("{name}\n").as_bytes()).is_err()
    {
        return;
    }
    let mut buf = [0u8; 16384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Connects through lbd to a named backend and returns the name it greets with.
pub fn greeting(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&mut stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before the greeting",
        ));
    }
    Ok(line.trim_end().to_owned())
}

/// A port on 127.0.0.1 that was free a moment ago, for a listener lbd does
/// not bind itself (socket activation).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `command` to its end: how it exited and all it printed (stdout,
/// then stderr), for a checker that must say nothing when it is happy.
pub fn output_of(command: &mut Command) -> (ExitStatus, String) {
    let out = command.output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, said)
}

/// A config with one frontend on 127.0.0.1:0 in front of `backends`.
pub fn config_for(backends: &[&Backend], backend_extra: &str, frontend_extra: &str) -> String {
    let servers: String = backends
        .iter()
        .map(|b| format!("  {{ name = \"{}\", address = \"{}\" }},\n", b.name, b.addr))
        .collect();
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[frontend]]
name = "api"
listen = ["127.0.0.1:0"]
backend = "pool"
{frontend_extra}

[[backend]]
name = "pool"
{backend_extra}
servers = [
{servers}]
"#
    )
}
