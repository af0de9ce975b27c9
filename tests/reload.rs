//! Hot reload (oneshot): one policy snapshot per request, and counters that survive a
//! reload keeping their definition.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_mcp_policy::FakeClock;
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::{Policy, PolicyLayer};

fn policy(text: &str) -> Policy {
    text.parse().unwrap()
}

/// v1 reads `x`, v2 reads `y`: a request judged with v1's decode plan (only `x` kept)
/// and v2's rules would find `y` missing and answer "could not be checked".
const V1: &str = r#"{"version":"1","default":"deny","tools":{"t":{"deny_if":[
    {"conditions":[{"path":"args.x","op":"gt","value":10}],"on_deny":"v1"}]}}}"#;
const V2: &str = r#"{"version":"1","default":"deny","tools":{"t":{"deny_if":[
    {"conditions":[{"path":"args.y","op":"gt","value":10}],"on_deny":"v2"}]}}}"#;

/// A call of the test tool `t`.
fn call(args: serde_json::Value) -> Request<Full<Bytes>> {
    support::call("t", args)
}

/// What the test upstream answers, at once.
type Answer = std::future::Ready<Result<Response<Full<Bytes>>, std::convert::Infallible>>;

fn upstream() -> impl tower::Service<
    Request<PolicyBody>,
    Response = Response<Full<Bytes>>,
    Error = std::convert::Infallible,
    Future = Answer,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_: Request<PolicyBody>| {
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
        )))))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_under_reloads_is_exactly_one_versions() {
    let layer = PolicyLayer::with_clock(Arc::new(policy(V1)), FakeClock::new());
    let handle = layer.handle();
    let service = layer.layer(upstream());
    // Swaps on a thread of its own, back and forth for as long as the requests run
    // (they never wait, so a task would only run once they are done).
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let swapping = std::thread::spawn(move || {
        let (v1, v2) = (Arc::new(policy(V1)), Arc::new(policy(V2)));
        let mut swaps = 0;
        while !stop.load(Ordering::Relaxed) {
            handle.replace(if swaps % 2 == 0 {
                v2.clone()
            } else {
                v1.clone()
            });
            swaps += 1;
        }
        swaps
    });
    let seen = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let service = service.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                for _ in 0..2500 {
                    let response = service
                        .clone()
                        .oneshot(call(json!({"x": 100, "y": 100})))
                        .await;
                    let body = response
                        .unwrap()
                        .into_body()
                        .collect()
                        .await
                        .unwrap()
                        .to_bytes();
                    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let text = answer["result"]["content"][0]["text"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    match text.as_str() {
                        "[POLICY DENIED] v1" => seen[0].fetch_add(1, Ordering::Relaxed),
                        "[POLICY DENIED] v2" => seen[1].fetch_add(1, Ordering::Relaxed),
                        other => panic!("an answer from no single version: {other}"),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let swaps = swapping.join().unwrap();
    assert!(swaps >= 100, "the policy alternated {swaps} times");
    let (v1, v2) = (
        seen[0].load(Ordering::Relaxed),
        seen[1].load(Ordering::Relaxed),
    );
    assert_eq!(v1 + v2, 10_000);
    assert!(v1 > 0 && v2 > 0, "both versions were in force: {v1} / {v2}");
}

#[tokio::test]
async fn counters_keep_their_state_across_a_reload_that_keeps_their_definition() {
    let limits = |max: u32| {
        policy(&format!(
            r#"{{"version":"1","default":"deny","tools":{{
                "kept":{{"limits":[{{"counter":"kept","window":"minute","max":1}}]}},
                "changed":{{"limits":[{{"counter":"changed","window":"minute","max":{max}}}]}}}}}}"#
        ))
    };
    let layer = PolicyLayer::with_clock(Arc::new(limits(1)), FakeClock::new());
    let handle = layer.handle();
    let counters = layer.engine().counters().clone();
    let service = layer.layer(upstream());
    let denied = |tool: &'static str| {
        let service = service.clone();
        async move {
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}});
            let request = Request::post("/mcp")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            let response = service.oneshot(request).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&body).contains("[POLICY DENIED]")
        }
    };
    assert!(!denied("kept").await);
    assert!(!denied("changed").await);
    assert!(denied("kept").await && denied("changed").await);
    assert_eq!(counters.len(), 2);

    handle.replace(limits(2));
    assert!(denied("kept").await, "an unchanged counter keeps its state");
    assert!(
        denied("changed").await,
        "a counter whose max changed keeps its state: no fresh budget"
    );

    // A policy without a counter drops it from the store.
    handle.replace(policy(r#"{"version":"1","default":"allow"}"#));
    assert_eq!(counters.len(), 0, "the removed counters are dropped");
    assert!(!denied("kept").await, "no limit any more");
}
