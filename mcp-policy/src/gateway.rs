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
//! requests finish. No TLS: put it behind your usual front proxy.
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
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_layer::Layer;
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::{Grant, PolicyHandle, PolicyLayer, counter::CounterStore};

use super::serving;

/// The response body the proxy hands back: the upstream's, streamed, or its own error.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Where requests go: `http://host:port/path`.
#[derive(Debug, Clone)]
pub struct Upstream {
    uri: Uri,
    authority: HeaderValue,
}

impl Upstream {
    /// Parses an `http://` URL with a path (the MCP endpoint).
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid upstream URL {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "upstream {url:?} must be an http:// URL (the gateway does not speak TLS; terminate TLS in front of it)"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("upstream {url:?} has no host"))?
            .as_str()
            .parse()
            .map_err(|_| format!("upstream {url:?} has an invalid host"))?;
        Ok(Upstream { uri, authority })
    }

    /// The endpoint path the gateway serves, e.g. `/mcp`.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// Whether the upstream accepts a TCP connection within two seconds; why not.
    pub async fn reachable(&self) -> Result<(), String> {
        let authority = self.uri.authority().expect("checked in parse");
        let port = authority.port_u16().unwrap_or(80);
        let connect = tokio::net::TcpStream::connect((authority.host(), port));
        match tokio::time::timeout(Duration::from_secs(2), connect).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("no answer within 2s".to_owned()),
        }
    }

    /// A warning for an upstream URL without a path: the gateway would serve `/`,
    /// while MCP clients are usually given `/mcp`.
    pub fn path_warning(&self) -> Option<String> {
        (self.uri.path() == "/").then(|| {
            format!(
                "the upstream URL {self} has no path, so the gateway serves its MCP endpoint at / \
                 (and answers 404 elsewhere); MCP servers usually serve /mcp: give the endpoint's full URL"
            )
        })
    }

    fn target(&self, incoming: &Uri) -> Uri {
        let path_and_query = match incoming.query() {
            Some(query) => format!("{}?{query}", self.uri.path()),
            None => self.uri.path().to_owned(),
        };
        Uri::builder()
            .scheme("http")
            .authority(self.uri.authority().expect("checked in parse").clone())
            .path_and_query(path_and_query)
            .build()
            .expect("built from a valid URI")
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.uri)
    }
}

/// The forwarding service that `PolicyLayer` wraps.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, PolicyBody>,
    pub(crate) upstream: Arc<Upstream>,
    /// Under a grants file: the grants in force, whose upstream credentials replace
    /// the caller's.
    grants: Option<PolicyHandle>,
    /// Headers set on every request to the upstream.
    headers: Arc<Vec<(HeaderName, HeaderValue)>>,
}

impl Proxy {
    pub fn new(upstream: Upstream) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Proxy {
            client,
            upstream: Arc::new(upstream),
            grants: None,
            headers: Arc::default(),
        }
    }

    /// Sets `headers` on every request to the upstream (replacing the client's, if it
    /// sent the same ones).
    pub fn with_headers(mut self, headers: Vec<(HeaderName, HeaderValue)>) -> Proxy {
        self.headers = Arc::new(headers);
        self
    }

    /// Under a grants file: the caller's `Authorization` and `Cookie` never reach the
    /// upstream; the upstream credential of the caller's grant (or the file's global
    /// one) is sent instead, as the grants in force through `handle` say.
    pub fn with_grants(mut self, handle: PolicyHandle) -> Proxy {
        self.grants = Some(handle);
        self
    }

    /// The caller's credentials out, the grant's upstream credential in.
    fn credentials(&self, parts: &mut http::request::Parts) {
        let Some(handle) = &self.grants else {
            return;
        };
        parts.headers.remove(header::AUTHORIZATION);
        parts.headers.remove(header::COOKIE);
        let grant = parts.extensions.get::<Grant>().map(Grant::as_str);
        if let Some((name, value)) = handle.grants().upstream_credential(grant) {
            parts.headers.insert(name.clone(), value.clone());
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

fn bad_gateway(upstream: &Upstream, reason: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": -32603, "message": format!("upstream MCP server {upstream} is unavailable: {reason}") }
    });
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl tower_service::Service<Request<PolicyBody>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<PolicyBody>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let upstream = self.upstream.clone();
        let client = self.client.clone();
        let proxy = self.clone();
        Box::pin(async move {
            if parts.uri.path() != upstream.path() {
                let mut response =
                    Response::new(Either::Right(Full::new(Bytes::from_static(b"not found"))));
                *response.status_mut() = StatusCode::NOT_FOUND;
                return Ok(response);
            }
            parts.uri = upstream.target(&parts.uri);
            for (name, value) in proxy.headers.iter() {
                parts.headers.insert(name.clone(), value.clone());
            }
            proxy.credentials(&mut parts);
            parts.version = http::Version::HTTP_11;
            strip_hop_by_hop(&mut parts.headers);
            parts
                .headers
                .insert(header::HOST, upstream.authority.clone());
            match client.request(Request::from_parts(parts, body)).await {
                Ok(response) => {
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Ok(Response::from_parts(parts, Either::Left(body)))
                }
                Err(err) => {
                    let reason = match std::error::Error::source(&err) {
                        Some(source) => format!("{err}: {source}"),
                        None => err.to_string(),
                    };
                    tracing::warn!(upstream = %upstream, "{reason}");
                    Ok(bad_gateway(&upstream, &reason))
                }
            }
        })
    }
}

/// Serves `layer` around a [`Proxy`] to `upstream` on `listener` until `shutdown`
/// resolves, then waits (up to 30 s) for in-flight connections to finish.
pub async fn serve<S: CounterStore>(
    listener: TcpListener,
    layer: PolicyLayer<S>,
    upstream: Upstream,
    shutdown: impl Future<Output = ()>,
) {
    serve_proxy(listener, layer, Proxy::new(upstream), shutdown).await;
}

/// [`serve`] with a proxy of one's own (one that swaps credentials, say).
pub async fn serve_proxy<S: CounterStore>(
    listener: TcpListener,
    layer: PolicyLayer<S>,
    proxy: Proxy,
    shutdown: impl Future<Output = ()>,
) {
    let upstream = proxy.upstream.clone();
    let service = WithMetrics(layer.layer(proxy), upstream);
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
pub struct WithMetrics<S>(S, Arc<Upstream>);

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

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let get = request.method() == http::Method::GET;
        if get && request.uri().path() == "/healthz" {
            return Box::pin(std::future::ready(Ok(plain(StatusCode::OK, "ok\n"))));
        }
        if get && request.uri().path() == "/readyz" {
            let upstream = self.1.clone();
            return Box::pin(async move {
                Ok(match upstream.reachable().await {
                    Ok(()) => plain(StatusCode::OK, "ready\n"),
                    Err(reason) => plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("not ready: upstream {upstream}: {reason}\n"),
                    ),
                })
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
        required_unless_present = "grants",
        env = "MCP_POLICY_POLICY"
    )]
    pub policy: Option<PathBuf>,
    /// The MCP server's Streamable HTTP endpoint; the gateway serves the same path.
    #[arg(long, value_name = "URL", value_parser = Upstream::parse, env = "MCP_POLICY_UPSTREAM")]
    pub upstream: Upstream,
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
    #[command(flatten)]
    pub store: serving::Serving,
}

/// Runs the gateway until Ctrl-C or SIGTERM.
pub async fn main(options: Options) {
    serving::init_tracing();
    let policy = options.policy.as_deref();
    match serving::load_layer("mcp-policy gateway", policy, &options.store).await {
        serving::AnyLayer::Memory(layer) => run(layer, options).await,
        serving::AnyLayer::Redis(layer) => run(layer, options).await,
    }
}

async fn run<S: CounterStore + Clone>(layer: PolicyLayer<S>, options: Options) {
    let program = "mcp-policy gateway";
    if let Some(warning) = options.upstream.path_warning() {
        eprintln!("{program}: warning: {warning}");
        tracing::warn!("{warning}");
    }
    if let Err(reason) = options.upstream.reachable().await {
        eprintln!(
            "{program}: warning: the upstream {} cannot be reached now ({reason}); requests get 502 until it can (GET /readyz tells)",
            options.upstream
        );
    }
    let _watcher = serving::watch(program, &layer, options.policy.as_deref(), &options.store);
    let listener = serving::bind(program, options.listen).await;
    let address = listener
        .local_addr()
        .expect("a bound listener has an address");
    println!(
        "policy gateway listening on http://{address}{} -> {}",
        options.upstream.path(),
        options.upstream
    );
    println!(
        "{}",
        serving::banner(&layer, options.policy.as_deref(), &options.store)
    );
    println!("{}", serving::describe(&options.store));
    let mut proxy = Proxy::new(options.upstream).with_headers(options.upstream_headers);
    if options.store.grants.is_some() {
        proxy = proxy.with_grants(layer.handle());
    }
    serve_proxy(listener, layer, proxy, signal()).await;
    println!("gateway stopped");
}
