//! The admin API for internal users (LiteLLM's `/user/*`): limits, a
//! budget and a model list shared by every key whose `user_id` names the
//! user. Every route needs the master key.

#![allow(
    clippy::result_large_err,
    reason = "helpers return the finished error response; admin routes are not a hot path"
)]

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use switchyard_policy::{PolicyError, UserRecord};

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::policy_admin::{fail, iso, key_json, object, page_number, reset_at, string_list, unread_parameter, usd};
use crate::routes::SharedState;

/// The user routes.
pub(crate) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/user/new", post(new_user))
        .route("/user/info", get(user_info))
        .route("/user/update", post(update_user))
        .route("/user/delete", post(delete_users))
        .route("/user/list", get(list_users))
}

/// A user as the API shows it, with its spend.
async fn user_json(state: &SharedState, user: &UserRecord) -> Result<Value, PolicyError> {
    let (spend, total) = state.policy.user_spend(user).await?;
    Ok(shown(user, spend, total))
}

/// A user as the API shows it, with the spend given.
fn shown(user: &UserRecord, spend: switchyard_policy::Nanos, total: switchyard_policy::Nanos) -> Value {
    let mut v = serde_json::to_value(user).unwrap_or_default();
    if let Some(fields) = v.as_object_mut() {
        // Where its spend is kept is the gateway's own business.
        fields.remove("ledger_id");
    }
    v["user_role"] = json!("internal_user");
    v["created"] = iso(Some(user.created_at));
    v["spend"] = usd(spend);
    v["total_spend"] = usd(total);
    v["budget_reset_at"] = reset_at(user.limits.budget_duration);
    v
}

/// `POST /user/new`: the user, and its first key (`key`, shown once)
/// unless `auto_create_key` is false.
async fn new_user(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    let body = match object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (user, key) = match state.policy.new_user(&body).await {
        Ok(made) => made,
        Err(e) => return fail(e),
    };
    tracing::info!(user_id = %user.user_id, "user created");
    // A new user has spent nothing (its ledger is its own): no store read
    // stands between the client and its key's plaintext.
    let mut v = shown(&user, 0, 0);
    if let Some((plaintext, record)) = key {
        v["key"] = Value::String(plaintext);
        v["key_name"] = Value::String(record.key_name.clone());
        v["expires"] = iso(record.expires_at);
        v["key_alias"] = json!(record.key_alias);
    }
    Json(v).into_response()
}

/// `GET /user/info?user_id=`: the user, its spend and its keys.
async fn user_info(State(state): State<SharedState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(id) = q.get("user_id") else {
        return ApiError::InvalidField {
            param: Some("user_id".into()),
            message: "The query parameter 'user_id' is required.".into(),
        }
        .into_response();
    };
    let user = match state.policy.user(id).await {
        Ok(u) => u,
        Err(e) => return fail(e),
    };
    let keys = match state.policy.list_keys().await {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    match user_json(&state, &user).await {
        Ok(info) => Json(json!({
            "user_id": user.user_id,
            "user_info": info,
            "keys": keys
                .iter()
                .filter(|k| k.user_id.as_deref() == Some(user.user_id.as_str()))
                .map(key_json)
                .collect::<Vec<_>>(),
            "teams": [],
        }))
        .into_response(),
        Err(e) => fail(e),
    }
}

/// `POST /user/update`.
async fn update_user(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    let body = match object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state.policy.update_user(&body).await {
        Ok(user) => match user_json(&state, &user).await {
            Ok(v) => Json(v).into_response(),
            Err(e) => fail(e),
        },
        Err(e) => fail(e),
    }
}

/// `POST /user/delete` with `user_ids`.
async fn delete_users(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    let ids = match object(body).and_then(|b| string_list(&b, "user_ids")) {
        Ok(ids) => ids,
        Err(r) => return r,
    };
    match state.policy.delete_users(&ids).await {
        Ok(deleted) => Json(json!({"deleted_users": deleted})).into_response(),
        Err(e) => fail(e),
    }
}

/// `GET /user/list`: every user, with its spend, on one page unless
/// `page` and `page_size` say otherwise.
async fn list_users(State(state): State<SharedState>, Query(q): Query<HashMap<String, String>>) -> Response {
    // LiteLLM's other filters (`user_ids`, `role`, `team`…) are not applied
    // here: refused rather than answered with every user.
    if let Some(refused) = unread_parameter(&q, "/user/list", &["page", "page_size"]) {
        return refused;
    }
    let (page, size) = match (page_number(&q, "page"), page_number(&q, "page_size")) {
        (Ok(p), Ok(s)) => (p.unwrap_or(1), s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let users = match state.policy.list_users().await {
        Ok(u) => u,
        Err(e) => return fail(e),
    };
    let total = users.len();
    let size = size.unwrap_or(total.max(1));
    let mut out = Vec::new();
    for user in users
        .iter()
        .skip(page.saturating_sub(1).saturating_mul(size))
        .take(size)
    {
        match user_json(&state, user).await {
            Ok(v) => out.push(v),
            Err(e) => return fail(e),
        }
    }
    Json(json!({"users": out, "total": total, "page": page, "page_size": size,
                "total_pages": total.div_ceil(size).max(1)}))
    .into_response()
}
