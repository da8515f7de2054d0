//! Anthropic Messages API: `POST /v1/messages` (JSON and server-sent events)
//! and `POST /v1/messages/count_tokens`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::openai_mock::{RequestCtx, json_response, non_stream_fault, word_count};
use crate::reply::{Reply, ReplyBlock, ReplyRequest, ToolChoice, build_reply, cache_tokens, contains_key, json_pieces};
use crate::server::RecordedRequest;
use crate::sse::{EventRole, PlannedEvent, content_pieces, plan_events, sse_response};

/// Builds an Anthropic-style error response.
pub(crate) fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    json_response(status, &body)
}

/// A 400 `invalid_request_error`.
pub(crate) fn invalid_request(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

/// The error produced by a `status=CODE` directive.
pub(crate) fn injected_error(code: u16, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match code {
        429 => "rate_limit_error",
        529 => "overloaded_error",
        401 => "authentication_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    };
    let mut response = error_response(status, kind, &format!("mock upstream error {code}"));
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Requires the `x-api-key` and `anthropic-version` headers.
pub(crate) fn check_auth(request: &RecordedRequest) -> Option<Response> {
    let present = |name: &str| request.header(name).is_some_and(|v| !v.trim().is_empty());
    if !present("x-api-key") {
        return Some(error_response(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required",
        ));
    }
    if !present("anthropic-version") {
        return Some(invalid_request("anthropic-version: header is required"));
    }
    None
}

/// A validated Messages request.
struct Parsed<'a> {
    obj: &'a Map<String, Value>,
    messages: &'a [Value],
}

fn validate(body: &Value, require_max_tokens: bool) -> Result<Parsed<'_>, String> {
    validate_fields(body_with_model(body)?, require_max_tokens)
}

/// Checks that the body is an object with a string `model`.
fn body_with_model(body: &Value) -> Result<&Map<String, Value>, String> {
    let obj = body.as_object().ok_or("request body: expected a JSON object")?;
    if !obj.get("model").is_some_and(Value::is_string) {
        return Err("model: Field required (a string)".into());
    }
    Ok(obj)
}

/// Checks every Messages field but `model`.
fn validate_fields(obj: &Map<String, Value>, require_max_tokens: bool) -> Result<Parsed<'_>, String> {
    if require_max_tokens && obj.get("max_tokens").and_then(Value::as_u64).is_none_or(|m| m < 1) {
        return Err("max_tokens: Field required (an integer greater than or equal to 1)".into());
    }
    let messages = match obj.get("messages").and_then(Value::as_array) {
        Some(messages) if !messages.is_empty() => messages,
        _ => return Err("messages: Field required (a non-empty array)".into()),
    };
    for (i, message) in messages.iter().enumerate() {
        match message.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            _ => return Err(format!("messages.{i}.role: Input should be 'user' or 'assistant'")),
        }
        if !matches!(message.get("content"), Some(Value::String(_) | Value::Array(_))) {
            return Err(format!(
                "messages.{i}.content: Input should be a string or an array of blocks"
            ));
        }
        let blocks = message.get("content").and_then(Value::as_array);
        for (j, block) in blocks.into_iter().flatten().enumerate() {
            let (kind, field) = match block.get("type").and_then(Value::as_str) {
                Some("tool_use") => ("tool_use", "id"),
                Some("tool_result") => ("tool_result", "tool_use_id"),
                _ => continue,
            };
            let id = block.get(field).and_then(Value::as_str).unwrap_or_default();
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(format!(
                    "messages.{i}.content.{j}.{kind}.{field}: String should match pattern '^[a-zA-Z0-9_-]+$'"
                ));
            }
            // As Anthropic: tool blocks need tool definitions, and a cache
            // mark goes on a tool result, not inside its content.
            if obj.get("tools").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                return Err("Requests which include `tool_use` or `tool_result` blocks must define tools.".into());
            }
            let inner = block.get("content").and_then(Value::as_array);
            if inner.into_iter().flatten().any(|b| b.get("cache_control").is_some()) {
                return Err(format!(
                    "messages.{i}.content.{j}.tool_result.content: cache_control may not be specified within `tool_result.content`. Instead, place it directly on `tool_result`."
                ));
            }
        }
    }
    match obj.get("system") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(blocks)) if blocks.iter().all(|b| b.get("text").is_some_and(Value::is_string)) => {}
        Some(_) => return Err("system: Input should be a string or an array of text blocks".into()),
    }
    let sequences = obj.get("stop_sequences");
    if sequences.is_some_and(|s| !s.as_array().is_some_and(|s| s.iter().all(Value::is_string))) {
        return Err("stop_sequences: Input should be an array of strings".into());
    }
    Ok(Parsed { obj, messages })
}

/// A string, or the concatenated `text` of an array of blocks.
fn blocks_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// Input tokens: words of the system prompt and message texts, one per image (at least 1).
fn prompt_tokens(parsed: &Parsed<'_>) -> usize {
    let system = word_count(&blocks_text(parsed.obj.get("system")));
    let messages: usize = parsed
        .messages
        .iter()
        .map(|m| {
            let images = m.get("content").and_then(Value::as_array).map_or(0, |blocks| {
                blocks
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) == Some("image"))
                    .count()
            });
            word_count(&blocks_text(m.get("content"))) + images
        })
        .sum();
    (system + messages).max(1)
}

fn is_cached(obj: &Map<String, Value>) -> bool {
    ["system", "messages", "tools"]
        .iter()
        .filter_map(|key| obj.get(*key))
        .any(|v| contains_key(v, "cache_control"))
}

/// Whether a cache point of the request asks to be kept for an hour
/// (`"cache_control": {"type": "ephemeral", "ttl": "1h"}`).
fn keeps_an_hour(value: &Value) -> bool {
    match value {
        Value::Object(map) => {
            map.get("cache_control")
                .and_then(|c| c.get("ttl"))
                .and_then(Value::as_str)
                == Some("1h")
                || map.values().any(keeps_an_hour)
        }
        Value::Array(items) => items.iter().any(keeps_an_hour),
        _ => false,
    }
}

fn reply_request(parsed: &Parsed<'_>, parallel_tools: bool) -> ReplyRequest {
    let obj = parsed.obj;
    let last_user = parsed
        .messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
    let content = last_user.and_then(|m| m.get("content"));
    let results: Vec<String> = content
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                .map(|b| blocks_text(b.get("content")))
                .collect()
        })
        .unwrap_or_default();
    let tools: Vec<String> = obj
        .get("tools")
        .and_then(Value::as_array)
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let choice = obj.get("tool_choice");
    let tool_choice = match choice.and_then(|c| c.get("type")).and_then(Value::as_str) {
        _ if tools.is_empty() => ToolChoice::Auto,
        Some("any") => ToolChoice::Any,
        Some("tool") => match choice.and_then(|c| c.get("name")).and_then(Value::as_str) {
            Some(name) => ToolChoice::Named(name.to_owned()),
            None => ToolChoice::Any,
        },
        _ => ToolChoice::Auto,
    };
    ReplyRequest {
        user_text: blocks_text(content),
        tool_result: (!results.is_empty()).then(|| results.join(" ")),
        tools,
        tool_choice,
        parallel_tools,
        max_tokens: obj.get("max_tokens").and_then(Value::as_u64),
        stop_sequences: obj
            .get("stop_sequences")
            .and_then(Value::as_array)
            .map(|s| s.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default(),
    }
}

fn content_json(block: &ReplyBlock) -> Value {
    match block {
        ReplyBlock::Text(text) => json!({"type": "text", "text": text}),
        ReplyBlock::ToolUse { id, name, input, .. } => {
            json!({"type": "tool_use", "id": id, "name": name, "input": input})
        }
    }
}

/// Token counts of one response.
struct Usage {
    input: usize,
    read: u64,
    write: u64,
    /// Web searches reported (the `web_searches` directive).
    searches: u64,
    /// Whether the writes were kept for an hour (else five minutes).
    hour: bool,
}

/// One event of an Anthropic message stream, before encoding.
pub(crate) struct StreamEvent {
    /// How the stream fault directives treat the event.
    pub(crate) role: EventRole,
    /// The event name, which is also its `type`.
    pub(crate) name: &'static str,
    /// The event's JSON.
    pub(crate) data: Value,
}

/// The mock's answer to one Messages request, as a JSON body or as stream events.
pub(crate) struct Answer {
    id: String,
    model: String,
    reply: Reply,
    usage: Usage,
    /// Whether the answer starts with a (signed) thinking block.
    thinking: bool,
}

/// What a Messages request says about thinking.
fn asked_thinking<'a>(
    obj: &'a Map<String, Value>,
    messages: &'a [Value],
    model: &'a str,
) -> crate::thinking::Asked<'a> {
    fn kind(block: &Value) -> Option<&str> {
        block.get("type").and_then(Value::as_str)
    }
    let tool_turn = crate::thinking::tool_turn(
        messages,
        |b| kind(b) == Some("tool_result"),
        |b| matches!(kind(b), Some("thinking" | "redacted_thinking")),
        |b| (kind(b) == Some("thinking")).then(|| b.get("signature").and_then(Value::as_str).unwrap_or_default()),
    );
    crate::thinking::Asked {
        model,
        thinking: obj.get("thinking"),
        max_tokens: obj.get("max_tokens").and_then(Value::as_u64),
        temperature: obj.get("temperature").and_then(Value::as_f64),
        top_p: obj.get("top_p").and_then(Value::as_f64),
        forced: matches!(
            obj.get("tool_choice")
                .and_then(|c| c.get("type"))
                .and_then(Value::as_str),
            Some("any" | "tool")
        ),
        tool_turn,
    }
}

/// Validates the Messages fields of `obj` (all but `model`) and computes the
/// answer, which echoes `model`. `Err` carries the validation message.
pub(crate) fn answer(ctx: &RequestCtx<'_>, obj: &Map<String, Value>, model: &str) -> Result<Answer, String> {
    let parsed = validate_fields(obj, true)?;
    let thinking = crate::thinking::check(&asked_thinking(obj, parsed.messages, model))?;
    let reply = build_reply(&reply_request(&parsed, ctx.scenario.parallel_tools), "toolu_mock_");
    let (read, write) = cache_tokens(is_cached(parsed.obj));
    let usage = Usage {
        input: prompt_tokens(&parsed),
        read,
        write,
        searches: ctx.scenario.web_searches.unwrap_or(0),
        hour: ["system", "messages", "tools"]
            .iter()
            .filter_map(|key| obj.get(*key))
            .any(keeps_an_hour),
    };
    Ok(Answer {
        id: format!("msg_mock_{}", ctx.state.next_id()),
        model: model.to_owned(),
        reply,
        usage,
        thinking,
    })
}

impl Answer {
    /// Input tokens of the request (without cached tokens).
    pub(crate) fn input_tokens(&self) -> usize {
        self.usage.input
    }

    fn usage_json(&self, output_tokens: usize) -> Value {
        let mut usage = json!({
            "input_tokens": self.usage.input,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": self.usage.read,
            "cache_creation_input_tokens": self.usage.write,
            "cache_creation": {
                "ephemeral_5m_input_tokens": if self.usage.hour { 0 } else { self.usage.write },
                "ephemeral_1h_input_tokens": if self.usage.hour { self.usage.write } else { 0 },
            },
        });
        if self.usage.searches > 0 {
            usage["server_tool_use"] = json!({"web_search_requests": self.usage.searches});
        }
        usage
    }

    /// The non-streaming response body.
    pub(crate) fn message(&self) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self
                .thinking
                .then(|| json!({"type": "thinking", "thinking": crate::thinking::TEXT, "signature": crate::thinking::SIGNATURE}))
                .into_iter()
                .chain(self.reply.blocks.iter().map(content_json))
                .collect::<Vec<_>>(),
            "stop_reason": self.reply.stop_reason,
            "stop_sequence": self.reply.stop_sequence,
            "usage": self.usage_json(self.reply.output_tokens() + usize::from(self.thinking) * word_count(crate::thinking::TEXT)),
        })
    }

    /// The stream events, text split into `chunks` pieces when set, and the
    /// output tokens reported by `message_delta`.
    pub(crate) fn stream_events(&self, chunks: Option<usize>) -> (Vec<StreamEvent>, usize) {
        let event = |role, name, data| StreamEvent { role, name, data };
        let mut events = vec![
            event(
                EventRole::Frame,
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": self.id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": self.usage_json(1),
                }}),
            ),
            event(EventRole::Frame, "ping", json!({"type": "ping"})),
        ];
        let mut output_tokens = 0;
        let offset = usize::from(self.thinking);
        if self.thinking {
            output_tokens += word_count(crate::thinking::TEXT);
            events.push(event(
                EventRole::Frame,
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
            ));
            for piece in content_pieces(crate::thinking::TEXT, None) {
                events.push(event(
                    EventRole::Content,
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": piece}}),
                ));
            }
            events.push(event(
                EventRole::Content,
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": crate::thinking::SIGNATURE}}),
            ));
            events.push(event(
                EventRole::Frame,
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
        }
        for (index, block) in self.reply.blocks.iter().enumerate() {
            let index = index + offset;
            let (start, deltas) = match block {
                ReplyBlock::Text(text) => {
                    let pieces = content_pieces(text, chunks);
                    output_tokens += pieces.iter().map(|p| word_count(p)).sum::<usize>();
                    let deltas: Vec<Value> = pieces
                        .into_iter()
                        .map(|text| json!({"type": "text_delta", "text": text}))
                        .collect();
                    (json!({"type": "text", "text": ""}), deltas)
                }
                ReplyBlock::ToolUse {
                    id, name, input_json, ..
                } => {
                    output_tokens += 1;
                    let deltas = json_pieces(input_json)
                        .into_iter()
                        .map(|piece| json!({"type": "input_json_delta", "partial_json": piece}))
                        .collect();
                    (json!({"type": "tool_use", "id": id, "name": name, "input": {}}), deltas)
                }
            };
            events.push(event(
                EventRole::Frame,
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": start}),
            ));
            for delta in deltas {
                events.push(event(
                    EventRole::Content,
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": delta}),
                ));
            }
            events.push(event(
                EventRole::Frame,
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
        // As the current API does: cumulative counts, input and cache ones
        // included, but no `cache_creation` breakdown.
        let mut delta_usage = json!({
            "input_tokens": self.usage.input,
            "cache_read_input_tokens": self.usage.read,
            "cache_creation_input_tokens": self.usage.write,
            "output_tokens": output_tokens,
        });
        if self.usage.searches > 0 {
            delta_usage["server_tool_use"] = json!({"web_search_requests": self.usage.searches});
        }
        events.push(event(
            EventRole::Tail,
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.reply.stop_reason, "stop_sequence": self.reply.stop_sequence},
                "usage": delta_usage,
            }),
        ));
        events.push(event(EventRole::Stop, "message_stop", json!({"type": "message_stop"})));
        (events, output_tokens)
    }
}

/// `POST /v1/messages`.
pub(crate) fn messages(ctx: &RequestCtx<'_>) -> Response {
    let answer = match body_with_model(ctx.body).and_then(|obj| answer(ctx, obj, &ctx.model)) {
        Ok(answer) => answer,
        Err(message) => return invalid_request(&message),
    };
    if ctx.body.get("stream") == Some(&Value::Bool(true)) {
        return stream(ctx, &answer);
    }
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return response;
    }
    json_response(StatusCode::OK, &answer.message())
}

/// `POST /v1/messages/count_tokens`.
pub(crate) fn count_tokens(ctx: &RequestCtx<'_>) -> Response {
    let parsed = match validate(ctx.body, false) {
        Ok(parsed) => parsed,
        Err(message) => return invalid_request(&message),
    };
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return response;
    }
    json_response(StatusCode::OK, &json!({"input_tokens": prompt_tokens(&parsed)}))
}

/// One SSE event: its `event:` line (left out with `unnamed_events`, as
/// some Anthropic-compatible proxies send), then its data.
fn sse_event(name: &str, data: &Value, scenario: &crate::Scenario) -> Bytes {
    let data = crate::sse::data_lines(data, scenario.multiline_sse);
    if scenario.unnamed_events {
        Bytes::from(format!("{data}\n"))
    } else {
        Bytes::from(format!("event: {name}\n{data}\n"))
    }
}

fn stream(ctx: &RequestCtx<'_>, answer: &Answer) -> Response {
    let (events, _) = answer.stream_events(ctx.scenario.chunks);
    let events = events
        .into_iter()
        .map(|e| PlannedEvent::new(e.role, sse_event(e.name, &e.data, ctx.scenario)))
        .collect();
    let malformed = Bytes::from_static(b"event: content_block_delta\ndata: {not json}\n\n");
    let error = sse_event(
        "error",
        &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ctx.scenario,
    );
    let items = crate::sse::with_huge_event(plan_events(events, ctx.scenario, malformed, error), ctx.scenario);
    let delay = std::time::Duration::from_millis(ctx.scenario.chunk_delay_ms.unwrap_or(0));
    sse_response(&ctx.state.streams, items, delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_fields() {
        let ok = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        assert!(validate(&ok, true).is_ok());
        let cases = [
            (json!({"max_tokens": 5, "messages": []}), "model"),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
                "max_tokens",
            ),
            (json!({"model": "m", "max_tokens": 0, "messages": []}), "max_tokens"),
            (json!({"model": "m", "max_tokens": 1, "messages": []}), "messages"),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}),
                "messages.0.role",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "system": 3, "messages": [{"role": "user", "content": "x"}]}),
                "system",
            ),
        ];
        for (body, field) in cases {
            let message = validate(&body, true).err().unwrap();
            assert!(message.starts_with(field), "{message} should name {field}");
        }
    }

    #[test]
    fn tokens_text_and_cache() {
        let body = json!({
            "model": "m",
            "max_tokens": 10,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "hello "},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}},
                {"type": "text", "text": "there"},
            ]}],
        });
        let parsed = validate(&body, true).unwrap();
        assert_eq!(prompt_tokens(&parsed), 5);
        assert!(is_cached(parsed.obj));
        assert_eq!(reply_request(&parsed, false).user_text, "hello there");
    }
}
