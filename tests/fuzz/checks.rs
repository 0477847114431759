//! What every fuzz input must satisfy, shared by the fuzz targets and by
//! `tests/fuzz_regressions.rs`, which replays the inputs that once failed.
//! Each target uses only its own checks.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use lbd::config::{Config, ConfigError, format_duration, parse_duration};

/// Widest caret excerpt a problem may carry (120 characters and two `…`).
const MAX_EXCERPT_CHARS: usize = 122;

/// Config parsing and validation: never a panic; an error is located inside
/// the file with a short excerpt; an accepted config is self-consistent.
pub fn config(data: &[u8]) {
    let path = Path::new("fuzz.toml");
    match Config::parse_bytes(path, data) {
        Ok(config) => {
            assert!(!config.frontends.is_empty());
            for frontend in &config.frontends {
                assert!(config.backend(&frontend.backend).is_some());
                assert!(frontend.max_connections >= 1);
            }
            for backend in &config.backends {
                assert!(!backend.servers.is_empty());
            }
            let _ = config.summary();
        }
        Err(ConfigError::Read { .. }) => panic!("parse_bytes never reads"),
        Err(err @ ConfigError::Invalid { .. }) => {
            let ConfigError::Invalid { problems } = &err else {
                unreachable!()
            };
            assert!(!problems.is_empty());
            let lines = data.split(|&b| b == b'\n').count();
            for problem in problems {
                assert!(problem.line <= lines, "line {} of {lines}", problem.line);
                assert!(problem.source_line.chars().count() <= MAX_EXCERPT_CHARS);
                assert!(problem.message.len() < 4096, "{}", problem.message.len());
            }
            let _ = err.to_string();
            let _ = err.summary();
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        duration(text);
    }
}

/// Durations: what parses formats back to text that parses to the same value.
pub fn duration(text: &str) {
    if let Ok(parsed) = parse_duration(text) {
        let shown = format_duration(parsed);
        let again = parse_duration(&shown).expect("a formatted duration parses");
        // format_duration shows whole milliseconds.
        let truncated = Duration::new(parsed.as_secs(), parsed.subsec_millis() * 1_000_000);
        assert_eq!(again, truncated, "{text:?} -> {shown:?}");
    }
}

/// The bearer token of the admin harness; never in the fuzz dictionary, so
/// an input only carries it when the harness puts it there.
const ADMIN_TOKEN: &str = "fuzz-token-5b1e0c9d7a3f4e2b8c6d";

/// A running daemon whose admin API requires [`ADMIN_TOKEN`], shared by
/// every input (starting one per input would dwarf the work under test).
struct AdminHarness {
    runtime: tokio::runtime::Runtime,
    shared: std::sync::Arc<lbd::admin::server::Shared>,
}

fn admin_harness() -> &'static AdminHarness {
    static HARNESS: std::sync::OnceLock<AdminHarness> = std::sync::OnceLock::new();
    HARNESS.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lbd-fuzz-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("admin.token");
        std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = dir.join("lbd.toml");
        std::fs::write(
            &config,
            format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {token:?}\n\n\
                 [[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"pool\"\n\n\
                 [[backend]]\nname = \"pool\"\nservers = [{{ name = \"s1\", address = \"127.0.0.1:9\" }}, {{ name = \"s2\", address = \"127.0.0.1:19\" }}]\n\
                 [backend.health]\ninterval = \"1h\"\n"
            ),
        )
        .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let daemon = runtime
            .block_on(lbd::Daemon::start_from_file(&config))
            .expect("the fuzz harness's daemon starts");
        let policy = lbd::admin::auth::Policy::new(&daemon.snapshot().config.admin);
        let shared = std::sync::Arc::new(lbd::admin::server::Shared::new(daemon, policy));
        AdminHarness { runtime, shared }
    })
}

/// The status codes of the HTTP/1.x responses in `answer`, in order.
fn statuses(mut answer: &[u8]) -> Result<Vec<u16>, String> {
    let mut found = Vec::new();
    while !answer.is_empty() {
        if !(answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 ")) {
            return Err(format!("response {} has no status line", found.len() + 1));
        }
        let status = std::str::from_utf8(answer.get(9..12).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or("a status that is not three digits")?;
        let head_end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("a head without its blank line")?
            + 4;
        let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(answer.len() - head_end);
        let rest = &answer[head_end..];
        // A HEAD answer announces a length but carries no body.
        let body = if rest.starts_with(b"HTTP/1.") {
            0
        } else {
            length
        };
        answer = rest.get(body..).ok_or("a body shorter than its length")?;
        found.push(status);
    }
    Ok(found)
}

/// Admin request handling: the first byte says whether the harness adds the
/// bearer token after the request line; the rest is what a client sends.
/// Every answer is HTTP; without the token every answer is a 4xx (nothing
/// is served or changed); with it, nothing is a 500.
pub fn admin_request(data: &[u8]) {
    admin_answer(data);
}

/// [`admin_request`], returning the bytes the admin API answered.
pub fn admin_answer(data: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some((&mode, raw)) = data.split_first() else {
        return Vec::new();
    };
    let with_token = mode & 1 == 1;
    let mut request = raw.to_vec();
    if with_token && let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let header = format!("\r\nAuthorization: Bearer {ADMIN_TOKEN}");
        request.splice(end..end, header.bytes());
    }
    let carries_token = with_token
        || raw
            .windows(ADMIN_TOKEN.len())
            .any(|w| w == ADMIN_TOKEN.as_bytes());
    let harness = admin_harness();
    let answer = harness.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(lbd::admin::server::serve_connection(
            server,
            lbd::admin::server::Peer::Unix,
            std::sync::Arc::clone(&harness.shared),
        ));
        let exchange = async {
            // The server may answer and close before reading everything.
            let _ = client.write_all(&request).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        };
        let answer = tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .expect("the admin API answered and closed within 20 s");
        let _ = served.await;
        answer
    });
    if answer.is_empty() {
        return answer;
    }
    let statuses = statuses(&answer)
        .unwrap_or_else(|why| panic!("not HTTP ({why}): {:?}", String::from_utf8_lossy(&answer)));
    for status in statuses {
        // Without the token only refusals (and interim 1xx) may come back.
        if !carries_token {
            assert!(
                (400..500).contains(&status) || (100..200).contains(&status),
                "{status} without the token: {:?}",
                String::from_utf8_lossy(&answer)
            );
        }
        assert_ne!(status, 500, "{:?}", String::from_utf8_lossy(&answer));
    }
    answer
}

/// PROXY protocol framing and parsing: never a panic; a complete header
/// is within the bounds; an address it names survives lbd's own encoding.
pub fn proxy_header(data: &[u8]) {
    use lbd::config::ProxyVersion;
    use lbd::net::proxy_protocol::{self, Frame, MAX_V1_LENGTH, MAX_V2_LENGTH, Proxied};
    for version in ProxyVersion::ALL {
        let Ok(Frame::Complete(n)) = proxy_protocol::frame(data, version) else {
            continue;
        };
        let bound = match version {
            ProxyVersion::V1 => MAX_V1_LENGTH,
            ProxyVersion::V2 => MAX_V2_LENGTH,
        };
        assert!(
            n <= bound && n <= data.len(),
            "a {n}-byte {version:?} header"
        );
        if let Ok(Proxied::Client {
            source,
            destination,
        }) = proxy_protocol::parse(&data[..n], version)
        {
            let again = proxy_protocol::encode(version, source, destination);
            let parsed = proxy_protocol::parse(&again, version).expect("lbd's own header parses");
            // lbd sends an IPv4-mapped address in its IPv4 form, and a pair
            // of mixed families as UNKNOWN/LOCAL.
            let canonical = |a: std::net::SocketAddr| {
                std::net::SocketAddr::new(a.ip().to_canonical(), a.port())
            };
            let (source, destination) = (canonical(source), canonical(destination));
            if source.is_ipv4() == destination.is_ipv4() {
                assert_eq!(
                    parsed,
                    Proxied::Client {
                        source,
                        destination
                    }
                );
            }
        }
    }
}

/// The ClientHello reader: never a panic; a name is a lowercase host name.
pub fn client_hello(data: &[u8]) {
    use lbd::net::client_hello::{Hello, parse};
    if let Hello::ClientHello(Some(name)) = parse(data) {
        assert!(name.len() <= 255 && !name.is_empty());
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b"-_.".contains(&b)),
            "{name:?}"
        );
    }
}
