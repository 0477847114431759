//! Reading lbd's `/metrics`: a strict OpenMetrics parser, so tests both
//! check the format and look values up.

use std::collections::{BTreeMap, HashMap};

/// One OpenMetrics sample: name, labels, value.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A small OpenMetrics text parser: checks the structure (descriptors
/// before samples, sample names belong to their family with the suffixes its
/// type allows, quoted and escaped labels, float values, one `# EOF` at the
/// end) and returns the samples. Panics with the offending line.
pub fn parse_openmetrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut families: HashMap<String, String> = HashMap::new();
    let mut current: Option<(String, String)> = None;
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(lines.last(), Some(&""), "the text must end with a newline");
    let lines = &lines[..lines.len() - 1];
    assert_eq!(lines.last(), Some(&"# EOF"), "the last line must be # EOF");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap(), parts.next().expect(line));
            assert!(valid_name(name), "bad metric name in {line:?}");
            match keyword {
                "TYPE" => {
                    let kind = parts.next().expect(line);
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "stateset",
                            "unknown",
                            "summary",
                            "gaugehistogram"
                        ]
                        .contains(&kind),
                        "{line:?}"
                    );
                    assert!(
                        families.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "family {name} declared twice"
                    );
                    current = Some((name.to_owned(), kind.to_owned()));
                }
                "HELP" => {
                    assert!(
                        !families.contains_key(name)
                            || current.as_ref().is_some_and(|c| c.0 == name),
                        "{line:?}"
                    )
                }
                "UNIT" => {
                    let unit = parts.next().expect(line);
                    assert!(
                        name.ends_with(&format!("_{unit}")),
                        "a family with a unit must end in it: {line:?}"
                    );
                }
                _ => panic!("unknown descriptor {line:?}"),
            }
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (family, kind) = current
            .clone()
            .unwrap_or_else(|| panic!("sample before any TYPE: {line:?}"));
        let (name, labels, value) = split_sample(line);
        let suffix = name
            .strip_prefix(&family)
            .unwrap_or_else(|| panic!("{name} is not of family {family}"));
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" => &[""],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            _ => &[""],
        };
        assert!(
            allowed.contains(&suffix),
            "{name}: suffix {suffix:?} not allowed for a {kind}"
        );
        if suffix == "_bucket" {
            assert!(labels.contains_key("le"), "{line:?}");
        }
        if kind == "counter" || suffix == "_count" || suffix == "_bucket" {
            assert!(value >= 0.0, "{line:?}");
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn split_sample(line: &str) -> (&str, BTreeMap<String, String>, f64) {
    let mut labels = BTreeMap::new();
    let (name, rest) = match line.find('{') {
        Some(open) => {
            let name = &line[..open];
            let mut rest = &line[open + 1..];
            loop {
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = rest
                    .find("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                let key = &rest[..eq];
                assert!(valid_name(key), "bad label name in {line:?}");
                let mut value = String::new();
                let mut chars = rest[eq + 2..].char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) => break eq + 2 + i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            other => panic!("bad escape {other:?} in {line:?}"),
                        },
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label value in {line:?}"),
                    }
                };
                labels.insert(key.to_owned(), value);
                rest = &rest[end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
            (name, rest)
        }
        None => line.split_at(
            line.find(' ')
                .unwrap_or_else(|| panic!("no value in {line:?}")),
        ),
    };
    let value_text = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value {v:?} in {line:?}")),
    };
    assert!(valid_name(name), "bad sample name in {line:?}");
    (name, labels, value)
}

/// The value of the sample `name` with (at least) `labels`; panics if absent.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
        .value
}
