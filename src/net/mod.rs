//! The network underneath: socket options, dialing and the one classifier
//! of dial errors, the pausable listener, the TLS verifier, and the HTTP/1.1
//! client. Knows nothing of backends, frontends or the daemon.

pub mod dial;
pub mod http_client;
pub mod pausable;
pub mod socket;
pub mod tls;
