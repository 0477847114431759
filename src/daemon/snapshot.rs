//! The running state the connection path and the admin plane read: built
//! by `apply`, swapped in whole (ArcSwap), never locked per read.

use std::sync::Arc;

use crate::backend::pool::{Pool, Server};
use crate::config;
use crate::config::Config;
use crate::daemon::reload::Desired;
use crate::proxy::frontend::{Frontend, RoutePools};

/// The pools and frontends built from one desired state.
#[derive(Debug)]
pub struct Snapshot {
    /// The desired state this snapshot was built from.
    pub desired: Arc<Desired>,
    /// Its config (the same as `desired.config`).
    pub config: Arc<Config>,
    /// One pool per backend, in config order.
    pub pools: Vec<Arc<Pool>>,
    /// Running frontends, in config order.
    pub frontends: Vec<Arc<Frontend>>,
}

impl Snapshot {
    /// The pool of the named backend.
    pub fn pool(&self, backend: &str) -> Option<&Arc<Pool>> {
        find_pool(&self.pools, backend)
    }

    /// The named server of the named backend.
    pub fn server(&self, backend: &str, server: &str) -> Option<&Arc<Server>> {
        self.pool(backend)?.server(server)
    }
}

/// The pool of the named backend among `pools`.
pub fn find_pool<'a>(pools: &'a [Arc<Pool>], backend: &str) -> Option<&'a Arc<Pool>> {
    pools.iter().find(|p| p.spec.name == backend)
}

/// The pools `spec` forwards to, among `pools`: its default backend's and
/// its routes'. Validation guarantees every backend named exists.
pub fn route_pools(pools: &[Arc<Pool>], spec: &config::Frontend) -> RoutePools {
    let pool = |name: &str| {
        Arc::clone(find_pool(pools, name).expect("validation guarantees the backend exists"))
    };
    RoutePools {
        default: pool(&spec.backend),
        routed: spec.routes.iter().map(|r| pool(&r.backend)).collect(),
    }
}
