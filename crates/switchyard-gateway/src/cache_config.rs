//! `cache:` — the response cache: where answers are kept, for how long, and
//! which model groups also answer similar prompts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigIssue, EnvSource, issue, resolve_url};

/// The longest an answer may be kept, in seconds (a year).
const MAX_TTL_SECONDS: u64 = 365 * 24 * 3600;

/// The most prompts a semantic index may hold: its graph is allocated for
/// all of them when it starts.
const MAX_SEMANTIC_ENTRIES: usize = 10_000_000;

/// `cache:` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Whether answers are cached at all.
    pub enabled: bool,
    /// `memory` (this process, bounded by `max_bytes`) or `redis` (shared by replicas).
    pub backend: CacheBackend,
    /// How long an answer is kept, in seconds (a request's `cache.ttl` overrides it).
    pub ttl_seconds: u64,
    /// The longest `cache.ttl` a request may ask for, in seconds (at most a year).
    pub max_ttl_seconds: u64,
    /// `memory`: bytes of answers held before the least used are dropped.
    pub max_bytes: u64,
    /// The largest answer kept, in bytes: a bigger one (a long stream) is
    /// passed on but not stored, and a stream stops being recorded there.
    pub max_entry_bytes: u64,
    /// `redis`: connection settings.
    pub redis: Option<CacheRedisConfig>,
    /// Keep answers per virtual key: one key's answers are never served to another.
    pub per_key: bool,
    /// Fraction of an answer's original cost charged when it is served from
    /// the cache (0: free, 1: full price).
    pub hit_cost_ratio: f64,
    /// Model groups that also answer prompts similar to a cached one.
    pub semantic: BTreeMap<String, SemanticConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            backend: CacheBackend::Memory,
            ttl_seconds: 3600,
            max_ttl_seconds: 7 * 24 * 3600,
            max_bytes: 256 * 1024 * 1024,
            max_entry_bytes: 8 * 1024 * 1024,
            redis: None,
            per_key: false,
            hit_cost_ratio: 0.0,
            semantic: BTreeMap::new(),
        }
    }
}

/// Where cached answers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheBackend {
    /// In this process.
    Memory,
    /// In Redis.
    Redis,
}

/// `cache.redis:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheRedisConfig {
    /// `redis://host:port/db` (`rediss://` for TLS, verified against the
    /// system's roots; see docs/caching.md for a private CA), `os.environ/NAME`, or a URL with
    /// `{os.environ/NAME}` parts (`redis://:{os.environ/REDIS_PASSWORD}@host:6379`).
    pub url: String,
    /// Prefix of every cache key.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Longest wait for one Redis command, in milliseconds; a slower Redis is a miss.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_prefix() -> String {
    "switchyard:cache:".into()
}

fn default_timeout_ms() -> u64 {
    250
}

/// `cache.semantic.<model>:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SemanticConfig {
    /// Cosine similarity of two prompts' embeddings needed for a hit (0–1).
    pub min_similarity: f32,
    /// Prompts indexed before the index starts again (16 to 10,000,000;
    /// each holds its embedding, about 1.6 KiB with MiniLM).
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
}

fn default_max_entries() -> usize {
    50_000
}

/// The validated cache settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSpec {
    /// Where answers live.
    pub store: StoreSpec,
    /// Default time to live.
    pub ttl: Duration,
    /// Longest time to live a request may ask for.
    pub max_ttl: Duration,
    /// Answers kept per key.
    pub per_key: bool,
    /// Fraction of the original cost charged on a hit.
    pub hit_cost_ratio: f64,
    /// The largest answer stored, in bytes.
    pub max_entry_bytes: usize,
    /// Semantic groups: (min similarity, capacity).
    pub semantic: BTreeMap<String, (f32, usize)>,
}

/// A validated backend.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSpec {
    /// In process, bounded by bytes.
    Memory(u64),
    /// Redis.
    Redis {
        /// The resolved URL.
        url: String,
        /// Key prefix.
        prefix: String,
        /// Command timeout.
        timeout: Duration,
    },
}

impl CacheConfig {
    /// Validates the section against the configured model names; `None`
    /// when caching is off.
    pub fn validate(&self, env: &dyn EnvSource, models: &[String], issues: &mut Vec<ConfigIssue>) -> Option<CacheSpec> {
        if !self.enabled {
            if !self.semantic.is_empty() {
                issues.push(issue("cache.semantic", "needs `cache.enabled: true`"));
            }
            return None;
        }
        if self.ttl_seconds == 0 {
            issues.push(issue("cache.ttl_seconds", "must be greater than 0"));
        }
        // A year bounds what a timestamp in milliseconds (Redis `PX`, entry
        // expiry) holds without overflow, with room to spare.
        if self.max_ttl_seconds > MAX_TTL_SECONDS {
            issues.push(issue("cache.max_ttl_seconds", "must be at most 31536000 (a year)"));
        }
        if self.max_ttl_seconds < self.ttl_seconds {
            issues.push(issue("cache.max_ttl_seconds", "must be at least `cache.ttl_seconds`"));
        }
        if self.max_entry_bytes < 1024 {
            issues.push(issue("cache.max_entry_bytes", "must be at least 1024"));
        }
        if !(0.0..=1.0).contains(&self.hit_cost_ratio) || !self.hit_cost_ratio.is_finite() {
            issues.push(issue("cache.hit_cost_ratio", "must be between 0 and 1"));
        }
        let store = match (self.backend, &self.redis) {
            (CacheBackend::Memory, _) => {
                if self.max_bytes < 1024 {
                    issues.push(issue("cache.max_bytes", "must be at least 1024"));
                }
                StoreSpec::Memory(self.max_bytes)
            }
            (CacheBackend::Redis, None) => {
                issues.push(issue("cache.redis", "`backend: redis` needs `cache.redis.url`"));
                StoreSpec::Memory(self.max_bytes)
            }
            (CacheBackend::Redis, Some(r)) => {
                let url = resolve_url(&r.url, "cache.redis.url", env, issues)
                    .map(|s| s.expose().to_owned())
                    .unwrap_or_default();
                if !(url.is_empty()
                    || url.starts_with("redis://")
                    || url.starts_with("rediss://")
                    || url.starts_with("unix://"))
                {
                    issues.push(issue(
                        "cache.redis.url",
                        "must start with redis://, rediss:// or unix://",
                    ));
                }
                if r.timeout_ms == 0 {
                    issues.push(issue("cache.redis.timeout_ms", "must be greater than 0"));
                }
                StoreSpec::Redis {
                    url,
                    prefix: r.prefix.clone(),
                    timeout: Duration::from_millis(r.timeout_ms),
                }
            }
        };
        let mut semantic = BTreeMap::new();
        for (name, s) in &self.semantic {
            let path = format!("cache.semantic.{name}");
            if !models.contains(name) {
                issues.push(issue(&path, format!("`{name}` is not a model in model_list")));
            }
            if !(s.min_similarity > 0.0 && s.min_similarity <= 1.0) {
                issues.push(issue(format!("{path}.min_similarity"), "must be in (0, 1]"));
            }
            if s.max_entries < 16 {
                issues.push(issue(format!("{path}.max_entries"), "must be at least 16"));
            }
            // The index is allocated for its whole size up front.
            if s.max_entries > MAX_SEMANTIC_ENTRIES {
                issues.push(issue(
                    format!("{path}.max_entries"),
                    format!("must be at most {MAX_SEMANTIC_ENTRIES}"),
                ));
            }
            semantic.insert(name.clone(), (s.min_similarity, s.max_entries.max(16)));
        }
        Some(CacheSpec {
            store,
            ttl: Duration::from_secs(self.ttl_seconds),
            max_ttl: Duration::from_secs(self.max_ttl_seconds),
            per_key: self.per_key,
            hit_cost_ratio: self.hit_cost_ratio,
            max_entry_bytes: usize::try_from(self.max_entry_bytes).unwrap_or(usize::MAX),
            semantic,
        })
    }
}
