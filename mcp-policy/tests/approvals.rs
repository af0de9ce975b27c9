//! `require_approval` out of band through `mcp-policy gateway`: rmcp's client calls a
//! tool that needs a person's approval, an operator approves or declines it through the
//! gateway's approvals API, and the demo exchange behind it records what ran.

mod process;
#[path = "../../tests/servers/mod.rs"]
mod servers;
#[path = "../../tests/support/mod.rs"]
mod support;

use process::{GatewayProcess, write_temp};
use serde_json::{Value, json};
use servers::demo::{Demo, call, connect, raw, text};
use tower_mcp_policy::{Policy, PolicyLayer};

const TOKEN: &str = "approver-token-0123456789abcdef";

const POLICY: &str = r#"{"version":"1","default":"allow","tools":{
    "transfer":{"require_approval":{
        "when":[{"conditions":[{"path":"args.amount","op":"gt","value":100}]}],
        "reason":"Transfers above 100 need a person's approval."}}}}"#;

/// The demo exchange (allowing everything) behind a gateway under the approvals policy,
/// started with `flags` and `env`. The policy file goes with it.
struct Behind {
    upstream: Demo,
    gateway: GatewayProcess,
    policy: std::path::PathBuf,
}

impl Drop for Behind {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.policy);
    }
}

async fn behind_gateway(name: &str, flags: &[&str], env: &[(&str, &str)]) -> Behind {
    let allow_all: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let upstream = Demo::start(PolicyLayer::new(allow_all), true).await;
    let policy = write_temp(name, POLICY);
    let mut args = vec!["--policy", policy.to_str().unwrap()];
    let url = upstream.url();
    args.extend(["--upstream", url.as_str()]);
    args.extend(flags);
    let gateway = GatewayProcess::start(&args, env);
    Behind {
        upstream,
        gateway,
        policy,
    }
}

async fn api(
    gateway: &GatewayProcess,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let url = gateway.url.replace("/mcp", path);
    let response = raw(method, &url, headers, "").await;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

#[tokio::test]
async fn an_operator_approves_one_call_through_the_gateway_api() {
    let setup = behind_gateway(
        "approval-policy.json",
        &[],
        &[("MCP_POLICY_APPROVER_TOKEN", TOKEN)],
    )
    .await;
    let (upstream, gateway) = (&setup.upstream, &setup.gateway);
    let bearer = format!("Bearer {TOKEN}");
    let operator = [("authorization", bearer.as_str())];
    let client = connect(gateway.url.clone(), "agent-token").await;
    let args = json!({"amount": 500, "to": "bob"});

    let asked = call(&client, "transfer", args.clone()).await;
    assert_eq!(asked["isError"], true, "{asked}");
    assert!(text(&asked).contains("is pending"), "{asked}");
    assert_eq!(upstream.executions.of("transfer"), 0);

    // Only an approver sees or answers requests; the agent's own token is not one.
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let (status, _) = api(gateway, get.clone(), "/approvals", &[]).await;
    assert_eq!(status, 401);
    let agent = [("authorization", "Bearer agent-token")];
    assert_eq!(api(gateway, get.clone(), "/approvals", &agent).await.0, 401);
    let (status, listed) = api(gateway, get.clone(), "/approvals", &operator).await;
    assert_eq!(status, 200, "{listed}");
    let pending = listed["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{listed}");
    assert_eq!(pending[0]["arguments"], args);
    assert_eq!(pending[0]["tool"], "transfer");
    let id = pending[0]["id"].as_str().unwrap().to_owned();
    assert!(text(&asked).contains(&id), "{asked}");

    // A page of another site cannot make the operator's browser approve.
    let path = format!("/approvals/{id}/approve");
    let forged = [operator[0], ("origin", "https://evil.example")];
    assert_eq!(api(gateway, post.clone(), &path, &forged).await.0, 403);
    let (status, unknown) = api(gateway, post.clone(), "/approvals/nope/approve", &operator).await;
    assert_eq!(status, 404, "{unknown}");

    let (status, approved) = api(gateway, post.clone(), &path, &operator).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["by"], "operator");
    assert_eq!(upstream.executions.of("transfer"), 0);
    // Answered once only.
    assert_eq!(api(gateway, post.clone(), &path, &operator).await.0, 404);

    let ran = call(&client, "transfer", args.clone()).await;
    assert_eq!(ran["isError"], false, "{ran}");
    assert_eq!(upstream.executions.of("transfer"), 1);
    let again = call(&client, "transfer", args.clone()).await;
    assert!(text(&again).contains("is pending"), "{again}");
    assert_eq!(upstream.executions.of("transfer"), 1);

    // Declined: told so, and it never runs.
    let (_, listed) = api(gateway, get, "/approvals", &operator).await;
    let id = listed["pending"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = api(
        gateway,
        post,
        &format!("/approvals/{id}/decline"),
        &operator,
    )
    .await;
    assert_eq!(status, 200);
    let declined = call(&client, "transfer", args).await;
    assert!(
        text(&declined).contains(&format!("operator declined approval {id}")),
        "{declined}"
    );
    assert_eq!(upstream.executions.of("transfer"), 1);
    // A call the rule does not name runs at once.
    let small = call(&client, "transfer", json!({"amount": 5, "to": "bob"})).await;
    assert_eq!(small["isError"], false, "{small}");
    assert_eq!(upstream.executions.of("transfer"), 2);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn the_approvals_page_lists_the_call_and_its_button_approves_it() {
    let approvers = write_temp(
        "approvers.txt",
        "# who may approve\nana:ana-token-0123456789abcdef\n",
    );
    let setup = behind_gateway(
        "approval-page-policy.json",
        &["--approver-token-file", approvers.to_str().unwrap()],
        &[],
    )
    .await;
    let (upstream, gateway) = (&setup.upstream, &setup.gateway);
    let client = connect(gateway.url.clone(), "agent-token").await;
    let args = json!({"amount": 750, "to": "<b>carol</b>"});
    let asked = call(&client, "transfer", args.clone()).await;
    assert!(text(&asked).contains("is pending"), "{asked}");

    // A browser: first asked who it is, then shown the page.
    let page = gateway.url.replace("/mcp", "/approvals");
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let anonymous = browser
        .get(&page)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let challenge = anonymous.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic "), "{challenge}");

    let shown = browser
        .get(&page)
        .header("accept", "text/html")
        .basic_auth("ana", Some("ana-token-0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status(), 200);
    assert!(
        shown.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = shown.text().await.unwrap();
    assert!(html.contains("<h2>transfer</h2>"), "{html}");
    assert!(
        html.contains("Transfers above 100 need a person&#39;s approval."),
        "{html}"
    );
    assert!(
        html.contains("&lt;b&gt;carol&lt;/b&gt;") && !html.contains("<b>carol"),
        "{html}"
    );
    assert!(html.contains("Signed in as <b>ana</b>"), "{html}");
    let start = html.find("action=\"approvals/").unwrap() + "action=\"".len();
    let action = &html[start..start + html[start..].find('"').unwrap()];
    assert!(action.ends_with("/approve"), "{action}");

    // The Approve button: a form POST from the page itself.
    let host = gateway.url.split('/').nth(2).unwrap().to_owned();
    let pressed = browser
        .post(gateway.url.replace("/mcp", &format!("/{action}")))
        .header("accept", "text/html")
        .header("origin", format!("http://{host}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .basic_auth("ana", Some("ana-token-0123456789abcdef"))
        .body("approve=")
        .send()
        .await
        .unwrap();
    assert_eq!(pressed.status(), 303);
    // Back to the page (relative: the page may be /NAME/approvals).
    assert_eq!(pressed.headers()["location"], "../../approvals");
    assert_eq!(upstream.executions.of("transfer"), 0);

    let ran = call(&client, "transfer", args).await;
    assert_eq!(ran["isError"], false, "{ran}");
    assert_eq!(upstream.executions.of("transfer"), 1);
    let empty = browser
        .get(&page)
        .header("accept", "text/html")
        .basic_auth("ana", Some("ana-token-0123456789abcdef"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        empty.contains("No call is waiting for approval."),
        "{empty}"
    );
    // With a trailing slash the page's relative links would miss: sent back.
    let slash = browser
        .get(format!("{page}/"))
        .header("accept", "text/html")
        .basic_auth("ana", Some("ana-token-0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(slash.status(), 303);
    assert_eq!(slash.headers()["location"], "../approvals");
    client.cancel().await.unwrap();
    std::fs::remove_file(approvers).unwrap();
}

/// Two gateways sharing one Redis (as replicas behind a load balancer): a call asked
/// through one is approved through the other's API, and runs once through either.
#[tokio::test]
async fn two_gateways_on_one_redis_agree_on_approvals() {
    let redis = support::redis_server::Redis::start();
    let allow_all: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let upstream = Demo::start(PolicyLayer::new(allow_all), true).await;
    let policy = write_temp("approval-redis-policy.json", POLICY);
    let start = || {
        GatewayProcess::start(
            &[
                "--policy",
                policy.to_str().unwrap(),
                "--upstream",
                &upstream.url(),
                "--redis",
                &redis.url(),
            ],
            &[("MCP_POLICY_APPROVER_TOKEN", TOKEN)],
        )
    };
    let (one, two) = (start(), start());
    let bearer = format!("Bearer {TOKEN}");
    let operator = [("authorization", bearer.as_str())];
    let via_one = connect(one.url.clone(), "agent-token").await;
    let via_two = connect(two.url.clone(), "agent-token").await;
    let args = json!({"amount": 500, "to": "bob"});

    let asked = call(&via_one, "transfer", args.clone()).await;
    assert!(text(&asked).contains("is pending"), "{asked}");
    let (status, listed) = api(&two, reqwest::Method::GET, "/approvals", &operator).await;
    assert_eq!(status, 200, "{listed}");
    let id = listed["pending"][0]["id"].as_str().unwrap().to_owned();
    let path = format!("/approvals/{id}/approve");
    let (status, approved) = api(&two, reqwest::Method::POST, &path, &operator).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(upstream.executions.of("transfer"), 0);

    let ran = call(&via_one, "transfer", args.clone()).await;
    assert_eq!(ran["isError"], false, "{ran}");
    let again = call(&via_two, "transfer", args).await;
    assert!(text(&again).contains("is pending"), "{again}");
    assert_eq!(upstream.executions.of("transfer"), 1);
    via_one.cancel().await.unwrap();
    via_two.cancel().await.unwrap();
    std::fs::remove_file(policy).unwrap();
}

/// The approvals page in headless Chromium (Debian's `chromium`, driven by
/// playwright-core from tests/ts): it lists the pending call, its Approve button
/// approves it, and the call then runs on retry. Fails when Chromium is missing
/// (`apt-get install chromium`).
#[tokio::test]
async fn an_operator_approves_the_call_in_a_real_browser() {
    let approvers = write_temp("browser-approvers.txt", "ana:ana-token-0123456789abcdef\n");
    let setup = behind_gateway(
        "approval-browser-policy.json",
        &["--approver-token-file", approvers.to_str().unwrap()],
        &[],
    )
    .await;
    let (upstream, gateway) = (&setup.upstream, &setup.gateway);
    let client = connect(gateway.url.clone(), "agent-token").await;
    let args = json!({"amount": 750, "to": "carol"});
    let asked = call(&client, "transfer", args.clone()).await;
    assert!(text(&asked).contains("is pending"), "{asked}");

    assert!(
        std::path::Path::new("/usr/bin/chromium").exists()
            || std::env::var_os("CHROMIUM").is_some(),
        "Chromium is needed for this test (apt-get install chromium)"
    );
    let page = gateway.url.replace("/mcp", "/approvals");
    let args_out = vec![
        page,
        "ana".to_owned(),
        "ana-token-0123456789abcdef".to_owned(),
    ];
    let out = servers::demo::node_script("approvals_page.mjs", args_out).await;
    let [seen] = &out[..] else { panic!("{out:?}") };
    let listed = seen["before"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{seen}");
    let card = listed[0].as_str().unwrap();
    for part in [
        "transfer",
        "Transfers above 100 need a person's approval.",
        "carol",
        "750",
    ] {
        assert!(card.contains(part), "{part} in {card}");
    }
    let after = seen["after"].as_str().unwrap();
    assert!(
        after.contains("No call is waiting for approval."),
        "{after}"
    );
    assert!(
        seen["url"].as_str().unwrap().ends_with("/approvals"),
        "{seen}"
    );
    assert_eq!(upstream.executions.of("transfer"), 0);

    let ran = call(&client, "transfer", args.clone()).await;
    assert_eq!(ran["isError"], false, "{ran}");
    assert_eq!(upstream.executions.of("transfer"), 1);
    // Used up: the next one asks again.
    let again = call(&client, "transfer", args).await;
    assert!(text(&again).contains("is pending"), "{again}");
    assert_eq!(upstream.executions.of("transfer"), 1);
    client.cancel().await.unwrap();
    std::fs::remove_file(approvers).unwrap();
}

#[tokio::test]
async fn each_new_request_is_posted_to_the_approval_webhook() {
    // A webhook receiver on loopback that keeps what it is sent.
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let keep = received.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            keep.lock()
                .unwrap()
                .push(serde_json::from_str(&body).unwrap());
            std::future::ready("ok")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    let setup = behind_gateway(
        "approval-hook-policy.json",
        &["--approval-webhook", &hook],
        &[("MCP_POLICY_APPROVER_TOKEN", TOKEN)],
    )
    .await;
    let (upstream, gateway) = (&setup.upstream, &setup.gateway);
    let client = connect(gateway.url.clone(), "agent-token").await;
    let args = json!({"amount": 300, "to": "dan"});
    call(&client, "transfer", args.clone()).await;
    // The same call again is the same request: not posted twice.
    call(&client, "transfer", args.clone()).await;
    let mut posted = Vec::new();
    for _ in 0..50 {
        posted = received.lock().unwrap().clone();
        if !posted.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(received.lock().unwrap().len(), 1, "{posted:?}");
    let approval = &posted[0]["approval"];
    assert_eq!(approval["tool"], "transfer");
    assert_eq!(approval["arguments"], args);
    assert_eq!(
        approval["reason"],
        "Transfers above 100 need a person's approval."
    );
    let id = approval["id"].as_str().unwrap();
    let text = posted[0]["text"].as_str().unwrap();
    assert!(
        text.contains("transfer") && text.contains(&format!("/approvals/{id}/approve")),
        "{text}"
    );
    assert_eq!(upstream.executions.of("transfer"), 0);
    client.cancel().await.unwrap();
}

/// `--public-url`: a client that opens links for its user (and shows no form) is sent
/// to the gateway's approvals page for a call that waits for an operator.
#[tokio::test]
async fn a_client_that_opens_links_is_sent_to_the_gateways_approvals_page() {
    let setup = behind_gateway(
        "approval-public-url-policy.json",
        &["--public-url", "https://gateway.example/"],
        &[("MCP_POLICY_APPROVER_TOKEN", TOKEN)],
    )
    .await;
    let (upstream, gateway) = (&setup.upstream, &setup.gateway);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "transfer", "arguments": {"amount": 500, "to": "bob"},
        "_meta": {"io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}}}}});
    let headers = [
        ("content-type", "application/json"),
        ("authorization", "Bearer agent-token"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "transfer"),
    ];
    let answer: Value = raw(
        reqwest::Method::POST,
        &gateway.url,
        &headers,
        body.to_string(),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(answer["error"]["code"], -32042, "{answer}");
    let bearer = format!("Bearer {TOKEN}");
    let (_, listed) = api(
        gateway,
        reqwest::Method::GET,
        "/approvals",
        &[("authorization", &bearer)],
    )
    .await;
    let id = listed["pending"][0]["id"].as_str().unwrap();
    assert_eq!(
        answer["error"]["data"]["elicitations"][0]["url"],
        format!("https://gateway.example/approvals#{id}")
    );
    assert_eq!(upstream.executions.of("transfer"), 0);
}

/// What `mcp-policy gateway` with the approvals policy and `flags` prints as it stops
/// at start-up (it must exit with 1).
fn refused_at_start(name: &str, flags: [&str; 2]) -> String {
    let policy = write_temp(name, POLICY);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-policy"))
        .arg("gateway")
        .arg("--policy")
        .arg(&policy)
        .args(["--upstream", "http://127.0.0.1:9/mcp"])
        .args(["--listen", "127.0.0.1:0"])
        .args(flags)
        .output()
        .unwrap();
    std::fs::remove_file(policy).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}

#[test]
fn a_public_url_that_is_not_a_web_address_stops_the_gateway() {
    let flags = ["--public-url", "gateway.example"];
    let stderr = refused_at_start("approval-bad-public-url-policy.json", flags);
    assert!(
        stderr.contains("--public-url gateway.example: must be an http or https URL"),
        "{stderr}"
    );
}

#[test]
fn a_webhook_that_is_not_an_http_url_stops_the_gateway() {
    let flags = ["--approval-webhook", "ftp://example/hook"];
    let stderr = refused_at_start("approval-bad-hook-policy.json", flags);
    assert!(
        stderr.contains("expected an http:// or https:// URL"),
        "{stderr}"
    );
}

#[tokio::test]
async fn each_server_behind_one_gateway_has_its_approvals_at_its_own_path() {
    let approvers = write_temp("several-approvers.txt", "ana:ana-token-0123456789abcdef\n");
    mcp_policy::gateway::load_approvers("test", Some(&approvers));
    let allow_all: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let upstream = Demo::start(PolicyLayer::new(allow_all), true).await;
    let policy = write_temp("several-approval-policy.json", POLICY);
    let config = write_temp(
        "several-approvals.json",
        &json!({"servers": {"bank": {"url": upstream.url(), "policy": policy}}}).to_string(),
    );
    let file = mcp_policy::gateway::GatewayFile::load(&config).unwrap();
    let options = mcp_policy::serving::Serving::default();
    let several = mcp_policy::gateway::Servers::build(&file, &options)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(mcp_policy::gateway::serve_servers(
        listener,
        several,
        std::future::pending(),
    ));

    let client = connect(format!("{base}/bank/mcp"), "agent-token").await;
    let args = json!({"amount": 1000, "to": "erin"});
    let asked = call(&client, "transfer", args.clone()).await;
    assert!(text(&asked).contains("is pending"), "{asked}");
    let operator = [("authorization", "Bearer ana-token-0123456789abcdef")];
    let listed = raw(
        reqwest::Method::GET,
        &format!("{base}/bank/approvals"),
        &operator,
        "",
    )
    .await;
    assert_eq!(listed.status(), 200);
    let listed: Value = serde_json::from_str(&listed.text().await.unwrap()).unwrap();
    let id = listed["pending"][0]["id"].as_str().unwrap().to_owned();
    // Another server's path does not know it.
    let elsewhere = format!("{base}/other/approvals/{id}/approve");
    assert_eq!(
        raw(reqwest::Method::POST, &elsewhere, &operator, "")
            .await
            .status(),
        404
    );
    let approve = format!("{base}/bank/approvals/{id}/approve");
    let approved = raw(reqwest::Method::POST, &approve, &operator, "").await;
    assert_eq!(approved.status(), 200);
    let ran = call(&client, "transfer", args).await;
    assert_eq!(ran["isError"], false, "{ran}");
    assert_eq!(upstream.executions.of("transfer"), 1);
    client.cancel().await.unwrap();
    for file in [approvers, policy, config] {
        std::fs::remove_file(file).unwrap();
    }
}
