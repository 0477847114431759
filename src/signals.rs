//! Unix signals of the daemon: SIGTERM/SIGINT drain and exit, SIGHUP reloads.

use std::io;

use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::daemon::Daemon;

/// Serves until SIGTERM or SIGINT, then drains `daemon` and returns.
pub async fn serve_until_terminated(daemon: &Daemon) -> io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
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
        }
    };
    info!(signal = name, "shutting down: no new connections");
    daemon.shutdown().await;
    Ok(())
}
