//! OpenAI's `response_format` (`json_object`, `json_schema`) for providers
//! without it (Anthropic, Bedrock Converse): the answer is asked for as the
//! input of a tool whose schema is the requested one, and that input comes
//! back to the client as the message's text. Alone, the tool is forced; next
//! to the client's own tools, the model chooses between them.

use serde_json::{Value, json};
use switchyard_api::ChatCompletionRequest;

use crate::{ProviderError, Result};

/// The name of the tool that carries a JSON answer.
pub const JSON_TOOL: &str = "json_tool_call";

/// The tool a JSON answer is asked for through.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonTool {
    /// What the model is told the tool is for.
    pub description: String,
    /// The JSON Schema the answer must follow (an object at the root).
    pub schema: Value,
}

fn invalid(message: impl Into<String>, param: &str) -> ProviderError {
    ProviderError::InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// The tool `req`'s `response_format` asks for; `None` for text answers.
pub fn json_tool(req: &ChatCompletionRequest) -> Result<Option<JsonTool>> {
    let Some(format) = req.extra.get("response_format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let kind = format.get("type").and_then(Value::as_str);
    let tool = match kind {
        Some("text") => return Ok(None),
        Some("json_object") => JsonTool {
            description: "Answer with a JSON object.".into(),
            schema: json!({"type": "object"}),
        },
        Some("json_schema") => {
            let spec = format.get("json_schema");
            let mut schema = spec
                .and_then(|s| s.get("schema"))
                .filter(|s| s.is_object())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            // A tool's input is an object: a schema for anything else, or a
            // choice at its root, cannot be one.
            let root_choice = ["anyOf", "oneOf", "allOf"].iter().any(|k| schema.get(*k).is_some());
            match schema.get("type") {
                None if !root_choice => {
                    schema["type"] = json!("object");
                }
                Some(Value::String(t)) if t == "object" && !root_choice => {}
                _ => {
                    return Err(invalid(
                        "this provider answers JSON through a tool, whose schema must describe an object (`type: object`, no anyOf, oneOf or allOf at the root)",
                        "response_format.json_schema.schema",
                    ));
                }
            }
            let description = spec
                .and_then(|s| s.get("description"))
                .and_then(Value::as_str)
                .map_or_else(
                    || "Answer with a JSON object that follows this schema.".to_owned(),
                    |d| format!("Answer with a JSON object that follows this schema. {d}"),
                );
            JsonTool { description, schema }
        }
        _ => {
            return Err(invalid(
                "`response_format.type` must be text, json_object or json_schema",
                "response_format",
            ));
        }
    };
    Ok(Some(tool))
}

/// Whether `req` offers the model tools it may call (a `tool_choice` of
/// `none` offers none): the JSON tool then goes next to them, unforced.
pub fn offers_tools(req: &ChatCompletionRequest) -> bool {
    req.extra
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
        && req.extra.get("tool_choice").and_then(Value::as_str) != Some("none")
}

/// Whether `req` names tools the model may not call (`tool_choice: none`).
pub fn forbids_tools(req: &ChatCompletionRequest) -> bool {
    req.extra.get("tool_choice").and_then(Value::as_str) == Some("none")
}

/// The finish reason of a JSON answer: its tool call is the answer (`json`:
/// the answer is JSON and called none of the client's tools).
pub(crate) fn json_finish(finish: String, json: bool) -> String {
    if json && finish == "tool_calls" {
        "stop".to_owned()
    } else {
        finish
    }
}

/// A tool's `parameters` as a tool schema for Anthropic and Bedrock, which
/// want a `type` at its root: none (or null) is an object without properties, and
/// an object schema without `type` (`{}`, common from MCP tools) gets
/// `"type": "object"`.
pub(crate) fn tool_input_schema(parameters: Option<&Value>) -> Value {
    match parameters {
        None | Some(Value::Null) => json!({"type": "object"}),
        Some(Value::Object(schema)) if !schema.contains_key("type") => {
            let mut schema = schema.clone();
            schema.insert("type".into(), json!("object"));
            Value::Object(schema)
        }
        Some(other) => other.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn req(body: Value) -> ChatCompletionRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn each_format_becomes_its_tool_or_none() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(json_tool(&req(base.clone())).unwrap(), None);
        let mut text = base.clone();
        text["response_format"] = json!({"type": "text"});
        assert_eq!(json_tool(&req(text)).unwrap(), None);
        let mut object = base.clone();
        object["response_format"] = json!({"type": "json_object"});
        assert_eq!(
            json_tool(&req(object)).unwrap().unwrap().schema,
            json!({"type": "object"})
        );
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
        let mut with_schema = base.clone();
        with_schema["response_format"] = json!({"type": "json_schema",
            "json_schema": {"name": "place", "description": "Where.", "schema": schema, "strict": true}});
        let tool = json_tool(&req(with_schema.clone())).unwrap().unwrap();
        assert_eq!(tool.schema, schema);
        assert!(tool.description.ends_with("Where."), "{}", tool.description);
        // Next to the client's tools it is offered, not forced.
        assert!(!offers_tools(&req(with_schema.clone())));
        with_schema["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
        assert!(json_tool(&req(with_schema.clone())).unwrap().is_some());
        assert!(offers_tools(&req(with_schema.clone())));
        with_schema["tool_choice"] = json!("none");
        assert!(!offers_tools(&req(with_schema)));
        // A schema without a root type describes an object; one for another
        // type, or with a choice at its root, is refused, naming the field.
        let mut untyped = base.clone();
        untyped["response_format"] =
            json!({"type": "json_schema", "json_schema": {"name": "u", "schema": {"properties": {}}}});
        assert_eq!(
            json_tool(&req(untyped)).unwrap().unwrap().schema,
            json!({"type": "object", "properties": {}})
        );
        for schema in [json!({"type": "array"}), json!({"anyOf": [{"type": "object"}]})] {
            let mut bad = base.clone();
            bad["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "l", "schema": schema}});
            let err = json_tool(&req(bad)).unwrap_err();
            assert!(
                matches!(err, ProviderError::InvalidRequest { param: Some(ref p), .. } if p == "response_format.json_schema.schema"),
                "{err:?}"
            );
        }
    }
}
