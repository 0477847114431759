//! The daemon's listening sockets: which frontend each one feeds, and how a
//! reload opens new ones, closes removed ones, and hands a socket that
//! changes frontend over without closing it.
//!
//! The daemon keeps a duplicate descriptor of every listening socket: the
//! accept loop owns one, the daemon the other, so a socket moving to another
//! frontend stays open (and keeps queuing clients) while one accept loop
//! ends and the next begins. A socket closes once both are dropped.
//!
//! With one runtime per core (see [`crate::runtime`]) an address lbd binds
//! itself has one SO_REUSEPORT socket per runtime, each with its own accept
//! loop; a socket inherited from systemd has one accept loop, which hands
//! connections to the other runtimes as its own fills up (see
//! [`crate::runtime::place`]).

use std::net::SocketAddr;
use std::sync::Arc;

use socket2::SockRef;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::Daemon;
use crate::frontend::Frontend;
use crate::listener;
use crate::reload::ConfigDiff;
use crate::runtime;
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
    /// The daemon's descriptors of the address's sockets (each accept loop
    /// has another).
    sockets: Vec<std::net::TcpListener>,
    /// The accept loops; one finished while `stop` is not cancelled died.
    tasks: Vec<JoinHandle<()>>,
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

    /// (frontend, address) of every accept loop that ended without being
    /// told to: a listener nobody serves any more.
    pub(super) fn dead_accept_loops(&self) -> Vec<(String, SocketAddr)> {
        self.bound
            .iter()
            .filter(|l| l.tasks.iter().any(JoinHandle::is_finished) && !l.stop.is_cancelled())
            .map(|l| (l.frontend.clone(), l.local))
            .collect()
    }

    /// Ends every accept loop abruptly, as a bug would (tests only).
    #[cfg(test)]
    pub(super) fn abort_accept_loops(&self) {
        for task in self.bound.iter().flat_map(|bound| &bound.tasks) {
            task.abort();
        }
    }

    /// A duplicate of every listening socket with its frontend's name, for
    /// a successor process to serve (see [`crate::upgrade`]).
    pub(super) fn duplicates(&self) -> std::io::Result<Vec<(String, std::net::TcpListener)>> {
        let mut all = Vec::new();
        for bound in &self.bound {
            for socket in &bound.sockets {
                all.push((bound.frontend.clone(), socket.try_clone()?));
            }
        }
        Ok(all)
    }

    /// Stops every accept loop; each socket closes as its loop ends.
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
    open: Vec<(String, SocketAddr, Vec<std::net::TcpListener>)>,
    /// (frontend, configured address) to stop accepting on.
    close: Vec<(String, SocketAddr)>,
    /// An address leaving one frontend for another: (from, to, address, backlog).
    hand_over: Vec<(String, String, SocketAddr, u32)>,
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
                plan.hand_over
                    .push((from, frontend.clone(), *addr, backlog_of(frontend)));
                continue;
            }
            let listeners =
                socket::bind_listeners(*addr, backlog_of(frontend), runtime::acceptor_count())
                    .map_err(|source| BindError {
                        frontend: frontend.clone(),
                        addr: *addr,
                        source,
                    })?;
            plan.open.push((frontend.clone(), *addr, listeners));
        }
        plan.close = removed;
        Ok(plan)
    }

    /// Carries a plan out against the frontends of the new snapshot.
    pub(super) fn apply_listeners(&self, plan: ListenerPlan, frontends: &[Arc<Frontend>]) {
        let find = |name: &str| {
            frontends
                .iter()
                .find(|f| f.name == name)
                .cloned()
                .expect("the plan only names frontends of the new config")
        };
        for (frontend, addr) in plan.close {
            let taken = self.listeners().take(&frontend, addr);
            if let Some(bound) = taken {
                bound.stop.cancel();
                info!(frontend = %frontend, address = %bound.local, "stopped listening; live connections go on");
            }
        }
        for (from, to, addr, backlog) in plan.hand_over {
            let taken = self.listeners().take(&from, addr);
            let Some(bound) = taken else { continue };
            bound.stop.cancel();
            // listen() again: harmless on a listening socket, and it wakes
            // one the old accept loop had paused.
            let handed = bound.sockets.iter().try_for_each(|socket| {
                SockRef::from(socket).listen(i32::try_from(backlog).unwrap_or(i32::MAX))
            });
            match handed {
                Ok(()) => {
                    info!(from = %from, frontend = %to, address = %bound.local, "listener handed over");
                    self.spawn_accept_loop(find(&to), addr, bound.sockets);
                }
                Err(err) => {
                    error!(frontend = %to, address = %addr, error = %err, "cannot hand the listener over; the address is not served until the next reload");
                }
            }
        }
        for (frontend, addr, listener) in plan.open {
            self.spawn_accept_loop(find(&frontend), addr, listener);
        }
    }

    /// Starts accepting for `frontend` on `listeners`, the sockets of one
    /// address: one accept loop per runtime when there is a socket for each,
    /// else one loop (on this runtime) that spreads its connections.
    pub(super) fn spawn_accept_loop(
        &self,
        frontend: Arc<Frontend>,
        configured: SocketAddr,
        listeners: Vec<std::net::TcpListener>,
    ) {
        let Some(local) = listeners.first().and_then(|l| l.local_addr().ok()) else {
            error!(frontend = %frontend.name, address = %configured, "a listening socket has no address; not serving it");
            return;
        };
        let mut bound = self.listeners();
        // Shutdown closes every listener under this lock: one arriving after
        // it (callers check first; this is the backstop) would listen,
        // unserved, until the process exits.
        if self.shared.stop_accepting.is_cancelled() {
            info!(frontend = %frontend.name, address = %local, "not listening: lbd is shutting down");
            return;
        }
        let sockets = match listeners.iter().map(duplicate).collect() {
            Ok(sockets) => sockets,
            Err(err) => {
                error!(frontend = %frontend.name, address = %local, error = %err, "cannot keep a descriptor of the listener (out of file descriptors?); not serving this address");
                return;
            }
        };
        info!(frontend = %frontend.name, address = %local, "listening");
        let stop = self.shared.stop_accepting.child_token();
        let name = frontend.name.clone();
        let tasks = listeners
            .into_iter()
            .zip(runtime::handles())
            .enumerate()
            .map(|(home, (listener, runtime))| {
                let accepting = listener::AcceptLoop {
                    frontend: Arc::clone(&frontend),
                    global: Arc::clone(&self.shared.global_limit),
                    stop: stop.clone(),
                    tracker: self.shared.connections.clone(),
                    close: self.shared.close_connections.clone(),
                    home,
                };
                runtime.spawn(async move {
                    // Registered with the reactor of the runtime it runs on.
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accepting.run(listener).await,
                        Err(err) => {
                            error!(frontend = %accepting.frontend.name, address = %local, error = %err, "cannot start an accept loop");
                        }
                    }
                })
            })
            .collect();
        bound.bound.push(BoundListener {
            frontend: name,
            configured,
            local,
            stop,
            sockets,
            tasks,
        });
    }
}

/// A second descriptor of a listening socket, outside tokio's reactor.
fn duplicate(listener: &std::net::TcpListener) -> std::io::Result<std::net::TcpListener> {
    let socket = SockRef::from(listener).try_clone()?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
