use std::collections::BTreeMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn parse(yaml: &str) -> Result<Config, ConfigError> {
    load(Source::Text(yaml), &Overrides::default())
}

#[test]
fn embedded_default_is_valid_and_mock_only() {
    let config = load(Source::Embedded, &Overrides::default()).unwrap();
    let models = config.validate(&env(&[])).unwrap();
    assert!(!models.is_empty());
    assert!(
        models
            .iter()
            .flat_map(|m| &m.deployments)
            .all(|d| d.provider == ProviderKind::Mock)
    );
    assert_eq!(config.server.host, "127.0.0.1");
}

#[test]
fn unknown_keys_fail_naming_the_key() {
    let err = parse("model_list:\n  - model_name: a\n    deployments:\n      - provider: mock\n        model: m\n        temprature: 1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("temprature"), "{err}");
    assert!(err.contains("model_list.0.deployments.0"), "{err}");
    let err = parse("sever:\n  port: 1\n").unwrap_err().to_string();
    assert!(err.contains("sever"), "{err}");
}

#[test]
fn invalid_values_are_reported_with_their_path() {
    let config = parse(
        "model_list:\n  - model_name: a\n    deployments:\n      - provider: azure\n        model: d\n        weight: -1\n        api_key: os.environ/MISSING_KEY\n  - model_name: a\n    deployments:\n      - provider: openai\n        model: x\n        api_base: not a url\n        timeouts: {total_ms: 0}\n",
    )
    .unwrap();
    let err = config.validate(&env(&[])).unwrap_err().to_string();
    for expected in [
        "model_list[0].deployments[0].api_base: is required for azure",
        "model_list[0].deployments[0].api_version: is required for azure",
        "model_list[0].deployments[0].weight",
        "model_list[0].deployments[0].api_key: environment variable `MISSING_KEY` is not set",
        "model_list[1].model_name: `a` is listed more than once",
        "model_list[1].deployments[0].api_base",
        "model_list[1].deployments[0].timeouts.total_ms",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn an_azure_address_holding_the_path_the_gateway_adds_is_refused() {
    let yaml = |base: &str| {
        format!(
            "model_list:\n  - model_name: a\n    deployments:\n      - {{provider: azure, model: d, api_base: '{base}', api_version: v1, api_key: k, timeouts: {{idle_ms: 0}}}}\n"
        )
    };
    for base in [
        "https://r.openai.azure.com/openai/v1",
        "https://r.openai.azure.com/openai/deployments/d/chat/completions",
        "https://r.openai.azure.com/?api-version=2024-10-21",
    ] {
        let err = parse(&yaml(base)).unwrap().validate(&env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("model_list[0].deployments[0].api_base: must"),
            "{base}: {err}"
        );
        assert!(err.contains("timeouts.idle_ms"), "{err}");
    }
    // The resource, or a proxy in front of it, whatever its path.
    for base in [
        "https://r.openai.azure.com",
        "https://apim.example.com/llm/",
        "https://llm.corp.example/openai/eastus/",
    ] {
        let config = parse(&yaml(base).replace("idle_ms: 0", "idle_ms: 1000")).unwrap();
        assert!(config.validate(&env(&[])).is_ok(), "{base}");
    }
}

/// Endpoint paths go after `api_base`: a query there, or an endpoint's
/// own path, would send every call to an address that does not exist.
#[test]
fn an_address_with_a_query_or_an_endpoint_path_is_refused() {
    let yaml = |provider: &str, base: &str| {
        format!(
            "model_list:\n  - model_name: a\n    deployments:\n      - {{provider: {provider}, model: d, api_base: '{base}', api_version: v1, api_key: k}}\n"
        )
    };
    for (provider, base, says) in [
        ("openai", "https://gw.example/v1?key=K", "holds a query"),
        ("openai", "https://gw.example/v1/chat/completions", "names an endpoint"),
        ("openai", "http://127.0.0.1:8000/v1/completions/", "names an endpoint"),
        (
            "azure",
            "https://apim.example.com/llm?subscription-key=K",
            "holds a query",
        ),
    ] {
        let yaml = yaml(provider, base);
        let yaml = if provider == "openai" {
            yaml.replace(", api_version: v1", "")
        } else {
            yaml
        };
        let err = parse(&yaml).unwrap().validate(&env(&[])).unwrap_err().to_string();
        assert!(
            err.contains(&format!("model_list[0].deployments[0].api_base: {says}")),
            "{base}: {err}"
        );
        assert!(!err.contains("K"), "the value is not shown: {err}");
    }
    for base in [
        "https://gw.example/v1",
        "http://127.0.0.1:8000/v1/",
        "https://api.example/openai/v1",
    ] {
        let yaml = yaml("openai", base).replace(", api_version: v1", "");
        assert!(parse(&yaml).unwrap().validate(&env(&[])).is_ok(), "{base}");
    }
}

#[test]
fn an_alias_names_an_existing_group_and_is_not_one_itself() {
    let config = parse(
        "model_list:\n  - model_name: a\n    fallbacks: [old-a]\n    deployments:\n      - {provider: mock, model: a}\n  - model_name: b\n    deployments:\n      - {provider: mock, model: b}\nrouter_settings:\n  model_group_alias:\n    old-a: a\n    b: a\n    twice: old-a\n    nowhere: {model: c, hidden: true}\n    fine: {model: b}\n",
    )
    .unwrap();
    let err = config.validate(&env(&[])).unwrap_err().to_string();
    for expected in [
        "router_settings.model_group_alias.b: `b` is a model_name in model_list already",
        "router_settings.model_group_alias.twice: `old-a` is an alias itself",
        "router_settings.model_group_alias.nowhere: `c` is not a model_name in model_list",
        "model_list[0].fallbacks[0]: `old-a` is an alias; name its group `a`",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    assert!(!err.contains("model_group_alias.old-a"), "{err}");
    assert!(!err.contains("model_group_alias.fine"), "{err}");
    assert!(!err.contains("`old-a` is not a model_name"), "{err}");
}

#[test]
fn an_access_group_is_not_named_like_a_model_or_an_alias() {
    let config = parse(
        "model_list:\n  - model_name: a\n    access_groups: [b, old-a, ' spaced', beta]\n    deployments:\n      - {provider: mock, model: a}\n  - model_name: b\n    access_groups: [beta]\n    deployments:\n      - {provider: mock, model: b}\nrouter_settings:\n  model_group_alias: {old-a: a}\n",
    )
    .unwrap();
    let err = config.validate(&env(&[])).unwrap_err().to_string();
    for expected in [
        "model_list[0].access_groups[0]: `b` is a model_name",
        "model_list[0].access_groups[1]: `old-a` is an alias",
        "model_list[0].access_groups[2]: an access group must be a name",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    assert!(
        !err.contains("access_groups[3]") && !err.contains("model_list[1]"),
        "{err}"
    );
    assert_eq!(config.key_model_names(), [" spaced", "a", "b", "beta", "old-a"]);
}

#[test]
fn a_wildcard_group_names_a_family_of_models_and_nothing_points_at_it() {
    let config = parse(
        "model_list:\n  - model_name: 'openai/*'\n    deployments:\n      - {provider: openai, model: '*', api_key: k}\n      - {provider: azure, model: 'x*', api_base: 'https://a.openai.azure.com', api_version: '2024-10-21', api_key: k}\n      - {provider: openai, model: 'a*b*', api_key: k}\n  - model_name: '*-*'\n    deployments:\n      - {provider: mock, model: m}\n  - model_name: plain\n    fallbacks: ['openai/*']\n    deployments:\n      - {provider: openai, model: 'gpt-*', api_key: k}\nrouter_settings:\n  model_group_alias: {any: 'openai/*'}\n",
    )
    .unwrap();
    let err = config.validate(&env(&[])).unwrap_err().to_string();
    for expected in [
        "model_list[0].deployments[1].model: only openai, anthropic and mock deployments",
        "model_list[0].deployments[2].model: a wildcard model holds one `*`",
        "model_list[1].model_name: a wildcard name holds one `*`",
        "model_list[2].fallbacks[0]: `openai/*` is a wildcard group",
        "model_list[2].deployments[0].model: `*` stands for part of the model asked for",
        "router_settings.model_group_alias.any: `openai/*` is a wildcard group",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    assert!(!err.contains("model_list[0].deployments[0]"), "{err}");
    let config = parse(
        "model_list:\n  - model_name: 'team/*'\n    deployments:\n      - {provider: openai, model: '*', api_key: k}\n  - model_name: plain\n    access_groups: [team/beta]\n    deployments:\n      - {provider: mock, model: m}\n",
    )
    .unwrap();
    let err = config.validate(&env(&[])).unwrap_err().to_string();
    assert!(
        err.contains("model_list[1].access_groups[0]: `team/beta` is a model the wildcard group `team/*` serves"),
        "{err}"
    );
    assert!(switchyard_policy::key::names_model("openai/*", "openai/gpt-4o"));
    assert!(!switchyard_policy::key::names_model("openai/*", "openai/"));
    assert!(!switchyard_policy::key::names_model("openai/*", "azure/gpt-4o"));
    assert!(switchyard_policy::key::names_model("gpt-4o", "gpt-4o"));
}

#[test]
fn kept_responses_in_redis_need_the_policy_redis_and_drop_params_its_providers() {
    let config = parse(
        "server:\n  responses_store: redis\n  responses_ttl_seconds: 0\nmodel_list:\n  - model_name: a\n    deployments:\n      - provider: openai\n        model: m\n        api_base: http://127.0.0.1:9/v1\n        drop_params: true\n",
    )
    .unwrap();
    let err = config.validate(&env(&[])).unwrap_err().to_string();
    for expected in [
        "server.responses_store: `redis` keeps responses in the policy's Redis: set policy.redis",
        "server.responses_ttl_seconds: must be from 1",
        "model_list[0].deployments[0].drop_params: is only used by anthropic and bedrock",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn secrets_resolve_from_the_environment_and_never_print() {
    let config = parse(
        "model_list:\n  - model_name: a\n    deployments:\n      - provider: openai\n        model: gpt\n        api_base: http://127.0.0.1:9/v1\n        api_key: os.environ/TEST_KEY\n",
    )
    .unwrap();
    let models = config.validate(&env(&[("TEST_KEY", "sk-secret-value")])).unwrap();
    let key = models[0].deployments[0].api_key.clone().unwrap();
    assert_eq!(key.expose(), "sk-secret-value");
    assert!(!format!("{:?}", models).contains("sk-secret-value"));
}

#[test]
fn an_empty_credential_fails_at_load() {
    let config = parse(
        "model_list:\n  - model_name: a\n    deployments:\n      - provider: openai\n        model: gpt\n        api_base: http://127.0.0.1:9/v1\n        api_key: os.environ/TEST_KEY\n",
    )
    .unwrap();
    let err = config.validate(&env(&[("TEST_KEY", "")])).unwrap_err().to_string();
    assert!(
        err.contains("model_list[0].deployments[0].api_key: environment variable `TEST_KEY` is empty"),
        "{err}"
    );
}

/// A per-model limit naming no model would never apply, and an alias
/// names one key: both are refused in the file as through the admin API.
#[test]
fn declared_limits_name_models_and_aliases_name_one_key() {
    let yaml = "policy:
  teams:
    - {team_id: t, model_tpm_limit: {gpt-4o: 100}}
  keys:
    - {key: sk-declared-key-0001, key_alias: notebooks, model_rpm_limit: {gpt4o: 10}}
    - {key: sk-declared-key-0002, key_alias: notebooks, model_rpm_limit: {a: 10}}
model_list:
  - model_name: a
    deployments:
      - {provider: mock, model: m}
";
    let err = crate::build_state(&parse(yaml).unwrap(), &env(&[]))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("policy.teams[0].model_tpm_limit.gpt-4o"), "{err}");
    assert!(err.contains("policy.keys[0].model_rpm_limit.gpt4o"), "{err}");
    assert!(!err.contains("model_rpm_limit.a"), "{err}");
    assert!(
        err.contains("policy.keys[1].key_alias: `notebooks` is another key's alias"),
        "{err}"
    );
}

#[test]
fn a_declared_key_expires_at_a_time_not_after_a_duration() {
    let yaml = |field: &str| {
        format!(
            "policy:\n  keys:\n    - key: sk-declared-key-0001\n      {field}\nmodel_list:\n  - model_name: a\n    deployments:\n      - {{provider: mock, model: m}}\n"
        )
    };
    let check = |field: &str| crate::build_state(&parse(&yaml(field)).unwrap(), &env(&[])).map(|_| ());
    let err = check("duration: 30d").unwrap_err().to_string();
    assert!(
        err.contains("policy.keys[0].duration") && err.contains("expires"),
        "{err}"
    );
    let err = check("expires: next week").unwrap_err().to_string();
    assert!(err.contains("policy.keys[0].expires"), "{err}");
    assert!(check("expires: 2027-01-01T00:00:00Z").is_ok());
}

#[test]
fn fallback_and_candidate_names_are_kept_trimmed() {
    let config = parse(
        "model_list:\n  - model_name: a\n    fallbacks: [\"b \"]\n    deployments:\n      - {provider: mock, model: m}\n  - model_name: b\n    deployments:\n      - {provider: mock, model: m}\n",
    )
    .unwrap();
    let models = config.validate(&env(&[])).unwrap();
    assert_eq!(models[0].fallbacks, vec!["b".to_owned()]);
}

#[test]
fn overrides_win_over_the_file() {
    let config = load(
        Source::Text("server:\n  port: 5000\nmodel_list: []\n"),
        &Overrides {
            host: Some("0.0.0.0".into()),
            port: Some(6000),
        },
    )
    .unwrap();
    assert_eq!(config.server.port, 6000);
    assert_eq!(config.server.host, "0.0.0.0");
    assert!(
        config
            .validate(&env(&[]))
            .unwrap_err()
            .to_string()
            .contains("model_list: must list at least one model")
    );
}

#[test]
fn missing_file_is_an_error() {
    let err = load(
        Source::File(Path::new("/nonexistent/switchyard.yaml")),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/switchyard.yaml"));
}

#[test]
fn shipped_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let env = env(&[
        ("OPENAI_API_KEY", "k"),
        ("OPENAI_API_KEY_2", "k"),
        ("AZURE_API_KEY", "k"),
        ("AZURE_API_KEY_EASTUS2", "k"),
        ("ANTHROPIC_API_KEY", "k"),
        ("BEDROCK_ACCESS_KEY_ID", "k"),
        ("BEDROCK_SECRET_ACCESS_KEY", "k"),
    ]);
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let config =
            load(Source::File(&path), &Overrides::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        config
            .validate(&env)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Its opening comment names every variable it reads, and every
        // deployment has a price: it starts, and without warnings.
        let text = std::fs::read_to_string(&path).unwrap();
        let header: Vec<&str> = text.lines().take_while(|l| l.starts_with('#')).collect();
        let read = text.lines().filter(|l| !l.trim_start().starts_with('#'));
        for rest in read.flat_map(|l| l.split("os.environ/").skip(1)) {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                header.iter().any(|l| l.contains(&name)),
                "{}: its opening comment does not say to set {name}",
                path.display()
            );
        }
        assert_eq!(unpriced_notices(&config), Vec::<String>::new(), "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 5, "expected the default and four examples, found {checked}");
}

#[test]
fn provider_specific_keys_are_checked() {
    let config = parse(
        "model_list:\n  - model_name: a\n    deployments:\n      - provider: bedrock\n        model: m\n        aws_access_key_id: os.environ/ID\n        aws_model_id: \" \"\n      - provider: openai\n        model: m\n        aws_region: us-east-1\n        aws_model_id: arn\n        default_max_tokens: 5\n      - provider: anthropic\n        model: m\n        default_max_tokens: 0\n        max_output_tokens: 100\n      - provider: openai\n        model: m\n        max_output_tokens: 0\n",
    )
    .unwrap();
    let err = config.validate(&env(&[("ID", "x")])).unwrap_err().to_string();
    for expected in [
        "model_list[0].deployments[0].aws_region: is required for bedrock",
        "model_list[0].deployments[0].aws_secret_access_key: aws_access_key_id and aws_secret_access_key go together",
        "model_list[0].deployments[1].aws_region: is only used by bedrock",
        "model_list[0].deployments[0].aws_model_id: is empty",
        "model_list[0].deployments[1].aws_model_id: is only used by bedrock",
        "model_list[0].deployments[1].default_max_tokens: is only used by anthropic and bedrock",
        "model_list[0].deployments[2].default_max_tokens: must be greater than 0",
        "model_list[0].deployments[2].max_output_tokens: is only used by openai and azure",
        "model_list[0].deployments[3].max_output_tokens: must be greater than 0",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    let ok = parse("model_list:\n  - model_name: a\n    deployments:\n      - provider: bedrock\n        model: m\n")
        .unwrap();
    let models = ok.validate(&env(&[("AWS_REGION", "eu-west-1")])).unwrap();
    assert_eq!(models[0].deployments[0].aws_region.as_deref(), Some("eu-west-1"));
}

#[test]
fn learned_router_groups_are_validated() {
    let config = parse(
        r#"
model_list:
  - model_name: auto
    routing_strategy: least-busy
    fallbacks: [a]
    router:
      artifact: s3://bucket/routers/auto/
      objective: threshold
      candidates: {gpt: nowhere, claude: auto2}
      s3: {endpoint_url: "not a url"}
    deployments:
      - {provider: mock, model: m}
  - model_name: auto2
    router: {artifact: "", lambda: -1, min_score: 0.5}
  - model_name: a
    fallbacks: [auto2]
    deployments:
      - {provider: mock, model: m}
"#,
    )
    .unwrap();
    let err = config.validate(&env(&[])).unwrap_err().to_string();
    for expected in [
        "model_list[0].deployments: a group with a `router`",
        "model_list[0].routing_strategy: is not used by a group with a `router`",
        "model_list[0].fallbacks: a learned router falls back down its ranking",
        "model_list[0].router.min_score: is required by the threshold objective",
        "model_list[0].router.s3.endpoint_url",
        "model_list[0].router.candidates.gpt: `nowhere` is not a model_name",
        "model_list[0].router.candidates.claude: `auto2` is a learned-router group",
        "model_list[1].router.artifact: must not be empty",
        "model_list[1].router.lambda: -1 is not a non-negative number",
        "model_list[1].router.min_score: is only used by the threshold objective",
        "model_list[2].fallbacks[0]: `auto2` is a learned-router group",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }

    let config = parse(
        "model_list:\n  - model_name: auto\n    router: {artifact: \"s3://bucket/routers/auto/\", objective: threshold, min_score: 0.8, poll_interval_ms: 0}\n  - model_name: a\n    deployments:\n      - {provider: mock, model: m}\n",
    )
    .unwrap();
    let models = config.validate(&env(&[])).unwrap();
    let spec = models[0].router.clone().unwrap();
    assert_eq!(
        spec.location,
        ArtifactLocation::S3 {
            bucket: "bucket".into(),
            prefix: "routers/auto".into()
        }
    );
    assert_eq!(
        spec.objective,
        switchyard_routing::learned::Objective::Threshold { min_score: 0.8 }
    );
    assert_eq!(spec.poll_interval, None);
    assert!(models[0].deployments.is_empty());
}

#[test]
fn the_learned_router_example_is_valid() {
    let config = parse(include_str!("../../../../config/learned.example.yaml")).unwrap();
    let models = config.validate(&env(&[("OPENAI_API_KEY", "sk-test")])).unwrap();
    let router = models[0].router.clone().unwrap();
    assert_eq!(router.location, ArtifactLocation::Local("models/routers/auto".into()));
    assert_eq!(router.candidates["gpt-4-1106-preview"], "gpt-4");
}

#[test]
fn settings_a_provider_ignores_are_refused() {
    let config = parse(
        "model_list:\n  - model_name: a\n    deployments:\n      - provider: bedrock\n        model: anthropic.claude-3-5-sonnet-20240620-v1:0\n        aws_region: us-east-1\n        api_key: sk-not-for-bedrock\n      - provider: mock\n        model: m\n        headers: {x-a: b}\n",
    )
    .unwrap();
    let err = config.validate(&env(&[])).unwrap_err().to_string();
    assert!(
        err.contains("model_list[0].deployments[0].api_key: is not used by bedrock"),
        "{err}"
    );
    assert!(err.contains("model_list[0].deployments[1].headers"), "{err}");
}

#[test]
fn cors_origins_are_origins() {
    let models = "model_list:\n  - model_name: a\n    deployments:\n      - {provider: mock, model: m}\n";
    let with = |origins: &str| parse(&format!("server:\n  cors_allowed_origins: {origins}\n{models}")).unwrap();
    let err =
        with("[\"https://app.example.com/path\", \"app.example.com\", \"ftp://x.example\", \"https://u@x.example\"]")
            .validate(&env(&[]))
            .unwrap_err()
            .to_string();
    for i in 0..4 {
        assert!(
            err.contains(&format!("server.cors_allowed_origins[{i}]: must be an origin")),
            "{i}: {err}"
        );
    }
    let err = with("[\"*\", \"https://app.example.com\"]")
        .validate(&env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.cors_allowed_origins[0]: `*` allows every origin"),
        "{err}"
    );
    with("[\"https://app.example.com\", \"http://localhost:3000\"]")
        .validate(&env(&[]))
        .unwrap();
    with("[\"*\"]").validate(&env(&[])).unwrap();
}

#[test]
fn configured_claude_prices_keep_the_hour_long_write_rule() {
    let config = parse(
        "model_list:\n  - model_name: a\n    deployments:\n      - provider: anthropic\n        model: claude-sonnet-4-5-20250929\n        api_key: k\n        input_cost_per_token: 0.000004\n        output_cost_per_token: 0.00002\n      - provider: anthropic\n        model: claude-sonnet-4-5\n        api_key: k\n        input_cost_per_token: 0.000004\n        cache_creation_input_token_cost_above_1hr: 0.00001\n      - provider: openai\n        model: gpt-4o\n        api_key: k\n        input_cost_per_token: 0.000004\n",
    )
    .unwrap();
    let models = config.validate(&env(&[])).unwrap();
    let prices: Vec<Option<f64>> = models[0].deployments.iter().map(|d| d.prices.cache_write_1h).collect();
    // Twice the configured input price on Claude, the configured price
    // when there is one, none for other models.
    assert_eq!(prices, [Some(0.000008), Some(0.00001), None]);
}

#[test]
fn addresses_versions_and_regions_may_come_from_the_environment() {
    let config = parse(
        "model_list:\n  - model_name: a\n    deployments:\n      - provider: azure\n        model: gpt-4o\n        api_base: os.environ/AZURE_API_BASE\n        api_version: os.environ/AZURE_API_VERSION\n        api_key: k\n      - provider: bedrock\n        model: anthropic.claude-3-5-sonnet-20240620-v1:0\n        aws_region: os.environ/AWS_REGION_NAME\n        aws_model_id: os.environ/PROFILE_ARN\n",
    )
    .unwrap();
    let models = config
        .validate(&env(&[
            ("AZURE_API_BASE", "https://example.openai.azure.com"),
            ("AZURE_API_VERSION", "2024-10-21"),
            ("AWS_REGION_NAME", "eu-west-1"),
            (
                "PROFILE_ARN",
                "arn:aws:bedrock:eu-west-1:1:application-inference-profile/x",
            ),
        ]))
        .unwrap();
    let (azure, bedrock) = (&models[0].deployments[0], &models[0].deployments[1]);
    assert_eq!(azure.api_base.as_deref(), Some("https://example.openai.azure.com"));
    assert_eq!(azure.api_version.as_deref(), Some("2024-10-21"));
    assert_eq!(bedrock.aws_region.as_deref(), Some("eu-west-1"));
    assert!(bedrock.aws_model_id.as_deref().is_some_and(|id| id.starts_with("arn:")));
    // Unset or empty, each is named.
    let err = config
        .validate(&env(&[("AZURE_API_VERSION", " ")]))
        .unwrap_err()
        .to_string();
    for key in ["api_base", "api_version", "aws_region", "aws_model_id"] {
        assert!(err.contains(&format!(".{key}:")), "{key}: {err}");
    }
}

#[test]
fn a_value_in_the_wrong_place_is_not_printed() {
    // A Redis URL with its password written where a section belongs.
    let err = parse(
        "policy:\n  redis: \"redis://:hunter2-secret@redis:6379\"\nmodel_list:\n  - model_name: a\n    deployments:\n      - {provider: mock, model: m}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("policy.redis") && err.contains("found a string"), "{err}");
    // A master key of digits only, read as a number.
    let err = parse("policy:\n  master_key: 84729103847561\nmodel_list:\n  - model_name: a\n    deployments:\n      - {provider: mock, model: m}\n")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("84729103847561"), "{err}");
    assert!(err.contains("policy.master_key"), "{err}");
    // A Redis URL written where one of a few names belongs.
    let err = parse("cache:\n  backend: \"redis://:hunter2-secret@redis:6379\"\nmodel_list:\n  - model_name: a\n    deployments:\n      - {provider: mock, model: m}\n")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("cache.backend") && err.contains("`redis`"), "{err}");
    // A secret read from the environment where a URL belongs.
    let config = parse("model_list:\n  - model_name: a\n    deployments:\n      - {provider: openai, model: m, api_key: k, api_base: os.environ/SWAPPED_BASE}\n").unwrap();
    let err = config
        .validate(&env(&[("SWAPPED_BASE", "sk-secret-in-the-wrong-variable")]))
        .unwrap_err()
        .to_string();
    assert!(!err.contains("sk-secret"), "{err}");
    assert!(err.contains("model_list[0].deployments[0].api_base"), "{err}");
}

#[test]
fn every_section_is_checked_before_problems_are_reported() {
    let config = parse(
        "policy:\n  master_key: short\nmodel_list:\n  - model_name: a\n    deployments:\n      - {provider: azure, model: d, api_key: k, api_base: \"https://x.openai.azure.com\"}\n",
    )
    .unwrap();
    let err = crate::build_state(&config, &env(&[]))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    for expected in ["model_list[0].deployments[0].api_version", "policy.master_key"] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn a_master_key_is_trimmed_and_refused_with_control_characters_inside() {
    let config =
        parse("model_list:\n  - model_name: a\n    deployments:\n      - {provider: mock, model: m}\n").unwrap();
    // A secret file's last newline is not part of the key.
    assert!(crate::build_state(&config, &env(&[("SWITCHYARD_MASTER_KEY", "sk-master-from-a-file\n")])).is_ok());
    // A space inside is presented as it is; a line break cannot be.
    assert!(crate::build_state(&config, &env(&[("SWITCHYARD_MASTER_KEY", "sk master pass phrase")])).is_ok());
    let err = crate::build_state(&config, &env(&[("SWITCHYARD_MASTER_KEY", "sk-master\nsecond-line")]))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("policy.master_key") && err.contains("control characters"),
        "{err}"
    );
}

#[test]
fn settings_that_would_fail_every_request_are_refused() {
    let config = parse(
        "model_list:\n  - model_name: a\n    deployments:\n      - provider: openai\n        model: m\n        api_key: k\n        rpm: 0\n        tpm: 0\n        headers: {Authorization: os.environ/EMPTY_TOKEN}\n",
    )
    .unwrap();
    let err = config.validate(&env(&[("EMPTY_TOKEN", "")])).unwrap_err().to_string();
    for expected in [
        "model_list[0].deployments[0].rpm: must be greater than 0",
        "model_list[0].deployments[0].tpm: must be greater than 0",
        "model_list[0].deployments[0].headers.Authorization: environment variable `EMPTY_TOKEN` is empty",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn the_cache_takes_the_redis_urls_the_policy_store_takes() {
    let yaml = |url: &str| {
        format!(
            "cache:\n  enabled: true\n  backend: redis\n  redis:\n    url: {url}\nmodel_list:\n  - model_name: a\n    deployments:\n      - provider: mock\n        model: m\n"
        )
    };
    let issues = |url: &str| {
        let config = parse(&yaml(url)).unwrap();
        let mut issues = Vec::new();
        config.cache.validate(&env(&[]), &["a".to_owned()], &mut issues);
        issues.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    for url in [
        "redis://127.0.0.1:6379/0",
        "rediss://cache.example:6380",
        "unix:///run/redis/redis.sock",
    ] {
        assert_eq!(issues(url), Vec::<String>::new(), "{url}");
    }
    let refused = issues("http://127.0.0.1:6379");
    assert!(refused.iter().any(|i| i.contains("cache.redis.url")), "{refused:?}");
}

#[test]
fn a_cache_lifetime_past_a_year_is_refused() {
    let config = parse("cache:\n  enabled: true\n  max_ttl_seconds: 18446744073709551\nmodel_list:\n  - model_name: a\n    deployments:\n      - {provider: mock, model: m}\n").unwrap();
    let mut issues = Vec::new();
    config.cache.validate(&env(&[]), &["a".to_owned()], &mut issues);
    let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
    assert!(text.iter().any(|i| i.contains("cache.max_ttl_seconds")), "{text:?}");
}

#[test]
fn a_semantic_index_has_a_bounded_size() {
    let with = |entries: &str| {
        let config = parse(&format!(
            "cache:\n  enabled: true\n  semantic:\n    a:\n      min_similarity: 0.9\n      max_entries: {entries}\nmodel_list:\n  - model_name: a\n    deployments:\n      - provider: mock\n        model: m\n"
        ))
        .unwrap();
        let mut issues = Vec::new();
        config.cache.validate(&env(&[]), &["a".to_owned()], &mut issues);
        match issues.is_empty() {
            true => Ok(()),
            false => Err(issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")),
        }
    };
    for refused in ["8", "10000000000"] {
        let err = with(refused).unwrap_err();
        assert!(err.contains("cache.semantic.a.max_entries: must be at"), "{err}");
    }
    with("10000000").unwrap();
}

/// An empty master key variable (`${KEY:-}` with the key unset) is refused,
/// not taken for no key, which would open every route.
#[test]
fn an_empty_master_key_variable_is_refused() {
    let config =
        parse("model_list:\n  - model_name: a\n    deployments:\n      - {provider: mock, model: m}\n").unwrap();
    let err = crate::build_state(&config, &env(&[("SWITCHYARD_MASTER_KEY", "")]))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("policy.master_key"), "{err}");
}

/// YAML merge keys work, as in LiteLLM's files.
#[test]
fn merge_keys_are_read() {
    let config = parse(
        "model_list:\n  - model_name: a\n    deployments: [&d {provider: mock, model: m}]\n  - model_name: b\n    deployments: [{<<: *d, weight: 2}]\n",
    )
    .unwrap();
    assert_eq!(config.model_list[1].deployments[0].model, "m");
}

/// Settings that would fail every request, or quietly do something else,
/// are refused at load, naming the field.
#[test]
fn credentials_and_caps_that_cannot_work_are_refused() {
    let yaml = "model_list:\n  - model_name: a\n    deployments:\n      - {provider: openai, model: gpt-4o}\n      - {provider: anthropic, model: claude-sonnet-4-5, headers: {x-api-key: os.environ/K}}\n      - {provider: openai, model: m, api_base: \"http://127.0.0.1:8000/v1\"}\n      - {provider: openai, model: m, api_key: k, headers: {Authorization: \"Bearer os.environ/TOKEN\"}}\n      - {provider: openai, model: gpt-4o, api_base: \"https://api.openai.com/v1\", headers: {api-key: os.environ/K}}\n      - {provider: azure, model: d, api_base: \"https://x.openai.azure.com\", api_version: \"2024-10-21\", headers: {x-ms-client-request-id: r}}\n      - {provider: azure, model: d, api_base: \"https://apim.example.com\", api_version: \"2024-10-21\", headers: {Ocp-Apim-Subscription-Key: os.environ/K}}\npolicy:\n  redis: {url: \"redis://127.0.0.1:6379\", log_max_len: 0}\n";
    let config = parse(yaml).unwrap();
    let err = crate::build_state(&config, &env(&[("K", "secret"), ("TOKEN", "t")]))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    for expected in [
        "model_list[0].deployments[0].api_key",
        "model_list[0].deployments[3].headers.Authorization",
        "model_list[0].deployments[4].api_key",
        "model_list[0].deployments[5].api_key",
        "policy.redis.log_max_len",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    for unexpected in [
        "deployments[1].api_key",
        "deployments[2].api_key",
        "deployments[6].api_key",
    ] {
        assert!(!err.contains(unexpected), "`{unexpected}` in:\n{err}");
    }
}
