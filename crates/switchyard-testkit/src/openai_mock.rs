//! OpenAI-compatible response builders for chat and text completions.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::reply::{MOCK_CACHE_READ_TOKENS, contains_key};
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

/// Azure OpenAI's refusal of a prompt its content filter caught: code
/// `content_filter`, no `type`, and the filter's verdict per category in
/// `innererror`.
pub(crate) fn azure_content_filter_error() -> Response {
    let body = json!({
        "error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "type": null,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {
                    "hate": {"filtered": false, "severity": "safe"},
                    "self_harm": {"filtered": false, "severity": "safe"},
                    "sexual": {"filtered": false, "severity": "safe"},
                    "violence": {"filtered": true, "severity": "medium"}
                }
            }
        }
    });
    json_response(StatusCode::BAD_REQUEST, &body)
}

/// OpenRouter's refusal of a prompt its moderation flagged: a 403 whose
/// `code` is the status and whose `metadata` names the reasons.
pub(crate) fn moderation_refusal() -> Response {
    let body = json!({
        "error": {
            "code": 403,
            "message": "openai/gpt-4o requires moderation on OpenRouter. Your input was flagged for \"harassment\". No credits were charged.",
            "metadata": {
                "reasons": ["harassment"],
                "flagged_input": "…",
                "provider_name": "OpenAI",
                "model_slug": "openai/gpt-4o"
            }
        }
    });
    json_response(StatusCode::FORBIDDEN, &body)
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
    // A 403 as OpenAI words one for a model the project may not use.
    let message = if code == 403 {
        "Project `proj_mock` does not have access to this model.".to_owned()
    } else if code == 429 {
        // OpenAI's words, which name the organisation and its limits.
        "Rate limit reached for gpt-4o in organization org-mock on tokens per min (TPM): \
         Limit 30000, Used 29500, Requested 1200. Please try again in 1.4s."
            .to_owned()
    } else {
        format!("mock upstream error {code}")
    };
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

/// Applies the non-streaming body faults (`reset_after`, `malformed_json`,
/// `wrong_shape`).
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
    if scenario.wrong_shape {
        let body = json!({"id": "odd", "object": "chat.completion",
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
        return Some(json_response(StatusCode::OK, &body));
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

/// The functions the mock "calls" when the request forces tool use: one, or
/// two with `parallel` (the first two tools, or the named tool twice).
fn forced_tools(obj: &Map<String, Value>, parallel: bool) -> Vec<String> {
    let Some(tools) = obj.get("tools").and_then(Value::as_array) else {
        return Vec::new();
    };
    let forced = match obj.get("tool_choice") {
        Some(Value::String(s)) => s == "required",
        Some(Value::Object(_)) => true,
        _ => false,
    };
    if !forced {
        return Vec::new();
    }
    let named = obj
        .get("tool_choice")
        .and_then(|c| c.pointer("/function/name"))
        .and_then(Value::as_str);
    let name_at = |i: usize| {
        tools
            .get(i)
            .and_then(|t| t.pointer("/function/name"))
            .and_then(Value::as_str)
    };
    let Some(first) = named.or(name_at(0)) else {
        return Vec::new();
    };
    if !parallel {
        return vec![first.to_owned()];
    }
    let second = if named.is_some() {
        first
    } else {
        name_at(1).unwrap_or(first)
    };
    vec![first.to_owned(), second.to_owned()]
}

/// Prompt tokens served from cache: [`MOCK_CACHE_READ_TOKENS`] when a message
/// or tool carries `cache_control`, else 0.
fn cached_tokens(obj: &Map<String, Value>) -> u64 {
    let marked = ["messages", "tools"]
        .iter()
        .filter_map(|key| obj.get(*key))
        .any(|v| contains_key(v, "cache_control"));
    if marked { MOCK_CACHE_READ_TOKENS } else { 0 }
}

fn chat_usage(prompt: usize, completion: usize, cached: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
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
    if ctx.scenario.no_tools && obj.get("tools").is_some_and(|t| !t.is_null()) {
        // Ollama's answer for a model without tool calling.
        let model = obj.get("model").and_then(Value::as_str).unwrap_or("model");
        return Err(Box::new(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"message": format!("{model} does not support tools"), "type": "api_error", "param": null, "code": null}}),
        )));
    }
    if ctx.scenario.refuses_stream_options
        && let Some(options) = obj.get("stream_options")
    {
        // Mistral's answer to a field it does not know.
        return Err(Box::new(json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "object": "error",
                "message": {"detail": [{
                    "type": "extra_forbidden",
                    "loc": ["body", "stream_options"],
                    "msg": "Extra inputs are not permitted",
                    "input": options,
                }]},
                "type": "invalid_request_error",
                "param": null,
                "code": null,
            }),
        )));
    }
    Ok(obj)
}

/// Plans a streaming body: `prefix`, `content` and `suffix` events, then
/// `[DONE]`, with `reset_after`, `error_event` and `malformed_sse` applied.
fn plan_stream(prefix: Vec<Value>, content: Vec<Value>, suffix: Vec<Value>, scenario: &Scenario) -> Vec<SseItem> {
    let json = |value: &Value| SseItem::json_lines(value, scenario.multiline_sse);
    if scenario.refused_in_stream {
        return vec![
            json(&serde_json::json!({"object": "error",
                "message": "best_of must be 1 when using greedy sampling. Got 2.",
                "type": "BadRequestError", "param": null, "code": 400})),
            SseItem::done(),
        ];
    }
    let mut items: Vec<SseItem> = prefix.iter().map(json).collect();
    match scenario.reset_after {
        _ if scenario.error_event => {
            // OpenAI reports a failure after the stream started as an
            // `error` object in place of a chunk, then ends the stream.
            items.extend(content.iter().take(1).map(json));
            items.push(json(&serde_json::json!({"error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error", "param": null, "code": null}})));
        }
        Some(n) => {
            items.extend(content.iter().take(n).map(json));
            items.push(SseItem::Abort);
        }
        None => {
            items.extend(content.iter().map(json));
            items.extend(suffix.iter().map(json));
            items.push(SseItem::done());
        }
    }
    if scenario.malformed_sse && !items.is_empty() {
        items.insert(1, SseItem::malformed());
    }
    if scenario.foreign_chunk && items.len() > 2 {
        items.insert(2, json(&serde_json::json!({"object": "status", "status": "busy"})));
    }
    crate::sse::with_first_event_pause(crate::sse::with_huge_event(items, scenario), scenario)
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
    // OpenAI takes only text in tool messages.
    if let Some(i) = messages.iter().position(|m| {
        m.get("role").and_then(Value::as_str) == Some("tool")
            && m.get("content").and_then(Value::as_array).is_some_and(|parts| {
                parts
                    .iter()
                    .any(|p| p.get("type").and_then(Value::as_str) != Some("text"))
            })
    }) {
        return invalid_request(
            &format!(
                "Invalid 'messages[{i}]'. Image URLs are only allowed for messages with role 'user', but this message with role 'tool' contains an image URL."
            ),
            Some(&format!("messages[{i}]")),
        );
    }
    if ctx.scenario.refuses_reasoning
        && let Some((i, field)) = messages.iter().enumerate().find_map(|(i, m)| {
            ["reasoning_content", "thinking_blocks"]
                .into_iter()
                .find(|k| m.get(*k).is_some())
                .map(|k| (i, k))
        })
    {
        return invalid_request(
            &format!(
                "'messages.{i}' : for 'role:assistant' the following must be satisfied[('messages.{i}' : property '{field}' is unsupported)]"
            ),
            None,
        );
    }
    if ctx.scenario.reasons
        && messages.iter().any(|m| {
            m.get("tool_calls")
                .is_some_and(|c| c.as_array().is_some_and(|c| !c.is_empty()))
                && m.get("reasoning_content")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
        })
    {
        return invalid_request(
            "The `reasoning_content` in the thinking mode must be passed back to the API.",
            None,
        );
    }
    if ctx.scenario.signed_calls
        && let Some(position) = unsigned_call(messages)
    {
        return invalid_request(
            &format!("Function call is missing a thought_signature in functionCall parts, position {position}."),
            None,
        );
    }
    let reply = chat_reply(messages);
    let tools = forced_tools(obj, ctx.scenario.parallel_tools);
    let cached = cached_tokens(obj);
    let id = format!("chatcmpl-mock-{}", ctx.state.next_id());
    let created = unix_now();
    if is_streaming(ctx.body) && ctx.scenario.json_error {
        let error = json!({"error": {"message": "this model cannot stream", "type": "invalid_request_error",
            "param": "stream", "code": null}});
        return json_response(StatusCode::OK, &error);
    }
    if is_streaming(ctx.body) && !ctx.scenario.no_stream {
        return chat_stream(ctx, &id, created, &reply, &tools, (prompt_tokens, cached));
    }
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return response;
    }
    let n = obj.get("n").and_then(Value::as_u64).unwrap_or(1).clamp(1, 128);
    let (message, finish, completion_tokens) = match tools.len() {
        0 => (
            json!({"role": "assistant", "content": reply, "refusal": null}),
            "stop",
            word_count(&reply),
        ),
        calls => {
            let tool_calls: Vec<Value> = tools
                .iter()
                .enumerate()
                .map(|(i, name)| signed(tool_call(i, name), ctx.scenario))
                .collect();
            (
                json!({"role": "assistant", "content": null, "tool_calls": tool_calls}),
                "tool_calls",
                calls,
            )
        }
    };
    let mut message = message;
    if ctx.scenario.reasons {
        message["reasoning_content"] = json!(REASONING);
    }
    let finish = if ctx.scenario.engine_abort { "abort" } else { finish };
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
    let mut body = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": ctx.model,
        "system_fingerprint": "fp_mock",
        "choices": choices,
        "usage": chat_usage(prompt_tokens, completion_tokens, cached),
        "mock_extension": {"echo": true},
    });
    if ctx.scenario.no_usage
        && let Some(body) = body.as_object_mut()
    {
        body.remove("usage");
    }
    if ctx.scenario.partial_usage
        && let Some(usage) = body.get_mut("usage").and_then(Value::as_object_mut)
    {
        usage.remove("total_tokens");
    }
    json_response(StatusCode::OK, &body)
}

/// The reasoning a `reasons` mock answers with first.
const REASONING: &str = "mock reasoning first";

/// Arguments of every mock tool call.
const TOOL_ARGUMENTS: &str = "{\"q\":\"mock\"}";

fn tool_call(index: usize, name: &str) -> Value {
    json!({
        "id": format!("call_mock_{index}"),
        "type": "function",
        "function": {"name": name, "arguments": TOOL_ARGUMENTS},
    })
}

/// The thought signature a `signed_calls` mock gives the call with `id`.
fn signature(id: &str) -> String {
    format!("sig-{id}")
}

/// `call` with its thought signature under `signed_calls`.
fn signed(mut call: Value, scenario: &Scenario) -> Value {
    if scenario.signed_calls
        && let Some(id) = call.get("id").and_then(Value::as_str)
    {
        call["extra_content"] = json!({"google": {"thought_signature": signature(id)}});
    }
    call
}

/// The index of the first message sending back one of this mock's calls
/// without the signature it came with.
fn unsigned_call(messages: &[Value]) -> Option<usize> {
    messages.iter().position(|message| {
        let calls = message.get("tool_calls").and_then(Value::as_array);
        calls.into_iter().flatten().any(|call| {
            let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
            let sent = call
                .pointer("/extra_content/google/thought_signature")
                .and_then(Value::as_str);
            id.starts_with("call_mock_") && sent != Some(signature(id).as_str())
        })
    })
}

/// `tokens` is `(prompt_tokens, cached_tokens)`.
fn chat_stream(
    ctx: &RequestCtx<'_>,
    id: &str,
    created: u64,
    reply: &str,
    tools: &[String],
    tokens: (usize, u64),
) -> Response {
    let (prompt_tokens, cached) = tokens;
    let usage_enabled = (include_usage(ctx.body) || ctx.scenario.refuses_stream_options) && !ctx.scenario.no_usage;
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
    let (prefix, content, finish, completion_tokens) = match tools.len() {
        0 => {
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
        calls => {
            let openings: Vec<Value> = tools
                .iter()
                .enumerate()
                .map(|(index, name)| {
                    let call = json!({
                        "index": index,
                        "id": format!("call_mock_{index}"),
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    });
                    signed(call, ctx.scenario)
                })
                .collect();
            let opening = json!({"role": "assistant", "content": null, "tool_calls": openings});
            let arguments = (0..calls)
                .map(|index| {
                    let call = json!({"index": index, "function": {"arguments": TOOL_ARGUMENTS}});
                    chunk(json!({"tool_calls": [call]}), None)
                })
                .collect();
            (chunk(opening, None), arguments, "tool_calls", calls)
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
            "usage": chat_usage(prompt_tokens, completion_tokens, cached),
            "mock_extension": {"echo": true},
        }));
    }
    let mut prefix = vec![prefix];
    if ctx.scenario.reasons {
        prefix.insert(
            0,
            chunk(json!({"role": "assistant", "reasoning_content": REASONING}), None),
        );
    }
    let items = plan_stream(prefix, content, suffix, ctx.scenario);
    if ctx.scenario.json_labelled {
        return crate::sse::stream_response(
            &ctx.state.streams,
            items,
            stream_delay(ctx.scenario),
            "application/json",
        );
    }
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
    // `echo: true` puts the prompt before each answer, as OpenAI does.
    let echo = obj.get("echo") == Some(&Value::Bool(true));
    let texts: Vec<String> = prompts
        .iter()
        .map(|p| {
            let answer = format!("mock completion: {p}");
            if echo { format!("{p}{answer}") } else { answer }
        })
        .collect();
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
    let mut body = body;
    if ctx.scenario.no_usage
        && let Some(body) = body.as_object_mut()
    {
        body.remove("usage");
    }
    json_response(StatusCode::OK, &body)
}

fn completions_stream(ctx: &RequestCtx<'_>, id: &str, created: u64, text: &str, prompt_tokens: usize) -> Response {
    let usage_enabled = (include_usage(ctx.body) || ctx.scenario.refuses_stream_options) && !ctx.scenario.no_usage;
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
        let tools = json!([
            {"type": "function", "function": {"name": "lookup"}},
            {"type": "function", "function": {"name": "clock"}},
        ]);
        let obj = json!({"tools": tools, "tool_choice": "required"});
        assert_eq!(forced_tools(obj.as_object().unwrap(), false), ["lookup"]);
        assert_eq!(forced_tools(obj.as_object().unwrap(), true), ["lookup", "clock"]);
        let obj = json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "clock"}}});
        assert_eq!(forced_tools(obj.as_object().unwrap(), true), ["clock", "clock"]);
        let obj = json!({"tools": tools, "tool_choice": "auto"});
        assert!(forced_tools(obj.as_object().unwrap(), false).is_empty());
    }

    #[test]
    fn cache_control_reports_cached_tokens() {
        let marked = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}},
        ]}]});
        assert_eq!(cached_tokens(marked.as_object().unwrap()), MOCK_CACHE_READ_TOKENS);
        let plain = json!({"messages": [{"role": "user", "content": "cache_control"}]});
        assert_eq!(cached_tokens(plain.as_object().unwrap()), 0);
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
