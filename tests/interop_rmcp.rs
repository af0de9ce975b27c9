//! The demo server driven by rmcp's Streamable HTTP client: a real MCP client over
//! loopback, in both SSE and JSON response modes.

mod servers;
mod support;

use std::sync::Arc;

use serde_json::json;
use servers::demo::{Demo, call, connect, params, text};
use tower_mcp_policy::FakeClock;
use tower_mcp_policy::{Policy, PolicyLayer};

async fn the_product_works(json: bool) {
    let demo = Demo::example(json).await;
    let client = connect(demo.url(), "alice-token").await;

    // tools/list never shows the hidden tool.
    assert_eq!(
        servers::demo::tool_names(&client).await,
        servers::demo::VISIBLE_TOOLS
    );

    // Allowed calls run and return their results.
    let result = call(&client, "get_price", json!({"symbol": "BTCUSD"})).await;
    assert_eq!(text(&result), r#"get_price ran with {"symbol":"BTCUSD"}"#);
    assert_eq!(result["isError"], json!(false));
    let result = call(&client, "transfer", json!({"amount": 1000, "to": "bob"})).await;
    assert_eq!(
        text(&result),
        r#"transfer ran with {"amount":1000.0,"to":"bob"}"#
    );
    assert_eq!(demo.executions.of("transfer"), 1);

    // A denied transfer comes back as a tool error the model can read.
    let result = call(
        &client,
        "transfer",
        json!({"amount": 5000, "to": "mallory"}),
    )
    .await;
    assert_eq!(result["isError"], json!(true));
    assert_eq!(
        text(&result),
        "[POLICY DENIED] Transfers above 1000 need human approval."
    );
    let meta = &result["_meta"]["tower-mcp-policy/denial"];
    assert_eq!(meta["rule"], "/tools/transfer/deny_if/0");
    assert_eq!(meta["tool"], "transfer");
    assert_eq!(
        demo.executions.of("transfer"),
        1,
        "the denied transfer never ran"
    );

    // Everything not named is denied by default.
    let result = call(&client, "withdraw_all", json!({})).await;
    assert_eq!(
        text(&result),
        "[POLICY DENIED] Tool \"withdraw_all\" is not allowed by this policy."
    );

    // The hidden tool is an unknown tool, exactly as if the server did not have it.
    let err = client
        .call_tool(params("delete_account", json!({"account": "alice"})))
        .await
        .expect_err("a hidden tool is unknown");
    let shown = format!("{err:?}");
    assert!(
        shown.contains("-32602") && shown.contains("Unknown tool: delete_account"),
        "{shown}"
    );
    assert_eq!(demo.executions.of("delete_account"), 0);

    client.cancel().await.unwrap();
}

#[tokio::test]
async fn the_demo_server_answers_a_real_client_over_sse() {
    the_product_works(false).await;
}

#[tokio::test]
async fn the_demo_server_answers_a_real_client_over_json() {
    the_product_works(true).await;
}

#[tokio::test]
async fn the_31st_rapid_call_is_limited_per_credential() {
    let policy: Arc<Policy> = Arc::new(Policy::from_file(servers::demo::example_policy()).unwrap());
    let clock = FakeClock::new();
    let demo = Demo::start(PolicyLayer::with_clock(policy, clock.clone()), false).await;
    let alice = connect(demo.url(), "alice-token").await;
    let bob = connect(demo.url(), "bob-token").await;
    let args = || json!({"listenKey": "k1"});

    for i in 1..=30 {
        let result = call(&alice, "binance_us_close_listen_key", args()).await;
        assert_eq!(result["isError"], json!(false), "call {i}: {result}");
    }
    let limited = call(&alice, "binance_us_close_listen_key", args()).await;
    assert_eq!(limited["isError"], json!(true));
    assert_eq!(
        text(&limited),
        "[POLICY DENIED] Rate limit of 30 per minute reached for \"binance_us_close_listen_key\". Try again in 2s."
    );
    let meta = &limited["_meta"]["tower-mcp-policy/denial"];
    assert_eq!(meta["retryAfterSeconds"], json!(2));
    assert_eq!(meta["rule"], "/tools/binance_us_close_listen_key/limits/0");
    assert_eq!(demo.executions.of("binance_us_close_listen_key"), 30);

    // Another credential has its own budget.
    let result = call(&bob, "binance_us_close_listen_key", args()).await;
    assert_eq!(result["isError"], json!(false));

    // After the advertised wait, alice may call again.
    clock.advance(std::time::Duration::from_secs(2));
    let result = call(&alice, "binance_us_close_listen_key", args()).await;
    assert_eq!(result["isError"], json!(false));
    assert_eq!(demo.executions.of("binance_us_close_listen_key"), 32);

    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
}
