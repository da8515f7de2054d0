//! A Responses request written as a chat completion request, and a chat
//! completion written back as a response object.

use serde_json::{Map, Value, json};
use switchyard_api::responses::{
    IncompleteDetails, InputTokensDetails, OutputContent, OutputItem, OutputTokensDetails, ReasoningText,
    ResponseInput, ResponseObject, ResponseUsage, ResponsesRequest,
};
use switchyard_api::{
    ChatCompletionRequest, ChatCompletionResponse, ChatMessage, ContentPart, Extra, FunctionCall, MessageContent, Role,
    StreamOptions, ToolCall, Usage,
};

use crate::error::ApiError;

/// What a response object repeats of its request (`tools`, `temperature`,
/// `metadata`, …), and the ids it is written under.
#[derive(Debug, Clone)]
pub(crate) struct Echo {
    /// The response's id, `resp_…`.
    pub id: String,
    /// Unix seconds at which the request arrived.
    pub created_at: u64,
    /// The requested model name.
    pub model: String,
    /// Request parameters, as the response object shows them.
    pub fields: Extra,
}

impl Echo {
    /// An item id of this response: `PREFIX_` and the response's own suffix,
    /// with `n` for items of which there may be several.
    pub fn item_id(&self, prefix: &str, n: usize) -> String {
        let suffix = self.id.strip_prefix("resp_").unwrap_or(&self.id);
        if n == 0 {
            format!("{prefix}_{suffix}")
        } else {
            format!("{prefix}_{suffix}_{n}")
        }
    }

    /// Whether the request asked for reasoning summaries
    /// (`reasoning.summary`: `auto`, `concise` or `detailed`). Other models'
    /// reasoning text is then also given as the summary, which is what
    /// clients such as Codex show.
    pub fn wants_summary(&self) -> bool {
        self.fields
            .get("reasoning")
            .and_then(|r| r.get("summary"))
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty() && s != "none")
    }

    /// An empty response object of this request, with `status`.
    pub fn object(&self, status: &str) -> ResponseObject {
        ResponseObject {
            id: self.id.clone(),
            object: "response".into(),
            created_at: self.created_at,
            status: status.into(),
            error: None,
            incomplete_details: None,
            model: self.model.clone(),
            output: Vec::new(),
            usage: None,
            extra: self.fields.clone(),
        }
    }
}

fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        param: Some(param.into()),
        message: message.into(),
    }
}

/// Marks the `encrypted_content` of reasoning items this gateway wrote.
const SEALED: &str = "swy1:";

/// Claude's thinking blocks as a reasoning item's `encrypted_content`,
/// each written the same way however it came (a stream's blocks carry an
/// `index`, and their fields in another order).
pub(crate) fn seal(blocks: &[Value]) -> Option<String> {
    use base64::Engine as _;
    let field = |b: &Value, key: &str| b.get(key).cloned().unwrap_or(Value::Null);
    let blocks: Vec<Value> = blocks
        .iter()
        .map(|b| match b.get("type").and_then(Value::as_str) {
            Some("redacted_thinking") => json!({"type": "redacted_thinking", "data": field(b, "data")}),
            Some("reasoning_text") => json!({"type": "reasoning_text", "text": field(b, "text")}),
            _ => json!({"type": "thinking", "thinking": field(b, "thinking"), "signature": field(b, "signature")}),
        })
        .collect();
    if blocks.is_empty() {
        return None;
    }
    let json = serde_json::to_vec(&blocks).ok()?;
    Some(format!(
        "{SEALED}{}",
        base64::engine::general_purpose::STANDARD.encode(json)
    ))
}

/// Another model's reasoning text as a reasoning item's `encrypted_content`:
/// a client that sends items back without their `content` (Codex keeps
/// only `encrypted_content`) still gives it back, for servers that want it
/// with the turn it led to (DeepSeek, Kimi).
pub(crate) fn seal_text(text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    seal(&[json!({"type": "reasoning_text", "text": text})])
}

/// Everything an `encrypted_content` this gateway wrote holds; nothing
/// from anything else (another service's reasoning cannot be replayed).
fn unsealed(content: &str) -> Vec<Value> {
    use base64::Engine as _;
    content
        .strip_prefix(SEALED)
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|json| serde_json::from_slice::<Vec<Value>>(&json).ok())
        .unwrap_or_default()
}

/// The thinking blocks of an `encrypted_content` this gateway wrote.
pub(crate) fn unseal(content: &str) -> Vec<Value> {
    unsealed(content)
        .into_iter()
        .filter(|b| b.get("type").and_then(Value::as_str) != Some("reasoning_text"))
        .collect()
}

/// The reasoning text an `encrypted_content` this gateway wrote holds
/// ([`seal_text`]); empty when none.
pub(crate) fn unseal_text(content: &str) -> String {
    unsealed(content)
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("reasoning_text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect()
}

/// A new response id: `resp_` and 32 hex digits from the system's secure
/// random source (where keys are shared, the id is what keeps a response
/// from being read by others).
pub(crate) fn response_id() -> String {
    let mut bytes = [0_u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No secure source: still unique, if guessable.
        bytes = (u128::from(fastrand::u64(..)) << 64 | u128::from(fastrand::u64(..))).to_be_bytes();
    }
    format!("resp_{}", hex::encode(bytes))
}

/// Parameters the gateway cannot serve: refused, not silently dropped.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "conversation",
        "conversations are not kept by this gateway; send `previous_response_id` or the whole conversation in `input`",
    ),
    (
        "prompt",
        "stored prompt templates are not supported by this gateway; send `instructions` and `input`",
    ),
    ("max_tool_calls", "`max_tool_calls` is not supported by this gateway"),
    // Chat fields that have no place here: sent on, `messages` would reach
    // the upstream beside the translated `input`, and `n` would be charged
    // for answers the client never gets.
    (
        "messages",
        "`messages` belongs to /v1/chat/completions; the Responses API takes `input`",
    ),
    (
        "n",
        "the Responses API gives one answer per request: `n` is not supported",
    ),
    (
        "top_logprobs",
        "`top_logprobs` is not supported by this gateway's Responses API; use `/v1/chat/completions`",
    ),
];

/// Parameters passed to the chat request under the same name, and echoed.
const SAME_NAME: &[&str] = &[
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "metadata",
];

/// The chat request for `req`, after the messages of `history` (the
/// conversation of `previous_response_id`, empty without one).
pub(crate) fn to_chat(
    req: ResponsesRequest,
    history: Vec<ChatMessage>,
    echo: &mut Echo,
) -> Result<ChatCompletionRequest, ApiError> {
    let ResponsesRequest {
        model,
        input,
        instructions,
        stream,
        previous_response_id,
        store,
        mut extra,
    } = req;
    // A `null` is the field left out (clients that write every field send
    // them so): not refused, and not passed on either.
    for (name, why) in UNSUPPORTED {
        if extra.shift_remove(*name).is_some_and(|v| !v.is_null()) {
            return Err(invalid(*name, *why));
        }
    }
    let background = extra.get("background") == Some(&Value::Bool(true));
    if background && stream == Some(true) {
        return Err(invalid(
            "stream",
            "a background response is not streamed by this gateway: leave `stream` unset and poll GET /v1/responses/{id}",
        ));
    }
    if background && store == Some(false) {
        return Err(invalid(
            "store",
            "a background response is kept until it is read: `store` must not be false",
        ));
    }
    echo.fields.insert("background".into(), Value::Bool(background));
    let mut chat = Extra::new();
    let fields = &mut echo.fields;
    fields.insert(
        "instructions".into(),
        instructions.clone().map_or(Value::Null, Value::String),
    );
    fields.insert(
        "previous_response_id".into(),
        previous_response_id.map_or(Value::Null, Value::String),
    );
    fields.insert("store".into(), Value::Bool(store.unwrap_or(true)));
    for name in SAME_NAME {
        if let Some(value) = extra.shift_remove(*name) {
            fields.insert((*name).into(), value.clone());
            if !value.is_null() {
                chat.insert((*name).into(), value);
            }
        }
    }
    if let Some(limit) = extra.shift_remove("max_output_tokens") {
        match limit.as_u64() {
            Some(n) if n > 0 => {
                chat.insert("max_tokens".into(), json!(n));
            }
            _ if limit.is_null() => {}
            _ => {
                return Err(invalid(
                    "max_output_tokens",
                    "max_output_tokens: a positive integer is required",
                ));
            }
        }
        fields.insert("max_output_tokens".into(), limit);
    }
    if let Some(tools) = extra.shift_remove("tools") {
        if !tools.is_null() {
            let converted = chat_tools(&tools)?;
            if !converted.is_empty() {
                chat.insert("tools".into(), Value::Array(converted));
            }
        }
        fields.insert("tools".into(), tools);
    }
    if let Some(choice) = extra.shift_remove("tool_choice") {
        if !choice.is_null() {
            let converted = chat_tool_choice(&choice)?;
            // Chat APIs refuse a tool choice without tools (clients send
            // `"tools": [], "tool_choice": "auto"`); one that needs a tool
            // cannot be met.
            if chat.contains_key("tools") {
                chat.insert("tool_choice".into(), converted);
            } else if converted != json!("auto") && converted != json!("none") {
                return Err(invalid(
                    "tool_choice",
                    "tool_choice: the request offers no function tools to call",
                ));
            }
        }
        fields.insert("tool_choice".into(), choice);
    }
    if !chat.contains_key("tools") {
        chat.shift_remove("parallel_tool_calls");
    }
    if let Some(text) = extra.shift_remove("text") {
        text_options(&text, &mut chat)?;
        fields.insert("text".into(), text);
    }
    if let Some(reasoning) = extra.shift_remove("reasoning") {
        match reasoning.get("effort") {
            Some(Value::String(effort)) => {
                chat.insert("reasoning_effort".into(), json!(effort));
            }
            None | Some(Value::Null) => {}
            Some(_) => return Err(invalid("reasoning.effort", "reasoning.effort: a string is required")),
        }
        fields.insert("reasoning".into(), reasoning);
    }
    if let Some(truncation) = extra.shift_remove("truncation") {
        if !matches!(truncation.as_str(), None | Some("auto" | "disabled")) {
            return Err(invalid("truncation", "truncation: `auto` or `disabled` is required"));
        }
        fields.insert("truncation".into(), truncation);
    }
    // What the response should also carry (reasoning's encrypted content,
    // logprobs), and the stream's obfuscation: nothing to ask a chat
    // upstream for.
    extra.shift_remove("include");
    extra.shift_remove("stream_options");
    extra.shift_remove("background");
    defaults(fields);

    let mut messages = Vec::new();
    if let Some(instructions) = instructions {
        messages.push(ChatMessage::text(Role::System, instructions));
    }
    let continued = !history.is_empty();
    messages.extend(history);
    match input {
        Some(ResponseInput::Text(text)) => messages.push(ChatMessage::text(Role::User, text)),
        Some(ResponseInput::Items(items)) => {
            let mut thinking = Thinking::default();
            for (i, item) in items.iter().enumerate() {
                input_item(i, item, &mut messages, &mut thinking)?;
            }
        }
        None => {}
    }
    if !messages.iter().any(|m| m.role != Role::System) {
        return Err(invalid(
            "input",
            if continued {
                "input: the conversation has no messages"
            } else {
                "input: at least one message is required"
            },
        ));
    }
    // The remaining fields (the gateway's own, such as `fallbacks`, and
    // parameters this gateway does not know) go on as the chat route's do.
    chat.extend(extra);
    let stream_options = stream.unwrap_or(false).then(|| StreamOptions {
        // The usage ends up in `response.completed`.
        include_usage: Some(true),
        extra: Extra::new(),
    });
    Ok(ChatCompletionRequest {
        model,
        messages,
        stream,
        stream_options,
        extra: chat,
    })
}

/// What a response object shows for parameters the request left out.
fn defaults(fields: &mut Extra) {
    for (name, value) in [
        ("max_output_tokens", Value::Null),
        ("metadata", json!({})),
        ("parallel_tool_calls", Value::Bool(true)),
        ("reasoning", json!({"effort": null, "summary": null})),
        ("temperature", Value::Null),
        ("text", json!({"format": {"type": "text"}})),
        ("tool_choice", json!("auto")),
        ("tools", json!([])),
        ("top_p", Value::Null),
        ("truncation", json!("disabled")),
        ("user", Value::Null),
    ] {
        match fields.get_mut(name) {
            None | Some(Value::Null) => {
                fields.insert(name.into(), value);
            }
            // An object given in part (`{"verbosity": "low"}`) shows the
            // rest as an answer to a full one would.
            Some(Value::Object(given)) => {
                if let Value::Object(defaults) = value {
                    for (key, default) in defaults {
                        match given.get(&key) {
                            None | Some(Value::Null) => {
                                given.insert(key, default);
                            }
                            Some(_) => {}
                        }
                    }
                }
            }
            Some(_) => {}
        }
    }
}

/// Function tools in the chat format; other kinds (web search, file
/// search, computer use, MCP) are refused, naming the tool.
fn chat_tools(tools: &Value) -> Result<Vec<Value>, ApiError> {
    let Some(tools) = tools.as_array() else {
        return Err(invalid("tools", "tools: an array is required"));
    };
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let kind = tool.get("type").and_then(Value::as_str).unwrap_or_default();
            if kind != "function" {
                return Err(invalid(
                    format!("tools[{i}].type"),
                    format!("tools[{i}]: `{kind}` tools are not supported by this gateway; only `function` tools are"),
                ));
            }
            let Some(name) = tool.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
                return Err(invalid(
                    format!("tools[{i}].name"),
                    format!("tools[{i}].name: a name is required"),
                ));
            };
            let mut function = Map::new();
            function.insert("name".into(), json!(name));
            for key in ["description", "parameters", "strict"] {
                if let Some(value) = tool.get(key).filter(|v| !v.is_null()) {
                    function.insert(key.into(), value.clone());
                }
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

fn chat_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(mode) if matches!(mode.as_str(), "none" | "auto" | "required") => Ok(choice.clone()),
        Value::Object(object) if object.get("type").and_then(Value::as_str) == Some("function") => {
            match object.get("name").and_then(Value::as_str) {
                Some(name) => Ok(json!({"type": "function", "function": {"name": name}})),
                None => Err(invalid(
                    "tool_choice.name",
                    "tool_choice.name: a function name is required",
                )),
            }
        }
        _ => Err(invalid(
            "tool_choice",
            "tool_choice: `none`, `auto`, `required` or a function (`{\"type\": \"function\", \"name\": …}`) is required",
        )),
    }
}

/// `text.format` as the chat `response_format`, `text.verbosity` as `verbosity`.
fn text_options(text: &Value, chat: &mut Extra) -> Result<(), ApiError> {
    if text.is_null() {
        return Ok(());
    }
    if !text.is_object() {
        return Err(invalid("text", "text: an object is required"));
    }
    if let Some(verbosity) = text.get("verbosity").filter(|v| !v.is_null()) {
        chat.insert("verbosity".into(), verbosity.clone());
    }
    let Some(format) = text.get("format").filter(|f| !f.is_null()) else {
        return Ok(());
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            chat.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some("json_schema") => {
            let (Some(name), Some(schema)) = (format.get("name").and_then(Value::as_str), format.get("schema")) else {
                return Err(invalid(
                    "text.format",
                    "text.format: a `json_schema` format needs a `name` and a `schema`",
                ));
            };
            let mut json_schema = Map::new();
            json_schema.insert("name".into(), json!(name));
            json_schema.insert("schema".into(), schema.clone());
            for key in ["description", "strict"] {
                if let Some(value) = format.get(key).filter(|v| !v.is_null()) {
                    json_schema.insert(key.into(), value.clone());
                }
            }
            chat.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": json_schema}),
            );
        }
        _ => {
            return Err(invalid(
                "text.format.type",
                "text.format.type: `text`, `json_object` or `json_schema` is required",
            ));
        }
    }
    Ok(())
}

fn string_field<'a>(item: &'a Value, key: &str, param: &str) -> Result<&'a str, ApiError> {
    item.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{param}.{key}"), format!("{param}.{key}: a string is required")))
}

/// What reasoning items read so far hold for the assistant turn they led
/// to: Claude's signed thinking blocks, and other models' reasoning text.
#[derive(Default)]
struct Thinking {
    blocks: Vec<Value>,
    text: String,
}

impl Thinking {
    fn clear(&mut self) {
        self.blocks.clear();
        self.text.clear();
    }
}

/// Hands the thinking of reasoning items read so far to `message`, the
/// assistant turn they came with: the text as its `reasoning_content`
/// (DeepSeek and Kimi want it back on a turn that called tools; servers
/// that refuse it get none, see the OpenAI provider), the blocks as its
/// `thinking_blocks`.
fn attach_thinking(message: &mut ChatMessage, pending: &mut Thinking) {
    if !pending.text.is_empty() {
        let text = std::mem::take(&mut pending.text);
        match message.extra.get_mut("reasoning_content") {
            Some(Value::String(earlier)) => earlier.push_str(&text),
            _ => {
                message.extra.insert("reasoning_content".into(), Value::String(text));
            }
        }
    }
    let thinking = &mut pending.blocks;
    if thinking.is_empty() {
        return;
    }
    let blocks = message
        .extra
        .entry("thinking_blocks")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(blocks) = blocks {
        blocks.append(thinking);
    }
}

/// Appends the chat messages of input item `i`; `thinking` holds the
/// thinking of reasoning items until the assistant turn they belong to.
fn input_item(
    i: usize,
    item: &Value,
    messages: &mut Vec<ChatMessage>,
    thinking: &mut Thinking,
) -> Result<(), ApiError> {
    let param = format!("input[{i}]");
    if !item.is_object() {
        return Err(invalid(param.clone(), format!("{param}: an object is required")));
    }
    let kind = match item.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        // Messages may leave their type out (`{"role": …, "content": …}`).
        None if item.get("role").is_some() => "message",
        _ => {
            return Err(invalid(
                format!("{param}.type"),
                format!("{param}.type: a string is required"),
            ));
        }
    };
    match kind {
        "message" => {
            let mut message = input_message(item, &param)?;
            match messages.last_mut() {
                // Assistant text after the turn's calls (and before their
                // outputs) belongs to the same chat message: a second
                // assistant message between calls and results is refused.
                Some(last) if message.role == Role::Assistant && last.role == Role::Assistant => {
                    attach_thinking(last, thinking);
                    let mut text = last.content_text();
                    let more = message.content_text();
                    // Two messages' texts, not one run-on sentence.
                    if !text.is_empty() && !more.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&more);
                    last.content = Some(MessageContent::Text(text));
                }
                _ => {
                    if message.role == Role::Assistant {
                        attach_thinking(&mut message, thinking);
                    } else {
                        // Reasoning that led to no assistant turn belongs to none.
                        thinking.clear();
                    }
                    messages.push(message);
                }
            }
        }
        "function_call" => {
            let call = ToolCall {
                id: string_field(item, "call_id", &param)?.to_owned(),
                kind: "function".into(),
                function: Some(FunctionCall {
                    name: string_field(item, "name", &param)?.to_owned(),
                    arguments: match item.get("arguments") {
                        Some(Value::String(arguments)) => arguments.clone(),
                        None | Some(Value::Null) => "{}".to_owned(),
                        // Arguments sent as the object they encode (as some
                        // clients write them): the same call, encoded.
                        Some(object @ Value::Object(_)) => object.to_string(),
                        Some(_) => {
                            return Err(invalid(
                                format!("{param}.arguments"),
                                format!("{param}.arguments: a JSON string is required"),
                            ));
                        }
                    },
                }),
                extra: call_extra(item.get("extra_content").filter(|v| v.is_object()).cloned()),
            };
            // Calls follow the assistant text they came with, in one message.
            match messages.last_mut() {
                Some(last) if last.role == Role::Assistant => {
                    attach_thinking(last, thinking);
                    last.tool_calls.get_or_insert_with(Vec::new).push(call);
                }
                _ => {
                    let mut message = ChatMessage {
                        role: Role::Assistant,
                        content: None,
                        name: None,
                        tool_calls: Some(vec![call]),
                        tool_call_id: None,
                        extra: Extra::new(),
                    };
                    attach_thinking(&mut message, thinking);
                    messages.push(message);
                }
            }
        }
        "function_call_output" => {
            let call_id = string_field(item, "call_id", &param)?.to_owned();
            let content = match item.get("output") {
                Some(Value::String(text)) => MessageContent::Text(text.clone()),
                Some(Value::Array(parts)) => MessageContent::Parts(input_parts(parts, &format!("{param}.output"))?),
                _ => {
                    return Err(invalid(
                        format!("{param}.output"),
                        format!("{param}.output: a string or a list of parts is required"),
                    ));
                }
            };
            messages.push(ChatMessage {
                role: Role::Tool,
                content: Some(content),
                name: None,
                tool_calls: None,
                tool_call_id: Some(call_id),
                extra: Extra::new(),
            });
        }
        // Reasoning from an earlier turn: its text goes back with the turn
        // it led to, and Claude's own signed thinking, which the item
        // carries sealed.
        "reasoning" => {
            let sealed = item.get("encrypted_content").and_then(Value::as_str);
            if let Some(sealed) = sealed {
                thinking.blocks.extend(unseal(sealed));
            }
            let mut text = String::new();
            let parts = item.get("content").and_then(Value::as_array);
            for part in parts.into_iter().flatten() {
                if part.get("type").and_then(Value::as_str) == Some("reasoning_text")
                    && let Some(part_text) = part.get("text").and_then(Value::as_str)
                {
                    text.push_str(part_text);
                }
            }
            // A client that left the text out sent it sealed.
            if text.is_empty() {
                text = sealed.map(unseal_text).unwrap_or_default();
            }
            thinking.text.push_str(&text);
        }
        "item_reference" => {
            return Err(invalid(
                format!("{param}.type"),
                format!("{param}: item references are not supported by this gateway; send the item itself"),
            ));
        }
        other => {
            return Err(invalid(
                format!("{param}.type"),
                format!("{param}: `{other}` items are not supported by this gateway"),
            ));
        }
    }
    Ok(())
}

fn input_message(item: &Value, param: &str) -> Result<ChatMessage, ApiError> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        // `developer` is the Responses API's name for it; chat servers
        // other than OpenAI's (DeepSeek, vLLM's older templates) know only
        // `system`, which OpenAI's reasoning models read as `developer`.
        Some("system" | "developer") => Role::System,
        _ => {
            return Err(invalid(
                format!("{param}.role"),
                format!("{param}.role: `user`, `assistant`, `system` or `developer` is required"),
            ));
        }
    };
    let content = match item.get("content") {
        Some(Value::String(text)) => MessageContent::Text(text.clone()),
        Some(Value::Array(parts)) if role == Role::Assistant => {
            // Earlier output: its text (and refusals), as one string.
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let piece = match part.get("type").and_then(Value::as_str) {
                    Some("output_text" | "input_text" | "text") => part.get("text").and_then(Value::as_str),
                    Some("refusal") => part.get("refusal").and_then(Value::as_str),
                    _ => None,
                };
                let Some(piece) = piece else {
                    return Err(invalid(
                        format!("{param}.content[{j}]"),
                        format!("{param}.content[{j}]: an assistant message takes `output_text` and `refusal` parts"),
                    ));
                };
                text.push_str(piece);
            }
            MessageContent::Text(text)
        }
        Some(Value::Array(parts)) => MessageContent::Parts(input_parts(parts, &format!("{param}.content"))?),
        _ => {
            return Err(invalid(
                format!("{param}.content"),
                format!("{param}.content: a string or a list of parts is required"),
            ));
        }
    };
    Ok(ChatMessage::with_content(role, content))
}

/// Input parts (`input_text`, `input_image`, `input_file`, `input_audio`)
/// as chat content parts.
fn input_parts(parts: &[Value], param: &str) -> Result<Vec<ContentPart>, ApiError> {
    parts
        .iter()
        .enumerate()
        .map(|(j, part)| {
            let here = format!("{param}[{j}]");
            let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
            let mut extra = Extra::new();
            let (kind, text) = match kind {
                "input_text" | "output_text" | "text" => ("text", Some(string_field(part, "text", &here)?.to_owned())),
                "input_image" => {
                    let Some(url) = part.get("image_url").and_then(Value::as_str) else {
                        return Err(invalid(
                            format!("{here}.image_url"),
                            format!("{here}.image_url: an image URL (or data URL) is required; uploaded file ids are not supported by this gateway"),
                        ));
                    };
                    let mut image = Map::new();
                    image.insert("url".into(), json!(url));
                    if let Some(detail) = part.get("detail").filter(|d| !d.is_null()) {
                        image.insert("detail".into(), detail.clone());
                    }
                    extra.insert("image_url".into(), Value::Object(image));
                    ("image_url", None)
                }
                "input_file" => {
                    if part.get("file_url").is_some_and(|u| !u.is_null()) {
                        return Err(invalid(
                            format!("{here}.file_url"),
                            format!("{here}.file_url: file URLs are not supported by this gateway; send `file_data`"),
                        ));
                    }
                    let mut file = Map::new();
                    for key in ["file_data", "filename", "file_id"] {
                        if let Some(value) = part.get(key).filter(|v| !v.is_null()) {
                            file.insert(key.into(), value.clone());
                        }
                    }
                    if !file.contains_key("file_data") && !file.contains_key("file_id") {
                        return Err(invalid(
                            format!("{here}.file_data"),
                            format!("{here}: `file_data` (or `file_id`) is required"),
                        ));
                    }
                    extra.insert("file".into(), Value::Object(file));
                    ("file", None)
                }
                "input_audio" => {
                    let Some(audio) = part.get("input_audio").filter(|a| a.is_object()) else {
                        return Err(invalid(
                            format!("{here}.input_audio"),
                            format!("{here}.input_audio: an object with `data` and `format` is required"),
                        ));
                    };
                    extra.insert("input_audio".into(), audio.clone());
                    ("input_audio", None)
                }
                other => {
                    return Err(invalid(
                        format!("{here}.type"),
                        format!("{here}: `{other}` parts are not supported; use `input_text`, `input_image`, `input_file` or `input_audio`"),
                    ));
                }
            };
            Ok(ContentPart {
                kind: kind.into(),
                text,
                extra,
            })
        })
        .collect()
}

/// Chat messages written back as Responses input items, with ids made from
/// the response's (`msg_…_in0`, `fc_…_in1`, …).
pub(crate) fn input_items(messages: &[ChatMessage], response_id: &str) -> Vec<Value> {
    let suffix = response_id.strip_prefix("resp_").unwrap_or(response_id);
    let mut items = Vec::new();
    let id = |prefix: &str, items: &[Value]| format!("{prefix}_{suffix}_in{}", items.len());
    for message in messages {
        match message.role {
            Role::Tool => {
                let output = match &message.content {
                    Some(MessageContent::Parts(parts)) => Value::Array(parts.iter().map(input_part).collect()),
                    _ => Value::String(message.content_text()),
                };
                let item = json!({
                    "type": "function_call_output", "id": id("fco", &items),
                    "call_id": message.tool_call_id.clone().unwrap_or_default(),
                    "output": output, "status": "completed",
                });
                items.push(item);
            }
            Role::Assistant => {
                let text = message.content_text();
                if !text.is_empty() {
                    let item = json!({
                        "type": "message", "id": id("msg", &items), "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}],
                    });
                    items.push(item);
                }
                for call in message.tool_calls.iter().flatten() {
                    let Some(function) = &call.function else { continue };
                    let mut item = json!({
                        "type": "function_call", "id": id("fc", &items), "call_id": call.id,
                        "name": function.name, "arguments": function.arguments, "status": "completed",
                    });
                    if let Some(extra) = call.extra.get("extra_content") {
                        item["extra_content"] = extra.clone();
                    }
                    items.push(item);
                }
            }
            role => {
                let content = match &message.content {
                    Some(MessageContent::Parts(parts)) => parts.iter().map(input_part).collect(),
                    _ => vec![json!({"type": "input_text", "text": message.content_text()})],
                };
                let item = json!({
                    "type": "message", "id": id("msg", &items), "role": role, "status": "completed",
                    "content": content,
                });
                items.push(item);
            }
        }
    }
    items
}

/// A chat content part as a Responses input part.
fn input_part(part: &ContentPart) -> Value {
    match part.kind.as_str() {
        "image_url" => {
            let image = part.extra.get("image_url");
            json!({
                "type": "input_image",
                "image_url": image.and_then(|i| i.get("url")).cloned().unwrap_or(Value::Null),
                "detail": image.and_then(|i| i.get("detail")).cloned().unwrap_or(json!("auto")),
            })
        }
        "file" => {
            let mut out = part
                .extra
                .get("file")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            out.insert("type".into(), json!("input_file"));
            Value::Object(out)
        }
        "input_audio" => {
            json!({"type": "input_audio", "input_audio": part.extra.get("input_audio").cloned().unwrap_or(Value::Null)})
        }
        _ => json!({"type": "input_text", "text": part.text.clone().unwrap_or_default()}),
    }
}

/// A chat answer's usage as a response's.
pub(crate) fn response_usage(usage: &Usage) -> ResponseUsage {
    let reasoning = usage.reasoning_tokens();
    // Reasoning a server counted outside `completion_tokens` (xAI, Gemini)
    // is output, as charged: OpenAI's output tokens include it.
    let output = usage.generated_tokens();
    ResponseUsage {
        input_tokens: usage.prompt_tokens,
        input_tokens_details: InputTokensDetails {
            cached_tokens: usage.cached_prompt_tokens(),
            cache_write_tokens: usage.cache_write_tokens(),
        },
        output_tokens: output,
        output_tokens_details: OutputTokensDetails {
            reasoning_tokens: reasoning,
        },
        total_tokens: usage.prompt_tokens.saturating_add(output),
    }
}

/// The reasoning text of a chat message or delta (`reasoning_content` from
/// DeepSeek and vLLM, `reasoning` from newer vLLM and Ollama).
pub(crate) fn reasoning_text(extra: &Extra) -> Option<&str> {
    ["reasoning_content", "reasoning"]
        .iter()
        .find_map(|k| extra.get(*k).and_then(Value::as_str).filter(|t| !t.is_empty()))
}

/// The chat fields of a call that carried `extra_content` (Gemini's
/// thought signature, which must go back with the call).
pub(crate) fn call_extra(extra_content: Option<Value>) -> Extra {
    let mut extra = Extra::new();
    if let Some(content) = extra_content {
        extra.insert("extra_content".into(), content);
    }
    extra
}

/// A call's id, made up when the upstream gave none (a
/// `function_call_output` must name it).
pub(crate) fn call_id(id: String, echo: &Echo, n: usize) -> String {
    if id.is_empty() { echo.item_id("call", n) } else { id }
}

/// A call's arguments: `{}` for none (clients parse them as JSON).
pub(crate) fn arguments(arguments: String) -> String {
    if arguments.trim().is_empty() {
        "{}".into()
    } else {
        arguments
    }
}

/// The status and incomplete details of an answer that stopped for `reason`.
pub(crate) fn ending(reason: Option<&str>) -> (&'static str, Option<IncompleteDetails>) {
    let incomplete = |reason: &str| {
        Some(IncompleteDetails {
            reason: reason.to_owned(),
        })
    };
    match reason {
        // Mistral's `model_length`: the context window ran out first.
        Some("length" | "model_length") => ("incomplete", incomplete("max_output_tokens")),
        Some("content_filter") => ("incomplete", incomplete("content_filter")),
        _ => ("completed", None),
    }
}

/// A chat message's `annotations` (the citations of OpenAI's search models
/// and OpenRouter's web plugin: `{"type": "url_citation", "url_citation":
/// {…}}`) as the Responses API writes them on its text (`{"type":
/// "url_citation", "url", "title", "start_index", "end_index"}`); one of
/// another type the Responses API defines goes as it came, and others
/// (which typed clients would refuse) are left out.
fn annotations(chat: Option<&Value>) -> Vec<Value> {
    const TYPES: [&str; 4] = ["url_citation", "file_citation", "container_file_citation", "file_path"];
    let Some(Value::Array(list)) = chat else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|annotation| {
            let kind = annotation.get("type").and_then(Value::as_str)?;
            match annotation.get(kind) {
                Some(Value::Object(nested)) if kind == "url_citation" => {
                    let mut flat = nested.clone();
                    flat.insert("type".into(), json!(kind));
                    Some(Value::Object(flat))
                }
                _ => TYPES.contains(&kind).then(|| annotation.clone()),
            }
        })
        .collect()
}

/// The response object of a chat completion.
pub(crate) fn from_chat(chat: ChatCompletionResponse, echo: &Echo) -> ResponseObject {
    let mut object = echo.object("completed");
    // A server that names no model leaves the one asked for.
    if !chat.model.is_empty() {
        object.model = chat.model;
    }
    object.usage = chat.usage.as_ref().map(response_usage);
    let Some(choice) = chat.choices.into_iter().find(|c| c.index == 0) else {
        // No answer at all (a filtered prompt): nothing came of it.
        let (status, details) = ending(Some("content_filter"));
        object.status = status.into();
        object.incomplete_details = details;
        return object;
    };
    let (status, details) = ending(choice.finish_reason.as_deref());
    let item_status = if status == "completed" {
        "completed"
    } else {
        "incomplete"
    };
    object.status = status.into();
    object.incomplete_details = details;
    let mut message = choice.message;
    message.lift_thinking_parts();
    let reasoning = reasoning_text(&message.extra);
    let sealed = match message.extra.get("thinking_blocks") {
        Some(Value::Array(blocks)) => seal(blocks),
        _ => reasoning.and_then(seal_text),
    };
    if reasoning.is_some() || sealed.is_some() {
        object.output.push(OutputItem::Reasoning {
            id: echo.item_id("rs", 0),
            summary: reasoning
                .filter(|_| echo.wants_summary())
                .map(|text| json!({"type": "summary_text", "text": text}))
                .into_iter()
                .collect(),
            content: reasoning
                .map(|text| ReasoningText {
                    kind: "reasoning_text".into(),
                    text: text.to_owned(),
                })
                .into_iter()
                .collect(),
            encrypted_content: sealed,
            status: item_status.into(),
        });
    }
    let mut content = Vec::new();
    let text = message.content_text();
    if !text.is_empty() {
        content.push(OutputContent::OutputText {
            text,
            annotations: annotations(message.extra.get("annotations")),
        });
    }
    if let Some(refusal) = message
        .extra
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        content.push(OutputContent::Refusal {
            refusal: refusal.to_owned(),
        });
    }
    if !content.is_empty() {
        object.output.push(OutputItem::Message {
            id: echo.item_id("msg", 0),
            role: "assistant".into(),
            status: item_status.into(),
            content,
        });
    }
    for (n, mut call) in message.tool_calls.unwrap_or_default().into_iter().enumerate() {
        let Some(function) = call.function else { continue };
        object.output.push(OutputItem::FunctionCall {
            id: echo.item_id("fc", n + 1),
            call_id: call_id(call.id, echo, n + 1),
            name: function.name,
            arguments: arguments(function.arguments),
            status: item_status.into(),
            extra_content: call.extra.remove("extra_content"),
        });
    }
    object
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;

    fn echo() -> Echo {
        Echo {
            id: "resp_abc".into(),
            created_at: 1,
            model: "m".into(),
            fields: Extra::new(),
        }
    }

    fn translate(body: Value) -> Result<ChatCompletionRequest, ApiError> {
        to_chat(serde_json::from_value(body).unwrap(), Vec::new(), &mut echo())
    }

    fn param(err: ApiError) -> Option<String> {
        err.parts().2
    }

    /// Reasoning text goes back as the `reasoning_content` of the assistant
    /// turn it led to (DeepSeek and Kimi want it on a turn that called
    /// tools; the OpenAI provider leaves it out for servers that refuse it).
    #[test]
    fn reasoning_text_goes_back_with_the_turn_it_led_to() {
        let chat = translate(json!({"model": "m", "input": [
            {"role": "user", "content": "weather?"},
            {"type": "reasoning", "id": "rs_1", "summary": [],
                "content": [{"type": "reasoning_text", "text": "I should call the tool."}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "reasoning", "id": "rs_2", "summary": [],
                "content": [{"type": "reasoning_text", "text": "Now answer."}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
            {"role": "user", "content": "thanks"}
        ]}))
        .unwrap();
        let body = serde_json::to_value(&chat).unwrap();
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages[1]["tool_calls"][0]["id"], "c1", "{body}");
        assert_eq!(messages[1]["reasoning_content"], "I should call the tool.", "{body}");
        assert_eq!(messages[3]["content"], "Sunny.", "{body}");
        assert_eq!(messages[3]["reasoning_content"], "Now answer.", "{body}");
        assert!(messages[4].get("reasoning_content").is_none(), "{body}");
        assert!(messages.iter().all(|m| m.get("thinking_blocks").is_none()), "{body}");
    }

    /// A refused field sent as `null` is one left out: not refused, and not
    /// passed on (a `messages: null` would be a second `messages` upstream).
    #[test]
    fn refused_fields_sent_as_null_are_left_out() {
        let chat = translate(json!({"model": "m", "input": "hi", "messages": null, "prompt": null,
            "conversation": null, "n": null}))
        .unwrap();
        let text = serde_json::to_string(&chat).unwrap();
        assert_eq!(text.matches("\"messages\"").count(), 1, "{text}");
        for name in ["\"prompt\"", "\"conversation\"", "\"n\""] {
            assert!(!text.contains(name), "{text}");
        }
        let err = translate(json!({"model": "m", "input": "hi", "prompt": {"id": "p"}})).unwrap_err();
        assert_eq!(param(err).as_deref(), Some("prompt"));
    }

    /// A call's arguments sent as an object are encoded as the string chat
    /// takes; two assistant messages in a row keep apart.
    #[test]
    fn object_arguments_are_encoded_and_assistant_texts_kept_apart() {
        let chat = translate(json!({"model": "m", "input": [
            {"role": "user", "content": "weather?"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Done."}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"}
        ]}))
        .unwrap();
        let body = serde_json::to_value(&chat).unwrap();
        assert_eq!(body["messages"][1]["content"], "Checking.\nDone.", "{body}");
        let arguments = body["messages"][1]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(arguments).unwrap(),
            json!({"city": "Paris"})
        );
        let err = translate(json!({"model": "m", "input": [
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": 3}
        ]}))
        .unwrap_err();
        assert_eq!(param(err).as_deref(), Some("input[0].arguments"));
    }

    /// A chat answer's citations are its output text's annotations.
    #[test]
    fn citations_become_annotations() {
        let chat: ChatCompletionResponse = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                "content": "See the docs.",
                "annotations": [{"type": "url_citation", "url_citation":
                    {"start_index": 4, "end_index": 12, "url": "https://example.com", "title": "Docs"}},
                    {"type": "file", "file": {"hash": "x"}}, "odd"]}}]
        }))
        .unwrap();
        let object = serde_json::to_value(from_chat(chat, &echo())).unwrap();
        let annotations = &object["output"][0]["content"][0]["annotations"];
        assert_eq!(annotations.as_array().map(Vec::len), Some(1), "{object}");
        let annotation = &annotations[0];
        assert_eq!(
            annotation,
            &json!({"type": "url_citation", "start_index": 4, "end_index": 12, "url": "https://example.com", "title": "Docs"}),
            "{object}"
        );
    }

    /// `developer` messages go as `system`, which every chat server takes.
    #[test]
    fn a_developer_message_is_a_system_message() {
        let chat = translate(json!({"model": "m", "input": [
            {"role": "developer", "content": "answer in French"},
            {"role": "user", "content": "hi"}
        ]}))
        .unwrap();
        let body = serde_json::to_value(&chat).unwrap();
        assert_eq!(body["messages"][0]["role"], "system", "{body}");
        assert_eq!(body["messages"][0]["content"], "answer in French");
    }

    #[test]
    fn a_conversation_with_calls_and_outputs_becomes_chat_messages() {
        let chat = translate(json!({
            "model": "m",
            "instructions": "be brief",
            "input": [
                {"role": "user", "content": "weather?"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"q\":\"Paris\"}"},
                {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{\"q\":\"Rome\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
                {"role": "user", "content": [
                    {"type": "input_text", "text": "and this?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}
                ]}
            ],
            "max_output_tokens": 64,
            "temperature": 0.2,
        }))
        .unwrap();
        let body = serde_json::to_value(&chat).unwrap();
        let roles: Vec<&str> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "tool", "user"]);
        let assistant = &body["messages"][2];
        assert_eq!(assistant["content"], "Checking.");
        assert_eq!(assistant["tool_calls"][1]["id"], "c2");
        assert_eq!(assistant["tool_calls"][1]["function"]["arguments"], "{\"q\":\"Rome\"}");
        assert_eq!(body["messages"][3]["tool_call_id"], "c1");
        assert_eq!(
            body["messages"][4]["content"][0],
            json!({"type": "text", "text": "rain"})
        );
        assert_eq!(
            body["messages"][5]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}})
        );
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(body["temperature"], 0.2);
        assert!(body.get("max_output_tokens").is_none() && body.get("instructions").is_none());
    }

    #[test]
    fn text_after_calls_joins_their_turn_and_partial_settings_show_their_defaults() {
        let mut echo = echo();
        let chat = to_chat(
            serde_json::from_value(json!({
                "model": "m",
                "input": [
                    {"role": "user", "content": "go"},
                    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Calling."}]},
                    {"type": "function_call_output", "call_id": "c1", "output": "done"}
                ],
                "text": {"verbosity": "low"},
                "reasoning": {"effort": "low"}
            }))
            .unwrap(),
            Vec::new(),
            &mut echo,
        )
        .unwrap();
        let roles: Vec<Role> = chat.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::User, Role::Assistant, Role::Tool]);
        assert_eq!(chat.messages[1].content_text(), "Calling.");
        assert_eq!(chat.messages[1].tool_calls.as_ref().unwrap()[0].id, "c1");
        assert_eq!(
            echo.fields["text"],
            json!({"verbosity": "low", "format": {"type": "text"}})
        );
        assert_eq!(echo.fields["reasoning"], json!({"effort": "low", "summary": null}));
    }

    #[test]
    fn thinking_is_sealed_for_the_client_and_read_back_only_when_ours() {
        let blocks = vec![json!({"type": "thinking", "thinking": "t", "signature": "s"})];
        let sealed = seal(&blocks).unwrap();
        assert_eq!(unseal(&sealed), blocks);
        assert!(unseal("gAAAAB-someone-elses").is_empty());
        assert!(seal(&[]).is_none());
        // Other models' reasoning text, sealed apart from Claude's blocks.
        let text = seal_text("step one").unwrap();
        assert!(unseal(&text).is_empty());
        assert_eq!(unseal_text(&text), "step one");
        assert_eq!(unseal_text(&sealed), "");
        assert!(seal_text("").is_none());
    }

    #[test]
    fn tools_choices_and_formats_are_written_the_chat_way() {
        let chat = translate(json!({
            "model": "m",
            "input": "hi",
            "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}, "verbosity": "low"},
            "reasoning": {"effort": "high", "summary": "auto"},
            "include": ["reasoning.encrypted_content"],
            "store": false,
            "stream": true,
        }))
        .unwrap();
        let body = serde_json::to_value(&chat).unwrap();
        assert_eq!(
            body["tools"][0],
            json!({"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true}})
        );
        assert_eq!(
            body["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(body["response_format"]["json_schema"]["name"], "out");
        assert_eq!(body["verbosity"], "low");
        assert_eq!(body["reasoning_effort"], "high");
        assert_eq!(body["stream_options"]["include_usage"], true);
        for gone in ["include", "store", "text", "reasoning"] {
            assert!(body.get(gone).is_none(), "{gone} is not a chat parameter: {body}");
        }
    }

    #[test]
    fn what_cannot_be_served_is_refused_naming_the_field() {
        let cases = [
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": "x", "tool_choice": {"type": "file_search"}}),
                "tool_choice",
            ),
            (
                json!({"model": "m", "input": "x", "background": true, "stream": true}),
                "stream",
            ),
            (
                json!({"model": "m", "input": "x", "background": true, "store": false}),
                "store",
            ),
            (
                json!({"model": "m", "input": "x", "conversation": "conv_1"}),
                "conversation",
            ),
            (
                json!({"model": "m", "input": "x", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}),
                "text.format.type",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": [{"type": "web_search_call"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": [{"role": "robot", "content": "x"}]}),
                "input[0].role",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "input[0].content[0].image_url",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call", "name": "f"}]}),
                "input[0].call_id",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}),
                "input[0].output",
            ),
            (json!({"model": "m", "input": []}), "input"),
            (json!({"model": "m", "instructions": "only this"}), "input"),
            (
                json!({"model": "m", "input": "x", "tools": [], "tool_choice": "required"}),
                "tool_choice",
            ),
        ];
        for (body, field) in cases {
            let err = translate(body.clone()).expect_err(&body.to_string());
            assert_eq!(param(err).as_deref(), Some(field), "{body}");
        }
    }

    #[test]
    fn a_chat_answer_becomes_a_response_with_its_items_and_usage() {
        let chat: ChatCompletionResponse = serde_json::from_value(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 5, "model": "up-model",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me check.", "reasoning_content": "thinking",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
            }}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                      "prompt_tokens_details": {"cached_tokens": 3},
                      "completion_tokens_details": {"reasoning_tokens": 2}}
        }))
        .unwrap();
        let mut summarised = echo();
        summarised
            .fields
            .insert("reasoning".into(), json!({"effort": "low", "summary": "auto"}));
        let with_summary = serde_json::to_value(from_chat(chat.clone(), &summarised)).unwrap();
        assert_eq!(
            with_summary["output"][0]["summary"],
            json!([{"type": "summary_text", "text": "thinking"}])
        );
        let object = from_chat(chat, &echo());
        let value = serde_json::to_value(&object).unwrap();
        // Without `reasoning.summary` there is none.
        assert_eq!(value["output"][0]["summary"], json!([]));
        assert_eq!(value["status"], "completed");
        assert_eq!(value["model"], "up-model");
        let kinds: Vec<&str> = value["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["reasoning", "message", "function_call"]);
        assert_eq!(value["output"][1]["content"][0]["text"], "Let me check.");
        assert_eq!(value["output"][2]["call_id"], "call_1");
        assert_eq!(value["output"][2]["id"], "fc_abc_1");
        assert_eq!(
            value["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 0}, "output_tokens": 4,
                   "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 14})
        );
        // xAI's count, reasoning outside `completion_tokens`: output holds it.
        let xai: Usage =
            serde_json::from_value(json!({"prompt_tokens": 32, "completion_tokens": 9, "total_tokens": 135,
            "completion_tokens_details": {"reasoning_tokens": 94}}))
            .unwrap();
        let usage = serde_json::to_value(response_usage(&xai)).unwrap();
        assert_eq!(
            (&usage["output_tokens"], &usage["total_tokens"]),
            (&json!(103), &json!(135))
        );

        let bare: ChatCompletionResponse = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]
        }))
        .unwrap();
        let value = serde_json::to_value(from_chat(bare, &echo())).unwrap();
        assert_eq!(value["output"][0]["arguments"], "{}");
        assert_eq!(value["output"][0]["call_id"], "call_abc_1");

        let cut: ChatCompletionResponse = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "partial"}}]
        }))
        .unwrap();
        let value = serde_json::to_value(from_chat(cut, &echo())).unwrap();
        assert_eq!(value["status"], "incomplete");
        assert_eq!(value["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(value["output"][0]["status"], "incomplete");

        // A server that names no model: the response keeps the one asked for.
        let anonymous: ChatCompletionResponse = serde_json::from_value(json!({
            "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}]
        }))
        .unwrap();
        let value = serde_json::to_value(from_chat(anonymous, &echo())).unwrap();
        assert_eq!(value["model"], "m");
        assert_eq!(value["output"][0]["content"][0]["text"], "hi");
    }
}
