//! Live per-deployment statistics that strategies read on every decision.
//!
//! Everything is an atomic: recording an outcome is a few relaxed atomic
//! operations and reading never blocks. Time is passed in by the caller as a
//! monotonic millisecond count (`now_ms`), so nothing here reads a clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::cells::{UNKNOWN, add_to_window, read_ewma, read_window, update_ewma};
use crate::{DeploymentId, RoutingError};

/// Weight of a new sample in the latency averages unless configured otherwise.
pub const DEFAULT_EWMA_ALPHA: f64 = 0.2;

/// A record that never changes, returned for ids beyond the tracked range.
static UNTRACKED: DeploymentStats = DeploymentStats::new();

/// Why an upstream request failed, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The upstream answered 429.
    RateLimited,
    /// The upstream answered 5xx.
    ServerError,
    /// The request or the first byte took too long.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// The upstream rejected the credentials (401 or 403).
    Auth,
    /// The upstream rejected the request itself (other 4xx).
    ClientError,
    /// Anything else.
    Other,
}

impl ErrorClass {
    /// Every class, in declaration order.
    pub const ALL: [ErrorClass; 7] = [
        ErrorClass::RateLimited,
        ErrorClass::ServerError,
        ErrorClass::Timeout,
        ErrorClass::Connect,
        ErrorClass::Auth,
        ErrorClass::ClientError,
        ErrorClass::Other,
    ];

    /// A stable snake_case name, e.g. for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::ServerError => "server_error",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::Auth => "auth",
            ErrorClass::ClientError => "client_error",
            ErrorClass::Other => "other",
        }
    }
}

/// What a successful upstream request reports back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Time from sending the request to the end of the response.
    pub latency: Duration,
    /// Time to the first token of a stream, when there was one.
    pub ttft: Option<Duration>,
    /// Tokens to add to the current minute's usage. When an estimate was added
    /// up front with [`LiveStats::add_tokens`], pass the actual total here and
    /// take the estimate back with a negative `add_tokens`.
    pub tokens: u64,
}

/// How long a latency average lasts without a new sample before it is
/// stale: `latency-based` then tries the deployment again (one request at a
/// time), and the average restarts from that request's latency.
pub const STALE_SAMPLE_MS: u64 = 5 * 60_000;

/// Live statistics of one deployment. Padded to its own cache lines so that
/// deployments updated from different cores do not contend.
#[derive(Debug)]
#[repr(align(128))]
pub struct DeploymentStats {
    in_flight: AtomicU64,
    latency_us: AtomicU64,
    ttft_us: AtomicU64,
    /// When the averages last took a sample (clock milliseconds, at least
    /// 1; 0: never).
    sampled_at_ms: AtomicU64,
    successes: AtomicU64,
    failures: [AtomicU64; ErrorClass::ALL.len()],
    /// Failures since the last success.
    failing_run: AtomicU64,
    /// Minute number (high 32 bits) and requests in that minute (low 32 bits).
    requests: AtomicU64,
    /// Minute number (high 32 bits) and tokens in that minute (low 32 bits).
    tokens: AtomicU64,
}

impl Default for DeploymentStats {
    fn default() -> Self {
        Self::new()
    }
}

impl DeploymentStats {
    /// A deployment with no traffic yet.
    pub const fn new() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            latency_us: AtomicU64::new(UNKNOWN),
            ttft_us: AtomicU64::new(UNKNOWN),
            sampled_at_ms: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: [const { AtomicU64::new(0) }; ErrorClass::ALL.len()],
            failing_run: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
        }
    }

    /// Requests sent and not yet finished.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Average latency in microseconds; `None` before the first success.
    pub fn latency_ewma_us(&self) -> Option<f64> {
        read_ewma(&self.latency_us)
    }

    /// Whether the latency average has had no sample for
    /// [`STALE_SAMPLE_MS`] at `now_ms`: it may no longer say how fast the
    /// deployment is (it got no traffic because it looked slow).
    pub fn latency_stale(&self, now_ms: u64) -> bool {
        let at = self.sampled_at_ms.load(Relaxed);
        at != 0 && now_ms.saturating_sub(at) >= STALE_SAMPLE_MS
    }

    /// Average time to first token in microseconds; `None` before the first stream.
    pub fn ttft_ewma_us(&self) -> Option<f64> {
        read_ewma(&self.ttft_us)
    }

    /// Successful requests since start.
    pub fn successes(&self) -> u64 {
        self.successes.load(Relaxed)
    }

    /// Failed requests since the last success (since start without one),
    /// all classes together.
    pub fn failures_since_success(&self) -> u64 {
        self.failing_run.load(Relaxed)
    }

    /// Failed requests since start, all classes together.
    pub fn failures(&self) -> u64 {
        self.failures.iter().map(|f| f.load(Relaxed)).sum()
    }

    /// Failed requests of one class since start.
    pub fn failures_of(&self, class: ErrorClass) -> u64 {
        self.failures[class as usize].load(Relaxed)
    }

    /// Requests finished (successfully or not) in the minute containing `now_ms`.
    pub fn rpm_used(&self, now_ms: u64) -> u64 {
        read_window(&self.requests, now_ms)
    }

    /// Tokens counted in the minute containing `now_ms`.
    pub fn tpm_used(&self, now_ms: u64) -> u64 {
        read_window(&self.tokens, now_ms)
    }
}

/// Statistics for every deployment of a registry, indexed by [`DeploymentId`].
///
/// Ids at or beyond [`len`](Self::len) are not tracked: recording for them
/// does nothing and reading them gives an idle deployment with no samples.
///
/// Each deployment's record is shared ([`LiveStats::share`]): a deployment
/// that outlives a configuration reload keeps one record, which requests
/// sent before the reload and after it update together.
#[derive(Debug)]
pub struct LiveStats {
    slots: Box<[Arc<DeploymentStats>]>,
    alpha: f64,
}

impl LiveStats {
    /// Statistics for `n` deployments (ids `0..n`), averaging with [`DEFAULT_EWMA_ALPHA`].
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n).map(|_| Arc::new(DeploymentStats::new())).collect(),
            alpha: DEFAULT_EWMA_ALPHA,
        }
    }

    /// Statistics for `n` deployments whose averages give each new sample the
    /// weight `alpha`, which must be in `(0, 1]` (1 keeps only the last sample).
    pub fn with_alpha(n: usize, alpha: f64) -> Result<Self, RoutingError> {
        if !(alpha > 0.0 && alpha <= 1.0) {
            return Err(RoutingError::InvalidParameter {
                parameter: "alpha".into(),
                reason: format!("{alpha} is not in (0, 1]"),
            });
        }
        Ok(Self { alpha, ..Self::new(n) })
    }

    /// Number of tracked deployments.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no deployment is tracked.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Weight of a new sample in the averages.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The statistics of `id`, if it is tracked.
    pub fn get(&self, id: DeploymentId) -> Option<&DeploymentStats> {
        self.slots.get(id.0).map(|slot| &**slot)
    }

    /// The statistics of `id`; an idle record with no samples if it is not tracked.
    pub fn deployment(&self, id: DeploymentId) -> &DeploymentStats {
        self.get(id).unwrap_or(&UNTRACKED)
    }

    /// Counts a request to `id` as in flight until the returned guard is dropped.
    pub fn start(&self, id: DeploymentId) -> InFlight {
        let slot = self.slots.get(id.0).map(Arc::clone);
        if let Some(stats) = &slot {
            stats.in_flight.fetch_add(1, Relaxed);
        }
        InFlight { slot, id }
    }

    /// Records a successful request: updates the averages and counts the
    /// request and `outcome.tokens` in the current minute.
    pub fn record_success(&self, id: DeploymentId, outcome: Outcome, now_ms: u64) {
        let Some(stats) = self.get(id) else { return };
        // A stale average starts again from this sample: one inflated by a
        // single slow answer long ago must not keep the deployment out.
        let stale = stats.latency_stale(now_ms);
        stats.sampled_at_ms.store(now_ms.max(1), Relaxed);
        let alpha = if stale { 1.0 } else { self.alpha };
        update_ewma(&stats.latency_us, micros(outcome.latency), alpha);
        if let Some(ttft) = outcome.ttft {
            update_ewma(&stats.ttft_us, micros(ttft), alpha);
        }
        stats.successes.fetch_add(1, Relaxed);
        stats.failing_run.store(0, Relaxed);
        add_to_window(&stats.requests, 1, now_ms);
        add_to_window(&stats.tokens, i64::try_from(outcome.tokens).unwrap_or(i64::MAX), now_ms);
    }

    /// Counts a request to `id` in the current minute without an outcome
    /// (no latency sample, no failure): one the upstream took but whose
    /// answer nobody waited for, such as a stream the client abandoned.
    pub fn record_request(&self, id: DeploymentId, now_ms: u64) {
        if let Some(stats) = self.get(id) {
            add_to_window(&stats.requests, 1, now_ms);
        }
    }

    /// Records a failed request and counts it in the current minute.
    pub fn record_failure(&self, id: DeploymentId, class: ErrorClass, now_ms: u64) {
        let Some(stats) = self.get(id) else { return };
        stats.failures[class as usize].fetch_add(1, Relaxed);
        stats.failing_run.fetch_add(1, Relaxed);
        add_to_window(&stats.requests, 1, now_ms);
    }

    /// Takes back `tokens` added up front with [`LiveStats::add_tokens`] at
    /// `added_ms`, if the minute has not turned since: a new minute started
    /// without them, and must not lose other requests' tokens to them.
    pub fn take_back_tokens(&self, id: DeploymentId, tokens: u64, added_ms: u64, now_ms: u64) {
        if crate::cells::minute_of(added_ms) == crate::cells::minute_of(now_ms) {
            self.add_tokens(id, -i64::try_from(tokens).unwrap_or(i64::MAX), now_ms);
        }
    }

    /// Makes `to` share the record of `from_id` in `from`, e.g. for a
    /// deployment that outlives a configuration reload: its averages,
    /// counts, this minute's requests and tokens and its requests in flight
    /// go on, and requests still running on `from` report to the record
    /// `to` reads. Both must use the same clock.
    pub fn share(&mut self, to: DeploymentId, from: &LiveStats, from_id: DeploymentId) {
        if let (Some(to), Some(from)) = (self.slots.get_mut(to.0), from.slots.get(from_id.0)) {
            *to = Arc::clone(from);
        }
    }

    /// Adds `tokens` to the current minute's usage of `id`: an up-front estimate
    /// before dispatch, or a correction (negative to take tokens back; usage
    /// never goes below zero).
    pub fn add_tokens(&self, id: DeploymentId, tokens: i64, now_ms: u64) {
        if let Some(stats) = self.get(id) {
            add_to_window(&stats.tokens, tokens, now_ms);
        }
    }
}

/// A request counted as in flight; dropping it finishes the count.
pub struct InFlight {
    slot: Option<Arc<DeploymentStats>>,
    id: DeploymentId,
}

impl InFlight {
    /// The deployment the request went to.
    pub fn id(&self) -> DeploymentId {
        self.id
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").field("id", &self.id).finish()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(stats) = &self.slot {
            stats.in_flight.fetch_sub(1, Relaxed);
        }
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: DeploymentId = DeploymentId(0);

    fn ok(latency_ms: u64, ttft_ms: Option<u64>, tokens: u64) -> Outcome {
        Outcome {
            latency: Duration::from_millis(latency_ms),
            ttft: ttft_ms.map(Duration::from_millis),
            tokens,
        }
    }

    #[test]
    fn an_estimate_is_taken_back_only_in_the_minute_it_was_added() {
        let stats = LiveStats::new(1);
        stats.add_tokens(ID, 100, 1_000);
        stats.take_back_tokens(ID, 100, 1_000, 2_000);
        assert_eq!(stats.deployment(ID).tpm_used(2_000), 0);
        // Added at :59, the request ends in the next minute, where others used 500.
        stats.add_tokens(ID, 100, 59_000);
        stats.add_tokens(ID, 500, 61_000);
        stats.take_back_tokens(ID, 100, 59_000, 61_500);
        assert_eq!(stats.deployment(ID).tpm_used(61_500), 500);
    }

    /// A record shared across a reload counts the requests still running
    /// on the replaced statistics, and their outcomes.
    #[test]
    fn a_shared_record_counts_requests_sent_before_the_reload() {
        let old = LiveStats::new(2);
        let running = old.start(ID);
        old.record_success(ID, ok(100, None, 40), 1_000);
        let mut new = LiveStats::new(3);
        new.share(DeploymentId(2), &old, ID);
        let kept = new.deployment(DeploymentId(2));
        assert_eq!(kept.in_flight(), 1);
        assert_eq!(kept.successes(), 1);
        drop(old);
        drop(running);
        assert_eq!(kept.in_flight(), 0, "the request ended after the reload");
        new.record_success(DeploymentId(2), ok(100, None, 60), 2_000);
        assert_eq!(kept.tpm_used(2_000), 100);
        assert_eq!(new.deployment(ID).successes(), 0, "ids not shared start afresh");
    }

    #[test]
    fn averages_start_unknown_then_follow_the_ewma() {
        let stats = LiveStats::new(1);
        let d = stats.deployment(ID);
        assert_eq!(d.latency_ewma_us(), None);
        assert_eq!(d.ttft_ewma_us(), None);

        stats.record_success(ID, ok(100, None, 0), 0);
        assert_eq!(d.latency_ewma_us(), Some(100_000.0));
        assert_eq!(d.ttft_ewma_us(), None, "no stream, no ttft sample");

        stats.record_success(ID, ok(200, Some(50), 0), 0);
        // 100 ms + 0.2 × (200 ms − 100 ms) = 120 ms; the first ttft sample is taken as is.
        assert!((d.latency_ewma_us().unwrap() - 120_000.0).abs() < 1e-6);
        assert_eq!(d.ttft_ewma_us(), Some(50_000.0));

        stats.record_success(ID, ok(0, Some(0), 0), 0);
        assert!((d.latency_ewma_us().unwrap() - 96_000.0).abs() < 1e-6);
        assert!((d.ttft_ewma_us().unwrap() - 40_000.0).abs() < 1e-6);
        assert_eq!(d.successes(), 3);
    }

    #[test]
    fn alpha_is_configurable_and_validated() {
        let stats = LiveStats::with_alpha(1, 1.0).unwrap();
        stats.record_success(ID, ok(100, None, 0), 0);
        stats.record_success(ID, ok(30, None, 0), 0);
        assert_eq!(stats.deployment(ID).latency_ewma_us(), Some(30_000.0));
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            assert!(matches!(
                LiveStats::with_alpha(1, bad),
                Err(RoutingError::InvalidParameter { .. })
            ));
        }
        assert_eq!(LiveStats::new(3).alpha(), DEFAULT_EWMA_ALPHA);
    }

    #[test]
    fn concurrent_updates_are_not_lost_or_torn() {
        let stats = LiveStats::new(1);
        stats.record_success(ID, ok(1_000, None, 0), 0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..5_000 {
                        let _guard = stats.start(ID);
                        stats.record_success(ID, ok(10, None, 1), 0);
                    }
                });
            }
        });
        let d = stats.deployment(ID);
        // 20 000 samples of 10 ms pull the average from 1 s down to 10 ms.
        assert!((d.latency_ewma_us().unwrap() - 10_000.0).abs() < 1e-6);
        assert_eq!(d.successes(), 20_001);
        assert_eq!(d.rpm_used(0), 20_001);
        assert_eq!(d.tpm_used(0), 20_000);
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn in_flight_guards_count_until_dropped() {
        let stats = LiveStats::new(2);
        let a = stats.start(DeploymentId(1));
        let b = stats.start(DeploymentId(1));
        assert_eq!(a.id(), DeploymentId(1));
        assert_eq!(stats.deployment(DeploymentId(1)).in_flight(), 2);
        assert_eq!(stats.deployment(DeploymentId(0)).in_flight(), 0);
        drop(a);
        assert_eq!(stats.deployment(DeploymentId(1)).in_flight(), 1);
        drop(b);
        assert_eq!(stats.deployment(DeploymentId(1)).in_flight(), 0);
    }

    #[test]
    fn failures_are_counted_by_class_and_in_the_window() {
        let stats = LiveStats::new(1);
        stats.record_failure(ID, ErrorClass::RateLimited, 0);
        stats.record_failure(ID, ErrorClass::RateLimited, 0);
        stats.record_failure(ID, ErrorClass::Timeout, 0);
        let d = stats.deployment(ID);
        assert_eq!(d.failures(), 3);
        assert_eq!(d.failures_of(ErrorClass::RateLimited), 2);
        assert_eq!(d.failures_of(ErrorClass::Timeout), 1);
        assert_eq!(d.failures_of(ErrorClass::Auth), 0);
        assert_eq!(d.rpm_used(0), 3);
        assert_eq!(d.tpm_used(0), 0);
        assert_eq!(d.latency_ewma_us(), None, "failures carry no latency sample");
        let names: Vec<_> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), 7);
        assert!(names.contains(&"client_error"));
    }

    #[test]
    fn usage_window_rolls_over_each_minute() {
        let stats = LiveStats::new(1);
        let d = stats.deployment(ID);
        stats.record_success(ID, ok(1, None, 10), 1_000);
        stats.record_success(ID, ok(1, None, 20), 59_999);
        assert_eq!((d.rpm_used(59_999), d.tpm_used(59_999)), (2, 30));
        // The next minute starts empty, for readers and writers alike.
        assert_eq!((d.rpm_used(60_000), d.tpm_used(60_000)), (0, 0));
        stats.record_success(ID, ok(1, None, 5), 60_000);
        assert_eq!((d.rpm_used(60_001), d.tpm_used(60_001)), (1, 5));
        // A clock slightly behind sees, and adds to, the newer window.
        assert_eq!(d.rpm_used(59_000), 1);
        stats.record_failure(ID, ErrorClass::ServerError, 59_000);
        assert_eq!(d.rpm_used(60_500), 2);
        // Skipping minutes starts over too.
        assert_eq!(d.rpm_used(10 * 60_000), 0);
    }

    #[test]
    fn token_estimates_and_corrections() {
        let stats = LiveStats::new(1);
        let d = stats.deployment(ID);
        stats.add_tokens(ID, 1_000, 0);
        assert_eq!(d.tpm_used(0), 1_000);
        // The request used 800: count the actual total and take the estimate back.
        stats.record_success(ID, ok(1, None, 800), 0);
        stats.add_tokens(ID, -1_000, 0);
        assert_eq!(d.tpm_used(0), 800);
        stats.add_tokens(ID, -5_000, 0);
        assert_eq!(d.tpm_used(0), 0, "usage saturates at zero");
        stats.add_tokens(ID, i64::MAX, 0);
        assert_eq!(d.tpm_used(0), u64::from(u32::MAX), "and at the top of the counter");
    }

    #[test]
    fn untracked_ids_are_ignored() {
        let stats = LiveStats::new(1);
        let far = DeploymentId(5);
        let guard = stats.start(far);
        stats.record_success(far, ok(1, None, 1), 0);
        stats.record_failure(far, ErrorClass::Other, 0);
        stats.add_tokens(far, 10, 0);
        assert!(stats.get(far).is_none());
        assert_eq!(stats.deployment(far).in_flight(), 0);
        assert_eq!(stats.deployment(far).latency_ewma_us(), None);
        drop(guard);
        assert_eq!(stats.len(), 1);
        assert!(!stats.is_empty());
        assert!(format!("{:?}", stats.start(ID)).contains("InFlight"));
    }
}
