//! `least-busy`: the deployment with the fewest requests in flight.

use crate::strategy::Reservoir;
use crate::{RouteContext, RoutingError, RoutingStrategy};

/// Chooses the candidate with the fewest requests in flight; ties are broken
/// at random in proportion to weight. Suits requests whose cost varies a lot,
/// where counting what is outstanding balances better than counting what was sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastBusy;

impl LeastBusy {
    /// The strategy's registered name.
    pub const NAME: &'static str = "least-busy";
}

impl RoutingStrategy for LeastBusy {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn choose(&self, ctx: &RouteContext<'_>, rng: &mut fastrand::Rng) -> Result<usize, RoutingError> {
        let mut fewest = u64::MAX;
        let mut pick = Reservoir::default();
        for c in ctx.iter() {
            let busy = c.stats.in_flight();
            if busy < fewest {
                fewest = busy;
                pick.restart(c.index, c.deployment.weight);
            } else if busy == fewest {
                pick.offer(c.index, c.deployment.weight, rng);
            }
        }
        pick.chosen().ok_or_else(|| ctx.no_deployment())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::tests::{counts, counts_among, group};
    use crate::{DeploymentId, LiveStats};

    #[test]
    fn picks_the_idle_deployment() {
        let group = group(4);
        let stats = LiveStats::new(4);
        let _held: Vec<_> = [0, 0, 1, 3, 3, 3]
            .into_iter()
            .map(|i| stats.start(DeploymentId(i)))
            .collect();
        assert_eq!(counts(&LeastBusy, &group, &stats, 1_000), vec![0, 0, 1_000, 0]);
        // Among 0 (two in flight) and 3 (three), 0 is the least busy.
        assert_eq!(
            counts_among(&LeastBusy, &group, &[0, 3], &stats, 100),
            vec![100, 0, 0, 0]
        );
    }

    #[test]
    fn spreads_ties_at_random() {
        let group = group(4);
        let stats = LiveStats::new(4);
        let _held = stats.start(DeploymentId(1));
        let draws = 30_000;
        let counts = counts(&LeastBusy, &group, &stats, draws);
        assert_eq!(counts[1], 0);
        for i in [0, 2, 3] {
            let share = counts[i] as f64 / draws as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn needs_a_candidate() {
        let group = group(1);
        let stats = LiveStats::new(1);
        let ctx = RouteContext {
            group: &group,
            candidates: &[],
            stats: &stats,
            now_ms: 0,
            estimated_tokens: 0,
        };
        assert!(matches!(
            LeastBusy.choose(&ctx, &mut fastrand::Rng::with_seed(1)),
            Err(RoutingError::NoDeployment(_))
        ));
    }
}
