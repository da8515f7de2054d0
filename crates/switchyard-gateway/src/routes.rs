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
use switchyard_api::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ModelList, ModelObject};
use switchyard_providers::{ChunkStream, Provider, ProviderClient, ProviderError, ProviderResponse};
use switchyard_routing::{DeploymentInfo, SimpleShuffle};
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::state::AppState;
use crate::stream::sse_response;

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

/// Picks a deployment of `model` and returns it with its client.
pub(crate) fn choose<'s>(
    state: &'s AppState,
    model: &str,
) -> Result<(&'s DeploymentInfo, &'s ProviderClient), ApiError> {
    let group = state.registry.group(model)?;
    let deployment = SimpleShuffle.pick(group)?;
    let client = state
        .provider(deployment.id)
        .ok_or_else(|| ApiError::Internal(format!("no client for deployment {}", deployment.name)))?;
    Ok((deployment, client))
}

/// Adds the routing decision to a response.
pub(crate) fn with_route_headers(mut response: Response, public_model: &str, deployment: &DeploymentInfo) -> Response {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(public_model) {
        headers.insert(MODEL_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&deployment.name) {
        headers.insert(DEPLOYMENT_HEADER, v);
    }
    response
}

fn json_bytes(response: ProviderResponse) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], response.body).into_response()
}

/// Runs a non-streaming or streaming call and renders its answer.
async fn answer<J, S>(
    deployment: &DeploymentInfo,
    public_model: &str,
    stream: bool,
    json_call: impl FnOnce() -> J,
    stream_call: impl FnOnce() -> S,
) -> Result<Response, ApiError>
where
    J: Future<Output = Result<ProviderResponse, ProviderError>>,
    S: Future<Output = Result<ChunkStream, ProviderError>>,
{
    let response = if stream {
        let chunks = stream_call()
            .await
            .map_err(|e| ApiError::upstream(&deployment.name, e))?;
        sse_response(chunks, deployment.name.clone())
    } else {
        json_bytes(json_call().await.map_err(|e| ApiError::upstream(&deployment.name, e))?)
    };
    Ok(with_route_headers(response, public_model, deployment))
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
    let (deployment, client) = choose(&state, &req.model)?;
    let public_model = std::mem::replace(&mut req.model, deployment.model.clone());
    let stream = req.is_stream();
    answer(
        deployment,
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
    let (deployment, client) = choose(&state, &req.model)?;
    let public_model = std::mem::replace(&mut req.model, deployment.model.clone());
    let stream = req.is_stream();
    answer(
        deployment,
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
    let (deployment, client) = choose(&state, &req.model)?;
    let public_model = std::mem::replace(&mut req.model, deployment.model.clone());
    let response = client
        .embeddings(&req)
        .await
        .map_err(|e| ApiError::upstream(&deployment.name, e))?;
    Ok(with_route_headers(json_bytes(response), &public_model, deployment))
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
