//! A routing strategy defined outside `switchyard-routing`, as a user would in
//! their own crate: prefer deployments in one region (by name prefix), and
//! among those, or among all when none is a candidate, the least busy.
//!
//! Run with `cargo run -p switchyard-routing --example custom_strategy`.
#![allow(clippy::print_stdout, reason = "an example prints its choices")]

use std::sync::Arc;

use switchyard_routing::{
    DeploymentId, DeploymentInfo, LeastBusy, LiveStats, ModelGroup, Registry, RouteContext, RoutingError,
    RoutingStrategy, StrategyRegistry,
};

/// Prefers deployments whose name starts with `prefix`, least busy first.
#[derive(Debug)]
struct RegionFirst {
    prefix: String,
    within: LeastBusy,
}

impl RoutingStrategy for RegionFirst {
    fn name(&self) -> &str {
        "region-first"
    }

    fn choose(&self, ctx: &RouteContext<'_>, rng: &mut fastrand::Rng) -> Result<usize, RoutingError> {
        let local: Vec<usize> = ctx
            .iter()
            .filter(|c| c.deployment.name.starts_with(&self.prefix))
            .map(|c| c.index)
            .collect();
        if local.is_empty() {
            return self.within.choose(ctx, rng);
        }
        let narrowed = RouteContext {
            candidates: &local,
            ..*ctx
        };
        self.within.choose(&narrowed, rng)
    }
}

fn deployment(id: usize, name: &str) -> DeploymentInfo {
    DeploymentInfo {
        id: DeploymentId(id),
        name: name.to_owned(),
        model: "gpt-4o".into(),
        provider: "openai".into(),
        weight: 1.0,
        input_cost_per_token: 2.5e-6,
        output_cost_per_token: 1e-5,
        rpm: None,
        tpm: None,
        quality: None,
    }
}

fn main() -> Result<(), RoutingError> {
    let names = [
        "eu-west/gpt-4o",
        "us-east/gpt-4o",
        "eu-central/gpt-4o",
        "us-west/gpt-4o",
    ];
    let deployments = names.iter().enumerate().map(|(i, name)| deployment(i, name)).collect();
    let registry = Registry::new(vec![ModelGroup::new("gpt-4o", deployments)?])?;
    let stats = LiveStats::new(registry.deployment_count());

    let mut strategies = StrategyRegistry::with_builtins();
    let eu_first = RegionFirst {
        prefix: "eu-".into(),
        within: LeastBusy,
    };
    strategies.register("eu-first", Arc::new(eu_first))?;
    println!("strategies: {}", strategies.names().collect::<Vec<_>>().join(", "));

    let strategy = strategies.require("eu-first")?;
    let group = registry.group("gpt-4o")?;
    let mut rng = fastrand::Rng::with_seed(1);
    let mut in_flight = Vec::new();
    let mut route = |candidates: &[usize], label: &str| -> Result<(), RoutingError> {
        let ctx = RouteContext {
            group,
            candidates,
            stats: &stats,
            now_ms: 0,
            estimated_tokens: 0,
        };
        let index = strategy.choose(&ctx, &mut rng)?;
        let chosen = group.deployments().get(index).ok_or_else(|| ctx.no_deployment())?;
        // Keep the request in flight so that the next choice sees it.
        in_flight.push(stats.start(chosen.id));
        println!("{label:<28} -> {}", chosen.name);
        Ok(())
    };

    let all = [0, 1, 2, 3];
    for _ in 0..4 {
        route(&all, "all healthy")?;
    }
    // With both EU deployments filtered out (say, cooling down), the
    // strategy falls back to the least busy of the others.
    for _ in 0..3 {
        route(&[1, 3], "EU unavailable")?;
    }
    Ok(())
}
