//! OpenAI chat requests ↔ Bedrock Converse messages.

use aws_sdk_bedrockruntime::operation::converse::ConverseOutput;
use aws_sdk_bedrockruntime::types::{
    AnyToolChoice, AutoToolChoice, CachePointBlock, CachePointType, CacheTtl, ContentBlock, ConversationRole,
    DocumentBlock, DocumentFormat, DocumentSource, ImageBlock, ImageFormat, ImageSource, InferenceConfiguration,
    JsonSchemaDefinition, Message, OutputConfig, OutputFormat, OutputFormatStructure, OutputFormatType,
    ReasoningContentBlock, ReasoningTextBlock, SpecificToolChoice, StopReason, SystemContentBlock, TokenUsage, Tool,
    ToolChoice, ToolConfiguration, ToolInputSchema, ToolResultBlock, ToolResultContentBlock, ToolSpecification,
    ToolUseBlock,
};
use aws_smithy_types::{Blob, Document, Number};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use switchyard_api::anthropic::MessagesUsage;
use switchyard_api::{ChatCompletionRequest, ChatCompletionResponse, ChatMessage, Extra, MessageContent, Role, Usage};

use crate::anthropic::DEFAULT_MAX_TOKENS;
use crate::chunks::{chat_response, tool_call, tool_use_id};
use crate::json_mode::{JSON_TOOL, JsonTool, json_finish, json_tool};
use crate::reasoning;
use crate::{ProviderError, Result};

fn invalid(message: impl Into<String>, param: &str) -> ProviderError {
    ProviderError::InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

fn built<T, E: std::fmt::Display>(result: std::result::Result<T, E>, param: &str) -> Result<T> {
    result.map_err(|e| invalid(format!("cannot build the Bedrock request: {e}"), param))
}

/// A JSON value as a Smithy document.
pub(crate) fn to_document(value: &Value) -> Document {
    match value {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Number::PosInt(u),
            (None, Some(i)) => Number::NegInt(i),
            _ => Number::Float(n.as_f64().unwrap_or(0.0)),
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(to_document).collect()),
        Value::Object(map) => Document::Object(map.iter().map(|(k, v)| (k.clone(), to_document(v))).collect()),
    }
}

/// A Smithy document as a JSON value.
pub(crate) fn from_document(doc: &Document) -> Value {
    match doc {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => Value::from(*u),
        Document::Number(Number::NegInt(i)) => Value::from(*i),
        Document::Number(Number::Float(f)) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Document::String(s) => Value::String(s.clone()),
        Document::Array(items) => Value::Array(items.iter().map(from_document).collect()),
        Document::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), from_document(v)))
                .collect::<Map<_, _>>(),
        ),
    }
}

fn image(url: &str, param: &str) -> Result<ContentBlock> {
    Ok(ContentBlock::Image(image_block(url, param)?))
}

/// The URL of an `image_url` part (`{"url": …}`, or the string itself).
fn image_url(part: &switchyard_api::ContentPart) -> &str {
    part.extra
        .get("image_url")
        .and_then(|i| i.get("url").or(Some(i)))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// An image part's data URL as a Converse image.
fn image_block(url: &str, param: &str) -> Result<ImageBlock> {
    let Some((meta, data)) = url.strip_prefix("data:").and_then(|rest| rest.split_once(',')) else {
        return Err(invalid(
            "Bedrock takes images as base64 data URLs only, not links",
            param,
        ));
    };
    let media_type = crate::media::image_type(meta.trim_end_matches(";base64"), data);
    let format = match media_type.as_str() {
        "image/png" => ImageFormat::Png,
        "image/jpeg" => ImageFormat::Jpeg,
        "image/gif" => ImageFormat::Gif,
        "image/webp" => ImageFormat::Webp,
        other => {
            return Err(invalid(
                format!("image type `{other}` is not supported by Bedrock"),
                param,
            ));
        }
    };
    let bytes =
        crate::media::decode_base64(data).map_err(|e| invalid(format!("the image is not valid base64: {e}"), param))?;
    let block = ImageBlock::builder()
        .format(format)
        .source(ImageSource::Bytes(Blob::new(bytes)))
        .build();
    built(block, param)
}

/// Whether an `image_url` part's URL is a PDF's data URL (a document, as
/// for Claude).
fn is_pdf_url(url: &str) -> bool {
    url.get(..20)
        .is_some_and(|p| p.eq_ignore_ascii_case("data:application/pdf"))
}

/// The data URL of a `file` part (`file.file_data`).
fn file_data<'a>(part: &'a switchyard_api::ContentPart, param: &str) -> Result<&'a str> {
    part.extra
        .get("file")
        .and_then(|f| f.get("file_data"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid(
                "a file part needs `file.file_data` (a base64 data URL); file ids are not supported by Bedrock",
                param,
            )
        })
}

/// The Converse format of a document's media type.
fn document_format(media_type: &str) -> Option<DocumentFormat> {
    Some(match media_type.to_ascii_lowercase().as_str() {
        "application/pdf" => DocumentFormat::Pdf,
        "text/plain" => DocumentFormat::Txt,
        "text/markdown" | "text/x-markdown" => DocumentFormat::Md,
        "text/html" => DocumentFormat::Html,
        "text/csv" => DocumentFormat::Csv,
        "application/msword" => DocumentFormat::Doc,
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => DocumentFormat::Docx,
        "application/vnd.ms-excel" => DocumentFormat::Xls,
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => DocumentFormat::Xlsx,
        _ => return None,
    })
}

/// A neutral name for the document at `param`, unique in the request (its
/// message's and part's positions: `document 3-1`). Converse refuses two
/// documents of one name and names with other characters than letters,
/// digits, single spaces, hyphens, parentheses and brackets, and AWS
/// advises against names a model could read as instructions, so a client's
/// file name is not used.
fn document_name(param: &str) -> String {
    let positions: Vec<&str> = param
        .split(|c: char| !c.is_ascii_digit())
        .filter(|run| !run.is_empty())
        .collect();
    format!("document {}", positions.join("-"))
}

/// A file sent as a base64 data URL (a `file` part's `file_data`, or a PDF
/// in an `image_url` part) as a Converse document: PDF, plain text,
/// Markdown, HTML, CSV, Word or Excel.
fn document_block(url: &str, param: &str) -> Result<DocumentBlock> {
    let parsed = url.strip_prefix("data:").and_then(|rest| rest.split_once(','));
    let Some((meta, data)) = parsed.filter(|(meta, _)| {
        meta.rsplit(';')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("base64"))
    }) else {
        return Err(invalid(
            "Bedrock takes files as base64 data URLs only (`data:application/pdf;base64,…`), not links or file ids",
            param,
        ));
    };
    let media_type = crate::media::essence(meta);
    let Some(format) = document_format(media_type) else {
        return Err(invalid(
            format!(
                "file type `{media_type}` is not supported by Bedrock (PDF, plain text, Markdown, HTML, CSV, Word and Excel are)"
            ),
            param,
        ));
    };
    let bytes =
        crate::media::decode_base64(data).map_err(|e| invalid(format!("the file is not valid base64: {e}"), param))?;
    let block = DocumentBlock::builder()
        .format(format)
        .name(document_name(param))
        .source(DocumentSource::Bytes(Blob::new(bytes)))
        .build();
    built(block, param)
}

/// What a user turn that holds documents and no text says: Converse
/// refuses documents without text beside them ("A text block must be
/// included when using documents").
const DOCUMENTS_ONLY: &str = ".";

/// The user turn put before a conversation that opens with the assistant.
const OPENING_USER_TURN: &str = ".";

/// The assistant turn put between tool results and a user message that
/// follows them: Converse refuses tool results and other content in one
/// turn ("Conversation blocks and tool result blocks cannot be provided in
/// the same turn").
const AFTER_TOOL_RESULTS: &str = ".";

/// What a tool result without text says: Converse refuses empty text.
const EMPTY_TOOL_RESULT: &str = "(no output)";

/// A tool result's text, or [`EMPTY_TOOL_RESULT`] for a blank one.
fn tool_result_text(message: &ChatMessage) -> ToolResultContentBlock {
    let text = message.content_text();
    ToolResultContentBlock::Text(if blank(&text) {
        EMPTY_TOOL_RESULT.to_owned()
    } else {
        text
    })
}

/// A tool message's content as tool-result blocks: its text, and its images
/// (a screenshot a computer-use tool returns) when it is made of parts.
fn tool_result_content(message: &ChatMessage, param: &str) -> Result<Vec<ToolResultContentBlock>> {
    let Some(MessageContent::Parts(parts)) = &message.content else {
        return Ok(vec![tool_result_text(message)]);
    };
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        match (part.kind.as_str(), part.text.as_deref()) {
            ("text", Some(text)) if !blank(text) => out.push(ToolResultContentBlock::Text(text.to_owned())),
            ("text", _) => {}
            ("image_url", _) if is_pdf_url(image_url(part)) => {
                let param = format!("{param}[{i}]");
                out.push(ToolResultContentBlock::Document(document_block(
                    image_url(part),
                    &param,
                )?));
            }
            ("image_url", _) => {
                out.push(ToolResultContentBlock::Image(image_block(
                    image_url(part),
                    &format!("{param}[{i}]"),
                )?));
            }
            ("file", _) => {
                let param = format!("{param}[{i}]");
                out.push(ToolResultContentBlock::Document(document_block(
                    file_data(part, &param)?,
                    &param,
                )?));
            }
            (other, _) => {
                return Err(invalid(
                    format!("tool result parts of type `{other}` are not supported by Bedrock"),
                    &format!("{param}[{i}]"),
                ));
            }
        }
    }
    if out.is_empty() {
        out.push(tool_result_text(message));
    }
    Ok(out)
}

/// The `cache_control` of a tool message: on the message, or on one of its
/// parts.
fn tool_cache_control<'a>(message: &'a ChatMessage) -> Option<&'a Value> {
    let mark = |extra: &'a Extra| extra.get("cache_control").filter(|c| !c.is_null());
    mark(&message.extra).or_else(|| match &message.content {
        Some(MessageContent::Parts(parts)) => parts.iter().rev().find_map(|p| mark(&p.extra)),
        _ => None,
    })
}

/// The `cache_control` of a message itself (as LiteLLM takes it, for
/// content sent as a string).
fn message_cache_control(message: &ChatMessage) -> Option<&Value> {
    message.extra.get("cache_control").filter(|c| !c.is_null())
}

/// `content` with a cache point after it when its message is marked
/// `cache_control` (and its last part did not already end with one).
fn marked(mut content: Vec<ContentBlock>, message: &ChatMessage) -> Result<Vec<ContentBlock>> {
    // Not after a thinking block, which Claude takes no cache mark on.
    if let Some(control) = message_cache_control(message)
        && content
            .last()
            .is_some_and(|b| !matches!(b, ContentBlock::CachePoint(_) | ContentBlock::ReasoningContent(_)))
    {
        content.push(ContentBlock::CachePoint(cache_point_block(control)?));
    }
    Ok(content)
}

/// The cache point a part's `cache_control` asks for, with its lifetime
/// (`ttl: "1h"` or the default five minutes).
fn cache_point_block(control: &Value) -> Result<CachePointBlock> {
    let mut block = CachePointBlock::builder().r#type(CachePointType::Default);
    if control.get("ttl").and_then(Value::as_str) == Some("1h") {
        block = block.ttl(CacheTtl::OneHour);
    }
    built(block.build(), "cache_control")
}

/// Whether a text part says nothing: Converse refuses blank text blocks.
fn blank(text: &str) -> bool {
    text.trim().is_empty()
}

/// The system blocks of a system or developer message, part by part, with a
/// cache point after each part marked `cache_control`.
fn system_blocks(content: &Option<MessageContent>, param: &str) -> Result<Vec<SystemContentBlock>> {
    let mut out = Vec::new();
    match content {
        None => {}
        Some(MessageContent::Text(text)) if blank(text) => {}
        Some(MessageContent::Text(text)) => out.push(SystemContentBlock::Text(text.clone())),
        Some(MessageContent::Parts(parts)) => {
            for (i, part) in parts.iter().enumerate() {
                match (part.kind.as_str(), part.text.as_deref()) {
                    ("text", Some(text)) if !blank(text) => out.push(SystemContentBlock::Text(text.to_owned())),
                    ("text", _) => continue,
                    (other, _) => {
                        return Err(invalid(
                            format!("system content parts of type `{other}` are not supported by Bedrock"),
                            &format!("{param}[{i}]"),
                        ));
                    }
                }
                if let Some(control) = part.extra.get("cache_control").filter(|c| !c.is_null()) {
                    out.push(SystemContentBlock::CachePoint(cache_point_block(control)?));
                }
            }
        }
    }
    Ok(out)
}

/// The images and files among a message's parts, as blocks.
fn media_blocks(message: &ChatMessage, param: &str) -> Result<Vec<ContentBlock>> {
    let Some(MessageContent::Parts(parts)) = &message.content else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let param = format!("{param}[{i}]");
        if matches!(part.kind.as_str(), "image_url" | "file") {
            out.push(media_block(part, &param)?);
        }
    }
    Ok(out)
}

/// An `image_url` or `file` part as an image or a document.
fn media_block(part: &switchyard_api::ContentPart, param: &str) -> Result<ContentBlock> {
    if part.kind == "file" {
        return Ok(ContentBlock::Document(document_block(file_data(part, param)?, param)?));
    }
    let url = image_url(part);
    if is_pdf_url(url) {
        return Ok(ContentBlock::Document(document_block(url, param)?));
    }
    image(url, param)
}

/// A user or assistant message's content as blocks. Images and files are
/// taken in user messages only, as Converse takes them.
fn blocks(content: &Option<MessageContent>, param: &str, user: bool) -> Result<Vec<ContentBlock>> {
    let mut out = Vec::new();
    match content {
        None => {}
        Some(MessageContent::Text(text)) if blank(text) => {}
        Some(MessageContent::Text(text)) => out.push(ContentBlock::Text(text.clone())),
        Some(MessageContent::Parts(parts)) => {
            for (i, part) in parts.iter().enumerate() {
                let param = format!("{param}[{i}]");
                match part.kind.as_str() {
                    "text" => match part.text.as_deref() {
                        Some(text) if !blank(text) => out.push(ContentBlock::Text(text.to_owned())),
                        // A blank part (and its cache mark: a cache point
                        // must follow content) is left out.
                        _ => continue,
                    },
                    "image_url" | "file" if !user => {
                        return Err(invalid(
                            "Bedrock takes images and files in user messages and tool results only",
                            &param,
                        ));
                    }
                    "image_url" | "file" => out.push(media_block(part, &param)?),
                    other => {
                        return Err(invalid(
                            format!("content parts of type `{other}` are not supported by Bedrock"),
                            &param,
                        ));
                    }
                }
                if let Some(control) = part.extra.get("cache_control").filter(|c| !c.is_null()) {
                    out.push(ContentBlock::CachePoint(cache_point_block(control)?));
                }
            }
        }
    }
    Ok(out)
}

/// Adds `content` to the conversation, in the last turn when that is
/// `role`'s. A user turn holds tool results or other content, never both:
/// a user message after tool results (or a result after one) goes in a turn
/// of its own, after a minimal assistant turn.
fn push(messages: &mut Vec<(ConversationRole, Vec<ContentBlock>)>, role: ConversationRole, content: Vec<ContentBlock>) {
    if content.is_empty() {
        return;
    }
    match messages.last_mut() {
        Some((last, existing)) if *last == role => {
            if role == ConversationRole::User && has_tool_results(existing) != has_tool_results(&content) {
                messages.push((
                    ConversationRole::Assistant,
                    vec![ContentBlock::Text(AFTER_TOOL_RESULTS.to_owned())],
                ));
                messages.push((role, content));
            } else {
                existing.extend(content);
                // Claude refuses an assistant turn whose thinking does not
                // open it: two assistant messages in a row (text, then a
                // tool call with its thinking) keep the thinking first.
                if role == ConversationRole::Assistant {
                    existing.sort_by_key(|b| !matches!(b, ContentBlock::ReasoningContent(_)));
                }
            }
        }
        _ => messages.push((role, content)),
    }
}

/// Whether a turn's content is tool results (cache points go with them).
fn has_tool_results(content: &[ContentBlock]) -> bool {
    content.iter().any(|b| matches!(b, ContentBlock::ToolResult(_)))
}

/// The pieces of a Converse call built from an OpenAI chat request.
pub(crate) struct ConverseInput {
    pub(crate) system: Vec<SystemContentBlock>,
    pub(crate) messages: Vec<Message>,
    pub(crate) inference: InferenceConfiguration,
    pub(crate) tools: Option<ToolConfiguration>,
    /// Model-specific fields (Claude's `thinking`).
    pub(crate) additional: Option<Document>,
    /// The JSON Schema the answer follows (Converse's structured output),
    /// for models that are not given the JSON tool.
    pub(crate) output: Option<OutputConfig>,
}

/// The tools the model may call: none when the request offers none, or
/// forbids calling them (`tool_choice: "none"`, which Converse cannot say:
/// the tools are left out instead).
fn offered_tools(req: &ChatCompletionRequest) -> Option<&Vec<Value>> {
    if req.extra.get("tool_choice").and_then(Value::as_str) == Some("none") {
        return None;
    }
    req.extra
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
}

/// The model families Converse gives structured output (`outputConfig`)
/// to, besides Claude (given the JSON tool). Bedrock refuses the field for
/// Llama, Titan, Cohere and AI21; other ids (Mistral's, whose models
/// differ, and an inference profile's ARN) get the request without it, as
/// before Converse had structured output.
const STRUCTURED_OUTPUT: &[&str] = &[
    "qwen.",
    "deepseek.",
    "google.gemma",
    "nvidia.nemotron",
    "minimax.",
    "moonshot",
    "openai.gpt-oss",
];

/// The structured output a `json_schema` `response_format` asks of a model
/// of a family Converse gives it to ([`STRUCTURED_OUTPUT`]): its
/// `outputConfig`. Other models that are not given the JSON tool
/// ([`json_mode`]) get the request without it, as before Converse had
/// structured output; so does `json_object`, which has no Converse
/// equivalent (OpenAI requires the prompt to ask for JSON).
pub(crate) fn structured_output(req: &ChatCompletionRequest) -> Result<Option<OutputConfig>> {
    let model = req.model.to_ascii_lowercase();
    if !STRUCTURED_OUTPUT.iter().any(|family| model.contains(family)) {
        return Ok(None);
    }
    let Some(format) = req.extra.get("response_format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Ok(None);
    }
    let spec = format.get("json_schema");
    let schema = spec
        .and_then(|s| s.get("schema"))
        .filter(|s| s.is_object())
        .ok_or_else(|| {
            invalid(
                "a `json_schema` response format needs a schema object",
                "response_format.json_schema.schema",
            )
        })?;
    let mut definition = JsonSchemaDefinition::builder().schema(schema.to_string());
    if let Some(name) = spec.and_then(|s| s.get("name")).and_then(Value::as_str) {
        definition = definition.name(name);
    }
    if let Some(description) = spec.and_then(|s| s.get("description")).and_then(Value::as_str) {
        definition = definition.description(description);
    }
    let definition = built(definition.build(), "response_format.json_schema")?;
    let format = OutputFormat::builder()
        .r#type(OutputFormatType::JsonSchema)
        .structure(OutputFormatStructure::JsonSchema(definition))
        .build();
    let format = built(format, "response_format")?;
    Ok(Some(OutputConfig::builder().text_format(format).build()))
}

/// The JSON tool a `response_format` asks for, on models that Converse lets
/// a request force a named tool on (Claude and Nova). Some others get a
/// `json_schema` as Converse's structured output ([`structured_output`]).
pub(crate) fn json_mode(req: &ChatCompletionRequest) -> Result<Option<JsonTool>> {
    let model = req.model.as_str();
    if model.contains("anthropic.claude") || model.starts_with("claude") || model.contains("amazon.nova") {
        json_tool(req)
    } else {
        Ok(None)
    }
}

/// Whether Converse refuses a forced tool choice (`any`, or a named tool)
/// on `model`: it takes one on Claude, Nova and Mistral Large only, and
/// Llama, Cohere, AI21, DeepSeek, Qwen, gpt-oss, Writer and Titan refuse it
/// ("This model doesn't support the toolConfig.toolChoice.any field").
/// Other ids (an inference profile's ARN) are left to Bedrock.
pub(crate) fn refuses_forced_tools(model: &str) -> bool {
    let model = model.to_ascii_lowercase();
    [
        "meta.llama",
        "cohere.",
        "ai21.",
        "deepseek.",
        "qwen.",
        "openai.gpt-oss",
        "writer.",
        "amazon.titan",
    ]
    .iter()
    .any(|family| model.contains(family))
}

/// Whether Converse refuses `stopSequences` on `model` ("This model doesn't
/// support the stopSequences field"): gpt-oss and Qwen.
pub(crate) fn refuses_stop(model: &str) -> bool {
    let model = model.to_ascii_lowercase();
    ["openai.gpt-oss", "qwen."].iter().any(|family| model.contains(family))
}

/// For a deployment that drops what its model cannot do (`drop_params`):
/// `stop` left out for a model that refuses it; `None` when nothing changes.
pub(crate) fn without_refused_stop(req: &ChatCompletionRequest) -> Option<ChatCompletionRequest> {
    if !refuses_stop(&req.model) || req.extra.get("stop").is_none_or(Value::is_null) {
        return None;
    }
    let mut copy = req.clone();
    copy.extra.remove("stop");
    tracing::debug!("stop sequences the model refuses are dropped (drop_params)");
    Some(copy)
}

/// For a deployment that drops what its model cannot do (`drop_params`): a
/// forced tool choice the model refuses becomes `auto`, with only the named
/// function offered when it named one; `None` when nothing changes.
pub(crate) fn without_forced_choice(req: &ChatCompletionRequest) -> Option<ChatCompletionRequest> {
    if !refuses_forced_tools(&req.model) || !reasoning::forces_a_tool(req) || offered_tools(req).is_none() {
        return None;
    }
    let mut copy = req.clone();
    let named = copy
        .extra
        .get("tool_choice")
        .and_then(|c| c.pointer("/function/name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let (Some(name), Some(Value::Array(tools))) = (named, copy.extra.get_mut("tools")) {
        tools.retain(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name.as_str()));
    }
    copy.extra.insert("tool_choice".into(), Value::String("auto".into()));
    tracing::debug!("a forced tool choice the model refuses is sent as auto (drop_params)");
    Some(copy)
}

fn tool_config(req: &ChatCompletionRequest, thinks: bool) -> Result<Option<ToolConfiguration>> {
    // A JSON `response_format` is asked for as a tool's input: forced when
    // alone, offered next to the client's tools otherwise.
    let json = json_mode(req)?
        .map(|json| {
            let spec = ToolSpecification::builder()
                .name(JSON_TOOL)
                .description(json.description)
                .input_schema(ToolInputSchema::Json(to_document(&json.schema)))
                .build();
            built(spec, "response_format").map(Tool::ToolSpec)
        })
        .transpose()?;
    let Some(tools) = offered_tools(req) else {
        let Some(json) = json else {
            return Ok(None);
        };
        // Claude cannot think while a tool is forced: a request that asks
        // for both gets the JSON tool offered instead.
        let choice = if thinks {
            ToolChoice::Auto(AutoToolChoice::builder().build())
        } else {
            ToolChoice::Tool(built(
                SpecificToolChoice::builder().name(JSON_TOOL).build(),
                "response_format",
            )?)
        };
        let config = ToolConfiguration::builder().tools(json).tool_choice(choice).build();
        return Ok(Some(built(config, "response_format")?));
    };
    let mut specs = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        let function = tool
            .get("function")
            .ok_or_else(|| invalid("only function tools are supported", &param))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("a tool needs a name", &param))?;
        let schema = crate::json_mode::tool_input_schema(function.get("parameters"));
        let spec = ToolSpecification::builder()
            .name(name)
            // Converse refuses an empty description.
            .set_description(
                function
                    .get("description")
                    .and_then(Value::as_str)
                    .filter(|d| !blank(d))
                    .map(str::to_owned),
            )
            .input_schema(ToolInputSchema::Json(to_document(&schema)))
            .build();
        specs.push(Tool::ToolSpec(built(spec, &param)?));
        // A cache mark on the tool (LiteLLM's form) makes the definitions
        // up to it a cached prefix, for Claude (Nova caches no tools).
        if let Some(control) = tool.get("cache_control").filter(|c| !c.is_null())
            && prompt_caching(&req.model)
            && is_claude(req)
        {
            specs.push(Tool::CachePoint(cache_point_block(control)?));
        }
    }
    specs.extend(json);
    let choice = match req.extra.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "auto" => Some(ToolChoice::Auto(AutoToolChoice::builder().build())),
        Some(Value::String(s)) if s == "required" => Some(ToolChoice::Any(AnyToolChoice::builder().build())),
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("`tool_choice` must name a function", "tool_choice"))?;
            Some(ToolChoice::Tool(built(
                SpecificToolChoice::builder().name(name).build(),
                "tool_choice",
            )?))
        }
        Some(_) => {
            return Err(invalid(
                "`tool_choice` must be auto, none, required or a function",
                "tool_choice",
            ));
        }
    };
    if matches!(choice, Some(ToolChoice::Any(_) | ToolChoice::Tool(_))) && refuses_forced_tools(&req.model) {
        return Err(invalid(
            format!(
                "`tool_choice` that forces a tool is not supported for `{}` by Bedrock (Claude, Nova and Mistral Large take it): send `auto`, or set `drop_params` on the deployment to send it as `auto`",
                req.model
            ),
            "tool_choice",
        ));
    }
    let config = ToolConfiguration::builder()
        .set_tools(Some(specs))
        .set_tool_choice(choice)
        .build();
    Ok(Some(built(config, "tools")?))
}

/// Whether the request's model is Claude (a model id, or an inference
/// profile named after one).
/// Whether a Bedrock model takes a system prompt (Mistral 7B Instruct,
/// Mixtral 8x7B and Titan Text refuse one).
fn takes_system(model: &str) -> bool {
    let model = model.to_ascii_lowercase();
    !["mistral-7b-instruct", "mixtral-8x7b-instruct", "titan-text"]
        .iter()
        .any(|m| model.contains(m))
}

/// Whether a Bedrock model may take cache points: Claude (but the Claude 3
/// models before 3.5, Claude 3.5 Sonnet, Claude 2 and Instant) and Amazon Nova; Llama, Mistral,
/// DeepSeek and the others refuse them (Bedrock ids and inference profiles
/// included).
fn prompt_caching(model: &str) -> bool {
    let model = model.to_ascii_lowercase();
    if model.contains("nova") {
        return true;
    }
    model.contains("claude")
        && ![
            "claude-instant",
            "claude-v2",
            "claude-3-haiku",
            "claude-3-sonnet",
            "claude-3-opus",
            // Claude 3.5 Sonnet never had prompt caching on Bedrock (v2 only
            // in a closed preview): "your request did not allow prompt caching".
            "claude-3-5-sonnet",
        ]
        .iter()
        .any(|old| model.contains(old))
}

fn is_claude(req: &ChatCompletionRequest) -> bool {
    req.model.contains("anthropic.claude") || req.model.starts_with("claude")
}

/// Claude's thinking blocks an assistant message carries back, as Converse
/// reasoning blocks (a redacted block's `data` is its base64 bytes).
fn reasoning_blocks(message: &ChatMessage, param: &str) -> Result<Vec<ContentBlock>> {
    reasoning::blocks_of(message)
        .into_iter()
        .map(|block| {
            let reasoning = match block.get("type").and_then(Value::as_str) {
                Some("redacted_thinking") => {
                    let data = block.get("data").and_then(Value::as_str).unwrap_or_default();
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .map_err(|e| invalid(format!("a redacted thinking block's data is not base64: {e}"), param))?;
                    ReasoningContentBlock::RedactedContent(Blob::new(bytes))
                }
                _ => ReasoningContentBlock::ReasoningText(built(
                    ReasoningTextBlock::builder()
                        .text(block.get("thinking").and_then(Value::as_str).unwrap_or_default())
                        .set_signature(block.get("signature").and_then(Value::as_str).map(str::to_owned))
                        .build(),
                    param,
                )?),
            };
            Ok(ContentBlock::ReasoningContent(reasoning))
        })
        .collect()
}

/// `top_p`, unless the request also sets `temperature` for a Claude model:
/// Claude models from the 4.1 generation refuse the two together, and
/// Anthropic advises setting one; `temperature` is kept.
fn top_p(req: &ChatCompletionRequest) -> Option<f64> {
    let top_p = req.extra.get("top_p").and_then(Value::as_f64)?;
    let claude = is_claude(req);
    let temperature = req.extra.get("temperature").and_then(Value::as_f64).is_some();
    (!(claude && temperature)).then_some(top_p)
}

/// Builds the Converse input for an OpenAI chat request. `default_max_tokens`
/// (the deployment's) is sent when the client sets none; without it Claude
/// gets [`DEFAULT_MAX_TOKENS`] and other models their own default, since a
/// fixed number may be past their output limit, which Bedrock refuses.
pub(crate) fn to_converse(req: &ChatCompletionRequest, default_max_tokens: Option<u32>) -> Result<ConverseInput> {
    for key in crate::anthropic::translate::REJECTED {
        if req
            .extra
            .get(*key)
            .is_some_and(|v| crate::anthropic::translate::asks_for_rejected(key, v))
        {
            return Err(invalid(format!("`{key}` is not supported by Bedrock"), key));
        }
    }
    if req.extra.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(invalid("only one choice (`n` = 1) is supported by Bedrock", "n"));
    }
    // Converse refuses tool blocks without a `toolConfig`, and one would let
    // the model call tools the client did not offer. Without tools, a
    // conversation's earlier calls and results are passed on as text.
    let offers_tools = offered_tools(req).is_some();
    // Claude thinks when asked (`reasoning_effort`, or a `thinking` object),
    // except while a tool is forced, which it refuses with thinking on.
    let asked = if is_claude(req) {
        reasoning::check_tool_choice(req)?;
        reasoning::requested(req)?
    } else {
        None
    };
    // A model that always thinks is offered the JSON tool, not forced to it.
    let mut tools = tool_config(
        req,
        asked.as_ref().is_some_and(|t| t.explicit) || (is_claude(req) && reasoning::always_thinks(&req.model)),
    )?;
    // `parallel_tool_calls: false`, which Converse has no field for, is
    // Claude's own `tool_choice` among the additional fields: an `auto`
    // choice goes there alone (two choices would conflict). A forced one
    // stays as it is.
    let one_call = is_claude(req)
        && req.extra.get("parallel_tool_calls") == Some(&Value::Bool(false))
        && tools.as_mut().is_some_and(|t| match t.tool_choice {
            None | Some(ToolChoice::Auto(_)) => {
                t.tool_choice = None;
                true
            }
            _ => false,
        });
    let forced = tools
        .as_ref()
        .and_then(|t| t.tool_choice.as_ref())
        .is_some_and(|c| matches!(c, ToolChoice::Any(_) | ToolChoice::Tool(_)));
    let decided = if is_claude(req) {
        reasoning::decide(req, asked, forced)
    } else {
        reasoning::Decided {
            thinking: None,
            field: None,
            effort: None,
        }
    };
    let thinking = decided.thinking.clone();
    let mut system = Vec::new();
    let mut turns: Vec<(ConversationRole, Vec<ContentBlock>)> = Vec::new();
    let instructions_after = crate::chunks::instructions_after_assistant(&req.messages);
    for (i, message) in req.messages.iter().enumerate() {
        let param = format!("messages[{i}].content");
        match message.role {
            // Instructions after the assistant's last word ask for its next
            // one: a user turn, not a prefill for the model to continue.
            Role::System | Role::Developer if i >= instructions_after => push(
                &mut turns,
                ConversationRole::User,
                marked(blocks(&message.content, &param, true)?, message)?,
            ),
            Role::System | Role::Developer => {
                let mut content = system_blocks(&message.content, &param)?;
                if let Some(control) = message_cache_control(message)
                    && content
                        .last()
                        .is_some_and(|b| !matches!(b, SystemContentBlock::CachePoint(_)))
                {
                    content.push(SystemContentBlock::CachePoint(cache_point_block(control)?));
                }
                system.extend(content);
            }
            Role::User => push(
                &mut turns,
                ConversationRole::User,
                marked(blocks(&message.content, &param, true)?, message)?,
            ),
            Role::Assistant => {
                // Claude's own thinking goes back first, as it came.
                let mut content = if thinking.is_some() {
                    reasoning_blocks(message, &format!("messages[{i}].thinking_blocks"))?
                } else {
                    Vec::new()
                };
                content.extend(blocks(&message.content, &param, false)?);
                for (j, call) in message.tool_calls.iter().flatten().enumerate() {
                    let Some(function) = &call.function else {
                        return Err(invalid(
                            "only `function` tool calls can be sent to this model",
                            &format!("messages[{i}].tool_calls[{j}].function"),
                        ));
                    };
                    if !offers_tools {
                        content.push(ContentBlock::Text(format!(
                            "[called the tool `{}` with {}]",
                            function.name, function.arguments
                        )));
                        continue;
                    }
                    let param = format!("messages[{i}].tool_calls[{j}].function.arguments");
                    let arguments = if function.arguments.trim().is_empty() {
                        "{}"
                    } else {
                        &function.arguments
                    };
                    let input: Value = serde_json::from_str(arguments)
                        .map_err(|e| invalid(format!("tool call arguments are not valid JSON: {e}"), &param))?;
                    let block = ToolUseBlock::builder()
                        .tool_use_id(tool_use_id(&call.id))
                        .name(&function.name)
                        .input(to_document(&input))
                        .build();
                    content.push(ContentBlock::ToolUse(built(block, &param)?));
                }
                push(&mut turns, ConversationRole::Assistant, marked(content, message)?);
            }
            Role::Tool | Role::Function => {
                let id = message
                    .tool_call_id
                    .clone()
                    .or_else(|| message.name.clone())
                    .unwrap_or_default();
                if !offers_tools {
                    let text = format!("[result of the tool call {id}: {}]", message.content_text());
                    let mut content = vec![ContentBlock::Text(text)];
                    // Its images and files follow it in the user's turn.
                    content.extend(media_blocks(message, &param)?);
                    push(&mut turns, ConversationRole::User, content);
                    continue;
                }
                let block = ToolResultBlock::builder()
                    .tool_use_id(tool_use_id(&id))
                    .set_content(Some(tool_result_content(message, &param)?))
                    .build();
                let mut content = vec![ContentBlock::ToolResult(built(block, &param)?)];
                // A cache breakpoint on the result (an agent marks its
                // latest message) is a cache point after it.
                if let Some(control) = tool_cache_control(message) {
                    content.push(ContentBlock::CachePoint(cache_point_block(control)?));
                }
                push(&mut turns, ConversationRole::User, content);
            }
        }
    }
    // Models that take no system prompt (Mistral 7B and Mixtral, Titan
    // Text) get it at the start of the first user turn instead; so do
    // instructions alone (OpenAI answers a conversation of only a system
    // message, Converse needs a turn).
    if (!takes_system(&req.model) || turns.is_empty()) && !system.is_empty() {
        let text: Vec<String> = system
            .drain(..)
            .filter_map(|b| match b {
                SystemContentBlock::Text(text) => Some(text),
                _ => None,
            })
            .collect();
        if !text.is_empty() {
            let opening = ContentBlock::Text(text.join("\n\n"));
            // At the start of the conversation, in a turn of its own when
            // the first is the assistant's or holds tool results (which
            // Converse takes alone in their turn).
            match turns.first_mut() {
                Some((ConversationRole::User, content)) if !has_tool_results(content) => content.insert(0, opening),
                _ => {
                    turns.insert(0, (ConversationRole::User, vec![opening]));
                    if turns.get(1).is_some_and(|(role, _)| *role == ConversationRole::User) {
                        turns.insert(
                            1,
                            (
                                ConversationRole::Assistant,
                                vec![ContentBlock::Text(AFTER_TOOL_RESULTS.to_owned())],
                            ),
                        );
                    }
                }
            }
        }
    }
    // Cache marks are hints: a model without prompt caching refuses cache
    // points (a 403), so they are left out for it.
    if !prompt_caching(&req.model) {
        system.retain(|b| !matches!(b, SystemContentBlock::CachePoint(_)));
        for (_, content) in &mut turns {
            content.retain(|b| !matches!(b, ContentBlock::CachePoint(_)));
        }
    }
    // Claude refuses a final assistant turn (a prefill) whose text ends in
    // white space: it is left out (other models keep theirs).
    if is_claude(req)
        && let Some((ConversationRole::Assistant, content)) = turns.last_mut()
    {
        // The last text may be followed by its cache point. (Blank text
        // was left out when the turn was built: what is trimmed keeps some.)
        let last = content.iter().rposition(|b| !matches!(b, ContentBlock::CachePoint(_)));
        if let Some(i) = last
            && let Some(ContentBlock::Text(text)) = content.get_mut(i)
        {
            let kept = text.trim_end().len();
            text.truncate(kept);
        }
        if content.is_empty() {
            turns.pop();
        }
    }
    if turns.is_empty() {
        return Err(invalid(
            "at least one user or assistant message is required",
            "messages",
        ));
    }
    // Converse requires the conversation to start with a user turn; a chat
    // that opens with the assistant's greeting gets a minimal one first.
    if turns
        .first()
        .is_some_and(|(role, _)| *role == ConversationRole::Assistant)
    {
        turns.insert(
            0,
            (
                ConversationRole::User,
                vec![ContentBlock::Text(OPENING_USER_TURN.to_owned())],
            ),
        );
    }
    // Claude 4.6 and later models refuse to continue an assistant
    // message: another deployment of the group may take the request.
    if is_claude(req)
        && !reasoning::takes_prefill(&req.model)
        && turns
            .last()
            .is_some_and(|(role, _)| *role == ConversationRole::Assistant)
    {
        return Err(invalid(
            format!(
                "`{}` does not continue a final assistant message (a prefill): end the conversation with a user message",
                req.model
            ),
            "messages",
        ));
    }
    for (role, content) in &mut turns {
        if *role == ConversationRole::User
            && content.iter().any(|b| matches!(b, ContentBlock::Document(_)))
            && !content.iter().any(|b| matches!(b, ContentBlock::Text(_)))
        {
            content.push(ContentBlock::Text(DOCUMENTS_ONLY.to_owned()));
        }
    }
    let messages = turns
        .into_iter()
        .map(|(role, content)| {
            built(
                Message::builder().role(role).set_content(Some(content)).build(),
                "messages",
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| req.extra.get(*k).and_then(Value::as_u64))
        .map(|v| v.min(i32::MAX as u64) as u32)
        .or(default_max_tokens)
        .or_else(|| is_claude(req).then_some(DEFAULT_MAX_TOKENS))
        .map(|m| reasoning::within_claude_output(m, &req.model));
    let max_tokens = match &thinking {
        Some(t) => Some(reasoning::max_tokens_with(
            t,
            max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            &req.model,
        )),
        None => max_tokens,
    };
    // Blank stop sequences (`"\n"`) are refused by Claude: left out.
    let stop = match req.extra.get("stop") {
        Some(Value::String(s)) => Some(vec![s.clone()]),
        Some(Value::Array(items)) => Some(items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()),
        _ => None,
    }
    .map(|all: Vec<String>| all.into_iter().filter(|s| !blank(s)).collect::<Vec<_>>())
    .filter(|kept| !kept.is_empty());
    if stop.is_some() && refuses_stop(&req.model) {
        return Err(invalid(
            format!(
                "`stop` is not supported for `{}` by Bedrock: leave it out, or set `drop_params` on the deployment to drop it",
                req.model
            ),
            "stop",
        ));
    }
    // Opus 4.7 and later take no sampling parameters.
    let samples = thinking.is_none() && !reasoning::adaptive_only(&req.model);
    let inference = InferenceConfiguration::builder()
        .set_max_tokens(max_tokens.map(|m| m.min(i32::MAX as u32) as i32))
        // Converse takes 0–1; OpenAI clients may send up to 2.
        // With thinking, Claude takes neither `temperature` nor a narrow
        // `top_p`: they are left out.
        .set_temperature(
            req.extra
                .get("temperature")
                .and_then(Value::as_f64)
                .map(|t| t.clamp(0.0, 1.0) as f32)
                .filter(|_| samples),
        )
        .set_top_p(top_p(req).map(|t| t as f32).filter(|_| samples))
        .set_stop_sequences(stop)
        .build();
    let additional = (decided.field.is_some() || decided.effort.is_some() || one_call).then(|| {
        let mut fields = Map::new();
        if one_call {
            fields.insert(
                "tool_choice".into(),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            );
        }
        if let Some(field) = decided.field {
            fields.insert("thinking".into(), field);
        }
        if let Some(effort) = decided.effort {
            fields.insert("output_config".into(), json!({"effort": effort}));
        }
        to_document(&Value::Object(fields))
    });
    Ok(ConverseInput {
        system,
        messages,
        inference,
        tools,
        additional,
        output: structured_output(req)?,
    })
}

/// OpenAI's `finish_reason` for a Converse stop reason.
pub(crate) fn finish_reason(reason: &StopReason) -> String {
    match reason {
        StopReason::MaxTokens | StopReason::ModelContextWindowExceeded => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::ContentFiltered | StopReason::GuardrailIntervened => "content_filter",
        _ => "stop",
    }
    .to_owned()
}

/// OpenAI's `finish_reason` for an answer that ended with `reason` and
/// called (`called`) or did not call the client's tools: `tool_calls`
/// exactly when it called one, whatever the stop reason says (gpt-oss on
/// Converse stops with `end_turn` beside its tool calls; a text answer
/// may come with `tool_use`).
pub(crate) fn finish_for(reason: &StopReason, called: bool) -> String {
    let finish = finish_reason(reason);
    match finish.as_str() {
        "stop" if called => "tool_calls".to_owned(),
        "tool_calls" if !called => "stop".to_owned(),
        _ => finish,
    }
}

/// A stop reason that says the model's output is broken (a tool call or
/// output it could not form): an upstream fault, never a finished answer.
pub(crate) fn malformed(reason: &StopReason) -> Option<ProviderError> {
    matches!(reason, StopReason::MalformedToolUse | StopReason::MalformedModelOutput).then(|| {
        ProviderError::InvalidResponse(format!(
            "the model stopped with `{}`: its output could not be used",
            reason.as_str()
        ))
    })
}

/// OpenAI usage for Converse usage, cached tokens counted as Anthropic's
/// are; the cache writes' split by lifetime (`cacheDetails`) as Anthropic's
/// `cache_creation`, so hour-long writes are charged as such.
pub(crate) fn usage(u: &TokenUsage) -> Usage {
    let non_negative = |v: i32| u64::try_from(v).unwrap_or(0);
    let mut extra = Extra::new();
    if !u.cache_details().is_empty() {
        let written = |ttl: CacheTtl| {
            u.cache_details()
                .iter()
                .filter(|d| *d.ttl() == ttl)
                .map(|d| non_negative(d.input_tokens()))
                .fold(0_u64, u64::saturating_add)
        };
        extra.insert(
            "cache_creation".into(),
            json!({
                "ephemeral_1h_input_tokens": written(CacheTtl::OneHour),
                "ephemeral_5m_input_tokens": written(CacheTtl::FiveMinutes),
            }),
        );
    }
    crate::anthropic::translate::usage(&MessagesUsage {
        input_tokens: non_negative(u.input_tokens),
        output_tokens: non_negative(u.output_tokens),
        cache_read_input_tokens: u.cache_read_input_tokens.map(non_negative),
        cache_creation_input_tokens: u.cache_write_input_tokens.map(non_negative),
        extra,
    })
}

/// The OpenAI chat response for a Converse answer. With `json` (the request
/// asked for a JSON `response_format`), the JSON tool's input is the
/// message's text and the answer finishes with `stop`.
pub(crate) fn to_chat_response(
    output: ConverseOutput,
    id: String,
    model: String,
    created: u64,
    json: bool,
) -> ChatCompletionResponse {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut answered = false;
    let mut reasoning = String::new();
    let mut thinking_blocks = Vec::new();
    if let Some(message) = output.output.as_ref().and_then(|o| o.as_message().ok()) {
        for block in &message.content {
            match block {
                ContentBlock::ReasoningContent(ReasoningContentBlock::ReasoningText(t)) => {
                    reasoning.push_str(t.text());
                    // Signed (Claude's) blocks go back to the client to send
                    // again; others' reasoning is text only.
                    if let Some(signature) = t.signature().filter(|s| !s.is_empty()) {
                        thinking_blocks.push(serde_json::json!(
                            {"type": "thinking", "thinking": t.text(), "signature": signature}
                        ));
                    }
                }
                ContentBlock::ReasoningContent(ReasoningContentBlock::RedactedContent(data)) => {
                    thinking_blocks.push(serde_json::json!({
                        "type": "redacted_thinking",
                        "data": base64::engine::general_purpose::STANDARD.encode(data.as_ref()),
                    }));
                }
                ContentBlock::Text(_) if answered => {}
                ContentBlock::Text(t) => text.push_str(t),
                // The first JSON answer is the answer (two would not be JSON).
                ContentBlock::ToolUse(tool) if json && tool.name == JSON_TOOL && !answered => {
                    answered = true;
                    text = from_document(&tool.input).to_string();
                }
                ContentBlock::ToolUse(tool) if json && tool.name == JSON_TOOL => {}
                ContentBlock::ToolUse(tool) => calls.push(tool_call(
                    tool.tool_use_id.clone(),
                    tool.name.clone(),
                    from_document(&tool.input).to_string(),
                )),
                _ => {}
            }
        }
    }
    let finish = Some(json_finish(
        finish_for(&output.stop_reason, !calls.is_empty()),
        json && calls.is_empty(),
    ));
    let mut response = chat_response(
        id,
        model,
        created,
        text,
        calls,
        finish,
        output.usage.as_ref().map(usage),
    );
    reasoning::attach(&mut response, reasoning, thinking_blocks);
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use serde_json::json;

    use super::*;

    fn converse(body: Value) -> ConverseInput {
        let req: ChatCompletionRequest = serde_json::from_value(body).unwrap();
        to_converse(&req, Some(1024)).unwrap()
    }

    /// `tool_calls` is the finish of an answer that called a tool, and only
    /// of one, whatever Converse's stop reason says.
    #[test]
    fn the_finish_follows_the_calls_made() {
        assert_eq!(finish_for(&StopReason::EndTurn, true), "tool_calls");
        assert_eq!(finish_for(&StopReason::ToolUse, false), "stop");
        assert_eq!(finish_for(&StopReason::ToolUse, true), "tool_calls");
        assert_eq!(finish_for(&StopReason::MaxTokens, true), "length");
        assert_eq!(finish_for(&StopReason::EndTurn, false), "stop");
    }

    /// gpt-oss and Qwen refuse stop sequences on Converse: a 400 naming
    /// `stop`, or, with `drop_params`, the request without them.
    #[test]
    fn stop_sequences_go_only_to_models_that_take_them() {
        let body = |model: &str| json!({"model": model, "stop": ["\nObservation:"], "messages": [{"role": "user", "content": "hi"}]});
        let req: ChatCompletionRequest = serde_json::from_value(body("openai.gpt-oss-120b-1:0")).unwrap();
        assert!(
            matches!(to_converse(&req, None), Err(ProviderError::InvalidRequest { param: Some(p), .. }) if p == "stop")
        );
        let dropped = without_refused_stop(&req).unwrap();
        assert!(
            to_converse(&dropped, None)
                .unwrap()
                .inference
                .stop_sequences()
                .is_empty()
        );
        let llama = converse(body("meta.llama3-3-70b-instruct-v1:0"));
        assert_eq!(llama.inference.stop_sequences(), ["\nObservation:"]);
    }

    /// What Converse refuses is not sent: blank stop sequences, an empty
    /// tool description, an empty tool result, and a conversation that
    /// opens with the assistant.
    #[test]
    fn blank_fields_converse_refuses_are_mended() {
        let input = converse(json!({"model": "m", "stop": ["\n", "END"],
        "tools": [{"type": "function", "function": {"name": "now", "description": "",
            "parameters": {"type": "object", "properties": {}}}}],
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "assistant", "content": "Hi, how can I help?"},
            {"role": "user", "content": "what time is it?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": ""}
        ]}));
        assert_eq!(input.inference.stop_sequences(), ["END".to_owned()]);
        let Some(Tool::ToolSpec(spec)) = input.tools.as_ref().and_then(|t| t.tools().first()) else {
            panic!("{:?}", input.tools);
        };
        assert_eq!(spec.description(), None);
        let roles: Vec<_> = input.messages.iter().map(|m| m.role().clone()).collect();
        assert_eq!(
            roles,
            [
                ConversationRole::User,
                ConversationRole::Assistant,
                ConversationRole::User,
                ConversationRole::Assistant,
                ConversationRole::User
            ]
        );
        assert!(matches!(&input.messages[0].content()[0], ContentBlock::Text(t) if t == OPENING_USER_TURN));
        let ContentBlock::ToolResult(result) = &input.messages[4].content()[0] else {
            panic!("{:?}", input.messages[4]);
        };
        assert!(
            matches!(&result.content()[0], ToolResultContentBlock::Text(t) if t == EMPTY_TOOL_RESULT),
            "{result:?}"
        );
        // A prefill's trailing white space, which Claude refuses, is left out.
        let prefill = converse(json!({"model": "anthropic.claude-sonnet-4-5", "messages": [
            {"role": "user", "content": "Give me JSON."},
            {"role": "assistant", "content": "Here it is: \n"}
        ]}));
        assert!(
            matches!(prefill.messages[1].content(), [ContentBlock::Text(t)] if t == "Here it is:"),
            "{:?}",
            prefill.messages
        );
    }

    #[test]
    fn temperature_is_clamped_to_the_converse_range() {
        let input = converse(json!({"model": "m", "temperature": 1.7,
            "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(input.inference.temperature(), Some(1.0));
    }

    #[test]
    fn claude_gets_temperature_or_top_p_not_both() {
        let both = |model: &str| {
            converse(json!({"model": model, "temperature": 0.5, "top_p": 0.9,
                "messages": [{"role": "user", "content": "hi"}]}))
        };
        let claude = both("anthropic.claude-sonnet-4-5-20250929-v1:0");
        assert_eq!(claude.inference.temperature(), Some(0.5));
        assert_eq!(claude.inference.top_p(), None);
        assert_eq!(both("amazon.nova-lite-v1:0").inference.top_p(), Some(0.9));
        let only_top_p = converse(json!({"model": "anthropic.claude-3-haiku", "top_p": 0.9,
            "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(only_top_p.inference.top_p(), Some(0.9));
    }

    #[test]
    fn tool_choice_none_offers_no_tools() {
        let input = converse(json!({"model": "m", "tool_choice": "none",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "user", "content": "summarise"}
        ]}));
        assert!(input.tools.is_none(), "Converse has no `none`: the tools are left out");
        let blocks: Vec<&ContentBlock> = input.messages.iter().flat_map(|m| m.content()).collect();
        assert!(
            blocks.iter().all(|b| matches!(b, ContentBlock::Text(_))),
            "earlier calls go as text: {blocks:?}"
        );
    }

    #[test]
    fn without_tools_earlier_calls_are_passed_on_as_text() {
        let input = converse(json!({"model": "m", "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "c2", "content": "sunny"},
            {"role": "user", "content": "summarise"}
        ]}));
        assert!(input.tools.is_none());
        let blocks: Vec<&ContentBlock> = input.messages.iter().flat_map(|m| m.content()).collect();
        assert!(
            blocks
                .iter()
                .all(|b| !matches!(b, ContentBlock::ToolUse(_) | ContentBlock::ToolResult(_))),
            "{blocks:?}"
        );
        let text: Vec<&str> = blocks
            .iter()
            .filter_map(|b| b.as_text().ok())
            .map(String::as_str)
            .collect();
        assert!(text.contains(&"[called the tool `get_weather` with {}]"), "{text:?}");
        assert!(text.contains(&"[result of the tool call c2: sunny]"), "{text:?}");
        // An empty `tools` list offers none either.
        let empty = converse(json!({"model": "m", "tools": [], "messages": [
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}
        ]}));
        assert!(empty.tools.is_none());
    }

    /// Roles and text of each turn, documents and images as `[document NAME]`
    /// and `[image]`.
    fn turns(input: &ConverseInput) -> Vec<(String, Vec<String>)> {
        input
            .messages
            .iter()
            .map(|m| {
                let blocks = m
                    .content()
                    .iter()
                    .map(|b| match b {
                        ContentBlock::Text(text) => text.clone(),
                        ContentBlock::Document(d) => format!("[document {}]", d.name()),
                        ContentBlock::Image(_) => "[image]".into(),
                        ContentBlock::ToolResult(_) => "[result]".into(),
                        ContentBlock::ToolUse(_) => "[call]".into(),
                        other => format!("{other:?}"),
                    })
                    .collect();
                (m.role().as_str().to_owned(), blocks)
            })
            .collect()
    }

    /// Without tools, a tool result's images and files follow its text in
    /// the user's turn rather than being lost.
    #[test]
    fn without_tools_a_results_files_follow_it() {
        let input = converse(json!({"model": "m", "messages": [
            {"role": "user", "content": "fetch it"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "fetch", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": [
                {"type": "text", "text": "the report"},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0xLjQK"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]}
        ]}));
        assert_eq!(
            turns(&input)[2],
            (
                "user".to_owned(),
                vec![
                    "[result of the tool call c1: the report]".to_owned(),
                    "[document document 2-1]".to_owned(),
                    "[image]".to_owned()
                ]
            )
        );
    }

    /// Converse takes images and documents from the user only.
    #[test]
    fn an_assistants_file_is_refused_naming_it() {
        let req: ChatCompletionRequest = serde_json::from_value(json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "here"},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0xLjQK"}}
            ]}
        ]}))
        .unwrap();
        match to_converse(&req, None) {
            Err(ProviderError::InvalidRequest { param, .. }) => {
                assert_eq!(param.as_deref(), Some("messages[1].content[1]"));
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("an assistant's file was sent"),
        }
    }

    /// For a model without system prompts, the instructions open the
    /// conversation in a turn of their own when the first turn is the
    /// assistant's.
    #[test]
    fn moved_instructions_open_the_conversation() {
        let input = converse(json!({"model": "mistral.mistral-7b-instruct-v0:2", "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "hi"}
        ]}));
        let got = turns(&input);
        assert_eq!(got[0], ("user".to_owned(), vec!["Be terse.".to_owned()]), "{got:?}");
        assert_eq!(got[1].0, "assistant", "{got:?}");
        assert_eq!(got[2], ("user".to_owned(), vec!["hi".to_owned()]), "{got:?}");
    }

    fn weather_tool() -> Value {
        json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}])
    }

    /// A user message after tool results is a turn of its own, after a
    /// minimal assistant turn: Converse refuses tool results and text in
    /// one turn. Results of one call batch stay together.
    #[test]
    fn a_user_message_after_tool_results_gets_its_own_turn() {
        let input = converse(
            json!({"model": "meta.llama3-3-70b-instruct-v1:0", "tools": weather_tool(),
            "messages": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "c2", "content": "rain"},
                {"role": "user", "content": "now summarise"}
            ]}),
        );
        let roles: Vec<_> = input.messages.iter().map(|m| m.role().clone()).collect();
        assert_eq!(
            roles,
            [
                ConversationRole::User,
                ConversationRole::Assistant,
                ConversationRole::User,
                ConversationRole::Assistant,
                ConversationRole::User
            ]
        );
        let results = input.messages[2].content();
        assert_eq!(results.len(), 2);
        assert!(
            results.iter().all(|b| matches!(b, ContentBlock::ToolResult(_))),
            "{results:?}"
        );
        assert!(matches!(input.messages[3].content(), [ContentBlock::Text(t)] if t == AFTER_TOOL_RESULTS));
        assert!(matches!(input.messages[4].content(), [ContentBlock::Text(t)] if t == "now summarise"));
    }

    /// A cache breakpoint on a tool message is a cache point after its
    /// result, in the results' turn.
    #[test]
    fn a_tool_results_cache_control_is_a_cache_point_after_it() {
        let input = converse(
            json!({"model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "tools": weather_tool(),
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1",
                    "content": [{"type": "text", "text": "sunny", "cache_control": {"type": "ephemeral"}}]}
            ]}),
        );
        assert!(
            matches!(
                input.messages[2].content(),
                [ContentBlock::ToolResult(_), ContentBlock::CachePoint(_)]
            ),
            "{:?}",
            input.messages[2]
        );
    }

    /// Two assistant messages in a row (text, then a tool call with its
    /// thinking) become one turn that opens with the thinking.
    #[test]
    fn merged_assistant_turns_open_with_their_thinking() {
        let input = converse(
            json!({"model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "reasoning_effort": "low",
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "Let me check."},
                {"role": "assistant", "content": null,
                 "thinking_blocks": [{"type": "thinking", "thinking": "need the tool", "signature": "sig-1"}],
                 "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
            ]}),
        );
        let fields = from_document(input.additional.as_ref().unwrap());
        assert!(fields.get("thinking").is_some(), "{fields}");
        match input.messages[1].content() {
            [
                ContentBlock::ReasoningContent(_),
                ContentBlock::Text(_),
                ContentBlock::ToolUse(_),
            ] => {}
            other => panic!("{other:?}"),
        }
    }

    /// `parallel_tool_calls: false` reaches Claude as its own `tool_choice`
    /// among the additional fields, in place of Converse's `auto`; a forced
    /// choice and other models are left as they were.
    #[test]
    fn one_call_at_a_time_reaches_claude() {
        let tools =
            json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "g"}}]);
        let input = converse(
            json!({"model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "tools": tools,
            "tool_choice": "auto", "parallel_tool_calls": false,
            "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert!(input.tools.as_ref().unwrap().tool_choice.is_none());
        let fields = from_document(input.additional.as_ref().unwrap());
        assert_eq!(
            fields["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true}),
            "{fields}"
        );
        let forced = converse(
            json!({"model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "tools": tools,
            "tool_choice": "required", "parallel_tool_calls": false,
            "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert!(matches!(
            forced.tools.as_ref().unwrap().tool_choice,
            Some(ToolChoice::Any(_))
        ));
        assert!(forced.additional.is_none());
        let other = converse(
            json!({"model": "amazon.nova-pro-v1:0", "tools": tools, "parallel_tool_calls": false,
            "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert!(other.additional.is_none());
        let parallel = converse(
            json!({"model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "tools": tools,
            "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert!(parallel.additional.is_none());
    }

    /// Claude 4.6 and later models refuse to continue an assistant
    /// message: refused before it is sent, naming `messages`; other models
    /// take it.
    #[test]
    fn a_prefill_goes_only_to_models_that_continue_one() {
        let prefill = |model: &str| -> ChatCompletionRequest {
            serde_json::from_value(json!({"model": model, "messages": [
                {"role": "user", "content": "Give JSON"}, {"role": "assistant", "content": "{"}]}))
            .unwrap()
        };
        for model in ["anthropic.claude-opus-4-6-v1", "us.anthropic.claude-sonnet-4-6"] {
            match to_converse(&prefill(model), Some(100)) {
                Err(ProviderError::InvalidRequest { param, .. }) => assert_eq!(param.as_deref(), Some("messages")),
                Err(other) => panic!("{model}: {other:?}"),
                Ok(input) => panic!("{model}: sent {:?}", input.messages),
            }
        }
        for model in [
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            "meta.llama3-70b-instruct-v1:0",
        ] {
            let input = to_converse(&prefill(model), Some(100)).unwrap();
            assert_eq!(input.messages.len(), 2, "{model}");
        }
    }

    /// A Claude prefill's trailing white space is left out before its cache
    /// point too.
    #[test]
    fn a_marked_prefill_is_trimmed() {
        let mark = json!({"type": "ephemeral"});
        let input = converse(
            json!({"model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "messages": [
                {"role": "user", "content": "question"},
                {"role": "assistant", "content": [{"type": "text", "text": "Answer: ", "cache_control": mark}]}
            ]}),
        );
        match input.messages[1].content() {
            [ContentBlock::Text(text), ContentBlock::CachePoint(_)] => assert_eq!(text, "Answer:"),
            other => panic!("{other:?}"),
        }
        let input = converse(
            json!({"model": "anthropic.claude-sonnet-4-5-20250929-v1:0", "messages": [
                {"role": "user", "content": "question"},
                {"role": "assistant", "content": "  ", "cache_control": mark}
            ]}),
        );
        assert_eq!(input.messages.len(), 1, "{:?}", input.messages);
    }

    /// A mark on a message sent as a string, or on a tool, is a cache point
    /// after it (for a model that caches prompts).
    #[test]
    fn cache_marks_on_messages_and_tools_are_cache_points() {
        let mark = json!({"type": "ephemeral"});
        let body = |model: &str| {
            json!({"model": model,
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}, "cache_control": mark}],
            "messages": [
                {"role": "system", "content": "long instructions", "cache_control": mark},
                {"role": "user", "content": "weather?", "cache_control": mark},
                {"role": "assistant", "content": "looking", "cache_control": mark, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
            ]})
        };
        let input = converse(body("anthropic.claude-sonnet-4-5-20250929-v1:0"));
        assert!(
            matches!(
                input.system.as_slice(),
                [SystemContentBlock::Text(_), SystemContentBlock::CachePoint(_)]
            ),
            "{:?}",
            input.system.as_slice()
        );
        assert!(
            matches!(
                input.messages[0].content(),
                [ContentBlock::Text(_), ContentBlock::CachePoint(_)]
            ),
            "{:?}",
            input.messages[0]
        );
        assert!(
            matches!(
                input.messages[1].content(),
                [
                    ContentBlock::Text(_),
                    ContentBlock::ToolUse(_),
                    ContentBlock::CachePoint(_)
                ]
            ),
            "{:?}",
            input.messages[1]
        );
        let tools = input.tools.as_ref().map(|t| t.tools()).unwrap_or_default();
        assert!(matches!(tools, [Tool::ToolSpec(_), Tool::CachePoint(_)]), "{tools:?}");
        // Not after a thinking block.
        let input = converse(json!({"model": "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 4000,
        "messages": [
            {"role": "user", "content": "question"},
            {"role": "assistant", "content": "", "cache_control": mark,
             "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "sig"}]},
            {"role": "user", "content": "go on"}
        ]}));
        let content = input.messages[1].content();
        assert!(
            !content.iter().any(|b| matches!(b, ContentBlock::CachePoint(_))),
            "{content:?}"
        );
        // Nova caches no tools.
        let input = converse(body("amazon.nova-pro-v1:0"));
        assert!(matches!(
            input.messages[0].content(),
            [ContentBlock::Text(_), ContentBlock::CachePoint(_)]
        ));
        let tools = input.tools.as_ref().map(|t| t.tools()).unwrap_or_default();
        assert!(matches!(tools, [Tool::ToolSpec(_)]), "{tools:?}");
        // A model without prompt caching gets none of them.
        let input = converse(body("meta.llama3-70b-instruct-v1:0"));
        assert!(
            matches!(input.system.as_slice(), [SystemContentBlock::Text(_)]),
            "{:?}",
            input.system.as_slice()
        );
        assert!(matches!(input.messages[0].content(), [ContentBlock::Text(_)]));
        let tools = input.tools.as_ref().map(|t| t.tools()).unwrap_or_default();
        assert!(matches!(tools, [Tool::ToolSpec(_)]), "{tools:?}");
    }

    /// Instructions alone (a conversation of one system message, which
    /// OpenAI answers) are the user's turn: Converse needs one.
    #[test]
    fn instructions_alone_are_the_users_turn() {
        let input = converse(json!({"model": "anthropic.claude-sonnet-4-5", "messages": [
            {"role": "system", "content": "Write a haiku about rain."}]}));
        assert!(input.system.is_empty(), "{:?}", input.system);
        assert_eq!(input.messages.len(), 1);
        assert_eq!(input.messages[0].role(), &ConversationRole::User);
        assert!(
            matches!(input.messages[0].content(), [ContentBlock::Text(t)] if t == "Write a haiku about rain."),
            "{:?}",
            input.messages
        );
    }

    /// A forced tool choice goes to the models that take one; others
    /// refuse it, so it is refused naming `tool_choice`, or, with
    /// `drop_params`, sent as `auto` (with only the named tool offered).
    #[test]
    fn a_forced_tool_choice_goes_only_to_models_that_take_it() {
        let two_tools = json!([
            {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "time", "parameters": {"type": "object"}}}]);
        let body = |model: &str, choice: Value| {
            json!({"model": model, "tools": two_tools, "tool_choice": choice,
                "messages": [{"role": "user", "content": "weather?"}]})
        };
        let claude = converse(body("anthropic.claude-sonnet-4-5", json!("required")));
        assert!(matches!(
            claude.tools.as_ref().and_then(|t| t.tool_choice()),
            Some(ToolChoice::Any(_))
        ));
        for choice in [
            json!("required"),
            json!({"type": "function", "function": {"name": "time"}}),
        ] {
            let req: ChatCompletionRequest =
                serde_json::from_value(body("meta.llama3-3-70b-instruct-v1:0", choice)).unwrap();
            let Err(err) = to_converse(&req, None) else {
                panic!("a forced choice to Llama was sent");
            };
            assert!(
                matches!(&err, ProviderError::InvalidRequest { param: Some(p), .. } if p == "tool_choice"),
                "{err}"
            );
            let unforced = without_forced_choice(&req).unwrap();
            let input = to_converse(&unforced, None).unwrap();
            let tools = input.tools.unwrap();
            assert!(matches!(tools.tool_choice(), Some(ToolChoice::Auto(_))));
            let names: Vec<_> = tools
                .tools()
                .iter()
                .filter_map(|t| t.as_tool_spec().ok().map(|s| s.name().to_owned()))
                .collect();
            let named = req.extra["tool_choice"].is_object();
            assert_eq!(names, if named { vec!["time"] } else { vec!["weather", "time"] });
        }
        // `auto`, and models Bedrock alone knows (an ARN), are left as sent.
        let req: ChatCompletionRequest =
            serde_json::from_value(body("meta.llama3-3-70b-instruct-v1:0", json!("auto"))).unwrap();
        assert!(to_converse(&req, None).is_ok() && without_forced_choice(&req).is_none());
        let arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc";
        let req: ChatCompletionRequest = serde_json::from_value(body(arn, json!("required"))).unwrap();
        assert!(to_converse(&req, None).is_ok() && without_forced_choice(&req).is_none());
        // Claude that always thinks refuses a forced tool; Opus 5 takes one,
        // told not to think.
        let always: ChatCompletionRequest =
            serde_json::from_value(body("global.anthropic.claude-opus-5-5-v1:0", json!("required"))).unwrap();
        assert!(
            matches!(to_converse(&always, None), Err(ProviderError::InvalidRequest { param: Some(p), .. }) if p == "tool_choice")
        );
        let sent = crate::anthropic::translate::as_sent(&always, true);
        let input = to_converse(&sent, None).unwrap();
        assert!(matches!(input.tools.unwrap().tool_choice(), Some(ToolChoice::Auto(_))));
        assert!(input.additional.is_none(), "left to the model");
        let opus5 = converse(body("us.anthropic.claude-opus-5-v1:0", json!("required")));
        let fields = serde_json::to_string(&format!("{:?}", opus5.additional)).unwrap();
        assert!(fields.contains("disabled"), "{fields}");
    }

    /// `cache_control: null` (a client writing every optional field) asks
    /// for no cache point; OpenAI's default `modalities` is not refused.
    #[test]
    fn null_cache_marks_and_default_modalities_ask_for_nothing() {
        let input = converse(json!({"model": "anthropic.claude-sonnet-4-5", "modalities": ["text"],
            "top_logprobs": 0, "tools": weather_tool(), "messages": [
            {"role": "system", "content": [{"type": "text", "text": "rules", "cache_control": null}]},
            {"role": "user", "content": [{"type": "text", "text": "weather?", "cache_control": null}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "cache_control": null,
                "content": [{"type": "text", "text": "sunny", "cache_control": null}]}
        ]}));
        assert_eq!(input.system.len(), 1, "{:?}", input.system);
        for message in &input.messages {
            assert!(
                !message
                    .content()
                    .iter()
                    .any(|b| matches!(b, ContentBlock::CachePoint(_))),
                "{message:?}"
            );
        }
        let req: ChatCompletionRequest = serde_json::from_value(json!({"model": "m",
            "modalities": ["text", "audio"], "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap();
        assert!(to_converse(&req, None).is_err());
    }

    /// An image's format is the one its bytes show, whatever its data URL
    /// declares (OpenAI goes by the bytes).
    #[test]
    fn an_images_format_is_the_one_its_bytes_show() {
        let jpeg = base64::engine::general_purpose::STANDARD.encode(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01");
        let input = converse(json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{jpeg}")}}]}]}));
        let ContentBlock::Image(image) = &input.messages[0].content()[0] else {
            panic!("{:?}", input.messages[0]);
        };
        assert_eq!(image.format(), &ImageFormat::Jpeg);
    }

    /// A model that refuses a system prompt gets it in its first user turn.
    #[test]
    fn system_prompts_go_in_the_user_turn_where_refused() {
        let body = |model: &str| {
            json!({"model": model, "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"}
            ]})
        };
        let mixtral = converse(body("mistral.mixtral-8x7b-instruct-v0:1"));
        assert!(mixtral.system.is_empty());
        assert!(
            matches!(mixtral.messages[0].content(), [ContentBlock::Text(s), ContentBlock::Text(q)] if s == "Be brief." && q == "hi"),
            "{:?}",
            mixtral.messages
        );
        let nova = converse(body("amazon.nova-lite-v1:0"));
        assert_eq!(nova.system.len(), 1);
    }

    /// Hour-long cache writes keep their lifetime, for their price.
    #[test]
    fn cache_writes_keep_their_lifetime() {
        use aws_sdk_bedrockruntime::types::CacheDetail;
        let detail = |ttl: CacheTtl, n: i32| CacheDetail::builder().ttl(ttl).input_tokens(n).build().unwrap();
        let converse_usage = TokenUsage::builder()
            .input_tokens(10)
            .output_tokens(5)
            .total_tokens(315)
            .cache_write_input_tokens(300)
            .cache_details(detail(CacheTtl::OneHour, 200))
            .cache_details(detail(CacheTtl::FiveMinutes, 100))
            .build()
            .unwrap();
        let openai = usage(&converse_usage);
        assert_eq!(
            openai.extra["cache_creation"],
            json!({"ephemeral_1h_input_tokens": 200, "ephemeral_5m_input_tokens": 100})
        );
        assert_eq!(openai.cache_write_tokens(), 300);
    }

    /// A model without prompt caching refuses cache points: the marks,
    /// hints only, are left out for it.
    #[test]
    fn cache_points_go_only_to_models_that_cache() {
        let marked = |model: &str| {
            converse(json!({"model": model, "messages": [
                {"role": "system", "content": [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}]},
                {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}
            ]}))
        };
        let points = |input: &ConverseInput| {
            input
                .system
                .iter()
                .filter(|b| matches!(b, SystemContentBlock::CachePoint(_)))
                .count()
                + input.messages[0]
                    .content()
                    .iter()
                    .filter(|b| matches!(b, ContentBlock::CachePoint(_)))
                    .count()
        };
        for model in [
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "amazon.nova-pro-v1:0",
            "anthropic.claude-3-7-sonnet-20250219-v1:0",
        ] {
            assert_eq!(points(&marked(model)), 2, "{model}");
        }
        for model in [
            "meta.llama3-3-70b-instruct-v1:0",
            "anthropic.claude-3-haiku-20240307-v1:0",
            "mistral.mistral-large-2407-v1:0",
        ] {
            assert_eq!(points(&marked(model)), 0, "{model}");
        }
    }

    /// Without `max_tokens` from the client or the deployment, only Claude
    /// gets a default: another model's own limit may be lower, and Bedrock
    /// refuses a `maxTokens` past it.
    #[test]
    fn max_tokens_is_sent_only_when_someone_chose_it() {
        let with = |model: &str, default: Option<u32>, asked: Option<u64>| {
            let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
            if let Some(asked) = asked {
                body["max_tokens"] = json!(asked);
            }
            let req: ChatCompletionRequest = serde_json::from_value(body).unwrap();
            to_converse(&req, default).unwrap().inference.max_tokens()
        };
        assert_eq!(with("meta.llama3-70b-instruct-v1:0", None, None), None);
        assert_eq!(with("meta.llama3-70b-instruct-v1:0", Some(1_000), None), Some(1_000));
        assert_eq!(with("meta.llama3-70b-instruct-v1:0", Some(1_000), Some(50)), Some(50));
        assert_eq!(
            with("anthropic.claude-3-haiku-20240307-v1:0", None, None),
            Some(DEFAULT_MAX_TOKENS as i32)
        );
    }
}
