//! The forwarding service to an upstream MCP server over HTTP: [`Upstream`] (where) and
//! [`Proxy`] (how), which `PolicyLayer` wraps.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::{Grant, PolicyHandle};

/// The response body the proxy hands back: the upstream's, streamed, or its own error.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Where requests go: `http://host:port/path` or `https://…`.
#[derive(Debug, Clone)]
pub struct Upstream {
    uri: Uri,
    authority: HeaderValue,
}

impl Upstream {
    /// Parses an `http://` or `https://` URL with a path (the MCP endpoint).
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid upstream URL {url:?}: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(format!(
                "upstream {url:?} must be an http:// or https:// URL (or, for a server started as a command, give the command after --)"
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
        let default = if self.is_https() { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default);
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

    fn is_https(&self) -> bool {
        self.uri.scheme_str() == Some("https")
    }

    /// The upstream's host name, for messages.
    fn host(&self) -> &str {
        self.uri.host().unwrap_or_default()
    }

    fn target(&self, incoming: &Uri) -> Uri {
        let path_and_query = match incoming.query() {
            Some(query) => format!("{}?{query}", self.uri.path()),
            None => self.uri.path().to_owned(),
        };
        Uri::builder()
            .scheme(self.uri.scheme_str().unwrap_or("http"))
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
    client: Client<HttpsConnector<HttpConnector>, PolicyBody>,
    pub(crate) upstream: Arc<Upstream>,
    /// Under a grants file: the grants in force, whose upstream credentials replace
    /// the caller's.
    grants: Option<PolicyHandle>,
    /// Headers set on every request to the upstream.
    headers: Arc<Vec<(HeaderName, HeaderValue)>>,
}

impl Proxy {
    /// A proxy to `upstream`, trusting the system's root certificates for https.
    pub fn new(upstream: Upstream) -> Proxy {
        let tls = crate::tls::client_config(None).expect("the system's roots alone always load");
        Proxy::with_tls(upstream, tls)
    }

    /// A proxy to `upstream` with TLS settings of one's own (a private CA: see
    /// [`crate::tls::client_config`]).
    pub fn with_tls(upstream: Upstream, tls: rustls::ClientConfig) -> Proxy {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
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
    // Usually there is none: one pass over the names says so, where a removal by name
    // costs a hash and a probe for each of the nine.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
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

/// A hop-by-hop header of RFC 9110 §7.6.1 (or a name proxies treat as one).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
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
                    let reason = crate::tls::explain(upstream.host(), &err, "--upstream-ca")
                        .unwrap_or_else(|| match std::error::Error::source(&err) {
                            Some(source) => format!("{err}: {source}"),
                            None => err.to_string(),
                        });
                    tracing::warn!(upstream = %upstream, "{reason}");
                    Ok(bad_gateway(&upstream, &reason))
                }
            }
        })
    }
}
