//! The timing lint: settings that are valid but break Kubernetes clients.
//! It warns and never rejects, so `check-config`, start and reload all show
//! the same located warnings (file:line:col, like errors) and carry on.
//!
//! The numbers come from kube-apiserver's defaults:
//! - `kubectl logs -f`, `exec`, `port-forward` and watches stay open for
//!   minutes with no byte moving; an idle timeout under 5 minutes cuts them.
//! - `--shutdown-delay-duration` defaults to 0s: a stopping apiserver fails
//!   `/readyz` and closes its listener at once, and the kubelet kills the pod
//!   30s later (the default `terminationGracePeriodSeconds`, which kubeadm's
//!   static pods keep). So no default-configured apiserver can wait longer
//!   than 30s for a load balancer to notice it is going away.

use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::raw::{Located, RawBackend, RawConfig};
use super::{Config, Problem, format_duration};

/// Below this, an idle timeout cuts quiet kubectl sessions and watches.
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The longest a kube-apiserver can keep serving after it is told to stop,
/// with default pod settings: the kubelet's 30s termination grace period.
pub const APISERVER_SHUTDOWN_WINDOW: Duration = Duration::from_secs(30);

/// Every warning about `config`, in file order. `raw` is the same file as
/// written, for the places of the values.
pub(super) fn lint(path: &Path, text: &str, raw: &RawConfig, config: &Config) -> Vec<Problem> {
    let mut warnings = Vec::new();
    let mut warn = |span: Option<std::ops::Range<usize>>, message: String| {
        warnings.push(Problem::at(path, text, span, message));
    };

    for (frontend, raw) in config.frontends.iter().zip(&raw.frontends.0) {
        if frontend.idle_timeout < MIN_IDLE_TIMEOUT {
            warn(
                span_or(&raw.idle_timeout, &raw.name),
                format!(
                    "frontend {:?}: idle_timeout = \"{}\" is shorter than {}: quiet `kubectl logs -f`, `exec` and watch connections will be cut; use \"1h\" for a kube-apiserver frontend",
                    frontend.name,
                    format_duration(frontend.idle_timeout),
                    format_duration(MIN_IDLE_TIMEOUT),
                ),
            );
        }
    }

    for (backend, raw) in config.backends.iter().zip(&raw.backends.0) {
        let health = &backend.health;
        let detection = health.interval * (health.fall + 1);
        if detection > APISERVER_SHUTDOWN_WINDOW {
            warn(
                health_span(raw, |h| &h.interval),
                format!(
                    "backend {:?}: (fall + 1) × interval = ({} + 1) × {} = {}: lbd may take that long to stop sending new connections to an apiserver that is shutting down, longer than the {} a kube-apiserver gets to stop by default (--shutdown-delay-duration is 0s); lower `interval` or `fall`",
                    backend.name,
                    health.fall,
                    format_duration(health.interval),
                    format_duration(detection),
                    format_duration(APISERVER_SHUTDOWN_WINDOW),
                ),
            );
        }
        if backend.connect_timeout > health.interval {
            let span = match &raw.connect_timeout {
                Some(value) => Some(value.span()),
                None => health_span(raw, |h| &h.interval),
            };
            warn(
                span,
                format!(
                    "backend {:?}: connect_timeout = \"{}\" is longer than the health check interval \"{}\": a client may wait longer on a dead server than lbd takes to check it; keep connect_timeout at or below the interval",
                    backend.name,
                    format_duration(backend.connect_timeout),
                    format_duration(health.interval),
                ),
            );
        }
    }
    warnings.sort_by_key(|p| (p.line, p.column));
    warnings
}

fn span_or<T>(value: &Located<T>, fallback: &Spanned<String>) -> Option<std::ops::Range<usize>> {
    Some(value.as_ref().map_or(fallback.span(), Spanned::span))
}

/// The place of a `[backend.health]` key, else of the table, else of the backend's name.
fn health_span(
    raw: &RawBackend,
    key: impl Fn(&super::raw::RawHealth) -> &Located<super::HumanDuration>,
) -> Option<std::ops::Range<usize>> {
    let span = match &raw.health {
        Some(health) => key(&health.get_ref().0)
            .as_ref()
            .map_or(health.span(), Spanned::span),
        None => raw.name.span(),
    };
    Some(span)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn warnings(text: &str) -> Vec<String> {
        Config::parse_with_warnings(Path::new("lbd.toml"), text)
            .unwrap()
            .warnings
            .iter()
            .map(|w| w.one_line())
            .collect()
    }

    const BASE: &str = r#"
[[frontend]]
name = "api"
listen = ["127.0.0.1:6443"]
backend = "cp"

[[backend]]
name = "cp"
servers = [{ address = "10.0.0.1:6443" }]
"#;

    #[test]
    fn defaults_are_quiet() {
        assert_eq!(warnings(BASE), Vec::<String>::new());
    }

    #[test]
    fn short_idle_timeout_is_located() {
        let text = BASE.replace(
            "backend = \"cp\"\n",
            "backend = \"cp\"\nidle_timeout = \"30s\"\n",
        );
        let found = warnings(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "lbd.toml:6:16: frontend \"api\": idle_timeout = \"30s\" is shorter than 5m"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn slow_detection_is_located_at_the_interval() {
        let text = format!("{BASE}[backend.health]\ninterval = \"10s\"\nfall = 3\n");
        let found = warnings(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "lbd.toml:11:12: backend \"cp\": (fall + 1) × interval = (3 + 1) × 10s = 40s"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn connect_timeout_above_interval() {
        let text = BASE.replace(
            "name = \"cp\"\n",
            "name = \"cp\"\nconnect_timeout = \"5s\"\n",
        );
        let found = warnings(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("lbd.toml:9:19: backend \"cp\": connect_timeout = \"5s\" is longer than the health check interval \"2s\""), "{found:?}");
        // Without connect_timeout in the file, the warning points at the interval.
        let text = format!("{BASE}[backend.health]\ninterval = \"1s\"\n");
        let found = warnings(&text);
        assert!(
            found[0].starts_with("lbd.toml:11:12: backend \"cp\": connect_timeout = \"2s\""),
            "{found:?}"
        );
    }
}
