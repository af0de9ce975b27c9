//! The time in-memory counters read: the process's monotonic clock, or a [`FakeClock`]
//! that tests advance by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, QuantaClock, QuantaInstant, Reference};
use governor::nanos::Nanos;

/// A clock for tests: time stands still until [`advance`](FakeClock::advance)d. Clones
/// share one time, so a test keeps a clone and moves the clock of the counters it gave
/// the other to.
///
/// ```
/// use std::time::Duration;
/// use tower_mcp_policy::{FakeClock, PolicyLayer};
///
/// let clock = FakeClock::new();
/// let layer = PolicyLayer::with_clock(
///     r#"{"version":"1","default":"allow"}"#.parse::<tower_mcp_policy::Policy>()?,
///     clock.clone(),
/// );
/// clock.advance(Duration::from_secs(60)); // a minute passes for the layer's counters
/// assert_eq!(clock.elapsed(), Duration::from_secs(60));
/// # Ok::<(), tower_mcp_policy::PolicyError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    /// A clock at zero.
    pub fn new() -> FakeClock {
        FakeClock::default()
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How far the clock has been advanced.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// The clock of a [`MemoryCounters`](super::MemoryCounters).
#[derive(Debug, Clone)]
pub(crate) enum Time {
    Monotonic {
        clock: QuantaClock,
        origin: QuantaInstant,
    },
    Fake(FakeClock),
}

impl Time {
    pub fn monotonic() -> Time {
        let clock = QuantaClock::default();
        let origin = clock.now();
        Time::Monotonic { clock, origin }
    }
}

impl Clock for Time {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match self {
            Time::Monotonic { clock, origin } => clock.now().duration_since(*origin),
            Time::Fake(fake) => Nanos::new(fake.0.load(Ordering::Relaxed)),
        }
    }
}
