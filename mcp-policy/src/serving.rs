//! Start-up shared by `mcp-policy gateway` and the demo server (`demo/`, which uses this
//! crate without its `commands` feature): logging, the policy, its counters, the listener. Every failure ends the
//! program with a one-line message and exit code 1, never a panic.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::net::TcpListener;
use tower_mcp_policy::metrics::MetricsObserver;
use tower_mcp_policy::observe::TracingObserver;
use tower_mcp_policy::{Engine, Grants, Mode, Policy, PolicyLayer, counter::RedisCounters};

/// Logs to stderr; `RUST_LOG` overrides the default (decisions at debug). Colours only
/// when stderr is a terminal, so a log file or collector gets no escape sequences.
pub fn init_tracing() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_mcp_policy=debug".into()),
        )
        .init();
}

/// How the policy is served: where the counters live (in this process by default, or
/// in Redis), whether the policy file is watched, and whether it is enforced.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Serving {
    /// A policy per agent: a grants file (see `mcp-policy grant add`). Each request's
    /// bearer token picks its grant and policy; unknown or revoked tokens get 401.
    #[arg(long, value_name = "FILE", env = "MCP_POLICY_GRANTS")]
    pub grants: Option<PathBuf>,
    /// Tool pins (a lock file `mcp-policy pin` writes): a tool whose definition
    /// changed since it was pinned, or that has no pin, is withheld and denied.
    #[arg(long, value_name = "FILE", env = "MCP_POLICY_PINS")]
    pub pins: Option<PathBuf>,
    /// Keep counters in Redis or Valkey, shared by every replica (e.g.
    /// redis://127.0.0.1:6379/). Without it, counters live in this process.
    #[arg(long, value_name = "URL", env = "MCP_POLICY_REDIS")]
    pub redis: Option<String>,
    /// While Redis is unreachable, allow limited calls uncounted (with a warning)
    /// instead of denying them.
    #[arg(long, requires = "redis", env = "MCP_POLICY_FAIL_OPEN")]
    pub fail_open: bool,
    /// Reload the policy file when it changes; a broken edit keeps the last good policy.
    #[arg(long, env = "MCP_POLICY_WATCH")]
    pub watch: bool,
    /// A dry run: deny nothing, log what the policy would deny.
    #[arg(long, env = "MCP_POLICY_MONITOR")]
    pub monitor: bool,
    /// List only the tools the caller's policy may allow (under default deny, tools
    /// without a rule are left out of tools/list, not only hidden ones).
    #[arg(long, env = "MCP_POLICY_LIST_ONLY_ALLOWED")]
    pub list_only_allowed: bool,
    /// Judge every request under this policy too, and log what it would deny.
    #[arg(long, value_name = "FILE", env = "MCP_POLICY_CANDIDATE")]
    pub candidate: Option<PathBuf>,
    /// Approvers of calls that need a person's approval (`require_approval`): a file
    /// of NAME:TOKEN lines. MCP_POLICY_APPROVER_TOKEN names one more, `operator`.
    /// They use GET /approvals and POST /approvals/ID/approve|decline.
    #[arg(long, value_name = "FILE", env = "MCP_POLICY_APPROVER_TOKEN_FILE")]
    pub approver_token_file: Option<PathBuf>,
    /// POST each new request for approval to this URL as JSON (a Slack-compatible
    /// incoming webhook: `text`, and the request under `approval`).
    #[arg(long, value_name = "URL", env = "MCP_POLICY_APPROVAL_WEBHOOK")]
    pub approval_webhook: Option<String>,
    /// The address the agents' users reach this server at (`https://gateway.example`):
    /// a client that opens links for its user (URL-mode elicitation) is sent to the
    /// approvals page there when a call waits for an operator.
    #[arg(long, value_name = "URL", env = "MCP_POLICY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Behind a gateway of several servers: this server's name, which labels its
    /// metrics (`server`) and prefixes its Redis keys, so servers never share a counter.
    #[arg(skip)]
    pub server: Option<String>,
}

/// The policy layer, on in-memory or Redis counters.
pub enum AnyLayer {
    Memory(PolicyLayer),
    Redis(PolicyLayer<RedisCounters>),
}

/// The policy layer for `path` (or the grants file of `store`) on `store`, or exit
/// code 1 with the error (the file's path and line, or why Redis cannot be reached).
pub async fn load_layer(program: &str, path: Option<&Path>, store: &Serving) -> AnyLayer {
    if path.is_none() && store.grants.is_none() {
        eprintln!("{program}: name a policy (--policy FILE) or a grants file (--grants FILE)");
        std::process::exit(2);
    }
    build_layer(program, path, store)
        .await
        .unwrap_or_else(|err| {
            eprintln!("{program}: {err}");
            std::process::exit(1);
        })
}

/// [`load_layer`] without ending the program: the error, for a caller that keeps
/// running (the gateway reloading its configuration file). Warnings go to stderr.
pub async fn build_layer(
    program: &str,
    path: Option<&Path>,
    store: &Serving,
) -> Result<AnyLayer, String> {
    let (policy, grants) = match (&store.grants, path) {
        (Some(file), _) => {
            let grants =
                Grants::from_file(file).map_err(|err| format!("cannot load the grants: {err}"))?;
            for (name, policy) in grants.policies() {
                for warning in policy.warnings() {
                    eprintln!("{program}: warning: policy {name}: {warning}");
                }
            }
            (Policy::deny_all(), Some(grants))
        }
        (None, Some(path)) => {
            let policy =
                Policy::from_file(path).map_err(|err| format!("cannot load the policy: {err}"))?;
            for warning in policy.warnings() {
                eprintln!("{program}: warning: {}: {warning}", path.display());
            }
            (policy, None)
        }
        (None, None) => return Err("name a policy or a grants file".to_owned()),
    };
    let mode = if store.monitor {
        Mode::Monitor
    } else {
        Mode::Enforce
    };
    let candidate = match &store.candidate {
        Some(path) => Some(
            Policy::from_file(path)
                .map_err(|err| format!("cannot load the candidate policy: {err}"))?,
        ),
        None => None,
    };
    let webhook = match &store.approval_webhook {
        Some(url) => crate::approvals::Webhook::start(url)?,
        None => crate::approvals::Webhook::default(),
    };
    let page = approvals_page(store)?;
    // Tracing lines as before, and the metrics `GET /metrics` serves.
    metrics();
    let server = store.server.as_deref();
    let Some(url) = &store.redis else {
        let layer = configure(PolicyLayer::new(policy), mode, candidate, server, webhook)
            .list_only_allowed(store.list_only_allowed);
        let layer = match page {
            Some(page) => layer.approvals_page(page),
            None => layer,
        };
        return Ok(AnyLayer::Memory(with_pins(
            with_grants(layer, grants),
            store,
        )?));
    };
    let mut counters = RedisCounters::builder(url.as_str());
    if let Some(server) = server {
        counters = counters.prefix(format!("{}{server}:", RedisCounters::DEFAULT_PREFIX));
    }
    if store.fail_open {
        counters = counters.fail_open();
    }
    let counters = counters
        .connect()
        .await
        .map_err(|err| format!("cannot use Redis at {url}: {err}"))?;
    let engine = Engine::with_counters(policy, counters);
    let layer = configure(
        PolicyLayer::from_engine(engine),
        mode,
        candidate,
        server,
        webhook,
    )
    .list_only_allowed(store.list_only_allowed);
    let layer = match page {
        Some(page) => layer.approvals_page(page),
        None => layer,
    };
    Ok(AnyLayer::Redis(with_pins(
        with_grants(layer, grants),
        store,
    )?))
}

/// The approvals page under `--public-url` (`/NAME/approvals` for server NAME of a
/// gateway of several).
fn approvals_page(store: &Serving) -> Result<Option<String>, String> {
    let Some(url) = &store.public_url else {
        return Ok(None);
    };
    let parsed: http::Uri = url
        .parse()
        .map_err(|err| format!("--public-url {url}: not a URL ({err})"))?;
    let web = matches!(parsed.scheme_str(), Some("http" | "https"));
    if !web || parsed.host().is_none() || parsed.query().is_some() {
        return Err(format!(
            "--public-url {url}: must be an http or https URL, like https://gateway.example"
        ));
    }
    let base = url.trim_end_matches('/');
    Ok(Some(match &store.server {
        Some(server) => format!("{base}/{server}/approvals"),
        None => format!("{base}/approvals"),
    }))
}

fn with_grants<S: tower_mcp_policy::counter::CounterStore>(
    layer: PolicyLayer<S>,
    grants: Option<Grants>,
) -> PolicyLayer<S> {
    match grants {
        Some(grants) => layer.grants(grants),
        None => layer,
    }
}

/// The layer with the tool pins of `store`.
fn with_pins<S: tower_mcp_policy::counter::CounterStore>(
    layer: PolicyLayer<S>,
    store: &Serving,
) -> Result<PolicyLayer<S>, String> {
    match &store.pins {
        Some(file) => layer
            .pins_file(file)
            .map_err(|err| format!("cannot load the tool pins: {err}")),
        None => Ok(layer),
    }
}

/// The start-up line naming what is enforced.
pub fn banner<S: tower_mcp_policy::counter::CounterStore + Clone>(
    layer: &PolicyLayer<S>,
    policy: Option<&Path>,
    store: &Serving,
) -> String {
    let grants = layer.handle().grants();
    match (&store.grants, policy) {
        (Some(file), _) => format!("grants {}: {}", file.display(), grants.summary()),
        (None, Some(path)) => format!("policy {}: {}", path.display(), grants.summary()),
        (None, None) => grants.summary(),
    }
}

/// The mode, the observers (tracing lines and metrics, labelled with the server's name
/// behind a gateway of several) and the candidate policy.
fn configure<S>(
    layer: PolicyLayer<S>,
    mode: Mode,
    candidate: Option<Policy>,
    server: Option<&str>,
    webhook: crate::approvals::Webhook,
) -> PolicyLayer<S> {
    let layer = layer.mode(mode);
    let layer = match server {
        Some(server) => layer.observer(((TracingObserver, ServerMetrics::new(server)), webhook)),
        None => layer.observer(((TracingObserver, MetricsObserver), webhook)),
    };
    match candidate {
        Some(candidate) => layer.candidate(candidate),
        None => layer,
    }
}

/// The process's Prometheus recorder, installed on first use; `GET /metrics` renders it.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("the only metrics recorder of this process");
        MetricsObserver::describe();
        handle
    })
}

fn recorder() -> &'static PrometheusRecorder {
    static RECORDER: OnceLock<PrometheusRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| PrometheusBuilder::new().build_recorder())
}

/// The metrics of one server behind a gateway of several: [`MetricsObserver`]'s, each
/// with a `server` label.
#[derive(Debug, Clone)]
struct ServerMetrics {
    label: metrics::Label,
}

impl ServerMetrics {
    fn new(server: &str) -> ServerMetrics {
        metrics();
        ServerMetrics {
            label: metrics::Label::new("server", server.to_owned()),
        }
    }
}

impl tower_mcp_policy::observe::Observer for ServerMetrics {
    fn observe(&self, event: &tower_mcp_policy::observe::Event<'_>) {
        metrics::with_local_recorder(self, || MetricsObserver.observe(event));
    }
}

impl metrics::Recorder for ServerMetrics {
    fn describe_counter(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        text: metrics::SharedString,
    ) {
        recorder().describe_counter(key, unit, text);
    }
    fn describe_gauge(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        text: metrics::SharedString,
    ) {
        recorder().describe_gauge(key, unit, text);
    }
    fn describe_histogram(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        text: metrics::SharedString,
    ) {
        recorder().describe_histogram(key, unit, text);
    }
    fn register_counter(
        &self,
        key: &metrics::Key,
        metadata: &metrics::Metadata<'_>,
    ) -> metrics::Counter {
        recorder().register_counter(&key.with_extra_labels(vec![self.label.clone()]), metadata)
    }
    fn register_gauge(
        &self,
        key: &metrics::Key,
        metadata: &metrics::Metadata<'_>,
    ) -> metrics::Gauge {
        recorder().register_gauge(&key.with_extra_labels(vec![self.label.clone()]), metadata)
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        metadata: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        recorder().register_histogram(&key.with_extra_labels(vec![self.label.clone()]), metadata)
    }
}

/// Starts watching the policy file (or the grants file and its policies), and the
/// tool pins, when asked to; keep the watchers alive.
pub fn watch<S>(
    program: &str,
    layer: &PolicyLayer<S>,
    path: Option<&Path>,
    serving: &Serving,
) -> Vec<tower_mcp_policy::PolicyWatcher>
where
    S: tower_mcp_policy::counter::CounterStore + Clone,
{
    try_watch(layer, path, serving).unwrap_or_else(|err| {
        eprintln!("{program}: {err}");
        std::process::exit(1);
    })
}

/// [`watch`] without ending the program.
pub fn try_watch<S>(
    layer: &PolicyLayer<S>,
    path: Option<&Path>,
    serving: &Serving,
) -> Result<Vec<tower_mcp_policy::PolicyWatcher>, String>
where
    S: tower_mcp_policy::counter::CounterStore + Clone,
{
    if !serving.watch {
        return Ok(Vec::new());
    }
    let handle = layer.handle();
    let mut watched = Vec::new();
    match (&serving.grants, path) {
        (Some(file), _) => watched.push((file.as_path(), handle.watch_grants(file))),
        (None, Some(path)) => watched.push((path, handle.watch(path))),
        (None, None) => {}
    }
    if let Some(pins) = &serving.pins {
        watched.push((pins.as_path(), handle.watch_pins(pins)));
    }
    watched
        .into_iter()
        .map(|(path, watcher)| {
            watcher.map_err(|err| format!("cannot watch {}: {err}", path.display()))
        })
        .collect()
}

/// Where the counters are, and whether the file is watched, for the start-up banner.
pub fn describe(store: &Serving) -> String {
    let watched = match (store.watch, store.grants.is_some()) {
        (true, false) => "; the policy file is watched",
        (true, true) => "; the grants file and its policies are watched",
        (false, _) => "",
    };
    let pins = match (&store.pins, store.watch) {
        (Some(file), true) => format!("; tool pins {} (watched)", file.display()),
        (Some(file), false) => format!("; tool pins {}", file.display()),
        (None, _) => String::new(),
    };
    let counters = match &store.redis {
        None => "counters in memory".to_owned(),
        Some(url) => {
            let mode = if store.fail_open {
                "fail open"
            } else {
                "fail closed"
            };
            format!("counters in Redis at {url} ({mode})")
        }
    };
    let monitor = if store.monitor {
        "; MONITOR MODE: nothing is denied, would-be denials are logged"
    } else {
        ""
    };
    format!("{counters}{watched}{pins}{monitor}")
}

/// A listener on `address`, or exit code 1.
pub async fn bind(program: &str, address: SocketAddr) -> TcpListener {
    TcpListener::bind(address).await.unwrap_or_else(|err| {
        eprintln!("{program}: cannot listen on {address}: {err}");
        std::process::exit(1);
    })
}
