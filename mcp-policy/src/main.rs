//! `mcp-policy`: check, explain and serve PolicyLayer policies.
//!
//! Exit codes: 0 fine, 1 an error (a policy that does not load, a server that cannot
//! be reached), 2 warnings under `--strict`, or a usage error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mcp_policy::{check, explain, gateway, grant, pin, print, wrap};

/// Check, explain and serve PolicyLayer policies for MCP servers.
#[derive(Debug, Parser)]
#[command(
    name = "mcp-policy",
    version,
    about = "Check, explain and serve PolicyLayer policies for MCP servers.",
    after_help = "Examples:
  mcp-policy check policy.json --server http://127.0.0.1:3000/mcp
  mcp-policy explain policy.json transfer '{\"to\": \"acct-1\", \"amount\": 5000}'
  mcp-policy schema > policy.schema.json
  mcp-policy gateway --policy policy.json --upstream http://127.0.0.1:3001/mcp
  mcp-policy grant add trading-bot --policy trader.json --grants grants.json
  mcp-policy gateway --grants grants.json --upstream http://127.0.0.1:3001/mcp

Exit codes: 0 fine, 1 error, 2 warnings under --strict (and usage errors).
`mcp-policy help COMMAND` shows each command's options and examples."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load policies, print their warnings and, with --server, compare them with the
    /// tools an MCP server really has.
    #[command(after_help = "Examples:
  mcp-policy check policy.json
  mcp-policy check policy.json staging.json --strict
  mcp-policy check policy.json --server http://127.0.0.1:3000/mcp
  mcp-policy check policy.json --server http://127.0.0.1:3000/mcp \\
      --header \"Authorization: Bearer $TOKEN\" --json")]
    Check(check::Options),
    /// Show the decision for one call, with every step that led to it.
    #[command(after_help = r#"Examples:
  mcp-policy explain policy.json get_price '{"symbol": "BTCUSD"}'
  mcp-policy explain policy.json transfer '{"to": "acct-1", "amount": 5000}'"#)]
    Explain(explain::Options),
    /// Print the JSON Schema (2020-12) of the policy document, or of the grants file.
    #[command(after_help = "Examples:
  mcp-policy schema > policy.schema.json
  # then start policy.json with  \"$schema\": \"./policy.schema.json\",
  # and editors complete and check it as you type
  mcp-policy schema --grants > grants.schema.json
  mcp-policy schema --gateway > gateway.schema.json")]
    Schema {
        /// The schema of the grants file instead.
        #[arg(long, conflicts_with_all = ["pins", "gateway"])]
        grants: bool,
        /// The schema of the tool pins (tools.lock.json) instead.
        #[arg(long, conflicts_with = "gateway")]
        pins: bool,
        /// The schema of the gateway's configuration file (several servers) instead.
        #[arg(long)]
        gateway: bool,
    },
    /// Record the tool definitions of a live server as reviewed (a lock file the
    /// gateway's --pins enforces); shows what changed since the last pin.
    #[command(after_help = "Examples:
  mcp-policy pin --server http://127.0.0.1:3001/mcp
  mcp-policy pin --server http://127.0.0.1:3001/mcp --out pins/payments.lock.json \\
      --header \"Authorization: Bearer $TOKEN\"
  mcp-policy check --pins tools.lock.json --server http://127.0.0.1:3001/mcp   # in CI
  mcp-policy gateway --policy policy.json --pins tools.lock.json --upstream http://127.0.0.1:3001/mcp")]
    Pin(pin::Options),
    /// Add, list and revoke agents' grants: a token and a policy per agent.
    #[command(after_help = "Examples:
  mcp-policy grant add research-agent --policy read-only.json --grants grants.json
  mcp-policy grant add trading-bot --policy trader.json --grants grants.json \\
      --expires 2027-01-31T00:00:00Z
  mcp-policy grant list --grants grants.json
  mcp-policy grant revoke trading-bot --grants grants.json

`grant add` prints the token alone on standard output, once: the file keeps its hash.")]
    Grant {
        #[command(subcommand)]
        command: grant::Command,
    },
    /// Serve a policy (or a policy per agent, --grants) in front of an MCP server
    /// (Streamable HTTP).
    #[command(after_help = "Examples:
  mcp-policy gateway --policy policy.json --upstream http://127.0.0.1:3001/mcp
  mcp-policy gateway --policy policy.json --upstream http://127.0.0.1:3001/mcp \\
      --listen 0.0.0.0:8080 --redis redis://127.0.0.1:6379/ --watch
  mcp-policy gateway --policy policy.json --upstream http://127.0.0.1:3001/mcp --monitor

  mcp-policy gateway --policy policy.json --upstream https://mcp.internal/mcp --upstream-ca ca.pem
  mcp-policy gateway --policy policy.json --env-file server.env -- \\
      npx -y @modelcontextprotocol/server-filesystem /srv/shared
  mcp-policy gateway --config gateway.json --watch    # several servers, at /NAME/mcp

GET /metrics on the listen address answers Prometheus text, outside the policy;
GET /healthz and GET /readyz answer liveness and readiness.")]
    Gateway(Box<gateway::Options>),
    /// Put a policy in front of a stdio MCP server, as a stdio MCP server: a desktop
    /// client starts this command instead of the server's.
    #[command(after_help = "Examples:
  mcp-policy wrap --policy policy.json -- npx -y @modelcontextprotocol/server-filesystem ~/notes
  mcp-policy wrap --policy policy.json --watch --env GITHUB_TOKEN=... -- github-mcp-server stdio

stdout carries only MCP messages; the log goes to stderr (RUST_LOG sets its level).")]
    Wrap(Box<wrap::Options>),
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(options) => runtime().block_on(check::run(options)).into(),
        Command::Explain(options) => runtime().block_on(explain::run(options)).into(),
        Command::Grant { command } => grant::run(command).into(),
        Command::Pin(options) => runtime().block_on(pin::run(options)).into(),
        Command::Schema {
            grants,
            pins,
            gateway,
        } => {
            let schema = match (grants, pins, gateway) {
                (true, _, _) => tower_mcp_policy::Grants::json_schema(),
                (_, true, _) => tower_mcp_policy::unstable::Pins::json_schema(),
                (_, _, true) => gateway::GatewayFile::json_schema(),
                _ => tower_mcp_policy::Policy::json_schema(),
            };
            print(&(serde_json::to_string_pretty(&schema).expect("a schema is JSON") + "\n"));
            ExitCode::SUCCESS
        }
        Command::Gateway(options) => {
            runtime().block_on(gateway::main(*options));
            ExitCode::SUCCESS
        }
        Command::Wrap(options) => {
            runtime().block_on(wrap::main(*options));
            ExitCode::SUCCESS
        }
    }
}
