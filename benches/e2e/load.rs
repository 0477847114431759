//! The load: wrk for requests (keep-alive and one per connection), iperf3 for
//! bulk streams, and a plain client holding many idle connections.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// What one wrk run reported.
#[derive(Debug, Clone, Copy)]
pub struct WrkResult {
    pub requests_per_second: f64,
    pub requests: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// Runs wrk against `addr`; `close` sends `Connection: close` so every
/// request opens a new connection.
pub fn wrk(
    addr: SocketAddr,
    threads: usize,
    connections: usize,
    seconds: u64,
    close: bool,
) -> WrkResult {
    let mut command = Command::new("wrk");
    command
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency");
    if close {
        command.args(["-H", "Connection: close"]);
    }
    let output = command
        .arg(format!("http://{addr}/"))
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    parse_wrk(&text).unwrap_or_else(|| panic!("cannot read wrk's output:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<WrkResult> {
    let mut result = WrkResult {
        requests_per_second: 0.0,
        requests: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        errors: 0,
    };
    for line in text.lines() {
        let line = line.trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => result.requests_per_second = value.parse().ok()?,
            ["50%", value] => result.p50_ms = duration_ms(value)?,
            ["99%", value] => result.p99_ms = duration_ms(value)?,
            [count, "requests", "in", ..] => result.requests = count.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                result.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => result.errors += n.parse::<u64>().ok()?,
            _ => {}
        }
    }
    (result.requests_per_second > 0.0).then_some(result)
}

fn duration_ms(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return None,
    })
}

/// What one iperf3 run reported.
#[derive(Debug, Clone, Copy)]
pub struct IperfResult {
    pub bytes: f64,
    pub gbit_per_second: f64,
}

/// Runs iperf3 with `streams` parallel streams against `addr`. The server
/// takes one test at a time and may still be winding the last one down, so
/// a failed test is tried again a few times; `None` if none succeeded.
pub fn iperf(addr: SocketAddr, streams: usize, seconds: u64) -> Option<IperfResult> {
    let mut attempts = 0;
    loop {
        let output = Command::new("iperf3")
            .args(["-c", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["-P", &streams.to_string(), "-t", &seconds.to_string()])
            .args(["-Z", "-J"])
            .output()
            .expect("run iperf3 (apt-get install iperf3)");
        let text = String::from_utf8_lossy(&output.stdout);
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("cannot read iperf3's output ({e}):\n{text}"));
        let received = &json["end"]["sum_received"];
        if let (Some(bytes), Some(bits)) = (
            received["bytes"].as_f64(),
            received["bits_per_second"].as_f64(),
        ) {
            return Some(IperfResult {
                bytes,
                gbit_per_second: bits / 1e9,
            });
        }
        println!(
            "  (iperf3 to {addr} failed: {}; retrying)",
            json["error"].as_str().unwrap_or("no result")
        );
        attempts += 1;
        if attempts >= 5 {
            return None;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Opens `count` connections to `addr`, makes one HTTP request on each (so
/// every connection has carried data, like a watch between events) and
/// keeps them open and silent.
pub fn idle_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    let mut buf = [0u8; 512];
    for i in 0..count {
        let mut stream = TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("idle connection {i} to {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set a read timeout");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            .expect("send a request on an idle connection");
        let mut got = Vec::new();
        while !got.ends_with(b"hello\n") {
            let n = stream.read(&mut buf).expect("read the response");
            assert!(n > 0, "connection {i} closed before answering");
            got.extend_from_slice(&buf[..n]);
        }
        held.push(stream);
    }
    held
}

/// Opens connections for `seconds`, `concurrency` at a time, each sending
/// one request with `Connection: close` and reading until the end of stream
/// (the proxy's whole close path is part of every connection). Clients are
/// spread over 127.0.0.2–127.0.0.254 so TIME_WAIT entries of earlier runs
/// do not crowd one source address's ports.
pub fn churn(addr: SocketAddr, concurrency: usize, seconds: u64) -> WrkResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the churn client's runtime");
    let latencies = Rc::new(RefCell::new(Vec::<u32>::with_capacity(1 << 20)));
    let errors = Rc::new(RefCell::new(0u64));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    runtime.block_on(async {
        let local = tokio::task::LocalSet::new();
        for worker in 0..concurrency {
            let (latencies, errors) = (Rc::clone(&latencies), Rc::clone(&errors));
            local.spawn_local(async move {
                let mut next = worker;
                let mut buf = [0u8; 1024];
                while Instant::now() < deadline {
                    next += concurrency;
                    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (next % 253) as u8));
                    let begun = Instant::now();
                    match one_request(source, addr, &mut buf).await {
                        Ok(()) => latencies
                            .borrow_mut()
                            .push(begun.elapsed().as_micros().min(u32::MAX as u128) as u32),
                        Err(_) => *errors.borrow_mut() += 1,
                    }
                }
            });
        }
        local.await;
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = Rc::try_unwrap(latencies)
        .map(RefCell::into_inner)
        .unwrap_or_default();
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
        latencies[i] as f64 / 1000.0
    };
    let errors = *errors.borrow();
    WrkResult {
        requests_per_second: latencies.len() as f64 / elapsed,
        requests: latencies.len() as f64,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        errors,
    }
}

async fn one_request(source: IpAddr, addr: SocketAddr, buf: &mut [u8]) -> std::io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    // Let connect() choose the port for the whole 4-tuple, not bind().
    let one: libc::c_int = 1;
    // SAFETY: a valid int option on a socket we own.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(addr).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut total = 0;
    loop {
        let n = stream.read(buf).await?;
        if n == 0 {
            break;
        }
        total += n;
    }
    if total == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}
