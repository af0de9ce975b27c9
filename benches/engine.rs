//! decode + decide, next to a plain `serde_json::Value` parse of the same body.
//!
//! (a) a ~200-byte `tools/call` under a policy with one limit;
//! (b) a ~1 KiB `tools/call` under a policy with a `deny_if` condition and two limits.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;
use tower_mcp_policy::unstable::decode;
use tower_mcp_policy::{Engine, Policy, ScopeHasher, ScopeKeys, unstable::Call};

mod inputs;
use inputs::{BODY_A, BODY_B, POLICY_A, POLICY_B};

/// As the layer does: decode, then decide every call of the body at once.
fn decide(engine: &Engine, body: &[u8], keys: &ScopeKeys) -> bool {
    let decoded = decode(body, &*engine.policy()).expect("the body decodes");
    let calls = Call::all_in(&decoded);
    engine.decide_all(&calls, keys) == Ok(())
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
