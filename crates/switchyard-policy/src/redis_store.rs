//! The shared store: keys, teams, limits, reservations and spend in Redis,
//! so that every replica enforces one set of limits and budgets.
//!
//! Admission is one Lua script: it checks every in-flight cap, per-minute
//! limit (GCRA on the server's clock) and budget of a request, and only when
//! all pass takes them all. Settlement is another, idempotent per request id.
//! Reservations and in-flight slots carry an expiry, so a replica that dies
//! holding them does not hold them for ever.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Client, Cmd, Script};
use serde::{Deserialize, Serialize};

use crate::checks::{Checks, RateState};
use crate::error::{Denied, PolicyError};
use crate::key::{EndUserRecord, KeyRecord, KeyWrite, Revisioned, TeamRecord, UserRecord};
use crate::local::rate_state;
use crate::money::Nanos;
use crate::period::{Day, day_of_ms, now_ms};
use crate::policy::FailureMode;
use crate::spend::{LogFilter, SpendRecord, SubjectSpend};

/// Redis connection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key the gateway writes.
    pub prefix: String,
    /// What to do while Redis is unreachable.
    pub failure_mode: FailureMode,
    /// Longest wait for one Redis command.
    pub timeout: Duration,
    /// How long a reservation or in-flight slot outlives a replica that died holding it.
    pub hold_ttl: Duration,
    /// How long a settled request's id is kept, so that its settlement
    /// retried after an outage counts once.
    pub settled_ttl: Duration,
    /// Spend records kept in the log stream (approximately).
    pub log_max_len: u64,
    /// The most settlements kept while Redis does not take them; when that
    /// many wait, requests are refused as under `fail_closed` until Redis
    /// has taken some.
    pub max_queued_spend: usize,
}

/// Redis did not answer.
#[derive(Debug, Clone)]
pub struct StoreDown(pub String);

impl From<redis::RedisError> for StoreDown {
    fn from(e: redis::RedisError) -> Self {
        StoreDown(e.to_string())
    }
}

const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local a, k = 1, 1
local function arg() local v = ARGV[a]; a = a + 1; return v end
local function key() local v = KEYS[k]; k = k + 1; return v end
local rid = arg()
local cost = tonumber(arg())
local ttl = tonumber(arg())
local par = {}
for j = 1, tonumber(arg()) do
  local name = key()
  local limit = tonumber(arg())
  redis.call('ZREMRANGEBYSCORE', name, '-inf', now)
  if redis.call('ZCARD', name) >= limit then return {'parallel', tostring(j)} end
  par[j] = name
end
local rates = {}
local out = {'ok'}
for j = 1, tonumber(arg()) do
  local name = key()
  local limit = tonumber(arg())
  local n = tonumber(arg())
  local interval = 60000 / limit
  if n > limit then return {'rate', tostring(j), '-1'} end
  local tat = tonumber(redis.call('GET', name) or '0')
  if tat < now then tat = now end
  local new_tat = tat + n * interval
  if new_tat - now > 60000 then
    return {'rate', tostring(j), tostring(math.ceil(new_tat - 60000 - now))}
  end
  rates[j] = {name, new_tat}
  table.insert(out, tostring(math.floor((60000 - (new_tat - now)) / interval)))
end
local budgets = {}
for j = 1, tonumber(arg()) do
  local spend, resv, amounts = key(), key(), key()
  local limit = tonumber(arg())
  local spent = 0
  for f = 1, tonumber(arg()) do spent = spent + tonumber(redis.call('HGET', spend, arg()) or '0') end
  local stale = redis.call('ZRANGEBYSCORE', resv, '-inf', now)
  for _, m in ipairs(stale) do redis.call('ZREM', resv, m); redis.call('HDEL', amounts, m) end
  local reserved = 0
  for _, v in ipairs(redis.call('HVALS', amounts)) do reserved = reserved + tonumber(v) end
  if spent + reserved + cost > limit then
    return {'budget', tostring(j), string.format('%d', spent), string.format('%d', reserved)}
  end
  budgets[j] = {resv, amounts}
end
for _, name in ipairs(par) do
  redis.call('ZADD', name, now + ttl, rid)
  local left = redis.call('PTTL', name)
  if left == -1 or (left >= 0 and left < ttl) then redis.call('PEXPIRE', name, ttl) end
end
for _, r in ipairs(rates) do redis.call('SET', r[1], string.format('%.3f', r[2]), 'PX', 61000) end
for _, b in ipairs(budgets) do
  redis.call('ZADD', b[1], now + ttl, rid)
  redis.call('HSET', b[2], rid, string.format('%d', cost))
  -- Gone with its last hold: a subject never admitted again (an end user
  -- of a replica that died) leaves nothing behind. Only ever pushed back:
  -- a replica with a shorter hold_ttl does not cut another's hold short.
  for _, name in ipairs({b[1], b[2]}) do
    local left = redis.call('PTTL', name)
    if left == -1 or (left >= 0 and left < ttl) then redis.call('PEXPIRE', name, ttl) end
  end
end
return out
"#;

const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local a, k = 1, 1
local function arg() local v = ARGV[a]; a = a + 1; return v end
local function key() local v = KEYS[k]; k = k + 1; return v end
local rid = arg()
local dedupe = arg()
local fresh = redis.call('SET', key(), '1', 'NX', 'EX', dedupe)
for j = 1, tonumber(arg()) do redis.call('ZREM', key(), rid) end
for j = 1, tonumber(arg()) do
  local resv, amounts = key(), key()
  redis.call('ZREM', resv, rid)
  redis.call('HDEL', amounts, rid)
end
local spends = {}
for j = 1, tonumber(arg()) do spends[j] = key() end
local log = key()
local index = key()
local day, cost, record, maxlen = arg(), arg(), arg(), arg()
local trates = {}
for j = 1, tonumber(arg()) do trates[j] = {key(), tonumber(arg()), tonumber(arg())} end
if not fresh then return 0 end
-- Sums saturate: a total past the largest integer stays there (a script
-- that failed half-way would keep its id and lose the rest).
local function add(hash, field)
  local r = redis.pcall('HINCRBY', hash, field, cost)
  if type(r) == 'table' and r.err then
    redis.pcall('HSET', hash, field, '9223372036854775807')
  end
end
-- The index is `<prefix>spend-subjects`; end users' hashes start with
-- `<prefix>spend:end_user:` (matched there only: a tag may contain it).
local end_users = string.sub(index, 1, #index - #'spend-subjects') .. 'spend:end_user:'
for _, s in ipairs(spends) do
  add(s, day)
  add(s, 'total')
  -- End users are client-chosen and never listed: kept out of the index
  -- the /spend listings read.
  if string.sub(s, 1, #end_users) ~= end_users then
    redis.call('SADD', index, s)
  end
end
redis.call('XADD', log, 'MAXLEN', '~', maxlen, '*', 'r', record)
for _, r in ipairs(trates) do
  local name, limit, extra = r[1], r[2], r[3]
  if extra > 0 then
    local interval = 60000 / limit
    local tat = tonumber(redis.call('GET', name) or '0')
    if tat < now then tat = now end
    -- Beyond a full minute, the rest is owed: later requests wait for it,
    -- up to an hour's worth.
    local new_tat = math.min(tat + extra * interval, now + 60000 + 3600000)
    redis.call('SET', name, string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
  end
end
return 1
"#;

const RELEASE: &str = r#"
local rid = ARGV[1]
local k = 1
for j = 1, tonumber(ARGV[2]) do redis.call('ZREM', KEYS[k], rid); k = k + 1 end
for j = 1, tonumber(ARGV[3]) do
  redis.call('ZREM', KEYS[k], rid)
  redis.call('HDEL', KEYS[k + 1], rid)
  k = k + 2
end
return 1
"#;

/// Pushes back the expiry of a running request's in-flight slots and budget
/// reservations (members it still holds only: `XX`), and of the keys that
/// hold them (the first `ARGV[3]` keys are sets; the rest, the reservations'
/// amounts); returns how many it still holds.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid, ttl = ARGV[1], tonumber(ARGV[2])
local sets = tonumber(ARGV[3])
local held = 0
for j = 1, sets do
  if redis.call('ZSCORE', KEYS[j], rid) then
    redis.call('ZADD', KEYS[j], 'XX', now + ttl, rid)
    held = held + 1
  end
end
if held > 0 then
  for j = 1, #KEYS do
    local left = redis.call('PTTL', KEYS[j])
    if left == -1 or (left >= 0 and left < ttl) then redis.call('PEXPIRE', KEYS[j], ttl) end
  end
end
return held
"#;

/// The set of every spend hash's name, kept by the settlement script.
const SUBJECTS: &str = "spend-subjects";

/// The Redis-backed store.
#[derive(Clone)]
pub struct RedisStore {
    con: ConnectionManager,
    /// For health checks on connections of their own, apart from the
    /// manager's, so a probe never disturbs requests' commands.
    client: Client,
    settings: RedisSettings,
    admit: Script,
    settle: Script,
    release: Script,
    renew: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.settings.prefix)
            .finish()
    }
}

/// The hash fields of the days of a budget period so far (`total` without one).
fn period_fields(period: Option<crate::period::BudgetPeriod>, today: Day) -> Vec<String> {
    match period {
        None => vec!["total".into()],
        Some(p) => (p.start(today)..=today).map(|d| d.to_string()).collect(),
    }
}

impl RedisStore {
    /// Connects and checks the server answers; a wrong URL or an unreachable
    /// server fails here, at start-up.
    pub async fn connect(settings: &RedisSettings) -> Result<RedisStore, PolicyError> {
        let client = Client::open(settings.url.as_str())
            .map_err(|e| PolicyError::Store(format!("policy.redis.url is not a valid Redis URL: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let con = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| PolicyError::Store(format!("policy.redis.url: {e}")))?;
        let store = RedisStore {
            con,
            client,
            settings: settings.clone(),
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            release: Script::new(RELEASE),
            renew: Script::new(RENEW),
        };
        let mut last = String::new();
        for _ in 0..3 {
            match store.query::<String>(redis::cmd("PING")).await {
                Ok(_) => return Ok(store),
                Err(StoreDown(reason)) => last = reason,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(PolicyError::Store(format!(
            "policy.redis.url: cannot reach Redis ({last})"
        )))
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.settings.prefix)
    }

    /// Whether Redis answers a `PING` within the command timeout, on a
    /// connection of its own.
    pub async fn ping(&self) -> Result<(), StoreDown> {
        let probe = async {
            let mut con = self.client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut con).await
        };
        match tokio::time::timeout(self.settings.timeout, probe).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StoreDown::from(e)),
            Err(_) => Err(StoreDown("Redis did not answer in time".into())),
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: Cmd) -> Result<T, StoreDown> {
        let mut con = self.con.clone();
        match tokio::time::timeout(self.settings.timeout, cmd.query_async::<T>(&mut con)).await {
            Ok(result) => result.map_err(StoreDown::from),
            Err(_) => Err(StoreDown("Redis did not answer in time".into())),
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, invocation: redis::ScriptInvocation<'_>) -> Result<T, StoreDown> {
        let mut con = self.con.clone();
        match tokio::time::timeout(self.settings.timeout * 2, invocation.invoke_async::<T>(&mut con)).await {
            Ok(result) => result.map_err(StoreDown::from),
            Err(_) => Err(StoreDown("Redis did not answer in time".into())),
        }
    }

    async fn hget_json<T: for<'de> Deserialize<'de>>(&self, hash: &str, field: &str) -> Result<Option<T>, StoreDown> {
        let raw: Option<String> = self
            .query(redis::cmd("HGET").arg(self.name(hash)).arg(field).clone())
            .await?;
        raw.map(|r| serde_json::from_str(&r).map_err(|e| unreadable(hash, &e)))
            .transpose()
    }

    async fn hvals_json<T: for<'de> Deserialize<'de>>(&self, hash: &str) -> Result<Vec<T>, StoreDown> {
        Ok(self.hvals_counted(hash).await?.0)
    }

    /// Every record of `hash` this version can read, and how many it
    /// cannot. A listing leaves out what it cannot read, and says so: one
    /// bad record must not stop every key or team from being listed (and a
    /// compromised key from being found and blocked); checks that must see
    /// every record refuse when the count is not 0.
    async fn hvals_counted<T: for<'de> Deserialize<'de>>(&self, hash: &str) -> Result<(Vec<T>, usize), StoreDown> {
        let raw: Vec<String> = self.query(redis::cmd("HVALS").arg(self.name(hash)).clone()).await?;
        let mut records = Vec::with_capacity(raw.len());
        let mut unreadable_count = 0;
        for r in &raw {
            match serde_json::from_str(r) {
                Ok(record) => records.push(record),
                Err(e) => {
                    unreadable_count += 1;
                    tracing::warn!(reason = %unreadable(hash, &e).0, "a record is left out of a listing");
                }
            }
        }
        Ok((records, unreadable_count))
    }

    /// How many records `hash` holds, readable or not.
    async fn hlen(&self, hash: &str) -> Result<u64, StoreDown> {
        self.query(redis::cmd("HLEN").arg(self.name(hash)).clone()).await
    }

    /// How many keys are stored, readable or not.
    pub async fn key_count(&self) -> Result<u64, StoreDown> {
        self.hlen("keys").await
    }

    async fn hdel(&self, hash: &str, field: &str) -> Result<bool, StoreDown> {
        let n: i64 = self
            .query(redis::cmd("HDEL").arg(self.name(hash)).arg(field).clone())
            .await?;
        Ok(n > 0)
    }

    /// A key by hash.
    pub async fn key(&self, token: &str) -> Result<Option<KeyRecord>, StoreDown> {
        self.hget_json("keys", token).await
    }

    /// A team by id.
    pub async fn team(&self, id: &str) -> Result<Option<TeamRecord>, StoreDown> {
        self.hget_json("teams", id).await
    }

    /// Sets `field` of `hash` to `value` only if the field is absent
    /// (`HSETNX`): `false` if it is there.
    async fn hset_if_absent<T: Serialize>(&self, hash: &str, field: &str, value: &T) -> Result<bool, StoreDown> {
        let json = serde_json::to_string(value).map_err(|e| StoreDown(e.to_string()))?;
        let n: i64 = self
            .query(redis::cmd("HSETNX").arg(self.name(hash)).arg(field).arg(json).clone())
            .await?;
        Ok(n == 1)
    }

    /// Stores `record` if no key has its token (`HSETNX`): `false` if one does.
    pub async fn insert_key(&self, record: &KeyRecord) -> Result<bool, StoreDown> {
        self.hset_if_absent("keys", &record.token, record).await
    }

    /// Replaces the key with `record`'s token only if it is still at
    /// revision `read`, in one step: a key deleted or regenerated meanwhile
    /// is not brought back, and a change made meanwhile is not overwritten.
    pub async fn replace_key(&self, read: u64, record: &KeyRecord) -> Result<KeyWrite, StoreDown> {
        self.write_key(&record.token, read, record).await
    }

    /// The revision-checked key write: `old`'s record, if at revision
    /// `read` and still the key `record.key_id` (not one deleted and made
    /// again with the same value), becomes `record` under `record.token`
    /// (the same token, or a new one that must be free).
    async fn write_key(&self, old: &str, read: u64, record: &KeyRecord) -> Result<KeyWrite, StoreDown> {
        let json = serde_json::to_string(record).map_err(|e| StoreDown(e.to_string()))?;
        let script = redis::Script::new(
            r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local ok, rec = pcall(cjson.decode, cur)
local rev, id = 0, nil
if ok and type(rec) == 'table' then
  if type(rec.revision) == 'number' then rev = rec.revision end
  id = rec.key_id
end
if rev ~= tonumber(ARGV[2]) or id ~= ARGV[5] then return -1 end
if ARGV[3] ~= ARGV[1] then
  if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 1 then return -2 end
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
end
return 1",
        );
        let mut invocation = script.key(self.name("keys"));
        invocation
            .arg(old)
            .arg(read)
            .arg(&record.token)
            .arg(json)
            .arg(&record.key_id);
        let n: i64 = self.run(invocation).await?;
        Ok(match n {
            1 => KeyWrite::Done,
            0 => KeyWrite::Missing,
            -1 => KeyWrite::Changed,
            _ => KeyWrite::Taken,
        })
    }

    /// Moves the key stored under `old`, if still at revision `read`, to
    /// `record` (a new token) in one step.
    pub async fn rename_key(&self, old: &str, read: u64, record: &KeyRecord) -> Result<KeyWrite, StoreDown> {
        self.write_key(old, read, record).await
    }

    /// Deletes a key.
    pub async fn delete_key(&self, token: &str) -> Result<bool, StoreDown> {
        self.hdel("keys", token).await
    }

    /// Stores a team if it is new (`replace: false`) or still there
    /// (`replace: true`), in one step: `false` when it is not.
    /// With `replace`, only over the revision the change was made from
    /// (`record.revision - 1`).
    pub async fn put_team(&self, record: &TeamRecord, replace: bool) -> Result<KeyWrite, StoreDown> {
        self.put_revisioned("teams", record, replace).await
    }

    /// Takes the lock `name` for `holder`, for `ttl_ms` at most (`SET NX
    /// PX`): `false` while another holds it.
    pub async fn lock(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreDown> {
        self.set_new(&format!("lock:{name}"), holder, ttl_ms).await
    }

    /// Sets `suffix` to `value` for `ttl_ms` if it is not set (`SET NX
    /// PX`): `true` when it was set.
    async fn set_new(&self, suffix: &str, value: &str, ttl_ms: u64) -> Result<bool, StoreDown> {
        let set: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(self.name(suffix))
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms.max(1))
                    .clone(),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Lets go of a lock taken with [`RedisStore::lock`], if `holder` still
    /// has it (it may have expired and been taken by another).
    pub async fn unlock(&self, name: &str, holder: &str) -> Result<(), StoreDown> {
        let script = redis::Script::new(
            r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
        );
        let mut invocation = script.key(self.name(&format!("lock:{name}")));
        invocation.arg(holder);
        let _: i64 = self.run(invocation).await?;
        Ok(())
    }

    /// Claims `name` for `ttl_ms` (`SET NX PX`): `true` for the first
    /// replica to claim it, so that an alert is sent once.
    pub async fn claim(&self, name: &str, ttl_ms: u64) -> Result<bool, StoreDown> {
        self.set_new(&format!("alerted:{name}"), "1", ttl_ms).await
    }

    /// Claims `name` for `ttl_ms` whether or not it is claimed now (a
    /// delivered alert's claim, whose lease may have run out).
    pub async fn hold_claim(&self, name: &str, ttl_ms: u64) -> Result<(), StoreDown> {
        let _: () = self
            .query(
                redis::cmd("SET")
                    .arg(self.name(&format!("alerted:{name}")))
                    .arg("1")
                    .arg("PX")
                    .arg(ttl_ms.max(1))
                    .clone(),
            )
            .await?;
        Ok(())
    }

    /// Makes a claim made with [`RedisStore::claim`] end in `ttl_ms`
    /// (sooner or later than it would).
    pub async fn set_claim_ttl(&self, name: &str, ttl_ms: u64) -> Result<(), StoreDown> {
        let _: i64 = self
            .query(
                redis::cmd("PEXPIRE")
                    .arg(self.name(&format!("alerted:{name}")))
                    .arg(ttl_ms.max(1))
                    .clone(),
            )
            .await?;
        Ok(())
    }

    /// Lets go of a claim made with [`RedisStore::claim`].
    pub async fn unclaim(&self, name: &str) -> Result<(), StoreDown> {
        let _: i64 = self
            .query(redis::cmd("DEL").arg(self.name(&format!("alerted:{name}"))).clone())
            .await?;
        Ok(())
    }

    /// A user's record.
    pub async fn user(&self, id: &str) -> Result<Option<UserRecord>, StoreDown> {
        self.hget_json("users", id).await
    }

    /// Stores a user as [`RedisStore::put_team`] stores a team.
    pub async fn put_user(&self, record: &UserRecord, replace: bool) -> Result<KeyWrite, StoreDown> {
        self.put_revisioned("users", record, replace).await
    }

    /// Deletes a user.
    pub async fn delete_user(&self, id: &str) -> Result<bool, StoreDown> {
        self.hdel("users", id).await
    }

    /// Every user.
    pub async fn users(&self) -> Result<Vec<UserRecord>, StoreDown> {
        self.hvals_json("users").await
    }

    /// An end user's record.
    pub async fn end_user(&self, id: &str) -> Result<Option<EndUserRecord>, StoreDown> {
        self.hget_json("end_users", id).await
    }

    /// Stores an end user's record as [`RedisStore::put_team`] stores a team.
    pub async fn put_end_user(&self, record: &EndUserRecord, replace: bool) -> Result<KeyWrite, StoreDown> {
        self.put_revisioned("end_users", record, replace).await
    }

    /// Deletes an end user's record.
    pub async fn delete_end_user(&self, id: &str) -> Result<bool, StoreDown> {
        self.hdel("end_users", id).await
    }

    /// Every end user's record.
    pub async fn end_users(&self) -> Result<Vec<EndUserRecord>, StoreDown> {
        self.hvals_json("end_users").await
    }

    /// The revision-checked write of a team or end user in `hash`.
    async fn put_revisioned<T: Serialize + Revisioned>(
        &self,
        hash: &str,
        record: &T,
        replace: bool,
    ) -> Result<KeyWrite, StoreDown> {
        if !replace {
            let inserted = self.hset_if_absent(hash, record.id(), record).await?;
            return Ok(if inserted { KeyWrite::Done } else { KeyWrite::Taken });
        }
        if record.revision() == 0 {
            return Ok(KeyWrite::Changed);
        }
        let json = serde_json::to_string(record).map_err(|e| StoreDown(e.to_string()))?;
        let script = redis::Script::new(
            r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local ok, rec = pcall(cjson.decode, cur)
local rev, created = 0, nil
if ok and type(rec) == 'table' then
  if type(rec.revision) == 'number' then rev = rec.revision end
  created = rec.created_at
end
if rev ~= tonumber(ARGV[2]) or created ~= tonumber(ARGV[4]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1",
        );
        let mut invocation = script.key(self.name(hash));
        invocation
            .arg(record.id())
            .arg(record.revision().saturating_sub(1))
            .arg(json)
            .arg(record.created_at());
        let n: i64 = self.run(invocation).await?;
        Ok(match n {
            1 => KeyWrite::Done,
            0 => KeyWrite::Missing,
            _ => KeyWrite::Changed,
        })
    }

    /// Deletes a team.
    pub async fn delete_team(&self, id: &str) -> Result<bool, StoreDown> {
        self.hdel("teams", id).await
    }

    /// Every key this version can read, and how many it cannot.
    pub async fn keys(&self) -> Result<(Vec<KeyRecord>, usize), StoreDown> {
        self.hvals_counted("keys").await
    }

    /// Every team.
    pub async fn teams(&self) -> Result<Vec<TeamRecord>, StoreDown> {
        self.hvals_json("teams").await
    }

    /// The admission script: all checks, then all holds, atomically.
    pub async fn admit(
        &self,
        checks: &Checks,
        id: &str,
        max_cost: Nanos,
    ) -> Result<Result<Vec<RateState>, Denied>, StoreDown> {
        let mut inv = self.admit.prepare_invoke();
        // Lua numbers are doubles: past 2^53 nano-dollars ($9M) a cost is no
        // longer exact, and near 2^63 its `%d` formatting is undefined. A
        // reservation that large is refused by any budget below it anyway.
        let max_cost = max_cost.clamp(0, 1 << 53);
        inv.arg(id).arg(max_cost).arg(self.settings.hold_ttl.as_millis() as u64);
        inv.arg(checks.parallel.len());
        for p in &checks.parallel {
            inv.key(self.name(&format!("par:{}", p.id))).arg(p.limit);
        }
        inv.arg(checks.rates.len());
        for r in &checks.rates {
            inv.key(self.name(&format!("rl:{}", r.id))).arg(r.limit).arg(r.cost);
        }
        inv.arg(checks.budgets.len());
        let today = day_of_ms(now_ms());
        for b in &checks.budgets {
            inv.key(self.name(&format!("spend:{}", b.subject)))
                .key(self.name(&format!("resv:{}", b.subject)))
                .key(self.name(&format!("resva:{}", b.subject)));
            let fields = period_fields(b.period, today);
            inv.arg(b.limit).arg(fields.len());
            for f in fields {
                inv.arg(f);
            }
        }
        let reply: Vec<String> = self.run(inv).await?;
        let index = |i: usize| -> usize { reply.get(i).and_then(|v| v.parse::<usize>().ok()).unwrap_or(1).max(1) - 1 };
        let number = |i: usize| -> i64 { reply.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(Ok(checks
                .rates
                .iter()
                .enumerate()
                .map(|(i, r)| rate_state(r.limit, u32::try_from(number(i + 1)).unwrap_or(0)))
                .collect())),
            Some("parallel") => {
                let Some(p) = checks.parallel.get(index(1)) else {
                    return Err(StoreDown(format!("admission reply names no such check: {reply:?}")));
                };
                Ok(Err(Denied::TooManyParallel {
                    scope: p.scope.clone(),
                    limit: p.limit,
                }))
            }
            Some("rate") => {
                let Some(r) = checks.rates.get(index(1)) else {
                    return Err(StoreDown(format!("admission reply names no such check: {reply:?}")));
                };
                let wait = number(2);
                Ok(Err(Denied::RateLimited {
                    scope: r.scope.clone(),
                    kind: r.kind,
                    limit: r.limit,
                    retry_after: (wait >= 0).then(|| Duration::from_millis(wait as u64)),
                }))
            }
            Some("budget") => {
                let Some(b) = checks.budgets.get(index(1)) else {
                    return Err(StoreDown(format!("admission reply names no such check: {reply:?}")));
                };
                Ok(Err(Denied::BudgetExceeded {
                    scope: b.scope.clone(),
                    spend: number(2),
                    reserved: number(3),
                    limit: b.limit,
                    requested: max_cost,
                }))
            }
            other => Err(StoreDown(format!("unexpected admission reply {other:?}"))),
        }
    }

    /// The settlement script: frees the holds, adds the spend and logs the
    /// record, once per request id.
    pub async fn settle(&self, checks: &Checks, _max_cost: Nanos, record: &SpendRecord) -> Result<(), StoreDown> {
        let json = serde_json::to_string(record).map_err(|e| StoreDown(e.to_string()))?;
        let mut inv = self.settle.prepare_invoke();
        inv.arg(&record.request_id);
        inv.arg(self.settings.settled_ttl.as_secs().max(1));
        inv.key(self.name(&format!("settled:{}", record.request_id)));
        inv.arg(checks.parallel.len());
        for p in &checks.parallel {
            inv.key(self.name(&format!("par:{}", p.id)));
        }
        inv.arg(checks.budgets.len());
        for b in &checks.budgets {
            inv.key(self.name(&format!("resv:{}", b.subject)))
                .key(self.name(&format!("resva:{}", b.subject)));
        }
        let subjects = record.subjects();
        inv.arg(subjects.len());
        for s in &subjects {
            inv.key(self.name(&format!("spend:{s}")));
        }
        inv.key(self.name("log"));
        inv.key(self.name(SUBJECTS));
        inv.arg(record.day())
            .arg(record.cost_nanos)
            .arg(json)
            .arg(self.settings.log_max_len);
        let used = record.usage.total();
        let tokens: Vec<_> = checks.token_rates().collect();
        inv.arg(tokens.len());
        for r in tokens {
            inv.key(self.name(&format!("rl:{}", r.id)))
                .arg(r.limit)
                .arg(used.saturating_sub(u64::from(r.cost)));
        }
        self.run::<i64>(inv).await.map(drop)
    }

    /// How long a hold lasts unless renewed.
    pub fn hold_ttl(&self) -> Duration {
        self.settings.hold_ttl
    }

    /// Keeps a running request's holds for another `hold_ttl`; returns how
    /// many it still has (none once they were freed or had expired).
    pub async fn renew(&self, checks: &Checks, id: &str) -> Result<u64, StoreDown> {
        let mut inv = self.renew.prepare_invoke();
        inv.arg(id)
            .arg(self.settings.hold_ttl.as_millis() as u64)
            .arg(checks.parallel.len() + checks.budgets.len());
        for p in &checks.parallel {
            inv.key(self.name(&format!("par:{}", p.id)));
        }
        for b in &checks.budgets {
            inv.key(self.name(&format!("resv:{}", b.subject)));
        }
        for b in &checks.budgets {
            inv.key(self.name(&format!("resva:{}", b.subject)));
        }
        self.run::<u64>(inv).await
    }

    /// Frees an unsettled request's holds.
    pub async fn release(&self, checks: &Checks, id: &str) -> Result<(), StoreDown> {
        let mut inv = self.release.prepare_invoke();
        inv.arg(id).arg(checks.parallel.len()).arg(checks.budgets.len());
        for p in &checks.parallel {
            inv.key(self.name(&format!("par:{}", p.id)));
        }
        for b in &checks.budgets {
            inv.key(self.name(&format!("resv:{}", b.subject)))
                .key(self.name(&format!("resva:{}", b.subject)));
        }
        self.run::<i64>(inv).await.map(drop)
    }

    /// One subject's spend.
    pub async fn spend(&self, subject: &str) -> Result<SubjectSpend, StoreDown> {
        let raw: HashMap<String, i64> = self
            .query(
                redis::cmd("HGETALL")
                    .arg(self.name(&format!("spend:{subject}")))
                    .clone(),
            )
            .await?;
        let mut out = SubjectSpend::default();
        let mut days = BTreeMap::new();
        for (field, value) in raw {
            if field == "total" {
                out.total = value;
            } else if let Ok(day) = field.parse::<Day>() {
                days.insert(day, value);
            }
        }
        out.days = days;
        Ok(out)
    }

    /// Every subject under `prefix` with its spend, from the index of spend
    /// hashes the settlement script keeps (`<prefix>spend-subjects`). A
    /// database written before that index existed is scanned once to fill it.
    pub async fn spend_by_prefix(&self, prefix: &str) -> Result<Vec<(String, SubjectSpend)>, StoreDown> {
        let strip = self.name("spend:");
        let wanted = self.name(&format!("spend:{prefix}"));
        let complete = self.name(&format!("{SUBJECTS}-complete"));
        let indexed: bool = self.query(redis::cmd("EXISTS").arg(&complete).clone()).await?;
        let names: Vec<String> = if indexed {
            self.query(redis::cmd("SMEMBERS").arg(self.name(SUBJECTS)).clone())
                .await?
        } else {
            // End users' hashes stay out, as the settlement keeps them.
            let end_users = self.name("spend:end_user:");
            let mut names = self.scan_spend_hashes().await?;
            names.retain(|n| !n.starts_with(&end_users));
            for batch in names.chunks(500) {
                let _: i64 = self
                    .query(redis::cmd("SADD").arg(self.name(SUBJECTS)).arg(batch).clone())
                    .await?;
            }
            let _: () = self.query(redis::cmd("SET").arg(&complete).arg(1).clone()).await?;
            names
        };
        let mut out = Vec::new();
        for name in names.iter().filter(|n| n.starts_with(&wanted)) {
            let Some(subject) = name.strip_prefix(&strip) else {
                continue;
            };
            let spend = self.spend(subject).await?;
            if let Some(short) = subject.strip_prefix(prefix) {
                out.push((short.to_owned(), spend));
            }
        }
        Ok(out)
    }

    /// Every spend hash, by scanning the whole database.
    async fn scan_spend_hashes(&self) -> Result<Vec<String>, StoreDown> {
        let pattern = self.name("spend:*");
        let mut cursor = 0u64;
        let mut names = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(500)
                        .clone(),
                )
                .await?;
            names.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(names)
    }

    /// Spend records matching `filter`, newest first (reads the log stream
    /// from its end in pages).
    pub async fn logs(&self, filter: &LogFilter) -> Result<Vec<SpendRecord>, StoreDown> {
        let mut out = Vec::new();
        let mut end = "+".to_owned();
        let mut scanned = 0usize;
        while out.len() < filter.limit && scanned < 1_000_000 {
            let page: Vec<(String, Vec<String>)> = self
                .query(
                    redis::cmd("XREVRANGE")
                        .arg(self.name("log"))
                        .arg(&end)
                        .arg("-")
                        .arg("COUNT")
                        .arg(1000)
                        .clone(),
                )
                .await?;
            if page.is_empty() {
                break;
            }
            scanned += page.len();
            for (id, fields) in &page {
                if end != "+" && *id == end {
                    continue;
                }
                if let Some(record) = fields.get(1).and_then(|r| serde_json::from_str::<SpendRecord>(r).ok())
                    && filter.matches(&record)
                    && out.len() < filter.limit
                {
                    out.push(record);
                }
            }
            let Some((last, _)) = page.last() else { break };
            if page.len() < 1000 {
                break;
            }
            end = last.clone();
        }
        Ok(out)
    }
}

/// A record that is there but does not parse (written by a newer version,
/// or by hand) is not taken for an absent one when it is looked up: a
/// user's block, a key's limits or an end user's budget would silently stop
/// applying. The store is treated as unavailable for it (a fail-open policy
/// uses the copy it saw before). The parser's position, never the value,
/// is said.
fn unreadable(hash: &str, e: &serde_json::Error) -> StoreDown {
    StoreDown(format!(
        "a record in the `{hash}` hash cannot be read by this version ({:?} error at line {}, column {})",
        e.classify(),
        e.line(),
        e.column()
    ))
}
