//! Wildcard groups (`openai/*`) through the real `switchyard` binary: the
//! model asked for reaches the upstream, is priced as itself, and keys,
//! model lists and exact groups treat it as its own name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_testkit::{GatewayProcess, MockUpstream};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const MASTER: &str = "sk-master-key-for-wildcard-tests";

fn config(mock: &MockUpstream) -> String {
    let (base, root) = (mock.base_url(), mock.root_url());
    format!(
        r#"
policy:
  master_key: {MASTER}
  end_user_budget: {{max_budget: 100}}
model_list:
  - model_name: "openai/*"
    deployments:
      - {{provider: openai, model: "*", api_base: "{base}", api_key: k}}
  - model_name: "claude-*"
    deployments:
      - {{provider: anthropic, model: "claude-*", api_base: "{root}", api_key: k}}
  - model_name: "priced/*"
    deployments:
      - {{provider: openai, model: "*", api_base: "{base}", api_key: k, input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}}
  - model_name: openai/gpt-4o-mini
    deployments:
      - {{provider: mock, model: exact-mini}}
"#
    )
}

struct Answer {
    status: u16,
    model: String,
    request_id: String,
    body: Value,
}

async fn chat(gateway: &GatewayProcess, key: &str, model: &str, stream: bool) -> Answer {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gateway.base_url()))
        .bearer_auth(key)
        .json(&json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello there"}]}))
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
    };
    let (model, request_id) = (header("x-switchyard-model"), header("x-switchyard-request-id"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    Answer {
        status,
        model,
        request_id,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// An admin route's JSON answer (`Null` when it is not JSON).
async fn admin_json(gateway: &GatewayProcess, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}{path}", gateway.base_url()))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or_default()
}

async fn spend(gateway: &GatewayProcess, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = admin_json(gateway, "/spend/logs").await;
        if let Some(record) = logs
            .as_array()
            .and_then(|all| all.iter().find(|r| r["request_id"] == request_id))
        {
            return record.clone();
        }
        assert!(Instant::now() < deadline, "no spend record for {request_id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_group_serves_and_prices_the_model_asked_for() {
    let mock = MockUpstream::start().await;
    let gateway = GatewayProcess::start(Path::new(BIN), &config(&mock));

    // The upstream gets the model the `*` matched, priced at GPT-4o's list
    // price ($2.50 in, $10 out per million tokens).
    let answer = chat(&gateway, MASTER, "openai/gpt-4o", false).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.model, "openai/*");
    assert_eq!(mock.last_request().unwrap().body["model"], "gpt-4o");
    let record = spend(&gateway, &answer.request_id).await;
    let (prompt, completion) = (
        answer.body["usage"]["prompt_tokens"].as_i64().unwrap(),
        answer.body["usage"]["completion_tokens"].as_i64().unwrap(),
    );
    assert_eq!(record["cost_nanos"], prompt * 2_500 + completion * 10_000, "{record}");

    // Another model through the same group, streamed: its own price.
    let streamed = chat(&gateway, MASTER, "openai/gpt-4.1-mini", true).await;
    assert_eq!(streamed.status, 200);
    assert_eq!(mock.last_request().unwrap().body["model"], "gpt-4.1-mini");
    let record = spend(&gateway, &streamed.request_id).await;
    let usage = &record["usage"];
    assert_eq!(
        record["cost_nanos"],
        usage["prompt"].as_i64().unwrap() * 400 + usage["completion"].as_i64().unwrap() * 1_600,
        "{record}"
    );

    // A group named exactly wins over the wildcard.
    let exact = chat(&gateway, MASTER, "openai/gpt-4o-mini", false).await;
    assert_eq!((exact.status, exact.model.as_str()), (200, "openai/gpt-4o-mini"));

    // A wildcard inside the name, to Anthropic's Messages API.
    let claude = chat(&gateway, MASTER, "claude-sonnet-4-5", false).await;
    assert_eq!(
        (claude.status, claude.model.as_str()),
        (200, "claude-*"),
        "{}",
        claude.body
    );
    let sent = mock.last_request().unwrap();
    assert_eq!(
        (sent.path.as_str(), sent.body["model"].as_str()),
        ("/v1/messages", Some("claude-sonnet-4-5"))
    );

    // Configured prices hold whatever the model.
    let priced = chat(&gateway, MASTER, "priced/anything-at-all", false).await;
    assert_eq!(priced.status, 200);
    assert_eq!(mock.last_request().unwrap().body["model"], "anything-at-all");
    let record = spend(&gateway, &priced.request_id).await;
    let usage = &record["usage"];
    assert_eq!(
        record["cost_nanos"],
        usage["prompt"].as_i64().unwrap() * 1_000 + usage["completion"].as_i64().unwrap() * 2_000
    );

    // The group's own name stands for many models: refused, naming `model`.
    let literal = chat(&gateway, MASTER, "openai/*", false).await;
    assert_eq!(literal.status, 400, "{}", literal.body);
    assert_eq!(literal.body["error"]["param"], "model");

    // /v1/models lists the wildcard; a model it serves is found by name.
    let models: Value = reqwest::Client::new()
        .get(format!("{}/v1/models/openai/gpt-4o", gateway.base_url()))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["id"], "openai/gpt-4o");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_name_a_wildcard_group_or_the_models_it_serves() {
    let mock = MockUpstream::start().await;
    let gateway = GatewayProcess::start(Path::new(BIN), &config(&mock));
    let generate = |models: Value| {
        let url = format!("{}/key/generate", gateway.base_url());
        async move {
            let answer: Value = reqwest::Client::new()
                .post(url)
                .bearer_auth(MASTER)
                .json(&json!({"models": models}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer["key"].as_str().unwrap().to_owned()
        }
    };
    let all_openai = generate(json!(["openai/*"])).await;
    assert_eq!(chat(&gateway, &all_openai, "openai/gpt-4o", false).await.status, 200);
    assert_eq!(chat(&gateway, &all_openai, "openai/o3", false).await.status, 200);
    let refused = chat(&gateway, &all_openai, "claude-sonnet-4-5", false).await;
    assert_eq!(
        (refused.status, refused.body["error"]["code"].as_str()),
        (403, Some("model_not_allowed"))
    );

    // A budget cannot hold a model nothing prices: refused, naming `model`.
    let budgeted: Value = reqwest::Client::new()
        .post(format!("{}/key/generate", gateway.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"models": ["openai/*"], "max_budget": 1.0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let budgeted = budgeted["key"].as_str().unwrap();
    let unpriced = chat(&gateway, budgeted, "openai/some-new-model", false).await;
    assert_eq!(
        (unpriced.status, unpriced.body["error"]["param"].as_str()),
        (400, Some("model"))
    );
    assert_eq!(chat(&gateway, budgeted, "openai/gpt-4o", false).await.status, 200);
    // Without a budget it is served (and free, as documented)…
    assert_eq!(
        chat(&gateway, &all_openai, "openai/some-new-model", false).await.status,
        200
    );
    // …but not for an end user, who has one: refused before any limit is
    // counted (the key's one request a minute is left for a priced model).
    let one_a_minute: Value = reqwest::Client::new()
        .post(format!("{}/key/generate", gateway.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"models": ["openai/*"], "rpm_limit": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let one_a_minute = one_a_minute["key"].as_str().unwrap();
    let for_eve = |model: &str| {
        reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", gateway.base_url()))
            .bearer_auth(one_a_minute)
            .json(&json!({"model": model, "user": "eve", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    assert_eq!(for_eve("openai/some-new-model").await.unwrap().status(), 400);
    assert_eq!(for_eve("openai/gpt-4o").await.unwrap().status(), 200);

    let one = generate(json!(["openai/gpt-4o"])).await;
    assert_eq!(chat(&gateway, &one, "openai/gpt-4o", false).await.status, 200);
    assert_eq!(chat(&gateway, &one, "openai/gpt-4.1", false).await.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_inside_a_wildcard_name_is_priced_as_the_model_sent() {
    let mock = MockUpstream::start().await;
    let gateway = GatewayProcess::start(Path::new(BIN), &config(&mock));
    // `claude-*` serves `claude-sonnet-4-5` as `claude-sonnet-4-5`: $3 in,
    // $15 out per million tokens, not the nothing `sonnet-4-5` would cost.
    let answer = chat(&gateway, MASTER, "claude-sonnet-4-5", false).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let record = spend(&gateway, &answer.request_id).await;
    let usage = &record["usage"];
    assert!(usage["prompt"].as_i64().unwrap() > 0, "{record}");
    assert_eq!(
        record["cost_nanos"],
        usage["prompt"].as_i64().unwrap() * 3_000 + usage["completion"].as_i64().unwrap() * 15_000,
        "{record}"
    );
    // A request's own fallback cannot name a wildcard group.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gateway.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"model": "claude-sonnet-4-5", "fallbacks": ["openai/*"], "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "fallbacks[0]", "{error}");
    // A key naming one model sees it in /v1/models.
    let key: Value = reqwest::Client::new()
        .post(format!("{}/key/generate", gateway.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"models": ["openai/gpt-4o"], "model_rpm_limit": {"openai/gpt-4o": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap();
    let listed: Value = reqwest::Client::new()
        .get(format!("{}/v1/models", gateway.base_url()))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["openai/gpt-4o"]);
    // Its per-model limit counts that model's requests.
    assert_eq!(chat(&gateway, key, "openai/gpt-4o", false).await.status, 200);
    assert_eq!(chat(&gateway, key, "openai/gpt-4o", false).await.status, 429);
    // …and only that model's, whatever else the wildcard group serves.
    let broad: Value = reqwest::Client::new()
        .post(format!("{}/key/generate", gateway.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"models": ["openai/*"], "model_rpm_limit": {"openai/gpt-4o": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let broad = broad["key"].as_str().unwrap();
    assert_eq!(chat(&gateway, broad, "openai/gpt-4o", false).await.status, 200);
    assert_eq!(chat(&gateway, broad, "openai/gpt-4.1", false).await.status, 200);
    assert_eq!(chat(&gateway, broad, "openai/gpt-4.1", false).await.status, 200);
    assert_eq!(chat(&gateway, broad, "openai/gpt-4o", false).await.status, 429);
}

/// A model the upstream does not have, asked for through a wildcard group,
/// is the client's mistake: 404 `model_not_found`, streamed or not, and the
/// deployment every other model shares is not put in cooldown for it; nor
/// for a model the upstream refuses the key (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_the_upstream_lacks_is_a_404_that_leaves_the_deployment_alone() {
    let mock = MockUpstream::start().await;
    let config = format!(
        "{}router_settings:\n  allowed_fails: 2\n  cooldown_ms: 600000\n  cooldown_fail_fast: true\n",
        config(&mock)
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &config);
    for stream in [false, true, false, true] {
        let missing = chat(&gateway, MASTER, "openai/no-such-model::status=404", stream).await;
        assert_eq!(missing.status, 404, "{}", missing.body);
        let error = &missing.body["error"];
        assert_eq!(error["code"], "model_not_found", "{error}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("`openai/no-such-model::status=404`"),
            "{error}"
        );
    }
    // A model the key may not use (OpenAI: "Project … does not have access
    // to model …", a 403) is the client's error too: a 403 naming the model,
    // and the shared key is not marked invalid for every other model.
    for stream in [false, true] {
        let gated = chat(&gateway, MASTER, "openai/gated-model::status=403", stream).await;
        assert_eq!(gated.status, 403, "{}", gated.body);
        assert_eq!(gated.body["error"]["code"], "model_not_allowed", "{}", gated.body);
        assert_eq!(gated.body["error"]["type"], "permission_error", "{}", gated.body);
    }
    assert_eq!(mock.requests().len(), 6);
    let state = admin_json(&gateway, "/admin/deployments").await;
    let wildcard = state["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["deployment"] == "openai/*/0")
        .cloned()
        .unwrap_or_else(|| panic!("{state}"));
    assert_eq!(wildcard["cooldown"]["state"], "closed", "{wildcard}");
    // With `cooldown_fail_fast`, a cooling deployment would refuse with 503.
    let served = chat(&gateway, MASTER, "openai/gpt-4o", false).await;
    assert_eq!(served.status, 200, "{}", served.body);
}

/// The request log keeps the model a wildcard group was asked for, not the
/// group's pattern.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_names_the_model_asked_of_a_wildcard_group() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let config = format!(
        "{}telemetry:\n  request_log:\n    path: {}\n",
        config(&mock),
        log.display()
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &config);
    let answer = chat(&gateway, MASTER, "openai/gpt-4o", false).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(&answer.request_id)) {
            break serde_json::from_str::<Value>(line).unwrap();
        }
        assert!(Instant::now() < deadline, "no record for {}", answer.request_id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(record["model"], "openai/gpt-4o", "{record}");
    assert_eq!(record["served_model"], "openai/*", "{record}");
}

/// A model the client named behind a wildcard that the upstream lacks is
/// the client's answer even when the group has fallbacks: another model
/// must not answer (and be billed) for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_wildcard_model_does_not_fall_back() {
    let mock = MockUpstream::start().await;
    let config = format!(
        r#"
model_list:
  - model_name: "openai/*"
    fallbacks: [backup]
    deployments:
      - {{provider: openai, model: "*", api_base: "{base}", api_key: k}}
  - model_name: backup
    deployments:
      - {{provider: mock, model: backup-1}}
"#,
        base = mock.base_url()
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &config);
    for (model, status, code) in [
        ("openai/gpt-4o-minii::unknown_model", 404, "model_not_found"),
        ("openai/gated-model::status=403", 403, "model_not_allowed"),
    ] {
        let answer = chat(&gateway, "", model, false).await;
        assert_eq!(answer.status, status, "{}", answer.body);
        assert_eq!(answer.body["error"]["code"], code, "{}", answer.body);
    }
    // A 404 that does not say the model is missing (a route the server
    // lacks) still falls back.
    let routed = chat(&gateway, "", "openai/gpt-4o::status=404", false).await;
    assert_eq!(routed.status, 200, "{}", routed.body);
}

/// The same when the group's other deployments cannot be asked (here, the
/// request's tags leave them out): the deployment asked said the model is
/// missing, and no fallback answers for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_wildcard_model_does_not_fall_back_when_other_deployments_are_out() {
    let mock = MockUpstream::start().await;
    let config = format!(
        r#"
router_settings:
  enable_tag_filtering: true
model_list:
  - model_name: "openai/*"
    fallbacks: [backup]
    deployments:
      - {{provider: openai, model: "*", api_base: "{base}", api_key: k, tags: [a]}}
      - {{provider: openai, model: "*", api_base: "{base}", api_key: k2, tags: [b]}}
  - model_name: backup
    deployments:
      - {{provider: mock, model: backup-1, tags: [a]}}
"#,
        base = mock.base_url()
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &config);
    // The fallback serves these tags.
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gateway.base_url()))
        .header("x-litellm-tags", "a")
        .json(&json!({"model": "backup", "messages": [{"role": "user", "content": "hello there"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gateway.base_url()))
        .header("x-litellm-tags", "a")
        .json(&json!({"model": "openai/gpt-4o-minii::unknown_model",
            "messages": [{"role": "user", "content": "hello there"}]}))
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("model_not_found")),
        "{body}"
    );
}
