//! A small lab of network namespaces for failover tests (root only): one
//! "switch" namespace holding a bridge, and hosts plugged into it by veth
//! pairs, each host with one `eth0` on a private test subnet that exists
//! only inside these namespaces. Nothing is added to the machine's own
//! network namespace; dropping the [`Lab`] deletes every namespace, and
//! with them every interface, address and process socket in them.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The test subnet: 10.255.15.0/24, inside the lab's namespaces only.
pub fn addr(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 255, 15, host)
}

/// Why these tests cannot run here, if they cannot: not root, or a tool missing.
pub fn unavailable(tools: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to create network namespaces (CI runs as root)".into());
    }
    for tool in tools {
        if !super::have(tool) {
            return Some(format!(
                "{tool} is not installed (.ci/run installs it when CI=true)"
            ));
        }
    }
    None
}

/// Runs `ip` with `args`, panicking with its output if it fails.
pub fn ip(args: &[&str]) {
    run("ip", args);
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces of one test.
pub struct Lab {
    prefix: String,
    hosts: Mutex<Vec<String>>,
}

impl Lab {
    /// A switch namespace with a bridge; `tag` keeps parallel tests apart.
    pub fn new(tag: &str) -> Lab {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "lbdt-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            prefix,
            hosts: Mutex::new(Vec::new()),
        };
        let sw = lab.ns("sw");
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "set", "lo", "up"]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        lab
    }

    /// The namespace name of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Adds `host` with `eth0` on the bridge and the given addresses (/24).
    pub fn host(&self, host: &str, addrs: &[Ipv4Addr]) {
        self.host_on("br0", host, addrs);
    }

    /// Adds `host` with `eth0` on `bridge` and the given addresses (/24).
    pub fn host_on(&self, bridge: &str, host: &str, addrs: &[Ipv4Addr]) {
        let ns = self.ns(host);
        ip(&["netns", "add", &ns]);
        self.hosts.lock().unwrap().push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.attach(host, bridge, "eth0", addrs);
    }

    /// Adds a second bridge (a second LAN) to the switch.
    pub fn bridge(&self, bridge: &str) {
        let sw = self.ns("sw");
        ip(&["-n", &sw, "link", "add", bridge, "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", bridge, "up"]);
    }

    /// Plugs `host` into `bridge` through a new interface `iface` with the
    /// given addresses (/24).
    pub fn attach(&self, host: &str, bridge: &str, iface: &str, addrs: &[Ipv4Addr]) {
        let ns = self.ns(host);
        let sw = self.ns("sw");
        let port = if iface == "eth0" {
            format!("p-{host}")
        } else {
            format!("p-{host}-{iface}")
        };
        ip(&[
            "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", iface, "netns", &ns,
        ]);
        ip(&["-n", &sw, "link", "set", &port, "master", bridge, "up"]);
        for a in addrs {
            ip(&["-n", &ns, "addr", "add", &format!("{a}/24"), "dev", iface]);
        }
        ip(&["-n", &ns, "link", "set", iface, "up"]);
    }

    /// Cuts `a` and `b` off from each other while both still reach every
    /// other host (bridge port isolation), or heals that.
    pub fn isolate(&self, hosts: &[&str], on: bool) {
        let sw = self.ns("sw");
        for host in hosts {
            run(
                "bridge",
                &[
                    "-n",
                    &sw,
                    "link",
                    "set",
                    "dev",
                    &format!("p-{host}"),
                    "isolated",
                    if on { "on" } else { "off" },
                ],
            );
        }
    }

    /// Runs `f` on a thread inside `host`'s namespace: sockets it creates
    /// live there (threads it spawns start there too).
    pub fn within<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let path = format!("/run/netns/{}", self.ns(host));
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("the thread in the namespace panicked")
    }

    /// Spawns `f` on a thread inside `host`'s namespace.
    pub fn spawn_within(
        &self,
        host: &str,
        f: impl FnOnce() + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let path = format!("/run/netns/{}", self.ns(host));
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    /// A command that runs `program` inside `host`'s namespace.
    pub fn command(&self, host: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(host), program]);
        command
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: setns on a namespace file we hold open; it affects only the
    // calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.hosts.lock().unwrap().drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns("sw")])
            .status();
    }
}

/// A child process (keepalived, bird) in its own process group, its output
/// in a file; killed with its whole group on drop.
pub struct Daemon {
    child: Child,
    pub log: std::path::PathBuf,
}

impl Daemon {
    /// Spawns `command` with stdout and stderr going to `log`.
    pub fn spawn(mut command: Command, log: std::path::PathBuf) -> Daemon {
        use std::os::unix::process::CommandExt;
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("spawn a daemon");
        Daemon { child, log }
    }

    /// SIGKILLs the whole process group, as an OOM kill or a crash of every
    /// process would: nothing gets to clean up.
    pub fn kill_group(&mut self) {
        // SAFETY: kill(2) on the group we created for our own child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// The log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: as in kill_group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill_group();
    }
}

/// One client attempt: when it started (since the loop began) and whether
/// it got a server's greeting.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: Duration,
    pub ok: bool,
    pub detail: String,
}

/// A client in its own namespace opening a new connection to `target`
/// every 50 ms, each on its own thread, recording every outcome.
pub struct ClientLoop {
    pub started: Instant,
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClientLoop {
    /// Starts the loop inside `host`; an attempt fails without a greeting
    /// line within a second.
    pub fn start(lab: &Lab, host: &str, target: SocketAddr, started: Instant) -> ClientLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&attempts));
        let thread = lab.spawn_within(host, move || {
            let mut workers = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let a = Arc::clone(&a);
                workers.push(std::thread::spawn(move || {
                    let at = started.elapsed();
                    let (ok, detail) = match greeting(target) {
                        Ok(name) => (true, name),
                        Err(e) => (false, e.kind().to_string()),
                    };
                    a.lock().unwrap().push(Attempt { at, ok, detail });
                }));
                std::thread::sleep(Duration::from_millis(50));
            }
            for w in workers {
                let _ = w.join();
            }
        });
        ClientLoop {
            started,
            stop,
            attempts,
            thread: Some(thread),
        }
    }

    /// Every attempt that has finished, by start time.
    pub fn attempts(&self) -> Vec<Attempt> {
        let mut all = self.attempts.lock().unwrap().clone();
        all.sort_by_key(|a| a.at);
        all
    }

    /// Attempts started in `[from, to)` (since the loop began) that failed.
    pub fn failed_between(&self, from: Duration, to: Duration) -> Vec<Attempt> {
        self.attempts()
            .into_iter()
            .filter(|a| a.at >= from && a.at < to && !a.ok)
            .collect()
    }

    /// Time since the loop began.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until an attempt started after `after` succeeded.
    pub fn wait_success_after(&self, after: Duration, within: Duration, what: &str) {
        super::wait_until(within, what, || {
            self.attempts().iter().any(|a| a.at > after && a.ok)
        });
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects, reads the greeting line: a connection a server answered.
fn greeting(target: SocketAddr) -> std::io::Result<String> {
    use std::io::Read;
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the greeting",
                ));
            }
            _ if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            _ => line.push(byte[0]),
        }
    }
}

/// Watches which hosts hold `vip`, every 5 ms, from threads inside their
/// namespaces: an address can be bound only where it is local.
pub struct VipWatch {
    started: Instant,
    stop: Arc<AtomicBool>,
    /// Per host: (since start, holds) at every change.
    changes: Arc<Mutex<Vec<(usize, Duration, bool)>>>,
    holding: Arc<Vec<AtomicBool>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    hosts: Vec<String>,
}

impl VipWatch {
    /// Starts watching `hosts`, timed from `started`.
    pub fn start(lab: &Lab, hosts: &[&str], vip: Ipv4Addr, started: Instant) -> VipWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(Mutex::new(Vec::new()));
        let holding = Arc::new(
            hosts
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect::<Vec<_>>(),
        );
        let threads = hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let (s, c, h) = (
                    Arc::clone(&stop),
                    Arc::clone(&changes),
                    Arc::clone(&holding),
                );
                lab.spawn_within(host, move || {
                    let mut last = None;
                    while !s.load(Ordering::Relaxed) {
                        let holds = std::net::UdpSocket::bind(SocketAddr::from((vip, 0))).is_ok();
                        if last != Some(holds) {
                            h[i].store(holds, Ordering::SeqCst);
                            c.lock().unwrap().push((i, started.elapsed(), holds));
                            last = Some(holds);
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        VipWatch {
            started,
            stop,
            changes,
            holding,
            threads,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    /// The hosts holding the VIP now.
    pub fn holders(&self) -> Vec<String> {
        self.hosts
            .iter()
            .enumerate()
            .filter(|(i, _)| self.holding[*i].load(Ordering::SeqCst))
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// When `host` last gained the VIP, if it holds it.
    pub fn gained(&self, host: &str) -> Option<Duration> {
        let i = self.hosts.iter().position(|h| h == host)?;
        let changes = self.changes.lock().unwrap();
        match changes.iter().rev().find(|(j, _, _)| *j == i) {
            Some((_, at, true)) => Some(*at),
            _ => None,
        }
    }

    /// Waits until exactly `hosts` hold the VIP.
    pub fn wait_holders(&self, hosts: &[&str], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let last = self.holders();
            if last == hosts {
                return;
            }
            if Instant::now() >= deadline {
                let changes = self.changes.lock().unwrap().clone();
                panic!(
                    "after {within:?} the VIP is held by {last:?}, not {hosts:?} (changes: {changes:?})"
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Time since the watch's clock started.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for VipWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
