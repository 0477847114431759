//! The open-files limit: raised at start, and checked against what the
//! config asks for.
//!
//! Every proxied connection holds two descriptors, and a service's soft
//! limit is often 1024: without raising it lbd would stop accepting at
//! about 500 connections whatever `max_connections` says.

use std::io;

use tracing::{info, warn};

use crate::config::Config;

/// Descriptors kept aside for listeners, health checks, the admin API, logs.
const RESERVED: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        info!(
            from = limit.rlim_cur,
            to = limit.rlim_max,
            "raised the open-files limit"
        );
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// Warns when the config's connection limits need more descriptors than the
/// process may open: the daemon then caps connections at what the limit
/// carries (see [`crate::proxy::limit::fd_budget`]), so `max_connections` is never
/// reached and clients past the cap wait in the backlog.
pub fn check_fd_limit(config: &Config, soft_limit: u64) {
    let connections: u64 = config
        .frontends
        .iter()
        .map(|f| f.max_connections as u64)
        .sum();
    let needed = connections.saturating_mul(2).saturating_add(RESERVED);
    if needed > soft_limit {
        warn!(
            limit = soft_limit,
            needed,
            "the open-files limit is below 2 × the sum of max_connections: raise LimitNOFILE (systemd) or lower max_connections"
        );
    }
}
