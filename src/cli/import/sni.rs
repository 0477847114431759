//! `use_backend … if <condition>` rules that test the ClientHello's server
//! name (`req.ssl_sni`), as lbd routes: exact names and `*.suffix`.

use std::collections::HashMap;

/// What a condition term matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Test {
    /// Server names, as lbd route patterns (`name` or `*.suffix`).
    Sni(Vec<String>),
    /// `req.ssl_hello_type 1`: the connection starts with a ClientHello.
    TlsHello,
}

/// The `acl` lines of a frontend, by name (lines with one name are ORed).
#[derive(Debug, Default)]
pub(super) struct Acls {
    by_name: HashMap<String, Vec<Result<Test, String>>>,
}

impl Acls {
    /// Records `acl NAME FETCH [flags] PATTERNS…` (`words` start at NAME).
    pub fn define(&mut self, words: &[String]) {
        if let Some((name, criterion)) = words.split_first() {
            self.by_name
                .entry(name.clone())
                .or_default()
                .push(test(criterion));
        }
    }

    /// The SNI patterns a `use_backend` condition (`words` after `if`) routes,
    /// or why lbd cannot route it.
    pub fn sni_condition(&self, words: &[String]) -> Result<Vec<String>, String> {
        let mut names = Vec::new();
        for term in self.terms(words)? {
            match term {
                Test::Sni(patterns) => names.extend(patterns),
                Test::TlsHello => {
                    return Err("only `req.ssl_sni` conditions become routes".into());
                }
            }
        }
        Ok(names)
    }

    /// Whether a condition only asks for a ClientHello (the `tcp-request
    /// content accept if { req.ssl_hello_type 1 }` of SNI routing configs).
    pub fn is_tls_hello(&self, words: &[String]) -> bool {
        self.terms(words)
            .is_ok_and(|terms| terms.iter().all(|t| *t == Test::TlsHello))
    }

    /// The OR'ed terms of a condition; an AND, a negation or a test lbd
    /// has no equivalent for is an error.
    fn terms(&self, words: &[String]) -> Result<Vec<Test>, String> {
        let mut terms = Vec::new();
        let mut in_group = false;
        let mut rest = words;
        while let Some((first, tail)) = rest.split_first() {
            match first.as_str() {
                "||" | "or" => {
                    in_group = false;
                    rest = tail;
                    continue;
                }
                _ if in_group => {
                    return Err("conditions that AND several tests have no lbd equivalent".into());
                }
                w if w.starts_with('!') => {
                    return Err("negated conditions have no lbd equivalent".into());
                }
                "{" => {
                    let end = tail
                        .iter()
                        .position(|w| w == "}")
                        .ok_or("an anonymous ACL without its closing `}`")?;
                    terms.push(test(&tail[..end])?);
                    rest = &tail[end + 1..];
                }
                name => {
                    let defined = self
                        .by_name
                        .get(name)
                        .ok_or_else(|| format!("ACL {name} is not defined in this frontend"))?;
                    for t in defined {
                        terms.push(t.clone()?);
                    }
                    rest = tail;
                }
            }
            in_group = true;
        }
        if terms.is_empty() {
            return Err("an empty condition".into());
        }
        Ok(terms)
    }
}

/// One test: `FETCH [-i] [-m METHOD] [--] PATTERNS…`.
fn test(words: &[String]) -> Result<Test, String> {
    let (fetch, args) = words.split_first().ok_or("an empty ACL")?;
    let mut method = "str";
    let mut patterns = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-i" | "-n" | "--" => {}
            "-m" => method = args.next().map_or("", String::as_str),
            "-f" | "-M" => return Err("patterns read from a file are not imported".into()),
            pattern => patterns.push(pattern.to_owned()),
        }
    }
    // A converter such as `,lower` changes nothing: lbd compares names case-insensitively.
    let fetch = fetch.split(',').next().unwrap_or("");
    match fetch {
        "req.ssl_sni" | "req_ssl_sni" => sni_patterns(method, &patterns).map(Test::Sni),
        "req.ssl_hello_type" | "req_ssl_hello_type" if patterns == ["1"] => Ok(Test::TlsHello),
        other => Err(format!(
            "lbd routes by the ClientHello's server name only, not by {other}"
        )),
    }
}

/// `-m str` names stay names; `-m end .suffix` becomes `*.suffix`.
fn sni_patterns(method: &str, patterns: &[String]) -> Result<Vec<String>, String> {
    if patterns.is_empty() {
        return Err("a req.ssl_sni test without a name".into());
    }
    let mut out = Vec::new();
    for p in patterns {
        let p = p.to_ascii_lowercase();
        match method {
            "str" => out.push(p),
            "end" if p.starts_with('.') && p.len() > 1 => out.push(format!("*{p}")),
            // `-m end example.com` also matches example.com itself.
            "end" if !p.is_empty() => {
                out.push(p.clone());
                out.push(format!("*.{p}"));
            }
            other => {
                return Err(format!(
                    "`-m {other}` matching has no lbd equivalent: routes are exact names or *.suffix"
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn anonymous_and_named_acls_become_patterns() {
        let mut acls = Acls::default();
        acls.define(&words("is_b req.ssl_sni -i B.example"));
        acls.define(&words("is_b req_ssl_sni -m end .b.example"));
        acls.define(&words("hello req.ssl_hello_type 1"));
        assert_eq!(
            acls.sni_condition(&words("{ req.ssl_sni -i a.example x.example }")),
            Ok(vec!["a.example".into(), "x.example".into()])
        );
        assert_eq!(
            acls.sni_condition(&words("is_b || { req.ssl_sni -m end -i c.example }")),
            Ok(vec![
                "b.example".into(),
                "*.b.example".into(),
                "c.example".into(),
                "*.c.example".into()
            ])
        );
        assert!(acls.is_tls_hello(&words("hello")));
        assert!(acls.is_tls_hello(&words("{ req_ssl_hello_type 1 }")));
    }

    #[test]
    fn conditions_lbd_cannot_route_say_why() {
        let acls = Acls::default();
        for cond in [
            "{ src 10.0.0.0/8 }",
            "!{ req.ssl_sni -i a }",
            "{ req.ssl_sni -i a } { req.ssl_sni -i b }",
            "{ req.ssl_sni -m reg ^a }",
            "missing_acl",
            "{ req.ssl_sni -i a",
        ] {
            assert!(acls.sni_condition(&words(cond)).is_err(), "{cond}");
        }
    }
}
