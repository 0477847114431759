//! sd_notify(3) by hand: datagrams to the service manager's `NOTIFY_SOCKET`
//! saying the daemon is ready, reloading, stopping, alive, and how it fares.
//!
//! Every call is a no-op when lbd does not run under a `Type=notify` unit, so
//! the daemon calls them unconditionally.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing::{debug, warn};

/// Why a `NOTIFY_SOCKET` value cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The address is neither a path nor an abstract (`@`) name.
    #[error(
        "NOTIFY_SOCKET={0:?} is not supported: lbd talks to a unix datagram socket given as /path or @abstract-name"
    )]
    Unsupported(String),
    /// The socket could not be created or the address is invalid.
    #[error("NOTIFY_SOCKET={address:?}: {source}")]
    Socket {
        /// The address as given.
        address: String,
        /// The OS error.
        source: io::Error,
    },
}

/// Where sd_notify messages go: the service manager's socket, or nowhere.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    /// A failed send is logged once at warn, then at debug: a missing
    /// manager must not flood the journal every watchdog period.
    warned: AtomicBool,
    /// Where the service stands as told to the manager. Lifecycle messages
    /// are decided and sent under this lock, so READY=1 can never follow
    /// STOPPING=1, whichever threads race.
    phase: Mutex<Phase>,
}

/// What the manager has been told about the service's lifecycle.
#[derive(Debug, Default, Clone, Copy)]
struct Phase {
    /// READY=1 was sent (startup is over).
    ready: bool,
    /// STOPPING=1 was sent: nothing but status lines and pings from now on.
    stopping: bool,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: UnixAddr,
    address: String,
}

/// The process-wide notifier, built from `NOTIFY_SOCKET` on first use: the
/// socket belongs to the process, like the variable that names it.
pub fn notifier() -> &'static Notifier {
    static NOTIFIER: OnceLock<Notifier> = OnceLock::new();
    NOTIFIER.get_or_init(|| match std::env::var("NOTIFY_SOCKET") {
        Ok(address) => Notifier::to_address(&address).unwrap_or_else(|err| {
            warn!("{err}; systemd will not hear about readiness");
            Notifier::disabled()
        }),
        Err(_) => Notifier::disabled(),
    })
}

impl Notifier {
    /// A notifier that sends nothing (no service manager listening).
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            warned: AtomicBool::new(false),
            phase: Mutex::new(Phase::default()),
        }
    }

    /// A notifier sending to `address`: a socket path, or `@name` for an
    /// abstract socket, as systemd writes `NOTIFY_SOCKET`.
    pub fn to_address(address: &str) -> Result<Notifier, NotifyError> {
        let socket_error = |source| NotifyError::Socket {
            address: address.to_owned(),
            source,
        };
        let addr = if let Some(name) = address.strip_prefix('@') {
            UnixAddr::from_abstract_name(name.as_bytes()).map_err(socket_error)?
        } else if address.starts_with('/') {
            UnixAddr::from_pathname(address).map_err(socket_error)?
        } else {
            return Err(NotifyError::Unsupported(address.to_owned()));
        };
        let socket = UnixDatagram::unbound().map_err(socket_error)?;
        // A full receive queue must never stall a runtime thread.
        socket.set_nonblocking(true).map_err(socket_error)?;
        Ok(Notifier {
            target: Some(Target {
                socket,
                addr,
                address: address.to_owned(),
            }),
            warned: AtomicBool::new(false),
            phase: Mutex::new(Phase::default()),
        })
    }

    /// Whether a service manager is listening.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Startup is complete: listeners are serving. Ignored once stopping began.
    pub fn ready(&self) {
        let mut phase = self.phase();
        if phase.stopping {
            return;
        }
        phase.ready = true;
        self.send("READY=1");
    }

    /// A reload starts; the returned guard says `READY=1` when dropped, so
    /// the manager leaves the reloading state whether the reload worked or not.
    ///
    /// Only a service that said READY=1 reloads in the manager's eyes: during
    /// startup (a SIGHUP before the first health checks finished) nothing is
    /// sent, so READY=1 still waits for those checks, and once stopping began
    /// nothing is sent either, so READY=1 never follows STOPPING=1.
    #[must_use = "the reload ends (READY=1) when the guard is dropped"]
    pub fn reloading(&self) -> ReloadGuard<'_> {
        let phase = self.phase();
        let announced = phase.ready && !phase.stopping;
        if announced {
            self.send(&format!(
                "RELOADING=1\nMONOTONIC_USEC={}",
                monotonic_now().as_micros()
            ));
        }
        ReloadGuard {
            notifier: self,
            announced,
        }
    }

    /// Shutdown has begun: no new connections, live ones draining. From now
    /// on READY=1 is not sent again.
    pub fn stopping(&self) {
        let mut phase = self.phase();
        phase.stopping = true;
        self.send("STOPPING=1");
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        // The lock guards two booleans; a panic while holding it cannot
        // leave them half-written.
        self.phase
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A one-line summary shown by `systemctl status`.
    pub fn status(&self, line: &str) {
        // A newline would start a new assignment; keep the line one line.
        self.send(&format!("STATUS={}", line.replace('\n', " ")));
    }

    /// The daemon is alive; the watchdog timer starts over.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// Sends one notification datagram (newline-separated assignments).
    pub fn send(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        match target.socket.send_to_addr(message.as_bytes(), &target.addr) {
            Ok(_) => debug!(message, "notified systemd"),
            Err(error) if !self.warned.swap(true, Relaxed) => {
                warn!(socket = %target.address, %error, message, "cannot notify systemd (NOTIFY_SOCKET)");
            }
            Err(error) => {
                debug!(socket = %target.address, %error, message, "cannot notify systemd")
            }
        }
    }
}

/// Ends a reload: sends `READY=1` when dropped, if the reload was announced
/// with `RELOADING=1` and stopping has not begun since.
#[derive(Debug)]
pub struct ReloadGuard<'a> {
    notifier: &'a Notifier,
    announced: bool,
}

impl Drop for ReloadGuard<'_> {
    fn drop(&mut self) {
        if !self.announced {
            return;
        }
        let phase = self.notifier.phase();
        if !phase.stopping {
            self.notifier.send("READY=1");
        }
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC` when the watchdog
/// is on for this process (`WATCHDOG_PID` unset or ours), as sd_watchdog_enabled(3).
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec: u64 = usec?.parse().ok().filter(|&usec| usec > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// CLOCK_MONOTONIC, the clock systemd's `MONOTONIC_USEC` is read against
/// (std's `Instant` does not expose its value).
fn monotonic_now() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    debug_assert_eq!(rc, 0, "CLOCK_MONOTONIC always exists on Linux");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver(tag: &str) -> (UnixDatagram, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("lbd-notify-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (socket, path)
    }

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_each_state_to_a_path_socket() {
        let (socket, path) = receiver("path");
        let notifier = Notifier::to_address(path.to_str().unwrap()).unwrap();
        notifier.ready();
        assert_eq!(recv(&socket), "READY=1");
        let guard = notifier.reloading();
        let reloading = recv(&socket);
        let usec: u128 = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{reloading:?}"))
            .parse()
            .unwrap();
        assert!(usec <= monotonic_now().as_micros());
        drop(guard);
        assert_eq!(recv(&socket), "READY=1");
        notifier.status("2/3 servers up,\n5 connections");
        assert_eq!(recv(&socket), "STATUS=2/3 servers up, 5 connections");
        notifier.watchdog();
        assert_eq!(recv(&socket), "WATCHDOG=1");
        notifier.stopping();
        assert_eq!(recv(&socket), "STOPPING=1");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_reload_during_startup_says_nothing_and_leaves_ready_to_startup() {
        let (socket, path) = receiver("startup");
        let notifier = Notifier::to_address(path.to_str().unwrap()).unwrap();
        // SIGHUP before the first health checks finished.
        drop(notifier.reloading());
        notifier.status("checks done");
        assert_eq!(
            recv(&socket),
            "STATUS=checks done",
            "no RELOADING/READY yet"
        );
        notifier.ready();
        assert_eq!(recv(&socket), "READY=1");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn ready_never_follows_stopping() {
        let (socket, path) = receiver("stopping");
        let notifier = Notifier::to_address(path.to_str().unwrap()).unwrap();
        notifier.ready();
        assert_eq!(recv(&socket), "READY=1");
        // A reload is running when shutdown begins; it ends during the drain.
        let reload = notifier.reloading();
        assert!(recv(&socket).starts_with("RELOADING=1\n"));
        notifier.stopping();
        assert_eq!(recv(&socket), "STOPPING=1");
        drop(reload);
        // Neither a reload started during the drain, nor a late startup.
        drop(notifier.reloading());
        notifier.ready();
        notifier.status("end");
        assert_eq!(recv(&socket), "STATUS=end", "READY=1 after STOPPING=1");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("lbd-notify-abstract-{}", std::process::id());
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Notifier::to_address(&format!("@{name}")).unwrap().ready();
        assert_eq!(recv(&socket), "READY=1");
    }

    #[test]
    fn a_missing_manager_is_not_an_error() {
        let notifier = Notifier::to_address("/nonexistent/notify.sock").unwrap();
        notifier.ready();
        notifier.watchdog();
        Notifier::disabled().ready();
        assert!(!Notifier::disabled().is_enabled());
    }

    #[test]
    fn rejects_addresses_it_cannot_speak_to() {
        assert!(matches!(
            Notifier::to_address("vsock:2:1234"),
            Err(NotifyError::Unsupported(_))
        ));
        assert!(matches!(
            Notifier::to_address("relative/path"),
            Err(NotifyError::Unsupported(_))
        ));
    }

    #[test]
    fn watchdog_pings_at_half_the_timeout_for_this_process_only() {
        assert_eq!(
            watchdog_interval_from(Some("20000000"), None, 7),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            watchdog_interval_from(Some("200000"), Some("7"), 7),
            Some(Duration::from_millis(100))
        );
        assert_eq!(watchdog_interval_from(Some("200000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
    }
}
