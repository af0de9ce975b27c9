//! Hardening (oneshot): places where the layer and another component could read the same
//! bytes differently. Every bad input checks the answer and that the tool never ran.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt};
use tower_mcp_policy::FakeClock;
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::{Policy, PolicyLayer, counter::MemoryCounters};

type TestLayer = PolicyLayer<MemoryCounters>;

fn layer(policy: &str) -> TestLayer {
    let policy: Policy = policy.parse().unwrap();
    PolicyLayer::with_clock(Arc::new(policy), FakeClock::new())
}

/// The future of an upstream that answers at once.
type Answer<B> = std::future::Ready<Result<Response<B>, Infallible>>;

/// An inner service that answers at once with a body of type `B`.
trait Upstream<B>:
    Service<Request<PolicyBody>, Response = Response<B>, Error = Infallible, Future = Answer<B>>
    + Clone
    + Send
    + 'static
{
}

impl<T, B> Upstream<B> for T where
    T: Service<Request<PolicyBody>, Response = Response<B>, Error = Infallible, Future = Answer<B>>
        + Clone
        + Send
        + 'static
{
}

/// An upstream that counts the requests it runs and answers `{"ok":true}`.
fn upstream(runs: Arc<AtomicUsize>) -> impl Upstream<Full<Bytes>> {
    tower::service_fn(move |_request: Request<PolicyBody>| {
        runs.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
        )))))
    })
}

fn post(body: &str) -> Request<Full<Bytes>> {
    Request::post("/mcp")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

fn tool_call(tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
        .to_string()
}

async fn body_json<B: Body<Data = Bytes>>(body: B) -> Value
where
    B::Error: std::fmt::Debug,
{
    serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap()
}

fn is_denied(answer: &Value) -> bool {
    answer["result"]["isError"] == json!(true)
}

const ONE_WRITE: &str = r#"{"version":"1","default":"deny","tools":{"write":{
    "limits":[{"counter":"w","window":"minute","max":1}]}}}"#;

#[tokio::test]
async fn every_spelling_of_one_credential_shares_one_budget() {
    let runs = Arc::new(AtomicUsize::new(0));
    let service = layer(ONE_WRITE).layer(upstream(runs.clone()));
    let send = |authorization: &'static [u8]| {
        let mut request = post(&tool_call("write"));
        request.headers_mut().insert(
            "authorization",
            http::HeaderValue::from_bytes(authorization).unwrap(),
        );
        service.clone().oneshot(request)
    };
    let first = send(b"Bearer T0k3n").await.unwrap();
    assert!(!is_denied(&body_json(first.into_body()).await));
    for spelling in [
        &b"bearer T0k3n"[..],
        b"BEARER T0k3n",
        b"Bearer  T0k3n",
        b"Bearer\tT0k3n",
        b"Bearer \t T0k3n",
        b"Bearer T0k3n ",
    ] {
        let answer = body_json(send(spelling).await.unwrap().into_body()).await;
        assert!(
            is_denied(&answer),
            "{:?} is the same caller: {answer}",
            String::from_utf8_lossy(spelling)
        );
        assert!(
            answer["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("Rate limit of 1 per minute")
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the tool ran once");
    // Another token is another caller.
    let other = send(b"Bearer t0k3n").await.unwrap();
    assert!(!is_denied(&body_json(other.into_body()).await));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

type Frames =
    futures::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, Infallible>>>;

/// An upstream that answers with `chunks` as an SSE body, one frame each.
fn sse_upstream(chunks: Vec<Bytes>) -> impl Upstream<http_body_util::StreamBody<Frames>> {
    tower::service_fn(move |_request: Request<PolicyBody>| {
        let frames: Vec<_> = chunks
            .iter()
            .map(|c| Ok(http_body::Frame::data(c.clone())))
            .collect();
        let mut response = Response::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )));
        response.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("text/event-stream"),
        );
        std::future::ready(Ok(response))
    })
}

#[tokio::test]
async fn a_multi_megabyte_tool_list_event_is_filtered_however_it_is_chunked() {
    // About 2.5 MiB of tools in one event; one of them is hidden.
    let mut tools: Vec<Value> = (0..20_000)
        .map(|i| json!({"name": format!("tool_{i:05}"), "description": "x".repeat(100)}))
        .collect();
    tools.insert(
        12_345,
        json!({"name": "delete_everything", "description": "boom"}),
    );
    let message = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}});
    let event = format!("id: 9\nevent: message\ndata: {message}\n\n");
    assert!(event.len() > 2 << 20);
    let policy = r#"{"version":"1","default":"allow","hide":["delete_*"]}"#;
    for chunk in [1024, 1] {
        let chunks: Vec<Bytes> = event
            .as_bytes()
            .chunks(chunk)
            .map(Bytes::copy_from_slice)
            .collect();
        let service = layer(policy).layer(sse_upstream(chunks));
        let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        let response = service.oneshot(post(list)).await.unwrap();
        let out = response.into_body().collect().await.unwrap().to_bytes();
        let out = std::str::from_utf8(&out).unwrap();
        assert!(
            out.starts_with("id: 9\nevent: message\ndata: "),
            "chunk {chunk}"
        );
        assert!(out.ends_with("\n\n"), "chunk {chunk}");
        let data = out.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let filtered: Value = serde_json::from_str(data).unwrap();
        let names: Vec<&str> = filtered["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 20_000, "chunk {chunk}");
        assert!(!names.contains(&"delete_everything"), "chunk {chunk}");
        assert_eq!(names[12_345], "tool_12345");
    }
}

/// A body that sends `first` and then stalls: it never ends.
#[cfg(feature = "tokio")]
fn stalled_body(
    first: &'static [u8],
) -> http_body_util::StreamBody<
    impl futures::Stream<Item = Result<http_body::Frame<Bytes>, Infallible>>,
> {
    use futures::StreamExt;
    let frames = futures::stream::iter([Ok(http_body::Frame::data(Bytes::from_static(first)))])
        .chain(futures::stream::pending());
    http_body_util::StreamBody::new(frames)
}

#[cfg(feature = "tokio")]
#[tokio::test(start_paused = true)]
async fn a_body_that_does_not_arrive_in_time_is_answered_408_and_never_forwarded() {
    let runs = Arc::new(AtomicUsize::new(0));
    let service = layer(ONE_WRITE)
        .body_read_timeout(std::time::Duration::from_secs(10))
        .layer(upstream(runs.clone()));
    let request = Request::post("/mcp")
        .header("content-type", "application/json")
        .header("content-length", "4000000")
        .body(stalled_body(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","#,
        ))
        .unwrap();
    let started = tokio::time::Instant::now();
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(started.elapsed(), std::time::Duration::from_secs(10));
    assert_eq!(response.status(), http::StatusCode::REQUEST_TIMEOUT);
    let answer = body_json(response.into_body()).await;
    assert_eq!(answer["error"]["code"], -32600);
    assert_eq!(
        answer["error"]["message"],
        "the request body did not arrive within 10s (received 46 bytes)"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing was forwarded");

    // A body that arrives in time is judged as usual.
    let response = service.oneshot(post(&tool_call("write"))).await.unwrap();
    assert!(!is_denied(&body_json(response.into_body()).await));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn numbers_are_compared_exactly_as_written() {
    let policy = r#"{"version":"1","default":"deny","tools":{
        "pay":{"deny_if":[{"conditions":[{"path":"args.amount","op":"gt","value":100}],"on_deny":"Over 100."}]},
        "wire":{"require":[{"conditions":[{"path":"args.amount","op":"lte","value":1000}],"on_deny":"At most 1000."}]},
        "tip":{"deny_if":[{"conditions":[{"path":"args.rate","op":"gt","value":0.1}],"on_deny":"Over 0.1."}]},
        "spend":{"limits":[{"counter":"budget","window":"day","max":3,"increment_from":"args.units"}]}}}"#;
    let runs = Arc::new(AtomicUsize::new(0));
    let service = layer(policy).layer(upstream(runs.clone()));
    // Bodies written by hand: serde_json would round these numbers when building them.
    let send = |tool: &str, args: &str| {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#
        );
        service.clone().oneshot(post(&body))
    };
    let text = |answer: &Value| {
        answer["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    for (tool, args, message) in [
        ("pay", r#"{"amount":100.00000000000001}"#, "Over 100."),
        (
            "pay",
            r#"{"amount":1000000000000000000000000.5e-22}"#,
            "Over 100.",
        ),
        (
            "wire",
            r#"{"amount":1000.0000000000000001}"#,
            "At most 1000.",
        ),
        ("tip", r#"{"rate":0.10000000000000000001}"#, "Over 0.1."),
    ] {
        let answer = body_json(send(tool, args).await.unwrap().into_body()).await;
        assert!(is_denied(&answer), "{tool} {args}: {answer}");
        assert_eq!(
            text(&answer),
            format!("[POLICY DENIED] {message}"),
            "{tool} {args}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no denied call ran");
    for (tool, args) in [
        ("pay", r#"{"amount":100.0}"#),
        ("pay", r#"{"amount":99.99999999999999999999}"#),
        ("wire", r#"{"amount":1e3}"#),
        ("tip", r#"{"rate":0.1}"#),
    ] {
        let answer = body_json(send(tool, args).await.unwrap().into_body()).await;
        assert!(!is_denied(&answer), "{tool} {args}: {answer}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    // A cost is the exact value rounded up: 2.0000000000000000001 units cost 3 of 3.
    let answer = body_json(
        send("spend", r#"{"units":2.0000000000000000001}"#)
            .await
            .unwrap()
            .into_body(),
    )
    .await;
    assert!(!is_denied(&answer), "{answer}");
    let answer = body_json(
        send("spend", r#"{"units":0.0000000000000000001}"#)
            .await
            .unwrap()
            .into_body(),
    )
    .await;
    assert!(is_denied(&answer), "the budget of 3 is spent: {answer}");
    assert_eq!(runs.load(Ordering::SeqCst), 5);
}

/// A request id or method holding a line break, a control character or a character
/// that reorders text would reach the server's logs as it is (rmcp logs ids raw): such
/// requests are refused, and nothing runs.
#[tokio::test]
async fn ids_and_methods_that_could_forge_a_log_line_are_refused() {
    let runs = Arc::new(AtomicUsize::new(0));
    let service = layer(r#"{"version":"1","default":"allow"}"#).layer(upstream(runs.clone()));
    let forged = "1\n2026-11-26T00:00:00Z  INFO rmcp: allowed";
    for (id, method) in [
        (json!(forged), "tools/call"),
        (json!("a\u{1b}[31m"), "tools/call"),
        (json!("a\u{2028}b"), "tools/call"),
        (json!("a\u{202e}b"), "tools/call"),
        (json!("a\u{85}b"), "tools/call"),
        (json!(7), "tools/call\n"),
        (json!(7), "ping\u{2029}"),
    ] {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method,
            "params": {"name": "echo", "arguments": {}}});
        let response = service
            .clone()
            .oneshot(post(&body.to_string()))
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let answer = body_json(response.into_body()).await;
        assert_eq!(answer["error"]["code"], -32600, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("control character"), "{body}: {message}");
    }
    // A notification and a response are read the same way.
    let notification = json!({"jsonrpc": "2.0", "method": "notifications/x\r"});
    let response = json!({"jsonrpc": "2.0", "id": "\u{7f}", "result": {}});
    for body in [notification, response] {
        let answer = service
            .clone()
            .oneshot(post(&body.to_string()))
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{body}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing ran");
    // Plain text, and non-ASCII letters, pass.
    let body = json!({"jsonrpc": "2.0", "id": "réq-1 ✓", "method": "tools/call",
        "params": {"name": "echo", "arguments": {}}});
    let response = service
        .clone()
        .oneshot(post(&body.to_string()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// An upstream whose answers are SSE streams held open until the test sends their bytes
/// (one sender per request, handed to the test in order); it counts the requests.
fn held_upstream(
    runs: Arc<AtomicUsize>,
    senders: Arc<std::sync::Mutex<Vec<http_body_util::channel::Sender<Bytes, Infallible>>>>,
) -> impl Upstream<http_body_util::channel::Channel<Bytes, Infallible>> {
    tower::service_fn(move |_request: Request<PolicyBody>| {
        runs.fetch_add(1, Ordering::SeqCst);
        let (sender, body) = http_body_util::channel::Channel::new(4);
        senders.lock().unwrap().push(sender);
        let mut response = Response::new(body);
        response.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("text/event-stream"),
        );
        std::future::ready(Ok(response))
    })
}

/// JSON-RPC forbids reusing an id while its request is pending, and a server may give
/// an answer to whichever open request of the session last used its id: a request
/// whose id is in flight in its session is refused, as is a batch that repeats an id. (A `tools/list` and a `ping` sent at once with one id put the unfiltered list on
/// the ping's stream; a failing message of a batch refunded the call sharing its id.)
#[tokio::test]
async fn an_id_in_flight_or_repeated_in_a_batch_is_refused() {
    let runs = Arc::new(AtomicUsize::new(0));
    let senders = Arc::new(std::sync::Mutex::new(Vec::new()));
    let policy = r#"{"version":"1","default":"allow","hide":["secret_*"],
        "tools":{"write":{"limits":[{"counter":"w","window":"minute","max":1}]}}}"#;
    let service = layer(policy).layer(held_upstream(runs.clone(), senders.clone()));
    // Each caller in a session of its own.
    let as_caller = |body: &str, who: &str| {
        let mut request = post(body);
        let value = http::HeaderValue::from_str(&format!("Bearer {who}")).unwrap();
        request.headers_mut().insert("authorization", value);
        let session = http::HeaderValue::from_str(&format!("session-of-{who}")).unwrap();
        request.headers_mut().insert("mcp-session-id", session);
        request
    };
    let list = r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#;
    let ping = r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#;

    // The list's answer is held open: id 7 is in flight for alice.
    let held = service
        .clone()
        .oneshot(as_caller(list, "alice"))
        .await
        .unwrap();
    let refused = service
        .clone()
        .oneshot(as_caller(ping, "alice"))
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let answer = body_json(refused.into_body()).await;
    assert_eq!(answer["error"]["code"], -32600, "{answer}");
    assert_eq!(answer["id"], 7, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in flight"),
        "{answer}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the ping never reached the server"
    );
    // Another session's id 7 is its own, and so is a request without a session.
    let other = service
        .clone()
        .oneshot(as_caller(ping, "bob"))
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    let sessionless = service.clone().oneshot(post(ping)).await.unwrap();
    assert_eq!(sessionless.status(), 200);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    // Once the answer has been delivered, the id is free again.
    drop(senders.lock().unwrap().remove(0));
    held.into_body().collect().await.unwrap();
    let again = service
        .clone()
        .oneshot(as_caller(ping, "alice"))
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(runs.load(Ordering::SeqCst), 4);

    // A batch that repeats an id: refused whole, nothing charged, nothing ran.
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"write"}},
                    {"jsonrpc":"2.0","id":1,"method":"no/such/method"}]"#;
    let refused = service
        .clone()
        .oneshot(as_caller(batch, "carol"))
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let answer = body_json(refused.into_body()).await;
    assert_eq!(answer["error"]["code"], -32600, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("twice"),
        "{answer}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 4, "nothing ran");
    let write = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"write"}}"#;
    let allowed = service
        .clone()
        .oneshot(as_caller(write, "carol"))
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200, "carol's budget was not charged");
}

/// Whatever a POST asked for, an answer that carries a tool list has its hidden tools
/// removed: a server may answer one request with another's result.
#[tokio::test]
async fn every_answer_that_carries_a_tool_list_is_filtered() {
    let list = r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"a"},{"name":"secret_b"}]}}"#;
    let policy = r#"{"version":"1","default":"allow","hide":["secret_*"]}"#;
    let ping = r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#;
    let call = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo"}}"#;
    for request in [ping, call] {
        let json = tower::service_fn(move |_: Request<PolicyBody>| {
            std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
                Bytes::from_static(list.as_bytes()),
            ))))
        });
        let response = layer(policy)
            .layer(json)
            .oneshot(post(request))
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains("\"a\"") && !body.contains("secret_b"),
            "{request}: {body}"
        );

        let event = Bytes::from(format!("event: message\ndata: {list}\n\n"));
        let service = layer(policy).layer(sse_upstream(vec![event]));
        let response = service.oneshot(post(request)).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains("\"a\"") && !body.contains("secret_b"),
            "{request}: {body}"
        );
    }
}

/// A filtered event stream buffers one event at a time, and no more of it than
/// `max_filtered_response_size`: past that, the event is replaced by a JSON-RPC error,
/// the stream ends, and the rest is never waited for.
#[tokio::test]
async fn a_filtered_event_larger_than_the_limit_is_withheld_and_ends_the_stream() {
    use futures::StreamExt;
    let policy = r#"{"version":"1","default":"allow","hide":["secret_*"]}"#;
    let first = Bytes::from_static(b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1}\n\n");
    // An event that never ends: 64 KiB of it, then the server stalls.
    let huge = Bytes::from(format!(
        "data: {{\"tools\":[{}",
        "{\"name\":\"x\"},".repeat(5000)
    ));
    let frames = futures::stream::iter(
        [first.clone(), huge].map(|b| Ok::<_, Infallible>(http_body::Frame::data(b))),
    )
    .chain(futures::stream::pending());
    let body = http_body_util::StreamBody::new(frames);
    let body = Arc::new(std::sync::Mutex::new(Some(body)));
    let upstream = tower::service_fn(move |_: Request<PolicyBody>| {
        let mut response = Response::new(body.lock().unwrap().take().unwrap());
        response.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("text/event-stream"),
        );
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let service = layer(policy)
        .max_filtered_response_size(16 * 1024)
        .layer(upstream);
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let response = service.oneshot(post(list)).await.unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        response.into_body().collect(),
    )
    .await
    .expect("the stream ends without waiting for the rest of the event")
    .unwrap()
    .to_bytes();
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with(std::str::from_utf8(&first).unwrap()),
        "{out}"
    );
    let last = out
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let error: Value = serde_json::from_str(last).unwrap();
    assert_eq!(error["error"]["code"], -32603, "{out}");
    assert!(
        out.len() < 2048,
        "the big event is not passed on: {} bytes",
        out.len()
    );
}

/// Servers decode Basic credentials leniently (padding, line breaks, non-canonical
/// trailing bits): every Base64 spelling of one user and password is one caller.
#[tokio::test]
async fn every_base64_spelling_of_a_basic_credential_shares_one_budget() {
    let runs = Arc::new(AtomicUsize::new(0));
    let service = layer(ONE_WRITE).layer(upstream(runs.clone()));
    let send = |authorization: &'static [u8]| {
        let mut request = post(&tool_call("write"));
        request.headers_mut().insert(
            "authorization",
            http::HeaderValue::from_bytes(authorization).unwrap(),
        );
        service.clone().oneshot(request)
    };
    // "alice:pw" is YWxpY2U6cHc= in canonical Base64.
    let first = send(b"Basic YWxpY2U6cHc=").await.unwrap();
    assert!(!is_denied(&body_json(first.into_body()).await));
    for spelling in [
        &b"basic YWxpY2U6cHc="[..],
        b"Basic YWxpY2U6cHc",
        b"Basic YWxpY2U6cHc==",
        b"Basic YWxp Y2U6 cHc=",
        b"Basic YWxpY2U6cHd=",
    ] {
        let answer = body_json(send(spelling).await.unwrap().into_body()).await;
        assert!(
            is_denied(&answer),
            "{:?} is the same caller: {answer}",
            String::from_utf8_lossy(spelling)
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the tool ran once");
    // Another password is another caller; an undecodable value is hashed as it is.
    let other = send(b"Basic YWxpY2U6cHg=").await.unwrap();
    assert!(!is_denied(&body_json(other.into_body()).await));
    let broken = send(b"Basic !!!").await.unwrap();
    assert!(!is_denied(&body_json(broken.into_body()).await));
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

/// One caller's huge batch must not cost everyone: a batch holds at most
/// `max_batch_size` messages and a request at most `max_charges` charges (Redis runs a
/// request's charges in one script call, shared with other callers' requests).
#[tokio::test]
async fn batches_and_charges_per_request_are_capped() {
    let runs = Arc::new(AtomicUsize::new(0));
    let policy = r#"{"version":"1","default":"allow",
        "all_tools":{"limits":[{"counter":"all","window":"day","max":1000000}]},
        "tools":{"write":{"limits":[{"counter":"w","window":"day","max":1000000}]}}}"#;
    let batch = |n: usize, tool: &str| {
        let calls: Vec<Value> = (0..n)
            .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": tool}}))
            .collect();
        post(&Value::Array(calls).to_string())
    };
    let service = layer(policy).layer(upstream(runs.clone()));
    let refused = service.clone().oneshot(batch(101, "read")).await.unwrap();
    assert_eq!(refused.status(), 400);
    let answer = body_json(refused.into_body()).await;
    assert_eq!(answer["error"]["code"], -32600, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("101 messages"),
        "{answer}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let passed = service.clone().oneshot(batch(100, "read")).await.unwrap();
    assert_eq!(passed.status(), 200);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Two charges per `write`: 3 writes are 6 charges, over a cap of 5.
    let service = layer(policy)
        .max_batch_size(1000)
        .max_charges(5)
        .layer(upstream(runs.clone()));
    let refused = service.clone().oneshot(batch(3, "write")).await.unwrap();
    assert_eq!(refused.status(), 400);
    let answer = body_json(refused.into_body()).await;
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("6 charges"),
        "{answer}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "nothing ran");
    let passed = service.clone().oneshot(batch(2, "write")).await.unwrap();
    assert_eq!(passed.status(), 200);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// SEP-2243: an `Mcp-Param-*` header mirrors the tool argument its schema names
/// (`x-mcp-header`), and a proxy behind the layer may route on it. Each one must say
/// what the body says; a tool whose schema the layer never saw listed cannot be
/// checked, so such a call is refused until the tools are listed.
#[tokio::test]
async fn mcp_param_headers_must_match_the_arguments_they_name() {
    let runs = Arc::new(AtomicUsize::new(0));
    let list = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"deploy","inputSchema":{
        "type":"object","properties":{"region":{"type":"string","x-mcp-header":"Region"},
        "replicas":{"type":"integer","x-mcp-header":"Replicas"}}}}]}}"#;
    let upstream = {
        let runs = runs.clone();
        tower::service_fn(move |request: Request<PolicyBody>| {
            let lists = request
                .headers()
                .get("mcp-method")
                .is_some_and(|m| m == "tools/list");
            if !lists {
                runs.fetch_add(1, Ordering::SeqCst);
            }
            let body = if lists {
                list
            } else {
                r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#
            };
            std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
                Bytes::from_static(body.as_bytes()),
            ))))
        })
    };
    let service = layer(r#"{"version":"1","default":"allow"}"#).layer(upstream);
    let deploy = |headers: &[(&'static str, &'static str)]| {
        let body = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"deploy",
            "arguments":{"region":"eu-west","replicas":3}}}"#;
        let mut request = post(body);
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, http::HeaderValue::from_static(value));
        }
        request
    };
    let refused = |response: Response<_>| async move {
        assert_eq!(response.status(), 400);
        let answer = body_json(response.into_body()).await;
        assert_eq!(answer["error"]["code"], -32020, "{answer}");
        answer["error"]["message"].as_str().unwrap().to_owned()
    };

    // Before any tools/list, a header cannot be checked.
    let response = service
        .clone()
        .oneshot(deploy(&[("mcp-param-region", "eu-west")]))
        .await
        .unwrap();
    assert!(refused(response).await.contains("list the tools first"));
    let mut list_request = post(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    list_request
        .headers_mut()
        .insert("mcp-method", http::HeaderValue::from_static("tools/list"));
    let listed = service.clone().oneshot(list_request).await.unwrap();
    let listed = body_json(listed.into_body()).await;
    assert_eq!(
        listed["result"]["tools"][0]["name"], "deploy",
        "the list passes unchanged"
    );

    let ok = service
        .clone()
        .oneshot(deploy(&[
            ("mcp-param-region", "eu-west"),
            ("mcp-param-replicas", "3"),
        ]))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    for headers in [
        &[("mcp-param-region", "us-east")][..],
        &[("mcp-param-replicas", "30")],
        &[("mcp-param-region", "=?base64?dXMtZWFzdA==?=")],
        &[("mcp-param-zone", "a")],
    ] {
        let response = service.clone().oneshot(deploy(headers)).await.unwrap();
        let message = refused(response).await;
        assert!(message.starts_with("Mcp-Param-"), "{headers:?}: {message}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "no mismatched call ran");
}
