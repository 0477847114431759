//! The processes under test: nginx and iperf3 as backends, and in front of
//! them lbd, HAProxy (TCP mode, `option splice-auto`) and nginx's stream
//! module, each configured with the same servers and the same thread count.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procfs;

/// Where every process of one benchmark run keeps its files.
pub struct Workdir(pub PathBuf);

impl Workdir {
    pub fn new() -> Workdir {
        let path = std::env::temp_dir().join(format!("lbd-e2e-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(path.join("tmp")).expect("create the benchmark's work dir");
        Workdir(path)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).expect("write a config file");
        path
    }

    fn log(&self, name: &str) -> Stdio {
        fs::File::create(self.0.join(name))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::env::var_os("E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A free port on 127.0.0.1 (released at once; the race is acceptable here).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child process killed (and reaped) on drop.
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first so nginx's master takes its workers down with it.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs nginx in the foreground on `config`, kept as `NAME.conf` in `dir`
/// beside its logs (`NAME-error.log`, `NAME.out`, `NAME.err`).
fn nginx(dir: &Workdir, name: &str, config: &str, what: &str) -> Proc {
    let path = dir.write(&format!("{name}.conf"), config);
    spawn(
        Command::new("nginx")
            .args(["-g", "daemon off;", "-e"])
            .arg(dir.0.join(format!("{name}-error.log")))
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&path)
            .stdout(dir.log(&format!("{name}.out")))
            .stderr(dir.log(&format!("{name}.err"))),
        what,
    )
}

fn spawn(command: &mut Command, what: &str) -> Proc {
    match command.spawn() {
        Ok(child) => Proc(child),
        Err(e) => panic!("cannot start {what}: {e}"),
    }
}

fn wait_listening(addr: SocketAddr, what: &str, dir: &Workdir) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            panic!(
                "{what} did not listen on {addr}; its logs are in {}",
                dir.0.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The servers every candidate forwards to.
pub struct Backends {
    /// Three HTTP servers (one nginx worker) answering `hello\n`.
    pub web: [SocketAddr; 3],
    /// One iperf3 server for bulk streams.
    pub bulk: SocketAddr,
    _procs: Vec<Proc>,
}

impl Backends {
    pub fn start(dir: &Workdir) -> Backends {
        let web = [free_port(), free_port(), free_port()].map(loopback);
        let bulk = loopback(free_port());
        let prefix = dir.0.display();
        let listens: String = web
            .iter()
            .map(|a| format!("    listen {a} backlog=4096;\n"))
            .collect();
        let config = format!(
            "worker_processes 1;\nuser root;\npid {prefix}/backend.pid;\nerror_log {prefix}/backend-error.log warn;\n\
             worker_rlimit_nofile 20000;\nevents {{ worker_connections 19000; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 3600s;\n\
               client_body_temp_path {prefix}/tmp/body;\n  proxy_temp_path {prefix}/tmp/proxy;\n\
               fastcgi_temp_path {prefix}/tmp/fcgi;\n  uwsgi_temp_path {prefix}/tmp/uwsgi;\n  scgi_temp_path {prefix}/tmp/scgi;\n\
               server {{\n{listens}    location / {{ return 200 \"hello\\n\"; }}\n  }}\n}}\n"
        );
        let nginx = nginx(dir, "backend", &config, "nginx (backend)");
        let iperf = spawn(
            Command::new("iperf3")
                .args(["-s", "-B", "127.0.0.1", "-p", &bulk.port().to_string()])
                .stdout(dir.log("iperf3.out"))
                .stderr(dir.log("iperf3.err")),
            "iperf3 -s",
        );
        for addr in web {
            wait_listening(addr, "nginx (backend)", dir);
        }
        wait_for_iperf(bulk, dir);
        Backends {
            web,
            bulk,
            _procs: vec![nginx, iperf],
        }
    }
}

/// iperf3 treats a bare connect as a failed test, so look for its listener instead.
fn wait_for_iperf(addr: SocketAddr, dir: &Workdir) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listening = procfs::tcp_sockets()
            .iter()
            .any(|r| r.local_port == addr.port() && r.state == "LISTEN");
        if listening {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "iperf3 did not listen on {addr}; logs in {}",
                dir.0.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Which program a candidate runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Lbd,
    Haproxy,
    NginxStream,
}

/// One way for the load to reach the backends.
pub struct Candidate {
    pub name: String,
    pub kind: Kind,
    /// Where HTTP load is sent.
    pub web: SocketAddr,
    /// Where iperf3 connects.
    pub bulk: SocketAddr,
    proc: Option<Proc>,
}

impl Candidate {
    /// The load goes straight to the backends.
    pub fn direct(backends: &Backends) -> Candidate {
        Candidate {
            name: "direct".into(),
            kind: Kind::Direct,
            web: backends.web[0],
            bulk: backends.bulk,
            proc: None,
        }
    }

    /// lbd from `binary` with extra `[global]` settings (`splice = false`…).
    pub fn lbd(
        name: &str,
        binary: &Path,
        global: &[(String, String)],
        threads: usize,
        backends: &Backends,
        dir: &Workdir,
    ) -> Candidate {
        let (web, bulk) = (loopback(free_port()), loopback(free_port()));
        let servers = |addrs: &[SocketAddr]| -> String {
            addrs
                .iter()
                .map(|a| format!("{{ address = \"{a}\" }}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let extra: String = global
            .iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect();
        let config = format!(
            "[global]\ndrain_timeout = \"1s\"\nthreads = {threads}\n{extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[frontend]]\nname = \"web\"\nlisten = [\"{web}\"]\nbackend = \"web\"\nmax_connections = 20000\n\n\
             [[frontend]]\nname = \"bulk\"\nlisten = [\"{bulk}\"]\nbackend = \"bulk\"\n\n\
             [[backend]]\nname = \"web\"\nbalance = \"round-robin\"\nservers = [{}]\n\n\
             [[backend]]\nname = \"bulk\"\nservers = [{}]\n",
            servers(&backends.web),
            servers(&[backends.bulk]),
        );
        let path = dir.write(&format!("{name}.toml"), &config);
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(&path)
            .env("LBD_LOG_LEVEL", "warn")
            .stdout(dir.log(&format!("{name}.out")))
            .stderr(dir.log(&format!("{name}.err")));
        let proc = spawn(&mut command, "lbd");
        wait_listening(web, name, dir);
        Candidate {
            name: name.into(),
            kind: Kind::Lbd,
            web,
            bulk,
            proc: Some(proc),
        }
    }

    /// HAProxy in TCP mode with `option splice-auto`.
    pub fn haproxy(threads: usize, backends: &Backends, dir: &Workdir) -> Candidate {
        let (web, bulk) = (loopback(free_port()), loopback(free_port()));
        let servers: String = backends
            .web
            .iter()
            .enumerate()
            .map(|(i, a)| format!("    server s{i} {a}\n"))
            .collect();
        let config = format!(
            "global\n    nbthread {threads}\n    maxconn 9500\n    maxpipes 200\n\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    timeout server 1h\n    option splice-auto\n\n\
             frontend web\n    bind {web}\n    default_backend web\n\n\
             backend web\n    balance roundrobin\n{servers}\n\
             frontend bulk\n    bind {bulk}\n    default_backend bulk\n\n\
             backend bulk\n    server b0 {}\n",
            backends.bulk
        );
        let path = dir.write("haproxy.cfg", &config);
        let proc = spawn(
            Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&path)
                .stdout(dir.log("haproxy.out"))
                .stderr(dir.log("haproxy.err")),
            "haproxy",
        );
        wait_listening(web, "haproxy", dir);
        Candidate {
            name: "haproxy".into(),
            kind: Kind::Haproxy,
            web,
            bulk,
            proc: Some(proc),
        }
    }

    /// nginx with the stream module (TCP proxying).
    pub fn nginx_stream(threads: usize, backends: &Backends, dir: &Workdir) -> Candidate {
        let (web, bulk) = (loopback(free_port()), loopback(free_port()));
        let prefix = dir.0.display();
        let servers: String = backends
            .web
            .iter()
            .map(|a| format!("    server {a};\n"))
            .collect();
        let module = ["/usr/lib/nginx/modules/ngx_stream_module.so"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .map(|p| format!("load_module {p};\n"))
            .unwrap_or_default();
        let config = format!(
            "{module}worker_processes {threads};\nuser root;\npid {prefix}/stream.pid;\nerror_log {prefix}/stream-error.log warn;\n\
             worker_rlimit_nofile 20000;\nevents {{ worker_connections 20000; }}\n\
             stream {{\n  proxy_connect_timeout 2s;\n  proxy_timeout 1h;\n\
               upstream web {{\n{servers}  }}\n  upstream bulk {{ server {}; }}\n\
               server {{ listen {web} backlog=4096; proxy_pass web; }}\n\
               server {{ listen {bulk}; proxy_pass bulk; }}\n}}\n",
            backends.bulk
        );
        let proc = nginx(dir, "stream", &config, "nginx (stream)");
        wait_listening(web, "nginx stream", dir);
        Candidate {
            name: "nginx".into(),
            kind: Kind::NginxStream,
            web,
            bulk,
            proc: Some(proc),
        }
    }

    /// The processes doing the proxying (nginx: its workers and master).
    pub fn pids(&self) -> Vec<u32> {
        let Some(Proc(child)) = &self.proc else {
            return Vec::new();
        };
        let pid = child.id();
        let mut pids = vec![pid];
        if self.kind == Kind::NginxStream {
            pids.extend(procfs::children(pid));
        }
        pids
    }

    /// The proxy's listening ports (empty for direct).
    pub fn ports(&self) -> Vec<u16> {
        if self.kind == Kind::Direct {
            Vec::new()
        } else {
            vec![self.web.port(), self.bulk.port()]
        }
    }

    /// CPU seconds used so far by the proxy processes.
    pub fn cpu_seconds(&self) -> f64 {
        self.pids().into_iter().map(procfs::cpu_seconds).sum()
    }

    /// Context switches so far of the proxy processes.
    pub fn context_switches(&self) -> u64 {
        self.pids().into_iter().map(procfs::context_switches).sum()
    }

    /// Whether the proxy process is still alive.
    pub fn is_running(&mut self) -> bool {
        match &mut self.proc {
            Some(Proc(child)) => matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }
}
