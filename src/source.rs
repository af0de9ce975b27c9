//! The policy in force: replaced atomically while requests are served.
//!
//! Every request takes one snapshot ([`Source::snapshot`]) and is decoded, judged and
//! (for tool lists) filtered under it from start to end, so a request never sees half
//! of one version and half of another: arguments pruned under the old plan never meet
//! the new rules. In-flight requests finish under the version they started with.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::counter::{CounterId, CounterStore};
use crate::error::PolicyError;
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
/// the one they started with. Counters whose identity (name, window, max, scope) is
/// unchanged keep their state; changed or new counters start fresh; removed ones are
/// dropped from the store.
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
    pub(crate) fn new<S: CounterStore + Clone>(source: Arc<Source>, counters: S) -> Self {
        PolicyHandle {
            source,
            retain: Arc::new(move |keep: &[CounterId]| counters.retain_counters(keep)),
        }
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        self.source.snapshot()
    }

    /// Puts `policy` in force for the next request.
    pub fn replace(&self, policy: impl Into<Arc<Policy>>) {
        let policy = policy.into();
        let keep: Vec<CounterId> = policy.counters().iter().map(|c| c.id()).collect();
        let summary = policy.summary();
        self.source.replace(policy);
        (self.retain)(&keep);
        tracing::info!(
            target: "tower_mcp_policy",
            decision = "reload",
            "policy replaced: {summary}"
        );
    }

    /// Loads `path` and puts it in force; on error the policy in force stays and the
    /// error (file, JSON Pointer, line) is returned.
    pub fn reload_file(&self, path: impl AsRef<std::path::Path>) -> Result<(), PolicyError> {
        self.replace(Policy::from_file(path)?);
        Ok(())
    }
}
