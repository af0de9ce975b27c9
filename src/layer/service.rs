//! [`PolicyService`]: decode, ask, then forward or answer. No policy logic lives here.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body::Body;
use serde_json::Value;
use smallvec::SmallVec;
use tower_service::Service;

use super::body::{PolicyBody, ResponseBody};
use super::future::ResponseFuture;
use super::layer::{DEFAULT_MAX_BODY, DEFAULT_MAX_FILTERED_RESPONSE, PolicyLayer};
use super::refund::{Charged, Refunder, Watch};
use super::request::{JudgedHeaders, Refused, check_routing_headers};
use super::response::{
    self, DenialFormat, accepted, denial_message, http_error, json_response, not_executed,
};
use super::sessions::Sessions;
use crate::counter::{ChargeError, CounterStore, MemoryCounters};
use crate::engine::{Call, Engine, PendingCharges, Prepared, Refusal, Verdict};
use crate::jsonrpc::{self, Decoded, MessageKind};
use crate::observe::{
    ArgKeys, CallDecision, CallEvent, Event, Observer, TracingObserver, Upstream,
};
use crate::policy::Policy;
use crate::scope::{ScopeHasher, ScopeKeys};
use crate::value::ArgValue;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) use super::request::MCP_SESSION_ID;

/// The grant a request belongs to, chosen by the application.
///
/// Insert it as a request extension (for example in your own auth middleware, with the
/// tenant or user id it established) and it takes precedence over the `Authorization`
/// header for `"scope": "grant"` counters.
///
/// ```
/// # use tower_mcp_policy::Grant;
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(Grant::new("tenant-42"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant(Arc<str>);

impl Grant {
    /// A grant named `key`.
    pub fn new(key: impl Into<Arc<str>>) -> Grant {
        Grant(key.into())
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether the layer enforces its policy or only reports what it would do.
///
/// Trying a policy on live traffic first: the call it would deny runs, and a
/// `would_deny` event says so.
///
/// ```
/// use tower::{Layer, ServiceExt};
/// use tower_mcp_policy::testing::{self, Answer};
/// use tower_mcp_policy::{Mode, Policy, PolicyLayer};
///
/// # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
/// # let my_mcp_service = tower::service_fn(|_: http::Request<tower_mcp_policy::layer::PolicyBody>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
/// #         br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#))))
/// # });
/// let policy: Policy = r#"{ "version": "1", "default": "deny" }"#.parse()?;
/// let service = PolicyLayer::new(policy).mode(Mode::Monitor).layer(my_mcp_service);
/// let response = service.oneshot(testing::tool_call("transfer", serde_json::json!({}))).await?;
/// assert!(matches!(testing::answer(response).await?, Answer::Result(_)));
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(doc()).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Deny, hide and refuse as the policy says (the default).
    #[default]
    Enforce,
    /// A dry run: nothing is denied or hidden. Every call enforcement would deny is
    /// forwarded and reported as a `would_deny` event with the fields a denial has;
    /// counters are charged exactly as under enforcement (a would-be-denied request
    /// charges nothing), so the report is what enforcement would do. Bodies the layer
    /// cannot read are still refused: that is the protocol, not the policy.
    Monitor,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub observer: SharedObserver,
    /// A policy judged beside the enforced one, reported only.
    pub candidate: Option<Arc<Engine<MemoryCounters>>>,
    pub max_body: usize,
    pub max_filtered_response: usize,
    pub denial_format: DenialFormat,
    pub hasher: ScopeHasher,
    pub body_read_timeout: Option<std::time::Duration>,
    pub mode: Mode,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            observer: SharedObserver(Arc::new(TracingObserver)),
            candidate: None,
            max_body: DEFAULT_MAX_BODY,
            max_filtered_response: DEFAULT_MAX_FILTERED_RESPONSE,
            denial_format: DenialFormat::default(),
            hasher: ScopeHasher::random(),
            body_read_timeout: None,
            mode: Mode::Enforce,
        }
    }
}

/// The layer's observer.
#[derive(Clone)]
pub(crate) struct SharedObserver(pub Arc<dyn Observer>);

impl fmt::Debug for SharedObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}

#[derive(Debug)]
pub(crate) struct Shared<S> {
    pub engine: Arc<Engine<S>>,
    pub config: Config,
    pub sessions: Arc<Sessions>,
    /// Gives charges back and reports it.
    pub refunder: Arc<dyn Refunder>,
}

/// Refunds through the engine's store, each reported as an event.
pub(crate) struct Refunds<S> {
    pub engine: Arc<Engine<S>>,
    pub observer: SharedObserver,
}

impl<S: CounterStore> Refunder for Refunds<S> {
    fn refund(&self, charges: &[crate::counter::Charge]) {
        self.engine.counters().refund(charges);
        self.observer.0.observe(&Event::Refund {
            charges: charges.len(),
        });
    }
}

impl fmt::Debug for dyn Refunder + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Refunder")
    }
}

/// Middleware that enforces a policy on the MCP requests it passes to `Inner`; see the
/// [module docs](crate::layer) for an example.
pub struct PolicyService<Inner, S = MemoryCounters> {
    inner: Inner,
    shared: Arc<Shared<S>>,
}

impl<Inner: Clone, S> Clone for PolicyService<Inner, S> {
    fn clone(&self) -> Self {
        PolicyService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<Inner: fmt::Debug, S> fmt::Debug for PolicyService<Inner, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyService")
            .field("inner", &self.inner)
            .field("policy", &self.shared.engine.policy().summary())
            .finish_non_exhaustive()
    }
}

impl<Inner> PolicyService<Inner> {
    /// Wraps `inner` with `policy` and in-memory counters.
    pub fn new(inner: Inner, policy: impl Into<Arc<Policy>>) -> Self {
        tower_layer::Layer::layer(&PolicyLayer::new(policy), inner)
    }

    /// A [`PolicyLayer`] for `policy`.
    pub fn layer(policy: impl Into<Arc<Policy>>) -> PolicyLayer {
        PolicyLayer::new(policy)
    }
}

impl<Inner, S> PolicyService<Inner, S> {
    pub(crate) fn from_shared(inner: Inner, shared: Arc<Shared<S>>) -> Self {
        PolicyService { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &Inner {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> Inner {
        self.inner
    }

    /// The engine (policy and counters).
    pub fn engine(&self) -> &Engine<S> {
        &self.shared.engine
    }
}

impl<Inner, S, ReqBody, ResBody> Service<Request<ReqBody>> for PolicyService<Inner, S>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Inner::Future: Send + 'static,
    Inner::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    S: CounterStore,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = Inner::Error;
    type Future = ResponseFuture<Inner, S, ReqBody, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The instance that was polled ready serves this request; a clone takes its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(self.shared.clone(), inner, request)
    }
}

/// What the policy made of a decoded body.
pub(crate) enum Judged<B> {
    /// Forward it.
    Forward(Forwarded),
    /// Answer it without forwarding.
    Answer(Response<ResponseBody<B>>),
}

/// What the policy decided about a request, carried by its response as an extension so
/// that outer layers (an access log, a custom metric) can read it.
///
/// ```
/// # use tower_mcp_policy::layer::{Outcome, PolicyDecision};
/// # let response = http::Response::new(());
/// match response.extensions().get::<PolicyDecision>() {
///     Some(decision) if decision.outcome == Outcome::Denied => { /* decision.denials */ }
///     _ => {}
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyDecision {
    /// What became of the request.
    pub outcome: Outcome,
    /// The denials, one per denied call (for `Denied` and `WouldDeny`).
    pub denials: Vec<crate::decision::Denial>,
}

/// What became of a request; see [`PolicyDecision`] and its example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Judged and forwarded (every call allowed, or no tool call in it).
    Forwarded,
    /// A call was denied: answered by the layer, nothing forwarded.
    Denied,
    /// Monitor mode: enforcement would have denied a call; forwarded anyway.
    WouldDeny,
    /// Refused before any decision (unreadable body, bad headers, too large, too slow).
    Rejected,
    /// Not judged: a request without a body (GET, DELETE, ...) passed through.
    NotJudged,
}

impl PolicyDecision {
    pub(crate) fn new(outcome: Outcome) -> PolicyDecision {
        PolicyDecision {
            outcome,
            denials: Vec::new(),
        }
    }

    fn from_refusals(outcome: Outcome, refusals: &[Refusal]) -> PolicyDecision {
        PolicyDecision {
            outcome,
            denials: refusals
                .iter()
                .filter_map(|r| match r {
                    Refusal::Denied(denial) => Some(denial.clone()),
                    _ => None,
                })
                .collect(),
        }
    }
}

/// What a forwarded body holds that matters for its answer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Holds {
    /// A tools/list request: a JSON answer is filtered.
    pub lists_tools: bool,
    /// An initialize request: a session id in the answer is issued by the server.
    pub initializes: bool,
}

/// What the layer keeps of a forwarded request to handle its answer.
#[derive(Debug)]
pub(crate) struct Forwarded {
    /// The policy the request was judged by: its answer is filtered by the same one.
    pub policy: Arc<Policy>,
    /// What the policy decided, for the response's extensions.
    pub decision: PolicyDecision,
    pub holds: Holds,
    /// The charges the request paid, for refunds.
    pub charged: Option<Charged>,
    /// The request's `Mcp-Session-Id`, if any.
    pub session: Option<http::HeaderValue>,
    /// A DELETE: a successful answer ends the session.
    pub deletes: bool,
    /// A GET: the server's event stream, which may replay tool lists.
    pub streams: bool,
    /// The allowed calls, reported once the server answers (when the observer wants
    /// them).
    pub allowed: Vec<AllowedCall>,
    /// When the request was handed to the inner service (when `allowed` is not empty).
    pub sent: Option<Instant>,
}

/// What an allowed call's event needs once the server has answered.
#[derive(Debug)]
pub(crate) struct AllowedCall {
    tool: Box<str>,
    id: Option<jsonrpc::Id>,
    arg_keys: Box<[Box<str>]>,
    keys: ScopeKeys,
}

impl Forwarded {
    /// A request judged under `policy`.
    pub(crate) fn judged(
        policy: &Arc<Policy>,
        holds: Holds,
        charged: Option<Charged>,
        decision: PolicyDecision,
    ) -> Forwarded {
        Forwarded {
            policy: policy.clone(),
            decision,
            holds,
            charged,
            session: None,
            deletes: false,
            streams: false,
            allowed: Vec::new(),
            sent: None,
        }
    }

    /// A request without a body, passed through unjudged under `policy`.
    pub(crate) fn unjudged(policy: Arc<Policy>) -> Forwarded {
        Forwarded {
            policy,
            decision: PolicyDecision::new(Outcome::NotJudged),
            holds: Holds::default(),
            charged: None,
            session: None,
            deletes: false,
            streams: false,
            allowed: Vec::new(),
            sent: None,
        }
    }
}

/// A body that decoded and passed the header checks, ready for the engine.
struct Inspected<'a> {
    decoded: Decoded<'a>,
    keys: ScopeKeys,
    holds: Holds,
}

impl Inspected<'_> {
    fn into_owned(self) -> Inspected<'static> {
        Inspected {
            decoded: self.decoded.into_owned(),
            keys: self.keys,
            holds: self.holds,
        }
    }

    fn calls(&self) -> SmallVec<[Call<'_>; 2]> {
        Call::all_in(&self.decoded)
    }
}

/// What judging a body came to.
// A short-lived value: boxing the large variant would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Judgment<B, S: CounterStore> {
    /// Decided.
    Judged(Judged<B>),
    /// The charges wait for the counter store: its future, and what the verdict needs
    /// once it answers, owned, so the body is decoded and judged only once.
    Awaiting(S::Future, Charging),
}

/// What a request awaiting its charges keeps.
pub(crate) struct Charging {
    started: Instant,
    policy: Arc<Policy>,
    inspected: Inspected<'static>,
    pending: PendingCharges<'static>,
}

impl<S: CounterStore> Shared<S> {
    /// Judges the body: the decision, or the store's future to await for it (nothing
    /// is charged until that future is polled).
    pub(crate) fn judge<B>(&self, parts: &Parts, bytes: &Bytes) -> Judgment<B, S> {
        let started = Instant::now();
        if let Some(candidate) = &self.config.candidate {
            self.judge_candidate(candidate, parts, bytes);
        }
        // One snapshot of the policy for the whole request: the decode plan, the rules,
        // and the filtering of its answer.
        let policy = self.engine.policy();
        let inspected = match self.inspect(&policy, parts, bytes) {
            Ok(inspected) => inspected,
            Err(answer) => return Judgment::Judged(Judged::Answer(answer)),
        };
        let calls = inspected.calls();
        let pending = match self.engine.prepare(&policy, &calls, &inspected.keys) {
            Prepared::Done(verdict) => {
                let concluded = self.conclude(&policy, &inspected, verdict, None, started);
                return Judgment::Judged(concluded);
            }
            Prepared::Charge(pending) => pending,
        };
        let counters = self.engine.counters();
        if let Some(result) = counters.charge_now(pending.charges()) {
            let charged = result
                .is_ok()
                .then(|| Charged::new(&pending, &inspected.decoded));
            let verdict = pending.finish(self.logged(result));
            let concluded = self.conclude(&policy, &inspected, verdict, charged, started);
            return Judgment::Judged(concluded);
        }
        // Only stores that must be awaited get here.
        let future = counters.charge(pending.charges());
        let pending = pending.into_owned();
        drop(calls);
        let charging = Charging {
            started,
            inspected: inspected.into_owned(),
            pending,
            policy,
        };
        Judgment::Awaiting(future, charging)
    }

    /// The decision once the store has answered for the charges of `charging`.
    pub(crate) fn charged<B>(
        &self,
        charging: Charging,
        result: Result<(), ChargeError>,
    ) -> Judged<B> {
        let charged = result
            .is_ok()
            .then(|| Charged::new(&charging.pending, &charging.inspected.decoded));
        let verdict = charging.pending.finish(self.logged(result));
        let (policy, inspected) = (&charging.policy, &charging.inspected);
        self.conclude(policy, inspected, verdict, charged, charging.started)
    }

    /// Decodes the body and checks it against the headers; the error is the answer.
    #[allow(clippy::result_large_err)]
    fn inspect<'a, B>(
        &self,
        policy: &Policy,
        parts: &Parts,
        bytes: &'a Bytes,
    ) -> Result<Inspected<'a>, Response<ResponseBody<B>>> {
        let decoded = jsonrpc::decode(bytes, policy).map_err(|err| {
            self.config.observer.0.observe(&Event::Rejected {
                status: StatusCode::BAD_REQUEST.as_u16(),
                code: err.code(),
                message: err.message(),
            });
            http_error(StatusCode::BAD_REQUEST, err.id(), err.code(), err.message())
        })?;
        let first_id = decoded.messages().first().and_then(|m| m.id());
        let headers = JudgedHeaders::read(&parts.headers);
        check_routing_headers(&headers, &decoded)
            .map_err(|refused| self.refused_response(refused, first_id))?;
        let keys = self
            .scope_keys(parts, &headers)
            .map_err(|refused| self.refused_response(refused, first_id))?;
        let mut holds = Holds::default();
        for message in decoded.messages() {
            if message.kind() == MessageKind::Request {
                holds.lists_tools |= message.method() == Some("tools/list");
                holds.initializes |= message.method() == Some("initialize");
            }
        }
        Ok(Inspected {
            decoded,
            keys,
            holds,
        })
    }

    /// Forward, or answer the refusal; one event per refused call now, and one per
    /// allowed call once the server answers.
    fn conclude<B>(
        &self,
        policy: &Arc<Policy>,
        inspected: &Inspected<'_>,
        verdict: Verdict,
        charged: Option<Charged>,
        started: Instant,
    ) -> Judged<B> {
        let monitor = self.config.mode == Mode::Monitor;
        let observer = &*self.config.observer.0;
        report_refusals(observer, policy, inspected, &verdict, monitor, false);
        observer.observe(&Event::Judged {
            policy: policy.fingerprint(),
            latency: started.elapsed(),
            tracked_keys: self.engine.counters().tracked_keys(),
        });
        match verdict {
            Verdict::Forward => {
                let mut forwarded = Forwarded::judged(
                    policy,
                    inspected.holds,
                    charged,
                    PolicyDecision::new(Outcome::Forwarded),
                );
                if observer.wants_allowed() {
                    forwarded.allowed = allowed_calls(inspected);
                }
                Judged::Forward(forwarded)
            }
            // A dry run: what enforcement would refuse is reported, and runs, uncharged
            // (enforcement would have charged nothing either).
            Verdict::Refuse(refusals) if monitor => Judged::Forward(Forwarded::judged(
                policy,
                inspected.holds,
                None,
                PolicyDecision::from_refusals(Outcome::WouldDeny, &refusals),
            )),
            Verdict::Refuse(refusals) => {
                let decision = PolicyDecision::from_refusals(Outcome::Denied, &refusals);
                let mut response = self.refusal_response(&inspected.decoded, refusals);
                response.extensions_mut().insert(decision);
                Judged::Answer(response)
            }
        }
    }

    fn scope_keys(&self, parts: &Parts, headers: &JudgedHeaders<'_>) -> Result<ScopeKeys, Refused> {
        let hasher = &self.config.hasher;
        let (authorization, session) = headers.scope()?;
        let grant = match (parts.extensions.get::<Grant>(), authorization) {
            (Some(grant), _) => hasher.application(grant.as_str()),
            (None, Some(credential)) => hasher.credential(credential.as_bytes()),
            (None, None) => hasher.anonymous(),
        };
        // Only a session the server issued is a session; any other id counts per grant.
        let session = session
            .map(|id| hasher.session(id.as_bytes()))
            .filter(|&session| self.sessions.is_issued(session))
            .unwrap_or_else(|| hasher.no_session(grant));
        Ok(ScopeKeys::new(grant, session))
    }

    /// One entry per request of the body; notifications get none.
    fn refusal_response<B>(
        &self,
        decoded: &Decoded<'_>,
        refusals: Vec<Refusal>,
    ) -> Response<ResponseBody<B>> {
        let mut refusals = refusals.into_iter();
        let mut entries = Vec::new();
        for message in decoded.messages() {
            let refusal = match message.tool_call() {
                Some(_) => refusals.next().unwrap_or(Refusal::NotExecuted),
                None => Refusal::NotExecuted,
            };
            if message.kind() != MessageKind::Request {
                continue;
            }
            entries.push(match refusal {
                Refusal::Denied(denial) => {
                    denial_message(message.id(), &denial, self.config.denial_format)
                }
                Refusal::NotExecuted => not_executed(message.id()),
            });
        }
        match entries.len() {
            0 => accepted(),
            _ if !decoded.is_batch() => json_response(StatusCode::OK, &entries[0]),
            _ => json_response(StatusCode::OK, &Value::Array(entries)),
        }
    }

    /// When responses may need filtering, asks the server not to compress them: a
    /// compressed tool list could not be read, so it could not be filtered.
    pub(crate) fn prepare_forward(&self, forwarded: &Forwarded, mut parts: Parts) -> Parts {
        if self.must_filter(forwarded) {
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                http::HeaderValue::from_static("identity"),
            );
        }
        parts
    }

    /// Records the sessions the server issues and ends, as its answers show them.
    fn track_sessions<B>(&self, response: &Response<B>, forwarded: &Forwarded) {
        let status = response.status();
        if forwarded.holds.initializes
            && status.is_success()
            && let Some(id) = response.headers().get(&MCP_SESSION_ID)
        {
            self.sessions
                .issue(self.config.hasher.session(id.as_bytes()));
        }
        if let Some(id) = &forwarded.session
            && (status == StatusCode::NOT_FOUND || (forwarded.deletes && status.is_success()))
        {
            self.sessions.end(self.config.hasher.session(id.as_bytes()));
        }
    }

    /// Handles the inner response: records issued and ended sessions; refunds the
    /// charges of calls the server did not run; and makes sure hidden tools never show
    /// in a tool list: the answer to a POST holding a tools/list (JSON whole, SSE event
    /// by event) and the GET stream are filtered.
    pub(crate) fn wrap<B>(
        &self,
        mut response: Response<B>,
        forwarded: Forwarded,
    ) -> Response<ResponseBody<B>> {
        self.track_sessions(&response, &forwarded);
        self.report_allowed(&forwarded, Some(response.status().as_u16()));
        response.extensions_mut().insert(forwarded.decision.clone());
        // Only an answer that may carry a tool list is filtered: the answer to a POST
        // holding a tools/list, or the GET stream (which may replay one). Any other
        // answer, compressed or not, passes as it is.
        let filter = self.must_filter(&forwarded);
        let mut charged = forwarded.charged;
        if let Some(charged) = &mut charged
            && matches!(response.status().as_u16(), 502..=504)
        {
            // The server was not reached: nothing ran.
            charged.refund_all(&*self.refunder);
        }
        let watch = charged.filter(|c| !c.is_empty()).map(|charged| Watch {
            charged,
            refunder: self.refunder.clone(),
        });
        let policy = forwarded.policy;
        let headers = response.headers();
        let is_sse = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"));
        let encoded = headers.get_all(header::CONTENT_ENCODING).iter().any(|v| {
            v.to_str()
                .map(|v| {
                    v.split(',')
                        .any(|c| !c.trim().eq_ignore_ascii_case("identity"))
                })
                .unwrap_or(true)
        });
        if encoded && filter {
            tracing::warn!(
                target: "tower_mcp_policy",
                "the server compressed a response the policy must filter; refused"
            );
            return http_error(
                StatusCode::BAD_GATEWAY,
                None,
                response::INTERNAL_ERROR,
                "the server compressed a response that the policy layer must read to remove hidden tools",
            );
        }
        if !filter && (watch.is_none() || encoded) {
            // Nothing to filter, and nothing to watch (or nothing readable): untouched.
            return response.map(ResponseBody::inner);
        }
        let policy = filter.then_some(policy);
        if filter {
            response.headers_mut().remove(header::CONTENT_LENGTH);
        }
        let limit = self.config.max_filtered_response;
        if is_sse {
            response.map(|body| ResponseBody::sse(body, policy, watch))
        } else {
            response.map(|body| ResponseBody::json(body, policy, limit, watch))
        }
    }

    /// True when `policy` hides tools and the layer enforces it (a dry run hides
    /// nothing).
    fn hides(&self, policy: &Policy) -> bool {
        self.config.mode == Mode::Enforce && policy.hides_anything()
    }

    /// True when the answer to `forwarded` may carry a tool list with hidden tools.
    fn must_filter(&self, forwarded: &Forwarded) -> bool {
        self.hides(&forwarded.policy) && (forwarded.holds.lists_tools || forwarded.streams)
    }

    /// Refunds every charge of a forwarded request whose inner service failed.
    pub(crate) fn failed(&self, forwarded: &mut Forwarded) {
        self.report_allowed(forwarded, None);
        if let Some(charged) = &mut forwarded.charged {
            charged.refund_all(&*self.refunder);
        }
    }

    /// One event per allowed call of `forwarded`, with the server's answer.
    fn report_allowed(&self, forwarded: &Forwarded, status: Option<u16>) {
        let Some(sent) = forwarded.sent else {
            return;
        };
        let upstream = Upstream {
            status,
            latency: sent.elapsed(),
        };
        let policy = &forwarded.policy;
        for call in &forwarded.allowed {
            self.config.observer.0.observe(&Event::Call(CallEvent {
                decision: CallDecision::Allow,
                tool: &call.tool,
                tool_label: policy.tool_label(&call.tool),
                method: TOOLS_CALL,
                jsonrpc_id: call.id.as_ref(),
                grant: call.keys.grant,
                session: call.keys.session,
                policy: policy.fingerprint(),
                candidate: false,
                denial: None,
                upstream: Some(upstream),
                arg_keys: ArgKeys::Owned(&call.arg_keys),
            }));
        }
    }

    /// The store's answer; its error (which the agent never reads) is reported.
    fn logged(&self, result: Result<(), ChargeError>) -> Result<(), ChargeError> {
        if let Err(ChargeError::Unavailable(error)) = &result {
            self.config.observer.0.observe(&Event::StoreError { error });
        }
        result
    }

    /// The layer's answer to a request refused before any decision, reported.
    pub(crate) fn refused_response<B>(
        &self,
        refused: Refused,
        id: Option<&jsonrpc::Id>,
    ) -> Response<ResponseBody<B>> {
        self.config.observer.0.observe(&Event::Rejected {
            status: refused.status.as_u16(),
            code: refused.code,
            message: &refused.message,
        });
        http_error(refused.status, id, refused.code, &refused.message)
    }

    /// Judges the body under the candidate policy, with its own counters, and reports
    /// what it would refuse. Nothing else comes of it.
    fn judge_candidate(&self, candidate: &Engine<MemoryCounters>, parts: &Parts, bytes: &Bytes) {
        let policy = candidate.policy();
        let Ok(decoded) = jsonrpc::decode(bytes, &*policy) else {
            return; // the enforced policy's decoder answers it
        };
        let Ok(keys) = self.scope_keys(parts, &JudgedHeaders::read(&parts.headers)) else {
            return;
        };
        let inspected = Inspected {
            decoded,
            keys,
            holds: Holds::default(),
        };
        let calls = inspected.calls();
        let verdict = match candidate.prepare(&policy, &calls, &inspected.keys) {
            Prepared::Done(verdict) => verdict,
            Prepared::Charge(pending) => {
                let result = candidate.counters().try_charge(pending.charges());
                pending.finish(result)
            }
        };
        drop(calls);
        let observer = &*self.config.observer.0;
        report_refusals(observer, &policy, &inspected, &verdict, true, true);
    }
}

const TOOLS_CALL: &str = "tools/call";

/// The allowed calls of `inspected`, owned, for their events after the answer.
fn allowed_calls(inspected: &Inspected<'_>) -> Vec<AllowedCall> {
    inspected
        .decoded
        .messages()
        .iter()
        .filter_map(|m| Some((m, m.tool_call()?)))
        .map(|(message, call)| AllowedCall {
            tool: call.name().into(),
            id: message.id().cloned(),
            arg_keys: call
                .arguments()
                .and_then(ArgValue::as_object)
                .into_iter()
                .flat_map(|m| m.keys())
                .map(|k| Box::from(k.as_str()))
                .collect(),
            keys: inspected.keys,
        })
        .collect()
}

/// One event per refused call of `verdict` (nothing for `Forward`).
fn report_refusals(
    observer: &dyn Observer,
    policy: &Policy,
    inspected: &Inspected<'_>,
    verdict: &Verdict,
    monitor: bool,
    candidate: bool,
) {
    let Verdict::Refuse(refusals) = verdict else {
        return;
    };
    let calls = inspected
        .decoded
        .messages()
        .iter()
        .filter_map(|m| Some((m, m.tool_call()?)));
    for ((message, call), refusal) in calls.zip(refusals) {
        let (decision, denial) = match (refusal, monitor) {
            (Refusal::Denied(denial), false) => (CallDecision::Deny, Some(denial)),
            (Refusal::Denied(denial), true) => (CallDecision::WouldDeny, Some(denial)),
            (Refusal::NotExecuted, false) => (CallDecision::NotExecuted, None),
            (Refusal::NotExecuted, true) => (CallDecision::WouldNotExecute, None),
        };
        observer.observe(&Event::Call(CallEvent {
            decision,
            tool: call.name(),
            tool_label: policy.tool_label(call.name()),
            method: TOOLS_CALL,
            jsonrpc_id: message.id(),
            grant: inspected.keys.grant,
            session: inspected.keys.session,
            policy: policy.fingerprint(),
            candidate,
            denial,
            upstream: None,
            arg_keys: ArgKeys::Args(call.arguments()),
        }));
    }
}
