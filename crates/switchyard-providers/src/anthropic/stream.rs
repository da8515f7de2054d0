//! Anthropic's streaming events → OpenAI chat chunks.
//!
//! Text deltas become `content` deltas; a `tool_use` block becomes a tool call
//! with a stable id and index, its `input_json_delta` pieces streamed as
//! `function.arguments` pieces; `message_delta` carries the finish reason; the
//! final usage chunk (when asked for) carries cached-token counts. A stream that
//! ends without `message_stop` ends with an error, never a silent truncation.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use switchyard_api::anthropic::{MessagesUsage, StreamEvent};
use switchyard_api::{ChatCompletionChunk, ChunkChoice, ChunkDelta, Extra, Role, Usage};

use super::translate::{finish_reason, usage};
use crate::sse::EventStream;
use crate::{ChunkStream, ProviderError, Result, StreamChunk};

/// Conversion state of one stream.
struct Converter {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    usage: MessagesUsage,
    /// Anthropic block index → OpenAI tool-call index.
    tools: HashMap<u32, u32>,
    finished: bool,
}

impl Converter {
    fn chunk(&self, delta: ChunkDelta, finish_reason: Option<String>, usage: Option<Usage>) -> Result<StreamChunk> {
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

    fn tool_delta(index: u32, call: Value) -> ChunkDelta {
        let mut call = call;
        call["index"] = json!(index);
        let mut extra = Extra::new();
        extra.insert("tool_calls".into(), json!([call]));
        ChunkDelta {
            role: None,
            content: None,
            extra,
        }
    }

    /// The chunks one event produces.
    fn on_event(&mut self, event: StreamEvent, out: &mut VecDeque<Result<StreamChunk>>) {
        match event {
            StreamEvent::MessageStart { message } => {
                self.id = message.id;
                self.model = message.model;
                self.usage = message.usage;
                let delta = ChunkDelta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                    extra: Extra::new(),
                };
                out.push_back(self.chunk(delta, None, None));
            }
            StreamEvent::ContentBlockStart { index, content_block } if content_block.kind == "tool_use" => {
                let tool_index = self.tools.len() as u32;
                self.tools.insert(index, tool_index);
                let call = json!({
                    "id": content_block.id.unwrap_or_default(),
                    "type": "function",
                    "function": {"name": content_block.name.unwrap_or_default(), "arguments": ""}
                });
                out.push_back(self.chunk(Self::tool_delta(tool_index, call), None, None));
            }
            StreamEvent::ContentBlockDelta { index, delta } => match delta.kind.as_str() {
                "text_delta" => {
                    let delta = ChunkDelta {
                        role: None,
                        content: delta.text,
                        extra: Extra::new(),
                    };
                    out.push_back(self.chunk(delta, None, None));
                }
                "input_json_delta" => {
                    let Some(&tool_index) = self.tools.get(&index) else {
                        out.push_back(Err(ProviderError::Stream(format!(
                            "input_json_delta for block {index}, which is not a tool_use block"
                        ))));
                        return;
                    };
                    let call = json!({"function": {"arguments": delta.partial_json.unwrap_or_default()}});
                    out.push_back(self.chunk(Self::tool_delta(tool_index, call), None, None));
                }
                _ => {}
            },
            StreamEvent::MessageDelta { delta, usage: u } => {
                self.usage.output_tokens = u.output_tokens;
                if u.input_tokens > 0 {
                    self.usage.input_tokens = u.input_tokens;
                }
                if u.cache_read_input_tokens.is_some() {
                    self.usage.cache_read_input_tokens = u.cache_read_input_tokens;
                }
                if u.cache_creation_input_tokens.is_some() {
                    self.usage.cache_creation_input_tokens = u.cache_creation_input_tokens;
                }
                let reason = finish_reason(delta.stop_reason.as_deref());
                out.push_back(self.chunk(ChunkDelta::default(), reason, None));
            }
            StreamEvent::MessageStop => {
                self.finished = true;
                if self.include_usage {
                    out.push_back(self.chunk(ChunkDelta::default(), None, Some(usage(&self.usage))));
                }
            }
            StreamEvent::Error { error } => out.push_back(Err(ProviderError::Stream(format!(
                "error event from the upstream: {} ({})",
                error.message, error.kind
            )))),
            StreamEvent::ContentBlockStart { .. } | StreamEvent::ContentBlockStop { .. } | StreamEvent::Ping => {}
        }
    }
}

/// Converts Anthropic SSE events into OpenAI chunks.
pub(crate) fn to_chat_chunks(events: EventStream, include_usage: bool, created: u64) -> ChunkStream {
    let converter = Converter {
        id: String::new(),
        model: String::new(),
        created,
        include_usage,
        usage: MessagesUsage::default(),
        tools: HashMap::new(),
        finished: false,
    };
    let state = (events, converter, VecDeque::<Result<StreamChunk>>::new(), false);
    let chunks = stream::unfold(state, |(mut events, mut conv, mut queue, mut failed)| async move {
        loop {
            if let Some(item) = queue.pop_front() {
                failed |= item.is_err();
                return Some((item, (events, conv, queue, failed)));
            }
            if failed || conv.finished {
                return None;
            }
            match events.next().await {
                None => queue.push_back(Err(ProviderError::Stream(
                    "the upstream closed the stream before message_stop".into(),
                ))),
                Some(Err(e)) => queue.push_back(Err(e)),
                Some(Ok(event)) if event.data.trim().is_empty() => {}
                Some(Ok(event)) => match serde_json::from_str::<StreamEvent>(&event.data) {
                    Ok(parsed) => conv.on_event(parsed, &mut queue),
                    Err(e) if event.event == "error" || event.data.contains("\"error\"") => queue.push_back(Err(
                        ProviderError::Stream(format!("error event from the upstream ({e})")),
                    )),
                    Err(e) => queue.push_back(Err(ProviderError::Stream(format!(
                        "malformed `{}` event from the upstream ({e})",
                        event.event
                    )))),
                },
            }
        }
    });
    Box::pin(chunks)
}
