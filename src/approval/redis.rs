//! Approvals shared by the replicas that share the counters: the requests waiting for
//! a person, the answers waiting for their call, and the spent approval states, all in
//! Redis, each operation one call of `redis.lua` (atomic). A call approved through
//! one replica's API runs through any replica, once; a state used at one replica is
//! spent for all. Expiry is on the Redis server's clock.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::FromRedisValue;
use serde_json::Value;

use super::{
    ApprovalStore, Ask, Asked, Change, Given, Later, MAX_WAITING, MAX_WAITING_PER_CALLER, Request,
    unix_now,
};
use crate::counter::{RedisCounters, Shared, StoreError};

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("redis.lua")));

/// The least time an approval operation is given: a person's click or a call that
/// waited for one can afford more than a charge's deadline.
const LEAST_DEADLINE: Duration = Duration::from_millis(500);

pub(crate) struct RedisApprovals {
    shared: Arc<Shared>,
    deadline: Duration,
}

impl RedisApprovals {
    /// The approvals of the replicas that share `counters`.
    pub(crate) fn of(counters: &RedisCounters) -> RedisApprovals {
        let (shared, deadline) = counters.shared();
        RedisApprovals { shared, deadline }
    }
}

impl std::fmt::Debug for RedisApprovals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisApprovals")
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisApprovals {
    /// Runs `op` with `args`: the requests that expired meanwhile, and its answer.
    fn run<T: FromRedisValue + Send + 'static>(
        &self,
        op: &'static str,
        args: Vec<String>,
    ) -> Later<(Vec<Change>, T)> {
        let shared = self.shared.clone();
        let deadline = self.deadline.max(LEAST_DEADLINE);
        Box::pin(async move {
            let mut invocation = SCRIPT.prepare_invoke();
            invocation.arg(op).arg(&*shared.prefix);
            for arg in &args {
                invocation.arg(arg);
            }
            let mut connection = shared.connection.clone();
            let answer = invocation.invoke_async::<(Vec<String>, T)>(&mut connection);
            let (expired, answer) = match tokio::time::timeout(deadline, answer).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(error)) => {
                    return Err(StoreError::new(format!(
                        "the approvals shared in Redis could not be read: {error}"
                    )));
                }
                Err(_) => {
                    return Err(StoreError::new(format!(
                        "the approvals shared in Redis did not answer within {deadline:?}"
                    )));
                }
            };
            let changes = expired
                .iter()
                .filter_map(|stored| Request::from_stored(stored, Duration::ZERO))
                .map(|request| Change::new(request, "expired", None))
                .collect();
            Ok((changes, answer))
        })
    }
}

/// An answer in Redis: `{"approved":..,"id":..,"by":..}`.
fn verdict(stored: &str) -> Option<(bool, Arc<str>, Arc<str>)> {
    let value: Value = serde_json::from_str(stored).ok()?;
    Some((
        value.get("approved")?.as_bool()?,
        value.get("id")?.as_str()?.into(),
        value.get("by")?.as_str()?.into(),
    ))
}

fn unreadable(what: &str) -> StoreError {
    StoreError::new(format!(
        "Redis answered an approvals {what} this layer cannot read"
    ))
}

impl ApprovalStore for RedisApprovals {
    fn ask(&self, calls: Vec<Ask>) -> Later<(Vec<Asked>, Vec<Change>)> {
        let now = Instant::now();
        let mut args = vec![MAX_WAITING_PER_CALLER.to_string(), MAX_WAITING.to_string()];
        for call in &calls {
            let id: Arc<str> = crate::approval::new_id().into();
            let request = call.request(id.clone(), now);
            args.extend([
                call.key.hex(),
                format!("{:032x}", call.owner.as_u128()),
                id.to_string(),
                (call.timeout.as_millis().max(1) as u64).to_string(),
                request.to_stored().to_string(),
            ]);
        }
        let run = self.run::<Vec<Vec<String>>>("ask", args);
        Box::pin(async move {
            let (mut changes, results) = run.await?;
            if results.len() != calls.len() {
                return Err(unreadable("answer"));
            }
            let mut asked = Vec::with_capacity(calls.len());
            for (call, result) in calls.iter().zip(results) {
                let field = |i: usize| result.get(i).ok_or_else(|| unreadable("answer"));
                let number = |i: usize| -> Result<u64, StoreError> {
                    field(i)?.parse().map_err(|_| unreadable("number"))
                };
                asked.push(match field(0)?.as_str() {
                    kind @ ("used" | "approved" | "declined") => {
                        let (approved, id, by) =
                            verdict(field(1)?).ok_or_else(|| unreadable("answer"))?;
                        if kind == "used" {
                            let request = call.request(id.clone(), now);
                            changes.push(Change::new(request, "used", Some(by.clone())));
                        }
                        match approved {
                            true => Asked::Approved { id, by },
                            false => Asked::Declined { id, by },
                        }
                    }
                    "pending" => Asked::Pending {
                        id: field(1)?.as_str().into(),
                        new: false,
                        expires_in: Duration::from_millis(number(2)?),
                    },
                    "new" => {
                        let id: Arc<str> = field(1)?.as_str().into();
                        let request = call.request(id.clone(), now);
                        changes.push(Change::new(request, "requested", None));
                        Asked::Pending {
                            id,
                            new: true,
                            expires_in: Duration::from_millis(number(2)?),
                        }
                    }
                    "full" => Asked::Full {
                        waiting: number(1)? as usize,
                    },
                    _ => return Err(unreadable("answer")),
                });
            }
            Ok((asked, changes))
        })
    }

    fn pending(&self) -> Later<(Vec<Value>, Vec<Change>)> {
        let run = self.run::<Vec<(String, i64)>>("pending", Vec::new());
        Box::pin(async move {
            let (changes, list) = run.await?;
            let now = Instant::now();
            let mut requests: Vec<Request> = list
                .iter()
                .filter_map(|(stored, left)| {
                    Request::from_stored(stored, Duration::from_millis((*left).max(0) as u64))
                })
                .collect();
            requests.sort_by_key(|request| (request.requested, request.id.clone()));
            let shown = requests.iter().map(|r| r.to_json(now)).collect();
            Ok((shown, changes))
        })
    }

    fn decide(&self, id: &str, by: &str, approved: bool) -> Later<(Option<Value>, Vec<Change>)> {
        let args = vec![id.to_owned(), by.to_owned(), u8::from(approved).to_string()];
        let run = self.run::<Option<(String, i64)>>("decide", args);
        let by: Arc<str> = by.into();
        Box::pin(async move {
            let (mut changes, decided) = run.await?;
            let Some((stored, left)) = decided else {
                return Ok((None, changes));
            };
            let left = Duration::from_millis(left.max(0) as u64);
            let request =
                Request::from_stored(&stored, left).ok_or_else(|| unreadable("request"))?;
            let shown = request.to_json(Instant::now());
            let step = if approved { "approved" } else { "declined" };
            changes.push(Change::new(request, step, Some(by)));
            Ok((Some(shown), changes))
        })
    }

    fn take(&self, call: &Ask) -> Later<(Option<Given>, Vec<Change>)> {
        let run = self.run::<Option<String>>("take", vec![call.key.hex()]);
        let call = call.clone();
        Box::pin(async move {
            let (mut changes, taken) = run.await?;
            let Some(raw) = taken else {
                return Ok((None, changes));
            };
            let (_, id, by) = verdict(&raw).ok_or_else(|| unreadable("answer"))?;
            let request = call.request(id.clone(), Instant::now());
            changes.push(Change::new(request, "used", Some(by.clone())));
            Ok((Some((id, by)), changes))
        })
    }

    fn keep(&self, call: &Ask, id: Arc<str>, by: Arc<str>) {
        let stored = serde_json::json!({"approved": true, "id": &*id, "by": &*by}).to_string();
        let ttl = (call.timeout.as_millis().max(1) as u64).to_string();
        let run = self.run::<i64>("keep", vec![call.key.hex(), stored, ttl]);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if let Err(error) = run.await {
                shared.report(error);
            }
        });
    }

    fn spend(&self, nonce: [u8; 16], expires: u64) -> Later<(bool, Vec<Change>)> {
        // Kept until the state could no longer open anyway (and at least a second).
        let left = expires.saturating_sub(unix_now()).max(1) * 1000;
        let args = vec![crate::pins::hex(&nonce), left.to_string()];
        let run = self.run::<i64>("spend", args);
        Box::pin(async move {
            let (changes, spent) = run.await?;
            Ok((spent == 1, changes))
        })
    }
}
