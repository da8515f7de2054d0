//! Virtual keys and teams: what is stored (hashes, never plaintext), what a
//! key may do, and how admin requests change them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::period::{BudgetPeriod, parse_duration_secs};

/// Prefix of every key the gateway generates.
pub const KEY_PREFIX: &str = "sk-";

/// The SHA-256 of a key, hex-encoded: the only form a key is stored in.
pub fn hash_key(plaintext: &str) -> String {
    hex::encode(Sha256::digest(plaintext.as_bytes()))
}

/// Compares two hashes in constant time.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A new random key: `sk-` and 48 hex digits (192 bits from the OS RNG).
pub fn generate_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
}

/// Whether `plaintext` can be a custom key: `sk-`, at least 20 characters,
/// each a visible ASCII character (an HTTP header carries nothing else
/// unchanged: a key with spaces, control or non-ASCII characters could
/// never be presented).
pub(crate) fn usable_key(plaintext: &str) -> bool {
    plaintext.starts_with(KEY_PREFIX) && plaintext.len() >= 20 && plaintext.bytes().all(|b| b.is_ascii_graphic())
}

/// A fresh random id for a key made through the API (`key-` and 32 hex
/// digits): spend and limits kept under an id never pass to a later key.
pub fn new_key_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(format!("key-{}", hex::encode(bytes)))
}

/// What may be shown of a key after creation: its prefix and last four
/// characters (fewer for a key shorter than 20: a fifth of it at most, so
/// that no short key declared in a file is half shown).
pub fn display_name(plaintext: &str) -> String {
    let shown = (plaintext.chars().count() / 5).min(4);
    let tail: String = plaintext
        .chars()
        .rev()
        .take(shown)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{KEY_PREFIX}...{tail}")
}

/// The limits a key or a team carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Model groups it may call; empty means every model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Spend allowed per budget period (or in total), in USD.
    #[serde(default)]
    pub max_budget: Option<f64>,
    /// When the budget starts again; `None`: never.
    #[serde(default)]
    pub budget_duration: Option<BudgetPeriod>,
    /// Spend, per budget period, past which an alert is sent (once per
    /// period); requests are not refused for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_budget: Option<f64>,
    /// Requests per minute.
    #[serde(default)]
    pub rpm_limit: Option<u32>,
    /// Tokens per minute.
    #[serde(default)]
    pub tpm_limit: Option<u32>,
    /// Requests per minute, per model group.
    #[serde(default)]
    pub model_rpm_limit: BTreeMap<String, u32>,
    /// Tokens per minute, per model group.
    #[serde(default)]
    pub model_tpm_limit: BTreeMap<String, u32>,
    /// Requests in flight at once.
    #[serde(default)]
    pub max_parallel_requests: Option<u32>,
    /// Free-form metadata, returned as given.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// A blocked key or team is refused.
    #[serde(default)]
    pub blocked: bool,
}

impl Limits {
    /// Whether `model` is allowed (an empty list allows every model).
    pub fn allows(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// A stored virtual key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// A stable id: the hash of the key's first value, kept when the key is
    /// regenerated, so that spend and limits follow the key.
    pub key_id: String,
    /// SHA-256 of the key (hex).
    pub token: String,
    /// `sk-...` and the key's last four characters.
    pub key_name: String,
    /// A human name.
    #[serde(default)]
    pub key_alias: Option<String>,
    /// The team the key belongs to.
    #[serde(default)]
    pub team_id: Option<String>,
    /// The user the key was issued to.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Expiry, Unix milliseconds.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Declared in the configuration file (not changeable through the API).
    #[serde(default)]
    pub from_config: bool,
    /// Bumped by every change: a change is stored only over the revision it
    /// was made from, so two concurrent changes cannot overwrite each other.
    #[serde(default)]
    pub revision: u64,
    /// Limits.
    #[serde(flatten)]
    pub limits: Limits,
}

/// The outcome of a revision-checked key or team write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWrite {
    /// Stored.
    Done,
    /// The key is gone (deleted, or regenerated to another value).
    Missing,
    /// The key changed since it was read: read it again.
    Changed,
    /// The new value (or new team id) is another's.
    Taken,
}

impl KeyRecord {
    /// A new key for `plaintext`, created at `now_ms`, with no limits yet.
    pub fn new(plaintext: &str, now_ms: i64, from_config: bool) -> Self {
        let token = hash_key(plaintext);
        KeyRecord {
            key_id: token.clone(),
            token,
            key_name: display_name(plaintext),
            key_alias: None,
            team_id: None,
            user_id: None,
            expires_at: None,
            created_at: now_ms,
            from_config,
            revision: 0,
            limits: Limits::default(),
        }
    }
}

/// A stored team: limits and a budget shared by its keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamRecord {
    /// The team's id.
    pub team_id: String,
    /// A human name.
    #[serde(default)]
    pub team_alias: Option<String>,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Declared in the configuration file.
    #[serde(default)]
    pub from_config: bool,
    /// Bumped by every change, as a key's [`KeyRecord::revision`].
    #[serde(default)]
    pub revision: u64,
    /// What its spend and limit counters are kept under: set at creation
    /// through the API (the id and a random suffix), so that a team made
    /// again under a deleted one's id starts with nothing spent. `None`
    /// (teams from the configuration, or stored before): the team id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_id: Option<String>,
    /// Limits.
    #[serde(flatten)]
    pub limits: Limits,
}

impl TeamRecord {
    /// The id its spend and limit counters are kept under.
    pub fn ledger(&self) -> &str {
        self.ledger_id.as_deref().unwrap_or(&self.team_id)
    }
}

/// A stored end user (LiteLLM's "customer"): the `user` a request names,
/// with its own budget, limits and block, whichever key pays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndUserRecord {
    /// The end user's id, as requests send it in `user`.
    pub user_id: String,
    /// A human name.
    #[serde(default)]
    pub alias: Option<String>,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Bumped by every change, as a team's [`TeamRecord::revision`].
    #[serde(default)]
    pub revision: u64,
    /// Budget (replacing `policy.end_user_budget` for this end user),
    /// per-minute limits, in-flight cap, metadata and block. Model lists
    /// and per-model limits are not used.
    #[serde(flatten)]
    pub limits: Limits,
}

/// The longest end-user id the admin API stores.
pub const MAX_END_USER_ID_BYTES: usize = 256;

/// Sets one field of an end user from a `/customer/new` or
/// `/customer/update` body (`user_id` is handled by the caller).
pub fn apply_end_user_field(record: &mut EndUserRecord, name: &str, value: &Value) -> Result<(), FieldError> {
    match name {
        "alias" => record.alias = optional_string(name, value)?,
        // LiteLLM fields with no use here, sent empty by typed clients.
        name if END_USER_EMPTY_OK.contains(&name) && is_default_value(value) => {}
        "models" | "model_rpm_limit" | "model_tpm_limit" => {
            return Err(field_error(
                name,
                format!("'{name}' is not kept for end users: limit models on the keys that serve them."),
            ));
        }
        "soft_budget" => {
            return Err(field_error(
                name,
                "'soft_budget' is not kept for end users: set one on the keys, teams or users that serve them.",
            ));
        }
        _ => {
            if !apply_limit_field(&mut record.limits, name, value)? {
                return Err(field_error(name, format!("Unknown field '{name}'.")));
            }
        }
    }
    Ok(())
}

/// LiteLLM end-user fields accepted when empty (null, `[]`, `{}`, `""`).
const END_USER_EMPTY_OK: &[&str] = &[
    "budget_id",
    "soft_budget",
    "model_max_budget",
    "allowed_model_region",
    "default_model",
    "spend",
    "object_permission",
];

/// Records stored with a revision check: a change is written only over the
/// revision it was made from, and never over another record made again
/// under the same id.
pub(crate) trait Revisioned {
    /// The record's id in its store.
    fn id(&self) -> &str;
    /// Its revision.
    fn revision(&self) -> u64;
    /// Its creation time, which tells a record made again apart.
    fn created_at(&self) -> i64;
}

impl Revisioned for TeamRecord {
    fn id(&self) -> &str {
        &self.team_id
    }
    fn revision(&self) -> u64 {
        self.revision
    }
    fn created_at(&self) -> i64 {
        self.created_at
    }
}

impl Revisioned for EndUserRecord {
    fn id(&self) -> &str {
        &self.user_id
    }
    fn revision(&self) -> u64 {
        self.revision
    }
    fn created_at(&self) -> i64 {
        self.created_at
    }
}

/// Whether `record` may be written over `current` (`None`: stored nothing):
/// `Some(outcome)` when it may not.
pub(crate) fn refuse_write<T: Revisioned>(current: Option<&T>, record: &T, replace: bool) -> Option<KeyWrite> {
    match (current, replace) {
        (Some(_), false) => Some(KeyWrite::Taken),
        (None, true) => Some(KeyWrite::Missing),
        // Another revision, or another record under the same id (deleted
        // and made again): not the one the change was made from.
        (Some(current), true)
            if record.revision() == 0
                || current.revision().saturating_add(1) != record.revision()
                || current.created_at() != record.created_at() =>
        {
            Some(KeyWrite::Changed)
        }
        _ => None,
    }
}

/// An internal user (LiteLLM's `/user/*`): limits, a budget and a model
/// list shared by every key whose `user_id` names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's id, as keys name it in `user_id`.
    pub user_id: String,
    /// A human name.
    #[serde(default)]
    pub user_alias: Option<String>,
    /// The user's e-mail address, returned as given.
    #[serde(default)]
    pub user_email: Option<String>,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Bumped by every change, as a team's [`TeamRecord::revision`].
    #[serde(default)]
    pub revision: u64,
    /// What its spend and limit counters are kept under: the id and a
    /// random suffix, so that a user made again under a deleted one's id
    /// starts with nothing spent.
    pub ledger_id: String,
    /// Limits.
    #[serde(flatten)]
    pub limits: Limits,
}

impl Revisioned for UserRecord {
    fn id(&self) -> &str {
        &self.user_id
    }
    fn revision(&self) -> u64 {
        self.revision
    }
    fn created_at(&self) -> i64 {
        self.created_at
    }
}

/// Sets one field of a user from a `/user/new` or `/user/update` body
/// (`user_id` and `auto_create_key` are handled by the caller).
pub fn apply_user_field(record: &mut UserRecord, name: &str, value: &Value) -> Result<(), FieldError> {
    match name {
        "user_alias" => record.user_alias = optional_string(name, value)?,
        "user_email" => record.user_email = optional_string(name, value)?,
        // Every user may call models; the admin API is the master key's.
        "user_role" => match value {
            Value::Null => {}
            Value::String(role) if role == "internal_user" => {}
            _ => {
                return Err(field_error(
                    name,
                    "Only 'internal_user' is served: users make requests with their keys, and the admin API needs the master key.",
                ));
            }
        },
        name if USER_EMPTY_OK.contains(&name) && is_default_value(value) => {}
        // A new user's spend, as LiteLLM's typed clients send it.
        "spend" if value.as_f64() == Some(0.0) => {}
        _ => {
            if !apply_limit_field(&mut record.limits, name, value)? {
                return Err(field_error(name, format!("Unknown field '{name}'.")));
            }
        }
    }
    Ok(())
}

/// LiteLLM user fields accepted when empty or at LiteLLM's default
/// ([`is_default_value`]).
const USER_EMPTY_OK: &[&str] = &[
    "teams",
    "team_id",
    "organizations",
    "password",
    "metadata_fields",
    "send_invite_email",
    "organization_id",
    "sso_user_id",
    "object_permission",
    "spend",
    "budget_id",
    "model_max_budget",
    "allowed_cache_controls",
    "guardrails",
    "aliases",
    "config",
    "permissions",
    "prompts",
];

/// An authenticated key with its team and user.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyView {
    /// The key.
    pub key: KeyRecord,
    /// Its team, if it has one.
    pub team: Option<TeamRecord>,
    /// The user its `user_id` names, if that user has a record.
    pub user: Option<UserRecord>,
}

impl KeyView {
    /// The model lists that bound the key: its own, its team's and its
    /// user's, each empty list meaning every model.
    pub fn model_lists(&self) -> [&[String]; 3] {
        [
            &self.key.limits.models,
            self.team.as_ref().map_or(&[][..], |t| &t.limits.models),
            self.user.as_ref().map_or(&[][..], |u| &u.limits.models),
        ]
    }

    /// Whether the key, its team and its user may call `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.model_lists()
            .iter()
            .all(|models| models.is_empty() || models.iter().any(|m| m == model))
    }

    /// Whether the key, its team and its user may call a model known by
    /// any of `names` (its group, an alias, an access group): each list
    /// that is not empty must hold one of them.
    pub fn allows_any<'a, I>(&self, names: I) -> bool
    where
        I: IntoIterator<Item = &'a str> + Clone,
    {
        self.model_lists()
            .iter()
            .all(|models| models.is_empty() || names.clone().into_iter().any(|n| models.iter().any(|m| m == n)))
    }

    /// The models the key may call: the names every non-empty list holds.
    /// `None` means every model.
    pub fn allowed_models(&self) -> Option<Vec<String>> {
        let mut lists = self.model_lists().into_iter().filter(|m| !m.is_empty());
        let first = lists.next()?;
        let rest: Vec<&[String]> = lists.collect();
        Some(
            first
                .iter()
                .filter(|m| rest.iter().all(|other| other.contains(m)))
                .cloned()
                .collect(),
        )
    }
}

/// A field of an admin request that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    /// The field, e.g. `rpm_limit`.
    pub param: String,
    /// What is wrong.
    pub message: String,
}

fn field_error(param: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        param: param.to_owned(),
        message: message.into(),
    }
}

fn positive_u32(name: &str, value: &Value) -> Result<u32, FieldError> {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| field_error(name, format!("'{name}' must be a positive integer.")))
}

fn optional<T>(value: &Value, parse: impl FnOnce(&Value) -> Result<T, FieldError>) -> Result<Option<T>, FieldError> {
    if value.is_null() {
        Ok(None)
    } else {
        parse(value).map(Some)
    }
}

fn optional_string(name: &str, value: &Value) -> Result<Option<String>, FieldError> {
    optional(value, |v| {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| field_error(name, format!("'{name}' must be a string.")))
    })
}

fn per_model(name: &str, value: &Value) -> Result<BTreeMap<String, u32>, FieldError> {
    if value.is_null() {
        return Ok(BTreeMap::new());
    }
    let Value::Object(map) = value else {
        return Err(field_error(name, format!("'{name}' must map model names to limits.")));
    };
    map.iter()
        .map(|(model, v)| Ok((model.clone(), positive_u32(&format!("{name}.{model}"), v)?)))
        .collect()
}

/// Sets one limit field from an admin request. `Ok(false)`: not a limit field.
pub fn apply_limit_field(limits: &mut Limits, name: &str, value: &Value) -> Result<bool, FieldError> {
    match name {
        "models" => {
            limits.models = match value {
                Value::Null => Vec::new(),
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        item.as_str()
                            .filter(|s| !s.trim().is_empty())
                            .map(str::to_owned)
                            .ok_or_else(|| {
                                field_error(&format!("models[{i}]"), "Each model must be a non-empty string.")
                            })
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(field_error(name, "'models' must be a list of model names.")),
            };
        }
        "max_budget" => {
            limits.max_budget = optional(value, |v| {
                v.as_f64()
                    .filter(|b| b.is_finite() && *b >= 0.0)
                    .ok_or_else(|| field_error(name, "'max_budget' must be a non-negative number of USD."))
            })?;
        }
        "soft_budget" => {
            limits.soft_budget = optional(value, |v| {
                v.as_f64()
                    .filter(|b| b.is_finite() && *b >= 0.0)
                    .ok_or_else(|| field_error(name, "'soft_budget' must be a non-negative number of USD."))
            })?;
        }
        // As in LiteLLM, `null` leaves the period as it is (a typed client
        // sends its default with every update); "-1" clears it.
        "budget_duration" => match value {
            Value::Null => {}
            Value::String(s) if s == "-1" => limits.budget_duration = None,
            _ => {
                limits.budget_duration = Some(value.as_str().and_then(BudgetPeriod::parse).ok_or_else(|| {
                    field_error(
                        name,
                        "'budget_duration' must be one of daily (1d, 24h), weekly (7d), monthly (1mo, 30d), or \"-1\" for none.",
                    )
                })?);
            }
        },
        "rpm_limit" => limits.rpm_limit = optional(value, |v| positive_u32(name, v))?,
        "tpm_limit" => limits.tpm_limit = optional(value, |v| positive_u32(name, v))?,
        "max_parallel_requests" => limits.max_parallel_requests = optional(value, |v| positive_u32(name, v))?,
        "model_rpm_limit" => limits.model_rpm_limit = per_model(name, value)?,
        "model_tpm_limit" => limits.model_tpm_limit = per_model(name, value)?,
        "metadata" => {
            limits.metadata = match value {
                Value::Null => Map::new(),
                Value::Object(map) => map.clone(),
                _ => return Err(field_error(name, "'metadata' must be an object.")),
            };
        }
        "blocked" => {
            limits.blocked = optional(value, |v| {
                v.as_bool()
                    .ok_or_else(|| field_error(name, "'blocked' must be true or false."))
            })?
            .unwrap_or(false);
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Sets one field of a key from a `/key/generate` or `/key/update` body.
/// `key` and `duration` are handled by the caller.
pub fn apply_key_field(record: &mut KeyRecord, name: &str, value: &Value) -> Result<(), FieldError> {
    match name {
        // LiteLLM's key client sends the admin's own key in the body.
        "api_key" => {}
        // LiteLLM fields Switchyard has no use for, sent empty by typed
        // clients: nothing to do; with a value they are refused below.
        name if LITELLM_EMPTY_OK.contains(&name) && is_default_value(value) => {}
        // A new key's spend, as LiteLLM's `GenerateKeyRequest` sends it (an
        // update's `spend: 0`, LiteLLM's reset, is refused by the caller).
        "spend" if value.as_f64() == Some(0.0) => {}
        // LiteLLM's typed key clients send its default type.
        "key_type" if value.is_null() || value == "default" || value == "llm_api" => {}
        "key_alias" => record.key_alias = optional_string(name, value)?,
        "team_id" => record.team_id = optional_string(name, value)?,
        "user_id" => record.user_id = optional_string(name, value)?,
        _ => {
            if !apply_limit_field(&mut record.limits, name, value)? {
                return Err(field_error(name, format!("Unknown field '{name}'.")));
            }
        }
    }
    Ok(())
}

/// LiteLLM key fields accepted when empty or at LiteLLM's default
/// ([`is_default_value`]), as its typed clients send them.
const LITELLM_EMPTY_OK: &[&str] = &[
    "auto_rotate",
    "rotation_interval",
    "agent_id",
    "policies",
    "prompts",
    "router_settings",
    "access_group_ids",
    "allowed_passthrough_routes",
    "allowed_vector_store_indexes",
    "rpm_limit_type",
    "tpm_limit_type",
    "project_id",
    "tags",
    "aliases",
    "config",
    "permissions",
    "spend",
    "budget_id",
    "guardrails",
    "allowed_cache_controls",
    "model_max_budget",
    "send_invite_email",
    "organization_id",
    "object_permission",
    "enforced_params",
    "allowed_routes",
];

/// Whether a field Switchyard does not implement is sent as nothing: null,
/// `[]`, `{}`, `""` or `false` (the defaults LiteLLM's typed clients send,
/// e.g. `send_invite_email: false`). A number is never nothing: a limit of
/// 0 means something, and is refused rather than ignored.
fn is_default_value(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(_) => false,
    }
}

/// Sets one field of a team from a `/team/new` or `/team/update` body.
pub fn apply_team_field(record: &mut TeamRecord, name: &str, value: &Value) -> Result<(), FieldError> {
    match name {
        // LiteLLM's team client sends the admin's own key in the body.
        "api_key" => {}
        // LiteLLM team fields Switchyard has no use for, sent empty by typed
        // clients: nothing to do; with a value they are refused below.
        name if TEAM_EMPTY_OK.contains(&name) && is_default_value(value) => {}
        "team_alias" => record.team_alias = optional_string(name, value)?,
        _ => {
            if !apply_limit_field(&mut record.limits, name, value)? {
                return Err(field_error(name, format!("Unknown field '{name}'.")));
            }
        }
    }
    Ok(())
}

/// LiteLLM team fields accepted when empty or at LiteLLM's default
/// ([`is_default_value`]).
const TEAM_EMPTY_OK: &[&str] = &[
    "router_settings",
    "access_group_ids",
    "policies",
    "allowed_passthrough_routes",
    "secret_manager_settings",
    "allowed_vector_store_indexes",
    "members_with_roles",
    "members",
    "admins",
    "organization_id",
    "tags",
    "model_aliases",
    "guardrails",
    "prompts",
    "object_permission",
    "team_member_permissions",
    "team_member_budget",
    "team_member_rpm_limit",
    "team_member_tpm_limit",
    "team_member_key_duration",
];

/// Expiry from a `duration` field (`"30d"`, `"1h"`, or `"-1"` or null for
/// none), from `now_ms`. On an update, a null `duration` leaves the expiry
/// as it is (as in LiteLLM): callers skip it.
pub fn expiry_from(value: &Value, now_ms: i64) -> Result<Option<i64>, FieldError> {
    optional(value, |v| match v.as_str() {
        Some("-1") => Ok(None),
        other => other
            .and_then(parse_duration_secs)
            .map(|secs| Some(now_ms.saturating_add(secs.saturating_mul(1000))))
            .ok_or_else(|| {
                field_error(
                    "duration",
                    "'duration' must look like 30s, 15m, 12h or 30d, or be \"-1\" for no expiry.",
                )
            }),
    })
    .map(Option::flatten)
}

/// Whether the configured model name `known` covers `name`: the same name,
/// or a wildcard group's (`openai/*`) matching it, the `*` standing for at
/// least one character.
pub fn names_model(known: &str, name: &str) -> bool {
    if name.contains('*') {
        return known == name;
    }
    match known.split_once('*') {
        None => known == name,
        Some((prefix, suffix)) => {
            name.len() > prefix.len() + suffix.len() && name.starts_with(prefix) && name.ends_with(suffix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_random_and_hashed() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("sk-") && a.len() == 51);
        let h = hash_key(&a);
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&a[3..]));
        assert!(hashes_equal(&h, &hash_key(&a)));
        assert!(!hashes_equal(&h, &hash_key(&b)));
        assert_eq!(display_name("sk-abcdef1234567890ab"), "sk-...90ab");
        // A short key shows a fifth of itself at most.
        assert_eq!(display_name("sk-abcdef1234"), "sk-...34");
        assert_eq!(display_name("abcd1234"), "sk-...4");
    }

    #[test]
    fn limit_fields_are_validated_by_name() {
        let mut limits = Limits::default();
        apply_limit_field(&mut limits, "rpm_limit", &json!(10)).unwrap();
        apply_limit_field(&mut limits, "budget_duration", &json!("1mo")).unwrap();
        apply_limit_field(&mut limits, "models", &json!(["a", "b"])).unwrap();
        apply_limit_field(&mut limits, "model_tpm_limit", &json!({"a": 100})).unwrap();
        assert_eq!(limits.rpm_limit, Some(10));
        assert_eq!(limits.budget_duration, Some(BudgetPeriod::Monthly));
        assert_eq!(limits.model_tpm_limit.get("a"), Some(&100));
        for (field, value, param) in [
            ("rpm_limit", json!(0), "rpm_limit"),
            ("rpm_limit", json!("x"), "rpm_limit"),
            ("max_budget", json!(-1.0), "max_budget"),
            ("budget_duration", json!("2mo"), "budget_duration"),
            ("models", json!(["a", 3]), "models[1]"),
            ("model_rpm_limit", json!({"a": -2}), "model_rpm_limit.a"),
        ] {
            let err = apply_limit_field(&mut limits, field, &value).unwrap_err();
            assert_eq!(err.param, param, "{field} = {value}");
        }
        assert!(!apply_limit_field(&mut limits, "nope", &json!(1)).unwrap());
        apply_limit_field(&mut limits, "rpm_limit", &Value::Null).unwrap();
        assert_eq!(limits.rpm_limit, None);
        // A null period is left as it is (LiteLLM's updates); "-1" clears it.
        apply_limit_field(&mut limits, "budget_duration", &Value::Null).unwrap();
        assert_eq!(limits.budget_duration, Some(BudgetPeriod::Monthly));
        apply_limit_field(&mut limits, "budget_duration", &json!("-1")).unwrap();
        assert_eq!(limits.budget_duration, None);
    }

    #[test]
    fn durations_and_custom_keys() {
        assert_eq!(expiry_from(&json!("1h"), 1_000).unwrap(), Some(3_601_000));
        assert_eq!(expiry_from(&json!("-1"), 1_000).unwrap(), None);
        assert_eq!(expiry_from(&Value::Null, 1_000).unwrap(), None);
        assert_eq!(expiry_from(&json!("soon"), 1_000).unwrap_err().param, "duration");
        assert!(usable_key("sk-production-key-0001"));
        for refused in [
            "sk-clé-de-production-01",
            "sk-with space-in-it-000",
            "sk-short",
            "pk-production-key-0001",
        ] {
            assert!(!usable_key(refused), "{refused}");
        }
    }

    #[test]
    fn team_models_narrow_the_key() {
        let key = KeyRecord {
            key_id: "t".into(),
            token: "t".into(),
            key_name: "sk-...t".into(),
            key_alias: None,
            team_id: Some("team".into()),
            user_id: None,
            expires_at: None,
            created_at: 0,
            from_config: false,
            revision: 0,
            limits: Limits::default(),
        };
        let team = TeamRecord {
            team_id: "team".into(),
            team_alias: None,
            created_at: 0,
            from_config: false,
            revision: 0,
            ledger_id: None,
            limits: Limits {
                models: vec!["a".into()],
                ..Limits::default()
            },
        };
        let view = KeyView {
            key: key.clone(),
            team: Some(team.clone()),
            user: None,
        };
        assert!(view.allows("a"));
        assert!(!view.allows("b"));
        assert_eq!(view.allowed_models(), Some(vec!["a".to_owned()]));
        let mut narrow = key;
        narrow.limits.models = vec!["a".into(), "b".into()];
        let view = KeyView {
            key: narrow,
            team: Some(team),
            user: None,
        };
        assert!(!view.allows("b"));
        assert_eq!(view.allowed_models(), Some(vec!["a".to_owned()]));
    }
}
