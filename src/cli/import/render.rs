//! The imported config as lbd TOML text, comments kept beside the section
//! they came from.

use std::fmt::Write;
use std::time::Duration;

use crate::config::format_duration;

/// A value of a key.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    /// A TOML string.
    Str(String),
    /// A whole number.
    Int(u64),
    /// A duration string such as "5s".
    Dur(Duration),
    /// A list of strings.
    List(Vec<String>),
    /// `routes = [ { sni, backend }, … ]`.
    Routes(Vec<(String, String)>),
    /// `servers = [ { name, address, weight }, … ]`.
    Servers(Vec<Server>),
}

/// One server of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Server {
    /// The server's name.
    pub name: String,
    /// HOST:PORT.
    pub address: String,
    /// Written when not 1.
    pub weight: u64,
}

/// A `[global]`, `[[frontend]]` or `[[backend]]` table, or only comments.
#[derive(Debug, Clone, Default)]
pub(super) struct Block {
    /// Comment lines before the table (without `# `).
    pub title: Vec<String>,
    /// `[global]`, `[[frontend]]`, `[[backend]]`; empty for comments only.
    pub header: &'static str,
    /// Keys in order.
    pub keys: Vec<(&'static str, Value)>,
    /// Comment lines after the keys (without `# `).
    pub comments: Vec<String>,
    /// `[backend.health]` keys, when the backend has them.
    pub health: Option<Vec<(&'static str, Value)>>,
}

/// TOML's quoting of a string.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn value(value: &Value) -> String {
    match value {
        Value::Str(s) => quote(s),
        Value::Int(n) => n.to_string(),
        Value::Dur(d) => quote(&format_duration(*d)),
        Value::List(items) => {
            let items: Vec<String> = items.iter().map(|i| quote(i)).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Routes(routes) => {
            let mut out = String::from("[\n");
            for (sni, backend) in routes {
                let _ = writeln!(
                    out,
                    "  {{ sni = {}, backend = {} }},",
                    quote(sni),
                    quote(backend)
                );
            }
            out.push(']');
            out
        }
        Value::Servers(servers) => {
            let mut out = String::from("[\n");
            for s in servers {
                let weight = if s.weight == 1 {
                    String::new()
                } else {
                    format!(", weight = {}", s.weight)
                };
                let _ = writeln!(
                    out,
                    "  {{ name = {}, address = {}{weight} }},",
                    quote(&s.name),
                    quote(&s.address)
                );
            }
            out.push(']');
            out
        }
    }
}

fn comment_lines(out: &mut String, lines: &[String]) {
    for line in lines {
        // A comment is one line: an original line never holds a newline,
        // but a `\n` escape in it could.
        let _ = writeln!(out, "# {}", line.replace(['\n', '\r'], " "));
    }
}

/// The whole file.
pub(super) fn render(preamble: &[String], blocks: &[Block]) -> String {
    let mut out = String::new();
    comment_lines(&mut out, preamble);
    for block in blocks {
        out.push('\n');
        comment_lines(&mut out, &block.title);
        if !block.header.is_empty() {
            let _ = writeln!(out, "{}", block.header);
        }
        for (key, v) in &block.keys {
            let _ = writeln!(out, "{key} = {}", value(v));
        }
        comment_lines(&mut out, &block.comments);
        if let Some(health) = &block.health {
            out.push_str("[backend.health]\n");
            for (key, v) in health {
                let _ = writeln!(out, "{key} = {}", value(v));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_tables_lists_and_comments() {
        let blocks = [Block {
            title: vec!["backend be (line 3)".into()],
            header: "[[backend]]",
            keys: vec![
                ("name", Value::Str("be \"x\"".into())),
                ("retries", Value::Int(2)),
                ("connect_timeout", Value::Dur(Duration::from_millis(1500))),
                (
                    "servers",
                    Value::Servers(vec![Server {
                        name: "a".into(),
                        address: "10.0.0.1:6443".into(),
                        weight: 3,
                    }]),
                ),
            ],
            comments: vec!["not imported: maxqueue 5".into()],
            health: Some(vec![("check", Value::Str("tls".into()))]),
        }];
        let text = render(&["top".into()], &blocks);
        assert_eq!(
            text,
            "# top\n\n# backend be (line 3)\n[[backend]]\nname = 'be \"x\"'\nretries = 2\n\
             connect_timeout = \"1s500ms\"\nservers = [\n  { name = \"a\", address = \"10.0.0.1:6443\", weight = 3 },\n]\n\
             # not imported: maxqueue 5\n[backend.health]\ncheck = \"tls\"\n"
        );
        toml::from_str::<toml::Value>(&text).expect("valid TOML");
    }
}
