//! `usage-based`: the deployment with the most rate-limit headroom left this minute.

use crate::strategy::{Candidate, Reservoir};
use crate::{RouteContext, RoutingError, RoutingStrategy};

/// Chooses the candidate with the most headroom left under its rpm and tpm
/// limits in the current minute; ties are broken at random in proportion to
/// weight. Candidates with no headroom left are skipped.
///
/// Headroom is the smaller of `(rpm − requests) / rpm`, where requests are
/// those finished this minute plus those in flight, and `(tpm − tokens −
/// estimated_tokens) / tpm` (a request that fills the minute exactly still
/// fits); a missing limit counts as 1 (all free).
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageBased;

impl UsageBased {
    /// The strategy's registered name.
    pub const NAME: &'static str = "usage-based";
}

/// Fraction of `limit` left after `used`; 1 without a limit, 0 when exhausted.
fn left(limit: Option<u64>, used: u64) -> f64 {
    match limit {
        None => 1.0,
        Some(0) => 0.0,
        Some(limit) => limit.saturating_sub(used) as f64 / limit as f64,
    }
}

/// Fraction of the token `limit` left after `used` and the request's own
/// `estimated` tokens: 1 without a limit, 0 when the request does not fit,
/// and above 0 when it fills the minute exactly.
fn tokens_left(limit: Option<u64>, used: u64, estimated: u64) -> f64 {
    let after = used.saturating_add(estimated);
    match limit {
        None => 1.0,
        Some(limit) if used >= limit || after > limit => 0.0,
        Some(limit) => ((limit - after) as f64 / limit as f64).max(f64::MIN_POSITIVE),
    }
}

/// The headroom of one candidate for a request of `estimated_tokens`.
fn headroom(c: &Candidate<'_>, now_ms: u64, estimated_tokens: u64) -> f64 {
    let requests = c.stats.rpm_used(now_ms).saturating_add(c.stats.in_flight());
    let tokens = tokens_left(c.deployment.tpm, c.stats.tpm_used(now_ms), estimated_tokens);
    left(c.deployment.rpm, requests).min(tokens)
}

impl RoutingStrategy for UsageBased {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn choose(&self, ctx: &RouteContext<'_>, rng: &mut fastrand::Rng) -> Result<usize, RoutingError> {
        let mut most = 0.0;
        let mut pick = Reservoir::default();
        for c in ctx.iter() {
            let room = headroom(&c, ctx.now_ms, ctx.estimated_tokens);
            if room > most {
                most = room;
                pick.restart(c.index, c.deployment.weight);
            } else if room == most && room > 0.0 {
                pick.offer(c.index, c.deployment.weight, rng);
            }
        }
        pick.chosen().ok_or_else(|| ctx.no_deployment())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::tests::{counts, deployment};
    use crate::{DeploymentId, DeploymentInfo, LiveStats, ModelGroup, Outcome};

    /// A group of deployments with the given `(rpm, tpm)` limits.
    fn group(limits: &[(Option<u64>, Option<u64>)]) -> ModelGroup {
        let deployments = limits
            .iter()
            .enumerate()
            .map(|(i, (rpm, tpm))| DeploymentInfo {
                rpm: *rpm,
                tpm: *tpm,
                ..deployment(i, 1.0)
            })
            .collect();
        ModelGroup::new("g", deployments).unwrap()
    }

    /// Records `n` successful requests of `tokens_each` tokens to deployment `id`.
    fn requests(stats: &LiveStats, id: usize, n: u64, tokens_each: u64, now_ms: u64) {
        for _ in 0..n {
            let outcome = Outcome {
                tokens: tokens_each,
                ..Outcome::default()
            };
            stats.record_success(DeploymentId(id), outcome, now_ms);
        }
    }

    /// Live statistics of one deployment that used `tokens` at time 0.
    fn stats_with(tokens: u64) -> LiveStats {
        let stats = LiveStats::new(1);
        requests(&stats, 0, 1, tokens, 0);
        stats
    }

    /// One decision among all of `group`'s deployments, with a random generator seeded with `seed`.
    fn choose(
        group: &ModelGroup,
        stats: &LiveStats,
        now_ms: u64,
        estimated_tokens: u64,
        seed: u64,
    ) -> Result<usize, RoutingError> {
        let candidates: Vec<usize> = (0..group.deployments().len()).collect();
        let ctx = RouteContext {
            group,
            candidates: &candidates,
            stats,
            now_ms,
            estimated_tokens,
        };
        UsageBased.choose(&ctx, &mut fastrand::Rng::with_seed(seed))
    }

    #[test]
    fn avoids_the_exhausted_deployment() {
        let limited = group(&[(Some(10), None), (Some(100), None)]);
        let stats = LiveStats::new(2);
        requests(&stats, 0, 10, 0, 0);
        requests(&stats, 1, 90, 0, 0);
        // 0 is at its limit; 1 has 10% left.
        assert_eq!(counts(&UsageBased, &limited, &stats, 100), vec![0, 100]);
        // In the next minute both are free again.
        let draws: Vec<_> = (0..100).map(|i| choose(&limited, &stats, 60_000, 0, i)).collect();
        assert!(draws.contains(&Ok(0)) && draws.contains(&Ok(1)));
    }

    #[test]
    fn prefers_the_most_headroom_counting_tokens_and_in_flight() {
        let limited = group(&[(Some(100), Some(10_000)), (Some(100), Some(10_000)), (None, None)]);
        let stats = LiveStats::new(3);
        requests(&stats, 0, 10, 100, 0); // 90% of requests and 90% of tokens left
        requests(&stats, 1, 5, 500, 0); // 95% of requests and 75% of tokens left
        let _held: Vec<_> = (0..3).map(|_| stats.start(DeploymentId(2))).collect();
        // The deployment without limits always has all its headroom.
        assert_eq!(choose(&limited, &stats, 0, 0, 1), Ok(2));
        let ctx = RouteContext {
            group: &limited,
            candidates: &[0, 1],
            stats: &stats,
            now_ms: 0,
            estimated_tokens: 0,
        };
        let mut rng = fastrand::Rng::with_seed(1);
        // min(90%, 90%) beats min(95%, 75%).
        assert_eq!(UsageBased.choose(&ctx, &mut rng), Ok(0));
        // Requests in flight count against rpm: 0 drops to 70% of requests left.
        let _busy: Vec<_> = (0..20).map(|_| stats.start(DeploymentId(0))).collect();
        assert_eq!(UsageBased.choose(&ctx, &mut rng), Ok(1));
        // The request's own tokens count too: 0 keeps 90% − 70% = 20% of its
        // tokens and 1 only 75% − 70% = 5%.
        let big = RouteContext {
            estimated_tokens: 7_000,
            ..ctx
        };
        assert_eq!(UsageBased.choose(&big, &mut rng), Ok(0));
    }

    #[test]
    fn returns_no_deployment_when_all_are_exhausted() {
        let limited = group(&[(Some(5), None), (None, Some(1_000)), (Some(0), None)]);
        let stats = LiveStats::new(3);
        requests(&stats, 0, 5, 0, 0);
        requests(&stats, 1, 1, 1_000, 0);
        let none = Err(RoutingError::NoDeployment("g".into()));
        assert_eq!(choose(&limited, &stats, 0, 0, 1), none);
        // The next minute starts over, except for a limit of zero.
        assert_eq!(choose(&limited, &stats, 60_000, 1_000, 1), Ok(0));
        // A request that does not fit in what is left counts as no headroom.
        let tokens_only = group(&[(None, Some(1_000))]);
        let fresh = LiveStats::new(1);
        assert_eq!(choose(&tokens_only, &fresh, 0, 999, 1), Ok(0));
        assert_eq!(choose(&tokens_only, &fresh, 0, 1_001, 1), none);
        // One that fills the minute exactly fits, as the rpm-th request does.
        assert_eq!(choose(&tokens_only, &fresh, 0, 1_000, 1), Ok(0));
        // A minute already full takes nothing more, not even a request
        // estimated at no tokens.
        assert_eq!(choose(&tokens_only, &stats_with(1_000), 0, 0, 1), none);
    }
}
