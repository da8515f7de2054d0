//! Responses kept in memory for `previous_response_id` and
//! `GET /v1/responses/{id}`: bounded in bytes, each for a time, and each
//! readable only by the key that made it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchyard_api::ChatMessage;
use switchyard_policy::Principal;

/// One kept response.
#[derive(Debug)]
pub(crate) struct Stored {
    /// Who made it (see [`owner`]).
    pub owner: String,
    /// The conversation up to and including the answer, without the
    /// request's `instructions` (which a continuation does not inherit).
    pub conversation: Vec<ChatMessage>,
    /// The response object as it was returned, JSON.
    pub object: Bytes,
}

/// The responses a gateway keeps; empty and keeping nothing when its
/// capacity is 0.
#[derive(Debug, Clone)]
pub struct ResponseStore {
    entries: Option<moka::sync::Cache<String, Arc<Stored>>>,
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

impl ResponseStore {
    /// A store of at most `max_bytes` (its entries' JSON), each kept for `ttl`.
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        let entries = (max_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                // The least recently used go first: a new response is always
                // kept (the default policy admits an entry only once it has
                // been read more than the one it would evict, which a new
                // response never has).
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .max_capacity(max_bytes)
                .weigher(|id: &String, stored: &Arc<Stored>| {
                    let conversation: usize = stored
                        .conversation
                        .iter()
                        .map(|m| serde_json::to_vec(m).map_or(0, |v| v.len()))
                        .sum();
                    u32::try_from(id.len() + stored.object.len() + conversation + stored.owner.len())
                        .unwrap_or(u32::MAX)
                })
                .time_to_live(ttl)
                .build()
        });
        Self { entries }
    }

    /// Whether responses are kept at all.
    pub fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The response `id`, if `owner` made it.
    pub(crate) fn get(&self, id: &str, owner: &str) -> Option<Arc<Stored>> {
        self.entries.as_ref()?.get(id).filter(|stored| stored.owner == owner)
    }

    /// Keeps a response.
    pub(crate) fn put(&self, id: String, stored: Stored) {
        if let Some(entries) = &self.entries {
            entries.insert(id, Arc::new(stored));
        }
    }

    /// Forgets the response `id`, if `owner` made it; whether it was there.
    pub(crate) fn remove(&self, id: &str, owner: &str) -> bool {
        let Some(entries) = &self.entries else { return false };
        if self.get(id, owner).is_none() {
            return false;
        }
        entries.invalidate(id);
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use switchyard_api::Role;

    fn stored(owner: &str, text: &str) -> Stored {
        Stored {
            owner: owner.into(),
            conversation: vec![ChatMessage::text(Role::User, text)],
            object: Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn a_response_is_read_only_by_its_owner_and_the_store_stays_bounded() {
        let store = ResponseStore::new(10_000, Duration::from_secs(60));
        store.put("resp_1".into(), stored("key:a", "hi"));
        assert!(store.get("resp_1", "key:a").is_some());
        assert!(store.get("resp_1", "key:b").is_none());
        assert!(!store.remove("resp_1", "key:b"));
        assert!(store.remove("resp_1", "key:a"));
        assert!(store.get("resp_1", "key:a").is_none());

        for n in 0..100 {
            store.put(format!("resp_{n}"), stored("key:a", &"x".repeat(1_000)));
        }
        let entries = store.entries.as_ref().unwrap();
        entries.run_pending_tasks();
        assert!(entries.weighted_size() <= 10_000, "{}", entries.weighted_size());
        assert!(entries.entry_count() < 100);
        // A full store still keeps each new response (the oldest go).
        store.put("resp_new".into(), stored("key:a", "newest"));
        entries.run_pending_tasks();
        assert!(store.get("resp_new", "key:a").is_some());
        assert!(store.get("resp_0", "key:a").is_none());

        let off = ResponseStore::new(0, Duration::from_secs(60));
        off.put("resp_1".into(), stored("key:a", "hi"));
        assert!(!off.enabled() && off.get("resp_1", "key:a").is_none());
    }
}
