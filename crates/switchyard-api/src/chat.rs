//! Chat Completions (`POST /v1/chat/completions`) requests, responses and stream chunks.

use serde::{Deserialize, Serialize};

use crate::{Extra, Usage};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions from the application.
    System,
    /// Instructions from the application (newer OpenAI models).
    Developer,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
    /// A legacy function result.
    Function,
}

/// A message's content: plain text or a list of typed parts (text, images, audio…).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<ContentPart>),
}

impl MessageContent {
    /// The text of the content: the string itself, or its `text` parts joined by newlines.
    pub fn text(&self) -> String {
        match self {
            MessageContent::Text(text) => text.clone(),
            MessageContent::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// One part of a multi-part message (`{"type": "text", "text": …}`, `{"type": "image_url", …}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    /// Part type, e.g. `text` or `image_url`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Text of a `text` part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Other fields (`image_url`, `input_audio`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A function call requested by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as a JSON-encoded string. Some OpenAI-compatible servers
    /// (TGI, some llama.cpp builds) send a JSON object instead: it is read
    /// as its encoding; absent or `null`, as an empty string.
    #[serde(default, deserialize_with = "arguments")]
    pub arguments: String,
}

/// A tool call in an assistant message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Call id, echoed by the tool result message. Some OpenAI-compatible
    /// servers leave it out or send `null`: it is then empty.
    #[serde(default, deserialize_with = "string_or_null")]
    pub id: String,
    /// `function`, or `custom` (a custom tool's free-form input, kept in
    /// `extra`); `function` when the server leaves it out.
    #[serde(rename = "type", default = "function_kind", deserialize_with = "kind_or_null")]
    pub kind: String,
    /// The call, for a `function` tool call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCall>,
    /// Unmodelled fields, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

fn function_kind() -> String {
    "function".into()
}

fn string_or_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

/// A value, with `null` read as its default.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Unix seconds: an integer, or a number with a fraction (its whole
/// seconds); `null` as 0.
fn seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    Ok(match Option::<serde_json::Number>::deserialize(deserializer)? {
        None => 0,
        Some(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
            .unwrap_or(0),
    })
}

fn kind_or_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_else(function_kind))
}

fn arguments<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// One chat message, in a request or in a response choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Author role.
    pub role: Role,
    /// Content; `null` for an assistant message that only calls tools.
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// Optional participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool calls made by an assistant message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// For a `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Unmodelled fields (`refusal`, `audio`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatMessage {
    /// A message with text content.
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self::with_content(role, MessageContent::Text(content.into()))
    }

    /// A message with `content` and nothing else.
    pub fn with_content(role: Role, content: MessageContent) -> Self {
        Self {
            role,
            content: Some(content),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            extra: Extra::new(),
        }
    }

    /// The message's text content, or an empty string.
    pub fn content_text(&self) -> String {
        self.content.as_ref().map(MessageContent::text).unwrap_or_default()
    }
}

/// `stream_options` of a streaming request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Ask for a final chunk carrying the usage of the whole request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// Unmodelled fields, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Body of `POST /v1/chat/completions`.
///
/// Only what the gateway reads is modelled; every other parameter (temperature,
/// tools, response_format, parameters OpenAI adds tomorrow…) lives in `extra` and
/// is forwarded unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    /// Public model name (a model group) or router name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Options for streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Every other parameter, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatCompletionRequest {
    /// Whether the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the client asked for a final usage chunk.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }
}

/// One choice of a non-streaming chat response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    /// Position of the choice (0 when a server leaves it out).
    #[serde(default)]
    pub index: u32,
    /// The generated message.
    pub message: ChatMessage,
    /// Why generation stopped (`stop`, `length`, `tool_calls`, …).
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Unmodelled fields (`logprobs`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A non-streaming chat response. Some OpenAI-compatible servers leave
/// out `id`, `object`, `created` or `model`, or send `created` with a
/// fraction: they are read as empty (or the whole seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    /// Response id.
    #[serde(default, deserialize_with = "string_or_null")]
    pub id: String,
    /// Always `chat.completion`.
    #[serde(default, deserialize_with = "string_or_null")]
    pub object: String,
    /// Unix time of creation.
    #[serde(default, deserialize_with = "seconds")]
    pub created: u64,
    /// Model that answered.
    #[serde(default, deserialize_with = "string_or_null")]
    pub model: String,
    /// The choices.
    pub choices: Vec<ChatChoice>,
    /// Token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Unmodelled fields (`system_fingerprint`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The incremental message of a stream chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkDelta {
    /// Role, in the first chunk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// A piece of content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Unmodelled fields (`tool_calls`, `refusal`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One choice of a stream chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Position of the choice (0 when a server leaves it out or sends `null`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub index: u32,
    /// What this chunk adds (missing from Azure's content-filter-only
    /// chunks; `null` from some servers).
    #[serde(default, deserialize_with = "null_as_default")]
    pub delta: ChunkDelta,
    /// Set on the choice's last chunk.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Unmodelled fields, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One `data:` event of a streaming chat response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    /// Response id, the same in every chunk (empty in Azure's first,
    /// prompt-filter chunk, as are `object`, `created` and `model`; `null`
    /// from some servers).
    #[serde(default, deserialize_with = "string_or_null")]
    pub id: String,
    /// Always `chat.completion.chunk`.
    #[serde(default, deserialize_with = "string_or_null")]
    pub object: String,
    /// Unix time of creation.
    #[serde(default, deserialize_with = "seconds")]
    pub created: u64,
    /// Model that answered.
    #[serde(default, deserialize_with = "string_or_null")]
    pub model: String,
    /// The choices (empty in the final usage chunk, where some servers
    /// send `null`). Required: an object without it is not a chunk.
    #[serde(deserialize_with = "null_as_default")]
    pub choices: Vec<ChunkChoice>,
    /// Usage, in the final chunk when `include_usage` was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Unmodelled fields, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}
