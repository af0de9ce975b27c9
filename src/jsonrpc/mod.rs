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
//! use tower_mcp_policy::jsonrpc::{decode, ReadAll};
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
//! # Ok::<(), tower_mcp_policy::jsonrpc::DecodeError>(())
//! ```

mod fast;
mod strict;

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use serde::Serialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;
use serde_json::value::RawValue;
use smallvec::SmallVec;

pub use crate::policy::ArgPlan;
use crate::policy::Policy;
use crate::value::ArgValue;
use strict::{Arguments, Key, KeySet, Text, Validate};

/// The JSON-RPC error code for a body that is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON-RPC error code for JSON that is not a valid request.
pub const INVALID_REQUEST: i64 = -32600;

/// Which arguments to read for a tool: implemented by [`Policy`] and [`ReadAll`].
///
/// See the example in the [`jsonrpc`](crate::jsonrpc) module.
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
/// See the example in the [`jsonrpc`](crate::jsonrpc) module.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadAll;

impl PlanSource for ReadAll {
    fn plan_for(&self, _tool: &str) -> &ArgPlan {
        static ALL: std::sync::OnceLock<ArgPlan> = std::sync::OnceLock::new();
        ALL.get_or_init(ArgPlan::everything)
    }
}

/// A JSON-RPC id: a string or an integer.
///
/// See the example in the [`jsonrpc`](crate::jsonrpc) module.
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
/// See the example in the [`jsonrpc`](crate::jsonrpc) module.
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
/// See the example in the [`jsonrpc`](crate::jsonrpc) module.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall<'a> {
    name: Cow<'a, str>,
    arguments: Option<ArgValue>,
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

    /// The arguments the plan asked for (the whole object under [`ReadAll`]), numbers
    /// exactly as written; `None` when the call has no arguments or they are `null`.
    pub fn arguments(&self) -> Option<&ArgValue> {
        self.arguments.as_ref()
    }
}

/// One decoded JSON-RPC message.
///
/// See the example in the [`jsonrpc`](crate::jsonrpc) module.
#[derive(Debug, Clone, PartialEq)]
pub struct Message<'a> {
    kind: MessageKind,
    id: Option<Id>,
    method: Option<Cow<'a, str>>,
    call: Option<ToolCall<'a>>,
    routing_name: Option<Cow<'a, str>>,
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
        }
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
}

/// A decoded body: one message, or a batch.
///
/// See the example in the [`jsonrpc`](crate::jsonrpc) module.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<'a> {
    /// One message inline: a single message (the usual body) costs no allocation.
    messages: SmallVec<[Message<'a>; 1]>,
    batch: bool,
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

/// Which of the two JSON-RPC errors a [`DecodeError`] is.
///
/// See the example in the [`jsonrpc`](crate::jsonrpc) module.
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
/// See the example in the [`jsonrpc`](crate::jsonrpc) module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    kind: DecodeErrorKind,
    message: String,
    id: Option<Id>,
}

impl DecodeError {
    fn parse(message: impl Into<String>) -> Self {
        DecodeError {
            kind: DecodeErrorKind::Parse,
            message: message.into(),
            id: None,
        }
    }

    fn from_json(err: &serde_json::Error, id: Option<Id>) -> Self {
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

/// Decodes a body, reading of each tool call's arguments what `plans` names.
///
/// See the example in the [`jsonrpc`](crate::jsonrpc) module.
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
        None => thorough(text, plans),
    }
}

/// Decodes a body with serde_json and strict seeds: any body, and every error message.
fn thorough<'a, P: PlanSource + ?Sized>(
    text: &'a str,
    plans: &P,
) -> Result<Decoded<'a>, DecodeError> {
    let last_id = RefCell::new(None);
    let context = Context {
        plans,
        last_id: &last_id,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let decoded = BodySeed(&context)
        .deserialize(&mut de)
        .and_then(|decoded| de.end().map(|()| decoded))
        .map_err(|e| {
            // A message error found before a syntax error further on: what is not JSON
            // at all is a parse error, whatever else is wrong with it. (Every string is
            // decoded, so a lone surrogate read from a fragment is a parse error too.)
            let mut whole = serde_json::Deserializer::from_str(text);
            if e.classify() == serde_json::error::Category::Data
                && let Err(syntax) = Validate.deserialize(&mut whole).and_then(|()| whole.end())
            {
                return DecodeError::from_json(&syntax, None);
            }
            DecodeError::from_json(&e, last_id.borrow_mut().take())
        })?;
    Ok(decoded)
}

struct Context<'c, P: ?Sized> {
    plans: &'c P,
    /// The id of the message being read, so an error can name it.
    last_id: &'c RefCell<Option<Id>>,
}

struct BodySeed<'c, P: ?Sized>(&'c Context<'c, P>);

impl<'de, P: PlanSource + ?Sized> DeserializeSeed<'de> for BodySeed<'_, P> {
    type Value = Decoded<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Decoded<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, P: PlanSource + ?Sized> Visitor<'de> for BodySeed<'_, P> {
    type Value = Decoded<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC message (an object) or a batch (an array of them)")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Decoded<'de>, A::Error> {
        let message = Envelope(self.0).visit_map(map)?;
        Ok(Decoded {
            messages: smallvec::smallvec![message],
            batch: false,
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Decoded<'de>, A::Error> {
        let mut messages = SmallVec::new();
        while let Some(message) = seq.next_element_seed(Envelope(self.0))? {
            messages.push(message);
        }
        if messages.is_empty() {
            return Err(de::Error::custom("an empty batch is not a valid request"));
        }
        Ok(Decoded {
            messages,
            batch: true,
        })
    }
}

/// One message object.
struct Envelope<'c, P: ?Sized>(&'c Context<'c, P>);

impl<'de, P: PlanSource + ?Sized> DeserializeSeed<'de> for Envelope<'_, P> {
    type Value = Message<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Message<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

/// What `params` held, once read.
#[derive(Default)]
struct Params<'de> {
    call: Option<ToolCall<'de>>,
    routing_name: Option<Cow<'de, str>>,
}

impl<'de, P: PlanSource + ?Sized> Visitor<'de> for Envelope<'_, P> {
    type Value = Message<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC message object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message<'de>, A::Error> {
        *self.0.last_id.borrow_mut() = None;
        let mut seen = KeySet::new();
        let mut version_ok = None;
        let mut has_id = false;
        let mut method: Option<Cow<'de, str>> = None;
        let mut params: Option<Params<'de>> = None;
        let mut raw_params: Option<&'de RawValue> = None;
        let mut has_result = false;
        let mut has_error = false;
        while let Some(Key(key)) = map.next_key()? {
            if let Err(e) = seen.insert::<A::Error>(&key, "the message") {
                if key == "id" {
                    *self.0.last_id.borrow_mut() = None;
                }
                return Err(e);
            }
            match &*key {
                "jsonrpc" => {
                    let version =
                        map.next_value_seed(Text("\"jsonrpc\" to be the string \"2.0\""))?;
                    version_ok = Some(version == "2.0");
                }
                "id" => {
                    // Kept in the context until the message is complete, so that an
                    // error later in this message can still name it.
                    *self.0.last_id.borrow_mut() = map.next_value_seed(IdSeed)?;
                    has_id = true;
                }
                "method" => {
                    method = Some(map.next_value_seed(Text("\"method\" to be a string"))?);
                }
                "params" => match &method {
                    Some(m) => params = Some(map.next_value_seed(ParamsSeed::new(self.0, m))?),
                    None => raw_params = Some(map.next_value()?),
                },
                "result" => {
                    map.next_value_seed(Validate)?;
                    has_result = true;
                }
                "error" => {
                    map.next_value_seed(Validate)?;
                    has_error = true;
                }
                _ => map.next_value_seed(Validate)?,
            }
        }
        if version_ok != Some(true) {
            return Err(de::Error::custom("\"jsonrpc\" must be the string \"2.0\""));
        }
        if let Some(raw) = raw_params {
            let Some(m) = &method else {
                return Err(de::Error::custom("\"params\" without a \"method\""));
            };
            let mut de = serde_json::Deserializer::from_str(raw.get());
            let read = ParamsSeed::new(self.0, m)
                .deserialize(&mut de)
                .map_err(|e| de::Error::custom(format_args!("in params: {e}")))?;
            params = Some(read);
        }
        let message = Fields {
            id: has_id.then(|| self.0.last_id.borrow_mut().take()),
            method,
            params,
            has_result,
            has_error,
        };
        message.into_message().map_err(de::Error::custom)
    }
}

/// What one message object held, once read, for the checks that need all of it.
struct Fields<'de> {
    /// `None` without an `"id"`; `Some(None)` for `"id": null`.
    id: Option<Option<Id>>,
    method: Option<Cow<'de, str>>,
    params: Option<Params<'de>>,
    has_result: bool,
    has_error: bool,
}

impl<'de> Fields<'de> {
    /// The message, or why these fields are not one.
    fn into_message(self) -> Result<Message<'de>, String> {
        let Fields {
            id,
            method,
            params,
            has_result,
            has_error,
        } = self;
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
                })
            }
            (None, false) => Err(
                "not a JSON-RPC request, notification or response: no \"method\", \"result\" or \"error\"".into(),
            ),
        }
    }
}

/// A message id: a string, an integer, or null (`None`).
struct IdSeed;

impl<'de> DeserializeSeed<'de> for IdSeed {
    type Value = Option<Id>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Id>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IdSeed {
    type Value = Option<Id>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an id that is a string or an integer")
    }
    fn visit_i64<E>(self, v: i64) -> Result<Option<Id>, E> {
        Ok(Some(Id::Number(v.into())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Option<Id>, E> {
        Ok(Some(Id::Number(v.into())))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<Id>, E> {
        Err(E::custom(
            "an id must be a string or an integer, not a fraction",
        ))
    }
    fn visit_str<E>(self, v: &str) -> Result<Option<Id>, E> {
        Ok(Some(Id::String(v.to_owned())))
    }
    fn visit_unit<E>(self) -> Result<Option<Id>, E> {
        Ok(None)
    }
}

/// `params`, read according to the method.
struct ParamsSeed<'c, 'm, P: ?Sized> {
    context: &'c Context<'c, P>,
    method: &'m str,
}

impl<'c, 'm, P: ?Sized> ParamsSeed<'c, 'm, P> {
    fn new(context: &'c Context<'c, P>, method: &'m str) -> Self {
        ParamsSeed { context, method }
    }
}

/// Which field of `params` the `Mcp-Name` header carries for `method`.
fn routing_field(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    }
}

impl<'de, P: PlanSource + ?Sized> DeserializeSeed<'de> for ParamsSeed<'_, '_, P> {
    type Value = Params<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Params<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, P: PlanSource + ?Sized> Visitor<'de> for ParamsSeed<'_, '_, P> {
    type Value = Params<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("params to be an object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Params<'de>, E> {
        // `null` params are no params; tools/call then fails for want of a name.
        Ok(Params::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Params<'de>, A::Error> {
        if self.method == "tools/call" {
            return Err(de::Error::custom("tools/call params must be an object"));
        }
        Validate.visit_seq(seq)?;
        Ok(Params::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params<'de>, A::Error> {
        let is_call = self.method == "tools/call";
        let routing_field = routing_field(self.method);
        let mut seen = KeySet::new();
        let mut name: Option<Cow<'de, str>> = None;
        let mut routing_name = None;
        let mut arguments: Option<Option<ArgValue>> = None;
        let mut raw_arguments: Option<&'de RawValue> = None;
        while let Some(Key(key)) = map.next_key()? {
            seen.insert::<A::Error>(&key, "params")?;
            if is_call && key == "name" {
                name = Some(map.next_value_seed(Text("params.name of tools/call to be a string"))?);
            } else if is_call && key == "arguments" {
                match &name {
                    Some(n) => {
                        let plan = self.context.plans.plan_for(n);
                        let root = (!plan.is_empty()).then(|| plan.root());
                        arguments = Some(map.next_value_seed(Arguments(root))?);
                    }
                    None => raw_arguments = Some(map.next_value()?),
                }
            } else if !is_call && Some(&*key) == routing_field {
                // Kept when it is a string; other types have no header form.
                routing_name = map.next_value_seed(OptionalString)?;
            } else {
                map.next_value_seed(Validate)?;
            }
        }
        if !is_call {
            return Ok(Params {
                call: None,
                routing_name,
            });
        }
        let Some(name) = name else {
            return Err(de::Error::custom("tools/call params need a \"name\""));
        };
        if let Some(raw) = raw_arguments {
            let plan = self.context.plans.plan_for(&name);
            let root = (!plan.is_empty()).then(|| plan.root());
            let mut de = serde_json::Deserializer::from_str(raw.get());
            let read = Arguments(root)
                .deserialize(&mut de)
                .map_err(|e| de::Error::custom(format_args!("in params.arguments: {e}")))?;
            arguments = Some(read);
        }
        Ok(Params {
            routing_name: Some(name.clone()),
            call: Some(ToolCall {
                name,
                arguments: arguments.flatten(),
            }),
        })
    }
}

/// A string, or `None` for any other (validated) value.
struct OptionalString;

impl<'de> DeserializeSeed<'de> for OptionalString {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for OptionalString {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_owned())))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Validate.visit_seq(seq).map(|()| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Validate.visit_map(map).map(|()| None)
    }
}
