//! OpenAI's audio endpoints for the mock upstream: `/v1/audio/speech`
//! (audio bytes in the format asked for) and `/v1/audio/transcriptions` and
//! `/translations` (a multipart upload in, a transcript out).

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::openai_mock::{RequestCtx, invalid_request, json_response, non_stream_fault};

/// A multipart form as JSON: each text field as a string, and each file
/// (`file`, or any part with a file name) as `{"filename", "content_type",
/// "bytes"}` (its length), a field sent more than once as a list of them,
/// so that tests can read what the mock received. `Null` when the form
/// cannot be read.
pub(crate) async fn form_as_json(parts: &axum::http::request::Parts, body: Bytes) -> Value {
    use axum::extract::FromRequest as _;
    let request = axum::http::Request::from_parts(parts.clone(), axum::body::Body::from(body));
    let Ok(mut form) = axum::extract::Multipart::from_request(request, &()).await else {
        return Value::Null;
    };
    let mut out = Map::new();
    while let Ok(Some(field)) = form.next_field().await {
        let name = field.name().unwrap_or_default().to_owned();
        let value = if name == "file" || field.file_name().is_some() {
            let filename = field.file_name().map(str::to_owned);
            let content_type = field.content_type().map(str::to_owned);
            let len = field.bytes().await.map(|b| b.len()).unwrap_or(0);
            json!({"filename": filename, "content_type": content_type, "bytes": len})
        } else {
            match field.text().await {
                Ok(text) => Value::String(text),
                Err(_) => continue,
            }
        };
        match out.get_mut(&name) {
            Some(Value::Array(items)) => items.push(value),
            Some(first) => {
                let earlier = first.take();
                *first = Value::Array(vec![earlier, value]);
            }
            None if name.ends_with("[]") => drop(out.insert(name, Value::Array(vec![value]))),
            None => drop(out.insert(name, value)),
        }
    }
    Value::Object(out)
}

/// `POST /v1/audio/speech`: 32 bytes per input character after the
/// format's magic bytes, with the format's media type; with
/// `chunk_delay_ms`, the magic bytes first and the rest after that pause;
/// with `chunks=N`, the magic bytes and then those 32 bytes per character N
/// times, as N chunks (a long recording), `chunk_delay_ms` (or nothing)
/// apart.
pub(crate) fn speech(ctx: &RequestCtx<'_>) -> Response {
    let Some(input) = ctx.body.get("input").and_then(Value::as_str).filter(|i| !i.is_empty()) else {
        return invalid_request("Missing required parameter: 'input'.", Some("input"));
    };
    if !ctx.body.get("voice").is_some_and(|v| v.is_string() || v.is_object()) {
        return invalid_request("Missing required parameter: 'voice'.", Some("voice"));
    }
    let (magic, media_type): (&[u8], &str) = match ctx.body.get("response_format").and_then(Value::as_str) {
        None | Some("mp3") => (b"ID3", "audio/mpeg"),
        Some("opus") => (b"OggS", "audio/opus"),
        Some("wav") => (b"RIFF", "audio/wav"),
        Some("flac") => (b"fLaC", "audio/flac"),
        Some("aac") => (b"\xff\xf1", "audio/aac"),
        Some("pcm") => (b"", "audio/pcm"),
        Some(_) => return invalid_request("Invalid 'response_format'.", Some("response_format")),
    };
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return response;
    }
    let mut audio = magic.to_vec();
    audio.resize(magic.len() + 32 * input.chars().count(), 0x55);
    if let Some(chunks) = ctx.scenario.chunks {
        let rest = Bytes::from(audio.split_off(magic.len()));
        let mut items = vec![crate::sse::SseItem::Raw(Bytes::from(audio))];
        items.extend((0..chunks).map(|_| crate::sse::SseItem::Raw(rest.clone())));
        return crate::sse::stream_response(
            &ctx.state.streams,
            items,
            std::time::Duration::from_millis(ctx.scenario.chunk_delay_ms.unwrap_or(0)),
            media_type,
        );
    }
    if let Some(pause) = ctx.scenario.chunk_delay_ms
        && !magic.is_empty()
    {
        let rest = audio.split_off(magic.len());
        let items = vec![
            crate::sse::SseItem::Raw(Bytes::from(audio)),
            crate::sse::SseItem::Raw(Bytes::from(rest)),
        ];
        return crate::sse::stream_response(
            &ctx.state.streams,
            items,
            std::time::Duration::from_millis(pause),
            media_type,
        );
    }
    ([(CONTENT_TYPE, media_type)], audio).into_response()
}

/// `POST /v1/audio/transcriptions` (or `/translations`): the transcript
/// `transcript of <file name>`, lasting a second per 16,000 bytes, in the
/// format asked for; `usage` in seconds (whisper) or tokens (GPT-4o models).
pub(crate) fn transcription(ctx: &RequestCtx<'_>, translate: bool) -> Response {
    let Some(file) = ctx.body.get("file") else {
        return invalid_request("Missing required parameter: 'file'.", Some("file"));
    };
    if !ctx.body.get("model").is_some_and(Value::is_string) {
        return invalid_request("Missing required parameter: 'model'.", Some("model"));
    }
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return response;
    }
    let bytes = file.get("bytes").and_then(Value::as_u64).unwrap_or(0);
    let seconds = bytes.div_ceil(16_000).max(1);
    let text = format!(
        "transcript of {}",
        file.get("filename").and_then(Value::as_str).unwrap_or("audio")
    );
    let usage = if ctx.model.starts_with("gpt-4o") {
        let (audio, output) = (seconds * 10, text.split_whitespace().count() as u64);
        json!({"type": "tokens", "input_tokens": audio, "output_tokens": output, "total_tokens": audio + output,
            "input_token_details": {"text_tokens": 0, "audio_tokens": audio}})
    } else {
        json!({"type": "duration", "seconds": seconds})
    };
    let text_response = |body: String| ([(CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response();
    match ctx.body.get("response_format").and_then(Value::as_str) {
        None | Some("json") => json_response(StatusCode::OK, &json!({"text": text, "usage": usage})),
        Some("verbose_json") => json_response(
            StatusCode::OK,
            &json!({"task": if translate { "translate" } else { "transcribe" }, "language": "english",
                "duration": seconds as f64, "text": text, "segments": [], "usage": usage}),
        ),
        Some("text") => text_response(format!("{text}\n")),
        Some("srt") => text_response(format!("1\n00:00:00,000 --> 00:00:{seconds:02},000\n{text}\n")),
        Some("vtt") => text_response(format!("WEBVTT\n\n00:00:00.000 --> 00:00:{seconds:02}.000\n{text}\n")),
        Some(_) => invalid_request("Invalid 'response_format'.", Some("response_format")),
    }
}
