//! Binding the admin API, accepting connections, and serving HTTP/1.1 on
//! them with hyper. Every request passes the [`Policy`] first.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::auth::{Policy, TokenFileError, read_token};
use super::connections::{Connections, Slot};
use super::routes::{self, Context};
use crate::config::AdminListen;
use crate::daemon::Daemon;

/// A client has this long to send its request headers (and an idle
/// keep-alive connection this long to start its next request).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection let go to make room closes at once if it is idle; one
/// still sending its headers (or being sent its last answer) gets this long.
const EVICTED_GRACE: Duration = Duration::from_secs(1);
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
    /// The bearer token file cannot serve (unreadable, weak, exposed).
    #[error("{0}")]
    Token(#[from] TokenFileError),
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

/// Who is asking, for the log of refused requests.
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
    /// The unix socket's path and the (device, inode) it had when bound.
    unix_socket: Option<(PathBuf, Option<(u64, u64)>)>,
    /// The accept loops and connections.
    tasks: TaskTracker,
}

impl AdminServer {
    /// Stops accepting, removes the unix socket file if it is still ours
    /// (a successor lbd may already have bound a new one at the path), and
    /// waits a moment for requests being answered.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Some((path, Some(ours))) = &self.unix_socket
            && file_identity(path) == Some(*ours)
        {
            let _ = std::fs::remove_file(path);
        }
        self.tasks.close();
        // An idle keep-alive connection ends at its header timeout at the
        // latest; the process is exiting, so do not wait that long.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
    }
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
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

/// Binds the unix socket so that it is never reachable with looser
/// permissions than 0660: it is bound inside a fresh 0700 directory beside
/// its final path, given its mode, and only then renamed into place
/// (rename is atomic). Binding in place and chmod-ing after would leave a
/// moment where the umask decides who may connect.
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
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let private = parent.join(format!(".lbd-admin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("admin.sock");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(SOCKET_MODE))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Serves the admin API on `listener` until the returned handle is stopped.
pub fn serve(listener: AdminListener, daemon: Daemon) -> AdminServer {
    let stop = CancellationToken::new();
    let policy = Policy::new(&daemon.snapshot().config.admin);
    let context = Arc::new(Shared::new(daemon, policy));
    let limit = Connections::new();
    let tasks = context.tasks.clone();
    let unix_path = match listener {
        AdminListener::Tcp(listener) => {
            let local = listener
                .local_addr()
                .expect("a bound socket has a local address");
            info!(address = %local, "admin API listening");
            let tasks = context.tasks.clone();
            tasks.spawn(accept_tcp(listener, context, limit, stop.clone()));
            None
        }
        AdminListener::Unix(listener, path) => {
            info!(address = %format!("unix:{}", path.display()), "admin API listening");
            let tasks = context.tasks.clone();
            tasks.spawn(accept_unix(listener, context, limit, stop.clone()));
            let identity = file_identity(&path);
            Some((path, identity))
        }
    };
    AdminServer {
        stop,
        unix_socket: unix_path,
        tasks,
    }
}

async fn accept_tcp(
    listener: TcpListener,
    context: Arc<Shared>,
    limit: Arc<Connections>,
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
    context: Arc<Shared>,
    limit: Arc<Connections>,
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

fn spawn_connection<S>(stream: S, peer: Peer, shared: &Arc<Shared>, limit: &Arc<Connections>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let source = match &peer {
        Peer::Tcp(addr) => Some(addr.ip()),
        Peer::Unix => None,
    };
    let Some(slot) = limit.admit(source) else {
        debug!(
            ?peer,
            "admin API: every connection is answering a request; answering 503"
        );
        shared.tasks.spawn(refuse_busy(stream));
        return;
    };
    let tasks = shared.tasks.clone();
    tasks.spawn(serve_in_slot(stream, peer, Arc::clone(shared), Some(slot)));
}

/// Tells a client that finds every admin connection answering a request
/// why it is turned away (a keepalived check should log "busy", not
/// "broken answer"), without reading its request.
async fn refuse_busy<S: AsyncWrite + Unpin>(mut stream: S) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
content-length: 42\r\nconnection: close\r\nretry-after: 1\r\n\r\nadmin API busy: too many open connections\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
}

/// What every admin connection shares: the routes' context and the policy.
#[derive(Debug)]
pub struct Shared {
    context: Context,
    policy: Policy,
    /// The accept loops and connections: stopping waits for them.
    tasks: TaskTracker,
}

impl Shared {
    /// The admin API of `daemon` under `policy`.
    pub fn new(daemon: Daemon, policy: Policy) -> Shared {
        Shared {
            context: Context::new(daemon),
            policy,
            tasks: TaskTracker::new(),
        }
    }
}

/// Serves HTTP/1.1 on one accepted stream until the client is done. Public
/// so the fuzz target can drive it with arbitrary bytes.
pub async fn serve_connection<S>(stream: S, peer: Peer, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_in_slot(stream, peer, shared, None).await;
}

/// Serves one connection holding `slot`: marked busy while a request is
/// answered, closed when the slot is chosen to make room.
async fn serve_in_slot<S>(stream: S, peer: Peer, shared: Arc<Shared>, slot: Option<Slot>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let evicted = slot.as_ref().map(|s| s.evicted().clone());
    let slot = slot.map(Arc::new);
    let who = peer.clone();
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let peer = peer.clone();
        let busy = slot.as_ref().map(|s| s.busy());
        // Boxed: driving the connection without its final shutdown (to
        // answer an HTTP/2 preface below) needs an `Unpin` future.
        Box::pin(async move {
            let answer = handle(&shared.context, &shared.policy, &peer, request).await;
            drop(busy);
            Ok::<_, Infallible>(answer)
        })
    });
    let mut connection = http1::Builder::new()
        // `printf 'GET …' | nc` closes its write side after the request.
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(routes::MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    let mut run = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx));
    let served = match evicted {
        None => run.await,
        Some(evicted) => tokio::select! {
            served = &mut run => served,
            () = evicted.cancelled() => {
                debug!(peer = ?who, "admin API: idle connection let go to make room");
                drop(run);
                // Closes an idle connection at once; lets an answer being
                // written finish.
                std::pin::Pin::new(&mut connection).graceful_shutdown();
                let run = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx));
                match tokio::time::timeout(EVICTED_GRACE, run).await {
                    Ok(served) => served,
                    Err(_) => return,
                }
            }
        },
    };
    let h2 = matches!(&served, Err(error) if error.is_parse_version_h2());
    if let Err(error) = &served
        && !h2
    {
        debug!(%error, "admin API connection ended with an error");
        return;
    }
    let mut stream = connection.into_parts().io.into_inner();
    if h2 {
        debug!(peer = ?who, "admin API: HTTP/2 preface; answering 400");
        let _ = tokio::time::timeout(EVICTED_GRACE, stream.write_all(HTTP2_REFUSED)).await;
    }
    let _ = tokio::time::timeout(EVICTED_GRACE, stream.shutdown()).await;
}

/// The answer to a client that opens with the HTTP/2 preface (hyper alone
/// would close without a word).
const HTTP2_REFUSED: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\n\
content-length: 64\r\nconnection: close\r\n\r\nHTTP/2 is not supported: the lbd admin API speaks HTTP/1.1 only\n";

/// The one place a request is authorized, before any route sees it.
async fn handle(
    context: &Context,
    policy: &Policy,
    peer: &Peer,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (method, path, headers) = (request.method(), request.uri().path(), request.headers());
    // The token file is read per request (replacing it rotates the token),
    // on a blocking thread: this runtime relays connections too.
    let expected = match policy.token_file_for(method, path, headers) {
        Some(file) => {
            let path = file.clone();
            Some(
                tokio::task::spawn_blocking(move || read_token(&file))
                    .await
                    .unwrap_or_else(|e| {
                        Err(TokenFileError {
                            path,
                            reason: format!("the task reading it failed: {e}"),
                        })
                    }),
            )
        }
        None => None,
    };
    if let Err(refusal) = policy.authorize_with(method, path, headers, expected) {
        debug!(?peer, method = %request.method(), path = request.uri().path(), status = refusal.status.as_u16(), "admin API: request refused");
        let mut answer = routes::error(refusal.status, &refusal.reason);
        if refusal.status == hyper::StatusCode::UNAUTHORIZED {
            answer.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer realm=\"lbd\""),
            );
        }
        return answer;
    }
    routes::handle(context, request).await
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

/// The admin API of a running lbd, which can be stopped and served again:
/// an upgrade frees the address for its successor, and takes it back if the
/// successor fails.
#[derive(Debug)]
pub struct AdminSlot {
    daemon: Daemon,
    server: tokio::sync::Mutex<Option<AdminServer>>,
}

impl AdminSlot {
    /// Serves `listener` for `daemon`.
    pub fn serve(listener: AdminListener, daemon: Daemon) -> AdminSlot {
        let server = serve(listener, daemon.clone());
        AdminSlot {
            daemon,
            server: tokio::sync::Mutex::new(Some(server)),
        }
    }

    /// Stops the admin API (if it serves) and frees its address.
    pub async fn stop(&self) {
        if let Some(server) = self.server.lock().await.take() {
            server.stop().await;
        }
    }

    /// Serves the admin API again at the configured address.
    pub async fn restart(&self) -> Result<(), AdminError> {
        let listener = bind(&self.daemon.snapshot().config.admin.listen).await?;
        *self.server.lock().await = Some(serve(listener, self.daemon.clone()));
        Ok(())
    }
}
