//! Typed upstream failures.

use std::time::Duration;

use thiserror::Error;

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Establishing the connection.
    Connect,
    /// Waiting for the response head (or a stream's first event).
    FirstByte,
    /// The whole request, body included.
    Total,
    /// A stream's silence after its first output.
    Idle,
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstByte => "first byte",
            TimeoutPhase::Total => "total",
            TimeoutPhase::Idle => "idle",
        })
    }
}

/// An upstream call that did not produce an answer. Messages never contain credentials.
#[derive(Debug, Error)]
pub enum ProviderError {
    /// The upstream could not be reached.
    #[error("could not connect to the upstream: {0}")]
    Connect(String),
    /// A configured timeout fired.
    #[error("the upstream did not answer in time ({0} timeout)")]
    Timeout(TimeoutPhase),
    /// The upstream answered with an HTTP error status.
    #[error("the upstream returned HTTP {status}: {message}")]
    Status {
        /// HTTP status from the upstream.
        status: u16,
        /// The upstream's error message.
        message: String,
        /// The upstream's error type, if it sent one (boxed: the error stays
        /// small enough to return by value).
        kind: Option<Box<str>>,
        /// The upstream's error code, if it sent one.
        code: Option<String>,
        /// The parameter the upstream blamed, if any.
        param: Option<String>,
        /// `Retry-After`, when sent.
        retry_after: Option<Duration>,
        /// The upstream error object's other members (Azure's `innererror`
        /// with its content filter results), passed on to the client with a
        /// client error.
        details: Option<Box<serde_json::Map<String, serde_json::Value>>>,
    },
    /// The upstream answered 2xx with a body that is not what the protocol says.
    #[error("the upstream returned an invalid response: {0}")]
    InvalidResponse(String),
    /// A stream broke after it started (reset, malformed event, missing end).
    #[error("the upstream stream failed: {0}")]
    Stream(String),
    /// The transport failed while sending or reading.
    #[error("the upstream request failed: {0}")]
    Transport(String),
    /// The request cannot be expressed in the upstream's protocol.
    #[error("{message}")]
    InvalidRequest {
        /// What cannot be translated.
        message: String,
        /// The request parameter at fault.
        param: Option<String>,
    },
    /// The provider could not be built from its settings.
    #[error("invalid provider settings: {0}")]
    InvalidConfig(String),
    /// The provider cannot do this operation.
    #[error("provider `{provider}` does not support {operation}")]
    Unsupported {
        /// Provider kind.
        provider: &'static str,
        /// What was asked.
        operation: &'static str,
    },
}

/// An error sent inside a stream, typed as `status`, as the gateway treats
/// it: a rate limit (429), a timeout (408), a server error (5xx), a prompt
/// too long or a content-policy refusal keep the status they stand for; any
/// other client error or an auth failure reported after a 200 is a broken
/// stream, so it neither blames the request nor marks the deployment's key
/// invalid.
pub(crate) fn in_stream(typed: ProviderError, message: &str) -> ProviderError {
    // A refusal of the gateway's own credentials or account: its words may
    // name the account or part of the key, so they go to the log only.
    if let ProviderError::Status { status, .. } = &typed
        && matches!(status, 401..=403)
    {
        tracing::warn!(
            status,
            message = %clipped(message),
            "an upstream's stream reported that it refused the gateway's credentials or account"
        );
        return ProviderError::Stream(format!(
            "the upstream's stream reported HTTP {status}: it refused the gateway's credentials or account \
             (its message is in the gateway's log)"
        ));
    }
    let keeps = match &typed {
        ProviderError::Status { status, .. } => {
            matches!(status, 408 | 429 | 500..=599)
                || typed.is_context_window_exceeded()
                || typed.is_content_policy_violation()
        }
        _ => true,
    };
    if keeps {
        typed
    } else {
        ProviderError::Stream(format!("error event from the upstream: {message}"))
    }
}

/// An upstream's message with what looks like an API key in it (OpenAI's
/// "Incorrect API key provided: sk-proj-…****abcd", a key echoed in a
/// proxy's error) replaced by `sk-***`: messages are logged and exported
/// with traces, and may reach clients.
pub(crate) fn without_keys(message: &str) -> std::borrow::Cow<'_, str> {
    let looks_like_key = |at: usize| {
        let rest = &message.as_bytes()[at..];
        (rest.starts_with(b"sk-") || rest.starts_with(b"sk_"))
            && (at == 0 || !matches!(message.as_bytes()[at - 1], b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' | b'-' | b'_'))
    };
    if !(0..message.len()).any(|at| message.is_char_boundary(at) && looks_like_key(at)) {
        return std::borrow::Cow::Borrowed(message);
    }
    let key_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*');
    let bytes = message.as_bytes();
    let mut out = String::with_capacity(message.len());
    let mut at = 0;
    let mut copied = 0;
    while at < bytes.len() {
        if message.is_char_boundary(at) && looks_like_key(at) {
            let mut end = at + 3;
            while end < bytes.len() && key_char(bytes[end]) {
                end += 1;
            }
            out.push_str(&message[copied..at]);
            out.push_str("sk-***");
            copied = end;
            at = end;
        } else {
            at += 1;
        }
    }
    out.push_str(&message[copied..]);
    std::borrow::Cow::Owned(out)
}

/// At most 300 characters of an upstream's message, for the log.
pub(crate) fn clipped(message: &str) -> &str {
    message
        .char_indices()
        .nth(300)
        .map_or(message, |(end, _)| &message[..end])
}

impl ProviderError {
    /// Whether another attempt (possibly elsewhere) could succeed: connection
    /// failures, timeouts, 408/429/5xx (Anthropic's 529 "overloaded" included),
    /// and broken or malformed answers. Retrying is only safe before any output
    /// reached the client.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Connect(_)
            | ProviderError::Timeout(_)
            | ProviderError::Transport(_)
            | ProviderError::InvalidResponse(_)
            | ProviderError::Stream(_) => true,
            ProviderError::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            ProviderError::InvalidConfig(_)
            | ProviderError::InvalidRequest { .. }
            | ProviderError::Unsupported { .. } => false,
        }
    }

    /// Whether the upstream rejected the prompt as longer than the model's
    /// context window (OpenAI and Azure `context_length_exceeded`, Anthropic
    /// "prompt is too long", Bedrock "input is too long", and the wordings of
    /// vLLM and other OpenAI-compatible servers).
    pub fn is_context_window_exceeded(&self) -> bool {
        let ProviderError::Status {
            status, message, code, ..
        } = self
        else {
            return false;
        };
        if code.as_deref() == Some("context_length_exceeded") {
            return true;
        }
        if !matches!(status, 400 | 413 | 422) {
            return false;
        }
        let message = message.to_ascii_lowercase();
        [
            "context length",
            "context window",
            "context_length_exceeded",
            "prompt is too long",
            "input is too long",
            "too many input tokens",
            "maximum number of tokens",
            // Claude on Bedrock: "input length and `max_tokens` exceed context limit".
            "exceed context limit",
            // vLLM's engine: "The decoder prompt (length 9000) is longer than
            // the maximum model length of 8192".
            "maximum model length",
            // llama.cpp and LM Studio: "request (9412 tokens) exceeds the
            // available context size (8192 tokens)" (`exceed_context_size_error`).
            "context size",
            "exceed_context_size",
            // TGI: "`inputs` tokens + `max_new_tokens` must be <= 4096".
            "tokens + `max_new_tokens` must be",
            // xAI: "This model's maximum prompt length is 131072 but the
            // request contains 140000 tokens".
            "maximum prompt length",
        ]
        .iter()
        .any(|needle| message.contains(needle))
    }

    /// Whether the upstream refused the request under its content policy
    /// (OpenAI `content_policy_violation` and a reasoning model's
    /// `invalid_prompt` "flagged as potentially violating our usage
    /// policy", Azure `content_filter`, Bedrock guardrail interventions,
    /// OpenRouter's 403 "Your input was flagged" by moderation).
    pub fn is_content_policy_violation(&self) -> bool {
        let ProviderError::Status {
            status, message, code, ..
        } = self
        else {
            return false;
        };
        if matches!(
            code.as_deref(),
            Some("content_policy_violation" | "content_filter" | "ResponsibleAIPolicyViolation" | "invalid_prompt")
        ) {
            return true;
        }
        let message = message.to_ascii_lowercase();
        let says = |needles: &[&str]| needles.iter().any(|needle| message.contains(needle));
        match status {
            400 => says(&[
                "content management policy",
                "content policy",
                "usage policy",
                "usage policies",
                "safety system",
                "guardrail",
                "was flagged",
            ]),
            // A 403 is the gateway's credentials or account unless it says
            // the prompt was flagged, and not that an identity may not act
            // (a proxy passing on "not authorized to perform:
            // bedrock:ApplyGuardrail").
            403 => {
                says(&["requires moderation", "was flagged", "flagged for"])
                    && !says(&[
                        "not authorized",
                        "unauthorized",
                        "access denied",
                        "permission",
                        "api key",
                    ])
            }
            _ => false,
        }
    }

    /// Whether the upstream refused the request as larger than this
    /// deployment takes, not as invalid: Groq's 413 `rate_limit_exceeded`
    /// ("Request too large … on tokens per minute"), a request over the
    /// account's per-minute limit by itself. Waiting does not help; another
    /// deployment may take it.
    pub fn too_large_for_deployment(&self) -> bool {
        matches!(self, ProviderError::Status { status: 413, code: Some(code), .. } if code == "rate_limit_exceeded")
    }

    /// Whether the upstream rejected the gateway's own credentials: a 401,
    /// or a 403 that is not a refusal of the prompt under a content policy
    /// (OpenRouter's moderation answers 403, as may a firewall in front of
    /// an upstream): the key is marked rejected on it.
    pub fn rejects_credentials(&self) -> bool {
        match self {
            ProviderError::Status { status: 401, .. } => true,
            ProviderError::Status { status: 403, .. } => !self.is_content_policy_violation(),
            _ => false,
        }
    }

    /// Converts a transport error, dropping the URL from its text.
    pub(crate) fn from_reqwest(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            // reqwest's connect timeout is a timeout too: the phase tells.
            let phase = if err.is_connect() {
                TimeoutPhase::Connect
            } else {
                TimeoutPhase::Total
            };
            return ProviderError::Timeout(phase);
        }
        let connect = err.is_connect();
        let text = error_chain(&err.without_url());
        if connect {
            ProviderError::Connect(text)
        } else {
            ProviderError::Transport(text)
        }
    }
}

/// An error and its sources as one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let line = s.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_upstream_messages_are_hidden() {
        assert_eq!(
            without_keys(
                "Incorrect API key provided: sk-proj-abcd****************************wxyz. You can find your API key at https://platform.openai.com/account/api-keys."
            ),
            "Incorrect API key provided: sk-***. You can find your API key at https://platform.openai.com/account/api-keys."
        );
        assert_eq!(
            without_keys("key sk_live_1234 and sk-ant-api03-x_y revoked"),
            "key sk-*** and sk-*** revoked"
        );
        // Words that merely hold the letters stay.
        assert_eq!(
            without_keys("task-sk-1 is a desk-sk-thing"),
            "task-sk-1 is a desk-sk-thing"
        );
        assert!(matches!(without_keys("no key here"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(
            without_keys("host sk-prod.internal is down"),
            "host sk-***.internal is down"
        );
        assert_eq!(without_keys("é sk-1"), "é sk-***");
    }

    fn status(status: u16, message: &str, code: Option<&str>) -> ProviderError {
        ProviderError::Status {
            status,
            message: message.into(),
            kind: None,
            code: code.map(str::to_owned),
            param: None,
            retry_after: None,
            details: None,
        }
    }

    #[test]
    fn retryable_classes() {
        for s in [408, 429, 500, 502, 503, 504, 529] {
            assert!(status(s, "x", None).is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!status(s, "x", None).is_retryable(), "{s}");
        }
        assert!(ProviderError::Stream("reset".into()).is_retryable());
        assert!(
            !ProviderError::InvalidRequest {
                message: "x".into(),
                param: None
            }
            .is_retryable()
        );
    }

    #[test]
    fn recognises_context_window_errors_of_each_provider() {
        assert!(
            status(
                400,
                "This model's maximum context length is 8192 tokens",
                Some("context_length_exceeded")
            )
            .is_context_window_exceeded()
        );
        assert!(status(400, "prompt is too long: 210000 tokens > 200000 maximum", None).is_context_window_exceeded());
        assert!(status(400, "Input is too long for requested model.", None).is_context_window_exceeded());
        // vLLM's engine, llama.cpp / LM Studio, TGI.
        for message in [
            "The decoder prompt (length 9000) is longer than the maximum model length of 8192.",
            "request (9412 tokens) exceeds the available context size (8192 tokens), try increasing it",
            "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens and 200 `max_new_tokens`",
            // xAI.
            "This model's maximum prompt length is 131072 but the request contains 140000 tokens.",
        ] {
            let code = if message.starts_with("Input validation") {
                422
            } else {
                400
            };
            assert!(status(code, message, None).is_context_window_exceeded(), "{message}");
        }
        assert!(!status(400, "messages: field required", None).is_context_window_exceeded());
        assert!(!status(500, "prompt is too long", None).is_context_window_exceeded());
        assert!(!ProviderError::Stream("context length".into()).is_context_window_exceeded());
    }

    #[test]
    fn recognises_content_policy_errors() {
        assert!(status(400, "rejected", Some("content_policy_violation")).is_content_policy_violation());
        assert!(status(400, "filtered", Some("content_filter")).is_content_policy_violation());
        assert!(
            status(
                400,
                "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
                None
            )
            .is_content_policy_violation()
        );
        assert!(!status(400, "bad request", None).is_content_policy_violation());
        // OpenAI's reasoning models, OpenRouter's moderation (a 403).
        let flagged = status(
            400,
            "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
            Some("invalid_prompt"),
        );
        assert!(flagged.is_content_policy_violation());
        let moderated = status(
            403,
            "openai/gpt-4o requires moderation on OpenRouter. Your input was flagged for \"violence\"",
            None,
        );
        assert!(moderated.is_content_policy_violation() && !moderated.rejects_credentials());
        assert!(status(403, "Your API key does not have permission", None).rejects_credentials());
        // A refusal of an identity, whatever policy or guardrail it names.
        for denied in [
            "User: arn:aws:iam::123456789012:role/gw is not authorized to perform: bedrock:ApplyGuardrail on resource: guardrail/x",
            "This request violates the organization's usage policy for API keys",
            "Access denied: your content policy settings forbid this project",
        ] {
            let e = status(403, denied, None);
            assert!(!e.is_content_policy_violation() && e.rejects_credentials(), "{denied}");
        }
        assert!(status(401, "Incorrect API key provided", None).rejects_credentials());
        assert!(!status(400, "Incorrect API key provided", None).rejects_credentials());
    }
}
