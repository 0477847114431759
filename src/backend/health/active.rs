//! The configured active check of one server, and what the checks of one
//! backend share: the TLS client, built once per `[backend.health]` (from
//! the file contents the config holds, off the task map's lock) rather than
//! once per server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tracing::warn;

use super::https::HttpsProbe;
use super::tls::{TlsClient, TlsProbe};
use super::{Alive, Check, CheckError, tcp};
use crate::backend::pool::Pool;
use crate::config::{self, CheckKind};

/// What the checks of one backend share; built by [`CheckSetup::new`].
#[derive(Debug, Clone)]
pub struct CheckSetup {
    spec: config::Health,
    /// The TLS client of `tls`/`https` checks, or why it cannot be built.
    tls: Option<Result<TlsClient, String>>,
}

impl CheckSetup {
    /// Builds the TLS client from the file contents `spec` holds, if any:
    /// once per backend, not once per server.
    pub fn new(spec: &config::Health) -> CheckSetup {
        let tls = match spec.check {
            CheckKind::Tcp => None,
            CheckKind::Tls => Some(TlsClient::new(spec, &[])),
            CheckKind::Https => Some(TlsClient::new(spec, HttpsProbe::ALPN)),
        };
        CheckSetup {
            spec: spec.clone(),
            tls: tls.map(|built| built.map_err(|e| e.to_string())),
        }
    }
}

/// Makes the active checks of one sync, building each backend's
/// [`CheckSetup`] once, when its first server needs a check.
#[derive(Debug, Default)]
pub struct CheckFactory {
    /// Keyed by the pool's `Arc` address.
    setups: HashMap<usize, CheckSetup>,
}

impl CheckFactory {
    /// The check of a server of `pool` at `addr` whose configured host is `host`.
    pub fn check_for(&mut self, pool: &Arc<Pool>, addr: SocketAddr, host: &str) -> ActiveCheck {
        let setup = self
            .setups
            .entry(Arc::as_ptr(pool) as usize)
            .or_insert_with(|| CheckSetup::new(&pool.spec.health));
        ActiveCheck::new(setup, addr, host)
    }

    /// How many backends' setups were built.
    pub fn setups_built(&self) -> usize {
        self.setups.len()
    }
}

/// The configured check of one server: where it goes and how.
#[derive(Debug)]
pub struct ActiveCheck {
    addr: SocketAddr,
    host: String,
    spec: config::Health,
    probe: Probe,
}

#[derive(Debug)]
enum Probe {
    Tcp,
    Tls(TlsProbe),
    Https(HttpsProbe),
    /// The TLS settings cannot be used (validation makes this rare: it
    /// parses the same bytes); every check is a `check_error` until a
    /// reload brings usable ones.
    Unusable(String),
}

impl ActiveCheck {
    /// The check `setup` describes for a server at `addr` whose configured
    /// host is `host` (the TLS name when `sni` is not set).
    pub fn new(setup: &CheckSetup, addr: SocketAddr, host: &str) -> ActiveCheck {
        let spec = &setup.spec;
        let addr = SocketAddr::new(addr.ip(), spec.port.unwrap_or(addr.port()));
        let mut check = ActiveCheck {
            addr,
            host: host.to_owned(),
            spec: spec.clone(),
            probe: Probe::Tcp,
        };
        check.probe = check.probe_from(setup);
        if let Probe::Unusable(why) = &check.probe {
            warn!(address = %check.addr, error = %why, "health check cannot be set up; the server's health is left as it is until a reload fixes the settings");
        }
        check
    }

    fn probe_from(&self, setup: &CheckSetup) -> Probe {
        let client = match &setup.tls {
            None => return Probe::Tcp,
            Some(Ok(client)) => client,
            Some(Err(why)) => return Probe::Unusable(why.clone()),
        };
        let built = match self.spec.check {
            CheckKind::Tcp => return Probe::Tcp,
            CheckKind::Tls => TlsProbe::new(client, &self.spec, &self.host).map(Probe::Tls),
            CheckKind::Https => HttpsProbe::new(client, &self.spec, &self.host).map(Probe::Https),
        };
        built.unwrap_or_else(|e| Probe::Unusable(e.to_string()))
    }
}

impl Check for ActiveCheck {
    fn kind(&self) -> &'static str {
        self.spec.check.as_str()
    }

    async fn run(&mut self) -> Result<Alive, CheckError> {
        let timeout = self.spec.timeout;
        match &self.probe {
            Probe::Tcp => tcp::check(self.addr, timeout).await,
            Probe::Tls(probe) => probe.check(self.addr, timeout).await,
            Probe::Https(probe) => probe.check(self.addr, timeout).await,
            Probe::Unusable(why) => Err(CheckError::Setup(why.clone())),
        }
    }
}
