//! `simple-shuffle`: weighted random choice.

use crate::{DeploymentInfo, ModelGroup, RoutingError};

/// Picks a deployment at random, in proportion to its weight. With equal
/// weights this spreads load uniformly; it needs no live statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimpleShuffle;

impl SimpleShuffle {
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
    use crate::{DeploymentId, Registry};

    fn deployment(id: usize, weight: f64) -> DeploymentInfo {
        DeploymentInfo {
            id: DeploymentId(id),
            name: format!("g/{id}"),
            model: format!("m{id}"),
            provider: "mock".into(),
            weight,
            input_cost_per_token: 0.0,
            output_cost_per_token: 0.0,
            rpm: None,
            tpm: None,
        }
    }

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
    fn every_deployment_gets_traffic_with_equal_weights() {
        let group = ModelGroup::new("g", (0..5).map(|i| deployment(i, 1.0)).collect()).unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut seen = [false; 5];
        for _ in 0..500 {
            seen[SimpleShuffle.pick_with(&group, &mut rng).unwrap().id.0] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn rejects_bad_groups_and_unknown_models() {
        assert!(ModelGroup::new("empty", vec![]).is_err());
        assert!(ModelGroup::new("zero", vec![deployment(0, 0.0)]).is_err());
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
