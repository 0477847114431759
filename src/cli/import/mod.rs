//! `lbctl import haproxy PATH`: an lbd config from the TCP part of a
//! haproxy.cfg (DESIGN.md §3.2). [`parse`] reads the file as HAProxy does,
//! [`convert`] maps what lbd has, and every line that does not carry over
//! becomes a `# not imported:` comment and a note with its line number. The
//! result is checked with lbd's own validation: it is usable only if lbd
//! would start on it.

mod addresses;
mod convert;
mod health;
mod parse;
mod proxy;
mod render;
mod settings;
mod sni;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, Problem};

/// Largest haproxy.cfg read: real ones are kilobytes.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Why there is nothing to import.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// A line of the source file and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// 1-based line number in the haproxy.cfg.
    pub line: usize,
    /// What was not carried over, or changed, and why.
    pub message: String,
}

/// The notes of one import, in the order they were made.
#[derive(Debug, Default)]
pub(crate) struct Notes(Vec<Note>);

impl Notes {
    pub(crate) fn push(&mut self, line: usize, message: String) {
        self.0.push(Note { line, message });
    }
}

/// The result of an import.
#[derive(Debug)]
pub struct Imported {
    /// The lbd config, with `# not imported:` comments.
    pub text: String,
    /// What did not carry over, sorted by line.
    pub notes: Vec<Note>,
    /// Frontends, backends and servers imported.
    pub counts: (usize, usize, usize),
    /// Lines left out (each a `# not imported:` comment).
    pub not_imported: usize,
    /// lbd's verdict on `text`: the config, or why lbd would refuse it.
    pub validation: Result<Config, ConfigError>,
    /// lbd's warnings about a valid `text`.
    pub warnings: Vec<Problem>,
}

impl Imported {
    /// Whether lbd would start on the result.
    pub fn usable(&self) -> bool {
        self.validation.is_ok()
    }

    /// The summary for stderr: counts, each note, and lbd's verdict.
    pub fn write_summary(&self, source: &Path, out: &mut impl Write) -> std::io::Result<()> {
        let (frontends, backends, servers) = self.counts;
        writeln!(
            out,
            "imported {frontends} frontend{}, {backends} backend{}, {servers} server{} from {}; {} line{} not imported (`# not imported:` in the output)",
            plural(frontends),
            plural(backends),
            plural(servers),
            source.display(),
            self.not_imported,
            plural(self.not_imported),
        )?;
        for note in &self.notes {
            writeln!(
                out,
                "  {}:{}: {}",
                source.display(),
                note.line,
                note.message
            )?;
        }
        match &self.validation {
            Ok(_) => {
                for warning in &self.warnings {
                    writeln!(out, "  lbd warns: {warning}")?;
                }
                writeln!(
                    out,
                    "the result passes lbd's validation: save it and run `lbd --check-config FILE`"
                )
            }
            Err(err) => writeln!(out, "the result is not usable as is; lbd says:\n{err}"),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Imports the haproxy.cfg at `path`; `${NAME}` takes its value from `env`.
/// HAProxy expands it in double-quoted words and addresses; the import
/// expands it in every word outside single quotes, a superset.
pub fn haproxy(path: &Path, env: &HashMap<String, String>) -> Result<Imported, ImportError> {
    use std::io::Read;
    let read_error = |reason: String| ImportError::Read {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| read_error(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(read_error(format!(
            "it is larger than {} MiB; is this a haproxy.cfg?",
            MAX_FILE_BYTES >> 20
        )));
    }
    Ok(haproxy_text(path, &String::from_utf8_lossy(&bytes), env))
}

/// Imports haproxy.cfg text; `source` names it in the output.
pub fn haproxy_text(source: &Path, text: &str, env: &HashMap<String, String>) -> Imported {
    let mut notes = Notes::default();
    let (file, unset) = parse::parse(text, env);
    for (line, name) in unset {
        notes.push(
            line,
            format!("${{{name}}} is not set in the environment: HAProxy reads it as empty"),
        );
    }
    let converted = convert::convert(&file, &mut notes);
    let preamble = vec![
        format!(
            "lbd config imported by `lbctl import haproxy` from {}",
            source.display()
        ),
        "Lines that did not carry over are kept below as `# not imported:` comments.".into(),
    ];
    let text = render::render(&preamble, &converted.blocks);
    let not_imported = text
        .lines()
        .filter(|l| l.starts_with("# not imported:"))
        .count();
    let label = Path::new("imported.toml");
    let (validation, warnings) = match Config::parse_with_warnings(label, &text) {
        Ok(checked) => (Ok(checked.config), checked.warnings),
        Err(err) => (Err(err), Vec::new()),
    };
    let mut notes = notes.0;
    notes.sort_by_key(|n| n.line);
    Imported {
        text,
        notes,
        counts: (converted.frontends, converted.backends, converted.servers),
        not_imported,
        validation,
        warnings,
    }
}

#[cfg(test)]
mod tests;
