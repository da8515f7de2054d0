//! Streaming bodies (server-sent events, AWS event-stream frames) with delay,
//! abort and cancellation tracking, and the protocol-neutral fault planning
//! shared by the Anthropic and Bedrock mocks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

use crate::scenario::Scenario;

/// Pause before an abort so that earlier events reach the client.
const ABORT_FLUSH_GRACE: Duration = Duration::from_millis(50);

/// Counters describing the streaming responses a mock has produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Streaming responses that were started.
    pub started: usize,
    /// Streaming responses whose last event was handed to the connection.
    pub completed: usize,
    /// Streaming responses dropped before their last event (client went away).
    pub cancelled: usize,
    /// Streaming responses deliberately aborted by a `reset_after` directive.
    pub aborted: usize,
}

/// Shared atomic counters behind [`StreamStats`].
#[derive(Debug, Default)]
pub(crate) struct StreamCounters {
    started: AtomicUsize,
    completed: AtomicUsize,
    cancelled: AtomicUsize,
    aborted: AtomicUsize,
}

impl StreamCounters {
    pub(crate) fn snapshot(&self) -> StreamStats {
        StreamStats {
            started: self.started.load(Ordering::SeqCst),
            completed: self.completed.load(Ordering::SeqCst),
            cancelled: self.cancelled.load(Ordering::SeqCst),
            aborted: self.aborted.load(Ordering::SeqCst),
        }
    }
}

/// One step of a planned event stream.
#[derive(Debug, Clone)]
pub(crate) enum SseItem {
    /// Raw bytes sent as one body chunk.
    Raw(Bytes),
    /// Abort the connection.
    Abort,
    /// Wait this long before the next item (sends nothing).
    Pause(Duration),
}

impl SseItem {
    /// A `data:` event whose JSON is pretty-printed over several `data:`
    /// lines with `multiline`, else on one.
    pub(crate) fn json_lines(value: &Value, multiline: bool) -> SseItem {
        SseItem::Raw(Bytes::from(format!("{}\n", data_lines(value, multiline))))
    }

    /// The terminating `data: [DONE]\n\n` event.
    pub(crate) fn done() -> SseItem {
        SseItem::Raw(Bytes::from_static(b"data: [DONE]\n\n"))
    }

    /// An event whose data is not valid JSON.
    pub(crate) fn malformed() -> SseItem {
        SseItem::Raw(Bytes::from_static(b"data: {not json}\n\n"))
    }
}

/// The `data:` lines of an event carrying `value`: one, or with `multiline`
/// one per line of the pretty-printed JSON.
pub(crate) fn data_lines(value: &Value, multiline: bool) -> String {
    if !multiline {
        return format!("data: {value}\n");
    }
    let pretty = serde_json::to_string_pretty(value).unwrap_or_default();
    pretty.lines().map(|line| format!("data: {line}\n")).collect()
}

/// What a planned event is, for the stream fault directives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventRole {
    /// Structure around the content (message and block starts and stops).
    Frame,
    /// A content delta; counted by `reset_after` and `error_event`.
    Content,
    /// Final metadata before the stop event; `reset_after` aborts before it.
    Tail,
    /// The closing event(s) that `no_stop` leaves out.
    Stop,
}

/// One encoded event of a planned stream.
#[derive(Debug, Clone)]
pub(crate) struct PlannedEvent {
    /// How the fault directives treat the event.
    pub(crate) role: EventRole,
    /// The encoded event.
    pub(crate) bytes: Bytes,
}

impl PlannedEvent {
    /// An event with the given role.
    pub(crate) fn new(role: EventRole, bytes: Bytes) -> PlannedEvent {
        PlannedEvent { role, bytes }
    }
}

/// Applies `no_stop`, `error_event`, `reset_after` and `malformed_sse` to a
/// protocol's events. `malformed` is inserted after the first event and
/// `error` follows the first content event.
pub(crate) fn plan_events(
    events: Vec<PlannedEvent>,
    scenario: &Scenario,
    malformed: Bytes,
    error: Bytes,
) -> Vec<SseItem> {
    let mut items = Vec::with_capacity(events.len() + 2);
    let mut content_sent = 0;
    let mut aborted = false;
    for event in events {
        if scenario.no_stop && event.role == EventRole::Stop {
            continue;
        }
        if let Some(limit) = scenario.reset_after {
            let at_limit = event.role == EventRole::Content && content_sent == limit;
            if at_limit || matches!(event.role, EventRole::Tail | EventRole::Stop) {
                items.push(SseItem::Abort);
                aborted = true;
                break;
            }
        }
        items.push(SseItem::Raw(event.bytes));
        if event.role == EventRole::Content {
            content_sent += 1;
            if scenario.error_event && content_sent == 1 {
                items.push(SseItem::Raw(error));
                break;
            }
        }
    }
    if scenario.reset_after.is_some() && !aborted && !scenario.error_event {
        items.push(SseItem::Abort);
    }
    if scenario.malformed_sse && !items.is_empty() {
        items.insert(1, SseItem::Raw(malformed));
    }
    with_first_event_pause(items, scenario)
}

/// Applies `huge_event_kib` to a planned SSE stream: the oversized event
/// follows the first one.
pub(crate) fn with_huge_event(mut items: Vec<SseItem>, scenario: &Scenario) -> Vec<SseItem> {
    const PIECE: usize = 64 * 1024;
    let Some(kib) = scenario.huge_event_kib else {
        return items;
    };
    let at = items
        .iter()
        .position(|item| matches!(item, SseItem::Raw(_)))
        .map_or(0, |i| i + 1);
    let mut huge = vec![SseItem::Raw(Bytes::from_static(b"data: "))];
    let piece = Bytes::from(vec![b'x'; PIECE]);
    let mut left = kib.saturating_mul(1024);
    while left > 0 {
        let n = left.min(PIECE);
        huge.push(SseItem::Raw(piece.slice(..n)));
        left -= n;
    }
    huge.push(SseItem::Raw(Bytes::from_static(b"\n\n")));
    items.splice(at..at, huge);
    items
}

/// Puts the `first_event_ms` pause in front of a planned stream, and the
/// `late_end_ms` pause after its last event.
pub(crate) fn with_first_event_pause(mut items: Vec<SseItem>, scenario: &Scenario) -> Vec<SseItem> {
    if let Some(ms) = scenario.first_event_ms {
        items.insert(0, SseItem::Pause(Duration::from_millis(ms)));
    }
    if let Some(ms) = scenario.late_end_ms {
        items.push(SseItem::Pause(Duration::from_millis(ms)));
    }
    items
}

/// Records how a streaming body ended when it is dropped.
struct StreamGuard {
    counters: Arc<StreamCounters>,
    finished: bool,
    aborted: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let counter = if self.finished {
            &self.counters.completed
        } else if self.aborted {
            &self.counters.aborted
        } else {
            &self.counters.cancelled
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

struct StreamState {
    items: VecDeque<SseItem>,
    delay: Duration,
    first: bool,
    guard: StreamGuard,
}

/// Builds a `text/event-stream` response that emits `items` one body chunk
/// at a time, sleeping `delay` between events.
pub(crate) fn sse_response(counters: &Arc<StreamCounters>, items: Vec<SseItem>, delay: Duration) -> Response {
    stream_response(counters, items, delay, "text/event-stream")
}

/// Builds a streaming response with the given content type that emits `items`
/// one body chunk at a time, sleeping `delay` between them.
pub(crate) fn stream_response(
    counters: &Arc<StreamCounters>,
    items: Vec<SseItem>,
    delay: Duration,
    content_type: &'static str,
) -> Response {
    counters.started.fetch_add(1, Ordering::SeqCst);
    let state = StreamState {
        items: items.into(),
        delay,
        first: true,
        guard: StreamGuard {
            counters: Arc::clone(counters),
            finished: false,
            aborted: false,
        },
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        let item = state.items.pop_front()?;
        if !state.first && !state.delay.is_zero() {
            tokio::time::sleep(state.delay).await;
        }
        state.first = false;
        match item {
            SseItem::Pause(pause) => {
                tokio::time::sleep(pause).await;
                state.first = true;
                if state.items.is_empty() {
                    state.guard.finished = true;
                }
                Some((Ok(Bytes::new()), state))
            }
            SseItem::Raw(bytes) => {
                if state.items.is_empty() {
                    state.guard.finished = true;
                }
                Some((Ok(bytes), state))
            }
            SseItem::Abort => {
                // Let the connection flush what was already sent, so the
                // client sees the earlier events before the reset.
                tokio::time::sleep(ABORT_FLUSH_GRACE).await;
                state.guard.aborted = true;
                state.items.clear();
                Some((Err(reset_error()), state))
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// A response whose body fails before any byte is sent, so the connection is
/// closed abruptly.
pub(crate) fn reset_response() -> Response {
    let stream = futures_util::stream::once(async { Err::<Bytes, _>(reset_error()) });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn reset_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock upstream connection reset")
}

/// Splits `text` into streaming content pieces: each word followed by a
/// space, except the last. With `count`, words are cycled to give exactly
/// `count` pieces.
pub(crate) fn content_pieces(text: &str, count: Option<usize>) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let words: Vec<&str> = match count {
        None => words,
        Some(n) if words.is_empty() => vec!["mock"; n],
        Some(n) => words.iter().copied().cycle().take(n).collect(),
    };
    let last = words.len().saturating_sub(1);
    words
        .iter()
        .enumerate()
        .map(|(i, w)| if i == last { (*w).to_owned() } else { format!("{w} ") })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(role: EventRole, text: &'static str) -> PlannedEvent {
        PlannedEvent::new(role, Bytes::from_static(text.as_bytes()))
    }

    fn texts(items: &[SseItem]) -> Vec<String> {
        items
            .iter()
            .map(|item| match item {
                SseItem::Raw(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                SseItem::Abort => "ABORT".to_owned(),
                SseItem::Pause(d) => format!("PAUSE {}ms", d.as_millis()),
            })
            .collect()
    }

    fn plan(spec: &str) -> Vec<String> {
        let events = vec![
            event(EventRole::Frame, "start"),
            event(EventRole::Content, "a"),
            event(EventRole::Content, "b"),
            event(EventRole::Frame, "block_stop"),
            event(EventRole::Tail, "delta"),
            event(EventRole::Stop, "stop"),
        ];
        let scenario = Scenario::parse(spec).unwrap();
        texts(&plan_events(
            events,
            &scenario,
            Bytes::from_static(b"BAD"),
            Bytes::from_static(b"ERR"),
        ))
    }

    #[test]
    fn planning_applies_directives() {
        assert_eq!(plan(""), vec!["start", "a", "b", "block_stop", "delta", "stop"]);
        assert_eq!(plan("no_stop"), vec!["start", "a", "b", "block_stop", "delta"]);
        assert_eq!(plan("error_event"), vec!["start", "a", "ERR"]);
        assert_eq!(plan("reset_after=1"), vec!["start", "a", "ABORT"]);
        assert_eq!(plan("reset_after=0"), vec!["start", "ABORT"]);
        assert_eq!(plan("reset_after=5"), vec!["start", "a", "b", "block_stop", "ABORT"]);
        assert_eq!(
            plan("malformed_sse,no_stop"),
            vec!["start", "BAD", "a", "b", "block_stop", "delta"]
        );
    }

    #[test]
    fn a_huge_event_follows_the_first() {
        let scenario = Scenario::parse("huge_event_kib=130").unwrap();
        let items = with_huge_event(vec![SseItem::done(), SseItem::done()], &scenario);
        let lens: Vec<usize> = items
            .iter()
            .map(|item| match item {
                SseItem::Raw(bytes) => bytes.len(),
                _ => usize::MAX,
            })
            .collect();
        assert_eq!(lens, vec![14, 6, 65536, 65536, 2048, 2, 14]);
    }

    #[test]
    fn pieces_default_and_cycled() {
        assert_eq!(content_pieces("a b c", None), vec!["a ", "b ", "c"]);
        assert_eq!(content_pieces("a b", Some(3)), vec!["a ", "b ", "a"]);
        assert!(content_pieces("a b", Some(0)).is_empty());
    }
}
