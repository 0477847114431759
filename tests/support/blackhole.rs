//! A listener whose dials time out, without root: `listen(0)` with the
//! accept queue already full, so Linux drops every further SYN.
#![allow(dead_code)]

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// How long a loopback connect may take before the queue counts as full;
/// a SYN-ACK on loopback comes back in microseconds.
const FULL_AFTER: Duration = Duration::from_millis(100);

/// A port on 127.0.0.1 that drops SYNs; keep it alive as long as it is dialed.
pub struct Blackhole {
    /// Where to dial to get a timeout.
    pub addr: SocketAddr,
    _listener: Socket,
    _queued: Vec<TcpStream>,
}

/// Binds 127.0.0.1:0 with backlog 0 and fills its accept queue. Two dials in
/// a row that time out prove SYNs are dropped, not just slow.
pub fn blackhole_listener() -> Blackhole {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&any.into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    Blackhole {
        addr,
        _listener: listener,
        _queued: fill_accept_queue(addr),
    }
}

/// Fills the accept queue of a listener nobody accepts from, so further
/// SYNs to `addr` are dropped; keep the returned connections open. Works
/// for a small backlog (up to a few hundred).
pub fn fill_accept_queue(addr: SocketAddr) -> Vec<TcpStream> {
    let mut queued = Vec::new();
    let mut timeouts = 0;
    for _ in 0..512 {
        match TcpStream::connect_timeout(&addr, FULL_AFTER) {
            Ok(stream) => {
                timeouts = 0;
                queued.push(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                timeouts += 1;
                if timeouts == 2 {
                    return queued;
                }
            }
            Err(e) => panic!("filling the accept queue of {addr}: {e}"),
        }
    }
    panic!("the accept queue of {addr} never filled: this kernel does not drop SYNs");
}
