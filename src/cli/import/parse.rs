//! haproxy.cfg as HAProxy reads it: sections of keyword lines, each split
//! into words with HAProxy's quoting, escapes and `${NAME}` environment
//! expansion, and kept with its line number and original text.

use std::collections::HashMap;

/// One configuration line: its words and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Line {
    /// 1-based line number in the file.
    pub number: usize,
    /// The line as written, without surrounding blanks.
    pub text: String,
    /// The words after quoting, escapes and expansion.
    pub words: Vec<String>,
}

impl Line {
    /// The first word: the keyword.
    pub fn keyword(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }

    /// The word at `index`, or "".
    pub fn word(&self, index: usize) -> &str {
        self.words.get(index).map_or("", String::as_str)
    }
}

/// A section (`global`, `defaults`, `frontend NAME`…) and its lines.
#[derive(Debug, Clone)]
pub(super) struct Section {
    /// The header line.
    pub header: Line,
    /// The lines after the header, up to the next section.
    pub lines: Vec<Line>,
}

impl Section {
    /// `frontend`, `backend`, `listen`, `defaults`, `global`…
    pub fn kind(&self) -> &str {
        self.header.keyword()
    }

    /// The section's name (the word after the kind), or "".
    pub fn name(&self) -> &str {
        self.header.word(1)
    }
}

/// Keywords that start a section in haproxy.cfg.
const SECTION_KEYWORDS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "peers",
    "resolvers",
    "userlist",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "fcgi-app",
    "crt-store",
    "traces",
    "log-forward",
];

/// The parsed file: lines before any section, then the sections in order.
#[derive(Debug, Default)]
pub(super) struct File {
    /// Lines before the first section header (HAProxy rejects them).
    pub stray: Vec<Line>,
    /// Sections in file order.
    pub sections: Vec<Section>,
}

/// Splits `text` into sections; `env` supplies `${NAME}` values. Also
/// returns the names used but not set (HAProxy expands them to nothing).
pub(super) fn parse(text: &str, env: &HashMap<String, String>) -> (File, Vec<(usize, String)>) {
    let mut file = File::default();
    let mut unset = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let words = split_words(raw, env, &mut |name| unset.push((number, name.to_owned())));
        if words.is_empty() {
            continue;
        }
        let line = Line {
            number,
            text: raw.trim().to_owned(),
            words,
        };
        if SECTION_KEYWORDS.contains(&line.keyword()) {
            file.sections.push(Section {
                header: line,
                lines: Vec::new(),
            });
        } else if let Some(section) = file.sections.last_mut() {
            section.lines.push(line);
        } else {
            file.stray.push(line);
        }
    }
    (file, unset)
}

/// HAProxy's word splitting: blanks separate words, `#` starts a comment,
/// `\` escapes the next character, single quotes are literal, double quotes
/// keep blanks and still expand `${NAME}` (as unquoted text does).
fn split_words(
    line: &str,
    env: &HashMap<String, String>,
    unset: &mut impl FnMut(&str),
) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word exists once anything (even "") was written for it.
    let mut started = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (Some('\''), _) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, '#') => break,
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (_, '\\') => {
                started = true;
                match chars.next() {
                    Some('n') => word.push('\n'),
                    Some('r') => word.push('\r'),
                    Some('t') => word.push('\t'),
                    Some(other) => word.push(other),
                    None => {}
                }
            }
            (_, '$') if chars.peek() == Some(&'{') => {
                chars.next();
                let mut name = String::new();
                for n in chars.by_ref() {
                    if n == '}' {
                        break;
                    }
                    name.push(n);
                }
                // `${NAME-default}`: the default when NAME is unset.
                let (name, default) = match name.split_once('-') {
                    Some((name, default)) => (name.to_owned(), Some(default.to_owned())),
                    None => (name, None),
                };
                match (env.get(&name), default) {
                    (Some(value), _) => word.push_str(value),
                    (None, Some(default)) => word.push_str(&default),
                    (None, None) => unset(&name),
                }
                started = true;
            }
            _ => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        let env = HashMap::from([("PORT".to_owned(), "6443".to_owned())]);
        split_words(line, &env, &mut |_| {})
    }

    #[test]
    fn splits_quotes_escapes_comments_and_variables() {
        assert_eq!(words("  bind *:${PORT}  # api"), ["bind", "*:6443"]);
        assert_eq!(
            words(r#"option httpchk "GET /healthz" 'lit ${PORT}' a\ b"#),
            ["option", "httpchk", "GET /healthz", "lit ${PORT}", "a b"]
        );
        assert_eq!(words("x \"${NONE-7}\" \\#y"), ["x", "7", "#y"]);
        assert!(words("   # only a comment").is_empty());
    }

    #[test]
    fn groups_lines_under_sections_with_numbers() {
        let text = "global\n  maxconn 10\n\nfrontend fe\n  bind :80\nbackend be\n";
        let (file, unset) = parse(text, &HashMap::new());
        assert!(unset.is_empty());
        let kinds: Vec<_> = file.sections.iter().map(Section::kind).collect();
        assert_eq!(kinds, ["global", "frontend", "backend"]);
        assert_eq!(file.sections[1].name(), "fe");
        assert_eq!(file.sections[1].lines[0].number, 5);
        assert_eq!(file.sections[1].lines[0].text, "bind :80");
    }

    #[test]
    fn reports_unset_variables() {
        let (_, unset) = parse("frontend f\n bind :${NOPE}\n", &HashMap::new());
        assert_eq!(unset, [(2, "NOPE".to_owned())]);
    }
}
