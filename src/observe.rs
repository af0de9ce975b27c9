//! What the layer reports about its decisions: one [`Event`] per fact, handed to an
//! [`Observer`].
//!
//! [`TracingObserver`] (the default) writes each event as a `tracing` line;
//! `MetricsObserver` (feature `metrics`) counts them; an application can add its own
//! (an audit sink, say) with [`PolicyLayer::observer`](crate::PolicyLayer::observer).
//! Events carry what an audit record needs (hashed grant and session, JSON-RPC method,
//! tool, policy fingerprint, decision, rule, message, the server's status and latency
//! for forwarded calls, the sorted argument keys the policy read), never argument values
//! or credentials.
//!
//! Log lines carry text that came from requests (tool names, keys, methods). Written
//! raw, a tool name holding `\n` or an ANSI escape could print a forged line below the
//! real one, or rewrite the terminal. The tracing observer writes such text with every
//! control character (and the Unicode line separators and bidirectional overrides that
//! can reorder a line) escaped, so one event is always one line and shows what was sent.

use std::fmt::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::counter::StoreError;
use crate::decision::{Decision, DenialKind};
use crate::error::PolicyError;
use crate::jsonrpc::{Id, forges_text};
use crate::scope::ScopeValue;
use crate::value::ArgValue;

/// Receives every [`Event`] of a layer. Called on the request's path: keep it quick
/// (hand slow work to a channel).
///
/// An audit sink that keeps one line per denied call, next to the default tracing:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tower::{Layer, ServiceExt};
/// use tower_mcp_policy::observe::{Event, Observer, TracingObserver};
/// use tower_mcp_policy::testing::{self, Answer};
/// use tower_mcp_policy::{Decision, Policy, PolicyLayer};
///
/// #[derive(Clone, Default)]
/// struct Audit(Arc<Mutex<Vec<String>>>);
///
/// impl Observer for Audit {
///     fn observe(&self, event: &Event<'_>) {
///         if let Event::Call(call) = event {
///             if let (Decision::Deny(denial), true) = (call.decision, call.enforced) {
///                 let rule = denial.rule();
///                 let line = format!("{} {} grant={} rule={rule}", call.decision_label(), call.tool, call.grant);
///                 self.0.lock().unwrap().push(line);
///             }
///         }
///     }
///
///     fn wants_allowed(&self) -> bool {
///         false // saves keeping allowed calls until the server answers
///     }
/// }
///
/// # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
/// # let my_mcp_service = tower::service_fn(|_: http::Request<tower_mcp_policy::layer::PolicyBody>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
/// #         br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#))))
/// # });
/// let policy: Policy = r#"{ "version": "1", "default": "deny", "tools": { "get_price": {} } }"#.parse()?;
/// let audit = Audit::default();
/// let service = PolicyLayer::new(policy)
///     .observer((TracingObserver, audit.clone()))
///     .layer(my_mcp_service);
///
/// let answer = service.oneshot(testing::tool_call("transfer", serde_json::json!({}))).await?;
/// assert!(matches!(testing::answer(answer).await?, Answer::Denied(_)));
/// let lines = audit.0.lock().unwrap();
/// assert!(lines[0].starts_with("deny transfer grant="), "{}", lines[0]);
/// assert!(lines[0].ends_with("rule=(default deny)"), "{}", lines[0]);
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(doc()).unwrap();
/// ```
pub trait Observer: Send + Sync + 'static {
    /// One event.
    fn observe(&self, event: &Event<'_>);

    /// Whether allowed calls are reported. They are reported when the server has
    /// answered (with its status and latency), so the layer keeps a copy of each
    /// allowed call's tool name and argument keys until then; an observer that
    /// ignores them saves that. Default `true`.
    fn wants_allowed(&self) -> bool {
        true
    }
}

impl<A: Observer, B: Observer> Observer for (A, B) {
    fn observe(&self, event: &Event<'_>) {
        self.0.observe(event);
        self.1.observe(event);
    }

    fn wants_allowed(&self) -> bool {
        self.0.wants_allowed() || self.1.wants_allowed()
    }
}

impl<O: Observer + ?Sized> Observer for Arc<O> {
    fn observe(&self, event: &Event<'_>) {
        (**self).observe(event);
    }

    fn wants_allowed(&self) -> bool {
        (**self).wants_allowed()
    }
}

/// Something the layer did or decided. See the example on [`Observer`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A tool call was judged: allowed (reported once the server answered), denied,
    /// would be denied (monitor mode, or a candidate policy), or not executed.
    Call(CallEvent<'a>),
    /// A request body was judged (once per request, whatever it held).
    Judged {
        /// The fingerprint of the policy it was judged under.
        policy: &'a str,
        /// From the body read in full to the decision, counters included.
        latency: Duration,
        /// How many counter buckets the store tracks, if it knows.
        tracked_keys: Option<usize>,
    },
    /// A request refused before any decision: unreadable body, bad headers, too large,
    /// too slow. The answer is a JSON-RPC error.
    Rejected {
        /// The HTTP status of the answer.
        status: u16,
        /// The JSON-RPC error code.
        code: i64,
        /// The error message (request text in it is not escaped here).
        message: &'a str,
    },
    /// An answer that may carry a tool list was withheld (replaced by a JSON-RPC
    /// error) instead of being passed on unread: the layer could not read it, it was
    /// larger than it reads to filter, or it arrived compressed.
    ListWithheld {
        /// Why, in words.
        reason: &'a str,
    },
    /// Charges given back because the calls they paid for did not run.
    Refund {
        /// How many charges.
        charges: usize,
    },
    /// The counter store failed. For a charge, the calls that needed it were denied,
    /// or (a store that fails open) allowed uncounted. In the background (no call
    /// waited on it): a refund not applied, or the hashing secret the replicas share
    /// could not be written back or differs from this one's.
    StoreError {
        /// The store's error (never shown to the agent).
        error: &'a StoreError,
        /// True when the calls ran uncounted (fail open); false when they were denied.
        uncounted: bool,
        /// True for an error outside a charge (see
        /// [`CounterStore::report_errors_to`](crate::counter::CounterStore::report_errors_to)).
        background: bool,
    },
    /// A tool was listed with a definition that differs from its pin, or it has no
    /// pin (see [`PolicyLayer::pins_file`](crate::PolicyLayer::pins_file)): reported
    /// once per tool and digest. Unless in monitor mode, the tool was withheld from the
    /// list and its calls are denied.
    ToolDrift {
        /// The tool's name (unbounded: the server chose it).
        tool: &'a str,
        /// The pinned digest (64 hex digits), `None` when the tool has no pin.
        pinned: Option<&'a str>,
        /// The digest of the definition listed now.
        current: &'a str,
        /// The fields that differ from the pin (`description`, `inputSchema`, ...), or
        /// every field present when there is no pin.
        fields: &'a [&'a str],
        /// False in monitor mode: reported, not withheld.
        enforced: bool,
    },
    /// A call that needs a person's approval (`require_approval`): approval was
    /// requested, a person approved or declined it, it expired unanswered, or the
    /// approved call ran (`used`).
    Approval {
        /// `requested`, `approved`, `declined`, `expired` or `used`.
        step: &'a str,
        /// The request's id (32 hex digits), as the approvals API and the agent name it.
        id: &'a str,
        /// The tool (unbounded: the agent chose it).
        tool: &'a str,
        /// The caller's grant by name, under [`Grants`](crate::Grants).
        grant: Option<&'a str>,
        /// Who approved or declined it (the approver's name), for `approved`,
        /// `declined` and `used`.
        by: Option<&'a str>,
        /// The call's canonical arguments (JSON): what the person approves. The
        /// tracing lines never print them.
        arguments: &'a str,
        /// What the person reads: the rule's `reason`.
        reason: &'a str,
    },
    /// A policy was put in force, or a reload failed and the last good one stays.
    Reload {
        /// The file, when the policy came from one.
        file: Option<&'a Path>,
        /// The new policy's summary, or why it did not load.
        result: Result<&'a str, &'a PolicyError>,
        /// The fingerprint of the policy in force after the event.
        policy: &'a str,
    },
}

/// One judged tool call; see [`Event::Call`].
///
/// See the example on [`Observer`].
#[derive(Debug)]
#[non_exhaustive]
pub struct CallEvent<'a> {
    /// The decision on the call.
    pub decision: &'a Decision,
    /// False for a dry run (monitor mode, or a candidate policy): the decision was
    /// reported, not enforced.
    pub enforced: bool,
    /// The tool, as the agent sent it (unbounded: do not use it as a metric label).
    pub tool: &'a str,
    /// A bounded name for the tool: the name or pattern the policy knows it by, or
    /// `other` ([`Policy::tool_label`](crate::Policy::tool_label)).
    pub tool_label: &'a str,
    /// The JSON-RPC method (`tools/call`).
    pub method: &'a str,
    /// The caller's grant, hashed.
    pub grant: ScopeValue,
    /// The caller's grant by name, under [`Grants`](crate::Grants) (a name from the
    /// grants file, or `anonymous`; bounded, so a fit metric label); `None` for a layer
    /// with one policy, which knows callers only by their credential's hash.
    pub grant_name: Option<&'a str>,
    /// The caller's session, hashed (the grant's own value when there is none).
    pub session: ScopeValue,
    /// The fingerprint of the policy that judged it.
    pub policy: &'a str,
    /// True when a candidate policy (monitored beside the enforced one) judged it.
    pub candidate: bool,
    /// For allowed calls: the server's HTTP status; `None` when the inner service
    /// failed without answering.
    pub upstream_status: Option<u16>,
    /// For allowed calls: from forwarding the request to the answer's head.
    pub upstream_latency: Option<Duration>,
    /// The caller's W3C trace context (`traceparent`, from the call's
    /// `params._meta` or else the HTTP header; SEP-414), so an audit record joins the
    /// caller's trace. Only a well-formed one is kept.
    pub trace: Option<&'a str>,
    pub(crate) jsonrpc_id: Option<&'a Id>,
    pub(crate) arg_keys: ArgKeys<'a>,
}

impl<'a> CallEvent<'a> {
    /// The name of the decision in logs and metrics: `allow`, `deny`, `not_executed`,
    /// or for a dry run `would_deny`, `would_require_approval` (a call that needs a
    /// person's approval and has none) and `would_not_execute`.
    pub fn decision_label(&self) -> &'static str {
        match (self.decision, self.enforced) {
            (Decision::Allow, _) => "allow",
            (Decision::Deny(denial), false) if denial.kind() == DenialKind::Approval => {
                "would_require_approval"
            }
            (Decision::Deny(_), true) => "deny",
            (Decision::Deny(_), false) => "would_deny",
            (_, true) => "not_executed",
            (_, false) => "would_not_execute",
        }
    }

    /// The call's JSON-RPC id as sent (a number, or a string in quotes); `None` for a
    /// notification.
    pub fn jsonrpc_id(&self) -> Option<impl fmt::Display + 'a> {
        self.jsonrpc_id
    }

    /// The top-level argument keys the policy read, sorted (never the values). The
    /// decoder keeps only what the policy reads, so keys no rule mentions are absent.
    pub fn arg_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = match self.arg_keys {
            ArgKeys::Args(args) => args
                .and_then(ArgValue::as_object)
                .into_iter()
                .flat_map(|m| m.keys())
                .map(String::as_str)
                .collect(),
            ArgKeys::Owned(keys) => keys.iter().map(|k| &**k).collect(),
        };
        keys.sort_unstable();
        keys
    }
}

/// Where an event's argument keys come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ArgKeys<'a> {
    Args(Option<&'a ArgValue>),
    Owned(&'a [Box<str>]),
}

/// The default observer: one `tracing` event per [`Event`], target `tower_mcp_policy`.
/// Allowed calls, refunds and `Judged` are DEBUG, denials and rejections INFO, store
/// errors WARN, failed reloads ERROR.
///
/// See the example on [`Observer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingObserver;

impl Observer for TracingObserver {
    fn observe(&self, event: &Event<'_>) {
        trace(event);
    }

    fn wants_allowed(&self) -> bool {
        tracing::enabled!(target: "tower_mcp_policy", tracing::Level::DEBUG)
    }
}

/// Displays an optional JSON-RPC id (`(notification)` for none).
struct IdField<'a>(Option<&'a Id>);

impl fmt::Display for IdField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("(notification)"),
        }
    }
}

/// Sorted argument keys, formatted only when the line is written.
struct KeysField<'a>(&'a CallEvent<'a>);

impl fmt::Debug for KeysField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.arg_keys().iter().map(|k| Escaped(k)))
            .finish()
    }
}

fn trace(event: &Event<'_>) {
    match event {
        Event::Call(call) => trace_call(call),
        Event::ToolDrift {
            tool,
            pinned,
            current,
            fields,
            enforced,
        } => tracing::warn!(
            target: "tower_mcp_policy",
            decision = "tool_drift",
            tool = %Escaped(tool),
            pinned = pinned.unwrap_or("none"),
            current,
            fields = %fields.join(","),
            enforced,
            "the definition of a tool differs from its pin{}",
            if *enforced { "; it is withheld and its calls denied until it is re-pinned" } else { " (monitor mode: not withheld)" }
        ),
        Event::Judged {
            policy,
            latency,
            tracked_keys,
        } => tracing::trace!(
            target: "tower_mcp_policy",
            decision = "judged",
            policy,
            latency_us = latency.as_micros() as u64,
            tracked_keys,
            "request judged"
        ),
        Event::Rejected {
            status,
            code,
            message,
        } => tracing::info!(
            target: "tower_mcp_policy",
            decision = "reject",
            status,
            code,
            "{}",
            Escaped(message)
        ),
        Event::ListWithheld { reason } => tracing::warn!(
            target: "tower_mcp_policy",
            decision = "withheld",
            "a tool list was withheld, not passed on unread: {}",
            Escaped(reason)
        ),
        Event::Refund { charges } => tracing::debug!(
            target: "tower_mcp_policy",
            decision = "refund",
            charges,
            "charges given back: the calls did not run"
        ),
        Event::StoreError {
            error,
            background: true,
            ..
        } => tracing::error!(
            target: "tower_mcp_policy",
            decision = "store_error",
            "counter store: {}",
            Escaped(&error.to_string())
        ),
        Event::StoreError {
            error,
            uncounted: false,
            ..
        } => tracing::warn!(
            target: "tower_mcp_policy",
            decision = "store_error",
            "counter store unavailable, calls that need it are denied: {}",
            Escaped(&error.to_string())
        ),
        Event::StoreError {
            error,
            uncounted: true,
            ..
        } => tracing::warn!(
            target: "tower_mcp_policy",
            decision = "store_error",
            "counter store unavailable, call allowed uncounted (fail open): {}",
            Escaped(&error.to_string())
        ),
        Event::Approval {
            step,
            id,
            tool,
            grant,
            by,
            ..
        } => tracing::info!(
            target: "tower_mcp_policy",
            decision = "approval",
            step,
            approval = id,
            tool = %Escaped(tool),
            grant,
            by,
            "approval {step}"
        ),
        Event::Reload {
            file,
            result: Ok(summary),
            policy,
        } => tracing::info!(
            target: "tower_mcp_policy",
            decision = "reload",
            file = file.map(|f| f.display().to_string()),
            policy,
            "policy replaced: {summary}"
        ),
        Event::Reload {
            file,
            result: Err(error),
            policy,
        } => tracing::error!(
            target: "tower_mcp_policy",
            decision = "reload_failed",
            file = file.map(|f| f.display().to_string()),
            policy,
            "policy not reloaded, the last good policy stays in force: {error}"
        ),
    }
}

fn trace_call(call: &CallEvent<'_>) {
    let id = IdField(call.jsonrpc_id);
    let latency_ms = call.upstream_latency.map(|l| l.as_secs_f64() * 1e3);
    match call.decision {
        Decision::Allow => tracing::debug!(
            target: "tower_mcp_policy",
            decision = "allow",
            tool = call.tool,
            method = call.method,
            grant = %call.grant,
            grant_name = call.grant_name,
            session = %call.session,
            jsonrpc_id = %id,
            policy = call.policy,
            upstream_status = call.upstream_status,
            upstream_latency_ms = latency_ms,
            traceparent = call.trace,
            arg_keys = ?KeysField(call),
            "tool call allowed"
        ),
        Decision::Deny(denial) => tracing::info!(
            target: "tower_mcp_policy",
            decision = call.decision_label(),
            kind = denial.kind().as_str(),
            tool = call.tool,
            method = call.method,
            rule = denial.rule(),
            retry_after_seconds = denial.retry_after(),
            grant = %call.grant,
            grant_name = call.grant_name,
            session = %call.session,
            jsonrpc_id = %id,
            policy = call.policy,
            candidate = call.candidate,
            traceparent = call.trace,
            arg_keys = ?KeysField(call),
            "{}",
            Escaped(denial.message())
        ),
        _ => tracing::info!(
            target: "tower_mcp_policy",
            decision = call.decision_label(),
            tool = call.tool,
            method = call.method,
            grant = %call.grant,
            grant_name = call.grant_name,
            session = %call.session,
            jsonrpc_id = %id,
            policy = call.policy,
            candidate = call.candidate,
            "tool call not executed: another call in its batch was denied"
        ),
    }
}

/// Displays `str` with control characters escaped (`\n`, `\u{1b}`, ...).
pub(crate) struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(forges_text) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        fmt::Display::fmt(self, f)?;
        f.write_char('"')
    }
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn control_characters_are_escaped() {
        let shown = Escaped("a\nb\r\tc\u{1b}[31md\u{7f}\u{9b}e\u{2028}f\u{202e}g").to_string();
        assert_eq!(
            shown,
            "a\\nb\\r\\tc\\u{1b}[31md\\u{7f}\\u{9b}e\\u{2028}f\\u{202e}g"
        );
        assert_eq!(Escaped("plain, ünïcödé ✓").to_string(), "plain, ünïcödé ✓");
    }
}
