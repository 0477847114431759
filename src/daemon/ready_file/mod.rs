//! A frontend's readiness as a file, for keepalived's `track_file`.
//!
//! `[[frontend]] ready_file = PATH` makes lbd keep PATH at `0` while the
//! frontend can give a new connection a server and at `1` otherwise (no
//! server can take one, or lbd is shutting down). keepalived watches the
//! file with inotify and multiplies the number by the track's weight, so
//! the VIP follows lbd's readiness the moment it changes, with no polling
//! script and no admin API request that a flood of admin connections
//! could delay.
//!
//! The file is replaced atomically (a temporary file renamed over it), so
//! keepalived never reads half a number, and every write runs on the
//! blocking pool, never on a thread that relays connections.
//!
//! A file left at `0` by an lbd that died would keep the VIP on a host that
//! serves nothing, so a small [`guardian`] process (lbd itself, re-executed)
//! holds one end of a pipe to lbd and writes `1` to every ready file as soon
//! as lbd is gone, however it ended (SIGKILL and crashes included).

pub mod guardian;

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::Duration;

use crate::proxy::frontend::AvailabilityWatch;
use tracing::{debug, info, warn};

use crate::daemon::Daemon;

/// What a ready file holds while its frontend can serve.
pub const READY: &str = "0\n";
/// What a ready file holds while it cannot (and after lbd is gone).
pub const NOT_READY: &str = "1\n";

/// How often the files are looked at even when no frontend signalled a
/// change: picks up frontends and paths that a reload added.
const RESCAN: Duration = Duration::from_secs(1);

/// The program [`guardian`] runs as; set once by `lbd`'s main. Unset (lbd
/// embedded as a library, unit tests) means no guardian.
static GUARDIAN_PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// This process's guardian, started on first use.
static GUARDIAN: Mutex<Guardian> = Mutex::new(Guardian {
    handle: None,
    failed: false,
    told: Vec::new(),
});

/// Set once a successor lbd serves the frontends (see [`crate::upgrade`]):
/// the files are its to write from then on.
static HANDED_OVER: AtomicBool = AtomicBool::new(false);

/// Leaves the ready files to a successor lbd: this process writes them no
/// more, not even "not ready" when it exits, and neither does its guardian.
pub fn hand_over() {
    HANDED_OVER.store(true, Ordering::SeqCst);
    let mut guardian = GUARDIAN.lock().expect("ready file guardian");
    if let Some(handle) = &mut guardian.handle
        && let Err(err) = handle.release()
    {
        warn!(error = %err, "cannot release the ready file guardian: it may mark the files not ready when this process exits");
    }
}

/// Makes every daemon of this process start a [`guardian`] by running
/// `program --ready-file-guardian` when it first writes a ready file.
pub fn use_guardian(program: PathBuf) {
    let _ = GUARDIAN_PROGRAM.set(program);
}

/// Keeps every configured ready file in line with its frontend until the
/// daemon shuts down, writing `1` to each once shutdown begins.
pub async fn keep(daemon: Daemon) {
    let writer = Arc::new(Mutex::new(Writer::default()));
    // path -> readiness last written there.
    let mut written: HashMap<PathBuf, bool> = HashMap::new();
    loop {
        if HANDED_OVER.load(Ordering::SeqCst) {
            return;
        }
        let snapshot = daemon.snapshot();
        // Subscribed before reading readiness, so that a change between the
        // two wakes the wait below instead of being missed.
        let mut receivers: Vec<AvailabilityWatch> = Vec::new();
        let mut wanted: Vec<(PathBuf, bool)> = Vec::new();
        for spec in &snapshot.config.frontends {
            let Some(path) = &spec.ready_file else {
                continue;
            };
            let Some(frontend) = snapshot.frontends.iter().find(|f| f.name == spec.name) else {
                continue;
            };
            receivers.push(frontend.watch_availability());
            let ready = !daemon.is_shutting_down() && frontend.readiness().is_ok();
            wanted.push((path.clone(), ready));
        }
        // A path no frontend names any more (a reload removed or renamed
        // it) is left saying "not ready": nothing serves it now.
        let dropped: Vec<PathBuf> = written
            .keys()
            .filter(|p| !wanted.iter().any(|(w, _)| w == *p))
            .cloned()
            .collect();
        let mut changes: Vec<(PathBuf, bool)> = dropped.into_iter().map(|p| (p, false)).collect();
        changes.extend(
            wanted
                .iter()
                .filter(|(path, ready)| written.get(path) != Some(ready))
                .cloned(),
        );
        for (path, ready) in changes {
            if HANDED_OVER.load(Ordering::SeqCst) {
                return;
            }
            let w = Arc::clone(&writer);
            let target = path.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                w.lock().expect("ready file writer").write(&target, ready)
            })
            .await;
            match outcome {
                Ok(Ok(())) => {
                    info!(file = %path.display(), ready, "ready file written");
                    if wanted.iter().any(|(p, _)| *p == path) {
                        written.insert(path, ready);
                    } else {
                        written.remove(&path);
                    }
                }
                // Not recorded: the next round tries again.
                Ok(Err(err)) => writer
                    .lock()
                    .expect("ready file writer")
                    .report(&path, &err),
                Err(err) => {
                    warn!(file = %path.display(), error = %err, "the ready file writer panicked")
                }
            }
        }
        if daemon.is_shutting_down() {
            return;
        }
        tokio::select! {
            () = any_changed(&mut receivers) => {}
            () = daemon.stopping() => {}
            () = tokio::time::sleep(RESCAN) => {}
        }
    }
}

/// Resolves when any receiver sees a new value (or its sender is gone);
/// never when there is none.
async fn any_changed(receivers: &mut [AvailabilityWatch]) {
    type Changed<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
    let mut waits: Vec<Changed<'_>> = receivers
        .iter_mut()
        .map(|r| Box::pin(r.changed()) as Changed<'_>)
        .collect();
    poll_fn(|cx| {
        for wait in &mut waits {
            if wait.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await
}

/// The blocking side: writes files, tells the guardian about them, and
/// keeps the last error per file so a file that cannot be written is
/// logged once, not every round.
#[derive(Default)]
struct Writer {
    last_error: HashMap<PathBuf, String>,
}

/// The guardian process and the files it was told about.
struct Guardian {
    handle: Option<guardian::Handle>,
    failed: bool,
    told: Vec<PathBuf>,
}

impl Guardian {
    /// Makes sure the guardian (started on first use) will mark `path` not
    /// ready once lbd is gone.
    fn tell(&mut self, path: &Path) {
        if self.told.iter().any(|p| p == path) || self.failed {
            return;
        }
        if self.handle.is_none() {
            let Some(program) = GUARDIAN_PROGRAM.get() else {
                debug!("no ready file guardian in this process");
                self.failed = true;
                return;
            };
            match guardian::Handle::start(program) {
                Ok(handle) => self.handle = Some(handle),
                Err(err) => {
                    warn!(program = %program.display(), error = %err,
                        "cannot start the ready file guardian: if lbd dies, its ready files keep their last value");
                    self.failed = true;
                    return;
                }
            }
        }
        if let Some(handle) = &mut self.handle {
            match handle.watch(path) {
                Ok(()) => self.told.push(path.to_owned()),
                Err(err) => warn!(file = %path.display(), error = %err,
                    "cannot hand the ready file to its guardian: if lbd dies, it keeps its last value"),
            }
        }
    }
}

impl Writer {
    fn write(&mut self, path: &Path, ready: bool) -> std::io::Result<()> {
        GUARDIAN.lock().expect("ready file guardian").tell(path);
        write_atomically(path, if ready { READY } else { NOT_READY })?;
        self.last_error.remove(path);
        Ok(())
    }

    fn report(&mut self, path: &Path, err: &std::io::Error) {
        let message = err.to_string();
        if self.last_error.get(path) != Some(&message) {
            warn!(file = %path.display(), error = %message,
                "cannot write the ready file (does its directory exist and belong to lbd's user?); trying again every second");
            self.last_error.insert(path.to_owned(), message);
        }
    }
}

/// Replaces `path`'s contents with `contents` in one rename, so a reader
/// sees the old number or the new one, never a mix or an empty file.
pub fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let mut temporary = name.to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(temporary);
    let result = std::fs::File::create(&temporary)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .and_then(|()| std::fs::rename(&temporary, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("lbd-ready-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.ready");
        write_atomically(&path, READY).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0\n");
        write_atomically(&path, NOT_READY).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["api.ready"]);
        let missing = write_atomically(&dir.join("no/such/dir"), READY).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
