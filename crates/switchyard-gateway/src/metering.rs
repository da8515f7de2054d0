//! The policy's side of a request: who is calling (the authentication
//! middleware), admission before dispatch (limits and the budget
//! reservation), and the charge once the answer's usage is known.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use switchyard_api::Usage;
use switchyard_policy::{Charge, Demand, Principal, SpendRecord, Ticket, TokenUsage, format_usd};
use switchyard_routing::DeploymentId;

use crate::dispatch::Call;
use crate::error::ApiError;
use crate::messages::AnthropicError;
use crate::routes::SharedState;
use crate::state::AppState;

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-switchyard-request-id");
const COST_HEADER: HeaderName = HeaderName::from_static("x-switchyard-response-cost");

/// The key a client sent: `Authorization: Bearer`, `x-api-key` (Anthropic
/// clients) or `api-key` (Azure clients).
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let auth = auth.trim();
        let token = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
            .unwrap_or(auth);
        return Some(token.trim());
    }
    ["x-api-key", "api-key"]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// Renders an error for the route's clients: Anthropic-shaped on
/// `/messages`, and on `/models` for clients that send `anthropic-version`.
pub(crate) fn error_for(path: &str, headers: &HeaderMap, error: ApiError) -> Response {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let anthropic_models =
        (path == "/models" || path.starts_with("/models/")) && headers.contains_key("anthropic-version");
    if path == "/messages" || path == "/messages/count_tokens" || anthropic_models {
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

/// Middleware on admin routes: only the master key passes.
pub(crate) async fn require_master(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    if !state.policy.has_master_key() {
        return ApiError::Forbidden(
            "The admin API needs a master key: set policy.master_key or SWITCHYARD_MASTER_KEY.".into(),
        )
        .into_response();
    }
    match presented_key(request.headers()) {
        Some(token) if state.policy.is_master(token) => next.run(request).await,
        Some(_) => ApiError::Forbidden("The admin API needs the master key.".into()).into_response(),
        None => ApiError::Denied(switchyard_policy::Denied::MissingKey).into_response(),
    }
}

/// Middleware on read-only admin routes: open when the gateway has no
/// master key, the master key's otherwise.
pub(crate) async fn require_master_if_set(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    if state.policy.has_master_key() {
        require_master(State(state), request, next).await
    } else {
        next.run(request).await
    }
}

/// The most output tokens a request can produce.
fn max_output(call: &Call<'_>, default: u32) -> u64 {
    let from = |extra: &serde_json::Map<String, Value>, names: &[&str]| {
        names.iter().find_map(|n| extra.get(*n).and_then(Value::as_u64))
    };
    match call {
        Call::Chat(req) => from(&req.extra, &["max_completion_tokens", "max_tokens"]).unwrap_or(u64::from(default)),
        Call::Completion(req) => from(&req.extra, &["max_tokens"]).unwrap_or(u64::from(default)),
        Call::Messages(req) => req.max_tokens.map_or(u64::from(default), u64::from),
        Call::Embeddings(_) | Call::CountTokens(_) => 0,
    }
}

/// Bytes of prompt text: an upper bound on its tokens.
fn prompt_bytes(call: &Call<'_>) -> u64 {
    match call {
        Call::Embeddings(req) => req.input.texts().iter().map(|t| t.len() as u64).sum(),
        Call::CountTokens(_) => 0,
        other => other.query_text().map_or(0, |t| t.len() as u64),
    }
}

/// Checks that the key may call every fallback model the request names.
pub(crate) fn check_fallbacks(principal: &Principal, fallbacks: Option<&[String]>) -> Result<(), ApiError> {
    let Some(view) = principal.view() else {
        return Ok(());
    };
    match fallbacks
        .unwrap_or_default()
        .iter()
        .enumerate()
        .find(|(_, name)| !view.allows(name))
    {
        Some((i, name)) => Err(ApiError::FallbackNotAllowed {
            param: format!("fallbacks[{i}]"),
            model: name.clone(),
        }),
        None => Ok(()),
    }
}

/// Admits a request to `model`: the key's model allow-list, its limits and
/// its budget, reserving the most the request can cost. The `fallbacks` the
/// request names must be models the key may call too, and their prices
/// count in the reservation.
pub(crate) async fn admit(
    state: &AppState,
    principal: &Principal,
    request_id: &str,
    model: &str,
    call: &Call<'_>,
    fallbacks: Option<&[String]>,
) -> Result<Metered, ApiError> {
    let mut ceiling = state
        .ceilings
        .get(model)
        .copied()
        .ok_or_else(|| ApiError::ModelNotFound(model.to_owned()))?;
    check_fallbacks(principal, fallbacks)?;
    for name in fallbacks.unwrap_or_default() {
        // An unknown name is refused by the dispatch, with its field.
        if let Some(prices) = state.ceilings.get(name.as_str()) {
            ceiling = crate::state::max_prices(ceiling, *prices);
        }
    }
    let bytes = prompt_bytes(call);
    let estimated = bytes.div_ceil(4).max(1);
    let demand = Demand {
        model: model.to_owned(),
        estimated_tokens: u32::try_from(estimated).unwrap_or(u32::MAX),
        max_cost: ceiling.ceiling(bytes.max(1), max_output(call, state.default_max_tokens)),
        request_id: Some(request_id.to_owned()),
    };
    let ticket = match state.policy.admit(principal, &demand).await {
        Ok(ticket) => ticket,
        Err(denied) => {
            let reason = match &denied {
                switchyard_policy::Denied::RateLimited { .. } => Some("rate_limit"),
                switchyard_policy::Denied::TooManyParallel { .. } => Some("parallel_limit"),
                switchyard_policy::Denied::BudgetExceeded { .. } => Some("budget"),
                switchyard_policy::Denied::Unavailable => Some("store_unavailable"),
                _ => None,
            };
            if let Some(reason) = reason {
                state.metrics.refused(reason);
            }
            return Err(ApiError::Denied(denied));
        }
    };
    Ok(Metered {
        ticket,
        estimated_prompt: estimated,
    })
}

/// An admitted request waiting for its charge.
#[derive(Debug)]
pub(crate) struct Metered {
    /// The policy's hold on the request.
    pub(crate) ticket: Ticket,
    /// Estimated prompt tokens, charged when the upstream reports no usage.
    pub(crate) estimated_prompt: u64,
}

/// OpenAI usage, normalised.
pub(crate) fn openai_usage(usage: &Usage) -> TokenUsage {
    let cache_write = usage
        .extra
        .get("prompt_tokens_details")
        .and_then(|d| d.get("cache_creation_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    TokenUsage {
        prompt: usage.prompt_tokens,
        completion: usage.completion_tokens,
        cache_read: usage.cached_prompt_tokens(),
        cache_write,
    }
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
        let usage = usage.unwrap_or(TokenUsage {
            prompt: self.estimated_prompt,
            ..TokenUsage::default()
        });
        let cost = state.prices.get(deployment.0).map_or(0, |p| p.cost(&usage));
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
                    switchyard_policy::to_usd(record.cost_nanos),
                    record.cache_hit,
                );
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

fn add_ticket_headers(response: &mut Response, ticket: &Ticket) {
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
    if let Some(record) = record {
        if let Ok(v) = HeaderValue::from_str(&format_usd(record.cost_nanos)) {
            response.headers_mut().insert(COST_HEADER, v);
        }
    }
}
