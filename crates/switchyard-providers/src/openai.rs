//! OpenAI, OpenAI-compatible servers (vLLM, Ollama's `/v1`, LM Studio…) and Azure OpenAI.
//!
//! These upstreams already speak the gateway's wire format, so request bodies are
//! serialised once and response bytes pass through unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use switchyard_api::{
    ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ImageGenerationRequest, ModerationRequest,
    RerankRequest, SpeechRequest,
};

use crate::http::{HttpSettings, HttpUpstream};
use crate::{
    AudioStream, ChunkStream, ImageEditRequest, MediaResponse, Provider, ProviderError, ProviderResponse, Result,
    Secret, TranscriptionRequest,
};

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| ProviderError::InvalidConfig(format!("request could not be encoded: {e}")))
}

/// The chat request as sent: reasoning models (o1, o3, o4, gpt-5 families)
/// refuse `max_tokens` and take `max_completion_tokens`, so a request that
/// sets only the former has it renamed for them. Other bodies are encoded
/// as they are.
fn encode_chat(req: &ChatCompletionRequest, strict: bool) -> Result<Vec<u8>> {
    // Reasoning that clients echo in assistant messages (Claude's
    // `thinking_blocks`, other servers' `reasoning_content`) is refused by
    // OpenAI's own API, Azure, Groq and Cerebras as unknown fields; other
    // OpenAI-compatible servers get it as sent (DeepSeek and Kimi need it
    // back, a proxy in front of Claude needs the blocks).
    if strict && echoes(req) {
        let mut copy = req.clone();
        for message in &mut copy.messages {
            for key in ECHOED {
                message.extra.shift_remove(key);
            }
        }
        return encode_chat(&copy, strict);
    }
    if is_reasoning_model(&req.model)
        && req.extra.contains_key("max_tokens")
        && !req.extra.contains_key("max_completion_tokens")
    {
        return encode(&RenamedMaxTokens(req));
    }
    encode(req)
}

/// Reasoning fields clients echo in assistant messages.
const ECHOED: [&str; 2] = ["thinking_blocks", "reasoning_content"];

/// Whether an assistant message of `req` echoes reasoning.
fn echoes(req: &ChatCompletionRequest) -> bool {
    req.messages
        .iter()
        .any(|m| ECHOED.iter().any(|k| m.extra.contains_key(*k)))
}

/// Whether `error` is an upstream refusing the echoed reasoning as a field
/// it does not take (Groq: "property 'reasoning_content' is unsupported"),
/// not one asking for it (DeepSeek: "The `reasoning_content` in the
/// thinking mode must be passed back").
fn refuses_echo(error: &ProviderError) -> bool {
    const REFUSALS: [&str; 8] = [
        "unsupported",
        "not supported",
        "unrecognized",
        "unexpected",
        "unknown",
        "not allowed",
        "not permitted",
        "extra",
    ];
    match error {
        ProviderError::Status {
            status: 400 | 422,
            message,
            param,
            ..
        } => {
            let message = message.to_ascii_lowercase();
            let named = ECHOED
                .iter()
                .any(|k| message.contains(k) || param.as_deref().is_some_and(|p| p.contains(k)));
            named && REFUSALS.iter().any(|r| message.contains(r))
        }
        _ => false,
    }
}

/// Hosts known to refuse echoed reasoning in messages.
fn strict_host(host: &str) -> bool {
    host == "api.openai.com"
        || host.ends_with(".openai.azure.com")
        || host == "api.groq.com"
        || host == "api.cerebras.ai"
}

/// A chat request written with `max_tokens` named `max_completion_tokens`,
/// without copying it. Writes the fields as `ChatCompletionRequest`'s own
/// `Serialize` does (a test compares the two).
struct RenamedMaxTokens<'a>(&'a ChatCompletionRequest);

impl serde::Serialize for RenamedMaxTokens<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let req = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("model", &req.model)?;
        map.serialize_entry("messages", &req.messages)?;
        if let Some(stream) = &req.stream {
            map.serialize_entry("stream", stream)?;
        }
        if let Some(options) = &req.stream_options {
            map.serialize_entry("stream_options", options)?;
        }
        for (name, value) in &req.extra {
            let name = if name == "max_tokens" {
                "max_completion_tokens"
            } else {
                name
            };
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// Whether `model` (an upstream model or Azure deployment name, possibly
/// behind a `provider/` prefix) is of a family that refuses `max_tokens`.
fn is_reasoning_model(model: &str) -> bool {
    let name = model.rsplit('/').next().unwrap_or(model);
    ["o1", "o3", "o4", "gpt-5"].iter().any(|family| {
        name.strip_prefix(family)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '.', '_']))
    })
}

fn header_value(secret: &Secret, prefix: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(&format!("{prefix}{}", secret.expose()))
        .map_err(|_| ProviderError::InvalidConfig("the API key contains characters not allowed in a header".into()))
}

/// The three endpoints of an OpenAI-wire upstream and the pool that reaches them.
#[derive(Debug, Clone)]
struct Endpoints {
    pub(crate) http: HttpUpstream,
    chat_url: reqwest::Url,
    completions_url: reqwest::Url,
    embeddings_url: reqwest::Url,
    images_url: reqwest::Url,
    image_edits_url: reqwest::Url,
    /// `None` where the upstream has no moderation endpoint (Azure).
    moderations_url: Option<reqwest::Url>,
    speech_url: reqwest::Url,
    transcriptions_url: reqwest::Url,
    translations_url: reqwest::Url,
    /// `None` where the upstream has no rerank endpoint (Azure OpenAI).
    rerank_url: Option<reqwest::Url>,
    /// Whether the upstream takes `stream_options` (Azure API versions
    /// before 2024-09-01 refuse it with a 400).
    stream_options: bool,
    /// Whether echoed reasoning is left out of messages: from the start for
    /// the hosts known to refuse it, and from the first refusal for any
    /// other (shared by the clones of one deployment's provider).
    strict: Arc<AtomicBool>,
}

impl Endpoints {
    /// Whether echoed reasoning is left out.
    fn strict(&self) -> bool {
        self.strict.load(Ordering::Relaxed)
    }

    /// Sends a chat request with `send`; an upstream that refuses the
    /// reasoning it echoes gets it again without, and from then on never.
    async fn chat_call<T, F, Fut>(&self, req: &ChatCompletionRequest, send: F) -> Result<T>
    where
        F: Fn(Vec<u8>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let strict = self.strict();
        match send(encode_chat(req, strict)?).await {
            Err(e) if !strict && echoes(req) && refuses_echo(&e) => {
                tracing::info!(
                    url = %self.chat_url,
                    "the upstream refuses reasoning echoed in messages: it is left out from now on"
                );
                self.strict.store(true, Ordering::Relaxed);
                send(encode_chat(req, true)?).await
            }
            other => other,
        }
    }
}

/// Whether an Azure `api-version` accepts `stream_options`: dated versions
/// (`YYYY-MM-DD`, maybe `-preview`) from 2024-09-01 on, and the undated ones
/// of the newer API (`preview`, `latest`, `v1`).
fn azure_takes_stream_options(api_version: &str) -> bool {
    let dated = api_version.get(..10).filter(|d| {
        d.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
    });
    dated.is_none_or(|date| date >= "2024-09-01")
}

/// A copy of a streaming request without `stream_options`, for upstreams
/// that refuse it (the stream is then charged from the gateway's estimate).
fn without_stream_options<T: Clone>(req: &T, options: impl FnOnce(&mut T)) -> T {
    let mut copy = req.clone();
    options(&mut copy);
    copy
}

/// Parses an endpoint URL once, at build time, so requests never re-parse it.
fn endpoint(url: String) -> Result<reqwest::Url> {
    reqwest::Url::parse(&url).map_err(|e| ProviderError::InvalidConfig(format!("invalid endpoint URL `{url}`: {e}")))
}

/// Implements [`Provider`] for a newtype over [`Endpoints`].
macro_rules! openai_wire_provider {
    ($ty:ident, $kind:literal) => {
        impl $ty {
            /// `POST /images/generations`: the answer as the upstream gave it.
            pub async fn images(&self, req: &ImageGenerationRequest) -> Result<ProviderResponse> {
                self.0.http.post_json(&self.0.images_url, encode(req)?).await
            }

            /// `POST /images/edits` (a multipart upload): the answer as the
            /// upstream gave it.
            pub async fn image_edit(&self, req: &ImageEditRequest) -> Result<MediaResponse> {
                self.0.http.post_media(&self.0.image_edits_url, req.form()?).await
            }

            /// `POST /audio/speech`: the audio as the upstream sends it.
            pub async fn speech(&self, req: &SpeechRequest) -> Result<AudioStream> {
                self.0
                    .http
                    .post_media_stream(&self.0.speech_url, encode(req)?)
                    .await
            }

            /// `POST /audio/transcriptions` (or `/audio/translations`): the
            /// transcript in the format asked for.
            pub async fn transcription(&self, req: &TranscriptionRequest) -> Result<MediaResponse> {
                let url = if req.translate {
                    &self.0.translations_url
                } else {
                    &self.0.transcriptions_url
                };
                self.0.http.post_media(url, req.form()?).await
            }

            /// `POST /rerank`: the answer as the upstream gave it.
            pub async fn rerank(&self, req: &RerankRequest) -> Result<ProviderResponse> {
                match &self.0.rerank_url {
                    Some(url) => self.0.http.post_json(url, encode(req)?).await,
                    None => Err(ProviderError::Unsupported {
                        provider: $kind,
                        operation: "rerank",
                    }),
                }
            }

            /// `POST /moderations`: the answer as the upstream gave it.
            pub async fn moderations(&self, req: &ModerationRequest) -> Result<ProviderResponse> {
                match &self.0.moderations_url {
                    Some(url) => self.0.http.post_json(url, encode(req)?).await,
                    None => Err(ProviderError::Unsupported {
                        provider: $kind,
                        operation: "moderations",
                    }),
                }
            }
        }

        impl Provider for $ty {
            fn kind(&self) -> &'static str {
                $kind
            }

            async fn chat(&self, req: &ChatCompletionRequest) -> Result<ProviderResponse> {
                let http = &self.0.http;
                self.0
                    .chat_call(req, |body| http.post_json(&self.0.chat_url, body))
                    .await
            }

            async fn chat_stream(&self, req: &ChatCompletionRequest) -> Result<ChunkStream> {
                let http = &self.0.http;
                let send = |body| http.post_stream(&self.0.chat_url, body);
                if self.0.stream_options || req.stream_options.is_none() {
                    self.0.chat_call(req, send).await
                } else {
                    let req = without_stream_options(req, |r| r.stream_options = None);
                    self.0.chat_call(&req, send).await
                }
            }

            async fn completion(&self, req: &CompletionRequest) -> Result<ProviderResponse> {
                self.0.http.post_json(&self.0.completions_url, encode(req)?).await
            }

            async fn completion_stream(&self, req: &CompletionRequest) -> Result<ChunkStream> {
                let body = if self.0.stream_options || req.stream_options.is_none() {
                    encode(req)?
                } else {
                    encode(&without_stream_options(req, |r| r.stream_options = None))?
                };
                self.0.http.post_stream(&self.0.completions_url, body).await
            }

            async fn embeddings(&self, req: &EmbeddingRequest) -> Result<ProviderResponse> {
                self.0.http.post_json(&self.0.embeddings_url, encode(req)?).await
            }
        }
    };
}

/// OpenAI or any server speaking its API at `api_base` (which includes `/v1`).
#[derive(Debug, Clone)]
pub struct OpenAiProvider(Endpoints);

impl OpenAiProvider {
    /// How long the first byte of an answer may take.
    pub fn first_byte_timeout(&self) -> std::time::Duration {
        self.0.http.first_byte()
    }

    /// A provider for `api_base`, authenticating with `Authorization: Bearer` when a key is given.
    pub fn new(api_base: &str, api_key: Option<&Secret>, settings: &HttpSettings) -> Result<Self> {
        let mut auth = Vec::new();
        if let Some(key) = api_key {
            auth.push((AUTHORIZATION, header_value(key, "Bearer ")?));
        }
        let base = api_base.trim_end_matches('/');
        Ok(Self(Endpoints {
            http: HttpUpstream::new(settings, auth)?,
            chat_url: endpoint(format!("{base}/chat/completions"))?,
            completions_url: endpoint(format!("{base}/completions"))?,
            embeddings_url: endpoint(format!("{base}/embeddings"))?,
            images_url: endpoint(format!("{base}/images/generations"))?,
            image_edits_url: endpoint(format!("{base}/images/edits"))?,
            moderations_url: Some(endpoint(format!("{base}/moderations"))?),
            speech_url: endpoint(format!("{base}/audio/speech"))?,
            transcriptions_url: endpoint(format!("{base}/audio/transcriptions"))?,
            translations_url: endpoint(format!("{base}/audio/translations"))?,
            rerank_url: Some(endpoint(format!("{base}/rerank"))?),
            stream_options: true,
            strict: Arc::new(AtomicBool::new(
                reqwest::Url::parse(base)
                    .ok()
                    .and_then(|u| u.host_str().map(strict_host))
                    .unwrap_or(false),
            )),
        }))
    }
}

openai_wire_provider!(OpenAiProvider, "openai");

/// Azure OpenAI: one deployment of a resource, addressed by URL, `api-version` and `api-key`.
#[derive(Debug, Clone)]
pub struct AzureProvider(Endpoints);

impl AzureProvider {
    /// How long the first byte of an answer may take.
    pub fn first_byte_timeout(&self) -> std::time::Duration {
        self.0.http.first_byte()
    }

    /// A provider for `{api_base}/openai/deployments/{deployment}/…?api-version={api_version}`,
    /// or, for the v1 API (`api_version` `v1`, `preview` or `latest`),
    /// `{api_base}/openai/v1/…` (with `?api-version=` for the last two),
    /// where the body's `model` names the deployment.
    pub fn new(
        api_base: &str,
        deployment: &str,
        api_version: &str,
        api_key: Option<&Secret>,
        settings: &HttpSettings,
    ) -> Result<Self> {
        let mut auth = Vec::new();
        if let Some(key) = api_key {
            auth.push((HeaderName::from_static("api-key"), header_value(key, "")?));
        }
        let base = api_base.trim_end_matches('/');
        let url = |op: &str| match api_version {
            "v1" => format!("{base}/openai/v1/{op}"),
            "preview" | "latest" => format!("{base}/openai/v1/{op}?api-version={api_version}"),
            _ => format!("{base}/openai/deployments/{deployment}/{op}?api-version={api_version}"),
        };
        Ok(Self(Endpoints {
            http: HttpUpstream::new(settings, auth)?,
            chat_url: endpoint(url("chat/completions"))?,
            completions_url: endpoint(url("completions"))?,
            embeddings_url: endpoint(url("embeddings"))?,
            images_url: endpoint(url("images/generations"))?,
            image_edits_url: endpoint(url("images/edits"))?,
            moderations_url: None,
            speech_url: endpoint(url("audio/speech"))?,
            transcriptions_url: endpoint(url("audio/transcriptions"))?,
            translations_url: endpoint(url("audio/translations"))?,
            rerank_url: None,
            stream_options: azure_takes_stream_options(api_version),
            strict: Arc::new(AtomicBool::new(true)),
        }))
    }
}

openai_wire_provider!(AzureProvider, "azure");

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// A stream read to its `[DONE]` whose body ends a little later (the
    /// last HTTP/1.1 chunk in a later write) leaves its connection in the
    /// pool: the next request goes over the same one.
    #[tokio::test]
    async fn a_finished_stream_leaves_its_connection_for_the_next_request() {
        use futures_util::StreamExt;
        let mock = switchyard_testkit::MockUpstream::start().await;
        let provider = OpenAiProvider::new(&mock.base_url(), None, &HttpSettings::default()).unwrap();
        let req: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "m::late_end_ms=50", "stream": true,
            "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap();
        for _ in 0..2 {
            let mut chunks = crate::Provider::chat_stream(&provider, &req).await.unwrap();
            while let Some(chunk) = chunks.next().await {
                chunk.unwrap();
            }
            // Time for the body's end to arrive (not a measurement).
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let peers: Vec<_> = mock.requests().iter().map(|r| r.peer).collect();
        assert_eq!(peers.len(), 2);
        assert!(peers[0].is_some());
        assert_eq!(peers[0], peers[1], "the second stream opened a new connection");
    }

    #[test]
    fn echoed_reasoning_reaches_only_servers_that_take_it() {
        let req: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "x", "reasoning_content": "t", "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "s"}]}
            ]
        }))
        .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&encode_chat(&req, true).unwrap()).unwrap();
        assert_eq!(
            body["messages"][1],
            serde_json::json!({"role": "assistant", "content": "x"})
        );
        // An OpenAI-compatible server (DeepSeek, a proxy in front of
        // Claude) gets them.
        let relayed: serde_json::Value = serde_json::from_slice(&encode_chat(&req, false).unwrap()).unwrap();
        assert_eq!(relayed["messages"][1]["thinking_blocks"][0]["signature"], "s");
        assert_eq!(relayed["messages"][1]["reasoning_content"], "t");
    }

    /// An upstream that refuses echoed reasoning (Groq, Cerebras, or one
    /// not known to) gets the request again without it, and from then on
    /// never: JSON and streamed. Another client error is not sent twice.
    #[tokio::test]
    async fn an_upstream_that_refuses_echoed_reasoning_gets_none_from_then_on() {
        use futures_util::StreamExt;
        let mock = switchyard_testkit::MockUpstream::start().await;
        let request = |model: &str, stream: bool| -> ChatCompletionRequest {
            serde_json::from_value(serde_json::json!({
                "model": model, "stream": stream,
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "x", "reasoning_content": "t"},
                    {"role": "user", "content": "again"}
                ]
            }))
            .unwrap()
        };
        let echoed = |n: usize| {
            let requests = mock.requests();
            assert_eq!(requests.len(), n);
            requests
                .iter()
                .map(|r| r.body["messages"][1].get("reasoning_content").is_some())
                .collect::<Vec<_>>()
        };
        let provider = OpenAiProvider::new(&mock.base_url(), None, &HttpSettings::default()).unwrap();
        let req = request("m::refuses_reasoning", false);
        let answer = crate::Provider::chat(&provider, &req).await.unwrap();
        assert!(answer.usage.is_some());
        assert_eq!(echoed(2), [true, false]);
        crate::Provider::chat(&provider.clone(), &req).await.unwrap();
        assert_eq!(echoed(3), [true, false, false]);

        let provider = OpenAiProvider::new(&mock.base_url(), None, &HttpSettings::default()).unwrap();
        let mut chunks = crate::Provider::chat_stream(&provider, &request("m::refuses_reasoning", true))
            .await
            .unwrap();
        while let Some(chunk) = chunks.next().await {
            chunk.unwrap();
        }
        assert_eq!(echoed(5)[3..], [true, false]);

        // A server that takes it keeps getting it; another 400 is final.
        let provider = OpenAiProvider::new(&mock.base_url(), None, &HttpSettings::default()).unwrap();
        crate::Provider::chat(&provider, &request("m", false)).await.unwrap();
        let refused = crate::Provider::chat(&provider, &request("m::status=400", false)).await;
        assert!(
            matches!(refused, Err(ProviderError::Status { status: 400, .. })),
            "{refused:?}"
        );
        assert_eq!(echoed(7)[5..], [true, true]);
    }

    #[test]
    fn only_a_refusal_of_the_field_counts_as_one() {
        let status = |message: &str| ProviderError::Status {
            status: 400,
            message: message.into(),
            kind: None,
            code: None,
            param: None,
            retry_after: None,
            details: None,
        };
        for refusal in [
            "'messages.1' : for 'role:assistant' the following must be satisfied[('messages.1' : property 'reasoning_content' is unsupported)]",
            "messages.2.assistant.reasoning_content: property 'messages.2.assistant.reasoning_content' is unsupported",
            "Additional properties are not allowed ('thinking_blocks' was unexpected)",
            "Extra inputs are not permitted: messages.1.reasoning_content",
        ] {
            assert!(refuses_echo(&status(refusal)), "{refusal}");
        }
        for other in [
            "The `reasoning_content` in the thinking mode must be passed back to the API.",
            "Missing `reasoning_content` field in the assistant message at message index 2.",
            "property 'store' is unsupported",
        ] {
            assert!(!refuses_echo(&status(other)), "{other}");
        }
    }

    #[test]
    fn azure_api_versions_before_2024_09_take_no_stream_options() {
        for v in [
            "2024-09-01-preview",
            "2024-10-21",
            "2025-04-01-preview",
            "preview",
            "latest",
            "v1",
        ] {
            assert!(azure_takes_stream_options(v), "{v}");
        }
        for v in ["2023-05-15", "2024-02-01", "2024-06-01", "2024-08-01-preview"] {
            assert!(!azure_takes_stream_options(v), "{v}");
        }
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens() {
        for model in ["o1", "o3-mini", "o4-mini-2025-04-16", "gpt-5", "gpt-5.1", "openai/o3"] {
            assert!(is_reasoning_model(model), "{model}");
        }
        for model in ["gpt-4o", "gpt-4.1-mini", "o1x", "llama-3-o1", "ollama"] {
            assert!(!is_reasoning_model(model), "{model}");
        }
        let req: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "o3-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&encode_chat(&req, true).unwrap()).unwrap();
        assert_eq!(body["max_completion_tokens"], 50);
        assert!(body.get("max_tokens").is_none());
        // Everything else is written as the request's own serialisation
        // writes it.
        let mut full: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "o3", "max_tokens": 9, "stream": true, "stream_options": {"include_usage": true},
            "temperature": 0.2, "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
        }))
        .unwrap();
        let renamed: serde_json::Value = serde_json::from_slice(&encode_chat(&full, true).unwrap()).unwrap();
        let limit = full.extra.remove("max_tokens").unwrap();
        full.extra.insert("max_completion_tokens".into(), limit);
        assert_eq!(renamed, serde_json::to_value(&full).unwrap());
        let mut other = req.clone();
        other.model = "gpt-4o".into();
        let body: serde_json::Value = serde_json::from_slice(&encode_chat(&other, true).unwrap()).unwrap();
        assert_eq!(body["max_tokens"], 50);
    }
}
