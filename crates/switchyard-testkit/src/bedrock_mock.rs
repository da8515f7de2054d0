//! AWS Bedrock Runtime (REST-JSON): `POST /model/{modelId}/converse` and
//! `POST /model/{modelId}/converse-stream` (AWS event-stream frames).

use std::time::Duration;

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue as FrameValue, Message};
use aws_smithy_types::str_bytes::StrBytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::openai_mock::{RequestCtx, json_response, non_stream_fault, word_count};
use crate::reply::{Reply, ReplyBlock, ReplyRequest, ToolChoice, build_reply, cache_tokens, contains_key, json_pieces};
use crate::server::RecordedRequest;
use crate::sse::{EventRole, PlannedEvent, SseItem, content_pieces, plan_events, stream_response};

/// Content type of an AWS event-stream response body.
pub(crate) const EVENT_STREAM_CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

/// Name of the header that carries an AWS JSON error's type.
const ERROR_TYPE_HEADER: &str = "x-amzn-errortype";

/// Builds an AWS JSON-protocol error: `x-amzn-errortype` plus `{"message": ...}`.
pub(crate) fn error_response(status: StatusCode, error_type: &'static str, message: &str) -> Response {
    let mut response = json_response(status, &json!({"message": message}));
    response
        .headers_mut()
        .insert(ERROR_TYPE_HEADER, HeaderValue::from_static(error_type));
    response
}

/// A 400 `ValidationException`.
pub(crate) fn validation_error(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, "ValidationException", message)
}

/// The error produced by a `status=CODE` directive.
pub(crate) fn injected_error(code: u16, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let error_type = match code {
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        408 => "ModelTimeoutException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        424 => "ModelErrorException",
        500..=599 => "InternalServerException",
        _ => "ValidationException",
    };
    // Bedrock's refusal names the caller's account, role and session.
    let message = if code == 403 {
        "User: arn:aws:sts::123456789012:assumed-role/gateway-role/i-0abc is not authorized to perform: \
         bedrock:InvokeModel on resource: arn:aws:bedrock:us-east-1::foundation-model/m"
            .to_owned()
    } else {
        format!("mock upstream error {code}")
    };
    let mut response = error_response(status, error_type, &message);
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// AWS's refusal of a temporary credential that ran out.
pub(crate) fn expired_token() -> Response {
    error_response(
        StatusCode::FORBIDDEN,
        "ExpiredTokenException",
        "The security token included in the request is expired",
    )
}

/// AWS's refusal of a signature made by a clock ahead of its own.
pub(crate) fn skewed_clock() -> Response {
    error_response(
        StatusCode::FORBIDDEN,
        "InvalidSignatureException",
        "Signature not yet current: 20261202T120000Z is still later than 20261202T110500Z (20261202T110000Z + 5 min.)",
    )
}

/// Requires a SigV4 `authorization` header, as the AWS SDK sends.
pub(crate) fn check_auth(request: &RecordedRequest) -> Option<Response> {
    let signed = request
        .header("authorization")
        .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256"));
    if signed {
        return None;
    }
    Some(error_response(
        StatusCode::FORBIDDEN,
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    ))
}

/// Checks the Converse request shape; returns the body object and messages.
fn validate(body: &Value) -> Result<(&Map<String, Value>, &[Value]), String> {
    let obj = body.as_object().ok_or("request body: expected a JSON object")?;
    let messages = match obj.get("messages").and_then(Value::as_array) {
        Some(messages) if !messages.is_empty() => messages,
        _ => return Err("messages: must be a non-empty array".into()),
    };
    let mut document_names = std::collections::HashSet::new();
    for (i, message) in messages.iter().enumerate() {
        if !matches!(message.get("role").and_then(Value::as_str), Some("user" | "assistant")) {
            return Err(format!("messages.{i}.role: must be 'user' or 'assistant'"));
        }
        let Some(content) = message.get("content").and_then(Value::as_array) else {
            return Err(format!("messages.{i}.content: must be an array of content blocks"));
        };
        if content.iter().any(blank_text) {
            return Err(format!(
                "messages.{i}.content: the text field in the ContentBlock object is blank"
            ));
        }
        let results = content
            .iter()
            .filter_map(|b| b.pointer("/toolResult/content").and_then(Value::as_array))
            .flatten();
        for document in content.iter().chain(results).filter_map(|b| b.get("document")) {
            check_document(document, i, &mut document_names)?;
        }
        if message.get("role").and_then(Value::as_str) == Some("assistant")
            && content
                .iter()
                .any(|b| b.get("document").is_some() || b.get("image").is_some())
        {
            return Err(format!(
                "messages.{i}: You can only include images and documents if the role is user."
            ));
        }
        if content.iter().any(|b| b.get("document").is_some()) && !content.iter().any(|b| b.get("text").is_some()) {
            return Err("A text block must be included when using documents.".into());
        }
        // Tool results, with their cache points, make a turn of their own.
        if content.iter().any(|b| b.get("toolResult").is_some())
            && content
                .iter()
                .any(|b| b.get("toolResult").is_none() && b.get("cachePoint").is_none())
        {
            return Err(format!(
                "messages.{i}.content: Conversation blocks and tool result blocks cannot be provided in the same turn."
            ));
        }
        if obj.get("toolConfig").is_none()
            && content
                .iter()
                .any(|b| b.get("toolUse").is_some() || b.get("toolResult").is_some())
        {
            return Err(
                "The toolConfig field must be defined when using toolUse and toolResult content blocks.".into(),
            );
        }
    }
    if messages.first().and_then(|m| m.get("role")).and_then(Value::as_str) != Some("user") {
        return Err("A conversation must start with a user message.".into());
    }
    match obj.get("system") {
        Some(system) if !system.is_array() => {
            return Err("system: must be an array of system content blocks".into());
        }
        Some(system) if system.as_array().is_some_and(|s| s.iter().any(blank_text)) => {
            return Err("system: the text field in the SystemContentBlock object is blank".into());
        }
        _ => {}
    }
    let config = obj.get("inferenceConfig");
    if config
        .and_then(|c| c.get("maxTokens"))
        .is_some_and(|m| m.as_u64().is_none_or(|m| m < 1))
    {
        return Err("inferenceConfig.maxTokens: must be an integer greater than or equal to 1".into());
    }
    if config
        .and_then(|c| c.get("stopSequences"))
        .is_some_and(|s| !s.as_array().is_some_and(|s| s.iter().all(Value::is_string)))
    {
        return Err("inferenceConfig.stopSequences: must be an array of strings".into());
    }
    if obj
        .get("toolConfig")
        .is_some_and(|c| c.get("tools").and_then(Value::as_array).is_none_or(|t| t.is_empty()))
    {
        return Err("toolConfig.tools: must be a non-empty array".into());
    }
    Ok((obj, messages))
}

/// Checks a `document` block as Converse does: a known format, base64
/// bytes, a name of letters, digits, single spaces, hyphens, parentheses
/// and brackets (1–200 characters) not used before in the request, and at
/// most five documents.
fn check_document(
    document: &Value,
    message: usize,
    names: &mut std::collections::HashSet<String>,
) -> Result<(), String> {
    const FORMATS: [&str; 9] = ["pdf", "csv", "doc", "docx", "xls", "xlsx", "html", "txt", "md"];
    let format = document.get("format").and_then(Value::as_str).unwrap_or_default();
    if !FORMATS.contains(&format) {
        return Err(format!("messages.{message}: document format `{format}` is not valid"));
    }
    let bytes = document
        .pointer("/source/bytes")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if bytes.is_empty() || base64::engine::general_purpose::STANDARD.decode(bytes).is_err() {
        return Err(format!(
            "messages.{message}: document source.bytes must be base64 bytes"
        ));
    }
    let name = document.get("name").and_then(Value::as_str).unwrap_or_default();
    let allowed = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '(' | ')' | '[' | ']'));
    if name.is_empty() || name.len() > 200 || !allowed || name.contains("  ") {
        return Err(format!(
            "messages.{message}: document name `{name}` has characters that are not allowed"
        ));
    }
    if !names.insert(name.to_owned()) {
        return Err("Messages can't contain duplicate document names.".into());
    }
    if names.len() > 5 {
        return Err("You can't include more than 5 documents in a request.".into());
    }
    Ok(())
}

/// Whether a block is text with nothing but white space, which Converse
/// refuses.
fn blank_text(block: &Value) -> bool {
    block
        .get("text")
        .and_then(Value::as_str)
        .is_some_and(|t| t.trim().is_empty())
}

/// Concatenated `text` of an array of content blocks.
fn blocks_text(blocks: Option<&Value>) -> String {
    blocks
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// Input tokens: words of the system prompt and message texts, one per image (at least 1).
fn prompt_tokens(obj: &Map<String, Value>, messages: &[Value]) -> usize {
    let system = word_count(&blocks_text(obj.get("system")));
    let messages: usize = messages
        .iter()
        .map(|m| {
            let images = m
                .get("content")
                .and_then(Value::as_array)
                .map_or(0, |blocks| blocks.iter().filter(|b| b.get("image").is_some()).count());
            word_count(&blocks_text(m.get("content"))) + images
        })
        .sum();
    (system + messages).max(1)
}

/// Text of a `toolResult` block: its `text` items, and `json` items as JSON text.
fn tool_result_text(result: &Value) -> String {
    result
        .get("content")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| match (item.get("text"), item.get("json")) {
                    (Some(Value::String(text)), _) => Some(text.clone()),
                    (_, Some(json)) => Some(json.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn reply_request(obj: &Map<String, Value>, messages: &[Value], parallel_tools: bool) -> ReplyRequest {
    let content = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"));
    let results: Vec<String> = content
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| b.get("toolResult"))
                .map(tool_result_text)
                .collect()
        })
        .unwrap_or_default();
    let tool_config = obj.get("toolConfig");
    let tools: Vec<String> = tool_config
        .and_then(|c| c.get("tools"))
        .and_then(Value::as_array)
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t.pointer("/toolSpec/name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let choice = tool_config.and_then(|c| c.get("toolChoice"));
    let tool_choice = if tools.is_empty() {
        ToolChoice::Auto
    } else if let Some(name) = choice.and_then(|c| c.pointer("/tool/name")).and_then(Value::as_str) {
        ToolChoice::Named(name.to_owned())
    } else if choice.and_then(|c| c.get("any")).is_some() {
        ToolChoice::Any
    } else {
        ToolChoice::Auto
    };
    let config = obj.get("inferenceConfig");
    ReplyRequest {
        user_text: blocks_text(content),
        tool_result: (!results.is_empty()).then(|| results.join(" ")),
        tools,
        tool_choice,
        parallel_tools,
        max_tokens: config.and_then(|c| c.get("maxTokens")).and_then(Value::as_u64),
        stop_sequences: config
            .and_then(|c| c.get("stopSequences"))
            .and_then(Value::as_array)
            .map(|s| s.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default(),
    }
}

/// A Converse reply with its token counts.
struct Planned {
    reply: Reply,
    input: usize,
    read: u64,
    write: u64,
    /// Whether the answer starts with a (signed) reasoning block.
    thinking: bool,
}

/// What a Converse request says about Claude's thinking.
fn asked_thinking<'a>(
    obj: &'a Map<String, Value>,
    messages: &'a [Value],
    model: &'a str,
) -> crate::thinking::Asked<'a> {
    let tool_turn = crate::thinking::tool_turn(
        messages,
        |b| b.get("toolResult").is_some(),
        |b| b.get("reasoningContent").is_some(),
        |b| {
            b.pointer("/reasoningContent/reasoningText")
                .map(|t| t.get("signature").and_then(Value::as_str).unwrap_or_default())
        },
    );
    let config = obj.get("inferenceConfig");
    let choice = obj.get("toolConfig").and_then(|c| c.get("toolChoice"));
    crate::thinking::Asked {
        model,
        thinking: obj.get("additionalModelRequestFields").and_then(|f| f.get("thinking")),
        max_tokens: config.and_then(|c| c.get("maxTokens")).and_then(Value::as_u64),
        temperature: config.and_then(|c| c.get("temperature")).and_then(Value::as_f64),
        top_p: config.and_then(|c| c.get("topP")).and_then(Value::as_f64),
        forced: choice.is_some_and(|c| c.get("any").is_some() || c.get("tool").is_some()),
        tool_turn,
    }
}

impl Planned {
    fn usage(&self, output: usize) -> Value {
        json!({
            "inputTokens": self.input,
            "outputTokens": output,
            "totalTokens": self.input + output,
            "cacheReadInputTokens": self.read,
            "cacheWriteInputTokens": self.write,
        })
    }
}

/// The schema of Converse's structured output (`outputConfig.textFormat`),
/// checked as Bedrock checks it.
fn structured_output(obj: &Map<String, Value>) -> Result<Option<Value>, String> {
    let Some(format) = obj.get("outputConfig").and_then(|c| c.get("textFormat")) else {
        return Ok(None);
    };
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Err("outputConfig.textFormat.type: must be json_schema".into());
    }
    let schema = format
        .pointer("/structure/jsonSchema/schema")
        .and_then(Value::as_str)
        .ok_or("outputConfig.textFormat.structure.jsonSchema.schema: must be a string")?;
    let schema: Value = serde_json::from_str(schema)
        .map_err(|e| format!("outputConfig.textFormat.structure.jsonSchema.schema: not valid JSON: {e}"))?;
    Ok(Some(schema))
}

/// A value that follows `schema`: every property of an object, the first
/// of an `enum`, and a placeholder of each type.
fn instance(schema: &Value) -> Value {
    if let Some(first) = schema.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
        return first.clone();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => Value::Object(
            schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|properties| properties.iter().map(|(k, v)| (k.clone(), instance(v))).collect())
                .unwrap_or_default(),
        ),
        Some("array") => json!([]),
        Some("string") => json!("mock"),
        Some("integer" | "number") => json!(0),
        Some("boolean") => json!(false),
        _ => Value::Null,
    }
}

fn plan(ctx: &RequestCtx<'_>) -> Result<Planned, Box<Response>> {
    if ctx.scenario.profile_only {
        return Err(Box::new(validation_error(&format!(
            "Invocation of model ID {} with on-demand throughput isn\u{2019}t supported. Retry your request with the ID or ARN of an inference profile that contains this model.",
            ctx.model
        ))));
    }
    let (obj, messages) = validate(ctx.body).map_err(|message| Box::new(validation_error(&message)))?;
    if let Some(limit) = ctx.scenario.max_output
        && obj
            .get("inferenceConfig")
            .and_then(|c| c.get("maxTokens"))
            .and_then(Value::as_u64)
            .is_some_and(|m| m > limit)
    {
        return Err(Box::new(validation_error(&format!(
            "The maximum tokens you requested exceeds the model limit of {limit}"
        ))));
    }
    let thinking = crate::thinking::check(&asked_thinking(obj, messages, &ctx.model))
        .map_err(|message| Box::new(validation_error(&message)))?;
    // Llama takes no forced tool choice, as on Bedrock.
    if ctx.model.contains("meta.llama")
        && let Some(choice) = obj
            .get("toolConfig")
            .and_then(|c| c.get("toolChoice"))
            .and_then(Value::as_object)
        && let Some(kind) = choice.keys().find(|k| *k != "auto")
    {
        return Err(Box::new(validation_error(&format!(
            "This model doesn't support the toolConfig.toolChoice.{kind} field. Remove toolConfig.toolChoice.{kind} and try again."
        ))));
    }
    let structured = structured_output(obj).map_err(|message| Box::new(validation_error(&message)))?;
    // Llama takes no structured output, as on Bedrock.
    if structured.is_some() && ctx.model.contains("meta.llama") {
        return Err(Box::new(validation_error(
            "This model doesn't support the outputConfig field. Remove outputConfig and try again.",
        )));
    }
    let mut reply = build_reply(
        &reply_request(obj, messages, ctx.scenario.parallel_tools),
        "tooluse_mock_",
    );
    // Structured output: an answer that follows the schema, as text.
    if let Some(schema) = structured {
        reply.blocks = vec![ReplyBlock::Text(instance(&schema).to_string())];
        reply.stop_reason = "end_turn";
        reply.stop_sequence = None;
    }
    if ctx.scenario.content_filter {
        // A guardrail that intervenes answers 200 with its own message.
        reply.blocks = vec![ReplyBlock::Text("Sorry, the model cannot answer this question.".into())];
        reply.stop_reason = "guardrail_intervened";
        reply.stop_sequence = None;
    }
    if ctx.scenario.malformed_tool_use {
        reply.stop_reason = "malformed_tool_use";
        reply.stop_sequence = None;
    }
    let (read, write) = cache_tokens(contains_key(ctx.body, "cachePoint"));
    Ok(Planned {
        reply,
        input: prompt_tokens(obj, messages),
        read,
        write,
        thinking,
    })
}

/// `POST /model/{modelId}/converse`.
pub(crate) fn converse(ctx: &RequestCtx<'_>) -> Response {
    let planned = match plan(ctx) {
        Ok(planned) => planned,
        Err(response) => return *response,
    };
    if let Some(response) = non_stream_fault(ctx.scenario) {
        return response;
    }
    let reasoning = planned.thinking.then(|| {
        json!({"reasoningContent": {"reasoningText": {"text": crate::thinking::TEXT, "signature": crate::thinking::SIGNATURE}}})
    });
    let content: Vec<Value> = reasoning
        .into_iter()
        .chain(planned.reply.blocks.iter().map(|block| match block {
            ReplyBlock::Text(text) => json!({"text": text}),
            ReplyBlock::ToolUse { id, name, input, .. } => {
                json!({"toolUse": {"toolUseId": id, "name": name, "input": input}})
            }
        }))
        .collect();
    let body = json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": planned.reply.stop_reason,
        "usage": planned.usage(planned.reply.output_tokens()),
        "metrics": {"latencyMs": 1},
    });
    json_response(StatusCode::OK, &body)
}

fn string_header(name: &'static str, value: &str) -> Header {
    Header::new(name, FrameValue::String(StrBytes::from(value.to_owned())))
}

/// Encodes one event-stream frame.
fn frame(headers: Vec<Header>, payload: Bytes) -> Bytes {
    let mut buffer = Vec::new();
    write_message_to(&Message::new_from_parts(headers, payload), &mut buffer)
        .expect("mock event-stream frames are small enough to encode");
    Bytes::from(buffer)
}

/// An `event` frame with a raw payload.
pub(crate) fn event_frame_raw(event_type: &str, payload: Bytes) -> Bytes {
    let headers = vec![
        string_header(":event-type", event_type),
        string_header(":content-type", "application/json"),
        string_header(":message-type", "event"),
    ];
    frame(headers, payload)
}

/// An `event` frame with a JSON payload.
fn event_frame(event_type: &str, payload: &Value) -> Bytes {
    event_frame_raw(event_type, Bytes::from(payload.to_string()))
}

/// A stream answered 200 whose only frame refuses the request (Bedrock
/// reports what the model refuses, such as a tool call without its result,
/// in the stream of a request it accepted).
pub(crate) fn refused_in_stream(ctx: &RequestCtx<'_>) -> Response {
    let refusal = exception_frame(
        "validationException",
        "messages.1: Did not find 1 `tool_result` block(s) at the beginning of this message.",
    );
    stream_response(
        &ctx.state.streams,
        vec![SseItem::Raw(refusal)],
        Duration::ZERO,
        EVENT_STREAM_CONTENT_TYPE,
    )
}

/// An `exception` frame, e.g. `throttlingException`.
pub(crate) fn exception_frame(exception_type: &str, message: &str) -> Bytes {
    let headers = vec![
        string_header(":exception-type", exception_type),
        string_header(":content-type", "application/json"),
        string_header(":message-type", "exception"),
    ];
    frame(headers, Bytes::from(json!({"message": message}).to_string()))
}

/// `POST /model/{modelId}/converse-stream`.
pub(crate) fn converse_stream(ctx: &RequestCtx<'_>) -> Response {
    let planned = match plan(ctx) {
        Ok(planned) => planned,
        Err(response) => return *response,
    };
    if ctx.scenario.refused_in_stream {
        return refused_in_stream(ctx);
    }
    let event = |role, name: &str, payload: Value| PlannedEvent::new(role, event_frame(name, &payload));
    let mut events = vec![event(EventRole::Frame, "messageStart", json!({"role": "assistant"}))];
    let mut output_tokens = 0;
    let offset = usize::from(planned.thinking);
    if planned.thinking {
        output_tokens += word_count(crate::thinking::TEXT);
        for piece in content_pieces(crate::thinking::TEXT, None) {
            events.push(event(
                EventRole::Content,
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": piece}}}),
            ));
        }
        events.push(event(
            EventRole::Content,
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": crate::thinking::SIGNATURE}}}),
        ));
        events.push(event(
            EventRole::Frame,
            "contentBlockStop",
            json!({"contentBlockIndex": 0}),
        ));
    }
    for (index, block) in planned.reply.blocks.iter().enumerate() {
        let index = index + offset;
        let deltas: Vec<Value> = match block {
            ReplyBlock::Text(text) => {
                let pieces = content_pieces(text, ctx.scenario.chunks);
                output_tokens += pieces.iter().map(|p| word_count(p)).sum::<usize>();
                pieces.into_iter().map(|text| json!({"text": text})).collect()
            }
            ReplyBlock::ToolUse {
                id, name, input_json, ..
            } => {
                output_tokens += 1;
                events.push(event(
                    EventRole::Frame,
                    "contentBlockStart",
                    json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": id, "name": name}}}),
                ));
                json_pieces(input_json)
                    .into_iter()
                    .map(|piece| json!({"toolUse": {"input": piece}}))
                    .collect()
            }
        };
        for delta in deltas {
            events.push(event(
                EventRole::Content,
                "contentBlockDelta",
                json!({"contentBlockIndex": index, "delta": delta}),
            ));
        }
        events.push(event(
            EventRole::Frame,
            "contentBlockStop",
            json!({"contentBlockIndex": index}),
        ));
    }
    events.push(event(
        EventRole::Stop,
        "messageStop",
        json!({"stopReason": planned.reply.stop_reason}),
    ));
    events.push(event(
        EventRole::Stop,
        "metadata",
        json!({"usage": planned.usage(output_tokens), "metrics": {"latencyMs": 1}}),
    ));
    let malformed = event_frame_raw("contentBlockDelta", Bytes::from_static(b"{not json"));
    let error = exception_frame("internalServerException", "mock upstream stream error");
    let items = plan_events(events, ctx.scenario, malformed, error);
    let delay = Duration::from_millis(ctx.scenario.chunk_delay_ms.unwrap_or(0));
    stream_response(&ctx.state.streams, items, delay, EVENT_STREAM_CONTENT_TYPE)
}

/// Decodes `%XX` escapes in a path segment; `None` if the result is not UTF-8.
pub(crate) fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use aws_smithy_eventstream::frame::read_message_from;

    use super::*;

    #[test]
    fn decodes_model_ids() {
        assert_eq!(
            percent_decode("anthropic.claude-3%3A0%3A%3Astatus%3D429").as_deref(),
            Some("anthropic.claude-3:0::status=429")
        );
        assert_eq!(percent_decode("a%2").as_deref(), Some("a%2"));
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn frames_round_trip() {
        let bytes = event_frame("messageStart", &json!({"role": "assistant"}));
        let message = read_message_from(&mut bytes.clone()).unwrap();
        let event_type = message.headers().iter().find(|h| h.name().as_str() == ":event-type");
        assert_eq!(
            event_type.unwrap().value().as_string().unwrap().as_str(),
            "messageStart"
        );
        assert_eq!(&message.payload()[..], br#"{"role":"assistant"}"#);
    }

    #[test]
    fn tool_results_and_prompt_tokens() {
        let body = json!({
            "system": [{"text": "be brief"}, {"cachePoint": {"type": "default"}}],
            "messages": [
                {"role": "user", "content": [
                    {"text": "hi"},
                    {"image": {"format": "png", "source": {"bytes": "AA=="}}},
                ]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t", "name": "t", "input": {}}}]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "t", "content": [{"text": "sunny "}, {"json": {"t": 1}}]}},
                    {"cachePoint": {"type": "default"}},
                ]},
            ],
            "toolConfig": {"tools": [{"toolSpec": {"name": "t", "inputSchema": {"json": {}}}}]},
        });
        let mut without_tools = body.clone();
        without_tools.as_object_mut().unwrap().remove("toolConfig");
        assert!(validate(&without_tools).unwrap_err().contains("toolConfig"));
        // Tool results and text in one turn are refused, as Converse does.
        let mut mixed = body.clone();
        mixed["messages"][2]["content"]
            .as_array_mut()
            .unwrap()
            .push(json!({"text": "and?"}));
        assert!(
            validate(&mixed)
                .unwrap_err()
                .contains("cannot be provided in the same turn")
        );
        let (obj, messages) = validate(&body).unwrap();
        assert_eq!(prompt_tokens(obj, messages), 4);
        let request = reply_request(obj, messages, false);
        assert_eq!(request.tool_result.as_deref(), Some(r#"sunny {"t":1}"#));
        assert!(contains_key(&body, "cachePoint"));
    }
}
