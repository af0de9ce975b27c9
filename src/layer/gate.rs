//! The gate: everything the layer does with one request, in the order it does it.
//!
//! ```text
//! admit (method, entity headers) ─▶ read (future.rs) ─▶ judge: snapshot ─▶ decode ─▶
//!   headers ─▶ scope keys ─▶ task owners ─▶ rules ─▶ charge ─▶ Next::{Forward, Answer, Wait, Look}
//! Look ─▶ looked ─▶ judge again, knowing the task's owner
//! Wait ─▶ charged ─▶ Next::{Forward, Answer}
//! Forward ─▶ forward (headers for the inner service) ─▶ answered / failed
//! ```
//!
//! Each step returns what happens next; the response future only drives the steps and
//! the bodies. What the layer writes back lives in `answer.rs`, the facts it reports
//! in `report.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode, header};
use smallvec::SmallVec;

use super::answer::{self, Outcome};
use super::approve::{self, Answer, InClient};
use super::body::ResponseBody;
use super::config::{Config, Mode, SharedObserver};
use super::filter::{Filter, PinFilter};
use super::inflight::{Claim, InFlight};
use super::params::ToolHeaders;
use super::refund::{Charged, Ledger, Watch};
use super::report::{self, AllowedCall};
use super::request::{
    JudgedHeaders, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, Rejection, check_entity_headers,
    check_routing_headers, too_large,
};
use super::sessions::{Initialize, Sessions};
use super::tasks::{Owned, Tasks};
use crate::approval::{self, Ask, Asked, CallKey, Seal};
use crate::counter::{Charge, ChargeError, CounterStore, MemoryCounters, StoreError};
use crate::decision::{Decision, Denial, DenialKind};
use crate::engine::{Call, Engine, PendingCharges, Prepared};
use crate::grants::{Caller, Unknown};
use crate::jsonrpc::{
    self, Decoded, INVALID_REQUEST, MessageKind, TraceParent, UNAUTHORIZED, UNKNOWN_TASK,
};
use crate::observe::Event;
use crate::policy::Policy;
use crate::scope::{Grant, ScopeKeys, ScopeValue};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The first revision whose lists carry a cache scope (SEP-2549). Revisions are dates,
/// so they compare as text.
const LISTS_CACHED_SINCE: &str = "2026-07-28";

/// What the layer shares between every request: the engine, the configuration, the
/// sessions the server issued, and the refunds.
#[derive(Debug)]
pub(crate) struct Gate<S> {
    pub engine: Arc<Engine<S>>,
    pub config: Config,
    pub sessions: Arc<Sessions>,
    /// The grant that owns each task the server handed out.
    tasks: Arc<Tasks>,
    /// The request ids pending, per caller.
    inflight: Arc<InFlight>,
    /// The `Mcp-Param-*` headers of the tools the server listed.
    tool_headers: Arc<ToolHeaders>,
    /// Gives charges back and reports it.
    ledger: Arc<dyn Ledger>,
    /// Seals the approval states asked in the client.
    seal: Seal,
    /// The approvals asked over a call's event stream, waiting for the client's answer.
    #[cfg(feature = "tokio")]
    pub elicitations: Arc<super::elicit::Elicitations>,
}

/// StoreLedger through the engine's store, each reported as an event, and task owners
/// shared through it.
struct StoreLedger<S> {
    engine: Arc<Engine<S>>,
    observer: SharedObserver,
}

impl<S: CounterStore> Ledger for StoreLedger<S> {
    fn refund(&self, charges: &[Charge]) {
        self.engine.counters().refund(charges);
        self.observer.0.observe(&Event::Refund {
            charges: charges.len(),
        });
    }

    fn share_task(&self, task: ScopeValue, owner: ScopeValue, ttl: Option<Duration>) {
        self.engine.counters().share_task(task, owner, ttl);
    }
}

impl std::fmt::Debug for dyn Ledger + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

/// What happens to a request next.
// A short-lived value: boxing the large variant would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Next<B, S: CounterStore> {
    /// Hand it to the inner service.
    Forward(Forwarded),
    /// Answer it without forwarding.
    Answer(Response<ResponseBody<B>>),
    /// Wait for the counter store to apply the charges, then ask [`Gate::charged`].
    Wait(S::Future, Box<Charging>),
    /// Wait for the counter store to tell who owns a task, then ask [`Gate::looked`]
    /// and judge the request again.
    Look(TaskLookup, Looking),
    /// Wait for the store that shares approvals with other replicas, then ask
    /// [`Gate::approval_known`].
    Approve(ApprovalFuture, Box<Concluding>),
    /// Answer at once with an event stream that asks the client's user, then forward
    /// (or refuse) the call on it.
    #[cfg(feature = "tokio")]
    Elicit(Forwarded, Box<Eliciting>),
}

/// A call asked about over its own event stream (see `elicit.rs`).
#[cfg(feature = "tokio")]
pub(crate) struct Eliciting {
    pub id: Arc<str>,
    pub answer: tokio::sync::oneshot::Receiver<Answer>,
    /// The stream's first event: the layer's elicitation request.
    pub event: Bytes,
    pub timeout: Duration,
    ask: Ask,
    caller: Caller,
    inspected: Inspected<'static>,
}

/// The approval of the calls of a request that need one, from a store that may have to
/// be asked over the network.
pub(crate) type ApprovalFuture = Pin<Box<dyn Future<Output = Approval> + Send>>;

/// What a request waiting for its approvals keeps: everything it needs to conclude.
pub(crate) struct Concluding {
    caller: Caller,
    inspected: Inspected<'static>,
    claim: Option<Box<Claim>>,
    charged: Option<Charged>,
    started: Instant,
}

/// A task's owner and remaining time to live, looked up in a store shared by replicas.
pub(crate) type TaskLookup =
    Pin<Box<dyn Future<Output = Option<(ScopeValue, Option<Duration>)>> + Send>>;

/// The owners of tasks a request names that the store was asked about: the task's hash
/// and its owner (`None`: the store does not know it).
pub(crate) type Looked = SmallVec<[(ScopeValue, Option<ScopeValue>); 1]>;

/// A request waiting for the owner of `task`.
pub(crate) struct Looking {
    task: ScopeValue,
    looked: Looked,
}

/// How much of a request's body to read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Read {
    /// The most bytes accepted (0 for methods that never carry a body).
    pub limit: usize,
    /// Whether the body is judged (a method that can carry one), or must be empty.
    pub judge: bool,
}

/// What a forwarded body holds that matters for its answer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Holds {
    /// A tools/list request: its answer teaches the tools' `Mcp-Param-*` headers.
    pub lists_tools: bool,
    /// An initialize request: a session id in the answer is issued by the server.
    pub initializes: bool,
    /// A tools/call or a request about a task: the answer may hand out a task (or
    /// renew one).
    pub about_tasks: bool,
    /// A tasks/list request: other grants' tasks are removed from its answer.
    pub lists_tasks: bool,
    /// How the client of an initialize request declares it can ask its user:
    /// remembered with the session the server issues.
    pub elicits: super::sessions::Elicits,
}

/// What the layer keeps of a forwarded request to handle its answer.
#[derive(Debug)]
pub(crate) struct Forwarded {
    /// The policy the request was judged by: its answer is filtered by the same one.
    policy: Arc<Policy>,
    /// The tool pins in force when it arrived: its answer's lists are checked by them.
    pins: Option<Arc<crate::pins::Pins>>,
    /// What became of the request, for the response's extensions.
    outcome: Outcome,
    holds: Holds,
    /// The charges the request paid, for refunds.
    charged: Option<Charged>,
    /// The request's `Mcp-Session-Id`, if any.
    session: Option<HeaderValue>,
    /// The caller's grant (`None` for a request passed unjudged), which owns the tasks
    /// its answer hands out.
    grant: Option<ScopeValue>,
    /// The caller's grant in a grants file, told to the inner service.
    grant_name: Option<Arc<str>>,
    /// A DELETE: a successful answer ends the session.
    deletes: bool,
    /// A GET: the server's event stream, which may replay tool lists.
    streams: bool,
    /// The request speaks a revision that caches lists (MCP 2026-07-28 and later).
    caches_lists: bool,
    /// The allowed calls, reported once the server answers (when the observer wants
    /// them).
    allowed: Vec<AllowedCall>,
    /// When the request was handed to the inner service (when `allowed` is not empty).
    sent: Option<Instant>,
    /// The request's ids, in flight until its answer has been delivered.
    claim: Option<Box<Claim>>,
    /// The body the inner service gets instead of the one received (a call approved
    /// in the client goes on without the layer's approval state).
    pub body: Option<Bytes>,
    /// The approval the call runs on, kept again if the server asks for input first.
    kept: Option<Box<Kept>>,
}

impl Forwarded {
    /// A request of `caller` judged under its policy.
    fn judged(
        caller: &Caller,
        holds: Holds,
        charged: Option<Charged>,
        outcome: Outcome,
    ) -> Forwarded {
        Forwarded {
            policy: caller.policy.clone(),
            pins: caller.pins.clone(),
            outcome,
            holds,
            charged,
            session: None,
            grant: Some(caller.grant),
            grant_name: caller.name.clone(),
            deletes: false,
            streams: false,
            caches_lists: false,
            allowed: Vec::new(),
            sent: None,
            claim: None,
            body: None,
            kept: None,
        }
    }

    /// A request of `caller` without a body, passed through unjudged (its answer is
    /// still filtered under the caller's policy).
    fn unjudged(caller: &Caller) -> Forwarded {
        Forwarded::judged(caller, Holds::default(), None, Outcome::NotJudged)
    }
}

/// Who approves in the client, as events name them.
const IN_CLIENT: &str = "client";

/// What became of the calls that need a person's approval.
pub(crate) enum Approval {
    /// Every one has an approval (now used up): forward, with this body when the
    /// layer's approval state must be taken out of it, and the approval of a single
    /// call, kept again if the server asks for input before it runs.
    Granted(Option<Bytes>, Option<Kept>),
    /// The decision on each call, and the answer that asks the client's user (when it
    /// asks in the client).
    Refused(Vec<Decision>, Option<serde_json::Value>),
    /// Asked over the call's event stream: the elicitation's id and where its answer
    /// arrives.
    #[cfg(feature = "tokio")]
    Elicit(Arc<str>, tokio::sync::oneshot::Receiver<Answer>),
}

/// The approval of a forwarded call: if the server answers it by asking for input
/// (MCP 2026-07-28), the call did not run, and its next round (which carries the
/// server's state, not the layer's) runs on the same approval.
#[derive(Debug)]
pub(crate) struct Kept {
    ask: Ask,
    id: Arc<str>,
    by: Arc<str>,
}

/// Why a call asked about in the client does not run.
enum InClientRefusal {
    /// The client's user is being asked (request `id`).
    Asked(Arc<str>),
    /// The user said no (or gave no answer) to request `id`.
    Declined(Arc<str>),
    /// No answer to request `id` came in time (or the client went away).
    #[cfg(feature = "tokio")]
    Unanswered(Arc<str>),
    /// The state was already used.
    Replayed,
    /// The state is not good for this call.
    Broken(approval::Broken),
}

impl InClientRefusal {
    fn into_denial(self, base: Denial) -> Denial {
        let (text, id) = match self {
            InClientRefusal::Asked(id) => (
                format!(
                    "{} The client is asked to approve it (approval {id}).",
                    base.message()
                ),
                Some(id),
            ),
            InClientRefusal::Declined(id) => (
                format!(
                    "{} Approval {id} was declined in the client; calling again asks again.",
                    base.message()
                ),
                Some(id),
            ),
            #[cfg(feature = "tokio")]
            InClientRefusal::Unanswered(id) => (
                format!(
                    "{} Approval {id} was not answered in time; calling again asks again.",
                    base.message()
                ),
                Some(id),
            ),
            InClientRefusal::Replayed => (
                format!(
                    "{} This approval was already used: an approval covers one call. Call again without it to ask for a new one.",
                    base.message()
                ),
                None,
            ),
            InClientRefusal::Broken(broken) => {
                (format!("{} {}", base.message(), broken.explain()), None)
            }
        };
        let mut denial = base.with_message(text);
        denial.approval = id;
        denial
    }
}

/// The store that keeps approvals cannot be reached: every call that needs one is
/// refused (fail closed), and the error reported.
fn unavailable(
    observer: &dyn crate::observe::Observer,
    asks: &[(usize, Ask)],
    mut decisions: Vec<Decision>,
    error: &crate::counter::StoreError,
) -> Approval {
    observer.observe(&Event::StoreError {
        error,
        uncounted: false,
        background: false,
    });
    for (index, ask) in asks {
        let base = ask.base();
        let text = format!(
            "{} Approvals are unavailable right now, so the call was not run; try again shortly.",
            base.message()
        );
        decisions[*index] = Decision::Deny(base.with_message(text));
    }
    Approval::Refused(decisions, None)
}

/// Asks the client's user about `ask`, or reads the answer its retry brings (see
/// `approve.rs`): `Ok(Ok(()))` when the call may run once. Otherwise why not, and the
/// answer that asks the user (when this request asks).
#[allow(clippy::type_complexity)]
async fn in_client(
    store: &dyn approval::ApprovalStore,
    seal: &Seal,
    client: &InClient,
    ask: &Ask,
    id: Option<&jsonrpc::Id>,
    changes: &mut Vec<approval::Change>,
) -> Result<
    Result<Arc<str>, (InClientRefusal, Option<serde_json::Value>)>,
    crate::counter::StoreError,
> {
    let now = Instant::now();
    let Some(state) = &client.state else {
        // Ask: the state binds the answer to this call, once, for the rule's timeout.
        let nonce = crate::scope::random_key();
        let request_id: Arc<str> = crate::pins::hex(&nonce).into();
        let expires = approval::unix_now() + ask.timeout.as_secs().max(1);
        let sealed = seal.seal(&ask.key, expires, nonce);
        let asking = approve::input_required(id, ask, sealed);
        let request = ask.request(request_id.clone(), now);
        changes.push(approval::Change::new(request, "requested", None));
        return Ok(Err((InClientRefusal::Asked(request_id), Some(asking))));
    };
    let opened = match seal.open(state, &ask.key, approval::unix_now()) {
        Ok(opened) => opened,
        Err(broken) => return Ok(Err((InClientRefusal::Broken(broken), None))),
    };
    let request_id: Arc<str> = crate::pins::hex(&opened.nonce).into();
    let (fresh, expired) = store.spend(opened.nonce, opened.expires).await?;
    changes.extend(expired);
    if !fresh {
        return Ok(Err((InClientRefusal::Replayed, None)));
    }
    let by: Arc<str> = Arc::from(IN_CLIENT);
    let request = ask.request(request_id.clone(), now);
    Ok(match client.answer {
        Answer::Approved => {
            changes.push(approval::Change::new(
                request.clone(),
                "approved",
                Some(by.clone()),
            ));
            changes.push(approval::Change::new(request, "used", Some(by)));
            Ok(request_id)
        }
        Answer::Declined | Answer::Missing => {
            changes.push(approval::Change::new(request, "declined", Some(by)));
            Err((InClientRefusal::Declined(request_id), None))
        }
    })
}

/// A body that decoded and passed the header checks, ready for the engine.
struct Inspected<'a> {
    decoded: Decoded<'a>,
    keys: ScopeKeys,
    holds: Holds,
    claim: Option<Box<Claim>>,
    /// The `traceparent` header's trace context (a call's `_meta` one comes first).
    trace: Option<TraceParent>,
    /// The calls that need a person's approval, by their index among the calls.
    asks: Vec<(usize, Ask)>,
    /// How the one call that needs approval can be asked in the client, if it can.
    client: Option<InClient>,
    /// The client of the one call that needs approval can open a URL for its user.
    opens_urls: bool,
}

impl Inspected<'_> {
    /// An owned copy, without the claim (which has one owner).
    fn to_owned(&self) -> Inspected<'static> {
        Inspected {
            decoded: self.decoded.clone().into_owned(),
            keys: self.keys,
            holds: self.holds,
            claim: None,
            trace: self.trace,
            asks: self.asks.clone(),
            client: self.client.clone(),
            opens_urls: self.opens_urls,
        }
    }

    fn into_owned(self) -> Inspected<'static> {
        Inspected {
            decoded: self.decoded.into_owned(),
            keys: self.keys,
            holds: self.holds,
            claim: self.claim,
            trace: self.trace,
            asks: self.asks,
            client: self.client,
            opens_urls: self.opens_urls,
        }
    }

    fn calls(&self) -> SmallVec<[Call<'_>; 2]> {
        Call::all_in(&self.decoded)
    }
}

/// What a request waiting for its charges keeps: owned, so the body is decoded and
/// judged only once.
pub(crate) struct Charging {
    started: Instant,
    caller: Caller,
    inspected: Inspected<'static>,
    pending: PendingCharges<'static>,
}

impl<S: CounterStore> Gate<S> {
    /// The gate of a service the layer makes. The store's background errors go to the
    /// layer's observer from now on; a scope hasher set on the layer that differs from
    /// the one the store shares with other replicas is reported now.
    pub(crate) fn new(
        engine: Arc<Engine<S>>,
        config: Config,
        sessions: Arc<Sessions>,
        tasks: Arc<Tasks>,
        inflight: Arc<InFlight>,
        tool_headers: Arc<ToolHeaders>,
    ) -> Self {
        let observer = config.observer.clone();
        let report = move |error: &StoreError| {
            observer.0.observe(&Event::StoreError {
                error,
                uncounted: false,
                background: true,
            });
        };
        if let Some(shared) = engine.counters().scope_hasher()
            && shared != config.hasher
        {
            report(&StoreError::new(
                "the scope hasher set on the layer differs from the one its counter store \
                 shares with other replicas: they will count the same caller in different \
                 buckets",
            ));
        }
        engine.counters().report_errors_to(Arc::new(report));
        let ledger = Arc::new(StoreLedger {
            engine: engine.clone(),
            observer: config.observer.clone(),
        });
        let seal = Seal::new(config.hasher.secret());
        Gate {
            engine,
            config,
            sessions,
            tasks,
            inflight,
            tool_headers,
            ledger,
            seal,
            #[cfg(feature = "tokio")]
            elicitations: Arc::default(),
        }
    }

    /// How much of the body to read, or the answer to a request refused on its
    /// headers alone.
    #[allow(clippy::result_large_err)]
    pub(crate) fn admit<B>(
        &self,
        parts: &Parts,
    ) -> Result<(Read, Caller), Response<ResponseBody<B>>> {
        let caller = self.caller(parts)?;
        let read = self.read(parts)?;
        Ok((read, caller))
    }

    /// Who the request is, under the policies in force: an unknown grant reaches
    /// nothing, whatever the method.
    #[allow(clippy::result_large_err)]
    fn caller<B>(&self, parts: &Parts) -> Result<Caller, Response<ResponseBody<B>>> {
        let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
        let authorization = values.next();
        if values.next().is_some() {
            return Err(self.rejected(Rejection::repeated(&header::AUTHORIZATION), None));
        }
        let source = self.engine.source();
        let extension = parts.extensions.get::<Grant>();
        let mut caller = source
            .snapshot()
            .caller(&self.config.hasher, extension, authorization)
            .map_err(|unknown| self.unauthorized(unknown))?;
        // The pins too are one snapshot for the whole request: its calls and the lists
        // in its answer are checked against the same ones.
        caller.pins = source.pins();
        Ok(caller)
    }

    /// The 401 answer to a request without a known grant (RFC 6750).
    fn unauthorized<B>(&self, unknown: Unknown) -> Response<ResponseBody<B>> {
        let rejection = Rejection {
            status: StatusCode::UNAUTHORIZED,
            code: UNAUTHORIZED,
            message: unknown.message().to_owned(),
        };
        let mut response = self.rejected(rejection, None);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(unknown.challenge()),
        );
        response
    }

    /// How much of the body to read, or the answer to a request refused on its
    /// entity headers.
    #[allow(clippy::result_large_err)]
    fn read<B>(&self, parts: &Parts) -> Result<Read, Response<ResponseBody<B>>> {
        let bodiless = matches!(
            parts.method,
            Method::GET | Method::DELETE | Method::HEAD | Method::OPTIONS
        );
        if bodiless {
            // GET (the SSE stream), DELETE, HEAD, OPTIONS pass untouched, but never
            // with a body nobody read: any byte of one is refused.
            return Ok(Read {
                limit: 0,
                judge: false,
            });
        }
        // POST, and every other method that can carry a body, is read and judged.
        let limit = self.config.max_body;
        match check_entity_headers(&parts.headers, limit) {
            Ok(()) => Ok(Read { limit, judge: true }),
            Err(rejection) => Err(self.rejected(rejection, None)),
        }
    }

    /// The body has been read whole: judge it (or pass a bodiless request unjudged),
    /// knowing the owners of the tasks in `looked`. Nothing is charged until a
    /// [`Next::Wait`] future is polled.
    pub(crate) fn judge<B>(
        &self,
        parts: &Parts,
        bytes: &Bytes,
        read: Read,
        caller: &Caller,
        looked: &Looked,
    ) -> Next<B, S> {
        if !read.judge {
            // The caller's grant goes along: a stream may resume a call's answer, and
            // with it a task handle.
            return Next::Forward(Forwarded::unjudged(caller));
        }
        let started = Instant::now();
        if let Some(candidate) = &self.config.candidate {
            self.judge_candidate(candidate, parts, bytes, caller);
        }
        // One snapshot of the policy for the whole request (taken when it was
        // admitted): the decode plan, the rules, and the filtering of its answer.
        let policy = &caller.policy;
        let mut inspected = match self.inspect(policy, parts, bytes, caller) {
            Ok(inspected) => inspected,
            Err(answer) => return Next::Answer(answer),
        };
        #[cfg(feature = "tokio")]
        if let [message] = inspected.decoded.messages()
            && message.kind() == MessageKind::Response
            && let Some(jsonrpc::Id::String(id)) = message.id()
            && id.starts_with(super::elicit::ID_PREFIX)
        {
            return Next::Answer(self.elicitation_answered(bytes, inspected.keys.grant));
        }
        if let Some(next) = self.check_tasks(&inspected, looked) {
            return next;
        }
        if let Some(pins) = &caller.pins
            && let Some(decisions) = self.unreviewed(pins, policy, &inspected)
        {
            let claim = inspected.claim.take();
            return self.conclude(caller, &inspected, claim, Err(decisions), None, started);
        }
        if policy.asks_approval() {
            match self.asks(caller, bytes, &inspected) {
                Ok(asks) => inspected.asks = asks,
                Err(answer) => return Next::Answer(answer),
            }
            if let [(_, ask)] = &inspected.asks[..]
                && !inspected.decoded.is_batch()
            {
                let in_client = ask.in_client;
                let client = InClient::of(parts, bytes);
                let session = self.session_elicits(parts);
                // Where the user would see a form (and may answer), the layer's form is
                // shown; a client that only opens links is sent to the operators' page.
                inspected.opens_urls = match &client {
                    Some(client) => client.can_open && !(client.can_ask && in_client),
                    None => session.url && !(session.form && in_client),
                };
                inspected.client = client.filter(|_| in_client);
                #[cfg(feature = "tokio")]
                if in_client
                    && inspected.client.is_none()
                    && session.form
                    && self.streams_elicitation(parts)
                {
                    inspected.client = Some(InClient::stream());
                }
            }
        }
        let claim = inspected.claim.take();
        let calls = inspected.calls();
        let pending = match self.engine.prepare(policy, &calls, &inspected.keys) {
            Prepared::Done(decided) => {
                return self.conclude(caller, &inspected, claim, decided, None, started);
            }
            Prepared::Charge(pending) => pending,
        };
        let charges = pending.charges().len();
        if charges > self.config.max_charges {
            let rejection = Rejection {
                status: StatusCode::BAD_REQUEST,
                code: INVALID_REQUEST,
                message: format!(
                    "the request asks for {charges} charges, more than the limit of {} per request",
                    self.config.max_charges
                ),
            };
            return Next::Answer(self.rejected(rejection, None));
        }
        let counters = self.engine.counters();
        if let Some(result) = counters.charge_now(pending.charges()) {
            let charged = result
                .is_ok()
                .then(|| Charged::new(&pending, &inspected.decoded));
            let decided = pending.finish(self.reported(result));
            return self.conclude(caller, &inspected, claim, decided, charged, started);
        }
        // Only stores that must be awaited get here.
        let future = counters.charge(pending.charges());
        let pending = pending.into_owned();
        drop(calls);
        let mut inspected = inspected.into_owned();
        inspected.claim = claim;
        let charging = Box::new(Charging {
            started,
            inspected,
            pending,
            caller: caller.clone(),
        });
        Next::Wait(future, charging)
    }

    /// The decision once the store has answered for the charges of `charging`.
    pub(crate) fn charged<B>(
        &self,
        mut charging: Box<Charging>,
        result: Result<(), ChargeError>,
    ) -> Next<B, S> {
        let claim = charging.inspected.claim.take();
        let charged = result
            .is_ok()
            .then(|| Charged::new(&charging.pending, &charging.inspected.decoded));
        let decided = charging.pending.finish(self.reported(result));
        let (caller, inspected) = (&charging.caller, &charging.inspected);
        self.conclude(caller, inspected, claim, decided, charged, charging.started)
    }

    /// The store said who owns `looking.task` (`found`): remembered here, and known to
    /// the request's next judgement.
    pub(crate) fn looked(
        &self,
        looking: Looking,
        found: Option<(ScopeValue, Option<Duration>)>,
    ) -> Looked {
        let Looking { task, mut looked } = looking;
        if let Some((owner, ttl)) = found {
            self.tasks.record(task, owner, ttl);
        }
        looked.push((task, found.map(|(owner, _)| owner)));
        looked
    }

    /// Every message about a task must name one the caller's grant owns: another
    /// grant's task and an id no server handed out through the layer get the same
    /// answer, so it tells nothing of which ids exist. An owner this replica does not
    /// know is asked of the store, when it shares tasks ([`Next::Look`]). `None`: every
    /// task named is the caller's.
    /// The decisions on a request that calls a tool whose definition is not the pinned
    /// one (or that has no pin): a denial for each such call, the others not executed.
    /// `None`: every call may go on to the policy. Hidden tools are the policy's to
    /// answer (as unknown tools).
    fn unreviewed(
        &self,
        pins: &crate::pins::Pins,
        policy: &Policy,
        inspected: &Inspected<'_>,
    ) -> Option<Vec<Decision>> {
        use crate::pins::CallPin;
        let seen = self.engine.source().seen();
        let decisions: Vec<Option<Denial>> = inspected
            .decoded
            .messages()
            .iter()
            .filter_map(|m| m.tool_call())
            .map(|call| {
                let tool = call.name();
                if policy.is_hidden(tool) {
                    return None;
                }
                let message = match seen.call(pins, tool) {
                    CallPin::Reviewed => return None,
                    CallPin::Changed => format!(
                        "The definition of \"{tool}\" changed since it was reviewed; ask the operator to re-pin it."
                    ),
                    CallPin::Unpinned => format!(
                        "\"{tool}\" has not been reviewed (it has no pin); ask the operator to pin it."
                    ),
                };
                Some(Denial::new(DenialKind::Unreviewed, tool, Denial::RULE_PINS, message))
            })
            .collect();
        decisions.iter().any(Option::is_some).then(|| {
            decisions
                .into_iter()
                .map(|d| d.map_or(Decision::NotExecuted, Decision::Deny))
                .collect()
        })
    }

    fn check_tasks<B>(&self, inspected: &Inspected<'_>, looked: &Looked) -> Option<Next<B, S>> {
        for message in inspected.decoded.messages() {
            let Some(task) = message.task() else {
                continue;
            };
            let method = message.method().unwrap_or_default();
            let answer_id = message_id(inspected, message);
            let refuse = |status, code, text| {
                let rejection = Rejection {
                    status,
                    code,
                    message: text,
                };
                Some(Next::Answer(self.rejected(rejection, answer_id)))
            };
            let Some(id) = task else {
                let text = format!("{method} needs params.taskId, a string");
                return refuse(StatusCode::BAD_REQUEST, INVALID_REQUEST, text);
            };
            if message.kind() != MessageKind::Request {
                let text = format!("{method} must be a request, with an id");
                return refuse(StatusCode::BAD_REQUEST, INVALID_REQUEST, text);
            }
            let hash = self.config.hasher.task(id);
            let owner = match looked.iter().find(|(task, _)| *task == hash) {
                Some((_, owner)) => *owner,
                None => match self.tasks.owner(hash) {
                    Some(owner) => Some(owner),
                    None => match self.engine.counters().find_task(hash) {
                        Some(future) => {
                            let looked = looked.clone();
                            return Some(Next::Look(future, Looking { task: hash, looked }));
                        }
                        None => None,
                    },
                },
            };
            if owner != Some(inspected.keys.grant) {
                // What a server answers for a task it does not know.
                let text = format!("unknown task: {id}");
                return refuse(StatusCode::OK, UNKNOWN_TASK, text);
            }
        }
        None
    }

    /// Decodes the body and checks it against the headers; the error is the answer.
    #[allow(clippy::result_large_err)]
    fn inspect<'a, B>(
        &self,
        policy: &Policy,
        parts: &Parts,
        bytes: &'a Bytes,
        caller: &Caller,
    ) -> Result<Inspected<'a>, Response<ResponseBody<B>>> {
        let decoded = jsonrpc::decode(bytes, policy).map_err(|err| self.undecodable(&err))?;
        let first_id = decoded.messages().first().and_then(|m| m.id());
        let messages = decoded.messages().len();
        if messages > self.config.max_batch {
            let rejection = Rejection {
                status: StatusCode::BAD_REQUEST,
                code: INVALID_REQUEST,
                message: format!(
                    "the batch holds {messages} messages, more than the limit of {}",
                    self.config.max_batch
                ),
            };
            return Err(self.rejected(rejection, None));
        }
        let headers = JudgedHeaders::read(&parts.headers);
        check_routing_headers(&headers, &decoded)
            .map_err(|rejection| self.rejected(rejection, first_id))?;
        if headers.params {
            // The body decoded whole: the headers may name arguments no rule reads.
            let full =
                jsonrpc::decode(bytes, &jsonrpc::ReadAll).map_err(|err| self.undecodable(&err))?;
            self.tool_headers
                .check(&parts.headers, &full)
                .map_err(|message| {
                    let rejection = Rejection {
                        status: StatusCode::BAD_REQUEST,
                        code: jsonrpc::HEADER_MISMATCH,
                        message,
                    };
                    self.rejected(rejection, first_id)
                })?;
        }
        let (keys, session) = self
            .scope_keys(caller, &headers)
            .map_err(|rejection| self.rejected(rejection, first_id))?;
        let mut holds = Holds::default();
        for message in decoded.messages() {
            if message.kind() == MessageKind::Request {
                holds.lists_tools |= message.method() == Some("tools/list");
                holds.initializes |= message.method() == Some("initialize");
                holds.about_tasks |= message.tool_call().is_some() || message.task().is_some();
                holds.lists_tasks |= message.method() == Some("tasks/list");
            }
        }
        if holds.initializes && !decoded.is_batch() {
            holds.elicits = approve::declares_elicitation(bytes);
        }
        let requests = decoded
            .messages()
            .iter()
            .filter(|m| m.kind() == MessageKind::Request);
        // Ids are claimed in a session, and checked within a batch; a single request
        // without a session has nothing to compare its id with.
        let claim = match (session, decoded.is_batch()) {
            (None, false) => None,
            _ => self
                .inflight
                .claim(
                    session.map(|s| (keys.grant, s)),
                    requests.filter_map(|m| m.id()),
                )
                .map_err(|taken| {
                    let (id, message) = taken.explain();
                    let rejection = Rejection {
                        status: StatusCode::BAD_REQUEST,
                        code: INVALID_REQUEST,
                        message,
                    };
                    self.rejected(rejection, Some(id))
                })?,
        };
        Ok(Inspected {
            decoded,
            keys,
            holds,
            claim,
            trace: headers.trace(),
            asks: Vec::new(),
            client: None,
            opens_urls: false,
        })
    }

    /// Asks about the calls that need approval (when the request is allowed so far),
    /// then concludes; waits for the store when it must be asked over the network.
    fn conclude<B>(
        &self,
        caller: &Caller,
        inspected: &Inspected<'_>,
        claim: Option<Box<Claim>>,
        decided: Result<(), Vec<Decision>>,
        charged: Option<Charged>,
        started: Instant,
    ) -> Next<B, S> {
        let mut approval = None;
        if decided.is_ok() && !inspected.asks.is_empty() {
            let mut future = self.approval(inspected);
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            match future.as_mut().poll(&mut context) {
                // This process's store answers at once.
                std::task::Poll::Ready(done) => approval = Some(done),
                std::task::Poll::Pending => {
                    let concluding = Concluding {
                        caller: caller.clone(),
                        inspected: inspected.to_owned(),
                        claim,
                        charged,
                        started,
                    };
                    return Next::Approve(future, Box::new(concluding));
                }
            }
        }
        self.finish(
            caller, inspected, claim, decided, charged, started, approval,
        )
    }

    /// The store answered about the approvals of `concluding`.
    pub(crate) fn approval_known<B>(
        &self,
        concluding: Box<Concluding>,
        approval: Approval,
    ) -> Next<B, S> {
        let Concluding {
            caller,
            inspected,
            claim,
            charged,
            started,
        } = *concluding;
        self.finish(
            &caller,
            &inspected,
            claim,
            Ok(()),
            charged,
            started,
            Some(approval),
        )
    }

    /// Forward, or answer the denials; one event per call of a refused request now,
    /// and one per allowed call once the server answers.
    #[allow(clippy::too_many_arguments)]
    fn finish<B>(
        &self,
        caller: &Caller,
        inspected: &Inspected<'_>,
        claim: Option<Box<Claim>>,
        decided: Result<(), Vec<Decision>>,
        charged: Option<Charged>,
        started: Instant,
        approval: Option<Approval>,
    ) -> Next<B, S> {
        let policy = &caller.policy;
        let monitor = self.config.mode == Mode::Monitor;
        let observer = &*self.config.observer.0;
        let (decoded, keys) = (&inspected.decoded, inspected.keys);
        let (mut decided, mut charged) = (decided, charged);
        let mut outcome = Outcome::Forwarded;
        let (mut body, mut ask_client, mut kept) = (None, None, None);
        #[cfg(feature = "tokio")]
        let mut eliciting = None;
        if let Some(approval) = approval {
            match approval {
                #[cfg(feature = "tokio")]
                Approval::Elicit(id, answer) => {
                    let (_, ask) = inspected.asks[0].clone();
                    eliciting = Some(Box::new(Eliciting {
                        event: super::elicit::request_event(&id, &ask),
                        id,
                        answer,
                        timeout: ask.timeout,
                        ask,
                        caller: caller.clone(),
                        inspected: inspected.to_owned(),
                    }));
                }
                Approval::Granted(forward, approved) => {
                    body = forward;
                    kept = approved;
                }
                Approval::Refused(decisions, _) if monitor => {
                    // A dry run: reported, and the calls run (and stay charged).
                    let who = (keys, inspected.trace, caller.name.as_ref());
                    report::refused(observer, policy, decoded, who, &decisions, false, false);
                    outcome = Outcome::WouldDeny(Outcome::denials_of(&decisions));
                }
                Approval::Refused(decisions, asking) => {
                    // Limits are charged only for a call that is forwarded.
                    if let Some(charged) = &mut charged {
                        charged.refund_all(&*self.ledger);
                    }
                    charged = None;
                    decided = Err(decisions);
                    ask_client = asking;
                }
            }
        }
        if let Err(decisions) = &decided {
            let who = (keys, inspected.trace, caller.name.as_ref());
            report::refused(observer, policy, decoded, who, decisions, !monitor, false);
        }
        observer.observe(&Event::Judged {
            policy: policy.fingerprint(),
            latency: started.elapsed(),
            tracked_keys: self.engine.counters().tracked_keys(),
        });
        match decided {
            Ok(()) => {
                let mut forwarded =
                    Forwarded::judged(caller, inspected.holds, charged, outcome.clone());
                forwarded.claim = claim;
                forwarded.body = body;
                forwarded.kept = kept.map(Box::new);
                // A dry run's call that would need approval is reported as that alone,
                // like one that would be denied.
                let would_ask = matches!(outcome, Outcome::WouldDeny(_));
                if observer.wants_allowed() && !would_ask {
                    // Reported once the server answers (an elicited call: if it runs).
                    forwarded.allowed = report::allowed_calls(
                        decoded,
                        (keys, inspected.trace, caller.name.as_ref()),
                    );
                }
                #[cfg(feature = "tokio")]
                if let Some(eliciting) = eliciting {
                    return Next::Elicit(forwarded, eliciting);
                }
                Next::Forward(forwarded)
            }
            // A dry run: what enforcement would refuse is reported, and runs, uncharged
            // (enforcement would have charged nothing either).
            Err(decisions) if monitor => {
                let outcome = Outcome::WouldDeny(Outcome::denials_of(&decisions));
                let mut forwarded = Forwarded::judged(caller, inspected.holds, None, outcome);
                forwarded.claim = claim;
                Next::Forward(forwarded)
            }
            Err(decisions) => {
                let outcome = Outcome::Denied(Outcome::denials_of(&decisions));
                let format = self.config.denial_format;
                let mut response = match ask_client {
                    // The client asks its user, and comes back with the answer.
                    Some(asking) => answer::json_response(StatusCode::OK, &asking),
                    None => answer::denied(decoded, decisions, format),
                };
                response.extensions_mut().insert(outcome);
                Next::Answer(response)
            }
        }
    }

    /// The calls of a request that need a person's approval under `caller`'s policy,
    /// each bound to its whole arguments: the body is read again in full for them (the
    /// rules read only the arguments they name). Empty when no call needs approval.
    #[allow(clippy::result_large_err)]
    fn asks<B>(
        &self,
        caller: &Caller,
        bytes: &Bytes,
        inspected: &Inspected<'_>,
    ) -> Result<Vec<(usize, Ask)>, Response<ResponseBody<B>>> {
        let policy = &caller.policy;
        let any = inspected
            .decoded
            .messages()
            .iter()
            .filter_map(|m| m.tool_call())
            .any(|call| {
                policy
                    .approval(call.name(), call.arguments(), &mut ())
                    .is_some()
            });
        if !any {
            return Ok(Vec::new());
        }
        let full =
            jsonrpc::decode(bytes, &jsonrpc::ReadAll).map_err(|err| self.undecodable(&err))?;
        let calls = full.messages().iter().filter_map(|m| m.tool_call());
        let mut asks = Vec::new();
        for (index, call) in calls.enumerate() {
            let (tool, args) = (call.name(), call.arguments());
            let Some(approval) = policy.approval(tool, args, &mut ()) else {
                continue;
            };
            let arguments = args.map_or_else(|| "{}".to_owned(), ToString::to_string);
            let key = CallKey::new(inspected.keys.grant, tool, policy.fingerprint(), &arguments);
            let denial = approval.denial(tool);
            asks.push((
                index,
                Ask {
                    key,
                    owner: inspected.keys.grant,
                    tool: tool.into(),
                    arguments: arguments.into(),
                    grant: caller.name.clone(),
                    reason: denial.message().into(),
                    rule: denial.rule().into(),
                    timeout: approval.timeout,
                    in_client: approval.in_client,
                },
            ));
        }
        Ok(asks)
    }

    /// Whether every call of `inspected` that needs a person's approval has one (then
    /// they are used up). A call without one is refused, with a request for approval
    /// made in the client (when it can ask its user) or recorded for an operator (or
    /// told a person declined it); the other calls of the request are not executed. A
    /// dry run asks nobody: each such call is reported as needing approval. A store
    /// that cannot be reached refuses them all (fail closed).
    fn approval(&self, inspected: &Inspected<'_>) -> ApprovalFuture {
        let count = inspected.calls().len();
        let asks = inspected.asks.clone();
        if self.config.mode == Mode::Monitor {
            let mut decisions = vec![Decision::NotExecuted; count];
            for (index, ask) in &asks {
                decisions[*index] = Decision::Deny(ask.base());
            }
            return Box::pin(std::future::ready(Approval::Refused(decisions, None)));
        }
        #[cfg(feature = "tokio")]
        let elicitations = self.elicitations.clone();
        let source = self.engine.source().clone();
        let observer = self.config.observer.clone();
        let client = inspected.client.clone();
        let page = self
            .config
            .approvals_page
            .clone()
            .filter(|_| inspected.opens_urls);
        let seal = self.seal.clone();
        let id = inspected
            .decoded
            .messages()
            .iter()
            .find(|m| m.tool_call().is_some())
            .and_then(|m| m.id().cloned());
        let id_of = id.clone();
        Box::pin(async move {
            let mut decisions = vec![Decision::NotExecuted; count];
            let store = source.approvals();
            let mut changes = Vec::new();
            // A call about to be asked in the client may hold an approval already: an
            // operator's, or its own from a round the server answered by asking for
            // input (then the retry carries the server's state, not the layer's).
            if let (Some(client), [(_, ask)]) = (&client, &asks[..])
                && client.state.is_none()
                && client.can_ask
            {
                match store.take(ask).await {
                    Ok((Some((id, by)), happened)) => {
                        changes.extend(happened);
                        approval::report(&*observer.0, &changes);
                        let kept = Kept {
                            ask: ask.clone(),
                            id,
                            by,
                        };
                        return Approval::Granted(None, Some(kept));
                    }
                    Ok((None, happened)) => changes.extend(happened),
                    Err(error) => return unavailable(&*observer.0, &asks, decisions, &error),
                }
            }
            #[cfg(feature = "tokio")]
            if let (Some(client), [(_, ask)]) = (&client, &asks[..])
                && client.stream
                && let Some((id, answer)) = elicitations.open(ask.owner)
            {
                let request = ask.request(id.clone(), Instant::now());
                changes.push(approval::Change::new(request, "requested", None));
                approval::report(&*observer.0, &changes);
                return Approval::Elicit(id, answer);
            }
            let asked = match (&client, &asks[..]) {
                (Some(client), [(index, ask)])
                    if !client.stream && (client.state.is_some() || client.can_ask) =>
                {
                    let asked =
                        in_client(store, &seal, client, ask, id.as_ref(), &mut changes).await;
                    asked.map(|asked| match asked {
                        Ok(id) => {
                            let by = Arc::from(IN_CLIENT);
                            let kept = Kept {
                                ask: ask.clone(),
                                id,
                                by,
                            };
                            Approval::Granted(client.forward.clone(), Some(kept))
                        }
                        Err((refusal, asking)) => {
                            decisions[*index] = Decision::Deny(refusal.into_denial(ask.base()));
                            Approval::Refused(decisions.clone(), asking)
                        }
                    })
                }
                _ => {
                    let calls: Vec<Ask> = asks.iter().map(|(_, ask)| ask.clone()).collect();
                    store.ask(calls).await.map(|(asked, happened)| {
                        changes.extend(happened);
                        if asked.iter().all(|a| matches!(a, Asked::Approved { .. })) {
                            let kept = match (&asks[..], &asked[..]) {
                                ([(_, ask)], [Asked::Approved { id, by }]) => Some(Kept {
                                    ask: ask.clone(),
                                    id: id.clone(),
                                    by: by.clone(),
                                }),
                                _ => None,
                            };
                            return Approval::Granted(None, kept);
                        }
                        for ((index, ask), asked) in asks.iter().zip(&asked) {
                            if !matches!(asked, Asked::Approved { .. }) {
                                decisions[*index] = Decision::Deny(asked.denial(ask.base()));
                            }
                        }
                        // A client that opens URLs is sent to the approvals page.
                        let opening = match (&page, &asked[..], &decisions[..]) {
                            (Some(page), [Asked::Pending { id, .. }], [Decision::Deny(denial)]) => {
                                Some(approve::url_required(id_of.as_ref(), denial, id, page))
                            }
                            _ => None,
                        };
                        Approval::Refused(decisions.clone(), opening)
                    })
                }
            };
            approval::report(&*observer.0, &changes);
            asked.unwrap_or_else(|error| unavailable(&*observer.0, &asks, decisions, &error))
        })
    }

    /// The client's answer to one of the layer's elicitations: handed to the call that
    /// waits for it, never forwarded (the server never asked).
    #[cfg(feature = "tokio")]
    fn elicitation_answered<B>(
        &self,
        bytes: &Bytes,
        owner: ScopeValue,
    ) -> Response<ResponseBody<B>> {
        if let Some((id, answer)) = super::elicit::answer_in(bytes)
            && self.elicitations.answer(&id, owner, answer)
        {
            return answer::accepted();
        }
        let rejection = Rejection {
            status: StatusCode::NOT_FOUND,
            code: INVALID_REQUEST,
            message: "no call waits for this answer: it was given already, the call gave up waiting, or it never asked".to_owned(),
        };
        self.rejected(rejection, None)
    }

    /// Whether a call of this request can be asked about over its own event stream
    /// (its session's client declared form elicitation): a 2025-06-18 or 2025-11-25
    /// request that accepts an event stream.
    #[cfg(feature = "tokio")]
    fn streams_elicitation(&self, parts: &Parts) -> bool {
        let version = parts
            .headers
            .get(&MCP_PROTOCOL_VERSION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let streams = parts
            .headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/event-stream"));
        ("2025-06-18"..LISTS_CACHED_SINCE).contains(&version) && streams
    }

    /// How the client of the request's session declared it can ask its user.
    fn session_elicits(&self, parts: &Parts) -> super::sessions::Elicits {
        parts
            .headers
            .get(&MCP_SESSION_ID)
            .map(|id| {
                self.sessions
                    .elicits(self.config.hasher.session(id.as_bytes()))
            })
            .unwrap_or_default()
    }

    /// The client's user approved the call asked about over its stream: reported, and
    /// the call goes on.
    #[cfg(feature = "tokio")]
    pub(crate) fn elicitation_approved(&self, eliciting: &Eliciting) {
        let by: Arc<str> = Arc::from(IN_CLIENT);
        let request = eliciting.ask.request(eliciting.id.clone(), Instant::now());
        let changes = [
            approval::Change::new(request.clone(), "approved", Some(by.clone())),
            approval::Change::new(request, "used", Some(by)),
        ];
        approval::report(&*self.config.observer.0, &changes);
    }

    /// The client's user did not approve the call asked about over its stream
    /// (`answer`): its charges are given back, the refusal reported, and the denial is
    /// the stream's last event.
    #[cfg(feature = "tokio")]
    pub(crate) fn elicitation_refused<B>(
        &self,
        mut forwarded: Forwarded,
        eliciting: Box<Eliciting>,
        answer: Answer,
    ) -> Response<ResponseBody<B>> {
        if let Some(charged) = &mut forwarded.charged {
            charged.refund_all(&*self.ledger);
        }
        let Eliciting {
            id,
            ask,
            caller,
            inspected,
            ..
        } = *eliciting;
        let by: Arc<str> = Arc::from(IN_CLIENT);
        let step = match answer {
            Answer::Missing => "expired",
            _ => "declined",
        };
        let request = ask.request(id.clone(), Instant::now());
        let who = (answer != Answer::Missing).then_some(by);
        approval::report(
            &*self.config.observer.0,
            &[approval::Change::new(request, step, who)],
        );
        let refusal = match answer {
            Answer::Missing => InClientRefusal::Unanswered(id),
            _ => InClientRefusal::Declined(id),
        };
        let mut decisions = vec![Decision::NotExecuted; inspected.calls().len()];
        decisions[inspected.asks[0].0] = Decision::Deny(refusal.into_denial(ask.base()));
        let who = (inspected.keys, inspected.trace, caller.name.as_ref());
        let observer = &*self.config.observer.0;
        report::refused(
            observer,
            &caller.policy,
            &inspected.decoded,
            who,
            &decisions,
            true,
            false,
        );
        let outcome = Outcome::Denied(Outcome::denials_of(&decisions));
        let format = self.config.denial_format;
        let mut response = answer::denied(&inspected.decoded, decisions, format);
        response.extensions_mut().insert(outcome);
        response
    }

    /// The request's scope keys, and the hash of the session id it carries (issued or
    /// not).
    fn scope_keys(
        &self,
        caller: &Caller,
        headers: &JudgedHeaders<'_>,
    ) -> Result<(ScopeKeys, Option<ScopeValue>), Rejection> {
        let hasher = &self.config.hasher;
        let (_, session) = headers.scope()?;
        let grant = caller.grant;
        // Only a session the server issued is a session; any other id counts per grant.
        let carried = session.map(|id| hasher.session(id.as_bytes()));
        let issued = carried.filter(|&session| self.sessions.is_issued(session));
        if let (Some(unknown), None) = (carried, issued)
            && self.engine.counters().shares_sessions()
        {
            // Another replica may have seen the server issue it: once the store says
            // so, this replica counts it as a session too.
            let sessions = self.sessions.clone();
            let found = Box::new(move || sessions.issue(unknown));
            self.engine.counters().find_session(unknown, found);
        }
        let session = issued.unwrap_or_else(|| hasher.no_session(grant));
        Ok((ScopeKeys::new(grant, session), carried))
    }

    /// The request as the inner service gets it. When answers may need filtering, it
    /// asks the server not to compress them: a compressed tool list could not be read,
    /// so it could not be filtered.
    pub(crate) fn forward(&self, forwarded: &mut Forwarded, mut parts: Parts) -> Parts {
        forwarded.session = parts.headers.get(&MCP_SESSION_ID).cloned();
        if let Some(body) = &forwarded.body {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        forwarded.deletes = parts.method == Method::DELETE;
        forwarded.streams = parts.method == Method::GET;
        if let Some(name) = &forwarded.grant_name {
            // The inner service (a gateway choosing the upstream credential) learns
            // which grant of the file the caller is.
            parts.extensions.insert(Grant::new(name.clone()));
        }
        forwarded.caches_lists = parts
            .headers
            .get(&MCP_PROTOCOL_VERSION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|version| version >= LISTS_CACHED_SINCE);
        if !forwarded.allowed.is_empty() {
            forwarded.sent = Some(Instant::now());
        }
        // A task list in a compressed answer could not be kept to the caller's tasks. (A
        // call keeps its compression: a task handed out in a compressed answer is not
        // bound, and stays unreachable through the layer.)
        if self.must_filter(forwarded) || forwarded.holds.lists_tasks {
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        parts
    }

    /// The inner service answered: records issued and ended sessions, reports the
    /// allowed calls, refunds the charges of calls the server did not run, and makes
    /// sure hidden tools never show in a tool list.
    pub(crate) fn answered<B>(
        &self,
        mut response: Response<B>,
        mut forwarded: Forwarded,
    ) -> Response<ResponseBody<B>> {
        let counters = self.engine.counters();
        self.sessions.track(
            &self.config.hasher,
            forwarded.holds.initializes.then_some(Initialize {
                elicits: forwarded.holds.elicits,
            }),
            forwarded.session.as_ref(),
            forwarded.deletes,
            &response,
            |session, issued| counters.share_session(session, issued),
        );
        self.report_allowed(&forwarded, Some(response.status().as_u16()));
        response.extensions_mut().insert(forwarded.outcome.clone());
        // Boxed: the response body stays small for the answers that need no filtering.
        let hide = self.must_filter(&forwarded);
        let lists = forwarded.holds.lists_tools || forwarded.holds.lists_tasks;
        let pins = forwarded.pins.take().map(|pins| PinFilter {
            pins,
            source: self.engine.source().clone(),
            withhold: self.config.mode == Mode::Enforce,
        });
        let filter = (hide || lists || pins.is_some()).then(|| {
            Box::new(Filter {
                pins,
                only_allowed: self.config.list_only_allowed,
                policy: forwarded.policy,
                observer: self.config.observer.clone(),
                private: forwarded.caches_lists,
                hide,
                learn: forwarded
                    .holds
                    .lists_tools
                    .then(|| self.tool_headers.clone()),
                own_tasks: forwarded
                    .grant
                    .filter(|_| forwarded.holds.lists_tasks)
                    .map(|grant| self.owned(grant)),
            })
        });
        let mut charged = forwarded.charged;
        if let Some(charged) = &mut charged
            && matches!(response.status().as_u16(), 502..=504)
        {
            // The server was not reached: nothing ran.
            charged.refund_all(&*self.ledger);
        }
        let bind = forwarded
            .grant
            .filter(|_| forwarded.holds.about_tasks || forwarded.streams)
            .map(|grant| self.owned(grant));
        let charged = charged.filter(|c| !c.is_empty());
        let keep = forwarded.kept.take().map(|kept| {
            let source = self.engine.source().clone();
            Box::new(move || source.approvals().keep(&kept.ask, kept.id, kept.by))
                as Box<dyn FnOnce() + Send>
        });
        let watch = (charged.is_some() || bind.is_some() || keep.is_some()).then(|| Watch {
            charged: charged.unwrap_or_default(),
            ledger: self.ledger.clone(),
            bind,
            keep,
        });
        let limit = self.config.max_filtered_response;
        answer::read_back(response, filter, watch, limit, forwarded.claim)
    }

    /// What binds the tasks an answer to `grant` hands out, and reads its task lists.
    fn owned(&self, grant: ScopeValue) -> Owned {
        Owned {
            grant,
            tasks: self.tasks.clone(),
            hasher: self.config.hasher.clone(),
        }
    }

    /// True when answers must be filtered: the layer enforces a policy that hides tools
    /// (a dry run hides nothing). Every answer is, whatever its request asked for: a
    /// server may answer one request with another's result, and the GET stream may
    /// replay a tool list.
    fn must_filter(&self, forwarded: &Forwarded) -> bool {
        let policy = &forwarded.policy;
        self.config.mode == Mode::Enforce
            && (policy.hides_anything()
                || (self.config.list_only_allowed && !policy.default_allows())
                || forwarded.pins.is_some())
    }

    /// The inner service failed: nothing ran, so every charge is given back.
    pub(crate) fn failed(&self, forwarded: &mut Forwarded) {
        self.report_allowed(forwarded, None);
        if let Some(charged) = &mut forwarded.charged {
            charged.refund_all(&*self.ledger);
        }
    }

    fn report_allowed(&self, forwarded: &Forwarded, status: Option<u16>) {
        if let Some(sent) = forwarded.sent {
            let observer = &*self.config.observer.0;
            report::allowed(
                observer,
                &forwarded.policy,
                &forwarded.allowed,
                sent,
                status,
            );
        }
    }

    /// The store's answer; its error (which the agent never reads) is reported, whether
    /// the calls are denied (fail closed) or run uncounted (fail open).
    fn reported(&self, result: Result<(), ChargeError>) -> Result<(), ChargeError> {
        let (error, uncounted) = match &result {
            Err(ChargeError::Unavailable(error)) => (error, false),
            Err(ChargeError::Uncounted(error)) => (error, true),
            _ => return result,
        };
        let event = Event::StoreError {
            error,
            uncounted,
            background: false,
        };
        self.config.observer.0.observe(&event);
        result
    }

    /// The answer to a body the decoder refused, reported.
    fn undecodable<B>(&self, err: &jsonrpc::DecodeError) -> Response<ResponseBody<B>> {
        let rejection = Rejection {
            status: StatusCode::BAD_REQUEST,
            code: err.code(),
            message: err.message().to_owned(),
        };
        self.rejected(rejection, err.id())
    }

    /// The answer to a request refused before any decision, reported.
    pub(crate) fn rejected<B>(
        &self,
        rejection: Rejection,
        id: Option<&jsonrpc::Id>,
    ) -> Response<ResponseBody<B>> {
        self.config.observer.0.observe(&Event::Rejected {
            status: rejection.status.as_u16(),
            code: rejection.code,
            message: &rejection.message,
        });
        let mut response =
            answer::http_error(rejection.status, id, rejection.code, &rejection.message);
        response.extensions_mut().insert(Outcome::Rejected);
        response
    }

    /// The body did not arrive within the read timeout.
    pub(crate) fn late<B>(&self, received: usize) -> Response<ResponseBody<B>> {
        let timeout = self.config.body_read_timeout.unwrap_or_default();
        self.rejected(Rejection::late(timeout, received), None)
    }

    /// The body is larger than `read` allows.
    pub(crate) fn oversized<B>(&self, parts: &Parts, read: Read) -> Response<ResponseBody<B>> {
        let rejection = match read.judge {
            true => too_large(read.limit),
            false => Rejection::body_not_allowed(&parts.method),
        };
        self.rejected(rejection, None)
    }

    /// The body could not be read.
    /// The answer to a call whose forwarding failed after the layer had answered (an
    /// approval asked over the call's event stream).
    #[cfg(feature = "tokio")]
    pub(crate) fn unreachable_server<B>(&self) -> Response<ResponseBody<B>> {
        answer::http_error(
            StatusCode::BAD_GATEWAY,
            None,
            jsonrpc::INTERNAL_ERROR,
            "the server could not be reached; the call did not run",
        )
    }

    pub(crate) fn unreadable<B>(&self, error: BoxError) -> Response<ResponseBody<B>> {
        self.rejected(Rejection::unreadable(&*error), None)
    }

    /// Judges the body under the candidate policy, with its own counters, and reports
    /// what it would refuse. Nothing else comes of it.
    fn judge_candidate(
        &self,
        candidate: &Engine<MemoryCounters>,
        parts: &Parts,
        bytes: &Bytes,
        caller: &Caller,
    ) {
        let policy = candidate.policy();
        let Ok(decoded) = jsonrpc::decode(bytes, &*policy) else {
            return; // the enforced policy's decoder answers it
        };
        let Ok((keys, _)) = self.scope_keys(caller, &JudgedHeaders::read(&parts.headers)) else {
            return;
        };
        let calls = Call::all_in(&decoded);
        let decided = match candidate.prepare(&policy, &calls, &keys) {
            Prepared::Done(decided) => decided,
            Prepared::Charge(pending) => {
                let result = candidate.counters().try_charge(pending.charges());
                pending.finish(result)
            }
        };
        drop(calls);
        if let Err(decisions) = decided {
            let observer = &*self.config.observer.0;
            let trace = JudgedHeaders::read(&parts.headers).trace();
            let who = (keys, trace, caller.name.as_ref());
            report::refused(observer, &policy, &decoded, who, &decisions, false, true);
        }
    }
}

/// The id to answer `message` of `inspected` with: its own, or in a batch (refused
/// whole) the first request's.
fn message_id<'a>(
    inspected: &'a Inspected<'_>,
    message: &'a jsonrpc::Message<'_>,
) -> Option<&'a jsonrpc::Id> {
    message
        .id()
        .or_else(|| inspected.decoded.messages().iter().find_map(|m| m.id()))
}
