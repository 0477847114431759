//! The daemon's listening sockets: which frontend each one feeds, and how a
//! reload opens new ones, closes removed ones, and hands a socket that
//! changes frontend over without closing it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::Daemon;
use crate::frontend::Frontend;
use crate::listener;
use crate::reload::ConfigDiff;
use crate::socket;

/// A listen address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error(
    "frontend {frontend:?}: cannot listen on {addr}: {source} (is another process using the port, or does binding below 1024 need CAP_NET_BIND_SERVICE?)"
)]
pub struct BindError {
    /// The frontend that owns the address.
    pub frontend: String,
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    pub source: std::io::Error,
}

/// A bound listening socket, its accept loop, and the token that stops it.
#[derive(Debug)]
struct BoundListener {
    frontend: String,
    /// The address as configured (port 0 stays 0), to match reloads against.
    configured: SocketAddr,
    /// The address actually bound.
    local: SocketAddr,
    stop: CancellationToken,
    /// Ends with the socket, still bound, once `stop` fires.
    accept_loop: JoinHandle<TcpListener>,
}

/// Every listening socket of the daemon.
#[derive(Debug, Default)]
pub(super) struct Listeners {
    bound: Vec<BoundListener>,
}

impl Listeners {
    pub(super) fn local_addrs(&self, frontend: &str) -> Vec<SocketAddr> {
        self.bound
            .iter()
            .filter(|l| l.frontend == frontend)
            .map(|l| l.local)
            .collect()
    }

    /// Stops every accept loop and closes its socket as it ends.
    pub(super) fn close_all(&mut self) {
        for bound in self.bound.drain(..) {
            bound.stop.cancel();
        }
    }

    /// Takes out the listener of `frontend` configured as `addr`.
    fn take(&mut self, frontend: &str, addr: SocketAddr) -> Option<BoundListener> {
        let index = self
            .bound
            .iter()
            .position(|l| l.frontend == frontend && l.configured == addr)?;
        Some(self.bound.remove(index))
    }
}

/// What a reload does to the listening sockets, prepared before anything
/// changes so a failed bind leaves the running config whole.
#[derive(Debug, Default)]
pub(super) struct ListenerPlan {
    /// Sockets bound for added addresses, with the frontend and configured address.
    open: Vec<(String, SocketAddr, TcpListener)>,
    /// (frontend, configured address) to stop accepting on.
    close: Vec<(String, SocketAddr)>,
    /// An address leaving one frontend for another: (from, to, address).
    hand_over: Vec<(String, String, SocketAddr)>,
}

impl Daemon {
    /// Binds the sockets a reload adds. Nothing running changes; dropping
    /// the plan closes what it bound.
    pub(super) fn plan_listeners(
        &self,
        diff: &ConfigDiff,
        backlog_of: impl Fn(&str) -> u32,
    ) -> Result<ListenerPlan, BindError> {
        let mut plan = ListenerPlan::default();
        let mut removed = diff.listeners.removed.clone();
        for (frontend, addr) in &diff.listeners.added {
            // A fixed address moving between frontends keeps its socket.
            let moving = (addr.port() != 0)
                .then(|| removed.iter().position(|(_, a)| a == addr))
                .flatten();
            if let Some(index) = moving {
                let (from, _) = removed.remove(index);
                plan.hand_over.push((from, frontend.clone(), *addr));
                continue;
            }
            let listener =
                socket::bind_listener(*addr, backlog_of(frontend)).map_err(|source| BindError {
                    frontend: frontend.clone(),
                    addr: *addr,
                    source,
                })?;
            plan.open.push((frontend.clone(), *addr, listener));
        }
        plan.close = removed;
        Ok(plan)
    }

    /// Carries a plan out against the frontends of the new snapshot.
    pub(super) async fn apply_listeners(&self, plan: ListenerPlan, frontends: &[Arc<Frontend>]) {
        let find = |name: &str| {
            frontends
                .iter()
                .find(|f| f.name == name)
                .cloned()
                .expect("the plan only names frontends of the new config")
        };
        for (frontend, addr) in plan.close {
            let taken = self
                .shared
                .listeners
                .lock()
                .expect("listener list lock")
                .take(&frontend, addr);
            if let Some(bound) = taken {
                bound.stop.cancel();
                info!(frontend = %frontend, address = %bound.local, "stopped listening; live connections go on");
            }
        }
        for (from, to, addr) in plan.hand_over {
            let taken = self
                .shared
                .listeners
                .lock()
                .expect("listener list lock")
                .take(&from, addr);
            let Some(bound) = taken else { continue };
            bound.stop.cancel();
            // Clients arriving meanwhile wait in the kernel's accept queue.
            match bound.accept_loop.await {
                Ok(listener) => {
                    info!(from = %from, frontend = %to, address = %bound.local, "listener handed over");
                    self.spawn_accept_loop(find(&to), addr, listener);
                }
                Err(error) => {
                    tracing::error!(frontend = %to, address = %addr, %error, "accept loop ended abnormally; the address is not served");
                }
            }
        }
        for (frontend, addr, listener) in plan.open {
            self.spawn_accept_loop(find(&frontend), addr, listener);
        }
    }

    /// Starts accepting on `listener` for `frontend`.
    pub(super) fn spawn_accept_loop(
        &self,
        frontend: Arc<Frontend>,
        configured: SocketAddr,
        listener: TcpListener,
    ) {
        let local = listener
            .local_addr()
            .expect("a bound socket has a local address");
        info!(frontend = %frontend.name, address = %local, "listening");
        let stop = self.shared.stop_accepting.child_token();
        let name = frontend.name.clone();
        let accept_loop = tokio::spawn(listener::accept_loop(
            listener,
            frontend,
            stop.clone(),
            self.shared.connections.clone(),
            self.shared.close_connections.clone(),
        ));
        self.shared
            .listeners
            .lock()
            .expect("listener list lock")
            .bound
            .push(BoundListener {
                frontend: name,
                configured,
                local,
                stop,
                accept_loop,
            });
    }
}
