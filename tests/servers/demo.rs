//! The demo server in-process on an ephemeral loopback port, and rmcp's client to it.

pub use demo_server;

use std::net::SocketAddr;
use std::path::PathBuf;

use demo_server::Executions;
use tower_mcp_policy::{PolicyLayer, counter::CounterStore};

pub fn example_policy() -> PathBuf {
    crate::support::repository().join("examples/policy.json")
}

/// A running demo server; it stops when dropped.
pub struct Demo {
    pub address: SocketAddr,
    pub executions: Executions,
    task: tokio::task::JoinHandle<()>,
}

impl Demo {
    /// The demo app under `layer`, answering with SSE (`json: false`) or JSON.
    pub async fn start<S: CounterStore>(layer: PolicyLayer<S>, json: bool) -> Demo {
        let executions = Executions::default();
        let app = demo_server::app(layer, executions.clone(), demo_server::server_config(json));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Demo {
            address,
            executions,
            task,
        }
    }

    /// The demo app under the example policy, as `cargo run -p demo` runs it.
    pub async fn example(json: bool) -> Demo {
        Demo::start(PolicyLayer::from_file(example_policy()).unwrap(), json).await
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.address)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

/// rmcp's client, the real MCP client these tests drive.
pub type Client = RunningService<RoleClient, ()>;

/// Connects (initializes) an rmcp client to `url`, sending `token` as its bearer credential.
pub async fn connect(url: String, token: &str) -> Client {
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("the client connects")
}

/// `tools/call` parameters for `tool` with the object `args`.
pub fn params(tool: &'static str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool)
        .with_arguments(args.as_object().expect("arguments are an object").clone())
}

/// Calls a tool and returns the result as JSON.
pub async fn call(client: &Client, tool: &'static str, args: Value) -> Value {
    let result = client
        .call_tool(params(tool, args))
        .await
        .expect("a tool result");
    serde_json::to_value(result).unwrap()
}

/// The first text of a tool result.
pub fn text(result: &Value) -> &str {
    result["content"][0]["text"]
        .as_str()
        .expect("a text result")
}

/// A raw HTTP request to an MCP endpoint (with the `Accept` header MCP clients send).
pub async fn raw(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .header("accept", "application/json, text/event-stream")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("the server answers")
}

/// Initializes an MCP session with raw HTTP (protocol 2025-06-18); returns its id and
/// the content type the initialize answer came in.
pub async fn open_session(url: &str) -> (String, String) {
    let json = ("content-type", "application/json");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let response = raw(reqwest::Method::POST, url, &[json], init.to_string()).await;
    let status = response.status();
    if status != 200 {
        let body = response.text().await.unwrap_or_default();
        panic!("initialize answered {status}: {body}");
    }
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.bytes().await.unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("\"serverInfo\""),
        "initialize answered"
    );
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let headers = [
        json,
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let response = raw(
        reqwest::Method::POST,
        url,
        &headers,
        initialized.to_string(),
    )
    .await;
    assert_eq!(response.status(), 202);
    (session, content_type)
}

/// The pinned npm packages of `tests/ts` (the official TypeScript SDK and reference
/// server), installed on first use; returns that directory.
pub fn ensure_npm_packages() -> PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = crate::support::repository().join("tests/ts");
    let installed = [
        "@modelcontextprotocol/sdk/package.json",
        "@modelcontextprotocol/server-everything/package.json",
        "playwright-core/package.json",
    ]
    .iter()
    .all(|p| dir.join("node_modules").join(p).exists());
    if !installed {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm is needed for the TypeScript interoperability tests (apt-get install nodejs npm)");
        assert!(status.success(), "`npm ci --prefix tests/ts` failed");
    }
    dir
}

/// The demo's tools an agent may see (`delete_account` is hidden), sorted.
pub const VISIBLE_TOOLS: [&str; 4] = [
    "binance_us_close_listen_key",
    "echo",
    "get_price",
    "transfer",
];

/// The sorted tool names of a `tools/list` result message.
pub fn listed_names(message: &Value) -> Vec<String> {
    let mut names: Vec<String> = message["result"]["tools"]
        .as_array()
        .expect("a tools/list result")
        .iter()
        .map(|t| t["name"].as_str().expect("a tool name").to_owned())
        .collect();
    names.sort();
    names
}

/// The sorted tool names an rmcp client is shown.
pub async fn tool_names(client: &Client) -> Vec<String> {
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    names
}

/// Runs the node script `script` of `tests/ts` with `args` and returns one JSON value
/// per line it printed. Fails loudly when Node.js is missing.
pub async fn node_script(script: &str, args: Vec<String>) -> Vec<Value> {
    let dir = ensure_npm_packages();
    let script = dir.join(script);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .args(args)
            .output()
            .expect("node is needed to run the TypeScript client (apt-get install nodejs npm)")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the TypeScript client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}
