//! How servers are named: a configured server by its `name` (its address
//! when unset), each address of a DNS-named one as `name@ip`, so a server
//! keeps its name (and state) while the name's other addresses come and go.

use std::net::SocketAddr;

/// The name of one address of a DNS-named server: `cp3@10.0.0.13`.
pub fn dns_server_name(configured: &str, addr: SocketAddr) -> String {
    format!("{configured}@{}", addr.ip())
}

/// Whether the server named `server` is configured server `configured`: the
/// same name (an IP literal), or one of its DNS addresses (`cp3@10.0.0.13`).
/// Configured names cannot contain `@`, so the answer is never ambiguous.
pub fn is_address_of(server: &str, configured: &str) -> bool {
    server
        .strip_prefix(configured)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_configured_server_stands_for() {
        assert!(is_address_of("cp3", "cp3"));
        assert!(is_address_of("cp3@10.0.0.13", "cp3"));
        assert!(is_address_of("cp3@::1", "cp3"));
        assert!(is_address_of("cp3@10.0.0.13", "cp3@10.0.0.13"));
        assert!(!is_address_of("cp3@10.0.0.13", "cp"));
        assert!(!is_address_of("cp30", "cp3"));
        assert!(!is_address_of("cp3@10.0.0.130", "cp3@10.0.0.13"));
        assert!(!is_address_of("cp", "cp3"));
    }
}
