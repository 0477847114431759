//! The accept loop of one listening socket.
//!
//! A connection is accepted only once the frontend and the process have a
//! free slot, so over `max_connections` clients wait in the kernel backlog
//! instead of being accepted and dropped; over `max_connections_per_source`
//! they are refused (see [`crate::limit`]). Running out of file descriptors backs off instead
//! of spinning: the pending connection stays queued and is taken later.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::forward;
use crate::frontend::{Frontend, RejectReason};
use crate::limit::{ConnectionLimit, ConnectionSlot};
use crate::socket;

const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts on `listener` until `stop` fires, spawning one task per connection
/// on `tracker`; `close` is handed to each connection for the drain deadline.
/// A connection first needs a slot of its frontend and one of `global`.
pub async fn accept_loop(
    listener: TcpListener,
    frontend: Arc<Frontend>,
    global: Arc<ConnectionLimit>,
    stop: CancellationToken,
    tracker: TaskTracker,
    close: CancellationToken,
) {
    let mut backoff = BACKOFF_START;
    loop {
        let Some(frontend_slot) = slot(
            &frontend.limit,
            &frontend,
            RejectReason::MaxConnections,
            &stop,
        )
        .await
        else {
            return;
        };
        let Some(global_slot) = slot(
            &global,
            &frontend,
            RejectReason::GlobalMaxConnections,
            &stop,
        )
        .await
        else {
            return;
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_START;
                let source = match frontend.source_limit.enter(peer.ip()) {
                    Ok(source) => source,
                    Err(()) => {
                        frontend.count_rejected(RejectReason::SourceLimit);
                        debug!(frontend = %frontend.name, client = %peer, reason = RejectReason::SourceLimit.as_str(), "rejecting connection");
                        socket::reset(stream);
                        continue;
                    }
                };
                let slot = ConnectionSlot {
                    frontend: frontend_slot,
                    global: global_slot,
                    source,
                };
                tracker.spawn(forward::handle(
                    stream,
                    peer,
                    Arc::clone(&frontend),
                    slot,
                    close.clone(),
                ));
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

/// A slot of `limit`, waiting for one when it is full (counted once per
/// pause under `reason`); `None` once `stop` fires.
async fn slot(
    limit: &ConnectionLimit,
    frontend: &Frontend,
    reason: RejectReason,
    stop: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    if let Some(permit) = limit.try_take() {
        return Some(permit);
    }
    frontend.count_rejected(reason);
    debug!(frontend = %frontend.name, reason = reason.as_str(), "connection limit full; new clients wait in the backlog");
    tokio::select! {
        () = stop.cancelled() => None,
        permit = limit.take() => permit.ok(),
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
