//! The gateway's per-request CPU work, without the network: parsing the body
//! once, re-encoding it for the upstream with the model swapped, and choosing
//! a deployment with every built-in strategy.
#![allow(missing_docs, clippy::unwrap_used, reason = "benchmark harness")]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use switchyard_api::ChatCompletionRequest;
use switchyard_benches::live_stats;
use switchyard_benches::{chat_body, group};
use switchyard_routing::{RouteContext, SimpleShuffle, StrategyRegistry};

fn request_body(c: &mut Criterion) {
    let body = chat_body();
    c.bench_function("parse chat request", |b| {
        b.iter(|| serde_json::from_slice::<ChatCompletionRequest>(black_box(&body)).unwrap())
    });
    let parsed: ChatCompletionRequest = serde_json::from_slice(&body).unwrap();
    c.bench_function("encode upstream request", |b| {
        b.iter(|| {
            let mut req = parsed.clone();
            req.model = "upstream-model".into();
            serde_json::to_vec(black_box(&req)).unwrap()
        })
    });
}

fn routing(c: &mut Criterion) {
    let mut bench = c.benchmark_group("simple-shuffle pick");
    for n in [1, 10, 100] {
        let group = group(n).unwrap();
        bench.bench_with_input(BenchmarkId::from_parameter(n), &group, |b, g| {
            b.iter(|| SimpleShuffle.pick(black_box(g)).unwrap().id)
        });
    }
    bench.finish();
}

fn strategies(c: &mut Criterion) {
    let registry = StrategyRegistry::with_builtins();
    let now_ms = 90_000;
    let mut bench = c.benchmark_group("choose");
    for n in [1, 10, 100] {
        let group = group(n).unwrap();
        let (stats, _in_flight) = live_stats(n, now_ms);
        let candidates: Vec<usize> = (0..n).collect();
        let ctx = RouteContext {
            group: &group,
            candidates: &candidates,
            stats: &stats,
            now_ms,
            estimated_tokens: 500,
        };
        for name in registry.names() {
            let strategy = registry.get(name).unwrap();
            let mut rng = fastrand::Rng::with_seed(n as u64);
            bench.bench_with_input(BenchmarkId::new(name, n), &ctx, |b, ctx| {
                b.iter(|| strategy.choose(black_box(ctx), &mut rng).unwrap())
            });
        }
    }
    bench.finish();
}

criterion_group!(benches, request_body, routing, strategies);
criterion_main!(benches);
