//! Reloading a policy file when it changes (feature `watch`).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use std::sync::Arc;

use crate::grants::Grants;
use crate::policy::Policy;
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

#[cfg_attr(docsrs, doc(cfg(feature = "watch")))]
impl PolicyHandle {
    /// Reloads `path` whenever it changes, until the returned watcher is dropped.
    ///
    /// The file's directory is watched, not the file, so editors that save by writing a
    /// new file and renaming it over the old one, and Kubernetes ConfigMaps (a symlink
    /// swapped in the directory), are seen. When the path is a symlink to a file in
    /// another directory, that directory is watched too. Events are debounced (150 ms), and the file
    /// is read again only when its bytes changed. A version that does not load leaves the
    /// last good policy in force and is reported as an ERROR event naming the file, the
    /// JSON Pointer and the line.
    pub fn watch(&self, path: impl AsRef<Path>) -> Result<PolicyWatcher, notify::Error> {
        let path = path.as_ref().to_path_buf();
        let file = path.clone();
        let mut last = std::fs::read(&file).ok();
        self.watch_files(path, vec![file.clone()], move |handle| {
            let Ok(bytes) = std::fs::read(&file) else {
                return; // between a removal and a rename: the next event comes
            };
            changed(handle, &file, bytes, &mut last);
        })
    }

    /// Reloads the grants file `path` whenever it or one of the policy files it names
    /// changes, as [`PolicyHandle::watch`] does for a policy file: a version that does
    /// not load (the grants file or any policy) leaves the last good set in force and
    /// is reported. The policy files watched are those the file named when watching
    /// started; a policy added later in another directory is seen once the grants
    /// file changes again, or after a restart.
    pub fn watch_grants(&self, path: impl AsRef<Path>) -> Result<PolicyWatcher, notify::Error> {
        let path = path.as_ref().to_path_buf();
        let mut files = match Grants::from_file(&path) {
            Ok(grants) => grants.files().to_vec(),
            Err(_) => vec![path.clone()],
        };
        files.dedup();
        let grants_file = path.clone();
        let read_all = {
            let files = files.clone();
            move || -> Option<Vec<u8>> {
                let mut all = Vec::new();
                for file in &files {
                    all.extend(std::fs::read(file).ok()?);
                    all.push(0);
                }
                Some(all)
            }
        };
        let mut last = read_all();
        self.watch_files(path, files, move |handle| {
            let Some(now) = read_all() else {
                return; // between a removal and a rename: the next event comes
            };
            if last.as_deref() == Some(&now[..]) {
                return;
            }
            last = Some(now);
            let _ = handle.put_loaded(&grants_file, Grants::from_file(&grants_file));
        })
    }

    /// Reloads the tool pins of `path` (see
    /// [`PolicyLayer::pins_file`](crate::PolicyLayer::pins_file)) whenever the file
    /// changes, as [`PolicyHandle::watch`] does for a policy: a version that does not
    /// load leaves the pins in force and is reported.
    pub fn watch_pins(&self, path: impl AsRef<Path>) -> Result<PolicyWatcher, notify::Error> {
        let path = path.as_ref().to_path_buf();
        let file = path.clone();
        let mut last = std::fs::read(&file).ok();
        self.watch_files(path, vec![file.clone()], move |handle| {
            let Ok(bytes) = std::fs::read(&file) else {
                return; // between a removal and a rename: the next event comes
            };
            if last.as_deref() == Some(&bytes[..]) {
                return;
            }
            last = Some(bytes);
            let _ = handle.reload_pins_file(&file);
        })
    }

    /// Watches the directories of `files` (and of their symlinks' targets), and calls
    /// `reload` after each burst of events.
    fn watch_files(
        &self,
        path: PathBuf,
        files: Vec<PathBuf>,
        mut reload: impl FnMut(&PolicyHandle) + Send + 'static,
    ) -> Result<PolicyWatcher, notify::Error> {
        let (events, received) = channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = events.send(event);
        })?;
        let mut watched: Vec<PathBuf> = Vec::new();
        for file in &files {
            let directory = match file.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let canonical = std::fs::canonicalize(&directory).ok();
            if !watched.contains(&directory) {
                watcher.watch(&directory, RecursiveMode::NonRecursive)?;
                watched.push(directory);
            }
            // A symlink to a file elsewhere: the file it points to changes in its own
            // directory, which is watched too.
            if let Ok(target) = std::fs::canonicalize(file)
                && let Some(target_directory) = target.parent()
                && canonical.as_deref() != Some(target_directory)
                && !watched.iter().any(|w| w == target_directory)
            {
                watcher.watch(target_directory, RecursiveMode::NonRecursive)?;
                watched.push(target_directory.to_path_buf());
            }
        }
        let handle = self.clone();
        std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || {
                // Ends when the watcher, and so the sender, is dropped.
                while received.recv().is_ok() {
                    // Collect the burst: editors write, rename and chmod in a row.
                    let quiet_from = Instant::now() + DEBOUNCE;
                    loop {
                        let wait = quiet_from.saturating_duration_since(Instant::now());
                        match received.recv_timeout(wait) {
                            Ok(_) => {}
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    reload(&handle);
                }
            })
            .map_err(notify::Error::io)?;
        Ok(PolicyWatcher {
            _watcher: watcher,
            path,
        })
    }
}

/// The file now holds `bytes`: when they differ from the `last` ones, they are what is
/// loaded (the file is not read a second time, which could load another version than
/// the one compared). Reported as a reload event either way; a version that does not
/// load leaves the last good policy in force.
fn changed(handle: &PolicyHandle, file: &Path, bytes: Vec<u8>, last: &mut Option<Vec<u8>>) {
    if last.as_deref() == Some(&bytes[..]) {
        return;
    }
    *last = Some(bytes.clone());
    let loaded = Policy::from_file_bytes(file, bytes).map(|p| Grants::single(Arc::new(p)));
    let _ = handle.put_loaded(file, loaded);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::layer::PolicyLayer;

    #[test]
    fn the_version_compared_is_the_version_loaded() {
        let dir = std::env::temp_dir().join(format!("mcp-policy-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("policy.json");
        let on_disk = r#"{"version":"1","default":"deny","tools":{"on_disk":{}}}"#;
        std::fs::write(&file, on_disk).unwrap();
        let handle = PolicyLayer::from_file(&file).unwrap().handle();
        let mut last = Some(on_disk.as_bytes().to_vec());

        // The file changed twice in a row: the bytes read are loaded, not a later read.
        let compared = br#"{"version":"1","default":"deny","tools":{"compared":{}}}"#;
        std::fs::write(
            &file,
            r#"{"version":"1","default":"deny","tools":{"later":{}}}"#,
        )
        .unwrap();
        changed(&handle, &file, compared.to_vec(), &mut last);
        let policy = handle.current();
        assert_eq!(policy.tool_policy("compared").verdict(), "allowed");
        assert_eq!(policy.tool_policy("later").verdict(), "denied by default");

        // The same bytes again load nothing; a broken version keeps the last good one,
        // and its errors name the file.
        let before = handle.current().fingerprint().to_owned();
        changed(&handle, &file, compared.to_vec(), &mut last);
        assert_eq!(handle.current().fingerprint(), before);
        changed(&handle, &file, b"{\"version\":".to_vec(), &mut last);
        assert_eq!(handle.current().fingerprint(), before);
        let error = Policy::from_file_bytes(&file, vec![0xff]).unwrap_err();
        assert!(
            error.to_string().starts_with(&file.display().to_string()),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
