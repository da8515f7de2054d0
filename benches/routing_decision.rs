//! A learned router's decision for one request: embedding the prompt with
//! all-MiniLM-L6-v2 (256 tokens, uncached and cached) or with its static
//! distillation, predicting every candidate's score with the HNSW KNN or the
//! MLP router, and choosing.
//!
//! Needs the models (`cargo xtask models fetch` and `cargo xtask models
//! distill`). `cargo xtask bench routing`
//! runs it on one core (`RAYON_NUM_THREADS=1`) and prints the medians.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard_routing::embed::{Embedder, EmbedderConfig};
use switchyard_routing::knn::{KnnIndex, KnnParams};
use switchyard_routing::learned::{Objective, decide};
use switchyard_routing::mlp::{Mlp, MlpParams};

/// Candidate models, as in routerbench_subset11.
const MODELS: usize = 11;
/// Training queries in the KNN index (routerbench_subset11 has about 2,200).
const TRAIN: usize = 2_500;

fn embedder(model: &str, cache_entries: u64) -> Embedder {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models").join(model);
    Embedder::load(&EmbedderConfig {
        model_dir: dir,
        cache_entries,
        ..EmbedderConfig::default()
    })
    .expect("an embedding model is missing: run `cargo xtask models fetch` and `cargo xtask models distill`")
}

/// A prompt longer than 256 tokens (the embedder keeps its last 256).
fn long_prompt() -> String {
    let sentence = "The quarterly report shows revenue growth in every region, while costs of cloud \
                    infrastructure rose faster than expected because of new inference workloads. ";
    let mut text = sentence.repeat(12);
    text.push_str("Question: which region grew fastest, and why did costs rise?");
    text
}

/// Clustered unit vectors and per-model scores, a stand-in for training data.
fn training_data(dims: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut rng = fastrand::Rng::with_seed(7);
    let centres: Vec<Vec<f32>> = (0..40).map(|_| (0..dims).map(|_| rng.f32() - 0.5).collect()).collect();
    let mut x = Vec::with_capacity(TRAIN);
    let mut y = Vec::with_capacity(TRAIN);
    for i in 0..TRAIN {
        let centre = &centres[i % centres.len()];
        let mut v: Vec<f32> = centre.iter().map(|c| c + 0.2 * (rng.f32() - 0.5)).collect();
        let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= norm);
        x.push(v);
        y.push((0..MODELS).map(|_| if rng.bool() { 1.0 } else { 0.0 }).collect());
    }
    (x, y)
}

fn decision(c: &mut Criterion) {
    let cold = embedder("all-MiniLM-L6-v2", 0);
    let cached = embedder("all-MiniLM-L6-v2", 1_000);
    let fast = embedder("all-MiniLM-L6-v2-static", 0);
    assert!(fast.is_static());
    let prompt = long_prompt();
    let tokens = cold.token_count(&prompt).unwrap();
    assert_eq!(tokens, 256, "the prompt must fill the 256-token window");
    let costs: Vec<f64> = (0..MODELS).map(|j| 0.1 * (j + 1) as f64).collect();
    let allowed = vec![true; MODELS];
    let objective = Objective::Tradeoff { lambda: 0.3 };

    let (x, y) = training_data(cold.dims());
    let knn = KnnIndex::build(x.clone(), y.clone(), KnnParams::default());
    let rows: Vec<usize> = (0..x.len()).collect();
    let params = MlpParams {
        max_epochs: 1,
        ..MlpParams::default()
    };
    let (mlp, _) = Mlp::train(&x, &y, &rows, &[], &params).unwrap();
    let query = cold.embed_one(&prompt).unwrap();

    let mut group = c.benchmark_group("learned routing");
    group.bench_function("embed 256 tokens (uncached)", |b| {
        b.iter(|| cold.embed_one(black_box(&prompt)).unwrap())
    });
    cached.embed_one(&prompt).unwrap();
    group.bench_function("embed 256 tokens (cached)", |b| {
        b.iter(|| cached.embed_one(black_box(&prompt)).unwrap())
    });
    group.bench_function("knn predict + decide", |b| {
        b.iter(|| {
            let scores = knn.predict(black_box(&query));
            decide(&scores, &costs, &allowed, objective)
        })
    });
    group.bench_function("mlp predict + decide", |b| {
        b.iter(|| {
            let scores = mlp.predict(black_box(&query)).unwrap();
            decide(&scores, &costs, &allowed, objective)
        })
    });
    group.bench_function("embed (cached) + knn decide", |b| {
        b.iter(|| {
            let e = cached.embed_one(black_box(&prompt)).unwrap();
            decide(&knn.predict(&e), &costs, &allowed, objective)
        })
    });
    assert_eq!(fast.token_count(&prompt).unwrap(), 256);
    group.bench_function("static embed 256 tokens (uncached)", |b| {
        b.iter(|| fast.embed_one(black_box(&prompt)).unwrap())
    });
    group.bench_function("static embed (uncached) + mlp decide", |b| {
        b.iter(|| {
            let e = fast.embed_one(black_box(&prompt)).unwrap();
            decide(&mlp.predict(&e).unwrap(), &costs, &allowed, objective)
        })
    });
    group.bench_function("static embed (uncached) + knn decide", |b| {
        b.iter(|| {
            let e = fast.embed_one(black_box(&prompt)).unwrap();
            decide(&knn.predict(&e), &costs, &allowed, objective)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // The uncached embedding takes tens of milliseconds per call.
    config = Criterion::default().sample_size(20);
    targets = decision
}
criterion_main!(benches);
