//! Binding the admin API, accepting connections, and serving HTTP/1.1 on
//! them with hyper. Every request passes through [`authorize`] first.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::routes::{self, Context};
use crate::config::AdminListen;
use crate::daemon::Daemon;

/// Admin connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;
/// A client has this long to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Mode of the unix socket: owner and group may talk to lbd.
const SOCKET_MODE: u32 = 0o660;

/// Why the admin API could not listen.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The TCP address could not be bound.
    #[error(
        "admin API: cannot listen on {addr}: {source} (is another lbd running? change [admin] listen)"
    )]
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The unix socket could not be created.
    #[error("admin API: cannot create the unix socket {}: {source} (does the directory exist and may lbd write there?)", path.display())]
    Unix {
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// A bound admin socket, not yet serving.
#[derive(Debug)]
pub enum AdminListener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A unix socket listener and its path (removed at shutdown).
    Unix(UnixListener, PathBuf),
}

/// Who is asking: what [`authorize`] decides on.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A TCP client.
    Tcp(SocketAddr),
    /// A local process on the unix socket (the file mode already vetted it).
    Unix,
}

/// The running admin API; [`AdminServer::stop`] ends it.
#[derive(Debug)]
pub struct AdminServer {
    stop: CancellationToken,
    unix_path: Option<PathBuf>,
}

impl AdminServer {
    /// Stops accepting and removes the unix socket file, if any.
    pub fn stop(self) {
        self.stop.cancel();
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds the admin API's socket.
pub async fn bind(listen: &AdminListen) -> Result<AdminListener, AdminError> {
    match listen {
        AdminListen::Tcp(addr) => TcpListener::bind(addr)
            .await
            .map(AdminListener::Tcp)
            .map_err(|source| AdminError::Tcp {
                addr: *addr,
                source,
            }),
        AdminListen::Unix(path) => bind_unix(path)
            .map(|l| AdminListener::Unix(l, path.clone()))
            .map_err(|source| AdminError::Unix {
                path: path.clone(),
                source,
            }),
    }
}

fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; lbd will not remove it",
            ));
        }
        // A socket file nobody answers on is left over from a crash.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process is serving on it",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    Ok(listener)
}

/// Serves the admin API on `listener` until the returned handle is stopped.
pub fn serve(listener: AdminListener, daemon: Daemon) -> AdminServer {
    let stop = CancellationToken::new();
    let context = Arc::new(Context::new(daemon));
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let unix_path = match listener {
        AdminListener::Tcp(listener) => {
            let local = listener
                .local_addr()
                .expect("a bound socket has a local address");
            info!(address = %local, "admin API listening");
            tokio::spawn(accept_tcp(listener, context, limit, stop.clone()));
            None
        }
        AdminListener::Unix(listener, path) => {
            info!(address = %format!("unix:{}", path.display()), "admin API listening");
            tokio::spawn(accept_unix(listener, context, limit, stop.clone()));
            Some(path)
        }
    };
    AdminServer { stop, unix_path }
}

async fn accept_tcp(
    listener: TcpListener,
    context: Arc<Context>,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                spawn_connection(stream, Peer::Tcp(peer), &context, &limit);
            }
            Err(error) => accept_failed(&error, &stop).await,
        }
    }
}

async fn accept_unix(
    listener: UnixListener,
    context: Arc<Context>,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => spawn_connection(stream, Peer::Unix, &context, &limit),
            Err(error) => accept_failed(&error, &stop).await,
        }
    }
}

/// Out of file descriptors or the like: pause instead of spinning.
async fn accept_failed(error: &io::Error, stop: &CancellationToken) {
    warn!(%error, "admin API: accept failed; retrying shortly");
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
}

fn spawn_connection<S>(stream: S, peer: Peer, context: &Arc<Context>, limit: &Arc<Semaphore>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = Arc::clone(limit).try_acquire_owned() else {
        debug!(?peer, "admin API: too many connections; closing this one");
        return;
    };
    let context = Arc::clone(context);
    tokio::spawn(async move {
        let service = service_fn(move |request| {
            let context = Arc::clone(&context);
            let peer = peer.clone();
            async move { Ok::<_, Infallible>(handle(&context, &peer, request).await) }
        });
        let served = http1::Builder::new()
            // `printf 'GET …' | nc` closes its write side after the request.
            .half_close(true)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(routes::MAX_HEAD_BYTES)
            .serve_connection(TokioIo::new(stream), service)
            .await;
        if let Err(error) = served {
            debug!(%error, "admin API connection ended with an error");
        }
        drop(permit);
    });
}

async fn handle(
    context: &Context,
    peer: &Peer,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if let Err(refusal) = authorize(peer, &request) {
        return routes::error(refusal.status, &refusal.reason);
    }
    routes::handle(context, request).await
}

/// The one place a request is authorized. Every request is allowed today:
/// the default listener is loopback-only and the unix socket is mode 0660.
/// Bearer tokens (for non-loopback listeners) plug in here.
pub fn authorize(peer: &Peer, request: &Request<Incoming>) -> Result<(), Refusal> {
    let _ = (peer, request);
    Ok(())
}

/// Why [`authorize`] turned a request away: 401 or 403 and a reason.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The HTTP status to answer with.
    pub status: hyper::StatusCode,
    /// What the client should do about it.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unix_socket_replaces_a_stale_socket_but_never_a_file() {
        let dir = std::env::temp_dir().join(format!("lbd-admin-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind_unix(&file).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

        let socket = dir.join("admin.sock");
        let live = bind_unix(&socket).unwrap();
        assert_eq!(
            bind_unix(&socket).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(live);
        // The file stays after the listener is gone: a stale socket, replaced.
        let again = bind_unix(&socket).unwrap();
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, SOCKET_MODE);
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
