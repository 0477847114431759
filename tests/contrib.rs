//! What `contrib/` ships for Prometheus users holds together with the lbd
//! it comes with: the Grafana dashboard and the alert rules query only
//! metrics and labels a real lbd's `/metrics` has, every alert's runbook
//! link names a section of docs/alerts.md, and `promtool` (Debian's
//! `prometheus` package) accepts the rules and passes their unit tests.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{Backend, Lbd, config_for, greeting};

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every metric name in `/metrics` of a running lbd that has carried a
/// connection, and every label name.
fn scraped_names() -> (BTreeSet<String>, BTreeSet<String>) {
    let a = Backend::named("a");
    let lbd = Lbd::start(&config_for(&[&a], "", ""));
    greeting(lbd.addr("api")).unwrap();
    let samples = lbd.metrics();
    let names = samples.iter().map(|s| s.name.clone()).collect();
    let labels = samples
        .iter()
        .flat_map(|s| s.labels.keys().cloned())
        .collect();
    (names, labels)
}

/// The identifiers in a PromQL expression that name lbd's metrics (lbd_*
/// and the process_* family it exports).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if word(bytes[i]) && (i == 0 || !word(bytes[i - 1])) {
            let end = (i..bytes.len())
                .find(|&j| !word(bytes[j]))
                .unwrap_or(bytes.len());
            let name = &expr[i..end];
            if name.starts_with("lbd_") || name.starts_with("process_") {
                names.insert(name.to_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Label names a PromQL expression groups by or matches on.
fn label_names(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for part in expr.split(['{', '(', ',']) {
        let part = part.trim_start();
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let rest = part[name.len()..].trim_start();
        let is_matcher = ["=~", "!~", "!=", "="]
            .iter()
            .any(|op| rest.starts_with(op));
        let is_grouping = rest.starts_with(',') || rest.starts_with(')');
        if !name.is_empty() && (is_matcher || is_grouping) && !name.starts_with("lbd_") {
            labels.insert(name);
        }
    }
    labels
}

/// Every `expr` and variable query in the dashboard.
fn queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", Value::String(query)) => out.push(query.clone()),
                    _ => queries(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// Labels Prometheus adds to every scraped series, and PromQL's own.
const NOT_LBD_LABELS: [&str; 3] = ["instance", "job", "le"];

#[test]
fn the_dashboard_and_rules_use_only_what_lbd_exports() {
    let (exported, exported_labels) = scraped_names();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(contrib("contrib/grafana/lbd.json")).unwrap(),
    )
    .expect("contrib/grafana/lbd.json is valid JSON");

    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    let rules = std::fs::read_to_string(contrib("contrib/prometheus/lbd-rules.yml")).unwrap();
    let rule_exprs: Vec<String> = rules
        .split("expr:")
        .skip(1)
        .map(|rest| rest.split("labels:").next().unwrap().to_owned())
        .collect();
    assert_eq!(rule_exprs.len(), rules.matches("- alert:").count());

    for (file, exprs) in [("lbd.json", &exprs), ("lbd-rules.yml", &rule_exprs)] {
        let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics lbd does not export: {unknown:?}\n(exported: {exported:?})"
        );
        let labels: BTreeSet<String> = exprs.iter().flat_map(|e| label_names(e)).collect();
        let unknown: Vec<&String> = labels
            .iter()
            .filter(|l| !exported_labels.contains(*l) && !NOT_LBD_LABELS.contains(&l.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} uses labels lbd's metrics do not have: {unknown:?}"
        );
    }

    // The dashboard covers what the issue asked for.
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for family in [
        "lbd_frontend_connections_total",
        "lbd_frontend_active_connections",
        "lbd_frontend_rejected_total",
        "lbd_server_up",
        "lbd_server_health",
        "lbd_server_transitions_total",
        "lbd_server_connect_errors_total",
        "lbd_connect_duration_seconds_bucket",
        "lbd_health_check_duration_seconds_bucket",
        "lbd_server_bytes_total",
        "lbd_config_reloads_total",
    ] {
        assert!(
            used.contains(family),
            "the dashboard has no panel on {family}"
        );
    }
    // A datasource variable, and frontend and backend variables that
    // every panel's data source and queries follow.
    let variables: Vec<(&str, &str)> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["type"].as_str().unwrap()))
        .collect();
    for wanted in [
        ("datasource", "datasource"),
        ("frontend", "query"),
        ("backend", "query"),
    ] {
        assert!(variables.contains(&wanted), "{wanted:?} in {variables:?}");
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr);
            let per_frontend = names.iter().any(|n| n.starts_with("lbd_frontend_"));
            let per_server = names.iter().any(|n| {
                ["lbd_server_", "lbd_connect_", "lbd_health_check"]
                    .iter()
                    .any(|p| n.starts_with(p))
            });
            assert!(
                (!per_frontend || expr.contains("$frontend"))
                    && (!per_server || expr.contains("$backend")),
                "{}: {expr} ignores the frontend/backend variables",
                panel["title"]
            );
        }
    }
}

#[test]
fn every_alert_has_a_summary_and_a_runbook_section() {
    let rules = std::fs::read_to_string(contrib("contrib/prometheus/lbd-rules.yml")).unwrap();
    let runbook = std::fs::read_to_string(contrib("docs/alerts.md")).unwrap();
    // GitHub's anchors: the heading in lower case.
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase().replace(' ', "-"))
        .collect();
    let alerts: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert!(alerts.len() >= 6, "{} alerts", alerts.len());
    for alert in alerts {
        let name = alert.lines().next().unwrap().trim();
        let summary = alert
            .lines()
            .find_map(|l| l.trim().strip_prefix("summary: "))
            .unwrap_or_else(|| panic!("{name} has no summary"));
        assert!(
            summary.contains("$labels.instance"),
            "{name}'s summary names the lbd: {summary}"
        );
        let link = alert
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: "))
            .unwrap_or_else(|| panic!("{name} has no runbook_url"));
        let anchor = link
            .trim_matches('"')
            .strip_prefix("docs/alerts.md#")
            .unwrap_or_else(|| panic!("{name}: {link} is not a docs/alerts.md section"));
        assert_eq!(
            anchor,
            name.to_lowercase(),
            "{name}'s runbook is its own section"
        );
        assert!(
            anchors.contains(anchor),
            "{name}: docs/alerts.md has no section #{anchor} ({anchors:?})"
        );
    }
}

/// `promtool` from Debian's prometheus package: outside CI a missing one
/// skips the test, in CI it fails it (`.ci/run` installs it).
fn promtool() -> Option<&'static str> {
    let present = Command::new("promtool").arg("--version").output().is_ok();
    if present {
        return Some("promtool");
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "promtool is missing in CI: .ci/run should have installed the prometheus package"
    );
    eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus)");
    None
}

#[test]
fn promtool_accepts_the_rules_and_their_tests_pass() {
    let Some(promtool) = promtool() else {
        return;
    };
    let tests = std::fs::read_to_string(contrib("contrib/prometheus/lbd-rules.test.yml")).unwrap();
    for alert in ["LbdNoHealthyServer", "LbdServerDown"] {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "the rule tests cover {alert}"
        );
    }
    for args in [
        ["check", "rules", "lbd-rules.yml"],
        ["test", "rules", "lbd-rules.test.yml"],
    ] {
        let out = Command::new(promtool)
            .args(args)
            .current_dir(contrib("contrib/prometheus"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
