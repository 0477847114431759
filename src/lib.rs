//! lbd: a TCP load balancer for the Kubernetes control-plane endpoint.
//!
//! A client connection is accepted by a [`listener`], handed to [`forward`],
//! which picks a server from the backend's [`pool`] with a [`balance`]
//! algorithm, dials it ([`dial`] classifies failures), and [`relay`]s bytes
//! both ways. The [`daemon`] owns the whole and drains it on shutdown.
//!
//! Map of the crate:
//! - [`config`]: TOML schema, defaults and validation with file:line:col errors.
//! - [`daemon`]: start, snapshot, shutdown; [`run`] is the whole lifecycle.
//! - [`signals`]: SIGTERM/SIGINT drain, SIGHUP reload.
//! - [`systemd`]: sd_notify (ready, reloading, stopping, watchdog, status) and socket activation.
//! - [`frontend`]: a frontend's counters, connection limit and swappable route.
//! - [`listener`]: the accept loop (connection limits, EMFILE backoff, pause
//!   while the backend has no server).
//! - [`limit`]: connection slots, per-source counts, the descriptor budget.
//! - [`pausable`]: a listening socket that refuses SYNs while paused.
//! - [`socket`]: listener binding and per-stream socket options.
//! - [`forward`]: one client connection: pick, dial, retry, relay, account.
//! - [`relay`]: the copy loop with half-close, idle and FIN timeouts.
//! - [`buffer`]: per-thread pools of copy buffers, small and large.
//! - [`splice`]: zero-copy splice(2) through pooled pipes for bulk streams.
//! - [`dial`]: connect with timeout, and the one classifier of dial errors.
//! - [`health`]: active checks (tcp, tls, https), rise/fall, passive health.
//! - [`pool`]: servers (health, admin state, counters), pools, the snapshot.
//! - [`ready_file`]: a frontend's readiness as a file for keepalived's
//!   `track_file`, and the guardian that marks it not ready when lbd dies.
//! - [`upgrade`]: SIGUSR2 hands the listening sockets to a new lbd, which
//!   serves at once while this one drains.
//! - [`counter`]: per-thread sharded byte counters, uncontended on the data path.
//! - [`histogram`]: lock-free latency histograms for dial and check times.
//! - [`balance`]: round-robin, least-connections, random-two, source-hash, first.
//! - [`runtime`]: one current-thread runtime per core (or one multi-thread runtime).
//! - [`reload`]: builds pools from a config, carrying server state over; the
//!   pure config diff a reload applies.
//! - [`admin`]: the admin API (hyper): /metrics, /readyz, /api/v1/….
//! - [`metrics`]: the Prometheus collector that reads the current snapshot.
//! - [`http_client`]: one HTTP/1.1 exchange with hyper, for the https check, the probe and lbctl.
//! - [`tls`]: the certificate verifier the TLS checks and the probe share.
//! - [`clock`]: RFC 3339 timestamps for status JSON and lbctl.
//! - [`rlimit`]: raises the open-files limit and checks it against the config.
//! - [`demo`]: `lbd --demo`, stand-in apiservers for a first run.
//! - [`ctl`]: `lbctl`'s admin API client and commands.
//! - [`probe`]: `lbctl probe`, which dials endpoints and explains what is wrong.
//! - [`generate`]: man pages and shell completions from the binaries' clap definitions.

pub mod admin;
pub mod balance;
pub mod buffer;
pub mod clock;
pub mod config;
pub mod counter;
pub mod ctl;
pub mod daemon;
pub mod demo;
pub mod dial;
pub mod forward;
pub mod frontend;
pub mod generate;
pub mod health;
pub mod histogram;
pub mod http_client;
pub mod limit;
pub mod listener;
pub mod metrics;
pub mod pausable;
pub mod pool;
pub mod probe;
pub mod ready_file;
pub mod relay;
pub mod reload;
pub mod rlimit;
pub mod runtime;
pub mod signals;
pub mod socket;
pub mod splice;
pub mod systemd;
pub mod tls;
pub mod upgrade;

use std::path::Path;

use tokio_util::sync::CancellationToken;

pub use daemon::{Daemon, StartError};

/// Loads the config at `path`, serves it until `shutdown` is cancelled, then
/// drains live connections within the configured deadline.
pub async fn run(path: &Path, shutdown: CancellationToken) -> Result<(), StartError> {
    let daemon = Daemon::start_from_file(path).await?;
    shutdown.cancelled().await;
    daemon.shutdown().await;
    Ok(())
}
