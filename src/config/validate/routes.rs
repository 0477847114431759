//! A frontend's TLS passthrough `routes` and its PROXY protocol settings:
//! SNI patterns, the backends they name, and the versions of the header.

use std::collections::HashSet;
use std::time::Duration;

use toml::Spanned;

use super::super::error::quoted;
use super::super::raw::{RawFrontend, Table};
use super::super::{ProxyVersion, SniRoute};
use super::Checker;

/// The default `inspect_timeout`: HAProxy's examples use `tcp-request
/// inspect-delay 5s`; a TLS client sends its ClientHello at once.
pub(super) const DEFAULT_INSPECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Checker<'_> {
    /// The routes of `raw`, checked: valid patterns, no pattern twice, and
    /// each naming a backend of `backends`.
    pub(super) fn routes(&mut self, raw: &RawFrontend, backends: &HashSet<&str>) -> Vec<SniRoute> {
        let Some(routes) = &raw.routes else {
            return Vec::new();
        };
        let mut seen = HashSet::new();
        let mut checked = Vec::new();
        for Table(route) in routes.get_ref() {
            let sni = route.sni.get_ref().to_ascii_lowercase();
            if let Err(why) = check_pattern(&sni) {
                self.error(
                    route.sni.span(),
                    format!(
                        "route `sni` = {} {why}: expected a server name such as \"api.lab-b.example\" or \"*.lab-c.example\"",
                        quoted(route.sni.get_ref())
                    ),
                );
            } else if !seen.insert(sni.clone()) {
                self.error(
                    route.sni.span(),
                    format!(
                        "duplicate route for {} in frontend {}: each server name may be routed once",
                        quoted(route.sni.get_ref()),
                        quoted(raw.name.get_ref())
                    ),
                );
            }
            self.route_backend(&route.backend, raw, backends);
            checked.push(SniRoute {
                sni,
                backend: route.backend.get_ref().clone(),
            });
        }
        checked
    }

    fn route_backend(
        &mut self,
        backend: &Spanned<String>,
        raw: &RawFrontend,
        backends: &HashSet<&str>,
    ) {
        if backends.contains(backend.get_ref().as_str()) {
            return;
        }
        let mut known: Vec<_> = backends.iter().copied().collect();
        known.sort_unstable();
        let known = if known.is_empty() {
            "no [[backend]] is defined".to_owned()
        } else {
            format!("expected one of {}", known.join(", "))
        };
        self.error(
            backend.span(),
            format!(
                "a route of frontend {} names backend {}, which does not exist: {known}",
                quoted(raw.name.get_ref()),
                quoted(backend.get_ref())
            ),
        );
    }

    /// `accept_proxy` / `send_proxy`.
    pub(super) fn proxy_version(
        &mut self,
        value: &super::super::raw::Located<String>,
        key: &str,
    ) -> Option<ProxyVersion> {
        value.as_ref()?;
        Some(self.choice(value, key, &ProxyVersion::ALL, ProxyVersion::as_str))
    }
}

/// Why `sni` (lowercase) cannot be a route's pattern: an exact DNS name or
/// `*.` and one; a `*` anywhere else would look like a glob lbd does not do.
fn check_pattern(sni: &str) -> Result<(), &'static str> {
    let name = sni.strip_prefix("*.").unwrap_or(sni);
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > 253 {
        return Err("is longer than a DNS name may be (253 characters)");
    }
    if name.contains('*') {
        return Err("has a `*` other than a leading `*.`");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("has an empty or over-long label");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("has a character a server name cannot hold");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("has a label that starts or ends with `-`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_pattern;

    #[test]
    fn patterns_are_names_or_one_leading_wildcard() {
        for good in [
            "api.lab-b.example",
            "*.lab-c.example",
            "kubernetes",
            "a_b.example",
        ] {
            assert_eq!(check_pattern(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "*.",
            "*",
            "a.*.example",
            "*example",
            "a..b",
            "-a.example",
            "a b",
            "é.example",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }
}
