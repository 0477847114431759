//! The daemon's life as a systemd service: `READY=1` once it serves, a
//! watchdog ping sent from the runtime itself, and a one-line status.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::notify::{notifier, watchdog_interval};
use crate::daemon::Daemon;
use crate::pool::Health;

/// How often the status line is recomputed (sent only when it changed).
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// Tells the service manager that `daemon` serves, then keeps it informed
/// (watchdog pings, status line) until `stop` fires. Without a manager
/// (`NOTIFY_SOCKET` unset) this does nothing.
pub fn announce(daemon: &Daemon, stop: &CancellationToken) {
    let notifier = notifier();
    if !notifier.is_enabled() {
        return;
    }
    notifier.status(&status_line(daemon));
    notifier.ready();
    spawn_watchdog(stop.clone());
    spawn_status(daemon.clone(), stop.clone());
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
pub fn spawn_status(daemon: Daemon, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
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
    })
}

/// What `systemctl status` shows: servers up out of all and live
/// connections, or how many connections are left while draining.
pub fn status_line(daemon: &Daemon) -> String {
    let snapshot = daemon.snapshot();
    let servers = snapshot.pools.iter().flat_map(|pool| pool.servers.iter());
    let (up, total) = servers.fold((0, 0), |(up, total), server| {
        (up + usize::from(server.health() == Health::Up), total + 1)
    });
    let connections: u64 = snapshot
        .frontends
        .iter()
        .map(|f| f.stats.active.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    if daemon.is_shutting_down() {
        return format!("stopping: draining {connections} connections");
    }
    format!("{up}/{total} servers up, {connections} connections")
}
