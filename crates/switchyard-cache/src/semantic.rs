//! The semantic cache's index: per model group, prompt embeddings in an
//! HNSW index, each pointing at the exact-match key its answer is stored under.

use std::collections::HashSet;

use parking_lot::RwLock;
use switchyard_routing::vector::VectorIndex;

use crate::key::CacheKey;

/// A cached prompt similar enough to the one asked.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticHit {
    /// Where its answer is stored.
    pub key: CacheKey,
    /// Cosine similarity of the two prompts.
    pub similarity: f32,
}

struct Entry {
    /// Hash of the request without its prompt: tools, sampling parameters…
    params: String,
    key: CacheKey,
}

struct Inner {
    index: VectorIndex,
    entries: Vec<Entry>,
    /// The keys indexed: a prompt stored again is not indexed twice.
    keys: HashSet<CacheKey>,
}

/// One model group's semantic index. When it is full it starts again empty
/// (its answers stay in the exact cache until they expire).
pub struct SemanticIndex {
    min_similarity: f32,
    capacity: usize,
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for SemanticIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SemanticIndex")
            .field("min_similarity", &self.min_similarity)
            .field("entries", &self.inner.read().entries.len())
            .finish()
    }
}

/// Neighbours examined per lookup: the closest prompts may have been asked
/// with other parameters.
const CANDIDATES: usize = 8;

/// The widest search of one lookup, when the closest prompts were all asked
/// with other parameters.
const MAX_CANDIDATES: usize = 512;

impl SemanticIndex {
    /// An empty index answering prompts at least `min_similarity` (cosine)
    /// close, holding up to `capacity` prompts.
    pub fn new(min_similarity: f32, capacity: usize) -> Self {
        Self {
            min_similarity,
            capacity,
            inner: RwLock::new(Inner {
                index: VectorIndex::new(capacity),
                entries: Vec::new(),
                keys: HashSet::new(),
            }),
        }
    }

    /// The similarity a hit needs.
    pub fn min_similarity(&self) -> f32 {
        self.min_similarity
    }

    /// The cached prompts asked with the same `params` that are similar
    /// enough, closest first (the closest one's answer may have expired).
    pub fn lookup(&self, embedding: &[f32], params: &str) -> Vec<SemanticHit> {
        let inner = self.inner.read();
        // The nearest prompts may all have been asked with other parameters
        // (other keys, namespaces, settings): the search widens while the
        // neighbours it finds are still similar enough.
        let mut k = CANDIDATES;
        loop {
            let found = inner.index.search(embedding, k);
            let close = found.iter().take_while(|(_, sim)| *sim >= self.min_similarity).count();
            let hits: Vec<SemanticHit> = found
                .iter()
                .filter(|(_, sim)| *sim >= self.min_similarity)
                .filter_map(|&(id, similarity)| {
                    let entry = inner.entries.get(id)?;
                    (entry.params == params).then(|| SemanticHit {
                        key: entry.key.clone(),
                        similarity,
                    })
                })
                .collect();
            if !hits.is_empty() || close < k || k >= MAX_CANDIDATES {
                return hits;
            }
            k *= 4;
        }
    }

    /// Remembers that the answer to `embedding`'s prompt is stored under
    /// `key`; a key already indexed is left as it is.
    pub fn insert(&self, embedding: &[f32], params: String, key: CacheKey) {
        // A full index is replaced by an empty one made, and the old one
        // freed, outside the lock: lookups do not wait for either.
        let full = {
            let inner = self.inner.read();
            if inner.keys.contains(&key) {
                return;
            }
            inner.entries.len() >= self.capacity
        };
        let fresh = full.then(|| VectorIndex::new(self.capacity));
        let mut replaced = None;
        {
            let mut inner = self.inner.write();
            if inner.keys.contains(&key) {
                return;
            }
            if inner.entries.len() >= self.capacity {
                let index = fresh.unwrap_or_else(|| VectorIndex::new(self.capacity));
                replaced = Some((
                    std::mem::replace(&mut inner.index, index),
                    std::mem::take(&mut inner.entries),
                    std::mem::take(&mut inner.keys),
                ));
            }
            let id = inner.entries.len();
            inner.keys.insert(key.clone());
            inner.entries.push(Entry { params, key });
            inner.index.insert(id, embedding);
        }
        drop(replaced);
    }

    /// Prompts indexed.
    pub fn len(&self) -> usize {
        self.inner.read().entries.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    fn close_prompts_with_the_same_parameters_hit() {
        let index = SemanticIndex::new(0.9, 100);
        index.insert(&unit(&[1.0, 0.0, 0.0]), "p".into(), CacheKey("a".into()));
        index.insert(&unit(&[0.0, 1.0, 0.0]), "p".into(), CacheKey("b".into()));
        let hits = index.lookup(&unit(&[1.0, 0.2, 0.0]), "p");
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].key, CacheKey("a".into()));
        assert!(hits[0].similarity > 0.9 && hits[0].similarity < 1.0);
        assert!(index.lookup(&unit(&[1.0, 0.2, 0.0]), "other params").is_empty());
        assert!(
            index.lookup(&unit(&[1.0, 1.0, 0.0]), "p").is_empty(),
            "0.71 is below 0.9"
        );
    }

    #[test]
    fn every_close_prompt_is_returned_closest_first_and_a_key_is_indexed_once() {
        let index = SemanticIndex::new(0.9, 16);
        index.insert(&unit(&[1.0, 0.1, 0.0]), "p".into(), CacheKey("near".into()));
        index.insert(&unit(&[1.0, 0.3, 0.0]), "p".into(), CacheKey("further".into()));
        for _ in 0..20 {
            index.insert(&unit(&[1.0, 0.1, 0.0]), "p".into(), CacheKey("near".into()));
        }
        assert_eq!(index.len(), 2, "stored again, indexed once");
        let keys: Vec<_> = index
            .lookup(&unit(&[1.0, 0.0, 0.0]), "p")
            .into_iter()
            .map(|h| h.key.0)
            .collect();
        assert_eq!(keys, ["near", "further"]);
    }

    #[test]
    fn a_close_prompt_behind_many_asked_with_other_parameters_is_found() {
        let index = SemanticIndex::new(0.9, 1_000);
        for i in 0..40 {
            let key = CacheKey(format!("other-{i}"));
            index.insert(&unit(&[1.0, 0.01 * i as f32, 0.0]), "other key".into(), key);
        }
        index.insert(&unit(&[1.0, 0.45, 0.0]), "mine".into(), CacheKey("mine".into()));
        let hits = index.lookup(&unit(&[1.0, 0.0, 0.0]), "mine");
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].key, CacheKey("mine".into()));
    }

    #[test]
    fn a_full_index_starts_again() {
        let index = SemanticIndex::new(0.9, 16);
        for i in 0..16 {
            index.insert(&unit(&[1.0, i as f32, 0.5]), "p".into(), CacheKey(format!("{i}")));
        }
        assert_eq!(index.len(), 16);
        index.insert(&unit(&[0.0, 0.0, 1.0]), "p".into(), CacheKey("new".into()));
        assert_eq!(index.len(), 1);
    }
}
