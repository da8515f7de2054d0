//! Server-sent events to the client: each upstream chunk is framed and sent as
//! soon as it arrives; the stream ends with `data: [DONE]`, or with an error
//! event if the upstream failed after the stream began.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{StreamExt, stream};
use switchyard_providers::ChunkStream;

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

/// Turns upstream chunks into an SSE response. Dropping the response body (the
/// client went away) drops the upstream stream, which closes its connection.
pub fn sse_response(chunks: ChunkStream, deployment: String) -> Response {
    let events = stream::unfold(
        (chunks, deployment, false),
        |(mut chunks, deployment, finished)| async move {
            if finished {
                return None;
            }
            let (bytes, finished) = match chunks.next().await {
                Some(Ok(chunk)) => (frame(&chunk.data), false),
                Some(Err(err)) => (error_event(&deployment, err), true),
                None => (Bytes::from_static(DONE), true),
            };
            Some((bytes, (chunks, deployment, finished)))
        },
    );
    let mut response = Response::new(Body::from_stream(events.map(Ok::<_, Infallible>)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
