//! [`PolicyLayer`].

use std::path::Path;
use std::sync::Arc;

use tower_layer::Layer;

use super::config::{
    Config, DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY, DEFAULT_MAX_CHARGES,
    DEFAULT_MAX_FILTERED_RESPONSE, DenialFormat, Mode, SharedObserver,
};
use super::gate::Gate;
use super::inflight::InFlight;
use super::params::ToolHeaders;
use super::service::PolicyService;
use super::sessions::{DEFAULT_MAX_SESSIONS, Sessions};
use super::tasks::{DEFAULT_MAX_TASKS, Tasks};
use crate::counter::{CounterStore, MemoryCounters};
use crate::engine::Engine;
use crate::error::PolicyError;
use crate::grants::Grants;
use crate::observe::Observer;
use crate::policy::Policy;
use crate::scope::ScopeHasher;
use crate::source::PolicyHandle;

/// A tower [`Layer`] that enforces a policy on MCP tool calls; see the
/// [module docs](crate::layer) for an example.
///
/// Every service it makes shares one [`Engine`], so counters are shared by all clones.
#[derive(Debug)]
pub struct PolicyLayer<S = MemoryCounters> {
    engine: Arc<Engine<S>>,
    config: Config,
    sessions: Arc<Sessions>,
    tasks: Arc<Tasks>,
    inflight: Arc<InFlight>,
    tool_headers: Arc<ToolHeaders>,
}

impl<S> Clone for PolicyLayer<S> {
    fn clone(&self) -> Self {
        PolicyLayer {
            engine: self.engine.clone(),
            config: self.config.clone(),
            sessions: self.sessions.clone(),
            tasks: self.tasks.clone(),
            inflight: self.inflight.clone(),
            tool_headers: self.tool_headers.clone(),
        }
    }
}

impl PolicyLayer<MemoryCounters> {
    /// The default request body limit: 4 MiB.
    pub const DEFAULT_MAX_BODY: usize = DEFAULT_MAX_BODY;
    /// The default limit on a tools/list JSON response the layer buffers to filter:
    /// 16 MiB.
    pub const DEFAULT_MAX_FILTERED_RESPONSE: usize = DEFAULT_MAX_FILTERED_RESPONSE;
    /// The default number of server-issued sessions remembered: about 7 MB.
    pub const DEFAULT_MAX_SESSIONS: usize = DEFAULT_MAX_SESSIONS;
    /// The default number of task owners remembered: about 8 MB.
    pub const DEFAULT_MAX_TASKS: usize = DEFAULT_MAX_TASKS;
    /// The default most messages in one JSON-RPC batch: 100.
    pub const DEFAULT_MAX_BATCH: usize = DEFAULT_MAX_BATCH;
    /// The default most charges one request may ask the counter store for: 1000.
    pub const DEFAULT_MAX_CHARGES: usize = DEFAULT_MAX_CHARGES;

    /// A layer for `policy`, with in-memory counters.
    pub fn new(policy: impl Into<Arc<Policy>>) -> Self {
        PolicyLayer::from_engine(Engine::new(policy))
    }

    /// Loads a policy file; the error names the file, the JSON Pointer and the line.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        Ok(PolicyLayer::new(Policy::from_file(path)?))
    }

    /// Loads a grants file and its policies (see [`Grants`]): each request is judged
    /// under its own grant's policy, and a request without a known grant reaches
    /// nothing.
    pub fn from_grants_file(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        Ok(PolicyLayer::new(Policy::deny_all()).grants(Grants::from_file(path)?))
    }
}

impl PolicyLayer<MemoryCounters> {
    /// A layer whose counters run on `clock`: a [`FakeClock`](crate::FakeClock) makes
    /// rate-limit tests deterministic.
    pub fn with_clock(
        policy: impl Into<Arc<Policy>>,
        clock: crate::counter::clock::FakeClock,
    ) -> Self {
        PolicyLayer::assemble(Engine::with_clock(policy, clock), None)
    }
}

impl<S: CounterStore> PolicyLayer<S> {
    /// A layer over an engine with any counter store. When the store decides how
    /// credentials are hashed (a store shared by replicas does), the layer uses its
    /// hasher, so every replica counts one caller in one bucket.
    pub fn from_engine(engine: Engine<S>) -> Self {
        let hasher = engine.counters().scope_hasher();
        #[cfg(feature = "redis")]
        if let Some(redis) = (engine.counters() as &dyn std::any::Any)
            .downcast_ref::<crate::counter::RedisCounters>()
        {
            // Requests for approval and answers are shared by the replicas too.
            let shared = crate::approval::redis::RedisApprovals::of(redis);
            engine.source().share_approvals(Arc::new(shared));
        }
        PolicyLayer::assemble(engine, hasher)
    }

    /// Checks every tool list and call against the tool pins of `path` (a lock file
    /// that `mcp-policy pin` writes): a tool whose definition differs from its pin, or
    /// that has none, is withheld from every list and its calls are denied, until it is
    /// re-pinned; each drift is reported once per tool and digest
    /// ([`Event::ToolDrift`](crate::observe::Event::ToolDrift)). In monitor mode drift
    /// is reported, not withheld. The layer's handle reloads them
    /// ([`PolicyHandle::reload_pins_file`](crate::PolicyHandle::reload_pins_file)).
    ///
    /// ```no_run
    /// use tower_mcp_policy::PolicyLayer;
    ///
    /// let layer = PolicyLayer::from_file("policy.json")?.pins_file("tools.lock.json")?;
    /// # Ok::<(), tower_mcp_policy::PolicyError>(())
    /// ```
    pub fn pins_file(self, path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let pins = crate::pins::Pins::from_file(path)?;
        self.engine.source().replace_pins(Some(Arc::new(pins)));
        Ok(self)
    }

    /// Judges each request under its own grant's policy instead of the layer's one
    /// policy (see [`Grants`]): a request without a known grant is answered 401 and
    /// reaches nothing. The layer's [`handle`](PolicyLayer::handle) replaces them.
    #[must_use]
    pub fn grants(self, grants: Grants) -> Self {
        let keep = grants.counter_ids();
        self.engine.source().replace(Arc::new(grants));
        self.engine.counters().retain_counters(&keep);
        self
    }

    /// A handle that replaces this layer's policy while it serves (hot reload); see
    /// [`PolicyHandle`]. Every service of the layer, and every clone, sees the change.
    pub fn handle(&self) -> PolicyHandle
    where
        S: Clone,
    {
        PolicyHandle::new(
            self.engine.source().clone(),
            self.engine.counters().clone(),
            self.config.observer.0.clone(),
        )
    }

    /// The hasher that turns credentials and session ids into counter keys. Replicas
    /// that share counters must share its key: a store shared by replicas provides it
    /// (see [`PolicyLayer::from_engine`]), and setting another one here is reported
    /// (a `StoreError` event, when the layer makes its service), since it would count
    /// the same caller in two buckets.
    #[must_use]
    pub fn scope_hasher(self, hasher: ScopeHasher) -> Self {
        self.configure(|c| c.hasher = hasher)
    }
}

impl<S> PolicyLayer<S> {
    fn assemble(engine: Engine<S>, hasher: Option<ScopeHasher>) -> Self {
        let mut config = Config::default();
        if let Some(hasher) = hasher {
            config.hasher = hasher;
        }
        PolicyLayer {
            engine: Arc::new(engine),
            config,
            sessions: Arc::new(Sessions::new(DEFAULT_MAX_SESSIONS)),
            tasks: Arc::new(Tasks::new(DEFAULT_MAX_TASKS)),
            inflight: Arc::default(),
            tool_headers: Arc::default(),
        }
    }

    /// The engine (policy and counters) shared by every service of this layer.
    pub fn engine(&self) -> &Engine<S> {
        &self.engine
    }

    fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// The largest request body read (default [`PolicyLayer::DEFAULT_MAX_BODY`]); larger ones get 413.
    #[must_use]
    pub fn max_body_size(self, bytes: usize) -> Self {
        self.configure(|c| c.max_body = bytes)
    }

    /// The largest answer the layer buffers to remove hidden tools: a whole
    /// `application/json` answer, or one event of a stream (default
    /// [`PolicyLayer::DEFAULT_MAX_FILTERED_RESPONSE`]). A larger one is replaced by a
    /// JSON-RPC error rather than shown unfiltered (a stream then ends), so a server
    /// cannot make the layer hold more than this per answer.
    #[must_use]
    pub fn max_filtered_response_size(self, bytes: usize) -> Self {
        self.configure(|c| c.max_filtered_response = bytes)
    }

    /// The most messages a JSON-RPC batch may hold (default
    /// [`PolicyLayer::DEFAULT_MAX_BATCH`]); a larger batch is refused (400, nothing
    /// runs). MCP has had no batches since its 2025-06-18 revision.
    #[must_use]
    pub fn max_batch_size(self, messages: usize) -> Self {
        self.configure(|c| c.max_batch = messages)
    }

    /// The most charges one request may ask the counter store for (default
    /// [`PolicyLayer::DEFAULT_MAX_CHARGES`]): its calls times their limits. A larger
    /// request is refused (400, nothing charged or run), so one caller cannot make a
    /// store shared with others (Redis runs the charges of the requests that ask at
    /// once in one script call) miss its deadline.
    #[must_use]
    pub fn max_charges(self, charges: usize) -> Self {
        self.configure(|c| c.max_charges = charges)
    }

    /// Tool lists keep only the tools the caller's policy may allow: besides hidden
    /// tools, those without a rule under `default: deny` are left out, so an agent does
    /// not spend calls on tools it will be refused. Tools with conditions or limits stay
    /// listed (some calls to them pass). Off by default: the hosted PolicyLayer format
    /// lists what is not hidden, and under `default: deny` this makes the layer read
    /// (and, for JSON answers, buffer) every answer, uncompressed.
    ///
    /// ```
    /// use tower_mcp_policy::{Policy, PolicyLayer};
    ///
    /// let policy: Policy = r#"{"version":"1","default":"deny","tools":{"search":{}}}"#.parse()?;
    /// let layer = PolicyLayer::new(policy).list_only_allowed(true);
    /// # let _ = layer;
    /// # Ok::<(), tower_mcp_policy::PolicyError>(())
    /// ```
    #[must_use]
    pub fn list_only_allowed(self, only: bool) -> Self {
        self.configure(|c| c.list_only_allowed = only)
    }

    /// Where operators approve calls (`require_approval`), as the agents' users reach
    /// it: the approvals page of `mcp-policy gateway`, or your own. A call that waits
    /// for an operator, from a client that can open a URL for its user (URL-mode
    /// elicitation, MCP 2025-11-25 and later) and cannot show the layer's own form, is
    /// answered with a `-32042` error (URL elicitation required) that sends the user to
    /// `url#ID`, with the readable denial as its message; other clients get the
    /// denial as before.
    ///
    /// ```
    /// use tower_mcp_policy::{Policy, PolicyLayer};
    ///
    /// let policy: Policy = r#"{"version":"1","default":"allow","tools":{
    ///     "transfer":{"require_approval":{}}}}"#.parse()?;
    /// let layer = PolicyLayer::new(policy).approvals_page("https://gateway.example/approvals");
    /// # let _ = layer;
    /// # Ok::<(), tower_mcp_policy::PolicyError>(())
    /// ```
    #[must_use]
    pub fn approvals_page(self, url: impl Into<String>) -> Self {
        let url: Arc<str> = url.into().into();
        self.configure(|c| c.approvals_page = Some(url))
    }

    /// Enforce the policy (the default), or only report what it would do
    /// ([`Mode::Monitor`], a dry run).
    #[must_use]
    pub fn mode(self, mode: Mode) -> Self {
        self.configure(|c| c.mode = mode)
    }

    /// Where the layer's [`Event`](crate::observe::Event)s go (default
    /// [`TracingObserver`](crate::observe::TracingObserver)). To keep the tracing lines
    /// and add your own, pass a pair: `.observer((TracingObserver, mine))`. Set it before
    /// [`PolicyLayer::handle`], whose reloads it reports too.
    #[must_use]
    pub fn observer(self, observer: impl Observer) -> Self {
        self.configure(|c| c.observer = SharedObserver(Arc::new(observer)))
    }

    /// Judges every request under `candidate` too, beside the policy in force, with
    /// counters of its own, and reports what it would refuse as `would_deny` events
    /// with `candidate: true` and its fingerprint. The candidate never changes an
    /// answer: observe a new version on real traffic before putting it in force.
    #[must_use]
    pub fn candidate(self, candidate: impl Into<Arc<Policy>>) -> Self {
        let engine = Arc::new(Engine::new(candidate));
        self.configure(|c| c.candidate = Some(engine))
    }

    /// How denied calls are answered (default [`DenialFormat::ToolResult`]).
    #[must_use]
    pub fn denial_format(self, format: DenialFormat) -> Self {
        self.configure(|c| c.denial_format = format)
    }

    /// How long a request body may take to arrive, from the moment the request reaches
    /// the layer (default: no limit). A body still incomplete then is answered 408 with a
    /// JSON-RPC error and never forwarded, so a stalled upload holds its memory (what it
    /// sent, never more) for at most this long. Needs a tokio runtime's timer (feature
    /// `tokio`).
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    #[must_use]
    pub fn body_read_timeout(self, timeout: std::time::Duration) -> Self {
        self.configure(|c| c.body_read_timeout = Some(timeout))
    }
}

impl<S> PolicyLayer<S> {
    /// How many server-issued sessions to remember (default
    /// [`PolicyLayer::DEFAULT_MAX_SESSIONS`], about 7 MB).
    ///
    /// A `Mcp-Session-Id` counts as a session for `"scope": "session"` limits only if
    /// this layer saw the server issue it in answer to `initialize`, until the server
    /// ends it (a successful DELETE, or a 404 for it). Any other id counts per grant, so
    /// inventing ids gains nothing. Past the limit the oldest sessions are forgotten:
    /// their session limits then count per grant, which is never looser. `0` counts
    /// every session-scoped limit per grant.
    #[must_use]
    pub fn max_sessions(mut self, sessions: usize) -> Self {
        self.sessions = Arc::new(Sessions::new(sessions));
        self
    }

    /// How many task owners to remember (default [`PolicyLayer::DEFAULT_MAX_TASKS`],
    /// about 8 MB).
    ///
    /// A task id is bound to the grant whose request the server handed it out to (a
    /// `CreateTaskResult`, or a task handle in any answer): `tasks/get`, `tasks/result`,
    /// `tasks/update` and `tasks/cancel` pass only for that grant, until the task's
    /// `ttlMs` runs out; any other caller, and any id the server did not hand out
    /// through this layer, gets the answer a server gives for an unknown task
    /// (`-32602`), and `tasks/list` answers keep only the caller's tasks. Past the
    /// limit the oldest tasks are forgotten, and become unreachable through the layer
    /// (a store shared by replicas, such as Redis, still knows them). Callers without a
    /// credential are one grant: give them credentials (or a [`Grant`](crate::Grant))
    /// when their tasks must be kept apart.
    #[must_use]
    pub fn max_tasks(mut self, tasks: usize) -> Self {
        self.tasks = Arc::new(Tasks::new(tasks));
        self
    }
}

impl<Inner, S: CounterStore> Layer<Inner> for PolicyLayer<S> {
    type Service = PolicyService<Inner, S>;

    fn layer(&self, inner: Inner) -> Self::Service {
        let gate = Gate::new(
            self.engine.clone(),
            self.config.clone(),
            self.sessions.clone(),
            self.tasks.clone(),
            self.inflight.clone(),
            self.tool_headers.clone(),
        );
        PolicyService::from_gate(inner, Arc::new(gate))
    }
}

impl<Inner> PolicyService<Inner> {
    /// Wraps `inner` with `policy` and in-memory counters.
    pub fn new(inner: Inner, policy: impl Into<Arc<Policy>>) -> Self {
        PolicyLayer::new(policy).layer(inner)
    }

    /// A [`PolicyLayer`] for `policy`.
    pub fn layer(policy: impl Into<Arc<Policy>>) -> PolicyLayer {
        PolicyLayer::new(policy)
    }
}
