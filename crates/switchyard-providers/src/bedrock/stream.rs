//! Bedrock ConverseStream events → OpenAI chat chunks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use aws_sdk_bedrockruntime::primitives::event_stream::EventReceiver;
use aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError;
use aws_sdk_bedrockruntime::types::{
    ContentBlockDelta, ContentBlockStart, ConverseStreamOutput, ReasoningContentBlockDelta,
};
use base64::Engine as _;
use futures_util::stream;
use serde_json::json;

use super::convert::usage;
use crate::chunks::{ChunkBuilder, ThinkingBlocks};
use crate::json_mode::{JSON_TOOL, json_finish};
use crate::{ChunkStream, ProviderError, Result, StreamChunk, TimeoutPhase};

/// The SDK's receiver of ConverseStream events.
pub(crate) type Receiver = EventReceiver<ConverseStreamOutput, ConverseStreamOutputError>;

struct Converter {
    out: ChunkBuilder,
    include_usage: bool,
    /// Bedrock content block index → OpenAI tool-call index.
    tools: HashMap<i32, u32>,
    /// Tool blocks some input text was sent for: one that ends without any
    /// (a tool without parameters) gets `{}`, as OpenAI sends.
    argued: HashSet<i32>,
    stopped: bool,
    /// Events read so far (the first is `messageStart`).
    seen: usize,
    finished: bool,
    /// The request asked for a JSON answer: the JSON tool's input is
    /// streamed as text.
    json: bool,
    /// The JSON tool's block index (the first one: two answers would not
    /// make one JSON text).
    json_block: Option<i32>,
    /// Later JSON tool blocks, left out.
    extra_json_blocks: Vec<i32>,
    /// Some input of the JSON tool was sent as text: one that ends without
    /// any (an empty object, for which Bedrock sends no delta) gives `{}`,
    /// as the answer outside a stream does.
    json_argued: bool,
    /// Text of a JSON answer held back: left out if the JSON tool answers,
    /// passed on if the model answers in text instead.
    held: String,
    /// Reasoning blocks being streamed: block index → text and signature so
    /// far; a signed one (Claude's) is sent whole as `thinking_blocks` when
    /// the block ends.
    reasoning: HashMap<i32, (String, String)>,
    /// Thinking blocks sent so far.
    blocks: ThinkingBlocks,
}

impl Converter {
    /// A converter at the start of a stream.
    fn new(out: ChunkBuilder, include_usage: bool, json: bool) -> Self {
        Converter {
            out,
            include_usage,
            tools: HashMap::new(),
            argued: HashSet::new(),
            seen: 0,
            stopped: false,
            finished: false,
            json,
            json_block: None,
            extra_json_blocks: Vec::new(),
            json_argued: false,
            held: String::new(),
            reasoning: HashMap::new(),
            blocks: ThinkingBlocks::default(),
        }
    }

    /// Passes held text on, unless the JSON tool answered.
    fn release(&mut self, out: &mut VecDeque<Result<StreamChunk>>) {
        if self.json_block.is_none() && !self.held.is_empty() {
            let text = std::mem::take(&mut self.held);
            out.push_back(self.out.text(text));
        }
    }

    fn on_event(&mut self, event: ConverseStreamOutput, out: &mut VecDeque<Result<StreamChunk>>) {
        match event {
            ConverseStreamOutput::MessageStart(_) => out.push_back(self.out.role()),
            ConverseStreamOutput::ContentBlockStart(start) => {
                if let Some(ContentBlockStart::ToolUse(tool)) = start.start {
                    if self.json && tool.name == JSON_TOOL {
                        if self.json_block.is_none() {
                            self.json_block = Some(start.content_block_index);
                            self.held.clear();
                        } else {
                            self.extra_json_blocks.push(start.content_block_index);
                        }
                        return;
                    }
                    self.release(out);
                    let index = self.tools.len() as u32;
                    self.tools.insert(start.content_block_index, index);
                    out.push_back(self.out.tool_start(index, &tool.tool_use_id, &tool.name));
                }
            }
            ConverseStreamOutput::ContentBlockDelta(delta) => match delta.delta {
                Some(ContentBlockDelta::Text(text)) if self.json && self.json_block.is_none() => {
                    self.held.push_str(&text);
                }
                Some(ContentBlockDelta::Text(_)) if self.json => {}
                Some(ContentBlockDelta::Text(text)) => out.push_back(self.out.text(text)),
                Some(ContentBlockDelta::ToolUse(tool))
                    if self.json_block == Some(delta.content_block_index) && !tool.input.is_empty() =>
                {
                    self.json_argued = true;
                    out.push_back(self.out.text(tool.input));
                }
                Some(ContentBlockDelta::ToolUse(_)) if self.json_block == Some(delta.content_block_index) => {}
                Some(ContentBlockDelta::ToolUse(_)) if self.extra_json_blocks.contains(&delta.content_block_index) => {}
                Some(ContentBlockDelta::ReasoningContent(ReasoningContentBlockDelta::Text(text))) => {
                    let entry = self.reasoning.entry(delta.content_block_index).or_default();
                    entry.0.push_str(&text);
                    if !text.is_empty() {
                        out.push_back(self.out.reasoning(text));
                    }
                }
                Some(ContentBlockDelta::ReasoningContent(ReasoningContentBlockDelta::Signature(signature))) => {
                    self.reasoning
                        .entry(delta.content_block_index)
                        .or_default()
                        .1
                        .push_str(&signature);
                }
                Some(ContentBlockDelta::ReasoningContent(ReasoningContentBlockDelta::RedactedContent(data))) => {
                    let block = json!({
                        "type": "redacted_thinking",
                        "data": base64::engine::general_purpose::STANDARD.encode(data.as_ref()),
                    });
                    out.push_back(self.blocks.chunk(&self.out, block));
                }
                Some(ContentBlockDelta::ToolUse(tool)) => match self.tools.get(&delta.content_block_index) {
                    Some(_) if tool.input.is_empty() => {}
                    Some(&index) => {
                        self.argued.insert(delta.content_block_index);
                        out.push_back(self.out.tool_arguments(index, tool.input));
                    }
                    None => out.push_back(Err(ProviderError::Stream(format!(
                        "tool input for block {}, which is not a tool use",
                        delta.content_block_index
                    )))),
                },
                _ => {}
            },
            ConverseStreamOutput::ContentBlockStop(stop) => {
                if self.json_block == Some(stop.content_block_index) && !self.json_argued {
                    self.json_argued = true;
                    out.push_back(self.out.text("{}".into()));
                }
                if let Some(&index) = self.tools.get(&stop.content_block_index)
                    && !self.argued.contains(&stop.content_block_index)
                {
                    out.push_back(self.out.tool_arguments(index, "{}".into()));
                }
                if let Some((text, signature)) = self.reasoning.remove(&stop.content_block_index)
                    && !signature.is_empty()
                {
                    let block = json!({"type": "thinking", "thinking": text, "signature": signature});
                    out.push_back(self.blocks.chunk(&self.out, block));
                }
            }
            ConverseStreamOutput::MessageStop(stop) => {
                if let Some(broken) = super::convert::malformed(&stop.stop_reason) {
                    out.push_back(Err(ProviderError::Stream(broken.to_string())));
                    return;
                }
                self.release(out);
                self.stopped = true;
                let finish = json_finish(
                    super::convert::finish_for(&stop.stop_reason, !self.tools.is_empty()),
                    self.json && self.tools.is_empty(),
                );
                out.push_back(self.out.finish(Some(finish)));
            }
            ConverseStreamOutput::Metadata(metadata) => {
                self.finished = true;
                if self.include_usage
                    && let Some(u) = metadata.usage
                {
                    out.push_back(self.out.usage(usage(&u)));
                }
            }
            _ => {}
        }
    }
}

/// Converts a ConverseStream into OpenAI chunks. The first event must arrive
/// within `first_byte`, and the whole stream end by `deadline` (the
/// deployment's total timeout); a stream that ends before `messageStop` is
/// an error. `json`: the request asked for a JSON answer, which comes as
/// the JSON tool's input.
pub(crate) fn to_chat_chunks(
    receiver: Receiver,
    out: ChunkBuilder,
    include_usage: bool,
    first_byte: Duration,
    deadline: tokio::time::Instant,
    json: bool,
) -> ChunkStream {
    let converter = Converter::new(out, include_usage, json);
    let state = (receiver, converter, VecDeque::<Result<StreamChunk>>::new(), false, true);
    let chunks = stream::unfold(
        state,
        move |(mut rx, mut conv, mut queue, mut failed, mut first)| async move {
            loop {
                if let Some(item) = queue.pop_front() {
                    failed |= item.is_err();
                    return Some((item, (rx, conv, queue, failed, first)));
                }
                if failed || conv.finished {
                    return None;
                }
                let next = if first {
                    first = false;
                    match tokio::time::timeout(first_byte, rx.recv()).await {
                        Ok(next) => next,
                        Err(_) => {
                            queue.push_back(Err(ProviderError::Timeout(TimeoutPhase::FirstByte)));
                            continue;
                        }
                    }
                } else {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(next) => next,
                        Err(_) => {
                            queue.push_back(Err(ProviderError::Timeout(TimeoutPhase::Total)));
                            continue;
                        }
                    }
                };
                match next {
                    Ok(Some(event)) => {
                        conv.seen += 1;
                        conv.on_event(event, &mut queue);
                    }
                    Ok(None) if conv.stopped => return None,
                    Ok(None) => queue.push_back(Err(ProviderError::Stream(
                        "the upstream closed the stream before messageStop".into(),
                    ))),
                    Err(e) => queue.push_back(Err(super::stream_exception(&e, exception_name, conv.seen > 1))),
                }
            }
        },
    );
    Box::pin(chunks)
}

/// The name of a modelled ConverseStream exception.
fn exception_name(e: &ConverseStreamOutputError) -> Option<&'static str> {
    Some(match e {
        ConverseStreamOutputError::InternalServerException(_) => "InternalServerException",
        ConverseStreamOutputError::ModelStreamErrorException(_) => "ModelStreamErrorException",
        ConverseStreamOutputError::ValidationException(_) => "ValidationException",
        ConverseStreamOutputError::ThrottlingException(_) => "ThrottlingException",
        ConverseStreamOutputError::ServiceUnavailableException(_) => "ServiceUnavailableException",
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use aws_sdk_bedrockruntime::types::{
        ContentBlockDeltaEvent, ContentBlockStartEvent, ContentBlockStopEvent, MessageStartEvent, MessageStopEvent,
        StopReason, ToolUseBlockDelta, ToolUseBlockStart,
    };

    use super::*;

    /// The text the chunks of `events` carry, run through a JSON-mode converter.
    fn json_text(events: Vec<ConverseStreamOutput>) -> String {
        let mut conv = Converter::new(ChunkBuilder::default(), false, true);
        let mut out = VecDeque::new();
        for event in events {
            conv.on_event(event, &mut out);
        }
        out.into_iter()
            .map(|c| {
                let chunk: serde_json::Value = serde_json::from_slice(&c.unwrap().data).unwrap();
                chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    }

    fn json_tool_events(input: Option<&str>) -> Vec<ConverseStreamOutput> {
        let start = ToolUseBlockStart::builder()
            .tool_use_id("t1")
            .name(JSON_TOOL)
            .build()
            .unwrap();
        let mut events = vec![
            ConverseStreamOutput::MessageStart(
                MessageStartEvent::builder()
                    .role(aws_sdk_bedrockruntime::types::ConversationRole::Assistant)
                    .build()
                    .unwrap(),
            ),
            ConverseStreamOutput::ContentBlockStart(
                ContentBlockStartEvent::builder()
                    .content_block_index(0)
                    .start(ContentBlockStart::ToolUse(start))
                    .build()
                    .unwrap(),
            ),
        ];
        if let Some(input) = input {
            let delta = ToolUseBlockDelta::builder().input(input).build().unwrap();
            events.push(ConverseStreamOutput::ContentBlockDelta(
                ContentBlockDeltaEvent::builder()
                    .content_block_index(0)
                    .delta(ContentBlockDelta::ToolUse(delta))
                    .build()
                    .unwrap(),
            ));
        }
        events.push(ConverseStreamOutput::ContentBlockStop(
            ContentBlockStopEvent::builder().content_block_index(0).build().unwrap(),
        ));
        events.push(ConverseStreamOutput::MessageStop(
            MessageStopEvent::builder()
                .stop_reason(StopReason::ToolUse)
                .build()
                .unwrap(),
        ));
        events
    }

    /// A JSON answer whose object is empty (no input delta at all) is `{}`,
    /// as outside a stream, not an empty text no JSON parser takes.
    #[test]
    fn an_empty_json_answer_streams_as_an_empty_object() {
        assert_eq!(json_text(json_tool_events(None)), "{}");
        assert_eq!(json_text(json_tool_events(Some(r#"{"a":1}"#))), r#"{"a":1}"#);
    }
}
