//! The response cache's side of a request: the controls a client sends,
//! the lookup before dispatch (exact, then semantic), serving a hit, and
//! storing a fresh answer (a stream once it is complete).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use serde_json::Value;
use switchyard_api::Extra;
use switchyard_cache::{CacheKey, CachedAnswer, CachedBody, KeyParts, ResponseCache, SemanticIndex, exact_key};
use switchyard_policy::Principal;
use switchyard_providers::{ChunkStream, ProviderError, StreamChunk};
use switchyard_routing::embed::Embedder;

use crate::cache_config::{CacheSpec, StoreSpec};
use crate::dispatch::Call;
use crate::error::ApiError;

/// `x-switchyard-cache: hit | miss` on every answer the cache could serve.
pub(crate) const CACHE_HEADER: HeaderName = HeaderName::from_static("x-switchyard-cache");
/// The cosine similarity of a semantic hit.
const SIMILARITY_HEADER: HeaderName = HeaderName::from_static("x-switchyard-cache-similarity");

/// The gateway's response cache.
#[derive(Debug)]
pub struct GatewayCache {
    store: ResponseCache,
    ttl: Duration,
    max_ttl: Duration,
    per_key: bool,
    /// Fraction of the original cost charged on a hit.
    pub hit_cost_ratio: f64,
    /// The largest answer stored, in bytes.
    pub max_entry_bytes: usize,
    semantic: HashMap<String, Arc<SemanticIndex>>,
}

/// What a client asked of the cache for one request: the body's `cache`
/// object (`no-cache`, `no-store`, `ttl`, `s-maxage`, `namespace`) and
/// `Cache-Control` (`no-cache`, `no-store`, `max-age`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Controls {
    /// Do not answer from the cache.
    pub(crate) no_cache: bool,
    /// Do not store this answer.
    pub(crate) no_store: bool,
    /// Keep this answer for this long.
    pub(crate) ttl: Option<Duration>,
    /// Accept only a cached answer younger than this.
    pub(crate) max_age: Option<Duration>,
    /// Answers are kept apart from those of other namespaces (LiteLLM's
    /// `cache.namespace`).
    pub(crate) namespace: Option<String>,
}

fn bad(param: &str, message: &str) -> ApiError {
    ApiError::InvalidField {
        param: Some(param.to_owned()),
        message: message.to_owned(),
    }
}

fn seconds(value: &Value, param: &str) -> Result<Duration, ApiError> {
    value
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e10)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| bad(param, &format!("'{param}' must be a non-negative number of seconds.")))
}

impl Controls {
    /// Takes the `cache` field out of a request body and reads `Cache-Control`.
    pub(crate) fn take(extra: &mut Extra, headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut controls = Controls::default();
        if let Some(value) = extra.shift_remove("cache").filter(|v| !v.is_null()) {
            let Value::Object(map) = value else {
                return Err(bad("cache", "'cache' must be an object, e.g. {\"no-cache\": true}."));
            };
            let mut bypass = false;
            for (name, v) in &map {
                let param = format!("cache.{name}");
                match name.as_str() {
                    "no-cache" | "no_cache" => {
                        controls.no_cache = v.as_bool().ok_or_else(|| bad(&param, "must be true or false."))?;
                    }
                    "no-store" | "no_store" => {
                        controls.no_store = v.as_bool().ok_or_else(|| bad(&param, "must be true or false."))?;
                    }
                    // LiteLLM's opt-in for a cache kept off by default:
                    // this one is on, so only `false` changes anything
                    // (whatever other fields say, after the loop).
                    "use-cache" | "use_cache" => {
                        bypass |= !v.as_bool().ok_or_else(|| bad(&param, "must be true or false."))?;
                    }
                    "ttl" => controls.ttl = Some(seconds(v, &param)?),
                    "s-maxage" | "s_maxage" => controls.max_age = Some(seconds(v, &param)?),
                    "namespace" => {
                        let ns = v
                            .as_str()
                            .filter(|ns| ns.len() <= 256)
                            .ok_or_else(|| bad(&param, "must be a string of at most 256 bytes."))?;
                        controls.namespace = (!ns.is_empty()).then(|| ns.to_owned());
                    }
                    _ => {
                        return Err(bad(
                            &param,
                            &format!(
                                "Unknown cache control `{name}`; known: no-cache, no-store, ttl, s-maxage, namespace, use-cache."
                            ),
                        ));
                    }
                }
            }
            if bypass {
                controls.no_cache = true;
                controls.no_store = true;
            }
        }
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for directive in text.split(',').map(str::trim) {
                let (name, arg) = directive.split_once('=').unwrap_or((directive, ""));
                match name.trim().to_ascii_lowercase().as_str() {
                    "no-cache" => controls.no_cache = true,
                    "no-store" => controls.no_store = true,
                    "max-age" => {
                        if let Ok(secs) = arg.trim().parse::<u64>() {
                            controls.max_age = Some(Duration::from_secs(secs));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(controls)
    }
}

/// A request the cache could not answer, to store its answer under.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    key: CacheKey,
    ttl: Duration,
    semantic: Option<(String, Arc<[f32]>, String)>,
    store: bool,
    /// The request is for embeddings (answered with `data`, not `choices`).
    embeddings: bool,
}

impl Pending {
    /// Whether the answer is to be stored at all (not `no-store`).
    pub(crate) fn stores(&self) -> bool {
        self.store
    }

    /// The shape a JSON answer to this request has, for [`keepable`].
    pub(crate) fn json_shape(&self) -> Shape {
        if self.embeddings {
            Shape::Embeddings
        } else {
            Shape::Completion
        }
    }
}

/// The cache's verdict on a request.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A stored answer; `similarity` for a semantic hit.
    Hit {
        answer: Arc<CachedAnswer>,
        similarity: Option<f32>,
    },
    /// Nothing usable stored.
    Miss(Pending),
}

/// Whether the cache keeps answers to `call` at all (chat, completions and
/// embeddings); other calls are not looked up, nor counted as bypassing it.
pub(crate) fn applies(call: &Call<'_>) -> bool {
    endpoint(call).is_some()
}

/// The endpoint name keys are made under; `None` for requests not cached.
fn endpoint(call: &Call<'_>) -> Option<&'static str> {
    match call {
        Call::Chat(_) => Some("chat"),
        Call::Completion(_) => Some("completions"),
        Call::Embeddings(_) => Some("embeddings"),
        _ => None,
    }
}

fn body_of(call: &Call<'_>) -> Option<Value> {
    match call {
        Call::Chat(req) => serde_json::to_value(&**req).ok(),
        Call::Completion(req) => serde_json::to_value(&**req).ok(),
        Call::Embeddings(req) => serde_json::to_value(&**req).ok(),
        _ => None,
    }
}

/// Blanks the prompt text inside `messages` or `prompt`, keeping the rest:
/// plain strings, and the `text` of content parts. Whether a text was empty
/// is kept: an instruction and a question that changed places (a system
/// message's text moved into an empty user message) are not one prompt.
fn blank_text(value: &mut Value, depth: usize) {
    match value {
        Value::String(text) => {
            let blank = text.trim().is_empty();
            text.clear();
            if !blank {
                text.push('*');
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| blank_text(v, depth + 1)),
        // A message's `content`, or a content part's `text`.
        Value::Object(map) if depth < 4 => {
            for field in ["content", "text"] {
                if let Some(v) = map.get_mut(field) {
                    blank_text(v, depth + 1);
                }
            }
        }
        _ => {}
    }
}

/// The text a semantic lookup compares: a chat's last message when the
/// user wrote it (the messages before it must match exactly), or a text
/// completion's prompt. `None` when a chat ends otherwise (a tool's result,
/// an assistant's prefill): such a request is looked up exactly only.
fn semantic_text(call: &Call<'_>) -> Option<String> {
    match call {
        Call::Chat(req) => req
            .messages
            .last()
            .filter(|m| m.role == switchyard_api::chat::Role::User)
            .and_then(|m| m.content.as_ref())
            .map(|c| c.text()),
        Call::Completion(_) => call.query_text(),
        _ => None,
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl GatewayCache {
    /// Opens the configured store (Redis connects on first use).
    pub fn new(spec: &CacheSpec) -> Result<Self, switchyard_cache::CacheError> {
        let store = match &spec.store {
            StoreSpec::Memory(bytes) => ResponseCache::memory(*bytes),
            StoreSpec::Redis { url, prefix, timeout } => ResponseCache::redis(switchyard_cache::RedisCacheSettings {
                url: url.clone(),
                prefix: prefix.clone(),
                timeout: *timeout,
            })?,
        };
        Ok(Self {
            store,
            ttl: spec.ttl,
            max_ttl: spec.max_ttl,
            per_key: spec.per_key,
            hit_cost_ratio: spec.hit_cost_ratio,
            max_entry_bytes: spec.max_entry_bytes,
            semantic: spec
                .semantic
                .iter()
                .map(|(name, (sim, cap))| (name.clone(), Arc::new(SemanticIndex::new(*sim, *cap))))
                .collect(),
        })
    }

    /// Whether any group answers similar prompts (the embedder is needed).
    pub fn needs_embedder(spec: &CacheSpec) -> bool {
        !spec.semantic.is_empty()
    }

    /// The store, for its counters.
    pub fn store(&self) -> &ResponseCache {
        &self.store
    }

    /// Whether answers are kept in this process (no I/O to store one).
    pub(crate) fn is_local(&self) -> bool {
        self.store.backend_name() == "memory"
    }

    /// Looks `call` to `model` up; `None` when the cache does not apply.
    /// `learned` is, for a learned router's group, the caller's lists of
    /// the models it may reach, one string each (`None`: every model, or
    /// not a learned router): which candidate answers depends on them, so
    /// callers share answers only with callers of the same lists.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn lookup(
        &self,
        embedder: Option<&Arc<Embedder>>,
        model: &str,
        generation: &str,
        principal: &Principal,
        call: &Call<'_>,
        controls: Controls,
        learned: Option<&[String]>,
    ) -> Option<Lookup> {
        let endpoint = endpoint(call)?;
        if controls.no_cache && controls.no_store {
            return None;
        }
        let body = body_of(call)?;
        let scope = scope(self.per_key, learned, principal, controls.namespace.as_deref());
        // Answers belong to the deployments that made them: a reload that
        // points the model elsewhere starts it afresh.
        let keyed_model = format!("{model}\0{generation}");
        let key = exact_key(KeyParts {
            endpoint,
            model: &keyed_model,
            body: &body,
            scope: scope.as_deref(),
        });
        let semantic_index = self.semantic.get(model).filter(|_| endpoint != "embeddings");
        let mut pending = Pending {
            key,
            ttl: controls.ttl.unwrap_or(self.ttl).min(self.max_ttl),
            semantic: None,
            store: !controls.no_store,
            embeddings: endpoint == "embeddings",
        };
        let fresh = |answer: &CachedAnswer| {
            controls.max_age.is_none_or(|age| {
                now_ms().saturating_sub(answer.created_ms) <= i64::try_from(age.as_millis()).unwrap_or(i64::MAX)
            })
        };
        if !controls.no_cache
            && let Some(answer) = self.store.get(&pending.key).await.filter(|a| fresh(a))
        {
            return Some(Lookup::Hit {
                answer,
                similarity: None,
            });
        }
        // A batch of prompts is answered one choice per prompt, in order: a
        // similar batch (reordered, one prompt changed) would get answers
        // to other prompts. Batches are looked up exactly only.
        let batch = matches!(call, Call::Completion(req) if req.prompt.texts().len() > 1);
        // An echoed prompt is part of the answer: only the same prompt may
        // share it.
        let echo =
            matches!(call, Call::Completion(req) if req.extra.get("echo").is_some_and(|e| e.as_bool() == Some(true)));
        let batch = batch || echo;
        let text = semantic_text(call).filter(|t| !batch && !t.trim().is_empty());
        if let (Some(index), Some(embedder), Some(text)) = (semantic_index, embedder, text) {
            // Similar prompts must agree on everything but the question's
            // text: earlier messages word for word (a system prompt or a
            // tool's result changes the answer, and would weigh little in
            // one embedding of the whole), roles, images, tool calls.
            let mut params = body.clone();
            if let Value::Object(map) = &mut params {
                if let Some(Value::Array(messages)) = map.get_mut("messages")
                    && let Some(last) = messages.last_mut()
                {
                    blank_text(last, 1);
                }
                if let Some(prompt) = map.get_mut("prompt") {
                    blank_text(prompt, 0);
                }
            }
            let params = exact_key(KeyParts {
                endpoint,
                model: &keyed_model,
                body: &params,
                scope: scope.as_deref(),
            })
            .0;
            let embedder = embedder.clone();
            let (index, searched, no_cache) = (index.clone(), params.clone(), controls.no_cache);
            // A prompt longer than the embedder's window is embedded in part,
            // and one with characters its vocabulary lacks (emoji) embeds
            // them all as one unknown token: prompts that differ only there
            // would match, so such a prompt is looked up exactly only. The index's search waits for
            // its lock off the runtime's threads, as the embedding runs.
            let embedding = tokio::task::spawn_blocking(move || match embedder.sees_whole(&text) {
                Ok(true) => embedder.embed_one(&text).map(|embedding| {
                    let hits = if no_cache {
                        Vec::new()
                    } else {
                        index.lookup(&embedding, &searched)
                    };
                    Some((embedding, hits))
                }),
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            })
            .await;
            match embedding {
                Ok(Ok(None)) => tracing::debug!(
                    "prompt longer than the embedder's window, or with unknown tokens: no semantic lookup"
                ),
                Ok(Ok(Some((embedding, hits)))) => {
                    for hit in hits {
                        if let Some(answer) = self.store.peek(&hit.key).await.filter(|a| fresh(a)) {
                            return Some(Lookup::Hit {
                                answer,
                                similarity: Some(hit.similarity),
                            });
                        }
                    }
                    pending.semantic = Some((model.to_owned(), embedding, params));
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot embed the prompt for the semantic cache"),
                Err(e) => tracing::warn!(error = %e, "embedding task failed"),
            }
        }
        Some(Lookup::Miss(pending))
    }

    /// Whether an answer of `bytes` may be stored (`max_entry_bytes`),
    /// checked before the answer is read for [`keepable`].
    pub(crate) fn fits(&self, bytes: usize) -> bool {
        bytes <= self.max_entry_bytes
    }

    /// Stores a fresh answer (unless the client said `no-store`).
    pub(crate) async fn store_answer(&self, pending: &Pending, mut answer: CachedAnswer) {
        if !pending.store || answer.body.size() > self.max_entry_bytes {
            return;
        }
        answer.ttl_secs = pending.ttl.as_secs().max(1);
        answer.created_ms = now_ms();
        let stored = self.store.put(&pending.key, answer).await;
        if stored
            && let Some((group, embedding, params)) = &pending.semantic
            && let Some(index) = self.semantic.get(group)
        {
            // Inserting takes the index's write lock and may rebuild it:
            // off the runtime's threads.
            let (index, embedding, params, key) =
                (index.clone(), embedding.clone(), params.clone(), pending.key.clone());
            if let Err(e) = tokio::task::spawn_blocking(move || index.insert(&embedding, params, key)).await {
                tracing::warn!(error = %e, "the semantic index insert stopped");
            }
        }
    }
}

/// What besides the request keys an answer: the client's namespace, the caller's key with
/// `per_key`, and for a learned router's group the caller's model
/// allow-lists (a key allowed only some candidates is routed among those).
fn scope(per_key: bool, learned: Option<&[String]>, principal: &Principal, namespace: Option<&str>) -> Option<String> {
    let mut scope = String::new();
    if let Some(ns) = namespace {
        scope.push_str("ns\0");
        scope.push_str(ns);
        scope.push('\0');
    }
    let Some(view) = principal.view() else {
        return (!scope.is_empty()).then_some(scope);
    };
    if per_key {
        scope.push_str(&view.key.key_id);
    }
    if let Some(models) = learned {
        let mut models = models.to_vec();
        models.sort_unstable();
        models.dedup();
        scope.push_str("\0models");
        for m in models {
            scope.push('\0');
            scope.push_str(&m);
        }
    }
    (!scope.is_empty()).then_some(scope)
}

/// Marks a response as served from the cache or not.
pub(crate) fn mark(response: &mut Response, hit: bool, similarity: Option<f32>) {
    let headers = response.headers_mut();
    headers.insert(CACHE_HEADER, HeaderValue::from_static(if hit { "hit" } else { "miss" }));
    if let Some(sim) = similarity
        && let Ok(v) = HeaderValue::from_str(&format!("{sim:.4}"))
    {
        headers.insert(SIMILARITY_HEADER, v);
    }
}

/// A cached answer as a response: the JSON as stored, or the stream's
/// chunks replayed as server-sent events.
pub(crate) fn replay(answer: &CachedAnswer, strip_usage: bool) -> Response {
    match &answer.body {
        CachedBody::Json(text) => (
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::copy_from_slice(text.as_bytes()),
        )
            .into_response(),
        CachedBody::Chunks(chunks) => {
            let items: Vec<Result<StreamChunk, ProviderError>> = chunks
                .iter()
                .map(|data| {
                    let usage = serde_json::from_str::<Value>(data)
                        .ok()
                        .and_then(|v| v.get("usage").filter(|u| !u.is_null()).cloned())
                        .and_then(|u| serde_json::from_value(u).ok());
                    Ok(StreamChunk {
                        data: Bytes::copy_from_slice(data.as_bytes()),
                        usage,
                    })
                })
                .collect();
            let chunks: ChunkStream = Box::pin(stream::iter(items));
            crate::stream::sse_response(chunks, answer.deployment.clone(), strip_usage)
        }
    }
}

/// The part of an answer (or of a stream's chunk) that says whether it may
/// be kept.
#[derive(serde::Deserialize)]
struct Finishes {
    #[serde(default)]
    choices: Option<Vec<Finish>>,
    #[serde(default)]
    data: Option<Vec<serde::de::IgnoredAny>>,
}

/// What an answer judged by [`keepable`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A chat or text completion's JSON: `choices`.
    Completion,
    /// An embeddings answer's JSON: `data`.
    Embeddings,
    /// A stream's chunks.
    Stream,
}

#[derive(serde::Deserialize)]
struct Finish {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    finish_reason: Option<String>,
}

/// Finish reasons of answers that did not end as the model meant:
/// the content filter's (Azure answers 200 with it), and a generation that
/// failed or was stopped part-way (OpenRouter's `error`, vLLM's `abort`).
const UNKEPT_FINISHES: [&str; 3] = ["content_filter", "error", "abort"];

/// Whether a choice's finish reason says it ended as the model meant.
fn finished(reason: Option<&str>) -> bool {
    reason.is_some_and(|r| !r.is_empty() && !UNKEPT_FINISHES.contains(&r))
}

/// Whether an answer may be kept for later callers: every choice ended as
/// the model meant (a finish reason, not one of [`UNKEPT_FINISHES`]; a
/// stream's choices each got one), and it answered something — not a
/// completion without a choice, embeddings without a vector, or a 200 that
/// is an error in another shape (vLLM's `{"object": "error", …}`). `parts`
/// are the JSON body, or a stream's chunks (whose usage chunk has no choice).
pub(crate) fn keepable<'a>(parts: impl IntoIterator<Item = &'a [u8]>, shape: Shape) -> bool {
    let stream = shape == Shape::Stream;
    // A stream's choices by index: whether each has finished.
    let mut streamed = std::collections::BTreeMap::<u64, bool>::new();
    let clean = parts
        .into_iter()
        .all(|part| match serde_json::from_slice::<Finishes>(part) {
            Ok(Finishes { data, .. }) if shape == Shape::Embeddings => data.is_some_and(|d| !d.is_empty()),
            Ok(Finishes {
                choices: Some(choices), ..
            }) if stream => choices.iter().all(|c| {
                let done = streamed.entry(c.index.unwrap_or(0)).or_insert(false);
                // Some relays send `""` on the chunks before the last.
                match c.finish_reason.as_deref().filter(|r| !r.is_empty()) {
                    None => true,
                    reason => {
                        *done = finished(reason);
                        *done
                    }
                }
            }),
            Ok(Finishes {
                choices: Some(choices), ..
            }) => !choices.is_empty() && choices.iter().all(|c| finished(c.finish_reason.as_deref())),
            // A stream's usage chunk; a completion without `choices` is not one.
            Ok(Finishes { choices: None, .. }) => stream,
            Err(_) => false,
        });
    // A stream needs a choice (one of usage alone, or of a prompt filter's
    // verdict, answered nothing), and each of its choices must have ended:
    // one that did not was cut short, though the stream closed cleanly.
    clean && (!stream || (!streamed.is_empty() && streamed.values().all(|done| *done)))
}

/// Follows a stream and hands its chunks to `done` once it ended cleanly,
/// unless they came to more than `limit` bytes: then it stops recording and
/// lets the stream go on alone.
pub(crate) fn record_stream(
    chunks: ChunkStream,
    limit: usize,
    done: impl FnOnce(Vec<String>) + Send + 'static,
) -> ChunkStream {
    let state = (chunks, Vec::<String>::new(), 0usize, Some(done));
    Box::pin(stream::unfold(
        state,
        move |(mut chunks, mut seen, mut size, mut done)| async move {
            match chunks.next().await {
                Some(Ok(chunk)) => {
                    if done.is_some() {
                        size = size.saturating_add(chunk.data.len() + CHUNK_OVERHEAD);
                        if size > limit {
                            done = None;
                            seen = Vec::new();
                        } else {
                            seen.push(String::from_utf8_lossy(&chunk.data).into_owned());
                        }
                    }
                    Some((Ok(chunk), (chunks, seen, size, done)))
                }
                Some(Err(e)) => Some((Err(e), (chunks, Vec::new(), 0, None))),
                None => {
                    if let Some(done) = done.take() {
                        done(std::mem::take(&mut seen));
                    }
                    None
                }
            }
        },
    ))
}

/// What a stored chunk counts for beyond its bytes (as the store weighs it).
const CHUNK_OVERHEAD: usize = 8;

/// The usage a recorded stream reported: its last that counts anything (an
/// all-zero usage, which some servers put in every chunk, is no count, as
/// when the stream was charged).
pub(crate) fn stream_usage(seen: &[String]) -> Option<switchyard_api::Usage> {
    seen.iter().rev().find_map(|c| {
        let v: Value = serde_json::from_str(c).ok()?;
        let usage = serde_json::from_value::<switchyard_api::Usage>(v.get("usage")?.clone()).ok()?;
        (usage.prompt_tokens > 0 || usage.completion_tokens > 0 || usage.total_tokens > 0).then_some(usage)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream whose chunks carry zeros only reported no usage: it is
    /// stored at what it was charged, not as free.
    #[test]
    fn a_recorded_streams_zero_usage_is_no_count() {
        let chunk = |usage: Value| serde_json::json!({"choices": [], "usage": usage}).to_string();
        let zeros = serde_json::json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0});
        assert_eq!(stream_usage(&[chunk(zeros.clone()), chunk(zeros.clone())]), None);
        let real = serde_json::json!({"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13});
        let found = stream_usage(&[chunk(real), chunk(zeros)]).map(|u| u.completion_tokens);
        assert_eq!(found, Some(4));
    }

    /// The semantic cache's parameters keep a prompt's shape, not its text:
    /// which messages (and parts) hold any.
    #[test]
    fn blanked_prompts_keep_which_messages_hold_text() {
        let blanked = |messages: Value| {
            let mut messages = messages;
            blank_text(&mut messages, 0);
            messages
        };
        let a = blanked(serde_json::json!([{"role": "system", "content": ""}, {"role": "user", "content": "Q"}]));
        let b = blanked(serde_json::json!([{"role": "system", "content": "Q"}, {"role": "user", "content": ""}]));
        assert_ne!(a, b);
        let c = blanked(serde_json::json!([{"role": "system", "content": "  "}, {"role": "user", "content": "other"}]));
        assert_eq!(a, c);
        let parts = blanked(serde_json::json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]));
        assert_eq!(
            parts,
            serde_json::json!([{"role": "user", "content": [{"type": "text", "text": "*"}]}])
        );
    }

    #[test]
    fn filtered_and_empty_answers_are_not_kept() {
        let body = |s: &'static str| std::iter::once(s.as_bytes());
        assert!(keepable(
            body(r#"{"choices":[{"finish_reason":"stop","content_filter_results":{}}]}"#),
            Shape::Completion
        ));
        assert!(keepable(
            body(r#"{"object":"list","data":[{"embedding":[0.1]}]}"#),
            Shape::Embeddings
        ));
        // A 200 that answered nothing: an error in another shape, an empty body.
        for nothing in [r#"{"object":"error","message":"x","code":400}"#, "{}"] {
            assert!(!keepable(body(nothing), Shape::Completion), "{nothing}");
            assert!(!keepable(body(nothing), Shape::Embeddings), "{nothing}");
        }
        assert!(!keepable(body(r#"{"object":"list","data":[]}"#), Shape::Embeddings));
        assert!(!keepable(
            body(r#"{"choices":[{"finish_reason":"content_filter"}]}"#),
            Shape::Completion
        ));
        assert!(!keepable(body(r#"{"choices":[]}"#), Shape::Completion));
        // A generation that failed or was stopped part-way.
        for reason in ["error", "abort"] {
            let failed = format!(
                r#"{{"choices":[{{"index":0,"finish_reason":"stop"}},{{"index":1,"finish_reason":"{reason}"}}]}}"#
            );
            assert!(
                !keepable(std::iter::once(failed.as_bytes()), Shape::Completion),
                "{reason}"
            );
        }
        assert!(!keepable(
            body(r#"{"choices":[{"finish_reason":null}]}"#),
            Shape::Completion
        ));
        assert!(!keepable(
            body(r#"{"choices":[{"finish_reason":""}]}"#),
            Shape::Completion
        ));
        let relayed = [
            r#"{"choices":[{"delta":{"content":"a"},"finish_reason":""}]}"#.as_bytes(),
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#.as_bytes(),
        ];
        assert!(keepable(relayed, Shape::Stream));
        assert!(!keepable(relayed[..1].iter().copied(), Shape::Stream));
        let chunks = [
            r#"{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#.as_bytes(),
            r#"{"choices":[{"index":1,"delta":{"content":"b"},"finish_reason":null}]}"#.as_bytes(),
            r#"{"choices":[{"index":1,"delta":{},"finish_reason":"length"}]}"#.as_bytes(),
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#.as_bytes(),
            r#"{"choices":[],"usage":{"prompt_tokens":1}}"#.as_bytes(),
        ];
        assert!(keepable(chunks, Shape::Stream));
        // A stream that closed cleanly with a choice that never finished was
        // cut short.
        assert!(!keepable(chunks[..3].iter().copied(), Shape::Stream));
        let unfinished = [
            r#"{"choices":[{"delta":{"content":"a"},"finish_reason":null}]}"#.as_bytes(),
            r#"{"choices":[],"usage":{"prompt_tokens":1}}"#.as_bytes(),
        ];
        assert!(!keepable(unfinished, Shape::Stream));
        let failed = [
            r#"{"choices":[{"delta":{"content":"a"},"finish_reason":null}]}"#.as_bytes(),
            r#"{"choices":[{"delta":{},"finish_reason":"error"}]}"#.as_bytes(),
        ];
        assert!(!keepable(failed, Shape::Stream));
        let cut = [
            r#"{"choices":[{"delta":{"content":"a"},"finish_reason":null}]}"#.as_bytes(),
            r#"{"choices":[{"delta":{},"finish_reason":"content_filter"}]}"#.as_bytes(),
        ];
        assert!(!keepable(cut, Shape::Stream));
        // A stream of usage alone answered nothing.
        let empty = [r#"{"choices":[],"usage":{"prompt_tokens":1}}"#.as_bytes()];
        assert!(!keepable(empty, Shape::Stream));
    }

    #[test]
    fn controls_come_from_the_body_and_cache_control() {
        let mut extra: Extra =
            serde_json::from_str(r#"{"cache":{"no-cache":true,"ttl":600},"temperature":0}"#).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, max-age=30"));
        let c = Controls::take(&mut extra, &headers).unwrap();
        assert!(c.no_cache && c.no_store);
        assert_eq!(c.ttl, Some(Duration::from_secs(600)));
        assert_eq!(c.max_age, Some(Duration::from_secs(30)));
        assert!(!extra.contains_key("cache"));
        // LiteLLM's opt-in: `true` changes nothing, `false` bypasses; `null` is none.
        for (body, bypass) in [
            (r#"{"cache":{"use-cache":true}}"#, false),
            (r#"{"cache":{"use_cache":false}}"#, true),
            (
                r#"{"cache":{"use-cache":false,"no-store":false,"no-cache":false}}"#,
                true,
            ),
            (r#"{"cache":null}"#, false),
        ] {
            let mut extra: Extra = serde_json::from_str(body).unwrap();
            let c = Controls::take(&mut extra, &HeaderMap::new()).unwrap();
            assert_eq!((c.no_cache, c.no_store), (bypass, bypass), "{body}");
            assert!(extra.is_empty(), "{body}");
        }
        for (body, param) in [
            (r#"{"cache":true}"#, "cache"),
            (r#"{"cache":{"ttl":"x"}}"#, "cache.ttl"),
            (r#"{"cache":{"no-cache":1}}"#, "cache.no-cache"),
            (r#"{"cache":{"bogus":1}}"#, "cache.bogus"),
            (r#"{"cache":{"use-cache":"yes"}}"#, "cache.use-cache"),
        ] {
            let mut extra: Extra = serde_json::from_str(body).unwrap();
            let err = Controls::take(&mut extra, &HeaderMap::new()).unwrap_err();
            assert_eq!(err.parts().2.as_deref(), Some(param), "{body}");
        }
    }
}
