//! A strict decoder from HTTP body bytes to the JSON-RPC messages a policy judges.
//!
//! [`decode`] reads a single JSON-RPC 2.0 message or a batch, tells requests,
//! notifications and responses apart, and for every `tools/call` yields the tool name
//! and the arguments the policy reads (see [`ArgPlan`]). It is built for a security
//! boundary, so anything two parsers could read differently is an error:
//!
//! * duplicate keys in a message, in its `params`, or in an object along an argument
//!   path the policy reads (the arguments object included);
//! * anything after the JSON value, invalid UTF-8, lone surrogates, bad escapes, in any
//!   string of the body, read or not;
//! * a `tools/call` whose `name` is not a string, or whose `arguments` is not an object.
//!
//! String escapes are decoded before anything is compared: `"\u0074ransfer"` is
//! `transfer` and `"tools\/call"` is `tools/call`.
//!
//! It does not build a `serde_json::Value` of the body: it keeps the envelope fields
//! and, of the arguments, only what the plan names. The message agents usually send
//! (one object, no escape in its keys or in the strings the policy keeps) is read in
//! one pass over its bytes; anything else, and every error, goes through serde_json
//! with strict seeds, which gives the same answer where both can read a body.
//!
//! ```
//! use tower_mcp_policy::unstable::{decode, ReadAll};
//!
//! let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call",
//!                 "params":{"name":"\u0074ransfer","arguments":{"amount":5}}}"#;
//! let decoded = decode(body, &ReadAll)?;
//! let call = decoded.messages()[0].tool_call().unwrap();
//! assert_eq!(call.name(), "transfer");
//! assert_eq!(call.arguments().unwrap(), &serde_json::json!({"amount": 5}));
//!
//! let err = decode(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call",
//!     "params":{"name":"get_price","name":"transfer"}}"#, &ReadAll).unwrap_err();
//! assert_eq!(err.code(), -32600);
//!
//! // With a policy as the plan, only the arguments its rules read are kept.
//! let policy: tower_mcp_policy::Policy = r#"{ "version": "1", "default": "deny", "tools": {
//!     "transfer": { "deny_if": [{ "conditions": [
//!         { "path": "args.amount", "op": "gt", "value": 5000 }] }] } } }"#.parse().unwrap();
//! let decoded = decode(body_with_memo(), &policy)?;
//! let call = decoded.messages()[0].tool_call().unwrap();
//! assert_eq!(call.arguments().unwrap(), &serde_json::json!({"amount": 5}));
//! # fn body_with_memo() -> &'static [u8] {
//! #     br#"{"jsonrpc":"2.0","id":8,"method":"tools/call",
//! #          "params":{"name":"transfer","arguments":{"amount":5,"memo":"rent"}}}"#
//! # }
//! # Ok::<(), tower_mcp_policy::unstable::DecodeError>(())
//! ```

mod error;
mod fast;
mod message;
mod strict;
mod thorough;

pub use crate::policy::ArgPlan;
use crate::policy::Policy;
pub use error::{
    DecodeError, DecodeErrorKind, HEADER_MISMATCH, INTERNAL_ERROR, INVALID_REQUEST, NOT_EXECUTED,
    POLICY_DENIED, UNAUTHORIZED, UNKNOWN_TASK, UNKNOWN_TOOL,
};
pub(crate) use message::forges_text;
pub use message::{Decoded, Id, Message, MessageKind, ToolCall, TraceParent};

/// Which arguments to read for a tool: implemented by [`Policy`] and [`ReadAll`].
///
/// See the example in the decoder's module docs (`src/jsonrpc/mod.rs`).
pub trait PlanSource {
    /// The plan for `tool`'s arguments.
    fn plan_for(&self, tool: &str) -> &ArgPlan;
}

impl PlanSource for Policy {
    fn plan_for(&self, tool: &str) -> &ArgPlan {
        Policy::plan_for(self, tool)
    }
}

/// A [`PlanSource`] that reads every argument of every tool.
///
/// See the example in the decoder's module docs (`src/jsonrpc/mod.rs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadAll;

impl PlanSource for ReadAll {
    fn plan_for(&self, _tool: &str) -> &ArgPlan {
        static ALL: std::sync::OnceLock<ArgPlan> = std::sync::OnceLock::new();
        ALL.get_or_init(ArgPlan::everything)
    }
}

/// Decodes a body, reading of each tool call's arguments what `plans` names.
///
/// See the example in the decoder's module docs (`src/jsonrpc/mod.rs`).
pub fn decode<'a, P: PlanSource + ?Sized>(
    body: &'a [u8],
    plans: &P,
) -> Result<Decoded<'a>, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        DecodeError::parse(format!(
            "the body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    match fast::decode(text, plans) {
        Some(decoded) => Ok(decoded),
        None => thorough::decode(text, plans),
    }
}
