//! Running under systemd: readiness, reload and stop notifications, the
//! watchdog and status line ([`notify`], [`service`]), and listening sockets
//! handed over by a socket unit ([`activation`]).
//!
//! Everything here is inert without systemd: no `NOTIFY_SOCKET`, no
//! notifications; no `LISTEN_FDS`, every listener is bound as usual.

pub mod activation;
pub mod notify;

pub use activation::{ActivationError, Assignment, InheritedListeners, InheritedSocket};
pub use notify::{Notifier, ReloadGuard, notifier};
