//! `mcp-policy gateway`: a policy gateway in front of any MCP server that speaks
//! Streamable HTTP.
//!
//! ```text
//! mcp-policy gateway (--policy PATH | --grants PATH) --upstream http://127.0.0.1:3001/mcp [--listen 127.0.0.1:8080] [--redis URL [--fail-open]] [--watch] [--monitor] [--candidate FILE]
//! ```
//!
//! `GET /metrics` answers Prometheus text, outside the policy.
//!
//! It is `PolicyLayer` wrapped around a small reverse proxy built on hyper-util's
//! client: POST, GET (SSE) and DELETE on the upstream's endpoint path are forwarded over
//! HTTP/1.1, request bodies once the policy has read them, response bodies (SSE
//! included) frame by frame as they arrive. Hop-by-hop headers are dropped, `Host` is
//! set for the upstream, everything else passes both ways. An unreachable upstream gets
//! a 502 with a JSON-RPC error; Ctrl-C or SIGTERM stops accepting and lets in-flight
//! requests finish. The upstream may be `https://` (rustls; the system's roots, and
//! `--upstream-ca FILE` for a private CA); the gateway itself listens on plain HTTP:
//! put it behind your usual front proxy for TLS to the clients.
//!
//! With `--grants FILE` each agent presents its own bearer token and is judged under its
//! grant's policy; an unknown or revoked token reaches nothing (401). The caller's
//! `Authorization` and `Cookie` never reach the upstream: the grant's upstream
//! credential (or the file's global one) is sent instead.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_layer::Layer;
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::{PolicyLayer, counter::CounterStore};

use super::serving;

mod servers;
mod stdio;
mod upstream;

pub use servers::{GatewayFile, Servers};
pub use stdio::{
    Clients, ENDPOINT as STDIO_ENDPOINT, ServerArgs, ServerCommand, StdioBody, StdioServer,
};
pub use upstream::{Proxy, ProxyBody, Upstream};

/// What `GET /readyz` asks: whether the upstream accepts connections, or whether the
/// stdio server runs.
#[derive(Clone)]
pub enum Readiness {
    Http(Arc<Upstream>),
    Stdio(StdioServer),
    Several(Servers),
}

impl Readiness {
    async fn check(&self) -> Result<(), String> {
        match self {
            Readiness::Http(upstream) => upstream
                .reachable()
                .await
                .map_err(|why| format!("upstream {upstream}: {why}")),
            Readiness::Stdio(server) => server
                .readiness()
                .map_err(|why| format!("server {}: {why}", server.command())),
            // Boxed: a server's own readiness is one of the other two kinds.
            Readiness::Several(servers) => Box::pin(servers.readiness()).await,
        }
    }
}

/// Serves `layer` around a [`Proxy`] to `upstream` on `listener` until `shutdown`
/// resolves, then waits (up to 30 s) for in-flight connections to finish.
pub async fn serve<S: CounterStore + Clone>(
    listener: TcpListener,
    layer: PolicyLayer<S>,
    upstream: Upstream,
    shutdown: impl Future<Output = ()>,
) {
    serve_proxy(listener, layer, Proxy::new(upstream), shutdown).await;
}

/// [`serve`] with a proxy of one's own (one that swaps credentials, say).
pub async fn serve_proxy<S: CounterStore + Clone>(
    listener: TcpListener,
    layer: PolicyLayer<S>,
    proxy: Proxy,
    shutdown: impl Future<Output = ()>,
) {
    let readiness = Readiness::Http(proxy.upstream.clone());
    serve_backend(listener, layer, proxy, readiness, shutdown).await;
}

/// Serves `layer` around a stdio server (see [`StdioServer`]) at `/mcp`.
pub async fn serve_stdio<S: CounterStore + Clone>(
    listener: TcpListener,
    layer: PolicyLayer<S>,
    server: StdioServer,
    shutdown: impl Future<Output = ()>,
) {
    let readiness = Readiness::Stdio(server.clone());
    serve_backend(listener, layer, server, readiness, shutdown).await;
}

async fn serve_backend<S, P, B>(
    listener: TcpListener,
    layer: PolicyLayer<S>,
    backend: P,
    readiness: Readiness,
    shutdown: impl Future<Output = ()>,
) where
    S: CounterStore + Clone,
    P: tower_service::Service<Request<PolicyBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    P::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let approvals = approvals_api(&layer);
    serve_http(
        listener,
        WithMetrics(layer.layer(backend), readiness, approvals),
        shutdown,
    )
    .await;
}

/// Serves several servers (see [`Servers`]), each at `/NAME/mcp`.
pub async fn serve_servers(
    listener: TcpListener,
    servers: Servers,
    shutdown: impl Future<Output = ()>,
) {
    let readiness = Readiness::Several(servers.clone());
    serve_http(listener, WithMetrics(servers, readiness, None), shutdown).await;
}

async fn serve_http<T, B>(
    listener: TcpListener,
    service: WithMetrics<T>,
    shutdown: impl Future<Output = ()>,
) where
    T: tower_service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    T::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!("accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service.clone()))
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!("connection ended: {err}");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open after 30 s; closing them");
    }
}

/// Answers `GET /metrics` (Prometheus text), `GET /healthz` (liveness: the gateway
/// runs) and `GET /readyz` (readiness: the upstream accepts connections) itself,
/// outside the policy; passes every other request to the policed proxy.
#[derive(Clone)]
pub struct WithMetrics<S>(S, Readiness, Option<crate::approvals::Api>);

/// The approvals API over `layer`, with the approvers [`load_approvers`] loaded (none:
/// the API says no approver is configured).
pub(crate) fn approvals_api<S: CounterStore + Clone>(
    layer: &PolicyLayer<S>,
) -> Option<crate::approvals::Api> {
    let approvers = APPROVERS.get().cloned().unwrap_or_default();
    Some(crate::approvals::Api::new(layer.handle(), approvers))
}

/// The approvers of this process, loaded once at start-up.
static APPROVERS: std::sync::OnceLock<crate::approvals::Approvers> = std::sync::OnceLock::new();

/// Loads the approvers (`MCP_POLICY_APPROVER_TOKEN`, `--approver-token-file`) for the
/// approvals API, or ends the program with what is wrong.
pub fn load_approvers(program: &str, file: Option<&std::path::Path>) {
    match crate::approvals::Approvers::load(file) {
        Ok(approvers) => {
            let _ = APPROVERS.set(approvers);
        }
        Err(err) => {
            eprintln!("{program}: {err}");
            std::process::exit(1);
        }
    }
}

impl<S, B> tower_service::Service<Request<Incoming>> for WithMetrics<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Either<Full<Bytes>, B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        let get = request.method() == http::Method::GET;
        if get && request.uri().path() == "/healthz" {
            return Box::pin(std::future::ready(Ok(plain(StatusCode::OK, "ok\n"))));
        }
        if get && request.uri().path() == "/readyz" {
            let readiness = self.1.clone();
            return Box::pin(async move {
                Ok(match readiness.check().await {
                    Ok(()) => plain(StatusCode::OK, "ready\n"),
                    Err(reason) => plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("not ready: {reason}\n"),
                    ),
                })
            });
        }
        if let Some(api) = &self.2
            && crate::approvals::Api::serves(request.uri().path())
        {
            let (api, method) = (api.clone(), request.method().clone());
            let path = request.uri().path().to_owned();
            let headers = std::mem::take(request.headers_mut());
            return Box::pin(async move {
                let reply = api.answer(&method, &path, &headers).await;
                Ok(reply.into_response::<Full<Bytes>>().map(Either::Left))
            });
        }
        if get && request.uri().path() == "/metrics" {
            let text = serving::metrics().render();
            let mut response = Response::new(Either::Left(Full::new(Bytes::from(text))));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return Box::pin(std::future::ready(Ok(response)));
        }
        let future = self.0.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(Either::Right))
        })
    }
}

/// A plain-text answer of the gateway's own.
fn plain<B>(status: StatusCode, text: &str) -> Response<Either<Full<Bytes>, B>> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(text.to_owned()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// `mcp-policy gateway`: the options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The policy document, for every caller (or --grants: a policy per agent).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present_any = ["grants", "config"],
        conflicts_with = "config",
        env = "MCP_POLICY_POLICY"
    )]
    pub policy: Option<PathBuf>,
    /// Several servers behind this gateway, each with its own policy, from a
    /// configuration file (`mcp-policy schema --gateway`); each is served at
    /// /NAME/mcp. With --watch the file is reloaded when it changes.
    #[arg(long, value_name = "FILE", env = "MCP_POLICY_CONFIG",
          conflicts_with_all = ["upstream", "command", "grants", "pins"])]
    pub config: Option<PathBuf>,
    /// The MCP server's Streamable HTTP endpoint (http:// or https://); the gateway
    /// serves the same path. Or, instead, the command that starts a stdio server,
    /// after `--`.
    #[arg(long, value_name = "URL", value_parser = Upstream::parse, env = "MCP_POLICY_UPSTREAM",
          required_unless_present_any = ["command", "config"], conflicts_with = "command")]
    pub upstream: Option<Upstream>,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Where to listen.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8080",
        env = "MCP_POLICY_LISTEN"
    )]
    pub listen: SocketAddr,
    /// A header to set on every request to the upstream, e.g. "X-Tenant: acme";
    /// repeatable. (Under --grants, credentials come from the grants file.)
    #[arg(long = "upstream-header", value_name = "'NAME: VALUE'", value_parser = crate::check::header)]
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
    /// For an https upstream signed by a private CA: that CA's certificate (PEM),
    /// trusted besides the system's roots.
    #[arg(
        long = "upstream-ca",
        value_name = "FILE",
        env = "MCP_POLICY_UPSTREAM_CA"
    )]
    pub upstream_ca: Option<PathBuf>,
    #[command(flatten)]
    pub store: serving::Serving,
}

/// Runs the gateway until Ctrl-C or SIGTERM.
pub async fn main(options: Options) {
    serving::init_tracing();
    if let Some(config) = &options.config {
        return several(config, &options).await;
    }
    let policy = options.policy.as_deref();
    match serving::load_layer("mcp-policy gateway", policy, &options.store).await {
        serving::AnyLayer::Memory(layer) => run(layer, options).await,
        serving::AnyLayer::Redis(layer) => run(layer, options).await,
    }
}

async fn run<S: CounterStore + Clone>(layer: PolicyLayer<S>, options: Options) {
    let program = "mcp-policy gateway";
    let fail = |err: String| -> ! {
        eprintln!("{program}: {err}");
        std::process::exit(1);
    };
    let upstream = match (&options.upstream, options.server.command.is_empty()) {
        (Some(upstream), true) => Ok(upstream.clone()),
        (None, false) => Err(options
            .server
            .server_command()
            .unwrap_or_else(|err| fail(err))),
        _ => fail("give either --upstream URL or a command after --".to_owned()),
    };
    let _watcher = serving::watch(program, &layer, options.policy.as_deref(), &options.store);
    load_approvers(program, options.store.approver_token_file.as_deref());
    match upstream {
        Ok(upstream) => {
            let tls = crate::tls::client_config(options.upstream_ca.as_deref())
                .unwrap_or_else(|err| fail(err));
            if let Some(warning) = upstream.path_warning() {
                eprintln!("{program}: warning: {warning}");
                tracing::warn!("{warning}");
            }
            if let Err(reason) = upstream.reachable().await {
                eprintln!(
                    "{program}: warning: the upstream {upstream} cannot be reached now ({reason}); requests get 502 until it can (GET /readyz tells)"
                );
            }
            let listener = serving::bind(program, options.listen).await;
            let address = listener
                .local_addr()
                .expect("a bound listener has an address");
            println!(
                "policy gateway listening on http://{address}{} -> {upstream}",
                upstream.path()
            );
            print_banner(&layer, &options);
            let mut proxy =
                Proxy::with_tls(upstream, tls).with_headers(options.upstream_headers.clone());
            if options.store.grants.is_some() {
                proxy = proxy.with_grants(layer.handle());
            }
            serve_proxy(listener, layer, proxy, signal()).await;
        }
        Err(command) => {
            let listener = serving::bind(program, options.listen).await;
            let address = listener
                .local_addr()
                .expect("a bound listener has an address");
            let (server, _) = StdioServer::start(command, Clients::Many);
            if let Err(why) = server.wait_ready(Duration::from_secs(60)).await {
                eprintln!(
                    "{program}: warning: the server {} is not ready ({why}); calls get an error until it is (GET /readyz tells)",
                    server.command()
                );
            }
            println!(
                "policy gateway listening on http://{address}{} -> {}",
                STDIO_ENDPOINT,
                server.command()
            );
            print_banner(&layer, &options);
            serve_stdio(listener, layer, server, signal()).await;
        }
    }
    println!("gateway stopped");
}

/// The gateway of several servers, from the configuration file `path`.
async fn several(path: &std::path::Path, options: &Options) {
    let program = "mcp-policy gateway";
    let fail = |err: String| -> ! {
        eprintln!("{program}: {err}");
        std::process::exit(1);
    };
    let file = GatewayFile::load(path).unwrap_or_else(|err| fail(err));
    load_approvers(program, options.store.approver_token_file.as_deref());
    let servers = Servers::build(&file, &options.store)
        .await
        .unwrap_or_else(|err| fail(err));
    if options.store.watch {
        servers.watch(path.to_owned(), options.store.clone());
    }
    let listener = serving::bind(program, options.listen).await;
    let address = listener
        .local_addr()
        .expect("a bound listener has an address");
    println!(
        "policy gateway listening on http://{address} for {} servers of {}",
        file.servers.len(),
        path.display()
    );
    for line in servers.describe(address) {
        println!("{line}");
    }
    println!("{}", serving::describe(&options.store));
    serve_servers(listener, servers, signal()).await;
    println!("gateway stopped");
}

fn print_banner<S: CounterStore + Clone>(layer: &PolicyLayer<S>, options: &Options) {
    println!(
        "{}",
        serving::banner(layer, options.policy.as_deref(), &options.store)
    );
    println!("{}", serving::describe(&options.store));
}
