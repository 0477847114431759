//! `lbctl`: the control tool of lbd.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use lbd::config::Config;
use lbd::generate;

/// Control and diagnose lbd.
#[derive(Debug, Parser)]
#[command(name = "lbctl", version, about)]
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
    /// Write man pages (`man DIR`) or a completion script (`completion SHELL`).
    #[command(hide = true)]
    Generate {
        /// `man` or `completion`.
        kind: String,
        /// The directory for man pages, or the shell.
        target: String,
    },
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
        Command::Generate { kind, target } => {
            let generated = generate::Artifact::parse(&kind, &target).and_then(|artifact| {
                generate::generate(Cli::command(), &artifact, &mut std::io::stdout())
            });
            match generated {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("lbctl: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
