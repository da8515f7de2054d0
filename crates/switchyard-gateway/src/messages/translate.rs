//! Anthropic-format requests → OpenAI chat requests, and OpenAI chat responses →
//! Anthropic-format responses, for serving `/v1/messages` from OpenAI-style
//! deployments.

use serde_json::{Value, json};
use switchyard_api::anthropic::{Content, ContentBlock, MessageRole, MessagesRequest, MessagesResponse, MessagesUsage};
use switchyard_api::{
    ChatCompletionRequest, ChatCompletionResponse, ChatMessage, ContentPart, Extra, FunctionCall, MessageContent, Role,
    StreamOptions, ToolCall, Usage,
};

use crate::error::ApiError;

/// OpenAI's cap on a function name's length; Anthropic allows longer ones
/// (MCP tools often need them).
const OPENAI_NAME_MAX: usize = 64;

/// A 32-bit FNV-1a hash, stable across runs and platforms.
fn fnv32(text: &str) -> u32 {
    text.bytes()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The name a tool goes by upstream: itself when OpenAI takes it, else its
/// first 55 bytes, `_` and a hash of the whole (the same every time, so
/// tool definitions and earlier calls agree).
pub fn openai_tool_name(name: &str) -> std::borrow::Cow<'_, str> {
    if name.len() <= OPENAI_NAME_MAX {
        return name.into();
    }
    let mut cut = 55;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{:08x}", &name[..cut], fnv32(name)).into()
}

/// The request's tools whose names were shortened for the upstream: each
/// shortened name and the tool's own, to restore in the answer. Refuses a
/// request where two tools would go upstream under the same name (a long
/// name whose shortened form is another tool's name), since their calls
/// could not be told apart.
pub fn shortened_tool_names(req: &MessagesRequest) -> Result<Vec<(String, String)>, ApiError> {
    // Anthropic's own tools (an MCP toolset has no name) never go to an
    // OpenAI-format model under a name.
    let tools: Vec<_> = req
        .tools
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|t| {
            t.extra
                .get("type")
                .and_then(Value::as_str)
                .is_none_or(|k| k == "custom")
        })
        .collect();
    let mut upstream: Vec<std::borrow::Cow<'_, str>> = tools.iter().map(|t| openai_tool_name(&t.name)).collect();
    let shortened = tools
        .iter()
        .zip(&upstream)
        .filter(|(t, _)| t.name.len() > OPENAI_NAME_MAX)
        .map(|(t, short)| (short.clone().into_owned(), t.name.clone()))
        .collect();
    upstream.sort_unstable();
    if let Some(pair) = upstream.windows(2).find(|w| w[0] == w[1]) {
        return Err(invalid(
            format!(
                "tool names must be unique: two tools are named `{}` (names longer than {OPENAI_NAME_MAX} characters are sent to OpenAI-format models as their first 55 bytes, `_` and a hash)",
                pair[0]
            ),
            "tools",
        ));
    }
    Ok(shortened)
}

/// The id of a translated answer, in Anthropic's form (`msg_…`): the
/// upstream's id without its `chatcmpl-` prefix, so the answer and its
/// stream events carry the same id and it can be traced upstream. An
/// answer without an id (some OpenAI-compatible servers) gets a random one.
pub fn message_id(upstream: &str) -> String {
    if upstream.trim().is_empty() {
        return format!("msg_{:016x}", fastrand::u64(..));
    }
    if upstream.starts_with("msg_") {
        return upstream.to_owned();
    }
    format!("msg_{}", upstream.strip_prefix("chatcmpl-").unwrap_or(upstream))
}

/// An id for the `position`th block of the answer `upstream_id`, for a tool
/// call the upstream sent without one (random when the answer has no id).
pub fn tool_use_id(upstream_id: &str, position: usize) -> String {
    if upstream_id.trim().is_empty() {
        // Nothing to tell this answer's calls from another's: ids unique
        // across turns (Anthropic refuses a conversation that repeats one).
        return format!("toolu_{:016x}_{position}", fastrand::u64(..));
    }
    let message = message_id(upstream_id);
    format!("toolu_{}_{position}", message.strip_prefix("msg_").unwrap_or(&message))
}

/// What joins a tool call's id and Gemini's thought signature in a
/// `tool_use` block's id: Anthropic clients keep a block's id, not fields
/// they do not know, and Gemini refuses a call sent back unsigned.
const SIGNATURE_MARK: &str = "__thought__";

/// The thought signature of a chat tool call's `extra_content`.
pub fn thought_signature(extra_content: Option<&Value>) -> Option<&str> {
    extra_content?.pointer("/google/thought_signature")?.as_str()
}

/// The `tool_use` id of a call `id`, with its thought `signature` if it
/// has one.
pub fn signed_tool_use_id(id: String, signature: Option<&str>) -> String {
    match signature {
        Some(signature) if !signature.is_empty() => format!("{id}{SIGNATURE_MARK}{signature}"),
        _ => id,
    }
}

/// A `tool_use` id split into the call's own id and its thought signature.
fn unsigned_tool_use_id(id: &str) -> (&str, Option<&str>) {
    match id.split_once(SIGNATURE_MARK) {
        Some((id, signature)) if !signature.is_empty() => (id, Some(signature)),
        _ => (id, None),
    }
}

/// A tool name from the upstream, restored to the client's own.
pub fn original_tool_name(names: &[(String, String)], name: String) -> String {
    names
        .iter()
        .find(|(short, _)| *short == name)
        .map_or(name, |(_, original)| original.clone())
}

fn invalid(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::InvalidField {
        param: Some(param.to_owned()),
        message: message.into(),
    }
}

fn image_part(source: &Value, param: &str) -> Result<ContentPart, ApiError> {
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source.get("media_type").and_then(Value::as_str).unwrap_or("image/png");
            let data = source.get("data").and_then(Value::as_str).unwrap_or_default();
            format!("data:{media};base64,{data}")
        }
        Some("url") => source.get("url").and_then(Value::as_str).unwrap_or_default().to_owned(),
        _ => return Err(invalid("image source must be of type base64 or url", param)),
    };
    let mut extra = Extra::new();
    extra.insert("image_url".into(), json!({"url": url}));
    Ok(ContentPart {
        kind: "image_url".into(),
        text: None,
        extra,
    })
}

/// An Anthropic `document` block as OpenAI content: plain text (or a
/// document given as content blocks) as text, titled when it has a title;
/// a base64 PDF as a `file` part. A PDF by URL cannot be sent that way.
fn document_part(block: &ContentBlock, param: &str) -> Result<ContentPart, ApiError> {
    let source = block.source.as_ref().unwrap_or(&Value::Null);
    let title = block.extra.get("title").and_then(Value::as_str);
    let titled = |text: &str| match title {
        Some(title) => text_part(&format!("{title}\n\n{text}")),
        None => text_part(text),
    };
    match (
        source.get("type").and_then(Value::as_str),
        source.get("media_type").and_then(Value::as_str),
    ) {
        (Some("text"), _) => Ok(titled(source.get("data").and_then(Value::as_str).unwrap_or_default())),
        (Some("content"), _) => {
            let content: Option<Content> = source
                .get("content")
                .cloned()
                .and_then(|c| serde_json::from_value(c).ok());
            Ok(titled(&content.map(|c| c.text()).unwrap_or_default()))
        }
        (Some("base64"), Some("application/pdf")) => {
            let data = source.get("data").and_then(Value::as_str).unwrap_or_default();
            let mut extra = Extra::new();
            extra.insert(
                "file".into(),
                json!({"filename": title.unwrap_or("document.pdf"), "file_data": format!("data:application/pdf;base64,{data}")}),
            );
            Ok(ContentPart {
                kind: "file".into(),
                text: None,
                extra,
            })
        }
        _ => Err(invalid(
            "documents for this model must be text, content blocks or a base64 PDF",
            param,
        )),
    }
}

fn message(role: Role, parts: Vec<ContentPart>) -> ChatMessage {
    let content = match parts.as_slice() {
        [only] if only.kind == "text" => MessageContent::Text(only.text.clone().unwrap_or_default()),
        _ => MessageContent::Parts(parts),
    };
    ChatMessage::with_content(role, content)
}

fn text_part(text: &str) -> ContentPart {
    ContentPart {
        kind: "text".into(),
        text: Some(text.to_owned()),
        extra: Extra::new(),
    }
}

/// Converts one Anthropic message into OpenAI messages (tool results become `tool` messages).
fn convert_message(
    role: MessageRole,
    content: &Content,
    index: usize,
    out: &mut Vec<ChatMessage>,
) -> Result<(), ApiError> {
    let blocks = content.clone().into_blocks();
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    let mut reasoning = String::new();
    for (j, block) in blocks.iter().enumerate() {
        let param = format!("messages[{index}].content[{j}]");
        match block.kind.as_str() {
            "text" => parts.push(text_part(block.text.as_deref().unwrap_or_default())),
            "image" => parts.push(image_part(block.source.as_ref().unwrap_or(&Value::Null), &param)?),
            "document" => parts.push(document_part(block, &param)?),
            "tool_use" => {
                let (id, signature) = unsigned_tool_use_id(block.id.as_deref().unwrap_or_default());
                let mut extra = Extra::new();
                if let Some(signature) = signature {
                    extra.insert(
                        "extra_content".into(),
                        json!({"google": {"thought_signature": signature}}),
                    );
                }
                calls.push(ToolCall {
                    id: id.to_owned(),
                    kind: "function".into(),
                    function: Some(FunctionCall {
                        name: openai_tool_name(block.name.as_deref().unwrap_or_default()).into_owned(),
                        arguments: block.input.as_ref().map_or_else(|| "{}".to_owned(), Value::to_string),
                    }),
                    extra,
                });
            }
            "tool_result" => {
                // OpenAI tool messages hold text only: images a tool returned
                // go to the user message that follows the tool messages.
                let mut texts = Vec::new();
                let nested = block.content.clone().map(Content::into_blocks).unwrap_or_default();
                for (k, inner) in nested.iter().enumerate() {
                    let param = format!("{param}.content[{k}]");
                    match inner.kind.as_str() {
                        "text" => texts.push(inner.text.clone().unwrap_or_default()),
                        "image" => {
                            parts.push(image_part(inner.source.as_ref().unwrap_or(&Value::Null), &param)?);
                            texts.push("(image in the next message)".to_owned());
                        }
                        // A text document stays in the result; a PDF goes
                        // with the images.
                        "document" => {
                            let part = document_part(inner, &param)?;
                            if part.kind == "text" {
                                texts.push(part.text.unwrap_or_default());
                            } else {
                                parts.push(part);
                                texts.push("(document in the next message)".to_owned());
                            }
                        }
                        other => {
                            return Err(invalid(
                                format!("tool results with `{other}` content are not supported here"),
                                &param,
                            ));
                        }
                    }
                }
                let mut text = texts.join("\n");
                if block.is_error == Some(true) {
                    text = format!("Error: {text}");
                }
                out.push(ChatMessage {
                    role: Role::Tool,
                    content: Some(MessageContent::Text(text)),
                    name: None,
                    tool_calls: None,
                    tool_call_id: block
                        .tool_use_id
                        .as_deref()
                        .map(|id| unsigned_tool_use_id(id).0.to_owned()),
                    extra: Extra::new(),
                });
            }
            // Earlier thinking goes back as OpenAI-compatible servers take
            // reasoning (DeepSeek and Kimi need it on a turn that called
            // tools); a redacted block has no text to give.
            "thinking" => reasoning.push_str(block.extra.get("thinking").and_then(Value::as_str).unwrap_or_default()),
            "redacted_thinking" => {}
            other => {
                return Err(invalid(
                    format!("content blocks of type `{other}` are not supported here"),
                    &param,
                ));
            }
        }
    }
    match role {
        MessageRole::User if !parts.is_empty() => out.push(message(Role::User, parts)),
        MessageRole::User => {}
        MessageRole::Assistant => {
            if parts.is_empty() && calls.is_empty() {
                return Ok(());
            }
            let text: String = parts.iter().filter_map(|p| p.text.as_deref()).collect();
            let mut extra = Extra::new();
            if !reasoning.is_empty() {
                extra.insert("reasoning_content".into(), Value::String(reasoning));
            }
            out.push(ChatMessage {
                role: Role::Assistant,
                content: (!text.is_empty()).then_some(MessageContent::Text(text)),
                name: None,
                tool_calls: (!calls.is_empty()).then_some(calls),
                tool_call_id: None,
                extra,
            });
        }
    }
    Ok(())
}

/// Whether OpenAI's strict mode takes `schema`: every object lists all its
/// properties as `required` and sets `additionalProperties: false`, in
/// nested schemas too (OpenAI refuses a strict schema that does not).
fn fits_strict(schema: &Value, depth: usize) -> bool {
    let Value::Object(map) = schema else {
        return true;
    };
    if depth > 64 {
        return false;
    }
    let properties = map.get("properties").and_then(Value::as_object);
    let is_object = map.get("type").and_then(Value::as_str) == Some("object") || properties.is_some();
    if is_object {
        let required: Vec<&str> = map
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let closed = map.get("additionalProperties") == Some(&Value::Bool(false));
        if !closed || properties.is_some_and(|p| p.keys().any(|k| !required.contains(&k.as_str()))) {
            return false;
        }
    }
    let nested = |name: &str| map.get(name);
    properties.is_none_or(|p| p.values().all(|v| fits_strict(v, depth + 1)))
        && nested("items").is_none_or(|v| fits_strict(v, depth + 1))
        && ["anyOf", "allOf", "oneOf"].iter().all(|k| {
            nested(k)
                .and_then(Value::as_array)
                .is_none_or(|a| a.iter().all(|v| fits_strict(v, depth + 1)))
        })
        && ["$defs", "definitions"].iter().all(|k| {
            nested(k)
                .and_then(Value::as_object)
                .is_none_or(|d| d.values().all(|v| fits_strict(v, depth + 1)))
        })
}

/// Builds the OpenAI chat request for an Anthropic-format request.
pub fn to_chat_request(req: &MessagesRequest) -> Result<ChatCompletionRequest, ApiError> {
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        messages.push(ChatMessage::text(Role::System, system.text()));
    }
    for (i, m) in req.messages.iter().enumerate() {
        convert_message(m.role, &m.content, i, &mut messages)?;
    }
    let mut extra = Extra::new();
    if let Some(max) = req.max_tokens {
        extra.insert("max_tokens".into(), json!(max));
    }
    // OpenAI refuses an empty `stop` list.
    if let Some(stop) = req.stop_sequences.as_ref().filter(|s| !s.is_empty()) {
        extra.insert("stop".into(), json!(stop));
    }
    // Structured output (`output_config.format`, or the beta's
    // `output_format`): the same JSON Schema as OpenAI's `response_format`.
    // Anthropic's is always enforced, so OpenAI's strict mode is asked for
    // where the schema meets its rules (OpenAI refuses others in it).
    let format = req
        .extra
        .get("output_config")
        .and_then(|c| c.get("format"))
        .or_else(|| req.extra.get("output_format"))
        .filter(|f| !f.is_null());
    if let Some(format) = format {
        let param = if req.extra.contains_key("output_format") && !req.extra.contains_key("output_config") {
            "output_format"
        } else {
            "output_config.format"
        };
        match (format.get("type").and_then(Value::as_str), format.get("schema")) {
            (Some("json_schema"), Some(schema)) if schema.is_object() => {
                extra.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": fits_strict(schema, 0)}}),
                );
            }
            _ => {
                return Err(invalid(
                    "the output format must be {\"type\": \"json_schema\", \"schema\": {…}}",
                    param,
                ));
            }
        }
    }
    // Thinking asked of a model that reasons OpenAI's way: its effort. Left
    // out by the dispatch for a deployment whose model does not take it.
    if let Some(effort) = switchyard_providers::reasoning::effort_for_thinking(
        req.extra.get("thinking").filter(|t| !t.is_null()),
        req.extra
            .get("output_config")
            .and_then(|c| c.get("effort"))
            .and_then(Value::as_str),
    ) {
        extra.insert("reasoning_effort".into(), json!(effort));
    }
    if let Some(t) = req.temperature {
        extra.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        extra.insert("top_p".into(), json!(p));
    }
    // An empty list is left out: OpenAI refuses `tools: []`, and a
    // `tool_choice` without tools.
    let tools = req.tools.as_ref().filter(|t| !t.is_empty());
    if let Some(tools) = tools {
        let converted = tools
            .iter()
            .enumerate()
            .map(|(i, t)| {
                // Anthropic's own tools (web search, bash, text editor,
                // computer use, code execution) run on Anthropic's side or
                // follow its fixed schemas: another model cannot serve them.
                if let Some(kind) = t.extra.get("type").and_then(Value::as_str).filter(|k| *k != "custom") {
                    return Err(invalid(
                        format!("the tool type `{kind}` is served by Claude models only"),
                        &format!("tools[{i}].type"),
                    ));
                }
                if t.name.is_empty() {
                    return Err(invalid("a tool needs a name", &format!("tools[{i}].name")));
                }
                let mut function = serde_json::Map::new();
                function.insert("name".into(), json!(openai_tool_name(&t.name)));
                if let Some(description) = &t.description {
                    function.insert("description".into(), json!(description));
                }
                function.insert(
                    "parameters".into(),
                    t.input_schema.clone().unwrap_or_else(|| json!({"type": "object"})),
                );
                // A strict tool's input must follow its schema, on either
                // side, where the schema meets OpenAI's strict rules.
                if let Some(strict) = t.extra.get("strict").and_then(Value::as_bool) {
                    let schema = function.get("parameters").unwrap_or(&Value::Null);
                    function.insert("strict".into(), json!(strict && fits_strict(schema, 0)));
                }
                Ok(json!({"type": "function", "function": function}))
            })
            .collect::<Result<Vec<Value>, ApiError>>()?;
        extra.insert("tools".into(), Value::Array(converted));
    }
    if let Some(choice) = req.tool_choice.as_ref().filter(|_| tools.is_some()) {
        let converted = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {
                "name": choice.get("name").and_then(Value::as_str).map(openai_tool_name)
            }}),
            _ => {
                return Err(invalid(
                    "`tool_choice.type` must be auto, any, tool or none",
                    "tool_choice",
                ));
            }
        };
        extra.insert("tool_choice".into(), converted);
        if choice.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            extra.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    // OpenAI caps `user` at 64 characters; longer ids (Claude Code sends
    // about 150) go as a SHA-256, which stays one id per user.
    if let Some(user) = req
        .extra
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        let user = if user.len() <= OPENAI_NAME_MAX {
            user.to_owned()
        } else {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(user.as_bytes()))
        };
        extra.insert("user".into(), json!(user));
    }
    let stream = req.is_stream();
    Ok(ChatCompletionRequest {
        model: req.model.clone(),
        messages,
        stream: stream.then_some(true),
        stream_options: stream.then(|| StreamOptions {
            include_usage: Some(true),
            extra: Extra::new(),
        }),
        extra,
    })
}

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`.
pub fn stop_reason(finish_reason: Option<&str>) -> Option<String> {
    finish_reason.map(|r| {
        match r {
            "length" => "max_tokens",
            "tool_calls" | "function_call" => "tool_use",
            "content_filter" => "refusal",
            _ => "end_turn",
        }
        .to_owned()
    })
}

/// The `stop_reason` a finished answer reports: `tool_use` whenever it
/// called a tool, even if the upstream said `stop` (some OpenAI-compatible
/// servers do), since agent loops look for it.
pub fn final_stop_reason(mapped: Option<&str>, used_tools: bool) -> String {
    match mapped {
        None | Some("end_turn") if used_tools => "tool_use",
        None => "end_turn",
        Some(reason) => reason,
    }
    .to_owned()
}

/// Anthropic usage for OpenAI usage (cached prompt tokens reported separately).
pub fn messages_usage(usage: Option<&Usage>) -> MessagesUsage {
    let Some(u) = usage else {
        return MessagesUsage::default();
    };
    let cached = u.cached_prompt_tokens();
    // Cache writes, where the upstream reports them (Bedrock and Anthropic
    // answers translated to OpenAI's format, as the meter reads them): part
    // of `prompt_tokens`, but not of Anthropic's `input_tokens`.
    let written = u.cache_write_tokens();
    MessagesUsage {
        input_tokens: u.prompt_tokens.saturating_sub(cached).saturating_sub(written),
        // Reasoning counted outside `completion_tokens` is output too.
        output_tokens: u.generated_tokens(),
        cache_read_input_tokens: Some(cached),
        cache_creation_input_tokens: Some(written),
        extra: Extra::new(),
    }
}

/// The stop sequence that ended a choice, where the server says which
/// (vLLM's `stop_reason`: the matched string, or a token id when a stop
/// token ended it).
pub fn matched_stop(finish_reason: Option<&str>, choice_extra: &Extra) -> Option<String> {
    (finish_reason == Some("stop"))
        .then(|| {
            choice_extra
                .get("stop_reason")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .flatten()
}

/// Whether an Anthropic request asks for thinking (`thinking` set, and not
/// `{"type": "disabled"}`).
pub fn wants_thinking(req: &MessagesRequest) -> bool {
    req.extra
        .get("thinking")
        .filter(|t| !t.is_null())
        .is_some_and(|t| t.get("type").and_then(Value::as_str) != Some("disabled"))
}

/// The Anthropic-format response for an OpenAI chat response.
pub fn to_messages_response(
    resp: ChatCompletionResponse,
    names: &[(String, String)],
    thinking: bool,
) -> MessagesResponse {
    let mut content = Vec::new();
    let mut finish = None;
    let mut stop_sequence = None;
    if let Some(mut choice) = resp.choices.into_iter().next() {
        choice.message.lift_thinking_parts();
        finish = choice.finish_reason;
        // Reasoning from OpenAI-compatible servers becomes a thinking block,
        // for a client that asked for thinking, and beside a tool call (a
        // reasoning model wants it back with that turn, which the client
        // sends as the thinking block).
        let called = choice.message.tool_calls.as_ref().is_some_and(|c| !c.is_empty());
        if let Some(thinking) = ["reasoning_content", "reasoning"]
            .iter()
            .find_map(|k| {
                choice
                    .message
                    .extra
                    .get(*k)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
            })
            .filter(|_| thinking || called)
        {
            let mut block = ContentBlock {
                kind: "thinking".into(),
                ..ContentBlock::default()
            };
            block.extra.insert("thinking".into(), json!(thinking));
            // Anthropic's thinking blocks always carry a signature (SDKs read
            // it); an empty one marks reasoning no Claude model signed.
            block.extra.insert("signature".into(), json!(""));
            content.push(block);
        }
        let text = choice.message.content_text();
        // White space alone before tool calls (Qwen's `"\n\n"`) is no
        // text: Claude would refuse the block sent back.
        let calls = choice.message.tool_calls.as_ref().is_some_and(|c| !c.is_empty());
        let blank_beside_calls = calls && text.trim().is_empty();
        if !text.is_empty() && !blank_beside_calls {
            content.push(ContentBlock::text(text));
        }
        // A refusal (OpenAI's `refusal` field) is the answer's text.
        if let Some(refusal) = choice
            .message
            .extra
            .get("refusal")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
        {
            content.push(ContentBlock::text(refusal));
            finish = Some("content_filter".into());
        }
        stop_sequence = matched_stop(finish.as_deref(), &choice.extra);
        // Only function calls: the tools offered were translated from
        // Anthropic's, which are all functions.
        for call in choice.message.tool_calls.unwrap_or_default() {
            let Some(function) = call.function else { continue };
            let input = serde_json::from_str(&function.arguments).unwrap_or_else(|_| json!({}));
            // A call the upstream sent without an id gets one: the client's
            // `tool_result` must name it.
            let id = if call.id.is_empty() {
                tool_use_id(&resp.id, content.len())
            } else {
                call.id
            };
            let id = signed_tool_use_id(id, thought_signature(call.extra.get("extra_content")));
            content.push(ContentBlock {
                kind: "tool_use".into(),
                id: Some(id),
                name: Some(original_tool_name(names, function.name)),
                input: Some(input),
                ..ContentBlock::default()
            });
        }
    }
    let used_tools = content.iter().any(|b| b.kind == "tool_use");
    MessagesResponse {
        id: message_id(&resp.id),
        kind: "message".into(),
        role: MessageRole::Assistant,
        model: resp.model,
        content,
        stop_reason: Some(match &stop_sequence {
            Some(_) if !used_tools => "stop_sequence".to_owned(),
            _ => final_stop_reason(stop_reason(finish.as_deref()).as_deref(), used_tools),
        }),
        stop_sequence: stop_sequence.filter(|_| !used_tools),
        usage: messages_usage(resp.usage.as_ref()),
        extra: Extra::new(),
    }
}

#[cfg(test)]
mod stop_tests {
    use super::*;

    #[test]
    fn an_answer_that_called_a_tool_stops_for_it() {
        assert_eq!(final_stop_reason(Some("end_turn"), true), "tool_use");
        assert_eq!(final_stop_reason(None, true), "tool_use");
        assert_eq!(final_stop_reason(None, false), "end_turn");
        assert_eq!(final_stop_reason(Some("max_tokens"), true), "max_tokens");
        assert_eq!(final_stop_reason(Some("end_turn"), false), "end_turn");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tool_result_tests {
    use super::*;

    #[test]
    fn images_a_tool_returned_follow_in_a_user_message() {
        let req: MessagesRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 10,
            "messages": [
                {"role": "user", "content": "look"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "screenshot", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [
                        {"type": "text", "text": "taken"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
                    ]},
                    {"type": "text", "text": "what is on it?"}
                ]}
            ]
        }))
        .unwrap();
        let chat = to_chat_request(&req).unwrap();
        let roles: Vec<Role> = chat.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, vec![Role::User, Role::Assistant, Role::Tool, Role::User]);
        assert_eq!(chat.messages[2].content_text(), "taken\n(image in the next message)");
        let Some(MessageContent::Parts(parts)) = &chat.messages[3].content else {
            panic!("{:?}", chat.messages[3]);
        };
        let kinds: Vec<&str> = parts.iter().map(|p| p.kind.as_str()).collect();
        assert_eq!(kinds, vec!["image_url", "text"]);
        assert_eq!(parts[0].extra["image_url"]["url"], "data:image/png;base64,iVBORw0KGgo=");

        let bad: MessagesRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                "content": [{"type": "document", "source": {}}]}]}]
        }))
        .unwrap();
        let err = to_chat_request(&bad).unwrap_err();
        assert_eq!(err.parts().2.as_deref(), Some("messages[0].content[0].content[0]"));

        // Documents a tool returned: text stays in the result, a PDF goes
        // to the user message after it.
        let documents: MessagesRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "page one"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
            ]}]}]
        }))
        .unwrap();
        let chat = to_chat_request(&documents).unwrap();
        assert_eq!(
            chat.messages[0].content_text(),
            "page one\n(document in the next message)"
        );
        let Some(MessageContent::Parts(parts)) = &chat.messages[1].content else {
            panic!("{:?}", chat.messages[1]);
        };
        assert_eq!(parts[0].kind, "file");
    }

    /// Structured output, strict tools, tools without a name (an MCP
    /// toolset) and an empty stop list, as OpenAI-format models take them.
    #[test]
    fn structured_output_and_tool_fields_reach_openai_format_models() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": false});
        for field in [
            json!({"output_config": {"format": {"type": "json_schema", "schema": schema}}}),
            json!({"output_format": {"type": "json_schema", "schema": schema}}),
        ] {
            let mut body = json!({"model": "m", "max_tokens": 10, "stop_sequences": [],
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"name": "lookup", "input_schema": schema, "strict": true},
                    {"name": "loose", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}, "strict": true}]});
            body.as_object_mut().unwrap().extend(field.as_object().unwrap().clone());
            let req: MessagesRequest = serde_json::from_value(body).unwrap();
            let chat = serde_json::to_value(to_chat_request(&req).unwrap()).unwrap();
            assert_eq!(
                chat["response_format"],
                json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}}),
                "{field}"
            );
            assert_eq!(chat["tools"][0]["function"]["strict"], json!(true));
            // A schema OpenAI's strict mode would refuse (an optional
            // property, no `additionalProperties: false`) goes without it.
            assert_eq!(chat["tools"][1]["function"]["strict"], json!(false));
            assert!(chat["tools"][0]["function"].get("description").is_none(), "{chat}");
            assert!(chat.get("stop").is_none(), "{chat}");
        }
        let optional =
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false});
        let loose: MessagesRequest = serde_json::from_value(json!({"model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}], "output_format": {"type": "json_schema", "schema": optional}}))
        .unwrap();
        let chat = serde_json::to_value(to_chat_request(&loose).unwrap()).unwrap();
        assert_eq!(chat["response_format"]["json_schema"]["strict"], json!(false), "{chat}");
        let bad: MessagesRequest = serde_json::from_value(json!({"model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}], "output_format": {"type": "json_object"}}))
        .unwrap();
        assert_eq!(
            to_chat_request(&bad).unwrap_err().parts().2.as_deref(),
            Some("output_format")
        );

        // MCP toolsets have no name: read, kept as sent for Claude, refused
        // by type for other models.
        let mcp: MessagesRequest = serde_json::from_value(json!({"model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
            "mcp_servers": [{"type": "url", "url": "https://example.com/sse", "name": "a"}],
            "tools": [{"type": "mcp_toolset", "mcp_server_name": "a"}, {"type": "mcp_toolset", "mcp_server_name": "b"}]}))
        .unwrap();
        assert_eq!(
            serde_json::to_value(&mcp).unwrap()["tools"][0],
            json!({"type": "mcp_toolset", "mcp_server_name": "a"})
        );
        assert!(shortened_tool_names(&mcp).unwrap().is_empty());
        assert_eq!(
            to_chat_request(&mcp).unwrap_err().parts().2.as_deref(),
            Some("tools[0].type")
        );
        let nameless: MessagesRequest = serde_json::from_value(json!({"model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}], "tools": [{"input_schema": {"type": "object"}}]}))
        .unwrap();
        assert_eq!(
            to_chat_request(&nameless).unwrap_err().parts().2.as_deref(),
            Some("tools[0].name")
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod openai_limit_tests {
    use super::*;

    #[test]
    fn cache_writes_an_upstream_reports_are_not_input() {
        let usage: Usage = serde_json::from_value(json!({
            "prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
            "prompt_tokens_details": {"cached_tokens": 30, "cache_creation_tokens": 50}
        }))
        .unwrap();
        let out = messages_usage(Some(&usage));
        assert_eq!(
            (
                out.input_tokens,
                out.cache_read_input_tokens,
                out.cache_creation_input_tokens
            ),
            (20, Some(30), Some(50))
        );
    }

    #[test]
    fn long_tool_names_and_user_ids_fit_openai_and_names_come_back() {
        let long = format!("mcp__{}__search", "a-very-long-server-name".repeat(3));
        assert!(long.len() > 64);
        let req: MessagesRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 10,
            "metadata": {"user_id": "user_".repeat(30)},
            "tools": [{"name": long, "input_schema": {"type": "object"}}, {"name": "short"}],
            "tool_choice": {"type": "tool", "name": long},
            "messages": [
                {"role": "user", "content": "find it"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": long, "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "found"}]}
            ]
        }))
        .unwrap();
        let chat = to_chat_request(&req).unwrap();
        let short = chat.extra["tools"][0]["function"]["name"].as_str().unwrap().to_owned();
        assert!(short.len() <= 64, "{short}");
        assert_ne!(short, long);
        assert_eq!(chat.extra["tools"][1]["function"]["name"], "short");
        assert_eq!(chat.extra["tool_choice"]["function"]["name"], short.as_str());
        let history = &chat.messages[1].tool_calls.as_ref().unwrap()[0];
        assert_eq!(
            history.function.as_ref().unwrap().name,
            short,
            "earlier calls use the same name"
        );
        let user = chat.extra["user"].as_str().unwrap();
        assert_eq!(user.len(), 64, "{user}");

        // The answer names the tool as the client knows it.
        // A tool named like another's shortened name would be ambiguous.
        let mut clash = req.clone();
        clash.tools.as_mut().unwrap()[1].name = short.clone();
        let err = shortened_tool_names(&clash).unwrap_err();
        assert!(err.to_string().contains(&short), "{err}");
        clash.tools.as_mut().unwrap()[1].name = long.clone();
        assert!(shortened_tool_names(&clash).is_err(), "duplicate names are refused");
        let names = shortened_tool_names(&req).unwrap();
        let resp: ChatCompletionResponse = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "t2", "type": "function", "function": {"name": short, "arguments": "{}"}}]}}]
        }))
        .unwrap();
        let answer = to_messages_response(resp, &names, false);
        assert_eq!(answer.id, "msg_c", "an id in Anthropic's form");
        assert_eq!(message_id("chatcmpl-abc123"), "msg_abc123");
        assert_eq!(message_id("msg_01XYZ"), "msg_01XYZ");
        // Answers without an id do not share one.
        assert_ne!(message_id(""), message_id(""));
        assert!(message_id("").len() > "msg_".len());
        assert_eq!(answer.content[0].name.as_deref(), Some(long.as_str()));

        // Thinking in an earlier turn goes back as the turn's reasoning.
        let turn: MessagesRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 10, "messages": [
                {"role": "user", "content": "2 + 2?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Add them.", "signature": ""},
                    {"type": "redacted_thinking", "data": "x"},
                    {"type": "tool_use", "id": "t1", "name": "calc", "input": {}}
                ]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "4"}]}
            ]
        }))
        .unwrap();
        let chat = to_chat_request(&turn).unwrap();
        assert_eq!(chat.messages[1].extra["reasoning_content"], "Add them.");
        assert!(chat.messages[0].extra.get("reasoning_content").is_none());

        // Reasoning from an OpenAI-compatible server comes first, as thinking.
        let reasoned: ChatCompletionResponse = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                "reasoning_content": "2 + 2 is 4.", "content": "Four."}}]
        }))
        .unwrap();
        let answer = serde_json::to_value(to_messages_response(reasoned.clone(), &[], true)).unwrap();
        assert_eq!(
            answer["content"][0],
            json!({"type": "thinking", "thinking": "2 + 2 is 4.", "signature": ""})
        );
        assert_eq!(answer["content"][1]["text"], "Four.");
        // Mistral's reasoning models answer in parts: thinking, then text.
        let parts: ChatCompletionResponse = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "magistral",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": [
                {"type": "thinking", "thinking": [{"type": "text", "text": "2 + 2 is 4."}]},
                {"type": "text", "text": "Four."}
            ]}}]
        }))
        .unwrap();
        let answer = serde_json::to_value(to_messages_response(parts, &[], true)).unwrap();
        assert_eq!(answer["content"][0]["thinking"], "2 + 2 is 4.", "{answer}");
        assert_eq!(answer["content"][1]["text"], "Four.", "{answer}");
        assert_eq!(answer["content"].as_array().map(Vec::len), Some(2), "{answer}");
        let stopped: ChatCompletionResponse = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "stop_reason": "END",
                "message": {"role": "assistant", "content": "done"}}]
        }))
        .unwrap();
        let answer = to_messages_response(stopped, &[], false);
        assert_eq!(answer.stop_reason.as_deref(), Some("stop_sequence"));
        assert_eq!(answer.stop_sequence.as_deref(), Some("END"));
        let unasked = serde_json::to_value(to_messages_response(reasoned, &[], false)).unwrap();
        assert_eq!(
            unasked["content"][0]["type"], "text",
            "no thinking the client did not ask for"
        );
        // Beside a tool call it comes back anyway: DeepSeek wants it with
        // the call's turn, which then carries it upstream.
        let calling: ChatCompletionResponse = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "deepseek-reasoner",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
                "reasoning_content": "I should look.", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "read", "arguments": "{}"}}]}}]
        }))
        .unwrap();
        let answer = serde_json::to_value(to_messages_response(calling, &[], false)).unwrap();
        assert_eq!(answer["content"][0]["thinking"], "I should look.", "{answer}");
        assert_eq!(answer["content"][1]["type"], "tool_use", "{answer}");
        // White space alone before a call (Qwen's) is no text block.
        let spaced: ChatCompletionResponse = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "qwen3",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
                "content": "\n\n", "tool_calls": [
                    {"id": "call_2", "type": "function", "function": {"name": "read", "arguments": "{}"}}]}}]
        }))
        .unwrap();
        let spaced = serde_json::to_value(to_messages_response(spaced, &[], false)).unwrap();
        let kinds: Vec<&Value> = spaced["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| &b["type"])
            .collect();
        assert_eq!(kinds, [&json!("tool_use")], "{spaced}");
        let next: MessagesRequest = serde_json::from_value(json!({"model": "deepseek-reasoner", "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "read it"},
            {"role": "assistant", "content": answer["content"]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "ok"}]}
        ]}))
        .unwrap();
        let chat = to_chat_request(&next).unwrap();
        assert_eq!(chat.messages[1].extra["reasoning_content"], "I should look.");

        // Documents: text as text, a base64 PDF as a file part.
        let docs: MessagesRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": [
                {"type": "document", "title": "Notes", "source": {"type": "text", "media_type": "text/plain", "data": "alpha"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
                {"type": "text", "text": "summarise"}
            ]}]
        }))
        .unwrap();
        let chat = to_chat_request(&docs).unwrap();
        let Some(MessageContent::Parts(parts)) = &chat.messages[0].content else {
            panic!("{:?}", chat.messages[0]);
        };
        assert_eq!(parts[0].text.as_deref(), Some("Notes\n\nalpha"));
        assert_eq!(parts[1].kind, "file");
        assert_eq!(
            parts[1].extra["file"]["file_data"],
            "data:application/pdf;base64,JVBERi0="
        );
        let by_url: MessagesRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": [
                {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}]}]
        }))
        .unwrap();
        assert_eq!(
            to_chat_request(&by_url).unwrap_err().parts().2.as_deref(),
            Some("messages[0].content[0]")
        );

        // No tools at all: none are sent (OpenAI refuses an empty list).
        let bare: MessagesRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 10, "tools": [], "metadata": {"user_id": "u1"},
            "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap();
        let chat = to_chat_request(&bare).unwrap();
        assert!(chat.extra.get("tools").is_none());
        assert_eq!(chat.extra["user"], "u1");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tool_definition_tests {
    use super::*;

    fn request(tools: Value, tool_choice: Value) -> MessagesRequest {
        serde_json::from_value(json!({
            "model": "m", "max_tokens": 10, "tools": tools, "tool_choice": tool_choice,
            "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap()
    }

    #[test]
    fn anthropic_server_tools_are_refused_for_other_models() {
        let req = request(
            json!([
                {"name": "lookup", "input_schema": {"type": "object"}},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
            ]),
            json!({"type": "auto"}),
        );
        let err = to_chat_request(&req).unwrap_err();
        assert_eq!(err.parts().2.as_deref(), Some("tools[1].type"));
        // A `custom` tool is a plain client tool.
        let custom = request(
            json!([{"type": "custom", "name": "lookup", "input_schema": {"type": "object"}}]),
            json!({"type": "any"}),
        );
        let chat = to_chat_request(&custom).unwrap();
        assert_eq!(chat.extra["tools"][0]["function"]["name"], "lookup");
        assert_eq!(chat.extra["tool_choice"], "required");
    }

    #[test]
    fn a_tool_choice_without_tools_is_left_out() {
        let chat = to_chat_request(&request(
            json!([]),
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        ))
        .unwrap();
        assert!(chat.extra.get("tools").is_none());
        assert!(chat.extra.get("tool_choice").is_none(), "{:?}", chat.extra);
        assert!(chat.extra.get("parallel_tool_calls").is_none(), "{:?}", chat.extra);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod loose_tool_call_tests {
    use super::*;

    #[test]
    fn calls_without_an_id_get_one_and_object_arguments_are_the_input() {
        let resp: ChatCompletionResponse = serde_json::from_value(json!({
            "id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "let me look",
                "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]
            }}]
        }))
        .unwrap();
        let out = to_messages_response(resp, &[], false);
        let call = out.content.iter().find(|b| b.kind == "tool_use").unwrap();
        assert_eq!(call.id.as_deref(), Some("toolu_9_1"));
        assert_eq!(call.input, Some(json!({"a": 1})));
        assert_eq!(out.stop_reason.as_deref(), Some("tool_use"));
    }
}
