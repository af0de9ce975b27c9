//! Checks on the request line and headers, before and after the body is decoded.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::jsonrpc::{Decoded, TraceParent};

/// A refusal: HTTP status, JSON-RPC code and message.
pub(crate) struct Rejection {
    pub status: http::StatusCode,
    pub code: i64,
    pub message: String,
}

impl Rejection {
    fn new(status: http::StatusCode, code: i64, message: impl Into<String>) -> Rejection {
        Rejection {
            status,
            code,
            message: message.into(),
        }
    }

    /// The body did not arrive within `timeout`.
    pub fn late(timeout: std::time::Duration, received: usize) -> Rejection {
        Rejection::new(
            StatusCode::REQUEST_TIMEOUT,
            INVALID_REQUEST,
            format!(
                "the request body did not arrive within {timeout:?} (received {received} bytes)"
            ),
        )
    }

    /// A GET, DELETE, HEAD or OPTIONS request came with a body.
    pub fn body_not_allowed(method: &http::Method) -> Rejection {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            format!("a {method} request must not carry a body"),
        )
    }

    /// The body could not be read.
    pub fn unreadable(error: &dyn std::fmt::Display) -> Rejection {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            format!("could not read the request body: {error}"),
        )
    }
}

use http::StatusCode;

use crate::jsonrpc::HEADER_MISMATCH;
use crate::jsonrpc::INVALID_REQUEST;

/// The request headers the judgement reads, found in one pass over the headers (a
/// lookup by name costs a hash and a probe each).
#[derive(Default)]
pub(crate) struct JudgedHeaders<'h> {
    pub authorization: Slot<'h>,
    pub session: Slot<'h>,
    pub method: Slot<'h>,
    pub name: Slot<'h>,
    pub traceparent: Slot<'h>,
    /// Any `Mcp-Param-*` header is present.
    pub params: bool,
}

/// A header that must not repeat, as found.
#[derive(Clone, Copy, Default)]
pub(crate) enum Slot<'h> {
    #[default]
    Absent,
    One(&'h HeaderValue),
    Repeated,
}

pub(crate) static MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
pub(crate) static MCP_PROTOCOL_VERSION: HeaderName =
    HeaderName::from_static("mcp-protocol-version");
static MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
static MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

impl<'h> JudgedHeaders<'h> {
    pub fn read(headers: &'h HeaderMap) -> Self {
        let mut found = JudgedHeaders::default();
        for (name, value) in headers {
            let slot = if name == header::AUTHORIZATION {
                &mut found.authorization
            } else if *name == MCP_SESSION_ID {
                &mut found.session
            } else if *name == MCP_METHOD {
                &mut found.method
            } else if *name == MCP_NAME {
                &mut found.name
            } else if *name == TRACEPARENT {
                &mut found.traceparent
            } else {
                found.params |= name.as_str().starts_with("mcp-param-");
                continue;
            };
            slot.fill(value);
        }
        found
    }

    /// The W3C trace context of the `traceparent` header, when sent once and well
    /// formed.
    pub fn trace(&self) -> Option<TraceParent> {
        match self.traceparent {
            Slot::One(value) => TraceParent::parse(value.to_str().ok()?),
            _ => None,
        }
    }

    /// The grant's credential and the session id, each at most once.
    pub fn scope(&self) -> Result<(Option<&'h HeaderValue>, Option<&'h HeaderValue>), Rejection> {
        Ok((
            self.authorization.single(&header::AUTHORIZATION)?,
            self.session.single(&MCP_SESSION_ID)?,
        ))
    }
}

impl<'h> Slot<'h> {
    /// Records one more value of the header.
    fn fill(&mut self, value: &'h HeaderValue) {
        *self = match self {
            Slot::Absent => Slot::One(value),
            _ => Slot::Repeated,
        };
    }

    /// The value, if the header was sent once; `Err` when it repeats.
    fn single(self, name: &HeaderName) -> Result<Option<&'h HeaderValue>, Rejection> {
        match self {
            Slot::Absent => Ok(None),
            Slot::One(value) => Ok(Some(value)),
            Slot::Repeated => Err(repeated(name)),
        }
    }
}

impl Rejection {
    /// A header that must be sent at most once came several times.
    pub fn repeated(name: &HeaderName) -> Rejection {
        repeated(name)
    }
}

fn repeated(name: &HeaderName) -> Rejection {
    Rejection::new(
        StatusCode::BAD_REQUEST,
        INVALID_REQUEST,
        format!("the {name} header appears more than once"),
    )
}

/// `Content-Type` must be JSON in UTF-8, and `Content-Encoding` absent or identity.
pub(crate) fn check_entity_headers(headers: &HeaderMap, max: usize) -> Result<(), Rejection> {
    // One pass over the headers: a lookup by name costs a hash and a probe each.
    let (mut content_type, mut content_length) = (Slot::Absent, Slot::Absent);
    for (name, value) in headers {
        let slot = if name == header::CONTENT_ENCODING {
            check_identity(value)?;
            continue;
        } else if name == header::CONTENT_TYPE {
            &mut content_type
        } else if name == header::CONTENT_LENGTH {
            &mut content_length
        } else {
            continue;
        };
        slot.fill(value);
    }
    let Some(content_type) = content_type.single(&header::CONTENT_TYPE)? else {
        return Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            INVALID_REQUEST,
            "missing Content-Type: expected application/json",
        ));
    };
    if !is_json_utf8(content_type) {
        return Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            INVALID_REQUEST,
            format!(
                "unsupported Content-Type {}: expected application/json",
                show(content_type)
            ),
        ));
    }
    if let Some(length) = content_length.single(&header::CONTENT_LENGTH)? {
        let length: Option<u64> = length.to_str().ok().and_then(|l| l.parse().ok());
        match length {
            Some(n) if n > max as u64 => return Err(too_large(max)),
            Some(_) => {}
            None => {
                return Err(Rejection::new(
                    StatusCode::BAD_REQUEST,
                    INVALID_REQUEST,
                    "invalid Content-Length",
                ));
            }
        }
    }
    Ok(())
}

/// A `Content-Encoding` value must be `identity` (a list of them at most).
fn check_identity(value: &HeaderValue) -> Result<(), Rejection> {
    let identity = value
        .to_str()
        .map(|v| {
            v.split(',')
                .all(|c| c.trim().eq_ignore_ascii_case("identity"))
        })
        .unwrap_or(false);
    if identity {
        return Ok(());
    }
    Err(Rejection::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        INVALID_REQUEST,
        format!(
            "unsupported Content-Encoding {}: the policy must read the body, so send it uncompressed",
            show(value)
        ),
    ))
}

pub(crate) fn too_large(max: usize) -> Rejection {
    Rejection::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        INVALID_REQUEST,
        format!("the request body is larger than the limit of {max} bytes"),
    )
}

fn is_json_utf8(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|param| {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let value = value.trim().trim_matches('"');
        !name.trim().eq_ignore_ascii_case("charset") || value.eq_ignore_ascii_case("utf-8")
    })
}

fn show(value: &HeaderValue) -> String {
    match value.to_str() {
        Ok(text) => format!("{text:?}"),
        Err(_) => "(not text)".to_owned(),
    }
}

/// SEP-2243 headers: when present they must say what the body says.
pub(crate) fn check_routing_headers(
    headers: &JudgedHeaders<'_>,
    decoded: &Decoded<'_>,
) -> Result<(), Rejection> {
    let mismatch =
        |message: String| Rejection::new(StatusCode::BAD_REQUEST, HEADER_MISMATCH, message);
    let method_header = headers.method.single(&MCP_METHOD)?;
    let name_header = headers.name.single(&MCP_NAME)?;
    if method_header.is_none() && name_header.is_none() {
        return Ok(());
    }
    let (false, [message]) = (decoded.is_batch(), decoded.messages()) else {
        return Err(mismatch(
            "Mcp-Method and Mcp-Name headers cannot describe a batch".to_owned(),
        ));
    };
    if let Some(value) = method_header {
        let value = value
            .to_str()
            .map_err(|_| mismatch("the Mcp-Method header is not valid text".to_owned()))?;
        match message.method() {
            Some(method) if method == value => {}
            Some(method) => {
                return Err(mismatch(format!(
                    "Mcp-Method header `{value}` does not match body method `{method}`"
                )));
            }
            None => {
                return Err(mismatch(format!(
                    "Mcp-Method header `{value}` sent with a response, which has no method"
                )));
            }
        }
    }
    if let Some(value) = name_header {
        let decoded_name = value
            .to_str()
            .ok()
            .and_then(decode_header_value)
            .ok_or_else(|| {
                mismatch("the Mcp-Name header is not valid text or Base64".to_owned())
            })?;
        match message.routing_name() {
            Some(name) if name == decoded_name => {}
            Some(name) => {
                return Err(mismatch(format!(
                    "Mcp-Name header `{decoded_name}` does not match body value `{name}`"
                )));
            }
            None => {
                return Err(mismatch(format!(
                    "Mcp-Name header `{decoded_name}` sent for a message that names nothing"
                )));
            }
        }
    }
    Ok(())
}

/// A SEP-2243 header value: plain text, or `=?base64?…?=` for values that cannot travel
/// as a header.
pub(crate) fn decode_header_value(text: &str) -> Option<String> {
    match text
        .strip_prefix("=?base64?")
        .and_then(|t| t.strip_suffix("?="))
    {
        Some(inner) => String::from_utf8(STANDARD.decode(inner).ok()?).ok(),
        None => Some(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        let ok = |v: &'static str| is_json_utf8(&HeaderValue::from_static(v));
        assert!(ok("application/json"));
        assert!(ok("Application/JSON; charset=UTF-8"));
        assert!(ok("application/json;charset=\"utf-8\""));
        assert!(!ok("application/json; charset=latin1"));
        assert!(!ok("application/jsonx"));
        assert!(!ok("text/plain"));
        assert!(!ok("application/x-www-form-urlencoded"));
    }

    #[test]
    fn header_values_decode_base64_sentinels() {
        let v =
            |s: &'static str| decode_header_value(HeaderValue::from_static(s).to_str().unwrap());
        assert_eq!(v("transfer").as_deref(), Some("transfer"));
        assert_eq!(v("=?base64?dHJhbnNmZXI=?=").as_deref(), Some("transfer"));
        assert_eq!(v("=?base64?!!?="), None);
    }
}
