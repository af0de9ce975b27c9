//! Refunds (oneshot, in-memory counters): a charged call the server did not run gives
//! its charges back; a call that ran, even with `isError: true`, does not.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_mcp_policy::FakeClock;
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::{Policy, PolicyLayer};

const POLICY: &str = r#"{"version":"1","default":"deny","tools":{
    "write":{"limits":[{"counter":"w","window":"minute","max":1}]},
    "read":{"limits":[{"counter":"r","window":"minute","max":1}]}}}"#;

/// What the test server answers to every request.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Result,
    ToolError,
    RpcError,
    SseRpcError,
    SseResult,
    Status(u16),
    Fail,
    /// A batch of two: the first call fails, the second runs.
    BatchFirstFails,
    /// MCP 2026-07-28: the tool needs input first (an `InputRequiredResult`); it did
    /// not run, and the client retries with the answers.
    InputRequired,
}

fn body_for(answer: Answer) -> (&'static str, String) {
    let result = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
    let error = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"backend down"}}"#;
    match answer {
        Answer::Result => ("application/json", result.to_owned()),
        Answer::ToolError => (
            "application/json",
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}"#.to_owned(),
        ),
        Answer::RpcError => ("application/json", error.to_owned()),
        Answer::SseRpcError => (
            "text/event-stream",
            format!("event: message\ndata: {error}\n\n"),
        ),
        Answer::SseResult => (
            "text/event-stream",
            format!("event: message\ndata: {result}\n\n"),
        ),
        Answer::BatchFirstFails => (
            "application/json",
            r#"[{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"no"}},
                {"jsonrpc":"2.0","id":2,"result":{"content":[]}}]"#
                .to_owned(),
        ),
        Answer::InputRequired => (
            "application/json",
            r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required",
                "inputRequests":{"confirm":{"method":"elicitation/create","params":{
                    "message":"Really?","requestedSchema":{"type":"object","properties":{}}}}},
                "requestState":"opaque"}}"#
                .to_owned(),
        ),
        Answer::Status(_) | Answer::Fail => ("text/plain", String::new()),
    }
}

struct Server {
    answer: Arc<std::sync::Mutex<Answer>>,
    runs: Arc<AtomicUsize>,
}

type Service = tower::util::BoxCloneService<
    Request<Full<Bytes>>,
    Response<tower_mcp_policy::layer::ResponseBody<Full<Bytes>>>,
    std::io::Error,
>;

fn service() -> (Service, Server) {
    let answer = Arc::new(std::sync::Mutex::new(Answer::Result));
    let runs = Arc::new(AtomicUsize::new(0));
    let (a, r) = (answer.clone(), runs.clone());
    let upstream = tower::service_fn(move |_: Request<PolicyBody>| {
        let answer = *a.lock().unwrap();
        r.fetch_add(1, Ordering::SeqCst);
        std::future::ready(match answer {
            Answer::Fail => Err(std::io::Error::other("connection reset")),
            Answer::Status(code) => {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::from_u16(code).unwrap();
                Ok(response)
            }
            other => {
                let (content_type, body) = body_for(other);
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response
                    .headers_mut()
                    .insert("content-type", content_type.parse().unwrap());
                Ok(response)
            }
        })
    });
    let policy: Policy = POLICY.parse().unwrap();
    let layer = PolicyLayer::with_clock(Arc::new(policy), FakeClock::new());
    let service = tower::util::BoxCloneService::new(layer.layer(upstream));
    (service, Server { answer, runs })
}

/// A call of `tool` without arguments.
fn call(tool: &str) -> Request<Full<Bytes>> {
    support::call(tool, json!({}))
}

/// Sends a call, reads the whole answer; true when the policy denied it.
async fn denied(service: &Service, request: Request<Full<Bytes>>) -> bool {
    match service.clone().oneshot(request).await {
        Err(_) => false,
        Ok(response) => {
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&bytes).contains("[POLICY DENIED]")
        }
    }
}

#[tokio::test]
async fn calls_the_server_did_not_run_are_refunded() {
    for answer in [
        Answer::RpcError,
        Answer::SseRpcError,
        Answer::Status(502),
        Answer::Status(503),
        Answer::Status(504),
        Answer::Fail,
    ] {
        let (service, server) = service();
        *server.answer.lock().unwrap() = answer;
        assert!(!denied(&service, call("write")).await, "{answer:?}");
        // The budget of one is still there: the server did not run the call.
        *server.answer.lock().unwrap() = Answer::Result;
        assert!(
            !denied(&service, call("write")).await,
            "{answer:?} was refunded"
        );
        assert!(
            denied(&service, call("write")).await,
            "{answer:?}: and only once"
        );
        assert_eq!(server.runs.load(Ordering::SeqCst), 2, "{answer:?}");
    }
}

#[tokio::test]
async fn calls_that_ran_are_not_refunded() {
    for answer in [
        Answer::Result,
        Answer::ToolError,
        Answer::SseResult,
        Answer::Status(500),
    ] {
        let (service, server) = service();
        *server.answer.lock().unwrap() = answer;
        assert!(!denied(&service, call("write")).await, "{answer:?}");
        assert!(
            denied(&service, call("write")).await,
            "{answer:?} ran: no refund"
        );
        assert_eq!(server.runs.load(Ordering::SeqCst), 1, "{answer:?}");
    }
}

#[tokio::test]
async fn in_a_batch_only_the_calls_answered_with_errors_are_refunded() {
    let (service, server) = service();
    *server.answer.lock().unwrap() = Answer::BatchFirstFails;
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "write"}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "read"}},
    ]);
    let request = Request::post("/mcp")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(batch.to_string())))
        .unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    let answer: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        answer[0]["error"]["code"], -32000,
        "the server's answer passes unchanged"
    );
    *server.answer.lock().unwrap() = Answer::Result;
    assert!(
        !denied(&service, call("write")).await,
        "write (id 1) failed: refunded"
    );
    assert!(
        denied(&service, call("read")).await,
        "read (id 2) ran: not refunded"
    );
}

/// A watched answer passes unchanged, so its length is the server's: the client gets a
/// Content-Length, not a chunked body.
#[tokio::test]
async fn a_watched_answer_keeps_its_exact_length() {
    use http_body::Body as _;
    let policy: Policy = POLICY.parse().unwrap();
    let server = tower::service_fn(|_: Request<PolicyBody>| async {
        let body = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
    });
    let service = PolicyLayer::with_clock(policy, FakeClock::new()).layer(server);
    let request = tower_mcp_policy::testing::tool_call("write", json!({}));
    let response = service.oneshot(request).await.unwrap();
    let length = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#.len() as u64;
    assert_eq!(response.body().size_hint().exact(), Some(length));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len() as u64, length);
}

/// hyper writes a sized body (`Content-Length`) and stops polling once the announced
/// length is written: the error answer is read for its refund all the same.
#[tokio::test]
async fn an_error_answer_with_a_content_length_is_refunded_without_a_last_poll() {
    use http_body::Body as _;
    let (service, server) = service();
    *server.answer.lock().unwrap() = Answer::RpcError;
    let response = service.clone().oneshot(call("write")).await.unwrap();
    let mut body = std::pin::pin!(response.into_body());
    let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx))
        .await
        .unwrap()
        .unwrap();
    let (_, error) = body_for(Answer::RpcError);
    assert_eq!(frame.into_data().unwrap(), error.as_bytes());
    assert!(
        body.is_end_stream(),
        "the length is reached: nothing more to poll"
    );
    // Like hyper, poll no more: the body is dropped here.
    *server.answer.lock().unwrap() = Answer::Result;
    assert!(
        !denied(&service, call("write")).await,
        "the error was refunded"
    );
    assert!(denied(&service, call("write")).await, "and only once");
}

/// MCP 2026-07-28's multi round-trip requests: a call answered with an
/// `InputRequiredResult` did not run, so it is refunded, and the retry that carries the
/// answers is judged and charged as any call. One logical call costs one charge
/// however many rounds of input it needs.
#[tokio::test]
async fn a_call_that_needs_input_costs_one_charge_however_many_rounds() {
    let (service, server) = service();
    *server.answer.lock().unwrap() = Answer::InputRequired;
    assert!(
        !denied(&service, call("write")).await,
        "round 1: input required"
    );
    assert!(
        !denied(&service, call("write")).await,
        "round 2: input required again"
    );
    *server.answer.lock().unwrap() = Answer::Result;
    assert!(
        !denied(&service, call("write")).await,
        "round 3: the call runs"
    );
    assert!(
        denied(&service, call("write")).await,
        "and it cost the one charge"
    );
    assert_eq!(server.runs.load(Ordering::SeqCst), 3);
}
