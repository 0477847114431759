//! What a run found: one [`Step`] per step of kubeadm's discovery, in
//! order, and what the endpoint showed on the way.

use std::net::SocketAddr;

use serde::Serialize;

use crate::cli::probe::tls::TlsReport;

/// The steps' names, in order: `step` N is `NAMES[N - 1]`.
pub(crate) const NAMES: [&str; 9] = [
    "dial",
    "tls",
    "cluster-info",
    "token",
    "signature",
    "ca-pin",
    "serving-cert",
    "server",
    "certificate-key",
];

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// As kubeadm needs it.
    Ok,
    /// kubeadm's discovery (or the join right after it) fails here.
    Fail,
    /// kubeadm goes on, but something is likely not what was meant.
    Warn,
    /// Not run: what it needs is missing, or it does not apply.
    Skip,
}

impl Status {
    /// The word of the human output.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Fail => "FAIL",
            Status::Warn => "warn",
            Status::Skip => "skip",
        }
    }
}

/// One step's line.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Step {
    /// From 1.
    pub step: usize,
    /// One of [`NAMES`].
    pub name: &'static str,
    /// How it ended.
    pub result: Status,
    /// What was found and what it means.
    pub detail: String,
    /// What to do, when something is to be done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Everything one run found.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// ENDPOINT as given.
    pub endpoint: String,
    /// The address connected to (or the first one tried).
    pub address: Option<SocketAddr>,
    /// The token ID checked (never the secret).
    pub token_id: String,
    /// Whether no step failed: kubeadm's discovery would succeed.
    pub passed: bool,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// What the endpoint presented.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsReport>,
    /// The real pins of the CA certificates in cluster-info.
    pub ca_cert_hashes: Vec<String>,
    /// cluster-info's `server:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Notes on the flags given.
    pub notes: Vec<String>,
}

impl Report {
    /// Adds the next step's line.
    pub(crate) fn add(&mut self, result: Status, detail: String, fix: Option<String>) {
        let step = self.steps.len() + 1;
        self.steps.push(Step {
            step,
            name: NAMES[step - 1],
            result,
            detail,
            fix,
        });
    }

    /// Adds the next step as passed.
    pub(crate) fn ok(&mut self, detail: String) {
        self.add(Status::Ok, detail, None);
    }

    /// Adds the next step as failed.
    pub(crate) fn fail(&mut self, detail: String, fix: Option<String>) {
        self.add(Status::Fail, detail, fix);
    }

    /// Adds the next step as not run.
    pub(crate) fn skip(&mut self, detail: String) {
        self.add(Status::Skip, detail, None);
    }

    /// Skips every network step (up to `server`) not run yet.
    pub(crate) fn skip_network_rest(&mut self) {
        let failed = self.steps.len();
        while self.steps.len() < NAMES.len() - 1 {
            self.skip(format!("not run: step {failed} failed"));
        }
    }
}
