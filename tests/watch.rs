//! Reloading a policy file as it changes (feature `watch`), as editors and Kubernetes
//! change files. Alone in its binary: it installs a global tracing recorder (the
//! watcher reports from a thread of its own).

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tower_mcp_policy::{Policy, PolicyHandle, PolicyLayer};

/// Every event's message and fields, as text, from every thread.
fn events() -> &'static Mutex<Vec<String>> {
    static RECORDER: OnceLock<support::recorder::Recorder> = OnceLock::new();
    &RECORDER
        .get_or_init(|| {
            use tracing_subscriber::layer::SubscriberExt;
            let recorder = support::recorder::Recorder::default();
            let subscriber = tracing_subscriber::registry().with(recorder.clone());
            tracing::subscriber::set_global_default(subscriber).unwrap();
            recorder
        })
        .0
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tmp-policy-watch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn allowing(tool: &str) -> String {
    format!(r#"{{"version":"1","default":"deny","tools":{{"{tool}":{{}}}}}}"#)
}

/// Writes `text` as an editor does: a new file, renamed over the old one.
fn save_by_rename(path: &Path, text: &str) {
    let temporary = path.with_extension("swp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn wait_for(handle: &PolicyHandle, tool: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.current().rule_key(tool).is_none() {
        assert!(Instant::now() < deadline, "{tool} was not put in force");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_watched_file_is_reloaded_and_a_broken_edit_changes_nothing() {
    let events = events();
    let dir = scratch("rename");
    let path = dir.join("policy.json");
    std::fs::write(&path, allowing("first")).unwrap();
    let layer = PolicyLayer::from_file(&path).unwrap();
    let handle = layer.handle();
    let _watcher = handle.watch(&path).unwrap();

    save_by_rename(&path, &allowing("second"));
    wait_for(&handle, "second");
    std::fs::write(&path, allowing("third")).unwrap(); // written in place, too
    wait_for(&handle, "third");

    // A broken edit: the last good policy stays, and the error names file, pointer, line.
    save_by_rename(
        &path,
        "{\"version\":\"1\",\"default\":\"deny\",\n \"tools\":{\"x\":{\"limits\":[{\"counter\":\"c\",\"window\":\"fortnight\",\"max\":1}]}}}",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let error = loop {
        let found = events
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.starts_with("ERROR") && e.contains("reload_failed"))
            .cloned();
        if let Some(error) = found {
            break error;
        }
        assert!(Instant::now() < deadline, "no error event");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(error.contains("policy.json"), "{error}");
    assert!(error.contains("/tools/x/limits/0/window"), "{error}");
    assert!(
        handle.current().rule_key("third").is_some(),
        "the last good policy stays"
    );
    assert!(handle.current().rule_key("x").is_none());

    save_by_rename(&path, &allowing("fourth"));
    wait_for(&handle, "fourth");
    std::fs::remove_dir_all(dir).unwrap();
}

#[cfg(unix)]
#[test]
fn a_kubernetes_configmap_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let _ = events();
    // A ConfigMap volume: policy.json -> ..data/policy.json, ..data -> ..2026_v1.
    let dir = scratch("configmap");
    let version = |name: &str, tool: &str| {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("policy.json"), allowing(tool)).unwrap();
    };
    version("..2026_v1", "first");
    symlink("..2026_v1", dir.join("..data")).unwrap();
    symlink("..data/policy.json", dir.join("policy.json")).unwrap();
    let path = dir.join("policy.json");
    let layer = PolicyLayer::new(Arc::new(Policy::from_file(&path).unwrap()));
    let handle = layer.handle();
    let _watcher = handle.watch(&path).unwrap();

    // The kubelet writes the new version aside, then swaps the ..data link atomically.
    version("..2026_v2", "second");
    symlink("..2026_v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_for(&handle, "second");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A policy path that is a symlink to a file in another directory (a volume mount, a
/// dotfiles repository): edits of the file it points to are reloaded too.
#[test]
fn a_symlink_to_a_file_elsewhere_is_reloaded_when_that_file_changes() {
    let _ = events();
    let real = scratch("symlink-target");
    let links = scratch("symlink-link");
    let target = real.join("real-policy.json");
    std::fs::write(&target, allowing("first")).unwrap();
    let link = links.join("policy.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let layer = PolicyLayer::from_file(&link).unwrap();
    let handle = layer.handle();
    let _watcher = handle.watch(&link).unwrap();

    std::fs::write(&target, allowing("second")).unwrap();
    wait_for(&handle, "second");
    save_by_rename(&target, &allowing("third"));
    wait_for(&handle, "third");
    std::fs::remove_dir_all(real).unwrap();
    std::fs::remove_dir_all(links).unwrap();
}
