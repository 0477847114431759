//! The health check's `path`: what lbd puts after `GET ` in its request. A
//! path lbd's HTTP client would refuse to send must be refused here, with
//! its place in the file, rather than fail every check at run time.

use hyper::http::uri::PathAndQuery;

use super::error::quoted;

/// Longest `path`: room for any real `/readyz?exclude=…&verbose`, short
/// enough that a pasted file or a runaway template is caught.
pub(super) const MAX_HEALTH_PATH: usize = 2048;

/// Why `path` is not a request target lbd can send, if it is not: it must
/// start with '/', be at most [`MAX_HEALTH_PATH`] bytes, hold no space or
/// control character, no `#`, and parse as a URI path and query.
pub(super) fn problem(path: &str) -> Option<String> {
    if path.len() > MAX_HEALTH_PATH {
        return Some(format!(
            "health `path` is {} bytes long; at most {MAX_HEALTH_PATH} are allowed",
            path.len()
        ));
    }
    if !path.starts_with('/') {
        return Some(format!(
            "health `path` {} must start with '/', e.g. \"/readyz\"",
            quoted(path)
        ));
    }
    if let Some((at, c)) = path
        .char_indices()
        .find(|&(_, c)| c.is_whitespace() || c.is_control())
    {
        let what = if c == ' ' {
            "a space".to_owned()
        } else {
            format!("the character {:?}", c)
        };
        return Some(format!(
            "health `path` {} contains {what} at byte {at}: a request path cannot; percent-encode it (a space is %20)",
            quoted(path)
        ));
    }
    if path.contains('#') {
        return Some(format!(
            "health `path` {} contains '#': a fragment is never sent to the server; remove it or write %23",
            quoted(path)
        ));
    }
    match path.parse::<PathAndQuery>() {
        Ok(_) => None,
        Err(e) => Some(format!(
            "health `path` {} is not a valid URI path and query ({e}); percent-encode other characters",
            quoted(path)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_paths_pass() {
        for path in [
            "/readyz",
            "/readyz?verbose",
            "/readyz?exclude=etcd&exclude=informer-sync",
            "/livez/ping",
            "/a%20b",
            "/",
        ] {
            assert_eq!(problem(path), None, "{path}");
        }
    }

    #[test]
    fn what_a_request_line_cannot_carry_is_refused_and_named() {
        for (path, words) in [
            ("readyz", "must start with '/'"),
            ("", "must start with '/'"),
            ("/ready z", "contains a space at byte 6"),
            (
                "/readyz\r\nX-Evil: 1",
                "contains the character '\\r' at byte 7",
            ),
            ("/readyz\n", "contains the character '\\n'"),
            ("/readyz\t", "contains the character '\\t'"),
            ("/\u{7f}", "contains the character '\\u{7f}'"),
            ("/readyz#top", "a fragment is never sent"),
            ("/ready<z>", "not a valid URI path and query"),
        ] {
            let message = problem(path).unwrap_or_else(|| panic!("{path:?} passed"));
            assert!(message.contains(words), "{path:?}: {message}");
        }
    }

    #[test]
    fn a_long_path_is_refused_without_quoting_it() {
        let long = format!("/{}", "a".repeat(100 * 1024));
        let message = problem(&long).unwrap();
        assert_eq!(
            message,
            "health `path` is 102401 bytes long; at most 2048 are allowed"
        );
        assert_eq!(problem(&long[..MAX_HEALTH_PATH]), None);
    }
}
