//! Model groups and their deployments.

use std::collections::HashMap;

use crate::RoutingError;

/// Index of a deployment in the registry; the gateway keeps its clients in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeploymentId(pub usize);

/// What routing knows about one deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentInfo {
    /// Position in the registry.
    pub id: DeploymentId,
    /// Stable human-readable name, e.g. `gpt-4o/0` (group and position).
    pub name: String,
    /// Upstream model name.
    pub model: String,
    /// Provider kind (`openai`, `azure`, `mock`, …).
    pub provider: String,
    /// Relative share of traffic for weighted strategies (> 0).
    pub weight: f64,
    /// Price per prompt token in USD; NaN when unknown (`cost-based` ranks
    /// it the most expensive).
    pub input_cost_per_token: f64,
    /// Price per completion token in USD; NaN when unknown.
    pub output_cost_per_token: f64,
    /// Requests per minute the deployment allows, if known.
    pub rpm: Option<u64>,
    /// Tokens per minute the deployment allows, if known.
    pub tpm: Option<u64>,
    /// Quality score, higher is better (any finite scale, e.g. 0–1 or an eval
    /// score), used by `cost-based` routing; `None` when not rated.
    pub quality: Option<f64>,
}

/// One public model name and the deployments that can serve it.
#[derive(Debug, Clone)]
pub struct ModelGroup {
    name: String,
    deployments: Vec<DeploymentInfo>,
    /// Running sums of weights, for O(log n) weighted picks.
    cumulative: Vec<f64>,
}

impl ModelGroup {
    /// A group; fails when it is empty, a weight is not a positive finite
    /// number or a quality is not finite.
    pub fn new(name: impl Into<String>, deployments: Vec<DeploymentInfo>) -> Result<Self, RoutingError> {
        let name = name.into();
        if deployments.is_empty() {
            return Err(RoutingError::InvalidGroup {
                group: name,
                reason: "it has no deployments".into(),
            });
        }
        let mut total = 0.0;
        let mut cumulative = Vec::with_capacity(deployments.len());
        for d in &deployments {
            if !(d.weight.is_finite() && d.weight > 0.0) {
                return Err(RoutingError::InvalidGroup {
                    group: name,
                    reason: format!("deployment `{}` has weight {}, which is not positive", d.name, d.weight),
                });
            }
            if d.quality.is_some_and(|q| !q.is_finite()) {
                return Err(RoutingError::InvalidGroup {
                    group: name,
                    reason: format!("deployment `{}` has a quality that is not a finite number", d.name),
                });
            }
            total += d.weight;
            cumulative.push(total);
        }
        Ok(Self {
            name,
            deployments,
            cumulative,
        })
    }

    /// The public model name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The deployments, in configuration order.
    pub fn deployments(&self) -> &[DeploymentInfo] {
        &self.deployments
    }

    /// Running sums of the deployments' weights.
    pub fn cumulative_weights(&self) -> &[f64] {
        &self.cumulative
    }
}

/// All model groups, by public name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    groups: HashMap<String, ModelGroup>,
    order: Vec<String>,
    deployment_count: usize,
}

impl Registry {
    /// Builds a registry. Group names must be unique; deployment ids must be
    /// `0..n` across all groups, in order.
    pub fn new(groups: Vec<ModelGroup>) -> Result<Self, RoutingError> {
        let mut registry = Registry::default();
        for group in groups {
            for d in group.deployments() {
                if d.id.0 != registry.deployment_count {
                    return Err(RoutingError::InvalidGroup {
                        group: group.name.clone(),
                        reason: format!(
                            "deployment `{}` has id {} where {} was expected",
                            d.name, d.id.0, registry.deployment_count
                        ),
                    });
                }
                registry.deployment_count += 1;
            }
            if registry.groups.contains_key(group.name()) {
                return Err(RoutingError::InvalidGroup {
                    group: group.name.clone(),
                    reason: "the name is used twice".into(),
                });
            }
            registry.order.push(group.name.clone());
            registry.groups.insert(group.name.clone(), group);
        }
        Ok(registry)
    }

    /// The group serving `model`.
    pub fn group(&self, model: &str) -> Result<&ModelGroup, RoutingError> {
        self.groups
            .get(model)
            .ok_or_else(|| RoutingError::UnknownModel(model.to_owned()))
    }

    /// Public model names, in configuration order.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// Number of deployments across all groups.
    pub fn deployment_count(&self) -> usize {
        self.deployment_count
    }
}
