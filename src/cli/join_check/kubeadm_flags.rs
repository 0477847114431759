//! The flags of `kubeadm join` that do not change token discovery, so
//! that a printed join command runs unchanged with `lbctl join-check` in
//! place of `kubeadm join`. They are taken, hidden from `--help`, and each
//! given one gets a note. The list follows `addJoinConfigFlags` and
//! `addJoinOtherFlags` in cmd/kubeadm/app/cmd/join.go, plus kubeadm's
//! global `--v` and `--rootfs`.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

/// (flag, takes a value, why join-check leaves it alone).
const FLAGS: &[(&str, bool, &str)] = &[
    ("node-name", true, "it names the node, after discovery"),
    (
        "apiserver-advertise-address",
        true,
        "it is for the new control-plane instance",
    ),
    (
        "apiserver-bind-port",
        true,
        "it is for the new control-plane instance",
    ),
    (
        "tls-bootstrap-token",
        true,
        "it is for kubelet's TLS bootstrap, after discovery",
    ),
    (
        "cri-socket",
        true,
        "it is for the container runtime on this node",
    ),
    (
        "config",
        true,
        "no kubeadm config file is read: give the endpoint and --token as flags",
    ),
    (
        "discovery-file",
        true,
        "it is file discovery; join-check walks token discovery",
    ),
    (
        "ignore-preflight-errors",
        true,
        "it is for kubeadm's preflight checks",
    ),
    ("patches", true, "it is for the static Pod manifests"),
    ("skip-phases", true, "it is for kubeadm's join phases"),
    ("dry-run", false, "join-check changes nothing anyway"),
    ("v", true, "it is kubeadm's log verbosity"),
    ("rootfs", true, "it is for the host's root file system"),
];

/// The kubeadm-only flags given on the command line, by name.
#[derive(Debug, Clone, Default)]
pub struct KubeadmOnlyFlags {
    given: Vec<&'static str>,
}

impl KubeadmOnlyFlags {
    /// One note per kubeadm flag given: that join-check ignores it, and why.
    pub(crate) fn notes(&self) -> Vec<String> {
        self.given
            .iter()
            .filter_map(|name| FLAGS.iter().find(|(flag, ..)| flag == name))
            .map(|(flag, _, why)| format!("--{flag} ignored: {why}"))
            .collect()
    }
}

impl FromArgMatches for KubeadmOnlyFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let given = FLAGS
            .iter()
            .map(|(flag, ..)| *flag)
            .filter(|flag| matches.value_source(flag) == Some(ValueSource::CommandLine))
            .collect();
        Ok(KubeadmOnlyFlags { given })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = KubeadmOnlyFlags::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for KubeadmOnlyFlags {
    fn augment_args(command: Command) -> Command {
        FLAGS
            .iter()
            .fold(command, |command, (flag, takes_value, _)| {
                let mut arg = Arg::new(*flag).long(*flag).hide(true);
                arg = if *takes_value {
                    arg.action(ArgAction::Append).num_args(1)
                } else {
                    arg.action(ArgAction::SetTrue)
                };
                if *flag == "v" {
                    arg = arg.short('v');
                }
                command.arg(arg)
            })
    }

    fn augment_args_for_update(command: Command) -> Command {
        KubeadmOnlyFlags::augment_args(command)
    }
}
