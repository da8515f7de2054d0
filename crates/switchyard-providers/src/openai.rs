//! OpenAI, OpenAI-compatible servers (vLLM, Ollama's `/v1`, LM Studio…) and Azure OpenAI.
//!
//! These upstreams already speak the gateway's wire format, so request bodies are
//! serialised once and response bytes pass through unchanged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

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
/// sets only the former has it renamed for them; the echoed fields in
/// `strip` (see [`Echoed`]) are left out; images, files and audio of tool
/// messages move to a user message after them ([`move_tool_media`]).
/// Other bodies are encoded as they are.
fn encode_chat(req: &ChatCompletionRequest, strip: Echoed, wire: ChatWire) -> Result<Vec<u8>> {
    let ids = wire.ids;
    let media = req.messages.iter().any(has_tool_media);
    let refit = !ids.takes_all(req);
    let capped = wire.asks_too_much(req);
    if media || refit || capped || !Echoed::present(req).and(strip).is_empty() {
        let mut copy = req.clone();
        strip.remove_from(&mut copy);
        move_tool_media(&mut copy.messages);
        if refit {
            ids.fit_all(&mut copy);
        }
        wire.cap_output(&mut copy);
        return encode_plain(&copy, wire);
    }
    encode_plain(req, wire)
}

/// What a deployment's chat requests must fit, beyond the request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ChatWire {
    /// The tool-call ids the upstream takes.
    ids: ToolIds,
    /// The deployment serves a reasoning model whatever its name says (an
    /// Azure deployment named otherwise, with `base_model` saying which).
    reasoning: bool,
    /// The most output a request may ask for (`max_output_tokens`).
    max_output: Option<u32>,
    /// The deployment's `base_model` refuses `reasoning_effort` (GPT-5's
    /// chat model, o1-mini, o1-preview) whatever its name says.
    refuses_effort: bool,
    /// The deployment's `base_model` is GPT-5's chat model, which does not
    /// reason and takes sampling settings and `stop`.
    plain_chat: bool,
    /// The deployment's `base_model` reasons only when asked (GPT-5.1 and
    /// later).
    reasons_when_asked: bool,
}

impl ChatWire {
    /// Whether `req` asks for more output than the deployment's model writes.
    fn asks_too_much(self, req: &ChatCompletionRequest) -> bool {
        self.max_output.is_some_and(|cap| {
            ["max_tokens", "max_completion_tokens"].iter().any(|k| {
                req.extra
                    .get(*k)
                    .and_then(serde_json::Value::as_u64)
                    .is_some_and(|n| n > u64::from(cap))
            })
        })
    }

    /// Lowers what `req` asks for to the deployment's most.
    fn cap_output(self, req: &mut ChatCompletionRequest) {
        let Some(cap) = self.max_output else { return };
        for key in ["max_tokens", "max_completion_tokens"] {
            if let Some(n) = req.extra.get_mut(key)
                && n.as_u64().is_some_and(|n| n > u64::from(cap))
            {
                *n = serde_json::Value::from(cap);
            }
        }
    }
}

/// The tool-call ids an upstream takes. Ids from another model (Claude's
/// `toolu_…`, vLLM's 46-character ones, a Gemini signature) in a
/// conversation's history go as a hash of themselves where they do not fit,
/// the same in the call and its result, which is all that must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ToolIds {
    /// Up to 40 characters (OpenAI's and Azure's limit).
    #[default]
    UpTo40,
    /// Exactly nine letters and digits (Mistral's API).
    NineAlphanumeric,
}

impl ToolIds {
    /// What the upstream at `host` takes.
    fn for_host(host: &str) -> Self {
        if host == "mistral.ai" || host.ends_with(".mistral.ai") {
            ToolIds::NineAlphanumeric
        } else {
            ToolIds::UpTo40
        }
    }

    fn takes(self, id: &str) -> bool {
        match self {
            ToolIds::UpTo40 => id.len() <= 40,
            ToolIds::NineAlphanumeric => id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        }
    }

    /// Whether every id in the request's messages fits.
    fn takes_all(self, req: &ChatCompletionRequest) -> bool {
        req.messages.iter().all(|m| {
            m.tool_call_id.as_deref().is_none_or(|id| self.takes(id))
                && m.tool_calls.iter().flatten().all(|c| self.takes(&c.id))
        })
    }

    /// `id`, or a hash of it that fits.
    fn fit(self, id: &str) -> String {
        if self.takes(id) {
            return id.to_owned();
        }
        use sha2::Digest as _;
        let hash = hex::encode(sha2::Sha256::digest(id.as_bytes()));
        match self {
            ToolIds::UpTo40 => format!("call_{}", &hash[..32]),
            ToolIds::NineAlphanumeric => hash[..9].to_owned(),
        }
    }

    fn fit_all(self, req: &mut ChatCompletionRequest) {
        for message in &mut req.messages {
            if let Some(id) = message.tool_call_id.as_mut() {
                *id = self.fit(id);
            }
            for call in message.tool_calls.iter_mut().flatten() {
                call.id = self.fit(&call.id);
            }
        }
    }
}

/// [`encode_chat`]'s renaming of `max_tokens`, and its leaving out of the
/// sampling settings reasoning models refuse.
fn encode_plain(req: &ChatCompletionRequest, wire: ChatWire) -> Result<Vec<u8>> {
    if !(wire.reasoning || is_reasoning_model(&req.model)) {
        return encode(req);
    }
    // `max_tokens` is renamed, or left out beside `max_completion_tokens`
    // (both: "Unsupported parameter: 'max_tokens'").
    let renames = req.extra.contains_key("max_tokens");
    let refused = refuses_sampling(req, wire);
    if renames || req.extra.iter().any(|(name, value)| refused(name, value)) {
        return encode(&RenamedMaxTokens(req, wire));
    }
    encode(req)
}

/// Which sampling settings a reasoning model refuses (OpenAI's o-series
/// and GPT-5 answer 400 `unsupported_value` to a `temperature` or `top_p`
/// other than 1, and to penalties): clients that send their defaults
/// (`temperature: 0.7`) to every model of a group still get an answer. A
/// request that turns reasoning off (`reasoning_effort: "none"`) keeps them,
/// and so does one to GPT-5.1 or later that asks for no effort, since those
/// reason only when asked and then take them.
fn refuses_sampling(req: &ChatCompletionRequest, wire: ChatWire) -> impl Fn(&str, &serde_json::Value) -> bool {
    // GPT-5's chat model, named as a reasoning one, does not reason: it
    // takes sampling settings and `stop`. A deployment's `base_model`
    // tells for a name that says nothing (an Azure deployment's).
    let name = req.model.rsplit('/').next().unwrap_or(&req.model);
    let plain_chat = wire.plain_chat || name.starts_with("gpt-5-chat");
    let when_asked = wire.reasons_when_asked || reasons_only_when_asked(&req.model);
    let thinking = !plain_chat
        && match req.extra.get("reasoning_effort").and_then(serde_json::Value::as_str) {
            Some("none") => false,
            Some(_) => true,
            None => !when_asked,
        };
    let takes_stop = plain_chat;
    move |name, value| {
        thinking
            && match name {
                "temperature" | "top_p" => value.as_f64().is_some_and(|v| v != 1.0),
                "presence_penalty" | "frequency_penalty" => value.as_f64().is_some_and(|v| v != 0.0),
                // "Unsupported parameter: 'stop' is not supported with this
                // model" (`/v1/messages` sends Claude's `stop_sequences`).
                "stop" => !value.is_null() && !takes_stop,
                _ => false,
            }
    }
}

/// Fields clients echo back that were not OpenAI's: Claude's
/// `thinking_blocks` and other servers' `reasoning_content` on assistant
/// messages, Gemini's `extra_content` (its thought signature) on their
/// tool calls. DeepSeek and Kimi need the reasoning back, Gemini the
/// signature, a proxy in front of Claude the blocks; OpenAI's own API,
/// Azure, Groq and Cerebras refuse them as unknown fields. Also OpenAI's
/// request-level hints (`prompt_cache_key`, `prompt_cache_retention`,
/// `safety_identifier`, sent by Codex and the Agents SDK), which other
/// models on Azure and other servers refuse ("Unrecognized request
/// argument supplied: prompt_cache_key"): left out once refused, as the
/// echoed fields are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Echoed(u8);

/// Words of an upstream's error refusing a field it does not take.
const REFUSALS: [&str; 10] = [
    "unsupported",
    "not supported",
    "unrecognized",
    "unexpected",
    "unknown",
    "not allowed",
    "not permitted",
    "extra inputs",
    "extra fields",
    "extra_forbidden",
];

/// Whether `error` refuses `stream_options` as a field the upstream does
/// not take (Mistral: 422 `extra_forbidden` at `body.stream_options`). The
/// field itself, in the same problem as the refusal: not a member of it
/// (`stream_options.foo`, which a client sent), for which the deployment
/// would stop asking every stream for its usage.
fn stream_options_refused(error: &ProviderError) -> bool {
    let Some((message, param)) = field_refusal(error) else {
        return false;
    };
    let refuses = |text: &str| {
        let words = text.to_ascii_lowercase().replace("stream_options", " ");
        REFUSALS.iter().any(|r| words.contains(r))
    };
    if param.is_some_and(|p| p.trim() == "stream_options") && refuses(message) {
        return true;
    }
    message
        .split("; ")
        .any(|problem| names_stream_options(problem) && refuses(problem))
}

/// The message and `param` of an error that may refuse a request field
/// (a 400 or 422); `None` for any other.
fn field_refusal(error: &ProviderError) -> Option<(&str, Option<&str>)> {
    match error {
        ProviderError::Status {
            status: 400 | 422,
            message,
            param,
            ..
        } => Some((message, param.as_deref())),
        _ => None,
    }
}

/// Whether `text` names `stream_options` itself, not a member of it.
fn names_stream_options(text: &str) -> bool {
    text.match_indices("stream_options").any(|(i, name)| {
        let after = text[i + name.len()..].chars().next();
        !after.is_some_and(|c| c == '.' || c == '_' || c == '[' || c.is_ascii_alphanumeric())
    })
}

impl Echoed {
    const THINKING_BLOCKS: Echoed = Echoed(1);
    const REASONING_CONTENT: Echoed = Echoed(2);
    const EXTRA_CONTENT: Echoed = Echoed(4);
    /// The fields echoed back in messages (not the hints).
    const ALL: Echoed = Echoed(7);
    const NAMES: [(Echoed, &'static str); 6] = [
        (Echoed::THINKING_BLOCKS, "thinking_blocks"),
        (Echoed::REASONING_CONTENT, "reasoning_content"),
        (Echoed::EXTRA_CONTENT, "extra_content"),
        (Echoed(8), "prompt_cache_key"),
        (Echoed(16), "prompt_cache_retention"),
        (Echoed(32), "safety_identifier"),
    ];

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn and(self, other: Echoed) -> Echoed {
        Echoed(self.0 & other.0)
    }

    fn or(self, other: Echoed) -> Echoed {
        Echoed(self.0 | other.0)
    }

    fn contains(self, other: Echoed) -> bool {
        self.0 & other.0 == other.0
    }

    /// The fields `req` carries.
    fn present(req: &ChatCompletionRequest) -> Echoed {
        let mut found = Echoed::default();
        for m in &req.messages {
            for (field, name) in &Echoed::NAMES[..2] {
                if m.extra.contains_key(*name) {
                    found = found.or(*field);
                }
            }
            if m.tool_calls
                .iter()
                .flatten()
                .any(|c| c.extra.contains_key("extra_content"))
            {
                found = found.or(Echoed::EXTRA_CONTENT);
            }
        }
        for (field, name) in &Echoed::NAMES[3..] {
            if req.extra.contains_key(*name) {
                found = found.or(*field);
            }
        }
        found
    }

    /// Removes these fields from `req`.
    fn remove_from(self, req: &mut ChatCompletionRequest) {
        for m in &mut req.messages {
            for (field, name) in &Echoed::NAMES[..2] {
                if self.contains(*field) {
                    m.extra.shift_remove(*name);
                }
            }
            if self.contains(Echoed::EXTRA_CONTENT) {
                for call in m.tool_calls.iter_mut().flatten() {
                    call.extra.shift_remove("extra_content");
                }
            }
        }
        for (field, name) in &Echoed::NAMES[3..] {
            if self.contains(*field) {
                req.extra.shift_remove(*name);
            }
        }
    }

    /// The fields of `sent` that `error` refuses as fields the upstream
    /// does not take (Groq: "property 'reasoning_content' is unsupported"),
    /// not ones it asks for (DeepSeek: "The `reasoning_content` in the
    /// thinking mode must be passed back").
    fn refused(error: &ProviderError, sent: Echoed) -> Echoed {
        let Some((message, param)) = field_refusal(error) else {
            return Echoed::default();
        };
        let message = message.to_ascii_lowercase();
        // The words, not the field names (`extra_content` holds "extra").
        let words = Echoed::NAMES
            .iter()
            .fold(message.clone(), |m, (_, name)| m.replace(name, " "));
        if !REFUSALS.iter().any(|r| words.contains(r)) {
            return Echoed::default();
        }
        let mut named = Echoed::default();
        for (field, name) in Echoed::NAMES {
            if message.contains(name) || param.is_some_and(|p| p.contains(name)) {
                named = named.or(field);
            }
        }
        named.and(sent)
    }
}

/// What a deployment leaves out of the chat requests it sends: everything
/// [`Echoed`] for a host known to refuse it, else what the upstream has
/// refused for each model (a deployment may serve many: wildcards,
/// aggregators).
#[derive(Debug, Clone, Default)]
struct EchoPolicy {
    strict: bool,
    learned: Arc<RwLock<HashMap<String, Echoed>>>,
}

impl EchoPolicy {
    fn strict() -> Self {
        Self {
            strict: true,
            learned: Arc::default(),
        }
    }

    /// What to leave out of a request for `model`: what it refused, and
    /// on a strict host every echoed field (hints only once refused).
    fn for_model(&self, model: &str) -> Echoed {
        let learned = self
            .learned
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(model)
            .copied()
            .unwrap_or_default();
        if self.strict { Echoed::ALL.or(learned) } else { learned }
    }

    /// Remembers that the upstream refuses `fields` for `model`.
    fn learn(&self, model: &str, fields: Echoed) {
        let mut learned = self.learned.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = learned.entry(model.to_owned()).or_default();
        *known = known.or(fields);
    }
}

/// Whether a tool message holds parts other than text.
fn has_tool_media(message: &switchyard_api::ChatMessage) -> bool {
    message.role == switchyard_api::Role::Tool
        && matches!(&message.content, Some(switchyard_api::MessageContent::Parts(parts)) if parts.iter().any(|p| p.kind != "text"))
}

/// What a tool message that held only images, files or audio says instead.
const MEDIA_NOTE: &str = "(the output follows in the next message)";

/// Chat APIs take only text in a `tool` message (OpenAI refuses an image
/// there, which a Responses `function_call_output` or a computer-use tool
/// may carry): the other parts of a run of tool messages go in one `user`
/// message after the run, and a message that had no text says so.
fn move_tool_media(messages: &mut Vec<switchyard_api::ChatMessage>) {
    use switchyard_api::{ChatMessage, MessageContent, Role};
    if !messages.iter().any(has_tool_media) {
        return;
    }
    let mut out = Vec::with_capacity(messages.len() + 1);
    let mut media = Vec::new();
    let flush = |media: &mut Vec<switchyard_api::ContentPart>, out: &mut Vec<ChatMessage>| {
        if !media.is_empty() {
            out.push(ChatMessage::with_content(
                Role::User,
                MessageContent::Parts(std::mem::take(media)),
            ));
        }
    };
    for mut message in std::mem::take(messages) {
        if message.role != Role::Tool {
            flush(&mut media, &mut out);
        } else if let Some(MessageContent::Parts(parts)) = &mut message.content {
            let (text, other): (Vec<_>, Vec<_>) = std::mem::take(parts).into_iter().partition(|p| p.kind == "text");
            media.extend(other);
            message.content = Some(if text.is_empty() {
                MessageContent::Text(MEDIA_NOTE.into())
            } else {
                MessageContent::Parts(text)
            });
        }
        out.push(message);
    }
    flush(&mut media, &mut out);
    *messages = out;
}

/// Hosts known to refuse `stream_options` (Mistral's API and Codestral's
/// send usage in every stream's last chunk unasked).
fn refuses_stream_options(host: &str) -> bool {
    host == "mistral.ai" || host.ends_with(".mistral.ai")
}

/// Hosts known to refuse echoed reasoning in messages.
fn strict_host(host: &str) -> bool {
    host == "api.openai.com"
        || host.ends_with(".openai.azure.com")
        || host == "api.groq.com"
        || host == "api.cerebras.ai"
}

/// A chat request for a reasoning model, without copying it: `max_tokens`
/// named `max_completion_tokens` (left out when that is set too), the
/// sampling settings it
/// refuses ([`refuses_sampling`]) left out. Writes the fields as
/// `ChatCompletionRequest`'s own `Serialize` does (a test compares the two).
struct RenamedMaxTokens<'a>(&'a ChatCompletionRequest, ChatWire);

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
        let refused = refuses_sampling(req, self.1);
        // A `max_completion_tokens` of `null` (clients that write every
        // field) is none: `max_tokens` takes its place.
        let set = |key: &str| req.extra.get(key).is_some_and(|v| !v.is_null());
        let renamed = !set("max_completion_tokens") && set("max_tokens");
        let has_completion = req.extra.contains_key("max_completion_tokens");
        for (name, value) in &req.extra {
            if refused(name, value)
                || (!renamed && has_completion && name == "max_tokens")
                || (renamed && name == "max_completion_tokens")
            {
                continue;
            }
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

/// Whether `model` is GPT-5.1 or a later GPT-5 (`gpt-5.1`, `gpt-5.2-mini`…),
/// whose reasoning effort defaults to none.
fn reasons_only_when_asked(model: &str) -> bool {
    let name = model.rsplit('/').next().unwrap_or(model);
    name.strip_prefix("gpt-5.")
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|minor| minor.parse::<u32>().ok())
        .is_some_and(|minor| minor >= 1)
}

/// Whether a reasoning model takes `reasoning_effort`: not GPT-5's chat
/// model (`gpt-5-chat-latest`), nor o1-mini and o1-preview, which refuse it.
fn takes_effort(model: &str) -> bool {
    let name = model.rsplit('/').next().unwrap_or(model);
    !["gpt-5-chat", "o1-mini", "o1-preview"]
        .iter()
        .any(|refuses| name.starts_with(refuses))
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
    /// Set when the upstream refuses `stream_options`: from the start for
    /// Azure API versions before 2024-09-01 (a 400) and Mistral's API (a
    /// 422), and from its first refusal for any other (shared by the clones
    /// of one deployment's provider).
    no_stream_options: Arc<AtomicBool>,
    /// The echoed fields left out of chat requests: from the start for the
    /// hosts known to refuse them, and from its first refusal of one for
    /// each model of any other (shared by the clones of one deployment's
    /// provider).
    echoes: EchoPolicy,
    /// What its chat requests must fit.
    wire: ChatWire,
}

impl Endpoints {
    /// Whether `stream_options` may be sent.
    fn takes_stream_options(&self) -> bool {
        !self.no_stream_options.load(Ordering::Relaxed)
    }

    /// Whether `error` refuses `stream_options`; if so it is left out from
    /// now on, and the request is sent again without it.
    fn learn_stream_options(&self, error: &ProviderError) -> bool {
        if !stream_options_refused(error) {
            return false;
        }
        if !self.no_stream_options.swap(true, Ordering::Relaxed) {
            tracing::info!(
                // Host and path only: an `api_base` may carry a user and password.
                host = self.chat_url.host_str().unwrap_or_default(),
                path = self.chat_url.path(),
                "the upstream refuses `stream_options`: it is left out from now on"
            );
        }
        true
    }

    /// Sends a chat request with `send`; an upstream that refuses a field
    /// echoed back gets the request again without it, and, for that model,
    /// never again.
    async fn chat_call<T, F, Fut>(&self, req: &ChatCompletionRequest, send: F) -> Result<T>
    where
        F: Fn(Vec<u8>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let present = Echoed::present(req);
        let mut strip = self.echoes.for_model(&req.model);
        loop {
            let sent = present.and(Echoed(!strip.0));
            match send(encode_chat(req, strip, self.wire)?).await {
                Err(e) if !sent.is_empty() => {
                    let refused = Echoed::refused(&e, sent);
                    if refused.is_empty() {
                        return Err(e);
                    }
                    let fields: Vec<&str> = Echoed::NAMES
                        .iter()
                        .filter(|(f, _)| refused.contains(*f))
                        .map(|(_, n)| *n)
                        .collect();
                    tracing::info!(
                        // Host and path only: an `api_base` may carry a
                        // user and password.
                        host = self.chat_url.host_str().unwrap_or_default(),
                        path = self.chat_url.path(),
                        model = %req.model,
                        ?fields,
                        "the upstream refuses fields it does not take: they are left out from now on"
                    );
                    self.echoes.learn(&req.model, refused);
                    strip = strip.or(refused);
                }
                other => return other,
            }
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
            /// The same provider for a deployment whose model is
            /// `base_model` whatever its name (an Azure deployment named
            /// otherwise): a reasoning model's requests get
            /// `max_completion_tokens` for `max_tokens`.
            #[must_use]
            pub fn with_base_model(mut self, base_model: Option<&str>) -> Self {
                self.0.wire.reasoning = base_model.is_some_and(is_reasoning_model);
                self.0.wire.refuses_effort = base_model.is_some_and(|b| !takes_effort(b));
                self.0.wire.plain_chat =
                    base_model.is_some_and(|b| b.rsplit('/').next().is_some_and(|n| n.starts_with("gpt-5-chat")));
                self.0.wire.reasons_when_asked = base_model.is_some_and(reasons_only_when_asked);
                self
            }

            /// Whether the deployment's model (`model` as sent, or the
            /// `base_model` it was configured with) is of a reasoning
            /// family, which takes `reasoning_effort`.
            pub fn reasons(&self, model: &str) -> bool {
                (self.0.wire.reasoning || is_reasoning_model(model))
                    && takes_effort(model)
                    && !self.0.wire.refuses_effort
            }

            /// The same provider for a model that writes at most
            /// `max_output` tokens: a chat request asking for more is sent
            /// asking for that many.
            #[must_use]
            pub fn with_max_output(mut self, max_output: Option<u32>) -> Self {
                self.0.wire.max_output = max_output;
                self
            }

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
                if req.stream_options.is_none() {
                    return self.0.chat_call(req, send).await;
                }
                if self.0.takes_stream_options() {
                    match self.0.chat_call(req, send).await {
                        Err(e) if self.0.learn_stream_options(&e) => {}
                        other => return other,
                    }
                }
                let req = without_stream_options(req, |r| r.stream_options = None);
                self.0.chat_call(&req, send).await
            }

            async fn completion(&self, req: &CompletionRequest) -> Result<ProviderResponse> {
                self.0.http.post_json(&self.0.completions_url, encode(req)?).await
            }

            async fn completion_stream(&self, req: &CompletionRequest) -> Result<ChunkStream> {
                let url = &self.0.completions_url;
                if req.stream_options.is_none() {
                    return self.0.http.post_stream(url, encode(req)?).await;
                }
                if self.0.takes_stream_options() {
                    match self.0.http.post_stream(url, encode(req)?).await {
                        Err(e) if self.0.learn_stream_options(&e) => {}
                        other => return other,
                    }
                }
                let req = without_stream_options(req, |r| r.stream_options = None);
                self.0.http.post_stream(url, encode(&req)?).await
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

    /// How long a stream that has begun may stay silent.
    pub fn idle_timeout(&self) -> std::time::Duration {
        self.0.http.idle()
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
            no_stream_options: Arc::new(AtomicBool::new(
                reqwest::Url::parse(base)
                    .ok()
                    .and_then(|u| u.host_str().map(refuses_stream_options))
                    .unwrap_or(false),
            )),
            echoes: if reqwest::Url::parse(base)
                .ok()
                .and_then(|u| u.host_str().map(strict_host))
                .unwrap_or(false)
            {
                EchoPolicy::strict()
            } else {
                EchoPolicy::default()
            },
            wire: ChatWire {
                ids: reqwest::Url::parse(base)
                    .ok()
                    .and_then(|u| u.host_str().map(ToolIds::for_host))
                    .unwrap_or_default(),
                ..ChatWire::default()
            },
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

    /// How long a stream that has begun may stay silent.
    pub fn idle_timeout(&self) -> std::time::Duration {
        self.0.http.idle()
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
            no_stream_options: Arc::new(AtomicBool::new(!azure_takes_stream_options(api_version))),
            echoes: EchoPolicy::strict(),
            wire: ChatWire::default(),
        }))
    }
}

openai_wire_provider!(AzureProvider, "azure");

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {

    #[test]
    fn only_a_refusal_of_stream_options_itself_is_learned() {
        let status = |message: &str, param: Option<&str>| ProviderError::Status {
            status: 422,
            message: message.into(),
            kind: None,
            code: None,
            param: param.map(Into::into),
            retry_after: None,
            details: None,
        };
        for refused in [
            status("body.stream_options: Extra inputs are not permitted", None),
            status("Unrecognized request argument supplied: stream_options", None),
            status(
                "'stream_options' is not supported with this model.",
                Some("stream_options"),
            ),
        ] {
            assert!(super::stream_options_refused(&refused), "{refused:?}");
        }
        for kept in [
            // A member the client sent.
            status("Unknown parameter: 'stream_options.foo'.", Some("stream_options.foo")),
            status("body.stream_options.foo: Extra inputs are not permitted", None),
            // The field named in one problem, a refusal in another.
            status(
                "body.stream_options: Input should be a valid dictionary; body.foo: Extra inputs are not permitted",
                None,
            ),
            status("stream_options.include_usage must be a boolean", None),
        ] {
            assert!(!super::stream_options_refused(&kept), "{kept:?}");
        }
    }

    use super::*;

    /// Ids from another model's history go as hashes that fit the upstream,
    /// the same in the call and its result; ids that fit are kept.
    #[test]
    fn tool_call_ids_are_fitted_to_the_upstream() {
        let long = format!("chatcmpl-tool-{}", "a".repeat(32));
        let req: ChatCompletionRequest = serde_json::from_value(serde_json::json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": long, "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "call_short", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": long, "content": "one"},
            {"role": "tool", "tool_call_id": "call_short", "content": "two"}
        ]}))
        .unwrap_or_else(|e| panic!("{e}"));
        let sent = |ids: ToolIds| -> serde_json::Value {
            serde_json::from_slice(
                &encode_chat(
                    &req,
                    Echoed::default(),
                    ChatWire {
                        ids,
                        ..ChatWire::default()
                    },
                )
                .unwrap_or_else(|e| panic!("{e}")),
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let openai = sent(ToolIds::UpTo40);
        let fitted = openai["messages"][1]["tool_calls"][0]["id"]
            .as_str()
            .unwrap_or_default();
        assert!(fitted.len() <= 40 && fitted.starts_with("call_"), "{openai}");
        assert_eq!(openai["messages"][2]["tool_call_id"], fitted);
        assert_eq!(openai["messages"][1]["tool_calls"][1]["id"], "call_short");
        assert_eq!(openai["messages"][3]["tool_call_id"], "call_short");
        let mistral = sent(ToolIds::NineAlphanumeric);
        for (call, result) in [(0, 2), (1, 3)] {
            let id = mistral["messages"][1]["tool_calls"][call]["id"]
                .as_str()
                .unwrap_or_default();
            assert!(
                id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
                "{mistral}"
            );
            assert_eq!(mistral["messages"][result]["tool_call_id"], id);
        }
        assert_eq!(ToolIds::for_host("api.mistral.ai"), ToolIds::NineAlphanumeric);
        assert_eq!(ToolIds::for_host("api.openai.com"), ToolIds::UpTo40);
    }

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
        let call = serde_json::json!({"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"},
            "extra_content": {"google": {"thought_signature": "sig"}}});
        let req: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "x", "reasoning_content": "t", "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "s"}],
                 "tool_calls": [call]}
            ]
        }))
        .unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&encode_chat(&req, Echoed::ALL, ChatWire::default()).unwrap()).unwrap();
        let mut plain = call.clone();
        plain.as_object_mut().unwrap().remove("extra_content");
        assert_eq!(
            body["messages"][1],
            serde_json::json!({"role": "assistant", "content": "x", "tool_calls": [plain]})
        );
        // An OpenAI-compatible server (DeepSeek, Gemini, a proxy in front
        // of Claude) gets them; one that refused one field keeps the others.
        let relayed: serde_json::Value =
            serde_json::from_slice(&encode_chat(&req, Echoed::default(), ChatWire::default()).unwrap()).unwrap();
        assert_eq!(relayed["messages"][1]["thinking_blocks"][0]["signature"], "s");
        assert_eq!(relayed["messages"][1]["reasoning_content"], "t");
        assert_eq!(relayed["messages"][1]["tool_calls"][0], call);
        let some: serde_json::Value =
            serde_json::from_slice(&encode_chat(&req, Echoed::THINKING_BLOCKS, ChatWire::default()).unwrap()).unwrap();
        assert!(some["messages"][1].get("thinking_blocks").is_none());
        assert_eq!(some["messages"][1]["reasoning_content"], "t");
    }

    /// Chat APIs take only text in tool messages: images follow the run of
    /// tool messages in a user message.
    #[test]
    fn images_in_tool_messages_follow_them_in_a_user_message() {
        let image = serde_json::json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}});
        let req: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "look"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "shot", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "read", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": [image]},
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "page"}, image]},
                {"role": "user", "content": "and now?"}
            ]
        }))
        .unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&encode_chat(&req, Echoed::default(), ChatWire::default()).unwrap()).unwrap();
        let messages = body["messages"].as_array().unwrap();
        let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["user", "assistant", "tool", "tool", "user", "user"]);
        assert_eq!(messages[2]["content"], MEDIA_NOTE);
        assert_eq!(
            messages[3]["content"],
            serde_json::json!([{"type": "text", "text": "page"}])
        );
        assert_eq!(messages[4]["content"], serde_json::json!([image, image]));
        assert_eq!(messages[5]["content"], "and now?");
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

        // What one model of a deployment refused, another still gets.
        let provider = OpenAiProvider::new(&mock.base_url(), None, &HttpSettings::default()).unwrap();
        crate::Provider::chat(&provider, &request("m::refuses_reasoning", false))
            .await
            .unwrap();
        crate::Provider::chat(&provider, &request("m", false)).await.unwrap();
        assert_eq!(echoed(10)[7..], [true, false, true]);
    }

    #[test]
    fn a_refused_hint_is_left_out_from_then_on_even_on_a_strict_host() {
        let refusal = ProviderError::Status {
            status: 400,
            message: "Unrecognized request argument supplied: prompt_cache_key".into(),
            kind: None,
            code: Some("unrecognized_request_argument".into()),
            param: None,
            retry_after: None,
            details: None,
        };
        let mut req: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "DeepSeek-V3", "messages": [{"role": "user", "content": "hi"}],
            "prompt_cache_key": "k", "safety_identifier": "u"
        }))
        .unwrap();
        let sent = Echoed::present(&req);
        let refused = Echoed::refused(&refusal, sent);
        assert_eq!(refused, Echoed(8), "{sent:?}");
        // Azure is strict: the echoes always, the hint once refused.
        let policy = EchoPolicy::strict();
        assert_eq!(policy.for_model("DeepSeek-V3"), Echoed::ALL);
        policy.learn("DeepSeek-V3", refused);
        let strip = policy.for_model("DeepSeek-V3");
        assert!(strip.contains(Echoed::ALL) && strip.contains(refused));
        assert_eq!(policy.for_model("gpt-4o"), Echoed::ALL, "another model still gets it");
        strip.remove_from(&mut req);
        assert!(!req.extra.contains_key("prompt_cache_key"));
        assert!(req.extra.contains_key("safety_identifier"));
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
            assert!(!Echoed::refused(&status(refusal), Echoed::ALL).is_empty(), "{refusal}");
        }
        for other in [
            "The `reasoning_content` in the thinking mode must be passed back to the API.",
            "Missing `reasoning_content` field in the assistant message at message index 2.",
            "property 'store' is unsupported",
            "Invalid `extra_content` thought signature on tool call 0",
        ] {
            assert!(Echoed::refused(&status(other), Echoed::ALL).is_empty(), "{other}");
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
        let body: serde_json::Value =
            serde_json::from_slice(&encode_chat(&req, Echoed::ALL, ChatWire::default()).unwrap()).unwrap();
        assert_eq!(body["max_completion_tokens"], 50);
        assert!(body.get("max_tokens").is_none());
        // A `null` beside it is none.
        for order in [
            r#"{"model": "o3", "max_tokens": 50, "max_completion_tokens": null, "messages": []}"#,
            r#"{"model": "o3", "max_completion_tokens": null, "max_tokens": 50, "messages": []}"#,
        ] {
            let req: ChatCompletionRequest = serde_json::from_str(order).unwrap();
            let sent = encode_chat(&req, Echoed::ALL, ChatWire::default()).unwrap();
            let sent = String::from_utf8(sent).unwrap();
            assert_eq!(sent.matches("max_completion_tokens").count(), 1, "{sent}");
            let body: serde_json::Value = serde_json::from_str(&sent).unwrap();
            assert_eq!(body["max_completion_tokens"], 50, "{sent}");
        }
        let nulls: ChatCompletionRequest = serde_json::from_str(
            r#"{"model": "o3", "max_tokens": null, "max_completion_tokens": null, "messages": []}"#,
        )
        .unwrap();
        let sent = String::from_utf8(encode_chat(&nulls, Echoed::ALL, ChatWire::default()).unwrap()).unwrap();
        assert_eq!(sent.matches("max_completion_tokens").count(), 1, "{sent}");
        // Everything else is written as the request's own serialisation
        // writes it.
        let mut full: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "o3", "max_tokens": 9, "stream": true, "stream_options": {"include_usage": true},
            "temperature": 0.2, "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
        }))
        .unwrap();
        let renamed: serde_json::Value =
            serde_json::from_slice(&encode_chat(&full, Echoed::ALL, ChatWire::default()).unwrap()).unwrap();
        let limit = full.extra.remove("max_tokens").unwrap();
        full.extra.insert("max_completion_tokens".into(), limit);
        // but for the temperature, which reasoning models refuse.
        full.extra.remove("temperature");
        assert_eq!(renamed, serde_json::to_value(&full).unwrap());
        // Sampling settings they refuse are left out even without a
        // `max_tokens` to rename; the defaults, and a request that turns
        // reasoning off, keep them.
        for (extra, kept) in [
            (
                serde_json::json!({"temperature": 0.7, "top_p": 0.9, "presence_penalty": 0.5, "stop": ["END"]}),
                vec![],
            ),
            (
                serde_json::json!({"temperature": 1, "presence_penalty": 0}),
                vec!["temperature", "presence_penalty"],
            ),
            (
                serde_json::json!({"temperature": 0.2, "reasoning_effort": "none", "stop": "END"}),
                vec!["temperature", "stop"],
            ),
        ] {
            let mut req: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
                "model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]
            }))
            .unwrap();
            req.extra.extend(extra.as_object().unwrap().clone());
            let body: serde_json::Value =
                serde_json::from_slice(&encode_chat(&req, Echoed::ALL, ChatWire::default()).unwrap()).unwrap();
            for name in ["temperature", "top_p", "presence_penalty", "stop"] {
                assert_eq!(body.get(name).is_some(), kept.contains(&name), "{name} in {body}");
            }
        }
        // GPT-5's chat model does not reason: it keeps its stop sequences
        // and sampling settings, named so or by a deployment's `base_model`.
        let chat: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "gpt-5-chat-latest", "stop": ["END"], "temperature": 0.2, "top_p": 0.5,
            "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap();
        let plain = ChatWire {
            plain_chat: true,
            reasoning: true,
            ..ChatWire::default()
        };
        let reasoning = ChatWire {
            reasoning: true,
            ..ChatWire::default()
        };
        let when_asked = ChatWire {
            reasoning: true,
            reasons_when_asked: true,
            ..ChatWire::default()
        };
        for (model, wire, kept) in [
            ("gpt-5-chat-latest", ChatWire::default(), true),
            ("chat-prod", plain, true),
            ("chat-prod", reasoning, false),
            ("chat-prod", when_asked, true),
        ] {
            let mut chat = chat.clone();
            chat.model = model.into();
            let body: serde_json::Value =
                serde_json::from_slice(&encode_chat(&chat, Echoed::ALL, wire).unwrap()).unwrap();
            for name in ["temperature", "top_p"] {
                assert_eq!(body.get(name).is_some(), kept, "{model} {wire:?}: {body}");
            }
            assert_eq!(body.get("stop").is_some(), kept, "{model} {wire:?}: {body}");
        }
        // Both output limits: `max_tokens` goes, which reasoning models refuse.
        let mut both = chat.clone();
        both.model = "o3".into();
        both.extra.insert("max_tokens".into(), serde_json::json!(100));
        both.extra
            .insert("max_completion_tokens".into(), serde_json::json!(300));
        let body: serde_json::Value =
            serde_json::from_slice(&encode_chat(&both, Echoed::ALL, ChatWire::default()).unwrap()).unwrap();
        assert_eq!(
            (body.get("max_tokens"), &body["max_completion_tokens"]),
            (None, &serde_json::json!(300)),
            "{body}"
        );
        // GPT-5.1 and later reason only when asked: without an effort they
        // keep their temperature; with one, it goes.
        for (effort, kept) in [(None, true), (Some("high"), false)] {
            let mut req: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
                "model": "gpt-5.2-mini", "temperature": 0.2, "messages": [{"role": "user", "content": "hi"}]
            }))
            .unwrap();
            if let Some(effort) = effort {
                req.extra.insert("reasoning_effort".into(), serde_json::json!(effort));
            }
            let body: serde_json::Value =
                serde_json::from_slice(&encode_chat(&req, Echoed::ALL, ChatWire::default()).unwrap()).unwrap();
            assert_eq!(body.get("temperature").is_some(), kept, "{effort:?}: {body}");
        }
        let mut other = req.clone();
        other.model = "gpt-4o".into();
        let body: serde_json::Value =
            serde_json::from_slice(&encode_chat(&other, Echoed::ALL, ChatWire::default()).unwrap()).unwrap();
        assert_eq!(body["max_tokens"], 50);
        // An Azure deployment named otherwise, whose base model is one.
        other.model = "reasoning-prod".into();
        let azure = AzureProvider::new(
            "https://r.openai.azure.com",
            "reasoning-prod",
            "2025-04-01-preview",
            None,
            &HttpSettings::default(),
        )
        .unwrap()
        .with_base_model(Some("o4-mini"));
        let body: serde_json::Value =
            serde_json::from_slice(&encode_chat(&other, Echoed::ALL, azure.0.wire).unwrap()).unwrap();
        assert_eq!(body["max_completion_tokens"], 50, "{body}");
        assert!(body.get("max_tokens").is_none(), "{body}");
        // A deployment whose model writes at most 16 tokens.
        let capped = azure.with_max_output(Some(16));
        let body: serde_json::Value =
            serde_json::from_slice(&encode_chat(&other, Echoed::ALL, capped.0.wire).unwrap()).unwrap();
        assert_eq!(body["max_completion_tokens"], 16, "{body}");
        let mut small = other.clone();
        small.extra.insert("max_tokens".into(), serde_json::json!(8));
        let body: serde_json::Value =
            serde_json::from_slice(&encode_chat(&small, Echoed::ALL, capped.0.wire).unwrap()).unwrap();
        assert_eq!(body["max_completion_tokens"], 8, "{body}");
    }

    /// `reasoning_effort` goes to reasoning models that take it, by name
    /// or `base_model`: not GPT-5's chat model, o1-mini or o1-preview.
    #[test]
    fn reasoning_effort_goes_to_models_that_take_it() {
        let azure = |base: Option<&str>| {
            AzureProvider::new(
                "https://r.openai.azure.com",
                "prod",
                "2025-04-01-preview",
                None,
                &HttpSettings::default(),
            )
            .unwrap()
            .with_base_model(base)
        };
        assert!(azure(Some("gpt-5.1")).reasons("prod"));
        assert!(azure(None).reasons("o3-mini"));
        assert!(!azure(None).reasons("gpt-4o"));
        assert!(!azure(Some("gpt-5-chat")).reasons("prod"));
        assert!(!azure(None).reasons("gpt-5-chat-latest"));
        assert!(!azure(None).reasons("o1-mini"));
    }
}
