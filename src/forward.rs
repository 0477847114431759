//! One client connection: pick a server, dial it (retrying elsewhere on
//! failure), relay bytes both ways, and account for all of it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::dial;
use crate::frontend::{Frontend, RejectReason};
use crate::limit::ConnectionSlot;
use crate::pool::Tried;
use crate::relay::{self, Counters, Timeouts};
use crate::socket;

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
    socket::tune_stream(&client);

    let route = frontend.route.load_full();
    let pool = &route.pool;
    let mut tried = Tried::default();
    let (server, upstream) = loop {
        let Some(index) = pool.pick(peer.ip(), &tried) else {
            let reason = if tried.is_empty() {
                RejectReason::NoServer
            } else {
                RejectReason::DialFailed
            };
            frontend.count_rejected(reason);
            debug!(frontend = %frontend.name, client = %peer, reason = reason.as_str(), "rejecting connection");
            socket::reset(client);
            return;
        };
        tried.insert(index);
        let server = &pool.servers[index];
        let dial_started = Instant::now();
        match dial::connect(server.addr, pool.spec.connect_timeout).await {
            Ok(stream) => {
                server
                    .stats
                    .connect_duration
                    .observe(dial_started.elapsed());
                break (server, stream);
            }
            Err(err) => {
                server.count_connect_error(err.kind);
                debug!(frontend = %frontend.name, server = %server.name, %err, "dial failed");
                if tried.len() > pool.spec.retries as usize {
                    frontend.count_rejected(RejectReason::DialFailed);
                    socket::reset(client);
                    return;
                }
            }
        }
    };

    let _server_connection = server.connection();
    let timeouts = Timeouts {
        idle: route.idle_timeout,
        fin: route.fin_timeout,
    };
    let counters = Counters {
        to_server: [&server.stats.bytes_to_server, &frontend.stats.bytes_in],
        to_client: [&server.stats.bytes_to_client, &frontend.stats.bytes_out],
    };
    let relayed = relay::relay(&client, &upstream, timeouts, counters, &cancel).await;
    debug!(
        frontend = %frontend.name,
        client = %peer,
        server = %server.name,
        to_server = relayed.to_server,
        to_client = relayed.to_client,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome = relayed.end.as_str(),
        "connection closed"
    );
}

/// Lowers the frontend's active count and frees its connection slot on drop.
struct ActiveFrontendConnection<'a>(&'a Frontend, #[allow(dead_code)] ConnectionSlot);

impl Drop for ActiveFrontendConnection<'_> {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Relaxed);
    }
}
