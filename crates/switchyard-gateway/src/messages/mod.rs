//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic-format
//! clients (the Anthropic SDKs, Claude Code) served from any deployment.
//!
//! Anthropic deployments, and Claude models on Bedrock (through InvokeModel),
//! get the request as it came (only `model` is swapped) and their answer,
//! events included, goes back unchanged. Other deployments
//! get the request translated to OpenAI's chat format, and their answer is
//! translated back, streams event by event.

pub mod stream;
pub mod translate;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::future::Future;
use switchyard_api::ChatCompletionResponse;
use switchyard_api::anthropic::MessagesRequest;

use bytes::Bytes;
use switchyard_providers::sse::EventStream;
use switchyard_providers::{BedrockProvider, Provider, ProviderClient, ProviderError};

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::routes::{SharedState, choose, with_route_headers};

/// An [`ApiError`] rendered for Anthropic clients: the OpenAI error fields plus
/// Anthropic's top-level `"type": "error"`, which its SDKs expect.
#[derive(Debug)]
pub struct AnthropicError(pub ApiError);

impl From<ApiError> for AnthropicError {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let (status, ..) = self.0.parts();
        let mut body = serde_json::to_value(self.0.body()).unwrap_or_default();
        body["type"] = json!("error");
        let mut response = self.0.into_response();
        *response.body_mut() = axum::body::Body::from(body.to_string());
        *response.status_mut() = status;
        response
    }
}

fn validate(req: &MessagesRequest) -> Result<(), ApiError> {
    if req.max_tokens.is_none_or(|m| m == 0) {
        return Err(ApiError::InvalidField {
            param: Some("max_tokens".into()),
            message: "max_tokens: a positive integer is required".into(),
        });
    }
    if req.messages.is_empty() {
        return Err(ApiError::InvalidField {
            param: Some("messages".into()),
            message: "messages: at least one message is required".into(),
        });
    }
    Ok(())
}

/// `POST /v1/messages`.
pub async fn messages(
    State(state): State<SharedState>,
    JsonBody(mut req): JsonBody<MessagesRequest>,
) -> Result<Response, AnthropicError> {
    validate(&req)?;
    let route = choose(&state, &req.model)?;
    let (deployment, client) = (route.deployment, route.client);
    let public_model = std::mem::replace(&mut req.model, deployment.model.clone());
    let upstream = |e: ProviderError| ApiError::upstream(&deployment.name, e);
    let stream = req.is_stream();
    let response = match client {
        ProviderClient::Anthropic(p) => {
            native(
                stream,
                &deployment.name,
                || p.messages(&req),
                || p.messages_stream(&req),
            )
            .await?
        }
        ProviderClient::Bedrock(p) if BedrockProvider::is_claude(&deployment.model) => {
            native(
                stream,
                &deployment.name,
                || p.messages(&req),
                || p.messages_stream(&req),
            )
            .await?
        }
        _ => {
            let chat = translate::to_chat_request(&req)?;
            if stream {
                let chunks = client.chat_stream(&chat).await.map_err(upstream)?;
                stream::from_chat_chunks(chunks, deployment.name.clone())
            } else {
                let answer = client.chat(&chat).await.map_err(upstream)?;
                let parsed: ChatCompletionResponse = serde_json::from_slice(&answer.body)
                    .map_err(|e| upstream(ProviderError::InvalidResponse(format!("not a chat completion ({e})"))))?;
                let body = serde_json::to_vec(&translate::to_messages_response(parsed))
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                ([(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
        }
    };
    Ok(with_route_headers(response, &public_model, deployment, route.strategy))
}

/// Serves an Anthropic-format request from an upstream that speaks it natively:
/// the answer, or each stream event, goes back unchanged.
async fn native<J, S>(
    stream: bool,
    deployment: &str,
    json: impl FnOnce() -> J,
    events: impl FnOnce() -> S,
) -> Result<Response, ApiError>
where
    J: Future<Output = Result<Bytes, ProviderError>>,
    S: Future<Output = Result<EventStream, ProviderError>>,
{
    let upstream = |e: ProviderError| ApiError::upstream(deployment, e);
    Ok(if stream {
        stream::passthrough(events().await.map_err(upstream)?, deployment.to_owned())
    } else {
        (
            [(header::CONTENT_TYPE, "application/json")],
            json().await.map_err(upstream)?,
        )
            .into_response()
    })
}

/// `POST /v1/messages/count_tokens`: answered by Anthropic deployments.
pub async fn count_tokens(
    State(state): State<SharedState>,
    JsonBody(mut req): JsonBody<serde_json::Value>,
) -> Result<Response, AnthropicError> {
    let model = req
        .get("model")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| ApiError::InvalidField {
            param: Some("model".into()),
            message: "model: a string is required".into(),
        })?
        .to_owned();
    let route = choose(&state, &model)?;
    let (deployment, client) = (route.deployment, route.client);
    let ProviderClient::Anthropic(anthropic) = client else {
        return Err(ApiError::upstream(
            &deployment.name,
            ProviderError::Unsupported {
                provider: client.kind(),
                operation: "count_tokens",
            },
        )
        .into());
    };
    req["model"] = json!(deployment.model);
    let body = anthropic
        .count_tokens(&req)
        .await
        .map_err(|e| ApiError::upstream(&deployment.name, e))?;
    Ok(with_route_headers(
        ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        &model,
        deployment,
        route.strategy,
    ))
}
