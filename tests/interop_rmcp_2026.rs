//! MCP 2026-07-28 end to end: rmcp's client and server (3.11) over loopback, through
//! the layer. Routing headers (the `Mcp-Param-*` ones the client derives from the tool
//! list), a multi round-trip call that asks for input twice, and tasks bound to the
//! grant that created them. Every refused request is checked twice: the answer, and
//! that the server never saw it.

#![allow(deprecated)] // rmcp's `Tool` fields used to describe the test's tools.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::*;
use rmcp::service::{RequestContext, RoleClient, RoleServer, RunningService};
use rmcp::task_manager::{TaskExit, TaskManager, TaskOptions};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, ErrorData, ServerHandler};
use serde_json::{Value, json};
use tower_mcp_policy::{Policy, PolicyLayer};

/// What the server did: the tools that ran to completion, and how many requests about
/// a task reached it.
#[derive(Clone, Default)]
struct Ran {
    tools: Arc<Mutex<Vec<String>>>,
    task_requests: Arc<AtomicUsize>,
    /// Every request that reached the server, at the HTTP level.
    posts: Arc<AtomicUsize>,
}

impl Ran {
    fn tools(&self) -> Vec<String> {
        self.tools.lock().unwrap().clone()
    }
}

#[derive(Clone)]
struct Modern {
    ran: Ran,
    tasks: TaskManager,
}

fn elicit(message: &str, state: &str) -> CallToolResponse {
    let mut requests = InputRequests::new();
    let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}});
    let request = ElicitRequest::new(ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: message.into(),
        requested_schema: serde_json::from_value(schema).unwrap(),
    });
    requests.insert("answer".to_owned(), InputRequest::Elicitation(request));
    InputRequiredResult::new(Some(requests), Some(state.into())).into()
}

fn text(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text.into())])
}

impl ServerHandler for Modern {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tasks()
                .build(),
        );
        info.protocol_version = ProtocolVersion::V_2026_07_28;
        info
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Borrowed(&[ProtocolVersion::V_2026_07_28])
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = |properties: Value| {
            let schema = json!({"type": "object", "properties": properties});
            Arc::new(schema.as_object().unwrap().clone())
        };
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new(
                "deploy",
                "Deploys to a region",
                schema(json!({"region": {"type": "string", "x-mcp-header": "Region"}})),
            ),
            Tool::new("confirm", "Asks twice, then runs", schema(json!({}))),
            Tool::new("report", "Runs as a task", schema(json!({}))),
            Tool::new(
                "transfer",
                "Moves money",
                schema(json!({"amount": {"type": "number"}, "to": {"type": "string"}})),
            ),
            Tool::new("refund", "Gives money back", schema(json!({}))),
            Tool::new("payout", "Asks which account, then pays", schema(json!({}))),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let ran = self.ran.clone();
        match request.name.as_ref() {
            "deploy" => {
                let region = request.arguments.unwrap_or_default()["region"].clone();
                ran.tools.lock().unwrap().push("deploy".into());
                Ok(text(format!("deployed to {region}")).into())
            }
            // Two rounds of input (SEP-2322), then it runs.
            "confirm" => match request.request_state.as_deref() {
                None => Ok(elicit("First?", "one")),
                Some("one") => Ok(elicit("Second?", "two")),
                Some(_) => {
                    ran.tools.lock().unwrap().push("confirm".into());
                    Ok(text("confirmed").into())
                }
            },
            // Needs a person's approval, then asks for input itself (SEP-2322).
            "payout" => match request.request_state.as_deref() {
                None => Ok(elicit("Which account?", "account")),
                Some("account") => {
                    ran.tools.lock().unwrap().push("payout".into());
                    Ok(text("paid").into())
                }
                Some(other) => Err(ErrorData::invalid_params(format!("state {other}"), None)),
            },
            "transfer" | "refund" => {
                let arguments = Value::Object(request.arguments.unwrap_or_default());
                let done = format!("{} {arguments}", request.name);
                ran.tools.lock().unwrap().push(done.clone());
                // The layer's approval state never reaches the server.
                assert!(request.request_state.is_none() && request.input_responses.is_none());
                Ok(text(done).into())
            }
            "report" => {
                let task = self
                    .tasks
                    .spawn(TaskOptions::new().with_ttl_ms(60_000), move |ctx| {
                        Box::pin(async move {
                            tokio::select! {
                                _ = ctx.cancelled() => Err(TaskExit::Cancelled),
                                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                                    ran.tools.lock().unwrap().push("report".into());
                                    Ok(text("the report"))
                                }
                            }
                        })
                    });
                Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
            }
            other => Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        }
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        self.ran.task_requests.fetch_add(1, Ordering::SeqCst);
        Ok(GetTaskResult::new(self.tasks.get_task(&request.task_id)?))
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.ran.task_requests.fetch_add(1, Ordering::SeqCst);
        self.tasks
            .update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.ran.task_requests.fetch_add(1, Ordering::SeqCst);
        self.tasks.cancel_task(&request.task_id)
    }
}

/// A client that declares tasks and answers every elicitation with yes (the layer's
/// approval form with `approve`, unless told to decline it).
#[derive(Clone)]
struct Agent {
    elicited: Arc<AtomicUsize>,
    /// The messages of the approval forms the user was shown.
    approvals: Arc<Mutex<Vec<String>>>,
    decline: Arc<std::sync::atomic::AtomicBool>,
}

impl ClientHandler for Agent {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::builder()
                .enable_tasks()
                .enable_elicitation()
                .build(),
            Implementation::from_build_env(),
        )
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.elicited.fetch_add(1, Ordering::SeqCst);
        let shown = serde_json::to_value(&request).unwrap();
        if shown["requestedSchema"]["properties"]["approve"].is_object() {
            self.approvals
                .lock()
                .unwrap()
                .push(shown["message"].as_str().unwrap().to_owned());
            if self.decline.load(Ordering::SeqCst) {
                return Ok(ElicitResult::new(ElicitationAction::Decline));
            }
            return Ok(
                ElicitResult::new(ElicitationAction::Accept).with_content(json!({"approve": true}))
            );
        }
        Ok(ElicitResult::new(ElicitationAction::Accept).with_content(json!({"ok": true})))
    }
}

type Client = RunningService<RoleClient, Agent>;

struct Server {
    url: String,
    ran: Ran,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The policy: `confirm` once an hour per grant; `transfer` and `refund` need a
/// person's approval (a refund's expires in a second); the rest allowed.
const POLICY: &str = r#"{"version":"1","default":"deny","tools":{
    "deploy":{}, "report":{},
    "confirm":{"limits":[{"counter":"confirm","window":"hour","max":1}]},
    "transfer":{"require_approval":{"reason":"Transfers need a person's approval."}},
    "refund":{"require_approval":{"timeout":"1s"}},
    "payout":{"require_approval":{}}}}"#;

async fn serve() -> Server {
    let ran = Ran::default();
    let tasks = TaskManager::new();
    let service: StreamableHttpService<Modern, LocalSessionManager> = StreamableHttpService::new(
        {
            let ran = ran.clone();
            move || {
                Ok(Modern {
                    ran: ran.clone(),
                    tasks: tasks.clone(),
                })
            }
        },
        Default::default(),
        StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true),
    );
    let posts = ran.posts.clone();
    let counted = tower::ServiceBuilder::new()
        .map_request(move |request: http::Request<_>| {
            posts.fetch_add(1, Ordering::SeqCst);
            request
        })
        .service(service);
    let policy: Policy = POLICY.parse().unwrap();
    let app = axum::Router::new()
        .nest_service("/mcp", counted)
        .layer(PolicyLayer::new(policy));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server {
        url: format!("http://{address}/mcp"),
        ran,
        task,
    }
}

async fn connect(url: &str, token: &str) -> Client {
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token);
    let agent = Agent {
        elicited: Arc::default(),
        approvals: Arc::default(),
        decline: Arc::default(),
    };
    let client = agent
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_config(config),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("the client starts on 2026-07-28");
    client.list_tools(None).await.expect("the tools");
    client
}

fn call(tool: &'static str, arguments: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool).with_arguments(arguments.as_object().unwrap().clone())
}

fn unknown_task(error: rmcp::ServiceError) -> String {
    let shown = format!("{error:?}");
    assert!(
        shown.contains("-32602") && shown.contains("unknown task"),
        "{shown}"
    );
    shown
}

#[tokio::test]
async fn routing_headers_are_checked_against_what_the_client_derives() {
    let server = serve().await;
    let alice = connect(&server.url, "alice").await;
    // rmcp sends Mcp-Method, Mcp-Name and, from the tool list, Mcp-Param-Region.
    let result = alice
        .call_tool(call("deploy", json!({"region": "eu-west"})))
        .await
        .unwrap();
    assert_eq!(
        result.content[0].as_text().unwrap().text,
        r#"deployed to "eu-west""#
    );

    // The same call sent raw, its Mcp-Param-Region saying another region.
    let before = server.ran.posts.load(Ordering::SeqCst);
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "deploy", "arguments": {"region": "eu-west"}}});
    let response = reqwest::Client::new()
        .post(&server.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", "Bearer alice")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "deploy")
        .header("mcp-param-region", "us-east")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32020, "{answer}");
    assert_eq!(
        server.ran.posts.load(Ordering::SeqCst),
        before,
        "never forwarded"
    );
    assert_eq!(
        server.ran.tools(),
        ["deploy"],
        "the mismatched call never ran"
    );
    alice.cancel().await.unwrap();
}

#[tokio::test]
async fn a_call_that_asks_for_input_twice_costs_one_charge() {
    let server = serve().await;
    let alice = connect(&server.url, "alice").await;
    // Three rounds (input, input, run): the limit of one call an hour is not reached
    // until it has run.
    let result = alice.call_tool(call("confirm", json!({}))).await.unwrap();
    assert_eq!(result.content[0].as_text().unwrap().text, "confirmed");
    assert_eq!(alice.service().elicited.load(Ordering::SeqCst), 2);
    assert_eq!(server.ran.tools(), ["confirm"]);
    // One charge was taken: the next call is over the limit, and never reaches the tool.
    let denied = alice.call_tool(call("confirm", json!({}))).await.unwrap();
    assert_eq!(denied.is_error, Some(true));
    assert!(
        denied.content[0]
            .as_text()
            .unwrap()
            .text
            .starts_with("[POLICY DENIED]")
    );
    assert_eq!(server.ran.tools(), ["confirm"]);
    alice.cancel().await.unwrap();
}

#[tokio::test]
async fn a_task_serves_the_grant_that_created_it_and_nobody_else() {
    let server = serve().await;
    let alice = connect(&server.url, "alice").await;
    let bob = connect(&server.url, "bob").await;
    let CallToolResponse::Task(created) = alice
        .call_tool_once(call("report", json!({})))
        .await
        .unwrap()
    else {
        panic!("the server runs report as a task");
    };
    let task = created.task.task_id.clone();

    // Bob polls, answers and cancels Alice's task: refused, as an unknown task.
    unknown_task(
        bob.peer()
            .get_task(GetTaskParams::new(&task))
            .await
            .unwrap_err(),
    );
    let update = UpdateTaskParams::new(&task, Default::default());
    unknown_task(bob.peer().update_task(update).await.unwrap_err());
    unknown_task(
        bob.peer()
            .cancel_task(CancelTaskParams::new(&task))
            .await
            .unwrap_err(),
    );
    assert_eq!(server.ran.task_requests.load(Ordering::SeqCst), 0);

    // Alice polls it to completion.
    let done = loop {
        let got = alice
            .peer()
            .get_task(GetTaskParams::new(&task))
            .await
            .unwrap();
        if got.task.status().is_terminal() {
            break got.task;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        matches!(done.payload, TaskPayload::Completed { .. }),
        "{done:?}"
    );
    assert_eq!(server.ran.tools(), ["report"]);

    // A second task, cancelled by its owner.
    let CallToolResponse::Task(second) = alice
        .call_tool_once(call("report", json!({})))
        .await
        .unwrap()
    else {
        panic!("a task");
    };
    let second = second.task.task_id;
    unknown_task(
        bob.peer()
            .cancel_task(CancelTaskParams::new(&second))
            .await
            .unwrap_err(),
    );
    let before = server.ran.task_requests.load(Ordering::SeqCst);
    alice
        .peer()
        .cancel_task(CancelTaskParams::new(&second))
        .await
        .unwrap();
    assert_eq!(server.ran.task_requests.load(Ordering::SeqCst), before + 1);
    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
}

/// The text of a tool result.
fn said(result: &CallToolResult) -> &str {
    &result.content[0].as_text().unwrap().text
}

/// The layer's `InputRequiredResult` for `params`: its approval state.
async fn asked(client: &Client, params: CallToolRequestParams) -> String {
    let CallToolResponse::InputRequired(asked) = client.call_tool_once(params).await.unwrap()
    else {
        panic!("the layer asks for input");
    };
    let requests = serde_json::to_value(asked.input_requests.unwrap()).unwrap();
    assert_eq!(
        requests["mcp-policy/approval"]["method"],
        "elicitation/create"
    );
    asked.request_state.unwrap()
}

/// `params` retried with the approval state and the user's yes.
fn approved(params: CallToolRequestParams, state: &str) -> CallToolRequestParams {
    let mut responses = InputResponses::new();
    responses.insert(
        "mcp-policy/approval".to_owned(),
        json!({"action": "accept", "content": {"approve": true}}),
    );
    let mut params = params.with_input_responses(responses);
    params.request_state = Some(state.to_owned());
    params
}

async fn refused(client: &Client, params: CallToolRequestParams, because: &str) {
    let CallToolResponse::Complete(result) = client.call_tool_once(params).await.unwrap() else {
        panic!("refused outright");
    };
    assert_eq!(result.is_error, Some(true));
    assert!(said(&result).contains(because), "{}", said(&result));
}

#[tokio::test]
async fn the_clients_user_approves_exactly_one_call_in_the_client() {
    let server = serve().await;
    let alice = connect(&server.url, "alice").await;
    // rmcp's client drives the round trip: the user is shown the tool, the arguments
    // and the reason, approves, and the call runs once with those arguments.
    let args = json!({"amount": 500, "to": "bob"});
    let result = alice
        .call_tool(call("transfer", args.clone()))
        .await
        .unwrap();
    assert_eq!(said(&result), r#"transfer {"amount":500,"to":"bob"}"#);
    let shown = alice.service().approvals.lock().unwrap().clone();
    assert_eq!(shown.len(), 1);
    for part in [
        "Transfers need a person's approval.",
        "transfer",
        "\"amount\": 500",
    ] {
        assert!(shown[0].contains(part), "{part} in {}", shown[0]);
    }
    assert_eq!(
        server.ran.tools(),
        [r#"transfer {"amount":500,"to":"bob"}"#]
    );

    // The next call asks again.
    alice.call_tool(call("transfer", args)).await.unwrap();
    assert_eq!(alice.service().approvals.lock().unwrap().len(), 2);
    assert_eq!(server.ran.tools().len(), 2);

    // Declined: it never runs.
    alice.service().decline.store(true, Ordering::SeqCst);
    let declined = alice
        .call_tool(call("transfer", json!({"amount": 7, "to": "eve"})))
        .await
        .unwrap();
    assert_eq!(declined.is_error, Some(true));
    assert!(
        said(&declined).contains("declined in the client"),
        "{}",
        said(&declined)
    );
    assert_eq!(server.ran.tools().len(), 2, "the declined call never ran");
    alice.cancel().await.unwrap();
}

#[tokio::test]
async fn a_forged_replayed_altered_or_expired_approval_state_is_refused() {
    let server = serve().await;
    let alice = connect(&server.url, "alice").await;
    let bob = connect(&server.url, "bob").await;
    let pay = || call("transfer", json!({"amount": 500, "to": "bob"}));
    let state = asked(&alice, pay()).await;

    // Other arguments, another caller, a forged seal: the state is not theirs.
    let altered = call("transfer", json!({"amount": 5000, "to": "bob"}));
    refused(
        &alice,
        approved(altered, &state),
        "does not belong to this call",
    )
    .await;
    refused(
        &bob,
        approved(pay(), &state),
        "does not belong to this call",
    )
    .await;
    let mut forged = state.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    refused(
        &alice,
        approved(pay(), &forged),
        "does not belong to this call",
    )
    .await;
    // Without the user's yes.
    let mut unanswered = pay();
    unanswered.request_state = Some(state.clone());
    let no = asked(&alice, pay()).await;
    refused(
        &alice,
        approved(pay(), &no).with_input_responses(InputResponses::new()),
        "declined",
    )
    .await;
    assert!(server.ran.tools().is_empty(), "nothing ran");

    // The real one runs once; replayed, it is refused.
    let CallToolResponse::Complete(ran) =
        alice.call_tool_once(approved(pay(), &state)).await.unwrap()
    else {
        panic!("it runs");
    };
    assert_eq!(said(&ran), r#"transfer {"amount":500,"to":"bob"}"#);
    refused(&alice, approved(pay(), &state), "already used").await;
    refused(&alice, unanswered, "already used").await;

    // Expired: a refund's approval lasts a second.
    let refund = || call("refund", json!({}));
    let state = asked(&alice, refund()).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    refused(&alice, approved(refund(), &state), "expired").await;
    assert_eq!(server.ran.tools().len(), 1, "only the approved call ran");
    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
}

#[tokio::test]
async fn a_tool_that_asks_for_input_after_its_approval_runs_on_that_approval() {
    let server = serve().await;
    let alice = connect(&server.url, "alice").await;
    // The layer asks the user; the server then asks for input itself: that round
    // carries the server's state, and runs on the approval already given.
    let result = alice.call_tool(call("payout", json!({}))).await.unwrap();
    assert_eq!(said(&result), "paid");
    assert_eq!(
        alice.service().approvals.lock().unwrap().len(),
        1,
        "asked once"
    );
    assert_eq!(alice.service().elicited.load(Ordering::SeqCst), 2);
    assert_eq!(server.ran.tools(), ["payout"]);
    // The approval was used by the call that ran: the next one asks again.
    alice.call_tool(call("payout", json!({}))).await.unwrap();
    assert_eq!(alice.service().approvals.lock().unwrap().len(), 2);
    assert_eq!(server.ran.tools(), ["payout", "payout"]);
    alice.cancel().await.unwrap();
}
