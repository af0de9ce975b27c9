//! Approvals: a person approves one exact call before it runs (`require_approval`).
//!
//! A call a rule says needs approval, and that would otherwise run, is bound to a
//! [`CallKey`]: the digest of the caller's grant, the tool, the fingerprint of the
//! policy that asked, and the call's canonical arguments (keys sorted, numbers exactly
//! as the engine reads them, no whitespace). Without an approval for that key the call
//! is refused and a request for approval is recorded (one per key while it waits). A
//! person approves or declines the request by its id ([`PolicyHandle`]); the next call
//! with the same key then runs once (the approval is used up) or is told it was
//! declined. Requests and approvals expire after the rule's `timeout`.
//!
//! [`PolicyHandle`]: crate::PolicyHandle

use std::collections::HashMap;
use std::future::{Future, ready};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::counter::StoreError;
use crate::decision::Denial;
use crate::scope::ScopeValue;

#[cfg(feature = "redis")]
pub(crate) mod redis;
mod seal;
pub(crate) use seal::{Broken, INPUT_KEY, Seal, unix_now};

/// What an approval is bound to: one grant's call of one tool with exactly these
/// arguments, under one version of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CallKey([u8; 32]);

impl CallKey {
    pub(crate) fn new(grant: ScopeValue, tool: &str, policy: &str, arguments: &str) -> CallKey {
        let mut hash = Sha256::new();
        hash.update(grant.as_u128().to_be_bytes());
        // Each part with its length: no two different calls write the same bytes.
        for part in [tool, policy, arguments] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        CallKey(hash.finalize().into())
    }

    /// 64 hex digits, as a store shared by replicas names it.
    pub(crate) fn hex(&self) -> String {
        crate::pins::hex(&self.0)
    }
}

/// A call waiting for a person: the call asked about, under an id, since when and
/// until when.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub id: Arc<str>,
    pub call: Ask,
    pub requested: SystemTime,
    pub expires: Instant,
}

impl Request {
    /// The request as the approvals API shows it.
    pub(crate) fn to_json(&self, now: Instant) -> Value {
        let call = &self.call;
        let arguments: Value = serde_json::from_str(&call.arguments)
            .unwrap_or(Value::String(call.arguments.to_string()));
        json!({
            "id": &*self.id,
            "tool": &*call.tool,
            "arguments": arguments,
            "grant": call.grant.as_deref(),
            "reason": &*call.reason,
            "rule": &*call.rule,
            "requested_at": humantime::format_rfc3339_seconds(self.requested).to_string(),
            "expires_in_seconds": self.expires.saturating_duration_since(now).as_secs(),
        })
    }
}

impl Request {
    /// The request as a store shared by replicas keeps it (everything but when it
    /// expires, which the store keeps).
    pub(crate) fn to_stored(&self) -> Value {
        let requested = self
            .requested
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let call = &self.call;
        json!({
            "id": &*self.id,
            "key": call.key.hex(),
            "owner": format!("{:032x}", call.owner.as_u128()),
            "tool": &*call.tool,
            "arguments": &*call.arguments,
            "grant": call.grant.as_deref(),
            "reason": &*call.reason,
            "rule": &*call.rule,
            "timeout_ms": call.timeout.as_millis() as u64,
            "in_client": call.in_client,
            "requested_ms": requested,
        })
    }

    /// A request read back from a store shared by replicas, expiring in `left`.
    pub(crate) fn from_stored(stored: &str, left: Duration) -> Option<Request> {
        let value: Value = serde_json::from_str(stored).ok()?;
        let text = |name: &str| value.get(name).and_then(Value::as_str);
        let mut key = [0u8; 32];
        let hex = text("key")?;
        if hex.len() != 64 {
            return None;
        }
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        let call = Ask {
            key: CallKey(key),
            owner: ScopeValue::from_u128(u128::from_str_radix(text("owner")?, 16).ok()?),
            tool: text("tool")?.into(),
            arguments: text("arguments")?.into(),
            grant: text("grant").map(Arc::from),
            reason: text("reason")?.into(),
            rule: text("rule")?.into(),
            timeout: Duration::from_millis(value.get("timeout_ms")?.as_u64()?),
            in_client: value
                .get("in_client")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        };
        Some(Request {
            id: text("id")?.into(),
            call,
            requested: UNIX_EPOCH + Duration::from_millis(value.get("requested_ms")?.as_u64()?),
            expires: Instant::now() + left,
        })
    }
}

/// An approval given: its request's id, and who approved it.
pub(crate) type Given = (Arc<str>, Arc<str>);

/// What a store answers, later: a store shared by replicas is asked over the network
/// (an error refuses the call, fail closed); this process's answers at once.
pub(crate) type Later<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// Where the requests, the answers and the spent nonces live: this process
/// ([`Approvals`]) or a store the replicas share, so that a call approved through one
/// replica runs through any other, once. Every method returns what changed, for events.
pub(crate) trait ApprovalStore: Send + Sync + std::fmt::Debug {
    /// See [`Approvals::ask`].
    fn ask(&self, calls: Vec<Ask>) -> Later<(Vec<Asked>, Vec<Change>)>;
    /// See [`Approvals::pending`].
    fn pending(&self) -> Later<(Vec<Value>, Vec<Change>)>;
    /// See [`Approvals::decide`].
    fn decide(&self, id: &str, by: &str, approved: bool) -> Later<(Option<Value>, Vec<Change>)>;
    /// See [`Approvals::spend`].
    fn spend(&self, nonce: [u8; 16], expires: u64) -> Later<(bool, Vec<Change>)>;
    /// See [`Approvals::take`].
    fn take(&self, call: &Ask) -> Later<(Option<Given>, Vec<Change>)>;
    /// See [`Approvals::keep`]. Never awaited: a store that must reach a server does
    /// so in the background.
    fn keep(&self, call: &Ask, id: Arc<str>, by: Arc<str>);
}

impl ApprovalStore for Approvals {
    fn ask(&self, calls: Vec<Ask>) -> Later<(Vec<Asked>, Vec<Change>)> {
        let mut changes = Vec::new();
        let asked = Approvals::ask(self, &calls, &mut changes);
        Box::pin(ready(Ok((asked, changes))))
    }

    fn pending(&self) -> Later<(Vec<Value>, Vec<Change>)> {
        let mut changes = Vec::new();
        let pending = Approvals::pending(self, &mut changes);
        Box::pin(ready(Ok((pending, changes))))
    }

    fn decide(&self, id: &str, by: &str, approved: bool) -> Later<(Option<Value>, Vec<Change>)> {
        let mut changes = Vec::new();
        let decided = Approvals::decide(self, id, by, approved, &mut changes);
        Box::pin(ready(Ok((decided, changes))))
    }

    fn spend(&self, nonce: [u8; 16], expires: u64) -> Later<(bool, Vec<Change>)> {
        Box::pin(ready(Ok((
            Approvals::spend(self, nonce, expires),
            Vec::new(),
        ))))
    }

    fn take(&self, call: &Ask) -> Later<(Option<Given>, Vec<Change>)> {
        let mut changes = Vec::new();
        let taken = Approvals::take(self, call, &mut changes);
        Box::pin(ready(Ok((taken, changes))))
    }

    fn keep(&self, call: &Ask, id: Arc<str>, by: Arc<str>) {
        Approvals::keep(self, call, id, by);
    }
}

/// A person's answer, waiting for the call to come again.
#[derive(Debug, Clone)]
struct Verdict {
    id: Arc<str>,
    by: Arc<str>,
    approved: bool,
    expires: Instant,
}

/// What became of a call that needs approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Asked {
    /// Approved by `by`: the call runs (the approval is used up).
    Approved { id: Arc<str>, by: Arc<str> },
    /// Declined by `by`: the call is refused; the next one asks again.
    Declined { id: Arc<str>, by: Arc<str> },
    /// Waiting for a person (`new`: the request was recorded by this call).
    Pending {
        id: Arc<str>,
        new: bool,
        expires_in: Duration,
    },
    /// Not recorded: the caller already has `waiting` requests waiting for a person (or
    /// the layer has as many as it keeps).
    Full { waiting: usize },
}

/// How many requests one caller may have waiting for a person: an agent in a loop, or
/// one told to, cannot bury the operators (each distinct call would be one more).
pub(crate) const MAX_WAITING_PER_CALLER: usize = 20;
/// How many requests the layer keeps waiting, all callers together.
pub(crate) const MAX_WAITING: usize = 10_000;

impl Asked {
    /// The denial of a call that cannot run yet, from the rule's own (`base`).
    pub(crate) fn denial(&self, base: Denial) -> Denial {
        let text = match self {
            Asked::Approved { .. } => return base,
            Asked::Declined { id, by } => format!(
                "{} {by} declined approval {id}; calling again asks for a new approval.",
                base.message()
            ),
            Asked::Full { waiting } => format!(
                "{} {waiting} calls already wait for a person's approval, so this one was not recorded; call again once they are answered or have expired.",
                base.message()
            ),
            Asked::Pending { id, expires_in, .. } => format!(
                "{} Approval {id} is pending: once a person approves it, call again with exactly the same arguments and the call runs once. The request expires in {}.",
                base.message(),
                humantime::format_duration(Duration::from_secs(expires_in.as_secs().max(1)))
            ),
        };
        let mut denial = base.with_message(text);
        denial.approval = match self {
            Asked::Declined { id, .. } | Asked::Pending { id, .. } => Some(id.clone()),
            Asked::Approved { .. } | Asked::Full { .. } => None,
        };
        denial
    }
}

/// One call to ask about, in a request.
#[derive(Debug, Clone)]
pub(crate) struct Ask {
    pub key: CallKey,
    /// The caller's grant (hashed), whose waiting requests are bounded.
    pub owner: ScopeValue,
    pub tool: Box<str>,
    /// The canonical arguments (JSON).
    pub arguments: Box<str>,
    /// The caller's grant by name, under a grants file.
    pub grant: Option<Arc<str>>,
    /// What the person reads.
    pub reason: Box<str>,
    /// The rule that asked (`/tools/transfer/require_approval`).
    pub rule: Box<str>,
    /// How long the request waits, and how long an answer stays usable.
    pub timeout: Duration,
    /// The client's own user may approve it (the rule's `ask_in_client`).
    pub in_client: bool,
}

/// The requests and verdicts of one layer (shared by every service it makes).
#[derive(Debug, Default)]
pub(crate) struct Approvals {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Waiting for a person, by id.
    pending: HashMap<Arc<str>, Request>,
    /// The id of the request waiting for each call.
    by_call: HashMap<CallKey, Arc<str>>,
    /// How many requests each caller has waiting.
    per_owner: HashMap<ScopeValue, usize>,
    /// Answers waiting for the call's retry.
    decided: HashMap<CallKey, Verdict>,
    /// The nonces of the approval states already used in the client, until they
    /// expire (a state cannot be used twice).
    spent: HashMap<[u8; 16], Instant>,
}

/// What happened to a request, for events.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub request: Request,
    /// `requested`, `approved`, `declined`, `expired`, `used`.
    pub step: &'static str,
    pub by: Option<Arc<str>>,
}

impl Change {
    pub(crate) fn new(request: Request, step: &'static str, by: Option<Arc<str>>) -> Change {
        Change { request, step, by }
    }
}

impl Approvals {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks about every call of a request at once: either all are approved (and
    /// their approvals used up), or none is used and each call not approved gets a
    /// pending request (or is told it was declined). `changes` gets what happened.
    pub(crate) fn ask(&self, calls: &[Ask], changes: &mut Vec<Change>) -> Vec<Asked> {
        let now = Instant::now();
        let mut state = self.lock();
        state.expire(now, changes);
        let approved = |state: &State, call: &Ask| {
            state
                .decided
                .get(&call.key)
                .is_some_and(|verdict| verdict.approved)
        };
        if calls.iter().all(|call| approved(&state, call)) {
            return calls
                .iter()
                .map(|call| {
                    let verdict = state.decided.remove(&call.key).expect("checked");
                    changes.push(Change {
                        request: call.request(verdict.id.clone(), now),
                        step: "used",
                        by: Some(verdict.by.clone()),
                    });
                    Asked::Approved {
                        id: verdict.id,
                        by: verdict.by,
                    }
                })
                .collect();
        }
        calls
            .iter()
            .map(|call| {
                if let Some(verdict) = state.decided.get(&call.key) {
                    if verdict.approved {
                        // Kept for when the whole request can run.
                        return Asked::Approved {
                            id: verdict.id.clone(),
                            by: verdict.by.clone(),
                        };
                    }
                    let verdict = state.decided.remove(&call.key).expect("just found");
                    return Asked::Declined {
                        id: verdict.id,
                        by: verdict.by,
                    };
                }
                if let Some(id) = state.by_call.get(&call.key) {
                    let expires = state.pending[id].expires;
                    return Asked::Pending {
                        id: id.clone(),
                        new: false,
                        expires_in: expires.saturating_duration_since(now),
                    };
                }
                let waiting = state.per_owner.get(&call.owner).copied().unwrap_or(0);
                if waiting >= MAX_WAITING_PER_CALLER || state.pending.len() >= MAX_WAITING {
                    return Asked::Full {
                        waiting: waiting.max(state.pending.len().min(MAX_WAITING)),
                    };
                }
                let id: Arc<str> = new_id().into();
                let request = call.request(id.clone(), now);
                state.by_call.insert(call.key, id.clone());
                *state.per_owner.entry(call.owner).or_default() += 1;
                state.pending.insert(id.clone(), request.clone());
                changes.push(Change {
                    request,
                    step: "requested",
                    by: None,
                });
                Asked::Pending {
                    id,
                    new: true,
                    expires_in: call.timeout,
                }
            })
            .collect()
    }

    /// The requests waiting for a person, oldest first.
    pub(crate) fn pending(&self, changes: &mut Vec<Change>) -> Vec<Value> {
        let now = Instant::now();
        let mut state = self.lock();
        state.expire(now, changes);
        let mut requests: Vec<&Request> = state.pending.values().collect();
        requests.sort_by_key(|request| (request.requested, request.id.clone()));
        requests
            .iter()
            .map(|request| request.to_json(now))
            .collect()
    }

    /// `by` approves (or declines) the request `id`: the next call it names runs once
    /// (or is refused). `None`: no request waits with that id (never made, expired, or
    /// already answered).
    pub(crate) fn decide(
        &self,
        id: &str,
        by: &str,
        approved: bool,
        changes: &mut Vec<Change>,
    ) -> Option<Value> {
        let now = Instant::now();
        let mut state = self.lock();
        state.expire(now, changes);
        let request = state.remove(id)?;
        let by: Arc<str> = by.into();
        state.decided.insert(
            request.call.key,
            Verdict {
                id: request.id.clone(),
                by: by.clone(),
                approved,
                // An answer is good for as long as the request could wait.
                expires: now + request.call.timeout,
            },
        );
        let shown = request.to_json(now);
        changes.push(Change {
            request,
            step: if approved { "approved" } else { "declined" },
            by: Some(by),
        });
        Some(shown)
    }
}

impl Approvals {
    /// Takes the approval given for `call` (by an operator, or kept for its next round),
    /// if there is one: `(id, by)`, used up. Nothing is recorded otherwise.
    pub(crate) fn take(&self, call: &Ask, changes: &mut Vec<Change>) -> Option<Given> {
        let now = Instant::now();
        let mut state = self.lock();
        state.expire(now, changes);
        if !state.decided.get(&call.key)?.approved {
            return None;
        }
        let verdict = state.decided.remove(&call.key).expect("just found");
        changes.push(Change::new(
            call.request(verdict.id.clone(), now),
            "used",
            Some(verdict.by.clone()),
        ));
        Some((verdict.id, verdict.by))
    }

    /// The approved `call` (request `id`, approved by `by`) did not run: the server
    /// asked for input first (MCP 2026-07-28). Its approval is kept, for the rule's
    /// timeout, for the call's next round, which carries the server's state rather
    /// than the layer's.
    pub(crate) fn keep(&self, call: &Ask, id: Arc<str>, by: Arc<str>) {
        let expires = Instant::now() + call.timeout;
        let verdict = Verdict {
            id,
            by,
            approved: true,
            expires,
        };
        self.lock().decided.insert(call.key, verdict);
    }

    /// Spends the nonce of an approval state that opened (good until `expires`, Unix
    /// seconds): `false` if it was spent already (the state is being replayed).
    pub(crate) fn spend(&self, nonce: [u8; 16], expires: u64) -> bool {
        let now = Instant::now();
        let left = Duration::from_secs(expires.saturating_sub(unix_now()));
        let mut state = self.lock();
        state.spent.retain(|_, expires| *expires > now);
        if state.spent.contains_key(&nonce) {
            return false;
        }
        state.spent.insert(nonce, now + left);
        true
    }
}

impl State {
    /// Takes the waiting request `id` out of every index.
    fn remove(&mut self, id: &str) -> Option<Request> {
        let request = self.pending.remove(id)?;
        self.by_call.remove(&request.call.key);
        if let Some(count) = self.per_owner.get_mut(&request.call.owner) {
            *count -= 1;
            if *count == 0 {
                self.per_owner.remove(&request.call.owner);
            }
        }
        Some(request)
    }

    /// Drops what has expired; expired requests are reported.
    fn expire(&mut self, now: Instant, changes: &mut Vec<Change>) {
        self.decided.retain(|_, verdict| verdict.expires > now);
        self.spent.retain(|_, expires| *expires > now);
        let expired: Vec<Arc<str>> = self
            .pending
            .values()
            .filter(|request| request.expires <= now)
            .map(|request| request.id.clone())
            .collect();
        for id in expired {
            let request = self.remove(&id).expect("listed");
            changes.push(Change {
                request,
                step: "expired",
                by: None,
            });
        }
    }
}

impl Ask {
    /// The denial of this call while it waits, from its rule.
    pub(crate) fn base(&self) -> Denial {
        Denial::new(
            crate::decision::DenialKind::Approval,
            &self.tool,
            &self.rule,
            self.reason.to_string(),
        )
    }

    /// The request for this call under `id`, as events and the API show it.
    pub(crate) fn request(&self, id: Arc<str>, now: Instant) -> Request {
        Request {
            id,
            call: self.clone(),
            requested: SystemTime::now(),
            expires: now + self.timeout,
        }
    }
}

/// Reports each change as an [`Event::Approval`](crate::observe::Event::Approval).
pub(crate) fn report(observer: &dyn crate::observe::Observer, changes: &[Change]) {
    for change in changes {
        observer.observe(&crate::observe::Event::Approval {
            step: change.step,
            id: &change.request.id,
            tool: &change.request.call.tool,
            grant: change.request.call.grant.as_deref(),
            by: change.by.as_deref(),
            arguments: &change.request.call.arguments,
            reason: &change.request.call.reason,
        });
    }
}

/// 32 random hex digits.
pub(crate) fn new_id() -> String {
    let key = crate::scope::random_key();
    crate::pins::hex(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(arguments: &str) -> Ask {
        Ask {
            key: CallKey::new(ScopeValue::from_u128(7), "transfer", "policy-1", arguments),
            owner: ScopeValue::from_u128(7),
            tool: "transfer".into(),
            arguments: arguments.into(),
            grant: Some("alice".into()),
            reason: "Transfers need a person.".into(),
            rule: "/tools/transfer/require_approval".into(),
            timeout: Duration::from_secs(600),
            in_client: true,
        }
    }

    fn pending_id(asked: &Asked) -> Arc<str> {
        match asked {
            Asked::Pending { id, .. } => id.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_approval_covers_exactly_one_call_once() {
        let approvals = Approvals::default();
        let mut changes = Vec::new();
        let first = approvals.ask(&[ask(r#"{"amount":500}"#)], &mut changes);
        let id = pending_id(&first[0]);
        // Asking again while it waits names the same request.
        let again = approvals.ask(&[ask(r#"{"amount":500}"#)], &mut changes);
        assert_eq!(pending_id(&again[0]), id);
        assert_eq!(approvals.pending(&mut changes).len(), 1);

        assert!(approvals.decide(&id, "ops", true, &mut changes).is_some());
        assert!(approvals.pending(&mut changes).is_empty());
        // Another argument is another call: it asks anew.
        let other = approvals.ask(&[ask(r#"{"amount":501}"#)], &mut changes);
        assert_ne!(pending_id(&other[0]), id);
        // The approved call runs once, then asks again.
        let used = approvals.ask(&[ask(r#"{"amount":500}"#)], &mut changes);
        assert_eq!(
            used,
            vec![Asked::Approved {
                id: id.clone(),
                by: "ops".into()
            }]
        );
        let after = approvals.ask(&[ask(r#"{"amount":500}"#)], &mut changes);
        assert_ne!(pending_id(&after[0]), id);
        let steps: Vec<&str> = changes.iter().map(|c| c.step).collect();
        assert_eq!(
            steps,
            ["requested", "approved", "requested", "used", "requested"]
        );
    }

    #[test]
    fn a_declined_call_is_told_once_then_asks_again() {
        let approvals = Approvals::default();
        let mut changes = Vec::new();
        let id = pending_id(&approvals.ask(&[ask("{}")], &mut changes)[0]);
        approvals.decide(&id, "ops", false, &mut changes).unwrap();
        // Answered requests are no longer there to answer.
        assert!(approvals.decide(&id, "ops", true, &mut changes).is_none());
        let told = approvals.ask(&[ask("{}")], &mut changes);
        assert_eq!(
            told,
            vec![Asked::Declined {
                id: id.clone(),
                by: "ops".into()
            }]
        );
        let again = approvals.ask(&[ask("{}")], &mut changes);
        assert_ne!(pending_id(&again[0]), id);
    }

    #[test]
    fn a_batch_uses_its_approvals_only_when_every_call_has_one() {
        let approvals = Approvals::default();
        let mut changes = Vec::new();
        let a = pending_id(&approvals.ask(&[ask(r#"{"a":1}"#)], &mut changes)[0]);
        approvals.decide(&a, "ops", true, &mut changes).unwrap();
        let batch = [ask(r#"{"a":1}"#), ask(r#"{"b":2}"#)];
        let asked = approvals.ask(&batch, &mut changes);
        assert!(matches!(asked[0], Asked::Approved { .. }));
        let b = pending_id(&asked[1]);
        // Not used: the first call's approval is still there.
        approvals.decide(&b, "ops", true, &mut changes).unwrap();
        let asked = approvals.ask(&batch, &mut changes);
        assert!(asked.iter().all(|a| matches!(a, Asked::Approved { .. })));
        let asked = approvals.ask(&batch, &mut changes);
        assert!(asked.iter().all(|a| matches!(a, Asked::Pending { .. })));
    }

    #[test]
    fn requests_and_approvals_expire() {
        let approvals = Approvals::default();
        let mut changes = Vec::new();
        let mut short = ask("{}");
        short.timeout = Duration::from_millis(30);
        let id = pending_id(&approvals.ask(std::slice::from_ref(&short), &mut changes)[0]);
        std::thread::sleep(Duration::from_millis(40));
        assert!(approvals.decide(&id, "ops", true, &mut changes).is_none());
        assert_eq!(changes.last().unwrap().step, "expired");

        let id = pending_id(&approvals.ask(std::slice::from_ref(&short), &mut changes)[0]);
        approvals.decide(&id, "ops", true, &mut changes).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        let asked = approvals.ask(std::slice::from_ref(&short), &mut changes);
        assert_ne!(pending_id(&asked[0]), id);
    }

    #[test]
    fn a_caller_cannot_keep_more_than_its_share_of_requests_waiting() {
        let approvals = Approvals::default();
        let mut changes = Vec::new();
        let mut first = None;
        for i in 0..MAX_WAITING_PER_CALLER {
            let asked = approvals.ask(&[ask(&format!("{{\"n\":{i}}}"))], &mut changes);
            first.get_or_insert_with(|| pending_id(&asked[0]));
        }
        let full = approvals.ask(&[ask(r#"{"n":"one more"}"#)], &mut changes);
        assert_eq!(
            full,
            vec![Asked::Full {
                waiting: MAX_WAITING_PER_CALLER
            }]
        );
        // Another caller still can.
        let mut other = ask("{}");
        other.owner = ScopeValue::from_u128(8);
        assert!(matches!(
            approvals.ask(&[other], &mut changes)[0],
            Asked::Pending { .. }
        ));
        // An answered request makes room.
        approvals
            .decide(&first.unwrap(), "ops", false, &mut changes)
            .unwrap();
        let room = approvals.ask(&[ask(r#"{"n":"one more"}"#)], &mut changes);
        assert!(matches!(room[0], Asked::Pending { new: true, .. }));
    }

    #[test]
    fn the_key_binds_grant_tool_policy_and_arguments() {
        let grant = ScopeValue::from_u128(1);
        let base = CallKey::new(grant, "t", "p", "{}");
        assert_eq!(base, CallKey::new(grant, "t", "p", "{}"));
        assert_ne!(base, CallKey::new(ScopeValue::from_u128(2), "t", "p", "{}"));
        assert_ne!(base, CallKey::new(grant, "u", "p", "{}"));
        assert_ne!(base, CallKey::new(grant, "t", "q", "{}"));
        assert_ne!(base, CallKey::new(grant, "t", "p", "{ }"));
        // Lengths keep the parts apart.
        assert_ne!(
            CallKey::new(grant, "ab", "c", "{}"),
            CallKey::new(grant, "a", "bc", "{}")
        );
    }
}
