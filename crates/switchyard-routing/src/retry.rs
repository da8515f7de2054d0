//! How long to wait before the next attempt: exponential backoff with full
//! jitter, honouring an upstream's `Retry-After`.
//!
//! Pure arithmetic: the caller sleeps, so the policy can be tested without a clock.

use std::time::Duration;

use crate::RoutingError;

/// The retry schedule of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first within one model group.
    pub num_retries: u32,
    /// Backoff before the first retry; doubled for each later one.
    pub base_backoff: Duration,
    /// No backoff is longer than this.
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this is not waited for: the attempt fails
    /// over to another deployment or fallback, or the error goes to the client.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            num_retries: 2,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// What to do before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Sleep this long, then try again.
    Sleep(Duration),
    /// The upstream asked for a pause longer than the policy allows.
    TooLong(Duration),
}

impl RetryPolicy {
    /// Checks the parameters: `base_backoff` may not exceed `max_backoff`.
    pub fn validate(&self) -> Result<(), RoutingError> {
        if self.base_backoff > self.max_backoff {
            return Err(RoutingError::InvalidParameter {
                parameter: "base_backoff".into(),
                reason: "must not exceed max_backoff".into(),
            });
        }
        Ok(())
    }

    /// The wait before retry number `retry` (1 for the first retry).
    ///
    /// Without `retry_after`, a uniformly random duration up to
    /// `base · 2^(retry-1)` capped at `max_backoff` ("full jitter": retries
    /// from many clients spread out instead of arriving together). When the
    /// same deployment is tried again and it sent `Retry-After`, the wait is at
    /// least that long — or [`Wait::TooLong`] when it exceeds `max_retry_after`.
    pub fn wait(&self, retry: u32, retry_after: Option<Duration>, rng: &mut fastrand::Rng) -> Wait {
        let exp = retry.saturating_sub(1).min(30);
        let ceiling = self.base_backoff.saturating_mul(1u32 << exp).min(self.max_backoff);
        let jittered = Duration::from_nanos(rng.u64(0..=ceiling.as_nanos().min(u64::MAX as u128) as u64));
        match retry_after {
            Some(after) if after > self.max_retry_after => Wait::TooLong(after),
            Some(after) => Wait::Sleep(after.max(jittered)),
            None => Wait::Sleep(jittered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            num_retries: 3,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1_000),
            max_retry_after: Duration::from_secs(5),
        }
    }

    fn sleep(w: Wait) -> Duration {
        match w {
            Wait::Sleep(d) => d,
            Wait::TooLong(d) => panic!("unexpected TooLong({d:?})"),
        }
    }

    #[test]
    fn backoff_grows_exponentially_within_the_cap_with_jitter() {
        let p = policy();
        let mut rng = fastrand::Rng::with_seed(7);
        for (retry, ceiling_ms) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1_000), (40, 1_000)] {
            let draws: Vec<Duration> = (0..2_000).map(|_| sleep(p.wait(retry, None, &mut rng))).collect();
            let max = draws.iter().max().copied().unwrap_or_default();
            let min = draws.iter().min().copied().unwrap_or_default();
            assert!(max <= Duration::from_millis(ceiling_ms), "retry {retry}: {max:?}");
            assert!(
                max > Duration::from_millis(ceiling_ms * 9 / 10),
                "retry {retry}: jitter reaches the ceiling"
            );
            assert!(
                min < Duration::from_millis(ceiling_ms / 10),
                "retry {retry}: jitter spreads down to zero"
            );
        }
    }

    #[test]
    fn retry_after_is_a_floor_and_too_long_is_reported() {
        let p = policy();
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..100 {
            assert!(sleep(p.wait(1, Some(Duration::from_secs(2)), &mut rng)) == Duration::from_secs(2));
        }
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(6)), &mut rng),
            Wait::TooLong(Duration::from_secs(6))
        );
    }

    #[test]
    fn validation_names_the_parameter() {
        let p = RetryPolicy {
            base_backoff: Duration::from_secs(2),
            ..policy()
        };
        assert!(p.validate().unwrap_err().to_string().contains("base_backoff"));
        assert!(policy().validate().is_ok());
    }
}
