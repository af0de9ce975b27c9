//! Loading: every fixture loads unchanged, and every load error names its path.

use tower_mcp_policy::{Policy, PolicyErrorKind, Scope};

const FIXTURES: &[&str] = &[
    "docs-allow-one.json",
    "docs-deny-transfer.json",
    "docs-skeleton.json",
    "docs-write-rate.json",
    "hide-all.json",
    "payments.json",
    "seed-binance-rate-limit.json",
];

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/policies")
        .join(name)
}

#[test]
fn every_fixture_loads() {
    for name in FIXTURES {
        Policy::from_file(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let count = std::fs::read_dir(fixture("")).unwrap().count();
    assert_eq!(count, FIXTURES.len(), "a fixture was added without a test");
}

#[test]
fn fixtures_compile_to_what_they_say() {
    let payments = Policy::from_file(fixture("payments.json")).unwrap();
    let names: Vec<_> = payments.counters().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["calls_per_minute", "charges", "emails", "reports"]);
    let charges = &payments.counters()[1];
    assert_eq!(charges.max().get(), 50);
    assert_eq!(charges.window().as_secs(), 3600);
    assert_eq!(payments.counters()[2].scope(), Scope::Session);
    assert_eq!(payments.counters()[3].scope(), Scope::Global);
    assert!(payments.is_hidden("delete_account"));
    assert!(!payments.default_allows());

    let hide_all = Policy::from_file(fixture("hide-all.json")).unwrap();
    assert!(hide_all.is_hidden("anything") && hide_all.is_hidden(""));

    let seed = Policy::from_file(fixture("seed-binance-rate-limit.json")).unwrap();
    assert_eq!(
        seed.summary(),
        "default deny; 1 tool rule; nothing hidden; counters: binance_us_close_listen_key_rate 30 per minute per grant"
    );
}

/// Loads `text` and returns the error's Display, pointer and kind.
fn load_error(text: &str) -> (String, String, PolicyErrorKind) {
    let err = text.parse::<Policy>().expect_err("should not load");
    (err.to_string(), err.pointer().to_owned(), err.kind())
}

#[test]
fn syntax_errors_have_line_and_column() {
    let (shown, _, kind) = load_error("{\n  \"version\": \"1\",\n  \"default\": deny\n}");
    assert_eq!(kind, PolicyErrorKind::Syntax);
    assert!(shown.contains("(line 3, column 14)"), "{shown}");
    let (shown, _, kind) = load_error(r#"{"version":"1","default":"deny"} extra"#);
    assert_eq!(kind, PolicyErrorKind::Syntax);
    assert!(shown.contains("trailing characters"), "{shown}");
}

#[test]
fn invalid_documents_name_the_json_pointer() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"require_approval":{"when":[]}}}}"#,
            "/tools/t/require_approval/when",
            "`when` lists no item",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"require_approval":{"timeout":"soon"}}}}"#,
            "/tools/t/require_approval/timeout",
            "expected \"second\"",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"require_approval":{"reason":"  "}}}}"#,
            "/tools/t/require_approval/reason",
            "must not be empty",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"require_approval":{"when":[{"conditions":[{"path":"args.a","op":"gt","value":"x"}]}]}}}}"#,
            "/tools/t/require_approval/when/0/conditions/0/value",
            "must be a number",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"require_approval":{"approver":"me"}}}}"#,
            "/tools/t/require_approval/approver",
            "unknown field `approver`",
        ),
        (
            r#"{"version":"2","default":"deny"}"#,
            "/version",
            "only \"1\"",
        ),
        (r#"{"default":"deny"}"#, "", "missing field `version`"),
        (r#"{"version":"1"}"#, "", "missing field `default`"),
        (
            r#"{"version":"1","default":"maybe"}"#,
            "/default",
            "unknown variant `maybe`",
        ),
        (
            r#"{"version":"1","default":"deny","colour":1}"#,
            "/colour",
            "unknown field `colour`",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"deny_if":[{"conditions":[{"path":"args.a","op":"eq","value":1},{"path":"args.b","op":"gtt","value":1}]}]}}}"#,
            "/tools/t/deny_if/0/conditions/1/op",
            "unknown variant `gtt`",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"require":[{"conditions":[{"path":"args.a","op":"gt","value":"1000"}]}]}}}"#,
            "/tools/t/require/0/conditions/0/value",
            "must be a number, not a string",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"deny_if":[{"conditions":[{"path":"amount","op":"eq","value":1}]}]}}}"#,
            "/tools/t/deny_if/0/conditions/0/path",
            "must start with `args`",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"deny_if":[{"conditions":[{"path":"args.a","op":"regex","value":"("}]}]}}}"#,
            "/tools/t/deny_if/0/conditions/0/value",
            "invalid regex",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"deny_if":[{"conditions":[],"unless":1}]}}}"#,
            "/tools/t/deny_if/0/unless",
            "unknown field `unless`",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"deny_if":[{"on_deny":"x"}]}}}"#,
            "/tools/t/deny_if/0",
            "missing field `conditions`",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"a/b~c":{"limits":[{"counter":"c","window":"fortnight","max":3}]}}}"#,
            "/tools/a~1b~0c/limits/0/window",
            "invalid window \"fortnight\"",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"limits":[{"counter":"c","window":"minute","max":0}]}}}"#,
            "/tools/t/limits/0/max",
            "from 1 to 4294967295, not 0",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"limits":[{"counter":"c","window":"minute","max":-1}]}}}"#,
            "/tools/t/limits/0/max",
            "invalid value: integer `-1`",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"limits":[{"counter":"c","window":"minute","max":5,"scope":"tenant"}]}}}"#,
            "/tools/t/limits/0/scope",
            "unknown variant `tenant`",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{"limits":[{"counter":"c","window":"minute","max":5,"increment_from":"amount"}]}}}"#,
            "/tools/t/limits/0/increment_from",
            "must start with `args`",
        ),
        (
            r#"{"version":"1","default":"deny","tools":{"t":{},"t":{}}}"#,
            "/tools",
            "duplicate key `t`",
        ),
        (
            r#"{"version":"1","default":"deny","all_tools":{"limits":[{"counter":"c","window":"minute","max":5}]},"tools":{"t":{"limits":[{"counter":"c","window":"hour","max":5}]}}}"#,
            "/tools/t/limits/0",
            "counter `c` is defined as 5 per hour per grant here but as 5 per minute per grant at /all_tools/limits/0",
        ),
        (
            r#"{"version":"1","default":"deny","hide":[""]}"#,
            "/hide/0",
            "must not be empty",
        ),
        (
            r#"{"version":"1","default":"deny","hide":"x"}"#,
            "/hide",
            "invalid type: string",
        ),
    ];
    for (text, pointer, needle) in cases {
        let (shown, at, kind) = load_error(text);
        assert_eq!(&at, pointer, "{text}\n=> {shown}");
        assert!(
            shown.contains(needle),
            "{text}\n=> {shown}\nwanted: {needle}"
        );
        assert!(!shown.contains('\n'), "one line: {shown}");
        assert_ne!(kind, PolicyErrorKind::Io);
    }
}

#[test]
fn file_errors_name_the_file() {
    let missing = Policy::from_file("/nonexistent/policy.json").unwrap_err();
    assert_eq!(missing.kind(), PolicyErrorKind::Io);
    assert!(
        missing
            .to_string()
            .starts_with("/nonexistent/policy.json: cannot read")
    );

    let dir = std::env::temp_dir().join(format!("tmp-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.json");
    std::fs::write(&file, "{\"version\":\"1\",\n\"default\":\"deny\",\n\"tools\":{\"t\":{\"limits\":[{\"counter\":\"c\",\"window\":\"minute\",\"max\":1.5}]}}}").unwrap();
    let err = Policy::from_file(&file).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!(
            "{}: /tools/t/limits/0/max: invalid type: floating point `1.5`",
            file.display()
        )),
        "{shown}"
    );
    assert_eq!(err.line(), Some(3));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_load_error_debugs_as_its_message() {
    // What `main() -> Result<(), Box<dyn Error>>` prints.
    let err = r#"{"version":"1","default":"deny","tools":{"t":{"limits":[
        {"counter":"c","window":"minute","max":0}]}}}"#
        .parse::<tower_mcp_policy::Policy>()
        .unwrap_err();
    assert_eq!(format!("{err:?}"), err.to_string());
    assert!(
        format!("{err:?}").starts_with("/tools/t/limits/0/max: "),
        "{err:?}"
    );
}

#[test]
fn a_rule_for_a_hidden_tool_is_a_warning() {
    let policy: tower_mcp_policy::Policy = r#"{"version":"1","default":"deny",
        "hide":["drop_table","admin_*"],
        "tools":{"drop_table":{},"admin_reset":{"limits":[{"counter":"c","window":"day","max":1}]},
                 "admin_*":{},"read_table":{}}}"#
        .parse()
        .unwrap();
    // In document order.
    let warnings: Vec<String> = policy.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "/tools/drop_table: this rule never applies: `drop_table` is hidden by /hide/0, and a hidden tool is refused as unknown before its rule is read",
            "/tools/admin_reset: this rule never applies: `admin_reset` is hidden by /hide/1, and a hidden tool is refused as unknown before its rule is read",
            "/tools/admin_*: this rule never applies: `admin_*` is hidden by /hide/1, and a hidden tool is refused as unknown before its rule is read",
        ]
    );
    // The real documents load clean.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let policy = tower_mcp_policy::Policy::from_file(&path).unwrap();
        assert!(
            policy.warnings().is_empty(),
            "{}: {:?}",
            path.display(),
            policy.warnings()
        );
    }
}

#[test]
fn a_pattern_every_name_of_which_another_takes_first_is_a_warning() {
    // Precedence is most literal characters first, then key order, so a pattern can be
    // shadowed only by one with as many literals that sorts first: `a*b*` takes every
    // name `ab*` matches (and more).
    let policy: tower_mcp_policy::Policy = r#"{"version":"1","default":"deny","tools":{
        "ab*":{}, "a*b*":{}, "binance_*":{}, "binance_us_*":{}, "*_key":{}}}"#
        .parse()
        .unwrap();
    let warnings: Vec<String> = policy.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "/tools/ab*: this rule never applies: every tool `ab*` matches is matched first by `a*b*`, which has more literal characters (or sorts first)"
        ]
    );
    assert_eq!(
        policy.rule_key("abc"),
        Some("a*b*"),
        "what the warning says"
    );
    // Overlapping patterns are not shadowed: each takes names the other does not.
    let policy: tower_mcp_policy::Policy = r#"{"version":"1","default":"deny","tools":{
        "get_*":{}, "*_price":{}, "get_*_price":{}}}"#
        .parse()
        .unwrap();
    assert!(policy.warnings().is_empty(), "{:?}", policy.warnings());
}

#[test]
fn a_limit_no_call_can_pass_is_a_warning() {
    let policy: tower_mcp_policy::Policy = r#"{"version":"1","default":"deny","tools":{
        "wire":{"require":[{"conditions":[{"path":"args.amount","op":"gt","value":5000}]}],
                "limits":[{"counter":"w","window":"day","max":5000,"increment_from":"args.amount"}]},
        "card":{"require":[{"conditions":[{"path":"args.amount","op":"gte","value":5000}]}],
                "limits":[{"counter":"c","window":"day","max":5000,"increment_from":"args.amount"}]}}}"#
        .parse()
        .unwrap();
    let warnings: Vec<String> = policy.warnings().iter().map(ToString::to_string).collect();
    // `card` can pass one call of exactly 5000; `wire` none.
    assert_eq!(
        warnings,
        [
            "/tools/wire/limits/0: this limit never lets a call through: /tools/wire/require/0 requires `args.amount` above 5000, which is the call's cost, and the limit's max is 5000"
        ]
    );
}

/// A document with several mistakes reports them all in one error, each with its
/// pointer (the first with its line), so one run of the loader or `mcp-policy check`
/// shows every fix to make.
#[test]
fn every_mistake_of_a_document_is_reported_at_once() {
    // Three mistakes of the format: a default that does not exist, an unknown field,
    // an unknown operator.
    let error = r#"{"version":"1","default":"maybe","tools":{
        "a":{"limit":[]},
        "b":{"deny_if":[{"conditions":[{"path":"args.x","op":"gtt","value":1}]}]}}}"#
        .parse::<Policy>()
        .unwrap_err();
    let mut pointers: Vec<&str> = std::iter::once(&error)
        .chain(error.others())
        .map(|e| e.pointer())
        .collect();
    pointers.sort_unstable();
    assert_eq!(
        pointers,
        [
            "/default",
            "/tools/a/limit",
            "/tools/b/deny_if/0/conditions/0/op"
        ],
        "{error}"
    );
    assert!(error.line().is_some(), "the first knows its line: {error}");
    assert_eq!(error.to_string().lines().count(), 3, "{error}");

    // Three mistakes the compiler finds: three windows that do not exist.
    let error = r#"{"version":"1","default":"deny","tools":{
        "a":{"limits":[{"counter":"a","window":"fortnight","max":1}]},
        "b":{"limits":[{"counter":"b","window":"decade","max":1}]},
        "c":{"limits":[{"counter":"c","window":"eon","max":1}]}}}"#
        .parse::<Policy>()
        .unwrap_err();
    assert_eq!(error.others().len(), 2, "{error}");
    let text = error.to_string();
    for window in ["fortnight", "decade", "eon"] {
        assert!(text.contains(window), "{text}");
    }
}

#[test]
fn require_approval_is_explained_and_summarized() {
    let policy: Policy = r#"{"version":"1","default":"deny","tools":{
        "transfer":{"limits":[{"counter":"t","window":"minute","max":5}],
          "require_approval":{"when":[{"conditions":[{"path":"args.amount","op":"gt","value":100}]}],
            "timeout":"15m","reason":"Big transfers need a person."}},
        "delete":{"require_approval":{}}}}"#
        .parse()
        .unwrap();
    let small = policy.explain("transfer", Some(r#"{"amount":5}"#)).unwrap();
    assert_eq!(small.decision, tower_mcp_policy::Decision::Allow);
    let step = small.steps.last().unwrap();
    assert_eq!(step.kind(), "approval");
    assert_eq!(step.rule, "/tools/transfer/require_approval/when/0");
    assert_eq!(step.summary, "a condition is false: no approval needed");

    let big = policy
        .explain("transfer", Some(r#"{"amount":500}"#))
        .unwrap();
    let denial = big.decision.denial().unwrap();
    assert_eq!(denial.kind(), tower_mcp_policy::DenialKind::Approval);
    assert_eq!(denial.message(), "Big transfers need a person.");
    let shown = big.to_string();
    assert!(
        shown.contains("approval /tools/transfer/require_approval/when/0: all conditions hold: a person must approve (waited for 15m)"),
        "{shown}"
    );
    assert!(
        shown.contains("decision APPROVAL REQUIRED (/tools/transfer/require_approval)"),
        "{shown}"
    );

    let delete = policy.explain("delete", None).unwrap();
    assert!(
        delete
            .to_string()
            .contains("every call needs a person's approval (waited for 10m)"),
        "{delete}"
    );
    assert_eq!(
        policy.tool_policy("transfer").verdict(),
        "limited, approval"
    );
    assert_eq!(policy.tool_policy("delete").verdict(), "approval");
    assert!(policy.tool_policy("delete").approval);
    assert!(!policy.tool_policy("get").approval);
}
