//! The README's quick start: an MCP server (rmcp, the official Rust SDK) behind a
//! policy, in one file. `cargo run --example quick_start`, then point an MCP client at
//! http://127.0.0.1:3001/mcp. It needs nothing from the other examples.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use tower_mcp_policy::{Policy, PolicyLayer};

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Transfer {
    /// How much to move.
    amount: f64,
}

#[derive(Clone)]
struct Bank {
    tool_router: Arc<ToolRouter<Self>>,
}

#[tool_router]
impl Bank {
    #[tool(description = "Move money between the user's accounts.")]
    fn transfer(&self, Parameters(args): Parameters<Transfer>) -> String {
        format!("moved {}", args.amount)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Bank {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Transfers above 1000 are refused; at most 10 a minute per caller.
    let policy: Policy = r#"{ "version": "1", "default": "deny", "tools": { "transfer": {
        "deny_if": [ { "conditions": [ { "path": "args.amount", "op": "gt", "value": 1000 } ],
                       "on_deny": "Transfers above 1000 need a person." } ],
        "limits": [ { "counter": "transfers", "window": "minute", "max": 10 } ] } } }"#
        .parse()?;
    let bank = Bank {
        tool_router: Arc::new(Bank::tool_router()),
    };
    let mcp: StreamableHttpService<Bank, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(bank.clone()),
        Default::default(),
        Default::default(),
    );
    let app = axum::Router::new().nest_service(
        "/mcp",
        tower::ServiceBuilder::new()
            .layer(PolicyLayer::new(policy))
            .service(mcp),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("MCP server behind a policy on http://127.0.0.1:3001/mcp");
    axum::serve(listener, app).await?;
    Ok(())
}
