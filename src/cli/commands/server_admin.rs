//! `lbctl drain|enable|disable BACKEND/SERVER`, and `drain --wait`, which
//! reports the remaining connections until none is left.

use std::time::Duration;

use hyper::StatusCode;

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, refused, unreachable};
use crate::admin::status::Status;
use crate::cli::client::AdminClient;
use crate::config::is_address_of;

/// What `lbctl drain|enable|disable` asks of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// No new connections; live ones go on.
    Drain,
    /// Back to taking traffic.
    Enable,
    /// Maintenance: no traffic, no checks.
    Disable,
}

impl AdminAction {
    fn path_segment(self) -> &'static str {
        match self {
            AdminAction::Drain => "drain",
            AdminAction::Enable => "enable",
            AdminAction::Disable => "disable",
        }
    }
}

/// How `lbctl drain --wait` waits.
#[derive(Debug, Clone, Copy)]
pub struct DrainWait {
    /// Give up (exit 1, connections left alone) after this long.
    pub deadline: Option<Duration>,
    /// Time between looks at the remaining connections.
    pub poll: Duration,
}

/// Splits `BACKEND/SERVER`.
pub fn parse_target(target: &str) -> Result<(String, String), String> {
    match target.split_once('/') {
        Some((backend, server)) if !backend.is_empty() && !server.is_empty() => {
            Ok((backend.to_owned(), server.to_owned()))
        }
        _ => Err(format!(
            "{target:?} is not BACKEND/SERVER (e.g. control-plane/cp1; `lbctl status` lists them)"
        )),
    }
}

/// `lbctl drain|enable|disable BACKEND/SERVER`, and for drain `--wait`:
/// report the remaining connections until none is left.
pub async fn set_admin(
    client: &AdminClient,
    target: &str,
    action: AdminAction,
    wait: Option<DrainWait>,
    json: bool,
) -> u8 {
    let (backend, server) = match parse_target(target) {
        Ok(parts) => parts,
        Err(message) => {
            eprintln!("lbctl: {message}");
            return EXIT_USAGE;
        }
    };
    let path = format!(
        "/api/v1/backends/{}/servers/{}/{}",
        percent_encode(&backend),
        percent_encode(&server),
        action.path_segment()
    );
    let answer = match client.post(&path).await {
        Ok(answer) => answer,
        Err(err) => return unreachable(&err),
    };
    if answer.status != StatusCode::OK {
        return refused(&answer);
    }
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    if json {
        print!("{}", answer.text());
    } else {
        for s in body["servers"].as_array().into_iter().flatten() {
            println!(
                "{backend}/{}: {} (was {}), {} active connections",
                s["name"].as_str().unwrap_or("?"),
                s["state"].as_str().unwrap_or("?"),
                s["previous"].as_str().unwrap_or("?"),
                s["active_connections"]
            );
        }
    }
    match wait {
        Some(wait) if action == AdminAction::Drain => {
            wait_drained(client, &backend, &server, wait, json).await
        }
        _ => EXIT_OK,
    }
}

async fn wait_drained(
    client: &AdminClient,
    backend: &str,
    server: &str,
    wait: DrainWait,
    json: bool,
) -> u8 {
    let started = std::time::Instant::now();
    let mut last_reported = None;
    loop {
        let answer = match client.get("/api/v1/status").await {
            Ok(answer) => answer,
            Err(err) => return unreachable(&err),
        };
        let Ok(status) = serde_json::from_slice::<Status>(&answer.body) else {
            return refused(&answer);
        };
        let listed = status
            .backends
            .iter()
            .find(|b| b.name == backend)
            .map(|b| {
                b.servers
                    .iter()
                    .filter(|s| is_address_of(&s.name, server))
                    .map(|s| s.active_connections)
                    .collect::<Vec<u64>>()
            })
            .filter(|servers| !servers.is_empty());
        let Some(listed) = listed else {
            return gone(backend, server, json);
        };
        let remaining: u64 = listed.iter().sum();
        if remaining == 0 {
            if json {
                println!("{}", serde_json::json!({ "drained": true, "remaining": 0 }));
            } else {
                println!("{backend}/{server}: drained, no connection left");
            }
            return EXIT_OK;
        }
        if last_reported != Some(remaining) {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "drained": false, "remaining": remaining })
                );
            } else {
                println!("{backend}/{server}: {remaining} connections remaining");
            }
            last_reported = Some(remaining);
        }
        if let Some(deadline) = wait.deadline
            && started.elapsed() >= deadline
        {
            eprintln!(
                "lbctl: deadline of {} reached: {remaining} connections still open on {backend}/{server} (left open; lbd still drains it)",
                crate::config::format_duration(deadline)
            );
            return EXIT_FAILED;
        }
        tokio::time::sleep(wait.poll).await;
    }
}

/// The server left lbd's config while lbctl waited (a reload removed it or
/// its backend): its live connections go on, uncounted, so whether they
/// ended cannot be told. Says so and fails rather than claim "drained".
fn gone(backend: &str, server: &str, json: bool) -> u8 {
    let reason = format!(
        "{backend}/{server} is no longer in lbd's config (a reload removed it): its remaining connections, if any, \
         go on but are no longer counted, so lbctl cannot tell when they end"
    );
    if json {
        println!(
            "{}",
            serde_json::json!({ "drained": false, "gone": true, "reason": reason })
        );
    }
    eprintln!("lbctl: {reason}");
    EXIT_FAILED
}

/// Escapes a name for a URL path segment (everything but unreserved characters).
pub fn percent_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out += &format!("%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_encoding() {
        assert_eq!(parse_target("cp/a").unwrap(), ("cp".into(), "a".into()));
        assert!(parse_target("cp").is_err());
        assert!(parse_target("/a").is_err());
        assert_eq!(percent_encode("cp3@::1"), "cp3%40%3A%3A1");
        assert_eq!(
            crate::admin::routes::percent_decode(&percent_encode("x y/é@1")).as_deref(),
            Some("x y/é@1")
        );
    }
}
