//! Unix signals of the daemon: SIGTERM/SIGINT drain and exit, SIGHUP reloads,
//! SIGUSR2 upgrades (a new lbd takes the sockets over, see [`crate::upgrade`]).

use std::future::Future;
use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::daemon::Daemon;

/// The daemon's signal handlers, installed before it starts so a SIGHUP
/// that arrives during startup is queued instead of killing the process
/// (SIGHUP's default action).
#[derive(Debug)]
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
    upgrade: Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            upgrade: signal(SignalKind::user_defined2())?,
        })
    }
}

/// Serves until SIGTERM, SIGINT or `stop`, then drains `daemon` and
/// returns. A SIGHUP reloads, as a task of the daemon's.
/// On SIGUSR2, `upgrade_to_successor` starts the new lbd and says whether it
/// took over (then this one drains and exits).
pub async fn serve_with<F, U>(
    signals: Signals,
    daemon: &Daemon,
    stop: &CancellationToken,
    mut upgrade_to_successor: F,
) where
    F: FnMut() -> U,
    U: Future<Output = bool>,
{
    let Signals {
        mut terminate,
        mut interrupt,
        mut hangup,
        mut upgrade,
    } = signals;
    let name = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            () = stop.cancelled() => break "stop",
            _ = hangup.recv() => {
                info!("SIGHUP received");
                // Reloads take turns inside the daemon; the outcome is logged
                // there and shown in /api/v1/status. The signal loop stays free
                // for SIGTERM meanwhile.
                let reloading = daemon.clone();
                daemon.spawn(async move {
                    let _ = reloading.reload().await;
                });
            }
            _ = upgrade.recv() => {
                info!("SIGUSR2 received: starting the new lbd");
                if upgrade_to_successor().await {
                    break "SIGUSR2";
                }
            }
        }
    };
    info!(signal = name, "shutting down: no new connections");
    // A second SIGTERM/SIGINT cuts the drain short, as operators expect of a
    // long `drain_timeout` they no longer want to wait for.
    let shutdown = daemon.shutdown();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = terminate.recv() => daemon.close_connections_now("SIGTERM"),
            _ = interrupt.recv() => daemon.close_connections_now("SIGINT"),
            // Nothing is reloaded while connections drain (`Daemon::reload`
            // refuses too); say so rather than leave the signal unanswered.
            _ = hangup.recv() => warn!("SIGHUP ignored: lbd is shutting down; the next lbd reads the config file when it starts"),
        }
    }
}
