//! OpenAI chat requests → Anthropic Messages requests, and Anthropic responses →
//! OpenAI chat responses.

use serde_json::{Value, json};
use switchyard_api::anthropic::{
    Content, ContentBlock, Message, MessageRole, MessagesRequest, MessagesResponse, MessagesUsage, Tool,
};
use switchyard_api::{
    ChatCompletionRequest, ChatCompletionResponse, ChatMessage, ContentPart, Extra, MessageContent, Role, ToolCall,
    Usage,
};

use crate::chunks::{chat_response, tool_call, tool_use_id};
use crate::json_mode::{JSON_TOOL, forbids_tools, json_finish, json_tool, offers_tools, tool_input_schema};
use crate::reasoning;
use crate::{ProviderError, Result};

fn invalid(message: impl Into<String>, param: &str) -> ProviderError {
    ProviderError::InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// OpenAI parameters that have no Anthropic equivalent and change the answer's
/// shape: rejected rather than silently dropped.
/// The legacy `functions` and `function_call` are among them.
pub(crate) const REJECTED: &[&str] = &[
    "logprobs",
    "top_logprobs",
    "audio",
    "modalities",
    "prediction",
    "functions",
    "function_call",
];

/// Whether the conversation holds tool calls or their results.
fn holds_tool_turns(req: &ChatCompletionRequest) -> bool {
    req.messages
        .iter()
        .any(|m| matches!(m.role, Role::Tool | Role::Function) || m.tool_calls.as_ref().is_some_and(|c| !c.is_empty()))
}

/// Whether `value` of parameter `key` asks for what Anthropic and Bedrock
/// cannot give: `null`, `false`, `modalities: ["text"]` (OpenAI's default,
/// which some clients send) and `top_logprobs: 0` ask for nothing.
pub(crate) fn asks_for_rejected(key: &str, value: &Value) -> bool {
    if !REJECTED.contains(&key) || value.is_null() || value == &Value::Bool(false) {
        return false;
    }
    match key {
        "modalities" => !value
            .as_array()
            .is_some_and(|m| m.iter().all(|v| v.as_str() == Some("text"))),
        "top_logprobs" => value.as_u64() != Some(0),
        _ => true,
    }
}

/// The request as a deployment sends it: without what it cannot express
/// when it drops parameters (`drop_params`), else as it came.
pub(crate) fn as_sent(req: &ChatCompletionRequest, drop_params: bool) -> std::borrow::Cow<'_, ChatCompletionRequest> {
    if !drop_params {
        return std::borrow::Cow::Borrowed(req);
    }
    let dropped = without_rejected(req);
    // A forced tool to a Claude model that always thinks goes as `auto`.
    match reasoning::without_forced_choice(dropped.as_ref().unwrap_or(req)).or(dropped) {
        Some(changed) => std::borrow::Cow::Owned(changed),
        None => std::borrow::Cow::Borrowed(req),
    }
}

/// `req` without the parameters Anthropic and Bedrock cannot express
/// ([`REJECTED`], and `n` above 1), for a deployment set to drop them
/// (`drop_params`) rather than refuse them; `None` when it has none.
pub(crate) fn without_rejected(req: &ChatCompletionRequest) -> Option<ChatCompletionRequest> {
    let rejected = |key: &str, value: &Value| {
        asks_for_rejected(key, value) || (key == "n" && value.as_u64().is_some_and(|n| n > 1))
    };
    if !req.extra.iter().any(|(k, v)| rejected(k, v)) {
        return None;
    }
    let mut copy = req.clone();
    copy.extra.retain(|k, v| {
        let drop = rejected(k, v);
        if drop {
            tracing::debug!(parameter = %k, "a parameter this provider cannot express is dropped (drop_params)");
        }
        !drop
    });
    Some(copy)
}

/// An image part's URL as an Anthropic image source. A data URL must be
/// base64; its media type is the one its bytes show (Anthropic checks
/// them, OpenAI ignores the declared type), else the declared one.
fn image_source(url: &str, param: &str) -> Result<Value> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((media_type, data)) = rest
            .split_once(',')
            .and_then(|(meta, data)| Some((meta.strip_suffix(";base64")?, data)))
        else {
            return Err(invalid(
                "an image data URL must be base64: `data:<type>;base64,<data>`",
                param,
            ));
        };
        // Anthropic takes the standard alphabet, padded, on one line.
        let data = crate::media::standard_base64(data)
            .map_err(|e| invalid(format!("an image data URL's data is not base64: {e}"), param))?;
        let media_type = crate::media::image_type(media_type, &data);
        return Ok(json!({"type": "base64", "media_type": media_type, "data": data}));
    }
    Ok(json!({"type": "url", "url": url}))
}

/// A PDF (or plain text) as a base64 data URL, as an Anthropic `document`
/// block.
fn document_block(url: &str, param: &str) -> Result<ContentBlock> {
    let parsed = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(','))
        .and_then(|(meta, data)| Some((meta.strip_suffix(";base64")?, data)));
    match parsed {
        Some((media_type, data)) if crate::media::essence(media_type).eq_ignore_ascii_case("application/pdf") => {
            let data = crate::media::standard_base64(data)
                .map_err(|e| invalid(format!("a PDF data URL's data is not base64: {e}"), param))?;
            Ok(ContentBlock {
                kind: "document".into(),
                source: Some(json!({"type": "base64", "media_type": "application/pdf", "data": data})),
                ..ContentBlock::default()
            })
        }
        // Anthropic takes base64 for PDFs only: text goes as a text source.
        Some((media_type, data)) if crate::media::essence(media_type).eq_ignore_ascii_case("text/plain") => {
            let text = crate::media::decode_base64(data.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| invalid("a plain text file must be UTF-8 text in base64", param))?;
            Ok(ContentBlock {
                kind: "document".into(),
                source: Some(json!({"type": "text", "media_type": "text/plain", "data": text})),
                ..ContentBlock::default()
            })
        }
        _ => Err(invalid(
            "a file must be a base64 data URL of a PDF or plain text (`data:application/pdf;base64,…`); file ids are not supported by this provider",
            param,
        )),
    }
}

/// An OpenAI content part as an Anthropic block.
fn part_to_block(part: &ContentPart, param: &str) -> Result<ContentBlock> {
    match part.kind.as_str() {
        "text" => Ok(with_cache_mark(
            ContentBlock::text(part.text.clone().unwrap_or_default()),
            part,
        )),
        "image_url" => {
            let url = part
                .extra
                .get("image_url")
                .and_then(|i| i.get("url").or(Some(i)))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("an image_url part needs `image_url.url`", param))?;
            // A PDF sent as an image URL is a document to Claude.
            let block = if url
                .get(..20)
                .is_some_and(|p| p.eq_ignore_ascii_case("data:application/pdf"))
            {
                document_block(url, param)?
            } else {
                ContentBlock {
                    kind: "image".into(),
                    source: Some(image_source(url, param)?),
                    ..ContentBlock::default()
                }
            };
            Ok(with_cache_mark(block, part))
        }
        // OpenAI's file part: `file_data` holds the file as a data URL.
        "file" => {
            let data = part
                .extra
                .get("file")
                .and_then(|f| f.get("file_data"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    invalid(
                        "a file part needs `file.file_data` (a base64 data URL); file ids are not supported by this provider",
                        param,
                    )
                })?;
            Ok(with_cache_mark(document_block(data, param)?, part))
        }
        other => Err(invalid(
            format!("content parts of type `{other}` are not supported by this provider"),
            param,
        )),
    }
}

/// `block` with the part's `cache_control`, if it has one.
fn with_cache_mark(mut block: ContentBlock, part: &ContentPart) -> ContentBlock {
    if let Some(cache) = part.extra.get("cache_control").filter(|c| !c.is_null()) {
        block.extra.insert("cache_control".into(), cache.clone());
    }
    block
}

/// A message's content as blocks with the message's own `cache_control`
/// (as LiteLLM takes it, for content sent as a string) on its last block.
fn message_blocks(message: &ChatMessage, param: &str) -> Result<Vec<ContentBlock>> {
    let mut blocks = content_blocks(&message.content, param)?;
    mark_last(&mut blocks, message);
    Ok(blocks)
}

/// Puts a message's `cache_control` on the last of its blocks that has none
/// (a thinking block takes none).
fn mark_last(blocks: &mut [ContentBlock], message: &ChatMessage) {
    if let Some(mark) = message.extra.get("cache_control").filter(|c| !c.is_null())
        && let Some(last) = blocks.last_mut()
        && !matches!(last.kind.as_str(), "thinking" | "redacted_thinking")
        && !last.extra.contains_key("cache_control")
    {
        last.extra.insert("cache_control".into(), mark.clone());
    }
}

/// A message's content as blocks; blank text is left out (Anthropic
/// refuses text blocks without non-whitespace text).
fn content_blocks(content: &Option<MessageContent>, param: &str) -> Result<Vec<ContentBlock>> {
    let blank = |text: &str| text.trim().is_empty();
    match content {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(text)) if blank(text) => Ok(Vec::new()),
        Some(MessageContent::Text(text)) => Ok(vec![ContentBlock::text(text.clone())]),
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .enumerate()
            .filter(|(_, p)| !(p.kind == "text" && p.text.as_deref().is_none_or(blank)))
            .map(|(i, p)| part_to_block(p, &format!("{param}[{i}]")))
            .collect(),
    }
}

/// Appends blocks as a message of `role`, merging with the previous message of
/// the same role (Anthropic requires alternating roles).
fn push(messages: &mut Vec<Message>, role: MessageRole, blocks: Vec<ContentBlock>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = messages.last_mut()
        && last.role == role
    {
        let previous = std::mem::replace(&mut last.content, Content::Blocks(Vec::new()));
        let mut merged = previous.into_blocks();
        merged.extend(blocks);
        // Claude refuses an assistant message whose thinking does not open
        // it: two assistant messages in a row (text, then a tool call with
        // its thinking) keep the thinking first.
        if role == MessageRole::Assistant {
            merged.sort_by_key(|b| !is_thinking(b));
        }
        last.content = Content::Blocks(merged);
        return;
    }
    messages.push(Message {
        role,
        content: Content::Blocks(blocks),
    });
}

fn is_thinking(block: &ContentBlock) -> bool {
    block.kind == "thinking" || block.kind == "redacted_thinking"
}

/// The user turn put before a conversation that opens with the assistant.
const OPENING_USER_TURN: &str = ".";

/// Anthropic refuses a final assistant message (a prefill) whose text
/// ends in whitespace: the trailing whitespace is left out.
fn trim_final_assistant(messages: &mut Vec<Message>) {
    let Some(last) = messages.last_mut().filter(|m| m.role == MessageRole::Assistant) else {
        return;
    };
    let Content::Blocks(blocks) = &mut last.content else {
        return;
    };
    if let Some(block) = blocks.last_mut().filter(|b| b.kind == "text")
        && let Some(text) = block.text.as_mut()
    {
        let kept = text.trim_end().len();
        text.truncate(kept);
    }
    // Blank text never gets here (it is left out), but stay safe.
    if blocks
        .last()
        .is_some_and(|b| b.kind == "text" && b.text.as_deref().is_none_or(str::is_empty))
    {
        blocks.pop();
    }
    if blocks.is_empty() {
        messages.pop();
    }
}

fn tool_use_blocks(calls: &[ToolCall], param: &str) -> Result<Vec<ContentBlock>> {
    calls
        .iter()
        .enumerate()
        .map(|(i, call)| {
            let function = call.function.as_ref().ok_or_else(|| {
                invalid(
                    "only `function` tool calls can be sent to this model",
                    &format!("{param}[{i}].function"),
                )
            })?;
            let arguments = if function.arguments.trim().is_empty() {
                "{}"
            } else {
                &function.arguments
            };
            let input: Value = serde_json::from_str(arguments).map_err(|e| {
                invalid(
                    format!("tool call arguments are not valid JSON: {e}"),
                    &format!("{param}[{i}].function.arguments"),
                )
            })?;
            // Some servers write `null` for a call without arguments;
            // Anthropic takes an object only.
            let input = match input {
                Value::Null => json!({}),
                Value::Object(_) => input,
                _ => {
                    return Err(invalid(
                        "tool call arguments must be a JSON object",
                        &format!("{param}[{i}].function.arguments"),
                    ));
                }
            };
            Ok(ContentBlock {
                kind: "tool_use".into(),
                id: Some(tool_use_id(&call.id)),
                name: Some(function.name.clone()),
                input: Some(input),
                ..ContentBlock::default()
            })
        })
        .collect()
}

fn convert_tools(tools: &Value) -> Result<Vec<Tool>> {
    let list = tools
        .as_array()
        .ok_or_else(|| invalid("`tools` must be an array", "tools"))?;
    list.iter()
        .enumerate()
        .map(|(i, tool)| {
            let function = tool
                .get("function")
                .ok_or_else(|| invalid("only tools of type `function` are supported", &format!("tools[{i}]")))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("a tool needs `function.name`", &format!("tools[{i}].function.name")))?;
            // A cache mark on the tool (LiteLLM's form) makes the tool
            // definitions up to it a cached prefix.
            let mut extra = Extra::new();
            if let Some(mark) = tool.get("cache_control").filter(|c| !c.is_null()) {
                extra.insert("cache_control".into(), mark.clone());
            }
            Ok(Tool {
                name: name.to_owned(),
                description: function.get("description").and_then(Value::as_str).map(str::to_owned),
                input_schema: Some(tool_input_schema(function.get("parameters"))),
                extra,
            })
        })
        .collect()
}

fn convert_tool_choice(choice: &Value, parallel: Option<bool>) -> Result<Value> {
    let mut converted = match choice {
        Value::String(s) if s == "auto" => json!({"type": "auto"}),
        Value::String(s) if s == "none" => json!({"type": "none"}),
        Value::String(s) if s == "required" => json!({"type": "any"}),
        Value::Object(o) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("`tool_choice` must name a function", "tool_choice"))?;
            json!({"type": "tool", "name": name})
        }
        _ => {
            return Err(invalid(
                "`tool_choice` must be auto, none, required or a function",
                "tool_choice",
            ));
        }
    };
    if parallel == Some(false) && converted["type"] != "none" {
        converted["disable_parallel_tool_use"] = json!(true);
    }
    Ok(converted)
}

/// Builds the Anthropic request for an OpenAI chat request.
///
/// `max_tokens` (or `max_completion_tokens`) is required by Anthropic; when the
/// client sends neither, `default_max_tokens` is used. Temperatures above 1 are
/// clamped to Anthropic's maximum of 1.
pub fn to_messages_request(req: &ChatCompletionRequest, default_max_tokens: u32) -> Result<MessagesRequest> {
    for key in REJECTED {
        if req.extra.get(*key).is_some_and(|v| asks_for_rejected(key, v)) {
            return Err(invalid(format!("`{key}` is not supported by this provider"), key));
        }
    }
    if req.extra.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(invalid("only one choice (`n` = 1) is supported by this provider", "n"));
    }
    reasoning::check_tool_choice(req)?;
    let thinking = reasoning::requested(req)?;
    // Models that think by default hand their blocks back (they go unsent
    // below when thinking is off after all).
    let keep_blocks = thinking.is_some() || reasoning::thinks_by_default(&req.model);
    // Anthropic refuses `tool_use` and `tool_result` blocks in a request that
    // defines no tools (a summary or compaction turn of an agent's history):
    // without tools, earlier calls and results go as text.
    let defines_tools = req
        .extra
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
        || req
            .extra
            .get("response_format")
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str)
            .is_some_and(|t| t != "text");
    let mut system = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    let instructions_after = crate::chunks::instructions_after_assistant(&req.messages);
    for (i, message) in req.messages.iter().enumerate() {
        let param = format!("messages[{i}].content");
        match message.role {
            // Instructions after the assistant's last word ask for its next
            // one: a user turn, not a prefill for Claude to continue.
            Role::System | Role::Developer if i >= instructions_after => {
                push(&mut messages, MessageRole::User, message_blocks(message, &param)?)
            }
            Role::System | Role::Developer => system.extend(message_blocks(message, &param)?),
            Role::User => {
                let mut blocks = message_blocks(message, &param)?;
                // A blank user turn (Anthropic refuses blank text) after the
                // assistant is still a turn: left out, it would make the
                // assistant's message a prefill to continue, or merge it with
                // the next one. Not before tool results, which must open
                // their user message.
                let next = req.messages[i + 1..]
                    .iter()
                    .find(|m| !matches!(m.role, Role::System | Role::Developer));
                if blocks.is_empty()
                    && messages.last().is_some_and(|m| m.role == MessageRole::Assistant)
                    && next.is_none_or(|m| m.role != Role::Tool)
                {
                    blocks.push(ContentBlock::text(OPENING_USER_TURN));
                }
                push(&mut messages, MessageRole::User, blocks);
            }
            Role::Assistant => {
                // Claude's own thinking goes back first, as it came (a turn
                // that answers a tool call needs it when thinking is on).
                let mut blocks: Vec<ContentBlock> = if keep_blocks {
                    reasoning::blocks_of(message)
                        .into_iter()
                        .filter_map(|b| serde_json::from_value(b).ok())
                        .collect()
                } else {
                    Vec::new()
                };
                blocks.extend(content_blocks(&message.content, &param)?);
                if let Some(calls) = &message.tool_calls {
                    // Checked either way: calls Claude could not take are
                    // refused, not passed off as text.
                    let uses = tool_use_blocks(calls, &format!("messages[{i}].tool_calls"))?;
                    if defines_tools {
                        blocks.extend(uses);
                    } else {
                        blocks.extend(calls.iter().filter_map(|call| call.function.as_ref()).map(|f| {
                            ContentBlock::text(format!("[called the tool `{}` with {}]", f.name, f.arguments))
                        }));
                    }
                }
                mark_last(&mut blocks, message);
                push(&mut messages, MessageRole::Assistant, blocks);
            }
            Role::Function => {
                return Err(invalid(
                    "legacy `function` messages are not supported by this provider; send tool calls and `tool` messages",
                    &format!("messages[{i}].role"),
                ));
            }
            Role::Tool => {
                let id = message.tool_call_id.as_deref().ok_or_else(|| {
                    invalid(
                        "a tool message needs `tool_call_id`",
                        &format!("messages[{i}].tool_call_id"),
                    )
                })?;
                if !defines_tools {
                    let text = format!("[result of the tool call {id}: {}]", message.content_text());
                    push(&mut messages, MessageRole::User, vec![ContentBlock::text(text)]);
                    continue;
                }
                // Parts (text and images, e.g. a screenshot a computer-use
                // tool returns) go as blocks. Anthropic refuses a cache mark
                // inside a tool result's content: a part's mark moves up to
                // the result (the last one, the breakpoint furthest on).
                let mut part_mark = None;
                let content = match &message.content {
                    Some(MessageContent::Parts(_)) => {
                        let mut blocks = content_blocks(&message.content, &format!("messages[{i}].content"))?;
                        for inner in &mut blocks {
                            if let Some(mark) = inner.extra.remove("cache_control").filter(|c| !c.is_null()) {
                                part_mark = Some(mark);
                            }
                        }
                        Content::Blocks(blocks)
                    }
                    _ => Content::Text(message.content_text()),
                };
                // A tool that printed nothing: Anthropic refuses empty
                // text, and a result's content is optional.
                let empty = match &content {
                    Content::Text(text) => text.trim().is_empty(),
                    Content::Blocks(blocks) => blocks.is_empty(),
                    Content::Other(_) => false,
                };
                let mut block = ContentBlock {
                    kind: "tool_result".into(),
                    tool_use_id: Some(tool_use_id(id)),
                    content: (!empty).then_some(content),
                    ..ContentBlock::default()
                };
                // A cache mark on the message itself (an agent marking its
                // last tool result as the cache breakpoint) goes on the result.
                if let Some(cache) = message
                    .extra
                    .get("cache_control")
                    .filter(|c| !c.is_null())
                    .cloned()
                    .or(part_mark)
                {
                    block.extra.insert("cache_control".into(), cache);
                }
                push(&mut messages, MessageRole::User, vec![block]);
            }
        }
    }
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| req.extra.get(*k).and_then(Value::as_u64))
        .map_or(default_max_tokens, |v| v.min(u64::from(u32::MAX)) as u32);
    let max_tokens = reasoning::within_claude_output(max_tokens, &req.model);
    // Anthropic refuses a stop sequence without non-whitespace (`"\n"`,
    // common from OpenAI clients): such sequences are left out.
    let stop_sequences: Option<Vec<String>> = match req.extra.get("stop") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(vec![s.clone()]),
        Some(Value::Array(items)) => Some(items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()),
        Some(_) => return Err(invalid("`stop` must be a string or an array of strings", "stop")),
    }
    .map(|all| {
        let kept: Vec<String> = all.into_iter().filter(|s| !s.trim().is_empty()).collect();
        if kept.is_empty() {
            tracing::debug!("blank stop sequences are left out: Anthropic refuses them");
        }
        kept
    })
    .filter(|kept| !kept.is_empty());
    let tools = req
        .extra
        .get("tools")
        .filter(|t| !t.is_null())
        .map(convert_tools)
        .transpose()?;
    let parallel = req.extra.get("parallel_tool_calls").and_then(Value::as_bool);
    let tool_choice = match req.extra.get("tool_choice").filter(|t| !t.is_null()) {
        Some(choice) => Some(convert_tool_choice(choice, parallel)?),
        None if parallel == Some(false) && tools.is_some() => {
            Some(json!({"type": "auto", "disable_parallel_tool_use": true}))
        }
        None => None,
    };
    // A JSON `response_format` is asked for as a tool's input: forced when
    // alone, offered next to the client's tools otherwise.
    let (tools, tool_choice) = match json_tool(req)? {
        Some(json) => {
            let tool = Tool {
                name: JSON_TOOL.to_owned(),
                description: Some(json.description),
                input_schema: Some(json.schema),
                extra: Extra::new(),
            };
            match tools {
                Some(mut list) if offers_tools(req) => {
                    list.push(tool);
                    (Some(list), tool_choice)
                }
                // Claude cannot think while a tool is forced: a request that
                // asks for both, or to a model that always thinks, gets the
                // JSON tool offered instead. The client's tools stay defined
                // when the conversation holds `tool_use` blocks (Claude
                // needs them then); else tools it may not call
                // (`tool_choice: none`) are left out, since nothing would
                // stop Claude calling them beside the unforced JSON tool.
                _ if thinking.as_ref().is_some_and(|t| t.explicit) || reasoning::always_thinks(&req.model) => {
                    let keep = tools.filter(|_| !forbids_tools(req) || holds_tool_turns(req));
                    (
                        Some(keep.unwrap_or_default().into_iter().chain([tool]).collect()),
                        Some(json!({"type": "auto"})),
                    )
                }
                // The client's tools stay defined beside the forced JSON
                // tool (a conversation holding `tool_use` blocks needs
                // them); forced, the JSON tool is the only one called.
                _ => (
                    Some(tools.unwrap_or_default().into_iter().chain([tool]).collect()),
                    Some(json!({"type": "tool", "name": JSON_TOOL, "disable_parallel_tool_use": true})),
                ),
            }
        }
        None => (tools, tool_choice),
    };
    let mut extra = Extra::new();
    if let Some(user) = req.extra.get("user").and_then(Value::as_str).filter(|u| !u.is_empty()) {
        extra.insert("metadata".into(), json!({"user_id": opaque_user_id(user)}));
    }
    // Claude cannot think while a tool is forced: thinking gives way to
    // the forced call (the JSON tool is offered rather than forced when the
    // client asked to think with a `thinking` object).
    let forced = tool_choice
        .as_ref()
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == "any" || t == "tool");
    let decided = reasoning::decide(req, thinking, forced);
    let thinking = decided.thinking;
    if thinking.is_none() {
        // Without thinking, earlier thinking goes unsent; a message of
        // thinking alone goes with it (Anthropic refuses one without
        // content), and the messages it stood between are joined.
        let built = std::mem::take(&mut messages);
        for mut message in built {
            if let Content::Blocks(blocks) = &mut message.content {
                blocks.retain(|b| !is_thinking(b));
            }
            push(&mut messages, message.role, message.content.into_blocks());
        }
    }
    trim_final_assistant(&mut messages);
    // Instructions alone (OpenAI answers a conversation of only a system
    // message): Anthropic needs a turn, so they are the user's.
    if messages.is_empty() && !system.is_empty() {
        push(&mut messages, MessageRole::User, std::mem::take(&mut system));
    }
    // Nothing but blank user turns: still a turn to answer.
    if messages.is_empty() && req.messages.iter().any(|m| m.role == Role::User) {
        push(
            &mut messages,
            MessageRole::User,
            vec![ContentBlock::text(OPENING_USER_TURN)],
        );
    }
    if messages.is_empty() {
        return Err(invalid(
            "at least one user or assistant message is required",
            "messages",
        ));
    }
    // Anthropic requires the conversation to start with a user turn; a chat
    // that opens with the assistant's greeting gets a minimal one first.
    if messages.first().is_some_and(|m| m.role == MessageRole::Assistant) {
        messages.insert(
            0,
            Message {
                role: MessageRole::User,
                content: Content::Blocks(vec![ContentBlock::text(OPENING_USER_TURN)]),
            },
        );
    }
    // Claude 4.6 and later models refuse to continue an assistant
    // message: another deployment of the group may take the request.
    if messages.last().is_some_and(|m| m.role == MessageRole::Assistant) && !reasoning::takes_prefill(&req.model) {
        return Err(invalid(
            format!(
                "`{}` does not continue a final assistant message (a prefill): end the conversation with a user message",
                req.model
            ),
            "messages",
        ));
    }
    let max_tokens = thinking
        .as_ref()
        .map_or(max_tokens, |t| reasoning::max_tokens_with(t, max_tokens, &req.model));
    if let Some(field) = decided.field {
        extra.insert("thinking".into(), field);
    }
    if let Some(effort) = decided.effort {
        extra.insert("output_config".into(), json!({"effort": effort}));
    }
    // Opus 4.7 and later take no sampling parameters.
    let samples = thinking.is_none() && !reasoning::adaptive_only(&req.model);
    Ok(MessagesRequest {
        model: req.model.clone(),
        messages,
        max_tokens: Some(max_tokens),
        system: (!system.is_empty()).then_some(Content::Blocks(system)),
        stop_sequences,
        stream: req.is_stream().then_some(true),
        // With thinking, Claude takes neither `temperature` nor a narrow
        // `top_p`: they are left out.
        temperature: req
            .extra
            .get("temperature")
            .and_then(Value::as_f64)
            .map(|t| t.clamp(0.0, 1.0))
            .filter(|_| samples),
        // Claude models from the 4.1 generation refuse `temperature` and
        // `top_p` together, and Anthropic advises setting one: with both,
        // `temperature` is kept.
        top_p: req
            .extra
            .get("top_p")
            .and_then(Value::as_f64)
            .filter(|_| !req.extra.get("temperature").is_some_and(Value::is_number))
            .filter(|_| samples),
        tools,
        tool_choice,
        extra,
        betas: Vec::new(),
    })
}

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> Option<String> {
    stop_reason.map(|r| {
        match r {
            "max_tokens" | "model_context_window_exceeded" => "length",
            "tool_use" => "tool_calls",
            "refusal" => "content_filter",
            _ => "stop",
        }
        .to_owned()
    })
}

/// OpenAI usage for Anthropic usage: prompt tokens include cached ones, which are
/// also reported as `prompt_tokens_details.cached_tokens` (reads) and
/// `cache_creation_tokens` (writes) and, verbatim, as
/// `cache_read_input_tokens` / `cache_creation_input_tokens` (with the
/// writes' `cache_creation` breakdown by time to live).
pub fn usage(u: &MessagesUsage) -> Usage {
    let read = u.cache_read_input_tokens.unwrap_or(0);
    let written = u.cache_creation_input_tokens.unwrap_or(0);
    let mut usage = Usage::new(
        u.input_tokens.saturating_add(read).saturating_add(written),
        u.output_tokens,
    );
    usage.extra.insert(
        "prompt_tokens_details".into(),
        json!({"cached_tokens": read, "cache_creation_tokens": written}),
    );
    usage.extra.insert("cache_read_input_tokens".into(), json!(read));
    usage.extra.insert("cache_creation_input_tokens".into(), json!(written));
    if let Some(breakdown) = u.extra.get("cache_creation").filter(|b| b.is_object()) {
        usage.extra.insert("cache_creation".into(), breakdown.clone());
    }
    usage
}

/// The OpenAI chat response for an Anthropic response. With `json` (the
/// request asked for a JSON `response_format`), the JSON tool's input is the
/// message's text (the model's own text only when it did not use the tool)
/// and the answer finishes with `stop`.
pub fn to_chat_response(resp: MessagesResponse, created: u64, json: bool) -> ChatCompletionResponse {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut answered = false;
    let mut reasoning = String::new();
    let mut thinking_blocks = Vec::new();
    for block in &resp.content {
        match block.kind.as_str() {
            "thinking" => {
                reasoning.push_str(block.extra.get("thinking").and_then(Value::as_str).unwrap_or_default());
                thinking_blocks.push(serde_json::to_value(block).unwrap_or_default());
            }
            "redacted_thinking" => thinking_blocks.push(serde_json::to_value(block).unwrap_or_default()),
            "text" if answered => {}
            "text" => text.push_str(block.text.as_deref().unwrap_or_default()),
            // The first JSON answer is the answer (two would not be JSON).
            "tool_use" if json && block.name.as_deref() == Some(JSON_TOOL) && !answered => {
                answered = true;
                text = block.input.as_ref().map_or_else(|| "{}".to_owned(), Value::to_string);
            }
            "tool_use" if json && block.name.as_deref() == Some(JSON_TOOL) => {}
            "tool_use" => calls.push(tool_call(
                block.id.clone().unwrap_or_default(),
                block.name.clone().unwrap_or_default(),
                block.input.as_ref().map_or_else(|| "{}".to_owned(), Value::to_string),
            )),
            _ => {}
        }
    }
    let finish = finish_reason(resp.stop_reason.as_deref()).map(|f| json_finish(f, json && calls.is_empty()));
    let mut response = chat_response(
        resp.id,
        resp.model,
        created,
        text,
        calls,
        finish,
        Some(usage(&resp.usage)),
    );
    reasoning::attach(&mut response, reasoning, thinking_blocks);
    response
}

/// OpenAI's `user` as Anthropic's `metadata.user_id`, which must be an
/// opaque id (Anthropic refuses one that holds an email address): kept
/// when it is up to 64 letters, digits, `-` or `_` (a UUID, a hash, an
/// account id), else its SHA-256 in hex, one id per user still.
fn opaque_user_id(user: &str) -> String {
    if user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        user.to_owned()
    } else {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(user.as_bytes()))
    }
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn token_counts_from_the_upstream_saturate() {
        let upstream = MessagesUsage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
            cache_read_input_tokens: Some(1),
            ..MessagesUsage::default()
        };
        let usage = usage(&upstream);
        assert_eq!(usage.prompt_tokens, u64::MAX);
        assert_eq!(usage.total_tokens, u64::MAX);
    }

    #[test]
    fn a_custom_tool_call_cannot_be_sent_to_claude() {
        let req: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "run it"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "custom", "custom": {"name": "sql", "input": "select 1"}}]}
            ]
        }))
        .unwrap();
        let err = to_messages_request(&req, 100).unwrap_err();
        assert!(
            matches!(&err, ProviderError::InvalidRequest { param: Some(p), .. } if p == "messages[1].tool_calls[0].function"),
            "{err:?}"
        );
    }
}
