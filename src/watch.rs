//! Reloading a policy file when it changes (feature `watch`).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

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
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (events, received) = channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = events.send(event);
        })?;
        watcher.watch(&directory, RecursiveMode::NonRecursive)?;
        // A symlink to a file elsewhere: the file it points to changes in its own
        // directory, which is watched too.
        if let Ok(target) = std::fs::canonicalize(&path)
            && let Some(target_directory) = target.parent()
            && std::fs::canonicalize(&directory).ok().as_deref() != Some(target_directory)
        {
            watcher.watch(target_directory, RecursiveMode::NonRecursive)?;
        }
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
                    changed(&handle, &file, bytes, &mut last);
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
    let _ = handle.put_loaded(file, Policy::from_file_bytes(file, bytes));
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
