//! Raw HTTP against the demo server: every bad input is answered as specified, and the
//! tool never runs. The server runs in stateless JSON mode, where a well-formed
//! `tools/call` executes without a session, so "never ran" is a real observation
//! (each test shows its control request does run).

mod servers;
mod support;

use reqwest::Method;
use serde_json::{Value, json};
use servers::demo::Demo;

struct Reply {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn send(
    demo: &Demo,
    method: Method,
    headers: &[(&str, &str)],
    body: impl Into<Vec<u8>>,
) -> Reply {
    let mut request = reqwest::Client::new()
        .request(method, demo.url())
        .header("accept", "application/json, text/event-stream")
        .body(body.into());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.bytes().await.unwrap().to_vec();
    Reply {
        status,
        content_type,
        body,
    }
}

const JSON: (&str, &str) = ("content-type", "application/json");

async fn post(demo: &Demo, body: impl Into<Vec<u8>>) -> Reply {
    send(demo, Method::POST, &[JSON], body).await
}

fn call(id: u32, tool: &str, args: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}}).to_string()
}

#[track_caller]
fn assert_error(reply: &Reply, status: u16, code: i64, needle: &str) {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.content_type, "application/json");
    let body = reply.json();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["error"]["code"], json!(code), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(needle),
        "{message:?} should contain {needle:?}"
    );
}

/// The control: a well-formed allowed call runs.
async fn control(demo: &Demo) {
    let before = demo.executions.of("echo");
    let reply = post(demo, call(99, "echo", json!({"text": "hi"}))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["result"]["content"][0]["text"],
        r#"echo ran with {"text":"hi"}"#
    );
    assert_eq!(demo.executions.of("echo"), before + 1);
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let demo = Demo::example(true).await;
    control(&demo).await;
    let big = call(1, "echo", json!({"text": "x".repeat(4 * 1024 * 1024)}));
    assert_error(
        &post(&demo, big).await,
        413,
        -32600,
        "larger than the limit of 4194304 bytes",
    );
    assert_eq!(demo.executions.of("echo"), 1);
}

#[tokio::test]
async fn encodings_and_media_types_the_layer_cannot_read_are_415() {
    let demo = Demo::example(true).await;
    control(&demo).await;
    let body = call(1, "echo", json!({"text": "zipped"}));
    for encoding in ["gzip", "br", "deflate", "identity, gzip"] {
        let reply = send(
            &demo,
            Method::POST,
            &[JSON, ("content-encoding", encoding)],
            body.clone(),
        )
        .await;
        assert_error(&reply, 415, -32600, "unsupported Content-Encoding");
    }
    let reply = send(
        &demo,
        Method::POST,
        &[JSON, ("content-encoding", "identity")],
        body.clone(),
    )
    .await;
    assert_eq!(reply.status, 200, "identity is no encoding");
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin1",
    ] {
        let reply = send(
            &demo,
            Method::POST,
            &[("content-type", content_type)],
            body.clone(),
        )
        .await;
        assert_error(&reply, 415, -32600, "unsupported Content-Type");
    }
    let reply = send(&demo, Method::POST, &[], body.clone()).await;
    assert_error(&reply, 415, -32600, "missing Content-Type");
    assert_eq!(demo.executions.of("echo"), 2);
}

#[tokio::test]
async fn bodies_that_are_not_json_rpc_are_400() {
    let demo = Demo::example(true).await;
    control(&demo).await;
    let echo = call(1, "echo", json!({"text": "a"}));
    let cases: Vec<(Vec<u8>, i64, &str)> = vec![
        (b"not json".to_vec(), -32700, "expected ident"),
        (b"".to_vec(), -32700, "EOF while parsing"),
        (format!("{echo}{echo}").into_bytes(), -32700, "trailing characters"),
        (format!("{echo} x").into_bytes(), -32700, "trailing characters"),
        (br#"{"hello":"world"}"#.to_vec(), -32600, "jsonrpc"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#.to_vec(), -32600, "params.name of tools/call to be a string"),
        (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"\xff\"}}}".to_vec(), -32700, "not valid UTF-8"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"\ud800\u0041"}}}"#.to_vec(), -32700, "surrogate"),
        (br#"[]"#.to_vec(), -32600, "empty batch"),
    ];
    for (body, code, needle) in cases {
        let reply = post(&demo, body.clone()).await;
        assert_error(&reply, 400, code, needle);
        // The id is echoed only when it was read before the error.
        let expected_id = if needle.contains("params.name") {
            json!(1)
        } else {
            Value::Null
        };
        assert_eq!(reply.json()["id"], expected_id, "{needle}");
    }
    assert_eq!(demo.executions.total(), 1, "nothing but the control ran");
}

#[tokio::test]
async fn duplicate_keys_are_400_wherever_they_would_change_the_meaning() {
    let demo = Demo::example(true).await;
    control(&demo).await;
    let cases = [
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"get_price","name":"transfer","arguments":{"symbol":"x","amount":5000,"to":"m"}}}"#,
            "duplicate key \"name\" in params",
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/list","method":"tools/call","params":{"name":"echo","arguments":{"text":"a"}}}"#,
            "duplicate key \"method\"",
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"transfer","arguments":{"amount":5,"to":"m","amount":5000}}}"#,
            "duplicate key \"amount\"",
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"arguments":{"amount":5,"amount":5000,"to":"m"},"name":"transfer"}}"#,
            "duplicate key \"amount\"",
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","n\u0061me":"transfer","arguments":{"text":"a"}}}"#,
            "duplicate key \"name\"",
        ),
    ];
    for (body, needle) in cases {
        let reply = post(&demo, body).await;
        assert_error(&reply, 400, -32600, needle);
    }
    assert_eq!(demo.executions.total(), 1);
}

#[tokio::test]
async fn escaped_names_are_judged_as_what_they_decode_to() {
    let demo = Demo::example(true).await;
    control(&demo).await;
    let body = r#"{"jsonrpc":"2.0","id":5,"method":"tools\/call","params":{"name":"\u0074ransfer","arguments":{"\u0061mount":5000,"to":"m"}}}"#;
    let reply = post(&demo, body).await;
    assert_eq!(reply.status, 200);
    let answer = reply.json();
    assert_eq!(answer["id"], 5);
    assert_eq!(
        answer["result"]["content"][0]["text"],
        "[POLICY DENIED] Transfers above 1000 need human approval."
    );
    let body = r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"d\u0065lete_account","arguments":{"account":"a"}}}"#;
    assert_error(
        &post(&demo, body).await,
        200,
        -32602,
        "Unknown tool: delete_account",
    );
    assert_eq!(
        demo.executions.of("transfer") + demo.executions.of("delete_account"),
        0
    );
}

#[tokio::test]
async fn routing_headers_must_agree_with_the_body() {
    let demo = Demo::example(true).await;
    control(&demo).await;
    let echo = call(7, "echo", json!({"text": "a"}));
    let mismatches: [&[(&str, &str)]; 5] = [
        &[("mcp-method", "tools/list")],
        &[("mcp-name", "get_price")],
        &[
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?Z2V0X3ByaWNl?="),
        ],
        &[("mcp-name", "=?base64?not base64?=")],
        &[("mcp-method", "tools/call"), ("mcp-method", "tools/call")],
    ];
    for headers in mismatches {
        let mut all = vec![JSON];
        all.extend_from_slice(headers);
        let reply = send(&demo, Method::POST, &all, echo.clone()).await;
        assert_eq!(reply.status, 400, "{headers:?}");
        let code = reply.json()["error"]["code"].as_i64().unwrap();
        assert!(code == -32020 || code == -32600, "{headers:?}: {code}");
    }
    assert_eq!(demo.executions.of("echo"), 1, "no mismatched request ran");
    // Agreeing headers (plain and Base64-wrapped) pass.
    let agree = [
        JSON,
        ("mcp-method", "tools/call"),
        ("mcp-name", "=?base64?ZWNobw==?="),
    ];
    assert_eq!(
        send(&demo, Method::POST, &agree, echo.clone()).await.status,
        200
    );
    assert_eq!(demo.executions.of("echo"), 2);
    let batch = format!("[{echo}]");
    let reply = send(
        &demo,
        Method::POST,
        &[JSON, ("mcp-method", "tools/call")],
        batch,
    )
    .await;
    assert_error(&reply, 400, -32020, "cannot describe a batch");
}

#[tokio::test]
async fn methods_other_than_post_never_carry_an_unread_body() {
    let demo = Demo::example(true).await;
    control(&demo).await;
    let transfer = call(8, "transfer", json!({"amount": 5000, "to": "m"}));
    // PUT and PATCH are read and judged like POST.
    for method in [Method::PUT, Method::PATCH] {
        let reply = send(&demo, method, &[JSON], transfer.clone()).await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.json()["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .starts_with("[POLICY DENIED]")
        );
    }
    // GET and DELETE with a body are refused.
    for method in [Method::GET, Method::DELETE, Method::OPTIONS] {
        let reply = send(&demo, method.clone(), &[JSON], transfer.clone()).await;
        assert_error(
            &reply,
            400,
            -32600,
            &format!("a {method} request must not carry a body"),
        );
    }
    assert_eq!(demo.executions.of("transfer"), 0);
}

#[tokio::test]
async fn a_batch_with_a_denied_call_runs_nothing() {
    let demo = Demo::example(true).await;
    control(&demo).await;
    let batch = format!(
        "[{},{},{}]",
        call(1, "echo", json!({"text": "a"})),
        json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}}),
        call(2, "transfer", json!({"amount": 5000, "to": "m"})),
    );
    let reply = post(&demo, batch).await;
    assert_eq!(reply.status, 200);
    let answers = reply.json();
    let answers = answers.as_array().expect("one answer per request");
    assert_eq!(answers.len(), 2, "the notification gets no answer");
    assert_eq!(answers[0]["id"], 1);
    assert_eq!(answers[0]["error"]["code"], -32051);
    assert_eq!(
        answers[0]["error"]["message"],
        "Not executed: another call in the same batch was denied by policy."
    );
    assert_eq!(answers[1]["id"], 2);
    assert_eq!(answers[1]["result"]["isError"], true);
    assert_eq!(demo.executions.total(), 1, "neither call of the batch ran");
}

#[tokio::test]
async fn a_denied_tool_call_notification_is_accepted_and_dropped() {
    let demo = Demo::example(true).await;
    control(&demo).await;
    let body = json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "transfer", "arguments": {"amount": 5000, "to": "m"}}});
    let reply = post(&demo, body.to_string()).await;
    assert_eq!(reply.status, 202);
    assert!(reply.body.is_empty());
    assert_eq!(demo.executions.of("transfer"), 0);
}

#[tokio::test]
async fn one_request_one_credential() {
    let demo = Demo::example(true).await;
    control(&demo).await;
    let echo = call(1, "echo", json!({"text": "a"}));
    let reply = send(
        &demo,
        Method::POST,
        &[
            JSON,
            ("authorization", "Bearer a"),
            ("authorization", "Bearer b"),
        ],
        echo,
    )
    .await;
    assert_error(
        &reply,
        400,
        -32600,
        "authorization header appears more than once",
    );
    assert_eq!(demo.executions.of("echo"), 1);
}

/// Reads an SSE body's `data:` payloads as JSON.
fn sse_messages(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(str::trim)
        .filter(|data| !data.is_empty())
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

#[tokio::test]
async fn sse_tool_lists_are_filtered() {
    let demo = Demo::example(false).await;
    let (session, _) = servers::demo::open_session(&demo.url()).await;
    let headers = [
        JSON,
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let reply = send(&demo, Method::POST, &headers, list.to_string()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.content_type, "text/event-stream",
        "the SSE path is exercised"
    );
    let messages = sse_messages(&reply.body);
    let listing = messages
        .iter()
        .find(|m| m["id"] == 2)
        .expect("the tools/list result");
    assert_eq!(
        servers::demo::listed_names(listing),
        servers::demo::VISIBLE_TOOLS
    );
    assert!(!String::from_utf8_lossy(&reply.body).contains("delete_account"));
}

#[tokio::test]
async fn json_tool_lists_are_filtered() {
    let demo = Demo::example(true).await;
    let reply = post(
        &demo,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type, "application/json");
    let listing = reply.json();
    assert_eq!(listing["result"]["tools"].as_array().unwrap().len(), 4);
    assert!(!String::from_utf8_lossy(&reply.body).contains("delete_account"));
}
