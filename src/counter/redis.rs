//! Counters in Redis or Valkey, shared by every replica (feature `redis`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use smallvec::SmallVec;

use super::{Charge, ChargeError, CounterStore, StoreError};
use crate::scope::ScopeHasher;

/// The default prefix of every key the store writes.
pub const DEFAULT_PREFIX: &str = "mcp-policy:";
/// The default deadline of one charge.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(100);

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
/// * One round trip per request: all the charges of a request (or of a whole batch) go
///   to Redis as one script call (`EVALSHA`, reloaded on `NOSCRIPT`), applied
///   atomically: every charge or none.
/// * The same GCRA as [`MemoryCounters`](super::MemoryCounters) (a burst of `max`,
///   refilled at `max` per `window`, the same retry hint), on the Redis server's clock,
///   so replicas whose clocks differ agree. One small value per key; every key expires
///   once its bucket has refilled (at most about one window after its last use).
/// * Keys are `prefix` + the counter's [`CounterId`](super::CounterId) + the keyed hash
///   of the scope value: no credential or session id is ever written in clear.
/// * Replicas hash credentials with one secret key, created in Redis on first use
///   (`SET NX`) and read by every replica; the layer takes it from the store.
/// * Every charge has a deadline (default 100 ms). While Redis is down no request waits
///   longer: after a failure the store backs off (100 ms doubling to 5 s, failing fast
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
    connection: ConnectionManager,
    script: Script,
    prefix: String,
    deadline: Duration,
    fail: FailMode,
    hasher: ScopeHasher,
    /// The hasher's key as stored in Redis (32 hex digits).
    secret: String,
    breaker: Mutex<Breaker>,
}

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
        let fresh = hex(&crate::scope::random_key());
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
        Ok(RedisCounters {
            inner: Arc::new(Inner {
                connection,
                script: Script::new(include_str!("gcra.lua")),
                prefix: self.prefix,
                deadline: self.deadline,
                fail: self.fail,
                hasher: ScopeHasher::with_key(key),
                secret,
                breaker: Mutex::new(Breaker::default()),
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
        format!(
            "{}{}:{:032x}",
            self.inner.prefix,
            charge.counter,
            charge.key.as_u128()
        )
    }

    /// Applies `charges` as if the server's clock read `now` (microseconds since the
    /// epoch). For differential tests against [`MemoryCounters`](super::MemoryCounters)
    /// only: in service, the store always uses the server's clock.
    #[doc(hidden)]
    pub async fn charge_at(&self, charges: &[Charge], now: Duration) -> Result<(), ChargeError> {
        self.inner.run(charges, Mode::Charge, Some(now)).await
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Charge,
    Refund,
}

impl Inner {
    async fn run(
        &self,
        charges: &[Charge],
        mode: Mode,
        now: Option<Duration>,
    ) -> Result<(), ChargeError> {
        let probe = match self.breaker().admit() {
            Admit::Go(probe) => probe,
            Admit::Wait(wait) => {
                let error =
                    StoreError::new("Redis is unreachable; backing off before the next try")
                        .with_retry_after(wait);
                return self.unavailable(error);
            }
        };
        let mut invocation = self.script.prepare_invoke();
        for charge in charges {
            invocation.key(format!(
                "{}{}:{:032x}",
                self.prefix,
                charge.counter,
                charge.key.as_u128()
            ));
        }
        invocation.arg(now.map_or_else(String::new, |now| now.as_micros().to_string()));
        invocation.arg(match mode {
            Mode::Charge => "c",
            Mode::Refund => "r",
        });
        for charge in charges {
            let period_us = charge.quota.period().as_nanos() as f64 / 1000.0;
            invocation
                .arg(format!("{period_us:.3}"))
                .arg(charge.quota.max().get())
                .arg(charge.cost.get());
        }
        let mut connection = self.connection.clone();
        let answer = tokio::time::timeout(
            self.deadline,
            invocation.invoke_async::<(i64, String)>(&mut connection),
        )
        .await;
        let answer = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(err)) => {
                self.breaker().failed(probe);
                return self.unavailable(StoreError::new(err));
            }
            Err(_) => {
                self.breaker().failed(probe);
                let error = format!("Redis did not answer within {:?}", self.deadline);
                return self.unavailable(StoreError::new(error));
            }
        };
        if self.breaker().succeeded() {
            self.reseed();
        }
        match answer {
            (0, _) => Ok(()),
            (index, wait) => {
                let index = usize::try_from(index - 1).unwrap_or(0);
                let wait: f64 = wait.parse().unwrap_or(-1.0);
                let retry_after = (wait >= 0.0)
                    .then(|| Duration::from_nanos((wait * 1000.0).ceil() as u64))
                    .map(|d| d.max(Duration::from_nanos(1)));
                Err(ChargeError::Exceeded { index, retry_after })
            }
        }
    }

    /// After an outage: Redis may have restarted empty, so the shared hashing secret
    /// is written back (`SET NX`) for replicas that start later; a different secret
    /// already there means replicas now count one caller in two buckets: an ERROR.
    fn reseed(self: &Inner) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut connection = self.connection.clone();
        let key = format!("{}scope-hasher-key", self.prefix);
        let ours = self.secret.clone();
        runtime.spawn(async move {
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

/// Backs off after failures, then lets one request probe.
#[derive(Default)]
struct Breaker {
    failures: u32,
    retry_at: Option<Instant>,
    probing: bool,
}

enum Admit {
    /// Go ahead; `true` when this request is the probe after a back-off.
    Go(bool),
    /// Fail fast; the back-off has this long to run.
    Wait(Duration),
}

impl Breaker {
    fn admit(&mut self) -> Admit {
        let Some(retry_at) = self.retry_at else {
            return Admit::Go(false);
        };
        let now = Instant::now();
        if now < retry_at || self.probing {
            return Admit::Wait(retry_at.saturating_duration_since(now).max(MIN_BACKOFF));
        }
        self.probing = true;
        Admit::Go(true)
    }

    fn failed(&mut self, probe: bool) {
        if probe {
            self.probing = false;
        }
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
    type Future = Pin<Box<dyn Future<Output = Result<(), ChargeError>> + Send>>;

    fn charge(&self, charges: &[Charge]) -> Self::Future {
        let inner = self.inner.clone();
        let charges: SmallVec<[Charge; 4]> = charges.into();
        Box::pin(async move { inner.run(&charges, Mode::Charge, None).await })
    }

    fn refund(&self, charges: &[Charge]) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(target: "tower_mcp_policy", "a refund needs a tokio runtime; skipped");
            return;
        };
        let inner = self.inner.clone();
        let charges: SmallVec<[Charge; 4]> = charges.into();
        runtime.spawn(async move {
            if let Err(err) = inner.run(&charges, Mode::Refund, None).await {
                tracing::warn!(target: "tower_mcp_policy", "refund not applied: {err}");
            }
        });
    }

    fn scope_hasher(&self) -> Option<ScopeHasher> {
        Some(self.inner.hasher.clone())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
