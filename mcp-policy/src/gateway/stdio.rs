//! An MCP server started as a command (stdio transport), served over Streamable HTTP:
//! the service `PolicyLayer` wraps for `mcp-policy gateway -- COMMAND` and
//! `mcp-policy wrap -- COMMAND`.
//!
//! **One child, shared.** The gateway starts one child process and every HTTP client
//! talks to it. Each request's id (and its progress token) is replaced by one of the
//! gateway's own before it is written to the child, and put back on the answer, so two
//! clients that both send id 1 never get each other's answers. One child rather than
//! one per MCP session because a stdio server is a program, often `npx` or `uvx`
//! starting a runtime: a child per session costs a second or more and a process per
//! client, and the policy's counters are the gateway's anyway. The price: state the
//! server keeps between calls is shared by its clients, as it is for any HTTP server.
//!
//! The gateway initializes the child itself and answers each client's `initialize`
//! with the child's answer (`wrap`, which has exactly one client, passes the client's
//! own `initialize` through instead, so its capabilities reach the server). Requests
//! the child sends (sampling, elicitation, roots) cannot be routed to one of several
//! clients: the gateway answers them with an error; `wrap` passes them to its client.
//!
//! A child that exits is started again, after 0.5 s doubling up to 30 s while it keeps
//! failing; its calls in flight get a JSON-RPC error that says so. The child's stderr
//! goes to the log, line by line. Its environment is only what is given (`--env`,
//! `--env-file`) plus `PATH` and `HOME`, never the gateway's whole environment.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, watch};
use tower_mcp_policy::layer::PolicyBody;

/// Where the gateway serves a stdio server.
pub const ENDPOINT: &str = "/mcp";

/// The protocol revision the gateway asks the child for when it initializes it.
const PROTOCOL_VERSION: &str = "2025-06-18";

/// The command that starts the server: program, arguments, environment.
#[derive(Debug, Clone)]
pub struct ServerCommand {
    pub program: String,
    pub args: Vec<String>,
    /// Variables set for the child, besides `PATH` and `HOME`.
    pub env: Vec<(String, String)>,
}

impl ServerCommand {
    /// `COMMAND ARGS…` as given after `--`.
    pub fn new(command: &[String]) -> Result<ServerCommand, String> {
        let (program, args) = command.split_first().ok_or("no command given after --")?;
        Ok(ServerCommand {
            program: program.clone(),
            args: args.to_vec(),
            env: Vec::new(),
        })
    }

    /// Adds `NAME=VALUE` to the child's environment.
    pub fn env(mut self, assignment: &str) -> Result<ServerCommand, String> {
        let (name, value) = assignment
            .split_once('=')
            .filter(|(name, _)| !name.is_empty())
            .ok_or_else(|| format!("{assignment:?} is not NAME=VALUE"))?;
        self.env.push((name.to_owned(), value.to_owned()));
        Ok(self)
    }

    /// Adds every `NAME=VALUE` line of `path` (blank lines and `#` comments skipped).
    pub fn env_file(mut self, path: &Path) -> Result<ServerCommand, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the environment file {}: {e}", path.display()))?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            self = self
                .env(line.strip_prefix("export ").unwrap_or(line))
                .map_err(|e| format!("{}:{}: {e}", path.display(), number + 1))?;
        }
        Ok(self)
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command.envs(self.env.iter().map(|(n, v)| (n, v)));
        command.spawn()
    }
}

impl std::fmt::Display for ServerCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.program)?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// The command line of a stdio server: `-- COMMAND ARGS…`, `--env`, `--env-file`.
#[derive(Debug, Default, clap::Args)]
pub struct ServerArgs {
    /// A stdio MCP server to start: `-- npx -y @scope/server ARGS`. One child serves
    /// every client; it is restarted when it exits.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// A variable for the command's environment, NAME=VALUE; repeatable. The command
    /// gets only these, --env-file's, PATH and HOME.
    #[arg(long = "env", value_name = "NAME=VALUE", requires = "command")]
    pub env: Vec<String>,
    /// A file of NAME=VALUE lines for the command's environment.
    #[arg(long = "env-file", value_name = "FILE", requires = "command")]
    pub env_file: Option<std::path::PathBuf>,
}

impl ServerArgs {
    /// The command with its environment.
    pub fn server_command(&self) -> Result<ServerCommand, String> {
        let mut command = ServerCommand::new(&self.command)?;
        if let Some(file) = &self.env_file {
            command = command.env_file(file)?;
        }
        for assignment in &self.env {
            command = command.env(assignment)?;
        }
        Ok(command)
    }
}

/// Who the child's own requests and unrelated messages go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    /// Any number of HTTP clients: the gateway initializes the child and answers the
    /// child's requests with an error.
    Many,
    /// Exactly one client (`wrap`): its `initialize` passes through, and what the
    /// child sends unasked goes to it.
    One,
}

/// A call written to the child and not answered yet.
struct Pending {
    /// The client's own id, put back on the answer.
    id: Value,
    /// The client's progress token, when the call had one.
    progress: Option<Value>,
    /// The client's session, for `notifications/cancelled`.
    session: String,
    answers: mpsc::UnboundedSender<Value>,
}

#[derive(Default)]
struct State {
    stdin: Option<mpsc::UnboundedSender<String>>,
    pending: HashMap<u64, Pending>,
    /// The child's answer to `initialize` (the gateway's own, or the one client's).
    initialized: Option<Value>,
    /// The one client's `initialize` request and whether it sent `initialized`, to
    /// replay to a restarted child.
    handshake: Option<Value>,
    /// Why the child is not running, when it is not.
    down: Option<String>,
}

struct Shared {
    command: ServerCommand,
    clients: Clients,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Messages the child sent unasked, for the one client (`Clients::One`).
    unsolicited: Option<mpsc::UnboundedSender<Value>>,
    /// Bumped each time the child is ready (initialized, in `Clients::Many`).
    ready: watch::Sender<u64>,
}

/// The stdio server as a tower service (what `PolicyLayer` wraps). Cheap to clone; the
/// child is stopped when the last clone is dropped.
#[derive(Clone)]
pub struct StdioServer {
    shared: Arc<Shared>,
    _running: Arc<Running>,
}

/// Stops the child (and its restarts) when dropped.
struct Running(watch::Sender<bool>);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// The answer body: one JSON message, or an SSE stream of them.
pub struct StdioBody {
    once: Option<Bytes>,
    stream: Option<mpsc::UnboundedReceiver<Bytes>>,
}

impl http_body::Body for StdioBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(bytes) = self.once.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        match &mut self.stream {
            Some(stream) => stream
                .poll_recv(cx)
                .map(|bytes| bytes.map(|b| Ok(Frame::data(b)))),
            None => Poll::Ready(None),
        }
    }
}

impl StdioServer {
    /// Starts `command` and keeps it running (restarting it when it exits) for as
    /// long as the returned service or a clone of it lives.
    /// With [`Clients::One`], `unsolicited` receives what the child sends unasked.
    pub fn start(
        command: ServerCommand,
        clients: Clients,
    ) -> (StdioServer, mpsc::UnboundedReceiver<Value>) {
        let (unsolicited, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            command,
            clients,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            unsolicited: (clients == Clients::One).then_some(unsolicited),
            ready: watch::channel(0).0,
        });
        let (running, stopped) = watch::channel(false);
        tokio::spawn(supervise(Arc::downgrade(&shared), stopped));
        let server = StdioServer {
            shared,
            _running: Arc::new(Running(running)),
        };
        (server, receiver)
    }

    /// The command, for messages.
    pub fn command(&self) -> &ServerCommand {
        &self.shared.command
    }

    /// Whether the child is running (and, for many clients, initialized); why not.
    pub fn readiness(&self) -> Result<(), String> {
        let state = self.shared.state.lock().expect("not poisoned");
        // Its stdin is there once it runs (and, for many clients, once the gateway
        // initialized it).
        match (&state.down, &state.stdin) {
            (Some(why), _) => Err(why.clone()),
            (None, None) => Err("the server is starting".to_owned()),
            (None, Some(_)) => Ok(()),
        }
    }

    /// True while the child is started for the first time (not yet running, and not
    /// down).
    fn starting(&self) -> bool {
        let state = self.shared.state.lock().expect("not poisoned");
        state.down.is_none() && state.stdin.is_none()
    }

    /// Waits (up to `timeout`) until the child is ready.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let mut ready = self.shared.ready.subscribe();
        let wait = async {
            loop {
                if self.readiness().is_ok() {
                    return;
                }
                if ready.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.readiness()
    }

    async fn handle(self, request: Request<PolicyBody>) -> Response<StdioBody> {
        if request.uri().path() != ENDPOINT {
            let mut response = plain(StatusCode::NOT_FOUND, "");
            response.body_mut().once = Some(Bytes::from_static(b"not found"));
            return response;
        }
        match *request.method() {
            Method::POST => {}
            // No stream of the server's own: the spec lets a server answer GET with 405.
            Method::GET => return plain(StatusCode::METHOD_NOT_ALLOWED, "POST, DELETE"),
            Method::DELETE => return plain(StatusCode::OK, ""),
            _ => return plain(StatusCode::METHOD_NOT_ALLOWED, "POST, DELETE"),
        }
        let session = request
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return error_answer(Value::Null, -32700, "the request body was cut off"),
        };
        // The policy layer in front has read and checked the message already.
        let Ok(Value::Object(mut message)) = serde_json::from_slice::<Value>(&body) else {
            return error_answer(Value::Null, -32700, "not one JSON-RPC message");
        };
        // A message that arrives while the child starts waits for it: written before,
        // it would be lost, and its caller would wait for an answer forever.
        if self.starting()
            && let Err(why) = self.wait_ready(Duration::from_secs(30)).await
            && let Some(id) = message.get("id").filter(|_| message.contains_key("method"))
        {
            let text = format!("the MCP server is not running: {why}");
            return error_answer(id.clone(), -32603, &text);
        }
        let method = message
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let id = message.get("id").cloned();
        match (method.as_deref(), id) {
            (Some("initialize"), Some(id)) if self.shared.clients == Clients::Many => {
                self.initialize(id).await
            }
            (Some(_), Some(id)) => {
                if method.as_deref() == Some("initialize") {
                    let mut state = self.shared.state.lock().expect("not poisoned");
                    state.handshake = Some(Value::Object(message.clone()));
                }
                self.call(id, &mut message, session).await
            }
            (Some(method), None) => {
                if method == "notifications/initialized" && self.shared.clients == Clients::Many {
                    return plain(StatusCode::ACCEPTED, "");
                }
                if method == "notifications/cancelled" {
                    self.cancelled(&mut message, &session);
                }
                self.write(&Value::Object(message));
                plain(StatusCode::ACCEPTED, "")
            }
            // A client's answer to a request of the child's: only one client can have
            // been asked.
            (None, Some(_)) if self.shared.clients == Clients::One => {
                self.write(&Value::Object(message));
                plain(StatusCode::ACCEPTED, "")
            }
            (None, _) => plain(StatusCode::ACCEPTED, ""),
        }
    }

    /// A client's `initialize` (many clients): the child's own answer to the
    /// gateway's, with a session id of the gateway's.
    async fn initialize(&self, id: Value) -> Response<StdioBody> {
        if let Err(why) = self.wait_ready(Duration::from_secs(30)).await {
            return error_answer(id, -32603, &format!("the MCP server is not ready: {why}"));
        }
        let result = {
            let state = self.shared.state.lock().expect("not poisoned");
            state.initialized.clone()
        };
        let mut response = json_answer(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
        let mut session = [0u8; 16];
        if getrandom::fill(&mut session).is_ok() {
            let session: String = session.iter().map(|b| format!("{b:02x}")).collect();
            if let Ok(value) = HeaderValue::from_str(&session) {
                response.headers_mut().insert("mcp-session-id", value);
            }
        }
        response
    }

    /// Writes a call to the child under an id of the gateway's; answers it with JSON,
    /// or with SSE when the call asked for progress.
    async fn call(
        &self,
        id: Value,
        message: &mut serde_json::Map<String, Value>,
        session: String,
    ) -> Response<StdioBody> {
        let ours = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        message.insert("id".to_owned(), json!(ours));
        let token = message
            .get_mut("params")
            .and_then(|p| p.get_mut("_meta"))
            .and_then(|m| m.as_object_mut())
            .and_then(|meta| {
                let token = meta.remove("progressToken")?;
                meta.insert("progressToken".to_owned(), json!(format!("gw-{ours}")));
                Some(token)
            });
        let (answers, mut answered) = mpsc::unbounded_channel();
        {
            let mut state = self.shared.state.lock().expect("not poisoned");
            if let Some(why) = &state.down {
                return error_answer(id, -32603, &format!("the MCP server is not running: {why}"));
            }
            state.pending.insert(
                ours,
                Pending {
                    id: id.clone(),
                    progress: token.clone(),
                    session,
                    answers,
                },
            );
        }
        self.write(&Value::Object(message.clone()));
        if token.is_none() {
            let answer = answered.recv().await.unwrap_or_else(|| gone(&id));
            return json_answer(&answer);
        }
        // Progress first, then the answer, as SSE.
        let (frames, stream) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = answered.recv().await {
                let last = message.get("method").is_none();
                if frames.send(sse(&message)).is_err() || last {
                    return;
                }
            }
        });
        let mut response = Response::new(StdioBody {
            once: None,
            stream: Some(stream),
        });
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
    }

    /// `notifications/cancelled`: the request it names is the gateway's id.
    fn cancelled(&self, message: &mut serde_json::Map<String, Value>, session: &str) {
        let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) else {
            return;
        };
        let Some(named) = params.get("requestId").cloned() else {
            return;
        };
        let state = self.shared.state.lock().expect("not poisoned");
        let ours = state
            .pending
            .iter()
            .find(|(_, p)| p.id == named && p.session == session)
            .map(|(ours, _)| *ours);
        // An id the gateway does not know reaches the child as one it does not know.
        params.insert(
            "requestId".to_owned(),
            ours.map_or(json!("gw-unknown"), |ours| json!(ours)),
        );
    }

    fn write(&self, message: &Value) {
        let state = self.shared.state.lock().expect("not poisoned");
        if let Some(stdin) = &state.stdin {
            let _ = stdin.send(message.to_string());
        }
    }
}

impl tower_service::Service<Request<PolicyBody>> for StdioServer {
    type Response = Response<StdioBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<StdioBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<PolicyBody>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move { Ok(server.handle(request).await) })
    }
}

/// Runs the child, again and again, until the service is dropped.
async fn supervise(shared: std::sync::Weak<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let started = Instant::now();
        // Dropping the child's future kills the child (`kill_on_drop`).
        let why = tokio::select! {
            why = run_child(&strong) => why,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        tracing::warn!(command = %strong.command, "the MCP server stopped: {why}; starting it again in {backoff:?}");
        {
            let mut state = strong.state.lock().expect("not poisoned");
            state.stdin = None;
            state.initialized = None;
            state.down = Some(why.clone());
            for (_, pending) in state.pending.drain() {
                let _ = pending.answers.send(json!({
                    "jsonrpc": "2.0", "id": pending.id,
                    "error": {"code": -32603, "message": format!(
                        "the MCP server process {} stopped before answering ({why}); it is being restarted",
                        strong.command.program)}
                }));
            }
        }
        drop(strong);
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(500);
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Starts the child, initializes it when the gateway must, and routes what it says
/// until it exits; why it stopped.
async fn run_child(shared: &Arc<Shared>) -> String {
    let mut child = match shared.command.spawn() {
        Ok(child) => child,
        Err(err) => return format!("cannot start {}: {err}", shared.command),
    };
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let program = shared.command.program.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(server = %program, "{line}");
        }
    });
    let (writer, lines) = mpsc::unbounded_channel::<String>();
    tokio::spawn(write_lines(stdin, lines));
    let mut stdout = BufReader::new(stdout).lines();

    // The handshake: the gateway's own (many clients), or the one client's, replayed.
    let handshake = {
        let state = shared.state.lock().expect("not poisoned");
        match shared.clients {
            Clients::Many => Some(json!({"jsonrpc": "2.0", "id": "mcp-policy-initialize",
                "method": "initialize", "params": {
                    "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                    "clientInfo": {"name": "mcp-policy gateway", "version": env!("CARGO_PKG_VERSION")}}})),
            Clients::One => state.handshake.clone().map(|mut replay| {
                replay["id"] = json!("mcp-policy-initialize");
                replay
            }),
        }
    };
    if let Some(handshake) = handshake {
        let _ = writer.send(handshake.to_string());
        let answer = loop {
            match tokio::time::timeout(Duration::from_secs(60), stdout.next_line()).await {
                Err(_) => return "no answer to initialize within 60s".to_owned(),
                Ok(Ok(Some(line))) => {
                    let Ok(message) = serde_json::from_str::<Value>(&line) else {
                        tracing::warn!(server = %shared.command.program, "not JSON on stdout: {line}");
                        continue;
                    };
                    if message["id"] == "mcp-policy-initialize" {
                        break message;
                    }
                }
                Ok(_) => return exit_reason(&mut child).await,
            }
        };
        if answer.get("result").is_none() {
            return format!("it refused initialize: {}", answer["error"]);
        }
        let _ = writer
            .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string());
        let mut state = shared.state.lock().expect("not poisoned");
        state.initialized = answer.get("result").cloned();
    }
    {
        let mut state = shared.state.lock().expect("not poisoned");
        state.stdin = Some(writer.clone());
        state.down = None;
    }
    shared.ready.send_modify(|n| *n += 1);
    tracing::info!(command = %shared.command, "the MCP server is running");

    loop {
        match stdout.next_line().await {
            Ok(Some(line)) => match serde_json::from_str::<Value>(&line) {
                Ok(message) => route(shared, &writer, message),
                Err(_) => {
                    tracing::warn!(server = %shared.command.program, "not JSON on stdout: {line}")
                }
            },
            _ => return exit_reason(&mut child).await,
        }
    }
}

async fn write_lines(mut stdin: ChildStdin, mut lines: mpsc::UnboundedReceiver<String>) {
    while let Some(mut line) = lines.recv().await {
        line.push('\n');
        if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
}

async fn exit_reason(child: &mut Child) -> String {
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(status)) => format!("it exited ({status})"),
        Ok(Err(err)) => format!("it could not be waited for: {err}"),
        Err(_) => {
            let _ = child.kill().await;
            "it closed its stdout and was stopped".to_owned()
        }
    }
}

/// One message from the child: an answer or progress to the call it belongs to; the
/// child's own requests and other messages to the one client, or (many clients)
/// requests answered with an error and the rest logged.
fn route(shared: &Shared, writer: &mpsc::UnboundedSender<String>, mut message: Value) {
    let is_answer = message.get("method").is_none();
    if is_answer && let Some(ours) = message.get("id").and_then(Value::as_u64) {
        let pending = shared
            .state
            .lock()
            .expect("not poisoned")
            .pending
            .remove(&ours);
        if let Some(pending) = pending {
            message["id"] = pending.id;
            let _ = pending.answers.send(message);
            return;
        }
    }
    if message["method"] == "notifications/progress"
        && let Some(token) = message["params"]["progressToken"].as_str()
        && let Some(ours) = token
            .strip_prefix("gw-")
            .and_then(|n| n.parse::<u64>().ok())
    {
        let state = shared.state.lock().expect("not poisoned");
        if let Some(pending) = state.pending.get(&ours)
            && let Some(original) = &pending.progress
        {
            message["params"]["progressToken"] = original.clone();
            let _ = pending.answers.send(message);
        }
        return;
    }
    if let Some(one) = &shared.unsolicited {
        let _ = one.send(message);
        return;
    }
    match (
        message.get("method").and_then(Value::as_str),
        message.get("id"),
    ) {
        (Some("ping"), Some(id)) => {
            let _ = writer.send(json!({"jsonrpc": "2.0", "id": id, "result": {}}).to_string());
        }
        (Some(method), Some(id)) => {
            let _ = writer.send(
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!(
                    "{method} cannot be routed to a client: the gateway serves several clients over HTTP")}})
                .to_string(),
            );
        }
        (Some(method), None) => {
            tracing::debug!(server = %shared.command.program, "{method} from the server, not routed")
        }
        (None, _) => {}
    }
}

/// The answer to a call whose child went away without a word.
fn gone(id: &Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603,
        "message": "the MCP server process stopped before answering"}})
}

fn sse(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

fn json_answer(message: &Value) -> Response<StdioBody> {
    let mut response = Response::new(StdioBody {
        once: Some(Bytes::from(message.to_string())),
        stream: None,
    });
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error_answer(id: Value, code: i64, message: &str) -> Response<StdioBody> {
    json_answer(&json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}))
}

fn plain(status: StatusCode, allow: &str) -> Response<StdioBody> {
    let mut response = Response::new(StdioBody {
        once: None,
        stream: None,
    });
    *response.status_mut() = status;
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_str(allow).expect("ASCII"));
    }
    response
}
