//! The HTTP surface: OpenAI-compatible endpoints (with and without `/v1`),
//! health checks, and JSON errors for unknown routes and methods.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;
use std::time::Instant;
use switchyard_api::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ModelList, ModelObject};
use switchyard_providers::ProviderError;

use switchyard_routing::{ErrorClass, InFlight};
use tower_http::catch_panic::CatchPanicLayer;

use crate::dispatch::{Call, Decision, Failed, Reply, RequestOptions, Served, dispatch};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::metering;
use crate::state::AppState;
use crate::stream::{StreamTracker, sse_response};
use switchyard_policy::Principal;

/// Shared state handed to handlers.
pub type SharedState = Arc<AppState>;

/// Builds the router.
///
/// Layers, outermost first:
/// 1. `CatchPanicLayer` — a panic in a handler becomes a 500 JSON error, never a dead process.
/// 2. `DefaultBodyLimit` — bodies over `server.max_body_bytes` are rejected (413) while
///    [`JsonBody`] reads them.
pub fn router(state: SharedState) -> Router {
    let limit = state.server.max_body_bytes;
    let api = Router::new()
        .route("/chat/completions", post(chat_completions))
        .route("/completions", post(completions))
        .route("/embeddings", post(embeddings))
        .route("/models", get(models))
        .route("/messages", post(crate::messages::messages))
        .route("/messages/count_tokens", post(crate::messages::count_tokens));
    let client = Router::new()
        .merge(api.clone())
        .nest("/v1", api)
        .route_layer(middleware::from_fn_with_state(state.clone(), metering::authenticate));
    let admin = crate::policy_admin::routes()
        .route_layer(middleware::from_fn_with_state(state.clone(), metering::require_master));
    // Read-only status: open on a gateway without keys, the master key's otherwise.
    let status = Router::new()
        .route("/admin/deployments", get(crate::admin::deployments))
        .route("/admin/routers", get(crate::admin::routers))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            metering::require_master_if_set,
        ));
    Router::new()
        .merge(client)
        .merge(admin)
        .merge(status)
        .route("/health/liveness", get(liveness))
        .route("/health/readiness", get(readiness))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("an unexpected error occurred".into()).into_response()
        }))
        .with_state(state)
}

const DEPLOYMENT_HEADER: HeaderName = HeaderName::from_static("x-switchyard-deployment");
const MODEL_HEADER: HeaderName = HeaderName::from_static("x-switchyard-model");
const STRATEGY_HEADER: HeaderName = HeaderName::from_static("x-switchyard-strategy");
const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-switchyard-attempts");
const ROUTER_HEADER: HeaderName = HeaderName::from_static("x-switchyard-router");
const ROUTER_CHOICE_HEADER: HeaderName = HeaderName::from_static("x-switchyard-router-choice");
const ROUTER_SCORES_HEADER: HeaderName = HeaderName::from_static("x-switchyard-router-scores");

/// The routing statistics' class of an upstream failure.
pub(crate) fn error_class(err: &ProviderError) -> ErrorClass {
    match err {
        ProviderError::Status { status: 429, .. } => ErrorClass::RateLimited,
        ProviderError::Status { status: 401 | 403, .. } => ErrorClass::Auth,
        ProviderError::Status { status, .. } if *status >= 500 => ErrorClass::ServerError,
        ProviderError::Status { .. } | ProviderError::InvalidRequest { .. } | ProviderError::Unsupported { .. } => {
            ErrorClass::ClientError
        }
        ProviderError::Timeout(_) => ErrorClass::Timeout,
        ProviderError::Connect(_) => ErrorClass::Connect,
        _ => ErrorClass::Other,
    }
}

/// Adds the routing decision to a response: the model group that answered,
/// the deployment, the strategy and the number of attempts; for a learned
/// router also its name, its choice and each candidate's predicted score.
pub(crate) fn with_route_headers(mut response: Response, decision: &Decision<'_>) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (MODEL_HEADER, decision.group),
        (DEPLOYMENT_HEADER, decision.deployment.name.as_str()),
        (STRATEGY_HEADER, decision.strategy),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    }
    headers.insert(ATTEMPTS_HEADER, HeaderValue::from(decision.attempts));
    if let Some(p) = &decision.prediction {
        for (name, value) in [
            (ROUTER_HEADER, p.router.clone()),
            (ROUTER_CHOICE_HEADER, p.ranked[0].clone()),
            (ROUTER_SCORES_HEADER, p.scores_header()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }
    response
}

/// A failed request's error response, with the number of attempts made.
pub(crate) fn failure_response(mut response: Response, attempts: u32) -> Response {
    if attempts > 0 {
        response
            .headers_mut()
            .insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
    }
    response
}

fn json_bytes(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Follows a served stream for the statistics until it ends.
pub(crate) fn tracker(
    state: &SharedState,
    decision: &Decision<'_>,
    in_flight: InFlight,
    started: Instant,
) -> StreamTracker {
    StreamTracker::new(state.clone(), decision.deployment.id, started, in_flight)
}

/// Asks a streaming upstream for its final usage chunk (to charge the
/// request) when the client did not; `true` when the client must not see it.
fn request_stream_usage(call: &mut Call<'_>) -> bool {
    let options = match call {
        Call::Chat(req) if req.is_stream() && !req.wants_stream_usage() => &mut req.stream_options,
        Call::Completion(req) if req.is_stream() && !req.wants_stream_usage() => &mut req.stream_options,
        _ => return false,
    };
    options.get_or_insert_with(Default::default).include_usage = Some(true);
    true
}

/// Dispatches an OpenAI-format request and renders its answer.
async fn openai(
    state: SharedState,
    principal: &Principal,
    model: &str,
    mut call: Call<'_>,
    mut options: RequestOptions,
) -> Response {
    options.allowed_models = principal.view().and_then(|v| v.allowed_models());
    let meter = match metering::admit(&state, principal, model, &call).await {
        Ok(meter) => meter,
        Err(e) => return e.into_response(),
    };
    let strip_usage = request_stream_usage(&mut call);
    let mut extra_headers = Response::new(axum::body::Body::empty());
    meter.headers(&mut extra_headers);
    let extra_headers = extra_headers.into_parts().0.headers;
    let Served {
        reply,
        decision,
        in_flight,
        started,
    } = match dispatch(&state, model, &mut call, &options).await {
        Ok(served) => served,
        Err(Failed { error, attempts }) => {
            let mut response = failure_response(error.into_response(), attempts);
            response.headers_mut().extend(extra_headers);
            return response;
        }
    };
    let mut response = match reply {
        Reply::Json(answer) => {
            let usage = answer.usage.as_ref().map(metering::openai_usage);
            let record = meter
                .settle(&state, decision.deployment.id, &decision.deployment.name, usage)
                .await;
            let mut response = json_bytes(answer.body);
            metering::cost_header(&mut response, record.as_ref());
            response
        }
        Reply::Chunks(chunks) => {
            let chunks = tracker(&state, &decision, in_flight, started)
                .metered(meter, decision.deployment.name.clone())
                .follow(chunks);
            sse_response(chunks, decision.deployment.name.clone(), strip_usage)
        }
        Reply::Native(_) | Reply::Events(_) => {
            ApiError::Internal("an Anthropic-format answer to an OpenAI-format request".into()).into_response()
        }
    };
    response.headers_mut().extend(extra_headers);
    with_route_headers(response, &decision)
}

async fn chat_completions(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    JsonBody(mut req): JsonBody<ChatCompletionRequest>,
) -> Response {
    if req.messages.is_empty() {
        return ApiError::InvalidField {
            param: Some("messages".into()),
            message: "'messages' must contain at least one message.".into(),
        }
        .into_response();
    }
    let options = match RequestOptions::take(&mut req.extra) {
        Ok(options) => options,
        Err(e) => return e.into_response(),
    };
    let model = std::mem::take(&mut req.model);
    openai(state, &principal, &model, Call::Chat(&mut req), options).await
}

async fn completions(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    JsonBody(mut req): JsonBody<CompletionRequest>,
) -> Response {
    let options = match RequestOptions::take(&mut req.extra) {
        Ok(options) => options,
        Err(e) => return e.into_response(),
    };
    let model = std::mem::take(&mut req.model);
    openai(state, &principal, &model, Call::Completion(&mut req), options).await
}

async fn embeddings(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    JsonBody(mut req): JsonBody<EmbeddingRequest>,
) -> Response {
    if req.input.is_empty() {
        return ApiError::InvalidField {
            param: Some("input".into()),
            message: "'input' must not be empty.".into(),
        }
        .into_response();
    }
    let options = match RequestOptions::take(&mut req.extra) {
        Ok(options) => options,
        Err(e) => return e.into_response(),
    };
    let model = std::mem::take(&mut req.model);
    openai(state, &principal, &model, Call::Embeddings(&mut req), options).await
}

async fn models(State(state): State<SharedState>, Extension(principal): Extension<Principal>) -> Json<ModelList> {
    let view = principal.view();
    Json(ModelList {
        object: "list".into(),
        data: state
            .registry
            .model_names()
            .chain(state.learned.keys().map(String::as_str))
            .filter(|name| view.is_none_or(|v| v.allows(name)))
            .map(|name| ModelObject {
                id: name.to_owned(),
                object: "model".into(),
                created: state.loaded_at,
                owned_by: "switchyard".into(),
            })
            .collect(),
    })
}

async fn liveness() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readiness(State(state): State<SharedState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        Json(json!({
            "status": "ready",
            "models": state.registry.model_names().count(),
            "deployments": state.registry.deployment_count(),
        })),
    )
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::UnknownRoute {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
