//! Provider faults through the real `switchyard` binary: retries, Retry-After,
//! fallback groups, context-window and content-policy fallbacks, circuit
//! breakers, and streams that fail before or after their first event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::Path;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use switchyard_testkit::{GatewayProcess, MockUpstream};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A gateway whose groups all point at `mock`. `{base}` and `{root}` in
/// `model_list` are replaced by the mock's OpenAI base URL and root URL.
fn gateway(mock: &MockUpstream, router: &str, model_list: &str) -> GatewayProcess {
    let models = model_list
        .replace("{base}", &mock.base_url())
        .replace("{root}", &mock.root_url());
    let config =
        format!("router_settings:\n  retry_backoff_ms: 10\n  max_backoff_ms: 50\n{router}\nmodel_list:\n{models}");
    GatewayProcess::start(Path::new(BIN), &config)
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The content of a streamed chat completion, and every event's data.
    fn streamed(&self) -> (String, Vec<String>) {
        let data: Vec<String> = self
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_owned)
            .collect();
        let text = data
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        (text, data)
    }
}

async fn post(gateway: &GatewayProcess, path: &str, body: Value) -> Answer {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", gateway.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    Answer { status, headers, body }
}

async fn chat(gateway: &GatewayProcess, model: &str, extra: Value) -> Answer {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    post(gateway, "/v1/chat/completions", body).await
}

async fn admin(gateway: &GatewayProcess) -> Vec<Value> {
    let body: Value = reqwest::get(format!("{}/admin/deployments", gateway.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["deployments"].as_array().unwrap().clone()
}

/// One of `deployment`'s live statistics (`rpm_used`, `tpm_used`, `in_flight`…).
async fn stat(gateway: &GatewayProcess, deployment: &str, name: &str) -> u64 {
    admin(gateway)
        .await
        .into_iter()
        .find(|d| d["deployment"] == deployment)
        .unwrap_or_else(|| panic!("no deployment {deployment}"))["stats"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} for {deployment}"))
}

async fn breaker(gateway: &GatewayProcess, deployment: &str) -> Value {
    admin(gateway)
        .await
        .into_iter()
        .find(|d| d["deployment"] == deployment)
        .unwrap_or_else(|| panic!("no deployment {deployment}"))["cooldown"]
        .clone()
}

/// The gateway's Prometheus text.
async fn metrics(gateway: &GatewayProcess) -> String {
    reqwest::get(format!("{}/metrics", gateway.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Requests the mock received for an upstream model name.
fn sent_to(mock: &MockUpstream, model: &str) -> usize {
    mock.requests().iter().filter(|r| r.body["model"] == model).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_deployment_is_retried_elsewhere_then_put_in_cooldown() {
    let mock = MockUpstream::start().await;
    // cost-based tries the cheap, broken deployment first.
    let gw = gateway(
        &mock,
        "  allowed_fails: 2\n  cooldown_ms: 600000",
        r#"
  - model_name: pair
    routing_strategy: cost-based
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "cheap::status=500", input_cost_per_token: 0.000001}
      - {provider: openai, api_base: "{base}", api_key: k, model: "dear", input_cost_per_token: 0.00001}
"#,
    );
    for _ in 0..2 {
        let a = chat(&gw, "pair", json!({})).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-switchyard-deployment"), "pair/1");
        assert_eq!(a.header("x-switchyard-attempts"), "2");
    }
    let state = breaker(&gw, "pair/0").await;
    assert_eq!(state["state"], "open", "{state}");
    assert!(state["remaining_ms"].as_u64().unwrap() > 0);
    assert_eq!(breaker(&gw, "pair/1").await["state"], "closed");

    // In cooldown the broken deployment is skipped: one attempt, no upstream call.
    for _ in 0..5 {
        let a = chat(&gw, "pair", json!({})).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-switchyard-attempts"), "1");
    }
    assert_eq!(sent_to(&mock, "cheap::status=500"), 2);
    assert_eq!(sent_to(&mock, "dear"), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_a_long_one_is_returned() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "  max_retry_after_ms: 5000",
        r#"
  - model_name: limited
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "m::fail_first=1,status=429,retry_after=1"}
  - model_name: very-limited
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "m::status=429,retry_after=120"}
  - model_name: forever-limited
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "m::status=429,retry_after=18446744073709551615"}
  - model_name: mixed
    routing_strategy: cost-based
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "ra::status=429,retry_after=120", input_cost_per_token: 0.000001}
      - {provider: openai, api_base: "{base}", api_key: k, model: "rb::fail_first=1,status=500", input_cost_per_token: 0.00001}
  - model_name: hurried
    routing_strategy: cost-based
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "ha::status=429,retry_after=4", input_cost_per_token: 0.000001}
      - {provider: openai, api_base: "{base}", api_key: k, model: "hb::status=500,fail_first=1", input_cost_per_token: 0.00001}
"#,
    );
    let a = chat(&gw, "limited", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-attempts"), "2");
    let times: Vec<_> = mock.requests().iter().map(|r| r.received_at).collect();
    assert_eq!(times.len(), 2);
    let waited = times[1] - times[0];
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before Retry-After"
    );

    // Retry-After beyond max_retry_after_ms: no waiting, the client gets the 429 and its Retry-After.
    let a = chat(&gw, "very-limited", json!({})).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.header("retry-after"), "120");
    assert_eq!(a.header("x-switchyard-attempts"), "1");
    assert_eq!(a.json()["error"]["type"], "rate_limit_error");
    // The upstream's words name the gateway's organisation and its limits:
    // the client reads the gateway's.
    let message = a.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(!message.contains("org-mock"), "{message}");
    assert_eq!(
        message,
        "The upstream of deployment very-limited/0 is over its rate limit (HTTP 429). Try again in 120s."
    );

    // A Retry-After too long for any clock is a long one like the others.
    let a = chat(&gw, "forever-limited", json!({})).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.header("retry-after"), "86400");

    // A long Retry-After rules out only its own deployment: the retry goes
    // to the other one, tried before but without asking for a pause.
    let a = chat(&gw, "mixed", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-deployment"), "mixed/1");
    assert_eq!(a.header("x-switchyard-attempts"), "3");
    assert_eq!(sent_to(&mock, "ra::status=429,retry_after=120"), 1);

    // A Retry-After the request's deadline cannot wait for rules out its
    // deployment for this request, not the whole group: the cheaper one
    // (chosen first each time) asks for 4 s of a 2 s deadline, so the
    // last retry goes to the other, which has recovered.
    let a = chat(&gw, "hurried", json!({"timeout": 2})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-deployment"), "hurried/1");
    let seen: Vec<String> = mock.requests().iter().map(|r| r.body["model"].to_string()).collect();
    assert_eq!(a.header("x-switchyard-attempts"), "3", "{seen:?}");
    assert_eq!(sent_to(&mock, "ha::status=429,retry_after=4"), 1);
}

/// A retry whose untried deployments cannot take the request (the strategy
/// refuses them: no headroom under their tpm) goes back to the one tried,
/// which is still healthy, instead of giving up with retries left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_the_untried_deployments_cannot_take_goes_back_to_a_tried_one() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "  num_retries: 2\n  allowed_fails: 100",
        r#"
  - model_name: roomy
    routing_strategy: usage-based
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "ua::fail_first=1,status=500"}
      - {provider: openai, api_base: "{base}", api_key: k, model: "ub", tpm: 1}
"#,
    );
    let a = chat(&gw, "roomy", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-deployment"), "roomy/0");
    assert_eq!(a.header("x-switchyard-attempts"), "2");
    assert_eq!(sent_to(&mock, "ua::fail_first=1,status=500"), 2);
    assert_eq!(sent_to(&mock, "ub"), 0);
}

const FALLBACKS: &str = r#"
  - model_name: down
    fallbacks: [backup]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "down-a::status=503"}
      - {provider: openai, api_base: "{base}", api_key: k, model: "down-b::status=502"}
  - model_name: backup
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "backup-1"}
  - model_name: small
    context_window_fallbacks: [large]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "small-1::context_window=4"}
  - model_name: small-alone
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "small-2::context_window=4"}
  - model_name: large
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "large-1"}
  - model_name: strict
    content_policy_fallbacks: [backup]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "strict-1::content_filter"}
  - model_name: strict-alone
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "strict-2::content_filter"}
  - model_name: front
    fallbacks: [small]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "front-1::status=503"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_deployment_is_down_the_fallback_group_answers() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "  num_retries: 2\n  allowed_fails: 100", FALLBACKS);
    let a = chat(&gw, "down", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-model"), "backup");
    assert_eq!(a.header("x-switchyard-deployment"), "backup/0");
    // Three attempts in `down` (both deployments, then one again), one in `backup`.
    assert_eq!(a.header("x-switchyard-attempts"), "4");
    assert_eq!(
        sent_to(&mock, "down-a::status=503") + sent_to(&mock, "down-b::status=502"),
        3
    );
    assert!(sent_to(&mock, "down-a::status=503") >= 1 && sent_to(&mock, "down-b::status=502") >= 1);

    // Per-request overrides: fewer retries, other fallbacks, none at all.
    let a = chat(&gw, "down", json!({"num_retries": 0})).await;
    assert_eq!(a.header("x-switchyard-attempts"), "2");
    let a = chat(&gw, "down", json!({"num_retries": 0, "fallbacks": ["large"]})).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-switchyard-model"), "large");
    let a = chat(&gw, "down", json!({"num_retries": 1, "fallbacks": []})).await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(a.header("x-switchyard-attempts"), "2");
    assert_eq!(a.json()["error"]["code"], "upstream_error");
    // The gateway's own fields never reach the upstream.
    assert!(mock.requests().iter().all(|r| r.body.get("num_retries").is_none()
        && r.body.get("fallbacks").is_none()
        && r.body.get("timeout").is_none()));

    // Bad overrides are client errors naming the field.
    let a = chat(&gw, "down", json!({"fallbacks": ["nope"]})).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["param"], "fallbacks[0]");
    let a = chat(&gw, "down", json!({"num_retries": -1})).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["param"], "num_retries");
    let a = chat(&gw, "down", json!({"timeout": "soon"})).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["param"], "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_window_and_content_policy_fallbacks() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "", FALLBACKS);
    let short = chat(&gw, "small", json!({})).await;
    assert_eq!(short.status, 200);
    assert_eq!(short.header("x-switchyard-model"), "small");

    let long = json!({"messages": [{"role": "user", "content": "one two three four five six seven eight"}]});
    let a = chat(&gw, "small", long.clone()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-model"), "large");
    assert_eq!(
        a.header("x-switchyard-attempts"),
        "2",
        "a too-long prompt is not retried on the same group"
    );
    assert_eq!(a.json()["model"], "large-1");
    // Context-window fallbacks do not depend on the general `fallbacks`.
    let a = chat(&gw, "small", json!({"messages": long["messages"], "fallbacks": []})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-model"), "large");
    // Without a context-window fallback the upstream's 400 reaches the client.
    let a = chat(
        &gw,
        "large",
        json!({"messages": [{"role": "user", "content": "x ".repeat(5000)}]}),
    )
    .await;
    assert_eq!(a.status, 200, "large has no limit");
    // A group reached as a fallback uses its own context-window fallbacks.
    let a = chat(&gw, "front", long.clone()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-model"), "large");
    let a = chat(&gw, "small-alone", long).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "context_length_exceeded");

    let a = chat(&gw, "strict", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-model"), "backup");
    let a = chat(&gw, "strict-alone", json!({})).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "content_policy_violation");
    assert_eq!(a.header("x-switchyard-attempts"), "1");
}

/// When every deployment a request could still reach is cooling down, it is
/// sent to them anyway: a group with no fallback keeps answering once its
/// upstream recovers, instead of refusing for the whole cooldown. A group
/// with a fallback skips its cooling deployment, and the fallback answers
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_nowhere_else_to_go_is_tried_on_cooling_deployments() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "  num_retries: 0\n  allowed_fails: 2\n  cooldown_ms: 600000",
        r#"
  - model_name: lone
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "lone::fail_first=3,status=500"}
  - model_name: backed
    fallbacks: [spare]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "backed::status=500"}
  - model_name: spare
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "spare-1"}
"#,
    );
    for _ in 0..3 {
        assert_eq!(chat(&gw, "lone", json!({})).await.status, 502);
    }
    assert_eq!(breaker(&gw, "lone/0").await["state"], "open");
    let recovered = chat(&gw, "lone", json!({})).await;
    assert_eq!(recovered.status, 200, "{}", recovered.body);
    // A try made anyway leaves the breaker as it is (its probe is due
    // when the cooldown ends), streamed or not.
    assert_eq!(breaker(&gw, "lone/0").await["state"], "open");
    let streamed = chat(&gw, "lone", json!({"stream": true})).await;
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    assert_eq!(streamed.streamed().1.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(breaker(&gw, "lone/0").await["state"], "open");
    assert_eq!(
        sent_to(&mock, "lone::fail_first=3,status=500"),
        5,
        "every request reached the only deployment, cooling down or not"
    );
    // A request's own fallbacks are somewhere else to go: the cooling
    // deployment is skipped for them.
    let elsewhere = chat(&gw, "lone", json!({"fallbacks": ["spare"]})).await;
    assert_eq!(elsewhere.status, 200, "{}", elsewhere.body);
    assert_eq!(elsewhere.header("x-switchyard-model"), "spare");
    assert_eq!(sent_to(&mock, "lone::fail_first=3,status=500"), 5);

    for _ in 0..2 {
        assert_eq!(chat(&gw, "backed", json!({})).await.status, 200);
    }
    assert_eq!(breaker(&gw, "backed/0").await["state"], "open");
    let skipped = chat(&gw, "backed", json!({})).await;
    assert_eq!(skipped.status, 200, "{}", skipped.body);
    assert_eq!(skipped.header("x-switchyard-model"), "spare");
    assert_eq!(
        sent_to(&mock, "backed::status=500"),
        2,
        "the fallback answers without another try"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldown_is_entered_then_left_through_a_probe() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "  num_retries: 0\n  allowed_fails: 2\n  cooldown_fail_fast: true\n  cooldown_ms: 4000",
        r#"
  - model_name: flaky
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "f::fail_first=2,status=500"}
"#,
    );
    for _ in 0..2 {
        assert_eq!(chat(&gw, "flaky", json!({})).await.status, 502);
    }
    assert_eq!(breaker(&gw, "flaky/0").await["state"], "open");
    let a = chat(&gw, "flaky", json!({})).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "no_deployment");
    assert_eq!(
        sent_to(&mock, "f::fail_first=2,status=500"),
        2,
        "no request reaches a deployment in cooldown"
    );

    // Wait for the cooldown to end (polling the admin endpoint), then one probe closes the breaker.
    let mut state = Value::Null;
    for _ in 0..400 {
        state = breaker(&gw, "flaky/0").await;
        if state["remaining_ms"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state["remaining_ms"], 0, "{state}");
    let a = chat(&gw, "flaky", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(breaker(&gw, "flaky/0").await["state"], "closed");
    assert_eq!(chat(&gw, "flaky", json!({})).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_takes_the_deployment_out_until_reload() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "  cooldown_ms: 1",
        r#"
  - model_name: keys
    routing_strategy: cost-based
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "revoked::status=401", input_cost_per_token: 0.000001}
      - {provider: openai, api_base: "{base}", api_key: k, model: "valid", input_cost_per_token: 0.00001}
  - model_name: locked
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "locked::status=403"}
"#,
    );
    // With no deployment left, the client learns that the gateway's upstream
    // credentials failed: a 502, not the upstream's 401/403 and its words.
    let locked = chat(&gw, "locked", json!({})).await;
    assert_eq!(locked.status, 502, "{}", locked.body);
    let body = locked.json();
    assert_eq!(body["error"]["code"], "upstream_auth_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("credentials") && !message.contains("mock upstream error") && !message.contains("proj_mock"),
        "{message}"
    );
    let a = chat(&gw, "keys", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-attempts"), "2");
    assert_eq!(breaker(&gw, "keys/0").await["state"], "key_invalid");
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..3 {
        assert_eq!(chat(&gw, "keys", json!({})).await.header("x-switchyard-attempts"), "1");
    }
    assert_eq!(sent_to(&mock, "revoked::status=401"), 1);
}

/// A 403 that refuses the prompt under a content policy (OpenRouter's
/// moderation) is the client's answer, with the upstream's words, and a
/// content-policy fallback's cue; the deployment's key stays in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderation_refusal_is_not_a_rejected_key() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "",
        r#"
  - model_name: moderated
    content_policy_fallbacks: [clean]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "strict::moderated"}
  - model_name: clean
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "lenient"}
  - model_name: alone
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "strict::moderated"}
"#,
    );
    let refused = chat(&gw, "alone", json!({})).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let message = refused.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("was flagged"), "{message}");
    assert_eq!(breaker(&gw, "alone/0").await["state"], "closed");
    for _ in 0..2 {
        let a = chat(&gw, "moderated", json!({})).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-switchyard-model"), "clean");
    }
    assert_eq!(breaker(&gw, "moderated/0").await["state"], "closed");
    assert_eq!(sent_to(&mock, "strict::moderated"), 3, "each request tried it");
}

/// An answer the upstream cut short (vLLM's `finish_reason: "abort"`) is a
/// failed attempt: another deployment answers, and alone the client gets a
/// 502, not the partial answer as a finished one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_engine_aborted_is_a_failed_attempt() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "  num_retries: 1",
        r#"
  - model_name: both
    routing_strategy: cost-based
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "cut::engine_abort", input_cost_per_token: 0.000001}
      - {provider: openai, api_base: "{base}", api_key: k, model: "whole", input_cost_per_token: 0.00001}
  - model_name: cut
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "cut::engine_abort"}
"#,
    );
    let a = chat(&gw, "both", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["model"], "whole", "{}", a.body);
    assert_eq!(a.header("x-switchyard-attempts"), "2");
    let alone = chat(&gw, "cut", json!({})).await;
    assert_eq!(alone.status, 502, "{}", alone.body);
    assert!(
        alone.json()["error"]["message"].as_str().unwrap().contains("abort"),
        "{}",
        alone.body
    );
}

/// An upstream's 402 is about the gateway's account: another deployment
/// answers, and alone the client gets a 502 that says whose bill it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_asking_for_payment_is_the_deployments_fault() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "",
        r#"
  - model_name: unpaid
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "broke::status=402"}
  - model_name: either
    routing_strategy: cost-based
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "broke::status=402", input_cost_per_token: 0.000001}
      - {provider: openai, api_base: "{base}", api_key: k, model: "paid", input_cost_per_token: 0.00001}
"#,
    );
    let alone = chat(&gw, "unpaid", json!({})).await;
    assert_eq!(alone.status, 502, "{}", alone.body);
    let error = &alone.json()["error"];
    assert_eq!(error["code"], "upstream_payment_required", "{error}");
    assert!(error["message"].as_str().unwrap().contains("billing"), "{error}");
    let either = chat(&gw, "either", json!({})).await;
    assert_eq!(either.status, 200, "{}", either.body);
    assert_eq!(either.header("x-switchyard-deployment"), "either/1");
    assert_eq!(either.header("x-switchyard-attempts"), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_redirect_is_not_followed() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "",
        r#"
  - model_name: openai
    deployments:
      - {provider: openai, api_base: "{base}", api_key: sk-upstream-secret, model: "m::redirect"}
  - model_name: azure
    deployments:
      - {provider: azure, api_base: "{root}", api_key: azure-secret, api_version: "2024-10-21", model: "d::redirect"}
  - model_name: anthropic
    deployments:
      - {provider: anthropic, api_base: "{root}", api_key: sk-ant-secret, model: "claude-3-5-haiku::redirect"}
  - model_name: mixed
    routing_strategy: cost-based
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "moved::redirect", input_cost_per_token: 0.000001}
      - {provider: openai, api_base: "{base}", api_key: k, model: "stays", input_cost_per_token: 0.00001}
"#,
    );
    for model in ["openai", "azure", "anthropic"] {
        for stream in [false, true] {
            let answer = chat(&gw, model, json!({"stream": stream})).await;
            assert_eq!(answer.status, 502, "{model}: {}", answer.body);
            let message = answer.json()["error"]["message"].as_str().unwrap().to_owned();
            assert!(message.contains("redirect"), "{model}: {message}");
            // A failure keeps the id the upstream gave its answer.
            assert!(
                answer
                    .header("x-switchyard-upstream-request-id")
                    .starts_with("req_mock"),
                "{model}: {:?}",
                answer.headers
            );
        }
    }
    // The prompt and the deployments' credentials never reached the
    // address the upstream named.
    // A deployment that redirects is misconfigured: another deployment of
    // the group answers, and its breaker counts the redirects (3 allowed).
    for _ in 0..3 {
        let a = chat(&gw, "mixed", json!({})).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-switchyard-deployment"), "mixed/1");
        assert_eq!(a.header("x-switchyard-attempts"), "2");
    }
    assert_eq!(breaker(&gw, "mixed/0").await["state"], "open");
    let a = chat(&gw, "mixed", json!({})).await;
    assert_eq!((a.status, a.header("x-switchyard-attempts")), (200, "1"));
    assert_eq!(sent_to(&mock, "moved::redirect"), 3);
    let requests = mock.requests();
    assert_eq!(requests.len(), 6 + 3 + 4, "{requests:?}");
    assert!(
        requests.iter().all(|r| r.path != switchyard_testkit::REDIRECT_TARGET),
        "{requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_before_its_first_event_falls_back_cleanly() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "  num_retries: 0",
        r#"
  - model_name: stalls
    fallbacks: [backup]
    deployments:
      - provider: openai
        api_base: "{base}"
        api_key: k
        model: "stall::first_event_ms=5000"
        timeouts: {first_byte_ms: 300}
  - model_name: drops
    fallbacks: [backup]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "drop::reset_after=0"}
  - model_name: late
    fallbacks: [backup]
    deployments:
      # Its head, then its first event, each in time; together, not.
      - provider: openai
        api_base: "{base}"
        api_key: k
        model: "late::first_byte_ms=450,first_event_ms=450"
        timeouts: {first_byte_ms: 700}
  - model_name: backup
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "backup-1"}
"#,
    );
    for model in ["stalls", "drops", "late"] {
        let a = chat(&gw, model, json!({"stream": true})).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-switchyard-model"), "backup");
        assert_eq!(a.header("x-switchyard-attempts"), "2");
        let (text, events) = a.streamed();
        assert_eq!(text, "mock reply: hello there", "{model}");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        assert!(!a.body.contains("error"), "no trace of the failed attempt: {}", a.body);
        let roles = events.iter().filter(|e| e.contains("\"role\"")).count();
        assert_eq!(roles, 1, "one stream, from one deployment: {}", a.body);
    }
    assert_eq!(sent_to(&mock, "stall::first_event_ms=5000"), 1);
}

/// A server answering a request for a stream with JSON: its error reaches
/// the client as the error it is (not retried as a broken stream); a whole
/// answer from a server that does not stream is the deployment's fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_answer_to_a_stream_request_is_read_as_json() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "  num_retries: 0",
        r#"
  - model_name: refuses
    fallbacks: [backup]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "refuse::json_error"}
  - model_name: ignores
    fallbacks: [backup]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "ignore::no_stream"}
  - model_name: mislabels
    fallbacks: [backup]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "label::json_labelled"}
  - model_name: backup
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "backup-1"}
"#,
    );
    let a = chat(&gw, "refuses", json!({"stream": true})).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()["error"]["message"], "this model cannot stream", "{}", a.body);
    assert_eq!(
        sent_to(&mock, "backup-1"),
        0,
        "a client error is not a reason to fall back"
    );

    let a = chat(&gw, "ignores", json!({"stream": true})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-model"), "backup");
    let (text, events) = a.streamed();
    assert_eq!(text, "mock reply: hello there");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    // An event stream labelled JSON is still a stream.
    let a = chat(&gw, "mislabels", json!({"stream": true})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-model"), "mislabels");
    let (text, events) = a.streamed();
    assert_eq!(text, "mock reply: hello there");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_after_its_first_event_ends_with_an_error_event() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "",
        r#"
  - model_name: breaks
    fallbacks: [backup]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "brk::reset_after=2"}
  - model_name: backup
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "backup-1"}
"#,
    );
    let a = chat(&gw, "breaks", json!({"stream": true})).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-switchyard-attempts"), "1");
    let (text, events) = a.streamed();
    assert_eq!(text, "mock reply: ", "the two chunks sent before the failure");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "upstream_error", "{}", a.body);
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_eq!(sent_to(&mock, "backup-1"), 0, "never switches provider mid-stream");

    let metrics = metrics(&gw).await;
    assert!(
        metrics.lines().any(|l| l.starts_with("switchyard_stream_errors_total{")
            && l.contains(r#"deployment="breaks/0""#)
            && l.ends_with(" 1")),
        "{metrics}"
    );
}

/// A stream that stalls after its first output is ended once `idle_ms`
/// passes without an event: the client gets an error event naming the
/// timeout instead of waiting for the total timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_after_its_first_output_times_out() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "  num_retries: 0",
        r#"
  - model_name: stalls
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "st::chunks=3,chunk_delay_ms=20000", timeouts: {idle_ms: 500}}
"#,
    );
    let a = chat(&gw, "stalls", json!({"stream": true})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let (_, events) = a.streamed();
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{}", a.body);
    assert!(!events.iter().any(|e| e == "[DONE]"), "{}", a.body);
    let metrics = metrics(&gw).await;
    assert!(
        metrics.lines().any(|l| l.starts_with("switchyard_stream_errors_total{")
            && l.contains(r#"deployment="stalls/0""#)
            && l.contains(r#"error="timeout""#)),
        "{metrics}"
    );
}

/// A request a server refuses in its stream's first event (vLLM answers
/// 200 to every stream and reports what it refuses after) gets the
/// refusal as an HTTP error, as if the server had answered it so: not
/// retried, not sent to a fallback, not held against the deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_in_a_streams_first_event_is_the_answer() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "  num_retries: 2\n  allowed_fails: 1\n  cooldown_ms: 600000",
        r#"
  - model_name: strict
    fallbacks: [other]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "sm::refused_in_stream"}
  - model_name: converse
    fallbacks: [other]
    deployments:
      - {provider: bedrock, api_base: "{root}", aws_region: us-east-1, aws_access_key_id: AKIDTEST, aws_secret_access_key: test-secret, model: "amazon.nova-lite-v1:0::refused_in_stream"}
  - model_name: invoke
    fallbacks: [other]
    deployments:
      - {provider: bedrock, api_base: "{root}", aws_region: us-east-1, aws_access_key_id: AKIDTEST, aws_secret_access_key: test-secret, model: "anthropic.claude-3-5-sonnet-20240620-v1:0::refused_in_stream"}
  - model_name: other
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "other-1"}
"#,
    );
    for _ in 0..2 {
        let a = chat(&gw, "strict", json!({"stream": true})).await;
        assert_eq!(a.status, 400, "{}", a.body);
        assert_eq!(a.header("x-switchyard-attempts"), "1");
        assert!(a.body.contains("best_of must be 1"), "{}", a.body);
    }
    assert_eq!(sent_to(&mock, "sm::refused_in_stream"), 2, "not retried");
    // Bedrock's refusal in a stream's first frame, by ConverseStream and
    // by Claude's InvokeModelWithResponseStream.
    for group in ["converse", "invoke"] {
        for _ in 0..2 {
            let a = chat(&gw, group, json!({"stream": true})).await;
            assert_eq!(a.status, 400, "{group}: {}", a.body);
            assert_eq!(a.header("x-switchyard-attempts"), "1", "{group}");
            assert!(a.body.contains("Did not find 1"), "{group}: {}", a.body);
        }
        assert_eq!(breaker(&gw, &format!("{group}/0")).await["state"], "closed", "{group}");
    }
    assert_eq!(sent_to(&mock, "other-1"), 0, "no fallback answers for it");
    assert_eq!(breaker(&gw, "strict/0").await["state"], "closed");
}

/// A deployment whose model lacks what the request uses (Ollama's "does
/// not support tools") hands it to one that has it, without counting
/// against its health; with none that can, the client gets the 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_a_capability_hands_the_request_on() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "  num_retries: 0\n  allowed_fails: 1\n  cooldown_ms: 600000",
        r#"
  - model_name: local
    routing_strategy: cost-based
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "small::no_tools", input_cost_per_token: 0.0000001}
      - {provider: openai, api_base: "{base}", api_key: k, model: "tooled", input_cost_per_token: 0.000001}
  - model_name: only-small
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "lone::no_tools"}
"#,
    );
    let tools = json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]});
    for _ in 0..2 {
        let a = chat(&gw, "local", tools.clone()).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-switchyard-deployment"), "local/1");
    }
    assert_eq!(breaker(&gw, "local/0").await["state"], "closed");
    // Without tools the cheap model answers.
    let plain = chat(&gw, "local", json!({})).await;
    assert_eq!(plain.header("x-switchyard-deployment"), "local/0");
    let none = chat(&gw, "only-small", tools).await;
    assert_eq!(none.status, 400, "{}", none.body);
    assert!(none.body.contains("does not support tools"), "{}", none.body);
}

/// What a deployment or a fallback group cannot take (tools a model lacks)
/// does not replace the failure the client should see: the upstream's 429
/// and its Retry-After come back, which an SDK retries, not a 400 it would
/// not. A refused prompt goes only where its own list sends it, also when
/// a group on that list cannot route it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_cannot_take_the_request_leaves_the_client_the_earlier_failure() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "  max_retry_after_ms: 5000\n  num_retries: 2",
        r#"
  - model_name: mixed
    routing_strategy: cost-based
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "busy::status=429,retry_after=120", input_cost_per_token: 0.000001}
      - {provider: openai, api_base: "{base}", api_key: k, model: "small::no_tools", input_cost_per_token: 0.00001}
  - model_name: primary
    fallbacks: [local]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "primary::status=429,retry_after=120"}
  - model_name: local
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "lone::no_tools"}
  - model_name: flagged
    content_policy_fallbacks: [moderated]
    fallbacks: [anything]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "flagged-1::content_filter"}
  - model_name: moderated
    routing_strategy: usage-based
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "moderated-1", rpm: 1}
  - model_name: anything
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "anything-1"}
"#,
    );
    let tools = json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]});
    for group in ["mixed", "primary"] {
        let a = chat(&gw, group, tools.clone()).await;
        assert_eq!(a.status, 429, "{group}: {}", a.body);
        assert_eq!(a.header("retry-after"), "120", "{group}");
        assert_eq!(a.json()["error"]["type"], "rate_limit_error", "{group}");
    }
    assert_eq!(sent_to(&mock, "small::no_tools"), 1);
    assert_eq!(sent_to(&mock, "lone::no_tools"), 1);

    // The content-policy fallback has used its minute: the refusal is the
    // client's answer, and the general fallback never sees the prompt.
    assert_eq!(chat(&gw, "moderated", json!({})).await.status, 200);
    let a = chat(&gw, "flagged", json!({})).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "content_policy_violation");
    assert_eq!(sent_to(&mock, "anything-1"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_bounds_retries_and_anthropic_clients_get_fallbacks_too() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "",
        r#"
  - model_name: slow
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "slow::first_byte_ms=10000"}
  - model_name: claude-busy
    fallbacks: [claude-ok]
    deployments:
      - {provider: anthropic, api_base: "{root}", api_key: k, model: "busy::status=529"}
  - model_name: claude-ok
    deployments:
      - {provider: anthropic, api_base: "{root}", api_key: k, model: "claude-ok-1"}
"#,
    );
    let a = chat(&gw, "slow", json!({"timeout": 0.3})).await;
    assert_eq!(a.status, 504, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "request_timeout");

    let body = json!({"model": "claude-busy", "max_tokens": 50, "num_retries": 1,
        "messages": [{"role": "user", "content": "hello there"}]});
    let a = post(&gw, "/v1/messages", body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-model"), "claude-ok");
    assert_eq!(a.header("x-switchyard-attempts"), "3");
    assert_eq!(a.json()["type"], "message");

    let mut stream = body;
    stream["stream"] = json!(true);
    let a = post(&gw, "/v1/messages", stream).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-switchyard-model"), "claude-ok");
    assert!(a.body.contains("event: message_stop"), "{}", a.body);

    let a = post(
        &gw,
        "/v1/messages",
        json!({"model": "claude-ok", "max_tokens": 5, "fallbacks": "x",
        "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["type"], "error");
    assert_eq!(a.json()["error"]["param"], "fallbacks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_deadline_counts_against_the_deployment_and_a_clients_shorter_one_does_not() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "  num_retries: 0\n  allowed_fails: 2\n  cooldown_fail_fast: true\n  cooldown_ms: 600000\n  timeout_ms: 400",
        r#"
  - model_name: hang
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "hang::first_byte_ms=10000"}
"#,
    );
    for _ in 0..3 {
        let a = chat(&gw, "hang", json!({"timeout": 0.1})).await;
        assert_eq!(a.status, 504, "{}", a.body);
    }
    let state = breaker(&gw, "hang/0").await;
    assert_eq!(
        state["state"], "closed",
        "a client's own short deadline is not the deployment's fault: {state}"
    );
    assert_eq!(state["recent_failures"], 0, "{state}");

    for _ in 0..2 {
        let a = chat(&gw, "hang", json!({})).await;
        assert_eq!(a.status, 504, "{}", a.body);
        assert_eq!(a.json()["error"]["code"], "request_timeout");
    }
    let state = breaker(&gw, "hang/0").await;
    assert_eq!(state["state"], "open", "two configured deadlines passed: {state}");
    let a = chat(&gw, "hang", json!({})).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(sent_to(&mock, "hang::first_byte_ms=10000"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_over_its_rate_limits_falls_back() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "",
        r#"
  - model_name: quota
    routing_strategy: usage-based
    fallbacks: [backup]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "quota-1", rpm: 1}
  - model_name: backup
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "backup-1"}
"#,
    );
    let a = chat(&gw, "quota", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-model"), "quota");
    let a = chat(&gw, "quota", json!({})).await;
    assert_eq!(
        a.status, 200,
        "the fallback answers once the group is over its rpm: {}",
        a.body
    );
    assert_eq!(a.header("x-switchyard-model"), "backup");
    assert_eq!(sent_to(&mock, "quota-1"), 1);

    let a = chat(&gw, "quota", json!({"fallbacks": []})).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "no_deployment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_one_provider_lacks_goes_to_another_deployment_of_the_group() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "",
        r#"
  - model_name: claude
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "claude-via-openai"}
      - {provider: anthropic, api_base: "{root}", api_key: k, model: "claude-native"}
  - model_name: openai-only
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "gpt"}
  - model_name: openai-then-claude
    fallbacks: [claude]
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "gpt-2"}
"#,
    );
    let body = json!({"model": "claude", "messages": [{"role": "user", "content": "hello there"}]});
    for _ in 0..12 {
        let a = post(&gw, "/v1/messages/count_tokens", body.clone()).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.json()["input_tokens"].as_u64().unwrap() > 0, "{}", a.body);
        assert_eq!(a.header("x-switchyard-deployment"), "claude/1");
    }
    assert_eq!(breaker(&gw, "claude/0").await["state"], "closed");

    // The gateway's own fields never go upstream, cache controls included.
    let mut message = body.clone();
    message["max_tokens"] = json!(20);
    message["cache"] = json!({"no-cache": true});
    message["num_retries"] = json!(1);
    for _ in 0..4 {
        let a = post(&gw, "/v1/messages", message.clone()).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    message["cache"] = json!("yes");
    let a = post(&gw, "/v1/messages", message).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()["error"]["param"], "cache", "{}", a.body);
    for request in mock.requests() {
        assert!(
            request.body.get("cache").is_none() && request.body.get("num_retries").is_none(),
            "{}",
            request.body
        );
    }

    // No deployment of the group can count tokens: its fallback does.
    let mut falls = body.clone();
    falls["model"] = json!("openai-then-claude");
    let a = post(&gw, "/v1/messages/count_tokens", falls).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-model"), "claude");

    let mut only = body;
    only["model"] = json!("openai-only");
    // No deployment can count at all: the gateway's estimate, marked as one.
    let a = post(&gw, "/v1/messages/count_tokens", only).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-token-count"), "estimate");
    // Four bytes a token, of the text and of a message's 16-byte allowance.
    assert_eq!(
        a.json()["input_tokens"],
        ("hello there".len() + 16).div_ceil(4),
        "{}",
        a.body
    );
}

/// Tokens of Anthropic-format answers, JSON and streamed, count against a
/// deployment's `tpm`, so `usage-based` stops choosing it when it is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_answers_count_against_tpm() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "",
        r#"
  - model_name: claude
    routing_strategy: usage-based
    fallbacks: [spare]
    deployments:
      - {provider: anthropic, api_base: "{root}", api_key: k, model: "claude-native", tpm: 60}
  - model_name: spare
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "spare-1"}
"#,
    );
    let used = |deployments: Vec<Value>| {
        deployments.into_iter().find(|d| d["deployment"] == "claude/0").unwrap()["stats"]["tpm_used"]
            .as_u64()
            .unwrap_or_else(|| panic!("no tpm_used"))
    };
    let body = json!({"model": "claude", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hello there, how are you today?"}]});
    let a = post(&gw, "/v1/messages", body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-model"), "claude");
    let usage = &a.json()["usage"];
    let tokens = usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap();
    assert!(tokens > 0);
    assert_eq!(used(admin(&gw).await), tokens, "the JSON answer's tokens");

    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let s = post(&gw, "/v1/messages", stream).await;
    assert_eq!(s.status, 200, "{}", s.body);
    let mut after = 0;
    for _ in 0..50 {
        after = used(admin(&gw).await);
        if after > tokens {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(after > tokens, "the stream's tokens count too: {after}");

    // Once the minute's tokens are spent, the fallback answers.
    let mut served_by = String::new();
    for _ in 0..10 {
        let a = post(&gw, "/v1/messages", body.clone()).await;
        assert_eq!(a.status, 200, "{}", a.body);
        served_by = a.header("x-switchyard-model").to_owned();
        if served_by == "spare" {
            break;
        }
    }
    assert_eq!(served_by, "spare", "usage-based stops at the deployment's tpm");
}

/// A reload keeps what the gateway learned about the deployments it keeps:
/// an open breaker stays open, and this minute's requests stay counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_breakers_and_statistics_of_deployments_it_keeps() {
    let mock = MockUpstream::start().await;
    let router = "  num_retries: 0\n  allowed_fails: 2\n  cooldown_fail_fast: true\n  cooldown_ms: 600000";
    let models = r#"
  - model_name: flaky
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "f::status=500"}
  - model_name: steady
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "steady-1"}
"#;
    let gw = gateway(&mock, router, models);
    for _ in 0..2 {
        assert_eq!(chat(&gw, "flaky", json!({})).await.status, 502);
    }
    assert_eq!(chat(&gw, "steady", json!({})).await.status, 200);
    assert_eq!(breaker(&gw, "flaky/0").await["state"], "open");

    let grown = format!(
        "router_settings:\n  retry_backoff_ms: 10\n  max_backoff_ms: 50\n{router}\nmodel_list:\n{models}  - model_name: extra\n    deployments:\n      - {{provider: openai, api_base: \"{{base}}\", api_key: k, model: \"extra-1\"}}\n"
    )
    .replace("{base}", &mock.base_url());
    std::fs::write(gw.config_path(), grown).unwrap();
    gw.signal("HUP");
    let mut reloaded = false;
    for _ in 0..200 {
        if admin(&gw).await.iter().any(|d| d["deployment"] == "extra/0") {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(reloaded, "{:?}", gw.logs());
    assert_eq!(
        breaker(&gw, "flaky/0").await["state"],
        "open",
        "the breaker survives the reload"
    );
    let a = chat(&gw, "flaky", json!({})).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(sent_to(&mock, "f::status=500"), 2);
    let steady = admin(&gw)
        .await
        .into_iter()
        .find(|d| d["deployment"] == "steady/0")
        .unwrap();
    assert_eq!(steady["stats"]["successes"], 1, "{steady}");
    assert_eq!(steady["stats"]["rpm_used"], 1, "{steady}");

    // A deployment added before it: the open breaker follows its upstream
    // (now `flaky/1`), not its place in the group.
    let reordered = format!(
        "router_settings:\n  retry_backoff_ms: 10\n  max_backoff_ms: 50\n{router}\nmodel_list:\n{}",
        models.replace(
            "      - {provider: openai, api_base: \"{base}\", api_key: k, model: \"f::status=500\"}\n",
            "      - {provider: openai, api_base: \"{base}\", api_key: k, model: \"f-new\"}\n      - {provider: openai, api_base: \"{base}\", api_key: k, model: \"f::status=500\"}\n",
        )
    )
    .replace("{base}", &mock.base_url());
    std::fs::write(gw.config_path(), reordered).unwrap();
    gw.signal("HUP");
    let mut moved = false;
    for _ in 0..800 {
        if admin(&gw).await.iter().any(|d| d["deployment"] == "flaky/1") {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(moved, "{:?}", gw.logs());
    assert_eq!(breaker(&gw, "flaky/1").await["state"], "open");
    assert_eq!(breaker(&gw, "flaky/0").await["state"], "closed");
    let a = chat(&gw, "flaky", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(sent_to(&mock, "f::status=500"), 2);
}

/// A request running across a reload reports to the statistics the new
/// configuration reads: it stays counted in flight, and its answer counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_running_across_a_reload_counts_in_the_new_configuration() {
    let mock = MockUpstream::start().await;
    let models = r#"
  - model_name: slow
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "s::first_byte_ms=6000"}
"#;
    let gw = gateway(&mock, "  num_retries: 0", models);
    let url = format!("{}/v1/chat/completions", gw.base_url());
    let running = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"model": "slow", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    for _ in 0..200 {
        if stat(&gw, "slow/0", "in_flight").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stat(&gw, "slow/0", "in_flight").await, 1);
    let grown = format!(
        "router_settings:\n  retry_backoff_ms: 10\n  max_backoff_ms: 50\n  num_retries: 0\nmodel_list:\n{models}  - model_name: extra\n    deployments:\n      - {{provider: openai, api_base: \"{{base}}\", api_key: k, model: \"extra-1\"}}\n"
    )
    .replace("{base}", &mock.base_url());
    std::fs::write(gw.config_path(), grown).unwrap();
    gw.signal("HUP");
    let mut reloaded = false;
    for _ in 0..1000 {
        if admin(&gw).await.iter().any(|d| d["deployment"] == "extra/0") {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reloaded, "{:?}", gw.logs());
    assert_eq!(
        stat(&gw, "slow/0", "in_flight").await,
        1,
        "still running after the reload"
    );
    assert_eq!(running.await.unwrap(), 200);
    assert_eq!(stat(&gw, "slow/0", "in_flight").await, 0);
    assert_eq!(
        stat(&gw, "slow/0", "successes").await,
        1,
        "its answer counts where the new configuration reads"
    );
}

/// An error the upstream sends inside a stream keeps its kind: OpenAI's
/// `server_error` chunk, Anthropic's `overloaded_error` and Bedrock's
/// `internalServerException` are server errors (as their HTTP statuses would
/// be), not malformed answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_inside_a_stream_keep_their_kind() {
    let mock = MockUpstream::start().await;
    let gw = GatewayProcess::start_with(
        Path::new(BIN),
        &format!(
            "router_settings:\n  num_retries: 0\nmodel_list:\n  - model_name: gpt\n    deployments:\n      - {{provider: openai, api_base: \"{base}\", api_key: k, model: \"g::error_event\"}}\n  - model_name: claude\n    deployments:\n      - {{provider: anthropic, api_base: \"{root}\", api_key: k, model: \"c::error_event\"}}\n  - model_name: bedrock\n    deployments:\n      - {{provider: bedrock, api_base: \"{root}\", aws_region: us-east-1, aws_access_key_id: AKIDTEST, aws_secret_access_key: test-secret, model: \"anthropic.claude-3-5-sonnet-20240620-v1:0::error_event\"}}\n",
            root = mock.root_url(),
            base = mock.base_url()
        ),
        &[],
        &[],
    );
    for (model, text) in [
        ("gpt", "The server had an error"),
        ("claude", "Overloaded"),
        ("bedrock", "mock upstream stream error"),
    ] {
        let a = chat(&gw, model, json!({"stream": true})).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let (_, events) = a.streamed();
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert!(last["error"]["message"].as_str().unwrap().contains(text), "{last}");
    }
    let metrics = metrics(&gw).await;
    for deployment in ["gpt/0", "claude/0", "bedrock/0"] {
        assert!(
            metrics.lines().any(|l| l.starts_with("switchyard_stream_errors_total{")
                && l.contains(&format!("deployment=\"{deployment}\""))
                && l.contains("error=\"server_error\"")),
            "{deployment}: {metrics}"
        );
    }
}

/// Anthropic clients get Anthropic-shaped errors for bodies that do not
/// parse too, and the request id where their SDKs look for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_routes_answer_bad_bodies_in_anthropic_shape() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "",
        r#"
  - model_name: claude
    deployments:
      - {provider: anthropic, api_base: "{root}", api_key: k, model: "claude-native"}
  - model_name: busy
    deployments:
      - {provider: anthropic, api_base: "{root}", api_key: k, model: "busy::status=529"}
"#,
    );
    // An upstream that is overloaded says so to Anthropic clients.
    let a = post(
        &gw,
        "/v1/messages",
        json!({"model": "busy", "max_tokens": 5, "num_retries": 0, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(a.status, 529, "{}", a.body);
    assert_eq!(a.json()["error"]["type"], "overloaded_error", "{}", a.body);
    let http = reqwest::Client::new();
    for (path, body) in [
        ("/v1/messages", "{not json"),
        (
            "/v1/messages",
            r#"{"model": "claude", "max_tokens": 5, "messages": "hi"}"#,
        ),
        ("/v1/messages/count_tokens", "[1, 2"),
    ] {
        let response = http
            .post(format!("{}{path}", gw.base_url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path} {body}");
        let id = response.headers()["request-id"].to_str().unwrap().to_owned();
        assert_eq!(id, response.headers()["x-request-id"].to_str().unwrap());
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    }
    let a = post(
        &gw,
        "/v1/messages",
        json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.header("request-id").starts_with("req-"));
    let chat = chat(&gw, "claude", json!({})).await;
    assert_eq!(chat.header("request-id"), "", "OpenAI routes keep only x-request-id");
}

/// A configured fallback the caller's key may not call is skipped: a key
/// limited to one model never gets another's answers through a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_respect_the_keys_models() {
    let mock = MockUpstream::start().await;
    let master = "sk-master-key-for-fallback-tests";
    let gw = GatewayProcess::start(
        Path::new(BIN),
        &format!(
            "policy:\n  master_key: {master}\nrouter_settings:\n  num_retries: 0\nmodel_list:\n  - model_name: down\n    fallbacks: [backup]\n    deployments:\n      - {{provider: openai, api_base: \"{base}\", api_key: k, model: \"down::status=503\"}}\n  - model_name: backup\n    deployments:\n      - {{provider: openai, api_base: \"{base}\", api_key: k, model: \"backup-1\"}}\n",
            base = mock.base_url()
        ),
    );
    let http = reqwest::Client::new();
    let key = |models: Value| {
        let request = http
            .post(format!("{}/key/generate", gw.base_url()))
            .bearer_auth(master)
            .json(&json!({"models": models}));
        async move {
            request.send().await.unwrap().json::<Value>().await.unwrap()["key"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let ask = |key: String| {
        let request = http
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .bearer_auth(key)
            .json(&json!({"model": "down", "messages": [{"role": "user", "content": "hello"}]}));
        async move {
            let response = request.send().await.unwrap();
            let model = response
                .headers()
                .get("x-switchyard-model")
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status().as_u16(), model)
        }
    };
    let only_down = key(json!(["down"])).await;
    assert_eq!(
        ask(only_down).await,
        (502, None),
        "the fallback it may not call is skipped"
    );
    let both = key(json!(["down", "backup"])).await;
    assert_eq!(ask(both).await, (200, Some("backup".to_owned())));
    assert_eq!(ask(master.to_owned()).await, (200, Some("backup".to_owned())));
    assert_eq!(sent_to(&mock, "backup-1"), 2);
}

/// A client that leaves stops the retries made for it: the attempt under
/// way finishes (it is billed upstream), and no new one starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_when_the_client_leaves() {
    let mock = MockUpstream::start().await;
    let model = "slow-fail::first_byte_ms=300,status=500";
    let gw = gateway(
        &mock,
        "  num_retries: 6\n  max_num_retries: 6\n  allowed_fails: 100",
        &format!(
            "  - model_name: flaky\n    deployments:\n      - {{provider: openai, api_base: \"{{base}}\", api_key: k, model: \"{model}\"}}\n"
        ),
    );
    let left = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .timeout(Duration::from_millis(450))
        .json(&json!({"model": "flaky", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await;
    assert!(left.is_err(), "the client gave up first");
    // Seven attempts of 300 ms each would take over 2 s.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let sent = sent_to(&mock, model);
    assert!(sent <= 2, "{sent} attempts for a client that left");
}

/// An upstream that reports no usage still uses up its `tpm`: the answer
/// counts as it is charged (the prompt's estimate and the output by length
/// or by events), JSON and streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_without_usage_count_against_tpm() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "",
        r#"
  - model_name: quiet
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "quiet-1::no_usage", tpm: 100000}
  - model_name: partial
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "partial-1::partial_usage", tpm: 100000}
"#,
    );
    let used_by = |deployment: &'static str| stat(&gw, deployment, "tpm_used");
    // Usage without `total_tokens` counts its prompt and completion.
    let mut partial = 0;
    for _ in 0..2 {
        let a = chat(&gw, "partial", json!({})).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.json()["usage"].get("total_tokens").is_none(), "{}", a.body);
        partial = used_by("partial/0").await;
        if partial > 0 {
            break;
        }
    }
    assert!(partial > 0, "an answer whose usage had no total counted nothing");
    let used = || used_by("quiet/0");
    // Counted per minute: an answer just before the minute turns may read
    // as 0 after it, so one more request settles it.
    let mut after_json = 0;
    for _ in 0..2 {
        let a = chat(&gw, "quiet", json!({})).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.json().get("usage").is_none_or(Value::is_null), "{}", a.body);
        after_json = used().await;
        if after_json > 0 {
            break;
        }
    }
    assert!(
        after_json > 0,
        "a JSON answer without usage counted {after_json} tokens"
    );
    let s = chat(&gw, "quiet", json!({"stream": true})).await;
    assert_eq!(s.status, 200, "{}", s.body);
    let mut after_stream = after_json;
    for _ in 0..50 {
        after_stream = used().await;
        if after_stream > after_json {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(after_stream > after_json, "a stream without usage counted nothing");
}

/// Requests the upstream took but nobody waited for still count against the
/// deployment's `rpm`: a stream the client abandoned, and an attempt the
/// client's own short `timeout` cut before the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_and_cut_requests_count_against_rpm() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "",
        r#"
  - model_name: slow-stream
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "s::chunks=40,chunk_delay_ms=50", rpm: 1000}
  - model_name: slow-answer
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "a::first_byte_ms=3000", rpm: 1000}
  - model_name: quick-stream
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "q::chunks=3", rpm: 1000}
"#,
    );
    let rpm = |deployment: &'static str| stat(&gw, deployment, "rpm_used");
    // Counted per minute: a request just before the minute turns may read
    // as 0 after it, so the check is made again with another request.
    let mut counted = (0, 0);
    for _ in 0..2 {
        let mut response = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", gw.base_url()))
            .json(&json!({"model": "slow-stream", "stream": true,
                          "messages": [{"role": "user", "content": "hello there"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.chunk().await.unwrap().is_some());
        drop(response);
        let cut = chat(&gw, "slow-answer", json!({"timeout": 0.2})).await;
        assert_eq!(cut.status, 504, "{}", cut.body);
        for _ in 0..100 {
            counted = (rpm("slow-stream/0").await, rpm("slow-answer/0").await);
            if counted.0 > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if counted.0 > 0 && counted.1 > 0 {
            break;
        }
    }
    assert!(counted.0 > 0, "an abandoned stream was not counted");
    assert!(counted.1 > 0, "a request cut by the client's timeout was not counted");
    // A stream read to its end counts once, not again when it is dropped.
    let whole = chat(&gw, "quick-stream", json!({"stream": true})).await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    assert!(whole.body.contains("[DONE]"), "{}", whole.body);
    let mut quick = 0;
    for _ in 0..100 {
        quick = rpm("quick-stream/0").await;
        if quick > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let a second count, if any, land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rpm("quick-stream/0").await;
    assert!(quick <= 1 && after <= 1, "one stream counted {quick}, then {after}");
}

/// A request waiting out its retry's pause counts as in flight on the
/// deployment it chose, with its prompt's tokens, so other requests
/// retrying at once see it there (`least-busy`, `usage-based`) instead of
/// all choosing the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_counts_in_flight_through_its_pause() {
    let mock = MockUpstream::start().await;
    let gw = gateway(
        &mock,
        "  num_retries: 1\n",
        r#"
  - model_name: once
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "o::fail_first=1,status=429,retry_after=4"}
"#,
    );
    let waiting = tokio::spawn({
        let url = format!("{}/v1/chat/completions", gw.base_url());
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"model": "once", "messages": [{"role": "user", "content": "hello there"}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let in_flight = || stat(&gw, "once/0", "in_flight");
    // The first attempt is refused at once; the retry then waits out the
    // four seconds its Retry-After asks.
    let mut seen = 0;
    for _ in 0..500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if sent_to(&mock, "o::fail_first=1,status=429,retry_after=4") >= 1 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            seen = in_flight().await;
            // Its prompt's tokens count in the minute too (the failed
            // attempt's were taken back).
            assert!(stat(&gw, "once/0", "tpm_used").await > 0, "the paused retry's tokens");
            break;
        }
    }
    assert_eq!(seen, 1, "the retry paused without counting in flight");
    assert_eq!(waiting.await.unwrap(), 200);
    assert_eq!(in_flight().await, 0);
}

/// The upstream request id a failure carries is the last upstream
/// answer's: a retry that got no answer (the connection refused) leaves
/// the id of the 500 before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_keeps_the_last_upstream_answers_id() {
    let mock = MockUpstream::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let gw = gateway(
        &mock,
        "  num_retries: 1",
        &r#"
  - model_name: failing
    routing_strategy: cost-based
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "m::status=500", input_cost_per_token: 0.000001}
      - {provider: openai, api_base: "DEAD", api_key: k, model: "m", input_cost_per_token: 0.00001}
"#
        .replace("DEAD", &dead),
    );
    let answer = chat(&gw, "failing", json!({})).await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert_eq!(answer.header("x-switchyard-attempts"), "2");
    assert!(
        answer
            .header("x-switchyard-upstream-request-id")
            .starts_with("req_mock"),
        "{:?}",
        answer.headers
    );
}

/// A token count an upstream answers is a request on the gateway's
/// credentials: a key's per-minute limit applies to it, and one refused
/// never reaches the upstream. One the gateway's estimate answers is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_counts_an_upstream_answers_are_limited_by_the_key() {
    let mock = MockUpstream::start().await;
    let key = "sk-count-tokens-limited-0001";
    let gw = gateway(
        &mock,
        &format!("policy:\n  keys:\n    - key: {key}\n      rpm_limit: 1\n"),
        r#"
  - model_name: claude
    deployments:
      - {provider: anthropic, api_base: "{root}", api_key: k, model: "claude-native"}
  - model_name: openai-only
    deployments:
      - {provider: openai, api_base: "{base}", api_key: k, model: "gpt"}
"#,
    );
    let count = |model: &str| {
        let url = format!("{}/v1/messages/count_tokens", gw.base_url());
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]});
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .header("x-api-key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body: Value = response.json().await.unwrap_or_default();
            (status, body, headers)
        }
    };
    // Estimates cost the key nothing.
    for _ in 0..3 {
        let (status, body, headers) = count("openai-only").await;
        assert_eq!(status, 200, "{body}");
        assert!(headers.get("x-ratelimit-remaining-requests").is_none());
    }
    // A counted one is the key's request, with its headers.
    let (status, body, headers) = count("claude").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-ratelimit-limit-requests"], "1");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert!(headers.contains_key("x-switchyard-request-id"));
    let (status, body, _) = count("claude").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["type"], "error", "an Anthropic-shaped error: {body}");
    let counted = mock
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/count_tokens"))
        .count();
    assert_eq!(counted, 1, "the refused count never reached the upstream");
}
