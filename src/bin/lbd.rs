//! `lbd`: the load balancer daemon. Flags in, `lbd::Daemon` out.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lbd::config::{self, AdminListen};
use lbd::{Daemon, demo, signals};
use tracing_subscriber::EnvFilter;

/// A TCP load balancer for the Kubernetes control-plane endpoint.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file to serve.
    #[arg(long, short, default_value = config::DEFAULT_PATH)]
    config: PathBuf,

    /// Validate a config file, print a summary or every error, and exit.
    #[arg(long, value_name = "PATH", conflicts_with = "demo")]
    check_config: Option<PathBuf>,

    /// Run three stand-in apiservers on loopback with lbd in front of them.
    #[arg(long)]
    demo: bool,

    /// Where the demo's frontend listens.
    #[arg(long, default_value = "127.0.0.1:6443", requires = "demo")]
    demo_listen: SocketAddr,

    /// Log level (error, warn, info, debug, trace) or a tracing filter;
    /// defaults to RUST_LOG, else info.
    #[arg(long, env = "LBD_LOG_LEVEL")]
    log_level: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());

    if let Some(path) = &cli.check_config {
        return ExitCode::from(lbd::ctl::commands::check_config(path, false));
    }

    let (path, demo) = if cli.demo {
        match demo::prepare(cli.demo_listen, SocketAddr::from(([127, 0, 0, 1], 8404))).await {
            Ok(demo) => (demo.config_path.clone(), Some(demo)),
            Err(err) => {
                eprintln!("lbd --demo: cannot start the stand-in apiservers: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        (cli.config.clone(), None)
    };

    let signals = match signals::Signals::install() {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("lbd: cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let fd_limit = lbd::rlimit::raise_fd_limit();
    let daemon = match Daemon::start_from_file(&path).await {
        Ok(daemon) => daemon,
        Err(err) => {
            eprintln!("lbd: {err}");
            return ExitCode::FAILURE;
        }
    };
    match fd_limit {
        Ok(limit) => lbd::rlimit::check_fd_limit(&daemon.snapshot().config, limit),
        Err(err) => tracing::warn!(error = %err, "cannot read or raise the open-files limit"),
    }
    if let Some(demo) = &demo {
        let snapshot = daemon.snapshot();
        let admin = match &snapshot.config.admin.listen {
            AdminListen::Tcp(addr) => addr.to_string(),
            AdminListen::Unix(path) => path.display().to_string(),
        };
        let frontend = daemon.local_addrs("kube-apiserver")[0];
        eprintln!("{}", demo.instructions(frontend, &admin));
    }
    let served = signals::serve_with(signals, &daemon).await;
    if let Some(demo) = demo {
        demo.clean_up();
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lbd: cannot install signal handlers: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // Colour only for a person at a terminal: journald and log files get plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_env_filter(filter)
        .init();
}
