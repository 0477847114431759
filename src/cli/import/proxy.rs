//! One `frontend`, `backend` or `listen` section read into drafts of lbd's
//! `[[frontend]]` and `[[backend]]`, before references between them are resolved.

use super::Notes;
use super::addresses::{bind_addresses, server_address};
use super::parse::{Line, Section};
use super::settings::{CheckOption, Outcome, ServerParams, Settings};
use super::sni::Acls;

/// A frontend as read, its backend references not yet checked.
#[derive(Debug)]
pub(super) struct FrontendDraft {
    /// Section name.
    pub name: String,
    /// The header line (for messages).
    pub header: Line,
    /// Listen addresses.
    pub listen: Vec<String>,
    /// The `bind` lines, commented out if the frontend is dropped.
    pub bind_lines: Vec<Line>,
    /// `accept-proxy` on a bind line.
    pub accept_proxy: bool,
    /// The section's settings (after defaults).
    pub settings: Settings,
    /// `use_backend` rules: line, backend, SNI patterns or why not.
    pub rules: Vec<(Line, String, Result<Vec<String>, String>)>,
    /// `acl` lines and `tcp-request content accept` lines that only wait for a
    /// ClientHello: imported when the frontend has routes.
    pub routing_lines: Vec<Line>,
    /// Comment lines for what was not imported.
    pub comments: Vec<String>,
}

/// A backend as read.
#[derive(Debug)]
pub(super) struct BackendDraft {
    /// Section name.
    pub name: String,
    /// The header line.
    pub header: Line,
    /// The section's settings (after defaults).
    pub settings: Settings,
    /// Servers kept: line, name, address, parameters.
    pub servers: Vec<(Line, String, String, ServerParams)>,
    /// Comment lines for what was not imported.
    pub comments: Vec<String>,
}

/// What one proxy section became.
#[derive(Debug, Default)]
pub(super) struct Drafts {
    /// The frontend part (frontend, listen with bind lines).
    pub frontend: Option<FrontendDraft>,
    /// The backend part (backend, listen with servers).
    pub backend: Option<BackendDraft>,
    /// Comments for a section that was not imported at all.
    pub skipped: Vec<String>,
}

/// `# not imported: <line>` and its reason on stderr.
pub(super) fn not_imported(
    comments: &mut Vec<String>,
    notes: &mut Notes,
    line: &Line,
    reason: &str,
) {
    comments.push(format!("not imported: {}", line.text));
    notes.push(line.number, format!("`{}`: {reason}", line.text));
}

/// Reads a `frontend`, `backend` or `listen` section with `base` settings.
pub(super) fn read(section: &Section, base: &Settings, all_notes: &mut Notes) -> Drafts {
    // Kept only if the section is imported: a skipped HTTP section gets one note.
    let mut section_notes = Notes::default();
    let notes = &mut section_notes;
    let kind = section.kind();
    let name = section.name().to_owned();
    let mut settings = base.clone();
    let mut comments = Vec::new();
    let mut acls = Acls::default();
    let mut rules = Vec::new();
    let mut routing_lines = Vec::new();
    let mut binds = Vec::new();
    let mut bind_lines = Vec::new();
    let mut accept_proxy = false;
    let mut servers = Vec::new();
    let mut check_lines = Vec::new();
    let mut dropped_check_lines = Vec::new();
    for line in &section.lines {
        match line.keyword() {
            "bind" if kind != "backend" => match bind(line) {
                Ok(b) => {
                    binds.extend(b.addresses);
                    accept_proxy |= b.accept_proxy;
                    if let Some(backlog) = b.backlog {
                        settings.backlog = Some(backlog);
                    }
                    bind_lines.push(line.clone());
                    if !b.dropped.is_empty() {
                        let dropped = b.dropped.join(" ");
                        comments.push(format!(
                            "partly imported: {} (dropped: {dropped})",
                            line.text
                        ));
                        notes.push(
                            line.number,
                            format!("`{}`: lbd has no equivalent of {dropped}", line.text),
                        );
                    }
                }
                Err(reason) => not_imported(&mut comments, notes, line, &reason),
            },
            "server" if kind != "frontend" => {
                let mut params = settings.default_server.clone();
                let dropped = params.apply(line.words.get(3..).unwrap_or_default());
                let leave_out = if params.disabled {
                    Some(
                        "a disabled server is left out: add it, then `lbctl disable` it".to_owned(),
                    )
                } else if params.backup {
                    Some("lbd has no backup servers: every server takes traffic".to_owned())
                } else if params.weight == Some(0) {
                    Some("weight 0 takes no traffic; lbd's weights start at 1".to_owned())
                } else if params.ssl {
                    Some(
                        "`ssl`: HAProxy encrypts to this server; lbd forwards bytes as they are"
                            .to_owned(),
                    )
                } else {
                    server_address(line.word(2)).err()
                };
                if let Some(reason) = leave_out {
                    not_imported(&mut comments, notes, line, &reason);
                    continue;
                }
                if !dropped.is_empty() {
                    let dropped = dropped.join(" ");
                    comments.push(format!(
                        "partly imported: {} (dropped: {dropped})",
                        line.text
                    ));
                    notes.push(
                        line.number,
                        format!("`{}`: lbd has no equivalent of {dropped}", line.text),
                    );
                }
                let address = server_address(line.word(2)).unwrap_or_default();
                servers.push((line.clone(), line.word(1).to_owned(), address, params));
            }
            "acl" if kind != "backend" => {
                acls.define(&line.words[1..]);
                routing_lines.push(line.clone());
            }
            "use_backend" if kind != "backend" => {
                let target = line.word(1).to_owned();
                let patterns = match line.word(2) {
                    "if" => acls.sni_condition(&line.words[3..]),
                    "unless" => Err("`unless` conditions have no lbd equivalent".into()),
                    _ => Err("a use_backend without a condition: use default_backend".into()),
                };
                let patterns = if target.contains('%') {
                    Err("a backend name built at run time has no lbd equivalent".into())
                } else {
                    patterns
                };
                rules.push((line.clone(), target, patterns));
            }
            "tcp-request"
                if line.word(1) == "content"
                    && line.word(2) == "accept"
                    && line.word(3) == "if"
                    && acls.is_tls_hello(&line.words[4..]) =>
            {
                routing_lines.push(line.clone());
            }
            _ => match settings.apply(line) {
                Outcome::Imported => {
                    if line.keyword() == "option"
                        && matches!(line.word(1), "httpchk" | "ssl-hello-chk" | "tcp-check")
                    {
                        check_lines.push(line.clone());
                    }
                }
                Outcome::NotImported(reason) => {
                    not_imported(&mut comments, notes, line, &reason);
                }
                Outcome::Unknown => not_imported(
                    &mut comments,
                    notes,
                    line,
                    "no lbd equivalent (or not a TCP setting)",
                ),
            },
        }
    }
    // HAProxy uses the last check option: the ones before it do nothing.
    let in_force = settings.check.as_ref().map(CheckOption::line);
    for line in &check_lines {
        if Some(line) != in_force {
            dropped_check_lines.push(line.clone());
        }
    }
    for line in &dropped_check_lines {
        let mut reason = format!(
            "HAProxy uses only the last check option (`{}`)",
            in_force.map_or("", |l| l.text.as_str())
        );
        if line.word(1) == "httpchk" {
            // kubeadm's guide has both; a TLS server such as kube-apiserver
            // can have the GET as well in lbd.
            reason.push_str(
                "; for a TLS server that should also answer this GET, set check = \"https\" and its path",
            );
        }
        not_imported(&mut comments, notes, line, &reason);
    }

    if settings.mode() != "tcp" {
        let mode = settings.mode().to_owned();
        let mut skipped = vec![format!(
            "not imported: {} (line {}): mode {mode}; lbd forwards TCP only",
            section.header.text, section.header.number
        )];
        skipped.extend(
            section
                .lines
                .iter()
                .map(|l| format!("not imported: {}", l.text)),
        );
        all_notes.push(
            section.header.number,
            format!(
                "`{}`: skipped, mode {mode} (lbd forwards TCP only)",
                section.header.text
            ),
        );
        return Drafts {
            skipped,
            ..Drafts::default()
        };
    }

    all_notes.0.append(&mut section_notes.0);
    let mut drafts = Drafts::default();
    let has_frontend = kind == "frontend" || (kind == "listen" && !binds.is_empty());
    let has_backend = kind == "backend" || (kind == "listen" && !servers.is_empty());
    if kind == "listen" && settings.default_backend.is_none() && has_backend {
        settings.default_backend = Some(name.clone());
    }
    if has_backend {
        drafts.backend = Some(BackendDraft {
            name: name.clone(),
            header: section.header.clone(),
            settings: settings.clone(),
            servers,
            comments: if has_frontend {
                Vec::new()
            } else {
                std::mem::take(&mut comments)
            },
        });
    }
    if has_frontend {
        drafts.frontend = Some(FrontendDraft {
            name,
            header: section.header.clone(),
            listen: binds,
            bind_lines,
            accept_proxy,
            settings,
            rules,
            routing_lines,
            comments,
        });
    }
    drafts
}

/// What a `bind` line carries.
struct Bind {
    addresses: Vec<String>,
    accept_proxy: bool,
    backlog: Option<u64>,
    dropped: Vec<String>,
}

/// Bind keywords that take a value.
const BIND_WITH_VALUE: &[&str] = &[
    "alpn",
    "backlog",
    "ca-file",
    "ca-ignore-err",
    "ca-sign-file",
    "ca-sign-pass",
    "ca-verify-file",
    "ciphers",
    "ciphersuites",
    "client-sigalgs",
    "crl-file",
    "crt",
    "crt-ignore-err",
    "crt-list",
    "curves",
    "ecdhe",
    "gid",
    "group",
    "id",
    "interface",
    "label",
    "level",
    "maxconn",
    "mode",
    "mss",
    "name",
    "namespace",
    "nice",
    "npn",
    "process",
    "proto",
    "quic-cc-algo",
    "severity-output",
    "shards",
    "sigalgs",
    "ssl-max-ver",
    "ssl-min-ver",
    "tcp-ut",
    "thread",
    "uid",
    "user",
    "verify",
];

fn bind(line: &Line) -> Result<Bind, String> {
    let addresses = bind_addresses(line.word(1))?;
    let mut out = Bind {
        addresses,
        accept_proxy: false,
        backlog: None,
        dropped: Vec::new(),
    };
    let mut words = line.words.iter().skip(2);
    while let Some(key) = words.next() {
        let value = BIND_WITH_VALUE
            .contains(&key.as_str())
            .then(|| words.next().cloned())
            .flatten();
        match key.as_str() {
            "ssl" | "crt" | "crt-list" => {
                return Err("TLS termination: lbd passes TLS through to the servers".into());
            }
            "accept-proxy" => out.accept_proxy = true,
            "backlog" if value.as_deref().is_some_and(|v| v.parse::<u64>().is_ok()) => {
                out.backlog = value.and_then(|v| v.parse().ok());
            }
            // lbd's sockets are dual-stack as the address says; nothing to carry.
            "v4v6" => {}
            _ => out.dropped.push(match value {
                Some(v) => format!("{key} {v}"),
                None => key.clone(),
            }),
        }
    }
    Ok(out)
}
