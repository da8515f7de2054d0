//! Decoding an upstream's OpenAI-style SSE stream into chunks.

use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{StreamExt, stream};

use crate::http::{Probe, error_message};
use crate::{ChunkStream, ProviderError, StreamChunk, TimeoutPhase};

/// Turns a streaming response into chunks. Each event's JSON is validated and
/// its usage read; the bytes themselves pass through untouched. The stream ends
/// after `[DONE]`; a stream that closes before it, a malformed event or an error
/// event ends with an error instead.
pub(crate) fn sse_chunks(response: reqwest::Response, first_byte: Duration) -> ChunkStream {
    let events = response.bytes_stream().eventsource();
    let state = (events, false, true);
    let chunks = stream::unfold(state, move |(mut events, done, first)| async move {
        if done {
            return None;
        }
        loop {
            let next = if first {
                match tokio::time::timeout(first_byte, events.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        return Some((
                            Err(ProviderError::Timeout(TimeoutPhase::FirstByte)),
                            (events, true, false),
                        ));
                    }
                }
            } else {
                events.next().await
            };
            let item = match next {
                None => Err(ProviderError::Stream(
                    "the upstream closed the stream before [DONE]".into(),
                )),
                Some(Err(EventStreamError::Transport(e))) => Err(ProviderError::Stream(format!(
                    "the upstream connection failed mid-stream: {}",
                    ProviderError::from_reqwest(e)
                ))),
                Some(Err(e)) => Err(ProviderError::Stream(e.to_string())),
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
            return Some((item, (events, done, false)));
        }
    });
    Box::pin(chunks)
}
