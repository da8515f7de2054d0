//! Server-sent events to the client: each upstream chunk is framed and sent as
//! soon as it arrives; the stream ends with `data: [DONE]`, or with an error
//! event if the upstream failed after the stream began.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{StreamExt, stream};
use std::time::{Duration, Instant};

use switchyard_providers::{ChunkStream, ProviderError, StreamChunk};
use switchyard_routing::{DeploymentId, InFlight, Outcome};

use crate::routes::{SharedState, error_class};

use crate::error::ApiError;

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Frames one JSON payload as an SSE `data:` event.
fn frame(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    out.put_slice(b"data: ");
    out.put_slice(data);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// The SSE error event sent when a stream fails after it started.
fn error_event(deployment: &str, err: switchyard_providers::ProviderError) -> Bytes {
    let error = ApiError::upstream(deployment, err);
    tracing::warn!(error = %error, "stream failed after it started");
    frame(&serde_json::to_vec(&error.body()).unwrap_or_default())
}

/// Follows one stream for the routing statistics: it keeps the deployment
/// counted as in flight until the stream ends, and records the outcome, time
/// to first chunk and tokens then.
pub struct StreamTracker {
    state: SharedState,
    id: DeploymentId,
    started: Instant,
    first_chunk: Option<Duration>,
    tokens: u64,
    _in_flight: InFlight,
}

impl StreamTracker {
    /// Starts following a stream on deployment `id`, sent at `started`.
    pub(crate) fn new(state: SharedState, id: DeploymentId, started: Instant, in_flight: InFlight) -> Self {
        Self {
            state,
            id,
            started,
            first_chunk: None,
            tokens: 0,
            _in_flight: in_flight,
        }
    }

    fn on_chunk(&mut self, chunk: &StreamChunk) {
        self.first_chunk.get_or_insert_with(|| self.started.elapsed());
        if let Some(usage) = &chunk.usage {
            self.tokens = usage.total_tokens;
        }
    }

    fn finish(&self, error: Option<&ProviderError>) {
        let now = self.state.now_ms();
        match error {
            None => {
                let outcome = Outcome {
                    latency: self.started.elapsed(),
                    ttft: self.first_chunk,
                    tokens: self.tokens,
                };
                self.state.stats.record_success(self.id, outcome, now);
            }
            Some(e) => self.state.stats.record_failure(self.id, error_class(e), now),
        }
    }
}

/// Turns upstream chunks into an SSE response. Dropping the response body (the
/// client went away) drops the upstream stream, which closes its connection.
pub fn sse_response(chunks: ChunkStream, deployment: String, tracker: Option<StreamTracker>) -> Response {
    let state = (chunks, deployment, tracker, false);
    let events = stream::unfold(state, |(mut chunks, deployment, mut tracker, finished)| async move {
        if finished {
            return None;
        }
        let (bytes, finished) = match chunks.next().await {
            Some(Ok(chunk)) => {
                if let Some(t) = tracker.as_mut() {
                    t.on_chunk(&chunk);
                }
                (frame(&chunk.data), false)
            }
            Some(Err(err)) => {
                if let Some(t) = &tracker {
                    t.finish(Some(&err));
                }
                (error_event(&deployment, err), true)
            }
            None => {
                if let Some(t) = &tracker {
                    t.finish(None);
                }
                (Bytes::from_static(DONE), true)
            }
        };
        Some((bytes, (chunks, deployment, tracker, finished)))
    });
    let mut response = Response::new(Body::from_stream(events.map(Ok::<_, Infallible>)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
