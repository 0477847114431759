//! Changes of desired state: resolving a config's DNS names, the
//! [`Desired`] state they give, the pure [`diff`] of two desired states (a
//! [`Plan`]), and building a snapshot's pools as a plan says, carrying every
//! server that stays over with its state and counters.
//!
//! DNS-named servers are resolved first, every name at once
//! ([`resolve_names`]), by a caller that holds no lock; the desired state
//! and the plan are then built from the answers, which is pure and quick,
//! under the daemon's reload lock. A slow resolver thus delays one reload by
//! one lookup timeout, never everything queued behind it.

mod desired;
mod diff;

pub use desired::{Desired, DesiredServer, DnsFailure, DnsReport, ServerSource};
pub use diff::{BoundAddress, Changes, ListenerChanges, Plan, diff};

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::JoinSet;
use tracing::warn;

use crate::backend::pool::{AdminState, Pool, Server};
use crate::config::{Config, is_address_of};
use crate::net::dial;

/// What one lookup returns: the addresses, or the resolver's words.
pub type LookupResult = Result<Vec<SocketAddr>, String>;

type Lookup = Pin<Box<dyn Future<Output = LookupResult> + Send>>;

/// How a DNS name and port become addresses: [`Resolver::system`] in lbd; a
/// stand-in where a test needs a resolver it controls. Each lookup must end
/// on its own (the system resolver gives up after [`dial::RESOLVE_TIMEOUT`]).
#[derive(Clone)]
pub struct Resolver {
    lookup: Arc<dyn Fn(String, u16) -> Lookup + Send + Sync>,
    /// Names whose answer was cut to [`MAX_ADDRESSES_PER_NAME`], so the
    /// warning is logged when that starts, not at every lookup.
    capped: Arc<Mutex<HashSet<(String, u16)>>>,
}

/// Most addresses one DNS name contributes to a backend (the first ones in
/// address order). Each address is a server with its own health check,
/// status entry and metric series; a name that resolves to hundreds is a
/// mistake (a wildcard, a whole subnet) that must not grow those without
/// bound.
pub const MAX_ADDRESSES_PER_NAME: usize = 64;

impl Resolver {
    /// The operating system's resolver ([`dial::resolve`]).
    pub fn system() -> Resolver {
        Resolver::new(|host, port| async move { dial::resolve(&host, port).await })
    }

    /// A resolver that runs `lookup(host, port)`.
    pub fn new<F, Fut>(lookup: F) -> Resolver
    where
        F: Fn(String, u16) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = LookupResult> + Send + 'static,
    {
        Resolver {
            lookup: Arc::new(move |host, port| Box::pin(lookup(host, port))),
            capped: Arc::default(),
        }
    }

    fn lookup(&self, host: String, port: u16) -> Lookup {
        (self.lookup)(host, port)
    }

    /// Keeps at most [`MAX_ADDRESSES_PER_NAME`] of a name's addresses (the
    /// lowest, so the choice is stable), warning when a name starts being cut.
    fn cap(&self, host: &str, port: u16, mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
        addrs.sort_unstable();
        addrs.dedup();
        let key = (host.to_owned(), port);
        let mut capped = self.capped.lock().unwrap_or_else(PoisonError::into_inner);
        if addrs.len() <= MAX_ADDRESSES_PER_NAME {
            capped.remove(&key);
            return addrs;
        }
        if capped.insert(key) {
            warn!(
                name = %host,
                port,
                addresses = addrs.len(),
                kept = MAX_ADDRESSES_PER_NAME,
                "DNS name has more addresses than lbd takes from one name; using the first {MAX_ADDRESSES_PER_NAME} in address order"
            );
        }
        addrs.truncate(MAX_ADDRESSES_PER_NAME);
        addrs
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

/// The answers for every DNS name of a config, keyed by (host, port).
#[derive(Debug, Default, Clone)]
pub struct Lookups {
    answers: HashMap<(String, u16), LookupResult>,
}

impl Lookups {
    fn get(&self, host: &str, port: u16) -> LookupResult {
        self.answers
            .get(&(host.to_owned(), port))
            .cloned()
            .unwrap_or_else(|| Err(format!("cannot resolve {host}: the lookup did not finish")))
    }
}

/// Resolves every DNS name of `config` concurrently: the whole takes as
/// long as the slowest lookup, not their sum. Call it without holding a lock.
pub async fn resolve_names(config: &Config, resolver: &Resolver) -> Lookups {
    let mut names: Vec<(String, u16)> = config
        .backends
        .iter()
        .flat_map(|b| &b.servers)
        .filter(|s| s.address.ip().is_none())
        .map(|s| (s.address.host.clone(), s.address.port))
        .collect();
    names.sort();
    names.dedup();
    let mut lookups = JoinSet::new();
    for (host, port) in names {
        let lookup = resolver.lookup(host.clone(), port);
        lookups.spawn(async move { ((host, port), lookup.await) });
    }
    let mut answers = HashMap::new();
    // A lookup task that panicked leaves its name out: it counts as failed.
    while let Some(joined) = lookups.join_next().await {
        if let Ok((key, answer)) = joined {
            let answer = answer.map(|addrs| resolver.cap(&key.0, key.1, addrs));
            answers.insert(key, answer);
        }
    }
    Lookups { answers }
}

/// The pools of `new`, built as `plan` says from the `previous` ones:
/// a backend the plan leaves alone keeps its pool (and its balancer's
/// place); in a rebuilt one, every server the plan does not start afresh
/// keeps its `Arc<Server>` (health, admin state, counters) and takes its new
/// weight. A new server of a configured name starts with that name's admin
/// state (see [`inherited_admin`]). Pure: no I/O.
pub fn build_pools(new: &Desired, plan: &Plan, previous: &[Arc<Pool>]) -> Vec<Arc<Pool>> {
    let pool_of = |backend: &str| previous.iter().find(|p| p.spec.name == backend);
    new.config
        .backends
        .iter()
        .zip(&new.servers)
        .map(|(backend, desired)| {
            let kept = pool_of(&backend.name).filter(|_| !plan.rebuilds_pool(&backend.name));
            if let Some(kept) = kept {
                return Arc::clone(kept);
            }
            let servers = desired
                .iter()
                .map(|spec| {
                    let carried = pool_of(&backend.name)
                        .filter(|_| !plan.starts_server(&backend.name, &spec.name))
                        .and_then(|p| p.server(&spec.name));
                    match carried {
                        Some(server) => {
                            server.set_weight(spec.weight);
                            Arc::clone(server)
                        }
                        None => {
                            let server =
                                Server::new(&backend.name, &spec.name, spec.addr, spec.weight);
                            let admin = pool_of(&backend.name)
                                .and_then(|p| inherited_admin(p, &spec.configured));
                            if let Some(admin) = admin {
                                server.set_admin(admin);
                            }
                            Arc::new(server)
                        }
                    }
                })
                .collect();
            Arc::new(Pool::new(backend.clone(), servers))
        })
        .collect()
}

/// The admin state a new server of configured name `configured` starts
/// with: the one every address of that name had in `pool`, when they
/// agree (an operator who disabled `cp3` by name, or one whose address a
/// reload changed, keeps it out of traffic). `None` when the name is new or
/// its addresses disagree (one address drained alone says nothing of others).
pub fn inherited_admin(pool: &Pool, configured: &str) -> Option<AdminState> {
    let mut states = pool
        .servers
        .iter()
        .filter(|s| is_address_of(&s.name, configured))
        .map(|s| s.admin());
    let first = states.next()?;
    states.all(|s| s == first).then_some(first)
}

/// Whether any server of `config` is given by DNS name (and so needs re-resolving).
pub fn has_dns_names(config: &Config) -> bool {
    config
        .backends
        .iter()
        .flat_map(|b| &b.servers)
        .any(|s| s.address.ip().is_none())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(servers: &str) -> Config {
        let text = format!(
            "[[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"pool\"\n\n\
             [[backend]]\nname = \"pool\"\nservers = [{servers}]\n"
        );
        Config::parse(Path::new("test.toml"), &text).unwrap()
    }

    /// A desired state and the pools applying it built.
    struct State {
        desired: Desired,
        pools: Vec<Arc<Pool>>,
        dns: DnsReport,
    }

    impl State {
        fn server(&self, _backend: &str, name: &str) -> Option<&Arc<Server>> {
            self.pools[0].server(name)
        }
    }

    fn snapshot(config: Config, lookups: &Lookups, previous: Option<&State>) -> State {
        let (desired, dns) =
            Desired::resolve(Arc::new(config), lookups, previous.map(|p| &p.desired));
        let nothing = Desired::nothing(&desired.config);
        let plan = diff(previous.map_or(&nothing, |p| &p.desired), &desired, &[]);
        let pools = build_pools(&desired, &plan, previous.map_or(&[][..], |p| &p.pools));
        State {
            desired,
            pools,
            dns,
        }
    }

    fn answers(pairs: &[(&str, &[[u8; 4]])]) -> Lookups {
        Lookups {
            answers: pairs
                .iter()
                .map(|(host, ips)| {
                    let addrs = ips.iter().map(|ip| SocketAddr::from((*ip, 6443))).collect();
                    (((*host).to_owned(), 6443), Ok(addrs))
                })
                .collect(),
        }
    }

    fn admin_of(snapshot: &State, name: &str) -> AdminState {
        snapshot.server("pool", name).unwrap().admin()
    }

    #[tokio::test(start_paused = true)]
    async fn every_name_is_looked_up_at_once() {
        let config = config(
            "{ name = \"a\", address = \"a.test:6443\" }, { name = \"b\", address = \"b.test:6443\" },\n\
             { name = \"c\", address = \"c.test:6443\" }, { name = \"d\", address = \"10.0.0.4:6443\" },\n\
             { name = \"e\", address = \"a.test:6443\" }",
        );
        // Each lookup takes the system resolver's whole timeout.
        let resolver = Resolver::new(|host, port| async move {
            tokio::time::sleep(dial::RESOLVE_TIMEOUT).await;
            Err::<Vec<SocketAddr>, _>(format!("cannot resolve {host}:{port}: no answer"))
        });
        let started = tokio::time::Instant::now();
        let lookups = resolve_names(&config, &resolver).await;
        // Three distinct names (a.test twice, d an IP) in one timeout, not three.
        assert_eq!(started.elapsed(), dial::RESOLVE_TIMEOUT);
        let mut names: Vec<_> = lookups.answers.keys().map(|(h, _)| h.clone()).collect();
        names.sort();
        assert_eq!(names, ["a.test", "b.test", "c.test"]);
        assert!(lookups.get("a.test", 6443).is_err());
        assert!(lookups.get("never.asked", 6443).is_err());
    }

    #[tokio::test]
    async fn a_name_with_a_thousand_addresses_gives_a_bounded_pool_and_readiness() {
        let config = config("{ name = \"cp\", address = \"many.test:6443\" }");
        // 1000 addresses, in no particular order.
        let resolver = Resolver::new(|_host, port| async move {
            Ok((0..1000u32)
                .rev()
                .map(|i| SocketAddr::from(((0x0a00_0000 + i).to_be_bytes(), port)))
                .collect())
        });
        let lookups = resolve_names(&config, &resolver).await;
        let snapshot = snapshot(config, &lookups, None);
        let pool = &snapshot.pools[0];
        assert_eq!(pool.servers.len(), MAX_ADDRESSES_PER_NAME);
        // The lowest addresses, so the same ones at every lookup.
        assert_eq!(pool.servers[0].name, "cp@10.0.0.0");
        let why = pool.readiness().unwrap_err().0;
        assert!(
            why.ends_with(&format!(
                "cp@10.0.0.9 unknown and {} more)",
                MAX_ADDRESSES_PER_NAME - crate::backend::pool::MAX_LISTED
            )),
            "{why}"
        );
        assert!(why.len() < 1000, "{} bytes: {why}", why.len());
    }

    #[test]
    fn a_new_address_of_a_name_starts_with_the_name_s_admin_state() {
        let one = snapshot(
            config("{ name = \"cp\", address = \"cp.test:6443\" }"),
            &answers(&[("cp.test", &[[127, 0, 0, 1]])]),
            None,
        );
        // The operator disabled `cp` by its configured name.
        one.server("pool", "cp@127.0.0.1")
            .unwrap()
            .set_admin(AdminState::Disabled);
        let two = snapshot(
            config("{ name = \"cp\", address = \"cp.test:6443\" }"),
            &answers(&[("cp.test", &[[127, 0, 0, 1], [127, 0, 0, 2]])]),
            Some(&one),
        );
        assert_eq!(admin_of(&two, "cp@127.0.0.1"), AdminState::Disabled);
        assert_eq!(
            admin_of(&two, "cp@127.0.0.2"),
            AdminState::Disabled,
            "a new address of a disabled name must not take traffic"
        );

        // Addresses that disagree (one drained alone) pass nothing on.
        two.server("pool", "cp@127.0.0.1")
            .unwrap()
            .set_admin(AdminState::Drain);
        let three = snapshot(
            config("{ name = \"cp\", address = \"cp.test:6443\" }"),
            &answers(&[("cp.test", &[[127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3]])]),
            Some(&two),
        );
        assert_eq!(admin_of(&three, "cp@127.0.0.3"), AdminState::Ready);
    }

    #[test]
    fn a_server_whose_address_a_reload_changes_keeps_its_admin_state() {
        let lookups = Lookups::default();
        let before = snapshot(
            config(
                "{ name = \"cp1\", address = \"10.0.0.11:6443\" }, { name = \"cp2\", address = \"10.0.0.12:6443\" }",
            ),
            &lookups,
            None,
        );
        before
            .server("pool", "cp1")
            .unwrap()
            .set_admin(AdminState::Drain);
        let after = snapshot(
            config(
                "{ name = \"cp1\", address = \"10.0.0.21:6443\" }, { name = \"cp3\", address = \"10.0.0.13:6443\" }",
            ),
            &lookups,
            Some(&before),
        );
        let cp1 = after.server("pool", "cp1").unwrap();
        assert_ne!(cp1.addr, before.server("pool", "cp1").unwrap().addr);
        assert_eq!(cp1.admin(), AdminState::Drain);
        assert_eq!(admin_of(&after, "cp3"), AdminState::Ready);
    }

    #[test]
    fn a_failing_name_keeps_its_last_addresses() {
        let one = snapshot(
            config("{ name = \"cp\", address = \"cp.test:6443\" }"),
            &answers(&[("cp.test", &[[127, 0, 0, 1]])]),
            None,
        );
        let failed = snapshot(
            config("{ name = \"cp\", address = \"cp.test:6443\" }"),
            &Lookups::default(),
            Some(&one),
        );
        assert_eq!(failed.dns.failures.len(), 1);
        assert_eq!(failed.dns.failures[0].kept, 1);
        assert!(Arc::ptr_eq(&failed.pools[0], &one.pools[0]));
    }
}
