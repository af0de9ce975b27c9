//! The JSON-RPC error codes the layer answers with, and the decoder's errors.

use std::fmt;

use super::message::Id;

/// The JSON-RPC error code for a body that is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON-RPC error code for JSON that is not a valid request.
pub const INVALID_REQUEST: i64 = -32600;

/// The JSON-RPC error code of a policy denial in [`DenialFormat::JsonRpcError`](crate::DenialFormat::JsonRpcError) form.
pub const POLICY_DENIED: i64 = -32050;
/// The JSON-RPC error code for a call of a refused batch that was not executed.
pub const NOT_EXECUTED: i64 = -32051;
/// The JSON-RPC error code for `Mcp-Method` / `Mcp-Name` headers that disagree with
/// the body (the code SEP-2243 servers use).
pub const HEADER_MISMATCH: i64 = -32020;
/// The JSON-RPC error code for an unknown (or hidden) tool: invalid params.
pub const UNKNOWN_TOOL: i64 = -32602;
/// The JSON-RPC error code for a task the caller does not own, or that does not exist
/// (the layer answers both alike): invalid params, as servers answer an unknown task.
pub const UNKNOWN_TASK: i64 = -32602;
/// The JSON-RPC error code of the 401 answer to a request whose grant is unknown,
/// revoked or expired, or missing.
pub const UNAUTHORIZED: i64 = -32052;
/// The JSON-RPC error code for a tools/list result that could not be filtered.
pub const INTERNAL_ERROR: i64 = -32603;

/// Which of the two JSON-RPC errors a [`DecodeError`] is.
///
/// See the example in the decoder's module docs (`src/jsonrpc/mod.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// Not JSON at all (-32700): syntax, encoding, trailing data.
    Parse,
    /// JSON, but not a valid JSON-RPC message (-32600), or ambiguous.
    InvalidRequest,
}

/// Why a body was refused.
///
/// See the example in the decoder's module docs (`src/jsonrpc/mod.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    kind: DecodeErrorKind,
    message: String,
    id: Option<Id>,
}

impl DecodeError {
    pub(super) fn parse(message: impl Into<String>) -> Self {
        DecodeError {
            kind: DecodeErrorKind::Parse,
            message: message.into(),
            id: None,
        }
    }

    pub(super) fn from_json(err: &serde_json::Error, id: Option<Id>) -> Self {
        use serde_json::error::Category;
        let kind = match err.classify() {
            Category::Data => DecodeErrorKind::InvalidRequest,
            Category::Syntax | Category::Eof | Category::Io => DecodeErrorKind::Parse,
        };
        DecodeError {
            kind,
            message: err.to_string(),
            id: if kind == DecodeErrorKind::Parse {
                None
            } else {
                id
            },
        }
    }

    /// Parse error or invalid request.
    pub fn kind(&self) -> DecodeErrorKind {
        self.kind
    }

    /// The JSON-RPC error code: -32700 or -32600.
    pub fn code(&self) -> i64 {
        match self.kind {
            DecodeErrorKind::Parse => PARSE_ERROR,
            DecodeErrorKind::InvalidRequest => INVALID_REQUEST,
        }
    }

    /// What is wrong, with the line and column when known.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The id of the offending message, when it was read before the error.
    pub fn id(&self) -> Option<&Id> {
        self.id.as_ref()
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DecodeError {}
