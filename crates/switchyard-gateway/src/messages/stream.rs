//! Anthropic-format event streams for `/v1/messages`: upstream Anthropic events
//! passed through, or OpenAI chunks converted into Anthropic events.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream};
use serde_json::{Value, json};
use switchyard_api::anthropic::{ContentBlock, MessageRole, MessagesResponse, MessagesUsage, StreamEvent};
use switchyard_api::{ChatCompletionChunk, Extra, Usage};
use switchyard_providers::{ChunkStream, ProviderError};

use super::translate::{final_stop_reason, messages_usage, stop_reason};

/// Frames one event as `event: NAME\ndata: JSON\n\n`.
pub fn frame(name: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(name.len() + data.len() + 16);
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\n");
    crate::stream::put_data(&mut out, data);
    out.put_slice(b"\n");
    out.freeze()
}

fn event(e: &StreamEvent) -> Bytes {
    frame(e.name(), &serde_json::to_vec(e).unwrap_or_default())
}

/// The `error` event for a stream that failed after it started.
pub fn error_event(deployment: &str, err: ProviderError) -> Bytes {
    let error = crate::stream::stream_failure(deployment, err);
    tracing::warn!(error = %crate::error::Clipped(&error), "stream failed after it started");
    let kind = super::anthropic_type_of(&error);
    let body = json!({"type": "error", "error": {"type": kind, "message": error.message()}});
    frame("error", body.to_string().as_bytes())
}

/// An SSE response over already-framed events.
pub fn sse(events: impl Stream<Item = Bytes> + Send + 'static) -> Response {
    let mut response = Response::new(Body::from_stream(events.map(Ok::<_, Infallible>)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies (nginx) pass the events on as they come.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Upstream Anthropic events, re-framed unchanged; the stream must end with `message_stop`.
pub fn passthrough(events: switchyard_providers::sse::EventStream, deployment: String) -> Response {
    let out = stream::unfold(
        (events, deployment, false),
        |(mut events, deployment, done)| async move {
            if done {
                return None;
            }
            loop {
                let (bytes, done) = match events.next().await {
                    None => (
                        error_event(
                            &deployment,
                            ProviderError::Stream("the upstream closed the stream before message_stop".into()),
                        ),
                        true,
                    ),
                    Some(Err(e)) => (error_event(&deployment, e), true),
                    Some(Ok(ev)) if ev.data.trim().is_empty() => continue,
                    Some(Ok(ev)) => {
                        let name = if ev.event.is_empty() {
                            "message"
                        } else {
                            ev.event.as_str()
                        };
                        (
                            frame(name, ev.data.as_bytes()),
                            name == "message_stop" || name == "error",
                        )
                    }
                };
                return Some((bytes, (events, deployment, done)));
            }
        },
    );
    sse(out)
}

/// Marks the open block as a thinking block (tool calls use their index).
const THINKING: u64 = u64::MAX;

/// Which streamed tool call each piece of a chat stream belongs to.
#[derive(Debug, Default)]
pub(crate) struct ToolKeys {
    /// Calls streamed without an `index` (some servers leave it out): each
    /// one's id and the key it is followed under.
    unindexed: Vec<(String, u64)>,
    /// Calls streamed with an `index`: the index, the call's id, and the key
    /// it is followed under.
    indexed: Vec<(u64, Option<String>, u64)>,
    /// The key of the call the last piece belonged to.
    last: Option<u64>,
    /// Keys of finished calls under which another call started, and that
    /// call's key.
    restarted: Vec<(u64, u64)>,
    /// Keys of the finished calls, and their names.
    closed: Vec<(u64, String)>,
}

/// Keys given to calls that start under a finished call's key.
const RESTARTED_KEYS: u64 = 1 << 40;

/// Whether a streamed call piece brings arguments (not `""`, `null` or none).
fn has_arguments(call: &Value) -> bool {
    match call.pointer("/function/arguments") {
        Some(Value::String(a)) => !a.trim().is_empty(),
        Some(Value::Object(_)) => true,
        _ => false,
    }
}

impl ToolKeys {
    /// The key of a streamed call piece, as [`ToolKeys::key`] with the call
    /// of the last piece as the current one; pieces under a finished call's
    /// key go to the newest call started under it. A named piece without an
    /// id under a finished call's key starts another call (servers that
    /// stream calls without ids under one index, or without an index, with
    /// text between them) when it names another function (`name_of` gives
    /// the name a finished call is known by) or brings arguments: a server
    /// repeating the name on a call's every piece adds no call.
    pub(crate) fn piece(&mut self, call: &Value, name_of: impl Fn(&str) -> String) -> u64 {
        let first = self.key(call, self.last);
        let mut key = self
            .restarted
            .iter()
            .rev()
            .find(|(from, _)| *from == first)
            .map_or(first, |(_, to)| *to);
        let id = call.get("id").and_then(Value::as_str).filter(|id| !id.is_empty());
        let name = call
            .pointer("/function/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        let closed = self.closed.iter().find(|(k, _)| *k == key).map(|(_, n)| n.as_str());
        let starts = id.is_none()
            && name.is_some_and(|name| closed.is_some_and(|closed| closed != name_of(name) || has_arguments(call)));
        if starts {
            key = RESTARTED_KEYS + self.restarted.len() as u64;
            self.restarted.push((first, key));
        }
        self.last = Some(key);
        key
    }

    /// Marks the call under `key`, named `name`, finished.
    pub(crate) fn close(&mut self, key: u64, name: String) {
        self.closed.push((key, name));
    }

    /// Whether the call under `key` is finished.
    pub(crate) fn is_closed(&self, key: u64) -> bool {
        self.closed.iter().any(|(k, _)| *k == key)
    }

    /// The key a streamed tool call's pieces are gathered under: its
    /// `index`; without one, its `id` (a new call), or else `current`, the
    /// call being streamed (a continuation).
    pub(crate) fn key(&mut self, call: &Value, current: Option<u64>) -> u64 {
        /// Keys of unindexed calls, apart from real indexes.
        const UNINDEXED: u64 = 1 << 32;
        /// Keys of calls streamed under an index another call used before.
        const REUSED: u64 = 1 << 33;
        if let Some(index) = call.get("index").and_then(Value::as_u64) {
            // Some servers (Ollama) stream every parallel call at index 0:
            // a new id under a known index is a new call, and pieces without
            // an id belong to the newest call of that index.
            let id = call.get("id").and_then(Value::as_str).filter(|id| !id.is_empty());
            let newest = self.indexed.iter().rev().find(|(i, _, _)| *i == index);
            return match (newest, id) {
                (Some((_, Some(known), _)), Some(id)) if known != id => {
                    let key = REUSED + self.indexed.len() as u64;
                    self.indexed.push((index, Some(id.to_owned()), key));
                    key
                }
                (Some((_, _, key)), _) => *key,
                (None, id) => {
                    self.indexed.push((index, id.map(str::to_owned), index));
                    index
                }
            };
        }
        match call.get("id").and_then(Value::as_str).filter(|id| !id.is_empty()) {
            Some(id) => match self.unindexed.iter().find(|(known, _)| known == id) {
                Some((_, key)) => *key,
                None => {
                    let key = UNINDEXED + self.unindexed.len() as u64;
                    self.unindexed.push((id.to_owned(), key));
                    key
                }
            },
            None => current.unwrap_or(0),
        }
    }
}

/// Conversion state of OpenAI chunks into Anthropic events.
struct Converter {
    started: bool,
    /// The open text (`None`) or thinking (`Some(u64::MAX)`) block's index.
    open: Option<(u32, Option<u64>)>,
    /// The open tool-use block: its call's key and the block's index.
    /// Blocks are written one after the other, each stopped before the
    /// next starts, as Claude streams them.
    tool: Option<(u64, u32)>,
    /// Calls whose pieces came while another was still being written
    /// (servers that interleave parallel calls): held whole, and written
    /// once that one is stopped.
    pending: Vec<PendingTool>,
    next_index: u32,
    /// The upstream's id of the answer (from its first chunk).
    upstream_id: String,
    stop_reason: Option<String>,
    usage: Option<Usage>,
    /// Whether a tool call was streamed.
    used_tools: bool,
    /// Tool names shortened for the upstream, to restore.
    tool_names: Vec<(String, String)>,
    /// Which call each streamed piece belongs to.
    keys: ToolKeys,
    /// Whether the client asked for thinking (reasoning is passed on only
    /// then, or before a tool call).
    thinking: bool,
    /// Reasoning the client did not ask for, kept until a tool call shows
    /// it is needed: a reasoning model (DeepSeek, Kimi) wants it back with
    /// the call's turn, which the client sends as the thinking block.
    unasked: String,
    /// The stop sequence that ended the answer, when the server said which.
    stop_sequence: Option<String>,
    /// The gateway's estimate of the prompt's tokens, for `message_start`.
    estimated_input: u64,
    /// Chunks read, for the output estimate of a stream without usage (as
    /// it is charged: a token per chunk).
    chunks: u64,
    /// The arguments streamed so far of the open call.
    arguments: String,
    /// The open tool-use block's function name.
    tool_name: String,
    /// Text and reasoning a server sent while a call's arguments were still
    /// coming, in order: sent once they are whole (a text or thinking block
    /// closes the calls before it, which would cut the call in two).
    held: Vec<Held>,
    /// White space that would open a text block, held until text follows:
    /// alone (Qwen's `"\n\n"` before a tool call) it would be a blank
    /// block, which Claude refuses when the turn is sent back.
    space: String,
}

/// A tool call held until the block before it is stopped.
#[derive(Debug)]
struct PendingTool {
    key: u64,
    /// The call's id and name, once a piece gave them.
    id: Option<String>,
    name: Option<String>,
    /// A Gemini thought signature, from `extra_content`.
    extra_content: Option<Value>,
    arguments: String,
}

/// A piece held back while a call's arguments were still coming.
#[derive(Debug)]
enum Held {
    Text(String),
    Thinking(String),
}

impl Converter {
    /// Whether an open call's arguments are still coming (not yet one whole
    /// JSON value).
    fn mid_call(&self) -> bool {
        !self.pending.is_empty()
            || (self.tool.is_some() && serde_json::from_str::<serde::de::IgnoredAny>(&self.arguments).is_err())
    }

    /// Sends `text` in the open text block, or a new one.
    fn text(&mut self, text: String, out: &mut Vec<Bytes>) {
        let in_text = matches!(self.open, Some((_, None)));
        if !in_text && text.trim().is_empty() {
            self.space.push_str(&text);
            return;
        }
        let text = if self.space.is_empty() {
            text
        } else {
            let mut joined = std::mem::take(&mut self.space);
            joined.push_str(&text);
            joined
        };
        let index = match self.open {
            Some((index, None)) => index,
            _ => self.open(ContentBlock::text(""), None, out),
        };
        let delta = switchyard_api::anthropic::BlockDelta {
            kind: "text_delta".into(),
            text: Some(text),
            ..Default::default()
        };
        out.push(event(&StreamEvent::ContentBlockDelta { index, delta }));
    }

    /// Holds `piece` back, joining the last held piece of its kind.
    fn hold(&mut self, piece: Held) {
        match (self.held.last_mut(), &piece) {
            (Some(Held::Text(held)), Held::Text(more)) | (Some(Held::Thinking(held)), Held::Thinking(more)) => {
                held.push_str(more);
            }
            _ => self.held.push(piece),
        }
    }

    /// Sends what was held back during a call, in the order it came.
    fn release_held(&mut self, out: &mut Vec<Bytes>) {
        for piece in std::mem::take(&mut self.held) {
            match piece {
                Held::Text(text) => self.text(text, out),
                Held::Thinking(thinking) => self.reasoning(thinking, out),
            }
        }
    }

    /// Sends reasoning in the open thinking block, or a new one.
    fn reasoning(&mut self, thinking: String, out: &mut Vec<Bytes>) {
        let index = match self.open {
            Some((index, Some(THINKING))) => index,
            _ => {
                let mut block = ContentBlock {
                    kind: "thinking".into(),
                    ..ContentBlock::default()
                };
                block.extra.insert("thinking".into(), json!(""));
                // Claude's blocks carry one (SDKs read it): empty,
                // as no Claude model signed this reasoning.
                block.extra.insert("signature".into(), json!(""));
                self.open(block, Some(THINKING), out)
            }
        };
        let mut delta = switchyard_api::anthropic::BlockDelta {
            kind: "thinking_delta".into(),
            ..Default::default()
        };
        delta.extra.insert("thinking".into(), json!(thinking));
        out.push(event(&StreamEvent::ContentBlockDelta { index, delta }));
    }
    /// Stops the open block, then writes the calls held, each whole.
    fn close(&mut self, out: &mut Vec<Bytes>) {
        if let Some((index, _)) = self.open.take() {
            out.push(event(&StreamEvent::ContentBlockStop { index }));
        }
        self.stop_tool(out);
        for call in std::mem::take(&mut self.pending) {
            let block = self.tool_block(call.id, call.name.as_deref(), call.extra_content.as_ref());
            let index = self.open(block, Some(call.key), out);
            self.tool_arguments(index, call.arguments, out);
            self.stop_tool(out);
        }
    }

    /// Stops the open tool-use block.
    fn stop_tool(&mut self, out: &mut Vec<Bytes>) {
        if let Some((key, index)) = self.tool.take() {
            self.keys.close(key, std::mem::take(&mut self.tool_name));
            self.arguments.clear();
            out.push(event(&StreamEvent::ContentBlockStop { index }));
        }
    }

    /// A tool-use block for a call; one streamed without an id gets one:
    /// the client's `tool_result` must name it.
    fn tool_block(&self, id: Option<String>, name: Option<&str>, extra_content: Option<&Value>) -> ContentBlock {
        let id = id.unwrap_or_else(|| super::translate::tool_use_id(&self.upstream_id, self.next_index as usize));
        let signature = super::translate::thought_signature(extra_content);
        ContentBlock {
            kind: "tool_use".into(),
            id: Some(super::translate::signed_tool_use_id(id, signature)),
            name: name.map(|n| super::translate::original_tool_name(&self.tool_names, n.to_owned())),
            input: Some(json!({})),
            ..ContentBlock::default()
        }
    }

    /// Streams `args` into the open tool-use block `index`.
    fn tool_arguments(&mut self, index: u32, args: String, out: &mut Vec<Bytes>) {
        if args.is_empty() {
            return;
        }
        self.arguments.push_str(&args);
        let delta = switchyard_api::anthropic::BlockDelta {
            kind: "input_json_delta".into(),
            partial_json: Some(args),
            ..Default::default()
        };
        out.push(event(&StreamEvent::ContentBlockDelta { index, delta }));
    }

    /// A piece of a streamed tool call.
    fn tool_call(&mut self, call: &Value, out: &mut Vec<Bytes>) {
        let id = call.get("id").and_then(Value::as_str).filter(|id| !id.is_empty());
        let name = call
            .pointer("/function/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        let tool_names = &self.tool_names;
        let key = self
            .keys
            .piece(call, |n| super::translate::original_tool_name(tool_names, n.to_owned()));
        let extra = call.get("extra_content").filter(|v| v.is_object());
        // Arguments sent as an object (some servers do) are its encoding.
        let args = match call.pointer("/function/arguments") {
            Some(Value::String(a)) => a.clone(),
            Some(v @ Value::Object(_)) => v.to_string(),
            _ => String::new(),
        };
        if let Some((_, index)) = self.tool.filter(|(k, _)| *k == key) {
            self.tool_arguments(index, args, out);
            self.advance(out);
            return;
        }
        if let Some(held) = self.pending.iter_mut().find(|c| c.key == key) {
            if held.id.is_none() {
                held.id = id.map(str::to_owned);
            }
            if held.name.is_none() {
                held.name = name.map(str::to_owned);
            }
            if let Some(extra) = extra {
                held.extra_content = Some(extra.clone());
            }
            held.arguments.push_str(&args);
            self.advance(out);
            return;
        }
        if self.keys.is_closed(key) {
            if !args.trim().is_empty() {
                tracing::warn!("a streamed tool call's piece came after its block was stopped; left out");
            }
            return;
        }
        self.used_tools = true;
        if self.tool.is_none() || (self.pending.is_empty() && self.tool_is_whole()) {
            self.stop_tool(out);
            // Text that came amid the call's arguments follows it, before
            // the next call.
            self.release_held(out);
            let block = self.tool_block(id.map(str::to_owned), name, extra);
            let index = self.open(block, Some(key), out);
            self.tool_arguments(index, args, out);
            self.advance(out);
        } else {
            // The open call may not be whole yet: this one waits.
            self.pending.push(PendingTool {
                key,
                id: id.map(str::to_owned),
                name: name.map(str::to_owned),
                extra_content: extra.cloned(),
                arguments: args,
            });
        }
    }

    /// Whether the open call's arguments are one whole JSON value.
    fn tool_is_whole(&self) -> bool {
        self.tool.is_some() && serde_json::from_str::<serde::de::IgnoredAny>(&self.arguments).is_ok()
    }

    /// Once the open call's arguments are whole, the calls held after it
    /// are written in turn (each streams on from there).
    fn advance(&mut self, out: &mut Vec<Bytes>) {
        while !self.pending.is_empty() && self.tool_is_whole() {
            self.stop_tool(out);
            let next = self.pending.remove(0);
            let block = self.tool_block(next.id, next.name.as_deref(), next.extra_content.as_ref());
            let index = self.open(block, Some(next.key), out);
            self.tool_arguments(index, next.arguments, out);
        }
    }

    fn open(&mut self, block: ContentBlock, tool: Option<u64>, out: &mut Vec<Bytes>) -> u32 {
        match tool {
            // A text or thinking block follows everything before it.
            None | Some(THINKING) => self.close(out),
            // A tool call stops the text before it (the call before it is
            // stopped by the caller).
            Some(_) => {
                if let Some((index, _)) = self.open.take() {
                    out.push(event(&StreamEvent::ContentBlockStop { index }));
                }
            }
        }
        let index = self.next_index;
        self.next_index += 1;
        let started_name = block.name.clone().unwrap_or_default();
        out.push(event(&StreamEvent::ContentBlockStart {
            index,
            content_block: block,
        }));
        match tool {
            None => self.open = Some((index, None)),
            Some(THINKING) => self.open = Some((index, Some(THINKING))),
            Some(tool) => self.tool = Some((tool, index)),
        }
        if tool.is_some_and(|t| t != THINKING) {
            self.tool_name = started_name;
        }
        index
    }

    /// `message_start`, once.
    fn start(&mut self, id: &str, model: &str, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        id.clone_into(&mut self.upstream_id);
        let message = MessagesResponse {
            id: super::translate::message_id(id),
            kind: "message".into(),
            role: MessageRole::Assistant,
            model: model.to_owned(),
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            // OpenAI-format upstreams report usage at the end only: until
            // `message_delta` brings it, the input is the gateway's estimate
            // (clients that read only this event's input count see it).
            usage: MessagesUsage {
                input_tokens: self.estimated_input,
                output_tokens: 1,
                ..MessagesUsage::default()
            },
            extra: Extra::new(),
        };
        out.push(event(&StreamEvent::MessageStart { message }));
    }

    fn on_chunk(&mut self, chunk: ChatCompletionChunk, out: &mut Vec<Bytes>) {
        // Each chunk read is a token of the output estimate, as the stream
        // is charged without the upstream's usage.
        self.chunks += 1;
        // Azure opens with a chunk of prompt filter results only (no id, no
        // choices): the message starts with the first real chunk.
        if !self.started && chunk.id.is_empty() && chunk.choices.is_empty() && chunk.usage.is_none() {
            return;
        }
        self.start(&chunk.id, &chunk.model, out);
        // An all-zero usage (some servers put one in every chunk) counts
        // nothing: the estimates stand, as the stream is charged.
        if let Some(usage) = chunk
            .usage
            .filter(|u| u.prompt_tokens > 0 || u.completion_tokens > 0 || u.total_tokens > 0)
        {
            self.usage = Some(usage);
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            // Reasoning from OpenAI-compatible servers (vLLM, DeepSeek…):
            // `reasoning_content`, or `reasoning` in newer vLLM.
            let reasoning = ["reasoning_content", "reasoning"].iter().find_map(|k| {
                choice
                    .delta
                    .extra
                    .get(*k)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
            });
            if let Some(thinking) = reasoning.map(str::to_owned) {
                if !self.thinking {
                    self.unasked.push_str(&thinking);
                } else if self.mid_call() {
                    self.hold(Held::Thinking(thinking));
                } else {
                    self.release_held(out);
                    self.reasoning(thinking, out);
                }
            }
            let refusal = choice
                .delta
                .extra
                .get("refusal")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if refusal.is_some() {
                self.stop_reason = Some("refusal".into());
            }
            // White space a server sends between one call's argument chunks
            // would close the call (a block follows everything before it)
            // and split its arguments: it is left out while calls are open.
            let content = choice
                .delta
                .content
                .filter(|t| !t.is_empty() && (self.tool.is_none() || !t.trim().is_empty()));
            if let Some(text) = content.or(refusal) {
                if self.mid_call() {
                    self.hold(Held::Text(text));
                } else {
                    self.release_held(out);
                    self.text(text, out);
                }
            }
            let calls = choice
                .delta
                .extra
                .get("tool_calls")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !calls.is_empty() && !self.unasked.is_empty() {
                let thinking = std::mem::take(&mut self.unasked);
                if self.mid_call() {
                    self.hold(Held::Thinking(thinking));
                } else {
                    self.release_held(out);
                    self.reasoning(thinking, out);
                }
            }
            for call in &calls {
                self.tool_call(call, out);
            }
            // Some relays send `""` on the chunks before the last.
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty())
                && self.stop_reason.as_deref() != Some("refusal")
            {
                self.stop_sequence = super::translate::matched_stop(Some(&reason), &choice.extra);
                self.stop_reason = stop_reason(Some(&reason));
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) {
        self.start("", "", out);
        // Text or reasoning held back for a call that never finished its
        // arguments still reaches the client, after it.
        self.release_held(out);
        self.close(out);
        out.push(event(&StreamEvent::MessageDelta {
            delta: switchyard_api::anthropic::MessageDelta {
                stop_reason: Some(match &self.stop_sequence {
                    Some(_) if !self.used_tools => "stop_sequence".to_owned(),
                    _ => final_stop_reason(self.stop_reason.as_deref(), self.used_tools),
                }),
                stop_sequence: self.stop_sequence.clone().filter(|_| !self.used_tools),
            },
            // Without the upstream's usage: the estimates the stream is
            // charged (the prompt, and a token per event), not zeros.
            usage: match self.usage.as_ref() {
                Some(usage) => messages_usage(Some(usage)),
                None => switchyard_api::anthropic::MessagesUsage {
                    input_tokens: self.estimated_input,
                    output_tokens: self.chunks,
                    ..Default::default()
                },
            },
        }));
        out.push(event(&StreamEvent::MessageStop));
    }
}

/// How long a translated stream goes without an event while its upstream
/// sends chunks that give the client nothing, before a `ping`.
const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// OpenAI chunks converted to Anthropic events, as an SSE response.
///
/// `fault` is told of a chunk that cannot be read, so that the stream ends
/// as that upstream failure rather than as a client that left.
pub fn from_chat_chunks(
    chunks: ChunkStream,
    (deployment, fault): (String, crate::stream::StreamFault),
    tool_names: Vec<(String, String)>,
    thinking: bool,
    estimated_input: u64,
) -> Response {
    sse(converted(
        chunks,
        (deployment, fault),
        tool_names,
        thinking,
        estimated_input,
        PING_EVERY,
    ))
}

/// The events of [`from_chat_chunks`], with a `ping` after `ping_every`
/// without one.
fn converted(
    chunks: ChunkStream,
    (deployment, fault): (String, crate::stream::StreamFault),
    tool_names: Vec<(String, String)>,
    thinking: bool,
    estimated_input: u64,
    ping_every: std::time::Duration,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let converter = Converter {
        estimated_input,
        thinking,
        stop_sequence: None,
        tool_names,
        keys: ToolKeys::default(),
        chunks: 0,
        started: false,
        open: None,
        tool: None,
        pending: Vec::new(),
        tool_name: String::new(),
        next_index: 0,
        upstream_id: String::new(),
        stop_reason: None,
        usage: None,
        used_tools: false,
        arguments: String::new(),
        held: Vec::new(),
        space: String::new(),
        unasked: String::new(),
    };
    stream::unfold(
        (chunks, converter, (deployment, fault), false),
        move |(mut chunks, mut conv, (deployment, fault), done)| async move {
            if done {
                return None;
            }
            let mut out = Vec::new();
            let quiet_since = tokio::time::Instant::now();
            let done = loop {
                // Once the message has started, a silent upstream (a model
                // thinking) gets pings too, so a proxy's idle timeout does
                // not cut the stream.
                let next = if conv.started {
                    match tokio::time::timeout_at(quiet_since + ping_every, chunks.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            out.push(event(&StreamEvent::Ping));
                            break false;
                        }
                    }
                } else {
                    chunks.next().await
                };
                match next {
                    Some(Ok(chunk)) => match serde_json::from_slice::<ChatCompletionChunk>(&chunk.data) {
                        Ok(parsed) => conv.on_chunk(parsed, &mut out),
                        Err(e) => {
                            let why = format!("malformed chunk ({e})");
                            let _ = fault.set(why.clone());
                            out.push(error_event(&deployment, ProviderError::Stream(why)));
                            break true;
                        }
                    },
                    Some(Err(e)) => {
                        out.push(error_event(&deployment, e));
                        break true;
                    }
                    None => {
                        conv.finish(&mut out);
                        break true;
                    }
                }
                if !out.is_empty() {
                    break false;
                }
                // Chunks that give the client nothing (reasoning it did not
                // ask for) still show the stream is alive, as Anthropic's
                // pings do, before a proxy's idle timeout cuts it.
                if quiet_since.elapsed() >= ping_every {
                    out.push(event(&StreamEvent::Ping));
                    break false;
                }
            };
            let bytes: Bytes = out.concat().into();
            Some((bytes, (chunks, conv, (deployment, fault), done)))
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;

    fn converter() -> Converter {
        Converter {
            thinking: true,
            stop_sequence: None,
            tool_names: Vec::new(),
            keys: ToolKeys::default(),
            chunks: 0,
            started: false,
            open: None,
            tool: None,
            pending: Vec::new(),
            tool_name: String::new(),
            next_index: 0,
            upstream_id: String::new(),
            stop_reason: None,
            usage: None,
            used_tools: false,
            estimated_input: 42,
            arguments: String::new(),
            held: Vec::new(),
            space: String::new(),
            unasked: String::new(),
        }
    }

    #[test]
    fn message_start_carries_the_estimated_input_until_the_real_usage() {
        let mut conv = converter();
        let mut out = Vec::new();
        conv.start("chatcmpl-1", "m", &mut out);
        let start = events(&out);
        assert_eq!(start[0].1["message"]["usage"]["input_tokens"], 42);
    }

    /// The events written, as (event name, data) pairs.
    fn events(out: &[Bytes]) -> Vec<(String, Value)> {
        out.iter()
            .map(|b| {
                let text = std::str::from_utf8(b).unwrap();
                let name = text.lines().find_map(|l| l.strip_prefix("event: ")).unwrap().to_owned();
                let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                (name, serde_json::from_str(data).unwrap())
            })
            .collect()
    }

    fn chunk(value: Value) -> ChatCompletionChunk {
        serde_json::from_value(value).unwrap()
    }

    /// The names of the events a stream of `deltas` becomes, for a client
    /// that did not ask for thinking, pinging after `ping_every`.
    async fn event_names(deltas: &[Value], ping_every: std::time::Duration) -> Vec<String> {
        let chunks: Vec<switchyard_providers::Result<switchyard_providers::StreamChunk>> = deltas
            .iter()
            .map(|d| {
                Ok(switchyard_providers::StreamChunk {
                    data: head(d.clone()).to_string().into(),
                    usage: None,
                })
            })
            .collect();
        let stream: ChunkStream = Box::pin(futures_util::stream::iter(chunks));
        let out: Vec<Bytes> = converted(
            stream,
            ("d".into(), Default::default()),
            Vec::new(),
            false,
            0,
            ping_every,
        )
        .collect()
        .await;
        out.iter()
            .flat_map(|b| {
                std::str::from_utf8(b)
                    .unwrap()
                    .lines()
                    .filter_map(|l| l.strip_prefix("event: "))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Reasoning the client did not ask for gives it nothing: the stream
    /// pings instead of going quiet, no more often than it must.
    #[tokio::test]
    async fn a_stream_of_unasked_reasoning_pings() {
        let mut deltas = vec![json!({"role": "assistant", "content": ""})];
        deltas.extend((0..3).map(|_| json!({"reasoning_content": "hmm"})));
        deltas.push(json!({"content": "Hi"}));
        let names = event_names(&deltas, std::time::Duration::ZERO).await;
        assert_eq!(names[0], "message_start", "{names:?}");
        let first_text = names.iter().position(|n| n == "content_block_start").unwrap();
        assert_eq!(names[1..first_text], ["ping", "ping", "ping"], "{names:?}");
        let names = event_names(&deltas, std::time::Duration::from_secs(3600)).await;
        assert!(!names.iter().any(|n| n == "ping"), "{names:?}");
    }

    /// An upstream silent after the message started: pings until its next
    /// chunk.
    #[tokio::test]
    async fn a_silent_upstream_gets_pings() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let chunk = |delta: Value| {
            Ok(switchyard_providers::StreamChunk {
                data: head(delta).to_string().into(),
                usage: None,
            })
        };
        let first = chunk(json!({"role": "assistant", "content": "Hi"}));
        let later = chunk(json!({"content": " there"}));
        let stream: ChunkStream = Box::pin(futures_util::stream::iter([first]).chain(futures_util::stream::once(
            async move {
                let _ = rx.await;
                later
            },
        )));
        let mut events = Box::pin(converted(
            stream,
            ("d".into(), Default::default()),
            Vec::new(),
            false,
            0,
            std::time::Duration::from_millis(20),
        ));
        let opening = String::from_utf8(events.next().await.unwrap().to_vec()).unwrap();
        assert!(opening.contains("event: message_start"), "{opening}");
        for _ in 0..2 {
            let ping = String::from_utf8(events.next().await.unwrap().to_vec()).unwrap();
            assert_eq!(ping.lines().next(), Some("event: ping"), "{ping}");
        }
        tx.send(()).unwrap();
        let rest: Vec<String> = events.map(|b| String::from_utf8(b.to_vec()).unwrap()).collect().await;
        let rest = rest.concat();
        assert!(
            rest.contains(" there") && rest.contains("event: message_stop"),
            "{rest}"
        );
    }

    /// A usage chunk without `choices` (Fireworks) ends the message with
    /// its counts; Mistral's thinking parts and an empty role are read.
    #[tokio::test]
    async fn a_choiceless_usage_chunk_and_part_lists_are_read() {
        let data = [
            head(
                json!({"role": "", "content": [{"type": "thinking", "thinking": [{"type": "text", "text": "Hmm."}]}]}),
            ),
            head(json!({"content": [{"type": "text", "text": "Hi"}]})),
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            json!({"id": "c1", "object": "chat.completion.chunk",
                "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}}),
        ];
        let chunks: Vec<switchyard_providers::Result<switchyard_providers::StreamChunk>> = data
            .iter()
            .map(|d| {
                Ok(switchyard_providers::StreamChunk {
                    data: d.to_string().into(),
                    usage: None,
                })
            })
            .collect();
        let fault = crate::stream::StreamFault::default();
        let out: Vec<Bytes> = converted(
            Box::pin(futures_util::stream::iter(chunks)),
            ("d".into(), fault.clone()),
            Vec::new(),
            true,
            0,
            std::time::Duration::from_secs(3600),
        )
        .collect()
        .await;
        let seen: Vec<(String, Value)> = out
            .iter()
            .flat_map(|b| {
                std::str::from_utf8(b)
                    .unwrap()
                    .split("\n\n")
                    .filter(|e| !e.trim().is_empty())
                    .map(|e| events(&[Bytes::from(format!("{e}\n\n"))]).remove(0))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(fault.get(), None, "{seen:?}");
        let (last_name, _) = seen.last().unwrap();
        assert_eq!(last_name, "message_stop", "{seen:?}");
        let delta = &seen.iter().find(|(n, _)| n == "message_delta").unwrap().1;
        assert_eq!(delta["usage"]["output_tokens"], 5, "{seen:?}");
        let kinds: Vec<&str> = seen
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| d["content_block"]["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["thinking", "text"], "{seen:?}");
    }

    /// A chunk of choice 0 carrying `delta`.
    fn head(delta: Value) -> Value {
        json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta}]})
    }

    /// White space before a tool call (Qwen's `"\n\n"`) opens no text
    /// block; before text, it is that text's start.
    #[test]
    fn white_space_alone_opens_no_text_block() {
        let mut conv = converter();
        let mut out = Vec::new();
        for delta in [
            json!({"content": "\n\n"}),
            json!({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "read", "arguments": "{}"}}]}),
        ] {
            conv.on_chunk(chunk(head(delta)), &mut out);
        }
        conv.finish(&mut out);
        let seen = events(&out);
        let kinds: Vec<&str> = seen
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| d["content_block"]["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["tool_use"], "{seen:?}");

        let mut conv = converter();
        let mut out = Vec::new();
        for delta in [json!({"content": "\n"}), json!({"content": "Hi"})] {
            conv.on_chunk(chunk(head(delta)), &mut out);
        }
        conv.finish(&mut out);
        let text: String = events(&out)
            .iter()
            .filter(|(n, _)| n == "content_block_delta")
            .filter_map(|(_, d)| d["delta"]["text"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(text, "\nHi");
    }

    #[test]
    fn calls_streamed_without_an_id_get_one_and_object_arguments_are_kept() {
        let mut conv = converter();
        let mut out = Vec::new();
        for delta in [
            json!({"tool_calls": [{"index": 0, "function": {"name": "one", "arguments": {"x": 1}}}]}),
            json!({"tool_calls": [{"index": 1, "id": null, "type": "function", "function": {"name": "two", "arguments": "{}"}}]}),
        ] {
            conv.on_chunk(chunk(head(delta)), &mut out);
        }
        conv.finish(&mut out);
        let seen = events(&out);
        let ids: Vec<&str> = seen
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| d["content_block"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["toolu_c1_0", "toolu_c1_1"], "{seen:?}");
        let first: Vec<&str> = seen
            .iter()
            .filter(|(n, d)| n == "content_block_delta" && d["index"] == 0)
            .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
            .collect();
        assert_eq!(first, ["{\"x\":1}"]);
    }

    /// White space a server sends between one call's argument chunks is
    /// left out; the call keeps its block, name and arguments, and every
    /// block stops after it started, in order.
    #[test]
    fn white_space_between_a_calls_argument_chunks_leaves_the_call_whole() {
        let mut conv = converter();
        let mut out = Vec::new();
        for delta in [
            json!({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "read", "arguments": "{\"p\":"}}]}),
            json!({"content": "\n"}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"x\"}"}}]}),
        ] {
            conv.on_chunk(chunk(head(delta)), &mut out);
        }
        conv.finish(&mut out);
        let seen = events(&out);
        let starts: Vec<&Value> = seen
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(starts.len(), 1, "{seen:?}");
        assert_eq!(starts[0]["content_block"]["name"], "read");
        let arguments: String = seen
            .iter()
            .filter(|(n, d)| n == "content_block_delta" && d["index"] == 0)
            .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
            .collect();
        assert_eq!(arguments, "{\"p\":\"x\"}");
        let stops: Vec<u64> = seen
            .iter()
            .filter(|(n, _)| n == "content_block_stop")
            .map(|(_, d)| d["index"].as_u64().unwrap())
            .collect();
        assert_eq!(stops, [0], "{seen:?}");
    }

    /// Text a server sends while a call's arguments are still coming is
    /// held back until they are whole: the call keeps one block, its name
    /// and all its arguments, and the text follows it, each block stopping
    /// after it started.
    #[test]
    fn text_amid_a_call_comes_before_the_next_call_and_unindexed_calls_after_text_are_new() {
        let mut conv = converter();
        let mut out = Vec::new();
        for delta in [
            json!({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "read", "arguments": "{\"p\":"}}]}),
            json!({"content": "Reading."}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            json!({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "write", "arguments": "{}"}}]}),
            json!({"content": "Now more."}),
            // Calls without index or id, text between them.
            json!({"tool_calls": [{"id": "c", "function": {"name": "list", "arguments": "{}"}}]}),
            json!({"content": "And again."}),
            json!({"tool_calls": [{"function": {"name": "list", "arguments": "{\"all\":true}"}}]}),
        ] {
            conv.on_chunk(chunk(head(delta)), &mut out);
        }
        conv.finish(&mut out);
        let blocks: Vec<String> = events(&out)
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| {
                let block = &d["content_block"];
                block["name"]
                    .as_str()
                    .map_or_else(|| block["type"].as_str().unwrap().to_owned(), str::to_owned)
            })
            .collect();
        assert_eq!(blocks, ["read", "text", "write", "text", "list", "text", "list"]);
    }

    #[test]
    fn calls_reusing_a_stopped_calls_index_are_new_blocks() {
        let mut conv = converter();
        let mut out = Vec::new();
        for delta in [
            json!({"tool_calls": [{"index": 0, "function": {"name": "a", "arguments": "{}"}}]}),
            json!({"content": "x"}),
            json!({"tool_calls": [{"index": 0, "function": {"name": "b", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"p\":"}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            // The name repeated on a last piece adds no call.
            json!({"tool_calls": [{"index": 0, "function": {"name": "b", "arguments": ""}}]}),
        ] {
            conv.on_chunk(chunk(head(delta)), &mut out);
        }
        conv.finish(&mut out);
        let seen = events(&out);
        let names: Vec<&str> = seen
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| d["content_block"]["name"].as_str().unwrap_or("text"))
            .collect();
        assert_eq!(names, ["a", "text", "b"]);
        let b: String = seen
            .iter()
            .filter(|(n, d)| n == "content_block_delta" && d["index"] == 2)
            .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(b, "{\"p\":1}");
    }

    #[test]
    fn text_amid_a_calls_arguments_follows_the_call() {
        for tail in [Some("\"x\"}"), None] {
            let mut conv = converter();
            let mut out = Vec::new();
            let mut deltas = vec![
                json!({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "read", "arguments": "{\"p\":"}}]}),
                json!({"content": "Let me check."}),
            ];
            if let Some(tail) = tail {
                deltas.push(json!({"tool_calls": [{"index": 0, "function": {"arguments": tail}}]}));
            }
            for delta in deltas {
                conv.on_chunk(chunk(head(delta)), &mut out);
            }
            conv.finish(&mut out);
            let seen = events(&out);
            let order: Vec<(String, u64)> = seen
                .iter()
                .filter(|(n, _)| n.starts_with("content_block_"))
                .map(|(n, d)| (n.clone(), d["index"].as_u64().unwrap()))
                .collect();
            let names: Vec<(&str, u64)> = order.iter().map(|(n, i)| (n.as_str(), *i)).collect();
            let mut expected = vec![("content_block_start", 0), ("content_block_delta", 0)];
            if tail.is_some() {
                expected.push(("content_block_delta", 0));
            }
            expected.extend([
                ("content_block_stop", 0),
                ("content_block_start", 1),
                ("content_block_delta", 1),
                ("content_block_stop", 1),
            ]);
            assert_eq!(names, expected, "{seen:?}");
            let text = seen
                .iter()
                .find(|(n, d)| n == "content_block_delta" && d["index"] == 1)
                .map(|(_, d)| d["delta"]["text"].clone());
            assert_eq!(text, Some(json!("Let me check.")));
        }
    }

    /// Reasoning amid a call's arguments is held back like text: the call
    /// keeps one block with all its arguments, and the reasoning and text
    /// follow it in the order they came.
    #[test]
    fn reasoning_amid_a_calls_arguments_follows_the_call() {
        let mut conv = converter();
        conv.thinking = true;
        let mut out = Vec::new();
        for delta in [
            json!({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "read", "arguments": "{\"p\":"}}]}),
            json!({"reasoning_content": "Which file? "}),
            json!({"content": "Reading."}),
            json!({"reasoning_content": "The log."}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"x\"}"}}]}),
        ] {
            conv.on_chunk(chunk(head(delta)), &mut out);
        }
        conv.finish(&mut out);
        let seen = events(&out);
        let starts: Vec<String> = seen
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| d["content_block"]["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(starts, ["tool_use", "thinking", "text", "thinking"], "{seen:?}");
        let args: String = seen
            .iter()
            .filter(|(n, d)| n == "content_block_delta" && d["index"] == 0)
            .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(args, "{\"p\":\"x\"}");
        let thinking: Vec<&Value> = seen
            .iter()
            .filter(|(n, d)| n == "content_block_delta" && d["delta"]["type"] == "thinking_delta")
            .map(|(_, d)| &d["delta"]["thinking"])
            .collect();
        assert_eq!(thinking, [&json!("Which file? "), &json!("The log.")]);
        // Every block stops once, after it started, the call first.
        let stops: Vec<u64> = seen
            .iter()
            .filter(|(n, _)| n == "content_block_stop")
            .map(|(_, d)| d["index"].as_u64().unwrap())
            .collect();
        assert_eq!(stops, [0, 1, 2, 3], "{seen:?}");
    }

    #[test]
    fn calls_without_an_index_are_told_apart_by_id_and_refusals_stop_as_such() {
        let mut conv = converter();
        let mut out = Vec::new();
        for delta in [
            json!({"tool_calls": [{"id": "a", "function": {"name": "one", "arguments": "{\"x\""}}]}),
            json!({"tool_calls": [{"function": {"arguments": ":1}"}}]}),
            json!({"tool_calls": [{"id": "b", "function": {"name": "two", "arguments": "{}"}}]}),
        ] {
            conv.on_chunk(chunk(head(delta)), &mut out);
        }
        conv.finish(&mut out);
        let seen = events(&out);
        let starts: Vec<&Value> = seen
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(starts.len(), 2, "{seen:?}");
        let mut arguments = [String::new(), String::new()];
        for (name, data) in &seen {
            if name == "content_block_delta" {
                arguments[data["index"].as_u64().unwrap() as usize]
                    .push_str(data["delta"]["partial_json"].as_str().unwrap());
            }
        }
        assert_eq!(arguments, ["{\"x\":1}", "{}"]);

        let mut conv = converter();
        let mut out = Vec::new();
        conv.on_chunk(chunk(head(json!({"refusal": "I can't help with that."}))), &mut out);
        conv.on_chunk(
            chunk(
                json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            ),
            &mut out,
        );
        conv.finish(&mut out);
        let refused = events(&out);
        assert!(
            refused
                .iter()
                .any(|(n, d)| n == "content_block_delta" && d["delta"]["text"] == "I can't help with that.")
        );
        let delta = refused.iter().find(|(n, _)| n == "message_delta").unwrap();
        assert_eq!(delta.1["delta"]["stop_reason"], "refusal");
    }

    #[test]
    fn reasoning_streams_as_a_thinking_block_before_the_text() {
        let mut conv = converter();
        let mut out = Vec::new();
        for delta in [
            json!({"role": "assistant", "reasoning_content": "Let me "}),
            json!({"reasoning": "think."}),
            json!({"content": "Four."}),
        ] {
            conv.on_chunk(chunk(head(delta)), &mut out);
        }
        conv.finish(&mut out);
        let events = events(&out);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[0].1["message"]["id"], "msg_c1", "an id in Anthropic's form");
        assert_eq!(
            events[1].1["content_block"],
            json!({"type": "thinking", "thinking": "", "signature": ""}),
            "a thinking block as Claude's: with a signature, empty"
        );
        assert_eq!(
            events[2].1["delta"],
            json!({"type": "thinking_delta", "thinking": "Let me "})
        );
        assert_eq!(events[3].1["delta"]["thinking"], "think.");
        assert_eq!(events[5].1["content_block"]["type"], "text");
        assert_eq!(events[5].1["index"], 1);
        assert_eq!(events[6].1["delta"]["text"], "Four.");

        // A client that did not ask for thinking gets the text only.
        let mut conv = Converter {
            thinking: false,
            ..converter()
        };
        let mut out = Vec::new();
        for delta in [json!({"reasoning_content": "hmm"}), json!({"content": "Four."})] {
            conv.on_chunk(chunk(head(delta)), &mut out);
        }
        conv.finish(&mut out);
        let plain = tests::events(&out);
        assert_eq!(plain[1].1["content_block"]["type"], "text", "{plain:?}");
        assert!(!plain.iter().any(|(_, d)| d["delta"]["type"] == "thinking_delta"));
        // Unless the answer calls a tool: the reasoning model wants its
        // reasoning back with that turn.
        let mut conv = Converter {
            thinking: false,
            ..converter()
        };
        let mut out = Vec::new();
        for delta in [
            json!({"reasoning_content": "I should look"}),
            json!({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "read", "arguments": "{}"}}]}),
        ] {
            conv.on_chunk(chunk(head(delta)), &mut out);
        }
        conv.finish(&mut out);
        let called = tests::events(&out);
        let kinds: Vec<&Value> = called
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| &d["content_block"]["type"])
            .collect();
        assert_eq!(kinds, [&json!("thinking"), &json!("tool_use")], "{called:?}");
        assert!(called.iter().any(|(_, d)| d["delta"]["thinking"] == "I should look"));
    }

    #[test]
    fn parallel_calls_streamed_under_one_index_stay_apart() {
        let mut conv = converter();
        let mut out = Vec::new();
        let head = |choices: Value| json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "llama", "choices": choices});
        for c in [
            // Ollama: every parallel call at index 0, each whole.
            head(json!([{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "read", "arguments": "{\"p\":\"a\"}"}}]}}])),
            head(json!([{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "call_b", "type": "function", "function": {"name": "read", "arguments": "{\"p\":"}}]}}])),
            head(json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"b\"}"}}]}}])),
            head(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
        ] {
            conv.on_chunk(chunk(c), &mut out);
        }
        conv.finish(&mut out);
        let events = events(&out);
        let starts: Vec<&Value> = events
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| &d["content_block"])
            .collect();
        assert_eq!(starts.len(), 2, "{events:?}");
        assert_eq!(
            (&starts[0]["id"], &starts[1]["id"]),
            (&json!("call_a"), &json!("call_b"))
        );
        let mut arguments = [String::new(), String::new()];
        for (name, data) in &events {
            if name == "content_block_delta" {
                let index = data["index"].as_u64().unwrap() as usize;
                arguments[index].push_str(data["delta"]["partial_json"].as_str().unwrap());
            }
        }
        assert_eq!(arguments, ["{\"p\":\"a\"}", "{\"p\":\"b\"}"]);
        // The server sent no usage: the client gets the estimates it is
        // charged, not zeros: a token per chunk read (the finish chunk too).
        let (_, delta) = events.iter().find(|(n, _)| n == "message_delta").unwrap();
        assert_eq!(delta["usage"]["output_tokens"], 4, "a token per chunk: {delta}");
        assert_eq!(delta["usage"]["input_tokens"], conv.estimated_input);
    }

    #[test]
    fn azure_filter_chunks_and_interleaved_tool_calls_make_one_clean_message() {
        let mut conv = converter();
        let mut out = Vec::new();
        let head = |choices: Value| json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt", "choices": choices});
        for c in [
            // Azure's first chunk: prompt filter results, no id, no choices.
            json!({"id": "", "object": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": []}),
            head(json!([{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "a", "arguments": ""}},
                {"index": 1, "id": "call_b", "type": "function", "function": {"name": "b", "arguments": ""}}]}}])),
            head(json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":"}}]}}])),
            head(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": "{\"y\":2}"}}]}}]),
            ),
            head(json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}])),
            // Azure's content-filter-only chunk: no delta.
            head(json!([{"index": 0, "content_filter_results": {"hate": {"filtered": false}}}])),
            head(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
        ] {
            conv.on_chunk(chunk(c), &mut out);
        }
        conv.finish(&mut out);
        let events = events(&out);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                // Call a streams; call b, opened before a's arguments were
                // whole, is held and written whole after a's block stops.
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            events[0].1["message"]["id"], "msg_c1",
            "the message starts with the first real chunk"
        );
        // Each call's arguments reach its own block, whatever the order.
        let mut arguments = [String::new(), String::new()];
        for (name, data) in &events {
            if name == "content_block_delta" {
                let index = data["index"].as_u64().unwrap() as usize;
                arguments[index].push_str(data["delta"]["partial_json"].as_str().unwrap());
            }
        }
        assert_eq!(arguments, ["{\"x\":1}", "{\"y\":2}"]);
        assert_eq!(events[1].1["content_block"]["name"], "a");
        assert_eq!(events[5].1["content_block"]["name"], "b");
        assert_eq!(events[5].1["content_block"]["id"], "call_b");
        assert_eq!(events[8].1["delta"]["stop_reason"], "tool_use");
    }
}
