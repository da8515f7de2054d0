//! The state shared by every handler, built once from a validated configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use switchyard_providers::anthropic::{DEFAULT_ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS};
use switchyard_providers::{
    AnthropicProvider, AnthropicSettings, AzureProvider, BedrockProvider, BedrockSettings, MockProvider,
    OpenAiProvider, ProviderClient, ProviderError, StaticCredentials,
};
use switchyard_routing::{
    Cooldowns, CostBased, DeploymentId, DeploymentInfo, LatencyBased, LiveStats, ModelGroup, Registry, RoutingStrategy,
    StrategyRegistry,
};

use switchyard_routing::embed::{Embedder, EmbedderConfig};

use crate::config::{
    ConfigIssue, DeploymentSpec, DispatchSettings, ModelSpec, ProviderKind, RouterSettings, RouterSpec, ServerConfig,
};
use crate::learned::{LearnedRoute, LoadError};
use crate::policy_config::PolicySpec;
use switchyard_policy::{Policy, PolicyError, PolicySettings, Prices};

/// The issue path of an embedding model that could not be loaded (its
/// directory missing or unreadable): a configuration naming it may start
/// once the files are in place.
pub(crate) const EMBEDDER_UNREADABLE: &str = "embedder.model_dir";

/// Everything a request needs: the routing registry and one client per deployment,
/// indexed by [`DeploymentId`].
#[derive(Debug)]
pub struct AppState {
    /// Model groups and deployments.
    pub registry: Registry,
    /// Provider clients, in registry order.
    pub providers: Vec<ProviderClient>,
    /// Listener settings.
    pub server: ServerConfig,
    /// Unix time the configuration was loaded (reported by `/v1/models`).
    pub loaded_at: u64,
    /// Each group's strategy and candidate list, by public model name.
    pub routes: HashMap<String, GroupRoute>,
    /// Other names of model groups and learned routers
    /// (`router_settings.model_group_alias`).
    pub aliases: HashMap<String, ModelAlias>,
    /// Model groups whose name holds a `*` (`openai/*`), most specific
    /// (longest fixed part) first.
    pub wildcards: Vec<Wildcard>,
    /// Per deployment, indexed like `providers`: for a wildcard deployment
    /// with no price configured, its `model` (with its `*`), priced per
    /// request at the built-in price of the model it sends upstream.
    pub priced_per_request: Vec<Option<String>>,
    /// Per deployment, indexed like `providers`: its routing tags.
    pub deployment_tags: Vec<Vec<String>>,
    /// Per deployment, indexed like `providers`: what `GET /health` sends it.
    pub health_checks: Vec<crate::config::HealthCheck>,
    /// Whether requests' tags choose deployments
    /// (`router_settings.enable_tag_filtering`).
    pub tag_filtering: bool,
    /// The access groups of each model group and learned router that
    /// belongs to one (`model_list[].access_groups`).
    pub access_groups: HashMap<String, Vec<String>>,
    /// Live per-deployment statistics the strategies read, indexed like `providers`.
    pub stats: LiveStats,
    /// Per-deployment circuit breakers, indexed like `providers`.
    pub cooldowns: Cooldowns,
    /// Retries, deadlines and cooldown policy.
    pub dispatch: DispatchSettings,
    /// Origin of the monotonic milliseconds passed to routing.
    pub started: Instant,
    /// The sentence embedder, loaded when a group has a learned router.
    pub embedder: Option<Arc<Embedder>>,
    /// Learned-router groups by public model name (in name order, as listed), once [`AppState::start_learned`] ran.
    pub learned: std::collections::BTreeMap<String, Arc<LearnedRoute>>,
    /// Learned routers configured, waiting for [`AppState::start_learned`].
    pending_routers: Vec<(String, RouterSpec)>,
    /// Keys, limits, budgets and spend (in memory until [`AppState::start_policy`]).
    pub policy: Policy,
    /// The policy settings, opened by [`AppState::start_policy`].
    pending_policy: Option<PolicySettings>,
    /// Output tokens assumed for a request without `max_tokens` (budget reservations).
    pub default_max_tokens: u32,
    /// Whether requests' end users are recorded (`policy.record_end_users`).
    pub record_end_users: bool,
    /// Whether spend is also counted per tag (`policy.track_tag_spend`).
    pub track_tag_spend: bool,
    /// Prices of each deployment, indexed like `providers`.
    pub prices: Vec<Prices>,
    /// What each deployment calls (provider, model, address, region, a hash
    /// of its credentials), indexed like `providers`: a reload carries a
    /// deployment's breaker and statistics to the one calling the same
    /// upstream, wherever it now is in its group.
    upstreams: Vec<[u8; 32]>,
    /// Per public model name, the highest prices any deployment it may reach
    /// charges (its own, its fallbacks', a learned router's candidates'),
    /// and the most output such a deployment asks for by itself.
    pub ceilings: HashMap<String, Ceiling>,
    /// Per public model name, the model groups a request to it may reach:
    /// itself and its fallbacks of every kind, theirs in turn (a learned
    /// router: every group).
    pub reach: HashMap<String, Vec<String>>,
    /// Per model name, what its answers depend on (each deployment's
    /// provider, upstream model and address; for a learned router, every
    /// group's): part of its cache keys, so that answers kept before a
    /// reload that changed them are not served after it.
    pub cache_generations: HashMap<String, String>,
    /// The response cache, when `cache.enabled`.
    pub cache: Option<Arc<crate::cache::GatewayCache>>,
    /// Prometheus metrics.
    pub metrics: switchyard_telemetry::Metrics,
    /// Pass-through routes (`pass_through:`), in the configuration's order.
    pub pass_through: Arc<Vec<crate::passthrough::PassThrough>>,
    /// The HTTP client of pass-through routes (its connections kept across
    /// reloads).
    pub pass_through_client: reqwest::Client,
    /// Alerts to a webhook, once [`AppState::start_alerts`] started them.
    pub alerts: Option<crate::alerts::Alerts>,
    /// The request log, once [`AppState::start_telemetry`] opened it.
    pub request_log: Option<switchyard_telemetry::RequestLog>,
    /// Logs, spans, metrics and request-log settings.
    pub telemetry: crate::telemetry_config::TelemetrySpec,
    /// Set when shutdown cuts the streams still running after the drain
    /// timeout (shared by every state a reload makes).
    pub cut: Arc<tokio::sync::watch::Sender<bool>>,
    /// Work whose client left, still running (shared by every state a
    /// reload makes): the drain waits for it, and the cut ends it.
    pub abandoned: Arc<std::sync::atomic::AtomicUsize>,
    /// Slots of `server.max_concurrent_requests` (shared by every state a
    /// reload makes; `None`: no limit).
    pub request_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Responses kept for `previous_response_id` (shared by every state a
    /// reload makes).
    pub responses: crate::responses::ResponseStore,
}

/// A model group whose name holds a `*`: it serves every model name that
/// matches, its deployments' `*` replaced by what the `*` matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wildcard {
    /// The group's name (`openai/*`).
    pub group: String,
    prefix: String,
    suffix: String,
}

impl Wildcard {
    fn new(group: &str) -> Option<Self> {
        let (prefix, suffix) = group.split_once('*')?;
        Some(Self {
            group: group.to_owned(),
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    /// What the `*` matches in `name`, when it matches (never empty).
    pub fn matches<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())
            .filter(|part| !part.is_empty())
    }
}

/// An alias of a model group or learned router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelAlias {
    /// The name it stands for.
    pub group: String,
    /// Left out of model lists.
    pub hidden: bool,
}

/// How one model group is routed.
#[derive(Debug, Clone)]
pub struct GroupRoute {
    /// The group's strategy.
    pub strategy: Arc<dyn RoutingStrategy>,
    /// Indexes of every deployment of the group (all are candidates).
    pub all: Vec<usize>,
    /// Groups tried when every attempt on this one failed.
    pub fallbacks: Vec<String>,
    /// Groups tried when the prompt exceeds the context window.
    pub context_window_fallbacks: Vec<String>,
    /// Groups tried when the upstream refuses on content policy.
    pub content_policy_fallbacks: Vec<String>,
}

/// Where `/v1/responses` keeps responses: in the policy's Redis with
/// `server.responses_store: redis` (every replica can continue them), else
/// in this process.
fn response_store(
    server: &ServerConfig,
    redis: Option<&switchyard_policy::RedisSettings>,
) -> Result<crate::responses::ResponseStore, Vec<ConfigIssue>> {
    let max_bytes = server.responses_store_mib.saturating_mul(1024 * 1024);
    let ttl = std::time::Duration::from_secs(server.responses_ttl_seconds);
    match redis.filter(|_| server.responses_store == crate::config::ResponsesStoreKind::Redis) {
        None => Ok(crate::responses::ResponseStore::memory(max_bytes, ttl)),
        Some(redis) => crate::responses::ResponseStore::redis(&redis.url, &redis.prefix, redis.timeout, max_bytes, ttl)
            .map_err(|message| {
                vec![ConfigIssue {
                    path: "policy.redis.url".into(),
                    message,
                }]
            }),
    }
}

const OPENAI_API_BASE: &str = "https://api.openai.com/v1";
const ANTHROPIC_API_BASE: &str = "https://api.anthropic.com";

fn build_provider(spec: &DeploymentSpec) -> Result<ProviderClient, ProviderError> {
    Ok(match spec.provider {
        ProviderKind::Openai => ProviderClient::OpenAi(
            OpenAiProvider::new(
                spec.api_base.as_deref().unwrap_or(OPENAI_API_BASE),
                spec.api_key.as_ref(),
                &spec.http,
            )?
            .with_base_model(spec.base_model.as_deref())
            .with_max_output(spec.max_output_tokens),
        ),
        ProviderKind::Azure => ProviderClient::Azure(
            AzureProvider::new(
                spec.api_base.as_deref().unwrap_or_default(),
                &spec.model,
                spec.api_version.as_deref().unwrap_or_default(),
                spec.api_key.as_ref(),
                &spec.http,
            )?
            .with_base_model(spec.base_model.as_deref())
            .with_max_output(spec.max_output_tokens),
        ),
        ProviderKind::Anthropic => ProviderClient::Anthropic(AnthropicProvider::new(
            &AnthropicSettings {
                api_base: spec.api_base.clone().unwrap_or_else(|| ANTHROPIC_API_BASE.to_owned()),
                api_key: spec.api_key.clone(),
                version: spec
                    .anthropic_version
                    .clone()
                    .unwrap_or_else(|| DEFAULT_ANTHROPIC_VERSION.to_owned()),
                default_max_tokens: spec.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                drop_params: spec.drop_params,
            },
            &spec.http,
        )?),
        ProviderKind::Bedrock => ProviderClient::Bedrock(BedrockProvider::new(BedrockSettings {
            region: spec.aws_region.clone().unwrap_or_default(),
            endpoint_url: spec.api_base.clone(),
            credentials: spec
                .aws_credentials
                .clone()
                .map(|(id, secret, token)| StaticCredentials {
                    access_key_id: id,
                    secret_access_key: secret,
                    session_token: token,
                }),
            default_max_tokens: spec.default_max_tokens,
            model_id: spec.aws_model_id.clone(),
            timeouts: spec.http.timeouts,
            drop_params: spec.drop_params,
        })),
        ProviderKind::Mock => ProviderClient::Mock(MockProvider::new(spec.mock.clone())),
    })
}

/// The most a request to one model name can cost per token, and the most
/// output tokens a deployment it may reach requests upstream when the
/// client sets no `max_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ceiling {
    /// The highest price of each kind.
    pub prices: Prices,
    /// The highest `max_tokens` an Anthropic or Bedrock deployment sends
    /// for a request without one (`None`: no such deployment).
    pub default_output: Option<u32>,
    /// Whether a Claude model it may reach thinks unasked (and is given
    /// room for it on top of the request's `max_tokens`).
    pub thinkers: switchyard_providers::reasoning::Thinkers,
    /// Whether a deployment it may reach counts tokens upstream
    /// (`/v1/messages/count_tokens`: Anthropic, Claude on Bedrock).
    pub counts_tokens: bool,
}

impl Ceiling {
    /// The higher of two ceilings, each part apart.
    pub(crate) fn max(self, other: Ceiling) -> Ceiling {
        Ceiling {
            prices: max_prices(self.prices, other.prices),
            default_output: self.default_output.max(other.default_output),
            thinkers: self.thinkers.or(other.thinkers),
            counts_tokens: self.counts_tokens || other.counts_tokens,
        }
    }
}

/// What a deployment asks of the upstream for a request without `max_tokens`:
/// Anthropic and Bedrock's Claude are sent the deployment's (4,096 by
/// default). Other Bedrock models are sent none and write up to their own
/// default, which the gateway cannot know: they are counted the same, as
/// an estimate (with `policy.default_max_tokens` as the floor).
fn default_output(spec: &DeploymentSpec) -> Option<u32> {
    matches!(spec.provider, ProviderKind::Anthropic | ProviderKind::Bedrock)
        .then(|| spec.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS))
}

/// Every group a request to `start` may reach: its fallbacks, and those of
/// each group reached (a fallback group's own context-window and
/// content-policy fallbacks apply when it refuses).
fn reachable<'a>(by_name: &HashMap<&'a str, &'a ModelSpec>, start: &'a str) -> Vec<&'a str> {
    let mut seen: Vec<&'a str> = vec![start];
    let mut next = 0;
    while let Some(name) = seen.get(next).copied() {
        next += 1;
        if let Some(spec) = by_name.get(name) {
            for other in spec
                .fallbacks
                .iter()
                .chain(&spec.context_window_fallbacks)
                .chain(&spec.content_policy_fallbacks)
            {
                if !seen.contains(&other.as_str()) {
                    seen.push(other.as_str());
                }
            }
        }
    }
    seen
}

/// The groups each model name may reach ([`AppState::reach`]).
fn reach_map(models: &[ModelSpec]) -> HashMap<String, Vec<String>> {
    let by_name: HashMap<&str, &ModelSpec> = models.iter().map(|m| (m.name.as_str(), m)).collect();
    let groups: Vec<String> = models
        .iter()
        .filter(|m| m.router.is_none())
        .map(|m| m.name.clone())
        .collect();
    models
        .iter()
        .map(|m| {
            let reached = match m.router {
                Some(_) => groups.clone(),
                None => reachable(&by_name, &m.name).into_iter().map(str::to_owned).collect(),
            };
            (m.name.clone(), reached)
        })
        .collect()
}

/// The ceiling of each model name over every deployment it may reach.
fn price_ceilings(models: &[ModelSpec]) -> HashMap<String, Ceiling> {
    let own: HashMap<&str, Ceiling> = models
        .iter()
        .map(|m| {
            let max = m.deployments.iter().fold(Ceiling::default(), |acc, d| {
                acc.max(Ceiling {
                    prices: d.prices,
                    default_output: default_output(d),
                    thinkers: match d.provider {
                        ProviderKind::Anthropic | ProviderKind::Bedrock => {
                            switchyard_providers::reasoning::Thinkers::of(&d.model)
                        }
                        _ => switchyard_providers::reasoning::Thinkers::default(),
                    },
                    counts_tokens: match d.provider {
                        ProviderKind::Anthropic => true,
                        ProviderKind::Bedrock => switchyard_providers::BedrockProvider::counts_tokens(&d.model),
                        _ => false,
                    },
                })
            });
            (m.name.as_str(), max)
        })
        .collect();
    let by_name: HashMap<&str, &ModelSpec> = models.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut ceilings: HashMap<String, Ceiling> = models
        .iter()
        .filter(|m| m.router.is_none())
        .map(|m| {
            let ceiling = reachable(&by_name, m.name.as_str())
                .into_iter()
                .filter_map(|name| own.get(name).copied())
                .fold(Ceiling::default(), Ceiling::max);
            (m.name.clone(), ceiling)
        })
        .collect();
    // A learned router may choose any group: its artifact names them (a
    // candidate it does not map keeps its name), and a reloaded artifact may
    // name others. Its ceiling is the highest of all.
    let highest = ceilings.values().copied().fold(Ceiling::default(), Ceiling::max);
    for m in models.iter().filter(|m| m.router.is_some()) {
        ceilings.insert(m.name.clone(), highest);
    }
    ceilings
}

/// Whether an upstream header's value is a credential (kept out of hashes).
pub(crate) fn credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["auth", "key", "token", "secret", "password", "cookie", "signature"]
        .iter()
        .any(|part| name.contains(part))
}

/// [`AppState::cache_generations`]: a short hash per model name of what its
/// answers come from (credentials and prices left out: a rotated key or a
/// new price does not change answers; the settings that shape the request
/// sent, such as `default_max_tokens` or an `anthropic-beta` header, do).
/// Of the extra headers, those that look like credentials count by name
/// only.
fn cache_generations(models: &[ModelSpec]) -> HashMap<String, String> {
    use sha2::{Digest, Sha256};
    let of_group = |m: &ModelSpec| {
        let mut h = Sha256::new();
        for d in &m.deployments {
            let max_tokens = d.default_max_tokens.map(|t| t.to_string()).unwrap_or_default();
            let max_output = d.max_output_tokens.map(|t| t.to_string()).unwrap_or_default();
            let mock = format!("{:?}/{}", d.mock.reply, d.mock.embedding_dims);
            let headers: String = d
                .http
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = if credential_header(name) { "" } else { value.as_str() };
                    format!("{}={value}\n", name.to_ascii_lowercase())
                })
                .collect();
            for part in [
                provider_name(d.provider),
                d.model.as_str(),
                d.api_base.as_deref().unwrap_or(""),
                d.api_version.as_deref().unwrap_or(""),
                d.aws_region.as_deref().unwrap_or(""),
                d.aws_model_id.as_deref().unwrap_or(""),
                d.anthropic_version.as_deref().unwrap_or(""),
                max_tokens.as_str(),
                max_output.as_str(),
                d.base_model.as_deref().unwrap_or(""),
                if d.drop_params { "drop_params" } else { "" },
                mock.as_str(),
                headers.as_str(),
            ] {
                h.update(part.as_bytes());
                h.update([0]);
            }
            h.update([1]);
        }
        h.finalize()
    };
    let mut out: HashMap<String, String> = models
        .iter()
        .filter(|m| m.router.is_none())
        .map(|m| (m.name.clone(), hex::encode(&of_group(m)[..8])))
        .collect();
    // A router's answers come from any group it may choose.
    let mut groups: Vec<(&String, &String)> = out.iter().collect();
    groups.sort();
    let mut all = Sha256::new();
    for (name, generation) in groups {
        all.update(name.as_bytes());
        all.update([0]);
        all.update(generation.as_bytes());
        all.update([0]);
    }
    // And from how it chooses: its objective and which group each of its
    // candidates maps to.
    for m in models {
        let Some(router) = &m.router else { continue };
        let mut own = all.clone();
        own.update(format!("{:?}", router.objective).as_bytes());
        for (candidate, group) in &router.candidates {
            own.update([0]);
            own.update(candidate.as_bytes());
            own.update([0]);
            own.update(group.as_bytes());
        }
        out.insert(m.name.clone(), hex::encode(&own.finalize()[..8]));
    }
    out
}

/// What a deployment calls, as a hash: its provider, model, address, API
/// version, region, model id and credentials (hashed, never kept).
fn upstream_identity(spec: &crate::config::DeploymentSpec) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        provider_name(spec.provider),
        spec.model.as_str(),
        spec.api_base.as_deref().unwrap_or(""),
        spec.api_version.as_deref().unwrap_or(""),
        spec.aws_region.as_deref().unwrap_or(""),
        spec.aws_model_id.as_deref().unwrap_or(""),
        spec.api_key.as_ref().map_or("", |k| k.expose()),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    if let Some((id, _, _)) = &spec.aws_credentials {
        h.update(id.expose().as_bytes());
    }
    h.finalize().into()
}

/// The higher of each of two price lists' prices.
pub(crate) fn max_prices(a: Prices, b: Prices) -> Prices {
    let opt = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (None, None) => None,
        (x, y) => Some(x.unwrap_or(0.0).max(y.unwrap_or(0.0))),
    };
    Prices {
        input: a.input.max(b.input),
        output: a.output.max(b.output),
        cache_read: opt(a.cache_read, b.cache_read),
        cache_write: opt(a.cache_write, b.cache_write),
        cache_write_1h: opt(a.cache_write_1h, b.cache_write_1h),
        web_search: opt(a.web_search, b.web_search),
        image: opt(a.image, b.image),
        image_table: a.image_table.or(b.image_table),
        per_character: opt(a.per_character, b.per_character),
        per_second: opt(a.per_second, b.per_second),
        per_query: opt(a.per_query, b.per_query),
        image_input: opt(a.image_input, b.image_input),
        long_context: long_ceiling(&a, &b),
    }
}

/// The long-context part of [`max_prices`]: from the lowest threshold, the
/// multipliers that take the merged prices to the higher of the two
/// models' own long-context prices (not one model's multipliers on the
/// other's prices, which would reserve far more than either can cost).
fn long_ceiling(a: &Prices, b: &Prices) -> Option<switchyard_policy::LongContext> {
    if a.long_context.is_none() && b.long_context.is_none() {
        return None;
    }
    let prompt = |p: &Prices| {
        p.input
            .max(p.cache_read.unwrap_or(0.0))
            .max(p.cache_write.unwrap_or(0.0))
            .max(p.cache_write_1h.unwrap_or(0.0))
    };
    let factors = |p: &Prices| p.long_context.map_or((1.0, 1.0), |l| (l.input, l.output));
    let ratio = |long: f64, flat: f64| if flat > 0.0 { (long / flat).max(1.0) } else { 1.0 };
    let (ai, ao) = factors(a);
    let (bi, bo) = factors(b);
    let above = [a.long_context, b.long_context]
        .into_iter()
        .flatten()
        .map(|l| l.above)
        .min()
        .unwrap_or(u64::MAX);
    Some(switchyard_policy::LongContext {
        above,
        input: ratio((prompt(a) * ai).max(prompt(b) * bi), prompt(a).max(prompt(b))),
        output: ratio((a.output * ao).max(b.output * bo), a.output.max(b.output)),
    })
}

fn provider_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "openai",
        ProviderKind::Azure => "azure",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Bedrock => "bedrock",
        ProviderKind::Mock => "mock",
    }
}

impl AppState {
    /// Builds the registry and the provider clients.
    pub fn build(
        server: ServerConfig,
        router: &RouterSettings,
        (embedder, loaded): (&EmbedderConfig, Option<Arc<Embedder>>),
        models: &[ModelSpec],
        policy: PolicySpec,
        cache: Option<&crate::cache_config::CacheSpec>,
        telemetry: crate::telemetry_config::TelemetrySpec,
    ) -> Result<Self, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let semantic = cache.is_some_and(crate::cache::GatewayCache::needs_embedder);
        let pending_routers: Vec<(String, RouterSpec)> = models
            .iter()
            .filter_map(|m| m.router.clone().map(|r| (m.name.clone(), r)))
            .collect();
        let embedder = if pending_routers.is_empty() && !semantic {
            None
        } else if let Some(loaded) = loaded {
            Some(loaded)
        } else {
            match Embedder::load(embedder) {
                Ok(e) => Some(Arc::new(e)),
                // A setting out of range is named as itself, not as the
                // model's directory.
                Err(switchyard_routing::embed::EmbedError::InvalidSetting(setting)) => {
                    issues.push(ConfigIssue {
                        path: format!("embedder.{setting}"),
                        message: "is out of range (max_tokens: 8 to 512; batch_size: at least 1)".into(),
                    });
                    None
                }
                Err(switchyard_routing::embed::EmbedError::TooManyTokens { max_tokens, positions }) => {
                    issues.push(ConfigIssue {
                        path: "embedder.max_tokens".into(),
                        message: format!("is {max_tokens}, and the model takes at most {positions} tokens"),
                    });
                    None
                }
                Err(e) => {
                    issues.push(ConfigIssue {
                        path: EMBEDDER_UNREADABLE.into(),
                        message: format!("{e} (run `cargo xtask models fetch`, or point it at the model's directory)"),
                    });
                    None
                }
            }
        };
        let dispatch = match router.dispatch() {
            Ok(d) => Some(d),
            Err(found) => {
                issues.extend(found);
                None
            }
        };
        let mut providers = Vec::new();
        let mut prices = Vec::new();
        let mut upstreams = Vec::new();
        let mut strategies = StrategyRegistry::with_builtins();
        match LatencyBased::new(router.latency_tolerance) {
            Ok(s) => drop(strategies.replace(LatencyBased::NAME, Arc::new(s))),
            Err(e) => issues.push(ConfigIssue {
                path: "router_settings.latency_tolerance".into(),
                message: e.to_string(),
            }),
        }
        match CostBased::new(router.cost_min_quality) {
            Ok(s) => drop(strategies.replace(CostBased::NAME, Arc::new(s))),
            Err(e) => issues.push(ConfigIssue {
                path: "router_settings.cost_min_quality".into(),
                message: e.to_string(),
            }),
        }
        let mut routes = HashMap::new();
        let mut priced_per_request = Vec::new();
        let mut deployment_tags = Vec::new();
        let mut health_checks = Vec::new();
        let mut groups = Vec::with_capacity(models.len());
        for (i, model) in models.iter().enumerate() {
            if model.router.is_some() {
                continue;
            }
            let mut infos = Vec::with_capacity(model.deployments.len());
            for (j, spec) in model.deployments.iter().enumerate() {
                match build_provider(spec) {
                    Ok(client) => {
                        providers.push(client);
                        prices.push(spec.prices);
                        priced_per_request.push(spec.priced_per_request.then(|| spec.model.clone()));
                        deployment_tags.push(spec.tags.clone());
                        health_checks.push(spec.health_check);
                        upstreams.push(upstream_identity(spec));
                    }
                    Err(e) => {
                        issues.push(ConfigIssue {
                            path: format!("model_list[{i}].deployments[{j}]"),
                            message: e.to_string(),
                        });
                        continue;
                    }
                }
                infos.push(DeploymentInfo {
                    id: DeploymentId(providers.len() - 1),
                    name: spec.name.clone(),
                    model: spec.model.clone(),
                    provider: provider_name(spec.provider).to_owned(),
                    weight: spec.weight,
                    quality: spec.quality,
                    // Unknown prices are not zero to `cost-based`: it
                    // would send everything to a deployment nobody priced.
                    input_cost_per_token: if spec.price_unknown {
                        f64::NAN
                    } else {
                        spec.input_cost_per_token
                    },
                    output_cost_per_token: if spec.price_unknown {
                        f64::NAN
                    } else {
                        spec.output_cost_per_token
                    },
                    rpm: spec.rpm,
                    tpm: spec.tpm,
                });
            }
            match strategies.require(&model.strategy) {
                Ok(strategy) => {
                    let route = GroupRoute {
                        strategy,
                        all: (0..infos.len()).collect(),
                        fallbacks: model.fallbacks.clone(),
                        context_window_fallbacks: model.context_window_fallbacks.clone(),
                        content_policy_fallbacks: model.content_policy_fallbacks.clone(),
                    };
                    routes.insert(model.name.clone(), route);
                }
                Err(e) => {
                    // A name the group took from `router_settings` is
                    // reported once, where it was written.
                    let path = if !model.strategy_named {
                        "router_settings.routing_strategy".to_owned()
                    } else {
                        format!("model_list[{i}].routing_strategy")
                    };
                    if !issues.iter().any(|issue| issue.path == path) {
                        issues.push(ConfigIssue {
                            path,
                            message: format!(
                                "{e}; known strategies: {}",
                                strategies.names().collect::<Vec<_>>().join(", ")
                            ),
                        });
                    }
                }
            }
            match ModelGroup::new(model.name.clone(), infos) {
                Ok(group) => groups.push(group),
                Err(e) => issues.push(ConfigIssue {
                    path: format!("model_list[{i}]"),
                    message: e.to_string(),
                }),
            }
        }
        let cache = match cache
            .map(|c| crate::cache::GatewayCache::new(c).map(Arc::new))
            .transpose()
        {
            Ok(cache) => cache,
            Err(e) => {
                issues.push(ConfigIssue {
                    path: "cache.redis.url".into(),
                    message: e.to_string(),
                });
                None
            }
        };
        let Some(dispatch) = dispatch.filter(|_| issues.is_empty()) else {
            return Err(issues);
        };
        let registry = Registry::new(groups).map_err(|e| {
            vec![ConfigIssue {
                path: "model_list".into(),
                message: e.to_string(),
            }]
        })?;
        let stats = LiveStats::new(providers.len());
        let ceilings = price_ceilings(models);
        let reach = reach_map(models);
        let cache_generations = cache_generations(models);
        let responses = response_store(&server, policy.settings.redis.as_ref())?;
        Ok(Self {
            policy: Policy::memory(&policy.settings),
            pending_policy: Some(policy.settings),
            default_max_tokens: policy.default_max_tokens,
            record_end_users: policy.record_end_users,
            track_tag_spend: policy.track_tag_spend,
            prices,
            upstreams,
            ceilings,
            reach,
            cache_generations,
            cache,
            metrics: switchyard_telemetry::Metrics::expiring(telemetry.metrics_idle_timeout),
            alerts: None,
            pass_through: Arc::new(Vec::new()),
            pass_through_client: crate::passthrough::client(),
            request_log: None,
            telemetry,
            cut: Arc::new(tokio::sync::watch::Sender::new(false)),
            abandoned: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            request_slots: (server.max_concurrent_requests > 0)
                .then(|| Arc::new(tokio::sync::Semaphore::new(server.max_concurrent_requests))),
            responses,
            registry,
            stats,
            cooldowns: Cooldowns::new(providers.len(), dispatch.cooldown),
            dispatch,
            routes,
            aliases: router
                .model_group_alias
                .iter()
                .map(|(alias, entry)| {
                    let target = ModelAlias {
                        group: entry.group().to_owned(),
                        hidden: entry.hidden(),
                    };
                    (alias.clone(), target)
                })
                .collect(),
            wildcards: {
                let mut all: Vec<Wildcard> = models.iter().filter_map(|m| Wildcard::new(&m.name)).collect();
                // Stable: among equally specific ones, the first listed wins.
                all.sort_by_key(|w| std::cmp::Reverse(w.prefix.len() + w.suffix.len()));
                all
            },
            priced_per_request,
            deployment_tags,
            health_checks,
            tag_filtering: router.enable_tag_filtering,
            access_groups: models
                .iter()
                .filter(|m| !m.access_groups.is_empty())
                .map(|m| (m.name.clone(), m.access_groups.clone()))
                .collect(),
            embedder,
            learned: std::collections::BTreeMap::new(),
            pending_routers,
            started: Instant::now(),
            providers,
            server,
            loaded_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        })
    }

    /// Loads every learned router's artifact (a failure is returned, for
    /// start-up to fail) and starts watching them for new versions.
    pub async fn start_learned(&mut self) -> Result<(), LoadError> {
        self.start_learned_after(None).await
    }

    /// [`AppState::start_learned`] for a reloaded configuration: routers
    /// that did not change take over what `old`'s have loaded.
    pub(crate) async fn start_learned_after(&mut self, old: Option<&AppState>) -> Result<(), LoadError> {
        let Some(embedder) = self.embedder.clone() else {
            // No learned routers any more: those replaced stop polling.
            if let Some(old) = old {
                crate::learned::start_after(&[], &old.learned).await?;
            }
            return Ok(());
        };
        let groups: std::collections::HashSet<String> = self.routes.keys().cloned().collect();
        let mut routes = Vec::new();
        for (name, spec) in std::mem::take(&mut self.pending_routers) {
            let route = LearnedRoute::new(name.clone(), spec, groups.clone(), embedder.clone()).await;
            routes.push(route.clone());
            self.learned.insert(name, route);
        }
        match old {
            Some(old) => crate::learned::start_after(&routes, &old.learned).await,
            None => crate::learned::start(&routes).await,
        }
    }

    /// Opens the policy store: replays the local files, or connects to
    /// Redis (an unreachable Redis fails start-up).
    pub async fn start_policy(&mut self) -> Result<(), PolicyError> {
        if let Some(settings) = self.pending_policy.take() {
            self.policy = Policy::open(settings).await?;
        }
        Ok(())
    }

    /// Takes over what outlives a configuration from the state it replaces:
    /// keys, limits, budgets and spend, metrics, the request log, the listener
    /// and telemetry settings, the cache when its settings are unchanged, and
    /// the live statistics and circuit breaker of every deployment kept (same
    /// name, provider and upstream model).
    pub(crate) fn inherit(&mut self, old: &AppState, same_cache: bool) {
        self.started = old.started;
        self.carry_live(old);
        self.policy = old.policy.clone();
        self.pending_policy = None;
        self.default_max_tokens = old.default_max_tokens;
        self.record_end_users = old.record_end_users;
        self.track_tag_spend = old.track_tag_spend;
        self.metrics = old.metrics.clone();
        self.request_log = old.request_log.clone();
        self.alerts = old.alerts.clone();
        self.pass_through_client = old.pass_through_client.clone();
        self.telemetry = old.telemetry.clone();
        self.server = old.server.clone();
        self.cut = old.cut.clone();
        self.abandoned = old.abandoned.clone();
        self.request_slots = old.request_slots.clone();
        self.responses = old.responses.clone();
        if same_cache {
            self.cache = old.cache.clone();
        }
    }

    /// Shares the live statistics and breakers of the deployments `old`
    /// also has: requests still running on `old` after the swap (a
    /// half-open probe among them) report to what this state reads.
    pub(crate) fn carry_live(&mut self, old: &AppState) {
        for name in self.registry.model_names() {
            let (Ok(new_group), Ok(old_group)) = (self.registry.group(name), old.registry.group(name)) else {
                continue;
            };
            let upstream = |state: &AppState, id: DeploymentId| state.upstreams.get(id.0).copied();
            let mut taken = Vec::new();
            for d in new_group.deployments() {
                if let Some(before) = old_group.deployments().iter().find(|o| {
                    !taken.contains(&o.id.0)
                        && upstream(old, o.id).is_some()
                        && upstream(old, o.id) == upstream(self, d.id)
                }) {
                    taken.push(before.id.0);
                    self.stats.share(d.id, &old.stats, before.id);
                    self.cooldowns.share(d.id, &old.cooldowns, before.id);
                }
            }
        }
    }

    /// Starts the metrics' upkeep, opens the request log (a file or a Redis
    /// stream) and starts its writer.
    pub async fn start_telemetry(&mut self) -> Result<(), switchyard_telemetry::TelemetryError> {
        self.metrics.start_upkeep(std::time::Duration::from_secs(5));
        if let Some(settings) = &self.telemetry.request_log {
            self.request_log = Some(switchyard_telemetry::RequestLog::open(settings, self.metrics.clone()).await?);
        }
        Ok(())
    }

    /// Starts alert delivery (`telemetry.alerts`), once the policy's store
    /// is open: the policy's budget alerts and cooldowns go to the webhook.
    pub fn start_alerts(&mut self) {
        if let Some(settings) = &self.telemetry.alerts {
            self.alerts = Some(crate::alerts::Alerts::start(settings, &self.policy));
        }
    }

    /// Monotonic milliseconds since start-up, the clock of routing statistics.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The model group (or learned router) a requested name stands for: the
    /// group an alias names, the name itself when a group has it, else the
    /// most specific wildcard group it matches (else the name itself).
    pub fn group_name<'a>(&'a self, requested: &'a str) -> &'a str {
        if let Some(alias) = self.aliases.get(requested) {
            return alias.group.as_str();
        }
        if self.wildcards.is_empty() || self.routes.contains_key(requested) || self.learned.contains_key(requested) {
            return requested;
        }
        self.wildcards
            .iter()
            .find(|w| w.matches(requested).is_some())
            .map_or(requested, |w| w.group.as_str())
    }

    /// The prices `deployment` charges for a request for `requested`: its
    /// own, or for an unpriced wildcard deployment the built-in prices of
    /// the model it sends upstream (else of the name asked for).
    pub(crate) fn prices_for(&self, deployment: DeploymentId, requested: &str) -> Prices {
        if let Some(Some(pattern)) = self.priced_per_request.get(deployment.0)
            && let Some(part) = self.wildcard_part(requested)
        {
            let upstream = pattern.replacen('*', part, 1);
            return switchyard_policy::price::builtin(&upstream)
                .or_else(|| switchyard_policy::price::builtin(requested))
                .unwrap_or_default();
        }
        self.prices.get(deployment.0).copied().unwrap_or_default()
    }

    /// What a wildcard group's `*` matches in `requested`, when a wildcard
    /// group serves it.
    pub fn wildcard_part<'a>(&self, requested: &'a str) -> Option<&'a str> {
        if self.wildcards.is_empty() {
            return None;
        }
        let group = self.group_name(requested);
        self.wildcards
            .iter()
            .find(|w| w.group == group && w.group != requested)
            .and_then(|w| w.matches(requested))
    }

    /// Replaces the aliases among a request's `fallbacks` with their groups.
    pub(crate) fn resolve_fallbacks(&self, fallbacks: &mut Option<Vec<String>>) {
        if self.aliases.is_empty() {
            return;
        }
        for name in fallbacks.iter_mut().flatten() {
            if let Some(alias) = self.aliases.get(name.as_str()) {
                name.clone_from(&alias.group);
            }
        }
    }

    /// Whether `view` may call `requested`: the key and its team list the
    /// name itself or, for an alias, the group it stands for, or an access
    /// group of that group.
    pub(crate) fn allows(&self, view: &switchyard_policy::KeyView, requested: &str) -> bool {
        let group = self.group_name(requested);
        view.allows_any(
            [requested, group]
                .into_iter()
                .chain(self.access_groups.get(group).into_iter().flatten().map(String::as_str)),
        )
    }

    /// The models a key or team may call, as names of groups: its list with
    /// each access group replaced by its members and each alias joined by
    /// its group (these decide which fallbacks and learned-router
    /// candidates it may reach). `None`: every model.
    pub(crate) fn allowed_groups(&self, view: Option<&switchyard_policy::KeyView>) -> Option<Vec<String>> {
        // The key's, the team's and the user's lists are widened each on
        // its own, then intersected: they may name one model differently.
        let mut lists = self.allowed_lists(view)?.into_iter();
        let first = lists.next()?;
        let rest: Vec<Vec<String>> = lists.collect();
        Some(
            first
                .into_iter()
                .filter(|m| rest.iter().all(|other| other.contains(m)))
                .collect(),
        )
    }

    /// Each of the key's, its team's and its user's lists that limits the
    /// models, widened as [`AppState::allowed_groups`] widens them (`None`:
    /// none limits them). A learned router reads them one by one: a list
    /// that names only the router allows every candidate, one that names
    /// some candidates allows only those.
    pub(crate) fn allowed_lists(&self, view: Option<&switchyard_policy::KeyView>) -> Option<Vec<Vec<String>>> {
        let lists: Vec<Vec<String>> = view?
            .model_lists()
            .into_iter()
            .filter_map(|models| self.widened(models))
            .collect();
        (!lists.is_empty()).then_some(lists)
    }

    /// `models` with the group of each alias and the members of each access
    /// group added, sorted; `None` for an empty list (every model).
    fn widened(&self, models: &[String]) -> Option<Vec<String>> {
        if models.is_empty() {
            return None;
        }
        let mut names = models.to_vec();
        names.extend(
            models
                .iter()
                .filter_map(|n| self.aliases.get(n.as_str()).map(|a| a.group.clone())),
        );
        for (group, access) in &self.access_groups {
            if access.iter().any(|a| models.contains(a)) {
                names.push(group.clone());
            }
        }
        names.sort_unstable();
        names.dedup();
        Some(names)
    }

    /// Sets what `view` may call on a request's options: the models every
    /// list allows (fallbacks) and each list (a learned router's candidates).
    pub(crate) fn restrict(
        &self,
        options: &mut crate::dispatch::RequestOptions,
        view: Option<&switchyard_policy::KeyView>,
    ) {
        options.allowed_models = self.allowed_groups(view);
        options.allowed_lists = self.allowed_lists(view);
    }

    /// The client of a deployment chosen from this state's registry.
    pub fn provider(&self, id: DeploymentId) -> Option<&ProviderClient> {
        self.providers.get(id.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::config::{Overrides, Source, load};

    /// A group's reservation of a long prompt is the most one of its
    /// models costs for it, not one model's long-context multiplier on
    /// another's prices.
    #[test]
    fn long_context_prices_merge_to_the_dearest_model() {
        let builtin = |m: &str| switchyard_policy::price::builtin(m).unwrap();
        let (opus, haiku, sonnet) = (
            builtin("claude-opus-4-1"),
            builtin("claude-haiku-5-5"),
            builtin("claude-sonnet-4-5"),
        );
        let merged = max_prices(opus, haiku);
        assert_eq!(merged.ceiling(400_000, 1_000), opus.ceiling(400_000, 1_000));
        let merged = max_prices(haiku, sonnet);
        assert_eq!(merged.ceiling(400_000, 1_000), sonnet.ceiling(400_000, 1_000));
        // Between the two thresholds the merged prices stay above both
        // (from the lower threshold on, the higher long-context prices).
        let between = merged.ceiling(150_000, 0);
        assert!(between >= sonnet.ceiling(150_000, 0) && between >= haiku.ceiling(150_000, 0));
    }

    fn models(yaml: &str) -> Vec<ModelSpec> {
        let config = load(Source::Text(yaml), &Overrides::default()).unwrap();
        config
            .validate(&std::collections::BTreeMap::<String, String>::new())
            .unwrap()
    }

    #[test]
    fn a_ceiling_covers_every_group_a_request_may_reach() {
        // a falls back to b, which sends prompts too long for it to c.
        let specs = models(
            "model_list:\n  - model_name: a\n    fallbacks: [b]\n    deployments:\n      - {provider: mock, model: a, output_cost_per_token: 0.001}\n  - model_name: b\n    context_window_fallbacks: [c]\n    deployments:\n      - {provider: mock, model: b, output_cost_per_token: 0.002}\n  - model_name: c\n    deployments:\n      - {provider: mock, model: c, output_cost_per_token: 0.05}\n  - model_name: d\n    deployments:\n      - {provider: mock, model: d, output_cost_per_token: 0.9}\n",
        );
        let ceilings = price_ceilings(&specs);
        assert_eq!(ceilings["a"].prices.output, 0.05);
        assert_eq!(ceilings["b"].prices.output, 0.05);
        assert_eq!(ceilings["c"].prices.output, 0.05);
        assert_eq!(ceilings["d"].prices.output, 0.9);
    }

    /// Cached answers are keyed by what shapes them: a reload that changes
    /// a group's `default_max_tokens`, or which group a router's candidate
    /// maps to, starts new entries; a new key or price keeps them.
    #[test]
    fn cache_generations_change_with_what_shapes_an_answer() {
        let yaml = |deployment: &str, candidate: &str| {
            format!(
                "model_list:\n  - model_name: a\n    deployments:\n      - {{provider: anthropic, model: claude-3-5-haiku, api_key: k, {deployment}}}\n  - model_name: b\n    deployments:\n      - {{provider: mock, model: m}}\n  - model_name: auto\n    router:\n      artifact: /nowhere\n      candidates: {{cheap: {candidate}}}\n"
            )
        };
        let base = cache_generations(&models(&yaml("default_max_tokens: 256", "a")));
        let same = cache_generations(&models(&yaml(
            "default_max_tokens: 256, input_cost_per_token: 0.5",
            "a",
        )));
        assert_eq!(base, same);
        let longer = cache_generations(&models(&yaml("default_max_tokens: 4096", "a")));
        assert_ne!(base["a"], longer["a"]);
        assert_eq!(base["b"], longer["b"]);
        let remapped = cache_generations(&models(&yaml("default_max_tokens: 256", "b")));
        assert_eq!(base["a"], remapped["a"]);
        assert_ne!(base["auto"], remapped["auto"]);
        // A beta header shapes answers; a credential header's value does not.
        let header = |headers: &str| {
            cache_generations(&models(&yaml(
                &format!("default_max_tokens: 256, headers: {{{headers}}}"),
                "a",
            )))["a"]
                .clone()
        };
        assert_ne!(header("anthropic-beta: a"), header("anthropic-beta: b"));
        assert_ne!(header("anthropic-beta: a"), base["a"]);
        assert_eq!(header("x-proxy-key: one"), header("x-proxy-key: two"));
    }
}
