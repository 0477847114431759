//! Talking to systemd: the notification socket ([`notify`]: readiness,
//! reload and stop, watchdog, status) and listening sockets handed over by a
//! socket unit ([`activation`]). What the daemon tells it, and when, is
//! [`crate::daemon::service`].
//!
//! Everything here is inert without systemd: no `NOTIFY_SOCKET`, no
//! notifications; no `LISTEN_FDS`, every listener is bound as usual.

pub mod activation;
pub mod notify;

pub use activation::{ActivationError, Assignment, InheritedListeners, InheritedSocket};
pub use notify::{Notifier, ReloadGuard, notifier};
