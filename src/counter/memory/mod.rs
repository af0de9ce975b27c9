//! In-process counters on governor's keyed GCRA rate limiters, over a sharded table
//! with a bound on the keys it tracks.

use std::collections::HashMap;
use std::future::{Ready, ready};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::{Quota, RateLimiter};
use smallvec::SmallVec;

mod table;

use super::clock::{FakeClock, Time};
use super::{Charge, ChargeError, CounterId, CounterStore, StoreError};
use table::{Bucket, Budget, IdHasher, Table};

/// The default bound on tracked keys (over all counters): about 55 MB of buckets.
pub(crate) const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// How often the background sweeper drops idle buckets.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Counters kept in this process, one governor keyed rate limiter per counter.
///
/// A counter with `max` per `window` is a GCRA bucket of `max` cells refilled at
/// `max / window`: a burst of up to `max` calls, then one call every `window / max`.
/// So a fresh key can make up to `2·max − 1` calls within its first window (the full
/// burst plus what refills during the window), and never more than `max` plus the
/// refill in any window.
///
/// **Concurrency.** Each counter's buckets live in 256 shards with a lock each, so
/// unrelated callers never wait for each other. A request's charges are applied one by
/// one; if one does not fit, those already applied are refunded (a refund commutes
/// with other charges), so a request is charged all or nothing.
///
/// **Memory.** At most [`max_keys`](MemoryCounters::with_max_keys) buckets are tracked over
/// all counters (default [`MemoryCounters::DEFAULT_MAX_KEYS`], about 55 MB). When the table is full, a
/// call that needs a *new* bucket is denied (the agent reads that rate-limit state is
/// unavailable and when to retry; the logs say the table is full); callers already
/// tracked keep working. A background thread (one per process, started with the first
/// store) drops buckets that have fully refilled, since they are the same as fresh
/// ones, every second, one shard at a time, and gives their memory back. A bucket is
/// kept while it is refilling, so with long windows the bound, not the sweep, is what
/// limits a flood of invented credentials.
///
/// A counter is created the first time a charge names it (by its [`CounterId`], with
/// the charge's quota), so the store needs nothing from the policy, and one store can
/// serve several versions of a policy: a counter whose definition did not change keeps
/// its state.
///
/// Cloning is cheap and shares the counters.
///
/// ```
/// use std::time::Duration;
/// use tower_mcp_policy::counter::MemoryCounters;
/// use tower_mcp_policy::{Decision, Engine, FakeClock, Policy, ScopeHasher, ScopeKeys};
///
/// let policy: Policy = r#"{ "version": "1", "default": "deny", "tools": { "transfer": {
///     "limits": [{ "counter": "transfers", "window": "minute", "max": 1 }] } } }"#.parse()?;
/// let clock = FakeClock::new();
/// let counters = MemoryCounters::with_clock(clock.clone()).with_max_keys(10_000);
/// let engine = Engine::with_counters(policy, counters.clone());
///
/// let hasher = ScopeHasher::random();
/// let alice = hasher.credential(b"Bearer alice");
/// let scope = ScopeKeys::new(alice, hasher.no_session(alice));
/// assert_eq!(engine.decide("transfer", None, &scope), Decision::Allow);
/// assert!(matches!(engine.decide("transfer", None, &scope), Decision::Deny(_)));
/// assert_eq!(counters.len(), 1); // one bucket: alice's
///
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(engine.decide("transfer", None, &scope), Decision::Allow);
/// # Ok::<(), tower_mcp_policy::PolicyError>(())
/// ```
pub struct MemoryCounters {
    inner: Arc<Inner>,
}

impl Clone for MemoryCounters {
    fn clone(&self) -> Self {
        MemoryCounters {
            inner: self.inner.clone(),
        }
    }
}

impl std::fmt::Debug for MemoryCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCounters")
            .field("counters", &self.inner.limiters.load().len())
            .field("keys", &self.inner.budget.tracked())
            .field("max_keys", &self.inner.budget.max())
            .finish_non_exhaustive()
    }
}

/// Limiters by counter. A [`CounterId`] is already a hash, so it is its own hash.
type ByCounter = HashMap<CounterId, Arc<Limiter>, BuildHasherDefault<IdHasher>>;

struct Limiter {
    table: Table,
    limiter: RateLimiter<Bucket, Table, Time, NoOpMiddleware<Nanos>>,
    /// The quota the limiter applies.
    quota: super::Quota,
    /// When it started: governor keeps each bucket's time relative to it.
    start: Nanos,
}

impl Limiter {
    fn new(charge: &Charge, clock: &Time, budget: &Arc<Budget>) -> Limiter {
        Limiter::over(Table::new(budget.clone()), charge.quota, clock)
    }

    fn over(table: Table, quota: super::Quota, clock: &Time) -> Limiter {
        let gcra = Quota::with_period(quota.period())
            .expect("the compiler rejects windows shorter than max nanoseconds")
            .allow_burst(quota.max());
        Limiter {
            start: clock.now(),
            limiter: RateLimiter::new(gcra, table.clone(), clock.clone()),
            table,
            quota,
        }
    }

    /// The same counter under `quota` (its `max` changed with the policy): the buckets
    /// keep their state, so a lowered limit never raises a remaining budget.
    fn requota(&self, quota: super::Quota, clock: &Time) -> Limiter {
        let next = Limiter::over(self.table.clone(), quota, clock);
        // The new limiter reads bucket times from its own start: move them there. A
        // charge racing this through the old limiter writes a later time, which is
        // stricter, never looser.
        self.table.rebase(next.start.saturating_sub(self.start));
        next
    }
}

struct Inner {
    /// Read on every charge, replaced (under `adding`) when a counter is created or
    /// forgotten.
    limiters: ArcSwap<ByCounter>,
    adding: Mutex<()>,
    budget: Arc<Budget>,
    clock: Time,
}

impl Inner {
    fn limiters_for(&self, charges: &[Charge]) -> Guard<Arc<ByCounter>> {
        let current = self.limiters.load();
        let known = |c: &Charge| current.get(&c.counter).is_some_and(|l| l.quota == c.quota);
        if charges.iter().all(known) {
            return current;
        }
        drop(current);
        let _adding = self.adding.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = ByCounter::clone(&self.limiters.load());
        for charge in charges {
            let limiter = match next.get(&charge.counter) {
                None => Limiter::new(charge, &self.clock, &self.budget),
                Some(old) if old.quota != charge.quota => old.requota(charge.quota, &self.clock),
                Some(_) => continue,
            };
            next.insert(charge.counter, Arc::new(limiter));
        }
        self.limiters.store(Arc::new(next));
        self.limiters.load()
    }

    fn sweep(&self) {
        for limiter in self.limiters.load().values() {
            limiter.limiter.retain_recent();
        }
    }
}

/// What the background sweeper keeps alive: nothing. It holds weak references and
/// forgets a store once every clone of it is dropped.
trait Sweep: Send + Sync {
    fn sweep(&self);
}

impl Sweep for Inner {
    fn sweep(&self) {
        Inner::sweep(self);
    }
}

/// Registers a store with the process's sweeper thread, starting it the first time.
fn sweep_in_background(store: Weak<dyn Sweep>) {
    static STORES: OnceLock<Mutex<Vec<Weak<dyn Sweep>>>> = OnceLock::new();
    let stores = STORES.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("mcp-policy-sweeper".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(SWEEP_INTERVAL);
                    let Some(stores) = STORES.get() else { continue };
                    let live: Vec<Arc<dyn Sweep>> = {
                        let mut stores = stores.lock().unwrap_or_else(PoisonError::into_inner);
                        stores.retain(|s| s.strong_count() > 0);
                        stores.iter().filter_map(Weak::upgrade).collect()
                    };
                    for store in live {
                        store.sweep();
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::error!(
                target: "tower_mcp_policy",
                "cannot start the counter sweeper, idle buckets stay until `sweep`: {error}"
            );
        }
        Mutex::default()
    });
    stores
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(store);
}

impl MemoryCounters {
    /// The default bound on tracked buckets; see [`MemoryCounters::with_max_keys`].
    pub const DEFAULT_MAX_KEYS: usize = DEFAULT_MAX_KEYS;

    /// Counters on the process's monotonic clock.
    pub fn new() -> Self {
        Self::on(Time::monotonic())
    }

    /// Counters on a [`FakeClock`], which tests advance by hand.
    pub fn with_clock(clock: FakeClock) -> Self {
        Self::on(Time::Fake(clock))
    }

    fn on(clock: Time) -> Self {
        let inner = Arc::new(Inner {
            limiters: ArcSwap::default(),
            adding: Mutex::new(()),
            budget: Arc::new(Budget {
                tracked: AtomicUsize::new(0),
                max: AtomicUsize::new(DEFAULT_MAX_KEYS),
            }),
            clock,
        });
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        sweep_in_background(weak);
        MemoryCounters { inner }
    }
}

impl Default for MemoryCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryCounters {
    /// Sets the bound on tracked buckets, over all counters (at least 1). Each takes
    /// about 52 bytes. Lowering it below the number tracked refuses new buckets until
    /// the sweeper has dropped enough idle ones.
    #[must_use]
    pub fn with_max_keys(self, max: usize) -> Self {
        self.inner.budget.max.store(max.max(1), Ordering::Relaxed);
        self
    }

    /// Applies every charge or none, synchronously.
    pub(crate) fn try_charge(&self, charges: &[Charge]) -> Result<(), ChargeError> {
        let inner = &*self.inner;
        let limiters = inner.limiters_for(charges);
        let mut applied: SmallVec<[usize; 4]> = SmallVec::new();
        let mut result = Ok(());
        for (index, charge) in charges.iter().enumerate() {
            let limiter = &limiters[&charge.counter];
            let bucket = Bucket::of(charge.key);
            if !limiter.table.admit(bucket) {
                result = Err(self.full());
                break;
            }
            match limiter.limiter.check_key_n(&bucket, charge.cost) {
                Ok(Ok(())) => applied.push(index),
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(inner.clock.now());
                    result = Err(ChargeError::Exceeded {
                        index,
                        retry_after: Some(wait.max(Duration::from_nanos(1))),
                    });
                    break;
                }
                Err(_insufficient) => {
                    result = Err(ChargeError::Exceeded {
                        index,
                        retry_after: None,
                    });
                    break;
                }
            }
        }
        if result.is_err() {
            for &index in applied.iter().rev() {
                let charge = &charges[index];
                limiters[&charge.counter]
                    .table
                    .give_back(Bucket::of(charge.key), refill(charge));
            }
        }
        result
    }

    fn full(&self) -> ChargeError {
        let error = StoreError::new(format!(
            "the in-memory counter table is full ({} buckets tracked, max_keys {}): calls from \
             new callers are denied until idle buckets are swept; raise max_keys if this is \
             not a flood",
            self.inner.budget.tracked(),
            self.inner.budget.max()
        ))
        .with_retry_after(SWEEP_INTERVAL);
        ChargeError::Unavailable(error)
    }

    /// Gives back `charges` (see [`CounterStore::refund`]): each bucket's theoretical
    /// arrival time moves back by `cost × window / max`. A bucket that was dropped
    /// meanwhile is already full.
    fn give_back(&self, charges: &[Charge]) {
        let limiters = self.inner.limiters.load();
        for charge in charges {
            if let Some(limiter) = limiters.get(&charge.counter) {
                limiter
                    .table
                    .give_back(Bucket::of(charge.key), refill(charge));
            }
        }
    }

    /// How many buckets are tracked, over all counters.
    pub fn len(&self) -> usize {
        self.inner.budget.tracked()
    }

    /// True when no bucket is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound on tracked buckets (see [`MemoryCounters::with_max_keys`]).
    pub fn max_keys(&self) -> usize {
        self.inner.budget.max()
    }

    /// Drops every bucket that has fully refilled (it is the same as a fresh one) now,
    /// instead of waiting for the background sweeper.
    pub fn sweep(&self) {
        self.inner.sweep();
    }
}

/// What one charge took from its bucket, as time: `cost × window / max`.
fn refill(charge: &Charge) -> Nanos {
    Nanos::from(charge.quota.period()) * u64::from(charge.cost.get())
}

impl CounterStore for MemoryCounters {
    type Future = Ready<Result<(), ChargeError>>;

    fn charge(&self, charges: &[Charge]) -> Self::Future {
        ready(self.try_charge(charges))
    }

    fn charge_now(&self, charges: &[Charge]) -> Option<Result<(), ChargeError>> {
        Some(self.try_charge(charges))
    }

    fn refund(&self, charges: &[Charge]) {
        self.give_back(charges);
    }

    fn tracked_keys(&self) -> Option<usize> {
        Some(self.len())
    }

    fn retain_counters(&self, keep: &[CounterId]) {
        let inner = &*self.inner;
        let _adding = inner.adding.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = ByCounter::clone(&inner.limiters.load());
        next.retain(|id, _| keep.contains(id));
        inner.limiters.store(Arc::new(next));
    }
}
