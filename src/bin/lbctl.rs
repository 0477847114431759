//! `lbctl`: the control tool of lbd. Arguments in, `lbd::ctl` commands out.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if the daemon is ready to serve (GET /readyz), else print why
    /// and exit 1: keepalived's vrrp_script.
    Ready {
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { path, json } => ExitCode::from(commands::check_config(&path, json)),
        Command::Ready { json } => {
            let client = AdminClient::new(cli.admin, commands::REQUEST_TIMEOUT);
            ExitCode::from(block_on(commands::ready(&client, json)))
        }
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
