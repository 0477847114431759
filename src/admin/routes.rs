//! The admin API's routes (docs/operations.md, "Admin API") and their handlers. Unknown
//! paths get 404, known paths with the wrong method 405, oversized bodies
//! 413; a handler never panics on what a client sends.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use serde_json::json;

use super::status::{ServerStatus, Status};
use crate::admin::metrics;
use crate::backend::pool::AdminState;
use crate::daemon::{Daemon, ReloadError};

/// The largest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What every handler needs: the daemon and the metrics registry.
#[derive(Debug)]
pub struct Context {
    daemon: Daemon,
    registry: Registry,
}

impl Context {
    /// A context serving `daemon`.
    pub fn new(daemon: Daemon) -> Context {
        Context {
            registry: metrics::registry(daemon.clone()),
            daemon,
        }
    }
}

type Answer = Response<Full<Bytes>>;

/// Routes one request.
pub async fn handle(context: &Context, request: Request<Incoming>) -> Answer {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // No route takes a body, so none is read: a client that announces one
    // and sends it slowly cannot hold an admin connection slot.
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    if chunked || declared.is_some_and(|n| n > 0) {
        drop(body);
        return body_refused();
    }
    route(context, &parts.method, parts.uri.path(), parts.uri.query()).await
}

async fn route(context: &Context, method: &Method, path: &str, query: Option<&str>) -> Answer {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let daemon = &context.daemon;
    match segments.as_slice() {
        [""] => only(method, Method::GET, || {
            super::page::answer().unwrap_or_else(|| {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no randomness for the page's nonce",
                )
            })
        }),
        ["metrics"] => only(method, Method::GET, || metrics_answer(context)),
        ["healthz"] => only(method, Method::GET, || text(StatusCode::OK, "ok\n".into())),
        ["readyz"] => only(method, Method::GET, || {
            // `?frontend=NAME`: that frontend alone (keepalived's check of the
            // apiserver frontend); without it, every frontend.
            let readiness = match query_value(query, "frontend") {
                None => daemon.readiness(),
                Some(name) => match name.as_deref().and_then(|n| daemon.frontend_readiness(n)) {
                    Some(readiness) => readiness,
                    None => {
                        return error(
                            StatusCode::NOT_FOUND,
                            &format!(
                                "no frontend {:?}: see `lbctl status` for the names",
                                name.unwrap_or_default()
                            ),
                        );
                    }
                },
            };
            match readiness {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(reason) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {reason}\n"),
                ),
            }
        }),
        ["api", "v1", "status"] => only(method, Method::GET, || {
            json_answer(StatusCode::OK, &Status::collect(daemon))
        }),
        ["api", "v1", "reload"] => {
            if method != Method::POST {
                return not_allowed(Method::POST);
            }
            match daemon.reload().await {
                Ok(report) => json_answer(
                    StatusCode::OK,
                    &json!({ "ok": true, "changes": report.changes, "warnings": report.warnings }),
                ),
                Err(err) => json_answer(
                    match err {
                        ReloadError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::UNPROCESSABLE_ENTITY,
                    },
                    &json!({ "ok": false, "error": err.summary(), "detail": err.to_string() }),
                ),
            }
        }
        ["api", "v1", "backends", backend, "rebalance"] => {
            if method != Method::POST {
                return not_allowed(Method::POST);
            }
            let Some(backend) = percent_decode(backend) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "the backend name must be valid percent-encoded UTF-8",
                );
            };
            // `?window=2s` overrides the backend's `rebalance` window.
            let window = match query_value(query, "window") {
                None => None,
                Some(text) => match text.as_deref().map(crate::config::parse_duration) {
                    Some(Ok(window)) if !window.is_zero() => Some(window),
                    _ => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "`window` must be a duration such as \"30s\" or \"5m\"",
                        );
                    }
                },
            };
            match daemon.rebalance_now(&backend, window) {
                Ok(started) => json_answer(StatusCode::OK, &started),
                Err(unknown) => error(StatusCode::NOT_FOUND, &unknown.to_string()),
            }
        }
        ["api", "v1", "backends", backend, "servers", server, action] => {
            let admin = match *action {
                "drain" => AdminState::Drain,
                "enable" => AdminState::Ready,
                "disable" => AdminState::Disabled,
                _ => return not_found(path),
            };
            if method != Method::POST {
                return not_allowed(Method::POST);
            }
            let (Some(backend), Some(server)) = (percent_decode(backend), percent_decode(server))
            else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "backend and server names must be valid percent-encoded UTF-8",
                );
            };
            match daemon.set_admin(&backend, &server, admin).await {
                Ok(changes) => {
                    let servers: Vec<serde_json::Value> = changes
                        .iter()
                        .map(|c| {
                            let mut value = serde_json::to_value(ServerStatus::of(&c.server))
                                .unwrap_or_default();
                            value["previous"] = json!(c.previous.as_str());
                            value
                        })
                        .collect();
                    json_answer(
                        StatusCode::OK,
                        &json!({ "backend": backend, "servers": servers }),
                    )
                }
                Err(unknown) => error(StatusCode::NOT_FOUND, &unknown.to_string()),
            }
        }
        _ => not_found(path),
    }
}

fn only(method: &Method, allowed: Method, answer: impl FnOnce() -> Answer) -> Answer {
    if *method == allowed {
        answer()
    } else {
        not_allowed(allowed)
    }
}

fn metrics_answer(context: &Context) -> Answer {
    match metrics::render(&context.registry) {
        Ok(body) => {
            let mut answer = Response::new(Full::new(Bytes::from(body)));
            answer.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            answer
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics could not be encoded",
        ),
    }
}

fn text(status: StatusCode, body: String) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}

fn json_answer(status: StatusCode, value: &impl serde::Serialize) -> Answer {
    let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    answer
}

/// A JSON error answer: `{"error": message}`.
pub(super) fn error(status: StatusCode, message: &str) -> Answer {
    json_answer(status, &json!({ "error": message }))
}

fn not_found(path: &str) -> Answer {
    error(
        StatusCode::NOT_FOUND,
        &format!(
            "no such route: {path} (the routes are listed in docs/operations.md under \"Admin API\")"
        ),
    )
}

fn not_allowed(allowed: Method) -> Answer {
    let mut answer = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed: use {allowed}"),
    );
    if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
        answer.headers_mut().insert(header::ALLOW, value);
    }
    answer
}

fn body_refused() -> Answer {
    let mut answer = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "the admin API takes no request body",
    );
    // The unread body is still on the wire: this connection cannot carry
    // another request.
    answer.headers_mut().insert(
        header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    answer
}

/// The value of `key` in a URL query (`a=1&frontend=x`): `None` when the key
/// is absent, `Some(None)` when its value is not valid percent-encoding.
fn query_value(query: Option<&str>, key: &str) -> Option<Option<String>> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(&v.replace('+', " ")))
    })
}

/// Decodes `%XX` escapes in a path segment; `None` on a bad escape or bad UTF-8.
pub fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("cp3%40%3A%3A1").as_deref(), Some("cp3@::1"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%4"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn reads_query_values() {
        let value = |q| query_value(q, "frontend");
        assert_eq!(value(None), None);
        assert_eq!(value(Some("other=1")), None);
        assert_eq!(value(Some("frontend=api")), Some(Some("api".into())));
        assert_eq!(
            value(Some("x=1&frontend=kube%2Dapi")),
            Some(Some("kube-api".into()))
        );
        assert_eq!(value(Some("frontend=%zz")), Some(None));
    }
}
