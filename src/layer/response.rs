//! The answers the layer gives without calling the inner service.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::ResponseBody;
use crate::decision::{Denial, DenialKind};
use crate::jsonrpc::Id;

/// The JSON-RPC error code of a policy denial in [`DenialFormat::JsonRpcError`] form.
pub const POLICY_DENIED: i64 = -32050;
/// The JSON-RPC error code for a call of a refused batch that was not executed.
pub const NOT_EXECUTED: i64 = -32051;
/// The JSON-RPC error code for `Mcp-Method` / `Mcp-Name` headers that disagree with
/// the body (the code SEP-2243 servers use).
pub const HEADER_MISMATCH: i64 = -32020;
/// The JSON-RPC error code for an unknown (or hidden) tool: invalid params.
pub const UNKNOWN_TOOL: i64 = -32602;
/// The JSON-RPC error code for a tools/list result that could not be filtered.
pub const INTERNAL_ERROR: i64 = -32603;

/// The `_meta` key under which a denial's details travel in a tool result.
pub const META_KEY: &str = "tower-mcp-policy/denial";

/// The prefix of every denial text, as the hosted PolicyLayer gateway writes it.
pub const DENIED_PREFIX: &str = "[POLICY DENIED] ";

/// How a denied `tools/call` is answered.
///
/// ```
/// use http_body_util::BodyExt;
/// use tower::{Layer, ServiceExt};
/// use tower_mcp_policy::layer::POLICY_DENIED;
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
/// assert_eq!(answer["error"]["code"], POLICY_DENIED);
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
    /// tool error. Details are in the result's `_meta` under [`META_KEY`].
    #[default]
    ToolResult,
    /// A JSON-RPC error with code [`POLICY_DENIED`], the message, and `data` holding
    /// `rule`, `tool`, `kind` and `retryAfterSeconds`.
    JsonRpcError,
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
    let text = format!("{DENIED_PREFIX}{}", denial.message());
    match format {
        DenialFormat::ToolResult => json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": {
                "content": [{ "type": "text", "text": text }],
                "isError": true,
                "_meta": { META_KEY: details(denial) },
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
