//! The decision: a pure function of (compiled policy, tool call, scope keys, counters).
//!
//! It runs in two phases so that a denied call never touches a counter:
//!
//! 1. [`Policy::evaluate`] applies, in order, `hide` → `default` → `deny_if` → `require`
//!    (for `all_tools` and the tool's own rule) and, if the call passes, lists the
//!    [`Charge`]s its limits ask for. No state is read or written.
//! 2. A [`CounterStore`](crate::counter::CounterStore) applies all the charges of a
//!    request at once, or none of them.
//!
//! [`Engine`](crate::Engine) runs both phases for you.

use std::borrow::Cow;
use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::counter::Charge;
use crate::policy::condition::{Truth, kind};
use crate::policy::{Clause, CounterDef, Limit, LimitMeta, Policy, Resolved, Rule};
use crate::scope::ScopeKeys;
use crate::value::ArgValue;

/// Why a call was denied.
///
/// See the example on [`Denial`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenialKind {
    /// The tool is hidden; it is answered as an unknown tool.
    Hidden,
    /// The tool has no rule and the policy's default is `deny`.
    NotAllowed,
    /// A `deny_if` item matched, or could not be checked.
    DenyIf,
    /// A `require` item was not met, or could not be checked.
    Require,
    /// A limit's counter is exhausted (`retry_after` is set), or the call's cost is
    /// invalid or larger than the limit allows (it is not).
    Limit,
    /// The counter store could not be reached; the call is denied (fail closed).
    CounterUnavailable,
}

impl DenialKind {
    const ALL: [DenialKind; 6] = [
        DenialKind::Hidden,
        DenialKind::NotAllowed,
        DenialKind::DenyIf,
        DenialKind::Require,
        DenialKind::Limit,
        DenialKind::CounterUnavailable,
    ];

    /// The kind named `name` ([`DenialKind::as_str`]'s names), if any.
    pub(crate) fn from_name(name: &str) -> Option<DenialKind> {
        DenialKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// The name used in answers, logs and metrics: `hidden`, `not_allowed`, `deny_if`,
    /// `require`, `limit`, `counter_unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            DenialKind::Hidden => "hidden",
            DenialKind::NotAllowed => "not_allowed",
            DenialKind::DenyIf => "deny_if",
            DenialKind::Require => "require",
            DenialKind::Limit => "limit",
            DenialKind::CounterUnavailable => "counter_unavailable",
        }
    }
}

/// The policy's decision on one call.
///
/// See the examples on [`Engine`](crate::Engine) and [`Denial`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The call may run; its charges were applied.
    Allow,
    /// The call must not run; nothing was charged.
    Deny(Denial),
    /// The call passed the policy, but another call of the same request (a JSON-RPC
    /// batch) was denied, so none of them runs; nothing was charged.
    NotExecuted,
}

impl Decision {
    /// The denial, when the call was denied.
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Decision::Deny(denial) => Some(denial),
            _ => None,
        }
    }
}

/// The policy's answer to a denied call.
///
/// ```
/// use serde_json::json;
/// use tower_mcp_policy::{Decision, DenialKind, Engine, Policy, ScopeHasher, ScopeKeys};
///
/// let policy: Policy = r#"{ "version": "1", "default": "deny", "tools": { "transfer": {
///     "deny_if": [{ "conditions": [{ "path": "args.amount", "op": "gt", "value": 5000 }],
///                   "on_deny": "Transfers above 5000 need a human." }] } } }"#.parse()?;
/// let engine = Engine::new(policy);
/// let hasher = ScopeHasher::random();
/// let grant = hasher.anonymous();
/// let scope = ScopeKeys::new(grant, hasher.no_session(grant));
///
/// let Decision::Deny(denial) = engine.decide("transfer", Some(&json!({ "amount": 9000 })), &scope)
/// else { panic!("9000 is above the threshold") };
/// assert_eq!(denial.kind(), DenialKind::DenyIf);
/// assert_eq!(denial.kind().as_str(), "deny_if");
/// assert_eq!(denial.rule(), "/tools/transfer/deny_if/0");
/// assert_eq!(denial.message(), "Transfers above 5000 need a human.");
/// assert_eq!(denial.retry_after(), None);
/// # Ok::<(), tower_mcp_policy::PolicyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    kind: DenialKind,
    tool: String,
    rule: String,
    message: String,
    retry_after: Option<u64>,
}

impl Denial {
    /// The `rule` of a denial by the default action.
    pub const RULE_DEFAULT_DENY: &'static str = "(default deny)";
    /// The `rule` of a denial of a hidden tool.
    pub const RULE_HIDDEN: &'static str = "(hidden)";
    /// The `rule` of a denial because the counter store failed.
    pub const RULE_COUNTER_STORE: &'static str = "(counter store)";

    fn new(kind: DenialKind, tool: &str, rule: &str, message: String) -> Denial {
        Denial {
            kind,
            tool: tool.to_owned(),
            rule: rule.to_owned(),
            message,
            retry_after: None,
        }
    }

    /// A denial as an agent reads it in an answer (the testing kit's reading).
    pub(crate) fn read(
        kind: DenialKind,
        tool: &str,
        rule: &str,
        message: &str,
        retry_after: Option<u64>,
    ) -> Denial {
        let mut denial = Denial::new(kind, tool, rule, message.to_owned());
        denial.retry_after = retry_after;
        denial
    }

    /// Why the call was denied.
    pub fn kind(&self) -> DenialKind {
        self.kind
    }

    /// The tool that was called.
    pub fn tool(&self) -> &str {
        &self.tool
    }

    /// The rule that fired: a JSON Pointer into the policy (`/tools/transfer/deny_if/0`,
    /// `/all_tools/limits/0`), or [`Denial::RULE_DEFAULT_DENY`], [`Denial::RULE_HIDDEN`],
    /// [`Denial::RULE_COUNTER_STORE`].
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The message for the agent: the rule's `on_deny`, or a generated one.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// For rate limits: whole seconds (rounded up, at least 1) until a retry can pass.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// A denial for a call that could not be charged because the store failed. The
    /// store's error goes to the logs; the agent reads a fixed message and the wait.
    pub fn counter_unavailable(tool: &str, retry_after: Option<Duration>) -> Denial {
        let seconds = retry_seconds(retry_after.unwrap_or(Duration::from_secs(1)));
        let mut denial = Denial::new(
            DenialKind::CounterUnavailable,
            tool,
            Denial::RULE_COUNTER_STORE,
            format!(
                "Rate-limit state is unavailable, the call was not run; try again in {seconds}s."
            ),
        );
        denial.retry_after = Some(seconds);
        denial
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.message, self.rule)
    }
}

/// A call that passed the rules, with the charges its limits ask for.
///
/// It borrows the tool's name from the request; [`Allowed::into_owned`] makes it
/// independent of it (for a store that must be awaited).
#[derive(Debug)]
pub(crate) struct Allowed<'p> {
    tool: Cow<'p, str>,
    pending: SmallVec<[Pending; 2]>,
}

#[derive(Debug)]
struct Pending {
    limit: Arc<LimitMeta>,
    charge: Charge,
}

impl<'p> Allowed<'p> {
    /// The tool that was called.
    pub fn tool(&self) -> &str {
        &self.tool
    }

    /// The same, owning the tool's name.
    pub fn into_owned(self) -> Allowed<'static> {
        Allowed {
            tool: Cow::Owned(self.tool.into_owned()),
            pending: self.pending,
        }
    }

    /// The charges to apply, all or none, before the call may run.
    pub fn charges(&self) -> impl ExactSizeIterator<Item = Charge> + '_ {
        self.pending.iter().map(|p| p.charge)
    }

    /// The denial for when the store reports that charge `index` does not fit.
    ///
    /// `retry_after` is the wait until it would fit; `None` means it never can.
    pub fn exceeded(&self, index: usize, retry_after: Option<Duration>) -> Denial {
        let pending = &self.pending[index];
        let limit = &*pending.limit;
        let rule = &*limit.pointer;
        let tool = self.tool();
        let Some(wait) = retry_after else {
            return Denial::new(
                DenialKind::Limit,
                tool,
                rule,
                format!(
                    "This call to \"{tool}\" costs {}, more than the limit of {} allows.",
                    pending.charge.cost, limit.describe
                ),
            );
        };
        let seconds = retry_seconds(wait);
        let base = match &limit.on_deny {
            Some(text) => text.to_string(),
            None => format!("Rate limit of {} reached for \"{tool}\".", limit.describe),
        };
        let mut denial = Denial::new(
            DenialKind::Limit,
            tool,
            rule,
            format!("{base} Try again in {seconds}s."),
        );
        denial.retry_after = Some(seconds);
        denial
    }
}

/// Whole seconds until a retry, rounded up and never 0.
pub(crate) fn retry_seconds(wait: Duration) -> u64 {
    let nanos = wait.as_nanos();
    let seconds = nanos.div_ceil(1_000_000_000);
    u64::try_from(seconds).unwrap_or(u64::MAX).max(1)
}

impl Policy {
    /// Phase 1 of the decision: the rules, with no state.
    ///
    /// `args` are the call's arguments (`None` when it has none); they may be the pruned
    /// value the decoder builds from [`Policy::plan_for`], or the whole arguments.
    pub(crate) fn evaluate<'p>(
        &'p self,
        tool: &'p str,
        args: Option<&ArgValue>,
        scope: &ScopeKeys,
    ) -> Result<Allowed<'p>, Denial> {
        self.evaluate_traced(tool, args, scope, &mut ())
    }

    /// [`Policy::evaluate`], telling `tracer` each step (for explanations; the no-op
    /// tracer `()` compiles to the plain evaluation).
    pub(crate) fn evaluate_traced<'p>(
        &'p self,
        tool: &'p str,
        args: Option<&ArgValue>,
        scope: &ScopeKeys,
        tracer: &mut impl Tracer,
    ) -> Result<Allowed<'p>, Denial> {
        let resolved = self.resolve(tool);
        tracer.resolved(&resolved);
        let own = match resolved {
            Resolved::Hidden => {
                return Err(Denial::new(
                    DenialKind::Hidden,
                    tool,
                    Denial::RULE_HIDDEN,
                    format!("Unknown tool: {tool}"),
                ));
            }
            Resolved::NotAllowed => {
                return Err(Denial::new(
                    DenialKind::NotAllowed,
                    tool,
                    Denial::RULE_DEFAULT_DENY,
                    format!("Tool \"{tool}\" is not allowed by this policy."),
                ));
            }
            Resolved::Rules(own) => own.map(|t| &t.rule),
        };
        let rules = || self.all_tools().into_iter().chain(own);

        for clause in rules().flat_map(|r: &Rule| &r.deny_if) {
            let truth = clause_truth(clause, args);
            tracer.clause(DenialKind::DenyIf, clause, args, &truth);
            match truth {
                Truth::False => {}
                Truth::True => {
                    let message = match &clause.on_deny {
                        Some(text) => text.to_string(),
                        None => format!(
                            "Calls to \"{tool}\" are denied when {}.",
                            describe_conditions(clause)
                        ),
                    };
                    return Err(Denial::new(
                        DenialKind::DenyIf,
                        tool,
                        &clause.pointer,
                        message,
                    ));
                }
                Truth::Unknown(reason) => {
                    return Err(unchecked(DenialKind::DenyIf, tool, clause, &reason));
                }
            }
        }
        for clause in rules().flat_map(|r: &Rule| &r.require) {
            let truth = clause_truth(clause, args);
            tracer.clause(DenialKind::Require, clause, args, &truth);
            match truth {
                Truth::True => {}
                Truth::False => {
                    let message = match &clause.on_deny {
                        Some(text) => text.to_string(),
                        None => format!(
                            "Calls to \"{tool}\" require {}.",
                            describe_conditions(clause)
                        ),
                    };
                    return Err(Denial::new(
                        DenialKind::Require,
                        tool,
                        &clause.pointer,
                        message,
                    ));
                }
                Truth::Unknown(reason) => {
                    return Err(unchecked(DenialKind::Require, tool, clause, &reason));
                }
            }
        }

        let mut pending = SmallVec::new();
        for limit in rules().flat_map(|r: &Rule| &r.limits) {
            let counter = self.counter(limit.counter);
            let cost = cost(limit, tool, args);
            tracer.limit(limit, counter, &cost);
            let Some(cost) = cost? else {
                continue;
            };
            let fits = u32::try_from(cost.get()).ok().and_then(NonZeroU32::new);
            let Some(cost) = fits.filter(|c| *c <= counter.max()) else {
                // Beyond 64 bits the cost is shown as the argument's exact value.
                let exact = limit.increment_from.as_ref().and_then(|p| p.lookup(args));
                let cost = match (cost.get(), exact) {
                    (u64::MAX, Some(ArgValue::Number(n))) => n.to_string(),
                    (n, _) => n.to_string(),
                };
                return Err(Denial::new(
                    DenialKind::Limit,
                    tool,
                    &limit.meta.pointer,
                    format!(
                        "This call to \"{tool}\" costs {cost}, more than the limit of {} allows.",
                        counter.describe()
                    ),
                ));
            };
            pending.push(Pending {
                limit: limit.meta.clone(),
                charge: Charge {
                    counter: counter.id(),
                    quota: counter.quota(),
                    key: scope.value_for(counter.scope()),
                    cost,
                },
            });
        }
        Ok(Allowed {
            tool: Cow::Borrowed(tool),
            pending,
        })
    }
}

/// Told each step of an evaluation; every method does nothing by default.
pub(crate) trait Tracer {
    /// How the tool's name resolved.
    fn resolved(&mut self, resolved: &Resolved<'_>) {
        let _ = resolved;
    }

    /// A `deny_if` or `require` item and its truth.
    fn clause(
        &mut self,
        kind: DenialKind,
        clause: &Clause,
        args: Option<&ArgValue>,
        truth: &Truth,
    ) {
        let _ = (kind, clause, args, truth);
    }

    /// A limit and the cost it would charge (`Ok(None)`: nothing; `Err`: the denial).
    fn limit(
        &mut self,
        limit: &Limit,
        counter: &CounterDef,
        cost: &Result<Option<NonZeroU64>, Denial>,
    ) {
        let _ = (limit, counter, cost);
    }
}

impl Tracer for () {}

/// Three-valued AND: false wins over unknown, unknown over true; no conditions is true.
fn clause_truth(clause: &Clause, args: Option<&ArgValue>) -> Truth {
    let mut unknown = None;
    for condition in &clause.conditions {
        match condition.eval(args) {
            Truth::False => return Truth::False,
            Truth::Unknown(reason) => {
                unknown.get_or_insert(reason);
            }
            Truth::True => {}
        }
    }
    unknown.map_or(Truth::True, Truth::Unknown)
}

fn describe_conditions(clause: &Clause) -> String {
    if clause.conditions.is_empty() {
        return "always".to_owned();
    }
    let parts: Vec<String> = clause.conditions.iter().map(|c| c.describe()).collect();
    parts.join(" and ")
}

/// The denial for a rule whose conditions could not be evaluated (fail closed).
fn unchecked(kind: DenialKind, tool: &str, clause: &Clause, reason: &str) -> Denial {
    let message = match &clause.on_deny {
        Some(text) => format!("{text} (the rule could not be checked: {reason})"),
        None => {
            format!("The call to \"{tool}\" could not be checked against its policy: {reason}.")
        }
    };
    Denial::new(kind, tool, &clause.pointer, message)
}

/// The cost of one call for `limit`: 1, or the rounded-up `increment_from` argument
/// (saturated at `u64::MAX`). `Ok(None)` for a zero cost, which charges nothing.
fn cost(limit: &Limit, tool: &str, args: Option<&ArgValue>) -> Result<Option<NonZeroU64>, Denial> {
    let Some(path) = &limit.increment_from else {
        return Ok(Some(NonZeroU64::MIN));
    };
    let deny = |problem: String| {
        Denial::new(
            DenialKind::Limit,
            tool,
            &limit.meta.pointer,
            format!(
                "The call to \"{tool}\" is charged by argument `{}`, but {problem}.",
                path.as_str()
            ),
        )
    };
    let value = match path.lookup(args) {
        None | Some(ArgValue::Null) => return Err(deny("it is missing".to_owned())),
        Some(ArgValue::Number(n)) => n,
        Some(other) => return Err(deny(format!("it is {}, not a number", kind(other)))),
    };
    // The exact value, rounded up: 2.0000000000000000001 costs 3.
    let Some(cost) = value.ceil_u64() else {
        return Err(deny("it is negative".to_owned()));
    };
    Ok(NonZeroU64::new(cost))
}

#[cfg(test)]
mod tests {
    use super::retry_seconds;
    use std::time::Duration;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_seconds(Duration::ZERO), 1);
        assert_eq!(retry_seconds(Duration::from_nanos(1)), 1);
        assert_eq!(retry_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(retry_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_seconds(Duration::from_secs(59)), 59);
    }
}
