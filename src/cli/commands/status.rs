//! `lbctl status`: the daemon's status as a table an operator reads at a glance.

use std::time::SystemTime;

use hyper::StatusCode;

use super::{EXIT_OK, EXIT_UNREACHABLE, refused, unreachable};
use crate::admin::status::Status;
use crate::cli::client::AdminClient;
use crate::util::clock;

/// `lbctl status`: a table of frontends, servers, states and counters.
pub async fn status(client: &AdminClient, json: bool) -> u8 {
    let answer = match client.get("/api/v1/status").await {
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
    match serde_json::from_slice::<Status>(&answer.body) {
        Ok(status) => {
            print!("{}", render_status(&status, SystemTime::now()));
            EXIT_OK
        }
        Err(err) => {
            eprintln!("lbctl: cannot read lbd's status: {err} (is lbctl older than lbd?)");
            EXIT_UNREACHABLE
        }
    }
}

/// The human form of a status: a summary per frontend, then one row per server.
pub fn render_status(status: &Status, now: SystemTime) -> String {
    let mut out = String::new();
    let reload = &status.config.last_reload;
    let when = ago(&reload.at, now);
    if reload.ok {
        out += &format!("config {}: loaded {when}\n", status.config.path);
    } else {
        out += &format!(
            "config {}: last reload FAILED {when}, still serving the previous config:\n  {}\n",
            status.config.path,
            reload.error.as_deref().unwrap_or("unknown error")
        );
    }
    for warning in &reload.warnings {
        out += &format!("  warning: {warning}\n");
    }
    for f in &status.frontends {
        out += &format!(
            "frontend {} on {}: {} active, {} total, {} rejected\n",
            f.name,
            f.listen.join(", "),
            f.active_connections,
            f.connections_total,
            f.rejected_total
        );
        for route in &f.routes {
            out += &format!(
                "  route {} → {}: {} total\n",
                route.sni, route.backend, route.connections_total
            );
        }
    }
    out.push('\n');

    let mut rows = vec![
        [
            "FRONTEND",
            "BACKEND",
            "SERVER",
            "ADDRESS",
            "STATE",
            "ACTIVE",
            "TOTAL",
            "LAST CHECK",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for backend in &status.backends {
        let users: Vec<&str> = status
            .frontends
            .iter()
            .filter(|f| f.backend == backend.name)
            .map(|f| f.name.as_str())
            .collect();
        let frontend = if users.is_empty() {
            "-".to_owned()
        } else {
            users.join(",")
        };
        if backend.servers.is_empty() {
            rows.push(vec![
                frontend.clone(),
                backend.name.clone(),
                "-".into(),
                "-".into(),
                "no address".into(),
                "0".into(),
                "0".into(),
                "-".into(),
            ]);
        }
        for server in &backend.servers {
            let last_check = match &server.last_check {
                None => "-".to_owned(),
                Some(check) => {
                    let mut text = format!(
                        "{} in {}ms, {}",
                        check.result,
                        trim_ms(check.elapsed_ms),
                        ago(&check.at, now)
                    );
                    if check.result != "ok" && !check.detail.is_empty() {
                        text += &format!(": {}", check.detail);
                    }
                    text
                }
            };
            rows.push(vec![
                frontend.clone(),
                backend.name.clone(),
                server.name.clone(),
                server.address.clone(),
                server.state.clone(),
                server.active_connections.to_string(),
                server.connections_total.to_string(),
                last_check,
            ]);
        }
    }
    out += &table(&rows);
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line += cell;
            } else {
                line += &format!("{cell:<width$}  ", width = widths[c]);
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

fn trim_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

/// "3s ago", "5m ago", "2h ago" from an RFC 3339 time.
fn ago(at: &str, now: SystemTime) -> String {
    let Some(then) = clock::parse_rfc3339(at) else {
        return at.to_owned();
    };
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        7200..=172_799 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::status::{
        BackendStatus, CheckStatus, ConfigStatus, FrontendStatus, LastReloadStatus, ServerStatus,
    };
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn renders_a_readable_table() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        let server = |name: &str, state: &str, check: Option<CheckStatus>| ServerStatus {
            name: name.into(),
            address: "10.0.0.1:6443".into(),
            source: "config".into(),
            health: "up".into(),
            admin: "ready".into(),
            state: state.into(),
            active_connections: 3,
            connections_total: 120,
            changed_at: "2023-11-14T22:14:00.000Z".into(),
            last_check: check,
        };
        let status = Status {
            config: ConfigStatus {
                path: "/etc/lbd/lbd.toml".into(),
                last_reload: LastReloadStatus {
                    ok: false,
                    error: Some("/etc/lbd/lbd.toml:3:1: bad".into()),
                    at: "2023-11-14T22:14:55.000Z".into(),
                    warnings: vec![],
                },
            },
            frontends: vec![FrontendStatus {
                name: "api".into(),
                listen: vec!["0.0.0.0:6443".into()],
                backend: "cp".into(),
                active_connections: 3,
                connections_total: 120,
                rejected_total: 0,
                paused: false,
                routes: vec![],
            }],
            backends: vec![BackendStatus {
                name: "cp".into(),
                discovery: None,
                servers: vec![
                    server(
                        "cp1",
                        "up",
                        Some(CheckStatus {
                            result: "ok".into(),
                            check: "tcp".into(),
                            elapsed_ms: 1.25,
                            at: "2023-11-14T22:14:58.000Z".into(),
                            detail: String::new(),
                        }),
                    ),
                    server("cp2", "draining", None),
                ],
            }],
        };
        let text = render_status(&status, now);
        assert!(text.contains("last reload FAILED 5s ago"), "{text}");
        assert!(text.contains("/etc/lbd/lbd.toml:3:1: bad"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.starts_with("FRONTEND"))
            .unwrap();
        assert_eq!(
            lines[header],
            "FRONTEND  BACKEND  SERVER  ADDRESS        STATE     ACTIVE  TOTAL  LAST CHECK"
        );
        assert_eq!(
            lines[header + 1],
            "api       cp       cp1     10.0.0.1:6443  up        3       120    ok in 1.2ms, 2s ago"
        );
        assert!(
            lines[header + 2].starts_with("api       cp       cp2 "),
            "{text}"
        );
        assert!(
            lines[header + 2].ends_with("draining  3       120    -"),
            "{text}"
        );
    }
}
