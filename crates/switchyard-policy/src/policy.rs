//! The policy front: authentication, admission (limits and budget
//! reservations), settlement of spend, and the admin operations, over the
//! in-process store or Redis.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::alert::{AlertKind, PolicyAlert};
use crate::checks::{Checks, Demand, RateKind, RateState};
use crate::error::{Denied, PolicyError};
use crate::journal::{FsyncPolicy, Journal};
use crate::key::{
    EndUserRecord, KEY_PREFIX, KeyRecord, KeyView, KeyWrite, MAX_END_USER_ID_BYTES, TeamRecord, UserRecord,
    apply_end_user_field, apply_key_field, apply_team_field, apply_user_field, display_name, expiry_from, generate_key,
    hash_key, hashes_equal, new_key_id, usable_key,
};
use crate::local::LocalStore;
use crate::money::Nanos;
use crate::period::{day_of_ms, now_ms};
use crate::price::TokenUsage;
use crate::redis_store::{RedisSettings, RedisStore, StoreDown};
use crate::spend::{LogFilter, SpendRecord, SubjectSpend, subject_key, subject_team};

/// What to do when Redis cannot be reached while serving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Refuse requests that need the store (503), never exceed a shared limit.
    #[default]
    FailClosed,
    /// Serve on this replica's in-process limits and keys seen before the
    /// outage; spend is queued and written when Redis is back.
    FailOpen,
}

/// How the policy is set up.
#[derive(Debug, Clone, Default)]
pub struct PolicySettings {
    /// The admin key (plaintext; only its hash is kept).
    pub master_key: Option<String>,
    /// Where the local store keeps `keys.jsonl` and `spend.jsonl` (`None`: memory only).
    pub data_dir: Option<PathBuf>,
    /// When the local store's files are flushed to disk.
    pub fsync: FsyncPolicy,
    /// Shared state across replicas.
    pub redis: Option<RedisSettings>,
    /// Keys declared in the configuration file, with their plaintext.
    pub keys: Vec<(String, KeyRecord)>,
    /// Teams declared in the configuration file.
    pub teams: Vec<TeamRecord>,
    /// Model names keys may be given (checked on create and update); empty: any.
    pub known_models: Vec<String>,
    /// The budget of every end user (a request's `user`), whoever's key
    /// pays; `None`: end users have no budget.
    pub end_user_budget: Option<EndUserBudget>,
}

/// The budget each end user has (LiteLLM's `max_end_user_budget`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndUserBudget {
    /// USD an end user may spend per period (or in total).
    pub max_budget: f64,
    /// The period, `None`: in total.
    pub budget_duration: Option<crate::period::BudgetPeriod>,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// No key was required and none was sent.
    Anonymous,
    /// The master key: every model, no limits, the admin API.
    Master,
    /// A virtual key.
    Key(Arc<KeyView>),
}

impl Principal {
    /// The key's view, for a virtual key.
    pub fn view(&self) -> Option<&Arc<KeyView>> {
        match self {
            Principal::Key(view) => Some(view),
            _ => None,
        }
    }
}

/// Where an admitted request's holds live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Local,
    Redis,
    FallbackLocal,
}

/// An admitted request: holds its parallel slots and budget reservation
/// until it is settled, or released when dropped unsettled.
#[derive(Debug)]
pub struct Ticket {
    policy: Policy,
    id: String,
    view: Option<Arc<KeyView>>,
    model: String,
    checks: Checks,
    max_cost: Nanos,
    holder: Holder,
    rates: Vec<(RateKind, RateState)>,
    done: bool,
    /// Renews the request's holds in Redis while it runs.
    keeper: Option<tokio::task::AbortHandle>,
    /// The end user and tags the request named, for its spend record.
    labels: Labels,
    /// Whether the end user's spend is counted (it has a record, or end
    /// users have a budget).
    end_user_tracked: bool,
    /// Whether the end user has a record.
    end_user_recorded: bool,
}

/// What a request says about itself for spend attribution: the end user it
/// serves (OpenAI's `user`) and its tags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    /// The end user.
    pub end_user: Option<String>,
    /// Tags, in the order given, without repeats.
    pub tags: Vec<String>,
    /// Whether the request's spend is also counted under each of its tags
    /// (`/spend/tags`).
    pub tag_spend: bool,
    /// Whether the request's spend is also counted under its end user
    /// (set by the policy: the end user has a record, or end users have a
    /// budget).
    pub end_user_spend: bool,
    /// Whether the end user is left out of the spend record
    /// (`policy.record_end_users: false`), unless it has a record, which
    /// names it already and whose spend is counted.
    pub hide_end_user: bool,
}

/// What an answered request cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// The deployment that answered.
    pub deployment: String,
    /// Its token counts.
    pub usage: TokenUsage,
    /// Its cost.
    pub cost: Nanos,
    /// Served from the response cache (charged at the cache's rate, counted apart).
    pub cache_hit: bool,
}

impl Ticket {
    /// The request's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sets the end user and tags its spend record will carry.
    pub fn label(&mut self, labels: Labels) {
        self.labels = labels;
        self.labels.end_user_spend = self.end_user_tracked;
        if self.labels.hide_end_user && !self.end_user_recorded {
            self.labels.end_user = None;
            self.labels.end_user_spend = false;
        }
    }

    /// OpenAI-style `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
    /// headers: for each kind, the limit with the least left.
    pub fn rate_headers(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for kind in [RateKind::Requests, RateKind::Tokens] {
            let tightest = self
                .rates
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, s)| s)
                .min_by_key(|s| s.remaining);
            if let Some(s) = tightest {
                let k = kind.as_str();
                out.push((format!("x-ratelimit-limit-{k}"), s.limit.to_string()));
                out.push((format!("x-ratelimit-remaining-{k}"), s.remaining.to_string()));
                out.push((format!("x-ratelimit-reset-{k}"), format_reset(s.reset)));
            }
        }
        out
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        if !self.done {
            self.done = true;
            self.policy.release(self);
        }
    }
}

/// How often a key change is made again when another change got in first.
const KEY_WRITE_TRIES: usize = 5;

/// The Redis lock a key write setting an alias holds, on every replica.
const ALIAS_LOCK: &str = "key-alias";

/// How long the Redis alias lock lasts if its holder never lets it go (a
/// replica that stopped mid-write).
const ALIAS_LOCK_TTL: Duration = Duration::from_secs(10);

/// How long a key write waits for another replica's alias lock.
const ALIAS_LOCK_WAIT: Duration = Duration::from_secs(5);

/// The alias locks a key write holds (see [`Policy::alias_guard`]); the
/// Redis one is let go on a task of its own when dropped.
struct AliasGuard<'a> {
    _local: tokio::sync::MutexGuard<'a, ()>,
    shared: Option<(RedisStore, String)>,
}

impl Drop for AliasGuard<'_> {
    fn drop(&mut self) {
        let Some((redis, holder)) = self.shared.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = redis.unlock(ALIAS_LOCK, &holder).await {
                    tracing::warn!(error = %e.0, "could not let go of the key alias lock in Redis; it expires by itself");
                }
            });
        }
    }
}

/// A key that kept changing while a change to it was being made.
fn busy_key() -> PolicyError {
    PolicyError::Conflict("The key changed while this change was being made; try again.".into())
}

/// A duration the way OpenAI writes it in `x-ratelimit-reset-*` (Go's
/// duration format, to the millisecond): `20ms`, `1.5s`, `6m0s`, `1m1.9s`,
/// `1h15m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let seconds_ms = ms % 60_000;
    let seconds = format!("{}.{:03}", seconds_ms / 1000, seconds_ms % 1000);
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    let minutes = ms / 60_000;
    match (minutes / 60, minutes % 60) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

/// Counters of the policy's own health.
#[derive(Debug, Default)]
pub struct PolicyCounters {
    /// Requests admitted on in-process limits because Redis was down.
    pub fail_open: AtomicU64,
    /// Requests refused because Redis was down.
    pub fail_closed: AtomicU64,
    /// Spend records written to Redis after an outage.
    pub replayed: AtomicU64,
    /// The second a full spend queue was last logged.
    pub queue_full_logged: AtomicU64,
}

/// Settlements waiting for Redis: each request's checks (for the holds to
/// free), its reserved maximum and its record.
type PendingQueue = VecDeque<(Checks, Nanos, SpendRecord)>;

/// One per process, so the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Store {
    Local(LocalStore),
    Redis {
        redis: RedisStore,
        mode: FailureMode,
        fallback: LocalStore,
        /// Keys and teams seen, for fail-open authentication.
        seen: Mutex<HashMap<String, KeyView>>,
        /// Changes to `seen` made by this replica's writes (under its
        /// lock): a lookup that read Redis before one does not put what it
        /// read into `seen`.
        seen_writes: AtomicU64,
        /// End users' records seen, for fail-open admission.
        seen_end_users: Mutex<HashMap<String, EndUserRecord>>,
        /// Changes to `seen_end_users` made by this replica's writes (under
        /// its lock): a lookup that read Redis before one does not replace
        /// the written copy with what it read.
        end_user_writes: AtomicU64,
        /// Settlements Redis has not taken yet, oldest first. A record
        /// leaves the queue only once Redis has taken it.
        pending: Mutex<PendingQueue>,
        /// How many settlements `pending` holds, read without its lock.
        queued: AtomicUsize,
        /// `max_queued_spend`: past it, requests are refused.
        max_queued: usize,
        /// With a data directory, the queue's records on disk
        /// (`pending-spend.jsonl`), so a replica stopped during an outage
        /// writes them when it starts again. Rewritten with what is left
        /// after each replay that wrote something.
        spill: Option<Spill>,
        /// Held while the queue is being written, so that one replay (the
        /// background one, or a flush at shutdown) waits for another
        /// instead of finding the queue momentarily short.
        replaying: tokio::sync::Mutex<()>,
        /// Releases (in-flight slots, reservations) Redis did not take,
        /// retried with the queued spend so that a moment's outage does not
        /// hold a key's slots for `hold_ttl`. Oldest dropped past
        /// [`MAX_QUEUED_RELEASES`]: those expire by themselves.
        releases: Mutex<VecDeque<(Checks, String)>>,
    },
}

#[derive(Debug)]
struct Inner {
    master: Option<String>,
    config_keys: HashMap<String, KeyRecord>,
    config_teams: HashMap<String, TeamRecord>,
    known_models: parking_lot::RwLock<HashSet<String>>,
    end_user_budget: Option<EndUserBudget>,
    store: Store,
    counters: PolicyCounters,
    next_id: AtomicU64,
    id_prefix: String,
    /// Settlements on their way to the store; [`Policy::flush`] waits for them.
    writes: Writes,
    /// Where alerts go, and which kinds, once the gateway asked for them.
    alerts: std::sync::OnceLock<(tokio::sync::mpsc::Sender<PolicyAlert>, Vec<AlertKind>, Duration)>,
    /// Alerts sent from this process, until when (Unix ms): each once a
    /// period (with Redis, claimed there too).
    alerted: Mutex<HashMap<String, i64>>,
    /// Held by a key write that sets an alias, from its check to its
    /// store, so that two at once in this process cannot both take one.
    alias_writes: tokio::sync::Mutex<()>,
}

/// A count of settlements in progress, and a signal when it reaches zero.
#[derive(Debug, Default)]
struct Writes {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Held while a settlement is on its way to the store (taken before the
/// task that writes it is spawned); [`Policy::flush`] waits until none is
/// held, so a shutdown does not exit under a write.
#[derive(Debug)]
pub struct WriteGuard(Arc<Inner>);

impl Drop for WriteGuard {
    fn drop(&mut self) {
        if self.0.writes.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.writes.idle.notify_waiters();
        }
    }
}

/// Releases an admission's holds in Redis when dropped before
/// [`ReleaseUnlessFinished::finish`]: the admission's future was dropped
/// while its script could already have run.
struct ReleaseUnlessFinished<'a> {
    policy: &'a Policy,
    checks: &'a Checks,
    id: &'a str,
    finished: bool,
}

impl ReleaseUnlessFinished<'_> {
    /// The script answered (or failed): its result decides what follows.
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for ReleaseUnlessFinished<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.policy.release_in_redis(self.checks, self.id);
        }
    }
}

/// Keys, limits, budgets and spend. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Policy(Arc<Inner>);

/// Per key, what `GET /spend/keys` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeySpend {
    /// The key's stable id.
    pub key_id: String,
    /// `sk-...` and its last four characters.
    pub key_name: String,
    /// Alias.
    pub key_alias: Option<String>,
    /// Team.
    pub team_id: Option<String>,
    /// Spend in the current budget period (in total without one), nano-dollars.
    pub spend_nanos: Nanos,
    /// Spend ever, nano-dollars.
    pub total_spend_nanos: Nanos,
}

fn field(param: &str, message: impl Into<String>) -> PolicyError {
    PolicyError::Field(crate::key::FieldError {
        param: param.to_owned(),
        message: message.into(),
    })
}

/// The spilled queue: its journal, and the lock that keeps it to one
/// process.
#[derive(Debug)]
struct Spill {
    journal: Journal,
    /// `pending-spend.lock`, held (`flock`) while this process runs.
    _lock: std::fs::File,
}

/// Opens `dir/pending-spend.jsonl`, returning the records queued in it by
/// an earlier run. They are written again with no holds to free: holds of
/// a stopped process expire on their own. Fails when another process has
/// the directory: two processes on one file would drop each other's
/// records when either rewrites it.
fn open_spill(dir: &Path, fsync: FsyncPolicy) -> Result<(Spill, PendingQueue), PolicyError> {
    std::fs::create_dir_all(dir)?;
    let lock = crate::journal::lock_dir(dir, "pending-spend.lock")?;
    let (journal, lines) = Journal::open(&dir.join("pending-spend.jsonl"), fsync)?;
    let mut queued = VecDeque::new();
    let mut unreadable = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<SpendRecord>(line) {
            Ok(record) => queued.push_back((Checks::default(), record.cost_nanos, record)),
            Err(e) => {
                tracing::warn!(line = i + 1, error = %e, "an unreadable line of pending-spend.jsonl is moved to pending-spend.rejected.jsonl");
                unreadable.push(line.as_str());
            }
        }
    }
    if !unreadable.is_empty() {
        crate::journal::set_aside(&dir.join("pending-spend.rejected.jsonl"), &unreadable)?;
        let records: Vec<&SpendRecord> = queued.iter().map(|(_, _, r)| r).collect();
        journal.rewrite(&records)?;
    }
    if !queued.is_empty() {
        tracing::warn!(
            records = queued.len(),
            "spend queued during a Redis outage before the last stop is written to Redis now"
        );
    }
    Ok((Spill { journal, _lock: lock }, queued))
}

/// The most releases kept for a retry while Redis is down.
const MAX_QUEUED_RELEASES: usize = 100_000;

impl Policy {
    /// Opens the store (replaying the local files, or connecting to Redis:
    /// an unreachable Redis fails here) and starts background flushing.
    pub async fn open(settings: PolicySettings) -> Result<Policy, PolicyError> {
        let store = match &settings.redis {
            Some(redis) => {
                let (spill, queued) = match &settings.data_dir {
                    Some(dir) => {
                        // A local store's records are not read with Redis:
                        // keys made before switching would quietly stop working.
                        for left in ["keys.jsonl", "spend-summary.json", "spend.jsonl"] {
                            if dir.join(left).exists() {
                                tracing::warn!(
                                    file = %dir.join(left).display(),
                                    "policy.data_dir holds a local store's records, which are not read with policy.redis: its keys, teams, users and spend are not in Redis"
                                );
                            }
                        }
                        let (spill, queued) = open_spill(dir, settings.fsync)?;
                        (Some(spill), queued)
                    }
                    None => (None, VecDeque::new()),
                };
                Store::Redis {
                    redis: RedisStore::connect(redis).await?,
                    mode: redis.failure_mode,
                    fallback: LocalStore::memory(),
                    seen: Mutex::new(HashMap::new()),
                    seen_writes: AtomicU64::new(0),
                    seen_end_users: Mutex::new(HashMap::new()),
                    end_user_writes: AtomicU64::new(0),
                    queued: AtomicUsize::new(queued.len()),
                    max_queued: redis.max_queued_spend,
                    pending: Mutex::new(queued),
                    spill,
                    replaying: tokio::sync::Mutex::new(()),
                    releases: Mutex::new(VecDeque::new()),
                }
            }
            None => match &settings.data_dir {
                Some(dir) => Store::Local(LocalStore::open(dir, settings.fsync)?),
                None => Store::Local(LocalStore::memory()),
            },
        };
        // 64 random bits per process: ids of replicas and restarts do not meet
        // (Redis keeps settled ids for `settled_ttl` to drop repeated settlements).
        let mut prefix = [0u8; 8];
        getrandom::fill(&mut prefix).map_err(|e| PolicyError::Store(e.to_string()))?;
        let policy = Policy(Arc::new(Inner {
            master: settings.master_key.as_deref().map(hash_key),
            config_keys: settings
                .keys
                .iter()
                .map(|(_, record)| (record.token.clone(), record.clone()))
                .collect(),
            config_teams: settings.teams.iter().map(|t| (t.team_id.clone(), t.clone())).collect(),
            known_models: parking_lot::RwLock::new(settings.known_models.iter().cloned().collect()),
            end_user_budget: settings.end_user_budget,
            store,
            counters: PolicyCounters::default(),
            writes: Writes::default(),
            next_id: AtomicU64::new(0),
            id_prefix: hex::encode(prefix),
            alerts: std::sync::OnceLock::new(),
            alerted: Mutex::new(HashMap::new()),
            alias_writes: tokio::sync::Mutex::new(()),
        }));
        policy.refuse_shadowed_records().await?;
        policy.start_background();
        Ok(policy)
    }

    /// A team or key declared in the configuration that the store also holds
    /// (made through the admin API) would take its place unseen: the
    /// stored one's spend would no longer count against its budget, and it
    /// could not be deleted. Start-up is refused, naming the entry.
    async fn refuse_shadowed_records(&self) -> Result<(), PolicyError> {
        for id in self.0.config_teams.keys() {
            let stored = match &self.0.store {
                Store::Local(local) => local.team(id),
                Store::Redis { redis, .. } => redis.team(id).await.map_err(down)?,
            };
            if stored.is_some() {
                return Err(PolicyError::Conflict(format!(
                    "policy.teams: team `{id}` was also made through the admin API, and its spend is kept there; \
                     declare the team under another id, or take it out of the configuration and delete it with /team/delete first"
                )));
            }
        }
        for (token, record) in &self.0.config_keys {
            let stored = match &self.0.store {
                Store::Local(local) => local.key(token),
                Store::Redis { redis, .. } => redis.key(token).await.map_err(down)?,
            };
            if let Some(stored) = stored {
                return Err(PolicyError::Conflict(format!(
                    "policy.keys: the key {} was also made through the admin API (key_id {}), and its spend is kept there; \
                     declare another key, or take it out of the configuration and delete it with /key/delete first",
                    record.key_name, stored.key_id
                )));
            }
        }
        Ok(())
    }

    /// A policy in memory with the configured master key and keys, without
    /// opening any store (for validating a configuration, and until
    /// [`Policy::open`] replaces it).
    pub fn memory(settings: &PolicySettings) -> Policy {
        Policy(Arc::new(Inner {
            master: settings.master_key.as_deref().map(hash_key),
            config_keys: settings
                .keys
                .iter()
                .map(|(_, record)| (record.token.clone(), record.clone()))
                .collect(),
            config_teams: settings.teams.iter().map(|t| (t.team_id.clone(), t.clone())).collect(),
            known_models: parking_lot::RwLock::new(settings.known_models.iter().cloned().collect()),
            end_user_budget: settings.end_user_budget,
            store: Store::Local(LocalStore::memory()),
            counters: PolicyCounters::default(),
            writes: Writes::default(),
            next_id: AtomicU64::new(0),
            id_prefix: "0".into(),
            alerts: std::sync::OnceLock::new(),
            alerted: Mutex::new(HashMap::new()),
            alias_writes: tokio::sync::Mutex::new(()),
        }))
    }

    fn start_background(&self) {
        let weak = Arc::downgrade(&self.0);
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let policy = Policy(inner);
                match &policy.0.store {
                    Store::Local(_) => {
                        let policy = policy.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            if let Store::Local(local) = &policy.0.store {
                                local.sync();
                            }
                        })
                        .await;
                    }
                    Store::Redis { .. } => {
                        policy.replay_pending().await;
                        policy.sync_spill().await;
                    }
                }
            }
        });
    }

    /// Forces the spilled queue to the disk (for `fsync: every_second`).
    async fn sync_spill(&self) {
        if let Store::Redis { spill: Some(_), .. } = &self.0.store {
            let policy = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Store::Redis { spill: Some(spill), .. } = &policy.0.store
                    && let Err(e) = spill.journal.sync_if_dirty()
                {
                    tracing::warn!(error = %e, "cannot flush pending-spend.jsonl");
                }
            })
            .await;
        }
    }

    /// Marks a settlement as under way until the guard is dropped; take it
    /// before spawning the task that settles.
    pub fn write_guard(&self) -> WriteGuard {
        self.0.writes.count.fetch_add(1, Ordering::AcqRel);
        WriteGuard(self.0.clone())
    }

    /// Returns once no [`WriteGuard`] is held.
    async fn writes_done(&self) {
        loop {
            let idle = self.0.writes.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.0.writes.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Writes everything recorded so far: settlements under way finish, the
    /// local store's files reach the disk, spend queued while Redis was
    /// down is sent (when it is back). Called at shutdown.
    pub async fn flush(&self) {
        self.writes_done().await;
        match &self.0.store {
            Store::Local(_) => {
                let policy = self.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Store::Local(local) = &policy.0.store {
                        local.sync();
                    }
                })
                .await;
            }
            Store::Redis { .. } => {
                self.replay_pending().await;
                self.sync_spill().await;
            }
        }
    }

    /// Whether client routes need a key: a master key or configured keys exist.
    pub fn auth_required(&self) -> bool {
        self.0.master.is_some() || !self.0.config_keys.is_empty()
    }

    /// Whether a master key is configured.
    pub fn has_master_key(&self) -> bool {
        self.0.master.is_some()
    }

    /// Whether `token` is the master key (constant-time comparison of hashes).
    pub fn is_master(&self, token: &str) -> bool {
        self.0
            .master
            .as_deref()
            .is_some_and(|m| hashes_equal(m, &hash_key(token)))
    }

    /// The policy's health counters.
    pub fn counters(&self) -> &PolicyCounters {
        &self.0.counters
    }

    /// Whether Redis is configured, and the settlements waiting for it.
    pub fn redis_status(&self) -> Option<(FailureMode, usize)> {
        match &self.0.store {
            Store::Redis { mode, pending, .. } => Some((*mode, pending.lock().len())),
            Store::Local(_) => None,
        }
    }

    /// Whether the store can take requests now: `None` for the local store
    /// (always), else whether Redis answers, with its failure mode.
    pub async fn store_health(&self) -> Option<(FailureMode, bool)> {
        match &self.0.store {
            Store::Redis { redis, mode, .. } => Some((*mode, redis.ping().await.is_ok())),
            Store::Local(_) => None,
        }
    }

    fn new_id(&self) -> String {
        let n = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        format!("req-{}-{n:x}", self.0.id_prefix)
    }

    /// A request id for a request that needs no ticket.
    pub fn request_id(&self) -> String {
        self.new_id()
    }

    async fn lookup_key(&self, token: &str) -> Result<Option<KeyRecord>, StoreDown> {
        if let Some(record) = self.0.config_keys.get(token) {
            return Ok(Some(record.clone()));
        }
        match &self.0.store {
            Store::Local(local) => Ok(local.key(token)),
            Store::Redis { redis, .. } => redis.key(token).await,
        }
    }

    async fn lookup_team(&self, id: &str) -> Result<Option<TeamRecord>, StoreDown> {
        if let Some(team) = self.0.config_teams.get(id) {
            return Ok(Some(team.clone()));
        }
        match &self.0.store {
            Store::Local(local) => Ok(local.team(id)),
            Store::Redis { redis, .. } => redis.team(id).await,
        }
    }

    async fn lookup_user(&self, id: &str) -> Result<Option<UserRecord>, StoreDown> {
        match &self.0.store {
            Store::Local(local) => Ok(local.user(id)),
            Store::Redis { redis, .. } => redis.user(id).await,
        }
    }

    async fn load_view(&self, token: &str) -> Result<Option<KeyView>, StoreDown> {
        let Some(key) = self.lookup_key(token).await? else {
            return Ok(None);
        };
        let team = match &key.team_id {
            Some(id) => self.lookup_team(id).await?,
            None => None,
        };
        // A `user_id` without a user record is a free-form label.
        let user = match &key.user_id {
            Some(id) => self.lookup_user(id).await?,
            None => None,
        };
        Ok(Some(KeyView { key, team, user }))
    }

    async fn lookup_end_user(&self, id: &str) -> Result<Option<EndUserRecord>, StoreDown> {
        match &self.0.store {
            Store::Local(local) => Ok(local.end_user(id)),
            Store::Redis { redis, .. } => redis.end_user(id).await,
        }
    }

    /// The record of the end user a request names. With Redis down, a
    /// fail-open policy uses the copy this replica saw last; a fail-closed
    /// one refuses.
    async fn end_user_for_request(&self, user: &str) -> Result<Option<EndUserRecord>, Denied> {
        let writes_before = match &self.0.store {
            Store::Redis { end_user_writes, .. } => end_user_writes.load(Ordering::Acquire),
            Store::Local(_) => 0,
        };
        match self.lookup_end_user(user).await {
            Ok(record) => {
                if let Store::Redis {
                    seen_end_users,
                    end_user_writes,
                    ..
                } = &self.0.store
                {
                    let mut seen = seen_end_users.lock();
                    // A block or deletion this replica made while Redis was
                    // read keeps its copy.
                    if end_user_writes.load(Ordering::Acquire) == writes_before {
                        match &record {
                            Some(r) => drop(seen.insert(user.to_owned(), r.clone())),
                            None => drop(seen.remove(user)),
                        }
                    }
                }
                Ok(record)
            }
            Err(StoreDown(reason)) => match &self.0.store {
                Store::Redis {
                    mode: FailureMode::FailOpen,
                    seen_end_users,
                    ..
                } => {
                    self.0.counters.fail_open.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%reason, "Redis is down: reading the end user from the copy seen before");
                    Ok(seen_end_users.lock().get(user).cloned())
                }
                _ => {
                    self.0.counters.fail_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%reason, "Redis is down: refusing the request (fail_closed)");
                    Err(Denied::Unavailable)
                }
            },
        }
    }

    /// Who `token` is. `None` (no key sent) is anonymous unless keys are required.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Principal, Denied> {
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return if self.auth_required() {
                Err(Denied::MissingKey)
            } else {
                Ok(Principal::Anonymous)
            };
        };
        if self.is_master(token) {
            return Ok(Principal::Master);
        }
        let hash = hash_key(token);
        let writes_before = match &self.0.store {
            Store::Redis { seen_writes, .. } => seen_writes.load(Ordering::Acquire),
            Store::Local(_) => 0,
        };
        let view = match self.load_view(&hash).await {
            Ok(view) => {
                if let Store::Redis { seen, seen_writes, .. } = &self.0.store {
                    // A key Redis no longer has (deleted, or regenerated on
                    // another replica) must not come back in an outage, nor
                    // one this replica changed while it was being read.
                    let mut seen = seen.lock();
                    match &view {
                        Some(v) if seen_writes.load(Ordering::Acquire) == writes_before => {
                            seen.insert(hash.clone(), v.clone())
                        }
                        _ => seen.remove(&hash),
                    };
                }
                view
            }
            Err(StoreDown(reason)) => match &self.0.store {
                Store::Redis {
                    mode: FailureMode::FailOpen,
                    seen,
                    ..
                } => {
                    tracing::warn!(%reason, "Redis is down: authenticating from keys seen before");
                    match seen.lock().get(&hash).cloned() {
                        Some(view) => Some(view),
                        // Not known to be wrong, only not seen here yet: a
                        // 401 would tell the client its key is invalid.
                        None if self.auth_required() => {
                            self.0.counters.fail_closed.fetch_add(1, Ordering::Relaxed);
                            return Err(Denied::Unavailable);
                        }
                        None => None,
                    }
                }
                _ => {
                    self.0.counters.fail_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%reason, "Redis is down: refusing the request (fail_closed)");
                    return Err(Denied::Unavailable);
                }
            },
        };
        let Some(view) = view else {
            // An open gateway ignores keys it does not know (SDKs always send one).
            return if self.auth_required() {
                Err(Denied::InvalidKey)
            } else {
                Ok(Principal::Anonymous)
            };
        };
        if !hashes_equal(&view.key.token, &hash) {
            return Err(Denied::InvalidKey);
        }
        if view.key.expires_at.is_some_and(|at| at <= now_ms()) {
            return Err(Denied::Expired);
        }
        if view.key.limits.blocked {
            return Err(Denied::Blocked { scope: "key" });
        }
        if let (Some(team), None) = (&view.key.team_id, &view.team) {
            return Err(Denied::TeamMissing { team: team.clone() });
        }
        if view.team.as_ref().is_some_and(|t| t.limits.blocked) {
            return Err(Denied::Blocked { scope: "team" });
        }
        if view.user.as_ref().is_some_and(|u| u.limits.blocked) {
            return Err(Denied::Blocked { scope: "user" });
        }
        Ok(Principal::Key(Arc::new(view)))
    }

    /// Admits a request: checks the key's model allow-list, its and its
    /// team's in-flight caps, per-minute limits and budgets, and reserves
    /// `demand.max_cost` until the ticket is settled or dropped.
    pub async fn admit(&self, principal: &Principal, demand: &Demand) -> Result<Ticket, Denied> {
        if let Store::Redis { queued, max_queued, .. } = &self.0.store {
            let waiting = queued.load(Ordering::Relaxed);
            if waiting >= *max_queued {
                // Counted every time, logged at error level once a second.
                let refusals = self.0.counters.fail_closed.fetch_add(1, Ordering::Relaxed);
                let second = now_ms() / 1000;
                if self.0.counters.queue_full_logged.swap(second as u64, Ordering::Relaxed) != second as u64 {
                    tracing::error!(
                        waiting,
                        refusals,
                        "spend waiting for Redis has reached policy.redis.max_queued_spend: refusing requests until Redis takes it"
                    );
                }
                return Err(Denied::Unavailable);
            }
        }
        let view = principal.view().cloned();
        let mut checks = match &view {
            Some(v) => {
                let names = std::iter::once(demand.model.as_str())
                    .chain(demand.requested_as.as_deref())
                    .chain(demand.access_groups.iter().map(String::as_str));
                if !demand.any_model && !v.allows_any(names) {
                    return Err(Denied::ModelNotAllowed {
                        model: demand.model.clone(),
                    });
                }
                Checks::for_request(v, demand)
            }
            None => Checks::default(),
        };
        // The end user's own limits and budget, or every end user's budget,
        // whoever's key (if any) pays.
        let mut end_user_tracked = false;
        let mut end_user_recorded = false;
        if let Some(user) = &demand.end_user {
            let record = self.end_user_for_request(user).await?;
            if record.as_ref().is_some_and(|r| r.limits.blocked) {
                return Err(Denied::EndUserBlocked { user: user.clone() });
            }
            let default_budget = self.0.end_user_budget.map(|b| (b.max_budget, b.budget_duration));
            checks.add_end_user(
                user,
                record.as_ref().map(|r| &r.limits),
                default_budget,
                demand.estimated_tokens,
            );
            end_user_tracked = record.is_some() || default_budget.is_some();
            end_user_recorded = record.is_some();
        }
        // A model nothing prices cannot be held by a budget: refused before
        // any counter is taken.
        if demand.unpriced && !checks.budgets.is_empty() {
            return Err(Denied::Unpriced {
                model: demand.requested_as.clone().unwrap_or_else(|| demand.model.clone()),
                group: demand.model.clone(),
            });
        }
        let id = demand.request_id.clone().unwrap_or_else(|| self.new_id());
        // A request that costs nothing still needs room under a budget: a
        // spent budget (or one of 0) refuses it too, so it holds at least
        // one nano-dollar while it runs.
        let max_cost = if checks.budgets.is_empty() {
            0
        } else {
            demand.max_cost.max(1)
        };
        let ticket = |holder, states: Vec<RateState>| Ticket {
            policy: self.clone(),
            id: id.clone(),
            view: view.clone(),
            model: demand.model.clone(),
            // The headers speak of the key's limits: an end user's are
            // counted by every key that names it, another tenant's figures.
            rates: checks
                .rates
                .iter()
                .zip(states)
                .filter(|(r, _)| r.scope != crate::checks::END_USER_SCOPE)
                .map(|(r, state)| (r.kind, state))
                .collect(),
            checks: checks.clone(),
            max_cost,
            holder,
            done: false,
            keeper: None,
            labels: Labels::default(),
            end_user_tracked,
            end_user_recorded,
        };
        if checks == Checks::default() {
            return Ok(ticket(Holder::Local, Vec::new()));
        }
        let admitted = match &self.0.store {
            Store::Local(local) => local.admit(&checks, max_cost).map(|s| ticket(Holder::Local, s)),
            Store::Redis {
                redis, mode, fallback, ..
            } => match self.admit_in_redis(redis, &checks, &id, max_cost).await {
                Ok(result) => result.map(|s| {
                    let mut ticket = ticket(Holder::Redis, s);
                    ticket.keeper = self.keep_holds(&checks, &id);
                    ticket
                }),
                Err(StoreDown(reason)) => {
                    // The script may have run with only its reply lost: free
                    // whatever it took under this id (a no-op otherwise), so
                    // a slot or reservation does not wait out `hold_ttl`.
                    self.release_in_redis(&checks, &id);
                    match mode {
                        FailureMode::FailClosed => {
                            self.0.counters.fail_closed.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(%reason, "Redis is down: refusing the request (fail_closed)");
                            Err(Denied::Unavailable)
                        }
                        FailureMode::FailOpen => {
                            self.0.counters.fail_open.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%reason, "Redis is down: admitting on in-process limits (fail_open)");
                            fallback
                                .admit(&checks, max_cost)
                                .map(|s| ticket(Holder::FallbackLocal, s))
                        }
                    }
                }
            },
        };
        // A refusal says the budget is spent once at least 90% of it is:
        // one request too large for a budget mostly left is no alert. A
        // budget of 0 is a block, not spend to warn of (as a default end
        // user budget of 0, which every new end user id would alert of).
        if let Err(Denied::BudgetExceeded {
            scope, spend, limit, ..
        }) = &admitted
            && self.wants_alert(AlertKind::BudgetExhausted)
            && *limit > 0
            && spend.saturating_mul(10) >= limit.saturating_mul(9)
        {
            self.alert_exhausted(
                &checks,
                view.as_deref(),
                demand.end_user.as_deref(),
                scope,
                *spend,
                *limit,
            );
        }
        admitted
    }

    /// The admission script's reply. An admission given up on while its
    /// script is in Redis (the client left, the shutdown's drain ran out)
    /// frees whatever the script took: no ticket will.
    async fn admit_in_redis(
        &self,
        redis: &RedisStore,
        checks: &Checks,
        id: &str,
        max_cost: Nanos,
    ) -> Result<Result<Vec<RateState>, Denied>, StoreDown> {
        let cut = ReleaseUnlessFinished {
            policy: self,
            checks,
            id,
            finished: false,
        };
        let reply = redis.admit(checks, id, max_cost).await;
        cut.finish();
        reply
    }

    /// Sends a [`AlertKind::BudgetExhausted`] alert for the budget of
    /// `scope` that refused a request, once a period.
    fn alert_exhausted(
        &self,
        checks: &Checks,
        view: Option<&KeyView>,
        end_user: Option<&str>,
        scope: &str,
        spend: Nanos,
        limit: Nanos,
    ) {
        let Some(check) = checks.budgets.iter().find(|b| b.scope == scope) else {
            return;
        };
        let (id, alias) = owner_names(scope, view, end_user);
        let alert = PolicyAlert {
            kind: AlertKind::BudgetExhausted,
            scope: scope.to_owned(),
            id,
            alias,
            spend,
            soft_budget: None,
            max_budget: Some(limit),
            period: check.period,
            claim: String::new(),
            lasts_ms: 0,
        };
        let claim = alert_claim("exhausted", &check.subject, check.period, day_of_ms(now_ms()), limit);
        let policy = self.clone();
        tokio::spawn(async move { policy.send_once(&claim, check_ttl(alert.period), alert).await });
    }

    /// Alerts for each soft budget of `view` (its key's, team's, user's)
    /// that its spend has reached, once a period.
    async fn check_soft_budgets(&self, view: &KeyView) {
        if !self.wants_alert(AlertKind::SoftBudgetCrossed) {
            return;
        }
        let today = day_of_ms(now_ms());
        for (scope, subject, limits) in soft_budget_owners(view) {
            let Some(soft) = limits.soft_budget.map(crate::money::from_usd) else {
                continue;
            };
            let claim = alert_claim("soft", &subject, limits.budget_duration, today, soft);
            // Sent already from here: the spend need not be read again.
            if self.0.alerted.lock().get(&claim).is_some_and(|until| *until > now_ms()) {
                continue;
            }
            let Ok(spend) = self.spend_of(&subject).await else {
                continue;
            };
            let spend = spend.in_period(limits.budget_duration, today);
            if spend < soft {
                continue;
            }
            let (id, alias) = owner_names(scope, Some(view), None);
            let alert = PolicyAlert {
                kind: AlertKind::SoftBudgetCrossed,
                scope: scope.to_owned(),
                id,
                alias,
                spend,
                soft_budget: Some(soft),
                max_budget: limits.max_budget.map(crate::money::from_usd),
                period: limits.budget_duration,
                claim: String::new(),
                lasts_ms: 0,
            };
            self.send_once(&claim, check_ttl(alert.period), alert).await;
        }
    }

    /// Sends `alert` if `claim` was not claimed within `ttl_ms` (by this
    /// process, or by any replica through Redis).
    async fn send_once(&self, claim: &str, ttl_ms: u64, mut alert: PolicyAlert) {
        claim.clone_into(&mut alert.claim);
        alert.lasts_ms = ttl_ms;
        let Some((alerts, _, _)) = self.0.alerts.get() else {
            return;
        };
        let now = now_ms();
        {
            let mut alerted = self.0.alerted.lock();
            if alerted.get(claim).is_some_and(|until| *until > now) {
                return;
            }
            if alerted.len() >= MAX_ALERT_CLAIMS {
                alerted.retain(|_, until| *until > now);
                // Still full (a flood of owners): end users' claims, which
                // clients' ids make, are forgotten first, then the rest;
                // Redis, when shared, still knows what was sent.
                if alerted.len() >= MAX_ALERT_CLAIMS {
                    alerted.retain(|claim, _| !is_end_user_claim(claim));
                }
                if alerted.len() >= MAX_ALERT_CLAIMS {
                    alerted.clear();
                }
            }
            alerted.insert(
                claim.to_owned(),
                now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX)),
            );
        }
        let mut claimed_in_redis = false;
        if let Store::Redis { redis, .. } = &self.0.store {
            // Claimed for a while first: a replica stopped before it
            // delivers the alert leaves it to another, and the claim gets
            // its full length once delivered (`confirm_policy_alert`).
            match redis.claim(claim, ttl_ms.min(ALERT_LEASE_MS)).await {
                Ok(true) => claimed_in_redis = true,
                // Another replica sends it: looked at again in a while, in
                // case its delivery fails and it gives the claim back.
                Ok(false) => {
                    self.0
                        .alerted
                        .lock()
                        .insert(claim.to_owned(), now.saturating_add(self.retry_ms()));
                    return;
                }
                // Better twice than never.
                Err(StoreDown(reason)) => {
                    tracing::warn!(%reason, "Redis is down: sending an alert without claiming it")
                }
            }
        }
        if alerts.try_send(alert).is_err() {
            // Not sent: the claim is let go, for a later request to try.
            tracing::warn!("the alert queue is full: an alert was dropped");
            self.0.alerted.lock().remove(claim);
            if claimed_in_redis && let Store::Redis { redis, .. } = &self.0.store {
                let _ = redis.unclaim(claim).await;
            }
        }
    }

    /// Claims the alert `name` for `ttl` among the replicas sharing Redis:
    /// `true` for the first to claim it (and always without Redis, or when
    /// Redis does not answer: better twice than never).
    pub async fn claim_alert(&self, name: &str, ttl: std::time::Duration) -> bool {
        let Store::Redis { redis, .. } = &self.0.store else {
            return true;
        };
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        match redis.claim(name, ttl_ms).await {
            Ok(first) => first,
            Err(StoreDown(reason)) => {
                tracing::warn!(%reason, "Redis is down: sending an alert without claiming it");
                true
            }
        }
    }

    /// Lets go of a claim made with [`Policy::claim_alert`] for an alert
    /// that could not be delivered.
    pub async fn release_alert(&self, name: &str) {
        if let Store::Redis { redis, .. } = &self.0.store
            && let Err(StoreDown(reason)) = redis.unclaim(name).await
        {
            tracing::warn!(%reason, "Redis is down: an undelivered alert's claim stays until it expires");
        }
    }

    /// Gives back, after the retry delay of [`Policy::send_alerts_to`], the claim of a
    /// policy alert that could not be delivered (its [`PolicyAlert::claim`]),
    /// here and in Redis, so that a later request that finds the same cause
    /// sends it again then (not at every request while the webhook is down).
    /// `after` replaces that delay (a webhook that refused the alert, whose
    /// configuration must be fixed first, is given longer).
    pub async fn release_policy_alert(&self, claim: &str, after: Option<Duration>) {
        let retry = after.map_or_else(
            || self.retry_ms(),
            |after| i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        );
        self.0
            .alerted
            .lock()
            .insert(claim.to_owned(), now_ms().saturating_add(retry));
        if let Store::Redis { redis, .. } = &self.0.store
            && let Err(StoreDown(reason)) = redis.set_claim_ttl(claim, u64::try_from(retry).unwrap_or(1)).await
        {
            tracing::warn!(%reason, "Redis is down: an undelivered alert's claim stays until it expires");
        }
    }

    /// Gives an alert the webhook took its claim's full length (`lasts_ms`,
    /// a little longer than its budget period), among the replicas sharing
    /// Redis: until then it is claimed for ten minutes only. Written whole,
    /// so a lease that ran out meanwhile (a long queue) is claimed again.
    pub async fn confirm_policy_alert(&self, alert: &PolicyAlert) {
        let Store::Redis { redis, .. } = &self.0.store else {
            return;
        };
        if alert.claim.is_empty() || alert.lasts_ms == 0 {
            return;
        }
        if let Err(StoreDown(reason)) = redis.hold_claim(&alert.claim, alert.lasts_ms).await {
            tracing::warn!(%reason, "Redis is down: a delivered alert's claim ends early and it may be sent again");
        }
    }

    /// How long after an undelivered alert it may be sent again, in
    /// milliseconds (see [`Policy::send_alerts_to`]).
    fn retry_ms(&self) -> i64 {
        let retry = self
            .0
            .alerts
            .get()
            .map_or(Duration::from_secs(60), |(_, _, retry)| *retry);
        i64::try_from(retry.as_millis()).unwrap_or(i64::MAX)
    }

    /// Sends the policy's alerts of the `kinds` given (soft budgets
    /// crossed, budgets spent) to `sink`; without it none are looked for.
    /// An alert given back as undelivered ([`Policy::release_policy_alert`])
    /// may be sent again `retry` later. Set once.
    pub fn send_alerts_to(&self, sink: tokio::sync::mpsc::Sender<PolicyAlert>, kinds: Vec<AlertKind>, retry: Duration) {
        if self.0.alerts.set((sink, kinds, retry)).is_err() {
            tracing::warn!("policy alerts already have a destination");
        }
    }

    /// Whether alerts of `kind` are wanted.
    fn wants_alert(&self, kind: AlertKind) -> bool {
        self.0.alerts.get().is_some_and(|(_, kinds, _)| kinds.contains(&kind))
    }

    fn release(&self, ticket: &Ticket) {
        match (&self.0.store, ticket.holder) {
            (Store::Local(local), _) => local.release(&ticket.checks, ticket.max_cost),
            (Store::Redis { fallback, .. }, Holder::FallbackLocal) => fallback.release(&ticket.checks, ticket.max_cost),
            (Store::Redis { .. }, _) => self.release_in_redis(&ticket.checks, &ticket.id),
        }
    }

    /// Renews, every third of `hold_ttl`, what request `id` holds in Redis
    /// (in-flight slots and budget reservations), so a request that runs
    /// longer than `hold_ttl` — a long stream — keeps them until it is
    /// settled or dropped, which aborts the task. `hold_ttl` then only bounds
    /// how long the holds of a replica that died outlive it.
    fn keep_holds(&self, checks: &Checks, id: &str) -> Option<tokio::task::AbortHandle> {
        if checks.parallel.is_empty() && checks.budgets.is_empty() {
            return None;
        }
        let Store::Redis { redis, .. } = &self.0.store else {
            return None;
        };
        let every = redis.hold_ttl() / 3;
        let policy = self.clone();
        let checks = checks.clone();
        let id = id.to_owned();
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let task = handle.spawn(async move {
            let Store::Redis { redis, .. } = &policy.0.store else {
                return;
            };
            // After a failure, try again within a second rather than a
            // third of `hold_ttl` later, so one slow reply does not let the
            // holds lapse.
            let mut wait = every;
            loop {
                tokio::time::sleep(wait).await;
                match redis.renew(&checks, &id).await {
                    Ok(0) => {
                        tracing::warn!(
                            request_id = %id,
                            "a running request's in-flight slot and budget reservation had expired in Redis before they were renewed: \
                             its limits no longer count it (was Redis unreachable for longer than policy.redis.hold_ttl_ms?)"
                        );
                        return;
                    }
                    Ok(_) => wait = every,
                    Err(StoreDown(reason)) => {
                        tracing::debug!(%reason, "cannot renew a request's holds; trying again");
                        wait = every.min(Duration::from_secs(1));
                    }
                }
            }
        });
        Some(task.abort_handle())
    }

    /// Frees, on a task of its own, what request `id` holds in Redis:
    /// in-flight slots and budget reservations. No round trip when its
    /// checks hold nothing there (the master key, an anonymous caller, a key
    /// with only per-minute limits).
    fn release_in_redis(&self, checks: &Checks, id: &str) {
        if checks.parallel.is_empty() && checks.budgets.is_empty() {
            return;
        }
        let policy = self.clone();
        let checks = checks.clone();
        let id = id.to_owned();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            // Counted as a write: a shutdown's flush waits for it, so a
            // replica that stops does not leave holds for `hold_ttl`.
            let guard = self.write_guard();
            handle.spawn(async move {
                let _guard = guard;
                if let Store::Redis { redis, .. } = &policy.0.store
                    && let Err(StoreDown(reason)) = redis.release(&checks, &id).await
                {
                    tracing::debug!(%reason, "cannot release a reservation yet; retried with the queued spend");
                    policy.queue_release(checks, id);
                }
            });
        }
    }

    /// Records what an admitted request cost and gives back its holds. The
    /// record is written (to the log file or Redis) before this returns.
    pub async fn settle(&self, mut ticket: Ticket, charge: Charge) -> Result<SpendRecord, PolicyError> {
        ticket.done = true;
        // No renewal from here on: the settlement frees the holds.
        if let Some(keeper) = ticket.keeper.take() {
            keeper.abort();
        }
        let key = ticket.view.as_ref().map(|v| &v.key);
        let record = SpendRecord {
            request_id: ticket.id.clone(),
            ts: now_ms(),
            key: key.map(|k| k.key_id.clone()),
            key_alias: key.and_then(|k| k.key_alias.clone()),
            team_id: key.and_then(|k| k.team_id.clone()),
            team_ledger: ticket
                .view
                .as_ref()
                .and_then(|v| v.team.as_ref())
                .and_then(|t| t.ledger_id.clone()),
            user_id: key.and_then(|k| k.user_id.clone()),
            user_ledger: ticket
                .view
                .as_ref()
                .and_then(|v| v.user.as_ref())
                .map(|u| u.ledger_id.clone()),
            model: ticket.model.clone(),
            deployment: charge.deployment,
            usage: charge.usage,
            cost_nanos: charge.cost,
            cache_hit: charge.cache_hit,
            end_user: ticket.labels.end_user.take(),
            tags: std::mem::take(&mut ticket.labels.tags),
            tag_spend: ticket.labels.tag_spend,
            end_user_spend: ticket.labels.end_user_spend,
        };
        // A cached answer used no upstream tokens: its token limits keep the
        // up-front estimate taken at admission, without the correction to
        // the answer's full count.
        if record.cache_hit {
            ticket.checks.rates.clear();
        }
        match (&self.0.store, ticket.holder) {
            (Store::Local(local), _) => local.settle(&ticket.checks, ticket.max_cost, &record)?,
            (Store::Redis { fallback, .. }, holder) => {
                if holder == Holder::FallbackLocal {
                    // The in-process limits admitted it: they count the
                    // tokens it used beyond its estimate too.
                    fallback.release_into_ledger(&ticket.checks, ticket.max_cost, &record);
                }
                // On a task of its own: the write (or, when Redis is down,
                // the queueing) finishes even when the request that settles
                // is dropped mid-way, e.g. by a client that disconnects.
                let policy = self.clone();
                let (mut checks, max_cost, queued) = (ticket.checks.clone(), ticket.max_cost, record.clone());
                let guard = self.write_guard();
                let counted_here = holder == Holder::FallbackLocal;
                // Admitted on the in-process limits, which counted its
                // tokens: Redis, back by now, is not charged them again
                // (its minute is not the one they were used in).
                if counted_here {
                    checks.rates.clear();
                }
                let write = tokio::spawn(async move {
                    policy.settle_in_redis(checks, max_cost, queued, counted_here).await;
                    drop(guard);
                });
                if let Err(e) = write.await {
                    tracing::error!(error = %e, request_id = %record.request_id, "the spend write stopped");
                }
            }
        }
        // Soft budgets are looked at once the spend is written, off the
        // request's path.
        if let Some(view) = ticket.view.clone().filter(|v| has_soft_budget(v))
            && self.wants_alert(AlertKind::SoftBudgetCrossed)
        {
            let policy = self.clone();
            tokio::spawn(async move { policy.check_soft_budgets(&view).await });
        }
        Ok(record)
    }

    /// Writes a settlement to Redis, or queues it (and spills it to disk)
    /// when Redis does not take it. A queued record of a request Redis
    /// admitted (`counted_here` false) is added to the in-process ledger
    /// and limits, so that those checked during the outage see its spend
    /// and the tokens it used beyond its estimate.
    async fn settle_in_redis(&self, checks: Checks, max_cost: Nanos, record: SpendRecord, counted_here: bool) {
        let Store::Redis {
            redis,
            pending,
            queued,
            spill,
            fallback,
            ..
        } = &self.0.store
        else {
            return;
        };
        if let Err(StoreDown(reason)) = redis.settle(&checks, max_cost, &record).await {
            tracing::warn!(%reason, request_id = %record.request_id, "Redis is down: spend queued until it is back");
            if !counted_here {
                fallback.add_to_ledger(&record);
                fallback.charge_tokens(&checks, &record);
            }
            let mut queue = pending.lock();
            if let Some(spill) = spill
                && let Err(e) = spill.journal.append(&record)
            {
                tracing::error!(error = %e, request_id = %record.request_id, "cannot write pending-spend.jsonl: this record is kept in memory only");
            }
            // Replayed later, the token-rate correction would land on the
            // minute Redis comes back, limiting the key for requests of a
            // minute long past: only the holds and the spend are replayed.
            let mut checks = checks;
            checks.rates.clear();
            queue.push_back((checks, max_cost, record));
            queued.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn queue_release(&self, checks: Checks, id: String) {
        if let Store::Redis { releases, .. } = &self.0.store {
            let mut queue = releases.lock();
            if queue.len() >= MAX_QUEUED_RELEASES {
                queue.pop_front();
            }
            queue.push_back((checks, id));
        }
    }

    /// Retries the releases Redis did not take; those it still refuses stay
    /// queued.
    async fn replay_releases(&self) {
        let Store::Redis { redis, releases, .. } = &self.0.store else {
            return;
        };
        let queued: Vec<(Checks, String)> = releases.lock().drain(..).collect();
        let mut failed = Vec::new();
        for (checks, id) in queued {
            if !failed.is_empty() || redis.release(&checks, &id).await.is_err() {
                failed.push((checks, id));
            }
        }
        if !failed.is_empty() {
            let mut queue = releases.lock();
            for entry in failed.into_iter().rev() {
                queue.push_front(entry);
            }
            while queue.len() > MAX_QUEUED_RELEASES {
                queue.pop_front();
            }
        }
    }

    /// Writes the spend queued while Redis was down, then retries the
    /// releases it did not take: spend first, since requests wait on it (a
    /// full spend queue refuses them) and a shutdown has little time for
    /// it, while a release left over only frees holds that expire anyway.
    async fn replay_pending(&self) {
        self.replay_spend().await;
        self.replay_releases().await;
    }

    async fn replay_spend(&self) {
        let Store::Redis {
            redis,
            pending,
            queued,
            spill,
            replaying,
            ..
        } = &self.0.store
        else {
            return;
        };
        let _one_at_a_time = replaying.lock().await;
        let mut written = 0_usize;
        loop {
            // Only replays remove records, and they hold `replaying`: the
            // front is still this record once its write returns. New
            // records are pushed at the back meanwhile.
            let Some((checks, max_cost, record)) = pending.lock().front().cloned() else {
                break;
            };
            // `settle` is idempotent per request id: a write that reached
            // Redis but whose reply was lost is not counted twice.
            if let Err(StoreDown(reason)) = redis.settle(&checks, max_cost, &record).await {
                tracing::debug!(%reason, queued = pending.lock().len(), "Redis did not take the queued spend yet");
                break;
            }
            pending.lock().pop_front();
            queued.fetch_sub(1, Ordering::Relaxed);
            written += 1;
            self.0.counters.replayed.fetch_add(1, Ordering::Relaxed);
        }
        if written == 0 {
            return;
        }
        let queue = pending.lock();
        if let Some(spill) = spill {
            // Under the queue's lock: no record is appended meanwhile, so the
            // file holds exactly the records still queued.
            let left: Vec<&SpendRecord> = queue.iter().map(|(_, _, r)| r).collect();
            if let Err(e) = spill.journal.rewrite(&left) {
                tracing::warn!(error = %e, "cannot rewrite pending-spend.jsonl; records Redis has are written again (once) at the next start");
            }
        }
        if queue.is_empty() {
            tracing::info!(written, "Redis is back: queued spend written");
        } else {
            tracing::warn!(
                written,
                left = queue.len(),
                "Redis took part of the queued spend; the rest is retried"
            );
        }
    }

    // ----- admin: keys -----

    /// Replaces the model names keys and teams may be given (after a
    /// configuration reload added or removed groups).
    pub fn set_known_models(&self, names: impl IntoIterator<Item = String>) {
        *self.0.known_models.write() = names.into_iter().collect();
    }

    fn check_models(&self, models: &[String]) -> Result<(), PolicyError> {
        let known = self.0.known_models.read();
        if known.is_empty() {
            return Ok(());
        }
        match models
            .iter()
            .enumerate()
            .find(|(_, m)| !known.contains(*m) && !known.iter().any(|k| crate::key::names_model(k, m)))
        {
            Some((i, m)) => Err(field(
                &format!("models[{i}]"),
                format!("No model named `{m}` is configured."),
            )),
            None => Ok(()),
        }
    }

    /// Checks the models the fields of `body` name in `limits`: `models`,
    /// and the models of `model_rpm_limit` and `model_tpm_limit` (a limit
    /// for a name no model has would never apply), each error naming its
    /// field.
    fn check_limit_models(&self, body: &Map<String, Value>, limits: &crate::key::Limits) -> Result<(), PolicyError> {
        if body.contains_key("models") {
            self.check_models(&limits.models)?;
        }
        for (name, per_model) in [
            ("model_rpm_limit", &limits.model_rpm_limit),
            ("model_tpm_limit", &limits.model_tpm_limit),
        ] {
            if !body.contains_key(name) {
                continue;
            }
            for model in per_model.keys() {
                if let Err(PolicyError::Field(_)) = self.check_models(std::slice::from_ref(model)) {
                    return Err(field(
                        &format!("{name}.{model}"),
                        format!("No model named `{model}` is configured."),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn check_team_exists(&self, team: Option<&str>) -> Result<(), PolicyError> {
        if let Some(id) = team
            && self.lookup_team(id).await.map_err(down)?.is_none()
        {
            return Err(field("team_id", format!("No team `{id}` exists.")));
        }
        Ok(())
    }

    /// `POST /key/generate`: a new key from `body`; returns its plaintext (shown once).
    pub async fn generate_key(&self, body: &Map<String, Value>) -> Result<(String, KeyRecord), PolicyError> {
        let _alias = self.alias_guard(body).await?;
        let now = now_ms();
        let plaintext = match body.get("key") {
            None | Some(Value::Null) => generate_key().map_err(|e| PolicyError::Store(e.to_string()))?,
            Some(Value::String(k)) if usable_key(k) => k.clone(),
            Some(_) => {
                return Err(field(
                    "key",
                    "A custom 'key' must start with `sk-`, be at least 20 characters, all of them visible ASCII (no spaces, control or non-ASCII characters).",
                ));
            }
        };
        let token = hash_key(&plaintext);
        if self.is_master(&plaintext) || self.lookup_key(&token).await.map_err(down)?.is_some() {
            return Err(PolicyError::Conflict("This key already exists.".into()));
        }
        let mut record = KeyRecord::new(&plaintext, now, false);
        record.key_id = new_key_id().map_err(|e| PolicyError::Store(e.to_string()))?;
        for (name, value) in body {
            match name.as_str() {
                "key" => {}
                "duration" => record.expires_at = expiry_from(value, now)?,
                _ => apply_key_field(&mut record, name, value)?,
            }
        }
        self.check_limit_models(body, &record.limits)?;
        self.check_team_exists(record.team_id.as_deref()).await?;
        self.check_alias_free(&record).await?;
        // Two generates of one custom key: one wins, the other is told.
        let inserted = match &self.0.store {
            Store::Local(local) => local.insert_key(record.clone())?,
            Store::Redis { redis, .. } => redis.insert_key(&record).await.map_err(down)?,
        };
        if !inserted {
            return Err(PolicyError::Conflict("This key already exists.".into()));
        }
        Ok((plaintext, record))
    }

    /// Finds a key by its plaintext (`sk-…`), its hash, or its id.
    pub async fn find_key(&self, reference: &str) -> Result<KeyRecord, PolicyError> {
        let token = if reference.starts_with(KEY_PREFIX) {
            hash_key(reference)
        } else {
            reference.to_owned()
        };
        if let Some(record) = self.lookup_key(&token).await.map_err(down)? {
            return Ok(record);
        }
        // A key declared in the configuration need not start with `sk-`.
        if let Some(record) = self.0.config_keys.get(&hash_key(reference)) {
            return Ok(record.clone());
        }
        let (keys, unreadable) = self.keys_and_unreadable().await?;
        match keys.into_iter().find(|k| k.key_id == token) {
            Some(key) => Ok(key),
            // It may be the one that cannot be read.
            None if unreadable > 0 => Err(unreadable_keys(unreadable)),
            None => Err(PolicyError::NotFound { what: "Key" }),
        }
    }

    /// `POST /key/update`: changes the fields in `body` of the key named by `body.key`.
    pub async fn update_key(&self, body: &Map<String, Value>) -> Result<KeyRecord, PolicyError> {
        let reference = body
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| field("key", "'key' (the key or its hash) is required."))?;
        let _alias = self.alias_guard(body).await?;
        for _ in 0..KEY_WRITE_TRIES {
            let (mut record, read) = self.changed_key(reference, body, &["key"]).await?;
            record.revision = read.saturating_add(1);
            // Deleted or regenerated since it was read: not brought back;
            // changed since: made again from the new value.
            let written = match &self.0.store {
                Store::Local(local) => local.replace_key(read, record.clone())?,
                Store::Redis { redis, .. } => redis.replace_key(read, &record).await.map_err(down)?,
            };
            match written {
                KeyWrite::Done => {
                    self.forget_seen(|view| view.key.token == record.token);
                    return Ok(record);
                }
                // Gone, or regenerated meanwhile: a key named by its id is
                // found again under its new value; one named by a value that
                // no longer works is not found.
                KeyWrite::Missing | KeyWrite::Changed => {}
                KeyWrite::Taken => return Err(PolicyError::NotFound { what: "Key" }),
            }
        }
        Err(busy_key())
    }

    /// The key `reference` names, read now, with the fields of `body` (but
    /// those in `skip`) applied and checked, and the revision it was read at.
    async fn changed_key(
        &self,
        reference: &str,
        body: &Map<String, Value>,
        skip: &[&str],
    ) -> Result<(KeyRecord, u64), PolicyError> {
        let mut record = self.find_key(reference).await?;
        if record.from_config {
            return Err(PolicyError::FromConfig("key"));
        }
        let read = record.revision;
        let alias = record.key_alias.clone();
        let now = now_ms();
        for (name, value) in body {
            match name.as_str() {
                name if skip.contains(&name) => {}
                // A null `duration` leaves the expiry as it is (LiteLLM's
                // typed clients send it with every update); "-1" removes it.
                "duration" if value.is_null() => {}
                "duration" => record.expires_at = expiry_from(value, now)?,
                // LiteLLM resets a key's spend this way; spend here is a
                // ledger, never rewritten.
                "spend" if !value.is_null() => {
                    return Err(field(
                        "spend",
                        "A key's spend is not set or reset by an update; make a new key (or raise its budget) instead.",
                    ));
                }
                _ => apply_key_field(&mut record, name, value)?,
            }
        }
        self.check_changed(body, &record).await?;
        // An update that sends the key's own alias again changes nothing.
        if record.key_alias != alias {
            self.check_alias_free(&record).await?;
        }
        Ok((record, read))
    }

    /// Checks the models and team a key update or regenerate sets; fields it
    /// leaves alone are not checked again, so a key whose model a reload
    /// removed can still be blocked or rotated.
    async fn check_changed(&self, body: &Map<String, Value>, record: &KeyRecord) -> Result<(), PolicyError> {
        self.check_limit_models(body, &record.limits)?;
        if body.contains_key("team_id") {
            self.check_team_exists(record.team_id.as_deref()).await?;
        }
        Ok(())
    }

    /// The alias lock for a write whose `body` sets an alias: this
    /// process's (see `Inner::alias_writes`) and, with Redis, the one every
    /// replica takes there. Waits up to [`ALIAS_LOCK_WAIT`] for Redis's.
    async fn alias_guard(&self, body: &Map<String, Value>) -> Result<Option<AliasGuard<'_>>, PolicyError> {
        if body.get("key_alias").is_none_or(Value::is_null) {
            return Ok(None);
        }
        let local = self.0.alias_writes.lock().await;
        let Store::Redis { redis, .. } = &self.0.store else {
            return Ok(Some(AliasGuard {
                _local: local,
                shared: None,
            }));
        };
        let holder = new_key_id().map_err(|e| PolicyError::Store(e.to_string()))?;
        let ttl = u64::try_from(ALIAS_LOCK_TTL.as_millis()).unwrap_or(u64::MAX);
        let since = std::time::Instant::now();
        while !redis.lock(ALIAS_LOCK, &holder, ttl).await.map_err(down)? {
            if since.elapsed() > ALIAS_LOCK_WAIT {
                return Err(PolicyError::Conflict(
                    "Another key's alias is being set; try again.".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Some(AliasGuard {
            _local: local,
            shared: Some((redis.clone(), holder)),
        }))
    }

    /// Refuses an alias another key has: aliases name one key each (a
    /// delete by alias must not leave a key of the same name working). It
    /// is checked when a key is made or its alias changed, under the alias
    /// lock (see [`Policy::alias_guard`]): two such writes at once cannot
    /// both pass, through one gateway or several sharing Redis.
    async fn check_alias_free(&self, record: &KeyRecord) -> Result<(), PolicyError> {
        let Some(alias) = record.key_alias.as_deref() else {
            return Ok(());
        };
        let taken = self
            .all_keys()
            .await?
            .iter()
            .any(|k| k.key_id != record.key_id && k.key_alias.as_deref() == Some(alias));
        if taken {
            return Err(field(
                "key_alias",
                format!("A key with the alias '{alias}' already exists."),
            ));
        }
        Ok(())
    }

    /// `POST /key/delete`: deletes each key; returns the ids deleted.
    pub async fn delete_keys(&self, references: &[String]) -> Result<Vec<String>, PolicyError> {
        // Every key is found first: a missing or configured one deletes none.
        let mut records: Vec<KeyRecord> = Vec::new();
        for reference in references {
            let record = self.find_key(reference).await?;
            if record.from_config {
                return Err(PolicyError::FromConfig("key"));
            }
            if !records.iter().any(|r| r.token == record.token) {
                records.push(record);
            }
        }
        let mut deleted = Vec::new();
        for mut record in records {
            // A key regenerated between its lookup and its deletion is
            // found again by its id and deleted under its new value.
            for _ in 0..KEY_WRITE_TRIES {
                let existed = match &self.0.store {
                    Store::Local(local) => local.delete_key(&record.token)?,
                    Store::Redis { redis, seen, .. } => {
                        seen.lock().remove(&record.token);
                        let existed = redis.delete_key(&record.token).await.map_err(down)?;
                        // Again once deleted: a lookup that read the key
                        // before the delete may have put it back meanwhile.
                        self.forget_seen(|view| view.key.token == record.token);
                        existed
                    }
                };
                if existed {
                    deleted.push(record.key_id);
                    break;
                }
                match self.find_key(&record.key_id).await {
                    Ok(moved) if moved.token != record.token => record = moved,
                    _ => break,
                }
            }
        }
        Ok(deleted)
    }

    /// `POST /key/regenerate`: a new plaintext for the key; the old one stops
    /// working at once. Spend and limits stay with the key. `body` may change
    /// fields at the same time.
    pub async fn regenerate_key(
        &self,
        reference: &str,
        body: &Map<String, Value>,
    ) -> Result<(String, KeyRecord), PolicyError> {
        let _alias = self.alias_guard(body).await?;
        let plaintext = match body.get("new_key") {
            Some(Value::String(k)) if usable_key(k) => k.clone(),
            None | Some(Value::Null) => generate_key().map_err(|e| PolicyError::Store(e.to_string()))?,
            Some(_) => {
                return Err(field(
                    "new_key",
                    "'new_key' must start with `sk-`, be at least 20 characters, all of them visible ASCII (no spaces, control or non-ASCII characters).",
                ));
            }
        };
        // A plaintext some key (this one included) or the master key already
        // has would leave two keys on one hash, or delete the key just written.
        let token = hash_key(&plaintext);
        if self.is_master(&plaintext) || self.lookup_key(&token).await.map_err(down)?.is_some() {
            return Err(PolicyError::Conflict("This key already exists.".into()));
        }
        for _ in 0..KEY_WRITE_TRIES {
            let (mut record, read) = self.changed_key(reference, body, &["key", "new_key"]).await?;
            let old = std::mem::replace(&mut record.token, token.clone());
            record.key_name = display_name(&plaintext);
            record.revision = read.saturating_add(1);
            // One step in the store: of two regenerates (or a regenerate and
            // a delete) only one gets the old value, no failure leaves
            // neither, and a change made since the read is not lost.
            let moved = match &self.0.store {
                Store::Local(local) => local.rename_key(&old, read, record.clone())?,
                Store::Redis { redis, seen, .. } => {
                    seen.lock().remove(&old);
                    let moved = redis.rename_key(&old, read, &record).await.map_err(down)?;
                    self.forget_seen(|view| view.key.token == old);
                    moved
                }
            };
            match moved {
                KeyWrite::Done => return Ok((plaintext, record)),
                KeyWrite::Missing => return Err(PolicyError::NotFound { what: "Key" }),
                KeyWrite::Taken => return Err(PolicyError::Conflict("This key already exists.".into())),
                KeyWrite::Changed => {}
            }
        }
        Err(busy_key())
    }

    /// How many keys are configured and stored, counting stored records
    /// this version cannot read.
    pub async fn key_count(&self) -> Result<usize, PolicyError> {
        let stored = match &self.0.store {
            Store::Local(local) => local.keys().len(),
            Store::Redis { redis, .. } => usize::try_from(redis.key_count().await.map_err(down)?).unwrap_or(usize::MAX),
        };
        Ok(self.0.config_keys.len().saturating_add(stored))
    }

    /// Every key (configured and stored) this version can read: a stored
    /// record it cannot read is left out, with a warning in the log.
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, PolicyError> {
        Ok(self.keys_and_unreadable().await?.0)
    }

    /// Every key, for a check that must see them all (an alias taken, a
    /// team or user still holding keys): refused while a stored record
    /// cannot be read.
    pub async fn all_keys(&self) -> Result<Vec<KeyRecord>, PolicyError> {
        match self.keys_and_unreadable().await? {
            (keys, 0) => Ok(keys),
            (_, n) => Err(unreadable_keys(n)),
        }
    }

    /// The keys that can be read, and how many stored ones cannot.
    async fn keys_and_unreadable(&self) -> Result<(Vec<KeyRecord>, usize), PolicyError> {
        let mut keys: Vec<KeyRecord> = self.0.config_keys.values().cloned().collect();
        let unreadable = match &self.0.store {
            Store::Local(local) => {
                keys.extend(local.keys());
                0
            }
            Store::Redis { redis, .. } => {
                let (stored, unreadable) = redis.keys().await.map_err(down)?;
                keys.extend(stored);
                unreadable
            }
        };
        keys.sort_by_key(|k| k.created_at);
        Ok((keys, unreadable))
    }

    // ----- admin: teams -----

    /// Stores a team: a new one only if its id is free (else 409), a changed
    /// one only if it was not deleted meanwhile (else 404).
    async fn put_team(&self, record: TeamRecord, replace: bool) -> Result<KeyWrite, PolicyError> {
        let id = record.team_id.clone();
        let stored = match &self.0.store {
            Store::Local(local) => local.put_team(record, replace)?,
            Store::Redis { redis, .. } => redis.put_team(&record, replace).await.map_err(down)?,
        };
        match stored {
            KeyWrite::Taken => Err(PolicyError::Conflict(format!("Team `{id}` already exists."))),
            KeyWrite::Missing => Err(PolicyError::NotFound { what: "Team" }),
            done_or_changed => Ok(done_or_changed),
        }
    }

    /// `POST /team/new`.
    pub async fn new_team(&self, body: &Map<String, Value>) -> Result<TeamRecord, PolicyError> {
        let team_id = match body.get("team_id") {
            Some(Value::String(id)) if id.contains(':') => {
                return Err(field(
                    "team_id",
                    "'team_id' may not contain ':' (it separates the parts of limit counter names).",
                ));
            }
            Some(Value::String(id)) if id.trim() != id => {
                return Err(field(
                    "team_id",
                    "'team_id' may not start or end with spaces (keys name teams exactly).",
                ));
            }
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            None | Some(Value::Null) => {
                let mut bytes = [0u8; 8];
                getrandom::fill(&mut bytes).map_err(|e| PolicyError::Store(e.to_string()))?;
                format!("team-{}", hex::encode(bytes))
            }
            Some(_) => return Err(field("team_id", "'team_id' must be a non-empty string.")),
        };
        if self.lookup_team(&team_id).await.map_err(down)?.is_some() {
            return Err(PolicyError::Conflict(format!("Team `{team_id}` already exists.")));
        }
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| PolicyError::Store(e.to_string()))?;
        let mut record = TeamRecord {
            ledger_id: Some(format!("{team_id}#{}", hex::encode(suffix))),
            team_id,
            team_alias: None,
            created_at: now_ms(),
            from_config: false,
            revision: 0,
            limits: Default::default(),
        };
        for (name, value) in body {
            if name != "team_id" {
                apply_team_field(&mut record, name, value)?;
            }
        }
        self.check_limit_models(body, &record.limits)?;
        self.put_team(record.clone(), false).await?;
        Ok(record)
    }

    /// A team by id.
    pub async fn team(&self, id: &str) -> Result<TeamRecord, PolicyError> {
        self.lookup_team(id)
            .await
            .map_err(down)?
            .ok_or(PolicyError::NotFound { what: "Team" })
    }

    /// `POST /team/update`.
    pub async fn update_team(&self, body: &Map<String, Value>) -> Result<TeamRecord, PolicyError> {
        let id = body
            .get("team_id")
            .and_then(Value::as_str)
            .ok_or_else(|| field("team_id", "'team_id' is required."))?;
        // Stored only over the revision it was made from: made again from
        // the new value when another change got in first.
        for _ in 0..KEY_WRITE_TRIES {
            let mut record = self.team(id).await?;
            if record.from_config {
                return Err(PolicyError::FromConfig("team"));
            }
            for (name, value) in body {
                if name != "team_id" {
                    refuse_spend_reset(name, value, "team")?;
                    apply_team_field(&mut record, name, value)?;
                }
            }
            self.check_limit_models(body, &record.limits)?;
            record.revision = record.revision.saturating_add(1);
            if self.put_team(record.clone(), true).await? == KeyWrite::Done {
                self.forget_seen(|view| view.key.team_id.as_deref() == Some(id));
                return Ok(record);
            }
        }
        Err(PolicyError::Conflict(
            "The team changed while this change was being made; try again.".into(),
        ))
    }

    /// `POST /team/delete`: refused while keys belong to the team. Every
    /// team named is checked before any is deleted, so a refusal deletes
    /// none; only a key joining a team while it is deleted (a race) can stop
    /// the deletes part way, and the refusal then names those done.
    pub async fn delete_teams(&self, ids: &[String]) -> Result<Vec<String>, PolicyError> {
        let keys = self.all_keys().await?;
        let mut checked: Vec<&String> = Vec::with_capacity(ids.len());
        for id in ids {
            if checked.contains(&id) {
                continue;
            }
            let record = self.team(id).await?;
            if record.from_config {
                return Err(PolicyError::FromConfig("team"));
            }
            let members = keys.iter().filter(|k| k.team_id.as_deref() == Some(id)).count();
            if members > 0 {
                return Err(PolicyError::Conflict(format!(
                    "Team `{id}` still has {members} keys; delete them or move them first."
                )));
            }
            checked.push(id);
        }
        let mut deleted: Vec<String> = Vec::new();
        for id in checked {
            // Deleted meanwhile by another request: nothing left to delete.
            let Some(record) = self.lookup_team(id).await.map_err(down)? else {
                continue;
            };
            let existed = match &self.0.store {
                Store::Local(local) => local.delete_team(id)?,
                Store::Redis { redis, .. } => redis.delete_team(id).await.map_err(down)?,
            };
            // A key made or moved into the team while it was being deleted
            // would be refused as `team_not_found` from then on: the team is
            // put back, as a user is.
            let members = self
                .all_keys()
                .await?
                .iter()
                .filter(|k| k.team_id.as_deref() == Some(id.as_str()))
                .count();
            if existed && members > 0 {
                self.put_team(record, false).await?;
                let before = if deleted.is_empty() {
                    String::new()
                } else {
                    format!(" Deleted before it: {}.", deleted.join(", "))
                };
                return Err(PolicyError::Conflict(format!(
                    "A key joined team `{id}` while it was being deleted; the team was kept.{before}"
                )));
            }
            self.forget_seen(|view| view.key.team_id.as_deref() == Some(id.as_str()));
            if existed {
                deleted.push(id.clone());
            }
        }
        Ok(deleted)
    }

    /// Drops the keys seen before (kept to authenticate through a Redis
    /// outage) that `stale` matches: a key or team this replica changed is
    /// read from Redis again, never served from the copy before the change.
    fn forget_seen(&self, stale: impl Fn(&KeyView) -> bool) {
        if let Store::Redis { seen, seen_writes, .. } = &self.0.store {
            let mut seen = seen.lock();
            seen_writes.fetch_add(1, Ordering::AcqRel);
            seen.retain(|_, view| !stale(view));
        }
    }

    /// Every team.
    pub async fn list_teams(&self) -> Result<Vec<TeamRecord>, PolicyError> {
        let mut teams: Vec<TeamRecord> = self.0.config_teams.values().cloned().collect();
        match &self.0.store {
            Store::Local(local) => teams.extend(local.teams()),
            Store::Redis { redis, .. } => teams.extend(redis.teams().await.map_err(down)?),
        }
        teams.sort_by_key(|t| t.created_at);
        Ok(teams)
    }

    // ----- users -----

    async fn put_user(&self, record: UserRecord, replace: bool) -> Result<KeyWrite, PolicyError> {
        let id = record.user_id.clone();
        let stored = match &self.0.store {
            Store::Local(local) => local.put_user(record, replace)?,
            Store::Redis { redis, .. } => redis.put_user(&record, replace).await.map_err(down)?,
        };
        match stored {
            KeyWrite::Taken => Err(PolicyError::Conflict(format!("User `{id}` already exists."))),
            KeyWrite::Missing => Err(PolicyError::NotFound { what: "User" }),
            done_or_changed => Ok(done_or_changed),
        }
    }

    /// `POST /user/new`: a user, and (unless `auto_create_key` is false) a
    /// key of its own, given the body's `key_alias` and `duration`.
    pub async fn new_user(
        &self,
        body: &Map<String, Value>,
    ) -> Result<(UserRecord, Option<(String, KeyRecord)>), PolicyError> {
        let user_id = match body.get("user_id") {
            Some(Value::String(id)) if id.contains(':') => {
                return Err(field(
                    "user_id",
                    "'user_id' may not contain ':' (it separates the parts of limit counter names).",
                ));
            }
            Some(Value::String(id)) if id.trim() != id => {
                return Err(field(
                    "user_id",
                    "'user_id' may not start or end with spaces (keys name users exactly).",
                ));
            }
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            None | Some(Value::Null) => {
                let mut bytes = [0u8; 8];
                getrandom::fill(&mut bytes).map_err(|e| PolicyError::Store(e.to_string()))?;
                format!("user-{}", hex::encode(bytes))
            }
            Some(_) => return Err(field("user_id", "'user_id' must be a non-empty string.")),
        };
        let auto_key = match body.get("auto_create_key") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(field("auto_create_key", "'auto_create_key' must be true or false.")),
        };
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| PolicyError::Store(e.to_string()))?;
        let mut record = UserRecord {
            ledger_id: format!("{user_id}#{}", hex::encode(suffix)),
            user_id,
            user_alias: None,
            user_email: None,
            created_at: now_ms(),
            revision: 0,
            limits: Default::default(),
        };
        let mut key_body = Map::new();
        for (name, value) in body {
            match name.as_str() {
                "user_id" | "auto_create_key" => {}
                // Sent null (a typed client's default), they ask nothing.
                "key_alias" | "duration" if value.is_null() => {}
                "key_alias" | "duration" => drop(key_body.insert(name.clone(), value.clone())),
                _ => apply_user_field(&mut record, name, value)?,
            }
        }
        self.check_limit_models(body, &record.limits)?;
        if !auto_key && !key_body.is_empty() {
            let name = key_body.keys().next().cloned().unwrap_or_default();
            return Err(field(
                &name,
                format!("'{name}' is for the user's key, and 'auto_create_key' is false."),
            ));
        }
        // The key's fields are checked before the user is stored, so a
        // mistake in them leaves nothing behind.
        if let Some(duration) = key_body.get("duration") {
            expiry_from(duration, now_ms())?;
        }
        if auto_key {
            let mut probe = KeyRecord::new("sk-probe-for-a-new-users-key", now_ms(), false);
            probe.key_id = String::new();
            if let Some(alias) = key_body.get("key_alias") {
                apply_key_field(&mut probe, "key_alias", alias)?;
            }
            self.check_alias_free(&probe).await?;
        }
        self.put_user(record.clone(), false).await?;
        self.saw_user(&record);
        if !auto_key {
            return Ok((record, None));
        }
        key_body.insert("user_id".into(), Value::String(record.user_id.clone()));
        match self.generate_key(&key_body).await {
            Ok(key) => Ok((record, Some(key))),
            Err(e) => {
                // The user and its key are made together, or neither is.
                let removed = match &self.0.store {
                    Store::Local(local) => local.delete_user(&record.user_id).map(drop),
                    Store::Redis { redis, .. } => redis.delete_user(&record.user_id).await.map(drop).map_err(down),
                };
                if let Err(undo) = removed {
                    tracing::warn!(user_id = %record.user_id, error = %undo, "a user whose key failed was not removed");
                }
                Err(e)
            }
        }
    }

    /// A user by id.
    pub async fn user(&self, id: &str) -> Result<UserRecord, PolicyError> {
        self.lookup_user(id)
            .await
            .map_err(down)?
            .ok_or(PolicyError::NotFound { what: "User" })
    }

    /// `POST /user/update`.
    pub async fn update_user(&self, body: &Map<String, Value>) -> Result<UserRecord, PolicyError> {
        let id = body
            .get("user_id")
            .and_then(Value::as_str)
            .ok_or_else(|| field("user_id", "'user_id' is required."))?;
        for _ in 0..KEY_WRITE_TRIES {
            let mut record = self.user(id).await?;
            for (name, value) in body {
                if name != "user_id" {
                    refuse_spend_reset(name, value, "user")?;
                    apply_user_field(&mut record, name, value)?;
                }
            }
            self.check_limit_models(body, &record.limits)?;
            record.revision = record.revision.saturating_add(1);
            if self.put_user(record.clone(), true).await? == KeyWrite::Done {
                self.saw_user(&record);
                return Ok(record);
            }
        }
        Err(PolicyError::Conflict(
            "The user changed while this change was being made; try again.".into(),
        ))
    }

    /// `POST /user/delete`: refused while keys name the user. Every user
    /// named is checked before any is deleted.
    pub async fn delete_users(&self, ids: &[String]) -> Result<Vec<String>, PolicyError> {
        let keys = self.all_keys().await?;
        let mut checked: Vec<&String> = Vec::with_capacity(ids.len());
        for id in ids {
            if checked.contains(&id) {
                continue;
            }
            self.user(id).await?;
            let owned = keys.iter().filter(|k| k.user_id.as_deref() == Some(id)).count();
            if owned > 0 {
                return Err(PolicyError::Conflict(format!(
                    "User `{id}` still has {owned} keys; delete them or move them first."
                )));
            }
            checked.push(id);
        }
        let mut deleted = Vec::new();
        for id in checked {
            let record = self.user(id).await?;
            let existed = match &self.0.store {
                Store::Local(local) => local.delete_user(id)?,
                Store::Redis { redis, .. } => redis.delete_user(id).await.map_err(down)?,
            };
            // A key made for the user while it was being deleted would
            // lose the user's limits (a `user_id` without a user is a
            // label): the user is put back.
            let owned = self
                .all_keys()
                .await?
                .iter()
                .filter(|k| k.user_id.as_deref() == Some(id.as_str()))
                .count();
            if existed && owned > 0 {
                self.put_user(record, false).await?;
                return Err(PolicyError::Conflict(format!(
                    "A key was made for user `{id}` while it was being deleted; it was kept."
                )));
            }
            self.forget_seen(|view| view.key.user_id.as_deref() == Some(id.as_str()));
            if existed {
                deleted.push(id.clone());
            }
        }
        Ok(deleted)
    }

    /// Puts a user just written into this replica's copies of its keys, so
    /// that a Redis outage right after the change serves them with it.
    fn saw_user(&self, user: &UserRecord) {
        if let Store::Redis { seen, seen_writes, .. } = &self.0.store {
            let mut seen = seen.lock();
            seen_writes.fetch_add(1, Ordering::AcqRel);
            for view in seen.values_mut() {
                if view.key.user_id.as_deref() == Some(user.user_id.as_str()) {
                    view.user = Some(user.clone());
                }
            }
        }
    }

    /// Every user, oldest first.
    pub async fn list_users(&self) -> Result<Vec<UserRecord>, PolicyError> {
        let mut users = match &self.0.store {
            Store::Local(local) => local.users(),
            Store::Redis { redis, .. } => redis.users().await.map_err(down)?,
        };
        users.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.user_id.cmp(&b.user_id)));
        Ok(users)
    }

    /// A user's spend in its current budget period (in total without
    /// one), and in total.
    pub async fn user_spend(&self, user: &UserRecord) -> Result<(Nanos, Nanos), PolicyError> {
        let spend = self.spend_of(&crate::spend::subject_user(&user.ledger_id)).await?;
        Ok((
            spend.in_period(user.limits.budget_duration, day_of_ms(now_ms())),
            spend.total,
        ))
    }

    // ----- end users -----

    /// Every end user's budget (`policy.end_user_budget`), if set.
    pub fn end_user_budget(&self) -> Option<EndUserBudget> {
        self.0.end_user_budget
    }

    async fn put_end_user(&self, record: EndUserRecord, replace: bool) -> Result<KeyWrite, PolicyError> {
        let id = record.user_id.clone();
        let stored = match &self.0.store {
            Store::Local(local) => local.put_end_user(record, replace)?,
            Store::Redis { redis, .. } => redis.put_end_user(&record, replace).await.map_err(down)?,
        };
        match stored {
            KeyWrite::Taken => Err(PolicyError::Conflict(format!("End user `{id}` already exists."))),
            KeyWrite::Missing => Err(PolicyError::NotFound { what: "End user" }),
            done_or_changed => Ok(done_or_changed),
        }
    }

    /// `POST /customer/new`: an end user's record, with its budget, limits
    /// or block.
    pub async fn new_end_user(&self, body: &Map<String, Value>) -> Result<EndUserRecord, PolicyError> {
        let user_id = end_user_id(body.get("user_id"))?;
        let mut record = EndUserRecord {
            user_id,
            alias: None,
            created_at: now_ms(),
            revision: 0,
            limits: Default::default(),
        };
        for (name, value) in body {
            if name != "user_id" {
                apply_end_user_field(&mut record, name, value)?;
            }
        }
        self.put_end_user(record.clone(), false).await?;
        self.saw_end_user(&record);
        Ok(record)
    }

    /// An end user's record, if it has one.
    pub async fn end_user(&self, id: &str) -> Result<Option<EndUserRecord>, PolicyError> {
        self.lookup_end_user(id).await.map_err(down)
    }

    /// `POST /customer/update`: changes the fields given.
    pub async fn update_end_user(&self, body: &Map<String, Value>) -> Result<EndUserRecord, PolicyError> {
        let id = end_user_id(body.get("user_id"))?;
        self.change_end_user(&id, |record| {
            for (name, value) in body {
                if name != "user_id" {
                    apply_end_user_field(record, name, value)?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Changes an end user's record with `change`, over the revision read.
    async fn change_end_user(
        &self,
        id: &str,
        change: impl Fn(&mut EndUserRecord) -> Result<(), crate::key::FieldError>,
    ) -> Result<EndUserRecord, PolicyError> {
        for _ in 0..KEY_WRITE_TRIES {
            let mut record = self
                .end_user(id)
                .await?
                .ok_or(PolicyError::NotFound { what: "End user" })?;
            change(&mut record)?;
            record.revision = record.revision.saturating_add(1);
            if self.put_end_user(record.clone(), true).await? == KeyWrite::Done {
                self.saw_end_user(&record);
                return Ok(record);
            }
        }
        Err(PolicyError::Conflict(
            "The end user changed while this change was being made; try again.".into(),
        ))
    }

    /// `POST /customer/block` and `/customer/unblock`: end users without a
    /// record get one when blocked (as LiteLLM's do); unblocking one
    /// without a record changes nothing. Every id is checked first.
    pub async fn set_end_users_blocked(
        &self,
        ids: &[String],
        blocked: bool,
    ) -> Result<Vec<EndUserRecord>, PolicyError> {
        for (i, id) in ids.iter().enumerate() {
            // Named as the body names it: `user_ids[i]`.
            if let Err(PolicyError::Field(mut e)) = end_user_id(Some(&Value::String(id.clone()))) {
                e.param = format!("user_ids[{i}]");
                return Err(PolicyError::Field(e));
            }
        }
        let mut out = Vec::new();
        for id in ids {
            let existing = self.end_user(id).await?;
            let record = match existing {
                Some(_) => {
                    self.change_end_user(id, |r| {
                        r.limits.blocked = blocked;
                        Ok(())
                    })
                    .await?
                }
                None if !blocked => continue,
                None => {
                    let mut record = EndUserRecord {
                        user_id: id.clone(),
                        alias: None,
                        created_at: now_ms(),
                        revision: 0,
                        limits: Default::default(),
                    };
                    record.limits.blocked = true;
                    match self.put_end_user(record.clone(), false).await {
                        Ok(_) => {
                            self.saw_end_user(&record);
                            record
                        }
                        // Made meanwhile: block that one.
                        Err(PolicyError::Conflict(_)) => {
                            self.change_end_user(id, |r| {
                                r.limits.blocked = true;
                                Ok(())
                            })
                            .await?
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            out.push(record);
        }
        Ok(out)
    }

    /// `POST /customer/delete`: every id must have a record (checked before
    /// any is deleted). Their spend is kept: a record made again, or the
    /// default end-user budget, finds it.
    pub async fn delete_end_users(&self, ids: &[String]) -> Result<Vec<String>, PolicyError> {
        for id in ids {
            if self.end_user(id).await?.is_none() {
                return Err(PolicyError::NotFound { what: "End user" });
            }
        }
        let mut deleted = Vec::new();
        for id in ids {
            let existed = match &self.0.store {
                Store::Local(local) => local.delete_end_user(id)?,
                Store::Redis { redis, .. } => redis.delete_end_user(id).await.map_err(down)?,
            };
            self.forget_end_user(id);
            if existed {
                deleted.push(id.clone());
            }
        }
        Ok(deleted)
    }

    /// Every end user's record, oldest first.
    pub async fn list_end_users(&self) -> Result<Vec<EndUserRecord>, PolicyError> {
        let mut users = match &self.0.store {
            Store::Local(local) => local.end_users(),
            Store::Redis { redis, .. } => redis.end_users().await.map_err(down)?,
        };
        users.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.user_id.cmp(&b.user_id)));
        Ok(users)
    }

    /// An end user's spend in its current budget period (its own, else
    /// `policy.end_user_budget`'s; in total without one), and in total.
    pub async fn end_user_spend(&self, id: &str, own: Option<&EndUserRecord>) -> Result<(Nanos, Nanos), PolicyError> {
        let spend = self.spend_of(&crate::spend::subject_end_user(id)).await?;
        let period = match own.and_then(|r| r.limits.max_budget) {
            Some(_) => own.and_then(|r| r.limits.budget_duration),
            None => self.0.end_user_budget.and_then(|b| b.budget_duration),
        };
        Ok((spend.in_period(period, day_of_ms(now_ms())), spend.total))
    }

    /// Keeps the record this replica just wrote as its copy, so that a
    /// Redis outage right after a change (a block) does not lose it.
    fn saw_end_user(&self, record: &EndUserRecord) {
        self.write_end_user_copy(|seen| drop(seen.insert(record.user_id.clone(), record.clone())));
    }

    /// Drops this replica's copy of a deleted end user.
    fn forget_end_user(&self, id: &str) {
        self.write_end_user_copy(|seen| drop(seen.remove(id)));
    }

    /// Changes this replica's copies of end users as one of its writes
    /// did, counted (under their lock) so that a lookup under way does not
    /// undo it.
    fn write_end_user_copy(&self, change: impl FnOnce(&mut HashMap<String, EndUserRecord>)) {
        if let Store::Redis {
            seen_end_users,
            end_user_writes,
            ..
        } = &self.0.store
        {
            let mut seen = seen_end_users.lock();
            end_user_writes.fetch_add(1, Ordering::AcqRel);
            change(&mut seen);
        }
    }

    // ----- spend -----

    /// One ledger subject's spend (`key:<id>`, `team:<id>`, `model:<name>`).
    pub async fn spend_of(&self, subject: &str) -> Result<SubjectSpend, PolicyError> {
        match &self.0.store {
            Store::Local(local) => Ok(local.spend(subject)),
            Store::Redis { redis, .. } => redis.spend(subject).await.map_err(down),
        }
    }

    /// A key's spend in its current budget period (in total without one).
    pub async fn key_spend(&self, key: &KeyRecord) -> Result<(Nanos, Nanos), PolicyError> {
        let spend = self.spend_of(&subject_key(&key.key_id)).await?;
        let today = day_of_ms(now_ms());
        Ok((spend.in_period(key.limits.budget_duration, today), spend.total))
    }

    /// A team's spend in its current budget period, and in total.
    pub async fn team_spend(&self, team: &TeamRecord) -> Result<(Nanos, Nanos), PolicyError> {
        let spend = self.spend_of(&subject_team(team.ledger())).await?;
        let today = day_of_ms(now_ms());
        Ok((spend.in_period(team.limits.budget_duration, today), spend.total))
    }

    /// `GET /spend/keys`: every key's spend.
    pub async fn spend_keys(&self) -> Result<Vec<KeySpend>, PolicyError> {
        let mut out = Vec::new();
        for key in self.list_keys().await? {
            let (spend, total) = self.key_spend(&key).await?;
            out.push(KeySpend {
                key_id: key.key_id,
                key_name: key.key_name,
                key_alias: key.key_alias,
                team_id: key.team_id,
                spend_nanos: spend,
                total_spend_nanos: total,
            });
        }
        Ok(out)
    }

    /// Spend per subject under a prefix (`model:`, `team:`, `key:`).
    pub async fn spend_by_prefix(&self, prefix: &str) -> Result<Vec<(String, SubjectSpend)>, PolicyError> {
        match &self.0.store {
            Store::Local(local) => Ok(local.spend_by_prefix(prefix)),
            Store::Redis { redis, .. } => redis.spend_by_prefix(prefix).await.map_err(down),
        }
    }

    /// `GET /spend/logs`.
    pub async fn spend_logs(&self, filter: &LogFilter) -> Result<Vec<SpendRecord>, PolicyError> {
        match &self.0.store {
            Store::Local(_) => {
                let policy = self.clone();
                let filter = filter.clone();
                tokio::task::spawn_blocking(move || match &policy.0.store {
                    Store::Local(local) => local.logs(&filter),
                    Store::Redis { .. } => Ok(Vec::new()),
                })
                .await
                .map_err(|e| PolicyError::Store(e.to_string()))?
            }
            Store::Redis { redis, .. } => redis.logs(filter).await.map_err(down),
        }
    }
}

fn down(StoreDown(reason): StoreDown) -> PolicyError {
    PolicyError::Unavailable(reason)
}

/// The refusal of a check that must see every key while `n` stored key
/// records cannot be read.
fn unreadable_keys(n: usize) -> PolicyError {
    PolicyError::Unavailable(format!(
        "{n} stored key record(s) cannot be read by this version (see the log), so this cannot be checked"
    ))
}

/// Whether a key, its team or its user has a soft budget.
fn has_soft_budget(view: &KeyView) -> bool {
    view.key.limits.soft_budget.is_some()
        || view.team.as_ref().is_some_and(|t| t.limits.soft_budget.is_some())
        || view.user.as_ref().is_some_and(|u| u.limits.soft_budget.is_some())
}

/// The key's, team's and user's scope, ledger subject and limits.
fn soft_budget_owners(view: &KeyView) -> Vec<(&'static str, String, &crate::key::Limits)> {
    let mut out = vec![("key", subject_key(&view.key.key_id), &view.key.limits)];
    if let Some(team) = &view.team {
        out.push(("team", subject_team(team.ledger()), &team.limits));
    }
    if let Some(user) = &view.user {
        out.push(("user", crate::spend::subject_user(&user.ledger_id), &user.limits));
    }
    out
}

/// How an alert names the owner of a budget of `scope`: an id and an alias.
fn owner_names(scope: &str, view: Option<&KeyView>, end_user: Option<&str>) -> (String, Option<String>) {
    match (scope, view) {
        ("key", Some(v)) => (v.key.key_name.clone(), v.key.key_alias.clone()),
        ("team", Some(v)) => (
            v.key.team_id.clone().unwrap_or_default(),
            v.team.as_ref().and_then(|t| t.team_alias.clone()),
        ),
        ("user", Some(v)) => (
            v.key.user_id.clone().unwrap_or_default(),
            v.user.as_ref().and_then(|u| u.user_alias.clone()),
        ),
        _ => (end_user.unwrap_or_default().to_owned(), None),
    }
}

/// Whether an alert claim ([`alert_claim`]) is an end user's.
fn is_end_user_claim(claim: &str) -> bool {
    claim
        .split_once(':')
        .is_some_and(|(_, subject)| subject.starts_with("end_user:"))
}

/// The name an alert about `subject`'s budget is claimed under: one per
/// kind, subject and period.
/// A budget changed meanwhile (its `amount`) is another claim.
fn alert_claim(
    kind: &str,
    subject: &str,
    period: Option<crate::period::BudgetPeriod>,
    today: crate::period::Day,
    amount: Nanos,
) -> String {
    let start = period.map_or(0, |p| p.start(today));
    format!("{kind}:{subject}:{start}:{amount}")
}

/// Alerts remembered in process before the oldest are forgotten.
const MAX_ALERT_CLAIMS: usize = 10_000;

/// How long a budget alert is claimed in Redis before it is delivered
/// (then for its period): enough for three tries of many alerts; a longer
/// queue may see it claimed and sent again by another replica (better
/// twice than never).
const ALERT_LEASE_MS: u64 = 10 * 60 * 1000;

/// How long an alert's claim lasts: past the end of its period (a budget
/// in total: a year, as good as once).
fn check_ttl(period: Option<crate::period::BudgetPeriod>) -> u64 {
    const DAY_MS: u64 = 86_400_000;
    match period {
        Some(crate::period::BudgetPeriod::Daily) => 2 * DAY_MS,
        Some(crate::period::BudgetPeriod::Weekly) => 8 * DAY_MS,
        Some(crate::period::BudgetPeriod::Monthly) => 32 * DAY_MS,
        None => 366 * DAY_MS,
    }
}

/// An end user's id from a body field: a non-empty string of at most
/// [`MAX_END_USER_ID_BYTES`] bytes.
fn end_user_id(value: Option<&Value>) -> Result<String, PolicyError> {
    match value {
        // Requests' end users are trimmed and stripped of control
        // characters: a record under another form would never match one.
        Some(Value::String(id)) if id.trim() != id || id.chars().any(char::is_control) => Err(field(
            "user_id",
            "'user_id' may not start or end with spaces or hold control characters (requests' end users never do).",
        )),
        Some(Value::String(id)) if !id.trim().is_empty() && id.len() <= MAX_END_USER_ID_BYTES => Ok(id.clone()),
        Some(Value::String(id)) if !id.trim().is_empty() => Err(field(
            "user_id",
            format!("'user_id' may have at most {MAX_END_USER_ID_BYTES} bytes."),
        )),
        None | Some(Value::Null) => Err(field("user_id", "'user_id' is required.")),
        Some(_) => Err(field("user_id", "'user_id' must be a non-empty string.")),
    }
}

/// An update's `spend` (LiteLLM's way to reset it, `0` included) is
/// refused: spend is a ledger, never rewritten. `null` is absent.
fn refuse_spend_reset(name: &str, value: &Value, what: &str) -> Result<(), PolicyError> {
    if name == "spend" && !value.is_null() {
        return Err(field(
            "spend",
            format!("A {what}'s spend is not set or reset by an update; raise its budget instead."),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A default end-user budget of 0 refuses every end user; that is no
    /// spend to alert of, or each new id a client makes up would be one.
    #[tokio::test]
    async fn a_zero_budget_is_a_block_not_an_alert() {
        let settings = PolicySettings {
            end_user_budget: Some(EndUserBudget {
                max_budget: 0.0,
                budget_duration: None,
            }),
            ..PolicySettings::default()
        };
        let policy = Policy::memory(&settings);
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        policy.send_alerts_to(tx, vec![AlertKind::BudgetExhausted], Duration::from_secs(60));
        let principal = policy.authenticate(None).await.unwrap();
        for i in 0..3 {
            let demand = Demand {
                model: "m".into(),
                requested_as: None,
                access_groups: Vec::new(),
                end_user: Some(format!("user-{i}")),
                unpriced: false,
                any_model: false,
                estimated_tokens: 10,
                max_cost: 1_000,
                request_id: None,
            };
            let refused = policy.admit(&principal, &demand).await;
            assert!(
                matches!(refused, Err(Denied::BudgetExceeded { .. })),
                "{:?}",
                refused.err()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err(), "a zero budget was alerted of");
        // End users' claims are the ones forgotten first when claims pile up.
        assert!(is_end_user_claim("exhausted:end_user:u-1:0:0"));
        assert!(!is_end_user_claim("exhausted:key:abc:0:5"));
        assert!(!is_end_user_claim("soft:team:end_user:0:5"));
    }

    /// A request that costs nothing (feedback, a token count, a free
    /// model) is refused by a spent budget as any other, and admitted by one
    /// with room left.
    #[tokio::test]
    async fn a_free_request_needs_room_under_a_budget() {
        let budget = |max_budget: f64| PolicySettings {
            end_user_budget: Some(EndUserBudget {
                max_budget,
                budget_duration: None,
            }),
            ..PolicySettings::default()
        };
        let demand = Demand {
            model: "m".into(),
            requested_as: None,
            access_groups: Vec::new(),
            end_user: Some("user-1".into()),
            unpriced: false,
            any_model: false,
            estimated_tokens: 10,
            max_cost: 0,
            request_id: None,
        };
        let policy = Policy::memory(&budget(0.0));
        let principal = policy.authenticate(None).await.unwrap();
        let refused = policy.admit(&principal, &demand).await;
        assert!(
            matches!(refused, Err(Denied::BudgetExceeded { .. })),
            "{:?}",
            refused.err()
        );
        let policy = Policy::memory(&budget(1.0));
        let principal = policy.authenticate(None).await.unwrap();
        let ticket = policy.admit(&principal, &demand).await.unwrap();
        drop(ticket);
        assert!(policy.admit(&principal, &demand).await.is_ok());
    }

    /// An end user's own limits bind the request but stay out of the
    /// key's `x-ratelimit-*` headers: every key naming the end user counts
    /// against them.
    #[tokio::test]
    async fn rate_headers_leave_out_an_end_users_limits() {
        let policy = Policy::memory(&PolicySettings::default());
        let body = serde_json::json!({"user_id": "acme", "rpm_limit": 5});
        policy.new_end_user(body.as_object().unwrap()).await.unwrap();
        let principal = policy.authenticate(None).await.unwrap();
        let demand = Demand {
            model: "m".into(),
            requested_as: None,
            access_groups: Vec::new(),
            end_user: Some("acme".into()),
            unpriced: false,
            any_model: false,
            estimated_tokens: 10,
            max_cost: 0,
            request_id: None,
        };
        let ticket = policy.admit(&principal, &demand).await.unwrap();
        assert!(ticket.rate_headers().is_empty(), "{:?}", ticket.rate_headers());
        drop(ticket);
        // The limit itself still holds: 5 a minute, one taken already.
        for _ in 0..4 {
            drop(policy.admit(&principal, &demand).await.unwrap());
        }
        let refused = policy.admit(&principal, &demand).await;
        assert!(
            matches!(refused, Err(Denied::RateLimited { .. })),
            "{:?}",
            refused.err()
        );
    }

    /// A team or key declared in the file that the store also holds (made
    /// through the API) refuses start-up instead of quietly taking the
    /// stored one's place, and its spend with it.
    #[tokio::test]
    async fn a_declared_team_or_key_may_not_shadow_a_stored_one() {
        let dir = tempfile::tempdir().unwrap();
        let settings = PolicySettings {
            data_dir: Some(dir.path().to_path_buf()),
            ..PolicySettings::default()
        };
        let body = |v: Value| v.as_object().unwrap().clone();
        let policy = Policy::open(settings.clone()).await.unwrap();
        policy
            .new_team(&body(serde_json::json!({"team_id": "research"})))
            .await
            .unwrap();
        let (plaintext, _) = policy
            .generate_key(&body(serde_json::json!({"key": "sk-made-through-the-api-01"})))
            .await
            .unwrap();
        drop(policy);

        let team = TeamRecord {
            team_id: "research".into(),
            team_alias: None,
            created_at: 0,
            from_config: true,
            revision: 0,
            ledger_id: None,
            limits: Default::default(),
        };
        let err = Policy::open(PolicySettings {
            teams: vec![team.clone()],
            ..settings.clone()
        })
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("policy.teams: team `research`"), "{err}");
        let declared = KeyRecord::new(&plaintext, 0, true);
        let err = Policy::open(PolicySettings {
            keys: vec![(plaintext.clone(), declared)],
            ..settings.clone()
        })
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("policy.keys: the key sk-..."), "{err}");
        assert!(!err.to_string().contains(&plaintext), "{err}");
        // Other ids are declared as before.
        let other = TeamRecord {
            team_id: "ops".into(),
            ..team
        };
        assert!(
            Policy::open(PolicySettings {
                teams: vec![other],
                ..settings
            })
            .await
            .is_ok()
        );
    }

    /// `spend: 0` is LiteLLM's reset: a 200 that reset nothing would leave
    /// the team or user refused while the admin thinks it was freed.
    #[tokio::test]
    async fn an_update_does_not_pretend_to_reset_spend() {
        let policy = Policy::memory(&PolicySettings::default());
        policy
            .new_team(&body(serde_json::json!({"team_id": "t"})))
            .await
            .unwrap();
        policy
            .new_user(&body(serde_json::json!({"user_id": "ana", "spend": 0})))
            .await
            .unwrap();
        for spend in [serde_json::json!(0), serde_json::json!(0.0), serde_json::json!(5)] {
            let err = policy
                .update_team(&body(serde_json::json!({"team_id": "t", "spend": spend})))
                .await
                .unwrap_err();
            assert!(
                matches!(&err, PolicyError::Field(f) if f.param == "spend" && f.message.contains("not set or reset")),
                "{err:?}"
            );
            let err = policy
                .update_user(&body(serde_json::json!({"user_id": "ana", "spend": spend})))
                .await
                .unwrap_err();
            assert!(matches!(&err, PolicyError::Field(f) if f.param == "spend"), "{err:?}");
        }
        policy
            .update_user(&body(
                serde_json::json!({"user_id": "ana", "spend": null, "max_budget": 5}),
            ))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_flush_waits_for_settlements_under_way() {
        use std::future::Future as _;
        let policy = Policy::memory(&PolicySettings::default());
        let guard = policy.write_guard();
        let mut flush = std::pin::pin!(policy.flush());
        let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(flush.as_mut().poll(cx))).await;
        assert!(polled.is_pending(), "the flush went ahead of a write under way");
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), flush)
            .await
            .expect("the flush returns once the write is done");
    }

    fn body(value: serde_json::Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[tokio::test]
    async fn a_key_whose_model_went_away_can_still_be_blocked_and_rotated() {
        let settings = PolicySettings {
            master_key: Some("sk-master-0000000000000000".into()),
            known_models: vec!["old".into(), "new".into()],
            ..PolicySettings::default()
        };
        let policy = Policy::memory(&settings);
        let (plaintext, _) = policy
            .generate_key(&body(serde_json::json!({"models": ["old"]})))
            .await
            .unwrap();
        policy.set_known_models(["new".to_owned()]);
        let blocked = policy
            .update_key(&body(serde_json::json!({"key": plaintext, "blocked": true})))
            .await
            .unwrap();
        assert!(blocked.limits.blocked);
        let (rotated, _) = policy.regenerate_key(&plaintext, &Map::new()).await.unwrap();
        // Setting the models checks them.
        let err = policy
            .update_key(&body(serde_json::json!({"key": rotated, "models": ["old"]})))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PolicyError::Field(f) if f.param == "models[0]"),
            "{err:?}"
        );
    }

    /// A per-model limit for a name no model has would never apply: it is
    /// refused, naming the entry, for keys, teams and users alike.
    #[tokio::test]
    async fn per_model_limits_name_configured_models() {
        let settings = PolicySettings {
            master_key: Some("sk-master-0000000000000000".into()),
            known_models: vec!["gpt-4o".into()],
            ..PolicySettings::default()
        };
        let policy = Policy::memory(&settings);
        let named = |e: PolicyError| match e {
            PolicyError::Field(f) => f.param,
            other => format!("{other:?}"),
        };
        let typo = serde_json::json!({"gpt4o": 10});
        let err = policy
            .generate_key(&body(serde_json::json!({"model_rpm_limit": typo})))
            .await
            .unwrap_err();
        assert_eq!(named(err), "model_rpm_limit.gpt4o");
        let (plaintext, _) = policy
            .generate_key(&body(serde_json::json!({"model_tpm_limit": {"gpt-4o": 1000}})))
            .await
            .unwrap();
        let err = policy
            .update_key(&body(serde_json::json!({"key": plaintext, "model_tpm_limit": typo})))
            .await
            .unwrap_err();
        assert_eq!(named(err), "model_tpm_limit.gpt4o");
        let err = policy
            .new_team(&body(serde_json::json!({"team_id": "t", "model_rpm_limit": typo})))
            .await
            .unwrap_err();
        assert_eq!(named(err), "model_rpm_limit.gpt4o");
    }

    #[tokio::test]
    async fn a_key_whose_team_is_gone_is_refused_not_freed_of_it() {
        let policy = Policy::memory(&PolicySettings::default());
        let team = policy
            .new_team(&body(serde_json::json!({"team_id": "research", "models": ["cheap"]})))
            .await
            .unwrap();
        let (plaintext, _) = policy
            .generate_key(&body(serde_json::json!({"team_id": team.team_id})))
            .await
            .unwrap();
        assert!(matches!(
            policy.authenticate(Some(&plaintext)).await,
            Ok(Principal::Key(_))
        ));
        // The team goes while the key still names it, as when a team
        // deletion races the key's creation.
        let Store::Local(local) = &policy.0.store else {
            panic!("a memory policy has a local store")
        };
        assert!(local.delete_team("research").unwrap());
        let refused = policy.authenticate(Some(&plaintext)).await;
        assert!(
            matches!(&refused, Err(Denied::TeamMissing { team }) if team == "research"),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_key_change_made_from_a_stale_read_is_not_stored() {
        let policy = Policy::memory(&PolicySettings::default());
        let (plaintext, stale) = policy.generate_key(&Map::new()).await.unwrap();
        // Another admin blocks the key after `stale` was read…
        let blocked = policy
            .update_key(&body(serde_json::json!({"key": plaintext, "blocked": true})))
            .await
            .unwrap();
        assert_eq!(blocked.revision, stale.revision + 1);
        let Store::Local(local) = &policy.0.store else {
            panic!("a memory policy has a local store")
        };
        // …so a change made from `stale` (as a regenerate or an update that
        // read before the block would write) is refused, not stored over it.
        let mut from_stale = stale.clone();
        from_stale.key_alias = Some("renamed".into());
        from_stale.revision = stale.revision + 1;
        assert_eq!(
            local.replace_key(stale.revision, from_stale.clone()).unwrap(),
            KeyWrite::Changed
        );
        let mut moved = from_stale;
        moved.token = "another-token".into();
        assert_eq!(
            local.rename_key(&stale.token, stale.revision, moved).unwrap(),
            KeyWrite::Changed
        );
        // The API reads again and keeps both changes.
        let (rotated, record) = policy
            .regenerate_key(&plaintext, &body(serde_json::json!({"key_alias": "renamed"})))
            .await
            .unwrap();
        assert!(record.limits.blocked, "the block survives the regenerate");
        assert_eq!(record.key_alias.as_deref(), Some("renamed"));
        assert_eq!(record.revision, stale.revision + 2);
        assert!(matches!(
            policy.authenticate(Some(&rotated)).await,
            Err(Denied::Blocked { .. })
        ));
    }

    #[tokio::test]
    async fn keys_get_fresh_ids_and_a_bad_delete_deletes_nothing() {
        let policy = Policy::memory(&PolicySettings::default());
        let custom = "sk-custom-key-0000000000001";
        let (_, first) = policy
            .generate_key(&body(serde_json::json!({"key": custom})))
            .await
            .unwrap();
        assert!(
            first.key_id.starts_with("key-") && first.key_id.len() == 36,
            "{}",
            first.key_id
        );
        let err = policy
            .delete_keys(&[custom.to_owned(), "sk-no-such-key-0000000000".to_owned()])
            .await
            .unwrap_err();
        assert!(matches!(err, PolicyError::NotFound { .. }), "{err:?}");
        assert!(policy.find_key(custom).await.is_ok(), "a failed delete deleted nothing");
        let deleted = policy
            .delete_keys(&[custom.to_owned(), custom.to_owned()])
            .await
            .unwrap();
        assert_eq!(deleted, std::slice::from_ref(&first.key_id));
        let (_, again) = policy
            .generate_key(&body(serde_json::json!({"key": custom})))
            .await
            .unwrap();
        assert_ne!(
            again.key_id, first.key_id,
            "a key made again does not take the old one's spend"
        );

        for bad in ["sk-has a space-000000000000", "sk-trailing-space-0000000 ", "sk-short"] {
            let err = policy
                .generate_key(&body(serde_json::json!({"key": bad})))
                .await
                .unwrap_err();
            assert!(
                matches!(&err, PolicyError::Field(f) if f.param == "key"),
                "{bad}: {err:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_concurrent_regenerates_one_wins_and_a_stale_update_brings_nothing_back() {
        let policy = Policy::memory(&PolicySettings::default());
        let (plaintext, _) = policy.generate_key(&Map::new()).await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (policy, plaintext) = (policy.clone(), plaintext.clone());
                tokio::spawn(async move { policy.regenerate_key(&plaintext, &Map::new()).await })
            })
            .collect();
        let mut new_values = Vec::new();
        for task in tasks {
            if let Ok((value, _)) = task.await.unwrap() {
                new_values.push(value);
            }
        }
        assert_eq!(new_values.len(), 1, "one plaintext lives: {new_values:?}");
        assert_eq!(policy.list_keys().await.unwrap().len(), 1);
        // An update naming the old value finds nothing to bring back.
        let stale = policy
            .update_key(&body(serde_json::json!({"key": plaintext, "blocked": true})))
            .await;
        assert!(matches!(stale, Err(PolicyError::NotFound { .. })), "{stale:?}");
        assert!(!matches!(
            policy.authenticate(Some(&plaintext)).await,
            Ok(Principal::Key(_))
        ));
        // Two generates of one custom key: one is refused.
        let custom = body(serde_json::json!({"key": "sk-the-same-custom-key-001"}));
        let (a, b) = tokio::join!(policy.generate_key(&custom), policy.generate_key(&custom));
        assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    }

    #[tokio::test]
    async fn request_ids_carry_64_random_bits_per_process() {
        let a = Policy::open(PolicySettings::default()).await.unwrap();
        let b = Policy::open(PolicySettings::default()).await.unwrap();
        let (first, second) = (a.request_id(), a.request_id());
        let prefix = |id: &str| id.rsplit_once('-').unwrap().0.to_owned();
        assert_eq!(prefix(&first).len(), "req-".len() + 16, "{first}");
        assert_eq!(prefix(&first), prefix(&second));
        assert_ne!(first, second);
        assert_ne!(prefix(&first), prefix(&b.request_id()));
    }

    #[test]
    fn resets_are_written_like_openai() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(2)), "2s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
        // Past a minute the fraction stays, so a client waiting that long
        // is not early; hours are written as hours.
        assert_eq!(format_reset(Duration::from_millis(61_900)), "1m1.9s");
        assert_eq!(format_reset(Duration::from_millis(60_020)), "1m0.02s");
        assert_eq!(format_reset(Duration::from_secs(4_500)), "1h15m0s");
        assert_eq!(format_reset(Duration::from_secs(3_600)), "1h0m0s");
    }
}
