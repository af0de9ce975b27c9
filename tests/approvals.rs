//! `require_approval` through the layer (oneshot, in-memory): a call that needs a
//! person's approval is refused with a pending request until one is given through the
//! handle; the approval covers exactly one call of the same grant, tool and arguments.
//! Each test checks the answer and what the tool ran.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_mcp_policy::counter::CounterStore;
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::observe::{Event, Observer};
use tower_mcp_policy::testing::{self, Answer};
use tower_mcp_policy::{DenialKind, Mode, Policy, PolicyHandle, PolicyLayer};

const POLICY: &str = r#"{"version":"1","default":"deny","tools":{
    "get_price":{},
    "wire":{"require_approval":{"when":[{"conditions":[{"path":"args.amount","op":"gt","value":100}]}]}},
    "transfer":{
      "deny_if":[{"conditions":[{"path":"args.amount","op":"gt","value":10000}],"on_deny":"Too much."}],
      "limits":[{"counter":"transfers","window":"minute","max":2}],
      "require_approval":{
        "when":[{"conditions":[{"path":"args.amount","op":"gt","value":100}]}],
        "reason":"Transfers above 100 need a person's approval."}}}}"#;

/// The arguments of every call the tool server ran, in order.
type Ran = Arc<Mutex<Vec<Value>>>;

type Service = tower::util::BoxCloneService<Request<Full<Bytes>>, Response<Bytes>, String>;

/// A tool server behind the layer; every call it runs is recorded.
fn service<S: CounterStore>(layer: &PolicyLayer<S>) -> (Service, Ran) {
    behind(layer, |call, ran| {
        ran.lock()
            .unwrap()
            .push(call["params"]["arguments"].clone());
        json!({"content": [{"type": "text", "text": "ran"}]})
    })
}

/// A tool server behind the layer that answers each call (of a batch too) with the
/// result `answer` gives it, with what the server ran so far.
fn behind<S, F>(layer: &PolicyLayer<S>, answer: F) -> (Service, Ran)
where
    S: CounterStore,
    F: Fn(&Value, &Ran) -> Value + Clone + Send + Sync + 'static,
{
    let ran: Ran = Arc::default();
    let record = ran.clone();
    let server = tower::service_fn(move |request: Request<PolicyBody>| {
        let (record, answer) = (record.clone(), answer.clone());
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let message: Value = serde_json::from_slice(&body).unwrap();
            let batch = message.is_array();
            let calls: Vec<Value> = match message {
                Value::Array(items) => items,
                one => vec![one],
            };
            let mut answers: Vec<Value> = calls
                .iter()
                .map(|call| json!({"jsonrpc": "2.0", "id": call["id"], "result": answer(call, &record)}))
                .collect();
            let body = match batch {
                true => Value::Array(answers),
                false => answers.pop().unwrap(),
            };
            let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let inner = layer.layer(server);
    let service = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let inner = inner.clone();
        async move {
            let response = inner.oneshot(request).await.map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>(Response::from_parts(parts, bytes))
        }
    });
    (tower::util::BoxCloneService::new(service), ran)
}

/// The params of Alice's 2026-07-28 call of `transfer` with `args`, from a client
/// whose `elicitation` capability is `elicitation`.
fn params_2026(args: &Value, elicitation: Value) -> Value {
    json!({"name": "transfer", "arguments": args,
        "_meta": {"io.modelcontextprotocol/clientCapabilities": {"elicitation": elicitation}}})
}

/// `params` again, with the layer's approval `state` and the user's answer.
fn retried(mut params: Value, state: &str, approve: bool) -> Value {
    params["requestState"] = json!(state);
    params["inputResponses"] =
        json!({"mcp-policy/approval": {"action": "accept", "content": {"approve": approve}}});
    params
}

/// The call with `params`, as Alice, with its 2026-07-28 routing headers.
fn call_2026(params: Value) -> Request<Full<Bytes>> {
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": params});
    Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "transfer")
        .header("authorization", "Bearer alice")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The JSON answer to `request`.
async fn answer_of(service: &Service, request: Request<Full<Bytes>>) -> Value {
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    serde_json::from_slice(response.body()).unwrap()
}

fn layer() -> PolicyLayer {
    PolicyLayer::new(POLICY.parse::<Policy>().unwrap())
}

async fn call(service: &Service, credential: &str, tool: &str, args: Value) -> Answer {
    let request = testing::as_caller(testing::tool_call(tool, args), credential);
    let response = service.clone().oneshot(request).await.unwrap();
    testing::answer(response.map(Full::new)).await.unwrap()
}

/// The id of the only pending request.
async fn only_pending(handle: &PolicyHandle) -> String {
    let pending = handle.pending_approvals().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    pending[0]["id"].as_str().unwrap().to_owned()
}

fn denied(answer: &Answer) -> &tower_mcp_policy::Denial {
    match answer {
        Answer::Denied(denial) => denial,
        other => panic!("not denied: {other:?}"),
    }
}

#[tokio::test]
async fn an_approved_call_runs_once_with_exactly_those_arguments() {
    let layer = layer();
    let handle = layer.handle();
    let (service, ran) = service(&layer);

    let asked = call(
        &service,
        "Bearer alice",
        "transfer",
        json!({"amount": 500, "to": "bob"}),
    )
    .await;
    let denial = denied(&asked);
    assert_eq!(denial.kind(), DenialKind::Approval);
    assert_eq!(denial.rule(), "/tools/transfer/require_approval");
    let id = only_pending(&handle).await;
    assert!(
        denial
            .message()
            .starts_with("Transfers above 100 need a person's approval.")
            && denial
                .message()
                .contains(&format!("Approval {id} is pending")),
        "{denial}"
    );
    let pending = &handle.pending_approvals().await.unwrap()[0];
    assert_eq!(pending["tool"], "transfer");
    assert_eq!(pending["arguments"], json!({"amount": 500, "to": "bob"}));
    assert_eq!(
        pending["reason"],
        "Transfers above 100 need a person's approval."
    );
    assert!(pending["expires_in_seconds"].as_u64().unwrap() > 590);

    // Asking again while it waits adds no request.
    call(
        &service,
        "Bearer alice",
        "transfer",
        json!({"amount": 500, "to": "bob"}),
    )
    .await;
    assert_eq!(only_pending(&handle).await, id);
    assert!(ran.lock().unwrap().is_empty());

    let approved = handle.approve(&id, "ops").await.unwrap().unwrap();
    assert_eq!(approved["id"], id.as_str());
    assert!(handle.pending_approvals().await.unwrap().is_empty());
    // An approval is for that call only: another amount asks anew, and does not run.
    let other = call(
        &service,
        "Bearer alice",
        "transfer",
        json!({"amount": 501, "to": "bob"}),
    )
    .await;
    assert_eq!(denied(&other).kind(), DenialKind::Approval);
    assert!(ran.lock().unwrap().is_empty());
    // Another caller cannot use it.
    let mallory = call(
        &service,
        "Bearer mallory",
        "transfer",
        json!({"amount": 500, "to": "bob"}),
    )
    .await;
    assert_eq!(denied(&mallory).kind(), DenialKind::Approval);
    assert!(ran.lock().unwrap().is_empty());

    // The same call, keys in another order and other whitespace: the same arguments.
    let request = testing::as_caller(
        Request::post("http://localhost/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(Full::new(Bytes::from(
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"transfer",
                    "arguments":{ "to" : "bob", "amount" : 500.0 }}}"#,
            )))
            .unwrap(),
        "Bearer alice",
    );
    let response = service.clone().oneshot(request).await.unwrap();
    let answer = testing::answer(response.map(Full::new)).await.unwrap();
    assert!(matches!(answer, Answer::Result(_)), "{answer:?}");
    assert_eq!(ran.lock().unwrap().len(), 1);

    // Used up: the next identical call asks again.
    let again = call(
        &service,
        "Bearer alice",
        "transfer",
        json!({"amount": 500, "to": "bob"}),
    )
    .await;
    assert_eq!(denied(&again).kind(), DenialKind::Approval);
    assert_eq!(ran.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_declined_call_never_runs_and_the_next_attempt_asks_again() {
    let layer = layer();
    let handle = layer.handle();
    let (service, ran) = service(&layer);
    let args = json!({"amount": 900, "to": "eve"});
    call(&service, "Bearer alice", "transfer", args.clone()).await;
    let id = only_pending(&handle).await;
    assert!(handle.decline(&id, "ops").await.unwrap().is_some());
    // Answered: it can no longer be approved.
    assert!(handle.approve(&id, "ops").await.unwrap().is_none());
    let told = call(&service, "Bearer alice", "transfer", args.clone()).await;
    let message = denied(&told).message().to_owned();
    assert!(
        message.contains(&format!("ops declined approval {id}")),
        "{message}"
    );
    let again = call(&service, "Bearer alice", "transfer", args).await;
    assert!(denied(&again).message().contains("is pending"));
    assert_ne!(only_pending(&handle).await, id);
    assert!(ran.lock().unwrap().is_empty());
    assert!(handle.approve("no-such-id", "ops").await.unwrap().is_none());
}

#[tokio::test]
async fn only_calls_the_rule_names_need_approval_and_refusals_come_first() {
    let layer = layer();
    let handle = layer.handle();
    let (service, ran) = service(&layer);
    // `when` is false: no approval needed.
    let small = call(&service, "Bearer alice", "transfer", json!({"amount": 50})).await;
    assert!(matches!(small, Answer::Result(_)), "{small:?}");
    // A deny_if refuses before any approval is asked for.
    let huge = call(
        &service,
        "Bearer alice",
        "transfer",
        json!({"amount": 20000}),
    )
    .await;
    assert_eq!(denied(&huge).kind(), DenialKind::DenyIf);
    // An argument the deny_if cannot read is refused by it (fail closed), first.
    let odd = call(
        &service,
        "Bearer alice",
        "transfer",
        json!({"amount": "lots"}),
    )
    .await;
    assert_eq!(denied(&odd).kind(), DenialKind::DenyIf);
    // A `when` that cannot be evaluated asks (fail closed), with the default reason.
    let odd = call(&service, "Bearer alice", "wire", json!({"amount": "lots"})).await;
    let denial = denied(&odd);
    assert_eq!(denial.kind(), DenialKind::Approval);
    assert!(
        denial
            .message()
            .starts_with("A person must approve this call to \"wire\" before it runs."),
        "{denial}"
    );
    assert_eq!(handle.pending_approvals().await.unwrap().len(), 1);
    assert_eq!(*ran.lock().unwrap(), vec![json!({"amount": 50})]);
}

#[tokio::test]
async fn limits_are_charged_only_when_the_approved_call_is_forwarded() {
    let layer = layer();
    let handle = layer.handle();
    let (service, ran) = service(&layer);
    // The limit is 2 a minute. Waiting for approval charges nothing, however often.
    for _ in 0..3 {
        let asked = call(&service, "Bearer alice", "transfer", json!({"amount": 500})).await;
        assert_eq!(denied(&asked).kind(), DenialKind::Approval);
    }
    handle
        .approve(&only_pending(&handle).await, "ops")
        .await
        .unwrap()
        .unwrap();
    let ran_once = call(&service, "Bearer alice", "transfer", json!({"amount": 500})).await;
    assert!(matches!(ran_once, Answer::Result(_)));
    let small = call(&service, "Bearer alice", "transfer", json!({"amount": 5})).await;
    assert!(matches!(small, Answer::Result(_)));
    // Now the limit refuses, before asking anyone.
    let limited = call(&service, "Bearer alice", "transfer", json!({"amount": 700})).await;
    assert_eq!(denied(&limited).kind(), DenialKind::Limit);
    assert!(handle.pending_approvals().await.unwrap().is_empty());
    assert_eq!(ran.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_batch_runs_only_when_every_call_in_it_is_approved() {
    let layer = layer();
    let handle = layer.handle();
    let (service, ran) = service(&layer);
    let batch = || {
        testing::as_caller(
            Request::post("http://localhost/mcp")
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(Full::new(Bytes::from(
                    json!([
                        {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"transfer","arguments":{"amount":200}}},
                        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_price","arguments":{}}},
                        {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"transfer","arguments":{"amount":300}}}
                    ])
                    .to_string(),
                )))
                .unwrap(),
            "Bearer alice",
        )
    };
    let response = service.clone().oneshot(batch()).await.unwrap();
    let answers: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(answers.as_array().unwrap().len(), 3, "{answers}");
    assert!(ran.lock().unwrap().is_empty());
    let ids: Vec<String> = handle
        .pending_approvals()
        .await
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    handle.approve(&ids[0], "ops").await.unwrap().unwrap();
    // One of two approved: nothing runs, and the approval given is kept.
    service.clone().oneshot(batch()).await.unwrap();
    assert!(ran.lock().unwrap().is_empty());
    handle.approve(&ids[1], "ops").await.unwrap().unwrap();
    let response = service.clone().oneshot(batch()).await.unwrap();
    let answers: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(answers.as_array().unwrap().len(), 3, "{answers}");
    assert_eq!(ran.lock().unwrap().len(), 3);
}

#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

impl Observer for Seen {
    fn observe(&self, event: &Event<'_>) {
        let line = match event {
            Event::Approval { step, by, .. } => format!("approval {step} {}", by.unwrap_or("-")),
            Event::Call(call) => format!("call {} {}", call.decision_label(), call.tool),
            _ => return,
        };
        self.0.lock().unwrap().push(line);
    }
}

#[tokio::test]
async fn every_step_of_an_approval_is_an_event() {
    let seen = Arc::new(Seen::default());
    let layer = layer().observer(seen.clone());
    let handle = layer.handle();
    let (service, _ran) = service(&layer);
    call(&service, "Bearer alice", "transfer", json!({"amount": 500})).await;
    handle
        .approve(&only_pending(&handle).await, "ops")
        .await
        .unwrap()
        .unwrap();
    call(&service, "Bearer alice", "transfer", json!({"amount": 500})).await;
    call(&service, "Bearer alice", "transfer", json!({"amount": 600})).await;
    handle
        .decline(&only_pending(&handle).await, "ops")
        .await
        .unwrap()
        .unwrap();
    let lines = seen.0.lock().unwrap().clone();
    assert_eq!(
        lines,
        [
            "approval requested -",
            "call deny transfer",
            "approval approved ops",
            "approval used ops",
            "call allow transfer",
            "approval requested -",
            "call deny transfer",
            "approval declined ops",
        ]
    );
}

#[tokio::test]
async fn monitor_mode_runs_the_call_and_reports_that_it_would_need_approval() {
    let seen = Arc::new(Seen::default());
    let layer = layer().mode(Mode::Monitor).observer(seen.clone());
    let handle = layer.handle();
    let (service, ran) = service(&layer);
    let answer = call(&service, "Bearer alice", "transfer", json!({"amount": 500})).await;
    assert!(matches!(answer, Answer::Result(_)), "{answer:?}");
    assert_eq!(ran.lock().unwrap().len(), 1);
    assert!(handle.pending_approvals().await.unwrap().is_empty());
    let lines = seen.0.lock().unwrap().clone();
    assert_eq!(lines, ["call would_require_approval transfer"]);
}

#[tokio::test]
async fn a_new_policy_version_needs_a_new_approval() {
    let layer = layer();
    let handle = layer.handle();
    let (service, ran) = service(&layer);
    call(&service, "Bearer alice", "transfer", json!({"amount": 500})).await;
    handle
        .approve(&only_pending(&handle).await, "ops")
        .await
        .unwrap()
        .unwrap();
    // The policy changes (another reason): what was approved under the old one is not
    // carried over.
    let changed = POLICY.replace("need a person's approval", "need a second look");
    handle.replace(changed.parse::<Policy>().unwrap());
    let asked = call(&service, "Bearer alice", "transfer", json!({"amount": 500})).await;
    assert!(
        denied(&asked)
            .message()
            .starts_with("Transfers above 100 need a second look.")
    );
    assert!(ran.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_denial_names_the_approval_request_for_clients_that_read_it() {
    let layer = layer();
    let handle = layer.handle();
    let (service, _ran) = service(&layer);
    let request = testing::as_caller(
        testing::tool_call("transfer", json!({"amount": 400})),
        "Bearer alice",
    );
    let response = service.clone().oneshot(request).await.unwrap();
    let answer: Value = serde_json::from_slice(response.body()).unwrap();
    let details = &answer["result"]["_meta"]["tower-mcp-policy/denial"];
    assert_eq!(details["kind"], "approval", "{answer}");
    assert_eq!(details["rule"], "/tools/transfer/require_approval");
    assert_eq!(
        details["approvalId"],
        only_pending(&handle).await.as_str(),
        "{answer}"
    );
}

#[tokio::test]
async fn an_agent_cannot_bury_the_operators_in_requests() {
    let layer = layer();
    let handle = layer.handle();
    let (service, ran) = service(&layer);
    for amount in 0..20 {
        let asked = call(
            &service,
            "Bearer alice",
            "transfer",
            json!({"amount": 200 + amount}),
        )
        .await;
        assert!(denied(&asked).message().contains("is pending"));
    }
    let refused = call(&service, "Bearer alice", "transfer", json!({"amount": 999})).await;
    let denial = denied(&refused);
    assert_eq!(denial.kind(), DenialKind::Approval);
    assert!(
        denial.message().contains(
            "20 calls already wait for a person's approval, so this one was not recorded"
        ),
        "{denial}"
    );
    assert_eq!(handle.pending_approvals().await.unwrap().len(), 20);
    // Another caller is not held up by it.
    let bob = call(&service, "Bearer bob", "transfer", json!({"amount": 999})).await;
    assert!(denied(&bob).message().contains("is pending"));
    assert!(ran.lock().unwrap().is_empty());
}

/// Two replicas that share one Redis agree on approvals: requests, answers, and the
/// approval states used in the client. Each replica has its own connection and layer.
#[cfg(feature = "redis")]
mod shared {
    use super::*;
    use crate::support::redis_server::Redis;
    use tower_mcp_policy::Engine;
    use tower_mcp_policy::counter::RedisCounters;

    async fn replica(redis: &Redis) -> PolicyLayer<RedisCounters> {
        let counters = redis.builder().connect().await.unwrap();
        PolicyLayer::from_engine(Engine::with_counters(
            POLICY.parse::<Policy>().unwrap(),
            counters,
        ))
    }

    /// Two replicas on `redis`, each with a tool server behind it.
    async fn pair(redis: &Redis) -> [(PolicyLayer<RedisCounters>, Service, Ran); 2] {
        let mut pair = Vec::new();
        for _ in 0..2 {
            let layer = replica(redis).await;
            let (service, ran) = service(&layer);
            pair.push((layer, service, ran));
        }
        pair.try_into().unwrap()
    }

    /// Alice's 2026-07-28 call of `transfer` from a client that can ask its user, again
    /// with the layer's `state` and the user's answer when there is one.
    fn modern_call(args: &Value, state: Option<&str>, approve: bool) -> Request<Full<Bytes>> {
        let params = params_2026(args, json!({}));
        call_2026(match state {
            Some(state) => retried(params, state, approve),
            None => params,
        })
    }

    #[tokio::test]
    async fn a_call_approved_through_one_replica_runs_once_through_the_other() {
        let redis = Redis::start();
        let [(one, a, ran_a), (two, b, ran_b)] = pair(&redis).await;
        let args = json!({"amount": 500, "to": "bob"});

        let asked = call(&a, "Bearer alice", "transfer", args.clone()).await;
        assert_eq!(denied(&asked).kind(), DenialKind::Approval);
        // The other replica lists it, and its operator approves it.
        let id = only_pending(&two.handle()).await;
        let pending = &two.handle().pending_approvals().await.unwrap()[0];
        assert_eq!(pending["arguments"], args);
        assert!(pending["expires_in_seconds"].as_u64().unwrap() > 590);
        // Asking again through the other replica names the same request.
        let again = call(&b, "Bearer alice", "transfer", args.clone()).await;
        assert!(denied(&again).message().contains(&id), "{}", denied(&again));
        assert_eq!(
            two.handle().approve(&id, "ops").await.unwrap().unwrap()["id"],
            id.as_str()
        );
        assert!(one.handle().pending_approvals().await.unwrap().is_empty());
        assert!(
            one.handle().approve(&id, "ops").await.unwrap().is_none(),
            "answered once"
        );

        // The retry runs once, through either replica.
        assert!(matches!(
            call(&a, "Bearer alice", "transfer", args.clone()).await,
            Answer::Result(_)
        ));
        let after = call(&b, "Bearer alice", "transfer", args.clone()).await;
        assert_eq!(denied(&after).kind(), DenialKind::Approval);
        assert_eq!(
            ran_a.lock().unwrap().as_slice(),
            std::slice::from_ref(&args)
        );
        assert!(ran_b.lock().unwrap().is_empty());

        // Declined through one, the other tells the caller.
        let id = only_pending(&one.handle()).await;
        one.handle().decline(&id, "ops").await.unwrap().unwrap();
        let told = call(&b, "Bearer alice", "transfer", args).await;
        assert!(
            denied(&told).message().contains("ops declined"),
            "{}",
            denied(&told)
        );
        assert_eq!(ran_a.lock().unwrap().len() + ran_b.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_approval_state_used_at_one_replica_is_spent_at_the_other() {
        let redis = Redis::start();
        let [(_, a, ran_a), (_, b, ran_b)] = pair(&redis).await;
        let args = json!({"amount": 500, "to": "bob"});

        let asked = answer_of(&a, modern_call(&args, None, false)).await;
        assert_eq!(asked["result"]["resultType"], "input_required", "{asked}");
        let state = asked["result"]["requestState"].as_str().unwrap().to_owned();
        // The replicas share the hashing secret, so the other opens the state.
        let ran = answer_of(&b, modern_call(&args, Some(&state), true)).await;
        assert_eq!(ran["result"]["content"][0]["text"], "ran", "{ran}");
        let replayed = answer_of(&a, modern_call(&args, Some(&state), true)).await;
        let text = replayed["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("already used"), "{text}");
        assert!(ran_a.lock().unwrap().is_empty());
        assert_eq!(ran_b.lock().unwrap().clone(), [args]);
    }

    /// A server whose tool asks for input once (its own state `"mine"`), then runs.
    fn asking_server<S: CounterStore>(layer: &PolicyLayer<S>) -> (Service, Ran) {
        behind(layer, |call, ran| {
            if call["params"]["requestState"] == "mine" {
                ran.lock()
                    .unwrap()
                    .push(call["params"]["arguments"].clone());
                return json!({"content": [{"type": "text", "text": "ran"}]});
            }
            json!({"resultType": "input_required", "requestState": "mine",
                "inputRequests": {"q": {"method": "elicitation/create",
                    "params": {"mode": "form", "message": "Which?", "requestedSchema": {"type": "object"}}}}})
        })
    }

    #[tokio::test]
    async fn an_approval_is_taken_and_kept_across_replicas() {
        let redis = Redis::start();
        let [(one, a, _), (two, b, ran_b)] = pair(&redis).await;
        let args = json!({"amount": 500, "to": "bob"});
        // Asked by a client that cannot elicit; approved by an operator.
        let asked = call(&a, "Bearer alice", "transfer", args.clone()).await;
        assert_eq!(denied(&asked).kind(), DenialKind::Approval);
        let id = only_pending(&one.handle()).await;
        one.handle().approve(&id, "ops").await.unwrap().unwrap();
        // The same call from a client that could be asked in it runs on that approval,
        // through the other replica, without asking.
        let ran = answer_of(&b, modern_call(&args, None, false)).await;
        assert_eq!(ran["result"]["content"][0]["text"], "ran", "{ran}");
        assert_eq!(ran_b.lock().unwrap().len(), 1);

        // A tool that asks for input after its approval: the approval is kept for its
        // next round, which another replica runs.
        let (c, ran_c) = asking_server(&one);
        let (d, ran_d) = asking_server(&two);
        let asked = answer_of(&c, modern_call(&args, None, false)).await;
        let state = asked["result"]["requestState"].as_str().unwrap().to_owned();
        let round = answer_of(&c, modern_call(&args, Some(&state), true)).await;
        assert_eq!(round["result"]["requestState"], "mine", "{round}");
        // The server's own round: its state, not the layer's.
        let mut params = params_2026(&args, json!({}));
        params["requestState"] = json!("mine");
        // `keep` is written in the background: give it a moment.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let done = answer_of(&d, call_2026(params)).await;
        assert_eq!(done["result"]["content"][0]["text"], "ran", "{done}");
        assert!(ran_c.lock().unwrap().is_empty());
        assert_eq!(ran_d.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_caller_has_one_share_of_waiting_requests_across_replicas() {
        let redis = Redis::start();
        let [(_, a, _), (two, b, ran_b)] = pair(&redis).await;
        for n in 0..20 {
            call(&a, "Bearer alice", "transfer", json!({"amount": 200 + n})).await;
        }
        let full = call(&b, "Bearer alice", "transfer", json!({"amount": 999})).await;
        assert!(
            denied(&full).message().contains("20 calls already wait"),
            "{}",
            denied(&full)
        );
        assert_eq!(two.handle().pending_approvals().await.unwrap().len(), 20);
        assert!(ran_b.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_redis_a_call_that_needs_approval_is_refused() {
        let mut redis = Redis::start();
        let layer = replica(&redis).await;
        let (service, ran) = service(&layer);
        redis.stop();
        // `wire` has no limit: only the approval needs Redis.
        let refused = call(&service, "Bearer alice", "wire", json!({"amount": 500})).await;
        assert_eq!(denied(&refused).kind(), DenialKind::Approval);
        assert!(
            denied(&refused)
                .message()
                .contains("Approvals are unavailable"),
            "{}",
            denied(&refused)
        );
        assert!(layer.handle().pending_approvals().await.is_err());
        assert!(layer.handle().approve("any", "ops").await.is_err());
        assert!(ran.lock().unwrap().is_empty(), "nothing ran");
        // A call that needs no approval (nor a counter) still runs.
        let price = call(&service, "Bearer alice", "get_price", json!({})).await;
        assert!(matches!(price, Answer::Result(_)), "{price:?}");
    }
}

#[cfg(feature = "redis")]
mod support;

/// Approval asked over the call's own event stream (MCP 2025-06-18 and 2025-11-25,
/// feature `tokio`): the layer's elicitation request is the stream's first event, and
/// the client's answer is a POST the layer takes for itself.
#[cfg(feature = "tokio")]
mod stream {
    use super::*;
    use std::time::Duration;

    type Inner = tower::util::BoxCloneService<Request<PolicyBody>, Response<Full<Bytes>>, String>;

    /// A server that issues session `s1` and records every request it gets.
    fn server(seen: Arc<Mutex<Vec<Value>>>) -> Inner {
        let service = tower::service_fn(move |request: Request<PolicyBody>| {
            let seen = seen.clone();
            async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let message: Value = serde_json::from_slice(&body).unwrap();
                seen.lock().unwrap().push(message.clone());
                let result = match message["method"].as_str() {
                    Some("initialize") => json!({"protocolVersion": "2025-11-25",
                        "capabilities": {"tools": {}}, "serverInfo": {"name": "t", "version": "1"}}),
                    _ => json!({"content": [{"type": "text", "text": "ran"}]}),
                };
                let answer = json!({"jsonrpc": "2.0", "id": message["id"], "result": result});
                let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
                response
                    .headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                response
                    .headers_mut()
                    .insert("mcp-session-id", "s1".parse().unwrap());
                Ok::<_, String>(response)
            }
        });
        tower::util::BoxCloneService::new(service)
    }

    fn post(body: Value, credential: &str) -> Request<Full<Bytes>> {
        Request::post("/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .header("mcp-session-id", "s1")
            .header("authorization", credential)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }

    /// The layer over the server, a session whose client can elicit already open.
    async fn session(
        policy: &str,
    ) -> (
        tower_mcp_policy::PolicyService<Inner>,
        Arc<Mutex<Vec<Value>>>,
    ) {
        session_of(PolicyLayer::new(policy.parse::<Policy>().unwrap())).await
    }

    async fn session_of(
        layer: PolicyLayer,
    ) -> (
        tower_mcp_policy::PolicyService<Inner>,
        Arc<Mutex<Vec<Value>>>,
    ) {
        let seen = Arc::default();
        let service = layer.layer(server(Arc::clone(&seen)));
        let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}},
            "clientInfo": {"name": "c", "version": "1"}}});
        let mut request = post(initialize, "Bearer alice");
        request.headers_mut().remove("mcp-session-id");
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        (service, seen)
    }

    fn transfer(amount: u64) -> Value {
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": {"name": "transfer", "arguments": {"amount": amount}}})
    }

    fn reply(id: &str, action: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "result": {"action": action, "content": {"approve": true}}})
    }

    /// The data of one event.
    fn data(frame: &Bytes) -> Value {
        let text = std::str::from_utf8(frame).unwrap();
        let line = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        serde_json::from_str(line).unwrap()
    }

    async fn next_frame<B: http_body::Body<Data = Bytes> + Unpin>(body: &mut B) -> Option<Bytes>
    where
        B::Error: std::fmt::Debug,
    {
        let frame =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx)).await?;
        Some(frame.unwrap().into_data().unwrap())
    }

    type Session = tower_mcp_policy::PolicyService<Inner>;

    /// `body` POSTed in the session as `credential`.
    async fn send(
        service: &Session,
        body: Value,
        credential: &str,
    ) -> Response<tower_mcp_policy::layer::ResponseBody<Full<Bytes>>> {
        service
            .clone()
            .oneshot(post(body, credential))
            .await
            .unwrap()
    }

    /// Alice's transfer of 500, asked about over its stream: the stream, past the
    /// layer's elicitation request, and that request's id.
    async fn ask(
        service: &Session,
    ) -> (tower_mcp_policy::layer::ResponseBody<Full<Bytes>>, String) {
        let mut body = send(service, transfer(500), "Bearer alice")
            .await
            .into_body();
        let asked = data(&next_frame(&mut body).await.unwrap());
        assert_eq!(asked["method"], "elicitation/create", "{asked}");
        (body, asked["id"].as_str().unwrap().to_owned())
    }

    fn calls(seen: &Mutex<Vec<Value>>) -> usize {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|m| m["method"] == "tools/call")
            .count()
    }

    const POLICY: &str = r#"{"version":"1","default":"allow","tools":{
        "transfer":{"require_approval":{"reason":"Transfers need a person.","timeout":"1s"},
          "limits":[{"counter":"transfers","window":"hour","max":1}]}}}"#;

    #[tokio::test]
    async fn a_rule_that_wants_an_operator_is_not_asked_over_the_stream() {
        let policy = r#"{"version":"1","default":"allow","tools":{
            "transfer":{"require_approval":{"ask_in_client":false}}}}"#;
        let (service, seen) = session(policy).await;
        let response = send(&service, transfer(500), "Bearer alice").await;
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let denied: Value = serde_json::from_slice(&body).unwrap();
        let text = denied["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("is pending"), "{text}");
        assert_eq!(calls(&seen), 0);
    }

    #[tokio::test]
    async fn a_client_that_goes_away_before_answering_is_charged_nothing() {
        let (service, seen) = session(POLICY).await;
        for _ in 0..3 {
            // One transfer an hour: each call that went away gave its charge back, so
            // the next is asked about again rather than refused over the limit.
            let response = send(&service, transfer(500), "Bearer alice").await;
            let mut body = response.into_body();
            let asked = data(&next_frame(&mut body).await.unwrap());
            assert_eq!(asked["method"], "elicitation/create", "{asked}");
            drop(body);
        }
        assert_eq!(calls(&seen), 0);
    }

    #[tokio::test]
    async fn the_users_yes_runs_the_call_once_on_the_same_stream() {
        let (service, seen) = session(POLICY).await;
        let response = send(&service, transfer(500), "Bearer alice").await;
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body();
        let asked = data(&next_frame(&mut body).await.unwrap());
        assert_eq!(asked["method"], "elicitation/create");
        assert!(
            asked["params"]["message"]
                .as_str()
                .unwrap()
                .contains("Transfers need a person.")
        );
        let id = asked["id"].as_str().unwrap().to_owned();
        assert_eq!(calls(&seen), 0, "nothing runs while the user is asked");

        let taken = send(&service, reply(&id, "accept"), "Bearer alice").await;
        assert_eq!(taken.status(), 202);
        let answer = data(&next_frame(&mut body).await.unwrap());
        assert_eq!(answer["id"], 5);
        assert_eq!(answer["result"]["content"][0]["text"], "ran");
        assert!(
            next_frame(&mut body).await.is_none(),
            "the stream ends with the answer"
        );
        assert_eq!(calls(&seen), 1);
        // The client's answer was the layer's: the server never saw it.
        assert!(seen.lock().unwrap().iter().all(|m| m["id"] != json!(id)));
        // Answered once: the same answer again finds nobody waiting.
        let again = send(&service, reply(&id, "accept"), "Bearer alice").await;
        assert_eq!(again.status(), 404);
    }

    #[tokio::test]
    async fn every_step_over_the_stream_is_an_event() {
        let events = Arc::new(Seen::default());
        let policy = r#"{"version":"1","default":"allow","tools":{
            "transfer":{"require_approval":{"reason":"Transfers need a person."}}}}"#;
        let layer = PolicyLayer::new(policy.parse::<Policy>().unwrap()).observer(events.clone());
        let (service, _) = session_of(layer).await;
        for action in ["accept", "decline"] {
            let (mut body, id) = ask(&service).await;
            send(&service, reply(&id, action), "Bearer alice").await;
            while next_frame(&mut body).await.is_some() {}
        }
        let lines: Vec<String> = events
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains("transfer") || line.starts_with("approval"))
            .cloned()
            .collect();
        assert_eq!(
            lines,
            [
                "approval requested -",
                "approval approved client",
                "approval used client",
                "call allow transfer",
                "approval requested -",
                "approval declined client",
                "call deny transfer",
            ]
        );
    }

    #[tokio::test]
    async fn a_2025_06_18_session_is_asked_without_the_later_revisions_mode() {
        let (service, seen) = session(POLICY).await;
        let mut request = post(transfer(500), "Bearer alice");
        request
            .headers_mut()
            .insert("mcp-protocol-version", "2025-06-18".parse().unwrap());
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body();
        let asked = data(&next_frame(&mut body).await.unwrap());
        assert_eq!(asked["method"], "elicitation/create");
        assert!(asked["params"].get("mode").is_none(), "{asked}");
        assert_eq!(
            asked["params"]["requestedSchema"]["required"],
            json!(["approve"])
        );
        let id = asked["id"].as_str().unwrap().to_owned();
        let taken = send(&service, reply(&id, "accept"), "Bearer alice").await;
        assert_eq!(taken.status(), 202);
        let answer = data(&next_frame(&mut body).await.unwrap());
        assert_eq!(answer["result"]["content"][0]["text"], "ran");
        assert_eq!(calls(&seen), 1);
        // An earlier revision has no elicitation: asked out of band.
        let mut old = post(transfer(500), "Bearer alice");
        old.headers_mut()
            .insert("mcp-protocol-version", "2025-03-26".parse().unwrap());
        let response = service.clone().oneshot(old).await.unwrap();
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(calls(&seen), 1);
    }

    #[tokio::test]
    async fn another_callers_answer_or_none_in_time_never_runs_the_call() {
        let (service, seen) = session(POLICY).await;
        let (mut body, id) = ask(&service).await;
        // Mallory cannot answer Alice's question, nor can anyone answer an unknown one.
        let foreign = send(&service, reply(&id, "accept"), "Bearer mallory").await;
        assert_eq!(foreign.status(), 404);
        let unknown = reply("mcp-policy-approval-0000", "accept");
        let unknown = send(&service, unknown, "Bearer alice").await;
        assert_eq!(unknown.status(), 404);
        // No answer within the rule's second: refused, and the call never ran.
        let refused = tokio::time::timeout(Duration::from_secs(5), next_frame(&mut body))
            .await
            .unwrap()
            .unwrap();
        let refused = data(&refused);
        assert_eq!(refused["id"], 5);
        let text = refused["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("not answered in time"), "{text}");
        assert_eq!(calls(&seen), 0);
        assert!(
            seen.lock()
                .unwrap()
                .iter()
                .all(|m| m.get("result").is_none()),
            "no answer was forwarded"
        );
    }

    #[tokio::test]
    async fn the_users_no_refuses_the_call_and_a_client_that_cannot_elicit_is_asked_out_of_band() {
        let (service, seen) = session(POLICY).await;
        let (mut body, id) = ask(&service).await;
        let taken = send(&service, reply(&id, "decline"), "Bearer alice").await;
        assert_eq!(taken.status(), 202);
        let refused = data(&next_frame(&mut body).await.unwrap());
        let text = refused["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("declined in the client"), "{text}");
        assert_eq!(calls(&seen), 0);

        // Without a session whose client declared elicitation: the usual pending denial.
        let mut request = post(transfer(500), "Bearer alice");
        request.headers_mut().remove("mcp-session-id");
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let denied: Value = serde_json::from_slice(&body).unwrap();
        let text = denied["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("is pending"), "{text}");
        assert_eq!(calls(&seen), 0);
    }
}

/// 2026-07-28 calls: the round trip's events, and a client that opens URLs for its
/// user (URL-mode elicitation) but shows no form, sent to the approvals page when the
/// layer knows it.
mod modern {
    use super::*;

    fn layer_with_page() -> PolicyLayer {
        layer().approvals_page("https://gateway.example/approvals")
    }

    /// Alice's 2026-07-28 transfer of 500 from a client whose `elicitation` capability
    /// is `elicitation`.
    fn transfer_2026(elicitation: Value) -> Request<Full<Bytes>> {
        call_2026(params_2026(
            &json!({"amount": 500, "to": "bob"}),
            elicitation,
        ))
    }

    #[tokio::test]
    async fn a_call_waiting_for_an_operator_sends_the_user_to_the_approvals_page() {
        let layer = layer_with_page();
        let handle = layer.handle();
        let (service, ran) = service(&layer);
        let answer = answer_of(&service, transfer_2026(json!({"url": {}}))).await;
        let error = &answer["error"];
        assert_eq!(error["code"], -32042, "{answer}");
        assert_eq!(answer["id"], 9);
        let id = only_pending(&handle).await;
        let elicitation = &error["data"]["elicitations"][0];
        assert_eq!(elicitation["mode"], "url");
        assert_eq!(elicitation["elicitationId"], id.as_str());
        assert_eq!(
            elicitation["url"],
            format!("https://gateway.example/approvals#{id}")
        );
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("Transfers above 100 need a person's approval."),
            "{answer}"
        );
        assert_eq!(error["data"]["kind"], "approval");
        assert!(ran.lock().unwrap().is_empty());

        // Approved on the page: the retry runs, once.
        handle.approve(&id, "ops").await.unwrap().unwrap();
        let ran_now = answer_of(&service, transfer_2026(json!({"url": {}}))).await;
        assert_eq!(ran_now["result"]["content"][0]["text"], "ran", "{ran_now}");
        assert_eq!(ran.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_rule_that_wants_an_operator_never_asks_the_clients_user() {
        let policy: Policy = r#"{"version":"1","default":"allow","tools":{
            "transfer":{"require_approval":{"ask_in_client":false}}}}"#
            .parse()
            .unwrap();
        let layer = PolicyLayer::new(policy).approvals_page("https://gateway.example/approvals");
        let handle = layer.handle();
        let (service, ran) = service(&layer);
        // A client that shows forms gets the operators' denial, not the layer's form.
        let answer = answer_of(&service, transfer_2026(json!({}))).await;
        let text = answer["result"]["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("is pending"), "{answer}");
        // One that also opens links is sent to the operators' page.
        let answer = answer_of(&service, transfer_2026(json!({"form": {}, "url": {}}))).await;
        assert_eq!(answer["error"]["code"], -32042, "{answer}");
        assert_eq!(handle.pending_approvals().await.unwrap().len(), 1);
        assert!(ran.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn every_step_of_a_round_trip_approval_is_an_event() {
        let events = Arc::new(Seen::default());
        let (service, ran) = service(&layer().observer(events.clone()));
        let asked = answer_of(&service, transfer_2026(json!({}))).await;
        let state = asked["result"]["requestState"].as_str().unwrap().to_owned();
        let params = params_2026(&json!({"amount": 500, "to": "bob"}), json!({}));
        let done = answer_of(&service, call_2026(retried(params, &state, true))).await;
        assert_eq!(done["result"]["content"][0]["text"], "ran", "{done}");
        assert_eq!(ran.lock().unwrap().len(), 1);
        assert_eq!(
            events.0.lock().unwrap().clone(),
            [
                "approval requested -",
                "call deny transfer",
                "approval approved client",
                "approval used client",
                "call allow transfer",
            ]
        );
    }

    #[tokio::test]
    async fn without_a_page_or_the_capability_the_denial_is_as_before() {
        // No page configured.
        let (plain, ran) = service(&layer());
        let answer = answer_of(&plain, transfer_2026(json!({"url": {}}))).await;
        assert_eq!(answer["result"]["isError"], true, "{answer}");
        // A client that cannot open URLs (and shows no form either).
        let (paged, ran_paged) = service(&layer_with_page());
        let answer = answer_of(&paged, transfer_2026(json!(null))).await;
        assert_eq!(answer["result"]["isError"], true, "{answer}");
        // A client that shows forms is asked in the client instead.
        let answer = answer_of(&paged, transfer_2026(json!({"form": {}, "url": {}}))).await;
        assert_eq!(answer["result"]["resultType"], "input_required", "{answer}");
        assert!(ran.lock().unwrap().is_empty() && ran_paged.lock().unwrap().is_empty());
    }
}
