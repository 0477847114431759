//! Upgrade without a stall: on SIGUSR2 lbd starts its binary again (the new
//! one, if the file was replaced), hands it every listening socket the way
//! systemd would (`LISTEN_FDS`, `LISTEN_FDNAMES` = the frontends' names,
//! `LISTEN_PID`), waits until it serves, tells systemd that it is the main
//! process now (`MAINPID=`), and then drains its own connections as on
//! SIGTERM. The sockets never close, so no client is refused or waits for
//! the old process's drain: the new process accepts from the moment it
//! starts. HAProxy's master-worker reload and nginx's USR2 upgrade work the
//! same way.
//!
//! If the new process exits or does not serve within [`START_TIMEOUT`], the
//! old one keeps serving as if nothing happened.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::admin::AdminSlot;
use crate::config::AdminListen;
use crate::daemon::Daemon;
use crate::daemon::systemd;

/// How long the new process may take to serve its admin API.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an upgrade did not happen (the old process keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// lbd is already shutting down.
    #[error("lbd is shutting down: nothing to hand over")]
    ShuttingDown,
    /// The sockets could not be duplicated for the new process.
    #[error("cannot duplicate the listening sockets for the new lbd: {0}")]
    Sockets(io::Error),
    /// The new process could not be started.
    #[error("cannot start the new lbd ({program}): {source}")]
    Spawn {
        /// What was run.
        program: String,
        /// The OS error.
        source: io::Error,
    },
    /// The new process exited before it served.
    #[error("the new lbd exited before it served ({0}); see its log lines above")]
    Exited(std::process::ExitStatus),
    /// The new process did not serve in time.
    #[error("the new lbd did not serve its admin API within {0:?}; stopped it")]
    Timeout(Duration),
}

/// Starts the successor and, once it serves, leaves it the sockets and the
/// ready files. `Ok(pid)`: the caller drains and exits; `Err`: nothing
/// changed, the caller keeps serving.
pub async fn hand_over(daemon: &Daemon, admin_api: &AdminSlot) -> Result<u32, UpgradeError> {
    if daemon.is_shutting_down() {
        return Err(UpgradeError::ShuttingDown);
    }
    let sockets = daemon.listening_sockets().map_err(UpgradeError::Sockets)?;
    let admin = daemon.snapshot().config.admin.listen.clone();
    // The successor binds the admin address itself: free it first.
    admin_api.stop().await;
    wait_admin_free(&admin).await;
    let child = match spawn(sockets) {
        Ok(child) => child,
        Err(err) => {
            restore_admin(admin_api).await;
            return Err(err);
        }
    };
    let pid = child.id();
    info!(pid, "started the new lbd; waiting for it to serve");
    match wait_serving(child, &admin).await {
        Ok(()) => {}
        Err(err) => {
            restore_admin(admin_api).await;
            return Err(err);
        }
    }
    crate::daemon::ready_file::hand_over();
    // NotifyAccess=main: from now on systemd listens to the new process.
    systemd::notifier().send(&format!("MAINPID={pid}"));
    info!(pid, "the new lbd serves; draining this one");
    Ok(pid)
}

async fn restore_admin(admin_api: &AdminSlot) {
    if let Err(err) = admin_api.restart().await {
        warn!(error = %err, "cannot serve the admin API again after the failed upgrade");
    }
}

/// The binary to run: this one's path, which names the new binary if the
/// file was replaced (the kernel then calls the running one "… (deleted)").
fn program() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) => PathBuf::from(path),
        None => exe,
    }
}

/// Runs `program() ARGS…` with `sockets` as descriptors 3… and the
/// systemd variables describing them. `LISTEN_PID` must be the new
/// process's own pid, known only after fork: a shell sets it and execs
/// (lbd only needs `/bin/sh` for an upgrade).
fn spawn(sockets: Vec<(String, std::net::TcpListener)>) -> Result<Child, UpgradeError> {
    let count = sockets.len();
    let first = systemd::activation::LISTEN_FDS_START;
    // Above every target number, so that placing one never overwrites
    // another still to be placed.
    let mut high: Vec<OwnedFd> = Vec::with_capacity(count);
    for (_, socket) in &sockets {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one.
        let fd = unsafe {
            libc::fcntl(
                socket.as_raw_fd(),
                libc::F_DUPFD_CLOEXEC,
                first + count as RawFd,
            )
        };
        if fd < 0 {
            return Err(UpgradeError::Sockets(io::Error::last_os_error()));
        }
        // SAFETY: fcntl just returned this new descriptor.
        high.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let names: Vec<&str> = sockets.iter().map(|(name, _)| name.as_str()).collect();
    let raw: Vec<RawFd> = high.iter().map(AsRawFd::as_raw_fd).collect();
    let program = program();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        // The watchdog (WATCHDOG_PID names the pid systemd expects pings
        // from) follows the main pid too.
        .arg(
            "export LISTEN_PID=$$; if [ -n \"$WATCHDOG_PID\" ]; then export WATCHDOG_PID=$$; fi; \
             exec \"$0\" \"$@\"",
        )
        .arg(&program)
        .args(&args)
        .env("LISTEN_FDS", count.to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID");
    // SAFETY: between fork and exec the closure calls only dup2, which is
    // async-signal-safe, on descriptors that stay open in the parent.
    unsafe {
        command.pre_exec(move || {
            for (i, &fd) in raw.iter().enumerate() {
                if libc::dup2(fd, first + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| UpgradeError::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    drop(high);
    Ok(child)
}

/// Waits (up to 2 s) until the admin address can be bound again.
async fn wait_admin_free(admin: &AdminListen) {
    let AdminListen::Tcp(addr) = admin else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while std::net::TcpListener::bind(addr).is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the new process's admin API accepts a connection: by then
/// its frontends listen (they start first).
async fn wait_serving(mut child: Child, admin: &AdminListen) -> Result<(), UpgradeError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(UpgradeError::Exited(status));
        }
        let up = match admin {
            AdminListen::Tcp(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
            AdminListen::Unix(path) => tokio::net::UnixStream::connect(path).await.is_ok(),
        };
        if up {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(UpgradeError::Timeout(START_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
