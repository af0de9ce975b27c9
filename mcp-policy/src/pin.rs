//! `mcp-policy pin`: record the tool definitions of a live server as reviewed.
//!
//! ```text
//! mcp-policy pin --server URL [--header 'Name: value']... [--out tools.lock.json]
//! ```
//!
//! Lists every tool (all pages) and writes the lock file: per tool, the SHA-256 of its
//! canonical definition and of each field. When the file exists, the difference is
//! printed first, so a re-pin is reviewed as a diff (and committed like one).

use std::path::PathBuf;

use http::{HeaderName, HeaderValue};
use tower_mcp_policy::unstable::Pins;

use crate::Outcome;
use crate::check::{header, list_tools};

/// `mcp-policy pin`: the options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The MCP server (Streamable HTTP endpoint) whose tools to pin.
    #[arg(long, value_name = "URL")]
    server: String,
    /// A header to send to the server, e.g. "Authorization: Bearer $TOKEN"; repeatable.
    #[arg(long = "header", value_name = "'NAME: VALUE'", value_parser = header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// For an https server signed by a private CA: that CA's certificate (PEM), trusted
    /// besides the system's roots.
    #[arg(long = "server-ca", value_name = "FILE")]
    server_ca: Option<std::path::PathBuf>,
    /// The lock file to write.
    #[arg(long, value_name = "FILE", default_value = "tools.lock.json")]
    out: PathBuf,
}

/// Runs `mcp-policy pin`.
pub async fn run(options: Options) -> Outcome {
    let server = match list_tools(
        &options.server,
        &options.headers,
        options.server_ca.as_deref(),
    )
    .await
    {
        Ok(server) => server,
        Err(err) => {
            eprintln!(
                "mcp-policy pin: cannot list the tools of {}: {err}",
                options.server
            );
            return Outcome::Error;
        }
    };
    let mut out = String::new();
    let path = options.out.display();
    match options.out.exists() {
        true => match Pins::from_file(&options.out) {
            Ok(pins) => {
                let diff = pins.diff(&server.definitions);
                if diff.is_empty() {
                    say!(
                        out,
                        "{path}: unchanged, {} tools pinned",
                        server.tools.len()
                    );
                    crate::print(&out);
                    return Outcome::Fine;
                }
                say!(out, "{path}: what changed since the last pin:");
                for line in &diff {
                    say!(out, "  {line}");
                }
                say!(out, "(+ new, - gone, ~ changed: the fields named)");
            }
            Err(err) => say!(out, "{path}: replacing a file that does not load ({err})"),
        },
        false => say!(out, "{path}: new"),
    }
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let lock = Pins::lock((&server.name, &server.version), &server.definitions, &now);
    let text = serde_json::to_string_pretty(&lock).expect("JSON") + "\n";
    if let Err(err) = std::fs::write(&options.out, text) {
        eprintln!("mcp-policy pin: cannot write {path}: {err}");
        return Outcome::Error;
    }
    say!(
        out,
        "{path}: {} tools of {} {} pinned; review the file's diff and commit it",
        server.tools.len(),
        server.name,
        server.version
    );
    crate::print(&out);
    Outcome::Fine
}
