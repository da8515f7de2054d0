//! The HTTP surface: OpenAI-compatible endpoints (with and without `/v1`),
//! health checks, and JSON errors for unknown routes and methods.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::time::Instant;
use switchyard_api::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ModelList, ModelObject};
use switchyard_providers::{ChunkStream, Provider, ProviderClient, ProviderError, ProviderResponse};

use switchyard_routing::{DeploymentInfo, ErrorClass, InFlight, Outcome, RouteContext};
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::state::AppState;
use crate::stream::{StreamTracker, sse_response};

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
    Router::new()
        .merge(api.clone())
        .nest("/v1", api)
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

/// A routing decision: the deployment, its client, the strategy that chose it,
/// and the in-flight mark held while the request runs.
pub(crate) struct Route<'s> {
    /// The chosen deployment.
    pub(crate) deployment: &'s DeploymentInfo,
    /// Its client.
    pub(crate) client: &'s ProviderClient,
    /// The strategy's name.
    pub(crate) strategy: &'s str,
    /// Counts the request as in flight until dropped.
    pub(crate) in_flight: InFlight,
    /// When the request was sent on.
    pub(crate) started: Instant,
}

/// Picks a deployment of `model` with the group's strategy.
pub(crate) fn choose<'s>(state: &'s AppState, model: &str) -> Result<Route<'s>, ApiError> {
    let group = state.registry.group(model)?;
    let route = state
        .routes
        .get(model)
        .ok_or_else(|| ApiError::Internal(format!("no route for model group {model}")))?;
    let ctx = RouteContext {
        group,
        candidates: &route.all,
        stats: &state.stats,
        now_ms: state.now_ms(),
        estimated_tokens: 0,
    };
    let index = route.strategy.choose(&ctx, &mut fastrand::Rng::new())?;
    let deployment = group.deployments().get(index).ok_or_else(|| {
        ApiError::Internal(format!(
            "strategy chose deployment {index} of {model}, which does not exist"
        ))
    })?;
    let client = state
        .provider(deployment.id)
        .ok_or_else(|| ApiError::Internal(format!("no client for deployment {}", deployment.name)))?;
    tracing::debug!(model, deployment = %deployment.name, strategy = route.strategy.name(), "routed");
    Ok(Route {
        deployment,
        client,
        strategy: route.strategy.name(),
        in_flight: state.stats.start(deployment.id),
        started: Instant::now(),
    })
}

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

/// Records the outcome of a call on `route` in the live statistics.
pub(crate) fn record<T>(state: &AppState, route: &Route<'_>, result: &Result<T, ProviderError>, tokens: u64) {
    let now = state.now_ms();
    match result {
        Ok(_) => {
            let outcome = Outcome {
                latency: route.started.elapsed(),
                ttft: None,
                tokens,
            };
            state.stats.record_success(route.deployment.id, outcome, now);
        }
        Err(e) => state.stats.record_failure(route.deployment.id, error_class(e), now),
    }
}

/// Adds the routing decision to a response.
pub(crate) fn with_route_headers(
    mut response: Response,
    public_model: &str,
    deployment: &DeploymentInfo,
    strategy: &str,
) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (MODEL_HEADER, public_model),
        (DEPLOYMENT_HEADER, deployment.name.as_str()),
        (STRATEGY_HEADER, strategy),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    }
    headers.insert(ATTEMPTS_HEADER, HeaderValue::from_static("1"));
    response
}

fn json_bytes(response: ProviderResponse) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], response.body).into_response()
}

/// Runs a non-streaming or streaming call and renders its answer.
async fn answer<J, S>(
    state: &SharedState,
    route: Route<'_>,
    public_model: &str,
    stream: bool,
    json_call: impl FnOnce() -> J,
    stream_call: impl FnOnce() -> S,
) -> Result<Response, ApiError>
where
    J: Future<Output = Result<ProviderResponse, ProviderError>>,
    S: Future<Output = Result<ChunkStream, ProviderError>>,
{
    let name = &route.deployment.name;
    let response = if stream {
        let result = stream_call().await;
        if result.is_err() {
            record(state, &route, &result, 0);
        }
        let chunks = result.map_err(|e| ApiError::upstream(name, e))?;
        let (deployment, strategy) = (route.deployment, route.strategy);
        let tracker = StreamTracker::new(state.clone(), deployment.id, route.started, route.in_flight);
        let response = sse_response(chunks, name.clone(), Some(tracker));
        with_route_headers(response, public_model, deployment, strategy)
    } else {
        let result = json_call().await;
        let tokens = result
            .as_ref()
            .ok()
            .and_then(|r| r.usage.as_ref())
            .map_or(0, |u| u.total_tokens);
        record(state, &route, &result, tokens);
        let response = json_bytes(result.map_err(|e| ApiError::upstream(name, e))?);
        with_route_headers(response, public_model, route.deployment, route.strategy)
    };
    Ok(response)
}

async fn chat_completions(
    State(state): State<SharedState>,
    JsonBody(mut req): JsonBody<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::InvalidField {
            param: Some("messages".into()),
            message: "'messages' must contain at least one message.".into(),
        });
    }
    let route = choose(&state, &req.model)?;
    let client = route.client;
    let public_model = std::mem::replace(&mut req.model, route.deployment.model.clone());
    let stream = req.is_stream();
    answer(
        &state,
        route,
        &public_model,
        stream,
        || client.chat(&req),
        || client.chat_stream(&req),
    )
    .await
}

async fn completions(
    State(state): State<SharedState>,
    JsonBody(mut req): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let route = choose(&state, &req.model)?;
    let client = route.client;
    let public_model = std::mem::replace(&mut req.model, route.deployment.model.clone());
    let stream = req.is_stream();
    answer(
        &state,
        route,
        &public_model,
        stream,
        || client.completion(&req),
        || client.completion_stream(&req),
    )
    .await
}

async fn embeddings(
    State(state): State<SharedState>,
    JsonBody(mut req): JsonBody<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    if req.input.is_empty() {
        return Err(ApiError::InvalidField {
            param: Some("input".into()),
            message: "'input' must not be empty.".into(),
        });
    }
    let route = choose(&state, &req.model)?;
    let public_model = std::mem::replace(&mut req.model, route.deployment.model.clone());
    let result = route.client.embeddings(&req).await;
    let tokens = result
        .as_ref()
        .ok()
        .and_then(|r| r.usage.as_ref())
        .map_or(0, |u| u.total_tokens);
    record(&state, &route, &result, tokens);
    let response = result.map_err(|e| ApiError::upstream(&route.deployment.name, e))?;
    Ok(with_route_headers(
        json_bytes(response),
        &public_model,
        route.deployment,
        route.strategy,
    ))
}

async fn models(State(state): State<SharedState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: state
            .registry
            .model_names()
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
