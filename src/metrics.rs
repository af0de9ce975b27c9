//! [`MetricsObserver`]: the layer's events as metrics, through the `metrics` facade
//! (feature `metrics`). Install any recorder (Prometheus, StatsD, ...) and add the
//! observer to the layer.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `mcp_policy_decisions_total` | counter | `decision` (`allow`, `deny`, `would_deny`, `would_require_approval`, `not_executed`, `would_not_execute`, `reject`), `kind` (the denial's kind, `protocol` for rejections, `none`), `tool`, `policy` (`enforced`, `monitor` for a dry run, or `candidate`), and under a grants file `grant` (the grant's name) |
//! | `mcp_policy_decision_seconds` | histogram | |
//! | `mcp_policy_store_errors_total` | counter | |
//! | `mcp_policy_lists_withheld_total` | counter | |
//! | `mcp_policy_tool_drift_total` | counter | |
//! | `mcp_policy_refunds_total` | counter | |
//! | `mcp_policy_reloads_total` | counter | `result` (`ok`, `error`) |
//! | `mcp_policy_approvals_total` | counter | `result` (`requested`, `approved`, `declined`, `expired`, `used`) |
//! | `mcp_policy_counter_keys` | gauge | |
//!
//! **Label values are bounded.** `tool` is [`Policy::tool_label`](crate::Policy::tool_label):
//! a name or pattern the policy mentions, `hidden`, or `other`; rejected requests have
//! `none`. However many tool names agents invent, the series are the policy's; `grant`
//! names come from the grants file (or are `anonymous`).

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::observe::{Event, Observer};

/// Records every [`Event`] as metrics (see the [module docs](self)). Pair it with the
/// tracing observer to keep the log lines: `.observer((TracingObserver, MetricsObserver))`.
///
/// ```
/// use tower_mcp_policy::metrics::MetricsObserver;
/// use tower_mcp_policy::observe::TracingObserver;
/// use tower_mcp_policy::{Policy, PolicyLayer};
///
/// // Install a recorder first (metrics-exporter-prometheus, say); without one the
/// // metrics are dropped.
/// let policy: Policy = r#"{ "version": "1", "default": "allow" }"#.parse()?;
/// let layer = PolicyLayer::new(policy).observer((TracingObserver, MetricsObserver));
/// # let _ = layer;
/// # Ok::<(), tower_mcp_policy::PolicyError>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsObserver;

impl MetricsObserver {
    /// Tells the installed recorder what each metric means (the `# HELP` lines of
    /// Prometheus text). Call it once, after installing the recorder.
    ///
    /// ```
    /// tower_mcp_policy::metrics::MetricsObserver::describe();
    /// ```
    pub fn describe() {
        describe_counter!(
            "mcp_policy_decisions_total",
            "Tool-call decisions and rejected requests, by decision, kind, tool, policy (and grant)"
        );
        describe_histogram!(
            "mcp_policy_decision_seconds",
            "Time from a request body read in full to its decision, counters included"
        );
        describe_counter!(
            "mcp_policy_store_errors_total",
            "Counter store failures (calls denied, or allowed uncounted when failing open)"
        );
        describe_counter!(
            "mcp_policy_lists_withheld_total",
            "Answers that may list tools, withheld because the layer could not read them"
        );
        describe_counter!(
            "mcp_policy_refunds_total",
            "Charges given back because the calls they paid for did not run"
        );
        describe_counter!(
            "mcp_policy_tool_drift_total",
            "Tool definitions listed that differ from their pin, or have none"
        );
        describe_counter!(
            "mcp_policy_approvals_total",
            "Calls that need a person's approval: requested, approved, declined, expired, used"
        );
        describe_counter!(
            "mcp_policy_reloads_total",
            "Policy, grants and pins reloads, by result"
        );
        describe_gauge!(
            "mcp_policy_counter_keys",
            "Counter buckets the store tracks"
        );
    }
}

impl Observer for MetricsObserver {
    fn observe(&self, event: &Event<'_>) {
        match event {
            Event::Call(call) => {
                let kind = call.decision.denial().map_or("none", |d| d.kind().as_str());
                let policy = match (call.candidate, call.enforced) {
                    (true, _) => "candidate",
                    (false, true) => "enforced",
                    // Monitor mode: reported, not enforced.
                    (false, false) => "monitor",
                };
                let tool = call.tool_label.to_owned();
                let decision = call.decision_label();
                match call.grant_name {
                    // Under a grants file, which grant: names come from the file.
                    Some(grant) => counter!(
                        "mcp_policy_decisions_total",
                        "decision" => decision,
                        "kind" => kind,
                        "tool" => tool,
                        "policy" => policy,
                        "grant" => grant.to_owned(),
                    )
                    .increment(1),
                    None => counter!(
                        "mcp_policy_decisions_total",
                        "decision" => decision,
                        "kind" => kind,
                        "tool" => tool,
                        "policy" => policy,
                    )
                    .increment(1),
                }
            }
            Event::Judged {
                latency,
                tracked_keys,
                ..
            } => {
                histogram!("mcp_policy_decision_seconds").record(latency.as_secs_f64());
                if let Some(keys) = tracked_keys {
                    gauge!("mcp_policy_counter_keys").set(*keys as f64);
                }
            }
            Event::Rejected { .. } => counter!(
                "mcp_policy_decisions_total",
                "decision" => "reject",
                "kind" => "protocol",
                "tool" => "none",
                "policy" => "enforced",
            )
            .increment(1),
            Event::Refund { charges } => {
                counter!("mcp_policy_refunds_total").increment(*charges as u64);
            }
            Event::StoreError { .. } => counter!("mcp_policy_store_errors_total").increment(1),
            Event::ListWithheld { .. } => {
                counter!("mcp_policy_lists_withheld_total").increment(1);
            }
            Event::ToolDrift { .. } => counter!("mcp_policy_tool_drift_total").increment(1),
            Event::Approval { step, .. } => {
                counter!("mcp_policy_approvals_total", "result" => step.to_string()).increment(1);
            }
            Event::Reload { result, .. } => {
                let result = if result.is_ok() { "ok" } else { "error" };
                counter!("mcp_policy_reloads_total", "result" => result).increment(1);
            }
        }
    }
}
