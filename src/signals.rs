//! Unix signals of the daemon: SIGTERM/SIGINT drain and exit, SIGHUP reloads,
//! SIGUSR2 upgrades (a new lbd takes the sockets over, see [`crate::upgrade`]).

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};
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

/// Serves until SIGTERM or SIGINT, then drains `daemon` and returns.
pub async fn serve_until_terminated(daemon: &Daemon) -> io::Result<()> {
    serve_with(Signals::install()?, daemon).await
}

/// Like [`serve_until_terminated`], with handlers installed earlier.
pub async fn serve_with(signals: Signals, daemon: &Daemon) -> io::Result<()> {
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
            _ = hangup.recv() => {
                info!("SIGHUP received");
                // Reloads take turns inside the daemon; the outcome is logged
                // there and shown in /api/v1/status. The signal loop stays free
                // for SIGTERM meanwhile.
                let daemon = daemon.clone();
                tokio::spawn(async move {
                    let _ = daemon.reload().await;
                });
            }
            _ = upgrade.recv() => {
                info!("SIGUSR2 received: starting the new lbd");
                match crate::upgrade::hand_over(daemon).await {
                    Ok(_) => break "SIGUSR2",
                    Err(err) => warn!(error = %err, "upgrade failed; this lbd keeps serving"),
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
            () = &mut shutdown => return Ok(()),
            _ = terminate.recv() => daemon.close_connections_now("SIGTERM"),
            _ = interrupt.recv() => daemon.close_connections_now("SIGINT"),
            // Nothing is reloaded while connections drain (`Daemon::reload`
            // refuses too); say so rather than leave the signal unanswered.
            _ = hangup.recv() => warn!("SIGHUP ignored: lbd is shutting down; the next lbd reads the config file when it starts"),
        }
    }
}
