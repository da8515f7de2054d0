//! The dispatch loop: routes a request to a deployment, and when the attempt
//! fails before any output reached the client, retries (with backoff, on
//! another deployment of the group when there is one) and then falls back to
//! other model groups.
//!
//! Order of events for one request:
//! 1. the requested group's strategy picks among the deployments whose circuit
//!    breaker lets them serve, preferring ones this request has not tried yet;
//! 2. a retryable failure (connect error, timeout, 408, 429, 5xx, a broken
//!    answer) is recorded, then — after a jittered exponential backoff, at
//!    least the `Retry-After` when the same deployment is tried again — the
//!    next attempt goes out, up to `num_retries` retries in the group;
//! 3. when the group is exhausted, the next fallback group is tried the same
//!    way: `context_window_fallbacks` after a "prompt too long" rejection,
//!    `content_policy_fallbacks` after a content-policy refusal, `fallbacks`
//!    after anything else retryable;
//! 4. other client errors (400, 401, 404…) go back to the client at once.
//!
//! A stream counts as answered when its first event arrives: until then
//! nothing has been sent to the client, so a failure can still move on.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tracing::Instrument as _;
use tracing::field::Empty;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use serde_json::Value;
use switchyard_api::anthropic::MessagesRequest;
use switchyard_api::{
    ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Extra, ImageGenerationRequest, ModerationRequest,
    RerankRequest, SpeechRequest,
};
use switchyard_providers::sse::EventStream;
use switchyard_providers::{
    BedrockProvider, ChunkStream, MediaResponse, Provider, ProviderClient, ProviderError, ProviderResponse,
    TimeoutPhase, TranscriptionRequest,
};
use switchyard_routing::{DeploymentInfo, Outcome, RouteContext, RoutingError, Wait};

use crate::error::ApiError;
use crate::learned::{Live, Prediction};
use crate::messages::translate;
use crate::routes::error_class;
use crate::state::{AppState, GroupRoute};

/// The gateway's own request fields, removed before the request goes upstream.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestOptions {
    /// Model groups to fall back to instead of the configured `fallbacks`.
    pub(crate) fallbacks: Option<Vec<String>>,
    /// Retries within a group, capped at `router_settings.max_num_retries`.
    pub(crate) num_retries: Option<u32>,
    /// Deadline of the request, capped at `router_settings.max_timeout_ms`.
    pub(crate) timeout: Option<Duration>,
    /// The models the caller's key may call (`None`: any): every list
    /// (the key's, its team's, its user's) allows them.
    pub(crate) allowed_models: Option<Vec<String>>,
    /// Each of those lists (`None`: none limits the models): a learned
    /// router chooses among the candidates every list allows, a list
    /// that names only the router allowing them all.
    pub(crate) allowed_lists: Option<Vec<Vec<String>>>,
    /// Where time spent waiting on upstreams is added up (for the overhead header).
    pub(crate) upstream_ns: Option<Arc<AtomicU64>>,
    /// The prompt's estimated tokens, when admission already worked them out.
    pub(crate) prompt_tokens: Option<u64>,
    /// The end user and tags its spend record carries.
    pub(crate) labels: switchyard_policy::Labels,
    /// What a wildcard group's `*` matched in the model asked for: its
    /// deployments' `*` is replaced by it.
    pub(crate) wildcard: Option<String>,
    /// The request's tags, when they choose deployments
    /// (`router_settings.enable_tag_filtering`).
    pub(crate) route_tags: Vec<String>,
}

/// The refusal of the first of a request's `fallbacks` (aliases resolved
/// or not) that names no model group: a name not configured, a learned
/// router or a wildcard group. Checked before a cached answer is looked
/// up, so a request is refused whether or not its answer is cached.
pub(crate) fn unknown_fallback(state: &AppState, fallbacks: &[String]) -> Option<ApiError> {
    let mut resolved = Some(fallbacks.to_vec());
    state.resolve_fallbacks(&mut resolved);
    let (i, name) = resolved
        .iter()
        .flatten()
        .enumerate()
        .find(|(_, n)| !state.routes.contains_key(*n) || n.contains('*'))?;
    let message = if state.learned.contains_key(name) {
        format!("`{name}` is a learned router; a fallback must be a model group.")
    } else if name.contains('*') {
        format!("`{name}` is a wildcard group; a fallback names one model group.")
    } else {
        format!("The fallback model `{name}` does not exist.")
    };
    Some(invalid(&format!("fallbacks[{i}]"), message))
}

fn invalid(param: &str, message: String) -> ApiError {
    ApiError::InvalidField {
        param: Some(param.to_owned()),
        message,
    }
}

/// Refuses an output limit or answer count that is not a whole number
/// (`"100000"`, `8.5`, `-2`): lenient servers take those, so the gateway
/// would reserve the default for a request that asks for far more.
/// `max_tokens: -1`, LM Studio's "no limit", is taken as no limit set.
fn check_counts(extra: &Extra) -> Result<(), ApiError> {
    for name in ["max_tokens", "max_completion_tokens", "n", "best_of"] {
        if let Some(value) = extra.get(name)
            && !value.is_null()
            && value.as_u64().is_none()
            && !(name == "max_tokens" && value.as_i64() == Some(-1))
        {
            return Err(invalid(name, format!("'{name}' must be a whole number of at least 0.")));
        }
    }
    Ok(())
}

impl RequestOptions {
    /// Takes `fallbacks`, `num_retries` and `timeout` (seconds) out of a
    /// request's unmodelled fields, after checking its output limits and
    /// answer counts ([`check_counts`]).
    pub(crate) fn take(extra: &mut Extra) -> Result<Self, ApiError> {
        let mut options = RequestOptions::default();
        check_counts(extra)?;
        // `null` is absent, as typed clients send an unset field.
        if let Some(value) = extra.shift_remove("fallbacks").filter(|v| !v.is_null()) {
            let Value::Array(items) = value else {
                return Err(invalid(
                    "fallbacks",
                    "'fallbacks' must be a list of model names.".into(),
                ));
            };
            let names = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(name) => Ok(name),
                    _ => Err(invalid(
                        &format!("fallbacks[{i}]"),
                        format!("'fallbacks[{i}]' must be a model name."),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            options.fallbacks = Some(names);
        }
        if let Some(value) = extra.shift_remove("num_retries").filter(|v| !v.is_null()) {
            let n = value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| invalid("num_retries", "'num_retries' must be a non-negative integer.".into()))?;
            options.num_retries = Some(n);
        }
        if let Some(value) = extra.shift_remove("timeout").filter(|v| !v.is_null()) {
            let seconds = value
                .as_f64()
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
                .ok_or_else(|| invalid("timeout", "'timeout' must be a positive number of seconds.".into()))?;
            options.timeout = Some(Duration::from_secs_f64(seconds));
        }
        Ok(options)
    }
}

/// One request, in whichever API it came.
pub(crate) enum Call<'r> {
    /// `POST /v1/chat/completions`.
    Chat(&'r mut ChatCompletionRequest),
    /// `POST /v1/completions`.
    Completion(&'r mut CompletionRequest),
    /// `POST /v1/embeddings`.
    Embeddings(&'r mut EmbeddingRequest),
    /// `POST /v1/messages`.
    Messages(&'r mut MessagesRequest),
    /// `POST /v1/messages/count_tokens`.
    CountTokens(&'r mut Value, &'r [String]),
    /// `POST /v1/images/generations`.
    Images(&'r mut ImageGenerationRequest),
    /// `/v1/images/edits`.
    ImageEdit(&'r mut switchyard_providers::ImageEditRequest),
    /// `POST /v1/moderations`.
    Moderations(&'r mut ModerationRequest),
    /// `POST /v1/audio/speech`.
    Speech(&'r mut SpeechRequest),
    /// `POST /v1/audio/transcriptions` and `/v1/audio/translations`.
    Transcription(&'r mut TranscriptionRequest),
    /// `POST /v1/rerank`.
    Rerank(&'r mut RerankRequest),
}

impl Call<'_> {
    /// The GenAI semantic conventions' operation name.
    pub(crate) fn operation(&self) -> &'static str {
        match self {
            Call::Chat(_) | Call::Messages(_) => "chat",
            Call::Completion(_) => "text_completion",
            Call::Embeddings(_) => "embeddings",
            Call::CountTokens(..) => "count_tokens",
            Call::Images(_) => "image_generation",
            Call::ImageEdit(_) => "image_edit",
            Call::Moderations(_) => "moderation",
            Call::Speech(_) => "text_to_speech",
            Call::Transcription(_) => "speech_to_text",
            Call::Rerank(_) => "rerank",
        }
    }

    /// Whether an upstream may well lack this operation's route, so that
    /// its 404 says so rather than that the deployment is misconfigured:
    /// every operation but chat (and Anthropic's messages) and embeddings.
    /// Anthropic-compatible servers often lack `/v1/messages/count_tokens`.
    pub(crate) fn may_lack_route(&self) -> bool {
        !matches!(self, Call::Chat(_) | Call::Messages(_) | Call::Embeddings(_))
    }

    /// The request's input as JSON, for `gen_ai.prompt` when spans capture
    /// content: a chat's messages, a message request's system and
    /// messages, a completion's prompt, an embedding's input.
    pub(crate) fn captured_prompt(&self) -> Option<String> {
        let value = match self {
            Call::Chat(req) => serde_json::to_string(&req.messages),
            Call::Messages(req) => serde_json::to_string(&serde_json::json!({
                "system": req.system,
                "messages": req.messages,
            })),
            Call::Completion(req) => serde_json::to_string(&req.prompt),
            Call::Embeddings(req) => serde_json::to_string(&req.input),
            _ => return None,
        };
        value.ok().map(crate::observe::clip_captured)
    }

    /// The prompt a learned router reads: every message's text, in order.
    /// `None` for requests a learned router does not route.
    pub(crate) fn query_text(&self) -> Option<String> {
        let join = |parts: Vec<String>| {
            parts
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join("\n")
        };
        match self {
            Call::Chat(req) => Some(join(
                req.messages
                    .iter()
                    .filter_map(|m| m.content.as_ref().map(|c| c.text()))
                    .collect(),
            )),
            // Token ids say nothing to the embedder: a learned router
            // refuses them rather than route on the digits.
            Call::Completion(req) if req.prompt.is_tokens() => None,
            Call::Completion(req) => Some(join(req.prompt.texts())),
            Call::Messages(req) => Some(join(
                req.system
                    .iter()
                    .map(|s| s.text())
                    .chain(req.messages.iter().map(|m| m.content.text()))
                    .collect(),
            )),
            Call::Embeddings(_)
            | Call::CountTokens(..)
            | Call::Images(_)
            | Call::ImageEdit(_)
            | Call::Moderations(_)
            | Call::Speech(_)
            | Call::Transcription(_)
            | Call::Rerank(_) => None,
        }
    }
}

/// A successful attempt's answer.
pub(crate) enum Reply {
    /// OpenAI-format JSON (for `/v1/messages`: a chat completion to translate).
    Json(ProviderResponse),
    /// OpenAI-format chunks; the first has already arrived.
    Chunks(ChunkStream),
    /// Anthropic-format JSON, passed through.
    Native(Bytes),
    /// Anthropic-format events, passed through; the first content event has arrived.
    Events(EventStream),
    /// A transcript in the format asked for, or an image edit's answer,
    /// with its media type.
    Media(MediaResponse),
    /// Speech, passed on as it arrives.
    Audio(switchyard_providers::AudioStream),
}

/// Who answered, reported in the response headers.
#[derive(Debug, Clone)]
pub(crate) struct Decision<'s> {
    /// The deployment that answered.
    pub(crate) deployment: &'s DeploymentInfo,
    /// The strategy that chose it.
    pub(crate) strategy: &'s str,
    /// The model group that answered (a fallback, or the one requested).
    pub(crate) group: &'s str,
    /// Attempts made, this one included.
    pub(crate) attempts: u32,
    /// A learned router's predicted scores and choice, when one routed the request.
    pub(crate) prediction: Option<Arc<Prediction>>,
    /// Tokens counted up front against the deployment's minute (`tpm`), to
    /// take back when the stream's real usage is counted.
    pub(crate) estimated_tokens: u64,
    /// When they were counted (the routing clock).
    pub(crate) estimated_at_ms: u64,
    /// The id the upstream gave its answer, when it sent one.
    pub(crate) upstream_request_id: Option<String>,
    /// Sent to a deployment that was cooling down (every one was): how its
    /// stream ends leaves the breaker, and another request's probe, alone.
    pub(crate) anyway: bool,
}

/// The request was answered.
pub(crate) struct Served<'s> {
    /// The answer.
    pub(crate) reply: Reply,
    /// Who answered.
    pub(crate) decision: Decision<'s>,
    /// Keeps the deployment counted as in flight; streams hand it to their tracker.
    pub(crate) in_flight: switchyard_routing::InFlight,
    /// When the answering attempt was sent.
    pub(crate) started: Instant,
}

/// The request failed; `error` is the last attempt's failure.
#[derive(Debug)]
pub(crate) struct Failed {
    /// What the client is told.
    pub(crate) error: ApiError,
    /// Attempts made.
    pub(crate) attempts: u32,
    /// The id the last upstream to answer gave its answer.
    pub(crate) upstream_request_id: Option<String>,
    /// The model group whose failure the request ended with (the last one
    /// tried, unless a fallback after it could not route), when any was.
    pub(crate) group: Option<String>,
}

impl From<ApiError> for Failed {
    fn from(error: ApiError) -> Self {
        Failed {
            error,
            attempts: 0,
            upstream_request_id: None,
            group: None,
        }
    }
}

/// Why the dispatch moves to another group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Failed,
    ContextWindow,
    ContentPolicy,
}

/// Runs `call` against `requested` and its fallbacks until one answers.
pub(crate) async fn dispatch<'s>(
    state: &'s AppState,
    requested: &str,
    call: &mut Call<'_>,
    options: &RequestOptions,
) -> Result<Served<'s>, Failed> {
    let served = dispatch_all(state, requested, call, options).await;
    if served.is_ok() {
        // What follows (charging, caching, the answer) is quick and
        // finishes even in a shutdown.
        crate::routes::mark_answered();
    }
    served
}

/// [`dispatch`]'s work.
async fn dispatch_all<'s>(
    state: &'s AppState,
    requested: &str,
    call: &mut Call<'_>,
    options: &RequestOptions,
) -> Result<Served<'s>, Failed> {
    let settings = &state.dispatch;
    // The request's time counts from here: a learned router's decision
    // (waiting for an embedding slot included) is part of it.
    let timeout = options.timeout.unwrap_or(settings.timeout).min(settings.max_timeout);
    let begun = tokio::time::Instant::now();
    let prediction = match state.learned.get(requested) {
        Some(route) => {
            let query = call.query_text().ok_or_else(|| {
                invalid(
                    "model",
                    format!(
                        "`{requested}` is a learned router; it serves chat, completion (with a text prompt) and message requests."
                    ),
                )
            })?;
            // With tag-based routing, a tagged request's candidates are the
            // groups the tags leave a deployment in.
            let serves = |name: &str| serves_tags(state, name, &options.route_tags);
            let tagged = (state.tag_filtering && !options.route_tags.is_empty()).then_some(&serves);
            let live = Live {
                allowed: options.allowed_lists.as_deref(),
                tagged: tagged.map(|f| f as &(dyn Fn(&str) -> bool + Sync)),
                registry: &state.registry,
                stats: &state.stats,
                cooldowns: &state.cooldowns,
                now_ms: state.now_ms(),
                fail_fast: settings.cooldown_fail_fast,
            };
            let span = tracing::debug_span!(
                target: "switchyard",
                "learned route",
                otel.name = "switchyard.route.learned",
                "switchyard.router" = requested,
                "switchyard.router.choice" = Empty,
                "switchyard.router.scores" = Empty,
            );
            let predicted =
                tokio::time::timeout_at(begun + timeout, route.predict(&live, query).instrument(span.clone())).await;
            let Ok(prediction) = predicted else {
                return Err(ApiError::Deadline {
                    after: begun.elapsed(),
                    attempts: 0,
                    deployment: None,
                }
                .into());
            };
            let prediction = prediction?;
            span.record("switchyard.router.choice", prediction.ranked[0].as_str());
            span.record("switchyard.router.scores", prediction.scores_header().as_str());
            Some(Arc::new(prediction))
        }
        None => None,
    };
    let requested = prediction.as_ref().map_or(requested, |p| p.ranked[0].as_str());
    // A wildcard group serves the models its name matches, not its name.
    if options.wildcard.is_none() && state.wildcards.iter().any(|w| w.group == requested) {
        return Err(invalid(
            "model",
            format!("`{requested}` stands for many models: name one it matches."),
        )
        .into());
    }
    let (requested, first) = state
        .routes
        .get_key_value(requested)
        .ok_or_else(|| ApiError::ModelNotFound(requested.to_owned()))?;
    if let Some(e) = options
        .fallbacks
        .as_deref()
        .and_then(|list| unknown_fallback(state, list))
    {
        return Err(e.into());
    }
    let deadline = Deadline {
        at: begun + timeout,
        configured: settings.timeout,
    };
    let num_retries = options
        .num_retries
        .unwrap_or(settings.retry.num_retries)
        .min(settings.max_num_retries);
    // A learned router falls back down its ranking.
    let ranked_rest = prediction.as_ref().map(|p| &p.ranked[1..]);
    let general = options.fallbacks.as_deref().or(ranked_rest).unwrap_or(&first.fallbacks);
    // A learned router's ranking already holds only what the key may call
    // (or, for a key that names none of its candidates, the router itself).
    let ranking = options.fallbacks.is_none() && ranked_rest.is_some();

    let mut rng = fastrand::Rng::new();
    let mut visited: Vec<&str> = Vec::new();
    let mut attempts = 0u32;
    let mut upstream_request_id = None;
    let mut group: (&'s str, &'s GroupRoute) = (requested.as_str(), first);
    // The error of the group fallen back from, that group and why.
    let mut earlier: Option<(ApiError, (&'s str, &'s GroupRoute), Reason)> = None;
    // The fallback list the current group was taken from.
    let mut hop_list: &[String] = general;
    loop {
        visited.push(group.0);
        // With no fallback group left that could serve now (as a learned
        // router judges it), deployments that are cooling down are tried
        // rather than refused.
        let live = Live {
            allowed: None,
            tagged: None,
            registry: &state.registry,
            stats: &state.stats,
            cooldowns: &state.cooldowns,
            now_ms: state.now_ms(),
            fail_fast: settings.cooldown_fail_fast,
        };
        let last_resort = !settings.cooldown_fail_fast
            && (visited.len() > settings.max_fallbacks
                || !hop_list.iter().any(|name| {
                    !visited.contains(&name.as_str())
                        && (ranking
                            || options
                                .allowed_models
                                .as_ref()
                                .is_none_or(|allowed| allowed.contains(name)))
                        && state.routes.contains_key(name.as_str())
                        && serves_tags(state, name, &options.route_tags)
                        && live.can_serve(name)
                }));
        let outcome = try_group(
            state,
            group,
            call,
            GroupLimits {
                num_retries,
                deadline,
                last_resort,
            },
            &mut rng,
            (&mut attempts, &mut upstream_request_id),
            options,
        )
        .await;
        // The group whose failure the request ends with.
        let mut blamed = group;
        let (error, reason) = match outcome {
            GroupOutcome::Served(mut served) => {
                served.decision.prediction = prediction;
                return Ok(served);
            }
            GroupOutcome::Final(error) => {
                alert_failure(state, group.0, call, options, &error);
                return Err(Failed {
                    error,
                    attempts,
                    upstream_request_id,
                    group: Some(group.0.to_owned()),
                });
            }
            GroupOutcome::Exhausted(error, reason, unable) => match (error, earlier.take()) {
                // A fallback group that could not route (every deployment
                // over its limits or cooling down: no attempt made), or none
                // of whose deployments could take the request, leaves the
                // request the error the group before it met (an upstream
                // 429 and its Retry-After, not a 503 or what a fallback
                // cannot express), and that group's reason to fall back.
                (ApiError::Routing(RoutingError::NoDeployment(_)), Some((before, from, why))) => {
                    blamed = from;
                    (before, why)
                }
                (_, Some((before, from, why))) if unable => {
                    blamed = from;
                    (before, why)
                }
                (error, _) => (error, reason),
            },
        };
        let list = match reason {
            Reason::Failed => general,
            Reason::ContextWindow => blamed.1.context_window_fallbacks.as_slice(),
            Reason::ContentPolicy => blamed.1.content_policy_fallbacks.as_slice(),
        };
        // A fallback the caller's key may not call is skipped: a key limited
        // to some models never gets answers from others through a failure.
        let next = list
            .iter()
            .filter(|name| !visited.contains(&name.as_str()))
            .filter(|name| {
                (ranking && reason == Reason::Failed)
                    || options
                        .allowed_models
                        .as_ref()
                        .is_none_or(|allowed| allowed.contains(name))
            })
            // Nor one whose deployments the request's tags leave none of:
            // its refusal would hide why the group before it failed.
            .filter(|name| serves_tags(state, name, &options.route_tags))
            .find_map(|name| state.routes.get_key_value(name.as_str()));
        let fallbacks_used = visited.len() - 1;
        match next {
            Some((name, route))
                if fallbacks_used < settings.max_fallbacks && tokio::time::Instant::now() < deadline.at =>
            {
                tracing::info!(from = group.0, to = %name, ?reason, "falling back to another model group");
                state.metrics.fallback(group.0, name);
                group = (name.as_str(), route);
                hop_list = list;
                earlier = Some((error, blamed, reason));
            }
            _ => {
                alert_failure(state, blamed.0, call, options, &error);
                return Err(Failed {
                    error,
                    attempts,
                    upstream_request_id,
                    group: Some(blamed.0.to_owned()),
                });
            }
        }
    }
}

/// Tells the operator (`request_failed`) about a request to `group` that
/// failed upstream or timed out: not one the upstream refused as the
/// client's error, one that ran out of the time it set itself, nor a token
/// count.
fn alert_failure(state: &AppState, group: &str, call: &Call<'_>, options: &RequestOptions, error: &ApiError) {
    let Some(alerts) = &state.alerts else {
        return;
    };
    if matches!(call, Call::CountTokens(..)) {
        return;
    }
    let deployment = match error {
        ApiError::Upstream { deployment, .. } => Some(deployment.as_str()),
        // The request's own shorter deadline, not the gateway's.
        ApiError::Deadline { .. } if options.timeout.is_some_and(|t| t < state.dispatch.max_timeout) => return,
        ApiError::Deadline { .. } | ApiError::Routing(RoutingError::NoDeployment(_)) => None,
        _ => return,
    };
    let status = error.parts().0;
    if status.is_server_error() || status == axum::http::StatusCode::TOO_MANY_REQUESTS {
        alerts.failed(group, deployment, &crate::observe::error_class(error), status.as_u16());
    }
}

/// When a request must have its answer.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: tokio::time::Instant,
    /// The configured deadline. An attempt it cuts counts as the
    /// deployment's timeout only when the attempt itself ran for at least
    /// half of it: a client's shorter deadline, or the last sliver left after
    /// other attempts, says nothing about the deployment.
    configured: Duration,
}

enum GroupOutcome<'s> {
    Served(Served<'s>),
    /// A failure no other group would fix (or the deadline passed).
    Final(ApiError),
    /// The group could not answer; fallbacks may. The flag: no deployment
    /// of it could take the request at all (what each cannot express or
    /// reach as configured, a rejected key), so its error says less than
    /// that of a group fallen back from.
    Exhausted(ApiError, Reason, bool),
}

/// How far one group's attempts may go.
#[derive(Debug, Clone, Copy)]
struct GroupLimits {
    /// Retries after the first attempt.
    num_retries: u32,
    /// When the request must have its answer.
    deadline: Deadline,
    /// No fallback group is left after this one: when every deployment is
    /// cooling down, they are tried anyway.
    last_resort: bool,
}

#[allow(clippy::too_many_arguments)]
async fn try_group<'s>(
    state: &'s AppState,
    (name, route): (&'s str, &'s GroupRoute),
    call: &mut Call<'_>,
    GroupLimits {
        num_retries,
        deadline,
        last_resort,
    }: GroupLimits,
    rng: &mut fastrand::Rng,
    (attempts, last_upstream_id): (&mut u32, &mut Option<String>),
    options: &RequestOptions,
) -> GroupOutcome<'s> {
    let upstream_ns = options.upstream_ns.as_deref();
    let prompt_tokens = options.prompt_tokens;
    let group = match state.registry.group(name) {
        Ok(group) => group,
        Err(e) => return GroupOutcome::Final(e.into()),
    };
    let deployments = group.deployments();
    // The prompt's tokens, counted against a deployment's minute while the
    // request runs, so concurrent requests see them (`usage-based`).
    let estimated = match call {
        Call::CountTokens(..) => 0,
        _ => prompt_tokens.unwrap_or_else(|| crate::metering::expected_prompt_tokens(call)),
    };
    // Deployments tried by this request, with when the Retry-After each
    // sent ends (a pause counts from when it was asked for).
    let mut tried: Vec<(usize, Option<tokio::time::Instant>)> = Vec::new();
    // Deployments whose provider cannot express this request.
    let mut unable: Vec<usize> = Vec::new();
    // A deployment of a wildcard group said the model the client named does
    // not exist, or may not be used: when no other deployment of the group
    // can be asked (cooling down, its key rejected, left out by tags), that
    // is the client's answer, and another model must not answer for it.
    let mut model_missing = false;
    let exhausted = |error: ApiError, model_missing: bool, unable_only: bool| {
        if model_missing && matches!(error, ApiError::ModelNotFound(_) | ApiError::ModelForbidden(_)) {
            GroupOutcome::Final(error)
        } else {
            GroupOutcome::Exhausted(error, Reason::Failed, unable_only)
        }
    };
    let mut last: Option<ApiError> = None;
    // Whether `last` is only a deployment's inability to take the request:
    // an upstream's transient failure (a 429 and its Retry-After, a 529)
    // is what the client should get rather than that.
    let mut last_unable = false;
    let mut retry = 0u32;
    // The retry whose pause is being slept, and how long it has slept: a
    // deployment that could not take the request hands it on without a
    // second pause, and the next one waits only the rest of its own.
    let mut paused_for = 0u32;
    let mut slept = Duration::ZERO;
    // Tag-based routing: the deployments the request's tags may use.
    let tagged = state
        .tag_filtering
        .then(|| tagged_deployments(state, deployments, &route.all, &options.route_tags));
    if let Some(tagged) = &tagged
        && tagged.is_empty()
    {
        let error = ApiError::InvalidField {
            param: Some("tags".into()),
            message: format!(
                "No deployment of `{name}` carries the tags {:?} or `default`.",
                options.route_tags
            ),
        };
        return GroupOutcome::Exhausted(error, Reason::Failed, true);
    }
    let eligible = |i: &usize| tagged.as_ref().is_none_or(|t| t.contains(i));
    while retry <= num_retries {
        // Nobody waits for an answer: no new attempt is billed for it.
        if crate::routes::client_gone() {
            return GroupOutcome::Final(ApiError::ClientGone { attempts: *attempts });
        }
        let now = state.now_ms();
        let able = || route.all.iter().copied().filter(|i| !unable.contains(i) && eligible(i));
        let mut healthy: Vec<usize> = able()
            .filter(|&i| deployments.get(i).is_some_and(|d| state.cooldowns.may_serve(d.id, now)))
            .collect();
        // Every deployment is cooling down and no fallback group that could
        // serve is left: refusing would turn a brief upstream error into
        // `cooldown_ms` of 503s, so they are tried anyway, with the usual
        // retries; one whose key the upstream rejected only when it is all
        // there is, and once. Their breakers are left as they are.
        let mut panic = healthy.is_empty() && last_resort;
        if panic {
            let key_invalid = |i: &usize| deployments.get(*i).is_some_and(|d| state.cooldowns.key_invalid(d.id));
            healthy = able().filter(|i| !key_invalid(i)).collect();
            if healthy.is_empty() {
                healthy = able().filter(|i| !tried.iter().any(|(t, _)| t == i)).collect();
            }
        }
        let is_tried = |i: &usize| tried.iter().any(|(t, _)| t == i);
        let fresh: Vec<usize> = healthy.iter().copied().filter(|i| !is_tried(i)).collect();
        // Tried deployments to go back to: not one that asked for a longer
        // pause than the policy waits, while another may answer. They are
        // the pool when every healthy one has been tried, and the pool
        // again when none of the untried ones can take the request (the
        // strategy refuses them all, e.g. each is over its rpm).
        let max = state.dispatch.retry.max_retry_after;
        let mut again: Vec<usize> = healthy
            .iter()
            .copied()
            .filter(|i| {
                is_tried(i)
                    && !tried.iter().any(|(t, until)| {
                        t == i && until.is_some_and(|u| u.saturating_duration_since(tokio::time::Instant::now()) > max)
                    })
            })
            .collect();
        let mut pool = if fresh.is_empty() {
            if again.is_empty() && !healthy.is_empty() {
                tracing::info!(
                    group = name,
                    "every deployment asked for a longer pause than allowed; not waiting"
                );
                break;
            }
            std::mem::take(&mut again)
        } else {
            fresh
        };
        // Chosen, then paused (the backoff, or the Retry-After it sent),
        // then claimed: a deployment's breaker is read after the pause, and
        // a half-open probe is not held through it. One whose pause would
        // pass the deadline, or that cannot be claimed, leaves the pool.
        let (index, probe, in_flight, tokens) = loop {
            if pool.is_empty() && !again.is_empty() {
                pool = std::mem::take(&mut again);
            }
            if pool.is_empty() {
                let error = last.take().unwrap_or_else(|| {
                    tracing::warn!(group = name, "every deployment of the group is cooling down");
                    ApiError::Routing(RoutingError::NoDeployment(name.to_owned()))
                });
                return exhausted(error, model_missing, last_unable);
            }
            let ctx = RouteContext {
                group,
                candidates: &pool,
                stats: &state.stats,
                now_ms: state.now_ms(),
                estimated_tokens: estimated,
            };
            let index = match route.strategy.choose(&ctx, rng) {
                Ok(index) => index,
                // None of the untried can take it: back to the tried ones.
                Err(_) if !again.is_empty() => {
                    pool = std::mem::take(&mut again);
                    continue;
                }
                // E.g. every deployment is over its rpm: fallbacks may answer.
                Err(e) => {
                    let unable_only = last.is_some() && last_unable;
                    return exhausted(last.take().unwrap_or_else(|| e.into()), model_missing, unable_only);
                }
            };
            // A strategy must choose among the candidates it was given.
            if !pool.contains(&index) {
                return GroupOutcome::Final(ApiError::Internal(format!(
                    "the `{}` strategy chose deployment {index} of {name}, which was not a candidate",
                    route.strategy.name()
                )));
            }
            let Some(chosen) = deployments.get(index) else {
                return GroupOutcome::Final(ApiError::Internal(format!("no deployment {index} in {name}")));
            };
            // In flight from the choice on, pause included, with its
            // prompt's tokens: requests retrying at once see it
            // (`least-busy`, `usage-based`'s rpm and tpm) and do not all
            // pick the same deployment. Given back if it leaves the pool.
            let held = state.stats.start(chosen.id);
            let tokens = ReservedTokens::add(state, chosen.id, estimated);
            if retry > 0 {
                if retry > paused_for {
                    paused_for = retry;
                    slept = Duration::ZERO;
                    state.metrics.retry(name);
                }
                // What is left of the pause this deployment asked for.
                let retry_after = tried
                    .iter()
                    .find(|(t, _)| *t == index)
                    .and_then(|(_, until)| *until)
                    .map(|until| until.saturating_duration_since(tokio::time::Instant::now()));
                let wait = state.dispatch.retry.wait(retry, retry_after, rng);
                // What this retry has slept already counts: a deployment
                // chosen after another could not be claimed waits only the
                // rest of its own backoff (a Retry-After's rest is counted
                // from now already).
                let rest = match wait {
                    Wait::Sleep(pause) => pause.saturating_sub(slept).max(retry_after.unwrap_or_default()),
                    Wait::TooLong(_) => Duration::ZERO,
                };
                match wait {
                    Wait::Sleep(_) if tokio::time::Instant::now() + rest < deadline.at => {
                        if !rest.is_zero() {
                            tokio::time::sleep(rest).await;
                            slept += rest;
                            if let Some(counter) = upstream_ns {
                                crate::observe::RequestContext::add_upstream(counter, rest);
                            }
                        }
                        if crate::routes::client_gone() {
                            return GroupOutcome::Final(ApiError::ClientGone { attempts: *attempts });
                        }
                    }
                    // Past the deadline: another deployment may answer sooner.
                    Wait::Sleep(_) => {
                        pool.retain(|&i| i != index);
                        continue;
                    }
                    Wait::TooLong(after) => {
                        tracing::info!(deployment = %chosen.name, ?after, "Retry-After is longer than allowed; not waiting");
                        pool.retain(|&i| i != index);
                        continue;
                    }
                }
            }
            // Claims the half-open probe when the breaker is recovering. A
            // token count (another endpoint) never probes: its success says
            // little of the deployment's health.
            let claim = if panic || matches!(call, Call::CountTokens(..)) {
                Some(switchyard_routing::Claim::Closed)
            } else {
                state.cooldowns.claim(chosen.id, state.now_ms())
            };
            match claim {
                Some(claim) => break (index, claim == switchyard_routing::Claim::Probe, held, tokens),
                // Another request took the half-open probe of the last
                // deployment this one could ask, between the choice (or
                // the pause) and the claim: as when every deployment is
                // cooling down, it is tried anyway, its breaker left as it is.
                None if last_resort && again.is_empty() && pool.iter().all(|&i| i == index) => {
                    panic = true;
                    break (index, false, held, tokens);
                }
                None => pool.retain(|&i| i != index),
            }
        };
        let Some(deployment) = deployments.get(index) else {
            return GroupOutcome::Final(ApiError::Internal(format!("no deployment {index} in {name}")));
        };
        let Some(client) = state.provider(deployment.id) else {
            return GroupOutcome::Final(ApiError::Internal(format!("no client for {}", deployment.name)));
        };
        *attempts += 1;
        tracing::debug!(group = name, deployment = %deployment.name, strategy = route.strategy.name(), attempt = *attempts, "routed");
        drop(tracing::debug_span!(
            target: "switchyard",
            "route",
            otel.name = "switchyard.route",
            "switchyard.routing.strategy" = route.strategy.name(),
            "switchyard.model_group" = name,
            "switchyard.deployment" = deployment.name.as_str(),
            "switchyard.attempt" = i64::from(*attempts),
        ));
        state.metrics.routed(route.strategy.name(), name, &deployment.name);
        let upstream = upstream_model(deployment, options.wildcard.as_deref());
        let attempt_span = tracing::debug_span!(
            target: "switchyard",
            "upstream",
            // Behind a wildcard the upstream model is the client's choice:
            // the span is named after the group (its attributes say more).
            otel.name = format!(
                "{} {}",
                call.operation(),
                if options.wildcard.is_some() {
                    name
                } else {
                    crate::observe::clip_start(&upstream, crate::observe::MAX_LOGGED_MODEL)
                }
            ),
            otel.kind = "client",
            otel.status_code = Empty,
            "gen_ai.operation.name" = call.operation(),
            "gen_ai.system" = deployment.provider.as_str(),
            "gen_ai.provider.name" = genai_system(&deployment.provider),
            "gen_ai.request.model" = crate::observe::clip_start(&upstream, crate::observe::MAX_LOGGED_MODEL),
            "switchyard.deployment" = deployment.name.as_str(),
            "switchyard.attempt" = i64::from(*attempts),
            "switchyard.upstream.request_id" = Empty,
            "error.type" = Empty,
        );
        // From here each outcome settles the tokens itself.
        let added_ms = tokens.keep();
        let started = Instant::now();
        // Boxed: the attempt's future is deep, and nested in the request's
        // it would pass the compiler's layout depth limit.
        let sending: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>> = Box::pin(
            tokio::time::timeout_at(
                deadline.at,
                attempt(call, deployment, client, options.wildcard.as_deref()),
            )
            .instrument(attempt_span.clone()),
        );
        let (sent, upstream_request_id) = switchyard_providers::upstream_id::capture(sending).await;
        if let Some(id) = &upstream_request_id {
            attempt_span.record("switchyard.upstream.request_id", id.as_str());
        }
        // The id of the last upstream answer: an attempt that got none (a
        // connection refused, a timeout) leaves an earlier answer's id, for
        // the client to quote to the provider.
        let answered = match &sent {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => matches!(
                e,
                ProviderError::Status { .. } | ProviderError::InvalidResponse(_) | ProviderError::Stream(_)
            ),
            Err(_) => false,
        };
        if upstream_request_id.is_some() || answered {
            last_upstream_id.clone_from(&upstream_request_id);
        }
        if let Some(counter) = upstream_ns {
            crate::observe::RequestContext::add_upstream(counter, started.elapsed());
        }
        let result = match sent {
            Ok(result) => result,
            Err(_) => {
                attempt_span.record("error.type", "timeout");
                attempt_span.record("otel.status_code", "error");
                state.metrics.attempt(&deployment.name, "deadline");
                let now = state.now_ms();
                // The upstream was sent the prompt, and bills it: its
                // estimate stays counted in the deployment's minute.
                // A token count counts nothing in the live statistics.
                let counts = !matches!(call, Call::CountTokens(..));
                if started.elapsed() >= deadline.configured / 2 {
                    let class = switchyard_routing::ErrorClass::Timeout;
                    if counts {
                        state.stats.record_failure(deployment.id, class, now);
                    }
                    // A try made anyway leaves the breaker (and another
                    // request's probe) as it is.
                    if !panic
                        && counts
                        && state
                            .cooldowns
                            .record_failure(deployment.id, class, claim_of(probe), now)
                    {
                        tracing::warn!(deployment = %deployment.name, "deployment put in cooldown after the request's deadline");
                        state.metrics.cooldown(&deployment.name);
                        if let Some(alerts) = &state.alerts {
                            alerts.cooldown(&deployment.name, class.as_str());
                        }
                    }
                } else {
                    // Too short a deadline to judge the deployment by: the
                    // request counts against its rpm, without an outcome.
                    if counts {
                        state.stats.record_request(deployment.id, now);
                    }
                    if probe {
                        state.cooldowns.release_probe(deployment.id, now);
                    }
                }
                return GroupOutcome::Final(ApiError::Deadline {
                    after: started.elapsed(),
                    attempts: *attempts,
                    deployment: Some(deployment.name.clone()),
                });
            }
        };
        let now = state.now_ms();
        match result {
            Ok(reply) => {
                state.metrics.attempt(&deployment.name, "ok");
                let used = match &reply {
                    // Without usage, as the answer is charged: the prompt's
                    // estimate and its output by length.
                    Reply::Json(ProviderResponse { usage, body, .. }) => Some(usage.as_ref().map_or_else(
                        || estimated.saturating_add(crate::metering::output_estimate(body)),
                        // Not `total_tokens` alone: servers that leave it out
                        // would count nothing against the deployment's tpm.
                        |u| u.total_tokens.max(u.prompt_tokens.saturating_add(u.generated_tokens())),
                    )),
                    // A token count is not a generation: no latency sample.
                    Reply::Native(_) if matches!(call, Call::CountTokens(..)) => None,
                    Reply::Native(body) => Some(native_tokens(body, estimated)),
                    Reply::Media(_) | Reply::Audio(_) => Some(estimated),
                    // A stream's outcome is recorded when it ends.
                    Reply::Chunks(_) | Reply::Events(_) => None,
                };
                if let Some(tokens) = used {
                    state.stats.take_back_tokens(deployment.id, estimated, added_ms, now);
                    let outcome = Outcome {
                        latency: started.elapsed(),
                        ttft: None,
                        tokens,
                    };
                    state.stats.record_success(deployment.id, outcome, now);
                    if let Some(alerts) = &state.alerts {
                        alerts.answered(name, &deployment.name, outcome.latency);
                    }
                }
                // A stream's first event arrived: the breaker closes now, its
                // statistics are recorded when it ends. A token count says
                // nothing of generations; a try made anyway leaves the
                // breaker (and another request's probe) as it is.
                if !panic && !matches!(call, Call::CountTokens(..)) {
                    state.cooldowns.record_success(deployment.id, claim_of(probe), now);
                }
                return GroupOutcome::Served(Served {
                    reply,
                    decision: Decision {
                        deployment,
                        strategy: route.strategy.name(),
                        group: name,
                        attempts: *attempts,
                        prediction: None,
                        estimated_tokens: if used.is_some() { 0 } else { estimated },
                        estimated_at_ms: added_ms,
                        upstream_request_id,
                        anyway: panic,
                    },
                    in_flight,
                    started,
                });
            }
            Err(e) => {
                drop(in_flight);
                state.stats.take_back_tokens(deployment.id, estimated, added_ms, now);
                let e = billing_refusal(e);
                // A server without this operation's route answers 404 (OpenAI
                // has no `/rerank`, Ollama no `/audio` or `/moderations`;
                // OpenAI's chat models are not served on `/completions`): the
                // kind of request, not the deployment's health, which its
                // chat traffic would lose to a breaker opened by such calls.
                let e = match e {
                    ProviderError::Status {
                        status: 404,
                        ref message,
                        ref code,
                        ..
                    } if call.may_lack_route()
                        && !(options.wildcard.is_some() && deployment.model.contains('*'))
                        && !names_missing_model(message, code.as_deref()) =>
                    {
                        // The upstream took the request: it counts against
                        // the rpm (a token count counts nothing).
                        if !matches!(call, Call::CountTokens(..)) {
                            state.stats.record_request(deployment.id, now);
                        }
                        tracing::warn!(
                            deployment = %deployment.name,
                            operation = call.operation(),
                            error = %crate::error::Clipped(&e),
                            "the upstream does not serve this operation (404); not counted against the deployment"
                        );
                        ProviderError::Unsupported {
                            provider: client.kind(),
                            operation: call.operation(),
                        }
                    }
                    e => e,
                };
                // The upstream does not know what the deployment names (an
                // Azure deployment or a model that does not exist), redirects
                // elsewhere, or the deployment cannot be called as configured
                // (credentials that do not load): the deployment's fault, and
                // another deployment of the group, or a fallback, may serve.
                let unknown_upstream = matches!(e, ProviderError::Status { status: 404, .. });
                // A 404 that says the model is missing (not a route the
                // server lacks, such as `/completions` for a chat model).
                let says_model_missing = matches!(&e, ProviderError::Status { status: 404, message, code, .. }
                    if names_missing_model(message, code.as_deref()));
                let mut misconfigured = unknown_upstream
                    || matches!(
                        e,
                        ProviderError::Status {
                            status: 300..=399 | 402,
                            ..
                        } | ProviderError::InvalidConfig(_)
                    );
                // Behind a wildcard the model is the client's choice: its
                // absence is the client's error, not the deployment's fault.
                let unknown_model = unknown_upstream
                    .then_some(options.wildcard.as_deref())
                    .flatten()
                    .filter(|_| deployment.model.contains('*'));
                // And a 403 that names the model is the model's access
                // ("Project … does not have access to model …"), not the
                // shared key's (a 403 for the whole key, e.g. a region the
                // upstream refuses, still marks the key).
                let forbidden_model = match &e {
                    ProviderError::Status {
                        status: 403,
                        message,
                        code,
                        ..
                    } => {
                        message.to_ascii_lowercase().contains("model")
                            || code.as_deref().is_some_and(|c| c.contains("model"))
                    }
                    _ => false,
                } && options.wildcard.is_some()
                    && deployment.model.contains('*');
                // Another deployment of the group (another project) may
                // have the model: tried as for a 404.
                misconfigured |= forbidden_model;
                let class = if unknown_model.is_some() || forbidden_model {
                    switchyard_routing::ErrorClass::ClientError
                } else {
                    error_class(&e)
                };
                let class_name = class.as_str();
                attempt_span.record("error.type", class_name);
                attempt_span.record("otel.status_code", "error");
                state.metrics.attempt(&deployment.name, class_name);
                // What this deployment cannot do (a model without tools,
                // Ollama's "does not support tools") another may: like what
                // cannot be expressed, it says nothing of its health.
                let unexpressible = matches!(
                    e,
                    ProviderError::Unsupported { .. } | ProviderError::InvalidRequest { .. }
                ) || matches!(&e, ProviderError::Status { status: 400, message, .. } if lacks_capability(message, call))
                    || e.too_large_for_deployment();
                if unexpressible {
                    // Refused before anything was sent: says nothing of its health.
                    if probe {
                        state.cooldowns.release_probe(deployment.id, now);
                    }
                } else {
                    // A token count counts nothing in the live statistics.
                    if !matches!(call, Call::CountTokens(..)) {
                        state.stats.record_failure(deployment.id, class, now);
                    }
                    // A try made anyway leaves the breaker (and another
                    // request's probe) as it is; a rejected key is noted.
                    // A token count leaves the breaker alone: it never
                    // probes, and its answers say little of generations.
                    let noted = (!panic || class == switchyard_routing::ErrorClass::Auth)
                        && !matches!(call, Call::CountTokens(..));
                    if noted
                        && state
                            .cooldowns
                            .record_failure(deployment.id, class, claim_of(probe), now)
                    {
                        tracing::warn!(deployment = %deployment.name, ?class, "deployment put in cooldown");
                        state.metrics.cooldown(&deployment.name);
                        if let Some(alerts) = &state.alerts {
                            alerts.cooldown(&deployment.name, class.as_str());
                        }
                    }
                }
                tracing::warn!(
                    deployment = %deployment.name,
                    attempt = *attempts,
                    upstream_request_id = upstream_request_id.as_deref(),
                    error = %crate::error::Clipped(&e),
                    "attempt failed"
                );
                let reason = if e.is_context_window_exceeded() {
                    Some(Reason::ContextWindow)
                } else if e.is_content_policy_violation() {
                    Some(Reason::ContentPolicy)
                } else {
                    None
                };
                let retryable = e.is_retryable();
                let retry_after = match &e {
                    ProviderError::Status { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let error = match (unknown_model, options.wildcard.as_deref()) {
                    (Some(part), _) => ApiError::ModelNotFound(name.replacen('*', part, 1)),
                    (None, Some(part)) if forbidden_model => ApiError::ModelForbidden(name.replacen('*', part, 1)),
                    _ => ApiError::upstream(&deployment.name, e),
                };
                if let Some(reason) = reason {
                    return GroupOutcome::Exhausted(error, reason, false);
                }
                // A rejected key (marked, so later requests skip it) is the
                // deployment's, as is what it cannot express or reach as
                // configured: another deployment of the group may take the
                // request, without counting as a retry.
                if unexpressible || misconfigured || class == switchyard_routing::ErrorClass::Auth {
                    unable.push(index);
                    // A model the client named behind a wildcard that no
                    // deployment has, or may use, is the client's answer:
                    // another model must not answer for it.
                    let names_missing = matches!(error, ApiError::ModelForbidden(_))
                        || (matches!(error, ApiError::ModelNotFound(_)) && says_model_missing);
                    model_missing |= names_missing;
                    if unable.len() < route.all.len() {
                        // Not in place of another deployment's failure.
                        if last.is_none() || last_unable {
                            last = Some(error);
                            last_unable = true;
                        }
                        continue;
                    }
                    if names_missing {
                        return GroupOutcome::Final(error);
                    }
                    // No deployment of the group can: a fallback group may.
                    return GroupOutcome::Exhausted(error, Reason::Failed, true);
                }
                if !retryable {
                    return GroupOutcome::Final(error);
                }
                // (An upstream's wait is at most a year, which fits on the clock;
                // past it, the wait is the year.)
                let until = retry_after.map(|after| {
                    let now = tokio::time::Instant::now();
                    now.checked_add(after)
                        .unwrap_or(now + Duration::from_secs(365 * 24 * 3600))
                });
                match tried.iter_mut().find(|(t, _)| *t == index) {
                    Some(entry) => entry.1 = until,
                    None => tried.push((index, until)),
                }
                last = Some(error);
                last_unable = false;
            }
        }
        retry += 1;
    }
    let error = last.unwrap_or_else(|| ApiError::Routing(RoutingError::NoDeployment(name.to_owned())));
    exhausted(error, model_missing, last_unable)
}

/// The GenAI semantic conventions' name of a provider kind (`azure` is
/// `azure.ai.openai`, `bedrock` is `aws.bedrock`).
fn genai_system(provider: &str) -> &str {
    match provider {
        "azure" => "azure.ai.openai",
        "bedrock" => "aws.bedrock",
        other => other,
    }
}

/// Prompt plus output tokens of an Anthropic-format answer, from its
/// `usage`; without one, as the answer is charged: the prompt's estimate
/// and its output by length.
fn native_tokens(body: &Bytes, estimated: u64) -> u64 {
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<Value>,
    }
    serde_json::from_slice::<Answer>(body)
        .ok()
        .and_then(|a| a.usage)
        .filter(Value::is_object)
        .map_or_else(
            || estimated.saturating_add(crate::metering::anthropic_output_estimate(body)),
            |u| {
                let u = crate::metering::anthropic_usage(&u);
                u.prompt.saturating_add(u.completion)
            },
        )
}

/// Whether tag-based routing leaves group `name` a deployment for `tags`
/// (always, without tag filtering).
fn serves_tags(state: &AppState, name: &str, tags: &[String]) -> bool {
    if !state.tag_filtering {
        return true;
    }
    match (state.registry.group(name), state.routes.get(name)) {
        (Ok(group), Some(route)) => !tagged_deployments(state, group.deployments(), &route.all, tags).is_empty(),
        _ => true,
    }
}

/// The deployments (indexes in the group) a request with `tags` may use:
/// those carrying one of its tags; without a match, or without tags, those
/// tagged `default`; failing those, every one for a request without tags,
/// none for one with tags.
fn tagged_deployments(state: &AppState, deployments: &[DeploymentInfo], all: &[usize], tags: &[String]) -> Vec<usize> {
    let carries = |i: usize, tag: &str| {
        deployments
            .get(i)
            .and_then(|d| state.deployment_tags.get(d.id.0))
            .is_some_and(|own| own.iter().any(|t| t == tag))
    };
    let matching: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| tags.iter().any(|t| carries(i, t)))
        .collect();
    if !matching.is_empty() {
        return matching;
    }
    let defaults: Vec<usize> = all.iter().copied().filter(|&i| carries(i, "default")).collect();
    if !defaults.is_empty() || !tags.is_empty() {
        return defaults;
    }
    all.to_vec()
}

/// Sends `call` to one deployment; streams are held until their first event.
/// The model `deployment` asks its upstream for: a wildcard deployment's
/// `*` stands for what the request's name matched.
pub(crate) fn upstream_model<'a>(deployment: &'a DeploymentInfo, wildcard: Option<&str>) -> std::borrow::Cow<'a, str> {
    match wildcard {
        Some(part) if deployment.model.contains('*') => deployment.model.replacen('*', part, 1).into(),
        _ => deployment.model.as_str().into(),
    }
}

async fn attempt(
    call: &mut Call<'_>,
    deployment: &DeploymentInfo,
    client: &ProviderClient,
    wildcard: Option<&str>,
) -> Result<Reply, ProviderError> {
    let upstream = upstream_model(deployment, wildcard);
    let set = |model: &mut String| {
        model.clear();
        model.push_str(&upstream);
    };
    match call {
        Call::Chat(req) => {
            set(&mut req.model);
            if req.is_stream() {
                within_first_byte(client, async {
                    hold_chunks(client.chat_stream(req).await?, client.idle_timeout()).await
                })
                .await
                .map(Reply::Chunks)
            } else {
                client.chat(req).await.map(Reply::Json)
            }
        }
        Call::Completion(req) => {
            set(&mut req.model);
            if req.is_stream() {
                within_first_byte(client, async {
                    hold_chunks(client.completion_stream(req).await?, client.idle_timeout()).await
                })
                .await
                .map(Reply::Chunks)
            } else {
                client.completion(req).await.map(Reply::Json)
            }
        }
        Call::Embeddings(req) => {
            set(&mut req.model);
            client.embeddings(req).await.map(Reply::Json)
        }
        Call::Images(req) => {
            set(&mut req.model);
            client.images(req).await.map(Reply::Json)
        }
        Call::Moderations(req) => {
            set(&mut req.model);
            client.moderations(req).await.map(Reply::Json)
        }
        Call::Speech(req) => {
            set(&mut req.model);
            client.speech(req).await.map(Reply::Audio)
        }
        Call::Transcription(req) => {
            set(&mut req.model);
            client.transcription(req).await.map(Reply::Media)
        }
        Call::ImageEdit(req) => {
            set(&mut req.model);
            client.image_edit(req).await.map(Reply::Media)
        }
        Call::Rerank(req) => {
            set(&mut req.model);
            client.rerank(req).await.map(Reply::Json)
        }
        Call::Messages(req) => {
            set(&mut req.model);
            let stream = req.is_stream();
            let claude = matches!(client, ProviderClient::Anthropic(_))
                || (matches!(client, ProviderClient::Bedrock(_)) && BedrockProvider::is_claude(&deployment.model));
            // Reasoning another model gave (passed on as `thinking` blocks)
            // has no signature, which Claude refuses; nor does it think on a
            // turn whose calls came without thinking, nor take call ids such
            // as vLLM's `functions.get_weather:0`. Changed in a copy: a
            // fallback to another model gets the request as it came.
            let mut fixed = if claude {
                req.for_claude(switchyard_providers::tool_use_id)
            } else {
                None
            };
            let req = fixed.as_mut().unwrap_or(req);
            match client {
                ProviderClient::Anthropic(p) if stream => {
                    within_first_byte(client, async {
                        hold_events(p.messages_stream(req).await?, client.idle_timeout()).await
                    })
                    .await
                }
                ProviderClient::Anthropic(p) => p.messages(req).await.map(Reply::Native),
                ProviderClient::Bedrock(p) if BedrockProvider::is_claude(&deployment.model) => {
                    if stream {
                        within_first_byte(client, async {
                            hold_events(p.messages_stream(req).await?, client.idle_timeout()).await
                        })
                        .await
                    } else {
                        p.messages(req).await.map(Reply::Native)
                    }
                }
                _ => {
                    let mut chat = translate::to_chat_request(req).map_err(|e| ProviderError::InvalidRequest {
                        message: e.message(),
                        param: e.parts().2,
                    })?;
                    // Thinking's effort, for models that take one (others
                    // refuse `reasoning_effort`).
                    if !client.takes_reasoning_effort(&chat.model) {
                        chat.extra.shift_remove("reasoning_effort");
                    }
                    if stream {
                        within_first_byte(client, async {
                            hold_chunks(client.chat_stream(&chat).await?, client.idle_timeout()).await
                        })
                        .await
                        .map(Reply::Chunks)
                    } else {
                        client.chat(&chat).await.map(Reply::Json)
                    }
                }
            }
        }
        Call::CountTokens(body, betas) => {
            body["model"] = Value::String(upstream.into_owned());
            // Claude counts only what it would take: the same changes as
            // for `/v1/messages`, in a copy.
            let claude = matches!(client, ProviderClient::Anthropic(_))
                || (matches!(client, ProviderClient::Bedrock(_)) && BedrockProvider::is_claude(&deployment.model));
            let mut fixed = claude
                .then(|| serde_json::from_value::<MessagesRequest>(body.clone()).ok())
                .flatten()
                .and_then(|req| req.for_claude(switchyard_providers::tool_use_id))
                .and_then(|req| serde_json::to_value(req).ok());
            let body = fixed.as_mut().unwrap_or(body);
            match client {
                ProviderClient::Anthropic(p) => p.count_tokens(body, betas).await.map(Reply::Native),
                // Bedrock's CountTokens takes foundation-model ids only (not
                // inference profiles). A failure that says Bedrock cannot
                // count here (a role without `bedrock:CountTokens`, a model it
                // does not count, an outage) leaves the count to the
                // gateway's estimate, and says nothing of the deployment's
                // health or key; a request it finds invalid stays a 400.
                ProviderClient::Bedrock(p) if BedrockProvider::counts_tokens(&deployment.model) => {
                    p.count_tokens(body, betas).await.map(Reply::Native).map_err(|e| {
                        let invalid_request = matches!(&e, ProviderError::Status { status: 400 | 413 | 422, message, .. }
                            if !message.to_ascii_lowercase().contains("not support"));
                        if invalid_request || matches!(e, ProviderError::InvalidRequest { .. }) {
                            return e;
                        }
                        tracing::debug!(deployment = %deployment.name, error = %e, "Bedrock could not count tokens");
                        ProviderError::Unsupported {
                            provider: "bedrock",
                            operation: "count_tokens",
                        }
                    })
                }
                _ => Err(ProviderError::Unsupported {
                    provider: client.kind(),
                    operation: "count_tokens",
                }),
            }
        }
    }
}

/// Holds a chunk stream until its first chunk with output (text, a tool call,
/// a refusal, a finish reason, or usage), bounded by the deployment's
/// first-byte timeout which the provider applies to the first event. Servers
/// such as vLLM send a role-only chunk as soon as they accept the request, so
/// the first chunk alone does not prove the model is generating. A failure
/// before output is the attempt's failure. What follows is bounded by
/// `idle` between chunks.
async fn hold_chunks(mut chunks: ChunkStream, idle: Option<Duration>) -> Result<ChunkStream, ProviderError> {
    let mut held = Vec::new();
    let mut bytes = 0usize;
    loop {
        match chunks.next().await {
            Some(Ok(chunk)) => {
                let output = switchyard_providers::sse::is_output(&chunk.data);
                bytes = bytes.saturating_add(chunk.data.len());
                held.push(Ok(chunk));
                if output || held.len() >= MAX_HELD_EVENTS || bytes >= MAX_HELD_BYTES {
                    break;
                }
            }
            Some(Err(e)) => return Err(e),
            // Ended (`[DONE]` or closed) with nothing but preamble: a broken
            // stream, which the next attempt may answer.
            None => {
                return Err(ProviderError::Stream(
                    "the upstream ended the stream before any output".into(),
                ));
            }
        }
    }
    Ok(Box::pin(stream::iter(held).chain(bounded_silence(chunks, idle))))
}

/// `rest` of a stream that has begun, ended with an idle timeout when no
/// item comes within `idle` (an upstream that stalls mid-answer would
/// otherwise hold the request, its reservation and the client until its
/// total timeout). Dropping `rest` closes the upstream connection.
fn bounded_silence<T: Send + 'static>(
    rest: Pin<Box<dyn Stream<Item = Result<T, ProviderError>> + Send>>,
    idle: Option<Duration>,
) -> Pin<Box<dyn Stream<Item = Result<T, ProviderError>> + Send>> {
    let Some(idle) = idle else {
        return rest;
    };
    Box::pin(stream::unfold(Some(rest), move |rest| async move {
        let mut rest = rest?;
        match tokio::time::timeout(idle, rest.next()).await {
            Ok(Some(item)) => Some((item, Some(rest))),
            Ok(None) => None,
            Err(_) => Some((Err(ProviderError::Timeout(TimeoutPhase::Idle)), None)),
        }
    }))
}

/// Anthropic events before any content: sent by the upstream as soon as it
/// accepts the request, before generation starts.
fn is_preamble(event: &str) -> bool {
    matches!(event, "message_start" | "ping")
}

/// Holds Anthropic events until the first one past `message_start` (the
/// first content block); an `error` event before it fails the attempt.
/// What follows is bounded by `idle` between events.
async fn hold_events(mut events: EventStream, idle: Option<Duration>) -> Result<Reply, ProviderError> {
    let mut held = Vec::new();
    let mut bytes = 0usize;
    loop {
        match events.next().await {
            Some(Ok(event)) if event.event == "error" => {
                return Err(switchyard_providers::anthropic::stream::error_event(&event.data));
            }
            Some(Ok(event)) => {
                let preamble = is_preamble(&event.event);
                bytes = bytes.saturating_add(event.data.len());
                held.push(Ok(event));
                if !preamble || held.len() >= MAX_HELD_EVENTS || bytes >= MAX_HELD_BYTES {
                    break;
                }
            }
            Some(Err(e)) => return Err(e),
            // Closed after `message_start` without content or `message_stop`.
            None => {
                return Err(ProviderError::Stream(
                    "the upstream closed the stream before any content".into(),
                ));
            }
        }
    }
    Ok(Reply::Events(Box::pin(
        stream::iter(held).chain(bounded_silence(events, idle)),
    )))
}

/// Bounds the wait for a stream's first output (its response head, then
/// past its first events: a role-only chunk, `message_start`, pings) by the
/// deployment's first-byte timeout, one window from sending the request, so
/// an upstream that accepts a request and then stalls is retried instead of
/// holding the request until its total timeout.
async fn within_first_byte<T>(
    client: &ProviderClient,
    hold: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    match client.first_byte_timeout() {
        Some(limit) => tokio::time::timeout(limit, hold)
            .await
            .unwrap_or(Err(ProviderError::Timeout(TimeoutPhase::FirstByte))),
        None => hold.await,
    }
}

/// Bound on events held back before content (an upstream sending endless pings).
const MAX_HELD_EVENTS: usize = 64;

/// Bound on the bytes of the events held back before content (each may hold
/// up to 16 MiB): past it, the stream is passed on as it is.
const MAX_HELD_BYTES: usize = 4 << 20;

/// An upstream's refusal for want of credit on the gateway's account, read
/// as the 402 it means (the deployment's fault: others are tried, its words
/// are not shown to the client): Anthropic answers 400 "Your credit balance
/// is too low…" (`billing_error` on some hosts), OpenAI 429
/// `insufficient_quota`, which waiting does not clear.
fn billing_refusal(e: ProviderError) -> ProviderError {
    match e {
        ProviderError::Status {
            status: 400 | 403 | 429,
            message,
            kind,
            code,
            param,
            retry_after: _,
            details,
        } if code
            .as_deref()
            .is_some_and(|c| c == "insufficient_quota" || c == "billing_error")
            || kind.as_deref() == Some("billing_error")
            || message.to_ascii_lowercase().contains("credit balance is too low") =>
        {
            ProviderError::Status {
                status: 402,
                message,
                kind,
                code,
                param,
                retry_after: None,
                details,
            }
        }
        e => e,
    }
}

/// Whether an upstream's 400 says the model lacks what the request uses,
/// not that the request is wrong: Ollama's "llama2 does not support tools"
/// (thinking, images alike), vLLM's "\"auto\" tool choice requires
/// --enable-auto-tool-choice" (a server started without tool calling). The
/// request must use what the message names (read on this failure only).
fn lacks_capability(message: &str, call: &Call<'_>) -> bool {
    let body = match call {
        Call::Chat(req) => serde_json::to_value(&**req),
        Call::Messages(req) => serde_json::to_value(&**req),
        _ => return false,
    };
    let Ok(body) = body else {
        return false;
    };
    let message = message.to_ascii_lowercase();
    // "does not support tools" (Ollama), "doesn't support tool use in
    // streaming mode" (Bedrock's Llama, Mistral, Cohere…).
    let says = |what: &str| {
        message.contains(&format!("does not support {what}")) || message.contains(&format!("doesn't support {what}"))
    };
    let has = |name: &str| {
        body.get(name)
            .is_some_and(|v| !v.is_null() && v != &Value::Array(Vec::new()))
    };
    let tools =
        has("tools") && (says("tools") || says("tool use") || message.contains("requires --enable-auto-tool-choice"));
    let thinking = (has("reasoning_effort") || has("thinking") || has("reasoning")) && says("thinking");
    let images = (says("images") || says("vision") || says("image input")) && {
        let text = body.get("messages").map(Value::to_string).unwrap_or_default();
        text.contains("\"image_url\"") || text.contains("\"type\":\"image\"")
    };
    // "This model does not support assistant message prefill" (Claude
    // from 4.6, behind an OpenAI-compatible server).
    let prefill = says("assistant message prefill")
        && body
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| m.last())
            .and_then(|m| m.get("role"))
            .and_then(Value::as_str)
            == Some("assistant");
    tools || thinking || images || prefill
}

/// Whether an upstream's 404 says the model or deployment it was sent does
/// not exist (OpenAI's `model_not_found`, Azure's `DeploymentNotFound`, "…
/// does not exist"): the deployment's configuration, not a route the
/// server lacks.
fn names_missing_model(message: &str, code: Option<&str>) -> bool {
    let code = code.unwrap_or_default().to_ascii_lowercase().replace('_', "");
    let message = message.to_ascii_lowercase();
    code.contains("notfound")
        || message.contains("does not exist")
        // Anthropic: `{"type": "not_found_error", "message": "model: x"}`.
        || message.starts_with("model:")
        // Ollama: `model "x" not found, try pulling it first`.
        || (message.contains("model") && message.contains("not found"))
}

/// A request's prompt tokens counted against a deployment's minute from its
/// choice on: taken back when dropped, unless kept for the attempt.
struct ReservedTokens<'s> {
    state: &'s AppState,
    id: switchyard_routing::DeploymentId,
    tokens: u64,
    added_ms: u64,
    kept: bool,
}

impl<'s> ReservedTokens<'s> {
    fn add(state: &'s AppState, id: switchyard_routing::DeploymentId, tokens: u64) -> Self {
        let added_ms = state.now_ms();
        state
            .stats
            .add_tokens(id, i64::try_from(tokens).unwrap_or(i64::MAX), added_ms);
        Self {
            state,
            id,
            tokens,
            added_ms,
            kept: false,
        }
    }

    /// Keeps them for the attempt, which settles them; when they were added.
    fn keep(mut self) -> u64 {
        self.kept = true;
        self.added_ms
    }
}

impl Drop for ReservedTokens<'_> {
    fn drop(&mut self) {
        if !self.kept {
            let now = self.state.now_ms();
            self.state
                .stats
                .take_back_tokens(self.id, self.tokens, self.added_ms, now);
        }
    }
}

/// The breaker claim a request holds: the half-open probe or not.
fn claim_of(probe: bool) -> switchyard_routing::Claim {
    if probe {
        switchyard_routing::Claim::Probe
    } else {
        switchyard_routing::Claim::Closed
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn provider_kinds_take_their_genai_convention_names() {
        assert_eq!(super::genai_system("azure"), "azure.ai.openai");
        assert_eq!(super::genai_system("bedrock"), "aws.bedrock");
        assert_eq!(super::genai_system("anthropic"), "anthropic");
        assert_eq!(super::genai_system("openai"), "openai");
    }

    use super::*;

    /// An Anthropic-format answer without usage counts what it is charged
    /// against the deployment's minute, not nothing.
    #[test]
    fn a_native_answer_without_usage_counts_its_estimate() {
        let with = Bytes::from_static(br#"{"content":[],"usage":{"input_tokens":7,"output_tokens":3}}"#);
        assert_eq!(native_tokens(&with, 100), 10);
        let without = Bytes::from_static(br#"{"content":[{"type":"text","text":"12345678"}]}"#);
        assert_eq!(native_tokens(&without, 100), 102);
        let null = Bytes::from_static(br#"{"content":[{"type":"text","text":"1234"}],"usage":null}"#);
        assert_eq!(native_tokens(&null, 100), 101);
    }

    /// A refusal of a capability the request uses sends it to another
    /// deployment, in Ollama's words and Bedrock's.
    #[test]
    fn refusals_of_a_capability_are_recognised() {
        let mut req: switchyard_api::ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f"}}]
        }))
        .unwrap();
        for message in [
            "registry.ollama.ai/library/gemma:2b does not support tools",
            "This model doesn't support tool use in streaming mode.",
        ] {
            assert!(lacks_capability(message, &Call::Chat(&mut req)), "{message}");
        }
        assert!(!lacks_capability("Malformed input request", &Call::Chat(&mut req)));
        req.extra.remove("tools");
        assert!(!lacks_capability(
            "This model doesn't support tool use in streaming mode.",
            &Call::Chat(&mut req)
        ));
    }

    /// Claude from 4.6 behind an OpenAI-compatible server refuses to continue
    /// an assistant message: another deployment may take the request.
    #[test]
    fn a_refused_prefill_is_a_capability_the_deployment_lacks() {
        let message =
            "This model does not support assistant message prefill. The conversation must end with a user message.";
        let mut prefill: switchyard_api::ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure,"}]
        }))
        .unwrap();
        assert!(lacks_capability(message, &Call::Chat(&mut prefill)));
        let mut ends_with_user: switchyard_api::ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap();
        assert!(!lacks_capability(message, &Call::Chat(&mut ends_with_user)));
    }

    #[test]
    fn output_chunks_are_recognised() {
        let no = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","function_call":null,"audio":null}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":""}]}"#,
            // Azure's first chunk: prompt filter results only.
            r#"{"choices":[],"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}"#,
        ];
        let yes = [
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]}"#,
            r#"{"choices":[{"index":0,"text":"Hi"}]}"#,
            r#"{"choices":[{"index":0,"delta":{"function_call":{"name":"f","arguments":""}}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"audio":{"id":"a","data":"UklGR"}}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"total_tokens":3}}"#,
        ];
        assert!(no.iter().all(|c| !switchyard_providers::sse::is_output(c.as_bytes())));
        assert!(yes.iter().all(|c| switchyard_providers::sse::is_output(c.as_bytes())));
    }

    #[tokio::test]
    async fn a_stream_that_ends_before_output_fails_the_attempt() {
        let chunk = |data: &str| {
            Ok(switchyard_providers::StreamChunk {
                data: Bytes::from(data.to_owned()),
                usage: None,
            })
        };
        let role_only = stream::iter(vec![chunk(r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#)]);
        assert!(matches!(
            hold_chunks(Box::pin(role_only), None).await,
            Err(ProviderError::Stream(_))
        ));
        let answered = stream::iter(vec![
            chunk(r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#),
            chunk(r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#),
        ]);
        assert!(hold_chunks(Box::pin(answered), None).await.is_ok());

        let event = |name: &str| {
            Ok(switchyard_providers::sse::Event {
                event: name.to_owned(),
                data: "{}".to_owned(),
                id: String::new(),
                retry: None,
            })
        };
        let started_only = stream::iter(vec![event("message_start"), event("ping")]);
        assert!(matches!(
            hold_events(Box::pin(started_only), None).await,
            Err(ProviderError::Stream(_))
        ));
        let content = stream::iter(vec![event("message_start"), event("content_block_start")]);
        assert!(hold_events(Box::pin(content), None).await.is_ok());
    }

    #[tokio::test]
    async fn large_chunks_before_output_are_not_held_past_the_byte_bound() {
        // Two 3 MiB chunks without output, then nothing for ever: the hold
        // stops at the bound instead of waiting (and buffering) on.
        let big = format!(r#"{{"choices":[],"x":"{}"}}"#, "a".repeat(3 << 20));
        let chunks = stream::iter(vec![
            Ok(switchyard_providers::StreamChunk {
                data: Bytes::from(big.clone()),
                usage: None,
            }),
            Ok(switchyard_providers::StreamChunk {
                data: Bytes::from(big),
                usage: None,
            }),
        ])
        .chain(stream::pending());
        let held = tokio::time::timeout(Duration::from_secs(30), hold_chunks(Box::pin(chunks), None)).await;
        assert!(matches!(held, Ok(Ok(_))), "held on past the bound");
    }

    #[test]
    fn refusals_for_want_of_credit_are_402s() {
        let status = |status: u16, message: &str, code: Option<&str>| ProviderError::Status {
            status,
            message: message.into(),
            kind: None,
            code: code.map(str::to_owned),
            param: None,
            retry_after: Some(Duration::from_secs(1)),
            details: None,
        };
        for e in [
            status(400, "Your credit balance is too low to access the Anthropic API.", None),
            status(429, "You exceeded your current quota.", Some("insufficient_quota")),
        ] {
            assert!(
                matches!(
                    billing_refusal(e),
                    ProviderError::Status {
                        status: 402,
                        retry_after: None,
                        ..
                    }
                ),
                "a billing refusal"
            );
        }
        for e in [
            status(429, "Rate limit reached", Some("rate_limit_exceeded")),
            status(400, "max_tokens too large", None),
        ] {
            assert!(!matches!(billing_refusal(e), ProviderError::Status { status: 402, .. }));
        }
    }

    #[test]
    fn a_404_naming_a_missing_model_is_not_a_missing_route() {
        assert!(names_missing_model(
            "The model `gpt-3.5-turbo-instrut` does not exist or you do not have access to it.",
            Some("model_not_found")
        ));
        assert!(names_missing_model(
            "The API deployment for this resource does not exist.",
            Some("DeploymentNotFound")
        ));
        assert!(names_missing_model(
            "model \"llava\" not found, try pulling it first",
            None
        ));
        // Anthropic's: `{"type": "not_found_error", "message": "model: x"}`.
        assert!(names_missing_model("model: claude-sonnet-typo", None));
        assert!(!names_missing_model("Not Found", None));
        assert!(!names_missing_model("Invalid URL (POST /v1/rerank)", None));
        assert!(!names_missing_model(
            "This is a chat model and not supported in the v1/completions endpoint.",
            None
        ));
    }

    #[test]
    fn gateway_fields_are_taken_out_of_the_request() {
        let mut extra: Extra =
            serde_json::from_str(r#"{"fallbacks":["b"],"num_retries":1,"timeout":2.5,"temperature":0.2}"#).unwrap();
        let options = RequestOptions::take(&mut extra).unwrap();
        assert_eq!(options.fallbacks, Some(vec!["b".to_owned()]));
        assert_eq!(options.num_retries, Some(1));
        assert_eq!(options.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(extra.len(), 1, "other fields stay");
        for (body, param) in [
            (r#"{"fallbacks":"b"}"#, "fallbacks"),
            (r#"{"fallbacks":[1]}"#, "fallbacks[0]"),
            (r#"{"num_retries":1.5}"#, "num_retries"),
            (r#"{"timeout":-1}"#, "timeout"),
        ] {
            let mut extra: Extra = serde_json::from_str(body).unwrap();
            let err = RequestOptions::take(&mut extra).unwrap_err();
            assert_eq!(err.parts().2.as_deref(), Some(param), "{body}");
        }
    }
}
