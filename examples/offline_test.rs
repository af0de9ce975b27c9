//! How an application unit-tests its own MCP service under a policy: a real rmcp
//! server, no network, no sleeping. `tower::ServiceExt::oneshot` drives the stack
//! in-process, `tower_mcp_policy::testing` builds the requests and reads the answers,
//! and the crate's `FakeClock` stands in for time.
//!
//! `cargo run --example offline_test` runs the checks below as a program;
//! `cargo test --example offline_test` (part of `cargo test --all-features`) runs them
//! as tests.

use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::StreamableHttpService;
use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_mcp_policy::testing::{self, Answer};
use tower_mcp_policy::{FakeClock, Policy, PolicyLayer};

/// Your MCP server (here, two tools).
#[derive(Clone)]
struct Exchange {
    #[expect(dead_code, reason = "read by the code #[tool_handler] generates")]
    tool_router: ToolRouter<Self>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Key {
    /// The key to close.
    key: String,
}

#[tool_router]
impl Exchange {
    #[tool(description = "Close a listen key.")]
    fn close_listen_key(&self, Parameters(args): Parameters<Key>) -> String {
        format!("closed {}", args.key)
    }

    #[tool(description = "Transfer funds.")]
    fn transfer(&self) -> String {
        "sent".to_owned()
    }
}

#[tool_handler]
impl ServerHandler for Exchange {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// rmcp's Streamable HTTP service, stateless and answering JSON: no handshake needed.
fn my_mcp_service() -> StreamableHttpService<Exchange, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true);
    StreamableHttpService::new(
        || {
            Ok(Exchange {
                tool_router: Exchange::tool_router(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

const POLICY: &str = r#"{ "version": "1", "default": "deny",
  "tools": { "close_listen_key": {
      "limits": [{ "counter": "close_rate", "window": "minute", "max": 30, "scope": "grant" }] } } }"#;

async fn run_checks() {
    // The whole test, in about 15 lines:
    let clock = FakeClock::new();
    let policy: Policy = POLICY.parse().expect("the policy loads");
    let service = PolicyLayer::with_clock(policy, clock.clone()).layer(my_mcp_service());
    let call = |tool: &str, caller: &str| {
        let request = testing::tool_call(tool, json!({"key": "k1"}));
        let service = service.clone();
        let request = testing::as_caller(request, caller);
        async move {
            testing::answer(service.oneshot(request).await.unwrap())
                .await
                .unwrap()
        }
    };
    for _ in 0..30 {
        assert!(matches!(
            call("close_listen_key", "Bearer alice").await,
            Answer::Result(_)
        ));
    }
    let Answer::Denied(denied) = call("close_listen_key", "Bearer alice").await else {
        panic!("the 31st call in a minute passed");
    };
    assert_eq!(
        (denied.kind().as_str(), denied.rule()),
        ("limit", "/tools/close_listen_key/limits/0")
    );
    assert_eq!(denied.retry_after(), Some(2));
    assert!(matches!(
        call("close_listen_key", "Bearer bob").await,
        Answer::Result(_)
    ));
    clock.advance(Duration::from_secs(2));
    assert!(matches!(
        call("close_listen_key", "Bearer alice").await,
        Answer::Result(_)
    ));

    // The server's own result comes through untouched.
    let Answer::Result(result) = call("close_listen_key", "Bearer carol").await else {
        panic!("not a result");
    };
    assert_eq!(result["content"][0]["text"], "closed k1");
    // Everything else is denied by default, and never reaches the server.
    let Answer::Denied(denied) = call("transfer", "Bearer alice").await else {
        panic!("transfer ran");
    };
    assert_eq!(
        denied.message(),
        "Tool \"transfer\" is not allowed by this policy."
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
    use super::*;

    /// A server that keeps sessions refuses a call without one; the error says what
    /// to do.
    #[tokio::test]
    async fn a_server_that_wants_a_session_gets_a_hint() {
        let stateful: StreamableHttpService<Exchange, LocalSessionManager> =
            StreamableHttpService::new(
                || {
                    Ok(Exchange {
                        tool_router: Exchange::tool_router(),
                    })
                },
                Arc::new(LocalSessionManager::default()),
                StreamableHttpServerConfig::default(),
            );
        let policy: Policy = POLICY.parse().unwrap();
        let service = PolicyLayer::new(policy).layer(stateful);
        let request = testing::tool_call("close_listen_key", json!({"key": "k"}));
        let error = testing::answer(service.oneshot(request).await.unwrap())
            .await
            .expect_err("refused for want of a session");
        assert!(error.contains("stateless JSON mode"), "{error}");
        assert!(error.contains("Mcp-Session-Id"), "{error}");
    }

    #[tokio::test]
    async fn the_policy_holds_offline() {
        super::run_checks().await;
    }
}
