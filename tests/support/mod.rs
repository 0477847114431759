//! Helpers shared by the integration tests: the real `lbd` binary run as a
//! child process, backends on 127.0.0.1, and polling instead of sleeping.
#![allow(dead_code)]

pub mod blackhole;
pub mod faulty;

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
        wait_until(Duration::from_secs(20), "lbd to listen", || {
            if let Ok(Some(status)) = lbd.child.try_wait() {
                exited = Some(status);
                return true;
            }
            lbd.logs_matching(" listening frontend=").len() >= expected
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

    fn spawn(name: &str, greet: bool, listener: std::net::TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (a, s, c, n) = (
            Arc::clone(&accepted),
            Arc::clone(&stop),
            Arc::clone(&connections),
            name.to_owned(),
        );
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
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

/// What `/proc` says about a process: open fds, resident memory, threads,
/// CPU time. Leak checks compare these before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStats {
    /// Entries in /proc/PID/fd.
    pub fds: usize,
    /// VmRSS in KiB.
    pub rss_kib: u64,
    /// Threads of the process.
    pub threads: u64,
    /// User + system CPU time in clock ticks (utime + stime of /proc/PID/stat).
    pub cpu_ticks: u64,
}

impl ProcStats {
    /// Reads the stats of `pid`.
    pub fn of(pid: i32) -> ProcStats {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let cpu_ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ProcStats {
            fds,
            rss_kib: kib("VmRSS:"),
            threads: kib("Threads:"),
            cpu_ticks,
        }
    }
}

/// Clock ticks per second, to turn [`ProcStats::cpu_ticks`] into time.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100)
}

impl Lbd {
    /// `/proc` stats of the daemon.
    pub fn stats(&self) -> ProcStats {
        ProcStats::of(self.pid())
    }
}

/// A client that keeps a connection busy: it sends a numbered 1 KiB chunk,
/// checks the echo byte for byte, and repeats until stopped or broken. Used
/// to watch live connections through faults, reloads and shutdowns.
pub struct EchoClient {
    /// The backend's greeting (its name), read first.
    pub server: String,
    rounds: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl EchoClient {
    /// Connects to `addr` (a frontend in front of greeting echo backends)
    /// and starts echoing with `pause` between rounds.
    pub fn start(addr: SocketAddr, pause: Duration) -> std::io::Result<EchoClient> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut server = String::new();
        reader.read_line(&mut server)?;
        if server.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let rounds = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, s) = (Arc::clone(&rounds), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut sent = vec![0u8; 1024];
            let mut got = vec![0u8; 1024];
            let mut round: u64 = 0;
            while !s.load(Ordering::Relaxed) {
                for (i, b) in sent.iter_mut().enumerate() {
                    *b = (round.wrapping_mul(31) as usize + i) as u8;
                }
                stream.write_all(&sent)?;
                reader.read_exact(&mut got)?;
                if got != sent {
                    return Err(std::io::Error::other(format!(
                        "round {round}: echoed bytes differ"
                    )));
                }
                round += 1;
                r.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(pause);
            }
            Ok(())
        });
        Ok(EchoClient {
            server: server.trim_end().to_owned(),
            rounds,
            stop,
            thread: Some(thread),
        })
    }

    /// Rounds echoed correctly so far.
    pub fn rounds(&self) -> usize {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Whether the echo loop has ended (by error; stopping is [`EchoClient::finish`]).
    pub fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the loop and returns how it went: `Ok` if every round echoed
    /// correctly until stopped, or the error that broke it.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for EchoClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Lowers RLIMIT_NOFILE (soft and hard) of the child about to be spawned.
pub fn limit_fds(command: &mut Command, fds: u64) {
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setrlimit, which is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            let limit = libc::rlimit {
                rlim_cur: fds,
                rlim_max: fds,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}
