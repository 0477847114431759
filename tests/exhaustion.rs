//! lbd's own resources under pressure, through the real binary: file
//! descriptors exhausted (RLIMIT_NOFILE lowered for the child), and clients
//! and servers reading one byte a second. lbd must stay up, not spin, hold
//! a bounded amount of memory per stalled connection, serve everyone else,
//! and cut the stalled ones at `idle_timeout`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::faulty::{FaultyServer, Misbehaviour};
use support::{Backend, Lbd, clock_ticks_per_second, config_for, limit_fds, wait_until};

#[test]
fn fd_exhaustion_parks_clients_in_the_backlog_without_spinning() {
    let backend = Backend::named("only");
    let lbd = Lbd::start_with(&config_for(&[&backend], "", ""), |c| limit_fds(c, 128));
    let addr = lbd.addr("api");
    let line = lbd.wait_for_log(
        "global connection limit from RLIMIT_NOFILE",
        Duration::from_secs(5),
    );
    let budget: usize = support::field(&line, "max_connections")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..64).contains(&budget), "{line}");

    // Twice as many clients as lbd has descriptors.
    let mut clients: Vec<TcpStream> = (0..256)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let active = || {
        lbd.status()["frontends"][0]["active_connections"]
            .as_u64()
            .unwrap() as usize
    };
    wait_until(Duration::from_secs(10), "the budget to fill", || {
        active() == budget
    });
    let before = lbd.stats();
    let window = Duration::from_secs(2);
    std::thread::sleep(window);
    let after = lbd.stats();
    assert_eq!(active(), budget, "served past the budget");
    assert!(after.fds <= 128, "{after:?}");
    // An accept spin would burn a whole core; parked, lbd sleeps.
    let cpu = Duration::from_millis(
        (after.cpu_ticks - before.cpu_ticks) * 1000 / clock_ticks_per_second(),
    );
    eprintln!(
        "fd exhaustion: RLIMIT_NOFILE 128, budget {budget} connections, 256 clients; \
         {cpu:?} CPU in {window:?} while saturated, {} fds",
        after.fds
    );
    assert!(
        cpu <= window / 10,
        "lbd used {cpu:?} of CPU in {window:?} while saturated"
    );
    assert!(
        lbd.logs_matching("accept failed").is_empty(),
        "lbd ran out of descriptors instead of parking clients"
    );

    // As clients leave, the parked ones are served: none was dropped. With
    // one listening socket per runtime, the kernel spreads clients over
    // several accept queues, so they are served in no global order: any
    // greeted client leaves and frees its slot.
    let mut greeted = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for stream in &clients {
        stream.set_nonblocking(true).unwrap();
    }
    while !clients.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} parked clients were never served",
            clients.len()
        );
        clients.retain_mut(|stream| {
            let mut buf = [0u8; 5];
            match stream.peek(&mut buf) {
                Ok(5) => {
                    stream.read_exact(&mut buf).unwrap();
                    assert_eq!(&buf, b"only\n");
                    greeted += 1;
                    false
                }
                Ok(0) => panic!("a parked client was dropped"),
                Ok(_) => true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                Err(e) => panic!("a parked client was dropped: {e}"),
            }
        });
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(greeted, 256);
}

/// Two frontends: `stalled` in front of `stalled_server`, `api` in front of
/// an echo server, so stalled connections and healthy ones share one lbd.
fn two_frontends(stalled_server: SocketAddr, echo: &Backend, idle: &str) -> String {
    format!(
        r#"[[frontend]]
name = "stalled"
listen = ["127.0.0.1:0"]
backend = "stalled"
idle_timeout = "{idle}"

[[frontend]]
name = "api"
listen = ["127.0.0.1:0"]
backend = "echo"

[[backend]]
name = "stalled"
servers = [{{ address = "{stalled_server}" }}]

[[backend]]
name = "echo"
servers = [{{ name = "echo", address = "{}" }}]
"#,
        echo.addr
    )
}

fn idle_closes(lbd: &Lbd) -> usize {
    lbd.logs_matching("connection closed")
        .iter()
        .filter(|l| l.contains("idle_timeout"))
        .count()
}

#[test]
fn clients_reading_one_byte_a_second_hold_no_one_else_and_are_cut_by_idle_timeout() {
    let firehose = FaultyServer::spawn(Misbehaviour::Firehose);
    let echo = Backend::named("echo");
    let lbd = Lbd::start(&two_frontends(firehose.addr, &echo, "2s"));
    let baseline = lbd.stats();
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(lbd.addr("stalled")).unwrap())
        .collect();
    wait_until(Duration::from_secs(5), "the firehose to serve all", || {
        firehose.accepted() >= 20
    });
    // They read a byte a second; the firehose fills every buffer on the way.
    let reader = std::thread::spawn(move || {
        for _ in 0..3 {
            for s in &mut slow {
                let _ = s.read(&mut [0u8; 1]);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        slow
    });
    // Meanwhile a normal client moves a MiB through the same lbd, twice.
    let api = lbd.addr("api");
    echo_a_mebibyte_via(api);
    echo_a_mebibyte_via(api);
    let stalled = lbd.stats();
    // Each stalled connection may hold one copy buffer per direction, not
    // everything the firehose would send.
    let grown_kib = stalled.rss_kib.saturating_sub(baseline.rss_kib);
    eprintln!("slow clients: 20 stalled, RSS grew {grown_kib} KiB");
    assert!(grown_kib < 20 * 64 + 8 * 1024, "RSS grew {grown_kib} KiB");
    let _slow = reader.join().unwrap();
    wait_until(
        Duration::from_secs(15),
        "idle_timeout to cut all 20",
        || idle_closes(&lbd) == 20,
    );
}

/// Echoes a MiB through `api` (after the echo backend's greeting) and
/// checks it byte for byte.
fn echo_a_mebibyte_via(api: SocketAddr) {
    let mut stream = TcpStream::connect(api).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut greeting = [0u8; 5];
    stream.read_exact(&mut greeting).unwrap();
    let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut writer = stream.try_clone().unwrap();
    let sent = payload.clone();
    let send = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).unwrap();
    send.join().unwrap();
    assert!(echoed == payload, "the echo differs");
}

#[test]
fn servers_reading_one_byte_a_second_hold_no_one_else_and_are_cut_by_idle_timeout() {
    let slow_server = FaultyServer::spawn(Misbehaviour::SlowReader);
    let echo = Backend::named("echo");
    let lbd = Lbd::start(&two_frontends(slow_server.addr, &echo, "2s"));
    let baseline = lbd.stats();
    let stalled = lbd.addr("stalled");
    // Uploaders push as fast as they can into a server that reads a byte a second.
    let uploaders: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(stalled).unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let chunk = [b'u'; 16 * 1024];
                let started = Instant::now();
                loop {
                    if let Err(e) = stream.write_all(&chunk) {
                        return (started.elapsed(), e.kind());
                    }
                }
            })
        })
        .collect();
    wait_until(
        Duration::from_secs(5),
        "the slow server to take all",
        || slow_server.accepted() >= 20,
    );
    echo_a_mebibyte_via(lbd.addr("api"));
    let grown_kib = lbd.stats().rss_kib.saturating_sub(baseline.rss_kib);
    eprintln!("slow servers: 20 stalled, RSS grew {grown_kib} KiB");
    assert!(grown_kib < 20 * 64 + 8 * 1024, "RSS grew {grown_kib} KiB");
    wait_until(
        Duration::from_secs(15),
        "idle_timeout to cut all 20",
        || idle_closes(&lbd) == 20,
    );
    // Cut by lbd, the uploaders' writes fail instead of blocking forever.
    for uploader in uploaders {
        let (elapsed, kind) = uploader.join().unwrap();
        assert_ne!(
            kind,
            std::io::ErrorKind::WouldBlock,
            "still blocked after {elapsed:?}"
        );
    }
}
