//! The policy in force: replaced atomically while requests are served.
//!
//! Every request takes one snapshot ([`Source::snapshot`]) and is decoded, judged and
//! (for tool lists) filtered under it from start to end, so a request never sees half
//! of one version and half of another: arguments pruned under the old plan never meet
//! the new rules. In-flight requests finish under the version they started with.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::counter::{CounterId, CounterStore};
use crate::error::PolicyError;
use crate::observe::{Event, Observer};
use crate::policy::Policy;

/// The current policy.
#[derive(Debug)]
pub(crate) struct Source {
    current: ArcSwap<Policy>,
}

impl Source {
    pub fn new(policy: Arc<Policy>) -> Source {
        Source {
            current: ArcSwap::new(policy),
        }
    }

    /// The policy in force now, for one request.
    pub fn snapshot(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// Puts `policy` in force; returns the one it replaces.
    pub fn replace(&self, policy: Arc<Policy>) -> Arc<Policy> {
        self.current.swap(policy)
    }
}

/// Replaces the policy of a running layer (hot reload); get one from
/// [`PolicyLayer::handle`](crate::PolicyLayer::handle).
///
/// The next request is judged under the new policy; requests in flight finish under
/// the one they started with. Counters whose identity (name, window, scope) is
/// unchanged keep their state, also when their `max` changed (a lowered limit never
/// raises a remaining budget); new counters start fresh; removed ones are dropped from
/// the store.
///
/// ```
/// use tower_mcp_policy::{Policy, PolicyLayer};
///
/// let layer = PolicyLayer::new(r#"{"version":"1","default":"deny"}"#.parse::<Policy>()?);
/// let handle = layer.handle();
/// handle.replace(r#"{"version":"1","default":"allow"}"#.parse::<Policy>()?);
/// assert!(handle.current().default_allows());
/// # Ok::<(), tower_mcp_policy::PolicyError>(())
/// ```
#[derive(Clone)]
pub struct PolicyHandle {
    source: Arc<Source>,
    retain: RetainCounters,
    observer: Arc<dyn Observer>,
}

/// Tells the counter store which counters the new policy still has.
type RetainCounters = Arc<dyn Fn(&[CounterId]) + Send + Sync>;

impl std::fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHandle")
            .field("current", &self.source.snapshot().summary())
            .finish_non_exhaustive()
    }
}

impl PolicyHandle {
    pub(crate) fn new<S: CounterStore + Clone>(
        source: Arc<Source>,
        counters: S,
        observer: Arc<dyn Observer>,
    ) -> Self {
        PolicyHandle {
            source,
            retain: Arc::new(move |keep: &[CounterId]| counters.retain_counters(keep)),
            observer,
        }
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        self.source.snapshot()
    }

    /// Puts `policy` in force for the next request.
    pub fn replace(&self, policy: impl Into<Arc<Policy>>) {
        self.put(policy.into(), None);
    }

    fn put(&self, policy: Arc<Policy>, file: Option<&Path>) {
        let keep: Vec<CounterId> = policy.counters().iter().map(|c| c.id()).collect();
        let summary = policy.summary();
        let fingerprint = policy.fingerprint().to_owned();
        self.source.replace(policy);
        (self.retain)(&keep);
        self.observer.observe(&Event::Reload {
            file,
            result: Ok(&summary),
            policy: &fingerprint,
        });
    }

    /// Loads `path` and puts it in force. On error the policy in force stays, the
    /// error (file, JSON Pointer, line) is returned, and reported as a failed reload.
    pub fn reload_file(&self, path: impl AsRef<Path>) -> Result<(), PolicyError> {
        let path = path.as_ref();
        self.put_loaded(path, Policy::from_file(path))
    }

    /// Puts a policy loaded from `path` in force, or reports why it did not load.
    pub(crate) fn put_loaded(
        &self,
        path: &Path,
        loaded: Result<Policy, PolicyError>,
    ) -> Result<(), PolicyError> {
        match loaded {
            Ok(policy) => {
                self.put(Arc::new(policy), Some(path));
                Ok(())
            }
            Err(error) => {
                self.observer.observe(&Event::Reload {
                    file: Some(path),
                    result: Err(&error),
                    policy: self.source.snapshot().fingerprint(),
                });
                Err(error)
            }
        }
    }
}
