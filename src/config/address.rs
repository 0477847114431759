//! Address forms that parse (or almost) but that lbd cannot use as written,
//! each with a message naming the problem and what to write instead.

use std::net::{Ipv6Addr, SocketAddr};

/// An IPv6 zone (`[fe80::1%lo]:6443`, `fe80::1%eth0`): lbd does not take
/// scope ids, so say so instead of calling the address malformed.
pub(super) fn zone_problem(text: &str) -> Option<String> {
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.split_once(']'))
        .map_or(text, |(inner, _)| inner);
    let (ip, zone) = inner.split_once('%')?;
    ip.parse::<Ipv6Addr>().ok()?;
    Some(format!(
        "IPv6 zone \"%{zone}\" is not supported (link-local addresses need one): use an address without a zone, such as a global or unique-local IPv6 (\"[fd00::11]:6443\") or an IPv4"
    ))
}

/// An IPv4-mapped IPv6 listen address (`[::ffff:127.0.0.1]:6443`): lbd's
/// IPv6 sockets are IPv6-only, where the kernel refuses to bind one.
pub(super) fn mapped_listen_problem(addr: SocketAddr) -> Option<String> {
    let SocketAddr::V6(v6) = addr else {
        return None;
    };
    let v4 = v6.ip().to_ipv4_mapped()?;
    Some(format!(
        "{addr} is an IPv4-mapped IPv6 address, which an IPv6-only socket cannot bind: write \"{v4}:{}\"",
        v6.port()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_are_named_with_or_without_brackets_and_port() {
        for text in ["[fe80::1%lo]:6443", "fe80::1%eth0", "[fe80::1%2]"] {
            let problem = zone_problem(text).unwrap_or_else(|| panic!("{text}"));
            assert!(problem.starts_with("IPv6 zone \"%"), "{problem}");
        }
        assert_eq!(zone_problem("[fd00::1]:6443"), None);
        assert_eq!(zone_problem("50%:1"), None);
    }

    #[test]
    fn a_mapped_address_names_its_ipv4_form() {
        let addr: SocketAddr = "[::ffff:127.0.0.1]:6443".parse().unwrap();
        assert!(
            mapped_listen_problem(addr)
                .unwrap()
                .ends_with("write \"127.0.0.1:6443\"")
        );
        assert_eq!(mapped_listen_problem("[::1]:6443".parse().unwrap()), None);
        assert_eq!(
            mapped_listen_problem("127.0.0.1:6443".parse().unwrap()),
            None
        );
    }
}
