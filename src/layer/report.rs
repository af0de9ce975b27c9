//! The events of judged calls: refused ones when they are judged, allowed ones once the
//! server has answered.

use std::time::Instant;

use crate::engine::{Refusal, Verdict};
use crate::jsonrpc::{self, Decoded};
use crate::observe::{ArgKeys, CallDecision, CallEvent, Event, Observer, Upstream};
use crate::policy::Policy;
use crate::scope::ScopeKeys;
use crate::value::ArgValue;

const TOOLS_CALL: &str = "tools/call";

/// What an allowed call's event needs once the server has answered.
#[derive(Debug)]
pub(crate) struct AllowedCall {
    tool: Box<str>,
    id: Option<jsonrpc::Id>,
    arg_keys: Box<[Box<str>]>,
    keys: ScopeKeys,
}

/// The allowed calls of `decoded`, owned, for their events after the answer.
pub(crate) fn allowed_calls(decoded: &Decoded<'_>, keys: ScopeKeys) -> Vec<AllowedCall> {
    decoded
        .messages()
        .iter()
        .filter_map(|m| Some((m, m.tool_call()?)))
        .map(|(message, call)| AllowedCall {
            tool: call.name().into(),
            id: message.id().cloned(),
            arg_keys: call
                .arguments()
                .and_then(ArgValue::as_object)
                .into_iter()
                .flat_map(|m| m.keys())
                .map(|k| Box::from(k.as_str()))
                .collect(),
            keys,
        })
        .collect()
}

/// One event per allowed call, with the server's answer (`None`: the inner service
/// failed).
pub(crate) fn allowed(
    observer: &dyn Observer,
    policy: &Policy,
    calls: &[AllowedCall],
    sent: Instant,
    status: Option<u16>,
) {
    let upstream = Upstream {
        status,
        latency: sent.elapsed(),
    };
    for call in calls {
        observer.observe(&Event::Call(CallEvent {
            decision: CallDecision::Allow,
            tool: &call.tool,
            tool_label: policy.tool_label(&call.tool),
            method: TOOLS_CALL,
            jsonrpc_id: call.id.as_ref(),
            grant: call.keys.grant,
            session: call.keys.session,
            policy: policy.fingerprint(),
            candidate: false,
            denial: None,
            upstream: Some(upstream),
            arg_keys: ArgKeys::Owned(&call.arg_keys),
        }));
    }
}

/// One event per refused call of `verdict` (nothing for `Forward`).
pub(crate) fn refusals(
    observer: &dyn Observer,
    policy: &Policy,
    decoded: &Decoded<'_>,
    keys: ScopeKeys,
    verdict: &Verdict,
    monitor: bool,
    candidate: bool,
) {
    let Verdict::Refuse(refusals) = verdict else {
        return;
    };
    let calls = decoded
        .messages()
        .iter()
        .filter_map(|m| Some((m, m.tool_call()?)));
    for ((message, call), refusal) in calls.zip(refusals) {
        let (decision, denial) = match (refusal, monitor) {
            (Refusal::Denied(denial), false) => (CallDecision::Deny, Some(denial)),
            (Refusal::Denied(denial), true) => (CallDecision::WouldDeny, Some(denial)),
            (Refusal::NotExecuted, false) => (CallDecision::NotExecuted, None),
            (Refusal::NotExecuted, true) => (CallDecision::WouldNotExecute, None),
        };
        observer.observe(&Event::Call(CallEvent {
            decision,
            tool: call.name(),
            tool_label: policy.tool_label(call.name()),
            method: TOOLS_CALL,
            jsonrpc_id: message.id(),
            grant: keys.grant,
            session: keys.session,
            policy: policy.fingerprint(),
            candidate,
            denial,
            upstream: None,
            arg_keys: ArgKeys::Args(call.arguments()),
        }));
    }
}
