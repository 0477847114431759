//! One client connection: pick a server, dial it (retrying elsewhere on
//! failure), relay bytes both ways, and account for all of it.
//!
//! A failed dial is also reported to the server's health task (passive
//! health), which counts it against the server at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::backend::connections::Registration;
use crate::backend::pool::{Pool, Tried};
use crate::net::proxy_protocol::{self, Proxied};
use crate::net::{dial, socket};
use crate::proxy::frontend::{Frontend, RejectReason, Route};
use crate::proxy::limit::ConnectionSlot;
use crate::proxy::relay::{self, Counters, RelayEnd, Timeouts};
use crate::proxy::sni::{self, Inspected};

/// Serves one accepted client until its connection ends. `slot` holds the
/// connection's place under the limits; `cancel` closes it at shutdown.
/// On an `accept_proxy` frontend, `slot` holds no per-source place yet:
/// the source is the PROXY header's, read here.
pub async fn handle(
    mut client: TcpStream,
    mut peer: SocketAddr,
    frontend: Arc<Frontend>,
    slot: ConnectionSlot,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    frontend.stats.total.fetch_add(1, Relaxed);
    frontend.stats.active.fetch_add(1, Relaxed);
    let mut active = ActiveFrontendConnection(&frontend, slot);
    // TCP_NODELAY and keepalive came with the socket from its listener.

    let route = frontend.route.load_full();
    // Where the client connected, when a PROXY header said so.
    let mut destination = None;
    if let Some(version) = route.accept_proxy {
        let read = tokio::select! {
            read = proxy_protocol::read(&mut client, version, route.inspect_timeout) => read,
            () = cancel.cancelled() => return,
        };
        match read {
            Ok(Proxied::Client {
                source,
                destination: to,
            }) => {
                peer = source;
                destination = Some(to);
            }
            Ok(Proxied::Local) => {}
            Err(e) => {
                frontend.count_rejected(RejectReason::ProxyHeader);
                debug!(frontend = %frontend.name, client = %peer, error = %e, reason = RejectReason::ProxyHeader.as_str(), "closing connection");
                return;
            }
        }
        match frontend.source_limit.enter(peer.ip()) {
            Ok(source) => active.1.source = source,
            Err(()) => {
                frontend.count_rejected(RejectReason::SourceLimit);
                debug!(frontend = %frontend.name, client = %peer, reason = RejectReason::SourceLimit.as_str(), "rejecting connection");
                socket::reset(client);
                return;
            }
        }
    }
    let (pool, server_name) = match route.sni {
        None => (&route.pool, None),
        Some(_) => match pick_route(&client, &route, &cancel).await {
            Ok(routed) => routed,
            Err(Unrouted::Silent) => {
                frontend.count_rejected(RejectReason::InspectTimeout);
                debug!(frontend = %frontend.name, client = %peer, reason = RejectReason::InspectTimeout.as_str(), "closing connection: no ClientHello in time");
                return;
            }
            Err(Unrouted::Gone) => return,
        },
    };
    let mut tried = Tried::default();
    let (server, mut upstream, _server_connection, server_down) = loop {
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

    if let Some(version) = pool.spec.send_proxy {
        let to = match destination {
            Some(to) => to,
            None => client.local_addr().unwrap_or(peer),
        };
        let header = proxy_protocol::encode(version, peer, to);
        if let Err(e) = upstream.write_all(&header).await {
            debug!(frontend = %frontend.name, server = %server.name, error = %e, "cannot send the PROXY protocol header");
            socket::reset(client);
            return;
        }
    }

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
        sni = server_name.as_deref().unwrap_or(""),
        to_server = relayed.to_server,
        to_client = relayed.to_client,
        spliced = relayed.spliced,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome = relayed.end.as_str(),
        "connection closed"
    );
}

/// Why a frontend with routes forwards a connection nowhere.
enum Unrouted {
    /// The client sent nothing within `inspect_timeout`.
    Silent,
    /// The client left, or its socket failed, before sending anything.
    Gone,
}

/// The pool a client's ClientHello routes it to (the default without SNI,
/// or when it is not TLS), and the server name it sent.
async fn pick_route<'r>(
    client: &TcpStream,
    route: &'r Route,
    cancel: &CancellationToken,
) -> Result<(&'r Arc<Pool>, Option<String>), Unrouted> {
    let Some(routes) = &route.sni else {
        return Ok((&route.pool, None));
    };
    let inspected = tokio::select! {
        inspected = sni::inspect(client, route.inspect_timeout) => inspected,
        () = cancel.cancelled() => return Err(Unrouted::Gone),
    };
    match inspected {
        Ok(Inspected::Name(name)) => match routes.select(name.as_deref()) {
            Some(routed) => {
                routed.connections.fetch_add(1, Relaxed);
                Ok((&routed.pool, name))
            }
            None => {
                routes.default_connections.fetch_add(1, Relaxed);
                Ok((&route.pool, name))
            }
        },
        Ok(Inspected::Silent) => Err(Unrouted::Silent),
        Ok(Inspected::Closed) | Err(_) => Err(Unrouted::Gone),
    }
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
struct ActiveFrontendConnection<'a>(&'a Frontend, ConnectionSlot);

impl Drop for ActiveFrontendConnection<'_> {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Relaxed);
    }
}
