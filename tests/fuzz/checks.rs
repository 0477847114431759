//! What every fuzz input must satisfy, shared by the fuzz targets and by
//! `tests/fuzz_regressions.rs`, which replays the inputs that once failed.

use std::path::Path;
use std::time::Duration;

use lbd::config::{Config, ConfigError, format_duration, parse_duration};

/// Widest caret excerpt a problem may carry (120 characters and two `…`).
const MAX_EXCERPT_CHARS: usize = 122;

/// Config parsing and validation: never a panic; an error is located inside
/// the file with a short excerpt; an accepted config is self-consistent.
pub fn config(data: &[u8]) {
    let path = Path::new("fuzz.toml");
    match Config::parse_bytes(path, data) {
        Ok(config) => {
            assert!(!config.frontends.is_empty());
            for frontend in &config.frontends {
                assert!(config.backend(&frontend.backend).is_some());
                assert!(frontend.max_connections >= 1);
            }
            for backend in &config.backends {
                assert!(!backend.servers.is_empty());
            }
            let _ = config.summary();
        }
        Err(ConfigError::Read { .. }) => panic!("parse_bytes never reads"),
        Err(err @ ConfigError::Invalid { .. }) => {
            let ConfigError::Invalid { problems } = &err else {
                unreachable!()
            };
            assert!(!problems.is_empty());
            let lines = data.split(|&b| b == b'\n').count();
            for problem in problems {
                assert!(problem.line <= lines, "line {} of {lines}", problem.line);
                assert!(problem.source_line.chars().count() <= MAX_EXCERPT_CHARS);
                assert!(problem.message.len() < 4096, "{}", problem.message.len());
            }
            let _ = err.to_string();
            let _ = err.summary();
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        duration(text);
    }
}

/// Durations: what parses formats back to text that parses to the same value.
pub fn duration(text: &str) {
    if let Ok(parsed) = parse_duration(text) {
        let shown = format_duration(parsed);
        let again = parse_duration(&shown).expect("a formatted duration parses");
        // format_duration shows whole milliseconds.
        let truncated = Duration::new(parsed.as_secs(), parsed.subsec_millis() * 1_000_000);
        assert_eq!(again, truncated, "{text:?} -> {shown:?}");
    }
}
