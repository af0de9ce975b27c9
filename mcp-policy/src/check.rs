//! `mcp-policy check`: does each policy load, what does it warn about, and (with
//! `--server`) what does it do with each tool the server really has.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rmcp::ServiceExt;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use tower_mcp_policy::explain::ToolPolicy;
use tower_mcp_policy::unstable::Pins;
use tower_mcp_policy::{CounterDef, Grants, Policy, PolicyWarning};

use crate::{Outcome, shown};

/// How long listing a server's tools may take, handshake included.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);

/// `mcp-policy check`: the options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The policy documents to check.
    #[arg(required_unless_present_any = ["grants", "pins"], value_name = "POLICY")]
    policies: Vec<PathBuf>,
    /// A grants file: check each of its policies and, with --server, print what each
    /// grant may do with each of the server's tools.
    #[arg(long, value_name = "FILE")]
    grants: Option<PathBuf>,
    /// Tool pins (`mcp-policy pin` writes them): with --server, fail (exit code 1) and
    /// print the difference when a tool's definition is not the pinned one.
    #[arg(long, value_name = "FILE", requires = "server")]
    pins: Option<PathBuf>,
    /// An MCP server (Streamable HTTP endpoint) whose tools to compare the policies
    /// with: initialize, then every page of tools/list.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// A header to send to the server, e.g. 'Authorization: Bearer TOKEN'; repeatable.
    #[arg(long = "header", value_name = "'NAME: VALUE'", value_parser = header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// For an https server signed by a private CA: that CA's certificate (PEM), trusted
    /// besides the system's roots.
    #[arg(long = "server-ca", value_name = "FILE", requires = "server")]
    server_ca: Option<PathBuf>,
    /// Exit with code 2 when there is any warning (load-time warnings, or policy
    /// entries that match no server tool).
    #[arg(long)]
    strict: bool,
    /// Print the report as JSON (for CI).
    #[arg(long)]
    json: bool,
}

pub(crate) fn header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not 'Name: value'"))?;
    let name = HeaderName::try_from(name.trim())
        .map_err(|e| format!("invalid header name {name:?}: {e}"))?;
    let value = HeaderValue::try_from(value.trim())
        .map_err(|e| format!("invalid value for header {name}: {e}"))?;
    for reserved in ["accept", "mcp-session-id", "last-event-id", "content-type"] {
        if name == reserved {
            return Err(format!(
                "{name} is set by the MCP client itself and cannot be overridden"
            ));
        }
    }
    Ok((name, value))
}

/// The server: its name and version, and its tools' names and definitions.
pub(crate) struct Server {
    pub url: String,
    pub name: String,
    pub version: String,
    pub tools: Vec<String>,
    /// Each tool's definition as listed.
    pub definitions: Vec<Value>,
}

/// Initializes an MCP session with `url` and lists every page of its tools.
pub(crate) async fn list_tools(
    url: &str,
    headers: &[(HeaderName, HeaderValue)],
    ca: Option<&std::path::Path>,
) -> Result<Server, String> {
    let tls = crate::tls::client_config(ca)?;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .build()
        .map_err(|e| format!("the HTTP client: {e}"))?;
    let custom: HashMap<HeaderName, HeaderValue> = headers.iter().cloned().collect();
    let config = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(custom);
    let transport = StreamableHttpClientTransport::with_client(http, config);
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("mcp-policy", env!("CARGO_PKG_VERSION")),
    );
    let listing = async {
        let client = info
            .serve(transport)
            .await
            .map_err(|e| format!("the MCP handshake failed: {}", readable(&e.to_string())))?;
        let tools = client
            .list_all_tools()
            .await
            .map_err(|e| format!("tools/list failed: {}", readable(&e.to_string())))?;
        let (name, version) = client
            .peer_info()
            .and_then(|info| info.server_info.clone())
            .map(|server| (server.name, server.version))
            .unwrap_or_default();
        let _ = client.cancel().await;
        let definitions = tools
            .iter()
            .map(|t| serde_json::to_value(t).expect("a tool is JSON"))
            .collect();
        Ok::<_, String>(Server {
            url: url.to_owned(),
            name,
            version,
            tools: tools.into_iter().map(|t| t.name.to_string()).collect(),
            definitions,
        })
    };
    let listed = tokio::time::timeout(SERVER_TIMEOUT, listing)
        .await
        .map_err(|_| format!("no answer within {}s", SERVER_TIMEOUT.as_secs()))?;
    match listed {
        // The MCP client keeps only its error's text: a TLS failure is found again.
        Err(err) => Err(crate::tls::diagnose(url, tls, "--server-ca")
            .await
            .unwrap_or(err)),
        Ok(server) => Ok(server),
    }
}

/// An MCP client error as a person reads it: without the SDK's internal type names,
/// on one line, at most 300 characters (a server's error page is not printed whole),
/// with a hint for the usual causes.
pub(crate) fn readable(error: &str) -> String {
    let mut text = error.to_owned();
    // "Send message error Transport [rmcp::transport::worker::WorkerTransport<…>] error: "
    if let Some(start) = text.find("Transport [")
        && let Some(end) = text[start..].find("] error: ")
    {
        text.replace_range(..start + end + "] error: ".len(), "");
    }
    let text = text.replace(", when send initialize request", " (sending initialize)");
    let mut line: String = text.lines().next().unwrap_or_default().trim().to_owned();
    if line.chars().count() > 300 {
        line = line.chars().take(300).collect::<String>() + "…";
    }
    let hint = if line.contains("error sending request") || line.contains("Connection refused") {
        "; is the server running, and is this its MCP endpoint?"
    } else if line.contains("HTTP 404") {
        "; nothing at this path: MCP servers usually serve /mcp"
    } else if line.contains("HTTP 401") || line.contains("HTTP 403") {
        "; the server wants a credential: add --header \"Authorization: Bearer …\""
    } else if line.contains("HTTP 405") || line.contains("HTTP 501") {
        "; this endpoint does not take MCP's POST requests: is it the MCP endpoint?"
    } else {
        ""
    };
    format!("{line}{hint}")
}

/// The closest of `names` to `word`, when it is close enough to be a typo.
pub(crate) fn did_you_mean<'a>(word: &str, names: &'a [String]) -> Option<&'a str> {
    names
        .iter()
        .map(|name| (strsim::jaro_winkler(word, name), name))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name.as_str())
}

fn counter_json(counter: &CounterDef) -> Value {
    json!({
        "name": counter.name(),
        "max": counter.max().get(),
        "window_seconds": counter.window().as_secs(),
        "scope": counter.scope().as_str(),
    })
}

fn warning_json(warning: &PolicyWarning) -> Value {
    json!({ "pointer": warning.pointer(), "message": warning.message() })
}

/// An unmatched policy entry, with a suggestion when it looks like a typo.
fn unmatched_text(
    (entry, warning): &(&str, PolicyWarning),
    server: &Server,
) -> (String, Option<String>) {
    let suggestion = did_you_mean(entry, &server.tools).map(str::to_owned);
    let text = match &suggestion {
        Some(name) => format!("{warning} (did you mean `{name}`?)"),
        None => warning.to_string(),
    };
    (text, suggestion)
}

/// One policy's report.
fn report(
    out: &mut String,
    path: &std::path::Path,
    policy: &Policy,
    server: Option<&Server>,
    json: bool,
) -> (Value, usize) {
    let mut warnings = policy.warnings().len();
    let mut entry = json!({
        "file": shown(path),
        "summary": policy.summary(),
        "fingerprint": policy.fingerprint(),
        "warnings": policy.warnings().iter().map(warning_json).collect::<Vec<_>>(),
    });
    if !json {
        say!(out, "{}: loads: {}", shown(path), policy.summary());
        for warning in policy.warnings() {
            say!(out, "{}: warning: {warning}", shown(path));
        }
    }
    let Some(server) = server else {
        return (entry, warnings);
    };
    let mut tools: Vec<(&str, ToolPolicy<'_>)> = server
        .tools
        .iter()
        .map(|name| (name.as_str(), policy.tool_policy(name)))
        .collect();
    tools.sort_by(|a, b| a.0.cmp(b.0));
    let names: Vec<&str> = server.tools.iter().map(String::as_str).collect();
    let unmatched = policy.unmatched(&names);
    warnings += unmatched.len();
    // Argument paths no tool's schema has: typos that deny every call.
    let mut unknown: Vec<PolicyWarning> = Vec::new();
    for (name, definition) in server.tools.iter().zip(&server.definitions) {
        for warning in policy.unknown_arguments(name, &definition["inputSchema"]) {
            if !unknown
                .iter()
                .any(|w| w.pointer() == warning.pointer() && w.message() == warning.message())
            {
                unknown.push(warning);
            }
        }
    }
    warnings += unknown.len();
    if json {
        entry["unknown_arguments"] = unknown.iter().map(warning_json).collect();
        entry["tools"] = tools
            .iter()
            .map(|(name, tool)| {
                json!({
                    "name": name,
                    "verdict": tool.verdict(),
                    "rule": tool.rule,
                    "conditions": tool.conditions,
                    "counters": tool.counters.iter().map(|c| counter_json(c)).collect::<Vec<_>>(),
                })
            })
            .collect();
        entry["unmatched"] = unmatched
            .iter()
            .map(|entry| {
                let (_, suggestion) = unmatched_text(entry, server);
                let mut unmatched = warning_json(&entry.1);
                unmatched["did_you_mean"] = json!(suggestion);
                unmatched
            })
            .collect();
        return (entry, warnings);
    }
    let width = |column: &dyn Fn(&(&str, ToolPolicy<'_>)) -> usize, title: usize| {
        tools.iter().map(column).max().unwrap_or(0).max(title)
    };
    let name_width = width(&|(name, _)| name.chars().count(), 4);
    let verdict_width = width(&|(_, tool)| tool.verdict().len(), 7);
    let rule_width = width(&|(_, tool)| tool.rule.map_or(1, |r| r.chars().count()), 4);
    say!(out);
    say!(
        out,
        "{:name_width$}  {:verdict_width$}  {:rule_width$}  COUNTERS",
        "TOOL",
        "VERDICT",
        "RULE"
    );
    for (name, tool) in &tools {
        let counters: Vec<String> = tool.counters.iter().map(ToString::to_string).collect();
        let counters = if counters.is_empty() {
            "-".to_owned()
        } else {
            counters.join(", ")
        };
        say!(
            out,
            "{name:name_width$}  {:verdict_width$}  {:rule_width$}  {counters}",
            tool.verdict(),
            tool.rule.unwrap_or("-"),
        );
    }
    if unmatched.is_empty() {
        say!(out, "\nevery policy entry matches a server tool");
    } else {
        say!(out, "\npolicy entries that match no server tool:");
        for entry in &unmatched {
            say!(out, "  {}", unmatched_text(entry, server).0);
        }
        if unmatched
            .iter()
            .any(|(_, warning)| warning.pointer().starts_with("/hide/"))
        {
            say!(
                out,
                "(a server that is already behind this policy does not list the tools it hides)"
            );
        }
    }
    if !unknown.is_empty() {
        say!(out, "\nargument paths that name no argument of the tool:");
        for warning in &unknown {
            say!(out, "  {warning}");
        }
    }
    say!(out);
    (entry, warnings)
}

fn error_json(path: &std::path::Path, err: &tower_mcp_policy::PolicyError) -> Value {
    json!({
        "file": shown(path),
        "pointer": err.pointer(),
        "line": err.line(),
        "column": err.column(),
        "message": err.message(),
        "error": err.to_string(),
        "others": err.others().iter().map(|other| json!({
            "pointer": other.pointer(),
            "message": other.message(),
        })).collect::<Vec<_>>(),
    })
}

/// A tool's verdict in a grant × tool table: hidden, denied, allowed, conditional
/// (allowed when its conditions hold), limited, or approval (a person approves calls).
fn short_verdict(tool: &ToolPolicy<'_>) -> &'static str {
    if tool.denied.is_none() && tool.approval {
        return "approval";
    }
    match tool.verdict() {
        "hidden" => "hidden",
        "denied by default" => "denied",
        "allowed" => "allowed",
        "allowed with conditions" => "conditional",
        _ => "limited",
    }
}

/// What each grant may do with each of the server's tools: one row per tool, one
/// column per grant (a revoked or expired grant reaches nothing).
fn grant_table(out: &mut String, grants: &Grants, server: &Server, json: bool) -> Value {
    let mut tools: Vec<&str> = server.tools.iter().map(String::as_str).collect();
    tools.sort_unstable();
    let columns: Vec<(&str, &str, bool)> = grants
        .names()
        .map(|(grant, policy)| (grant, policy, grants.is_active(grant)))
        .collect();
    let cell = |grant: &str, active: bool, tool: &str| match (active, grants.policy_of(grant)) {
        (true, Some(policy)) => short_verdict(&policy.tool_policy(tool)),
        _ => "-",
    };
    if !json {
        let headers: Vec<String> = columns
            .iter()
            .map(|(grant, policy, active)| match active {
                true => format!("{grant} ({policy})"),
                false => format!("{grant} (revoked or expired)"),
            })
            .collect();
        let first = tools
            .iter()
            .map(|t| t.chars().count())
            .max()
            .unwrap_or(0)
            .max(4);
        let widths: Vec<usize> = headers.iter().map(|h| h.chars().count().max(11)).collect();
        say!(out, "what each grant may do with the server's tools:");
        let mut line = format!("{:first$}", "TOOL");
        for (header, width) in headers.iter().zip(&widths) {
            line.push_str(&format!("  {header:width$}"));
        }
        say!(out, "{}", line.trim_end());
        for tool in &tools {
            let mut line = format!("{tool:first$}");
            for ((grant, _, active), width) in columns.iter().zip(&widths) {
                line.push_str(&format!("  {:width$}", cell(grant, *active, tool)));
            }
            say!(out, "{}", line.trim_end());
        }
        say!(out);
    }
    columns
        .iter()
        .map(|(grant, policy, active)| {
            let verdicts: serde_json::Map<String, Value> = tools
                .iter()
                .map(|tool| ((*tool).to_owned(), json!(cell(grant, *active, tool))))
                .collect();
            json!({"grant": grant, "policy": policy, "active": active, "tools": verdicts})
        })
        .collect()
}

/// Runs `mcp-policy check`.
pub async fn run(options: Options) -> Outcome {
    let mut out = String::new();
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    let grants = match &options.grants {
        None => None,
        Some(path) => match Grants::from_file(path) {
            Ok(grants) => Some(grants),
            Err(err) => {
                eprintln!("mcp-policy: {err}");
                errors.push(error_json(path, &err));
                None
            }
        },
    };
    // A grants file's policies are checked like the files named on the command line.
    let named = grants.iter().flat_map(|g| g.files()[1..].iter());
    for path in named.chain(&options.policies) {
        match Policy::from_file(path) {
            Ok(policy) => loaded.push((path.clone(), policy)),
            Err(err) => {
                eprintln!("mcp-policy: {err}");
                errors.push(error_json(path, &err));
            }
        }
    }
    let failed = !errors.is_empty();
    let server = match &options.server {
        None => None,
        Some(url) => match list_tools(url, &options.headers, options.server_ca.as_deref()).await {
            Ok(server) => Some(server),
            Err(err) => {
                eprintln!("mcp-policy: cannot list the tools of {url}: {err}");
                return Outcome::Error;
            }
        },
    };
    if let (Some(server), false) = (&server, options.json) {
        say!(
            out,
            "server {}: {} {}, {} tools\n",
            server.url,
            server.name,
            server.version,
            server.tools.len()
        );
    }
    let mut warnings = 0;
    let mut reports = Vec::new();
    for (path, policy) in &loaded {
        let (report, count) = report(&mut out, path, policy, server.as_ref(), options.json);
        warnings += count;
        reports.push(report);
    }
    let mut drifted = false;
    let mut pin_report = None;
    if let (Some(path), Some(server)) = (&options.pins, &server) {
        match Pins::from_file(path) {
            Ok(pins) => {
                let diff = pins.diff(&server.definitions);
                drifted = !diff.is_empty();
                if !options.json {
                    match drifted {
                        false => say!(out, "{}: every tool matches its pin\n", shown(path)),
                        true => {
                            say!(
                                out,
                                "{}: the server's tools differ from their pins:",
                                shown(path)
                            );
                            for line in &diff {
                                say!(out, "  {line}");
                            }
                            say!(
                                out,
                                "(+ not pinned, - pinned but not listed, ~ changed: the fields named)\n"
                            );
                        }
                    }
                }
                pin_report = Some(json!({"file": shown(path), "drift": diff}));
            }
            Err(err) => {
                eprintln!("mcp-policy: {err}");
                errors.push(error_json(path, &err));
            }
        }
    }
    let table = match (&grants, &server) {
        (Some(grants), Some(server)) => Some(grant_table(&mut out, grants, server, options.json)),
        _ => None,
    };
    if options.json {
        let mut json = json!({ "policies": reports, "errors": errors, "warnings": warnings });
        if let Some(table) = table {
            json["grants"] = table;
        }
        if let Some(pins) = pin_report {
            json["pins"] = pins;
        }
        if let Some(server) = &server {
            json["server"] = json!({
                "url": server.url,
                "name": server.name,
                "version": server.version,
                "tools": server.tools.len(),
            });
        }
        say!(
            out,
            "{}",
            serde_json::to_string_pretty(&json).expect("a report is JSON")
        );
    }
    crate::print(&out);
    let failed = failed || !errors.is_empty() || drifted;
    if failed {
        Outcome::Error
    } else if options.strict && warnings > 0 {
        if !options.json {
            eprintln!("mcp-policy: {warnings} warning(s), and --strict");
        }
        Outcome::Warnings
    } else {
        Outcome::Fine
    }
}
