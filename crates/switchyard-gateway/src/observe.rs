//! What the gateway tells about each request: the request id, the trace
//! span (continuing a client's `traceparent`), Prometheus metrics, the
//! overhead header, and the request-log record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use switchyard_policy::{Principal, SpendRecord, TokenUsage, to_usd};
use switchyard_telemetry::RequestRecord;

use crate::dispatch::{Call, Decision};
use crate::error::ApiError;
use crate::routes::SharedState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const OVERHEAD: HeaderName = HeaderName::from_static("x-switchyard-overhead-ms");

/// One request's id and clocks, handed to handlers as an extension.
#[derive(Debug, Clone)]
pub(crate) struct RequestContext {
    /// The id in `x-request-id`, the spend log and the request log.
    pub(crate) id: String,
    /// When the gateway received the request.
    pub(crate) started: Instant,
    /// Nanoseconds spent waiting on upstreams (and backing off between attempts).
    pub(crate) upstream_ns: Arc<AtomicU64>,
}

impl RequestContext {
    /// Adds upstream time.
    pub(crate) fn add_upstream(counter: &AtomicU64, spent: Duration) {
        counter.fetch_add(u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// The model group a failed request asked for (answers carry
/// `x-switchyard-model` instead), for metric labels.
#[derive(Debug, Clone)]
pub(crate) struct ModelLabel(pub(crate) String);

/// Labels `response` with `model` when no answer header names one and the
/// model is configured (unknown names would make unbounded label sets).
pub(crate) fn label_failure(state: &SharedState, model: &str, response: &mut Response) {
    let known = state.routes.contains_key(model) || state.learned.contains_key(model);
    if known && !response.headers().contains_key("x-switchyard-model") {
        response.extensions_mut().insert(ModelLabel(model.to_owned()));
    }
}

/// Marks a generation span failed when its answer is an error: `error.type`
/// is the status code (as OpenTelemetry's HTTP conventions write it) and
/// the span's status is error. A stream that breaks after its 200 is
/// marked where it breaks. A client that left (499) is no failure of the
/// generation: its `error.type` is `client_closed`, as for a stream it
/// left, and the status stays unset.
pub(crate) fn record_failure(span: &tracing::Span, response: &Response) {
    let status = response.status();
    if status.as_u16() == 499 {
        span.record("error.type", "client_closed");
    } else if status.is_client_error() || status.is_server_error() {
        span.record("error.type", status.as_str());
        span.record("otel.status_code", "error");
    }
}

/// A requested model as spans name it: a configured model group's name, or
/// `unknown`, so that what a client makes up stays out of span names and
/// attributes (a refused request's model may be any string of any length).
/// Behind a wildcard group, the model asked for (which the group matched),
/// its first 256 bytes.
pub(crate) fn span_model<'a>(state: &SharedState, requested: &'a str, model: &'a str) -> &'a str {
    if state.wildcard_part(requested).is_some() {
        clip_start(requested, MAX_LOGGED_MODEL)
    } else if state.routes.contains_key(model) || state.learned.contains_key(model) {
        model
    } else {
        "unknown"
    }
}

/// A requested model as span *names* hold it: as [`span_model`], except
/// that behind a wildcard group it is the group's name (`openai/*`), so
/// that clients cannot make up span names (tools turn them into metric
/// labels); the model asked for stays in the span's attributes.
pub(crate) fn span_name_model<'a>(state: &SharedState, requested: &'a str, model: &'a str) -> &'a str {
    if state.wildcard_part(requested).is_some() {
        model
    } else {
        span_model(state, requested, model)
    }
}

/// The request path as spans and logs record it: the segment after `key/`
/// (a virtual key in `/key/{key}/regenerate`, or anything a client puts
/// there) is left out unless it names one of the key routes.
pub(crate) fn span_path(path: &str) -> std::borrow::Cow<'_, str> {
    const KEY_ROUTES: [&str; 8] = [
        "generate",
        "info",
        "update",
        "delete",
        "list",
        "regenerate",
        "block",
        "unblock",
    ];
    let segments: Vec<&str> = path.split('/').collect();
    let secret =
        |i: usize| i > 0 && segments[i - 1] == "key" && !segments[i].is_empty() && !KEY_ROUTES.contains(&segments[i]);
    if !(0..segments.len()).any(secret) {
        return path.into();
    }
    (0..segments.len())
        .map(|i| if secret(i) { "{key}" } else { segments[i] })
        .collect::<Vec<_>>()
        .join("/")
        .into()
}

/// Counts a request whose client left before its answer (status 499), when
/// the middleware's future is dropped with it; the work itself may go on.
struct ClientLeft<'a> {
    state: Option<&'a SharedState>,
    route: &'static str,
    started: Instant,
    /// The request's server span: it says 499 too (work the request left
    /// running keeps it open until that work ends).
    span: tracing::Span,
}

impl Drop for ClientLeft<'_> {
    fn drop(&mut self) {
        if let Some(state) = self.state.take()
            && !matches!(self.route, "health" | "metrics")
        {
            state
                .metrics
                .request(self.route, "", "", 499, self.started.elapsed().as_secs_f64());
            self.span.record("http.response.status_code", 499_i64);
            self.span.record("error.type", "client_closed");
        }
    }
}

/// The route's name in metrics and span names: a fixed set, whatever the path.
fn route_name(path: &str) -> &'static str {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    match path {
        "/chat/completions" => "chat",
        "/completions" => "completions",
        "/embeddings" => "embeddings",
        "/images/generations" => "images",
        "/images/edits" => "image_edits",
        "/moderations" => "moderations",
        "/audio/speech" => "speech",
        "/rerank" | "/v2/rerank" => "rerank",
        "/audio/transcriptions" => "transcriptions",
        "/audio/translations" => "translations",
        "/messages" => "messages",
        "/messages/count_tokens" => "count_tokens",
        "/responses" => "responses",
        p if p.starts_with("/responses/") => "responses",
        "/models" => "models",
        p if p.starts_with("/models/") => "models",
        "/feedback" => "feedback",
        p if azure_route(p).is_some() => azure_route(p).unwrap_or("other"),
        "/metrics" => "metrics",
        p if under(p, "/health") => "health",
        p if ["/key", "/team", "/spend", "/admin", "/customer", "/end_user", "/user"]
            .iter()
            .any(|prefix| under(p, prefix)) =>
        {
            "admin"
        }
        _ => "other",
    }
}

/// The route an Azure client's path (`/openai/deployments/{model}/…`,
/// `/deployments/…`, `/engines/…`) names.
fn azure_route(path: &str) -> Option<&'static str> {
    let rest = ["/openai/deployments/", "/deployments/", "/engines/"]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix))?;
    match rest.split_once('/')?.1 {
        "chat/completions" => Some("chat"),
        "completions" => Some("completions"),
        "embeddings" => Some("embeddings"),
        _ => None,
    }
}

/// Whether `path` is `prefix` or below it (by whole segments).
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The outermost middleware: gives the request its id and span, counts it,
/// and adds `x-request-id` and `x-switchyard-overhead-ms` to the answer.
///
/// This server span is at `info`, so log lines carry the request id; the
/// spans inside it are at `debug`: exported over OTLP whatever the log level,
/// and free when neither export nor debug logs want them.
pub(crate) async fn observe(State(state): State<SharedState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = state.policy.request_id();
    let path = request.uri().path();
    let named = route_name(path);
    // An Azure client's path a pass-through route claims is the route's.
    let claimable = named == "other" || azure_route(path).is_some();
    let route = if claimable && state.pass_through.iter().any(|r| r.serves(path)) {
        "pass_through"
    } else {
        named
    };
    // A method outside HTTP's own set is `_OTHER`, as the semantic
    // conventions say: clients cannot make up span names.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    };
    let span = tracing::info_span!(
        target: "switchyard",
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        "http.request.method" = %method,
        "url.path" = %span_path(request.uri().path()),
        "http.response.status_code" = Empty,
        "error.type" = Empty,
        "switchyard.request_id" = %id,
    );
    let parent = switchyard_telemetry::parent_context(request.headers());
    if parent.has_active_span()
        && let Err(e) = span.set_parent(parent)
    {
        tracing::debug!(error = %e, "cannot continue the client's trace");
    }
    let ctx = RequestContext {
        id: id.clone(),
        started,
        upstream_ns: Arc::default(),
    };
    let upstream = ctx.upstream_ns.clone();
    request.extensions_mut().insert(ctx);
    let in_flight = (!matches!(route, "health" | "metrics")).then(|| state.metrics.in_flight());
    let mut left = ClientLeft {
        state: Some(&state),
        route,
        started,
        span: span.clone(),
    };
    let mut response = next.run(request).instrument(span.clone()).await;
    left.state = None;
    drop(in_flight);
    let elapsed = started.elapsed();
    let overhead = elapsed.saturating_sub(Duration::from_nanos(upstream.load(Ordering::Relaxed)));
    let status = response.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    if !matches!(route, "health" | "metrics") {
        let mut model = header("x-switchyard-model");
        if model.is_empty()
            && let Some(ModelLabel(label)) = response.extensions().get::<ModelLabel>()
        {
            model.clone_from(label);
        }
        // A cache hit never reached the deployment that first answered it.
        let hit = header("x-switchyard-cache") == "hit";
        let deployment = if hit {
            "cache".to_owned()
        } else {
            header("x-switchyard-deployment")
        };
        state
            .metrics
            .request(route, &model, &deployment, status, elapsed.as_secs_f64());
        if !deployment.is_empty() && !hit {
            state.metrics.overhead(overhead.as_secs_f64());
        }
    }
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        // Anthropic's SDKs read the id from `request-id`.
        if matches!(route, "messages" | "count_tokens") {
            headers.insert(HeaderName::from_static("request-id"), v.clone());
        }
        headers.insert(REQUEST_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", overhead.as_secs_f64() * 1000.0)) {
        headers.insert(OVERHEAD, v);
    }
    if state.server.litellm_headers {
        litellm_headers(headers);
    }
    response
}

/// LiteLLM's names for what the gateway's own headers say, for clients and
/// dashboards written against LiteLLM (`server.litellm_headers`).
fn litellm_headers(headers: &mut axum::http::HeaderMap) {
    for (ours, theirs) in [
        ("x-switchyard-response-cost", "x-litellm-response-cost"),
        ("x-switchyard-deployment", "x-litellm-model-id"),
        ("x-switchyard-model", "x-litellm-model-group"),
        ("x-request-id", "x-litellm-call-id"),
    ] {
        if let Some(v) = headers.get(ours).cloned() {
            headers.insert(HeaderName::from_static(theirs), v);
        }
    }
    let retries = headers
        .get("x-switchyard-attempts")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .map(|attempts| attempts.saturating_sub(1));
    if let Some(retries) = retries {
        headers.insert(
            HeaderName::from_static("x-litellm-attempted-retries"),
            HeaderValue::from(retries),
        );
    }
}

/// Longest model name a request-log record (or a span) keeps, in bytes.
pub(crate) const MAX_LOGGED_MODEL: usize = 256;
/// Longest prompt a request-log record keeps, in bytes: its end, which is
/// what the embedder reads by default (`truncation: tail`).
const MAX_LOGGED_PROMPT: usize = 64 * 1024;

/// The first `max` bytes of `text`, cut on a character boundary.
pub(crate) fn clip_start(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The last `max` bytes of `text`, cut on a character boundary.
fn clip_end(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The most of a prompt or an answer a span carries (`capture_content`).
pub(crate) const MAX_CAPTURED: usize = 64 * 1024;

/// `text` cut to [`MAX_CAPTURED`] bytes on a character boundary, marked
/// when cut.
pub(crate) fn clip_captured(mut text: String) -> String {
    if text.len() > MAX_CAPTURED {
        let mut end = MAX_CAPTURED;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("…[truncated]");
    }
    text
}

/// The answer a JSON reply carries, for `gen_ai.completion`: a chat's
/// first message, a completion's first text, a message's content, else the
/// whole body.
pub(crate) fn captured_answer(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let picked = parsed.as_ref().and_then(|v| {
        v.pointer("/choices/0/message")
            .or_else(|| v.pointer("/choices/0/text"))
            .or_else(|| {
                v.get("content")
                    .filter(|_| v.get("type").and_then(|t| t.as_str()) == Some("message"))
            })
    });
    let text = match picked {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::from_utf8_lossy(body).into_owned(),
    };
    clip_captured(text)
}

/// Records the prompt and the end user on the current (`gen_ai`) span,
/// when spans capture content: on the exported span only, never in the
/// local log.
pub(crate) fn capture_prompt(state: &SharedState, call: &crate::dispatch::Call<'_>, end_user: Option<&str>) {
    if !state.telemetry.capture_content {
        return;
    }
    let span = tracing::Span::current();
    if let Some(prompt) = call.captured_prompt() {
        switchyard_telemetry::set_exported_attribute(&span, "gen_ai.prompt", prompt);
    }
    if let Some(user) = end_user {
        switchyard_telemetry::set_exported_attribute(&span, "user.id", user.to_owned());
    }
}

/// A request-log record being filled in as the request goes.
#[derive(Debug)]
pub(crate) struct Trail {
    state: SharedState,
    record: RequestRecord,
    started: Instant,
    finished: bool,
}

impl Trail {
    /// Starts a record, when the request log is on.
    pub(crate) fn start(
        state: &SharedState,
        ctx: &RequestContext,
        principal: &Principal,
        model: &str,
        call: &Call<'_>,
    ) -> Option<Self> {
        let log = state.request_log.as_ref()?;
        let (endpoint, stream) = match call {
            Call::Chat(r) => ("chat", r.is_stream()),
            Call::Completion(r) => ("completions", r.is_stream()),
            Call::Embeddings(_) => ("embeddings", false),
            Call::Messages(r) => ("messages", r.is_stream()),
            Call::CountTokens(..) => ("count_tokens", false),
            Call::Images(_) => ("images", false),
            Call::ImageEdit(_) => ("image_edits", false),
            Call::Moderations(_) => ("moderations", false),
            Call::Speech(_) => ("speech", false),
            Call::Rerank(_) => ("rerank", false),
            Call::Transcription(req) if req.translate => ("translations", false),
            Call::Transcription(_) => ("transcriptions", false),
        };
        Some(Self {
            state: state.clone(),
            record: RequestRecord {
                request_id: ctx.id.clone(),
                endpoint: endpoint.into(),
                key_alias: principal.view().and_then(|v| v.key.key_alias.clone()),
                key_ref: principal.view().map(|v| switchyard_telemetry::key_ref(&v.key.key_id)),
                // Bounded: a client's model name is any string, and a
                // prompt may be megabytes (the log and its queue hold each).
                model: clip_start(model, MAX_LOGGED_MODEL).to_owned(),
                stream,
                prompt: if log.include_prompt() {
                    call.query_text().map(|p| clip_end(&p, MAX_LOGGED_PROMPT).to_owned())
                } else {
                    None
                },
                ..RequestRecord::default()
            },
            started: ctx.started,
            finished: false,
        })
    }

    /// Notes the end user and tags the request named.
    pub(crate) fn labels(&mut self, labels: &switchyard_policy::Labels) {
        self.record.end_user.clone_from(&labels.end_user);
        self.record.tags.clone_from(&labels.tags);
    }

    /// Notes who answered.
    pub(crate) fn routed(&mut self, decision: &Decision<'_>) {
        let r = &mut self.record;
        r.served_model = Some(decision.group.to_owned());
        r.deployment = Some(decision.deployment.name.clone());
        r.strategy = Some(decision.strategy.to_owned());
        r.attempts = decision.attempts;
        r.upstream_request_id.clone_from(&decision.upstream_request_id);
        if let Some(p) = &decision.prediction {
            r.router = Some(p.router.clone());
            r.predicted = Some(p.scores.iter().cloned().collect());
        }
    }

    /// Notes how a request that got no answer went: its attempts, the group
    /// whose failure it ended with (as `served_model`) and, when
    /// an upstream failed it, that deployment.
    pub(crate) fn failed(&mut self, failed: &crate::dispatch::Failed) {
        let r = &mut self.record;
        r.attempts = failed.attempts;
        r.upstream_request_id.clone_from(&failed.upstream_request_id);
        if failed.attempts > 0 {
            r.served_model.clone_from(&failed.group);
        }
        match &failed.error {
            ApiError::Upstream { deployment, .. }
            | ApiError::Deadline {
                deployment: Some(deployment),
                ..
            } => r.deployment = Some(deployment.clone()),
            _ => {}
        }
    }

    /// Notes a cache hit (served by `deployment` when it was stored) or miss.
    pub(crate) fn cache(&mut self, hit: bool, deployment: Option<&str>) {
        self.record.cache = Some(if hit { "hit" } else { "miss" }.into());
        if let Some(d) = deployment {
            self.record.deployment = Some(d.to_owned());
            // The group that made the answer (`group/index`), as the hit's
            // `x-switchyard-model` names it.
            if let Some((group, _)) = d.rsplit_once('/') {
                self.record.served_model = Some(group.to_owned());
            }
        }
    }

    /// Notes the usage and what was charged.
    pub(crate) fn charged(&mut self, usage: Option<TokenUsage>, record: Option<&SpendRecord>) {
        if let Some(u) = usage {
            self.record.prompt_tokens = u.prompt;
            self.record.completion_tokens = u.completion;
        }
        if let Some(r) = record {
            self.record.cost_usd = to_usd(r.cost_nanos);
        }
    }

    /// Notes usage and cost known without a spend record (a stream's end).
    pub(crate) fn charged_raw(&mut self, usage: Option<TokenUsage>, cost_nanos: i64) {
        self.charged(usage, None);
        self.record.cost_usd = to_usd(cost_nanos);
    }

    /// Notes that the response head is being sent now.
    pub(crate) fn first_byte(&mut self) {
        self.record.ttfb_ms = Some(self.started.elapsed().as_secs_f64() * 1000.0);
    }

    /// Appends the record with the answer's status.
    pub(crate) fn finish(mut self, status: u16, error: Option<&ApiError>) {
        self.emit(status, error.map(error_class));
    }

    /// Appends the record with a status and a failure class.
    pub(crate) fn finish_with(mut self, status: u16, class: Option<String>) {
        self.emit(status, class);
    }

    fn emit(&mut self, status: u16, class: Option<String>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        // Answered after its client went away (the work goes on, and is
        // charged): the client got nothing, as the metrics count it.
        let (status, class) = if status < 400 && crate::routes::client_gone() {
            (499, Some("client_closed".to_owned()))
        } else {
            (status, class)
        };
        let latency = self.started.elapsed().as_secs_f64() * 1000.0;
        let mut record = std::mem::take(&mut self.record);
        record.latency_ms = latency;
        record.ttfb_ms.get_or_insert(latency);
        record.status = status;
        record.error_class = class;
        if let Some(log) = &self.state.request_log {
            log.record(record);
        }
    }
}

impl Drop for Trail {
    /// A record never finished is a request the client abandoned, or one a
    /// shutdown ended; dropped while its task panics, the 500 the client
    /// is answered.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.emit(500, Some("internal_error".into()));
        } else if *self.state.cut.borrow() {
            self.emit(503, Some("shutting_down".into()));
        } else {
            self.emit(499, Some("client_closed".into()));
        }
    }
}

/// The request log's class of an error: its code, else its type.
pub(crate) fn error_class(error: &ApiError) -> String {
    let (_, kind, _, code) = error.parts();
    code.unwrap_or_else(|| kind.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Azure clients' paths are named as the routes they reach.
    #[test]
    fn azure_paths_are_named_by_their_route() {
        for (path, name) in [
            ("/openai/deployments/gpt-4o/chat/completions", "chat"),
            ("/v1/deployments/gpt-4o/embeddings", "embeddings"),
            ("/engines/m/completions", "completions"),
            ("/openai/deployments/gpt-4o/images/generations", "other"),
            ("/v1/chat/completions", "chat"),
        ] {
            assert_eq!(route_name(path), name, "{path}");
        }
    }

    #[test]
    fn logged_names_and_prompts_are_bounded_on_character_boundaries() {
        let model = "é".repeat(1_000);
        let kept = clip_start(&model, MAX_LOGGED_MODEL);
        assert!(kept.len() <= MAX_LOGGED_MODEL && kept.starts_with('é'));
        let prompt = format!("{}the question?", "ü".repeat(100_000));
        let kept = clip_end(&prompt, MAX_LOGGED_PROMPT);
        assert!(kept.len() <= MAX_LOGGED_PROMPT && kept.ends_with("the question?"));
        assert_eq!(clip_end("short", 10), "short");
    }

    #[test]
    fn a_key_in_the_path_is_not_recorded() {
        assert_eq!(span_path("/key/sk-secret-1234/regenerate"), "/key/{key}/regenerate");
        assert_eq!(span_path("/key/regenerate"), "/key/regenerate");
        assert_eq!(span_path("/key/sk-secret-1234/regenerate/"), "/key/{key}/regenerate/");
        assert_eq!(
            span_path("/v1/key/sk-secret-1234/regenerate"),
            "/v1/key/{key}/regenerate"
        );
        assert_eq!(span_path("/key/sk-secret-1234"), "/key/{key}");
        assert_eq!(span_path("/key/"), "/key/");
        assert_eq!(span_path("/key/info"), "/key/info");
        assert_eq!(span_path("/v1/chat/completions"), "/v1/chat/completions");
    }
}
