//! In-process counters on governor's keyed GCRA rate limiters, over a sharded table
//! with a bound on the keys it tracks.

use std::collections::HashMap;
use std::future::{Ready, ready};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};
use smallvec::SmallVec;

use super::clock::{FakeClock, Time};
use super::{Charge, ChargeError, CounterId, CounterStore, StoreError};
use crate::scope::ScopeValue;

/// The default bound on tracked keys (over all counters): about 55 MB of buckets.
pub(crate) const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// How often the background sweeper drops idle buckets.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Shards per counter. At 2,000,000 keys in one counter a shard holds about 8,000, so
/// growing or sweeping one holds its lock for well under a millisecond.
const SHARDS: usize = 256;

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

/// Hashes a value that is already a keyed hash ([`CounterId`], [`Bucket`]) as the
/// number it is.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (both keys hash as u64s); fold anything else in so
        // the hasher stays correct if that ever changes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// A bucket's key in a counter's table: the scope hash, as two words (a `u128` would
/// pad each entry to 32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Bucket(u64, u64);

impl Bucket {
    fn of(key: ScopeValue) -> Bucket {
        let v = key.as_u128();
        Bucket((v >> 64) as u64, v as u64)
    }

    fn shard(self) -> usize {
        // The top bits of the high word; the table's hash is both words folded.
        (self.0 >> (64 - SHARDS.trailing_zeros())) as usize
    }
}

/// How many buckets are tracked, over every counter of one store, and how many may be.
struct Budget {
    tracked: AtomicUsize,
    max: AtomicUsize,
}

impl Budget {
    fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Takes room for one new bucket, if there is any.
    fn take(&self) -> bool {
        let max = self.max();
        self.tracked
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.tracked.fetch_sub(n, Ordering::Relaxed);
    }
}

type Shard = HashMap<Bucket, Nanos, BuildHasherDefault<IdHasher>>;

/// One counter's buckets, in shards. Shared by the counter's rate limiter and by the
/// store (for admission, refunds and sweeping).
#[derive(Clone)]
struct Table(Arc<TableInner>);

struct TableInner {
    shards: Box<[Mutex<Shard>]>,
    budget: Arc<Budget>,
}

impl Drop for TableInner {
    fn drop(&mut self) {
        let held: usize = self
            .shards
            .iter_mut()
            .map(|s| s.get_mut().unwrap_or_else(PoisonError::into_inner).len())
            .sum();
        self.budget.give(held);
    }
}

impl Table {
    fn new(budget: Arc<Budget>) -> Table {
        Table(Arc::new(TableInner {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            budget,
        }))
    }

    fn shard(&self, bucket: Bucket) -> MutexGuard<'_, Shard> {
        self.lock(bucket.shard())
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        self.0.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes sure `bucket` is tracked (a new one starts full); false when it is not and
    /// the budget is spent.
    fn admit(&self, bucket: Bucket) -> bool {
        let mut shard = self.shard(bucket);
        if shard.contains_key(&bucket) {
            return true;
        }
        if !self.0.budget.take() {
            return false;
        }
        shard.insert(bucket, Nanos::new(0));
        true
    }

    /// Moves the bucket's theoretical arrival time back by `back` (a refund); a bucket
    /// that is not tracked is already full.
    fn give_back(&self, bucket: Bucket, back: Nanos) {
        if let Some(tat) = self.shard(bucket).get_mut(&bucket) {
            *tat = tat.saturating_sub(back);
        }
    }

    fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).len()).sum()
    }
}

impl StateStore for Table {
    type Key = Bucket;

    fn measure_and_replace<T, F, E>(&self, key: &Bucket, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut shard = self.shard(*key);
        match shard.get_mut(key) {
            Some(tat) => {
                let (answer, next) = f(Some(*tat))?;
                *tat = next;
                Ok(answer)
            }
            None => {
                // Admitted, then swept before this charge: track it again (the bound
                // can be passed by the requests in flight, no more).
                let (answer, next) = f(None)?;
                self.0.budget.tracked.fetch_add(1, Ordering::Relaxed);
                shard.insert(*key, next);
                Ok(answer)
            }
        }
    }
}

impl ShrinkableKeyedStateStore<Bucket> for Table {
    /// One shard at a time: no lock is held for longer than one shard's pass.
    fn retain_recent(&self, drop_below: Nanos) {
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            let before = shard.len();
            // governor drops a bucket at or below the horizon.
            shard.retain(|_, tat| *tat > drop_below);
            let dropped = before - shard.len();
            // Give memory back once a shard is mostly empty; never right after it grew
            // (it is then half full), so sweeping and growth do not take turns.
            if shard.capacity() > 4 * shard.len() + 64 {
                let keep = 2 * shard.len();
                shard.shrink_to(keep);
            }
            drop(shard);
            self.0.budget.give(dropped);
        }
    }

    fn len(&self) -> usize {
        Table::len(self)
    }

    fn is_empty(&self) -> bool {
        (0..SHARDS).all(|i| self.lock(i).is_empty())
    }
}

struct Limiter {
    table: Table,
    limiter: RateLimiter<Bucket, Table, Time, NoOpMiddleware<Nanos>>,
}

impl Limiter {
    fn new(charge: &Charge, clock: &Time, budget: &Arc<Budget>) -> Limiter {
        let quota = Quota::with_period(charge.quota.period())
            .expect("the compiler rejects windows shorter than max nanoseconds")
            .allow_burst(charge.quota.max());
        let table = Table::new(budget.clone());
        Limiter {
            limiter: RateLimiter::new(quota, table.clone(), clock.clone()),
            table,
        }
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
        if charges.iter().all(|c| current.contains_key(&c.counter)) {
            return current;
        }
        drop(current);
        let _adding = self.adding.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = ByCounter::clone(&self.limiters.load());
        for charge in charges {
            next.entry(charge.counter)
                .or_insert_with(|| Arc::new(Limiter::new(charge, &self.clock, &self.budget)));
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
