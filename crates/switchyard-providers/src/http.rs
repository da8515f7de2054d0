//! The pooled HTTP client shared by OpenAI-wire providers.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use switchyard_api::Usage;

use crate::sse::EventStream;
use crate::{ChunkStream, ProviderError, ProviderResponse, Result, TimeoutPhase};

/// Per-deployment timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a TCP (and TLS) connection.
    pub connect: Duration,
    /// A stream's start: from sending the request to the response head and to
    /// its first event. A non-streaming answer's head comes when the whole
    /// answer is written, so it is bounded by `total` only.
    pub first_byte: Duration,
    /// The whole exchange, a stream's body included.
    pub total: Duration,
    /// A stream's silence once it has begun: the longest wait for its next
    /// event after its first output.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(60),
            total: Duration::from_secs(600),
            idle: Duration::from_secs(60),
        }
    }
}

/// Transport settings of one deployment.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Extra headers sent with every request (values may be secrets: never logged).
    pub headers: Vec<(String, String)>,
}

/// Fields the gateway reads from an upstream body; everything else is skipped.
#[derive(Deserialize)]
pub(crate) struct Probe {
    #[serde(default)]
    pub(crate) usage: Option<Usage>,
    #[serde(default)]
    pub(crate) error: Option<serde_json::Value>,
    /// `"error"` in vLLM's flat error body (`{"object": "error", "message": …}`).
    #[serde(default)]
    pub(crate) object: Option<serde_json::Value>,
    /// Each choice's index and finish reason, when they have that shape.
    #[serde(default)]
    pub(crate) choices: Option<ProbedChoices>,
}

/// The `choices` of an upstream body, as far as a stream's end needs them.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum ProbedChoices {
    /// Choices with their index and finish reason.
    Ends(Vec<ChoiceEnd>),
    /// Anything else, skipped.
    Other(serde::de::IgnoredAny),
}

/// A choice's index and finish reason (`null` while it goes on).
#[derive(Deserialize)]
pub(crate) struct ChoiceEnd {
    #[serde(default)]
    pub(crate) index: Option<u64>,
    #[serde(default)]
    pub(crate) finish_reason: Option<serde_json::Value>,
}

/// A keep-alive connection pool to one upstream, with its timeouts and headers.
#[derive(Debug, Clone)]
pub(crate) struct HttpUpstream {
    client: reqwest::Client,
    timeouts: Timeouts,
}

impl HttpUpstream {
    /// How long the first byte may take.
    pub(crate) fn first_byte(&self) -> std::time::Duration {
        self.timeouts.first_byte
    }

    /// How long a stream that has begun may stay silent.
    pub(crate) fn idle(&self) -> std::time::Duration {
        self.timeouts.idle
    }

    /// Builds the pool. `auth` holds credential headers, marked sensitive.
    pub(crate) fn new(settings: &HttpSettings, auth: Vec<(HeaderName, HeaderValue)>) -> Result<Self> {
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ProviderError::InvalidConfig(format!("invalid header name `{name}`")))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| ProviderError::InvalidConfig(format!("invalid value for header `{name}`")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        for (name, mut value) in auth {
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(settings.timeouts.connect)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(60))
            // A redirect would carry the prompt, and credentials in headers
            // such as `api-key` or `x-api-key`, to another address.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::InvalidConfig(e.without_url().to_string()))?;
        Ok(Self {
            client,
            timeouts: settings.timeouts,
        })
    }

    /// Sends a JSON body and waits for the response head, within the
    /// first-byte timeout for a stream (`streaming`), else the total one.
    async fn send(&self, url: &reqwest::Url, body: Vec<u8>, streaming: bool) -> Result<reqwest::Response> {
        self.send_with(url, body, None, streaming).await
    }

    /// [`Self::send`] with one more header for this request only.
    async fn send_with(
        &self,
        url: &reqwest::Url,
        body: Vec<u8>,
        header: Option<(HeaderName, HeaderValue)>,
        streaming: bool,
    ) -> Result<reqwest::Response> {
        let mut request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        self.send_request(request, streaming).await
    }

    /// Sends a request within the timeouts and turns a failure status into
    /// its error.
    async fn send_request(&self, request: reqwest::RequestBuilder, streaming: bool) -> Result<reqwest::Response> {
        let request = request.timeout(self.timeouts.total).send();
        let response = if streaming {
            match tokio::time::timeout(self.timeouts.first_byte, request).await {
                Ok(result) => result.map_err(ProviderError::from_reqwest)?,
                Err(_) => return Err(ProviderError::Timeout(TimeoutPhase::FirstByte)),
            }
        } else {
            request.await.map_err(ProviderError::from_reqwest)?
        };
        crate::upstream_id::record(response.headers());
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(status_error(response).await)
        }
    }

    /// POSTs JSON and returns the whole JSON answer, validated and with its usage.
    pub(crate) async fn post_json(&self, url: &reqwest::Url, body: Vec<u8>) -> Result<ProviderResponse> {
        let response = self.send(url, body, false).await?;
        let bytes = read_body(response, MAX_BODY_BYTES).await?;
        let probe: Probe = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::InvalidResponse(format!("body is not valid JSON ({e})")))?;
        if let Some(error) = probe.error {
            return Err(answered_error(&error));
        }
        // An answer the upstream itself cut short (vLLM's `abort`,
        // OpenRouter's `error`) is no answer: the attempt failed, as a
        // stream cut so does.
        if let Some(reason) = std::str::from_utf8(&bytes).ok().and_then(crate::sse::aborted) {
            return Err(ProviderError::InvalidResponse(format!(
                "the upstream cut its answer short (finish_reason \"{reason}\")"
            )));
        }
        Ok(ProviderResponse {
            body: bytes,
            usage: probe.usage,
        })
    }

    /// POSTs a multipart form (an upload) and returns the whole answer
    /// whatever its media type: a transcript as JSON or text, an image
    /// edit's JSON.
    pub(crate) async fn post_media(
        &self,
        url: &reqwest::Url,
        form: reqwest::multipart::Form,
    ) -> Result<crate::MediaResponse> {
        let request = self.client.post(url.clone()).multipart(form);
        let response = self.send_request(request, false).await?;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let body = read_body(response, MAX_BODY_BYTES).await?;
        Ok(crate::MediaResponse { body, content_type })
    }

    /// POSTs JSON and returns the answer's body as it arrives (audio):
    /// within the first-byte timeout (one window from sending the request to
    /// its first piece of audio), the total one for all of it, and no
    /// silence between pieces longer than the idle one.
    pub(crate) async fn post_media_stream(&self, url: &reqwest::Url, body: Vec<u8>) -> Result<crate::AudioStream> {
        let deadline = tokio::time::Instant::now() + self.timeouts.first_byte;
        let idle = self.timeouts.idle;
        let request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        let response = self.send_request(request, true).await?;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        use futures_util::{StreamExt as _, TryStreamExt as _};
        let mut body = Box::pin(response.bytes_stream().map_err(ProviderError::from_reqwest));
        // The attempt succeeds with its first piece of audio, within the
        // first-byte timeout: an answer that stalls, breaks or ends before
        // it is the attempt's failure, retried or fallen back.
        let first = loop {
            match tokio::time::timeout_at(deadline, body.next()).await {
                Ok(Some(Ok(piece))) if piece.is_empty() => continue,
                Ok(Some(Ok(piece))) => break piece,
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => return Err(ProviderError::InvalidResponse("the upstream sent no audio".into())),
                Err(_) => return Err(ProviderError::Timeout(crate::TimeoutPhase::FirstByte)),
            }
        };
        // An answer that stalls once begun ends in an error after the idle
        // timeout, instead of holding its client until the total one.
        let rest = futures_util::stream::unfold((body, false), move |(mut body, done)| async move {
            if done {
                return None;
            }
            match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(item)) => {
                    let failed = item.is_err();
                    Some((item, (body, failed)))
                }
                Ok(None) => None,
                Err(_) => Some((Err(ProviderError::Timeout(crate::TimeoutPhase::Idle)), (body, true))),
            }
        });
        Ok(crate::AudioStream {
            content_type,
            body: Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(rest)),
        })
    }

    /// POSTs JSON asking for an OpenAI-style stream and returns its chunks.
    pub(crate) async fn post_stream(&self, url: &reqwest::Url, body: Vec<u8>) -> Result<ChunkStream> {
        let response = self.send(url, body, true).await?;
        let body = self.stream_body(response).await?;
        Ok(crate::sse::sse_chunks_of(crate::sse::sse_events_of(
            body,
            self.timeouts.first_byte,
        )))
    }

    /// POSTs JSON asking for a stream and returns its raw SSE events.
    pub(crate) async fn post_events(
        &self,
        url: &reqwest::Url,
        body: Vec<u8>,
        header: Option<(HeaderName, HeaderValue)>,
    ) -> Result<EventStream> {
        let response = self.send_with(url, body, header, true).await?;
        let body = self.stream_body(response).await?;
        Ok(crate::sse::sse_events_of(body, self.timeouts.first_byte))
    }

    /// The body of a successful answer to a request for a stream. One
    /// labelled JSON whose first bytes open a JSON object is read as JSON (an
    /// error some servers send that way, or a whole answer from one that does
    /// not stream); one labelled JSON that is an event stream after all
    /// (some servers label their streams so) is read as a stream.
    async fn stream_body(&self, mut response: reqwest::Response) -> Result<crate::sse::ByteStream> {
        if !is_json(&response) {
            return Ok(Box::pin(response.bytes_stream()));
        }
        // Up to the first byte that is not white space (or the end).
        let deadline = tokio::time::Instant::now() + self.timeouts.first_byte;
        let mut first = bytes::BytesMut::new();
        while first.iter().all(u8::is_ascii_whitespace) {
            match tokio::time::timeout_at(deadline, response.chunk()).await {
                Err(_) => return Err(ProviderError::Timeout(TimeoutPhase::FirstByte)),
                Ok(Err(e)) => return Err(ProviderError::from_reqwest(e)),
                Ok(Ok(Some(piece))) => first.extend_from_slice(&piece),
                Ok(Ok(None)) => break,
            }
        }
        let first = first.freeze();
        if first.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            let rest: Bytes = tokio::time::timeout(ERROR_BODY_WAIT, read_body(response, MAX_ERROR_BODY_BYTES))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let mut whole = first.to_vec();
            whole.extend_from_slice(&rest);
            return Err(not_a_stream(&whole));
        }
        let first = futures_util::stream::once(async move { Ok(first) });
        Ok(Box::pin(futures_util::StreamExt::chain(first, response.bytes_stream())))
    }

    /// POSTs JSON and returns the body bytes, whatever their schema, once
    /// they are known to be a JSON object that is not an error (Anthropic
    /// answers some errors with 200 and `"type": "error"`).
    pub(crate) async fn post_bytes(
        &self,
        url: &reqwest::Url,
        body: Vec<u8>,
        header: Option<(HeaderName, HeaderValue)>,
    ) -> Result<Bytes> {
        let response = self.send_with(url, body, header, false).await?;
        let bytes = read_body(response, MAX_BODY_BYTES).await?;
        let probe: Probe = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::InvalidResponse(format!("body is not a JSON object ({e})")))?;
        if let Some(error) = probe.error {
            return Err(answered_error(&error));
        }
        Ok(bytes)
    }
}

/// The largest JSON answer read from an upstream (a large embeddings batch
/// is tens of MiB); a larger one is an invalid response, not a process out
/// of memory.
pub(crate) const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// The largest error body read from an upstream; only its message is kept.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// How long an error body may take to arrive once its status has.
const ERROR_BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads `response`'s body, failing once it passes `limit` bytes.
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Bytes> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ProviderError::InvalidResponse(format!(
            "the answer is larger than {limit} bytes"
        )));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(ProviderError::from_reqwest)? {
        if body.len() + chunk.len() > limit {
            return Err(ProviderError::InvalidResponse(format!(
                "the answer is larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Whether a successful answer is labelled JSON (`application/json`, with
/// any parameters), not an event stream.
fn is_json(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The error for a JSON answer, with status 200, to a request for a stream:
/// an error some servers send that way (with its message, typed as the
/// status it stands for), or a whole answer from a server that does not
/// stream.
fn not_a_stream(body: &[u8]) -> ProviderError {
    let value: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = value.as_ref().and_then(|v| v.get("error"));
    if let Some(message) = error.and_then(serde_json::Value::as_str) {
        // `{"error": "…"}` (Ollama's shape): the message, as a server error.
        return ProviderError::Status {
            status: 500,
            message: crate::error::without_keys(message).into_owned(),
            kind: None,
            code: None,
            param: None,
            retry_after: None,
            details: None,
        };
    }
    match error.filter(|e| e.is_object()) {
        Some(error) => {
            let text = |name: &str| error.get(name).and_then(serde_json::Value::as_str).map(str::to_owned);
            let (kind, code) = (text("type"), text("code"));
            ProviderError::Status {
                status: stated_status(error).unwrap_or_else(|| answer_status(kind.as_deref(), code.as_deref())),
                message: error_message(error),
                kind: kind.map(Into::into),
                code,
                param: text("param"),
                retry_after: None,
                details: None,
            }
        }
        None => ProviderError::InvalidResponse(
            "the upstream answered a request for a stream with JSON, not an event stream (does it stream?)".into(),
        ),
    }
}

/// The status an error object states as its `code`, when that is a number
/// in HTTP's error range: vLLM, SGLang and LM Studio send `"code": 400`
/// (beside a `type` such as `BadRequestError`).
fn stated_status(error: &serde_json::Value) -> Option<u16> {
    let code = error.get("code")?;
    let n = code
        .as_u64()
        .or_else(|| code.as_str().and_then(|c| c.trim().parse().ok()))?;
    u16::try_from(n).ok().filter(|n| (400..600).contains(n))
}

/// Whether an error's `type` or `code` holds `word` (lower case, without
/// underscores), read in any case and with or without underscores: OpenAI's
/// `rate_limit_exceeded` and vLLM's `RateLimitError` alike.
fn said(kind: Option<&str>, code: Option<&str>, word: &str) -> bool {
    kind.iter()
        .chain(code.iter())
        .any(|t| t.to_ascii_lowercase().replace('_', "").contains(word))
}

/// The status an error object's `type` or `code` stands for: a rate limit
/// is a 429, an invalid request (or a prompt too long) a 400, anything else
/// a server error (500).
fn status_of(kind: Option<&str>, code: Option<&str>) -> u16 {
    let said = |word: &str| said(kind, code, word);
    if said("ratelimit") {
        429
    } else if said("authentication") || said("invalidapikey") {
        401
    } else if said("invalidrequest") || said("badrequest") || said("contextlength") {
        400
    } else if said("unprocessable") {
        422
    } else {
        500
    }
}

/// [`status_of`] for an error answered instead of a stream, before any
/// output: Anthropic's kinds too (`authentication_error`, `overloaded_error`…).
fn answer_status(kind: Option<&str>, code: Option<&str>) -> u16 {
    let said = |word: &str| said(kind, code, word);
    if said("authentication") {
        401
    } else if said("permission") {
        403
    } else if said("billing") {
        402
    } else if said("notfound") {
        404
    } else if said("overloaded") {
        529
    } else {
        status_of(kind, code)
    }
}

/// The message of an OpenAI-style error object, or its JSON.
pub(crate) fn error_message(error: &serde_json::Value) -> String {
    let message = error
        .get("message")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| error.to_string());
    crate::error::without_keys(&message).into_owned()
}

/// An error object answered with a 200 instead of an answer. One that
/// refuses the gateway's credentials or account (a stated 401–403, an
/// authentication type) keeps its words for the log: they may name the
/// account or part of the key.
fn answered_error(error: &serde_json::Value) -> ProviderError {
    let text = |name: &str| error.get(name).and_then(serde_json::Value::as_str);
    let status = stated_status(error).unwrap_or_else(|| answer_status(text("type"), text("code")));
    if matches!(status, 401..=403) {
        // The refusal it is, as if it came as that status: the key is
        // marked invalid (or, for a model another key may reach, the
        // model's access), and the client reads the gateway's words, as
        // for any refusal of its credentials.
        return ProviderError::Status {
            status,
            message: error_message(error),
            kind: text("type").map(Into::into),
            code: text("code").map(str::to_owned),
            param: None,
            retry_after: None,
            details: None,
        };
    }
    ProviderError::InvalidResponse(format!(
        "the upstream answered 200 with an error: {}",
        error_message(error)
    ))
}

/// An OpenAI-style error object sent inside a stream (`data: {"error": …}`),
/// typed as the status it states (a numeric `code`) or stands for: a rate
/// limit is a 429, an invalid request a 400, anything else a server error
/// (500). After output, as [`crate::error::in_stream`] treats it.
pub(crate) fn stream_error(error: &serde_json::Value) -> ProviderError {
    crate::error::in_stream(typed_stream_error(error), &error_message(error))
}

/// An error object sent as a stream's first event, before any output: vLLM
/// answers 200 to every streamed request and reports what it refuses after
/// (a bad schema, an unknown adapter, a prompt over the model's length) as
/// the first event. That is the upstream's answer to the request, typed as
/// an HTTP error would be; only a refusal of the gateway's credentials is
/// still a broken stream (its words go to the log).
pub(crate) fn first_event_error(error: &serde_json::Value) -> ProviderError {
    let typed = typed_stream_error(error);
    match &typed {
        ProviderError::Status { status: 401..=403, .. } => crate::error::in_stream(typed, &error_message(error)),
        _ => typed,
    }
}

/// An error object of a stream, typed by its status.
fn typed_stream_error(error: &serde_json::Value) -> ProviderError {
    let text = |name: &str| error.get(name).and_then(serde_json::Value::as_str).map(str::to_owned);
    let (kind, code) = (text("type"), text("code"));
    ProviderError::Status {
        status: stated_status(error).unwrap_or_else(|| status_of(kind.as_deref(), code.as_deref())),
        message: format!("{} (in the stream)", error_message(error)),
        kind: kind.map(Into::into),
        code,
        param: text("param"),
        retry_after: None,
        details: None,
    }
}

/// The longest wait an upstream's `Retry-After` is read as: far past any
/// retry's patience, and short enough to add to a clock.
pub(crate) const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long the upstream asks to wait: `retry-after-ms` (OpenAI, Azure), else
/// `Retry-After` in seconds or as an HTTP date. A value past a year (`1e20`,
/// `inf`) is a year, which no retry waits for; an unreadable one is ignored.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let seconds = |v: &str, scale: f64| {
        v.parse::<f64>()
            .ok()
            .filter(|s| *s >= 0.0)
            .map(|s| Duration::try_from_secs_f64(s / scale).map_or(LONGEST_RETRY_AFTER, |d| d.min(LONGEST_RETRY_AFTER)))
    };
    if let Some(d) = text("retry-after-ms").and_then(|v| seconds(v, 1000.0)) {
        return Some(d);
    }
    let value = text(reqwest::header::RETRY_AFTER.as_str())?;
    seconds(value, 1.0).or_else(|| {
        let at = httpdate::parse_http_date(value).ok()?;
        Some(
            at.duration_since(now)
                .unwrap_or(Duration::ZERO)
                .min(LONGEST_RETRY_AFTER),
        )
    })
}

/// Turns a non-2xx upstream response into a typed error, keeping the upstream's message.
async fn status_error(response: reqwest::Response) -> ProviderError {
    let status = response.status();
    let retry_after = retry_after(response.headers(), std::time::SystemTime::now());
    if status.is_redirection() {
        return ProviderError::Status {
            status: status.as_u16(),
            message: format!(
                "the upstream answered with a redirect (HTTP {}); redirects are not followed, so that the \
                 prompt and credentials never go to another address: set api_base to the final URL",
                status.as_u16()
            ),
            kind: None,
            code: None,
            param: None,
            retry_after: None,
            details: None,
        };
    }
    // An error body that stalls must not hold the attempt (and its retry)
    // until the total timeout: past a few seconds the status speaks alone.
    let body: Bytes = tokio::time::timeout(ERROR_BODY_WAIT, read_body(response, MAX_ERROR_BODY_BYTES))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    // Gemini's OpenAI-compatible API wraps its error in a list.
    let envelope = serde_json::from_slice::<ErrorEnvelope>(&body).or_else(|e| {
        serde_json::from_slice::<Vec<ErrorEnvelope>>(&body)
            .ok()
            .filter(|list| list.len() == 1)
            .and_then(|mut list| list.pop())
            .ok_or(e)
    });
    // TGI's 424 is a generation that failed on the server (out of memory
    // mid-answer): the upstream's fault, as the same error in a stream is.
    let status = if status.as_u16() == 424 {
        reqwest::StatusCode::BAD_GATEWAY
    } else {
        status
    };
    match envelope.map(ErrorEnvelope::into_error) {
        Ok(error) => ProviderError::Status {
            // xAI and Gemini refuse a wrong key with a 400: a refusal of the
            // gateway's credentials all the same.
            status: if status.as_u16() == 400 && refuses_key(&error) {
                401
            } else {
                status.as_u16()
            },
            message: crate::error::without_keys(&error.message).into_owned(),
            kind: error.kind.map(Into::into),
            code: error.code.and_then(|c| match c {
                serde_json::Value::String(s) => Some(s),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }),
            param: error.param,
            retry_after,
            details: (!error.extra.is_empty()).then(|| Box::new(error.extra)),
        },
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("no message").to_owned()
            } else {
                let text: String = text.chars().take(500).collect();
                crate::error::without_keys(&text).into_owned()
            };
            ProviderError::Status {
                status: status.as_u16(),
                message,
                kind: None,
                code: None,
                param: None,
                retry_after,
                details: None,
            }
        }
    }
}

/// Whether an upstream's error says the key it was sent is wrong: xAI's
/// "Incorrect API key provided", Gemini's "API key not valid" (reason
/// `API_KEY_INVALID`). The upstream sees only the gateway's key.
///
/// Only the services' own words, at the start of the message: an upstream
/// that quotes the client's input in a 400 (an invalid value, a prompt in a
/// validation error) must not get the gateway's key marked rejected.
fn refuses_key(error: &LenientError) -> bool {
    ["Incorrect API key provided", "API key not valid"]
        .iter()
        .any(|words| error.message.starts_with(words))
        || error
            .extra
            .get("details")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|details| details.iter().any(|d| d["reason"] == "API_KEY_INVALID"))
}

/// An upstream's error body, read leniently: OpenAI's envelope with any of
/// `type`, `code` and `param` left out (Azure's errors have no `type`), the
/// flat `{"object": "error", "message", "type", "code"}` of vLLM, or a
/// plain `{"error": "…"}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ErrorEnvelope {
    Wrapped {
        error: LenientError,
    },
    Flat(LenientError),
    /// `{"error": "…"}`: Ollama's native API, TGI, older llama.cpp.
    Plain {
        error: String,
    },
    /// A FastAPI server's own `{"detail": …}`: a text, or a validation
    /// error's list of problems (read without the `input` they quote).
    Detail {
        detail: serde_json::Value,
    },
}

impl ErrorEnvelope {
    /// The error, whatever its envelope.
    fn into_error(self) -> LenientError {
        match self {
            ErrorEnvelope::Wrapped { error } | ErrorEnvelope::Flat(error) => error,
            ErrorEnvelope::Detail { detail } => LenientError {
                message: match detail {
                    serde_json::Value::String(text) => text,
                    // `{"detail": {"error": "…"}}` (an `HTTPException` with
                    // a map): its words, else the problems it lists.
                    other => ["message", "error", "msg"]
                        .iter()
                        .find_map(|k| other.get(k).and_then(serde_json::Value::as_str).map(str::to_owned))
                        .or_else(|| problems_text(&other))
                        .unwrap_or_else(|| "the request was refused".to_owned()),
                },
                kind: None,
                code: None,
                param: None,
                extra: serde_json::Map::new(),
            },
            ErrorEnvelope::Plain { error } => LenientError {
                message: error,
                kind: None,
                code: None,
                param: None,
                extra: serde_json::Map::new(),
            },
        }
    }
}

#[derive(Debug, Deserialize)]
struct LenientError {
    /// Mistral's validation errors hold an object here: its JSON text.
    #[serde(deserialize_with = "text_of_any")]
    message: String,
    #[serde(rename = "type", default, deserialize_with = "string_or_none")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "string_or_none")]
    param: Option<String>,
    /// Every other member (`innererror`, `status`…).
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// A string; a validation error's list of problems (`{"detail": [{"loc",
/// "msg", "input"}]}`, as Mistral and other FastAPI servers send) as
/// `body.stream_options: Extra inputs are not permitted`, without the
/// `input` it quotes (which may be the prompt); any other JSON value's text
/// (`null` as nothing).
fn text_of_any<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    if let Some(said) = value.get("detail").and_then(problems_text) {
        return Ok(said);
    }
    Ok(match value {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// A FastAPI validation error's problems (`[{"loc", "msg", "input"}]`) as
/// `body.stream_options: Extra inputs are not permitted`, without the
/// `input` each quotes; `None` for anything else.
fn problems_text(detail: &serde_json::Value) -> Option<String> {
    let problems = detail.as_array()?;
    {
        let said: Vec<String> = problems
            .iter()
            .filter_map(|p| {
                let msg = p.get("msg")?.as_str()?;
                let at: Vec<String> = p
                    .get("loc")
                    .and_then(serde_json::Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_owned))
                    .collect();
                Some(if at.is_empty() {
                    msg.to_owned()
                } else {
                    format!("{}: {msg}", at.join("."))
                })
            })
            .collect();
        (!said.is_empty()).then(|| said.join("; "))
    }
}

/// A string, or `None` for any other JSON value.
fn string_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::time::Duration;

    use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

    use super::{LONGEST_RETRY_AFTER, retry_after};
    use crate::ProviderError;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn retry_after_reads_milliseconds_seconds_and_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let read = |pairs: &[(&'static str, &'static str)]| retry_after(&headers(pairs), now);
        assert_eq!(read(&[("retry-after", "2")]), Some(Duration::from_secs(2)));
        assert_eq!(read(&[("retry-after", "0.5")]), Some(Duration::from_millis(500)));
        assert_eq!(
            read(&[("retry-after-ms", "1500"), ("retry-after", "9")]),
            Some(Duration::from_millis(1500)),
            "the precise header wins"
        );
        assert_eq!(
            read(&[("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT")]),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            read(&[("retry-after", "Wed, 21 Oct 2015 07:27:00 GMT")]),
            Some(Duration::ZERO)
        );
        assert_eq!(
            read(&[("retry-after", "1e20")]),
            Some(LONGEST_RETRY_AFTER),
            "too long to wait for"
        );
        assert_eq!(read(&[("retry-after", "inf")]), Some(LONGEST_RETRY_AFTER));
        assert_eq!(
            read(&[("retry-after", "99999999999999999999")]),
            Some(LONGEST_RETRY_AFTER)
        );
        assert_eq!(read(&[("retry-after-ms", "1e22")]), Some(LONGEST_RETRY_AFTER));
        assert_eq!(
            read(&[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")]),
            Some(LONGEST_RETRY_AFTER)
        );
        // The longest wait still fits on a clock.
        assert!(tokio::time::Instant::now().checked_add(LONGEST_RETRY_AFTER).is_some());
        assert_eq!(read(&[("retry-after", "-3")]), None);
        assert_eq!(read(&[("retry-after", "soon")]), None);
        assert_eq!(read(&[]), None);
    }

    /// Groq's 413 for a request over its tokens-per-minute limit is one this
    /// deployment cannot take (another may); any other 413 is not.
    #[tokio::test]
    async fn a_request_too_large_for_a_rate_limit_is_too_large_for_the_deployment() {
        let answer = |body: &'static str| {
            reqwest::Response::from(
                http::Response::builder()
                    .status(413)
                    .header("content-type", "application/json")
                    .body(body)
                    .unwrap(),
            )
        };
        let groq = super::status_error(answer(
            r#"{"error":{"message":"Request too large for model `llama-3.3-70b-versatile` on tokens per minute (TPM): Limit 6000, Requested 9000","type":"tokens","code":"rate_limit_exceeded"}}"#,
        ))
        .await;
        assert!(groq.too_large_for_deployment() && !groq.is_retryable(), "{groq:?}");
        let other = super::status_error(answer(
            r#"{"error":{"message":"Payload too large","type":"invalid_request_error"}}"#,
        ))
        .await;
        assert!(!other.too_large_for_deployment(), "{other:?}");
    }

    fn error_answer(status: u16, body: &'static str) -> reqwest::Response {
        reqwest::Response::from(
            http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(body)
                .unwrap(),
        )
    }

    /// xAI and Gemini refuse a wrong key with a 400: read as the refusal
    /// of the gateway's credentials it is, not as the client's bad request.
    /// Gemini's error comes in a list.
    #[tokio::test]
    async fn a_400_refusing_the_key_is_a_rejected_credential() {
        let xai = super::status_error(error_answer(
            400,
            r#"{"code":"Client specified an invalid argument","error":"Incorrect API key provided: ba***na. You can obtain an API key from https://console.x.ai."}"#,
        ))
        .await;
        assert!(xai.rejects_credentials(), "{xai:?}");
        let gemini = super::status_error(error_answer(
            400,
            r#"[{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}]"#,
        ))
        .await;
        assert!(gemini.rejects_credentials(), "{gemini:?}");
        match &gemini {
            ProviderError::Status { message, code, .. } => {
                assert_eq!(message, "API key not valid. Please pass a valid API key.");
                assert_eq!(code.as_deref(), Some("400"));
            }
            other => panic!("{other:?}"),
        }
        let bad_request = super::status_error(error_answer(
            400,
            r#"[{"error":{"code":400,"message":"Invalid JSON payload received.","status":"INVALID_ARGUMENT"}}]"#,
        ))
        .await;
        assert!(
            !bad_request.rejects_credentials() && !bad_request.is_retryable(),
            "{bad_request:?}"
        );
        assert!(
            matches!(&bad_request, ProviderError::Status { status: 400, message, .. } if message == "Invalid JSON payload received.")
        );
        // The client's own input quoted back is no refusal of the key.
        let quoted = super::status_error(error_answer(
            400,
            r#"{"error":{"message":"Invalid value: 'Incorrect API key provided'. Supported values are: 'low', 'medium' and 'high'.","type":"invalid_request_error","param":"reasoning_effort","code":"invalid_value"}}"#,
        ))
        .await;
        assert!(!quoted.rejects_credentials(), "{quoted:?}");
        let echoed = super::status_error(error_answer(
            400,
            r#"{"object":"error","message":"1 validation error: body.messages.0.content: the prompt says invalid api key, api key not valid","type":"BadRequestError","param":null,"code":400}"#,
        ))
        .await;
        assert!(!echoed.rejects_credentials(), "{echoed:?}");
    }

    /// TGI's 424 is a generation that failed on the server: retried as the
    /// upstream's fault.
    #[tokio::test]
    async fn a_failed_generation_is_the_upstreams_fault() {
        let tgi = super::status_error(error_answer(
            424,
            r#"{"error":"Request failed during generation: Server error: CUDA out of memory","error_type":"generation"}"#,
        ))
        .await;
        assert!(tgi.is_retryable(), "{tgi:?}");
        assert!(
            matches!(&tgi, ProviderError::Status { status: 502, message, .. } if message.starts_with("Request failed during generation"))
        );
    }

    #[test]
    fn error_bodies_are_read_without_a_type_or_an_envelope() {
        use super::{ErrorEnvelope, LenientError};
        let read = |body: &str| serde_json::from_str::<ErrorEnvelope>(body).unwrap().into_error();
        // Azure's content filter: no `type`, a string code.
        let azure: LenientError = read(
            r#"{"error":{"message":"The response was filtered","param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#,
        );
        assert_eq!(azure.message, "The response was filtered");
        assert_eq!(azure.kind, None);
        assert_eq!(azure.code, Some(serde_json::json!("content_filter")));
        assert_eq!(azure.param.as_deref(), Some("prompt"));
        // vLLM: flat, with a numeric code.
        let vllm = read(r#"{"object":"error","message":"too long","type":"BadRequestError","param":null,"code":400}"#);
        assert_eq!(vllm.message, "too long");
        assert_eq!(vllm.kind.as_deref(), Some("BadRequestError"));
        assert_eq!(vllm.code, Some(serde_json::json!(400)));
        // Mistral's validation errors: the message is an object, whose
        // problems are read without the input they quote.
        let mistral = read(
            r#"{"object":"error","message":{"detail":[{"type":"extra_forbidden","loc":["body","stream_options"],"msg":"Extra inputs are not permitted","input":{"include_usage":true}},{"type":"string_type","loc":["body","messages",0,"content"],"msg":"Input should be a valid string","input":"a secret prompt"}]},"type":"invalid_request_error","param":null,"code":null}"#,
        );
        assert_eq!(
            mistral.message,
            "body.stream_options: Extra inputs are not permitted; body.messages.0.content: Input should be a valid string"
        );
        let other = read(r#"{"message":{"reason":"busy"}}"#);
        assert_eq!(other.message, r#"{"reason":"busy"}"#);
        // Ollama's native API and TGI: the message as the error itself.
        let plain = read(r#"{"error":"model \"llama9\" not found, try pulling it first"}"#);
        assert_eq!(plain.message, r#"model "llama9" not found, try pulling it first"#);
        // A FastAPI server's own validation error, without the prompt it
        // quotes; its plain `detail` as the message.
        let fastapi = read(
            r#"{"detail":[{"type":"missing","loc":["body","input"],"msg":"Field required","input":{"prompt":"a secret prompt"}}]}"#,
        );
        assert_eq!(fastapi.message, "body.input: Field required");
        assert_eq!(read(r#"{"detail":"Not Found"}"#).message, "Not Found");
        assert_eq!(
            read(r#"{"detail":{"error":"Invalid model name passed"}}"#).message,
            "Invalid model name passed"
        );
    }

    #[test]
    fn errors_in_a_stream_are_typed_by_their_code_or_type_in_any_spelling() {
        use serde_json::json;
        let status = |error: serde_json::Value| match super::stream_error(&error) {
            crate::ProviderError::Status { status, .. } => status,
            other => panic!("{other:?}"),
        };
        // vLLM: a numeric code and a class name for the type.
        let too_long = json!({"object": "error", "type": "BadRequestError", "code": 400, "param": null,
            "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens."});
        assert_eq!(status(too_long.clone()), 400);
        assert!(super::stream_error(&too_long).is_context_window_exceeded());
        assert_eq!(status(json!({"type": "RateLimitError", "message": "slow down"})), 429);
        assert_eq!(status(json!({"code": "429", "message": "slow down"})), 429);
        assert_eq!(status(json!({"type": "rate_limit_exceeded", "message": "x"})), 429);
        assert_eq!(status(json!({"type": "server_error", "message": "x"})), 500);
        assert_eq!(
            status(json!({"type": "InternalServerError", "code": 500, "message": "x"})),
            500
        );
        assert_eq!(status(json!({"code": "context_length_exceeded", "message": "x"})), 400);
        // A code outside HTTP's error range says nothing of the status.
        assert_eq!(status(json!({"code": 7, "message": "x"})), 500);
        // A client error other than these, after a 200, is a broken stream.
        assert!(matches!(
            super::stream_error(&json!({"type": "BadRequestError", "code": 400, "message": "bad"})),
            crate::ProviderError::Stream(_)
        ));
        // A refusal of the gateway's credentials keeps its words (which may
        // name the account or part of the key) out of the error.
        for refusal in [
            json!({"code": 401, "message": "Incorrect API key provided: sk-proj-wxyz"}),
            json!({"type": "authentication_error", "message": "Incorrect API key provided: sk-proj-wxyz"}),
            json!({"code": "invalid_api_key", "message": "Incorrect API key provided: sk-proj-wxyz"}),
        ] {
            let in_stream = super::stream_error(&refusal);
            assert!(matches!(in_stream, crate::ProviderError::Stream(_)), "{in_stream:?}");
            let text = in_stream.to_string();
            assert!(!text.contains("sk-proj") && text.contains("credentials"), "{text}");
            // Answered with a 200: the refusal's status, which the gateway
            // treats as a refusal of its key (and words it never shows).
            let answered = super::answered_error(&refusal);
            assert!(
                matches!(answered, crate::ProviderError::Status { status: 401, .. }),
                "{answered:?}"
            );
        }
        let other = super::answered_error(&json!({"message": "model overloaded"})).to_string();
        assert!(other.contains("model overloaded"), "{other}");
        // Answered in place of a stream, the same reading, and more kinds.
        let answered = |body: serde_json::Value| match super::not_a_stream(body.to_string().as_bytes()) {
            crate::ProviderError::Status { status, .. } => status,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            answered(json!({"error": {"type": "NotFoundError", "code": 404, "message": "no such model"}})),
            404
        );
        assert_eq!(
            answered(json!({"error": {"type": "NotFoundError", "message": "no such model"}})),
            404
        );
        assert_eq!(
            answered(json!({"error": {"type": "AuthenticationError", "message": "x"}})),
            401
        );
        assert_eq!(
            answered(json!({"error": {"type": "not_found_error", "message": "x"}})),
            404
        );
    }

    use super::*;
    use switchyard_testkit::MockUpstream;

    async fn answer(mock: &MockUpstream) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/chat/completions", mock.base_url()))
            .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}]}))
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_an_invalid_response() {
        let mock = MockUpstream::start().await;
        let whole = read_body(answer(&mock).await, MAX_BODY_BYTES).await.unwrap();
        assert!(whole.len() > 20);
        let cut = read_body(answer(&mock).await, whole.len() - 1).await;
        assert!(matches!(cut, Err(ProviderError::InvalidResponse(_))), "{cut:?}");
        let exact = read_body(answer(&mock).await, whole.len()).await.unwrap();
        assert_eq!(exact.len(), whole.len(), "an answer of exactly the limit is read whole");
    }
}
