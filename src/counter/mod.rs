//! Where rate-limit state lives.
//!
//! A [`CounterStore`] applies the [`Charge`]s of one request all together or not at all.
//! [`MemoryCounters`] keeps them in this process with governor's GCRA; the trait returns
//! a future so that a store shared by replicas (Redis, say) can implement it unchanged.

mod memory;

use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration;

pub use memory::MemoryCounters;

use crate::scope::ScopeValue;

/// One unit of work for a counter: charge `cost` to the bucket `key` of counter `counter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// The index of the counter in [`Policy::counters`](crate::Policy::counters).
    pub counter: usize,
    /// The bucket: the caller's grant, session, or [`ScopeValue::GLOBAL`].
    pub key: ScopeValue,
    /// How many units the call costs (1 unless the limit has `increment_from`).
    pub cost: NonZeroU32,
}

/// Why a set of charges was not applied. When this is returned, nothing was charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeError {
    /// Charge number `index` does not fit. `retry_after` is how long until it would;
    /// `None` when it never can (its cost is more than the counter's `max`).
    Exceeded {
        /// Which charge of the slice did not fit.
        index: usize,
        /// The wait until it would fit.
        retry_after: Option<Duration>,
    },
    /// The store could not decide (a remote store is down). Callers deny: fail closed.
    Unavailable(String),
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
}
