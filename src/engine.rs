//! [`Engine`]: a compiled policy plus its counters, deciding whole requests.

use std::sync::Arc;

use serde_json::Value;
use smallvec::SmallVec;

use crate::counter::{Charge, ChargeError, CounterStore, MemoryCounters};
use crate::decision::{Allowed, Denial};
use crate::jsonrpc::Decoded;
use crate::policy::Policy;
use crate::scope::ScopeKeys;
use crate::source::Source;
use crate::value::ArgValue;

/// One tool call to judge: its name and its (possibly pruned) arguments.
///
/// See the example on [`Engine::prepare`].
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The tool's name, with JSON escapes decoded.
    pub tool: &'a str,
    /// The arguments (numbers exact), `None` when the call has none.
    pub args: Option<&'a ArgValue>,
}

impl<'a> Call<'a> {
    /// The tool calls of a decoded body, in order, as the engine judges them.
    pub fn all_in(decoded: &'a Decoded<'_>) -> SmallVec<[Call<'a>; 2]> {
        decoded
            .messages()
            .iter()
            .filter_map(|m| m.tool_call())
            .map(|call| Call {
                tool: call.name(),
                args: call.arguments(),
            })
            .collect()
    }
}

/// The decision for a single call. See the examples on [`Engine`] and [`Denial`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The call may run; its charges were applied.
    Allow,
    /// The call must not run; nothing was charged.
    Deny(Denial),
}

/// What became of one call of a refused request. See the example on [`Engine::prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// This call was denied.
    Denied(Denial),
    /// This call was allowed, but another call of the same request was denied, so
    /// nothing was executed.
    NotExecuted,
}

/// The decision for a request of one or more calls (a JSON-RPC batch). See the example
/// on [`Engine::prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Every call is allowed and every charge was applied: forward the request.
    Forward,
    /// At least one call is denied: forward nothing. One entry per call, in order.
    /// Nothing was charged.
    Refuse(Vec<Refusal>),
}

/// A policy and its counters: the whole decision, from calls to [`Verdict`].
///
/// The rules run first for every call; only if all pass are the charges of all calls
/// applied, together, so a refused request consumes no quota.
///
/// ```
/// use tower_mcp_policy::FakeClock;
/// use serde_json::json;
/// use tower_mcp_policy::{Decision, Engine, Policy, ScopeHasher, ScopeKeys};
///
/// let policy: Policy = r#"{"version":"1","default":"deny","tools":{"write":{
///     "limits":[{"counter":"w","window":"minute","max":2}]}}}"#.parse()?;
/// let clock = FakeClock::new();
/// let engine = Engine::with_clock(policy, clock.clone());
/// let hasher = ScopeHasher::random();
/// let grant = hasher.credential(b"Bearer alice");
/// let alice = ScopeKeys::new(grant, hasher.no_session(grant));
///
/// let args = json!({});
/// assert_eq!(engine.decide("write", Some(&args), &alice), Decision::Allow);
/// assert_eq!(engine.decide("write", Some(&args), &alice), Decision::Allow);
/// let Decision::Deny(denial) = engine.decide("write", Some(&args), &alice) else { panic!() };
/// assert_eq!(denial.retry_after(), Some(30));
/// clock.advance(std::time::Duration::from_secs(30));
/// assert_eq!(engine.decide("write", Some(&args), &alice), Decision::Allow);
/// # Ok::<(), tower_mcp_policy::PolicyError>(())
/// ```
#[derive(Debug)]
pub struct Engine<S = MemoryCounters> {
    source: Arc<Source>,
    counters: S,
}

impl<S: Clone> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Engine {
            source: self.source.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl Engine<MemoryCounters> {
    /// An engine with in-memory counters on the default clock.
    pub fn new(policy: impl Into<Arc<Policy>>) -> Self {
        Engine::with_counters(policy, MemoryCounters::new())
    }
}

impl Engine<MemoryCounters> {
    /// An engine with in-memory counters on a [`FakeClock`](crate::FakeClock) (tests).
    pub fn with_clock(
        policy: impl Into<Arc<Policy>>,
        clock: crate::counter::clock::FakeClock,
    ) -> Self {
        Engine::with_counters(policy, MemoryCounters::with_clock(clock))
    }

    /// Decides one call now. Numbers in `args` are read as serde_json prints them.
    pub fn decide(&self, tool: &str, args: Option<&Value>, scope: &ScopeKeys) -> Decision {
        let args = args.map(ArgValue::from);
        let args = args.as_ref();
        match self.decide_all(&[Call { tool, args }], scope) {
            Verdict::Forward => Decision::Allow,
            Verdict::Refuse(mut refusals) => match refusals.pop() {
                Some(Refusal::Denied(denial)) => Decision::Deny(denial),
                _ => unreachable!("a lone call is refused only by its own denial"),
            },
        }
    }

    /// Decides a request of several calls now.
    pub fn decide_all(&self, calls: &[Call<'_>], scope: &ScopeKeys) -> Verdict {
        let policy = self.policy();
        match self.prepare(&policy, calls, scope) {
            Prepared::Done(verdict) => verdict,
            Prepared::Charge(pending) => {
                let result = self.counters.try_charge(&pending.charges);
                pending.finish(result)
            }
        }
    }
}

impl<S> Engine<S> {
    /// An engine over any counter store (for example one shared by replicas).
    pub fn with_counters(policy: impl Into<Arc<Policy>>, counters: S) -> Self {
        Engine {
            source: Arc::new(Source::new(policy.into())),
            counters,
        }
    }

    /// The policy in force now (a snapshot: it may be replaced while it is used; see
    /// [`PolicyHandle`](crate::PolicyHandle)).
    pub fn policy(&self) -> Arc<Policy> {
        self.source.snapshot()
    }

    pub(crate) fn source(&self) -> &Arc<Source> {
        &self.source
    }

    /// The counter store.
    pub fn counters(&self) -> &S {
        &self.counters
    }

    /// Phase 1 for every call under `policy` (one snapshot for the whole request): the
    /// rules, and the charges to apply if all pass.
    ///
    /// A batch of two calls, judged by the rules, then charged by the store:
    ///
    /// ```
    /// use serde_json::json;
    /// use tower_mcp_policy::counter::CounterStore;
    /// use tower_mcp_policy::decide::{Call, Prepared, Refusal, Verdict};
    /// use tower_mcp_policy::{ArgValue, DenialKind, Engine, Policy, ScopeHasher, ScopeKeys};
    ///
    /// let policy: Policy = r#"{ "version": "1", "default": "deny", "tools": {
    ///     "get_price": {},
    ///     "buy": { "limits": [{ "counter": "orders", "window": "minute", "max": 1 }] } } }"#
    ///     .parse()?;
    /// let engine = Engine::new(policy);
    /// let hasher = ScopeHasher::random();
    /// let grant = hasher.credential(b"Bearer alice");
    /// let scope = ScopeKeys::new(grant, hasher.no_session(grant));
    /// let args = ArgValue::from(&json!({ "symbol": "BTC" }));
    /// let calls = [
    ///     Call { tool: "get_price", args: Some(&args) },
    ///     Call { tool: "buy", args: Some(&args) },
    /// ];
    ///
    /// for attempt in 0..2 {
    ///     let policy = engine.policy(); // one snapshot for the whole request
    ///     let Prepared::Charge(pending) = engine.prepare(&policy, &calls, &scope) else {
    ///         panic!("both calls pass the rules; `buy` has a limit to charge")
    ///     };
    ///     assert_eq!(pending.charges_by_call().map(|(call, _)| call).collect::<Vec<_>>(), [1]);
    ///     let answer = engine.counters().charge_now(pending.charges()).expect("in memory");
    ///     match (attempt, pending.finish(answer)) {
    ///         (0, Verdict::Forward) => {}
    ///         (1, Verdict::Refuse(refusals)) => {
    ///             // All or nothing: `get_price` is not run either.
    ///             assert_eq!(refusals[0], Refusal::NotExecuted);
    ///             let Refusal::Denied(denial) = &refusals[1] else { panic!() };
    ///             assert_eq!(denial.kind(), DenialKind::Limit);
    ///         }
    ///         other => panic!("unexpected {other:?}"),
    ///     }
    /// }
    /// # Ok::<(), tower_mcp_policy::PolicyError>(())
    /// ```
    pub fn prepare<'p>(
        &self,
        policy: &'p Policy,
        calls: &[Call<'p>],
        scope: &ScopeKeys,
    ) -> Prepared<'p> {
        let mut allowed: SmallVec<[Allowed<'p>; 1]> = SmallVec::with_capacity(calls.len());
        let mut denials: Vec<Option<Denial>> = Vec::new();
        for (i, call) in calls.iter().enumerate() {
            match policy.evaluate(call.tool, call.args, scope) {
                Ok(ok) => allowed.push(ok),
                Err(denial) => {
                    denials.resize(i, None);
                    denials.push(Some(denial));
                }
            }
        }
        if !denials.is_empty() {
            denials.resize(calls.len(), None);
            return Prepared::Done(Verdict::Refuse(
                denials
                    .into_iter()
                    .map(|d| d.map_or(Refusal::NotExecuted, Refusal::Denied))
                    .collect(),
            ));
        }
        let mut charges = SmallVec::new();
        let mut owners = SmallVec::new();
        for (call, ok) in allowed.iter().enumerate() {
            for (index, charge) in ok.charges().enumerate() {
                charges.push(charge);
                owners.push((call, index));
            }
        }
        if charges.is_empty() {
            return Prepared::Done(Verdict::Forward);
        }
        Prepared::Charge(PendingCharges {
            allowed,
            charges,
            owners,
        })
    }
}

impl<S: CounterStore> Engine<S> {
    /// Decides a request of several calls, charging through the store's future.
    pub async fn decide_async(&self, calls: &[Call<'_>], scope: &ScopeKeys) -> Verdict {
        let policy = self.policy();
        let prepared = self.prepare(&policy, calls, scope);
        match prepared {
            Prepared::Done(verdict) => verdict,
            Prepared::Charge(pending) => {
                let result = self.counters.charge(&pending.charges).await;
                pending.finish(result)
            }
        }
    }
}

/// The state between the rules and the counters; see the example on [`Engine::prepare`].
// A short-lived stack value: boxing the large variant would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Prepared<'p> {
    /// Decided by the rules alone (a denial, or no charges to apply).
    Done(Verdict),
    /// Every call passed the rules; these charges decide.
    Charge(PendingCharges<'p>),
}

/// Charges waiting for a counter store. See the example on [`Engine::prepare`].
#[derive(Debug)]
pub struct PendingCharges<'p> {
    allowed: SmallVec<[Allowed<'p>; 1]>,
    charges: SmallVec<[Charge; 4]>,
    owners: SmallVec<[(usize, usize); 4]>,
}

impl PendingCharges<'_> {
    /// The charges to apply, all or none.
    pub fn charges(&self) -> &[Charge] {
        &self.charges
    }

    /// Each charge with the index (among the request's calls) of the call it pays for.
    pub fn charges_by_call(&self) -> impl Iterator<Item = (usize, &Charge)> + '_ {
        self.owners
            .iter()
            .map(|&(call, _)| call)
            .zip(self.charges.iter())
    }

    /// The same, independent of the request's bytes, to keep while a store is awaited.
    pub fn into_owned(self) -> PendingCharges<'static> {
        PendingCharges {
            allowed: self.allowed.into_iter().map(Allowed::into_owned).collect(),
            charges: self.charges,
            owners: self.owners,
        }
    }

    /// The verdict, given the store's answer for [`PendingCharges::charges`].
    pub fn finish(self, result: Result<(), ChargeError>) -> Verdict {
        let Err(error) = result else {
            return Verdict::Forward;
        };
        let mut refusals = vec![Refusal::NotExecuted; self.allowed.len()];
        match error {
            ChargeError::Exceeded { index, retry_after } => {
                let (call, charge) = self.owners[index];
                refusals[call] = Refusal::Denied(self.allowed[call].exceeded(charge, retry_after));
            }
            // Nothing could be checked: every call that needed the store is denied.
            ChargeError::Unavailable(error) => {
                for &(call, _) in &self.owners {
                    let tool = self.allowed[call].tool();
                    let denial = Denial::counter_unavailable(tool, error.retry_after());
                    refusals[call] = Refusal::Denied(denial);
                }
            }
        }
        Verdict::Refuse(refusals)
    }
}
