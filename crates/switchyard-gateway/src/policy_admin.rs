//! The admin API for keys, teams and spend, shaped like LiteLLM's so that
//! existing tooling ports over. Every route needs the master key.

#![allow(
    clippy::result_large_err,
    reason = "helpers return the finished error response; admin routes are not a hot path"
)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use switchyard_policy::period::{date_of, day_of_date, day_of_ms, now_ms};
use switchyard_policy::{KeyRecord, LogFilter, Nanos, PolicyError, Principal, TeamRecord, to_usd};

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::routes::SharedState;

/// `GET /key/info`, which a virtual key may also call about itself (the
/// caller adds authentication).
pub fn key_info_route() -> Router<SharedState> {
    Router::new().route("/key/info", get(key_info))
}

/// The admin routes (the caller adds the master-key check).
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/key/generate", post(generate_key))
        .route("/key/update", post(update_key))
        .route("/key/block", post(block_key))
        .route("/key/unblock", post(unblock_key))
        .route("/key/delete", post(delete_keys))
        .route("/key/list", get(list_keys))
        .route("/key/regenerate", post(regenerate_key))
        .route("/key/{key}/regenerate", post(regenerate_key_at))
        .route("/team/new", post(new_team))
        .route("/team/info", get(team_info))
        .route("/team/update", post(update_team))
        .route("/team/block", post(block_team))
        .route("/team/unblock", post(unblock_team))
        .route("/team/delete", post(delete_teams))
        .route("/team/list", get(list_teams))
        .route("/spend/keys", get(spend_keys))
        .route("/spend/teams", get(spend_teams))
        .route("/spend/models", get(spend_models))
        .route("/spend/tags", get(spend_tags))
        .route("/spend/logs", get(spend_logs))
        .route("/admin/policy", get(policy_status))
        .merge(crate::end_users::routes())
        .merge(crate::users::routes())
}

pub(crate) fn fail(e: PolicyError) -> Response {
    ApiError::Policy(e).into_response()
}

pub(crate) fn object(body: Value) -> Result<Map<String, Value>, Response> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::InvalidField {
            param: None,
            message: "The body must be a JSON object.".into(),
        }
        .into_response()),
    }
}

pub(crate) fn iso(ms: Option<i64>) -> Value {
    ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or(Value::Null, |t| Value::String(t.to_string()))
}

/// A key as the API shows it (never its plaintext).
pub(crate) fn key_json(key: &KeyRecord) -> Value {
    let mut v = serde_json::to_value(key).unwrap_or_default();
    v["expires"] = iso(key.expires_at);
    v["created"] = iso(Some(key.created_at));
    v
}

fn team_json(team: &TeamRecord) -> Value {
    let mut v = serde_json::to_value(team).unwrap_or_default();
    v["created"] = iso(Some(team.created_at));
    // Where its spend is kept is the gateway's own business.
    if let Some(fields) = v.as_object_mut() {
        fields.remove("ledger_id");
    }
    v
}

pub(crate) fn usd(nanos: Nanos) -> Value {
    json!(to_usd(nanos))
}

/// Start of the next budget period, for `budget_reset_at`.
pub(crate) fn reset_at(period: Option<switchyard_policy::period::BudgetPeriod>) -> Value {
    period.map_or(Value::Null, |p| {
        let day = p.next_start(day_of_ms(now_ms()));
        Value::String(format!("{}T00:00:00Z", date_of(day)))
    })
}

async fn generate_key(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    let body = match object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state.policy.generate_key(&body).await {
        Ok((plaintext, record)) => {
            tracing::info!(key_id = %record.key_id, key_name = %record.key_name, "key generated");
            let mut v = key_json(&record);
            v["key"] = Value::String(plaintext);
            Json(v).into_response()
        }
        Err(e) => fail(e),
    }
}

/// The master key reads any key's info (`?key=` the key, its hash or its
/// id); a virtual key reads its own, with `key` left out or naming itself.
async fn key_info(
    State(state): State<SharedState>,
    principal: Option<Extension<Principal>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let own = match principal.map(|Extension(p)| p) {
        Some(Principal::Master) => None,
        Some(Principal::Key(view)) => Some(view),
        _ => {
            return ApiError::Forbidden(
                "The admin API needs a master key: set policy.master_key or SWITCHYARD_MASTER_KEY.".into(),
            )
            .into_response();
        }
    };
    let reference = match (q.get("key"), &own) {
        (Some(reference), Some(view)) => {
            let names_itself = reference == &view.key.key_id
                || reference == &view.key.token
                || switchyard_policy::key::hash_key(reference) == view.key.token;
            if !names_itself {
                return ApiError::Forbidden("A virtual key may read only its own info.".into()).into_response();
            }
            view.key.token.clone()
        }
        (None, Some(view)) => view.key.token.clone(),
        (Some(reference), None) => reference.clone(),
        (None, None) => {
            return ApiError::InvalidField {
                param: Some("key".into()),
                message: "The query parameter 'key' (the key or its hash) is required.".into(),
            }
            .into_response();
        }
    };
    let record = match state.policy.find_key(&reference).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let (spend, total) = match state.policy.key_spend(&record).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let mut info = key_json(&record);
    info["spend"] = usd(spend);
    info["total_spend"] = usd(total);
    info["budget_reset_at"] = reset_at(record.limits.budget_duration);
    Json(json!({"key": record.token, "info": info})).into_response()
}

async fn update_key(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    let body = match object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state.policy.update_key(&body).await {
        Ok(record) => Json(key_json(&record)).into_response(),
        Err(e) => fail(e),
    }
}

/// `{id_field: …, "blocked": blocked}` from a block or unblock request's
/// body, which names the key or team by `id_field` alone.
fn blocking(body: Value, id_field: &str, blocked: bool) -> Result<Map<String, Value>, Response> {
    let body = object(body)?;
    let Some(id) = body.get(id_field).filter(|v| v.is_string()) else {
        return Err(ApiError::InvalidField {
            param: Some(id_field.into()),
            message: format!("'{id_field}' is required."),
        }
        .into_response());
    };
    Ok(Map::from_iter([
        (id_field.to_owned(), id.clone()),
        ("blocked".to_owned(), Value::Bool(blocked)),
    ]))
}

/// `POST /key/block` (LiteLLM's): refuse a key's requests without deleting it.
async fn block_key(state: State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    set_key_blocked(state, body, true).await
}

/// `POST /key/unblock`.
async fn unblock_key(state: State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    set_key_blocked(state, body, false).await
}

async fn set_key_blocked(State(state): State<SharedState>, body: Value, blocked: bool) -> Response {
    match blocking(body, "key", blocked) {
        Ok(update) => match state.policy.update_key(&update).await {
            Ok(record) => Json(key_json(&record)).into_response(),
            Err(e) => fail(e),
        },
        Err(r) => r,
    }
}

/// `POST /team/block` (LiteLLM's): refuse the requests of every key of a team.
async fn block_team(state: State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    set_team_blocked(state, body, true).await
}

/// `POST /team/unblock`.
async fn unblock_team(state: State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    set_team_blocked(state, body, false).await
}

async fn set_team_blocked(State(state): State<SharedState>, body: Value, blocked: bool) -> Response {
    match blocking(body, "team_id", blocked) {
        Ok(update) => match state.policy.update_team(&update).await {
            Ok(team) => Json(team_json(&team)).into_response(),
            Err(e) => fail(e),
        },
        Err(r) => r,
    }
}

pub(crate) fn string_list(body: &Map<String, Value>, field: &str) -> Result<Vec<String>, Response> {
    match body.get(field) {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::InvalidField {
                        param: Some(format!("{field}[{i}]")),
                        message: format!("'{field}[{i}]' must be a string."),
                    }
                    .into_response()
                })
            })
            .collect(),
        _ => Err(ApiError::InvalidField {
            param: Some(field.into()),
            message: format!("'{field}' must be a list."),
        }
        .into_response()),
    }
}

async fn delete_keys(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    let mut body = match object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    // LiteLLM's client sends both lists, one of them null.
    body.retain(|_, v| !v.is_null());
    let mut keys = match body.contains_key("keys") || !body.contains_key("key_aliases") {
        true => match string_list(&body, "keys") {
            Ok(k) => k,
            Err(r) => return r,
        },
        false => Vec::new(),
    };
    // Keys named by alias: each alias must name at least one, and names
    // every key that has it (stores from before aliases were unique may
    // hold several).
    if body.contains_key("key_aliases") {
        let aliases = match string_list(&body, "key_aliases") {
            Ok(a) => a,
            Err(r) => return r,
        };
        // Every key, or none deleted: an alias may name one that cannot be read.
        let all = match state.policy.all_keys().await {
            Ok(k) => k,
            Err(e) => return fail(e),
        };
        for alias in aliases {
            let named: Vec<String> = all
                .iter()
                .filter(|k| k.key_alias.as_deref() == Some(alias.as_str()))
                .map(|k| k.token.clone())
                .collect();
            if named.is_empty() {
                return fail(switchyard_policy::PolicyError::NotFound { what: "Key" });
            }
            keys.extend(named);
        }
    }
    match state.policy.delete_keys(&keys).await {
        Ok(deleted) => Json(json!({"deleted_keys": deleted})).into_response(),
        Err(e) => fail(e),
    }
}

/// The query parameters `/key/list` reads.
const KEY_LIST_FILTERS: &[&str] = &[
    "team_id",
    "key_alias",
    "user_id",
    "key_hash",
    "return_full_object",
    "page",
    "size",
];

/// A 400 for the first query parameter of `q` that `route` does not read:
/// a filter not applied would answer with every record.
pub(crate) fn unread_parameter(q: &HashMap<String, String>, route: &str, reads: &[&str]) -> Option<Response> {
    let name = q.keys().find(|k| !reads.contains(&k.as_str()))?;
    let message = if reads.is_empty() {
        format!("Unknown parameter '{name}'; {route} takes none.")
    } else {
        format!("Unknown parameter '{name}'; {route} reads {}.", reads.join(", "))
    };
    Some(
        ApiError::InvalidField {
            param: Some(name.clone()),
            message,
        }
        .into_response(),
    )
}

/// Query parameter `name` of `q` as a whole number from 1, if given.
pub(crate) fn page_number(q: &HashMap<String, String>, name: &str) -> Result<Option<usize>, Response> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::InvalidField {
                param: Some(name.to_owned()),
                message: format!("'{name}' must be a whole number from 1."),
            }
            .into_response()),
        },
    }
}

async fn list_keys(State(state): State<SharedState>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(refused) = unread_parameter(&q, "/key/list", KEY_LIST_FILTERS) {
        return refused;
    }
    let number = |name: &str| page_number(&q, name);
    let (page, size) = match (number("page"), number("size")) {
        (Ok(p), Ok(s)) => (p.unwrap_or(1), s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let keys = match state.policy.list_keys().await {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let keys: Vec<&KeyRecord> = keys
        .iter()
        .filter(|k| q.get("team_id").is_none_or(|t| k.team_id.as_ref() == Some(t)))
        .filter(|k| q.get("key_alias").is_none_or(|a| k.key_alias.as_ref() == Some(a)))
        .filter(|k| q.get("user_id").is_none_or(|u| k.user_id.as_ref() == Some(u)))
        .filter(|k| q.get("key_hash").is_none_or(|h| &k.token == h))
        .collect();
    let total = keys.len();
    // Without `size`, one page holds them all.
    let size = size.unwrap_or(total.max(1));
    let full = match q.get("return_full_object").map(|v| v.to_ascii_lowercase()) {
        None => false,
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => true,
        Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => false,
        Some(_) => {
            return ApiError::InvalidField {
                param: Some("return_full_object".into()),
                message: "'return_full_object' must be true or false.".into(),
            }
            .into_response();
        }
    };
    let items: Vec<Value> = keys
        .iter()
        .skip(page.saturating_sub(1).saturating_mul(size))
        .take(size)
        .map(|k| {
            if full {
                key_json(k)
            } else {
                Value::String(k.token.clone())
            }
        })
        .collect();
    Json(json!({
        "keys": items,
        "total_count": total,
        "current_page": page,
        "total_pages": total.div_ceil(size).max(1),
    }))
    .into_response()
}

async fn regenerate(state: &SharedState, reference: &str, body: &Map<String, Value>) -> Response {
    match state.policy.regenerate_key(reference, body).await {
        Ok((plaintext, record)) => {
            tracing::info!(key_id = %record.key_id, key_name = %record.key_name, "key regenerated");
            let mut v = key_json(&record);
            v["key"] = Value::String(plaintext);
            Json(v).into_response()
        }
        Err(e) => fail(e),
    }
}

async fn regenerate_key(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    let body = match object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(reference) = body.get("key").and_then(Value::as_str).map(str::to_owned) else {
        return ApiError::InvalidField {
            param: Some("key".into()),
            message: "'key' (the key or its hash) is required.".into(),
        }
        .into_response();
    };
    regenerate(&state, &reference, &body).await
}

async fn regenerate_key_at(
    State(state): State<SharedState>,
    key: Result<Path<String>, PathRejection>,
    request: axum::extract::Request,
) -> Response {
    let key = match key {
        Ok(Path(key)) => key,
        Err(e) => {
            return ApiError::InvalidField {
                param: Some("key".into()),
                message: format!("The key in the path is not valid: {}", e.body_text()),
            }
            .into_response();
        }
    };
    // Read within the body size and time limits, like every JSON body.
    let body = match crate::extract::read_body(request, &state).await {
        Ok(bytes) if bytes.trim_ascii().is_empty() => Map::new(),
        Ok(bytes) => match crate::extract::parse::<Value>(&bytes).map(object) {
            Ok(Ok(b)) => b,
            Ok(Err(r)) => return r,
            Err(e) => return e.into_response(),
        },
        Err(e) => return e.into_response(),
    };
    regenerate(&state, &key, &body).await
}

async fn new_team(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    let body = match object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state.policy.new_team(&body).await {
        Ok(team) => Json(team_json(&team)).into_response(),
        Err(e) => fail(e),
    }
}

async fn team_info(State(state): State<SharedState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(id) = q.get("team_id") else {
        return ApiError::InvalidField {
            param: Some("team_id".into()),
            message: "The query parameter 'team_id' is required.".into(),
        }
        .into_response();
    };
    let team = match state.policy.team(id).await {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let (spend, total) = match state.policy.team_spend(&team).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let keys = match state.policy.list_keys().await {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let mut info = team_json(&team);
    info["spend"] = usd(spend);
    info["total_spend"] = usd(total);
    info["budget_reset_at"] = reset_at(team.limits.budget_duration);
    let team_keys: Vec<&KeyRecord> = keys
        .iter()
        .filter(|k| k.team_id.as_deref() == Some(team.team_id.as_str()))
        .collect();
    info["keys"] = team_keys.iter().map(|k| Value::String(k.token.clone())).collect();
    // LiteLLM's `TeamInfoResponseObject`: the keys as objects, beside `team_info`.
    let key_objects: Vec<Value> = team_keys.into_iter().map(key_json).collect();
    Json(json!({"team_id": team.team_id, "team_info": info, "keys": key_objects})).into_response()
}

async fn update_team(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    let body = match object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state.policy.update_team(&body).await {
        Ok(team) => Json(team_json(&team)).into_response(),
        Err(e) => fail(e),
    }
}

async fn delete_teams(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    let body = match object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ids = match string_list(&body, "team_ids") {
        Ok(k) => k,
        Err(r) => return r,
    };
    match state.policy.delete_teams(&ids).await {
        Ok(deleted) => Json(json!({"deleted_teams": deleted})).into_response(),
        Err(e) => fail(e),
    }
}

async fn list_teams(State(state): State<SharedState>, Query(q): Query<HashMap<String, String>>) -> Response {
    // LiteLLM's filters (`user_id`, `organization_id`) are not applied here:
    // refused rather than answered with every team.
    if let Some(refused) = unread_parameter(&q, "/team/list", &[]) {
        return refused;
    }
    match state.policy.list_teams().await {
        Ok(teams) => Json(Value::Array(teams.iter().map(team_json).collect())).into_response(),
        Err(e) => fail(e),
    }
}

async fn spend_keys(State(state): State<SharedState>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(refused) = unread_parameter(&q, "/spend/keys", &[]) {
        return refused;
    }
    match state.policy.spend_keys().await {
        Ok(keys) => Json(Value::Array(
            keys.iter()
                .map(|k| {
                    json!({
                        "key_id": k.key_id,
                        "key_name": k.key_name,
                        "key_alias": k.key_alias,
                        "team_id": k.team_id,
                        "spend": to_usd(k.spend_nanos),
                        "total_spend": to_usd(k.total_spend_nanos),
                        "total_spend_nanos": k.total_spend_nanos,
                    })
                })
                .collect(),
        ))
        .into_response(),
        Err(e) => fail(e),
    }
}

async fn spend_by(state: &SharedState, prefix: &str, field: &str) -> Response {
    spend_by_named(state, prefix, field, |name| (name.to_owned(), None)).await
}

/// `spend_by` with each subject's name shown as `show` says, with an
/// optional flag added to its row.
async fn spend_by_named(
    state: &SharedState,
    prefix: &str,
    field: &str,
    show: impl Fn(&str) -> (String, Option<(&'static str, Value)>),
) -> Response {
    match state.policy.spend_by_prefix(prefix).await {
        Ok(rows) => {
            let mut rows: Vec<Value> = rows
                .iter()
                .map(|(name, spend)| {
                    let (name, flag) = show(name);
                    let mut row = json!({
                        field: name,
                        "total_spend": to_usd(spend.total),
                        "total_spend_nanos": spend.total,
                        "daily": spend.days.iter().map(|(d, v)| (date_of(*d).to_string(), usd(*v))).collect::<Map<_, _>>(),
                    });
                    if let Some((flag, value)) = flag {
                        row[flag] = value;
                    }
                    row
                })
                .collect();
            rows.sort_by(|a, b| a[field].as_str().cmp(&b[field].as_str()));
            Json(Value::Array(rows)).into_response()
        }
        Err(e) => fail(e),
    }
}

/// Spend per team. A team's spend is kept under its ledger id; the spend of
/// a deleted team whose id was used again is its own row, marked
/// `"deleted": true`.
async fn spend_teams(State(state): State<SharedState>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(refused) = unread_parameter(&q, "/spend/teams", &[]) {
        return refused;
    }
    let teams = match state.policy.list_teams().await {
        Ok(teams) => teams,
        Err(e) => return fail(e),
    };
    let ledgers: HashMap<String, String> = teams
        .iter()
        .map(|t| (t.ledger().to_owned(), t.team_id.clone()))
        .collect();
    spend_by_named(&state, "team:", "team_id", |ledger| match ledgers.get(ledger) {
        Some(id) => (id.clone(), None),
        None => {
            let id = ledger
                .rsplit_once('#')
                .filter(|(_, suffix)| suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit()))
                .map_or(ledger, |(id, _)| id);
            (id.to_owned(), Some(("deleted", Value::Bool(true))))
        }
    })
    .await
}

async fn spend_models(State(state): State<SharedState>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(refused) = unread_parameter(&q, "/spend/models", &[]) {
        return refused;
    }
    spend_by(&state, "model:", "model").await
}

/// Spend per request tag (each request is counted under each of its
/// tags), with LiteLLM's `individual_request_tag` beside `tag`.
async fn spend_tags(State(state): State<SharedState>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(refused) = unread_parameter(&q, "/spend/tags", &[]) {
        return refused;
    }
    spend_by_named(&state, "tag:", "tag", |name| {
        (name.to_owned(), Some(("individual_request_tag", json!(name))))
    })
    .await
}

fn parse_day(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, Response> {
    match q.get(name) {
        None => Ok(None),
        Some(text) => text
            .parse::<jiff::civil::Date>()
            .map(|d| Some(day_of_date(d)))
            .map_err(|_| {
                ApiError::InvalidField {
                    param: Some(name.into()),
                    message: format!("'{name}' must be a date like 2026-01-31."),
                }
                .into_response()
            }),
    }
}

/// The query parameters `/spend/logs` reads.
const SPEND_LOG_PARAMS: [&str; 12] = [
    "start_date",
    "end_date",
    "limit",
    "api_key",
    "key",
    "cache_hit",
    "team_id",
    "model",
    "request_id",
    "end_user",
    "user_id",
    "tag",
];

async fn spend_logs(State(state): State<SharedState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut unknown: Vec<&String> = q.keys().filter(|k| !SPEND_LOG_PARAMS.contains(&k.as_str())).collect();
    unknown.sort();
    if let Some(name) = unknown.first() {
        return ApiError::InvalidField {
            param: Some((*name).clone()),
            message: format!(
                "Unknown filter '{name}'; /spend/logs filters by {}.",
                SPEND_LOG_PARAMS.join(", ")
            ),
        }
        .into_response();
    }
    let (start_day, end_day) = match (parse_day(&q, "start_date"), parse_day(&q, "end_date")) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 1000,
        Some(Ok(n)) if n > 0 => n.min(100_000),
        Some(_) => {
            return ApiError::InvalidField {
                param: Some("limit".into()),
                message: "'limit' must be a positive integer.".into(),
            }
            .into_response();
        }
    };
    let key = match q.get("api_key").or_else(|| q.get("key")) {
        Some(reference) => match state.policy.find_key(reference).await {
            Ok(record) => Some(record.key_id),
            // A deleted key's records stay, under its `key_id`: auditing a
            // revoked key is when they are wanted.
            // (`key-…` for a key made by the API, the key's SHA-256 in hex
            // for one that was in the configuration.)
            Err(PolicyError::NotFound { .. }) if reference.starts_with("key-") => Some(reference.clone()),
            Err(PolicyError::NotFound { .. })
                if reference.len() == 64 && reference.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Some(reference.to_ascii_lowercase())
            }
            Err(e) => return fail(e),
        },
        None => None,
    };
    let cache_hit = match q.get("cache_hit").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            return ApiError::InvalidField {
                param: Some("cache_hit".into()),
                message: "'cache_hit' must be true or false.".into(),
            }
            .into_response();
        }
    };
    let filter = LogFilter {
        key,
        cache_hit,
        team_id: q.get("team_id").cloned(),
        model: q.get("model").cloned(),
        request_id: q.get("request_id").cloned(),
        end_user: q.get("end_user").cloned(),
        user_id: q.get("user_id").cloned(),
        tag: q.get("tag").cloned(),
        start_day,
        end_day,
        limit,
    };
    match state.policy.spend_logs(&filter).await {
        Ok(records) => Json(Value::Array(
            records
                .iter()
                .map(|r| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    if let Some(fields) = v.as_object_mut() {
                        fields.remove("team_ledger");
                        fields.remove("user_ledger");
                    }
                    v["spend"] = usd(r.cost_nanos);
                    v["startTime"] = iso(Some(r.ts));
                    v["cache_hit"] = Value::Bool(r.cache_hit);
                    v
                })
                .collect(),
        ))
        .into_response(),
        Err(e) => fail(e),
    }
}

/// `GET /admin/policy`: where policy state lives and the store's health.
async fn policy_status(State(state): State<SharedState>) -> Response {
    let counters = state.policy.counters();
    let redis = state.policy.redis_status().map(|(mode, pending)| {
        json!({
            "failure_mode": mode,
            "pending_spend_records": pending,
        })
    });
    Json(json!({
        "auth_required": state.policy.auth_required(),
        "store": if redis.is_some() { "redis" } else { "local" },
        "redis": redis,
        "fail_open_admissions": counters.fail_open.load(Ordering::Relaxed),
        "fail_closed_refusals": counters.fail_closed.load(Ordering::Relaxed),
        "replayed_spend_records": counters.replayed.load(Ordering::Relaxed),
    }))
    .into_response()
}
