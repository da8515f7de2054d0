//! Per-request fault-injection directives.
//!
//! A scenario spec is a comma-separated list of directives such as
//! `first_byte_ms=200,status=503,retry_after=1`. It is read from the
//! `x-mock-scenario` request header, or else from the part of the model
//! (or Azure deployment, or percent-decoded Bedrock model id) name after the
//! first `::`.

use std::str::FromStr;

/// Name of the request header that carries a scenario spec.
pub const SCENARIO_HEADER: &str = "x-mock-scenario";

/// Fault-injection settings for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scenario {
    /// Sleep this many milliseconds before sending response headers.
    pub first_byte_ms: Option<u64>,
    /// Streaming: sleep this many milliseconds between SSE events.
    pub chunk_delay_ms: Option<u64>,
    /// Streaming: emit exactly this many content chunks.
    pub chunks: Option<usize>,
    /// Reply with this HTTP status and an OpenAI-style error body.
    pub status: Option<u16>,
    /// With `status`: value of the `Retry-After` header, in seconds.
    pub retry_after: Option<u64>,
    /// Abort the connection after this many content chunks (0 for non-streaming bodies).
    pub reset_after: Option<usize>,
    /// Non-streaming: reply 200 with a truncated JSON body.
    pub malformed_json: bool,
    /// Streaming: send an event whose data is not JSON after the first event
    /// (for Bedrock, an event-stream frame whose payload is not JSON).
    pub malformed_sse: bool,
    /// OpenAI streaming: after the first content event, send one that is
    /// JSON but no chat chunk (`{"object": "status"}`, as some compatible
    /// servers send).
    pub foreign_chunk: bool,
    /// Never respond.
    pub hang: bool,
    /// Override the embedding dimensions.
    pub embedding_dims: Option<usize>,
    /// Anthropic and Bedrock: forced tool use calls two tools instead of one.
    pub parallel_tools: bool,
    /// Streaming: send an error after the first content delta (an `error`
    /// event, a Bedrock exception, or OpenAI's `{"error": …}` chunk), then
    /// end the stream.
    pub error_event: bool,
    /// Streaming: answer 200, then refuse the request in the stream's first
    /// event, as vLLM reports what it refuses once it has begun a stream
    /// (its flat error object for a sampling setting it refuses, then
    /// `[DONE]`) and Bedrock what the model refuses (a `validationException`
    /// frame).
    pub refused_in_stream: bool,
    /// OpenAI format: refuse a request with `tools` as Ollama does for a
    /// model without tool calling (400 "… does not support tools").
    pub no_tools: bool,
    /// Anthropic and Bedrock streaming: end the stream cleanly without its
    /// final stop event(s) (`message_stop`; `messageStop` and `metadata`).
    pub no_stop: bool,
    /// Streaming: send the response head at once, then wait this many
    /// milliseconds before the first event.
    pub first_event_ms: Option<u64>,
    /// The other directives apply to the first N requests carrying this spec
    /// only; later ones are served normally (an upstream that recovers).
    pub fail_first: Option<u64>,
    /// Reject prompts longer than this many words with the protocol's
    /// "context window exceeded" error.
    pub context_window: Option<usize>,
    /// Reject the request with the protocol's content-policy error (Bedrock:
    /// answer as an intervening guardrail does, `guardrail_intervened`).
    pub content_filter: bool,
    /// Bedrock: refuse the request as AWS does a temporary credential that
    /// ran out (403 `ExpiredTokenException`).
    pub expired_token: bool,
    /// Bedrock: refuse the request as AWS does a signature from a clock
    /// ahead of its own (403 `InvalidSignatureException`, "Signature not
    /// yet current").
    pub skewed_clock: bool,
    /// Anthropic-format streaming: send each event as its `data:` lines
    /// alone, without its `event:` line, as some compatible proxies do.
    pub unnamed_events: bool,
    /// OpenAI format, not streaming: end the answer with vLLM's
    /// `finish_reason: "abort"` (the engine dropped the request).
    pub engine_abort: bool,
    /// OpenAI format: refuse the prompt as OpenRouter's moderation does, with
    /// a 403 "Your input was flagged" (not a rejection of the key).
    pub moderated: bool,
    /// Bedrock: the model stops with `malformed_tool_use` (a tool call it
    /// could not form).
    pub malformed_tool_use: bool,
    /// OpenAI and Anthropic streaming: after the first event, send one event
    /// whose `data:` line grows by this many KiB, in 64 KiB body chunks,
    /// before it ends.
    pub huge_event_kib: Option<usize>,
    /// OpenAI and Anthropic streaming: spread each event's JSON over several
    /// `data:` lines (pretty-printed), as the SSE format allows.
    pub multiline_sse: bool,
    /// OpenAI: send no usage chunk even when the request asks for one
    /// (`stream_options.include_usage`), and no `usage` in a JSON answer, as
    /// some compatible servers do.
    pub no_usage: bool,
    /// OpenAI JSON answers: a chat answer's `usage` without `total_tokens`,
    /// and an embeddings answer's with `total_tokens` only (as Voyage AI
    /// counts), as some compatible servers report.
    pub partial_usage: bool,
    /// Non-streaming: reply 200 with valid JSON that is not an answer (no
    /// `choices`), with usage.
    pub wrong_shape: bool,
    /// Answer `307 Temporary Redirect` to [`REDIRECT_TARGET`] on the same
    /// server (a compromised or misconfigured upstream).
    pub redirect: bool,
    /// Answer 404 as OpenAI does for a model it does not have
    /// (`model_not_found`, "… does not exist or you do not have access to it").
    pub unknown_model: bool,
    /// Streaming: end the body this many milliseconds after the last event
    /// (HTTP/1.1's last chunk comes in a later write, as some servers send it).
    pub late_end_ms: Option<u64>,
    /// OpenAI: answer a request for a stream with the whole JSON answer, as
    /// a server that does not stream does.
    pub no_stream: bool,
    /// OpenAI streaming: label the event stream `application/json`, as some
    /// servers do.
    pub json_labelled: bool,
    /// OpenAI: answer a request for a stream `200` with a JSON error object
    /// (`invalid_request_error`), as some servers do.
    pub json_error: bool,
    /// Anthropic: report this many web searches run for the answer
    /// (`usage.server_tool_use.web_search_requests`).
    pub web_searches: Option<u64>,
    /// Bedrock: the model writes at most this many tokens, and refuses a
    /// `maxTokens` above it (`ValidationException`), as Llama and Titan do.
    pub max_output: Option<u64>,
    /// Bedrock: the model is served only through an inference profile, and
    /// a call to its own id is refused (`ValidationException`).
    pub profile_only: bool,
    /// OpenAI: tool calls carry a thought signature
    /// (`extra_content.google.thought_signature`), and a request whose
    /// assistant turn sends one of these calls back without it is refused,
    /// as Gemini 3's OpenAI-compatible endpoint does.
    pub signed_calls: bool,
    /// OpenAI: refuse a message that echoes reasoning (`reasoning_content`,
    /// `thinking_blocks`), as Groq and Cerebras do.
    pub refuses_reasoning: bool,
    /// OpenAI: refuse any request carrying `stream_options` with the 422
    /// `extra_forbidden` error Mistral's API sends (its `message` an object),
    /// and end every stream with usage, as Mistral does unasked.
    pub refuses_stream_options: bool,
    /// OpenAI: answer with reasoning (`reasoning_content`) first, and refuse
    /// an assistant turn that called tools sent back without its reasoning,
    /// as DeepSeek's thinking mode does.
    pub reasons: bool,
}

/// Where a `redirect` scenario sends the client; a request arriving there is
/// recorded like any other.
pub const REDIRECT_TARGET: &str = "/redirected";

impl Scenario {
    /// Parses a comma-separated directive list. Empty entries are ignored.
    ///
    /// Returns an error message naming the offending directive when a
    /// directive is unknown or its value does not parse.
    pub fn parse(spec: &str) -> Result<Scenario, String> {
        let mut scenario = Scenario::default();
        for raw in spec.split(',') {
            let directive = raw.trim();
            if directive.is_empty() {
                continue;
            }
            let (name, value) = match directive.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim())),
                None => (directive, None),
            };
            match name {
                "first_byte_ms" => scenario.first_byte_ms = Some(number(name, value)?),
                "chunk_delay_ms" => scenario.chunk_delay_ms = Some(number(name, value)?),
                "chunks" => scenario.chunks = Some(number(name, value)?),
                "status" => {
                    let code: u16 = number(name, value)?;
                    if !(100..=999).contains(&code) {
                        return Err(format!("invalid value for mock directive `{name}`"));
                    }
                    scenario.status = Some(code);
                }
                "retry_after" => scenario.retry_after = Some(number(name, value)?),
                "reset_after" => scenario.reset_after = Some(number(name, value)?),
                "embedding_dims" => scenario.embedding_dims = Some(number(name, value)?),
                "malformed_json" => scenario.malformed_json = flag(name, value)?,
                "malformed_sse" => scenario.malformed_sse = flag(name, value)?,
                "foreign_chunk" => scenario.foreign_chunk = flag(name, value)?,
                "hang" => scenario.hang = flag(name, value)?,
                "parallel_tools" => scenario.parallel_tools = flag(name, value)?,
                "error_event" => scenario.error_event = flag(name, value)?,
                "refused_in_stream" => scenario.refused_in_stream = flag(name, value)?,
                "no_tools" => scenario.no_tools = flag(name, value)?,
                "no_stop" => scenario.no_stop = flag(name, value)?,
                "first_event_ms" => scenario.first_event_ms = Some(number(name, value)?),
                "fail_first" => scenario.fail_first = Some(number(name, value)?),
                "context_window" => scenario.context_window = Some(number(name, value)?),
                "content_filter" => scenario.content_filter = flag(name, value)?,
                "moderated" => scenario.moderated = flag(name, value)?,
                "engine_abort" => scenario.engine_abort = flag(name, value)?,
                "expired_token" => scenario.expired_token = flag(name, value)?,
                "skewed_clock" => scenario.skewed_clock = flag(name, value)?,
                "unnamed_events" => scenario.unnamed_events = flag(name, value)?,
                "malformed_tool_use" => scenario.malformed_tool_use = flag(name, value)?,
                "wrong_shape" => scenario.wrong_shape = flag(name, value)?,
                "no_stream" => scenario.no_stream = flag(name, value)?,
                "late_end_ms" => scenario.late_end_ms = Some(number(name, value)?),
                "json_error" => scenario.json_error = flag(name, value)?,
                "json_labelled" => scenario.json_labelled = flag(name, value)?,
                "redirect" => scenario.redirect = flag(name, value)?,
                "unknown_model" => scenario.unknown_model = flag(name, value)?,
                "web_searches" => scenario.web_searches = Some(number(name, value)?),
                "max_output" => scenario.max_output = Some(number(name, value)?),
                "profile_only" => scenario.profile_only = flag(name, value)?,
                "signed_calls" => scenario.signed_calls = flag(name, value)?,
                "refuses_reasoning" => scenario.refuses_reasoning = flag(name, value)?,
                "reasons" => scenario.reasons = flag(name, value)?,
                "refuses_stream_options" => scenario.refuses_stream_options = flag(name, value)?,
                "no_usage" => scenario.no_usage = flag(name, value)?,
                "partial_usage" => scenario.partial_usage = flag(name, value)?,
                "multiline_sse" => scenario.multiline_sse = flag(name, value)?,
                "huge_event_kib" => scenario.huge_event_kib = Some(number(name, value)?),
                _ => return Err(format!("unknown mock scenario directive `{directive}`")),
            }
        }
        Ok(scenario)
    }

    /// Selects the spec for a request: the header value if present, else the
    /// model name's suffix after the first `::`, else an empty spec.
    pub fn spec_for<'a>(header: Option<&'a str>, model: Option<&'a str>) -> &'a str {
        if let Some(header) = header {
            return header;
        }
        model.and_then(|m| m.split_once("::")).map_or("", |(_, spec)| spec)
    }
}

fn number<T: FromStr>(name: &str, value: Option<&str>) -> Result<T, String> {
    value
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("invalid value for mock directive `{name}`"))
}

fn flag(name: &str, value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(_) => Err(format!("invalid value for mock directive `{name}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_directives() {
        let s = Scenario::parse("status=429, retry_after=2,chunks=3,hang,").unwrap();
        assert_eq!(s.status, Some(429));
        assert_eq!(s.retry_after, Some(2));
        assert_eq!(s.chunks, Some(3));
        assert!(s.hang);
        assert!(!s.malformed_json);
        let s = Scenario::parse("parallel_tools,error_event=1,no_stop=false").unwrap();
        assert!(s.parallel_tools && s.error_event && !s.no_stop);
        let s = Scenario::parse("fail_first=2,status=500,context_window=10,content_filter,first_event_ms=5").unwrap();
        assert_eq!(
            (s.fail_first, s.context_window, s.first_event_ms),
            (Some(2), Some(10), Some(5))
        );
        assert!(s.content_filter);
    }

    #[test]
    fn rejects_unknown_and_bad_values() {
        assert!(Scenario::parse("explode").unwrap_err().contains("explode"));
        assert!(Scenario::parse("status=abc").unwrap_err().contains("status"));
    }

    #[test]
    fn spec_selection() {
        assert_eq!(Scenario::spec_for(None, Some("gpt-4o::status=500")), "status=500");
        assert_eq!(Scenario::spec_for(None, Some("gpt-4o")), "");
        assert_eq!(Scenario::spec_for(Some("hang"), Some("m::status=1")), "hang");
        assert_eq!(Scenario::spec_for(None, Some("a::b::c")), "b::c");
    }
}
