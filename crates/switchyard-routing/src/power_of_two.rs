//! `power-of-two`: the less busy of two deployments drawn at random.

use crate::strategy::{latency_score, weighted_pick};
use crate::{RouteContext, RoutingError, RoutingStrategy};

/// Draws two distinct candidates at random in proportion to weight and
/// chooses the one with fewer requests in flight, the lower latency average
/// breaking a tie (see [`LatencyBased`](crate::LatencyBased) for deployments
/// without one). Balances nearly as well as `least-busy` while looking at two
/// deployments only, and avoids sending every request to the same idle one.
#[derive(Debug, Clone, Copy, Default)]
pub struct PowerOfTwo;

impl PowerOfTwo {
    /// The strategy's registered name.
    pub const NAME: &'static str = "power-of-two";
}

impl RoutingStrategy for PowerOfTwo {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn choose(&self, ctx: &RouteContext<'_>, rng: &mut fastrand::Rng) -> Result<usize, RoutingError> {
        let deployments = ctx.group.deployments();
        let first = weighted_pick(ctx, rng, None).ok_or_else(|| ctx.no_deployment())?;
        let Some(second) = weighted_pick(ctx, rng, Some(first)) else {
            return Ok(first);
        };
        let key = |index: usize| {
            deployments.get(index).map_or((u64::MAX, f64::INFINITY), |d| {
                let stats = ctx.stats.deployment(d.id);
                (stats.in_flight(), latency_score(stats))
            })
        };
        let (a, b) = (key(first), key(second));
        Ok(if b.0 < a.0 || (b.0 == a.0 && b.1 < a.1) {
            second
        } else {
            first
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::tests::{counts, counts_among, group};
    use crate::{DeploymentId, LiveStats, Outcome};
    use std::time::Duration;

    #[test]
    fn never_picks_the_busier_of_two() {
        let group = group(2);
        let stats = LiveStats::new(2);
        let _held = stats.start(DeploymentId(0));
        assert_eq!(counts(&PowerOfTwo, &group, &stats, 1_000), vec![0, 1_000]);
    }

    #[test]
    fn never_picks_the_busiest_and_spreads_the_rest() {
        let group = group(4);
        let stats = LiveStats::new(4);
        let _held: Vec<_> = [2, 2, 2, 0].into_iter().map(|i| stats.start(DeploymentId(i))).collect();
        let draws = 12_000;
        let chosen = counts(&PowerOfTwo, &group, &stats, draws);
        assert_eq!(chosen[2], 0, "{chosen:?}");
        // 1 and 3 are idle and win every pair they are in but each other's:
        // 5 of the 6 pairs go to one of them, the 6th (0 with 2) to 0.
        let share = |i: usize| chosen[i] as f64 / draws as f64;
        assert!((share(0) - 1.0 / 6.0).abs() < 0.02, "{chosen:?}");
        assert!((share(1) - 5.0 / 12.0).abs() < 0.02, "{chosen:?}");
        assert!((share(3) - 5.0 / 12.0).abs() < 0.02, "{chosen:?}");
    }

    #[test]
    fn breaks_ties_on_latency() {
        let group = group(3);
        let stats = LiveStats::new(3);
        for (i, ms) in [(0, 90), (1, 30), (2, 60)] {
            let outcome = Outcome {
                latency: Duration::from_millis(ms),
                ..Outcome::default()
            };
            stats.record_success(DeploymentId(i), outcome, 0);
        }
        assert_eq!(counts_among(&PowerOfTwo, &group, &[0, 2], &stats, 500), vec![0, 0, 500]);
        assert_eq!(
            counts(&PowerOfTwo, &group, &stats, 600)[0],
            0,
            "the slowest never wins a pair"
        );
    }

    #[test]
    fn handles_one_or_no_candidate() {
        let group = group(3);
        let stats = LiveStats::new(3);
        assert_eq!(counts_among(&PowerOfTwo, &group, &[1], &stats, 10), vec![0, 10, 0]);
        let ctx = RouteContext {
            group: &group,
            candidates: &[],
            stats: &stats,
            now_ms: 0,
            estimated_tokens: 0,
        };
        assert_eq!(
            PowerOfTwo.choose(&ctx, &mut fastrand::Rng::with_seed(1)),
            Err(RoutingError::NoDeployment("g".into()))
        );
    }
}
