//! `mcp-policy` as a user runs it, spawned as a process: `check` against the demo
//! server and the TypeScript reference server, `explain` on the fixtures, `schema`
//! against the fixtures and bad documents, the help, and `gateway` in front of the demo
//! exchange (its proxy code is also driven in process by tests/gateway.rs and
//! tests/interop_ts.rs, which also checks its start-up errors).

#[path = "../../tests/servers/mod.rs"]
mod servers;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{Value, json};
use servers::demo::Demo;
use servers::everything::Everything;
use tower_mcp_policy::{Policy, PolicyLayer};

/// Runs `mcp-policy args…` (off the async runtime: the servers under test run on it).
async fn mcp_policy(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_mcp-policy"))
            .current_dir(support::repository())
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcp-policy"))
        .current_dir(support::repository())
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// A policy file of this test's own, removed when dropped.
struct TempPolicy(PathBuf);

impl TempPolicy {
    fn new(name: &str, text: &str) -> TempPolicy {
        let path = std::env::temp_dir().join(format!(
            "mcp-policy-test-{}-{name}.json",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        TempPolicy(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempPolicy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The `check --json` entry of each server tool: name → (verdict, rule).
fn verdicts(report: &Value) -> Vec<(String, String, Value)> {
    report["policies"][0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| {
            (
                tool["name"].as_str().unwrap().to_owned(),
                tool["verdict"].as_str().unwrap().to_owned(),
                tool["rule"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_against_the_demo_server_gives_every_tool_its_verdict() {
    let demo = Demo::example(false).await;
    let output = mcp_policy(strings(&[
        "check",
        "examples/policy.json",
        "--server",
        &demo.url(),
    ]))
    .await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    // Every tool the demo server lists (it hides delete_account itself), with its verdict.
    assert_has_lines(
        &text,
        &[
            "binance_us_close_listen_key  limited                  binance_us_close_listen_key  binance_us_close_listen_key_rate (30 per minute per grant)",
            "echo                         allowed                  echo                         -",
            "get_price                    allowed                  get_price                    -",
            "transfer                     allowed with conditions  transfer                     -",
        ],
    );
    assert!(
        text.contains("/hide/0: `delete_account` hides none of the server's tools"),
        "{text}"
    );
    assert!(
        text.contains(
            "(a server that is already behind this policy does not list the tools it hides)"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_flags_a_misspelt_tool_name_and_strict_makes_it_fail() {
    // The demo exchange with no policy of its own: all five tools are listed.
    let allow_all: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let demo = Demo::start(PolicyLayer::new(allow_all), true).await;
    let misspelt = TempPolicy::new(
        "misspelt",
        r#"{ "version": "1", "default": "deny", "hide": ["delete_account"],
             "tools": { "get_price": {}, "transfr": { "deny_if": [{ "conditions": [
                 { "path": "args.amount", "op": "gt", "value": 1000 }] }] },
                        "binance_*": { "limits": [{ "counter": "b", "window": "minute", "max": 30 }] } } }"#,
    );
    let args = |extra: &[&str]| {
        let mut args = strings(&["check", misspelt.path(), "--server", &demo.url()]);
        args.extend(strings(extra));
        args
    };

    let output = mcp_policy(args(&[])).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    assert!(
        text.contains("/tools/transfr: `transfr`: the server has no tool of this name (did you mean `transfer`?)"),
        "{text}"
    );
    assert!(
        text.contains("transfer                     denied by default"),
        "{text}"
    );
    assert!(
        text.contains("delete_account               hidden"),
        "{text}"
    );

    let output = mcp_policy(args(&["--strict"])).await;
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(stderr(&output).contains("1 warning(s), and --strict"));

    let output = mcp_policy(args(&["--json"])).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(
        verdicts(&report),
        [
            (
                "binance_us_close_listen_key".into(),
                "limited".into(),
                json!("binance_*")
            ),
            ("delete_account".into(), "hidden".into(), Value::Null),
            ("echo".into(), "denied by default".into(), Value::Null),
            ("get_price".into(), "allowed".into(), json!("get_price")),
            ("transfer".into(), "denied by default".into(), Value::Null),
        ]
    );
    assert_eq!(
        report["policies"][0]["unmatched"],
        json!([{ "pointer": "/tools/transfr",
                 "message": "`transfr`: the server has no tool of this name",
                 "did_you_mean": "transfer" }])
    );
    assert_eq!(
        report["policies"][0]["tools"][0]["counters"],
        json!([{ "name": "b", "max": 30, "window_seconds": 60, "scope": "grant" }])
    );
    assert_eq!(report["server"]["tools"], 5);
    assert_eq!(report["warnings"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_against_the_typescript_reference_server() {
    let server = Everything::start().await;
    // What the official TypeScript client is shown, independently of mcp-policy.
    let listed = servers::demo::node_script("list_tools.mjs", vec![server.url.clone()]).await;
    let names: Vec<String> = serde_json::from_value(listed[0]["tools"].clone()).unwrap();
    assert!(names.len() > 5, "{listed:?}");

    let misspelt = TempPolicy::new(
        "everything",
        &std::fs::read_to_string(
            support::repository().join("tests/fixtures/everything-policy.json"),
        )
        .unwrap()
        .replace("\"get-sum\"", "\"get-summ\""),
    );
    let output = mcp_policy(strings(&[
        "check",
        "tests/fixtures/everything-policy.json",
        misspelt.path(),
        "--server",
        &server.url,
        "--json",
    ]))
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let tools = verdicts(&report);
    let reported: Vec<&str> = tools.iter().map(|(name, ..)| name.as_str()).collect();
    assert_eq!(reported, names, "every server tool, once, sorted");
    for (name, verdict, rule) in &tools {
        let expected = match name.as_str() {
            "get-env" => ("hidden", Value::Null),
            "get-sum" => ("allowed with conditions", json!("get-sum")),
            "echo" => ("limited", json!("echo")),
            n if n.starts_with("trigger-") => ("limited", json!("trigger-*")),
            _ => ("allowed", Value::Null),
        };
        assert_eq!((verdict.as_str(), rule.clone()), expected, "{name}");
    }
    assert_eq!(report["policies"][0]["unmatched"], json!([]), "{report:#}");
    let unmatched = &report["policies"][1]["unmatched"];
    assert_eq!(unmatched[0]["pointer"], "/tools/get-summ", "{unmatched}");
    assert_eq!(unmatched[0]["did_you_mean"], "get-sum", "{unmatched}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_load_errors_and_unreachable_servers() {
    let broken = TempPolicy::new(
        "broken",
        "{\"version\":\"1\",\"default\":\"deny\",\n \"tools\":{\"x\":{\"limits\":[{\"counter\":\"c\",\"window\":\"fortnight\",\"max\":1}]}}}",
    );
    let output = mcp_policy(strings(&[
        "check",
        "examples/policy.json",
        broken.path(),
        "--json",
    ]))
    .await;
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["policies"].as_array().unwrap().len(), 1);
    let error = &report["errors"][0];
    assert_eq!(error["pointer"], "/tools/x/limits/0/window");
    assert!(
        error["error"].as_str().unwrap().starts_with(broken.path()),
        "{error}"
    );
    assert!(
        stderr(&output).contains("invalid window \"fortnight\""),
        "{}",
        stderr(&output)
    );

    // Nothing listens on port 9 of loopback (discard, never served in CI).
    let output = mcp_policy(strings(&[
        "check",
        "examples/policy.json",
        "--server",
        "http://127.0.0.1:9/mcp",
    ]))
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot list the tools of http://127.0.0.1:9/mcp"),
        "{}",
        stderr(&output)
    );
    // Readable: no SDK type names, one line, a hint.
    let said = stderr(&output);
    assert!(!said.contains("rmcp::"), "{said}");
    assert!(said.contains("is the server running"), "{said}");
    assert_eq!(said.trim_end().lines().count(), 1, "{said}");

    // A server with nothing at that path.
    let allow_all: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let demo = Demo::start(PolicyLayer::new(allow_all), true).await;
    let wrong = demo.url().replace("/mcp", "/nothing-here");
    let output = mcp_policy(strings(&[
        "check",
        "examples/policy.json",
        "--server",
        &wrong,
    ]))
    .await;
    let said = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains("HTTP 404") && said.contains("usually serve /mcp"),
        "{said}"
    );
    assert!(!said.contains("rmcp::"), "{said}");

    let output = run(&["check", "examples/policy.json", "--header", "Accept: */*"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("accept is set by the MCP client itself"));
}

#[test]
fn check_strict_fails_on_load_time_warnings_only_when_asked() {
    let shadowed = TempPolicy::new(
        "shadowed",
        r#"{ "version": "1", "default": "deny", "hide": ["admin_*"], "tools": { "admin_reset": {} } }"#,
    );
    let output = run(&["check", shadowed.path()]);
    assert_eq!(output.status.code(), Some(0));
    assert!(
        stdout(&output).contains(": warning: /tools/admin_reset:"),
        "{}",
        stdout(&output)
    );
    assert_eq!(
        run(&["check", shadowed.path(), "--strict"]).status.code(),
        Some(2)
    );
    let clean = run(&["check", "examples/policy.json", "--strict"]);
    assert_eq!(clean.status.code(), Some(0), "{}", stdout(&clean));
}

/// `explain` on a fixture: its output, which must succeed.
fn explain(policy: &str, tool: &str, args: &str) -> String {
    let output = run(&["explain", policy, tool, args]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    stdout(&output)
}

/// Fails, showing `text`, unless it has every one of `lines`.
fn assert_has_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(text.contains(line), "no line {line:?} in:\n{text}");
    }
}

const PAYMENTS: &str = "tests/fixtures/policies/payments.json";

#[test]
fn explain_an_allowed_call_with_its_conditions_and_charges() {
    let text = explain(
        PAYMENTS,
        "create_charge",
        r#"{"currency": "usd", "amount": 10}"#,
    );
    assert_has_lines(
        &text,
        &[
            "tool     /tools/create_charge: the rule for \"create_charge\" applies (exact name); `all_tools` applies too",
            "deny_if  /tools/create_charge/deny_if/0: a condition is false: pass",
            "           args.amount gt 5000: value 10: false",
            "require  /tools/create_charge/require/0: all conditions hold: pass",
            "           args.currency in [\"usd\",\"eur\"]: value \"usd\": true",
            "limit    /all_tools/limits/0: charges 1 to counter \"calls_per_minute\" (120 per minute per grant)",
            "limit    /tools/create_charge/limits/0: charges 1 to counter \"charges\" (50 per hour per grant)",
            "decision ALLOW: the call is forwarded to the server",
            "the call is forwarded to the MCP server, which answers the agent.",
        ],
    );
}

#[test]
fn explain_a_call_denied_by_a_condition_with_its_pointer_and_answer() {
    let text = explain(
        PAYMENTS,
        "create_charge",
        r#"{"currency": "usd", "amount": 5000.0000000000001}"#,
    );
    assert_has_lines(
        &text,
        &[
            "deny_if  /tools/create_charge/deny_if/0: all conditions hold: deny",
            "           args.amount gt 5000: value 5000.0000000000001: true",
            "decision DENY (deny_if, /tools/create_charge/deny_if/0): Charges above 5000 need a human.",
            "the agent reads (HTTP 200):",
            r#""_meta":{"tower-mcp-policy/denial":{"kind":"deny_if","rule":"/tools/create_charge/deny_if/0","tool":"create_charge"}}"#,
            r#""text":"[POLICY DENIED] Charges above 5000 need a human.""#,
        ],
    );
    // Evaluation stops at the denial: no require, no limit.
    assert!(!text.contains("require  "), "{text}");
    assert!(!text.contains("limit    "), "{text}");
}

#[test]
fn explain_an_argument_that_cannot_be_evaluated() {
    let text = explain(
        PAYMENTS,
        "create_charge",
        r#"{"currency": "usd", "amount": "lots"}"#,
    );
    assert_has_lines(
        &text,
        &[
            "deny_if  /tools/create_charge/deny_if/0: a condition cannot be evaluated: deny (fail closed)",
            "           args.amount gt 5000: value \"lots\": cannot be evaluated (argument `args.amount` is a string, but `gt` needs a number)",
            "decision DENY (deny_if, /tools/create_charge/deny_if/0): Charges above 5000 need a human. (the rule could not be checked: argument `args.amount` is a string, but `gt` needs a number)",
        ],
    );
    let text = explain(PAYMENTS, "refund_charge", "{}");
    assert!(
        text.contains("           args.reason exists true: value (absent): false"),
        "{text}"
    );
}

#[test]
fn explain_limits_hidden_and_unknown_tools() {
    let costly = TempPolicy::new(
        "costly",
        r#"{ "version": "1", "default": "deny", "tools": { "buy": { "limits": [
             { "counter": "units", "window": "hour", "max": 10, "increment_from": "args.quantity" }] } } }"#,
    );
    let text = explain(costly.path(), "buy", r#"{"quantity": 2.5}"#);
    assert!(
        text.contains(
            "limit    /tools/buy/limits/0: charges 3 to counter \"units\" (10 per hour per grant)"
        ),
        "{text}"
    );
    let text = explain(costly.path(), "buy", r#"{"quantity": 11}"#);
    assert!(
        text.contains("limit    /tools/buy/limits/0: costs 11, more than counter \"units\" (10 per hour per grant) allows: deny"),
        "{text}"
    );
    assert!(
        text.contains("decision DENY (limit, /tools/buy/limits/0)"),
        "{text}"
    );
    assert!(text.contains(r#""kind":"limit""#), "{text}");

    let text = explain(PAYMENTS, "delete_account", "{}");
    assert!(
        text.contains("tool     (hidden): \"delete_account\" is hidden: the agent is told the tool does not exist"),
        "{text}"
    );
    assert!(text.contains("Unknown tool: delete_account"), "{text}");

    let text = explain(PAYMENTS, "drop_database", "{}");
    assert!(
        text.contains("decision DENY (not_allowed, (default deny)): Tool \"drop_database\" is not allowed by this policy."),
        "{text}"
    );
}

#[test]
fn explain_refuses_arguments_that_are_not_an_object() {
    let output = run(&["explain", PAYMENTS, "create_charge", "[1, 2]"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("ARGS_JSON must be a JSON object"));
    let output = run(&["explain", PAYMENTS, "create_charge", r#"{"a": 1, "a": 2}"#]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("duplicate key"),
        "{}",
        stderr(&output)
    );
}

fn schema() -> Value {
    let output = run(&["schema"]);
    assert_eq!(output.status.code(), Some(0));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_committed_schema_is_the_generated_one() {
    let committed =
        std::fs::read_to_string(support::repository().join("policy.schema.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&committed).unwrap(),
        schema(),
        "policy.schema.json is stale: run `cargo run -p mcp-policy -- schema > policy.schema.json`"
    );
    assert_eq!(
        schema()["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}

#[test]
fn every_fixture_is_valid_under_the_schema() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let root = support::repository();
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(root.join("tests/fixtures/policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fixtures.push(root.join("tests/fixtures/everything-policy.json"));
    fixtures.push(root.join("examples/policy.json"));
    for path in &fixtures {
        let document: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&document)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        Policy::from_file(path).unwrap();
    }
    // Editors find the schema through `$schema`, which the loader accepts and ignores.
    let with_schema =
        json!({ "$schema": "./policy.schema.json", "version": "1", "default": "deny" });
    assert!(validator.is_valid(&with_schema));
    with_schema.to_string().parse::<Policy>().unwrap();
}

#[test]
fn bad_documents_the_schema_can_express_are_rejected_by_schema_and_loader() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let base = json!({ "version": "1", "default": "deny", "tools": { "transfer": {
        "deny_if": [{ "conditions": [{ "path": "args.amount", "op": "gt", "value": 1000 }] }],
        "limits": [{ "counter": "c", "window": "minute", "max": 5 }] } } });
    assert!(validator.is_valid(&base));
    base.to_string().parse::<Policy>().unwrap();
    let bad: Vec<(&str, Value, &str)> = vec![
        ("/version", json!("2"), "wrong version"),
        ("/default", json!("maybe"), "unknown default"),
        ("/extra", json!(true), "unknown top-level field"),
        ("/hide", json!("debug_*"), "hide not an array"),
        ("/tools/transfer/allow", json!(true), "unknown rule field"),
        (
            "/tools/transfer/deny_if/0/conditions/0/op",
            json!("gtt"),
            "unknown operator",
        ),
        (
            "/tools/transfer/deny_if/0/conditions/0/path",
            json!("amount"),
            "path outside args",
        ),
        (
            "/tools/transfer/deny_if/0/conditions/0/value",
            json!("1000"),
            "gt on a string",
        ),
        (
            "/tools/transfer/deny_if/0/conditions/0/extra",
            json!(1),
            "unknown condition field",
        ),
        ("/tools/transfer/limits/0/max", json!(0), "max zero"),
        (
            "/tools/transfer/limits/0/max",
            json!(4_294_967_296u64),
            "max too large",
        ),
        (
            "/tools/transfer/limits/0/window",
            json!("fortnight"),
            "unknown window",
        ),
        ("/tools/transfer/limits/0/window", json!(0), "zero window"),
        (
            "/tools/transfer/limits/0/window",
            json!("0s"),
            "zero window text",
        ),
        (
            "/tools/transfer/limits/0/scope",
            json!("tenant"),
            "unknown scope",
        ),
        (
            "/tools/transfer/limits/0/increment_from",
            json!("quantity"),
            "cost outside args",
        ),
    ];
    for (pointer, value, what) in bad {
        let mut document = base.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        document.pointer_mut(parent).unwrap()[key] = value;
        assert!(
            !validator.is_valid(&document),
            "the schema accepts {what}: {document}"
        );
        assert!(
            document.to_string().parse::<Policy>().is_err(),
            "the loader accepts {what}: {document}"
        );
    }
    // Conditions with the operand of the wrong type for their operator.
    for (op, value) in [
        ("in", json!("usd")),
        ("exists", json!("yes")),
        ("regex", json!(5)),
        ("lte", json!([1])),
    ] {
        let mut document = base.clone();
        document["tools"]["transfer"]["deny_if"][0]["conditions"][0] =
            json!({ "path": "args.amount", "op": op, "value": value });
        assert!(
            !validator.is_valid(&document),
            "the schema accepts {op} {value}"
        );
        assert!(
            document.to_string().parse::<Policy>().is_err(),
            "the loader accepts {op} {value}"
        );
    }
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    let top = run(&["--help"]);
    assert_eq!(top.status.code(), Some(0));
    for command in ["check", "explain", "schema", "gateway"] {
        assert!(
            stdout(&top).contains(&format!("  mcp-policy {command} ")),
            "{}",
            stdout(&top)
        );
        let help = run(&[command, "--help"]);
        assert_eq!(help.status.code(), Some(0));
        let text = stdout(&help);
        assert!(text.contains("Examples:"), "{command}: {text}");
        assert!(
            text.contains(&format!("  mcp-policy {command}")),
            "{command}: {text}"
        );
    }
    let usage = run(&["frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
}

/// `mcp-policy gateway` as installed: in front of the demo exchange (which has no
/// policy of its own), rmcp's client sees the policy's tools, an allowed call runs, a
/// denied one does not, and `/metrics` counts both.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_runs_from_the_binary() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let allow_all: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let upstream = Demo::start(PolicyLayer::new(allow_all), false).await;
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_mcp-policy"))
        .current_dir(support::repository())
        .args(["gateway", "--policy", "examples/policy.json", "--upstream"])
        .arg(upstream.url())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(gateway.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .strip_prefix("policy gateway listening on ")
        .and_then(|rest| rest.split(" -> ").next())
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    std::thread::spawn(move || lines.for_each(drop));

    let client = servers::demo::connect(url.clone(), "agent-1").await;
    assert_eq!(
        servers::demo::tool_names(&client).await,
        [
            "binance_us_close_listen_key",
            "echo",
            "get_price",
            "transfer"
        ],
        "delete_account is hidden by the gateway"
    );
    let allowed = servers::demo::call(&client, "get_price", json!({"symbol": "BTCUSD"})).await;
    assert!(
        servers::demo::text(&allowed).contains("get_price ran"),
        "{allowed}"
    );
    let denied = servers::demo::call(&client, "transfer", json!({"to": "x", "amount": 5000})).await;
    assert!(
        servers::demo::text(&denied).starts_with("[POLICY DENIED]"),
        "{denied}"
    );
    assert_eq!(
        upstream.executions.of("transfer"),
        0,
        "the denied call never ran"
    );

    let metrics_url = url.replace("/mcp", "/metrics");
    let metrics = servers::demo::raw(reqwest::Method::GET, &metrics_url, &[], "")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"decision="deny",kind="deny_if",tool="transfer""#),
        "{metrics}"
    );
    assert!(
        metrics.contains("# HELP mcp_policy_decisions_total Tool-call decisions"),
        "{metrics}"
    );
    gateway.kill().unwrap();
    gateway.wait().unwrap();
}

#[test]
fn explain_suggests_the_rule_a_misspelt_tool_name_probably_meant() {
    let text = explain(PAYMENTS, "create_chrage", "{}");
    assert!(text.contains("decision DENY (not_allowed"), "{text}");
    assert!(
        text.contains("no rule names `create_chrage`: did you mean `create_charge`?"),
        "{text}"
    );
    let text = explain(PAYMENTS, "drop_database", "{}");
    assert!(!text.contains("did you mean"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_with_grants_prints_what_each_grant_may_do_with_each_tool() {
    let allow_all: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let demo = Demo::start(PolicyLayer::new(allow_all), false).await;
    let args = [
        "check",
        "--grants",
        "examples/grants/grants.json",
        "--server",
        &demo.url(),
    ];
    let output = mcp_policy(strings(&args)).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    // Each of the file's policies is checked, then the table.
    assert!(
        text.contains("examples/grants/read-only.json: loads"),
        "{text}"
    );
    assert!(
        text.contains("examples/grants/trader.json: loads"),
        "{text}"
    );
    assert_has_lines(
        &text,
        &[
            "TOOL                         research-agent (read-only)  trading-bot (trader)",
            "binance_us_close_listen_key  hidden                      limited",
            "delete_account               hidden                      hidden",
            "echo                         allowed                     allowed",
            "get_price                    limited                     allowed",
            "transfer                     hidden                      conditional",
        ],
    );
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let output = mcp_policy(strings(&json_args)).await;
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["grants"][1]["grant"], "trading-bot");
    assert_eq!(report["grants"][1]["tools"]["transfer"], "conditional");
    assert_eq!(report["grants"][0]["tools"]["transfer"], "hidden");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_flags_an_argument_path_that_no_tool_schema_has() {
    let allow_all: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let demo = Demo::start(PolicyLayer::new(allow_all), true).await;
    // `args.amout`: a typo that would deny every transfer above nothing.
    let typo = TempPolicy::new(
        "typo",
        r#"{ "version": "1", "default": "deny",
             "tools": { "transfer": { "deny_if": [{ "conditions": [
                 { "path": "args.amout", "op": "gt", "value": 1000 },
                 { "path": "args.to", "op": "eq", "value": "x" }] }] } } }"#,
    );
    let args = strings(&["check", typo.path(), "--server", &demo.url()]);
    let output = mcp_policy(args.clone()).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    assert!(
        text.contains("argument paths that name no argument of the tool:\n  /tools/transfer/deny_if/0/conditions/0/path: `args.amout`: the tool `transfer` has no argument `amout` in its inputSchema (it has: amount, to)"),
        "{text}"
    );
    assert!(
        !text.contains("conditions/1/path"),
        "args.to exists: {text}"
    );
    let mut strict = args.clone();
    strict.push("--strict".into());
    assert_eq!(mcp_policy(strict).await.status.code(), Some(2));
    let mut json_args = args;
    json_args.push("--json".into());
    let report: Value = serde_json::from_slice(&mcp_policy(json_args).await.stdout).unwrap();
    assert_eq!(
        report["policies"][0]["unknown_arguments"][0]["pointer"],
        "/tools/transfer/deny_if/0/conditions/0/path"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_marks_the_tools_that_need_a_persons_approval() {
    let allow_all: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let demo = Demo::start(PolicyLayer::new(allow_all), true).await;
    let policy = TempPolicy::new(
        "approval",
        r#"{"version":"1","default":"allow","tools":{
            "transfer":{"require_approval":{"when":[{"conditions":[{"path":"args.amont","op":"gt","value":100}]}]}},
            "echo":{"require_approval":{}}}}"#,
    );
    let output = mcp_policy(strings(&["check", policy.path(), "--server", &demo.url()])).await;
    let text = stdout(&output);
    // (A `when` is part of the approval: "with conditions" counts deny_if and require.)
    for tool in ["echo ", "transfer "] {
        assert!(
            text.lines()
                .any(|line| line.starts_with(tool) && line.contains(" approval ")),
            "{text}"
        );
    }
    // A `when` path no argument has is flagged like any condition's.
    assert!(
        text.contains("/tools/transfer/require_approval/when/0/conditions/0/path"),
        "{text}"
    );
}
