//! lbd: a TCP load balancer for the Kubernetes control-plane endpoint.
//!
//! Map of the crate (see `DESIGN.md` for the data flow):
//! - [`config`]: TOML schema, defaults and validation with file:line:col errors.

pub mod config;
