//! `POST /v1/images/generations` and `POST /v1/moderations`: OpenAI's image
//! and moderation endpoints, routed, limited and charged like embeddings,
//! answered by OpenAI-format deployments (OpenAI, Azure for images,
//! OpenAI-compatible servers, the mock).

use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use switchyard_api::{ImageGenerationRequest, ModerationRequest};
use switchyard_policy::{Nanos, Principal, TokenUsage};
use switchyard_routing::DeploymentInfo;

use crate::dispatch::Call;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::observe::RequestContext;
use crate::routes::{SharedState, gateway_fields, not_a_learned_router, serve_detached};
use crate::state::AppState;

/// The model OpenAI generates images with when a request names none.
const DEFAULT_IMAGE_MODEL: &str = "dall-e-2";

/// The model OpenAI moderates with when a request names none.
const DEFAULT_MODERATION_MODEL: &str = "omni-moderation-latest";

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        param: Some(param.into()),
        message: message.into(),
    }
}

/// The model a request names, or OpenAI's default for the endpoint when it
/// names none and the gateway serves that name.
fn model_or_default(state: &AppState, model: String, default: &str) -> Result<String, ApiError> {
    if !model.is_empty() {
        return Ok(model);
    }
    let group = state.group_name(default);
    if state.routes.contains_key(group) {
        return Ok(default.to_owned());
    }
    Err(invalid(
        "model",
        format!("'model' is required: OpenAI's default, `{default}`, is not a model this gateway serves."),
    ))
}

/// `POST /v1/images/generations`.
pub(crate) async fn images(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    JsonBody(mut req): JsonBody<ImageGenerationRequest>,
) -> Response {
    if req.prompt.trim().is_empty() {
        return invalid("prompt", "'prompt' must not be empty.").into_response();
    }
    if req.n.is_some_and(|n| !(1..=10).contains(&n)) {
        return invalid("n", "'n' must be from 1 to 10.").into_response();
    }
    if req.extra.get("stream").is_some_and(|s| s != &Value::Bool(false)) {
        return invalid(
            "stream",
            "Streamed image generation (partial images) is not supported here; leave out 'stream'.",
        )
        .into_response();
    }
    let (options, controls) = match gateway_fields(&mut req.extra, &headers) {
        Ok(fields) => fields,
        Err(e) => return e.into_response(),
    };
    let model = match model_or_default(&state, std::mem::take(&mut req.model), DEFAULT_IMAGE_MODEL) {
        Ok(model) => model,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = not_a_learned_router(&state, &principal, &model) {
        return e.into_response();
    }
    serve_detached(
        state,
        principal,
        ctx,
        model,
        req,
        |r| Call::Images(r),
        options,
        controls,
    )
    .await
}

/// `POST /v1/moderations`.
pub(crate) async fn moderations(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    JsonBody(mut req): JsonBody<ModerationRequest>,
) -> Response {
    let empty = match &req.input {
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => true,
    };
    if empty {
        return invalid("input", "'input' must be a non-empty string or array.").into_response();
    }
    let (options, controls) = match gateway_fields(&mut req.extra, &headers) {
        Ok(fields) => fields,
        Err(e) => return e.into_response(),
    };
    let model = match model_or_default(&state, std::mem::take(&mut req.model), DEFAULT_MODERATION_MODEL) {
        Ok(model) => model,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = not_a_learned_router(&state, &principal, &model) {
        return e.into_response();
    }
    serve_detached(
        state,
        principal,
        ctx,
        model,
        req,
        |r| Call::Moderations(r),
        options,
        controls,
    )
    .await
}

/// An image answer's tokens (GPT image models report `input_tokens` and
/// `output_tokens`; DALL·E reports none) and the number of images in it.
pub(crate) fn image_usage(body: &[u8], req: &ImageGenerationRequest) -> (TokenUsage, u64) {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        data: Vec<serde::de::IgnoredAny>,
        usage: Option<Value>,
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return (TokenUsage::default(), req.count());
    };
    let count = |field: &str| {
        answer
            .usage
            .as_ref()
            .and_then(|u| u.get(field))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let cached = answer
        .usage
        .as_ref()
        .and_then(|u| u.pointer("/input_tokens_details/cached_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let usage = TokenUsage {
        prompt: count("input_tokens"),
        completion: count("output_tokens"),
        cache_read: cached,
        ..TokenUsage::default()
    };
    (usage, answer.data.len() as u64)
}

/// What `images` images from `deployment` cost at the request's size and
/// quality, in nano-dollars.
pub(crate) fn image_cost(
    state: &AppState,
    deployment: &DeploymentInfo,
    req: &ImageGenerationRequest,
    images: u64,
) -> Nanos {
    let per_image = state
        .prices
        .get(deployment.id.0)
        .copied()
        .unwrap_or_default()
        .per_image(&deployment.model, req.size.as_deref(), req.quality.as_deref());
    switchyard_policy::from_usd(per_image * images as f64)
}

/// The most the images a request asks for may cost on any deployment of
/// `groups` (the requested one and its fallbacks), in nano-dollars.
pub(crate) fn image_ceiling<'a>(
    state: &AppState,
    groups: impl IntoIterator<Item = &'a str>,
    req: &ImageGenerationRequest,
) -> Nanos {
    groups
        .into_iter()
        .filter_map(|name| state.registry.group(state.group_name(name)).ok())
        .flat_map(|group| group.deployments())
        .map(|d| image_cost(state, d, req, req.count()))
        .max()
        .unwrap_or(0)
}
