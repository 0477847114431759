//! Servers that misbehave in one specific way, for the fault suite. Each
//! runs on 127.0.0.1:0 in its own threads and stops (closing everything it
//! holds) when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a [`FaultyServer`] treats each connection it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Accepts and then neither reads nor writes: a hung process.
    Silent,
    /// Accepts and at once closes with RST.
    ResetOnAccept,
    /// Reads one byte a second and never writes.
    SlowReader,
    /// Writes without pause and never reads.
    Firehose,
}

/// A server that accepts connections and then misbehaves.
pub struct FaultyServer {
    /// Where it listens.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl FaultyServer {
    /// Starts a server on 127.0.0.1 that treats every connection as `how` says.
    pub fn spawn(how: Misbehaviour) -> FaultyServer {
        FaultyServer::spawn_at(how, "127.0.0.1:0".parse().unwrap())
    }

    /// Like [`FaultyServer::spawn`], on `addr` (any 127.0.0.0/8 address).
    pub fn spawn_at(how: Misbehaviour, addr: SocketAddr) -> FaultyServer {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (a, s, h) = (Arc::clone(&accepted), Arc::clone(&stop), Arc::clone(&held));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                a.fetch_add(1, Ordering::Relaxed);
                match how {
                    Misbehaviour::Silent => h.lock().unwrap().push(stream),
                    Misbehaviour::ResetOnAccept => {
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    }
                    Misbehaviour::SlowReader => {
                        h.lock().unwrap().push(stream.try_clone().unwrap());
                        let s = Arc::clone(&s);
                        std::thread::spawn(move || slow_read(stream, &s));
                    }
                    Misbehaviour::Firehose => {
                        h.lock().unwrap().push(stream.try_clone().unwrap());
                        std::thread::spawn(move || firehose(stream));
                    }
                }
            }
        });
        FaultyServer {
            addr,
            accepted,
            stop,
            held,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for stream in self.held.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn slow_read(mut stream: TcpStream, stop: &AtomicBool) {
    let mut byte = [0u8; 1];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => return,
            Ok(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

fn firehose(mut stream: TcpStream) {
    let chunk = [b'x'; 16 * 1024];
    while stream.write_all(&chunk).is_ok() {}
}
