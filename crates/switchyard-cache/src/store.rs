//! Where answers are kept: in process (moka) or in Redis.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::key::CacheKey;

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// The answer as the upstream sent it.
    pub body: CachedBody,
    /// The deployment that produced it.
    pub deployment: String,
    /// Prompt tokens it used.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens it used.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Of its prompt tokens, those read from the upstream's prompt cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    /// Of its prompt tokens, those written to the upstream's prompt cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    /// Of those writes, the ones kept for an hour (Claude's `ttl: 1h`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_1h_tokens: u64,
    /// Web searches it ran.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub web_searches: u64,
    /// What it cost when it was produced, nano-dollars.
    #[serde(default)]
    pub cost_nanos: i64,
    /// When it was stored, Unix milliseconds.
    #[serde(default)]
    pub created_ms: i64,
    /// Its time to live.
    #[serde(default)]
    pub ttl_secs: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A JSON answer, or a stream's chunks in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum CachedBody {
    /// One JSON document.
    Json(String),
    /// The `data:` payloads of a server-sent-event stream, `[DONE]` excluded.
    Chunks(Vec<String>),
}

impl CachedBody {
    /// The bytes it holds, as the in-process store weighs them.
    pub fn size(&self) -> usize {
        match self {
            CachedBody::Json(s) => s.len(),
            CachedBody::Chunks(c) => c.iter().map(|s| s.len() + 8).sum(),
        }
    }
}

/// Errors of the cache store (only ever logged: a failing store is a miss).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis did not answer or refused.
    #[error("redis: {0}")]
    Redis(String),
    /// A stored entry could not be read back.
    #[error("corrupt cache entry: {0}")]
    Corrupt(String),
    /// Redis was not asked: it kept failing (see the breaker).
    #[error("redis skipped while it keeps failing")]
    Skipped,
}

/// Redis backend settings.
#[derive(Debug, Clone)]
pub struct RedisCacheSettings {
    /// `redis://host:port/db` URL.
    pub url: String,
    /// Prefix of every key.
    pub prefix: String,
    /// Bound on each command, connection included.
    pub timeout: Duration,
}

/// Hit, miss and error counts.
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// Lookups answered from the cache.
    pub hits: AtomicU64,
    /// Lookups that found nothing.
    pub misses: AtomicU64,
    /// Answers stored.
    pub stores: AtomicU64,
    /// Store failures (each also counted as a miss or a dropped store).
    pub errors: AtomicU64,
    /// Lookups and stores not tried because Redis kept failing (each also
    /// counted as a miss or a dropped store).
    pub skipped: AtomicU64,
}

/// Failures in a row after which Redis is left alone for [`PAUSE`].
const TRIP_AFTER: u32 = 3;
/// How long Redis is left alone once it kept failing; then one command
/// tries it again.
const PAUSE: Duration = Duration::from_secs(2);

/// Keeps a failing Redis from adding its timeout to every request: after
/// [`TRIP_AFTER`] failures in a row, lookups miss and stores are dropped at
/// once for [`PAUSE`]; then one command tries Redis again (the others keep
/// skipping for another pause), and a success closes the breaker.
#[derive(Debug, Default)]
struct Breaker {
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    /// Until when commands are skipped; `None` while closed.
    open_until: Option<Instant>,
}

impl Breaker {
    /// Whether a command may go to Redis now.
    fn allow(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return true;
        };
        match s.open_until {
            None => true,
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    return false;
                }
                // This command tries Redis; the others wait for its outcome,
                // or for another pause if it never comes (a dropped request).
                s.open_until = Some(now + PAUSE);
                true
            }
        }
    }

    /// Records a command's outcome.
    fn record(&self, ok: bool) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if ok {
            if s.open_until.take().is_some() {
                tracing::info!("the Redis response cache answers again");
            }
            s.failures = 0;
            return;
        }
        s.failures = s.failures.saturating_add(1);
        if s.failures >= TRIP_AFTER {
            if s.open_until.is_none() {
                tracing::warn!(
                    failures = s.failures,
                    "the Redis response cache keeps failing: lookups miss and answers are not stored; Redis is tried again every {} s",
                    PAUSE.as_secs()
                );
            }
            s.open_until = Some(Instant::now() + PAUSE);
        }
    }

    /// Whether the breaker is open (failures are no longer logged one by one).
    fn is_open(&self) -> bool {
        self.state.lock().map(|s| s.open_until.is_some()).unwrap_or(false)
    }
}

struct PerEntryTtl;

impl Expiry<String, Arc<CachedAnswer>> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Arc<CachedAnswer>, _created_at: Instant) -> Option<Duration> {
        Some(Duration::from_secs(value.ttl_secs.max(1)))
    }

    /// A replaced entry lives for the new answer's time to live, not for what
    /// was left of the old one's.
    fn expire_after_update(
        &self,
        _key: &String,
        value: &Arc<CachedAnswer>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_secs(value.ttl_secs.max(1)))
    }
}

/// The store behind a [`ResponseCache`].
pub enum Backend {
    /// In process, bounded by bytes.
    Memory(moka::sync::Cache<String, Arc<CachedAnswer>>),
    /// Shared across replicas.
    Redis {
        /// Connects on first use and reconnects by itself.
        con: ConnectionManager,
        /// The settings it was made with.
        settings: RedisCacheSettings,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Memory(c) => f.debug_struct("Memory").field("entries", &c.entry_count()).finish(),
            Backend::Redis { settings, .. } => f.debug_struct("Redis").field("prefix", &settings.prefix).finish(),
        }
    }
}

/// Answers by [`CacheKey`], with a time to live each.
#[derive(Debug)]
pub struct ResponseCache {
    backend: Backend,
    counters: Arc<CacheCounters>,
    breaker: Breaker,
}

impl ResponseCache {
    /// An in-process cache holding at most `max_bytes` of answers.
    pub fn memory(max_bytes: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Arc<CachedAnswer>| {
                u32::try_from(k.len() + v.body.size() + 128).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        Self {
            backend: Backend::Memory(cache),
            counters: Arc::default(),
            breaker: Breaker::default(),
        }
    }

    /// A Redis cache. The connection is made on first use, so an unreachable
    /// Redis does not stop start-up; until it answers, every lookup misses.
    pub fn redis(settings: RedisCacheSettings) -> Result<Self, CacheError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(CacheError::Redis(
                "a Redis cache must be opened inside a Tokio runtime".into(),
            ));
        }
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| CacheError::Redis(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1);
        let con =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| CacheError::Redis(e.to_string()))?;
        Ok(Self {
            backend: Backend::Redis { con, settings },
            counters: Arc::default(),
            breaker: Breaker::default(),
        })
    }

    /// The backend's name: `memory` or `redis`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis { .. } => "redis",
        }
    }

    /// Hit, miss and error counts.
    pub fn counters(&self) -> &CacheCounters {
        &self.counters
    }

    /// The answer stored under `key`; a store failure is logged and is a miss.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<CachedAnswer>> {
        let found = match self.guarded_get(key).await {
            Ok(found) => found,
            Err(e) => {
                self.failed(&e, "response cache lookup failed; treating it as a miss");
                None
            }
        };
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Whether `key` holds an answer, without counting a hit or a miss.
    pub async fn peek(&self, key: &CacheKey) -> Option<Arc<CachedAnswer>> {
        match self.guarded_get(key).await {
            Ok(found) => found,
            Err(e) => {
                self.failed(&e, "response cache lookup failed; treating it as a miss");
                None
            }
        }
    }

    /// Counts and logs a failure (one by one until the breaker opens).
    fn failed(&self, e: &CacheError, what: &str) {
        match e {
            CacheError::Skipped => {
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            }
            e => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                if self.breaker.is_open() {
                    tracing::debug!(error = %e, "{what}");
                } else {
                    tracing::warn!(error = %e, "{what}");
                }
            }
        }
    }

    /// [`Self::try_get`] behind the breaker (Redis only).
    async fn guarded_get(&self, key: &CacheKey) -> Result<Option<Arc<CachedAnswer>>, CacheError> {
        if matches!(self.backend, Backend::Memory(_)) {
            return self.try_get(key).await;
        }
        if !self.breaker.allow() {
            return Err(CacheError::Skipped);
        }
        let result = self.try_get(key).await;
        // An unreadable entry says nothing of Redis's health.
        self.breaker.record(!matches!(result, Err(CacheError::Redis(_))));
        result
    }

    async fn try_get(&self, key: &CacheKey) -> Result<Option<Arc<CachedAnswer>>, CacheError> {
        match &self.backend {
            Backend::Memory(cache) => Ok(cache.get(key.as_str())),
            Backend::Redis { con, settings } => {
                let mut con = con.clone();
                let name = format!("{}{}", settings.prefix, key.as_str());
                let fetched = tokio::time::timeout(
                    settings.timeout,
                    redis::cmd("GET").arg(&name).query_async::<Option<Vec<u8>>>(&mut con),
                )
                .await
                .map_err(|_| CacheError::Redis("timed out".into()))?
                .map_err(|e| CacheError::Redis(e.to_string()))?;
                match fetched {
                    None => Ok(None),
                    Some(bytes) => serde_json::from_slice(&bytes)
                        .map(|a| Some(Arc::new(a)))
                        .map_err(|e| CacheError::Corrupt(e.to_string())),
                }
            }
        }
    }

    /// Stores `answer` under `key` for `answer.ttl_secs`; a failure is logged,
    /// and `false` returned.
    pub async fn put(&self, key: &CacheKey, answer: CachedAnswer) -> bool {
        let result = match &self.backend {
            Backend::Memory(cache) => {
                cache.insert(key.0.clone(), Arc::new(answer));
                Ok(())
            }
            Backend::Redis { .. } if !self.breaker.allow() => Err(CacheError::Skipped),
            Backend::Redis { con, settings } => {
                let mut con = con.clone();
                let name = format!("{}{}", settings.prefix, key.as_str());
                let ttl_ms = answer.ttl_secs.max(1).saturating_mul(1000);
                // Whether Redis answered: a refusal (`maxmemory` reached
                // under `noeviction`) is an answer, and lookups go on.
                let (result, answered) = match serde_json::to_vec(&answer) {
                    Ok(bytes) => match tokio::time::timeout(
                        settings.timeout,
                        redis::cmd("SET")
                            .arg(&name)
                            .arg(bytes)
                            .arg("PX")
                            .arg(ttl_ms)
                            .query_async::<()>(&mut con),
                    )
                    .await
                    {
                        Err(_) => (Err(CacheError::Redis("timed out".into())), false),
                        Ok(Ok(())) => (Ok(()), true),
                        Ok(Err(e)) => {
                            let unreachable = e.is_io_error()
                                || e.is_connection_dropped()
                                || e.is_connection_refusal()
                                || e.is_timeout();
                            (Err(CacheError::Redis(e.to_string())), !unreachable)
                        }
                    },
                    Err(e) => (Err(CacheError::Corrupt(e.to_string())), true),
                };
                self.breaker.record(answered);
                result
            }
        };
        match result {
            Ok(()) => {
                self.counters.stores.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.failed(&e, "cannot store a response in the cache");
                false
            }
        }
    }

    /// Entries held in process (`None` for Redis).
    pub fn local_entries(&self) -> Option<u64> {
        match &self.backend {
            Backend::Memory(cache) => {
                cache.run_pending_tasks();
                Some(cache.entry_count())
            }
            Backend::Redis { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str, ttl_secs: u64) -> CachedAnswer {
        CachedAnswer {
            body: CachedBody::Json(text.to_owned()),
            deployment: "d".into(),
            prompt_tokens: 1,
            completion_tokens: 2,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            web_searches: 0,
            cost_nanos: 3,
            created_ms: 0,
            ttl_secs,
        }
    }

    #[tokio::test]
    async fn memory_cache_counts_hits_and_misses() {
        let cache = ResponseCache::memory(1 << 20);
        let key = CacheKey("k".into());
        assert!(cache.get(&key).await.is_none());
        cache.put(&key, answer("{}", 60)).await;
        assert_eq!(
            cache.get(&key).await.map(|a| a.body.clone()),
            Some(CachedBody::Json("{}".into()))
        );
        assert_eq!(cache.counters().hits.load(Ordering::Relaxed), 1);
        assert_eq!(cache.counters().misses.load(Ordering::Relaxed), 1);
        assert_eq!(cache.counters().stores.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_replaced_entry_takes_the_new_time_to_live() {
        let cache = ResponseCache::memory(1 << 20);
        let key = CacheKey("k".into());
        cache.put(&key, answer("\"short\"", 1)).await;
        cache.put(&key, answer("\"long\"", 60)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            cache.get(&key).await.map(|a| a.body.clone()),
            Some(CachedBody::Json("\"long\"".into())),
            "the entry expired with the replaced answer's time to live"
        );

        cache.put(&key, answer("\"brief\"", 1)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            cache.get(&key).await.is_none(),
            "a shorter time to live did not replace the longer one"
        );
    }

    #[tokio::test]
    async fn memory_cache_is_bounded_by_bytes() {
        let cache = ResponseCache::memory(10_000);
        for i in 0..100 {
            cache
                .put(&CacheKey(format!("k{i}")), answer(&"x".repeat(1000), 60))
                .await;
        }
        let held = cache.local_entries().unwrap_or(0);
        assert!(held < 20, "{held} entries of ~1 kB held in 10 kB");
    }

    #[test]
    fn stream_bodies_round_trip_through_json() {
        let a = CachedAnswer {
            body: CachedBody::Chunks(vec!["{\"a\":1}".into(), "{\"b\":2}".into()]),
            cache_read_tokens: 7,
            cache_write_tokens: 9,
            cache_write_1h_tokens: 4,
            web_searches: 1,
            ..answer("", 5)
        };
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<CachedAnswer>(&text).unwrap(), a);
    }

    #[tokio::test]
    async fn unreachable_redis_is_a_miss() {
        let cache = ResponseCache::redis(RedisCacheSettings {
            url: "redis://127.0.0.1:1/".into(),
            prefix: "t:".into(),
            timeout: Duration::from_millis(200),
        })
        .unwrap();
        let key = CacheKey("k".into());
        cache.put(&key, answer("{}", 60)).await;
        assert!(cache.get(&key).await.is_none());
        assert!(cache.counters().errors.load(Ordering::Relaxed) >= 2);
    }
}
