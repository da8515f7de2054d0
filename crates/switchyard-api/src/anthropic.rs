//! Anthropic Messages API wire types (`POST /v1/messages`), used both to call
//! Anthropic upstreams and to serve Anthropic-format clients.
//!
//! Content blocks are one flexible struct rather than an enum so that block
//! types this crate does not know (and fields such as `cache_control`) survive
//! a round trip.

use serde::{Deserialize, Serialize};

use crate::Extra;

/// Text or a list of content blocks (`content` of a message, `system`, tool results).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed blocks.
    Blocks(Vec<ContentBlock>),
    /// A single typed object, kept verbatim: e.g. the error object a server
    /// tool's result can hold (`{"type": "web_search_tool_result_error", …}`).
    Other(TypedObject),
}

/// A JSON object with a string `type`; anything else is refused, so that
/// malformed content is an error rather than silently kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct TypedObject(pub serde_json::Map<String, serde_json::Value>);

impl<'de> Deserialize<'de> for TypedObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        if map.get("type").is_some_and(serde_json::Value::is_string) {
            Ok(TypedObject(map))
        } else {
            Err(serde::de::Error::custom(
                "content must be text, a list of blocks, or an object with a `type`",
            ))
        }
    }
}

impl Content {
    /// The text of the content: the string, or its `text` blocks joined by newlines.
    pub fn text(&self) -> String {
        match self {
            Content::Text(text) => text.clone(),
            Content::Blocks(blocks) => blocks
                .iter()
                .filter_map(|b| b.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
            Content::Other(_) => String::new(),
        }
    }

    /// The content as blocks (a string becomes one text block; a typed object,
    /// the one block it is).
    pub fn into_blocks(self) -> Vec<ContentBlock> {
        match self {
            Content::Text(text) => vec![ContentBlock::text(text)],
            Content::Blocks(blocks) => blocks,
            Content::Other(TypedObject(map)) => {
                let value = serde_json::Value::Object(map);
                match serde_json::from_value::<ContentBlock>(value.clone()) {
                    Ok(block) => vec![block],
                    Err(_) => {
                        let serde_json::Value::Object(map) = value else {
                            return Vec::new();
                        };
                        let kind = map
                            .get("type")
                            .and_then(serde_json::Value::as_str)
                            .unwrap_or_default()
                            .to_owned();
                        let extra = map.into_iter().filter(|(k, _)| k != "type").collect();
                        vec![ContentBlock {
                            kind,
                            extra,
                            ..ContentBlock::default()
                        }]
                    }
                }
            }
        }
    }
}

/// One content block: `text`, `image`, `tool_use`, `tool_result`, `thinking`, …
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContentBlock {
    /// Block type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `text` (and `thinking`) blocks: the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `image` blocks: `{"type": "base64", "media_type", "data"}` or `{"type": "url", "url"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
    /// `tool_use` blocks: the call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `tool_use` blocks: the tool name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `tool_use` blocks: the arguments object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// `tool_result` blocks: the call answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
    /// `tool_result` blocks: the result, text or blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// `tool_result` blocks: whether the tool failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    /// Other fields (`cache_control`, `signature`, `citations`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ContentBlock {
    /// Whether this is a `thinking` block without a `signature` (reasoning
    /// another model gave).
    pub fn is_unsigned_thinking(&self) -> bool {
        self.kind == "thinking"
            && self
                .extra
                .get("signature")
                .and_then(serde_json::Value::as_str)
                .is_none_or(str::is_empty)
    }

    /// Whether this is a text block without non-white-space text.
    pub fn is_blank_text(&self) -> bool {
        self.kind == "text" && self.text.as_deref().is_none_or(|t| t.trim().is_empty())
    }

    /// The call id a `tool_use` block carries, or a `tool_result` answers.
    pub fn tool_id(&self) -> Option<&str> {
        match self.kind.as_str() {
            "tool_use" => self.id.as_deref(),
            "tool_result" => self.tool_use_id.as_deref(),
            _ => None,
        }
    }

    /// A text block.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            kind: "text".into(),
            text: Some(text.into()),
            ..Self::default()
        }
    }
}

/// Author of a message (Anthropic has only these two; system text is separate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    /// The user (and tool results).
    User,
    /// The model.
    Assistant,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Author.
    pub role: MessageRole,
    /// Content.
    pub content: Content,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Tool name (empty for tools that have none, such as an `mcp_toolset`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of its input (absent for Anthropic's built-in tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<serde_json::Value>,
    /// Other fields (`type` of built-in tools, `cache_control`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Body of `POST /v1/messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesRequest {
    /// Model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Largest number of tokens to generate (required by Anthropic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// System prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<Content>,
    /// Sequences that stop generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Sampling temperature, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// `{"type": "auto" | "any" | "tool" | "none", "name"?, "disable_parallel_tool_use"?}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<serde_json::Value>,
    /// Every other parameter (`top_k`, `metadata`, `thinking`, …), kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
    /// Beta features the client asked for in its `anthropic-beta` header:
    /// not part of the body; sent on as that header to Anthropic and as
    /// the body's `anthropic_beta` to Bedrock.
    #[serde(skip)]
    pub betas: Vec<String>,
}

impl MessagesRequest {
    /// Whether the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// The request as Claude takes it, when it must change; `None` when it
    /// may go as it is (the request itself is left alone: another
    /// deployment may be tried with it). Thinking blocks without a
    /// signature are left out ([`Self::drop_unsigned_thinking`]); so is
    /// `thinking` when the turn being continued called tools without
    /// thinking first ([`Self::turn_without_thinking`]); tool ids are
    /// rewritten with `tool_id`, the same in calls and results; text
    /// blocks of white space alone (another model's `"\n\n"` before its
    /// tool call, sent back), which Claude refuses, are left out, and a
    /// message left without blocks with them.
    pub fn for_claude(&self, tool_id: impl Fn(&str) -> String) -> Option<MessagesRequest> {
        let ids_change = self.blocks().any(|b| b.tool_id().is_some_and(|id| tool_id(id) != id));
        let unsigned = self.blocks().any(ContentBlock::is_unsigned_thinking);
        let blank = self.blocks().any(ContentBlock::is_blank_text)
            || self
                .messages
                .iter()
                .any(|m| matches!(&m.content, Content::Text(t) if t.trim().is_empty()));
        if !ids_change && !unsigned && !blank && !self.turn_without_thinking() {
            return None;
        }
        let mut fixed = self.clone();
        fixed.drop_unsigned_thinking();
        if blank {
            for message in &mut fixed.messages {
                if let Content::Text(text) = &message.content
                    && text.trim().is_empty()
                {
                    message.content = Content::Blocks(Vec::new());
                }
                if let Content::Blocks(blocks) = &mut message.content {
                    blocks.retain(|b| !b.is_blank_text());
                    // A user turn stays a turn (left out, the assistant's
                    // message before it would become one to continue).
                    if blocks.is_empty() && message.role == MessageRole::User {
                        blocks.push(ContentBlock::text("."));
                    }
                }
            }
            fixed
                .messages
                .retain(|m| !matches!(&m.content, Content::Blocks(blocks) if blocks.is_empty()));
        }
        if fixed.turn_without_thinking() {
            fixed.extra.shift_remove("thinking");
        }
        fixed.map_tool_ids(tool_id);
        Some(fixed)
    }

    /// Every content block of the conversation's messages.
    fn blocks(&self) -> impl Iterator<Item = &ContentBlock> {
        self.messages.iter().flat_map(|m| match &m.content {
            Content::Blocks(blocks) => blocks.as_slice(),
            _ => &[],
        })
    }

    /// Rewrites the ids of `tool_use` blocks and of the `tool_result`
    /// blocks that answer them with `map` (the same way in both, so they
    /// still pair).
    pub fn map_tool_ids(&mut self, map: impl Fn(&str) -> String) {
        for message in &mut self.messages {
            if let Content::Blocks(blocks) = &mut message.content {
                for block in blocks {
                    let id = match block.kind.as_str() {
                        "tool_use" => block.id.as_mut(),
                        "tool_result" => block.tool_use_id.as_mut(),
                        _ => None,
                    };
                    if let Some(id) = id {
                        let mapped = map(id);
                        if mapped != *id {
                            *id = mapped;
                        }
                    }
                }
            }
        }
    }

    /// Whether thinking is enabled and the conversation ends in a tool loop
    /// whose turn did not start with thinking (another model made it, or
    /// the client dropped the blocks): Claude refuses to think there ("a
    /// final `assistant` message must start with a thinking block"). The
    /// turn is the assistant messages since the last user message that is
    /// not tool results; in a loop Claude thinks at its start only.
    pub fn turn_without_thinking(&self) -> bool {
        let on = self
            .extra
            .get("thinking")
            .is_some_and(|t| t.get("type").and_then(serde_json::Value::as_str) != Some("disabled"));
        if !on {
            return false;
        }
        let results =
            |m: &Message| matches!(&m.content, Content::Blocks(b) if b.iter().any(|b| b.kind == "tool_result"));
        // Walking back: assistant messages, and runs of user messages (one
        // user turn to Claude) that hold tool results, until a run without.
        let messages = &self.messages;
        let mut k = messages.len();
        let mut first = None;
        let mut continuing = false;
        while k > 0 {
            if messages[k - 1].role == MessageRole::Assistant {
                first = Some(&messages[k - 1]);
                k -= 1;
                continue;
            }
            let end = k;
            while k > 0 && messages[k - 1].role == MessageRole::User {
                k -= 1;
            }
            if !messages[k..end].iter().any(results) {
                break;
            }
            continuing |= end == messages.len();
        }
        if !continuing {
            return false;
        }
        match first.map(|m| &m.content) {
            Some(Content::Blocks(blocks)) => !blocks
                .first()
                .is_some_and(|b| b.kind == "thinking" || b.kind == "redacted_thinking"),
            Some(_) => true,
            None => false,
        }
    }

    /// Removes the `thinking` blocks that carry no `signature` from the
    /// conversation (reasoning another model produced, which Claude refuses
    /// to be sent back) and says how many there were. A message made of
    /// nothing else keeps their text, as text blocks.
    pub fn drop_unsigned_thinking(&mut self) -> usize {
        let unsigned = ContentBlock::is_unsigned_thinking;
        let mut dropped = 0;
        for message in &mut self.messages {
            if let Content::Blocks(blocks) = &mut message.content {
                let n = blocks.iter().filter(|b| unsigned(b)).count();
                if n > 0 && n < blocks.len() {
                    blocks.retain(|b| !unsigned(b));
                    dropped += n;
                } else if n > 0 {
                    let texts: Vec<ContentBlock> = blocks
                        .iter()
                        .filter_map(|b| b.extra.get("thinking").and_then(serde_json::Value::as_str))
                        .filter(|t| !t.trim().is_empty())
                        .map(ContentBlock::text)
                        .collect();
                    if !texts.is_empty() {
                        *blocks = texts;
                        dropped += n;
                    }
                }
            }
        }
        dropped
    }
}

/// A token count that may be `null` (none reported): 0.
fn count_or_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(deserializer)?.unwrap_or(0))
}

/// Token usage of a Messages response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessagesUsage {
    /// Input tokens not read from or written to the prompt cache (`null`,
    /// which a `message_delta` may carry, reads as 0).
    #[serde(default, deserialize_with = "count_or_null")]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default, deserialize_with = "count_or_null")]
    pub output_tokens: u64,
    /// Input tokens read from the prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
    /// Input tokens written to the prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    /// Other fields, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A complete Messages response (also `message` in `message_start`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesResponse {
    /// Message id.
    pub id: String,
    /// Always `message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `assistant`.
    pub role: MessageRole,
    /// Model that answered.
    pub model: String,
    /// Generated blocks.
    pub content: Vec<ContentBlock>,
    /// `end_turn`, `max_tokens`, `stop_sequence`, `tool_use`, `pause_turn`, `refusal`.
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// The stop sequence that ended generation.
    #[serde(default)]
    pub stop_sequence: Option<String>,
    /// Token usage.
    #[serde(default)]
    pub usage: MessagesUsage,
    /// Other fields, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The `delta` of a `content_block_delta` event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockDelta {
    /// `text_delta`, `input_json_delta`, `thinking_delta`, `signature_delta`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// `text_delta`: the text piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `input_json_delta`: a piece of the tool input's JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_json: Option<String>,
    /// Other fields, kept verbatim.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The `delta` of a `message_delta` event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageDelta {
    /// Why generation stopped.
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// The stop sequence that ended generation.
    #[serde(default)]
    pub stop_sequence: Option<String>,
}

/// The error of an `error` event or an error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamError {
    /// Error type, e.g. `overloaded_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Description.
    pub message: String,
}

/// One event of a streaming Messages response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// Opens the message, with input usage.
    MessageStart {
        /// The message so far (empty content).
        message: MessagesResponse,
    },
    /// Opens content block `index`.
    ContentBlockStart {
        /// Block position.
        index: u32,
        /// The block's start (type, and id/name for tool use).
        content_block: ContentBlock,
    },
    /// A piece of content block `index`.
    ContentBlockDelta {
        /// Block position.
        index: u32,
        /// The piece.
        delta: BlockDelta,
    },
    /// Closes content block `index`.
    ContentBlockStop {
        /// Block position.
        index: u32,
    },
    /// Stop reason and output usage.
    MessageDelta {
        /// Stop reason.
        delta: MessageDelta,
        /// Cumulative usage (output tokens at least).
        #[serde(default)]
        usage: MessagesUsage,
    },
    /// The end of the message.
    MessageStop,
    /// Keep-alive.
    Ping,
    /// A failure after the stream started.
    Error {
        /// What failed.
        error: StreamError,
    },
}

impl StreamEvent {
    /// The SSE `event:` name of this event.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
            StreamEvent::Ping => "ping",
            StreamEvent::Error { .. } => "error",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// Anthropic-compatible servers send `null` counts in `message_delta`.
    #[test]
    fn null_token_counts_read_as_none_reported() {
        let usage: MessagesUsage = serde_json::from_value(serde_json::json!({
            "input_tokens": null, "output_tokens": 12,
            "cache_read_input_tokens": null, "cache_creation_input_tokens": null
        }))
        .unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (0, 12));
        assert_eq!(usage.cache_read_input_tokens, None);
    }

    /// A tool loop's ids are rewritten in calls and results alike; thinking
    /// is left out only where the last turn called tools without it.
    #[test]
    fn tool_ids_stay_paired_and_thinking_goes_only_where_refused() {
        let request = |first: serde_json::Value| -> MessagesRequest {
            serde_json::from_value(serde_json::json!({
                "model": "m", "max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024},
                "messages": [
                    {"role": "user", "content": "go"},
                    {"role": "assistant", "content": [first, {"type": "tool_use", "id": "a.b", "name": "f", "input": {}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a.b", "content": "ok"}]}
                ]
            }))
            .unwrap()
        };
        let unthought = request(serde_json::json!({"type": "text", "text": "calling"}));
        let fixed = unthought.for_claude(|id| id.replace('.', "_")).unwrap();
        let Content::Blocks(call) = &fixed.messages[1].content else {
            panic!()
        };
        let Content::Blocks(result) = &fixed.messages[2].content else {
            panic!()
        };
        assert_eq!(call[1].id.as_deref(), Some("a_b"));
        assert_eq!(result[0].tool_use_id.as_deref(), Some("a_b"));
        assert!(!fixed.extra.contains_key("thinking"));
        // The request itself is left as it was, for another deployment.
        assert!(unthought.extra.contains_key("thinking"));
        assert!(unthought.turn_without_thinking());

        let thought = request(serde_json::json!({"type": "thinking", "thinking": "t", "signature": "s"}));
        assert!(!thought.turn_without_thinking());
        assert!(thought.for_claude(str::to_owned).is_none());
        // Claude thinks at the start of a tool loop only: a later step
        // without thinking continues a turn that had it.
        let mut looped = thought.clone();
        looped.messages.push(
            serde_json::from_value(serde_json::json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "c2", "name": "f", "input": {}}]}))
            .unwrap(),
        );
        looped.messages.push(
            serde_json::from_value(serde_json::json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "c2", "content": "ok"}]}))
            .unwrap(),
        );
        assert!(!looped.turn_without_thinking());
        assert!(looped.for_claude(str::to_owned).is_none());
        // Results and more text in two user messages are one user turn to
        // Claude: still the unthought loop.
        let mut split = unthought.clone();
        split
            .messages
            .push(serde_json::from_value(serde_json::json!({"role": "user", "content": "and also"})).unwrap());
        assert!(split.turn_without_thinking());
    }

    /// Another model's white space before its tool call, sent back, is
    /// left out for Claude, which refuses blank text blocks.
    #[test]
    fn blank_text_blocks_are_left_out_for_claude() {
        let request: MessagesRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "max_tokens": 100,
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": [{"type": "text", "text": "\n\n"},
                    {"type": "tool_use", "id": "c1", "name": "f", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "ok"}]},
                {"role": "assistant", "content": [{"type": "text", "text": " "}]},
                {"role": "user", "content": "more"},
                {"role": "assistant", "content": "answer"},
                {"role": "user", "content": [{"type": "text", "text": " "}]}
            ]
        }))
        .unwrap();
        let fixed = request.for_claude(str::to_owned).unwrap();
        assert_eq!(fixed.messages.len(), 6);
        // A blank user turn stays a turn.
        let Content::Blocks(last) = &fixed.messages[5].content else {
            panic!()
        };
        assert_eq!(last[0].text.as_deref(), Some("."));
        // One sent as a string of white space too.
        let spaced: MessagesRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "max_tokens": 100,
            "messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": "answer"},
                {"role": "user", "content": "  "}]
        }))
        .unwrap();
        let respaced = spaced.for_claude(str::to_owned).unwrap();
        let Content::Blocks(spaced_last) = &respaced.messages[2].content else {
            panic!()
        };
        assert_eq!(spaced_last[0].text.as_deref(), Some("."));
        let Content::Blocks(call) = &fixed.messages[1].content else {
            panic!()
        };
        assert_eq!(call.len(), 1);
        assert_eq!(call[0].kind, "tool_use");
        assert!(fixed.blocks().all(|b| !b.is_blank_text()));
    }
}
