//! Counters in Redis or Valkey, shared by every replica (feature `redis`).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, ErrorKind, Script, ServerErrorKind};
use smallvec::SmallVec;
use tokio::sync::{mpsc, oneshot};

use super::{Charge, ChargeError, CounterStore, StoreError};
use crate::scope::ScopeHasher;

/// The default prefix of every key the store writes.
pub const DEFAULT_PREFIX: &str = "mcp-policy:";
/// The default deadline of one charge.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(100);

/// At most this many requests wait for Redis; past that, calls fail fast.
const QUEUE: usize = 16_384;
/// At most this many scheduler rounds for more requests to join a script call.
const YIELDS: usize = 8;
/// At most this many requests go to Redis in one script call.
const MAX_BATCH: usize = 256;
/// A key's length after the prefix: the counter id and the scope hash in hex, with a `:`.
const KEY_HEX: usize = 16 + 1 + 32;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What to do with a call that needs a counter while Redis cannot be reached.
///
/// See the example on [`RedisCountersBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailMode {
    /// Deny it, with "rate-limit state is unavailable, the call was not run; try again
    /// in Ns" (the default). Calls with no limit still pass.
    #[default]
    Closed,
    /// Allow it uncounted, with a WARN event.
    Open,
}

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
    fail: FailMode,
    hasher: ScopeHasher,
    shared: Arc<Shared>,
}

/// What the requests and the worker both use.
struct Shared {
    connection: ConnectionManager,
    prefix: Arc<str>,
    /// The hasher's key as stored in Redis (32 hex digits).
    secret: String,
    breaker: Mutex<Breaker>,
}

/// The charges (or refunds) of one request, and where its answer goes.
struct Job {
    charges: SmallVec<[Charge; 4]>,
    mode: Mode,
    now: Option<Duration>,
    /// The request waiting for the answer; `None` for a refund, which nobody waits for.
    waiter: Option<Waiter>,
}

/// Where a request's answer goes, and by when it is due.
struct Waiter {
    reply: oneshot::Sender<Result<Answer, StoreError>>,
    due: Instant,
}

/// A group's answer from the script: `None` when applied, else the index of the charge
/// that did not fit and the wait in microseconds (negative: never).
type Answer = Option<(usize, f64)>;

impl fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCounters")
            .field("prefix", &self.inner.prefix)
            .field("deadline", &self.inner.deadline)
            .field("fail", &self.inner.fail)
            .finish_non_exhaustive()
    }
}

/// Options for [`RedisCounters`]; see [`RedisCounters::builder`].
///
/// ```no_run
/// # async fn run() -> Result<(), redis::RedisError> {
/// use std::time::Duration;
/// use tower_mcp_policy::counter::{FailMode, RedisCounters};
///
/// let counters = RedisCounters::builder("redis://redis.internal:6379/")
///     .prefix("payments-mcp:")
///     .deadline(Duration::from_millis(50))
///     .fail_mode(FailMode::Open) // keep serving, uncounted, while Redis is down
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisCountersBuilder {
    url: String,
    prefix: String,
    deadline: Duration,
    fail: FailMode,
}

impl RedisCountersBuilder {
    /// The prefix of every key (default [`DEFAULT_PREFIX`]).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one charge may take (default [`DEFAULT_DEADLINE`]).
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// What happens to limited calls while Redis is unreachable (default closed).
    #[must_use]
    pub fn fail_mode(mut self, fail: FailMode) -> Self {
        self.fail = fail;
        self
    }

    /// Connects (Redis must be reachable now), and reads or creates the secret key
    /// that every replica hashes credentials with.
    pub async fn connect(self) -> Result<RedisCounters, redis::RedisError> {
        let client = redis::Client::open(self.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.deadline.max(Duration::from_millis(250))))
            .set_response_timeout(Some(self.deadline))
            .set_min_delay(MIN_BACKOFF)
            .set_max_delay(MAX_BACKOFF);
        let mut connection = ConnectionManager::new_with_config(client, config).await?;
        let secret_key = format!("{}scope-hasher-key", self.prefix);
        let fresh = hex(crate::scope::random_key());
        let _: Option<String> = redis::cmd("SET")
            .arg(&secret_key)
            .arg(&fresh)
            .arg("NX")
            .query_async(&mut connection)
            .await?;
        let secret: String = connection.get(&secret_key).await?;
        let key = unhex(&secret).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Client,
                "the scope hasher key in Redis is not 32 hex digits",
                secret_key.clone(),
            ))
        })?;
        let prefix: Arc<str> = self.prefix.into();
        let shared = Arc::new(Shared {
            connection,
            prefix: prefix.clone(),
            secret,
            breaker: Mutex::new(Breaker::default()),
        });
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(work(jobs, shared.clone(), self.deadline));
        Ok(RedisCounters {
            inner: Arc::new(Inner {
                queue,
                prefix,
                deadline: self.deadline,
                fail: self.fail,
                hasher: ScopeHasher::with_key(key),
                shared,
            }),
        })
    }
}

impl RedisCounters {
    /// Options for a store at `url` (`redis://host:port/db`, `rediss://` for TLS,
    /// `redis+unix:///path`).
    pub fn builder(url: impl Into<String>) -> RedisCountersBuilder {
        RedisCountersBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            deadline: DEFAULT_DEADLINE,
            fail: FailMode::Closed,
        }
    }

    /// The Redis key of a charge's bucket.
    pub fn key_of(&self, charge: &Charge) -> String {
        key_of(&self.inner.prefix, charge)
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

#[derive(Clone, Copy)]
enum Mode {
    Charge,
    Refund,
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
        match self.fail {
            FailMode::Closed => Err(ChargeError::Unavailable(error)),
            FailMode::Open => {
                tracing::warn!(
                    target: "tower_mcp_policy",
                    decision = "store_error",
                    "counter store unavailable, call allowed uncounted (fail open): {error}"
                );
                Ok(())
            }
        }
    }
}

/// Sends the queued requests to Redis, one script call at a time, each carrying all the
/// requests that asked meanwhile: under load, one round trip serves many requests, and
/// Redis runs fewer, larger calls (each call has a fixed cost there, about five
/// requests' worth). The requests of one call share its clock: a request charged at a
/// given time (tests only) goes with those at the same time.
async fn work(mut jobs: mpsc::Receiver<Job>, shared: Arc<Shared>, deadline: Duration) {
    let script = Script::new(include_str!("gcra.lua"));
    // A request taken from the queue that did not share the last call's clock.
    let mut next: Option<Job> = None;
    // The requests of the next call (one vector for every call).
    let mut batch: Vec<Job> = Vec::new();
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        batch.push(first);
        // Let the requests that are running now queue their charges too, for as long as
        // more keep coming (a few scheduler rounds at most): one script call for all of
        // them costs Redis and this process far less. Alone, a request waits one round.
        for _ in 0..YIELDS {
            let before = batch.len();
            tokio::task::yield_now().await;
            while batch.len() < MAX_BATCH && next.is_none() {
                match jobs.try_recv() {
                    Ok(job) if job.now == batch[0].now => batch.push(job),
                    Ok(job) => next = Some(job),
                    Err(_) => break,
                }
            }
            if batch.len() == before || batch.len() == MAX_BATCH || next.is_some() {
                break;
            }
        }
        // A request that went away is not charged; one whose deadline passed while it
        // waited behind slow calls is answered now, uncharged.
        let now = Instant::now();
        batch.retain_mut(|job| match &job.waiter {
            None => true,
            Some(waiter) if waiter.reply.is_closed() => false,
            Some(waiter) if waiter.due <= now => {
                if let Some(waiter) = job.waiter.take() {
                    let _ = waiter.reply.send(Err(late(deadline)));
                }
                false
            }
            Some(_) => true,
        });
        if !batch.is_empty() {
            send(&mut batch, &shared, &script, deadline).await;
        }
    }
}

/// One script call for `batch`, and every request's answer; leaves `batch` empty.
async fn send(batch: &mut Vec<Job>, shared: &Shared, script: &Script, deadline: Duration) {
    let mut connection = shared.connection.clone();
    let due = batch
        .iter()
        .filter_map(|job| job.waiter.as_ref().map(|waiter| waiter.due))
        .min();
    let call = script_call(batch, &shared.prefix, script);
    // Answered by the earliest deadline in the batch (refunds alone: by the
    // connection's response timeout, which is the deadline too).
    let call = async {
        match call.query_async::<String>(&mut connection).await {
            // Redis lost its scripts (a restart, `SCRIPT FLUSH`): load it, call again.
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                script.load_async(&mut connection).await?;
                call.query_async::<String>(&mut connection).await
            }
            answer => answer,
        }
    };
    let answers = match due {
        Some(due) => tokio::time::timeout_at(due.into(), call).await,
        None => Ok(call.await),
    };
    let answers = match answers {
        Ok(Ok(answers)) => Ok(answers),
        Ok(Err(err)) => Err(StoreError::new(err)),
        Err(_) => Err(late(deadline)),
    };
    match answers {
        Ok(reply) => {
            if shared.breaker().succeeded() {
                shared.reseed();
            }
            match parse_reply(&reply, batch.len()) {
                Ok(answers) => {
                    for (job, answer) in batch.drain(..).zip(answers) {
                        if let Some(waiter) = job.waiter {
                            let _ = waiter.reply.send(Ok(answer));
                        }
                    }
                }
                Err(error) => {
                    for waiter in batch.drain(..).filter_map(|job| job.waiter) {
                        let _ = waiter.reply.send(Err(error.clone()));
                    }
                }
            }
        }
        Err(error) => {
            shared.breaker().failed();
            for job in batch.drain(..) {
                match job.waiter {
                    Some(waiter) => {
                        let _ = waiter.reply.send(Err(error.clone()));
                    }
                    None => tracing::warn!(
                        target: "tower_mcp_policy",
                        "refund not applied: {error}"
                    ),
                }
            }
        }
    }
}

/// The script call for `batch` (whose requests share one clock), written straight into
/// one command buffer: each bucket once in `KEYS`, each kind of charge (period, max,
/// cost) once, and then one binary argument holding, per request, its number of charges
/// and per charge one small number naming its bucket and kind. Redis turns every
/// argument into a string and the script every number back, so fewer, shorter arguments
/// are what make a call cheap.
fn script_call(batch: &[Job], prefix: &str, script: &Script) -> redis::Cmd {
    let mut buckets = Distinct::new();
    let mut kinds = Distinct::new();
    // Per charge, the 1-based indices of its bucket and of its kind.
    let mut indices: SmallVec<[(usize, usize); 16]> = SmallVec::new();
    for charge in batch.iter().flat_map(|job| &job.charges) {
        let bucket = (charge.counter.as_u64(), charge.key.as_u128());
        let kind = (
            charge.quota.period().as_nanos(),
            charge.quota.max().get(),
            charge.cost.get(),
        );
        indices.push((buckets.position(bucket), kinds.position(kind)));
    }
    let (buckets, kinds) = (buckets.items, kinds.items);
    let mut call = redis::Cmd::with_capacity(
        6 + buckets.len() + kinds.len() * 3,
        // Per bucket its name; per kind three numbers; per request and charge a byte
        // or two.
        64 + buckets.len() * (prefix.len() + KEY_HEX)
            + kinds.len() * 48
            + (batch.len() + indices.len()) * 2,
    );
    call.arg("EVALSHA")
        .arg(script.get_hash())
        .arg(buckets.len());
    let mut key = Vec::with_capacity(prefix.len() + KEY_HEX);
    for &(counter, scope) in &buckets {
        write_key(&mut key, prefix, counter, scope);
        call.arg(&key[..]);
    }
    match batch.first().and_then(|job| job.now) {
        Some(now) => call.arg(now.as_micros()),
        None => call.arg(""),
    };
    call.arg(kinds.len());
    for &(period, max, cost) in &kinds {
        call.arg(period).arg(max).arg(cost);
    }
    // Every group in one argument: Redis makes a string of each argument, and the
    // script a number of each string, so one binary string of small numbers is far
    // cheaper than an argument per number.
    let mut numbers = Vec::with_capacity(2 * (batch.len() + indices.len()));
    let mut indices = indices.iter();
    for job in batch {
        let refund = matches!(job.mode, Mode::Refund);
        push_number(
            &mut numbers,
            2 * job.charges.len() as u64 + u64::from(refund),
        );
        for &(bucket, kind) in indices.by_ref().take(job.charges.len()) {
            push_number(&mut numbers, ((kind - 1) * buckets.len() + bucket) as u64);
        }
    }
    call.arg(&numbers[..]);
    call
}

/// Distinct items in the order first seen, each with its 1-based index (linear in the
/// items however many a call of 256 requests names). Hashed with foldhash: the items
/// are counter ids and keyed hashes of scope values, which no caller can choose.
struct Distinct<T> {
    items: Vec<T>,
    index: HashMap<T, usize, foldhash::fast::RandomState>,
}

impl<T: Copy + Eq + Hash> Distinct<T> {
    fn new() -> Self {
        Distinct {
            items: Vec::new(),
            index: HashMap::default(),
        }
    }

    /// The index of `item`, added at the end when new.
    fn position(&mut self, item: T) -> usize {
        *self.index.entry(item).or_insert_with(|| {
            self.items.push(item);
            self.items.len()
        })
    }
}

fn queue_error(error: &mpsc::error::TrySendError<Job>) -> String {
    match error {
        mpsc::error::TrySendError::Full(_) => {
            format!("more than {QUEUE} requests are waiting for Redis")
        }
        mpsc::error::TrySendError::Closed(_) => {
            "the Redis worker has stopped (the tokio runtime it was connected on shut down)"
                .to_owned()
        }
    }
}

fn late(deadline: Duration) -> StoreError {
    StoreError::new(format!("Redis did not answer within {deadline:?}"))
}

/// The script's reply for a call of `groups` requests, each request's answer in order:
/// the number of groups, then `group:index:wait` (1-based) for each group that did not
/// fit, its charge `index` would after `wait` microseconds (negative: never).
fn parse_reply(reply: &str, groups: usize) -> Result<Vec<Answer>, StoreError> {
    let bad = || StoreError::new(format!("the Redis script answered {reply:?}"));
    let mut parts = reply.split(' ');
    let count: usize = parts.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
    if count != groups {
        return Err(StoreError::new(format!(
            "the Redis script answered for {count} requests of {groups}"
        )));
    }
    let mut answers = vec![None; groups];
    for failure in parts {
        let mut fields = failure.splitn(3, ':');
        let mut field = || fields.next().ok_or_else(bad);
        let group: usize = field()?.parse().map_err(|_| bad())?;
        let index: usize = field()?.parse().map_err(|_| bad())?;
        let wait: f64 = field()?.parse().map_err(|_| bad())?;
        let answer = group
            .checked_sub(1)
            .and_then(|group| answers.get_mut(group))
            .filter(|answer| answer.is_none() && index > 0)
            .ok_or_else(bad)?;
        *answer = Some((index - 1, wait));
    }
    Ok(answers)
}

/// `n` in 7-bit digits, least significant first, the high bit set on every byte but
/// the last (how the script reads the groups' numbers).
fn push_number(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn key_of(prefix: &str, charge: &Charge) -> String {
    let mut key = Vec::with_capacity(prefix.len() + KEY_HEX);
    write_key(
        &mut key,
        prefix,
        charge.counter.as_u64(),
        charge.key.as_u128(),
    );
    String::from_utf8(key).expect("a text prefix and hex digits")
}

/// The key of a counter's bucket, in place of what `key` held. Written by hand, as
/// bytes: `format!` with two hex fields costs more than the rest of a request's share
/// of a script call, and a `String` checks every character it is given.
fn write_key(key: &mut Vec<u8>, prefix: &str, counter: u64, scope: u128) {
    key.clear();
    key.extend_from_slice(prefix.as_bytes());
    push_hex(key, counter);
    key.push(b':');
    push_hex_u128(key, scope);
}

/// `value` in 32 hex digits, zero-padded.
fn push_hex_u128(out: &mut Vec<u8>, value: u128) {
    push_hex(out, (value >> 64) as u64);
    push_hex(out, value as u64);
}

/// `value` in 16 hex digits, zero-padded.
fn push_hex(out: &mut Vec<u8>, value: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0; 16];
    for (i, digit) in digits.iter_mut().enumerate() {
        *digit = HEX[(value >> (60 - 4 * i) & 0xf) as usize];
    }
    out.extend_from_slice(&digits);
}

impl Shared {
    /// After an outage: Redis may have restarted empty, so the shared hashing secret
    /// is written back (`SET NX`) for replicas that start later; a different secret
    /// already there means replicas now count one caller in two buckets: an ERROR.
    fn reseed(&self) {
        let mut connection = self.connection.clone();
        let key = format!("{}scope-hasher-key", self.prefix);
        let ours = self.secret.clone();
        tokio::spawn(async move {
            let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
                .arg(&key)
                .arg(&ours)
                .arg("NX")
                .query_async(&mut connection)
                .await;
            let stored: redis::RedisResult<String> = connection.get(&key).await;
            match (set, stored) {
                (Ok(_), Ok(stored)) if stored == ours => {}
                (Ok(_), Ok(_)) => tracing::error!(
                    target: "tower_mcp_policy",
                    "Redis holds another scope hasher key than this replica: replicas will count \
                     the same caller in different buckets until they restart"
                ),
                (Err(err), _) | (_, Err(err)) => tracing::warn!(
                    target: "tower_mcp_policy",
                    "could not write the scope hasher key back to Redis: {err}"
                ),
            }
        });
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Backs off after failures, then lets one request probe.
#[derive(Default)]
struct Breaker {
    failures: u32,
    retry_at: Option<Instant>,
    /// While a probe is out: when it is given up (a probe whose request went away
    /// never reports).
    probe_until: Option<Instant>,
}

enum Admit {
    Go,
    /// Fail fast; the back-off has this long to run.
    Wait(Duration),
}

impl Breaker {
    fn admit(&mut self, deadline: Duration) -> Admit {
        let Some(retry_at) = self.retry_at else {
            return Admit::Go;
        };
        let now = Instant::now();
        let probing = self.probe_until.is_some_and(|until| now < until);
        if now < retry_at || probing {
            return Admit::Wait(retry_at.saturating_duration_since(now).max(MIN_BACKOFF));
        }
        self.probe_until = Some(now + deadline);
        Admit::Go
    }

    fn failed(&mut self) {
        self.probe_until = None;
        self.failures = self.failures.saturating_add(1);
        let backoff = MIN_BACKOFF
            .saturating_mul(1 << self.failures.saturating_sub(1).min(6))
            .min(MAX_BACKOFF);
        self.retry_at = Some(Instant::now() + backoff);
    }

    /// Records a success; true when it ends an outage.
    fn succeeded(&mut self) -> bool {
        let recovered = self.failures > 0;
        *self = Breaker::default();
        recovered
    }
}

impl CounterStore for RedisCounters {
    type Future = RedisCharge;

    fn charge(&self, charges: &[Charge]) -> Self::Future {
        self.inner.start(charges, None)
    }

    /// Queued for the next script call; nobody waits for it. A refund that cannot be
    /// applied (Redis down, the queue full) is a WARN event.
    fn refund(&self, charges: &[Charge]) {
        let job = Job {
            charges: charges.into(),
            mode: Mode::Refund,
            now: None,
            waiter: None,
        };
        if let Err(error) = self.inner.queue.try_send(job) {
            tracing::warn!(
                target: "tower_mcp_policy",
                "refund not applied: {}",
                queue_error(&error)
            );
        }
    }

    fn scope_hasher(&self) -> Option<ScopeHasher> {
        Some(self.inner.hasher.clone())
    }
}

fn hex(key: [u8; 16]) -> String {
    let mut text = Vec::with_capacity(32);
    push_hex_u128(&mut text, u128::from_be_bytes(key));
    String::from_utf8(text).expect("hex digits")
}

fn unhex(text: &str) -> Option<[u8; 16]> {
    let mut key = [0u8; 16];
    if text.len() != 32 {
        return None;
    }
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::counter::{CounterId, Quota};
    use crate::scope::Scope;
    use crate::scope::ScopeValue;

    #[test]
    fn keys_are_the_prefix_the_counter_id_and_the_scope_hash_in_hex() {
        let quota = Quota::new(NonZeroU32::new(30).unwrap(), Duration::from_secs(60));
        let one = NonZeroU32::new(1).unwrap();
        for name in ["rate", "transfers", ""] {
            let counter = CounterId::new(name, quota, Scope::Grant);
            for key in [
                ScopeHasher::with_key([7; 16]).credential(b"Bearer abc"),
                ScopeValue::GLOBAL,
            ] {
                let charge = Charge::new(counter, quota, key, one);
                let expected = format!(
                    "mcp-policy:{:016x}:{:032x}",
                    counter.as_u64(),
                    key.as_u128()
                );
                assert_eq!(key_of("mcp-policy:", &charge), expected);
            }
        }
    }

    #[test]
    fn the_hasher_key_is_stored_as_32_hex_digits_and_read_back() {
        let key: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(17).wrapping_add(9));
        let text = hex(key);
        let expected: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(text, expected);
        assert_eq!(unhex(&text), Some(key));
        for bad in ["", "0", &text[1..], "zz".repeat(16).as_str()] {
            assert_eq!(unhex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn distinct_items_keep_their_first_index() {
        let mut distinct = Distinct::new();
        for round in 0..3 {
            for item in 0..40_u32 {
                assert_eq!(distinct.position(item), item as usize + 1, "round {round}");
            }
        }
        assert_eq!(distinct.items, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn a_call_names_each_bucket_and_kind_once_and_each_charge_by_one_number() {
        let minute = Quota::new(NonZeroU32::new(30).unwrap(), Duration::from_secs(60));
        let day = Quota::new(NonZeroU32::new(5).unwrap(), Duration::from_secs(86_400));
        let (a, b) = (
            CounterId::new("a", minute, Scope::Grant),
            CounterId::new("b", day, Scope::Global),
        );
        let hasher = ScopeHasher::with_key([7; 16]);
        let (alice, bob) = (hasher.credential(b"alice"), hasher.credential(b"bob"));
        let one = NonZeroU32::MIN;
        let charge = |id, quota, key| Charge::new(id, quota, key, one);
        let job = |charges: &[Charge], mode| Job {
            charges: charges.into(),
            mode,
            now: None,
            waiter: None,
        };
        let batch = [
            job(
                &[charge(a, minute, alice), charge(b, day, ScopeValue::GLOBAL)],
                Mode::Charge,
            ),
            job(&[charge(a, minute, bob)], Mode::Charge),
            job(&[charge(a, minute, alice)], Mode::Refund),
        ];
        let script = Script::new("return ''");
        let call = script_call(&batch, "p:", &script);
        let args: Vec<Vec<u8>> = call
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => panic!("a cursor argument"),
            })
            .collect();
        let key = |id, key| key_of("p:", &charge(id, minute, key)).into_bytes();
        let text = |text: &str| text.as_bytes().to_vec();
        let expected = [
            text("EVALSHA"),
            text(script.get_hash()),
            text("3"),
            key(a, alice),
            key(b, ScopeValue::GLOBAL),
            key(a, bob),
            text(""),
            // Two kinds: 2 s and 17,280 s per unit, each costing 1.
            text("2"),
            text("2000000000"),
            text("30"),
            text("1"),
            text("17280000000000"),
            text("5"),
            text("1"),
            // Per request its charges times two (plus one: a refund), per charge
            // (kind - 1) * 3 + bucket.
            vec![4, 1, 5, 2, 3, 3, 1],
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn numbers_take_seven_bits_a_byte_least_significant_first() {
        let cases: [(u64, &[u8]); 5] = [
            (0, &[0]),
            (127, &[127]),
            (128, &[0x80, 1]),
            (5001, &[0x89, 0x27]),
            (u64::from(u32::MAX), &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for (n, bytes) in cases {
            let mut out = Vec::new();
            push_number(&mut out, n);
            assert_eq!(out, bytes, "{n}");
        }
    }

    #[test]
    fn replies_are_read_strictly() {
        assert_eq!(parse_reply("2", 2).unwrap(), [None, None]);
        assert_eq!(
            parse_reply("3 2:1:1500.5 3:2:-1", 3).unwrap(),
            [None, Some((0, 1500.5)), Some((1, -1.0))]
        );
        let bad = [
            ("", 1),
            ("2", 3),
            ("1 0:1:5", 1),
            ("1 2:1:5", 1),
            ("1 1:0:5", 1),
            ("2 1:1:5 1:1:5", 2),
            ("1 1:1", 1),
            ("1 1:1:x", 1),
            ("1 x:1:5", 1),
            ("1 1:1:5 ", 1),
        ];
        for (reply, groups) in bad {
            assert!(parse_reply(reply, groups).is_err(), "{reply:?}");
        }
    }
}
