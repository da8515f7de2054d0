//! The HTTP surface: OpenAI-compatible endpoints (with and without `/v1`),
//! health checks, and JSON errors for unknown routes and methods.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;
use std::time::Instant;
use switchyard_api::{
    AnthropicModel, AnthropicModelList, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ModelList,
    ModelObject,
};
use switchyard_providers::ProviderError;

use switchyard_routing::{ErrorClass, InFlight};
use tower_http::catch_panic::CatchPanicLayer;

use crate::cache::{self, Controls, Lookup};
use crate::dispatch::{Call, Decision, Failed, Reply, RequestOptions, Served, dispatch};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::messages::AnthropicError;
use crate::metering;
use crate::observe::{RequestContext, Trail};
use crate::state::AppState;
use crate::stream::{StreamTracker, sse_response};
use switchyard_cache::{CachedAnswer, CachedBody};
use switchyard_policy::{KeyView, Principal};
use tracing::Instrument as _;
use tracing::field::Empty;

/// Shared state handed to handlers.
pub type SharedState = Arc<AppState>;

/// Builds the router.
///
/// Layers, outermost first:
/// 0. CORS, only with `server.cors_allowed_origins`: preflights are answered
///    before any other layer.
/// 1. `CatchPanicLayer` — a panic in a handler becomes a 500 JSON error, never a dead process.
/// 2. `DefaultBodyLimit` — bodies over `server.max_body_bytes` are rejected (413) while
///    [`JsonBody`] reads them.
pub fn router(state: SharedState) -> Router {
    let limit = state.server.max_body_bytes;
    let api = Router::new()
        .route("/chat/completions", post(chat_completions))
        .route("/completions", post(completions))
        .route("/embeddings", post(embeddings))
        .route("/images/generations", post(crate::media::images))
        .route("/images/edits", post(crate::media::image_edits))
        .route("/moderations", post(crate::media::moderations))
        .route("/audio/speech", post(crate::media::speech))
        .route("/audio/transcriptions", post(crate::media::transcriptions))
        .route("/audio/translations", post(crate::media::translations))
        .route("/rerank", post(crate::media::rerank))
        .route("/models", get(models))
        .route("/models/{*model}", get(model))
        .route("/model/info", get(model_info))
        .route("/model_group/info", get(model_group_info))
        .route("/messages", post(crate::messages::messages))
        .route("/messages/count_tokens", post(crate::messages::count_tokens))
        .route("/responses", post(crate::responses::create))
        .route("/feedback", post(feedback))
        .merge(crate::deployment_paths::routes(&state.pass_through));
    // Stored responses are read, cancelled and deleted outside the
    // concurrency limit: background responses hold its slots while they
    // run, and a cancel must reach them when they are what fills it.
    let stored = Router::new()
        .route(
            "/responses/{id}",
            get(crate::responses::retrieve).delete(crate::responses::delete),
        )
        .route("/responses/{id}/input_items", get(crate::responses::input_items))
        .route("/responses/{id}/cancel", post(crate::responses::cancel));
    let stored = Router::new()
        .merge(stored.clone())
        .nest("/v1", stored)
        .route_layer(middleware::from_fn_with_state(state.clone(), metering::authenticate));
    let client = Router::new()
        .merge(api.clone())
        .nest("/v1", api)
        // Cohere's clients call version 2.
        .route("/v2/rerank", post(crate::media::rerank))
        .route_layer(middleware::from_fn_with_state(state.clone(), metering::authenticate))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            metering::limit_concurrency,
        ));
    let admin = crate::policy_admin::routes()
        .route("/health", get(crate::admin::health))
        .route_layer(middleware::from_fn_with_state(state.clone(), metering::require_master));
    // A virtual key may read its own info, as LiteLLM's tools expect.
    let key_info = crate::policy_admin::key_info_route()
        .route_layer(middleware::from_fn_with_state(state.clone(), metering::authenticate));
    // Read-only status: open on a gateway without keys, the master key's otherwise.
    let status = Router::new()
        .route("/admin/deployments", get(crate::admin::deployments))
        .route("/admin/routers", get(crate::admin::routers))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            metering::require_master_if_set,
        ));
    let cors = cors(&state.server.cors_allowed_origins);
    if state.server.cors_allowed_origins.iter().any(|o| o == "*") && !state.policy.auth_required() {
        tracing::warn!(
            "server.cors_allowed_origins is `*` and no key is required: any web page a user of this network opens can call the gateway"
        );
    }
    let mut passed = Router::new();
    for (index, route) in state.pass_through.iter().enumerate() {
        let forward = move |State(state): State<SharedState>, request: axum::extract::Request| {
            crate::passthrough::forward(state, index, request)
        };
        passed = passed.route(&route.path, axum::routing::any(forward));
        if route.include_subpath {
            passed = passed
                .route(&format!("{}/", route.path), axum::routing::any(forward))
                .route(&format!("{}/{{*rest}}", route.path), axum::routing::any(forward));
        }
        if !route.auth {
            tracing::warn!(path = %route.path, "pass-through route without auth: anyone who reaches the gateway calls its target with its credentials");
        } else if !state.policy.auth_required() {
            tracing::warn!(path = %route.path, "pass-through route on a gateway that requires no key: it is open");
        }
    }
    // (A layer on a router without routes would be refused.)
    if !state.pass_through.is_empty() {
        passed = passed.route_layer(middleware::from_fn_with_state(
            state.clone(),
            metering::limit_concurrency,
        ));
    }
    let router = Router::new()
        .merge(client)
        .merge(stored)
        .merge(admin)
        .merge(key_info)
        .merge(status)
        .merge(passed)
        .route("/health/liveness", get(liveness))
        // LiteLLM's spelling, which its Helm chart and manifests probe.
        .route("/health/liveliness", get(liveness))
        .route("/health/readiness", get(readiness))
        .route("/metrics", get(metrics))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("an unexpected error occurred".into()).into_response()
        }))
        .layer(middleware::from_fn_with_state(state.clone(), crate::observe::observe))
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Answers browsers' CORS preflights and marks answers readable by the
/// allowed origins; none without any (no layer: an `OPTIONS` request gets
/// the usual 405). Outermost, so preflights need no key.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Browsers send origins in lower case, without a default port.
        AllowOrigin::list(origins.iter().filter_map(|o| {
            let o = o.to_ascii_lowercase();
            let o = match (o.strip_suffix(":443"), o.strip_suffix(":80")) {
                (Some(bare), _) if o.starts_with("https://") => bare.to_owned(),
                (_, Some(bare)) if o.starts_with("http://") => bare.to_owned(),
                _ => o,
            };
            HeaderValue::from_str(&o).ok()
        }))
    };
    // Headers are mirrored: a `*` would not cover `Authorization`.
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(Any)
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(Any)
            .max_age(std::time::Duration::from_secs(600)),
    )
}

const DEPLOYMENT_HEADER: HeaderName = HeaderName::from_static("x-switchyard-deployment");
const MODEL_HEADER: HeaderName = HeaderName::from_static("x-switchyard-model");
const STRATEGY_HEADER: HeaderName = HeaderName::from_static("x-switchyard-strategy");
const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-switchyard-attempts");
/// The id the upstream gave its answer.
pub(crate) const UPSTREAM_ID_HEADER: HeaderName = HeaderName::from_static("x-switchyard-upstream-request-id");
const ROUTER_HEADER: HeaderName = HeaderName::from_static("x-switchyard-router");
const ROUTER_CHOICE_HEADER: HeaderName = HeaderName::from_static("x-switchyard-router-choice");
const ROUTER_SCORES_HEADER: HeaderName = HeaderName::from_static("x-switchyard-router-scores");

/// The routing statistics' class of an upstream failure.
pub(crate) fn error_class(err: &ProviderError) -> ErrorClass {
    match err {
        ProviderError::Status { status: 429, .. } => ErrorClass::RateLimited,
        ProviderError::Status { status: 401 | 403, .. } if err.rejects_credentials() => ErrorClass::Auth,
        ProviderError::Status { status: 408, .. } => ErrorClass::Timeout,
        // The upstream does not know the model or deployment configured,
        // redirects elsewhere, or wants the gateway's account paid (402):
        // the deployment's fault, counted by its breaker.
        ProviderError::Status {
            status: 300..=399 | 402 | 404,
            ..
        } => ErrorClass::Other,
        ProviderError::Status { status, .. } if *status >= 500 => ErrorClass::ServerError,
        ProviderError::Status { .. } | ProviderError::InvalidRequest { .. } | ProviderError::Unsupported { .. } => {
            ErrorClass::ClientError
        }
        ProviderError::Timeout(_) => ErrorClass::Timeout,
        ProviderError::Connect(_) => ErrorClass::Connect,
        _ => ErrorClass::Other,
    }
}

/// Adds the routing decision to a response: the model group that answered,
/// the deployment, the strategy, the number of attempts and the upstream's
/// own request id; for a learned
/// router also its name, its choice and each candidate's predicted score.
pub(crate) fn with_route_headers(mut response: Response, decision: &Decision<'_>) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (MODEL_HEADER, decision.group),
        (DEPLOYMENT_HEADER, decision.deployment.name.as_str()),
        (STRATEGY_HEADER, decision.strategy),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    }
    headers.insert(ATTEMPTS_HEADER, HeaderValue::from(decision.attempts));
    if let Some(v) = decision
        .upstream_request_id
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        headers.insert(UPSTREAM_ID_HEADER, v);
    }
    if let Some(p) = &decision.prediction {
        for (name, value) in [
            (ROUTER_HEADER, p.router.clone()),
            (ROUTER_CHOICE_HEADER, p.ranked[0].clone()),
            (ROUTER_SCORES_HEADER, p.scores_header()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }
    response
}

/// A failed request's error response, with the number of attempts made
/// and the id the last upstream to answer gave its answer.
pub(crate) fn failure_response(mut response: Response, attempts: u32, upstream_request_id: Option<&str>) -> Response {
    if attempts > 0 {
        response
            .headers_mut()
            .insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
    }
    if let Some(v) = upstream_request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        response.headers_mut().insert(UPSTREAM_ID_HEADER, v);
    }
    response
}

fn json_bytes(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Follows a served stream for the statistics until it ends.
pub(crate) fn tracker(
    state: &SharedState,
    decision: &Decision<'_>,
    in_flight: InFlight,
    started: Instant,
) -> StreamTracker {
    StreamTracker::new(state.clone(), decision.deployment.id, started, in_flight)
        .anyway(decision.anyway)
        .labelled(decision.group.to_owned(), decision.deployment.name.clone())
        .counting(decision.estimated_tokens, decision.estimated_at_ms)
        .spanned(tracing::Span::current(), state.telemetry.capture_content)
}

/// Asks a streaming upstream for its final usage chunk (to charge the
/// request) when the client did not; `true` when the client must not see it.
fn request_stream_usage(call: &mut Call<'_>) -> bool {
    let options = match call {
        Call::Chat(req) if req.is_stream() && !req.wants_stream_usage() => &mut req.stream_options,
        Call::Completion(req) if req.is_stream() && !req.wants_stream_usage() => &mut req.stream_options,
        _ => return false,
    };
    options.get_or_insert_with(Default::default).include_usage = Some(true);
    true
}

/// Dispatches an OpenAI-format request and renders its answer; answers
/// from the response cache when it holds one.
async fn openai(
    state: SharedState,
    principal: &Principal,
    ctx: &RequestContext,
    model: &str,
    call: Call<'_>,
    options: RequestOptions,
    controls: Controls,
) -> Response {
    let operation = call.operation();
    // An alias is served as its group; its own name only counts for the
    // key's allow-list.
    let requested = model;
    let model = state.group_name(requested);
    // Behind a wildcard group, the model asked for (which it matched).
    let span_model = crate::observe::span_model(&state, requested, model);
    let span = tracing::debug_span!(
        target: "switchyard",
        "gen_ai",
        otel.name = format!("{operation} {}", crate::observe::span_name_model(&state, requested, model)),
        "gen_ai.operation.name" = operation,
        "gen_ai.request.model" = span_model,
        "gen_ai.response.model" = Empty,
        "gen_ai.usage.input_tokens" = Empty,
        "gen_ai.usage.output_tokens" = Empty,
        "switchyard.deployment" = Empty,
        "switchyard.cache" = Empty,
        "error.type" = Empty,
        otel.status_code = Empty,
    );
    let mut response = openai_inner(
        state.clone(),
        principal,
        ctx,
        (requested, model),
        call,
        options,
        controls,
    )
    .instrument(span.clone())
    .await;
    crate::observe::record_failure(&span, &response);
    crate::observe::label_failure(&state, model, &mut response);
    response
}

#[allow(clippy::too_many_arguments)]
async fn openai_inner(
    state: SharedState,
    principal: &Principal,
    ctx: &RequestContext,
    (requested, model): (&str, &str),
    mut call: Call<'_>,
    mut options: RequestOptions,
    controls: Controls,
) -> Response {
    state.restrict(&mut options, principal.view().map(|v| &**v));
    options.upstream_ns = Some(ctx.upstream_ns.clone());
    options.wildcard = state.wildcard_part(requested).map(str::to_owned);
    if state.tag_filtering {
        options.route_tags.clone_from(&options.labels.tags);
    }
    // A wildcard group's name is a pattern: the log keeps the model asked for.
    let logged = if options.wildcard.is_some() { requested } else { model };
    let mut trail = Trail::start(&state, ctx, principal, logged, &call);
    if state.telemetry.log_payloads {
        tracing::info!(target: "switchyard::payload", request_id = %ctx.id, prompt = call.query_text().unwrap_or_default(), "request payload");
    }
    let labels = metering::take_labels(&state, &mut options, trail.as_mut());
    crate::observe::capture_prompt(
        &state,
        &call,
        labels.end_user.as_deref().filter(|_| !labels.hide_end_user),
    );
    let meter = match metering::admit(
        &state,
        principal,
        &ctx.id,
        requested,
        &call,
        options.fallbacks.as_deref(),
        labels,
    )
    .await
    {
        Ok(meter) => meter,
        Err(e) => {
            if let Some(t) = trail {
                t.finish(e.parts().0.as_u16(), Some(&e));
            }
            return e.into_response();
        }
    };
    state.resolve_fallbacks(&mut options.fallbacks);
    options.prompt_tokens = Some(meter.estimated_prompt());
    let strip_usage = request_stream_usage(&mut call);
    let mut extra_headers = Response::new(axum::body::Body::empty());
    meter.headers(&mut extra_headers);
    let extra_headers = extra_headers.into_parts().0.headers;
    let mut pending = None;
    // A wildcard group's answers are not kept: the model asked for is not
    // part of their key; nor a tag-routed request's, whose tags chose the
    // deployments that may answer.
    if let Some(cache) = state
        .cache
        .as_ref()
        .filter(|_| options.wildcard.is_none() && options.route_tags.is_empty() && crate::cache::applies(&call))
    {
        let lookup_span = tracing::debug_span!(
            target: "switchyard",
            "cache lookup",
            otel.name = "switchyard.cache.lookup",
            "switchyard.cache.result" = Empty,
            "switchyard.cache.similarity" = Empty,
        );
        // For a learned router, which candidates may answer follows from
        // each of the caller's lists: answers are shared among callers
        // with the same lists.
        let learned_scope: Option<Vec<String>> = options
            .allowed_lists
            .as_ref()
            .map(|lists| lists.iter().map(|list| list.join("\u{1}")).collect());
        let found = cache
            .lookup(
                state.embedder.as_ref(),
                model,
                state.cache_generations.get(model).map_or("", String::as_str),
                principal,
                &call,
                controls,
                learned_scope.as_deref().filter(|_| state.learned.contains_key(model)),
            )
            .instrument(lookup_span.clone())
            .await;
        let result = match &found {
            Some(Lookup::Hit { similarity: None, .. }) => "hit",
            Some(Lookup::Hit { .. }) => "semantic_hit",
            Some(Lookup::Miss(_)) => "miss",
            None => "bypass",
        };
        lookup_span.record("switchyard.cache.result", result);
        tracing::Span::current().record("switchyard.cache", result);
        state.metrics.cache(model, result);
        match found {
            Some(Lookup::Hit { answer, similarity }) => {
                if let Some(sim) = similarity {
                    lookup_span.record("switchyard.cache.similarity", f64::from(sim));
                }
                // An answer in hand: a shutdown lets it be charged and sent.
                mark_answered();
                let (mut response, record) = serve_hit(&state, meter, model, &answer, similarity, strip_usage).await;
                if let Some(mut t) = trail {
                    t.cache(true, Some(&answer.deployment));
                    t.charged(record.as_ref().map(|r| r.usage), record.as_ref());
                    t.finish(200, None);
                }
                response.headers_mut().extend(extra_headers);
                return response;
            }
            Some(Lookup::Miss(p)) => {
                if let Some(t) = trail.as_mut() {
                    t.cache(false, None);
                }
                pending = Some(p);
            }
            None => {}
        }
    }
    let Served {
        reply,
        decision,
        in_flight,
        started,
    } = match dispatch(&state, model, &mut call, &options).await {
        Ok(served) => served,
        Err(failed) => {
            if let Some(mut t) = trail {
                t.failed(&failed);
                t.finish(failed.error.parts().0.as_u16(), Some(&failed.error));
            }
            let Failed {
                error,
                attempts,
                upstream_request_id,
                ..
            } = failed;
            let mut response = failure_response(error.into_response(), attempts, upstream_request_id.as_deref());
            response.headers_mut().extend(extra_headers);
            return response;
        }
    };
    let current = tracing::Span::current();
    current.record("switchyard.deployment", decision.deployment.name.as_str());
    current.record(
        "gen_ai.response.model",
        crate::observe::clip_start(
            &crate::dispatch::upstream_model(decision.deployment, options.wildcard.as_deref()),
            crate::observe::MAX_LOGGED_MODEL,
        ),
    );
    if let Some(t) = trail.as_mut() {
        t.routed(&decision);
    }
    // An answer from a fallback group is not kept as the requested group's.
    let primary = decision.prediction.as_ref().map_or(model, |p| p.ranked[0].as_str());
    // A `no-store` answer is not recorded for the cache at all.
    let keep = pending.as_ref().filter(|p| p.stores() && decision.group == primary);
    let mut response = match reply {
        Reply::Json(answer) => {
            // The upstream is done: the deployment is no longer busy with it.
            drop(in_flight);
            // Without the upstream's usage: the estimated prompt, and output
            // by the answer's length.
            let generates = matches!(call, Call::Chat(_) | Call::Completion(_));
            // `echo: true` completions repeat their prompt in each choice's
            // text: it is not output.
            let echoed = match &call {
                Call::Completion(req) if req.extra.get("echo") == Some(&serde_json::Value::Bool(true)) => {
                    let choices = req
                        .extra
                        .get("n")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(1)
                        .max(1);
                    meter.estimated_prompt().saturating_mul(choices)
                }
                _ => 0,
            };
            let mut usage = match (&call, answer.usage.as_ref()) {
                // Embeddings take input tokens only, which some servers
                // (Voyage AI) report as `total_tokens` alone; a usage that
                // counts none is charged the estimate, not nothing.
                (Call::Embeddings(_), Some(u)) => Some(switchyard_policy::TokenUsage {
                    prompt: match u.prompt_tokens.max(u.total_tokens) {
                        0 => meter.estimated_prompt(),
                        tokens => tokens,
                    },
                    ..switchyard_policy::TokenUsage::default()
                }),
                (_, usage) => usage.map(metering::openai_usage),
            }
            .or_else(|| {
                generates.then(|| switchyard_policy::TokenUsage {
                    prompt: meter.estimated_prompt(),
                    completion: metering::output_estimate(&answer.body).saturating_sub(echoed).max(1),
                    ..switchyard_policy::TokenUsage::default()
                })
            });
            // Images are charged per image and, for GPT image models, by
            // their tokens; moderations by their prompt at the
            // deployment's (usually zero) prices.
            let mut extra = 0;
            let prices = meter.prices(&state, decision.deployment.id).unwrap_or_default();
            if let Some((tokens, cost)) = crate::media::charge(&prices, &call, &answer.body, meter.estimated_prompt()) {
                usage = Some(tokens);
                extra = cost;
            }
            let record = meter
                .settle_with(&state, decision.deployment.id, &decision.deployment.name, usage, extra)
                .await;
            if let Some(u) = usage {
                current.record("gen_ai.usage.input_tokens", i64::try_from(u.prompt).unwrap_or(i64::MAX));
                current.record(
                    "gen_ai.usage.output_tokens",
                    i64::try_from(u.completion).unwrap_or(i64::MAX),
                );
            }
            if state.telemetry.log_payloads {
                tracing::info!(target: "switchyard::payload", request_id = %ctx.id, completion = %String::from_utf8_lossy(&answer.body), "response payload");
            }
            // Text answers only: not embeddings' vectors nor images' data.
            if state.telemetry.capture_content && matches!(call, Call::Chat(_) | Call::Completion(_)) {
                switchyard_telemetry::set_exported_attribute(
                    &current,
                    "gen_ai.completion",
                    crate::observe::captured_answer(&answer.body),
                );
            }
            if let Some(t) = trail.take() {
                let mut t = t;
                t.charged(usage, record.as_ref());
                t.finish(200, None);
            }
            // Too big to keep: not read for nothing.
            let keep = keep
                .filter(|_| state.cache.as_ref().is_some_and(|c| c.fits(answer.body.len())))
                .filter(|p| crate::cache::keepable([&answer.body[..]], p.json_shape()));
            if let (Some(_), Some(pending)) = (&state.cache, keep) {
                let stored = CachedAnswer {
                    body: CachedBody::Json(String::from_utf8_lossy(&answer.body).into_owned()),
                    deployment: decision.deployment.name.clone(),
                    // The tokens charged (an estimate for embeddings
                    // without the upstream's usage), as the hits' log shows.
                    prompt_tokens: record
                        .as_ref()
                        .map_or_else(|| usage.map_or(0, |u| u.prompt), |r| r.usage.prompt),
                    completion_tokens: record
                        .as_ref()
                        .map_or_else(|| usage.map_or(0, |u| u.completion), |r| r.usage.completion),
                    cache_read_tokens: record
                        .as_ref()
                        .map_or_else(|| usage.map_or(0, |u| u.cache_read), |r| r.usage.cache_read),
                    cache_write_tokens: record
                        .as_ref()
                        .map_or_else(|| usage.map_or(0, |u| u.cache_write), |r| r.usage.cache_write),
                    cache_write_1h_tokens: record
                        .as_ref()
                        .map_or_else(|| usage.map_or(0, |u| u.cache_write_1h), |r| r.usage.cache_write_1h),
                    web_searches: record
                        .as_ref()
                        .map_or_else(|| usage.map_or(0, |u| u.web_searches), |r| r.usage.web_searches),
                    // The answer's price even when its charge could not be
                    // recorded, so later hits are not free.
                    cost_nanos: record.as_ref().map_or_else(
                        || usage.map_or(0, |u| prices.cost(&u).saturating_add(extra)),
                        |r| r.cost_nanos,
                    ),
                    created_ms: 0,
                    ttl_secs: 0,
                };
                match &state.cache {
                    // In process: stored before the answer goes, so the
                    // next identical request finds it.
                    Some(cache) if cache.is_local() => cache.store_answer(pending, stored).await,
                    // Redis: stored off the answer's path, which a slow
                    // Redis does not delay.
                    _ => {
                        let state = state.clone();
                        let pending = pending.clone();
                        tokio::spawn(async move {
                            if let Some(cache) = &state.cache {
                                cache.store_answer(&pending, stored).await;
                            }
                        });
                    }
                }
            }
            let mut response = json_bytes(answer.body);
            metering::cost_header(&mut response, record.as_ref());
            response
        }
        Reply::Chunks(chunks) => {
            let estimated_prompt = meter.estimated_prompt();
            // As the stream is charged (a wildcard group's deployment at
            // the model asked for), for the answer kept in the cache.
            let prices = meter.prices(&state, decision.deployment.id);
            let mut tracker =
                tracker(&state, &decision, in_flight, started).metered(meter, decision.deployment.name.clone());
            if let Some(mut t) = trail.take() {
                t.first_byte();
                tracker = tracker.with_trail(t);
            }
            // A translation that reads this stream (the Responses API) says
            // through it why it stopped reading early.
            let fault = tracker.fault();
            let chunks = tracker.follow(chunks);
            let chunks = match keep.cloned() {
                Some(pending) => {
                    let state = state.clone();
                    let name = decision.deployment.name.clone();
                    let limit = state.cache.as_ref().map_or(0, |c| c.max_entry_bytes);
                    crate::cache::record_stream(chunks, limit, move |seen| {
                        if !crate::cache::keepable(seen.iter().map(String::as_bytes), crate::cache::Shape::Stream) {
                            return;
                        }
                        tokio::spawn(async move {
                            let usage = crate::cache::stream_usage(&seen);
                            // Without the upstream's usage, what the stream was
                            // charged: so later hits are not free.
                            let usage = usage.as_ref().map(metering::openai_usage).or_else(|| {
                                Some(switchyard_policy::TokenUsage {
                                    prompt: estimated_prompt,
                                    completion: u64::try_from(seen.len()).unwrap_or(u64::MAX),
                                    ..switchyard_policy::TokenUsage::default()
                                })
                            });
                            let cost = match (usage, prices) {
                                (Some(u), Some(p)) => p.cost(&u),
                                _ => 0,
                            };
                            let stored = CachedAnswer {
                                body: CachedBody::Chunks(seen),
                                deployment: name,
                                prompt_tokens: usage.map_or(0, |u| u.prompt),
                                completion_tokens: usage.map_or(0, |u| u.completion),
                                cache_read_tokens: usage.map_or(0, |u| u.cache_read),
                                cache_write_tokens: usage.map_or(0, |u| u.cache_write),
                                cache_write_1h_tokens: usage.map_or(0, |u| u.cache_write_1h),
                                web_searches: usage.map_or(0, |u| u.web_searches),
                                cost_nanos: cost,
                                created_ms: 0,
                                ttl_secs: 0,
                            };
                            if let Some(cache) = &state.cache {
                                cache.store_answer(&pending, stored).await;
                            }
                        });
                    })
                }
                None => chunks,
            };
            let mut response = sse_response(chunks, decision.deployment.name.clone(), strip_usage);
            response.extensions_mut().insert(fault);
            response
        }
        Reply::Media(answer) => {
            drop(in_flight);
            let prices = meter.prices(&state, decision.deployment.id).unwrap_or_default();
            let charged = crate::media::charge(&prices, &call, &answer.body, meter.estimated_prompt());
            let (usage, extra) = charged.map_or((None, 0), |(u, extra)| (Some(u), extra));
            let record = meter
                .settle_with(&state, decision.deployment.id, &decision.deployment.name, usage, extra)
                .await;
            if let Some(u) = usage {
                current.record("gen_ai.usage.input_tokens", i64::try_from(u.prompt).unwrap_or(i64::MAX));
                current.record(
                    "gen_ai.usage.output_tokens",
                    i64::try_from(u.completion).unwrap_or(i64::MAX),
                );
            }
            if let Some(mut t) = trail.take() {
                t.charged(usage, record.as_ref());
                t.finish(200, None);
            }
            let (body, content_type) = crate::media::delivered(&call, answer);
            let mut response = body.into_response();
            if let Ok(kind) = HeaderValue::from_str(&content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, kind);
            }
            metering::cost_header(&mut response, record.as_ref());
            response
        }
        Reply::Audio(audio) => {
            // Charged by its text, known before a byte of audio: the audio
            // goes on to the client as it arrives, the deployment counted
            // busy until it has.
            let prices = meter.prices(&state, decision.deployment.id).unwrap_or_default();
            let charged = crate::media::charge(&prices, &call, &[], meter.estimated_prompt());
            let (usage, extra) = charged.map_or((None, 0), |(u, extra)| (Some(u), extra));
            let record = meter
                .settle_with(&state, decision.deployment.id, &decision.deployment.name, usage, extra)
                .await;
            if let Some(u) = usage {
                current.record("gen_ai.usage.input_tokens", i64::try_from(u.prompt).unwrap_or(i64::MAX));
            }
            // Recorded once the audio has gone: whole, or how it ended.
            let trail = trail.take().map(|mut t| {
                t.charged(usage, record.as_ref());
                t
            });
            let ended = move |outcome: Option<(u16, &'static str)>| {
                if let Some(t) = trail {
                    match outcome {
                        None => t.finish(200, None),
                        Some((status, class)) => t.finish_with(status, Some(class.into())),
                    }
                }
            };
            // The client's pace, bounded by `server.stream_write_timeout_ms`
            // and the shutdown's cut, as a stream's.
            let body = crate::stream::paced_bytes(
                audio.body,
                in_flight,
                std::time::Duration::from_millis(state.server.stream_write_timeout_ms),
                state.cut.subscribe(),
                decision.deployment.name.clone(),
                ended,
            );
            let mut response = body.into_response();
            if let Ok(kind) = HeaderValue::from_str(&audio.content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, kind);
            }
            metering::cost_header(&mut response, record.as_ref());
            response
        }
        Reply::Native(_) | Reply::Events(_) => {
            let error = ApiError::Internal("an Anthropic-format answer to an OpenAI-format request".into());
            // Logged as the 500 it is, not as a client that left.
            if let Some(t) = trail.take() {
                t.finish(500, Some(&error));
            }
            error.into_response()
        }
    };
    if pending.is_some() {
        cache::mark(&mut response, false, None);
    }
    response.headers_mut().extend(extra_headers);
    with_route_headers(response, &decision)
}

/// Answers from the cache: charged at the cache's rate and marked as a hit.
async fn serve_hit(
    state: &SharedState,
    meter: metering::Metered,
    model: &str,
    answer: &CachedAnswer,
    similarity: Option<f32>,
    strip_usage: bool,
) -> (Response, Option<switchyard_policy::SpendRecord>) {
    let ratio = state.cache.as_ref().map_or(0.0, |c| c.hit_cost_ratio);
    // A stored cost is never a credit.
    let cost = (answer.cost_nanos.max(0) as f64 * ratio).round() as i64;
    // The original token counts, its prompt cache's share included.
    let usage = switchyard_policy::TokenUsage {
        prompt: answer.prompt_tokens,
        completion: answer.completion_tokens,
        cache_read: answer.cache_read_tokens,
        cache_write: answer.cache_write_tokens,
        cache_write_1h: answer.cache_write_1h_tokens,
        web_searches: answer.web_searches,
    };
    let record = meter.settle_cached(state, &answer.deployment, usage, cost).await;
    let mut response = cache::replay(answer, strip_usage);
    metering::cost_header(&mut response, record.as_ref());
    cache::mark(&mut response, true, similarity);
    let headers = response.headers_mut();
    // The group that produced the answer (`group/index` names its
    // deployment), as a live answer names it: a learned router's choice, an
    // alias's group.
    let group = answer.deployment.rsplit_once('/').map_or(model, |(group, _)| group);
    for (name, value) in [(MODEL_HEADER, group), (DEPLOYMENT_HEADER, answer.deployment.as_str())] {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    }
    headers.insert(ATTEMPTS_HEADER, HeaderValue::from(0));
    (response, record)
}

/// Takes the gateway's own fields (routing options, cache controls) out of a
/// request body, before it goes upstream.
pub(crate) fn gateway_fields(
    extra: &mut switchyard_api::Extra,
    headers: &HeaderMap,
) -> Result<(RequestOptions, Controls), ApiError> {
    let mut options = RequestOptions::take(extra)?;
    let controls = Controls::take(extra, headers)?;
    options.labels = crate::labels::take(extra, headers)?;
    Ok((options, controls))
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    JsonBody(mut req): JsonBody<ChatCompletionRequest>,
) -> Response {
    if req.messages.is_empty() {
        return ApiError::InvalidField {
            param: Some("messages".into()),
            message: "'messages' must contain at least one message.".into(),
        }
        .into_response();
    }
    let (options, controls) = match gateway_fields(&mut req.extra, &headers) {
        Ok(fields) => fields,
        Err(e) => return e.into_response(),
    };
    let model = std::mem::take(&mut req.model);
    serve_detached(state, principal, ctx, model, req, |r| Call::Chat(r), options, controls).await
}

/// Refuses a learned router's name for a request it cannot route (one
/// without a chat prompt). Refused before admission, which would count it
/// against the key's limits; a key not allowed the name gets admission's
/// 403, which tells nothing of what it names.
pub(crate) fn not_a_learned_router(state: &AppState, principal: &Principal, model: &str) -> Result<(), ApiError> {
    let group = state.group_name(model);
    if state.learned.contains_key(group) && principal.view().is_none_or(|v| state.allows(v, model)) {
        return Err(ApiError::InvalidField {
            param: Some("model".into()),
            message: format!("`{model}` is a learned router; it serves chat, completion and message requests."),
        });
    }
    Ok(())
}

/// Serves `req` through [`openai`] on a task of its own ([`detached`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_detached<R: Send + 'static>(
    state: SharedState,
    principal: Principal,
    ctx: RequestContext,
    model: String,
    mut req: R,
    call: for<'a> fn(&'a mut R) -> Call<'a>,
    options: RequestOptions,
    controls: Controls,
) -> Response {
    detached(&state.clone(), async move {
        openai(state, &principal, &ctx, &model, call(&mut req), options, controls).await
    })
    .await
}

tokio::task_local! {
    /// Set when the client of the request this task serves has left.
    static CLIENT_GONE: Arc<std::sync::atomic::AtomicBool>;
    /// Set once the request this task serves has its upstream's answer.
    static ANSWERED: Arc<std::sync::atomic::AtomicBool>;
}

/// Notes that the request this task serves has its upstream's answer (a
/// request run by [`detached`]): a shutdown lets it finish.
pub(crate) fn mark_answered() {
    let _ = ANSWERED.try_with(|answered| answered.store(true, std::sync::atomic::Ordering::Release));
}

/// Whether the client of the request this task serves has left (a request
/// run by [`detached`]): retries and fallbacks stop there.
pub(crate) fn client_gone() -> bool {
    CLIENT_GONE
        .try_with(|gone| gone.load(std::sync::atomic::Ordering::Acquire))
        .unwrap_or(false)
}

/// Handles a request on a task of its own, so that a client that goes away
/// before its answer does not cut the handling short: the upstream call
/// (which the provider bills whether or not anyone waits) finishes, and is
/// charged and logged. A stream that has started still stops when its
/// client leaves, since its body is only read while the client is there.
///
/// When the client has gone with the work still running, a write guard of
/// the policy is held until it ends, so that a shutdown's flush waits
/// (within its bound) for it. Taken only then: a guard on every request
/// would cost its shared counters on the hot path.
///
/// A drain that runs out of time ends work whose client is still there
/// and whose upstream has not answered yet: the client gets a 503, the
/// request's holds are released and its record written while the process
/// can still do it. Work with an answer in hand, or whose client left,
/// finishes as above.
pub(crate) async fn detached<F>(state: &SharedState, work: F) -> Response
where
    F: std::future::Future<Output = Response> + Send + 'static,
{
    detached_with(state, work, IntoResponse::into_response).await
}

/// [`detached`], with `render` writing the shutdown's error in the
/// route's own format.
pub(crate) async fn detached_with<F>(state: &SharedState, work: F, render: fn(ApiError) -> Response) -> Response
where
    F: std::future::Future<Output = Response> + Send + 'static,
{
    use tracing::Instrument as _;
    /// Hands a task whose client left to a watcher holding a write guard.
    struct Abandoned<'a> {
        handle: Option<tokio::task::JoinHandle<Response>>,
        state: &'a SharedState,
        gone: Arc<std::sync::atomic::AtomicBool>,
        answered: Arc<std::sync::atomic::AtomicBool>,
    }
    /// Counts a task whose client left for as long as it lives.
    struct Counted(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
    impl Drop for Abandoned<'_> {
        fn drop(&mut self) {
            let Some(handle) = self.handle.take().filter(|h| !h.is_finished()) else {
                return;
            };
            // The attempt under way finishes (it is billed); no new one
            // starts. The drain waits for it; a drain that runs out of time
            // ends it while the process can still record it and release
            // its holds, unless it has its answer in hand (then it is
            // charged and recorded as answered, within the final flush).
            self.gone.store(true, std::sync::atomic::Ordering::Release);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let guard = self.state.policy.write_guard();
                self.state.abandoned.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let counted = Counted(Arc::clone(&self.state.abandoned));
                let mut cut = self.state.cut.subscribe();
                let answered = Arc::clone(&self.answered);
                runtime.spawn(async move {
                    let mut handle = handle;
                    let cut_now = async move {
                        if cut.wait_for(|cut| *cut).await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        _ = &mut handle => {}
                        () = cut_now => {
                            if !answered.load(std::sync::atomic::Ordering::Acquire) {
                                handle.abort();
                            }
                            let _ = handle.await;
                        }
                    }
                    drop(counted);
                    drop(guard);
                });
            }
        }
    }
    // The request's concurrency slot lasts as long as its work.
    let slot = crate::metering::REQUEST_SLOT.try_with(Arc::clone).ok();
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut cut = state.cut.subscribe();
    let (left, has_answer) = (Arc::clone(&gone), Arc::clone(&answered));
    let watched_answer = Arc::clone(&answered);
    let shutdown = async move {
        if cut.wait_for(|cut| *cut).await.is_err()
            || left.load(std::sync::atomic::Ordering::Acquire)
            || has_answer.load(std::sync::atomic::Ordering::Acquire)
        {
            std::future::pending::<()>().await;
        }
    };
    let work = CLIENT_GONE.scope(
        Arc::clone(&gone),
        ANSWERED.scope(answered, async move {
            let response = tokio::select! {
                // The work first: an answer and the cut in the same wake-up
                // is an answer.
                biased;
                response = work => response,
                () = shutdown => render(ApiError::Unavailable(
                    "the gateway is shutting down and could not finish this request; send it again".into(),
                )),
            };
            drop(slot);
            response
        }),
    );
    let mut watch = Abandoned {
        handle: Some(tokio::spawn(work.in_current_span())),
        state,
        gone,
        answered: watched_answer,
    };
    let result = match watch.handle.as_mut() {
        Some(handle) => handle.await,
        None => return render(ApiError::Internal("the request could not be completed".into())),
    };
    watch.handle = None;
    match result {
        Ok(response) => response,
        Err(e) => {
            // A panic's message stays in the log.
            tracing::error!(error = %e, "a request's task failed");
            render(ApiError::Internal("the request could not be completed".into()))
        }
    }
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    JsonBody(mut req): JsonBody<CompletionRequest>,
) -> Response {
    // Refused before admission, which would count it against the key.
    if req.prompt.is_tokens() && not_a_learned_router(&state, &principal, &req.model).is_err() {
        return ApiError::InvalidField {
            param: Some("model".into()),
            message: format!(
                "`{}` is a learned router; it serves chat, completion (with a text prompt) and message requests.",
                req.model
            ),
        }
        .into_response();
    }
    let (options, controls) = match gateway_fields(&mut req.extra, &headers) {
        Ok(fields) => fields,
        Err(e) => return e.into_response(),
    };
    let model = std::mem::take(&mut req.model);
    serve_detached(
        state,
        principal,
        ctx,
        model,
        req,
        |r| Call::Completion(r),
        options,
        controls,
    )
    .await
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(ctx): Extension<RequestContext>,
    headers: HeaderMap,
    JsonBody(mut req): JsonBody<EmbeddingRequest>,
) -> Response {
    if req.input.is_empty() {
        return ApiError::InvalidField {
            param: Some("input".into()),
            message: "'input' must not be empty.".into(),
        }
        .into_response();
    }
    let (options, controls) = match gateway_fields(&mut req.extra, &headers) {
        Ok(fields) => fields,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = not_a_learned_router(&state, &principal, &req.model) {
        return e.into_response();
    }
    let model = std::mem::take(&mut req.model);
    serve_detached(
        state,
        principal,
        ctx,
        model,
        req,
        |r| Call::Embeddings(r),
        options,
        controls,
    )
    .await
}

async fn models(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    page: Result<Query<ModelPage>, QueryRejection>,
) -> Response {
    let names: Vec<&str> = visible_models(&state, principal.view())
        .chain(visible_aliases(&state, principal.view(), false))
        .chain(listed_wildcard_models(&state, principal.view()))
        .collect();
    if !speaks_anthropic(&headers) {
        return Json(ModelList {
            object: "list".into(),
            data: names.iter().map(|name| model_object(&state, name)).collect(),
        })
        .into_response();
    }
    let page = match page {
        Ok(Query(page)) => page,
        Err(e) => {
            return AnthropicError(ApiError::InvalidField {
                param: None,
                message: e.body_text(),
            })
            .into_response();
        }
    };
    match anthropic_page(&names, &page) {
        Ok((models, has_more)) => Json(AnthropicModelList {
            first_id: models.first().map(|m| (*m).to_owned()),
            last_id: models.last().map(|m| (*m).to_owned()),
            data: models.iter().map(|name| anthropic_model(&state, name)).collect(),
            has_more,
        })
        .into_response(),
        Err(e) => AnthropicError(e).into_response(),
    }
}

/// Query parameters of Anthropic's `GET /v1/models` (OpenAI's takes none).
#[derive(Debug, Default, serde::Deserialize)]
struct ModelPage {
    /// Models per page, 1 to 1000 (default 20).
    limit: Option<usize>,
    /// The page after this id.
    after_id: Option<String>,
    /// The page before this id.
    before_id: Option<String>,
}

/// Whether the client is an Anthropic SDK (they always send `anthropic-version`).
fn speaks_anthropic(headers: &HeaderMap) -> bool {
    headers.contains_key("anthropic-version")
}

/// The page of `names` that `page` asks for, and whether more follow.
fn anthropic_page<'a>(names: &[&'a str], page: &ModelPage) -> Result<(Vec<&'a str>, bool), ApiError> {
    let invalid = |param: &str, message: String| ApiError::InvalidField {
        param: Some(param.into()),
        message,
    };
    let limit = page.limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return Err(invalid(
            "limit",
            format!("limit must be between 1 and 1000, not {limit}."),
        ));
    }
    let position = |id: &str, param: &str| {
        names
            .iter()
            .position(|name| *name == id)
            .ok_or_else(|| invalid(param, format!("No model named `{id}`.")))
    };
    match (&page.after_id, &page.before_id) {
        (Some(_), Some(_)) => Err(invalid("before_id", "Give after_id or before_id, not both.".into())),
        (Some(after), None) => {
            let start = position(after, "after_id")? + 1;
            let end = (start + limit).min(names.len());
            Ok((names[start..end].to_vec(), end < names.len()))
        }
        (None, Some(before)) => {
            let end = position(before, "before_id")?;
            let start = end.saturating_sub(limit);
            Ok((names[start..end].to_vec(), start > 0))
        }
        (None, None) => {
            let end = limit.min(names.len());
            Ok((names[..end].to_vec(), end < names.len()))
        }
    }
}

/// `GET /v1/models/{model}`: one model as `/v1/models` lists it (Anthropic's
/// shape for Anthropic clients); 404 `model_not_found` for a name that is
/// not configured or that the key may not use. Names may contain `/`
/// (`switchyard/auto`).
async fn model(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    let found = name
        .map_err(|e| ApiError::InvalidField {
            param: Some("model".into()),
            message: format!("The model name in the path is not valid: {}", e.body_text()),
        })
        .and_then(|Path(name)| {
            let listed = visible_models(&state, principal.view())
                .chain(visible_aliases(&state, principal.view(), true))
                .any(|candidate| candidate == name);
            // A model a wildcard group serves is found by its own name.
            let matched =
                state.wildcard_part(&name).is_some() && principal.view().is_none_or(|v| state.allows(v, &name));
            if listed || matched {
                Ok(name)
            } else {
                Err(ApiError::ModelNotFound(name))
            }
        });
    match (found, speaks_anthropic(&headers)) {
        (Ok(name), false) => Json(model_object(&state, &name)).into_response(),
        (Ok(name), true) => Json(anthropic_model(&state, &name)).into_response(),
        (Err(e), false) => e.into_response(),
        (Err(e), true) => AnthropicError(e).into_response(),
    }
}

/// Model groups and learned routers the caller may use, in listing order.
fn visible_models<'a>(state: &'a SharedState, view: Option<&'a Arc<KeyView>>) -> impl Iterator<Item = &'a str> + 'a {
    state
        .registry
        .model_names()
        .chain(state.learned.keys().map(String::as_str))
        .filter(move |name| view.is_none_or(|v| state.allows(v, name)))
}

/// Models a wildcard group serves that the caller's key lists by name
/// (a key limited to `openai/gpt-4o` sees it, not `openai/*`).
fn listed_wildcard_models<'a>(state: &'a SharedState, view: Option<&'a Arc<KeyView>>) -> Vec<&'a str> {
    let Some(view) = view else {
        return Vec::new();
    };
    // Every model a list names that every list allows.
    let mut named: Vec<&str> = view
        .model_lists()
        .into_iter()
        .flatten()
        .map(String::as_str)
        .filter(|name| state.wildcard_part(name).is_some() && state.allows(view, name))
        .collect();
    named.sort_unstable();
    named.dedup();
    named
}

/// Aliases of models the caller may use (or that its key lists by the
/// alias), by name; `hidden` ones too when asked.
fn visible_aliases<'a>(state: &'a SharedState, view: Option<&'a Arc<KeyView>>, hidden: bool) -> Vec<&'a str> {
    let mut names: Vec<&str> = state
        .aliases
        .iter()
        .filter(|(name, alias)| (hidden || !alias.hidden) && view.is_none_or(|v| state.allows(v, name)))
        .map(|(name, _)| name.as_str())
        .collect();
    names.sort_unstable();
    names
}

/// `GET /model/info` (also under `/v1`): LiteLLM's listing of deployments,
/// for tools written against it. Each deployment of every model the caller
/// may use, with its provider, upstream model, prices and limits; never a
/// credential or an upstream address.
async fn model_info(State(state): State<SharedState>, Extension(principal): Extension<Principal>) -> Response {
    let mut data = Vec::new();
    for name in visible_models(&state, principal.view()) {
        let Ok(group) = state.registry.group(name) else {
            // A learned router: the gateway picks among its candidates.
            data.push(serde_json::json!({
                "model_name": name,
                "litellm_params": {"model": format!("switchyard/{name}")},
                "model_info": {"id": name, "litellm_provider": "switchyard", "mode": "chat"},
            }));
            continue;
        };
        for d in group.deployments() {
            let prices = state.prices.get(d.id.0).copied().unwrap_or_default();
            data.push(serde_json::json!({
                "model_name": name,
                "litellm_params": {"model": format!("{}/{}", d.provider, d.model)},
                "model_info": {
                    "id": d.name,
                    "litellm_provider": d.provider,
                    "input_cost_per_token": prices.input,
                    "output_cost_per_token": prices.output,
                    "cache_read_input_token_cost": prices.cache_read,
                    "cache_creation_input_token_cost": prices.cache_write,
                    "cache_creation_input_token_cost_above_1hr": prices.cache_write_1h,
                    "rpm": d.rpm,
                    "tpm": d.tpm,
                },
            }));
        }
    }
    Json(serde_json::json!({"data": data})).into_response()
}

/// `GET /model_group/info` (also under `/v1`): LiteLLM's listing of model
/// groups, one row per model the caller may use (`?model_group=` for one): its providers, the highest
/// prices its deployments charge, and its rate limits when every deployment
/// declares one (their sum).
async fn model_group_info(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let mut data = Vec::new();
    // `?model_group=` narrows the listing to one group, as LiteLLM's does.
    let only = query.get("model_group");
    for name in visible_models(&state, principal.view()).filter(|n| only.is_none_or(|o| o == n)) {
        let Ok(group) = state.registry.group(name) else {
            data.push(serde_json::json!({"model_group": name, "providers": ["switchyard"], "mode": "chat"}));
            continue;
        };
        let mut providers: Vec<&str> = group.deployments().iter().map(|d| d.provider.as_str()).collect();
        providers.sort_unstable();
        providers.dedup();
        let prices: Vec<switchyard_policy::Prices> = group
            .deployments()
            .iter()
            .map(|d| state.prices.get(d.id.0).copied().unwrap_or_default())
            .collect();
        let highest = |f: fn(&switchyard_policy::Prices) -> f64| prices.iter().map(f).fold(0.0_f64, f64::max);
        let total = |f: fn(&switchyard_routing::DeploymentInfo) -> Option<u64>| {
            group
                .deployments()
                .iter()
                .map(f)
                .try_fold(0_u64, |sum, limit| limit.map(|l| sum.saturating_add(l)))
        };
        data.push(serde_json::json!({
            "model_group": name,
            "providers": providers,
            "input_cost_per_token": highest(|p| p.input),
            "output_cost_per_token": highest(|p| p.output),
            "rpm": total(|d| d.rpm),
            "tpm": total(|d| d.tpm),
        }));
    }
    Json(serde_json::json!({"data": data})).into_response()
}

fn anthropic_model(state: &SharedState, name: &str) -> AnthropicModel {
    AnthropicModel {
        kind: "model".into(),
        id: name.to_owned(),
        display_name: name.to_owned(),
        created_at: i64::try_from(state.loaded_at)
            .ok()
            .and_then(|secs| jiff::Timestamp::from_second(secs).ok())
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
            .to_string(),
    }
}

fn model_object(state: &SharedState, name: &str) -> ModelObject {
    ModelObject {
        id: name.to_owned(),
        object: "model".into(),
        created: state.loaded_at,
        owned_by: "switchyard".into(),
    }
}

/// `GET /metrics`: Prometheus text exposition.
async fn metrics(State(state): State<SharedState>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if !state.telemetry.metrics {
        return unknown_route(method, uri, headers).await;
    }
    if state.telemetry.metrics_require_auth
        && let Err(refused) = crate::metering::master_only(&state, &headers).await
    {
        return refused;
    }
    if let Some(cache) = &state.cache {
        let store = cache.store();
        let counters = store.counters();
        state.metrics.cache_store(
            counters.stores.load(std::sync::atomic::Ordering::Relaxed),
            counters.errors.load(std::sync::atomic::Ordering::Relaxed),
            counters.skipped.load(std::sync::atomic::Ordering::Relaxed),
            store.local_entries(),
        );
    }
    let mut text = state.metrics.render();
    deployment_states(&state, &mut text);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

/// `switchyard_deployment_state`, read from the circuit breakers at each
/// scrape (so a deployment a reload removed leaves no series behind):
/// 0 serving, 1 probing after a cooldown (or its cooldown over, waiting for
/// a request to probe it), 2 cooling down, 3 its upstream rejected the
/// gateway's key.
fn deployment_states(state: &AppState, out: &mut String) {
    use std::fmt::Write as _;
    let breakers = state.cooldowns.snapshot(state.now_ms());
    out.push_str(
        "# HELP switchyard_deployment_state Each deployment's circuit breaker: 0 serving, 1 probing, 2 cooling down, 3 key rejected upstream.\n\
         # TYPE switchyard_deployment_state gauge\n",
    );
    for name in state.registry.model_names() {
        let Ok(group) = state.registry.group(name) else {
            continue;
        };
        for d in group.deployments() {
            let value = match breakers.get(d.id.0).map(|b| (b.state, b.remaining_ms)) {
                None | Some((switchyard_routing::BreakerState::Closed, _)) => 0,
                // A cooldown that has run out waits for the next request to
                // probe the deployment: as good as probing.
                Some((switchyard_routing::BreakerState::HalfOpen, _) | (switchyard_routing::BreakerState::Open, 0)) => {
                    1
                }
                Some((switchyard_routing::BreakerState::Open, _)) => 2,
                Some((switchyard_routing::BreakerState::KeyInvalid, _)) => 3,
            };
            let _ = writeln!(
                out,
                "switchyard_deployment_state{{model=\"{}\",deployment=\"{}\"}} {value}",
                label_value(name),
                label_value(&d.name)
            );
        }
    }
}

/// A Prometheus label value: backslashes, quotes and newlines escaped.
fn label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `POST /v1/feedback`: a quality score for an earlier request, appended to
/// the request log. Body: `request_id`, and `score` (0–1) or `thumbs`
/// (`up` / `down`); optionally `comment`.
async fn feedback(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Response {
    let invalid = |param: &str, message: &str| {
        ApiError::InvalidField {
            param: Some(param.to_owned()),
            message: message.to_owned(),
        }
        .into_response()
    };
    let Some(log) = &state.request_log else {
        return ApiError::Forbidden(
            "Feedback needs the request log: set telemetry.request_log in the configuration.".into(),
        )
        .into_response();
    };
    let request_id = match body.get("request_id").and_then(serde_json::Value::as_str) {
        Some(id) if !id.is_empty() && id.len() <= 200 && id.chars().all(|c| c.is_ascii_graphic()) => id,
        _ => {
            return invalid(
                "request_id",
                "'request_id' must be the x-request-id of an earlier request.",
            );
        }
    };
    let score = match (body.get("score"), body.get("thumbs")) {
        (Some(score), None) => match score.as_f64().filter(|s| (0.0..=1.0).contains(s)) {
            Some(s) => s,
            None => return invalid("score", "'score' must be a number from 0 to 1."),
        },
        (None, Some(thumbs)) => match thumbs.as_str() {
            Some("up") => 1.0,
            Some("down") => 0.0,
            _ => return invalid("thumbs", "'thumbs' must be \"up\" or \"down\"."),
        },
        _ => {
            return invalid(
                "score",
                "Send either 'score' (0 to 1) or 'thumbs' (\"up\" or \"down\").",
            );
        }
    };
    let comment = match body.get("comment") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(c)) if c.len() <= 4096 => Some(c.clone()),
        Some(_) => return invalid("comment", "'comment' must be a string of at most 4096 bytes."),
    };
    // Each record counts against the key's request limits (rpm, requests
    // in flight), so that feedback cannot flood the request log; it costs
    // nothing and is not a spend record (the ticket is dropped, not settled).
    let _held = match crate::metering::admit_unpriced(&state, &principal, ("/v1/feedback".into(), true), None).await {
        Ok(ticket) => ticket,
        Err(refused) => return refused.into_response(),
    };
    let key_ref = principal.view().map(|v| switchyard_telemetry::key_ref(&v.key.key_id));
    log.feedback(request_id, score, comment, key_ref);
    Json(json!({"request_id": request_id, "score": score, "status": "recorded"})).into_response()
}

async fn liveness() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// `GET /health/readiness`: 503 while the policy's Redis is unreachable under
/// `fail_closed` (every keyed request would be refused); under `fail_open`
/// ready, with the store reported `degraded`.
async fn readiness(State(state): State<SharedState>) -> impl IntoResponse {
    let (status, store) = match state.policy.store_health().await {
        None => (StatusCode::OK, "local"),
        Some((_, true)) => (StatusCode::OK, "ok"),
        Some((switchyard_policy::FailureMode::FailOpen, false)) => (StatusCode::OK, "degraded"),
        Some((switchyard_policy::FailureMode::FailClosed, false)) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    (
        status,
        Json(json!({
            "status": if status == StatusCode::OK { "ready" } else { "not_ready" },
            "policy_store": store,
            "models": state.registry.model_names().count(),
            "deployments": state.registry.deployment_count(),
        })),
    )
}

/// 404, in Anthropic's shape under `/v1/messages` as every error there.
async fn unknown_route(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let error = ApiError::UnknownRoute {
        method: method.to_string(),
        path: crate::observe::span_path(uri.path()).into_owned(),
    };
    crate::metering::error_for(uri.path(), &headers, error)
}

/// 405 (axum adds `Allow`), in Anthropic's shape under `/v1/messages`.
async fn method_not_allowed(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    crate::metering::error_for(uri.path(), &headers, ApiError::MethodNotAllowed(method.to_string()))
}
