//! The rules phase of the decision: a pure function of (compiled policy, tool call,
//! scope keys), with no state read or written.
//!
//! The decision runs in two phases so that a denied call never touches a counter:
//!
//! 1. [`Policy::evaluate`] applies, in order, `hide` → `default` → `deny_if` → `require`
//!    (for `all_tools` and the tool's own rule) and, if the call passes, lists the
//!    [`Charge`]s its limits ask for.
//! 2. A [`CounterStore`](crate::counter::CounterStore) applies all the charges of a
//!    request at once, or none of them.
//!
//! [`Engine`](crate::Engine) runs both phases.

use std::borrow::Cow;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::counter::Charge;
use crate::decision::{Denial, DenialKind, retry_seconds};
use crate::policy::condition::{Truth, kind};
use crate::policy::{ApprovalRule, Clause, CounterDef, Limit, LimitMeta, Policy, Resolved, Rule};
use crate::scope::ScopeKeys;
use crate::value::ArgValue;

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

impl Policy {
    /// Whether some rule of the policy has `require_approval`.
    pub(crate) fn asks_approval(&self) -> bool {
        self.asks_approval
    }

    /// The `require_approval` a call of `tool` with `args` is subject to, if any: the
    /// first (`all_tools`' before the tool's own) with no `when`, or with a `when` item
    /// that holds or cannot be evaluated (fail closed). Asked only of a call the rules
    /// and limits let run.
    pub(crate) fn approval<'p>(
        &'p self,
        tool: &str,
        args: Option<&ArgValue>,
        tracer: &mut impl Tracer,
    ) -> Option<&'p ApprovalRule> {
        if !self.asks_approval {
            return None;
        }
        let Resolved::Rules(own) = self.resolve(tool) else {
            return None;
        };
        let rules = self.all_tools().into_iter().chain(own.map(|t| &t.rule));
        for approval in rules.filter_map(|rule| rule.approval.as_ref()) {
            if approval.when.is_empty() {
                tracer.approval(approval, None);
                return Some(approval);
            }
            for clause in &approval.when {
                let truth = clause_truth(clause, args);
                tracer.approval(approval, Some((clause, args, &truth)));
                if !matches!(truth, Truth::False) {
                    return Some(approval);
                }
            }
        }
        None
    }
}

impl ApprovalRule {
    /// The denial of a call that needs this approval and has none.
    pub(crate) fn denial(&self, tool: &str) -> Denial {
        let message = match &self.reason {
            Some(reason) => reason.to_string(),
            None => format!("A person must approve this call to \"{tool}\" before it runs."),
        };
        Denial::new(DenialKind::Approval, tool, &self.pointer, message)
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

    /// A `require_approval` and, when it has `when` items, one of them and its truth.
    fn approval(
        &mut self,
        approval: &ApprovalRule,
        clause: Option<(&Clause, Option<&ArgValue>, &Truth)>,
    ) {
        let _ = (approval, clause);
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
