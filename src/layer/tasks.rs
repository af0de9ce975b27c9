//! Which grant owns each task the server handed out.
//!
//! A task id is a bearer token to a call's result: whoever presents it can read the
//! result, answer the task's questions or cancel it. So the layer binds every task id
//! it sees a server hand out to the grant whose request got it: a `CreateTaskResult`
//! (MCP 2026-07-28: `resultType: "task"` with a flat `taskId`; 2025-11-25:
//! `result.task.taskId`), or a task handle a server returns unprompted. A request about
//! a task (`tasks/get`, `tasks/result`, `tasks/update`, `tasks/cancel`) passes only for
//! that grant; for any other grant, and for an id no server handed out through this
//! layer, the layer answers as a server answers an unknown task, so nobody learns
//! whether an id exists. `tasks/list` answers keep only the caller's tasks.
//!
//! An entry lives as long as the task's `ttlMs` (a task without one, until the bound
//! forgets it) and the first grant to get an id keeps it: a later answer handing the
//! same id to another grant changes nothing. Memory is bounded as for sessions: past the
//! limit the oldest tasks are forgotten first, and become unreachable through the layer,
//! which is never looser.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::bounded::Bounded;
use crate::scope::{ScopeHasher, ScopeValue};

/// The default number of tasks remembered: about 8 MB.
pub(crate) const DEFAULT_MAX_TASKS: usize = 100_000;

#[derive(Debug)]
pub(crate) struct Tasks {
    owners: Bounded<Owner>,
}

#[derive(Debug, Clone, Copy)]
struct Owner {
    grant: ScopeValue,
    /// When the server may discard the task (`None`: no time to live).
    until: Option<Instant>,
}

impl Tasks {
    pub fn new(max: usize) -> Tasks {
        Tasks {
            owners: Bounded::new(max),
        }
    }

    /// The grant that owns `task`, when it is remembered and has not expired.
    pub fn owner(&self, task: ScopeValue) -> Option<ScopeValue> {
        let owner = self.owners.get(task)?;
        if owner.until.is_some_and(|until| until <= Instant::now()) {
            self.owners.remove(task);
            return None;
        }
        Some(owner.grant)
    }

    /// The server handed `task` to `grant`, to live `ttl` from now (`None`: no time to
    /// live). True when `grant` owns it now (it was new, expired, or already `grant`'s:
    /// its time to live is renewed); false when another grant owns it.
    pub fn record(&self, task: ScopeValue, grant: ScopeValue, ttl: Option<Duration>) -> bool {
        if self.owner(task).is_some_and(|owner| owner != grant) {
            return false;
        }
        let until = ttl.and_then(|ttl| Instant::now().checked_add(ttl));
        self.owners.insert(task, Owner { grant, until });
        true
    }
}

/// A task's time to live as an answer states it: `None` when the answer does not say
/// (a status update may leave it out), `Some(None)` when it has none (`null`).
pub(crate) type Stated = Option<Option<Duration>>;

/// Calls `found` with the id and time to live of every task handle in `message` (a
/// JSON-RPC message or batch from the server): a result that is a task (`taskId` at its
/// top, MCP 2026-07-28) or holds one (`task.taskId`, 2025-11-25).
pub(crate) fn handles(message: &Value, found: &mut impl FnMut(&str, Stated)) {
    match message {
        Value::Array(items) => items.iter().for_each(|item| handles(item, found)),
        Value::Object(object) => {
            let Some(result) = object.get("result").and_then(Value::as_object) else {
                return;
            };
            let task = match result.get("task") {
                Some(Value::Object(task)) => task,
                _ => result,
            };
            if let Some(Value::String(id)) = task.get("taskId") {
                let ttl = task
                    .get("ttlMs")
                    .or_else(|| task.get("ttl"))
                    .map(|ttl| ttl.as_u64().map(Duration::from_millis));
                found(id, ttl);
            }
        }
        _ => {}
    }
}

/// Removes from every `tasks/list` result in `message` the tasks `owns` says are not
/// the caller's (an entry without a string `taskId` cannot be checked, and goes too).
/// Returns how many were removed.
pub(crate) fn strip_foreign(message: &mut Value, owns: &impl Fn(&str) -> bool) -> usize {
    match message {
        Value::Array(items) => items.iter_mut().map(|m| strip_foreign(m, owns)).sum(),
        Value::Object(object) => {
            let Some(Value::Array(tasks)) = object
                .get_mut("result")
                .and_then(Value::as_object_mut)
                .and_then(|result| result.get_mut("tasks"))
            else {
                return 0;
            };
            let before = tasks.len();
            tasks.retain(|task| match task.get("taskId") {
                Some(Value::String(id)) => owns(id),
                _ => false,
            });
            before - tasks.len()
        }
        _ => 0,
    }
}

/// What the answers of one grant's request need to bind the tasks they hand out, and
/// to keep other grants' tasks out of its lists.
#[derive(Debug, Clone)]
pub(crate) struct Owned {
    pub grant: ScopeValue,
    pub tasks: std::sync::Arc<Tasks>,
    pub hasher: ScopeHasher,
}

impl Owned {
    /// True when `id` is a task of this grant.
    pub fn owns(&self, id: &str) -> bool {
        self.tasks.owner(self.hasher.task(id)) == Some(self.grant)
    }

    /// Binds the task handles in `message` to this grant (a handle of one of its tasks
    /// that states a time to live renews it); `share` is told each task bound (its hash
    /// and time to live), for the other replicas.
    pub fn bind(&self, message: &Value, share: &mut impl FnMut(ScopeValue, Option<Duration>)) {
        handles(message, &mut |id, stated| {
            let task = self.hasher.task(id);
            let ttl = match stated {
                Some(ttl) => ttl,
                // Silent on its time to live: a status update leaves it as it was.
                None if self.tasks.owner(task).is_some() => return,
                None => None,
            };
            if self.tasks.record(task, self.grant, ttl) {
                share(task, ttl);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn task_handles_of_both_revisions_are_found_with_their_time_to_live() {
        let mut seen = Vec::new();
        let message = json!([
            // MCP 2026-07-28: the result is the task.
            {"jsonrpc":"2.0","id":1,"result":{"resultType":"task","taskId":"a","status":"working","ttlMs":60000}},
            // 2025-11-25: the result holds it.
            {"jsonrpc":"2.0","id":2,"result":{"task":{"taskId":"b","status":"working","ttl":null}}},
            // A status that does not state its time to live.
            {"jsonrpc":"2.0","id":7,"result":{"resultType":"complete","taskId":"d","status":"completed"}},
            // Not handles: a plain result, an error, a request.
            {"jsonrpc":"2.0","id":3,"result":{"content":[]}},
            {"jsonrpc":"2.0","id":4,"error":{"code":1,"message":"taskId"}},
            {"jsonrpc":"2.0","id":5,"method":"x","params":{"taskId":"c"}},
            {"jsonrpc":"2.0","id":6,"result":{"taskId":7}},
        ]);
        handles(&message, &mut |id, ttl| seen.push((id.to_owned(), ttl)));
        assert_eq!(
            seen,
            [
                ("a".to_owned(), Some(Some(Duration::from_secs(60)))),
                ("b".to_owned(), Some(None)),
                ("d".to_owned(), None),
            ]
        );
    }

    #[test]
    fn the_first_grant_keeps_a_task_until_it_expires() {
        let h = ScopeHasher::with_key([2; 16]);
        let (a, b) = (h.credential(b"Bearer a"), h.credential(b"Bearer b"));
        let tasks = Tasks::new(10);
        let t = h.task("t");
        assert_eq!(tasks.owner(t), None);
        assert!(tasks.record(t, a, None));
        assert!(!tasks.record(t, b, None), "another grant cannot take it");
        assert_eq!(tasks.owner(t), Some(a));
        assert!(
            tasks.record(t, a, Some(Duration::ZERO)),
            "its owner renews it"
        );
        assert_eq!(tasks.owner(t), None, "expired");
        assert!(
            tasks.record(t, b, None),
            "an expired id can be handed out again"
        );
        assert_eq!(tasks.owner(t), Some(b));
    }

    #[test]
    fn lists_keep_only_the_callers_tasks() {
        let mut message = json!({"jsonrpc":"2.0","id":1,"result":{"tasks":[
            {"taskId":"mine"},{"taskId":"theirs"},{"taskId":3},{"status":"working"}
        ]}});
        let removed = strip_foreign(&mut message, &|id| id == "mine");
        assert_eq!(removed, 3);
        assert_eq!(message["result"]["tasks"], json!([{"taskId":"mine"}]));
    }
}
