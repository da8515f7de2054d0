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

/// A string, with `null` read as empty.
pub(crate) fn string_or_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
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

    /// Moves the text of an answer's `thinking` parts (Mistral's reasoning
    /// models answer with `thinking` and `text` parts) to
    /// `reasoning_content`, where other servers put it, unless that holds
    /// text already.
    pub fn lift_thinking_parts(&mut self) {
        let Some(MessageContent::Parts(parts)) = &mut self.content else {
            return;
        };
        let mut thinking = String::new();
        parts.retain(|part| {
            if part.kind == "thinking" {
                push_thinking(&mut thinking, part.extra.get("thinking"));
                false
            } else {
                true
            }
        });
        // A `null` or empty `reasoning_content` beside them is none.
        let unset = self
            .extra
            .get("reasoning_content")
            .is_none_or(|r| r.is_null() || r.as_str() == Some(""));
        if !thinking.is_empty() && unset {
            self.extra
                .insert("reasoning_content".into(), serde_json::Value::String(thinking));
        }
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
///
/// Read leniently: a role that is empty or unknown (MiniMax and some GLM
/// hosts send `"role": ""`) is no role, and content sent as a list of parts
/// (Mistral's reasoning models: `thinking` and `text` parts) is read as its
/// text, the text of its `thinking` parts going to `reasoning_content`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "WireDelta")]
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

/// A stream delta as servers send it, before [`ChunkDelta`] reads it.
#[derive(Deserialize)]
struct WireDelta {
    #[serde(default, deserialize_with = "known_role")]
    role: Option<Role>,
    #[serde(default)]
    content: Option<DeltaContent>,
    #[serde(flatten)]
    extra: Extra,
}

/// A delta's content: text, or a list of typed parts.
#[derive(Deserialize)]
#[serde(untagged)]
enum DeltaContent {
    Text(String),
    Parts(Vec<serde_json::Value>),
}

impl From<WireDelta> for ChunkDelta {
    fn from(wire: WireDelta) -> Self {
        let mut extra = wire.extra;
        let content = match wire.content {
            None => None,
            Some(DeltaContent::Text(text)) => Some(text),
            Some(DeltaContent::Parts(parts)) => {
                let mut text = String::new();
                let mut thinking = String::new();
                for part in &parts {
                    match part.get("type").and_then(|t| t.as_str()) {
                        Some("text") => text.push_str(part.get("text").and_then(|t| t.as_str()).unwrap_or_default()),
                        Some("thinking") => push_thinking(&mut thinking, part.get("thinking")),
                        _ => {}
                    }
                }
                if !thinking.is_empty() {
                    let reasoning = extra
                        .entry("reasoning_content".to_string())
                        .or_insert_with(|| serde_json::Value::String(String::new()));
                    match reasoning {
                        serde_json::Value::String(before) => before.push_str(&thinking),
                        other => *other = serde_json::Value::String(thinking),
                    }
                }
                (!text.is_empty()).then_some(text)
            }
        };
        ChunkDelta {
            role: wire.role,
            content,
            extra,
        }
    }
}

/// Appends a `thinking` part's text: a string, or a list of `text` parts.
fn push_thinking(out: &mut String, thinking: Option<&serde_json::Value>) {
    match thinking {
        Some(serde_json::Value::String(text)) => out.push_str(text),
        Some(serde_json::Value::Array(parts)) => {
            for part in parts {
                if let Some(text) = part.get("text").and_then(|t| t.as_str()) {
                    out.push_str(text);
                }
            }
        }
        _ => {}
    }
}

/// A role, with `null`, an empty string or a role this type does not know
/// read as none.
fn known_role<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Role>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(deserializer)? {
        Some(value) => Role::deserialize(value).ok(),
        None => None,
    })
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
#[serde(try_from = "WireChunk")]
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
    /// send `null` and others leave it out). Required in any other chunk:
    /// an object with neither choices nor usage is not a chunk.
    #[serde(deserialize_with = "null_as_default")]
    pub choices: Vec<ChunkChoice>,
    /// Usage, in the final chunk when `include_usage` was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Unmodelled fields, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A stream chunk as servers send it, before [`ChatCompletionChunk`] checks it.
#[derive(Deserialize)]
struct WireChunk {
    #[serde(default, deserialize_with = "string_or_null")]
    id: String,
    #[serde(default, deserialize_with = "string_or_null")]
    object: String,
    #[serde(default, deserialize_with = "seconds")]
    created: u64,
    #[serde(default, deserialize_with = "string_or_null")]
    model: String,
    /// Absent (not `null`) only in a usage chunk.
    #[serde(default, deserialize_with = "present")]
    choices: Option<Vec<ChunkChoice>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(flatten)]
    extra: Extra,
}

/// A field that is present: `null` as its default, absence left to `#[serde(default)]`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Some(Option::<T>::deserialize(deserializer)?.unwrap_or_default()))
}

impl TryFrom<WireChunk> for ChatCompletionChunk {
    type Error = &'static str;

    fn try_from(wire: WireChunk) -> Result<Self, Self::Error> {
        let choices = match (wire.choices, &wire.usage) {
            (Some(choices), _) => choices,
            (None, Some(_)) => Vec::new(),
            (None, None) => return Err("missing field `choices`"),
        };
        Ok(ChatCompletionChunk {
            id: wire.id,
            object: wire.object,
            created: wire.created,
            model: wire.model,
            choices,
            usage: wire.usage,
            extra: wire.extra,
        })
    }
}
