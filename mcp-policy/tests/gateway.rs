//! The gateway in front of an rmcp server it knows nothing about, driven by rmcp's
//! client: initialize, tools/list, allowed and denied calls, rate limit, session
//! DELETE, a broken upstream, concurrency and graceful shutdown; and `mcp-policy
//! gateway` as a user runs it: a policy that does not load and bad arguments end it
//! with a readable message and exit code 1 or 2.

#[path = "../../tests/servers/mod.rs"]
mod servers;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};
use servers::demo::{Demo, call, connect, open_session, raw};
use tokio::sync::oneshot;
use tower_mcp_policy::{Policy, PolicyLayer};

/// A running gateway; `stop` shuts it down gracefully.
struct Gateway {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    async fn start(policy: PolicyLayer, upstream: &str) -> Gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let upstream = mcp_policy::gateway::Upstream::parse(upstream).unwrap();
        let task = tokio::spawn(mcp_policy::gateway::serve(
            listener,
            policy,
            upstream,
            async {
                let _ = stopped.await;
            },
        ));
        Gateway {
            address,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.address)
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        (&mut self.task).await.unwrap();
    }
}

/// The demo exchange with no policy of its own: the gateway is the only guard.
async fn unguarded_upstream() -> Demo {
    let allow_all: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    Demo::start(PolicyLayer::new(allow_all), false).await
}

fn example_layer() -> PolicyLayer {
    PolicyLayer::from_file(servers::demo::example_policy()).unwrap()
}

#[tokio::test]
async fn a_real_client_through_the_gateway() {
    let upstream = unguarded_upstream().await;
    let gateway = Gateway::start(example_layer(), &upstream.url()).await;
    let client = connect(gateway.url(), "alice").await;

    assert_eq!(
        servers::demo::tool_names(&client).await,
        servers::demo::VISIBLE_TOOLS
    );

    let result = call(&client, "get_price", json!({"symbol": "ETHUSD"})).await;
    assert_eq!(
        result["content"][0]["text"],
        r#"get_price ran with {"symbol":"ETHUSD"}"#
    );

    let denied = call(&client, "transfer", json!({"amount": 2500, "to": "x"})).await;
    assert_eq!(denied["isError"], true);
    assert_eq!(
        denied["content"][0]["text"],
        "[POLICY DENIED] Transfers above 1000 need human approval."
    );
    assert_eq!(upstream.executions.of("transfer"), 0);

    for _ in 0..30 {
        let ok = call(
            &client,
            "binance_us_close_listen_key",
            json!({"listenKey": "k"}),
        )
        .await;
        assert_eq!(ok["isError"], false);
    }
    let limited = call(
        &client,
        "binance_us_close_listen_key",
        json!({"listenKey": "k"}),
    )
    .await;
    assert_eq!(limited["isError"], true);
    let text = limited["content"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("[POLICY DENIED] Rate limit of 30 per minute reached"),
        "{text}"
    );
    assert_eq!(upstream.executions.of("binance_us_close_listen_key"), 30);

    let hidden = client
        .call_tool(
            CallToolRequestParams::new("delete_account")
                .with_arguments(json!({"account": "a"}).as_object().unwrap().clone()),
        )
        .await;
    assert!(format!("{hidden:?}").contains("Unknown tool: delete_account"));
    assert_eq!(upstream.executions.of("delete_account"), 0);

    client.cancel().await.unwrap();
    gateway.stop().await;
}

#[tokio::test]
async fn sessions_pass_through_and_delete_ends_them() {
    let upstream = unguarded_upstream().await;
    let gateway = Gateway::start(example_layer(), &upstream.url()).await;
    let url = gateway.url();
    let json = ("content-type", "application/json");

    // The upstream's Mcp-Session-Id comes back through the gateway, with its SSE answer.
    let (session, content_type) = open_session(&url).await;
    assert_eq!(content_type, "text/event-stream");
    let with_session = [
        json,
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let ping = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    assert_eq!(
        raw(reqwest::Method::POST, &url, &with_session, ping)
            .await
            .status(),
        200
    );

    let deleted = raw(reqwest::Method::DELETE, &url, &with_session[1..], "").await;
    assert!(
        deleted.status().is_success(),
        "DELETE: {}",
        deleted.status()
    );
    let after = raw(reqwest::Method::POST, &url, &with_session, ping).await;
    assert_eq!(after.status(), 404, "the upstream forgot the session");
    gateway.stop().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_and_the_gateway_stays_up() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}/mcp", closed.local_addr().unwrap());
    drop(closed);
    let gateway = Gateway::start(example_layer(), &dead).await;
    for _ in 0..2 {
        let response = raw(
            reqwest::Method::POST,
            &gateway.url(),
            &[("content-type", "application/json")],
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
        )
        .await;
        assert_eq!(response.status(), 502);
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], -32603);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&dead) && message.contains("unavailable"),
            "{message}"
        );
    }
    // Policy refusals still work without an upstream.
    let denied = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"transfer","arguments":{"amount":9999}}}"#;
    let response = raw(
        reqwest::Method::POST,
        &gateway.url(),
        &[("content-type", "application/json")],
        denied,
    )
    .await;
    assert_eq!(response.status(), 200);
    gateway.stop().await;
}

/// An upstream whose `slow` requests take a while, to watch concurrency and shutdown.
async fn slow_upstream(delay: Duration) -> (String, tokio::task::JoinHandle<()>) {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/mcp",
        post(move |body: String| async move {
            if body.contains("\"slow\"") {
                tokio::time::sleep(delay).await;
            }
            let id: Value = serde_json::from_str::<Value>(&body).unwrap()["id"].clone();
            axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "done"}]}}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, task)
}

fn allow_all() -> PolicyLayer {
    PolicyLayer::new(r#"{"version":"1","default":"allow"}"#.parse::<Policy>().unwrap())
}

#[tokio::test]
async fn a_slow_upstream_call_blocks_no_one_and_finishes_across_shutdown() {
    let (upstream, _task) = slow_upstream(Duration::from_millis(600)).await;
    let gateway = Gateway::start(allow_all(), &upstream).await;
    let url = gateway.url();
    let slow_body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow"}}"#;
    let fast_body = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"fast"}}"#;
    let slow = tokio::spawn({
        let url = url.clone();
        async move {
            raw(
                reqwest::Method::POST,
                &url,
                &[("content-type", "application/json")],
                slow_body,
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Another client is served while the slow call is in flight.
    let started = std::time::Instant::now();
    let fast = raw(
        reqwest::Method::POST,
        &url,
        &[("content-type", "application/json")],
        fast_body,
    )
    .await;
    assert_eq!(fast.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "the fast call waited for the slow one"
    );

    // Shut down while the slow call is still running: it completes.
    let stopping = tokio::spawn(gateway.stop());
    let slow = slow.await.unwrap();
    assert_eq!(slow.status(), 200);
    let body: Value = serde_json::from_slice(&slow.bytes().await.unwrap()).unwrap();
    assert_eq!(body["result"]["content"][0]["text"], "done");
    stopping.await.unwrap();
    // And the gateway no longer accepts connections.
    let refused = reqwest::Client::new()
        .post(&url)
        .body(fast_body)
        .send()
        .await;
    assert!(refused.is_err(), "still accepting after shutdown");
}

#[tokio::test]
async fn other_paths_are_not_forwarded() {
    let (upstream, _task) = slow_upstream(Duration::ZERO).await;
    let gateway = Gateway::start(allow_all(), &upstream).await;
    let response = raw(
        reqwest::Method::GET,
        &format!("http://{}/admin", gateway.address),
        &[],
        "",
    )
    .await;
    assert_eq!(response.status(), 404);
    gateway.stop().await;
}

#[tokio::test]
async fn tool_lists_are_filtered_when_the_upstream_answers_json() {
    let allow_all: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let upstream = Demo::start(PolicyLayer::new(allow_all), true).await;
    let gateway = Gateway::start(example_layer(), &upstream.url()).await;
    let list = r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#;
    let response = raw(
        reqwest::Method::POST,
        &gateway.url(),
        &[("content-type", "application/json")],
        list,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(
        servers::demo::listed_names(&body),
        servers::demo::VISIBLE_TOOLS
    );
    gateway.stop().await;
}

#[tokio::test]
async fn headers_pass_both_ways_except_hop_by_hop_ones() {
    use axum::http::HeaderMap;
    use axum::routing::any;
    // An upstream that answers with the request headers it received, and sets some of its own.
    let app = axum::Router::new().route(
        "/mcp",
        any(|headers: HeaderMap| async move {
            let seen: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or("?"))))
                .collect();
            (
                [
                    ("mcp-session-id", "s-123"),
                    ("x-upstream", "yes"),
                    ("keep-alive", "timeout=5"),
                    ("content-type", "application/json"),
                ],
                axum::Json(Value::Object(seen)),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let gateway = Gateway::start(allow_all(), &format!("http://{upstream_address}/mcp")).await;

    let headers = [
        ("content-type", "application/json"),
        ("authorization", "Bearer t"),
        ("mcp-session-id", "s-123"),
        ("mcp-protocol-version", "2025-06-18"),
        ("last-event-id", "ev-7"),
        ("x-custom", "kept"),
        ("connection", "keep-alive, x-drop-me"),
        ("x-drop-me", "named by Connection"),
        ("te", "trailers"),
        ("proxy-authorization", "Basic abc"),
    ];
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let response = raw(reqwest::Method::POST, &gateway.url(), &headers, ping).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["mcp-session-id"], "s-123");
    assert_eq!(response.headers()["x-upstream"], "yes");
    assert!(
        response.headers().get("keep-alive").is_none(),
        "hop-by-hop response header leaked"
    );
    let seen: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    for (name, value) in [
        ("authorization", "Bearer t"),
        ("mcp-session-id", "s-123"),
        ("mcp-protocol-version", "2025-06-18"),
        ("last-event-id", "ev-7"),
        ("accept", "application/json, text/event-stream"),
        ("x-custom", "kept"),
    ] {
        assert_eq!(seen[name], value, "{name} did not pass: {seen}");
    }
    assert_eq!(
        seen["host"],
        upstream_address.to_string(),
        "Host is the upstream's"
    );
    for dropped in ["x-drop-me", "te", "proxy-authorization"] {
        assert!(
            seen.get(dropped).is_none(),
            "{dropped} reached the upstream: {seen}"
        );
    }
    gateway.stop().await;
}

#[tokio::test]
async fn the_gateway_answers_metrics_itself_outside_the_policy() {
    let upstream = unguarded_upstream().await;
    let gateway = Gateway::start(example_layer(), &upstream.url()).await;
    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://{}/metrics", gateway.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    gateway.stop().await;
}

/// A policy that does not load.
fn bad_policy() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tmp-bad-gateway-policy-{}.json",
        std::process::id()
    ));
    std::fs::write(
        &path,
        "{\"version\":\"1\",\"default\":\"deny\",\n \"tools\":{\"transfer\":{\"deny_if\":[{\"conditions\":[{\"path\":\"args.amount\",\"op\":\"gtt\",\"value\":1}]}]}}}\n",
    )
    .unwrap();
    path
}

#[test]
fn a_bad_policy_stops_the_gateway_with_its_path_and_line() {
    let policy = bad_policy();
    {
        let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_mcp-policy"));
        let extra = ["--upstream", "http://127.0.0.1:9/mcp"];
        let output = std::process::Command::new(&binary)
            .arg("gateway")
            .arg("--policy")
            .arg(&policy)
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{}", binary.display());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("/tools/transfer/deny_if/0/conditions/0/op: unknown variant `gtt`"),
            "{stderr}"
        );
        assert!(stderr.contains("(line 2, column"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::remove_file(policy).unwrap();
}

#[test]
fn bad_arguments_are_usage_errors() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-policy"))
        .args(["gateway", "--policy", "x.json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the following required arguments were not provided")
            && stderr.contains("--upstream <URL>")
            && stderr.contains("COMMAND"),
        "{stderr}"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-policy"))
        .args([
            "gateway",
            "--policy",
            "x.json",
            "--upstream",
            "ftp://example.com/mcp",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("must be an http:// or https:// URL"),
        "{stderr}"
    );
}

#[tokio::test]
async fn health_and_readiness_are_answered_outside_the_policy() {
    let get = |url: String| async move {
        let response = reqwest::Client::new().get(url).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let upstream = unguarded_upstream().await;
    let gateway = Gateway::start(example_layer(), &upstream.url()).await;
    let base = format!("http://{}", gateway.address);
    assert_eq!(get(format!("{base}/healthz")).await, (200, "ok\n".into()));
    assert_eq!(get(format!("{base}/readyz")).await, (200, "ready\n".into()));
    gateway.stop().await;

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}/mcp", closed.local_addr().unwrap());
    drop(closed);
    let gateway = Gateway::start(example_layer(), &dead).await;
    let base = format!("http://{}", gateway.address);
    assert_eq!(
        get(format!("{base}/healthz")).await.0,
        200,
        "alive all the same"
    );
    let (status, text) = get(format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.starts_with(&format!("not ready: upstream {dead}: ")),
        "{text}"
    );
    gateway.stop().await;
}

/// `mcp-policy gateway` configured by environment variables alone, with an upstream
/// URL that has no path and nothing listening: it starts, and warns about both.
#[test]
fn the_gateway_takes_its_options_from_the_environment_and_warns_about_its_upstream() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut gateway = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-policy"))
        .current_dir(support::repository())
        .arg("gateway")
        .env("MCP_POLICY_POLICY", "examples/policy.json")
        .env("MCP_POLICY_UPSTREAM", &dead)
        .env("MCP_POLICY_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = BufReader::new(gateway.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    assert!(
        first.starts_with("policy gateway listening on http://127.0.0.1:"),
        "{first}"
    );
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut gateway.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains(&format!("the upstream URL {dead}/ has no path")),
        "{stderr}"
    );
    assert!(stderr.contains("cannot be reached now"), "{stderr}");
}
