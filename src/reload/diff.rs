//! What a reload changes: a pure comparison of the running config with the
//! new one. The reload applies it (which listeners to open and close) and
//! reports it (logs, the reload answer).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::{Backend, Config, Frontend, ServerSpec};

/// Things added, removed and changed (present in both, with different settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<T> {
    /// Only in the new config.
    pub added: Vec<T>,
    /// Only in the old config.
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

impl<T> Changes<T> {
    /// Whether nothing was added, removed or changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Everything that differs between two configs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Frontends by name; `changed` means any setting, its listen list included.
    pub frontends: Changes<String>,
    /// Listening addresses as (frontend, configured address). An address that
    /// stays with its frontend is in neither list and is not re-bound.
    /// `changed` is always empty.
    pub listeners: Changes<(String, SocketAddr)>,
    /// Backends by name; `changed` means a setting other than the server list.
    pub backends: Changes<String>,
    /// Servers as (backend, server name); `changed` means address or weight.
    pub servers: Changes<(String, String)>,
    /// `[global]` settings changed (they apply at once).
    pub global_changed: bool,
    /// `[admin]` changed: it takes effect only at the next start.
    pub admin_changed: bool,
    /// `[global]` `runtime`, `threads` or `splice` changed: they take effect
    /// only at the next start.
    pub process_changed: bool,
}

/// Compares the running config with a new one. Pure: no I/O, no clock.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut out = ConfigDiff {
        frontends: by_name(&old.frontends, &new.frontends, |f| &f.name, |a, b| a != b),
        backends: by_name(&old.backends, &new.backends, |b| &b.name, settings_differ),
        global_changed: old.global != new.global,
        admin_changed: old.admin != new.admin,
        process_changed: old.process != new.process,
        ..ConfigDiff::default()
    };

    let old_listens = listens(&old.frontends);
    let new_listens = listens(&new.frontends);
    for (key, &new_count) in &new_listens {
        let old_count = old_listens.get(key).copied().unwrap_or(0);
        for _ in old_count..new_count {
            out.listeners.added.push(key.clone());
        }
    }
    for (key, &old_count) in &old_listens {
        let new_count = new_listens.get(key).copied().unwrap_or(0);
        for _ in new_count..old_count {
            out.listeners.removed.push(key.clone());
        }
    }

    let old_servers = servers(&old.backends);
    let new_servers = servers(&new.backends);
    for (key, spec) in &new_servers {
        match old_servers.get(key) {
            None => out.servers.added.push(key.clone()),
            Some(old) if old.address != spec.address || old.weight != spec.weight => {
                out.servers.changed.push(key.clone());
            }
            Some(_) => {}
        }
    }
    for key in old_servers.keys() {
        if !new_servers.contains_key(key) {
            out.servers.removed.push(key.clone());
        }
    }
    out
}

impl ConfigDiff {
    /// Whether the two configs are the same.
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
            && self.listeners.is_empty()
            && self.backends.is_empty()
            && self.servers.is_empty()
            && !self.global_changed
            && !self.admin_changed
            && !self.process_changed
    }

    /// One short line per change, for logs and the reload answer.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut push = |what: &str, changes: Vec<String>, verb: &str| {
            for name in changes {
                lines.push(format!("{what} {name} {verb}"));
            }
        };
        push("frontend", self.frontends.added.clone(), "added");
        push("frontend", self.frontends.removed.clone(), "removed");
        push("frontend", self.frontends.changed.clone(), "changed");
        let listener = |(f, a): &(String, SocketAddr)| format!("{a} of {f}");
        push(
            "listener",
            self.listeners.added.iter().map(listener).collect(),
            "opened",
        );
        push(
            "listener",
            self.listeners.removed.iter().map(listener).collect(),
            "closed",
        );
        push("backend", self.backends.added.clone(), "added");
        push("backend", self.backends.removed.clone(), "removed");
        push("backend", self.backends.changed.clone(), "changed");
        let server = |(b, s): &(String, String)| format!("{b}/{s}");
        push(
            "server",
            self.servers.added.iter().map(server).collect(),
            "added",
        );
        push(
            "server",
            self.servers.removed.iter().map(server).collect(),
            "removed",
        );
        push(
            "server",
            self.servers.changed.iter().map(server).collect(),
            "changed",
        );
        if self.global_changed {
            lines.push("[global] changed".into());
        }
        if self.admin_changed {
            lines.push("[admin] changed: takes effect when lbd restarts".into());
        }
        if self.process_changed {
            lines.push(
                "[global] runtime, threads or splice changed: takes effect when lbd restarts"
                    .into(),
            );
        }
        lines
    }
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

/// A backend's settings differ, not counting its server list.
fn settings_differ(a: &Backend, b: &Backend) -> bool {
    a.balance != b.balance
        || a.connect_timeout != b.connect_timeout
        || a.retries != b.retries
        || a.health != b.health
}

/// How many times each (frontend, address) is listed: port-0 addresses may repeat.
fn listens(frontends: &[Frontend]) -> BTreeMap<(String, SocketAddr), usize> {
    let mut counts = BTreeMap::new();
    for f in frontends {
        for &addr in &f.listen {
            *counts.entry((f.name.clone(), addr)).or_default() += 1;
        }
    }
    counts
}

fn servers(backends: &[Backend]) -> BTreeMap<(String, String), &ServerSpec> {
    backends
        .iter()
        .flat_map(|b| {
            b.servers
                .iter()
                .map(|s| ((b.name.clone(), s.name.clone()), s))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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

    fn config(text: &str) -> Config {
        Config::parse(Path::new("lbd.toml"), text).unwrap()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn same_config_is_empty() {
        let d = diff(&config(BASE), &config(BASE));
        assert!(d.is_empty(), "{d:?}");
        assert!(d.describe().is_empty());
    }

    #[test]
    fn process_settings_are_reported_as_taking_effect_at_restart() {
        let new = format!("[global]\nsplice = false\n{BASE}");
        let d = diff(&config(BASE), &config(&new));
        assert!(d.process_changed && !d.global_changed, "{d:?}");
        assert_eq!(
            d.describe(),
            ["[global] runtime, threads or splice changed: takes effect when lbd restarts"]
        );
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
        let d = diff(&config(BASE), &config(&new));
        assert_eq!(d.servers.added, pairs(&[("cp", "c")]));
        assert_eq!(d.servers.removed, pairs(&[("cp", "b")]));
        assert_eq!(d.servers.changed, pairs(&[("cp", "a")]));
        assert!(
            d.backends.is_empty(),
            "server edits are not backend setting changes"
        );
        assert!(d.frontends.is_empty() && d.listeners.is_empty());
        assert_eq!(
            d.describe(),
            [
                "server cp/c added",
                "server cp/b removed",
                "server cp/a changed"
            ]
        );
    }

    #[test]
    fn listeners_that_stay_are_not_touched() {
        let new = BASE.replace(
            "listen = [\"127.0.0.1:6443\", \"127.0.0.1:0\"]",
            "listen = [\"127.0.0.1:0\", \"127.0.0.1:7443\"]",
        );
        let d = diff(&config(BASE), &config(&new));
        let at = |a: &str| ("api".to_string(), a.parse::<SocketAddr>().unwrap());
        assert_eq!(d.listeners.added, [at("127.0.0.1:7443")]);
        assert_eq!(d.listeners.removed, [at("127.0.0.1:6443")]);
        assert_eq!(d.frontends.changed, ["api"]);
    }

    #[test]
    fn frontends_and_backends_added_removed_and_changed() {
        let new = format!(
            "{}\n[[frontend]]\nname = \"extra\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"other\"\n\n[[backend]]\nname = \"other\"\nservers = [{{ address = \"10.0.0.9:1\" }}]\n",
            BASE.replace("name = \"cp\"\n", "name = \"cp\"\nretries = 0\n")
        );
        let d = diff(&config(BASE), &config(&new));
        assert_eq!(d.frontends.added, ["extra"]);
        assert_eq!(d.backends.added, ["other"]);
        assert_eq!(d.backends.changed, ["cp"]);
        assert_eq!(d.servers.added, pairs(&[("other", "10.0.0.9:1")]));
        assert_eq!(d.listeners.added.len(), 1);

        let back = diff(&config(&new), &config(BASE));
        assert_eq!(back.frontends.removed, ["extra"]);
        assert_eq!(back.backends.removed, ["other"]);
        assert_eq!(back.servers.removed, pairs(&[("other", "10.0.0.9:1")]));
        assert_eq!(back.listeners.removed.len(), 1);
    }

    #[test]
    fn frontend_settings_and_global_and_admin() {
        let new = format!(
            "[global]\ndrain_timeout = \"5s\"\n[admin]\nlisten = \"127.0.0.1:9000\"\n{}",
            BASE.replace(
                "backend = \"cp\"\n",
                "backend = \"cp\"\nmax_connections = 10\n"
            )
        );
        let d = diff(&config(BASE), &config(&new));
        assert_eq!(d.frontends.changed, ["api"]);
        assert!(d.listeners.is_empty());
        assert!(d.global_changed && d.admin_changed);
        assert!(d.describe().last().unwrap().contains("restart"));
    }
}
