//! The running gateway's lifecycle through the real binary: configuration
//! reloads (file watch, `SIGHUP`, `POST /config/reload`, an S3 object on a
//! real `moto_server`) under load with no failed request, a bad
//! configuration rejected while the old one serves, and a graceful shutdown
//! that drains a long stream, reports readiness false first, writes spend
//! and the request log, and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_testkit::{GatewayProcess, MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY, MotoServer};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const MASTER: &str = "sk-lifecycle-master-0001";
const STORY: &str = "one two three four five six seven eight";

fn config(reply: &str, extra_models: &str, server: &str) -> String {
    format!(
        r#"
server:
  config_poll_ms: 150
{server}
policy:
  master_key: {MASTER}
model_list:
  - model_name: a
    deployments:
      - {{provider: mock, model: a-1, mock: {{reply: "{reply}", delay_ms: 5}}}}
  - model_name: slow
    deployments:
      - {{provider: mock, model: slow-1, mock: {{reply: "{STORY}", delay_ms: 5, chunk_delay_ms: 120}}}}
{extra_models}"#
    )
}

async fn ask(client: &reqwest::Client, base: &str, model: &str) -> (u16, String) {
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(MASTER)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    match response {
        Ok(r) => {
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let text = body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (status, text)
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Streams `slow` to its end: the concatenated text, and whether `[DONE]` came.
async fn stream(client: reqwest::Client, base: String) -> (String, bool) {
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(MASTER)
        .json(&json!({"model": "slow", "stream": true, "messages": [{"role": "user", "content": "tell"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let mut text = String::new();
    let mut done = false;
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        text.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
    }
    (text, done)
}

async fn models(base: &str) -> Vec<String> {
    let body: Value = reqwest::Client::new()
        .get(format!("{base}/v1/models"))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_until(what: &str, check: impl AsyncFn() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

const MODEL_B: &str = "  - model_name: b\n    deployments:\n      - {provider: mock, model: b-1}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_fail_no_request_and_bad_configs_change_nothing() {
    let gw = GatewayProcess::start(BIN.as_ref(), &config("v1", "", ""));
    let base = gw.base_url();
    let client = reqwest::Client::new();
    assert_eq!(ask(&client, &base, "a").await, (200, "v1".into()));

    // Load: four clients asking all along, and a long stream begun on v1.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, base, stop, sent, failed) =
            (client.clone(), base.clone(), stop.clone(), sent.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, text) = ask(&client, &base, "a").await;
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 || !text.starts_with('v') {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed: {status} {text}");
                }
            }
        }));
    }
    let long = tokio::spawn(stream(client.clone(), base.clone()));
    tokio::time::sleep(Duration::from_millis(150)).await;

    // 1. The file changes: the watch applies it.
    std::fs::write(gw.config_path(), config("v2", MODEL_B, "")).unwrap();
    wait_until("the watch to add model b", async || {
        models(&base).await.contains(&"b".to_owned())
    })
    .await;
    assert_eq!(ask(&client, &base, "a").await, (200, "v2".into()));
    assert_eq!(ask(&client, &base, "b").await.0, 200);
    // Keys may be given the models a reload added.
    let key = client
        .post(format!("{base}/key/generate"))
        .bearer_auth(MASTER)
        .json(&json!({"models": ["b"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(key.status(), 200, "{}", key.text().await.unwrap());

    // 2. SIGHUP reloads at once.
    std::fs::write(gw.config_path(), config("v3", MODEL_B, "")).unwrap();
    gw.signal("HUP");
    assert!(
        gw.wait_for_log("\"trigger\":\"SIGHUP\"", Duration::from_secs(10)),
        "{:?}",
        gw.logs()
    );
    wait_until("v3", async || ask(&client, &base, "a").await.1 == "v3").await;

    // 3. An invalid configuration is refused with its reason; v3 keeps serving.
    let broken = config("v4", MODEL_B, "").replace("model_name: b", "model_name: b\n    routing_strategy: telepathy");
    std::fs::write(gw.config_path(), broken).unwrap();
    let reload = |key: &'static str| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let r = client
                .post(format!("{base}/config/reload"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = reload(MASTER).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("routing_strategy") && message.contains("telepathy"),
        "{message}"
    );
    assert_eq!(ask(&client, &base, "a").await, (200, "v3".into()));
    // A key the gateway does not know is a wrong credential.
    assert_eq!(reload("sk-not-the-master").await.0, 401);
    // A configuration that is valid but cannot start (its router artifact is
    // missing) changes nothing either: not even the models keys may name.
    let model_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/all-MiniLM-L6-v2")
        .canonicalize()
        .expect("the embedding model: run `cargo xtask models fetch`");
    let unstartable = format!(
        "embedder:\n  model_dir: \"{}\"\n{}",
        model_dir.display(),
        config(
            "v4",
            "  - model_name: c\n    deployments:\n      - {provider: mock, model: c-1}\n  - model_name: auto\n    router:\n      artifact: /nonexistent/router\n      candidates: {m1: a, m2: c}\n",
            ""
        )
    );
    std::fs::write(gw.config_path(), unstartable).unwrap();
    // The artifact could not be read: a 503 worth retrying, not the
    // caller's 400.
    let (status, body) = reload(MASTER).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "service_unavailable", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("nonexistent"),
        "{body}"
    );
    let key = client
        .post(format!("{base}/key/generate"))
        .bearer_auth(MASTER)
        .json(&json!({"models": ["c"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(key.status(), 400, "{}", key.text().await.unwrap());
    assert_eq!(ask(&client, &base, "a").await, (200, "v3".into()));

    // 4. Fixed, and reloaded through the API; it says which changed
    // sections wait for a restart (none, then `server`).
    std::fs::write(gw.config_path(), config("v5", "", "")).unwrap();
    let (status, body) = reload(MASTER).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "reloaded");
    assert_eq!(body["pending_restart"], json!([]), "{body}");
    assert_eq!(ask(&client, &base, "a").await, (200, "v5".into()));
    std::fs::write(gw.config_path(), config("v5", "", "  max_connections: 500\n")).unwrap();
    let (status, body) = reload(MASTER).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pending_restart"], json!(["server"]), "{body}");
    assert!(!models(&base).await.contains(&"b".to_owned()));

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (text, done) = long.await.unwrap();
    assert_eq!(text.trim(), STORY, "the stream begun on v1 finished on v1");
    assert!(done);
    assert!(
        sent.load(Ordering::Relaxed) > 20,
        "{} requests",
        sent.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed across four reloads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_streams_reports_not_ready_first_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}\ntelemetry:\n  request_log:\n    path: {}\n",
        config("v1", "", "  drain_delay_ms: 2000\n  shutdown_timeout_ms: 10000").replace(
            &format!("policy:\n  master_key: {MASTER}\n"),
            &format!(
                "policy:\n  master_key: {MASTER}\n  data_dir: {}\n",
                dir.path().display()
            )
        ),
        dir.path().join("requests.jsonl").display()
    );
    let mut gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    let base = gw.base_url();
    let client = reqwest::Client::new();
    let ready = |client: reqwest::Client, base: String| async move {
        client
            .get(format!("{base}/health/readiness"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(ready(client.clone(), base.clone()).await, 200);
    let long = tokio::spawn(stream(client.clone(), base.clone()));
    gw.wait_in_flight(Some(MASTER)).await;

    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        ready(client.clone(), base.clone()).await,
        503,
        "readiness turns false first"
    );
    let (text, done) = long.await.unwrap();
    assert_eq!(text.trim(), STORY, "the stream in flight finished");
    assert!(done);
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0), "{:?}", gw.logs());

    let spend = std::fs::read_to_string(dir.path().join("spend.jsonl")).unwrap();
    assert_eq!(spend.lines().count(), 1, "the stream's spend was written: {spend}");
    let log = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap();
    let record: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(record["model"], "slow");
    assert_eq!(record["status"], 200);
}

fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            MOTO_ACCESS_KEY_ID,
            MOTO_SECRET_ACCESS_KEY,
            None,
            None,
            "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_in_s3_is_polled_by_etag() {
    let moto = MotoServer::start();
    let s3 = s3_client(&moto.endpoint());
    s3.create_bucket().bucket("fleet").send().await.unwrap();
    let put = |yaml: String| {
        let s3 = s3.clone();
        async move {
            s3.put_object()
                .bucket("fleet")
                .key("gateway/config.yaml")
                .body(yaml.into_bytes().into())
                .send()
                .await
                .unwrap();
        }
    };
    put(config("from-s3", "", "")).await;
    let endpoint = moto.endpoint();
    let gw = GatewayProcess::start_with(
        BIN.as_ref(),
        "",
        &["--config", "s3://fleet/gateway/config.yaml", "--s3-force-path-style"],
        &[
            ("SWITCHYARD_S3_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", MOTO_ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", MOTO_SECRET_ACCESS_KEY),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let base = gw.base_url();
    let client = reqwest::Client::new();
    assert_eq!(ask(&client, &base, "a").await, (200, "from-s3".into()));
    put(config("new-version", MODEL_B, "")).await;
    wait_until("the new object", async || {
        ask(&client, &base, "a").await.1 == "new-version"
    })
    .await;
    assert!(models(&base).await.contains(&"b".to_owned()));

    // `check-config` reads the object as the server does.
    let check = |key: &str| {
        std::process::Command::new(BIN)
            .args(["check-config", &format!("s3://fleet/{key}"), "--s3-force-path-style"])
            .env("SWITCHYARD_S3_ENDPOINT_URL", &endpoint)
            .env("AWS_ACCESS_KEY_ID", MOTO_ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", MOTO_SECRET_ACCESS_KEY)
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap()
    };
    let ok = check("gateway/config.yaml");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("configuration is valid"));
    put(config("v", MODEL_B, "").replace("model_name: b", "model_name: b\n    routing_strategy: telepathy")).await;
    let bad = check("gateway/config.yaml");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("telepathy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_at_the_drain_timeout_is_still_charged_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}\ntelemetry:\n  request_log:\n    path: {}\n",
        config("v1", "", "  drain_delay_ms: 0\n  shutdown_timeout_ms: 300").replace(
            &format!("policy:\n  master_key: {MASTER}\n"),
            &format!(
                "policy:\n  master_key: {MASTER}\n  data_dir: {}\n",
                dir.path().display()
            )
        ),
        dir.path().join("requests.jsonl").display()
    );
    let mut gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"model": "slow", "stream": true, "messages": [{"role": "user", "content": "tell"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = tokio::spawn(async move { response.text().await.unwrap_or_default() });
    tokio::time::sleep(Duration::from_millis(150)).await;
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0), "{:?}", gw.logs());
    let text = body.await.unwrap();
    assert!(!text.contains("[DONE]"), "the stream was cut: {text}");
    // The client is told the gateway ended it, not that its upstream failed.
    assert!(text.contains("\"type\":\"service_unavailable\""), "{text}");

    let spend = std::fs::read_to_string(dir.path().join("spend.jsonl")).unwrap_or_default();
    assert!(spend.contains(&id), "the cut stream was charged: {spend:?}");
    let log = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap_or_default();
    let record: Value = serde_json::from_str(log.lines().find(|l| l.contains(&id)).expect("a record")).unwrap();
    assert_eq!(record["status"], 503, "the gateway cut it, not the client: {record}");
    assert_eq!(record["error_class"], "shutting_down");
}

/// A gateway whose `stuck` model answers after 20 s, with a request log in
/// `dir` and the drain timeout `drain_ms`.
fn stuck_gateway(dir: &Path, drain_ms: u64) -> GatewayProcess {
    let stuck = "  - model_name: stuck\n    deployments:\n      - {provider: mock, model: stuck-1, mock: {reply: \"late\", delay_ms: 20000}}\n";
    let yaml = format!(
        "{}\ntelemetry:\n  request_log:\n    path: {}\n",
        config(
            "v1",
            stuck,
            &format!("  drain_delay_ms: 0\n  shutdown_timeout_ms: {drain_ms}")
        ),
        dir.join("requests.jsonl").display()
    );
    GatewayProcess::start(BIN.as_ref(), &yaml)
}

/// A request still waiting for its answer when the drain runs out of time
/// is ended: the client gets a 503 saying why, and its record is written as
/// the gateway's doing, before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_waiting_at_the_drain_timeout_is_ended_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = stuck_gateway(dir.path(), 300);
    let client = reqwest::Client::new();
    let pending = client
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"model": "stuck", "messages": [{"role": "user", "content": "hi"}]}))
        .send();
    let pending = tokio::spawn(pending);
    gw.wait_in_flight(Some(MASTER)).await;
    gw.signal("TERM");
    let response = pending.await.unwrap().expect("an answer, not a closed connection");
    assert_eq!(response.status(), 503);
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("shutting down"),
        "{body}"
    );
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0), "{:?}", gw.logs());
    let log = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap_or_default();
    let record: Value = serde_json::from_str(log.lines().find(|l| l.contains(&id)).expect("a record")).unwrap();
    assert_eq!(record["status"], 503, "{record}");
    assert_eq!(record["error_class"], "shutting_down");
}

/// Work whose client left is waited for by the drain like a request, then
/// ended and logged while the process can still write it: the final flush
/// finds nothing left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_whose_client_left_is_ended_and_logged_at_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = stuck_gateway(dir.path(), 300);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let left = client
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"model": "stuck", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    assert!(left.is_err(), "the client gave up: {left:?}");
    gw.wait_in_flight(Some(MASTER)).await;
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0), "{:?}", gw.logs());
    let logs = gw.logs();
    assert!(
        logs.iter().any(|l| l.contains("spend and the request log are written")),
        "{logs:?}"
    );
    let log = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap_or_default();
    let record: Value = serde_json::from_str(
        log.lines()
            .find(|l| l.contains("\"stuck\""))
            .unwrap_or_else(|| panic!("the abandoned request has its record: {log}")),
    )
    .unwrap();
    assert_eq!(record["status"], 503, "{record}");
    assert_eq!(record["error_class"], "shutting_down", "{record}");
}

/// A token count still waiting for its upstream when the drain runs out of
/// time is answered 503 in Anthropic's shape, as `/v1/messages` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_count_still_waiting_at_the_drain_timeout_is_answered() {
    let mock = switchyard_testkit::MockUpstream::start().await;
    let claude = format!(
        "  - model_name: claude\n    deployments:\n      - {{provider: anthropic, api_base: \"{}\", api_key: k, model: \"claude-haiku-4-5::first_byte_ms=20000\"}}\n",
        mock.root_url()
    );
    let mut gw = GatewayProcess::start(
        BIN.as_ref(),
        &config("v1", &claude, "  drain_delay_ms: 0\n  shutdown_timeout_ms: 300"),
    );
    let client = reqwest::Client::new();
    let pending = client
        .post(format!("{}/v1/messages/count_tokens", gw.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}))
        .send();
    let pending = tokio::spawn(pending);
    gw.wait_in_flight(Some(MASTER)).await;
    gw.signal("TERM");
    let response = pending.await.unwrap().expect("an answer, not a closed connection");
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("shutting down"),
        "{body}"
    );
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0), "{:?}", gw.logs());
}

/// A pass-through request whose upstream has not answered when the drain
/// runs out of time is ended the same way: a 503 saying why, and its
/// admission recorded before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_through_request_still_waiting_at_the_drain_timeout_is_ended_and_logged() {
    let mock = switchyard_testkit::MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}\npass_through:\n  - {{path: /vendor, target: \"{}\", include_subpath: true}}\n",
        config("v1", "", "  drain_delay_ms: 0\n  shutdown_timeout_ms: 300").replace(
            &format!("policy:\n  master_key: {MASTER}\n"),
            &format!(
                "policy:\n  master_key: {MASTER}\n  data_dir: {}\n",
                dir.path().display()
            )
        ),
        mock.root_url()
    );
    let mut gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    let client = reqwest::Client::new();
    let pending = client
        .post(format!("{}/vendor/v1/chat/completions", gw.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"model": "m::first_byte_ms=20000", "messages": [{"role": "user", "content": "hi"}]}))
        .send();
    let pending = tokio::spawn(pending);
    // The upstream has the request (a pass-through counts in no
    // deployment's statistics).
    for _ in 0..400 {
        if !mock.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!mock.requests().is_empty(), "the request reached the upstream");
    gw.signal("TERM");
    let response = pending.await.unwrap().expect("an answer, not a closed connection");
    assert_eq!(response.status(), 503);
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0), "{:?}", gw.logs());
    let spend = std::fs::read_to_string(dir.path().join("spend.jsonl")).unwrap_or_default();
    assert!(spend.contains(&id), "the admission was recorded: {spend:?}");
}

/// A background response still being answered is waited for by the drain
/// like a request, then ended, charged and logged before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_response_at_the_drain_timeout_is_ended_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = stuck_gateway(dir.path(), 600);
    let client = reqwest::Client::new();
    let queued = client
        .post(format!("{}/v1/responses", gw.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({"model": "stuck", "input": "hi", "background": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), 200);
    let body: Value = queued.json().await.unwrap();
    assert_eq!(body["status"], "queued", "{body}");
    gw.wait_in_flight(Some(MASTER)).await;
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0), "{:?}", gw.logs());
    let logs = gw.logs();
    assert!(logs.iter().any(|l| l.contains("cutting them")), "{logs:?}");
    let log = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap_or_default();
    let record: Value = serde_json::from_str(
        log.lines()
            .find(|l| l.contains("stuck") && l.contains("503"))
            .unwrap_or_else(|| panic!("no record of the job: {log}")),
    )
    .unwrap();
    assert_eq!(record["error_class"], "shutting_down", "{record}");
}

/// A reload that leaves the `embedder` section alone keeps the embedder
/// already loaded (and its cache of embeddings); one that changes it loads
/// the model again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_loaded_embedder_unless_its_settings_change() {
    let model_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/all-MiniLM-L6-v2")
        .canonicalize()
        .expect("the embedding model is missing: run `cargo xtask models fetch`");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.yaml");
    let write = |cache_entries: u32, extra: &str| {
        let yaml = format!(
            "embedder:\n  model_dir: \"{}\"\n  cache_entries: {cache_entries}\ncache:\n  enabled: true\n  semantic:\n    a:\n      min_similarity: 0.9\nmodel_list:\n  - model_name: a\n    deployments:\n      - {{provider: mock, model: a-1}}\n{extra}",
            model_dir.display()
        );
        std::fs::write(&path, yaml).unwrap();
    };
    write(100, "");
    let live = live_on(&path).await;
    let first = live
        .state()
        .embedder
        .clone()
        .expect("the semantic cache needs an embedder");

    write(100, MODEL_B);
    // A change is applied when a second poll reads the same version (a file
    // rewritten in place may be read half written).
    assert!(!live.reload("test", false).await.unwrap(), "read once: not yet");
    assert_eq!(models_of(&live), ["a"]);
    assert!(live.reload("test", false).await.unwrap());
    let kept = live.state().embedder.clone().unwrap();
    assert!(Arc::ptr_eq(&first, &kept), "the same embedder serves on");
    assert_eq!(models_of(&live), ["a", "b"]);

    write(200, MODEL_B);
    assert!(!live.reload("test", false).await.unwrap());
    assert!(live.reload("test", false).await.unwrap());
    let reloaded = live.state().embedder.clone().unwrap();
    assert!(!Arc::ptr_eq(&first, &reloaded), "new settings load the model again");
}

/// An exact-match cache, which holds no embeddings, is kept by a reload that
/// changes only the embedder's settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_cache_outlives_an_embedder_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.yaml");
    let write = |batch: u32| {
        let yaml = format!("embedder:\n  batch_size: {batch}\ncache:\n  enabled: true\nmodel_list:\n{MODEL_B}");
        std::fs::write(&path, yaml).unwrap();
    };
    write(8);
    let live = live_on(&path).await;
    let before = live.state().cache.clone().expect("a cache");
    write(16);
    assert!(live.reload("test", true).await.unwrap());
    let after = live.state().cache.clone().expect("a cache");
    assert!(Arc::ptr_eq(&before, &after), "the cache and its answers are kept");
}

/// A gateway's live state on the configuration file at `path`, without a
/// server.
async fn live_on(path: &Path) -> Arc<switchyard_gateway::reload::Live> {
    use switchyard_gateway::reload::{Live, Origin, parse};
    let origin = Origin::File(path.to_owned());
    let fetched = origin.fetch().await.unwrap();
    let overrides = switchyard_gateway::Overrides::default();
    let config = parse(&fetched, &overrides).unwrap();
    let env = std::collections::BTreeMap::<String, String>::new();
    let state = switchyard_gateway::build_state(&config, &env).unwrap();
    Live::new(origin, overrides, Box::new(env), config, fetched.fingerprint, state)
}

fn models_of(live: &switchyard_gateway::reload::Live) -> Vec<String> {
    let mut names: Vec<String> = live.state().registry.model_names().map(str::to_owned).collect();
    names.sort();
    names
}

/// Reads from `socket` until the gateway closes it, returning what arrived;
/// panics if it is still open after `within`.
async fn read_until_closed(socket: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection was not closed: {}",
        String::from_utf8_lossy(&received)
    );
    String::from_utf8_lossy(&received).into_owned()
}

/// A client that sends nothing, or trickles its headers in, or opens an
/// HTTP/2 connection and starts no request, is disconnected; one that
/// trickles its body in gets a 408; none holds a connection for long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    use tokio::io::AsyncWriteExt as _;
    let gw = GatewayProcess::start(
        BIN.as_ref(),
        &config("hi", "", "  idle_timeout_ms: 300\n  body_read_timeout_ms: 300"),
    );
    let addr = gw.base_url().trim_start_matches("http://").to_owned();

    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let got = read_until_closed(&mut silent, Duration::from_secs(20)).await;
    assert!(got.is_empty(), "{got}");

    let mut preface = tokio::net::TcpStream::connect(&addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    read_until_closed(&mut preface, Duration::from_secs(20)).await;

    let mut headers = tokio::net::TcpStream::connect(&addr).await.unwrap();
    headers
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut headers, Duration::from_secs(20)).await;
    assert!(!got.starts_with("HTTP/1.1 2"), "{got}");

    let mut body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    body.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {MASTER}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\":"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let got = read_until_closed(&mut body, Duration::from_secs(20)).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("\"code\":\"request_timeout\""), "{got}");

    // A prompt client is served as before.
    let (status, text) = ask(&reqwest::Client::new(), &gw.base_url(), "a").await;
    assert_eq!((status, text.as_str()), (200, "hi"));
}

/// A client that stops reading its stream (its connection's buffers full)
/// is taken as gone after `stream_write_timeout_ms`: the request ends, its
/// upstream is let go and its slot freed, while the connection is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_stream_is_let_go() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let echo = "  - model_name: echo\n    deployments:\n      - {provider: mock, model: echo-1}\n";
    let gw = GatewayProcess::start(BIN.as_ref(), &config("hi", echo, "  stream_write_timeout_ms: 500"));
    let base = gw.base_url();
    let address: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    // A small receive window, so that the gateway's writes back up soon.
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&address.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let mut stream = tokio::net::TcpStream::from_std(socket.into()).unwrap();
    // The mock answers with the prompt, a word per chunk: 200,000 chunks.
    let prompt = "ab ".repeat(200_000);
    let body = json!({"model": "echo", "stream": true, "messages": [{"role": "user", "content": prompt}]}).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {MASTER}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).await.unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    // Nothing more is read; the connection stays open.
    wait_until("the stalled stream to be let go", async || {
        !gw.any_in_flight(Some(MASTER)).await
    })
    .await;
    assert!(
        gw.logs().iter().any(|l| l.contains("stopped reading")),
        "{:?}",
        gw.logs()
    );
    drop(stream);
}

/// Speech audio goes at its client's pace as a stream's events do: a client
/// that stops reading is let go after `stream_write_timeout_ms`, the
/// upstream's audio closed and the deployment no longer counted busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_audio_is_let_go() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mock = switchyard_testkit::MockUpstream::start().await;
    // A long recording: 4,096 characters' audio (128 KiB) 400 times.
    let speech = format!(
        "  - model_name: voice\n    deployments:\n      - {{provider: openai, api_base: \"{}\", api_key: k, model: \"tts-1::chunks=400\"}}\n",
        mock.base_url()
    );
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("requests.jsonl");
    let yaml = format!(
        "{}\ntelemetry:\n  request_log:\n    path: {}\n",
        config("hi", &speech, "  stream_write_timeout_ms: 500"),
        log_path.display()
    );
    let gw = GatewayProcess::start(BIN.as_ref(), &yaml);
    let base = gw.base_url();
    let address: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&address.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let mut stream = tokio::net::TcpStream::from_std(socket.into()).unwrap();
    let body = json!({"model": "voice", "voice": "alloy", "input": "a".repeat(4096)}).to_string();
    let request = format!(
        "POST /v1/audio/speech HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {MASTER}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).await.unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    // Nothing more is read; the connection stays open.
    wait_until("the stalled audio to be let go", async || {
        !gw.any_in_flight(Some(MASTER)).await
    })
    .await;
    assert!(
        gw.logs().iter().any(|l| l.contains("stopped reading its audio")),
        "{:?}",
        gw.logs()
    );
    wait_until("the upstream's audio to be closed", async || {
        let stats = mock.stream_stats();
        stats.started == 1 && stats.completed == 0 && stats.cancelled == 1
    })
    .await;
    // Its record says how it ended, not 200.
    wait_until("the audio's record", async || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("\"voice\""))
    })
    .await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    let record: Value = serde_json::from_str(log.lines().find(|l| l.contains("\"voice\"")).unwrap()).unwrap();
    assert_eq!(record["status"], 499, "{record}");
    assert_eq!(record["error_class"], "client_closed", "{record}");
    drop(stream);
}

/// With `max_connections` open, a new connection waits until one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let gw = GatewayProcess::start(BIN.as_ref(), &config("hi", "", "  max_connections: 2"));
    let base = gw.base_url();
    // Two clients, each holding one keep-alive connection.
    let held: Vec<reqwest::Client> = (0..2)
        .map(|_| reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap())
        .collect();
    for client in &held {
        assert_eq!(ask(client, &base, "a").await.0, 200);
    }
    let third = reqwest::Client::new();
    let waiting = tokio::spawn({
        let base = base.clone();
        async move { ask(&third, &base, "a").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a third connection was served while two were open"
    );
    drop(held);
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(answer.0, 200);
}

/// With `max_concurrent_requests` being handled, another request gets a 429
/// at once instead of queueing; once one finishes, requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_concurrency_limit_are_shed() {
    let sleepy =
        "  - model_name: sleepy\n    deployments:\n      - {provider: mock, model: s, mock: {delay_ms: 3000}}\n";
    let gw = GatewayProcess::start_with(
        BIN.as_ref(),
        &config("hi", sleepy, "  max_concurrent_requests: 1"),
        &[],
        &[("RUST_LOG", "debug")],
    );
    let base = gw.base_url();
    let holder = tokio::spawn({
        let base = base.clone();
        async move { ask(&reqwest::Client::new(), &base, "sleepy").await }
    });
    // The slow request holds the one slot once it is routed.
    assert!(gw.wait_for_log("routed", Duration::from_secs(10)), "{:?}", gw.logs());
    let client = reqwest::Client::new();
    let mut shed = None;
    while !holder.is_finished() {
        let response = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(MASTER)
            .json(&json!({"model": "a", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            shed = Some((retry_after, response.json::<Value>().await.unwrap()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some((retry_after, body)) = shed else {
        panic!(
            "no request was shed while the slow one ran: {:?}",
            holder.await.unwrap()
        );
    };
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(body["error"]["code"], "gateway_overloaded", "{body}");
    assert_eq!(holder.await.unwrap().0, 200);
    assert_eq!(ask(&client, &base, "a").await, (200, "hi".to_owned()));

    // A request whose client leaves keeps its slot while its work goes on.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let (status, error) = ask(&impatient, &base, "sleepy").await;
    assert_eq!(status, 0, "the client gave up: {error}");
    let (status, _) = ask(&client, &base, "a").await;
    assert_eq!(status, 429, "the abandoned request still holds the slot");
    let mut freed = false;
    for _ in 0..200 {
        if ask(&client, &base, "a").await.0 == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "the slot came back when the abandoned request finished");
}

/// `router_settings` can be set from the environment like the other
/// sections; a variable shaped as a setting of a section nothing reads is
/// reported, not silently ignored.
#[test]
fn settings_from_the_environment_are_read_or_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "model_list:\n  - model_name: m\n    deployments:\n      - {provider: mock, model: m}\n",
    )
    .unwrap();
    let check = |vars: &[(&str, &str)]| {
        let out = std::process::Command::new(BIN)
            .arg("check-config")
            .arg(&path)
            .env_remove("SWITCHYARD_MASTER_KEY")
            .envs(vars.iter().copied())
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
    let (ok, out) = check(&[("SWITCHYARD_ROUTER_SETTINGS__NUM_RETRIES", "99")]);
    assert!(
        !ok && out.contains("router_settings.num_retries"),
        "the variable is read: {out}"
    );
    let (ok, out) = check(&[("SWITCHYARD_SEVER__PORT", "1")]);
    assert!(ok, "{out}");
    assert!(
        out.contains("SWITCHYARD_SEVER__PORT is not read"),
        "a misspelt section is reported: {out}"
    );
    // A flag from the environment takes the words compose files and charts
    // write.
    for value in ["1", "yes", "TRUE", "0", "false", ""] {
        let (ok, out) = check(&[("SWITCHYARD_S3_FORCE_PATH_STYLE", value)]);
        assert!(ok, "{value:?}: {out}");
    }
}

/// A configuration file saved in another encoding is a configuration
/// rejected (`POST /config/reload` gets 400), not a source unreachable,
/// and the watch does not read that version again until it changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_that_is_not_utf8_is_rejected_once() {
    use switchyard_gateway::reload::ReloadError;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.yaml");
    std::fs::write(&path, format!("model_list:\n{MODEL_B}")).unwrap();
    let live = live_on(&path).await;
    // Latin-1: `ü` as one byte.
    std::fs::write(&path, b"model_list:\n  - model_name: gr\xfcn\n").unwrap();
    assert!(!live.reload("watch", false).await.unwrap(), "settling");
    match live.reload("watch", false).await {
        Err(ReloadError::Config(e)) => assert!(e.to_string().contains("not UTF-8"), "{e}"),
        other => panic!("{other:?}"),
    }
    for _ in 0..3 {
        assert!(!live.reload("watch", false).await.unwrap(), "not read again");
    }
    assert!(matches!(live.reload("test", true).await, Err(ReloadError::Config(_))));
    assert_eq!(models_of(&live), ["b"]);
}
