//! The admin API (DESIGN.md §3.3): a hyper HTTP/1.1 server on a TCP address
//! or a unix socket that reads the current snapshot and drives reloads and
//! per-server admin states.
//!
//! - [`server`]: binding, the accept loop, and the one place a request is authorized.
//! - [`auth`]: the access policy: bearer token, anonymous read-only probes.
//! - [`connections`]: the connection caps, and which idle connection makes room.
//! - [`routes`]: the routes and their handlers.
//! - [`page`]: the status page served at `/`.
//! - [`status`]: the JSON of `/api/v1/status`, shared with `lbctl`.

pub mod auth;
pub mod connections;
pub mod metrics;
pub mod page;
pub mod routes;
pub mod server;
pub mod status;

pub use server::{AdminError, AdminListener, AdminServer, AdminSlot, bind, serve};
