//! Session-scoped limits against rmcp's real server: a session id counts only if the
//! server issued it. Invented ids, against a stateless server and on the 2026-07-28 path
//! (which has no sessions), count per grant; issued sessions get their own budget.

mod servers;
mod support;

use reqwest::Method;
use serde_json::{Value, json};
use servers::demo::{Demo, open_session, raw};
use tower_mcp_policy::PolicyLayer;

/// Two echo calls per session a minute.
const POLICY: &str = r#"{"version":"1","default":"allow","tools":{"echo":{
    "limits":[{"counter":"per_session","window":"minute","max":2,"scope":"session"}]}}}"#;

fn layer() -> PolicyLayer {
    PolicyLayer::new(POLICY.parse::<tower_mcp_policy::Policy>().unwrap())
}

/// The JSON-RPC message of an answer, JSON or SSE.
async fn message(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("data: ").filter(|d| d.starts_with('{')))
        .unwrap_or(&text);
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn denied(message: &Value) -> bool {
    message["result"]["isError"] == json!(true)
        && message["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("[POLICY DENIED] Rate limit of 2 per minute")
}

fn echo(id: u32, meta: Option<Value>) -> String {
    let mut params = json!({"name": "echo", "arguments": {"text": "hi"}});
    if let Some(meta) = meta {
        params["_meta"] = meta;
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}).to_string()
}

#[tokio::test]
async fn invented_session_ids_against_a_stateless_server_count_per_grant() {
    let demo = Demo::start(layer(), true).await;
    let mut outcomes = Vec::new();
    for i in 0..5 {
        let session = format!("invented-{i}");
        let headers = [
            ("content-type", "application/json"),
            ("authorization", "Bearer mallory"),
            ("mcp-session-id", session.as_str()),
            ("mcp-protocol-version", "2025-06-18"),
        ];
        let answer = message(raw(Method::POST, &demo.url(), &headers, echo(i, None)).await).await;
        outcomes.push(denied(&answer));
    }
    assert_eq!(outcomes, [false, false, true, true, true]);
    assert_eq!(demo.executions.of("echo"), 2, "the server ran two calls");
    // Another grant has its own budget.
    let headers = [
        ("content-type", "application/json"),
        ("authorization", "Bearer alice"),
        ("mcp-session-id", "invented-0"),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let answer = message(raw(Method::POST, &demo.url(), &headers, echo(9, None)).await).await;
    assert!(!denied(&answer), "{answer}");
    assert_eq!(demo.executions.of("echo"), 3);
}

#[tokio::test]
async fn invented_session_ids_on_the_2026_07_28_path_count_per_grant() {
    // A stateful server: it issues sessions, but a 2026-07-28 request needs none.
    let demo = Demo::start(layer(), false).await;
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    let mut outcomes = Vec::new();
    for i in 0..5 {
        let session = format!("invented-{i}");
        let headers = [
            ("content-type", "application/json"),
            ("authorization", "Bearer mallory"),
            ("mcp-session-id", session.as_str()),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ];
        let body = echo(i, Some(meta.clone()));
        let answer = message(raw(Method::POST, &demo.url(), &headers, body).await).await;
        assert!(
            answer.get("error").is_none(),
            "rmcp runs the call: {answer}"
        );
        outcomes.push(denied(&answer));
    }
    assert_eq!(outcomes, [false, false, true, true, true]);
    assert_eq!(demo.executions.of("echo"), 2);
}

#[tokio::test]
async fn issued_sessions_have_their_own_budget_until_the_server_ends_them() {
    let demo = Demo::start(layer(), false).await;
    let (first, _) = open_session(&demo.url()).await;
    let (second, _) = open_session(&demo.url()).await;
    let call = |session: String, id: u32| {
        let url = demo.url();
        async move {
            let headers = [
                ("content-type", "application/json"),
                ("authorization", "Bearer alice"),
                ("mcp-session-id", session.as_str()),
                ("mcp-protocol-version", "2025-06-18"),
            ];
            message(raw(Method::POST, &url, &headers, echo(id, None)).await).await
        }
    };
    // One grant, two sessions: two budgets of two.
    for (session, id) in [(&first, 1), (&first, 2), (&second, 3), (&second, 4)] {
        let answer = call(session.clone(), id).await;
        assert!(!denied(&answer), "{answer}");
    }
    assert!(denied(&call(first.clone(), 5).await));
    assert!(denied(&call(second.clone(), 6).await));
    assert_eq!(demo.executions.of("echo"), 4);

    // The client ends the first session; its id no longer counts as a session.
    let headers = [
        ("mcp-session-id", first.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let ended = raw(Method::DELETE, &demo.url(), &headers, "").await;
    assert!(ended.status().is_success(), "{}", ended.status());
    let third = {
        let (third, _) = open_session(&demo.url()).await;
        third
    };
    let answer = call(third, 7).await;
    assert!(!denied(&answer), "a new session, a new budget: {answer}");
    assert_eq!(demo.executions.of("echo"), 5);
}
