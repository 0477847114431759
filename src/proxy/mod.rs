//! The data path: frontends and their accept loops, connection limits, one
//! connection's pick/dial/retry/relay (after its PROXY header and SNI
//! route, when configured), the copy and splice relays, their
//! buffers, and the per-core runtimes they run on.

pub mod buffer;
pub mod forward;
pub mod frontend;
pub mod limit;
pub mod listener;
pub mod relay;
pub mod runtime;
pub mod sni;
pub mod splice;
