//! kubeadm's CA public-key pin, `sha256:HEX`: the SHA-256 of the CA
//! certificate's DER SubjectPublicKeyInfo, as
//! `cmd/kubeadm/app/util/pubkeypin/pubkeypin.go` in kubernetes/kubernetes
//! computes it (`Hash`) and parses it (`Allow`: `format:value`, the format
//! case-insensitive, 64 hex digits).

use std::fmt::Write as _;

use ring::digest;

/// A parsed `--discovery-token-ca-cert-hash`: the hash in lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pin(String);

impl Pin {
    /// Parses `sha256:HEX` as kubeadm does, or says what is wrong.
    pub(crate) fn parse(given: &str) -> Result<Pin, String> {
        let Some((format, value)) = given.split_once(':').filter(|(_, v)| !v.contains(':')) else {
            return Err(format!(
                "{given:?} is not a CA hash: expected \"sha256:HEX\", as kubeadm init prints it"
            ));
        };
        if !format.eq_ignore_ascii_case("sha256") {
            return Err(format!(
                "{given:?}: unknown hash format {format:?}; the only one is sha256"
            ));
        }
        if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{given:?}: a sha256 hash is 64 hex digits, this is {} characters{}",
                value.len(),
                if value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    ""
                } else {
                    " and not all hex"
                }
            ));
        }
        Ok(Pin(value.to_ascii_lowercase()))
    }

    /// The pin of a DER SubjectPublicKeyInfo.
    pub(crate) fn of_spki(spki_der: &[u8]) -> Pin {
        Pin(hex(digest::digest(&digest::SHA256, spki_der).as_ref()))
    }
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_kubeadm_does() {
        let hex64 = "3B793EFEFE27A19F93B0FBE6E637E9C41D0DDE8A377D6AB1C0F656BF1136DD8A";
        let pin = Pin::parse(&format!("SHA256:{hex64}")).unwrap();
        assert_eq!(pin.to_string(), format!("sha256:{}", hex64.to_lowercase()));
        assert!(
            Pin::parse(hex64)
                .unwrap_err()
                .contains("expected \"sha256:HEX\"")
        );
        assert!(
            Pin::parse("md5:abcd")
                .unwrap_err()
                .contains("unknown hash format")
        );
        assert!(
            Pin::parse("sha256:abcd")
                .unwrap_err()
                .contains("64 hex digits")
        );
        assert!(Pin::parse("sha256:a:b").is_err());
    }

    #[test]
    fn hashes_the_subject_public_key_info() {
        // SHA-256 of the empty input, as a check of the hex form.
        assert_eq!(
            Pin::of_spki(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
