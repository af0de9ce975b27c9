//! Tasks bound to their owner: a task id works only for the grant whose call the
//! server answered with it. Every refused request is checked twice: the answer, and
//! that the server never saw it.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt};
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::testing::{as_caller, request};
use tower_mcp_policy::{Policy, PolicyLayer};

const ALICE: &str = "Bearer alice";
const BOB: &str = "Bearer bob";

/// A server with tasks, of either revision, that records every task request it gets.
#[derive(Clone, Default)]
struct TaskServer {
    /// `method taskId` of each task request that reached the server.
    reached: Arc<Mutex<Vec<String>>>,
    /// The ids handed out, in order.
    created: Arc<Mutex<Vec<String>>>,
    /// Hand out this id to every call instead of a fresh one.
    fixed_id: Option<&'static str>,
}

impl TaskServer {
    fn reached(&self) -> Vec<String> {
        self.reached.lock().unwrap().clone()
    }

    fn answer(&self, message: &Value) -> (Value, bool) {
        let id = message["id"].clone();
        let params = &message["params"];
        let method = message["method"].as_str().unwrap_or_default();
        let result = match method {
            "tools/call" => {
                let mut created = self.created.lock().unwrap();
                let task = match self.fixed_id {
                    Some(fixed) => fixed.to_owned(),
                    None => format!("task-{}", created.len() + 1),
                };
                created.push(task.clone());
                let ttl = params["arguments"]["ttl"].clone();
                match params.get("task") {
                    // MCP 2025-11-25: a task-augmented call.
                    Some(_) => json!({"task": {"taskId": task, "status": "working",
                        "createdAt": "2026-12-04T00:00:00Z", "ttl": ttl}}),
                    // MCP 2026-07-28: the server answers with a task unprompted.
                    None => json!({"resultType": "task", "taskId": task, "status": "working",
                        "createdAt": "2026-12-04T00:00:00Z", "lastUpdatedAt": "2026-12-04T00:00:00Z",
                        "ttlMs": ttl}),
                }
            }
            "tasks/list" => {
                let created = self.created.lock().unwrap();
                let tasks: Vec<Value> = created
                    .iter()
                    .map(|task| json!({"taskId": task, "status": "working"}))
                    .collect();
                json!({"tasks": tasks})
            }
            method => {
                let task = params["taskId"].as_str().unwrap_or("?");
                self.reached
                    .lock()
                    .unwrap()
                    .push(format!("{method} {task}"));
                json!({"resultType": "complete", "taskId": task, "status": "completed"})
            }
        };
        let sse = params["arguments"]["sse"] == json!(true);
        (json!({"jsonrpc": "2.0", "id": id, "result": result}), sse)
    }
}

impl Service<Request<PolicyBody>> for TaskServer {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<PolicyBody>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move {
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            let message: Value = serde_json::from_slice(&bytes).unwrap();
            let (answer, sse) = server.answer(&message);
            let response = match sse {
                true => Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Full::new(Bytes::from(format!(
                        "event: message\ndata: {answer}\n\n"
                    )))),
                false => Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(answer.to_string()))),
            };
            Ok(response.unwrap())
        })
    }
}

fn allow_all() -> PolicyLayer {
    let policy: Policy = r#"{"version":"1","default":"allow","tools":{"slow":{
        "limits":[{"counter":"slow","window":"minute","max":1}]}}}"#
        .parse()
        .unwrap();
    PolicyLayer::new(policy)
}

type Served = tower_mcp_policy::PolicyService<TaskServer>;

async fn send(service: &Served, request: Request<Full<Bytes>>) -> (u16, Value) {
    let response = service.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let json = text.strip_prefix("event: message\ndata: ").unwrap_or(&text);
    (status, serde_json::from_str(json.trim()).unwrap())
}

/// `tools/call slow` as `caller`, with `arguments`; the task id the server handed out.
async fn create(service: &Served, caller: &str, arguments: Value) -> String {
    let call = request(
        "tools/call",
        json!({"name": "slow", "arguments": arguments}),
    );
    let (status, answer) = send(service, as_caller(call, caller)).await;
    assert_eq!(status, 200, "{answer}");
    answer["result"]["taskId"]
        .as_str()
        .or(answer["result"]["task"]["taskId"].as_str())
        .unwrap_or_else(|| panic!("no task handle in {answer}"))
        .to_owned()
}

async fn about(service: &Served, caller: &str, method: &str, task: &str) -> (u16, Value) {
    let mut params = json!({"taskId": task});
    if method == "tasks/update" {
        params["inputResponses"] = json!({});
    }
    send(service, as_caller(request(method, params), caller)).await
}

/// The answer for a task the caller may not reach: a server's answer to an unknown task.
fn assert_unknown(task: &str, (status, answer): (u16, Value)) {
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["error"],
        json!({"code": -32602, "message": format!("unknown task: {task}")}),
        "{answer}"
    );
}

const ABOUT_ONE_TASK: [&str; 4] = ["tasks/get", "tasks/result", "tasks/update", "tasks/cancel"];

#[tokio::test]
async fn a_task_is_reached_only_by_the_grant_whose_call_created_it() {
    let server = TaskServer::default();
    let service = allow_all().layer(server.clone());
    // MCP 2026-07-28: the server answers a plain call with a task handle.
    let task = create(&service, ALICE, json!({"ttl": 60_000})).await;

    for method in ABOUT_ONE_TASK {
        assert_unknown(&task, about(&service, BOB, method, &task).await);
        let anonymous = send(&service, request(method, json!({"taskId": task}))).await;
        assert_unknown(&task, anonymous);
    }
    assert_eq!(
        server.reached(),
        Vec::<String>::new(),
        "the server saw none"
    );

    // Alice polls as often as she likes: polling is not a call, and costs nothing
    // (the tool's limit is one call a minute).
    for method in ABOUT_ONE_TASK {
        let (status, answer) = about(&service, ALICE, method, &task).await;
        assert_eq!((status, &answer["result"]["taskId"]), (200, &json!(task)));
    }
    let (_, again) = about(&service, ALICE, "tasks/get", &task).await;
    assert_eq!(again["result"]["status"], "completed");
    assert_eq!(server.reached().len(), 5);
    // A second call is over the limit: the task-creating call was charged once.
    let call = request("tools/call", json!({"name": "slow", "arguments": {}}));
    let (_, denied) = send(&service, as_caller(call, ALICE)).await;
    assert_eq!(denied["result"]["isError"], true, "{denied}");
}

#[tokio::test]
async fn an_id_nobody_was_handed_is_answered_as_another_grants_task() {
    let server = TaskServer::default();
    let service = allow_all().layer(server.clone());
    let task = create(&service, ALICE, json!({})).await;
    // Bob cannot tell Alice's task from an id that does not exist.
    let theirs = about(&service, BOB, "tasks/get", &task).await;
    let made_up = about(&service, BOB, "tasks/get", "task-99").await;
    assert_unknown(&task, theirs);
    assert_unknown("task-99", made_up);
    // Nor can Alice reach an id the server never handed out through the layer.
    assert_unknown(
        "task-99",
        about(&service, ALICE, "tasks/cancel", "task-99").await,
    );
    assert_eq!(server.reached(), Vec::<String>::new());
}

#[tokio::test]
async fn tasks_of_the_2025_11_25_revision_are_bound_and_listed_per_grant() {
    let server = TaskServer::default();
    let service = allow_all().layer(server.clone());
    // A task-augmented call: `params.task`, answered with `result.task.taskId`.
    let call = request(
        "tools/call",
        json!({"name": "other", "arguments": {}, "task": {"ttl": 60000}}),
    );
    let (_, created) = send(&service, as_caller(call, ALICE)).await;
    let alices = created["result"]["task"]["taskId"]
        .as_str()
        .unwrap()
        .to_owned();
    let call = request(
        "tools/call",
        json!({"name": "other", "arguments": {}, "task": {}}),
    );
    let (_, created) = send(&service, as_caller(call, BOB)).await;
    let bobs = created["result"]["task"]["taskId"]
        .as_str()
        .unwrap()
        .to_owned();

    assert_unknown(&alices, about(&service, BOB, "tasks/result", &alices).await);
    let (_, result) = about(&service, ALICE, "tasks/result", &alices).await;
    assert_eq!(result["result"]["taskId"], json!(alices));
    assert_eq!(server.reached(), [format!("tasks/result {alices}")]);

    // The server lists every task; each caller sees only its own.
    let list = |caller| as_caller(request("tasks/list", json!({})), caller);
    let (_, alice_list) = send(&service, list(ALICE)).await;
    assert_eq!(
        alice_list["result"]["tasks"],
        json!([{"taskId": alices, "status": "working"}])
    );
    let (_, bob_list) = send(&service, list(BOB)).await;
    assert_eq!(
        bob_list["result"]["tasks"],
        json!([{"taskId": bobs, "status": "working"}])
    );
    let (_, nobody) = send(&service, request("tasks/list", json!({}))).await;
    assert_eq!(nobody["result"]["tasks"], json!([]));
}

#[tokio::test]
async fn a_task_handed_out_in_a_stream_is_bound_too() {
    let server = TaskServer::default();
    let service = allow_all().layer(server.clone());
    let task = create(&service, ALICE, json!({"sse": true})).await;
    assert_unknown(&task, about(&service, BOB, "tasks/get", &task).await);
    let (status, _) = about(&service, ALICE, "tasks/get", &task).await;
    assert_eq!(status, 200);
    assert_eq!(server.reached(), [format!("tasks/get {task}")]);
}

#[tokio::test]
async fn a_task_is_unreachable_once_its_time_to_live_has_run_out() {
    let server = TaskServer::default();
    let service = allow_all().layer(server.clone());
    let task = create(&service, ALICE, json!({"ttl": 500})).await;
    // A status answer that does not state a time to live leaves it as it was.
    assert_eq!(about(&service, ALICE, "tasks/get", &task).await.0, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_unknown(&task, about(&service, ALICE, "tasks/get", &task).await);
    assert_eq!(server.reached(), [format!("tasks/get {task}")]);
}

#[tokio::test]
async fn past_the_bound_the_oldest_tasks_are_forgotten_first() {
    let server = TaskServer::default();
    let policy: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let service = PolicyLayer::new(policy).max_tasks(2).layer(server.clone());
    let first = create(&service, ALICE, json!({})).await;
    let second = create(&service, ALICE, json!({})).await;
    let third = create(&service, ALICE, json!({})).await;
    assert_unknown(&first, about(&service, ALICE, "tasks/get", &first).await);
    for task in [&second, &third] {
        assert_eq!(about(&service, ALICE, "tasks/get", task).await.0, 200);
    }
    assert_eq!(server.reached().len(), 2);
}

#[tokio::test]
async fn the_first_grant_handed_a_task_keeps_it() {
    // A server that hands the same id to everyone cannot give Bob Alice's task.
    let server = TaskServer {
        fixed_id: Some("shared"),
        ..TaskServer::default()
    };
    let service = allow_all().layer(server.clone());
    create(&service, ALICE, json!({})).await;
    create(&service, BOB, json!({})).await;
    assert_unknown("shared", about(&service, BOB, "tasks/get", "shared").await);
    assert_eq!(about(&service, ALICE, "tasks/get", "shared").await.0, 200);
    assert_eq!(server.reached().len(), 1);
}

#[tokio::test]
async fn task_messages_the_layer_cannot_check_are_refused() {
    let server = TaskServer::default();
    let service = allow_all().layer(server.clone());
    let task = create(&service, ALICE, json!({})).await;
    let post = |body: Value| {
        let request = Request::post("http://localhost/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        as_caller(request, ALICE)
    };
    // A task id that is not a string.
    let (status, answer) = send(
        &service,
        post(json!({"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"taskId":1}})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tasks/get needs params.taskId, a string"),
        "{answer}"
    );
    // A notification a lenient server might still act on.
    let (status, answer) = send(
        &service,
        post(json!({"jsonrpc":"2.0","method":"tasks/cancel","params":{"taskId":task}})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tasks/cancel must be a request, with an id"),
        "{answer}"
    );
    // A batch that names another grant's task, beside one of the caller's: refused
    // whole, so nothing in it runs.
    let bobs = create(&service, BOB, json!({})).await;
    let batch = json!([
        {"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"taskId":task}},
        {"jsonrpc":"2.0","id":2,"method":"tasks/cancel","params":{"taskId":bobs}},
    ]);
    let (status, answer) = send(&service, post(batch)).await;
    assert_eq!(status, 200);
    assert_eq!(answer["id"], 2, "{answer}");
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
    assert_eq!(server.reached(), Vec::<String>::new());
}
