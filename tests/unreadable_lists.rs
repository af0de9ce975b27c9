//! Tool lists a strict parser cannot read, but JavaScript can: the official TypeScript
//! client must never be shown a hidden tool, on any path (JSON and SSE answers to a
//! POST, and the GET stream). Each list is either filtered or replaced by a JSON-RPC
//! error. The upstream is a stub MCP server that writes these bytes as a buggy or
//! hostile server would. Needs Node.js.

mod servers;
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::any;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_mcp_policy::PolicyLayer;

const FORMS: [&str; 6] = ["plain", "bom", "surrogate", "invalid-utf8", "deep", "1e400"];
const PATHS: [&str; 3] = ["json", "sse", "get"];

/// The tools/list answer in `form`; `secret_tool` is hidden by the policy.
fn tool_list(form: &str, id: &Value) -> Vec<u8> {
    let description = match form {
        "surrogate" => r"cut in the middle of an emoji \ud83d",
        "invalid-utf8" => "a raw byte: X",
        _ => "a tool",
    };
    let extra = match form {
        "deep" => format!(
            r#","_meta":{{"deep":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        ),
        "1e400" => r#","_meta":{"huge":1e400}"#.to_owned(),
        _ => String::new(),
    };
    let message = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":[{{"name":"visible","description":"{description}","inputSchema":{{"type":"object"}}}},{{"name":"secret_tool","inputSchema":{{"type":"object"}}}}]{extra}}}}}"#
    );
    let mut bytes = message.into_bytes();
    if form == "invalid-utf8" {
        let at = bytes.iter().position(|&b| b == b'X').unwrap();
        bytes[at] = 0xff;
    }
    bytes
}

fn sse_event(form: &str, message: &[u8]) -> Bytes {
    let mut event = Vec::new();
    if form == "bom" {
        event.extend_from_slice(b"\xEF\xBB\xBF"); // where the stream starts
    }
    event.extend_from_slice(b"event: message\ndata: ");
    event.extend_from_slice(message);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// Per endpoint: the GET stream's queue.
type Streams = Arc<
    Mutex<
        HashMap<
            String,
            (
                mpsc::UnboundedSender<Bytes>,
                Option<mpsc::UnboundedReceiver<Bytes>>,
            ),
        >,
    >,
>;

async fn stub(
    State(streams): State<Streams>,
    Path((path, form)): Path<(String, String)>,
    method: Method,
    body: Bytes,
) -> Response<Body> {
    let endpoint = format!("{path}/{form}");
    let queue = |streams: &Streams| {
        let mut streams = streams.lock().unwrap();
        let (tx, _) = streams.entry(endpoint.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            (tx, Some(rx))
        });
        tx.clone()
    };
    let respond = |status: StatusCode, content_type: Option<&str>, body: Body| {
        let mut response = Response::builder().status(status);
        if let Some(content_type) = content_type {
            response = response.header("content-type", content_type);
        }
        response
            .header("mcp-session-id", "stub-session")
            .body(body)
            .unwrap()
    };
    match method {
        Method::GET if path == "get" => {
            queue(&streams);
            let rx = streams.lock().unwrap().get_mut(&endpoint).unwrap().1.take();
            let Some(rx) = rx else {
                return respond(StatusCode::CONFLICT, None, Body::empty());
            };
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
            });
            respond(
                StatusCode::OK,
                Some("text/event-stream"),
                Body::from_stream(stream),
            )
        }
        Method::GET => respond(StatusCode::METHOD_NOT_ALLOWED, None, Body::empty()),
        Method::DELETE => respond(StatusCode::OK, None, Body::empty()),
        _ => {
            let message: Value = serde_json::from_slice(&body).unwrap();
            let id = &message["id"];
            match message["method"].as_str() {
                Some("initialize") => {
                    let answer = json!({"jsonrpc": "2.0", "id": id, "result": {
                        "protocolVersion": message["params"]["protocolVersion"],
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "stub", "version": "1"}}});
                    respond(
                        StatusCode::OK,
                        Some("application/json"),
                        Body::from(answer.to_string()),
                    )
                }
                Some("tools/list") => {
                    let list = tool_list(&form, id);
                    match path.as_str() {
                        "json" => {
                            let mut bytes = Vec::new();
                            if form == "bom" {
                                bytes.extend_from_slice(b"\xEF\xBB\xBF");
                            }
                            bytes.extend_from_slice(&list);
                            respond(StatusCode::OK, Some("application/json"), Body::from(bytes))
                        }
                        "sse" => respond(
                            StatusCode::OK,
                            Some("text/event-stream"),
                            Body::from(sse_event(&form, &list)),
                        ),
                        _ => {
                            // The answer travels on the GET stream.
                            queue(&streams).send(sse_event(&form, &list)).unwrap();
                            respond(StatusCode::ACCEPTED, None, Body::empty())
                        }
                    }
                }
                _ if message.get("id").is_none() => {
                    respond(StatusCode::ACCEPTED, None, Body::empty())
                }
                _ => {
                    let answer = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "no"}});
                    respond(
                        StatusCode::OK,
                        Some("application/json"),
                        Body::from(answer.to_string()),
                    )
                }
            }
        }
    }
}

#[tokio::test]
async fn the_typescript_client_never_sees_a_hidden_tool_in_an_unusual_list() {
    let policy: tower_mcp_policy::Policy =
        r#"{"version":"1","default":"allow","hide":["secret_*"]}"#
            .parse()
            .unwrap();
    let app = Router::new()
        .route("/{path}/{form}", any(stub))
        .with_state(Streams::default())
        .layer(PolicyLayer::new(policy));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let cases: Vec<(&str, &str)> = PATHS
        .iter()
        .flat_map(|path| FORMS.iter().map(move |form| (*path, *form)))
        .collect();
    let urls = cases
        .iter()
        .map(|(path, form)| format!("http://{address}/{path}/{form}"))
        .collect();
    let seen = servers::demo::node_script("list_tools.mjs", urls).await;
    server.abort();

    assert_eq!(seen.len(), cases.len(), "{seen:?}");
    for ((path, form), seen) in cases.iter().zip(&seen) {
        let case = format!("{form} on the {path} path: {seen}");
        assert!(!seen.to_string().contains("secret"), "{case}");
        match *form {
            // Read leniently, as the client reads them, and filtered.
            "plain" | "bom" | "surrogate" | "invalid-utf8" => {
                assert_eq!(seen["tools"], json!(["visible"]), "{case}")
            }
            // Beyond serde_json (depth, range): withheld, as an error the client reads.
            _ => {
                assert_eq!(seen["error"]["code"], -32603, "{case}");
                assert!(
                    seen["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("withheld a message that may list tools"),
                    "{case}"
                );
            }
        }
    }
}
