//! The `lbctl` subcommands that talk to a running daemon: each prints what
//! an operator needs and returns the process exit code.

use std::time::Duration;

use hyper::StatusCode;

use super::client::{AdminClient, ClientError};

/// How long one admin request may take before lbctl gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit codes: 0 success, 1 the daemon said no (not ready, reload failed…),
/// 2 the daemon could not be asked at all.
pub const EXIT_OK: u8 = 0;
/// The daemon answered, and the answer is a failure.
pub const EXIT_FAILED: u8 = 1;
/// The daemon could not be reached or gave a broken answer.
pub const EXIT_UNREACHABLE: u8 = 2;

fn unreachable(err: &ClientError) -> u8 {
    eprintln!("lbctl: {err}");
    EXIT_UNREACHABLE
}

/// `lbctl ready`: exit 0 iff `GET /readyz` is 200; otherwise print why.
/// Meant for keepalived's `vrrp_script`.
pub async fn ready(client: &AdminClient, json: bool) -> u8 {
    let answer = match client.get("/readyz").await {
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
