//! Several MCP servers behind one gateway: the configuration file (`--config FILE`),
//! each server served at `/NAME/mcp` behind its own policy, and the file's hot reload.
//!
//! ```json
//! { "servers": {
//!     "files":    { "command": ["npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv"],
//!                   "policy": "files.json" },
//!     "payments": { "url": "https://payments.internal/mcp", "ca": "ca.pem",
//!                   "grants": "grants.json" } } }
//! ```
//!
//! Paths in the file are relative to the file. The options given on the command line
//! (`--redis`, `--watch`, `--monitor`, `--list-only-allowed`, `--candidate`) apply to
//! every server; each server's metrics carry a `server` label and its Redis keys its
//! name, so two servers never share a counter.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use serde::Deserialize;
use tower_layer::Layer;
use tower_mcp_policy::PolicyLayer;
use tower_mcp_policy::counter::CounterStore;
use tower_service::Service;

use super::{Clients, Proxy, Readiness, ServerCommand, StdioServer, Upstream};
use crate::serving::{self, AnyLayer, Serving};

/// The gateway's configuration file: the servers behind it.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// A JSON Schema reference for editors; ignored.
    #[serde(rename = "$schema", default)]
    #[allow(dead_code)]
    schema: Option<String>,
    /// The servers by name; each is served at `/NAME/mcp`. Names are letters, digits,
    /// `-` and `_`.
    pub servers: BTreeMap<String, ServerEntry>,
}

/// One server behind the gateway: where it is (`url` or `command`) and its policy
/// (`policy` or `grants`).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// The server's Streamable HTTP endpoint, `http://` or `https://`.
    #[serde(default)]
    pub url: Option<String>,
    /// Or the command that starts a stdio server: program and arguments.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Variables for the command's environment (besides `PATH` and `HOME`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A file of `NAME=VALUE` lines for the command's environment.
    #[serde(default)]
    pub env_file: Option<PathBuf>,
    /// For an https server signed by a private CA: that CA's certificate (PEM).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Headers set on every request to an http(s) server.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The policy document for every caller of this server.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Or a grants file: a policy per agent credential.
    #[serde(default)]
    pub grants: Option<PathBuf>,
    /// Tool pins (a lock file `mcp-policy pin` writes) for this server.
    #[serde(default)]
    pub pins: Option<PathBuf>,
}

impl GatewayFile {
    /// Reads and checks the file; paths in it become relative to its directory.
    pub fn load(path: &Path) -> Result<GatewayFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut file: GatewayFile =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if file.servers.is_empty() {
            return Err(format!("{}: no servers", path.display()));
        }
        for (name, entry) in &mut file.servers {
            let at = format!("{}: server {name:?}", path.display());
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "{at}: a name is letters, digits, - and _ (it is a path segment)"
                ));
            }
            match (&entry.url, &entry.command) {
                (Some(url), None) => {
                    Upstream::parse(url).map_err(|e| format!("{at}: {e}"))?;
                }
                (None, Some(command)) if !command.is_empty() => {}
                (None, Some(_)) => return Err(format!("{at}: the command is empty")),
                _ => return Err(format!("{at}: give either \"url\" or \"command\"")),
            }
            if entry.policy.is_some() == entry.grants.is_some() {
                return Err(format!("{at}: give either \"policy\" or \"grants\""));
            }
            for path in [
                &mut entry.env_file,
                &mut entry.ca,
                &mut entry.policy,
                &mut entry.grants,
                &mut entry.pins,
            ]
            .into_iter()
            .flatten()
            {
                *path = base.join(&*path);
            }
        }
        Ok(file)
    }

    /// The JSON Schema of the file (draft 2020-12).
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(GatewayFile)).expect("a schema is JSON")
    }
}

/// The answer body of every server.
pub type AnyBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
type AnyFuture = Pin<Box<dyn Future<Output = Response<AnyBody>> + Send>>;

/// One server, built: its policed service and what `/readyz` asks of it.
struct Built {
    entry: ServerEntry,
    /// The path the backend serves (the upstream's path, or `/mcp` for a command).
    path: String,
    call: Box<dyn Fn(Request<Incoming>) -> AnyFuture + Send + Sync>,
    readiness: Readiness,
    /// Its approvals API, at `/NAME/approvals`.
    approvals: Option<crate::approvals::Api>,
    _watchers: Vec<tower_mcp_policy::PolicyWatcher>,
}

/// Builds one server: its policy layer, and a proxy or a child process.
async fn build(name: &str, entry: &ServerEntry, options: &Serving) -> Result<Built, String> {
    let program = format!("mcp-policy gateway: server {name}");
    let mut store = options.clone();
    store.grants.clone_from(&entry.grants);
    store.pins.clone_from(&entry.pins);
    store.server = Some(name.to_owned());
    let layer = serving::build_layer(&program, entry.policy.as_deref(), &store).await?;
    match layer {
        AnyLayer::Memory(layer) => finish(&program, layer, entry, &store).await,
        AnyLayer::Redis(layer) => finish(&program, layer, entry, &store).await,
    }
}

async fn finish<S: CounterStore + Clone>(
    program: &str,
    layer: PolicyLayer<S>,
    entry: &ServerEntry,
    store: &Serving,
) -> Result<Built, String> {
    let watchers = serving::try_watch(&layer, entry.policy.as_deref(), store)?;
    let approvals = super::approvals_api(&layer);
    if let Some(url) = &entry.url {
        let upstream = Upstream::parse(url)?;
        let tls = crate::tls::client_config(entry.ca.as_deref())?;
        let headers = entry
            .headers
            .iter()
            .map(|(name, value)| {
                Ok((
                    HeaderName::try_from(name.as_str())
                        .map_err(|e| format!("header {name:?}: {e}"))?,
                    HeaderValue::try_from(value.as_str())
                        .map_err(|e| format!("header {name:?}: {e}"))?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let path = upstream.path().to_owned();
        let readiness = Readiness::Http(Arc::new(upstream.clone()));
        let mut proxy = Proxy::with_tls(upstream, tls).with_headers(headers);
        if entry.grants.is_some() {
            proxy = proxy.with_grants(layer.handle());
        }
        return Ok(Built {
            entry: entry.clone(),
            path,
            call: boxed(layer.layer(proxy)),
            readiness,
            approvals,
            _watchers: watchers,
        });
    }
    let mut command = ServerCommand::new(entry.command.as_deref().unwrap_or_default())?;
    if let Some(file) = &entry.env_file {
        command = command.env_file(file)?;
    }
    for (name, value) in &entry.env {
        command = command.env(&format!("{name}={value}"))?;
    }
    let (server, _) = StdioServer::start(command, Clients::Many);
    tracing::info!("{program}: starting {}", server.command());
    Ok(Built {
        entry: entry.clone(),
        path: super::STDIO_ENDPOINT.to_owned(),
        readiness: Readiness::Stdio(server.clone()),
        call: boxed(layer.layer(server)),
        approvals,
        _watchers: watchers,
    })
}

/// A policed service as a function from request to answer.
fn boxed<T, B>(service: T) -> Box<dyn Fn(Request<Incoming>) -> AnyFuture + Send + Sync>
where
    T: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    T::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Box::new(move |request| {
        let mut service = service.clone();
        Box::pin(async move {
            // The proxy and the stdio server are always ready; the layer asks them.
            let _ = std::future::poll_fn(|cx| service.poll_ready(cx)).await;
            let Ok(response) = service.call(request).await;
            response.map(|body| body.map_err(Into::into).boxed_unsync())
        })
    })
}

/// The servers built from one version of the file, by name.
type ByName = Arc<BTreeMap<String, Arc<Built>>>;

/// The servers in force, by name; replaced whole on reload.
#[derive(Clone)]
pub struct Servers {
    current: Arc<RwLock<ByName>>,
}

impl Servers {
    /// Builds every server of `file`; the first that cannot be built is the error.
    pub async fn build(file: &GatewayFile, options: &Serving) -> Result<Servers, String> {
        let mut built = BTreeMap::new();
        for (name, entry) in &file.servers {
            let server = build(name, entry, options)
                .await
                .map_err(|e| format!("server {name}: {e}"))?;
            built.insert(name.clone(), Arc::new(server));
        }
        Ok(Servers {
            current: Arc::new(RwLock::new(Arc::new(built))),
        })
    }

    fn snapshot(&self) -> ByName {
        self.current.read().expect("not poisoned").clone()
    }

    /// `NAME -> where` lines, for the start-up banner.
    pub fn describe(&self, address: std::net::SocketAddr) -> Vec<String> {
        self.snapshot()
            .iter()
            .map(|(name, built)| {
                let target = match (&built.entry.url, &built.entry.command) {
                    (Some(url), _) => url.clone(),
                    (_, Some(command)) => command.join(" "),
                    _ => String::new(),
                };
                format!("server {name} at http://{address}/{name}/mcp -> {target}")
            })
            .collect()
    }

    /// Applies a new version of the file: servers whose entry is unchanged keep
    /// running (their counters too); new and changed ones are built; removed ones
    /// stop. A server that cannot be built keeps its old version, if any.
    pub async fn reload(&self, file: &GatewayFile, options: &Serving) {
        let old = self.snapshot();
        let mut next = BTreeMap::new();
        for (name, entry) in &file.servers {
            match old.get(name) {
                Some(built) if built.entry == *entry => {
                    next.insert(name.clone(), built.clone());
                }
                _ => match build(name, entry, options).await {
                    Ok(built) => {
                        tracing::info!(server = %name, "server (re)built from the configuration file");
                        next.insert(name.clone(), Arc::new(built));
                    }
                    Err(err) => {
                        tracing::warn!(server = %name, "the new configuration of this server is kept out: {err}");
                        if let Some(built) = old.get(name) {
                            next.insert(name.clone(), built.clone());
                        }
                    }
                },
            }
        }
        for name in old.keys().filter(|name| !file.servers.contains_key(*name)) {
            tracing::info!(server = %name, "server removed from the configuration file");
        }
        *self.current.write().expect("not poisoned") = Arc::new(next);
    }

    /// Whether every server is ready; why not, server by server.
    pub async fn readiness(&self) -> Result<(), String> {
        let mut not_ready = Vec::new();
        for (name, built) in self.snapshot().iter() {
            if let Err(why) = built.readiness.check().await {
                not_ready.push(format!("{name}: {why}"));
            }
        }
        if not_ready.is_empty() {
            Ok(())
        } else {
            Err(not_ready.join("; "))
        }
    }

    /// Watches `path` (every second) and reloads on a change; a file that does not
    /// load is reported and the servers in force stay.
    pub fn watch(&self, path: PathBuf, options: Serving) {
        let servers = self.clone();
        tokio::spawn(async move {
            let mut last = std::fs::read(&path).ok();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = std::fs::read(&path).ok();
                if now.is_none() || now == last {
                    continue;
                }
                last = now;
                match GatewayFile::load(&path) {
                    Ok(file) => servers.reload(&file, &options).await,
                    Err(err) => tracing::warn!(
                        "the configuration file does not load; the servers in force stay: {err}"
                    ),
                }
            }
        });
    }
}

impl Service<Request<Incoming>> for Servers {
    type Response = Response<AnyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<AnyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// `/NAME/mcp` goes to server NAME, at the path its backend serves;
    /// `/NAME/approvals` is server NAME's approvals API.
    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        let path = request.uri().path();
        let approvals = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .filter(|(_, rest)| crate::approvals::Api::serves(&format!("/{rest}")))
            .and_then(|(name, rest)| Some((self.snapshot().get(name)?.approvals.clone()?, rest)));
        if let Some((api, rest)) = approvals {
            let (method, path) = (request.method().clone(), format!("/{rest}"));
            let headers = std::mem::take(request.headers_mut());
            return Box::pin(async move {
                let reply = api.answer(&method, &path, &headers).await;
                let response = reply.into_response::<http_body_util::Full<Bytes>>();
                Ok(response.map(|body| body.map_err(|never| match never {}).boxed_unsync()))
            });
        }
        let found = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .filter(|(_, rest)| *rest == "mcp")
            .and_then(|(name, _)| self.snapshot().get(name).cloned());
        let Some(built) = found else {
            return Box::pin(std::future::ready(Ok(not_found())));
        };
        let path_and_query = match request.uri().query() {
            Some(query) => format!("{}?{query}", built.path),
            None => built.path.clone(),
        };
        let mut parts = request.uri().clone().into_parts();
        parts.path_and_query = path_and_query.parse().ok();
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        let future = (built.call)(request);
        Box::pin(async move { Ok(future.await) })
    }
}

fn not_found() -> Response<AnyBody> {
    let body =
        http_body_util::Full::new(Bytes::from_static(b"not found: servers are at /NAME/mcp"))
            .map_err(|never| match never {})
            .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}
