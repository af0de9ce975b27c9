//! The layer's configuration: what [`PolicyLayer`](crate::PolicyLayer)'s builder
//! methods set, shared by every service it makes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::counter::MemoryCounters;
use crate::engine::Engine;
use crate::jsonrpc::{NOT_EXECUTED, POLICY_DENIED};
use crate::observe::{Observer, TracingObserver};
use crate::scope::ScopeHasher;

/// The default request body limit: 4 MiB.
pub(crate) const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;
/// The default limit on a tools/list JSON response the layer buffers to filter: 16 MiB.
pub(crate) const DEFAULT_MAX_FILTERED_RESPONSE: usize = 16 * 1024 * 1024;
/// The default most messages in one batch.
pub(crate) const DEFAULT_MAX_BATCH: usize = 100;
/// The default most charges one request may ask a counter store for.
pub(crate) const DEFAULT_MAX_CHARGES: usize = 1000;

/// Whether the layer enforces its policy or only reports what it would do.
///
/// Trying a policy on live traffic first: the call it would deny runs, and a
/// `would_deny` event says so.
///
/// ```
/// use tower::{Layer, ServiceExt};
/// use tower_mcp_policy::testing::{self, Answer};
/// use tower_mcp_policy::{Mode, Policy, PolicyLayer};
///
/// # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
/// # let my_mcp_service = tower::service_fn(|_: http::Request<tower_mcp_policy::layer::PolicyBody>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
/// #         br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#))))
/// # });
/// let policy: Policy = r#"{ "version": "1", "default": "deny" }"#.parse()?;
/// let service = PolicyLayer::new(policy).mode(Mode::Monitor).layer(my_mcp_service);
/// let response = service.oneshot(testing::tool_call("transfer", serde_json::json!({}))).await?;
/// assert!(matches!(testing::answer(response).await?, Answer::Result(_)));
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(doc()).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Deny, hide and refuse as the policy says (the default).
    #[default]
    Enforce,
    /// A dry run: nothing is denied or hidden. Every call enforcement would deny is
    /// forwarded and reported as a `would_deny` event with the fields a denial has;
    /// counters are charged exactly as under enforcement (a would-be-denied request
    /// charges nothing), so the report is what enforcement would do. Bodies the layer
    /// cannot read are still refused: that is the protocol, not the policy.
    Monitor,
}

/// How a denied `tools/call` is answered.
///
/// ```
/// use http_body_util::BodyExt;
/// use tower::{Layer, ServiceExt};
/// use tower_mcp_policy::{DenialFormat, Policy, PolicyLayer, testing};
///
/// # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
/// # let my_mcp_service = tower::service_fn(|_: http::Request<tower_mcp_policy::layer::PolicyBody>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
/// #         br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#))))
/// # });
/// let policy: Policy = r#"{ "version": "1", "default": "deny" }"#.parse()?;
/// let service = PolicyLayer::new(policy)
///     .denial_format(DenialFormat::JsonRpcError)
///     .layer(my_mcp_service);
/// let response = service.oneshot(testing::tool_call("transfer", serde_json::json!({}))).await?;
/// let body = response.into_body().collect().await?.to_bytes();
/// let answer: serde_json::Value = serde_json::from_slice(&body)?;
/// assert_eq!(answer["error"]["code"], DenialFormat::POLICY_DENIED);
/// assert_eq!(answer["error"]["data"]["kind"], "not_allowed");
/// assert_eq!(answer["error"]["data"]["rule"], "(default deny)");
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(doc()).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DenialFormat {
    /// A successful JSON-RPC response holding a `CallToolResult` with `isError: true`
    /// and the text `[POLICY DENIED] <message>`: the agent's model reads it like any
    /// tool error. Details are in the result's `_meta` under
    /// [`DenialFormat::META_KEY`].
    #[default]
    ToolResult,
    /// A JSON-RPC error with code [`DenialFormat::POLICY_DENIED`], the message, and
    /// `data` holding `rule`, `tool`, `kind` and `retryAfterSeconds`.
    JsonRpcError,
}

impl DenialFormat {
    /// The JSON-RPC error code of a denial in [`DenialFormat::JsonRpcError`] form.
    pub const POLICY_DENIED: i64 = POLICY_DENIED;
    /// The JSON-RPC error code of a call that was not executed because another call of
    /// its batch was denied (in either format).
    pub const NOT_EXECUTED: i64 = NOT_EXECUTED;
    /// The `_meta` key under which a denial's details travel in a tool result.
    pub const META_KEY: &'static str = "tower-mcp-policy/denial";
    /// The prefix of every denial text, as the hosted PolicyLayer gateway writes it.
    pub const PREFIX: &'static str = "[POLICY DENIED] ";
}

/// What the builder methods of [`PolicyLayer`](crate::PolicyLayer) set.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub observer: SharedObserver,
    /// A policy judged beside the enforced one, reported only.
    pub candidate: Option<Arc<Engine<MemoryCounters>>>,
    pub max_body: usize,
    pub max_filtered_response: usize,
    pub max_batch: usize,
    pub max_charges: usize,
    pub denial_format: DenialFormat,
    pub hasher: ScopeHasher,
    pub body_read_timeout: Option<Duration>,
    pub mode: Mode,
    /// Tool lists keep only the tools the caller's policy may allow.
    pub list_only_allowed: bool,
    /// The approvals page as the agents' users reach it, for clients that can open a
    /// URL for their user.
    pub approvals_page: Option<Arc<str>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            observer: SharedObserver(Arc::new(TracingObserver)),
            candidate: None,
            max_body: DEFAULT_MAX_BODY,
            max_filtered_response: DEFAULT_MAX_FILTERED_RESPONSE,
            max_batch: DEFAULT_MAX_BATCH,
            max_charges: DEFAULT_MAX_CHARGES,
            denial_format: DenialFormat::default(),
            hasher: ScopeHasher::random(),
            body_read_timeout: None,
            mode: Mode::Enforce,
            list_only_allowed: false,
            approvals_page: None,
        }
    }
}

/// The layer's observer.
#[derive(Clone)]
pub(crate) struct SharedObserver(pub Arc<dyn Observer>);

impl fmt::Debug for SharedObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}
