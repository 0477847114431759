//! One attempt at one address: dial with the daemon's classifier, then watch
//! for an accept-then-close (plain TCP) or run TLS and HTTP, ending in one
//! outcome and one sentence.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::http::{self, HttpReport};
use super::target::Target;
use super::tls::{self, TlsFailureKind, TlsReport, TlsSettings};
use super::{explain, target::Checks};
use crate::net::dial::{self, DialErrorKind};

/// What an attempt came to: the `result` of the JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Connected and passed every check asked for.
    Open,
    /// The dial (or the name resolution) failed; the daemon's classifier says how.
    Dial(DialErrorKind),
    /// Accepted, then closed or reset without a byte: an accept-first proxy
    /// with no reachable backend. Not in DESIGN.md's minimal list; added.
    /// It also takes the dial's `Reset`, which connect(2) only reports for a
    /// reset after the handshake, so the same server gets the same word
    /// whichever side of the connect its reset lands.
    AcceptedClosed,
    /// Connected, but the handshake failed or the certificate failed a check.
    TlsError,
    /// TLS is fine, but the GET failed or answered other than 2xx.
    HttpError,
}

impl Outcome {
    /// The `result` value of `--json`, and the word in the human output.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Open => "open",
            Outcome::Dial(kind) => kind.as_str(),
            Outcome::AcceptedClosed => "accepted_closed",
            Outcome::TlsError => "tls_error",
            Outcome::HttpError => "http_error",
        }
    }
}

/// One attempt at one address of one target, as it is printed.
#[derive(Debug)]
pub(crate) struct Attempt {
    /// What was probed.
    pub target: Arc<Target>,
    /// Round number, from 1.
    pub seq: u32,
    /// The resolved address; `None` when the name did not resolve.
    pub address: Option<SocketAddr>,
    /// What it came to.
    pub outcome: Outcome,
    /// Time from the start of the dial to the outcome; for a plain TCP
    /// `open`, the connect time (the quiet hold is not counted).
    pub elapsed: Duration,
    /// Time the TCP connect took, when it succeeded.
    pub connect: Option<Duration>,
    /// The one sentence: what it means and what to do next.
    pub detail: String,
    /// The OS's, rustls's or hyper's own words, when something failed.
    pub error: Option<String>,
    /// How long the peer was watched for an accept-then-close.
    pub hold: Option<Duration>,
    /// What the peer sent unasked during the hold.
    pub greeting: Option<String>,
    /// The TLS step, when asked for and reached.
    pub tls: Option<TlsReport>,
    /// The HTTP step, when asked for and answered.
    pub http: Option<HttpReport>,
}

impl Attempt {
    fn new(target: &Arc<Target>, seq: u32, address: Option<SocketAddr>) -> Attempt {
        Attempt {
            target: Arc::clone(target),
            seq,
            address,
            outcome: Outcome::Open,
            elapsed: Duration::ZERO,
            connect: None,
            detail: String::new(),
            error: None,
            hold: None,
            greeting: None,
            tls: None,
            http: None,
        }
    }

    fn end(mut self, outcome: Outcome, detail: String, elapsed: Duration) -> Attempt {
        self.outcome = outcome;
        self.detail = detail;
        self.elapsed = elapsed;
        self
    }

    /// Whether this attempt counts as a success for the exit status.
    pub(crate) fn passed(&self) -> bool {
        self.outcome == Outcome::Open
    }
}

/// Resolves the target and probes every address it names, in parallel.
pub(crate) async fn probe_target(target: Arc<Target>, seq: u32) -> Vec<Attempt> {
    let started = Instant::now();
    let timeout = target.checks.timeout;
    let lookup = dial::resolve_classified(&target.host, target.port);
    let resolved = tokio::time::timeout(timeout, lookup)
        .await
        .unwrap_or_else(|_| {
            Err(dial::ResolveError {
                message: format!(
                    "the resolver gave no answer for {} within {}",
                    target.host,
                    crate::config::format_duration(timeout)
                ),
                resolver_down: true,
            })
        });
    let addresses = match resolved {
        Ok(addresses) => addresses,
        Err(error) => {
            let mut attempt = Attempt::new(&target, seq, None);
            let detail = explain::resolve_failure(&error);
            attempt.error = Some(error.message);
            let kind = DialErrorKind::DnsError;
            return vec![attempt.end(Outcome::Dial(kind), detail, started.elapsed())];
        }
    };
    let tasks: Vec<_> = addresses
        .into_iter()
        .map(|address| tokio::spawn(probe_address(Arc::clone(&target), address, seq)))
        .collect();
    let mut attempts = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(attempt) => attempts.push(attempt),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    attempts
}

/// Dials one address, then runs the checks the target asks for.
async fn probe_address(target: Arc<Target>, address: SocketAddr, seq: u32) -> Attempt {
    let checks: &Checks = &target.checks;
    let mut attempt = Attempt::new(&target, seq, Some(address));
    let started = Instant::now();
    let stream = match dial::connect(address, checks.timeout).await {
        Ok(stream) => stream,
        // A RST to a SYN is "refused"; a reset seen by connect(2) came after
        // the handshake: the peer accepted, then reset before we were even
        // scheduled. That is the accept-first proxy, just faster than the hold.
        Err(e) if e.kind == DialErrorKind::Reset => {
            let detail = explain::accepted_closed("reset", e.elapsed, target.is_frontend());
            attempt.error = Some(e.detail);
            return attempt.end(Outcome::AcceptedClosed, detail, e.elapsed);
        }
        Err(e) => {
            let detail = explain::dial(&e, checks.timeout);
            attempt.error = Some(e.detail);
            return attempt.end(Outcome::Dial(e.kind), detail, e.elapsed);
        }
    };
    let connected = started.elapsed();
    attempt.connect = Some(connected);
    match &checks.tls {
        None => watch_hold(attempt, stream, checks.hold, connected).await,
        Some(settings) => {
            let settings = Arc::clone(settings);
            tls_and_http(attempt, stream, &settings, started).await
        }
    }
}

/// Watches a plain TCP connection for `hold`: a peer that closes or resets
/// without a byte is an accept-first proxy with nothing behind it.
async fn watch_hold(
    mut attempt: Attempt,
    mut stream: TcpStream,
    hold: Duration,
    connected: Duration,
) -> Attempt {
    let port = attempt.target.port;
    if hold.is_zero() {
        return attempt.end(Outcome::Open, explain::open_unwatched(port), connected);
    }
    attempt.hold = Some(hold);
    let watch_started = Instant::now();
    let mut buf = [0u8; 128];
    match tokio::time::timeout(hold, stream.read(&mut buf)).await {
        Err(_) => attempt.end(Outcome::Open, explain::open_held(port, hold), connected),
        Ok(Ok(0)) => {
            let after = watch_started.elapsed();
            attempt.error =
                Some("the peer closed the connection (FIN) without sending data".into());
            let detail = explain::accepted_closed("closed", after, attempt.target.is_frontend());
            attempt.end(Outcome::AcceptedClosed, detail, connected + after)
        }
        Ok(Ok(n)) => {
            let sample = greeting(&buf[..n]);
            let detail = explain::spoke_first(port, &sample);
            attempt.greeting = Some(sample);
            attempt.end(Outcome::Open, detail, connected)
        }
        Ok(Err(e)) => {
            let after = watch_started.elapsed();
            let how = match DialErrorKind::classify(&e) {
                DialErrorKind::Reset => "reset",
                _ => "closed",
            };
            attempt.error = Some(e.to_string());
            let detail = explain::accepted_closed(how, after, attempt.target.is_frontend());
            attempt.end(Outcome::AcceptedClosed, detail, connected + after)
        }
    }
}

/// The first line of an unasked greeting, printable.
fn greeting(bytes: &[u8]) -> String {
    let line = bytes
        .split(|b| *b == b'\r' || *b == b'\n')
        .next()
        .unwrap_or_default();
    String::from_utf8_lossy(line)
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .take(60)
        .collect()
}

/// TLS handshake, certificate checks, then the GET when asked for.
async fn tls_and_http(
    mut attempt: Attempt,
    stream: TcpStream,
    settings: &TlsSettings,
    started: Instant,
) -> Attempt {
    let target = Arc::clone(&attempt.target);
    let checks = &target.checks;
    let address = attempt.address.unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
    let name = settings.sni.as_deref().unwrap_or(&target.host);
    let server_name = ServerName::try_from(name.to_owned())
        .unwrap_or_else(|_| ServerName::IpAddress(address.ip().into()));
    let has_client_cert = settings.has_client_cert();
    let ca = settings.ca_path.as_deref();

    let (stream, mut report) =
        match tls::handshake(stream, settings, server_name, checks.timeout).await {
            Ok(done) => done,
            Err(failure) => {
                let outcome = match failure.kind {
                    TlsFailureKind::AcceptedClosed => Outcome::AcceptedClosed,
                    _ => Outcome::TlsError,
                };
                let detail = explain::tls_failure(
                    &failure.kind,
                    checks.timeout,
                    has_client_cert,
                    target.is_frontend(),
                    &failure.error,
                );
                attempt.error = Some(failure.error);
                attempt.tls = Some(failure.report);
                return attempt.end(outcome, detail, started.elapsed());
            }
        };

    if let (Some(name), Some(cert)) = (&target.checked_name, &report.certificate) {
        report.name_in_sans = Some(cert.covers(name));
        report.checked_name = Some(name.clone());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let problem = explain::certificate_problem(&report, now, ca);
    let ok_sentence = explain::tls_ok(&report, ca);
    attempt.tls = Some(report);
    if let Some(problem) = problem {
        return attempt.end(Outcome::TlsError, problem, started.elapsed());
    }
    let Some(path) = &checks.http_path else {
        return attempt.end(Outcome::Open, ok_sentence, started.elapsed());
    };

    match http::get(stream, &target.authority(), path, checks.timeout).await {
        Ok(answer) => {
            let (passed, detail) = explain::http(&answer, has_client_cert);
            attempt.http = Some(answer);
            let outcome = if passed {
                Outcome::Open
            } else {
                Outcome::HttpError
            };
            attempt.end(outcome, detail, started.elapsed())
        }
        Err(failure) => {
            let detail = explain::http_failure(&failure, path, checks.timeout, has_client_cert);
            attempt.error = Some(failure.error);
            attempt.end(Outcome::HttpError, detail, started.elapsed())
        }
    }
}
