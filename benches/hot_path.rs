//! Micro-benchmarks of the per-connection hot path that can be isolated:
//! picking a server under each balance mode (3 and 1000 servers), loading
//! the route snapshot, and classifying a dial error.
//!
//! `cargo bench --bench hot_path`

use std::hint::black_box;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lbd::backend::pool::{Health, Pool, Server, Tried};
use lbd::config::{self, Balance, ServerAddress, ServerSpec};
use lbd::net::dial::DialErrorKind;
use lbd::proxy::frontend::Frontend;

const MODES: [Balance; 5] = [
    Balance::RoundRobin,
    Balance::LeastConnections,
    Balance::RandomTwo,
    Balance::SourceHash,
    Balance::First,
];

fn backend_spec(balance: Balance, servers: usize) -> config::Backend {
    config::Backend {
        name: "bench".into(),
        balance,
        connect_timeout: Duration::from_secs(2),
        retries: 2,
        on_no_server: config::OnNoServer::default(),
        send_proxy: None,
        rebalance: None,
        servers: (0..servers)
            .map(|i| ServerSpec {
                name: format!("s{i}"),
                address: ServerAddress {
                    host: "127.0.0.1".into(),
                    port: 10_000 + i as u16,
                },
                weight: 1,
            })
            .collect(),
        health: config::Health::default(),
        discovery: None,
    }
}

/// A pool of `count` healthy servers with uneven live connection counts, so
/// least-connections and random-two have something to compare.
fn pool(balance: Balance, count: usize) -> Pool {
    let spec = backend_spec(balance, count);
    let servers = spec
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let server = Server::new(
                "bench",
                &s.name,
                s.address.ip().expect("IP literal"),
                s.weight,
            );
            server.set_health(Health::Up);
            server
                .stats
                .active
                .store((i * 7 % 13) as u64, std::sync::atomic::Ordering::Relaxed);
            Arc::new(server)
        })
        .collect();
    Pool::new(spec, servers)
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    let clients: Vec<IpAddr> = (0..256u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7919)))
        .collect();
    for mode in MODES {
        for count in [3, 1000] {
            let pool = pool(mode, count);
            let tried = Tried::default();
            let mut next = 0usize;
            group.bench_with_input(BenchmarkId::new(mode.as_str(), count), &pool, |b, pool| {
                b.iter(|| {
                    next = (next + 1) % clients.len();
                    black_box(pool.pick(black_box(clients[next]), &tried))
                })
            });
        }
    }
    // A retry: the first pick's server is excluded.
    for count in [3, 1000] {
        let pool = pool(Balance::RoundRobin, count);
        let mut tried = Tried::default();
        tried.insert(0);
        let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
        group.bench_with_input(
            BenchmarkId::new("round-robin-retry", count),
            &pool,
            |b, pool| b.iter(|| black_box(pool.pick(client, &tried))),
        );
    }
    group.finish();
}

fn snapshot(c: &mut Criterion) {
    let spec = config::Frontend {
        name: "bench".into(),
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        backend: "bench".into(),
        max_connections: 20_000,
        max_connections_per_source: None,
        backlog: 4096,
        idle_timeout: Duration::from_secs(3600),
        fin_timeout: Duration::from_secs(60),
        routes: Vec::new(),
        inspect_timeout: Duration::from_secs(5),
        accept_proxy: None,
        ready_file: None,
    };
    let frontend = Frontend::new(&spec, Arc::new(pool(Balance::RoundRobin, 3)));
    let mut group = c.benchmark_group("snapshot");
    group.bench_function("route_load_full", |b| {
        b.iter(|| black_box(frontend.route.load_full()))
    });
    group.bench_function("route_load_guard", |b| {
        b.iter(|| black_box(frontend.route.load().idle_timeout))
    });
    let swap = ArcSwap::from_pointee(pool(Balance::RoundRobin, 3));
    group.bench_function("pool_load_and_pick", |b| {
        let tried = Tried::default();
        b.iter(|| black_box(swap.load().pick(IpAddr::V4(Ipv4Addr::LOCALHOST), &tried)))
    });
    group.finish();
}

fn classify(c: &mut Criterion) {
    let errors: Vec<io::Error> = [
        libc::ECONNREFUSED,
        libc::ETIMEDOUT,
        libc::EHOSTUNREACH,
        libc::ECONNRESET,
        libc::EHOSTDOWN,
        libc::EMFILE,
    ]
    .into_iter()
    .map(io::Error::from_raw_os_error)
    .collect();
    let mut group = c.benchmark_group("dial");
    group.bench_function("classify", |b| {
        let mut next = 0usize;
        b.iter(|| {
            next = (next + 1) % errors.len();
            black_box(DialErrorKind::classify(black_box(&errors[next])))
        })
    });
    group.finish();
}

criterion_group!(benches, pick, snapshot, classify);
criterion_main!(benches);
