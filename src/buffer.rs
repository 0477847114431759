//! Per-thread pool of copy buffers, so a connection holds a buffer only while
//! bytes are in flight and an idle connection holds none.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Size of one copy buffer: big enough that bulk transfers need few
/// syscalls, small enough that thousands of busy connections stay cheap.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// Buffers kept per thread for reuse; more are freed on return.
const POOL_LIMIT: usize = 256;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A copy buffer, returned to the current thread's pool on drop.
pub struct Buffer(Option<Box<[u8]>>);

impl Buffer {
    /// Takes a buffer from this thread's pool, or allocates one.
    pub fn take() -> Buffer {
        let reused = POOL.try_with(|pool| pool.borrow_mut().pop()).ok().flatten();
        Buffer(Some(
            reused.unwrap_or_else(|| vec![0; BUFFER_SIZE].into_boxed_slice()),
        ))
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            // During thread teardown the pool may be gone: then just free.
            let _ = POOL.try_with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < POOL_LIMIT {
                    pool.push(buf);
                }
            });
        }
    }
}

impl Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}
