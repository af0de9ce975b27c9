//! The events of judged calls: refused ones when they are judged, allowed ones once the
//! server has answered.

use std::sync::Arc;
use std::time::Instant;

use crate::decision::Decision;
use crate::jsonrpc::{self, Decoded, TraceParent};
use crate::observe::{ArgKeys, CallEvent, Event, Observer};
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
    trace: Option<TraceParent>,
    grant_name: Option<Arc<str>>,
}

/// Who made a request: its scope keys, its trace context, and its grant's name (under
/// a grants file).
pub(crate) type Who<'a> = (ScopeKeys, Option<TraceParent>, Option<&'a Arc<str>>);

/// The allowed calls of `decoded`, owned, for their events after the answer.
pub(crate) fn allowed_calls(
    decoded: &Decoded<'_>,
    (keys, trace, grant_name): Who<'_>,
) -> Vec<AllowedCall> {
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
            trace: message.trace().copied().or(trace),
            grant_name: grant_name.cloned(),
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
    static ALLOW: Decision = Decision::Allow;
    let latency = sent.elapsed();
    for call in calls {
        observer.observe(&Event::Call(CallEvent {
            decision: &ALLOW,
            enforced: true,
            tool: &call.tool,
            tool_label: policy.tool_label(&call.tool),
            method: TOOLS_CALL,
            jsonrpc_id: call.id.as_ref(),
            grant: call.keys.grant,
            grant_name: call.grant_name.as_deref(),
            session: call.keys.session,
            policy: policy.fingerprint(),
            candidate: false,
            upstream_status: status,
            upstream_latency: Some(latency),
            trace: call.trace.as_ref().map(TraceParent::as_str),
            arg_keys: ArgKeys::Owned(&call.arg_keys),
        }));
    }
}

/// One event per call of a refused request: `decisions` has one per call, in order.
/// `enforced` is false for a dry run (monitor mode, a candidate policy).
pub(crate) fn refused(
    observer: &dyn Observer,
    policy: &Policy,
    decoded: &Decoded<'_>,
    (keys, trace, grant_name): Who<'_>,
    decisions: &[Decision],
    enforced: bool,
    candidate: bool,
) {
    let calls = decoded
        .messages()
        .iter()
        .filter_map(|m| Some((m, m.tool_call()?)));
    for ((message, call), decision) in calls.zip(decisions) {
        observer.observe(&Event::Call(CallEvent {
            decision,
            enforced,
            tool: call.name(),
            tool_label: policy.tool_label(call.name()),
            method: TOOLS_CALL,
            jsonrpc_id: message.id(),
            grant: keys.grant,
            grant_name: grant_name.map(|name| &**name),
            session: keys.session,
            policy: policy.fingerprint(),
            candidate,
            upstream_status: None,
            upstream_latency: None,
            trace: message.trace().or(trace.as_ref()).map(TraceParent::as_str),
            arg_keys: ArgKeys::Args(call.arguments()),
        }));
    }
}
