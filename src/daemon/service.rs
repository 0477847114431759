//! The daemon's life as a systemd service: `READY=1` once it serves, a
//! watchdog ping sent only on evidence that lbd works, and a one-line status.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::pool::ServerCounts;
use crate::daemon::systemd::notify::{notifier, watchdog_interval};
use crate::daemon::{Daemon, NotAlive};

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
    spawn_watchdog(daemon, stop.clone());
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

/// Sends `WATCHDOG=1` at half of `WATCHDOG_USEC` until `stop` fires, each
/// time lbd shows it works ([`evidence`]); otherwise the ping is withheld
/// and the reason logged at warn, so systemd restarts an lbd that is wedged
/// or has lost its health checks or an accept loop.
pub fn spawn_watchdog(daemon: &Daemon, stop: CancellationToken) -> Option<JoinHandle<()>> {
    let interval = watchdog_interval()?;
    info!(every = ?interval, "pinging the systemd watchdog");
    Some(tokio::spawn(watchdog(
        daemon.clone(),
        interval,
        stop,
        |verdict| match verdict {
            Ok(()) => notifier().watchdog(),
            Err(why) => warn!(
                "withholding the systemd watchdog ping: {why}; systemd restarts lbd if this lasts WatchdogSec"
            ),
        },
    )))
}

/// Weighs the evidence every `interval` and hands the verdict to `verdict`
/// (a ping or a warning), until `stop` fires.
async fn watchdog(
    daemon: Daemon,
    interval: Duration,
    stop: CancellationToken,
    mut verdict: impl FnMut(Result<(), NotAlive>),
) {
    loop {
        verdict(evidence(&daemon, interval / 2).await);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Whether lbd works well enough to tell systemd so: a task spawned now
/// runs within `probe_within` (the runtime schedules new work, not only
/// this task), and [`Daemon::liveness`] (accept loops and health tasks).
async fn evidence(daemon: &Daemon, probe_within: Duration) -> Result<(), NotAlive> {
    match tokio::time::timeout(probe_within, tokio::spawn(async {})).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return Err(NotAlive(format!("a probe task failed: {err}"))),
        Err(_) => {
            return Err(NotAlive(format!(
                "a probe task did not run within {probe_within:?}: the runtime is overloaded or wedged"
            )));
        }
    }
    daemon.liveness()
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::sync::mpsc;

    use super::*;
    use crate::config::Config;

    /// Long enough that only a broken watchdog reaches it.
    const PATIENCE: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn pings_stop_while_health_checking_is_dead_and_resume_for_the_drain() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"pool\"\n\n\
             [[backend]]\nname = \"pool\"\nservers = [{{ name = \"cp1\", address = \"{}\" }}]\n\
             [backend.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n",
            server.local_addr().unwrap()
        );
        let path = Path::new("watchdog.toml");
        let daemon = Daemon::start(path, Config::parse(path, &text).unwrap())
            .await
            .unwrap();
        let (verdicts, mut heard) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(watchdog(
            daemon.clone(),
            Duration::from_millis(20),
            stop.clone(),
            move |verdict| {
                let _ = verdicts.send(verdict);
            },
        ));
        let mut next = async || {
            tokio::time::timeout(PATIENCE, heard.recv())
                .await
                .expect("the watchdog stopped deciding")
                .unwrap()
        };
        assert_eq!(next().await, Ok(()), "a working lbd is pinged for");

        // Every health task ends while the servers stay listed: within the
        // tasks' bound the pings stop, and stay stopped.
        daemon.health().shutdown().await;
        let why = loop {
            if let Err(why) = next().await {
                break why;
            }
        };
        assert!(
            why.0
                .contains("the health task of pool/cp1 has not run for"),
            "{why}"
        );
        for _ in 0..5 {
            assert!(next().await.is_err(), "a ping while health checks are dead");
        }

        // Shutdown ends health checks on purpose: a drain is pinged for.
        daemon.shutdown().await;
        while next().await.is_err() {}
        stop.cancel();
    }

    #[tokio::test]
    async fn pings_stop_when_an_accept_loop_dies() {
        let text = "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"pool\"\n\n\
             [[backend]]\nname = \"pool\"\nservers = [{ name = \"cp1\", address = \"127.0.0.1:9\" }]\n";
        let path = Path::new("watchdog.toml");
        let daemon = Daemon::start(path, Config::parse(path, text).unwrap())
            .await
            .unwrap();
        assert_eq!(evidence(&daemon, PATIENCE).await, Ok(()));
        daemon.abort_accept_loops_for_test().await;
        let why = evidence(&daemon, PATIENCE).await.unwrap_err();
        assert!(why.0.contains("the accept loop of frontend api"), "{why}");
        daemon.shutdown().await;
    }
}
