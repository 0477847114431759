//! A client that keeps one connection busy through lbd, checking every byte.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A client that keeps a connection busy: it sends a numbered 1 KiB chunk,
/// checks the echo byte for byte, and repeats until stopped or broken. Used
/// to watch live connections through faults, reloads and shutdowns.
pub struct EchoClient {
    /// The backend's greeting (its name), read first.
    pub server: String,
    rounds: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl EchoClient {
    /// Connects to `addr` (a frontend in front of greeting echo backends)
    /// and starts echoing with `pause` between rounds.
    pub fn start(addr: SocketAddr, pause: Duration) -> std::io::Result<EchoClient> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut server = String::new();
        reader.read_line(&mut server)?;
        if server.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let rounds = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, s) = (Arc::clone(&rounds), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut sent = vec![0u8; 1024];
            let mut got = vec![0u8; 1024];
            let mut round: u64 = 0;
            while !s.load(Ordering::Relaxed) {
                for (i, b) in sent.iter_mut().enumerate() {
                    *b = (round.wrapping_mul(31) as usize + i) as u8;
                }
                stream.write_all(&sent)?;
                reader.read_exact(&mut got)?;
                if got != sent {
                    return Err(std::io::Error::other(format!(
                        "round {round}: echoed bytes differ"
                    )));
                }
                round += 1;
                r.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(pause);
            }
            Ok(())
        });
        Ok(EchoClient {
            server: server.trim_end().to_owned(),
            rounds,
            stop,
            thread: Some(thread),
        })
    }

    /// Rounds echoed correctly so far.
    pub fn rounds(&self) -> usize {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Whether the echo loop has ended (by error; stopping is [`EchoClient::finish`]).
    pub fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the loop and returns how it went: `Ok` if every round echoed
    /// correctly until stopped, or the error that broke it.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for EchoClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
