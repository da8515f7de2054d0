//! Response caching for Switchyard.
//!
//! - [`exact_key`]: a stable hash of everything that changes an answer (the
//!   model group, the messages or prompt, tools, sampling parameters, the
//!   response format, whether it streams), and optionally the caller's key.
//! - [`ResponseCache`]: stored answers with a time to live, in process
//!   ([`moka`], bounded by bytes) or in Redis (shared by replicas). A Redis
//!   outage is a miss, never an error.
//! - [`SemanticIndex`]: per model group, an HNSW index of prompt embeddings;
//!   a prompt close enough to a cached one gets its answer.

mod key;
mod semantic;
mod store;

pub use key::{CacheKey, KeyParts, exact_key};
pub use semantic::{SemanticHit, SemanticIndex};
pub use store::{Backend, CacheCounters, CacheError, CachedAnswer, CachedBody, RedisCacheSettings, ResponseCache};
