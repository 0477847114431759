//! The last list the cluster gave, kept in `[global] state_dir` so that the
//! next start serves it until the cluster answers (an apiserver that was
//! discovered may be the only one up after a reboot of the others).
//!
//! Written atomically (a temporary file, fsync, rename), by blocking I/O the
//! caller runs off the relay threads.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest saved file read back: a few thousand addresses at most.
const MAX_BYTES: u64 = 1024 * 1024;

/// The saved list of one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedList {
    /// The backend it belongs to.
    pub backend: String,
    /// The service it was learned from.
    pub service: String,
    /// The addresses the cluster listed.
    pub servers: Vec<SocketAddr>,
}

/// The saved list could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("discovery state file {path:?}: {reason}")]
pub struct SavedListError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

impl SavedList {
    /// The file a backend's list is kept in.
    pub fn path(state_dir: &Path, backend: &str) -> PathBuf {
        state_dir.join(format!("discovery-{backend}.json"))
    }

    /// Reads the list saved for `backend` and `service`; `Ok(None)` when
    /// there is none (first start) or it was learned from another service.
    pub fn load(
        state_dir: &Path,
        backend: &str,
        service: &str,
    ) -> Result<Option<SavedList>, SavedListError> {
        let path = SavedList::path(state_dir, backend);
        let fail = |reason: String| SavedListError {
            path: path.clone(),
            reason,
        };
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(fail(format!("cannot open it: {e}"))),
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_BYTES), &mut text)
            .map_err(|e| fail(format!("cannot read it: {e}")))?;
        let list: SavedList = serde_json::from_str(&text)
            .map_err(|e| fail(format!("not a saved server list ({e}): delete it")))?;
        Ok((list.backend == backend && list.service == service).then_some(list))
    }

    /// Writes the list atomically into `state_dir` (created if missing).
    pub fn save(&self, state_dir: &Path) -> Result<(), SavedListError> {
        let path = SavedList::path(state_dir, &self.backend);
        let fail = |reason: String| SavedListError {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(state_dir)
            .map_err(|e| fail(format!("cannot create its directory: {e}")))?;
        let temporary = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|e| fail(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&text)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            // The rename itself is durable once the directory is synced.
            std::fs::File::open(state_dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&temporary);
            fail(format!("cannot write it: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_list_reads_back_only_for_its_backend_and_service() {
        let dir = std::env::temp_dir().join(format!("lbd-saved-{}", std::process::id()));
        let list = SavedList {
            backend: "cp".into(),
            service: "kubernetes".into(),
            servers: vec!["10.0.0.1:6443".parse().unwrap()],
        };
        assert_eq!(SavedList::load(&dir, "cp", "kubernetes").unwrap(), None);
        list.save(&dir).unwrap();
        assert_eq!(
            SavedList::load(&dir, "cp", "kubernetes").unwrap(),
            Some(list)
        );
        assert_eq!(SavedList::load(&dir, "cp", "other").unwrap(), None);
        std::fs::write(SavedList::path(&dir, "cp"), "garbage").unwrap();
        assert!(SavedList::load(&dir, "cp", "kubernetes").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
