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
    /// The offending source line for the caret display, cut to a window
    /// around the column when the line is long (marked with `…`).
    pub source_line: String,
    /// 1-based column of the caret within `source_line`.
    pub source_column: usize,
}

/// Widest excerpt of a source line shown under a problem, in characters: a
/// minified or generated file can hold megabytes on one line, and each
/// problem keeps (and prints) only this much of it.
const EXCERPT_CHARS: usize = 120;

impl Problem {
    /// Locates `span` (byte offsets into `source`) as a 1-based line and column.
    pub fn at(path: &Path, source: &str, span: Option<Range<usize>>, message: String) -> Self {
        LineIndex::new(source).problem(path, span, message)
    }

    /// A problem about the whole file rather than one place in it.
    pub fn whole_file(path: &Path, message: String) -> Self {
        Problem {
            path: path.to_owned(),
            line: 0,
            column: 0,
            message,
            source_line: String::new(),
            source_column: 0,
        }
    }
}

/// Where each line of a source starts, so that locating many problems in one
/// big file costs a binary search each instead of a scan from the top.
pub(super) struct LineIndex<'a> {
    source: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    /// Indexes `source`'s line starts.
    pub(super) fn new(source: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { source, starts }
    }

    /// A problem at `span` (byte offsets), or about the whole file without one.
    pub(super) fn problem(
        &self,
        path: &Path,
        span: Option<Range<usize>>,
        message: String,
    ) -> Problem {
        let Some(span) = span else {
            return Problem::whole_file(path, message);
        };
        let source = self.source;
        let start = floor_char_boundary(source, span.start.min(source.len()));
        let line_index = self.starts.partition_point(|&s| s <= start) - 1;
        let line_start = self.starts[line_index];
        let line_end = source[line_start..]
            .find(['\n', '\r'])
            .map_or(source.len(), |i| line_start + i);
        let line_text = &source[line_start..line_end];
        let column = source[line_start..start].chars().count() + 1;
        let (source_line, source_column) = excerpt(line_text, column);
        Problem {
            path: path.to_owned(),
            line: line_index + 1,
            column,
            message,
            source_line,
            source_column,
        }
    }
}

/// At most [`EXCERPT_CHARS`] of `line` around `column`, and the column
/// within the excerpt.
fn excerpt(line: &str, column: usize) -> (String, usize) {
    let total = line.chars().count();
    if total <= EXCERPT_CHARS {
        return (line.to_owned(), column);
    }
    let skip = column
        .saturating_sub(EXCERPT_CHARS / 2)
        .min(total - EXCERPT_CHARS);
    let mut out = String::new();
    if skip > 0 {
        out.push('…');
    }
    out.extend(line.chars().skip(skip).take(EXCERPT_CHARS));
    if skip + EXCERPT_CHARS < total {
        out.push('…');
    }
    (out, column - skip + usize::from(skip > 0))
}

/// A value from the file quoted for a message, cut short when long: a
/// message names the value, it need not repeat a megabyte of it.
pub(super) fn quoted(value: &str) -> String {
    const LIMIT: usize = 64;
    if value.chars().count() <= LIMIT {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(LIMIT).collect();
    format!("{head:?}… ({} bytes)", value.len())
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
                .take(self.source_column.saturating_sub(1))
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

    #[test]
    fn a_long_line_is_shown_as_a_window_around_the_column() {
        let long = format!("name = \"{}\" # end", "x".repeat(100_000));
        let src = format!("a = 1\n{long}\n");
        let offset = src.find("# end").unwrap();
        let p = Problem::at(
            Path::new("x.toml"),
            &src,
            Some(offset..offset + 1),
            "bad".into(),
        );
        assert_eq!((p.line, p.column), (2, long.find('#').unwrap() + 1));
        assert!(
            p.source_line.chars().count() <= EXCERPT_CHARS + 2,
            "{}",
            p.source_line
        );
        assert!(p.source_line.starts_with('…') && p.source_line.contains("# end"));
        let shown = p.to_string();
        let caret_line = shown.lines().last().unwrap();
        let source_line = shown.lines().nth(2).unwrap();
        let caret_at = caret_line.chars().count() - 1;
        assert_eq!(source_line.chars().nth(caret_at), Some('#'), "{shown}");
    }

    #[test]
    fn the_caret_line_is_the_problem_line_even_with_crlf() {
        let src = "a = 1\r\nb = 2\r\n";
        let p = Problem::at(Path::new("x.toml"), src, Some(11..12), "bad".into());
        assert_eq!((p.line, p.column, p.source_line.as_str()), (2, 5, "b = 2"));
    }

    #[test]
    fn long_values_are_quoted_short() {
        assert_eq!(quoted("ab"), "\"ab\"");
        let q = quoted(&"y".repeat(10_000));
        assert!(q.len() < 100 && q.ends_with("(10000 bytes)"), "{q}");
    }
}
