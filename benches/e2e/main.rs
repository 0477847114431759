//! End-to-end benchmark: lbd against HAProxy, nginx stream and a direct
//! connection, side by side in one run on this machine.
//!
//! `cargo bench --bench e2e` starts the backends (nginx answering a small
//! HTTP response, iperf3 for bulk), lbd (release build), HAProxy (TCP mode,
//! `option splice-auto`) and nginx's stream module when installed, runs the
//! load interleaved (every run visits every candidate, in a rotating order)
//! and prints a table of medians with their spread. See docs/benchmarks.md.
//!
//! Knobs (environment): E2E_QUIET (0.15: wait before each sample until the
//! machine is at most this busy; 1 disables), E2E_QUIET_WAIT (120 s), E2E_RUNS (5), E2E_SECONDS (5), E2E_THREADS (proxy
//! threads, 2), E2E_WRK_THREADS (1), E2E_CONNECTIONS (50), E2E_STREAMS (4),
//! E2E_IDLE (9000), E2E_TESTS (keepalive,churn,bulk,idle), E2E_CANDIDATES
//! (direct,lbd,haproxy,nginx), E2E_LBD (binary), E2E_LBD_VARIANTS
//! (`name=PATH:KEY=VALUE:…,…`, an empty PATH meaning the default binary and
//! each KEY=VALUE a `[global]` setting, e.g. `copy=:splice=false`),
//! E2E_KEEP (keep the work dir).

mod candidates;
mod load;
mod procfs;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use candidates::{Backends, Candidate, Kind, Workdir};

/// An extra lbd to compare: a name, a binary, extra `[global]` settings.
struct Variant {
    name: String,
    binary: PathBuf,
    global: Vec<(String, String)>,
}

struct Settings {
    runs: usize,
    seconds: u64,
    threads: usize,
    wrk_threads: usize,
    connections: usize,
    streams: usize,
    idle: usize,
    tests: Vec<String>,
    candidates: Vec<String>,
    lbd: PathBuf,
    variants: Vec<Variant>,
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn list(key: &str, default: &str) -> Vec<String> {
    std::env::var(key)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Settings {
    fn from_env() -> Settings {
        let lbd: PathBuf = std::env::var_os("E2E_LBD")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lbd")));
        let variants = list("E2E_LBD_VARIANTS", "")
            .into_iter()
            .map(|spec| {
                let (name, rest) = spec.split_once('=').unwrap_or((&spec, ""));
                let mut parts = rest.split(':');
                let path = parts.next().filter(|p| !p.is_empty()).map(PathBuf::from);
                let global = parts
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                Variant {
                    name: name.to_owned(),
                    binary: path.unwrap_or_else(|| lbd.clone()),
                    global,
                }
            })
            .collect();
        Settings {
            runs: env_or("E2E_RUNS", 5),
            seconds: env_or("E2E_SECONDS", 5),
            threads: env_or("E2E_THREADS", 2),
            wrk_threads: env_or("E2E_WRK_THREADS", 1),
            connections: env_or("E2E_CONNECTIONS", 50),
            streams: env_or("E2E_STREAMS", 4),
            idle: env_or("E2E_IDLE", 9000),
            tests: list("E2E_TESTS", "keepalive,churn,bulk,idle"),
            candidates: list("E2E_CANDIDATES", "direct,lbd,haproxy,nginx"),
            lbd,
            variants,
        }
    }

    fn runs(&self, test: &str) -> bool {
        self.tests.iter().any(|t| t == test)
    }
}

fn installed(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Samples per (metric, candidate).
#[derive(Default)]
struct Samples(BTreeMap<(&'static str, String), Vec<f64>>);

impl Samples {
    fn add(&mut self, metric: &'static str, candidate: &str, value: f64) {
        self.0
            .entry((metric, candidate.to_owned()))
            .or_default()
            .push(value);
    }

    fn median(&self, metric: &'static str, candidate: &str) -> Option<f64> {
        let values = self.0.get(&(metric, candidate.to_owned()))?;
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        Some(if sorted.len() % 2 == 0 {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        })
    }

    fn cell(&self, metric: &'static str, candidate: &str) -> String {
        let Some(values) = self.0.get(&(metric, candidate.to_owned())) else {
            return "–".into();
        };
        let median = self.median(metric, candidate).unwrap_or(0.0);
        if values.len() == 1 {
            return fmt(median);
        }
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{} ({}–{})", fmt(median), fmt(min), fmt(max))
    }
}

fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

const METRICS: [(&str, &str); 14] = [
    ("keepalive_rps", "keep-alive requests/s"),
    ("keepalive_p50", "keep-alive p50 latency (ms)"),
    ("keepalive_p99", "keep-alive p99 latency (ms)"),
    ("keepalive_cpu", "proxy CPU per request (µs)"),
    (
        "keepalive_switches",
        "proxy context switches per 1000 requests",
    ),
    ("churn_cps", "new connections/s (1 request each)"),
    ("churn_p99", "new connection p99 latency (ms)"),
    ("churn_cpu", "proxy CPU per connection (µs)"),
    (
        "churn_left",
        "proxy sockets left in CLOSE_WAIT/FIN_WAIT2 after churn",
    ),
    ("bulk_gbps", "bulk throughput (Gbit/s)"),
    ("bulk_cpu", "proxy CPU per GiB moved (s)"),
    ("idle_kib", "memory per idle connection (KiB)"),
    ("idle_fds", "fds per idle connection"),
    ("idle_left", "proxy fds left after closing the idle ones"),
];

fn main() {
    // `cargo test --benches` runs bench targets without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("e2e: run with `cargo bench --bench e2e`; skipped");
        return;
    }
    let settings = Settings::from_env();
    for tool in ["wrk", "iperf3", "nginx"] {
        if !installed(tool) {
            eprintln!(
                "e2e needs {tool}: apt-get install -y wrk iperf3 nginx libnginx-mod-stream haproxy"
            );
            std::process::exit(2);
        }
    }
    let dir = Workdir::new();
    let backends = Backends::start(&dir);
    let mut cands: Vec<Candidate> = Vec::new();
    for name in &settings.candidates {
        match name.as_str() {
            "direct" => cands.push(Candidate::direct(&backends)),
            "lbd" => cands.push(Candidate::lbd(
                "lbd",
                &settings.lbd,
                &[],
                settings.threads,
                &backends,
                &dir,
            )),
            "haproxy" if installed("haproxy") => {
                cands.push(Candidate::haproxy(settings.threads, &backends, &dir))
            }
            "nginx" => cands.push(Candidate::nginx_stream(settings.threads, &backends, &dir)),
            other => eprintln!("e2e: skipping candidate {other} (unknown or not installed)"),
        }
    }
    for variant in &settings.variants {
        cands.push(Candidate::lbd(
            &variant.name,
            &variant.binary,
            &variant.global,
            settings.threads,
            &backends,
            &dir,
        ));
    }
    let names: Vec<String> = cands.iter().map(|c| c.name.clone()).collect();
    println!(
        "e2e: candidates {names:?}, {} runs × {} s, {} proxy threads, wrk -t{} -c{}, iperf3 -P {}",
        settings.runs,
        settings.seconds,
        settings.threads,
        settings.wrk_threads,
        settings.connections,
        settings.streams
    );

    let mut samples = Samples::default();
    // Warm-up: first connections, page faults, pools.
    for c in &cands {
        load::wrk(c.web, settings.wrk_threads, settings.connections, 1, false);
    }

    if settings.runs("keepalive") {
        println!("\n## keep-alive (load {})", procfs::load_average());
        for run in 0..settings.runs {
            for c in rotated(&cands, run) {
                let (cpu, switches) = (c.cpu_seconds(), c.context_switches());
                let r = load::wrk(
                    c.web,
                    settings.wrk_threads,
                    settings.connections,
                    settings.seconds,
                    false,
                );
                let cpu = c.cpu_seconds() - cpu;
                let switches = c.context_switches() - switches;
                report_wrk(&c.name, run, &r);
                samples.add("keepalive_rps", &c.name, r.requests_per_second);
                samples.add("keepalive_p50", &c.name, r.p50_ms);
                samples.add("keepalive_p99", &c.name, r.p99_ms);
                if c.kind != Kind::Direct {
                    samples.add("keepalive_cpu", &c.name, cpu * 1e6 / r.requests);
                    samples.add(
                        "keepalive_switches",
                        &c.name,
                        switches as f64 * 1000.0 / r.requests,
                    );
                }
            }
        }
    }

    if settings.runs("churn") {
        println!("\n## new connections (load {})", procfs::load_average());
        for run in 0..settings.runs {
            for c in rotated(&cands, run) {
                let time_wait = settle_time_wait();
                let cpu = c.cpu_seconds();
                let r = load::churn(c.web, settings.connections, settings.seconds);
                let cpu = c.cpu_seconds() - cpu;
                print!("  [TIME_WAIT before: {time_wait}] ");
                report_wrk(&c.name, run, &r);
                samples.add("churn_cps", &c.name, r.requests_per_second);
                samples.add("churn_p99", &c.name, r.p99_ms);
                if c.kind != Kind::Direct {
                    samples.add("churn_cpu", &c.name, cpu * 1e6 / r.requests);
                }
            }
        }
        // Every candidate has now churned well over 10k connections.
        std::thread::sleep(Duration::from_secs(2));
        for c in &cands {
            if c.kind == Kind::Direct {
                continue;
            }
            let held = procfs::states_held_by(&c.pids());
            let touching = procfs::states_touching(&c.ports());
            let left = ["CLOSE_WAIT", "FIN_WAIT2"]
                .iter()
                .map(|s| held.get(s).copied().unwrap_or(0))
                .sum::<usize>();
            println!(
                "  {}: sockets held after churn {held:?}; on its ports {touching:?}",
                c.name
            );
            samples.add("churn_left", &c.name, left as f64);
        }
    }

    if settings.runs("bulk") {
        println!("\n## bulk (load {})", procfs::load_average());
        for run in 0..settings.runs {
            for c in rotated(&cands, run) {
                let cpu = c.cpu_seconds();
                let Some(r) = load::iperf(c.bulk, settings.streams, settings.seconds) else {
                    println!("  run {run} {:<12} no result (sample dropped)", c.name);
                    continue;
                };
                let cpu = c.cpu_seconds() - cpu;
                let gib = r.bytes / (1u64 << 30) as f64;
                println!(
                    "  run {run} {:<12} {:>7.2} Gbit/s  cpu {:.2} s/GiB",
                    c.name,
                    r.gbit_per_second,
                    if c.kind == Kind::Direct {
                        0.0
                    } else {
                        cpu / gib
                    }
                );
                samples.add("bulk_gbps", &c.name, r.gbit_per_second);
                if c.kind != Kind::Direct {
                    samples.add("bulk_cpu", &c.name, cpu / gib);
                }
            }
        }
    }

    if settings.runs("idle") {
        println!(
            "\n## {} idle connections (load {})",
            settings.idle,
            procfs::load_average()
        );
        for c in &mut cands {
            if c.kind == Kind::Direct {
                continue;
            }
            idle_run(c, settings.idle, &mut samples);
        }
    }

    for c in &mut cands {
        if !c.is_running() {
            println!("WARNING: {} exited during the benchmark", c.name);
        }
    }
    println!("\nload average at the end: {}", procfs::load_average());
    print_table(&samples, &names);
}

/// Every run visits every candidate, starting one further each time. With
/// E2E_QUIET set (the default), each visit first waits (up to E2E_QUIET_WAIT
/// seconds, 120) for a second in which the machine is at most E2E_QUIET
/// busy (0.15): other people's compile jobs must not land in one candidate's
/// sample only.
fn rotated(cands: &[Candidate], run: usize) -> impl Iterator<Item = &Candidate> {
    let n = cands.len();
    (0..n).map(move |k| {
        wait_for_quiet();
        &cands[(run + k) % n]
    })
}

fn wait_for_quiet() {
    let limit: f64 = env_or("E2E_QUIET", 0.15);
    if limit >= 1.0 {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(env_or("E2E_QUIET_WAIT", 120));
    let mut busy = procfs::busy_fraction(Duration::from_secs(1));
    while busy > limit && Instant::now() < deadline {
        busy = procfs::busy_fraction(Duration::from_secs(1));
    }
    if busy > limit {
        println!(
            "  (machine still {:.0}% busy; measuring anyway)",
            busy * 100.0
        );
    }
}

fn report_wrk(name: &str, run: usize, r: &load::WrkResult) {
    println!(
        "  run {run} {name:<12} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  errors {}",
        r.requests_per_second, r.p50_ms, r.p99_ms, r.errors
    );
}

/// Counts the TIME_WAIT sockets earlier churn runs left (the churn client
/// spreads its sources over 253 addresses, so they do not crowd its ports);
/// with E2E_TIME_WAIT_MAX set, first waits (up to 20 s) for fewer than that.
fn settle_time_wait() -> usize {
    let limit: usize = env_or("E2E_TIME_WAIT_MAX", usize::MAX);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let count = procfs::tcp_sockets()
            .iter()
            .filter(|r| r.state == "TIME_WAIT")
            .count();
        if count <= limit || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn idle_run(c: &Candidate, count: usize, samples: &mut Samples) {
    let pids = c.pids();
    let rss = || pids.iter().map(|&p| procfs::rss_kib(p)).sum::<u64>();
    let fds = || pids.iter().map(|&p| procfs::fd_count(p)).sum::<usize>();
    let (rss_before, fds_before) = (rss(), fds());
    let held = load::idle_connections(c.web, count);
    std::thread::sleep(Duration::from_secs(1));
    let (rss_after, fds_after) = (rss(), fds());
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fds_left = fds().saturating_sub(fds_before);
    while fds_left > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        fds_left = fds().saturating_sub(fds_before);
    }
    let kib = (rss_after as f64 - rss_before as f64) / count as f64;
    let fd_per = (fds_after as f64 - fds_before as f64) / count as f64;
    println!(
        "  {:<12} RSS {rss_before} → {rss_after} KiB ({kib:.2} KiB/conn), fds {fds_before} → {fds_after} ({fd_per:.3}/conn), {fds_left} fds left after close",
        c.name
    );
    samples.add("idle_kib", &c.name, kib);
    samples.add("idle_fds", &c.name, fd_per);
    samples.add("idle_left", &c.name, fds_left as f64);
}

fn print_table(samples: &Samples, names: &[String]) {
    let has = |n: &str| names.iter().any(|x| x == n);
    let mut header = format!("| metric | {} |", names.join(" | "));
    let mut rule = format!("|---|{}", "---|".repeat(names.len()));
    let ratios = [("lbd", "haproxy"), ("lbd", "direct")];
    for (a, b) in ratios {
        if has(a) && has(b) {
            header.push_str(&format!(" {a}/{b} |"));
            rule.push_str("---|");
        }
    }
    println!("\nmedian (min–max) of the runs\n\n{header}\n{rule}");
    for (key, label) in METRICS {
        if !names
            .iter()
            .any(|n| samples.0.contains_key(&(key, n.clone())))
        {
            continue;
        }
        let mut row = format!("| {label} |");
        for n in names {
            row.push_str(&format!(" {} |", samples.cell(key, n)));
        }
        for (a, b) in ratios {
            if has(a) && has(b) {
                let ratio = match (samples.median(key, a), samples.median(key, b)) {
                    (Some(x), Some(y)) if y != 0.0 => format!("{:.2}×", x / y),
                    _ => "–".into(),
                };
                row.push_str(&format!(" {ratio} |"));
            }
        }
        println!("{row}");
    }
}
