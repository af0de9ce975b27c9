//! Refunds: charges given back when the call they paid for did not run.
//!
//! A call did not run when the server answers it with a JSON-RPC **error** (a tool
//! result with `isError: true` ran, and is not refunded), or with an
//! `InputRequiredResult` (MCP 2026-07-28: it needs input first, and its retry is judged
//! and charged as any call), or when the server could not be reached: the inner service
//! failed, or answered 502, 503 or 504. Only those calls are refunded, once each, so
//! nobody gains quota this way. An answer the layer cannot read refunds nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use smallvec::SmallVec;

use crate::counter::Charge;
use crate::engine::PendingCharges;
use crate::jsonrpc::{Decoded, Id};
use crate::scope::ScopeValue;

use super::tasks::Owned;

/// What the server's answers change in the counter store: charges given back, and the
/// owners of the tasks it hands out (shared with the other replicas, when the store
/// shares state). The layer's engine, whatever its store.
pub(crate) trait Ledger: Send + Sync {
    fn refund(&self, charges: &[Charge]);
    /// `owner` got `task`, which lives `ttl`.
    fn share_task(&self, task: ScopeValue, owner: ScopeValue, ttl: Option<Duration>);
}

/// The charges a forwarded request paid, by the id of the call each paid for.
#[derive(Debug, Default)]
pub(crate) struct Charged {
    /// (the call's id, `None` for a notification; the charge)
    charges: SmallVec<[(Option<Id>, Charge); 2]>,
}

impl Charged {
    /// The charges of `pending`, which were applied, for the calls of `decoded`.
    pub fn new(pending: &PendingCharges<'_>, decoded: &Decoded<'_>) -> Charged {
        let ids: SmallVec<[Option<&Id>; 2]> = decoded
            .messages()
            .iter()
            .filter(|m| m.tool_call().is_some())
            .map(|m| m.id())
            .collect();
        Charged {
            charges: pending
                .charges_by_call()
                .map(|(call, charge)| (ids.get(call).copied().flatten().cloned(), *charge))
                .collect(),
        }
    }

    /// Gives every charge back (the server was not reached).
    pub fn refund_all(&mut self, ledger: &dyn Ledger) {
        let charges: SmallVec<[Charge; 4]> = self.charges.drain(..).map(|(_, c)| c).collect();
        if !charges.is_empty() {
            ledger.refund(&charges);
        }
    }

    /// Gives back the charges of every call that `message` (a JSON-RPC message or
    /// batch, as sent by the server) answers with an error.
    pub fn refund_errors(&mut self, message: &[u8], ledger: &dyn Ledger) {
        if self.charges.is_empty() || !(memchr_error(message) || input_required(message)) {
            return;
        }
        let Ok(message) = serde_json::from_slice::<Value>(message) else {
            return; // unreadable: refund nothing
        };
        let answers = match &message {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        let mut back: SmallVec<[Charge; 4]> = SmallVec::new();
        for answer in answers {
            // An error, or (MCP 2026-07-28) a request for input before the call can run:
            // the client retries with the answers, and that retry is judged and charged.
            let result = answer.get("result");
            let failed = match result {
                None => answer.get("error").is_some_and(Value::is_object),
                Some(result) => {
                    result.get("resultType").and_then(Value::as_str) == Some("input_required")
                }
            };
            let Some(id) = answer.get("id").filter(|_| failed) else {
                continue;
            };
            self.charges.retain(|(call, charge)| {
                let matches = call.as_ref().is_some_and(|call| same_id(call, id));
                if matches {
                    back.push(*charge);
                }
                !matches
            });
        }
        if !back.is_empty() {
            ledger.refund(&back);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.charges.is_empty()
    }
}

fn same_id(call: &Id, answer: &Value) -> bool {
    match (call, answer) {
        (Id::Number(a), Value::Number(b)) => a == b,
        (Id::String(a), Value::String(b)) => a == b,
        _ => false,
    }
}

/// A cheap test before parsing: an error answer mentions `"error"`.
fn memchr_error(data: &[u8]) -> bool {
    static ERROR: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"error\""));
    ERROR.find(data).is_some()
}

/// A cheap test before parsing: an `InputRequiredResult` names its `resultType`.
fn input_required(data: &[u8]) -> bool {
    static INPUT: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"input_required"));
    INPUT.find(data).is_some()
}

/// A cheap test before parsing: a task handle names its `taskId`.
fn mentions_task(data: &[u8]) -> bool {
    static TASK: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"taskId\""));
    TASK.find(data).is_some()
}

/// What a response body watches its messages for: the calls the server answers with
/// errors (their charges are refunded), and the tasks it hands out (bound to `bind`'s
/// grant). Each message is read before the client gets it.
pub(crate) struct Watch {
    pub charged: Charged,
    pub ledger: Arc<dyn Ledger>,
    pub bind: Option<Owned>,
    /// Keeps the approval the call ran on, for its next round, when the server asks
    /// for input instead of running it.
    pub keep: Option<Box<dyn FnOnce() + Send>>,
}

impl Watch {
    pub fn message(&mut self, data: &[u8]) {
        self.charged.refund_errors(data, &*self.ledger);
        if self.keep.is_some()
            && input_required(data)
            && let Ok(message) = serde_json::from_slice::<Value>(data)
            && message
                .pointer("/result/resultType")
                .and_then(Value::as_str)
                == Some("input_required")
            && let Some(keep) = self.keep.take()
        {
            keep();
        }
        if let Some(owned) = &self.bind
            && mentions_task(data)
            && let Ok(message) = serde_json::from_slice::<Value>(data)
        {
            // An answer the layer cannot read binds nothing: its tasks stay unreachable.
            let ledger = &*self.ledger;
            owned.bind(&message, &mut |task, ttl| {
                ledger.share_task(task, owned.grant, ttl)
            });
        }
    }
}
