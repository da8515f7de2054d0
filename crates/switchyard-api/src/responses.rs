//! The Responses API (`POST /v1/responses`): requests, response objects and
//! stream events.
//!
//! Input items are kept as JSON values: the gateway reads each one with
//! errors that name its position (`input[2].content[0]`), which a derived
//! untagged enum cannot give. What the gateway writes (the response object,
//! its output items and events) is typed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Extra;

/// Body of `POST /v1/responses`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponsesRequest {
    /// Public model name (a model group) or router name.
    pub model: String,
    /// The input: text (one user message) or a list of items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<ResponseInput>,
    /// A system (developer) message put before the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Stream the answer as typed server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// A stored response this one continues: its input and output come first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_response_id: Option<String>,
    /// Whether to keep the response for `previous_response_id` and
    /// `GET /v1/responses/{id}` (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<bool>,
    /// Every other parameter, read by the gateway or forwarded.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ResponsesRequest {
    /// Whether the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }
}

/// The `input` of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResponseInput {
    /// One user message.
    Text(String),
    /// Messages, function calls and their outputs, in order.
    Items(Vec<Value>),
}

/// A response object (`"object": "response"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseObject {
    /// `resp_…`.
    pub id: String,
    /// Always `response`.
    pub object: String,
    /// Unix time of creation, in seconds.
    pub created_at: u64,
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: String,
    /// Why a response is `failed`.
    pub error: Option<ResponseError>,
    /// Why a response is `incomplete`.
    pub incomplete_details: Option<IncompleteDetails>,
    /// The model that answered.
    pub model: String,
    /// What the model produced, in order.
    pub output: Vec<OutputItem>,
    /// Token counts, once known.
    pub usage: Option<ResponseUsage>,
    /// Request parameters echoed back (`instructions`, `tools`,
    /// `temperature`, `metadata`, …).
    #[serde(flatten)]
    pub extra: Extra,
}

/// Why a response failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseError {
    /// A machine-readable code (`server_error`, `rate_limit_exceeded`, …).
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// Why a response is incomplete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncompleteDetails {
    /// `max_output_tokens` or `content_filter`.
    pub reason: String,
}

/// Token counts of a response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseUsage {
    /// Tokens in the input.
    pub input_tokens: u64,
    /// Details of the input tokens.
    pub input_tokens_details: InputTokensDetails,
    /// Tokens generated.
    pub output_tokens: u64,
    /// Details of the output tokens.
    pub output_tokens_details: OutputTokensDetails,
    /// Input plus output.
    pub total_tokens: u64,
}

/// Details of a response's input tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputTokensDetails {
    /// Input tokens read from the upstream's prompt cache.
    pub cached_tokens: u64,
    /// Input tokens written to the upstream's prompt cache.
    pub cache_write_tokens: u64,
}

/// Details of a response's output tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputTokensDetails {
    /// Output tokens spent on reasoning.
    pub reasoning_tokens: u64,
}

/// One item of a response's `output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    /// An assistant message.
    Message {
        /// `msg_…`.
        id: String,
        /// Always `assistant`.
        role: String,
        /// `in_progress`, `completed` or `incomplete`.
        status: String,
        /// Its text (and refusal) parts.
        content: Vec<OutputContent>,
    },
    /// A call of one of the request's function tools.
    FunctionCall {
        /// `fc_…`.
        id: String,
        /// The id a `function_call_output` item answers.
        call_id: String,
        /// The function's name.
        name: String,
        /// Its arguments, JSON-encoded.
        arguments: String,
        /// `in_progress`, `completed` or `incomplete`.
        status: String,
        /// Provider data the call came with, which must go back with it
        /// (Gemini's `google.thought_signature`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        extra_content: Option<Value>,
    },
    /// The model's reasoning, as its upstream streamed it.
    Reasoning {
        /// `rs_…`.
        id: String,
        /// Summaries (none: upstreams of the chat format send the text).
        summary: Vec<Value>,
        /// The reasoning text.
        content: Vec<ReasoningText>,
        /// What the model needs to see its reasoning again on a later turn
        /// (Claude's signed thinking blocks), opaque to clients, which send
        /// the item back as it came.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encrypted_content: Option<String>,
        /// `in_progress`, `completed` or `incomplete`.
        status: String,
    },
}

impl OutputItem {
    /// The item's id.
    pub fn id(&self) -> &str {
        match self {
            OutputItem::Message { id, .. } | OutputItem::FunctionCall { id, .. } | OutputItem::Reasoning { id, .. } => {
                id
            }
        }
    }
}

/// One part of an output message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputContent {
    /// Text.
    OutputText {
        /// The text.
        text: String,
        /// Citations (none from chat-format upstreams).
        annotations: Vec<Value>,
    },
    /// The model declined to answer.
    Refusal {
        /// Its explanation.
        refusal: String,
    },
}

/// A reasoning item's text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasoningText {
    /// Always `reasoning_text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn output_items_are_tagged_as_the_api_writes_them() {
        let item = OutputItem::FunctionCall {
            id: "fc_1".into(),
            call_id: "call_1".into(),
            name: "f".into(),
            arguments: "{}".into(),
            status: "completed".into(),
            extra_content: None,
        };
        let value = serde_json::to_value(&item).unwrap();
        assert_eq!(value["type"], "function_call");
        assert_eq!(value["call_id"], "call_1");
        let text = OutputContent::OutputText {
            text: "hi".into(),
            annotations: Vec::new(),
        };
        assert_eq!(
            serde_json::to_value(&text).unwrap(),
            serde_json::json!({"type": "output_text", "text": "hi", "annotations": []})
        );
        let request: ResponsesRequest =
            serde_json::from_str(r#"{"model": "m", "input": "hi", "temperature": 0.5}"#).unwrap();
        assert_eq!(request.input, Some(ResponseInput::Text("hi".into())));
        assert_eq!(request.extra["temperature"], 0.5);
    }
}
