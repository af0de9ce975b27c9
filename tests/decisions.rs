//! The decision, end to end over the engine with a fake clock: no HTTP, no sleeping;
//! and, as properties, that it never panics, reads pruned arguments exactly as it reads
//! whole ones, and compares numbers and rounds costs exactly.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use tower_mcp_policy::FakeClock;
use tower_mcp_policy::unstable::decode;
use tower_mcp_policy::{
    Decision, Denial, DenialKind, Engine, Policy, ScopeHasher, ScopeKeys,
    counter::MemoryCounters,
    unstable::{ArgValue, Call},
};

fn fixture(name: &str) -> Policy {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/policies")
        .join(name);
    Policy::from_file(path).unwrap()
}

struct Harness {
    engine: Engine<MemoryCounters>,
    clock: FakeClock,
    hasher: ScopeHasher,
}

impl Harness {
    fn new(policy: Policy) -> Self {
        let clock = FakeClock::new();
        Harness {
            engine: Engine::with_clock(policy, clock.clone()),
            clock,
            hasher: ScopeHasher::with_key([42; 16]),
        }
    }

    fn parse(text: &str) -> Self {
        Self::new(text.parse().unwrap())
    }

    fn keys(&self, grant: &str, session: Option<&str>) -> ScopeKeys {
        let grant = self.hasher.credential(grant.as_bytes());
        let session = match session {
            Some(id) => self.hasher.session(id.as_bytes()),
            None => self.hasher.no_session(grant),
        };
        ScopeKeys::new(grant, session)
    }

    fn call_as(&self, grant: &str, tool: &str, args: Value) -> Decision {
        self.engine
            .decide(tool, Some(&args), &self.keys(grant, None))
    }

    fn call(&self, tool: &str, args: Value) -> Decision {
        self.call_as("Bearer alice", tool, args)
    }

    fn advance(&self, seconds: f64) {
        self.clock.advance(Duration::from_secs_f64(seconds));
    }
}

#[track_caller]
fn denied(decision: Decision) -> Denial {
    match decision {
        Decision::Deny(denial) => denial,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn motivating_policy_caps_one_grant_and_denies_the_rest() {
    let h = Harness::new(fixture("seed-binance-rate-limit.json"));
    let tool = "binance_us_close_listen_key";
    let args = json!({"listenKey": "abc"});
    for i in 0..30 {
        assert_eq!(
            h.call(tool, args.clone()),
            Decision::Allow,
            "call {}",
            i + 1
        );
    }
    let denial = denied(h.call(tool, args.clone()));
    assert_eq!(denial.kind(), DenialKind::Limit);
    assert_eq!(
        denial.message(),
        "Rate limit of 30 per minute reached for \"binance_us_close_listen_key\". Try again in 2s."
    );
    assert_eq!(denial.rule(), "/tools/binance_us_close_listen_key/limits/0");
    assert_eq!(denial.retry_after(), Some(2));
    assert_eq!(denial.tool(), tool);

    assert_eq!(h.call_as("Bearer bob", tool, args.clone()), Decision::Allow);

    let other = denied(h.call("get_price", json!({"symbol": "BTC"})));
    assert_eq!(other.kind(), DenialKind::NotAllowed);
    assert_eq!(other.rule(), "(default deny)");
    assert_eq!(
        other.message(),
        "Tool \"get_price\" is not allowed by this policy."
    );
    assert_eq!(other.retry_after(), None);

    h.advance(2.0);
    assert_eq!(h.call(tool, args.clone()), Decision::Allow);
    assert_eq!(denied(h.call(tool, args)).retry_after(), Some(2));
}

#[test]
fn a_fresh_key_passes_at_most_two_max_minus_one_in_its_first_window() {
    let h = Harness::new(fixture("docs-write-rate.json"));
    let mut passed = 0;
    // Try every 100 ms over the first 60 s window.
    for _ in 0..600 {
        if h.call("write", json!({})) == Decision::Allow {
            passed += 1;
        }
        h.advance(0.1);
    }
    assert_eq!(passed, 2 * 30 - 1);
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    let h = Harness::parse(
        r#"{"version":"1","default":"deny","tools":{"t":{"limits":[{"counter":"c","window":10,"max":3}]}}}"#,
    );
    for _ in 0..3 {
        assert_eq!(h.call("t", json!({})), Decision::Allow);
    }
    // One cell comes back every 3.33 s.
    assert_eq!(denied(h.call("t", json!({}))).retry_after(), Some(4));
    h.advance(3.0);
    let d = denied(h.call("t", json!({})));
    assert_eq!(d.retry_after(), Some(1), "0.33 s rounds up to 1, never 0");
    assert!(d.message().ends_with("Try again in 1s."));
    h.advance(0.34);
    assert_eq!(h.call("t", json!({})), Decision::Allow);
}

#[test]
fn evaluation_order_is_hidden_default_deny_if_require_limits() {
    let h = Harness::parse(
        r#"{"version":"1","default":"deny","hide":["secret*"],
            "tools":{
              "secret_tool":{},
              "t":{
                "deny_if":[{"conditions":[{"path":"args.x","op":"eq","value":1}],"on_deny":"x is 1"}],
                "require":[{"conditions":[{"path":"args.y","op":"exists","value":true}],"on_deny":"need y"}],
                "limits":[{"counter":"c","window":"minute","max":1}]}}}"#,
    );
    let hidden = denied(h.call("secret_tool", json!({})));
    assert_eq!(
        (hidden.kind(), hidden.rule()),
        (DenialKind::Hidden, "(hidden)")
    );
    assert_eq!(hidden.message(), "Unknown tool: secret_tool");

    // deny_if is checked before require: both fail here, deny_if wins.
    let d = denied(h.call("t", json!({"x": 1})));
    assert_eq!(
        (d.kind(), d.rule(), d.message()),
        (DenialKind::DenyIf, "/tools/t/deny_if/0", "x is 1")
    );
    let d = denied(h.call("t", json!({"x": 2})));
    assert_eq!(
        (d.kind(), d.rule(), d.message()),
        (DenialKind::Require, "/tools/t/require/0", "need y")
    );

    // Denied calls consumed nothing: the single unit of budget is still there.
    for _ in 0..5 {
        denied(h.call("t", json!({"x": 1, "y": 0})));
    }
    assert_eq!(h.call("t", json!({"x": 2, "y": 0})), Decision::Allow);
    assert_eq!(
        denied(h.call("t", json!({"x": 2, "y": 0}))).kind(),
        DenialKind::Limit
    );
}

#[test]
fn a_denied_call_does_not_drain_the_shared_all_tools_budget() {
    let h = Harness::parse(
        r#"{"version":"1","default":"allow",
            "all_tools":{"limits":[{"counter":"all","window":"minute","max":3}]},
            "tools":{"hammer":{"limits":[{"counter":"h","window":"minute","max":1}]}}}"#,
    );
    assert_eq!(h.call("hammer", json!({})), Decision::Allow);
    for _ in 0..20 {
        let d = denied(h.call("hammer", json!({})));
        assert_eq!(d.rule(), "/tools/hammer/limits/0");
    }
    // all_tools was charged once by hammer: two calls left.
    assert_eq!(h.call("other", json!({})), Decision::Allow);
    assert_eq!(h.call("other", json!({})), Decision::Allow);
    let d = denied(h.call("other", json!({})));
    assert_eq!(d.rule(), "/all_tools/limits/0");
    assert_eq!(
        d.message(),
        "Rate limit of 3 per minute reached for \"other\". Try again in 20s."
    );
}

#[test]
fn a_refused_batch_charges_nothing() {
    let h = Harness::parse(
        r#"{"version":"1","default":"deny","tools":{
            "a":{"limits":[{"counter":"a","window":"minute","max":1}]},
            "b":{"limits":[{"counter":"b","window":"minute","max":1}]}}}"#,
    );
    let keys = h.keys("Bearer alice", None);
    let args = ArgValue::from(&json!({}));
    let call = |tool| Call {
        tool,
        args: Some(&args),
    };

    // A denied call in the batch: nothing runs, nothing is charged.
    let verdict = h.engine.decide_all(&[call("a"), call("nope")], &keys);
    let Err(refusals) = verdict else {
        panic!("expected a refusal")
    };
    assert_eq!(refusals[0], Decision::NotExecuted);
    assert!(matches!(&refusals[1], Decision::Deny(d) if d.kind() == DenialKind::NotAllowed));

    // Exhaust b, then batch a+b: b's limit refuses, and a must not be charged.
    assert_eq!(h.engine.decide_all(&[call("b")], &keys), Ok(()));
    let Err(refusals) = h.engine.decide_all(&[call("a"), call("b")], &keys) else {
        panic!("expected a refusal")
    };
    assert_eq!(refusals[0], Decision::NotExecuted);
    assert!(matches!(&refusals[1], Decision::Deny(d) if d.rule() == "/tools/b/limits/0"));
    assert_eq!(h.engine.decide_all(&[call("a")], &keys), Ok(()));

    // Two calls of one tool in a batch draw on one budget.
    let fresh = h.keys("Bearer carol", None);
    let Err(refusals) = h.engine.decide_all(&[call("a"), call("a")], &fresh) else {
        panic!("expected a refusal")
    };
    assert_eq!(refusals[0], Decision::NotExecuted);
    assert!(matches!(&refusals[1], Decision::Deny(_)));
    assert_eq!(h.engine.decide_all(&[call("a")], &fresh), Ok(()));
}

#[test]
fn one_counter_named_twice_is_one_budget() {
    let h = Harness::new(fixture("payments.json"));
    let charge = json!({"currency": "usd", "amount": 10});
    for _ in 0..50 {
        assert_eq!(h.call("create_charge", charge.clone()), Decision::Allow);
    }
    let d = denied(h.call("refund_charge", json!({"reason": "duplicate"})));
    assert_eq!(d.rule(), "/tools/refund_charge/limits/0");
    assert_eq!(d.retry_after(), Some(72));
    assert_eq!(
        h.call_as("Bearer bob", "refund_charge", json!({"reason": "x"})),
        Decision::Allow
    );
}

#[test]
fn session_and_global_scopes() {
    let h = Harness::new(fixture("payments.json"));
    let send = |grant: &str, session: &str| {
        h.engine.decide(
            "send_email",
            Some(&json!({"to": "a@example.com"})),
            &h.keys(grant, Some(session)),
        )
    };
    for _ in 0..200 {
        assert_eq!(send("Bearer alice", "s1"), Decision::Allow);
        h.advance(0.3); // stay under the 120/minute all_tools limit
    }
    assert_eq!(
        denied(send("Bearer alice", "s1")).rule(),
        "/tools/send_email/limits/0"
    );
    // Same grant, other session: a separate bucket. Other grant, same session: the same.
    assert_eq!(send("Bearer alice", "s2"), Decision::Allow);
    assert_eq!(
        denied(send("Bearer bob", "s1")).rule(),
        "/tools/send_email/limits/0"
    );

    let report = |grant: &str| {
        h.call_as(
            grant,
            "get_report",
            json!({"pages": 1, "format": "pdf", "year": 2025}),
        )
    };
    for i in 0..10 {
        let grant = format!("Bearer g{i}");
        assert_eq!(report(&grant), Decision::Allow);
    }
    let d = denied(report("Bearer someone-else"));
    assert_eq!(d.rule(), "/tools/get_report/limits/0");
}

#[test]
fn fail_closed_when_a_condition_cannot_be_evaluated() {
    let h = Harness::new(fixture("payments.json"));
    // The amount as a string must not slip past `amount gt 5000`.
    let d = denied(h.call(
        "create_charge",
        json!({"currency": "usd", "amount": "50000"}),
    ));
    assert_eq!(d.kind(), DenialKind::DenyIf);
    assert_eq!(d.rule(), "/tools/create_charge/deny_if/0");
    assert_eq!(
        d.message(),
        "Charges above 5000 need a human. (the rule could not be checked: argument `args.amount` is a string, but `gt` needs a number)"
    );
    let d = denied(h.call("create_charge", json!({"currency": "usd"})));
    assert!(
        d.message().contains("argument `args.amount` is missing"),
        "{}",
        d.message()
    );
    let d = denied(h.call("create_charge", json!({"currency": "usd", "amount": 6000})));
    assert_eq!(d.message(), "Charges above 5000 need a human.");
    assert_eq!(
        h.call("create_charge", json!({"currency": "eur", "amount": 5000})),
        Decision::Allow
    );

    // require: a missing argument fails the requirement with a message naming it.
    let d = denied(h.call("create_charge", json!({"amount": 1})));
    assert_eq!(
        (d.kind(), d.rule()),
        (DenialKind::Require, "/tools/create_charge/require/0")
    );
    assert!(
        d.message().contains("`args.currency` is missing"),
        "{}",
        d.message()
    );
    let d = denied(h.call(
        "get_report",
        json!({"pages": 1, "format": "pdf", "year": "2025"}),
    ));
    assert_eq!(d.rule(), "/tools/get_report/require/0");
    assert_eq!(
        d.message(),
        "The call to \"get_report\" could not be checked against its policy: argument `args.year` is a string, but `lte` needs a number."
    );

    // No arguments at all is the same as missing ones.
    let keys = h.keys("Bearer alice", None);
    let d = match h.engine.decide("create_charge", None, &keys) {
        Decision::Deny(d) => d,
        other => panic!("no arguments must not pass: {other:?}"),
    };
    assert_eq!(
        (d.kind(), d.rule()),
        (DenialKind::DenyIf, "/tools/create_charge/deny_if/0")
    );
}

#[test]
fn a_false_condition_settles_a_rule_even_beside_an_unknown_one() {
    let h = Harness::new(fixture("payments.json"));
    // deny_if [cc not_in [...], cc exists]: without cc, `exists` is false, so the rule
    // cannot match whatever `not_in` would say.
    assert_eq!(
        h.call("send_email", json!({"to": "a@example.com"})),
        Decision::Allow
    );
    assert_eq!(
        h.call(
            "send_email",
            json!({"to": "a@example.com", "cc": "team@example.com"})
        ),
        Decision::Allow
    );
    let d = denied(h.call(
        "send_email",
        json!({"to": "a@example.com", "cc": "x@evil.example"}),
    ));
    assert_eq!(d.rule(), "/tools/send_email/deny_if/1");
    assert_eq!(
        d.message(),
        "Calls to \"send_email\" are denied when args.cc not_in [\"team@example.com\"] and args.cc exists true."
    );
    let d = denied(h.call("send_email", json!({"to": "bob@competitor.example"})));
    assert_eq!(d.rule(), "/tools/send_email/deny_if/0");
    // With force missing, `branch eq main` being false settles the first rule.
    assert_eq!(
        h.call("push_branch", json!({"branch": "dev"})),
        Decision::Allow
    );
    let d = denied(h.call("push_branch", json!({"branch": "main", "force": true})));
    assert_eq!(d.message(), "Force-pushing main is not allowed.");
    let d = denied(h.call("push_branch", json!({"branch": "main"})));
    assert!(
        d.message().contains("`args.force` is missing"),
        "{}",
        d.message()
    );
    let d = denied(h.call("push_branch", json!({"branch": "release/2.0"})));
    assert_eq!(d.rule(), "/tools/push_branch/deny_if/1");
}

#[test]
fn every_operator_through_the_payments_fixture() {
    let h = Harness::new(fixture("payments.json"));
    let report = |args: Value| h.call("get_report", args);
    assert_eq!(
        report(json!({"pages": 99, "format": "csv", "year": 2026})),
        Decision::Allow
    );
    // gte
    assert_eq!(
        denied(report(json!({"pages": 100, "format": "csv", "year": 2026}))).rule(),
        "/tools/get_report/deny_if/0"
    );
    // neq + neq
    assert_eq!(
        denied(report(json!({"pages": 1, "format": "doc", "year": 2026}))).rule(),
        "/tools/get_report/deny_if/1"
    );
    // lte
    let d = denied(report(json!({"pages": 1, "format": "pdf", "year": 2027})));
    assert_eq!(
        d.message(),
        "Calls to \"get_report\" require args.year lte 2026 and args.year lt 2100."
    );
    // in (require)
    let d = denied(h.call("create_charge", json!({"currency": "gbp", "amount": 1})));
    assert_eq!(d.message(), "Only USD and EUR charges are allowed.");
    // exists (require)
    let d = denied(h.call("refund_charge", json!({})));
    assert_eq!(d.message(), "Refunds must give a reason.");
    // list_customers: `{}` allows under default deny; delete_account is hidden.
    assert_eq!(h.call("list_customers", json!({})), Decision::Allow);
    assert_eq!(
        denied(h.call("delete_account", json!({}))).kind(),
        DenialKind::Hidden
    );
}

#[test]
fn docs_fixtures_behave_as_documented() {
    let h = Harness::new(fixture("docs-deny-transfer.json"));
    let d = denied(h.call("transfer", json!({"amount": 1})));
    assert_eq!(
        (d.message(), d.rule()),
        ("Requires human approval.", "/tools/transfer/deny_if/0")
    );
    assert_eq!(h.call("anything_else", json!({})), Decision::Allow);

    let h = Harness::new(fixture("docs-allow-one.json"));
    assert_eq!(h.call("list_customers", json!({})), Decision::Allow);
    assert_eq!(
        denied(h.call("create_charge", json!({}))).kind(),
        DenialKind::NotAllowed
    );

    let h = Harness::new(fixture("docs-skeleton.json"));
    assert_eq!(h.call("create_charge", json!({})), Decision::Allow);
    assert_eq!(
        denied(h.call("delete_account", json!({}))).kind(),
        DenialKind::Hidden
    );

    let h = Harness::new(fixture("hide-all.json"));
    let d = denied(h.call("anything", json!({})));
    assert_eq!(
        (d.kind(), d.message()),
        (DenialKind::Hidden, "Unknown tool: anything")
    );
}

#[test]
fn increment_from_charges_the_argument() {
    let h = Harness::parse(
        r#"{"version":"1","default":"deny","tools":{"transfer":{"limits":[
            {"counter":"spend","window":"day","max":1000,"increment_from":"args.amount"}]}}}"#,
    );
    let pay = |amount: Value| h.call("transfer", json!({"amount": amount}));
    assert_eq!(pay(json!(400)), Decision::Allow);
    assert_eq!(pay(json!(399.2)), Decision::Allow); // rounds up to 400
    let d = denied(pay(json!(201)));
    assert_eq!(d.kind(), DenialKind::Limit);
    assert!(d.retry_after().is_some());
    assert_eq!(pay(json!(200)), Decision::Allow);
    assert_eq!(
        pay(json!(0)),
        Decision::Allow,
        "a zero cost charges nothing"
    );
    assert_eq!(
        denied(pay(json!(0.1))).kind(),
        DenialKind::Limit,
        "0.1 rounds up to 1"
    );

    let d = denied(pay(json!(1001)));
    assert_eq!(
        d.message(),
        "This call to \"transfer\" costs 1001, more than the limit of 1000 per day allows."
    );
    assert_eq!(d.retry_after(), None);
    let d = denied(pay(json!(1e300)));
    assert!(
        d.message().contains("costs 1e+300, more than"),
        "{}",
        d.message()
    );
    let d = denied(pay(json!("100")));
    assert_eq!(
        d.message(),
        "The call to \"transfer\" is charged by argument `args.amount`, but it is a string, not a number."
    );
    assert_eq!(d.rule(), "/tools/transfer/limits/0");
    assert!(
        denied(pay(json!(-5)))
            .message()
            .ends_with("but it is negative.")
    );
    assert!(
        denied(h.call("transfer", json!({})))
            .message()
            .ends_with("but it is missing.")
    );
    assert!(
        denied(pay(Value::Null))
            .message()
            .ends_with("but it is missing.")
    );
}

#[test]
fn globs_pick_exact_then_most_literal_then_lexicographic() {
    let policy: Policy = r#"{"version":"1","default":"deny","tools":{
        "binance_*":{}, "binance_us_*":{}, "*_key":{}, "binance_us_close_listen_key":{},
        "a*":{}, "*a":{}}}"#
        .parse()
        .unwrap();
    assert_eq!(
        policy.rule_key("binance_us_close_listen_key"),
        Some("binance_us_close_listen_key")
    );
    assert_eq!(policy.rule_key("binance_us_get_key"), Some("binance_us_*"));
    assert_eq!(policy.rule_key("binance_eu_get_key"), Some("binance_*"));
    assert_eq!(policy.rule_key("kraken_key"), Some("*_key"));
    // "a*" and "*a" both have one literal character: "*a" sorts first.
    assert_eq!(policy.rule_key("aba"), Some("*a"));
    assert_eq!(policy.rule_key("ab"), Some("a*"));
    assert_eq!(policy.rule_key("zzz"), None);

    let h = Harness::new(policy);
    assert_eq!(h.call("binance_us_anything", json!({})), Decision::Allow);
    assert_eq!(
        denied(h.call("coinbase_price", json!({}))).kind(),
        DenialKind::NotAllowed
    );
}

#[test]
fn hide_patterns_hide_matching_tools_only() {
    let h = Harness::parse(r#"{"version":"1","default":"allow","hide":["delete_*","drop"]}"#);
    assert_eq!(
        denied(h.call("delete_account", json!({}))).kind(),
        DenialKind::Hidden
    );
    assert_eq!(denied(h.call("drop", json!({}))).kind(), DenialKind::Hidden);
    assert_eq!(h.call("dropped", json!({})), Decision::Allow);
}

#[test]
fn all_tools_rules_apply_to_every_call() {
    let h = Harness::parse(
        r#"{"version":"1","default":"allow",
            "all_tools":{"deny_if":[{"conditions":[{"path":"args.dry_run","op":"eq","value":false}],"on_deny":"dry runs only"}]},
            "tools":{"t":{}}}"#,
    );
    for tool in ["t", "unlisted"] {
        let d = denied(h.call(tool, json!({"dry_run": false})));
        assert_eq!(
            (d.rule(), d.message()),
            ("/all_tools/deny_if/0", "dry runs only")
        );
        assert_eq!(h.call(tool, json!({"dry_run": true})), Decision::Allow);
    }
}

#[test]
fn idle_buckets_are_dropped() {
    let h = Harness::new(fixture("seed-binance-rate-limit.json"));
    for i in 0..100 {
        h.call_as(
            &format!("Bearer {i}"),
            "binance_us_close_listen_key",
            json!({}),
        );
    }
    assert_eq!(h.engine.counters().len(), 100);
    // One call leaves each bucket one cell (2 s) short of full.
    h.advance(1.0);
    h.engine.counters().sweep();
    assert_eq!(
        h.engine.counters().len(),
        100,
        "buckets still refilling are kept"
    );
    // governor keeps a bucket one more period after it is full again.
    h.advance(3.0);
    h.engine.counters().sweep();
    assert!(h.engine.counters().is_empty());
}

#[test]
fn all_or_nothing_holds_under_concurrency() {
    // 8 threads race on one grant. "hammer" may pass 50 times; every pass also charges
    // the all_tools budget of 80, and no refused call may charge it.
    let h = Arc::new(Harness::parse(
        r#"{"version":"1","default":"allow",
            "all_tools":{"limits":[{"counter":"all","window":"hour","max":80}]},
            "tools":{"hammer":{"limits":[{"counter":"h","window":"hour","max":50}]}}}"#,
    ));
    let allowed: usize = (0..8)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || {
                (0..500)
                    .filter(|_| h.call("hammer", json!({})) == Decision::Allow)
                    .count()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .sum();
    assert_eq!(allowed, 50);
    // Exactly 50 units of the shared budget were used: 30 remain.
    for _ in 0..30 {
        assert_eq!(h.call("other", json!({})), Decision::Allow);
    }
    assert_eq!(
        denied(h.call("other", json!({}))).rule(),
        "/all_tools/limits/0"
    );
}

/// A JSON number text from its parts: `-12.340e-5`.
fn number_text(negative: bool, whole: &str, fraction: &str, exponent: Option<i32>) -> String {
    let whole = whole.trim_start_matches('0');
    let mut text = String::new();
    if negative {
        text.push('-');
    }
    text.push_str(if whole.is_empty() { "0" } else { whole });
    if !fraction.is_empty() {
        text.push('.');
        text.push_str(fraction);
    }
    if let Some(e) = exponent {
        text.push_str(&format!("e{e}"));
    }
    text
}

/// The exact rational value of a JSON number text, by an independent route
/// (big integers), as the reference.
fn rational(text: &str) -> num_rational::BigRational {
    use num_bigint::BigInt;
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().unwrap()),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: BigInt = format!("{whole}{fraction}").parse().unwrap();
    let scale = exponent - fraction.len() as i64;
    let ten = BigInt::from(10);
    let power = num_rational::BigRational::from_integer(ten.pow(scale.unsigned_abs() as u32));
    let value = num_rational::BigRational::from_integer(digits);
    if scale >= 0 {
        value * power
    } else {
        value / power
    }
}

fn decimal_part() -> impl Strategy<Value = String> {
    // Mostly near one another, so ties and neighbours are common.
    prop_oneof!["1000|100|999|1|0", "[0-9]{1,25}",]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn numeric_conditions_agree_with_exact_rational_comparison(
        value in (any::<bool>(), decimal_part(), "[0-9]{0,22}", prop::option::of(-25i32..25)),
        threshold in (any::<bool>(), decimal_part(), "[0-9]{0,22}", prop::option::of(-25i32..25)),
        op in prop::sample::select(vec!["gt", "gte", "lt", "lte", "eq", "neq"]),
        nudge in prop::sample::select(vec!["", "0000000000000000001", "9999999999999999999"]),
    ) {
        let value_text = number_text(value.0, &value.1, &format!("{}{nudge}", value.2), value.3);
        let threshold_text = number_text(threshold.0, &threshold.1, &threshold.2, threshold.3);
        let policy: Policy = format!(
            r#"{{"version":"1","default":"allow","tools":{{"t":{{"deny_if":[{{"conditions":[
                {{"path":"args.x","op":"{op}","value":{threshold_text}}}]}}]}}}}}}"#
        )
        .parse()
        .unwrap();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"x":{value_text}}}}}}}"#
        );
        let decoded = decode(body.as_bytes(), &policy).unwrap();
        let engine = Engine::with_clock(policy, FakeClock::new());
        let h = ScopeHasher::with_key([3; 16]);
        let keys = ScopeKeys::new(h.credential(b"g"), h.session(b"s"));
        let args = decoded.messages()[0].tool_call().unwrap().arguments();
        let denied = engine.decide_all(&[Call { tool: "t", args }], &keys) != Ok(());

        let (a, b) = (rational(&value_text), rational(&threshold_text));
        let holds = match op {
            "gt" => a > b,
            "gte" => a >= b,
            "lt" => a < b,
            "lte" => a <= b,
            "eq" => a == b,
            _ => a != b,
        };
        prop_assert_eq!(denied, holds, "{} {} {}", value_text, op, threshold_text);
    }

    #[test]
    fn costs_are_the_exact_value_rounded_up(
        value in (decimal_part(), "[0-9]{0,22}", prop::option::of(-12i32..6)),
    ) {
        let text = number_text(false, &value.0, &value.1, value.2);
        let policy: Policy = r#"{"version":"1","default":"allow","tools":{"t":{"limits":[
            {"counter":"c","window":"day","max":4294967295,"increment_from":"args.cost"}]}}}"#
            .parse()
            .unwrap();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"cost":{text}}}}}}}"#
        );
        let decoded = decode(body.as_bytes(), &policy).unwrap();
        let engine = Engine::with_clock(policy, FakeClock::new());
        let h = ScopeHasher::with_key([3; 16]);
        let keys = ScopeKeys::new(h.credential(b"g"), h.session(b"s"));
        let args = decoded.messages()[0].tool_call().unwrap().arguments();
        let expected = rational(&text).ceil().to_integer();
        let first = engine.decide_all(&[Call { tool: "t", args }], &keys);
        if expected > num_bigint::BigInt::from(u32::MAX) {
            prop_assert!(first != Ok(()), "{} is over max", text);
            return Ok(());
        }
        prop_assert_eq!(&first, &Ok(()), "{}", text);
        // The budget left is exactly max − cost: one more unit than that is refused.
        let left = u32::MAX as u64 - u64::try_from(expected).unwrap();
        let probe = format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"t","arguments":{{"cost":{}}}}}}}"#,
            left + 1
        );
        if left < u32::MAX as u64 {
            let probe = decode(probe.as_bytes(), &*engine.policy().clone()).unwrap();
            let args = probe.messages()[0].tool_call().unwrap().arguments();
            prop_assert!(engine.decide_all(&[Call { tool: "t", args }], &keys) != Ok(()), "{}", text);
        }
    }
}
