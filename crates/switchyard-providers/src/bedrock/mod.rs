//! AWS Bedrock through the SDK's Converse and ConverseStream APIs (chat) and
//! InvokeModel (Titan and Cohere embeddings).
//!
//! The SDK client is built on first use: with explicit credentials from the
//! configuration, or else from the default credential chain (environment,
//! profile, web identity, container and instance roles). The endpoint URL can
//! be overridden per deployment. The SDK's own retries are off: the gateway
//! decides what to retry and where.

pub mod claude;
mod convert;
mod stream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::http::HttpResponse;
use aws_sdk_bedrockruntime::config::{Credentials, Region};
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::Blob;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use switchyard_api::{ChatCompletionRequest, CompletionRequest, EmbeddingInput, EmbeddingRequest, Usage};
use tokio::sync::OnceCell;

use crate::chunks::ChunkBuilder;
use crate::http::Timeouts;
use crate::{ChunkStream, Provider, ProviderError, ProviderResponse, Result, Secret, TimeoutPhase};

/// Static AWS credentials from the configuration.
#[derive(Debug, Clone)]
pub struct StaticCredentials {
    /// `aws_access_key_id`.
    pub access_key_id: Secret,
    /// `aws_secret_access_key`.
    pub secret_access_key: Secret,
    /// `aws_session_token`, for temporary credentials.
    pub session_token: Option<Secret>,
}

/// Settings of a Bedrock deployment.
#[derive(Debug, Clone)]
pub struct BedrockSettings {
    /// AWS region, e.g. `us-east-1`.
    pub region: String,
    /// Endpoint override (a VPC endpoint, a proxy, a test server).
    pub endpoint_url: Option<String>,
    /// Explicit credentials; `None` uses the default credential chain.
    pub credentials: Option<StaticCredentials>,
    /// `maxTokens` when the client sends none; without it Claude gets
    /// 4,096 and other models their own default.
    pub default_max_tokens: Option<u32>,
    /// The id to invoke instead of the request's model: an application
    /// inference profile or provisioned throughput ARN. The request's model
    /// still names the foundation model, which decides the request format.
    pub model_id: Option<String>,
    /// Connect and total timeouts; first-byte bounds a stream's first event.
    pub timeouts: Timeouts,
    /// Drop the parameters Converse cannot express (`logprobs`, `n` > 1, …)
    /// instead of refusing the request.
    pub drop_params: bool,
}

/// AWS Bedrock Runtime.
#[derive(Debug)]
pub struct BedrockProvider {
    settings: BedrockSettings,
    client: OnceCell<Client>,
    counter: AtomicU64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// With a session token of the configuration's own (`aws_session_token`),
/// an expired token is renewed by nothing: it is a rejected key (marked
/// until a reload), not a passing fault to retry.
fn expired_for_good(err: ProviderError, own_credentials: bool) -> ProviderError {
    match err {
        ProviderError::Status {
            status: 503,
            message,
            kind,
            code: Some(code),
            param,
            retry_after,
            details,
        } if own_credentials && code == "ExpiredTokenException" => ProviderError::Status {
            status: 403,
            message,
            kind,
            code: Some(code),
            param,
            retry_after,
            details,
        },
        other => other,
    }
}

/// A typed error for an SDK failure; messages come from the service, never credentials.
fn sdk_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    err: SdkError<E, HttpResponse>,
) -> ProviderError {
    match &err {
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().map(str::to_owned);
            let status = match code.as_deref() {
                // The model failed on a valid request (HTTP 424): the
                // upstream's fault, retried or failed over.
                Some("ModelErrorException") => 502,
                // An account or region quota: another deployment may serve.
                Some("ServiceQuotaExceededException") => 429,
                // Temporary credentials (a role's, an instance's) that ran
                // out, or a signature a skewed clock made stale: the
                // credential chain renews them, so the key is not marked
                // rejected until a reload; the attempt is retried.
                Some("ExpiredTokenException") => 503,
                Some("InvalidSignatureException")
                    if ctx
                        .err()
                        .message()
                        .map(str::to_ascii_lowercase)
                        .is_some_and(|m| m.contains("expired") || m.contains("signature not yet current")) =>
                {
                    503
                }
                // The deployment names a model this account or region
                // cannot call as configured: its fault, as a 404 from an
                // upstream is, so another deployment is tried.
                Some("ValidationException") if names_unusable_model(ctx.err().message()) => 404,
                // Access to the model or the action (model access not
                // granted, a role without the streaming action, a region
                // denied behind an inference profile), rarely the
                // credentials themselves: like a model this deployment
                // cannot call, another deployment is tried and the breaker
                // counts it, instead of the key being taken for invalid
                // until a reload.
                Some("AccessDeniedException") => 404,
                _ => ctx.raw().status().as_u16(),
            };
            let said = ctx.err().message().unwrap_or("the service returned an error");
            // Its words name the gateway's account, role and session: they
            // go to the log, not to the client.
            let message = if code.as_deref() == Some("AccessDeniedException") {
                tracing::warn!(message = %crate::error::clipped(said), "Bedrock denied the gateway access (AccessDeniedException)");
                "Bedrock denied the gateway's AWS identity access to this model or action (AccessDeniedException); \
                 its message is in the gateway's log"
                    .to_owned()
            } else {
                said.to_owned()
            };
            ProviderError::Status {
                status,
                message,
                // AWS's exception name is the code; the type is left to
                // the status (`rate_limit_error`…), as OpenAI's clients read
                // it.
                kind: None,
                code,
                param: None,
                retry_after: None,
                details: None,
            }
        }
        // Credentials that could not be had: see `credentials_fault`.
        SdkError::DispatchFailure(_) if credentials_failure(&err).is_some() => {
            credentials_fault(credentials_failure(&err), &DisplayErrorContext(&err).to_string())
        }
        SdkError::TimeoutError(_) => ProviderError::Timeout(TimeoutPhase::Total),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => ProviderError::Timeout(TimeoutPhase::Connect),
        SdkError::DispatchFailure(failure) if failure.is_io() => {
            ProviderError::Connect(DisplayErrorContext(&err).to_string())
        }
        SdkError::ResponseError(_) => ProviderError::InvalidResponse(DisplayErrorContext(&err).to_string()),
        _ => ProviderError::Transport(DisplayErrorContext(&err).to_string()),
    }
}

/// Whether a `ValidationException`'s message says the model id cannot be
/// called as it is: unknown, or served only through an inference profile.
fn names_unusable_model(message: Option<&str>) -> bool {
    let Some(message) = message else {
        return false;
    };
    let message = message.to_ascii_lowercase();
    [
        "model identifier is invalid",
        "on-demand throughput isn",
        "id or arn of an inference profile",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// The credentials failure `err` came from, anywhere in its chain.
fn credentials_failure<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a aws_credential_types::provider::error::CredentialsError> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<aws_credential_types::provider::error::CredentialsError>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// What credentials that could not be had are: none found (an empty
/// provider chain, an expired SSO session) or a configuration the chain
/// cannot use is the deployment's configuration, which no retry mends; a
/// provider that timed out or failed (the instance metadata service, STS
/// answering 503) is passing, retried or failed over like a connection
/// failure.
fn credentials_fault(
    failure: Option<&aws_credential_types::provider::error::CredentialsError>,
    detail: &str,
) -> ProviderError {
    use aws_credential_types::provider::error::CredentialsError as E;
    match failure {
        Some(E::ProviderTimedOut(_)) => ProviderError::Timeout(TimeoutPhase::Connect),
        // The chain's words (an STS refusal) name the account and role:
        // they go to the log, not to the client.
        Some(E::ProviderError(_) | E::Unhandled(_)) => {
            tracing::warn!(detail = %crate::error::clipped(detail), "AWS credentials could not be fetched");
            ProviderError::Connect("AWS credentials could not be fetched (the reason is in the gateway's log)".into())
        }
        _ => ProviderError::InvalidConfig(format!("AWS credentials could not be loaded ({detail})")),
    }
}

/// An exception Bedrock sent inside a stream (`throttlingException`,
/// `modelStreamErrorException`…), typed as the status it stands for, so a
/// throttled stream is a 429 (retried, counted against the deployment)
/// rather than a broken answer. Before any output (`begun`: events past
/// the message's start were read) it is Bedrock's answer to the request, as
/// an HTTP error would be: a `validationException` then is the client's 400.
pub(crate) fn stream_exception<
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
>(
    err: &SdkError<E, R>,
    name: impl Fn(&E) -> Option<&'static str>,
    begun: bool,
) -> ProviderError {
    // Modelled stream exceptions carry no code in their metadata: their
    // variant names them.
    if let SdkError::ServiceError(ctx) = err
        && let Some(code) = ctx.err().code().or_else(|| name(ctx.err()))
    {
        // In a stream the exception names start in lower case
        // (`throttlingException`), in a response's headers in upper case.
        let status = match code.to_ascii_lowercase().as_str() {
            "throttlingexception" => 429,
            "serviceunavailableexception" => 503,
            "internalserverexception" => 500,
            "modelstreamerrorexception" => 502,
            "modeltimeoutexception" => 408,
            "validationexception" => 400,
            "accessdeniedexception" => 403,
            _ => 500,
        };
        let message = ctx.err().message().unwrap_or("the service reported an error");
        let typed = ProviderError::Status {
            status,
            message: format!("{message} (in the stream)"),
            kind: None,
            code: Some(code.to_owned()),
            param: None,
            retry_after: None,
            details: None,
        };
        if !begun && !matches!(status, 401..=403) {
            return typed;
        }
        return crate::error::in_stream(typed, &format!("{code}: {message}"));
    }
    ProviderError::Stream(format!("the upstream stream failed: {}", DisplayErrorContext(err)))
}

/// Sets the model and the translated Converse input on a Converse or ConverseStream builder.
macro_rules! with_converse_input {
    ($builder:expr, $target:expr, $input:expr) => {
        $builder
            .model_id($target)
            .set_system(Some($input.system))
            .set_messages(Some($input.messages))
            .inference_config($input.inference)
            .set_tool_config($input.tools)
            .set_additional_model_request_fields($input.additional)
            .set_output_config($input.output)
    };
}

impl BedrockProvider {
    /// The request as this deployment sends it: with `drop_params`, without
    /// the parameters Converse cannot express, with a forced tool choice
    /// the model refuses sent as `auto`, and without stop sequences it refuses.
    fn as_sent<'a>(&self, req: &'a ChatCompletionRequest) -> std::borrow::Cow<'a, ChatCompletionRequest> {
        let sent = crate::anthropic::translate::as_sent(req, self.settings.drop_params);
        if !self.settings.drop_params {
            return sent;
        }
        let sent = match convert::without_forced_choice(&sent) {
            Some(unforced) => std::borrow::Cow::Owned(unforced),
            None => sent,
        };
        match convert::without_refused_stop(&sent) {
            Some(unstopped) => std::borrow::Cow::Owned(unstopped),
            None => sent,
        }
    }

    /// The id a call for `model` invokes: the configured inference profile or
    /// provisioned ARN, else the model itself.
    pub(crate) fn target<'a>(&'a self, model: &'a str) -> &'a str {
        self.settings.model_id.as_deref().unwrap_or(model)
    }

    /// How long the first event of an answer may take.
    pub fn first_byte_timeout(&self) -> std::time::Duration {
        self.settings.timeouts.first_byte
    }

    /// How long a stream that has begun may stay silent.
    pub fn idle_timeout(&self) -> std::time::Duration {
        self.settings.timeouts.idle
    }

    /// Awaits a non-streaming SDK call's answer, bounded by the total
    /// timeout (the SDK's operation timeout): its response comes when the
    /// whole answer is written.
    pub(crate) async fn answered<T, E>(
        &self,
        send: impl std::future::Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        send.await.map_err(|e| self.failed(e))
    }

    /// A typed error for an SDK failure of this deployment.
    fn failed<E>(&self, err: SdkError<E, HttpResponse>) -> ProviderError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let own_token = self
            .settings
            .credentials
            .as_ref()
            .is_some_and(|c| c.session_token.is_some());
        expired_for_good(sdk_error(err), own_token)
    }

    /// Awaits a streaming SDK call's response within the first-byte timeout.
    pub(crate) async fn within_first_byte<T, E>(
        &self,
        send: impl std::future::Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match tokio::time::timeout(self.settings.timeouts.first_byte, send).await {
            Ok(result) => result.map_err(|e| self.failed(e)),
            Err(_) => Err(ProviderError::Timeout(TimeoutPhase::FirstByte)),
        }
    }

    /// A provider for one Bedrock deployment; the SDK client is built on first use.
    pub fn new(settings: BedrockSettings) -> Self {
        Self {
            settings,
            client: OnceCell::new(),
            counter: AtomicU64::new(0),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let s = &self.settings;
                let timeouts = TimeoutConfig::builder()
                    .connect_timeout(s.timeouts.connect)
                    .operation_timeout(s.timeouts.total)
                    .build();
                let retry = RetryConfig::standard().with_max_attempts(1);
                let mut builder = match &s.credentials {
                    Some(c) => aws_sdk_bedrockruntime::Config::builder()
                        .behavior_version(BehaviorVersion::latest())
                        .region(Region::new(s.region.clone()))
                        .credentials_provider(Credentials::new(
                            c.access_key_id.expose(),
                            c.secret_access_key.expose(),
                            c.session_token.as_ref().map(|t| t.expose().to_owned()),
                            None,
                            "switchyard-config",
                        )),
                    None => {
                        let shared = aws_config::defaults(BehaviorVersion::latest())
                            .region(Region::new(s.region.clone()))
                            .load()
                            .await;
                        aws_sdk_bedrockruntime::config::Builder::from(&shared)
                    }
                };
                builder = builder
                    .timeout_config(timeouts)
                    .retry_config(retry)
                    .interceptor(RecordRequestId);
                if let Some(url) = &s.endpoint_url {
                    builder = builder.endpoint_url(url);
                }
                Client::from_conf(builder.build())
            })
            .await
    }

    fn next_id(&self) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!(
            "chatcmpl-bedrock-{nanos:x}-{}",
            self.counter.fetch_add(1, Ordering::Relaxed)
        )
    }

    async fn invoke_json(&self, model: &str, body: &Value) -> Result<Value> {
        let output = self
            .client()
            .await
            .invoke_model()
            .model_id(self.target(model))
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(body.to_string()))
            .send()
            .await
            .map_err(|e| self.failed(e))?;
        serde_json::from_slice(output.body.as_ref())
            .map_err(|e| ProviderError::InvalidResponse(format!("InvokeModel returned invalid JSON ({e})")))
    }

    /// Embeds `texts` with a Titan (one call per text, [`TITAN_CALLS`] at a
    /// time; in a batch, a call throttled or failed by the server is tried
    /// again, [`titan_call`]) or Cohere (one call per [`COHERE_BATCH`] texts)
    /// model. `options`
    /// are the request's extra fields: Cohere's `input_type` (default
    /// `search_document`) and `truncate`, and `dimensions`. Vectors come
    /// back in the order of `texts`.
    async fn embed(&self, model: &str, texts: &[String], options: &Map<String, Value>) -> Result<(Vec<Vec<f32>>, u64)> {
        use futures_util::{StreamExt as _, TryStreamExt as _};
        let dimensions = options.get("dimensions").and_then(Value::as_u64);
        if model.contains("titan-embed") {
            let answers: Vec<(Vec<f32>, u64)> = futures_util::stream::iter(0..texts.len())
                .map(|i| async move {
                    let mut body = json!({"inputText": texts[i]});
                    if let Some(d) = dimensions {
                        body["dimensions"] = json!(d);
                    }
                    let answer = self.titan_call(model, &body, texts.len() > 1).await?;
                    let tokens = answer.get("inputTextTokenCount").and_then(Value::as_u64).unwrap_or(0);
                    Ok::<_, ProviderError>((vector(answer.get("embedding"))?, tokens))
                })
                .buffered(TITAN_CALLS)
                .try_collect()
                .await?;
            let tokens = answers.iter().fold(0_u64, |sum, (_, t)| sum.saturating_add(*t));
            Ok((answers.into_iter().map(|(v, _)| v).collect(), tokens))
        } else if model.contains("cohere.embed") {
            let mut vectors = Vec::with_capacity(texts.len());
            for batch in texts.chunks(COHERE_BATCH) {
                vectors.extend(self.cohere_embed(model, batch, options, dimensions).await?);
            }
            // Cohere on Bedrock reports no token count: about 4 bytes a token.
            let tokens = texts.iter().map(|t| t.len().div_ceil(4) as u64).sum();
            Ok((vectors, tokens))
        } else {
            Err(ProviderError::Unsupported {
                provider: "bedrock",
                operation: "embeddings with this model (Titan and Cohere embedding models are supported)",
            })
        }
    }

    /// One Titan embedding call. In a batch (`batch`), one call of many
    /// throttled (429) or failed by the server (5xx) is tried again, up to
    /// [`TITAN_RETRIES`] times after a short pause (its `Retry-After` up to
    /// a second): failing the whole request would have the gateway send
    /// every text again, each call billed. A lone text fails at once, for
    /// the gateway to retry or route elsewhere.
    async fn titan_call(&self, model: &str, body: &Value, batch: bool) -> Result<Value> {
        let mut attempt = 0;
        loop {
            match self.invoke_json(model, body).await {
                Err(ProviderError::Status {
                    status, retry_after, ..
                }) if batch && attempt < TITAN_RETRIES && (status == 429 || status >= 500) => {
                    let pause = retry_after
                        .filter(|wait| *wait <= std::time::Duration::from_secs(1))
                        .unwrap_or(std::time::Duration::from_millis(100 << attempt));
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                answer => return answer,
            }
        }
    }

    /// One Cohere InvokeModel call for at most [`COHERE_BATCH`] texts.
    async fn cohere_embed(
        &self,
        model: &str,
        texts: &[String],
        options: &Map<String, Value>,
        dimensions: Option<u64>,
    ) -> Result<Vec<Vec<f32>>> {
        let input_type = options
            .get("input_type")
            .and_then(Value::as_str)
            .unwrap_or("search_document");
        let mut body = json!({"texts": texts, "input_type": input_type});
        // `NONE` (Bedrock's default: a text past 2,048 characters is
        // refused), `START` or `END`.
        if let Some(truncate) = options.get("truncate").and_then(Value::as_str) {
            body["truncate"] = json!(truncate);
        }
        // Embed v4 names it `output_dimension`; v3 has one size (and
        // refuses the field): another asked of it is refused here, not
        // answered in the wrong size.
        if let Some(d) = dimensions {
            if model.contains("embed-v4") {
                body["output_dimension"] = json!(d);
            } else {
                let native = if model.contains("light") { 384 } else { 1024 };
                if d != native {
                    return Err(ProviderError::InvalidRequest {
                        message: format!(
                            "this model's embeddings have {native} dimensions; `dimensions` cannot change them"
                        ),
                        param: Some("dimensions".into()),
                    });
                }
            }
        }
        let answer = self.invoke_json(model, &body).await?;
        // v3 answers a list of vectors; v4 (and v3 asked for
        // `embedding_types`) a list per type.
        let all = answer.get("embeddings").map(|e| e.get("float").unwrap_or(e));
        let vectors = all
            .and_then(Value::as_array)
            .ok_or_else(|| ProviderError::InvalidResponse("Cohere answered without `embeddings`".into()))?
            .iter()
            .map(Some)
            .map(vector)
            .collect::<Result<Vec<_>>>()?;
        if vectors.len() != texts.len() {
            return Err(ProviderError::InvalidResponse(format!(
                "Cohere answered {} embeddings for {} inputs",
                vectors.len(),
                texts.len()
            )));
        }
        Ok(vectors)
    }
}

/// The most texts one Cohere embedding call takes on Bedrock.
const COHERE_BATCH: usize = 96;

/// Titan embedding calls (one text each) made at a time for one request.
const TITAN_CALLS: usize = 8;

/// Further tries of one Titan call of a batch that was throttled.
const TITAN_RETRIES: u32 = 2;

/// One embedding vector of an answer: a non-empty list of numbers.
fn vector(value: Option<&Value>) -> Result<Vec<f32>> {
    let numbers = value
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ProviderError::InvalidResponse("the embedding model answered without a vector".into()))?;
    numbers
        .iter()
        .map(|n| n.as_f64().map(|f| f as f32))
        .collect::<Option<Vec<f32>>>()
        .ok_or_else(|| ProviderError::InvalidResponse("an embedding holds something other than numbers".into()))
}

/// Records the `x-amzn-requestid` of every Bedrock answer, errors included
/// (see [`crate::upstream_id`]).
#[derive(Debug)]
struct RecordRequestId;

impl aws_sdk_bedrockruntime::config::Intercept for RecordRequestId {
    fn name(&self) -> &'static str {
        "RecordRequestId"
    }

    fn read_before_deserialization(
        &self,
        context: &aws_sdk_bedrockruntime::config::interceptors::BeforeDeserializationInterceptorContextRef<'_>,
        _components: &aws_sdk_bedrockruntime::config::RuntimeComponents,
        _cfg: &mut aws_sdk_bedrockruntime::config::ConfigBag,
    ) -> std::result::Result<(), aws_sdk_bedrockruntime::error::BoxError> {
        let headers = context.response().headers();
        crate::upstream_id::record_from(|name| headers.get(name));
        Ok(())
    }
}

impl Provider for BedrockProvider {
    fn kind(&self) -> &'static str {
        "bedrock"
    }

    async fn chat(&self, req: &ChatCompletionRequest) -> Result<ProviderResponse> {
        let sent = self.as_sent(req);
        let req = &*sent;
        let input = convert::to_converse(req, self.settings.default_max_tokens)?;
        let output = self
            .answered(with_converse_input!(self.client().await.converse(), self.target(&req.model), input).send())
            .await?;
        if let Some(broken) = convert::malformed(&output.stop_reason) {
            return Err(broken);
        }
        let json = convert::json_mode(req)?.is_some();
        let response = convert::to_chat_response(output, self.next_id(), req.model.clone(), now(), json);
        let usage = response.usage.clone();
        let body = serde_json::to_vec(&response)
            .map_err(|e| ProviderError::InvalidResponse(format!("could not encode the response: {e}")))?;
        Ok(ProviderResponse {
            body: Bytes::from(body),
            usage,
        })
    }

    async fn chat_stream(&self, req: &ChatCompletionRequest) -> Result<ChunkStream> {
        // The SDK's operation timeout ends with the response head; the
        // stream's body is bounded by this deadline.
        let deadline = tokio::time::Instant::now() + self.settings.timeouts.total;
        let sent = self.as_sent(req);
        let req = &*sent;
        let input = convert::to_converse(req, self.settings.default_max_tokens)?;
        let output = self
            .within_first_byte(
                with_converse_input!(self.client().await.converse_stream(), self.target(&req.model), input).send(),
            )
            .await?;
        let out = ChunkBuilder {
            id: self.next_id(),
            model: req.model.clone(),
            created: now(),
        };
        Ok(stream::to_chat_chunks(
            output.stream,
            out,
            req.wants_stream_usage(),
            self.settings.timeouts.first_byte,
            deadline,
            convert::json_mode(req)?.is_some(),
        ))
    }

    async fn completion(&self, _req: &CompletionRequest) -> Result<ProviderResponse> {
        Err(ProviderError::Unsupported {
            provider: "bedrock",
            operation: "legacy completions (use /v1/chat/completions)",
        })
    }

    async fn completion_stream(&self, _req: &CompletionRequest) -> Result<ChunkStream> {
        Err(ProviderError::Unsupported {
            provider: "bedrock",
            operation: "legacy completions (use /v1/chat/completions)",
        })
    }

    async fn embeddings(&self, req: &EmbeddingRequest) -> Result<ProviderResponse> {
        if matches!(req.input, EmbeddingInput::Tokens(_) | EmbeddingInput::TokenBatches(_)) {
            return Err(ProviderError::InvalidRequest {
                message: "Bedrock embedding models take text, not token ids".into(),
                param: Some("input".into()),
            });
        }
        let texts = req.input.texts();
        let (vectors, tokens) = self.embed(&req.model, &texts, &req.extra).await?;
        let base64 = req.encoding_format.as_deref() == Some("base64");
        let data: Vec<Value> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(v)
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        let body = json!({
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        });
        Ok(ProviderResponse {
            body: Bytes::from(body.to_string()),
            usage: Some(Usage::new(tokens, 0)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Credentials none could find are the configuration; a provider that
    /// timed out or failed is passing, and retried.
    #[test]
    fn passing_credential_failures_are_retried() {
        use aws_credential_types::provider::error::CredentialsError;
        let fault = |e: CredentialsError| credentials_fault(Some(&e), "detail");
        assert!(matches!(
            fault(CredentialsError::not_loaded("no provider in the chain")),
            ProviderError::InvalidConfig(_)
        ));
        assert!(matches!(
            fault(CredentialsError::invalid_configuration("bad profile")),
            ProviderError::InvalidConfig(_)
        ));
        let timed_out = fault(CredentialsError::provider_timed_out(std::time::Duration::from_secs(1)));
        assert!(matches!(timed_out, ProviderError::Timeout(_)) && timed_out.is_retryable());
        let failed = fault(CredentialsError::provider_error("STS answered 503"));
        assert!(matches!(failed, ProviderError::Connect(_)) && failed.is_retryable());
    }

    /// Only messages that say the configured model id cannot be called are
    /// the deployment's fault; other validation errors stay the client's.
    #[test]
    fn an_unusable_model_id_is_told_from_a_bad_request() {
        for deployment in [
            "The provided model identifier is invalid.",
            "Invocation of model ID anthropic.claude-3-5-sonnet-20241022-v2:0 with on-demand throughput isn\u{2019}t supported. Retry your request with the ID or ARN of an inference profile that contains this model.",
        ] {
            assert!(names_unusable_model(Some(deployment)), "{deployment}");
        }
        for client in [
            "The maximum tokens you requested exceeds the model limit of 2048",
            "messages.1.content: Conversation blocks and tool result blocks cannot be provided in the same turn.",
            "Malformed input request: this inference profile does not accept `top_k`",
        ] {
            assert!(!names_unusable_model(Some(client)), "{client}");
        }
        assert!(!names_unusable_model(None));
    }

    /// An expired token of the configuration's own is a rejected key; one
    /// the credential chain gave is renewed by it, so retried.
    #[test]
    fn an_expired_token_of_the_configurations_own_is_a_rejected_key() {
        let expired = || ProviderError::Status {
            status: 503,
            message: "The security token included in the request is expired".into(),
            kind: None,
            code: Some("ExpiredTokenException".into()),
            param: None,
            retry_after: None,
            details: None,
        };
        let own = expired_for_good(expired(), true);
        assert!(own.rejects_credentials() && !own.is_retryable(), "{own:?}");
        let chain = expired_for_good(expired(), false);
        assert!(!chain.rejects_credentials() && chain.is_retryable(), "{chain:?}");
        let throttled = ProviderError::Status {
            status: 503,
            message: "busy".into(),
            kind: None,
            code: Some("ServiceUnavailableException".into()),
            param: None,
            retry_after: None,
            details: None,
        };
        assert!(expired_for_good(throttled, true).is_retryable());
    }
}
