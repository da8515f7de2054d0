//! Reading a LiteLLM proxy `config.yaml` as it is.
//!
//! A file is LiteLLM's when a `model_list` entry has `litellm_params`, or it
//! has a `litellm_settings` or `general_settings` section. It is translated
//! into Switchyard's own schema before validation; every key is either
//! mapped, ignored with one warning (it changes nothing about which upstream
//! answers, what is allowed or what is charged), or refused with an error
//! naming it (Switchyard cannot do what it asks, and ignoring it would change
//! behaviour).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::config::{ConfigIssue, issue};

/// The outcome of a translation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translation {
    /// The configuration in Switchyard's schema.
    pub config: Value,
    /// `(LiteLLM key, what it became)`: model entries in file order, keys
    /// within a section in alphabetical order.
    pub mapped: Vec<(String, String)>,
    /// Keys ignored, each with the reason.
    pub warnings: Vec<String>,
    /// `environment_variables`: read before the process environment where
    /// the configuration names a variable.
    pub environment: BTreeMap<String, String>,
    /// Where each deployment stood in the file: `model_list[g].deployments[d]`
    /// of the translation → `model_list[i].litellm_params` of the file, so
    /// that a problem found later names the entry the user wrote.
    pub origins: BTreeMap<String, String>,
}

/// A Redis URL from LiteLLM's separate `host`, `port`, `password` and `db`
/// settings. A part given as `os.environ/NAME` becomes a
/// `{os.environ/NAME}` placeholder, resolved (and percent-encoded) at
/// validation; a literal part is percent-encoded here.
fn redis_url(parts: &BTreeMap<&str, Value>) -> String {
    let part = |name: &str| {
        parts.get(name).map(|v| {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            if text.starts_with("os.environ/") {
                format!("{{{text}}}")
            } else {
                crate::config::percent_encode(&text)
            }
        })
    };
    let host = part("host").unwrap_or_else(|| "localhost".into());
    let port = part("port").unwrap_or_else(|| "6379".into());
    let db = part("db").map(|d| format!("/{d}")).unwrap_or_default();
    match part("password") {
        Some(password) => format!("redis://:{password}@{host}:{port}{db}"),
        None => format!("redis://{host}:{port}{db}"),
    }
}

/// Whether a parsed configuration file is in LiteLLM's format.
pub fn is_litellm(doc: &Value) -> bool {
    let entries = doc.get("model_list").and_then(Value::as_array);
    entries.is_some_and(|list| list.iter().any(|m| m.get("litellm_params").is_some()))
        || doc.get("litellm_settings").is_some()
        || doc.get("general_settings").is_some()
}

/// Keys that change nothing a request gets: ignored with a warning.
const IGNORED_LITELLM_SETTINGS: &[(&str, &str)] = &[
    ("set_verbose", "logging is set with telemetry.log_level"),
    ("json_logs", "logs are JSON lines by default (telemetry.log_format)"),
    ("service_callback", "use telemetry.otlp and /metrics"),
    (
        "turn_off_message_logging",
        "prompts are never logged unless telemetry.log_payloads is set (with a langfuse callback, \
         true leaves them out of the spans too)",
    ),
    ("redact_user_api_key_info", "keys never reach logs or traces"),
    ("telemetry", "Switchyard sends no usage telemetry"),
];

const IGNORED_GENERAL_SETTINGS: &[(&str, &str)] = &[
    ("database_url", "keys and spend live in policy.data_dir or policy.redis"),
    (
        "database_connection_pool_limit",
        "Switchyard has no database (policy.data_dir or policy.redis)",
    ),
    (
        "database_connection_timeout",
        "Switchyard has no database (policy.data_dir or policy.redis)",
    ),
    (
        "disable_error_logs",
        "failed requests are logged without their payloads (telemetry.log_payloads)",
    ),
    (
        "store_model_in_db",
        "models come from the configuration file (reloadable)",
    ),
    ("proxy_batch_write_at", "spend is written as each request is charged"),
    ("disable_spend_logs", "spend records are always kept (/spend/logs)"),
    (
        "background_health_checks",
        "deployments are watched by their circuit breakers",
    ),
    (
        "health_check_interval",
        "deployments are watched by their circuit breakers",
    ),
    ("ui_access_mode", "Switchyard has no admin UI"),
    (
        "spend_report_frequency",
        "spend reports are not sent: /spend/logs, /spend/keys and /spend/teams hold the figures",
    ),
    (
        "alerting_args",
        "alerts are throttled by Switchyard's own rules (telemetry.alerts)",
    ),
    (
        "alert_to_webhook_url",
        "every alert goes to the one webhook of telemetry.alerts",
    ),
];

const IGNORED_ROUTER_SETTINGS: &[(&str, &str)] = &[
    (
        "enable_pre_call_checks",
        "context-window fallbacks are taken when an upstream rejects a long prompt",
    ),
    (
        "retry_after",
        "backoff is router_settings.retry_backoff_ms, and Retry-After is honoured",
    ),
];

/// Where a translated deployment carries its `model_info.access_groups`
/// until they are moved to its group.
const ACCESS_GROUPS: &str = "__access_groups";

const IGNORED_PARAMS: &[(&str, &str)] = &[(
    "max_retries",
    "retries are per model group (router_settings.num_retries)",
)];

fn secs_to_ms(v: &Value) -> Option<u64> {
    v.as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| (s * 1000.0).round() as u64)
}

struct Translator {
    out: Translation,
    issues: Vec<ConfigIssue>,
}

/// LiteLLM's callbacks that only log (they see requests and answers but
/// never change or stop one): warned about when listed in `callbacks`, as
/// the gateway's own telemetry carries what they would receive.
const LOGGING_CALLBACKS: &[&str] = &[
    "agentops",
    "argilla",
    "arize",
    "arize_phoenix",
    "athina",
    "azure_storage",
    "braintrust",
    "datadog",
    "datadog_llm_observability",
    "deepeval",
    "dynamodb",
    "galileo",
    "gcs_bucket",
    "gcs_pubsub",
    "generic",
    "generic_api",
    "greenscale",
    "helicone",
    "humanloop",
    "lago",
    "langsmith",
    "langtrace",
    "literalai",
    "logfire",
    "lunary",
    "mlflow",
    "openmeter",
    "opik",
    "pagerduty",
    "posthog",
    "prometheus",
    "resend_email",
    "s3",
    "s3_v2",
    "sentry",
    "slack",
    "smtp_email",
    "sendgrid_email",
    "sqs",
    "supabase",
    "traceloop",
    "wandb",
    "weave",
];

/// Where a LiteLLM provider prefix is served.
#[derive(Debug, Clone, Copy)]
enum Served {
    /// At the file's `api_base` (or the provider's own address).
    AsGiven,
    /// A local server: this address by default, and `/v1` is added to an
    /// `api_base` given without it, as LiteLLM does for Ollama.
    Local {
        /// The server's OpenAI-compatible base URL by default.
        base: &'static str,
        /// The environment variable LiteLLM reads the server's address
        /// from, without `/v1` (Ollama's `OLLAMA_API_BASE`): read first,
        /// and `/v1` is added to it, as to an address given from the
        /// environment.
        var: Option<&'static str>,
    },
    /// A server of the user's own (vLLM, LM Studio): at `api_base`, else at
    /// the address in this environment variable, as LiteLLM reads it; never
    /// OpenAI's (with an OpenAI key).
    Server(&'static str),
    /// A hosted OpenAI-compatible service: its address unless `api_base`
    /// says otherwise (taken as it is), its key from `key` when the file
    /// gives none.
    Hosted {
        /// The service's OpenAI-compatible base URL.
        base: &'static str,
        /// The environment variable LiteLLM reads the key from.
        key: &'static str,
    },
}

/// OpenAI-compatible services LiteLLM names by prefix: the prefix, the
/// service's OpenAI-compatible address (LiteLLM's default) and the variable
/// LiteLLM reads its key from when `api_key` is absent (the first it tries).
const HOSTED_OPENAI_COMPATIBLE: &[(&str, &str, &str)] = &[
    ("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    ("mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    ("codestral", "https://codestral.mistral.ai/v1", "CODESTRAL_API_KEY"),
    ("deepseek", "https://api.deepseek.com/beta", "DEEPSEEK_API_KEY"),
    ("together_ai", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    (
        "fireworks_ai",
        "https://api.fireworks.ai/inference/v1",
        "FIREWORKS_API_KEY",
    ),
    ("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    ("xai", "https://api.x.ai/v1", "XAI_API_KEY"),
    ("perplexity", "https://api.perplexity.ai", "PERPLEXITYAI_API_KEY"),
    ("cerebras", "https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"),
    ("deepinfra", "https://api.deepinfra.com/v1/openai", "DEEPINFRA_API_KEY"),
    (
        "nvidia_nim",
        "https://integrate.api.nvidia.com/v1",
        "NVIDIA_NIM_API_KEY",
    ),
    ("sambanova", "https://api.sambanova.ai/v1", "SAMBANOVA_API_KEY"),
    ("nebius", "https://api.studio.nebius.ai/v1", "NEBIUS_API_KEY"),
    (
        "gemini",
        "https://generativelanguage.googleapis.com/v1beta/openai",
        "GEMINI_API_KEY",
    ),
];

/// The prices a deployment takes, from `litellm_params` or `model_info`
/// (`input_cost_per_second` aside: it prices transcription only).
const PRICE_KEYS: &[&str] = &[
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "cache_creation_input_token_cost_above_1hr",
    "output_cost_per_image",
    "input_cost_per_character",
    "input_cost_per_query",
    "input_cost_per_image_token",
];

/// Whether a LiteLLM model entry transcribes audio: by its upstream model's
/// name (`whisper-1`, `gpt-4o-transcribe`), or by its `model_info.mode`
/// (an Azure deployment named as its owner chose).
fn transcribes(upstream: &str, entry: &Value) -> bool {
    upstream.contains("whisper")
        || upstream.contains("transcribe")
        || entry.pointer("/model_info/mode").and_then(Value::as_str) == Some("audio_transcription")
}

/// Whether a deployment's `api_base` is OpenAI's own API, which LiteLLM
/// calls with `OPENAI_API_KEY` as it does without one.
fn official_openai(d: &serde_json::Map<String, Value>) -> bool {
    d.get("api_base")
        .and_then(Value::as_str)
        .and_then(|b| reqwest::Url::parse(b).ok())
        .is_some_and(|u| u.host_str().is_some_and(|h| h.eq_ignore_ascii_case("api.openai.com")))
}

/// The provider of a model named without one, as LiteLLM finds it.
fn unprefixed_provider(model: &str, has_base: bool) -> Option<&'static str> {
    const OPENAI: &[&str] = &[
        "gpt-",
        "chatgpt-",
        "o1",
        "o3",
        "o4",
        "text-embedding-",
        "text-moderation",
        "omni-moderation",
        "davinci",
        "babbage",
        "ft:gpt",
        "whisper-",
        "tts-",
        "dall-e-",
    ];
    const BEDROCK: &[&str] = &[
        "anthropic.",
        "amazon.",
        "meta.",
        "mistral.",
        "cohere.",
        "ai21.",
        "us.",
        "eu.",
        "apac.",
        "global.",
    ];
    if model.starts_with("claude") {
        Some("anthropic")
    } else if BEDROCK.iter().any(|p| model.starts_with(p)) {
        Some("bedrock")
    } else if has_base || OPENAI.iter().any(|p| model.starts_with(p)) {
        Some("openai")
    } else {
        None
    }
}

impl Translator {
    fn map(&mut self, from: impl Into<String>, to: impl Into<String>) {
        self.out.mapped.push((from.into(), to.into()));
    }

    fn warn(&mut self, key: &str, why: &str) {
        self.out.warnings.push(format!("`{key}` is not used: {why}"));
    }

    fn refuse(&mut self, key: &str, why: &str) {
        self.issues.push(issue(key, why));
    }

    /// `litellm_params.model` (`provider/name`) → provider, upstream model, where it is served.
    /// A name without a provider is placed as LiteLLM places it: Claude
    /// models on Anthropic, Bedrock model ids on Bedrock, OpenAI's models
    /// (or any model with an `api_base`) on OpenAI's API; another is refused
    /// rather than sent, with its key, to OpenAI.
    fn provider(&mut self, path: &str, model: &str, has_base: bool) -> Option<(&'static str, String, Served)> {
        let (prefix, name) = match model.split_once('/') {
            Some((p, n)) => (p, n),
            None => match unprefixed_provider(model, has_base) {
                Some(provider) => (provider, model),
                None => {
                    self.refuse(
                        &format!("{path}.model"),
                        &format!(
                            "`{model}` names no provider and is not a model Switchyard knows the provider of: \
                             write it as `provider/{model}` (openai/, anthropic/, bedrock/, azure/, …)"
                        ),
                    );
                    return None;
                }
            },
        };
        if prefix == "text-completion-openai" {
            // LiteLLM sends every call of this provider to `/v1/completions`.
            self.warn(
                &format!("{path}.model"),
                "`text-completion-openai/` is an `openai` deployment here: `/v1/completions` requests reach the \
                 model as sent, while chat requests go to the upstream's `/chat/completions` (LiteLLM turns them \
                 into a prompt), which a completions-only model refuses",
            );
        }
        let found = match prefix {
            "openai" | "text-completion-openai" => ("openai", Served::AsGiven),
            // Servers of one's own: never OpenAI's address, with its key.
            "custom_openai" | "openai_like" if !has_base => {
                self.refuse(
                    &format!("{path}.api_base"),
                    &format!("`{prefix}/` names a server of your own: its `api_base` is required"),
                );
                return None;
            }
            "custom_openai" | "openai_like" => ("openai", Served::Server("")),
            "hosted_vllm" | "vllm" => ("openai", Served::Server("HOSTED_VLLM_API_BASE")),
            "lm_studio" => ("openai", Served::Server("LM_STUDIO_API_BASE")),
            "llamafile" => (
                "openai",
                Served::Local {
                    base: "http://127.0.0.1:8080/v1",
                    var: None,
                },
            ),
            "ollama" | "ollama_chat" => (
                "openai",
                Served::Local {
                    base: "http://localhost:11434/v1",
                    var: Some("OLLAMA_API_BASE"),
                },
            ),
            "azure" => ("azure", Served::AsGiven),
            "anthropic" => ("anthropic", Served::AsGiven),
            "bedrock" | "bedrock_converse" => ("bedrock", Served::AsGiven),
            other => match HOSTED_OPENAI_COMPATIBLE.iter().find(|(p, _, _)| *p == other) {
                Some(&(_, base, key)) => ("openai", Served::Hosted { base, key }),
                None => {
                    let hosted: Vec<&str> = HOSTED_OPENAI_COMPATIBLE.iter().map(|(p, _, _)| *p).collect();
                    self.refuse(
                        &format!("{path}.model"),
                        &format!(
                            "provider `{other}` is not supported (supported: openai, azure, anthropic, bedrock, \
                             hosted_vllm, ollama, {}, and OpenAI-compatible servers through openai/ with api_base)",
                            hosted.join(", ")
                        ),
                    );
                    return None;
                }
            },
        };
        // `bedrock/converse/<id>` and `bedrock/invoke/<id>` name the API; Switchyard picks it.
        let name = name
            .strip_prefix("converse/")
            .or_else(|| name.strip_prefix("invoke/"))
            .unwrap_or(name);
        Some((found.0, name.to_owned(), found.1))
    }

    fn deployment(&mut self, i: usize, entry: &Value) -> Option<(String, Value)> {
        let path = format!("model_list[{i}]");
        let Some(name) = entry.get("model_name").and_then(Value::as_str) else {
            self.refuse(&format!("{path}.model_name"), "a model name is required");
            return None;
        };
        let params = entry
            .get("litellm_params")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let ppath = format!("{path}.litellm_params");
        let Some(model) = params.get("model").and_then(Value::as_str) else {
            self.refuse(&format!("{ppath}.model"), "`provider/model` is required");
            return None;
        };
        // LiteLLM guesses the provider of each model a bare `*` serves;
        // here a wildcard deployment names its provider (`openai/*`).
        if model.trim() == "*" {
            self.refuse(
                &format!("{ppath}.model"),
                "a bare `*` leaves the provider to guess per request: name it (`openai/*`, `anthropic/*`)",
            );
            return None;
        }
        let has_base = params.contains_key("api_base") || params.contains_key("base_url");
        let (provider, upstream, served) = self.provider(&ppath, model, has_base)?;
        let mut d = Map::new();
        d.insert("provider".into(), json!(provider));
        d.insert("model".into(), json!(upstream));
        match served {
            Served::Local { base, var: Some(var) } => {
                let root = base.strip_suffix("/v1").unwrap_or(base);
                d.insert("api_base".into(), json!(format!("{{os.environ/{var}:-{root}}}/v1")));
            }
            Served::Local { base, .. } | Served::Hosted { base, .. } => {
                d.insert("api_base".into(), json!(base));
            }
            _ => {}
        }
        if let Served::Server(var) = served
            && !has_base
        {
            d.insert("api_base".into(), json!(format!("os.environ/{var}")));
            self.map(
                format!("{ppath}.api_base (absent)"),
                format!("model_list[{name}].deployments[].api_base: os.environ/{var}"),
            );
        }
        let mut timeouts = Map::new();
        for (key, value) in &params {
            let here = format!("{ppath}.{key}");
            let target = match key.as_str() {
                "model" | "organization" => continue,
                "api_base" | "base_url" => {
                    let mut base = value.as_str().unwrap_or_default().trim_end_matches('/').to_owned();
                    // LiteLLM adds Anthropic's path only when missing, so
                    // files often hold the whole endpoint.
                    if provider == "anthropic"
                        && let Some(root) = base.strip_suffix("/v1/messages")
                    {
                        base = root.to_owned();
                    }
                    // An address read from the environment is taken as it
                    // is, except Ollama's, which LiteLLM reads without `/v1`.
                    if let Served::Local { var, .. } = served {
                        match base.strip_prefix("os.environ/") {
                            Some(name) if var.is_some() => base = format!("{{os.environ/{name}}}/v1"),
                            Some(_) => {}
                            None if !base.ends_with("/v1") => base.push_str("/v1"),
                            None => {}
                        }
                    }
                    d.insert("api_base".into(), json!(base));
                    "api_base"
                }
                "api_key"
                | "api_version"
                | "rpm"
                | "tpm"
                | "weight"
                | "input_cost_per_token"
                | "output_cost_per_token"
                | "aws_access_key_id"
                | "aws_secret_access_key"
                | "aws_session_token"
                | "cache_read_input_token_cost"
                | "cache_creation_input_token_cost"
                | "cache_creation_input_token_cost_above_1hr"
                | "output_cost_per_image"
                | "input_cost_per_character"
                | "input_cost_per_query"
                | "input_cost_per_image_token"
                | "tags" => {
                    d.insert(key.clone(), value.clone());
                    key.as_str()
                }
                // LiteLLM also bills chat deployments by the second
                // (SageMaker, hosted endpoints); here it prices audio
                // transcribed, and only a transcription model takes it.
                "input_cost_per_second" if transcribes(&upstream, entry) => {
                    d.insert(key.clone(), value.clone());
                    key.as_str()
                }
                "input_cost_per_second" => {
                    self.warn(
                        &here,
                        "per-second billing of a model's run time is not supported: set input_cost_per_token and output_cost_per_token",
                    );
                    continue;
                }
                "aws_region_name" => {
                    d.insert("aws_region".into(), value.clone());
                    "aws_region"
                }
                // Bedrock's application inference profile or provisioned ARN.
                "model_id" => {
                    d.insert("aws_model_id".into(), value.clone());
                    "aws_model_id"
                }
                "timeout" => match secs_to_ms(value) {
                    Some(ms) => {
                        timeouts.insert("total_ms".into(), json!(ms));
                        "timeouts.total_ms"
                    }
                    None => {
                        self.refuse(&here, "must be a number of seconds");
                        continue;
                    }
                },
                // LiteLLM's is a wait for each read of a stream: its start
                // and each gap after.
                "stream_timeout" => match secs_to_ms(value) {
                    Some(ms) => {
                        timeouts.insert("first_byte_ms".into(), json!(ms));
                        timeouts.insert("idle_ms".into(), json!(ms));
                        "timeouts.first_byte_ms and timeouts.idle_ms"
                    }
                    None => {
                        self.refuse(&here, "must be a number of seconds");
                        continue;
                    }
                },
                "extra_headers" | "headers" => {
                    d.insert("headers".into(), value.clone());
                    "headers"
                }
                "drop_params" if matches!(provider, "anthropic" | "bedrock") => {
                    let Some(drop) = value.as_bool() else {
                        self.refuse(&here, "must be true or false");
                        continue;
                    };
                    d.insert("drop_params".into(), json!(drop));
                    "drop_params"
                }
                "drop_params" => {
                    self.warn(&here, "parameters go to this provider as sent (it takes OpenAI's)");
                    continue;
                }
                other => {
                    if let Some((_, why)) = IGNORED_PARAMS.iter().find(|(k, _)| *k == other) {
                        self.warn(&here, why);
                    } else {
                        self.refuse(
                            &here,
                            "is not supported; it would change what the upstream is sent, so it is refused rather than dropped",
                        );
                    }
                    continue;
                }
            };
            self.map(here, format!("model_list[{name}].deployments[].{target}"));
        }
        // LiteLLM reads a missing key (and Azure's address and version) from
        // its provider's environment variable; sent without one, every
        // request would fail upstream. A local server (an `api_base` on
        // openai/) needs none.
        let hosted_key;
        let from_env: &[(&str, &str)] = match (provider, served) {
            (_, Served::Hosted { key, .. }) => {
                hosted_key = [("api_key", key)];
                &hosted_key
            }
            ("openai", Served::AsGiven) if !has_base || official_openai(&d) => &[("api_key", "OPENAI_API_KEY")],
            ("anthropic", _) => &[("api_key", "ANTHROPIC_API_KEY")],
            ("azure", _) => &[
                ("api_key", "AZURE_API_KEY"),
                ("api_base", "AZURE_API_BASE"),
                ("api_version", "AZURE_API_VERSION"),
            ],
            _ => &[],
        };
        for (field, var) in from_env {
            if !d.contains_key(*field) {
                d.insert((*field).into(), json!(format!("os.environ/{var}")));
                self.map(
                    format!("{ppath}.{field} (absent)"),
                    format!("model_list[{name}].deployments[].{field}: os.environ/{var}"),
                );
            }
        }
        // LiteLLM bounds a stream by `timeout` too when it has no
        // `stream_timeout`: its start, and each gap after, waits as long as
        // a whole answer may.
        if let Some(total) = timeouts.get("total_ms").cloned() {
            timeouts.entry("first_byte_ms").or_insert(total.clone());
            timeouts.entry("idle_ms").or_insert(total);
        }
        // LiteLLM's `organization` picks the OpenAI organization billed.
        if let Some(org) = params.get("organization").and_then(Value::as_str) {
            let headers = d.entry("headers").or_insert_with(|| json!({}));
            if let Some(headers) = headers.as_object_mut() {
                headers.insert("OpenAI-Organization".into(), json!(org));
            }
            self.map(format!("{ppath}.organization"), "headers.OpenAI-Organization");
        }
        if !timeouts.is_empty() {
            // `total_ms` is left out when the deployment set no `timeout`:
            // the router's timeout fills it (below), else the default.
            let defaults = crate::config::TimeoutsEntry::default();
            timeouts.entry("connect_ms").or_insert(json!(defaults.connect_ms));
            timeouts.entry("first_byte_ms").or_insert(json!(defaults.first_byte_ms));
            d.insert("timeouts".into(), Value::Object(timeouts));
        }
        if let Some(info) = entry.get("model_info").and_then(Value::as_object) {
            for (key, value) in info {
                let here = format!("{path}.model_info.{key}");
                if PRICE_KEYS.contains(&key.as_str()) {
                    // LiteLLM registers `model_info` as the model's cost data;
                    // the deployment's own prices win.
                    d.entry(key.clone()).or_insert_with(|| value.clone());
                    self.map(here, format!("model_list[{name}].deployments[].{key}"));
                } else if key == "base_model" {
                    let base = value.as_str().unwrap_or_default();
                    if switchyard_policy::price::builtin(base).is_some() {
                        d.insert("base_model".into(), json!(base));
                        self.map(here, format!("model_list[{name}].deployments[].base_model"));
                    } else {
                        self.warn(
                            &here,
                            "the model has no built-in price here: set input_cost_per_token and output_cost_per_token",
                        );
                    }
                } else if matches!(key.as_str(), "max_output_tokens" | "max_tokens") {
                    // The most the model writes: requests asking for more
                    // are lowered to it (OpenAI-format deployments).
                    match value.as_u64().filter(|n| *n > 0).and_then(|n| u32::try_from(n).ok()) {
                        Some(n) if matches!(d.get("provider").and_then(Value::as_str), Some("openai" | "azure")) => {
                            // `max_output_tokens` says it; LiteLLM's legacy
                            // `max_tokens` only stands in for it.
                            if key == "max_output_tokens" {
                                d.insert("max_output_tokens".into(), json!(n));
                            } else {
                                d.entry("max_output_tokens").or_insert(json!(n));
                            }
                            self.map(here, format!("model_list[{name}].deployments[].max_output_tokens"));
                        }
                        Some(_) => self.warn(&here, "used by openai and azure deployments only"),
                        None => self.warn(&here, "not a positive number of tokens"),
                    }
                } else if key == "mode" {
                    // What LiteLLM's health check sends the model.
                    let check = match value.as_str().unwrap_or_default() {
                        "chat" | "completion" | "responses" => "chat",
                        mode @ ("embedding"
                        | "image_generation"
                        | "moderation"
                        | "audio_speech"
                        | "audio_transcription"
                        | "rerank") => mode,
                        _ => "none",
                    };
                    d.insert("health_check".into(), json!(check));
                    self.map(here, format!("model_list[{name}].deployments[].health_check: {check}"));
                } else if key == "access_groups" {
                    match value.as_array().filter(|l| l.iter().all(Value::is_string)) {
                        Some(_) => {
                            // Moved to the group by `translate`.
                            d.insert(ACCESS_GROUPS.into(), value.clone());
                            self.map(here, format!("model_list[{name}].access_groups"));
                        }
                        None => self.refuse(&here, "must be a list of names"),
                    }
                } else {
                    self.warn(&here, "model metadata is not used");
                }
            }
        }
        for key in entry
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if !matches!(key.as_str(), "model_name" | "litellm_params" | "model_info") {
                self.refuse(
                    &format!("{path}.{key}"),
                    "is not a LiteLLM model_list key Switchyard knows",
                );
            }
        }
        Some((name.to_owned(), Value::Object(d)))
    }

    /// `[{group: [fallback, …]}, …]` → per-group lists.
    fn fallbacks(&mut self, key: &str, value: &Value, into: &mut BTreeMap<String, Map<String, Value>>, field: &str) {
        let Some(list) = value.as_array() else {
            self.refuse(key, "must be a list of {model: [fallbacks]} maps");
            return;
        };
        for (i, item) in list.iter().enumerate() {
            let Some(map) = item.as_object() else {
                self.refuse(&format!("{key}[{i}]"), "must be a {model: [fallbacks]} map");
                continue;
            };
            for (group, targets) in map {
                match into.get_mut(group) {
                    Some(entry) => {
                        entry.insert(field.into(), targets.clone());
                        self.map(format!("{key}[{i}].{group}"), format!("model_list[{group}].{field}"));
                    }
                    None => self.refuse(&format!("{key}[{i}].{group}"), "names no model in model_list"),
                }
            }
        }
    }
}

fn doc_cache_namespace(doc: &Value) -> Option<String> {
    doc.pointer("/litellm_settings/cache_params/namespace")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn cache_redis_prefix(namespace: &Option<String>) -> Option<String> {
    namespace.as_ref().map(|n| format!("{n}:"))
}

/// Translates a parsed LiteLLM configuration; every problem is reported at once.
pub fn translate(doc: &Value) -> Result<Translation, Vec<ConfigIssue>> {
    let mut t = Translator {
        out: Translation::default(),
        issues: Vec::new(),
    };
    let mut groups: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    // (group, index in the group, index in the file) of each deployment.
    let mut placed: Vec<(String, usize, usize)> = Vec::new();
    for (i, entry) in doc
        .get("model_list")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some((name, mut deployment)) = t.deployment(i, entry) {
            let group = groups.entry(name.clone()).or_insert_with(|| {
                order.push(name.clone());
                let mut m = Map::new();
                m.insert("model_name".into(), json!(name));
                m.insert("deployments".into(), json!([]));
                m
            });
            // A group belongs to the access groups of any of its deployments.
            if let Some(Value::Array(access)) = deployment.as_object_mut().and_then(|d| d.remove(ACCESS_GROUPS))
                && let Value::Array(all) = group.entry("access_groups").or_insert_with(|| json!([]))
            {
                for name in access {
                    if !all.contains(&name) {
                        all.push(name);
                    }
                }
            }
            if let Some(Value::Array(list)) = group.get_mut("deployments") {
                placed.push((name.clone(), list.len(), i));
                list.push(deployment);
            }
        }
    }
    for (name, d, i) in placed {
        if let Some(g) = order.iter().position(|n| *n == name) {
            t.out.origins.insert(
                format!("model_list[{g}].deployments[{d}]"),
                format!("model_list[{i}].litellm_params"),
            );
        }
    }
    // LiteLLM's shuffle weighs deployments by `weight`, else by `rpm`, else
    // by `tpm` (its load-balancing guide sets `rpm` for exactly that).
    for (name, group) in &mut groups {
        let Some(Value::Array(list)) = group.get_mut("deployments") else {
            continue;
        };
        if list.len() < 2 || list.iter().any(|d| d.get("weight").is_some()) {
            continue;
        }
        for by in ["rpm", "tpm"] {
            if list
                .iter()
                .all(|d| d.get(by).and_then(Value::as_f64).is_some_and(|v| v > 0.0))
            {
                for d in list.iter_mut() {
                    if let (Some(v), Some(map)) = (d.get(by).cloned(), d.as_object_mut()) {
                        map.insert("weight".into(), v);
                    }
                }
                t.map(
                    format!("model_list[{name}].litellm_params.{by}"),
                    format!("model_list[{name}].deployments[].weight (as LiteLLM's shuffle weighs)"),
                );
                break;
            }
        }
    }
    // LiteLLM's own defaults, which its files rely on when they say nothing:
    // a deployment cools down for 5 s once its failures exceed 3.
    let mut router = Map::new();
    // `router_settings.timeout` (else `litellm_settings.request_timeout`).
    let mut attempt_ms: Option<u64> = None;
    router.insert("allowed_fails".into(), json!(4));
    router.insert("cooldown_ms".into(), json!(5_000));
    let mut policy = Map::new();
    // Clients of a LiteLLM proxy read its response headers.
    let mut server = Map::from_iter([("litellm_headers".to_owned(), json!(true))]);
    let mut cache = Map::new();
    let mut redis_parts: BTreeMap<&str, Value> = BTreeMap::new();
    if let Some(settings) = doc.get("router_settings").and_then(Value::as_object) {
        for (key, value) in settings {
            let here = format!("router_settings.{key}");
            match key.as_str() {
                "routing_strategy" => {
                    let strategy = match value.as_str().unwrap_or_default() {
                        "simple-shuffle" => "simple-shuffle",
                        "least-busy" => "least-busy",
                        "latency-based-routing" => "latency-based",
                        "usage-based-routing" | "usage-based-routing-v2" => "usage-based",
                        "cost-based-routing" => "cost-based",
                        other => {
                            t.refuse(&here, &format!("strategy `{other}` has no Switchyard equivalent"));
                            continue;
                        }
                    };
                    router.insert("routing_strategy".into(), json!(strategy));
                    t.map(here, format!("router_settings.routing_strategy: {strategy}"));
                }
                "num_retries" => {
                    router.insert("num_retries".into(), value.clone());
                    t.map(here, "router_settings.num_retries");
                }
                // LiteLLM's timeout bounds each call to an upstream, not the
                // request with its retries and fallbacks.
                "timeout" => match secs_to_ms(value) {
                    Some(ms) => {
                        attempt_ms = Some(ms);
                        t.map(
                            here,
                            "model_list[*].deployments[].timeouts (per attempt, where a deployment sets none)",
                        );
                    }
                    None => t.refuse(&here, "must be a number of seconds"),
                },
                // LiteLLM cools a deployment down once its failures exceed
                // `allowed_fails`; Switchyard once they reach it.
                "allowed_fails" => match value.as_u64().and_then(|n| n.checked_add(1)) {
                    Some(n) => {
                        router.insert("allowed_fails".into(), json!(n));
                        t.map(here, "router_settings.allowed_fails (+1)");
                    }
                    None => t.refuse(&here, "must be a whole number"),
                },
                "cooldown_time" => match secs_to_ms(value) {
                    // LiteLLM's way to turn cooldowns off: a breaker that
                    // opens for a millisecond.
                    Some(0) => {
                        router.insert("cooldown_ms".into(), json!(1));
                        t.map(here, "router_settings.cooldown_ms: 1 (no cooldown)");
                    }
                    Some(ms) => {
                        router.insert("cooldown_ms".into(), json!(ms));
                        t.map(here, "router_settings.cooldown_ms");
                    }
                    None => t.refuse(&here, "must be a number of seconds"),
                },
                "fallbacks" => t.fallbacks(&here, value, &mut groups, "fallbacks"),
                "context_window_fallbacks" => t.fallbacks(&here, value, &mut groups, "context_window_fallbacks"),
                "content_policy_fallbacks" => t.fallbacks(&here, value, &mut groups, "content_policy_fallbacks"),
                "enable_tag_filtering" => match value.as_bool() {
                    Some(on) => {
                        router.insert("enable_tag_filtering".into(), json!(on));
                        t.map(here, "router_settings.enable_tag_filtering");
                    }
                    None => t.refuse(&here, "must be true or false"),
                },
                // Switchyard matches any of a request's tags, LiteLLM's default.
                "tag_filtering_match_any" => match value.as_bool() {
                    Some(true) => t.warn(&here, "a request's tags match a deployment carrying any of them"),
                    _ => t.refuse(&here, "only matching any of a request's tags is supported"),
                },
                // The same shape: `alias: group` or `alias: {model, hidden}`.
                "model_group_alias" => match value.as_object() {
                    Some(_) => {
                        router.insert("model_group_alias".into(), value.clone());
                        t.map(here, "router_settings.model_group_alias");
                    }
                    None => t.refuse(&here, "must be a map of alias to model_name"),
                },
                "redis_host" => drop(redis_parts.insert("host", value.clone())),
                "redis_port" => drop(redis_parts.insert("port", value.clone())),
                "redis_password" => drop(redis_parts.insert("password", value.clone())),
                "redis_url" => drop(redis_parts.insert("url", value.clone())),
                "redis_db" => drop(redis_parts.insert("db", value.clone())),
                other => match IGNORED_ROUTER_SETTINGS.iter().find(|(k, _)| *k == other) {
                    Some((_, why)) => t.warn(&here, why),
                    None => t.refuse(&here, "is not supported, and ignoring it would change routing"),
                },
            }
        }
    }
    if !redis_parts.is_empty() {
        let url = match redis_parts.get("url").and_then(Value::as_str) {
            Some(url) => url.to_owned(),
            None => redis_url(&redis_parts),
        };
        policy.insert("redis".into(), json!({"url": url}));
        t.map(
            "router_settings.redis_*",
            "policy.redis.url (shared rate limits, budgets and spend)",
        );
    }
    // Span export a callback asks for (`langfuse`, `otel`).
    let mut otlp: Option<Map<String, Value>> = None;
    let mut metrics_auth: Option<bool> = None;
    if let Some(settings) = doc.get("litellm_settings").and_then(Value::as_object) {
        let quiet = settings.get("turn_off_message_logging") == Some(&Value::Bool(true));
        for (key, value) in settings {
            let here = format!("litellm_settings.{key}");
            match key.as_str() {
                "success_callback" | "failure_callback" | "callbacks" => match value.as_array() {
                    Some(list) => {
                        for callback in list {
                            let name = callback.as_str().map_or_else(|| callback.to_string(), str::to_owned);
                            match name.as_str() {
                                // Langfuse takes OpenTelemetry spans at
                                // `/api/public/otel`, with its keys as basic auth.
                                "langfuse" | "langfuse_otel" => {
                                    let mut langfuse = Map::new();
                                    langfuse.insert(
                                        "endpoint".into(),
                                        json!("{os.environ/LANGFUSE_HOST:-https://cloud.langfuse.com}/api/public/otel"),
                                    );
                                    langfuse.insert("protocol".into(), json!("http/protobuf"));
                                    langfuse.insert(
                                        "basic_auth".into(),
                                        json!({"username": "os.environ/LANGFUSE_PUBLIC_KEY",
                                               "password": "os.environ/LANGFUSE_SECRET_KEY"}),
                                    );
                                    langfuse.insert("capture_content".into(), json!(!quiet));
                                    if otlp.as_ref().is_some_and(|o| o.contains_key("basic_auth")) {
                                        continue;
                                    }
                                    // Spans go to one exporter: Langfuse
                                    // takes the place of `otel` named before.
                                    if otlp.as_ref().is_some_and(Map::is_empty) {
                                        t.out.mapped.retain(|(key, _)| !key.ends_with(": otel"));
                                        t.warn(
                                            "litellm_settings: otel",
                                            "spans are exported to one place, and Langfuse, also named, takes them",
                                        );
                                    }
                                    otlp = Some(langfuse);
                                    t.map(
                                        format!("{here}: {name}"),
                                        "telemetry.otlp (Langfuse's OpenTelemetry endpoint at LANGFUSE_HOST, else Langfuse Cloud, \
                                         with LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY)",
                                    );
                                }
                                // The standard OTEL_EXPORTER_OTLP_* variables say where.
                                "otel" => match &otlp {
                                    Some(o) if o.contains_key("basic_auth") => t.warn(
                                        "litellm_settings: otel",
                                        "spans are exported to one place, and Langfuse, also named, takes them",
                                    ),
                                    _ => {
                                        otlp = Some(Map::new());
                                        t.map(
                                            format!("{here}: otel"),
                                            "telemetry.otlp (OTEL_EXPORTER_OTLP_* variables)",
                                        );
                                    }
                                },
                                // Logging sinks: what they would have received
                                // is in the gateway's own telemetry.
                                _ if key != "callbacks" || LOGGING_CALLBACKS.contains(&name.as_str()) => t.warn(
                                    &format!("{here}: {name}"),
                                    "not sent; use telemetry.otlp (langfuse and otel come over), /metrics and the request log",
                                ),
                                // A guardrail or hook (`presidio`,
                                // `detect_prompt_injection`, a custom handler)
                                // checks or changes requests: dropping it
                                // would let through what it stops.
                                _ => t.refuse(
                                    &format!("{here}: {name}"),
                                    "is not supported, and ignoring a callback that may check or change requests would change what is allowed",
                                ),
                            }
                        }
                    }
                    // An empty key (its entries commented out) names none.
                    None if value.is_null() => {}
                    // LiteLLM's string form names a custom handler.
                    None if key == "callbacks" => t.refuse(
                        &here,
                        "a custom callback handler is not supported, and ignoring one that may check or change requests would change what is allowed",
                    ),
                    None => t.warn(&here, "use telemetry.otlp, /metrics and the request log"),
                },
                // Parameters Anthropic and Bedrock cannot express are dropped
                // there; other providers take OpenAI's parameters as sent.
                "drop_params" => match value.as_bool() {
                    Some(drop) => {
                        for group in groups.values_mut() {
                            let Some(Value::Array(list)) = group.get_mut("deployments") else {
                                continue;
                            };
                            // As LiteLLM: a parameter is dropped when either
                            // the global or the deployment's setting says so.
                            for d in list.iter_mut().filter_map(Value::as_object_mut) {
                                if drop
                                    && matches!(
                                        d.get("provider").and_then(Value::as_str),
                                        Some("anthropic" | "bedrock")
                                    )
                                {
                                    d.insert("drop_params".into(), json!(true));
                                }
                            }
                        }
                        t.map(here, "model_list[*].deployments[].drop_params (anthropic and bedrock)");
                    }
                    None => t.refuse(&here, "must be true or false"),
                },
                // LiteLLM's budget of every end user, in total.
                "max_end_user_budget" => match value.as_f64() {
                    Some(usd) => {
                        policy.insert("end_user_budget".into(), json!({"max_budget": usd}));
                        t.map(here, "policy.end_user_budget.max_budget");
                    }
                    None => t.refuse(&here, "must be a number of USD"),
                },
                "require_auth_for_metrics_endpoint" => match value.as_bool() {
                    Some(auth) => {
                        metrics_auth = Some(auth);
                        t.map(here, "telemetry.metrics_require_auth");
                    }
                    None => t.refuse(&here, "must be true or false"),
                },
                "disable_end_user_cost_tracking" => match value.as_bool() {
                    Some(off) => {
                        policy.insert("record_end_users".into(), json!(!off));
                        t.map(here, "policy.record_end_users (negated)");
                    }
                    None => t.refuse(&here, "must be true or false"),
                },
                "cache" => {
                    cache.insert("enabled".into(), json!(value.as_bool().unwrap_or(false)));
                    t.map(here, "cache.enabled");
                }
                "cache_params" => {
                    let Some(params) = value.as_object() else {
                        t.refuse(&here, "must be a map");
                        continue;
                    };
                    for (p, v) in params {
                        let phere = format!("{here}.{p}");
                        match p.as_str() {
                            "type" => match v.as_str().unwrap_or_default() {
                                "local" | "in-memory" | "in_memory" => {
                                    cache.insert("backend".into(), json!("memory"));
                                    t.map(phere, "cache.backend: memory");
                                }
                                "redis" => {
                                    cache.insert("backend".into(), json!("redis"));
                                    t.map(phere, "cache.backend: redis");
                                }
                                other => {
                                    t.refuse(&phere, &format!("cache type `{other}` is not supported (local, redis)"))
                                }
                            },
                            "ttl" => {
                                cache.insert("ttl_seconds".into(), v.clone());
                                t.map(phere, "cache.ttl_seconds");
                            }
                            "host" | "port" | "password" => {
                                if let Some(o) = cache.entry("__redis").or_insert_with(|| json!({})).as_object_mut() {
                                    o.insert(p.clone(), v.clone());
                                }
                            }
                            "namespace" => {
                                let prefix = format!("{}:", v.as_str().unwrap_or("litellm"));
                                if let Some(o) = cache.entry("__redis").or_insert_with(|| json!({})).as_object_mut() {
                                    o.insert("prefix".into(), json!(prefix));
                                }
                                t.map(phere, "cache.redis.prefix");
                            }
                            "supported_call_types" => t.warn(&phere, "chat, completions and embeddings are cached"),
                            _ => t.refuse(&phere, "is not supported, and ignoring it would change what is cached"),
                        }
                    }
                }
                "num_retries" => {
                    router.entry("num_retries").or_insert_with(|| value.clone());
                    t.map(here, "router_settings.num_retries");
                }
                "request_timeout" => match secs_to_ms(value) {
                    Some(ms) => {
                        attempt_ms.get_or_insert(ms);
                        t.map(
                            here,
                            "model_list[*].deployments[].timeouts (per attempt, where a deployment sets none)",
                        );
                    }
                    None => t.refuse(&here, "must be a number of seconds"),
                },
                "fallbacks" => t.fallbacks(&here, value, &mut groups, "fallbacks"),
                "context_window_fallbacks" => t.fallbacks(&here, value, &mut groups, "context_window_fallbacks"),
                "content_policy_fallbacks" => t.fallbacks(&here, value, &mut groups, "content_policy_fallbacks"),
                other => match IGNORED_LITELLM_SETTINGS.iter().find(|(k, _)| *k == other) {
                    Some((_, why)) => t.warn(&here, why),
                    None => t.refuse(&here, "is not supported, and ignoring it would change behaviour"),
                },
            }
        }
    }
    // `cache: true` without `cache_params` is LiteLLM's Redis cache, at the
    // environment's Redis; with `cache_params` that name no `type`, its
    // in-memory one (LiteLLM's `Cache` defaults to local).
    let params_given = doc
        .pointer("/litellm_settings/cache_params")
        .and_then(Value::as_object)
        .is_some_and(|p| !p.is_empty());
    if cache.get("enabled") == Some(&json!(true)) && !cache.contains_key("backend") && !params_given {
        cache.insert("backend".into(), json!("redis"));
        t.map(
            "litellm_settings.cache",
            "cache.backend: redis (LiteLLM's default without cache_params)",
        );
    }
    let cache_redis = cache.remove("__redis").and_then(|v| v.as_object().cloned());
    let has_address = cache_redis
        .as_ref()
        .is_some_and(|r| r.contains_key("host") || r.contains_key("port") || r.contains_key("password"));
    if cache.get("backend").is_none() && has_address {
        t.warn(
            "litellm_settings.cache_params",
            "names a Redis address but no `type`: LiteLLM's cache is then in memory, and so is this one \
             (add `type: redis` to share it)",
        );
    }
    if let Some(redis) = cache_redis.filter(|_| has_address && cache.get("backend") == Some(&json!("redis"))) {
        let parts = redis
            .iter()
            .filter_map(|(k, v)| match k.as_str() {
                "host" => Some(("host", v.clone())),
                "port" => Some(("port", v.clone())),
                "password" => Some(("password", v.clone())),
                _ => None,
            })
            .collect();
        let url = redis_url(&parts);
        let mut r = Map::new();
        r.insert("url".into(), json!(url));
        if let Some(prefix) = redis.get("prefix") {
            r.insert("prefix".into(), prefix.clone());
        }
        cache.insert("redis".into(), Value::Object(r));
        t.map("litellm_settings.cache_params.host/port/password", "cache.redis.url");
    } else if cache.get("backend") == Some(&json!("redis"))
        && let Some(url) = policy.get("redis").and_then(|r| r.get("url")).cloned()
    {
        let mut r = Map::new();
        r.insert("url".into(), url);
        if let Some(prefix) = cache_redis_prefix(&doc_cache_namespace(doc)) {
            r.insert("prefix".into(), json!(prefix));
        }
        cache.insert("redis".into(), Value::Object(r));
        t.map("router_settings.redis_*", "cache.redis.url");
    } else if cache.get("backend") == Some(&json!("redis")) {
        // Where LiteLLM looks then: the environment's Redis.
        let mut r = Map::new();
        r.insert(
            "url".into(),
            json!("redis://:{os.environ/REDIS_PASSWORD:-}@{os.environ/REDIS_HOST}:{os.environ/REDIS_PORT:-6379}"),
        );
        if let Some(prefix) = cache_redis_prefix(&doc_cache_namespace(doc)) {
            r.insert("prefix".into(), json!(prefix));
        }
        cache.insert("redis".into(), Value::Object(r));
        t.map(
            "litellm_settings.cache",
            "cache.redis.url from REDIS_HOST, REDIS_PORT and REDIS_PASSWORD",
        );
        t.warn(
            "litellm_settings.cache",
            "REDIS_URL, REDIS_SSL and REDIS_USERNAME are not read: for TLS or a user, set cache.redis.url",
        );
    }
    let mut alerts = Map::new();
    let mut no_alerts = false;
    let mut pass_through: Vec<Value> = Vec::new();
    if let Some(settings) = doc.get("general_settings").and_then(Value::as_object) {
        for (key, value) in settings {
            let here = format!("general_settings.{key}");
            match key.as_str() {
                "master_key" => {
                    policy.insert("master_key".into(), value.clone());
                    t.map(here, "policy.master_key");
                }
                // Serving while the store is down is Redis's `fail_open`.
                "allow_requests_on_db_unavailable" => match value.as_bool() {
                    Some(allow) => {
                        let mode = if allow { "fail_open" } else { "fail_closed" };
                        match policy.get_mut("redis").and_then(Value::as_object_mut) {
                            Some(redis) => {
                                redis.insert("failure_mode".into(), json!(mode));
                                t.map(here, format!("policy.redis.failure_mode: {mode}"));
                            }
                            None => t.warn(&here, "there is no Redis for the policy: nothing can be unavailable"),
                        }
                    }
                    None => t.refuse(&here, "must be true or false"),
                },
                "alerting" => match value.as_array() {
                    Some(channels) => {
                        for channel in channels {
                            let name = channel.as_str().map_or_else(|| channel.to_string(), str::to_owned);
                            let (env, format) = match channel.as_str() {
                                Some("slack") => ("SLACK_WEBHOOK_URL", "slack"),
                                Some("webhook") => ("WEBHOOK_URL", "json"),
                                _ => {
                                    t.warn(&format!("{here}: {name}"), "only slack and webhook alerts are sent");
                                    continue;
                                }
                            };
                            if alerts.contains_key("webhook_url") {
                                t.warn(&format!("{here}: {name}"), "alerts go to one webhook, the first listed");
                                continue;
                            }
                            alerts.insert("webhook_url".into(), json!(format!("os.environ/{env}")));
                            alerts.insert("format".into(), json!(format));
                            t.map(
                                format!("{here}: [{name}]"),
                                format!("telemetry.alerts (webhook_url: os.environ/{env}, format: {format})"),
                            );
                        }
                    }
                    None => t.refuse(&here, "must be a list of alert channels"),
                },
                "alerting_threshold" => match secs_to_ms(value).filter(|ms| *ms > 0) {
                    Some(ms) => {
                        alerts.insert("slow_request_ms".into(), json!(ms));
                        t.map(here, "telemetry.alerts.slow_request_ms");
                    }
                    None => t.refuse(&here, "must be a number of seconds greater than 0"),
                },
                "alert_types" => match value.as_array() {
                    Some(types) => {
                        let mut events: Vec<&str> = Vec::new();
                        for kind in types {
                            let name = kind.as_str().map_or_else(|| kind.to_string(), str::to_owned);
                            let mapped: &[&str] = match kind.as_str() {
                                Some("budget_alerts") => &["soft_budget_crossed", "budget_exhausted"],
                                Some("cooldown_deployment" | "outage_alerts" | "region_outage_alerts") => {
                                    &["deployment_cooldown"]
                                }
                                Some("llm_exceptions") => &["request_failed"],
                                // A hanging request is told of when it ends
                                // (slow) or at its timeout (failed).
                                Some("llm_too_slow" | "llm_requests_hanging") => &["slow_request"],
                                _ => {
                                    t.warn(
                                        &format!("{here}: {name}"),
                                        "sent are budget_alerts, cooldown_deployment, outage_alerts (as cooldowns), \
                                         llm_exceptions, llm_too_slow and llm_requests_hanging",
                                    );
                                    &[]
                                }
                            };
                            for event in mapped {
                                if !events.contains(event) {
                                    events.push(event);
                                }
                            }
                        }
                        if events.is_empty() {
                            // Nothing the gateway sends: no alerts at all.
                            no_alerts = true;
                        } else {
                            alerts.insert("events".into(), json!(events));
                            t.map(here, "telemetry.alerts.events");
                        }
                    }
                    None => t.refuse(&here, "must be a list of alert types"),
                },
                "pass_through_endpoints" => match value.as_array() {
                    Some(list) => {
                        for (i, entry) in list.iter().enumerate() {
                            let at = format!("{here}[{i}]");
                            let Some(entry) = entry.as_object() else {
                                t.refuse(&at, "must be an object with path and target");
                                continue;
                            };
                            let mut route = Map::new();
                            for (field, v) in entry {
                                match field.as_str() {
                                    // LiteLLM turns Langfuse's two keys into
                                    // one basic-auth header; sent as they are
                                    // they would be refused, the secret key
                                    // in the clear.
                                    "headers"
                                        if v.as_object().is_some_and(|h| {
                                            h.keys().any(|k| {
                                                k.eq_ignore_ascii_case("LANGFUSE_PUBLIC_KEY")
                                                    || k.eq_ignore_ascii_case("LANGFUSE_SECRET_KEY")
                                            })
                                        }) =>
                                    {
                                        t.refuse(
                                            &format!("{at}.headers"),
                                            "LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY are not headers Langfuse \
                                             reads: write `Authorization: \"Basic {os.environ/LANGFUSE_BASIC_AUTH}\"` \
                                             with that variable holding base64 of `public_key:secret_key`",
                                        );
                                    }
                                    "path" | "target" | "headers" | "forward_headers" | "include_subpath" | "auth" => {
                                        route.insert(field.clone(), v.clone());
                                    }
                                    other => t.refuse(
                                        &format!("{at}.{other}"),
                                        "is not supported, and ignoring it would change behaviour",
                                    ),
                                }
                            }
                            // LiteLLM forwards a client's own key with its
                            // headers when the route sets none; a client's
                            // key is never forwarded here.
                            let sets_key = entry.get("headers").and_then(Value::as_object).is_some_and(|h| {
                                h.keys().any(|k| {
                                    ["authorization", "x-api-key", "api-key", "x-goog-api-key"]
                                        .iter()
                                        .any(|name| k.eq_ignore_ascii_case(name))
                                })
                            });
                            if entry.get("forward_headers") == Some(&Value::Bool(true)) && !sets_key {
                                t.warn(
                                    &format!("{at}.forward_headers"),
                                    "the client's own key headers (Authorization, x-api-key, api-key) are not \
                                     forwarded, as LiteLLM forwards them when the route sets none: put the \
                                     target's credential in the route's headers",
                                );
                            }
                            // LiteLLM's routes are open unless `auth` says otherwise.
                            if !entry.get("auth").is_some_and(|a| a == &Value::Bool(true)) {
                                route.insert("auth".into(), json!(false));
                                t.warn(
                                    &format!("{at}.auth"),
                                    "it is false: anyone who reaches the gateway calls the target with its headers (set auth: true to need a key)",
                                );
                            }
                            pass_through.push(Value::Object(route));
                        }
                        t.map(here, "pass_through");
                    }
                    None => t.refuse(&here, "must be a list of routes"),
                },
                "global_max_parallel_requests" => match value.as_u64() {
                    Some(n) => {
                        server.insert("max_concurrent_requests".into(), json!(n));
                        t.map(here, "server.max_concurrent_requests");
                    }
                    None => t.refuse(&here, "must be a whole number"),
                },
                other => match IGNORED_GENERAL_SETTINGS.iter().find(|(k, _)| *k == other) {
                    Some((_, why)) => t.warn(&here, why),
                    None => t.refuse(&here, "is not supported, and ignoring it would change behaviour"),
                },
            }
        }
    }
    if let Some(doc) = doc.as_object() {
        for key in doc.keys() {
            match key.as_str() {
                "model_list" | "router_settings" | "litellm_settings" | "general_settings" => {}
                // Switchyard's own sections may sit beside LiteLLM's.
                "server" | "embedder" | "policy" | "cache" | "telemetry" => {}
                "environment_variables" => match doc.get(key).and_then(Value::as_object) {
                    Some(vars) => {
                        for (name, value) in vars {
                            let value = match value {
                                Value::String(s) => s.clone(),
                                Value::Number(_) | Value::Bool(_) => value.to_string(),
                                _ => {
                                    t.refuse(&format!("{key}.{name}"), "must be a string, a number or true/false");
                                    continue;
                                }
                            };
                            t.out.environment.insert(name.clone(), value);
                        }
                        t.warn(
                            key,
                            "read wherever the configuration names a variable (os.environ/NAME), before the \
                             process environment; what libraries read from the environment themselves (AWS \
                             credentials for Bedrock, OTEL_EXPORTER_OTLP_*) must be set there",
                        );
                    }
                    None => t.refuse(key, "must be a map of names to values"),
                },
                other => t.refuse(other, "is not a LiteLLM section Switchyard knows"),
            }
        }
    }
    if let Some(ms) = attempt_ms {
        let defaults = crate::config::TimeoutsEntry::default();
        for group in groups.values_mut() {
            if let Some(Value::Array(list)) = group.get_mut("deployments") {
                for d in list.iter_mut().filter_map(Value::as_object_mut) {
                    let timeouts = d.entry("timeouts").or_insert_with(
                        || json!({"connect_ms": defaults.connect_ms, "first_byte_ms": ms, "total_ms": ms, "idle_ms": ms}),
                    );
                    // A deployment with a `stream_timeout` but no `timeout`
                    // of its own: the router's bounds its requests, as in
                    // LiteLLM.
                    if let Some(timeouts) = timeouts.as_object_mut() {
                        timeouts.entry("total_ms").or_insert(json!(ms));
                    }
                }
            }
        }
    }
    if !t.issues.is_empty() {
        return Err(t.issues);
    }
    let mut config = Map::new();
    for section in ["embedder", "telemetry"] {
        if let Some(v) = doc.get(section) {
            config.insert(section.into(), v.clone());
        }
    }
    if !pass_through.is_empty() {
        config.insert("pass_through".into(), Value::Array(pass_through));
    }
    if let Some(otlp) = otlp {
        if doc.pointer("/telemetry/otlp").is_some() {
            t.warn(
                "litellm_settings.success_callback",
                "the file's own telemetry.otlp is used",
            );
        } else {
            let telemetry = config.entry("telemetry").or_insert_with(|| json!({}));
            if let Some(telemetry) = telemetry.as_object_mut() {
                telemetry.insert("otlp".into(), Value::Object(otlp));
            }
        }
    }
    if let Some(auth) = metrics_auth
        && doc.pointer("/telemetry/metrics_require_auth").is_none()
    {
        let telemetry = config.entry("telemetry").or_insert_with(|| json!({}));
        if let Some(telemetry) = telemetry.as_object_mut() {
            telemetry.insert("metrics_require_auth".into(), json!(auth));
        }
    }
    // Alert types without a channel send nothing; a file's own
    // `telemetry.alerts` is used as written.
    let own_alerts = doc.pointer("/telemetry/alerts").is_some();
    if alerts.contains_key("webhook_url") && !no_alerts && !own_alerts {
        let telemetry = config.entry("telemetry").or_insert_with(|| json!({}));
        if let Some(telemetry) = telemetry.as_object_mut() {
            telemetry.insert("alerts".into(), Value::Object(alerts));
        }
    } else if alerts.contains_key("webhook_url") && own_alerts {
        t.warn("general_settings.alerting", "the file's own telemetry.alerts is used");
    }
    let merge = |ours: Map<String, Value>, theirs: Option<&Value>| {
        let mut merged = ours;
        if let Some(Value::Object(extra)) = theirs {
            for (k, v) in extra {
                merged.insert(k.clone(), v.clone());
            }
        }
        merged
    };
    let policy = merge(policy, doc.get("policy"));
    match doc.get("server") {
        // Not a map: left for validation to refuse by name.
        Some(other) if !other.is_object() => drop(config.insert("server".into(), other.clone())),
        theirs => {
            let server = merge(server, theirs);
            if !server.is_empty() {
                config.insert("server".into(), Value::Object(server));
            }
        }
    }
    let cache = merge(cache, doc.get("cache"));
    if !router.is_empty() {
        if let Some(n) = router.get("num_retries").and_then(Value::as_u64) {
            router.insert("max_num_retries".into(), json!(n.max(5)));
        }
        config.insert("router_settings".into(), Value::Object(router));
    }
    // A `policy:` or `cache:` of the file's own that is not a map is left
    // for validation to refuse by name, as `server:` is.
    for (name, merged) in [("policy", policy), ("cache", cache)] {
        match doc.get(name) {
            Some(other) if !other.is_object() => drop(config.insert(name.into(), other.clone())),
            _ if !merged.is_empty() => drop(config.insert(name.into(), Value::Object(merged))),
            _ => {}
        }
    }
    config.insert(
        "model_list".into(),
        Value::Array(
            order
                .iter()
                .filter_map(|n| groups.remove(n))
                .map(Value::Object)
                .collect(),
        ),
    );
    t.out.config = Value::Object(config);
    Ok(t.out)
}
