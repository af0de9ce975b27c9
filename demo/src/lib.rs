//! The demo: a crypto/DeFi exchange MCP server (rmcp, Streamable HTTP, inside axum)
//! guarded by `PolicyLayer::from_file`. Run it from the repository's root:
//!
//! ```text
//! cargo run -p demo -- [--policy examples/policy.json] [--listen 127.0.0.1:3000] [--json] [--redis URL [--fail-open]] [--watch] [--monitor]
//! ```
//!
//! It is a package of its own so that its first build compiles only what it uses, not
//! the library's test and benchmark dependencies. The MCP endpoint is `/mcp`. `--json` makes the server answer with `application/json`
//! instead of SSE streams (stateless mode). The tools are `get_price`,
//! `binance_us_close_listen_key`, `transfer`, `delete_account` and `echo`; each returns a
//! text naming the tool and its arguments. The tests use this library and count
//! executions through [`Executions`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use tower_mcp_policy::{PolicyLayer, counter::CounterStore};

// The start-up code `mcp-policy gateway` uses: policy, counters, watch, metrics.
use mcp_policy::serving;

/// How many times each tool actually ran.
#[derive(Debug, Clone, Default)]
pub struct Executions(Arc<Mutex<BTreeMap<String, usize>>>);

impl Executions {
    fn record(&self, tool: &str) {
        *self.0.lock().unwrap().entry(tool.to_owned()).or_default() += 1;
    }

    /// Executions of `tool` so far.
    pub fn of(&self, tool: &str) -> usize {
        self.0.lock().unwrap().get(tool).copied().unwrap_or(0)
    }

    /// Executions of every tool so far.
    pub fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Symbol {
    /// A trading pair or asset, e.g. "BTCUSD".
    symbol: String,
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ListenKey {
    /// The user-data stream key to close.
    #[serde(rename = "listenKey")]
    listen_key: String,
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Transfer {
    /// The amount to send.
    amount: f64,
    /// The receiving account.
    to: String,
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Account {
    /// The account to delete.
    account: String,
}

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Text {
    /// The text to echo.
    text: String,
}

/// The exchange's MCP server. Cloned for every session (or, stateless, every request):
/// the tool router is built once and shared.
#[derive(Clone)]
pub struct Exchange {
    tool_router: Arc<ToolRouter<Self>>,
    executions: Executions,
}

impl Exchange {
    pub fn new(executions: Executions) -> Self {
        Exchange {
            tool_router: Arc::new(Self::tool_router()),
            executions,
        }
    }

    fn ran(&self, tool: &str, args: &impl Serialize) -> String {
        self.executions.record(tool);
        let args = serde_json::to_string(args).unwrap_or_default();
        format!("{tool} ran with {args}")
    }
}

#[tool_router]
impl Exchange {
    #[tool(description = "Read the current price of a symbol.")]
    fn get_price(&self, Parameters(args): Parameters<Symbol>) -> String {
        self.ran("get_price", &args)
    }

    #[tool(description = "Close a user-data stream listen key (a write).")]
    fn binance_us_close_listen_key(&self, Parameters(args): Parameters<ListenKey>) -> String {
        self.ran("binance_us_close_listen_key", &args)
    }

    #[tool(description = "Transfer funds to another account (financial).")]
    fn transfer(&self, Parameters(args): Parameters<Transfer>) -> String {
        self.ran("transfer", &args)
    }

    #[tool(description = "Delete an account (destructive).")]
    fn delete_account(&self, Parameters(args): Parameters<Account>) -> String {
        self.ran("delete_account", &args)
    }

    #[tool(description = "Echo a text back.")]
    fn echo(&self, Parameters(args): Parameters<Text>) -> String {
        self.ran("echo", &args)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Exchange {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("A demo crypto exchange. Every call passes a PolicyLayer first.")
    }
}

/// The MCP server's transport settings: SSE streams with sessions, or plain JSON.
pub fn server_config(json: bool) -> StreamableHttpServerConfig {
    let config = StreamableHttpServerConfig::default();
    if json {
        config
            .with_legacy_session_mode(false)
            .with_json_response(true)
    } else {
        config
    }
}

/// The whole app: `/mcp` served by the exchange, behind the policy layer.
pub fn app<S: CounterStore>(
    layer: PolicyLayer<S>,
    executions: Executions,
    config: StreamableHttpServerConfig,
) -> axum::Router {
    let exchange = Exchange::new(executions);
    let mcp: StreamableHttpService<Exchange, LocalSessionManager> =
        StreamableHttpService::new(move || Ok(exchange.clone()), Default::default(), config);
    // The layer around the MCP service only, the composition the README recommends.
    axum::Router::new().nest_service("/mcp", tower_layer::Layer::layer(&layer, mcp))
}

/// A demo MCP exchange (rmcp, Streamable HTTP) behind a policy.
#[derive(Debug, clap::Parser)]
#[command(name = "demo_server")]
struct Options {
    /// The policy document.
    #[arg(long, value_name = "FILE", default_value = "examples/policy.json")]
    policy: PathBuf,
    /// Where to listen.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Answer with application/json instead of SSE streams (stateless mode).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: serving::Serving,
}

/// The demo server's `main`: parses the command line, loads the policy and serves until
/// Ctrl-C.
pub async fn main() {
    serving::init_tracing();
    let options = <Options as clap::Parser>::parse();
    match serving::load_layer("demo_server", Some(&options.policy), &options.store).await {
        serving::AnyLayer::Memory(layer) => run(layer, options).await,
        serving::AnyLayer::Redis(layer) => run(layer, options).await,
    }
}

async fn run<S: CounterStore + Clone>(layer: PolicyLayer<S>, options: Options) {
    let _watcher = serving::watch("demo_server", &layer, Some(&options.policy), &options.store);
    let banner = serving::banner(&layer, Some(&options.policy), &options.store);
    let listener = serving::bind("demo_server", options.listen).await;
    let address = listener
        .local_addr()
        .expect("a bound listener has an address");
    println!("demo MCP server listening on http://{address}/mcp");
    println!("{banner}");
    println!("{}", serving::describe(&options.store));
    println!("metrics on http://{address}/metrics");
    // The approvals API (calls that need a person's approval), outside the policy.
    let approvers =
        mcp_policy::approvals::Approvers::load(options.store.approver_token_file.as_deref())
            .unwrap_or_else(|err| {
                eprintln!("demo_server: {err}");
                std::process::exit(1);
            });
    let api = mcp_policy::approvals::Api::new(layer.handle(), approvers);
    let approvals = move |method: http::Method, uri: http::Uri, headers: http::HeaderMap| {
        let api = api.clone();
        async move {
            let reply = api.answer(&method, uri.path(), &headers).await;
            reply.into_response::<axum::body::Body>()
        }
    };
    println!("approvals on http://{address}/approvals");
    // `/metrics` is added after the policy layer, so it is outside it.
    let app = app(layer, Executions::default(), server_config(options.json))
        .route(
            "/metrics",
            axum::routing::get(|| async { serving::metrics().render() }),
        )
        .route("/approvals", axum::routing::any(approvals.clone()))
        .route("/approvals/{*rest}", axum::routing::any(approvals));
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("the server runs until Ctrl-C");
}
