//! Server-sent-event bodies with delay, abort and cancellation tracking.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

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
}

impl SseItem {
    /// A `data: <json>\n\n` event.
    pub(crate) fn json(value: &Value) -> SseItem {
        SseItem::Raw(Bytes::from(format!("data: {value}\n\n")))
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
        .header(header::CONTENT_TYPE, "text/event-stream")
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
    use super::content_pieces;

    #[test]
    fn pieces_default_and_cycled() {
        assert_eq!(content_pieces("a b c", None), vec!["a ", "b ", "c"]);
        assert_eq!(content_pieces("a b", Some(3)), vec!["a ", "b ", "a"]);
        assert!(content_pieces("a b", Some(0)).is_empty());
    }
}
