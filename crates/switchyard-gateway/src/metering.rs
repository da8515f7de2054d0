//! The policy's side of a request: who is calling (the authentication
//! middleware), admission before dispatch (limits and the budget
//! reservation), and the charge once the answer's usage is known.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use switchyard_api::Usage;
use switchyard_policy::{Charge, Demand, Principal, SpendRecord, Ticket, TokenUsage, format_usd};
use switchyard_providers::reasoning::Thinkers;
use switchyard_routing::DeploymentId;

use crate::dispatch::Call;
use crate::error::ApiError;
use crate::messages::AnthropicError;
use crate::routes::SharedState;
use crate::state::AppState;

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-switchyard-request-id");
const COST_HEADER: HeaderName = HeaderName::from_static("x-switchyard-response-cost");

/// Admits a request that has no price (a pass-through route, feedback)
/// against `principal`'s limits, `model` standing for what it calls: a
/// request per minute, one in flight, nothing reserved, and a spent budget
/// refuses it. `any_model`: it calls no model (feedback), and the key's
/// model lists do not apply. On a task of its own: a client that leaves
/// while the store is still admitting it must not leave the holds taken
/// there without a ticket to give them back (the ticket of an admission
/// nobody waits for any more is dropped, which releases them).
pub(crate) async fn admit_unpriced(
    state: &AppState,
    principal: &Principal,
    (model, any_model): (String, bool),
    request_id: Option<String>,
) -> Result<Ticket, ApiError> {
    let demand = Demand {
        model,
        requested_as: None,
        access_groups: Vec::new(),
        end_user: None,
        estimated_tokens: 0,
        max_cost: 0,
        unpriced: false,
        any_model,
        request_id,
    };
    let policy = state.policy.clone();
    let principal = principal.clone();
    match tokio::spawn(async move { policy.admit(&principal, &demand).await }).await {
        Ok(Ok(ticket)) => Ok(ticket),
        Ok(Err(denied)) => {
            count_refusal(state, &denied);
            Err(ApiError::Denied(denied))
        }
        Err(e) => Err(ApiError::Internal(format!("the admission task stopped: {e}"))),
    }
}

/// Counts a refused admission in `switchyard_rate_limited_total`, by reason.
fn count_refusal(state: &AppState, denied: &switchyard_policy::Denied) {
    let reason = match denied {
        switchyard_policy::Denied::RateLimited { .. } => "rate_limit",
        switchyard_policy::Denied::TooManyParallel { .. } => "parallel_limit",
        switchyard_policy::Denied::BudgetExceeded { .. } => "budget",
        switchyard_policy::Denied::Unavailable => "store_unavailable",
        _ => return,
    };
    state.metrics.refused(reason);
}

/// The key a client sent: `x-litellm-api-key` (for clients whose
/// `Authorization` carries something else, as LiteLLM allows), else
/// `Authorization: Bearer`, `x-api-key` (Anthropic clients), `api-key`
/// (Azure clients) or `x-goog-api-key` (Google's SDKs). The `Bearer` scheme is matched in any case; a header
/// left empty (a template's unset variable) says nothing, and the next one
/// is read.
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    [
        "x-litellm-api-key",
        "authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
    ]
    .iter()
    .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()).and_then(token_of))
}

/// A header's token: without a `Bearer` scheme, trimmed; `None` when empty.
fn token_of(value: &str) -> Option<&str> {
    let value = value.trim();
    let token = match value.get(..6) {
        Some(scheme)
            if scheme.eq_ignore_ascii_case("bearer") && value[6..].chars().next().is_none_or(char::is_whitespace) =>
        {
            value[6..].trim()
        }
        _ => value,
    };
    (!token.is_empty()).then_some(token)
}

/// Renders an error for the route's clients: Anthropic-shaped on
/// `/messages`, and on `/models` for clients that send `anthropic-version`.
pub(crate) fn error_for(path: &str, headers: &HeaderMap, error: ApiError) -> Response {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let anthropic_models =
        (path == "/models" || path.starts_with("/models/")) && headers.contains_key("anthropic-version");
    if path == "/messages" || path.starts_with("/messages/") || anthropic_models {
        AnthropicError(error).into_response()
    } else {
        error.into_response()
    }
}

/// Middleware on client routes: authenticates the caller and hands the
/// [`Principal`] to the handler.
pub(crate) async fn authenticate(State(state): State<SharedState>, mut request: Request, next: Next) -> Response {
    let token = presented_key(request.headers()).map(str::to_owned);
    match state.policy.authenticate(token.as_deref()).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(denied) => error_for(request.uri().path(), request.headers(), ApiError::Denied(denied)),
    }
}

tokio::task_local! {
    /// The `server.max_concurrent_requests` slot of the request being
    /// handled, for [`crate::routes::detached`] to keep while the request's
    /// own task runs (after its client left, too).
    pub(crate) static REQUEST_SLOT: std::sync::Arc<tokio::sync::OwnedSemaphorePermit>;
}

/// Middleware on client routes, outside authentication so that an
/// overloaded gateway sheds before doing any work: holds one of
/// `server.max_concurrent_requests` slots until the answer starts (and the
/// request's own task ends), or answers 429 when none is free.
pub(crate) async fn limit_concurrency(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let Some(slots) = &state.request_slots else {
        return next.run(request).await;
    };
    match slots.clone().try_acquire_owned() {
        Ok(slot) => REQUEST_SLOT.scope(std::sync::Arc::new(slot), next.run(request)).await,
        Err(_) => error_for(
            request.uri().path(),
            request.headers(),
            ApiError::Overloaded(state.server.max_concurrent_requests),
        ),
    }
}

/// Middleware on admin routes: only the master key passes.
pub(crate) async fn require_master(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    match master_only(&state, request.headers()).await {
        Ok(()) => next.run(request).await,
        Err(refused) => refused,
    }
}

/// Whether `headers` present the master key; the refusal to send when not.
pub(crate) async fn master_only(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    if !state.policy.has_master_key() {
        return Err(ApiError::Forbidden(
            "The admin API needs a master key: set policy.master_key or SWITCHYARD_MASTER_KEY.".into(),
        )
        .into_response());
    }
    match presented_key(headers) {
        Some(token) if state.policy.is_master(token) => Ok(()),
        // A key the gateway does not know is a wrong credential (401); a
        // virtual key it knows has no admin rights (403).
        Some(token) => Err(match state.policy.authenticate(Some(token)).await {
            Ok(_) => ApiError::Forbidden("The admin API needs the master key.".into()).into_response(),
            Err(denied) => ApiError::Denied(denied).into_response(),
        }),
        None => Err(ApiError::Denied(switchyard_policy::Denied::MissingKey).into_response()),
    }
}

/// Middleware on read-only admin routes: the master key's when the gateway
/// has one; any valid key's when it has only configured keys; open when it
/// has neither (no route needs a key then).
pub(crate) async fn require_master_if_set(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    if state.policy.has_master_key() {
        require_master(State(state), request, next).await
    } else if state.policy.auth_required() {
        authenticate(State(state), request, next).await
    } else {
        next.run(request).await
    }
}

/// The most output tokens a request can produce: its `max_tokens` (or the
/// default) for each answer it asks for (`n`, `best_of`, one per prompt).
fn max_output(call: &Call<'_>, default: u32, may_think: bool, thinkers: Thinkers) -> u64 {
    // The larger of the limits it sets (a server may read either one:
    // vLLM takes `max_completion_tokens`, or `max_tokens` when that is 0);
    // 0 when that is all it sets (a prompt scored, nothing written).
    let from = |extra: &serde_json::Map<String, Value>, names: &[&str]| {
        names.iter().filter_map(|n| extra.get(*n).and_then(Value::as_u64)).max()
    };
    let answers = |extra: &serde_json::Map<String, Value>, names: &[&str]| {
        names
            .iter()
            .filter_map(|n| extra.get(*n).and_then(Value::as_u64))
            .max()
            .unwrap_or(1)
            .max(1)
    };
    match call {
        // A request that asks for reasoning, to a model an Anthropic or
        // Bedrock deployment may answer, may be given room for Claude's
        // thinking budget on top of its own limit.
        Call::Chat(req) => {
            let limit = from(&req.extra, &["max_completion_tokens", "max_tokens"]).unwrap_or(u64::from(default));
            // The group's Claude models think unasked whatever name the
            // request used (a group, an alias), as does the model it names.
            let limit = if may_think {
                let thinkers = thinkers.or(Thinkers::of(&req.model));
                switchyard_providers::reasoning::output_ceiling_for(req, limit, thinkers)
            } else {
                limit
            };
            limit.saturating_mul(answers(&req.extra, &["n"]))
        }
        Call::Completion(req) => from(&req.extra, &["max_tokens"])
            .unwrap_or(u64::from(default))
            .saturating_mul(answers(&req.extra, &["n", "best_of"]))
            .saturating_mul(prompt_count(&req.prompt)),
        Call::Messages(req) => req.max_tokens.map_or(u64::from(default), u64::from),
        // A GPT image model's output tokens at its highest quality, per image.
        Call::Images(req) => IMAGE_TOKENS.saturating_mul(req.count()),
        Call::ImageEdit(req) => IMAGE_TOKENS.saturating_mul(req.count()),
        Call::Embeddings(_)
        | Call::CountTokens(..)
        | Call::Moderations(_)
        | Call::Speech(_)
        | Call::Transcription(_)
        | Call::Rerank(_) => 0,
    }
}

/// A rerank pair's tokens beyond the query and the document (separators).
const RERANK_PAIR_BYTES: u64 = 8;

/// The most output tokens a GPT image model bills for one image (a large
/// image at `high` quality is 6,240).
pub(crate) const IMAGE_TOKENS: u64 = 6_240;

/// The most prompt tokens an image edit's files may bill: each image and
/// the mask at [`IMAGE_TOKENS`] (more than a GPT image model bills for an
/// input image at high fidelity).
pub(crate) fn edit_image_tokens(req: &switchyard_providers::ImageEditRequest) -> u64 {
    IMAGE_TOKENS.saturating_mul(req.files.len() as u64)
}

fn prompt_count(prompt: &switchyard_api::Prompt) -> u64 {
    match prompt {
        switchyard_api::Prompt::Texts(t) => t.len().max(1) as u64,
        switchyard_api::Prompt::TokenBatches(b) => b.len().max(1) as u64,
        _ => 1,
    }
}

/// What an image (or other media given by reference) may take in prompt
/// tokens whatever its size in the request: the providers' largest image
/// costs are about 1,600–2,500 tokens.
const MEDIA_TOKENS: u64 = 2_500;

/// Chat content parts that hold text, not media, without a `text` member.
const TEXT_PARTS: &[&str] = &["text", "refusal", "thinking", "reasoning", "redacted_thinking"];

/// The length of `value` as JSON, counted as it is written, without a copy
/// (for the small typed parts: tool definitions and calls).
fn json_len(value: &impl serde::Serialize) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len() as u64);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => 0,
    }
}

/// About the length of a JSON value, from its strings' lengths and its
/// shape, without writing it: a part holding megabytes of base64 costs no
/// more to measure than a short one. Escapes are not counted (they add
/// bytes, not tokens).
fn value_len(value: &Value) -> u64 {
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(s) => s.len() as u64 + 2,
        Value::Array(items) => items.iter().fold(2, |n, v| n.saturating_add(value_len(v) + 1)),
        Value::Object(map) => map.iter().fold(2, |n, (k, v)| {
            n.saturating_add(k.len() as u64 + 4).saturating_add(value_len(v))
        }),
    }
}

/// A moderation's text, and [`MEDIA_TOKENS`] per image part (whatever
/// the size of its URL or data).
fn moderation_bytes(input: &Value) -> u64 {
    let item = |item: &Value| match item {
        Value::String(s) => s.len() as u64,
        Value::Object(part) => part
            .get("text")
            .and_then(Value::as_str)
            .map_or(MEDIA_TOKENS, |t| t.len() as u64),
        _ => 0,
    };
    match input {
        Value::Array(items) => items.iter().map(item).sum(),
        other => item(other),
    }
}

/// What a message adds to the prompt besides its content (the role and
/// the framing around it, which upstreams bill as a few tokens), as bytes.
const MESSAGE_BYTES: u64 = 16;

/// What offering tools adds to the prompt besides their definitions (the
/// tool-use instructions Anthropic puts in the system prompt, a few hundred
/// tokens), as bytes.
const TOOL_USE_BYTES: u64 = 400;

/// A request's prompt as sized before it is sent.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct PromptSize {
    /// An upper bound on its tokens: its bytes of text (a token is at
    /// least one byte), tool definitions and calls, tool results and
    /// structured-output schemas as JSON, reasoning sent back, a few tokens
    /// per message and for offering tools, and [`MEDIA_TOKENS`] per image.
    pub bound: u64,
    /// The part of `bound` that is inline audio, files and documents
    /// (base64, whose bytes are many times their tokens).
    pub media: u64,
    /// How many such parts there are.
    pub media_parts: u64,
}

impl PromptSize {
    fn add(&mut self, n: u64) {
        self.bound = self.bound.saturating_add(n);
    }

    fn add_media(&mut self, n: u64) {
        self.add(n);
        self.media = self.media.saturating_add(n);
        self.media_parts = self.media_parts.saturating_add(1);
    }

    /// The prompt tokens to expect (for rate limits and usage estimates):
    /// about four bytes a token, and [`MEDIA_TOKENS`] per inline audio,
    /// file or document, however long its base64.
    pub fn expected_tokens(self) -> u64 {
        self.bound
            .saturating_sub(self.media)
            .div_ceil(4)
            .saturating_add(self.media_parts.saturating_mul(MEDIA_TOKENS))
    }
}

/// The prompt tokens to expect of a request: see [`PromptSize::expected_tokens`].
pub(crate) fn expected_prompt_tokens(call: &Call<'_>) -> u64 {
    prompt_size(call).expected_tokens()
}

/// [`PromptSize`] of a request.
pub(crate) fn prompt_size(call: &Call<'_>) -> PromptSize {
    let mut size = PromptSize::default();
    let bound = match call {
        Call::Embeddings(req) => req.input.size_in_bytes(),
        Call::CountTokens(..) => 0,
        Call::Images(req) => req.prompt.len() as u64,
        Call::ImageEdit(req) => (req.field("prompt").map_or(0, str::len) as u64).saturating_add(edit_image_tokens(req)),
        Call::Moderations(req) => moderation_bytes(&req.input),
        // gpt-4o-mini-tts bills its `instructions` as input text too.
        Call::Speech(req) => (req.input.len() as u64).saturating_add(
            req.extra
                .get("instructions")
                .and_then(Value::as_str)
                .map_or(0, |i| i.len() as u64),
        ),
        // Rerankers score each document with the query beside it.
        Call::Rerank(req) => {
            let pairs = (req.documents.len() as u64).saturating_mul(req.query.len() as u64 + RERANK_PAIR_BYTES);
            (req.size_in_bytes() as u64).saturating_add(pairs)
        }
        // The audio is not text: only a prompt given with it counts.
        Call::Transcription(req) => req.field("prompt").map_or(0, str::len) as u64,
        Call::Completion(req) => req.prompt.size_in_bytes(),
        Call::Chat(req) => {
            for m in &req.messages {
                size.add(MESSAGE_BYTES);
                match &m.content {
                    Some(switchyard_api::MessageContent::Text(t)) => size.add(t.len() as u64),
                    Some(switchyard_api::MessageContent::Parts(parts)) => {
                        for p in parts {
                            match &p.text {
                                Some(t) => size.add(t.len() as u64),
                                None if p.kind == "image_url" => size.add(MEDIA_TOKENS),
                                // Text under another name (a refusal sent
                                // back, Mistral's thinking, a null text).
                                None if TEXT_PARTS.contains(&p.kind.as_str()) => {
                                    size.add(p.extra.values().map(value_len).sum())
                                }
                                None => size.add_media(p.extra.values().map(value_len).sum()),
                            }
                        }
                    }
                    None => {}
                }
                if let Some(calls) = &m.tool_calls {
                    size.add(json_len(calls));
                }
                for text in [&m.name, &m.tool_call_id].into_iter().flatten() {
                    size.add(text.len() as u64);
                }
                // Reasoning sent back (`reasoning_content`, Claude's
                // `thinking_blocks`) and any other field of the message.
                size.add(m.extra.values().map(value_len).sum());
            }
            for name in ["tools", "functions", "response_format"] {
                if let Some(v) = req.extra.get(name) {
                    size.add(value_len(v));
                }
            }
            if ["tools", "functions"].iter().any(|name| {
                req.extra
                    .get(*name)
                    .is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
            }) {
                size.add(TOOL_USE_BYTES);
            }
            0
        }
        Call::Messages(req) => {
            if let Some(system) = &req.system {
                content_size(system, &mut size);
            }
            if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
                size.add(json_len(tools).saturating_add(TOOL_USE_BYTES));
            }
            for m in &req.messages {
                size.add(MESSAGE_BYTES);
                content_size(&m.content, &mut size);
            }
            0
        }
    };
    size.add(bound);
    size
}

/// Adds Anthropic content to `size`, tool results' content included.
fn content_size(content: &switchyard_api::anthropic::Content, size: &mut PromptSize) {
    use switchyard_api::anthropic::Content;
    match content {
        Content::Text(t) => size.add(t.len() as u64),
        Content::Other(o) => size.add(json_len(o)),
        Content::Blocks(blocks) => {
            for b in blocks {
                match (&b.text, b.kind.as_str()) {
                    (Some(t), _) => size.add(t.len() as u64),
                    (None, "image") => size.add(MEDIA_TOKENS),
                    (None, "document")
                        if b.source.as_ref().and_then(|s| s.get("type")).and_then(Value::as_str) == Some("base64") =>
                    {
                        size.add_media(b.source.as_ref().map_or(0, value_len));
                    }
                    (None, _) => size.add(b.source.as_ref().map_or(0, value_len)),
                }
                size.add(b.input.as_ref().map_or(0, value_len));
                // Thinking sent back (its text, a redacted block's data) and
                // the block's other fields.
                size.add(b.extra.values().map(value_len).sum());
                if let Some(nested) = &b.content {
                    content_size(nested, size);
                }
            }
        }
    }
}

/// Checks that the key may call every fallback model the request names,
/// and that each names a model group.
pub(crate) fn check_fallbacks(
    state: &AppState,
    principal: &Principal,
    fallbacks: Option<&[String]>,
) -> Result<(), ApiError> {
    // Whether the key may call each comes first: a key is not told which
    // names it may not call exist.
    if let Some(view) = principal.view()
        && let Some((i, name)) = fallbacks
            .unwrap_or_default()
            .iter()
            .enumerate()
            .find(|(_, name)| !state.allows(view, name))
    {
        return Err(ApiError::FallbackNotAllowed {
            param: format!("fallbacks[{i}]"),
            model: name.clone(),
        });
    }
    match fallbacks.and_then(|list| crate::dispatch::unknown_fallback(state, list)) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The end user and tags a request's records carry, noted in its
/// request-log record too (without the end user when
/// `policy.record_end_users` is off; the policy then names it on the spend
/// record only when it has a record).
pub(crate) fn take_labels(
    state: &AppState,
    options: &mut crate::dispatch::RequestOptions,
    trail: Option<&mut crate::observe::Trail>,
) -> switchyard_policy::Labels {
    let mut labels = std::mem::take(&mut options.labels);
    labels.tag_spend = state.track_tag_spend;
    // The end user still reaches admission (its record's block, limits
    // and budget hold); the policy leaves it out of the spend record.
    labels.hide_end_user = !state.record_end_users;
    if let Some(t) = trail {
        if labels.hide_end_user {
            let mut shown = labels.clone();
            shown.end_user = None;
            t.labels(&shown);
        } else {
            t.labels(&labels);
        }
    }
    labels
}

/// Admits a request to the model it names (`requested`, a group or an
/// alias of one): the key's model allow-list, its limits and its budget,
/// reserving the most the request can cost. The `fallbacks` the request
/// names must be models the key may call too, and their prices count in the
/// reservation.
pub(crate) async fn admit(
    state: &AppState,
    principal: &Principal,
    request_id: &str,
    requested: &str,
    call: &Call<'_>,
    fallbacks: Option<&[String]>,
    labels: switchyard_policy::Labels,
) -> Result<Metered, ApiError> {
    // Before the model is looked up: a key limited to some models gets the
    // same answer for one that exists and one that does not, so it cannot
    // list the others by trying names.
    if principal.view().is_some_and(|v| !state.allows(v, requested)) {
        return Err(ApiError::Denied(switchyard_policy::Denied::ModelNotAllowed {
            model: requested.to_owned(),
        }));
    }
    let model = state.group_name(requested);
    let mut ceiling = state
        .ceilings
        .get(model)
        .copied()
        .ok_or_else(|| ApiError::ModelNotFound(requested.to_owned()))?;
    // A model a wildcard group serves is priced as the model each of its
    // deployments sends.
    let wildcard_request = state.wildcard_part(requested).map(|_| requested.to_owned());
    let mut unpriced = false;
    if wildcard_request.is_some()
        && let Ok(group) = state.registry.group(model)
    {
        unpriced = true;
        for d in group.deployments() {
            let prices = state.prices_for(d.id, requested);
            unpriced &= prices == switchyard_policy::Prices::default();
            ceiling.prices = crate::state::max_prices(ceiling.prices, prices);
        }
    }
    check_fallbacks(state, principal, fallbacks)?;
    for name in fallbacks.unwrap_or_default() {
        if let Some(other) = state.ceilings.get(state.group_name(name)) {
            ceiling = ceiling.max(*other);
        }
    }
    let size = prompt_size(call);
    let bytes = size.bound;
    let estimated = size.expected_tokens().max(1);
    let demand = Demand {
        model: model.to_owned(),
        requested_as: (requested != model).then(|| requested.to_owned()),
        access_groups: state.access_groups.get(model).cloned().unwrap_or_default(),
        end_user: labels.end_user.clone(),
        unpriced,
        any_model: false,
        estimated_tokens: u32::try_from(estimated).unwrap_or(u32::MAX),
        // Without `max_tokens`, the most output the request may produce: the
        // policy's assumption, or what an Anthropic or Bedrock deployment
        // it may reach asks for, whichever is more.
        max_cost: ceiling
            .prices
            .ceiling(
                bytes.max(1),
                max_output(
                    call,
                    ceiling.default_output.unwrap_or(0).max(state.default_max_tokens),
                    ceiling.default_output.is_some(),
                    ceiling.thinkers,
                ),
            )
            .saturating_add(match call {
                // Images, speech and transcriptions priced per image,
                // character or second, on any deployment they may reach.
                Call::Images(_) | Call::ImageEdit(_) | Call::Speech(_) | Call::Transcription(_) | Call::Rerank(_) => {
                    let groups = std::iter::once(model).chain(fallbacks.unwrap_or_default().iter().map(String::as_str));
                    crate::media::media_ceiling(state, groups, call, requested)
                }
                _ => 0,
            }),
        request_id: Some(request_id.to_owned()),
    };
    let ticket = match state.policy.admit(principal, &demand).await {
        Ok(mut ticket) => {
            ticket.label(labels);
            ticket
        }
        Err(denied) => {
            count_refusal(state, &denied);
            return Err(ApiError::Denied(denied));
        }
    };
    Ok(Metered {
        ticket,
        estimated_prompt: estimated,
        wildcard_request,
    })
}

/// An admitted request waiting for its charge.
#[derive(Debug)]
pub(crate) struct Metered {
    /// The policy's hold on the request.
    pub(crate) ticket: Ticket,
    /// Estimated prompt tokens, charged when the upstream reports no usage.
    pub(crate) estimated_prompt: u64,
    /// The model asked for, when a wildcard group serves it: its unpriced
    /// wildcard deployments charge the built-in price of the model they send.
    pub(crate) wildcard_request: Option<String>,
}

/// OpenAI usage, normalised. Cache writes are read from
/// `prompt_tokens_details.cache_creation_tokens` (OpenRouter's
/// `cache_write_tokens`) or, as Anthropic's and
/// Bedrock's answers translated to OpenAI's format carry them, from
/// `cache_creation_input_tokens` (and its `cache_creation` breakdown).
pub(crate) fn openai_usage(usage: &Usage) -> TokenUsage {
    let cache_write = usage.cache_write_tokens();
    TokenUsage {
        prompt: usage.prompt_tokens,
        // Reasoning a server counted outside `completion_tokens` is output too.
        completion: usage.generated_tokens(),
        cache_read: usage.cached_prompt_tokens(),
        cache_write,
        cache_write_1h: hour_writes(usage.extra.get("cache_creation")),
        web_searches: 0,
    }
}

/// Output tokens of a chat or completion answer that reported no usage:
/// about one per four characters of what it generated (text, reasoning,
/// tool-call arguments), at least one per choice, so that an upstream that
/// leaves `usage` out does not make the output free.
pub(crate) fn output_estimate(body: &[u8]) -> u64 {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    let Some(choices) = answer.get("choices").and_then(Value::as_array) else {
        return 0;
    };
    let text_len = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.chars().count(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(|t| t.chars().count())
            .sum(),
        _ => 0,
    };
    choices
        .iter()
        .map(|choice| {
            let message = choice.get("message");
            let field = |name: &str| message.and_then(|m| m.get(name));
            let calls: usize = field("tool_calls")
                .and_then(Value::as_array)
                .map(|calls| {
                    calls
                        .iter()
                        .map(|c| text_len(c.get("function").and_then(|f| f.get("arguments"))))
                        .sum()
                })
                .unwrap_or(0);
            let chars = text_len(field("content"))
                + text_len(field("reasoning_content"))
                + text_len(field("reasoning"))
                + calls
                + text_len(choice.get("text"));
            (chars as u64).div_ceil(4).max(1)
        })
        .sum()
}

/// Output tokens of an Anthropic Messages answer that reported no usage:
/// about one per four characters of its text, thinking and tool inputs,
/// at least one. 0 for a body that is not such an answer.
pub(crate) fn anthropic_output_estimate(body: &[u8]) -> u64 {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    let Some(blocks) = answer.get("content").and_then(Value::as_array) else {
        return 0;
    };
    let chars: usize = blocks
        .iter()
        .map(|block| {
            let text = |name: &str| block.get(name).and_then(Value::as_str).map_or(0, |t| t.chars().count());
            text("text")
                + text("thinking")
                + block
                    .get("input")
                    .filter(|i| !i.is_null())
                    .map_or(0, |input| input.to_string().chars().count())
        })
        .sum();
    (chars as u64).div_ceil(4).max(1)
}

/// Tokens written to the prompt cache for an hour, from Anthropic's
/// `cache_creation` breakdown.
fn hour_writes(breakdown: Option<&Value>) -> u64 {
    breakdown
        .and_then(|c| c.get("ephemeral_1h_input_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Anthropic usage (`input_tokens` excludes cache reads and writes), normalised.
pub(crate) fn anthropic_usage(usage: &Value) -> TokenUsage {
    let n = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
    let (read, write) = (n("cache_read_input_tokens"), n("cache_creation_input_tokens"));
    TokenUsage {
        prompt: n("input_tokens").saturating_add(read).saturating_add(write),
        completion: n("output_tokens"),
        cache_read: read,
        cache_write: write,
        cache_write_1h: hour_writes(usage.get("cache_creation")),
        web_searches: usage
            .get("server_tool_use")
            .and_then(|s| s.get("web_search_requests"))
            .and_then(Value::as_u64)
            .unwrap_or(0),
    }
}

impl Metered {
    /// The prompt tokens estimated before the call.
    pub(crate) fn estimated_prompt(&self) -> u64 {
        self.estimated_prompt
    }

    /// Charges the request for `usage` on `deployment` (the estimate when
    /// `None`). The record is written before this returns.
    pub(crate) async fn settle(
        self,
        state: &AppState,
        deployment: DeploymentId,
        name: &str,
        usage: Option<TokenUsage>,
    ) -> Option<SpendRecord> {
        self.settle_with(state, deployment, name, usage, 0).await
    }

    /// [`Metered::settle`] with `extra` nano-dollars on top of the tokens'
    /// cost (generated images).
    pub(crate) async fn settle_with(
        self,
        state: &AppState,
        deployment: DeploymentId,
        name: &str,
        usage: Option<TokenUsage>,
        extra: switchyard_policy::Nanos,
    ) -> Option<SpendRecord> {
        let usage = usage.unwrap_or(TokenUsage {
            prompt: self.estimated_prompt,
            ..TokenUsage::default()
        });
        let cost = self
            .prices(state, deployment)
            .map_or(0, |p| p.cost(&usage))
            .saturating_add(extra);
        self.charge(
            state,
            Charge {
                deployment: name.to_owned(),
                usage,
                cost,
                cache_hit: false,
            },
        )
        .await
    }

    /// What `deployment` charges for this request: its own prices, or for
    /// an unpriced wildcard deployment the model asked for's.
    pub(crate) fn prices(&self, state: &AppState, deployment: DeploymentId) -> Option<switchyard_policy::Prices> {
        match &self.wildcard_request {
            Some(requested) => Some(state.prices_for(deployment, requested)),
            None => state.prices.get(deployment.0).copied(),
        }
    }

    /// Charges a request answered from the response cache `cost` (the
    /// original cost at the cache's rate).
    pub(crate) async fn settle_cached(
        self,
        state: &AppState,
        deployment: &str,
        usage: TokenUsage,
        cost: switchyard_policy::Nanos,
    ) -> Option<SpendRecord> {
        self.charge(
            state,
            Charge {
                deployment: deployment.to_owned(),
                usage,
                cost,
                cache_hit: true,
            },
        )
        .await
    }

    async fn charge(self, state: &AppState, charge: Charge) -> Option<SpendRecord> {
        let name = charge.deployment.clone();
        match state.policy.settle(self.ticket, charge).await {
            Ok(record) => {
                state.metrics.usage(
                    &record.model,
                    &record.deployment,
                    record.usage.prompt,
                    record.usage.completion,
                    record.cost_nanos,
                    record.cache_hit,
                );
                if let Some(key) = &record.key {
                    state.metrics.key_spend(
                        &switchyard_telemetry::key_ref(key),
                        record.key_alias.as_deref().unwrap_or_default(),
                        record.team_id.as_deref().unwrap_or_default(),
                        record.cost_nanos,
                    );
                }
                Some(record)
            }
            Err(e) => {
                tracing::error!(error = %e, deployment = %name, "cannot record spend");
                None
            }
        }
    }

    /// Adds the request id and rate-limit headers to a response.
    pub(crate) fn headers(&self, response: &mut Response) {
        add_ticket_headers(response, &self.ticket);
    }
}

/// Adds an admitted request's id and its key's `x-ratelimit-*` headers.
pub(crate) fn add_ticket_headers(response: &mut Response, ticket: &Ticket) {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(ticket.id()) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
    for (name, value) in ticket.rate_headers() {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(&value)) {
            headers.insert(n, v);
        }
    }
}

/// Adds the charge of a settled request to its response.
pub(crate) fn cost_header(response: &mut Response, record: Option<&SpendRecord>) {
    if let Some(record) = record
        && let Ok(v) = HeaderValue::from_str(&format_usd(record.cost_nanos))
    {
        response.headers_mut().insert(COST_HEADER, v);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use serde_json::json;
    use switchyard_api::anthropic::MessagesRequest;
    use switchyard_api::{ChatCompletionRequest, CompletionRequest};

    use super::*;

    #[test]
    fn an_answer_without_usage_is_charged_about_its_length() {
        let chat = json!({"choices": [
            {"message": {"content": "twelve chars", "tool_calls": [{"function": {"arguments": "{\"q\":1}"}}]}},
            {"message": {"content": null}}
        ]});
        // 12 + 7 characters: 5 tokens; the empty choice at least 1.
        assert_eq!(output_estimate(chat.to_string().as_bytes()), 6);
        let completion = json!({"choices": [{"text": "abcdefgh"}]});
        assert_eq!(output_estimate(completion.to_string().as_bytes()), 2);
        assert_eq!(output_estimate(b"{\"data\": []}"), 0);
        // An Anthropic answer: text, thinking and tool input.
        let message = json!({"type": "message", "content": [
            {"type": "thinking", "thinking": "abcd"},
            {"type": "text", "text": "twelve chars"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {"q": 1}}
        ]});
        // 4 + 12 + 7 characters: 6 tokens.
        assert_eq!(anthropic_output_estimate(message.to_string().as_bytes()), 6);
        assert_eq!(anthropic_output_estimate(br#"{"content": []}"#), 1);
        assert_eq!(anthropic_output_estimate(b"{}"), 0);
    }

    #[test]
    fn the_key_is_read_from_the_first_header_that_holds_one() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, axum::http::HeaderValue::from_static(value));
            }
            h
        };
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer sk-a")])),
            Some("sk-a")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "BEARER  sk-a ")])),
            Some("sk-a")
        );
        // An empty one says nothing: the next header is read.
        assert_eq!(
            presented_key(&headers(&[
                ("x-litellm-api-key", "Bearer "),
                ("authorization", "Bearer sk-b")
            ])),
            Some("sk-b")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer"), ("x-api-key", "sk-c")])),
            Some("sk-c")
        );
        assert_eq!(presented_key(&headers(&[("api-key", "sk-d")])), Some("sk-d"));
        assert_eq!(presented_key(&headers(&[("x-goog-api-key", "sk-g")])), Some("sk-g"));
        assert_eq!(presented_key(&headers(&[("authorization", "  ")])), None);
        // A key that merely starts with the word is a key.
        assert_eq!(
            presented_key(&headers(&[("x-api-key", "bearerish")])),
            Some("bearerish")
        );
    }

    #[test]
    fn value_lengths_are_close_to_the_json() {
        let value = json!({"type": "object", "properties": {"q": {"type": "string"}}, "n": [1, 2, true, null]});
        let exact = serde_json::to_vec(&value).unwrap().len() as u64;
        let estimate = value_len(&value);
        assert!(estimate >= exact && estimate <= 2 * exact, "{estimate} vs {exact}");
        assert_eq!(value_len(&json!("x".repeat(1000))), 1002);
    }

    #[test]
    fn every_answer_asked_for_is_reserved() {
        let mut chat: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m", "n": 3, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap();
        assert_eq!(max_output(&Call::Chat(&mut chat), 4096, false, Thinkers::default()), 30);
        let mut completion: CompletionRequest = serde_json::from_value(json!({
            "model": "m", "prompt": ["a", "b"], "best_of": 2, "n": 1, "max_tokens": 5
        }))
        .unwrap();
        assert_eq!(
            max_output(&Call::Completion(&mut completion), 4096, false, Thinkers::default()),
            20
        );
        let mut plain: ChatCompletionRequest =
            serde_json::from_value(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!(
            max_output(&Call::Chat(&mut plain), 4096, false, Thinkers::default()),
            4096
        );
        // Claude's thinking budget goes on top of a limit it does not fit in.
        let mut thinking: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 100, "reasoning_effort": "high", "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap();
        assert_eq!(
            max_output(&Call::Chat(&mut thinking), 4096, true, Thinkers::default()),
            4196
        );
        // A group no Anthropic or Bedrock deployment serves: the client's limit.
        assert_eq!(
            max_output(&Call::Chat(&mut thinking), 4096, false, Thinkers::default()),
            100
        );
        // A group (named `m` here) whose Claude model thinks unasked: its
        // thinking room is reserved though the request names no Claude model.
        let mut unasked: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "opus", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap();
        assert_eq!(
            max_output(&Call::Chat(&mut unasked), 4096, true, Thinkers::default()),
            100
        );
        let opus = Thinkers::of("claude-opus-5");
        assert!(opus.by_default);
        assert_eq!(max_output(&Call::Chat(&mut unasked), 4096, true, opus), 4196);
    }

    #[test]
    fn the_prompt_bound_counts_more_than_text() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        let calls = json!([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]);
        let mut chat: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m",
            "tools": tools,
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "hello"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "c1", "content": "result"}
            ]
        }))
        .unwrap();
        let expected = 5
            + MEDIA_TOKENS
            + json_len(&chat.messages[1].tool_calls)
            + 6
            + "c1".len() as u64
            + value_len(&tools)
            + 3 * MESSAGE_BYTES
            + TOOL_USE_BYTES;
        assert_eq!(prompt_size(&Call::Chat(&mut chat)).bound, expected);

        let mut messages: MessagesRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 5, "system": "sys",
            "messages": [
                {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"x": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                    "content": [{"type": "text", "text": "a long tool result"}]}]}
            ]
        }))
        .unwrap();
        let expected =
            3 + MEDIA_TOKENS + value_len(&json!({"x": 1})) + "a long tool result".len() as u64 + 3 * MESSAGE_BYTES;
        assert_eq!(prompt_size(&Call::Messages(&mut messages)).bound, expected);
    }

    /// Reasoning sent back counts toward the bound; inline audio, files and
    /// documents count by their bytes there, and as [`MEDIA_TOKENS`] each
    /// in the tokens expected (their base64 is many times their tokens).
    #[test]
    fn reasoning_counts_and_inline_media_is_expected_at_its_tokens() {
        let audio = "A".repeat(400_000);
        let mut chat: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]},
                {"role": "assistant", "content": "ok", "reasoning_content": "a long line of thought"}
            ]
        }))
        .unwrap();
        let size = prompt_size(&Call::Chat(&mut chat));
        assert!(size.bound > 400_000 + "a long line of thought".len() as u64, "{size:?}");
        assert_eq!(size.media_parts, 1);
        let text = size.bound - size.media;
        assert_eq!(size.expected_tokens(), text.div_ceil(4) + MEDIA_TOKENS);

        let pdf = "J".repeat(100_000);
        let mut messages: MessagesRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 5,
            "messages": [
                {"role": "user", "content": [{"type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "t".repeat(3000), "signature": "s"},
                    {"type": "text", "text": "ok"}]},
                {"role": "user", "content": "go on"}
            ]
        }))
        .unwrap();
        let size = prompt_size(&Call::Messages(&mut messages));
        assert!(size.bound > 103_000, "{size:?}");
        assert_eq!(size.media_parts, 1);
        assert!(size.bound - size.media > 3000, "{size:?}");
        assert!(size.expected_tokens() < 5_000, "{size:?}");
    }

    /// Parts that hold text under another name (a refusal sent back,
    /// Mistral's thinking, a null text) count as their text, not as media.
    #[test]
    fn text_parts_without_text_are_not_media() {
        let mut chat: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "tell me"},
                {"role": "assistant", "content": [
                    {"type": "refusal", "refusal": "I cannot help with that."},
                    {"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]},
                    {"type": "text", "text": null}]},
                {"role": "user", "content": "why"}
            ]
        }))
        .unwrap();
        let size = prompt_size(&Call::Chat(&mut chat));
        assert_eq!(size.media_parts, 0, "{size:?}");
        assert!(size.bound > "I cannot help with that.".len() as u64, "{size:?}");
        assert!(size.expected_tokens() < 100, "{size:?}");
    }
}
