//! The config file as written: strict serde structs that keep each value's
//! place in the file so validation can point at it.
//!
//! Optional fields stay `Option` here; defaults are applied by validation, so
//! the file's text and lbd's defaults never blur together. Counts are read
//! as `i64` (TOML's integer) so that `retries = -1` reaches validation and
//! gets its allowed range in the message, not serde's "expected u64".

use serde::Deserialize;
use toml::Spanned;

use super::duration::HumanDuration;
use super::{Balance, CheckKind};

pub(super) type Located<T> = Option<Spanned<T>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub global: RawGlobal,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default, rename = "frontend")]
    pub frontends: Vec<RawFrontend>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<RawBackend>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGlobal {
    pub drain_timeout: Located<HumanDuration>,
    pub resolve_interval: Located<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Located<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFrontend {
    pub name: Spanned<String>,
    pub listen: Spanned<Vec<Spanned<String>>>,
    pub backend: Spanned<String>,
    pub max_connections: Located<i64>,
    pub backlog: Located<i64>,
    pub idle_timeout: Located<HumanDuration>,
    pub fin_timeout: Located<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub name: Spanned<String>,
    pub balance: Option<Balance>,
    pub connect_timeout: Located<HumanDuration>,
    pub retries: Located<i64>,
    pub servers: Spanned<Vec<RawServer>>,
    pub health: Option<Spanned<RawHealth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub name: Located<String>,
    pub address: Spanned<String>,
    pub weight: Located<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub check: Option<CheckKind>,
    pub interval: Located<HumanDuration>,
    pub timeout: Located<HumanDuration>,
    pub rise: Located<i64>,
    pub fall: Located<i64>,
    pub port: Located<i64>,
    pub path: Located<String>,
    pub sni: Located<String>,
    pub ca_file: Located<String>,
    pub cert_file: Located<String>,
    pub key_file: Located<String>,
}
