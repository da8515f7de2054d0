//! Decoding upstream server-sent events.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
pub use eventsource_stream::Event;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt, stream};

use crate::http::{Probe, ProbedChoices, stream_error};
use crate::{ChunkStream, ProviderError, StreamChunk, TimeoutPhase};
use serde_json::Value;

/// Upstream SSE events ([`Event`]: `event` name and `data`); transport failures and a silent start become errors.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, ProviderError>> + Send>>;

/// The largest event an upstream may send, in bytes (its lines, without their
/// line ends). A bigger one ends the stream with an error instead of being
/// buffered without bound.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Why an upstream's event-stream body could not be read.
#[derive(Debug)]
enum BodyError {
    /// The connection failed.
    Transport(reqwest::Error),
    /// One event grew past [`MAX_EVENT_BYTES`] without ending.
    EventTooLarge,
    /// A line is not UTF-8 (the event-stream decoder would stall on it,
    /// buffering everything after it).
    NotUtf8,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Transport(e) => write!(f, "{e}"),
            BodyError::EventTooLarge => write!(f, "an event larger than {} MiB", MAX_EVENT_BYTES >> 20),
            BodyError::NotUtf8 => write!(f, "a line that is not UTF-8"),
        }
    }
}

/// Measures the event being received across body chunks: the bytes since the
/// last blank line, which is where an event ends (`\n`, `\r\n` or `\r`
/// line ends, as the SSE specification allows).
#[derive(Debug, Default)]
struct EventMeter {
    line: usize,
    event: usize,
    after_cr: bool,
}

impl EventMeter {
    /// Takes the next body chunk; returns the size of the event still open
    /// at its end.
    fn feed(&mut self, chunk: &[u8]) -> usize {
        let mut start = 0;
        for pos in memchr::memchr2_iter(b'\n', b'\r', chunk) {
            let run = pos - start;
            start = pos + 1;
            if run == 0 && self.after_cr && chunk[pos] == b'\n' {
                // The `\n` of a `\r\n` line end.
                self.after_cr = false;
                continue;
            }
            self.event = self.event.saturating_add(run);
            if self.line + run == 0 {
                self.event = 0;
            }
            self.line = 0;
            self.after_cr = chunk[pos] == b'\r';
            // The biggest event is measured before its end is seen.
            if self.event > MAX_EVENT_BYTES {
                return self.event;
            }
        }
        let rest = chunk.len() - start;
        if rest > 0 {
            self.after_cr = false;
            self.line += rest;
            self.event = self.event.saturating_add(rest);
        }
        self.event
    }
}

/// The body of a streaming response cut at line ends: every item ends with a
/// whole line, and a partial line waits for the rest. The event parser then
/// reads each line once however many chunks it came in (it would re-read an
/// incomplete line from its start on every chunk). Fails once an event
/// outgrows [`MAX_EVENT_BYTES`].
fn whole_lines<S>(body: S) -> impl Stream<Item = Result<Bytes, BodyError>> + Send
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + Unpin,
{
    struct Lines<S> {
        body: S,
        meter: EventMeter,
        partial: BytesMut,
        /// Whole lines read and not yet handed on, one per item.
        ready: VecDeque<Bytes>,
        /// The body ended or failed: nothing more is read.
        failed: bool,
        /// The last byte read was a `\r`, which may yet be half of `\r\n`.
        trailing_cr: bool,
    }
    let state = Lines {
        body,
        meter: EventMeter::default(),
        partial: BytesMut::new(),
        ready: VecDeque::new(),
        failed: false,
        trailing_cr: false,
    };
    // Lines end at `\n` or `\r`, never inside a UTF-8 sequence: each one is
    // checked whole.
    fn checked<S>(line: Bytes, mut state: Lines<S>) -> Option<(Result<Bytes, BodyError>, Lines<S>)> {
        if std::str::from_utf8(&line).is_ok() {
            return Some((Ok(line), state));
        }
        state.failed = true;
        state.ready.clear();
        Some((Err(BodyError::NotUtf8), state))
    }
    stream::unfold(state, |mut state| async move {
        if let Some(line) = state.ready.pop_front() {
            return checked(line, state);
        }
        if state.failed {
            return None;
        }
        loop {
            let chunk = match state.body.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    state.failed = true;
                    return Some((Err(BodyError::Transport(e)), state));
                }
                // A line the body's end cut short: the parser ignores it,
                // as it ignores an event that never ends.
                None if !state.partial.is_empty() => {
                    state.failed = true;
                    let rest = state.partial.split().freeze();
                    return checked(rest, state);
                }
                // The last line came whole: the body's end also ends its
                // event, whether or not the blank line closing it came (a
                // server that closes right after `data: [DONE]\n`). A final
                // bare `\r`, which the parser holds in case `\n` follows,
                // is made one line end first.
                None => {
                    state.failed = true;
                    if state.trailing_cr {
                        state.ready.push_back(Bytes::from_static(b"\n"));
                    }
                    state.ready.push_back(Bytes::from_static(b"\n"));
                    let line = state.ready.pop_front()?;
                    return checked(line, state);
                }
            };
            if let Some(&last) = chunk.last() {
                state.trailing_cr = last == b'\r';
            }
            if state.meter.feed(&chunk) > MAX_EVENT_BYTES {
                state.failed = true;
                return Some((Err(BodyError::EventTooLarge), state));
            }
            let Some(last) = memchr::memrchr2(b'\n', b'\r', &chunk) else {
                state.partial.extend_from_slice(&chunk);
                continue;
            };
            let lines = if state.partial.is_empty() {
                chunk.slice(..=last)
            } else {
                state.partial.extend_from_slice(&chunk[..=last]);
                state.partial.split().freeze()
            };
            state.partial.extend_from_slice(&chunk[last + 1..]);
            // One line per item: the parser copies what follows each line it
            // takes, so a chunk of many short events given whole would be
            // copied once per event.
            let mut start = 0;
            for end in memchr::memchr_iter(b'\n', &lines) {
                state.ready.push_back(lines.slice(start..=end));
                start = end + 1;
            }
            if start < lines.len() {
                state.ready.push_back(lines.slice(start..));
            }
            if let Some(line) = state.ready.pop_front() {
                return checked(line, state);
            }
        }
    })
}

/// A response body as it arrives.
pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// The events of a streaming response's body. The first must arrive within
/// `first_byte`.
pub(crate) fn sse_events_of(body: ByteStream, first_byte: Duration) -> EventStream {
    let events = Box::pin(whole_lines(body)).eventsource();
    let events = stream::unfold((events, true), move |(mut events, first)| async move {
        let next = if first {
            match tokio::time::timeout(first_byte, events.next()).await {
                Ok(next) => next,
                Err(_) => return Some((Err(ProviderError::Timeout(TimeoutPhase::FirstByte)), (events, false))),
            }
        } else {
            events.next().await
        };
        let item = match next? {
            Ok(event) => Ok(event),
            // The deployment's total timeout, passed mid-stream.
            Err(EventStreamError::Transport(BodyError::Transport(e))) if e.is_timeout() => {
                Err(ProviderError::Timeout(TimeoutPhase::Total))
            }
            Err(EventStreamError::Transport(BodyError::Transport(e))) => Err(ProviderError::Stream(format!(
                "the upstream connection failed mid-stream: {}",
                ProviderError::from_reqwest(e)
            ))),
            Err(EventStreamError::Transport(BodyError::EventTooLarge)) => Err(ProviderError::Stream(format!(
                "the upstream sent {}",
                BodyError::EventTooLarge
            ))),
            Err(e) => Err(ProviderError::Stream(e.to_string())),
        };
        Some((item, (events, false)))
    });
    Box::pin(events)
}

/// How long what follows a stream's end is read for (see [`drain`]).
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Reads what follows a stream's last event (over HTTP/1.1 the body's last
/// chunk may come in a later write), briefly and on a task of its own, so
/// that the connection goes back to the pool: a body dropped before its end
/// closes the connection. Nothing read is used.
pub(crate) fn drain(mut rest: EventStream) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = tokio::time::timeout(DRAIN_WAIT, async {
                // Bounded: an upstream that goes on sending is let go.
                for _ in 0..16 {
                    if rest.next().await.is_none() {
                        break;
                    }
                }
            })
            .await;
        });
    }
}

/// Whether an OpenAI-format chunk carries output (text, a tool call, a
/// refusal, a finish reason, or usage), not only a role or Azure's prompt
/// filter results. Only the first chunks of a stream need inspecting.
pub fn is_output(data: &[u8]) -> bool {
    let Ok(chunk) = serde_json::from_slice::<Value>(data) else {
        return true;
    };
    let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
        return true;
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    // No choices: the final usage chunk is output; Azure's first chunk
    // (prompt filter results only) is not.
    if choices.is_empty() {
        return chunk.get("usage").is_some_and(|u| !u.is_null());
    }
    choices.iter().any(|choice| {
        let delta = choice.get("delta");
        let field = |name: &str| delta.and_then(|d| d.get(name));
        text(field("content"))
            || text(field("refusal"))
            || text(field("reasoning_content"))
            || text(field("reasoning"))
            || text(choice.get("text"))
            || ["tool_calls", "function_call", "audio"]
                .iter()
                .any(|name| field(name).is_some_and(|v| !v.is_null()))
            // SGLang and older Ollama send `""` while a choice goes on.
            || text(choice.get("finish_reason"))
    })
}

/// The finish reason of a chunk whose answer the upstream itself cut short:
/// `"abort"` from vLLM and SGLang (the engine dropped the request: it was
/// preempted or failed), `"error"` from OpenRouter (whose chunk also carries
/// an error object, read first when it does). Passed on, it would read as a
/// finished answer.
pub(crate) fn aborted(data: &str) -> Option<&'static str> {
    let bytes = data.as_bytes();
    let finder = |needle: &[u8]| memchr::memmem::find(bytes, needle).is_some();
    if !finder(b"\"abort\"") && !finder(b"\"error\"") {
        return None;
    }
    let chunk: Value = serde_json::from_str(data).ok()?;
    chunk
        .get("choices")?
        .as_array()?
        .iter()
        .find_map(|choice| match choice.get("finish_reason")?.as_str()? {
            "abort" => Some("abort"),
            "error" => Some("error"),
            _ => None,
        })
}

/// Turns an OpenAI-style stream into chunks. Each event's JSON is validated and
/// its usage read; the bytes themselves pass through untouched. The stream ends
/// after `[DONE]`, or when it closes after every choice it began has finished
/// (Perplexity, older TGI and llama.cpp servers send no `[DONE]`); a stream
/// that closes before that, a malformed event or an error event ends with an
/// error instead. An error event before any output (a
/// role-only chunk aside) is the upstream's answer to the request (see
/// [`crate::http::first_event_error`]).
pub(crate) fn sse_chunks_of(events: EventStream) -> ChunkStream {
    /// Where the stream is.
    struct State {
        events: EventStream,
        done: bool,
        /// Output came: an error is no longer the upstream's answer.
        begun: bool,
        /// The error to end with once the chunk before it is handed on.
        pending: Option<ProviderError>,
        /// Choices begun and not finished yet.
        open: Vec<u64>,
        /// Choices that finished (a `finish_reason` came).
        finished: Vec<u64>,
    }
    let state = State {
        events,
        done: false,
        begun: false,
        pending: None,
        open: Vec::new(),
        finished: Vec::new(),
    };
    let chunks = stream::unfold(state, |mut state| async move {
        if let Some(error) = state.pending.take() {
            state.done = true;
            return Some((Err(error), state));
        }
        if state.done {
            return None;
        }
        loop {
            let item = match state.events.next().await {
                // Every choice finished: the answer is whole without `[DONE]`.
                None if !state.finished.is_empty() && state.open.is_empty() => return None,
                None => Err(ProviderError::Stream(
                    "the upstream closed the stream before [DONE]".into(),
                )),
                Some(Err(e)) => Err(e),
                Some(Ok(event)) => {
                    let data = event.data;
                    if data == "[DONE]" {
                        drain(state.events);
                        return None;
                    }
                    if data.trim().is_empty() {
                        continue;
                    }
                    let probe = serde_json::from_str::<Probe>(&data).map(|mut probe| {
                        // vLLM's flat error object, as a stream event.
                        if probe.error.is_none() && probe.object.as_ref().and_then(Value::as_str) == Some("error") {
                            probe.error = serde_json::from_str(&data).ok();
                        }
                        // TGI's `{"error": "…", "error_type": "validation"}`:
                        // the message, typed as the status its kind stands for.
                        if let Some(Value::String(message)) = &probe.error {
                            probe.error = Some(plain_error(message, &data));
                        }
                        probe
                    });
                    match probe {
                        Err(e) => Err(ProviderError::Stream(format!(
                            "malformed event from the upstream ({e})"
                        ))),
                        Ok(Probe { error: Some(error), .. }) if !state.begun => {
                            Err(crate::http::first_event_error(&error))
                        }
                        Ok(Probe { error: Some(error), .. }) => Err(stream_error(&error)),
                        Ok(Probe { usage, choices, .. }) => {
                            if let Some(ProbedChoices::Ends(choices)) = choices {
                                for choice in choices {
                                    let index = choice.index.unwrap_or(0);
                                    // SGLang and older Ollama send `""` while
                                    // a choice goes on.
                                    let ended = choice
                                        .finish_reason
                                        .as_ref()
                                        .and_then(Value::as_str)
                                        .is_some_and(|f| !f.is_empty());
                                    if ended {
                                        state.open.retain(|&i| i != index);
                                        if !state.finished.contains(&index) {
                                            state.finished.push(index);
                                        }
                                    } else if !state.finished.contains(&index) && !state.open.contains(&index) {
                                        state.open.push(index);
                                    }
                                }
                            }
                            // Ollama puts a zero `usage` in every chunk when
                            // asked for usage, and the counts in the last: a
                            // prompt has tokens, so all zeros is no count.
                            let usage = usage.filter(counts);
                            match aborted(&data) {
                                None => Ok(StreamChunk {
                                    data: Bytes::from(data),
                                    usage,
                                }),
                                Some(reason) => {
                                    let cut = ProviderError::Stream(format!(
                                        "the upstream cut the answer short (finish_reason \"{reason}\")"
                                    ));
                                    // What the cut answer used, so that it is
                                    // charged as counted: in the chunk, or in
                                    // the usage chunk that follows it. Before
                                    // any output the attempt just fails.
                                    let used = match usage {
                                        Some(usage) if state.begun => usage_only(&data, usage),
                                        None if state.begun => usage_after(&mut state.events).await,
                                        _ => None,
                                    };
                                    match used {
                                        Some(chunk) => {
                                            state.pending = Some(cut);
                                            Ok(chunk)
                                        }
                                        None => Err(cut),
                                    }
                                }
                            }
                        }
                    }
                }
            };
            state.done = item.is_err();
            state.begun = state.begun || item.as_ref().is_ok_and(|chunk| is_output(&chunk.data));
            return Some((item, state));
        }
    });
    Box::pin(chunks)
}

/// An error sent as a plain string (`{"error": "…"}`, TGI's with its
/// `error_type`), as an error object typed by the status its kind stands
/// for: `validation` a 422 (a prompt over the model's length among them),
/// `overloaded` a 429, anything else a server error.
fn plain_error(message: &str, data: &str) -> Value {
    let kind = serde_json::from_str::<Value>(data)
        .ok()
        .and_then(|v| v.get("error_type").and_then(Value::as_str).map(str::to_owned));
    let status = match kind.as_deref() {
        Some("validation") => 422,
        Some("overloaded") => 429,
        _ => 500,
    };
    serde_json::json!({"message": message, "code": status})
}

/// Whether a usage counts anything (see [`sse_chunks_of`]).
fn counts(usage: &switchyard_api::Usage) -> bool {
    usage.prompt_tokens > 0 || usage.completion_tokens > 0 || usage.total_tokens > 0
}

/// A chunk of `data`'s usage alone (its choices emptied), as the usage
/// chunk of a stream.
fn usage_only(data: &str, usage: switchyard_api::Usage) -> Option<StreamChunk> {
    let mut chunk: serde_json::Map<String, Value> = serde_json::from_str(data).ok()?;
    chunk.insert("choices".into(), Value::Array(Vec::new()));
    let bytes = serde_json::to_vec(&chunk).ok()?;
    Some(StreamChunk {
        data: Bytes::from(bytes),
        usage: Some(usage),
    })
}

/// The usage chunk that follows a cut answer's last chunk (vLLM sends it
/// when asked to include usage), read briefly.
async fn usage_after(events: &mut EventStream) -> Option<StreamChunk> {
    let look = async {
        for _ in 0..4 {
            let event = events.next().await?.ok()?;
            if event.data == "[DONE]" {
                return None;
            }
            if let Some(usage) = serde_json::from_str::<Probe>(&event.data)
                .ok()
                .and_then(|probe| probe.usage)
                .filter(counts)
            {
                return Some(StreamChunk {
                    data: Bytes::from(event.data),
                    usage: Some(usage),
                });
            }
        }
        None
    };
    tokio::time::timeout(DRAIN_WAIT, look).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` in order and returns the open event's size after each.
    fn sizes(chunks: &[&str]) -> Vec<usize> {
        let mut meter = EventMeter::default();
        chunks.iter().map(|c| meter.feed(c.as_bytes())).collect()
    }

    #[test]
    fn events_end_at_a_blank_line_with_any_line_end() {
        assert_eq!(sizes(&["data: ab\n", "\n"]), vec![8, 0]);
        assert_eq!(sizes(&["data: ab\r\n\r\n"]), vec![0]);
        assert_eq!(sizes(&["data: ab\r\r"]), vec![0]);
        // A `\r\n` split across chunks is one line end, not a blank line.
        assert_eq!(sizes(&["data: ab\r", "\ndata: c"]), vec![8, 15]);
        assert_eq!(sizes(&["data: ab\r", "\n", "\r\n"]), vec![8, 8, 0]);
    }

    #[test]
    fn an_event_is_measured_over_its_lines_and_chunks() {
        assert_eq!(sizes(&["event: x\ndata: 1\n", "data: 22"]), vec![15, 23]);
        assert_eq!(sizes(&["da", "ta", ": 1\n\ndata: 2"]), vec![2, 4, 7]);
        assert_eq!(sizes(&[": ping\n\n", ""]), vec![0, 0]);
    }

    /// The items `whole_lines` makes of `chunks`.
    async fn lines(chunks: &[&'static str]) -> Vec<String> {
        let body = stream::iter(
            chunks
                .iter()
                .map(|c| Ok(Bytes::from_static(c.as_bytes())))
                .collect::<Vec<_>>(),
        );
        let items: Vec<_> = whole_lines(body).collect().await;
        items
            .into_iter()
            .map(|item| String::from_utf8(item.unwrap().to_vec()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn partial_lines_wait_for_their_end() {
        // The body's end is a blank line, ending any event still open.
        assert_eq!(lines(&["data: 1\n\n"]).await, vec!["data: 1\n", "\n", "\n"]);
        assert_eq!(
            lines(&["da", "ta: 1", "2\n\ndata: ", "3\n", "\n"]).await,
            vec!["data: 12\n", "\n", "data: 3\n", "\n", "\n"]
        );
        // A line the body's end cuts is left as it is (the parser drops it).
        assert_eq!(
            lines(&["data: 1\r", "\n\r\n", "data: tail"]).await,
            vec!["data: 1\r", "\n", "\r\n", "data: tail"]
        );
        // Bare CR line ends stay together; one that ends the body is
        // completed, so that the parser ends the last event.
        assert_eq!(
            lines(&["data: 1\r\rdata: 2\r"]).await,
            vec!["data: 1\r\rdata: 2\r", "\n", "\n"]
        );
        assert_eq!(lines(&["data: 1\r\n\r\n"]).await, vec!["data: 1\r\n", "\r\n", "\n"]);
    }

    #[tokio::test]
    async fn the_last_event_of_a_body_is_read_however_the_body_ends() {
        for body in [
            &b"data: 1\r\rdata: [DONE]\r\r"[..],
            // Closed without the blank line after the last event.
            b"data: 1\n\ndata: [DONE]\n",
            b"data: 1\r\n\r\ndata: [DONE]\r\n",
            b"data: 1\n\ndata: [DONE]\r",
        ] {
            let stream = stream::iter(vec![Ok(Bytes::from_static(body))]);
            let events: Vec<_> = Box::pin(whole_lines(stream)).eventsource().collect().await;
            let data: Vec<String> = events.into_iter().map(|e| e.unwrap().data).collect();
            assert_eq!(data, ["1", "[DONE]"], "{}", String::from_utf8_lossy(body));
        }
        // An event whose last line the body's end cut is not read: a
        // truncated `message_stop` is no end.
        for body in [
            &b"data: 1\n\ndata: [DONE]"[..],
            b"data: 1\n\nevent: message_stop\ndata: {\"type\":\"message_st",
        ] {
            let stream = stream::iter(vec![Ok(Bytes::from_static(body))]);
            let events: Vec<_> = Box::pin(whole_lines(stream)).eventsource().collect().await;
            let data: Vec<String> = events.into_iter().map(|e| e.unwrap().data).collect();
            assert_eq!(data, ["1"], "{}", String::from_utf8_lossy(body));
        }
    }

    /// The chunks (or the error) `sse_chunks_of` makes of `body`.
    async fn chunks(body: &'static str) -> Vec<Result<StreamChunk, ProviderError>> {
        let bytes: ByteStream = Box::pin(stream::iter(vec![Ok(Bytes::from_static(body.as_bytes()))]));
        sse_chunks_of(sse_events_of(bytes, Duration::from_secs(5)))
            .collect()
            .await
    }

    /// A stream that closes without `[DONE]` is whole once every choice it
    /// began has finished (Perplexity), and broken otherwise.
    #[tokio::test]
    async fn a_stream_ends_without_done_only_once_every_choice_finished() {
        let whole = chunks(concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],",
            "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n",
        ))
        .await;
        assert!(
            matches!(&whole[..], [Ok(_), Ok(last)] if last.usage.is_some()),
            "{whole:?}"
        );
        let cut =
            chunks("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n")
                .await;
        assert!(matches!(&cut[..], [Ok(_), Err(ProviderError::Stream(_))]), "{cut:?}");
        // Two choices, one finished: still cut.
        let half = chunks(concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null},",
            "{\"index\":1,\"delta\":{\"content\":\"b\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        ))
        .await;
        assert!(
            matches!(&half[..], [Ok(_), Ok(_), Err(ProviderError::Stream(_))]),
            "{half:?}"
        );
        // An empty finish reason (SGLang's while a choice goes on) is none.
        let going =
            chunks("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"\"}]}\n\n")
                .await;
        assert!(
            matches!(&going[..], [Ok(_), Err(ProviderError::Stream(_))]),
            "{going:?}"
        );
    }

    #[tokio::test]
    async fn an_error_before_any_chunk_is_the_answer_and_after_one_a_broken_stream() {
        // vLLM refusing a request it already answered 200 to.
        let refused = chunks(
            "data: {\"object\":\"error\",\"message\":\"The decoder prompt (length 9000) is longer than the maximum model length of 8192.\",\"type\":\"BadRequestError\",\"param\":null,\"code\":400}\n\ndata: [DONE]\n\n",
        )
        .await;
        match &refused[..] {
            [Err(e @ ProviderError::Status { status: 400, .. })] => assert!(e.is_context_window_exceeded(), "{e:?}"),
            other => panic!("{other:?}"),
        }
        // TGI's plain-string error, typed by its `error_type`.
        let too_long = chunks(
            "data: {\"error\":\"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens and 200 `max_new_tokens`\",\"error_type\":\"validation\"}\n\n",
        )
        .await;
        match &too_long[..] {
            [
                Err(
                    e @ ProviderError::Status {
                        status: 422, message, ..
                    },
                ),
            ] => {
                assert!(
                    e.is_context_window_exceeded() && message.starts_with("Input validation"),
                    "{e:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        let invalid =
            chunks("data: {\"error\":{\"message\":\"bad schema\",\"type\":\"BadRequestError\",\"code\":400}}\n\n")
                .await;
        assert!(
            matches!(&invalid[..], [Err(ProviderError::Status { status: 400, .. })]),
            "{invalid:?}"
        );
        // A refusal of the gateway's key is still no verdict on the request.
        let key = chunks("data: {\"error\":{\"message\":\"key sk-1 revoked\",\"code\":401}}\n\n").await;
        assert!(matches!(&key[..], [Err(ProviderError::Stream(_))]), "{key:?}");
        // After output, the same event breaks the stream.
        let broken = chunks(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"error\":{\"message\":\"bad\",\"code\":400}}\n\n",
        )
        .await;
        assert!(
            matches!(&broken[..], [Ok(_), Err(ProviderError::Stream(_))]),
            "{broken:?}"
        );
    }

    #[tokio::test]
    async fn an_answer_the_upstream_aborted_is_no_finished_answer() {
        // vLLM's engine dropping a request mid-answer.
        let cut = chunks(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\": \"abort\"}]}\n\ndata: [DONE]\n\n",
        )
        .await;
        match &cut[..] {
            [Ok(_), Err(ProviderError::Stream(message))] => assert!(message.contains("\"abort\""), "{message}"),
            other => panic!("{other:?}"),
        }
        // Before any output: the attempt's failure, for the next one to answer.
        let first =
            chunks("data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"error\"}]}\n\ndata: [DONE]\n\n")
                .await;
        assert!(matches!(&first[..], [Err(ProviderError::Stream(_))]), "{first:?}");
        // What the cut answer used is still read: from the usage chunk
        // that follows, or from the cut chunk itself.
        let counted = chunks(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"abort\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\n\ndata: [DONE]\n\n",
        )
        .await;
        match &counted[..] {
            [Ok(_), Ok(usage), Err(ProviderError::Stream(_))] => {
                assert_eq!(usage.usage.as_ref().map(|u| u.prompt_tokens), Some(12));
            }
            other => panic!("{other:?}"),
        }
        let inline = chunks(
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"abort\"}],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1,\"total_tokens\":8}}\n\n",
        )
        .await;
        match &inline[..] {
            [Ok(_), Ok(usage), Err(ProviderError::Stream(_))] => {
                assert_eq!(usage.usage.as_ref().map(|u| u.prompt_tokens), Some(7));
                let data: Value = serde_json::from_slice(&usage.data).unwrap();
                assert_eq!(
                    (&data["id"], &data["choices"]),
                    (&serde_json::json!("c1"), &serde_json::json!([]))
                );
            }
            other => panic!("{other:?}"),
        }
        // The words in an answer are no finish reason.
        let said = chunks(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"error\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        )
        .await;
        assert!(matches!(&said[..], [Ok(_)]), "{said:?}");
    }

    #[tokio::test]
    async fn a_zero_usage_in_every_chunk_is_no_count() {
        // Ollama with `include_usage`: zeros in each chunk, counts in the last.
        let got = chunks(
            "data: {\"choices\":[{\"index\":0,\"text\":\"hi\"}],\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0,\"total_tokens\":0}}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\n\ndata: [DONE]\n\n",
        )
        .await;
        let usages: Vec<_> = got
            .iter()
            .map(|c| c.as_ref().unwrap().usage.as_ref().map(|u| u.prompt_tokens))
            .collect();
        assert_eq!(usages, [None, Some(12)]);
    }

    #[tokio::test]
    async fn an_oversized_event_fails_the_body() {
        let big: &'static [u8] = Box::leak(vec![b'x'; MAX_EVENT_BYTES].into_boxed_slice());
        let body = stream::iter(vec![
            Ok(Bytes::from_static(b"data: 1\n\ndata: ")),
            Ok(Bytes::from_static(big)),
            Ok(Bytes::from_static(b"\n\n")),
        ]);
        let items: Vec<_> = whole_lines(body).collect().await;
        assert_eq!(items.len(), 3);
        assert!(matches!(&items[0], Ok(b) if b.as_ref() == b"data: 1\n"));
        assert!(matches!(&items[1], Ok(b) if b.as_ref() == b"\n"));
        assert!(matches!(items[2], Err(BodyError::EventTooLarge)));
    }

    #[tokio::test]
    async fn a_line_that_is_not_utf8_fails_the_body_at_once() {
        let body = stream::iter(vec![
            Ok(Bytes::from_static(b"data: 1\n\ndata: \xff\xfe\n\n")),
            Ok(Bytes::from_static(b"data: 2\n\n")),
        ]);
        let items: Vec<_> = whole_lines(body).collect().await;
        assert_eq!(items.len(), 3, "nothing after the bad line is read");
        assert!(matches!(&items[0], Ok(b) if b.as_ref() == b"data: 1\n"));
        assert!(matches!(items[2], Err(BodyError::NotUtf8)));
        // A code point split across chunks is fine: lines are checked whole.
        let split = stream::iter(vec![
            Ok(Bytes::from_static(b"data: \xc3")),
            Ok(Bytes::from_static(b"\xa9\n\n")),
        ]);
        let items: Vec<_> = whole_lines(split).collect().await;
        assert!(matches!(&items[0], Ok(b) if b.as_ref() == "data: é\n".as_bytes()));
    }

    #[test]
    fn an_oversized_event_is_caught_before_it_ends() {
        let mut meter = EventMeter::default();
        let big = vec![b'x'; MAX_EVENT_BYTES];
        assert_eq!(meter.feed(b"data: "), 6);
        assert!(meter.feed(&big) > MAX_EVENT_BYTES);
        let mut meter = EventMeter::default();
        let mut lines = Vec::new();
        // 16 bytes counted per line (the line end is not).
        for _ in 0..=MAX_EVENT_BYTES / 16 {
            lines.extend_from_slice(b"data: xxxxxxxxxx\n");
        }
        lines.extend_from_slice(b"\n");
        assert!(meter.feed(&lines) > MAX_EVENT_BYTES);
    }
}
