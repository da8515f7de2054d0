//! A chat completion stream written as Responses events
//! (`response.created` … `response.completed`).

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use switchyard_api::ChatCompletionChunk;
use switchyard_api::responses::{OutputContent, OutputItem, ReasoningText, ResponseError, ResponseObject};

use super::translate::{self, Echo, ending, reasoning_text, response_usage};
use crate::messages::stream::{ToolKeys, frame};

/// The item being written: a message's text or refusal, reasoning, or a
/// reasoning item with sealed thinking only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Refusal,
    Reasoning,
    Sealed,
}

/// A tool call held until the call before it is closed.
struct PendingCall {
    key: u64,
    /// The call's id, if a piece gave one.
    call_id: Option<String>,
    name: String,
    arguments: String,
    extra_content: Option<Value>,
}

/// Conversion state of chat chunks into Responses events.
pub(crate) struct Converter {
    echo: Echo,
    sequence: u64,
    started: bool,
    /// The output so far; items still being written are completed at the end.
    output: Vec<OutputItem>,
    /// The open text, refusal or reasoning part, and its item's position.
    open: Option<(Open, usize)>,
    /// The tool call being written: its key and its item's position.
    /// Calls are written one after the other, each closed before the next
    /// item opens, as OpenAI streams them.
    live: Option<(u64, usize)>,
    /// Calls whose pieces came while another was still being written
    /// (servers that interleave parallel calls): held whole, and written
    /// once that one is closed.
    pending: Vec<PendingCall>,
    /// Calls so far: the fallback call id's number.
    call_count: usize,
    /// Text, refusal or reasoning that came while a call's arguments were
    /// not whole (servers stream some amid a call's argument chunks):
    /// written once they are, so the call stays one item.
    held: Vec<(Open, String)>,
    keys: ToolKeys,
    /// Claude's thinking blocks streamed for the reasoning item at the
    /// given position.
    thinking: (Option<usize>, Vec<Value>),
    finish_reason: Option<String>,
    usage: Option<switchyard_api::Usage>,
    model: Option<String>,
    /// Set once the stream has ended (completed or failed).
    done: bool,
    /// The gateway's estimate of the prompt's tokens, for a stream without usage.
    estimated_input: u64,
    /// Content deltas received, for the output estimate of a stream without usage.
    deltas: u64,
}

impl Converter {
    /// A converter for the response `echo` describes; `estimated_input`:
    /// the prompt's tokens as the gateway estimates them.
    pub(crate) fn new(echo: Echo, estimated_input: u64) -> Self {
        Self {
            estimated_input,
            deltas: 0,
            echo,
            sequence: 0,
            started: false,
            output: Vec::new(),
            open: None,
            live: None,
            pending: Vec::new(),
            call_count: 0,
            held: Vec::new(),
            keys: ToolKeys::default(),
            thinking: (None, Vec::new()),
            finish_reason: None,
            usage: None,
            model: None,
            done: false,
        }
    }

    /// Whether the stream has ended.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    fn emit(&mut self, kind: &str, mut body: Value, out: &mut Vec<Bytes>) {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.push(frame(kind, body.to_string().as_bytes()));
    }

    fn snapshot(&self, status: &str) -> ResponseObject {
        let mut object = self.echo.object(status);
        if let Some(model) = &self.model {
            object.model.clone_from(model);
        }
        object
    }

    fn start(&mut self, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let response = to_value(&self.snapshot("in_progress"));
        self.emit("response.created", json!({"response": response}), out);
        self.emit("response.in_progress", json!({"response": response}), out);
    }

    /// Adds an output item and says so.
    fn add_item(&mut self, item: OutputItem, out: &mut Vec<Bytes>) -> usize {
        let index = self.output.len();
        self.emit(
            "response.output_item.added",
            json!({"output_index": index, "item": to_value(&item)}),
            out,
        );
        self.output.push(item);
        index
    }

    /// Ends the open text, refusal or reasoning part, and its item, with
    /// `status`.
    fn close_open(&mut self, status: &str, out: &mut Vec<Bytes>) {
        let Some((kind, index)) = self.open.take() else { return };
        let id = self.output[index].id().to_owned();
        match (kind, &mut self.output[index]) {
            (
                Open::Reasoning,
                OutputItem::Reasoning {
                    content,
                    encrypted_content,
                    ..
                },
            ) => {
                let text = content.first().map(|c| c.text.clone()).unwrap_or_default();
                // Sealed too, for clients that send items back without
                // their `content` (Claude's blocks are sealed as they come).
                if encrypted_content.is_none() {
                    *encrypted_content = translate::seal_text(&text);
                }
                if self.echo.wants_summary() {
                    let part = json!({"type": "summary_text", "text": text});
                    if let OutputItem::Reasoning { summary, .. } = &mut self.output[index] {
                        *summary = vec![part.clone()];
                    }
                    self.emit(
                        "response.reasoning_summary_text.done",
                        json!({"item_id": id, "output_index": index, "summary_index": 0, "text": text}),
                        out,
                    );
                    self.emit(
                        "response.reasoning_summary_part.done",
                        json!({"item_id": id, "output_index": index, "summary_index": 0, "part": part}),
                        out,
                    );
                }
                self.emit(
                    "response.reasoning_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}),
                    out,
                );
                self.emit(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                           "part": {"type": "reasoning_text", "text": text}}),
                    out,
                );
            }
            (Open::Text | Open::Refusal, OutputItem::Message { .. }) => self.end_part(index, out),
            _ => {}
        }
        self.finish_item(index, status, out);
    }

    /// Marks item `index` with `status` and says it is done.
    fn finish_item(&mut self, index: usize, status: &str, out: &mut Vec<Bytes>) {
        match &mut self.output[index] {
            OutputItem::Message { status: s, .. }
            | OutputItem::FunctionCall { status: s, .. }
            | OutputItem::Reasoning { status: s, .. } => status.clone_into(s),
        }
        let item = to_value(&self.output[index]);
        self.emit(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
            out,
        );
    }

    /// Ends the open item and adds an empty reasoning item; its position.
    fn open_reasoning(&mut self, out: &mut Vec<Bytes>) -> usize {
        self.close_all("completed", out);
        let item = OutputItem::Reasoning {
            id: self.echo.item_id("rs", self.output.len()),
            summary: Vec::new(),
            content: Vec::new(),
            encrypted_content: None,
            status: "in_progress".into(),
        };
        self.add_item(item, out)
    }

    /// Appends reasoning text, opening a reasoning item when none is open.
    fn reasoning(&mut self, delta: &str, out: &mut Vec<Bytes>) {
        let index = match self.open {
            Some((Open::Reasoning, index)) => index,
            _ => {
                let index = self.open_reasoning(out);
                if let OutputItem::Reasoning { content, .. } = &mut self.output[index] {
                    content.push(ReasoningText {
                        kind: "reasoning_text".into(),
                        text: String::new(),
                    });
                }
                let id = self.output[index].id().to_owned();
                if self.echo.wants_summary() {
                    self.emit(
                        "response.reasoning_summary_part.added",
                        json!({"item_id": id, "output_index": index, "summary_index": 0,
                               "part": {"type": "summary_text", "text": ""}}),
                        out,
                    );
                }
                self.emit(
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                           "part": {"type": "reasoning_text", "text": ""}}),
                    out,
                );
                self.open = Some((Open::Reasoning, index));
                index
            }
        };
        if let OutputItem::Reasoning { content, .. } = &mut self.output[index]
            && let Some(part) = content.first_mut()
        {
            part.text.push_str(delta);
        }
        let id = self.output[index].id().to_owned();
        if self.echo.wants_summary() {
            self.emit(
                "response.reasoning_summary_text.delta",
                json!({"item_id": id, "output_index": index, "summary_index": 0, "delta": delta}),
                out,
            );
        }
        self.emit(
            "response.reasoning_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta}),
            out,
        );
    }

    /// Claude's signed thinking, sealed into the reasoning item being
    /// written; a block that came without one (a redacted block) opens a
    /// reasoning item of its own, which later blocks join.
    fn thinking_blocks(&mut self, blocks: &[Value], out: &mut Vec<Bytes>) {
        let index = match self.open {
            Some((Open::Reasoning | Open::Sealed, index)) => index,
            _ => {
                let index = self.open_reasoning(out);
                self.open = Some((Open::Sealed, index));
                index
            }
        };
        // The blocks of this item only: an earlier item keeps its own.
        if self.thinking.0 != Some(index) {
            self.thinking = (Some(index), Vec::new());
        }
        self.thinking.1.extend(blocks.iter().cloned());
        let sealed = translate::seal(&self.thinking.1);
        if let OutputItem::Reasoning { encrypted_content, .. } = &mut self.output[index] {
            *encrypted_content = sealed;
        }
    }

    /// Appends message text (or a refusal), opening a message item, or a
    /// part of the open one, as needed.
    fn message(&mut self, kind: Open, delta: &str, out: &mut Vec<Bytes>) {
        let index = match self.open {
            Some((open, index)) if open == kind => index,
            // Text after a refusal, or a refusal after text: a new part of
            // the same message.
            Some((Open::Text | Open::Refusal, index)) => {
                self.close_part(index, out);
                self.add_part(index, kind, out);
                index
            }
            _ => {
                self.close_all("completed", out);
                let item = OutputItem::Message {
                    id: self.echo.item_id("msg", self.output.len()),
                    role: "assistant".into(),
                    status: "in_progress".into(),
                    content: Vec::new(),
                };
                let index = self.add_item(item, out);
                self.add_part(index, kind, out);
                index
            }
        };
        self.open = Some((kind, index));
        let id = self.output[index].id().to_owned();
        let content_index = match &mut self.output[index] {
            OutputItem::Message { content, .. } => {
                match content.last_mut() {
                    Some(OutputContent::OutputText { text, .. }) => text.push_str(delta),
                    Some(OutputContent::Refusal { refusal }) => refusal.push_str(delta),
                    None => {}
                }
                content.len().saturating_sub(1)
            }
            _ => 0,
        };
        match kind {
            Open::Refusal => self.emit(
                "response.refusal.delta",
                json!({"item_id": id, "output_index": index, "content_index": content_index, "delta": delta}),
                out,
            ),
            _ => self.emit(
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index, "content_index": content_index,
                       "delta": delta, "logprobs": []}),
                out,
            ),
        }
    }

    fn add_part(&mut self, index: usize, kind: Open, out: &mut Vec<Bytes>) {
        let part = match kind {
            Open::Refusal => OutputContent::Refusal { refusal: String::new() },
            _ => OutputContent::OutputText {
                text: String::new(),
                annotations: Vec::new(),
            },
        };
        let value = to_value(&part);
        let (id, content_index) = match &mut self.output[index] {
            OutputItem::Message { id, content, .. } => {
                content.push(part);
                (id.clone(), content.len() - 1)
            }
            other => (other.id().to_owned(), 0),
        };
        self.emit(
            "response.content_part.added",
            json!({"item_id": id, "output_index": index, "content_index": content_index, "part": value}),
            out,
        );
    }

    /// Ends the last part of message `index` (not the message).
    fn close_part(&mut self, index: usize, out: &mut Vec<Bytes>) {
        self.open = None;
        self.end_part(index, out);
    }

    /// Says the last part of message `index` is done: its text (or
    /// refusal) in full, then the part.
    fn end_part(&mut self, index: usize, out: &mut Vec<Bytes>) {
        let OutputItem::Message { id, content, .. } = &self.output[index] else {
            return;
        };
        let (id, content_index) = (id.clone(), content.len().saturating_sub(1));
        let part = content.last().map(to_value).unwrap_or_default();
        match content.last() {
            Some(OutputContent::OutputText { text, .. }) => {
                let text = text.clone();
                self.emit(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": content_index,
                           "text": text, "logprobs": []}),
                    out,
                );
            }
            Some(OutputContent::Refusal { refusal }) => {
                let refusal = refusal.clone();
                self.emit(
                    "response.refusal.done",
                    json!({"item_id": id, "output_index": index, "content_index": content_index, "refusal": refusal}),
                    out,
                );
            }
            None => {}
        }
        self.emit(
            "response.content_part.done",
            json!({"item_id": id, "output_index": index, "content_index": content_index, "part": part}),
            out,
        );
    }

    /// Ends the open item and every tool call, in order, with `status`.
    fn close_all(&mut self, status: &str, out: &mut Vec<Bytes>) {
        self.close_open(status, out);
        self.close_call(status, out);
        for call in std::mem::take(&mut self.pending) {
            self.write_call(call, out);
            self.close_call(status, out);
        }
    }

    /// Adds a call's item (with the arguments it has so far, as one delta)
    /// and makes it the live call.
    fn write_call(&mut self, call: PendingCall, out: &mut Vec<Bytes>) {
        self.call_count += 1;
        let id = self.echo.item_id("fc", self.output.len());
        // A call streamed without an id gets one: the client's
        // `function_call_output` must name it.
        let call_id = call
            .call_id
            .unwrap_or_else(|| translate::call_id(String::new(), &self.echo, self.call_count));
        let item = OutputItem::FunctionCall {
            id,
            call_id,
            name: call.name,
            arguments: String::new(),
            status: "in_progress".into(),
            extra_content: call.extra_content,
        };
        let index = self.add_item(item, out);
        self.live = Some((call.key, index));
        self.call_arguments(index, call.arguments, out);
    }

    /// Appends `delta` to the call at `index`, and says so.
    fn call_arguments(&mut self, index: usize, delta: String, out: &mut Vec<Bytes>) {
        if delta.is_empty() {
            return;
        }
        if let OutputItem::FunctionCall { arguments, .. } = &mut self.output[index] {
            arguments.push_str(&delta);
        }
        let id = self.output[index].id().to_owned();
        self.emit(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": index, "delta": delta}),
            out,
        );
    }

    /// Ends the live call with `status`: its arguments' `.done` (`{}` for
    /// none, streamed as a delta too), then the item.
    fn close_call(&mut self, status: &str, out: &mut Vec<Bytes>) {
        let Some((key, index)) = self.live.take() else { return };
        let name = match &self.output[index] {
            OutputItem::FunctionCall { name, .. } => name.clone(),
            _ => String::new(),
        };
        self.keys.close(key, name);
        let empty =
            matches!(&self.output[index], OutputItem::FunctionCall { arguments, .. } if arguments.trim().is_empty());
        if empty {
            if let OutputItem::FunctionCall { arguments, .. } = &mut self.output[index] {
                arguments.clear();
            }
            self.call_arguments(index, translate::arguments(String::new()), out);
        }
        let (id, name, arguments) = match &self.output[index] {
            OutputItem::FunctionCall {
                id, name, arguments, ..
            } => (id.clone(), name.clone(), arguments.clone()),
            _ => return,
        };
        self.emit(
            "response.function_call_arguments.done",
            json!({"item_id": id, "output_index": index, "name": name, "arguments": arguments}),
            out,
        );
        self.finish_item(index, status, out);
    }

    /// A piece of a streamed tool call.
    fn tool_call(&mut self, call: &Value, out: &mut Vec<Bytes>) {
        let id = call.get("id").and_then(Value::as_str).filter(|id| !id.is_empty());
        let name = call
            .pointer("/function/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        let key = self.keys.piece(call, str::to_owned);
        let extra = call.get("extra_content").filter(|v| v.is_object());
        // Arguments sent as an object (some servers do) are its encoding.
        let delta = match call.pointer("/function/arguments") {
            Some(Value::String(a)) => a.clone(),
            Some(v @ Value::Object(_)) => v.to_string(),
            _ => String::new(),
        };
        if let Some((_, index)) = self.live.filter(|(k, _)| *k == key) {
            // A name or signature that comes after the call's first piece
            // joins it.
            if let OutputItem::FunctionCall {
                name: known,
                extra_content,
                ..
            } = &mut self.output[index]
            {
                if let Some(name) = name.filter(|_| known.is_empty()) {
                    name.clone_into(known);
                }
                if let Some(extra) = extra {
                    *extra_content = Some(extra.clone());
                }
            }
            self.call_arguments(index, delta, out);
            self.advance(out);
            return;
        }
        if let Some(held) = self.pending.iter_mut().find(|c| c.key == key) {
            if held.call_id.is_none() {
                held.call_id = id.map(str::to_owned);
            }
            if held.name.is_empty() {
                held.name = name.unwrap_or_default().to_owned();
            }
            if let Some(extra) = extra {
                held.extra_content = Some(extra.clone());
            }
            held.arguments.push_str(&delta);
            self.advance(out);
            return;
        }
        if self.keys.is_closed(key) {
            if !delta.trim().is_empty() {
                tracing::warn!("a streamed tool call's piece came after the call was closed; left out");
            }
            return;
        }
        // A call ends the text before it.
        self.close_open("completed", out);
        let call = PendingCall {
            key,
            call_id: id.map(str::to_owned),
            name: name.unwrap_or_default().to_owned(),
            arguments: delta,
            extra_content: extra.cloned(),
        };
        if self.live.is_none() || (self.pending.is_empty() && self.live_is_whole()) {
            self.close_call("completed", out);
            // Text that came amid the call's arguments follows it, before
            // the next call.
            if !self.held.is_empty() {
                self.write_held(out);
                self.close_open("completed", out);
            }
            self.write_call(call, out);
            self.advance(out);
        } else {
            // The live call may not be whole yet: this one waits.
            self.pending.push(call);
        }
    }

    /// Whether a call is being written whose arguments are not whole yet,
    /// or calls wait to be written.
    fn call_unfinished(&self) -> bool {
        !self.pending.is_empty() || (self.live.is_some() && !self.live_is_whole())
    }

    /// Once the live call's arguments are whole, the calls held after it
    /// are written in turn (each streams on from there).
    fn advance(&mut self, out: &mut Vec<Bytes>) {
        while !self.pending.is_empty() && self.live_is_whole() {
            self.close_call("completed", out);
            let next = self.pending.remove(0);
            self.write_call(next, out);
        }
    }

    /// Whether the live call's arguments are one whole JSON value.
    fn live_is_whole(&self) -> bool {
        self.live.is_some_and(|(_, index)| {
            matches!(&self.output[index], OutputItem::FunctionCall { arguments, .. }
                if serde_json::from_str::<serde::de::IgnoredAny>(arguments).is_ok())
        })
    }

    /// Text, a refusal or reasoning (`kind`): written, or held while a
    /// call is unfinished.
    fn text_like(&mut self, kind: Open, delta: &str, out: &mut Vec<Bytes>) {
        if self.call_unfinished() {
            self.held.push((kind, delta.to_owned()));
            return;
        }
        self.write_held(out);
        self.write_text_like(kind, delta, out);
    }

    fn write_text_like(&mut self, kind: Open, delta: &str, out: &mut Vec<Bytes>) {
        match kind {
            Open::Reasoning | Open::Sealed => self.reasoning(delta, out),
            Open::Text | Open::Refusal => self.message(kind, delta, out),
        }
    }

    /// Writes what was held; white space alone is left out.
    fn write_held(&mut self, out: &mut Vec<Bytes>) {
        let held = std::mem::take(&mut self.held);
        if held.iter().all(|(_, text)| text.trim().is_empty()) {
            return;
        }
        for (kind, text) in held {
            self.write_text_like(kind, &text, out);
        }
    }

    /// One chat chunk.
    pub(crate) fn on_chunk(&mut self, chunk: ChatCompletionChunk, out: &mut Vec<Bytes>) {
        // Azure opens with a chunk of prompt filter results only.
        if chunk.id.is_empty() && chunk.choices.is_empty() && chunk.usage.is_none() {
            return;
        }
        if !chunk.model.is_empty() {
            self.model.get_or_insert(chunk.model);
        }
        self.start(out);
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            self.deltas += 1;
            if let Some(reasoning) = reasoning_text(&choice.delta.extra) {
                let reasoning = reasoning.to_owned();
                self.text_like(Open::Reasoning, &reasoning, out);
            }
            if let Some(Value::Array(blocks)) = choice.delta.extra.get("thinking_blocks") {
                self.thinking_blocks(blocks, out);
            }
            if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                self.text_like(Open::Text, text, out);
            }
            if let Some(refusal) = choice
                .delta
                .extra
                .get("refusal")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                self.text_like(Open::Refusal, refusal, out);
            }
            if let Some(Value::Array(calls)) = choice.delta.extra.get("tool_calls") {
                for call in calls {
                    self.tool_call(call, out);
                }
            }
            // Some relays send `""` on the chunks before the last.
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish_reason = Some(reason);
            }
        }
    }

    /// The end of the stream: items completed, then `response.completed`
    /// (or `response.incomplete`). Returns the final response.
    pub(crate) fn finish(&mut self, out: &mut Vec<Bytes>) -> ResponseObject {
        self.start(out);
        let (status, details) = ending(self.finish_reason.as_deref());
        let item_status = if status == "completed" {
            "completed"
        } else {
            "incomplete"
        };
        self.close_all(item_status, out);
        self.write_held(out);
        self.close_open(item_status, out);
        let mut response = self.snapshot(status);
        response.incomplete_details = details;
        response.output = self.output.clone();
        // Without the upstream's usage: the estimates the stream is charged
        // (the prompt, and a token per delta), not nothing.
        response.usage = Some(self.usage.as_ref().map_or_else(
            || response_usage(&switchyard_api::Usage::new(self.estimated_input, self.deltas)),
            response_usage,
        ));
        let name = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(name, json!({"response": to_value(&response)}), out);
        self.done = true;
        response
    }

    /// A failure after the stream started: what was received ends as
    /// incomplete items (calls and text held back included), then an
    /// `error` event and `response.failed`.
    pub(crate) fn fail(&mut self, error: &Value, out: &mut Vec<Bytes>) {
        self.start(out);
        self.close_all("incomplete", out);
        self.write_held(out);
        self.close_open("incomplete", out);
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the upstream stream failed")
            .to_owned();
        let code = error
            .get("code")
            .and_then(Value::as_str)
            .or_else(|| error.get("type").and_then(Value::as_str))
            .unwrap_or("server_error")
            .to_owned();
        self.emit(
            "error",
            json!({"code": code, "message": message, "param": error.get("param").cloned().unwrap_or(Value::Null)}),
            out,
        );
        let mut response = self.snapshot("failed");
        // A response's error takes the codes OpenAI's API uses.
        let kind = error.get("type").and_then(Value::as_str).unwrap_or_default();
        let code = if kind == "rate_limit_error" || code.contains("rate_limit") {
            "rate_limit_exceeded"
        } else {
            "server_error"
        };
        response.error = Some(ResponseError {
            code: code.into(),
            message,
        });
        response.output = self.output.clone();
        self.emit("response.failed", json!({"response": to_value(&response)}), out);
        self.done = true;
    }
}

fn to_value(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

    use super::*;
    use switchyard_api::Extra;

    fn converter() -> Converter {
        Converter::new(
            Echo {
                id: "resp_x".into(),
                created_at: 1,
                model: "group".into(),
                fields: Extra::new(),
            },
            5,
        )
    }

    fn chunk(delta: Value, finish: Option<&str>) -> ChatCompletionChunk {
        serde_json::from_value(json!({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        }))
        .unwrap()
    }

    /// The events written, as (type, body).
    fn events(out: &[Bytes]) -> Vec<(String, Value)> {
        out.iter()
            .map(|b| {
                let text = std::str::from_utf8(b).unwrap();
                let (head, data) = text.split_once("\ndata: ").unwrap();
                let body: Value = serde_json::from_str(data.trim()).unwrap();
                assert_eq!(head.strip_prefix("event: ").unwrap(), body["type"]);
                (body["type"].as_str().unwrap().to_owned(), body)
            })
            .collect()
    }

    #[test]
    fn calls_without_an_id_get_one_and_object_arguments_are_kept() {
        let mut conv = converter();
        let mut out = Vec::new();
        conv.on_chunk(
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": {"a": 1}}}]}),
                None,
            ),
            &mut out,
        );
        conv.on_chunk(chunk(json!({}), Some("tool_calls")), &mut out);
        let done = serde_json::to_value(conv.finish(&mut out)).unwrap();
        let call = &done["output"][0];
        assert_eq!(call["type"], "function_call", "{done}");
        assert!(
            call["call_id"].as_str().is_some_and(|id| id.starts_with("call_")),
            "{call}"
        );
        assert_eq!(call["arguments"], "{\"a\":1}");
    }

    #[test]
    fn reasoning_text_and_interleaved_calls_become_items_in_order() {
        let mut conv = converter();
        let mut out = Vec::new();
        conv.on_chunk(
            chunk(json!({"role": "assistant", "reasoning_content": "hmm"}), None),
            &mut out,
        );
        conv.on_chunk(chunk(json!({"content": "Hel"}), None), &mut out);
        conv.on_chunk(chunk(json!({"content": "lo"}), None), &mut out);
        conv.on_chunk(
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": "{\"a\""}}]}),
                None,
            ),
            &mut out,
        );
        conv.on_chunk(
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "g", "arguments": "{}"}}]}),
                None,
            ),
            &mut out,
        );
        conv.on_chunk(
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
                Some("tool_calls"),
            ),
            &mut out,
        );
        let usage: ChatCompletionChunk = serde_json::from_value(json!({
            "id": "c", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        }))
        .unwrap();
        conv.on_chunk(usage, &mut out);
        let done = conv.finish(&mut out);
        let events = events(&out);
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                // Call 0 streams; call 1 comes before call 0 is whole, and
                // is held until call 0 is closed.
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let sequence: Vec<u64> = events
            .iter()
            .map(|(_, b)| b["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>());
        // The second delta of call 0 lands on its own item, not the newest.
        assert_eq!(events[17].1["output_index"], 2);
        assert_eq!(events[17].1["delta"], ":1}");
        assert_eq!(events[21].1["output_index"], 3);
        assert_eq!(events[21].1["delta"], "{}");
        let completed = &events.last().unwrap().1["response"];
        assert_eq!(completed["status"], "completed");
        assert_eq!(completed["model"], "up");
        assert_eq!(completed["usage"]["total_tokens"], 10);
        assert_eq!(completed["output"][1]["content"][0]["text"], "Hello");
        assert_eq!(completed["output"][2]["arguments"], "{\"a\":1}");
        assert_eq!(completed["output"][2]["call_id"], "call_a");
        assert_eq!(completed["output"][3]["name"], "g");
        assert_eq!(done.output.len(), 4);
    }

    /// Calls streamed one after the other are each closed before the next
    /// opens; a call without arguments streams `{}`; a name that comes
    /// after the call's first piece joins it.
    #[test]
    fn each_call_is_closed_before_the_next_item() {
        let mut conv = converter();
        let mut out = Vec::new();
        for delta in [
            json!({"tool_calls": [{"index": 0, "id": "call_a", "function": {"arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{\"a\":"}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            json!({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "g", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 2, "id": "call_c", "function": {"name": "h", "arguments": "{\"b\":2}"}}]}),
        ] {
            conv.on_chunk(chunk(delta, None), &mut out);
        }
        conv.on_chunk(chunk(json!({}), Some("tool_calls")), &mut out);
        let done = conv.finish(&mut out);
        let events = events(&out);
        // Every item's events come between its `added` and its `done`.
        let mut open: Option<u64> = None;
        let mut deltas: std::collections::BTreeMap<u64, String> = Default::default();
        for (kind, body) in &events {
            let index = body["output_index"].as_u64();
            match kind.as_str() {
                "response.output_item.added" => {
                    assert_eq!(open, None, "{kind} while {open:?} is open");
                    open = index;
                }
                "response.output_item.done" => {
                    assert_eq!(open, index);
                    open = None;
                }
                "response.function_call_arguments.delta" => {
                    assert_eq!(open, index);
                    deltas
                        .entry(index.unwrap())
                        .or_default()
                        .push_str(body["delta"].as_str().unwrap());
                }
                "response.function_call_arguments.done" => {
                    assert_eq!(open, index);
                    assert_eq!(
                        body["arguments"].as_str(),
                        deltas.get(&index.unwrap()).map(String::as_str)
                    );
                }
                _ => {}
            }
        }
        let output = serde_json::to_value(&done.output).unwrap();
        assert_eq!(output[0]["name"], "f");
        assert_eq!(output[0]["arguments"], "{\"a\":1}");
        assert_eq!(output[1]["name"], "g");
        assert_eq!(output[1]["arguments"], "{}");
        assert_eq!(output[2]["call_id"], "call_c");
        assert_eq!(output[2]["arguments"], "{\"b\":2}");
        assert_eq!(done.output.len(), 3);
    }

    /// Text a server streams amid a call's argument chunks waits until the
    /// arguments are whole: the call stays one item, the text follows it.
    #[test]
    fn text_amid_a_calls_arguments_waits_for_them() {
        let mut conv = converter();
        let mut out = Vec::new();
        for delta in [
            json!({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": "{\"a\""}}]}),
            json!({"content": "\n"}),
            json!({"content": "Let me check."}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
            json!({"content": " Done."}),
        ] {
            conv.on_chunk(chunk(delta, None), &mut out);
        }
        conv.on_chunk(chunk(json!({}), Some("tool_calls")), &mut out);
        let done = serde_json::to_value(conv.finish(&mut out).output).unwrap();
        assert_eq!(done.as_array().unwrap().len(), 2, "{done}");
        assert_eq!(done[0]["arguments"], "{\"a\":1}");
        assert_eq!(done[1]["content"][0]["text"], "\nLet me check. Done.");
    }

    /// Text amid a call's arguments comes before the next call; a call
    /// streamed without index or id after text is a new call, and calls
    /// held behind an unfinished one stream on once it is whole.
    #[test]
    fn items_keep_the_order_they_came_in() {
        let mut conv = converter();
        let mut out = Vec::new();
        for delta in [
            json!({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "read", "arguments": ""}},
                                  {"index": 1, "id": "b", "function": {"name": "write", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"p\":"}}]}),
            json!({"content": "Reading."}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"q\":2}"}}]}),
            json!({"tool_calls": [{"id": "c", "function": {"name": "list", "arguments": "{}"}}]}),
            json!({"content": "And again."}),
            json!({"tool_calls": [{"function": {"name": "list", "arguments": "{\"all\":true}"}}]}),
        ] {
            conv.on_chunk(chunk(delta, None), &mut out);
        }
        let streamed_before_the_end = events(&out)
            .iter()
            .filter(|(k, b)| k == "response.function_call_arguments.delta" && b["output_index"] == 1)
            .count();
        assert_eq!(
            streamed_before_the_end, 1,
            "the held call streams once the first is whole"
        );
        conv.on_chunk(chunk(json!({}), Some("tool_calls")), &mut out);
        let done = serde_json::to_value(conv.finish(&mut out).output).unwrap();
        let items: Vec<String> = done
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                i["name"]
                    .as_str()
                    .map_or_else(|| i["type"].as_str().unwrap().to_owned(), str::to_owned)
            })
            .collect();
        assert_eq!(items, ["read", "write", "message", "list", "message", "list"]);
        assert_eq!(done[1]["arguments"], "{\"q\":2}");
        assert_eq!(done[5]["arguments"], "{\"all\":true}");
    }

    /// A server that streams every call at index 0 without ids, text
    /// between them: the second call is its own item, all its pieces
    /// included; a name repeated on a closed call's last piece adds none.
    #[test]
    fn calls_reusing_a_closed_calls_index_are_new_calls() {
        let mut conv = converter();
        let mut out = Vec::new();
        for delta in [
            json!({"tool_calls": [{"index": 0, "function": {"name": "a", "arguments": "{}"}}]}),
            json!({"content": "x"}),
            json!({"tool_calls": [{"index": 0, "function": {"name": "b", "arguments": "{\"p\":"}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            json!({"tool_calls": [{"index": 1, "id": "c", "function": {"name": "c", "arguments": "{}"}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"name": "b", "arguments": ""}}]}),
        ] {
            conv.on_chunk(chunk(delta, None), &mut out);
        }
        conv.on_chunk(chunk(json!({}), Some("tool_calls")), &mut out);
        let done = serde_json::to_value(conv.finish(&mut out).output).unwrap();
        let items: Vec<(String, String)> = done
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["name"].as_str().unwrap_or("message").to_owned(),
                    i["arguments"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let expected = [("a", "{}"), ("message", ""), ("b", "{\"p\":1}"), ("c", "{}")];
        assert_eq!(
            items,
            expected.map(|(n, a)| (n.to_owned(), a.to_owned())).to_vec(),
            "{done}"
        );
    }

    /// The same with each call's name sent before its arguments; a
    /// repeated name with `null` arguments adds no call.
    #[test]
    fn calls_named_first_under_a_closed_calls_index_are_new_calls() {
        let mut conv = converter();
        let mut out = Vec::new();
        for delta in [
            json!({"tool_calls": [{"index": 0, "function": {"name": "a", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
            json!({"content": "x"}),
            json!({"tool_calls": [{"index": 0, "function": {"name": "b"}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"p\":1}"}}]}),
            json!({"content": "y"}),
            json!({"tool_calls": [{"index": 0, "function": {"name": "b", "arguments": null}}]}),
        ] {
            conv.on_chunk(chunk(delta, None), &mut out);
        }
        conv.on_chunk(chunk(json!({}), Some("tool_calls")), &mut out);
        let done = serde_json::to_value(conv.finish(&mut out).output).unwrap();
        let items: Vec<(&str, &str)> = done
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["name"].as_str().unwrap_or("message"),
                    i["arguments"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            items,
            [("a", "{}"), ("message", ""), ("b", "{\"p\":1}"), ("message", "")],
            "{done}"
        );
    }

    /// With `reasoning.summary` asked, other models' reasoning text is also
    /// streamed as the item's summary, which Codex shows.
    #[test]
    fn reasoning_is_also_the_summary_when_one_is_asked_for() {
        let mut conv = converter();
        conv.echo
            .fields
            .insert("reasoning".into(), json!({"effort": null, "summary": "detailed"}));
        let mut out = Vec::new();
        conv.on_chunk(chunk(json!({"reasoning_content": "step "}), None), &mut out);
        conv.on_chunk(chunk(json!({"reasoning_content": "two"}), None), &mut out);
        conv.on_chunk(chunk(json!({"content": "ok"}), Some("stop")), &mut out);
        let done = conv.finish(&mut out);
        let seen = events(&out);
        let summary: Vec<&str> = seen
            .iter()
            .filter(|(k, _)| k.starts_with("response.reasoning_summary"))
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            summary,
            [
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
            ]
        );
        let text_done = seen
            .iter()
            .find(|(k, _)| k == "response.reasoning_summary_text.done")
            .unwrap();
        assert_eq!(
            (&text_done.1["text"], &text_done.1["summary_index"]),
            (&json!("step two"), &json!(0))
        );
        let item = serde_json::to_value(&done.output[0]).unwrap();
        assert_eq!(item["summary"], json!([{"type": "summary_text", "text": "step two"}]));
        assert_eq!(item["content"][0]["text"], "step two");

        // Not asked: no summary events, an empty summary.
        let mut conv = converter();
        let mut out = Vec::new();
        conv.on_chunk(chunk(json!({"reasoning_content": "step"}), Some("stop")), &mut out);
        let done = conv.finish(&mut out);
        assert!(!events(&out).iter().any(|(k, _)| k.contains("summary")));
        assert_eq!(serde_json::to_value(&done.output[0]).unwrap()["summary"], json!([]));
    }

    #[test]
    fn a_refusal_then_text_are_two_parts_of_one_message() {
        let mut conv = converter();
        let mut out = Vec::new();
        conv.on_chunk(chunk(json!({"refusal": "I can't"}), None), &mut out);
        conv.on_chunk(chunk(json!({"content": "but here is why."}), Some("stop")), &mut out);
        let done = conv.finish(&mut out);
        let kinds: Vec<String> = events(&out).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            kinds[2..],
            [
                "response.output_item.added",
                "response.content_part.added",
                "response.refusal.delta",
                "response.refusal.done",
                "response.content_part.done",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let OutputItem::Message { content, .. } = &done.output[0] else {
            panic!("{done:?}")
        };
        assert_eq!(
            serde_json::to_value(content).unwrap(),
            json!([{"type": "refusal", "refusal": "I can't"},
                   {"type": "output_text", "text": "but here is why.", "annotations": []}])
        );
    }

    #[test]
    fn a_cut_answer_is_incomplete_and_a_failure_says_why() {
        let mut conv = converter();
        let mut out = Vec::new();
        conv.on_chunk(chunk(json!({"content": "par"}), Some("length")), &mut out);
        conv.finish(&mut out);
        let last = events(&out).pop().unwrap();
        assert_eq!(last.0, "response.incomplete");
        assert_eq!(last.1["response"]["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(last.1["response"]["output"][0]["status"], "incomplete");

        let mut conv = converter();
        let mut out = Vec::new();
        conv.on_chunk(chunk(json!({"content": "par"}), None), &mut out);
        conv.fail(
            &json!({"message": "gpt/0: upstream stream failed", "type": "upstream_error", "code": "upstream_stream"}),
            &mut out,
        );
        assert!(conv.is_done());
        let events = events(&out);
        let (kind, error) = &events[events.len() - 2];
        assert_eq!(kind, "error");
        assert_eq!(error["code"], "upstream_stream");
        let (kind, failed) = events.last().unwrap();
        assert_eq!(kind, "response.failed");
        assert_eq!(failed["response"]["status"], "failed");
        // The response's error takes OpenAI's codes; the event keeps the detail.
        assert_eq!(failed["response"]["error"]["code"], "server_error");
        assert_eq!(failed["response"]["error"]["message"], "gpt/0: upstream stream failed");
        assert_eq!(failed["response"]["output"][0]["status"], "incomplete");
        assert_eq!(failed["response"]["output"][0]["content"][0]["text"], "par");
    }

    /// A stream that fails while a call's arguments are unfinished keeps
    /// the calls and the text held behind it: each is written, incomplete,
    /// before `response.failed`, whose output has them all.
    #[test]
    fn a_failure_keeps_what_was_held_back() {
        let mut conv = converter();
        let mut out = Vec::new();
        conv.on_chunk(
            chunk(
                json!({"tool_calls": [
                    {"index": 0, "id": "call_a", "function": {"name": "f", "arguments": "{\"a\""}},
                    {"index": 1, "id": "call_b", "function": {"name": "g", "arguments": ""}}]}),
                None,
            ),
            &mut out,
        );
        conv.on_chunk(chunk(json!({"content": "Checking."}), None), &mut out);
        conv.fail(&json!({"message": "cut", "type": "upstream_error"}), &mut out);
        let events = events(&out);
        let done: Vec<&Value> = events
            .iter()
            .filter(|(kind, _)| kind == "response.output_item.done")
            .map(|(_, body)| &body["item"])
            .collect();
        assert_eq!(done.len(), 3, "{events:?}");
        assert_eq!(done[0]["call_id"], "call_a");
        assert_eq!(done[1]["call_id"], "call_b");
        assert_eq!(done[2]["content"][0]["text"], "Checking.");
        assert!(done.iter().all(|item| item["status"] == "incomplete"), "{done:?}");
        let (kind, failed) = events.last().unwrap();
        assert_eq!(kind, "response.failed");
        let output = failed["response"]["output"].as_array().unwrap();
        assert_eq!(output.len(), 3, "{failed}");
        assert_eq!(output[0]["arguments"], "{\"a\"");
        assert_eq!(output[2]["content"][0]["text"], "Checking.");
    }
}
