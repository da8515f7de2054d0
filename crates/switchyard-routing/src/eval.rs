//! Offline evaluation of a router on labelled data: quality and cost at each
//! λ of the quality–cost trade-off, reference points (oracle, every single
//! model, random, cheapest), and RouterBench's AIQ.

use serde::Serialize;

use crate::learned::{Objective, decide};

/// Mean quality and mean cost of one way of routing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Mean cost per query.
    pub cost: f64,
    /// Mean quality per query.
    pub quality: f64,
}

/// The router at one λ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepPoint {
    /// λ.
    pub lambda: f64,
    /// Its result.
    #[serde(flatten)]
    pub point: Point,
}

/// Everything `cargo xtask eval` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The router at each λ.
    pub sweep: Vec<SweepPoint>,
    /// Best model per query (cheapest on ties).
    pub oracle: Point,
    /// Each model alone, by name.
    pub single: Vec<(String, Point)>,
    /// The best single model by quality.
    pub best_single: (String, Point),
    /// The cheapest single model.
    pub cheapest: (String, Point),
    /// A uniformly random model per query (expected value).
    pub random: Point,
    /// The router's AIQ.
    pub aiq: f64,
    /// The AIQ of the single models' hull ("zero router").
    pub zero_router_aiq: f64,
    /// The oracle's AIQ (its points over λ).
    pub oracle_aiq: f64,
    /// Cost, as a fraction of the best single model's, at which the router
    /// reaches 95% of that model's quality (`None` if never, or if that
    /// model costs nothing).
    pub cost_for_95: Option<f64>,
    /// The same for 100%.
    pub cost_for_100: Option<f64>,
}

/// λ values swept: 0, then geometric from 0.001 to 100.
pub fn lambdas() -> Vec<f64> {
    let mut out = vec![0.0];
    let mut l = 0.001f64;
    while l <= 100.0 * 1.0001 {
        out.push(l);
        l *= 10f64.powf(0.1);
    }
    out
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// Result of routing query `i` to `choice[i]`.
fn point(choice: &[usize], scores: &[Vec<f32>], costs: &[Vec<f64>]) -> Point {
    Point {
        quality: mean(choice.iter().enumerate().map(|(i, &j)| f64::from(scores[i][j]))),
        cost: mean(choice.iter().enumerate().map(|(i, &j)| costs[i][j])),
    }
}

/// The non-decreasing upper convex hull of `points`, cheapest first: the
/// qualities reachable at each cost by mixing two operating points.
fn hull(points: &[Point]) -> Vec<Point> {
    let mut pts: Vec<Point> = points.iter().copied().filter(|p| p.cost.is_finite()).collect();
    pts.sort_by(|a, b| a.cost.total_cmp(&b.cost).then(b.quality.total_cmp(&a.quality)));
    // Pareto front: each point must beat every cheaper one.
    let mut front: Vec<Point> = Vec::new();
    for p in pts {
        if front.last().is_none_or(|l| p.quality > l.quality) {
            front.push(p);
        }
    }
    // Upper concave hull (monotone chain).
    let mut hull: Vec<Point> = Vec::new();
    for p in front {
        while hull.len() >= 2 {
            let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
            let cross = (b.cost - a.cost) * (p.quality - a.quality) - (b.quality - a.quality) * (p.cost - a.cost);
            if cross >= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(p);
    }
    hull
}

/// Area under the non-decreasing upper hull of `points` over `[lo, hi]`,
/// divided by `hi − lo`. Below the cheapest point the curve is 0; above the
/// priciest it stays at its last value. When the range is a single cost
/// (every model costs the same, or the data has no costs), the mean over it
/// is the curve's value there.
pub fn aiq(points: &[Point], lo: f64, hi: f64) -> f64 {
    let hull = hull(points);
    let f = |c: f64| -> f64 {
        let Some(first) = hull.first() else { return 0.0 };
        if c < first.cost {
            return 0.0;
        }
        for w in hull.windows(2) {
            if c <= w[1].cost {
                let t = (c - w[0].cost) / (w[1].cost - w[0].cost).max(f64::MIN_POSITIVE);
                return w[0].quality + t * (w[1].quality - w[0].quality);
            }
        }
        hull.last().map_or(0.0, |p| p.quality)
    };
    if hi <= lo {
        return f(lo);
    }
    // The curve is piecewise linear: integrate exactly between breakpoints.
    let mut xs: Vec<f64> = vec![lo, hi];
    xs.extend(hull.iter().map(|p| p.cost).filter(|&c| c > lo && c < hi));
    // The step from 0 up to the cheapest point, when it lies in the range
    // (at its upper end too: the curve is 0 just below it).
    if let Some(first) = hull.first().filter(|p| p.cost > lo && p.cost <= hi) {
        xs.push(first.cost - f64::EPSILON * first.cost.abs().max(1.0));
    }
    xs.sort_by(f64::total_cmp);
    let area: f64 = xs.windows(2).map(|w| (w[1] - w[0]) * (f(w[0]) + f(w[1])) / 2.0).sum();
    area / (hi - lo)
}

/// The cheapest cost on the hull of `points` (interpolating between two
/// operating points, as AIQ does) at which quality reaches `target`.
pub fn cost_to_reach(points: &[Point], target: f64) -> Option<f64> {
    let hull = hull(points);
    let first = hull.first()?;
    if first.quality >= target {
        return Some(first.cost);
    }
    hull.windows(2).find(|w| w[1].quality >= target).map(|w| {
        let t = (target - w[0].quality) / (w[1].quality - w[0].quality).max(f64::MIN_POSITIVE);
        w[0].cost + t * (w[1].cost - w[0].cost)
    })
}

/// Evaluates predictions `predicted[i][j]` against true `scores` and `costs`
/// (query `i`, model `j`). Decisions use each model's mean cost `mean_costs`,
/// as the gateway does: a query's own cost is not known before it is answered.
pub fn evaluate(
    models: &[String],
    predicted: &[Vec<f32>],
    scores: &[Vec<f32>],
    costs: &[Vec<f64>],
    mean_costs: &[f64],
) -> Report {
    let m = models.len();
    let allowed = vec![true; m];
    let sweep: Vec<SweepPoint> = lambdas()
        .into_iter()
        .map(|lambda| {
            let choice: Vec<usize> = predicted
                .iter()
                .map(|p| decide(p, mean_costs, &allowed, Objective::Tradeoff { lambda }).unwrap_or(0))
                .collect();
            SweepPoint {
                lambda,
                point: point(&choice, scores, costs),
            }
        })
        .collect();
    // The oracle knows each query's true scores and its own costs; λ weighs
    // costs on the router's scale (the dearest mean cost), the same for
    // every query.
    let scale = mean_costs.iter().copied().fold(0.0f64, f64::max);
    let oracle_pick = |s: &[f32], c: &[f64], lambda: f64| {
        let value = |j: usize| f64::from(s[j]) - if scale > 0.0 { lambda * c[j] / scale } else { 0.0 };
        (0..m.min(s.len()).min(c.len()))
            .max_by(|&a, &b| value(a).total_cmp(&value(b)).then_with(|| c[b].total_cmp(&c[a])))
            .unwrap_or(0)
    };
    let oracle_sweep: Vec<Point> = lambdas()
        .into_iter()
        .map(|lambda| {
            let choice: Vec<usize> = scores
                .iter()
                .zip(costs)
                .map(|(s, c)| oracle_pick(s, c, lambda))
                .collect();
            point(&choice, scores, costs)
        })
        .collect();
    let single: Vec<(String, Point)> = (0..m)
        .map(|j| (models[j].clone(), point(&vec![j; scores.len()], scores, costs)))
        .collect();
    // Ties: the cheaper model is the best, the better one the cheapest.
    let best_single = single
        .iter()
        .max_by(|a, b| {
            a.1.quality
                .total_cmp(&b.1.quality)
                .then_with(|| b.1.cost.total_cmp(&a.1.cost))
        })
        .cloned()
        .unwrap_or_else(|| {
            (
                String::new(),
                Point {
                    cost: 0.0,
                    quality: 0.0,
                },
            )
        });
    let cheapest = single
        .iter()
        .min_by(|a, b| {
            a.1.cost
                .total_cmp(&b.1.cost)
                .then_with(|| b.1.quality.total_cmp(&a.1.quality))
        })
        .cloned()
        .unwrap_or_else(|| {
            (
                String::new(),
                Point {
                    cost: 0.0,
                    quality: 0.0,
                },
            )
        });
    let priciest = single.iter().map(|s| s.1.cost).fold(0.0f64, f64::max);
    let singles: Vec<Point> = single.iter().map(|s| s.1).collect();
    let random = Point {
        quality: mean(singles.iter().map(|p| p.quality)),
        cost: mean(singles.iter().map(|p| p.cost)),
    };
    let router_points: Vec<Point> = sweep.iter().map(|s| s.point).collect();
    let (lo, hi) = (cheapest.1.cost, priciest);
    // A share of the best single model's cost; none when that costs nothing.
    let base_cost = Some(best_single.1.cost).filter(|c| *c > 0.0);
    Report {
        oracle: oracle_sweep.first().copied().unwrap_or(Point {
            cost: 0.0,
            quality: 0.0,
        }),
        aiq: aiq(&router_points, lo, hi),
        zero_router_aiq: aiq(&singles, lo, hi),
        oracle_aiq: aiq(&oracle_sweep, lo, hi),
        cost_for_95: cost_to_reach(&router_points, 0.95 * best_single.1.quality)
            .zip(base_cost)
            .map(|(c, b)| c / b),
        cost_for_100: cost_to_reach(&router_points, best_single.1.quality)
            .zip(base_cost)
            .map(|(c, b)| c / b),
        sweep,
        single,
        best_single,
        cheapest,
        random,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(cost: f64, quality: f64) -> Point {
        Point { cost, quality }
    }

    #[test]
    fn aiq_of_simple_curves() {
        // A flat line at 0.5 across the range.
        assert!((aiq(&[p(0.0, 0.5), p(1.0, 0.5)], 0.0, 1.0) - 0.5).abs() < 1e-9);
        // A straight line from 0 to 1.
        assert!((aiq(&[p(0.0, 0.0), p(1.0, 1.0)], 0.0, 1.0) - 0.5).abs() < 1e-9);
        // A point below the hull does not count; a dominated one neither.
        let a = aiq(&[p(0.0, 0.0), p(0.5, 0.2), p(1.0, 1.0), p(0.9, 0.1)], 0.0, 1.0);
        assert!((a - 0.5).abs() < 1e-9, "{a}");
        // The hull is non-decreasing: a pricier, worse point is ignored.
        let a = aiq(&[p(0.0, 0.8), p(1.0, 0.2)], 0.0, 1.0);
        assert!((a - 0.8).abs() < 1e-9, "{a}");
        // Nothing below the cheapest point.
        let a = aiq(&[p(0.5, 1.0)], 0.0, 1.0);
        assert!((a - 0.5).abs() < 1e-6, "{a}");
        // At the top of the range too: the curve is 0 until the very end.
        let a = aiq(&[p(1.0, 1.0)], 0.0, 1.0);
        assert!(a < 1e-6, "{a}");
        let almost = aiq(&[p(0.9999, 1.0)], 0.0, 1.0);
        assert!((a - almost).abs() < 1e-3, "{a} vs {almost}");
        // A single cost: the best quality reached there.
        let a = aiq(&[p(0.0, 0.6), p(0.0, 0.9), p(0.0, 0.3)], 0.0, 0.0);
        assert!((a - 0.9).abs() < 1e-9, "{a}");
    }

    #[test]
    fn cost_to_reach_interpolates_on_the_hull() {
        let points = [p(0.1, 0.5), p(1.0, 1.0), p(0.6, 0.55)];
        // Halfway between the two hull points; the point below the hull is ignored.
        let c = cost_to_reach(&points, 0.75).unwrap();
        assert!((c - 0.55).abs() < 1e-9, "{c}");
        assert_eq!(cost_to_reach(&points, 0.4), Some(0.1));
        assert_eq!(cost_to_reach(&points, 1.0), Some(1.0));
        assert_eq!(cost_to_reach(&points, 1.01), None);
    }

    #[test]
    fn the_oracle_bounds_a_perfect_router() {
        let models = vec!["big".to_owned(), "small".to_owned()];
        // The small model solves the even queries.
        let scores: Vec<Vec<f32>> = (0..10).map(|i| vec![1.0, if i % 2 == 0 { 1.0 } else { 0.0 }]).collect();
        let costs: Vec<Vec<f64>> = (0..10).map(|_| vec![1.0, 0.1]).collect();
        let mean_costs = [1.0, 0.1];
        let perfect = evaluate(&models, &scores, &scores, &costs, &mean_costs);
        assert!((perfect.oracle.quality - 1.0).abs() < 1e-9);
        assert!((perfect.oracle.cost - 0.55).abs() < 1e-9, "{:?}", perfect.oracle);
        assert_eq!(perfect.best_single.0, "big");
        assert_eq!(perfect.cheapest.0, "small");
        assert!(perfect.aiq > perfect.zero_router_aiq);
        assert!((perfect.aiq - perfect.oracle_aiq).abs() < 1e-9);
        assert_eq!(perfect.cost_for_100, Some(0.55));
        // A router that always predicts "big is better" is the big model.
        let dumb: Vec<Vec<f32>> = (0..10).map(|_| vec![1.0, 0.0]).collect();
        let r = evaluate(&models, &dumb, &scores, &costs, &mean_costs);
        assert!((r.sweep[0].point.quality - 1.0).abs() < 1e-9);
        assert!(r.aiq <= perfect.aiq);
    }

    #[test]
    fn ties_go_to_the_cheaper_model_by_the_querys_own_cost() {
        let models = vec!["a".to_owned(), "b".to_owned()];
        // Equally good; `a` costs more on this query, though its mean
        // (from training) says otherwise.
        let r = evaluate(
            &models,
            &[vec![1.0, 1.0]],
            &[vec![1.0, 1.0]],
            &[vec![0.01, 0.002]],
            &[0.001, 0.002],
        );
        assert!((r.oracle.cost - 0.002).abs() < 1e-12, "{:?}", r.oracle);
        assert_eq!(
            r.best_single.0, "b",
            "equal quality: the cheaper is the best single model"
        );
    }
}
