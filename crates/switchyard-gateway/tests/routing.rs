//! Routing strategies chosen in the configuration, fed by live statistics,
//! through the real `switchyard` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use switchyard_testkit::{GatewayProcess, MockUpstream, run_check_config};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

const CONFIG: &str = r#"
router_settings:
  routing_strategy: latency-based
  cost_min_quality: 0.5
model_list:
  - model_name: good-enough
    routing_strategy: cost-based
    deployments:
      - {provider: mock, model: cheap-but-weak, quality: 0.3, input_cost_per_token: 0.000001}
      - {provider: mock, model: pricier-and-good, quality: 0.9, input_cost_per_token: 0.000005}
      - {provider: mock, model: priciest, quality: 0.95, input_cost_per_token: 0.00001}
  - model_name: cheap-first
    routing_strategy: cost-based
    deployments:
      - {provider: mock, model: expensive, input_cost_per_token: 0.00001, output_cost_per_token: 0.00003}
      - {provider: mock, model: cheap, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}
  - model_name: fast-first
    deployments:
      - {provider: mock, model: slow, mock: {delay_ms: 150}}
      - {provider: mock, model: fast}
  - model_name: spread
    routing_strategy: least-busy
    deployments:
      - {provider: mock, model: a, mock: {delay_ms: 1500}}
      - {provider: mock, model: b, mock: {delay_ms: 1500}}
"#;

async fn ask(http: &reqwest::Client, base: &str, model: &str) -> (String, String) {
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
    (header("x-switchyard-deployment"), header("x-switchyard-strategy"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_strategies_choose_from_live_stats() {
    let gateway = GatewayProcess::start(Path::new(BIN), CONFIG);
    let base = gateway.base_url();
    let http = reqwest::Client::new();

    for _ in 0..10 {
        assert_eq!(
            ask(&http, &base, "cheap-first").await,
            ("cheap-first/1".into(), "cost-based".into())
        );
    }

    // Latency-based (the global default): once both deployments have answered,
    // the 150 ms one is never chosen again.
    let mut chosen = Vec::new();
    for _ in 0..12 {
        let (deployment, strategy) = ask(&http, &base, "fast-first").await;
        assert_eq!(strategy, "latency-based");
        chosen.push(deployment);
    }
    assert!(chosen[4..].iter().all(|d| d == "fast-first/1"), "{chosen:?}");

    // Least-busy: a request arriving while the other deployment is busy goes to the idle one.
    let first = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move { ask(&http, &base, "spread").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (second, strategy) = ask(&http, &base, "spread").await;
    let (first, _) = first.await.unwrap();
    assert_eq!(strategy, "least-busy");
    assert_ne!(first, second);
}

/// A deployment nobody priced (an Azure deployment name, say) is not free
/// to `cost-based`: the priced one is chosen while it can serve, the
/// unpriced one only when it is all there is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_based_ranks_an_unpriced_deployment_last() {
    let mock = MockUpstream::start().await;
    let config = r#"
model_list:
  - model_name: mixed
    routing_strategy: cost-based
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: prod-east-4o}
      - {provider: openai, api_base: "{base}", api_key: k, model: priced, input_cost_per_token: 0.00001}
  - model_name: unpriced
    routing_strategy: cost-based
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: unpriced-a}
      - {provider: openai, api_base: "{base}", api_key: k, model: unpriced-b}
"#
    .replace("{base}", &mock.base_url());
    let gateway = GatewayProcess::start(Path::new(BIN), &config);
    let base = gateway.base_url();
    let http = reqwest::Client::new();
    for _ in 0..8 {
        assert_eq!(
            ask(&http, &base, "mixed").await,
            ("mixed/1".into(), "cost-based".into())
        );
    }
    let mut chosen = std::collections::BTreeSet::new();
    for _ in 0..24 {
        chosen.insert(ask(&http, &base, "unpriced").await.0);
    }
    assert_eq!(chosen.len(), 2, "unpriced deployments share the traffic: {chosen:?}");
}

#[test]
fn invalid_router_settings_are_config_errors() {
    let config = "router_settings:\n  latency_tolerance: -1\nmodel_list:\n  - model_name: a\n    deployments:\n      - {provider: mock, model: m, quality: 2}\n";
    let output = run_check_config(Path::new(BIN), config);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("model_list[0].deployments[0].quality"), "{stderr}");
    let config = "router_settings:\n  latency_tolerance: -1\nmodel_list:\n  - model_name: a\n    deployments:\n      - {provider: mock, model: m}\n";
    let output = run_check_config(Path::new(BIN), config);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("router_settings.latency_tolerance"), "{stderr}");
}

#[test]
fn an_unknown_strategy_is_a_config_error_naming_the_key() {
    let config = "model_list:\n  - model_name: a\n    routing_strategy: fastest-please\n    deployments:\n      - {provider: mock, model: m}\n";
    let output = run_check_config(Path::new(BIN), config);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("model_list[0].routing_strategy"), "{stderr}");
    assert!(
        stderr.contains("least-busy"),
        "the error lists the known strategies: {stderr}"
    );
    // A name every group takes from `router_settings` is reported once, there.
    let config = "router_settings:\n  routing_strategy: fastest-please\nmodel_list:\n  - model_name: a\n    deployments:\n      - {provider: mock, model: m}\n  - model_name: b\n    deployments:\n      - {provider: mock, model: m}\n";
    let output = run_check_config(Path::new(BIN), config);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("router_settings.routing_strategy").count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("model_list[1].routing_strategy"), "{stderr}");
    // A group that names the same unknown strategy itself is named too.
    let named = config.replace(
        "model_name: b\n",
        "model_name: b\n    routing_strategy: fastest-please\n",
    );
    let output = run_check_config(Path::new(BIN), &named);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("model_list[1].routing_strategy"), "{stderr}");
    assert!(stderr.contains("router_settings.routing_strategy"), "{stderr}");
}

const TAGGED: &str = r#"
router_settings:
  enable_tag_filtering: true
model_list:
  - model_name: tiered
    deployments:
      - {provider: mock, model: free-1, tags: [free]}
      - {provider: mock, model: paid-1, tags: [paid, premium]}
      - {provider: mock, model: default-1, tags: [default]}
  - model_name: untagged
    deployments:
      - {provider: mock, model: u-1}
      - {provider: mock, model: u-2, tags: [paid]}
  - model_name: strict
    fallbacks: [untagged]
    deployments:
      - {provider: mock, model: s-1, tags: [gold]}
"#;

/// The deployment that answered `body` (with `tags` header `header`), or
/// the error's status and `param`.
async fn tagged(
    http: &reqwest::Client,
    base: &str,
    body: serde_json::Value,
    header: Option<&str>,
) -> Result<String, (u16, String)> {
    let mut request = http.post(format!("{base}/v1/chat/completions")).json(&body);
    if let Some(tags) = header {
        request = request.header("x-litellm-tags", tags);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status == 200 {
        return Ok(response.headers()["x-switchyard-deployment"]
            .to_str()
            .unwrap()
            .to_owned());
    }
    let error: serde_json::Value = response.json().await.unwrap();
    Err((status, error["error"]["param"].as_str().unwrap_or_default().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_tags_choose_among_a_groups_deployments() {
    let gateway = GatewayProcess::start(Path::new(BIN), TAGGED);
    let base = gateway.base_url();
    let http = reqwest::Client::new();
    let hi = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let with = |model: &str, tags: serde_json::Value| {
        let mut body = hi(model);
        body["tags"] = tags;
        body
    };
    for _ in 0..8 {
        assert_eq!(
            tagged(&http, &base, with("tiered", json!(["paid"])), None).await,
            Ok("tiered/1".into())
        );
        assert_eq!(
            tagged(&http, &base, hi("tiered"), Some("premium")).await,
            Ok("tiered/1".into())
        );
        let mut free = hi("tiered");
        free["metadata"] = json!({"tags": ["free"]});
        assert_eq!(tagged(&http, &base, free, None).await, Ok("tiered/0".into()));
        // No tag, or none that matches: the `default` deployment.
        assert_eq!(tagged(&http, &base, hi("tiered"), None).await, Ok("tiered/2".into()));
        assert_eq!(
            tagged(&http, &base, with("tiered", json!(["other"])), None).await,
            Ok("tiered/2".into())
        );
        assert_eq!(
            tagged(&http, &base, with("untagged", json!(["paid"])), None).await,
            Ok("untagged/1".into())
        );
    }
    // A group with no `default` deployment serves untagged requests from all.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..24 {
        seen.insert(tagged(&http, &base, hi("untagged"), None).await.unwrap());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Tags nothing carries, with no `default` here or in the fallback: a
    // 400 naming `tags`; a matching tag is served.
    assert_eq!(
        tagged(&http, &base, with("strict", json!(["silver"])), None).await,
        Err((400, "tags".into()))
    );
    assert_eq!(
        tagged(&http, &base, with("strict", json!(["gold"])), None).await,
        Ok("strict/0".into())
    );
    // Its fallback is tag-routed as well: `paid` is served there.
    assert_eq!(
        tagged(&http, &base, with("strict", json!(["paid"])), None).await,
        Ok("untagged/1".into())
    );
}

/// A fallback group the request's tags leave no deployment in is skipped:
/// the failing group's own error comes back (not the fallback's refusal of
/// the tags), and with nowhere else to go its cooling deployment is still
/// tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_the_tags_leave_empty_does_not_hide_the_failure() {
    let mock = switchyard_testkit::MockUpstream::start().await;
    let config = format!(
        r#"
router_settings:
  enable_tag_filtering: true
  num_retries: 0
  allowed_fails: 1
  cooldown_ms: 60000
model_list:
  - model_name: primary
    fallbacks: [elsewhere]
    deployments:
      - {{provider: openai, model: "paid-model::status=500", api_base: "{base}", api_key: k, tags: [paid]}}
      - {{provider: mock, model: default-1, tags: [default]}}
  - model_name: elsewhere
    deployments:
      - {{provider: mock, model: e-1, tags: [free]}}
"#,
        base = mock.base_url()
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &config);
    let base = gateway.base_url();
    let http = reqwest::Client::new();
    let body = json!({"model": "primary", "tags": ["paid"], "messages": [{"role": "user", "content": "hi"}]});
    for attempt in 1..=2 {
        let answer = tagged(&http, &base, body.clone(), None).await;
        let Err((status, param)) = answer else {
            panic!("served: {answer:?}");
        };
        assert!(status >= 500 && param != "tags", "attempt {attempt}: {status} {param}");
        // The paid deployment was asked each time, cooling down or not.
        assert_eq!(
            mock.requests()
                .iter()
                .filter(|r| r.path == "/v1/chat/completions")
                .count(),
            attempt
        );
    }
}

/// A deployment whose key the upstream rejects (401) hands the request to
/// the group's next deployment without using up a retry: with
/// `num_retries: 0` the healthy one still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_hands_the_request_on_without_a_retry() {
    let mock = MockUpstream::start().await;
    let config = format!(
        r#"
router_settings:
  num_retries: 0
model_list:
  - model_name: keys
    routing_strategy: cost-based
    deployments:
      - {{provider: openai, model: "revoked::status=401", api_base: "{base}", api_key: k, input_cost_per_token: 0.000001}}
      - {{provider: openai, model: good, api_base: "{base}", api_key: k, input_cost_per_token: 0.00001}}
"#,
        base = mock.base_url()
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &config);
    let http = reqwest::Client::new();
    let (deployment, _) = ask(&http, &gateway.base_url(), "keys").await;
    assert_eq!(deployment, "keys/1");
    let models: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.body["model"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        models,
        ["revoked::status=401", "good"],
        "the cheaper, revoked one first"
    );
}

/// A fallback group that cannot route (its one deployment is over its
/// `rpm`: no attempt is made) leaves the request the error the group
/// before it met: the upstream's 429 with its Retry-After, not a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_that_cannot_route_keeps_the_earlier_error() {
    let mock = MockUpstream::start().await;
    let config = format!(
        r#"
router_settings:
  num_retries: 0
model_list:
  - model_name: limited
    fallbacks: [full]
    deployments:
      - {{provider: openai, model: "busy::status=429,retry_after=2", api_base: "{base}", api_key: k}}
  - model_name: full
    routing_strategy: usage-based
    deployments:
      - {{provider: mock, model: one-a-minute, rpm: 1}}
"#,
        base = mock.base_url()
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &config);
    let http = reqwest::Client::new();
    ask(&http, &gateway.base_url(), "full").await;
    let response = http
        .post(format!("{}/v1/chat/completions", gateway.base_url()))
        .json(&json!({"model": "limited", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "2");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
}
