//! Anthropic's streaming events → OpenAI chat chunks.
//!
//! Text deltas become `content` deltas; a `tool_use` block becomes a tool call
//! with a stable id and index, its `input_json_delta` pieces streamed as
//! `function.arguments` pieces; `message_delta` carries the finish reason; the
//! final usage chunk (when asked for) carries cached-token counts. A stream that
//! ends without `message_stop` ends with an error, never a silent truncation.

use std::collections::{HashMap, HashSet, VecDeque};

use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use switchyard_api::anthropic::{MessagesUsage, StreamEvent};

use super::translate::{finish_reason, usage};
use crate::chunks::{ChunkBuilder, ThinkingBlocks};
use crate::json_mode::{JSON_TOOL, json_finish};
use crate::sse::EventStream;
use crate::{ChunkStream, ProviderError, Result, StreamChunk};

/// Conversion state of one stream.
struct Converter {
    out: ChunkBuilder,
    include_usage: bool,
    usage: MessagesUsage,
    /// Anthropic block index → OpenAI tool-call index.
    tools: HashMap<u32, u32>,
    /// Tool blocks some argument text was sent for: one that ends without
    /// any (a tool without parameters) gets `{}`, as OpenAI sends.
    argued: HashSet<u32>,
    finished: bool,
    /// The request asked for a JSON answer: the JSON tool's input is streamed
    /// as text.
    json: bool,
    /// The JSON tool's block index (the first one: two answers would not
    /// make one JSON text).
    json_block: Option<u32>,
    /// Later JSON tool blocks, left out.
    extra_json_blocks: Vec<u32>,
    /// The JSON tool's input has been streamed (an empty object comes
    /// without a piece: `{}` is sent when the block ends).
    json_argued: bool,
    /// Text of a JSON answer held back: left out if the JSON tool answers,
    /// passed on if the model answers in text instead.
    held: String,
    /// Thinking blocks being streamed: block index → text and signature so
    /// far, sent whole (signed) as `thinking_blocks` when the block ends.
    thinking: HashMap<u32, (String, String)>,
    /// Thinking blocks sent so far.
    blocks: ThinkingBlocks,
    /// Tool blocks whose start held their whole input (compatible servers):
    /// argument deltas after it are left out.
    whole_at_start: HashSet<u32>,
}

impl Converter {
    /// Passes held text on, unless the JSON tool answered.
    fn release(&mut self, out: &mut VecDeque<Result<StreamChunk>>) {
        if self.json_block.is_none() && !self.held.is_empty() {
            let text = std::mem::take(&mut self.held);
            out.push_back(self.out.text(text));
        }
    }

    /// The chunks one event produces.
    fn on_event(&mut self, event: StreamEvent, out: &mut VecDeque<Result<StreamChunk>>) {
        match event {
            StreamEvent::MessageStart { message } => {
                self.out.id = message.id;
                self.out.model = message.model;
                self.usage = message.usage;
                // The prompt's exact counts (cache reads and writes apart)
                // ride on the first chunk, outside its JSON: a stream cut
                // before its end is charged by them, not by an estimate.
                out.push_back(self.out.role().map(|mut chunk| {
                    chunk.usage = Some(usage(&self.usage));
                    chunk
                }));
            }
            StreamEvent::ContentBlockStart { index, content_block }
                if self.json
                    && content_block.kind == "tool_use"
                    && content_block.name.as_deref() == Some(JSON_TOOL) =>
            {
                if self.json_block.is_none() {
                    self.json_block = Some(index);
                    self.held.clear();
                    // A compatible server's start may hold the whole input.
                    if let Some(input) = content_block
                        .input
                        .as_ref()
                        .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                    {
                        self.json_argued = true;
                        self.whole_at_start.insert(index);
                        out.push_back(self.out.text(input.to_string()));
                    }
                } else {
                    self.extra_json_blocks.push(index);
                }
            }
            StreamEvent::ContentBlockStart { index, content_block } if content_block.kind == "thinking" => {
                // Claude's start is empty; a compatible server's may hold
                // the thinking, or its signature, already.
                let text = content_block
                    .extra
                    .get("thinking")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let signature = content_block
                    .extra
                    .get("signature")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !text.is_empty() {
                    out.push_back(self.out.reasoning(text.to_owned()));
                }
                self.thinking.insert(index, (text.to_owned(), signature.to_owned()));
            }
            StreamEvent::ContentBlockStart { content_block, .. } if content_block.kind == "redacted_thinking" => {
                let block = serde_json::to_value(&content_block).unwrap_or_default();
                out.push_back(self.blocks.chunk(&self.out, block));
            }
            StreamEvent::ContentBlockStop { index } if self.thinking.contains_key(&index) => {
                if let Some((text, signature)) = self.thinking.remove(&index) {
                    let block = json!({"type": "thinking", "thinking": text, "signature": signature});
                    out.push_back(self.blocks.chunk(&self.out, block));
                }
            }
            StreamEvent::ContentBlockStart { index, content_block } if content_block.kind == "tool_use" => {
                self.release(out);
                let tool_index = self.tools.len() as u32;
                self.tools.insert(index, tool_index);
                let id = content_block.id.unwrap_or_default();
                let name = content_block.name.unwrap_or_default();
                out.push_back(self.out.tool_start(tool_index, &id, &name));
                // Some Anthropic-compatible servers send the whole input in
                // the block's start, with no `input_json_delta` after it.
                if let Some(input) = content_block
                    .input
                    .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                {
                    self.argued.insert(index);
                    self.whole_at_start.insert(index);
                    out.push_back(self.out.tool_arguments(tool_index, input.to_string()));
                }
            }
            // A tool's input its block's start held whole, streamed again.
            StreamEvent::ContentBlockDelta { index, delta }
                if self.whole_at_start.contains(&index) && delta.kind == "input_json_delta" => {}
            StreamEvent::ContentBlockDelta { index, delta } => match delta.kind.as_str() {
                "thinking_delta" => {
                    let piece = delta.extra.get("thinking").and_then(Value::as_str).unwrap_or_default();
                    if let Some((text, _)) = self.thinking.get_mut(&index) {
                        text.push_str(piece);
                    }
                    if !piece.is_empty() {
                        out.push_back(self.out.reasoning(piece.to_owned()));
                    }
                }
                // Claude signs a block in one piece: it replaces a signature
                // a compatible server put in the block's start.
                "signature_delta" => {
                    if let Some((_, signature)) = self.thinking.get_mut(&index) {
                        delta
                            .extra
                            .get("signature")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .clone_into(signature);
                    }
                }
                "text_delta" if self.json && self.json_block.is_none() => {
                    self.held.push_str(delta.text.as_deref().unwrap_or_default());
                }
                "text_delta" if self.json => {}
                "text_delta" => out.push_back(self.out.text(delta.text.unwrap_or_default())),
                "input_json_delta" if self.json_block == Some(index) => {
                    let piece = delta.partial_json.unwrap_or_default();
                    if !piece.is_empty() {
                        self.json_argued = true;
                        out.push_back(self.out.text(piece));
                    }
                }
                "input_json_delta" if self.extra_json_blocks.contains(&index) => {}
                "input_json_delta" => {
                    let Some(&tool_index) = self.tools.get(&index) else {
                        out.push_back(Err(ProviderError::Stream(format!(
                            "input_json_delta for block {index}, which is not a tool_use block"
                        ))));
                        return;
                    };
                    let piece = delta.partial_json.unwrap_or_default();
                    if !piece.is_empty() {
                        self.argued.insert(index);
                        out.push_back(self.out.tool_arguments(tool_index, piece));
                    }
                }
                _ => {}
            },
            StreamEvent::ContentBlockStop { index } if self.json_block == Some(index) => {
                if !std::mem::replace(&mut self.json_argued, true) {
                    out.push_back(self.out.text("{}".into()));
                }
            }
            StreamEvent::ContentBlockStop { index } if self.tools.contains_key(&index) => {
                if !self.argued.contains(&index)
                    && let Some(&tool_index) = self.tools.get(&index)
                {
                    out.push_back(self.out.tool_arguments(tool_index, "{}".into()));
                }
            }
            StreamEvent::MessageDelta { delta, usage: u } => {
                self.release(out);
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
                let finish = finish_reason(delta.stop_reason.as_deref())
                    .map(|f| json_finish(f, self.json && self.tools.is_empty()));
                out.push_back(self.out.finish(finish).map(|mut chunk| {
                    chunk.usage = Some(usage(&self.usage));
                    chunk
                }));
            }
            StreamEvent::MessageStop => {
                self.finished = true;
                if self.include_usage {
                    out.push_back(self.out.usage(usage(&self.usage)));
                }
            }
            StreamEvent::Error { error } => out.push_back(Err(error_status(&error.kind, &error.message))),
            StreamEvent::ContentBlockStart { .. } | StreamEvent::ContentBlockStop { .. } | StreamEvent::Ping => {}
        }
    }
}

/// Converts Anthropic SSE events into OpenAI chunks (`json`: the request
/// asked for a JSON answer, which comes as the JSON tool's input).
pub(crate) fn to_chat_chunks(events: EventStream, include_usage: bool, created: u64, json: bool) -> ChunkStream {
    let converter = Converter {
        out: ChunkBuilder {
            created,
            ..ChunkBuilder::default()
        },
        include_usage,
        usage: MessagesUsage::default(),
        tools: HashMap::new(),
        argued: HashSet::new(),
        finished: false,
        json,
        json_block: None,
        extra_json_blocks: Vec::new(),
        json_argued: false,
        held: String::new(),
        thinking: HashMap::new(),
        blocks: ThinkingBlocks::default(),
        whole_at_start: HashSet::new(),
    };
    let state = (events, converter, VecDeque::<Result<StreamChunk>>::new(), false);
    let chunks = stream::unfold(state, |(mut events, mut conv, mut queue, mut failed)| async move {
        loop {
            if let Some(item) = queue.pop_front() {
                failed |= item.is_err();
                return Some((item, (events, conv, queue, failed)));
            }
            if failed || conv.finished {
                if conv.finished {
                    crate::sse::drain(events);
                }
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
                    Err(_) if event.event == "error" || event.data.contains("\"error\"") => {
                        queue.push_back(Err(error_event(&event.data)));
                    }
                    // Anthropic may add event types; clients are to ignore
                    // those they do not know.
                    Err(_) if is_unknown_event(&event.data) => {
                        tracing::debug!(event = %event.event, "unknown Anthropic stream event skipped");
                    }
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

/// The HTTP status Anthropic gives an error `type` when it answers with a
/// status rather than in a stream.
fn status_of(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "billing_error" => 402,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        "timeout_error" => 504,
        _ => 500,
    }
}

/// An error Anthropic sent inside a stream, typed as the status it stands
/// for when that is a rate limit, a timeout, a server error, a prompt too
/// long or a content-policy refusal: an `overloaded_error` mid-stream is a
/// 529 (retried, and counted against the deployment) like one sent as the
/// response's status. Others stay a broken stream: another 4xx sent after a
/// 200 says nothing reliable about the request or the deployment's key.
pub fn error_status(kind: &str, message: &str) -> ProviderError {
    let typed = ProviderError::Status {
        status: status_of(kind),
        message: format!("{message} (in the stream)"),
        kind: Some(kind.into()),
        code: None,
        param: None,
        retry_after: None,
        details: None,
    };
    crate::error::in_stream(typed, &format!("{message} ({kind})"))
}

/// An `error` event's data (`{"type":"error","error":{"type","message"}}`)
/// as a typed error; data of another shape is a broken stream.
pub fn error_event(data: &str) -> ProviderError {
    let parsed = serde_json::from_str::<serde_json::Value>(data).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    match (
        error.and_then(|e| e.get("type")).and_then(serde_json::Value::as_str),
        error.and_then(|e| e.get("message")).and_then(serde_json::Value::as_str),
    ) {
        (Some(kind), message) => error_status(kind, message.unwrap_or("the upstream reported an error")),
        (None, _) => ProviderError::Stream(format!("error event from the upstream: {data}")),
    }
}

/// Whether `data` is a JSON object whose `type` is no event this stream
/// knows.
fn is_unknown_event(data: &str) -> bool {
    const KNOWN: &[&str] = &[
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    ];
    serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("type").and_then(serde_json::Value::as_str).map(str::to_owned))
        .is_some_and(|kind| !KNOWN.contains(&kind.as_str()))
}

#[cfg(test)]
mod tests {
    use super::is_unknown_event;

    #[test]
    fn only_event_types_it_does_not_know_are_skipped() {
        assert!(is_unknown_event(r#"{"type":"message_annotation","x":1}"#));
        assert!(!is_unknown_event(r#"{"type":"content_block_delta","index":"bad"}"#));
        assert!(!is_unknown_event("{not json"));
        assert!(!is_unknown_event(r#"{"no_type":1}"#));
    }
}
