//! The network underneath: socket options, dialing and the one classifier
//! of dial errors, the pausable listener, the TLS verifier, the HTTP/1.1
//! client, the PROXY protocol header and the ClientHello's server name.
//! Knows nothing of backends, frontends or the daemon.

pub mod client_hello;
pub mod dial;
pub mod http_client;
pub mod pausable;
pub mod proxy_protocol;
pub mod socket;
pub mod tls;
