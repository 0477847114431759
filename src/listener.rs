//! The accept loop of one listening socket.
//!
//! A connection is accepted only once the frontend has a free slot, so over
//! `max_connections` clients wait in the kernel backlog instead of being
//! accepted and dropped. Running out of file descriptors backs off instead
//! of spinning: the pending connection stays queued and is taken later.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::forward;
use crate::frontend::Frontend;

const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts on `listener` until `stop` fires, spawning one task per connection
/// on `tracker`; `close` is handed to each connection for the drain deadline.
pub async fn accept_loop(
    listener: TcpListener,
    frontend: Arc<Frontend>,
    stop: CancellationToken,
    tracker: TaskTracker,
    close: CancellationToken,
) {
    let mut backoff = BACKOFF_START;
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            permit = Arc::clone(&frontend.limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_START;
                tracker.spawn(forward::handle(
                    stream,
                    peer,
                    Arc::clone(&frontend),
                    permit,
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
