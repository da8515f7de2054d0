//! Cooldowns: a circuit breaker per deployment.
//!
//! A deployment that fails `allowed_fails` times (rate limits, server errors,
//! timeouts, refused connections, broken or malformed answers) within
//! `window_ms` is skipped for `cooldown_ms`; then exactly one request probes
//! it (half-open): success closes the breaker, failure opens it again. A
//! probe the upstream answered with a client error (the request's fault, not
//! the deployment's) closes it too, and a probe that ended without a verdict
//! can hand the probe to the next request at once
//! ([`Cooldowns::release_probe`]). An authentication failure (401,
//! 403) marks the deployment's key invalid until the configuration is reloaded.
//! All state is atomics; the caller passes a monotonic clock in milliseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::{DeploymentId, ErrorClass};

/// When a deployment is put in cooldown, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CooldownPolicy {
    /// Failures within the window that open the breaker.
    pub allowed_fails: u32,
    /// The window failures are counted in, in milliseconds.
    pub window_ms: u64,
    /// How long an open breaker skips the deployment, in milliseconds.
    pub cooldown_ms: u64,
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        Self {
            allowed_fails: 3,
            window_ms: 60_000,
            cooldown_ms: 30_000,
        }
    }
}

/// The state of one deployment's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Serving normally.
    Closed,
    /// Skipped until the cooldown ends.
    Open,
    /// One probe request is in flight.
    HalfOpen,
    /// The upstream rejected the key; skipped until reload.
    KeyInvalid,
}

impl BreakerState {
    /// Lower-case name for the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::KeyInvalid => "key_invalid",
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Bits of a phase word that hold its time.
const TIME_BITS: u32 = 62;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// A breaker's state and its time in one word, so that both change together:
/// open, when the cooldown ends; half-open, when the probe started.
fn pack(state: u8, at_ms: u64) -> u64 {
    // A time past the word's range (a cooldown of "for ever") stays the
    // latest time, never wraps to an early one.
    (u64::from(state) << TIME_BITS) | at_ms.min(TIME_MASK)
}

/// A phase word's state and time.
fn unpack(phase: u64) -> (u8, u64) {
    ((phase >> TIME_BITS) as u8, phase & TIME_MASK)
}

#[derive(Debug, Default)]
struct Breaker {
    /// The state and its time ([`pack`]).
    phase: AtomicU64,
    window_start: AtomicU64,
    failures: AtomicU32,
}

/// A deployment's breaker as reported by the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CooldownStatus {
    /// The deployment.
    pub id: DeploymentId,
    /// Its state now.
    pub state: BreakerState,
    /// Failures counted in the current window.
    pub recent_failures: u32,
    /// Milliseconds until an open breaker lets a probe through (0 otherwise).
    pub remaining_ms: u64,
}

/// One breaker per deployment, indexed by [`DeploymentId`].
///
/// A breaker can be shared with the state a configuration reload replaces
/// ([`Cooldowns::share`]), so that requests sent before the reload still
/// open or close it; whether a key was rejected is not shared.
#[derive(Debug)]
pub struct Cooldowns {
    policy: CooldownPolicy,
    breakers: Vec<Arc<Breaker>>,
    /// Whether the upstream rejected each deployment's key.
    keys_invalid: Vec<AtomicBool>,
}

/// What [`Cooldowns::claim`] gave a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The breaker is closed: any number of requests may go.
    Closed,
    /// The caller is the half-open probe: it reports back, or hands the
    /// probe back with [`Cooldowns::release_probe`].
    Probe,
}

impl Cooldowns {
    /// Breakers for `n` deployments.
    pub fn new(n: usize, policy: CooldownPolicy) -> Self {
        Self {
            policy,
            breakers: (0..n).map(|_| Arc::new(Breaker::default())).collect(),
            keys_invalid: (0..n).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> CooldownPolicy {
        self.policy
    }

    /// Whether `id` could take a request now, without claiming anything: true
    /// when closed, or when an open breaker's cooldown (or a lost probe's
    /// period) has ended. Use it to filter candidates, then claim the chosen
    /// one with [`Cooldowns::is_available`].
    pub fn may_serve(&self, id: DeploymentId, now_ms: u64) -> bool {
        let Some(b) = self.breakers.get(id.0) else {
            return true;
        };
        if self.key_invalid(id) {
            return false;
        }
        match unpack(b.phase.load(Ordering::Acquire)) {
            (CLOSED, _) => true,
            (OPEN, until) => now_ms >= until,
            (_, since) => now_ms.saturating_sub(since) >= self.policy.cooldown_ms,
        }
    }

    /// Whether the upstream rejected `id`'s key (until a reload).
    pub fn key_invalid(&self, id: DeploymentId) -> bool {
        self.keys_invalid.get(id.0).is_some_and(|k| k.load(Ordering::Acquire))
    }

    /// Whether a request may go to `id` now. When an open breaker's cooldown has
    /// ended, exactly one caller gets `true` and becomes the half-open probe; a
    /// probe that never reports back is replaced after another cooldown period.
    pub fn is_available(&self, id: DeploymentId, now_ms: u64) -> bool {
        self.claim(id, now_ms).is_some()
    }

    /// [`Cooldowns::is_available`], saying whether the caller became the
    /// half-open probe: only a probe's owner may hand it back
    /// ([`Cooldowns::release_probe`]). `None`: the request may not go.
    pub fn claim(&self, id: DeploymentId, now_ms: u64) -> Option<Claim> {
        let Some(b) = self.breakers.get(id.0) else {
            return Some(Claim::Closed);
        };
        if self.key_invalid(id) {
            return None;
        }
        // State and time change in one step: of the callers that find the
        // cooldown over (or a probe lost), one becomes the probe.
        let phase = b.phase.load(Ordering::Acquire);
        let due = match unpack(phase) {
            (CLOSED, _) => return Some(Claim::Closed),
            (OPEN, until) => now_ms >= until,
            (_, since) => now_ms.saturating_sub(since) >= self.policy.cooldown_ms,
        };
        let claimed = due
            && b.phase
                .compare_exchange(phase, pack(HALF_OPEN, now_ms), Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        claimed.then_some(Claim::Probe)
    }

    /// A request to `id` succeeded. When it was the half-open probe
    /// (`claim`), the breaker closes; another request's success (one sent
    /// before the breaker opened) leaves the probe to decide.
    pub fn record_success(&self, id: DeploymentId, claim: Claim, _now_ms: u64) {
        if claim == Claim::Probe
            && let Some(b) = self.breakers.get(id.0)
            && b.phase
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |phase| {
                    (unpack(phase).0 == HALF_OPEN).then_some(pack(CLOSED, 0))
                })
                .is_ok()
        {
            b.failures.store(0, Ordering::Release);
        }
    }

    /// Makes `to` share the breaker of `from_id` in `from`, e.g. for a
    /// deployment that outlives a configuration reload (same clock): its
    /// state, failures and probe go on, and requests still running on
    /// `from` report to it. A key marked invalid is not shared: a reload is
    /// how it is cleared.
    pub fn share(&mut self, to: DeploymentId, from: &Cooldowns, from_id: DeploymentId) {
        if let (Some(to), Some(from)) = (self.breakers.get_mut(to.0), from.breakers.get(from_id.0)) {
            *to = Arc::clone(from);
        }
    }

    /// A half-open probe to `id` ended without telling whether the deployment
    /// works (the request's own deadline passed first): the breaker stays open,
    /// and the next request may probe at once.
    pub fn release_probe(&self, id: DeploymentId, now_ms: u64) {
        if let Some(b) = self.breakers.get(id.0) {
            let _ = b.phase.fetch_update(Ordering::AcqRel, Ordering::Acquire, |phase| {
                (unpack(phase).0 == HALF_OPEN).then_some(pack(OPEN, now_ms))
            });
        }
    }

    /// A request to `id` failed with `class`. Returns `true` when this failure
    /// opened the breaker, or marked a key that was taken as valid rejected
    /// (a rejection of a key already marked changes nothing). A client error is the request's fault: it counts no
    /// failure, and as a probe's answer it shows the upstream is up. Only the
    /// half-open probe (`claim`) reopens a half-open breaker: a request sent
    /// before the breaker opened, failing late, counts its failure only.
    pub fn record_failure(&self, id: DeploymentId, class: ErrorClass, claim: Claim, now_ms: u64) -> bool {
        let Some(b) = self.breakers.get(id.0) else {
            return false;
        };
        match class {
            ErrorClass::Auth => {
                return self
                    .keys_invalid
                    .get(id.0)
                    .is_some_and(|key| !key.swap(true, Ordering::AcqRel));
            }
            ErrorClass::RateLimited
            | ErrorClass::ServerError
            | ErrorClass::Timeout
            | ErrorClass::Connect
            | ErrorClass::Other => {}
            ErrorClass::ClientError => {
                self.record_success(id, claim, now_ms);
                return false;
            }
        }
        let open = |b: &Breaker| {
            b.phase.store(
                pack(OPEN, now_ms.saturating_add(self.policy.cooldown_ms)),
                Ordering::Release,
            );
            b.failures.store(0, Ordering::Release);
            b.window_start.store(now_ms, Ordering::Release);
        };
        if claim == Claim::Probe && unpack(b.phase.load(Ordering::Acquire)).0 == HALF_OPEN {
            open(b);
            return true;
        }
        // A window starts at the first failure after the last one ended (or
        // after the breaker last opened), not at start-up or at the opening.
        let start = b.window_start.load(Ordering::Acquire);
        let fresh = b.failures.load(Ordering::Acquire) == 0 || now_ms.saturating_sub(start) > self.policy.window_ms;
        let failures = if fresh
            && b.window_start
                .compare_exchange(start, now_ms, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.failures.store(1, Ordering::Release);
            1
        } else {
            b.failures.fetch_add(1, Ordering::AcqRel) + 1
        };
        if failures >= self.policy.allowed_fails && unpack(b.phase.load(Ordering::Acquire)).0 == CLOSED {
            open(b);
            return true;
        }
        false
    }

    /// Every breaker's state, for the admin API.
    pub fn snapshot(&self, now_ms: u64) -> Vec<CooldownStatus> {
        self.breakers
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let (raw, at) = unpack(b.phase.load(Ordering::Acquire));
                let state = if self.key_invalid(DeploymentId(i)) {
                    BreakerState::KeyInvalid
                } else {
                    match raw {
                        CLOSED => BreakerState::Closed,
                        OPEN => BreakerState::Open,
                        _ => BreakerState::HalfOpen,
                    }
                };
                let remaining_ms = if raw == OPEN { at.saturating_sub(now_ms) } else { 0 };
                CooldownStatus {
                    id: DeploymentId(i),
                    state,
                    recent_failures: b.failures.load(Ordering::Acquire),
                    remaining_ms,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: DeploymentId = DeploymentId(0);

    fn breakers() -> Cooldowns {
        Cooldowns::new(
            2,
            CooldownPolicy {
                allowed_fails: 2,
                window_ms: 1_000,
                cooldown_ms: 5_000,
            },
        )
    }

    /// Callers racing for an open breaker whose cooldown ended long ago
    /// (as long as a lost probe's period): exactly one becomes the probe.
    #[test]
    fn racing_callers_get_one_probe() {
        for _ in 0..200 {
            let c = std::sync::Arc::new(breakers());
            c.record_failure(D, ErrorClass::ServerError, Claim::Closed, 0);
            c.record_failure(D, ErrorClass::ServerError, Claim::Closed, 0);
            let start = std::sync::Arc::new(std::sync::Barrier::new(4));
            let probes: usize = (0..4)
                .map(|_| {
                    let (c, start) = (c.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        usize::from(c.claim(D, 20_000) == Some(Claim::Probe))
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .sum();
            assert_eq!(probes, 1);
        }
    }

    /// A breaker shared across a reload: the probe claimed before it
    /// closes the breaker the new configuration reads; a key rejected
    /// before it is not carried.
    /// A failure window starts at the first failure, not at start-up.
    #[test]
    fn a_window_starts_at_its_first_failure() {
        let c = breakers();
        assert!(!c.record_failure(D, ErrorClass::ServerError, Claim::Closed, 900));
        assert!(
            c.record_failure(D, ErrorClass::ServerError, Claim::Closed, 1_100),
            "two failures 200 ms apart, within one window"
        );
    }

    #[test]
    fn a_shared_breaker_hears_the_probe_sent_before_the_reload() {
        let old = breakers();
        old.record_failure(D, ErrorClass::ServerError, Claim::Closed, 0);
        old.record_failure(D, ErrorClass::ServerError, Claim::Closed, 0);
        assert_eq!(old.claim(D, 6_000), Some(Claim::Probe));
        old.record_failure(DeploymentId(1), ErrorClass::Auth, Claim::Closed, 6_000);
        let mut new = breakers();
        new.share(D, &old, D);
        new.share(DeploymentId(1), &old, DeploymentId(1));
        assert_eq!(new.snapshot(6_000)[0].state, BreakerState::HalfOpen);
        assert_eq!(new.claim(D, 6_001), None, "one probe at a time across the reload");
        old.record_success(D, Claim::Probe, 6_500);
        assert_eq!(new.claim(D, 6_600), Some(Claim::Closed));
        assert!(old.key_invalid(DeploymentId(1)));
        assert!(!new.key_invalid(DeploymentId(1)), "a reload clears a rejected key");
        new.record_failure(DeploymentId(1), ErrorClass::Auth, Claim::Closed, 7_000);
        assert!(new.key_invalid(DeploymentId(1)));
    }

    /// A cooldown of "for ever" keeps the deployment out; its end does not
    /// wrap around to a time already past.
    #[test]
    fn a_huge_cooldown_does_not_wrap() {
        let c = Cooldowns::new(
            1,
            CooldownPolicy {
                allowed_fails: 1,
                window_ms: 1_000,
                cooldown_ms: u64::MAX >> 1,
            },
        );
        c.record_failure(D, ErrorClass::ServerError, Claim::Closed, 10);
        assert!(!c.may_serve(D, 1_000_000));
        assert_eq!(c.claim(D, 1_000_000), None);
    }

    #[test]
    fn opens_after_allowed_fails_then_probes_once_and_closes() {
        let c = breakers();
        assert!(!c.record_failure(D, ErrorClass::ServerError, Claim::Closed, 0));
        assert!(c.is_available(D, 10));
        assert!(c.record_failure(D, ErrorClass::Timeout, Claim::Closed, 20));
        assert!(!c.is_available(D, 30));
        assert!(!c.may_serve(D, 30));
        assert!(c.may_serve(D, 5_020), "may_serve does not claim the probe");
        assert!(c.is_available(DeploymentId(1), 30), "other deployments are unaffected");
        assert_eq!(c.snapshot(1_020)[0].remaining_ms, 4_000);
        assert!(c.is_available(D, 5_020), "the cooldown ended: one probe");
        assert!(!c.is_available(D, 5_021), "only one probe at a time");
        assert_eq!(c.snapshot(5_021)[0].state, BreakerState::HalfOpen);
        c.record_success(D, Claim::Probe, 5_100);
        assert!(c.is_available(D, 5_101));
        assert_eq!(c.snapshot(5_101)[0].state, BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_and_a_lost_probe_is_replaced() {
        let c = breakers();
        c.record_failure(D, ErrorClass::Connect, Claim::Closed, 0);
        c.record_failure(D, ErrorClass::Connect, Claim::Closed, 1);
        assert!(c.is_available(D, 5_001));
        assert!(c.record_failure(D, ErrorClass::RateLimited, Claim::Probe, 5_002));
        assert!(!c.is_available(D, 9_000));
        assert!(c.is_available(D, 10_002));
        assert!(!c.is_available(D, 12_000));
        assert!(c.is_available(D, 15_002), "a probe that never reported is replaced");
    }

    #[test]
    fn failures_outside_the_window_and_client_errors_do_not_count() {
        let c = breakers();
        c.record_failure(D, ErrorClass::ServerError, Claim::Closed, 0);
        c.record_failure(D, ErrorClass::ServerError, Claim::Closed, 2_000);
        assert!(c.is_available(D, 2_001));
        c.record_failure(D, ErrorClass::ClientError, Claim::Closed, 2_002);
        assert!(c.is_available(D, 2_003));
    }

    #[test]
    fn broken_answers_count_as_failures() {
        let c = breakers();
        assert!(!c.record_failure(D, ErrorClass::Other, Claim::Closed, 0));
        assert!(
            c.record_failure(D, ErrorClass::Other, Claim::Closed, 1),
            "two broken answers open the breaker"
        );
        assert!(!c.may_serve(D, 2));
    }

    #[test]
    fn a_probe_answered_with_a_client_error_closes_the_breaker() {
        let c = breakers();
        c.record_failure(D, ErrorClass::Timeout, Claim::Closed, 0);
        c.record_failure(D, ErrorClass::Timeout, Claim::Closed, 1);
        assert!(c.is_available(D, 5_001), "the probe");
        assert!(!c.record_failure(D, ErrorClass::ClientError, Claim::Probe, 5_002));
        assert_eq!(c.snapshot(5_003)[0].state, BreakerState::Closed);
        assert!(c.may_serve(D, 5_003));
    }

    /// While a probe is in flight, the answers of requests sent before the
    /// breaker opened neither close nor reopen it: the probe decides.
    #[test]
    fn only_the_probe_moves_a_half_open_breaker() {
        let c = breakers();
        c.record_failure(D, ErrorClass::ServerError, Claim::Closed, 0);
        c.record_failure(D, ErrorClass::ServerError, Claim::Closed, 1);
        assert_eq!(c.claim(D, 5_001), Some(Claim::Probe));
        assert!(
            !c.record_failure(D, ErrorClass::Timeout, Claim::Closed, 5_010),
            "a late failure"
        );
        c.record_success(D, Claim::Closed, 5_020);
        assert!(!c.record_failure(D, ErrorClass::ClientError, Claim::Closed, 5_030));
        assert_eq!(c.snapshot(5_040)[0].state, BreakerState::HalfOpen);
        c.record_success(D, Claim::Probe, 5_050);
        assert_eq!(c.snapshot(5_050)[0].state, BreakerState::Closed);
        // And a probe that fails reopens it, whatever others report.
        for t in 6_000..6_002 {
            c.record_failure(D, ErrorClass::ServerError, Claim::Closed, t);
        }
        assert_eq!(c.claim(D, 11_002), Some(Claim::Probe));
        c.record_success(D, Claim::Closed, 11_003);
        assert!(c.record_failure(D, ErrorClass::ServerError, Claim::Probe, 11_004));
        assert_eq!(c.snapshot(11_005)[0].state, BreakerState::Open);
    }

    #[test]
    fn a_claim_says_whether_it_is_the_probe() {
        let c = breakers();
        assert_eq!(c.claim(D, 0), Some(Claim::Closed));
        for t in 0..3 {
            c.record_failure(D, ErrorClass::ServerError, Claim::Closed, t);
        }
        assert_eq!(c.claim(D, 10), None, "open");
        assert_eq!(c.claim(D, 5_010), Some(Claim::Probe));
        assert_eq!(c.claim(D, 5_011), None, "one probe at a time");
    }

    #[test]
    fn a_released_probe_can_be_claimed_again_at_once() {
        let c = breakers();
        c.record_failure(D, ErrorClass::ServerError, Claim::Closed, 0);
        c.record_failure(D, ErrorClass::ServerError, Claim::Closed, 1);
        assert!(c.is_available(D, 5_001));
        assert!(!c.may_serve(D, 5_500), "the probe is in flight");
        c.release_probe(D, 5_500);
        assert_eq!(c.snapshot(5_500)[0].state, BreakerState::Open);
        assert!(c.may_serve(D, 5_500));
        assert!(c.is_available(D, 5_500), "the next request probes");
        assert!(!c.is_available(D, 5_501));
        c.release_probe(DeploymentId(1), 5_600);
        assert_eq!(
            c.snapshot(5_600)[1].state,
            BreakerState::Closed,
            "a closed breaker stays closed"
        );
    }

    #[test]
    fn auth_failures_mark_the_key_invalid() {
        let c = breakers();
        assert!(c.record_failure(D, ErrorClass::Auth, Claim::Closed, 0));
        assert!(!c.is_available(D, 1_000_000));
        assert_eq!(c.snapshot(0)[0].state, BreakerState::KeyInvalid);
        // A key already marked is not put in cooldown again (the metric and
        // the warning count changes, not each last-resort try).
        assert!(!c.record_failure(D, ErrorClass::Auth, Claim::Closed, 10));
        assert_eq!(c.snapshot(10)[0].state, BreakerState::KeyInvalid);
    }
}
