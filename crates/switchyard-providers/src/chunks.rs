//! Building OpenAI chat responses and chunks for providers whose answers are translated.

use bytes::Bytes;
use serde_json::{Value, json};
use switchyard_api::{
    ChatChoice, ChatCompletionChunk, ChatCompletionResponse, ChatMessage, ChunkChoice, ChunkDelta, Extra, FunctionCall,
    MessageContent, Role, ToolCall, Usage,
};

use crate::{ProviderError, Result, StreamChunk};

/// Makes the chunks of one translated stream: same id, model and creation time.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChunkBuilder {
    /// Response id.
    pub(crate) id: String,
    /// Model that answers.
    pub(crate) model: String,
    /// Unix time of creation.
    pub(crate) created: u64,
}

impl ChunkBuilder {
    /// A chunk with one choice, or the final usage chunk (no choices) when `usage` is set.
    pub(crate) fn chunk(
        &self,
        delta: ChunkDelta,
        finish_reason: Option<String>,
        usage: Option<Usage>,
    ) -> Result<StreamChunk> {
        let choices = if usage.is_some() {
            Vec::new()
        } else {
            vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
                extra: Extra::new(),
            }]
        };
        let chunk = ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: usage.clone(),
            extra: Extra::new(),
        };
        let data =
            serde_json::to_vec(&chunk).map_err(|e| ProviderError::Stream(format!("could not encode a chunk: {e}")))?;
        Ok(StreamChunk {
            data: Bytes::from(data),
            usage,
        })
    }

    /// The opening chunk: the assistant role and empty content.
    pub(crate) fn role(&self) -> Result<StreamChunk> {
        let delta = ChunkDelta {
            role: Some(Role::Assistant),
            content: Some(String::new()),
            extra: Extra::new(),
        };
        self.chunk(delta, None, None)
    }

    /// A delta of fields other than content (`reasoning_content`,
    /// `thinking_blocks`).
    pub(crate) fn fields(&self, fields: Extra) -> Result<StreamChunk> {
        let delta = ChunkDelta {
            role: None,
            content: None,
            extra: fields,
        };
        self.chunk(delta, None, None)
    }

    /// A piece of reasoning (`reasoning_content`, as OpenAI-compatible
    /// servers stream it).
    pub(crate) fn reasoning(&self, text: String) -> Result<StreamChunk> {
        let mut fields = Extra::new();
        fields.insert("reasoning_content".into(), serde_json::Value::String(text));
        self.fields(fields)
    }

    /// A content piece.
    pub(crate) fn text(&self, text: String) -> Result<StreamChunk> {
        let delta = ChunkDelta {
            role: None,
            content: Some(text),
            extra: Extra::new(),
        };
        self.chunk(delta, None, None)
    }

    /// The start of tool call `index`: its id and name, no arguments yet.
    pub(crate) fn tool_start(&self, index: u32, id: &str, name: &str) -> Result<StreamChunk> {
        self.tool(
            index,
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": ""}}),
        )
    }

    /// A piece of tool call `index`'s arguments.
    pub(crate) fn tool_arguments(&self, index: u32, arguments: String) -> Result<StreamChunk> {
        self.tool(index, json!({"function": {"arguments": arguments}}))
    }

    fn tool(&self, index: u32, mut call: Value) -> Result<StreamChunk> {
        call["index"] = json!(index);
        let mut extra = Extra::new();
        extra.insert("tool_calls".into(), json!([call]));
        let delta = ChunkDelta {
            role: None,
            content: None,
            extra,
        };
        self.chunk(delta, None, None)
    }

    /// The chunk carrying the finish reason.
    pub(crate) fn finish(&self, reason: Option<String>) -> Result<StreamChunk> {
        self.chunk(ChunkDelta::default(), reason, None)
    }

    /// The final usage chunk.
    pub(crate) fn usage(&self, usage: Usage) -> Result<StreamChunk> {
        self.chunk(ChunkDelta::default(), None, Some(usage))
    }
}

/// A function tool call.
pub(crate) fn tool_call(id: String, name: String, arguments: String) -> ToolCall {
    ToolCall {
        id,
        kind: "function".into(),
        function: Some(FunctionCall { name, arguments }),
        extra: Extra::new(),
    }
}

/// The thinking blocks (Claude's, signed) a stream sends, each whole in one
/// delta as `thinking_blocks`, with its position as `index`, which stream
/// accumulators (the OpenAI SDKs') need to keep list entries apart.
#[derive(Debug, Default)]
pub(crate) struct ThinkingBlocks {
    sent: usize,
}

impl ThinkingBlocks {
    /// The chunk carrying `block`.
    pub(crate) fn chunk(&mut self, out: &ChunkBuilder, mut block: serde_json::Value) -> Result<StreamChunk> {
        block["index"] = serde_json::json!(self.sent);
        self.sent += 1;
        let mut fields = Extra::new();
        fields.insert("thinking_blocks".into(), serde_json::Value::Array(vec![block]));
        out.fields(fields)
    }
}

/// A one-choice chat response from an assistant's text and tool calls.
pub(crate) fn chat_response(
    id: String,
    model: String,
    created: u64,
    text: String,
    calls: Vec<ToolCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
) -> ChatCompletionResponse {
    let message = ChatMessage {
        role: Role::Assistant,
        content: (!text.is_empty() || calls.is_empty()).then_some(MessageContent::Text(text)),
        name: None,
        tool_calls: (!calls.is_empty()).then_some(calls),
        tool_call_id: None,
        extra: Extra::new(),
    };
    ChatCompletionResponse {
        id,
        object: "chat.completion".into(),
        created,
        model,
        choices: vec![ChatChoice {
            index: 0,
            message,
            finish_reason,
            extra: Extra::new(),
        }],
        usage,
        extra: Extra::new(),
    }
}

/// A tool call id as Anthropic and Bedrock take it (letters, digits, `_` and `-`,
/// at most 64 of them): other characters become `_`, the same way in a call
/// and in its result. Servers such as vLLM name calls `functions.get_weather:0`.
/// An id that changes also gets a hash of the original, so that two ids
/// differing only in such characters (`call.1`, `call:1`), or only after
/// their first 55 characters, stay apart.
pub fn tool_use_id(id: &str) -> String {
    const MAX_LEN: usize = 64;
    let fits = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !id.is_empty() && id.len() <= MAX_LEN && id.chars().all(fits) {
        return id.to_owned();
    }
    // FNV-1a: stable across processes and versions.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let suffix = format!("_{:08x}", hash >> 32);
    // Every character is ASCII now: the cut falls between characters.
    let mut out: String = id
        .chars()
        .map(|c| if fits(c) { c } else { '_' })
        .take(MAX_LEN - suffix.len())
        .collect();
    out.push_str(&suffix);
    out
}

/// Where the system and developer messages that close a conversation after
/// the assistant's last message begin (`messages.len()` when there are
/// none): the instructions for its next answer, which Claude must get as a
/// user turn, since a conversation that ends with the assistant asks it to
/// continue that message.
pub(crate) fn instructions_after_assistant(messages: &[switchyard_api::ChatMessage]) -> usize {
    use switchyard_api::Role;
    match messages
        .iter()
        .rposition(|m| !matches!(m.role, Role::System | Role::Developer))
    {
        Some(last) if messages[last].role == Role::Assistant => last + 1,
        _ => messages.len(),
    }
}
