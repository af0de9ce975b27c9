//! The observer seam (oneshot): one event per decision with the audit fields, a
//! candidate policy reported beside the enforced one, reloads, refunds and rejections.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::observe::{Event, Observer};
use tower_mcp_policy::{Policy, PolicyLayer, testing};

const POLICY: &str = r#"{"version":"1","default":"deny","tools":{
    "transfer":{"deny_if":[{"conditions":[{"path":"args.to","op":"eq","value":"mallory"},
                                          {"path":"args.amount","op":"gt","value":10}]}]},
    "fail":{"limits":[{"counter":"f","window":"minute","max":5}]},
    "write_*":{"deny_if":[{"conditions":[{"path":"args.path","op":"regex","value":"^/etc"}],"on_deny":"Not there."}]}}}"#;

/// The candidate tightens `transfer`: amounts above 1000, and more than one a minute.
const CANDIDATE: &str = r#"{"version":"1","default":"deny","tools":{
    "transfer":{"deny_if":[{"conditions":[{"path":"args.amount","op":"gt","value":1000}],"on_deny":"Too much."}],
                "limits":[{"counter":"t","window":"minute","max":1}]},
    "fail":{},
    "write_*":{}}}"#;

/// What an event said, owned.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    decision: String,
    tool: String,
    label: String,
    policy: String,
    candidate: bool,
    rule: Option<String>,
    status: Option<u16>,
    arg_keys: Vec<String>,
    grant: String,
}

#[derive(Default, Clone)]
struct Collect {
    calls: Arc<Mutex<Vec<Seen>>>,
    other: Arc<Mutex<Vec<String>>>,
}

impl Observer for Collect {
    fn observe(&self, event: &Event<'_>) {
        match event {
            Event::Call(call) => self.calls.lock().unwrap().push(Seen {
                decision: call.decision_label().to_owned(),
                tool: call.tool.to_owned(),
                label: call.tool_label.to_owned(),
                policy: call.policy.to_owned(),
                candidate: call.candidate,
                rule: call.decision.denial().map(|d| d.rule().to_owned()),
                status: call.upstream_status,
                arg_keys: call.arg_keys().iter().map(|k| k.to_string()).collect(),
                grant: call.grant.to_string(),
            }),
            Event::Judged { .. } => self.other.lock().unwrap().push("judged".into()),
            Event::Rejected { status, .. } => self
                .other
                .lock()
                .unwrap()
                .push(format!("rejected {status}")),
            Event::Refund { charges } => {
                self.other.lock().unwrap().push(format!("refund {charges}"))
            }
            Event::Reload { result, policy, .. } => self.other.lock().unwrap().push(format!(
                "reload {} {policy}",
                if result.is_ok() { "ok" } else { "failed" }
            )),
            other => self.other.lock().unwrap().push(format!("{other:?}")),
        }
    }
}

impl Collect {
    fn calls(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn other(&self) -> Vec<String> {
        std::mem::take(&mut *self.other.lock().unwrap())
    }
}

/// A tools/call from one caller.
fn call(tool: &str, args: Value) -> Request<Full<Bytes>> {
    support::call_as(tool, args, "Bearer sk-live-secret")
}

type Service = tower::util::BoxCloneService<
    Request<Full<Bytes>>,
    Response<tower_mcp_policy::layer::ResponseBody<Full<Bytes>>>,
    std::convert::Infallible,
>;

/// A server that counts runs; a request with `x-fail` is answered with a JSON-RPC error.
fn server(
    runs: Arc<AtomicUsize>,
) -> impl Fn(
    Request<PolicyBody>,
) -> std::future::Ready<Result<Response<Full<Bytes>>, std::convert::Infallible>>
+ Clone {
    move |request: Request<PolicyBody>| {
        runs.fetch_add(1, Ordering::SeqCst);
        let fails = request.headers().contains_key("x-fail");
        let body: &'static [u8] = if fails {
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"down"}}"#
        } else {
            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#
        };
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(body)))))
    }
}

fn service(layer: PolicyLayer, runs: Arc<AtomicUsize>) -> Service {
    tower::util::BoxCloneService::new(layer.layer(tower::service_fn(server(runs))))
}

async fn send(service: &Service, request: Request<Full<Bytes>>) -> (StatusCode, String) {
    let response = service.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn each_call_is_one_event_with_the_audit_fields() {
    let policy: Arc<Policy> = Arc::new(POLICY.parse().unwrap());
    let fingerprint = policy.fingerprint().to_owned();
    assert_eq!(fingerprint.len(), 16);
    let seen = Collect::default();
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(
        PolicyLayer::new(policy).observer(seen.clone()),
        runs.clone(),
    );

    // Allowed: reported once the server answered, with its status.
    send(
        &svc,
        call("transfer", json!({"to": "x", "amount": 5, "memo": "m"})),
    )
    .await;
    let calls = seen.calls();
    assert_eq!(calls.len(), 1);
    let allow = &calls[0];
    assert_eq!(allow.decision, "allow");
    assert_eq!(
        (allow.tool.as_str(), allow.label.as_str()),
        ("transfer", "transfer")
    );
    assert_eq!(allow.policy, fingerprint);
    assert_eq!(allow.status, Some(200));
    // The keys the policy read, sorted, never the values; `memo` is not read, so the
    // decoder never kept it.
    assert_eq!(allow.arg_keys, ["amount", "to"]);
    assert!(!allow.grant.contains("sk-live"), "the grant is hashed");
    assert_eq!(seen.other(), ["judged"]);

    // Denied by a pattern's rule: the label is the pattern, the tool never ran.
    let before = runs.load(Ordering::SeqCst);
    let (_, body) = send(&svc, call("write_file", json!({"path": "/etc/passwd"}))).await;
    assert!(body.contains("Not there."), "{body}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        before,
        "the denied tool never ran"
    );
    let calls = seen.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].decision, "deny");
    assert_eq!(calls[0].label, "write_*");
    assert_eq!(calls[0].rule.as_deref(), Some("/tools/write_*/deny_if/0"));
    assert_eq!(calls[0].status, None);

    // An invented tool name is labelled `other`, whatever it is.
    send(&svc, call("invented-1234", json!({}))).await;
    let calls = seen.calls();
    assert_eq!(
        (calls[0].decision.as_str(), calls[0].label.as_str()),
        ("deny", "other")
    );
    seen.other();

    // A call the server answers with an error is refunded, and reported.
    let mut failing = call("fail", json!({}));
    failing.headers_mut().insert("x-fail", "1".parse().unwrap());
    send(&svc, failing).await;
    assert_eq!(seen.calls()[0].status, Some(200));
    assert_eq!(seen.other(), ["judged", "refund 1"]);

    // A body that cannot be read is a rejection; nothing ran.
    let before = runs.load(Ordering::SeqCst);
    let bad = Request::post("/mcp")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"jsonrpc\":\"2.0\",")))
        .unwrap();
    let (status, _) = send(&svc, bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(runs.load(Ordering::SeqCst), before);
    assert_eq!(seen.other(), ["rejected 400"]);
    assert!(seen.calls().is_empty());
}

#[tokio::test]
async fn a_candidate_policy_reports_what_it_would_deny_while_the_enforced_one_decides() {
    let enforced: Arc<Policy> = Arc::new(POLICY.parse().unwrap());
    let candidate: Policy = CANDIDATE.parse().unwrap();
    let candidate_fingerprint = candidate.fingerprint().to_owned();
    assert_ne!(candidate_fingerprint, enforced.fingerprint());
    let seen = Collect::default();
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = service(
        PolicyLayer::new(enforced.clone())
            .candidate(candidate)
            .observer(seen.clone()),
        runs.clone(),
    );

    // Within both policies: allowed, no candidate event.
    send(&svc, call("transfer", json!({"amount": 10, "to": "bob"}))).await;
    let calls = seen.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].decision, "allow");

    // Above the candidate's amount: runs, and the candidate would deny it.
    let (_, body) = send(&svc, call("transfer", json!({"amount": 5000, "to": "bob"}))).await;
    assert!(
        body.contains("\"result\""),
        "the enforced policy decides: {body}"
    );
    // The second transfer this minute: the candidate's own counter says no too.
    send(&svc, call("transfer", json!({"amount": 1, "to": "bob"}))).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3, "every call ran");
    let calls = seen.calls();
    let would: Vec<_> = calls.iter().filter(|c| c.candidate).collect();
    assert_eq!(would.len(), 2, "{calls:?}");
    for seen in &would {
        assert_eq!(seen.decision, "would_deny");
        assert_eq!(seen.policy, candidate_fingerprint);
    }
    assert_eq!(would[0].rule.as_deref(), Some("/tools/transfer/deny_if/0"));
    assert_eq!(would[1].rule.as_deref(), Some("/tools/transfer/limits/0"));
    let allowed: Vec<_> = calls.iter().filter(|c| !c.candidate).collect();
    assert_eq!(allowed.len(), 2);
    assert!(
        allowed
            .iter()
            .all(|c| c.decision == "allow" && c.policy == enforced.fingerprint())
    );
}

#[test]
fn reloads_are_events_naming_the_policy_in_force() {
    let seen = Collect::default();
    let old: Policy = POLICY.parse().unwrap();
    let new: Policy = CANDIDATE.parse().unwrap();
    let (old_fp, new_fp) = (old.fingerprint().to_owned(), new.fingerprint().to_owned());
    let handle = PolicyLayer::new(old).observer(seen.clone()).handle();
    handle.replace(new);
    let dir = std::env::temp_dir().join(format!("observe-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("policy.json");
    std::fs::write(&broken, r#"{"version":"1","default":"maybe"}"#).unwrap();
    assert!(handle.reload_file(&broken).is_err());
    assert_eq!(
        seen.other(),
        [
            format!("reload ok {new_fp}"),
            format!("reload failed {new_fp}")
        ],
        "the failed reload leaves {new_fp} in force, not {old_fp}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Tool lists the layer cannot filter are withheld, and every one is an event: one
/// larger than the layer reads, one the server compressed, one it cannot read.
#[tokio::test]
async fn withheld_tool_lists_are_reported() {
    let policy: Policy = r#"{"version":"1","default":"allow","hide":["secret_*"]}"#
        .parse()
        .unwrap();
    let collect = Collect::default();
    let answer = |body: &'static str, encoding: Option<&'static str>| {
        move |_: Request<PolicyBody>| {
            let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            if let Some(encoding) = encoding {
                let value = http::HeaderValue::from_static(encoding);
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_ENCODING, value);
            }
            std::future::ready(Ok::<_, std::convert::Infallible>(response))
        }
    };
    let list = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"secret_b"}]}}"#;
    let layer = PolicyLayer::new(policy).observer(collect.clone());
    let list_tools = || testing::request("tools/list", json!({}));

    let small = layer.clone().max_filtered_response_size(16);
    let service = small.layer(tower::service_fn(answer(list, None)));
    let response = service.oneshot(list_tools()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains("secret_b"));
    let compressed = layer
        .clone()
        .layer(tower::service_fn(answer(list, Some("gzip"))));
    let response = compressed.oneshot(list_tools()).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let outcome = response
        .extensions()
        .get::<tower_mcp_policy::layer::Outcome>();
    assert_eq!(outcome, Some(&tower_mcp_policy::layer::Outcome::Rejected));
    let unreadable =
        r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret_b"}],"n":1e400}}"#;
    let service = layer.layer(tower::service_fn(answer(unreadable, None)));
    let response = service.oneshot(list_tools()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains("secret_b"));

    let withheld: Vec<String> = collect
        .other()
        .into_iter()
        .filter(|e| e.starts_with("ListWithheld"))
        .collect();
    assert_eq!(withheld.len(), 3, "{withheld:?}");
    assert!(
        withheld[0].contains("larger than the 16 bytes"),
        "{}",
        withheld[0]
    );
    assert!(withheld[1].contains("compressed"), "{}", withheld[1]);
    assert!(withheld[2].contains("could not be read"), "{}", withheld[2]);
}

/// The caller's W3C trace context reaches every call event of its request: from the
/// call's `params._meta.traceparent` (SEP-414), or else from the `traceparent` header.
#[tokio::test]
async fn call_events_carry_the_callers_trace_context() {
    /// Each call event's decision and trace context.
    type Seen = Vec<(String, Option<String>)>;
    #[derive(Clone, Default)]
    struct Traces(Arc<Mutex<Seen>>);
    impl Observer for Traces {
        fn observe(&self, event: &Event<'_>) {
            if let Event::Call(call) = event {
                let seen = (
                    call.decision_label().to_owned(),
                    call.trace.map(str::to_owned),
                );
                self.0.lock().unwrap().push(seen);
            }
        }
    }
    let traces = Traces::default();
    let runs = Arc::new(AtomicUsize::new(0));
    let policy: Policy = POLICY.parse().unwrap();
    let service = PolicyLayer::new(policy)
        .observer(traces.clone())
        .layer(tower::service_fn(server(runs)));
    let in_meta = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let in_header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let call_with = |tool: &str, meta: bool, header: bool| {
        let mut params = json!({"name": tool, "arguments": {"to": "mallory", "amount": 50}});
        if meta {
            params["_meta"] = json!({"traceparent": in_meta});
        }
        let mut request = testing::request("tools/call", params);
        if header {
            request
                .headers_mut()
                .insert("traceparent", in_header.parse().unwrap());
        }
        request
    };
    // Allowed (reported once the server answered) and denied, each way.
    for (tool, meta, header, expected) in [
        ("fail", true, true, Some(in_meta)),
        ("fail", false, true, Some(in_header)),
        ("transfer", true, false, Some(in_meta)),
        ("transfer", false, true, Some(in_header)),
        ("transfer", false, false, None),
    ] {
        let response = service
            .clone()
            .oneshot(call_with(tool, meta, header))
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
        let (decision, trace) = traces.0.lock().unwrap().pop().expect("an event");
        assert_eq!(trace.as_deref(), expected, "{tool} ({decision})");
    }
}
