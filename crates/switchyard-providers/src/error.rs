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
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstByte => "first byte",
            TimeoutPhase::Total => "total",
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
        /// The upstream's error type, if it sent one.
        kind: Option<String>,
        /// The upstream's error code, if it sent one.
        code: Option<String>,
        /// The parameter the upstream blamed, if any.
        param: Option<String>,
        /// `Retry-After`, when sent.
        retry_after: Option<Duration>,
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

impl ProviderError {
    /// Whether another attempt (possibly elsewhere) could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Connect(_) | ProviderError::Timeout(_) | ProviderError::Transport(_) => true,
            ProviderError::Status { status, .. } => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
            ProviderError::InvalidResponse(_)
            | ProviderError::Stream(_)
            | ProviderError::InvalidConfig(_)
            | ProviderError::InvalidRequest { .. }
            | ProviderError::Unsupported { .. } => false,
        }
    }

    /// Converts a transport error, dropping the URL from its text.
    pub(crate) fn from_reqwest(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            return ProviderError::Timeout(TimeoutPhase::Total);
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
