//! Anthropic's Messages API (`POST /v1/messages`).
//!
//! OpenAI chat requests are translated to Messages requests and the answers
//! translated back ([`translate`]); streams are converted event by event
//! ([`stream`]). Requests that arrive in Anthropic's own format can be passed
//! through with [`AnthropicProvider::messages`] and
//! [`AnthropicProvider::messages_stream`].

pub mod stream;
pub mod translate;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};
use switchyard_api::anthropic::{MessagesRequest, MessagesResponse};
use switchyard_api::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest};

use crate::http::{HttpSettings, HttpUpstream};
use crate::sse::EventStream;
use crate::{ChunkStream, Provider, ProviderError, ProviderResponse, Result, Secret};

/// The `anthropic-version` sent when the configuration names none.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
/// `max_tokens` used when an OpenAI-format client sends none (Anthropic requires it).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Settings of an Anthropic deployment.
#[derive(Debug, Clone)]
pub struct AnthropicSettings {
    /// Base URL, e.g. `https://api.anthropic.com` (`/v1/messages` is appended).
    pub api_base: String,
    /// `x-api-key`.
    pub api_key: Option<Secret>,
    /// `anthropic-version` header.
    pub version: String,
    /// `max_tokens` for requests that carry none.
    pub default_max_tokens: u32,
    /// Drop the parameters Anthropic cannot express (`logprobs`, `n` > 1, …)
    /// instead of refusing the request.
    pub drop_params: bool,
}

/// Anthropic's Messages API.
#[derive(Debug, Clone)]
pub struct AnthropicProvider {
    http: HttpUpstream,
    messages_url: reqwest::Url,
    count_tokens_url: reqwest::Url,
    default_max_tokens: u32,
    drop_params: bool,
    /// The beta features of the deployment's own `anthropic-beta` header.
    betas: Vec<String>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| ProviderError::InvalidConfig(format!("request could not be encoded: {e}")))
}

impl AnthropicProvider {
    /// How long the first byte of an answer may take.
    pub fn first_byte_timeout(&self) -> std::time::Duration {
        self.http.first_byte()
    }

    /// How long a stream that has begun may stay silent.
    pub fn idle_timeout(&self) -> std::time::Duration {
        self.http.idle()
    }

    /// A provider for one Anthropic deployment.
    pub fn new(settings: &AnthropicSettings, http: &HttpSettings) -> Result<Self> {
        let mut auth = vec![(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_str(&settings.version)
                .map_err(|_| ProviderError::InvalidConfig("invalid anthropic-version".into()))?,
        )];
        if let Some(key) = &settings.api_key {
            let value = HeaderValue::from_str(key.expose()).map_err(|_| {
                ProviderError::InvalidConfig("the API key contains characters not allowed in a header".into())
            })?;
            auth.push((HeaderName::from_static("x-api-key"), value));
        }
        let base = settings.api_base.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let parse = |url: String| {
            reqwest::Url::parse(&url)
                .map_err(|e| ProviderError::InvalidConfig(format!("invalid endpoint URL `{url}`: {e}")))
        };
        Ok(Self {
            http: HttpUpstream::new(http, auth)?,
            messages_url: parse(format!("{base}/v1/messages"))?,
            count_tokens_url: parse(format!("{base}/v1/messages/count_tokens"))?,
            default_max_tokens: settings.default_max_tokens,
            drop_params: settings.drop_params,
            betas: configured_betas(http),
        })
    }

    /// Sends an Anthropic-format request as is and returns the upstream's JSON.
    pub async fn messages(&self, req: &MessagesRequest) -> Result<Bytes> {
        self.http
            .post_bytes(&self.messages_url, encode(req)?, self.beta_header(&req.betas)?)
            .await
    }

    /// Counts the input tokens of an Anthropic-format request, with the
    /// beta features the client named.
    pub async fn count_tokens(&self, req: &serde_json::Value, betas: &[String]) -> Result<Bytes> {
        self.http
            .post_bytes(&self.count_tokens_url, encode(req)?, self.beta_header(betas)?)
            .await
    }

    /// Sends an Anthropic-format streaming request and returns the raw
    /// events, each named by its data's `type` when the upstream sent no
    /// `event:` line (some Anthropic-compatible proxies send data alone).
    pub async fn messages_stream(&self, req: &MessagesRequest) -> Result<EventStream> {
        use futures_util::StreamExt as _;
        let events = self
            .http
            .post_events(&self.messages_url, encode(req)?, self.beta_header(&req.betas)?)
            .await?;
        Ok(Box::pin(events.map(|event| event.map(named_by_type))))
    }

    /// The `anthropic-beta` header for the betas a client asked for, with
    /// the deployment's own (a request's header would replace the
    /// deployment's, not add to it).
    fn beta_header(&self, betas: &[String]) -> Result<Option<(HeaderName, HeaderValue)>> {
        if betas.is_empty() {
            return Ok(None);
        }
        let mut all: Vec<&str> = self.betas.iter().map(String::as_str).collect();
        for beta in betas {
            if !all.contains(&beta.as_str()) {
                all.push(beta);
            }
        }
        let value = HeaderValue::from_str(&all.join(",")).map_err(|_| ProviderError::InvalidRequest {
            message: "`anthropic-beta` holds characters not allowed in a header".into(),
            param: None,
        })?;
        Ok(Some((HeaderName::from_static("anthropic-beta"), value)))
    }
}

/// An event that came without its name (the SSE default, `message`) named
/// by its data's `type`, as Anthropic names each event.
fn named_by_type(mut event: crate::sse::Event) -> crate::sse::Event {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    if (event.event.is_empty() || event.event == "message")
        && let Some(kind) = serde_json::from_str::<Typed>(&event.data).ok().and_then(|t| t.kind)
    {
        event.event = kind;
    }
    event
}

/// The beta features named by a deployment's `anthropic-beta` header.
fn configured_betas(http: &HttpSettings) -> Vec<String> {
    http.headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("anthropic-beta"))
        .flat_map(|(_, value)| value.split(','))
        .map(str::trim)
        .filter(|beta| !beta.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Provider for AnthropicProvider {
    fn kind(&self) -> &'static str {
        "anthropic"
    }

    async fn chat(&self, req: &ChatCompletionRequest) -> Result<ProviderResponse> {
        let sent = translate::as_sent(req, self.drop_params);
        let req = &*sent;
        let mut request = translate::to_messages_request(req, self.default_max_tokens)?;
        request.stream = None;
        let bytes = self.messages(&request).await?;
        let response: MessagesResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::InvalidResponse(format!("not a Messages response ({e})")))?;
        let json = crate::json_mode::json_tool(req)?.is_some();
        let chat = translate::to_chat_response(response, now(), json);
        let usage = chat.usage.clone();
        let body = serde_json::to_vec(&chat)
            .map_err(|e| ProviderError::InvalidResponse(format!("could not encode the response: {e}")))?;
        Ok(ProviderResponse {
            body: Bytes::from(body),
            usage,
        })
    }

    async fn chat_stream(&self, req: &ChatCompletionRequest) -> Result<ChunkStream> {
        let sent = translate::as_sent(req, self.drop_params);
        let req = &*sent;
        let mut request = translate::to_messages_request(req, self.default_max_tokens)?;
        request.stream = Some(true);
        let events = self.messages_stream(&request).await?;
        let json = crate::json_mode::json_tool(req)?.is_some();
        Ok(stream::to_chat_chunks(events, req.wants_stream_usage(), now(), json))
    }

    async fn completion(&self, _req: &CompletionRequest) -> Result<ProviderResponse> {
        Err(ProviderError::Unsupported {
            provider: "anthropic",
            operation: "legacy completions (use /v1/chat/completions)",
        })
    }

    async fn completion_stream(&self, _req: &CompletionRequest) -> Result<ChunkStream> {
        Err(ProviderError::Unsupported {
            provider: "anthropic",
            operation: "legacy completions (use /v1/chat/completions)",
        })
    }

    async fn embeddings(&self, _req: &EmbeddingRequest) -> Result<ProviderResponse> {
        Err(ProviderError::Unsupported {
            provider: "anthropic",
            operation: "embeddings",
        })
    }
}

#[cfg(test)]
mod tests;
