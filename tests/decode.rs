//! The JSON-RPC decoder: every accepted shape and every refusal; and, as properties,
//! that it never panics, agrees with serde_json, and that the decision reads the
//! arguments it prunes exactly as it reads whole ones.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tower_mcp_policy::unstable::{
    ArgValue, Call, DecodeError, DecodeErrorKind, Id, MessageKind, ReadAll, decode,
};
use tower_mcp_policy::{Decision, Engine, FakeClock, Policy, ScopeHasher, ScopeKeys};

fn ok(body: &str) -> tower_mcp_policy::unstable::Decoded<'_> {
    decode(body.as_bytes(), &ReadAll).unwrap_or_else(|e| panic!("{body}\n=> {e}"))
}

#[track_caller]
fn err(body: &[u8]) -> DecodeError {
    match decode(body, &ReadAll) {
        Ok(d) => panic!("{} decoded as {d:?}", String::from_utf8_lossy(body)),
        Err(e) => e,
    }
}

#[track_caller]
fn invalid(body: &str, needle: &str) -> DecodeError {
    let e = err(body.as_bytes());
    assert_eq!(e.kind(), DecodeErrorKind::InvalidRequest, "{body} => {e}");
    assert_eq!(e.code(), -32600);
    assert!(
        e.message().contains(needle),
        "{body}\n=> {e}\nwanted: {needle}"
    );
    e
}

#[track_caller]
fn not_json(body: &[u8], needle: &str) -> DecodeError {
    let e = err(body);
    assert_eq!(
        e.kind(),
        DecodeErrorKind::Parse,
        "{} => {e}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(e.code(), -32700);
    assert!(e.message().contains(needle), "=> {e}\nwanted: {needle}");
    assert_eq!(e.id(), None);
    e
}

#[test]
fn a_tool_call_request() {
    let d = ok(
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"transfer","arguments":{"amount":5,"to":"x"},"_meta":{"progressToken":1}}}"#,
    );
    assert!(!d.is_batch());
    let m = &d.messages()[0];
    assert_eq!(m.kind(), MessageKind::Request);
    assert_eq!(m.id(), Some(&Id::Number(7.into())));
    assert_eq!(m.method(), Some("tools/call"));
    assert_eq!(m.routing_name(), Some("transfer"));
    let call = m.tool_call().unwrap();
    assert_eq!(call.name(), "transfer");
    assert_eq!(call.arguments().unwrap(), &json!({"amount": 5, "to": "x"}));
}

#[test]
fn requests_notifications_and_responses_are_told_apart() {
    let d = ok(r#"[
        {"jsonrpc":"2.0","id":"a","method":"tools/list"},
        {"jsonrpc":"2.0","method":"notifications/initialized"},
        {"jsonrpc":"2.0","method":"tools/call","params":{"name":"t"}},
        {"jsonrpc":"2.0","id":3,"result":{}},
        {"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"x"}}
    ]"#);
    assert!(d.is_batch());
    let kinds: Vec<_> = d.messages().iter().map(|m| m.kind()).collect();
    use MessageKind::*;
    assert_eq!(
        kinds,
        [Request, Notification, Notification, Response, Response]
    );
    assert_eq!(d.messages()[0].id(), Some(&Id::String("a".into())));
    assert_eq!(d.messages()[2].tool_call().unwrap().name(), "t");
    assert_eq!(d.messages()[2].tool_call().unwrap().arguments(), None);
    assert_eq!(d.messages()[4].id(), None);
}

#[test]
fn escapes_are_decoded_before_anything_is_compared() {
    let d = ok(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","p\u0061rams":{"n\u0061me":"\u0074ransfer","arguments":{"\u0061mount":"\ud83d\ude00"}}}"#,
    );
    let call = d.messages()[0].tool_call().unwrap();
    assert_eq!(d.messages()[0].method(), Some("tools/call"));
    assert_eq!(call.name(), "transfer");
    assert_eq!(call.arguments().unwrap(), &json!({"amount": "😀"}));
}

#[test]
fn field_order_does_not_matter() {
    let canonical = ok(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":[1,{"b":2}]}}}"#,
    );
    for body in [
        r#"{"params":{"arguments":{"a":[1,{"b":2}]},"name":"t"},"id":1,"method":"tools/call","jsonrpc":"2.0"}"#,
        r#"{"jsonrpc":"2.0","params":{"name":"t","arguments":{"a":[1,{"b":2}]}},"method":"tools/call","id":1}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"a":[1,{"b":2}]},"name":"t"}}"#,
    ] {
        assert_eq!(ok(body), canonical, "{body}");
    }
}

#[test]
fn duplicate_keys_are_refused_wherever_the_policy_reads() {
    let e = invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_price","name":"transfer"}}"#,
        "duplicate key \"name\" in params",
    );
    assert_eq!(
        e.id(),
        Some(&Id::Number(1.into())),
        "the id was read before the error"
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_price","n\u0061me":"transfer"}}"#,
        "duplicate key \"name\" in params",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"t"}}"#,
        "duplicate key \"method\" in the message",
    );
    let e = invalid(
        r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list"}"#,
        "duplicate key \"id\"",
    );
    assert_eq!(e.id(), None, "an ambiguous id is not echoed");
    invalid(
        r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"ping"}"#,
        "duplicate key \"jsonrpc\"",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"amount":1,"amount":9999}}}"#,
        "duplicate key \"amount\" in the arguments",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":{"b":1,"b":2}}}}"#,
        "duplicate key \"b\"",
    );
    // Arguments captured before the name is known are checked just the same.
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"amount":1,"amount":2},"name":"t"}}"#,
        "duplicate key \"amount\"",
    );
    invalid(
        r#"{"params":{"name":"t","name":"u"},"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
        "duplicate key \"name\" in params",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"a","name":"b"}}"#,
        "duplicate key \"name\" in params",
    );
}

#[test]
fn duplicates_the_policy_never_reads_are_tolerated() {
    let policy: Policy = r#"{"version":"1","default":"deny","tools":{"t":{"deny_if":[
        {"conditions":[{"path":"args.a.b","op":"eq","value":1}]}]}}}"#
        .parse()
        .unwrap();
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":{"b":2},"memo":{"x":1,"x":2}}}}"#;
    let d = decode(body, &policy).unwrap();
    assert_eq!(
        d.messages()[0].tool_call().unwrap().arguments().unwrap(),
        &json!({"a": {"b": 2}})
    );
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":{"b":2,"b":1}}}}"#;
    assert!(
        decode(body, &policy)
            .unwrap_err()
            .message()
            .contains("duplicate key \"b\"")
    );
    let body = br#"{"jsonrpc":"2.0","id":1,"result":{"x":1,"x":2}}"#;
    assert!(
        decode(body, &policy).is_ok(),
        "a client's response is not judged"
    );
}

#[test]
fn arguments_are_pruned_to_the_plan() {
    let policy: Policy = r#"{"version":"1","default":"deny","tools":{"t":{
        "deny_if":[{"conditions":[{"path":"args.items.1.price","op":"gt","value":1}]}],
        "limits":[{"counter":"c","window":"day","max":100,"increment_from":"args.cost"}]},
        "u":{}}}"#
        .parse()
        .unwrap();
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"cost":3,"note":"long text","items":[{"price":1},{"price":5,"sku":"x"},{"price":9}]}}}"#;
    let d = decode(body, &policy).unwrap();
    assert_eq!(
        d.messages()[0].tool_call().unwrap().arguments().unwrap(),
        &json!({"cost": 3, "items": [null, {"price": 5}]})
    );
    // A tool whose rule reads nothing keeps no arguments (but they are still validated).
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"u","arguments":{"x":"\ud800"}}}"#;
    not_json(body, "unexpected end of hex escape");
}

#[test]
fn bad_tool_calls() {
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#,
        "expected params.name of tools/call to be a string",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":null}}"#,
        "invalid type: null, expected params.name of tools/call to be a string",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}"#,
        "need a \"name\"",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
        "tools/call needs params",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":null}"#,
        "tools/call needs params",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{"name":"t"}}"#,
        "methods are case-sensitive",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"TOOLS/CALL","params":{"name":"t"}}"#,
        "methods are case-sensitive",
    );
    let listed = ok(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":null}"#);
    assert_eq!(listed.messages()[0].method(), Some("tools/list"));
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["t"]}"#,
        "must be an object",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"t"}"#,
        "params to be an object",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":[1]}}"#,
        "params.arguments to be an object",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":"x","name":"t"}}"#,
        "params.arguments to be an object",
    );
    let d = ok(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":null}}"#,
    );
    assert_eq!(d.messages()[0].tool_call().unwrap().arguments(), None);
}

#[test]
fn bad_envelopes() {
    invalid(
        r#"{"id":1,"method":"ping"}"#,
        "\"jsonrpc\" must be the string \"2.0\"",
    );
    invalid(
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
        "\"jsonrpc\" must be",
    );
    invalid(
        r#"{"jsonrpc":2.0,"id":1,"method":"ping"}"#,
        "expected \"jsonrpc\" to be the string \"2.0\"",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
        "expected \"method\" to be a string",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"t"}}"#,
        "not null",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
        "not a fraction",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
        "string or an integer",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#,
        "string or an integer",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
        "both a \"method\" and a \"result\"",
    );
    invalid(
        r#"{"jsonrpc":"2.0","result":{}}"#,
        "a response needs an \"id\"",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
        "both \"result\" and \"error\"",
    );
    invalid(
        r#"{"jsonrpc":"2.0","id":1}"#,
        "no \"method\", \"result\" or \"error\"",
    );
    invalid(
        r#"{"jsonrpc":"2.0","params":{}}"#,
        "\"params\" without a \"method\"",
    );
    invalid(r#"[]"#, "an empty batch");
    invalid(r#"[1]"#, "expected a JSON-RPC message object");
    invalid(
        r#"[[{"jsonrpc":"2.0","method":"ping"}]]"#,
        "expected a JSON-RPC message object",
    );
    invalid(
        r#""tools/call""#,
        "expected a JSON-RPC message (an object) or a batch",
    );
    invalid(r#"42"#, "expected a JSON-RPC message");
    invalid(r#"null"#, "expected a JSON-RPC message");
}

#[test]
fn a_bad_message_fails_the_whole_batch() {
    let e = invalid(
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":1}}]"#,
        "to be a string",
    );
    assert_eq!(e.id(), Some(&Id::Number(2.into())));
}

#[test]
fn not_json_at_all() {
    not_json(b"", "EOF while parsing");
    not_json(b"{", "EOF while parsing");
    not_json(b"tools/call", "expected ident");
    not_json(
        br#"{"jsonrpc":"2.0","id":1,"method":"ping"} {"#,
        "trailing characters",
    );
    not_json(
        br#"{"jsonrpc":"2.0","id":1,"method":"ping"}x"#,
        "trailing characters",
    );
    not_json(
        b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}",
        "expected value",
    );
    not_json(
        br#"{"jsonrpc":"2.0","id":1,"method":"ping",}"#,
        "trailing comma",
    );
    not_json(br#"{'jsonrpc':'2.0'}"#, "key must be a string");
}

#[test]
fn bad_text_anywhere_in_the_body() {
    // Invalid UTF-8 in a field nobody reads.
    not_json(
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"x\":\"\xff\"}}",
        "not valid UTF-8 (at byte 39)",
    );
    // Lone surrogates, in read and unread strings alike.
    not_json(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\ud800"}}"#,
        "hex escape",
    );
    not_json(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\ud800\u0041"}}"#,
        "hex escape",
    );
    not_json(
        br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"x":"\udc00"}}}"#,
        "hex escape",
    );
    not_json(
        br#"{"jsonrpc":"2.0","id":1,"result":{"x":["\ud800 "]}}"#,
        "hex escape",
    );
    not_json(
        br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"\ud800":1}}"#,
        "hex escape",
    );
    not_json(
        br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\q"}}"#,
        "invalid escape",
    );
    not_json(
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"x\":\"a\x01\"}}",
        "control character",
    );
}

#[test]
fn nesting_is_bounded() {
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"a":{}1{}}}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    not_json(deep.as_bytes(), "recursion limit exceeded");
}

#[test]
fn routing_names_for_the_mcp_name_header() {
    let name = |body: &str| ok(body).messages()[0].routing_name().map(str::to_owned);
    assert_eq!(
        name(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}"#),
        Some("p".into())
    );
    assert_eq!(
        name(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}"#),
        Some("file:///x".into())
    );
    assert_eq!(
        name(r#"{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"taskId":"t1"}}"#),
        Some("t1".into())
    );
    assert_eq!(
        name(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"name":"x"}}"#),
        None
    );
    assert_eq!(
        name(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":3}}"#),
        None
    );
}

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

/// SEP-414: the caller's W3C trace context in `params._meta.traceparent` is read (both
/// readers), kept only when well formed.
#[test]
fn the_trace_context_is_read_from_meta_when_well_formed() {
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let body = |meta: &str, escape: bool| {
        let name = if escape { "\\u0074" } else { "t" };
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}","arguments":{{}},"_meta":{meta}}}}}"#
        )
    };
    for escape in [false, true] {
        let meta = format!(r#"{{"progressToken":7,"traceparent":"{trace}"}}"#);
        let text = body(&meta, escape);
        let decoded = ok(&text);
        let read = decoded.messages()[0].trace().map(|t| t.as_str().to_owned());
        assert_eq!(read.as_deref(), Some(trace), "escape {escape}");
        for malformed in [
            r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"}"#,
            r#"{"traceparent":"00-00000000000000000000000000000000-00f067aa0ba902b7-01"}"#,
            r#"{"traceparent":"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"}"#,
            r#"{"traceparent":7}"#,
            r#""not an object""#,
        ] {
            let text = body(malformed, escape);
            let decoded = ok(&text);
            assert!(decoded.messages()[0].trace().is_none(), "{malformed}");
        }
    }
    // Another method, and a notification, carry it too.
    let list = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{{"_meta":{{"traceparent":"{trace}"}}}}}}"#
    );
    assert!(ok(&list).messages()[0].trace().is_some());
    // A key repeated in `_meta` is refused like anywhere else in params.
    let twice = body(r#"{"traceparent":"x","traceparent":"y"}"#, false);
    assert_eq!(
        err(twice.as_bytes()).kind(),
        DecodeErrorKind::InvalidRequest
    );
}
