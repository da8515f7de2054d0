//! `policy:` — virtual keys, limits, budgets and where their state lives.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_policy::key::{apply_key_field, apply_team_field};
use switchyard_policy::period::now_ms;
use switchyard_policy::{FailureMode, FsyncPolicy, KeyRecord, PolicySettings, RedisSettings, TeamRecord};

use crate::config::{ConfigIssue, EnvSource, issue, resolve_secret, resolve_url};

/// The environment variable that sets the master key when the file does not.
pub const MASTER_KEY_ENV: &str = "SWITCHYARD_MASTER_KEY";

/// LiteLLM's master key variable, read for LiteLLM files after [`MASTER_KEY_ENV`].
pub const LITELLM_MASTER_KEY_ENV: &str = "LITELLM_MASTER_KEY";

/// `policy:` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The admin key, `os.environ/NAME` or a literal (else `SWITCHYARD_MASTER_KEY`).
    /// With a master key (or keys below), every client route needs a key.
    pub master_key: Option<String>,
    /// Directory of the local store's `keys.jsonl` and spend log
    /// (`spend.jsonl`, its `spend.<n>.jsonl` segments and
    /// `spend-summary.json`); unset: memory only. With `redis`, it holds only `pending-spend.jsonl`: spend
    /// queued while Redis is unreachable, written when it is back, also
    /// after a restart.
    pub data_dir: Option<PathBuf>,
    /// When appended lines reach the disk (the local store's files, or with
    /// `redis` the queued spend): `always`, `every_second`, `never`.
    pub fsync: FsyncPolicy,
    /// Output tokens assumed for a request without `max_tokens`, for its
    /// budget reservation (an `anthropic` or `bedrock` deployment it may reach
    /// counts with its own `default_max_tokens` when that is higher).
    pub default_max_tokens: u32,
    /// Shared state across replicas.
    pub redis: Option<RedisConfig>,
    /// Record the end user a request names (OpenAI's `user`, Anthropic's
    /// `metadata.user_id`) on its spend record and in the request log. Off,
    /// the request log names no end user, and spend records only end users
    /// with a record (`/customer/new`), whose records still hold.
    pub record_end_users: bool,
    /// Also count each request's spend under each of its tags
    /// (`/spend/tags`). Off by default: tags are chosen by clients, and each
    /// new one is kept for good (a Redis hash with no expiry).
    pub track_tag_spend: bool,
    /// A budget every end user (a request's `user`) has, whoever's key
    /// pays (needs `record_end_users`, the default).
    pub end_user_budget: Option<EndUserBudgetConfig>,
    /// Keys declared here (each with `key: os.environ/NAME`, plus the fields of `/key/generate`).
    pub keys: Vec<BTreeMap<String, Value>>,
    /// Teams declared here (the fields of `/team/new`).
    pub teams: Vec<BTreeMap<String, Value>>,
    /// Set for a LiteLLM file: `LITELLM_MASTER_KEY` is read too when neither
    /// the file nor `SWITCHYARD_MASTER_KEY` sets the master key, as LiteLLM does.
    #[serde(skip)]
    pub litellm_master_key_env: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            master_key: None,
            data_dir: None,
            fsync: FsyncPolicy::EverySecond,
            default_max_tokens: 4096,
            redis: None,
            record_end_users: true,
            track_tag_spend: false,
            end_user_budget: None,
            keys: Vec::new(),
            teams: Vec::new(),
            litellm_master_key_env: false,
        }
    }
}

/// `policy.end_user_budget:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndUserBudgetConfig {
    /// USD an end user may spend per `budget_duration`, or in total.
    pub max_budget: f64,
    /// `daily`, `weekly`, `monthly` (also `1d`, `7d`, `30d`, `1mo`); unset: in total.
    #[serde(default)]
    pub budget_duration: Option<String>,
}

/// `policy.redis:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` (`rediss://` for TLS, verified against the
    /// system's roots; see docs/caching.md for a private CA), `os.environ/NAME`, or a URL with
    /// `{os.environ/NAME}` parts (`redis://:{os.environ/REDIS_PASSWORD}@host:6379`).
    pub url: String,
    /// Prefix of every Redis key the gateway writes.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// `fail_closed` (503 while Redis is down) or `fail_open` (in-process limits).
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Longest wait for one Redis command, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a dead replica's reservations and in-flight slots last, in
    /// milliseconds; a live one renews its running requests' every third of it.
    #[serde(default = "default_hold_ttl_ms")]
    pub hold_ttl_ms: u64,
    /// How long a settled request's id is kept, in hours, so that a
    /// settlement retried after an outage (a replica restarted with queued
    /// spend included) counts once. Each id takes about 100 bytes of Redis
    /// memory: at 200 requests/s, 48 hours hold about 35 million.
    #[serde(default = "default_settled_ttl_hours")]
    pub settled_ttl_hours: u64,
    /// Spend records kept in the Redis log stream (approximately; at least 1).
    #[serde(default = "default_log_max_len")]
    pub log_max_len: u64,
    /// Settlements kept (in memory, and in `data_dir`) while Redis is down;
    /// once that many wait, requests get 503 until Redis takes them, so a
    /// long outage under `fail_open` cannot exhaust memory.
    #[serde(default = "default_max_queued_spend")]
    pub max_queued_spend: usize,
}

fn default_max_queued_spend() -> usize {
    100_000
}

fn default_prefix() -> String {
    "switchyard:".into()
}

fn default_timeout_ms() -> u64 {
    500
}

fn default_settled_ttl_hours() -> u64 {
    48
}

fn default_hold_ttl_ms() -> u64 {
    600_000
}

fn default_log_max_len() -> u64 {
    1_000_000
}

/// The validated policy settings, and the reservation ceiling.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    /// For [`switchyard_policy::Policy::open`].
    pub settings: PolicySettings,
    /// Output tokens assumed for a request without `max_tokens`.
    pub default_max_tokens: u32,
    /// Whether spend records and the request log name the end user.
    pub record_end_users: bool,
    /// Whether spend is also counted per tag.
    pub track_tag_spend: bool,
}

/// What makes a configured key (its surrounding whitespace trimmed)
/// unusable, if anything: too short, with control characters (a line
/// break, a tab), or with characters beyond printable ASCII, which no
/// header a client sends can carry (the gateway reads a header's key as
/// ASCII).
fn key_problem(key: &str) -> Option<&'static str> {
    if key.len() < 8 {
        Some("must be at least 8 characters")
    } else if key.chars().any(char::is_control) {
        Some("must not contain control characters (a line break, a tab): no request could present it")
    } else if !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        Some(
            "must be printable ASCII (letters, digits, punctuation): a header cannot carry other characters, so no request could present it",
        )
    } else {
        None
    }
}

impl PolicyConfig {
    /// Checks every value, resolving secrets; `models` are the configured model names.
    pub fn validate(&self, env: &dyn EnvSource, models: &[String], issues: &mut Vec<ConfigIssue>) -> PolicySpec {
        // Where the master key came from, for an error about it.
        let mut source = "policy.master_key".to_owned();
        let master_key = match &self.master_key {
            Some(value) => resolve_secret(value, "policy.master_key", env, issues).map(|s| s.expose().to_owned()),
            None => {
                // Set but empty (`${KEY:-}` with the key unset) is refused
                // below, not taken for no key: that would open every route.
                let from = |name: &str| env.get(name);
                let litellm = || {
                    self.litellm_master_key_env
                        .then(|| from(LITELLM_MASTER_KEY_ENV))
                        .flatten()
                };
                // An empty variable gives way to the other one; empty where
                // no other gives a key, it is refused.
                let given = |v: Option<&String>| v.is_some_and(|k| !k.trim().is_empty());
                let (ours, theirs) = (from(MASTER_KEY_ENV), litellm());
                if ours.is_some() && (given(ours.as_ref()) || !given(theirs.as_ref())) {
                    source = format!("policy.master_key (from {MASTER_KEY_ENV})");
                    ours
                } else if theirs.is_some() {
                    source = format!("policy.master_key (from {LITELLM_MASTER_KEY_ENV})");
                    theirs
                } else {
                    None
                }
            }
        };
        // A key is presented trimmed: whitespace around one (a secret
        // file's last newline) is not part of it, and inside one no header
        // could carry it.
        let master_key = master_key.map(|k| k.trim().to_owned());
        if let Some(problem) = master_key.as_deref().and_then(key_problem) {
            issues.push(issue(source, problem));
        }
        if self.default_max_tokens == 0 {
            issues.push(issue("policy.default_max_tokens", "must be greater than 0"));
        }
        let redis = self.redis.as_ref().and_then(|r| {
            let url = resolve_url(&r.url, "policy.redis.url", env, issues)?
                .expose()
                .to_owned();
            if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
                issues.push(issue(
                    "policy.redis.url",
                    "must start with redis://, rediss:// or unix://",
                ));
            }
            if r.timeout_ms == 0 {
                issues.push(issue("policy.redis.timeout_ms", "must be greater than 0"));
            }
            if r.max_queued_spend == 0 {
                issues.push(issue("policy.redis.max_queued_spend", "must be greater than 0"));
            }
            // 0 would cap the spend log at one node, not leave it uncapped.
            if r.log_max_len == 0 {
                issues.push(issue("policy.redis.log_max_len", "must be greater than 0"));
            }
            if r.hold_ttl_ms < 1000 {
                issues.push(issue("policy.redis.hold_ttl_ms", "must be at least 1000"));
            }
            if !(1..=720).contains(&r.settled_ttl_hours) {
                issues.push(issue("policy.redis.settled_ttl_hours", "must be between 1 and 720"));
            }
            Some(RedisSettings {
                url,
                prefix: r.prefix.clone(),
                failure_mode: r.failure_mode,
                timeout: Duration::from_millis(r.timeout_ms),
                hold_ttl: Duration::from_millis(r.hold_ttl_ms),
                settled_ttl: Duration::from_secs(r.settled_ttl_hours.saturating_mul(3600)),
                log_max_len: r.log_max_len,
                max_queued_spend: r.max_queued_spend,
            })
        });
        let is_model = |m: &str| models.iter().any(|k| switchyard_policy::key::names_model(k, m));
        // The models a key or team may call, and those its per-model
        // limits name: a limit for a name no model has would never apply.
        let known = |limits: &switchyard_policy::key::Limits, path: &str, issues: &mut Vec<ConfigIssue>| {
            for (i, m) in limits.models.iter().enumerate() {
                if !is_model(m) {
                    issues.push(issue(
                        format!("{path}.models[{i}]"),
                        format!("`{m}` is not a model_name in model_list"),
                    ));
                }
            }
            for (name, per_model) in [
                ("model_rpm_limit", &limits.model_rpm_limit),
                ("model_tpm_limit", &limits.model_tpm_limit),
            ] {
                for m in per_model.keys().filter(|m| !is_model(m)) {
                    issues.push(issue(
                        format!("{path}.{name}.{m}"),
                        format!("`{m}` is not a model_name in model_list"),
                    ));
                }
            }
        };
        let now = now_ms();
        let mut teams = Vec::new();
        for (i, entry) in self.teams.iter().enumerate() {
            let path = format!("policy.teams[{i}]");
            let Some(team_id) = entry.get("team_id").and_then(Value::as_str).filter(|s| !s.is_empty()) else {
                issues.push(issue(format!("{path}.team_id"), "is required"));
                continue;
            };
            if team_id.contains(':') {
                issues.push(issue(
                    format!("{path}.team_id"),
                    "may not contain `:` (it separates the parts of limit counter names)",
                ));
            }
            if teams.iter().any(|t: &TeamRecord| t.team_id == team_id) {
                issues.push(issue(
                    format!("{path}.team_id"),
                    format!("`{team_id}` is declared twice"),
                ));
            }
            let mut record = TeamRecord {
                team_id: team_id.to_owned(),
                team_alias: None,
                created_at: now,
                from_config: true,
                revision: 0,
                ledger_id: None,
                limits: Default::default(),
            };
            for (name, value) in entry.iter().filter(|(n, _)| n.as_str() != "team_id") {
                if let Err(e) = apply_team_field(&mut record, name, value) {
                    issues.push(issue(format!("{path}.{}", e.param), e.message));
                }
            }
            known(&record.limits, &path, issues);
            teams.push(record);
        }
        let mut keys = Vec::new();
        for (i, entry) in self.keys.iter().enumerate() {
            let path = format!("policy.keys[{i}]");
            let Some(raw) = entry.get("key").and_then(Value::as_str) else {
                issues.push(issue(format!("{path}.key"), "is required (os.environ/NAME)"));
                continue;
            };
            let Some(plaintext) = resolve_secret(raw, &format!("{path}.key"), env, issues) else {
                continue;
            };
            let plaintext = plaintext.expose().trim().to_owned();
            if let Some(problem) = key_problem(&plaintext) {
                issues.push(issue(format!("{path}.key"), problem));
            }
            let mut record = KeyRecord::new(&plaintext, now, true);
            for (name, value) in entry.iter().filter(|(n, _)| n.as_str() != "key") {
                match name.as_str() {
                    // Counted from each start, a lifetime would never end
                    // for a replica restarted often enough.
                    "duration" => issues.push(issue(
                        format!("{path}.duration"),
                        "a key declared here has no creation time to count from: set `expires` (e.g. 2027-01-01T00:00:00Z) instead",
                    )),
                    "expires" => match value.as_str().map(str::parse::<jiff::Timestamp>) {
                        Some(Ok(at)) => record.expires_at = Some(at.as_millisecond()),
                        _ => issues.push(issue(
                            format!("{path}.expires"),
                            "must be an RFC 3339 time, e.g. 2027-01-01T00:00:00Z",
                        )),
                    },
                    _ => {
                        if let Err(e) = apply_key_field(&mut record, name, value) {
                            issues.push(issue(format!("{path}.{}", e.param), e.message));
                        }
                    }
                }
            }
            known(&record.limits, &path, issues);
            if let Some(alias) = &record.key_alias
                && keys
                    .iter()
                    .any(|(_, k): &(String, KeyRecord)| k.key_alias.as_ref() == Some(alias))
            {
                issues.push(issue(
                    format!("{path}.key_alias"),
                    format!("`{alias}` is another key's alias (an alias names one key)"),
                ));
            }
            if let Some(team) = &record.team_id
                && !teams.iter().any(|t| &t.team_id == team)
            {
                issues.push(issue(
                    format!("{path}.team_id"),
                    format!("`{team}` is not a team in policy.teams"),
                ));
            }
            if keys.iter().any(|(_, k): &(String, KeyRecord)| k.token == record.token) {
                issues.push(issue(format!("{path}.key"), "is declared twice"));
            }
            // The master key is checked first: this key's limits would never apply.
            if master_key.as_deref() == Some(plaintext.as_str()) {
                issues.push(issue(
                    format!("{path}.key"),
                    "is the master key; give it a value of its own",
                ));
            }
            keys.push((plaintext, record));
        }
        let end_user_budget = self.end_user_budget.as_ref().and_then(|b| {
            if !(b.max_budget.is_finite() && b.max_budget >= 0.0) {
                issues.push(issue(
                    "policy.end_user_budget.max_budget",
                    "must be a non-negative number of USD",
                ));
                return None;
            }
            let budget_duration = match b.budget_duration.as_deref() {
                None => None,
                Some(text) => match switchyard_policy::period::BudgetPeriod::parse(text) {
                    Some(period) => Some(period),
                    None => {
                        issues.push(issue(
                            "policy.end_user_budget.budget_duration",
                            format!("`{text}` is not daily, weekly or monthly"),
                        ));
                        return None;
                    }
                },
            };
            if !self.record_end_users {
                issues.push(issue(
                    "policy.end_user_budget",
                    "needs policy.record_end_users: end users without a record are not counted without it",
                ));
            }
            Some(switchyard_policy::EndUserBudget {
                max_budget: b.max_budget,
                budget_duration,
            })
        });
        PolicySpec {
            settings: PolicySettings {
                master_key,
                data_dir: self.data_dir.clone(),
                fsync: self.fsync,
                redis,
                keys,
                teams,
                known_models: models.to_vec(),
                end_user_budget,
            },
            default_max_tokens: self.default_max_tokens,
            record_end_users: self.record_end_users,
            track_tag_spend: self.track_tag_spend,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::key_problem;

    #[test]
    fn a_configured_key_must_be_one_a_header_can_carry() {
        assert_eq!(key_problem("sk-fine-key-01"), None);
        assert!(key_problem("short").is_some());
        assert!(key_problem("sk-line\nbreak").is_some());
        assert!(key_problem("clé-maître-2025").is_some_and(|p| p.contains("ASCII")));
    }
}
