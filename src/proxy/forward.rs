//! One client connection: pick a server, dial it (retrying elsewhere on
//! failure), relay bytes both ways, and account for all of it.
//!
//! A failed dial is also reported to the server's health task (passive
//! health), which counts it against the server at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::backend::connections::Registration;
use crate::backend::pool::Tried;
use crate::net::dial;
use crate::net::socket;
use crate::proxy::frontend::{Frontend, RejectReason};
use crate::proxy::limit::ConnectionSlot;
use crate::proxy::relay::{self, Counters, RelayEnd, Timeouts};

/// Serves one accepted client until its connection ends. `slot` holds the
/// connection's place under the limits; `cancel` closes it at shutdown.
pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    frontend: Arc<Frontend>,
    slot: ConnectionSlot,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    frontend.stats.total.fetch_add(1, Relaxed);
    frontend.stats.active.fetch_add(1, Relaxed);
    let _active = ActiveFrontendConnection(&frontend, slot);
    // TCP_NODELAY and keepalive came with the socket from its listener.

    let route = frontend.route.load_full();
    let pool = &route.pool;
    let mut tried = Tried::default();
    let (server, upstream, _server_connection, server_down) = loop {
        let Some(index) = pool.pick(peer.ip(), &tried) else {
            let reason = if tried.is_empty() {
                RejectReason::NoServer
            } else {
                RejectReason::DialFailed
            };
            frontend.count_rejected(reason);
            debug!(frontend = %frontend.name, client = %peer, reason = reason.as_str(), "rejecting connection");
            socket::reset(client);
            if reason == RejectReason::NoServer {
                // The listener should be paused by now: make sure it looks.
                pool.availability_changed();
            }
            return;
        };
        tried.insert(index);
        let server = &pool.servers[index];
        let attempt = server.connection();
        // Before the dial: a mark-down during it must close this connection too.
        let down_signal = pool
            .spec
            .health
            .close_on_down
            .map(|window| (pool.down_signal(index), window));
        let dial_started = Instant::now();
        let dialed = tokio::select! {
            dialed = dial::connect(server.addr, pool.spec.connect_timeout) => dialed,
            () = cancel.cancelled() => {
                socket::reset(client);
                return;
            }
        };
        match dialed {
            Ok(stream) => {
                server.count_established();
                server
                    .stats
                    .connect_duration
                    .observe(dial_started.elapsed());
                break (server, stream, attempt, down_signal);
            }
            Err(err) => {
                drop(attempt);
                server.count_connect_error(err.kind);
                // Our own shortage (EMFILE, no ports) says nothing of the server.
                if pool.spec.health.passive && !err.local {
                    server.report_dial_failure(err.kind);
                }
                debug!(frontend = %frontend.name, server = %server.name, %err, "dial failed");
                if err.local || tried.len() > pool.spec.retries as usize {
                    frontend.count_rejected(RejectReason::DialFailed);
                    debug!(frontend = %frontend.name, client = %peer, reason = RejectReason::DialFailed.as_str(), tried = tried.len(), "rejecting connection");
                    socket::reset(client);
                    return;
                }
            }
        }
    };

    let timeouts = Timeouts {
        idle: route.idle_timeout,
        fin: route.fin_timeout,
    };
    let counters = Counters {
        to_server: [&server.stats.bytes_to_server, &frontend.stats.bytes_in],
        to_client: [&server.stats.bytes_to_client, &frontend.stats.bytes_out],
    };
    // Established: a rebalance may now pick this connection to move.
    let registration = server.connections.register();
    let closed = closed(&cancel, server_down, &registration);
    let relayed = relay::relay(&client, &upstream, timeouts, counters, closed).await;
    drop(registration);
    if let Some(reason) = relayed.end.close_reason() {
        server.count_closed(reason);
    }
    if matches!(relayed.end, RelayEnd::Rebalanced) {
        // A clean end both ways: the client sees end of stream (and
        // reconnects), the server sees its client leave, never a reset.
        for stream in [&client, &upstream] {
            let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
        }
    }
    debug!(
        frontend = %frontend.name,
        client = %peer,
        server = %server.name,
        to_server = relayed.to_server,
        to_client = relayed.to_client,
        spliced = relayed.spliced,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome = relayed.end.as_str(),
        "connection closed"
    );
}

/// Completes when the connection must be closed from lbd's side: at the
/// shutdown deadline, a random moment within `close_on_down`'s window
/// after its server was marked down (so thousands of watches don't all
/// reconnect at the same instant), or when a rebalance picks it.
async fn closed(
    shutdown: &CancellationToken,
    server_down: Option<(CancellationToken, Duration)>,
    registration: &Registration<'_>,
) -> RelayEnd {
    let after_server_down = async {
        match server_down {
            Some((signal, window)) => {
                signal.cancelled().await;
                let micros = usize::try_from(window.as_micros()).unwrap_or(usize::MAX);
                let delay = crate::backend::balance::random_below(micros.max(1)) as u64;
                // Boxed: every idle connection would otherwise carry a timer
                // it needs only once its server is down.
                Box::pin(tokio::time::sleep(Duration::from_micros(delay))).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shutdown.cancelled() => RelayEnd::Shutdown,
        () = after_server_down => RelayEnd::ServerDown,
        () = registration.closed() => RelayEnd::Rebalanced,
    }
}

/// Lowers the frontend's active count and frees its connection slot on drop.
struct ActiveFrontendConnection<'a>(&'a Frontend, #[allow(dead_code)] ConnectionSlot);

impl Drop for ActiveFrontendConnection<'_> {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Relaxed);
    }
}
