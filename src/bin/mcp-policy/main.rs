//! `mcp-policy`: check, explain and serve PolicyLayer policies.
//!
//! Exit codes: 0 fine, 1 an error (a policy that does not load, a server that cannot
//! be reached), 2 warnings under `--strict`, or a usage error.

/// Appends a line to the report `out` (printed at the end; see [`print()`]).
macro_rules! say {
    ($out:expr) => {
        $out.push('\n')
    };
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

mod check;
mod explain;
mod gateway;
mod serving;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
      --header 'Authorization: Bearer $TOKEN' --json")]
    Check(check::Options),
    /// Show the decision for one call, with every step that led to it.
    #[command(after_help = r#"Examples:
  mcp-policy explain policy.json get_price '{"symbol": "BTCUSD"}'
  mcp-policy explain policy.json transfer '{"to": "acct-1", "amount": 5000}'"#)]
    Explain(explain::Options),
    /// Print the JSON Schema (2020-12) of the policy document.
    #[command(after_help = "Examples:
  mcp-policy schema > policy.schema.json
  # then start policy.json with  \"$schema\": \"./policy.schema.json\",
  # and editors complete and check it as you type")]
    Schema,
    /// Serve a policy in front of an MCP server (Streamable HTTP).
    #[command(after_help = "Examples:
  mcp-policy gateway --policy policy.json --upstream http://127.0.0.1:3001/mcp
  mcp-policy gateway --policy policy.json --upstream http://127.0.0.1:3001/mcp \\
      --listen 0.0.0.0:8080 --redis redis://127.0.0.1:6379/ --watch
  mcp-policy gateway --policy policy.json --upstream http://127.0.0.1:3001/mcp --monitor

GET /metrics on the listen address answers Prometheus text, outside the policy.")]
    Gateway(gateway::Options),
}

/// What a check or an explanation found: exit code 0, 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Fine,
    Error,
    Warnings,
}

impl From<Outcome> for ExitCode {
    fn from(outcome: Outcome) -> ExitCode {
        match outcome {
            Outcome::Fine => ExitCode::SUCCESS,
            Outcome::Error => ExitCode::from(1),
            Outcome::Warnings => ExitCode::from(2),
        }
    }
}

/// Prints a report. A closed pipe (`mcp-policy schema | head`) ends the output quietly
/// instead of panicking.
fn print(report: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(report.as_bytes())
        .and_then(|()| stdout.flush());
    if let Err(err) = written
        && err.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("mcp-policy: cannot write the report: {err}");
    }
}

/// A policy's path as the user wrote it, for messages.
fn shown(path: &std::path::Path) -> String {
    path.display().to_string()
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
        Command::Schema => {
            let schema = tower_mcp_policy::Policy::json_schema();
            print(&(serde_json::to_string_pretty(&schema).expect("a schema is JSON") + "\n"));
            ExitCode::SUCCESS
        }
        Command::Gateway(options) => {
            runtime().block_on(gateway::main(options));
            ExitCode::SUCCESS
        }
    }
}
