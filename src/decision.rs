//! The vocabulary of the decision: the [`Decision`] on a call, and the [`Denial`]
//! (with its [`DenialKind`]) of a call that must not run. The rules that reach it are
//! in `rules.rs`, the counters in `counter/`, and [`Engine`](crate::Engine) runs both.

use std::fmt;
use std::time::Duration;

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
    /// The tool's definition changed since it was pinned, or it has no pin.
    Unreviewed,
    /// The call needs a person's approval (`require_approval`) and has none yet, or
    /// the person declined it.
    Approval,
}

impl DenialKind {
    const ALL: [DenialKind; 8] = [
        DenialKind::Hidden,
        DenialKind::NotAllowed,
        DenialKind::DenyIf,
        DenialKind::Require,
        DenialKind::Limit,
        DenialKind::CounterUnavailable,
        DenialKind::Unreviewed,
        DenialKind::Approval,
    ];

    /// The kind named `name` ([`DenialKind::as_str`]'s names), if any.
    pub(crate) fn from_name(name: &str) -> Option<DenialKind> {
        DenialKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// The name used in answers, logs and metrics: `hidden`, `not_allowed`, `deny_if`,
    /// `require`, `limit`, `counter_unavailable`, `unreviewed`, `approval`.
    pub fn as_str(self) -> &'static str {
        match self {
            DenialKind::Hidden => "hidden",
            DenialKind::NotAllowed => "not_allowed",
            DenialKind::DenyIf => "deny_if",
            DenialKind::Require => "require",
            DenialKind::Limit => "limit",
            DenialKind::CounterUnavailable => "counter_unavailable",
            DenialKind::Unreviewed => "unreviewed",
            DenialKind::Approval => "approval",
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
    pub(crate) retry_after: Option<u64>,
    /// For a call waiting for a person's approval: the request's id.
    pub(crate) approval: Option<std::sync::Arc<str>>,
}

impl Denial {
    /// The `rule` of a denial by the default action.
    pub const RULE_DEFAULT_DENY: &'static str = "(default deny)";
    /// The `rule` of a denial of a hidden tool.
    pub const RULE_HIDDEN: &'static str = "(hidden)";
    /// The `rule` of a denial because the counter store failed.
    pub const RULE_COUNTER_STORE: &'static str = "(counter store)";
    /// The `rule` of a denial because the tool's definition is not the pinned one.
    pub const RULE_PINS: &'static str = "(pins)";

    pub(crate) fn new(kind: DenialKind, tool: &str, rule: &str, message: String) -> Denial {
        Denial {
            kind,
            tool: tool.to_owned(),
            rule: rule.to_owned(),
            message,
            retry_after: None,
            approval: None,
        }
    }

    /// The same denial with another message.
    pub(crate) fn with_message(mut self, message: String) -> Denial {
        self.message = message;
        self
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

/// Whole seconds until a retry, rounded up and never 0.
pub(crate) fn retry_seconds(wait: Duration) -> u64 {
    let nanos = wait.as_nanos();
    let seconds = nanos.div_ceil(1_000_000_000);
    u64::try_from(seconds).unwrap_or(u64::MAX).max(1)
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
