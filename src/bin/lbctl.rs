//! `lbctl`: the control tool of lbd.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lbd::config::Config;

/// Control and diagnose lbd.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
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
    /// Dial endpoints (or every server of a config) and explain what is wrong with them.
    Probe(lbd::probe::ProbeArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
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
