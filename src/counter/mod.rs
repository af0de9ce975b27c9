//! Where rate-limit state lives.
//!
//! A [`CounterStore`] applies the [`Charge`]s of one request all together or not at all.
//! [`MemoryCounters`] keeps them in this process with governor's GCRA; the trait returns
//! a future so that a store shared by replicas (Redis, say) can implement it unchanged.

pub(crate) mod clock;
mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::fmt;
use std::future::Future;
use std::hash::Hasher;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use siphasher::sip::SipHasher13;

pub use memory::MemoryCounters;
#[cfg(feature = "redis")]
pub(crate) use redis::Shared;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisCharge, RedisCounters, RedisCountersBuilder};

use crate::scope::Scope;
use crate::scope::ScopeValue;

/// A counter's identity, derived from its name, window and scope. The same counter in
/// two versions of a policy has the same id, so a store keeps its state, also when its
/// `max` changed: lowering a limit then never raises anyone's remaining budget (the
/// state is the time the bucket is spent until), and raising it gives no fresh burst.
/// A counter whose window or scope changed is a new counter, and starts full. Stable
/// across processes and builds, so replicas sharing a store agree on it.
///
/// See the example on [`CounterStore`] for ids, quotas and charges together.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterId(u64);

impl CounterId {
    /// The id of the counter `name` with `quota` (its window) and `scope`.
    pub fn new(name: &str, quota: Quota, scope: Scope) -> CounterId {
        // A fixed key: this is a name, not a secret; it must be the same everywhere.
        let mut h = SipHasher13::new_with_keys(0x6d63_702d_706f_6c69, 0x6379_2d63_6f75_6e74);
        h.write_u64(name.len() as u64);
        h.write(name.as_bytes());
        h.write_u64(quota.window().as_secs());
        h.write_u8(match scope {
            Scope::Grant => 1,
            Scope::Session => 2,
            Scope::Global => 3,
        });
        CounterId(h.finish())
    }

    /// The id of the same counter in the policy named `policy` of a set of grants: the
    /// counters of two named policies never share state, whatever their names.
    pub(crate) fn in_policy(self, policy: &str) -> CounterId {
        let mut h = SipHasher13::new_with_keys(0x6d63_702d_706f_6c69, 0x6772_616e_7473_2d31);
        h.write_u64(self.0);
        h.write_u64(policy.len() as u64);
        h.write(policy.as_bytes());
        CounterId(h.finish())
    }

    /// The id as a number (for stores that name counters in their keys).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for CounterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CounterId({self})")
    }
}

/// Sixteen hex digits.
impl fmt::Display for CounterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a counter allows: a burst of `max`, refilled at `max` per `window` (GCRA).
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use tower_mcp_policy::counter::Quota;
///
/// let quota = Quota::new(NonZeroU32::new(30).unwrap(), Duration::from_secs(60));
/// assert_eq!(quota.period(), Duration::from_secs(2)); // one call refills every 2 s
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    max: NonZeroU32,
    window: Duration,
}

impl Quota {
    /// `max` per `window`. The window is whole seconds (policies cannot say less).
    pub fn new(max: NonZeroU32, window: Duration) -> Quota {
        Quota { max, window }
    }

    /// The budget per window, which is also the largest burst.
    pub fn max(self) -> NonZeroU32 {
        self.max
    }

    /// The window.
    pub fn window(self) -> Duration {
        self.window
    }

    /// The time one unit takes to refill: `window / max`.
    pub fn period(self) -> Duration {
        self.window / self.max.get()
    }
}

/// One unit of work for a counter: charge `cost` to the bucket `key` of counter
/// `counter`, which allows `quota`. A store needs nothing else to apply it.
///
/// See the example on [`CounterStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Charge {
    /// Which counter.
    pub counter: CounterId,
    /// What the counter allows.
    pub quota: Quota,
    /// The bucket: the caller's grant, session, or [`ScopeValue::GLOBAL`].
    pub key: ScopeValue,
    /// How many units the call costs (1 unless the limit has `increment_from`).
    pub cost: NonZeroU32,
}

impl Charge {
    /// A charge of `cost` to the bucket `key` of `counter`.
    pub fn new(counter: CounterId, quota: Quota, key: ScopeValue, cost: NonZeroU32) -> Charge {
        Charge {
            counter,
            quota,
            key,
            cost,
        }
    }
}

/// Why a counter store could not decide: its own error, for the logs, and when to try
/// again. The agent never reads it; it reads a fixed message with the retry hint.
///
/// ```
/// use std::time::Duration;
/// use tower_mcp_policy::counter::{ChargeError, StoreError};
///
/// let error = StoreError::new("connection refused").with_retry_after(Duration::from_secs(2));
/// let error = ChargeError::Unavailable(error);
/// assert_eq!(error.to_string(), "counter store unavailable: connection refused");
/// ```
#[derive(Clone)]
pub struct StoreError {
    source: Arc<dyn std::error::Error + Send + Sync>,
    retry_after: Option<Duration>,
}

impl StoreError {
    /// Wraps the store's own error.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        StoreError {
            source: Arc::from(source.into()),
            retry_after: None,
        }
    }

    /// When it is worth trying again (the end of a back-off, say); default 1 s.
    #[must_use]
    pub fn with_retry_after(mut self, wait: Duration) -> StoreError {
        self.retry_after = Some(wait);
        self
    }

    /// The wait before trying again, if the store knows it.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreError")
            .field("source", &self.source)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl From<&str> for StoreError {
    fn from(message: &str) -> StoreError {
        StoreError::new(message)
    }
}

impl From<String> for StoreError {
    fn from(message: String) -> StoreError {
        StoreError::new(message)
    }
}

/// Why a set of charges was not applied. When this is returned, nothing was charged.
///
/// See the examples on [`CounterStore`] and [`StoreError`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ChargeError {
    /// Charge number `index` does not fit. `retry_after` is how long until it would;
    /// `None` when it never can (its cost is more than the counter's `max`).
    Exceeded {
        /// Which charge of the slice did not fit.
        index: usize,
        /// The wait until it would fit.
        retry_after: Option<Duration>,
    },
    /// The store could not decide (a remote store is down): the calls that needed it
    /// are denied (fail closed). Nothing was charged.
    Unavailable(StoreError),
    /// The store could not decide, and lets the calls run uncounted (a store set to
    /// fail open): the error is reported and the calls are allowed. Nothing was charged.
    Uncounted(StoreError),
}

impl fmt::Display for ChargeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChargeError::Exceeded {
                index,
                retry_after: Some(wait),
            } => write!(f, "charge {index} exceeds its limit for {wait:?}"),
            ChargeError::Exceeded { index, .. } => write!(f, "charge {index} can never fit"),
            ChargeError::Unavailable(reason) => write!(f, "counter store unavailable: {reason}"),
            ChargeError::Uncounted(reason) => {
                write!(f, "counter store unavailable, uncounted: {reason}")
            }
        }
    }
}

impl std::error::Error for ChargeError {}

/// Keeps counters and applies charges atomically: every charge of a call, or of a
/// whole batch, is applied, or none is.
///
/// A store that can answer without waiting (like [`MemoryCounters`]) implements
/// [`CounterStore::charge_now`], and the layer never awaits it. A remote store answers
/// through [`CounterStore::charge`]'s future, which must do nothing until polled.
///
/// A store that wraps [`MemoryCounters`] and refuses everything during maintenance:
///
/// ```
/// use std::future::{Ready, ready};
/// use std::num::NonZeroU32;
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::time::Duration;
/// use tower_mcp_policy::counter::{
///     Charge, ChargeError, CounterId, CounterStore, MemoryCounters, Quota, StoreError,
/// };
/// use tower_mcp_policy::{Scope, ScopeValue};
///
/// #[derive(Clone, Default)]
/// struct Maintainable {
///     counters: MemoryCounters,
///     maintenance: Arc<AtomicBool>,
/// }
///
/// impl CounterStore for Maintainable {
///     type Future = Ready<Result<(), ChargeError>>;
///
///     fn charge(&self, charges: &[Charge]) -> Self::Future {
///         ready(self.charge_now(charges).expect("answers at once"))
///     }
///
///     fn charge_now(&self, charges: &[Charge]) -> Option<Result<(), ChargeError>> {
///         if self.maintenance.load(Ordering::Relaxed) {
///             let error = StoreError::new("maintenance").with_retry_after(Duration::from_secs(30));
///             return Some(Err(ChargeError::Unavailable(error)));
///         }
///         self.counters.charge_now(charges)
///     }
///
///     fn refund(&self, charges: &[Charge]) {
///         self.counters.refund(charges);
///     }
/// }
///
/// let store = Maintainable::default();
/// let quota = Quota::new(NonZeroU32::new(2).unwrap(), Duration::from_secs(60));
/// let counter = CounterId::new("transfers", quota, Scope::Global);
/// let charge = Charge::new(counter, quota, ScopeValue::GLOBAL, NonZeroU32::MIN);
///
/// assert!(store.charge_now(&[charge]).unwrap().is_ok());
/// assert!(store.charge_now(&[charge]).unwrap().is_ok());
/// let Some(Err(ChargeError::Exceeded { index: 0, retry_after: Some(wait) })) =
///     store.charge_now(&[charge])
/// else {
///     panic!("the third call in a minute does not fit")
/// };
/// assert!(wait > Duration::from_secs(29) && wait <= Duration::from_secs(30)); // one refill
///
/// store.maintenance.store(true, Ordering::Relaxed);
/// assert!(matches!(store.charge_now(&[charge]), Some(Err(ChargeError::Unavailable(_)))));
/// ```
///
/// Use it with [`Engine::with_counters`](crate::Engine::with_counters) or
/// [`PolicyLayer::from_engine`](crate::PolicyLayer::from_engine).
pub trait CounterStore: Send + Sync + 'static {
    /// The future of [`CounterStore::charge`].
    type Future: Future<Output = Result<(), ChargeError>> + Send + 'static;

    /// Applies every charge, or none and says why. The future owns what it needs.
    fn charge(&self, charges: &[Charge]) -> Self::Future;

    /// Applies every charge now, if this store can answer without waiting; `None`
    /// otherwise, having charged nothing. The default is `None`.
    fn charge_now(&self, charges: &[Charge]) -> Option<Result<(), ChargeError>> {
        let _ = charges;
        None
    }

    /// Gives back `charges`, applied by an earlier successful charge, because the call
    /// they paid for did not run (the server answered it with an error, or could not be
    /// reached). Only calls that did not run are refunded, so nobody gains quota. Best
    /// effort and never awaited: a store that must reach a server does so in the
    /// background. The default refunds nothing.
    fn refund(&self, charges: &[Charge]) {
        let _ = charges;
    }

    /// The hasher every user of this store must turn credentials and session ids into
    /// keys with, when the store decides it (a store shared by replicas keeps one
    /// secret for all of them). `None`: the layer's own choice.
    fn scope_hasher(&self) -> Option<crate::scope::ScopeHasher> {
        None
    }

    /// Where the store reports the errors that happen outside a charge, which no
    /// request's answer can carry: a refund it could not apply, or trouble with the
    /// state it shares with other replicas. The layer hands over its observer here when
    /// it is built (each error becomes a `StoreError` event with `background: true`).
    /// The default has nothing to report.
    fn report_errors_to(&self, report: Arc<dyn Fn(&StoreError) + Send + Sync>) {
        let _ = report;
    }

    /// True when the store shares the sessions a server issued between the replicas
    /// that use it ([`CounterStore::share_session`], [`CounterStore::find_session`]).
    /// The default is `false`.
    fn shares_sessions(&self) -> bool {
        false
    }

    /// Records that the server issued (`true`) or ended (`false`) the session whose
    /// keyed hash is `session`, for the other replicas. Session-scoped limits count per
    /// session only for sessions the server issued, so without this a session counted
    /// on each replica that saw it issued, and per grant on the others. Best effort and
    /// never awaited. The default records nothing.
    fn share_session(&self, session: ScopeValue, issued: bool) {
        let _ = (session, issued);
    }

    /// Looks `session` up among the sessions other replicas shared, and calls `found`
    /// (at most once, from the store's own task) when it is there. Never awaited: the
    /// request that asked counts it per grant, the next ones per session. The default
    /// finds nothing.
    fn find_session(&self, session: ScopeValue, found: Box<dyn FnOnce() + Send>) {
        let _ = (session, found);
    }

    /// Records that the server handed `task` (the keyed hash of a task id) to the grant
    /// `owner`, for the other replicas; the task lives `ttl` (`None`: no time to live).
    /// A request about a task passes only for the grant that owns it, so without this
    /// a task created through one replica is unreachable through the others. Best
    /// effort and never awaited. The default records nothing.
    fn share_task(&self, task: ScopeValue, owner: ScopeValue, ttl: Option<Duration>) {
        let _ = (task, owner, ttl);
    }

    /// Looks `task` up among the tasks other replicas shared: a future of its owner and
    /// how long it still lives, or `None` when the store shares no tasks (the default).
    /// The request about the task waits for it.
    #[allow(clippy::type_complexity)]
    fn find_task(
        &self,
        task: ScopeValue,
    ) -> Option<Pin<Box<dyn Future<Output = Option<(ScopeValue, Option<Duration>)>> + Send>>> {
        let _ = task;
        None
    }

    /// How many buckets the store tracks, if it knows cheaply (for metrics). The
    /// default is `None`.
    fn tracked_keys(&self) -> Option<usize> {
        None
    }

    /// Forgets every counter not in `keep` (after a policy replaced by one without
    /// them). The default keeps everything (a store whose keys expire by themselves).
    fn retain_counters(&self, keep: &[CounterId]) {
        let _ = keep;
    }
}
