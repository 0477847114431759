//! One HTTP/1.1 exchange over a stream that is already connected (TCP,
//! TLS or a unix socket) with hyper's client: the request, the status and
//! at most a given number of body bytes. The `https` health check, the GET
//! of `lbctl probe` and `lbctl`'s admin API client all talk HTTP this way;
//! each builds its own request and judges the answer.

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// An answer, with as much of its body as the caller allowed.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body, or its first bytes when reading it did not end in [`BodyEnd::Whole`].
    pub body: Bytes,
    /// How reading the body ended.
    pub ended: BodyEnd,
}

/// How reading an answer's body ended; callers differ in what they accept.
#[derive(Debug)]
pub enum BodyEnd {
    /// All of it was read, within the limit.
    Whole,
    /// It is longer than the limit; the rest was not read.
    TooLong,
    /// The connection failed before the end.
    Broken(hyper::Error),
}

/// A request lbd cannot build: its target or a header is not valid HTTP.
/// The fault is lbd's (its config), never the server's.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the request GET {target}: {source}")]
pub struct BadRequest {
    /// The target as given, escaped and cut short for a log line.
    pub target: String,
    /// What the HTTP types refused.
    #[source]
    pub source: hyper::http::Error,
}

/// Longest part of a refused target quoted in a [`BadRequest`].
const TARGET_QUOTED: usize = 80;

/// `GET target` with `Host: host`, `User-Agent: user_agent` and
/// `Connection: close`, no body.
pub fn get(
    target: &str,
    host: &str,
    user_agent: &str,
) -> Result<Request<Empty<Bytes>>, BadRequest> {
    Request::get(target)
        .header(header::HOST, host)
        .header(header::USER_AGENT, user_agent)
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|source| BadRequest {
            target: quoted_target(target),
            source,
        })
}

/// `target` in quotes with control characters escaped, at most
/// [`TARGET_QUOTED`] characters of it, then how long it really is.
fn quoted_target(target: &str) -> String {
    let shown: String = target.chars().take(TARGET_QUOTED).collect();
    let mut quoted = format!("{shown:?}");
    if shown.len() < target.len() {
        quoted.push_str(&format!("… ({} bytes)", target.len()));
    }
    quoted
}

/// Sends `request` over `stream` and reads the answer's body up to
/// `body_limit` bytes. The connection is driven only while this runs and
/// is closed when it returns: nothing outlives the call, so a timeout the
/// caller puts around it ends the whole exchange.
pub async fn exchange<S>(
    stream: S,
    request: Request<Empty<Bytes>>,
    body_limit: usize,
) -> Result<Answer, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let answer = async move {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let (body, ended) = read_body(response.into_body(), body_limit).await;
        Ok(Answer {
            status,
            body,
            ended,
        })
    };
    let mut answer = std::pin::pin!(answer);
    tokio::select! {
        answer = &mut answer => answer,
        // The connection ended first (the server closed, or it failed): the
        // answer still gets what came, or the connection's error.
        _ = connection => answer.await,
    }
}

/// Reads `body` up to `limit` bytes, never more than `limit` into memory.
async fn read_body(mut body: Incoming, limit: usize) -> (Bytes, BodyEnd) {
    let mut bytes = Vec::new();
    let ended = loop {
        match body.frame().await {
            None => break BodyEnd::Whole,
            Some(Err(e)) => break BodyEnd::Broken(e),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = limit - bytes.len();
                    if data.len() > room {
                        bytes.extend_from_slice(&data[..room]);
                        break BodyEnd::TooLong;
                    }
                    bytes.extend_from_slice(data);
                }
            }
        }
    };
    (Bytes::from(bytes), ended)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn a_target_that_is_not_a_uri_path_cannot_be_built_and_is_quoted_short() {
        assert!(get("/readyz?verbose", "kubernetes", "lbd").is_ok());
        for bad in ["/ready z", "/readyz\r\nX-Evil: 1", "readyz\u{7f}"] {
            let err = get(bad, "kubernetes", "lbd").unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let long = format!("/{}", " ".repeat(100_000));
        let err = get(&long, "kubernetes", "lbd").unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
        assert!(err.contains("(100001 bytes)"), "{err}");
    }

    /// Answers one request on a fresh in-memory stream with `raw`, then
    /// keeps the stream open until the client is done.
    async fn answered(raw: &'static [u8], limit: usize) -> Answer {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = server.read(&mut request).await;
            let _ = server.write_all(raw).await;
            let _ = server.read(&mut request).await;
        });
        let request = Request::get("/readyz")
            .header(hyper::header::HOST, "test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        exchange(client, request, limit).await.unwrap()
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_whole() {
        let answer = answered(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 2).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(&answer.body[..], b"ok");
        assert!(matches!(answer.ended, BodyEnd::Whole));
    }

    #[tokio::test]
    async fn a_longer_body_is_cut_at_the_limit() {
        let answer = answered(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 10\r\n\r\n0123456789",
            4,
        )
        .await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(&answer.body[..], b"0123");
        assert!(matches!(answer.ended, BodyEnd::TooLong));
    }

    #[tokio::test]
    async fn a_body_cut_short_by_the_server_is_broken() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = server.read(&mut request).await;
            let _ = server
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234")
                .await;
        });
        let request = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
        let answer = exchange(client, request, 100).await.unwrap();
        assert_eq!(&answer.body[..], b"01234");
        assert!(matches!(answer.ended, BodyEnd::Broken(_)));
    }
}
