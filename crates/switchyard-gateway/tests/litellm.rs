//! A LiteLLM proxy `config.yaml`, as teams run it, served as it is: what
//! each key becomes (routing, retries, cooldowns, limits, prices, cache,
//! master key), the gateway answering through it over real HTTP with a
//! shared Redis, `check-config --litellm`'s report, and keys Switchyard
//! cannot honour failing start-up by name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_gateway::config::{self, Source};
use switchyard_gateway::{Overrides, build_state};
use switchyard_testkit::{GatewayProcess, MockUpstream, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const MASTER: &str = "sk-litellm-master-0001";

fn litellm_config(mock: &str, redis_port: u16) -> String {
    format!(
        r#"
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: {mock}/v1
      api_key: os.environ/OPENAI_API_KEY
      rpm: 600
      tpm: 100000
      input_cost_per_token: 0.0000025
      output_cost_per_token: 0.00001
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-eu
      api_base: {mock}
      api_key: os.environ/AZURE_API_KEY
      api_version: "2024-06-01"
      rpm: 300
    model_info:
      id: azure-eu
      max_tokens: 128000
      max_output_tokens: 16384
  - model_name: claude-sonnet
    litellm_params:
      model: anthropic/claude-3-5-sonnet-20240620
      api_base: {mock}
      api_key: os.environ/ANTHROPIC_API_KEY
      timeout: 30
      max_retries: 1
  - model_name: llama
    litellm_params:
      model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct
      api_base: {mock}/v1

router_settings:
  routing_strategy: usage-based-routing-v2
  num_retries: 2
  timeout: 45
  fallbacks: [{{"gpt-4o": ["claude-sonnet"]}}]
  context_window_fallbacks: [{{"llama": ["gpt-4o"]}}]
  allowed_fails: 4
  cooldown_time: 20
  redis_host: 127.0.0.1
  redis_port: {redis_port}
  enable_pre_call_checks: true

litellm_settings:
  cache: true
  cache_params:
    type: redis
    ttl: 600
  set_verbose: false
  success_callback: ["datadog"]
  drop_params: true

general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  database_connection_pool_limit: 10
  allow_requests_on_db_unavailable: true
"#
    )
}

fn env() -> BTreeMap<String, String> {
    [
        ("OPENAI_API_KEY", "sk-openai-test"),
        ("AZURE_API_KEY", "azure-test"),
        ("ANTHROPIC_API_KEY", "sk-ant-test"),
        ("LITELLM_MASTER_KEY", MASTER),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[tokio::test]
async fn a_litellm_config_becomes_the_same_routing_and_limits() {
    let yaml = litellm_config("http://127.0.0.1:9", 6390);
    let config = config::load(Source::Text(&yaml), &Overrides::default()).unwrap();
    let state = build_state(&config, &env()).unwrap();

    let names: Vec<&str> = state.registry.model_names().collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let gpt = state.registry.group("gpt-4o").unwrap().deployments();
    assert_eq!(gpt.len(), 2, "two entries with one model_name are one group");
    assert_eq!((gpt[0].provider.as_str(), gpt[0].model.as_str()), ("openai", "gpt-4o"));
    assert_eq!(
        (gpt[1].provider.as_str(), gpt[1].model.as_str()),
        ("azure", "gpt-4o-eu")
    );
    assert_eq!(
        (gpt[0].rpm, gpt[0].tpm, gpt[1].rpm),
        (Some(600), Some(100_000), Some(300))
    );
    assert_eq!(gpt[0].input_cost_per_token, 0.0000025);
    let claude = state.registry.group("claude-sonnet").unwrap().deployments();
    assert_eq!(claude[0].provider, "anthropic");
    let llama = state.registry.group("llama").unwrap().deployments();
    assert_eq!(
        (llama[0].provider.as_str(), llama[0].model.as_str()),
        ("openai", "meta-llama/Llama-3.1-8B-Instruct")
    );

    let route = &state.routes["gpt-4o"];
    assert_eq!(route.strategy.name(), "usage-based");
    assert_eq!(route.fallbacks, vec!["claude-sonnet".to_owned()]);
    assert_eq!(
        state.routes["llama"].context_window_fallbacks,
        vec!["gpt-4o".to_owned()]
    );
    assert_eq!(state.dispatch.retry.num_retries, 2);
    // LiteLLM's `timeout` bounds each attempt: a deployment with none of
    // its own gets it, the request's whole deadline keeps its default.
    assert_eq!(state.dispatch.timeout, Duration::from_secs(600));
    let specs = config.validate(&env()).unwrap();
    let timeouts = |group: &str| {
        let spec = specs.iter().find(|m| m.name == group).unwrap();
        spec.deployments[0].http.timeouts
    };
    assert_eq!(timeouts("gpt-4o").total, Duration::from_secs(45));
    assert_eq!(timeouts("gpt-4o").first_byte, Duration::from_secs(45));
    assert_eq!(
        timeouts("claude-sonnet").total,
        Duration::from_secs(30),
        "its own `timeout` wins"
    );
    // LiteLLM cools down after more than 4 failures: on the fifth.
    assert_eq!(state.dispatch.cooldown.allowed_fails, 5);
    assert_eq!(state.dispatch.cooldown.cooldown_ms, 20_000);
    assert!(state.policy.has_master_key());
    assert!(state.cache.is_some(), "litellm_settings.cache");
    assert_eq!(state.cache.as_ref().unwrap().store().backend_name(), "redis");

    // Serving while the database is down is serving through a Redis outage.
    assert_eq!(
        config.policy.redis.as_ref().map(|r| format!("{:?}", r.failure_mode)),
        Some("FailOpen".to_owned())
    );
    // `drop_params` reaches the deployments that can drop parameters.
    let claude = &specs.iter().find(|m| m.name == "claude-sonnet").unwrap().deployments[0];
    assert!(
        claude.drop_params,
        "litellm_settings.drop_params on an Anthropic deployment"
    );
    let gpt = &specs.iter().find(|m| m.name == "gpt-4o").unwrap().deployments[0];
    assert!(!gpt.drop_params);
    // The most the Azure deployment writes: larger asks are lowered to it.
    let azure = &specs.iter().find(|m| m.name == "gpt-4o").unwrap().deployments[1];
    assert_eq!(azure.max_output_tokens, Some(16384));
    let notices = config.notices.join("\n");
    assert!(!notices.contains("`litellm_settings.drop_params`"), "{notices}");
    for key in [
        "litellm_settings.set_verbose",
        "litellm_settings.success_callback: datadog",
        "router_settings.enable_pre_call_checks",
        "model_list[1].model_info.id",
        "model_list[2].litellm_params.max_retries",
        "general_settings.database_connection_pool_limit",
    ] {
        assert_eq!(
            notices.matches(&format!("`{key}`")).count(),
            1,
            "one warning for {key}:\n{notices}"
        );
    }
}

#[test]
fn keys_that_would_change_behaviour_fail_by_name() {
    for (extra, key) in [
        (
            "router_settings:\n  provider_budget_config: {openai: {budget_limit: 100, time_period: 1d}}\n",
            "router_settings.provider_budget_config",
        ),
        ("litellm_settings:\n  max_budget: 100\n", "litellm_settings.max_budget"),
        (
            "general_settings:\n  custom_auth: my_module.auth\n",
            "general_settings.custom_auth",
        ),
    ] {
        let yaml = format!(
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/gpt-4o\n      api_key: k\n{extra}"
        );
        let err = config::load(Source::Text(&yaml), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
    let yaml = "model_list:\n  - model_name: g\n    litellm_params:\n      model: vertex_ai/gemini-pro\n";
    let err = config::load(Source::Text(yaml), &Overrides::default()).unwrap_err();
    assert!(
        err.to_string().contains("model_list[0].litellm_params.model") && err.to_string().contains("vertex_ai"),
        "{err}"
    );
}

#[test]
fn model_group_aliases_come_over_with_their_hidden_flag() {
    let yaml = "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/gpt-4o\n      api_key: k\nrouter_settings:\n  model_group_alias: {\"gpt-4\": \"a\", \"old\": {\"model\": \"a\", \"hidden\": true}}\n";
    let config = config::load(Source::Text(yaml), &Overrides::default()).unwrap();
    let aliases = &config.router_settings.model_group_alias;
    assert_eq!(aliases.len(), 2);
    assert_eq!((aliases["gpt-4"].group(), aliases["gpt-4"].hidden()), ("a", false));
    assert_eq!((aliases["old"].group(), aliases["old"].hidden()), ("a", true));
    config.validate(&BTreeMap::<String, String>::new()).unwrap();

    // An alias of a model the file does not list fails by its name.
    let yaml = yaml.replace("\"gpt-4\": \"a\"", "\"gpt-4\": \"gpt-4o\"");
    let config = config::load(Source::Text(&yaml), &Overrides::default()).unwrap();
    let err = config
        .validate(&BTreeMap::<String, String>::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("router_settings.model_group_alias.gpt-4") && err.contains("`gpt-4o` is not a model_name"),
        "{err}"
    );
}

#[test]
fn access_groups_of_a_groups_deployments_become_the_groups() {
    let yaml = "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/gpt-4o\n      api_key: k\n    model_info:\n      access_groups: [beta]\n  - model_name: a\n    litellm_params:\n      model: openai/gpt-4o-2024-08-06\n      api_key: k\n    model_info:\n      access_groups: [beta, prod]\n  - model_name: b\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_key: k\n";
    let config = config::load(Source::Text(yaml), &Overrides::default()).unwrap();
    let groups: Vec<(&str, &[String])> = config
        .model_list
        .iter()
        .map(|m| (m.model_name.as_str(), m.access_groups.as_slice()))
        .collect();
    assert_eq!(
        groups,
        [("a", &["beta".to_owned(), "prod".to_owned()][..]), ("b", &[][..])]
    );
    let notices = config.notices.join("\n");
    assert!(!notices.contains("access_groups"), "not a warning: {notices}");
    let bad = yaml.replace("access_groups: [beta]\n", "access_groups: beta\n");
    let err = config::load(Source::Text(&bad), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model_list[0].model_info.access_groups"), "{err}");
}

#[test]
fn tag_routing_comes_over() {
    let doc = json!({
        "model_list": [
            {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k", "tags": ["free"]}},
            {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k2", "tags": ["paid", "default"]}},
        ],
        "router_settings": {"enable_tag_filtering": true, "tag_filtering_match_any": true},
    });
    let t = switchyard_gateway::litellm::translate(&doc).unwrap();
    assert_eq!(t.config["router_settings"]["enable_tag_filtering"], true);
    let deployments = &t.config["model_list"][0]["deployments"];
    assert_eq!(deployments[0]["tags"], json!(["free"]));
    assert_eq!(deployments[1]["tags"], json!(["paid", "default"]));
    let all_tags = json!({
        "model_list": [{"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k"}}],
        "router_settings": {"tag_filtering_match_any": false},
    });
    let err: String = switchyard_gateway::litellm::translate(&all_tags)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(err.contains("router_settings.tag_filtering_match_any"), "{err}");
}

#[test]
fn slack_and_webhook_alerting_come_over() {
    let doc = json!({
        "model_list": [{"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k"}}],
        "general_settings": {
            "alerting": ["slack", "email"],
            "alert_types": ["budget_alerts", "llm_too_slow", "cooldown_deployment", "llm_exceptions", "daily_reports"],
            "alerting_threshold": 120,
            // LiteLLM's alerting quick start: how often and how loudly, not
            // what is routed, allowed or charged.
            "spend_report_frequency": "1d",
            "alerting_args": {"budget_alert_ttl": 86400},
            "alert_to_webhook_url": {"llm_exceptions": "https://hooks.example/x"},
        },
    });
    let t = switchyard_gateway::litellm::translate(&doc).unwrap();
    assert_eq!(
        t.config["telemetry"]["alerts"],
        json!({"webhook_url": "os.environ/SLACK_WEBHOOK_URL", "format": "slack", "slow_request_ms": 120_000,
               "events": ["soft_budget_crossed", "budget_exhausted", "slow_request", "deployment_cooldown", "request_failed"]})
    );
    let warned = t.warnings.join("\n");
    for unused in [
        "alerting: email",
        "alert_types: daily_reports",
        "spend_report_frequency",
        "alerting_args",
        "alert_to_webhook_url",
    ] {
        assert!(warned.contains(unused), "{warned}");
    }
    assert!(!warned.contains("alerting_threshold"), "{warned}");
    // The generic webhook posts JSON to WEBHOOK_URL; alert types alone send nothing.
    let webhook = json!({
        "model_list": [{"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k"}}],
        "general_settings": {"alerting": ["webhook"]},
    });
    let t = switchyard_gateway::litellm::translate(&webhook).unwrap();
    assert_eq!(
        t.config["telemetry"]["alerts"],
        json!({"webhook_url": "os.environ/WEBHOOK_URL", "format": "json"})
    );
    let quiet = json!({
        "model_list": [{"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k"}}],
        "general_settings": {"alert_types": ["budget_alerts"]},
    });
    let t = switchyard_gateway::litellm::translate(&quiet).unwrap();
    assert!(t.config.get("telemetry").is_none(), "{}", t.config);
    // A channel whose alert types are none the gateway sends: no alerts,
    // rather than an empty list refused by name.
    let unsent = json!({
        "model_list": [{"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k"}}],
        "general_settings": {"alerting": ["slack"], "alert_types": ["daily_reports"]},
    });
    let t = switchyard_gateway::litellm::translate(&unsent).unwrap();
    assert!(t.config.get("telemetry").is_none(), "{}", t.config);
    // `model_info.mode` of the other endpoints says what `GET /health` sends.
    let modes = json!({
        "model_list": [
            {"model_name": "img", "litellm_params": {"model": "openai/dall-e-2", "api_key": "k"}, "model_info": {"mode": "image_generation"}},
            {"model_name": "stt", "litellm_params": {"model": "openai/whisper-1", "api_key": "k"}, "model_info": {"mode": "audio_transcription"}},
            {"model_name": "odd", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k"}, "model_info": {"mode": "batch"}},
        ],
    });
    let t = switchyard_gateway::litellm::translate(&modes).unwrap();
    let checks: Vec<&Value> = (0..3)
        .map(|i| &t.config["model_list"][i]["deployments"][0]["health_check"])
        .collect();
    assert_eq!(
        checks,
        [
            &json!("image_generation"),
            &json!("audio_transcription"),
            &json!("none")
        ]
    );
}

#[test]
fn pass_through_endpoints_come_over_open_as_in_litellm() {
    let doc = json!({
        "model_list": [{"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k"}}],
        "general_settings": {"pass_through_endpoints": [
            {"path": "/cohere", "target": "https://api.cohere.com/v1", "headers": {"Authorization": "bearer os.environ/COHERE_API_KEY"}, "include_subpath": true},
            {"path": "/private", "target": "https://example.com", "auth": true},
            {"path": "/vendor", "target": "https://vendor.example.com", "forward_headers": true},
            {"path": "/keyed", "target": "https://keyed.example.com", "forward_headers": true, "headers": {"x-api-key": "os.environ/VENDOR_KEY"}},
        ]},
    });
    let t = switchyard_gateway::litellm::translate(&doc).unwrap();
    assert_eq!(
        t.config["pass_through"],
        json!([
            {"path": "/cohere", "target": "https://api.cohere.com/v1", "headers": {"Authorization": "bearer os.environ/COHERE_API_KEY"}, "include_subpath": true, "auth": false},
            {"path": "/private", "target": "https://example.com", "auth": true},
            {"path": "/vendor", "target": "https://vendor.example.com", "forward_headers": true, "auth": false},
            {"path": "/keyed", "target": "https://keyed.example.com", "forward_headers": true, "headers": {"x-api-key": "os.environ/VENDOR_KEY"}, "auth": false},
        ])
    );
    let warned = t.warnings.join("\n");
    assert!(warned.contains("pass_through_endpoints[0].auth"), "{warned}");
    assert!(!warned.contains("pass_through_endpoints[1]"), "{warned}");
    // LiteLLM would forward the client's own key on a route that sets none.
    assert!(warned.contains("pass_through_endpoints[2].forward_headers"), "{warned}");
    assert!(
        !warned.contains("pass_through_endpoints[3].forward_headers"),
        "{warned}"
    );
    let extra = json!({
        "model_list": [{"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k"}}],
        "general_settings": {"pass_through_endpoints": [{"path": "/x", "target": "https://example.com", "guardrails": {"a": 1}}]},
    });
    let err: String = switchyard_gateway::litellm::translate(&extra)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(err.contains("pass_through_endpoints[0].guardrails"), "{err}");
    // Langfuse's two keys as headers, which LiteLLM makes basic auth.
    let langfuse = json!({
        "model_list": [{"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k"}}],
        "general_settings": {"pass_through_endpoints": [{"path": "/langfuse", "target": "https://us.cloud.langfuse.com",
            "headers": {"LANGFUSE_PUBLIC_KEY": "os.environ/LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY": "os.environ/LANGFUSE_SECRET_KEY"}}]},
    });
    let err: String = switchyard_gateway::litellm::translate(&langfuse)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        err.contains("pass_through_endpoints[0].headers") && err.contains("Basic"),
        "{err}"
    );
    // A `text-completion-openai/` model is told of.
    let completion = json!({"model_list": [{"model_name": "instruct",
        "litellm_params": {"model": "text-completion-openai/gpt-3.5-turbo-instruct", "api_key": "k"}}]});
    let t = switchyard_gateway::litellm::translate(&completion).unwrap();
    assert!(
        t.warnings.iter().any(|w| w.contains("/v1/completions")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn redis_settings_become_one_url_and_the_cache_follows_it() {
    let doc: Value = serde_json::from_value(json!({
        "model_list": [{"model_name": "a", "litellm_params": {"model": "openai/x", "api_key": "k"}}],
        "router_settings": {"redis_host": "cache.internal", "redis_port": 6380, "redis_db": 2, "redis_password": "pw"},
        "litellm_settings": {"cache": true, "cache_params": {"type": "redis", "namespace": "team-a"}},
    }))
    .unwrap();
    let t = switchyard_gateway::litellm::translate(&doc).unwrap();
    assert_eq!(t.config["policy"]["redis"]["url"], "redis://:pw@cache.internal:6380/2");
    let private = json!({
        "model_list": [{"model_name": "a", "litellm_params": {"model": "openai/x", "api_key": "k"}}],
        "litellm_settings": {"disable_end_user_cost_tracking": true, "require_auth_for_metrics_endpoint": true},
        "general_settings": {"global_max_parallel_requests": 64},
        "server": {"port": 4001},
    });
    let t2 = switchyard_gateway::litellm::translate(&private).unwrap();
    assert_eq!(t2.config["policy"]["record_end_users"], false, "{}", t2.config);
    assert_eq!(t2.config["telemetry"]["metrics_require_auth"], true, "{}", t2.config);
    assert_eq!(
        t2.config["server"],
        json!({"litellm_headers": true, "max_concurrent_requests": 64, "port": 4001}),
        "{}",
        t2.config
    );
    assert_eq!(t.config["cache"]["redis"]["url"], "redis://:pw@cache.internal:6380/2");
    assert_eq!(t.config["cache"]["redis"]["prefix"], "team-a:");
    // A section of the file's own that is not a map is kept for validation
    // to refuse by name, not dropped.
    for section in ["policy", "cache", "server"] {
        let mut odd = private.clone();
        odd[section] = json!(true);
        let t3 = switchyard_gateway::litellm::translate(&odd).unwrap();
        assert_eq!(t3.config[section], json!(true), "{section}: {}", t3.config);
    }
}

/// LiteLLM's `cache: true` without `cache_params` is its Redis cache at the
/// environment's Redis (`REDIS_HOST`, …); with `cache_params` that name no
/// `type`, its in-memory one.
#[test]
fn a_cache_without_params_is_redis() {
    let model_list = json!([{"model_name": "a", "litellm_params": {"model": "openai/x", "api_key": "k"}}]);
    let doc = json!({"model_list": model_list, "litellm_settings": {"cache": true, "cache_params": {"ttl": 600}}});
    let t = switchyard_gateway::litellm::translate(&doc).unwrap();
    assert_ne!(t.config["cache"]["backend"], "redis", "{}", t.config);
    let config = config::load(Source::Text(&doc.to_string()), &Overrides::default()).unwrap();
    let mut issues = Vec::new();
    let cache = config.cache.validate(&BTreeMap::new(), &["a".to_owned()], &mut issues);
    assert!(issues.is_empty(), "{issues:?}");
    assert!(format!("{cache:?}").contains("Memory"), "{cache:?}");
    // An address without a type is said to be unused.
    let doc = json!({"model_list": model_list, "litellm_settings": {"cache": true,
        "cache_params": {"host": "redis.internal", "port": 6379}}});
    let t = switchyard_gateway::litellm::translate(&doc).unwrap();
    assert!(t.config["cache"].get("redis").is_none(), "{}", t.config);
    assert!(t.warnings.iter().any(|w| w.contains("type: redis")), "{:?}", t.warnings);
    let doc = json!({"model_list": model_list, "litellm_settings": {"cache": true}});
    let t = switchyard_gateway::litellm::translate(&doc).unwrap();
    assert_eq!(t.config["cache"]["backend"], "redis", "{}", t.config);
    // JSON is YAML.
    let config = config::load(Source::Text(&doc.to_string()), &Overrides::default()).unwrap();
    let env: BTreeMap<String, String> = [("REDIS_HOST".to_owned(), "redis.internal".to_owned())].into();
    let mut issues = Vec::new();
    let cache = config.cache.validate(&env, &["a".to_owned()], &mut issues);
    assert!(issues.is_empty(), "{issues:?}");
    // Without a password: an empty one is none to the URL parser.
    let url = "redis://:@redis.internal:6379";
    assert!(format!("{cache:?}").contains(url), "{cache:?}");
    assert_eq!(reqwest::Url::parse(url).unwrap().password(), None);
    // A local cache stays local.
    let doc = json!({"model_list": model_list, "litellm_settings": {"cache": true, "cache_params": {"type": "local"}}});
    let t = switchyard_gateway::litellm::translate(&doc).unwrap();
    assert_eq!(t.config["cache"]["backend"], "memory", "{}", t.config);
}

/// LiteLLM's production guide sets every Redis part from the environment;
/// each becomes a placeholder resolved at validation, percent-encoded (a
/// password may hold `@` or `/`).
#[test]
fn redis_parts_from_the_environment_are_resolved() {
    let yaml = r#"
model_list:
  - model_name: a
    litellm_params: {model: openai/x, api_key: k}
router_settings:
  redis_host: os.environ/REDIS_HOST
  redis_port: os.environ/REDIS_PORT
  redis_password: os.environ/REDIS_PASSWORD
litellm_settings:
  cache: true
  cache_params: {type: redis, host: os.environ/REDIS_HOST, port: 6390, password: "p@ss/word"}
"#;
    let config = config::load(Source::Text(yaml), &Overrides::default()).unwrap();
    let mut env: BTreeMap<String, String> = [
        ("REDIS_HOST", "redis.internal"),
        ("REDIS_PORT", "6380"),
        ("REDIS_PASSWORD", "s3cr:t@/x"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut issues = Vec::new();
    let spec = config.policy.validate(&env, &["a".to_owned()], &mut issues);
    assert!(issues.is_empty(), "{issues:?}");
    assert_eq!(
        spec.settings.redis.unwrap().url,
        "redis://:s3cr%3At%40%2Fx@redis.internal:6380"
    );
    let cache = config.cache.validate(&env, &["a".to_owned()], &mut issues);
    assert!(issues.is_empty(), "{issues:?}");
    assert!(
        format!("{cache:?}").contains("redis://:p%40ss%2Fword@redis.internal:6390"),
        "{cache:?}"
    );
    // A variable that is not set is named, and its value is never shown.
    env.remove("REDIS_PASSWORD");
    let mut issues = Vec::new();
    let spec = config.policy.validate(&env, &["a".to_owned()], &mut issues);
    assert!(spec.settings.redis.is_none());
    let text = format!("{issues:?}");
    assert!(
        text.contains("policy.redis.url") && text.contains("REDIS_PASSWORD"),
        "{text}"
    );
}

/// With no `general_settings.master_key`, a LiteLLM file takes the master
/// key from `LITELLM_MASTER_KEY` as LiteLLM does; Switchyard's own files
/// read only `SWITCHYARD_MASTER_KEY`.
#[test]
fn a_litellm_file_reads_the_litellm_master_key_variable() {
    let litellm = "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x, api_key: k}\n";
    let own = "model_list:\n  - model_name: a\n    deployments: [{provider: mock, model: m}]\n";
    let env: BTreeMap<String, String> = [("LITELLM_MASTER_KEY".to_owned(), MASTER.to_owned())].into();
    let master = |yaml: &str, env: &BTreeMap<String, String>| {
        let config = config::load(Source::Text(yaml), &Overrides::default()).unwrap();
        let mut issues = Vec::new();
        let spec = config.policy.validate(env, &["a".to_owned()], &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
        spec.settings.master_key
    };
    assert_eq!(master(litellm, &env).as_deref(), Some(MASTER));
    assert_eq!(master(own, &env), None);
    let mut both = env.clone();
    both.insert("SWITCHYARD_MASTER_KEY".into(), "sk-switchyard-master-01".into());
    assert_eq!(master(litellm, &both).as_deref(), Some("sk-switchyard-master-01"));
    // An empty SWITCHYARD_MASTER_KEY (`${KEY:-}`) gives way to LiteLLM's.
    both.insert("SWITCHYARD_MASTER_KEY".into(), String::new());
    assert_eq!(master(litellm, &both).as_deref(), Some(MASTER));
    // LiteLLM's example key is too short here; the error names the variable.
    let short: BTreeMap<String, String> = [("LITELLM_MASTER_KEY".to_owned(), "sk-1234".to_owned())].into();
    let config = config::load(Source::Text(litellm), &Overrides::default()).unwrap();
    let mut issues = Vec::new();
    config.policy.validate(&short, &["a".to_owned()], &mut issues);
    let text = format!("{issues:?}");
    assert!(
        text.contains("LITELLM_MASTER_KEY") && text.contains("at least 8"),
        "{text}"
    );
    assert!(!text.contains("sk-1234"), "{text}");
}

/// `model_info.base_model` prices an Azure deployment named otherwise as
/// the model it runs; one the built-in table does not know is a warning,
/// and a deployment nobody priced is warned about too.
#[test]
fn base_model_prices_a_deployment_and_unpriced_ones_are_warned_about() {
    let yaml = r#"
model_list:
  - model_name: gpt-4o
    litellm_params: {model: azure/prod-gpt4o, api_base: "https://x.openai.azure.com", api_key: k, api_version: "2024-10-21"}
    model_info: {base_model: azure/gpt-4o-2024-08-06}
  - model_name: exotic
    litellm_params: {model: azure/prod-exotic, api_base: "https://x.openai.azure.com", api_key: k, api_version: "2024-10-21"}
    model_info: {base_model: azure/some-model-nobody-prices}
"#;
    let config = config::load(Source::Text(yaml), &Overrides::default()).unwrap();
    let deployment = &config.model_list[0].deployments[0];
    assert_eq!(deployment.base_model.as_deref(), Some("azure/gpt-4o-2024-08-06"));
    let env = BTreeMap::<String, String>::new();
    let models = config.validate(&env).unwrap();
    let priced = &models[0].deployments[0].prices;
    assert_eq!(
        *priced,
        switchyard_policy::price::builtin("gpt-4o").unwrap(),
        "priced as gpt-4o"
    );
    assert_eq!(models[1].deployments[0].prices, switchyard_policy::Prices::default());
    let notices = config.notices.join("\n");
    assert!(notices.contains("model_list[1].model_info.base_model"), "{notices}");
    assert!(
        notices.contains("model_list[1].deployments[0] (`prod-exotic`)") && notices.contains("cost $0"),
        "{notices}"
    );
    assert!(!notices.contains("model_list[0].deployments[0]"), "{notices}");
}

#[test]
fn a_bedrock_model_id_becomes_the_arn_invoked() {
    let arn = "arn:aws:bedrock:eu-central-1:000000000000:application-inference-profile/a0a0a0a0a0a0";
    let doc = json!({"model_list": [{"model_name": "claude", "litellm_params": {
        "model": "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        "model_id": arn, "aws_region_name": "eu-central-1"}}]});
    let t = switchyard_gateway::litellm::translate(&doc).unwrap();
    let deployment = &t.config["model_list"][0]["deployments"][0];
    assert_eq!(
        deployment["model"], "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "{deployment}"
    );
    assert_eq!(deployment["aws_model_id"], arn, "{deployment}");
}

async fn chat(gw: &GatewayProcess, key: Option<&str>, model: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hello from litellm"}]}));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_a_litellm_config_as_it_is() {
    let redis = RedisServer::start();
    let port: u16 = redis
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let mock = MockUpstream::start().await;
    let yaml = litellm_config(&mock.root_url(), port);
    let env = env();
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gw = GatewayProcess::start_with(BIN.as_ref(), &yaml, &[], &envs);

    let (status, _, _) = chat(&gw, None, "gpt-4o").await;
    assert_eq!(status, 401, "general_settings.master_key guards the API");
    let (status, headers, body) = chat(&gw, Some(MASTER), "gpt-4o").await;
    assert_eq!(status, 200, "{body}");
    // LiteLLM's response headers come too, for clients that read them.
    for (theirs, ours) in [
        ("x-litellm-response-cost", "x-switchyard-response-cost"),
        ("x-litellm-model-id", "x-switchyard-deployment"),
        ("x-litellm-model-group", "x-switchyard-model"),
        ("x-litellm-call-id", "x-request-id"),
    ] {
        assert_eq!(headers.get(theirs), headers.get(ours), "{theirs}");
        assert!(headers.contains_key(theirs), "{theirs}: {headers:?}");
    }
    assert_eq!(headers["x-litellm-attempted-retries"], "0");
    assert!(
        headers["x-switchyard-deployment"]
            .to_str()
            .unwrap()
            .starts_with("gpt-4o/")
    );
    // The Redis entry is written once the answer has gone out.
    let mut again = chat(&gw, Some(MASTER), "gpt-4o").await.1;
    for _ in 0..400 {
        if again["x-switchyard-cache"] == "hit" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        again = chat(&gw, Some(MASTER), "gpt-4o").await.1;
    }
    assert_eq!(
        again["x-switchyard-cache"], "hit",
        "litellm_settings.cache on the router's Redis"
    );
    for model in ["claude-sonnet", "llama"] {
        let (status, _, body) = chat(&gw, Some(MASTER), model).await;
        assert_eq!(status, 200, "{model}: {body}");
    }
    // LiteLLM's /model/info lists the deployments, without their secrets.
    let info = get_json(&gw, "/v1/model/info").await;
    let rows = info["data"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{info}");
    let azure = rows
        .iter()
        .find(|r| r["litellm_params"]["model"] == "azure/gpt-4o-eu")
        .unwrap();
    assert_eq!(azure["model_name"], "gpt-4o");
    assert_eq!(azure["model_info"]["rpm"], 300);
    let text = info.to_string();
    assert!(
        !text.contains("sk-openai-test") && !text.contains("azure-test") && !text.contains("127.0.0.1"),
        "{text}"
    );
    // LiteLLM's /model_group/info: one row per group, limits summed where
    // every deployment has one.
    let groups = get_json(&gw, "/model_group/info").await;
    let gpt = groups["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["model_group"] == "gpt-4o")
        .unwrap_or_else(|| panic!("{groups}"));
    assert_eq!(gpt["providers"], json!(["azure", "openai"]), "{gpt}");
    assert_eq!(gpt["rpm"], 900, "{gpt}");
    assert!(gpt["tpm"].is_null(), "the Azure deployment declares no tpm: {gpt}");
    assert!(gpt["input_cost_per_token"].as_f64().unwrap() >= 0.0000025, "{gpt}");
    assert!(!groups.to_string().contains("127.0.0.1"), "{groups}");
    let one = get_json(&gw, "/v1/model_group/info?model_group=llama").await;
    assert_eq!(one["data"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["data"][0]["model_group"], "llama");
    let logs = gw.logs().join("\n");
    assert!(
        logs.contains("litellm_settings.success_callback"),
        "warnings are logged at start-up:\n{logs}"
    );
    assert!(!logs.contains("sk-openai-test") && !logs.contains(MASTER));
}

/// `GET path` with the master key, as JSON.
async fn get_json(gw: &GatewayProcess, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}{path}", gw.base_url()))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[test]
fn check_config_reports_what_maps_to_what() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("litellm.yaml");
    std::fs::write(&path, litellm_config("http://127.0.0.1:9", 6390)).unwrap();
    let run = |file: &Path| {
        let out = Command::new(BIN)
            .args(["check-config", "--litellm"])
            .arg(file)
            .envs(env())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = run(&path);
    assert!(ok, "{out}");
    for line in [
        "router_settings.routing_strategy -> router_settings.routing_strategy: usage-based",
        "router_settings.cooldown_time -> router_settings.cooldown_ms",
        "general_settings.master_key -> policy.master_key",
        "model_list[0].litellm_params.rpm -> model_list[gpt-4o].deployments[].rpm",
        "litellm_settings.drop_params -> model_list[*].deployments[].drop_params (anthropic and bedrock)",
        "configuration is valid: 3 models, 4 deployments",
        // A deployment nothing prices is the configuration's own warning.
        "`meta-llama/Llama-3.1-8B-Instruct`): no price is set",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    assert_eq!(
        out.matches("warning: `litellm_settings.set_verbose`").count(),
        1,
        "a warning is printed once:\n{out}"
    );
    std::fs::write(
        &path,
        "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n      api_key: k\nrouter_settings:\n  provider_budget_config: {}\n",
    )
    .unwrap();
    let (ok, out) = run(&path);
    assert!(!ok, "{out}");
    assert!(out.contains("error: router_settings.provider_budget_config"), "{out}");

    // A file in Switchyard's own format is checked as such.
    std::fs::write(
        &path,
        "model_list:\n  - model_name: a\n    deployments:\n      - {provider: mock, model: m}\n",
    )
    .unwrap();
    let (ok, out) = run(&path);
    assert!(ok, "{out}");
    assert!(out.contains("is not a LiteLLM configuration"), "{out}");
    assert!(out.contains("configuration is valid: 1 models, 1 deployments"), "{out}");
}

/// A model named without a provider goes where LiteLLM sends it, and one
/// Switchyard cannot place is refused rather than sent to OpenAI with
/// another vendor's key.
#[test]
fn models_named_without_a_provider_go_where_litellm_sends_them() {
    let provider_of = |params: Value| {
        let doc = json!({"model_list": [{"model_name": "m", "litellm_params": params}]});
        switchyard_gateway::litellm::translate(&doc)
            .map(|t| t.config["model_list"][0]["deployments"][0]["provider"].clone())
    };
    for (model, provider) in [
        ("claude-3-5-sonnet-20240620", "anthropic"),
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", "bedrock"),
        ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", "bedrock"),
        ("gpt-4o", "openai"),
        ("o3-mini", "openai"),
    ] {
        assert_eq!(provider_of(json!({"model": model})).unwrap(), provider, "{model}");
    }
    assert_eq!(
        provider_of(json!({"model": "my-local-model", "api_base": "http://127.0.0.1:8000/v1"})).unwrap(),
        "openai"
    );
    let refused = provider_of(json!({"model": "my-local-model"})).unwrap_err();
    assert!(
        refused
            .iter()
            .any(|i| i.path == "model_list[0].litellm_params.model" && i.message.contains("provider/")),
        "{refused:?}"
    );
}

/// LiteLLM reads `os.environ/` in any string parameter: addresses, versions
/// and regions come from the environment too.
#[test]
fn addresses_and_versions_are_read_from_the_environment() {
    let yaml = "model_list:\n  - model_name: a\n    litellm_params:\n      model: azure/gpt-4o\n      api_base: os.environ/TEST_AZURE_BASE\n      api_version: os.environ/TEST_AZURE_VERSION\n      api_key: k\n";
    let config = config::load(Source::Text(yaml), &Overrides::default()).unwrap();
    let env: BTreeMap<String, String> = [
        ("TEST_AZURE_BASE", "https://example.openai.azure.com"),
        ("TEST_AZURE_VERSION", "2024-10-21"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let models = config.validate(&env).unwrap();
    let d = &models[0].deployments[0];
    assert_eq!(d.api_base.as_deref(), Some("https://example.openai.azure.com"));
    assert_eq!(d.api_version.as_deref(), Some("2024-10-21"));
    let err = config.validate(&BTreeMap::new()).unwrap_err().to_string();
    assert!(
        err.contains("TEST_AZURE_VERSION") && err.contains("TEST_AZURE_BASE"),
        "{err}"
    );
}

/// What a LiteLLM file leaves unsaid behaves as LiteLLM: its cooldown
/// defaults, a stream bounded by `timeout`, the OpenAI organization billed,
/// and serving through a Redis outage when it allowed requests without its
/// database.
#[test]
fn litellm_defaults_and_settings_keep_their_meaning() {
    let doc = json!({
        "model_list": [{"model_name": "g", "litellm_params": {
            "model": "openai/gpt-4o", "api_key": "k", "timeout": 300, "organization": "org-123"}}],
        "router_settings": {"redis_host": "redis.internal"},
        "general_settings": {"allow_requests_on_db_unavailable": true}
    });
    let t = switchyard_gateway::litellm::translate(&doc).unwrap();
    let router = &t.config["router_settings"];
    assert_eq!(router["allowed_fails"], 4, "{router}");
    assert_eq!(router["cooldown_ms"], 5000, "{router}");
    let d = &t.config["model_list"][0]["deployments"][0];
    assert_eq!(d["timeouts"]["total_ms"], 300_000, "{d}");
    assert_eq!(d["timeouts"]["first_byte_ms"], 300_000, "{d}");
    // LiteLLM's timeout bounds each read of a stream too.
    assert_eq!(d["timeouts"]["idle_ms"], 300_000, "{d}");
    assert_eq!(d["headers"]["OpenAI-Organization"], "org-123", "{d}");
    assert_eq!(
        t.config["policy"]["redis"]["failure_mode"], "fail_open",
        "{}",
        t.config["policy"]
    );
    // Settings the file gives win over the defaults.
    let doc = json!({
        "model_list": [{"model_name": "g", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k",
            "timeout": 300, "stream_timeout": 10}}],
        "router_settings": {"allowed_fails": 1, "cooldown_time": 60}
    });
    let t = switchyard_gateway::litellm::translate(&doc).unwrap();
    assert_eq!(t.config["router_settings"]["allowed_fails"], 2);
    assert_eq!(t.config["router_settings"]["cooldown_ms"], 60_000);
    let timeouts = &t.config["model_list"][0]["deployments"][0]["timeouts"];
    assert_eq!(timeouts["first_byte_ms"], 10_000, "{timeouts}");
    assert_eq!(timeouts["idle_ms"], 10_000, "{timeouts}");
    // A `stream_timeout` alone bounds streams; the router's timeout still
    // bounds the whole request.
    let doc = json!({
        "model_list": [{"model_name": "g", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k",
            "stream_timeout": 10}}],
        "router_settings": {"timeout": 30}
    });
    let t = switchyard_gateway::litellm::translate(&doc).unwrap();
    let timeouts = &t.config["model_list"][0]["deployments"][0]["timeouts"];
    assert_eq!(
        (&timeouts["total_ms"], &timeouts["first_byte_ms"]),
        (&json!(30_000), &json!(10_000)),
        "{timeouts}"
    );
}

/// What LiteLLM does with a file that leaves things out: credentials come
/// from the provider's environment variable, `rpm` (else `tpm`) weighs the
/// shuffle, `cooldown_time: 0` turns cooldowns off; wildcard models come
/// over with their provider, and a bare `*` (LiteLLM guesses the provider)
/// is refused.
#[test]
fn litellm_defaults_a_file_relies_on_are_kept() {
    let doc = json!({
        "model_list": [
            {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "rpm": 600}},
            {"model_name": "gpt", "litellm_params": {"model": "azure/gpt-4o-eu", "rpm": 300}},
            {"model_name": "claude", "litellm_params": {"model": "anthropic/claude-sonnet-4-5"}},
            {"model_name": "local", "litellm_params": {"model": "openai/llama", "api_base": "http://127.0.0.1:8000/v1"}},
        ],
        "router_settings": {"cooldown_time": 0},
    });
    let t = switchyard_gateway::litellm::translate(&doc).unwrap();
    let group = |name: &str| {
        t.config["model_list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["model_name"] == name)
            .unwrap()["deployments"]
            .clone()
    };
    let gpt = group("gpt");
    assert_eq!(gpt[0]["api_key"], "os.environ/OPENAI_API_KEY", "{gpt}");
    assert_eq!(gpt[1]["api_key"], "os.environ/AZURE_API_KEY");
    assert_eq!(gpt[1]["api_base"], "os.environ/AZURE_API_BASE");
    assert_eq!(gpt[1]["api_version"], "os.environ/AZURE_API_VERSION");
    assert_eq!(
        (gpt[0]["weight"].as_f64(), gpt[1]["weight"].as_f64()),
        (Some(600.0), Some(300.0))
    );
    assert_eq!(group("claude")[0]["api_key"], "os.environ/ANTHROPIC_API_KEY");
    assert!(
        group("local")[0].get("api_key").is_none(),
        "a local server needs no key"
    );
    assert_eq!(t.config["router_settings"]["cooldown_ms"], 1);

    let wildcard = json!({"model_list": [
        {"model_name": "openai/*", "litellm_params": {"model": "openai/*"}},
        {"model_name": "claude-*", "litellm_params": {"model": "anthropic/claude-*"}},
    ]});
    let t = switchyard_gateway::litellm::translate(&wildcard).unwrap();
    let groups = t.config["model_list"].as_array().unwrap();
    assert_eq!(groups[0]["model_name"], "openai/*");
    assert_eq!(
        (
            groups[0]["deployments"][0]["provider"].as_str(),
            groups[0]["deployments"][0]["model"].as_str()
        ),
        (Some("openai"), Some("*"))
    );
    assert_eq!(groups[1]["deployments"][0]["model"], "claude-*");
    let bare = json!({"model_list": [{"model_name": "*", "litellm_params": {"model": "*"}}]});
    let err: String = switchyard_gateway::litellm::translate(&bare)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        err.contains("model_list[0].litellm_params.model") && err.contains("openai/*"),
        "{err}"
    );
}

/// LiteLLM's OpenAI-compatible services (`groq/`, `mistral/`, `openrouter/`,
/// `gemini/`, …) become OpenAI-protocol deployments at the service's
/// address, with the key from the variable LiteLLM reads; an `api_base` in
/// the file is taken as it is.
#[test]
fn hosted_openai_compatible_services_come_over() {
    let deployment = |params: Value| {
        let doc = json!({"model_list": [{"model_name": "m", "litellm_params": params}]});
        switchyard_gateway::litellm::translate(&doc).map(|t| t.config["model_list"][0]["deployments"][0].clone())
    };
    for (model, upstream, base, key) in [
        (
            "groq/llama-3.1-8b-instant",
            "llama-3.1-8b-instant",
            "https://api.groq.com/openai/v1",
            "GROQ_API_KEY",
        ),
        (
            "mistral/mistral-large-latest",
            "mistral-large-latest",
            "https://api.mistral.ai/v1",
            "MISTRAL_API_KEY",
        ),
        (
            "openrouter/anthropic/claude-3.5-sonnet",
            "anthropic/claude-3.5-sonnet",
            "https://openrouter.ai/api/v1",
            "OPENROUTER_API_KEY",
        ),
        (
            "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "https://api.together.xyz/v1",
            "TOGETHER_API_KEY",
        ),
        (
            "deepseek/deepseek-chat",
            "deepseek-chat",
            "https://api.deepseek.com/beta",
            "DEEPSEEK_API_KEY",
        ),
        (
            "gemini/gemini-2.0-flash",
            "gemini-2.0-flash",
            "https://generativelanguage.googleapis.com/v1beta/openai",
            "GEMINI_API_KEY",
        ),
        ("xai/grok-3-mini", "grok-3-mini", "https://api.x.ai/v1", "XAI_API_KEY"),
    ] {
        let d = deployment(json!({"model": model})).unwrap();
        assert_eq!(d["provider"], "openai", "{model}: {d}");
        assert_eq!(d["model"], upstream, "{model}: {d}");
        assert_eq!(d["api_base"], base, "{model}: {d}");
        assert_eq!(d["api_key"], format!("os.environ/{key}"), "{model}: {d}");
    }
    // The file's own address and key win, and the address is not altered.
    let d = deployment(json!({
        "model": "groq/llama-3.1-8b-instant",
        "api_base": "http://127.0.0.1:7000/openai/v1",
        "api_key": "os.environ/MY_GROQ_KEY",
    }))
    .unwrap();
    assert_eq!(d["api_base"], "http://127.0.0.1:7000/openai/v1", "{d}");
    assert_eq!(d["api_key"], "os.environ/MY_GROQ_KEY", "{d}");
    // Ollama's address still gains `/v1`, as LiteLLM's does.
    let d = deployment(json!({"model": "ollama/llama3", "api_base": "http://127.0.0.1:11434"})).unwrap();
    assert_eq!(d["api_base"], "http://127.0.0.1:11434/v1", "{d}");
    let refused = deployment(json!({"model": "vertex_ai/gemini-2.0-flash"})).unwrap_err();
    assert!(
        refused
            .iter()
            .any(|i| i.message.contains("`vertex_ai` is not supported") && i.message.contains("groq")),
        "{refused:?}"
    );
}

/// A `groq/` deployment answers through the gateway, reading its key from
/// `GROQ_API_KEY` as LiteLLM does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_service_is_reached_with_its_own_key() {
    let mock = MockUpstream::start().await;
    let yaml = format!(
        "model_list:\n  - model_name: fast\n    litellm_params:\n      model: groq/llama-3.1-8b-instant\n      api_base: {}/v1\ngeneral_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\n",
        mock.root_url()
    );
    let gw = GatewayProcess::start_with(
        BIN.as_ref(),
        &yaml,
        &[],
        &[("GROQ_API_KEY", "gsk-test-0001"), ("LITELLM_MASTER_KEY", MASTER)],
    );
    let (status, _, body) = chat(&gw, Some(MASTER), "fast").await;
    assert_eq!(status, 200, "{body}");
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.body["model"], "llama-3.1-8b-instant");
    assert_eq!(seen.header("authorization"), Some("Bearer gsk-test-0001"));
    assert!(!gw.logs().join("\n").contains("gsk-test-0001"));
}

/// Logging callbacks: `langfuse` becomes span export to Langfuse with the
/// prompts and answers (unless `turn_off_message_logging`), `otel` span
/// export where the standard variables say; others are warned about.
#[tokio::test]
async fn langfuse_and_otel_callbacks_become_span_export() {
    let doc = |settings: Value| {
        json!({
            "model_list": [{"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k"}}],
            "litellm_settings": settings,
        })
    };
    let t = switchyard_gateway::litellm::translate(&doc(json!({
        "success_callback": ["langfuse", "datadog"],
        "failure_callback": ["langfuse"],
        "turn_off_message_logging": true,
    })))
    .unwrap();
    assert_eq!(
        t.config["telemetry"]["otlp"],
        json!({
            "endpoint": "{os.environ/LANGFUSE_HOST:-https://cloud.langfuse.com}/api/public/otel",
            "protocol": "http/protobuf",
            "basic_auth": {"username": "os.environ/LANGFUSE_PUBLIC_KEY", "password": "os.environ/LANGFUSE_SECRET_KEY"},
            "capture_content": false,
        })
    );
    assert!(
        t.warnings.iter().any(|w| w.contains("success_callback: datadog")),
        "{:?}",
        t.warnings
    );
    let t = switchyard_gateway::litellm::translate(&doc(json!({"callbacks": ["otel"]}))).unwrap();
    assert_eq!(t.config["telemetry"]["otlp"], json!({}));
    // Both named: Langfuse takes the spans, in either order, and the
    // collector's loss is said.
    for settings in [
        json!({"callbacks": ["otel"], "success_callback": ["langfuse"]}),
        json!({"success_callback": ["langfuse"], "callbacks": ["otel"]}),
    ] {
        let t = switchyard_gateway::litellm::translate(&doc(settings)).unwrap();
        assert!(
            t.config["telemetry"]["otlp"].get("basic_auth").is_some(),
            "{}",
            t.config
        );
        assert!(
            t.warnings.iter().any(|w| w.contains("otel") && w.contains("Langfuse")),
            "{:?}",
            t.warnings
        );
        assert!(
            !t.mapped.iter().any(|(key, _)| key.ends_with(": otel")),
            "{:?}",
            t.mapped
        );
    }
    let t = switchyard_gateway::litellm::translate(&doc(json!({"success_callback": ["langfuse"]}))).unwrap();
    assert_eq!(t.config["telemetry"]["otlp"]["capture_content"], true);
    // Without Langfuse's keys, start-up names them (its address defaults
    // to Langfuse Cloud, as in LiteLLM).
    let yaml = "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n      api_key: k\nlitellm_settings:\n  success_callback: [langfuse]\n";
    let config = config::load(Source::Text(yaml), &Overrides::default()).unwrap();
    let err = match build_state(&config, &BTreeMap::new()) {
        Ok(_) => panic!("started without Langfuse's variables"),
        Err(e) => e.to_string(),
    };
    for name in ["LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"] {
        assert!(err.contains(name), "{err}");
    }
}

/// Servers of one's own never fall back to OpenAI's address with an
/// OpenAI key: `hosted_vllm/` and `lm_studio/` without `api_base` read the
/// variable LiteLLM reads, `llamafile/` its default address, `openai_like/`
/// and `custom_openai/` need one; an Anthropic `api_base` holding the whole
/// endpoint loses `/v1/messages`.
#[test]
fn servers_of_ones_own_are_never_sent_to_openai() {
    let deployment = |params: Value| {
        let doc = json!({"model_list": [{"model_name": "m", "litellm_params": params}]});
        switchyard_gateway::litellm::translate(&doc).map(|t| t.config["model_list"][0]["deployments"][0].clone())
    };
    for (model, base) in [
        (
            "hosted_vllm/meta-llama/Llama-3.1-8B-Instruct",
            "os.environ/HOSTED_VLLM_API_BASE",
        ),
        ("vllm/qwen", "os.environ/HOSTED_VLLM_API_BASE"),
        ("lm_studio/qwen2.5", "os.environ/LM_STUDIO_API_BASE"),
        ("llamafile/mistral", "http://127.0.0.1:8080/v1"),
        (
            "ollama/llama3",
            "{os.environ/OLLAMA_API_BASE:-http://localhost:11434}/v1",
        ),
    ] {
        let d = deployment(json!({"model": model})).unwrap();
        assert_eq!(d["provider"], "openai", "{model}: {d}");
        assert_eq!(d["api_base"], base, "{model}: {d}");
        assert!(d.get("api_key").is_none(), "{model}: no OpenAI key: {d}");
    }
    for model in ["openai_like/m", "custom_openai/m"] {
        let refused = deployment(json!({"model": model})).unwrap_err();
        assert!(
            refused
                .iter()
                .any(|i| i.message.contains("api_base") && i.message.contains("required")),
            "{refused:?}"
        );
        let d = deployment(json!({"model": model, "api_base": "http://10.0.0.5:9000/v1"})).unwrap();
        assert_eq!(d["api_base"], "http://10.0.0.5:9000/v1");
    }
    let d = deployment(json!({"model": "anthropic/claude-sonnet-4-5", "api_key": "k",
        "api_base": "https://llm-proxy.corp/v1/messages"}))
    .unwrap();
    assert_eq!(d["api_base"], "https://llm-proxy.corp", "{d}");
}

/// Ollama's address, which LiteLLM reads from `OLLAMA_API_BASE` (or an
/// `api_base` from the environment) without `/v1`, gains `/v1` as one
/// written in the file does.
#[test]
fn ollamas_address_from_the_environment_gains_v1() {
    let base = |params: Value, env: &[(&str, &str)]| {
        let doc = json!({"model_list": [{"model_name": "m", "litellm_params": params}]});
        let translated = switchyard_gateway::litellm::translate(&doc).unwrap();
        let yaml = translated.config.to_string();
        let config = config::load(Source::Text(&yaml), &Overrides::default()).unwrap();
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let specs = config.validate(&env).unwrap();
        specs[0].deployments[0].api_base.clone().unwrap_or_default()
    };
    let named = json!({"model": "ollama/llama3", "api_base": "os.environ/MY_OLLAMA"});
    assert_eq!(
        base(named.clone(), &[("MY_OLLAMA", "http://ollama:11434")]),
        "http://ollama:11434/v1"
    );
    assert_eq!(
        base(named, &[("MY_OLLAMA", "http://ollama:11434/")]),
        "http://ollama:11434/v1"
    );
    let unnamed = json!({"model": "ollama_chat/llama3"});
    assert_eq!(
        base(unnamed.clone(), &[("OLLAMA_API_BASE", "http://gpu-box:11434")]),
        "http://gpu-box:11434/v1"
    );
    assert_eq!(base(unnamed, &[]), "http://localhost:11434/v1");
    // Another local server's address from the environment is taken as it is.
    let llamafile = json!({"model": "llamafile/m", "api_base": "os.environ/LLAMAFILE_BASE"});
    assert_eq!(
        base(llamafile, &[("LLAMAFILE_BASE", "http://h:8080/v1")]),
        "http://h:8080/v1"
    );
}

/// A callback that may check or change requests (a guardrail such as
/// `presidio`, a custom handler) is refused: dropping it would let through
/// what it stops. Logging sinks are warned about.
#[test]
fn guardrail_callbacks_are_refused_and_logging_ones_warned_about() {
    let doc = |settings: Value| {
        json!({
            "model_list": [{"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k"}}],
            "litellm_settings": settings,
        })
    };
    for settings in [
        json!({"callbacks": ["presidio"]}),
        json!({"callbacks": ["datadog", "detect_prompt_injection"]}),
        json!({"callbacks": "custom_callbacks.proxy_handler_instance"}),
    ] {
        let refused = switchyard_gateway::litellm::translate(&doc(settings.clone())).unwrap_err();
        assert!(
            refused.iter().any(|i| i.message.contains("change what is allowed")),
            "{settings}: {refused:?}"
        );
    }
    // An empty key (its entries commented out) names nothing to refuse.
    assert!(switchyard_gateway::litellm::translate(&doc(json!({"callbacks": null}))).is_ok());
    let t = switchyard_gateway::litellm::translate(&doc(json!({"callbacks": ["datadog", "prometheus", "pagerduty"]})))
        .unwrap();
    assert!(
        t.warnings.iter().any(|w| w.contains("callbacks: datadog")),
        "{:?}",
        t.warnings
    );
}

/// Prices in `model_info` (LiteLLM's cost data) are kept, the deployment's
/// own winning; a transcription deployment named otherwise keeps its
/// per-second price by its `mode`; bare audio and image model names are
/// OpenAI's.
#[test]
fn model_info_prices_and_bare_media_models_come_over() {
    let doc = json!({
        "model_list": [
            {"model_name": "img", "litellm_params": {"model": "dall-e-3", "api_key": "k"},
             "model_info": {"output_cost_per_image": 0.04}},
            {"model_name": "stt", "litellm_params": {"model": "azure/stt-prod", "api_key": "k",
                "api_base": "https://x.openai.azure.com", "api_version": "2024-10-21", "input_cost_per_second": 0.0001},
             "model_info": {"mode": "audio_transcription"}},
            {"model_name": "whisper", "litellm_params": {"model": "whisper-1", "api_key": "k"}},
            {"model_name": "chat", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k", "input_cost_per_token": 0.000002},
             "model_info": {"input_cost_per_token": 0.000009, "cache_read_input_token_cost": 0.000001}}
        ]
    });
    let t = switchyard_gateway::litellm::translate(&doc).unwrap();
    let deployment = |name: &str| {
        t.config["model_list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["model_name"] == name)
            .unwrap()["deployments"][0]
            .clone()
    };
    let img = deployment("img");
    assert_eq!(
        (&img["provider"], &img["output_cost_per_image"]),
        (&json!("openai"), &json!(0.04)),
        "{img}"
    );
    assert_eq!(deployment("stt")["input_cost_per_second"], 0.0001);
    assert_eq!(deployment("whisper")["provider"], "openai");
    let chat = deployment("chat");
    assert_eq!(chat["input_cost_per_token"], 0.000002, "{chat}");
    assert_eq!(chat["cache_read_input_token_cost"], 0.000001, "{chat}");
}

/// A problem with a LiteLLM file's deployment names the entry as the file
/// has it, though entries of one `model_name` become one group.
#[test]
fn problems_name_the_files_own_entries() {
    let yaml = r#"
model_list:
  - model_name: gpt-4o
    litellm_params: {model: openai/gpt-4o, api_key: os.environ/OPENAI_API_KEY}
  - model_name: claude
    litellm_params: {model: anthropic/claude-sonnet-4-5, api_key: os.environ/ANTHROPIC_API_KEY}
  - model_name: gpt-4o
    litellm_params: {model: azure/gpt-4o, api_base: "https://x.openai.azure.com", api_key: os.environ/AZURE_API_KEY, api_version: "2024-10-21"}
"#;
    let config = config::load(Source::Text(yaml), &Overrides::default()).unwrap();
    let env: BTreeMap<String, String> = [("OPENAI_API_KEY", "k"), ("ANTHROPIC_API_KEY", "k")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let err = config.validate(&env).unwrap_err().to_string();
    assert!(
        err.contains("model_list[2].litellm_params.api_key: environment variable `AZURE_API_KEY` is not set"),
        "{err}"
    );
    let env: BTreeMap<String, String> = [("OPENAI_API_KEY", "k"), ("AZURE_API_KEY", "k")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let err = config.validate(&env).unwrap_err().to_string();
    assert!(
        err.contains("model_list[1].litellm_params.api_key: environment variable `ANTHROPIC_API_KEY` is not set"),
        "{err}"
    );
}
