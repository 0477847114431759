//! Whole-file imports: what lbd gets from typical haproxy.cfg files.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::haproxy_text;
use crate::config::{Balance, CheckKind};

fn import(text: &str) -> super::Imported {
    haproxy_text(Path::new("haproxy.cfg"), text, &HashMap::new())
}

#[test]
fn kubeadm_guide_config_imports_to_a_valid_config() {
    let text = "global\n    log /dev/log local0\n    daemon\n\
        defaults\n    mode http\n    option httplog\n    retries 1\n    timeout connect 5s\n    timeout client 20s\n    timeout server 20s\n    timeout http-request 10s\n\
        frontend apiserver\n    bind *:6443\n    mode tcp\n    option tcplog\n    default_backend apiserverbackend\n\
        backend apiserverbackend\n    option httpchk GET /healthz\n    http-check expect status 200\n    mode tcp\n    option ssl-hello-chk\n    balance     roundrobin\n\
        \x20       server cp1 10.0.0.11:6443 check\n        server cp2 10.0.0.12:6443 check verify none\n";
    let imported = import(text);
    let config = imported.validation.as_ref().expect("valid");
    let f = &config.frontends[0];
    assert_eq!(f.name, "apiserver");
    assert_eq!(f.listen, ["0.0.0.0:6443".parse().unwrap()]);
    assert_eq!(f.backend, "apiserverbackend");
    assert_eq!(f.idle_timeout, Duration::from_secs(20));
    let b = &config.backends[0];
    assert_eq!(b.retries, 1);
    assert_eq!(b.connect_timeout, Duration::from_secs(5));
    assert_eq!(b.balance, Balance::RoundRobin);
    // ssl-hello-chk comes last, so HAProxy does a TLS hello, not the GET.
    assert_eq!(b.health.check, CheckKind::Tls);
    assert_eq!(b.servers.len(), 2);
    for line in [
        "# not imported: option httpchk GET /healthz",
        "# not imported: http-check expect status 200",
        "# not imported: option httplog",
        "# not imported: timeout http-request 10s",
        "# not imported: log /dev/log local0",
        "# not imported: option tcplog",
    ] {
        assert!(imported.text.contains(line), "{line} in\n{}", imported.text);
    }
}

#[test]
fn sni_rules_defaults_weights_and_proxy_protocol() {
    let text = r#"
defaults
    mode tcp
    timeout connect 3s
    timeout client 1h
    timeout server 1h
    timeout client-fin 30s
    maxconn 5000
    default-server inter 1s fall 2 rise 3
frontend tls
    bind :443 accept-proxy
    tcp-request inspect-delay 5s
    tcp-request content accept if { req_ssl_hello_type 1 }
    acl lab_c req.ssl_sni -m end .lab-c.example
    use_backend lab-b if { req.ssl_sni -i api.lab-b.example }
    use_backend lab-c if lab_c
    use_backend lab-d if { src 10.0.0.0/8 }
    default_backend lab-a
backend lab-a
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    server a1 10.0.1.1:6443 check check-ssl weight 3 maxconn 100
    server a2 10.0.1.2:6443 check check-ssl backup
backend lab-b
    balance source
    server b1 10.0.2.1:6443 check send-proxy-v2
backend lab-c
    balance random(2)
    retries 5
    server c1 lab-c.internal:6443 check port 6444
backend lab-d
    mode http
    server d1 10.0.4.1:80
"#;
    let imported = import(text);
    let t = &imported.text;
    assert!(
        t.contains(
            "routes = [\n  { sni = \"api.lab-b.example\", backend = \"lab-b\" },\n  { sni = \"*.lab-c.example\", backend = \"lab-c\" },\n]"
        ),
        "{t}"
    );
    assert!(t.contains("inspect_timeout = \"5s\""), "{t}");
    assert!(t.contains("accept_proxy = \"v2\""), "{t}");
    assert!(t.contains("send_proxy = \"v2\""), "{t}");
    assert!(t.contains("backend = \"lab-a\""), "{t}");
    assert!(t.contains("max_connections = 5000"), "{t}");
    assert!(t.contains("idle_timeout = \"1h\""), "{t}");
    assert!(t.contains("fin_timeout = \"30s\""), "{t}");
    assert!(t.contains("balance = \"least-connections\""), "{t}");
    assert!(t.contains("balance = \"source-hash\""), "{t}");
    assert!(t.contains("balance = \"random-two\""), "{t}");
    assert!(t.contains("{ name = \"a1\", address = \"10.0.1.1:6443\", weight = 3 }"));
    assert!(
        t.contains("check = \"https\"\npath = \"/readyz\"\ninterval = \"1s\"\nrise = 3\nfall = 2"),
        "{t}"
    );
    assert!(t.contains("port = 6444"), "{t}");
    assert!(t.contains("# not imported: server a2 10.0.1.2:6443 check check-ssl backup"));
    assert!(t.contains("# partly imported: server a1 10.0.1.1:6443 check check-ssl weight 3 maxconn 100 (dropped: maxconn 100)"), "{t}");
    assert!(
        t.contains("# not imported: use_backend lab-d if { src 10.0.0.0/8 }"),
        "{t}"
    );
    assert!(
        t.contains("# not imported: backend lab-d (line 32): mode http"),
        "{t}"
    );
    assert!(!t.contains("# not imported: tcp-request"), "{t}");
    assert!(!t.contains("# not imported: acl"), "{t}");
    assert_eq!(imported.counts, (1, 3, 3));
    // Without the SNI and PROXY keys, the rest is a valid lbd config.
    let without: String = t
        .lines()
        .filter(|l| {
            !["accept_proxy", "send_proxy", "inspect_timeout"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let without = without.replace(
        "routes = [\n  { sni = \"api.lab-b.example\", backend = \"lab-b\" },\n  { sni = \"*.lab-c.example\", backend = \"lab-c\" },\n]\n",
        "",
    );
    crate::config::Config::parse(Path::new("x"), &without).expect("valid apart from the new keys");
}

#[test]
fn frontends_without_a_usable_backend_are_left_out_and_make_it_unusable() {
    let imported = import("frontend f\n    bind :80\n    default_backend missing\n");
    assert!(!imported.usable());
    assert!(
        imported.text.contains("# not imported: bind :80"),
        "{}",
        imported.text
    );
    assert!(
        imported
            .notes
            .iter()
            .any(|n| n.line == 1 && n.message.contains("missing"))
    );
}

#[test]
fn listen_sections_are_a_frontend_and_a_backend() {
    let imported = import(
        "listen api\n    bind 127.0.0.1:6443,[::1]:6443\n    balance first\n    server s1 10.0.0.1:6443\n",
    );
    let config = imported.validation.as_ref().expect("valid");
    assert_eq!(config.frontends[0].backend, "api");
    assert_eq!(config.frontends[0].listen.len(), 2);
    assert_eq!(config.backends[0].balance, Balance::First);
    assert!(
        imported
            .notes
            .iter()
            .any(|n| n.message.contains("no server has `check`"))
    );
}
