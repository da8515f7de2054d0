//! Limits and budgets shared by two gateway processes through a real
//! `redis-server`, and what happens when Redis goes away and comes back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_testkit::{GatewayProcess, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const MASTER: &str = "sk-master-key-for-tests-0001";
const CONFIG_KEY: &str = "sk-config-declared-key-0001";
const HELLO_COST_NANOS: i64 = 7000;

fn config(redis: &str, mode: &str, delay_ms: u64) -> String {
    format!(
        r#"
policy:
  master_key: {MASTER}
  track_tag_spend: true
  redis:
    url: {redis}
    failure_mode: {mode}
    timeout_ms: 2000
  keys:
    - key: {CONFIG_KEY}
      key_alias: declared
      rpm_limit: 1000
model_list:
  - model_name: mock-a
    deployments:
      - provider: mock
        model: mock-a-1
        input_cost_per_token: 0.000001
        output_cost_per_token: 0.000002
        mock:
          delay_ms: {delay_ms}
  - model_name: mock-wordy
    deployments:
      - provider: mock
        model: mock-wordy-1
        mock:
          reply: "{wordy}"
"#,
        wordy = "word ".repeat(300).trim_end()
    )
}

async fn post(base: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn chat(base: &str, key: &str) -> (u16, Value) {
    post(
        base,
        "/v1/chat/completions",
        key,
        json!({"model": "mock-a", "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]}),
    )
    .await
}

/// Total spend of the key declared in the configuration, from `/spend/keys`.
async fn declared_spend(base: &str) -> i64 {
    let spend = get(base, "/spend/keys").await;
    let declared = spend
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_alias"] == "declared")
        .unwrap_or_else(|| panic!("no declared key in {spend}"));
    declared["total_spend_nanos"].as_i64().unwrap()
}

fn code(body: &Value) -> &str {
    body.pointer("/error/code").and_then(Value::as_str).unwrap_or("")
}

#[tokio::test]
async fn two_gateways_share_one_rate_limit_and_one_budget() {
    let redis = RedisServer::start();
    let a = GatewayProcess::start(Path::new(BIN), &config(&redis.url(), "fail_closed", 50));
    let b = GatewayProcess::start(Path::new(BIN), &config(&redis.url(), "fail_closed", 50));
    let bases = [a.base_url(), b.base_url()];

    // A key made on one gateway works on the other.
    let (status, made) = post(&bases[0], "/key/generate", MASTER, json!({"rpm_limit": 5})).await;
    assert_eq!(status, 200, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();

    // 8 concurrent requests, 4 to each gateway: exactly 5 pass.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (base, key) = (bases[i % 2].clone(), key.clone());
        tasks.push(tokio::spawn(async move { chat(&base, &key).await }));
    }
    let mut ok = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            200 => ok += 1,
            429 => assert_eq!(code(&body), "rate_limit_exceeded"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(ok, 5);

    // Output beyond a request's estimate is owed to the shared token limit:
    // 300 words against 100 tokens a minute leave about 200 owed, which the
    // next request waits for, on either gateway.
    let (_, made) = post(&bases[0], "/key/generate", MASTER, json!({"tpm_limit": 100})).await;
    let tight = made["key"].as_str().unwrap().to_owned();
    let wordy = json!({"model": "mock-wordy", "messages": [{"role": "user", "content": "hello"}]});
    let (status, body) = post(&bases[0], "/v1/chat/completions", &tight, wordy.clone()).await;
    assert_eq!(status, 200, "{body}");
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", bases[1]))
        .bearer_auth(&tight)
        .json(&wordy)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((100..=200).contains(&retry_after), "{retry_after}");

    // Budget $0.0001 (each request reserves 31000 and costs 7000), 50
    // concurrent requests over both gateways.
    let (_, made) = post(&bases[1], "/key/generate", MASTER, json!({"max_budget": 0.0001})).await;
    let key = Arc::new(made["key"].as_str().unwrap().to_owned());
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (base, key) = (bases[i % 2].clone(), key.clone());
        tasks.push(tokio::spawn(async move { chat(&base, &key).await }));
    }
    let mut served = 0i64;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            200 => served += 1,
            400 => assert_eq!(code(&body), "budget_exceeded"),
            other => panic!("{other}: {body}"),
        }
    }
    assert!(served >= 3, "{served}");
    let info = get(&bases[0], &format!("/key/info?key={key}")).await;
    let spend = (info["info"]["spend"].as_f64().unwrap() * 1e9).round() as i64;
    assert_eq!(spend, served * HELLO_COST_NANOS);
    assert!(spend <= 100_000, "overspent: {spend}");
    // Both gateways read the same spend log.
    let logs = get(&bases[1], &format!("/spend/logs?api_key={key}")).await;
    assert_eq!(logs.as_array().unwrap().len() as i64, served);

    // Spend per tag is kept in Redis too: two tagged requests, one on each
    // gateway, read on either.
    for base in &bases {
        let tagged = json!({"model": "mock-a", "max_tokens": 5, "tags": ["nightly-eval"],
            "messages": [{"role": "user", "content": "hello"}]});
        let (status, body) = post(base, "/v1/chat/completions", CONFIG_KEY, tagged).await;
        assert_eq!(status, 200, "{body}");
    }
    let tags = get(&bases[0], "/spend/tags").await;
    let row = tags
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tag"] == "nightly-eval")
        .unwrap_or_else(|| panic!("{tags}"));
    assert_eq!(
        row["total_spend_nanos"].as_i64().unwrap(),
        2 * HELLO_COST_NANOS,
        "{row}"
    );
}

#[tokio::test]
async fn redis_down_fails_closed_or_open_as_configured_then_recovers() {
    let mut redis = RedisServer::start();
    let closed = GatewayProcess::start(Path::new(BIN), &config(&redis.url(), "fail_closed", 0));
    let open = GatewayProcess::start(Path::new(BIN), &config(&redis.url(), "fail_open", 0));
    assert_eq!(chat(&closed.base_url(), CONFIG_KEY).await.0, 200);
    assert_eq!(chat(&open.base_url(), CONFIG_KEY).await.0, 200);

    redis.stop();
    let (status, body) = chat(&closed.base_url(), CONFIG_KEY).await;
    assert_eq!((status, code(&body)), (503, "policy_store_unavailable"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("unavailable"));
    for _ in 0..3 {
        let (status, body) = chat(&open.base_url(), CONFIG_KEY).await;
        assert_eq!(status, 200, "fail_open serves: {body}");
    }
    // A key this replica has not seen cannot be checked: 503, not a 401
    // that would tell its client the key is wrong.
    let (status, body) = chat(&open.base_url(), "sk-not-seen-by-this-replica-0001").await;
    assert_eq!((status, code(&body)), (503, "policy_store_unavailable"), "{body}");
    let status = get(&open.base_url(), "/admin/policy").await;
    assert!(status["fail_open_admissions"].as_u64().unwrap() >= 3, "{status}");
    assert!(
        status["redis"]["pending_spend_records"].as_u64().unwrap() >= 3,
        "{status}"
    );
    assert!(open.wait_for_log("fail_open", Duration::from_secs(5)));
    // Readiness: a fail_closed replica stops taking traffic, a fail_open one keeps it.
    let ready = |base: String| async move {
        let r = reqwest::get(format!("{base}/health/readiness")).await.unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap()["policy_store"].clone(),
        )
    };
    assert_eq!(ready(closed.base_url()).await, (503, json!("unavailable")));
    assert_eq!(ready(open.base_url()).await, (200, json!("degraded")));

    redis.restart();
    // Both recover; the spend queued during the outage reaches Redis.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let closed_ok = chat(&closed.base_url(), CONFIG_KEY).await.0 == 200;
        let status = get(&open.base_url(), "/admin/policy").await;
        let drained = status["redis"]["pending_spend_records"] == json!(0);
        if closed_ok && drained {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ready(closed.base_url()).await, (200, json!("ok")));
    // Redis restarted empty: what it holds now is the 3 queued charges and the
    // requests served since.
    let spent = declared_spend(&closed.base_url()).await;
    assert!(spent >= 4 * HELLO_COST_NANOS, "{spent}");
}

#[test]
fn a_wrong_redis_url_fails_start_up() {
    let out = switchyard_testkit::run_check_config(Path::new(BIN), &config("http://nope", "fail_closed", 0));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("policy.redis.url"));
    // Unreachable: start-up fails with the field named.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, config("redis://127.0.0.1:1", "fail_closed", 0)).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("policy.redis.url") && text.contains("cannot reach Redis"),
        "{text}"
    );
}

/// A fail_open replica killed (`kill -9`) during a Redis outage keeps the
/// spend it queued in `policy.data_dir`; started again once Redis is back,
/// it writes that spend to Redis.
#[tokio::test]
async fn spend_queued_in_an_outage_survives_kill_9_with_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start();
    let yaml = config(&redis.url(), "fail_open", 0).replace(
        "policy:\n",
        &format!("policy:\n  data_dir: {}\n  fsync: always\n", dir.path().display()),
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &yaml);
    assert_eq!(chat(&gateway.base_url(), CONFIG_KEY).await.0, 200);

    redis.stop();
    for _ in 0..3 {
        let (status, body) = chat(&gateway.base_url(), CONFIG_KEY).await;
        assert_eq!(status, 200, "fail_open serves: {body}");
    }
    let status = get(&gateway.base_url(), "/admin/policy").await;
    assert_eq!(status["redis"]["pending_spend_records"], json!(3), "{status}");
    let spilled = std::fs::read_to_string(dir.path().join("pending-spend.jsonl")).unwrap();
    assert_eq!(spilled.lines().count(), 3);
    assert!(!spilled.contains(CONFIG_KEY), "a key reached the disk");
    // No shutdown flush: the process dies at once (SIGKILL).
    gateway.signal("KILL");
    drop(gateway);

    // Redis comes back empty; a new process on the same directory writes
    // the three queued charges.
    redis.restart();
    let gateway = GatewayProcess::start(Path::new(BIN), &yaml);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get(&gateway.base_url(), "/admin/policy").await;
        if status["redis"]["pending_spend_records"] == json!(0) {
            break;
        }
        assert!(Instant::now() < deadline, "not written: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(declared_spend(&gateway.base_url()).await, 3 * HELLO_COST_NANOS);
    let logs = get(&gateway.base_url(), "/spend/logs").await;
    assert_eq!(logs.as_array().unwrap().len(), 3, "{logs}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("pending-spend.jsonl")).unwrap(),
        "",
        "a drained queue empties the file"
    );
}

/// An end user's budget is one across replicas sharing Redis: each
/// request reserves up to 31000 nano-dollars and costs 7000, so of 6
/// concurrent requests for one end user against $0.00005, at most 3 pass,
/// and the end user's spend never passes the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_an_end_users_budget() {
    let redis = RedisServer::start();
    let yaml = config(&redis.url(), "fail_closed", 50).replace(
        "  track_tag_spend: true\n",
        "  track_tag_spend: true\n  end_user_budget: {max_budget: 0.00005}\n",
    );
    let a = GatewayProcess::start(Path::new(BIN), &yaml);
    let b = GatewayProcess::start(Path::new(BIN), &yaml);
    let bases = [a.base_url(), b.base_url()];
    let mut tasks = Vec::new();
    for i in 0..6 {
        let base = bases[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            post(
                &base,
                "/v1/chat/completions",
                MASTER,
                json!({"model": "mock-a", "max_tokens": 5, "user": "carol", "messages": [{"role": "user", "content": "hello"}]}),
            )
            .await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            200 => ok += 1,
            400 => assert_eq!(code(&body), "budget_exceeded", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert!((1..=3).contains(&ok), "{ok} served");
    // Another end user is not held by carol's spend.
    let (status, body) = post(
        &bases[1],
        "/v1/chat/completions",
        MASTER,
        json!({"model": "mock-a", "max_tokens": 5, "user": "dave", "messages": [{"role": "user", "content": "hello"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Once the concurrent ones are settled, carol is served, alternating
    // replicas, until the next request could pass her budget: 3 in all
    // (21000 spent; another could cost up to 31000 more).
    let mut served = ok;
    for i in 0..6 {
        let (status, body) = post(
            &bases[i % 2],
            "/v1/chat/completions",
            MASTER,
            json!({"model": "mock-a", "max_tokens": 5, "user": "carol", "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
        match status {
            200 => served += 1,
            400 => {
                assert_eq!(code(&body), "budget_exceeded", "{body}");
                break;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(served, 3);
}

/// End users' records live in Redis: made on one replica, their budget,
/// block and list hold on the other.
#[tokio::test]
async fn end_user_records_are_shared_by_replicas() {
    let redis = RedisServer::start();
    let yaml = config(&redis.url(), "fail_closed", 0);
    let a = GatewayProcess::start(Path::new(BIN), &yaml);
    let b = GatewayProcess::start(Path::new(BIN), &yaml);
    let bases = [a.base_url(), b.base_url()];
    let ask = |base: String, user: &'static str| async move {
        post(
            &base,
            "/v1/chat/completions",
            MASTER,
            json!({"model": "mock-a", "max_tokens": 5, "user": user, "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await
    };
    // $0.00005 holds 3 requests (each reserves up to 31000 nano-dollars and
    // costs 7000), whichever replica serves them.
    let (status, made) = post(
        &bases[0],
        "/customer/new",
        MASTER,
        json!({"user_id": "erin", "max_budget": 0.00005, "budget_duration": "monthly"}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let mut served = 0;
    for i in 0..6 {
        let (status, body) = ask(bases[i % 2].clone(), "erin").await;
        match status {
            200 => served += 1,
            400 => {
                assert_eq!(code(&body), "budget_exceeded", "{body}");
                break;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(served, 3);
    let info = get(&bases[1], "/customer/info?end_user_id=erin").await;
    assert_eq!(
        info["spend"].as_f64().unwrap(),
        3.0 * HELLO_COST_NANOS as f64 / 1e9,
        "{info}"
    );
    // Without a record and with no default budget, an end user is not held.
    for _ in 0..5 {
        let (status, body) = ask(bases[0].clone(), "frank").await;
        assert_eq!(status, 200, "{body}");
    }
    // Blocked through one replica, refused by the other at once.
    let (status, body) = post(&bases[1], "/customer/block", MASTER, json!({"user_ids": ["frank"]})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = ask(bases[0].clone(), "frank").await;
    assert_eq!((status, code(&body)), (403, "end_user_blocked"), "{body}");
    let listed = get(&bases[0], "/customer/list").await;
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["erin", "frank"], "{listed}");
    let (status, body) = post(&bases[0], "/customer/unblock", MASTER, json!({"user_ids": ["frank"]})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = ask(bases[1].clone(), "frank").await;
    assert_eq!(status, 200, "{body}");
}

/// A user made on one replica holds its keys on the other: one budget for
/// every key of the user, whichever replica serves them.
#[tokio::test]
async fn a_users_budget_is_shared_by_replicas() {
    let redis = RedisServer::start();
    let yaml = config(&redis.url(), "fail_closed", 0);
    let a = GatewayProcess::start(Path::new(BIN), &yaml);
    let b = GatewayProcess::start(Path::new(BIN), &yaml);
    let bases = [a.base_url(), b.base_url()];
    let (status, made) = post(
        &bases[0],
        "/user/new",
        MASTER,
        json!({"user_id": "gia", "max_budget": 0.00005}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let first = made["key"].as_str().unwrap().to_owned();
    let (status, other) = post(&bases[1], "/key/generate", MASTER, json!({"user_id": "gia"})).await;
    assert_eq!(status, 200, "{other}");
    let second = other["key"].as_str().unwrap().to_owned();
    let mut served = 0;
    for i in 0..6 {
        let key = if i % 2 == 0 { &first } else { &second };
        let (status, body) = chat(&bases[(i / 2) % 2], key).await;
        match status {
            200 => served += 1,
            400 => {
                assert_eq!(code(&body), "budget_exceeded", "{body}");
                break;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(served, 3);
    let info = get(&bases[1], "/user/info?user_id=gia").await;
    assert_eq!(
        info["user_info"]["spend"].as_f64().unwrap(),
        3.0 * HELLO_COST_NANOS as f64 / 1e9,
        "{info}"
    );
}

/// The shared configuration with alerts to `hook` (`events`, when given)
/// and one group per name in `failing`, whose upstream always fails.
fn alerting(
    redis: &RedisServer,
    hook: &switchyard_testkit::WebhookReceiver,
    upstream: &switchyard_testkit::MockUpstream,
    events: &str,
    failing: &[&str],
) -> String {
    let groups: String = failing
        .iter()
        .map(|name| {
            format!(
                "  - model_name: {name}\n    deployments:\n      - {{provider: openai, model: \"gpt-x::status=500\", api_base: \"{}\", api_key: sk-upstream-1}}\n",
                upstream.base_url()
            )
        })
        .collect();
    config(&redis.url(), "fail_closed", 0).replace(
        "model_list:",
        &format!(
            "telemetry:\n  alerts:\n    webhook_url: {}\n{events}router_settings:\n  num_retries: 0\n  allowed_fails: 1\n  cooldown_ms: 600000\nmodel_list:\n{groups}",
            hook.url()
        ),
    )
}

/// A request to `model` with the configuration's key, which must fail upstream.
async fn fails(base: &str, model: &str) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hello"}]});
    let (status, answer) = post(base, "/v1/chat/completions", CONFIG_KEY, body).await;
    assert!(status >= 500, "{status}: {answer}");
}

/// An alert one replica could not deliver gives its claim back, so that
/// another replica seeing the same cause tells of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undelivered_alert_gives_its_claim_back() {
    let redis = RedisServer::start();
    let hook = switchyard_testkit::WebhookReceiver::start().await.unwrap();
    let upstream = switchyard_testkit::MockUpstream::start().await;
    let yaml = alerting(&redis, &hook, &upstream, "    events: [request_failed]\n", &["flaky"]);
    let a = GatewayProcess::start(Path::new(BIN), &yaml);
    let b = GatewayProcess::start(Path::new(BIN), &yaml);
    hook.fail_next(3);
    fails(&a.base_url(), "flaky").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while hook.attempts() < 3 {
        assert!(Instant::now() < deadline, "three delivery attempts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The claim is given back once the last attempt's failure is seen.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let claims: Vec<String> = redis::cmd("KEYS")
            .arg("*alerted:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        if claims.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the claim was kept: {claims:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hook.received().is_empty(), "{:?}", hook.received());
    fails(&b.base_url(), "flaky").await;
    let told = hook
        .wait_for(Duration::from_secs(10), |v| v["event"] == "request_failed")
        .await
        .expect("the other replica's alert");
    assert_eq!(told["model"], "flaky", "{told}");
}

/// An alert is sent once however many replicas see its cause: each is
/// claimed in Redis before it goes to the webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_send_each_alert_once() {
    let redis = RedisServer::start();
    let hook = switchyard_testkit::WebhookReceiver::start().await.unwrap();
    let upstream = switchyard_testkit::MockUpstream::start().await;
    let yaml = alerting(&redis, &hook, &upstream, "", &["flaky", "flaky-2"]);
    let a = GatewayProcess::start(Path::new(BIN), &yaml);
    let b = GatewayProcess::start(Path::new(BIN), &yaml);
    let bases = [a.base_url(), b.base_url()];
    let (status, made) = post(
        &bases[0],
        "/key/generate",
        MASTER,
        json!({"max_budget": 0.0003, "soft_budget": 0.00001}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    // 39 served (273000 spent, past the soft budget on the second), then
    // refused on both replicas.
    for i in 0..42 {
        let (status, body) = chat(&bases[i % 2], &key).await;
        assert!(status == 200 || code(&body) == "budget_exceeded", "{status}: {body}");
    }
    hook.wait_for(Duration::from_secs(10), |v| v["event"] == "budget_exhausted")
        .await
        .expect("a budget alert");

    // A group failing on both replicas, and its deployment cooling down on
    // both: told of once.
    fails(&bases[0], "flaky").await;
    hook.wait_for(Duration::from_secs(10), |v| v["event"] == "deployment_cooldown")
        .await
        .expect("a cooldown alert");
    fails(&bases[1], "flaky").await;
    // The second replica's alerts go out in order: once another group's
    // failure from it has arrived, any of its alerts about `flaky` would have.
    fails(&bases[1], "flaky-2").await;
    hook.wait_for(Duration::from_secs(10), |v| v["model"] == "flaky-2")
        .await
        .expect("the other group's failure");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = hook.received();
    let mut events: Vec<String> = received
        .iter()
        .map(|v| {
            let about = v["model"].as_str().or(v["deployment"].as_str()).unwrap_or_default();
            format!("{} {about}", v["event"].as_str().unwrap_or_default())
        })
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            "budget_exhausted ",
            "deployment_cooldown flaky-2/0",
            "deployment_cooldown flaky/0",
            "request_failed flaky",
            "request_failed flaky-2",
            "soft_budget_crossed "
        ],
        "{received:?}"
    );
}

/// A client that leaves a pass-through route while Redis is still running
/// its admission keeps no in-flight slot: the admission finishes on its own
/// task and what it took is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_through_client_leaving_during_admission_keeps_no_slot() {
    let redis = RedisServer::start();
    let mock = switchyard_testkit::MockUpstream::start().await;
    let yaml = format!(
        "{}pass_through:\n  - path: /native\n    target: \"{}\"\n    include_subpath: true\n",
        config(&redis.url(), "fail_closed", 0),
        mock.base_url()
    );
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let base = gw.base_url();
    let (status, made) = post(&base, "/key/generate", MASTER, json!({"max_parallel_requests": 1})).await;
    assert_eq!(status, 200, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let (status, answer) = post(&base, "/native/chat/completions", &key, body.clone()).await;
    assert_eq!(status, 200, "{answer}");

    // Redis holds every write for 1 s (under the policy's 2 s timeout);
    // the client gives up after 300 ms, mid-admission.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1000)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .unwrap();
    let left = reqwest::Client::new()
        .post(format!("{base}/native/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(left.is_err_and(|e| e.is_timeout()));

    // Once Redis writes again, the key's one slot is free.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, answer) = post(&base, "/native/chat/completions", &key, body.clone()).await;
        if status == 200 {
            break;
        }
        assert_eq!(code(&answer), "too_many_parallel_requests", "{answer}");
        assert!(Instant::now() < deadline, "the slot stayed taken: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
