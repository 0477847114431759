//! Zero-copy forwarding on Linux: splice(2) from one socket into a pipe and
//! from the pipe into the other socket, so bulk bytes never visit user space.
//!
//! Pipes come from a per-thread pool and are held only while a bulk burst
//! flows: an idle connection holds its two sockets and nothing else. A pipe
//! goes back to the pool only when empty; one that still holds bytes (an
//! aborted transfer) is closed instead, so no stale data is ever reused.
//! When a pipe cannot be had at full size (out of fds, or the per-user pipe
//! quota shrank it), the relay falls back to its copy loop.
//!
//! `[global] splice = false` turns the zero-copy path off; the tests use it
//! to cover the copy loop alone.

use std::cell::RefCell;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};

/// Bytes a pipe holds: one splice moves up to this much. Larger pipes mean
/// fewer syscalls per byte; the memory is only used while bytes are in flight.
pub const PIPE_SIZE: usize = 256 * 1024;

/// Empty pipes kept per thread for reuse; more are closed on return.
const POOL_LIMIT: usize = 8;

/// Pipes that may exist at once in the process, pooled or carrying a burst.
/// Their descriptors are kept back from the connection budget, so bulk
/// streams (each holding a pipe while its reader is slow) can never take
/// the descriptors that connections and health checks need; a burst that
/// finds them all taken is copied instead.
const MAX_PIPES: usize = 64;

/// Pipes open now, pooled or in use.
static PIPES: AtomicUsize = AtomicUsize::new(0);

/// Descriptors the pipes may hold at most, for the descriptor budget to
/// keep back from connections.
pub fn reserved_fds() -> u64 {
    (2 * MAX_PIPES) as u64
}

thread_local! {
    static POOL: RefCell<Vec<PipeFds>> = const { RefCell::new(Vec::new()) };
}

/// Whether the zero-copy path may be used; `[global] splice`, set at start.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether the zero-copy path may be used (on unless `[global] splice = false`).
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// Allows or forbids the zero-copy path for connections from now on.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Relaxed);
}

/// The two ends of an empty pipe, as pooled.
#[derive(Debug)]
struct PipeFds {
    read: OwnedFd,
    write: OwnedFd,
}

/// A kernel pipe used as the buffer between two sockets.
#[derive(Debug)]
pub struct Pipe {
    /// Taken out only by `drop`, which pools or closes them.
    fds: ManuallyDrop<PipeFds>,
    /// Bytes spliced in and not yet spliced out.
    pending: usize,
}

impl Pipe {
    /// An empty pipe from this thread's pool, or a new one of [`PIPE_SIZE`].
    /// Fails when no full-size pipe can be made; the caller then copies.
    pub fn take() -> io::Result<Pipe> {
        let fds = match POOL.try_with(|p| p.borrow_mut().pop()).ok().flatten() {
            Some(fds) => fds,
            None => PipeFds::create()?,
        };
        Ok(Pipe {
            fds: ManuallyDrop::new(fds),
            pending: 0,
        })
    }
}

impl PipeFds {
    fn create() -> io::Result<PipeFds> {
        if PIPES.fetch_add(1, Relaxed) >= MAX_PIPES {
            PIPES.fetch_sub(1, Relaxed);
            return Err(io::Error::other("every pipe lbd may open is in use"));
        }
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            let err = io::Error::last_os_error();
            PIPES.fetch_sub(1, Relaxed);
            return Err(err);
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and ours alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // From here on, dropping the pair (on any return) uncounts it.
        let fds = PipeFds { read, write };
        let write = &fds.write;
        // SAFETY: F_SETPIPE_SZ on a pipe we own.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as i32) };
        if size < 0 || (size as usize) < PIPE_SIZE {
            // Over the per-user pipe quota the kernel hands out tiny pipes:
            // copying is faster than splicing through one of those.
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "pipe quota exhausted: cannot size a pipe for splice",
            ));
        }
        Ok(fds)
    }
}

impl Drop for PipeFds {
    fn drop(&mut self) {
        PIPES.fetch_sub(1, Relaxed);
    }
}

impl Pipe {
    /// Bytes waiting in the pipe.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Moves up to a pipe's worth of bytes from socket `from` into the pipe.
    /// `Ok(0)` is end of stream; `WouldBlock` means nothing to read.
    pub fn fill_from(&mut self, from: RawFd) -> io::Result<usize> {
        let room = PIPE_SIZE - self.pending;
        let n = splice(from, self.fds.write.as_raw_fd(), room)?;
        self.pending += n;
        Ok(n)
    }

    /// Moves bytes from the pipe into socket `to`; `WouldBlock` when `to` is full.
    pub fn drain_to(&mut self, to: RawFd) -> io::Result<usize> {
        let n = splice(self.fds.read.as_raw_fd(), to, self.pending)?;
        self.pending -= n;
        Ok(n)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: `fds` is taken exactly once, here, and never used after.
        let fds = unsafe { ManuallyDrop::take(&mut self.fds) };
        if self.pending != 0 {
            return; // holds bytes of a dead transfer: `fds` closes here
        }
        // During thread teardown the pool may be gone: then the fds just close.
        let _ = POOL.try_with(move |pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL_LIMIT {
                pool.push(fds);
            }
        });
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors and null offsets (both ends are a socket or a pipe).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Whether a splice error means "this pair cannot be spliced" rather than a
/// broken connection: the relay then copies instead.
pub fn is_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_than_max_pipes_are_open_at_once_and_a_returned_one_is_reused() {
        // Other tests may hold pipes meanwhile: so many fewer can be taken.
        let held: Vec<Pipe> = std::iter::from_fn(|| Pipe::take().ok())
            .take(MAX_PIPES + 1)
            .collect();
        assert!(held.len() <= MAX_PIPES, "{} pipes open", held.len());
        drop(held);
        assert!(Pipe::take().is_ok(), "the cap frees up as pipes close");
    }
}
