//! `lbctl rebalance BACKEND [--window DUR]`: start a rebalance now.

use std::time::Duration;

use hyper::StatusCode;

use super::{EXIT_OK, percent_encode, refused, unreachable};
use crate::cli::client::AdminClient;

/// `lbctl rebalance BACKEND`: asks lbd to close the connections above each
/// server's share, spread over `window` (default: the backend's
/// `rebalance`, else lbd's default), and prints what it will close.
pub async fn rebalance(
    client: &AdminClient,
    backend: &str,
    window: Option<Duration>,
    json: bool,
) -> u8 {
    let mut path = format!("/api/v1/backends/{}/rebalance", percent_encode(backend));
    if let Some(window) = window {
        path += &format!("?window={}", crate::config::format_duration(window));
    }
    let answer = match client.post(&path).await {
        Ok(answer) => answer,
        Err(err) => return unreachable(&err),
    };
    if answer.status != StatusCode::OK {
        return refused(&answer);
    }
    if json {
        print!("{}", answer.text());
        return EXIT_OK;
    }
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    let window = body["window"].as_str().unwrap_or("?");
    match body["note"].as_str() {
        Some(note) => println!("{backend}: {note}"),
        None => {
            println!(
                "{backend}: closing {} connection(s) over {window}:",
                body["closing"]
            );
            for s in body["servers"].as_array().into_iter().flatten() {
                println!(
                    "  {}: {} of its {} connections",
                    s["name"].as_str().unwrap_or("?"),
                    s["closing"],
                    s["active_connections"]
                );
            }
        }
    }
    EXIT_OK
}
