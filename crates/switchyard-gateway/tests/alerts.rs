//! `telemetry.alerts`: soft budgets crossed, budgets spent, deployments
//! put in cooldown, failed requests and slow answers, delivered to a webhook receiver over real HTTP by the
//! `switchyard` binary; each once, retried when the webhook fails, never
//! holding a key's value.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_testkit::{GatewayProcess, MockUpstream, WebhookReceiver};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const MASTER: &str = "sk-master-key-for-alert-tests";

/// "hello" costs 7000 nano-dollars on mock-a; each request reserves up to
/// 31000 (its 5 bytes and a message's 16 as input tokens, 5 output tokens).
fn config(hook: &str, format: &str, mock: &MockUpstream) -> String {
    format!(
        r#"
policy:
  master_key: {MASTER}
telemetry:
  alerts:
    webhook_url: os.environ/ALERT_HOOK
    format: {format}
router_settings:
  num_retries: 0
  allowed_fails: 1
  cooldown_ms: 600000
model_list:
  - model_name: mock-a
    deployments:
      - provider: mock
        model: mock-a-1
        input_cost_per_token: 0.000001
        output_cost_per_token: 0.000002
  - model_name: flaky
    deployments:
      - {{provider: openai, model: "gpt-x::status=500", api_base: "{base}", api_key: sk-upstream-secret-1}}
"#,
        base = mock.base_url()
    )
    .replace("ALERT_HOOK", &format!("ALERT_HOOK_{}", hook.len()))
}

fn start(hook: &WebhookReceiver, format: &str, mock: &MockUpstream) -> GatewayProcess {
    let yaml = config(&hook.url(), format, mock);
    let var = format!("ALERT_HOOK_{}", hook.url().len());
    GatewayProcess::start_with(Path::new(BIN), &yaml, &[], &[(var.as_str(), hook.url().as_str())])
}

async fn post(gw: &GatewayProcess, path: &str, key: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", gw.base_url()))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn hello(gw: &GatewayProcess, key: &str, model: &str) -> (u16, Value) {
    post(
        gw,
        "/v1/chat/completions",
        key,
        json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_budgets_spent_budgets_and_cooldowns_reach_the_webhook_once() {
    let hook = WebhookReceiver::start().await.unwrap();
    let mock = MockUpstream::start().await;
    let gw = start(&hook, "json", &mock);
    let (status, made) = post(
        &gw,
        "/key/generate",
        MASTER,
        json!({"key_alias": "notebooks", "max_budget": 0.0003, "soft_budget": 0.00001, "budget_duration": "monthly"}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["soft_budget"], 0.00001, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();

    // One request too large for a budget hardly touched is refused without
    // an alert: the budget is not spent.
    let (status, body) = post(
        &gw,
        "/v1/chat/completions",
        &key,
        json!({"model": "mock-a", "max_tokens": 1_000_000, "messages": [{"role": "user", "content": "hello"}]}),
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("budget_exceeded")));

    // 7000 spent: under the soft budget, nothing is sent.
    assert_eq!(hello(&gw, &key, "mock-a").await.0, 200);
    // 14000: past it, one alert; 21000: no second one.
    assert_eq!(hello(&gw, &key, "mock-a").await.0, 200);
    let soft = hook
        .wait_for(Duration::from_secs(10), |v| v["event"] == "soft_budget_crossed")
        .await
        .expect("a soft-budget alert");
    assert_eq!(
        (
            soft["scope"].as_str(),
            soft["alias"].as_str(),
            soft["budget_duration"].as_str()
        ),
        (Some("key"), Some("notebooks"), Some("monthly")),
        "{soft}"
    );
    assert_eq!(soft["spend_usd"], 0.000014, "{soft}");
    assert_eq!(soft["soft_budget_usd"], 0.00001, "{soft}");
    assert!(soft["id"].as_str().unwrap().starts_with("sk-..."), "{soft}");

    // Served until the next request could pass the budget (273000 of
    // 300000 spent after 39), then refused, which is said once.
    let mut served = 2;
    while hello(&gw, &key, "mock-a").await.0 == 200 {
        served += 1;
        assert!(served < 60, "never refused");
    }
    assert_eq!(served, 39);
    let (status, body) = hello(&gw, &key, "mock-a").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("budget_exceeded")));
    let spent = hook
        .wait_for(Duration::from_secs(10), |v| v["event"] == "budget_exhausted")
        .await
        .expect("a budget alert");
    assert_eq!(spent["max_budget_usd"], 0.0003, "{spent}");
    assert_eq!(spent["spend_usd"], 0.000273, "{spent}");

    // A deployment put in cooldown, retried through the webhook's failures,
    // then the failed request itself.
    hook.fail_next(2);
    let attempts_before = hook.attempts();
    let (status, _) = hello(&gw, &key, "flaky").await;
    assert!(status >= 500, "{status}");
    let failed = hook
        .wait_for(Duration::from_secs(10), |v| v["event"] == "request_failed")
        .await
        .expect("a failed-request alert, after the cooldown's");
    assert_eq!(
        (
            failed["model"].as_str(),
            failed["deployment"].as_str(),
            failed["status"].as_u64()
        ),
        (Some("flaky"), Some("flaky/0"), Some(502)),
        "{failed}"
    );
    let cooled = hook
        .wait_for(Duration::from_secs(10), |v| v["event"] == "deployment_cooldown")
        .await
        .expect("a cooldown alert, delivered on the third try");
    assert_eq!(cooled["reason"], "server_error", "{cooled}");
    assert_eq!(cooled["deployment"], "flaky/0", "{cooled}");
    assert_eq!(
        hook.attempts() - attempts_before,
        4,
        "three tries of the cooldown's, one of the failure's"
    );

    // Nothing more arrives, and no alert holds a key's value.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = hook.received();
    let count = |event: &str| all.iter().filter(|v| v["event"] == event).count();
    assert_eq!(
        (
            count("soft_budget_crossed"),
            count("budget_exhausted"),
            count("deployment_cooldown"),
            count("request_failed")
        ),
        (1, 1, 1, 1),
        "{all:?}"
    );
    let text = serde_json::to_string(&all).unwrap();
    for secret in [key.as_str(), MASTER, "sk-upstream-secret-1"] {
        assert!(!text.contains(secret), "{text}");
    }
}

/// A budget alert the webhook never took (three failed tries) is not lost
/// for the budget's period: a request that finds the soft budget passed
/// after `retry_ms` sends it again (none before: a webhook that is down
/// gets no alert per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undelivered_budget_alert_is_sent_again() {
    let hook = WebhookReceiver::start().await.unwrap();
    let mock = MockUpstream::start().await;
    let yaml =
        config(&hook.url(), "json", &mock).replace("    format: json\n", "    format: json\n    retry_ms: 5000\n");
    assert!(yaml.contains("retry_ms"), "{yaml}");
    let var = format!("ALERT_HOOK_{}", hook.url().len());
    let gw = GatewayProcess::start_with(Path::new(BIN), &yaml, &[], &[(var.as_str(), hook.url().as_str())]);
    let (status, made) = post(
        &gw,
        "/key/generate",
        MASTER,
        json!({"key_alias": "retried", "soft_budget": 0.00001, "budget_duration": "monthly"}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    hook.fail_next(3);
    // 7000, then 14000: past the soft budget; its alert fails three times.
    assert_eq!(hello(&gw, &key, "mock-a").await.0, 200);
    assert_eq!(hello(&gw, &key, "mock-a").await.0, 200);
    for _ in 0..400 {
        if hook.attempts() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hook.attempts(), 3, "the first alert's three tries");
    // Right after the failure, another request sends nothing.
    assert_eq!(hello(&gw, &key, "mock-a").await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hook.attempts(), 3, "sent again at once");
    let mut sent = None;
    for _ in 0..60 {
        assert_eq!(hello(&gw, &key, "mock-a").await.0, 200);
        sent = hook
            .wait_for(Duration::from_millis(500), |v| v["event"] == "soft_budget_crossed")
            .await;
        if sent.is_some() {
            break;
        }
    }
    let sent = sent.expect("the soft-budget alert, sent again");
    assert_eq!(sent["alias"], "retried", "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_alerts_are_one_sentence_and_teams_alert_too() {
    let hook = WebhookReceiver::start().await.unwrap();
    let mock = MockUpstream::start().await;
    let gw = start(&hook, "slack", &mock);
    let (status, team) = post(
        &gw,
        "/team/new",
        MASTER,
        json!({"team_id": "research", "team_alias": "Research", "soft_budget": 0.000005}),
    )
    .await;
    assert_eq!(status, 200, "{team}");
    let (_, made) = post(&gw, "/key/generate", MASTER, json!({"team_id": "research"})).await;
    let key = made["key"].as_str().unwrap().to_owned();
    assert_eq!(hello(&gw, &key, "mock-a").await.0, 200);
    let said = hook
        .wait_for(Duration::from_secs(10), |v| v["text"].is_string())
        .await
        .expect("a Slack message");
    assert_eq!(
        said["text"],
        "Switchyard: team `Research` (research) has spent $0.000007000, past its soft budget of $0.000005000."
    );
    // A soft budget that is not a number is refused, naming it.
    let (status, body) = post(&gw, "/key/generate", MASTER, json!({"soft_budget": "lots"})).await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("soft_budget")));
}

#[test]
fn a_missing_webhook_variable_names_its_field() {
    let yaml = "telemetry:\n  alerts:\n    webhook_url: os.environ/SWITCHYARD_TEST_UNSET_ALERT_HOOK\n    events: []\nmodel_list:\n  - model_name: m\n    deployments:\n      - {provider: mock, model: m}\n";
    let out = switchyard_testkit::run_check_config(Path::new(BIN), yaml);
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("telemetry.alerts.webhook_url"), "{text}");
    assert!(text.contains("telemetry.alerts.events"), "{text}");
}

/// Requests that fail upstream and answers slower than `slow_request_ms`
/// (whole and streamed, timed to the stream's end) are told of once a
/// minute per group or deployment; the client's own errors and fast
/// answers are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_and_slow_answers_are_alerted_on() {
    let hook = WebhookReceiver::start().await.unwrap();
    let mock = MockUpstream::start().await;
    let base = mock.base_url();
    let yaml = format!(
        r#"
policy:
  master_key: {MASTER}
telemetry:
  alerts:
    webhook_url: os.environ/ALERT_HOOK_SLOW
    events: [request_failed, slow_request]
    slow_request_ms: 1500
router_settings:
  num_retries: 0
model_list:
  - model_name: fast
    deployments: [{{provider: mock, model: mock-fast}}]
  - model_name: slow
    deployments: [{{provider: openai, model: "gpt-x::first_byte_ms=3000", api_base: "{base}", api_key: k}}]
  - model_name: slow-stream
    deployments: [{{provider: openai, model: "gpt-y::chunks=6,chunk_delay_ms=400", api_base: "{base}", api_key: k}}]
  - model_name: down
    deployments: [{{provider: openai, model: "gpt-z::status=503", api_base: "{base}", api_key: k}}]
  - model_name: refuses
    deployments: [{{provider: openai, model: "gpt-w::status=400", api_base: "{base}", api_key: k}}]
  - model_name: breaks
    deployments: [{{provider: openai, model: "gpt-v::error_event", api_base: "{base}", api_key: k}}]
"#
    );
    let gw = GatewayProcess::start_with(Path::new(BIN), &yaml, &[], &[("ALERT_HOOK_SLOW", hook.url().as_str())]);
    let stream =
        |model: &str| json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hello"}]});

    assert_eq!(hello(&gw, MASTER, "fast").await.0, 200);
    assert_eq!(hello(&gw, MASTER, "slow").await.0, 200);
    let slow = hook
        .wait_for(Duration::from_secs(10), |v| v["deployment"] == "slow/0")
        .await
        .expect("a slow-answer alert");
    assert_eq!(slow["event"], "slow_request", "{slow}");
    assert_eq!(slow["model"], "slow", "{slow}");
    assert!(slow["seconds"].as_f64().unwrap() >= 3.0, "{slow}");
    assert_eq!(slow["threshold_seconds"], 1.5, "{slow}");
    // A stream whose head comes at once but whose end comes late is slow.
    let (status, _) = post(&gw, "/v1/chat/completions", MASTER, stream("slow-stream")).await;
    assert_eq!(status, 200);
    hook.wait_for(Duration::from_secs(10), |v| v["deployment"] == "slow-stream/0")
        .await
        .expect("a slow-stream alert");

    // An upstream failure: one alert, however many requests fail this minute.
    for _ in 0..3 {
        assert_eq!(hello(&gw, MASTER, "down").await.0, 502);
    }
    let down = hook
        .wait_for(Duration::from_secs(10), |v| v["model"] == "down")
        .await
        .expect("a failed-request alert");
    assert_eq!(
        (down["event"].as_str(), down["error"].as_str(), down["status"].as_u64()),
        (Some("request_failed"), Some("upstream_error"), Some(502)),
        "{down}"
    );
    // The client's own error is not the upstream failing.
    assert_eq!(hello(&gw, MASTER, "refuses").await.0, 400);
    // A stream that breaks after it started.
    let (status, _) = post(&gw, "/v1/chat/completions", MASTER, stream("breaks")).await;
    assert_eq!(status, 200);
    let broke = hook
        .wait_for(Duration::from_secs(10), |v| v["model"] == "breaks")
        .await
        .expect("a broken-stream alert");
    assert_eq!(broke["event"], "request_failed", "{broke}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = hook.received();
    let about = |model: &str| all.iter().filter(|v| v["model"] == model).count();
    assert_eq!(
        [
            about("fast"),
            about("slow"),
            about("slow-stream"),
            about("down"),
            about("refuses"),
            about("breaks")
        ],
        [0, 1, 1, 1, 0, 1],
        "{all:?}"
    );
}

/// A failure alert the webhook did not take (three failed tries) does not
/// hold back the next one for a minute: the next failure is told at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undelivered_failure_alert_goes_with_the_next_failure() {
    let hook = WebhookReceiver::start().await.unwrap();
    let mock = MockUpstream::start().await;
    let base = mock.base_url();
    let yaml = format!(
        r#"
policy:
  master_key: {MASTER}
telemetry:
  alerts:
    webhook_url: os.environ/ALERT_HOOK_RETRIED
    events: [request_failed]
router_settings:
  num_retries: 0
  allowed_fails: 100
model_list:
  - model_name: down
    deployments: [{{provider: openai, model: "gpt-z::status=503", api_base: "{base}", api_key: k}}]
"#
    );
    let gw = GatewayProcess::start_with(
        Path::new(BIN),
        &yaml,
        &[],
        &[("ALERT_HOOK_RETRIED", hook.url().as_str())],
    );
    hook.fail_next(3);
    assert!(hello(&gw, MASTER, "down").await.0 >= 500);
    for _ in 0..400 {
        if hook.attempts() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hook.attempts(), 3, "the first alert's three tries");
    // The claim is given back once the third try's failure is seen; a
    // failure after that is told well within the minute a delivered
    // alert would hold the next one back.
    let mut sent = None;
    for _ in 0..20 {
        assert!(hello(&gw, MASTER, "down").await.0 >= 500);
        sent = hook
            .wait_for(Duration::from_millis(500), |v| v["event"] == "request_failed")
            .await;
        if sent.is_some() {
            break;
        }
    }
    let sent = sent.expect("the next failure's alert, sent at once");
    assert_eq!(sent["model"], "down", "{sent}");
}
