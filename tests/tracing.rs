//! Every decision is a `tracing` event with stable fields and no secrets.
//!
//! Alone in its own test binary: tracing caches each call site's interest globally, and
//! tests on other threads with no subscriber would race this test's thread-local one.

mod support;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_mcp_policy::FakeClock;
use tower_mcp_policy::PolicyLayer;
use tower_mcp_policy::layer::PolicyBody;

fn post(tool: &str, args: Value) -> Request<Full<Bytes>> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": args}});
    Request::post("/mcp")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn layer() -> PolicyLayer<tower_mcp_policy::counter::MemoryCounters> {
    let policy: tower_mcp_policy::Policy = r#"{"version":"1","default":"deny","tools":{"echo":{},
        "transfer":{"deny_if":[{"conditions":[{"path":"args.amount","op":"gt","value":1000}],"on_deny":"Too much."}]}}}"#
        .parse()
        .unwrap();
    PolicyLayer::with_clock(Arc::new(policy), FakeClock::new())
}

use support::recorder::Recorder;

#[tokio::test]
async fn every_decision_is_a_tracing_event_without_secrets() {
    use tracing_subscriber::layer::SubscriberExt;
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry()
        .with(recorder.clone())
        .with(tracing_subscriber::filter::LevelFilter::DEBUG);
    let _guard = tracing::subscriber::set_default(subscriber);

    let upstream = tower::service_fn(|_: Request<PolicyBody>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"{}"),
        ))))
    });
    let service = layer().layer(upstream);
    let mut denied = post(
        "transfer",
        json!({"amount": 987654, "to": "secret-account"}),
    );
    denied
        .headers_mut()
        .insert("authorization", "Bearer sk-live-12345".parse().unwrap());
    denied
        .headers_mut()
        .insert("mcp-session-id", "session-abc".parse().unwrap());
    service.clone().oneshot(denied).await.unwrap();
    service
        .clone()
        .oneshot(post("echo", json!({"text": "hello"})))
        .await
        .unwrap();

    let events = recorder.0.lock().unwrap().clone();
    let deny = events
        .iter()
        .find(|e| e.contains("decision=\"deny\""))
        .expect("a deny event");
    for field in [
        "kind=\"deny_if\"",
        "tool=\"transfer\"",
        "rule=\"/tools/transfer/deny_if/0\"",
        "message=Too much.",
        "grant=",
        "session=",
        "jsonrpc_id=1",
        "arg_keys=[\"amount\"]",
    ] {
        assert!(deny.contains(field), "{field} missing from {deny}");
    }
    assert!(
        events
            .iter()
            .any(|e| e.contains("decision=\"allow\"") && e.contains("tool=\"echo\""))
    );
    for secret in [
        "987654",
        "secret-account",
        "sk-live-12345",
        "session-abc",
        "hello",
    ] {
        assert!(
            events.iter().all(|e| !e.contains(secret)),
            "{secret} leaked into {events:?}"
        );
    }
}
