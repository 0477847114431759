//! The HAProxy settings a `defaults` section passes on to the proxies after
//! it, and the server keywords (`server` and `default-server` lines).

use std::time::Duration;

use super::parse::Line;

/// What a line did: imported, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Carried over (or needs nothing in lbd).
    Imported,
    /// Understood, but lbd has no equivalent: the reason.
    NotImported(String),
    /// Not a keyword this section of settings knows.
    Unknown,
}

/// The health check a proxy's `option` lines ask for; the last one wins, as in HAProxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CheckOption {
    /// `option httpchk [METHOD] [PATH]`.
    Http { path: String, line: Line },
    /// `option ssl-hello-chk`.
    SslHello { line: Line },
    /// `option tcp-check`.
    Tcp { line: Line },
}

impl CheckOption {
    /// The line that set it.
    pub fn line(&self) -> &Line {
        match self {
            CheckOption::Http { line, .. }
            | CheckOption::SslHello { line }
            | CheckOption::Tcp { line } => line,
        }
    }
}

/// Proxy settings a `defaults` section sets for the proxies after it.
#[derive(Debug, Clone, Default)]
pub(super) struct Settings {
    /// `mode`: "tcp" when unset, as in HAProxy.
    pub mode: Option<String>,
    /// `timeout connect`.
    pub connect: Option<Duration>,
    /// `timeout client`.
    pub client: Option<Duration>,
    /// `timeout server`.
    pub server: Option<Duration>,
    /// `timeout client-fin`.
    pub client_fin: Option<Duration>,
    /// `timeout server-fin`.
    pub server_fin: Option<Duration>,
    /// `timeout check`.
    pub check_timeout: Option<Duration>,
    /// `tcp-request inspect-delay`.
    pub inspect_delay: Option<(Duration, Line)>,
    /// `retries`.
    pub retries: Option<u64>,
    /// `balance`, as lbd names it.
    pub balance: Option<&'static str>,
    /// `maxconn`.
    pub maxconn: Option<u64>,
    /// `backlog`.
    pub backlog: Option<u64>,
    /// `default_backend`.
    pub default_backend: Option<String>,
    /// The health check option in force.
    pub check: Option<CheckOption>,
    /// `http-check` lines: only meaningful with `option httpchk`.
    pub http_check: Vec<Line>,
    /// `default-server` parameters.
    pub default_server: ServerParams,
}

impl Settings {
    /// The effective mode.
    pub fn mode(&self) -> &str {
        self.mode.as_deref().unwrap_or("tcp")
    }

    /// Applies one line that `defaults`, `frontend`, `backend` and `listen` share.
    pub fn apply(&mut self, line: &Line) -> Outcome {
        let args = &line.words[1..];
        match line.keyword() {
            "mode" => {
                self.mode = Some(line.word(1).to_owned());
                Outcome::Imported
            }
            "timeout" => self.timeout(line),
            "retries" => number(line.word(1)).map_or_else(bad_value, |n| {
                self.retries = Some(n);
                Outcome::Imported
            }),
            "maxconn" => number(line.word(1)).map_or_else(bad_value, |n| {
                self.maxconn = Some(n);
                Outcome::Imported
            }),
            "backlog" => number(line.word(1)).map_or_else(bad_value, |n| {
                self.backlog = Some(n);
                Outcome::Imported
            }),
            "balance" => match balance(line.word(1)) {
                Ok(name) => {
                    self.balance = Some(name);
                    Outcome::Imported
                }
                Err(reason) => Outcome::NotImported(reason),
            },
            "default_backend" => {
                self.default_backend = Some(line.word(1).to_owned());
                Outcome::Imported
            }
            "default-server" => {
                let dropped = self.default_server.apply(&line.words[1..]);
                partly(dropped)
            }
            "http-check" => {
                self.http_check.push(line.clone());
                Outcome::Imported
            }
            "tcp-request" if line.word(1) == "inspect-delay" => {
                duration(line.word(2)).map_or_else(bad_value, |d| {
                    self.inspect_delay = Some((d, line.clone()));
                    Outcome::Imported
                })
            }
            "option" => self.option(line, args),
            _ => Outcome::Unknown,
        }
    }

    fn timeout(&mut self, line: &Line) -> Outcome {
        let Ok(value) = duration(line.word(2)) else {
            return bad_value(());
        };
        let slot = match line.word(1) {
            "connect" => &mut self.connect,
            "client" => &mut self.client,
            "server" => &mut self.server,
            "client-fin" => &mut self.client_fin,
            "server-fin" => &mut self.server_fin,
            "check" => &mut self.check_timeout,
            "tunnel" => {
                return Outcome::NotImported(
                    "lbd has one idle timeout per frontend (`timeout client`/`server` → `idle_timeout`)"
                        .into(),
                );
            }
            _ => return Outcome::NotImported("an HTTP or queue timeout".into()),
        };
        *slot = Some(value);
        Outcome::Imported
    }

    fn option(&mut self, line: &Line, args: &[String]) -> Outcome {
        match args.first().map(String::as_str) {
            Some("httpchk") => {
                // `option httpchk [<method>] [<uri> [<version>]]`: one word is the URI.
                let path = match &args[1..] {
                    [] => "/".to_owned(),
                    [uri] => uri.clone(),
                    [_, uri, ..] => uri.clone(),
                };
                self.check = Some(CheckOption::Http {
                    path,
                    line: line.clone(),
                });
                Outcome::Imported
            }
            Some("ssl-hello-chk") => {
                self.check = Some(CheckOption::SslHello { line: line.clone() });
                Outcome::Imported
            }
            Some("tcp-check") => {
                self.check = Some(CheckOption::Tcp { line: line.clone() });
                Outcome::Imported
            }
            // lbd's retries always go to another server.
            Some("redispatch") => Outcome::Imported,
            Some("tcplog" | "httplog" | "dontlognull" | "log-health-checks" | "logasap") => {
                Outcome::NotImported(
                    "logging: lbd logs every connection at debug level (`--log-level`)".into(),
                )
            }
            _ => Outcome::Unknown,
        }
    }
}

/// A line that was imported except for some words.
fn partly(dropped: Vec<String>) -> Outcome {
    if dropped.is_empty() {
        Outcome::Imported
    } else {
        Outcome::NotImported(format!("partly: dropped {}", dropped.join(" ")))
    }
}

fn bad_value<T>(_: T) -> Outcome {
    Outcome::NotImported("its value is not one lbd can read".into())
}

/// Parameters of a `server` or `default-server` line that lbd can carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ServerParams {
    /// `check`: health checked.
    pub check: bool,
    /// `check-ssl`: the check speaks TLS.
    pub check_ssl: bool,
    /// `ssl`: HAProxy itself speaks TLS to the server.
    pub ssl: bool,
    /// `inter`.
    pub inter: Option<Duration>,
    /// `fastinter`.
    pub fastinter: Option<Duration>,
    /// `rise`.
    pub rise: Option<u64>,
    /// `fall`.
    pub fall: Option<u64>,
    /// `port`: the check's port.
    pub port: Option<u64>,
    /// `weight`.
    pub weight: Option<u64>,
    /// `check-sni`.
    pub check_sni: Option<String>,
    /// `send-proxy` ("v1") or `send-proxy-v2` ("v2").
    pub send_proxy: Option<&'static str>,
    /// `on-marked-down shutdown-sessions`.
    pub shutdown_on_down: bool,
    /// `backup`.
    pub backup: bool,
    /// `disabled`.
    pub disabled: bool,
}

/// Server keywords that take a value (so the value is not read as a keyword).
const WITH_VALUE: &[&str] = &[
    "addr",
    "agent-addr",
    "agent-inter",
    "agent-port",
    "agent-send",
    "alpn",
    "ca-file",
    "check-alpn",
    "check-proto",
    "check-sni",
    "ciphers",
    "ciphersuites",
    "cookie",
    "crl-file",
    "crt",
    "curves",
    "downinter",
    "error-limit",
    "fall",
    "fastinter",
    "hash-key",
    "id",
    "init-addr",
    "init-state",
    "inter",
    "log-proto",
    "max-reuse",
    "maxconn",
    "maxqueue",
    "minconn",
    "namespace",
    "npn",
    "observe",
    "on-error",
    "on-marked-down",
    "on-marked-up",
    "pool-low-conn",
    "pool-max-conn",
    "pool-purge-delay",
    "port",
    "proto",
    "proxy-v2-options",
    "redir",
    "resolve-net",
    "resolve-opts",
    "resolve-prefer",
    "resolvers",
    "rise",
    "shard",
    "sigalgs",
    "slowstart",
    "sni",
    "socks4",
    "source",
    "ssl-max-ver",
    "ssl-min-ver",
    "tcp-ut",
    "track",
    "usesrc",
    "verify",
    "verifyhost",
    "weight",
    "ws",
];

impl ServerParams {
    /// Applies `key [value]` words; returns the words lbd cannot carry.
    pub fn apply(&mut self, words: &[String]) -> Vec<String> {
        let mut dropped = Vec::new();
        let mut words = words.iter();
        while let Some(key) = words.next() {
            let value = if WITH_VALUE.contains(&key.as_str()) {
                words.next().cloned()
            } else {
                None
            };
            let v = value.as_deref().unwrap_or("");
            let kept = match key.as_str() {
                "check" => set(&mut self.check, true),
                "no-check" => set(&mut self.check, false),
                "check-ssl" => set(&mut self.check_ssl, true),
                "ssl" => set(&mut self.ssl, true),
                "no-ssl" => set(&mut self.ssl, false),
                "backup" => set(&mut self.backup, true),
                "no-backup" => set(&mut self.backup, false),
                "disabled" => set(&mut self.disabled, true),
                "enabled" => set(&mut self.disabled, false),
                "send-proxy" => put(&mut self.send_proxy, Some("v1")),
                "send-proxy-v2" => put(&mut self.send_proxy, Some("v2")),
                "no-send-proxy" | "no-send-proxy-v2" => put(&mut self.send_proxy, None),
                "inter" => duration(v).is_ok_and(|d| put(&mut self.inter, Some(d))),
                "fastinter" => duration(v).is_ok_and(|d| put(&mut self.fastinter, Some(d))),
                "rise" => number(v).is_ok_and(|n| put(&mut self.rise, Some(n))),
                "fall" => number(v).is_ok_and(|n| put(&mut self.fall, Some(n))),
                "port" => number(v).is_ok_and(|n| put(&mut self.port, Some(n))),
                "weight" => number(v).is_ok_and(|n| put(&mut self.weight, Some(n))),
                "check-sni" => put(&mut self.check_sni, Some(v.to_owned())),
                "on-marked-down" if v == "shutdown-sessions" => {
                    set(&mut self.shutdown_on_down, true)
                }
                // lbd does not verify a check's chain unless `ca_file` is set.
                "verify" if v == "none" => true,
                // Passive health (the default) acts on failed dials.
                "observe" if v == "layer4" => true,
                _ => false,
            };
            if !kept {
                dropped.push(match value {
                    Some(value) => format!("{key} {value}"),
                    None => key.clone(),
                });
            }
        }
        dropped
    }
}

fn set(slot: &mut bool, value: bool) -> bool {
    *slot = value;
    true
}

fn put<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
    *slot = value;
    true
}

/// A non-negative whole number.
pub(super) fn number(text: &str) -> Result<u64, ()> {
    text.parse().map_err(|_| ())
}

/// A HAProxy time: a number with an optional unit (us, ms, s, m, h, d);
/// milliseconds when none is given.
pub(super) fn duration(text: &str) -> Result<Duration, ()> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (value, unit) = text.split_at(digits);
    let value: u64 = value.parse().map_err(|_| ())?;
    let micros = match unit {
        "us" => 1,
        "" | "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return Err(()),
    };
    value
        .checked_mul(micros)
        .map(Duration::from_micros)
        .ok_or(())
}

/// lbd's name for a HAProxy balance algorithm.
fn balance(algorithm: &str) -> Result<&'static str, String> {
    Ok(match algorithm {
        "roundrobin" | "static-rr" => "round-robin",
        "leastconn" => "least-connections",
        "source" => "source-hash",
        "first" => "first",
        // HAProxy's `random` draws two by default.
        "random" | "random(2)" => "random-two",
        other => {
            return Err(format!(
                "lbd balances by round-robin, least-connections, random-two, source-hash or first, not {other}"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn haproxy_times_default_to_milliseconds() {
        assert_eq!(duration("2000"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration("10us"), Ok(Duration::from_micros(10)));
        assert!(duration("5x").is_err());
        assert!(duration("").is_err());
    }

    #[test]
    fn server_params_keep_what_lbd_has_and_name_the_rest() {
        let mut p = ServerParams::default();
        let dropped = p.apply(&words(
            "check inter 3s fall 2 rise 4 weight 20 send-proxy-v2 maxconn 250 slowstart 60s verify none",
        ));
        assert_eq!(dropped, ["maxconn 250", "slowstart 60s"]);
        assert!(p.check);
        assert_eq!(p.inter, Some(Duration::from_secs(3)));
        assert_eq!((p.fall, p.rise, p.weight), (Some(2), Some(4), Some(20)));
        assert_eq!(p.send_proxy, Some("v2"));
    }

    #[test]
    fn balance_names() {
        assert_eq!(balance("leastconn"), Ok("least-connections"));
        assert_eq!(balance("random(2)"), Ok("random-two"));
        assert!(balance("uri").is_err());
    }
}
