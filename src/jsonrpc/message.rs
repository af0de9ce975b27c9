//! The decoded messages: what the policy reads of a JSON-RPC body.

use std::borrow::Cow;
use std::fmt;

use serde::Serialize;
use serde_json::Number;
use smallvec::SmallVec;

use crate::value::ArgValue;

/// A JSON-RPC id: a string or an integer.
///
/// See the example in the decoder's module docs (`src/jsonrpc/mod.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum Id {
    /// An integer id (kept exactly as sent).
    Number(Number),
    /// A string id.
    String(String),
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Number(n) => write!(f, "{n}"),
            Id::String(s) => write!(f, "{s:?}"),
        }
    }
}

/// What a message is.
///
/// See the example in the decoder's module docs (`src/jsonrpc/mod.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A request: it has a `method` and an `id`, and expects a response.
    Request,
    /// A notification: a `method` without an `id`.
    Notification,
    /// A response (`result` or `error`), sent by a client to answer a server request.
    Response,
}

/// A `tools/call`: the tool's name and the arguments the policy reads.
///
/// See the example in the decoder's module docs (`src/jsonrpc/mod.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall<'a> {
    pub(super) name: Cow<'a, str>,
    pub(super) arguments: Option<ArgValue>,
}

impl ToolCall<'_> {
    /// The tool's name, escapes decoded.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same, owning what it borrowed from the body.
    pub fn into_owned(self) -> ToolCall<'static> {
        ToolCall {
            name: Cow::Owned(self.name.into_owned()),
            arguments: self.arguments,
        }
    }

    /// The arguments the plan asked for (the whole object under [`ReadAll`](super::ReadAll)), numbers
    /// exactly as written; `None` when the call has no arguments or they are `null`.
    pub fn arguments(&self) -> Option<&ArgValue> {
        self.arguments.as_ref()
    }
}

/// One decoded JSON-RPC message.
///
/// See the example in the decoder's module docs (`src/jsonrpc/mod.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct Message<'a> {
    pub(super) kind: MessageKind,
    pub(super) id: Option<Id>,
    pub(super) method: Option<Cow<'a, str>>,
    pub(super) call: Option<ToolCall<'a>>,
    pub(super) routing_name: Option<Cow<'a, str>>,
    pub(super) trace: Option<TraceParent>,
}

impl<'a> Message<'a> {
    /// Request, notification or response.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// The same, owning what it borrowed from the body.
    pub fn into_owned(self) -> Message<'static> {
        Message {
            kind: self.kind,
            id: self.id,
            method: self.method.map(|m| Cow::Owned(m.into_owned())),
            call: self.call.map(ToolCall::into_owned),
            routing_name: self.routing_name.map(|n| Cow::Owned(n.into_owned())),
            trace: self.trace,
        }
    }

    /// The W3C trace context the caller sent in `params._meta.traceparent` (SEP-414),
    /// when it is well formed.
    pub fn trace(&self) -> Option<&TraceParent> {
        self.trace.as_ref()
    }

    /// The id of a request or response (`None` for notifications and `null` ids).
    pub fn id(&self) -> Option<&Id> {
        self.id.as_ref()
    }

    /// The method of a request or notification, escapes decoded.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// The tool call, when the method is `tools/call`.
    pub fn tool_call(&self) -> Option<&ToolCall<'a>> {
        self.call.as_ref()
    }

    /// The value the `Mcp-Name` header must carry for this message, if its method has
    /// one (`params.name` of `tools/call` and `prompts/get`, `params.uri` of
    /// `resources/*`, `params.taskId` of `tasks/*`).
    pub fn routing_name(&self) -> Option<&str> {
        self.routing_name.as_deref()
    }

    /// For a message about one task (`tasks/get`, `tasks/result`, `tasks/update`,
    /// `tasks/cancel`, sent as a request or as a notification a lenient server might
    /// still act on): `Some` of its `params.taskId`, itself `None` when that is not a
    /// string. `None` for any other message.
    pub fn task(&self) -> Option<Option<&str>> {
        let about_one_task = matches!(
            self.method.as_deref(),
            Some("tasks/get" | "tasks/result" | "tasks/update" | "tasks/cancel")
        );
        about_one_task.then(|| self.routing_name())
    }
}

/// A decoded body: one message, or a batch.
///
/// See the example in the decoder's module docs (`src/jsonrpc/mod.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<'a> {
    /// One message inline: a single message (the usual body) costs no allocation.
    pub(super) messages: SmallVec<[Message<'a>; 1]>,
    pub(super) batch: bool,
}

impl<'a> Decoded<'a> {
    /// The messages, in order (one unless the body is a batch).
    pub fn messages(&self) -> &[Message<'a>] {
        &self.messages
    }

    /// The same, owning what it borrowed from the body.
    pub fn into_owned(self) -> Decoded<'static> {
        Decoded {
            messages: self.messages.into_iter().map(Message::into_owned).collect(),
            batch: self.batch,
        }
    }

    /// True when the body was a JSON array.
    pub fn is_batch(&self) -> bool {
        self.batch
    }
}

/// What `params` held, once read.
#[derive(Default)]
pub(super) struct Params<'de> {
    pub call: Option<ToolCall<'de>>,
    pub routing_name: Option<Cow<'de, str>>,
    pub trace: Option<TraceParent>,
}

/// What one message object held, once read, for the checks that need all of it.
pub(super) struct Fields<'de> {
    /// `None` without an `"id"`; `Some(None)` for `"id": null`.
    pub id: Option<Option<Id>>,
    pub method: Option<Cow<'de, str>>,
    pub params: Option<Params<'de>>,
    pub has_result: bool,
    pub has_error: bool,
}

impl<'de> Fields<'de> {
    /// The message, or why these fields are not one.
    #[inline]
    pub(super) fn into_message(self) -> Result<Message<'de>, String> {
        let Fields {
            id,
            method,
            params,
            has_result,
            has_error,
        } = self;
        // Servers log ids and methods (rmcp logs ids raw): a line break or a character
        // that reorders text would let a request forge a log line downstream.
        if let Some(Some(Id::String(id))) = &id
            && forged(id)
        {
            return Err("a request id must not contain control characters, line separators or bidirectional overrides".into());
        }
        if let Some(method) = &method
            && forged(method)
        {
            return Err("a method must not contain control characters, line separators or bidirectional overrides".into());
        }
        match (method, has_result || has_error) {
            (Some(_), true) => Err(
                "a message cannot have both a \"method\" and a \"result\" or \"error\"".into(),
            ),
            (Some(method), false) => {
                if method != "tools/call" && method.eq_ignore_ascii_case("tools/call") {
                    // A lenient server might run it; the policy would not have judged it.
                    return Err(format!(
                        "method \"{method}\" is not \"tools/call\": methods are case-sensitive"
                    ));
                }
                let params = params.unwrap_or_default();
                if method == "tools/call" && params.call.is_none() {
                    return Err("tools/call needs params with the tool's \"name\"".into());
                }
                let kind = match id {
                    None => MessageKind::Notification,
                    Some(Some(_)) => MessageKind::Request,
                    Some(None) => {
                        return Err(
                            "a request id must be a string or an integer, not null".into()
                        );
                    }
                };
                Ok(Message {
                    kind,
                    id: id.flatten(),
                    method: Some(method),
                    call: params.call,
                    routing_name: params.routing_name,
                    trace: params.trace,
                })
            }
            (None, true) => {
                if has_result && has_error {
                    return Err("a response cannot have both \"result\" and \"error\"".into());
                }
                if id.is_none() {
                    return Err("a response needs an \"id\"".into());
                }
                Ok(Message {
                    kind: MessageKind::Response,
                    id: id.flatten(),
                    method: None,
                    call: None,
                    routing_name: None,
                    trace: None,
                })
            }
            (None, false) => Err(
                "not a JSON-RPC request, notification or response: no \"method\", \"result\" or \"error\"".into(),
            ),
        }
    }
}

/// Which field of `params` the `Mcp-Name` header carries for `method`.
#[inline]
pub(super) fn routing_field(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        "tasks/get" | "tasks/result" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    }
}

/// True when `text` holds a character that [`forges_text`]; plain ASCII (the usual
/// method and id) is checked a byte at a time.
#[inline]
fn forged(text: &str) -> bool {
    text.bytes().any(|b| !(0x20..0x7f).contains(&b)) && text.contains(forges_text)
}

/// True for a character that can change how text that holds it is displayed: a control
/// character (C0, DEL, C1), a Unicode line or paragraph separator, or a bidirectional
/// override or isolate. Refused in ids and methods; escaped in the layer's own logs.
pub(crate) fn forges_text(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A W3C trace context (`traceparent`: `00-` + 32 hex digits of trace id + `-` + 16 of
/// parent id + `-` + 2 of flags), as a caller sent it, so the layer's events join the
/// caller's trace. Anything else is not a trace context and is not kept.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceParent([u8; 55]);

impl TraceParent {
    /// `text`, when it is a well-formed `traceparent` (lowercase hex, a version other
    /// than `ff`, trace and parent ids not all zeros).
    pub fn parse(text: &str) -> Option<TraceParent> {
        let bytes: [u8; 55] = text.as_bytes().try_into().ok()?;
        let hex = |range: std::ops::Range<usize>| {
            bytes[range]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        };
        let zeros = |range: std::ops::Range<usize>| bytes[range].iter().all(|&b| b == b'0');
        let well_formed = hex(0..2)
            && &bytes[0..2] != b"ff"
            && bytes[2] == b'-'
            && hex(3..35)
            && !zeros(3..35)
            && bytes[35] == b'-'
            && hex(36..52)
            && !zeros(36..52)
            && bytes[52] == b'-'
            && hex(53..55);
        well_formed.then_some(TraceParent(bytes))
    }

    /// The text, as sent.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("checked to be ASCII")
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({})", self.as_str())
    }
}
