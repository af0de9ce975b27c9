//! Counters in Redis or Valkey, shared by every replica (feature `redis`).
//!
//! `mod.rs` holds the public types and the requests' side; `conn.rs` the connection and
//! the shared hashing secret, `worker.rs` the task that batches requests into script
//! calls, `wire.rs` what a call and its reply look like on the wire, `breaker.rs` the
//! back-off after failures, and `gcra.lua` the script.

mod breaker;
mod conn;
mod wire;
mod worker;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{Charge, ChargeError, CounterStore, StoreError};
use crate::scope::{ScopeHasher, ScopeValue};
use breaker::Admit;
pub(crate) use conn::Shared;
use wire::{Answer, Mode};
use worker::{Job, QUEUE, Waiter, queue_error};

/// Counters kept in Redis (or Valkey), so replicas behind a load balancer share one
/// budget per grant and a restart forgets nothing.
///
/// * One multiplexed connection, shared by every request and reconnecting by itself.
/// * At most one round trip per request: all the charges of a request (or of a whole
///   batch) go to Redis in one script call (`EVALSHA`, reloaded on `NOSCRIPT`), applied
///   atomically: every charge or none. One call is out at a time; requests that ask
///   meanwhile share the next one (up to 256 requests per call), each still applied
///   all or nothing on its own, so under load Redis runs far fewer, larger calls.
/// * The same GCRA as [`MemoryCounters`](super::MemoryCounters) (a burst of `max`,
///   refilled at `max` per `window`, the same retry hint), on the Redis server's clock,
///   so replicas whose clocks differ agree. One small value per key; every key expires
///   at least a second after its bucket has refilled and at most 1.25 windows + 1 s
///   after its last use (needs Redis 6.0 or later, or Valkey: `SET .. KEEPTTL`).
/// * Keys are `prefix` + the counter's [`CounterId`](super::CounterId) + the keyed hash
///   of the scope value: no credential or session id is ever written in clear.
/// * Replicas hash credentials with one secret key, created in Redis on first use
///   (`SET NX`) and read by every replica; the layer takes it from the store.
/// * Every charge has a deadline (default 100 ms), counted from the moment the request
///   asks. While Redis is down no request waits longer; a request whose deadline passed
///   while it waited is answered without being charged. After a failure the store backs off (100 ms doubling to 5 s, failing fast
///   meanwhile), then lets one request probe. Counting resumes by itself.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_mcp_policy::{Engine, Policy, PolicyLayer, counter::RedisCounters};
///
/// let counters = RedisCounters::builder("redis://127.0.0.1:6379/").connect().await?;
/// let policy = Policy::from_file("policy.json")?;
/// let layer = PolicyLayer::from_engine(Engine::with_counters(policy, counters));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisCounters {
    inner: Arc<Inner>,
}

struct Inner {
    /// Requests' charges, on their way to the worker that sends them to Redis.
    queue: mpsc::Sender<Job>,
    prefix: Arc<str>,
    deadline: Duration,
    fail_open: bool,
    hasher: ScopeHasher,
    shared: Arc<Shared>,
}

impl fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCounters")
            .field("prefix", &self.inner.prefix)
            .field("deadline", &self.inner.deadline)
            .field("fail_open", &self.inner.fail_open)
            .finish_non_exhaustive()
    }
}

/// Options for [`RedisCounters`]; see [`RedisCounters::builder`].
///
/// ```no_run
/// # async fn run() -> Result<(), redis::RedisError> {
/// use std::time::Duration;
/// use tower_mcp_policy::counter::RedisCounters;
///
/// let counters = RedisCounters::builder("redis://redis.internal:6379/")
///     .prefix("payments-mcp:")
///     .deadline(Duration::from_millis(50))
///     .fail_open() // keep serving, uncounted, while Redis is down
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisCountersBuilder {
    url: String,
    prefix: String,
    deadline: Duration,
    fail_open: bool,
}

impl RedisCountersBuilder {
    /// The prefix of every key (default [`RedisCounters::DEFAULT_PREFIX`]).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one charge may take (default [`RedisCounters::DEFAULT_DEADLINE`]).
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// While Redis is unreachable, lets calls that need a counter run uncounted
    /// ([`ChargeError::Uncounted`]: the layer reports a store error and allows them)
    /// instead of denying them, which is the default ("fail closed": denied with
    /// "Rate-limit state is unavailable, the call was not run; try again in Ns").
    /// Calls with no limit pass either way.
    #[must_use]
    pub fn fail_open(mut self) -> Self {
        self.fail_open = true;
        self
    }

    /// Connects (Redis must be reachable now), and reads or creates the secret key
    /// that every replica hashes credentials with.
    pub async fn connect(self) -> Result<RedisCounters, redis::RedisError> {
        let prefix: Arc<str> = self.prefix.into();
        let (shared, key) = Shared::connect(&self.url, prefix.clone(), self.deadline).await?;
        let shared = Arc::new(shared);
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(worker::work(jobs, shared.clone(), self.deadline));
        Ok(RedisCounters {
            inner: Arc::new(Inner {
                queue,
                prefix,
                deadline: self.deadline,
                fail_open: self.fail_open,
                hasher: ScopeHasher::with_key(key),
                shared,
            }),
        })
    }
}

/// How long a session shared with the other replicas is remembered without another
/// `initialize` issuing it.
const SESSION_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How long the owner of a task without a time to live is shared.
const TASK_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How long a replica that does not find a task waits before it asks once more: the
/// replica that saw the task handed out shares it as its answer goes to the client, so
/// the client's next request can overtake the write by a little.
const TASK_RECHECK: Duration = Duration::from_millis(50);

/// Binds a task to an owner unless another owner has it (the first keeps it); the
/// owner's own renewal sets the new time to live.
const BIND_TASK: &str = r#"
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

impl RedisCounters {
    /// The connection every replica's state goes through, and the deadline of one
    /// call (what the approvals shared in Redis use too: `approval/redis.rs`).
    pub(crate) fn shared(&self) -> (Arc<Shared>, Duration) {
        (self.inner.shared.clone(), self.inner.deadline)
    }

    /// The default prefix of every key the store writes.
    pub const DEFAULT_PREFIX: &'static str = "mcp-policy:";
    /// The default deadline of one charge.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(100);

    /// Options for a store at `url` (`redis://host:port/db`, `rediss://` for TLS,
    /// `redis+unix:///path`).
    pub fn builder(url: impl Into<String>) -> RedisCountersBuilder {
        RedisCountersBuilder {
            url: url.into(),
            prefix: RedisCounters::DEFAULT_PREFIX.to_owned(),
            deadline: RedisCounters::DEFAULT_DEADLINE,
            fail_open: false,
        }
    }

    /// The Redis key of a charge's bucket (for tests that inspect Redis). Unstable.
    #[doc(hidden)]
    pub fn key_of(&self, charge: &Charge) -> String {
        wire::key_of(&self.inner.prefix, charge)
    }

    /// Applies `charges` as if the server's clock read `now` (microseconds since the
    /// epoch). For differential tests against [`MemoryCounters`](super::MemoryCounters)
    /// only: in service, the store always uses the server's clock.
    #[doc(hidden)]
    pub async fn charge_at(&self, charges: &[Charge], now: Duration) -> Result<(), ChargeError> {
        self.inner.start(charges, Some(now)).await
    }
}

/// The future of [`RedisCounters`]' charge: the request's charges are already queued for
/// the next script call; it waits for their answer, which comes by the deadline.
///
/// See the example on [`RedisCounters`].
#[must_use = "futures do nothing unless polled"]
pub struct RedisCharge {
    state: State,
}

enum State {
    /// Answered without Redis (backing off, or the queue full); taken when polled.
    Done(Option<Result<(), ChargeError>>),
    Waiting {
        answer: oneshot::Receiver<Result<Answer, StoreError>>,
        inner: Arc<Inner>,
    },
}

impl fmt::Debug for RedisCharge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Done(Some(_)) => "answered",
            State::Done(None) => "finished",
            State::Waiting { .. } => "waiting for Redis",
        };
        f.debug_struct("RedisCharge")
            .field("state", &state)
            .finish()
    }
}

impl Future for RedisCharge {
    type Output = Result<(), ChargeError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Done(result) => Poll::Ready(
                result
                    .take()
                    .expect("RedisCharge polled after it completed"),
            ),
            State::Waiting { answer, inner } => {
                let answer = ready!(Pin::new(answer).poll(cx));
                let result = inner.settle(answer);
                self.state = State::Done(None);
                Poll::Ready(result)
            }
        }
    }
}

impl Inner {
    /// Queues a request's charges for the worker; the future waits for the answer.
    fn start(self: &Arc<Self>, charges: &[Charge], now: Option<Duration>) -> RedisCharge {
        let done = |result| RedisCharge {
            state: State::Done(Some(result)),
        };
        if let Admit::Wait(wait) = self.shared.breaker().admit(self.deadline) {
            let error = StoreError::new("Redis is unreachable; backing off before the next try")
                .with_retry_after(wait);
            return done(self.unavailable(error));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            charges: charges.into(),
            mode: Mode::Charge,
            now,
            waiter: Some(Waiter {
                reply,
                due: Instant::now() + self.deadline,
            }),
        };
        if let Err(error) = self.queue.try_send(job) {
            self.shared.breaker().failed();
            return done(self.unavailable(StoreError::new(queue_error(&error))));
        }
        RedisCharge {
            state: State::Waiting {
                answer,
                inner: self.clone(),
            },
        }
    }

    /// A request's outcome from the worker's answer.
    fn settle(
        &self,
        answer: Result<Result<Answer, StoreError>, oneshot::error::RecvError>,
    ) -> Result<(), ChargeError> {
        match answer {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some((index, wait)))) => {
                let retry_after = (wait >= 0.0)
                    .then(|| Duration::from_nanos((wait * 1000.0).ceil() as u64))
                    .map(|d| d.max(Duration::from_nanos(1)));
                Err(ChargeError::Exceeded { index, retry_after })
            }
            Ok(Err(error)) => self.unavailable(error),
            Err(_) => {
                self.shared.breaker().failed();
                self.unavailable(StoreError::new("the Redis worker stopped"))
            }
        }
    }

    fn unavailable(&self, error: StoreError) -> Result<(), ChargeError> {
        match self.fail_open {
            false => Err(ChargeError::Unavailable(error)),
            true => Err(ChargeError::Uncounted(error)),
        }
    }
}

impl CounterStore for RedisCounters {
    type Future = RedisCharge;

    fn charge(&self, charges: &[Charge]) -> Self::Future {
        self.inner.start(charges, None)
    }

    /// Queued for the next script call; nobody waits for it. A refund that cannot be
    /// applied (Redis down, the queue full) is reported (see
    /// [`CounterStore::report_errors_to`]).
    fn refund(&self, charges: &[Charge]) {
        let job = Job {
            charges: charges.into(),
            mode: Mode::Refund,
            now: None,
            waiter: None,
        };
        if let Err(error) = self.inner.queue.try_send(job) {
            let message = format!("refund not applied: {}", queue_error(&error));
            self.inner.shared.report(StoreError::new(message));
        }
    }

    fn shares_sessions(&self) -> bool {
        true
    }

    /// `SET prefix + "session:" + hash` with a day to live (renewed by each
    /// `initialize` that issues it), or `DEL` when it ended; in the background.
    fn share_session(&self, session: ScopeValue, issued: bool) {
        let shared = self.inner.shared.clone();
        tokio::spawn(async move {
            let key = wire::session_key(&shared.prefix, session);
            let mut connection = shared.connection.clone();
            let written: redis::RedisResult<()> = match issued {
                true => {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(1)
                        .arg("EX")
                        .arg(SESSION_TTL.as_secs())
                        .query_async(&mut connection)
                        .await
                }
                false => {
                    redis::cmd("DEL")
                        .arg(&key)
                        .query_async(&mut connection)
                        .await
                }
            };
            if let Err(error) = written {
                let message = format!("could not share a session with the other replicas: {error}");
                shared.report(StoreError::new(message));
            }
        });
    }

    fn find_session(&self, session: ScopeValue, found: Box<dyn FnOnce() + Send>) {
        let shared = self.inner.shared.clone();
        tokio::spawn(async move {
            let key = wire::session_key(&shared.prefix, session);
            let mut connection = shared.connection.clone();
            let exists: redis::RedisResult<bool> = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut connection)
                .await;
            if let Ok(true) = exists {
                found();
            }
        });
    }

    /// `SET prefix + "task:" + hash` to the owner's hash, for the task's time to live
    /// (seven days when it has none), unless another owner has it; in the background.
    fn share_task(&self, task: ScopeValue, owner: ScopeValue, ttl: Option<Duration>) {
        let shared = self.inner.shared.clone();
        tokio::spawn(async move {
            let key = wire::task_key(&shared.prefix, task);
            let ttl = ttl.unwrap_or(TASK_TTL).as_millis().max(1);
            let mut connection = shared.connection.clone();
            let written: redis::RedisResult<i64> = redis::Script::new(BIND_TASK)
                .key(&key)
                .arg(wire::hex_u128(owner.as_u128()))
                .arg(ttl as u64)
                .invoke_async(&mut connection)
                .await;
            if let Err(error) = written {
                let message = format!("could not share a task with the other replicas: {error}");
                shared.report(StoreError::new(message));
            }
        });
    }

    /// `GET` and `PTTL` of the task's key, within the store's deadline; asked once more
    /// after a short wait when the key is missing (the replica that saw the task handed
    /// out may still be writing it). An error is reported, and finds nothing: the
    /// request is refused.
    fn find_task(
        &self,
        task: ScopeValue,
    ) -> Option<Pin<Box<dyn Future<Output = Option<(ScopeValue, Option<Duration>)>> + Send>>> {
        let shared = self.inner.shared.clone();
        let deadline = self.inner.deadline;
        Some(Box::pin(async move {
            let key = wire::task_key(&shared.prefix, task);
            for attempt in 0..2 {
                if attempt > 0 {
                    tokio::time::sleep(TASK_RECHECK).await;
                }
                let mut connection = shared.connection.clone();
                let mut pipe = redis::pipe();
                pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
                let query = pipe.query_async::<(Option<String>, i64)>(&mut connection);
                let error = match tokio::time::timeout(deadline, query).await {
                    Ok(Ok((Some(owner), ttl))) => {
                        let owner = u128::from_str_radix(&owner, 16).ok()?;
                        let ttl = u64::try_from(ttl).ok().map(Duration::from_millis);
                        return Some((ScopeValue::from_u128(owner), ttl));
                    }
                    Ok(Ok((None, _))) => continue,
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("no answer within {deadline:?}"),
                };
                let message = format!("could not look up the owner of a task: {error}");
                shared.report(StoreError::new(message));
                return None;
            }
            None
        }))
    }

    fn report_errors_to(&self, report: Arc<dyn Fn(&StoreError) + Send + Sync>) {
        *self
            .inner
            .shared
            .report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(report);
    }

    fn scope_hasher(&self) -> Option<ScopeHasher> {
        Some(self.inner.hasher.clone())
    }
}
