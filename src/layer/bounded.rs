//! A map from hashed ids to what the layer knows of them, holding at most so many
//! entries: past the bound the oldest are forgotten first. Sessions the server issued
//! and the owners of its tasks are kept in one each.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::scope::ScopeValue;

#[derive(Debug)]
pub(crate) struct Bounded<V> {
    max: usize,
    entries: Mutex<Entries<V>>,
}

#[derive(Debug)]
struct Entries<V> {
    /// Key → its value and the generation it was inserted in.
    live: HashMap<ScopeValue, (V, u64)>,
    /// Insertion order, for forgetting the oldest; entries of removed keys linger
    /// until they reach the front (their generation no longer matches).
    order: VecDeque<(ScopeValue, u64)>,
    generation: u64,
}

impl<V: Clone> Bounded<V> {
    /// A map of at most `max` entries (`0` remembers nothing).
    pub fn new(max: usize) -> Bounded<V> {
        Bounded {
            max,
            entries: Mutex::new(Entries {
                live: HashMap::new(),
                order: VecDeque::new(),
                generation: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries<V>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value of `key`, if it is remembered.
    pub fn get(&self, key: ScopeValue) -> Option<V> {
        self.lock().live.get(&key).map(|(value, _)| value.clone())
    }

    /// Remembers `value` for `key` (as the newest entry), forgetting the oldest entries
    /// past the bound.
    pub fn insert(&self, key: ScopeValue, value: V) {
        if self.max == 0 {
            return;
        }
        let mut entries = self.lock();
        entries.generation += 1;
        let generation = entries.generation;
        entries.live.insert(key, (value, generation));
        entries.order.push_back((key, generation));
        while entries.live.len() > self.max {
            let Some((oldest, generation)) = entries.order.pop_front() else {
                break;
            };
            if entries.live.get(&oldest).map(|(_, g)| *g) == Some(generation) {
                entries.live.remove(&oldest);
            }
        }
        if entries.order.len() > 2 * self.max {
            // Mostly removed keys: drop their entries (amortized O(1) per insert).
            let Entries { live, order, .. } = &mut *entries;
            order.retain(|(key, generation)| live.get(key).map(|(_, g)| g) == Some(generation));
        }
    }

    /// Forgets `key`.
    pub fn remove(&self, key: ScopeValue) {
        self.lock().live.remove(&key);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.lock().order.len()
    }
}
