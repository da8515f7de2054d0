//! The extension point for routing strategies, and helpers shared by the built-in ones.

use crate::{DeploymentInfo, DeploymentStats, LiveStats, ModelGroup, RoutingError};

/// Everything a strategy may look at to make one decision.
#[derive(Debug, Clone, Copy)]
pub struct RouteContext<'a> {
    /// The model group being routed.
    pub group: &'a ModelGroup,
    /// Distinct indexes into `group.deployments()` that may be chosen, already
    /// filtered by the caller (healthy, allowed for this request). Indexes out
    /// of range are ignored.
    pub candidates: &'a [usize],
    /// Live statistics of every deployment, indexed by deployment id.
    pub stats: &'a LiveStats,
    /// The caller's monotonic clock, in milliseconds.
    pub now_ms: u64,
    /// Tokens the request is expected to use (prompt plus completion), 0 if unknown.
    pub estimated_tokens: u64,
}

/// One candidate of a [`RouteContext`], with what is known about it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Index into `group.deployments()`: what [`RoutingStrategy::choose`] returns.
    pub index: usize,
    /// The deployment's configuration.
    pub deployment: &'a DeploymentInfo,
    /// The deployment's live statistics.
    pub stats: &'a DeploymentStats,
}

impl<'a> RouteContext<'a> {
    /// The candidates, in order, with their configuration and live statistics.
    pub fn iter(&self) -> impl Iterator<Item = Candidate<'a>> + 'a {
        let deployments = self.group.deployments();
        let stats = self.stats;
        self.candidates.iter().filter_map(move |&index| {
            deployments.get(index).map(|deployment| Candidate {
                index,
                deployment,
                stats: stats.deployment(deployment.id),
            })
        })
    }

    /// The error for "nothing to choose from" in this group.
    pub fn no_deployment(&self) -> RoutingError {
        RoutingError::NoDeployment(self.group.name().to_owned())
    }
}

/// A way of choosing one deployment of a group per request.
///
/// Implementations must not block or do I/O: `choose` runs on every request.
/// The built-in strategies read only atomics (`latency-based` allocates one
/// short list of the candidates in its band per decision).
pub trait RoutingStrategy: Send + Sync + std::fmt::Debug {
    /// The name the strategy is known by, e.g. `least-busy`.
    fn name(&self) -> &str;

    /// Chooses among `ctx.candidates`; returns an index into
    /// `ctx.group.deployments()`. Fails with [`RoutingError::NoDeployment`]
    /// when there is nothing to choose from.
    fn choose(&self, ctx: &RouteContext<'_>, rng: &mut fastrand::Rng) -> Result<usize, RoutingError>;
}

/// Picks one of the items offered to it at random, in proportion to weight,
/// in a single pass (weighted reservoir sampling of size one).
#[derive(Debug, Default)]
pub(crate) struct Reservoir {
    chosen: Option<usize>,
    total: f64,
}

impl Reservoir {
    /// Forgets what was offered and takes `index` as the only item so far.
    pub(crate) fn restart(&mut self, index: usize, weight: f64) {
        self.chosen = Some(index);
        self.total = weight;
    }

    /// Offers `index`; it replaces the current choice with probability weight / total offered.
    pub(crate) fn offer(&mut self, index: usize, weight: f64, rng: &mut fastrand::Rng) {
        self.total += weight;
        if self.chosen.is_none() || rng.f64() * self.total < weight {
            self.chosen = Some(index);
        }
    }

    /// The choice, if anything was offered.
    pub(crate) fn chosen(&self) -> Option<usize> {
        self.chosen
    }
}

/// A candidate chosen at random in proportion to weight, never `exclude`.
/// When the candidates are the whole group this is a binary search over the
/// group's running weight sums; otherwise a scan of the candidates.
pub(crate) fn weighted_pick(ctx: &RouteContext<'_>, rng: &mut fastrand::Rng, exclude: Option<usize>) -> Option<usize> {
    let deployments = ctx.group.deployments();
    let last = deployments.len().checked_sub(1)?;
    let whole_group =
        ctx.candidates.len() == deployments.len() && ctx.candidates.iter().enumerate().all(|(i, &c)| i == c);
    if whole_group {
        let cumulative = ctx.group.cumulative_weights();
        let total = *cumulative.last()?;
        let Some(skip) = exclude.and_then(|x| deployments.get(x).map(|d| (x, d.weight))) else {
            let point = rng.f64() * total;
            return Some(cumulative.partition_point(|&c| c <= point).min(last));
        };
        if last == 0 {
            return None;
        }
        let (x, weight) = skip;
        let start = cumulative.get(x).map_or(0.0, |c| c - weight);
        let mut point = rng.f64() * (total - weight);
        if point >= start {
            point += weight;
        }
        let index = cumulative.partition_point(|&c| c <= point).min(last);
        // Rounding can land the shifted point on the excluded range's edge.
        return Some(if index != x {
            index
        } else if x < last {
            x + 1
        } else {
            x - 1
        });
    }
    let eligible = || ctx.iter().filter(|c| Some(c.index) != exclude);
    let total: f64 = eligible().map(|c| c.deployment.weight).sum();
    let mut point = rng.f64() * total;
    let mut chosen = None;
    for c in eligible() {
        chosen = Some(c.index);
        point -= c.deployment.weight;
        if point < 0.0 {
            break;
        }
    }
    chosen
}

/// Latency score of a deployment, lower is better: the latency average, or
/// for a deployment with no sample yet 0 (best, so that it gets probed) while
/// no request to it is in flight and infinity (worst) while its probe runs.
pub(crate) fn latency_score(stats: &DeploymentStats) -> f64 {
    match stats.latency_ewma_us() {
        Some(us) => us,
        None if stats.in_flight() == 0 => 0.0,
        None => f64::INFINITY,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::DeploymentId;

    /// A deployment named `g/{id}` with the given weight and nothing else set.
    pub(crate) fn deployment(id: usize, weight: f64) -> DeploymentInfo {
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
            quality: None,
        }
    }

    /// A group `g` of `n` deployments of weight 1.
    pub(crate) fn group(n: usize) -> ModelGroup {
        ModelGroup::new("g", (0..n).map(|i| deployment(i, 1.0)).collect()).unwrap()
    }

    /// How often each deployment is chosen over `draws` decisions on every deployment of `group`.
    pub(crate) fn counts(
        strategy: &dyn RoutingStrategy,
        group: &ModelGroup,
        stats: &LiveStats,
        draws: usize,
    ) -> Vec<usize> {
        let candidates: Vec<usize> = (0..group.deployments().len()).collect();
        counts_among(strategy, group, &candidates, stats, draws)
    }

    /// How often each deployment is chosen over `draws` decisions among `candidates`.
    pub(crate) fn counts_among(
        strategy: &dyn RoutingStrategy,
        group: &ModelGroup,
        candidates: &[usize],
        stats: &LiveStats,
        draws: usize,
    ) -> Vec<usize> {
        let ctx = RouteContext {
            group,
            candidates,
            stats,
            now_ms: 0,
            estimated_tokens: 0,
        };
        let mut rng = fastrand::Rng::with_seed(42);
        let mut counts = vec![0; group.deployments().len()];
        for _ in 0..draws {
            counts[strategy.choose(&ctx, &mut rng).unwrap()] += 1;
        }
        counts
    }

    fn ctx<'a>(group: &'a ModelGroup, candidates: &'a [usize], stats: &'a LiveStats) -> RouteContext<'a> {
        RouteContext {
            group,
            candidates,
            stats,
            now_ms: 0,
            estimated_tokens: 0,
        }
    }

    #[test]
    fn weighted_pick_honours_weights_and_exclusion_on_both_paths() {
        let weighted = ModelGroup::new("g", (0..4).map(|i| deployment(i, (i + 1) as f64)).collect()).unwrap();
        let stats = LiveStats::new(4);
        let all = [0, 1, 2, 3];
        let some = [3, 1, 2];
        let mut rng = fastrand::Rng::with_seed(3);
        for (candidates, exclude, expected) in [
            (&all[..], None, [0.1, 0.2, 0.3, 0.4]),
            (&all[..], Some(2), [1.0 / 7.0, 2.0 / 7.0, 0.0, 4.0 / 7.0]),
            (&all[..], Some(3), [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0, 0.0]),
            (&some[..], None, [0.0, 2.0 / 9.0, 3.0 / 9.0, 4.0 / 9.0]),
            (&some[..], Some(3), [0.0, 0.4, 0.6, 0.0]),
        ] {
            let ctx = ctx(&weighted, candidates, &stats);
            let mut counts = [0usize; 4];
            for _ in 0..40_000 {
                counts[weighted_pick(&ctx, &mut rng, exclude).unwrap()] += 1;
            }
            for (count, want) in counts.iter().zip(expected) {
                let share = *count as f64 / 40_000.0;
                assert!((share - want).abs() < 0.015, "{candidates:?} {exclude:?}: {counts:?}");
            }
        }
        let one = group(1);
        let stats = LiveStats::new(1);
        assert_eq!(weighted_pick(&ctx(&one, &[0], &stats), &mut rng, Some(0)), None);
        assert_eq!(weighted_pick(&ctx(&weighted, &[2], &stats), &mut rng, Some(2)), None);
        // As many candidates as deployments, but not the whole group.
        let two = group(2);
        let stats = LiveStats::new(2);
        for _ in 0..1_000 {
            assert_eq!(weighted_pick(&ctx(&two, &[0, 7], &stats), &mut rng, None), Some(0));
        }
    }

    #[test]
    fn context_skips_out_of_range_candidates() {
        let group = group(2);
        let stats = LiveStats::new(2);
        let ctx = ctx(&group, &[1, 7], &stats);
        assert_eq!(ctx.iter().map(|c| c.index).collect::<Vec<_>>(), vec![1]);
        assert_eq!(ctx.no_deployment(), RoutingError::NoDeployment("g".into()));
    }

    #[test]
    fn unknown_latency_is_best_until_probed() {
        let stats = LiveStats::new(1);
        let d = stats.deployment(DeploymentId(0));
        assert_eq!(latency_score(d), 0.0);
        let probe = stats.start(DeploymentId(0));
        assert_eq!(latency_score(d), f64::INFINITY);
        drop(probe);
        stats.record_success(DeploymentId(0), crate::Outcome::default(), 0);
        assert_eq!(latency_score(d), 0.0);
    }
}
