//! What a server certificate says, read with x509-parser: subject, issuer,
//! validity and SANs, and whether it covers the name a client uses.

use std::net::IpAddr;

use serde::Serialize;
use x509_parser::extensions::GeneralName;

/// The parts of a certificate an operator fixing kubeadm needs to see.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CertInfo {
    /// Distinguished name of the subject, e.g. `CN=kube-apiserver`.
    pub subject: String,
    /// Distinguished name of the issuer, e.g. `CN=kubernetes`.
    pub issuer: String,
    /// Start of validity, RFC 3339 UTC.
    pub not_before: String,
    /// End of validity, RFC 3339 UTC.
    pub not_after: String,
    /// Subject alternative names as openssl prints them: `DNS:kubernetes`, `IP:10.96.0.1`.
    pub sans: Vec<String>,
    #[serde(skip)]
    not_before_unix: i64,
    #[serde(skip)]
    not_after_unix: i64,
    #[serde(skip)]
    dns_names: Vec<String>,
    #[serde(skip)]
    ips: Vec<IpAddr>,
}

/// Where `now` stands against a certificate's validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Validity {
    /// Inside the window.
    Valid,
    /// Before `not_before`.
    NotYetValid,
    /// After `not_after`.
    Expired,
}

impl CertInfo {
    /// Parses a DER certificate, or says why it is not one.
    pub(crate) fn parse(der: &[u8]) -> Result<CertInfo, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("the server's certificate does not parse: {e}"))?;
        let validity = cert.validity();
        let mut info = CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: rfc3339(validity.not_before.timestamp()),
            not_after: rfc3339(validity.not_after.timestamp()),
            sans: Vec::new(),
            not_before_unix: validity.not_before.timestamp(),
            not_after_unix: validity.not_after.timestamp(),
            dns_names: Vec::new(),
            ips: Vec::new(),
        };
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| format!("the certificate's SAN extension does not parse: {e}"))?;
        for name in sans.iter().flat_map(|ext| &ext.value.general_names) {
            match name {
                GeneralName::DNSName(dns) => {
                    info.sans.push(format!("DNS:{dns}"));
                    info.dns_names.push(dns.to_ascii_lowercase());
                }
                GeneralName::IPAddress(bytes) => match ip_from_bytes(bytes) {
                    Some(ip) => {
                        info.sans.push(format!("IP:{ip}"));
                        info.ips.push(ip);
                    }
                    None => info.sans.push(format!("IP:<{} bytes>", bytes.len())),
                },
                other => info.sans.push(format!("{other}")),
            }
        }
        Ok(info)
    }

    /// Whether the certificate is valid at `now` (seconds since the epoch).
    pub(crate) fn validity_at(&self, now: i64) -> Validity {
        if now < self.not_before_unix {
            Validity::NotYetValid
        } else if now > self.not_after_unix {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }

    /// Whether `name` (a DNS name or an IP) is among the SANs. The subject's
    /// CN is ignored, as Go's TLS client (kubectl, kubelet) ignores it.
    pub(crate) fn covers(&self, name: &str) -> bool {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return self.ips.contains(&ip);
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.dns_names
            .iter()
            .any(|san| match san.strip_prefix("*.") {
                Some(suffix) => name
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                None => *san == name,
            })
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Seconds since the epoch as `2026-01-31T12:00:00Z`.
pub(crate) fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = crate::util::clock::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(sans: &[&str]) -> CertInfo {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        CertInfo::parse(cert.der()).unwrap()
    }

    #[test]
    fn reads_subject_and_sans() {
        let info = cert_with(&["kubernetes", "10.96.0.1", "::1"]);
        assert_eq!(info.subject, "CN=kube-apiserver");
        assert_eq!(info.sans, ["DNS:kubernetes", "IP:10.96.0.1", "IP:::1"]);
        assert_eq!(info.validity_at(info.not_before_unix + 1), Validity::Valid);
        assert_eq!(
            info.validity_at(info.not_before_unix - 1),
            Validity::NotYetValid
        );
        assert_eq!(info.validity_at(info.not_after_unix + 1), Validity::Expired);
    }

    #[test]
    fn covers_names_ips_and_one_wildcard_label() {
        let info = cert_with(&["kubernetes", "*.lab.internal", "10.0.0.10"]);
        assert!(info.covers("kubernetes"));
        assert!(info.covers("KUBERNETES."));
        assert!(info.covers("cp1.lab.internal"));
        assert!(!info.covers("lab.internal"));
        assert!(!info.covers("a.cp1.lab.internal"));
        assert!(info.covers("10.0.0.10"));
        assert!(!info.covers("10.0.0.11"));
        assert!(!info.covers("kube-apiserver"), "the CN is not a SAN");
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}
