//! A backend's HAProxy checks (`check` on servers, `option httpchk`,
//! `option ssl-hello-chk`, `inter`/`fall`/`rise`/`port`) as `[backend.health]`.

use std::time::Duration;

use super::Notes;
use super::proxy::{BackendDraft, not_imported};
use super::render::Value;
use super::settings::CheckOption;

/// `[backend.health]` keys, or `None` when HAProxy checks no server (lbd's
/// default TCP check then applies). Lines that do not carry over become comments.
pub(super) fn health(
    backend: &BackendDraft,
    comments: &mut Vec<String>,
    notes: &mut Notes,
) -> Option<Vec<(&'static str, Value)>> {
    let s = &backend.settings;
    let checked: Vec<_> = backend.servers.iter().filter(|(.., p)| p.check).collect();
    let Some((first_line, _, _, first)) = checked.first() else {
        if !backend.servers.is_empty() {
            notes.push(
                backend.header.number,
                format!(
                    "backend {}: no server has `check`, so HAProxy does not check them; lbd checks every server (by default a TCP connect every 2s)",
                    backend.name
                ),
            );
        }
        return None;
    };
    if let Some((line, ..)) = checked.iter().skip(1).find(|(.., p)| {
        (
            p.inter,
            p.fastinter,
            p.rise,
            p.fall,
            p.port,
            p.check_ssl,
            &p.check_sni,
        ) != (
            first.inter,
            first.fastinter,
            first.rise,
            first.fall,
            first.port,
            first.check_ssl,
            &first.check_sni,
        )
    }) {
        notes.push(
            line.number,
            format!(
                "backend {}: lbd checks all servers of a backend alike; the check settings of line {} were used",
                backend.name, first_line.number
            ),
        );
    }

    let mut keys = Vec::new();
    let check = match &s.check {
        Some(CheckOption::Http { path, .. }) if first.check_ssl => {
            keys.push(("path", Value::Str(path.clone())));
            "https"
        }
        Some(CheckOption::Http { line, .. }) => {
            not_imported(
                comments,
                notes,
                line,
                "HAProxy sends this check as plain HTTP, and lbd's HTTP check (`https`) speaks TLS: the servers get a TCP check; with TLS servers set check = \"https\" and path",
            );
            "tcp"
        }
        Some(CheckOption::SslHello { .. }) => "tls",
        Some(CheckOption::Tcp { .. }) | None if first.check_ssl => "tls",
        Some(CheckOption::Tcp { .. }) | None => "tcp",
    };
    for line in &s.http_check {
        let expects_2xx = line.word(1) == "expect"
            && ((line.word(2) == "status"
                && line.word(3).starts_with('2')
                && line.word(3).len() == 3)
                || (line.word(2) == "rstatus" && line.word(3).starts_with("^2")));
        if check == "https" && expects_2xx {
            continue;
        }
        let reason = if check == "https" {
            "lbd's https check sends GET and expects a 2xx status"
        } else {
            "http-check applies to `option httpchk`, which is not the check in force"
        };
        not_imported(comments, notes, line, reason);
    }
    keys.insert(0, ("check", Value::Str(check.into())));

    let mut clamp = |d: Duration, lo: Duration, hi: Duration, key: &str| {
        let used = d.clamp(lo, hi);
        if used != d {
            notes.push(
                first_line.number,
                format!(
                    "backend {}: health `{key}` {d:?} is outside lbd's range; {used:?} used",
                    backend.name
                ),
            );
        }
        used
    };
    let interval = first.inter.map(|d| {
        clamp(
            d,
            Duration::from_millis(100),
            Duration::from_secs(3600),
            "interval",
        )
    });
    if let Some(interval) = interval {
        keys.push(("interval", Value::Dur(interval)));
    }
    if let Some(fast) = first.fastinter {
        let fast = clamp(
            fast,
            Duration::from_millis(100),
            interval.unwrap_or(Duration::from_secs(2)),
            "fast_interval",
        );
        keys.push(("fast_interval", Value::Dur(fast)));
    }
    if let Some(timeout) = s.check_timeout {
        let timeout = clamp(
            timeout,
            Duration::from_millis(10),
            Duration::from_secs(300),
            "timeout",
        );
        keys.push(("timeout", Value::Dur(timeout)));
    }
    for (key, value) in [("rise", first.rise), ("fall", first.fall)] {
        if let Some(n) = value {
            keys.push((key, Value::Int(n.clamp(1, 100))));
        }
    }
    if let Some(port) = first.port.filter(|p| (1..=65_535).contains(p)) {
        keys.push(("port", Value::Int(port)));
    }
    if let Some(sni) = first.check_sni.as_ref().filter(|_| check != "tcp") {
        keys.push(("sni", Value::Str(sni.clone())));
    }
    if first.shutdown_on_down {
        keys.push(("close_on_down", Value::Dur(Duration::ZERO)));
    }
    Some(keys)
}
