//! Printing attempts: aligned lines that each start with the target and the
//! address (so `grep` keeps whole facts), colour only on a terminal without
//! `NO_COLOR`, a ping-like summary; or JSON Lines, one object per attempt.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::attempt::{Attempt, Outcome};
use super::explain::elapsed;
use super::http::HttpReport;
use super::target::Target;
use super::tls::TlsReport;
use crate::net::dial::DialErrorKind;

/// `accepted_closed`, the longest result word.
const RESULT_WIDTH: usize = 15;
const TIME_WIDTH: usize = 9;

/// Colour only for a person at a terminal, and never when `NO_COLOR` is set
/// to anything (no-color.org).
pub(crate) fn colour_wanted() -> bool {
    io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Writes attempts as they come and the summary at the end.
pub(crate) struct Renderer<W> {
    out: W,
    json: bool,
    colour: bool,
    summarise: bool,
    label_width: usize,
    address_width: Option<usize>,
    stats: Vec<Stats>,
}

/// Per (target, address): what the summary line reports.
struct Stats {
    label: String,
    address: String,
    attempts: u32,
    open_times: Vec<Duration>,
    failures: BTreeMap<&'static str, u32>,
}

impl<W: Write> Renderer<W> {
    /// A renderer for these targets; `summarise` adds the summary lines.
    pub(crate) fn new(
        out: W,
        json: bool,
        colour: bool,
        summarise: bool,
        targets: &[Arc<Target>],
    ) -> Renderer<W> {
        let label_width = targets
            .iter()
            .map(|t| t.label().len())
            .chain(["TARGET".len()])
            .max()
            .unwrap_or(0);
        Renderer {
            out,
            json,
            colour,
            summarise,
            label_width,
            address_width: None,
            stats: Vec::new(),
        }
    }

    /// Whether any attempt was printed (Ctrl-C before the first round prints none).
    pub(crate) fn seen_any(&self) -> bool {
        !self.stats.is_empty()
    }

    /// Prints one round's attempts.
    pub(crate) fn attempts(&mut self, attempts: &[Attempt]) -> io::Result<()> {
        for attempt in attempts {
            self.count(attempt);
        }
        if self.json {
            for attempt in attempts {
                serde_json::to_writer(&mut self.out, &JsonAttempt::from(attempt))?;
                self.out.write_all(b"\n")?;
            }
            return self.out.flush();
        }
        if self.address_width.is_none() {
            let width = attempts
                .iter()
                .map(|a| address_text(a).len())
                .chain(["ADDRESS".len()])
                .max()
                .unwrap_or(0);
            self.address_width = Some(width);
            let header = format!(
                "{:<lw$}  {:<aw$}  {:<RESULT_WIDTH$}  {:>TIME_WIDTH$}  DETAIL",
                "TARGET",
                "ADDRESS",
                "RESULT",
                "TIME",
                lw = self.label_width,
                aw = width,
            );
            writeln!(self.out, "{}", self.paint(header.trim_end(), Paint::Dim))?;
        }
        for attempt in attempts {
            self.human(attempt)?;
        }
        self.out.flush()
    }

    /// Prints the summary lines (human output with `--count` above 1).
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        if self.json || !self.summarise {
            return Ok(());
        }
        let lines: Vec<(String, String, String)> = self
            .stats
            .iter()
            .map(|s| (s.label.clone(), s.address.clone(), s.summary()))
            .collect();
        for (label, address, summary) in lines {
            self.line(&label, &address, "summary", Paint::Dim, "", &summary)?;
        }
        self.out.flush()
    }

    fn count(&mut self, attempt: &Attempt) {
        let label = attempt.target.label();
        let address = address_text(attempt);
        let index = match self
            .stats
            .iter()
            .position(|s| s.label == label && s.address == address)
        {
            Some(index) => index,
            None => {
                self.stats.push(Stats {
                    label,
                    address,
                    attempts: 0,
                    open_times: Vec::new(),
                    failures: BTreeMap::new(),
                });
                self.stats.len() - 1
            }
        };
        let stats = &mut self.stats[index];
        stats.attempts += 1;
        if attempt.passed() {
            stats.open_times.push(attempt.elapsed);
        } else {
            *stats.failures.entry(attempt.outcome.as_str()).or_default() += 1;
        }
    }

    fn human(&mut self, attempt: &Attempt) -> io::Result<()> {
        let label = attempt.target.label();
        let address = address_text(attempt);
        let paint = match attempt.outcome {
            Outcome::Open => Paint::Good,
            // Refused is the expected answer before kube-apiserver starts.
            Outcome::Dial(DialErrorKind::Refused) => Paint::Warn,
            _ => Paint::Bad,
        };
        self.line(
            &label,
            &address,
            attempt.outcome.as_str(),
            paint,
            &elapsed(attempt.elapsed),
            &attempt.detail,
        )?;
        let mut facts: Vec<(&str, String)> = Vec::new();
        if !attempt.passed()
            && let Some(error) = &attempt.error
            && !attempt.detail.contains(error.as_str())
        {
            facts.push(("error", error.clone()));
        }
        // Certificates do not change between rounds: shown once.
        if attempt.seq == 1
            && let Some(tls) = &attempt.tls
        {
            tls_facts(tls, &mut facts);
        }
        if let Some(http) = &attempt.http {
            http_facts(http, &mut facts);
        }
        for (key, value) in facts {
            self.line(
                &label,
                &address,
                &format!("  {key}"),
                Paint::Dim,
                "",
                &value,
            )?;
        }
        Ok(())
    }

    fn line(
        &mut self,
        label: &str,
        address: &str,
        word: &str,
        paint: Paint,
        time: &str,
        detail: &str,
    ) -> io::Result<()> {
        let word = self.paint(&format!("{word:<RESULT_WIDTH$}"), paint);
        let line = format!(
            "{label:<lw$}  {address:<aw$}  {word}  {time:>TIME_WIDTH$}  {detail}",
            lw = self.label_width,
            aw = self.address_width.unwrap_or(0),
        );
        writeln!(self.out, "{}", line.trim_end())
    }

    fn paint(&self, text: &str, paint: Paint) -> String {
        if !self.colour {
            return text.to_owned();
        }
        let code = match paint {
            Paint::Good => "32",
            Paint::Warn => "33",
            Paint::Bad => "31",
            Paint::Dim => "2",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

#[derive(Debug, Clone, Copy)]
enum Paint {
    Good,
    Warn,
    Bad,
    Dim,
}

impl Stats {
    fn summary(&self) -> String {
        let open = self.open_times.len();
        let lost = self.attempts as usize - open;
        let percent = lost * 100 / (self.attempts.max(1) as usize);
        let mut text = format!(
            "{} attempts, {open} open, {lost} lost ({percent}%)",
            self.attempts
        );
        if !self.failures.is_empty() {
            let kinds: Vec<String> = self
                .failures
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect();
            text.push_str(&format!(": {}", kinds.join(", ")));
        }
        if let (Some(min), Some(max)) = (self.open_times.iter().min(), self.open_times.iter().max())
        {
            let total: Duration = self.open_times.iter().sum();
            let avg = total / u32::try_from(open).unwrap_or(u32::MAX);
            text.push_str(&format!(
                "; time min/avg/max {}/{}/{}",
                elapsed(*min),
                elapsed(avg),
                elapsed(*max)
            ));
        }
        text
    }
}

fn address_text(attempt: &Attempt) -> String {
    attempt
        .address
        .map_or_else(|| "-".to_owned(), |a| a.to_string())
}

fn tls_facts(tls: &TlsReport, facts: &mut Vec<(&str, String)>) {
    if tls.version.is_none() && tls.certificate.is_none() {
        return;
    }
    let mut session = Vec::new();
    if let Some(version) = &tls.version {
        session.push(version.clone());
    }
    if let Some(cipher) = &tls.cipher {
        session.push(cipher.clone());
    }
    if let Some(alpn) = &tls.alpn {
        session.push(format!("alpn {alpn}"));
    }
    session.push(match &tls.sni {
        Some(sni) => format!("sni {sni}"),
        None => "no sni".into(),
    });
    facts.push(("tls", session.join(", ")));
    if let Some(cert) = &tls.certificate {
        facts.push(("subject", cert.subject.clone()));
        facts.push(("issuer", cert.issuer.clone()));
        facts.push((
            "validity",
            format!("{} to {}", cert.not_before, cert.not_after),
        ));
        let sans = if cert.sans.is_empty() {
            "none".to_owned()
        } else {
            cert.sans.join(", ")
        };
        facts.push(("sans", sans));
    }
    if !tls.chain.is_empty() {
        facts.push(("chain", tls.chain.join(" < ")));
    }
    match tls.chain_verified {
        Some(true) => facts.push(("ca", "chain verified".into())),
        Some(false) => facts.push((
            "ca",
            format!(
                "chain NOT verified: {}",
                tls.chain_error.as_deref().unwrap_or("unknown")
            ),
        )),
        None => {}
    }
}

fn http_facts(http: &HttpReport, facts: &mut Vec<(&str, String)>) {
    facts.push((
        "http",
        format!("GET {} -> {} {}", http.path, http.status, http.reason),
    ));
    for check in &http.failed_checks {
        facts.push(("failing", check.clone()));
    }
}

/// The `--json` object of one attempt (DESIGN.md §3.2 fields first; every
/// key is always present, `null` when it does not apply).
#[derive(Serialize)]
struct JsonAttempt<'a> {
    target: &'a str,
    address: Option<String>,
    result: &'static str,
    elapsed_ms: f64,
    detail: &'a str,
    seq: u32,
    role: Option<&'static str>,
    name: Option<&'a str>,
    connect_ms: Option<f64>,
    hold_ms: Option<f64>,
    greeting: Option<&'a str>,
    error: Option<&'a str>,
    tls: Option<&'a TlsReport>,
    http: Option<&'a HttpReport>,
}

impl<'a> From<&'a Attempt> for JsonAttempt<'a> {
    fn from(attempt: &'a Attempt) -> JsonAttempt<'a> {
        JsonAttempt {
            target: &attempt.target.given,
            address: attempt.address.map(|a| a.to_string()),
            result: attempt.outcome.as_str(),
            elapsed_ms: millis(attempt.elapsed),
            detail: &attempt.detail,
            seq: attempt.seq,
            role: attempt.target.role.map(|r| r.as_str()),
            name: attempt.target.name.as_deref(),
            connect_ms: attempt.connect.map(millis),
            hold_ms: attempt.hold.map(millis),
            greeting: attempt.greeting.as_deref(),
            error: attempt.error.as_deref(),
            tls: attempt.tls.as_ref(),
            http: attempt.http.as_ref(),
        }
    }
}

/// Milliseconds with microsecond precision: loopback connects take ~0.05 ms.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_losses_by_kind_and_times_the_open_ones() {
        let mut failures = BTreeMap::new();
        failures.insert("refused", 1);
        let stats = Stats {
            label: "t".into(),
            address: "a".into(),
            attempts: 3,
            open_times: vec![Duration::from_micros(100), Duration::from_micros(300)],
            failures,
        };
        assert_eq!(
            stats.summary(),
            "3 attempts, 2 open, 1 lost (33%): refused 1; time min/avg/max 0.100ms/0.200ms/0.300ms"
        );
    }

    #[test]
    fn millis_keep_microseconds() {
        assert_eq!(millis(Duration::from_nanos(52_400)), 0.052);
        assert_eq!(millis(Duration::from_secs(3)), 3000.0);
    }
}
