//! Offline tests of an MCP service under a policy: requests a real server (rmcp's
//! `StreamableHttpService` included) accepts, and its answers read back as values.
//!
//! Drive the stack with `tower::ServiceExt::oneshot`, and time with a
//! [`FakeClock`](crate::FakeClock):
//!
//! ```
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt};
//! use tower_mcp_policy::testing::{self, Answer};
//! use tower_mcp_policy::{FakeClock, Policy, PolicyLayer};
//!
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! # let my_mcp_service = tower::service_fn(|_: http::Request<tower_mcp_policy::layer::PolicyBody>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
//! #         br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#))))
//! # });
//! let policy: Policy = r#"{"version":"1","default":"deny","tools":{"close":{
//!     "limits":[{"counter":"c","window":"minute","max":1}]}}}"#.parse()?;
//! let clock = FakeClock::new();
//! let service = PolicyLayer::with_clock(policy, clock.clone()).layer(my_mcp_service);
//!
//! let first = service.clone().oneshot(testing::tool_call("close", serde_json::json!({}))).await?;
//! assert!(matches!(testing::answer(first).await?, Answer::Result(_)));
//! let second = service.clone().oneshot(testing::tool_call("close", serde_json::json!({}))).await?;
//! let Answer::Denied(denial) = testing::answer(second).await? else { panic!() };
//! assert_eq!((denial.kind().as_str(), denial.retry_after()), ("limit", Some(60)));
//! clock.advance(Duration::from_secs(60));
//! # Ok(())
//! # }
//! # tokio_test_block_on(doc());
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::decision::{Denial, DenialKind};
use crate::layer::config::DenialFormat;

/// The address requests are sent to: rmcp's server checks the `Host` of an absolute URI.
const ENDPOINT: &str = "http://localhost/mcp";

/// A JSON-RPC request `method` with `params` (id 1), as an MCP client posts it to
/// `http://localhost/mcp`: an absolute URI (rmcp's server checks the `Host`),
/// `Content-Type: application/json` and the `Accept` of Streamable HTTP. A server that
/// keeps sessions needs an `initialize` first: `request("initialize", params)`.
///
/// See the example in the [`testing`](crate::testing) module.
pub fn request(method: &str, params: Value) -> Request<Full<Bytes>> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    Request::post(ENDPOINT)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request")
}

/// A `tools/call` of `tool` with `arguments`.
///
/// See the example in the [`testing`](crate::testing) module.
pub fn tool_call(tool: &str, arguments: Value) -> Request<Full<Bytes>> {
    request("tools/call", json!({"name": tool, "arguments": arguments}))
}

/// `request` sent with `Authorization: credential` (a caller of its own for `grant`
/// counters).
///
/// See the example in the [`testing`](crate::testing) module.
pub fn as_caller<B>(mut request: Request<B>, credential: &str) -> Request<B> {
    let value = credential.parse().expect("a header value");
    request.headers_mut().insert(header::AUTHORIZATION, value);
    request
}

/// What came back for a request.
///
/// See the example in the [`testing`](crate::testing) module.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Answer {
    /// The server's result (the `result` member).
    Result(Value),
    /// The policy denied the call (either denial format): the [`Denial`] as the agent
    /// reads it, its message without the `[POLICY DENIED] ` prefix.
    Denied(Denial),
    /// A JSON-RPC error: the server's, or the layer's for a request it refused.
    Error {
        /// The error code.
        code: i64,
        /// The error message.
        message: String,
    },
}

/// Reads `response` (JSON, or the first message of an event stream) as an [`Answer`].
/// The error says what could not be read, and shows the body.
///
/// See the example in the [`testing`](crate::testing) module.
pub async fn answer<B>(response: Response<B>) -> Result<Answer, String>
where
    B: Body,
    B::Error: std::fmt::Display,
{
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("the body could not be read: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    let json = if text.trim_start().starts_with('{') {
        text.to_string()
    } else {
        // An event stream: the first `data:` line that is a JSON-RPC answer.
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .find(|d| d.contains("\"result\"") || d.contains("\"error\""))
            .ok_or_else(|| format!("no JSON-RPC answer in: {text}{}", session_hint(&text)))?
            .to_owned()
    };
    let message: Value =
        serde_json::from_str(&json).map_err(|e| format!("not JSON ({e}): {json}"))?;
    read(&message).ok_or_else(|| format!("not a JSON-RPC answer: {json}"))
}

/// What to do when a server refused a request for want of a session.
fn session_hint(text: &str) -> &'static str {
    match text.contains("Session ID is required") || text.contains("session") {
        true => {
            "\n(the server keeps sessions: serve it in stateless JSON mode for offline tests \
             (rmcp: `StreamableHttpServerConfig::default().with_legacy_session_mode(false)\
             .with_json_response(true)`), or send `testing::request(\"initialize\", params)` \
             first and copy its `Mcp-Session-Id` header onto every later request)"
        }
        false => "",
    }
}

fn read(message: &Value) -> Option<Answer> {
    if let Some(error) = message.get("error") {
        let code = error.get("code")?.as_i64()?;
        let text = error.get("message")?.as_str()?;
        if code == DenialFormat::POLICY_DENIED {
            return Some(Answer::Denied(denied(error.get("data")?, text)?));
        }
        return Some(Answer::Error {
            code,
            message: text.to_owned(),
        });
    }
    let result = message.get("result")?;
    match result
        .get("_meta")
        .and_then(|m| m.get(DenialFormat::META_KEY))
    {
        Some(details) => {
            let text = result.pointer("/content/0/text")?.as_str()?;
            Some(Answer::Denied(denied(details, text)?))
        }
        None => Some(Answer::Result(result.clone())),
    }
}

fn denied(details: &Value, text: &str) -> Option<Denial> {
    let field = |name: &str| details.get(name)?.as_str();
    Some(Denial::read(
        DenialKind::from_name(field("kind")?)?,
        field("tool")?,
        field("rule")?,
        text.strip_prefix(DenialFormat::PREFIX).unwrap_or(text),
        details.get("retryAfterSeconds").and_then(Value::as_u64),
    ))
}
