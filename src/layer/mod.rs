//! The tower middleware: [`PolicyLayer`](crate::PolicyLayer) and
//! [`PolicyService`](crate::PolicyService), and what they answer with.
//!
//! Add it in front of an MCP server that speaks Streamable HTTP. For every POST it reads
//! the body (up to a limit), decodes the JSON-RPC message or batch, and asks the policy
//! about every `tools/call`:
//!
//! * allowed: the request is forwarded unchanged (the inner service gets exactly the
//!   bytes the policy read);
//! * denied: nothing is forwarded, and the agent gets an answer it can read:
//!   by default HTTP 200 with a `CallToolResult` whose text is
//!   `[POLICY DENIED] <message>` and `isError: true` (see [`DenialFormat`](crate::DenialFormat));
//! * not understood: HTTP 400, 413 or 415 with a JSON-RPC error, never forwarded.
//!
//! GET (the SSE stream), DELETE, HEAD and OPTIONS pass through, but never with a body.
//! When the policy hides tools, the answers that may carry a tool list (to a POST
//! holding a `tools/list`, JSON whole or SSE event by event, and the GET stream) are
//! filtered so hidden tools never show.
//!
//! # Example
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use tower_mcp_policy::PolicyLayer;
//!
//! # async fn mcp() -> &'static str { "" }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app: Router = Router::new()
//!     .route("/mcp", post(mcp))
//!     .layer(PolicyLayer::from_file("policy.json")?);
//! # Ok(()) }
//! ```
//!
//! # Testing an application offline
//!
//! ```
//! use tower_mcp_policy::FakeClock;
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceExt, service_fn};
//! use tower_mcp_policy::{PolicyLayer, layer::PolicyBody};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let policy = r#"{"version":"1","default":"deny","tools":{"get_price":{}}}"#.parse().unwrap();
//! let server = service_fn(|_req: http::Request<PolicyBody>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from_static(
//!         br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#))))
//! });
//! let service = tower::ServiceBuilder::new()
//!     .layer(PolicyLayer::with_clock(std::sync::Arc::new(policy), FakeClock::new()))
//!     .service(server);
//!
//! let request = http::Request::post("/mcp")
//!     .header("content-type", "application/json")
//!     .body(Full::new(bytes::Bytes::from_static(
//!         br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"transfer"}}"#)))
//!     .unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert!(std::str::from_utf8(&body).unwrap().contains("[POLICY DENIED]"));
//! # }
//! ```

pub(crate) mod answer;
mod approve;
mod body;
mod bounded;
pub(crate) mod config;
mod deadline;
#[cfg(feature = "tokio")]
mod elicit;
mod filter;
mod future;
mod gate;
mod inflight;
#[allow(clippy::module_inception)]
pub(crate) mod layer;
mod params;
mod refund;
mod report;
mod request;
pub(crate) mod service;
mod sessions;
mod sse;
mod tasks;

pub use answer::Outcome;
pub use body::{PolicyBody, ResponseBody};
pub use future::ResponseFuture;
#[cfg(test)]
mod sizes {
    /// What each request moves from step to step stays small: the gate's next step is
    /// moved through the response future's states (a state of a few hundred bytes more
    /// costs a copy at each move).
    #[test]
    fn what_a_request_moves_around_stays_small() {
        type B = http_body_util::Full<bytes::Bytes>;
        let next = std::mem::size_of::<super::gate::Next<B, crate::counter::MemoryCounters>>();
        let forwarded = std::mem::size_of::<super::gate::Forwarded>();
        let answer = std::mem::size_of::<http::Response<super::body::ResponseBody<B>>>();
        // The largest of the next steps is a forward or an answer, never a wait for
        // the store (boxed: it keeps the whole decoded request).
        assert!(next <= forwarded.max(answer) + 16, "Next: {next} bytes");
        assert!(forwarded <= 512, "Forwarded: {forwarded} bytes");
    }
}
