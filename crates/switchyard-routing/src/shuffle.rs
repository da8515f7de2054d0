//! `simple-shuffle`: weighted random choice.

use crate::strategy::weighted_pick;
use crate::{DeploymentInfo, ModelGroup, RouteContext, RoutingError, RoutingStrategy};

/// Picks a deployment at random, in proportion to its weight. With equal
/// weights this spreads load uniformly; it needs no live statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimpleShuffle;

impl RoutingStrategy for SimpleShuffle {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn choose(&self, ctx: &RouteContext<'_>, rng: &mut fastrand::Rng) -> Result<usize, RoutingError> {
        weighted_pick(ctx, rng, None).ok_or_else(|| ctx.no_deployment())
    }
}

impl SimpleShuffle {
    /// The strategy's registered name.
    pub const NAME: &'static str = "simple-shuffle";

    /// Picks from `group` using the thread's random generator.
    pub fn pick<'g>(&self, group: &'g ModelGroup) -> Result<&'g DeploymentInfo, RoutingError> {
        self.pick_with(group, &mut fastrand::Rng::new())
    }

    /// Picks from `group` using `rng` (seed it for reproducible choices).
    pub fn pick_with<'g>(
        &self,
        group: &'g ModelGroup,
        rng: &mut fastrand::Rng,
    ) -> Result<&'g DeploymentInfo, RoutingError> {
        let cumulative = group.cumulative_weights();
        let deployments = group.deployments();
        let total = match cumulative.last() {
            Some(total) => *total,
            None => return Err(RoutingError::NoDeployment(group.name().to_owned())),
        };
        if deployments.len() == 1 {
            return Ok(&deployments[0]);
        }
        let point = rng.f64() * total;
        let index = cumulative.partition_point(|&c| c <= point).min(deployments.len() - 1);
        Ok(&deployments[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::tests::{counts, counts_among, deployment, group};
    use crate::{LiveStats, Registry};

    #[test]
    fn picks_in_proportion_to_weight() {
        let group = ModelGroup::new("g", vec![deployment(0, 1.0), deployment(1, 3.0)]).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = [0usize; 2];
        for _ in 0..20_000 {
            counts[SimpleShuffle.pick_with(&group, &mut rng).unwrap().id.0] += 1;
        }
        let share = counts[1] as f64 / 20_000.0;
        assert!(
            (share - 0.75).abs() < 0.02,
            "share of the weight-3 deployment was {share}"
        );
    }

    #[test]
    fn choose_honours_weights_over_all_and_some_candidates() {
        let weights = [1.0, 2.0, 3.0, 4.0];
        let group = ModelGroup::new("g", (0..4).map(|i| deployment(i, weights[i])).collect()).unwrap();
        let stats = LiveStats::new(4);
        let draws = 50_000;
        let all = counts(&SimpleShuffle, &group, &stats, draws);
        for (i, count) in all.iter().enumerate() {
            let share = *count as f64 / draws as f64;
            assert!((share - weights[i] / 10.0).abs() < 0.01, "{all:?}");
        }
        let some = counts_among(&SimpleShuffle, &group, &[0, 3], &stats, draws);
        assert_eq!(some[1] + some[2], 0, "only candidates are chosen");
        let share = some[3] as f64 / draws as f64;
        assert!((share - 0.8).abs() < 0.01, "{some:?}");
    }

    #[test]
    fn choose_needs_a_candidate() {
        let group = group(2);
        let stats = LiveStats::new(2);
        let ctx = RouteContext {
            group: &group,
            candidates: &[],
            stats: &stats,
            now_ms: 0,
            estimated_tokens: 0,
        };
        let err = SimpleShuffle.choose(&ctx, &mut fastrand::Rng::with_seed(1));
        assert_eq!(err, Err(RoutingError::NoDeployment("g".into())));
        assert_eq!(SimpleShuffle.name(), "simple-shuffle");
    }

    #[test]
    fn every_deployment_gets_traffic_with_equal_weights() {
        let group = ModelGroup::new("g", (0..5).map(|i| deployment(i, 1.0)).collect()).unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut seen = [false; 5];
        for _ in 0..500 {
            seen[SimpleShuffle.pick_with(&group, &mut rng).unwrap().id.0] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert!(SimpleShuffle.pick(&group).is_ok());
    }

    #[test]
    fn rejects_bad_groups_and_unknown_models() {
        assert!(ModelGroup::new("empty", vec![]).is_err());
        assert!(ModelGroup::new("zero", vec![deployment(0, 0.0)]).is_err());
        let nan_quality = DeploymentInfo {
            quality: Some(f64::NAN),
            ..deployment(0, 1.0)
        };
        assert!(ModelGroup::new("nan", vec![nan_quality]).is_err());
        let a = ModelGroup::new("a", vec![deployment(0, 1.0)]).unwrap();
        let dup = ModelGroup::new("a", vec![deployment(1, 1.0)]).unwrap();
        assert!(Registry::new(vec![a.clone(), dup]).is_err());
        let registry = Registry::new(vec![a]).unwrap();
        assert_eq!(
            registry.group("nope").unwrap_err(),
            RoutingError::UnknownModel("nope".into())
        );
        assert_eq!(registry.model_names().collect::<Vec<_>>(), vec!["a"]);
    }
}
