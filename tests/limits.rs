//! Connection limits through the real binary: `max_connections_per_source`
//! refuses a client address over its share, the global `max_connections`
//! parks clients of every frontend in the backlog.

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::{Backend, Lbd, config_for, wait_until};

/// Connects from `source` (any 127.0.0.0/8 address) to `to`.
fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    socket.into()
}

/// Reads the backend's greeting, or says how the connection ended instead.
fn greeted(stream: &mut TcpStream) -> Result<String, std::io::ErrorKind> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => Err(std::io::ErrorKind::UnexpectedEof),
        Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()),
        Err(e) => Err(e.kind()),
    }
}

/// `lbd_frontend_rejected_total{frontend, reason}` from `/metrics`.
fn rejected(lbd: &Lbd, frontend: &str, reason: &str) -> u64 {
    let (code, body) = lbd.get("/metrics");
    assert_eq!(code, 200);
    let (frontend, reason) = (
        format!("frontend=\"{frontend}\""),
        format!("reason=\"{reason}\""),
    );
    body.lines()
        .find(|l| {
            l.starts_with("lbd_frontend_rejected_total{")
                && l.contains(&frontend)
                && l.contains(&reason)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no rejected_total for {frontend} {reason} in:\n{body}"))
}

#[test]
fn a_source_over_its_limit_is_refused_while_others_are_served() {
    let backend = Backend::named("b");
    let lbd = Lbd::start(&config_for(
        &[&backend],
        "",
        "max_connections_per_source = 2",
    ));
    let addr = lbd.addr("api");
    let mut first = connect_from([127, 0, 0, 2], addr);
    let mut second = connect_from([127, 0, 0, 2], addr);
    assert_eq!(greeted(&mut first), Ok("b".into()));
    assert_eq!(greeted(&mut second), Ok("b".into()));

    let mut third = connect_from([127, 0, 0, 2], addr);
    let refused = greeted(&mut third);
    assert!(
        matches!(
            refused,
            Err(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof)
        ),
        "{refused:?}"
    );
    lbd.wait_for_log("reason=\"source_limit\"", Duration::from_secs(5));
    // Another address is not affected…
    let mut other = connect_from([127, 0, 0, 3], addr);
    assert_eq!(greeted(&mut other), Ok("b".into()));
    // …and a closed connection gives its slot back.
    drop(first);
    let mut again = None;
    wait_until(Duration::from_secs(5), "the slot to come back", || {
        let mut stream = connect_from([127, 0, 0, 2], addr);
        let ok = greeted(&mut stream).is_ok();
        again = Some(stream);
        ok
    });
    assert!(rejected(&lbd, "api", "source_limit") >= 1);
    assert_eq!(lbd.active_connections(), 3, "second, other and again");
}

#[test]
fn the_global_limit_parks_clients_of_every_frontend_in_the_backlog() {
    let backend = Backend::named("b");
    let config = config_for(&[&backend], "", "")
        .replace("[admin]", "[global]\nmax_connections = 2\n\n[admin]")
        .replace(
            "[[backend]]",
            "[[frontend]]\nname = \"other\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"pool\"\n\n[[backend]]",
        );
    let lbd = Lbd::start(&config);
    let mut one = TcpStream::connect(lbd.addr("api")).unwrap();
    let mut two = TcpStream::connect(lbd.addr("other")).unwrap();
    assert_eq!(greeted(&mut one), Ok("b".into()));
    assert_eq!(greeted(&mut two), Ok("b".into()));
    // The third client, on either frontend, waits: accepted by the kernel,
    // not by lbd, and not dropped.
    let mut third = TcpStream::connect(lbd.addr("api")).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        third.read(&mut [0u8; 4]).is_err(),
        "served over the global limit"
    );
    assert_eq!(lbd.active_connections(), 2);
    lbd.wait_for_log("reason=\"global_max_connections\"", Duration::from_secs(5));
    drop(two);
    assert_eq!(greeted(&mut third), Ok("b".into()));
    // Waiting turned no client away.
    assert_eq!(rejected(&lbd, "api", "global_max_connections"), 0);
    assert_eq!(rejected(&lbd, "other", "global_max_connections"), 0);
}

#[test]
fn a_global_limit_above_the_descriptor_budget_is_lowered_with_a_warning() {
    let backend = Backend::named("b");
    let config = config_for(&[&backend], "", "")
        .replace("[admin]", "[global]\nmax_connections = 1000000\n\n[admin]");
    let lbd = Lbd::start_with(&config, |command| {
        support::limit_fds(command, 256);
    });
    let warning = lbd.wait_for_log("raise LimitNOFILE", Duration::from_secs(5));
    assert!(warning.contains("configured=1000000"), "{warning}");
    let using: usize = support::field(&warning, "using").unwrap().parse().unwrap();
    assert!(using < 128, "{warning}");
}

/// `rejected_total` of the frontend `api` in `/api/v1/status`, and the sum
/// of its `lbd_frontend_rejected_total` over every reason in `/metrics`.
fn rejected_everywhere(lbd: &Lbd) -> (u64, f64) {
    let status = lbd.status();
    let in_status = status["frontends"][0]["rejected_total"].as_u64().unwrap();
    let in_metrics = lbd
        .metrics()
        .iter()
        .filter(|s| {
            s.name == "lbd_frontend_rejected_total"
                && s.labels.get("frontend").is_some_and(|f| f == "api")
        })
        .map(|s| s.value)
        .sum();
    (in_status, in_metrics)
}

#[test]
fn clients_that_only_wait_for_max_connections_are_not_counted_as_rejected() {
    let backend = Backend::named("b");
    // Several accept loops: two addresses, and four per-core runtimes with a
    // socket and a loop each per address. Every loop meets the full limit.
    let config = "[global]\nruntime = \"per-core\"\nthreads = 4\n\n".to_owned()
        + &config_for(&[&backend], "", "max_connections = 1").replace(
            r#"listen = ["127.0.0.1:0"]"#,
            r#"listen = ["127.0.0.1:0", "127.0.0.2:0"]"#,
        );
    let lbd = Lbd::start(&config);
    let addrs = lbd.addrs("api");
    assert_eq!(addrs.len(), 2, "{addrs:?}");

    let mut first = TcpStream::connect(addrs[0]).unwrap();
    assert_eq!(greeted(&mut first), Ok("b".into()));
    let mut second = TcpStream::connect(addrs[1]).unwrap();
    lbd.wait_for_log("connection limit full", Duration::from_secs(5));
    assert_eq!(
        rejected_everywhere(&lbd),
        (0, 0.0),
        "while the client waits"
    );

    drop(first);
    assert_eq!(greeted(&mut second), Ok("b".into()));
    let mut third = TcpStream::connect(addrs[0]).unwrap();
    drop(second);
    assert_eq!(greeted(&mut third), Ok("b".into()));
    assert_eq!(
        rejected_everywhere(&lbd),
        (0, 0.0),
        "every client was served"
    );
    let text = lbd.lbctl(&["status"]);
    assert!(text.stdout.contains(" 0 rejected"), "{}", text.stdout);
}
