//! Anthropic-format requests passed straight through to Claude on Bedrock
//! (InvokeModel / InvokeModelWithResponseStream with an Anthropic Messages body).

use std::time::Duration;

use aws_sdk_bedrockruntime::types::error::ResponseStreamError;
use aws_sdk_bedrockruntime::types::{CountTokensInput, InvokeModelTokensRequest, ResponseStream};
use aws_smithy_types::Blob;
use bytes::Bytes;
use futures_util::stream;
use serde_json::{Value, json};
use switchyard_api::anthropic::MessagesRequest;

use super::BedrockProvider;
use crate::sse::{Event, EventStream};
use crate::{ProviderError, Result, TimeoutPhase};

/// The `anthropic_version` Bedrock expects in the body of Claude requests.
pub const BEDROCK_ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// The `anthropic-beta` features Bedrock takes. It refuses a request naming
/// any other ("invalid beta flag"), and clients such as Claude Code name
/// several it does not have (`claude-code-20250219`, `mcp-servers-…`), so
/// those are left out.
const BEDROCK_BETAS: &[&str] = &[
    "computer-use-2024-10-22",
    "computer-use-2025-01-24",
    "computer-use-2025-11-24",
    "token-efficient-tools-2025-02-19",
    "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14",
    "context-1m-2025-08-07",
    "context-management-2025-06-27",
    "effort-2025-11-24",
    "tool-search-tool-2025-10-19",
    "tool-examples-2025-10-29",
];

/// The InvokeModel body for an Anthropic-format request: the request itself
/// without `model` and `stream` (Bedrock rejects them), with Bedrock's `anthropic_version`.
pub(crate) fn invoke_body(req: &MessagesRequest) -> Result<Vec<u8>> {
    let mut body = serde_json::to_value(req)
        .map_err(|e| ProviderError::InvalidConfig(format!("cannot encode the request: {e}")))?;
    if let Some(map) = body.as_object_mut() {
        map.remove("model");
        map.remove("stream");
        map.insert("anthropic_version".into(), json!(BEDROCK_ANTHROPIC_VERSION));
        let betas: Vec<&String> = req
            .betas
            .iter()
            .filter(|b| BEDROCK_BETAS.contains(&b.as_str()))
            .collect();
        if betas.len() < req.betas.len() {
            tracing::debug!(sent = ?req.betas, kept = ?betas, "beta features Bedrock does not take were left out");
        }
        if !betas.is_empty() {
            map.insert("anthropic_beta".into(), json!(betas));
        }
    }
    serde_json::to_vec(&body).map_err(|e| ProviderError::InvalidConfig(format!("cannot encode the request: {e}")))
}

/// An Anthropic stream event decoded from a Bedrock `chunk`.
fn decode_chunk(bytes: &[u8]) -> Result<Event> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ProviderError::Stream(format!("malformed event from the upstream ({e})")))?;
    let name = value
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message")
        .to_owned();
    Ok(Event {
        event: name,
        data: String::from_utf8_lossy(bytes).into_owned(),
        id: String::new(),
        retry: None,
    })
}

impl BedrockProvider {
    /// Whether this deployment's model is Claude (served natively for `/v1/messages`).
    pub fn is_claude(model: &str) -> bool {
        model.contains("anthropic.claude")
    }

    /// Whether Bedrock's CountTokens can count for this model: a Claude
    /// foundation-model id, not an inference profile (`us.anthropic…`) or an
    /// ARN.
    pub fn counts_tokens(model: &str) -> bool {
        model.starts_with("anthropic.claude")
    }

    /// Sends an Anthropic-format request to Claude on Bedrock; returns Anthropic's JSON.
    pub async fn messages(&self, req: &MessagesRequest) -> Result<Bytes> {
        let send = self
            .client()
            .await
            .invoke_model()
            .model_id(self.target(&req.model))
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(invoke_body(req)?))
            .send();
        let output = self.answered(send).await?;
        let bytes = Bytes::from(output.body.into_inner());
        // Passed on unchanged, so read once to know it is a JSON answer.
        if let Err(e) = serde_json::from_slice::<crate::http::Probe>(&bytes) {
            return Err(ProviderError::InvalidResponse(format!(
                "InvokeModel returned a body that is not a JSON answer ({e})"
            )));
        }
        Ok(bytes)
    }

    /// Counts an Anthropic-format request's input tokens with Bedrock's
    /// CountTokens (the InvokeModel body it would send); returns Anthropic's
    /// `{"input_tokens": N}`.
    pub async fn count_tokens(&self, req: &Value, betas: &[String]) -> Result<Bytes> {
        let mut parsed: MessagesRequest =
            serde_json::from_value(req.clone()).map_err(|e| ProviderError::InvalidRequest {
                message: format!("the request cannot be counted: {e}"),
                param: None,
            })?;
        // An InvokeModel body needs `max_tokens` (above a thinking budget);
        // counting ignores it.
        let budget = req
            .pointer("/thinking/budget_tokens")
            .and_then(Value::as_u64)
            .and_then(|b| u32::try_from(b).ok())
            .unwrap_or(0);
        parsed.max_tokens.get_or_insert(budget.saturating_add(1));
        parsed.betas = betas.to_vec();
        let input = InvokeModelTokensRequest::builder()
            .body(Blob::new(invoke_body(&parsed)?))
            .build()
            .map_err(|e| ProviderError::InvalidConfig(e.to_string()))?;
        let send = self
            .client()
            .await
            .count_tokens()
            .model_id(&parsed.model)
            .input(CountTokensInput::InvokeModel(input))
            .send();
        let output = self.answered(send).await?;
        Ok(Bytes::from(json!({"input_tokens": output.input_tokens()}).to_string()))
    }

    /// Streams an Anthropic-format request from Claude on Bedrock as Anthropic events.
    pub async fn messages_stream(&self, req: &MessagesRequest) -> Result<EventStream> {
        let first_byte: Duration = self.settings.timeouts.first_byte;
        // The SDK's operation timeout ends with the response head; the
        // stream's body is bounded here.
        let deadline = tokio::time::Instant::now() + self.settings.timeouts.total;
        let send = self
            .client()
            .await
            .invoke_model_with_response_stream()
            .model_id(self.target(&req.model))
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(invoke_body(req)?))
            .send();
        let output = self.within_first_byte(send).await?;
        // `seen`: the events read so far (the first is `message_start`).
        let events = stream::unfold((output.body, 0_usize, false), move |(mut rx, seen, done)| async move {
            if done {
                return None;
            }
            loop {
                let next = if seen == 0 {
                    match tokio::time::timeout(first_byte, rx.recv()).await {
                        Ok(next) => next,
                        Err(_) => {
                            return Some((Err(ProviderError::Timeout(TimeoutPhase::FirstByte)), (rx, seen, true)));
                        }
                    }
                } else {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(next) => next,
                        Err(_) => return Some((Err(ProviderError::Timeout(TimeoutPhase::Total)), (rx, seen, true))),
                    }
                };
                let item = match next {
                    Ok(Some(ResponseStream::Chunk(part))) => match part.bytes {
                        Some(bytes) => decode_chunk(bytes.as_ref()),
                        None => continue,
                    },
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(e) => Err(super::stream_exception(&e, exception_name, seen > 1)),
                };
                let done = item.is_err();
                return Some((item, (rx, seen + 1, done)));
            }
        });
        Ok(Box::pin(events))
    }
}

/// The name of a modelled InvokeModelWithResponseStream exception.
fn exception_name(e: &ResponseStreamError) -> Option<&'static str> {
    Some(match e {
        ResponseStreamError::InternalServerException(_) => "InternalServerException",
        ResponseStreamError::ModelStreamErrorException(_) => "ModelStreamErrorException",
        ResponseStreamError::ValidationException(_) => "ValidationException",
        ResponseStreamError::ThrottlingException(_) => "ThrottlingException",
        ResponseStreamError::ModelTimeoutException(_) => "ModelTimeoutException",
        ResponseStreamError::ServiceUnavailableException(_) => "ServiceUnavailableException",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_body_drops_model_and_stream_and_sets_the_version() {
        let req: MessagesRequest = serde_json::from_value(json!({
            "model": "anthropic.claude-x", "stream": true, "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}], "thinking": {"type": "enabled", "budget_tokens": 1024}
        }))
        .unwrap();
        let body: Value = serde_json::from_slice(&invoke_body(&req).unwrap()).unwrap();
        assert!(body.get("model").is_none() && body.get("stream").is_none());
        assert_eq!(body["anthropic_version"], BEDROCK_ANTHROPIC_VERSION);
        assert_eq!(body["thinking"]["budget_tokens"], 1024);
        assert!(BedrockProvider::is_claude(
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
        ));
        assert!(!BedrockProvider::is_claude("amazon.nova-lite-v1:0"));
    }
}
