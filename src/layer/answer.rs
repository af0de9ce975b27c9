//! What the layer writes back: its own answers (denials, refusals, errors), the
//! decision each response carries, and how the server's answers are read back
//! (filtered, watched for refunds, or passed untouched).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::body::ResponseBody;
use super::config::DenialFormat;
use super::filter::Filter;
use super::inflight::Claim;
use super::refund::Watch;
use crate::decision::{Decision, Denial, DenialKind};
use crate::jsonrpc::{
    Decoded, INTERNAL_ERROR, Id, MessageKind, NOT_EXECUTED, POLICY_DENIED, UNKNOWN_TOOL,
};

/// What became of a request. Every response of the layer carries it as an extension,
/// so outer layers (an access log, a custom metric) can read it.
///
/// ```
/// # use tower_mcp_policy::layer::Outcome;
/// # let response = http::Response::new(());
/// match response.extensions().get::<Outcome>() {
///     Some(Outcome::Denied(denials)) => { /* one per denied call */ }
///     _ => {}
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Judged and forwarded (every call allowed, or no tool call in it).
    Forwarded,
    /// Calls were denied (one denial each): answered by the layer, nothing forwarded.
    Denied(Vec<Denial>),
    /// Monitor mode: enforcement would have denied these calls; forwarded anyway.
    WouldDeny(Vec<Denial>),
    /// Rejection before any decision (unreadable body, bad headers, too large, too slow,
    /// an answer the layer must filter but cannot read).
    Rejected,
    /// Not judged: a request without a body (GET, DELETE, ...) passed through.
    NotJudged,
}

impl Outcome {
    /// The denials of `Denied` and `WouldDeny`; nothing otherwise.
    pub fn denials(&self) -> &[Denial] {
        match self {
            Outcome::Denied(denials) | Outcome::WouldDeny(denials) => denials,
            _ => &[],
        }
    }

    /// The denials among `decisions`.
    pub(crate) fn denials_of(decisions: &[Decision]) -> Vec<Denial> {
        decisions
            .iter()
            .filter_map(Decision::denial)
            .cloned()
            .collect()
    }
}

fn details(denial: &Denial) -> Value {
    let mut details = json!({
        "rule": denial.rule(),
        "tool": denial.tool(),
        "kind": denial.kind().as_str(),
    });
    if let Some(seconds) = denial.retry_after() {
        details["retryAfterSeconds"] = json!(seconds);
    }
    if let Some(id) = &denial.approval {
        details["approvalId"] = json!(&**id);
    }
    details
}

fn error_object(id: Option<&Id>, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({ "code": code, "message": message });
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

/// The JSON-RPC response for one denied call.
pub(crate) fn denial_message(id: Option<&Id>, denial: &Denial, format: DenialFormat) -> Value {
    if denial.kind() == DenialKind::Hidden {
        // Indistinguishable from a tool the server does not have.
        return error_object(id, UNKNOWN_TOOL, denial.message(), None);
    }
    let text = format!("{}{}", DenialFormat::PREFIX, denial.message());
    match format {
        DenialFormat::ToolResult => json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": {
                "content": [{ "type": "text", "text": text }],
                "isError": true,
                "_meta": { DenialFormat::META_KEY: details(denial) },
            }
        }),
        DenialFormat::JsonRpcError => error_object(id, POLICY_DENIED, &text, Some(details(denial))),
    }
}

/// The response for a request of a refused batch that was allowed but not executed.
pub(crate) fn not_executed(id: Option<&Id>) -> Value {
    error_object(
        id,
        NOT_EXECUTED,
        "Not executed: another call in the same batch was denied by policy.",
        None,
    )
}

/// An HTTP error answer with a JSON-RPC error body.
pub(crate) fn http_error<B>(
    status: StatusCode,
    id: Option<&Id>,
    code: i64,
    message: &str,
) -> Response<ResponseBody<B>> {
    json_response(status, &error_object(id, code, message, None))
}

/// A `200 OK` (or other) JSON response.
pub(crate) fn json_response<B>(status: StatusCode, body: &Value) -> Response<ResponseBody<B>> {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("a Value always serializes"));
    let mut response = Response::new(ResponseBody::full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `202 Accepted` with no body: the answer to notifications.
pub(crate) fn accepted<B>() -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::ACCEPTED;
    response
}

/// One entry per request of a refused body (a denial, or "not executed");
/// notifications get none.
pub(crate) fn denied<B>(
    decoded: &Decoded<'_>,
    decisions: Vec<Decision>,
    format: DenialFormat,
) -> Response<ResponseBody<B>> {
    let mut decisions = decisions.into_iter();
    let mut entries = Vec::new();
    for message in decoded.messages() {
        let decision = match message.tool_call() {
            Some(_) => decisions.next().unwrap_or(Decision::NotExecuted),
            None => Decision::NotExecuted,
        };
        if message.kind() != MessageKind::Request {
            continue;
        }
        entries.push(match decision {
            Decision::Deny(denial) => denial_message(message.id(), &denial, format),
            _ => not_executed(message.id()),
        });
    }
    match entries.len() {
        0 => accepted(),
        _ if !decoded.is_batch() => json_response(StatusCode::OK, &entries[0]),
        _ => json_response(StatusCode::OK, &Value::Array(entries)),
    }
}

/// The server's answer as the client gets it: filtered under `filter` (the answer may
/// carry a tool list and the policy hides tools), watched for error answers when
/// `watch` holds charges to refund, and otherwise untouched. An answer that must be
/// filtered but arrives compressed is refused (a 502, reported), never passed on unread.
#[inline]
pub(crate) fn read_back<B>(
    mut response: Response<B>,
    filter: Option<Box<Filter>>,
    watch: Option<Watch>,
    limit: usize,
    claim: Option<Box<Claim>>,
) -> Response<ResponseBody<B>> {
    let headers = response.headers();
    let is_sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"));
    let encoded = headers.get_all(header::CONTENT_ENCODING).iter().any(|v| {
        v.to_str()
            .map(|v| {
                v.split(',')
                    .any(|c| !c.trim().eq_ignore_ascii_case("identity"))
            })
            .unwrap_or(true)
    });
    // A compressed answer read only to learn from passes unread.
    let filter = filter.filter(|f| f.rewrites() || !encoded);
    let response = if encoded && let Some(filter) = &filter {
        let message = "the server compressed a response that the policy layer must read to \
                       remove hidden tools";
        filter.withheld(message);
        let mut refused = http_error(StatusCode::BAD_GATEWAY, None, INTERNAL_ERROR, message);
        refused.extensions_mut().insert(Outcome::Rejected);
        // The server's answer is dropped here: the request is over.
        return refused;
    } else if filter.is_none() && (watch.is_none() || encoded) {
        // Nothing to filter, and nothing to watch (or nothing readable): untouched.
        response.map(ResponseBody::inner)
    } else {
        if filter.as_ref().is_some_and(|f| f.rewrites()) {
            response.headers_mut().remove(header::CONTENT_LENGTH);
        }
        if is_sse {
            response.map(|body| ResponseBody::sse(body, filter, limit, watch))
        } else {
            response.map(|body| ResponseBody::json(body, filter, limit, watch))
        }
    };
    response.map(|body| body.holding(claim))
}
