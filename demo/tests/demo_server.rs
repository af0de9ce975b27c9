//! The demo server example as a user runs it (`cargo test` builds it first): its
//! start-up, its errors, its log, `--watch` and its metrics. The `mcp-policy` command
//! run the same way is tested in `mcp-policy/tests/`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The demo server's binary, which cargo builds for these tests.
fn demo_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_demo_server"))
}

/// The repository's root, where the demo's default paths (`examples/policy.json`) are.
fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Starts the demo server with `args` on a free port; returns it and its address.
fn spawn_demo(args: &[&std::ffi::OsStr], stderr: Stdio) -> (std::process::Child, String) {
    let mut child = Command::new(demo_binary())
        .current_dir(repository())
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--json"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = stdout.next().unwrap().unwrap();
    let address = first
        .strip_prefix("demo MCP server listening on http://")
        .and_then(|a| a.strip_suffix("/mcp"))
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    // Keep reading what it prints: with the pipe closed, its next line would kill it.
    std::thread::spawn(move || stdout.for_each(drop));
    (child, address)
}

fn bad_policy() -> PathBuf {
    let path = std::env::temp_dir().join(format!("tmp-bad-policy-{}.json", std::process::id()));
    std::fs::write(
        &path,
        "{\"version\":\"1\",\"default\":\"deny\",\n \"tools\":{\"transfer\":{\"deny_if\":[{\"conditions\":[{\"path\":\"args.amount\",\"op\":\"gtt\",\"value\":1}]}]}}}\n",
    )
    .unwrap();
    path
}

#[test]
fn a_bad_policy_stops_the_demo_server_with_its_path_and_line() {
    let policy = bad_policy();
    {
        let binary = demo_binary();
        let output = Command::new(&binary)
            .arg("--policy")
            .arg(&policy)
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
fn the_demo_server_starts_and_prints_its_address_and_policy() {
    let mut child = Command::new(demo_binary())
        .current_dir(repository())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        first.starts_with("demo MCP server listening on http://127.0.0.1:")
            && first.ends_with("/mcp"),
        "{first}"
    );
    assert_eq!(
        second,
        "policy examples/policy.json: default deny; 4 tool rules; 1 hidden; counters: binance_us_close_listen_key_rate 30 per minute per grant"
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    let output = Command::new(demo_binary())
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid value 'nowhere' for '--listen <ADDR>'"),
        "{stderr}"
    );
}

#[test]
fn a_tool_name_cannot_forge_a_log_line_or_colour_the_log() {
    let (mut child, address) = spawn_demo(&[], Stdio::piped());
    // A denied call whose tool name would print a fake "allowed" line in red.
    let forged = "nope\n2026-11-26T00:00:00Z  INFO tower_mcp_policy: tool call allowed \u{1b}[31mred\u{1b}[0m";
    let answer = call_demo(&address, forged);
    assert!(answer.contains("[POLICY DENIED]"), "{answer}");
    child.kill().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    child.wait().unwrap();

    let denial: Vec<&str> = log.lines().filter(|l| l.contains("nope")).collect();
    assert_eq!(denial.len(), 1, "one event, one line: {log}");
    assert!(denial[0].contains("decision=\"deny\""), "{log}");
    assert!(denial[0].contains("nope\\n2026-11-26"), "{log}");
    assert!(denial[0].contains("\\u{1b}[31mred"), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-11-26T00:00:00Z")),
        "a forged line: {log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "no escape bytes when not a terminal: {log:?}"
    );
}

/// Posts a tools/call of `tool` to the demo server at `address` (JSON mode); the answer.
fn call_demo(address: &str, tool: &str) -> String {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": {"text": "hi"}}})
    .to_string();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(address, &request)
}

/// Sends a raw HTTP/1.1 `request` (with `connection: close`); the whole answer.
fn exchange(address: &str, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    answer
}

#[test]
fn editing_the_policy_under_watch_changes_decisions_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("tmp-demo-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"version":"1","default":"deny","tools":{"get_price":{}}}"#,
    )
    .unwrap();
    let (mut child, address) = spawn_demo(
        &["--policy".as_ref(), policy.as_os_str(), "--watch".as_ref()],
        Stdio::null(),
    );
    assert!(call_demo(&address, "echo").contains("[POLICY DENIED]"));

    std::fs::write(
        &policy,
        r#"{"version":"1","default":"deny","tools":{"echo":{}}}"#,
    )
    .unwrap();
    let started = std::time::Instant::now();
    while call_demo(&address, "echo").contains("[POLICY DENIED]") {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the edit was not picked up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A broken edit changes nothing.
    std::fs::write(&policy, "{ not json").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!call_demo(&address, "echo").contains("[POLICY DENIED]"));
    // Both reloads are counted.
    let metrics = get(&address, "/metrics");
    assert!(
        metrics.contains("mcp_policy_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mcp_policy_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// GETs `path` from `address`; the whole answer, head included.
fn get(address: &str, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
    exchange(address, &request)
}

#[test]
fn the_demo_server_serves_its_decisions_as_prometheus_metrics() {
    let (mut child, address) = spawn_demo(&[], Stdio::null());
    assert!(call_demo(&address, "invented_tool").contains("[POLICY DENIED]"));
    assert!(call_demo(&address, "another_invented_tool").contains("[POLICY DENIED]"));
    let metrics = get(&address, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let line = "mcp_policy_decisions_total{decision=\"deny\",kind=\"not_allowed\",tool=\"other\",policy=\"enforced\"} 2";
    assert!(metrics.contains(line), "{metrics}");
    assert!(metrics.contains("mcp_policy_decision_seconds"), "{metrics}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Posts a tools/call of `tool` with `args`, as the bearer of `token` (none: no
/// `Authorization`), to the demo server at `address` (JSON mode); the whole answer.
fn call_as(address: &str, token: Option<&str>, tool: &str, args: serde_json::Value) -> String {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": args}})
    .to_string();
    let authorization = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\n{authorization}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(address, &request)
}

/// The README's walk-through of `examples/grants/`: two agents, two tokens, two
/// policies, through one demo server; no token or a wrong one reaches nothing.
#[test]
fn the_grants_walkthrough_of_the_readme() {
    let (mut child, address) = spawn_demo(
        &["--grants".as_ref(), "examples/grants/grants.json".as_ref()],
        Stdio::null(),
    );
    let transfer = serde_json::json!({"amount": 5000, "to": "bob"});
    let research = Some("demo-research-token");
    let trading = Some("demo-trading-token");
    let answer = call_as(
        &address,
        research,
        "get_price",
        serde_json::json!({"symbol": "BTCUSD"}),
    );
    assert!(answer.contains("get_price ran"), "{answer}");
    let answer = call_as(&address, research, "transfer", transfer.clone());
    assert!(answer.contains("Unknown tool: transfer"), "{answer}");
    let answer = call_as(&address, trading, "transfer", transfer.clone());
    assert!(
        answer.contains("Transfers above 1000 need human approval."),
        "{answer}"
    );
    let small = serde_json::json!({"amount": 50, "to": "bob"});
    let answer = call_as(&address, trading, "transfer", small);
    assert!(answer.contains("transfer ran"), "{answer}");
    for token in [None, Some("demo-stolen-token")] {
        let answer = call_as(
            &address,
            token,
            "get_price",
            serde_json::json!({"symbol": "BTCUSD"}),
        );
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(
            answer.to_lowercase().contains("www-authenticate: bearer"),
            "{answer}"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn editing_the_grants_file_under_watch_changes_who_gets_in_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("tmp-demo-grants-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("steady.json"),
        r#"{"version":"1","default":"deny","tools":{"get_price":{},
            "echo":{"limits":[{"counter":"echoes","window":"hour","max":3,"scope":"grant"}]}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("open.json"),
        r#"{"version":"1","default":"allow"}"#,
    )
    .unwrap();
    let hash = tower_mcp_policy::Grants::hash_token;
    let grants = |entries: serde_json::Value| {
        let doc = serde_json::json!({"version": "1",
            "policies": {"steady": "steady.json", "open": "open.json"}, "grants": entries});
        // Written whole and renamed, as an operator's tools do.
        let temporary = dir.join("grants.json.tmp");
        std::fs::write(&temporary, doc.to_string()).unwrap();
        std::fs::rename(&temporary, dir.join("grants.json")).unwrap();
    };
    grants(serde_json::json!({
        "steady": {"policy": "steady", "token_sha256": hash("t-steady")},
        "leaving": {"policy": "open", "token_sha256": hash("t-leaving")},
        "moving": {"policy": "open", "token_sha256": hash("t-moving")},
    }));
    let file = dir.join("grants.json");
    let (mut child, address) = spawn_demo(
        &["--grants".as_ref(), file.as_os_str(), "--watch".as_ref()],
        Stdio::null(),
    );
    let hi = || serde_json::json!({"text": "hi"});
    for _ in 0..2 {
        assert!(call_as(&address, Some("t-steady"), "echo", hi()).contains("echo ran"));
    }
    assert!(
        call_as(
            &address,
            Some("t-moving"),
            "transfer",
            serde_json::json!({"amount": 1, "to": "x"})
        )
        .contains("transfer ran")
    );

    // Under load: the steady grant keeps calling while the file changes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (address, stop) = (address.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut calls = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let args = serde_json::json!({"symbol": "BTCUSD"});
                let answer = call_as(&address, Some("t-steady"), "get_price", args);
                assert!(
                    answer.contains("get_price ran"),
                    "during the reload: {answer}"
                );
                calls += 1;
            }
            calls
        })
    };
    // "leaving" revoked, "moving" moved to the steady policy, "arriving" added.
    grants(serde_json::json!({
        "steady": {"policy": "steady", "token_sha256": hash("t-steady")},
        "leaving": {"policy": "open", "token_sha256": hash("t-leaving"), "revoked": true},
        "moving": {"policy": "steady", "token_sha256": hash("t-moving")},
        "arriving": {"policy": "open", "token_sha256": hash("t-arriving")},
    }));
    let started = std::time::Instant::now();
    while !call_as(&address, Some("t-arriving"), "echo", hi()).contains("echo ran") {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the edit was not picked up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(load.join().unwrap() > 0);
    assert!(call_as(&address, Some("t-leaving"), "echo", hi()).starts_with("HTTP/1.1 401"));
    let moved = call_as(
        &address,
        Some("t-moving"),
        "transfer",
        serde_json::json!({"amount": 1, "to": "x"}),
    );
    assert!(moved.contains("[POLICY DENIED]"), "{moved}");
    // The steady grant's counter survived the reload: one echo of three is left.
    assert!(call_as(&address, Some("t-steady"), "echo", hi()).contains("echo ran"));
    let spent = call_as(&address, Some("t-steady"), "echo", hi());
    assert!(spent.contains("Rate limit of 3 per hour"), "{spent}");
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// The demo server's `tools/list` answer (JSON mode), as a value.
fn list_demo(address: &str) -> serde_json::Value {
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    // HTTP/1.0: a filtered answer has no length, and comes unchunked.
    let request = format!(
        "POST /mcp HTTP/1.0\r\nhost: {address}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(address, &request);
    let (_, json) = answer.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// `--pins` with `--watch`: a tool without a pin is withheld and denied; once the
/// operator pins it, the watched file lets it through without a restart.
#[test]
fn pins_on_the_demo_server_reload_under_watch() {
    let dir = std::env::temp_dir().join(format!("tmp-demo-pins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pins = dir.join("tools.lock.json");
    std::fs::write(&pins, r#"{"version":"1","tools":{}}"#).unwrap();
    let (mut child, address) = spawn_demo(
        &["--pins".as_ref(), pins.as_os_str(), "--watch".as_ref()],
        Stdio::null(),
    );
    let denied = call_demo(&address, "echo");
    assert!(
        denied.contains("has not been reviewed (it has no pin)"),
        "{denied}"
    );
    assert_eq!(
        list_demo(&address)["result"]["tools"],
        serde_json::json!([])
    );

    // The operator reviews the tools of an unpinned demo server, and pins them.
    let (mut reference, reference_address) = spawn_demo(&[], Stdio::null());
    let tools = list_demo(&reference_address)["result"]["tools"].clone();
    reference.kill().unwrap();
    reference.wait().unwrap();
    let lock = tower_mcp_policy::unstable::Pins::lock(
        ("demo", "1"),
        tools.as_array().unwrap(),
        "2026-12-04T00:00:00Z",
    );
    let temporary = dir.join("tools.lock.json.tmp");
    std::fs::write(&temporary, lock.to_string()).unwrap();
    std::fs::rename(&temporary, &pins).unwrap();
    let started = std::time::Instant::now();
    while !call_demo(&address, "echo").contains("echo ran") {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the new pins were not picked up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(list_demo(&address)["result"]["tools"], tools);
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// `--list-only-allowed`: under default deny, tools without a rule leave the list.
#[test]
fn list_only_allowed_leaves_tools_without_a_rule_out_of_the_list() {
    let dir = std::env::temp_dir().join(format!("tmp-demo-listing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"version":"1","default":"deny","tools":{"echo":{},"get_price":{}}}"#,
    )
    .unwrap();
    let names = |args: &[&std::ffi::OsStr]| {
        let (mut child, address) = spawn_demo(args, Stdio::null());
        let tools = list_demo(&address)["result"]["tools"].clone();
        child.kill().unwrap();
        child.wait().unwrap();
        let mut names: Vec<String> = tools
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let all = names(&["--policy".as_ref(), policy.as_os_str()]);
    assert_eq!(all.len(), 5, "{all:?}");
    let allowed = names(&[
        "--policy".as_ref(),
        policy.as_os_str(),
        "--list-only-allowed".as_ref(),
    ]);
    assert_eq!(allowed, ["echo", "get_price"]);
    std::fs::remove_dir_all(dir).unwrap();
}
