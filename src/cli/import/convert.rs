//! haproxy.cfg sections to lbd config blocks: `global`, `defaults` (applied
//! to the proxies after them), then frontends and backends, whose references
//! (default_backend, use_backend) are resolved once every section is read.

use std::collections::HashMap;
use std::time::Duration;

use super::Notes;
use super::health::health;
use super::parse::{File, Line, Section};
use super::proxy::{self, BackendDraft, FrontendDraft, not_imported};
use super::render::{Block, Server, Value};
use super::settings::{Outcome, Settings, duration, number};

/// What the conversion made.
#[derive(Debug, Default)]
pub(super) struct Converted {
    /// The lbd config blocks, in file order.
    pub blocks: Vec<Block>,
    /// Frontends imported.
    pub frontends: usize,
    /// Backends imported.
    pub backends: usize,
    /// Servers imported.
    pub servers: usize,
}

enum Item {
    Comments(Block),
    Frontend(FrontendDraft),
    Backend(BackendDraft),
}

/// Converts a parsed file; what does not carry over is noted.
pub(super) fn convert(file: &File, notes: &mut Notes) -> Converted {
    let mut items = Vec::new();
    if !file.stray.is_empty() {
        let mut block = Block::default();
        for line in &file.stray {
            not_imported(&mut block.comments, notes, line, "outside any section");
        }
        items.push(Item::Comments(block));
    }
    let mut global = Block {
        header: "[global]",
        ..Block::default()
    };
    let mut defaults = Settings::default();
    let mut named_defaults: HashMap<String, Settings> = HashMap::new();
    for section in &file.sections {
        match section.kind() {
            "global" => read_global(section, &mut global, notes),
            "defaults" => {
                let mut block = Block {
                    title: vec![format!(
                        "{} (line {}): applied to the sections below",
                        section.header.text, section.header.number
                    )],
                    ..Block::default()
                };
                defaults = base(section, &defaults, &named_defaults);
                for line in &section.lines {
                    match defaults.apply(line) {
                        Outcome::Imported => {}
                        Outcome::NotImported(reason) => {
                            not_imported(&mut block.comments, notes, line, &reason);
                        }
                        Outcome::Unknown => not_imported(
                            &mut block.comments,
                            notes,
                            line,
                            "no lbd equivalent (or not a TCP setting)",
                        ),
                    }
                }
                if !section.name().is_empty() {
                    named_defaults.insert(section.name().to_owned(), defaults.clone());
                }
                if !block.comments.is_empty() {
                    items.push(Item::Comments(block));
                }
            }
            "frontend" | "backend" | "listen" => {
                let drafts =
                    proxy::read(section, &base(section, &defaults, &named_defaults), notes);
                if !drafts.skipped.is_empty() {
                    items.push(Item::Comments(Block {
                        comments: drafts.skipped,
                        ..Block::default()
                    }));
                }
                items.extend(drafts.frontend.map(Item::Frontend));
                items.extend(drafts.backend.map(Item::Backend));
            }
            kind => {
                let mut block = Block::default();
                let reason = format!("a {kind} section: lbd has no equivalent");
                not_imported(&mut block.comments, notes, &section.header, &reason);
                for line in &section.lines {
                    block.comments.push(format!("not imported: {}", line.text));
                }
                items.push(Item::Comments(block));
            }
        }
    }

    let backends: HashMap<&str, &BackendDraft> = items
        .iter()
        .filter_map(|i| match i {
            Item::Backend(b) if !b.servers.is_empty() => Some((b.name.as_str(), b)),
            _ => None,
        })
        .collect();
    let mut out = Converted::default();
    if !global.keys.is_empty() || !global.comments.is_empty() {
        out.blocks.push(global);
    }
    for item in &items {
        let block = match item {
            Item::Comments(block) => block.clone(),
            Item::Frontend(f) => {
                let block = frontend(f, &backends, notes);
                out.frontends += usize::from(!block.header.is_empty());
                block
            }
            Item::Backend(b) => {
                let block = backend(b, notes);
                out.backends += usize::from(!block.header.is_empty());
                out.servers += b.servers.len();
                block
            }
        };
        out.blocks.push(block);
    }
    out
}

/// The settings a proxy or defaults section starts from: `from NAME`, or
/// the last defaults section before it.
fn base(section: &Section, last: &Settings, named: &HashMap<String, Settings>) -> Settings {
    let words = &section.header.words;
    match words.iter().position(|w| w == "from") {
        Some(at) => words
            .get(at + 1)
            .and_then(|name| named.get(name))
            .cloned()
            .unwrap_or_default(),
        None if section.kind() == "defaults" => Settings::default(),
        None => last.clone(),
    }
}

fn read_global(section: &Section, global: &mut Block, notes: &mut Notes) {
    for line in &section.lines {
        let value = line.word(1);
        let kept = match line.keyword() {
            "maxconn" => number(value)
                .ok()
                .filter(|n| (1..=10_000_000).contains(n))
                .map(|n| {
                    global.keys.push(("max_connections", Value::Int(n)));
                }),
            "hard-stop-after" => duration(value)
                .ok()
                .filter(|d| *d <= Duration::from_secs(86_400))
                .map(|d| global.keys.push(("drain_timeout", Value::Dur(d)))),
            "nbthread" => number(value)
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .map(|n| {
                    global.keys.push(("threads", Value::Int(n)));
                }),
            _ => None,
        };
        if kept.is_none() {
            let reason = match line.keyword() {
                "stats" => {
                    "lbd's admin API ([admin] listen, lbctl status, /metrics) takes its place"
                }
                "log" => "logging: lbd logs to stderr (journald under systemd)",
                "daemon" | "user" | "group" | "chroot" | "pidfile" => {
                    "process management: run lbd under systemd (contrib/lbd.service)"
                }
                _ => "no lbd equivalent",
            };
            not_imported(&mut global.comments, notes, line, reason);
        }
    }
}

fn title(header: &Line) -> Vec<String> {
    vec![format!("{} (line {})", header.text, header.number)]
}

fn clamp(
    d: Duration,
    lo: Duration,
    hi: Duration,
    what: String,
    line: usize,
    notes: &mut Notes,
) -> Duration {
    let used = d.clamp(lo, hi);
    if used != d {
        notes.push(
            line,
            format!("{what} {d:?} is outside lbd's range; {used:?} used"),
        );
    }
    used
}

fn min_of(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn frontend(
    f: &FrontendDraft,
    backends: &HashMap<&str, &BackendDraft>,
    notes: &mut Notes,
) -> Block {
    let s = &f.settings;
    let default = match s.default_backend.as_deref() {
        _ if f.listen.is_empty() => Err("none of its bind lines could be imported".to_owned()),
        Some(name) if backends.contains_key(name) => Ok(backends[name]),
        Some(name) => Err(format!("its default_backend {name} was not imported")),
        None => Err("it has no default_backend, and lbd sends every connection no route takes to the frontend's `backend`".to_owned()),
    };
    let default = match default {
        Ok(b) => b,
        Err(reason) => {
            notes.push(
                f.header.number,
                format!("frontend {} not imported: {reason}", f.name),
            );
            let mut comments = vec![format!("not imported: {reason}")];
            comments.extend(
                f.bind_lines
                    .iter()
                    .chain(f.routing_lines.iter())
                    .map(|l| format!("not imported: {}", l.text)),
            );
            comments.extend(
                f.rules
                    .iter()
                    .map(|(l, ..)| format!("not imported: {}", l.text)),
            );
            comments.extend(f.comments.iter().cloned());
            return Block {
                title: title(&f.header),
                comments,
                ..Block::default()
            };
        }
    };
    let mut comments = f.comments.clone();
    let mut routes = Vec::new();
    for (line, target, patterns) in &f.rules {
        match (patterns, backends.contains_key(target.as_str())) {
            (Ok(patterns), true) => {
                routes.extend(patterns.iter().map(|p| (p.clone(), target.clone())))
            }
            (Ok(_), false) => not_imported(
                &mut comments,
                notes,
                line,
                &format!("backend {target} was not imported"),
            ),
            (Err(reason), _) => not_imported(&mut comments, notes, line, reason),
        }
    }
    if routes.is_empty() {
        for line in &f.routing_lines {
            not_imported(
                &mut comments,
                notes,
                line,
                "only SNI routing conditions are imported",
            );
        }
    }

    let at = f.header.number;
    let mut keys = vec![
        ("name", Value::Str(f.name.clone())),
        ("listen", Value::List(f.listen.clone())),
        ("backend", Value::Str(default.name.clone())),
    ];
    if let Some(n) = s.maxconn {
        keys.push(("max_connections", Value::Int(n.clamp(1, 10_000_000))));
    }
    if let Some(n) = s.backlog {
        keys.push(("backlog", Value::Int(n.clamp(1, 65_535))));
    }
    let (second, day) = (Duration::from_secs(1), Duration::from_secs(86_400));
    if let Some(idle) = min_of(s.client, default.settings.server) {
        if s.client.is_some()
            && default.settings.server.is_some()
            && s.client != default.settings.server
        {
            notes.push(at, format!("frontend {}: `timeout client` and `timeout server` differ; lbd has one idle timeout in both directions, the shorter is used", f.name));
        }
        let idle = clamp(
            idle,
            second,
            7 * day,
            format!("frontend {}: idle timeout", f.name),
            at,
            notes,
        );
        keys.push(("idle_timeout", Value::Dur(idle)));
    }
    if let Some(fin) = min_of(s.client_fin, default.settings.server_fin) {
        let fin = clamp(
            fin,
            second,
            day,
            format!("frontend {}: fin timeout", f.name),
            at,
            notes,
        );
        keys.push(("fin_timeout", Value::Dur(fin)));
    }
    if !routes.is_empty() {
        keys.push(("routes", Value::Routes(routes)));
        if let Some((delay, _)) = &s.inspect_delay {
            keys.push(("inspect_timeout", Value::Dur(*delay)));
        }
    } else if let Some((_, line)) = s.inspect_delay.as_ref().filter(|(_, l)| l.number > at) {
        not_imported(
            &mut comments,
            notes,
            line,
            "lbd waits for the ClientHello only to route by SNI",
        );
    }
    if f.accept_proxy {
        keys.push(("accept_proxy", Value::Str("v2".into())));
        notes.push(at, format!("frontend {}: HAProxy's accept-proxy takes PROXY protocol v1 and v2; lbd takes the version set: \"v2\" was written, set \"v1\" if the proxy in front sends v1", f.name));
    }
    Block {
        title: title(&f.header),
        header: "[[frontend]]",
        keys,
        comments,
        health: None,
    }
}

fn backend(b: &BackendDraft, notes: &mut Notes) -> Block {
    let mut comments = b.comments.clone();
    if b.servers.is_empty() {
        let reason = "no server could be imported, and an lbd backend needs at least one";
        notes.push(
            b.header.number,
            format!("backend {} not imported: {reason}", b.name),
        );
        comments.insert(0, format!("not imported: {reason}"));
        return Block {
            title: title(&b.header),
            comments,
            ..Block::default()
        };
    }
    let s = &b.settings;
    let at = b.header.number;
    let mut keys = vec![("name", Value::Str(b.name.clone()))];
    if let Some(balance) = s.balance {
        keys.push(("balance", Value::Str(balance.into())));
    }
    if let Some(connect) = s.connect {
        let what = format!("backend {}: `timeout connect`", b.name);
        let connect = clamp(
            connect,
            Duration::from_millis(10),
            Duration::from_secs(300),
            what,
            at,
            notes,
        );
        keys.push(("connect_timeout", Value::Dur(connect)));
    }
    if let Some(retries) = s.retries {
        if retries > 16 {
            notes.push(
                at,
                format!(
                    "backend {}: retries {retries} is more than lbd's 16; 16 used",
                    b.name
                ),
            );
        }
        keys.push(("retries", Value::Int(retries.min(16))));
    }
    let proxies: Vec<_> = b.servers.iter().map(|(.., p)| p.send_proxy).collect();
    if let Some(version) = proxies.iter().flatten().next() {
        if proxies.iter().any(|p| p != &Some(*version)) {
            notes.push(at, format!("backend {}: lbd sends PROXY protocol to all servers of a backend or none; send_proxy = \"{version}\" was written for all", b.name));
        }
        keys.push(("send_proxy", Value::Str((*version).into())));
    }
    let servers = b
        .servers
        .iter()
        .map(|(_, name, address, params)| Server {
            name: name.clone(),
            address: address.clone(),
            weight: params.weight.unwrap_or(1).clamp(1, 1000),
        })
        .collect();
    keys.push(("servers", Value::Servers(servers)));
    let health = health(b, &mut comments, notes);
    Block {
        title: title(&b.header),
        header: "[[backend]]",
        keys,
        comments,
        health,
    }
}
