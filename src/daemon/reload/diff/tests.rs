use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::daemon::reload::Lookups;

const BASE: &str = r#"
[[frontend]]
name = "api"
listen = ["127.0.0.1:6443", "127.0.0.1:0"]
backend = "cp"

[[backend]]
name = "cp"
servers = [
  { name = "a", address = "10.0.0.1:6443" },
  { name = "b", address = "10.0.0.2:6443" },
]
"#;

fn desired(text: &str) -> Desired {
    let config = Config::parse(Path::new("lbd.toml"), text).unwrap();
    Desired::resolve(Arc::new(config), &Lookups::default(), None).0
}

/// What a daemon running `text` has bound.
fn bound(text: &str) -> Vec<BoundAddress> {
    desired(text)
        .config
        .frontends
        .iter()
        .flat_map(|f| {
            f.listen.iter().map(|&addr| BoundAddress {
                frontend: f.name.clone(),
                addr,
                backlog: f.backlog,
            })
        })
        .collect()
}

/// The plan from a daemon running `old` (all bound) to `new`.
fn plan(old: &str, new: &str) -> Plan {
    diff(&desired(old), &desired(new), &bound(old))
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn the_same_state_is_an_empty_plan() {
    let p = plan(BASE, BASE);
    assert!(p.is_empty(), "{p:?}");
    assert!(p.describe().is_empty());
}

#[test]
fn servers_added_removed_and_changed() {
    let new = BASE
        .replace(
            "{ name = \"a\", address = \"10.0.0.1:6443\" }",
            "{ name = \"a\", address = \"10.0.0.1:6443\", weight = 3 }",
        )
        .replace(
            "{ name = \"b\", address = \"10.0.0.2:6443\" },",
            "{ name = \"c\", address = \"10.0.0.3:6443\" },",
        );
    let p = plan(BASE, &new);
    assert_eq!(p.servers.added, pairs(&[("cp", "c")]));
    assert_eq!(p.servers.removed, pairs(&[("cp", "b")]));
    assert_eq!(p.servers.changed, pairs(&[("cp", "a")]));
    assert!(p.readdressed.is_empty(), "a weight change keeps the server");
    assert!(
        p.backends.is_empty(),
        "server edits are not backend setting changes"
    );
    assert!(p.rebuilds_pool("cp"));
    assert!(p.checks.is_empty(), "no health setting changed");
    assert_eq!(
        p.describe(),
        [
            "server cp/a changed: weight 1 → 3",
            "server cp/c added",
            "server cp/b removed",
        ]
    );
}

#[test]
fn a_new_address_starts_the_server_afresh() {
    let new = BASE.replace("10.0.0.1:6443", "10.0.0.9:6443");
    let p = plan(BASE, &new);
    assert_eq!(p.readdressed, pairs(&[("cp", "a")]));
    assert!(p.starts_server("cp", "a") && !p.starts_server("cp", "b"));
}

#[test]
fn every_backend_setting_is_a_change_on_no_server_included() {
    let new = BASE.replace(
        "name = \"cp\"\n",
        "name = \"cp\"\non_no_server = \"panic\"\n",
    );
    let p = plan(BASE, &new);
    assert_eq!(p.backends.changed, ["cp"]);
    assert_eq!(p.describe(), ["backend cp changed: on_no_server"]);
    assert!(p.rebuilds_pool("cp"));
    assert!(p.checks.is_empty());
}

#[test]
fn a_health_change_restarts_that_backend_s_checks() {
    let new = format!("{BASE}[backend.health]\ninterval = \"5s\"\n");
    let p = plan(BASE, &new);
    assert_eq!(p.checks, BTreeSet::from(["cp".to_owned()]));
    assert_eq!(p.describe(), ["backend cp changed: health (interval)"]);
}

#[test]
fn a_tls_file_whose_contents_changed_is_a_change_with_no_line_changed() {
    let dir = std::env::temp_dir().join(format!("lbd-diff-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.crt");
    let pem = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    };
    let text = format!("{BASE}[backend.health]\ncheck = \"tls\"\nca_file = {ca:?}\n");
    std::fs::write(&ca, pem("old")).unwrap();
    let before = desired(&text);
    std::fs::write(&ca, pem("new")).unwrap();
    let after = desired(&text);
    let running = bound(&text);
    let _ = std::fs::remove_dir_all(&dir);
    let p = diff(&before, &after, &running);
    assert_eq!(
        p.describe(),
        ["backend cp changed: health (ca_file contents)"]
    );
    assert_eq!(p.checks, BTreeSet::from(["cp".to_owned()]));
}

#[test]
fn listeners_that_stay_are_not_touched_and_a_backlog_change_relistens() {
    let new = BASE.replace(
        "listen = [\"127.0.0.1:6443\", \"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\", \"127.0.0.1:7443\"]\nbacklog = 64",
    );
    let p = plan(BASE, &new);
    let at = |a: &str| a.parse::<SocketAddr>().unwrap();
    assert_eq!(p.listeners.open, [("api".into(), at("127.0.0.1:7443"), 64)]);
    assert_eq!(p.listeners.close, [("api".into(), at("127.0.0.1:6443"))]);
    assert_eq!(
        p.listeners.relisten,
        [("api".into(), at("127.0.0.1:0"), 64)]
    );
    assert_eq!(p.frontends.changed, ["api"]);
    assert_eq!(
        p.describe(),
        [
            "frontend api changed: listen, backlog",
            "listener 127.0.0.1:7443 of api opened",
            "listener 127.0.0.1:6443 of api closed",
            "listener 127.0.0.1:0 of api listens with backlog 64",
        ]
    );
}

#[test]
fn an_address_that_is_not_bound_is_opened_again() {
    // The accept loop of 127.0.0.1:6443 could not start: it is not bound.
    let mut running = bound(BASE);
    running.retain(|b| b.addr.port() != 6443);
    let p = diff(&desired(BASE), &desired(BASE), &running);
    let at = "127.0.0.1:6443".parse().unwrap();
    assert_eq!(p.listeners.open, [("api".to_owned(), at, 4096)]);
    assert_eq!(p.describe(), ["listener 127.0.0.1:6443 of api opened"]);
}

#[test]
fn a_fixed_address_moving_between_frontends_is_handed_over() {
    let two = format!(
        "{BASE}\n[[frontend]]\nname = \"other\"\nlisten = [\"127.0.0.1:8443\"]\nbackend = \"cp\"\n"
    );
    let moved = two
        .replace("[\"127.0.0.1:6443\", \"127.0.0.1:0\"]", "[\"127.0.0.1:0\"]")
        .replace(
            "[\"127.0.0.1:8443\"]",
            "[\"127.0.0.1:8443\", \"127.0.0.1:6443\"]",
        );
    let p = plan(&two, &moved);
    let at = "127.0.0.1:6443".parse().unwrap();
    assert_eq!(
        p.listeners.hand_over,
        [("api".to_owned(), "other".to_owned(), at, 4096)]
    );
    assert!(p.listeners.open.is_empty() && p.listeners.close.is_empty());
}

#[test]
fn frontends_and_backends_added_removed_global_and_admin() {
    let new = format!(
        "[global]\ndrain_timeout = \"5s\"\n[admin]\nlisten = \"127.0.0.1:9000\"\n{BASE}\n\
         [[frontend]]\nname = \"extra\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"other\"\n\n\
         [[backend]]\nname = \"other\"\nservers = [{{ address = \"10.0.0.9:1\" }}]\n"
    );
    let p = plan(BASE, &new);
    assert_eq!(p.frontends.added, ["extra"]);
    assert_eq!(p.backends.added, ["other"]);
    assert_eq!(p.servers.added, pairs(&[("other", "10.0.0.9:1")]));
    assert!(p.checks.contains("other"));
    assert!(p.global_changed && p.admin_changed);
    assert!(
        p.describe()
            .contains(&"[global] changed: drain_timeout".to_owned())
    );
    assert!(p.describe().last().unwrap().contains("restart"));

    let back = plan(&new, BASE);
    assert_eq!(back.frontends.removed, ["extra"]);
    assert_eq!(back.backends.removed, ["other"]);
    assert_eq!(back.servers.removed, pairs(&[("other", "10.0.0.9:1")]));
    assert_eq!(back.listeners.close.len(), 1);
}

#[test]
fn process_settings_are_reported_as_taking_effect_at_restart() {
    let new = format!("[global]\nsplice = false\n{BASE}");
    let p = plan(BASE, &new);
    assert!(p.process_changed && !p.global_changed, "{p:?}");
    assert_eq!(
        p.describe(),
        ["[global] runtime, threads or splice changed: takes effect when lbd restarts"]
    );
}

#[test]
fn route_and_proxy_changes_are_reported() {
    let with_routes =
        format!("{BASE}\n[[backend]]\nname = \"b\"\nservers = [{{ address = \"127.0.0.1:2\" }}]\n")
            .replace(
                "backend = \"cp\"",
                "backend = \"cp\"\nroutes = [{ sni = \"a.example\", backend = \"b\" }]",
            );
    let base =
        format!("{BASE}\n[[backend]]\nname = \"b\"\nservers = [{{ address = \"127.0.0.1:2\" }}]\n");
    let p = plan(&base, &with_routes);
    assert_eq!(p.frontends.changed, ["api"]);
    assert_eq!(
        p.describe(),
        ["frontend api changed: routes (a.example → b added)"]
    );
    let moved = with_routes.replace("backend = \"b\" }", "backend = \"cp\" }");
    assert_eq!(
        plan(&with_routes, &moved).describe(),
        ["frontend api changed: routes (a.example → cp instead of b)"]
    );
    let proxied = base.replace(
        "backend = \"cp\"",
        "backend = \"cp\"\naccept_proxy = \"v2\"",
    );
    assert_eq!(
        plan(&base, &proxied).describe(),
        ["frontend api changed: accept_proxy"]
    );
}

#[test]
fn a_reordered_server_list_rebuilds_the_pool() {
    let new = BASE.replace(
        "  { name = \"a\", address = \"10.0.0.1:6443\" },\n  { name = \"b\", address = \"10.0.0.2:6443\" },",
        "  { name = \"b\", address = \"10.0.0.2:6443\" },\n  { name = \"a\", address = \"10.0.0.1:6443\" },",
    );
    assert_ne!(new, BASE);
    let p = plan(BASE, &new);
    assert!(p.rebuilds_pool("cp"));
    assert_eq!(
        p.describe(),
        ["backend cp changed: server list (order or names)"]
    );
}
