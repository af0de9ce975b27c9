//! Reloading a policy file when it changes (feature `watch`).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::source::PolicyHandle;

/// How long a burst of file events is collected before the file is read again.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watches a policy file and puts every good version of it in force; see
/// [`PolicyHandle::watch`]. Watching stops when this is dropped.
///
/// ```no_run
/// use tower_mcp_policy::PolicyLayer;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = PolicyLayer::from_file("policy.json")?;
/// // Keep the watcher for as long as the server runs. A broken edit is reported (a
/// // `Reload` event) and the last good policy stays in force.
/// let watcher = layer.handle().watch("policy.json")?;
/// assert!(watcher.path().ends_with("policy.json"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PolicyWatcher {
    _watcher: RecommendedWatcher,
    path: PathBuf,
}

impl PolicyWatcher {
    /// The file being watched.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl PolicyHandle {
    /// Reloads `path` whenever it changes, until the returned watcher is dropped.
    ///
    /// The file's directory is watched, not the file, so editors that save by writing a
    /// new file and renaming it over the old one, and Kubernetes ConfigMaps (a symlink
    /// swapped in the directory), are seen. Events are debounced (150 ms), and the file
    /// is read again only when its bytes changed. A version that does not load leaves the
    /// last good policy in force and is reported as an ERROR event naming the file, the
    /// JSON Pointer and the line.
    pub fn watch(&self, path: impl AsRef<Path>) -> Result<PolicyWatcher, notify::Error> {
        let path = path.as_ref().to_path_buf();
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (events, received) = channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = events.send(event);
        })?;
        watcher.watch(&directory, RecursiveMode::NonRecursive)?;
        let handle = self.clone();
        let file = path.clone();
        let mut last = std::fs::read(&file).ok();
        std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || {
                // Ends when the watcher, and so the sender, is dropped.
                while received.recv().is_ok() {
                    let quiet_from = Instant::now() + DEBOUNCE;
                    loop {
                        let wait = quiet_from.saturating_duration_since(Instant::now());
                        match received.recv_timeout(wait) {
                            Ok(_) => {}
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    let Ok(bytes) = std::fs::read(&file) else {
                        continue; // between a removal and a rename: the next event comes
                    };
                    if last.as_deref() == Some(&bytes[..]) {
                        continue;
                    }
                    // Reported as a reload event either way; a file that does not
                    // load leaves the last good policy in force.
                    let _ = handle.reload_file(&file);
                    last = Some(bytes);
                }
            })
            .map_err(notify::Error::io)?;
        Ok(PolicyWatcher {
            _watcher: watcher,
            path,
        })
    }
}
