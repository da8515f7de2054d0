//! Configuration: figment layers (defaults → YAML file → `SWITCHYARD_…` environment)
//! parsed into strict serde structs, then validated into runtime settings.
//!
//! Every struct denies unknown fields, so a typo fails start-up with the key's
//! path. Secrets are written as `os.environ/NAME` and resolved at validation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, YamlExtended};
use serde::{Deserialize, Serialize};
use switchyard_providers::{HttpSettings, MockSettings, Secret, Timeouts};

/// The embedded default configuration: mock deployments only, in-memory everything.
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/config.yaml");

/// Top-level sections that `SWITCHYARD_<SECTION>__<KEY>` variables may set.
const ENV_SECTIONS: &[&str] = &["server", "embedder", "policy", "cache", "telemetry", "router_settings"];

/// The configuration file as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// How deployments are chosen.
    #[serde(default)]
    pub router_settings: RouterSettings,
    /// Public model names and their deployments.
    #[serde(default)]
    pub model_list: Vec<ModelEntry>,
    /// The sentence embedder learned routers use (loaded only when a model
    /// group has a `router`).
    #[serde(default)]
    pub embedder: switchyard_routing::embed::EmbedderConfig,
    /// Virtual keys, rate limits, budgets and spend tracking.
    #[serde(default)]
    pub policy: crate::policy_config::PolicyConfig,
    /// The response cache: exact and semantic, in process or in Redis.
    #[serde(default)]
    pub cache: crate::cache_config::CacheConfig,
    /// Logs, span export, metrics and the request log.
    #[serde(default)]
    pub telemetry: crate::telemetry_config::TelemetryConfig,
    /// Paths forwarded as they are to an upstream (a provider's own API),
    /// with the gateway's keys in front and the upstream's credentials added.
    #[serde(default)]
    pub pass_through: Vec<crate::passthrough::PassThroughEntry>,
    /// Warnings about keys that were read but not used (a LiteLLM file's
    /// unsupported settings), logged at start-up.
    #[serde(skip)]
    pub notices: Vec<String>,
    /// A LiteLLM file's `environment_variables`: read before the process
    /// environment wherever the configuration names a variable
    /// (`os.environ/NAME`), as LiteLLM sets them at start-up.
    #[serde(skip)]
    pub environment: BTreeMap<String, String>,
    /// For a LiteLLM file, where each deployment stood in it (see
    /// [`crate::litellm::Translation::origins`]): problems are reported at
    /// the file's own paths.
    #[serde(skip)]
    pub origins: BTreeMap<String, String>,
}

/// `router_settings:` — how a deployment is chosen for each request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSettings {
    /// Strategy for groups that name none: `simple-shuffle`, `least-busy`,
    /// `latency-based`, `cost-based`, `usage-based`, `power-of-two`.
    pub routing_strategy: String,
    /// `latency-based`: deployments within this fraction of the fastest share the traffic.
    pub latency_tolerance: f64,
    /// `cost-based`: the quality a deployment needs to be chosen for its price.
    pub cost_min_quality: f64,
    /// Retries within a model group after a retryable failure (connect error,
    /// timeout, 408, 429, 5xx), each on another deployment when there is one.
    pub num_retries: u32,
    /// The most retries a request may ask for with its `num_retries` field.
    pub max_num_retries: u32,
    /// Backoff before the first retry, in milliseconds; doubled for each
    /// later retry, with full jitter.
    pub retry_backoff_ms: u64,
    /// Longest backoff between retries, in milliseconds.
    pub max_backoff_ms: u64,
    /// A `Retry-After` longer than this (milliseconds) is not waited for: the
    /// request moves on to another deployment or fallback, or fails with 429.
    pub max_retry_after_ms: u64,
    /// Deadline of a whole request, retries and fallbacks included, until its
    /// answer (a stream: its first content) starts, in milliseconds.
    pub timeout_ms: u64,
    /// The longest deadline a request may ask for with its `timeout` field, in milliseconds.
    pub max_timeout_ms: u64,
    /// The most fallback groups one request walks through.
    pub max_fallbacks: usize,
    /// Cooldown: failures within `allowed_fails_window_ms` that take a deployment out of rotation.
    pub allowed_fails: u32,
    /// Cooldown: the window failures are counted in, in milliseconds.
    pub allowed_fails_window_ms: u64,
    /// Cooldown: how long a failing deployment is skipped before one probe request, in milliseconds.
    pub cooldown_ms: u64,
    /// What a request gets when every deployment it could still reach is
    /// cooling down (its group's, with no fallback group left to try):
    /// `false` (default) sends it to them anyway, since refusing would turn
    /// a brief upstream error into `cooldown_ms` of 503s; `true` answers 503
    /// `no_deployment` at once.
    pub cooldown_fail_fast: bool,
    /// Other names for model groups (and learned routers): a request naming
    /// an alias is served, limited, charged and cached as the group it
    /// names. `alias: group`, or `alias: {model: group, hidden: true}` to
    /// keep it out of `/v1/models`.
    pub model_group_alias: BTreeMap<String, AliasEntry>,
    /// Tag-based routing: a request's tags (`tags`, `metadata.tags`,
    /// `x-litellm-tags`) choose among a group's deployments that carry one
    /// of them; without a match (or without tags), those tagged `default`,
    /// else (without tags) all of them.
    pub enable_tag_filtering: bool,
}

/// What `GET /health` sends a deployment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheck {
    /// A one-token chat completion.
    #[default]
    Chat,
    /// A one-input embedding.
    Embedding,
    /// One image, the smallest and cheapest the model makes (a DALL·E 2
    /// image costs $0.016).
    ImageGeneration,
    /// A one-input moderation.
    Moderation,
    /// Two characters of speech.
    AudioSpeech,
    /// Half a second of silence, transcribed.
    AudioTranscription,
    /// One document reranked.
    Rerank,
    /// Not checked.
    None,
}

/// One `router_settings.model_group_alias` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum AliasEntry {
    /// The group the alias names.
    Group(String),
    /// The group, and whether the alias is left out of model lists.
    Detailed(AliasDetail),
}

/// `alias: {model: group, hidden: true}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasDetail {
    /// The group the alias names.
    pub model: String,
    /// Left out of `/v1/models` (still served).
    #[serde(default)]
    pub hidden: bool,
}

impl AliasEntry {
    /// The group the alias names.
    pub fn group(&self) -> &str {
        match self {
            AliasEntry::Group(g) | AliasEntry::Detailed(AliasDetail { model: g, .. }) => g.trim(),
        }
    }

    /// Whether model lists leave the alias out.
    pub fn hidden(&self) -> bool {
        matches!(self, AliasEntry::Detailed(AliasDetail { hidden: true, .. }))
    }
}

impl Default for RouterSettings {
    fn default() -> Self {
        let retry = switchyard_routing::RetryPolicy::default();
        let cooldown = switchyard_routing::CooldownPolicy::default();
        Self {
            routing_strategy: "simple-shuffle".into(),
            latency_tolerance: switchyard_routing::LatencyBased::DEFAULT_TOLERANCE,
            cost_min_quality: 0.0,
            num_retries: retry.num_retries,
            max_num_retries: 5,
            retry_backoff_ms: retry.base_backoff.as_millis() as u64,
            max_backoff_ms: retry.max_backoff.as_millis() as u64,
            max_retry_after_ms: retry.max_retry_after.as_millis() as u64,
            timeout_ms: 600_000,
            max_timeout_ms: 600_000,
            max_fallbacks: 5,
            allowed_fails: cooldown.allowed_fails,
            allowed_fails_window_ms: cooldown.window_ms,
            cooldown_ms: cooldown.cooldown_ms,
            cooldown_fail_fast: false,
            model_group_alias: BTreeMap::new(),
            enable_tag_filtering: false,
        }
    }
}

impl RouterSettings {
    /// The validated retry, deadline and cooldown settings of the dispatch loop.
    pub fn dispatch(&self) -> Result<DispatchSettings, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let retry = switchyard_routing::RetryPolicy {
            num_retries: self.num_retries,
            base_backoff: Duration::from_millis(self.retry_backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
            max_retry_after: Duration::from_millis(self.max_retry_after_ms),
        };
        if retry.validate().is_err() {
            issues.push(issue(
                "router_settings.retry_backoff_ms",
                "must not exceed router_settings.max_backoff_ms",
            ));
        }
        if self.num_retries > self.max_num_retries {
            issues.push(issue(
                "router_settings.num_retries",
                "must not exceed router_settings.max_num_retries",
            ));
        }
        for (value, name) in [
            (self.timeout_ms, "timeout_ms"),
            (self.max_timeout_ms, "max_timeout_ms"),
            (self.cooldown_ms, "cooldown_ms"),
            (self.allowed_fails_window_ms, "allowed_fails_window_ms"),
        ] {
            if value == 0 {
                issues.push(issue(format!("router_settings.{name}"), "must be greater than 0"));
            }
        }
        if self.timeout_ms > self.max_timeout_ms {
            issues.push(issue(
                "router_settings.timeout_ms",
                "must not exceed router_settings.max_timeout_ms",
            ));
        }
        if self.allowed_fails == 0 {
            issues.push(issue("router_settings.allowed_fails", "must be at least 1"));
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(DispatchSettings {
            retry,
            max_num_retries: self.max_num_retries,
            timeout: Duration::from_millis(self.timeout_ms),
            max_timeout: Duration::from_millis(self.max_timeout_ms),
            max_fallbacks: self.max_fallbacks,
            cooldown: switchyard_routing::CooldownPolicy {
                allowed_fails: self.allowed_fails,
                window_ms: self.allowed_fails_window_ms,
                cooldown_ms: self.cooldown_ms,
            },
            cooldown_fail_fast: self.cooldown_fail_fast,
        })
    }
}

/// The dispatch loop's validated settings (from [`RouterSettings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchSettings {
    /// Retries and backoff.
    pub retry: switchyard_routing::RetryPolicy,
    /// Ceiling of a request's own `num_retries`.
    pub max_num_retries: u32,
    /// Default deadline of a request.
    pub timeout: Duration,
    /// Ceiling of a request's own `timeout`.
    pub max_timeout: Duration,
    /// The most fallback groups one request walks through.
    pub max_fallbacks: usize,
    /// When deployments are put in cooldown.
    pub cooldown: switchyard_routing::CooldownPolicy,
    /// Refuse at once, rather than try cooling-down deployments, when
    /// nothing else is left.
    pub cooldown_fail_fast: bool,
}

/// `server:` — where and how the gateway listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind (`SWITCHYARD_HOST`, `--host`).
    pub host: String,
    /// Port to bind; 0 picks a free one (`SWITCHYARD_PORT`, `--port`).
    pub port: u16,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// How long in-flight requests may run after a shutdown signal, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// After a shutdown signal, how long readiness reports `draining` (503)
    /// while requests are still accepted, so load balancers stop sending
    /// first; in milliseconds.
    pub drain_delay_ms: u64,
    /// How often the configuration file (or S3 object) is checked for
    /// changes, in milliseconds; 0 turns the watch off (`SIGHUP` and
    /// `POST /config/reload` still reload).
    pub config_poll_ms: u64,
    /// Browser origins allowed to call the gateway (CORS), e.g.
    /// `https://app.example.com`; `["*"]` allows any. Empty (the default):
    /// no CORS headers, so browsers refuse cross-origin calls.
    pub cors_allowed_origins: Vec<String>,
    /// Idle limit of a client connection, in milliseconds: one that never
    /// starts a request is closed after it; an HTTP/1 one when its next
    /// request's headers have not all arrived this long after its last
    /// response; an HTTP/2 one that starts no stream for this long, once
    /// its open streams end. Keep it above the idle timeout of a load
    /// balancer in front (AWS ALB: 60 s).
    pub idle_timeout_ms: u64,
    /// How long a client may take to send a request's body, in
    /// milliseconds, once its headers arrived; a slower one gets 408.
    pub body_read_timeout_ms: u64,
    /// How long a stream's next event may wait for its client to read, in
    /// milliseconds, once the connection's buffers are full: a client that
    /// stopped reading (a stuck consumer) is then taken as gone, the
    /// upstream stream closed and what it used charged, as for a client
    /// that disconnects. Streamed speech audio is held to it too.
    pub stream_write_timeout_ms: u64,
    /// Client connections served at once; beyond it, new ones wait in the
    /// listen backlog until one closes.
    pub max_connections: usize,
    /// Also send LiteLLM's response headers (`x-litellm-response-cost`,
    /// `-model-id`, `-model-group`, `-call-id`, `-attempted-retries`) beside
    /// the gateway's own; on by default for a LiteLLM configuration file.
    pub litellm_headers: bool,
    /// API requests handled at once (0: no limit), each counted until its
    /// answer starts and for as long as its own work runs (a stream's body
    /// is not counted); beyond it a request gets 429 `gateway_overloaded`
    /// with `Retry-After: 1`. Bounds the memory of bodies read and parsed
    /// at once. Reading, cancelling and deleting stored responses are not
    /// counted.
    pub max_concurrent_requests: usize,
    /// Where responses of `/v1/responses` are kept so that a later request
    /// can continue them (`previous_response_id`) or read them back:
    /// `memory` (this process: behind a load balancer, continuations need
    /// the same replica, or clients that send the whole conversation with
    /// `store: false`) or `redis` (the policy's Redis, `policy.redis`, which
    /// every replica reads; each response expires after
    /// `responses_ttl_seconds`, so size Redis for them).
    pub responses_store: ResponsesStoreKind,
    /// Memory for kept responses, in MiB (`memory`), and the largest one
    /// response kept (either store); 0 keeps none.
    pub responses_store_mib: u64,
    /// How long a kept response can be continued, in seconds.
    pub responses_ttl_seconds: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 4000,
            max_body_bytes: 10 * 1024 * 1024,
            shutdown_timeout_ms: 30_000,
            drain_delay_ms: 1_000,
            config_poll_ms: 2_000,
            cors_allowed_origins: Vec::new(),
            idle_timeout_ms: 75_000,
            body_read_timeout_ms: 60_000,
            stream_write_timeout_ms: 120_000,
            max_connections: 10_000,
            max_concurrent_requests: 0,
            litellm_headers: false,
            responses_store: ResponsesStoreKind::Memory,
            responses_store_mib: 32,
            responses_ttl_seconds: 86_400,
        }
    }
}

/// Where `/v1/responses` keeps responses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResponsesStoreKind {
    /// In this process.
    #[default]
    Memory,
    /// In the policy's Redis, shared by replicas.
    Redis,
}

/// One public model name (a model group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The name clients send as `model`.
    pub model_name: String,
    /// Strategy for this group (default: `router_settings.routing_strategy`).
    #[serde(default)]
    pub routing_strategy: Option<String>,
    /// Model groups tried in order when every attempt on this one failed.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Model groups tried in order when the upstream rejects the prompt as too
    /// long for the model's context window.
    #[serde(default)]
    pub context_window_fallbacks: Vec<String>,
    /// Model groups tried in order when the upstream refuses the request under
    /// its content policy.
    #[serde(default)]
    pub content_policy_fallbacks: Vec<String>,
    /// Deployments that can serve it (none for a learned-router group).
    #[serde(default)]
    pub deployments: Vec<DeploymentEntry>,
    /// A learned router choosing among other model groups (instead of deployments).
    #[serde(default)]
    pub router: Option<RouterEntry>,
    /// Access groups the model belongs to: a key or team whose `models`
    /// lists an access group's name may call every model in it.
    #[serde(default)]
    pub access_groups: Vec<String>,
}

/// `router:` of a model group — a learned router that predicts each candidate
/// model's quality on the request's prompt and picks the best trade-off of
/// quality and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouterEntry {
    /// The artifact directory: a local path, or `s3://bucket/prefix`.
    pub artifact: String,
    /// `tradeoff` (`argmax(score − λ·cost)`) or `threshold` (cheapest model
    /// predicted to score at least `min_score`).
    #[serde(default)]
    pub objective: ObjectiveKind,
    /// λ of the trade-off: 0 buys the best predicted quality, larger saves money.
    #[serde(default = "default_lambda")]
    pub lambda: f64,
    /// The score the `threshold` objective requires, on the router's scale:
    /// in [0, 1] for an MLP router (it predicts probabilities), the training
    /// data's scale for a KNN router (a mean of its neighbours' scores).
    #[serde(default)]
    pub min_score: Option<f64>,
    /// The router's model names mapped to this config's model groups; a name
    /// not listed maps to the group of the same name.
    #[serde(default)]
    pub candidates: BTreeMap<String, String>,
    /// How often the artifact's manifest is checked for a new version (0: never).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// S3 client settings for `s3://` artifacts.
    #[serde(default)]
    pub s3: S3Entry,
}

fn default_lambda() -> f64 {
    0.3
}

fn default_poll_interval_ms() -> u64 {
    10_000
}

/// How a learned router trades predicted quality against cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveKind {
    /// `argmax(score − λ · cost / max cost)`.
    #[default]
    Tradeoff,
    /// The cheapest candidate predicted to reach `min_score`.
    Threshold,
}

/// S3 client settings; credentials come from the standard AWS sources
/// (environment, profile, instance or task role).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct S3Entry {
    /// Endpoint override (MinIO, LocalStack, a VPC endpoint).
    pub endpoint_url: Option<String>,
    /// Region (default: `AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    pub force_path_style: bool,
}

/// Which upstream protocol a deployment speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI or an OpenAI-compatible server (vLLM, Ollama, LM Studio…).
    Openai,
    /// Azure OpenAI.
    Azure,
    /// Anthropic's Messages API.
    Anthropic,
    /// AWS Bedrock (Converse API).
    Bedrock,
    /// The built-in mock.
    Mock,
}

/// One deployment: an upstream model reachable with one set of credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentEntry {
    /// Upstream protocol.
    pub provider: ProviderKind,
    /// Upstream model name (for Azure: the deployment name).
    pub model: String,
    /// Base URL (`…/v1` for OpenAI-compatible servers, the resource URL for
    /// Azure); `os.environ/NAME`, or with `{os.environ/NAME}` placeholders
    /// (`{os.environ/HOST:-http://localhost:11434}/v1`), reads it from the
    /// environment.
    #[serde(default)]
    pub api_base: Option<String>,
    /// Credential: `os.environ/NAME` (preferred) or a literal. Required for
    /// Azure, and for OpenAI's and Anthropic's own APIs (no `api_base`, or
    /// their official address), unless `headers` carry one
    /// (`Authorization`; Anthropic's `x-api-key`; for Azure, any header
    /// whose name says it holds a key or token).
    #[serde(default)]
    pub api_key: Option<String>,
    /// Azure `api-version`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Anthropic `anthropic-version` header (default `2023-06-01`).
    #[serde(default)]
    pub anthropic_version: Option<String>,
    /// `max_tokens` sent to Anthropic or Bedrock when the client sends none
    /// (default 4096 for Anthropic and Bedrock's Claude; other Bedrock
    /// models get none, and write up to their own default).
    #[serde(default)]
    pub default_max_tokens: Option<u32>,
    /// `openai` and `azure`: the most tokens the model writes. A chat
    /// request asking for more (`max_tokens` or `max_completion_tokens`) is
    /// sent asking for this many, where the upstream would refuse it
    /// (Claude Code asks any model for 32,000 on `/v1/messages`; gpt-4o
    /// writes at most 16,384).
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Anthropic and Bedrock: drop the chat parameters they cannot express
    /// (`logprobs`, `top_logprobs`, `n` > 1, `audio`, `modalities`,
    /// `prediction`, legacy `functions`) instead of answering 400, as
    /// LiteLLM's `drop_params` does.
    #[serde(default)]
    pub drop_params: bool,
    /// Bedrock: AWS region (default `AWS_REGION` / `AWS_DEFAULT_REGION`).
    #[serde(default)]
    pub aws_region: Option<String>,
    /// Bedrock: access key id, `os.environ/NAME`; without it the default credential chain is used.
    #[serde(default)]
    pub aws_access_key_id: Option<String>,
    /// Bedrock: secret access key, `os.environ/NAME`.
    #[serde(default)]
    pub aws_secret_access_key: Option<String>,
    /// Bedrock: session token for temporary credentials, `os.environ/NAME`.
    #[serde(default)]
    pub aws_session_token: Option<String>,
    /// Bedrock: the id to invoke when it is not `model` — a cross-region
    /// inference profile (`us.anthropic.…`), an application inference
    /// profile or a provisioned throughput ARN. `model` then names the
    /// foundation model behind it (e.g. `anthropic.claude-sonnet-4-5-…`), which
    /// decides the request format and is what `count_tokens` counts with.
    #[serde(default)]
    pub aws_model_id: Option<String>,
    /// Relative share of traffic (default 1).
    #[serde(default)]
    pub weight: Option<f64>,
    /// Quality score in [0, 1] used by `cost-based` routing.
    #[serde(default)]
    pub quality: Option<f64>,
    /// The well-known model whose built-in prices apply when no price is
    /// set here: for an Azure deployment or a fine-tune named otherwise
    /// (e.g. `gpt-4o-2024-08-06`). It must be one the built-in table knows.
    /// A reasoning model here (`o4-mini`, `gpt-5`) also has its requests'
    /// `max_tokens` sent as `max_completion_tokens`.
    #[serde(default)]
    pub base_model: Option<String>,
    /// USD per prompt token.
    #[serde(default)]
    pub input_cost_per_token: Option<f64>,
    /// USD per completion token.
    #[serde(default)]
    pub output_cost_per_token: Option<f64>,
    /// USD per prompt token read from the upstream's prompt cache (default: the input price).
    #[serde(default)]
    pub cache_read_input_token_cost: Option<f64>,
    /// USD per prompt token written to the upstream's prompt cache (default: the input price).
    #[serde(default)]
    pub cache_creation_input_token_cost: Option<f64>,
    /// USD per prompt token written to the prompt cache for an hour
    /// (Anthropic's `ttl: "1h"`; default: `cache_creation_input_token_cost`).
    #[serde(default)]
    pub cache_creation_input_token_cost_above_1hr: Option<f64>,
    /// USD per image generated (`/v1/images/generations`), whatever its
    /// size; default: OpenAI's list price of DALL·E models at the request's
    /// size and quality (GPT image models are billed by their tokens).
    #[serde(default)]
    pub output_cost_per_image: Option<f64>,
    /// USD per character of text spoken (`/v1/audio/speech`); default: the
    /// built-in price of `tts-1` and `tts-1-hd`.
    #[serde(default)]
    pub input_cost_per_character: Option<f64>,
    /// USD per second of audio transcribed or translated; default: the
    /// built-in price of `whisper-1` (GPT-4o transcription models are billed
    /// by their tokens).
    #[serde(default)]
    pub input_cost_per_second: Option<f64>,
    /// USD per rerank search (a query over up to 100 documents);
    /// default: the built-in price of Cohere's rerank models.
    #[serde(default)]
    pub input_cost_per_query: Option<f64>,
    /// USD per image token in the prompt (the images a GPT image model
    /// edits); default: the built-in price of `gpt-image-1` and
    /// `gpt-image-1-mini`, else the input price.
    #[serde(default)]
    pub input_cost_per_image_token: Option<f64>,
    /// Requests per minute the upstream allows.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens per minute the upstream allows.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Timeouts (milliseconds).
    #[serde(default)]
    pub timeouts: TimeoutsEntry,
    /// Extra headers for every upstream request; a whole value may be
    /// `os.environ/NAME`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// What `GET /health` sends the deployment: `chat` (default, one
    /// token), `embedding` (one short input), `image_generation` (one
    /// image, the cheapest the model name says), `moderation`,
    /// `audio_speech` (two characters), `audio_transcription` (half a
    /// second of silence), `rerank` (one document), or `none` (left out).
    #[serde(default)]
    pub health_check: HealthCheck,
    /// Tags for tag-based routing (`router_settings.enable_tag_filtering`):
    /// a request's tags choose among the deployments that carry one of
    /// them; `default` marks those that serve requests no tag matches.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Behaviour of a `mock` deployment.
    #[serde(default)]
    pub mock: Option<MockEntry>,
}

/// `timeouts:` of a deployment, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsEntry {
    /// Connecting to the upstream.
    pub connect_ms: u64,
    /// A stream's start: from sending the request until its first output
    /// (past a role-only chunk, `message_start` or pings); a reasoning model
    /// needs room for its thinking. A non-streaming answer is bounded by
    /// `total_ms` only (its head comes when it is fully written).
    pub first_byte_ms: u64,
    /// The whole request, a stream's body included.
    pub total_ms: u64,
    /// A stream's silence once its first output has come: the longest wait
    /// for its next event before it is ended as timed out (the client gets
    /// an error event). Default: `first_byte_ms`, and at least 60000.
    pub idle_ms: Option<u64>,
}

impl Default for TimeoutsEntry {
    fn default() -> Self {
        let t = Timeouts::default();
        Self {
            connect_ms: t.connect.as_millis() as u64,
            first_byte_ms: t.first_byte.as_millis() as u64,
            total_ms: t.total.as_millis() as u64,
            idle_ms: None,
        }
    }
}

/// `mock:` settings of a mock deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MockEntry {
    /// Fixed reply (default: `mock reply: <last user message>`).
    pub reply: Option<String>,
    /// Delay before answering, in milliseconds.
    pub delay_ms: u64,
    /// Delay between stream chunks, in milliseconds.
    pub chunk_delay_ms: u64,
    /// Length of mock embeddings.
    pub embedding_dims: usize,
}

impl Default for MockEntry {
    fn default() -> Self {
        Self {
            reply: None,
            delay_ms: 0,
            chunk_delay_ms: 0,
            embedding_dims: 16,
        }
    }
}

/// Where the YAML layer comes from.
#[derive(Debug, Clone)]
pub enum Source<'a> {
    /// A file on disk; it must exist.
    File(&'a Path),
    /// The embedded default.
    Embedded,
    /// YAML text (tests).
    Text(&'a str),
}

/// A configuration problem, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path, e.g. `model_list[0].deployments[1].api_base`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file `{path}` could not be read: {reason}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The layers could not be parsed into the schema (unknown key, wrong type…).
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// Values parsed but are not valid.
    #[error("invalid configuration:\n{}", .0.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

/// Command-line overrides, applied over every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--host`.
    pub host: Option<String>,
    /// `--port`.
    pub port: Option<u16>,
}

/// Reads the layers: serde defaults, the YAML source, `SWITCHYARD_HOST`,
/// `SWITCHYARD_PORT` and `SWITCHYARD_<SECTION>__<KEY>` variables, then `overrides`.
pub fn load(source: Source<'_>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let yaml = match source {
        Source::File(path) => std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?,
        Source::Embedded => DEFAULT_CONFIG.to_owned(),
        Source::Text(text) => text.to_owned(),
    };
    // Kubernetes gives every pod beside a Service named `switchyard`
    // `SWITCHYARD_PORT=tcp://10.0.0.1:4000` (a service link; Docker's
    // `--link` too): that is not a port for this process to listen on.
    let service_link = std::env::var("SWITCHYARD_PORT").is_ok_and(|v| v.contains("://"));
    let env = Env::prefixed("SWITCHYARD_").filter_map(move |key| {
        let key = key.as_str().to_ascii_lowercase();
        match key.as_str() {
            "host" => Some("server.host".into()),
            "port" if service_link => None,
            "port" => Some("server.port".into()),
            other => {
                let (section, _) = other.split_once("__")?;
                ENV_SECTIONS.contains(&section).then(|| other.replace("__", ".").into())
            }
        }
    });
    let doc: serde_json::Value = Figment::from(YamlExtended::string(&yaml))
        .extract()
        .map_err(|err| ConfigError::Parse(without_values(err)))?;
    let mut notices = Vec::new();
    let mut environment = BTreeMap::new();
    let mut origins = BTreeMap::new();
    let litellm = crate::litellm::is_litellm(&doc);
    let mut figment = if litellm {
        let translation = crate::litellm::translate(&doc).map_err(ConfigError::Invalid)?;
        notices = translation.warnings;
        environment = translation.environment;
        origins = translation.origins;
        Figment::from(figment::providers::Serialized::defaults(translation.config)).merge(env)
    } else {
        Figment::new().merge(YamlExtended::string(&yaml)).merge(env)
    };
    if let Some(host) = &overrides.host {
        figment = figment.merge(("server.host", host));
    }
    if let Some(port) = overrides.port {
        figment = figment.merge(("server.port", port));
    }
    let mut config = figment
        .extract::<Config>()
        .map_err(|err| ConfigError::Parse(without_values(err)))?;
    config.environment = environment;
    config.origins = origins;
    // A variable shaped as a setting (`SECTION__KEY`) that no section takes
    // would otherwise change nothing, silently.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let Some(rest) = name.strip_prefix("SWITCHYARD_") else {
            continue;
        };
        if let Some((section, _)) = rest.to_ascii_lowercase().split_once("__")
            && !ENV_SECTIONS.contains(&section)
        {
            notices.push(format!(
                "the environment variable {name} is not read: `{section}` cannot be set from the environment \
                 (these can: {})",
                ENV_SECTIONS.join(", ")
            ));
        }
    }
    if service_link {
        notices.push(
            "SWITCHYARD_PORT holds an address (a Kubernetes service link for a Service named `switchyard`, \
             or a Docker link), not a port: it is not read; set `server.port` or `--port`, or \
             `enableServiceLinks: false` on the pod"
                .into(),
        );
    }
    config.notices = notices;
    config.policy.litellm_master_key_env = litellm;
    config.notices.extend(unpriced_notices(&config));
    if config.cache.enabled && !config.cache.semantic.is_empty() && !config.cache.per_key {
        config.notices.push(
            "cache.semantic with cache.per_key false: a caller may get an answer written for another \
             caller's similar prompt, context included; set cache.per_key: true when keys belong to \
             different tenants"
                .into(),
        );
    }
    Ok(config)
}

/// The parse errors' messages without the values they found: a secret in the
/// wrong place (a Redis URL written where a section belongs, an all-digit
/// master key read as a number) must not be printed, logged or answered.
/// Only the kind of value is named.
fn without_values(err: figment::Error) -> String {
    use figment::error::{Actual, Kind};
    err.into_iter()
        .map(|mut e| {
            let found = |a: &Actual| match a {
                Actual::Bool(_) => Some("a boolean"),
                Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_) => Some("a number"),
                Actual::Char(_) | Actual::Str(_) | Actual::Other(_) => Some("a string"),
                Actual::Bytes(_) => Some("bytes"),
                _ => None,
            };
            match &mut e.kind {
                Kind::InvalidType(a, _)
                | Kind::InvalidValue(a, _)
                | Kind::Unsupported(a)
                | Kind::UnsupportedKey(a, _) => {
                    if let Some(kind) = found(a) {
                        *a = Actual::Other(kind.into());
                    }
                }
                Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => {
                    e.kind = Kind::Message("a number out of range".into());
                }
                // The value found is not shown, only what is expected.
                Kind::UnknownVariant(_, expected) => {
                    let expected = expected.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>();
                    e.kind = Kind::Message(format!("the value is none of {}", expected.join(", ")));
                }
                _ => {}
            }
            e.to_string()
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A warning for each deployment that would be charged nothing without
/// anyone having said so: no price set, no `base_model`, and an upstream
/// model the built-in table does not know (a mock is free by design).
fn unpriced_notices(config: &Config) -> Vec<String> {
    let mut notices = Vec::new();
    for (i, group) in config.model_list.iter().enumerate() {
        for (j, d) in group.deployments.iter().enumerate() {
            if !price_unknown(d) {
                continue;
            }
            notices.push(format!(
                "model_list[{i}].deployments[{j}] (`{}`): no price is set and the model has no built-in price, \
                 so its requests cost $0 and count nothing against budgets; set input_cost_per_token and \
                 output_cost_per_token (0 for a free local model), or base_model",
                d.model
            ));
        }
    }
    notices
}

/// No price set, no `base_model`, and an upstream model the built-in table
/// does not know (a mock is free by design; a wildcard is priced per
/// request).
fn price_unknown(d: &DeploymentEntry) -> bool {
    d.provider != ProviderKind::Mock
        && !d.model.contains('*')
        && d.base_model.is_none()
        && prices_unset(d)
        && switchyard_policy::price::builtin(&d.model).is_none()
}

/// A validated deployment, ready to build a provider from.
#[derive(Debug, Clone)]
pub struct DeploymentSpec {
    /// `group/index`, used in logs, headers and errors.
    pub name: String,
    /// Upstream protocol.
    pub provider: ProviderKind,
    /// Upstream model (Azure: deployment name).
    pub model: String,
    /// The model a deployment named otherwise serves (`base_model`).
    pub base_model: Option<String>,
    /// Base URL, for HTTP providers.
    pub api_base: Option<String>,
    /// Resolved credential.
    pub api_key: Option<Secret>,
    /// Azure `api-version`.
    pub api_version: Option<String>,
    /// Anthropic `anthropic-version`.
    pub anthropic_version: Option<String>,
    /// Anthropic and Bedrock `max_tokens` default.
    pub default_max_tokens: Option<u32>,
    /// `openai` and `azure`: the most output a request may ask for.
    pub max_output_tokens: Option<u32>,
    /// Anthropic and Bedrock: drop parameters they cannot express.
    pub drop_params: bool,
    /// Bedrock region.
    pub aws_region: Option<String>,
    /// Bedrock static credentials (access key id, secret, session token).
    pub aws_credentials: Option<(Secret, Secret, Option<Secret>)>,
    /// Bedrock id to invoke instead of `model` (an inference profile or provisioned ARN).
    pub aws_model_id: Option<String>,
    /// Relative traffic share.
    pub weight: f64,
    /// Quality score in [0, 1], if configured.
    pub quality: Option<f64>,
    /// USD per prompt token.
    pub input_cost_per_token: f64,
    /// USD per completion token.
    pub output_cost_per_token: f64,
    /// Every price of the deployment: configured, else the built-in price of
    /// a well-known upstream model, else zero.
    pub prices: switchyard_policy::Prices,
    /// A wildcard deployment (`model` holds `*`) with no price configured:
    /// priced per request at the built-in price of the model asked for.
    pub priced_per_request: bool,
    /// No price is known (none set, none built in): billed as free, but
    /// `cost-based` routing ranks it as the most expensive.
    pub price_unknown: bool,
    /// Tags for tag-based routing.
    pub tags: Vec<String>,
    /// What `GET /health` sends it (`none` for a wildcard deployment, which
    /// serves no one model).
    pub health_check: HealthCheck,
    /// Upstream request limit per minute.
    pub rpm: Option<u64>,
    /// Upstream token limit per minute.
    pub tpm: Option<u64>,
    /// Transport settings.
    pub http: HttpSettings,
    /// Mock behaviour.
    pub mock: MockSettings,
}

/// A validated model group.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Public model name.
    pub name: String,
    /// Routing strategy name.
    pub strategy: String,
    /// Whether the group named its strategy (else it is `router_settings`').
    pub strategy_named: bool,
    /// Groups tried when every attempt on this one failed.
    pub fallbacks: Vec<String>,
    /// Groups tried when the prompt exceeds the context window.
    pub context_window_fallbacks: Vec<String>,
    /// Groups tried when the upstream refuses on content policy.
    pub content_policy_fallbacks: Vec<String>,
    /// Its deployments (empty for a learned-router group).
    pub deployments: Vec<DeploymentSpec>,
    /// The learned router of a router group.
    pub router: Option<RouterSpec>,
    /// Access groups it belongs to.
    pub access_groups: Vec<String>,
}

/// Where a learned router's artifact lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactLocation {
    /// A local directory.
    Local(std::path::PathBuf),
    /// An S3 prefix.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix of the artifact's files (no trailing slash; may be empty).
        prefix: String,
    },
}

impl fmt::Display for ArtifactLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactLocation::Local(path) => write!(f, "{}", path.display()),
            ArtifactLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// A validated learned router.
#[derive(Debug, Clone)]
pub struct RouterSpec {
    /// Where the artifact is.
    pub location: ArtifactLocation,
    /// The decision rule.
    pub objective: switchyard_routing::learned::Objective,
    /// Router model name → model group, for names that differ.
    pub candidates: BTreeMap<String, String>,
    /// Manifest polling period; `None` disables hot reload.
    pub poll_interval: Option<Duration>,
    /// S3 client settings.
    pub s3: S3Entry,
}

fn validate_router(entry: &RouterEntry, path: &str, issues: &mut Vec<ConfigIssue>) -> Option<RouterSpec> {
    let location = match entry.artifact.trim() {
        "" => {
            issues.push(issue(format!("{path}.artifact"), "must not be empty"));
            None
        }
        s3 if s3.starts_with("s3://") => {
            let rest = &s3["s3://".len()..];
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                issues.push(issue(format!("{path}.artifact"), format!("`{s3}` names no bucket")));
                None
            } else {
                Some(ArtifactLocation::S3 {
                    bucket: bucket.to_owned(),
                    prefix: prefix.trim_end_matches('/').to_owned(),
                })
            }
        }
        local => Some(ArtifactLocation::Local(local.into())),
    };
    if let Some(url) = &entry.s3.endpoint_url {
        check_url(url, &format!("{path}.s3.endpoint_url"), issues);
    }
    let objective = match entry.objective {
        ObjectiveKind::Tradeoff => {
            if !(entry.lambda.is_finite() && entry.lambda >= 0.0) {
                issues.push(issue(
                    format!("{path}.lambda"),
                    format!("{} is not a non-negative number", entry.lambda),
                ));
            }
            if entry.min_score.is_some() {
                issues.push(issue(
                    format!("{path}.min_score"),
                    "is only used by the threshold objective",
                ));
            }
            switchyard_routing::learned::Objective::Tradeoff { lambda: entry.lambda }
        }
        ObjectiveKind::Threshold => match entry.min_score {
            // Its range is the router's: checked when the artifact is loaded.
            Some(min) if min.is_finite() => switchyard_routing::learned::Objective::Threshold { min_score: min },
            Some(min) => {
                issues.push(issue(format!("{path}.min_score"), format!("{min} is not a number")));
                switchyard_routing::learned::Objective::Threshold { min_score: 0.0 }
            }
            None => {
                issues.push(issue(
                    format!("{path}.min_score"),
                    "is required by the threshold objective",
                ));
                switchyard_routing::learned::Objective::Threshold { min_score: 0.0 }
            }
        },
    };
    Some(RouterSpec {
        location: location?,
        objective,
        candidates: entry
            .candidates
            .iter()
            .map(|(model, group)| (model.clone(), group.trim().to_owned()))
            .collect(),
        poll_interval: (entry.poll_interval_ms > 0).then(|| Duration::from_millis(entry.poll_interval_ms)),
        s3: entry.s3.clone(),
    })
}

/// Looks up environment variables; the real environment in the binary, a map in tests.
pub trait EnvSource {
    /// The variable's value, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

/// Variables the configuration sets itself (a LiteLLM file's
/// `environment_variables`), read before the environment under them.
pub(crate) struct Overlay<'a> {
    /// The configuration's own variables.
    pub(crate) vars: &'a BTreeMap<String, String>,
    /// The environment under them.
    pub(crate) under: &'a dyn EnvSource,
}

impl EnvSource for Overlay<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned().or_else(|| self.under.get(name))
    }
}

/// Resolves `os.environ/NAME` through `env`; other values are literals.
pub(crate) fn resolve_secret(
    value: &str,
    path: &str,
    env: &dyn EnvSource,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Secret> {
    match value.strip_prefix("os.environ/") {
        Some(name) => match env.get(name) {
            Some(v) => Some(Secret::new(v)),
            None => {
                issues.push(issue(path, format!("environment variable `{name}` is not set")));
                None
            }
        },
        None => Some(Secret::new(value)),
    }
}

/// Resolves a connection URL: `os.environ/NAME` as a whole, or a URL whose
/// parts are `{os.environ/NAME}` placeholders
/// (`redis://:{os.environ/REDIS_PASSWORD}@{os.environ/REDIS_HOST}:6379`), each
/// replaced by the variable's value, percent-encoded so that a password may
/// hold `@`, `:` or `/`.
pub(crate) fn resolve_url(
    value: &str,
    path: &str,
    env: &dyn EnvSource,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Secret> {
    resolve_parts(value, path, env, issues, true)
}

/// Resolves `os.environ/NAME` as a whole, or each `{os.environ/NAME}`
/// placeholder in `value`, percent-encoded with `encode` (URL parts), else
/// as it is (a whole base URL such as `{os.environ/LANGFUSE_HOST}/api`, a
/// header's value).
pub(crate) fn resolve_parts(
    value: &str,
    path: &str,
    env: &dyn EnvSource,
    issues: &mut Vec<ConfigIssue>,
    encode: bool,
) -> Option<Secret> {
    if value.starts_with("os.environ/") || !value.contains("{os.environ/") {
        return resolve_secret(value, path, env, issues);
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut complete = true;
    while let Some(at) = rest.find("{os.environ/") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "{os.environ/".len()..];
        let Some(end) = after.find('}') else {
            issues.push(issue(path, "a `{os.environ/NAME}` placeholder is not closed with `}`"));
            return None;
        };
        // `{os.environ/NAME:-default}`: the default when NAME is unset.
        let (name, default) = match after[..end].split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (&after[..end], None),
        };
        let next = &after[end + 1..];
        // As a shell's `:-`: the default also stands in for an empty value.
        let value = match (env.get(name), default) {
            (Some(v), Some(d)) if v.is_empty() => Some(d.to_owned()),
            (None, Some(d)) => Some(d.to_owned()),
            (found, _) => found,
        };
        match value {
            Some(v) if encode => out.push_str(&percent_encode(&v)),
            // A base address given with its trailing `/` before a path.
            Some(v) if next.starts_with('/') => out.push_str(v.trim_end_matches('/')),
            Some(v) => out.push_str(&v),
            None => {
                issues.push(issue(path, format!("environment variable `{name}` is not set")));
                complete = false;
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    complete.then(|| Secret::new(out))
}

/// `value` with every byte but RFC 3986's unreserved characters percent-encoded.
pub(crate) fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A credential: a secret that may not be empty. An empty one (typically a
/// variable set to nothing, as `${KEY:-}` does in Compose files) would only
/// fail later, as every request's 401.
fn resolve_credential(value: &str, path: &str, env: &dyn EnvSource, issues: &mut Vec<ConfigIssue>) -> Option<Secret> {
    let secret = resolve_secret(value, path, env, issues)?;
    if secret.expose().trim().is_empty() {
        let what = match value.strip_prefix("os.environ/") {
            Some(name) => format!("environment variable `{name}` is empty"),
            None => "is empty".to_owned(),
        };
        issues.push(issue(path, what));
        return None;
    }
    Some(secret)
}

/// A plain setting (an address, a version, a region) that may also be read
/// from the environment as `os.environ/NAME`, as LiteLLM files do, or hold
/// `{os.environ/NAME}` placeholders (`{os.environ/OLLAMA_API_BASE}/v1`);
/// empty is refused either way.
fn resolve_setting(value: &str, path: &str, env: &dyn EnvSource, issues: &mut Vec<ConfigIssue>) -> Option<String> {
    if !value.starts_with("os.environ/") && value.contains("{os.environ/") {
        let resolved = resolve_parts(value, path, env, issues, false)?;
        let resolved = resolved.expose().trim();
        if resolved.is_empty() {
            issues.push(issue(path, "is empty"));
            return None;
        }
        return Some(resolved.to_owned());
    }
    resolve_credential(value, path, env, issues).map(|v| v.expose().trim().to_owned())
}

pub(crate) fn issue(path: impl Into<String>, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        path: path.into(),
        message: message.into(),
    }
}

fn check_url(value: &str, path: &str, issues: &mut Vec<ConfigIssue>) {
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
        // The value is not shown: read from the environment, it may be a
        // secret set in the wrong variable.
        Ok(_) => issues.push(issue(path, "is not an http(s) URL (the value is not shown)")),
        Err(e) => issues.push(issue(path, format!("is not a valid URL ({e}; the value is not shown)"))),
    }
}

/// What is wrong with an `api_base` that endpoint paths go under: a query
/// (`…/v1?key=K`), which would end up inside the path the gateway adds
/// (`…/v1?key=K/chat/completions`), or an endpoint's own path (a full
/// `…/chat/completions` URL), which the gateway would add again.
fn endpoint_base_problem(base: &str) -> Option<&'static str> {
    let url = reqwest::Url::parse(base).ok()?;
    if url.query().is_some() {
        return Some(
            "holds a query (`?…`): the endpoint paths are added after api_base, so it would end up in the path; \
             send credentials with `api_key` or `headers`",
        );
    }
    let path = url.path().trim_end_matches('/');
    [
        "/chat/completions",
        "/completions",
        "/embeddings",
        "/messages",
        "/responses",
    ]
    .iter()
    .any(|endpoint| path.ends_with(endpoint))
    .then_some(
        "names an endpoint: give the base address the gateway adds endpoint paths to \
             (`https://host/v1`, not `https://host/v1/chat/completions`)",
    )
}

/// What is wrong with an Azure `api_base`, on one of Azure's own hosts,
/// that holds the path the gateway adds itself (`/openai/v1` from the
/// OpenAI SDK's `base_url`, a full target URI from the portal) or a query:
/// the calls would go to `…/openai/v1/openai/v1/…` and meet a 404. Another
/// host (a proxy in front, API Management) is left as it is.
fn azure_base_problem(base: &str) -> Option<&'static str> {
    let url = reqwest::Url::parse(base).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    let azure = [
        ".openai.azure.com",
        ".cognitiveservices.azure.com",
        ".services.ai.azure.com",
        // Azure Government and Azure China.
        ".openai.azure.us",
        ".cognitiveservices.azure.us",
        ".openai.azure.cn",
        ".cognitiveservices.azure.cn",
    ]
    .iter()
    .any(|suffix| host.ends_with(suffix));
    if !azure {
        return None;
    }
    if url.query().is_some() {
        return Some(
            "must not hold a query: give the resource's address (https://<resource>.openai.azure.com) and the \
             version as api_version",
        );
    }
    let openai = url
        .path_segments()?
        .any(|segment| segment.eq_ignore_ascii_case("openai"));
    openai.then_some(
        "must be the resource's address (https://<resource>.openai.azure.com), without `/openai/…`: the gateway \
         adds the path api_version calls for",
    )
}

fn check_price(value: Option<f64>, path: &str, issues: &mut Vec<ConfigIssue>) -> f64 {
    match value {
        None => 0.0,
        Some(v) if v.is_finite() && v >= 0.0 => v,
        Some(v) => {
            issues.push(issue(path, format!("{v} is not a non-negative number")));
            0.0
        }
    }
}

/// Each name without surrounding whitespace.
fn trimmed(names: &[String]) -> Vec<String> {
    names.iter().map(|n| n.trim().to_owned()).collect()
}

fn validate_deployment(
    entry: &DeploymentEntry,
    group: &str,
    index: usize,
    path: &str,
    env: &dyn EnvSource,
    issues: &mut Vec<ConfigIssue>,
) -> DeploymentSpec {
    if entry.model.trim().is_empty() {
        issues.push(issue(format!("{path}.model"), "must not be empty"));
    }
    let setting = |value: &Option<String>, key: &str, issues: &mut Vec<ConfigIssue>| {
        value
            .as_deref()
            .and_then(|v| resolve_setting(v, &format!("{path}.{key}"), env, issues))
    };
    let api_base = setting(&entry.api_base, "api_base", issues);
    match (entry.provider, &api_base) {
        (ProviderKind::Azure, None) if entry.api_base.is_none() => {
            issues.push(issue(format!("{path}.api_base"), "is required for azure"));
        }
        (ProviderKind::Azure, Some(base)) => {
            check_url(base, &format!("{path}.api_base"), issues);
            if let Some(problem) = azure_base_problem(base).or_else(|| endpoint_base_problem(base)) {
                issues.push(issue(format!("{path}.api_base"), problem));
            }
        }
        (_, Some(base)) => {
            check_url(base, &format!("{path}.api_base"), issues);
            if let Some(problem) = endpoint_base_problem(base) {
                issues.push(issue(format!("{path}.api_base"), problem));
            }
        }
        _ => {}
    }
    let api_version = setting(&entry.api_version, "api_version", issues);
    let anthropic_version = setting(&entry.anthropic_version, "anthropic_version", issues);
    match (entry.provider, &entry.api_version) {
        (ProviderKind::Azure, None) => issues.push(issue(format!("{path}.api_version"), "is required for azure")),
        (ProviderKind::Azure, Some(_)) | (_, None) => {}
        (_, Some(_)) => issues.push(issue(format!("{path}.api_version"), "is only used by azure")),
    }
    if entry.provider != ProviderKind::Anthropic && entry.anthropic_version.is_some() {
        issues.push(issue(format!("{path}.anthropic_version"), "is only used by anthropic"));
    }
    if !matches!(entry.provider, ProviderKind::Anthropic | ProviderKind::Bedrock) && entry.default_max_tokens.is_some()
    {
        issues.push(issue(
            format!("{path}.default_max_tokens"),
            "is only used by anthropic and bedrock",
        ));
    }
    let (aws_region, aws_credentials) = validate_aws(entry, path, env, issues);
    if !matches!(entry.provider, ProviderKind::Anthropic | ProviderKind::Bedrock) && entry.drop_params {
        issues.push(issue(
            format!("{path}.drop_params"),
            "is only used by anthropic and bedrock (other providers get the parameters as sent)",
        ));
    }
    if entry.default_max_tokens == Some(0) {
        issues.push(issue(format!("{path}.default_max_tokens"), "must be greater than 0"));
    }
    if entry.max_output_tokens.is_some() && !matches!(entry.provider, ProviderKind::Openai | ProviderKind::Azure) {
        issues.push(issue(
            format!("{path}.max_output_tokens"),
            "is only used by openai and azure",
        ));
    }
    if entry.max_output_tokens == Some(0) {
        issues.push(issue(format!("{path}.max_output_tokens"), "must be greater than 0"));
    }
    if entry.mock.is_some() && entry.provider != ProviderKind::Mock {
        issues.push(issue(format!("{path}.mock"), "is only used by the mock provider"));
    }
    if matches!(entry.provider, ProviderKind::Bedrock | ProviderKind::Mock) {
        let (what, instead) = match entry.provider {
            ProviderKind::Bedrock => ("bedrock", "it signs with AWS credentials (aws_access_key_id, …)"),
            _ => ("the mock provider", "it calls nothing"),
        };
        if entry.api_key.is_some() {
            issues.push(issue(
                format!("{path}.api_key"),
                format!("is not used by {what}: {instead}"),
            ));
        }
        if !entry.headers.is_empty() {
            issues.push(issue(format!("{path}.headers"), format!("are not sent by {what}")));
        }
    }
    if let Some(q) = entry.quality
        && !(0.0..=1.0).contains(&q)
    {
        issues.push(issue(format!("{path}.quality"), format!("{q} is not between 0 and 1")));
    }
    let weight = entry.weight.unwrap_or(1.0);
    if !(weight.is_finite() && weight > 0.0) {
        issues.push(issue(
            format!("{path}.weight"),
            format!("{weight} is not a positive number"),
        ));
    }
    for (field, limit) in [("rpm", entry.rpm), ("tpm", entry.tpm)] {
        if limit == Some(0) {
            issues.push(issue(
                format!("{path}.{field}"),
                "must be greater than 0 (leave it out for no limit)",
            ));
        }
    }
    let t = &entry.timeouts;
    for (field, value) in [
        ("connect_ms", t.connect_ms),
        ("first_byte_ms", t.first_byte_ms),
        ("total_ms", t.total_ms),
        ("idle_ms", t.idle_ms.unwrap_or(1)),
    ] {
        if value == 0 {
            issues.push(issue(format!("{path}.timeouts.{field}"), "must be greater than 0"));
        }
    }
    let api_key = entry
        .api_key
        .as_deref()
        .and_then(|k| resolve_credential(k, &format!("{path}.api_key"), env, issues));
    let headers = entry
        .headers
        .iter()
        .filter_map(|(name, value)| {
            // Only a whole value is read from the environment: one that
            // names a variable inside it would go upstream as written.
            if value.find("os.environ/").is_some_and(|at| at > 0) {
                issues.push(issue(
                    format!("{path}.headers.{name}"),
                    "only a whole value is read from the environment (`os.environ/NAME`): put the whole header value in the variable",
                ));
                return None;
            }
            // An empty header (an unset variable's) would fail every request.
            let secret = resolve_credential(value, &format!("{path}.headers.{name}"), env, issues)?;
            Some((name.clone(), secret.expose().to_owned()))
        })
        .collect();
    // OpenAI's and Anthropic's own APIs, and Azure, answer nothing without
    // a credential: a deployment with none would fail every request.
    let official = |host: &str| {
        entry.api_base.is_none()
            || api_base.as_deref().is_some_and(|b| {
                reqwest::Url::parse(b)
                    .ok()
                    .and_then(|u| u.host_str().map(|h| h.eq_ignore_ascii_case(host)))
                    .unwrap_or(false)
            })
    };
    let (needs_key, auth_headers, what): (bool, &[&str], &str) = match entry.provider {
        ProviderKind::Openai => (
            official("api.openai.com"),
            &["authorization"],
            "for OpenAI's API (or an Authorization header)",
        ),
        ProviderKind::Anthropic => (
            official("api.anthropic.com"),
            &["x-api-key", "authorization"],
            "for Anthropic's API (or an x-api-key or Authorization header)",
        ),
        ProviderKind::Azure => (
            true,
            &["api-key", "authorization"],
            "for azure (or an api-key or Authorization header)",
        ),
        _ => (false, &[], ""),
    };
    // Azure behind a gateway of its own (API Management) may take its
    // credential in a header of another name (`Ocp-Apim-Subscription-Key`).
    let carries_auth = entry.headers.keys().any(|h| {
        auth_headers.contains(&h.to_ascii_lowercase().as_str())
            || (entry.provider == ProviderKind::Azure && crate::state::credential_header(h))
    });
    if needs_key && entry.api_key.is_none() && !carries_auth {
        issues.push(issue(format!("{path}.api_key"), format!("is required {what}")));
    }
    let prices = deployment_prices(entry, path, issues);
    let mock = entry.mock.clone().unwrap_or_default();
    if mock.embedding_dims == 0 || mock.embedding_dims > 4096 {
        issues.push(issue(format!("{path}.mock.embedding_dims"), "must be from 1 to 4096"));
    }
    DeploymentSpec {
        name: format!("{group}/{index}"),
        provider: entry.provider,
        model: entry.model.clone(),
        base_model: entry.base_model.clone(),
        api_base,
        api_key,
        api_version,
        anthropic_version,
        default_max_tokens: entry.default_max_tokens,
        max_output_tokens: entry.max_output_tokens,
        drop_params: entry.drop_params,
        aws_region,
        aws_credentials,
        aws_model_id: entry
            .aws_model_id
            .as_deref()
            .filter(|_| entry.provider == ProviderKind::Bedrock)
            .and_then(|id| resolve_setting(id, &format!("{path}.aws_model_id"), env, issues)),
        weight,
        quality: entry.quality,
        input_cost_per_token: prices.input,
        output_cost_per_token: prices.output,
        prices,
        priced_per_request: entry.model.contains('*') && entry.base_model.is_none() && prices_unset(entry),
        price_unknown: price_unknown(entry),
        tags: entry
            .tags
            .iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect(),
        health_check: if entry.model.contains('*') {
            HealthCheck::None
        } else {
            entry.health_check
        },
        rpm: entry.rpm,
        tpm: entry.tpm,
        http: HttpSettings {
            timeouts: Timeouts {
                connect: Duration::from_millis(t.connect_ms),
                first_byte: Duration::from_millis(t.first_byte_ms),
                total: Duration::from_millis(t.total_ms),
                idle: Duration::from_millis(
                    t.idle_ms
                        .unwrap_or(t.first_byte_ms.max(Timeouts::default().idle.as_millis() as u64)),
                ),
            },
            headers,
        },
        mock: MockSettings {
            reply: mock.reply,
            delay: Duration::from_millis(mock.delay_ms),
            chunk_delay: Duration::from_millis(mock.chunk_delay_ms),
            embedding_dims: mock.embedding_dims,
        },
    }
}

/// Whether a deployment sets none of its prices.
fn prices_unset(entry: &DeploymentEntry) -> bool {
    [
        entry.input_cost_per_token,
        entry.output_cost_per_token,
        entry.cache_read_input_token_cost,
        entry.cache_creation_input_token_cost,
        entry.cache_creation_input_token_cost_above_1hr,
        entry.output_cost_per_image,
        entry.input_cost_per_character,
        entry.input_cost_per_second,
        entry.input_cost_per_query,
        entry.input_cost_per_image_token,
    ]
    .iter()
    .all(Option::is_none)
}

/// A deployment's prices: each configured one, the rest from the built-in
/// table when `base_model` (else the upstream model) is well known (only
/// when no price is configured at all), else zero.
fn token_prices(entry: &DeploymentEntry, path: &str, issues: &mut Vec<ConfigIssue>) -> switchyard_policy::Prices {
    if let Some(base) = &entry.base_model {
        let known = switchyard_policy::price::builtin(base.trim());
        if known.is_none() {
            issues.push(issue(
                format!("{path}.base_model"),
                format!("`{base}` has no built-in price; set input_cost_per_token and output_cost_per_token instead"),
            ));
        }
        if prices_unset(entry)
            && let Some(builtin) = known
        {
            return builtin;
        }
    } else if prices_unset(entry)
        && let Some(builtin) = switchyard_policy::price::builtin(&entry.model)
    {
        return builtin;
    }
    let optional = |value: Option<f64>, field: &str, issues: &mut Vec<ConfigIssue>| {
        value.map(|v| check_price(Some(v), &format!("{path}.{field}"), issues))
    };
    let input = check_price(
        entry.input_cost_per_token,
        &format!("{path}.input_cost_per_token"),
        issues,
    );
    let known = switchyard_policy::price::builtin(entry.base_model.as_deref().unwrap_or(&entry.model));
    switchyard_policy::Prices {
        input,
        output: check_price(
            entry.output_cost_per_token,
            &format!("{path}.output_cost_per_token"),
            issues,
        ),
        cache_read: optional(entry.cache_read_input_token_cost, "cache_read_input_token_cost", issues),
        cache_write: optional(
            entry.cache_creation_input_token_cost,
            "cache_creation_input_token_cost",
            issues,
        ),
        // A well-known Claude model's hour-long writes cost twice its
        // configured input price, as Anthropic bills them.
        cache_write_1h: optional(
            entry.cache_creation_input_token_cost_above_1hr,
            "cache_creation_input_token_cost_above_1hr",
            issues,
        )
        .or_else(|| known.and_then(|p| p.cache_write_1h).map(|_| input * 2.0)),
        // Configured token prices leave a well-known model's per-search price.
        web_search: known.and_then(|p| p.web_search),
        image: None,
        image_table: known.and_then(|p| p.image_table),
        per_character: known.and_then(|p| p.per_character),
        per_second: known.and_then(|p| p.per_second),
        per_query: known.and_then(|p| p.per_query),
        image_input: known.and_then(|p| p.image_input),
        // A well-known model's long prompts cost more in the same ratio.
        long_context: known.and_then(|p| p.long_context),
    }
}

/// A deployment's token prices ([`token_prices`]) and its configured
/// prices per image, character and second.
fn deployment_prices(entry: &DeploymentEntry, path: &str, issues: &mut Vec<ConfigIssue>) -> switchyard_policy::Prices {
    let mut prices = token_prices(entry, path, issues);
    for (value, field, price) in [
        (entry.output_cost_per_image, "output_cost_per_image", &mut prices.image),
        (
            entry.input_cost_per_character,
            "input_cost_per_character",
            &mut prices.per_character,
        ),
        (
            entry.input_cost_per_second,
            "input_cost_per_second",
            &mut prices.per_second,
        ),
        (
            entry.input_cost_per_query,
            "input_cost_per_query",
            &mut prices.per_query,
        ),
        (
            entry.input_cost_per_image_token,
            "input_cost_per_image_token",
            &mut prices.image_input,
        ),
    ] {
        if value.is_some() {
            *price = Some(check_price(value, &format!("{path}.{field}"), issues));
        }
    }
    prices
}

/// Bedrock's region and optional static credentials; other providers must not set them.
#[allow(clippy::type_complexity, reason = "a private helper returning two validated values")]
fn validate_aws(
    entry: &DeploymentEntry,
    path: &str,
    env: &dyn EnvSource,
    issues: &mut Vec<ConfigIssue>,
) -> (Option<String>, Option<(Secret, Secret, Option<Secret>)>) {
    let aws_keys = [
        ("aws_region", &entry.aws_region),
        ("aws_access_key_id", &entry.aws_access_key_id),
        ("aws_secret_access_key", &entry.aws_secret_access_key),
        ("aws_session_token", &entry.aws_session_token),
        ("aws_model_id", &entry.aws_model_id),
    ];
    if entry.provider != ProviderKind::Bedrock {
        for (key, value) in aws_keys {
            if value.is_some() {
                issues.push(issue(format!("{path}.{key}"), "is only used by bedrock"));
            }
        }
        return (None, None);
    }
    let region = match &entry.aws_region {
        Some(region) => resolve_setting(region, &format!("{path}.aws_region"), env, issues),
        None => env
            .get("AWS_REGION")
            .or_else(|| env.get("AWS_DEFAULT_REGION"))
            .filter(|r| !r.trim().is_empty()),
    };
    if region.is_none() && entry.aws_region.is_none() {
        issues.push(issue(
            format!("{path}.aws_region"),
            "is required for bedrock (or set AWS_REGION)",
        ));
    }
    // Trimmed: a secret file's last newline would fail every signature.
    let secret = |key: &str, value: &Option<String>, issues: &mut Vec<ConfigIssue>| {
        value
            .as_deref()
            .and_then(|v| resolve_credential(v, &format!("{path}.{key}"), env, issues))
            .map(|s| Secret::new(s.expose().trim()))
    };
    let id = secret("aws_access_key_id", &entry.aws_access_key_id, issues);
    let key = secret("aws_secret_access_key", &entry.aws_secret_access_key, issues);
    let token = secret("aws_session_token", &entry.aws_session_token, issues);
    let credentials = match (id, key) {
        (Some(id), Some(key)) => Some((id, key, token)),
        (None, None) => None,
        _ => {
            issues.push(issue(
                format!("{path}.aws_secret_access_key"),
                "aws_access_key_id and aws_secret_access_key go together",
            ));
            None
        }
    };
    (region, credentials)
}

/// Each allowed origin is `*` alone, or `scheme://host[:port]`.
fn validate_cors(origins: &[String], issues: &mut Vec<ConfigIssue>) {
    let wildcard = origins.iter().any(|o| o == "*");
    for (i, origin) in origins.iter().enumerate() {
        let path = format!("server.cors_allowed_origins[{i}]");
        if origin == "*" {
            if origins.len() > 1 {
                issues.push(issue(path, "`*` allows every origin and cannot be listed with others"));
            }
            continue;
        }
        let well_formed = origin.parse::<axum::http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority()
                    .is_some_and(|a| !a.as_str().contains('@') && !a.host().is_empty())
                && u.path_and_query()
                    .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
                && !origin.ends_with('/')
        });
        if !well_formed && !wildcard {
            issues.push(issue(
                path,
                "must be an origin such as `https://app.example.com` (scheme, host and optional port, no path), or `*`",
            ));
        }
    }
}

impl Config {
    /// The names a key's or team's `models` may list: model groups, learned
    /// routers, aliases and access groups.
    pub fn key_model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .model_list
            .iter()
            .flat_map(|m| std::iter::once(m.model_name.trim()).chain(m.access_groups.iter().map(String::as_str)))
            .chain(self.router_settings.model_group_alias.keys().map(String::as_str))
            // A key's list may name pass-through routes by path.
            .chain(self.pass_through.iter().map(|p| p.path.trim_end_matches('/')))
            .map(str::to_owned)
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Checks every value and resolves secrets, reporting all problems at once.
    pub fn validate(&self, env: &dyn EnvSource) -> Result<Vec<ModelSpec>, ConfigError> {
        let mut issues = Vec::new();
        if self.server.max_body_bytes == 0 {
            issues.push(issue("server.max_body_bytes", "must be greater than 0"));
        }
        for (value, field) in [
            (self.server.idle_timeout_ms, "server.idle_timeout_ms"),
            (self.server.body_read_timeout_ms, "server.body_read_timeout_ms"),
            (self.server.stream_write_timeout_ms, "server.stream_write_timeout_ms"),
        ] {
            if value == 0 {
                issues.push(issue(field, "must be greater than 0"));
            }
        }
        if !(1..=1_000_000).contains(&self.server.max_connections) {
            issues.push(issue("server.max_connections", "must be from 1 to 1000000"));
        }
        if self.server.max_concurrent_requests > 10_000_000 {
            issues.push(issue(
                "server.max_concurrent_requests",
                "must be at most 10000000 (0: no limit)",
            ));
        }
        if self.server.responses_store == ResponsesStoreKind::Redis && self.policy.redis.is_none() {
            issues.push(issue(
                "server.responses_store",
                "`redis` keeps responses in the policy's Redis: set policy.redis",
            ));
        }
        if self.server.responses_store_mib > 1_048_576 {
            issues.push(issue(
                "server.responses_store_mib",
                "must be at most 1048576 (1 TiB; 0: keep none)",
            ));
        }
        if !(1..=31_536_000).contains(&self.server.responses_ttl_seconds) {
            issues.push(issue(
                "server.responses_ttl_seconds",
                "must be from 1 to 31536000 (a year)",
            ));
        }
        validate_cors(&self.server.cors_allowed_origins, &mut issues);
        if self.model_list.is_empty() {
            issues.push(issue("model_list", "must list at least one model"));
        }
        let mut seen = std::collections::HashSet::new();
        let mut models = Vec::with_capacity(self.model_list.len());
        for (i, entry) in self.model_list.iter().enumerate() {
            let path = format!("model_list[{i}]");
            let name = entry.model_name.trim();
            if name.is_empty() {
                issues.push(issue(format!("{path}.model_name"), "must not be empty"));
            } else if !seen.insert(name.to_owned()) {
                issues.push(issue(
                    format!("{path}.model_name"),
                    format!("`{name}` is listed more than once"),
                ));
            }
            let router = match &entry.router {
                Some(router) => {
                    if !entry.deployments.is_empty() {
                        issues.push(issue(
                            format!("{path}.deployments"),
                            "a group with a `router` chooses among other model groups and has no deployments",
                        ));
                    }
                    if entry.routing_strategy.is_some() {
                        issues.push(issue(
                            format!("{path}.routing_strategy"),
                            "is not used by a group with a `router`",
                        ));
                    }
                    for (field, list) in [
                        ("fallbacks", &entry.fallbacks),
                        ("context_window_fallbacks", &entry.context_window_fallbacks),
                        ("content_policy_fallbacks", &entry.content_policy_fallbacks),
                    ] {
                        if !list.is_empty() {
                            issues.push(issue(
                                format!("{path}.{field}"),
                                "a learned router falls back down its ranking (and, for a prompt too long or refused by a content filter, to its chosen candidate's context_window_fallbacks or content_policy_fallbacks)",
                            ));
                        }
                    }
                    validate_router(router, &format!("{path}.router"), &mut issues)
                }
                None => {
                    if entry.deployments.is_empty() {
                        issues.push(issue(
                            format!("{path}.deployments"),
                            "must list at least one deployment (or set `router`)",
                        ));
                    }
                    None
                }
            };
            let wildcard = name.contains('*');
            if name.matches('*').count() > 1 {
                issues.push(issue(format!("{path}.model_name"), "a wildcard name holds one `*`"));
            }
            if wildcard && entry.router.is_some() {
                issues.push(issue(
                    format!("{path}.model_name"),
                    "a learned router's name cannot hold `*`",
                ));
            }
            for (j, d) in entry.deployments.iter().enumerate() {
                for (k, tag) in d.tags.iter().enumerate() {
                    if tag.trim().is_empty() || tag.len() > 64 {
                        issues.push(issue(
                            format!("{path}.deployments[{j}].tags[{k}]"),
                            "a tag has 1 to 64 bytes (a request's longer tags are cut there)",
                        ));
                    }
                }
                if !d.model.contains('*') {
                    continue;
                }
                let at = format!("{path}.deployments[{j}].model");
                if !wildcard {
                    issues.push(issue(
                        at,
                        "`*` stands for part of the model asked for: the model_name must hold one too",
                    ));
                } else if d.model.matches('*').count() > 1 {
                    issues.push(issue(at, "a wildcard model holds one `*`"));
                } else if !matches!(
                    d.provider,
                    ProviderKind::Openai | ProviderKind::Anthropic | ProviderKind::Mock
                ) {
                    issues.push(issue(
                        at,
                        "only openai, anthropic and mock deployments serve a model chosen per request (an Azure or Bedrock deployment is one model)",
                    ));
                }
            }
            let deployments = entry
                .deployments
                .iter()
                .enumerate()
                .map(|(j, d)| validate_deployment(d, name, j, &format!("{path}.deployments[{j}]"), env, &mut issues))
                .collect();
            models.push(ModelSpec {
                name: name.to_owned(),
                strategy_named: entry.routing_strategy.is_some(),
                strategy: entry
                    .routing_strategy
                    .clone()
                    .unwrap_or_else(|| self.router_settings.routing_strategy.clone()),
                // Names are compared trimmed above; they are kept that way.
                fallbacks: trimmed(&entry.fallbacks),
                context_window_fallbacks: trimmed(&entry.context_window_fallbacks),
                content_policy_fallbacks: trimmed(&entry.content_policy_fallbacks),
                deployments,
                router,
                access_groups: entry.access_groups.clone(),
            });
        }
        let routers: std::collections::HashSet<&str> = self
            .model_list
            .iter()
            .filter(|e| e.router.is_some())
            .map(|e| e.model_name.trim())
            .collect();
        for (i, entry) in self.model_list.iter().enumerate() {
            for (field, list) in [
                ("fallbacks", &entry.fallbacks),
                ("context_window_fallbacks", &entry.context_window_fallbacks),
                ("content_policy_fallbacks", &entry.content_policy_fallbacks),
            ] {
                for (k, target) in list.iter().enumerate() {
                    let path = format!("model_list[{i}].{field}[{k}]");
                    if target.contains('*') {
                        issues.push(issue(
                            path,
                            format!("`{target}` is a wildcard group: a fallback names one model"),
                        ));
                    } else if target.trim() == entry.model_name.trim() {
                        issues.push(issue(path, format!("`{target}` cannot fall back to itself")));
                    } else if !seen.contains(target.trim()) {
                        issues.push(issue(path, format!("`{target}` is not a model_name in model_list")));
                    } else if routers.contains(target.trim()) {
                        issues.push(issue(
                            path,
                            format!("`{target}` is a learned-router group; fall back to groups with deployments"),
                        ));
                    }
                }
            }
            if let Some(router) = &entry.router {
                for (model, group) in &router.candidates {
                    let path = format!("model_list[{i}].router.candidates.{model}");
                    if group.contains('*') {
                        issues.push(issue(
                            path,
                            format!("`{group}` is a wildcard group: a candidate names one model"),
                        ));
                    } else if let Some(alias) = self.router_settings.model_group_alias.get(group.trim()) {
                        issues.push(issue(
                            path,
                            format!("`{group}` is an alias; name its group `{}`", alias.group()),
                        ));
                    } else if !seen.contains(group.trim()) {
                        issues.push(issue(path, format!("`{group}` is not a model_name in model_list")));
                    } else if routers.contains(group.trim()) {
                        issues.push(issue(path, format!("`{group}` is a learned-router group")));
                    }
                }
            }
        }
        for (alias, entry) in &self.router_settings.model_group_alias {
            let path = format!("router_settings.model_group_alias.{alias}");
            let group = entry.group();
            if alias.trim().is_empty() || alias.trim() != alias {
                issues.push(issue(path, "an alias must be a name without surrounding spaces"));
            } else if seen.contains(alias.as_str()) {
                issues.push(issue(path, format!("`{alias}` is a model_name in model_list already")));
            } else if group.contains('*') {
                issues.push(issue(
                    path,
                    format!("`{group}` is a wildcard group: an alias names one model"),
                ));
            } else if seen.contains(group) {
                continue;
            } else if self.router_settings.model_group_alias.contains_key(group) {
                issues.push(issue(
                    path,
                    format!("`{group}` is an alias itself; name the model group it stands for"),
                ));
            } else {
                issues.push(issue(path, format!("`{group}` is not a model_name in model_list")));
            }
        }
        for (i, entry) in self.model_list.iter().enumerate() {
            for (k, name) in entry.access_groups.iter().enumerate() {
                let path = format!("model_list[{i}].access_groups[{k}]");
                if name.trim().is_empty() || name.trim() != name {
                    issues.push(issue(path, "an access group must be a name without surrounding spaces"));
                } else if seen.contains(name.as_str()) {
                    issues.push(issue(
                        path,
                        format!("`{name}` is a model_name; a key could not tell which it means"),
                    ));
                } else if self.router_settings.model_group_alias.contains_key(name.as_str()) {
                    issues.push(issue(
                        path,
                        format!("`{name}` is an alias; a key could not tell which it means"),
                    ));
                } else if let Some(wild) = self
                    .model_list
                    .iter()
                    .map(|m| m.model_name.trim())
                    .find(|w| w.contains('*') && switchyard_policy::key::names_model(w, name))
                {
                    issues.push(issue(
                        path,
                        format!("`{name}` is a model the wildcard group `{wild}` serves; a key could not tell which it means"),
                    ));
                }
            }
            for (field, list) in [
                ("fallbacks", &entry.fallbacks),
                ("context_window_fallbacks", &entry.context_window_fallbacks),
                ("content_policy_fallbacks", &entry.content_policy_fallbacks),
            ] {
                for (k, target) in list.iter().enumerate() {
                    if let Some(alias) = self.router_settings.model_group_alias.get(target.trim()) {
                        // Replaces "is not a model_name" with what to write.
                        let path = format!("model_list[{i}].{field}[{k}]");
                        issues.retain(|found| found.path != path);
                        issues.push(issue(
                            path,
                            format!("`{target}` is an alias; name its group `{}`", alias.group()),
                        ));
                    }
                }
            }
        }
        if let Err(found) = self.router_settings.dispatch() {
            issues.extend(found);
        }
        // A LiteLLM file's deployments are named where the file has them.
        for found in &mut issues {
            let origin = self.origins.iter().find_map(|(translated, original)| {
                let rest = found.path.strip_prefix(translated.as_str())?;
                (rest.is_empty() || rest.starts_with('.')).then(|| format!("{original}{rest}"))
            });
            if let Some(path) = origin {
                found.path = path;
            }
        }
        if issues.is_empty() {
            Ok(models)
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }
}

#[cfg(test)]
mod tests;
