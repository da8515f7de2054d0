//! Azure OpenAI's request paths, which Azure clients (`AzureOpenAI`,
//! LangChain's `AzureChatOpenAI`) call: `/openai/deployments/{name}/…`
//! (`/deployments/{name}/…` under a `base_url` of `…/v1`), and the older
//! `/engines/{name}/…`. The name in the path is the model group, as the
//! deployment is Azure's model; `api-version` is not read.

use axum::Router;
use axum::extract::{Extension, Path, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use switchyard_policy::Principal;

use crate::error::ApiError;
use crate::extract::{JsonBody, parse, read_body};
use crate::observe::RequestContext;
use crate::routes::SharedState;

/// The routes, for every prefix an Azure client uses that no pass-through
/// route claims: a pass-through at `/openai` (LiteLLM's route to OpenAI's
/// own API) keeps forwarding what is under it.
pub(crate) fn routes(pass_through: &[crate::passthrough::PassThrough]) -> Router<SharedState> {
    let mut router = Router::new();
    for prefix in ["/openai/deployments", "/deployments", "/engines"] {
        let claimed = pass_through.iter().find(|p| {
            let path = p.path.trim_end_matches('/');
            path == prefix || prefix.starts_with(&format!("{path}/")) || path.starts_with(&format!("{prefix}/"))
        });
        if let Some(claimed) = claimed {
            tracing::info!(
                pass_through = %claimed.path,
                "Azure clients' {prefix}/{{model}}/… paths are the pass-through route's, not routed to model groups"
            );
            continue;
        }
        router = router
            .route(&format!("{prefix}/{{model}}/chat/completions"), post(chat))
            .route(&format!("{prefix}/{{model}}/completions"), post(completions))
            .route(&format!("{prefix}/{{model}}/embeddings"), post(embeddings));
    }
    router
}

/// The request's body with the path's model in it (over one the body
/// names, as Azure and LiteLLM take it), parsed as the plain route parses it.
async fn with_path_model<T: DeserializeOwned>(
    state: &SharedState,
    model: String,
    request: Request,
) -> Result<T, ApiError> {
    let bytes = read_body(request, state).await?;
    let mut body: Map<String, Value> = parse(&bytes)?;
    body.insert("model".into(), Value::String(model));
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::Internal(e.to_string()))?;
    parse(&bytes)
}

/// A handler that puts the path's model in the body and hands the request
/// to the plain route's handler.
macro_rules! with_model_from_path {
    ($name:ident, $route:path) => {
        async fn $name(
            State(state): State<SharedState>,
            Path(model): Path<String>,
            Extension(principal): Extension<Principal>,
            Extension(ctx): Extension<RequestContext>,
            headers: HeaderMap,
            request: Request,
        ) -> Response {
            match with_path_model(&state, model, request).await {
                Ok(req) => {
                    $route(
                        State(state),
                        Extension(principal),
                        Extension(ctx),
                        headers,
                        JsonBody(req),
                    )
                    .await
                }
                Err(e) => e.into_response(),
            }
        }
    };
}

with_model_from_path!(chat, crate::routes::chat_completions);
with_model_from_path!(completions, crate::routes::completions);
with_model_from_path!(embeddings, crate::routes::embeddings);
