//! The protocol-neutral assistant reply shared by the Anthropic and Bedrock
//! mocks: text echo, tool results, forced tool use, `max_tokens` truncation
//! and stop sequences.

use serde_json::Value;

use crate::openai_mock::word_count;

/// Cache-read input tokens reported when a request marks a cache point.
pub const MOCK_CACHE_READ_TOKENS: u64 = 7;

/// Cache-write input tokens reported when a request marks a cache point.
pub const MOCK_CACHE_WRITE_TOKENS: u64 = 3;

/// Text that precedes forced tool calls.
const TOOL_PREAMBLE: &str = "Let me check.";

/// How a request asks for tools to be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToolChoice {
    /// The model may answer in text (`auto`, `none` or no choice).
    Auto,
    /// The model must call some tool.
    Any,
    /// The model must call the named tool.
    Named(String),
}

/// What the reply is computed from.
#[derive(Debug, Clone)]
pub(crate) struct ReplyRequest {
    /// Text of the last user message.
    pub(crate) user_text: String,
    /// Text of a tool result in the last user message, if any.
    pub(crate) tool_result: Option<String>,
    /// Names of the request's tools, in order.
    pub(crate) tools: Vec<String>,
    /// The request's tool choice.
    pub(crate) tool_choice: ToolChoice,
    /// Whether forced tool use calls two tools (`parallel_tools`).
    pub(crate) parallel_tools: bool,
    /// Output token limit, if any.
    pub(crate) max_tokens: Option<u64>,
    /// Stop sequences, in request order.
    pub(crate) stop_sequences: Vec<String>,
}

/// One content block of a reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ReplyBlock {
    /// Assistant text.
    Text(String),
    /// A tool call.
    ToolUse {
        /// Tool call id.
        id: String,
        /// Tool name.
        name: String,
        /// The arguments as JSON text, as streamed.
        input_json: String,
        /// The arguments as a JSON value.
        input: Value,
    },
}

/// A complete assistant reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    /// Content blocks in order.
    pub(crate) blocks: Vec<ReplyBlock>,
    /// `end_turn`, `tool_use`, `max_tokens` or `stop_sequence`.
    pub(crate) stop_reason: &'static str,
    /// The stop sequence that ended the reply, if one did.
    pub(crate) stop_sequence: Option<String>,
}

impl Reply {
    /// Output tokens: the words of the text blocks plus one per tool call.
    pub(crate) fn output_tokens(&self) -> usize {
        self.blocks
            .iter()
            .map(|block| match block {
                ReplyBlock::Text(text) => word_count(text),
                ReplyBlock::ToolUse { .. } => 1,
            })
            .sum()
    }
}

/// Builds the reply; tool call ids are `<id_prefix>0`, `<id_prefix>1`, ….
pub(crate) fn build_reply(request: &ReplyRequest, id_prefix: &str) -> Reply {
    let calls = forced_calls(request);
    if !calls.is_empty() {
        let mut blocks = vec![ReplyBlock::Text(TOOL_PREAMBLE.to_owned())];
        for (index, name) in calls.into_iter().enumerate() {
            let input_json = format!(r#"{{"q":"mock","n":{}}}"#, index + 1);
            let input = serde_json::from_str(&input_json).unwrap_or(Value::Null);
            blocks.push(ReplyBlock::ToolUse {
                id: format!("{id_prefix}{index}"),
                name,
                input_json,
                input,
            });
        }
        return Reply {
            blocks,
            stop_reason: "tool_use",
            stop_sequence: None,
        };
    }
    let source = match &request.tool_result {
        Some(result) => format!("tool said {result}"),
        None => request.user_text.clone(),
    };
    let mut text = std::iter::once("mock reply:")
        .chain(source.split_whitespace())
        .collect::<Vec<_>>()
        .join(" ");
    let mut stop_reason = "end_turn";
    let mut stop_sequence = None;
    let earliest = request
        .stop_sequences
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|at| (at, s)))
        .min_by_key(|(at, _)| *at);
    if let Some((at, sequence)) = earliest {
        text = text[..at].trim_end().to_owned();
        stop_reason = "stop_sequence";
        stop_sequence = Some(sequence.clone());
    }
    let limit = request.max_tokens.and_then(|m| usize::try_from(m).ok());
    if let Some(limit) = limit.filter(|limit| *limit < word_count(&text)) {
        text = text.split_whitespace().take(limit).collect::<Vec<_>>().join(" ");
        stop_reason = "max_tokens";
        stop_sequence = None;
    }
    Reply {
        blocks: vec![ReplyBlock::Text(text)],
        stop_reason,
        stop_sequence,
    }
}

/// Tool names the reply calls: none unless the request forces tool use.
fn forced_calls(request: &ReplyRequest) -> Vec<String> {
    let first = match &request.tool_choice {
        ToolChoice::Auto => return Vec::new(),
        ToolChoice::Any => match request.tools.first() {
            Some(name) => name.clone(),
            None => return Vec::new(),
        },
        ToolChoice::Named(name) => name.clone(),
    };
    if !request.parallel_tools {
        return vec![first];
    }
    let second = match (&request.tool_choice, request.tools.get(1)) {
        (ToolChoice::Any, Some(name)) => name.clone(),
        _ => first.clone(),
    };
    vec![first, second]
}

/// Splits tool-call JSON into two or three streamed pieces.
pub(crate) fn json_pieces(json: &str) -> Vec<String> {
    let chars: Vec<char> = json.chars().collect();
    let parts = if chars.len() >= 9 { 3 } else { 2 };
    let size = chars.len().div_ceil(parts).max(1);
    chars.chunks(size).map(|chunk| chunk.iter().collect()).collect()
}

/// Whether `key` appears as an object key anywhere inside `value`.
pub(crate) fn contains_key(value: &Value, key: &str) -> bool {
    match value {
        Value::Object(map) => map.contains_key(key) || map.values().any(|v| contains_key(v, key)),
        Value::Array(items) => items.iter().any(|v| contains_key(v, key)),
        _ => false,
    }
}

/// Cache read and write tokens for a request that does or does not mark a cache point.
pub(crate) fn cache_tokens(cached: bool) -> (u64, u64) {
    if cached {
        (MOCK_CACHE_READ_TOKENS, MOCK_CACHE_WRITE_TOKENS)
    } else {
        (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> ReplyRequest {
        ReplyRequest {
            user_text: text.to_owned(),
            tool_result: None,
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            parallel_tools: false,
            max_tokens: None,
            stop_sequences: Vec::new(),
        }
    }

    fn text_of(reply: &Reply) -> &str {
        match &reply.blocks[0] {
            ReplyBlock::Text(text) => text,
            ReplyBlock::ToolUse { .. } => panic!("expected text"),
        }
    }

    #[test]
    fn echoes_and_truncates() {
        let reply = build_reply(&request("hello  there world"), "t");
        assert_eq!(text_of(&reply), "mock reply: hello there world");
        assert_eq!(reply.stop_reason, "end_turn");
        assert_eq!(reply.output_tokens(), 5);

        let mut limited = request("hello there world");
        limited.max_tokens = Some(3);
        let reply = build_reply(&limited, "t");
        assert_eq!(text_of(&reply), "mock reply: hello");
        assert_eq!(reply.stop_reason, "max_tokens");

        let mut stopped = request("hello there world");
        stopped.stop_sequences = vec!["world".into(), "there".into()];
        let reply = build_reply(&stopped, "t");
        assert_eq!(text_of(&reply), "mock reply: hello");
        assert_eq!(reply.stop_reason, "stop_sequence");
        assert_eq!(reply.stop_sequence.as_deref(), Some("there"));
    }

    #[test]
    fn tool_results_and_forced_tools() {
        let mut with_result = request("ignored");
        with_result.tool_result = Some("42 degrees".into());
        assert_eq!(
            text_of(&build_reply(&with_result, "t")),
            "mock reply: tool said 42 degrees"
        );

        let mut forced = request("x");
        forced.tools = vec!["a".into(), "b".into()];
        forced.tool_choice = ToolChoice::Any;
        forced.parallel_tools = true;
        let reply = build_reply(&forced, "toolu_mock_");
        assert_eq!(reply.stop_reason, "tool_use");
        assert_eq!(reply.blocks.len(), 3);
        let ReplyBlock::ToolUse { id, name, input, .. } = &reply.blocks[2] else {
            panic!("expected tool use");
        };
        assert_eq!((id.as_str(), name.as_str()), ("toolu_mock_1", "b"));
        assert_eq!(input, &serde_json::json!({"q": "mock", "n": 2}));

        forced.tool_choice = ToolChoice::Named("b".into());
        forced.parallel_tools = false;
        assert_eq!(forced_calls(&forced), vec!["b".to_owned()]);
    }

    #[test]
    fn helpers() {
        let json = r#"{"q":"mock","n":1}"#;
        let pieces = json_pieces(json);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces.concat(), json);
        assert!(contains_key(
            &serde_json::json!([{"a": {"cache_control": 1}}]),
            "cache_control"
        ));
        assert!(!contains_key(
            &serde_json::json!({"a": "cache_control"}),
            "cache_control"
        ));
    }
}
