//! One counter's buckets: a sharded table that governor's GCRA runs on, bounded by a
//! budget shared by every counter of a store.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;

use crate::scope::ScopeValue;

/// Shards per counter. At 2,000,000 keys in one counter a shard holds about 8,000, so
/// growing or sweeping one holds its lock for well under a millisecond.
const SHARDS: usize = 256;

/// Hashes a value that is already a keyed hash ([`CounterId`], [`Bucket`]) as the
/// number it is.
#[derive(Default)]
pub(super) struct IdHasher(u64);

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
pub(super) struct Bucket(u64, u64);

impl Bucket {
    #[inline]
    pub fn of(key: ScopeValue) -> Bucket {
        let v = key.as_u128();
        Bucket((v >> 64) as u64, v as u64)
    }

    #[inline]
    fn shard(self) -> usize {
        // The top bits of the high word; the table's hash is both words folded.
        (self.0 >> (64 - SHARDS.trailing_zeros())) as usize
    }
}

/// How many buckets are tracked, over every counter of one store, and how many may be.
pub(super) struct Budget {
    pub tracked: AtomicUsize,
    pub max: AtomicUsize,
}

impl Budget {
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
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
pub(super) struct Table(Arc<TableInner>);

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
    pub fn new(budget: Arc<Budget>) -> Table {
        Table(Arc::new(TableInner {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            budget,
        }))
    }

    #[inline]
    fn shard(&self, bucket: Bucket) -> MutexGuard<'_, Shard> {
        self.lock(bucket.shard())
    }

    #[inline]
    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        self.0.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes sure `bucket` is tracked (a new one starts full); false when it is not and
    /// the budget is spent.
    #[inline]
    pub fn admit(&self, bucket: Bucket) -> bool {
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
    #[inline]
    pub fn give_back(&self, bucket: Bucket, back: Nanos) {
        if let Some(tat) = self.shard(bucket).get_mut(&bucket) {
            *tat = tat.saturating_sub(back);
        }
    }

    /// Moves every bucket's time back by `by`: the same moments, read from a start
    /// `by` later. A time before the new start is a full bucket.
    pub fn rebase(&self, by: Nanos) {
        for i in 0..SHARDS {
            for tat in self.lock(i).values_mut() {
                *tat = tat.saturating_sub(by);
            }
        }
    }

    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).len()).sum()
    }
}

impl StateStore for Table {
    type Key = Bucket;

    #[inline]
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
