//! The gateway in front of an MCP server nobody on this project wrote: the official
//! TypeScript reference server "everything" (`@modelcontextprotocol/server-everything`,
//! pinned in tests/ts/package-lock.json), driven by rmcp's client and by raw HTTP.
//!
//! Needs Node.js. The npm packages are installed on first use (`npm ci --prefix tests/ts`).

#[path = "../../tests/servers/mod.rs"]
mod servers;
#[path = "../../tests/support/mod.rs"]
mod support;

use servers::everything::Everything;

use servers::demo::{call, connect, open_session, params, raw, text};

use std::time::{Duration, Instant};

use serde_json::json;
use tower_mcp_policy::PolicyLayer;

async fn start_gateway(upstream: &str) -> String {
    let policy = support::repository().join("tests/fixtures/everything-policy.json");
    let layer = PolicyLayer::from_file(policy).unwrap();
    servers::gateway::start(layer, upstream).await
}

#[tokio::test]
async fn the_typescript_reference_server_behind_the_gateway() {
    let server = Everything::start().await;
    let client = connect(start_gateway(&server.url).await, "agent-1").await;

    let names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(
        names.contains(&"echo".into()) && names.contains(&"get-sum".into()),
        "{names:?}"
    );
    assert!(
        !names.contains(&"get-env".into()),
        "the hidden tool is listed: {names:?}"
    );

    let sum = call(&client, "get-sum", json!({"a": 2, "b": 3})).await;
    assert_eq!(text(&sum), "The sum of 2 and 3 is 5.");

    let denied = call(&client, "get-sum", json!({"a": 1000, "b": 1})).await;
    assert_eq!(denied["isError"], true);
    assert_eq!(
        text(&denied),
        "[POLICY DENIED] Sums above 100 need approval."
    );

    for i in 0..3 {
        let echo = call(&client, "echo", json!({"message": format!("hi {i}")})).await;
        assert_eq!(text(&echo), format!("Echo: hi {i}"));
    }
    let limited = call(&client, "echo", json!({"message": "again"})).await;
    assert_eq!(limited["isError"], true);
    assert!(
        text(&limited)
            .starts_with("[POLICY DENIED] Rate limit of 3 per minute reached for \"echo\"."),
        "{limited}"
    );

    let hidden = client.call_tool(params("get-env", json!({}))).await;
    assert!(
        format!("{hidden:?}").contains("Unknown tool: get-env"),
        "{hidden:?}"
    );

    client.cancel().await.unwrap();
}

#[tokio::test]
async fn sse_progress_streams_through_the_gateway_as_it_happens() {
    let server = Everything::start().await;
    let url = start_gateway(&server.url).await;
    let (session, _) = open_session(&url).await;
    let headers = [
        ("content-type", "application/json"),
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "trigger-long-running-operation", "arguments": {"duration": 1.5, "steps": 3},
        "_meta": {"progressToken": "p1"}}});
    let started = Instant::now();
    let mut response = raw(reqwest::Method::POST, &url, &headers, call.to_string()).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    let mut first_progress = None;
    while let Some(chunk) = response.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if first_progress.is_none() && seen.contains("notifications/progress") {
            first_progress = Some(started.elapsed());
        }
        if seen.contains("Long running operation completed") {
            break;
        }
    }
    let done = started.elapsed();
    let first_progress = first_progress.expect("progress notifications arrive");
    assert_eq!(seen.matches("notifications/progress").count(), 3, "{seen}");
    assert!(
        done - first_progress >= Duration::from_millis(600),
        "the first progress event came {first_progress:?} in, the result {done:?}: the stream was buffered"
    );
}

/// MCP 2025-11-25 tasks through the gateway, with the official TypeScript SDK client: a
/// task-augmented call, polled and read by the client that made it; another client,
/// with another credential, gets the layer's unknown-task answer for every request about
/// it and an empty task list.
#[tokio::test]
async fn a_typescript_clients_task_is_its_own() {
    let server = Everything::start().await;
    let url = start_gateway(&server.url).await;
    let out = servers::demo::node_script(
        "tasks.mjs",
        vec![url, "owner-token".into(), "other-token".into()],
    )
    .await;
    let created = out
        .iter()
        .find_map(|line| line["created"].as_str())
        .unwrap_or_else(|| panic!("no task created: {out:?}"))
        .to_owned();
    for method in ["tasks/get", "tasks/result", "tasks/cancel"] {
        let attempt = out
            .iter()
            .find(|line| line["other"] == method)
            .unwrap_or_else(|| panic!("no {method} attempt: {out:?}"));
        // The layer's answer (the server words its own differently), so the server
        // never saw the request.
        assert_eq!(
            attempt["error"],
            json!({"code": -32602, "message": format!("MCP error -32602: unknown task: {created}")}),
            "{out:?}"
        );
    }
    let other_list = out.iter().find_map(|line| line.get("otherList")).unwrap();
    assert_eq!(other_list, &json!([]), "{out:?}");
    let result = out
        .iter()
        .find_map(|line| line.get("result"))
        .unwrap_or_else(|| panic!("the owner gets the result: {out:?}"));
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("policy layers"),
        "{result}"
    );
    let owner_list = out.iter().find_map(|line| line.get("ownerList")).unwrap();
    assert_eq!(owner_list, &json!([created]), "{out:?}");
}
