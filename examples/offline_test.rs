//! How an application unit-tests its own MCP service under a policy: no network, no
//! sleeping. `tower::ServiceExt::oneshot` drives the stack in-process and the crate's
//! `FakeClock` stands in for time.
//!
//! `cargo run --example offline_test` runs the checks below as a program;
//! `cargo test --example offline_test` (part of `cargo test --all-features`) runs them
//! as tests.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_mcp_policy::FakeClock;
use tower_mcp_policy::layer::{PolicyBody, ResponseBody};
use tower_mcp_policy::{Policy, PolicyLayer};

/// Stands in for your MCP server: answers every tools/call with "done".
async fn my_mcp_server(request: Request<PolicyBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = request.into_body().collect().await?.to_bytes();
    let message: Value = serde_json::from_slice(&body).unwrap_or_default();
    let answer = json!({"jsonrpc": "2.0", "id": message["id"], "result": {"content": [{"type": "text", "text": "done"}]}});
    Ok(Response::new(Full::new(Bytes::from(answer.to_string()))))
}

const POLICY: &str = r#"{ "version": "1", "default": "deny",
  "tools": { "binance_us_close_listen_key": {
      "limits": [{ "counter": "binance_us_close_listen_key_rate", "window": "minute", "max": 30, "scope": "grant" }] } } }"#;

fn tool_call(tool: &str, credential: &str) -> Request<Full<Bytes>> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}});
    Request::post("/mcp")
        .header("content-type", "application/json")
        .header("authorization", credential)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The text of the tool result the agent would see.
async fn result_text<S>(service: &S, request: Request<Full<Bytes>>) -> String
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<ResponseBody<Full<Bytes>>>,
            Error = Infallible,
        > + Clone,
{
    let response = service.clone().oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn run_checks() {
    let policy: Policy = POLICY.parse().expect("the policy loads");
    let clock = FakeClock::new();
    let service = ServiceBuilder::new()
        .layer(PolicyLayer::with_clock(Arc::new(policy), clock.clone()))
        .service(service_fn(my_mcp_server));

    // 30 calls in the same instant are fine...
    for _ in 0..30 {
        assert_eq!(
            result_text(
                &service,
                tool_call("binance_us_close_listen_key", "Bearer alice")
            )
            .await,
            "done"
        );
    }
    // ...the 31st is denied with a retry hint...
    let denied = result_text(
        &service,
        tool_call("binance_us_close_listen_key", "Bearer alice"),
    )
    .await;
    assert_eq!(
        denied,
        "[POLICY DENIED] Rate limit of 30 per minute reached for \"binance_us_close_listen_key\". Try again in 2s."
    );
    // ...another credential is unaffected...
    assert_eq!(
        result_text(
            &service,
            tool_call("binance_us_close_listen_key", "Bearer bob")
        )
        .await,
        "done"
    );
    // ...and 2 seconds later (on the fake clock) alice may call again.
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        result_text(
            &service,
            tool_call("binance_us_close_listen_key", "Bearer alice")
        )
        .await,
        "done"
    );
    // Everything else is denied by default.
    let other = result_text(&service, tool_call("transfer", "Bearer alice")).await;
    assert_eq!(
        other,
        "[POLICY DENIED] Tool \"transfer\" is not allowed by this policy."
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    run_checks().await;
    println!(
        "offline checks passed: 30 calls allowed, the 31st limited, other grants unaffected, retry after 2s"
    );
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_policy_holds_offline() {
        super::run_checks().await;
    }
}
