//! What a policy does, for the people who write it.
//!
//! [`Policy::tool_policy`] says what the policy does with a tool before any argument
//! is known, and [`Policy::unmatched`] which of its entries match none of a server's
//! tools. [`Policy::explain`] runs the same evaluation the layer runs (the rules, then the
//! charges on fresh counters) and records each step: how the tool's name resolved,
//! each `deny_if` and `require` item with the value and truth of every condition, and
//! each limit with what it would charge.

use std::fmt;
use std::num::NonZeroU64;

use crate::counter::clock::FakeClock;
use crate::counter::{Charge, ChargeError, MemoryCounters};
use crate::decision::{Decision, Denial, DenialKind};
use crate::error::pointer;
use crate::policy::condition::Truth;
use crate::policy::glob::Glob;
use crate::policy::{ApprovalRule, Clause, CounterDef, Limit, Policy, PolicyWarning, Resolved};
use crate::rules::Tracer;
use crate::scope::{ScopeHasher, ScopeKeys};
use crate::value::ArgValue;

/// The decision for one call with every step that led to it; see [`Policy::explain`].
/// Its `Display` is the trace as text, one step per line.
///
/// See the example on [`Policy::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Explanation {
    /// The tool that was called.
    pub tool: String,
    /// The arguments as the policy read them: JSON with sorted keys and numbers exactly
    /// as written (`{}` when there were none).
    pub args: String,
    /// The steps, in the order the layer takes them; evaluation stops at a denial.
    pub steps: Vec<Step>,
    /// The decision, with fresh counters.
    pub decision: Decision,
}

/// One step of an [`Explanation`].
///
/// See the example on [`Policy::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Step {
    kind: StepKind,
    /// Where in the policy: a JSON Pointer (`/tools/transfer/deny_if/0`), or
    /// `(default deny)`, `(hidden)`, `(default allow)`.
    pub rule: String,
    /// What happened, in words.
    pub summary: String,
    /// For `deny_if` and `require`: every condition of the item.
    pub conditions: Vec<ConditionCheck>,
}

/// What a [`Step`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepKind {
    /// How the tool's name resolved: hidden, no rule (default), or the rule that governs it.
    Resolve,
    /// A `deny_if` item: the call is denied when all its conditions hold.
    DenyIf,
    /// A `require` item: the call is denied unless all its conditions hold.
    Require,
    /// A limit: what the call would be charged.
    Limit,
    /// A `require_approval`: whether the call needs a person's approval.
    Approval,
}

/// One condition of a `deny_if` or `require` item, evaluated.
///
/// See the example on [`Policy::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConditionCheck {
    /// The condition: `args.amount gt 5000`.
    pub condition: String,
    /// The argument's value at the condition's path (JSON text), `None` when absent.
    pub value: Option<String>,
    /// Its truth, or why it could not be evaluated (which makes the item fail closed).
    pub truth: Result<bool, String>,
}

impl Policy {
    /// The decision for a call of `tool` with `args` (the arguments object as JSON
    /// text, its numbers read exactly as written, as the layer reads them) as the layer
    /// would make it with fresh counters, and every step that led to it. The error says
    /// why `args` is not a JSON object.
    ///
    /// ```
    /// use tower_mcp_policy::{Decision, Policy};
    ///
    /// let policy: Policy = r#"{ "version": "1", "default": "deny", "tools": { "transfer": {
    ///     "deny_if": [{ "conditions": [{ "path": "args.amount", "op": "gt", "value": 5000 }] }],
    ///     "limits": [{ "counter": "transfers", "window": "minute", "max": 5 }] } } }"#.parse()?;
    ///
    /// let explanation = policy.explain("transfer", Some(r#"{ "amount": 9000 }"#)).unwrap();
    /// assert!(matches!(explanation.decision, Decision::Deny(_)));
    /// let deny_if = &explanation.steps[1];
    /// assert_eq!((deny_if.kind(), deny_if.rule.as_str()), ("deny_if", "/tools/transfer/deny_if/0"));
    /// assert_eq!(deny_if.conditions[0].value.as_deref(), Some("9000"));
    /// assert_eq!(deny_if.conditions[0].truth, Ok(true));
    ///
    /// let explanation = policy.explain("transfer", Some(r#"{ "amount": 10 }"#)).unwrap();
    /// assert_eq!(explanation.decision, Decision::Allow);
    /// assert_eq!(explanation.steps.last().unwrap().kind(), "limit");
    /// assert_eq!(explanation.args, r#"{"amount":10}"#);
    /// assert!(policy.explain("transfer", Some("{ amount: 10 }")).is_err());
    /// assert!(policy.explain("transfer", Some("[10]")).is_err());
    /// println!("{explanation}");
    /// # Ok::<(), tower_mcp_policy::PolicyError>(())
    /// ```
    pub fn explain(
        &self,
        tool: &str,
        args: Option<&str>,
    ) -> Result<Explanation, serde_json::Error> {
        let args = args.map(ArgValue::parse_exact).transpose()?;
        if args.as_ref().is_some_and(|args| args.as_object().is_none()) {
            let message = "the arguments must be a JSON object, like {\"amount\": 5}";
            return Err(serde::de::Error::custom(message));
        }
        let shown = args
            .as_ref()
            .map_or_else(|| "{}".to_owned(), ToString::to_string);
        let args = args.as_ref();
        let hasher = ScopeHasher::with_key([0; 16]);
        let grant = hasher.anonymous();
        let scope = ScopeKeys::new(grant, hasher.no_session(grant));
        let mut steps = Steps {
            policy: self,
            tool,
            steps: Vec::new(),
        };
        let decision = match self.evaluate_traced(tool, args, &scope, &mut steps) {
            Err(denial) => Decision::Deny(denial),
            Ok(allowed) => {
                // The same all-or-nothing charge as the layer's, on fresh counters: two
                // limits on one counter can exhaust it within a single call.
                let charges: Vec<Charge> = allowed.charges().collect();
                // Fresh counters: only their starting state matters, so no real clock.
                match MemoryCounters::with_clock(FakeClock::new()).try_charge(&charges) {
                    // A call that would run is then asked for a person's approval; with
                    // none given, the layer refuses it and asks for one.
                    Ok(()) => match self.approval(tool, args, &mut steps) {
                        Some(approval) => Decision::Deny(approval.denial(tool)),
                        None => Decision::Allow,
                    },
                    Err(ChargeError::Exceeded { index, retry_after }) => {
                        Decision::Deny(allowed.exceeded(index, retry_after))
                    }
                    // Memory counters are always available.
                    Err(ChargeError::Unavailable(error) | ChargeError::Uncounted(error)) => {
                        Decision::Deny(Denial::counter_unavailable(tool, error.retry_after()))
                    }
                }
            }
        };
        Ok(Explanation {
            tool: tool.to_owned(),
            args: shown,
            steps: steps.steps,
            decision,
        })
    }
}

/// Records the steps of one evaluation.
struct Steps<'a> {
    policy: &'a Policy,
    tool: &'a str,
    steps: Vec<Step>,
}

impl Steps<'_> {
    fn push(&mut self, kind: StepKind, rule: String, summary: String) {
        self.steps.push(Step {
            kind,
            rule,
            summary,
            conditions: Vec::new(),
        });
    }
}

impl Tracer for Steps<'_> {
    fn resolved(&mut self, resolved: &Resolved<'_>) {
        let tool = self.tool;
        let (rule, summary) = match resolved {
            Resolved::Hidden => (
                Denial::RULE_HIDDEN.to_owned(),
                format!("\"{tool}\" is hidden: the agent is told the tool does not exist"),
            ),
            Resolved::NotAllowed => (
                Denial::RULE_DEFAULT_DENY.to_owned(),
                format!("no rule under `tools` matches \"{tool}\", and the default is deny"),
            ),
            Resolved::Rules(None) => (
                "(default allow)".to_owned(),
                format!("no rule under `tools` matches \"{tool}\"; the default is allow"),
            ),
            Resolved::Rules(Some(rule)) if &*rule.key == tool => (
                pointer("/tools", &[&rule.key]),
                format!("the rule for \"{tool}\" applies (exact name)"),
            ),
            Resolved::Rules(Some(rule)) => (
                pointer("/tools", &[&rule.key]),
                format!("the rule \"{}\" applies (pattern)", rule.key),
            ),
        };
        self.push(StepKind::Resolve, rule, summary);
        if matches!(resolved, Resolved::Rules(_)) && self.policy.all_tools().is_some() {
            let last = self.steps.last_mut().expect("just pushed");
            last.summary.push_str("; `all_tools` applies too");
        }
    }

    fn clause(
        &mut self,
        kind: DenialKind,
        clause: &Clause,
        args: Option<&ArgValue>,
        truth: &Truth,
    ) {
        let (step, summary) = match (kind, truth) {
            (DenialKind::DenyIf, Truth::True) => (StepKind::DenyIf, "all conditions hold: deny"),
            (DenialKind::DenyIf, Truth::False) => (StepKind::DenyIf, "a condition is false: pass"),
            (DenialKind::DenyIf, Truth::Unknown(_)) => (
                StepKind::DenyIf,
                "a condition cannot be evaluated: deny (fail closed)",
            ),
            (_, Truth::True) => (StepKind::Require, "all conditions hold: pass"),
            (_, Truth::False) => (StepKind::Require, "a condition is false: deny"),
            (_, Truth::Unknown(_)) => (
                StepKind::Require,
                "a condition cannot be evaluated: deny (fail closed)",
            ),
        };
        let summary = if clause.conditions.is_empty() {
            match step {
                StepKind::DenyIf => "no conditions: always deny".to_owned(),
                _ => "no conditions: always pass".to_owned(),
            }
        } else {
            summary.to_owned()
        };
        self.steps.push(Step {
            kind: step,
            rule: clause.pointer.to_string(),
            summary,
            conditions: checks(clause, args),
        });
    }

    fn approval(
        &mut self,
        approval: &ApprovalRule,
        clause: Option<(&Clause, Option<&ArgValue>, &Truth)>,
    ) {
        let wait = humantime::format_duration(approval.timeout);
        let Some((clause, args, truth)) = clause else {
            let summary = format!("every call needs a person's approval (waited for {wait})");
            return self.push(StepKind::Approval, approval.pointer.to_string(), summary);
        };
        let summary = match truth {
            Truth::True => {
                format!("all conditions hold: a person must approve (waited for {wait})")
            }
            Truth::False => "a condition is false: no approval needed".to_owned(),
            Truth::Unknown(_) => format!(
                "a condition cannot be evaluated: a person must approve (fail closed; waited for {wait})"
            ),
        };
        self.steps.push(Step {
            kind: StepKind::Approval,
            rule: clause.pointer.to_string(),
            summary,
            conditions: checks(clause, args),
        });
    }
    fn limit(
        &mut self,
        limit: &Limit,
        counter: &CounterDef,
        cost: &Result<Option<NonZeroU64>, Denial>,
    ) {
        let budget = format!(
            "counter \"{}\" ({} per {})",
            counter.name(),
            counter.describe(),
            counter.scope().as_str()
        );
        let summary = match cost {
            Ok(Some(cost)) if cost.get() > u64::from(counter.max().get()) => {
                format!("costs {cost}, more than {budget} allows: deny")
            }
            Ok(Some(cost)) => format!("charges {cost} to {budget}"),
            Ok(None) => format!("costs 0: nothing is charged to {budget}"),
            Err(denial) => format!("{}: deny", denial.message()),
        };
        self.push(StepKind::Limit, limit.meta.pointer.to_string(), summary);
    }
}

impl Step {
    /// What the step is: `tool` (how the tool's name resolved: hidden, no rule, or the
    /// rule that governs it), `deny_if` or `require` (an item, with its conditions),
    /// `limit` (what the call would be charged), or `approval` (whether it needs a
    /// person's approval, with the conditions of a `when` item).
    pub fn kind(&self) -> &'static str {
        match self.kind {
            StepKind::Resolve => "tool",
            StepKind::DenyIf => "deny_if",
            StepKind::Require => "require",
            StepKind::Limit => "limit",
            StepKind::Approval => "approval",
        }
    }
}

/// ```text
/// tool     /tools/transfer: the rule for "transfer" applies (exact name)
/// deny_if  /tools/transfer/deny_if/0: all conditions hold: deny
///            args.amount gt 5000: value 9000: true
/// decision DENY (deny_if, /tools/transfer/deny_if/0): Calls to "transfer" are denied when args.amount gt 5000.
/// ```
impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.steps {
            writeln!(f, "{:<8} {}: {}", step.kind(), step.rule, step.summary)?;
            for check in &step.conditions {
                let value = check.value.as_deref().unwrap_or("(absent)");
                match &check.truth {
                    Ok(truth) => {
                        writeln!(f, "           {}: value {value}: {truth}", check.condition)?
                    }
                    Err(reason) => writeln!(
                        f,
                        "           {}: value {value}: cannot be evaluated ({reason})",
                        check.condition
                    )?,
                }
            }
        }
        match &self.decision {
            Decision::Deny(denial) if denial.kind() == DenialKind::Approval => write!(
                f,
                "decision APPROVAL REQUIRED ({}): {} The call runs once a person approves it.",
                denial.rule(),
                denial.message()
            ),
            Decision::Deny(denial) => {
                write!(
                    f,
                    "decision DENY ({}, {}): {}",
                    denial.kind().as_str(),
                    denial.rule(),
                    denial.message()
                )?;
                match denial.retry_after() {
                    Some(seconds) => write!(f, " (retry after {seconds}s)"),
                    None => Ok(()),
                }
            }
            _ => write!(f, "decision ALLOW: the call is forwarded to the server"),
        }
    }
}

/// What a policy does with one tool, before any argument is known; see
/// [`Policy::tool_policy`].
///
/// See the example on [`Policy::tool_policy`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToolPolicy<'p> {
    /// Why no call can run (the tool is hidden, or denied by default); `None` when
    /// calls may run, subject to the conditions and counters.
    pub denied: Option<DenialKind>,
    /// The key under `tools` that governs the tool (its name or a pattern), if any.
    pub rule: Option<&'p str>,
    /// How many `deny_if` and `require` items apply (`all_tools` included).
    pub conditions: usize,
    /// The counters every call is charged to (`all_tools` included), in order.
    pub counters: Vec<&'p CounterDef>,
    /// Whether calls need a person's approval (`require_approval`, in the tool's rule or
    /// `all_tools`; some calls only, when it has `when` items).
    pub approval: bool,
}

impl ToolPolicy<'_> {
    /// `hidden`, `denied by default`, `allowed`, `allowed with conditions`, or
    /// `limited` (with or without conditions); `approval`, `approval, with conditions`,
    /// `limited, approval`, `limited, with conditions, approval` when calls need a
    /// person's approval.
    pub fn verdict(&self) -> &'static str {
        let conditions = self.conditions > 0;
        let limited = !self.counters.is_empty();
        match (self.denied, conditions, limited, self.approval) {
            (Some(DenialKind::Hidden), ..) => "hidden",
            (Some(_), ..) => "denied by default",
            (None, false, false, false) => "allowed",
            (None, true, false, false) => "allowed with conditions",
            (None, false, true, false) => "limited",
            (None, true, true, false) => "limited, with conditions",
            (None, false, false, true) => "approval",
            (None, true, false, true) => "approval, with conditions",
            (None, false, true, true) => "limited, approval",
            (None, true, true, true) => "limited, with conditions, approval",
        }
    }
}

impl Policy {
    /// What the policy does with `tool`: hidden, denied by default, or allowed under
    /// which rule, how many conditions and which counters.
    ///
    /// ```
    /// use tower_mcp_policy::{DenialKind, Policy};
    ///
    /// let policy: Policy = r#"{ "version": "1", "default": "deny", "hide": ["admin_*"],
    ///     "tools": { "binance_*": { "limits": [{ "counter": "binance", "window": "minute", "max": 30 }] },
    ///                "get_price": {} } }"#.parse()?;
    /// let close = policy.tool_policy("binance_close_listen_key");
    /// assert_eq!((close.denied, close.rule, close.verdict()), (None, Some("binance_*"), "limited"));
    /// assert_eq!(policy.tool_policy("admin_reset").denied, Some(DenialKind::Hidden));
    /// assert_eq!(close.counters[0].name(), "binance");
    /// assert_eq!(policy.tool_policy("get_price").verdict(), "allowed");
    /// assert_eq!(policy.tool_policy("admin_reset").verdict(), "hidden");
    /// assert_eq!(policy.tool_policy("transfer").verdict(), "denied by default");
    /// # Ok::<(), tower_mcp_policy::PolicyError>(())
    /// ```
    pub fn tool_policy(&self, tool: &str) -> ToolPolicy<'_> {
        let (denied, own) = match self.resolve(tool) {
            Resolved::Hidden => (Some(DenialKind::Hidden), None),
            Resolved::NotAllowed => (Some(DenialKind::NotAllowed), None),
            Resolved::Rules(own) => (None, own),
        };
        let mut policy = ToolPolicy {
            denied,
            rule: own.map(|rule| &*rule.key),
            conditions: 0,
            counters: Vec::new(),
            approval: false,
        };
        if denied.is_some() {
            return policy;
        }
        for rule in self.all_tools().into_iter().chain(own.map(|r| &r.rule)) {
            policy.conditions += rule.deny_if.len() + rule.require.len();
            policy.approval |= rule.approval.is_some();
            for limit in &rule.limits {
                let counter = self.counter(limit.counter);
                if !policy.counters.contains(&counter) {
                    policy.counters.push(counter);
                }
            }
        }
        policy
    }

    /// The argument paths of the rules that apply to `tool` (its own and `all_tools`':
    /// conditions, and limits' `increment_from`) that name an argument its
    /// `input_schema` (the tool's `inputSchema` as a server lists it) does not have.
    /// Such a path is always missing, so a `deny_if` or `require` on it denies every
    /// call, usually a typo (`args.amout`). A schema that does not declare
    /// `properties`, or allows others (`additionalProperties`), proves nothing.
    ///
    /// ```
    /// use serde_json::json;
    /// use tower_mcp_policy::Policy;
    ///
    /// let policy: Policy = r#"{ "version": "1", "default": "deny", "tools": { "transfer": {
    ///     "deny_if": [ { "conditions": [ { "path": "args.amout", "op": "gt", "value": 1000 } ] } ] } } }"#.parse()?;
    /// let schema = json!({"type": "object", "properties": {"amount": {"type": "number"}, "to": {}}});
    /// let [warning] = &policy.unknown_arguments("transfer", &schema)[..] else { panic!() };
    /// assert_eq!(warning.pointer(), "/tools/transfer/deny_if/0/conditions/0/path");
    /// assert!(warning.message().contains("no argument `amout`"));
    /// # Ok::<(), tower_mcp_policy::PolicyError>(())
    /// ```
    pub fn unknown_arguments(
        &self,
        tool: &str,
        input_schema: &serde_json::Value,
    ) -> Vec<PolicyWarning> {
        let Resolved::Rules(own) = self.resolve(tool) else {
            return Vec::new();
        };
        let mut paths: Vec<(String, &crate::policy::path::ArgPath)> = Vec::new();
        for rule in self.all_tools().into_iter().chain(own.map(|r| &r.rule)) {
            let when = rule.approval.iter().flat_map(|approval| &approval.when);
            for clause in rule.deny_if.iter().chain(&rule.require).chain(when) {
                for (i, condition) in clause.conditions.iter().enumerate() {
                    let at = format!("{}/conditions/{i}/path", clause.pointer);
                    paths.push((at, &condition.path));
                }
            }
            for limit in &rule.limits {
                if let Some(path) = &limit.increment_from {
                    paths.push((format!("{}/increment_from", limit.meta.pointer), path));
                }
            }
        }
        let mut warnings = Vec::new();
        for (at, path) in paths {
            let mut schema = input_schema;
            for segment in path.segments() {
                let step = match (schema.get("properties"), segment.index) {
                    (Some(serde_json::Value::Object(properties)), _) => {
                        match properties.get(&*segment.key) {
                            Some(next) => next,
                            None if open(schema) => break,
                            None => {
                                let mut known: Vec<&str> =
                                    properties.keys().map(String::as_str).collect();
                                known.sort_unstable();
                                let known = match known.is_empty() {
                                    true => "none".to_owned(),
                                    false => known.join(", "),
                                };
                                warnings.push(PolicyWarning {
                                    pointer: at.clone(),
                                    message: format!(
                                        "`{}`: the tool `{tool}` has no argument `{}` in its inputSchema (it has: {known}); calls are judged as if it were always missing",
                                        path.as_str(),
                                        segment.key
                                    ),
                                });
                                break;
                            }
                        }
                    }
                    (_, Some(_)) if schema.get("items").is_some() => &schema["items"],
                    _ => break, // nothing declared: nothing to compare with
                };
                schema = step;
            }
        }
        warnings
    }

    /// The entries of `hide` and `tools` that match none of `tools` (a server's tool
    /// names): misspelt names, and rules for tools the server does not have. Under
    /// `default: deny` a misspelt rule silently denies the real tool forever. Each is
    /// the entry as written (a name or a pattern) and a warning saying where it is and
    /// what is wrong.
    ///
    /// ```
    /// use tower_mcp_policy::Policy;
    ///
    /// let policy: Policy = r#"{ "version": "1", "default": "deny", "hide": ["debug_*"],
    ///     "tools": { "get_price": {}, "transfr": {} } }"#.parse()?;
    /// let unmatched = policy.unmatched(&["get_price", "transfer"]);
    /// let entries: Vec<(&str, &str)> =
    ///     unmatched.iter().map(|(entry, warning)| (*entry, warning.pointer())).collect();
    /// assert_eq!(entries, [("debug_*", "/hide/0"), ("transfr", "/tools/transfr")]);
    /// # Ok::<(), tower_mcp_policy::PolicyError>(())
    /// ```
    pub fn unmatched(&self, tools: &[&str]) -> Vec<(&str, PolicyWarning)> {
        let matches_any = |key: &str| match Glob::new(key) {
            Some(glob) => tools.iter().any(|tool| glob.is_match(tool)),
            None => tools.contains(&key),
        };
        let mut unmatched = Vec::new();
        for (i, entry) in self.hide.iter().enumerate() {
            if !matches_any(entry) {
                unmatched.push((
                    &**entry,
                    PolicyWarning {
                        pointer: pointer("/hide", &[&i.to_string()]),
                        message: format!("`{entry}` hides none of the server's tools"),
                    },
                ));
            }
        }
        for rule in &self.tools {
            if !matches_any(&rule.key) {
                let what = if rule.key.contains('*') {
                    "the pattern matches none of the server's tools"
                } else {
                    "the server has no tool of this name"
                };
                unmatched.push((
                    &*rule.key,
                    PolicyWarning {
                        pointer: pointer("/tools", &[&rule.key]),
                        message: format!("`{}`: {what}", rule.key),
                    },
                ));
            }
        }
        unmatched
    }
}

/// True when a JSON Schema object allows properties it does not declare.
fn open(schema: &serde_json::Value) -> bool {
    match schema.get("additionalProperties") {
        Some(serde_json::Value::Bool(false)) | None => false,
        Some(_) => true,
    }
}

/// Every condition of `clause`, evaluated on `args`.
fn checks(clause: &Clause, args: Option<&ArgValue>) -> Vec<ConditionCheck> {
    clause
        .conditions
        .iter()
        .map(|condition| ConditionCheck {
            condition: condition.describe(),
            value: condition.path.lookup(args).map(ToString::to_string),
            truth: match condition.eval(args) {
                Truth::True => Ok(true),
                Truth::False => Ok(false),
                Truth::Unknown(reason) => Err(reason),
            },
        })
        .collect()
}
