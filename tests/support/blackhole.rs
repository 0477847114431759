//! A server whose SYNs go unanswered, without root or firewall rules.
//!
//! A listener with backlog 0 holds one completed connection in its accept
//! queue; once a filler connection sits there (never accepted), Linux drops
//! every further SYN, so a dial to it times out exactly as to a host behind
//! a dropping firewall.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

/// A loopback address that swallows SYNs until dropped.
pub struct Blackhole {
    /// Where dials time out.
    pub addr: SocketAddr,
    _listener: Socket,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    /// Binds 127.0.0.1:0 with backlog 0 and fills its accept queue.
    pub fn new() -> Blackhole {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        // Fill the queue until a dial no longer completes: with backlog 0
        // that takes one connection, but the exact count is the kernel's.
        let mut fillers = Vec::new();
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(stream) => {
                    fillers.push(stream);
                    assert!(fillers.len() < 16, "the accept queue does not fill");
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => panic!("filling the blackhole's accept queue: {e}"),
            }
        }
        Blackhole {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }
}
