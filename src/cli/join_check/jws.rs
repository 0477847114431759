//! The detached JWS a kubeadm cluster keeps in `cluster-info` for every
//! bootstrap token, computed as Kubernetes computes it.
//!
//! The format follows `staging/src/k8s.io/cluster-bootstrap/token/jws/jws.go`
//! in kubernetes/kubernetes (`ComputeDetachedSignature`): a compact JWS
//! (RFC 7515) over the kubeconfig text with the payload part left out
//! (`header..signature`, RFC 7515 appendix F); HS256 keyed with the token
//! secret, zero-padded to 32 bytes (go-jose's minimum HS256 key); the token
//! ID as `kid` in the protected header. kubeadm
//! (`cmd/kubeadm/app/discovery/token/token.go`) recomputes the string and
//! compares it whole, and so does [`check`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

/// The `cluster-info` data key holding the signature for a token ID.
pub(crate) const KEY_PREFIX: &str = "jws-kubeconfig-";

/// go-jose refuses HS256 keys shorter than this; Kubernetes pads with zeros.
const MIN_KEY_LEN: usize = 32;

/// The detached JWS of `content` for the token `id.secret`.
pub(crate) fn detached_signature(content: &str, id: &str, secret: &str) -> String {
    let header = protected_header(id);
    let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(content));
    let mut key = secret.as_bytes().to_vec();
    if key.len() < MIN_KEY_LEN {
        key.resize(MIN_KEY_LEN, 0);
    }
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &key),
        signing_input.as_bytes(),
    );
    format!("{header}..{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// The base64url protected header go-jose writes: its keys sorted, as Go's
/// `encoding/json` writes a map. A token ID is `[a-z0-9]{6}`, so it needs
/// no JSON escaping.
fn protected_header(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{id}"}}"#))
}

/// How a signature found in `cluster-info` compares with the one the token makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The same string: kubeadm trusts the content.
    Valid,
    /// Same header, other signature: another secret signed it (or the
    /// content changed after it was signed).
    WrongSecret,
    /// Not even the header matches: not a bootstrap-signer signature for this ID.
    Malformed {
        /// What the header decodes to, for the message.
        header: String,
    },
}

/// Compares `found` with the signature `id.secret` makes over `content`.
pub(crate) fn check(found: &str, content: &str, id: &str, secret: &str) -> Verdict {
    let expected = detached_signature(content, id, secret);
    if found == expected {
        return Verdict::Valid;
    }
    let found_header = found.split('.').next().unwrap_or_default();
    if found_header == protected_header(id) && found.matches('.').count() == 2 {
        return Verdict::WrongSecret;
    }
    let header = URL_SAFE_NO_PAD
        .decode(found_header)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|_| format!("{found_header:?}, not base64url"));
    Verdict::Malformed { header }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The vectors of cluster-bootstrap/token/jws/jws_test.go.
    const CONTENT: &str = "Hello from the other side. I must have called a thousand times.";
    const SECRET: &str = "my voice is my passcode";
    const ID: &str = "joshua";

    #[test]
    fn matches_the_kubernetes_test_vectors() {
        assert_eq!(
            detached_signature(CONTENT, ID, SECRET),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8"
        );
        assert_eq!(
            detached_signature("", ID, SECRET),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..7Ui1ALizW4jXphVUB7xUqC9vLYLL9RZeOFfVLoB7Tgk"
        );
        assert_eq!(
            detached_signature(CONTENT, ID, ""),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..UfkqvDGiIFxrMnFseDj9LYJOLNrvjW8aHhF71mvvAs8"
        );
    }

    #[test]
    fn tells_a_wrong_secret_from_a_foreign_signature() {
        let good = detached_signature(CONTENT, ID, SECRET);
        assert_eq!(check(&good, CONTENT, ID, SECRET), Verdict::Valid);
        assert_eq!(check(&good, CONTENT, ID, "other"), Verdict::WrongSecret);
        assert_eq!(
            check(&good, "changed content", ID, SECRET),
            Verdict::WrongSecret
        );
        let foreign = detached_signature(CONTENT, "abcdef", SECRET);
        assert_eq!(
            check(&foreign, CONTENT, ID, SECRET),
            Verdict::Malformed {
                header: r#"{"alg":"HS256","kid":"abcdef"}"#.into()
            }
        );
    }
}
