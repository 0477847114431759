//! Unix signals of the daemon: SIGTERM/SIGINT drain and exit, SIGHUP reloads.

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
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// Serves until SIGTERM, SIGINT or `stop`, then drains `daemon` and
/// returns. A SIGHUP reloads, as a task of the daemon's.
pub async fn serve_with(signals: Signals, daemon: &Daemon, stop: &CancellationToken) {
    let Signals {
        mut terminate,
        mut interrupt,
        mut hangup,
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
