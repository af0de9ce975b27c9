//! The layer in-process with `oneshot`: no sockets, fake clock where time matters.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Channel, Full};
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt};
use tower_mcp_policy::FakeClock;
use tower_mcp_policy::counter::{Charge, ChargeError, CounterStore};
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::{DenialFormat, Engine, Grant, Policy, PolicyLayer};

const POLICY: &str = r#"{"version":"1","default":"deny","hide":["delete_*"],
    "tools":{"echo":{},"write":{"limits":[{"counter":"w","window":"minute","max":1}]},
             "transfer":{"deny_if":[{"conditions":[{"path":"args.amount","op":"gt","value":1000}],"on_deny":"Too much."}]}}}"#;

fn policy() -> Arc<Policy> {
    Arc::new(POLICY.parse().unwrap())
}

fn layer() -> PolicyLayer<tower_mcp_policy::counter::MemoryCounters> {
    PolicyLayer::with_clock(policy(), FakeClock::new())
}

/// An inner service that answers every request with `{"ok":true}` and counts calls.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicUsize>,
}

impl Service<Request<PolicyBody>> for Upstream {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<PolicyBody>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(
            br#"{"ok":true}"#,
        )))))
    }
}

/// The future of a service that answers at once.
type Answer<B> = std::future::Ready<Result<Response<B>, Infallible>>;

/// An inner service that is always ready and answers at once with `answer(request)`.
fn answering<B, F>(
    mut answer: F,
) -> impl Service<Request<PolicyBody>, Response = Response<B>, Error = Infallible, Future = Answer<B>>
+ Clone
+ Send
+ 'static
where
    F: FnMut(Request<PolicyBody>) -> Response<B> + Clone + Send + 'static,
{
    tower::service_fn(move |request| std::future::ready(Ok(answer(request))))
}

fn post(body: Value) -> Request<Full<Bytes>> {
    Request::post("/mcp")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn call(tool: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": args}})
}

async fn body_json<B: Body<Data = Bytes>>(body: B) -> Value
where
    B::Error: std::fmt::Debug,
{
    serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn the_json_rpc_error_format() {
    let upstream = Upstream::default();
    let service = layer()
        .denial_format(DenialFormat::JsonRpcError)
        .layer(upstream.clone());
    let response = service
        .oneshot(post(call("transfer", json!({"amount": 5000}))))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_json(response.into_body()).await;
    assert_eq!(
        body,
        json!({"jsonrpc": "2.0", "id": 1, "error": {
            "code": -32050,
            "message": "[POLICY DENIED] Too much.",
            "data": {"rule": "/tools/transfer/deny_if/0", "tool": "transfer", "kind": "deny_if"}}})
    );
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_tool_result_format_carries_retry_after() {
    let upstream = Upstream::default();
    let service = layer().layer(upstream.clone());
    let ok = service
        .clone()
        .oneshot(post(call("write", json!({}))))
        .await
        .unwrap();
    assert_eq!(body_json(ok.into_body()).await, json!({"ok": true}));
    let limited = service
        .oneshot(post(call("write", json!({}))))
        .await
        .unwrap();
    let body = body_json(limited.into_body()).await;
    assert_eq!(
        body["result"]["content"][0]["text"],
        "[POLICY DENIED] Rate limit of 1 per minute reached for \"write\". Try again in 60s."
    );
    assert_eq!(
        body["result"]["_meta"]["tower-mcp-policy/denial"]["retryAfterSeconds"],
        60
    );
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_application_grant_overrides_the_credential() {
    let upstream = Upstream::default();
    let service = layer().layer(upstream.clone());
    let request = |auth: &str, grant: Option<&str>| {
        let mut request = post(call("write", json!({})));
        request
            .headers_mut()
            .insert("authorization", auth.parse().unwrap());
        if let Some(grant) = grant {
            request.extensions_mut().insert(Grant::new(grant));
        }
        request
    };
    let is_denied = |body: &Value| body["result"]["isError"] == json!(true);
    // Two credentials, one tenant: one budget.
    let first = service
        .clone()
        .oneshot(request("Bearer a", Some("tenant-1")))
        .await
        .unwrap();
    assert!(!is_denied(&body_json(first.into_body()).await));
    let second = service
        .clone()
        .oneshot(request("Bearer b", Some("tenant-1")))
        .await
        .unwrap();
    assert!(is_denied(&body_json(second.into_body()).await));
    // Without the extension, the credential decides.
    let third = service
        .clone()
        .oneshot(request("Bearer b", None))
        .await
        .unwrap();
    assert!(!is_denied(&body_json(third.into_body()).await));
    // Requests without any credential share one anonymous grant.
    let anon = |svc: tower_mcp_policy::PolicyService<Upstream, _>| {
        svc.oneshot(post(call("write", json!({}))))
    };
    assert!(!is_denied(
        &body_json(anon(service.clone()).await.unwrap().into_body()).await
    ));
    assert!(is_denied(
        &body_json(anon(service.clone()).await.unwrap().into_body()).await
    ));
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_413_without_a_content_length() {
    let upstream = Upstream::default();
    let service = layer().max_body_size(64).layer(upstream.clone());
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
    tokio::spawn(async move {
        for _ in 0..10 {
            if tx
                .send_data(Bytes::from_static(b"[[[[[[[[[[[[[[[["))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let request = Request::post("/mcp")
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = body_json(response.into_body()).await;
    assert_eq!(
        body["error"]["message"],
        "the request body is larger than the limit of 64 bytes"
    );
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 0);
}

async fn next_frame<B: Body<Data = Bytes> + Unpin>(body: &mut B) -> String
where
    B::Error: std::fmt::Debug,
{
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("a frame arrives without waiting for the rest of the stream")
        .expect("the stream is not over")
        .unwrap();
    String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
}

#[tokio::test]
async fn a_get_stream_is_filtered_event_by_event_as_it_flows() {
    let (mut tx, channel) = Channel::<Bytes, Infallible>::new(8);
    // An upstream that answers with an SSE stream the test feeds by hand.
    let channel = Arc::new(Mutex::new(Some(channel)));
    let upstream = answering(move |_| {
        let body = channel.lock().unwrap().take().expect("one stream");
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap()
    });
    let service = layer().layer(upstream);
    let request = Request::get("/mcp")
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    let mut body = response.into_body();

    // An unrelated event passes through unchanged, before anything else is sent.
    let progress = "id: 1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";
    tx.send_data(Bytes::from(progress)).await.unwrap();
    assert_eq!(next_frame(&mut body).await, progress);

    // A replayed tools/list result, split across chunks, loses its hidden tool.
    let listing = "id: 2\ndata: {\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{\"tools\":[{\"name\":\"echo\"},{\"name\":\"delete_account\"}]}}\n\n";
    let (a, b) = listing.split_at(30);
    tx.send_data(Bytes::from(a)).await.unwrap();
    tx.send_data(Bytes::from(b)).await.unwrap();
    let filtered = next_frame(&mut body).await;
    assert!(filtered.starts_with("id: 2\ndata: "), "{filtered}");
    assert!(
        !filtered.contains("delete_account") && filtered.contains("echo"),
        "{filtered}"
    );

    // A keep-alive comment, unchanged; then the end of the stream.
    tx.send_data(Bytes::from(": ping\n\n")).await.unwrap();
    assert_eq!(next_frame(&mut body).await, ": ping\n\n");
    drop(tx);
    assert!(body.frame().await.is_none());
}

/// An upstream whose instances must be polled ready before they are called.
struct Picky {
    ready: bool,
    calls: Arc<AtomicUsize>,
}

impl Clone for Picky {
    fn clone(&self) -> Self {
        Picky {
            ready: false,
            calls: self.calls.clone(),
        }
    }
}

impl Service<Request<PolicyBody>> for Picky {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<PolicyBody>) -> Self::Future {
        assert!(self.ready, "called an instance that was never polled ready");
        self.ready = false;
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"{}")))))
    }
}

#[tokio::test]
async fn the_instance_polled_ready_is_the_one_called() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut service = layer().layer(Picky {
        ready: false,
        calls: calls.clone(),
    });
    for _ in 0..3 {
        let ready = ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
            .await
            .unwrap();
        let response = ready.call(post(call("echo", json!({})))).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// A remote store that is down.
#[derive(Clone)]
struct DownStore;

impl CounterStore for DownStore {
    type Future = std::future::Ready<Result<(), ChargeError>>;
    fn charge(&self, _: &[Charge]) -> Self::Future {
        std::future::ready(Err(ChargeError::Unavailable("connection refused".into())))
    }
}

#[tokio::test]
async fn an_unavailable_counter_store_fails_closed() {
    let upstream = Upstream::default();
    let service = PolicyLayer::from_engine(Engine::with_counters(policy(), DownStore))
        .layer(upstream.clone());
    let limited = service
        .clone()
        .oneshot(post(call("write", json!({}))))
        .await
        .unwrap();
    let body = body_json(limited.into_body()).await;
    // The store's own error is for the logs; the agent reads a fixed message.
    assert_eq!(
        body["result"]["content"][0]["text"],
        "[POLICY DENIED] Rate-limit state is unavailable, the call was not run; try again in 1s."
    );
    assert_eq!(
        body["result"]["_meta"]["tower-mcp-policy/denial"]["retryAfterSeconds"],
        1
    );
    assert!(!body.to_string().contains("connection refused"));
    // A call with no limit does not need the store.
    let free = service
        .oneshot(post(call("echo", json!({}))))
        .await
        .unwrap();
    assert_eq!(body_json(free.into_body()).await, json!({"ok": true}));
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_tool_list_too_large_to_filter_is_replaced_by_an_error() {
    let big_list = answering(|_| {
        let tools: Vec<Value> = (0..100)
            .map(|i| json!({"name": format!("delete_{i}")}))
            .collect();
        let body = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}).to_string();
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    });
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let small = layer()
        .max_filtered_response_size(100)
        .layer(big_list.clone());
    let body = body_json(small.oneshot(post(list.clone())).await.unwrap().into_body()).await;
    assert_eq!(body["error"]["code"], -32603);
    let roomy = layer().layer(big_list);
    let body = body_json(roomy.oneshot(post(list)).await.unwrap().into_body()).await;
    assert_eq!(body["result"]["tools"], json!([]), "every tool was hidden");
}

#[tokio::test]
async fn inner_errors_pass_through_unchanged() {
    let failing = tower::service_fn(|_: Request<PolicyBody>| {
        std::future::ready(Err::<Response<Full<Bytes>>, _>("upstream broke"))
    });
    let service = layer().layer(failing);
    let err = service
        .oneshot(post(call("echo", json!({}))))
        .await
        .unwrap_err();
    assert_eq!(err, "upstream broke");
}

mod servers;
mod support;

#[tokio::test]
async fn around_rmcp_streamable_http_service_without_axum() {
    use rmcp::transport::streamable_http_server::StreamableHttpService;
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use servers::demo::demo_server::{Exchange, Executions, server_config};

    let executions = Executions::default();
    let exchange = executions.clone();
    let mcp: StreamableHttpService<Exchange, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(Exchange::new(exchange.clone())),
        Default::default(),
        server_config(true),
    );
    let service = tower::ServiceBuilder::new()
        .layer(PolicyLayer::new(policy()))
        .service(mcp);
    let mut request = post(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    request.headers_mut().insert(
        "accept",
        "application/json, text/event-stream".parse().unwrap(),
    );
    request
        .headers_mut()
        .insert("host", "localhost".parse().unwrap());
    let response = service.clone().oneshot(request).await.unwrap();
    let body = body_json(response.into_body()).await;
    let names: Vec<&str> = body["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"echo") && !names.contains(&"delete_account"),
        "{names:?}"
    );
    assert_eq!(executions.total(), 0);
}

/// Headers an upstream received, one map per request.
type Seen = Arc<Mutex<Vec<http::HeaderMap>>>;

/// An upstream that answers with a fixed response and records the headers it got in `seen`.
fn scripted(
    seen: &Seen,
    content_type: Option<&'static str>,
    content_encoding: Option<&'static str>,
    body: &'static str,
) -> impl Service<
    Request<PolicyBody>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = Answer<Full<Bytes>>,
> + Clone
+ Send
+ 'static {
    let seen = seen.clone();
    answering(move |request: Request<PolicyBody>| {
        seen.lock().unwrap().push(request.headers().clone());
        let mut response = Response::builder();
        if let Some(content_type) = content_type {
            response = response.header("content-type", content_type);
        }
        if let Some(encoding) = content_encoding {
            response = response.header("content-encoding", encoding);
        }
        response
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    })
}

const LISTING: &str =
    r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},{"name":"delete_account"}]}}"#;

fn list_request() -> Request<Full<Bytes>> {
    let mut request = post(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    request
        .headers_mut()
        .insert("accept-encoding", "gzip, br".parse().unwrap());
    request
}

#[tokio::test]
async fn forwarded_requests_ask_for_uncompressed_answers_when_tools_are_hidden() {
    let seen = Seen::default();
    let upstream = scripted(&seen, Some("application/json"), None, LISTING);
    let service = layer().layer(upstream);
    service.oneshot(list_request()).await.unwrap();
    assert_eq!(seen.lock().unwrap()[0]["accept-encoding"], "identity");
}

#[tokio::test]
async fn a_compressed_answer_that_needs_filtering_is_refused() {
    for content_type in ["text/event-stream", "application/json"] {
        let upstream = scripted(&Seen::default(), Some(content_type), Some("gzip"), LISTING);
        let response = layer()
            .layer(upstream)
            .oneshot(list_request())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{content_type}");
        let body = body_json(response.into_body()).await;
        assert_eq!(body["error"]["code"], -32603);
    }
}

#[tokio::test]
async fn a_tool_list_without_a_content_type_is_still_filtered() {
    let upstream = scripted(&Seen::default(), None, None, LISTING);
    let response = layer()
        .layer(upstream)
        .oneshot(list_request())
        .await
        .unwrap();
    let body = body_json(response.into_body()).await;
    assert_eq!(body["result"]["tools"], json!([{"name": "echo"}]));
}

#[tokio::test]
async fn session_limits_count_per_issued_session_and_otherwise_per_grant() {
    let policy: Policy = r#"{"version":"1","default":"allow","tools":{"t":{
        "limits":[{"counter":"s","window":"minute","max":1,"scope":"session"}]}}}"#
        .parse()
        .unwrap();
    // The server issues session "s1" in its answer to initialize (and echoes the header
    // on every answer, which issues nothing).
    let upstream = answering(|_| {
        let mut response = Response::new(Full::new(Bytes::from_static(br#"{"ok":true}"#)));
        response
            .headers_mut()
            .insert("mcp-session-id", http::HeaderValue::from_static("s1"));
        response
    });
    let service = PolicyLayer::with_clock(policy, FakeClock::new()).layer(upstream);
    let request = |auth: &str, session: Option<&str>| {
        let mut request = post(call("t", json!({})));
        request
            .headers_mut()
            .insert("authorization", auth.parse().unwrap());
        if let Some(session) = session {
            request
                .headers_mut()
                .insert("mcp-session-id", session.parse().unwrap());
        }
        request
    };
    let denied = |response: Response<_>| async move {
        body_json::<tower_mcp_policy::layer::ResponseBody<Full<Bytes>>>(response.into_body()).await
            ["result"]["isError"]
            == json!(true)
    };
    let send = |auth, session| service.clone().oneshot(request(auth, session));
    assert!(!denied(send("Bearer a", None).await.unwrap()).await);
    assert!(
        !denied(send("Bearer b", None).await.unwrap()).await,
        "another grant, its own bucket"
    );
    assert!(denied(send("Bearer a", None).await.unwrap()).await);
    assert!(
        denied(send("Bearer a", Some("s1")).await.unwrap()).await,
        "an id the server never issued counts per grant"
    );
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    service.clone().oneshot(post(initialize)).await.unwrap();
    assert!(
        !denied(send("Bearer a", Some("s1")).await.unwrap()).await,
        "an issued session has its own bucket"
    );
    assert!(
        denied(send("Bearer b", Some("s1")).await.unwrap()).await,
        "shared by everyone in it"
    );
}

#[tokio::test]
async fn an_unavailable_store_denies_every_call_that_needed_it() {
    let upstream = Upstream::default();
    let service = PolicyLayer::from_engine(Engine::with_counters(policy(), DownStore))
        .layer(upstream.clone());
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "write"}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo"}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "write"}},
    ]);
    let body = body_json(service.oneshot(post(batch)).await.unwrap().into_body()).await;
    let unavailable =
        "[POLICY DENIED] Rate-limit state is unavailable, the call was not run; try again in 1s.";
    assert_eq!(body[0]["result"]["content"][0]["text"], unavailable);
    assert_eq!(
        body[0]["result"]["_meta"]["tower-mcp-policy/denial"]["rule"],
        "(counter store)"
    );
    assert_eq!(
        body[1]["error"]["code"], -32051,
        "echo needed no counter: not executed"
    );
    assert_eq!(body[2]["result"]["content"][0]["text"], unavailable);
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_decision_is_a_response_extension_for_outer_layers() {
    use tower_mcp_policy::layer::Outcome;
    let outcome = |response: &Response<_>| {
        let outcome: &Outcome = response.extensions().get().expect("an outcome");
        let kind = match outcome {
            Outcome::Forwarded => "forwarded",
            Outcome::Denied(_) => "denied",
            Outcome::WouldDeny(_) => "would_deny",
            Outcome::Rejected => "rejected",
            Outcome::NotJudged => "not_judged",
            _ => "other",
        };
        let rules = outcome.denials().iter().map(|d| d.rule().to_owned());
        (kind, rules.collect::<Vec<_>>())
    };
    let service = layer().layer(Upstream::default());
    let send = |request| service.clone().oneshot(request);

    let forwarded = send(post(call("echo", json!({})))).await.unwrap();
    assert_eq!(outcome(&forwarded), ("forwarded", vec![]));
    let denied = send(post(call("transfer", json!({"amount": 5000}))))
        .await
        .unwrap();
    assert_eq!(
        outcome(&denied),
        ("denied", vec!["/tools/transfer/deny_if/0".to_owned()])
    );
    let broken = Request::post("/mcp")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    assert_eq!(outcome(&send(broken).await.unwrap()), ("rejected", vec![]));
    let get = Request::get("/mcp").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(outcome(&send(get).await.unwrap()), ("not_judged", vec![]));

    let monitor = layer()
        .mode(tower_mcp_policy::Mode::Monitor)
        .layer(Upstream::default());
    let would = monitor
        .oneshot(post(call("transfer", json!({"amount": 5000}))))
        .await
        .unwrap();
    assert_eq!(
        outcome(&would),
        ("would_deny", vec!["/tools/transfer/deny_if/0".to_owned()])
    );
}

#[tokio::test]
async fn compression_survives_where_no_tool_list_can_be_hidden() {
    // Under a policy that hides nothing, a tools/call keeps the client's
    // Accept-Encoding, and its compressed answer passes.
    let seen = Seen::default();
    let upstream = scripted(
        &seen,
        Some("text/event-stream"),
        Some("gzip"),
        "\x1f\u{8b}compressed",
    );
    let mut request = post(call("echo", json!({})));
    request
        .headers_mut()
        .insert("accept-encoding", "gzip, br".parse().unwrap());
    let nothing_hidden: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let service = PolicyLayer::with_clock(nothing_hidden, FakeClock::new()).layer(upstream);
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(seen.lock().unwrap()[0]["accept-encoding"], "gzip, br");

    // Under one that hides tools, any answer may carry a tool list (a server may answer
    // one request with another's result): every request asks for identity, and a
    // compressed answer is refused rather than passed unread.
    let seen = Seen::default();
    let upstream = scripted(
        &seen,
        Some("text/event-stream"),
        Some("gzip"),
        "\x1f\u{8b}compressed",
    );
    let mut request = post(call("echo", json!({})));
    request
        .headers_mut()
        .insert("accept-encoding", "gzip, br".parse().unwrap());
    let response = layer().layer(upstream).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(seen.lock().unwrap()[0]["accept-encoding"], "identity");

    // A GET stream may replay a tool list: it asks for identity.
    let seen = Seen::default();
    let upstream = scripted(&seen, Some("text/event-stream"), None, "");
    let get = Request::get("/mcp")
        .header("accept-encoding", "gzip")
        .body(Full::new(Bytes::new()))
        .unwrap();
    layer().layer(upstream).oneshot(get).await.unwrap();
    assert_eq!(seen.lock().unwrap()[0]["accept-encoding"], "identity");
}

/// On MCP 2026-07-28 lists are cacheable (SEP-2549): one the layer filtered is marked
/// `cacheScope: "private"` (a `ttlMs` the server set is kept), so a shared cache cannot
/// hand one caller's list to another. Earlier revisions get no new field.
#[tokio::test]
async fn a_filtered_list_is_private_on_the_revision_that_caches_lists() {
    let list = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},{"name":"delete_all"}],"ttlMs":60000,"cacheScope":"shared"}}"#;
    let unfiltered = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"}],"ttlMs":60000,"cacheScope":"shared"}}"#;
    for (version, answer, private) in [
        ("2026-07-28", list, true),
        ("2025-11-25", list, false),
        ("2026-07-28", unfiltered, false),
    ] {
        let upstream = tower::service_fn(move |_: Request<PolicyBody>| {
            std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
                Bytes::from_static(answer.as_bytes()),
            ))))
        });
        let mut request = post(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
        request
            .headers_mut()
            .insert("mcp-protocol-version", version.parse().unwrap());
        let response = layer().layer(upstream).oneshot(request).await.unwrap();
        let body = body_json(response.into_body()).await;
        let result = &body["result"];
        assert!(!body.to_string().contains("delete_all"), "{body}");
        assert_eq!(result["ttlMs"], 60000, "{body}");
        let scope = if private { "private" } else { "shared" };
        assert_eq!(result["cacheScope"], scope, "{version}: {body}");
    }
}

/// MCP 2026-07-28: `server/discover` passes untouched, and a `subscriptions/listen`
/// stream (which replaces the GET stream) is filtered like any answer: a notification
/// passes byte for byte, a tool list in it loses its hidden tools.
#[tokio::test]
async fn discovery_passes_and_subscription_streams_are_filtered() {
    let discovered = r#"{"jsonrpc":"2.0","id":1,"result":{"supportedVersions":["2026-07-28"],"capabilities":{"tools":{"listChanged":true}},"serverInfo":{"name":"s","version":"1"}}}"#;
    let seen = Seen::default();
    let upstream = scripted(&seen, Some("application/json"), None, discovered);
    let mut request =
        post(json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}}));
    request
        .headers_mut()
        .insert("mcp-protocol-version", "2026-07-28".parse().unwrap());
    let response = layer().layer(upstream).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, discovered.as_bytes());
    assert_eq!(seen.lock().unwrap().len(), 1, "the server answered it");

    let notification = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n";
    let stream: &'static str = Box::leak(
        format!(
            "{notification}event: message\ndata: {}\n\n",
            r#"{"jsonrpc":"2.0","id":9,"result":{"tools":[{"name":"echo"},{"name":"delete_all"}]}}"#
        )
        .into_boxed_str(),
    );
    let seen = Seen::default();
    let upstream = scripted(&seen, Some("text/event-stream"), None, stream);
    let mut request = post(
        json!({"jsonrpc": "2.0", "id": 2, "method": "subscriptions/listen",
        "params": {"subscriptions": {"toolsListChanged": true}}}),
    );
    request
        .headers_mut()
        .insert("mcp-protocol-version", "2026-07-28".parse().unwrap());
    let response = layer().layer(upstream).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.starts_with(notification), "{text}");
    assert!(text.contains(r#""name":"echo""#), "{text}");
    assert!(!text.contains("delete_all"), "{text}");
    assert_eq!(seen.lock().unwrap()[0]["accept-encoding"], "identity");
}

/// Elicitation (MCP 2025-06-18 on): the client's answer to a server's
/// `elicitation/create` is a JSON-RPC response, not a call: it reaches the server and
/// charges nothing, so the call that asked is charged once, when it was made.
#[tokio::test]
async fn a_clients_answer_to_an_elicitation_passes_and_charges_nothing() {
    let upstream = Upstream::default();
    let service = layer().layer(upstream.clone());
    let first = service
        .clone()
        .oneshot(post(call("write", json!({}))))
        .await
        .unwrap();
    assert_eq!(body_json(first.into_body()).await, json!({"ok": true}));
    let answer = json!({"jsonrpc": "2.0", "id": "elicit-1",
        "result": {"action": "accept", "content": {"confirm": true}}});
    let response = service.clone().oneshot(post(answer)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response.into_body()).await, json!({"ok": true}));
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 2);
    // `write` allows one call a minute: the answer did not take it, the first call did.
    let second = service
        .oneshot(post(call("write", json!({}))))
        .await
        .unwrap();
    let body = body_json(second.into_body()).await;
    assert_eq!(body["result"]["isError"], true, "{body}");
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 2);
}

/// `list_only_allowed`: under `default: deny`, a tool without a rule is left out of
/// lists too (an agent would only be refused), while tools with rules stay, conditions
/// and limits included. Off by default.
#[tokio::test]
async fn lists_can_keep_only_the_tools_the_policy_may_allow() {
    let list = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},{"name":"write"},{"name":"transfer"},{"name":"delete_all"},{"name":"unruled"}]}}"#;
    let names = |only: bool| async move {
        let seen = Seen::default();
        let upstream = scripted(&seen, Some("application/json"), None, list);
        let request = post(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
        let service = layer().list_only_allowed(only).layer(upstream);
        let body = body_json(service.oneshot(request).await.unwrap().into_body()).await;
        let names: Vec<String> = body["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        names
    };
    assert_eq!(names(false).await, ["echo", "write", "transfer", "unruled"]);
    assert_eq!(names(true).await, ["echo", "write", "transfer"]);
    // A call to the unlisted tool is refused as before.
    let service = layer().list_only_allowed(true).layer(Upstream::default());
    let answer = service
        .oneshot(post(call("unruled", json!({}))))
        .await
        .unwrap();
    let body = body_json(answer.into_body()).await;
    assert_eq!(body["result"]["isError"], true, "{body}");
}
