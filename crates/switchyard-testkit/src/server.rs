//! The mock upstream server: lifecycle, request recording and routing to the
//! OpenAI, Anthropic and Bedrock protocol handlers.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::embeddings::{bedrock_invoke, embeddings};
use crate::openai_mock::{
    RequestCtx, chat_completions, completions, error_response, injected_error, invalid_request, models,
    non_stream_fault,
};
use crate::scenario::{SCENARIO_HEADER, Scenario};
use crate::sse::{StreamCounters, StreamStats};
use crate::{anthropic_mock, bedrock_claude, bedrock_mock};

/// One HTTP request received by a [`MockUpstream`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `"POST"`.
    pub method: String,
    /// Request path, e.g. `"/v1/chat/completions"`.
    pub path: String,
    /// Raw query string, if any (without the `?`).
    pub query: Option<String>,
    /// Request headers in arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Parsed JSON body, or `Null` when the body was empty or not JSON.
    pub body: Value,
    /// When the request arrived.
    pub received_at: Instant,
    /// The client's address (its port tells connections apart).
    pub peer: Option<SocketAddr>,
}

impl RecordedRequest {
    /// Value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How many recent requests a mock keeps for inspection.
pub const MAX_RECORDED: usize = 10_000;

/// State shared by all requests to one mock server.
#[derive(Debug, Default)]
pub(crate) struct MockState {
    requests: Mutex<Vec<RecordedRequest>>,
    next_id: AtomicU64,
    /// Counter of the request ids put on answers.
    request_ids: AtomicU64,
    /// Requests seen per `fail_first` spec.
    spec_counts: Mutex<HashMap<String, u64>>,
    /// Streaming response counters.
    pub(crate) streams: Arc<StreamCounters>,
}

impl MockState {
    /// Next value of the per-server response id counter.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Counts one more request carrying `spec`; returns the new count.
    fn count_spec(&self, spec: &str) -> u64 {
        let mut counts = self.spec_counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(spec.to_owned()).or_insert(0);
        *count += 1;
        *count
    }

    /// Keeps the request, dropping the oldest beyond [`MAX_RECORDED`] so a
    /// long benchmark run does not grow without bound.
    fn record(&self, request: RecordedRequest) {
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        if requests.len() >= MAX_RECORDED {
            requests.drain(..MAX_RECORDED / 2);
        }
        requests.push(request);
    }
}

/// A mock upstream listening on a local port that speaks the OpenAI
/// (and Azure OpenAI), Anthropic Messages and AWS Bedrock Runtime protocols.
///
/// The server task is aborted when the value is dropped.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<MockState>,
    task: JoinHandle<()>,
}

impl MockUpstream {
    /// Starts a mock on an ephemeral port of 127.0.0.1.
    pub async fn start() -> MockUpstream {
        MockUpstream::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("bind mock upstream on 127.0.0.1")
    }

    /// Starts a mock listening on `addr` (port 0 picks a free port).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<MockUpstream> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(MockState::default());
        let app = Router::new().fallback(handle_with_id).with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            // Serving only ends when the task is aborted.
            let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await;
        });
        Ok(MockUpstream { addr, state, task })
    }

    /// The address the server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// OpenAI-style base URL, e.g. `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.root_url())
    }

    /// Server root URL without `/v1`, e.g. `http://127.0.0.1:PORT`: the Azure
    /// `api_base`, the Anthropic base URL and the Bedrock endpoint URL.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .cloned()
    }

    /// Counters of started, completed, cancelled and aborted streams.
    pub fn stream_stats(&self) -> StreamStats {
        self.state.streams.snapshot()
    }

    /// Waits until at least `n` streams were cancelled, polling every 20 ms.
    /// Returns `false` if that did not happen within `max_wait`.
    pub async fn wait_for_cancelled(&self, n: usize, max_wait: Duration) -> bool {
        let deadline = Instant::now() + max_wait;
        loop {
            if self.stream_stats().cancelled >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resolves once the server task ends (it only ends if it fails).
    pub async fn serve_forever(self) {
        let mut this = self;
        let _ = (&mut this.task).await;
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The API operations the mock understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    ChatCompletions,
    Completions,
    Embeddings,
    Models,
    Images,
    ImageEdits,
    Moderations,
    Speech,
    Transcriptions,
    Translations,
    Rerank,
    CohereRerank,
    Messages,
    CountTokens,
    Converse,
    ConverseStream,
    InvokeModel,
    InvokeModelStream,
    BedrockCountTokens,
}

/// The wire protocol of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    OpenAi,
    Anthropic,
    Bedrock,
}

impl Operation {
    fn protocol(self) -> Protocol {
        match self {
            Operation::ChatCompletions
            | Operation::Completions
            | Operation::Embeddings
            | Operation::Models
            | Operation::Images
            | Operation::ImageEdits
            | Operation::Moderations
            | Operation::Speech
            | Operation::Transcriptions
            | Operation::Translations
            | Operation::Rerank
            | Operation::CohereRerank => Protocol::OpenAi,
            Operation::Messages | Operation::CountTokens => Protocol::Anthropic,
            Operation::Converse
            | Operation::ConverseStream
            | Operation::InvokeModel
            | Operation::InvokeModelStream
            | Operation::BedrockCountTokens => Protocol::Bedrock,
        }
    }
}

impl Protocol {
    /// A 400 error in the protocol's format.
    fn invalid_request(self, message: &str) -> Response {
        match self {
            Protocol::OpenAi => invalid_request(message, None),
            Protocol::Anthropic => anthropic_mock::invalid_request(message),
            Protocol::Bedrock => bedrock_mock::validation_error(message),
        }
    }

    /// The protocol's error for a prompt longer than the context window.
    fn context_window_error(self, limit: usize, used: usize) -> Response {
        match self {
            Protocol::OpenAi => error_response(
                StatusCode::BAD_REQUEST,
                &format!(
                    "This model's maximum context length is {limit} tokens. However, your messages resulted in {used} tokens. Please reduce the length of the messages."
                ),
                "invalid_request_error",
                Some("messages"),
                Some("context_length_exceeded"),
            ),
            Protocol::Anthropic => {
                anthropic_mock::invalid_request(&format!("prompt is too long: {used} tokens > {limit} maximum"))
            }
            Protocol::Bedrock => bedrock_mock::validation_error("Input is too long for requested model."),
        }
    }

    /// The protocol's content-policy refusal.
    fn content_filter_error(self) -> Option<Response> {
        match self {
            Protocol::OpenAi => Some(error_response(
                StatusCode::BAD_REQUEST,
                "Your request was rejected as a result of our safety system.",
                "invalid_request_error",
                None,
                Some("content_policy_violation"),
            )),
            Protocol::Anthropic => Some(anthropic_mock::invalid_request(
                "Output blocked by content filtering policy",
            )),
            // Bedrock's guardrails answer 200 with `guardrail_intervened`
            // (its handler does that).
            Protocol::Bedrock => None,
        }
    }

    /// The error for a `status=CODE` directive in the protocol's format.
    fn injected_error(self, code: u16, retry_after: Option<u64>) -> Response {
        match self {
            Protocol::OpenAi => injected_error(code, retry_after),
            Protocol::Anthropic => anthropic_mock::injected_error(code, retry_after),
            Protocol::Bedrock => bedrock_mock::injected_error(code, retry_after),
        }
    }
}

/// A classified request path.
struct Route {
    operation: Operation,
    /// Deployment name for Azure-style paths.
    deployment: Option<String>,
    /// Azure's v1 API (`/openai/v1/…`): the deployment is the body's `model`.
    azure_v1: bool,
    /// Percent-decoded model id for Bedrock paths.
    model_id: Option<String>,
}

fn classify(path: &str) -> Option<Route> {
    if let Some(rest) = path.strip_prefix("/model/") {
        let (model_id, tail) = rest.rsplit_once('/')?;
        let operation = match tail {
            "converse" => Operation::Converse,
            "converse-stream" => Operation::ConverseStream,
            "invoke" => Operation::InvokeModel,
            "invoke-with-response-stream" => Operation::InvokeModelStream,
            "count-tokens" => Operation::BedrockCountTokens,
            _ => return None,
        };
        let model_id = bedrock_mock::percent_decode(model_id).filter(|id| !id.is_empty())?;
        return Some(Route {
            operation,
            deployment: None,
            azure_v1: false,
            model_id: Some(model_id),
        });
    }
    if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        let (deployment, tail) = rest.split_once('/')?;
        let operation = match tail {
            "chat/completions" => Operation::ChatCompletions,
            "completions" => Operation::Completions,
            "embeddings" => Operation::Embeddings,
            "images/generations" => Operation::Images,
            "images/edits" => Operation::ImageEdits,
            "audio/speech" => Operation::Speech,
            "audio/transcriptions" => Operation::Transcriptions,
            "audio/translations" => Operation::Translations,
            _ => return None,
        };
        if deployment.is_empty() {
            return None;
        }
        return Some(Route {
            operation,
            deployment: Some(deployment.to_owned()),
            azure_v1: false,
            model_id: None,
        });
    }
    if let Some(rest) = path.strip_prefix("/openai/v1") {
        let operation = match rest {
            "/chat/completions" => Operation::ChatCompletions,
            "/completions" => Operation::Completions,
            "/embeddings" => Operation::Embeddings,
            "/images/generations" => Operation::Images,
            "/images/edits" => Operation::ImageEdits,
            "/audio/speech" => Operation::Speech,
            "/audio/transcriptions" => Operation::Transcriptions,
            "/audio/translations" => Operation::Translations,
            _ => return None,
        };
        return Some(Route {
            operation,
            deployment: None,
            azure_v1: true,
            model_id: None,
        });
    }
    if path == "/v2/rerank" {
        return Some(Route {
            operation: Operation::CohereRerank,
            deployment: None,
            azure_v1: false,
            model_id: None,
        });
    }
    let rest = path.strip_prefix("/v1").unwrap_or(path);
    let operation = match rest {
        "/chat/completions" => Operation::ChatCompletions,
        "/completions" => Operation::Completions,
        "/embeddings" => Operation::Embeddings,
        "/images/generations" => Operation::Images,
        "/images/edits" => Operation::ImageEdits,
        "/moderations" => Operation::Moderations,
        "/audio/speech" => Operation::Speech,
        "/audio/transcriptions" => Operation::Transcriptions,
        "/audio/translations" => Operation::Translations,
        "/rerank" => Operation::Rerank,
        "/models" => Operation::Models,
        "/messages" => Operation::Messages,
        "/messages/count_tokens" => Operation::CountTokens,
        _ => return None,
    };
    Some(Route {
        operation,
        deployment: None,
        azure_v1: false,
        model_id: None,
    })
}

fn has_query_param(query: Option<&str>, name: &str) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            key == name && !value.is_empty()
        })
    })
}

/// Azure's answer to a request without its `api-key` header.
fn azure_key_error(request: &RecordedRequest) -> Option<Response> {
    missing(request.header("api-key")).then(|| {
        error_response(
            StatusCode::UNAUTHORIZED,
            "Access denied due to missing or invalid api-key header.",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        )
    })
}

/// Checks Azure (`api-version`, `api-key`) or bearer-token requirements.
/// On Azure's v1 path the version is optional and undated (`preview`,
/// `latest`); on the deployments path it is a date.
fn check_auth(request: &RecordedRequest, azure: bool, azure_v1: bool) -> Option<Response> {
    let version = request
        .query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("api-version=")));
    if azure_v1 {
        if version.is_some_and(|v| !matches!(v, "preview" | "latest")) {
            return Some(error_response(
                StatusCode::BAD_REQUEST,
                "The v1 API takes no dated api-version.",
                "invalid_request_error",
                None,
                Some("unsupported_api_version"),
            ));
        }
        return azure_key_error(request);
    }
    if azure && version.is_some_and(|v| !v.starts_with("20")) {
        return Some(error_response(
            StatusCode::NOT_FOUND,
            "Resource not found",
            "invalid_request_error",
            None,
            Some("404"),
        ));
    }
    if azure {
        if !has_query_param(request.query.as_deref(), "api-version") {
            return Some(error_response(
                StatusCode::BAD_REQUEST,
                "Missing required query parameter: api-version",
                "invalid_request_error",
                None,
                Some("missing_api_version"),
            ));
        }
        // Azure refuses `stream_options` before API version 2024-09-01.
        let version = request
            .query
            .as_deref()
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("api-version=")))
            .unwrap_or("");
        let dated_before = version
            .get(..10)
            .is_some_and(|d| d.starts_with("20") && d < "2024-09-01");
        if request.body.get("stream_options").is_some() && dated_before {
            return Some(error_response(
                StatusCode::BAD_REQUEST,
                "Unrecognized request argument supplied: stream_options",
                "invalid_request_error",
                None,
                None,
            ));
        }
        return azure_key_error(request);
    }
    let valid = match request.header("authorization") {
        None => true,
        Some(value) => value
            .strip_prefix("Bearer ")
            .is_some_and(|token| !token.trim().is_empty()),
    };
    if valid {
        None
    } else {
        Some(error_response(
            StatusCode::UNAUTHORIZED,
            "Invalid authorization header: expected 'Bearer <key>'.",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        ))
    }
}

/// Words in the prompt: every string under `messages`, `system` and `prompt`.
fn prompt_words(body: &Value) -> usize {
    fn words(v: &Value) -> usize {
        match v {
            Value::String(s) => s.split_whitespace().count(),
            Value::Array(items) => items.iter().map(words).sum(),
            Value::Object(map) => map.values().map(words).sum(),
            _ => 0,
        }
    }
    ["messages", "system", "prompt"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(words)
        .sum()
}

fn missing(value: Option<&str>) -> bool {
    value.is_none_or(|v| v.trim().is_empty())
}

/// [`handle`], with the request id each provider puts on every answer,
/// errors included: `x-request-id` (OpenAI, Azure), `request-id`
/// (Anthropic), `x-amzn-requestid` (Bedrock).
async fn handle_with_id(State(state): State<Arc<MockState>>, request: Request) -> Response {
    let protocol = classify(request.uri().path()).map(|route| route.operation.protocol());
    let n = state.request_ids.fetch_add(1, Ordering::Relaxed) + 1;
    let mut response = handle(State(state), request).await;
    let (name, value) = match protocol {
        Some(Protocol::Anthropic) => ("request-id", format!("req_mock{n:016x}")),
        Some(Protocol::Bedrock) => ("x-amzn-requestid", format!("{n:08x}-0000-4000-8000-000000000000")),
        _ => ("x-request-id", format!("req_mock{n:016x}")),
    };
    if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
        response.headers_mut().insert(name, value);
    }
    response
}

async fn handle(State(state): State<Arc<MockState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let multipart = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let json: Value = if multipart {
        crate::audio::form_as_json(&parts, bytes.clone()).await
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    let recorded = RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: json.clone(),
        received_at: Instant::now(),
        peer: parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|info| info.0),
    };
    state.record(recorded.clone());

    let Some(route) = classify(&recorded.path) else {
        let message = format!("Unknown request URL: {} {}", recorded.method, recorded.path);
        return error_response(
            StatusCode::NOT_FOUND,
            &message,
            "invalid_request_error",
            None,
            Some("unknown_url"),
        );
    };
    let expected = if route.operation == Operation::Models {
        Method::GET
    } else {
        Method::POST
    };
    if parts.method != expected {
        let message = format!("Method {} not allowed for {}", recorded.method, recorded.path);
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &message,
            "invalid_request_error",
            None,
            None,
        );
    }
    let azure = route.deployment.is_some() || route.azure_v1;
    let protocol = route.operation.protocol();
    let auth_error = match protocol {
        Protocol::OpenAi => check_auth(&recorded, route.deployment.is_some(), route.azure_v1),
        Protocol::Anthropic => anthropic_mock::check_auth(&recorded),
        Protocol::Bedrock => bedrock_mock::check_auth(&recorded),
    };
    if let Some(response) = auth_error {
        return response;
    }

    let model = route
        .deployment
        .or(route.model_id)
        .or_else(|| json.get("model").and_then(Value::as_str).map(str::to_owned));
    let spec = Scenario::spec_for(recorded.header(SCENARIO_HEADER), model.as_deref());
    let mut scenario = match Scenario::parse(spec) {
        Ok(scenario) => scenario,
        Err(message) => return protocol.invalid_request(&message),
    };
    if let Some(n) = scenario.fail_first
        && state.count_spec(spec) > n
    {
        scenario = Scenario::default();
    }
    if let Some(limit) = scenario.context_window {
        let used = prompt_words(&json);
        if used > limit {
            return protocol.context_window_error(limit, used);
        }
    }
    if scenario.expired_token && protocol == Protocol::Bedrock {
        return bedrock_mock::expired_token();
    }
    if scenario.skewed_clock && protocol == Protocol::Bedrock {
        return bedrock_mock::skewed_clock();
    }
    if scenario.moderated && protocol == Protocol::OpenAi {
        return crate::openai_mock::moderation_refusal();
    }
    if scenario.content_filter && azure {
        return crate::openai_mock::azure_content_filter_error();
    }
    if scenario.content_filter
        && let Some(refusal) = protocol.content_filter_error()
    {
        return refusal;
    }

    if let Some(ms) = scenario.first_byte_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if scenario.hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if let Some(code) = scenario.status {
        return protocol.injected_error(code, scenario.retry_after);
    }
    if scenario.unknown_model {
        return crate::openai_mock::error_response(
            StatusCode::NOT_FOUND,
            "The model does not exist or you do not have access to it.",
            "invalid_request_error",
            None,
            Some("model_not_found"),
        );
    }
    if scenario.redirect {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(axum::http::header::LOCATION, crate::scenario::REDIRECT_TARGET)],
        )
            .into_response();
    }

    let ctx = RequestCtx {
        state: &state,
        body: &json,
        model: model.unwrap_or_default(),
        scenario: &scenario,
        azure,
    };
    match route.operation {
        Operation::ChatCompletions => chat_completions(&ctx),
        Operation::Completions => completions(&ctx),
        Operation::Embeddings => embeddings(&ctx),
        Operation::Images => crate::images::images_generations(&ctx),
        Operation::ImageEdits => crate::images::image_edits(&ctx),
        Operation::Moderations => crate::images::moderations(&ctx),
        Operation::Speech => crate::audio::speech(&ctx),
        Operation::Transcriptions => crate::audio::transcription(&ctx, false),
        Operation::Translations => crate::audio::transcription(&ctx, true),
        Operation::Rerank => crate::images::rerank(&ctx, false),
        Operation::CohereRerank => crate::images::rerank(&ctx, true),
        Operation::Models => non_stream_fault(&scenario).unwrap_or_else(models),
        Operation::Messages => anthropic_mock::messages(&ctx),
        Operation::CountTokens => anthropic_mock::count_tokens(&ctx),
        Operation::Converse => bedrock_mock::converse(&ctx),
        Operation::ConverseStream => bedrock_mock::converse_stream(&ctx),
        Operation::InvokeModel if bedrock_claude::is_claude(&ctx) => bedrock_claude::invoke(&ctx),
        Operation::InvokeModel => bedrock_invoke(&ctx),
        Operation::InvokeModelStream => bedrock_claude::invoke_stream(&ctx),
        Operation::BedrockCountTokens => bedrock_claude::count_tokens(&ctx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        let r = classify("/v1/chat/completions").unwrap();
        assert_eq!(r.operation, Operation::ChatCompletions);
        assert!(r.deployment.is_none());
        assert_eq!(classify("/embeddings").unwrap().operation, Operation::Embeddings);
        let r = classify("/openai/deployments/gpt-4o::hang/completions").unwrap();
        assert_eq!(r.operation, Operation::Completions);
        assert_eq!(r.deployment.as_deref(), Some("gpt-4o::hang"));
        assert!(classify("/v1/unknown").is_none());
        assert!(classify("/openai/deployments//embeddings").is_none());
        assert_eq!(classify("/v1/messages").unwrap().operation, Operation::Messages);
        assert_eq!(
            classify("/messages/count_tokens").unwrap().operation,
            Operation::CountTokens
        );
        let r = classify("/model/us.anthropic.claude%3A0%3A%3Ahang/converse-stream").unwrap();
        assert_eq!(r.operation, Operation::ConverseStream);
        assert_eq!(r.model_id.as_deref(), Some("us.anthropic.claude:0::hang"));
        assert_eq!(classify("/model/m/invoke").unwrap().operation, Operation::InvokeModel);
        assert_eq!(
            classify("/model/m/invoke-with-response-stream").unwrap().operation,
            Operation::InvokeModelStream
        );
        assert!(classify("/model//converse").is_none());
        assert!(classify("/model/m/other").is_none());
    }

    #[test]
    fn query_params() {
        assert!(has_query_param(Some("a=1&api-version=2024-02-01"), "api-version"));
        assert!(!has_query_param(Some("api-version="), "api-version"));
        assert!(!has_query_param(None, "api-version"));
    }
}
