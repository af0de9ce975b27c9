//! Every kind of upstream behind the gateway, with real servers and clients:
//!
//! * an https server with a certificate made for the test (trusted through
//!   `--upstream-ca`, refused with a readable reason without it), and `check --server
//!   https://…`;
//! * the TypeScript reference server in stdio mode behind `mcp-policy gateway --
//!   node …`, called by the TypeScript SDK's HTTP client; a stdio server that crashes
//!   mid-call and is restarted; a call the client cancels reaches the child as its own
//!   cancellation; the `gateway` command itself in front of an https upstream;
//! * the official filesystem server behind `mcp-policy wrap`, driven by the TypeScript
//!   SDK's stdio client as a desktop client would;
//! * two servers (one http, one stdio) behind one gateway from a configuration file.

mod process;
#[path = "../../tests/servers/mod.rs"]
mod servers;
#[path = "../../tests/support/mod.rs"]
mod support;

use process::{GatewayProcess, write_temp};

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mcp_policy::gateway::{Proxy, Upstream};
use serde_json::json;
use servers::demo::{call, connect, raw};
use tower_mcp_policy::{Policy, PolicyLayer};

fn example_layer() -> PolicyLayer {
    PolicyLayer::from_file(servers::demo::example_policy()).unwrap()
}

/// The demo exchange served over https on loopback with a certificate for 127.0.0.1
/// made by the test; the CA file (the certificate itself: it is self-signed).
struct HttpsUpstream {
    url: String,
    ca: PathBuf,
    executions: demo_server::Executions,
}

async fn https_upstream(name: &str) -> HttpsUpstream {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let ca = std::env::temp_dir().join(format!("tmp-{name}-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let allow_all: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let executions = demo_server::Executions::default();
    let app = demo_server::app(
        PolicyLayer::new(allow_all),
        executions.clone(),
        demo_server::server_config(true),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: not an error.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    HttpsUpstream {
        url: format!("https://{address}/mcp"),
        ca,
        executions,
    }
}

use servers::demo::demo_server;

#[tokio::test]
async fn an_https_upstream_with_its_ca_works_behind_the_gateway() {
    let upstream = https_upstream("https-ok").await;
    let tls = mcp_policy::tls::client_config(Some(&upstream.ca)).unwrap();
    let proxy = Proxy::with_tls(Upstream::parse(&upstream.url).unwrap(), tls);
    let gateway = servers::gateway::start_proxy(example_layer(), proxy).await;

    let client = connect(gateway, "alice").await;
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
    assert_eq!(
        denied["content"][0]["text"],
        "[POLICY DENIED] Transfers above 1000 need human approval."
    );
    assert_eq!(upstream.executions.of("get_price"), 1);
    assert_eq!(upstream.executions.of("transfer"), 0);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn an_https_upstream_without_its_ca_is_refused_with_the_reason() {
    let upstream = https_upstream("https-untrusted").await;
    let proxy = Proxy::new(Upstream::parse(&upstream.url).unwrap());
    let gateway = servers::gateway::start_proxy(example_layer(), proxy).await;

    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"get_price","arguments":{"symbol":"ETHUSD"}}});
    let response = raw(
        reqwest::Method::POST,
        &gateway,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 502, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "the TLS certificate of 127.0.0.1 is signed by an authority this machine does not trust"
        ) && message.contains("--upstream-ca FILE"),
        "{message}"
    );
    assert_eq!(upstream.executions.total(), 0);
}

#[tokio::test]
async fn check_reads_an_https_server_with_its_ca_and_says_why_not_without() {
    let upstream = https_upstream("https-check").await;
    let policy = servers::demo::example_policy();
    let url = upstream.url.clone();
    let check = move |ca: Option<&PathBuf>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mcp-policy"));
        command.arg("check").arg(&policy).args(["--server", &url]);
        if let Some(ca) = ca {
            command.arg("--server-ca").arg(ca);
        }
        command.output().unwrap()
    };
    let ca = upstream.ca.clone();
    let (with, without) = tokio::task::spawn_blocking(move || {
        let with = check(Some(&ca));
        let without = check(None);
        (with, without)
    })
    .await
    .unwrap();

    let stdout = String::from_utf8_lossy(&with.stdout);
    assert_eq!(
        with.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(stdout.contains("get_price"), "{stdout}");

    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&without.stdout),
        String::from_utf8_lossy(&without.stderr)
    );
    assert_eq!(without.status.code(), Some(1), "{report}");
    assert!(report.contains("certificate"), "{report}");
    assert!(report.contains("--server-ca FILE"), "{report}");
}

#[test]
fn a_ca_file_that_cannot_be_used_stops_the_gateway_with_the_reason() {
    let policy = servers::demo::example_policy();
    let not_pem = std::env::temp_dir().join(format!("tmp-not-pem-{}.pem", std::process::id()));
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let missing = std::env::temp_dir().join("tmp-no-such-ca.pem");
    for (ca, expected) in [
        (&missing, "cannot read the CA file"),
        (&not_pem, "holds no certificate"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_mcp-policy"))
            .arg("gateway")
            .arg("--policy")
            .arg(&policy)
            .args([
                "--upstream",
                "https://127.0.0.1:9/mcp",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--upstream-ca")
            .arg(ca)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::remove_file(not_pem).unwrap();
}

/// The reference server's entry point (`node ENTRY stdio`).
fn everything_entry() -> String {
    servers::demo::ensure_npm_packages()
        .join("node_modules/@modelcontextprotocol/server-everything/dist/index.js")
        .display()
        .to_string()
}

#[tokio::test]
async fn a_stdio_server_behind_the_gateway_with_the_typescript_client() {
    let policy = write_temp(
        "stdio-policy.json",
        r#"{"version":"1","default":"allow","hide":["get-tiny-image"],
            "tools":{
              "echo":{"deny_if":[{"conditions":[{"path":"args.message","op":"eq","value":"rm -rf /"}],
                      "on_deny":"No."}]},
              "get-sum":{"limits":[{"counter":"sums","window":"minute","max":2,"scope":"global"}]}}}"#,
    );
    let entry = everything_entry();
    let gateway = GatewayProcess::start(
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--env",
            "GREETING=hello from the gateway",
            "--",
            "node",
            &entry,
            "stdio",
        ],
        &[("SECRET_OF_THE_GATEWAY", "must-not-leak")],
    );

    let steps = json!([
        {"list": true},
        {"call": "echo", "args": {"message": "hi"}},
        {"call": "echo", "args": {"message": "rm -rf /"}},
        {"call": "get-sum", "args": {"a": 1, "b": 2}},
        {"call": "get-sum", "args": {"a": 3, "b": 4}},
        {"call": "get-sum", "args": {"a": 5, "b": 6}},
        {"call": "trigger-long-running-operation", "args": {"duration": 1, "steps": 2}, "progress": true},
        {"call": "get-env", "args": {}},
        {"call": "get-tiny-image", "args": {}},
    ]);
    let lines = servers::demo::node_script(
        "client.mjs",
        vec![gateway.url.clone(), "t".to_owned(), steps.to_string()],
    )
    .await;
    let [list, echo, denied, sum1, sum2, limited, long, env, hidden] = &lines[..] else {
        panic!("{lines:?}")
    };
    let tools = list["tools"].as_array().unwrap();
    assert!(tools.contains(&json!("echo")), "{list}");
    assert!(!tools.contains(&json!("get-tiny-image")), "{list}");

    assert_eq!(echo["result"]["content"][0]["text"], "Echo: hi", "{echo}");
    assert_eq!(denied["result"]["isError"], true, "{denied}");
    assert_eq!(
        denied["result"]["content"][0]["text"], "[POLICY DENIED] No.",
        "{denied}"
    );
    assert!(
        sum1["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains('3'),
        "{sum1}"
    );
    assert!(
        sum2["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains('7'),
        "{sum2}"
    );
    let text = limited["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("[POLICY DENIED] Rate limit"), "{limited}");

    // Progress comes back through the gateway, with the client's own token.
    let progress = long["progress"].as_array().unwrap();
    assert_eq!(progress.len(), 2, "{long}");
    assert_eq!(progress[1]["progress"], 2, "{long}");
    assert!(
        long["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Long running operation completed"),
        "{long}"
    );

    // The child's environment is what was given, not the gateway's.
    let env = env["result"]["content"][0]["text"].as_str().unwrap();
    assert!(env.contains("hello from the gateway"), "{env}");
    assert!(!env.contains("must-not-leak"), "{env}");

    // A hidden tool is refused by the layer.
    assert!(
        hidden["error"].is_object() || hidden["result"]["isError"] == true,
        "{hidden}"
    );
    std::fs::remove_file(policy).unwrap();
}

#[tokio::test]
async fn a_stdio_server_that_crashes_is_restarted_and_its_call_in_flight_gets_an_error() {
    let policy = write_temp("crashy-policy.json", r#"{"version":"1","default":"allow"}"#);
    let starts = std::env::temp_dir().join(format!("tmp-crashy-starts-{}", std::process::id()));
    let _ = std::fs::remove_file(&starts);
    let script = servers::demo::ensure_npm_packages().join("crashy.mjs");
    let gateway = GatewayProcess::start(
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--env",
            &format!("STARTS_FILE={}", starts.display()),
            "--",
            "node",
            script.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(gateway.get("/readyz").await, (200, "ready\n".to_owned()));

    let steps =
        json!([{"call": "echo", "args": {"text": "before"}}, {"call": "crash", "args": {}}]);
    let lines = servers::demo::node_script(
        "client.mjs",
        vec![gateway.url.clone(), "t".to_owned(), steps.to_string()],
    )
    .await;
    assert_eq!(lines[0]["result"]["content"][0]["text"], "echo: before");
    let message = lines[1]["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("stopped before answering") && message.contains("being restarted"),
        "{}",
        lines[1]
    );

    // It comes back by itself; the next call works.
    let mut ready = false;
    for _ in 0..100 {
        if gateway.get("/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "{:?}", gateway.get("/readyz").await);
    let steps = json!([{"call": "echo", "args": {"text": "after"}}]);
    let lines = servers::demo::node_script(
        "client.mjs",
        vec![gateway.url.clone(), "t".to_owned(), steps.to_string()],
    )
    .await;
    assert_eq!(lines[0]["result"]["content"][0]["text"], "echo: after");
    assert_eq!(
        std::fs::read_to_string(&starts).unwrap(),
        "started\nstarted\n"
    );
    std::fs::remove_file(policy).unwrap();
    std::fs::remove_file(starts).unwrap();
}

#[tokio::test]
async fn the_filesystem_server_wrapped_for_a_desktop_client() {
    let dir = std::env::temp_dir().join(format!("tmp-wrapped-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "the notes").unwrap();
    let policy = write_temp(
        "wrap-policy.json",
        r#"{"version":"1","default":"deny","hide":["move_file"],
            "tools":{
              "read_text_file":{}, "read_file":{}, "list_allowed_directories":{},
              "write_file":{"deny_if":[{"conditions":[{"path":"args.path","op":"regex","value":"\\.env$"}],
                            "on_deny":"Agents do not write .env files."}]}}}"#,
    );
    let server = servers::demo::ensure_npm_packages()
        .join("node_modules/@modelcontextprotocol/server-filesystem/dist/index.js");
    // What a desktop client's configuration starts: mcp-policy wrap … -- node SERVER DIR.
    let command = json!([
        env!("CARGO_BIN_EXE_mcp-policy"),
        "wrap",
        "--policy",
        policy,
        "--",
        "node",
        server,
        dir
    ]);
    let secret = dir.join(".env");
    let notes = dir.join("notes.txt");
    let other = dir.join("other.txt");
    let steps = json!([
        {"list": true},
        {"call": "read_text_file", "args": {"path": notes}},
        {"call": "write_file", "args": {"path": secret, "content": "TOKEN=stolen"}},
        {"call": "write_file", "args": {"path": other, "content": "fine"}},
        {"call": "move_file", "args": {"source": notes, "destination": secret}},
        {"call": "search_files", "args": {"path": dir, "pattern": "notes"}},
    ]);
    let lines = servers::demo::node_script(
        "client.mjs",
        vec!["stdio".to_owned(), command.to_string(), steps.to_string()],
    )
    .await;
    let [list, read, denied, written, hidden, unlisted] = &lines[..] else {
        panic!("{lines:?}")
    };
    let tools = list["tools"].as_array().unwrap();
    assert!(tools.contains(&json!("write_file")), "{list}");
    assert!(!tools.contains(&json!("move_file")), "{list}");

    assert_eq!(read["result"]["content"][0]["text"], "the notes", "{read}");
    assert_eq!(
        denied["result"]["content"][0]["text"], "[POLICY DENIED] Agents do not write .env files.",
        "{denied}"
    );
    assert_ne!(written["result"]["isError"], true, "{written}");
    assert!(
        written["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Successfully wrote"),
        "{written}"
    );
    let hidden = hidden["error"]["message"].as_str().unwrap_or_default();
    assert!(hidden.contains("Unknown tool: move_file"), "{hidden}");
    assert_eq!(
        unlisted["result"]["content"][0]["text"],
        "[POLICY DENIED] Tool \"search_files\" is not allowed by this policy.",
        "{unlisted}"
    );

    // The disk says what ran: the denied write and the hidden move never happened.
    assert!(!secret.exists(), "the denied write happened");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "the notes");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "fine");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_file(policy).unwrap();
}

#[tokio::test]
async fn two_servers_behind_one_gateway_from_a_configuration_file() {
    let upstream = servers::demo::Demo::start(
        PolicyLayer::new(r#"{"version":"1","default":"allow"}"#.parse::<Policy>().unwrap()),
        true,
    )
    .await;
    let dir = std::env::temp_dir().join(format!("tmp-several-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(servers::demo::example_policy(), dir.join("exchange.json")).unwrap();
    std::fs::write(
        dir.join("everything.json"),
        r#"{"version":"1","default":"deny","tools":{"echo":{}}}"#,
    )
    .unwrap();
    let config = json!({"servers": {
        "exchange": {"url": upstream.url(), "policy": "exchange.json"},
        // The last argument, ignored by the server, finds its process in /proc.
        "everything": {"command": ["node", everything_entry(), "stdio", dir], "policy": "everything.json"}
    }});
    let path = dir.join("gateway.json");
    std::fs::write(&path, config.to_string()).unwrap();

    // The file is valid under the schema `mcp-policy schema --gateway` prints.
    let schema = Command::new(env!("CARGO_BIN_EXE_mcp-policy"))
        .args(["schema", "--gateway"])
        .output()
        .unwrap();
    let schema: serde_json::Value = serde_json::from_slice(&schema.stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(validator.is_valid(&config));
    assert!(!validator.is_valid(&json!({"servers": {"x": {"url": "http://h/mcp", "polic": "p"}}})));

    let file = mcp_policy::gateway::GatewayFile::load(&path).unwrap();
    let options = mcp_policy::serving::Serving::default();
    let several = mcp_policy::gateway::Servers::build(&file, &options)
        .await
        .unwrap();
    several.watch(path.clone(), options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(mcp_policy::gateway::serve_servers(
        listener,
        several,
        std::future::pending(),
    ));

    // The exchange, over http, under its own policy.
    let client = connect(format!("{base}/exchange/mcp"), "alice").await;
    assert_eq!(
        servers::demo::tool_names(&client).await,
        servers::demo::VISIBLE_TOOLS
    );
    let denied = call(&client, "transfer", json!({"amount": 2500, "to": "x"})).await;
    assert_eq!(
        denied["content"][0]["text"],
        "[POLICY DENIED] Transfers above 1000 need human approval."
    );
    let price = call(&client, "get_price", json!({"symbol": "ETHUSD"})).await;
    assert_eq!(price["isError"], false);
    assert_eq!(upstream.executions.of("transfer"), 0);
    assert_eq!(upstream.executions.of("get_price"), 1);
    client.cancel().await.unwrap();

    // The reference server, over stdio, under its own.
    let steps = json!([
        {"call": "echo", "args": {"message": "hi"}},
        {"call": "get-sum", "args": {"a": 1, "b": 2}},
    ]);
    let lines = servers::demo::node_script(
        "client.mjs",
        vec![
            format!("{base}/everything/mcp"),
            "t".to_owned(),
            steps.to_string(),
        ],
    )
    .await;
    assert_eq!(
        lines[0]["result"]["content"][0]["text"], "Echo: hi",
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[1]["result"]["content"][0]["text"],
        "[POLICY DENIED] Tool \"get-sum\" is not allowed by this policy.",
        "{}",
        lines[1]
    );

    // One /metrics, a server label; one /readyz; unknown names are 404.
    let get = |path: &str| {
        let url = format!("{base}{path}");
        async move {
            let response = reqwest::get(url).await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (_, metrics) = get("/metrics").await;
    assert!(metrics.contains(r#"server="exchange""#), "{metrics}");
    assert!(metrics.contains(r#"server="everything""#), "{metrics}");
    assert_eq!(get("/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(get("/nope/mcp").await.0, 404);

    let marker = dir.display().to_string();
    let running = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&marker))
        })
    };
    assert!(running(), "the stdio server's process is not found");

    // Removing a server from the file takes it away without a restart.
    let config =
        json!({"servers": {"exchange": {"url": upstream.url(), "policy": "exchange.json"}}});
    std::fs::write(&path, config.to_string()).unwrap();
    let mut gone = false;
    for _ in 0..50 {
        let body = json!({"jsonrpc":"2.0","id":1,"method":"ping"}).to_string();
        let response = raw(
            reqwest::Method::POST,
            &format!("{base}/everything/mcp"),
            &[("content-type", "application/json")],
            body,
        )
        .await;
        if response.status() == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "the removed server is still served");
    // And its process is stopped.
    let mut stopped = false;
    for _ in 0..50 {
        if !running() {
            stopped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(stopped, "the removed server's process still runs");
    let client = connect(format!("{base}/exchange/mcp"), "alice").await;
    assert_eq!(
        servers::demo::tool_names(&client).await,
        servers::demo::VISIBLE_TOOLS
    );
    client.cancel().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_cancelled_call_reaches_the_stdio_server_as_its_own() {
    let policy = write_temp("cancel-policy.json", r#"{"version":"1","default":"allow"}"#);
    let log = std::env::temp_dir().join(format!("tmp-cancel-log-{}", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let script = servers::demo::ensure_npm_packages().join("crashy.mjs");
    let gateway = GatewayProcess::start(
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--env",
            &format!("STARTS_FILE={}", log.display()),
            "--",
            "node",
            script.to_str().unwrap(),
        ],
        &[],
    );

    // The client gives up on `slow` and sends notifications/cancelled with its own
    // request id; the gateway maps it to the id the child knows, so the child's handler
    // is aborted. The next call on the same child works.
    let steps = json!([
        {"call": "slow", "args": {}, "abortAfterMs": 300},
        {"call": "echo", "args": {"text": "after"}},
    ]);
    let lines = servers::demo::node_script(
        "client.mjs",
        vec![gateway.url.clone(), "t".to_owned(), steps.to_string()],
    )
    .await;
    assert!(lines[0]["error"].is_object(), "{}", lines[0]);
    assert_eq!(
        lines[1]["result"]["content"][0]["text"], "echo: after",
        "{}",
        lines[1]
    );
    let mut written = String::new();
    for _ in 0..50 {
        written = std::fs::read_to_string(&log).unwrap_or_default();
        if written.contains("cancelled") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(written, "started\ncancelled\n");
    std::fs::remove_file(policy).unwrap();
    std::fs::remove_file(log).unwrap();
}

#[tokio::test]
async fn the_gateway_command_trusts_an_https_upstream_through_upstream_ca() {
    let upstream = https_upstream("https-command").await;
    let policy = servers::demo::example_policy();
    let gateway = GatewayProcess::start(
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--upstream",
            &upstream.url,
            "--upstream-ca",
            upstream.ca.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(gateway.get("/readyz").await.0, 200);
    let client = connect(gateway.url.clone(), "alice").await;
    let result = call(&client, "get_price", json!({"symbol": "BTCUSD"})).await;
    assert_eq!(
        result["content"][0]["text"],
        r#"get_price ran with {"symbol":"BTCUSD"}"#
    );
    let denied = call(&client, "transfer", json!({"amount": 2500, "to": "x"})).await;
    assert_eq!(denied["isError"], true, "{denied}");
    assert_eq!(upstream.executions.of("get_price"), 1);
    assert_eq!(upstream.executions.of("transfer"), 0);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_message_sent_while_the_stdio_server_starts_waits_for_it() {
    // On this single-threaded runtime the call below runs before the task that
    // starts the child: the message must wait for the child, not be written nowhere
    // (its caller would wait forever; what `wrap` did under load).
    use mcp_policy::gateway::{Clients, ServerCommand, StdioServer};
    use tower::ServiceExt;
    let script = servers::demo::ensure_npm_packages().join("crashy.mjs");
    let command = ServerCommand::new(&["node".to_owned(), script.display().to_string()]).unwrap();
    let (server, _unsolicited) = StdioServer::start(command, Clients::One);
    assert!(server.readiness().is_err(), "not running yet");
    let allow_all: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let service = tower::Layer::layer(&PolicyLayer::new(allow_all), server.clone());
    let request = tower_mcp_policy::testing::request(
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "test", "version": "1"}}),
    );
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let response = service.oneshot(request).await.unwrap();
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes()
    })
    .await
    .expect("answered within 30s");
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["id"], 1, "{answer}");
    assert!(answer["result"]["serverInfo"].is_object(), "{answer}");
}
