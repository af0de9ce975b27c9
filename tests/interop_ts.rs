//! The demo server driven by the official TypeScript SDK client (`@modelcontextprotocol/sdk`,
//! pinned in tests/ts/package-lock.json): denials reach the agent as tool results it can
//! read, not as transport errors. Needs Node.js.

mod servers;
mod support;

use serde_json::{Value, json};
use servers::demo::Demo;

/// Runs tests/ts/client.mjs against `url` and returns one JSON value per step.
async fn ts_client(url: String, token: &str, steps: Value) -> Vec<Value> {
    servers::demo::node_script("client.mjs", vec![url, token.to_owned(), steps.to_string()]).await
}

async fn official_client_reads_every_answer(json_mode: bool) {
    let demo = Demo::example(json_mode).await;
    let steps = json!([
        {"list": true},
        {"call": "get_price", "args": {"symbol": "BTCUSD"}},
        {"call": "transfer", "args": {"amount": 5000, "to": "mallory"}},
        {"call": "delete_account", "args": {"account": "alice"}},
        {"call": "withdraw_all", "args": {}},
    ]);
    let out = ts_client(demo.url(), "ts-token", steps).await;
    assert_eq!(out.len(), 5, "{out:?}");

    assert_eq!(
        out[0]["tools"],
        json!([
            "binance_us_close_listen_key",
            "echo",
            "get_price",
            "transfer"
        ])
    );
    assert_eq!(
        out[1]["result"]["content"][0]["text"],
        r#"get_price ran with {"symbol":"BTCUSD"}"#
    );

    let denied = &out[2]["result"];
    assert_eq!(denied["isError"], true, "{out:?}");
    assert_eq!(
        denied["content"][0]["text"],
        "[POLICY DENIED] Transfers above 1000 need human approval."
    );
    assert_eq!(
        denied["_meta"]["tower-mcp-policy/denial"]["rule"],
        "/tools/transfer/deny_if/0"
    );

    // A hidden tool is an unknown tool to the SDK too.
    assert_eq!(out[3]["error"]["code"], -32602, "{out:?}");
    assert!(
        out[3]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Unknown tool: delete_account")
    );

    assert_eq!(
        out[4]["result"]["content"][0]["text"],
        "[POLICY DENIED] Tool \"withdraw_all\" is not allowed by this policy."
    );
    assert_eq!(
        demo.executions.of("transfer") + demo.executions.of("delete_account"),
        0
    );
    assert_eq!(demo.executions.of("get_price"), 1);
}

#[tokio::test]
async fn the_typescript_client_over_sse() {
    official_client_reads_every_answer(false).await;
}

#[tokio::test]
async fn the_typescript_client_over_json() {
    official_client_reads_every_answer(true).await;
}

#[tokio::test]
async fn the_typescript_client_is_rate_limited_with_a_readable_hint() {
    let demo = Demo::example(true).await;
    let mut steps: Vec<Value> = (0..31)
        .map(|_| json!({"call": "binance_us_close_listen_key", "args": {"listenKey": "k"}}))
        .collect();
    steps.push(json!({"call": "get_price", "args": {"symbol": "ETH"}}));
    let out = ts_client(demo.url(), "ts-token", Value::Array(steps)).await;
    assert!(
        out[..30].iter().all(|o| o["result"]["isError"] == false),
        "{out:?}"
    );
    let limited = &out[30]["result"];
    assert_eq!(limited["isError"], true);
    let text = limited["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("[POLICY DENIED] Rate limit of 30 per minute reached for \"binance_us_close_listen_key\". Try again in "), "{text}");
    assert_eq!(
        out[31]["result"]["isError"], false,
        "other tools are unaffected"
    );
    assert_eq!(demo.executions.of("binance_us_close_listen_key"), 30);
}

/// The demo under a policy whose `transfer` needs a person's approval, answering with
/// event streams; the TypeScript client (2025-11-25) declares elicitation and answers
/// `answer`.
async fn approval_in_the_typescript_client(answer: &str) -> (Vec<Value>, Demo) {
    let policy: tower_mcp_policy::Policy = r#"{"version":"1","default":"allow","tools":{
        "transfer":{"require_approval":{"reason":"Transfers need a person's approval."}}}}"#
        .parse()
        .unwrap();
    let layer = tower_mcp_policy::PolicyLayer::new(policy)
        .approvals_page("https://gateway.example/approvals");
    let demo = Demo::start(layer, false).await;
    let steps = json!([
        {"call": "transfer", "args": {"amount": 250, "to": "bob"}},
        {"call": "get_price", "args": {"symbol": "BTCUSD"}},
    ]);
    let args = vec![
        demo.url(),
        "ts-token".to_owned(),
        steps.to_string(),
        answer.to_owned(),
    ];
    let out = servers::demo::node_script("client.mjs", args).await;
    (out, demo)
}

#[tokio::test]
async fn the_typescript_clients_user_approves_the_call_over_its_stream() {
    let (out, demo) = approval_in_the_typescript_client("accept").await;
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(
        out[0]["result"]["content"][0]["text"], r#"transfer ran with {"amount":250.0,"to":"bob"}"#,
        "{out:?}"
    );
    let shown = out[2]["elicited"].as_array().unwrap();
    assert_eq!(shown.len(), 1, "only the transfer asks: {out:?}");
    let shown = shown[0].as_str().unwrap();
    assert!(
        shown.contains("Transfers need a person's approval.") && shown.contains("\"amount\": 250"),
        "{shown}"
    );
    // The tool ran once (with the arguments its answer names).
    assert_eq!(demo.executions.of("transfer"), 1);
}

#[tokio::test]
async fn a_call_the_typescript_clients_user_declines_never_runs() {
    let (out, demo) = approval_in_the_typescript_client("decline").await;
    assert_eq!(out.len(), 3, "{out:?}");
    let denied = &out[0]["result"];
    assert_eq!(denied["isError"], true, "{out:?}");
    let text = denied["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("declined in the client"), "{text}");
    assert_eq!(
        denied["_meta"]["tower-mcp-policy/denial"]["kind"],
        "approval"
    );
    // The next call (no approval needed) still runs.
    assert_eq!(
        out[1]["result"]["content"][0]["text"],
        r#"get_price ran with {"symbol":"BTCUSD"}"#
    );
    assert_eq!(
        demo.executions.of("transfer"),
        0,
        "the declined call never ran"
    );
    assert_eq!(demo.executions.of("get_price"), 1);
}

#[tokio::test]
async fn a_typescript_client_that_opens_links_is_sent_to_the_approvals_page() {
    let (out, demo) = approval_in_the_typescript_client("url").await;
    assert_eq!(out.len(), 3, "{out:?}");
    // The SDK reads it as its UrlElicitationRequiredError.
    let error = &out[0]["error"];
    assert_eq!(error["code"], -32042, "{out:?}");
    let elicitation = &error["data"]["elicitations"][0];
    assert_eq!(elicitation["mode"], "url");
    let id = elicitation["elicitationId"].as_str().unwrap();
    assert_eq!(
        elicitation["url"],
        format!("https://gateway.example/approvals#{id}")
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("Transfers need a person's approval."),
        "{out:?}"
    );
    assert_eq!(out[2]["elicited"], json!([]), "no form was shown");
    assert_eq!(demo.executions.of("transfer"), 0);
}
