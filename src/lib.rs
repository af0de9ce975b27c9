//! # tower-mcp-policy
//!
//! A [tower] middleware that puts a policy in front of an MCP server speaking
//! Streamable HTTP: it decodes every JSON-RPC body, checks each `tools/call` against a
//! PolicyLayer `policy.json` (allow and deny rules, argument conditions, rate limits),
//! forwards what is allowed and answers the rest with a result the agent can read.
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_mcp_policy::{Policy, PolicyLayer};
//!
//! # fn my_mcp_service() -> impl tower::Service<http::Request<tower_mcp_policy::layer::PolicyBody>,
//! #     Response = http::Response<axum::body::Body>, Error = std::convert::Infallible,
//! #     Future = impl Send> + Clone + Send + Sync + 'static {
//! #     tower::service_fn(|_| async { Ok(http::Response::new(axum::body::Body::empty())) })
//! # }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Usually `PolicyLayer::from_file("policy.json")?`: errors name the file, the JSON
//! // Pointer and the line.
//! let policy: Policy = r#"{ "version": "1", "default": "deny",
//!   "tools": { "binance_us_close_listen_key": {
//!     "limits": [{ "counter": "close_rate", "window": "minute", "max": 30, "scope": "grant" }] } } }"#
//!     .parse()?;
//! let policed = ServiceBuilder::new()
//!     .layer(PolicyLayer::new(policy)) // the MCP endpoint only
//!     .service(my_mcp_service());
//! let app: axum::Router = axum::Router::new()
//!     .nest_service("/mcp", policed)
//!     .route("/healthz", axum::routing::get(|| async { "ok" })); // not policed
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! [`testing`] tests such a service offline; [`observe`] reports every decision.
//!
//! The crate is layered so that data flows one way:
//!
//! ```text
//! HTTP request ─▶ body bytes ─▶ JSON-RPC messages ─▶ tool calls + scope keys ─▶ decision ─▶ forward | denial
//!                 (layer)       (jsonrpc)            (scope)                   (policy, engine, counter)
//! ```
//!
//! * [`Policy`]: the document, validated and compiled once.
//! * [`layer`]: [`PolicyLayer`] and [`PolicyService`], which read and decode every
//!   request (a strict decoder: duplicate keys, bad escapes, batches and header/body
//!   disagreements are refused) and forward it or answer it.
//! * [`Engine`]: the [`Decision`] on each call, a pure function of policy, calls, scope
//!   keys and counters; a denied call's [`Denial`] names its rule.
//! * [`counter`]: where rate-limit state lives ([`MemoryCounters`](counter::MemoryCounters) on governor).
//! * [`observe`]: one [`Event`](observe::Event) per decision, to an
//!   [`Observer`](observe::Observer) (tracing by default; metrics with feature `metrics`).
//!
//! [tower]: https://docs.rs/tower

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// docs.rs builds with every feature and `--cfg docsrs` (see Cargo.toml), and marks each
// gated item "Available on crate feature X only".
#![cfg_attr(docsrs, feature(doc_cfg))]

mod approval;
pub mod counter;
mod decision;
mod engine;
mod error;
pub mod explain;
mod grants;
mod jsonrpc;
pub mod layer;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod observe;
mod pins;
mod policy;
mod rules;
mod scope;
mod source;
pub mod testing;
mod value;
#[cfg(feature = "watch")]
mod watch;

pub use counter::clock::FakeClock;
pub use decision::{Decision, Denial, DenialKind};
pub use engine::Engine;
pub use error::{PolicyError, PolicyErrorKind};
pub use grants::Grants;
pub use layer::config::{DenialFormat, Mode};
pub use layer::layer::PolicyLayer;
pub use layer::service::PolicyService;
pub use policy::{CounterDef, Policy, PolicyWarning};
pub use scope::{Grant, Scope, ScopeHasher, ScopeKeys, ScopeValue};
pub use source::PolicyHandle;
#[cfg(feature = "watch")]
#[cfg_attr(docsrs, doc(cfg(feature = "watch")))]
pub use watch::PolicyWatcher;

/// Unstable: the decoder and the two-phase decision, for this crate's own tests,
/// benchmarks and command. Not part of the public API: it may change in any release.
#[doc(hidden)]
pub mod unstable {
    pub use crate::engine::{Call, PendingCharges, Prepared};
    pub use crate::jsonrpc::{
        ArgPlan, DecodeError, DecodeErrorKind, Decoded, Id, Message, MessageKind, PlanSource,
        ReadAll, ToolCall, TraceParent, decode,
    };
    pub use crate::pins::{FIELDS, Pin, Pins, ToolDigest, canonical, hex};
    pub use crate::value::{ArgValue, Decimal, NotANumber};
}
