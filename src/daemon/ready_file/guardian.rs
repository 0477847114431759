//! The ready file guardian: a child process that marks lbd's ready files
//! "not ready" the moment lbd is gone.
//!
//! lbd runs `lbd --ready-file-guardian` with a pipe as its stdin and writes
//! one ready file path per line into it. The guardian reads until end of
//! file, which comes when lbd exits in any way (the kernel closes lbd's end
//! of the pipe, SIGKILL included), then writes `1` to every path it was
//! given and exits. It ignores SIGTERM, SIGINT and SIGHUP: under systemd
//! they reach the whole unit on stop, and the guardian's job is to outlive
//! lbd by the few microseconds it needs.
//!
//! Its process name is `lbd-guardian`, so keepalived's `track_process lbd`
//! never counts it as a running lbd.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};

use super::{NOT_READY, write_atomically};

/// The line that releases the guardian from its duty (paths are absolute,
/// so no path reads like it).
const RELEASE: &[u8] = b"-\n";

/// The command-line flag that makes `lbd` run as the guardian.
pub const FLAG: &str = "--ready-file-guardian";

/// lbd's side of a running guardian.
pub struct Handle {
    // Held, never waited for: the guardian outlives lbd on purpose, and
    // exits (reaped by lbd's parent) when lbd's end of the pipe closes.
    _child: Child,
    pipe: ChildStdin,
}

impl Handle {
    /// Starts `program --ready-file-guardian` with a pipe from lbd as stdin.
    pub fn start(program: &Path) -> std::io::Result<Handle> {
        let mut child = Command::new(program)
            .arg(FLAG)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pipe = child.stdin.take().expect("piped stdin");
        Ok(Handle {
            _child: child,
            pipe,
        })
    }

    /// Tells the guardian to write nothing when lbd exits: a successor lbd
    /// owns the files now.
    pub fn release(&mut self) -> std::io::Result<()> {
        self.pipe.write_all(RELEASE)
    }

    /// Adds `path` to the files the guardian marks not ready after lbd.
    pub fn watch(&mut self, path: &Path) -> std::io::Result<()> {
        let line = path
            .to_str()
            .filter(|p| !p.contains('\n'))
            .ok_or_else(|| std::io::Error::other("the path is not UTF-8 or holds a newline"))?;
        self.pipe.write_all(format!("{line}\n").as_bytes())
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

/// The guardian's main: reads paths from stdin until end of file, then
/// writes "not ready" to each.
pub fn run() -> ExitCode {
    // SAFETY: prctl(PR_SET_NAME) with a NUL-terminated buffer and
    // signal(SIG_IGN) touch no Rust-managed memory.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            c"lbd-guardian".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
    let mut paths: Vec<PathBuf> = Vec::new();
    let stdin = std::io::stdin();
    // Any read error ends the watch like end of file: lbd's end is gone.
    let mut released = false;
    for line in stdin.lock().lines().map_while(Result::ok) {
        if line.as_bytes() == &RELEASE[..RELEASE.len() - 1] {
            released = true;
        } else if !line.is_empty() && !paths.iter().any(|p| p.as_os_str() == line.as_str()) {
            paths.push(PathBuf::from(line));
        }
    }
    if released {
        return ExitCode::SUCCESS;
    }
    let mut status = ExitCode::SUCCESS;
    for path in &paths {
        if let Err(err) = write_atomically(path, NOT_READY) {
            eprintln!(
                "lbd-guardian: cannot mark {} not ready after lbd ended: {err}",
                path.display()
            );
            status = ExitCode::FAILURE;
        }
    }
    status
}
