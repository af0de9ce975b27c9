//! [`Engine`]: a compiled policy plus its counters, deciding whole requests.

use std::sync::Arc;

use serde_json::Value;
use smallvec::SmallVec;

use crate::counter::{Charge, ChargeError, CounterStore, MemoryCounters};
use crate::decision::{Decision, Denial};
use crate::jsonrpc::Decoded;
use crate::policy::Policy;
use crate::rules::Allowed;
use crate::scope::ScopeKeys;
use crate::source::Source;
use crate::value::ArgValue;

/// One tool call to judge: its name and its (possibly pruned) arguments. Unstable.
#[derive(Debug, Clone, Copy)]
#[doc(hidden)]
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

/// A policy and its counters: the [`Decision`] on every call of a request.
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
            Ok(()) => Decision::Allow,
            Err(mut decisions) => decisions.pop().unwrap_or(Decision::NotExecuted),
        }
    }

    /// Decides a request of several calls now: `Ok` when every call may run (every
    /// charge applied), else one decision per call and nothing charged. Unstable.
    #[doc(hidden)]
    pub fn decide_all(&self, calls: &[Call<'_>], scope: &ScopeKeys) -> Result<(), Vec<Decision>> {
        let policy = self.policy();
        match self.prepare(&policy, calls, scope) {
            Prepared::Done(decided) => decided,
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
    /// [`PolicyHandle`](crate::PolicyHandle)). Under [`Grants`](crate::Grants), the one
    /// anonymous callers get, or one that denies everything: the layer judges each
    /// request under its own grant's policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.source.snapshot().fallback()
    }

    pub(crate) fn source(&self) -> &Arc<Source> {
        &self.source
    }

    /// The counter store.
    pub fn counters(&self) -> &S {
        &self.counters
    }

    /// Phase 1 for every call under `policy` (one snapshot for the whole request): the
    /// rules, and the charges to apply if all pass. Unstable.
    #[doc(hidden)]
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
            return Prepared::Done(Err(denials
                .into_iter()
                .map(|d| d.map_or(Decision::NotExecuted, Decision::Deny))
                .collect()));
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
            return Prepared::Done(Ok(()));
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
    /// Unstable.
    #[doc(hidden)]
    pub async fn decide_async(
        &self,
        calls: &[Call<'_>],
        scope: &ScopeKeys,
    ) -> Result<(), Vec<Decision>> {
        let policy = self.policy();
        let prepared = self.prepare(&policy, calls, scope);
        match prepared {
            Prepared::Done(decided) => decided,
            Prepared::Charge(pending) => {
                let result = self.counters.charge(&pending.charges).await;
                pending.finish(result)
            }
        }
    }
}

/// The state between the rules and the counters. Unstable.
// A short-lived stack value: boxing the large variant would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
#[doc(hidden)]
pub enum Prepared<'p> {
    /// Decided by the rules alone: every call may run (no charges to apply), or the
    /// decision on each call.
    Done(Result<(), Vec<Decision>>),
    /// Every call passed the rules; these charges decide.
    Charge(PendingCharges<'p>),
}

/// Charges waiting for a counter store. Unstable.
#[derive(Debug)]
#[doc(hidden)]
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

    /// The decisions, given the store's answer for [`PendingCharges::charges`].
    pub fn finish(self, result: Result<(), ChargeError>) -> Result<(), Vec<Decision>> {
        let error = match result {
            // Applied, or the store fails open: the calls run (uncounted, for the latter).
            Ok(()) | Err(ChargeError::Uncounted(_)) => return Ok(()),
            Err(error) => error,
        };
        let mut decisions = vec![Decision::NotExecuted; self.allowed.len()];
        match error {
            ChargeError::Exceeded { index, retry_after } => {
                let (call, charge) = self.owners[index];
                decisions[call] = Decision::Deny(self.allowed[call].exceeded(charge, retry_after));
            }
            // Nothing could be checked: every call that needed the store is denied.
            ChargeError::Unavailable(error) | ChargeError::Uncounted(error) => {
                for &(call, _) in &self.owners {
                    let tool = self.allowed[call].tool();
                    let denial = Denial::counter_unavailable(tool, error.retry_after());
                    decisions[call] = Decision::Deny(denial);
                }
            }
        }
        Err(decisions)
    }
}
