//! The `lbctl` subcommands: each prints what an operator needs and returns
//! the process exit code.
//!
//! - [`status`]: `lbctl status`, the table.
//! - [`server_admin`]: `lbctl drain|enable|disable`, with `drain --wait`.
//! - [`rebalance()`]: `lbctl rebalance BACKEND`.
//! - here: `ready`, `reload`, `check-config`.

mod rebalance;
mod server_admin;
mod status;

pub use rebalance::rebalance;
pub use server_admin::{AdminAction, DrainWait, parse_target, percent_encode, set_admin};
pub use status::{render_status, status};

use std::time::Duration;

use hyper::StatusCode;

use super::client::{AdminClient, Answer, ClientError};

/// How long one admin request may take before lbctl gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit codes: 0 success, 1 the daemon said no (not ready, reload failed…),
/// 2 the daemon could not be asked at all, or the command line is wrong.
pub const EXIT_OK: u8 = 0;
/// The daemon answered, and the answer is a failure.
pub const EXIT_FAILED: u8 = 1;
/// The daemon could not be reached or gave a broken answer.
pub const EXIT_UNREACHABLE: u8 = 2;
/// The command line is wrong (clap's own usage errors exit 2 as well).
pub const EXIT_USAGE: u8 = 2;

/// Prints why the daemon could not be asked; returns the matching code.
fn unreachable(err: &ClientError) -> u8 {
    eprintln!("lbctl: {err}");
    EXIT_UNREACHABLE
}

/// `lbctl ready [--frontend NAME]`: exit 0 iff `GET /readyz` is 200 (for
/// one frontend: `GET /readyz?frontend=NAME`); otherwise print why. Meant
/// for keepalived's `vrrp_script`, which should ask about the apiserver's
/// frontend alone: another frontend's trouble is no reason to move the VIP.
pub async fn ready(client: &AdminClient, frontend: Option<&str>, json: bool) -> u8 {
    let path = match frontend {
        Some(name) => format!("/readyz?frontend={}", percent_encode(name)),
        None => "/readyz".to_owned(),
    };
    let answer = match client.get(&path).await {
        Ok(answer) => answer,
        Err(err) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "ready": false, "reason": err.to_string() })
                );
            }
            return unreachable(&err);
        }
    };
    if answer.status == StatusCode::NOT_FOUND {
        // No such frontend: a check that can never pass, say so loudly.
        if json {
            println!(
                "{}",
                serde_json::json!({ "ready": false, "reason": answer.text().trim() })
            );
        }
        return refused(&answer);
    }
    let ready = answer.status == StatusCode::OK;
    let reason = answer.text().trim().to_owned();
    if json {
        println!(
            "{}",
            serde_json::json!({ "ready": ready, "reason": reason })
        );
    } else if ready {
        println!("{reason}");
    } else {
        eprintln!("lbctl: {reason}");
    }
    if ready { EXIT_OK } else { EXIT_FAILED }
}

/// `lbctl check-config PATH` and `lbd --check-config PATH`: validate a file,
/// print a summary and the timing lint's warnings, or every error.
/// Warnings do not fail the check.
pub fn check_config(path: &std::path::Path, json: bool) -> u8 {
    match crate::config::Config::load_with_warnings(path) {
        Ok(checked) => {
            if json {
                let warnings: Vec<String> = checked.warnings.iter().map(|w| w.one_line()).collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true,
                        "summary": checked.config.summary(),
                        "warnings": warnings,
                    })
                );
            } else {
                for warning in &checked.warnings {
                    eprintln!("warning: {warning}");
                }
                println!("{}: OK: {}", path.display(), checked.config.summary());
            }
            EXIT_OK
        }
        Err(err) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "error": err.summary(), "detail": err.to_string() })
                );
            }
            eprintln!("{err}");
            EXIT_FAILED
        }
    }
}

/// Prints the daemon's error answer and returns the failure code.
fn refused(answer: &Answer) -> u8 {
    let message = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| answer.text().trim().to_owned());
    eprintln!("lbctl: lbd answered {}: {message}", answer.status);
    EXIT_FAILED
}

/// `lbctl reload`: reload the daemon's config file; print the error with its
/// location and exit 1 when the file is refused.
pub async fn reload(client: &AdminClient, json: bool) -> u8 {
    let answer = match client.post("/api/v1/reload").await {
        Ok(answer) => answer,
        Err(err) => return unreachable(&err),
    };
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    if json {
        print!("{}", answer.text());
    }
    if answer.status == StatusCode::OK {
        if !json {
            let changes = body["changes"].as_array().cloned().unwrap_or_default();
            if changes.is_empty() {
                println!("reloaded: nothing changed");
            } else {
                println!("reloaded:");
                for change in changes {
                    println!("  {}", change.as_str().unwrap_or_default());
                }
            }
            for warning in body["warnings"].as_array().into_iter().flatten() {
                eprintln!("warning: {}", warning.as_str().unwrap_or_default());
            }
        }
        return EXIT_OK;
    }
    if body.get("ok").is_some() {
        let detail = body["detail"]
            .as_str()
            .or(body["error"].as_str())
            .unwrap_or("unknown error");
        eprintln!("lbctl: reload refused; lbd keeps the running config:\n{detail}");
        EXIT_FAILED
    } else {
        refused(&answer)
    }
}
