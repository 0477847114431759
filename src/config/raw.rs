//! The config file as written: strict serde structs that keep each value's
//! place in the file so validation can point at it.
//!
//! Optional fields stay `Option` here; defaults are applied by validation, so
//! the file's text and lbd's defaults never blur together. The wrappers
//! below exist for the messages: a wrong type is named as the user wrote it
//! (a table, `[[double brackets]]`, a whole number), never as a Rust type.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use super::duration::HumanDuration;

pub(super) type Located<T> = Option<Spanned<T>>;

/// A whole number as TOML writes it. Kept signed and wide so `retries = -1` reaches
/// validation (which names the allowed range) as written; the type error for `"100"`
/// or `1.5` says what to write instead of naming a Rust type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Count(pub i128);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        impl Visitor<'_> for CountVisitor {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a whole number written without quotes, such as 3")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                Ok(Count(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(v.into()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Count, E> {
                Ok(Count(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Count, E> {
                Ok(Count(i128::try_from(v).unwrap_or(i128::MAX)))
            }
        }
        deserializer.deserialize_i64(CountVisitor)
    }
}

/// A `[section]`: only a table is accepted. serde's derived structs also
/// take a sequence, so `[[global]]` used to be read field by field and
/// blamed on `drain_timeout`; here it is "expected a table".
#[derive(Debug, Default)]
pub(super) struct Table<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TableVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for TableVisitor<T> {
            type Value = Table<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table: [name] on its own line, or { key = value } inline")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Table<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Table)
            }
        }
        deserializer.deserialize_map(TableVisitor(PhantomData))
    }
}

/// A `[[section]]`: an array of tables, so `[frontend]` (one table) says
/// which brackets were meant.
#[derive(Debug)]
pub(super) struct Tables<T>(pub Vec<T>);

impl<T> Default for Tables<T> {
    fn default() -> Self {
        Tables(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Tables<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TablesVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for TablesVisitor<T> {
            type Value = Tables<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of tables, written [[name]] with double brackets")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tables<T>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Tables(items))
            }
        }
        deserializer.deserialize_seq(TablesVisitor(PhantomData))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub global: Table<RawGlobal>,
    #[serde(default)]
    pub admin: Table<RawAdmin>,
    #[serde(default, rename = "frontend")]
    pub frontends: Tables<RawFrontend>,
    #[serde(default, rename = "backend")]
    pub backends: Tables<RawBackend>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGlobal {
    pub drain_timeout: Located<HumanDuration>,
    pub resolve_interval: Located<HumanDuration>,
    pub max_connections: Located<Count>,
    pub runtime: Located<String>,
    pub threads: Located<Count>,
    pub splice: Option<bool>,
    pub state_dir: Located<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Located<String>,
    pub token_file: Located<String>,
    pub anonymous_read_only: Located<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFrontend {
    pub name: Spanned<String>,
    pub listen: Spanned<Vec<Spanned<String>>>,
    pub backend: Spanned<String>,
    pub max_connections: Located<Count>,
    pub max_connections_per_source: Located<Count>,
    pub backlog: Located<Count>,
    pub idle_timeout: Located<HumanDuration>,
    pub fin_timeout: Located<HumanDuration>,
    pub routes: Option<Spanned<Vec<Table<RawRoute>>>>,
    pub inspect_timeout: Located<HumanDuration>,
    pub accept_proxy: Located<String>,
    pub ready_file: Located<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub sni: Spanned<String>,
    pub backend: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub name: Spanned<String>,
    pub balance: Located<String>,
    pub connect_timeout: Located<HumanDuration>,
    pub retries: Located<Count>,
    pub on_no_server: Located<String>,
    pub send_proxy: Located<String>,
    pub rebalance: Located<HumanDuration>,
    pub servers: Spanned<Vec<Table<RawServer>>>,
    pub health: Option<Spanned<Table<RawHealth>>>,
    pub discovery: Option<Spanned<Table<RawDiscovery>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    pub kubeconfig: Located<String>,
    pub service: Located<String>,
    pub remove_after: Located<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub name: Located<String>,
    pub address: Spanned<String>,
    pub weight: Located<Count>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub check: Located<String>,
    pub interval: Located<HumanDuration>,
    pub fast_interval: Located<HumanDuration>,
    pub timeout: Located<HumanDuration>,
    pub rise: Located<Count>,
    pub fall: Located<Count>,
    pub port: Located<Count>,
    pub path: Located<String>,
    pub sni: Located<String>,
    pub ca_file: Located<String>,
    pub cert_file: Located<String>,
    pub key_file: Located<String>,
    pub passive: Option<bool>,
    pub close_on_down: Located<HumanDuration>,
}
