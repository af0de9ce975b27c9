//! Backing off after Redis fails, then letting one request probe.

use std::time::{Duration, Instant};

pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Backs off after failures, then lets one request probe.
#[derive(Default)]
pub(super) struct Breaker {
    failures: u32,
    /// Script calls in a row that did not answer in time.
    slow: u32,
    retry_at: Option<Instant>,
    /// While a probe is out: when it is given up (a probe whose request went away
    /// never reports).
    probe_until: Option<Instant>,
}

pub(super) enum Admit {
    Go,
    /// Fail fast; the back-off has this long to run.
    Wait(Duration),
}

impl Breaker {
    pub fn admit(&mut self, deadline: Duration) -> Admit {
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

    pub fn failed(&mut self) {
        self.probe_until = None;
        self.failures = self.failures.saturating_add(1);
        let backoff = MIN_BACKOFF
            .saturating_mul(1 << self.failures.saturating_sub(1).min(6))
            .min(MAX_BACKOFF);
        self.retry_at = Some(Instant::now() + backoff);
    }

    /// Records a script call that did not answer within its deadline. One slow call
    /// (a burst of work, a pause) does not stop the requests that come next: only a
    /// second in a row backs off, as a failure does.
    pub fn slow(&mut self) {
        self.slow = self.slow.saturating_add(1);
        if self.slow >= 2 {
            self.failed();
        }
    }

    /// Records a success; true when it ends an outage.
    pub fn succeeded(&mut self) -> bool {
        let recovered = self.failures > 0;
        *self = Breaker::default();
        recovered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slow_call_does_not_back_off_but_a_second_or_a_failure_does() {
        let deadline = Duration::from_millis(100);
        let mut breaker = Breaker::default();
        breaker.slow();
        assert!(
            matches!(breaker.admit(deadline), Admit::Go),
            "one slow call"
        );
        breaker.slow();
        assert!(
            matches!(breaker.admit(deadline), Admit::Wait(_)),
            "two in a row"
        );
        assert!(breaker.succeeded());
        breaker.slow();
        assert!(!breaker.succeeded(), "a slow call alone is no outage");
        breaker.slow();
        assert!(
            matches!(breaker.admit(deadline), Admit::Go),
            "a success in between"
        );
        breaker.failed();
        assert!(
            matches!(breaker.admit(deadline), Admit::Wait(_)),
            "an error backs off"
        );
    }
}
