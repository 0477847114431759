//! `lbd --demo`: three stand-in apiservers on loopback and a config that puts
//! lbd in front of them, so a newcomer sees the real daemon at work with
//! nothing else set up. Only the servers are stand-ins; lbd itself runs the
//! same code as in production, from a config file it can reload.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How long a stand-in stays down after `GET /crash`.
const CRASH_DOWNTIME: Duration = Duration::from_secs(20);

/// What `--demo` set up: the config to run and the stand-ins' addresses.
#[derive(Debug)]
pub struct Demo {
    /// The generated config file.
    pub config_path: PathBuf,
    /// Name and address of each stand-in apiserver.
    pub servers: Vec<(String, SocketAddr)>,
    /// Where lbd will listen.
    pub frontend: SocketAddr,
}

/// Starts three stand-in apiservers and writes a config for them.
/// `frontend` is where lbd should listen (port 0 picks a free one).
pub async fn prepare(frontend: SocketAddr, admin: SocketAddr) -> io::Result<Demo> {
    let mut servers = Vec::new();
    for name in ["cp1", "cp2", "cp3"] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(stand_in(name, listener));
        servers.push((name.to_owned(), addr));
    }
    let frontend = free_or(frontend).await?;
    let admin = free_or(admin).await?;
    let server_lines: String = servers
        .iter()
        .map(|(name, addr)| format!("  {{ name = \"{name}\", address = \"{addr}\" }},\n"))
        .collect();
    let config = format!(
        r#"# Written by `lbd --demo`: three stand-in apiservers behind lbd.
[global]
drain_timeout = "5s"

[admin]
listen = "{admin}"

[[frontend]]
name = "kube-apiserver"
listen = ["{frontend}"]
backend = "control-plane"
idle_timeout = "1h"

[[backend]]
name = "control-plane"
balance = "round-robin"
connect_timeout = "1s"
retries = 2
servers = [
{server_lines}]
[backend.health]
check = "tcp"
interval = "1s"
timeout = "500ms"
rise = 2
fall = 2
"#
    );
    // A fresh private directory: refuses to follow a link someone planted
    // at a predictable /tmp path, and keeps the file the user's own.
    let dir = std::env::temp_dir().join(format!("lbd-demo-{}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let config_path = dir.join("lbd.toml");
    tokio::fs::write(&config_path, config).await?;
    Ok(Demo {
        config_path,
        servers,
        frontend,
    })
}

/// The wanted address if it is free, else a free port on the same IP, so
/// the demo runs even where 6443 is taken (say, by a real apiserver).
async fn free_or(wanted: SocketAddr) -> io::Result<SocketAddr> {
    match TcpListener::bind(wanted).await {
        Ok(l) => l.local_addr(),
        Err(_) => TcpListener::bind(SocketAddr::new(wanted.ip(), 0))
            .await?
            .local_addr(),
    }
}

impl Demo {
    /// Removes the generated config and its directory.
    pub fn clean_up(&self) {
        if let Some(dir) = self.config_path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// The instructions printed once lbd is up.
    pub fn instructions(&self, frontend: SocketAddr, admin: &str) -> String {
        let mut text = format!(
            "\nlbd demo: three stand-in apiservers behind lbd on {frontend}\n\n\
             try it:\n  \
             curl -s http://{frontend}/            # answered by cp1, cp2, cp3 in turn\n  \
             nc -v {ip} {port}                     # the control-plane endpoint answers\n  \
             curl -s http://{admin}/api/v1/status  # health and counters (JSON)\n  \
             cargo run --release --bin lbctl -- --admin {admin} status   # the same, as a table\n  \
             open http://{admin}/                 # the same, live in a browser\n\n\
             kill a stand-in (it comes back after {down}s) and watch traffic move:\n",
            ip = frontend.ip(),
            port = frontend.port(),
            down = CRASH_DOWNTIME.as_secs(),
        );
        for (name, addr) in &self.servers {
            text.push_str(&format!("  curl -s http://{addr}/crash    # {name}\n"));
        }
        text.push_str(&format!(
            "\nconfig: {}\nstop with Ctrl-C\n",
            self.config_path.display()
        ));
        text
    }
}

/// A stand-in apiserver: answers every HTTP request with its name, `/readyz`
/// with `ok`, and `/crash` by closing its listener for a while (the port
/// then refuses connections, as a stopped kube-apiserver's does).
async fn stand_in(name: &'static str, listener: TcpListener) {
    let addr = listener.local_addr().expect("bound");
    let mut listener = Some(listener);
    let crash = Arc::new(Notify::new());
    loop {
        let Some(l) = &listener else {
            tokio::time::sleep(CRASH_DOWNTIME).await;
            listener = rebind(addr).await;
            continue;
        };
        tokio::select! {
            () = crash.notified() => listener = None,
            accepted = l.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(answer(name, stream, Arc::clone(&crash)));
                }
            }
        }
    }
}

async fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..50 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn answer(name: &str, mut stream: TcpStream, crash: Arc<Notify>) {
    let mut request = vec![0u8; 4096];
    let mut len = 0;
    while !request[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < request.len() {
        match stream.read(&mut request[len..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
    }
    let line = String::from_utf8_lossy(&request[..len]);
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let body = match path {
        "/readyz" | "/livez" | "/healthz" => "ok\n".to_owned(),
        "/crash" => {
            crash.notify_one();
            format!("{name}: crashing for {}s\n", CRASH_DOWNTIME.as_secs())
        }
        _ => format!("hello from stand-in apiserver {name}\n"),
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}
