//! The PROXY protocol (HAProxy's spec, versions 1 and 2): the header a
//! proxy sends before a client's bytes so the next hop learns the client's
//! address.
//!
//! Parsing the header itself is the `ppp` crate's; what is here is the
//! framing around it: how many bytes of a stream are the header (so not one
//! byte of the client's own data is consumed), the bounds (a v1 line is at
//! most 107 bytes, a v2 header at most [`MAX_V2_LENGTH`]), and a deadline.
//! Strict: only the configured version is accepted, and anything else
//! closes the connection: it is never forwarded.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::ProxyVersion;

/// The longest v1 header, "\r\n" included (the spec's figure).
pub const MAX_V1_LENGTH: usize = 107;

/// The longest v2 header lbd accepts: the 16 fixed bytes, the addresses (at
/// most 216, for unix sockets) and TLVs. The format allows 64 KiB; real
/// proxies send a few hundred bytes at most, and a bound keeps a client
/// from making lbd buffer more.
pub const MAX_V2_LENGTH: usize = 4096;

/// The first twelve bytes of every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What a PROXY header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// The proxy's client and the address it reached.
    Client {
        /// The real client.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// The proxy speaks for itself (v2 LOCAL, e.g. its health check) or
    /// does not know the client (v1 UNKNOWN, or a non-IP family): the
    /// connection's own addresses stand.
    Local,
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Nothing (or not a whole header) came in time.
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    /// The client closed before the header ended.
    #[error("the client closed the connection before a complete PROXY protocol header")]
    Closed,
    /// The bytes are not a header of the expected version.
    #[error("not a PROXY protocol {expected} header: {why}")]
    Malformed {
        /// The version the frontend accepts.
        expected: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Reading from the client failed.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// Where a header being read stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The first `n` bytes are the whole header.
    Complete(usize),
    /// More bytes are needed; up to this many more belong to the header
    /// for sure (0: unknown yet, peek and look).
    Incomplete(usize),
}

/// How much of `buf`, the start of a stream, is a header of `version`.
/// Pure and bounded: the fuzz target's entry point beside [`parse`].
pub fn frame(buf: &[u8], version: ProxyVersion) -> Result<Frame, HeaderError> {
    let malformed = |why: &str| HeaderError::Malformed {
        expected: version.as_str(),
        why: why.to_owned(),
    };
    match version {
        ProxyVersion::V1 => {
            let prefix = b"PROXY ";
            let n = buf.len().min(prefix.len());
            if buf[..n] != prefix[..n] {
                return Err(malformed("it does not start with \"PROXY \""));
            }
            match buf.windows(2).position(|w| w == b"\r\n") {
                Some(at) if at + 2 <= MAX_V1_LENGTH => Ok(Frame::Complete(at + 2)),
                Some(_) => Err(malformed("the line is longer than 107 bytes")),
                None if buf.len() >= MAX_V1_LENGTH => {
                    Err(malformed("no \"\\r\\n\" within 107 bytes"))
                }
                None => Ok(Frame::Incomplete(0)),
            }
        }
        ProxyVersion::V2 => {
            let n = buf.len().min(V2_SIGNATURE.len());
            if buf[..n] != V2_SIGNATURE[..n] {
                return Err(malformed("it does not start with the v2 signature"));
            }
            if buf.len() < 16 {
                return Ok(Frame::Incomplete(16 - buf.len()));
            }
            let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
            if total > MAX_V2_LENGTH {
                return Err(malformed(&format!(
                    "it announces {total} bytes; lbd accepts at most {MAX_V2_LENGTH}"
                )));
            }
            if buf.len() >= total {
                Ok(Frame::Complete(total))
            } else {
                Ok(Frame::Incomplete(total - buf.len()))
            }
        }
    }
}

/// Parses a whole header (as [`frame`] delimited it) of `version`.
pub fn parse(header: &[u8], version: ProxyVersion) -> Result<Proxied, HeaderError> {
    let malformed = |why: String| HeaderError::Malformed {
        expected: version.as_str(),
        why,
    };
    match version {
        ProxyVersion::V1 => {
            let parsed = v1::Header::try_from(header).map_err(|e| malformed(e.to_string()))?;
            if parsed.header.len() != header.len() {
                return Err(malformed("bytes after the header's end".into()));
            }
            Ok(match parsed.addresses {
                v1::Addresses::Tcp4(a) => Proxied::Client {
                    source: SocketAddr::from((a.source_address, a.source_port)),
                    destination: SocketAddr::from((a.destination_address, a.destination_port)),
                },
                v1::Addresses::Tcp6(a) => Proxied::Client {
                    source: SocketAddr::from((a.source_address, a.source_port)),
                    destination: SocketAddr::from((a.destination_address, a.destination_port)),
                },
                v1::Addresses::Unknown => Proxied::Local,
            })
        }
        ProxyVersion::V2 => {
            let parsed = v2::Header::try_from(header).map_err(|e| malformed(e.to_string()))?;
            if parsed.header.len() != header.len() {
                return Err(malformed("bytes after the header's end".into()));
            }
            if parsed.command == v2::Command::Local {
                return Ok(Proxied::Local);
            }
            if parsed.protocol == v2::Protocol::Datagram {
                return Err(malformed("it announces a datagram (UDP) connection".into()));
            }
            Ok(match parsed.addresses {
                v2::Addresses::IPv4(a) => Proxied::Client {
                    source: SocketAddr::from((a.source_address, a.source_port)),
                    destination: SocketAddr::from((a.destination_address, a.destination_port)),
                },
                v2::Addresses::IPv6(a) => Proxied::Client {
                    source: SocketAddr::from((a.source_address, a.source_port)),
                    destination: SocketAddr::from((a.destination_address, a.destination_port)),
                },
                v2::Addresses::Unix(_) | v2::Addresses::Unspecified => Proxied::Local,
            })
        }
    }
}

/// Reads the header of `version` off `stream`, consuming exactly its
/// bytes, within `timeout`.
pub async fn read(
    stream: &mut TcpStream,
    version: ProxyVersion,
    timeout: Duration,
) -> Result<Proxied, HeaderError> {
    tokio::time::timeout(timeout, read_header(stream, version))
        .await
        .map_err(|_| HeaderError::Timeout(timeout))?
}

async fn read_header(
    stream: &mut TcpStream,
    version: ProxyVersion,
) -> Result<Proxied, HeaderError> {
    let mut header = Vec::with_capacity(MAX_V1_LENGTH.max(232));
    let mut peeked = [0u8; 512];
    loop {
        let take = match frame(&header, version)? {
            Frame::Complete(n) => return parse(&header[..n], version),
            // The header's length is known: read it, no further.
            Frame::Incomplete(sure) if sure > 0 => sure.min(peeked.len()),
            // v1: look for the end of the line in what has come so far.
            Frame::Incomplete(_) => {
                let room = MAX_V1_LENGTH - header.len();
                let n = stream.peek(&mut peeked[..room]).await?;
                if n == 0 {
                    return Err(HeaderError::Closed);
                }
                // A "\r" already taken may pair with a "\n" peeked now.
                let mut line = header.clone();
                line.extend_from_slice(&peeked[..n]);
                let from = header.len().saturating_sub(1);
                match line[from..].windows(2).position(|w| w == b"\r\n") {
                    Some(at) => from + at + 2 - header.len(),
                    None => n,
                }
            }
        };
        let got = stream.read(&mut peeked[..take]).await?;
        if got == 0 {
            return Err(HeaderError::Closed);
        }
        header.extend_from_slice(&peeked[..got]);
    }
}

/// The header of `version` that tells a server about a client at `source`
/// that reached `destination`. Mixed families (an IPv4 client on an IPv6
/// listener) are unmapped first; if they still differ, the header says
/// UNKNOWN (v1) or LOCAL (v2), as the spec asks.
pub fn encode(version: ProxyVersion, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = (unmapped(source), unmapped(destination));
    let same_family = source.is_ipv4() == destination.is_ipv4();
    match version {
        ProxyVersion::V1 if !same_family => b"PROXY UNKNOWN\r\n".to_vec(),
        ProxyVersion::V1 => format!(
            "PROXY {} {} {} {} {}\r\n",
            if source.is_ipv4() { "TCP4" } else { "TCP6" },
            source.ip(),
            destination.ip(),
            source.port(),
            destination.port()
        )
        .into_bytes(),
        ProxyVersion::V2 => {
            let (command, addresses) = if same_family {
                (
                    v2::Command::Proxy,
                    v2::Addresses::from((source, destination)),
                )
            } else {
                (v2::Command::Local, v2::Addresses::Unspecified)
            };
            let built = v2::Builder::with_addresses(
                v2::Version::Two | command,
                v2::Protocol::Stream,
                addresses,
            )
            .build();
            // Building into a Vec of a fixed, small size cannot fail.
            built.unwrap_or_else(|_| {
                let mut local = V2_SIGNATURE.to_vec();
                local.extend_from_slice(&[0x20, 0x00, 0, 0]);
                local
            })
        }
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn encoded_headers_parse_back() {
        for version in ProxyVersion::ALL {
            for (src, dst) in [
                ("192.0.2.7:40000", "198.51.100.1:6443"),
                ("[2001:db8::7]:40000", "[2001:db8::1]:6443"),
                ("[::ffff:192.0.2.7]:1", "198.51.100.1:2"),
            ] {
                let bytes = encode(version, addr(src), addr(dst));
                assert_eq!(
                    frame(&bytes, version).unwrap(),
                    Frame::Complete(bytes.len())
                );
                let parsed = parse(&bytes, version).unwrap();
                assert_eq!(
                    parsed,
                    Proxied::Client {
                        source: unmapped(addr(src)),
                        destination: addr(dst)
                    }
                );
            }
            let mixed = encode(version, addr("192.0.2.7:1"), addr("[2001:db8::1]:2"));
            assert_eq!(parse(&mixed, version).unwrap(), Proxied::Local);
        }
    }

    #[test]
    fn framing_takes_the_header_and_not_a_byte_more() {
        let mut bytes = encode(ProxyVersion::V1, addr("10.0.0.1:5"), addr("10.0.0.2:6"));
        let len = bytes.len();
        bytes.extend_from_slice(b"\x16\x03\x01 client data");
        assert_eq!(
            frame(&bytes, ProxyVersion::V1).unwrap(),
            Frame::Complete(len)
        );
        assert_eq!(
            frame(b"PRO", ProxyVersion::V1).unwrap(),
            Frame::Incomplete(0)
        );
        let v2 = encode(ProxyVersion::V2, addr("10.0.0.1:5"), addr("10.0.0.2:6"));
        assert_eq!(
            frame(&v2[..5], ProxyVersion::V2).unwrap(),
            Frame::Incomplete(11)
        );
        assert_eq!(
            frame(&v2[..16], ProxyVersion::V2).unwrap(),
            Frame::Incomplete(12)
        );
    }

    #[test]
    fn the_wrong_version_or_plain_bytes_are_refused() {
        let v1 = encode(ProxyVersion::V1, addr("10.0.0.1:5"), addr("10.0.0.2:6"));
        let v2 = encode(ProxyVersion::V2, addr("10.0.0.1:5"), addr("10.0.0.2:6"));
        assert!(frame(&v1, ProxyVersion::V2).is_err());
        assert!(frame(&v2, ProxyVersion::V1).is_err());
        assert!(frame(b"\x16\x03\x01\x02\x00", ProxyVersion::V1).is_err());
        assert!(frame(b"GET / HTTP/1.1\r\n", ProxyVersion::V2).is_err());
        assert!(frame(&[b'P'; 200], ProxyVersion::V1).is_err());
        let long = format!("PROXY {}\r\n", "x".repeat(120));
        assert!(frame(long.as_bytes(), ProxyVersion::V1).is_err());
        assert!(
            parse(
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 extra\r\n",
                ProxyVersion::V1
            )
            .is_err()
        );
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", ProxyVersion::V1).is_err());
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(frame(&big, ProxyVersion::V2).is_err());
    }
}
