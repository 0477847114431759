//! Discovery: the backend's servers as the cluster lists them (the
//! EndpointSlices of `default/<service>`, port `https`).
//!
//! This module knows the cluster, not the daemon: [`client`] builds a kube
//! client that reaches the API through the backend's own servers,
//! [`watch`] turns kube's list+watch into full address lists,
//! [`membership`] decides who stays (an address gone from the list leaves
//! only after `remove_after`), and [`saved`] keeps the last list on disk
//! for the next start. The daemon feeds each list to the one diff/apply path.

pub mod client;
pub mod membership;
pub mod saved;
pub mod watch;

pub use client::{Candidates, ClientError, PoolConnector, build_client};
pub use membership::Membership;
pub use saved::{SavedList, SavedListError};
pub use watch::{WatchEvent, run_watch, slice_addresses};
