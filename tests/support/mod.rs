//! Helpers shared by the integration tests: the real `lbd` binary run as a
//! child process, backends on 127.0.0.1, and polling instead of sleeping.
#![allow(dead_code)]

pub mod blackhole;
pub mod https;

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
}

impl Lbd {
    /// Starts `lbd --config` on `config` and waits until every listener is up.
    pub fn start(config: &str) -> Lbd {
        Lbd::start_with(config, |_| {})
    }

    /// Like [`Lbd::start`], letting the caller adjust the command (env, args).
    pub fn start_with(config: &str, adjust: impl FnOnce(&mut Command)) -> Lbd {
        let dir = TempDir::new("lbd");
        let config_path = dir.write("lbd.toml", config);
        let mut command = Command::new(env!("CARGO_BIN_EXE_lbd"));
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
        let expected = config
            .lines()
            .filter(|l| l.trim_start().starts_with("listen = ["))
            .map(|l| l.matches(':').count().min(l.matches(',').count() + 1))
            .sum::<usize>()
            .max(1);
        let mut lbd = Lbd {
            child,
            dir,
            config_path,
            logs,
        };
        let mut exited = None;
        // Listening, and every server's first health check done, so tests
        // see settled health rather than a mix of checked and unchecked.
        wait_until(Duration::from_secs(20), "lbd to listen", || {
            if let Ok(Some(status)) = lbd.child.try_wait() {
                exited = Some(status);
                return true;
            }
            lbd.logs_matching(" listening frontend=").len() >= expected
                && !lbd.logs_matching(FIRST_CHECKS_DONE).is_empty()
        });
        if let Some(status) = exited {
            panic!("lbd exited early ({status}):\n{}", lbd.logs().join("\n"));
        }
        lbd
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

    /// Rewrites the config file (for reload tests).
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config_path, config).unwrap();
    }
}

impl Drop for Lbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    queued: Mutex<Vec<TcpStream>>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
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
        // Let the accept thread see the flag before the queue fills.
        std::thread::sleep(Duration::from_millis(20));
        *self.queued.lock().unwrap() = blackhole::fill_accept_queue(self.addr);
    }

    fn spawn(name: &str, greet: bool, listener: std::net::TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (a, s, f, c, n) = (
            Arc::clone(&accepted),
            Arc::clone(&stop),
            Arc::clone(&frozen),
            Arc::clone(&connections),
            name.to_owned(),
        );
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if f.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        a.fetch_add(1, Ordering::Relaxed);
                        c.lock().unwrap().push(stream.try_clone().unwrap());
                        let n = n.clone();
                        std::thread::spawn(move || echo(stream, greet.then_some(n)));
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
            queued: Mutex::new(Vec::new()),
            connections,
        }
    }

    /// Closes the listener (new dials are refused) and resets live connections.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.connections.lock().unwrap().drain(..) {
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
