//! `GET /`: the status page. One HTML document with its CSS and script
//! inline, embedded in the binary; it holds no data itself and fetches
//! `/api/v1/status` from the browser (with the token the operator types in,
//! kept in the tab's session storage), so it is served without the token.
//!
//! Its Content-Security-Policy allows only the inline style and script
//! carrying this response's nonce, and requests to lbd itself; it may not
//! be framed (clickjacking its drain buttons).

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// The page, with `{{NONCE}}` where each response's nonce goes.
const TEMPLATE: &str = include_str!("page.html");

/// What stands for the nonce in [`TEMPLATE`].
const NONCE_MARK: &str = "{{NONCE}}";

/// The status page with fresh nonce and its security headers; `None` when
/// the system has no randomness to give (the caller answers 500).
pub fn answer() -> Option<Response<Full<Bytes>>> {
    let nonce = nonce()?;
    let body = TEMPLATE.replace(NONCE_MARK, &nonce);
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = StatusCode::OK;
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(&csp).ok()?,
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(answer)
}

/// 128 random bits in hex (hex digits are valid CSP nonce characters).
fn nonce() -> Option<String> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inline_block_carries_the_nonce_and_nothing_loads_from_outside() {
        let answer = answer().expect("randomness");
        let csp = answer.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        let nonce = csp
            .split("'nonce-")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap()
            .to_owned();
        assert_eq!(nonce.len(), 32);
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(answer.headers()[header::X_FRAME_OPTIONS], "DENY");
        let body = TEMPLATE.replace(NONCE_MARK, &nonce);
        assert!(!body.contains(NONCE_MARK));
        for tag in ["<script", "<style"] {
            let blocks = body.matches(tag).count();
            let with_nonce = body.matches(&format!("{tag} nonce=\"{nonce}\"")).count();
            assert_eq!(blocks, with_nonce, "every {tag} has the nonce");
        }
        // No attribute styles or handlers: the policy would block them.
        assert!(!body.contains(" style=\"") && !body.contains(" onclick="));
        for outside in ["http://", "https://", "src=\"//"] {
            let found: Vec<&str> = body
                .lines()
                .filter(|l| l.contains(outside) && !l.contains("www.w3.org/2000/svg"))
                .collect();
            assert!(found.is_empty(), "{outside}: {found:?}");
        }
        // A nonce is not reused.
        assert_ne!(answer_nonce(), nonce);
    }

    fn answer_nonce() -> String {
        let answer = answer().unwrap();
        let csp = answer.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        csp.split("'nonce-").nth(1).unwrap()[..32].to_owned()
    }
}
