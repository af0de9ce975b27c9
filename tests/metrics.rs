//! `MetricsObserver` (feature `metrics`): exact values after a known sequence of calls,
//! rendered by the Prometheus exporter the examples use, and a bounded series count
//! however many tool names agents invent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::metrics::MetricsObserver;
use tower_mcp_policy::testing::tool_call;
use tower_mcp_policy::{Policy, PolicyLayer};

const POLICY: &str = r#"{"version":"1","default":"deny","hide":["drop_*"],"tools":{
    "echo":{"limits":[{"counter":"e","window":"minute","max":2}]},
    "fs_*":{}}}"#;

/// The lines of one metric in the rendered text, without comments.
fn series(text: &str, metric: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn exported_values_are_exact_and_invented_tools_add_no_series() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runs = Arc::new(AtomicUsize::new(0));
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let upstream = {
                let runs = runs.clone();
                tower::service_fn(move |_: Request<PolicyBody>| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(
                        Full::new(Bytes::from_static(
                            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
                        )),
                    )))
                })
            };
            let policy: Policy = POLICY.parse().unwrap();
            let service = PolicyLayer::new(policy)
                .observer(MetricsObserver)
                .layer(upstream);
            let send = |request| service.clone().oneshot(request);
            // echo: two pass, the third is over its limit.
            for _ in 0..3 {
                send(tool_call("echo", json!({}))).await.unwrap();
            }
            send(tool_call("fs_read", json!({}))).await.unwrap();
            send(tool_call("drop_table", json!({}))).await.unwrap();
            send(tool_call("unknown", json!({}))).await.unwrap();
            let bad = Request::post("/mcp")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"[]")))
                .unwrap();
            send(bad).await.unwrap();

            let text = handle.render();
            let mut decisions = series(&text, "mcp_policy_decisions_total");
            decisions.sort();
            let line = |decision: &str, kind: &str, tool: &str, n: u32| {
                format!(
                    "mcp_policy_decisions_total{{decision=\"{decision}\",kind=\"{kind}\",tool=\"{tool}\",policy=\"enforced\"}} {n}"
                )
            };
            let mut expected = vec![
                line("allow", "none", "echo", 2),
                line("allow", "none", "fs_*", 1),
                line("deny", "limit", "echo", 1),
                line("deny", "hidden", "hidden", 1),
                line("deny", "not_allowed", "other", 1),
                line("reject", "protocol", "none", 1),
            ];
            expected.sort();
            assert_eq!(decisions, expected, "{text}");
            assert_eq!(
                series(&text, "mcp_policy_decision_seconds_count"),
                ["mcp_policy_decision_seconds_count 6"],
                "one judged request each, the unreadable one excepted"
            );
            assert_eq!(
                series(&text, "mcp_policy_counter_keys"),
                ["mcp_policy_counter_keys 1"]
            );
            assert_eq!(runs.load(Ordering::SeqCst), 3, "only the allowed calls ran");

            // 10,000 invented tool names: counted, and no new series.
            let before = series(&text, "mcp_policy_").len();
            for i in 0..10_000 {
                send(tool_call(&format!("invented_{i}"), json!({}))).await.unwrap();
            }
            let text = handle.render();
            assert_eq!(series(&text, "mcp_policy_").len(), before);
            assert!(
                text.contains(&line("deny", "not_allowed", "other", 10_001)),
                "{text}"
            );
            assert_eq!(runs.load(Ordering::SeqCst), 3);
        });
    });
}

/// The `mcp_policy_decisions_total` series (and the whole rendered text) after
/// `request` went through `layer`, observed by `MetricsObserver`, around an upstream
/// that answers at once.
fn decisions_after(layer: PolicyLayer, request: Request<Full<Bytes>>) -> (Vec<String>, String) {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let upstream = tower::service_fn(|_: Request<PolicyBody>| {
                std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                    Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#),
                ))))
            });
            let service = layer.observer(MetricsObserver).layer(upstream);
            service.oneshot(request).await.unwrap();
        });
    });
    let text = handle.render();
    (series(&text, "mcp_policy_decisions_total"), text)
}

/// Monitor mode is visible in the metrics: what enforcement would deny is counted as
/// `would_deny` under `policy="monitor"`, never as the enforced policy's.
#[test]
fn monitor_mode_is_labelled_in_the_metrics() {
    let policy: Policy = POLICY.parse().unwrap();
    let layer = PolicyLayer::new(policy).mode(tower_mcp_policy::Mode::Monitor);
    let (decisions, text) = decisions_after(layer, tool_call("unknown", json!({})));
    assert_eq!(
        decisions,
        [
            "mcp_policy_decisions_total{decision=\"would_deny\",kind=\"not_allowed\",tool=\"other\",policy=\"monitor\"} 1"
        ],
        "{text}"
    );
}

#[test]
fn under_grants_decisions_are_labelled_with_the_grants_name() {
    let grants = tower_mcp_policy::Grants::new()
        .policy("p", POLICY.parse().unwrap())
        .grant("research-agent", "p");
    let layer = PolicyLayer::new(Policy::deny_all()).grants(grants);
    let mut request = tool_call("echo", json!({}));
    request
        .extensions_mut()
        .insert(tower_mcp_policy::Grant::new("research-agent"));
    let (decisions, text) = decisions_after(layer, request);
    assert_eq!(
        decisions,
        [
            "mcp_policy_decisions_total{decision=\"allow\",kind=\"none\",tool=\"echo\",policy=\"enforced\",grant=\"research-agent\"} 1"
        ],
        "{text}"
    );
}
