//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic-format
//! clients (the Anthropic SDKs, Claude Code) served from any deployment.
//!
//! Anthropic deployments, and Claude models on Bedrock (through InvokeModel),
//! get the request as it came (only `model` is swapped) and their answer,
//! events included, goes back unchanged. Other deployments
//! get the request translated to OpenAI's chat format, and their answer is
//! translated back, streams event by event.

pub mod stream;
pub mod translate;

use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchyard_api::ChatCompletionResponse;
use switchyard_api::anthropic::MessagesRequest;
use switchyard_providers::ProviderError;

use crate::dispatch::{Call, Failed, Reply, RequestOptions, Served, dispatch};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::metering;
use crate::observe::{RequestContext, Trail};
use crate::routes::{SharedState, failure_response, tracker, with_route_headers};
use crate::stream::StreamTracker;
use switchyard_policy::Principal;
use switchyard_policy::{SpendRecord, TokenUsage};
use tracing::Instrument as _;
use tracing::field::Empty;

/// An [`ApiError`] rendered for Anthropic clients: the OpenAI error fields plus
/// Anthropic's top-level `"type": "error"`, which its SDKs expect.
#[derive(Debug)]
pub struct AnthropicError(pub ApiError);

impl From<ApiError> for AnthropicError {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let (mut status, ..) = self.0.parts();
        // An upstream that said it is overloaded (Anthropic's 529) says so to
        // Anthropic clients too: they back off on it.
        if let ApiError::Upstream { source, .. } = &self.0
            && matches!(**source, ProviderError::Status { status: 529, .. })
        {
            status = axum::http::StatusCode::from_u16(529).unwrap_or(status);
        }
        let mut body = serde_json::to_value(self.0.body()).unwrap_or_default();
        body["type"] = json!("error");
        // Anthropic's own error types, which its SDKs and clients read; the
        // gateway's `code` keeps the detail.
        body["error"]["type"] = json!(anthropic_type_of(&self.0));
        let mut response = self.0.into_response();
        *response.body_mut() = axum::body::Body::from(body.to_string());
        *response.status_mut() = status;
        response
    }
}

/// The Anthropic error `type` of a failure: from the upstream's own status
/// when it sent one (a 529 is `overloaded_error` even where the gateway's
/// answer is a 502), else from the gateway's status.
pub(crate) fn anthropic_type_of(error: &ApiError) -> &'static str {
    if let ApiError::Upstream { source, .. } = error
        && let ProviderError::Status { status, .. } = **source
        && let Ok(status) = axum::http::StatusCode::from_u16(status)
        && (status.as_u16() == 429 || status.is_server_error())
    {
        return anthropic_error_type(status);
    }
    anthropic_error_type(error.parts().0)
}

/// The Anthropic error `type` of an answer's status.
pub(crate) fn anthropic_error_type(status: axum::http::StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500.. => "api_error",
        _ => "invalid_request_error",
    }
}

/// A JSON body for the Anthropic routes: as [`JsonBody`], with rejections
/// (malformed JSON, a wrong field, a body over the limit) in Anthropic's
/// error shape.
pub struct AnthropicJson<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<SharedState> for AnthropicJson<T> {
    type Rejection = AnthropicError;

    async fn from_request(req: axum::extract::Request, state: &SharedState) -> Result<Self, Self::Rejection> {
        JsonBody::<T>::from_request(req, state)
            .await
            .map(|JsonBody(value)| AnthropicJson(value))
            .map_err(AnthropicError)
    }
}

fn validate(req: &MessagesRequest) -> Result<(), ApiError> {
    if req.max_tokens.is_none_or(|m| m == 0) {
        return Err(ApiError::InvalidField {
            param: Some("max_tokens".into()),
            message: "max_tokens: a positive integer is required".into(),
        });
    }
    if req.messages.is_empty() {
        return Err(ApiError::InvalidField {
            param: Some("messages".into()),
            message: "messages: at least one message is required".into(),
        });
    }
    Ok(())
}

/// Renders a failure for Anthropic clients.
fn failed(
    Failed {
        error,
        attempts,
        upstream_request_id,
        ..
    }: Failed,
) -> Response {
    failure_response(
        AnthropicError(error).into_response(),
        attempts,
        upstream_request_id.as_deref(),
    )
}

/// The beta features named in `anthropic-beta` headers (comma-separated,
/// possibly repeated).
fn betas(headers: &axum::http::HeaderMap) -> Vec<String> {
    headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `POST /v1/messages`.
pub(crate) async fn messages(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(ctx): Extension<RequestContext>,
    headers: axum::http::HeaderMap,
    AnthropicJson(mut req): AnthropicJson<MessagesRequest>,
) -> Response {
    req.betas = betas(&headers);
    let model = state.group_name(&req.model).to_owned();
    // Behind a wildcard group, the model asked for (which it matched).
    let span_model = crate::observe::span_model(&state, &req.model, &model);
    let span = tracing::debug_span!(
        target: "switchyard",
        "gen_ai",
        otel.name = format!("chat {}", crate::observe::span_name_model(&state, &req.model, &model)),
        "gen_ai.operation.name" = "chat",
        "gen_ai.request.model" = span_model,
        "gen_ai.response.model" = Empty,
        "gen_ai.usage.input_tokens" = Empty,
        "gen_ai.usage.output_tokens" = Empty,
        "switchyard.deployment" = Empty,
        "error.type" = Empty,
        otel.status_code = Empty,
    );
    let labels = match crate::labels::anthropic(&mut req.extra, &headers) {
        Ok(labels) => labels,
        Err(e) => return AnthropicError(e).into_response(),
    };
    let work = messages_inner(state.clone(), principal, ctx, req, labels).instrument(span.clone());
    let mut response = crate::routes::detached_with(&state, work, |e| AnthropicError(e).into_response()).await;
    crate::observe::record_failure(&span, &response);
    crate::observe::label_failure(&state, &model, &mut response);
    response
}

async fn messages_inner(
    state: SharedState,
    principal: Principal,
    ctx: RequestContext,
    mut req: MessagesRequest,
    labels: switchyard_policy::Labels,
) -> Response {
    if let Err(e) = validate(&req) {
        return failed(e.into());
    }
    let mut options = match RequestOptions::take(&mut req.extra) {
        Ok(options) => options,
        Err(e) => return failed(e.into()),
    };
    options.labels = labels;
    // Messages are never cached, but the controls are not sent upstream either.
    if let Err(e) = crate::cache::Controls::take(&mut req.extra, &axum::http::HeaderMap::new()) {
        return failed(e.into());
    }
    state.restrict(&mut options, principal.view().map(|v| &**v));
    let requested = std::mem::take(&mut req.model);
    let model = state.group_name(&requested);
    options.wildcard = state.wildcard_part(&requested).map(str::to_owned);
    if state.tag_filtering {
        options.route_tags.clone_from(&options.labels.tags);
    }
    // Tools whose names OpenAI-format upstreams cannot take, to restore.
    let tool_names = match translate::shortened_tool_names(&req) {
        Ok(names) => names,
        Err(e) => return failed(e.into()),
    };
    let thinking = translate::wants_thinking(&req);
    let mut call = Call::Messages(&mut req);
    options.upstream_ns = Some(ctx.upstream_ns.clone());
    // A wildcard group's name is a pattern: the log keeps the model asked for.
    let logged = if options.wildcard.is_some() {
        requested.as_str()
    } else {
        model
    };
    let mut trail = Trail::start(&state, &ctx, &principal, logged, &call);
    let labels = metering::take_labels(&state, &mut options, trail.as_mut());
    crate::observe::capture_prompt(
        &state,
        &call,
        labels.end_user.as_deref().filter(|_| !labels.hide_end_user),
    );
    let meter = match metering::admit(
        &state,
        &principal,
        &ctx.id,
        &requested,
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
            return failed(e.into());
        }
    };
    state.resolve_fallbacks(&mut options.fallbacks);
    options.prompt_tokens = Some(meter.estimated_prompt());
    let mut extra = Response::new(axum::body::Body::empty());
    meter.headers(&mut extra);
    let extra = extra.into_parts().0.headers;
    let Served {
        reply,
        decision,
        in_flight,
        started,
    } = match dispatch(&state, model, &mut call, &options).await {
        Ok(served) => served,
        Err(f) => {
            if let Some(mut t) = trail {
                t.failed(&f);
                t.finish(f.error.parts().0.as_u16(), Some(&f.error));
            }
            let mut response = failed(f);
            response.headers_mut().extend(extra);
            return response;
        }
    };
    let name = decision.deployment.name.clone();
    let id = decision.deployment.id;
    let current = tracing::Span::current();
    current.record("switchyard.deployment", name.as_str());
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
    let settled =
        |trail: Option<Trail>, usage: Option<TokenUsage>, record: Option<&SpendRecord>, error: Option<&ApiError>| {
            if let Some(u) = usage {
                current.record("gen_ai.usage.input_tokens", i64::try_from(u.prompt).unwrap_or(i64::MAX));
                current.record(
                    "gen_ai.usage.output_tokens",
                    i64::try_from(u.completion).unwrap_or(i64::MAX),
                );
            }
            if let Some(mut t) = trail {
                t.charged(usage, record);
                match error {
                    None => t.finish(200, None),
                    Some(e) => t.finish(e.parts().0.as_u16(), Some(e)),
                }
            }
        };
    let streaming = |trail: &mut Option<Trail>, tracker: StreamTracker| match trail.take() {
        Some(mut t) => {
            t.first_byte();
            tracker.with_trail(t)
        }
        None => tracker,
    };
    let mut response = match reply {
        // A messages request is never sent where audio comes back.
        Reply::Media(_) | Reply::Audio(_) => {
            let error = ApiError::Internal("an audio answer to a messages request".into());
            // Logged as the 500 it is, not as a client that left.
            settled(trail.take(), None, None, Some(&error));
            failed(error.into())
        }
        Reply::Native(body) => {
            // The upstream is done: the deployment is no longer busy with it.
            drop(in_flight);
            // Without the upstream's usage: the estimated prompt, and output
            // by the answer's length.
            let usage = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("usage").filter(|u| u.is_object()).map(metering::anthropic_usage))
                .or_else(|| {
                    Some(switchyard_policy::TokenUsage {
                        prompt: meter.estimated_prompt(),
                        completion: metering::anthropic_output_estimate(&body),
                        ..switchyard_policy::TokenUsage::default()
                    })
                });
            let record = meter.settle(&state, id, &name, usage).await;
            settled(trail.take(), usage, record.as_ref(), None);
            if state.telemetry.capture_content {
                switchyard_telemetry::set_exported_attribute(
                    &current,
                    "gen_ai.completion",
                    crate::observe::captured_answer(&body),
                );
            }
            let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
            metering::cost_header(&mut response, record.as_ref());
            response
        }
        Reply::Events(events) => stream::passthrough(
            streaming(
                &mut trail,
                tracker(&state, &decision, in_flight, started).metered(meter, name.clone()),
            )
            .follow(events),
            name,
        ),
        Reply::Chunks(chunks) => {
            let estimated_input = meter.estimated_prompt();
            let mut tracked = streaming(
                &mut trail,
                tracker(&state, &decision, in_flight, started).metered(meter, name.clone()),
            );
            let fault = tracked.fault();
            stream::from_chat_chunks(
                tracked.follow(chunks),
                (name, fault),
                tool_names,
                thinking,
                estimated_input,
            )
        }
        Reply::Json(answer) => {
            drop(in_flight);
            // Without the upstream's usage: the estimated prompt, and output
            // by the answer's length.
            let usage = answer.usage.as_ref().map(metering::openai_usage).or_else(|| {
                Some(switchyard_policy::TokenUsage {
                    prompt: meter.estimated_prompt(),
                    completion: metering::output_estimate(&answer.body),
                    ..switchyard_policy::TokenUsage::default()
                })
            });
            let translated = match serde_json::from_slice::<ChatCompletionResponse>(&answer.body) {
                Ok(mut parsed) => {
                    // No usage from the upstream: the client is told what it
                    // is charged (clients track their context by it).
                    if parsed.usage.is_none()
                        && let Some(u) = usage
                    {
                        parsed.usage = Some(switchyard_api::Usage::new(u.prompt, u.completion));
                    }
                    serde_json::to_vec(&translate::to_messages_response(parsed, &tool_names, thinking))
                        .map_err(|e| ApiError::Internal(e.to_string()))
                }
                Err(e) => Err(ApiError::upstream(
                    &name,
                    ProviderError::InvalidResponse(format!("not a chat completion ({e})")),
                )),
            };
            // The upstream answered, so its usage is charged even when the
            // answer cannot be translated; the request log has the status
            // the client gets.
            let record = meter.settle(&state, id, &name, usage).await;
            settled(trail.take(), usage, record.as_ref(), translated.as_ref().err());
            if state.telemetry.capture_content {
                switchyard_telemetry::set_exported_attribute(
                    &current,
                    "gen_ai.completion",
                    crate::observe::captured_answer(&answer.body),
                );
            }
            match translated {
                Ok(body) => {
                    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
                    metering::cost_header(&mut response, record.as_ref());
                    response
                }
                // Charged, so the answer says what it cost, like any other.
                Err(e) => {
                    let mut response = failed(e.into());
                    metering::cost_header(&mut response, record.as_ref());
                    response
                }
            }
        }
    };
    response.headers_mut().extend(extra);
    with_route_headers(response, &decision)
}

/// `POST /v1/messages/count_tokens`: answered by Anthropic deployments.
pub(crate) async fn count_tokens(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(ctx): Extension<RequestContext>,
    headers: axum::http::HeaderMap,
    AnthropicJson(mut req): AnthropicJson<serde_json::Value>,
) -> Response {
    let Some(model) = req.get("model").and_then(serde_json::Value::as_str).map(str::to_owned) else {
        return failed(
            ApiError::InvalidField {
                param: Some("model".into()),
                message: "model: a string is required".into(),
            }
            .into(),
        );
    };
    if principal.view().is_some_and(|v| !state.allows(v, &model)) {
        return failed(ApiError::Denied(switchyard_policy::Denied::ModelNotAllowed { model }).into());
    }
    if let Some(Err(e)) = req
        .as_object_mut()
        .map(|body| crate::cache::Controls::take(body, &axum::http::HeaderMap::new()))
    {
        return failed(e.into());
    }
    let mut options = match req.as_object_mut().map(RequestOptions::take) {
        Some(Ok(options)) => options,
        Some(Err(e)) => return failed(e.into()),
        None => RequestOptions::default(),
    };
    state.restrict(&mut options, principal.view().map(|v| &**v));
    options.upstream_ns = Some(ctx.upstream_ns.clone());
    if let Err(e) = metering::check_fallbacks(&state, &principal, options.fallbacks.as_deref()) {
        return failed(e.into());
    }
    state.resolve_fallbacks(&mut options.fallbacks);
    options.wildcard = state.wildcard_part(&model).map(str::to_owned);
    // Tags in the body are taken out (Anthropic refuses them), and route
    // the count as they would the request.
    let labels = match req.as_object_mut() {
        Some(body) => crate::labels::anthropic(body, &headers),
        None => crate::labels::anthropic(&mut serde_json::Map::new(), &headers),
    };
    match labels {
        Ok(labels) if state.tag_filtering => options.route_tags = labels.tags,
        Ok(_) => {}
        Err(e) => return failed(e.into()),
    }
    let betas = betas(&headers);
    let model = state.group_name(&model);
    // A token count an upstream answers is a request to it, on the
    // gateway's credentials: the key's per-minute and in-flight limits
    // apply to it (it costs nothing, and is no spend record: the ticket is
    // dropped). One only the gateway's estimate answers is not.
    // (A deployment that can count, Anthropic or Claude on Bedrock by a
    // foundation model id, that it may reach, its fallbacks included.)
    let counts = |name: &str| state.ceilings.get(name).is_some_and(|c| c.counts_tokens);
    let counts_upstream = counts(model)
        || options
            .fallbacks
            .as_ref()
            .is_some_and(|names| names.iter().any(|n| counts(n)));
    // Run as the other routes are: a drain that runs out of time answers
    // a count still waiting 503, with its holds released.
    let model = model.to_owned();
    let work_state = state.clone();
    let work = async move {
        let state = work_state;
        let model = model.as_str();
        let held = if counts_upstream {
            match metering::admit_unpriced(&state, &principal, (model.to_owned(), true), Some(ctx.id.clone())).await {
                Ok(ticket) => Some(ticket),
                Err(refused) => return failed(refused.into()),
            }
        } else {
            None
        };
        let mut response = match dispatch(&state, model, &mut Call::CountTokens(&mut req, &betas), &options).await {
            Ok(Served {
                reply: Reply::Native(body),
                decision,
                ..
            }) => with_route_headers(
                ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
                &decision,
            ),
            Ok(_) => failed(ApiError::Internal("count_tokens answered in an unexpected format".into()).into()),
            // No deployment reached can count (only Anthropic and Bedrock do): the
            // gateway's own estimate, marked as one, rather than an error that
            // clients such as Claude Code would hit on every turn.
            Err(f) if f.error.parts().3.as_deref() == Some("unsupported") => estimate_tokens(req),
            Err(f) => failed(f),
        };
        // An admitted count is a request as any other: its id and the key's
        // rate-limit headers.
        if let Some(ticket) = &held {
            metering::add_ticket_headers(&mut response, ticket);
        }
        response
    };
    crate::routes::detached_with(&state, work, |e| failed(e.into())).await
}

/// `{"input_tokens": N}` from the gateway's estimate of the prompt (a token
/// per 4 bytes, images and tools counted as admission counts them), with
/// `x-switchyard-token-count: estimate`.
fn estimate_tokens(req: serde_json::Value) -> Response {
    let mut parsed = match serde_json::from_value::<MessagesRequest>(req) {
        Ok(parsed) => parsed,
        Err(e) => {
            return failed(
                ApiError::InvalidField {
                    param: None,
                    message: format!("Invalid request body: {e}."),
                }
                .into(),
            );
        }
    };
    let tokens = metering::expected_prompt_tokens(&Call::Messages(&mut parsed));
    let mut response = axum::Json(json!({"input_tokens": tokens})).into_response();
    response.headers_mut().insert(
        axum::http::HeaderName::from_static("x-switchyard-token-count"),
        axum::http::HeaderValue::from_static("estimate"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_get_anthropics_error_types() {
        use axum::http::StatusCode as S;
        for (status, kind) in [
            (S::GATEWAY_TIMEOUT, "timeout_error"),
            (S::BAD_GATEWAY, "api_error"),
            (S::TOO_MANY_REQUESTS, "rate_limit_error"),
            (S::BAD_REQUEST, "invalid_request_error"),
        ] {
            assert_eq!(anthropic_error_type(status), kind, "{status}");
        }
    }
}
