//! The gateway with a grants file: each agent's own token and policy, the upstream
//! credential swapped in for the agent's, unknown and revoked tokens refused before the
//! upstream; `mcp-policy grant add | list | revoke` as a user runs them; and two
//! agents driven by the official TypeScript SDK client in front of the reference
//! server `everything` (needs Node.js).

#[path = "../../tests/servers/mod.rs"]
mod servers;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use servers::demo::raw;
use servers::everything::Everything;
use tower_mcp_policy::{Grants, PolicyLayer};

/// A directory of this test's own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("mcp-grants-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serves `grants` in front of `upstream`, as `mcp-policy gateway --grants` does.
async fn gateway(grants: &Path, upstream: &str) -> String {
    let layer = PolicyLayer::from_grants_file(grants).unwrap();
    let proxy =
        mcp_policy::gateway::Proxy::new(mcp_policy::gateway::Upstream::parse(upstream).unwrap())
            .with_grants(layer.handle());
    servers::gateway::start_proxy(layer, proxy).await
}

/// An upstream that answers every request with the headers it received, and counts
/// the requests.
async fn echo_headers() -> (String, Arc<AtomicUsize>) {
    use axum::http::HeaderMap;
    use axum::routing::any;
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let app = axum::Router::new().route(
        "/mcp",
        any(move |headers: HeaderMap| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                let seen: serde_json::Map<String, Value> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or("?"))))
                    .collect();
                axum::Json(Value::Object(seen))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/mcp"), count)
}

const ALLOW_ALL: &str = r#"{"version":"1","default":"allow"}"#;

#[tokio::test]
async fn the_upstream_never_sees_an_agents_token() {
    let dir = Dir::new("swap");
    dir.write("allow.json", ALLOW_ALL);
    dir.write("bot.secret", "Bearer for-the-bot\n");
    // SAFETY: only this test of this binary reads the variable.
    unsafe { std::env::set_var("MCP_GRANTS_TEST_UPSTREAM", "Bearer for-everyone") };
    let grants = dir.write(
        "grants.json",
        &json!({
            "version": "1",
            "policies": {"allow": "allow.json"},
            "upstream": {"env": "MCP_GRANTS_TEST_UPSTREAM"},
            "grants": {
                "agent": {"policy": "allow", "token_sha256": Grants::hash_token("agent-token")},
                "bot": {"policy": "allow", "token_sha256": Grants::hash_token("bot-token"),
                        "upstream": {"file": "bot.secret"}},
                "retired": {"policy": "allow", "token_sha256": Grants::hash_token("old-token"),
                            "revoked": true},
            }
        })
        .to_string(),
    );
    let (upstream, received) = echo_headers().await;
    let url = gateway(&grants, &upstream).await;
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let send = |token: Option<&'static str>| {
        let url = url.clone();
        async move {
            let mut headers = vec![
                ("content-type", "application/json"),
                ("cookie", "session=agent-cookie"),
            ];
            let authorization = token.map(|t| format!("Bearer {t}"));
            if let Some(value) = &authorization {
                headers.push(("authorization", value.as_str()));
            }
            let response = raw(reqwest::Method::POST, &url, &headers, ping).await;
            let status = response.status().as_u16();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
            (status, challenge, body)
        }
    };

    let (status, _, seen) = send(Some("agent-token")).await;
    assert_eq!(status, 200);
    assert_eq!(seen["authorization"], "Bearer for-everyone", "{seen}");
    assert!(
        seen.get("cookie").is_none(),
        "the agent's cookie reached the upstream: {seen}"
    );
    let (_, _, seen) = send(Some("bot-token")).await;
    assert_eq!(seen["authorization"], "Bearer for-the-bot", "{seen}");
    assert!(!seen.to_string().contains("bot-token"), "{seen}");
    assert_eq!(received.load(Ordering::SeqCst), 2);

    for token in [Some("old-token"), Some("made-up"), None] {
        let (status, challenge, body) = send(token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(challenge.unwrap().starts_with("Bearer"));
        assert_eq!(body["error"]["code"], -32052, "{body}");
    }
    assert_eq!(
        received.load(Ordering::SeqCst),
        2,
        "a refused request reached the upstream"
    );
}

/// Runs `mcp-policy args…`.
fn mcp_policy(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mcp-policy"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn grants_are_added_listed_and_revoked_from_the_command_line() {
    let dir = Dir::new("cli");
    let policy = dir.write(
        "read-only.json",
        r#"{"version":"1","default":"deny","tools":{"search":{}}}"#,
    );
    let file = dir.0.join("grants.json");
    let (policy, file) = (policy.to_str().unwrap(), file.to_str().unwrap());

    let added = mcp_policy(&[
        "grant",
        "add",
        "researcher",
        "--policy",
        policy,
        "--grants",
        file,
    ]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let token = String::from_utf8(added.stdout).unwrap();
    let token = token.strip_suffix('\n').expect("the token alone on a line");
    assert!(
        token.starts_with("mcp_") && token.len() == 4 + 64,
        "{token}"
    );
    let text = std::fs::read_to_string(file).unwrap();
    assert!(!text.contains(token), "the token itself was stored");
    assert!(text.contains(&Grants::hash_token(token)), "{text}");
    // The file loads, relative policy path included.
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["policies"]["read-only"], "read-only.json");
    let grants = Grants::from_file(file).unwrap();
    assert_eq!(
        grants.names().collect::<Vec<_>>(),
        [("researcher", "read-only")]
    );

    // A second grant reuses the policy entry; two tokens never repeat.
    let second = mcp_policy(&[
        "grant",
        "add",
        "intern",
        "--policy",
        policy,
        "--grants",
        file,
        "--expires",
        "2999-01-01T00:00:00Z",
    ]);
    assert!(second.status.success());
    assert_ne!(String::from_utf8(second.stdout).unwrap().trim(), token);
    let twice = mcp_policy(&[
        "grant", "add", "intern", "--policy", policy, "--grants", file,
    ]);
    assert_eq!(twice.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("already has a grant named \"intern\"")
    );
    let bad_time = mcp_policy(&[
        "grant",
        "add",
        "x",
        "--policy",
        policy,
        "--grants",
        file,
        "--expires",
        "soon",
    ]);
    assert_eq!(bad_time.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_time.stderr).contains("2027-01-31T00:00:00Z"));

    let revoked = mcp_policy(&["grant", "revoke", "researcher", "--grants", file]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let unknown = mcp_policy(&["grant", "revoke", "nobody", "--grants", file]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("no grant named \"nobody\" (it has: intern, researcher)")
    );

    let listed = mcp_policy(&["grant", "list", "--grants", file]);
    let listed = String::from_utf8(listed.stdout).unwrap();
    let lines: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["GRANT", "POLICY", "STATE", "EXPIRES", "TOKEN"]);
    // In the file's order: the command writes keys sorted.
    assert_eq!(
        lines[1][..4],
        ["intern", "read-only", "active", "2999-01-01T00:00:00Z"]
    );
    assert_eq!(
        lines[2][..4],
        ["researcher", "read-only", "revoked", "never"]
    );
    let prefix = &Grants::hash_token(token)[..8];
    assert_eq!(lines[2][4], format!("sha256:{prefix}…"));
    assert!(
        !listed.contains(&Grants::hash_token(token)),
        "a full hash was listed"
    );

    // The schema of the grants file accepts what the command writes.
    let schema = mcp_policy(&["schema", "--grants"]);
    let schema: Value = serde_json::from_slice(&schema.stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert!(validator.is_valid(&doc), "{doc}");
    assert!(
        !validator
            .is_valid(&json!({"version": "1", "policies": {}, "grants": {"x": {"token": "t"}}}))
    );
}

#[tokio::test]
async fn two_typescript_agents_with_their_own_tokens_through_one_gateway() {
    let dir = Dir::new("ts");
    dir.write(
        "reader.json",
        r#"{"version":"1","default":"deny",
            "hide":["get-env","get-annotated-*","get-resource-*","get-structured-*","get-tiny-*",
                    "gzip-*","simulate-*","toggle-*","trigger-*"],
            "tools":{
            "get-sum":{},
            "echo":{"limits":[{"counter":"echo","window":"minute","max":2,"scope":"grant"}]}}}"#,
    );
    let operator = support::repository().join("tests/fixtures/everything-policy.json");
    let grants = dir.write(
        "grants.json",
        &json!({
            "version": "1",
            "policies": {"reader": "reader.json", "operator": operator},
            "grants": {
                "reader": {"policy": "reader", "token_sha256": Grants::hash_token("reader-token")},
                "operator": {"policy": "operator", "token_sha256": Grants::hash_token("operator-token")},
                "retired": {"policy": "operator", "token_sha256": Grants::hash_token("retired-token"),
                            "revoked": true},
            }
        })
        .to_string(),
    );
    let server = Everything::start().await;
    let url = gateway(&grants, &server.url).await;

    let steps = json!([
        {"list": true},
        {"call": "echo", "args": {"message": "1"}},
        {"call": "echo", "args": {"message": "2"}},
        {"call": "echo", "args": {"message": "3"}},
        {"call": "get-sum", "args": {"a": 1000, "b": 1}},
        {"call": "get-env", "args": {}},
    ]);
    let reader = servers::demo::node_script(
        "client.mjs",
        vec![url.clone(), "reader-token".into(), steps.to_string()],
    )
    .await;
    assert_eq!(reader[0]["tools"], json!(["echo", "get-sum"]), "{reader:?}");
    assert_eq!(reader[1]["result"]["content"][0]["text"], "Echo: 1");
    assert_eq!(reader[2]["result"]["content"][0]["text"], "Echo: 2");
    let limited = reader[3]["result"]["content"][0]["text"].as_str().unwrap();
    assert!(limited.contains("Rate limit of 2 per minute"), "{limited}");
    assert_eq!(
        reader[4]["result"]["content"][0]["text"],
        "The sum of 1000 and 1 is 1001."
    );
    let unknown = reader[5]["error"]["message"].as_str().unwrap_or_default();
    assert!(unknown.contains("Unknown tool: get-env"), "{reader:?}");

    let operator = servers::demo::node_script(
        "client.mjs",
        vec![url.clone(), "operator-token".into(), steps.to_string()],
    )
    .await;
    let tools = operator[0]["tools"].as_array().unwrap();
    assert!(
        tools.len() > 2 && !tools.contains(&json!("get-env")),
        "{operator:?}"
    );
    // The reader's echo budget is the reader's: the operator's own limit is 3.
    for (i, step) in operator[1..=3].iter().enumerate() {
        assert_eq!(
            step["result"]["content"][0]["text"],
            format!("Echo: {}", i + 1)
        );
    }
    let denied = operator[4]["result"]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert_eq!(denied, "[POLICY DENIED] Sums above 100 need approval.");

    // Unknown, revoked and missing tokens: the SDK's connect fails on the 401.
    for token in ["retired-token", "made-up-token"] {
        let answer = raw(
            reqwest::Method::POST,
            &url,
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("authorization", &format!("Bearer {token}")),
            ],
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
        )
        .await;
        assert_eq!(answer.status(), 401, "{token}");
    }
    let missing = raw(
        reqwest::Method::GET,
        &url,
        &[("accept", "text/event-stream")],
        "",
    )
    .await;
    assert_eq!(missing.status(), 401);
}

/// `--upstream-header` sets a header on every request to the upstream, replacing the
/// client's.
#[tokio::test]
async fn upstream_headers_are_set_on_every_forwarded_request() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let (upstream, received) = echo_headers().await;
    let dir = Dir::new("headers");
    let policy = dir.write("allow.json", ALLOW_ALL);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcp-policy"))
        .arg("gateway")
        .arg("--policy")
        .arg(&policy)
        .args(["--upstream", &upstream, "--listen", "127.0.0.1:0"])
        .args(["--upstream-header", "X-Tenant: acme"])
        .args(["--upstream-header", "X-Region: eu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    // Keep reading what it prints: with the pipe closed, its next line would kill it.
    std::thread::spawn(move || lines.for_each(drop));
    let url = first
        .strip_prefix("policy gateway listening on ")
        .and_then(|rest| rest.split(" -> ").next())
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    let headers = [
        ("content-type", "application/json"),
        ("x-tenant", "forged-by-the-client"),
    ];
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let response = raw(reqwest::Method::POST, &url, &headers, ping).await;
    let seen: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(seen["x-tenant"], "acme", "{seen}");
    assert_eq!(seen["x-region"], "eu", "{seen}");
    assert_eq!(received.load(Ordering::SeqCst), 1);
    child.kill().unwrap();
    child.wait().unwrap();
}
