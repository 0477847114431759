//! `lbctl`: the control tool of lbd. Arguments in, `lbd::ctl` commands out.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lbd::config::Config;
use lbd::ctl::{AdminAddr, AdminClient, commands};

/// Control and diagnose lbd.
#[derive(Debug, Parser)]
#[command(version, about)]
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

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config file without touching the running daemon.
    CheckConfig {
        /// The config file.
        path: PathBuf,
    },
    /// Exit 0 if the daemon is ready to serve (GET /readyz), else print why
    /// and exit 1: keepalived's vrrp_script.
    Ready {
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Dial endpoints (or every server of a config) and explain what is wrong with them.
    Probe(lbd::probe::ProbeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { path } => match Config::load(&path) {
            Ok(config) => {
                println!("{}: OK: {}", path.display(), config.summary());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::FAILURE
            }
        },
        Command::Ready { json } => {
            let client = AdminClient::new(cli.admin, commands::REQUEST_TIMEOUT);
            ExitCode::from(block_on(commands::ready(&client, json)))
        }
        Command::Probe(args) => match lbd::probe::run(args) {
            Ok(lbd::probe::Verdict::AllOpen) => ExitCode::SUCCESS,
            Ok(lbd::probe::Verdict::SomeFailed) => ExitCode::FAILURE,
            Err(err) => {
                eprintln!("lbctl probe: {err}");
                ExitCode::from(2)
            }
        },
    }
}

/// Runs one command on a small single-threaded runtime.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime")
        .block_on(future)
}
