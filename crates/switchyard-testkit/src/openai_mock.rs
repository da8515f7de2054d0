//! OpenAI-compatible response builders for chat and text completions.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::scenario::Scenario;
use crate::server::MockState;
use crate::sse::{SseItem, content_pieces, reset_response, sse_response};

/// Everything a route handler needs to build its response.
pub(crate) struct RequestCtx<'a> {
    /// Shared mock state (id counter, stream counters).
    pub state: &'a Arc<MockState>,
    /// Parsed request body (`Null` when it was not JSON).
    pub body: &'a Value,
    /// Model name echoed in responses (deployment name for Azure routes).
    pub model: String,
    /// Fault-injection settings for this request.
    pub scenario: &'a Scenario,
    /// Whether the request came in on an Azure-style route.
    pub azure: bool,
}

/// Builds an OpenAI-style error response.
pub(crate) fn error_response(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = json!({
        "error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": code,
        }
    });
    json_response(status, &body)
}

/// A 400 `invalid_request_error` naming the offending parameter.
pub(crate) fn invalid_request(message: &str, param: Option<&str>) -> Response {
    error_response(StatusCode::BAD_REQUEST, message, "invalid_request_error", param, None)
}

/// The error produced by a `status=CODE` directive.
pub(crate) fn injected_error(code: u16, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = if code == 429 {
        "rate_limit_error"
    } else if (500..600).contains(&code) {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let message = format!("mock upstream error {code}");
    let mut response = error_response(status, &message, kind, None, None);
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Serialises `body` as an `application/json` response.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Applies the non-streaming body faults (`reset_after`, `malformed_json`).
pub(crate) fn non_stream_fault(scenario: &Scenario) -> Option<Response> {
    if scenario.reset_after.is_some() {
        return Some(reset_response());
    }
    if scenario.malformed_json {
        let response = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"id": "broken", "choices": ["#))
            .unwrap_or_else(|_| Response::new(Body::empty()));
        return Some(response);
    }
    None
}

/// Current time in Unix seconds.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Number of whitespace-separated words in `text`.
pub(crate) fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Text of a message `content`: a string, or the concatenated `text` parts of an array.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The deterministic assistant reply for a list of chat messages.
fn chat_reply(messages: &[Value]) -> String {
    let user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| content_text(m.get("content")))
        .unwrap_or_default();
    let mut words = vec!["mock", "reply:"];
    words.extend(user.split_whitespace());
    words.join(" ")
}

/// The function the mock "calls" when the request forces tool use.
fn forced_tool(obj: &Map<String, Value>) -> Option<String> {
    let tools = obj.get("tools")?.as_array()?;
    let forced = match obj.get("tool_choice") {
        Some(Value::String(s)) => s == "required",
        Some(Value::Object(_)) => true,
        _ => false,
    };
    if !forced {
        return None;
    }
    let named = obj
        .get("tool_choice")
        .and_then(|c| c.pointer("/function/name"))
        .and_then(Value::as_str);
    let first = tools
        .first()
        .and_then(|t| t.pointer("/function/name"))
        .and_then(Value::as_str);
    named.or(first).map(str::to_owned)
}

fn chat_usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
    })
}

fn text_usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

fn is_streaming(body: &Value) -> bool {
    body.get("stream") == Some(&Value::Bool(true))
}

fn include_usage(body: &Value) -> bool {
    body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true))
}

/// Checks the common `model` requirement; returns the body object.
fn validated_object<'a>(ctx: &RequestCtx<'a>) -> Result<&'a Map<String, Value>, Box<Response>> {
    let Some(obj) = ctx.body.as_object() else {
        return Err(Box::new(invalid_request(
            "We could not parse the JSON body of your request: expected a JSON object.",
            None,
        )));
    };
    if !ctx.azure && !obj.get("model").is_some_and(Value::is_string) {
        return Err(Box::new(invalid_request(
            "you must provide a model parameter",
            Some("model"),
        )));
    }
    Ok(obj)
}

/// Plans a streaming body: `prefix`, `content` and `suffix` events, then
/// `[DONE]`, with `reset_after` and `malformed_sse` applied.
fn plan_stream(prefix: Vec<Value>, content: Vec<Value>, suffix: Vec<Value>, scenario: &Scenario) -> Vec<SseItem> {
    let mut items: Vec<SseItem> = prefix.iter().map(SseItem::json).collect();
    match scenario.reset_after {
        Some(n) => {
            items.extend(content.iter().take(n).map(SseItem::json));
            items.push(SseItem::Abort);
        }
        None => {
            items.extend(content.iter().map(SseItem::json));
            items.extend(suffix.iter().map(SseItem::json));
            items.push(SseItem::done());
        }
    }
    if scenario.malformed_sse && !items.is_empty() {
        items.insert(1, SseItem::malformed());
    }
    items
}

fn stream_delay(scenario: &Scenario) -> Duration {
    Duration::from_millis(scenario.chunk_delay_ms.unwrap_or(0))
}

/// `POST /v1/chat/completions`.
pub(crate) fn chat_completions(ctx: &RequestCtx<'_>) -> Response {
    let obj = match validated_object(ctx) {
        Ok(obj) => obj,
        Err(response) => return *response,
    };
    let messages = match obj.get("messages").and_then(Value::as_array) {
        Some(messages) if !messages.is_empty() => messages,
        _ => {
            return invalid_request("'messages' must be a non-empty array", Some("messages"));
        }
    };
    let prompt_tokens = messages
        .iter()
        .map(|m| word_count(&content_text(m.get("content"))))
        .sum::<usize>()
        .max(1);
    let reply = chat_reply(messages);
    let tool = forced_tool(obj);
    let id = format!("chatcmpl-mock-{}", ctx.state.next_id());
    let created = unix_now();
    if is_streaming(ctx.body) {
        return chat_stream(ctx, &id, created, &reply, tool.as_deref(), prompt_tokens);
    }
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return response;
    }
    let n = obj.get("n").and_then(Value::as_u64).unwrap_or(1).clamp(1, 128);
    let (message, finish, completion_tokens) = match &tool {
        Some(name) => (
            json!({"role": "assistant", "content": null, "tool_calls": [tool_call(name)]}),
            "tool_calls",
            1,
        ),
        None => (
            json!({"role": "assistant", "content": reply, "refusal": null}),
            "stop",
            word_count(&reply),
        ),
    };
    let choices: Vec<Value> = (0..n)
        .map(|index| {
            json!({
                "index": index,
                "message": message,
                "logprobs": null,
                "finish_reason": finish,
                "mock_choice_extension": {"seen": true},
            })
        })
        .collect();
    let body = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": ctx.model,
        "system_fingerprint": "fp_mock",
        "choices": choices,
        "usage": chat_usage(prompt_tokens, completion_tokens),
        "mock_extension": {"echo": true},
    });
    json_response(StatusCode::OK, &body)
}

fn tool_call(name: &str) -> Value {
    json!({
        "id": "call_mock_0",
        "type": "function",
        "function": {"name": name, "arguments": "{\"q\":\"mock\"}"},
    })
}

fn chat_stream(
    ctx: &RequestCtx<'_>,
    id: &str,
    created: u64,
    reply: &str,
    tool: Option<&str>,
    prompt_tokens: usize,
) -> Response {
    let usage_enabled = include_usage(ctx.body);
    let chunk = |delta: Value, finish: Option<&str>| {
        let mut value = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": ctx.model,
            "system_fingerprint": "fp_mock",
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish,
            }],
            "mock_extension": {"echo": true},
        });
        if usage_enabled {
            value["usage"] = Value::Null;
        }
        value
    };
    let (prefix, content, finish, completion_tokens) = match tool {
        Some(name) => {
            let opening = json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "index": 0,
                    "id": "call_mock_0",
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }],
            });
            let arguments = json!({
                "tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":\"mock\"}"}}],
            });
            (chunk(opening, None), vec![chunk(arguments, None)], "tool_calls", 1)
        }
        None => {
            let pieces = content_pieces(reply, ctx.scenario.chunks);
            let tokens = pieces.iter().map(|p| word_count(p)).sum();
            let content = pieces.into_iter().map(|p| chunk(json!({"content": p}), None)).collect();
            (
                chunk(json!({"role": "assistant", "content": ""}), None),
                content,
                "stop",
                tokens,
            )
        }
    };
    let mut suffix = vec![chunk(json!({}), Some(finish))];
    if usage_enabled {
        suffix.push(json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": ctx.model,
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": chat_usage(prompt_tokens, completion_tokens),
            "mock_extension": {"echo": true},
        }));
    }
    let items = plan_stream(vec![prefix], content, suffix, ctx.scenario);
    sse_response(&ctx.state.streams, items, stream_delay(ctx.scenario))
}

/// Prompts of a legacy completions request: a string or an array of strings.
fn prompts(obj: &Map<String, Value>) -> Option<Vec<String>> {
    match obj.get("prompt")? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items.iter().map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}

/// `POST /v1/completions`.
pub(crate) fn completions(ctx: &RequestCtx<'_>) -> Response {
    let obj = match validated_object(ctx) {
        Ok(obj) => obj,
        Err(response) => return *response,
    };
    let Some(prompts) = prompts(obj) else {
        return invalid_request(
            "'prompt' must be a string or a non-empty array of strings",
            Some("prompt"),
        );
    };
    let prompt_tokens = prompts.iter().map(|p| word_count(p)).sum::<usize>().max(1);
    let texts: Vec<String> = prompts.iter().map(|p| format!("mock completion: {p}")).collect();
    let id = format!("cmpl-mock-{}", ctx.state.next_id());
    let created = unix_now();
    if is_streaming(ctx.body) {
        return completions_stream(ctx, &id, created, &texts.join(" "), prompt_tokens);
    }
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return response;
    }
    let completion_tokens = texts.iter().map(|t| word_count(t)).sum();
    let choices: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"text": text, "index": index, "logprobs": null, "finish_reason": "stop"}))
        .collect();
    let body = json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": ctx.model,
        "choices": choices,
        "usage": text_usage(prompt_tokens, completion_tokens),
    });
    json_response(StatusCode::OK, &body)
}

fn completions_stream(ctx: &RequestCtx<'_>, id: &str, created: u64, text: &str, prompt_tokens: usize) -> Response {
    let usage_enabled = include_usage(ctx.body);
    let chunk = |piece: &str, finish: Option<&str>| {
        let mut value = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": ctx.model,
            "choices": [{"text": piece, "index": 0, "logprobs": null, "finish_reason": finish}],
        });
        if usage_enabled {
            value["usage"] = Value::Null;
        }
        value
    };
    let pieces = content_pieces(text, ctx.scenario.chunks);
    let completion_tokens = pieces.iter().map(|p| word_count(p)).sum();
    let content = pieces.iter().map(|p| chunk(p, None)).collect();
    let mut suffix = vec![chunk("", Some("stop"))];
    if usage_enabled {
        suffix.push(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": ctx.model,
            "choices": [],
            "usage": text_usage(prompt_tokens, completion_tokens),
        }));
    }
    let items = plan_stream(Vec::new(), content, suffix, ctx.scenario);
    sse_response(&ctx.state.streams, items, stream_delay(ctx.scenario))
}

/// `GET /v1/models`.
pub(crate) fn models() -> Response {
    let body = json!({
        "object": "list",
        "data": [{
            "id": "mock-model",
            "object": "model",
            "created": 1_700_000_000,
            "owned_by": "mock",
        }],
    });
    json_response(StatusCode::OK, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_uses_last_user_message() {
        let messages = vec![
            json!({"role": "user", "content": "first"}),
            json!({"role": "assistant", "content": "x"}),
            json!({"role": "user", "content": [
                {"type": "text", "text": "hello "},
                {"type": "image_url", "image_url": {"url": "u"}},
                {"type": "text", "text": "there"},
            ]}),
        ];
        assert_eq!(chat_reply(&messages), "mock reply: hello there");
    }

    #[test]
    fn forced_tool_detection() {
        let tools = json!([{"type": "function", "function": {"name": "lookup"}}]);
        let obj = json!({"tools": tools, "tool_choice": "required"});
        assert_eq!(forced_tool(obj.as_object().unwrap()).as_deref(), Some("lookup"));
        let obj = json!({"tools": tools, "tool_choice": "auto"});
        assert_eq!(forced_tool(obj.as_object().unwrap()), None);
    }

    #[test]
    fn plan_applies_reset_and_malformed() {
        let scenario = Scenario::parse("reset_after=1,malformed_sse").unwrap();
        let items = plan_stream(
            vec![json!({"a": 1})],
            vec![json!({"b": 1}), json!({"b": 2})],
            vec![json!({"c": 1})],
            &scenario,
        );
        assert_eq!(items.len(), 4);
        assert!(matches!(items.last(), Some(SseItem::Abort)));
    }
}
