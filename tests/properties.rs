//! Property tests: the decoder never panics and agrees with serde_json; the decision
//! never panics and reads pruned arguments exactly as it reads whole ones.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tower_mcp_policy::FakeClock;
use tower_mcp_policy::unstable::{DecodeErrorKind, ReadAll, decode};
use tower_mcp_policy::{
    Decision, Engine, Policy, ScopeHasher, ScopeKeys,
    unstable::{ArgValue, Call},
};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        ".*".prop_map(Value::String),
        "[a-z\"\\\\/\u{0}-\u{1f}\u{7f}-\u{ffff}😀]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,6}|.{0,4}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Serializes like serde_json, but with every string character as a `\u` escape.
fn escaped(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => escaped_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                escaped(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                escaped_str(k, out);
                out.push(':');
                escaped(item, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn escaped_str(s: &str, out: &mut String) {
    out.push('"');
    for unit in s.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
}

fn encode(v: &Value, escape: bool) -> String {
    if escape {
        let mut out = String::new();
        escaped(v, &mut out);
        out
    } else {
        v.to_string()
    }
}

/// A tools/call body with its fields in a chosen order.
fn call_body(id: &Value, name: &str, args: &Value, order: u8, escape: bool) -> String {
    let name = encode(&Value::String(name.to_owned()), escape);
    let args = encode(args, escape);
    let params = if order & 1 == 0 {
        format!(r#"{{"name":{name},"arguments":{args}}}"#)
    } else {
        format!(r#"{{"arguments":{args},"_meta":{{}},"name":{name}}}"#)
    };
    let method = encode(&json!("tools/call"), escape);
    if order & 2 == 0 {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":{method},"params":{params}}}"#)
    } else {
        format!(r#"{{"params":{params},"id":{id},"jsonrpc":"2.0","method":{method}}}"#)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, &ReadAll);
    }

    #[test]
    fn decode_never_panics_on_mangled_bodies(
        args in json_value(), cut in 0usize..400, insert in any::<u8>(),
    ) {
        let body = call_body(&json!(1), "t", &json!({"a": args}), 0, false).into_bytes();
        let mut mangled = body.clone();
        let at = cut.min(mangled.len());
        mangled.insert(at, insert);
        let _ = decode(&mangled, &ReadAll);
        let _ = decode(&body[..at], &ReadAll);
    }

    #[test]
    fn decode_agrees_with_serde_json(
        args in prop::collection::btree_map("[a-z]{1,5}|.{0,3}", json_value(), 0..6),
        name in ".{0,12}",
        id in prop_oneof![any::<i64>().prop_map(|n| json!(n)), "[a-z0-9]{0,6}".prop_map(Value::String)],
        order in 0u8..4,
        escape in any::<bool>(),
    ) {
        let args = Value::Object(args.into_iter().collect());
        let body = call_body(&id, &name, &args, order, escape);
        // serde_json accepts the body, and it has no duplicate keys by construction.
        let reference: Value = serde_json::from_str(&body).unwrap();
        prop_assert_eq!(&reference["params"]["name"], &json!(name));
        let decoded = decode(body.as_bytes(), &ReadAll);
        prop_assert!(decoded.is_ok(), "{} => {:?}", body, decoded);
        let decoded = decoded.unwrap();
        let message = &decoded.messages()[0];
        let call = message.tool_call().unwrap();
        prop_assert_eq!(message.method(), Some("tools/call"));
        prop_assert_eq!(call.name(), name.as_str());
        // Numbers exactly as the body writes them: serde_json's own reading of the body
        // (`reference`) rounds some of them to another f64.
        prop_assert_eq!(call.arguments(), Some(&ArgValue::from(&args)));
        prop_assert_eq!(serde_json::to_value(message.id()).unwrap(), reference["id"].clone());
    }

    #[test]
    fn anything_serde_json_rejects_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if serde_json::from_slice::<Value>(&bytes).is_err() {
            let err = decode(&bytes, &ReadAll).unwrap_err();
            prop_assert_eq!(err.kind(), DecodeErrorKind::Parse);
        }
    }
}

fn payments() -> Policy {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/policies/payments.json");
    Policy::from_file(path).unwrap()
}

fn argument_value() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "amount", "currency", "reason", "branch", "force", "to", "cc", "pages", "format", "year",
        "x",
    ]);
    prop::collection::btree_map(keys, json_value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decision_never_panics_and_pruning_changes_nothing(
        calls in prop::collection::vec(
            (prop::sample::select(vec![
                "create_charge", "refund_charge", "push_branch", "send_email", "get_report",
                "list_customers", "delete_account", "unknown",
            ]), argument_value()),
            1..12,
        ),
    ) {
        let policy = std::sync::Arc::new(payments());
        let whole = Engine::with_clock(policy.clone(), FakeClock::new());
        let pruned = Engine::with_clock(policy.clone(), FakeClock::new());
        let h = ScopeHasher::with_key([3; 16]);
        let keys = ScopeKeys::new(h.credential(b"g"), h.session(b"s"));
        for (tool, args) in calls {
            let body = call_body(&json!(1), tool, &args, 0, false);
            let full = decode(body.as_bytes(), &ReadAll).unwrap();
            let lean = decode(body.as_bytes(), &*policy).unwrap();
            let full_args = full.messages()[0].tool_call().unwrap().arguments();
            let lean_args = lean.messages()[0].tool_call().unwrap().arguments();
            let a = whole.decide_all(&[Call { tool, args: full_args }], &keys);
            let b = pruned.decide_all(&[Call { tool, args: lean_args }], &keys);
            prop_assert_eq!(&a, &b, "{} {}", tool, args);
            if let Err(refusals) = a {
                for refusal in refusals {
                    if let Decision::Deny(d) = refusal {
                        prop_assert!(!d.message().is_empty());
                    }
                }
            }
        }
    }
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
