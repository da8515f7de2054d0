//! Claude on AWS Bedrock in Anthropic's native format: `POST /model/{modelId}/invoke`
//! and `POST /model/{modelId}/invoke-with-response-stream` with an Anthropic
//! Messages body (without `model` and `stream`, plus `anthropic_version`), and
//! `POST /model/{modelId}/count-tokens` counting such a body.
//!
//! Answers are the Anthropic mock's, with `model` set to the model id; a stream
//! sends each Anthropic event as a `chunk` frame whose payload is
//! `{"bytes": "<base64 of the event JSON>"}`.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::anthropic_mock::{Answer, answer};
use crate::bedrock_mock::{EVENT_STREAM_CONTENT_TYPE, event_frame_raw, exception_frame, validation_error};
use crate::openai_mock::{RequestCtx, json_response, non_stream_fault};
use crate::sse::{PlannedEvent, plan_events, stream_response};

/// The `anthropic_version` Bedrock requires in a Claude request body.
pub(crate) const BEDROCK_ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// Anthropic request keys Bedrock rejects in the body (they come from the path and operation).
const EXTRANEOUS_KEYS: [&str; 2] = ["model", "stream"];

/// The model id without a `::spec` suffix.
fn model_id<'a>(ctx: &'a RequestCtx<'_>) -> &'a str {
    ctx.model.split("::").next().unwrap_or_default()
}

/// Whether an InvokeModel request targets an Anthropic Claude model: a
/// Claude model id or system inference profile, or (the mock's convention,
/// as their ARNs do not name the model) an application inference profile or
/// provisioned model whose id starts with `claude`.
pub(crate) fn is_claude(ctx: &RequestCtx<'_>) -> bool {
    let id = model_id(ctx);
    id.contains("anthropic.")
        || ["application-inference-profile/claude", "provisioned-model/claude"]
            .iter()
            .any(|resource| id.contains(resource))
}

/// Validates a Bedrock Claude body the way Bedrock does, then computes the answer.
fn plan(ctx: &RequestCtx<'_>) -> Result<Answer, Box<Response>> {
    let invalid = |message: &str| Box::new(validation_error(message));
    let obj = ctx
        .body
        .as_object()
        .ok_or_else(|| invalid("Malformed input request: expected a JSON object"))?;
    match obj.get("anthropic_version") {
        None => return Err(invalid("required key [anthropic_version] not found")),
        Some(Value::String(version)) if version == BEDROCK_ANTHROPIC_VERSION => {}
        Some(_) => {
            let message = format!("anthropic_version: must be \"{BEDROCK_ANTHROPIC_VERSION}\"");
            return Err(invalid(&message));
        }
    }
    if let Some(key) = EXTRANEOUS_KEYS.iter().find(|key| obj.contains_key(**key)) {
        return Err(invalid(&format!("extraneous key [{key}] is not permitted")));
    }
    answer(ctx, obj, model_id(ctx)).map_err(|message| invalid(&message))
}

/// Adds a header with a value that is known to be valid.
fn set_header(response: &mut Response, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(HeaderName::from_static(name), value);
    }
}

/// `POST /model/{modelId}/invoke` with an Anthropic Messages body.
pub(crate) fn invoke(ctx: &RequestCtx<'_>) -> Response {
    let answer = match plan(ctx) {
        Ok(answer) => answer,
        Err(response) => return *response,
    };
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return response;
    }
    let body = answer.message();
    let mut response = json_response(StatusCode::OK, &body);
    let output_tokens = body
        .pointer("/usage/output_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    set_header(
        &mut response,
        "x-amzn-bedrock-input-token-count",
        &answer.input_tokens().to_string(),
    );
    set_header(
        &mut response,
        "x-amzn-bedrock-output-token-count",
        &output_tokens.to_string(),
    );
    set_header(&mut response, "x-amzn-bedrock-invocation-latency", "1");
    response
}

/// `POST /model/{modelId}/count-tokens` with `{"input": {"invokeModel":
/// {"body": "<base64 of an InvokeModel body>"}}}`: `{"inputTokens": N}`.
pub(crate) fn count_tokens(ctx: &RequestCtx<'_>) -> Response {
    let Some(encoded) = ctx.body.pointer("/input/invokeModel/body").and_then(Value::as_str) else {
        return validation_error("input.invokeModel.body is required");
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return validation_error("input.invokeModel.body is not base64");
    };
    let Ok(body) = serde_json::from_slice::<Value>(&decoded) else {
        return validation_error("input.invokeModel.body is not a JSON request");
    };
    let inner = RequestCtx {
        state: ctx.state,
        body: &body,
        model: ctx.model.clone(),
        scenario: ctx.scenario,
        azure: ctx.azure,
    };
    match plan(&inner) {
        Ok(answer) => json_response(StatusCode::OK, &json!({"inputTokens": answer.input_tokens()})),
        Err(response) => *response,
    }
}

/// A `chunk` frame carrying `payload` as the base64 `bytes` of a `PayloadPart`.
fn chunk_frame(payload: &[u8]) -> Bytes {
    let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
    event_frame_raw("chunk", Bytes::from(json!({ "bytes": encoded }).to_string()))
}

/// `POST /model/{modelId}/invoke-with-response-stream` with an Anthropic Messages body.
pub(crate) fn invoke_stream(ctx: &RequestCtx<'_>) -> Response {
    if !is_claude(ctx) {
        return validation_error("The mock serves InvokeModelWithResponseStream only for Anthropic Claude models.");
    }
    let answer = match plan(ctx) {
        Ok(answer) => answer,
        Err(response) => return *response,
    };
    if ctx.scenario.refused_in_stream {
        let mut response = crate::bedrock_mock::refused_in_stream(ctx);
        set_header(&mut response, "x-amzn-bedrock-content-type", "application/json");
        return response;
    }
    let (events, output_tokens) = answer.stream_events(ctx.scenario.chunks);
    let events = events
        .into_iter()
        .map(|mut event| {
            if event.name == "message_stop" {
                event.data["amazon-bedrock-invocationMetrics"] = json!({
                    "inputTokenCount": answer.input_tokens(),
                    "outputTokenCount": output_tokens,
                    "invocationLatency": 1,
                    "firstByteLatency": 1,
                });
            }
            PlannedEvent::new(event.role, chunk_frame(event.data.to_string().as_bytes()))
        })
        .collect();
    let malformed = chunk_frame(b"{not json");
    let error = exception_frame("internalServerException", "mock upstream stream error");
    let items = plan_events(events, ctx.scenario, malformed, error);
    let delay = Duration::from_millis(ctx.scenario.chunk_delay_ms.unwrap_or(0));
    let mut response = stream_response(&ctx.state.streams, items, delay, EVENT_STREAM_CONTENT_TYPE);
    set_header(&mut response, "x-amzn-bedrock-content-type", "application/json");
    response
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aws_smithy_eventstream::frame::read_message_from;

    use super::*;
    use crate::scenario::Scenario;
    use crate::server::MockState;

    fn status_and_kind(response: Response) -> (StatusCode, String) {
        let status = response.status();
        let kind = response.headers()["x-amzn-errortype"].to_str().unwrap().to_owned();
        (status, kind)
    }

    #[test]
    fn validates_like_bedrock() {
        let state = Arc::new(MockState::default());
        let scenario = Scenario::default();
        let check = |body: Value| {
            let ctx = RequestCtx {
                state: &state,
                body: &body,
                model: "anthropic.claude-3-haiku-20240307-v1:0::chunks=2".to_owned(),
                scenario: &scenario,
                azure: false,
            };
            plan(&ctx).map(|answer| answer.message())
        };
        let ok = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]});
        let message = check(ok.clone()).unwrap();
        assert_eq!(message["model"], "anthropic.claude-3-haiku-20240307-v1:0");
        assert_eq!(message["content"][0]["text"], "mock reply: hi");
        for (key, value) in [
            ("model", json!("m")),
            ("stream", json!(true)),
            ("anthropic_version", json!("2023-06-01")),
            ("max_tokens", json!(0)),
            ("messages", json!([])),
        ] {
            let mut body = ok.clone();
            body[key] = value;
            let (status, kind) = status_and_kind(*check(body).err().unwrap());
            assert_eq!(
                (status, kind.as_str()),
                (StatusCode::BAD_REQUEST, "ValidationException")
            );
        }
    }

    #[test]
    fn chunk_frames_carry_base64_json() {
        let bytes = chunk_frame(br#"{"type":"ping"}"#);
        let message = read_message_from(&mut bytes.clone()).unwrap();
        let header = |name: &str| {
            let header = message.headers().iter().find(|h| h.name().as_str() == name).unwrap();
            header.value().as_string().unwrap().as_str().to_owned()
        };
        assert_eq!(header(":event-type"), "chunk");
        assert_eq!(header(":message-type"), "event");
        assert_eq!(header(":content-type"), "application/json");
        let payload: Value = serde_json::from_slice(message.payload()).unwrap();
        assert_eq!(payload, json!({"bytes": "eyJ0eXBlIjoicGluZyJ9"}));
    }
}
