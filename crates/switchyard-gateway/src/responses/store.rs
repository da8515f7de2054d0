//! Responses kept for `previous_response_id` and `GET /v1/responses/{id}`,
//! each for a time and readable only by the key that made it: in this
//! process (bounded in bytes), or in Redis when the policy uses Redis, so
//! that every replica can continue a response and a restart loses none.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchyard_api::ChatMessage;
use switchyard_policy::Principal;

/// One kept response.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Stored {
    /// The response object as it was returned, JSON. Written first, so that
    /// its `status` (after its id, `object` and `created_at`) is near the
    /// record's start, where Redis reads it without decoding the record.
    #[serde(with = "json_text")]
    pub object: Bytes,
    /// Who made it (see [`owner`]).
    pub owner: String,
    /// The conversation up to and including the answer, without the
    /// request's `instructions` (which a continuation does not inherit).
    pub conversation: Vec<ChatMessage>,
    /// Where the request's own input starts in `conversation` (after the
    /// messages of the response it continued).
    #[serde(default)]
    pub input_start: usize,
    /// Where it ends (the answer follows).
    #[serde(default)]
    pub input_end: usize,
}

impl Stored {
    /// Whether the response is still being answered (`queued` or
    /// `in_progress`: a background response).
    pub(crate) fn unfinished(&self) -> bool {
        #[derive(Deserialize)]
        struct Status<'a> {
            #[serde(borrow)]
            status: Option<std::borrow::Cow<'a, str>>,
        }
        serde_json::from_slice::<Status<'_>>(&self.object)
            .ok()
            .and_then(|s| s.status)
            .is_some_and(|s| matches!(s.as_ref(), "queued" | "in_progress"))
    }
}

/// Background responses being answered, kept in memory apart from the
/// others: an unfinished response is never evicted by newer ones, or its
/// answer (already paid for) would have nowhere to go. Each still goes
/// after the store's TTL, as the others do (a job that ended without
/// writing its answer does not hold its bytes for ever).
#[derive(Default)]
struct Unfinished {
    /// By id: until when it is kept, and the response.
    entries: std::collections::HashMap<String, (std::time::Instant, Arc<Stored>)>,
    /// Their weight in bytes, at most the store's size.
    bytes: u64,
}

impl Unfinished {
    /// Forgets `id`.
    fn take(&mut self, id: &str) {
        if let Some((_, old)) = self.entries.remove(id) {
            self.bytes = self.bytes.saturating_sub(weight(&old));
        }
    }

    /// Forgets the entries kept past their time.
    fn expire(&mut self, now: std::time::Instant) {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.take(&id);
        }
    }
}

/// The response object kept as JSON text inside the stored record.
mod json_text {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&String::from_utf8_lossy(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        Ok(Bytes::from(String::deserialize(deserializer)?))
    }
}

/// Sets `KEYS[1]` to `ARGV[1]` for `ARGV[2]` seconds only while the
/// response it holds is unfinished (its object's `status` is `queued` or
/// `in_progress`); 1 when it did. A record written object first has its
/// status read from its first bytes (the response's id, `object` and
/// `created_at` come before it, none of them the client's), so a large
/// conversation is not decoded while Redis waits; an older record is.
const REPLACE_UNFINISHED: &str = r#"
local kept = redis.call('GET', KEYS[1])
if not kept then return 0 end
local status
if string.sub(kept, 1, 11) == '{"object":"' then
  status = string.match(string.sub(kept, 1, 512), '\\"status\\":\\"([%w_]+)\\"')
else
  local ok, stored = pcall(cjson.decode, kept)
  if not ok or type(stored) ~= 'table' or type(stored['object']) ~= 'string' then return 0 end
  local ok2, object = pcall(cjson.decode, stored['object'])
  if not ok2 or type(object) ~= 'table' then return 0 end
  status = object['status']
end
if status ~= 'queued' and status ~= 'in_progress' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"#;

/// The kept response store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("the response store (Redis) did not answer: {0}")]
pub struct StoreUnavailable(pub String);

/// Where responses are kept.
#[derive(Clone)]
enum Backend {
    /// Nothing is kept.
    Off,
    /// This process: finished responses (least recently used go first when
    /// full), and unfinished ones apart.
    Memory(
        moka::sync::Cache<String, Arc<Stored>>,
        Arc<parking_lot::Mutex<Unfinished>>,
    ),
    /// Redis, shared by replicas.
    Redis {
        con: redis::aio::ConnectionManager,
        prefix: String,
        timeout: Duration,
    },
}

/// The responses a gateway keeps.
#[derive(Clone)]
pub struct ResponseStore {
    backend: Backend,
    /// The largest response kept, in bytes (its conversation's JSON and the
    /// object); larger ones are not kept.
    max_bytes: u64,
    ttl: Duration,
    /// Background responses this process is answering, by id, so that a
    /// cancel can stop them.
    running: Arc<parking_lot::Mutex<std::collections::HashMap<String, tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for ResponseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.backend {
            Backend::Off => "off",
            Backend::Memory(..) => "memory",
            Backend::Redis { .. } => "redis",
        };
        f.debug_struct("ResponseStore")
            .field("backend", &backend)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// Who may read a response: a virtual key by its id, the master key, or an
/// anonymous caller (a gateway without keys).
pub(crate) fn owner(principal: &Principal) -> String {
    match principal {
        Principal::Key(view) => format!("key:{}", view.key.key_id),
        Principal::Master => "master".into(),
        Principal::Anonymous => "anonymous".into(),
    }
}

/// The bytes a kept response weighs.
fn weight(stored: &Stored) -> u64 {
    let conversation: usize = stored
        .conversation
        .iter()
        .map(|m| serde_json::to_vec(m).map_or(0, |v| v.len()))
        .sum();
    (stored.object.len() + conversation + stored.owner.len()) as u64
}

impl ResponseStore {
    /// A store in this process of at most `max_bytes`, each response kept
    /// for `ttl`; keeps nothing when `max_bytes` is 0.
    pub fn memory(max_bytes: u64, ttl: Duration) -> Self {
        let backend = if max_bytes == 0 {
            Backend::Off
        } else {
            Backend::Memory(
                moka::sync::Cache::builder()
                    // The least recently used go first: a new response is
                    // always kept (the default policy admits an entry only
                    // once it has been read more than the one it would
                    // evict, which a new response never has).
                    .eviction_policy(moka::policy::EvictionPolicy::lru())
                    .max_capacity(max_bytes)
                    .weigher(|id: &String, stored: &Arc<Stored>| {
                        u32::try_from(id.len() as u64 + weight(stored)).unwrap_or(u32::MAX)
                    })
                    .time_to_live(ttl)
                    .build(),
                Arc::default(),
            )
        };
        Self {
            backend,
            max_bytes,
            ttl,
            running: Arc::default(),
        }
    }

    /// A store in Redis at `url`, its keys under `prefix`, each response
    /// kept for `ttl` and at most `max_bytes` (0: none kept). Connects on
    /// first use.
    pub fn redis(url: &str, prefix: &str, timeout: Duration, max_bytes: u64, ttl: Duration) -> Result<Self, String> {
        if max_bytes == 0 {
            return Ok(Self::memory(0, ttl));
        }
        let client = redis::Client::open(url).map_err(|e| format!("not a valid Redis URL: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let con = redis::aio::ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
        Ok(Self {
            backend: Backend::Redis {
                con,
                prefix: format!("{prefix}response:"),
                timeout,
            },
            max_bytes,
            ttl,
            running: Arc::default(),
        })
    }

    /// Notes the task answering background response `id` (it calls
    /// [`ResponseStore::finished`] when done).
    pub(crate) fn running(&self, id: String, task: tokio::task::JoinHandle<()>) {
        self.running.lock().insert(id, task);
    }

    /// Whether a background response of this process is still being answered.
    pub(crate) fn jobs_running(&self) -> bool {
        self.running.lock().values().any(|task| !task.is_finished())
    }

    /// Forgets the task of background response `id`, handing it back (to be
    /// stopped) if this process runs it.
    pub(crate) fn finished(&self, id: &str) -> Option<tokio::task::JoinHandle<()>> {
        self.running.lock().remove(id)
    }

    /// Whether responses are kept at all.
    pub fn enabled(&self) -> bool {
        !matches!(self.backend, Backend::Off)
    }

    async fn query<T: redis::FromRedisValue>(
        con: &redis::aio::ConnectionManager,
        timeout: Duration,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreUnavailable> {
        let mut con = con.clone();
        match tokio::time::timeout(timeout, cmd.query_async::<T>(&mut con)).await {
            Ok(result) => result.map_err(|e| StoreUnavailable(e.to_string())),
            Err(_) => Err(StoreUnavailable("no answer in time".into())),
        }
    }

    /// The response `id`, if `owner` made it.
    pub(crate) async fn get(&self, id: &str, owner: &str) -> Result<Option<Arc<Stored>>, StoreUnavailable> {
        let found = match &self.backend {
            Backend::Off => None,
            // Both looked at under the lock puts take: a response moving
            // from one to the other is always in one of them.
            Backend::Memory(entries, unfinished) => {
                let running = unfinished.lock();
                match running.entries.get(id) {
                    Some((until, stored)) if *until > std::time::Instant::now() => Some(stored.clone()),
                    Some(_) => None,
                    None => entries.get(id),
                }
            }
            Backend::Redis { con, prefix, timeout } => {
                let raw: Option<Vec<u8>> =
                    Self::query(con, *timeout, redis::cmd("GET").arg(format!("{prefix}{id}"))).await?;
                raw.and_then(|raw| serde_json::from_slice::<Stored>(&raw).ok())
                    .map(Arc::new)
            }
        };
        Ok(found.filter(|stored| stored.owner == owner))
    }

    /// Keeps a response (unless it is larger than the store takes).
    pub(crate) async fn put(&self, id: String, stored: Stored) -> Result<(), StoreUnavailable> {
        self.write(id, stored, false).await.map(|_| ())
    }

    /// Replaces response `id` with `stored` only while the one kept is
    /// unfinished (queued or in progress), in one step: a background
    /// response's answer and its cancel (on any replica) cannot overwrite
    /// each other, and one deleted is not written again. Whether it was
    /// written.
    pub(crate) async fn replace_unfinished(&self, id: String, stored: Stored) -> Result<bool, StoreUnavailable> {
        self.write(id, stored, true).await
    }

    async fn write(&self, id: String, stored: Stored, only_unfinished: bool) -> Result<bool, StoreUnavailable> {
        if weight(&stored) > self.max_bytes {
            tracing::debug!(response = %id, "a response larger than server.responses_store_mib is not kept");
            return Ok(false);
        }
        match &self.backend {
            Backend::Off => Ok(false),
            Backend::Memory(entries, unfinished) => {
                let size = weight(&stored);
                let stored = Arc::new(stored);
                let now = std::time::Instant::now();
                // One put at a time, the whole move under the lock.
                let mut running = unfinished.lock();
                running.expire(now);
                if only_unfinished {
                    let current = running
                        .entries
                        .get(&id)
                        .map(|(_, kept)| kept.clone())
                        .or_else(|| entries.get(&id));
                    if !current.is_some_and(|kept| kept.unfinished()) {
                        return Ok(false);
                    }
                }
                // Past the store's size in unfinished responses, one more
                // goes with the others (and may be evicted).
                let room = running
                    .entries
                    .get(&id)
                    .map_or(running.bytes, |(_, old)| running.bytes.saturating_sub(weight(old)));
                if stored.unfinished() && room.saturating_add(size) <= self.max_bytes {
                    running.take(&id);
                    running.bytes += size;
                    running.entries.insert(id.clone(), (now + self.ttl, stored));
                    entries.invalidate(&id);
                } else {
                    // Kept with the others before it leaves the unfinished.
                    entries.insert(id.clone(), stored);
                    running.take(&id);
                }
                Ok(true)
            }
            Backend::Redis { con, prefix, timeout } => {
                let value = serde_json::to_vec(&stored).map_err(|e| StoreUnavailable(e.to_string()))?;
                let ttl = self.ttl.as_secs().max(1);
                if only_unfinished {
                    let cmd = redis::cmd("EVAL")
                        .arg(REPLACE_UNFINISHED)
                        .arg(1)
                        .arg(format!("{prefix}{id}"))
                        .arg(value)
                        .arg(ttl)
                        .clone();
                    return Self::query::<i64>(con, *timeout, &cmd).await.map(|n| n == 1);
                }
                let cmd = redis::cmd("SET")
                    .arg(format!("{prefix}{id}"))
                    .arg(value)
                    .arg("EX")
                    .arg(ttl)
                    .clone();
                Self::query::<()>(con, *timeout, &cmd).await.map(|()| true)
            }
        }
    }

    /// Forgets the response `id`, if `owner` made it; whether it was there.
    pub(crate) async fn remove(&self, id: &str, owner: &str) -> Result<bool, StoreUnavailable> {
        if self.get(id, owner).await?.is_none() {
            return Ok(false);
        }
        match &self.backend {
            Backend::Off => Ok(false),
            Backend::Memory(entries, unfinished) => {
                let mut running = unfinished.lock();
                running.take(id);
                entries.invalidate(id);
                Ok(true)
            }
            Backend::Redis { con, prefix, timeout } => {
                let n: i64 = Self::query(con, *timeout, redis::cmd("DEL").arg(format!("{prefix}{id}"))).await?;
                Ok(n > 0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use serde_json::Value;
    use switchyard_api::Role;

    fn stored(owner: &str, text: &str) -> Stored {
        Stored {
            owner: owner.into(),
            conversation: vec![ChatMessage::text(Role::User, text)],
            object: Bytes::from_static(b"{}"),
            input_start: 0,
            input_end: 1,
        }
    }

    fn with_status(status: &str) -> Stored {
        Stored {
            object: Bytes::from(format!(r#"{{"id":"resp_bg","status":"{status}"}}"#)),
            ..stored("key:a", "hi")
        }
    }

    /// A background response's answer and its cancel cannot overwrite each
    /// other: each replaces only an unfinished response, in one step, in
    /// memory and in Redis alike; one deleted is not written again.
    #[tokio::test]
    async fn only_an_unfinished_response_is_replaced() {
        let redis = switchyard_testkit::RedisServer::start();
        let stores = [
            ResponseStore::memory(10_000, Duration::from_secs(60)),
            ResponseStore::redis(
                &redis.url(),
                "t:",
                Duration::from_secs(2),
                10_000,
                Duration::from_secs(60),
            )
            .unwrap(),
        ];
        for store in stores {
            let status = |store: &ResponseStore| {
                let store = store.clone();
                async move {
                    let kept = store.get("resp_bg", "key:a").await.unwrap().unwrap();
                    serde_json::from_slice::<Value>(&kept.object).unwrap()["status"].clone()
                }
            };
            assert!(
                !store
                    .replace_unfinished("resp_bg".into(), with_status("in_progress"))
                    .await
                    .unwrap(),
                "none kept"
            );
            store.put("resp_bg".into(), with_status("queued")).await.unwrap();
            assert!(
                store
                    .replace_unfinished("resp_bg".into(), with_status("in_progress"))
                    .await
                    .unwrap()
            );
            assert!(
                store
                    .replace_unfinished("resp_bg".into(), with_status("completed"))
                    .await
                    .unwrap()
            );
            // The cancel that read it in progress comes too late.
            assert!(
                !store
                    .replace_unfinished("resp_bg".into(), with_status("cancelled"))
                    .await
                    .unwrap()
            );
            assert_eq!(status(&store).await, "completed");
            store.put("resp_2".into(), with_status("in_progress")).await.unwrap();
            assert!(
                store
                    .replace_unfinished("resp_2".into(), with_status("cancelled"))
                    .await
                    .unwrap()
            );
            assert!(
                !store
                    .replace_unfinished("resp_2".into(), with_status("completed"))
                    .await
                    .unwrap()
            );
            assert!(store.remove("resp_2", "key:a").await.unwrap());
            assert!(
                !store
                    .replace_unfinished("resp_2".into(), with_status("in_progress"))
                    .await
                    .unwrap()
            );
            assert!(store.get("resp_2", "key:a").await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn a_response_is_read_only_by_its_owner_and_the_store_stays_bounded() {
        let store = ResponseStore::memory(10_000, Duration::from_secs(60));
        store.put("resp_1".into(), stored("key:a", "hi")).await.unwrap();
        assert!(store.get("resp_1", "key:a").await.unwrap().is_some());
        assert!(store.get("resp_1", "key:b").await.unwrap().is_none());
        assert!(!store.remove("resp_1", "key:b").await.unwrap());
        assert!(store.remove("resp_1", "key:a").await.unwrap());
        assert!(store.get("resp_1", "key:a").await.unwrap().is_none());

        for n in 0..100 {
            store
                .put(format!("resp_{n}"), stored("key:a", &"x".repeat(1_000)))
                .await
                .unwrap();
        }
        let Backend::Memory(entries, _) = &store.backend else {
            unreachable!()
        };
        entries.run_pending_tasks();
        assert!(entries.weighted_size() <= 10_000, "{}", entries.weighted_size());
        assert!(entries.entry_count() < 100);
        // A full store still keeps each new response (the oldest go).
        store.put("resp_new".into(), stored("key:a", "newest")).await.unwrap();
        entries.run_pending_tasks();
        assert!(store.get("resp_new", "key:a").await.unwrap().is_some());
        assert!(store.get("resp_0", "key:a").await.unwrap().is_none());
        // One larger than the whole store is not kept.
        store
            .put("resp_huge".into(), stored("key:a", &"x".repeat(20_000)))
            .await
            .unwrap();
        assert!(store.get("resp_huge", "key:a").await.unwrap().is_none());

        let off = ResponseStore::memory(0, Duration::from_secs(60));
        off.put("resp_1".into(), stored("key:a", "hi")).await.unwrap();
        assert!(!off.enabled() && off.get("resp_1", "key:a").await.unwrap().is_none());
    }

    #[test]
    fn a_stored_record_round_trips_as_json() {
        let record = stored("key:a", "hi");
        let json = serde_json::to_vec(&record).unwrap();
        let back: Stored = serde_json::from_slice(&json).unwrap();
        assert_eq!((back.owner.as_str(), &back.object[..]), ("key:a", &b"{}"[..]));
        assert_eq!(back.conversation, record.conversation);
    }

    /// A background response being answered stays while newer responses
    /// fill the store, and goes with the others once it is finished.
    #[tokio::test]
    async fn an_unfinished_response_is_not_evicted() {
        let store = ResponseStore::memory(10_000, Duration::from_secs(60));
        let with_status = |status: &str| Stored {
            object: Bytes::from(format!(r#"{{"id":"resp_bg","status":"{status}"}}"#)),
            ..stored("key:a", "long job")
        };
        store.put("resp_bg".into(), with_status("queued")).await.unwrap();
        store.put("resp_bg".into(), with_status("in_progress")).await.unwrap();
        let Backend::Memory(entries, _) = &store.backend else {
            unreachable!()
        };
        for n in 0..100 {
            store
                .put(format!("resp_{n}"), stored("key:a", &"x".repeat(1_000)))
                .await
                .unwrap();
            entries.run_pending_tasks();
        }
        let running = store.get("resp_bg", "key:a").await.unwrap().unwrap();
        assert!(running.unfinished());
        assert!(store.get("resp_bg", "key:b").await.unwrap().is_none());
        store.put("resp_bg".into(), with_status("completed")).await.unwrap();
        let done = store.get("resp_bg", "key:a").await.unwrap().unwrap();
        assert!(!done.unfinished());
        assert!(store.remove("resp_bg", "key:a").await.unwrap());
        assert!(store.get("resp_bg", "key:a").await.unwrap().is_none());

        // One whose job never wrote its end goes after the TTL all the same.
        let short = ResponseStore::memory(10_000, Duration::from_secs(1));
        short.put("resp_lost".into(), with_status("in_progress")).await.unwrap();
        assert!(short.get("resp_lost", "key:a").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert!(short.get("resp_lost", "key:a").await.unwrap().is_none());
        short.put("resp_other".into(), with_status("queued")).await.unwrap();
        let Backend::Memory(_, unfinished) = &short.backend else {
            unreachable!()
        };
        assert_eq!(unfinished.lock().entries.len(), 1, "the expired one was let go");
    }
}
