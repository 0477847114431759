//! Config errors that point at the file, line and column of the mistake.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Why a config file was rejected: every problem found, each with its place.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{path}: cannot read config: {reason}", path = path.display())]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// The file was read but is not a valid lbd config.
    #[error("{}", render_all(problems))]
    Invalid {
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

/// One mistake in a config file, located by line and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the mistake is in.
    pub path: PathBuf,
    /// 1-based line, 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
    /// The offending source line, for the caret display.
    pub source_line: String,
}

impl Problem {
    /// Locates `span` (byte offsets into `source`) as a 1-based line and column.
    pub fn at(path: &Path, source: &str, span: Option<Range<usize>>, message: String) -> Self {
        let Some(span) = span else {
            return Problem {
                path: path.to_owned(),
                line: 0,
                column: 0,
                message,
                source_line: String::new(),
            };
        };
        let start = floor_char_boundary(source, span.start.min(source.len()));
        let before = &source[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = source[line_start..start].chars().count() + 1;
        let source_line = source[line_start..].lines().next().unwrap_or("").to_owned();
        Problem {
            path: path.to_owned(),
            line,
            column,
            message,
            source_line,
        }
    }
}

impl Problem {
    /// `file:line:col: message` on one line, without the source excerpt.
    pub fn one_line(&self) -> String {
        if self.line == 0 {
            format!("{}: {}", self.path.display(), self.message)
        } else {
            format!(
                "{}:{}:{}: {}",
                self.path.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.path.display(), self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )?;
        if !self.source_line.is_empty() {
            let gutter = self.line.to_string().len();
            let caret_pad: String = self
                .source_line
                .chars()
                .take(self.column - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(
                f,
                "\n{:gutter$} |\n{} | {}\n{:gutter$} | {caret_pad}^",
                "", self.line, self.source_line, ""
            )?;
        }
        Ok(())
    }
}

fn render_all(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The first problem's one-line form (`file:line:col: message`), for
    /// places like status JSON and reload responses that want a single line.
    pub fn summary(&self) -> String {
        match self {
            ConfigError::Read { .. } => self.to_string(),
            ConfigError::Invalid { problems } => {
                let first = problems.first().map_or_else(String::new, |p| {
                    if p.line == 0 {
                        format!("{}: {}", p.path.display(), p.message)
                    } else {
                        format!(
                            "{}:{}:{}: {}",
                            p.path.display(),
                            p.line,
                            p.column,
                            p.message
                        )
                    }
                });
                match problems.len() {
                    0 | 1 => first,
                    n => format!("{first} (and {} more)", n - 1),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_line_and_column() {
        let src = "a = 1\nbb = 2\n";
        let p = Problem::at(Path::new("x.toml"), src, Some(9..10), "bad".into());
        assert_eq!((p.line, p.column), (2, 4));
        assert_eq!(p.source_line, "bb = 2");
        assert!(p.to_string().starts_with("x.toml:2:4: bad"));
    }
}
