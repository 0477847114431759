//! `lbd`: the load balancer daemon. Flags in, `lbd::Daemon` out.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use lbd::cli::{demo, generate};
use lbd::config::{self, AdminListen};
use lbd::daemon::systemd::InheritedListeners;
use lbd::proxy::runtime;
use tracing_subscriber::EnvFilter;

/// A TCP load balancer for the Kubernetes control-plane endpoint.
#[derive(Debug, Parser)]
#[command(version, about, after_long_help = SERVICE_HELP)]
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

    /// Run as the ready file guardian (started by lbd itself).
    #[arg(long = "ready-file-guardian", hide = true, exclusive = true)]
    ready_file_guardian: bool,

    /// Write man pages (`man DIR`) or a completion script (`completion SHELL`) and exit.
    #[arg(long, num_args = 2, value_names = ["KIND", "TARGET"], hide = true)]
    generate: Option<Vec<String>>,
}

/// The long help's (and man page's) account of lbd as a service.
const SERVICE_HELP: &str = "\
Signals: SIGTERM or SIGINT stops accepting and lets live connections finish \
for [global] drain_timeout; SIGHUP reloads the config file; SIGUSR2 \
starts the binary again, hands it the listening sockets, and drains this \
process once the new one serves (an upgrade without a stall).

Under systemd (Type=notify), lbd reports READY=1 once it serves, RELOADING=1 \
and READY=1 around a reload, STOPPING=1, a STATUS= line, and WATCHDOG=1 \
pings at half of WatchdogSec. It serves listening sockets handed over by a \
socket unit (LISTEN_FDS), matched to frontends by FileDescriptorName= (the \
frontend's name) or by address, and binds the rest itself.

Files: /etc/lbd/lbd.toml (the config); lbd.service and lbd.socket.";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.ready_file_guardian {
        return lbd::daemon::ready_file::guardian::run();
    }
    if let Some([kind, target]) = cli.generate.as_deref() {
        let generated = generate::Artifact::parse(kind, target).and_then(|artifact| {
            generate::generate(Cli::command(), &artifact, &mut std::io::stdout())
        });
        return match generated {
            Ok(()) => ExitCode::SUCCESS,
            // A KIND/TARGET clap could not check alone: still a usage error.
            Err(err @ generate::GenerateError::Unknown { .. }) => Cli::command()
                .error(clap::error::ErrorKind::InvalidValue, err)
                .exit(),
            Err(err) => {
                eprintln!("lbd: {err}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(cli.log_level.as_deref());
    for (variable, key) in [
        ("LBD_RUNTIME", "runtime"),
        ("LBD_THREADS", "threads"),
        ("LBD_SPLICE", "splice"),
    ] {
        if std::env::var_os(variable).is_some() {
            tracing::warn!("{variable} is no longer read: set [global] {key} in the config file");
        }
    }
    match std::env::current_exe() {
        Ok(program) => lbd::daemon::ready_file::use_guardian(program),
        Err(err) => {
            tracing::warn!(error = %err, "cannot find lbd's own binary: ready files get no guardian")
        }
    }
    // SAFETY: called once, before the runtime below starts any thread (it
    // unsets LISTEN_* and takes ownership of the fds systemd passed).
    let inherited = match unsafe { InheritedListeners::take_from_env() } {
        Ok(inherited) => inherited,
        Err(err) => {
            eprintln!("lbd: {err}");
            return ExitCode::FAILURE;
        }
    };
    // `[global] runtime`, `threads` and `splice` shape the process, so they
    // are read before it starts; a file that does not load is reported by
    // the daemon's own start below, as usual.
    let process = match (&cli.check_config, cli.demo) {
        (None, false) => config::Config::load(&cli.config)
            .map(|c| c.process)
            .unwrap_or_default(),
        _ => config::Process::default(),
    };
    lbd::proxy::splice::set_enabled(process.splice);
    let runtime = match runtime::Shape::from_config(&process).build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lbd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(cli, inherited))
}

async fn serve(cli: Cli, inherited: InheritedListeners) -> ExitCode {
    if let Some(path) = &cli.check_config {
        return ExitCode::from(lbd::cli::commands::check_config(path, false));
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

    let options = lbd::RunOptions {
        config: path,
        inherited,
        ..lbd::RunOptions::default()
    };
    let ran = lbd::run(options, |daemon| {
        if let Some(demo) = &demo {
            let snapshot = daemon.snapshot();
            let admin = match &snapshot.config.admin.listen {
                AdminListen::Tcp(addr) => addr.to_string(),
                AdminListen::Unix(path) => path.display().to_string(),
            };
            let frontend = daemon.local_addrs("kube-apiserver")[0];
            eprintln!("{}", demo.instructions(frontend, &admin));
        }
    })
    .await;
    if let Some(demo) = demo {
        demo.clean_up();
    }
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lbd: {err}");
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
