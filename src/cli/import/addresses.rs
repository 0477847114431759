//! HAProxy `bind` and `server` addresses as lbd writes them.

use std::net::{IpAddr, Ipv6Addr};

/// Most ports one `bind` range may expand to.
const MAX_PORT_RANGE: u32 = 64;

/// The listen addresses of a `bind` address list (`*:6443`, `:::6443`,
/// `10.0.0.1:80-81,[::1]:443`…), or why lbd cannot listen there.
pub(super) fn bind_addresses(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in list.split(',') {
        let (family, rest) = strip_family(item)?;
        let (host, ports) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{item} has no port"))?;
        let host = match host.trim_start_matches('[').trim_end_matches(']') {
            "" | "*" if family == Family::V6 => "[::]".to_owned(),
            "" | "*" => "0.0.0.0".to_owned(),
            h => match h.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => ip.to_string(),
                Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
                Err(_) => {
                    return Err(format!(
                        "{h} is a name: lbd listens on IP addresses, write the address"
                    ));
                }
            },
        };
        for port in port_range(ports)? {
            out.push(format!("{host}:{port}"));
        }
    }
    Ok(out)
}

/// A `server` address (`10.0.0.1:6443`, `cp1.lab:6443`, `[fd00::1]:6443`,
/// `fd00::1:6443`) as lbd's HOST:PORT.
pub(super) fn server_address(text: &str) -> Result<String, String> {
    let (_, rest) = strip_family(text)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
        format!("{text} has no port: HAProxy then uses the client's port; lbd needs one")
    })?;
    if port.starts_with(['+', '-']) {
        return Err(format!("{text}: port offsets have no lbd equivalent"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{text}: the port must be a number from 1 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(match host.parse::<Ipv6Addr>() {
        Ok(ip) => format!("[{ip}]:{port}"),
        Err(_) => format!("{host}:{port}"),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Any,
    V4,
    V6,
}

/// Strips `ipv4@`, `ipv6@`, `tcp@`…; sockets lbd cannot use are errors.
fn strip_family(text: &str) -> Result<(Family, &str), String> {
    if text.starts_with('/') {
        return Err("a unix socket: lbd forwards TCP".into());
    }
    let Some((prefix, rest)) = text.split_once('@') else {
        return Ok((Family::Any, text));
    };
    match prefix {
        "ipv4" | "tcp4" => Ok((Family::V4, rest)),
        "ipv6" | "tcp6" => Ok((Family::V6, rest)),
        "tcp" => Ok((Family::Any, rest)),
        other => Err(format!("an {other}@ socket: lbd forwards TCP over IP")),
    }
}

fn port_range(ports: &str) -> Result<Vec<u16>, String> {
    let bad = || format!("port {ports:?} is not a number from 1 to 65535");
    let (low, high) = ports.split_once('-').unwrap_or((ports, ports));
    let low: u16 = low.parse().map_err(|_| bad())?;
    let high: u16 = high.parse().map_err(|_| bad())?;
    // HAProxy refuses port 0; lbd takes it as "pick a free port", which tests use.
    if (low == 0 && high != 0) || high < low {
        return Err(bad());
    }
    if u32::from(high - low) >= MAX_PORT_RANGE {
        return Err(format!(
            "the port range {ports} is longer than {MAX_PORT_RANGE}: list the ports lbd should listen on"
        ));
    }
    Ok((low..=high).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds() {
        assert_eq!(bind_addresses("*:6443"), Ok(vec!["0.0.0.0:6443".into()]));
        assert_eq!(bind_addresses(":::6443"), Ok(vec!["[::]:6443".into()]));
        assert_eq!(bind_addresses("ipv6@:443"), Ok(vec!["[::]:443".into()]));
        assert_eq!(
            bind_addresses("10.0.0.1:80-81,[fd00::1]:443"),
            Ok(vec![
                "10.0.0.1:80".into(),
                "10.0.0.1:81".into(),
                "[fd00::1]:443".into()
            ])
        );
        assert!(bind_addresses("localhost:80").is_err());
        assert!(bind_addresses("/run/x.sock").is_err());
        assert!(bind_addresses("*:1-1000").is_err());
        assert!(bind_addresses("*").is_err());
    }

    #[test]
    fn servers() {
        assert_eq!(server_address("10.0.0.1:6443"), Ok("10.0.0.1:6443".into()));
        assert_eq!(server_address("fd00::1:6443"), Ok("[fd00::1]:6443".into()));
        assert_eq!(
            server_address("[fd00::1]:6443"),
            Ok("[fd00::1]:6443".into())
        );
        assert_eq!(server_address("cp1.lab:6443"), Ok("cp1.lab:6443".into()));
        assert!(server_address("cp1.lab").is_err());
        assert!(server_address("cp1.lab:+1").is_err());
    }
}
