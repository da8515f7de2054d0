//! `pass_through:` routes through the real `switchyard` binary to the mock
//! of OpenAI's wire protocol: the path, query, body and chosen headers go
//! upstream with the route's credentials instead of the client's key; the
//! answer, streams and errors included, comes back as the upstream sent it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::Path;

use serde_json::{Value, json};
use switchyard_testkit::{GatewayProcess, MockUpstream};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const MASTER: &str = "sk-master-key-for-pass-through";
const UPSTREAM_KEY: &str = "sk-upstream-key-never-shown-1";

fn config(mock: &MockUpstream) -> String {
    let base = mock.base_url();
    format!(
        r#"
policy:
  master_key: {MASTER}
model_list:
  - model_name: m
    deployments:
      - {{provider: mock, model: m}}
pass_through:
  - path: /openai-native
    target: "{base}"
    include_subpath: true
    forward_headers: true
    headers: {{authorization: "Bearer os.environ/PASS_THROUGH_TEST_KEY", x-team: research}}
  - path: /public-models
    target: "{base}/models"
    auth: false
"#
    )
}

/// The gateway on [`config`], with the route's upstream key in its environment.
fn start(mock: &MockUpstream) -> GatewayProcess {
    GatewayProcess::start_with(
        Path::new(BIN),
        &config(mock),
        &[],
        &[("PASS_THROUGH_TEST_KEY", UPSTREAM_KEY)],
    )
}

/// The spend records of `key`, as the master key lists them.
async fn spend_logs(gateway: &GatewayProcess, key: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/spend/logs?api_key={key}", gateway.base_url()))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A virtual key made by the master key with `body`'s fields.
async fn new_key(gateway: &GatewayProcess, body: Value) -> String {
    let made: Value = reqwest::Client::new()
        .post(format!("{}/key/generate", gateway.base_url()))
        .bearer_auth(MASTER)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    made["key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_routes_forward_with_their_own_credentials() {
    let mock = MockUpstream::start().await;
    let gateway = start(&mock);
    let client = reqwest::Client::new();
    let key = new_key(&gateway, json!({})).await;

    // A chat request as the upstream takes it, with a header of the client's.
    let answer = client
        .post(format!("{}/openai-native/chat/completions?trace=1", gateway.base_url()))
        .bearer_auth(&key)
        .header("x-client-note", "kept")
        // Hop-by-hop: named by the client's `Connection`, not forwarded.
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert!(body["choices"][0]["message"]["content"].is_string(), "{body}");
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.query.as_deref(), Some("trace=1"));
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    assert_eq!(sent.header("x-team"), Some("research"));
    assert_eq!(sent.header("x-client-note"), Some("kept"));
    assert_eq!(sent.header("x-hop"), None, "{:?}", sent.headers);
    assert_eq!(sent.body["model"], "gpt-4o-mini");
    assert!(
        !format!("{:?}", sent.headers).contains(&key),
        "the client's key went upstream"
    );

    // A stream comes back event by event, as sent.
    let streamed = client
        .post(format!("{}/openai-native/chat/completions", gateway.base_url()))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    assert!(
        streamed.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "{:?}",
        streamed.headers()
    );
    let text = streamed.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // The upstream's errors are its own.
    let refused = client
        .post(format!("{}/openai-native/chat/completions", gateway.base_url()))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o-mini::status=429", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);

    // Without a key the route is closed; a route without auth is open.
    let closed = client
        .post(format!("{}/openai-native/chat/completions", gateway.base_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 401);
    let open = client
        .get(format!("{}/public-models", gateway.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    assert_eq!(mock.last_request().unwrap().path, "/v1/models");
    // A redirect is handed back, not followed with the route's credentials.
    let not_following = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirected = not_following
        .post(format!("{}/openai-native/chat/completions", gateway.base_url()))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o-mini::redirect", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(redirected.status(), 307);
    assert!(
        !mock
            .requests()
            .iter()
            .any(|r| r.path == switchyard_testkit::REDIRECT_TARGET),
        "the redirect was followed"
    );
    // The rest of the path stays under the target. Sent as written (HTTP
    // clients resolve dot segments before sending).
    for sneaky in [
        "/openai-native/../models",
        "/openai-native/%2e%2e/models",
        "/openai-native/.%2E/models",
        "/openai-native/a%2Fb",
    ] {
        let answer = raw_get(&gateway.base_url(), sneaky, &key).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{sneaky}: {answer}");
    }
    // Empty segments are left out, not sent as `//` (read by some servers
    // as another host).
    let answer = raw_get(&gateway.base_url(), "/openai-native//models", &key).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let sent = mock.requests().pop().unwrap();
    assert!(
        sent.path.ends_with("/models") && !sent.path.contains("//"),
        "{}",
        sent.path
    );
    let traced = client
        .request(
            reqwest::Method::TRACE,
            format!("{}/openai-native/models", gateway.base_url()),
        )
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), 405);
    assert!(traced.headers()["allow"].to_str().unwrap().contains("POST"));
    // A key limited to some models uses only the routes its list names.
    for (models, status) in [(json!(["m"]), 403), (json!(["m", "/openai-native"]), 200)] {
        let limited = new_key(&gateway, json!({"models": models})).await;
        let answer = client
            .get(format!("{}/openai-native/models", gateway.base_url()))
            .bearer_auth(&limited)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status);
    }

    // `include_subpath` is off there: only the path itself is served.
    let below = client
        .get(format!("{}/public-models/gpt-4o", gateway.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(below.status(), 404);
}

#[test]
fn pass_through_paths_may_not_shadow_the_gateways_own() {
    let yaml = "model_list:\n  - model_name: m\n    deployments:\n      - {provider: mock, model: m}\npass_through:\n  - {path: /v1/rerank, target: \"https://api.example.com/v1/rerank\"}\n  - {path: /cohere, target: \"ftp://example.com\"}\n  - {path: /cohere2, target: \"https://example.com\", headers: {x-key: os.environ/SWITCHYARD_TEST_UNSET_PT_KEY}}\n";
    let out = switchyard_testkit::run_check_config(Path::new(BIN), yaml);
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    for field in [
        "pass_through[0].path",
        "pass_through[1].target",
        "pass_through[2].headers.x-key",
    ] {
        assert!(text.contains(field), "{field}: {text}");
    }
}

/// A GET sent over TCP exactly as written, with `key`; the whole answer.
async fn raw_get(base: &str, path: &str, key: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// A key's requests per minute and requests in flight count its
/// pass-through requests too (a stream holds its slot until it ends); each
/// is recorded in the spend log at no cost, and labelled `pass_through` in
/// the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_requests_count_against_a_keys_limits() {
    let mock = MockUpstream::start().await;
    let gateway = start(&mock);
    let client = reqwest::Client::new();
    let key = new_key(&gateway, json!({"rpm_limit": 3, "max_parallel_requests": 1})).await;
    let url = format!("{}/openai-native/chat/completions", gateway.base_url());
    let slow = json!({"model": "gpt-4o-mini::chunks=6,chunk_delay_ms=150", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let quick = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});

    // While a stream is being passed on, the key's one slot is taken.
    let streaming = client.post(&url).bearer_auth(&key).json(&slow).send().await.unwrap();
    assert_eq!(streaming.status(), 200);
    let busy = client.post(&url).bearer_auth(&key).json(&quick).send().await.unwrap();
    assert_eq!(busy.status(), 429);
    let body: Value = busy.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    let text = streaming.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // The stream's end gives the slot back (a moment later: it is released
    // after the last byte is handed over).
    let mut freed = false;
    for _ in 0..50 {
        let answer = client.post(&url).bearer_auth(&key).json(&quick).send().await.unwrap();
        if answer.status() == 200 {
            freed = true;
            break;
        }
        assert_eq!(answer.status(), 429);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(freed, "the slot was never given back");
    // Three requests admitted this minute (the refusals were not counted):
    // the next is over the key's rpm_limit.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let answer = client.post(&url).bearer_auth(&key).json(&quick).send().await.unwrap();
        statuses.push(answer.status().as_u16());
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");

    // Each admitted request is in the spend log, at no cost.
    let mut logs = Value::Null;
    for _ in 0..50 {
        logs = spend_logs(&gateway, &key).await;
        if logs.as_array().is_some_and(|l| l.len() >= 3) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let logs = logs.as_array().unwrap();
    assert_eq!(logs.len(), 3, "{logs:?}");
    for record in logs {
        assert_eq!(record["model"], "/openai-native", "{record}");
        assert_eq!(record["spend"], 0.0, "{record}");
    }
    let metrics = client
        .get(format!("{}/metrics", gateway.base_url()))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(r#"route="pass_through""#), "{metrics}");
}

/// A pass-through route in front of another Switchyard: the answer keeps
/// the upstream's own headers, but not its `x-switchyard-*` ones, which
/// would name its groups, deployments and request id as this gateway's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_gateways_own_headers_are_not_passed_on() {
    let inner = GatewayProcess::start(
        Path::new(BIN),
        "model_list:\n  - model_name: inner-model\n    deployments:\n      - {provider: mock, model: m}\n",
    );
    let outer = GatewayProcess::start(
        Path::new(BIN),
        &format!(
            "pass_through:\n  - path: /inner\n    target: \"{}/v1\"\n    include_subpath: true\n    auth: false\nmodel_list:\n  - model_name: m\n    deployments:\n      - {{provider: mock, model: m}}\n",
            inner.base_url()
        ),
    );
    let body = json!({"model": "inner-model", "messages": [{"role": "user", "content": "hi"}]});
    let direct = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", inner.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.headers()["x-switchyard-model"], "inner-model");
    let through = reqwest::Client::new()
        .post(format!("{}/inner/chat/completions", outer.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(through.status(), 200);
    let headers = through.headers().clone();
    for name in ["x-switchyard-model", "x-switchyard-deployment", "x-switchyard-attempts"] {
        assert!(headers.get(name).is_none(), "{name}: {headers:?}");
    }
    assert_eq!(headers["content-type"], "application/json");
    // The inner gateway's request id (its `x-request-id`, which the outer
    // one's replaces) comes back as the upstream's.
    let upstream_id = headers["x-switchyard-upstream-request-id"].to_str().unwrap();
    assert!(!upstream_id.is_empty());
    assert_ne!(headers["x-request-id"], upstream_id, "{headers:?}");
    let answer: Value = through.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "mock reply: hi");
}

/// A pass-through route under a path Azure clients use (LiteLLM's `/openai`
/// route to OpenAI's own API) keeps it: what is under it is forwarded, not
/// routed to this gateway's groups, and one that catches every subpath
/// where the gateway has Azure routes starts as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_routes_keep_the_paths_azure_clients_use() {
    let inner = GatewayProcess::start(
        Path::new(BIN),
        "model_list:\n  - model_name: inner-model\n    deployments:\n      - {provider: mock, model: m}\n",
    );
    let outer = GatewayProcess::start(
        Path::new(BIN),
        &format!(
            "pass_through:\n  - {{path: /openai, target: \"{base}/openai\", include_subpath: true, auth: false}}\n  \
             - {{path: /engines, target: \"{base}/engines\", include_subpath: true, auth: false}}\n\
             model_list:\n  - model_name: m\n    deployments:\n      - {{provider: mock, model: m}}\n",
            base = inner.base_url()
        ),
    );
    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    for path in [
        "/openai/deployments/inner-model/chat/completions",
        "/engines/inner-model/chat/completions",
    ] {
        let through = reqwest::Client::new()
            .post(format!("{}{path}?api-version=2024-10-21", outer.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(through.status(), 200, "{path}");
        let answer: Value = through.json().await.unwrap();
        assert_eq!(answer["choices"][0]["message"]["content"], "mock reply: hi", "{path}");
    }
    // The Azure paths no pass-through claims are this gateway's own.
    let routed = reqwest::Client::new()
        .post(format!("{}/deployments/m/chat/completions", outer.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(routed.status(), 200);
    assert_eq!(routed.headers()["x-switchyard-model"], "m");
}

/// A pass-through stream still running when the drain runs out of time is
/// cut (its client sees the body fail) and recorded before the process
/// exits: the spend log holds it after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_through_stream_cut_at_shutdown_is_recorded() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "server:\n  drain_delay_ms: 0\n  shutdown_timeout_ms: 300\npolicy:\n  data_dir: \"{}\"\n{}",
        dir.path().display(),
        config(&mock).replace("policy:\n", "")
    );
    let start = || GatewayProcess::start_with(Path::new(BIN), &yaml, &[], &[("PASS_THROUGH_TEST_KEY", UPSTREAM_KEY)]);
    let mut gateway = start();
    let key = new_key(&gateway, json!({})).await;
    let long = json!({"model": "gpt-4o-mini::chunks=60,chunk_delay_ms=200", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let streaming = reqwest::Client::new()
        .post(format!("{}/openai-native/chat/completions", gateway.base_url()))
        .bearer_auth(&key)
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), 200);
    gateway.signal("TERM");
    assert!(streaming.text().await.is_err(), "the body ends in an error");
    assert_eq!(
        gateway.wait_exit(std::time::Duration::from_secs(10)),
        Some(0),
        "{:?}",
        gateway.logs()
    );
    let gateway = start();
    let logs = spend_logs(&gateway, &key).await;
    assert_eq!(logs.as_array().map(Vec::len), Some(1), "{logs}");
}
