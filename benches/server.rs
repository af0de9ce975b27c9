//! Drivers for instruction counts of the server alone (valgrind's callgrind), where the
//! user pays: the server runs in one process under callgrind, the client in another,
//! natively, over one keep-alive loopback connection. `benches/server.sh` runs each
//! server at two request counts and prints the difference per request, so start-up
//! and shut-down cancel out.
//!
//! ```text
//! server serve (bare|layer|router-layer|from-file)   an axum app with rmcp's MCP service
//!                                                     (stateless JSON, the demo exchange);
//!                                                     serves one connection, then exits
//! server proxy UPSTREAM_URL                          a plain hyper reverse proxy; serves
//!                                                     one connection, then exits
//! server upstream                                    the bare app, every connection, until
//!                                                     killed (behind the gateway and proxy)
//! server client PORT (200|1k) REQUESTS               sends the calls and checks each answer
//! ```
//!
//! A server prints `listening on 127.0.0.1:PORT` on the first line of its output. `layer` puts the policy
//! around the MCP service as the README recommends (`nest_service("/mcp",
//! layer.layer(mcp))`), `router-layer` on the router (`Router::layer`); both on a
//! `FakeClock` (the real clock's calibration runs for a wall-clock time, so its count
//! varies). `from-file` is `nest_service` with `PolicyLayer::from_file` and its
//! defaults, the real clock included. The policy allows `echo` with a limit that never
//! runs out, so every call is decoded, judged, charged and forwarded.

mod inputs;

use std::convert::Infallible;
use std::io::Write as _;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tower_mcp_policy::{FakeClock, Policy, PolicyLayer};

fn main() {
    // `cargo bench` adds `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match args[..] {
        ["serve", mode] => runtime.block_on(serve(app(mode))),
        ["proxy", upstream] => runtime.block_on(proxy(upstream.to_owned())),
        ["upstream"] => runtime.block_on(upstream()),
        ["client", port, size, requests] => {
            let size = if size == "1k" { 1024 } else { 200 };
            let requests = requests.parse().expect("a number of requests");
            runtime.block_on(client(port, inputs::echo_call(size), requests));
        }
        _ => {
            eprintln!(
                "usage: server (serve (bare|layer|router-layer|from-file) | proxy URL | upstream | client PORT (200|1k) N)"
            );
            std::process::exit(2);
        }
    }
}

/// The MCP service: rmcp's streamable HTTP service, stateless, answering JSON.
fn mcp() -> rmcp::transport::StreamableHttpService<
    demo_server::Exchange,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    rmcp::transport::StreamableHttpService::new(
        || Ok(demo_server::Exchange::new(Default::default())),
        std::sync::Arc::default(),
        demo_server::server_config(true),
    )
}

fn app(mode: &str) -> axum::Router {
    let layer = || {
        PolicyLayer::with_clock(
            inputs::ECHO_POLICY.parse::<Policy>().unwrap(),
            FakeClock::new(),
        )
    };
    match mode {
        "bare" => axum::Router::new().nest_service("/mcp", mcp()),
        "layer" => axum::Router::new().nest_service("/mcp", tower::Layer::layer(&layer(), mcp())),
        "router-layer" => axum::Router::new()
            .nest_service("/mcp", mcp())
            .layer(layer()),
        "from-file" => {
            let path =
                std::env::temp_dir().join(format!("server-bench-{}.json", std::process::id()));
            std::fs::write(&path, inputs::ECHO_POLICY).unwrap();
            let layer = PolicyLayer::from_file(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            axum::Router::new().nest_service("/mcp", tower::Layer::layer(&layer, mcp()))
        }
        other => panic!("unknown mode {other}"),
    }
}

/// Binds a loopback port and prints it.
async fn listen() -> tokio::net::TcpListener {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", listener.local_addr().unwrap()).unwrap();
    out.flush().unwrap();
    listener
}

/// Serves one connection with `app`, then returns.
async fn serve(app: axum::Router) {
    let listener = listen().await;
    let (stream, _) = listener.accept().await.unwrap();
    stream.set_nodelay(true).unwrap();
    let service = TowerToHyperService::new(app);
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
        .unwrap();
}

/// A plain reverse proxy: each request forwarded to `upstream` as it came, over a
/// pooled keep-alive connection, and the answer streamed back. One connection.
async fn proxy(upstream: String) {
    let listener = listen().await;
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let forward: hyper_util::client::legacy::Client<_, Incoming> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let upstream: http::Uri = upstream.parse().unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    stream.set_nodelay(true).unwrap();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let forward = forward.clone();
        let upstream = upstream.clone();
        async move {
            let (mut parts, body) = request.into_parts();
            parts.uri = upstream;
            parts.headers.remove(header::HOST);
            match forward.request(Request::from_parts(parts, body)).await {
                Ok(response) => Ok::<_, Infallible>(response.map(|b| b.boxed())),
                Err(error) => {
                    let message = Full::new(Bytes::from(error.to_string()));
                    let mut response =
                        Response::new(message.map_err(|never| match never {}).boxed());
                    *response.status_mut() = http::StatusCode::BAD_GATEWAY;
                    Ok(response)
                }
            }
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
        .unwrap();
}

/// The bare app on every connection, until killed.
async fn upstream() {
    let listener = listen().await;
    axum::serve(listener, app("bare")).await.unwrap();
}

/// Sends `requests` calls to `127.0.0.1:PORT/mcp` over one connection; each must be
/// answered 200 with a result.
async fn client(port: &str, body: String, requests: usize) {
    inputs::send_calls(&format!("127.0.0.1:{port}"), body, requests).await;
}
