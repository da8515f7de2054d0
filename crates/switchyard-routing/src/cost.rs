//! `cost-based`: the cheapest deployment that is good enough.

use crate::strategy::Reservoir;
use crate::{DeploymentInfo, RouteContext, RoutingError, RoutingStrategy};

/// Chooses the cheapest candidate, by `input_cost_per_token +
/// output_cost_per_token`, whose quality is at least `min_quality`
/// (deployments without a quality count as meeting it). When no candidate
/// meets it, chooses the highest quality, the cheapest of those. Remaining
/// ties are broken at random in proportion to weight.
#[derive(Debug, Clone, Copy, Default)]
pub struct CostBased {
    min_quality: f64,
}

impl CostBased {
    /// The strategy's registered name.
    pub const NAME: &'static str = "cost-based";

    /// A strategy requiring at least `min_quality`, which must not be NaN
    /// (the default, 0, admits any non-negative quality).
    pub fn new(min_quality: f64) -> Result<Self, RoutingError> {
        if min_quality.is_nan() {
            return Err(RoutingError::InvalidParameter {
                parameter: "min_quality".into(),
                reason: "it is not a number".into(),
            });
        }
        Ok(Self { min_quality })
    }

    /// The quality a deployment needs to be chosen on price.
    pub fn min_quality(&self) -> f64 {
        self.min_quality
    }
}

/// Price of one prompt token plus one completion token; NaN counts as the most expensive.
fn cost(d: &DeploymentInfo) -> f64 {
    let cost = d.input_cost_per_token + d.output_cost_per_token;
    if cost.is_nan() { f64::INFINITY } else { cost }
}

impl RoutingStrategy for CostBased {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn choose(&self, ctx: &RouteContext<'_>, rng: &mut fastrand::Rng) -> Result<usize, RoutingError> {
        let mut cheapest = Reservoir::default();
        let mut cheapest_cost = f64::INFINITY;
        // (quality, cost) of the best deployment below the threshold.
        let mut fallback = Reservoir::default();
        let mut fallback_key = (f64::NEG_INFINITY, f64::INFINITY);
        for c in ctx.iter() {
            let d = c.deployment;
            let cost = cost(d);
            match d.quality {
                Some(quality) if quality < self.min_quality => {
                    let better = fallback.chosen().is_none()
                        || quality > fallback_key.0
                        || (quality == fallback_key.0 && cost < fallback_key.1);
                    if better {
                        fallback_key = (quality, cost);
                        fallback.restart(c.index, d.weight);
                    } else if (quality, cost) == fallback_key {
                        fallback.offer(c.index, d.weight, rng);
                    }
                }
                _ => {
                    if cheapest.chosen().is_none() || cost < cheapest_cost {
                        cheapest_cost = cost;
                        cheapest.restart(c.index, d.weight);
                    } else if cost == cheapest_cost {
                        cheapest.offer(c.index, d.weight, rng);
                    }
                }
            }
        }
        cheapest
            .chosen()
            .or(fallback.chosen())
            .ok_or_else(|| ctx.no_deployment())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::tests::{counts, counts_among, deployment};
    use crate::{LiveStats, ModelGroup};

    /// A group of deployments priced `(input + output cost, quality)`.
    fn group(specs: &[(f64, Option<f64>)]) -> ModelGroup {
        let deployments = specs
            .iter()
            .enumerate()
            .map(|(i, (price, quality))| DeploymentInfo {
                input_cost_per_token: price / 4.0,
                output_cost_per_token: price * 3.0 / 4.0,
                quality: *quality,
                ..deployment(i, 1.0)
            })
            .collect();
        ModelGroup::new("g", deployments).unwrap()
    }

    #[test]
    fn picks_the_cheapest_meeting_the_threshold() {
        // The cheapest (0) is below the bar; 2 is the cheapest above it; 3 is unrated.
        let group = group(&[(1.0, Some(0.5)), (8.0, Some(0.95)), (4.0, Some(0.9)), (6.0, None)]);
        let stats = LiveStats::new(4);
        let strict = CostBased::new(0.8).unwrap();
        assert_eq!(counts(&strict, &group, &stats, 1_000), vec![0, 0, 1_000, 0]);
        // Without 2, the unrated deployment counts as good enough and is cheaper than 1.
        assert_eq!(
            counts_among(&strict, &group, &[0, 1, 3], &stats, 1_000),
            vec![0, 0, 0, 1_000]
        );
        // With the default threshold the cheapest wins.
        assert_eq!(
            counts(&CostBased::default(), &group, &stats, 1_000),
            vec![1_000, 0, 0, 0]
        );
    }

    #[test]
    fn falls_back_to_the_best_quality() {
        let group = group(&[(1.0, Some(0.5)), (9.0, Some(0.7)), (3.0, Some(0.7)), (2.0, Some(0.6))]);
        let stats = LiveStats::new(4);
        let strict = CostBased::new(0.8).unwrap();
        // 1 and 2 share the best quality; 2 is cheaper.
        assert_eq!(counts(&strict, &group, &stats, 1_000), vec![0, 0, 1_000, 0]);
    }

    #[test]
    fn spreads_ties_at_random() {
        let group_above = group(&[(2.0, Some(0.9)), (2.0, None), (5.0, None), (2.0, Some(0.95))]);
        let stats = LiveStats::new(4);
        let strict = CostBased::new(0.8).unwrap();
        let draws = 30_000;
        let chosen = counts(&strict, &group_above, &stats, draws);
        assert_eq!(chosen[2], 0);
        for i in [0, 1, 3] {
            let share = chosen[i] as f64 / draws as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.015, "{chosen:?}");
        }
        let group_below = group(&[(1.0, Some(0.5)), (1.0, Some(0.5))]);
        let chosen = counts(&strict, &group_below, &stats, draws);
        let share = chosen[0] as f64 / draws as f64;
        assert!((share - 0.5).abs() < 0.015, "{chosen:?}");
    }

    #[test]
    fn validates_and_names() {
        assert!(CostBased::new(f64::NAN).is_err());
        assert_eq!(CostBased::new(0.7).unwrap().min_quality(), 0.7);
        assert_eq!(CostBased::default().name(), "cost-based");
    }
}
