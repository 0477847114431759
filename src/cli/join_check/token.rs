//! What `kubeadm join` checks in its flags before any discovery: the
//! bootstrap token's form and the certificate key's form.

/// A bootstrap token, `ID.SECRET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BootstrapToken {
    /// The public part, six characters: names the token and its signature.
    pub id: String,
    /// The private part, sixteen characters: the key of the signature.
    pub secret: String,
}

impl BootstrapToken {
    /// Parses a token as `k8s.io/cluster-bootstrap/token/api`'s
    /// `BootstrapTokenPattern` allows: `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub(crate) fn parse(given: &str) -> Result<BootstrapToken, String> {
        let shape = "a bootstrap token is ID.SECRET: 6 and 16 characters of a-z and 0-9, \
                     e.g. abcdef.0123456789abcdef (kubeadm token list shows them)";
        let (id, secret) = given
            .split_once('.')
            .ok_or_else(|| format!("{given:?} has no '.': {shape}"))?;
        let fits = |part: &str, len: usize| {
            part.len() == len
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        if !fits(id, 6) || !fits(secret, 16) {
            return Err(format!("{given:?} is not a bootstrap token: {shape}"));
        }
        Ok(BootstrapToken {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

/// What is wrong with a `--certificate-key`, if anything. kubeadm's flag
/// help (cmd/kubeadm/app/cmd/join.go) says it is "a hex encoded string
/// that is an AES key of size 32 bytes": 64 hex digits.
pub(crate) fn certificate_key_problem(key: &str) -> Option<String> {
    let hex = key.bytes().all(|b| b.is_ascii_hexdigit());
    match (key.len(), hex) {
        (64, true) => None,
        (len, true) => Some(format!(
            "--certificate-key has {len} hex digits; kubeadm needs 64 (a 32-byte AES key)"
        )),
        (len, false) => Some(format!(
            "--certificate-key is not hex ({len} characters, some not 0-9 or a-f); kubeadm needs \
             64 hex digits (a 32-byte AES key)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tokens_of_the_kubernetes_pattern() {
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(
            (token.id.as_str(), token.secret.as_str()),
            ("abcdef", "0123456789abcdef")
        );
        for bad in [
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdef.x",
            "",
        ] {
            assert!(BootstrapToken::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn certificate_keys_are_64_hex_digits() {
        assert_eq!(certificate_key_problem(&"a1".repeat(32)), None);
        assert!(
            certificate_key_problem(&"a1".repeat(31))
                .unwrap()
                .contains("62 hex digits")
        );
        assert!(
            certificate_key_problem(&"zz".repeat(32))
                .unwrap()
                .contains("not hex")
        );
    }
}
