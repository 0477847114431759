//! The server name (SNI) of a TLS ClientHello, read from the first bytes a
//! client sent (RFC 8446 §4.1.2, RFC 6066 §3), without terminating TLS.
//!
//! Our own small parser rather than a crate: only one field of one message
//! is wanted, the input is a peeked prefix that may end anywhere (so
//! "incomplete" must be told from "not TLS" byte by byte), and a general
//! TLS parser (`tls-parser`: nom, phf, num_enum, rusticata-macros) would
//! bring a large tree to the daemon for it. Every read is bounds-checked;
//! the fuzz target `client_hello` runs it on arbitrary bytes.

/// The most bytes looked at: a ClientHello fits in one 16 KiB record in
/// practice (post-quantum key shares make it ~1.5 KiB); one spread over
/// more is read across records up to this bound.
pub const MAX_HELLO_BYTES: usize = 16 * 1024 + 5 * 4;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello, with its server name if it sends one (lowercase).
    ClientHello(Option<String>),
    /// Not a TLS ClientHello at all (another protocol, or garbage).
    NotTls,
    /// So far a ClientHello; more bytes are needed to decide.
    Incomplete,
}

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;

/// Reads the start of a stream. Pure: the same bytes give the same answer.
pub fn parse(buf: &[u8]) -> Hello {
    let handshake = match handshake_bytes(buf) {
        Ok(bytes) => bytes,
        Err(hello) => return hello,
    };
    match server_name(&handshake) {
        Some(name) => Hello::ClientHello(name),
        // Malformed inside: a ClientHello we cannot read has no usable name.
        None => Hello::ClientHello(None),
    }
}

/// The ClientHello message (its 4-byte header included), reassembled from
/// as many handshake records as it spans.
fn handshake_bytes(buf: &[u8]) -> Result<Vec<u8>, Hello> {
    let mut message = Vec::new();
    let mut rest = buf;
    loop {
        // The record header: type, legacy version 3.x, length.
        let Some(&kind) = rest.first() else {
            return Err(Hello::Incomplete);
        };
        if kind != HANDSHAKE {
            return Err(if message.is_empty() {
                Hello::NotTls
            } else {
                Hello::ClientHello(None)
            });
        }
        if let Some(&major) = rest.get(1)
            && major != 3
        {
            return Err(Hello::NotTls);
        }
        if rest.len() < 5 {
            return Err(Hello::Incomplete);
        }
        let length = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if length == 0 || length > 16 * 1024 + 2048 {
            return Err(Hello::NotTls);
        }
        let Some(fragment) = rest.get(5..5 + length) else {
            // Whatever of this record has come already tells the type.
            let partial = &rest[5..];
            if message.is_empty() && partial.first().is_some_and(|&t| t != CLIENT_HELLO) {
                return Err(Hello::NotTls);
            }
            return Err(if buf.len() >= MAX_HELLO_BYTES {
                Hello::ClientHello(None)
            } else {
                Hello::Incomplete
            });
        };
        message.extend_from_slice(fragment);
        rest = &rest[5 + length..];
        if message[0] != CLIENT_HELLO {
            return Err(Hello::NotTls);
        }
        if message.len() >= 4 {
            let wanted = 4 + u24(&message[1..4]);
            if message.len() >= wanted {
                message.truncate(wanted);
                return Ok(message);
            }
        }
    }
}

/// The server name of a whole ClientHello: `Some(None)` when it has none,
/// `None` when the message is malformed.
fn server_name(message: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(message.get(4..)?);
    r.take(2 + 32)?; // legacy_version, random
    r.vector_u8()?; // legacy_session_id
    r.vector_u16()?; // cipher_suites
    r.vector_u8()?; // legacy_compression_methods
    if r.0.is_empty() {
        return Some(None); // no extensions at all (SSL 3.0 style)
    }
    let mut extensions = Reader(r.vector_u16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vector_u16()?;
        if kind != SERVER_NAME {
            continue;
        }
        let mut list = Reader(Reader(data).vector_u16()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vector_u16()?;
            if name_type == HOST_NAME {
                return host_name(name).map(Some);
            }
        }
        return Some(None);
    }
    Some(None)
}

/// A host name as sent: ASCII letters, digits, `-`, `_` and dots, at most
/// 255 bytes; lowercased. Anything else is refused (None).
fn host_name(name: &[u8]) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    valid.then(|| String::from_utf8_lossy(name).to_ascii_lowercase())
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// A cursor over a byte slice whose every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vector_u8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vector_u16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// ClientHellos for other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    /// A ClientHello as rustls writes it for `name`.
    pub(crate) fn hello(name: &str) -> Vec<u8> {
        super::tests::rustls_hello(Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, for `name` (None: no SNI).
    pub(super) fn rustls_hello(name: Option<&str>) -> Vec<u8> {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server_name = match name {
            Some(n) => rustls::pki_types::ServerName::try_from(n.to_owned()).unwrap(),
            // An IP address: rustls sends no SNI for it.
            None => rustls::pki_types::ServerName::from(std::net::IpAddr::from([192, 0, 2, 1])),
        };
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
        let mut bytes = Vec::new();
        conn.write_tls(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn reads_the_name_of_a_real_client_hello() {
        let hello = rustls_hello(Some("API.Lab-B.example"));
        assert_eq!(
            parse(&hello),
            Hello::ClientHello(Some("api.lab-b.example".into()))
        );
        assert_eq!(parse(&rustls_hello(None)), Hello::ClientHello(None));
    }

    #[test]
    fn every_prefix_is_incomplete_never_wrong() {
        let hello = rustls_hello(Some("kubernetes"));
        for end in 0..hello.len() {
            assert_eq!(
                parse(&hello[..end]),
                Hello::Incomplete,
                "prefix of {end} bytes"
            );
        }
    }

    #[test]
    fn a_hello_split_over_records_is_reassembled() {
        let hello = rustls_hello(Some("split.example"));
        let message = &hello[5..];
        let mut split = Vec::new();
        for chunk in message.chunks(100) {
            split.extend_from_slice(&[HANDSHAKE, 3, 1]);
            split.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            split.extend_from_slice(chunk);
        }
        assert_eq!(
            parse(&split),
            Hello::ClientHello(Some("split.example".into()))
        );
    }

    #[test]
    fn other_protocols_are_not_tls_at_once() {
        assert_eq!(parse(b"G"), Hello::NotTls);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(parse(b"SSH-2.0-OpenSSH"), Hello::NotTls);
        assert_eq!(parse(&[HANDSHAKE, 2]), Hello::NotTls);
        // A handshake record that is not a ClientHello.
        assert_eq!(parse(&[HANDSHAKE, 3, 3, 0, 4, 2]), Hello::NotTls);
        assert_eq!(parse(&[]), Hello::Incomplete);
    }
}
