//! The policies in force (one, or a set of [`Grants`]): replaced atomically while
//! requests are served.
//!
//! Every request takes one snapshot ([`Source::snapshot`]) and is decoded, judged and
//! (for tool lists) filtered under it from start to end, so a request never sees half
//! of one version and half of another: arguments pruned under the old plan never meet
//! the new rules. In-flight requests finish under the version they started with.

use std::path::Path;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::approval::{ApprovalStore, Approvals, Change};
use crate::counter::{CounterId, CounterStore, StoreError};
use crate::error::PolicyError;
use crate::grants::Grants;
use crate::observe::{Event, Observer};
use crate::pins::{Pins, Seen};
use crate::policy::Policy;

/// The current policies.
#[derive(Debug)]
pub(crate) struct Source {
    current: ArcSwap<Grants>,
    /// The reviewed tool definitions, when the layer checks them.
    pins: ArcSwapOption<Pins>,
    /// The tool definitions listed through the layer.
    seen: Seen,
    /// The calls waiting for a person's approval, and the answers given: in this
    /// process, unless the counter store shares them with other replicas.
    approvals: Approvals,
    shared_approvals: std::sync::OnceLock<Arc<dyn ApprovalStore>>,
}

impl Source {
    pub fn new(policy: Arc<Policy>) -> Source {
        Source {
            current: ArcSwap::new(Arc::new(Grants::single(policy))),
            pins: ArcSwapOption::empty(),
            seen: Seen::default(),
            approvals: Approvals::default(),
            shared_approvals: std::sync::OnceLock::new(),
        }
    }

    /// The calls waiting for a person's approval, and the answers given.
    pub fn approvals(&self) -> &dyn ApprovalStore {
        match self.shared_approvals.get() {
            Some(shared) => &**shared,
            None => &self.approvals,
        }
    }

    /// Keeps approvals in `store` (shared by replicas) from now on; set once, before
    /// any request.
    pub fn share_approvals(&self, store: Arc<dyn ApprovalStore>) {
        let _ = self.shared_approvals.set(store);
    }

    /// The tool definitions listed through the layer.
    pub fn seen(&self) -> &Seen {
        &self.seen
    }

    /// The pins in force, if any.
    pub fn pins(&self) -> Option<Arc<Pins>> {
        self.pins.load_full()
    }

    /// Puts `pins` in force.
    pub fn replace_pins(&self, pins: Option<Arc<Pins>>) {
        self.pins.store(pins);
    }

    /// The policies in force now, for one request.
    pub fn snapshot(&self) -> Arc<Grants> {
        self.current.load_full()
    }

    /// Puts `grants` in force; returns what it replaces.
    pub fn replace(&self, grants: Arc<Grants>) -> Arc<Grants> {
        self.current.swap(grants)
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

    /// The policy in force; with [`Grants`], the one anonymous callers get (or one
    /// that denies everything).
    pub fn current(&self) -> Arc<Policy> {
        self.source.snapshot().fallback()
    }

    /// The policies in force.
    pub fn grants(&self) -> Arc<Grants> {
        self.source.snapshot()
    }

    /// The calls waiting for a person's approval (`require_approval`), oldest first,
    /// each a JSON object: `id`, `tool`, `arguments` (canonical: keys sorted, numbers
    /// as the policy reads them), `grant` (its name under a grants file, else `null`),
    /// `reason`, `rule` (a JSON Pointer into the policy), `requested_at` (RFC 3339),
    /// `expires_in_seconds`. What an approvals page or API shows an operator.
    ///
    /// ```
    /// use serde_json::json;
    /// use tower::{Layer, ServiceExt};
    /// use tower_mcp_policy::testing::{self, Answer};
    /// use tower_mcp_policy::{DenialKind, Policy, PolicyLayer};
    ///
    /// # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
    /// # let my_mcp_service = tower::service_fn(|_: http::Request<tower_mcp_policy::layer::PolicyBody>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
    /// #         br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#))))
    /// # });
    /// let policy: Policy = r#"{ "version": "1", "default": "allow", "tools": {
    ///     "transfer": { "require_approval": { "reason": "Transfers need a person." } } } }"#.parse()?;
    /// let layer = PolicyLayer::new(policy);
    /// let handle = layer.handle();
    /// let service = layer.layer(my_mcp_service);
    /// let call = || testing::tool_call("transfer", json!({ "amount": 500 }));
    ///
    /// // The first call waits for a person; the agent is told so.
    /// let Answer::Denied(denial) = testing::answer(service.clone().oneshot(call()).await?).await?
    /// else { panic!() };
    /// assert_eq!(denial.kind(), DenialKind::Approval);
    /// let [pending] = &handle.pending_approvals().await?[..] else { panic!() };
    /// assert_eq!(pending["arguments"], json!({ "amount": 500 }));
    /// assert!(denial.message().contains(pending["id"].as_str().unwrap()));
    ///
    /// assert!(handle.approve(pending["id"].as_str().unwrap(), "ops").await?.is_some());
    /// // The same call now runs, once.
    /// let ran = testing::answer(service.clone().oneshot(call()).await?).await?;
    /// assert!(matches!(ran, Answer::Result(_)));
    /// let again = testing::answer(service.clone().oneshot(call()).await?).await?;
    /// assert!(matches!(again, Answer::Denied(_)));
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(doc()).unwrap();
    /// ```
    pub async fn pending_approvals(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let (pending, changes) = self.source.approvals().pending().await?;
        crate::approval::report(&*self.observer, &changes);
        Ok(pending)
    }

    /// `approver` approves the call waiting under `id`: the next call of the same
    /// grant, tool and arguments (under the same policy) runs, once, within the rule's
    /// `timeout`. The request as [`PolicyHandle::pending_approvals`] showed it, or
    /// `None` when no call waits under `id` (unknown, expired, or already answered).
    /// An error when the store that shares approvals with other replicas cannot be
    /// reached.
    pub async fn approve(
        &self,
        id: &str,
        approver: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        self.decide(id, approver, true).await
    }

    /// `approver` declines the call waiting under `id`: its next attempt is told so
    /// (and the one after asks again). As for [`PolicyHandle::approve`].
    pub async fn decline(
        &self,
        id: &str,
        approver: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        self.decide(id, approver, false).await
    }

    async fn decide(
        &self,
        id: &str,
        approver: &str,
        approved: bool,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let (decided, changes): (_, Vec<Change>) = self
            .source
            .approvals()
            .decide(id, approver, approved)
            .await?;
        crate::approval::report(&*self.observer, &changes);
        Ok(decided)
    }

    /// Puts `policy` in force for the next request, for every caller (a set of grants
    /// it replaces is gone).
    pub fn replace(&self, policy: impl Into<Arc<Policy>>) {
        self.put(Grants::single(policy.into()), None);
    }

    /// Puts `grants` in force for the next request. Counters of unchanged policies
    /// keep their state.
    pub fn replace_grants(&self, grants: Grants) {
        self.put(grants, None);
    }

    fn put(&self, grants: Grants, file: Option<&Path>) {
        let keep = grants.counter_ids();
        let summary = grants.summary();
        let fingerprint = grants.fingerprint().to_owned();
        self.source.replace(Arc::new(grants));
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
        self.put_loaded(
            path,
            Policy::from_file(path).map(|p| Grants::single(Arc::new(p))),
        )
    }

    /// Loads the grants file `path` (and its policies) and puts it in force. On error
    /// what is in force stays, and the error is returned and reported.
    pub fn reload_grants_file(&self, path: impl AsRef<Path>) -> Result<(), PolicyError> {
        let path = path.as_ref();
        self.put_loaded(path, Grants::from_file(path))
    }

    /// Loads the tool pins of `path` (a lock file `mcp-policy pin` writes) and puts them
    /// in force for the next list and call. On error the pins in force stay, and the
    /// error is returned and reported as a failed reload.
    pub fn reload_pins_file(&self, path: impl AsRef<Path>) -> Result<(), PolicyError> {
        let path = path.as_ref();
        match Pins::from_file(path) {
            Ok(pins) => {
                let summary = format!("{} pinned tools", pins.len());
                self.source.replace_pins(Some(Arc::new(pins)));
                self.observer.observe(&Event::Reload {
                    file: Some(path),
                    result: Ok(&summary),
                    policy: self.source.snapshot().fingerprint(),
                });
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

    /// Puts a policy loaded from `path` in force, or reports why it did not load.
    pub(crate) fn put_loaded(
        &self,
        path: &Path,
        loaded: Result<Grants, PolicyError>,
    ) -> Result<(), PolicyError> {
        match loaded {
            Ok(grants) => {
                self.put(grants, Some(path));
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
