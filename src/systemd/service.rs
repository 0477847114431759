//! The daemon's life as a systemd service: `READY=1` once it serves, a
//! watchdog ping sent from the runtime itself, and a one-line status.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::notify::{notifier, watchdog_interval};
use crate::daemon::Daemon;
use crate::pool::ServerCounts;

/// How often the status line is recomputed (sent only when it changed).
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// Tells the service manager that `daemon` serves once the first round of
/// health checks has run (so `systemctl start` returns knowing which servers
/// are up), then keeps it informed (status line) until `stop` fires. The
/// watchdog pings start at once: a start that hangs is caught too. Without a
/// manager (`NOTIFY_SOCKET` unset) this does nothing.
pub fn announce(daemon: &Daemon, stop: &CancellationToken) {
    let notifier = notifier();
    if !notifier.is_enabled() {
        return;
    }
    spawn_watchdog(stop.clone());
    notifier.status("starting: first health checks");
    let (daemon, stop) = (daemon.clone(), stop.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => return,
            () = daemon.health().first_round() => {}
        }
        // A SIGTERM during the first checks: STOPPING=1 was said already.
        if daemon.is_shutting_down() {
            return;
        }
        notifier.status(&status_line(&daemon));
        notifier.ready();
        info!("told systemd READY=1");
        keep_status(daemon, stop).await;
    });
}

/// Sends `WATCHDOG=1` at half of `WATCHDOG_USEC` until `stop` fires.
///
/// The pings come from an ordinary task on the daemon's runtime, not from a
/// thread of their own: if the runtime wedges (its workers blocked or
/// deadlocked), the pings stop and systemd restarts lbd.
pub fn spawn_watchdog(stop: CancellationToken) -> Option<JoinHandle<()>> {
    let interval = watchdog_interval()?;
    info!(every = ?interval, "pinging the systemd watchdog");
    Some(tokio::spawn(async move {
        loop {
            notifier().watchdog();
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }))
}

/// Refreshes `STATUS=` with [`status_line`] until `stop` fires.
async fn keep_status(daemon: Daemon, stop: CancellationToken) {
    let mut last = String::new();
    loop {
        let line = status_line(&daemon);
        if line != last {
            notifier().status(&line);
            last = line;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(STATUS_INTERVAL) => {}
        }
    }
}

/// What `systemctl status` shows: servers taking new connections (up and
/// ready, as the balancer and `/readyz` count them) out of all, those the
/// operator holds back, and live connections; or how many connections are
/// left while draining.
pub fn status_line(daemon: &Daemon) -> String {
    let snapshot = daemon.snapshot();
    let mut servers = ServerCounts::default();
    for pool in &snapshot.pools {
        servers += pool.server_counts();
    }
    let connections: u64 = snapshot
        .frontends
        .iter()
        .map(|f| f.stats.active.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    if daemon.is_shutting_down() {
        return format!("stopping: draining {connections} connections");
    }
    format!("{servers}, {connections} connections")
}
