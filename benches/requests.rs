//! A driver for instruction counts of whole requests (valgrind's callgrind): an axum app
//! serving rmcp's `StreamableHttpService` (stateless JSON, the demo exchange), bare or
//! behind `PolicyLayer`, and a hyper client sending `tools/call`s over one keep-alive
//! loopback connection, all on one thread so the count is repeatable.
//! `benches/instructions.sh` runs it at two request counts and prints the difference
//! per request, so start-up cancels out.
//!
//! ```text
//! requests (bare|layer|router-layer) (200|1k) REQUESTS
//! ```
//!
//! `layer` puts the policy around the MCP service, as the README recommends
//! (`nest_service("/mcp", layer.layer(mcp))`); `router-layer` puts it on the router
//! (`Router::layer`), where axum boxes the route once more, so the inner service the
//! layer clones per request is a boxed one.
//!
//! `200` is a ~200-byte call of `echo`, `1k` a ~1 KiB one. The policy allows `echo` with
//! a limit that never runs out, so every request is decoded, judged, charged and
//! forwarded.

mod inputs;

use tower_mcp_policy::{FakeClock, Policy, PolicyLayer};

fn main() {
    // `cargo bench` adds `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [mode, size, requests] = &args[..] else {
        eprintln!("usage: requests (bare|layer|router-layer) (200|1k) REQUESTS");
        std::process::exit(2);
    };
    let size = if size == "1k" { 1024 } else { 200 };
    let requests: usize = requests.parse().expect("a number of requests");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stack = match mode.as_str() {
        "bare" => Stack::Bare,
        "layer" => Stack::Layer,
        "router-layer" => Stack::RouterLayer,
        other => panic!("unknown mode {other}"),
    };
    runtime.block_on(run(stack, inputs::echo_call(size), requests));
}

#[derive(Clone, Copy, PartialEq)]
enum Stack {
    Bare,
    Layer,
    RouterLayer,
}

async fn run(stack: Stack, body: String, requests: usize) {
    let config = demo_server::server_config(true);
    let mcp: rmcp::transport::StreamableHttpService<demo_server::Exchange, _> =
        rmcp::transport::StreamableHttpService::new(
            || Ok(demo_server::Exchange::new(Default::default())),
            std::sync::Arc::new(
                rmcp::transport::streamable_http_server::session::local::LocalSessionManager::default(),
            ),
            config,
        );
    // A FakeClock: the monotonic clock's calibration runs for a wall-clock time, so
    // its instruction count varies from run to run.
    let layer = || {
        PolicyLayer::with_clock(
            inputs::ECHO_POLICY.parse::<Policy>().unwrap(),
            FakeClock::new(),
        )
    };
    let app = match stack {
        Stack::Bare => axum::Router::new().nest_service("/mcp", mcp),
        Stack::Layer => {
            axum::Router::new().nest_service("/mcp", tower::Layer::layer(&layer(), mcp))
        }
        Stack::RouterLayer => axum::Router::new().nest_service("/mcp", mcp).layer(layer()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    inputs::send_calls(&address.to_string(), body, requests).await;
}
