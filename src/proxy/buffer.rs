//! Per-thread pools of copy buffers, so a connection holds a buffer only while
//! bytes are in flight and an idle connection holds none.
//!
//! Two sizes: every burst starts with a small buffer (a request, a watch
//! event), and a direction that keeps filling it is moved to a large one, so
//! bulk streams need fewer syscalls per byte (the adaptive sizing istio's
//! ztunnel uses) while short exchanges never touch large buffers.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Size of a small buffer: what one request or event usually fits in.
pub const SMALL: usize = 16 * 1024;

/// Size of a large buffer, for a direction seen to carry a bulk stream
/// when splice is off. Measured on the e2e bulk test: 64 KiB moves 1.4x the
/// bytes of 16 KiB per CPU second; 128 KiB and more fall back (two of them
/// per busy connection no longer stay in the CPU's cache).
pub const LARGE: usize = 64 * 1024;

/// Buffers kept per thread and size for reuse; more are freed on return.
const POOL_LIMIT: [usize; 2] = [256, 32];

thread_local! {
    static POOLS: RefCell<[Vec<Box<[u8]>>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// Which pool a buffer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// [`SMALL`] bytes.
    Small = 0,
    /// [`LARGE`] bytes.
    Large = 1,
}

impl Size {
    /// The buffer length of this size class.
    pub const fn bytes(self) -> usize {
        match self {
            Size::Small => SMALL,
            Size::Large => LARGE,
        }
    }
}

/// A copy buffer, returned to the current thread's pool on drop.
pub struct Buffer {
    data: Option<Box<[u8]>>,
    size: Size,
}

impl Buffer {
    /// Takes a buffer of `size` from this thread's pool, or allocates one.
    pub fn take(size: Size) -> Buffer {
        let reused = POOLS
            .try_with(|pools| pools.borrow_mut()[size as usize].pop())
            .ok()
            .flatten();
        Buffer {
            data: Some(reused.unwrap_or_else(|| vec![0; size.bytes()].into_boxed_slice())),
            size,
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(buf) = self.data.take() {
            let size = self.size as usize;
            // During thread teardown the pool may be gone: then just free.
            let _ = POOLS.try_with(|pools| {
                let pool = &mut pools.borrow_mut()[size];
                if pool.len() < POOL_LIMIT[size] {
                    pool.push(buf);
                }
            });
        }
    }
}

impl Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.data.as_deref().unwrap_or_default()
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.data.as_deref_mut().unwrap_or_default()
    }
}
