//! `lbctl probe`: `nc -v` that explains what is wrong with the control-plane endpoint.
//!
//! `target` turns HOST:PORT arguments or an lbd config into targets. Each
//! round resolves every target and runs one `attempt` per resolved address,
//! all in parallel: a dial through [`crate::net::dial`] (the daemon's classifier),
//! then a hold that catches accept-first proxies, or a TLS handshake (`tls`,
//! `cert`, with [`crate::net::tls`]'s verifier) and a GET (`http`). `explain`
//! holds every sentence the operator reads; `render` prints aligned lines
//! or JSON Lines and the ping-like summary.

mod attempt;
pub(crate) mod cert;
pub(crate) mod explain;
mod http;
mod own_frontend;
mod render;
pub(crate) mod target;
pub(crate) mod tls;

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, parse_duration};
use attempt::Attempt;
pub use own_frontend::AdminHint;
use own_frontend::OwnFrontends;
use render::Renderer;
use target::Target;

/// The flags of `lbctl probe` (DESIGN.md §3.2); lbctl embeds them as its subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Endpoints to probe: IPv4:PORT, [IPv6]:PORT or NAME:PORT (every address of a name is probed).
    #[arg(value_name = "HOST:PORT", required_unless_present = "config")]
    pub targets: Vec<String>,

    /// Probe every server of every backend, and every frontend address, of this lbd config.
    #[arg(long, value_name = "PATH", conflicts_with = "targets")]
    pub config: Option<PathBuf>,

    /// How long each step (resolve, connect, TLS handshake, HTTP answer) may take.
    #[arg(long, value_name = "DUR", default_value = "3s", value_parser = parse_step_timeout)]
    pub timeout: Duration,

    /// After a plain TCP connect, watch this long for the peer closing without a byte
    /// (an accept-first proxy with no backend; one still retrying its backends
    /// closes later, so raise it, e.g. 5s); 0s skips the watch.
    #[arg(long, value_name = "DUR", default_value = "500ms", value_parser = parse_duration)]
    pub hold: Duration,

    /// Attempts per address; more than one prints a min/avg/max summary like ping.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,

    /// Time between the starts of two rounds of attempts.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Do a TLS handshake and report the certificate (implied by --sni, --ca, --cert, --http-path).
    #[arg(long)]
    pub tls: bool,

    /// TLS server name to send and to look for in the certificate's SANs (default: the host given).
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,

    /// CA bundle (PEM) that must have signed the server's certificate; without it the chain is only reported.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Client certificate (PEM) to present, e.g. for a /readyz that refuses anonymous requests.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,

    /// GET this path over TLS (implies --tls), e.g. "/readyz?verbose".
    #[arg(long, value_name = "PATH")]
    pub http_path: Option<String>,

    /// Print one JSON object per attempt (JSON Lines) instead of aligned text.
    #[arg(long)]
    pub json: bool,
}

/// `--timeout`: a duration above zero (0s would fail every dial before it starts).
fn parse_step_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text).map_err(|e| e.to_string())?;
    if timeout.is_zero() {
        return Err(
            "a timeout of 0 would fail every step before it starts; give how long each step \
             may take, e.g. --timeout 3s (the default) or --timeout 500ms"
                .into(),
        );
    }
    Ok(timeout)
}

/// How a whole probe run went, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every attempt was open and passed the checks asked for (exit 0).
    AllOpen,
    /// At least one attempt failed (exit 1).
    SomeFailed,
}

/// Why a probe could not run at all (as opposed to an endpoint failing it).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A HOST:PORT argument could not be understood.
    #[error("cannot probe {arg:?}: {reason}")]
    Target {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--sni` is not a name a TLS client can send.
    #[error(
        "--sni {0:?} is not a DNS name or an IP address; give the name to look for in the \
         certificate's SANs, e.g. --sni kubernetes or --sni k8s-api.example.com"
    )]
    Sni(String),
    /// `--http-path` is not an absolute path.
    #[error("--http-path {0:?} must start with '/', e.g. /readyz?verbose")]
    HttpPath(String),
    /// The config given with `--config` is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A CA, certificate or key file could not be used.
    #[error("cannot use {path}: {reason}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// What went wrong, and what to pass instead.
        reason: String,
    },
    /// The config names nothing to probe.
    #[error("{0} has no server or frontend address to probe")]
    Empty(PathBuf),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(io::Error),
    /// Standard output could not be written.
    #[error("cannot write the output: {0}")]
    Output(io::Error),
}

/// Runs `lbctl probe` to completion, printing to stdout; Ctrl-C ends the
/// rounds early and still prints the summary. `admin` is where lbctl was
/// told lbd's admin API is: asked why when one of lbd's frontends refuses.
pub fn run(args: ProbeArgs, admin: Option<AdminHint>) -> Result<Verdict, ProbeError> {
    let config = args.config.as_deref().map(Config::load).transpose()?;
    let targets = target::plan(&args, config.as_ref())?;
    let own = OwnFrontends::new(admin, config.as_ref(), args.timeout);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProbeError::Runtime)?;
    let stdout = io::stdout();
    let mut renderer = Renderer::new(
        stdout.lock(),
        args.json,
        render::colour_wanted(),
        args.count > 1,
        &targets,
    );
    let verdict = runtime.block_on(async {
        let cancel = CancellationToken::new();
        let on_interrupt = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_interrupt.cancel();
            }
        });
        rounds(&targets, &args, &own, &cancel, &mut renderer).await
    });
    // A resolver thread stuck past --timeout must not hold the exit.
    runtime.shutdown_background();
    match verdict {
        Ok(verdict) => Ok(verdict),
        // `lbctl probe ... | head` closing the pipe is not an error worth a message.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Verdict::SomeFailed),
        Err(e) => Err(ProbeError::Output(e)),
    }
}

/// Runs `--count` rounds `--interval` apart and prints each as it completes.
async fn rounds<W: Write>(
    targets: &[Arc<Target>],
    args: &ProbeArgs,
    own: &OwnFrontends,
    cancel: &CancellationToken,
    renderer: &mut Renderer<W>,
) -> io::Result<Verdict> {
    let mut all_open = true;
    for seq in 1..=args.count {
        let started = Instant::now();
        let attempts = tokio::select! {
            attempts = async {
                let mut attempts = round(targets, seq).await;
                own.explain_refusals(&mut attempts).await;
                attempts
            } => attempts,
            () = cancel.cancelled() => break,
        };
        all_open &= attempts.iter().all(Attempt::passed);
        renderer.attempts(&attempts)?;
        if seq < args.count {
            tokio::select! {
                () = tokio::time::sleep_until(started + args.interval) => {}
                () = cancel.cancelled() => break,
            }
        }
    }
    renderer.finish()?;
    Ok(if all_open && renderer.seen_any() {
        Verdict::AllOpen
    } else {
        Verdict::SomeFailed
    })
}

/// One attempt at every address of every target, in parallel; the result
/// keeps the targets' order and, within one, the resolver's order.
async fn round(targets: &[Arc<Target>], seq: u32) -> Vec<Attempt> {
    let tasks: Vec<_> = targets
        .iter()
        .map(|target| tokio::spawn(attempt::probe_target(Arc::clone(target), seq)))
        .collect();
    let mut attempts = Vec::new();
    for task in tasks {
        match task.await {
            Ok(found) => attempts.extend(found),
            // A probe task panics only on a bug: surface it, never count it as open.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    attempts
}
