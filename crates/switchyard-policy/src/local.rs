//! The in-process store: keys, teams, limits and the spend ledger in memory,
//! with keys and spend kept in two append-only files when a data directory
//! is set (`keys.jsonl`, `spend.jsonl`). Rate limits use `governor` (GCRA).

use std::collections::{HashMap, VecDeque};
use std::num::{NonZeroU32, NonZeroU64};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos as Tat;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::checks::{Checks, RateState};
use crate::error::{Denied, PolicyError};
use crate::journal::{FsyncPolicy, Journal};
use crate::key::{EndUserRecord, KeyRecord, KeyWrite, TeamRecord, UserRecord, refuse_write};
use crate::money::Nanos;
use crate::period::{Day, day_of_ms, now_ms};
use crate::spend::{Ledger, LogFilter, SpendRecord, SubjectSpend};
use crate::spend_log::{SpendLog, SpendLogLimits};

type Limiter = RateLimiter<NotKeyed, SharedTat, DefaultClock, StateInformationMiddleware>;

/// A GCRA limiter's state (its theoretical arrival time), shared between the
/// limiter and the store, so that an admission refused by a later limit can
/// give back what it took from the earlier ones: a request is admitted by
/// every per-minute limit or charged by none.
#[derive(Debug, Default, Clone)]
struct SharedTat(Arc<AtomicU64>);

impl SharedTat {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Puts back `before` if the state is still `after` (what this
    /// admission left).
    fn restore(&self, after: u64, before: u64) {
        let _ = self
            .0
            .compare_exchange(after, before, Ordering::AcqRel, Ordering::Relaxed);
    }
}

impl StateStore for SharedTat {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Tat>) -> Result<(T, Tat), E>,
    {
        let mut prev = self.0.load(Ordering::Acquire);
        loop {
            let (result, next) = f(NonZeroU64::new(prev).map(|n| Tat::from(n.get())))?;
            match self
                .0
                .compare_exchange_weak(prev, next.as_u64(), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(result),
                Err(seen) => prev = seen,
            }
        }
    }
}

/// One per-minute limit: the limiter and its shared state.
#[derive(Debug)]
struct Minute {
    limiter: Limiter,
    tat: SharedTat,
    /// The limiter's clock, and its reading just before the limiter was
    /// made, whose state counts time from then.
    clock: DefaultClock,
    created: <DefaultClock as Clock>::Instant,
}

impl Minute {
    /// A limiter at `limit`, holding what `before` (the same counter at
    /// another limit) had taken: the part of the minute it had used, as
    /// the Redis store's limiter keeps it. A new limit does not start with
    /// a full allowance.
    fn new(limit: u32, before: Option<&Minute>) -> Self {
        let burst = NonZeroU32::new(limit).unwrap_or(NonZeroU32::MIN);
        let tat = SharedTat::default();
        let clock = DefaultClock::default();
        let created = clock.now();
        let limiter = Limiter::new(Quota::per_minute(burst), tat.clone(), clock.clone());
        if let Some(owed) = before.map(Minute::owed).filter(|&n| n > 0) {
            tat.0.store(owed, Ordering::Release);
        }
        Self {
            limiter,
            tat,
            clock,
            created,
        }
    }

    /// How far ahead of now its theoretical arrival time is, in
    /// nanoseconds: 0 when it has nothing taken.
    fn owed(&self) -> u64 {
        use governor::clock::Reference as _;
        let elapsed = self.clock.now().duration_since(self.created).as_u64();
        self.tat.get().saturating_sub(elapsed)
    }
}

/// Spend records kept for `/spend/logs` when there is no data directory (the
/// ledger of totals keeps everything; only the itemised log is bounded).
const MEMORY_LOG_LIMIT: usize = 10_000;

/// One line of `keys.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum KeyOp {
    PutKey {
        record: KeyRecord,
    },
    DeleteKey {
        token: String,
    },
    /// A key given a new value (regenerated): one line, so that a crash or
    /// a failed write leaves the old key or the new, never both. Named as a
    /// deletion: a line that cannot be read (by a build before this op, or
    /// damaged) stops the store rather than bringing the old key back.
    #[serde(rename = "delete_and_put_key")]
    RenameKey {
        old: String,
        record: KeyRecord,
    },
    PutTeam {
        record: TeamRecord,
    },
    DeleteTeam {
        team_id: String,
    },
    PutEndUser {
        record: EndUserRecord,
    },
    DeleteEndUser {
        user_id: String,
    },
    PutUser {
        record: UserRecord,
    },
    DeleteUser {
        user_id: String,
    },
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<String, KeyRecord>,
    teams: HashMap<String, TeamRecord>,
    end_users: HashMap<String, EndUserRecord>,
    users: HashMap<String, UserRecord>,
    ledger: Ledger,
    reserved: HashMap<String, Nanos>,
    parallel: HashMap<String, u32>,
    recent: VecDeque<SpendRecord>,
    /// Tokens a token limit is still owed: usage beyond a request's estimate
    /// that did not fit in the limiter when it was charged. It is paid off
    /// by the passing time before the limit admits anything else.
    debt: HashMap<String, Debt>,
}

/// What a token limit was owed when its bucket was last empty.
#[derive(Debug, Clone, Copy)]
struct Debt {
    owed: u64,
    since: std::time::Instant,
}

impl Debt {
    /// Brings the debt up to now against `limiter` (of `limit` a minute):
    /// the cells the limiter refilled since go to the debt first. Returns
    /// what is still owed; the limiter then holds only what came after.
    fn settle_time(&mut self, limiter: &Limiter, limit: u32) -> u64 {
        self.settle_at(limiter, limit, std::time::Instant::now())
    }

    /// [`Debt::settle_time`] as of `now`.
    fn settle_at(&mut self, limiter: &Limiter, limit: u32, now: std::time::Instant) -> u64 {
        const MINUTE_NS: u128 = 60_000_000_000;
        let limit_cells = u128::from(limit.max(1));
        let elapsed = now.saturating_duration_since(self.since).as_nanos();
        let whole = elapsed.saturating_mul(limit_cells) / MINUTE_NS;
        // Only the time the whole cells took is used up: the rest of a cell
        // counts at the next call, however often calls come.
        let used = std::time::Duration::from_nanos(u64::try_from(whole * MINUTE_NS / limit_cells).unwrap_or(u64::MAX));
        let cells = u64::try_from(whole).unwrap_or(u64::MAX);
        let (left, drain) = pay_over_time(self.owed, cells, limit);
        let mut drain = drain;
        while drain > 0 {
            let step = u32::try_from(drain).unwrap_or(u32::MAX);
            let taken = take_what_fits(limiter, step);
            if taken == 0 {
                break;
            }
            drain -= u64::from(taken);
        }
        self.owed = left;
        self.since += used;
        left
    }
}

/// Where a debt of `owed` cells stands after `elapsed_cells` cells' worth of
/// time on a limit of `limit`: what is still owed, and how many of the
/// cells the limiter refilled meanwhile (it holds at most `limit`) belong to
/// the debt and must be taken from it.
fn pay_over_time(owed: u64, elapsed_cells: u64, limit: u32) -> (u64, u64) {
    let limit = u64::from(limit);
    let refilled = elapsed_cells.min(limit);
    if elapsed_cells < owed {
        (owed - elapsed_cells, refilled)
    } else {
        let kept = (elapsed_cells - owed).min(limit);
        (0, refilled - kept)
    }
}

/// The in-process store.
#[derive(Debug)]
pub struct LocalStore {
    state: Mutex<State>,
    /// Held by key writes from their check to their update, so each is one
    /// step among writers, while request-path lookups take `state` only
    /// briefly (never across a journal write).
    key_writes: Mutex<()>,
    limiters: Mutex<HashMap<String, (u32, Arc<Minute>)>>,
    keys_log: Option<Journal>,
    spend_log: Option<SpendLog>,
    clock: DefaultClock,
    /// `policy.lock` in the data directory, held (`flock`) while the store
    /// is open: one process per directory.
    _lock: Option<std::fs::File>,
}

impl LocalStore {
    /// A store in memory only.
    pub fn memory() -> Self {
        Self {
            state: Mutex::new(State::default()),
            key_writes: Mutex::new(()),
            limiters: Mutex::new(HashMap::new()),
            keys_log: None,
            spend_log: None,
            clock: DefaultClock::default(),
            _lock: None,
        }
    }

    /// A store whose keys and spend live in `dir` (created if missing):
    /// both logs are replayed, and the keys log is compacted.
    pub fn open(dir: &Path, fsync: FsyncPolicy) -> Result<Self, PolicyError> {
        Self::open_with(dir, fsync, SpendLogLimits::default())
    }

    /// [`LocalStore::open`] with the spend log cut and kept as `limits` say.
    pub fn open_with(dir: &Path, fsync: FsyncPolicy, limits: SpendLogLimits) -> Result<Self, PolicyError> {
        std::fs::create_dir_all(dir)?;
        let lock = crate::journal::lock_dir(dir, "policy.lock")?;
        let (keys_log, key_lines) = Journal::open(&dir.join("keys.jsonl"), fsync)?;
        let spend = SpendLog::open(dir, fsync, limits)?;
        let mut state = State {
            ledger: spend.ledger,
            ..State::default()
        };
        let mut unreadable = Vec::new();
        for (i, line) in key_lines.iter().enumerate() {
            match serde_json::from_str::<KeyOp>(line) {
                Ok(KeyOp::PutKey { record }) => drop(state.keys.insert(record.token.clone(), record)),
                Ok(KeyOp::DeleteKey { token }) => drop(state.keys.remove(&token)),
                Ok(KeyOp::RenameKey { old, record }) => {
                    state.keys.remove(&old);
                    state.keys.insert(record.token.clone(), record);
                }
                Ok(KeyOp::PutTeam { record }) => drop(state.teams.insert(record.team_id.clone(), record)),
                Ok(KeyOp::DeleteTeam { team_id }) => drop(state.teams.remove(&team_id)),
                Ok(KeyOp::PutEndUser { record }) => drop(state.end_users.insert(record.user_id.clone(), record)),
                Ok(KeyOp::DeleteEndUser { user_id }) => drop(state.end_users.remove(&user_id)),
                Ok(KeyOp::PutUser { record }) => drop(state.users.insert(record.user_id.clone(), record)),
                Ok(KeyOp::DeleteUser { user_id }) => drop(state.users.remove(&user_id)),
                Err(e) => {
                    // A deletion that is skipped would bring back what it
                    // deleted (a revoked key): the store does not open on it.
                    let raw = serde_json::from_str::<serde_json::Value>(line).ok();
                    let op = raw
                        .as_ref()
                        .and_then(|v| v.get("op").and_then(serde_json::Value::as_str).map(str::to_owned));
                    // A change to a record kept from an earlier line (a key
                    // blocked, a budget lowered) that is skipped would leave
                    // the earlier one in force: that stops the store too.
                    let id = |field: &str| {
                        raw.as_ref()
                            .and_then(|v| v.pointer(&format!("/record/{field}")))
                            .and_then(serde_json::Value::as_str)
                    };
                    // A user's or end user's record missing is not refused
                    // (its budget, limits or block would just not apply):
                    // any of theirs stops the store too.
                    let changes_a_record = match op.as_deref() {
                        Some("put_key") => id("token").is_some_and(|t| state.keys.contains_key(t)),
                        Some("put_team") => id("team_id").is_some_and(|t| state.teams.contains_key(t)),
                        Some("put_user" | "put_end_user") => id("user_id").is_some(),
                        _ => false,
                    };
                    match op {
                        Some(op) if !op.starts_with("delete") && !changes_a_record => {
                            tracing::warn!(line = i + 1, error = %e, "an unreadable line of keys.jsonl is moved to keys.rejected.jsonl");
                            unreadable.push(line.as_str());
                        }
                        _ => {
                            return Err(PolicyError::Store(format!(
                                "{}: line {} cannot be read ({e}) and may delete or change a key, team or user; the \
                                 store is not opened, so that nothing deleted or changed comes back: repair or \
                                 remove the line",
                                dir.join("keys.jsonl").display(),
                                i + 1
                            )));
                        }
                    }
                }
            }
        }
        // Kept aside before the log is compacted without them.
        if !unreadable.is_empty() {
            crate::journal::set_aside(&dir.join("keys.rejected.jsonl"), &unreadable)?;
        }
        let records = spend.records;
        let mut snapshot: Vec<KeyOp> = state
            .teams
            .values()
            .map(|t| KeyOp::PutTeam { record: t.clone() })
            .collect();
        snapshot.extend(state.keys.values().map(|k| KeyOp::PutKey { record: k.clone() }));
        snapshot.extend(state.users.values().map(|u| KeyOp::PutUser { record: u.clone() }));
        snapshot.extend(
            state
                .end_users
                .values()
                .map(|u| KeyOp::PutEndUser { record: u.clone() }),
        );
        keys_log.rewrite(&snapshot)?;
        tracing::info!(
            dir = %dir.display(),
            keys = state.keys.len(),
            teams = state.teams.len(),
            end_users = state.end_users.len(),
            users = state.users.len(),
            spend_records = records,
            "policy store opened"
        );
        Ok(Self {
            state: Mutex::new(state),
            key_writes: Mutex::new(()),
            limiters: Mutex::new(HashMap::new()),
            keys_log: Some(keys_log),
            spend_log: Some(spend.log),
            clock: DefaultClock::default(),
            _lock: Some(lock),
        })
    }

    /// Flushes the logs to the disk if anything was written since the last flush.
    pub fn sync(&self) {
        let spend = self.spend_log.as_ref().map(SpendLog::sync_if_dirty);
        let keys = self.keys_log.as_ref().map(Journal::sync_if_dirty);
        for result in [spend, keys].into_iter().flatten() {
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot flush the policy store to disk");
            }
        }
    }

    fn log_key_op(&self, op: &KeyOp) -> Result<(), PolicyError> {
        if let Some(log) = &self.keys_log {
            log.append(op)?;
        }
        Ok(())
    }

    /// A key by hash.
    pub fn key(&self, token: &str) -> Option<KeyRecord> {
        self.state.lock().keys.get(token).cloned()
    }

    /// A team by id.
    pub fn team(&self, id: &str) -> Option<TeamRecord> {
        self.state.lock().teams.get(id).cloned()
    }

    /// Stores `record` if no key has its token (`true`), or nothing (`false`).
    pub fn insert_key(&self, record: KeyRecord) -> Result<bool, PolicyError> {
        let _writing = self.key_writes.lock();
        if self.state.lock().keys.contains_key(&record.token) {
            return Ok(false);
        }
        self.log_key_op(&KeyOp::PutKey { record: record.clone() })?;
        self.state.lock().keys.insert(record.token.clone(), record);
        Ok(true)
    }

    /// Replaces the key with `record`'s token if it is still at revision
    /// `read` (the one the change was made from); a key deleted or
    /// regenerated meanwhile is not brought back.
    pub fn replace_key(&self, read: u64, record: KeyRecord) -> Result<KeyWrite, PolicyError> {
        let _writing = self.key_writes.lock();
        match self.state.lock().keys.get(&record.token) {
            None => return Ok(KeyWrite::Missing),
            // Another key under the same value (deleted and made again) is
            // not the one that was read, whatever its revision.
            Some(current) if current.revision != read || current.key_id != record.key_id => {
                return Ok(KeyWrite::Changed);
            }
            Some(_) => {}
        }
        self.log_key_op(&KeyOp::PutKey { record: record.clone() })?;
        self.state.lock().keys.insert(record.token.clone(), record);
        Ok(KeyWrite::Done)
    }

    /// Moves the key stored under `old`, if still at revision `read`, to
    /// `record` (a new token), in one step among key writes, journalled as
    /// one line: a crash or a failed write leaves the old key alone, never
    /// two keys with one id.
    pub fn rename_key(&self, old: &str, read: u64, record: KeyRecord) -> Result<KeyWrite, PolicyError> {
        let _writing = self.key_writes.lock();
        {
            let state = self.state.lock();
            match state.keys.get(old) {
                None => return Ok(KeyWrite::Missing),
                Some(current) if current.revision != read || current.key_id != record.key_id => {
                    return Ok(KeyWrite::Changed);
                }
                Some(_) => {}
            }
            if state.keys.contains_key(&record.token) {
                return Ok(KeyWrite::Taken);
            }
        }
        self.log_key_op(&KeyOp::RenameKey {
            old: old.to_owned(),
            record: record.clone(),
        })?;
        let mut state = self.state.lock();
        state.keys.remove(old);
        state.keys.insert(record.token.clone(), record);
        Ok(KeyWrite::Done)
    }

    /// Deletes a key; whether it existed (of two deletes, one sees `true`).
    pub fn delete_key(&self, token: &str) -> Result<bool, PolicyError> {
        let _writing = self.key_writes.lock();
        if !self.state.lock().keys.contains_key(token) {
            return Ok(false);
        }
        self.log_key_op(&KeyOp::DeleteKey {
            token: token.to_owned(),
        })?;
        let removed = self.state.lock().keys.remove(token);
        // Its per-minute counters go with it (keys come and go).
        if let Some(record) = &removed {
            self.forget_counters(&format!("key:{}", record.key_id));
        }
        Ok(removed.is_some())
    }

    /// Drops the per-minute counters and token debts of `subject`
    /// (`key:<key_id>`): its own (`rpm:key:<id>`) and its per-model ones
    /// (`rpm:key:<id>:model:<m>`).
    fn forget_counters(&self, subject: &str) {
        let of_subject = |id: &str| {
            id.split_once(':').is_some_and(|(_, rest)| {
                rest.strip_prefix(subject)
                    .is_some_and(|tail| tail.is_empty() || tail.starts_with(':'))
            })
        };
        let mut state = self.state.lock();
        self.limiters.lock().retain(|id, _| !of_subject(id));
        state.debt.retain(|id, _| !of_subject(id));
    }

    /// Stores a team if it is new (`replace: false`) or still there
    /// (`replace: true`), in one step among writes: `false` when it is not.
    /// With `replace`, only over the revision the change was made from
    /// (`record.revision - 1`).
    pub fn put_team(&self, record: TeamRecord, replace: bool) -> Result<KeyWrite, PolicyError> {
        let _writing = self.key_writes.lock();
        if let Some(refused) = refuse_write(self.state.lock().teams.get(&record.team_id), &record, replace) {
            return Ok(refused);
        }
        self.log_key_op(&KeyOp::PutTeam { record: record.clone() })?;
        self.state.lock().teams.insert(record.team_id.clone(), record);
        Ok(KeyWrite::Done)
    }

    /// Deletes a team; whether it existed.
    pub fn delete_team(&self, id: &str) -> Result<bool, PolicyError> {
        let _writing = self.key_writes.lock();
        if !self.state.lock().teams.contains_key(id) {
            return Ok(false);
        }
        self.log_key_op(&KeyOp::DeleteTeam { team_id: id.to_owned() })?;
        Ok(self.state.lock().teams.remove(id).is_some())
    }

    /// A user's record.
    pub fn user(&self, id: &str) -> Option<UserRecord> {
        self.state.lock().users.get(id).cloned()
    }

    /// Stores a user as [`LocalStore::put_team`] stores a team.
    pub fn put_user(&self, record: UserRecord, replace: bool) -> Result<KeyWrite, PolicyError> {
        let _writing = self.key_writes.lock();
        if let Some(refused) = refuse_write(self.state.lock().users.get(&record.user_id), &record, replace) {
            return Ok(refused);
        }
        self.log_key_op(&KeyOp::PutUser { record: record.clone() })?;
        self.state.lock().users.insert(record.user_id.clone(), record);
        Ok(KeyWrite::Done)
    }

    /// Deletes a user; whether it existed.
    pub fn delete_user(&self, id: &str) -> Result<bool, PolicyError> {
        let _writing = self.key_writes.lock();
        if !self.state.lock().users.contains_key(id) {
            return Ok(false);
        }
        self.log_key_op(&KeyOp::DeleteUser { user_id: id.to_owned() })?;
        Ok(self.state.lock().users.remove(id).is_some())
    }

    /// Every user.
    pub fn users(&self) -> Vec<UserRecord> {
        self.state.lock().users.values().cloned().collect()
    }

    /// An end user's record.
    pub fn end_user(&self, id: &str) -> Option<EndUserRecord> {
        self.state.lock().end_users.get(id).cloned()
    }

    /// Stores an end user's record if it is new (`replace: false`) or
    /// still there at the revision the change was made from (`replace: true`).
    pub fn put_end_user(&self, record: EndUserRecord, replace: bool) -> Result<KeyWrite, PolicyError> {
        let _writing = self.key_writes.lock();
        if let Some(refused) = refuse_write(self.state.lock().end_users.get(&record.user_id), &record, replace) {
            return Ok(refused);
        }
        self.log_key_op(&KeyOp::PutEndUser { record: record.clone() })?;
        self.state.lock().end_users.insert(record.user_id.clone(), record);
        Ok(KeyWrite::Done)
    }

    /// Deletes an end user's record; whether it existed.
    pub fn delete_end_user(&self, id: &str) -> Result<bool, PolicyError> {
        let _writing = self.key_writes.lock();
        if !self.state.lock().end_users.contains_key(id) {
            return Ok(false);
        }
        self.log_key_op(&KeyOp::DeleteEndUser { user_id: id.to_owned() })?;
        Ok(self.state.lock().end_users.remove(id).is_some())
    }

    /// Every end user's record.
    pub fn end_users(&self) -> Vec<EndUserRecord> {
        self.state.lock().end_users.values().cloned().collect()
    }

    /// Every key.
    pub fn keys(&self) -> Vec<KeyRecord> {
        self.state.lock().keys.values().cloned().collect()
    }

    /// Every team.
    pub fn teams(&self) -> Vec<TeamRecord> {
        self.state.lock().teams.values().cloned().collect()
    }

    /// One ledger subject's spend.
    pub fn spend(&self, subject: &str) -> SubjectSpend {
        self.state.lock().ledger.get(subject).cloned().unwrap_or_default()
    }

    /// Every subject under `prefix` with its spend.
    pub fn spend_by_prefix(&self, prefix: &str) -> Vec<(String, SubjectSpend)> {
        self.state
            .lock()
            .ledger
            .by_prefix(prefix)
            .map(|(name, spend)| (name.to_owned(), spend.clone()))
            .collect()
    }

    /// Spend records matching `filter`, newest first.
    pub fn logs(&self, filter: &LogFilter) -> Result<Vec<SpendRecord>, PolicyError> {
        let mut out: Vec<SpendRecord> = match &self.spend_log {
            Some(log) => log.logs(filter)?,
            None => self
                .state
                .lock()
                .recent
                .iter()
                .rev()
                .filter(|r| filter.matches(r))
                .take(filter.limit)
                .cloned()
                .collect(),
        };
        out.truncate(filter.limit);
        Ok(out)
    }

    /// The limiter counting `id` now, with its limit; one at `limit` when
    /// there is none.
    fn limiter_in_force(&self, id: &str, limit: u32) -> (u32, Arc<Minute>) {
        if let Some((l, limiter)) = self.limiters.lock().get(id) {
            return (*l, limiter.clone());
        }
        (limit, self.limiter(id, limit))
    }

    fn limiter(&self, id: &str, limit: u32) -> Arc<Minute> {
        let mut limiters = self.limiters.lock();
        if let Some((l, limiter)) = limiters.get(id)
            && *l == limit
        {
            return limiter.clone();
        }
        let minute = Arc::new(Minute::new(limit, limiters.get(id).map(|(_, before)| &**before)));
        limiters.insert(id.to_owned(), (limit, minute.clone()));
        minute
    }

    /// Checks and takes every limit of a request, all under one lock: parallel
    /// caps, budgets (spend + reservations + this request's maximum cost), then
    /// the per-minute limits. On success the parallel slots and the
    /// reservation are held until [`LocalStore::settle`] or [`LocalStore::release`].
    pub fn admit(&self, checks: &Checks, max_cost: Nanos) -> Result<Vec<RateState>, Denied> {
        let mut state = self.state.lock();
        for p in &checks.parallel {
            if state.parallel.get(&p.id).copied().unwrap_or(0) >= p.limit {
                return Err(Denied::TooManyParallel {
                    scope: p.scope.clone(),
                    limit: p.limit,
                });
            }
        }
        let today = day_of_ms(now_ms());
        for b in &checks.budgets {
            let spend = state.ledger.get(&b.subject).map_or(0, |s| s.in_period(b.period, today));
            let reserved = state.reserved.get(&b.subject).copied().unwrap_or(0);
            // Saturating: a huge `max_cost` must not wrap around and pass.
            if spend.saturating_add(reserved).saturating_add(max_cost) > b.limit {
                return Err(Denied::BudgetExceeded {
                    scope: b.scope.clone(),
                    spend,
                    reserved,
                    limit: b.limit,
                    requested: max_cost,
                });
            }
        }
        let states = self.take_rates(&mut state, checks)?;
        for p in &checks.parallel {
            *state.parallel.entry(p.id.clone()).or_default() += 1;
        }
        for b in &checks.budgets {
            let reserved = state.reserved.entry(b.subject.clone()).or_default();
            *reserved = reserved.saturating_add(max_cost);
        }
        Ok(states)
    }

    /// Takes every per-minute limit of `checks`, or none: when one refuses,
    /// what the earlier ones took is given back (the store's lock is held, so
    /// no other admission saw it taken).
    fn take_rates(&self, state: &mut State, checks: &Checks) -> Result<Vec<RateState>, Denied> {
        let mut states = Vec::with_capacity(checks.rates.len());
        let mut taken: Vec<(Arc<Minute>, u64, u64)> = Vec::with_capacity(checks.rates.len());
        let give_back = |taken: &[(Arc<Minute>, u64, u64)]| {
            for (minute, before, after) in taken.iter().rev() {
                minute.tat.restore(*after, *before);
            }
        };
        for r in &checks.rates {
            let minute = self.limiter(&r.id, r.limit);
            if let Some(debt) = state.debt.get_mut(&r.id) {
                let owed = debt.settle_time(&minute.limiter, r.limit);
                if owed > 0 {
                    let cells = owed.saturating_add(u64::from(r.cost));
                    give_back(&taken);
                    return Err(Denied::RateLimited {
                        scope: r.scope.clone(),
                        kind: r.kind,
                        limit: r.limit,
                        retry_after: Some(Duration::from_millis(
                            cells.saturating_mul(60_000).div_ceil(u64::from(r.limit.max(1))),
                        )),
                    });
                }
                state.debt.remove(&r.id);
            }
            let n = NonZeroU32::new(r.cost).unwrap_or(NonZeroU32::MIN);
            let before = minute.tat.get();
            match minute.limiter.check_n(n) {
                Ok(Ok(snapshot)) => {
                    taken.push((minute.clone(), before, minute.tat.get()));
                    let remaining = snapshot.remaining_burst_capacity();
                    states.push(rate_state(r.limit, remaining));
                }
                Ok(Err(not_until)) => {
                    give_back(&taken);
                    return Err(Denied::RateLimited {
                        scope: r.scope.clone(),
                        kind: r.kind,
                        limit: r.limit,
                        retry_after: Some(not_until.wait_time_from(self.clock.now())),
                    });
                }
                Err(_) => {
                    give_back(&taken);
                    return Err(Denied::RateLimited {
                        scope: r.scope.clone(),
                        kind: r.kind,
                        limit: r.limit,
                        retry_after: None,
                    });
                }
            }
        }
        Ok(states)
    }

    /// Gives back what [`LocalStore::admit`] held, without a charge.
    pub fn release(&self, checks: &Checks, max_cost: Nanos) {
        let mut state = self.state.lock();
        release_locked(&mut state, checks, max_cost);
    }

    /// Records the spend of an admitted request and gives back what it held;
    /// token limits are charged the tokens used beyond the estimate.
    ///
    /// The holds are given back and the spend counted even when the log
    /// cannot be written (the error is returned after): a full disk must not
    /// keep a key's in-flight slots and reservations taken.
    pub fn settle(&self, checks: &Checks, max_cost: Nanos, record: &SpendRecord) -> Result<(), PolicyError> {
        let logged = match &self.spend_log {
            Some(log) => log.append(record),
            None => Ok(()),
        };
        {
            let mut state = self.state.lock();
            release_locked(&mut state, checks, max_cost);
            state.ledger.add(record);
            if self.spend_log.is_none() {
                if state.recent.len() >= MEMORY_LOG_LIMIT {
                    state.recent.pop_front();
                }
                state.recent.push_back(record.clone());
            }
            // In the same step: an admission in between would see the slot
            // free and the minute without the tokens used past the estimate.
            self.charge_tokens_locked(&mut state, checks, record);
        }
        logged.map_err(PolicyError::from)
    }

    /// Charges token limits the tokens `record` used beyond the estimate
    /// taken at admission: what the minute still holds, the rest as a debt
    /// later admissions wait out. A limit changed since the admission is
    /// charged as it is now, not rebuilt at the old value.
    pub fn charge_tokens(&self, checks: &Checks, record: &SpendRecord) {
        let mut state = self.state.lock();
        self.charge_tokens_locked(&mut state, checks, record);
    }

    /// [`LocalStore::charge_tokens`] under the state's lock, which it holds
    /// while it finds each limiter (as an admission does), so that one
    /// replaced meanwhile is not charged.
    fn charge_tokens_locked(&self, state: &mut State, checks: &Checks, record: &SpendRecord) {
        let used = u32::try_from(record.usage.total()).unwrap_or(u32::MAX);
        for r in checks.token_rates() {
            if let Some(extra) = used.checked_sub(r.cost) {
                let (limit, limiter) = self.limiter_in_force(&r.id, r.limit);
                let before = match state.debt.get_mut(&r.id) {
                    Some(debt) => debt.settle_time(&limiter.limiter, limit),
                    None => 0,
                };
                let taken = if before > 0 {
                    0
                } else {
                    take_what_fits(&limiter.limiter, extra)
                };
                let owed = before.saturating_add(u64::from(extra - taken)).min(max_debt(limit));
                match state.debt.get_mut(&r.id) {
                    _ if owed == 0 => {
                        state.debt.remove(&r.id);
                    }
                    // Brought up to date above: only the amount changes.
                    Some(debt) => debt.owed = owed,
                    None => {
                        state.debt.insert(
                            r.id.clone(),
                            Debt {
                                owed,
                                since: std::time::Instant::now(),
                            },
                        );
                    }
                }
            }
        }
    }

    /// Adds records written elsewhere (a Redis outage's local spend) to this ledger only.
    pub fn add_to_ledger(&self, record: &SpendRecord) {
        self.state.lock().ledger.add(record);
    }

    /// Lets go of an admitted request's hold, counts its spend and charges
    /// its tokens past the estimate in one step, so that no admission in
    /// between sees the hold gone and the spend or tokens not yet counted
    /// (the fallback's settlement of a request it admitted; the spend itself
    /// is written elsewhere).
    pub fn release_into_ledger(&self, checks: &Checks, max_cost: Nanos, record: &SpendRecord) {
        let mut state = self.state.lock();
        release_locked(&mut state, checks, max_cost);
        state.ledger.add(record);
        self.charge_tokens_locked(&mut state, checks, record);
    }
}

/// The most tokens a token limit of `limit` per minute can be owed: an
/// hour's worth, so that one absurd usage report cannot shut a key out
/// for longer.
pub(crate) fn max_debt(limit: u32) -> u64 {
    u64::from(limit).saturating_mul(60)
}

/// Takes up to `n` cells from `limiter`, as many as it has now, and returns
/// how many it took: a rate limiter's `check_n` is all or nothing, so the
/// amount is built from powers of two, largest first.
fn take_what_fits(limiter: &Limiter, n: u32) -> u32 {
    let mut left = n;
    let mut step = 1_u32 << (31 - n.max(1).leading_zeros());
    while left > 0 && step > 0 {
        if step <= left
            && let Some(cells) = NonZeroU32::new(step)
            && matches!(limiter.check_n(cells), Ok(Ok(_)))
        {
            left -= step;
            continue;
        }
        step /= 2;
    }
    n - left
}

fn release_locked(state: &mut State, checks: &Checks, max_cost: Nanos) {
    for p in &checks.parallel {
        if let Some(n) = state.parallel.get_mut(&p.id) {
            *n = n.saturating_sub(1);
            // Nothing in flight: the entry goes (keys come and go).
            if *n == 0 {
                state.parallel.remove(&p.id);
            }
        }
    }
    for b in &checks.budgets {
        if let Some(r) = state.reserved.get_mut(&b.subject) {
            *r = r.saturating_sub(max_cost).max(0);
            // Nothing held: the entry goes (end users come and go).
            if *r == 0 {
                state.reserved.remove(&b.subject);
            }
        }
    }
}

/// The state of a per-minute limit with `remaining` of `limit` left.
pub(crate) fn rate_state(limit: u32, remaining: u32) -> RateState {
    let per_unit = 60_000.0 / f64::from(limit.max(1));
    let missing = f64::from(limit.saturating_sub(remaining));
    RateState {
        limit,
        remaining,
        reset: Duration::from_millis((missing * per_unit).ceil() as u64),
    }
}

/// The day a record would be charged on now (tests).
pub fn today() -> Day {
    day_of_ms(now_ms())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// A token limit lowered while a request runs: the request's settlement
    /// charges the limit in force, rather than rebuilding a full one at the
    /// value it was admitted under.
    #[test]
    fn a_request_settles_against_the_token_limit_in_force() {
        let store = LocalStore::memory();
        let checks = |limit| Checks {
            rates: vec![crate::checks::RateCheck {
                id: "key:k:tokens".into(),
                scope: "key".into(),
                kind: crate::RateKind::Tokens,
                limit,
                cost: 10,
            }],
            ..Checks::default()
        };
        let (before, after) = (checks(100_000), checks(1_000));
        store.admit(&before, 0).unwrap();
        store.admit(&after, 0).unwrap();
        let mut record = crate::spend::test_record("req-1", 0, "k", 0);
        record.usage = crate::TokenUsage {
            prompt: 10,
            completion: 4_990,
            ..crate::TokenUsage::default()
        };
        store.settle(&before, 0, &record).unwrap();
        let refused = store.admit(&after, 0);
        assert!(
            matches!(refused, Err(Denied::RateLimited { limit: 1_000, .. })),
            "{refused:?}"
        );
    }

    /// A deleted key's per-minute counters go with it; another key's stay.
    #[test]
    fn a_deleted_keys_counters_go_with_it() {
        let store = LocalStore::memory();
        let rate = |id: &str| crate::checks::RateCheck {
            id: id.into(),
            scope: "key".into(),
            kind: crate::RateKind::Requests,
            limit: 10,
            cost: 1,
        };
        let mut gone = KeyRecord::new("sk-gone-key-0123456789abcdef", 0, false);
        gone.key_id = "key-a".into();
        assert!(store.insert_key(gone.clone()).unwrap());
        let checks = Checks {
            rates: vec![
                rate("rpm:key:key-a"),
                rate("rpm:key:key-a:model:m"),
                rate("rpm:key:key-ab"),
            ],
            ..Checks::default()
        };
        store.admit(&checks, 0).unwrap();
        assert_eq!(store.limiters.lock().len(), 3);
        assert!(store.delete_key(&gone.token).unwrap());
        let left: Vec<String> = store.limiters.lock().keys().cloned().collect();
        assert_eq!(left, ["rpm:key:key-ab"]);
    }

    /// A request limit changed for a counter that is spent: the new limit
    /// starts from the part of the minute already used, not a full one.
    #[test]
    fn a_changed_request_limit_keeps_what_was_taken() {
        let store = LocalStore::memory();
        let checks = |limit| Checks {
            rates: vec![crate::checks::RateCheck {
                id: "key:k:requests".into(),
                scope: "key".into(),
                kind: crate::RateKind::Requests,
                limit,
                cost: 1,
            }],
            ..Checks::default()
        };
        for _ in 0..4 {
            store.admit(&checks(4), 0).unwrap();
        }
        assert!(store.admit(&checks(4), 0).is_err());
        // Lowered, raised a little, back: the minute is still used up.
        for limit in [2, 3, 4] {
            let refused = store.admit(&checks(limit), 0);
            assert!(
                matches!(refused, Err(Denied::RateLimited { .. })),
                "{limit}: {refused:?}"
            );
        }
        // Half of the minute used at 4 a minute: at 2 a minute, one is left.
        let other = |limit| Checks {
            rates: vec![crate::checks::RateCheck {
                id: "key:other:requests".into(),
                ..checks(limit).rates.remove(0)
            }],
            ..Checks::default()
        };
        store.admit(&other(4), 0).unwrap();
        store.admit(&other(4), 0).unwrap();
        store.admit(&other(2), 0).unwrap();
        assert!(store.admit(&other(2), 0).is_err());
    }

    #[test]
    fn a_data_directory_is_one_stores_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalStore::open(dir.path(), FsyncPolicy::Never).unwrap();
        let second = LocalStore::open(dir.path(), FsyncPolicy::Never)
            .err()
            .map(|e| e.to_string());
        assert!(
            second
                .as_deref()
                .is_some_and(|e| e.contains("in use by another Switchyard process")),
            "{second:?}"
        );
        drop(first);
        LocalStore::open(dir.path(), FsyncPolicy::Never).unwrap();
    }

    #[test]
    fn unreadable_key_lines_are_kept_aside_and_an_unreadable_deletion_stops_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let record = KeyRecord::new("sk-local-store-test-000002", 0, false);
        {
            let store = LocalStore::open(dir.path(), FsyncPolicy::Never).unwrap();
            assert!(store.insert_key(record.clone()).unwrap());
        }
        let path = dir.path().join("keys.jsonl");
        let whole = std::fs::read_to_string(&path).unwrap();
        // A record this version cannot read (a field renamed, a newer op):
        // moved aside, the rest opens.
        let odd = r#"{"op":"put_widget","record":{"id":"w"}}"#;
        std::fs::write(&path, format!("{whole}{odd}\n")).unwrap();
        let store = LocalStore::open(dir.path(), FsyncPolicy::Never).unwrap();
        assert!(store.key(&record.token).is_some());
        drop(store);
        let rejected = std::fs::read_to_string(dir.path().join("keys.rejected.jsonl")).unwrap();
        assert_eq!(rejected, format!("{odd}\n"));
        // A deletion that cannot be read would bring the key back: the
        // store refuses to open, and the file is left as it is.
        let whole = std::fs::read_to_string(&path).unwrap();
        let torn = format!(r#"{{"op":"delete_key","token":"{}"}}x"#, record.token);
        std::fs::write(&path, format!("{whole}{torn}\n")).unwrap();
        let err = LocalStore::open(dir.path(), FsyncPolicy::Never)
            .err()
            .map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("line 2")), "{err:?}");
        assert!(std::fs::read_to_string(&path).unwrap().contains(&torn));
        // So would a change to the key that cannot be read (a block).
        let blocked = format!(
            r#"{{"op":"put_key","record":{{"token":"{}","limits":7}}}}"#,
            record.token
        );
        std::fs::write(&path, format!("{whole}{blocked}\n")).unwrap();
        assert!(
            LocalStore::open(dir.path(), FsyncPolicy::Never).is_err(),
            "a change to a known key"
        );
        // So would an end user's record (a block), known or not.
        let end_user = r#"{"op":"put_end_user","record":{"user_id":"u-1","blocked":"yes"}}"#;
        std::fs::write(&path, format!("{whole}{end_user}\n")).unwrap();
        assert!(
            LocalStore::open(dir.path(), FsyncPolicy::Never).is_err(),
            "an end user's block"
        );
        std::fs::write(&path, format!("{whole}not json\n")).unwrap();
        assert!(
            LocalStore::open(dir.path(), FsyncPolicy::Never).is_err(),
            "not even JSON: it may have been a deletion"
        );
    }

    #[test]
    fn keys_are_inserted_only_when_absent_and_replaced_only_when_present() {
        let store = LocalStore::memory();
        let record = KeyRecord::new("sk-local-store-test-000001", 0, false);
        assert!(store.insert_key(record.clone()).unwrap());
        assert!(!store.insert_key(record.clone()).unwrap(), "the token is taken");
        let mut blocked = record.clone();
        blocked.limits.blocked = true;
        assert_eq!(store.replace_key(0, blocked).unwrap(), KeyWrite::Done);
        assert!(store.key(&record.token).unwrap().limits.blocked);
        assert!(store.delete_key(&record.token).unwrap());
        assert!(!store.delete_key(&record.token).unwrap(), "one delete sees it");
        assert_eq!(
            store.replace_key(0, record.clone()).unwrap(),
            KeyWrite::Missing,
            "a deleted key is not brought back"
        );
        assert!(store.key(&record.token).is_none());
        // The same value made again is another key: a change read from the
        // first is not stored over it.
        let mut again = record.clone();
        again.key_id = "key-made-again".into();
        assert!(store.insert_key(again).unwrap());
        assert_eq!(store.replace_key(0, record.clone()).unwrap(), KeyWrite::Changed);
        assert!(store.delete_key(&record.token).unwrap());

        // A rename moves the key in one step, once.
        assert!(store.insert_key(record.clone()).unwrap());
        let taken = KeyRecord::new("sk-local-store-test-000002", 0, false);
        assert!(store.insert_key(taken.clone()).unwrap());
        // A regenerated key keeps its id under a new value.
        let moved_to = |token: &str| KeyRecord {
            token: token.to_owned(),
            ..record.clone()
        };
        assert_eq!(
            store.rename_key(&record.token, 0, moved_to(&taken.token)).unwrap(),
            KeyWrite::Taken,
            "the new token is taken"
        );
        assert!(store.key(&record.token).is_some(), "a refused rename keeps the old key");
        let new = moved_to(&KeyRecord::new("sk-local-store-test-000003", 0, false).token);
        assert_eq!(store.rename_key(&record.token, 0, new.clone()).unwrap(), KeyWrite::Done);
        assert!(store.key(&record.token).is_none() && store.key(&new.token).is_some());
        assert_eq!(
            store.rename_key(&record.token, 0, new).unwrap(),
            KeyWrite::Missing,
            "the old value is gone"
        );

        // Teams: created once, changed only while they exist.
        let team = TeamRecord {
            team_id: "t1".into(),
            team_alias: None,
            created_at: 0,
            from_config: false,
            revision: 0,
            ledger_id: None,
            limits: Default::default(),
        };
        assert_eq!(store.put_team(team.clone(), false).unwrap(), KeyWrite::Done);
        assert_eq!(
            store.put_team(team.clone(), false).unwrap(),
            KeyWrite::Taken,
            "the id is taken"
        );
        let changed = TeamRecord {
            revision: 1,
            ..team.clone()
        };
        assert_eq!(store.put_team(changed.clone(), true).unwrap(), KeyWrite::Done);
        assert_eq!(
            store.put_team(changed.clone(), true).unwrap(),
            KeyWrite::Changed,
            "a change made from revision 0 is not stored over revision 1"
        );
        assert!(store.delete_team("t1").unwrap());
        assert_eq!(
            store.put_team(changed.clone(), true).unwrap(),
            KeyWrite::Missing,
            "a deleted team is not brought back"
        );
        // The same id made again is another team.
        let again = TeamRecord {
            created_at: 5,
            ..team.clone()
        };
        assert_eq!(store.put_team(again, false).unwrap(), KeyWrite::Done);
        assert_eq!(store.put_team(changed, true).unwrap(), KeyWrite::Changed);
        assert!(store.delete_team("t1").unwrap());
        assert!(store.team("t1").is_none());
    }

    /// A regenerated key is one line of the journal: read again, the store
    /// holds the new value alone under the key's id, and a rename cut off
    /// in its write leaves the old key as it was.
    #[test]
    fn a_regenerated_key_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let record = KeyRecord::new("sk-local-store-rename-0001", 0, false);
        let new = KeyRecord {
            token: KeyRecord::new("sk-local-store-rename-0002", 0, false).token,
            ..record.clone()
        };
        let journal = dir.path().join("keys.jsonl");
        let written = {
            let store = LocalStore::open(dir.path(), FsyncPolicy::Always).unwrap();
            assert!(store.insert_key(record.clone()).unwrap());
            let before = std::fs::read_to_string(&journal).unwrap();
            assert_eq!(store.rename_key(&record.token, 0, new.clone()).unwrap(), KeyWrite::Done);
            let after = std::fs::read_to_string(&journal).unwrap();
            assert_eq!(
                after.lines().count(),
                before.lines().count() + 1,
                "a rename is one line"
            );
            (before, after)
        };
        let store = LocalStore::open(dir.path(), FsyncPolicy::Always).unwrap();
        let ids: Vec<String> = store.keys().into_iter().map(|k| k.token).collect();
        assert_eq!(ids, std::slice::from_ref(&new.token));
        drop(store);

        // The rename's line cut short (a crash mid-write): the old key stays.
        let (before, after) = written;
        let rename = &after[before.len()..];
        std::fs::write(&journal, format!("{before}{}", &rename[..rename.len() / 2])).unwrap();
        let store = LocalStore::open(dir.path(), FsyncPolicy::Always).unwrap();
        let ids: Vec<String> = store.keys().into_iter().map(|k| k.token).collect();
        assert_eq!(ids, std::slice::from_ref(&record.token));
        drop(store);

        // Whole but unreadable (damaged, or a build that does not know it):
        // it deletes a key, so the store does not open without it.
        assert!(rename.starts_with(r#"{"op":"delete_and_put_key""#), "{rename}");
        let damaged = rename.replacen(r#""record":{"#, r#""record":{"revision":"x","#, 1);
        std::fs::write(&journal, format!("{before}{damaged}")).unwrap();
        let refused = LocalStore::open(dir.path(), FsyncPolicy::Always).err().unwrap();
        assert!(refused.to_string().contains("may delete or change"), "{refused}");
    }

    /// A request refused by its end user's limit takes nothing from its
    /// key's: the key's other end users still get the key's whole minute.
    #[test]
    fn a_request_refused_by_one_limit_takes_nothing_from_the_others() {
        let store = LocalStore::memory();
        let rate = |id: &str, limit| crate::checks::RateCheck {
            id: id.into(),
            scope: id.into(),
            kind: crate::RateKind::Requests,
            limit,
            cost: 1,
        };
        let checks = |user: &str| Checks {
            rates: vec![
                rate("key:k:requests", 3),
                rate("team:t:requests", 3),
                rate(&format!("end_user:{user}:requests"), 1),
            ],
            ..Checks::default()
        };
        store.admit(&checks("u1"), 0).unwrap();
        for _ in 0..3 {
            let refused = store.admit(&checks("u1"), 0);
            assert!(
                matches!(&refused, Err(Denied::RateLimited { scope, .. }) if scope == "end_user:u1:requests"),
                "{refused:?}"
            );
        }
        store.admit(&checks("u2"), 0).unwrap();
        store.admit(&checks("u3"), 0).unwrap();
        let refused = store.admit(&checks("u4"), 0);
        assert!(
            matches!(&refused, Err(Denied::RateLimited { scope, .. }) if scope == "key:k:requests"),
            "{refused:?}"
        );
        // The same limit twice in one request is given back whole too.
        let spent = Checks {
            rates: vec![rate("end_user:v:requests", 1)],
            ..Checks::default()
        };
        store.admit(&spent, 0).unwrap();
        let twice = Checks {
            rates: vec![
                rate("key:j:requests", 2),
                rate("key:j:requests", 2),
                rate("end_user:v:requests", 1),
            ],
            ..Checks::default()
        };
        assert!(store.admit(&twice, 0).is_err());
        let once = Checks {
            rates: vec![rate("key:j:requests", 2)],
            ..Checks::default()
        };
        store.admit(&once, 0).unwrap();
        store.admit(&once, 0).unwrap();
        assert!(store.admit(&once, 0).is_err());
    }

    #[test]
    fn a_debt_is_paid_by_time_before_the_bucket_refills() {
        // 7,000 owed on 1,000 a minute: 3 minutes in, 4,000 remain and the
        // 1,000 the bucket refilled belong to the debt.
        assert_eq!(pay_over_time(7_000, 3_000, 1_000), (4_000, 1_000));
        // 10 minutes in: paid off 3 minutes ago; the bucket is full again.
        assert_eq!(pay_over_time(7_000, 10_000, 1_000), (0, 0));
        // Paid off 400 cells ago: the bucket keeps those 400 of its 1,000.
        assert_eq!(pay_over_time(7_000, 7_400, 1_000), (0, 600));
        // A debt smaller than the bucket, half a bucket of time later.
        assert_eq!(pay_over_time(300, 500, 1_000), (0, 300));
        assert_eq!(pay_over_time(300, 100, 1_000), (200, 100));
    }

    #[test]
    fn frequent_checks_do_not_stop_a_debt_from_draining() {
        // 1 cell a millisecond; checked every half millisecond.
        let store = LocalStore::memory();
        let limiter = store.limiter("tpm:drain", 60_000);
        let start = std::time::Instant::now();
        let mut debt = Debt {
            owed: 1_000,
            since: start,
        };
        for i in 1..=10 {
            debt.settle_at(&limiter.limiter, 60_000, start + Duration::from_micros(500 * i));
        }
        assert_eq!(debt.owed, 995);
    }

    #[test]
    fn a_token_top_up_takes_what_fits_not_nothing() {
        let store = LocalStore::memory();
        let limiter = &store.limiter("tpm:test", 100).limiter;
        assert!(matches!(limiter.check_n(NonZeroU32::new(60).unwrap()), Ok(Ok(_))));
        // 70 more do not fit; the 40 that do are taken.
        take_what_fits(limiter, 70);
        assert!(
            matches!(limiter.check_n(NonZeroU32::MIN), Ok(Err(_))),
            "cells were left"
        );

        // When everything fits, exactly `n` is taken.
        let limiter = &store.limiter("tpm:other", 100).limiter;
        take_what_fits(limiter, 30);
        assert!(matches!(limiter.check_n(NonZeroU32::new(70).unwrap()), Ok(Ok(_))));
        assert!(matches!(limiter.check_n(NonZeroU32::MIN), Ok(Err(_))));
    }
}
