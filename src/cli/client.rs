//! A small HTTP/1.1 client for the admin API, over TCP or a unix socket:
//! what `lbctl` uses to talk to a running lbd.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::net::http_client::{self, BodyEnd};

/// The largest answer accepted from the daemon (a status of thousands of servers fits).
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// Where the admin API listens, as given to `--admin` / `LBD_ADMIN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddr {
    /// `HOST:PORT`, e.g. `127.0.0.1:8404`.
    Tcp(String),
    /// `unix:/run/lbd/admin.sock` (or an absolute path).
    Unix(PathBuf),
}

impl FromStr for AdminAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<AdminAddr, String> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(AdminAddr::Unix(PathBuf::from(path)));
        }
        if text.starts_with('/') {
            return Ok(AdminAddr::Unix(PathBuf::from(text)));
        }
        let text = text.strip_prefix("http://").unwrap_or(text);
        let text = text.trim_end_matches('/');
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(AdminAddr::Tcp(text.to_owned()))
            }
            _ => Err(format!(
                "admin address {text:?} is not HOST:PORT or unix:/PATH (e.g. 127.0.0.1:8404 or unix:/run/lbd/admin.sock)"
            )),
        }
    }
}

impl fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminAddr::Tcp(addr) => f.write_str(addr),
            AdminAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Why a request to the admin API got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing accepted the connection.
    #[error(
        "cannot reach lbd admin API at {addr}: {reason} — is lbd running? set --admin or LBD_ADMIN"
    )]
    Unreachable {
        /// The address tried.
        addr: AdminAddr,
        /// What the OS said, in words.
        reason: String,
    },
    /// The daemon accepted but did not answer in time.
    #[error(
        "lbd admin API at {addr} did not answer within {timeout:?}: is the daemon stuck or overloaded?"
    )]
    Timeout {
        /// The address tried.
        addr: AdminAddr,
        /// How long we waited.
        timeout: Duration,
    },
    /// The answer was not HTTP we understand.
    #[error(
        "lbd admin API at {addr} gave a broken answer: {detail} (is that address really lbd's admin API?)"
    )]
    Protocol {
        /// The address tried.
        addr: AdminAddr,
        /// What went wrong.
        detail: String,
    },
}

/// An answer from the admin API.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body, whole.
    pub body: Bytes,
}

impl Answer {
    /// The body as text (lossy: the daemon sends UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client of one lbd admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: AdminAddr,
    timeout: Duration,
    token: Option<String>,
}

/// The admin token file (`lbctl --token-file`) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// It cannot be read.
    #[error("cannot read the admin token file {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It holds nothing but white space.
    #[error("the admin token file {} is empty", .0.display())]
    Empty(std::path::PathBuf),
}

/// Reads a bearer token file (`lbctl --token-file`): its content, trimmed.
pub fn read_token_file(path: &std::path::Path) -> Result<String, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty(path.to_owned()));
    }
    Ok(token.to_owned())
}

impl AdminClient {
    /// A client for `addr`; every request must complete within `timeout`.
    pub fn new(addr: AdminAddr, timeout: Duration) -> AdminClient {
        AdminClient {
            addr,
            timeout,
            token: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: Option<String>) -> AdminClient {
        self.token = token;
        self
    }

    /// The address this client talks to.
    pub fn addr(&self) -> &AdminAddr {
        &self.addr
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Answer, ClientError> {
        self.request(Method::GET, path).await
    }

    /// `POST path` with an empty body.
    pub async fn post(&self, path: &str) -> Result<Answer, ClientError> {
        self.request(Method::POST, path).await
    }

    async fn request(&self, method: Method, path: &str) -> Result<Answer, ClientError> {
        match tokio::time::timeout(self.timeout, self.exchange(method, path)).await {
            Ok(answer) => answer,
            Err(_) => Err(ClientError::Timeout {
                addr: self.addr.clone(),
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(&self, method: Method, path: &str) -> Result<Answer, ClientError> {
        let unreachable = |e: io::Error| ClientError::Unreachable {
            addr: self.addr.clone(),
            reason: describe_io_error(&e),
        };
        match &self.addr {
            AdminAddr::Tcp(addr) => {
                let stream = TcpStream::connect(addr.as_str())
                    .await
                    .map_err(unreachable)?;
                self.send(stream, addr, method, path).await
            }
            AdminAddr::Unix(socket) => {
                let stream = UnixStream::connect(socket).await.map_err(unreachable)?;
                self.send(stream, "localhost", method, path).await
            }
        }
    }

    async fn send<S>(
        &self,
        stream: S,
        host: &str,
        method: Method,
        path: &str,
    ) -> Result<Answer, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let broken = |detail: String| ClientError::Protocol {
            addr: self.addr.clone(),
            detail,
        };
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .header(hyper::header::HOST, host)
            .header(
                hyper::header::USER_AGENT,
                concat!("lbctl/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| broken(e.to_string()))?;
        let answer = http_client::exchange(stream, request, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| broken(e.to_string()))?;
        match answer.ended {
            BodyEnd::Whole => Ok(Answer {
                status: answer.status,
                body: answer.body,
            }),
            BodyEnd::TooLong => Err(broken("reading the body: length limit exceeded".into())),
            BodyEnd::Broken(e) => Err(broken(format!("reading the body: {e}"))),
        }
    }
}

/// An OS error in the words an operator expects ("connection refused").
fn describe_io_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::NotFound => "no such socket file".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::TimedOut => "connection timed out".into(),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            "no route to host".into()
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_admin_addresses() {
        assert_eq!(
            "127.0.0.1:8404".parse::<AdminAddr>(),
            Ok(AdminAddr::Tcp("127.0.0.1:8404".into()))
        );
        assert_eq!(
            "http://localhost:8404/".parse::<AdminAddr>(),
            Ok(AdminAddr::Tcp("localhost:8404".into()))
        );
        assert_eq!(
            "[::1]:8404".parse::<AdminAddr>(),
            Ok(AdminAddr::Tcp("[::1]:8404".into()))
        );
        assert_eq!(
            "unix:/run/lbd/admin.sock".parse::<AdminAddr>(),
            Ok(AdminAddr::Unix("/run/lbd/admin.sock".into()))
        );
        assert!("8404".parse::<AdminAddr>().is_err());
    }

    #[tokio::test]
    async fn refused_says_what_to_do() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = AdminClient::new(AdminAddr::Tcp(addr.to_string()), Duration::from_secs(5));
        let err = client.get("/readyz").await.unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot reach lbd admin API at {addr}: connection refused — is lbd running? set --admin or LBD_ADMIN"
            )
        );
    }
}
