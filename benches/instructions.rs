//! A driver for instruction counts (valgrind's callgrind), which are stable where
//! wall-clock times on a shared 2-core machine move by 20-30 %. `benches/instructions.sh`
//! runs it at two iteration counts and prints the difference per iteration, so set-up
//! (the policy, the clock's calibration) cancels out.
//!
//! ```text
//! instructions (a|b) (value|decode|decide|layer) ITERATIONS
//! instructions scale POLICY CALL ITERATIONS
//! ```
//!
//! (a) and (b) are the bodies and policies of `benches/engine.rs`: `value` parses the
//! body into a `serde_json::Value`, `decode` decodes it for the policy, `decide` decodes
//! and decides every call as the layer does (in-memory counters, on a `FakeClock`: the
//! monotonic clock's calibration runs for a wall-clock time, so its instructions vary
//! from run to run), and `layer` sends the body through a whole `PolicyLayer` around an
//! inner service that answers at once (the layer's own cost per request). `scale` decodes and
//! decides one call (`exact`, `pattern`, `unknown`) under one of the pattern-scaling
//! policies (`one-rule`, `100-rules`, `1000-patterns`, `100-rules+1000-hide`,
//! `1000-patterns+1000-hide`; see `inputs/mod.rs`).

use std::hint::black_box;
use std::sync::Arc;

use tower_mcp_policy::unstable::decode;
use tower_mcp_policy::{Engine, FakeClock, Policy, ScopeHasher, ScopeKeys, unstable::Call};

mod inputs;

fn main() {
    // `cargo bench` adds `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [which, mode, iterations] = &args[..] else {
        eprintln!("usage: instructions (a|b) (value|decode|decide|layer) ITERATIONS");
        eprintln!("       instructions scale POLICY CALL ITERATIONS");
        std::process::exit(2);
    };
    if mode == "layer" {
        let (policy, body) = match which.as_str() {
            "a" => (inputs::POLICY_A, inputs::BODY_A),
            _ => (inputs::POLICY_B, inputs::BODY_B),
        };
        return through_the_layer(policy, body, iterations.parse().expect("iterations"));
    }
    if which == "scale" {
        let (policy, call) = mode.split_once(':').expect("POLICY:CALL");
        return scale(policy, call, iterations.parse().expect("iterations"));
    }
    let (policy, body) = match which.as_str() {
        "a" => (inputs::POLICY_A, inputs::BODY_A),
        _ => (inputs::POLICY_B, inputs::BODY_B),
    };
    let iterations: usize = iterations.parse().expect("a number of iterations");
    let policy: Arc<Policy> = Arc::new(policy.parse().unwrap());
    let engine = Engine::with_clock(policy.clone(), FakeClock::new());
    let hasher = ScopeHasher::with_key([1; 16]);
    let keys = ScopeKeys::new(hasher.credential(b"Bearer bench"), hasher.session(b"s"));
    for _ in 0..iterations {
        match mode.as_str() {
            "value" => {
                black_box(serde_json::from_str::<serde_json::Value>(black_box(body)).unwrap());
            }
            "decode" => {
                black_box(decode(black_box(body.as_bytes()), &*policy).unwrap());
            }
            _ => {
                let decoded = decode(black_box(body.as_bytes()), &*policy).unwrap();
                let calls = Call::all_in(&decoded);
                assert_eq!(engine.decide_all(&calls, &keys), Ok(()));
            }
        }
    }
}

/// Decodes and decides one call under a pattern-scaling policy, `iterations` times.
fn scale(policy: &str, call: &str, iterations: usize) {
    let &(_, rules, patterns, hidden) = inputs::SCALED
        .iter()
        .find(|(name, ..)| *name == policy)
        .expect("a policy of the table");
    let &(_, tool) = inputs::SCALED_CALLS
        .iter()
        .find(|(name, _)| *name == call)
        .expect("a call of the table");
    let policy: Arc<Policy> = Arc::new(
        inputs::scaled_policy(rules, patterns, hidden)
            .parse()
            .unwrap(),
    );
    let body = inputs::scaled_body(tool);
    let engine = Engine::with_clock(policy.clone(), FakeClock::new());
    let hasher = ScopeHasher::with_key([1; 16]);
    let keys = ScopeKeys::new(hasher.credential(b"Bearer bench"), hasher.session(b"s"));
    for _ in 0..iterations {
        let decoded = decode(black_box(body.as_bytes()), &*policy).unwrap();
        let calls = Call::all_in(&decoded);
        let _ = black_box(engine.decide_all(&calls, &keys));
    }
}

/// Sends the body through a `PolicyLayer` (in-memory counters, the default observer)
/// around an inner service that answers at once, `iterations` times, and reads every
/// answer whole: the layer's own cost per request, without a server or a client.
fn through_the_layer(policy: &str, body: &'static str, iterations: usize) {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::{Layer, Service, ServiceExt};
    use tower_mcp_policy::PolicyLayer;
    use tower_mcp_policy::layer::PolicyBody;

    let policy: Policy = policy.parse().unwrap();
    let inner = tower::service_fn(|_: http::Request<PolicyBody>| {
        std::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(
            Full::new(Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":42,"result":{"content":[]}}"#,
            )),
        )))
    });
    let mut service = PolicyLayer::with_clock(policy, FakeClock::new()).layer(inner);
    futures::executor::block_on(async {
        for _ in 0..iterations {
            let request = http::Request::post("http://localhost/mcp")
                .header("content-type", "application/json")
                .header("authorization", "Bearer bench")
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap();
            let ready = ServiceExt::<http::Request<Full<Bytes>>>::ready(&mut service);
            let response = ready.await.unwrap().call(request).await.unwrap();
            black_box(response.into_body().collect().await.unwrap().to_bytes());
        }
    });
}
