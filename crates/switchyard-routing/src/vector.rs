//! A growing HNSW index of L2-normalised vectors searched by cosine
//! similarity: the semantic cache's lookup structure.

use hnsw_rs::prelude::{DistL2, Hnsw};

/// An HNSW index that takes insertions while it is searched.
pub struct VectorIndex {
    hnsw: Hnsw<'static, f32, DistL2>,
    capacity: usize,
    len: std::sync::atomic::AtomicUsize,
    ef_search: usize,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl VectorIndex {
    /// An empty index sized for `capacity` vectors.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(16);
        let layers = 16.min(((capacity as f64).ln().ceil() as usize).max(1));
        Self {
            hnsw: Hnsw::new(16, capacity, layers, 100, DistL2 {}),
            capacity,
            len: std::sync::atomic::AtomicUsize::new(0),
            ef_search: 64,
        }
    }

    /// Vectors inserted so far.
    pub fn len(&self) -> usize {
        self.len.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether nothing was inserted yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the index holds as many vectors as it was sized for.
    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// Inserts an L2-normalised `vector` under `id`.
    pub fn insert(&self, id: usize, vector: &[f32]) {
        self.hnsw.insert_slice((vector, id));
        self.len.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The `k` approximate nearest neighbours of an L2-normalised `query`:
    /// (id, cosine similarity), most similar first.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut found: Vec<(usize, f32)> = self
            .hnsw
            .search(query, k, self.ef_search.max(k))
            .into_iter()
            .map(|n| (n.d_id, 1.0 - n.distance * n.distance / 2.0))
            .collect();
        found.sort_by(|a, b| b.1.total_cmp(&a.1));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn nearest_vector_is_found_with_its_cosine_similarity() {
        let index = VectorIndex::new(100);
        assert!(index.search(&unit(&[1.0, 0.0, 0.0]), 3).is_empty());
        index.insert(7, &unit(&[1.0, 0.0, 0.0]));
        index.insert(8, &unit(&[0.0, 1.0, 0.0]));
        index.insert(9, &unit(&[1.0, 1.0, 0.0]));
        let found = index.search(&unit(&[1.0, 0.1, 0.0]), 3);
        assert_eq!(found[0].0, 7);
        assert!((found[0].1 - 0.995).abs() < 0.01, "{found:?}");
        assert_eq!(found.last().map(|f| f.0), Some(8));
        assert_eq!(index.len(), 3);
    }
}
