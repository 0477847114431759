//! The accept loop of one listening socket.
//!
//! A connection is accepted only once the frontend and the process have a
//! free slot, so over `max_connections` clients wait in the kernel backlog
//! instead of being accepted and dropped; over `max_connections_per_source`
//! they are refused (see [`crate::proxy::limit`]). An idle accept loop holds no
//! slot: when several listeners race for the last one, the losers' clients
//! (one per listener) wait inside lbd instead. Running out of file
//! descriptors backs off instead of spinning: the pending connection stays
//! queued and is taken later.
//!
//! While the frontend's backend has no server that can take a connection,
//! the listener is paused (see [`crate::net::pausable`]): clients get a true
//! "connection refused" instead of a handshake followed by a reset, and the
//! listener resumes as soon as a server is back.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::net::pausable::PausableListener;
use crate::net::socket;
use crate::proxy::forward;
use crate::proxy::frontend::{AvailabilityWatch, Frontend, RejectReason};
use crate::proxy::limit::{ConnectionLimit, ConnectionSlot};
use crate::proxy::runtime;

const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How often a paused listener looks at its backend even without a wake-up
/// (an admin change made by a caller that did not signal the frontend).
const PAUSED_RECHECK: Duration = Duration::from_secs(1);

/// One accept loop: where its connections go and what stops it.
#[derive(Debug)]
pub struct AcceptLoop {
    /// The frontend whose connections this loop accepts.
    pub frontend: Arc<Frontend>,
    /// The process-wide connection limit; a connection needs a slot of it
    /// and one of its frontend.
    pub global: Arc<ConnectionLimit>,
    /// Ends the loop (SIGTERM, a reload that removes the address).
    pub stop: CancellationToken,
    /// Tracks every connection task, for the drain.
    pub tracker: TaskTracker,
    /// Handed to each connection: closes it at the drain deadline.
    pub close: CancellationToken,
    /// The runtime this loop runs on (index in [`runtime::handles`]): its
    /// connections live there unless another runtime carries clearly fewer
    /// (see [`runtime::place`]).
    pub home: usize,
    /// Shared by the accept loops of this loop's address.
    pub paused: Arc<PausedSockets>,
}

impl AcceptLoop {
    /// Accepts on `listener` until `stop` fires.
    pub async fn run(self, listener: TcpListener) {
        let AcceptLoop {
            frontend,
            global,
            stop,
            tracker,
            close,
            home,
            paused,
        } = self;
        let runtimes = runtime::handles();
        // A relay polls its close token on every wake, and polling a token
        // locks its list of waiters: connections on different threads must
        // not share one. One child of `close` per runtime this loop feeds.
        let closers: Vec<CancellationToken> =
            runtimes.iter().map(|_| close.child_token()).collect();
        // Accepted sockets inherit these, whoever bound the listener.
        socket::tune_listener(&listener);
        let backlog = frontend.route.load().backlog;
        let mut listener = match PausableListener::new(listener, backlog) {
            Ok(listener) => listener,
            Err(e) => {
                warn!(frontend = %frontend.name, error = %e, "listener lost before its accept loop started");
                return;
            }
        };
        let mut changes = frontend.watch_availability();
        // Set once pausing failed: from then on clients are accepted and reset.
        let mut can_pause = true;
        let mut backoff = BACKOFF_START;
        'accepting: loop {
            if can_pause && !frontend.can_serve() {
                match pause_while_unavailable(
                    &mut listener,
                    &frontend,
                    &mut changes,
                    &stop,
                    &paused,
                )
                .await
                {
                    Paused::Resumed => {}
                    Paused::Stopped => return,
                    Paused::Failed => can_pause = false,
                }
            }
            // Wait until both limits have room, but hold no slot while idle in
            // accept: a listener with no clients must not keep a slot another
            // listener's waiting client needs.
            for (limit, reason) in [
                (&frontend.limit, RejectReason::MaxConnections),
                (&*global, RejectReason::GlobalMaxConnections),
            ] {
                match slot(limit, &frontend, reason, &stop, &mut changes).await {
                    Slot::Taken(_room) => {}
                    Slot::Changed => continue 'accepting,
                    Slot::Stopped => return,
                }
            }
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                () = changes.changed() => continue,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = BACKOFF_START;
                    // Another listener may have taken the room meanwhile: then
                    // this client waits here for a slot, one per listener at most.
                    let taken = (
                        take(
                            &frontend.limit,
                            &frontend,
                            RejectReason::MaxConnections,
                            &stop,
                        )
                        .await,
                        take(
                            &global,
                            &frontend,
                            RejectReason::GlobalMaxConnections,
                            &stop,
                        )
                        .await,
                    );
                    let (Some(frontend_slot), Some(global_slot)) = taken else {
                        return;
                    };
                    // Behind a proxy, the source is the PROXY header's: the
                    // connection's task counts it once it has read the header.
                    let behind_proxy = frontend.route.load().accept_proxy.is_some();
                    let entered = if behind_proxy {
                        Ok(None)
                    } else {
                        frontend.source_limit.enter(peer.ip())
                    };
                    let source = match entered {
                        Ok(source) => source,
                        Err(()) => {
                            frontend.count_rejected(RejectReason::SourceLimit);
                            debug!(frontend = %frontend.name, client = %peer, reason = RejectReason::SourceLimit.as_str(), "rejecting connection");
                            socket::reset(stream);
                            continue;
                        }
                    };
                    // An index of `runtimes`: both come from the same list.
                    let place = runtime::place(home);
                    let slot = ConnectionSlot {
                        frontend: frontend_slot,
                        global: global_slot,
                        source,
                        runtime: runtime::count_connection(place),
                    };
                    let close = &closers[place];
                    if place == home {
                        tracker.spawn(forward::handle(
                            stream,
                            peer,
                            Arc::clone(&frontend),
                            slot,
                            close.clone(),
                        ));
                    } else {
                        let to = &runtimes[place];
                        hand_over(to, &tracker, stream, peer, &frontend, slot, close);
                    }
                }
                Err(e) if is_per_connection(&e) => {
                    debug!(frontend = %frontend.name, error = %e, "accept: client gone before accept");
                }
                Err(e) => {
                    if backoff == BACKOFF_START {
                        warn!(frontend = %frontend.name, error = %e, "accept failed; backing off (raise LimitNOFILE if this is EMFILE)");
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Serves an accepted connection on another runtime: its socket leaves this
/// runtime's reactor and joins that one's.
fn hand_over(
    runtime: &Handle,
    tracker: &TaskTracker,
    stream: TcpStream,
    peer: SocketAddr,
    frontend: &Arc<Frontend>,
    slot: ConnectionSlot,
    close: &CancellationToken,
) {
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(e) => {
            debug!(frontend = %frontend.name, client = %peer, error = %e, "cannot hand a connection to another thread; dropped");
            return;
        }
    };
    let (frontend, close) = (Arc::clone(frontend), close.clone());
    runtime.spawn(tracker.track_future(async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => forward::handle(stream, peer, frontend, slot, close).await,
            Err(e) => {
                debug!(frontend = %frontend.name, client = %peer, error = %e, "cannot take over a connection from another thread; dropped");
            }
        }
    }));
}

/// A slot of `limit` for an accepted client, waiting for one if need be
/// (logged under `reason`); `None` once `stop` fires. A wait is not a
/// rejection: the client is served once the slot comes, so it is not
/// counted in `rejected_total`, which counts refused or reset clients only.
async fn take(
    limit: &ConnectionLimit,
    frontend: &Frontend,
    reason: RejectReason,
    stop: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    if let Some(permit) = limit.try_take() {
        return Some(permit);
    }
    debug!(frontend = %frontend.name, reason = reason.as_str(), "connection limit full; an accepted client waits for a slot");
    tokio::select! {
        () = stop.cancelled() => None,
        permit = limit.take() => permit.ok(),
    }
}

/// How waiting for a slot ended.
enum Slot {
    /// A slot is held.
    Taken(OwnedSemaphorePermit),
    /// The backend's availability changed: look at it again first.
    Changed,
    /// The accept loop was told to stop.
    Stopped,
}

/// Waits until `limit` has a free slot (the slot itself is handed back at
/// once); a wait is a pause of the listener, logged under `reason`, while
/// clients wait in the backlog. Not a rejection: every accept loop of the
/// address (one per runtime) waits at once, and their clients are served
/// later, so nothing is counted in `rejected_total`.
async fn slot(
    limit: &ConnectionLimit,
    frontend: &Frontend,
    reason: RejectReason,
    stop: &CancellationToken,
    changes: &mut AvailabilityWatch,
) -> Slot {
    if let Some(permit) = limit.try_take() {
        return Slot::Taken(permit);
    }
    debug!(frontend = %frontend.name, reason = reason.as_str(), "connection limit full; new clients wait in the backlog");
    tokio::select! {
        () = stop.cancelled() => Slot::Stopped,
        () = changes.changed() => Slot::Changed,
        permit = limit.take() => match permit {
            Ok(permit) => Slot::Taken(permit),
            Err(_) => Slot::Stopped,
        },
    }
}

/// How a pause ended.
enum Paused {
    /// A server is back and the listener accepts again.
    Resumed,
    /// The accept loop was told to stop.
    Stopped,
    /// The socket could not be paused; the caller accepts and resets instead.
    Failed,
}

/// Pauses the listener, waits until the backend can serve again, resumes.
async fn pause_while_unavailable(
    listener: &mut PausableListener,
    frontend: &Frontend,
    changes: &mut AvailabilityWatch,
    stop: &CancellationToken,
    paused: &PausedSockets,
) -> Paused {
    let address = listener.local_addr();
    let why = frontend.readiness().err().map(|e| e.0).unwrap_or_default();
    if let Err(e) = listener.pause() {
        warn!(frontend = %frontend.name, %address, error = %e,
            "cannot pause the listener; clients will be accepted and reset while no server is available");
        return Paused::Failed;
    }
    let mark = PausedMark::new(paused);
    if mark.first {
        info!(frontend = %frontend.name, %address,
            "frontend {} paused on {address} until a server is back; {why}", frontend.name);
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                // Leave the socket listening: one shared with systemd (socket
                // activation) must be ready for the next lbd.
                let _ = listener.resume();
                return Paused::Stopped;
            }
            () = changes.changed() => {}
            () = tokio::time::sleep(PAUSED_RECHECK) => {}
        }
        if !frontend.can_serve() {
            continue;
        }
        match listener.resume() {
            Ok(()) => {
                if mark.last() {
                    info!(frontend = %frontend.name, %address,
                        "frontend {} resumed on {address}: a server can take connections again", frontend.name);
                }
                return Paused::Resumed;
            }
            Err(e) => warn!(frontend = %frontend.name, %address, error = %e,
                "cannot listen again; retrying (is another process bound to this port?)"),
        }
    }
}

/// How many of one address's sockets are paused now: a per-core runtime
/// has a socket of its own for every address, and all of them pause and
/// resume together, but the log should say it once per address. Shared by
/// the accept loops of one address.
#[derive(Debug, Default)]
pub struct PausedSockets(AtomicUsize);

/// One paused socket, counted in its address's [`PausedSockets`] until dropped.
struct PausedMark<'a> {
    /// Cleared when the socket is unmarked.
    sockets: Option<&'a PausedSockets>,
    /// No other socket of the address was paused: log "paused".
    first: bool,
}

impl PausedMark<'_> {
    fn new(sockets: &PausedSockets) -> PausedMark<'_> {
        let before = sockets.0.fetch_add(1, Ordering::AcqRel);
        PausedMark {
            sockets: Some(sockets),
            first: before == 0,
        }
    }

    /// Unmarks the socket; true if it was the address's last paused one
    /// (log "resumed"). Of sockets resuming at once exactly one sees that.
    fn last(mut self) -> bool {
        self.sockets
            .take()
            .is_some_and(|s| s.0.fetch_sub(1, Ordering::AcqRel) == 1)
    }
}

impl Drop for PausedMark<'_> {
    fn drop(&mut self) {
        if let Some(sockets) = self.sockets.take() {
            sockets.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Errors about one pending connection (it was reset or aborted before we
/// took it); the listener itself is fine and the next accept can go ahead.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}
