//! `latency-based`: the fastest deployments, by their latency average.

use crate::strategy::{Reservoir, latency_score};
use crate::{RouteContext, RoutingError, RoutingStrategy};

/// Chooses at random (in proportion to weight) among the candidates whose
/// latency average is within `tolerance` of the best one's.
///
/// A deployment with no latency sample yet counts as the fastest while no
/// request to it is in flight, so that new deployments are probed one
/// request at a time, and as the slowest while its probe runs.
#[derive(Debug, Clone, Copy)]
pub struct LatencyBased {
    tolerance: f64,
}

impl LatencyBased {
    /// The strategy's registered name.
    pub const NAME: &'static str = "latency-based";
    /// Default width of the band: within 10% of the best.
    pub const DEFAULT_TOLERANCE: f64 = 0.1;

    /// A strategy choosing among deployments at most `(1 + tolerance)` times
    /// slower than the fastest; `tolerance` must be finite and not negative.
    pub fn new(tolerance: f64) -> Result<Self, RoutingError> {
        if !(tolerance.is_finite() && tolerance >= 0.0) {
            return Err(RoutingError::InvalidParameter {
                parameter: "tolerance".into(),
                reason: format!("{tolerance} is not a finite number ≥ 0"),
            });
        }
        Ok(Self { tolerance })
    }

    /// The width of the band, as a fraction of the best latency.
    pub fn tolerance(&self) -> f64 {
        self.tolerance
    }
}

impl Default for LatencyBased {
    fn default() -> Self {
        Self {
            tolerance: Self::DEFAULT_TOLERANCE,
        }
    }
}

impl RoutingStrategy for LatencyBased {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn choose(&self, ctx: &RouteContext<'_>, rng: &mut fastrand::Rng) -> Result<usize, RoutingError> {
        // A deployment with no sample that has failed `k` times since its
        // last success (or ever) is probed with probability 1/(k+1): one that
        // only fails (with client errors its breaker ignores) does not win
        // every decision, and is still tried now and then.
        // A stale average is probed again only beside a fresh one: when
        // every average is stale (little traffic), they still rank.
        let fresh = ctx
            .iter()
            .any(|c| c.stats.latency_ewma_us().is_some() && !c.stats.latency_stale(ctx.now_ms));
        let scores: Vec<(usize, f64, f64)> = ctx
            .iter()
            .map(|c| {
                let idle = c.stats.in_flight() == 0;
                let stale = fresh && idle && c.stats.latency_stale(ctx.now_ms);
                let unknown = (c.stats.latency_ewma_us().is_none() && idle) || stale;
                let run = c.stats.failures_since_success();
                let score = if unknown && run > 0 && rng.u64(0..=run) != 0 {
                    f64::INFINITY
                } else if stale {
                    // No sample for a while (e.g. kept out of the band by
                    // one slow answer): probed again, as if new.
                    0.0
                } else {
                    latency_score(c.stats)
                };
                (c.index, score, c.deployment.weight)
            })
            .collect();
        let Some(&(best, best_score, _)) = scores.iter().min_by(|a, b| a.1.total_cmp(&b.1)) else {
            return Err(ctx.no_deployment());
        };
        let limit = best_score * (1.0 + self.tolerance);
        let mut pick = Reservoir::default();
        for &(index, score, weight) in &scores {
            if score <= limit {
                pick.offer(index, weight, rng);
            }
        }
        Ok(pick.chosen().unwrap_or(best))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::tests::{counts, group};
    use crate::{DeploymentId, LiveStats, Outcome};
    use std::time::Duration;

    /// Statistics of `n` deployments, the first ones with one latency sample each.
    fn stats_with_latencies(n: usize, ms: &[u64]) -> LiveStats {
        let stats = LiveStats::new(n);
        for (i, ms) in ms.iter().enumerate() {
            let outcome = Outcome {
                latency: Duration::from_millis(*ms),
                ..Outcome::default()
            };
            stats.record_success(DeploymentId(i), outcome, 0);
        }
        stats
    }

    #[test]
    fn a_stale_average_is_probed_again_and_restarts() {
        use crate::stats::STALE_SAMPLE_MS;
        let group = group(2);
        let stats = LiveStats::new(2);
        let success = |id: usize, ms: u64, now_ms: u64| {
            let outcome = Outcome {
                latency: Duration::from_millis(ms),
                ..Outcome::default()
            };
            stats.record_success(DeploymentId(id), outcome, now_ms);
        };
        // One slow answer puts deployment 0 far out of the band.
        success(0, 2_000, 1_000);
        success(0, 60_000, 2_000);
        success(1, 2_000, 2_000);
        let choose = |now_ms: u64| {
            let candidates = [0, 1];
            let ctx = RouteContext {
                group: &group,
                candidates: &candidates,
                stats: &stats,
                now_ms,
                estimated_tokens: 0,
            };
            LatencyBased::default()
                .choose(&ctx, &mut fastrand::Rng::with_seed(7))
                .unwrap()
        };
        assert_eq!(choose(3_000), 1);
        // Deployment 1 keeps serving; 0 gets no sample and goes stale.
        let later = 2_000 + STALE_SAMPLE_MS;
        success(1, 2_000, later);
        assert_eq!(choose(later), 0, "a stale average is probed again");
        // With no fresh average beside it (little traffic), a stale one
        // still ranks by its value.
        assert_eq!(choose(later + 2 * STALE_SAMPLE_MS), 1);
        // Its next answer replaces the stale average: both in the band.
        success(0, 2_000, later + 10);
        assert_eq!(stats.get(DeploymentId(0)).unwrap().latency_ewma_us(), Some(2_000_000.0));
        assert!(!stats.get(DeploymentId(0)).unwrap().latency_stale(later + 10));
    }

    #[test]
    fn picks_the_fastest() {
        let group = group(4);
        let stats = stats_with_latencies(4, &[300, 120, 100, 250]);
        assert_eq!(
            counts(&LatencyBased::default(), &group, &stats, 1_000),
            vec![0, 0, 1_000, 0]
        );
    }

    #[test]
    fn spreads_across_the_tolerance_band() {
        let group = group(4);
        // 100 ms is the best; 105 and 110 are within 10%, 111 is not.
        let stats = stats_with_latencies(4, &[105, 100, 111, 110]);
        let draws = 30_000;
        let counts = counts(&LatencyBased::default(), &group, &stats, draws);
        assert_eq!(counts[2], 0, "{counts:?}");
        for i in [0, 1, 3] {
            let share = counts[i] as f64 / draws as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn the_band_follows_the_tolerance() {
        let group = group(4);
        let stats = stats_with_latencies(4, &[105, 100, 111, 110]);
        let wide = LatencyBased::new(0.5).unwrap();
        assert!(counts(&wide, &group, &stats, 1_000).iter().all(|c| *c > 0));
        let exact = LatencyBased::new(0.0).unwrap();
        assert_eq!(counts(&exact, &group, &stats, 1_000), vec![0, 1_000, 0, 0]);
    }

    #[test]
    fn probes_unknown_deployments_one_request_at_a_time() {
        let group = group(3);
        let stats = stats_with_latencies(3, &[50, 400]);
        assert_eq!(counts(&LatencyBased::default(), &group, &stats, 100), vec![0, 0, 100]);
        let _probe = stats.start(DeploymentId(2));
        assert_eq!(counts(&LatencyBased::default(), &group, &stats, 100), vec![100, 0, 0]);
    }

    #[test]
    fn a_deployment_that_only_fails_is_probed_less_and_less() {
        let group = group(3);
        // Deployment 2 has no sample: it failed nine times (client errors
        // keep its breaker closed), and would otherwise win every decision.
        let stats = stats_with_latencies(3, &[50, 400]);
        for _ in 0..9 {
            stats.record_failure(DeploymentId(2), crate::ErrorClass::ClientError, 0);
        }
        let probed = counts(&LatencyBased::default(), &group, &stats, 1_000)[2];
        assert!(
            (40..=250).contains(&probed),
            "probed {probed} times in 1000, about 1 in 10 expected"
        );
        // A success resets the run: the deployment then has a sample.
        stats.record_success(DeploymentId(2), Outcome::default(), 0);
        assert_eq!(stats.deployment(DeploymentId(2)).failures_since_success(), 0);
    }

    #[test]
    fn rejects_bad_tolerances() {
        for bad in [-0.1, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                LatencyBased::new(bad),
                Err(RoutingError::InvalidParameter { .. })
            ));
        }
        assert_eq!(LatencyBased::default().tolerance(), 0.1);
        assert_eq!(LatencyBased::default().name(), "latency-based");
    }
}
