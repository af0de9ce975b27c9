//! Monitor mode (oneshot): a dry run that denies and hides nothing, reports what
//! enforcement would do, and charges what enforcement would charge. Alone in its binary:
//! it records tracing events.

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
use tower_mcp_policy::{Mode, Policy, PolicyLayer};

const POLICY: &str = r#"{"version":"1","default":"deny","hide":["secret"],"tools":{
    "write":{"limits":[{"counter":"w","window":"minute","max":2}]},
    "transfer":{"deny_if":[{"conditions":[{"path":"args.amount","op":"gt","value":1000}],"on_deny":"Too much."}]}}}"#;

use support::recorder::Recorder;

use support::call;

/// A policy layer around the test server, boxed.
type Service = tower::util::BoxCloneService<
    Request<Full<Bytes>>,
    Response<tower_mcp_policy::layer::ResponseBody<Full<Bytes>>>,
    std::convert::Infallible,
>;

/// The layer in `mode` around a server that counts runs and lists a hidden tool.
fn service(mode: Mode, runs: Arc<AtomicUsize>) -> Service {
    let upstream = tower::service_fn(move |_: Request<PolicyBody>| {
        runs.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"write"},{"name":"secret"}]}}"#,
        )))))
    });
    let policy: Policy = POLICY.parse().unwrap();
    let layer = PolicyLayer::with_clock(Arc::new(policy), FakeClock::new()).mode(mode);
    tower::util::BoxCloneService::new(layer.layer(upstream))
}

async fn text(service: &Service, request: Request<Full<Bytes>>) -> String {
    let response = service.clone().oneshot(request).await.unwrap();
    String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn monitor_mode_runs_everything_and_reports_what_enforcement_would_do() {
    use tracing_subscriber::layer::SubscriberExt;
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry()
        .with(recorder.clone())
        .with(tracing_subscriber::filter::LevelFilter::DEBUG);
    let _guard = tracing::subscriber::set_default(subscriber);

    let (monitored, enforced) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let monitor = service(Mode::Monitor, monitored.clone());
    let enforce = service(Mode::Enforce, enforced.clone());
    // The same sequence through both: monitor runs all, and reports would_deny exactly
    // where enforcement denies; its counters follow enforcement's.
    let sequence = [
        ("write", json!({})),
        ("write", json!({})),
        ("write", json!({})),
        ("transfer", json!({"amount": 5000})),
        ("transfer", json!({"amount": 5})),
        ("secret", json!({})),
        ("unknown_tool", json!({})),
        ("write", json!({})),
    ];
    let mut enforced_denials = Vec::new();
    for (tool, args) in &sequence {
        let answer = text(&enforce, call(tool, args.clone())).await;
        enforced_denials
            .push(answer.contains("[POLICY DENIED]") || answer.contains("Unknown tool"));
        let answer = text(&monitor, call(tool, args.clone())).await;
        assert!(
            !answer.contains("[POLICY DENIED]") && !answer.contains("Unknown tool"),
            "{tool}: {answer}"
        );
    }
    assert_eq!(
        monitored.load(Ordering::SeqCst),
        sequence.len(),
        "every call ran"
    );
    assert_eq!(
        enforced_denials,
        [false, false, true, true, false, true, true, true]
    );
    assert_eq!(enforced.load(Ordering::SeqCst), 3);

    let events = recorder.events();
    let would_deny: Vec<&String> = events
        .iter()
        .filter(|e| e.contains("decision=\"would_deny\""))
        .collect();
    assert_eq!(would_deny.len(), 5, "{events:#?}");
    let transfer = would_deny
        .iter()
        .find(|e| e.contains("tool=\"transfer\""))
        .unwrap();
    for field in [
        "kind=\"deny_if\"",
        "rule=\"/tools/transfer/deny_if/0\"",
        "message=Too much.",
        "grant=",
        "arg_keys=[\"amount\"]",
    ] {
        assert!(transfer.contains(field), "{field} missing from {transfer}");
    }
    let limit = would_deny
        .iter()
        .find(|e| e.contains("tool=\"write\""))
        .unwrap();
    assert!(
        limit.contains("kind=\"limit\"") && limit.contains("retry_after_seconds=30"),
        "{limit}"
    );

    // Nothing is hidden in a dry run: the tool list comes back whole.
    let list = Request::post("/mcp")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        )))
        .unwrap();
    assert!(text(&monitor, list).await.contains("secret"));
}
