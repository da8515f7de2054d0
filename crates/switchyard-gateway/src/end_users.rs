//! The admin API for end users (LiteLLM's `/customer/*`, also served as
//! `/end_user/*`): the `user` a request names, with its own budget,
//! per-minute limits, in-flight cap and block. Every route needs the
//! master key.

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
use serde_json::{Map, Value, json};
use switchyard_policy::{EndUserRecord, PolicyError};

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::policy_admin::{fail, iso, object, reset_at, string_list, usd};
use crate::routes::SharedState;

/// The end-user routes, under both of LiteLLM's prefixes.
pub(crate) fn routes() -> Router<SharedState> {
    let mut router = Router::new();
    for prefix in ["/customer", "/end_user"] {
        router = router
            .route(&format!("{prefix}/new"), post(new_end_user))
            .route(&format!("{prefix}/info"), get(end_user_info))
            .route(&format!("{prefix}/update"), post(update_end_user))
            .route(&format!("{prefix}/delete"), post(delete_end_users))
            .route(&format!("{prefix}/list"), get(list_end_users))
            .route(&format!("{prefix}/block"), post(block_end_users))
            .route(&format!("{prefix}/unblock"), post(unblock_end_users));
    }
    router
}

/// An end user as the API shows it: its record (if any), the budget that
/// holds it (its own, else `policy.end_user_budget`), and its spend.
async fn end_user_json(state: &SharedState, id: &str, record: Option<&EndUserRecord>) -> Result<Value, PolicyError> {
    let (spend, total) = state.policy.end_user_spend(id, record).await?;
    let limits = record.map(|r| &r.limits);
    let own_budget = limits.and_then(|l| l.max_budget);
    let default = state.policy.end_user_budget();
    let (max_budget, duration, source) = match (own_budget, default) {
        (Some(usd), _) => (Some(usd), limits.and_then(|l| l.budget_duration), "end_user"),
        (None, Some(d)) => (Some(d.max_budget), d.budget_duration, "default"),
        (None, None) => (None, None, "none"),
    };
    let has_limits =
        limits.is_some_and(|l| l.rpm_limit.is_some() || l.tpm_limit.is_some() || l.max_parallel_requests.is_some());
    let budget_table = if max_budget.is_some() || has_limits {
        json!({
            "max_budget": max_budget,
            "budget_duration": duration,
            "rpm_limit": limits.and_then(|l| l.rpm_limit),
            "tpm_limit": limits.and_then(|l| l.tpm_limit),
            "max_parallel_requests": limits.and_then(|l| l.max_parallel_requests),
        })
    } else {
        Value::Null
    };
    Ok(json!({
        "user_id": id,
        "alias": record.and_then(|r| r.alias.clone()),
        "blocked": record.is_some_and(|r| r.limits.blocked),
        "spend": usd(spend),
        "total_spend": usd(total),
        "budget_source": source,
        "budget_reset_at": if max_budget.is_some() { reset_at(duration) } else { Value::Null },
        "litellm_budget_table": budget_table,
        "metadata": limits.map_or_else(|| Value::Object(Map::new()), |l| Value::Object(l.metadata.clone())),
        "created": iso(record.map(|r| r.created_at)),
        "has_record": record.is_some(),
    }))
}

async fn respond(state: &SharedState, record: &EndUserRecord) -> Response {
    match end_user_json(state, &record.user_id, Some(record)).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => fail(e),
    }
}

/// `POST /customer/new`.
async fn new_end_user(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    let body = match object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state.policy.new_end_user(&body).await {
        Ok(record) => {
            tracing::info!(end_user = %record.user_id, "end user created");
            respond(&state, &record).await
        }
        Err(e) => fail(e),
    }
}

/// `GET /customer/info?end_user_id=`: an end user with a record, or one
/// without a record that has spent.
async fn end_user_info(State(state): State<SharedState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(id) = q.get("end_user_id").or_else(|| q.get("user_id")) else {
        return ApiError::InvalidField {
            param: Some("end_user_id".into()),
            message: "The query parameter 'end_user_id' is required.".into(),
        }
        .into_response();
    };
    let record = match state.policy.end_user(id).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    match end_user_json(&state, id, record.as_ref()).await {
        Ok(v) if record.is_none() && v["total_spend"].as_f64().is_none_or(|t| t == 0.0) => {
            fail(PolicyError::NotFound { what: "End user" })
        }
        Ok(v) => Json(v).into_response(),
        Err(e) => fail(e),
    }
}

/// `POST /customer/update`.
async fn update_end_user(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    let body = match object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match state.policy.update_end_user(&body).await {
        Ok(record) => respond(&state, &record).await,
        Err(e) => fail(e),
    }
}

/// `POST /customer/delete` with `user_ids`.
async fn delete_end_users(State(state): State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    let ids = match object(body).and_then(|b| string_list(&b, "user_ids")) {
        Ok(ids) => ids,
        Err(r) => return r,
    };
    match state.policy.delete_end_users(&ids).await {
        Ok(deleted) => Json(json!({"deleted_customers": deleted.len(), "user_ids": deleted})).into_response(),
        Err(e) => fail(e),
    }
}

/// `GET /customer/list`: every end user with a record.
async fn list_end_users(State(state): State<SharedState>) -> Response {
    let records = match state.policy.list_end_users().await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut out = Vec::with_capacity(records.len());
    for record in &records {
        match end_user_json(&state, &record.user_id, Some(record)).await {
            Ok(v) => out.push(v),
            Err(e) => return fail(e),
        }
    }
    Json(Value::Array(out)).into_response()
}

/// `POST /customer/block` with `user_ids`: their requests are refused,
/// whichever key sends them.
async fn block_end_users(state: State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    set_blocked(state, body, true).await
}

/// `POST /customer/unblock` with `user_ids`.
async fn unblock_end_users(state: State<SharedState>, JsonBody(body): JsonBody<Value>) -> Response {
    set_blocked(state, body, false).await
}

async fn set_blocked(State(state): State<SharedState>, body: Value, blocked: bool) -> Response {
    let ids = match object(body).and_then(|b| string_list(&b, "user_ids")) {
        Ok(ids) => ids,
        Err(r) => return r,
    };
    match state.policy.set_end_users_blocked(&ids, blocked).await {
        Ok(records) => {
            let mut out = Vec::with_capacity(records.len());
            for record in &records {
                match end_user_json(&state, &record.user_id, Some(record)).await {
                    Ok(v) => out.push(v),
                    Err(e) => return fail(e),
                }
            }
            let field = if blocked { "blocked_users" } else { "unblocked_users" };
            Json(json!({ field: out })).into_response()
        }
        Err(e) => fail(e),
    }
}
