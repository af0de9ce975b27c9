//! In-process counters on governor's keyed GCRA rate limiters.

use std::collections::HashMap;
use std::future::{Ready, ready};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::{Quota, RateLimiter};
use smallvec::SmallVec;

use super::{Charge, ChargeError, CounterId, CounterStore};
use crate::scope::ScopeValue;

/// Counters kept in this process, one governor keyed rate limiter per counter.
///
/// A counter with `max` per `window` is a GCRA bucket of `max` cells refilled at
/// `max / window`: a burst of up to `max` calls, then one call every `window / max`.
/// So a fresh key can make up to `2·max − 1` calls within its first window (the full
/// burst plus what refills during the window), and never more than `max` plus the
/// refill in any window.
///
/// Charges of one request are applied under a short lock and undone if a later one does
/// not fit, so a request is charged all or nothing. Idle buckets (those that have fully
/// refilled) are dropped from time to time, so memory follows the active callers.
///
/// A counter is created the first time a charge names it (by its [`CounterId`], with
/// the charge's quota), so the store needs nothing from the policy, and one store can
/// serve several versions of a policy: a counter whose definition did not change keeps
/// its state.
///
/// Cloning is cheap and shares the counters.
pub struct MemoryCounters<C: Clock = DefaultClock> {
    inner: Arc<Inner<C>>,
}

impl<C: Clock> Clone for MemoryCounters<C> {
    fn clone(&self) -> Self {
        MemoryCounters {
            inner: self.inner.clone(),
        }
    }
}

impl<C: Clock> std::fmt::Debug for MemoryCounters<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCounters")
            .field("counters", &self.inner.limiters().len())
            .finish_non_exhaustive()
    }
}

/// Limiters by counter. A [`CounterId`] is already a hash, so it is its own hash.
type ByCounter<C> = HashMap<CounterId, Limiter<C>, BuildHasherDefault<IdHasher>>;

/// Hashes a [`CounterId`] as the number it is.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (CounterId derives Hash over one u64); fold anything
        // else in so the hasher stays correct if that ever changes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Inner<C: Clock> {
    /// The limiters by counter; the lock also serializes charge transactions, so an
    /// undo never erases another request's charge.
    limiters: Mutex<ByCounter<C>>,
    clock: C,
    transactions: AtomicU64,
    sweep_above: AtomicU64,
}

impl<C: Clock> Inner<C> {
    fn limiters(&self) -> MutexGuard<'_, ByCounter<C>> {
        self.limiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Limiter<C: Clock> {
    store: SharedStore,
    limiter: RateLimiter<ScopeValue, SharedStore, C, NoOpMiddleware<C::Instant>>,
}

/// A dashmap store reachable both from its rate limiter and from us (for undo).
#[derive(Clone, Default)]
struct SharedStore(Arc<DashMapStateStore<ScopeValue>>);

impl StateStore for SharedStore {
    type Key = ScopeValue;

    fn measure_and_replace<T, F, E>(&self, key: &ScopeValue, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<ScopeValue> for SharedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::<ScopeValue>::retain_recent(&*self.0, drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::<ScopeValue>::shrink_to_fit(&*self.0);
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl SharedStore {
    /// The stored state of `key` (`None`: fresh), without changing it.
    fn peek(&self, key: &ScopeValue) -> Option<Nanos> {
        match self.measure_and_replace(key, Err::<((), Nanos), _>) {
            Err(state) => state,
            Ok(()) => unreachable!("the probe never replaces"),
        }
    }

    /// Puts back a state read by [`SharedStore::peek`].
    fn restore(&self, key: &ScopeValue, state: Option<Nanos>) {
        let state = state.unwrap_or(Nanos::new(0));
        let _ = self.measure_and_replace(key, |_| Ok::<_, ()>(((), state)));
    }
}

const SWEEP_EVERY: u64 = 1024;
const SWEEP_MIN_KEYS: u64 = 4096;

impl MemoryCounters<DefaultClock> {
    /// Counters on the default (monotonic) clock.
    pub fn new() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl Default for MemoryCounters<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock + Clone> MemoryCounters<C> {
    /// Counters on a given clock, such as governor's `FakeRelativeClock` in tests.
    pub fn with_clock(clock: C) -> Self {
        MemoryCounters {
            inner: Arc::new(Inner {
                limiters: Mutex::new(ByCounter::default()),
                clock,
                transactions: AtomicU64::new(0),
                sweep_above: AtomicU64::new(SWEEP_MIN_KEYS),
            }),
        }
    }
}

impl<C: Clock + Clone> Limiter<C> {
    fn new(charge: &Charge, clock: &C) -> Limiter<C> {
        let quota = Quota::with_period(charge.quota.period())
            .expect("the compiler rejects windows shorter than max nanoseconds")
            .allow_burst(charge.quota.max());
        let store = SharedStore::default();
        Limiter {
            limiter: RateLimiter::new(quota, store.clone(), clock.clone()),
            store,
        }
    }
}

impl<C: Clock + Clone> MemoryCounters<C> {
    /// Applies every charge or none, synchronously.
    pub fn try_charge(&self, charges: &[Charge]) -> Result<(), ChargeError> {
        let inner = &*self.inner;
        let result = {
            let mut limiters = inner.limiters();
            for charge in charges {
                limiters
                    .entry(charge.counter)
                    .or_insert_with(|| Limiter::new(charge, &inner.clock));
            }
            let mut undo: SmallVec<[(usize, Option<Nanos>); 4]> = SmallVec::new();
            let mut result = Ok(());
            for (index, charge) in charges.iter().enumerate() {
                let limiter = &limiters[&charge.counter];
                let last = index + 1 == charges.len();
                let before = (!last).then(|| limiter.store.peek(&charge.key));
                match limiter.limiter.check_key_n(&charge.key, charge.cost) {
                    Ok(Ok(())) => {
                        if let Some(state) = before {
                            undo.push((index, state));
                        }
                    }
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
                for (index, state) in undo.into_iter().rev() {
                    let charge = &charges[index];
                    limiters[&charge.counter].store.restore(&charge.key, state);
                }
            }
            result
        };
        self.maybe_sweep();
        result
    }

    /// Gives back `charges` (see [`CounterStore::refund`]): each bucket's theoretical
    /// arrival time moves back by `cost × window / max`. A bucket that was dropped
    /// meanwhile is already full.
    pub fn give_back(&self, charges: &[Charge]) {
        let limiters = self.inner.limiters();
        for charge in charges {
            let Some(limiter) = limiters.get(&charge.counter) else {
                continue;
            };
            // (Asking the store about a key would create it.)
            if !limiter.store.0.contains_key(&charge.key) {
                continue;
            }
            let back = Nanos::from(charge.quota.period()) * u64::from(charge.cost.get());
            let _ = limiter
                .store
                .measure_and_replace(&charge.key, |state| match state {
                    Some(tat) => Ok(((), tat.saturating_sub(back))),
                    None => Err(()),
                });
        }
    }

    /// How many buckets are held, over all counters.
    pub fn len(&self) -> usize {
        self.inner
            .limiters()
            .values()
            .map(|l| l.store.0.len())
            .sum()
    }

    /// True when no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every bucket that has fully refilled (it is the same as a fresh one).
    pub fn retain_recent(&self) {
        for limiter in self.inner.limiters().values() {
            limiter.limiter.retain_recent();
            limiter.limiter.shrink_to_fit();
        }
    }

    fn maybe_sweep(&self) {
        let inner = &*self.inner;
        let n = inner.transactions.fetch_add(1, Ordering::Relaxed);
        if n % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return;
        }
        if (self.len() as u64) < inner.sweep_above.load(Ordering::Relaxed) {
            return;
        }
        self.retain_recent();
        let kept = self.len() as u64;
        inner
            .sweep_above
            .store((kept * 2).max(SWEEP_MIN_KEYS), Ordering::Relaxed);
    }
}

impl<C> CounterStore for MemoryCounters<C>
where
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Reference + Send + Sync,
{
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

    fn retain_counters(&self, keep: &[CounterId]) {
        self.inner.limiters().retain(|id, _| keep.contains(id));
    }
}
