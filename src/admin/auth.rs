//! Who may use the admin API. The API can drain every apiserver and reload
//! the config, so off this host it needs a bearer token:
//!
//! - without `token_file` every request is allowed; config validation only
//!   permits that on a loopback address or a unix socket (mode 0660);
//! - with `token_file`, every request must carry `Authorization: Bearer
//!   <token>`, except `GET /metrics`, `/healthz` and `/readyz` when
//!   `anonymous_read_only` is set;
//! - `GET /`, the status page, is always served: it is a fixed shell that
//!   holds no data and fetches everything from `/api/v1/status` with the
//!   token the operator types in;
//! - a request that changes lbd and carries `Origin` (sent by a browser)
//!   is refused unless it comes from lbd's own status page: same origin,
//!   and, without a token, an origin a DNS name cannot fake (an IP literal
//!   or `localhost`).
//!
//! The token is read from its file on each request (rotating it is
//! replacing the file), compared in constant time, and never logged or
//! echoed. The policy itself is fixed when lbd starts, like the listener.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hyper::header::{self, HOST, HeaderMap, ORIGIN};
use hyper::{Method, StatusCode};
use tracing::warn;

use crate::config;

/// Longest token file read: a token is a line, not a document.
const MAX_TOKEN_BYTES: u64 = 4096;

/// Shortest token accepted: shorter ones can be guessed.
const MIN_TOKEN_BYTES: usize = 16;

/// Why a request was turned away: 401 or 503 and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status to answer with.
    pub status: StatusCode,
    /// What the client should do about it.
    pub reason: String,
}

/// Why the token file is unusable; lbd refuses to start on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("admin token_file {}: {reason}", path.display())]
pub struct TokenFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub reason: String,
}

/// The admin API's access policy, taken from `[admin]` at start.
#[derive(Debug, Clone)]
pub struct Policy {
    token_file: Option<PathBuf>,
    anonymous_read_only: bool,
}

impl Policy {
    /// The policy `[admin]` asks for.
    pub fn new(admin: &config::Admin) -> Policy {
        Policy {
            token_file: admin.token_file.clone(),
            anonymous_read_only: admin.anonymous_read_only,
        }
    }

    /// Checks at start that the token file can serve: readable, a token of
    /// at least 16 bytes, not readable by every user.
    pub fn check(&self) -> Result<(), TokenFileError> {
        match &self.token_file {
            None => Ok(()),
            Some(path) => read_token(path).map(|_| ()),
        }
    }

    /// Decides on one request, reading the token file here if it needs it
    /// (blocking file I/O: the admin server uses [`Policy::token_file_for`]
    /// and [`Policy::authorize_with`] to read it off the runtime's threads).
    pub fn authorize(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        let expected = self
            .token_file_for(method, path, headers)
            .map(|file| read_token(&file));
        self.authorize_with(method, path, headers, expected)
    }

    /// The token file the decision on this request needs read, if any: only
    /// a request that must carry the token and does.
    pub fn token_file_for(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<PathBuf> {
        let token_file = self.token_file.as_ref()?;
        let exempt = (method == Method::GET && path == "/")
            || (self.anonymous_read_only && is_read_only(method, path));
        (!exempt && bearer(headers).is_some()).then(|| token_file.clone())
    }

    /// Decides on one request; `expected` is the token file's contents when
    /// [`Policy::token_file_for`] named it.
    pub fn authorize_with(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        expected: Option<Result<Vec<u8>, TokenFileError>>,
    ) -> Result<(), Refusal> {
        // A web page the operator happens to have open may POST to
        // 127.0.0.1:8404 (a cross-site request needs no CORS approval to be
        // sent); browsers mark such requests with Origin, lbctl and curl do not.
        let changes = method != Method::GET && method != Method::HEAD;
        if changes
            && headers.contains_key(ORIGIN)
            && !from_own_page(headers, self.token_file.is_some())
        {
            return Err(Refusal {
                status: StatusCode::FORBIDDEN,
                reason: "requests from web pages (with an Origin header) may not change lbd; use lbctl or curl".into(),
            });
        }
        if method == Method::GET && path == "/" {
            return Ok(());
        }
        if self.token_file.is_none() {
            return Ok(());
        }
        if self.anonymous_read_only && is_read_only(method, path) {
            return Ok(());
        }
        let unauthorized = |reason: &str| Refusal {
            status: StatusCode::UNAUTHORIZED,
            reason: reason.to_owned(),
        };
        let Some(presented) = bearer(headers) else {
            return Err(unauthorized(
                "this admin API needs a bearer token: send `Authorization: Bearer <token>` (lbctl --token-file FILE)",
            ));
        };
        let expected = match expected {
            Some(Ok(token)) => token,
            Some(Err(err)) => {
                warn!("admin API: {err}; refusing every request that needs the token");
                return Err(Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    reason: "the admin token file cannot be read on the server; see lbd's log"
                        .into(),
                });
            }
            None => {
                return Err(Refusal {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    reason: "the admin token file was not read for this request".into(),
                });
            }
        };
        if constant_time_eq(presented, &expected) {
            Ok(())
        } else {
            Err(unauthorized("wrong bearer token"))
        }
    }
}

/// Whether a browser request comes from the status page lbd served: its
/// `Origin` is `http://` and the very `Host` it was sent to. That alone
/// would let a DNS-rebinding page (evil.example resolving to 127.0.0.1)
/// pass, since to the browser it is same-origin; so without a token the
/// host must also be one no DNS answer can stand for. With a token, the
/// rebinding page cannot read it: the tab keeps it per origin.
fn from_own_page(headers: &HeaderMap, token_required: bool) -> bool {
    let (Some(origin), Some(host)) = (headers.get(ORIGIN), headers.get(HOST)) else {
        return false;
    };
    let (Ok(origin), Ok(host)) = (origin.to_str(), host.to_str()) else {
        return false;
    };
    let same = origin
        .strip_prefix("http://")
        .is_some_and(|rest| rest.eq_ignore_ascii_case(host));
    same && (token_required || names_this_host_literally(host))
}

/// Whether `host` (a `Host` header: name or address, optional port) is an
/// IP address or `localhost`, which resolve without asking DNS.
fn names_this_host_literally(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => v6,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.parse::<std::net::IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost")
}

/// The routes `anonymous_read_only` opens: they show state, change nothing.
fn is_read_only(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && matches!(path, "/metrics" | "/healthz" | "/readyz")
}

/// The token of an `Authorization: Bearer <token>` header, if exactly one.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.as_bytes();
    let (scheme, token) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The token in `path`: its content without surrounding whitespace.
pub(super) fn read_token(path: &Path) -> Result<Vec<u8>, TokenFileError> {
    let fail = |reason: String| TokenFileError {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open it: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot stat it: {e}")))?;
    if !meta.is_file() {
        return Err(fail("is not a regular file".into()));
    }
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(fail(
            "every user can read it: chmod 600 (or 640 for a group of operators)".into(),
        ));
    }
    let mut content = Vec::new();
    file.take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(|e| fail(format!("cannot read it: {e}")))?;
    if content.len() as u64 > MAX_TOKEN_BYTES {
        return Err(fail(format!(
            "is longer than {MAX_TOKEN_BYTES} bytes: it should hold one token"
        )));
    }
    let token = content.trim_ascii();
    if token.len() < MIN_TOKEN_BYTES {
        return Err(fail(format!(
            "holds {} bytes of token; use at least {MIN_TOKEN_BYTES}, e.g. `openssl rand -hex 32 > FILE`",
            token.len()
        )));
    }
    if token
        .iter()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(fail(
            "holds whitespace or control characters inside the token: one line, one token".into(),
        ));
    }
    Ok(token.to_vec())
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell an attacker how much of a guess was right. (It does
/// depend on the lengths, which a token's strength does not rest on.)
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut difference = presented.len() ^ expected.len();
    for (i, &b) in expected.iter().enumerate() {
        let p = presented.get(i).copied().unwrap_or(!b);
        difference |= usize::from(p ^ b);
    }
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn policy(test: &str, anonymous_read_only: bool) -> (Policy, PathBuf) {
        let dir = std::env::temp_dir().join(format!("lbd-auth-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let policy = Policy {
            token_file: Some(path.clone()),
            anonymous_read_only,
        };
        (policy, path)
    }

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn without_a_token_file_everything_is_allowed() {
        let open = Policy {
            token_file: None,
            anonymous_read_only: false,
        };
        assert!(
            open.authorize(&Method::POST, "/api/v1/reload", &headers(None))
                .is_ok()
        );
    }

    #[test]
    fn the_token_is_required_and_checked() {
        let (policy, _) = policy("the_token_is_required_and_checked", false);
        let post =
            |auth: Option<&str>| policy.authorize(&Method::POST, "/api/v1/reload", &headers(auth));
        assert_eq!(post(None).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert!(post(Some("Bearer wrong")).is_err());
        assert!(post(Some(&format!("Bearer {TOKEN}x"))).is_err());
        assert!(post(Some(&format!("Basic {TOKEN}"))).is_err());
        assert!(post(Some(&format!("Bearer {TOKEN}"))).is_ok());
        assert!(post(Some(&format!("bearer   {TOKEN} "))).is_ok());
        let get = policy.authorize(&Method::GET, "/metrics", &headers(None));
        assert!(get.is_err(), "read-only routes need it too unless opened");
    }

    #[test]
    fn anonymous_read_only_opens_exactly_the_three_probes() {
        let (policy, _) = policy("anonymous_read_only_opens_exactly_the_three_probes", true);
        for path in ["/metrics", "/healthz", "/readyz"] {
            assert!(policy.authorize(&Method::GET, path, &headers(None)).is_ok());
            assert!(
                policy
                    .authorize(&Method::POST, path, &headers(None))
                    .is_err()
            );
        }
        for path in ["/api/v1/status", "/api/v1/reload", "/metrics/", "/readyz?x"] {
            assert!(
                policy
                    .authorize(&Method::GET, path, &headers(None))
                    .is_err(),
                "{path}"
            );
        }
    }

    fn browser(origin: &str, host: &str, authorization: Option<&str>) -> HeaderMap {
        let mut headers = headers(authorization);
        headers.insert(ORIGIN, origin.parse().unwrap());
        headers.insert(HOST, host.parse().unwrap());
        headers
    }

    #[test]
    fn the_status_page_shell_needs_no_token() {
        let (policy, _) = policy("the_status_page_shell_needs_no_token", false);
        assert!(policy.authorize(&Method::GET, "/", &headers(None)).is_ok());
        assert!(
            policy
                .authorize(&Method::POST, "/", &headers(None))
                .is_err()
        );
        assert!(
            policy
                .authorize(&Method::GET, "/api/v1/status", &headers(None))
                .is_err()
        );
    }

    #[test]
    fn only_the_own_page_may_post_from_a_browser() {
        let open = Policy {
            token_file: None,
            anonymous_read_only: false,
        };
        let drain = "/api/v1/backends/pool/servers/a/drain";
        let post = |headers: &HeaderMap| open.authorize(&Method::POST, drain, headers);
        for (origin, host) in [
            ("http://127.0.0.1:8404", "127.0.0.1:8404"),
            ("http://[::1]:8404", "[::1]:8404"),
            ("http://localhost:8404", "localhost:8404"),
        ] {
            assert!(post(&browser(origin, host, None)).is_ok(), "{origin}");
        }
        for (origin, host) in [
            // Another site, another port, another scheme.
            ("http://evil.example", "127.0.0.1:8404"),
            ("http://127.0.0.1:9999", "127.0.0.1:8404"),
            ("https://127.0.0.1:8404", "127.0.0.1:8404"),
            ("null", "127.0.0.1:8404"),
            // DNS rebinding: same origin to the browser, but a name.
            ("http://evil.example:8404", "evil.example:8404"),
            ("http://[::1]x:8404", "[::1]x:8404"),
        ] {
            let refused = post(&browser(origin, host, None)).unwrap_err();
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{origin} {host}");
        }
        // With a token a named host is fine: the token is what is checked.
        let (policy, _) = policy("only_the_own_page_may_post_from_a_browser", false);
        let named = browser(
            "http://lb.example:8404",
            "lb.example:8404",
            Some(&format!("Bearer {TOKEN}")),
        );
        assert!(policy.authorize(&Method::POST, drain, &named).is_ok());
        let tokenless = browser("http://lb.example:8404", "lb.example:8404", None);
        assert_eq!(
            policy
                .authorize(&Method::POST, drain, &tokenless)
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let (policy, _) = policy("two_authorization_headers_are_refused", false);
        let mut twice = headers(Some(&format!("Bearer {TOKEN}")));
        twice.append(header::AUTHORIZATION, "Bearer other".parse().unwrap());
        assert!(
            policy
                .authorize(&Method::POST, "/api/v1/reload", &twice)
                .is_err()
        );
    }

    #[test]
    fn weak_or_exposed_token_files_are_refused() {
        let (policy, path) = policy("weak_or_exposed_token_files_are_refused", false);
        assert!(policy.check().is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            policy
                .check()
                .unwrap_err()
                .reason
                .contains("every user can read it")
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "short\n").unwrap();
        assert!(policy.check().unwrap_err().reason.contains("at least 16"));
        std::fs::write(&path, format!("{TOKEN} {TOKEN}\n")).unwrap();
        assert!(
            policy
                .check()
                .unwrap_err()
                .reason
                .contains("one line, one token")
        );
        std::fs::remove_file(&path).unwrap();
        assert!(policy.check().unwrap_err().reason.contains("cannot open"));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
    }
}
