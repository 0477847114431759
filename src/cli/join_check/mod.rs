//! `lbctl join-check`: `kubeadm join`'s token discovery, walked step by step
//! through the control-plane endpoint, saying which step fails and the fix.
//!
//! It takes `kubeadm join`'s own flags (`kubeadm_flags` keeps the ones
//! discovery does not use) and checks them as kubeadm does (`token`,
//! `pin`). `steps` walks discovery: `network` dials with [`crate::net::dial`],
//! shakes hands with the probe's TLS code and GETs `cluster-info`
//! (`cluster_info`); then the token's signature (`jws`), the CA pin, the
//! serving certificate and the advertised server are checked. Each step
//! adds a line to the `report`; `explain` holds the sentences, `render`
//! prints lines or JSON.

mod cluster_info;
mod explain;
mod jws;
mod kubeadm_flags;
mod network;
mod pin;
mod render;
mod report;
mod steps;
mod token;

use std::io;
use std::time::Duration;

use crate::cli::probe::target::parse_host_port;
use crate::config::parse_duration;
pub use kubeadm_flags::KubeadmOnlyFlags;
use pin::Pin;
use steps::Inputs;
use token::BootstrapToken;

/// The flags of `lbctl join-check` (DESIGN.md §3.2): those of `kubeadm join`.
#[derive(Debug, Clone, clap::Args)]
pub struct JoinCheckArgs {
    /// The endpoint `kubeadm join` is given: HOST:PORT of the control plane (the load balancer).
    #[arg(value_name = "ENDPOINT")]
    pub endpoint: String,

    /// The bootstrap token, ID.SECRET, as in the join command `kubeadm init` printed.
    #[arg(
        long,
        value_name = "ID.SECRET",
        required_unless_present = "discovery_token"
    )]
    pub token: Option<String>,

    /// The token for discovery only; takes precedence over --token, as in kubeadm.
    #[arg(long, value_name = "ID.SECRET")]
    pub discovery_token: Option<String>,

    /// The pin of the cluster CA's public key, sha256:HEX; repeatable (or comma-separated).
    #[arg(
        long = "discovery-token-ca-cert-hash",
        value_name = "sha256:HEX",
        value_delimiter = ','
    )]
    pub ca_cert_hashes: Vec<String>,

    /// Trust cluster-info's CA without a pin (kubeadm's unsafe option).
    #[arg(long)]
    pub discovery_token_unsafe_skip_ca_verification: bool,

    /// The node joins as a new control-plane instance.
    #[arg(long)]
    pub control_plane: bool,

    /// The key of the certificates `kubeadm init --upload-certs` uploaded (64 hex digits).
    #[arg(long, value_name = "HEX")]
    pub certificate_key: Option<String>,

    /// How long the dial, the TLS handshake and the GET of cluster-info may each take.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub kubeadm_only: KubeadmOnlyFlags,
}

/// Whether kubeadm's discovery would succeed, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No step failed (exit 0).
    Passes,
    /// At least one step failed (exit 1).
    Fails,
}

/// Why the walk could not start (as opposed to a step failing).
#[derive(Debug, thiserror::Error)]
pub enum JoinCheckError {
    /// A flag's value is not what `kubeadm join` accepts.
    #[error("{flag}: {reason}")]
    Usage {
        /// The flag or argument.
        flag: &'static str,
        /// What is wrong with it, and the right form.
        reason: String,
    },
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(io::Error),
    /// Standard output could not be written.
    #[error("cannot write the output: {0}")]
    Output(io::Error),
}

/// Runs `lbctl join-check` to completion, printing to stdout.
pub fn run(args: JoinCheckArgs) -> Result<Verdict, JoinCheckError> {
    let inputs = inputs(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(JoinCheckError::Runtime)?;
    let report = runtime.block_on(steps::walk(&inputs));
    // A resolver thread stuck past --timeout must not hold the exit.
    runtime.shutdown_background();
    let verdict = if report.passed {
        Verdict::Passes
    } else {
        Verdict::Fails
    };
    let stdout = io::stdout();
    let written = if args.json {
        render::json(&mut stdout.lock(), &report)
    } else {
        render::lines(&mut stdout.lock(), &report)
    };
    match written {
        Ok(()) => Ok(verdict),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(verdict),
        Err(e) => Err(JoinCheckError::Output(e)),
    }
}

/// Checks the flags as `kubeadm join` does before it dials.
fn inputs(args: &JoinCheckArgs) -> Result<Inputs, JoinCheckError> {
    let usage = |flag, reason| JoinCheckError::Usage { flag, reason };
    if args.timeout.is_zero() {
        return Err(usage("--timeout", "must be more than 0s".into()));
    }
    let (host, port) = parse_host_port(&args.endpoint)
        .map_err(|reason| usage("ENDPOINT", format!("{:?}: {reason}", args.endpoint)))?;
    let (flag, given) = match (&args.discovery_token, &args.token) {
        (Some(token), _) => ("--discovery-token", token),
        (None, Some(token)) => ("--token", token),
        (None, None) => return Err(usage("--token", "is required".into())),
    };
    let token = BootstrapToken::parse(given).map_err(|reason| usage(flag, reason))?;
    let pins = args
        .ca_cert_hashes
        .iter()
        .map(|hash| Pin::parse(hash))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|reason| usage("--discovery-token-ca-cert-hash", reason))?;
    let notes = args.kubeadm_only.notes();
    Ok(Inputs {
        endpoint: args.endpoint.clone(),
        host,
        port,
        token,
        pins,
        skip_ca_verification: args.discovery_token_unsafe_skip_ca_verification,
        control_plane: args.control_plane,
        certificate_key: args.certificate_key.clone(),
        timeout: args.timeout,
        notes,
    })
}
