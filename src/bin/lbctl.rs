//! `lbctl`: the control tool of lbd. Arguments in, `lbd::cli` commands out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use lbd::cli::commands::{self, AdminAction, DrainWait};
use lbd::cli::generate;
use lbd::cli::{AdminAddr, AdminClient};

/// Control and diagnose lbd.
#[derive(Debug, Parser)]
#[command(name = "lbctl", version, about)]
struct Cli {
    /// The daemon's admin API: HOST:PORT or unix:/PATH.
    #[arg(
        long,
        global = true,
        env = "LBD_ADMIN",
        default_value = "127.0.0.1:8404",
        value_name = "ADDR"
    )]
    admin: AdminAddr,

    /// A file holding the admin API's bearer token (the daemon's
    /// `[admin] token_file`), sent with every request.
    #[arg(long, global = true, env = "LBD_ADMIN_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config file without touching the running daemon.
    CheckConfig {
        /// The config file.
        path: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show frontends, servers, their states and counters.
    Status {
        /// Print lbd's status JSON as is.
        #[arg(long)]
        json: bool,
    },
    /// Stop new connections to a server; live ones go on.
    Drain {
        /// BACKEND/SERVER, as `lbctl status` lists them.
        #[arg(value_parser = backend_server)]
        target: String,
        /// Wait until the server has no connection left, reporting the count.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (e.g. "5m"); exit 1, connections stay.
        #[arg(long, requires = "wait", value_parser = lbd::config::parse_duration, value_name = "DUR")]
        deadline: Option<Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let a drained or disabled server take traffic again.
    Enable {
        /// BACKEND/SERVER, as `lbctl status` lists them.
        #[arg(value_parser = backend_server)]
        target: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Maintenance: no traffic and no health checks for a server.
    Disable {
        /// BACKEND/SERVER, as `lbctl status` lists them.
        #[arg(value_parser = backend_server)]
        target: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move long-lived connections off the servers holding more than their
    /// share, a few at a time over a window, so they reconnect to the others.
    Rebalance {
        /// The backend, as `lbctl status` lists it.
        backend: String,
        /// Spread the closes over this long (default: the backend's
        /// `rebalance`, else 1m).
        #[arg(long, value_parser = lbd::config::parse_duration, value_name = "DUR")]
        window: Option<Duration>,
        /// Print lbd's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reload the daemon's config file; on error print it with its location.
    Reload {
        /// Print lbd's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if the daemon is ready to serve (GET /readyz), else print why
    /// and exit 1: keepalived's vrrp_script.
    Ready {
        /// Only this frontend must be able to serve (keepalived: the
        /// apiserver's frontend), not every frontend.
        #[arg(long, value_name = "NAME")]
        frontend: Option<String>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Dial endpoints (or every server of a config) and explain what is wrong with them.
    ///
    /// When one of lbd's own frontends refuses (lbd stops accepting while no
    /// server is up), lbd's admin API (--admin, or the config's [admin]) is
    /// asked which servers are down and why: for at most 1s, and only on
    /// this host unless --admin or LBD_ADMIN names it.
    Probe(lbd::cli::probe::ProbeArgs),
    /// Walk `kubeadm join`'s token discovery through an endpoint, step by
    /// step: replace `kubeadm join` with `lbctl join-check` in a join command.
    ///
    /// One line per step, with its result, meaning and fix: dial, tls,
    /// cluster-info (the anonymous GET), token (its jws-kubeconfig-ID),
    /// signature (HS256 with the secret), ca-pin, serving-cert (against
    /// cluster-info's CA, the endpoint's host in its SANs), server
    /// (cluster-info's server:), certificate-key. kubeadm join's other
    /// flags are accepted with a note. Exit 0 only if kubeadm's discovery
    /// would succeed, 1 if a step fails, 2 if the flags are not kubeadm's.
    JoinCheck(lbd::cli::join_check::JoinCheckArgs),
    /// Print an lbd config made from another load balancer's config.
    #[command(subcommand)]
    Import(ImportSource),
    /// Write man pages (`man DIR`) or a completion script (`completion SHELL`).
    #[command(hide = true)]
    Generate {
        /// `man` or `completion`.
        kind: String,
        /// The directory for man pages, or the shell.
        target: String,
    },
}

/// The configs `lbctl import` reads.
#[derive(Debug, Subcommand)]
enum ImportSource {
    /// Print the lbd config equivalent to the TCP part of a haproxy.cfg on
    /// stdout, with a `# not imported:` comment for every line that does not
    /// carry over and a summary on stderr. `${NAME}` is expanded from the
    /// environment, as HAProxy does in quoted words and addresses. Exit 0
    /// only if lbd would start on the result, 1 if it would not.
    Haproxy {
        /// The haproxy.cfg.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    // Named by the operator (flag or LBD_ADMIN), not the default: `probe`
    // then asks it even when it is not on this host.
    let admin_explicit = matches!(
        matches.value_source("admin"),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    );
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let token = match cli.token_file.as_deref().map(lbd::cli::read_token_file) {
        None => None,
        Some(Ok(token)) => Some(token),
        Some(Err(err)) => {
            eprintln!("lbctl: {err}");
            return ExitCode::from(2);
        }
    };
    let client =
        || AdminClient::new(cli.admin.clone(), commands::REQUEST_TIMEOUT).with_token(token.clone());
    let code = match cli.command {
        Command::CheckConfig { path, json } => commands::check_config(&path, json),
        Command::Status { json } => block_on(commands::status(&client(), json)),
        Command::Ready { frontend, json } => {
            block_on(commands::ready(&client(), frontend.as_deref(), json))
        }
        Command::Rebalance {
            backend,
            window,
            json,
        } => block_on(commands::rebalance(&client(), &backend, window, json)),
        Command::Reload { json } => block_on(commands::reload(&client(), json)),
        Command::Drain {
            target,
            wait,
            deadline,
            json,
        } => {
            let wait = wait.then_some(DrainWait {
                deadline,
                poll: Duration::from_millis(500),
            });
            block_on(commands::set_admin(
                &client(),
                &target,
                AdminAction::Drain,
                wait,
                json,
            ))
        }
        Command::Enable { target, json } => block_on(commands::set_admin(
            &client(),
            &target,
            AdminAction::Enable,
            None,
            json,
        )),
        Command::Disable { target, json } => block_on(commands::set_admin(
            &client(),
            &target,
            AdminAction::Disable,
            None,
            json,
        )),
        Command::Probe(args) => match lbd::cli::probe::run(
            args,
            Some(lbd::cli::probe::AdminHint {
                addr: cli.admin.clone(),
                token: token.clone(),
                explicit: admin_explicit,
            }),
        ) {
            Ok(lbd::cli::probe::Verdict::AllOpen) => 0,
            Ok(lbd::cli::probe::Verdict::SomeFailed) => 1,
            Err(err) => {
                eprintln!("lbctl probe: {err}");
                2
            }
        },
        Command::JoinCheck(args) => match lbd::cli::join_check::run(args) {
            Ok(lbd::cli::join_check::Verdict::Passes) => 0,
            Ok(lbd::cli::join_check::Verdict::Fails) => 1,
            Err(err) => {
                eprintln!("lbctl join-check: {err}");
                2
            }
        },
        Command::Import(ImportSource::Haproxy { path }) => import_haproxy(&path),
        Command::Generate { kind, target } => {
            let generated = generate::Artifact::parse(&kind, &target).and_then(|artifact| {
                generate::generate(Cli::command(), &artifact, &mut std::io::stdout())
            });
            match generated {
                Ok(()) => 0,
                // A KIND/TARGET clap could not check alone: still a usage error.
                Err(err @ generate::GenerateError::Unknown { .. }) => Cli::command()
                    .error(clap::error::ErrorKind::InvalidValue, err)
                    .exit(),
                Err(err) => {
                    eprintln!("lbctl: {err}");
                    1
                }
            }
        }
    };
    ExitCode::from(code)
}

/// `lbctl import haproxy PATH`: the config on stdout, the summary on stderr.
fn import_haproxy(path: &std::path::Path) -> u8 {
    let env = std::env::vars().collect();
    match lbd::cli::import::haproxy(path, &env) {
        Ok(imported) => {
            print!("{}", imported.text);
            let _ = imported.write_summary(path, &mut std::io::stderr());
            if imported.usable() { 0 } else { 1 }
        }
        Err(err) => {
            eprintln!("lbctl import haproxy: {err}");
            1
        }
    }
}

/// Checks a BACKEND/SERVER argument while parsing, so a malformed one is a
/// usage error (exit 2) like any other.
fn backend_server(target: &str) -> Result<String, String> {
    commands::parse_target(target).map(|_| target.to_owned())
}

/// Runs one command on a small single-threaded runtime.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime")
        .block_on(future)
}
