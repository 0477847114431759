//! What a change of desired state changes: the one pure comparison of the
//! running [`Desired`] (and the sockets actually bound) with a new one. A
//! reload, a DNS answer and (later) cluster discovery all end here; the
//! daemon's `apply` carries the [`Plan`] out, and its report is
//! [`Plan::describe`], so what is reported is what is applied.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::desired::{Desired, DesiredServer};
use crate::config::{Backend, Config, FileContents, Frontend, Global, Health, SniRoute};

/// A listening socket as the daemon holds it: bound, with an accept loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundAddress {
    /// The frontend it feeds.
    pub frontend: String,
    /// The address as configured (port 0 stays 0).
    pub addr: SocketAddr,
    /// The accept queue length it listens with.
    pub backlog: u32,
}

/// Names added, removed and changed (present in both, with different settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<T> {
    /// Only in the new state.
    pub added: Vec<T>,
    /// Only in the old state.
    pub removed: Vec<T>,
    /// In both, with different settings.
    pub changed: Vec<T>,
}

impl<T> Default for Changes<T> {
    fn default() -> Self {
        Changes {
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
        }
    }
}

impl<T: PartialEq> Changes<T> {
    /// Whether nothing was added, removed or changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Whether `item` is added or changed.
    pub fn touches(&self, item: &T) -> bool {
        self.added.contains(item) || self.changed.contains(item)
    }
}

/// What the listening sockets need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerChanges {
    /// (frontend, address, backlog) to bind and serve.
    pub open: Vec<(String, SocketAddr, u32)>,
    /// (frontend, address) to stop serving and close.
    pub close: Vec<(String, SocketAddr)>,
    /// A fixed address moving between frontends keeps its socket:
    /// (from, to, address, backlog).
    pub hand_over: Vec<(String, String, SocketAddr, u32)>,
    /// An address that stays whose accept queue length changes:
    /// (frontend, address, backlog).
    pub relisten: Vec<(String, SocketAddr, u32)>,
}

/// Every change from one desired state to the next: what `apply` does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Frontends by name; `changed` means any setting (route, limits, timeouts, backlog).
    pub frontends: Changes<String>,
    /// The listening sockets, compared with those actually bound.
    pub listeners: ListenerChanges,
    /// Backends by name; `changed` means a setting other than the server list.
    pub backends: Changes<String>,
    /// Servers as (backend, server name); `changed` means address or weight.
    pub servers: Changes<(String, String)>,
    /// Servers whose address changed: they start afresh (a new check, no counters).
    pub readdressed: Vec<(String, String)>,
    /// Backends whose health checks start afresh (new, or `[backend.health]`
    /// changed, the contents of its TLS files included).
    pub checks: BTreeSet<String>,
    /// `[global]` changed (the connection limit and intervals apply at once).
    pub global_changed: bool,
    /// `[admin]` changed: it takes effect only at the next start.
    pub admin_changed: bool,
    /// `[global]` `runtime`, `threads` or `splice` changed: they take effect
    /// only at the next start.
    pub process_changed: bool,
    /// One line per change, in the order above.
    lines: Vec<String>,
}

impl Plan {
    /// Whether the two states are the same and every socket is bound.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// One short line per change, for logs and the reload answer.
    pub fn describe(&self) -> Vec<String> {
        self.lines.clone()
    }

    /// Whether the pool of `backend` must be built anew: the backend is new,
    /// its settings changed, or a server of it came, went or changed.
    pub fn rebuilds_pool(&self, backend: &str) -> bool {
        let name = backend.to_owned();
        self.backends.touches(&name)
            || [
                &self.servers.added,
                &self.servers.removed,
                &self.servers.changed,
            ]
            .iter()
            .any(|list| list.iter().any(|(b, _)| b == backend))
    }

    /// Whether server `name` of `backend` starts afresh (new, or readdressed).
    pub fn starts_server(&self, backend: &str, name: &str) -> bool {
        let key = (backend.to_owned(), name.to_owned());
        self.servers.added.contains(&key) || self.readdressed.contains(&key)
    }
}

/// Compares the running desired state (and the sockets `bound`) with a new
/// one. Pure: no I/O, no clock.
pub fn diff(old: &Desired, new: &Desired, bound: &[BoundAddress]) -> Plan {
    let mut plan = Plan::default();
    let (before, after) = (&*old.config, &*new.config);

    plan.frontends = by_name(
        &before.frontends,
        &after.frontends,
        |f| &f.name,
        |a, b| a != b,
    );
    for (name, old_f, new_f) in pairs(&before.frontends, &after.frontends, |f| &f.name) {
        if old_f != new_f {
            plan.lines.push(format!(
                "frontend {name} changed: {}",
                frontend_fields(old_f, new_f).join(", ")
            ));
        }
    }
    added_removed(&mut plan.lines, "frontend", &plan.frontends);

    plan.listeners = listeners(after, bound);
    describe_listeners(&mut plan.lines, &plan.listeners);

    plan.backends = by_name(
        &before.backends,
        &after.backends,
        |b| &b.name,
        |a, b| !backend_fields(a, b).is_empty(),
    );
    added_removed(&mut plan.lines, "backend", &plan.backends);
    for (name, old_b, new_b) in pairs(&before.backends, &after.backends, |b| &b.name) {
        let fields = backend_fields(old_b, new_b);
        if !fields.is_empty() {
            plan.lines
                .push(format!("backend {name} changed: {}", fields.join(", ")));
        }
        if old_b.health != new_b.health {
            plan.checks.insert(name.clone());
        }
    }
    plan.checks.extend(plan.backends.added.iter().cloned());

    servers(&mut plan, old, new);
    // A change to the server list no server line shows: their order
    // (`balance = "first"` picks by it) or a DNS name whose addresses stayed
    // (the checks' TLS name follows the host).
    for (name, old_b, new_b) in pairs(&before.backends, &after.backends, |b| &b.name) {
        let touched = plan.rebuilds_pool(name);
        if old_b.servers != new_b.servers && !touched {
            plan.backends.changed.push(name.clone());
            plan.lines.push(format!(
                "backend {name} changed: server list (order or names)"
            ));
        }
        let renamed_host = new_b.servers.iter().any(|n| {
            old_b
                .servers
                .iter()
                .any(|o| o.name == n.name && o.address.host != n.address.host)
        });
        if renamed_host {
            plan.checks.insert(name.clone());
        }
    }

    if before.global != after.global {
        plan.global_changed = true;
        plan.lines.push(format!(
            "[global] changed: {}",
            global_fields(&before.global, &after.global).join(", ")
        ));
    }
    if before.admin != after.admin {
        plan.admin_changed = true;
        plan.lines
            .push("[admin] changed: takes effect when lbd restarts".into());
    }
    if before.process != after.process {
        plan.process_changed = true;
        plan.lines.push(
            "[global] runtime, threads or splice changed: takes effect when lbd restarts".into(),
        );
    }
    plan
}

/// The listening sockets `config` wants, against those `bound`: a socket
/// that could not start (or was lost) is opened again at the next change.
fn listeners(config: &Config, bound: &[BoundAddress]) -> ListenerChanges {
    let mut changes = ListenerChanges::default();
    let mut unmatched: Vec<&BoundAddress> = bound.iter().collect();
    for frontend in &config.frontends {
        for &addr in &frontend.listen {
            let found = unmatched
                .iter()
                .position(|b| b.frontend == frontend.name && b.addr == addr);
            match found {
                Some(index) => {
                    let kept = unmatched.remove(index);
                    if kept.backlog != frontend.backlog {
                        changes
                            .relisten
                            .push((frontend.name.clone(), addr, frontend.backlog));
                    }
                }
                None => changes
                    .open
                    .push((frontend.name.clone(), addr, frontend.backlog)),
            }
        }
    }
    let mut close: Vec<(String, SocketAddr)> = unmatched
        .into_iter()
        .map(|b| (b.frontend.clone(), b.addr))
        .collect();
    // A fixed address leaving one frontend for another keeps its socket,
    // and its queued clients.
    changes.open.retain(|(to, addr, backlog)| {
        let moving = (addr.port() != 0)
            .then(|| close.iter().position(|(_, a)| a == addr))
            .flatten();
        match moving {
            Some(index) => {
                let (from, _) = close.remove(index);
                changes.hand_over.push((from, to.clone(), *addr, *backlog));
                false
            }
            None => true,
        }
    });
    changes.close = close;
    changes
}

fn describe_listeners(lines: &mut Vec<String>, changes: &ListenerChanges) {
    for (frontend, addr, _) in &changes.open {
        lines.push(format!("listener {addr} of {frontend} opened"));
    }
    for (frontend, addr) in &changes.close {
        lines.push(format!("listener {addr} of {frontend} closed"));
    }
    for (from, to, addr, _) in &changes.hand_over {
        lines.push(format!("listener {addr} handed from {from} to {to}"));
    }
    for (frontend, addr, backlog) in &changes.relisten {
        lines.push(format!(
            "listener {addr} of {frontend} listens with backlog {backlog}"
        ));
    }
}

/// Servers compared after DNS, so a name's new address is a change too.
fn servers(plan: &mut Plan, old: &Desired, new: &Desired) {
    let key =
        |backend: &Backend, server: &DesiredServer| (backend.name.clone(), server.name.clone());
    let listed = |desired: &Desired| -> Vec<((String, String), DesiredServer)> {
        desired
            .config
            .backends
            .iter()
            .zip(&desired.servers)
            .flat_map(|(backend, servers)| {
                servers.iter().map(move |s| (key(backend, s), s.clone()))
            })
            .collect()
    };
    let (before, after) = (listed(old), listed(new));
    for (name, server) in &after {
        match before.iter().find(|(n, _)| n == name) {
            None => {
                plan.lines
                    .push(format!("server {}/{} added", name.0, name.1));
                plan.servers.added.push(name.clone());
            }
            Some((_, was)) if was.addr != server.addr || was.weight != server.weight => {
                let mut what = Vec::new();
                if was.addr != server.addr {
                    what.push(format!("address {} → {}", was.addr, server.addr));
                    plan.readdressed.push(name.clone());
                }
                if was.weight != server.weight {
                    what.push(format!("weight {} → {}", was.weight, server.weight));
                }
                plan.lines.push(format!(
                    "server {}/{} changed: {}",
                    name.0,
                    name.1,
                    what.join(", ")
                ));
                plan.servers.changed.push(name.clone());
            }
            Some(_) => {}
        }
    }
    for (name, _) in &before {
        if !after.iter().any(|(n, _)| n == name) {
            plan.lines
                .push(format!("server {}/{} removed", name.0, name.1));
            plan.servers.removed.push(name.clone());
        }
    }
}

fn added_removed(lines: &mut Vec<String>, what: &str, changes: &Changes<String>) {
    for name in &changes.added {
        lines.push(format!("{what} {name} added"));
    }
    for name in &changes.removed {
        lines.push(format!("{what} {name} removed"));
    }
}

/// The names of the fields of `$a` and `$b` that differ; "other settings"
/// when the two differ in none of those listed (a field added since).
macro_rules! differing {
    ($a:expr, $b:expr; $($field:ident),+ $(,)?) => {{
        let mut fields: Vec<String> = Vec::new();
        $(if $a.$field != $b.$field { fields.push(stringify!($field).to_owned()); })+
        if fields.is_empty() && $a != $b {
            fields.push("other settings".to_owned());
        }
        fields
    }};
}

fn frontend_fields(a: &Frontend, b: &Frontend) -> Vec<String> {
    let mut fields = differing!(a, b; listen, backend, max_connections, max_connections_per_source, backlog, idle_timeout, fin_timeout, routes, inspect_timeout, accept_proxy);
    if let Some(routes) = fields.iter_mut().find(|f| *f == "routes") {
        *routes = format!(
            "routes ({})",
            route_changes(&a.routes, &b.routes).join(", ")
        );
    }
    fields
}

/// Each route added, removed or sent to another backend, by pattern.
fn route_changes(a: &[SniRoute], b: &[SniRoute]) -> Vec<String> {
    let mut changes = Vec::new();
    for new in b {
        match a.iter().find(|old| old.sni == new.sni) {
            None => changes.push(format!("{} → {} added", new.sni, new.backend)),
            Some(old) if old.backend != new.backend => changes.push(format!(
                "{} → {} instead of {}",
                new.sni, new.backend, old.backend
            )),
            Some(_) => {}
        }
    }
    for old in a {
        if !b.iter().any(|new| new.sni == old.sni) {
            changes.push(format!("{} removed", old.sni));
        }
    }
    if changes.is_empty() {
        changes.push("order".into());
    }
    changes
}

/// A backend's settings that differ, not counting its server list.
fn backend_fields(a: &Backend, b: &Backend) -> Vec<String> {
    let (mut a, b) = (a.clone(), b);
    a.servers.clone_from(&b.servers);
    let mut fields = differing!(a, *b; balance, connect_timeout, retries, on_no_server, send_proxy, rebalance, health, discovery);
    if let Some(health) = fields.iter_mut().find(|f| *f == "health") {
        *health = format!(
            "health ({})",
            health_fields(&a.health, &b.health).join(", ")
        );
    }
    fields
}

fn health_fields(a: &Health, b: &Health) -> Vec<String> {
    let mut fields = differing!(a, b; check, interval, fast_interval, timeout, rise, fall, port, path, sni, passive, close_on_down);
    fields.retain(|f| f != "other settings");
    for (key, x, y) in [
        ("ca_file", &a.ca_file, &b.ca_file),
        ("cert_file", &a.cert_file, &b.cert_file),
        ("key_file", &a.key_file, &b.key_file),
    ] {
        fields.extend(file_change(key, x.as_ref(), y.as_ref()));
    }
    fields
}

/// `ca_file` when the setting changed, `ca_file contents` when only the
/// file's bytes did (a certificate renewed in place).
fn file_change(key: &str, a: Option<&FileContents>, b: Option<&FileContents>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) if a.path == b.path && a.bytes != b.bytes => {
            Some(format!("{key} contents"))
        }
        _ if a != b => Some(key.to_owned()),
        _ => None,
    }
}

fn global_fields(a: &Global, b: &Global) -> Vec<String> {
    differing!(a, b; drain_timeout, resolve_interval, max_connections, state_dir)
}

/// (name, old, new) of every item in both lists.
fn pairs<'a, T>(
    old: &'a [T],
    new: &'a [T],
    name: impl Fn(&T) -> &String,
) -> impl Iterator<Item = (&'a String, &'a T, &'a T)> {
    new.iter().filter_map(move |n| {
        old.iter()
            .find(|o| name(o) == name(n))
            .map(|o| (name(n), o, n))
    })
}

fn by_name<T>(
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
    differ: impl Fn(&T, &T) -> bool,
) -> Changes<String> {
    let mut changes = Changes::default();
    for n in new {
        match old.iter().find(|o| name(o) == name(n)) {
            None => changes.added.push(name(n).clone()),
            Some(o) if differ(o, n) => changes.changed.push(name(n).clone()),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|n| name(n) == name(o)) {
            changes.removed.push(name(o).clone());
        }
    }
    changes
}

#[cfg(test)]
mod tests;
