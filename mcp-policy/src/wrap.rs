//! `mcp-policy wrap`: a stdio MCP server in front of a stdio MCP server, with the policy
//! between them. A desktop client (Claude Desktop, Cursor, VS Code) starts
//! `mcp-policy wrap --policy P -- COMMAND ARGS…` instead of `COMMAND ARGS…`.
//!
//! ```text
//! mcp-policy wrap --policy PATH [--watch] [--monitor] [--pins FILE] [--env NAME=VALUE] [--env-file FILE] -- COMMAND ARGS…
//! ```
//!
//! Every line the client writes is one JSON-RPC message. It goes through the same
//! `PolicyLayer` the gateway uses, as an HTTP request made in this process, to the
//! server started as a child ([`StdioServer`] with exactly one client): hidden tools,
//! denials, limits, pins, events, `--watch` and `--monitor` behave as in the gateway.
//! What the layer answers (a denial, say) and what the server answers come back as
//! lines on stdout; what the server sends unasked (its requests, notifications) passes
//! to the client as it is. stdout carries nothing else: the log goes to stderr.

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tower_layer::Layer;
use tower_mcp_policy::{PolicyLayer, counter::CounterStore};
use tower_service::Service;

use crate::gateway::{Clients, ServerArgs, StdioServer};
use crate::serving;

/// `mcp-policy wrap`: the options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The policy document.
    #[arg(long, value_name = "FILE", env = "MCP_POLICY_POLICY")]
    pub policy: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub store: serving::Serving,
}

/// Runs until the client closes stdin.
pub async fn main(options: Options) {
    serving::init_tracing();
    if options.server.command.is_empty() {
        eprintln!("mcp-policy wrap: give the server's command after --");
        std::process::exit(2);
    }
    match serving::load_layer("mcp-policy wrap", Some(&options.policy), &options.store).await {
        serving::AnyLayer::Memory(layer) => run(layer, options).await,
        serving::AnyLayer::Redis(layer) => run(layer, options).await,
    }
}

async fn run<S: CounterStore + Clone>(layer: PolicyLayer<S>, options: Options) {
    let program = "mcp-policy wrap";
    let command = match options.server.server_command() {
        Ok(command) => command,
        Err(err) => {
            eprintln!("{program}: {err}");
            std::process::exit(1);
        }
    };
    let _watcher = serving::watch(program, &layer, Some(&options.policy), &options.store);
    tracing::info!(
        "{}",
        serving::banner(&layer, Some(&options.policy), &options.store)
    );
    let (server, mut unsolicited) = StdioServer::start(command, Clients::One);
    let service = layer.layer(server);

    let (lines, mut out) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(mut line) = out.recv().await {
            line.push('\n');
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                return;
            }
        }
    });
    let to_client = lines.clone();
    tokio::spawn(async move {
        while let Some(message) = unsolicited.recv().await {
            if to_client.send(message.to_string()).is_err() {
                return;
            }
        }
    });

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut calls = tokio::task::JoinSet::new();
    while let Ok(Some(line)) = stdin.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        let mut service = service.clone();
        let lines = lines.clone();
        calls.spawn(async move { exchange(&mut service, line, &lines).await });
    }
    // The client is gone: answer what is in flight, then stop (the child with us). A
    // call the server never answers does not keep the process alive.
    let drained = async { while calls.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .is_err()
    {
        tracing::warn!(
            "the client closed its input; calls still in flight after 10s are abandoned"
        );
    }
    drop(lines);
    let _ = writer.await;
}

/// One message from the client through the layer; what comes back (one JSON answer,
/// or each event of an SSE answer as it arrives) goes to `lines`.
async fn exchange<T, B>(service: &mut T, line: String, lines: &mpsc::UnboundedSender<String>)
where
    T: Service<Request<Full<Bytes>>, Response = http::Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut request = Request::new(Full::new(Bytes::from(line)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static(crate::gateway::STDIO_ENDPOINT);
    let headers = request.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    let Ok(response) = service.call(request).await;
    let sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = response.into_body();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => {
                tracing::warn!("an answer was cut off: {err}");
                return;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        text.push_str(&String::from_utf8_lossy(&data).replace("\r\n", "\n"));
        if sse {
            // Each complete event as soon as it is there: progress arrives as it goes.
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                send_all(lines, events(&event));
            }
        }
    }
    if sse {
        send_all(lines, events(&text));
    } else if let Ok(message) = serde_json::from_str::<Value>(&text) {
        // One line: the same message without any layout.
        send_all(lines, vec![message.to_string()]);
    }
}

fn send_all(lines: &mpsc::UnboundedSender<String>, messages: Vec<String>) {
    for message in messages {
        let _ = lines.send(message);
    }
}

/// The JSON-RPC messages of complete SSE events: each event's `data` lines, joined.
fn events(text: &str) -> Vec<String> {
    let mut messages = Vec::new();
    for event in text.split("\n\n") {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|data| data.strip_prefix(' ').unwrap_or(data))
            .collect();
        if data.is_empty() {
            continue;
        }
        if let Ok(message) = serde_json::from_str::<Value>(&data.join("\n")) {
            messages.push(message.to_string());
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::events;

    #[test]
    fn an_sse_body_gives_each_events_message_on_one_line() {
        let body =
            "event: message\ndata: {\"a\":\ndata: 1}\n\n: keep-alive\n\nid: 7\ndata: {\"b\":2}\n\n";
        assert_eq!(events(body), vec![r#"{"a":1}"#, r#"{"b":2}"#]);
    }
}
