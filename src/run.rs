//! `run`: the whole life of an lbd process, for the binary and embedders
//! alike. It loads the config, binds the admin API, starts the daemon,
//! raises the open-files limit, tells systemd, serves signals (SIGHUP
//! reloads, SIGTERM drains), and stops the admin API last, after the drain.
//!
//! This is the composition root: it knows the daemon and the admin API,
//! and neither knows the other's start or stop.

use std::io;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::admin::{self, AdminError};
use crate::config::{Config, ConfigError};
use crate::daemon::reload::Resolver;
use crate::daemon::systemd::InheritedListeners;
use crate::daemon::{Daemon, StartError, rlimit, service, signals};

/// Why lbd could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    /// The config file is unreadable or invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The admin API could not listen (or its token file cannot serve).
    #[error("{0}")]
    Admin(#[from] AdminError),
    /// The daemon could not start (a listen address, inherited sockets).
    #[error("{0}")]
    Start(#[from] StartError),
}

/// What one lbd process serves.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// The config file, read at start and at every reload.
    pub config: PathBuf,
    /// Listening sockets systemd handed over (socket activation).
    pub inherited: InheritedListeners,
    /// Cancelling it drains and stops lbd, as SIGTERM does (for embedders
    /// and tests; the binary relies on signals).
    pub stop: CancellationToken,
}

/// Serves `options.config` until SIGTERM/SIGINT (or `options.stop`), then
/// drains live connections within `drain_timeout`. `on_serving` runs once
/// everything listens (the demo prints its instructions there).
pub async fn run(options: RunOptions, on_serving: impl FnOnce(&Daemon)) -> Result<(), RunError> {
    // Before anything serves: a SIGHUP during startup is queued, not fatal.
    let signals = signals::Signals::install().map_err(RunError::Signals)?;
    let fd_limit = rlimit::raise_fd_limit();
    let checked = Config::load_with_warnings(&options.config)?;
    admin::auth::Policy::new(&checked.config.admin)
        .check()
        .map_err(AdminError::from)?;
    let admin_listener = admin::bind(&checked.config.admin.listen).await?;
    let daemon = Daemon::start_checked(
        &options.config,
        checked,
        options.inherited,
        Resolver::system(),
    )
    .await?;
    match fd_limit {
        Ok(limit) => rlimit::check_fd_limit(&daemon.snapshot().config, limit),
        Err(err) => warn!(error = %err, "cannot read or raise the open-files limit"),
    }
    // The admin API outlives the accept loops: /readyz says "shutting down"
    // and /metrics keeps answering while connections drain.
    let admin = admin::AdminSlot::serve(admin_listener, daemon.clone());
    on_serving(&daemon);
    let service = CancellationToken::new();
    service::announce(&daemon, &service);
    signals::serve_with(signals, &daemon, &options.stop, || async {
        match crate::upgrade::hand_over(&daemon, &admin).await {
            Ok(_) => true,
            Err(err) => {
                warn!(error = %err, "upgrade failed; this lbd keeps serving");
                false
            }
        }
    })
    .await;
    service.cancel();
    admin.stop().await;
    Ok(())
}
