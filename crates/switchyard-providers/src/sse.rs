//! Decoding upstream server-sent events.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
pub use eventsource_stream::Event;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt, stream};

use crate::http::{Probe, error_message};
use crate::{ChunkStream, ProviderError, StreamChunk, TimeoutPhase};

/// Upstream SSE events ([`Event`]: `event` name and `data`); transport failures and a silent start become errors.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, ProviderError>> + Send>>;

/// The events of a streaming response. The first must arrive within `first_byte`.
pub(crate) fn sse_events(response: reqwest::Response, first_byte: Duration) -> EventStream {
    let events = response.bytes_stream().eventsource();
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
            Err(EventStreamError::Transport(e)) => Err(ProviderError::Stream(format!(
                "the upstream connection failed mid-stream: {}",
                ProviderError::from_reqwest(e)
            ))),
            Err(e) => Err(ProviderError::Stream(e.to_string())),
        };
        Some((item, (events, false)))
    });
    Box::pin(events)
}

/// Turns an OpenAI-style stream into chunks. Each event's JSON is validated and
/// its usage read; the bytes themselves pass through untouched. The stream ends
/// after `[DONE]`; a stream that closes before it, a malformed event or an error
/// event ends with an error instead.
pub(crate) fn sse_chunks(response: reqwest::Response, first_byte: Duration) -> ChunkStream {
    let chunks = stream::unfold(
        (sse_events(response, first_byte), false),
        |(mut events, done)| async move {
            if done {
                return None;
            }
            loop {
                let item = match events.next().await {
                    None => Err(ProviderError::Stream(
                        "the upstream closed the stream before [DONE]".into(),
                    )),
                    Some(Err(e)) => Err(e),
                    Some(Ok(event)) => {
                        let data = event.data;
                        if data == "[DONE]" {
                            return None;
                        }
                        if data.trim().is_empty() {
                            continue;
                        }
                        match serde_json::from_str::<Probe>(&data) {
                            Err(e) => Err(ProviderError::Stream(format!(
                                "malformed event from the upstream ({e})"
                            ))),
                            Ok(Probe { error: Some(error), .. }) => Err(ProviderError::Stream(format!(
                                "error event from the upstream: {}",
                                error_message(&error)
                            ))),
                            Ok(Probe { usage, .. }) => Ok(StreamChunk {
                                data: Bytes::from(data),
                                usage,
                            }),
                        }
                    }
                };
                let done = item.is_err();
                return Some((item, (events, done)));
            }
        },
    );
    Box::pin(chunks)
}
