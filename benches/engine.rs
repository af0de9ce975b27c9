//! decode + decide, next to a plain `serde_json::Value` parse of the same body.
//!
//! (a) a ~200-byte `tools/call` under a policy with one limit;
//! (b) a ~1 KiB `tools/call` under a policy with a `deny_if` condition and two limits.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;
use tower_mcp_policy::jsonrpc::decode;
use tower_mcp_policy::{Call, Engine, Policy, ScopeHasher, ScopeKeys, Verdict};

const BODY_A: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"binance_us_close_listen_key","arguments":{"listenKey":"pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a8"},"_meta":{"progressToken":42}}}"#;

const POLICY_A: &str = r#"{"version":"1","default":"deny","tools":{"binance_us_close_listen_key":{
    "limits":[{"counter":"rate","window":"day","max":4000000000,"scope":"grant"}]}}}"#;

const BODY_B: &str = r#"{"jsonrpc":"2.0","id":"req-7f3a9c2e","method":"tools/call","params":{"name":"transfer","arguments":{"amount":250.75,"to":"acct_9a8b7c6d5e4f3a2b","currency":"usd","memo":"Quarterly settlement for invoice INV-2026-00417, covering consulting services rendered in October and November, including travel expenses and materials as itemised in the attached statement.","reference":"a1b2c3d4-e5f6-4711-8899-aabbccddeeff","tags":["settlement","q4","consulting","priority"],"metadata":{"requested_by":"agent-42","approved_by":null,"source":"invoice-workflow","attempt":1,"dry_run":false,"notes":["checked balance","verified payee","confirmed currency"]},"schedule":{"at":"2026-11-24T12:00:00Z","timezone":"UTC","repeat":false},"limits":{"daily":5000,"monthly":50000},"beneficiary":{"name":"Example Consulting Ltd","country":"GB","bank":"Example Bank plc","address":["1 High Street","London","EC1A 1AA"],"contact":"accounts@consulting.example"},"trace":"8f14e45fceea167a5a36dedd4bea2543"},"_meta":{"progressToken":"tok-1"}}}"#;

const POLICY_B: &str = r#"{"version":"1","default":"deny",
    "all_tools":{"limits":[{"counter":"all","window":"day","max":4000000000}]},
    "tools":{"transfer":{
      "deny_if":[{"conditions":[{"path":"args.amount","op":"gt","value":1000}],"on_deny":"Transfers above 1000 need a human."}],
      "limits":[{"counter":"transfers","window":"day","max":4000000000}]}}}"#;

/// As the layer does: decode, then decide every call of the body at once.
fn decide(engine: &Engine, body: &[u8], keys: &ScopeKeys) -> bool {
    let decoded = decode(body, &*engine.policy()).expect("the body decodes");
    let calls: Vec<Call<'_>> = decoded
        .messages()
        .iter()
        .filter_map(|m| m.tool_call())
        .map(|call| Call {
            tool: call.name(),
            args: call.arguments(),
        })
        .collect();
    engine.decide_all(&calls, keys) == Verdict::Forward
}

fn bench(c: &mut Criterion) {
    let hasher = ScopeHasher::random();
    let keys = ScopeKeys::new(hasher.credential(b"Bearer bench"), hasher.session(b"s"));
    for (label, policy, body) in [
        ("a_200B_one_limit", POLICY_A, BODY_A),
        ("b_1KiB_deny_if_two_limits", POLICY_B, BODY_B),
    ] {
        let policy: Arc<Policy> = Arc::new(policy.parse().unwrap());
        let engine = Engine::new(policy);
        assert!(
            decide(&engine, body.as_bytes(), &keys),
            "{label} must be allowed"
        );
        let mut group = c.benchmark_group(format!("engine/{label}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("decode_and_decide", |b| {
            b.iter(|| decide(&engine, black_box(body.as_bytes()), &keys))
        });
        group.bench_function("decode_only", |b| {
            b.iter(|| decode(black_box(body.as_bytes()), &*engine.policy()).unwrap())
        });
        group.bench_function("serde_json_value", |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(body.as_bytes())).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
