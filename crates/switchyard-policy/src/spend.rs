//! Spend records and the ledger that sums them per key, team and model, per day.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::money::Nanos;
use crate::period::{BudgetPeriod, Day, day_of_ms};
use crate::price::TokenUsage;

/// One charged request, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpendRecord {
    /// The request's id (`x-switchyard-request-id`).
    pub request_id: String,
    /// When it was settled, Unix milliseconds.
    pub ts: i64,
    /// SHA-256 of the key that paid (`None`: no key, or the master key).
    pub key: Option<String>,
    /// The key's alias.
    #[serde(default)]
    pub key_alias: Option<String>,
    /// The key's team.
    #[serde(default)]
    pub team_id: Option<String>,
    /// The team's ledger id, when it is not the team id
    /// ([`crate::TeamRecord::ledger`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_ledger: Option<String>,
    /// The key's user (its `user_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The user's ledger id, when the user has a record: the request's
    /// spend is counted under the user too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_ledger: Option<String>,
    /// The public model name the client asked for.
    pub model: String,
    /// The deployment that answered.
    pub deployment: String,
    /// Token counts.
    pub usage: TokenUsage,
    /// What it cost, nano-dollars.
    pub cost_nanos: Nanos,
    /// Whether the answer came from the response cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_hit: bool,
    /// The end user the request was made for (OpenAI's `user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<String>,
    /// The request's tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Whether its cost is also counted under each tag (`policy.track_tag_spend`
    /// when it was charged).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tag_spend: bool,
    /// Whether its cost is also counted under its end user (end-user
    /// budgets were set when it was charged).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end_user_spend: bool,
}

impl SpendRecord {
    /// The ledger subjects this record is charged to: its key, team and
    /// model, and each of its tags when tag spend is tracked.
    pub fn subjects(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(3 + self.tags.len());
        if let Some(key) = &self.key {
            out.push(subject_key(key));
        }
        if let Some(team) = self.team_ledger.as_ref().or(self.team_id.as_ref()) {
            out.push(subject_team(team));
        }
        if let Some(user) = &self.user_ledger {
            out.push(subject_user(user));
        }
        out.push(subject_model(&self.model));
        if self.tag_spend {
            out.extend(self.tags.iter().map(|t| subject_tag(t)));
        }
        if let Some(user) = self.end_user.as_ref().filter(|_| self.end_user_spend) {
            out.push(subject_end_user(user));
        }
        out
    }

    /// The UTC day it was charged on.
    pub fn day(&self) -> Day {
        day_of_ms(self.ts)
    }
}

/// Ledger subject of a key.
pub fn subject_key(token: &str) -> String {
    format!("key:{token}")
}

/// Ledger subject of a team.
pub fn subject_team(team: &str) -> String {
    format!("team:{team}")
}

/// Ledger subject of a user (by its ledger id).
pub fn subject_user(ledger: &str) -> String {
    format!("user:{ledger}")
}

/// Ledger subject of a model group.
pub fn subject_model(model: &str) -> String {
    format!("model:{model}")
}

/// Ledger subject of an end user.
pub fn subject_end_user(user: &str) -> String {
    format!("end_user:{user}")
}

/// Ledger subject of a request tag.
pub fn subject_tag(tag: &str) -> String {
    format!("tag:{tag}")
}

/// Spend of one subject: in total and per day.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubjectSpend {
    /// Everything ever charged.
    pub total: Nanos,
    /// Per UTC day.
    pub days: BTreeMap<Day, Nanos>,
}

impl SubjectSpend {
    /// Spend in the budget period containing `today` (`None`: in total).
    pub fn in_period(&self, period: Option<BudgetPeriod>, today: Day) -> Nanos {
        match period {
            None => self.total,
            Some(p) => self
                .days
                .range(p.start(today)..)
                .fold(0, |sum: Nanos, (_, v)| sum.saturating_add(*v)),
        }
    }
}

/// Spend per subject, rebuilt from the spend log at start-up.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    subjects: HashMap<String, SubjectSpend>,
}

impl Ledger {
    /// Adds a record's cost to each of its subjects.
    pub fn add(&mut self, record: &SpendRecord) {
        let day = record.day();
        for subject in record.subjects() {
            let entry = self.subjects.entry(subject).or_default();
            entry.total = entry.total.saturating_add(record.cost_nanos);
            let on_day = entry.days.entry(day).or_default();
            *on_day = on_day.saturating_add(record.cost_nanos);
        }
    }

    /// One subject's spend.
    pub fn get(&self, subject: &str) -> Option<&SubjectSpend> {
        self.subjects.get(subject)
    }

    /// Every subject with a prefix (`key:`, `team:`, `model:`), prefix removed.
    pub fn by_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a SubjectSpend)> + 'a {
        self.subjects
            .iter()
            .filter_map(move |(s, v)| s.strip_prefix(prefix).map(|name| (name, v)))
    }
}

/// Which spend records to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Only this key (hash).
    pub key: Option<String>,
    /// Only this team.
    pub team_id: Option<String>,
    /// Only this model group.
    pub model: Option<String>,
    /// From this day (inclusive).
    pub start_day: Option<Day>,
    /// Up to this day (inclusive).
    pub end_day: Option<Day>,
    /// Only answers from the cache (`Some(true)`) or from upstreams (`Some(false)`).
    pub cache_hit: Option<bool>,
    /// Only the record of this request (`x-request-id`).
    pub request_id: Option<String>,
    /// Only requests made for this end user.
    pub end_user: Option<String>,
    /// Only requests paid by keys of this user (`user_id`).
    pub user_id: Option<String>,
    /// Only requests carrying this tag.
    pub tag: Option<String>,
    /// At most this many, newest first.
    pub limit: usize,
}

impl LogFilter {
    /// Whether `record` passes.
    pub fn matches(&self, record: &SpendRecord) -> bool {
        let day = record.day();
        self.key.as_ref().is_none_or(|k| record.key.as_ref() == Some(k))
            && self.team_id.as_ref().is_none_or(|t| record.team_id.as_ref() == Some(t))
            && self.model.as_ref().is_none_or(|m| &record.model == m)
            && self.request_id.as_ref().is_none_or(|r| &record.request_id == r)
            && self.start_day.is_none_or(|d| day >= d)
            && self.end_day.is_none_or(|d| day <= d)
            && self.cache_hit.is_none_or(|c| record.cache_hit == c)
            && self.user_id.as_ref().is_none_or(|u| record.user_id.as_ref() == Some(u))
            && self
                .end_user
                .as_ref()
                .is_none_or(|u| record.end_user.as_ref() == Some(u))
            && self.tag.as_ref().is_none_or(|t| record.tags.contains(t))
    }
}

/// A spend record of model `m` (deployment `m/0`) for tests: key `key`,
/// at `ts`, costing `cost_nanos`, no usage.
#[cfg(test)]
pub(crate) fn test_record(request_id: &str, ts: i64, key: &str, cost_nanos: Nanos) -> SpendRecord {
    SpendRecord {
        request_id: request_id.to_owned(),
        ts,
        key: Some(key.to_owned()),
        key_alias: None,
        team_id: None,
        team_ledger: None,
        user_id: None,
        user_ledger: None,
        model: "m".into(),
        deployment: "m/0".into(),
        usage: TokenUsage::default(),
        cost_nanos,
        cache_hit: false,
        end_user: None,
        tags: Vec::new(),
        tag_spend: false,
        end_user_spend: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(day_ms: i64, cost_nanos: Nanos) -> SpendRecord {
        test_record(&format!("req-{day_ms}"), day_ms, "abc", cost_nanos)
    }

    #[test]
    fn filters_pick_end_users_and_tags() {
        let mut tagged = record(0, 1);
        tagged.end_user = Some("user-7".into());
        tagged.tags = vec!["batch".into(), "eval".into()];
        let plain = record(0, 1);
        let by = |end_user: Option<&str>, tag: Option<&str>| LogFilter {
            end_user: end_user.map(str::to_owned),
            tag: tag.map(str::to_owned),
            ..LogFilter::default()
        };
        assert!(by(Some("user-7"), Some("eval")).matches(&tagged));
        assert!(!by(Some("user-7"), None).matches(&plain));
        assert!(!by(None, Some("prod")).matches(&tagged));
        assert!(by(None, None).matches(&plain));
        // Old records, without the fields, still read.
        let old: SpendRecord = serde_json::from_value(serde_json::json!({
            "request_id": "r", "ts": 0, "key": null, "model": "m", "deployment": "m/0",
            "usage": {"prompt": 1, "completion": 1, "cache_read": 0, "cache_write": 0}, "cost_nanos": 5
        }))
        .unwrap();
        assert!(old.tags.is_empty() && old.end_user.is_none());
    }

    #[test]
    fn sums_saturate_instead_of_wrapping() {
        let mut ledger = Ledger::default();
        let day_ms = 86_400_000;
        ledger.add(&record(0, Nanos::MAX - 1));
        ledger.add(&record(0, 5));
        ledger.add(&record(day_ms, Nanos::MAX));
        let spend = ledger.get(&subject_key("abc")).unwrap();
        assert_eq!(spend.total, Nanos::MAX);
        let today = day_of_ms(day_ms);
        assert_eq!(spend.in_period(Some(BudgetPeriod::Monthly), today), Nanos::MAX);
        assert_eq!(spend.in_period(Some(BudgetPeriod::Daily), today), Nanos::MAX);
        assert_eq!(spend.in_period(None, today), Nanos::MAX);
    }
}
