//! The gateway in front of an MCP server nobody on this project wrote: the official
//! TypeScript reference server "everything" (`@modelcontextprotocol/server-everything`,
//! pinned in tests/ts/package-lock.json), driven by rmcp's client and by raw HTTP.
//!
//! Needs Node.js. The npm packages are installed on first use (`npm ci --prefix tests/ts`).

mod common;

#[path = "../examples/gateway.rs"]
#[allow(dead_code)]
mod gateway;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use tower_mcp_policy::PolicyLayer;

fn ts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ts")
}

/// Installs the pinned npm packages once, if they are not there yet.
fn ensure_installed() -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let entry = ts_dir().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if !entry.exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(ts_dir())
            .status()
            .expect("npm is needed to install the reference server (apt-get install nodejs npm)");
        assert!(status.success(), "`npm ci --prefix tests/ts` failed");
    }
    entry
}

/// The reference server on a free loopback port; killed when dropped.
struct Everything {
    child: Child,
    url: String,
}

impl Everything {
    async fn start() -> Everything {
        let entry = ensure_installed();
        // Ports handed out for `:0` binds come from the ephemeral range (32768 and up on
        // Linux); choosing below it means no listener of this test run can take ours.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        for attempt in 0..10u32 {
            let port =
                20_000 + ((seed / 1000 + attempt * 7919 + std::process::id()) % 10_000) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            let mut child = Command::new("node")
                .arg(&entry)
                .arg("streamableHttp")
                .env("PORT", port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("node is needed to run the reference server");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // it exited (the port was taken after all): try another
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Everything {
                        child,
                        url: format!("http://127.0.0.1:{port}/mcp"),
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "the reference server did not start"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("the reference server could not find a free port");
    }
}

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_gateway(upstream: &str) -> String {
    let policy =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/everything-policy.json");
    let layer = PolicyLayer::from_file(policy).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let upstream = gateway::Upstream::parse(upstream).unwrap();
    tokio::spawn(gateway::serve(
        listener,
        layer,
        upstream,
        std::future::pending(),
    ));
    format!("http://{address}/mcp")
}

fn args(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().unwrap().clone()
}

#[tokio::test]
async fn the_typescript_reference_server_behind_the_gateway() {
    let server = Everything::start().await;
    let url = start_gateway(&server.url).await;
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header("agent-1");
    let client =
        ().serve(StreamableHttpClientTransport::from_config(config))
            .await
            .expect("initialize");

    let names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(
        names.iter().any(|n| n == "echo") && names.iter().any(|n| n == "get-sum"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n == "get-env"),
        "the hidden tool is listed: {names:?}"
    );

    let text = |result: rmcp::model::CallToolResult| {
        serde_json::to_value(result).unwrap()["content"][0]["text"].clone()
    };
    let sum = client
        .call_tool(
            CallToolRequestParams::new("get-sum").with_arguments(args(json!({"a": 2, "b": 3}))),
        )
        .await
        .unwrap();
    assert_eq!(text(sum), "The sum of 2 and 3 is 5.");

    let denied = client
        .call_tool(
            CallToolRequestParams::new("get-sum").with_arguments(args(json!({"a": 1000, "b": 1}))),
        )
        .await
        .unwrap();
    assert_eq!(denied.is_error, Some(true));
    assert_eq!(
        text(denied),
        "[POLICY DENIED] Sums above 100 need approval."
    );

    for i in 0..3 {
        let echo = client
            .call_tool(
                CallToolRequestParams::new("echo")
                    .with_arguments(args(json!({"message": format!("hi {i}")}))),
            )
            .await
            .unwrap();
        assert_eq!(text(echo), format!("Echo: hi {i}"));
    }
    let limited = client
        .call_tool(
            CallToolRequestParams::new("echo").with_arguments(args(json!({"message": "again"}))),
        )
        .await
        .unwrap();
    assert_eq!(limited.is_error, Some(true));
    let limited = text(limited);
    assert!(
        limited
            .as_str()
            .unwrap()
            .starts_with("[POLICY DENIED] Rate limit of 3 per minute reached for \"echo\"."),
        "{limited}"
    );

    let hidden = client
        .call_tool(CallToolRequestParams::new("get-env").with_arguments(args(json!({}))))
        .await;
    assert!(
        format!("{hidden:?}").contains("Unknown tool: get-env"),
        "{hidden:?}"
    );

    client.cancel().await.unwrap();
}

async fn post(url: &str, session: Option<&str>, body: Value) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-06-18");
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn sse_progress_streams_through_the_gateway_as_it_happens() {
    let server = Everything::start().await;
    let url = start_gateway(&server.url).await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let response = post(&url, None, init).await;
    assert_eq!(response.status(), 200);
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    drop(response);
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(post(&url, Some(&session), initialized).await.status(), 202);

    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "trigger-long-running-operation", "arguments": {"duration": 1.5, "steps": 3},
        "_meta": {"progressToken": "p1"}}});
    let started = Instant::now();
    let mut response = post(&url, Some(&session), call).await;
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
