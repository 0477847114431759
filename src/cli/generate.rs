//! Man pages and shell completions generated from a binary's own clap
//! definition, so they always document the flags the binary really takes.
//! Reached through hidden flags (`lbd --generate`, `lbctl generate`) that
//! systemd/install.sh calls.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Section of both pages: lbd and lbctl are system administration tools.
const MAN_SECTION: &str = "8";

/// Why nothing (or not everything) was generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The request names no known artifact.
    #[error(
        "cannot generate {kind:?} {target:?}: use `man DIR` or `completion SHELL` (bash, zsh, fish, elvish, powershell)"
    )]
    Unknown {
        /// What was asked for.
        kind: String,
        /// The directory or shell given.
        target: String,
    },
    /// Writing a page or the completion script failed.
    #[error("cannot write {what}: {source}")]
    Write {
        /// The file or stream.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

/// Something to generate from a command definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    /// Man pages (the command and each subcommand) written into a directory.
    Man(PathBuf),
    /// A completion script for a shell, written to stdout.
    Completion(Shell),
}

impl Artifact {
    /// Parses `man DIR` or `completion SHELL`.
    pub fn parse(kind: &str, target: &str) -> Result<Artifact, GenerateError> {
        match kind {
            "man" => Ok(Artifact::Man(PathBuf::from(target))),
            "completion" => target
                .parse()
                .map(Artifact::Completion)
                .map_err(|_| unknown(kind, target)),
            _ => Err(unknown(kind, target)),
        }
    }
}

fn unknown(kind: &str, target: &str) -> GenerateError {
    GenerateError::Unknown {
        kind: kind.to_owned(),
        target: target.to_owned(),
    }
}

/// Generates `artifact` for `command`: man pages into their directory, a
/// completion script into `out`.
pub fn generate(
    command: clap::Command,
    artifact: &Artifact,
    out: &mut dyn Write,
) -> Result<(), GenerateError> {
    match artifact {
        Artifact::Man(dir) => write_man_pages(command, dir),
        Artifact::Completion(shell) => {
            let mut command = command;
            let name = command.get_name().to_owned();
            // clap_complete panics on a write error (a closed pipe): render
            // into memory, then write with the error handled.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, name, &mut script);
            out.write_all(&script)
                .and_then(|()| out.flush())
                .map_err(|source| GenerateError::Write {
                    what: "the completion script".into(),
                    source,
                })
        }
    }
}

/// One page per command and visible subcommand (`lbctl.8`, `lbctl-probe.8`).
fn write_man_pages(command: clap::Command, dir: &Path) -> Result<(), GenerateError> {
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let mut pending = vec![command];
    while let Some(command) = pending.pop() {
        pending.extend(
            command
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
                .cloned(),
        );
        let man = clap_mangen::Man::new(command).section(MAN_SECTION);
        man.generate_to(dir)
            .map_err(|source| GenerateError::Write {
                what: dir.join(man.get_filename()).display().to_string(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> clap::Command {
        clap::Command::new("tool")
            .about("Does things")
            .arg(
                clap::Arg::new("config")
                    .long("config")
                    .help("The config file"),
            )
            .subcommand(clap::Command::new("probe").about("Probes"))
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn parses_requests() {
        assert_eq!(
            Artifact::parse("man", "/tmp/m").unwrap(),
            Artifact::Man("/tmp/m".into())
        );
        assert_eq!(
            Artifact::parse("completion", "zsh").unwrap(),
            Artifact::Completion(Shell::Zsh)
        );
        let err = Artifact::parse("completion", "tcsh")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bash, zsh"), "{err}");
        assert!(Artifact::parse("manual", "x").is_err());
    }

    #[test]
    fn writes_a_page_per_visible_command() {
        let dir = std::env::temp_dir().join(format!("lbd-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        generate(command(), &Artifact::Man(dir.clone()), &mut io::sink()).unwrap();
        let page = std::fs::read_to_string(dir.join("tool.8")).unwrap();
        assert!(page.contains(".TH tool 8"), "{page}");
        assert!(page.contains("The config file"), "{page}");
        assert!(dir.join("tool-probe.8").exists());
        assert!(!dir.join("tool-secret.8").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn writes_completions_naming_the_flags() {
        let mut out = Vec::new();
        generate(command(), &Artifact::Completion(Shell::Bash), &mut out).unwrap();
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("--config") && script.contains("probe"));
    }
}
