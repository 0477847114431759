//! lbd: a TCP load balancer for the Kubernetes control-plane endpoint.
//!
//! Data flow. Every change of what lbd should run, from the config file (at
//! start, SIGHUP, `POST /api/v1/reload`) or a DNS answer, is a new
//! [`daemon::reload::Desired`] (pure data: the config with the bytes of the
//! TLS files it names, and the servers after DNS). One pure
//! [`daemon::reload::diff`] of the running state (and the sockets actually
//! bound) against it gives a [`daemon::reload::Plan`], and one `apply`
//! (`daemon/apply.rs`) is the only code that changes the running daemon:
//! listeners, pools, routes and limits, health checks. Runtime state
//! (health, admin state, counters) is carried over by (backend, server).
//!
//! Data path. An accept loop ([`proxy::listener`]) hands each client to
//! [`proxy::forward`], which picks a server from the backend's
//! [`backend::pool`] ([`backend::balance`]), dials it ([`net::dial`]
//! classifies failures, and retries go to the next server) and relays both
//! ways ([`proxy::relay`], [`proxy::splice`]). A pool publishes its
//! availability; the accept loops routing to it pause when it cannot serve.
//!
//! Map of the crate, each folder depending only on those below it:
//! - [`run`]: the whole life of the process: config, admin API, daemon,
//!   signals, systemd, the drain.
//! - [`admin`]: the admin API (hyper): the status page, `/metrics`,
//!   `/healthz`, `/readyz`, `/api/v1/…`; it reads the daemon.
//! - [`daemon`]: desired state, diff and plan, apply, the snapshot,
//!   listeners, reloads and DNS refresh, signals, systemd (notify, watchdog,
//!   socket activation), the descriptor limit.
//! - [`proxy`]: frontends, accept loops, connection limits, one connection
//!   (pick, dial, retry, relay), buffers, splice, per-core runtimes.
//! - [`backend`]: servers and pools (health, admin state, counters),
//!   balancing, active and passive health checks.
//! - [`net`]: socket options, dial and its error classifier, the pausable
//!   listener, the TLS verifier, the HTTP/1.1 client.
//! - [`config`]: the TOML schema, defaults, validation with file:line:col
//!   errors, the timing lint.
//! - [`util`]: sharded counters, histograms, timestamps.
//! - [`upgrade`]: SIGUSR2 hands the listening sockets to a new lbd, which
//!   serves at once while this one drains.
//! - [`cli`]: `lbctl` (admin client and commands, `probe`, `join-check`),
//!   `lbd --demo`, man pages and completions; it uses the admin API's types.

pub mod admin;
pub mod backend;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod net;
pub mod proxy;
pub mod upgrade;
pub mod util;

mod run;

pub use daemon::{Daemon, StartError};
pub use run::{RunError, RunOptions, run};
