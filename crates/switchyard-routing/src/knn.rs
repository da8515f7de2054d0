//! K-nearest-neighbour quality prediction over an HNSW index of training
//! query embeddings: a query's predicted score for each model is the
//! similarity-weighted mean of its `k` nearest training queries' scores.

use hnsw_rs::prelude::{DistL2, Hnsw};
use serde::{Deserialize, Serialize};

use crate::embed::dot;

/// KNN and HNSW parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnnParams {
    /// Neighbours averaged per query.
    pub k: usize,
    /// HNSW search breadth (higher: better recall, slower).
    pub ef_search: usize,
    /// HNSW construction breadth.
    pub ef_construction: usize,
    /// HNSW links per node.
    pub max_connections: usize,
}

impl Default for KnnParams {
    fn default() -> Self {
        Self {
            k: 20,
            ef_search: 64,
            ef_construction: 200,
            max_connections: 24,
        }
    }
}

/// An index of training embeddings and their per-model scores.
pub struct KnnIndex {
    hnsw: Hnsw<'static, f32, DistL2>,
    embeddings: Vec<Vec<f32>>,
    scores: Vec<Vec<f32>>,
    params: KnnParams,
}

impl std::fmt::Debug for KnnIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnnIndex")
            .field("points", &self.embeddings.len())
            .field("params", &self.params)
            .finish()
    }
}

impl KnnIndex {
    /// Indexes L2-normalised `embeddings` with their per-model `scores`.
    /// Building takes about a second per 10 000 points on one core.
    pub fn build(embeddings: Vec<Vec<f32>>, scores: Vec<Vec<f32>>, params: KnnParams) -> Self {
        let layers = 16.min(((embeddings.len().max(2) as f64).ln().ceil() as usize).max(1));
        let hnsw = Hnsw::new(
            params.max_connections.clamp(4, 256),
            embeddings.len().max(1),
            layers,
            params.ef_construction.max(params.k),
            DistL2 {},
        );
        for (i, e) in embeddings.iter().enumerate() {
            hnsw.insert_slice((e.as_slice(), i));
        }
        Self {
            hnsw,
            embeddings,
            scores,
            params,
        }
    }

    /// The parameters.
    pub fn params(&self) -> KnnParams {
        self.params
    }

    /// The indexed embeddings and scores.
    pub fn data(&self) -> (&[Vec<f32>], &[Vec<f32>]) {
        (&self.embeddings, &self.scores)
    }

    /// The `k` approximate nearest neighbours of `query`: (index, cosine similarity).
    pub fn neighbours(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        self.hnsw
            .search(query, k, self.params.ef_search.max(k))
            .into_iter()
            .map(|n| (n.d_id, 1.0 - n.distance * n.distance / 2.0))
            .collect()
    }

    /// The exact `k` nearest neighbours by brute force, for recall checks.
    pub fn exact_neighbours(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        let mut all: Vec<(usize, f32)> = self
            .embeddings
            .iter()
            .enumerate()
            .map(|(i, e)| (i, dot(query, e)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all.truncate(k);
        all
    }

    /// Predicted score of each model for `query`.
    pub fn predict(&self, query: &[f32]) -> Vec<f32> {
        let models = self.scores.first().map_or(0, Vec::len);
        let mut out = vec![0.0f32; models];
        let mut total = 0.0f32;
        for (i, sim) in self.neighbours(query, self.params.k) {
            let Some(row) = self.scores.get(i) else {
                continue;
            };
            let w = sim.max(1e-3);
            total += w;
            for (o, s) in out.iter_mut().zip(row) {
                *o += w * s;
            }
        }
        if total > 0.0 {
            out.iter_mut().for_each(|o| *o /= total);
        }
        out
    }

    /// Recall@k of the HNSW search against exact search over `queries`.
    pub fn recall_at_k(&self, queries: &[Vec<f32>], k: usize) -> f64 {
        let mut found = 0usize;
        let mut wanted = 0usize;
        for q in queries {
            let exact: Vec<usize> = self.exact_neighbours(q, k).into_iter().map(|(i, _)| i).collect();
            let approx: Vec<usize> = self.neighbours(q, k).into_iter().map(|(i, _)| i).collect();
            wanted += exact.len();
            found += exact.iter().filter(|i| approx.contains(i)).count();
        }
        if wanted == 0 { 1.0 } else { found as f64 / wanted as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = dot(&v, &v).sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    /// Clustered points: cluster `c` is near axis `c`, and model `c` is the one that answers it.
    fn clustered(n: usize, dims: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (mut e, mut s) = (Vec::new(), Vec::new());
        for i in 0..n {
            let c = i % 3;
            let v: Vec<f32> = (0..dims)
                .map(|d| if d == c { 1.0 } else { 0.0 } + (rng.f32() - 0.5) * 0.3)
                .collect();
            e.push(unit(v));
            s.push((0..3).map(|m| if m == c { 1.0 } else { 0.0 }).collect());
        }
        (e, s)
    }

    #[test]
    fn predicts_the_neighbourhoods_model_with_high_recall() {
        let (e, s) = clustered(600, 16, 1);
        let index = KnnIndex::build(e, s, KnnParams::default());
        let (queries, truth) = clustered(60, 16, 2);
        for (q, t) in queries.iter().zip(&truth) {
            let p = index.predict(q);
            let best = (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
            assert_eq!(t[best], 1.0, "{p:?}");
        }
        let recall = index.recall_at_k(&queries, 10);
        assert!(recall >= 0.95, "recall@10 {recall}");
    }
}
