//! End-to-end: the real `switchyard` binary on a random port, in front of the
//! testkit's mock OpenAI server on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard_testkit::{GatewayProcess, MockUpstream, run_check_config};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn config(mock: &MockUpstream) -> String {
    let base = mock.base_url();
    let root = mock.root_url();
    let openai = |name: &str, model: &str, extra: &str| {
        format!(
            "  - model_name: {name}\n    deployments:\n      - provider: openai\n        model: \"{model}\"\n        api_base: {base}\n{extra}"
        )
    };
    // Short backoffs; a long Retry-After is passed to the client, not waited for.
    let mut yaml = String::from(
        "server:\n  max_body_bytes: 4096\nrouter_settings:\n  retry_backoff_ms: 10\n  max_backoff_ms: 20\n  max_retry_after_ms: 1000\nmodel_list:\n",
    );
    yaml += &openai(
        "gpt-test",
        "mock-model",
        "        api_key: os.environ/TEST_UPSTREAM_KEY\n        headers:\n          x-team: blue\n",
    );
    yaml += &openai("flaky", "mock-model::status=500", "");
    yaml += &openai("limited", "mock-model::status=429,retry_after=7", "");
    yaml += &openai("bad-request", "mock-model::status=400", "");
    yaml += &openai("upstream-408", "mock-model::status=408", "");
    yaml += &openai("gone", "mock-model::status=404", "");
    // A deployment whose upstream does not know its model: the group's
    // other deployment answers.
    yaml += &format!(
        "  - model_name: half-gone\n    deployments:\n      - {{provider: openai, model: \"missing::status=404\", api_base: {base}, weight: 1000}}\n      - {{provider: openai, model: \"present\", api_base: {base}}}\n"
    );
    // A non-streaming answer is bounded by the total timeout (its head
    // comes when it is written), a stream's start by the first-byte one.
    yaml += &openai(
        "slow",
        "mock-model::first_byte_ms=5000",
        "        timeouts:\n          first_byte_ms: 300\n          total_ms: 600\n",
    );
    // A long non-streaming answer (a reasoning model's) is not cut at the
    // first-byte timeout, which bounds a stream's start.
    yaml += &openai(
        "thoughtful",
        "mock-model::first_byte_ms=900",
        "        timeouts:\n          first_byte_ms: 300\n          total_ms: 10000\n",
    );
    yaml += &openai("broken-json", "mock-model::malformed_json", "");
    yaml += &openai("broken-sse", "mock-model::malformed_sse", "");
    yaml += &openai("reset", "mock-model::reset_after=2", "");
    yaml += &openai("trickle", "mock-model::chunk_delay_ms=1000,chunks=200", "");
    yaml += &openai(
        "too-long",
        "mock-model::chunk_delay_ms=100,chunks=1000",
        "        timeouts:\n          total_ms: 1000\n",
    );
    yaml += "  - model_name: unreachable\n    deployments:\n      - provider: openai\n        model: m\n        api_base: http://127.0.0.1:1/v1\n        timeouts:\n          connect_ms: 2000\n";
    yaml += &format!(
        "  - model_name: azure-test\n    deployments:\n      - provider: azure\n        model: my-deployment\n        api_base: {root}\n        api_version: 2024-10-21\n        api_key: os.environ/TEST_AZURE_KEY\n"
    );
    yaml += "  - model_name: mock-gpt\n    deployments:\n      - provider: mock\n        model: builtin-1\n";
    yaml += "  - model_name: team/mock-gpt\n    deployments:\n      - provider: mock\n        model: builtin-2\n";
    yaml
}

struct Setup {
    mock: MockUpstream,
    gateway: GatewayProcess,
    http: reqwest::Client,
}

async fn setup() -> Setup {
    let mock = MockUpstream::start().await;
    let gateway = GatewayProcess::start_with(
        Path::new(BIN),
        &config(&mock),
        &[],
        &[
            ("TEST_UPSTREAM_KEY", "sk-upstream-secret"),
            ("TEST_AZURE_KEY", "azure-secret"),
        ],
    );
    Setup {
        mock,
        gateway,
        http: reqwest::Client::new(),
    }
}

impl Setup {
    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.gateway.base_url()))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.gateway.base_url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello there"}], "stream": stream})
}

/// Collects the `data:` payloads of an SSE body.
async fn sse_events(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

fn assert_error_shape(body: &Value) {
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some() && error.get("code").is_some(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_passes_unknown_fields_both_ways_and_rewrites_the_model() {
    let s = setup().await;
    let mut body = chat("gpt-test", false);
    body["a_parameter_from_tomorrow"] = json!({"nested": [1, 2]});
    body["temperature"] = json!(0.25);
    // Structured Outputs write a schema's properties in the order given.
    let schema: Value = serde_json::from_str(
        r#"{"type": "object", "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"}}}"#,
    )
    .unwrap();
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "a", "schema": schema}});
    let response = s.post("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-deployment"], "gpt-test/0");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "mock reply: hello there");
    assert_eq!(answer["mock_extension"], json!({"echo": true}));
    assert_eq!(answer["choices"][0]["mock_choice_extension"], json!({"seen": true}));

    let seen = s.mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.body["model"], "mock-model");
    assert_eq!(seen.body["a_parameter_from_tomorrow"], json!({"nested": [1, 2]}));
    assert_eq!(seen.body["temperature"], json!(0.25));
    // A custom tool's call in the history goes on as it came.
    let custom = json!({"id": "c1", "type": "custom", "custom": {"name": "sql", "input": "select 1"}});
    let mut turn = chat("gpt-test", false);
    turn["messages"] = json!([
        {"role": "user", "content": "run it"},
        {"role": "assistant", "content": null, "tool_calls": [custom]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"}
    ]);
    let response = s.post("/v1/chat/completions", &turn).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        s.mock.last_request().unwrap().body["messages"][1]["tool_calls"][0],
        custom
    );
    let properties = seen
        .body
        .pointer("/response_format/json_schema/schema/properties")
        .unwrap();
    let order: Vec<&String> = properties.as_object().unwrap().keys().collect();
    assert_eq!(order, ["reasoning", "answer"], "keys keep the client's order");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-upstream-secret"));
    assert_eq!(seen.header("x-team"), Some("blue"));
    assert!(
        s.gateway.logs().iter().all(|l| !l.contains("sk-upstream-secret")),
        "the key leaked into logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_forwards_chunks_usage_and_done() {
    let s = setup().await;
    let mut body = chat("gpt-test", true);
    body["stream_options"] = json!({"include_usage": true});
    let response = s.post("/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = sse_events(response).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "mock reply: hello there");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert!(last["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        s.mock.last_request().unwrap().body["stream_options"],
        json!({"include_usage": true})
    );

    // Without `include_usage` the client sees no usage at all, though the
    // gateway asks the upstream for it (which then adds `"usage": null` to
    // every chunk).
    let response = s.post("/chat/completions", &chat("gpt-test", true)).await;
    let events = sse_events(response).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(events.len() > 2, "{events:?}");
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert!(chunk.get("usage").is_none(), "{event}");
    }
    assert_eq!(
        s.mock.last_request().unwrap().body["stream_options"],
        json!({"include_usage": true})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_is_not_buffered_and_a_disconnect_cancels_the_upstream() {
    let s = setup().await;
    let response = s.post("/v1/chat/completions", &chat("trickle", true)).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    // The upstream sends one chunk per second for 200 seconds: the first one can
    // only arrive here in time if the gateway forwards as it receives.
    let first = tokio::time::timeout(Duration::from_secs(30), body.next())
        .await
        .expect("no chunk was forwarded before the upstream finished")
        .unwrap()
        .unwrap();
    assert!(first.starts_with(b"data: {"), "{first:?}");
    assert_eq!(s.mock.stream_stats().completed, 0);
    drop(body);
    assert!(
        s.mock.wait_for_cancelled(1, Duration::from_secs(20)).await,
        "the upstream stream was not cancelled: {:?}",
        s.mock.stream_stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_openai_shaped_and_name_the_field() {
    let s = setup().await;
    let (status, body) = s.post_raw("/v1/chat/completions", "{\"model\": ").await;
    assert_eq!(status, 400);
    assert_error_shape(&body);
    assert_eq!(body["error"]["code"], "invalid_json");

    let (status, body) = s.post_raw("/v1/chat/completions", r#"{"model":"gpt-test"}"#).await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("messages")));
    assert_error_shape(&body);

    let (status, body) = s
        .post_raw(
            "/v1/chat/completions",
            r#"{"model":"gpt-test","messages":[{"role":"wizard","content":"x"}]}"#,
        )
        .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("messages[0].role"))
    );

    let (status, body) = s
        .post_raw("/v1/chat/completions", r#"{"model":"gpt-test","messages":[]}"#)
        .await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("messages")));

    let (status, body) = s
        .post_raw("/v1/embeddings", r#"{"model":"gpt-test","input":{"a":1}}"#)
        .await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("input")));

    // An output limit or answer count that is not a whole number (which a
    // lenient server would take, beyond what the gateway reserved for).
    for (field, value) in [
        ("max_tokens", json!("100000")),
        ("max_completion_tokens", json!(-1)),
        ("max_tokens", json!(-2)),
        ("n", json!(8.5)),
    ] {
        let mut body = chat("gpt-test", false);
        body[field] = value;
        let (status, answer) = s.post_raw("/v1/chat/completions", body.to_string()).await;
        assert_eq!(
            (status, answer["error"]["param"].as_str()),
            (400, Some(field)),
            "{answer}"
        );
    }
    let (status, body) = s
        .post_raw("/v1/completions", r#"{"model":"gpt-test","prompt":"x","best_of":"2"}"#)
        .await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("best_of")));
    // Gateway fields sent as `null` are absent.
    let mut unset = chat("gpt-test", false);
    unset["fallbacks"] = Value::Null;
    unset["num_retries"] = Value::Null;
    unset["timeout"] = Value::Null;
    unset["max_tokens"] = Value::Null;
    let answer = s.post("/v1/chat/completions", &unset).await;
    assert_eq!(answer.status(), 200);

    let response = s.post("/v1/chat/completions", &chat("no-such-model", false)).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["param"], "model");

    let big = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x".repeat(10_000)}]});
    let (status, body) = s.post_raw("/v1/chat/completions", big.to_string()).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "request_too_large");

    let response = s
        .http
        .get(format!("{}/v1/unknown", s.gateway.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_error_shape(&response.json().await.unwrap());
    let response = s
        .http
        .get(format!("{}/v1/chat/completions", s.gateway.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert!(response.headers().contains_key("allow"));
    assert_error_shape(&response.json().await.unwrap());
    // Under /v1/messages errors come in Anthropic's shape too, unknown
    // routes and methods included (the Anthropic SDK's batches call).
    for (method, path, status) in [
        (reqwest::Method::GET, "/v1/messages", 405),
        (reqwest::Method::POST, "/v1/messages/batches", 404),
    ] {
        let response = s
            .http
            .request(method, format!("{}{path}", s.gateway.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["type"], "error", "{path}: {body}");
        assert!(body["error"]["type"].is_string(), "{path}: {body}");
    }
    // A 405 says which method the route takes.
    let response = s
        .http
        .get(format!("{}/config/reload", s.gateway.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(
        s.mock.requests().len(),
        1,
        "invalid requests must not reach the upstream (the one with unset fields did)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_become_typed_errors() {
    let s = setup().await;
    let cases = [
        ("flaky", 502, "upstream_error"),
        ("unreachable", 502, "upstream_unreachable"),
        ("slow", 504, "upstream_timeout"),
        ("upstream-408", 504, "upstream_timeout"),
        ("gone", 502, "upstream_not_found"),
        ("broken-json", 502, "upstream_invalid_response"),
    ];
    for (model, status, code) in cases {
        let response = s.post("/v1/chat/completions", &chat(model, false)).await;
        assert_eq!(response.status(), status, "{model}");
        let body: Value = response.json().await.unwrap();
        assert_error_shape(&body);
        assert_eq!(body["error"]["code"], code, "{model}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("{model}/0")),
            "{body}"
        );
    }

    for _ in 0..3 {
        let response = s.post("/v1/chat/completions", &chat("half-gone", false)).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    let response = s.post("/v1/chat/completions", &chat("thoughtful", false)).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let response = s.post("/v1/chat/completions", &chat("thoughtful", true)).await;
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout", "{body}");

    let response = s.post("/v1/chat/completions", &chat("limited", false)).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "The upstream of deployment limited/0 is over its rate limit (HTTP 429). Try again in 7s."
    );
    assert_eq!(body["error"]["type"], "rate_limit_error");

    let response = s.post("/v1/chat/completions", &chat("bad-request", true)).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "mock upstream error 400");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_ends_with_an_error_event_not_done() {
    let s = setup().await;
    // A malformed event before any output is the attempt's failure: retried,
    // then reported as a plain error response.
    let response = s.post("/v1/chat/completions", &chat("broken-sse", true)).await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-switchyard-attempts"], "3");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_invalid_response", "{body}");
    for model in ["reset", "too-long"] {
        let response = s.post("/v1/chat/completions", &chat(model, true)).await;
        assert_eq!(response.status(), 200, "{model}");
        let events = sse_events(response).await;
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_error_shape(&last);
        assert_eq!(last["error"]["type"], "upstream_error", "{model}");
        assert!(!events.iter().any(|e| e == "[DONE]"), "{model}: {events:?}");
        assert!(
            events.len() >= 2,
            "{model}: the chunks before the failure were forwarded"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_completions_embeddings_models_and_health() {
    let s = setup().await;
    let response = s.post("/v1/chat/completions", &chat("azure-test", false)).await;
    assert_eq!(response.status(), 200);
    let seen = s.mock.last_request().unwrap();
    assert_eq!(seen.path, "/openai/deployments/my-deployment/chat/completions");
    assert_eq!(seen.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(seen.header("api-key"), Some("azure-secret"));
    assert_eq!(seen.header("authorization"), None);

    let response = s
        .post(
            "/completions",
            &json!({"model": "gpt-test", "prompt": "say hi", "max_tokens": 3}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(s.mock.last_request().unwrap().body["max_tokens"], 3);

    let response = s
        .post(
            "/v1/completions",
            &json!({"model": "gpt-test", "prompt": "say hi", "stream": true}),
        )
        .await;
    assert_eq!(sse_events(response).await.last().map(String::as_str), Some("[DONE]"));

    for format in ["float", "base64"] {
        let response = s
            .post(
                "/v1/embeddings",
                &json!({"model": "gpt-test", "input": ["a", "b"], "encoding_format": format}),
            )
            .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["data"].as_array().unwrap().len(), 2);
    }
    let response = s.post("/embeddings", &json!({"model": "mock-gpt", "input": "x"})).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 16);

    for path in ["/v1/models", "/models"] {
        let body: Value = s
            .http
            .get(format!("{}{path}", s.gateway.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&"gpt-test") && ids.contains(&"mock-gpt") && ids.contains(&"azure-test"),
            "{ids:?}"
        );
    }
    // One model, by name; names may contain a slash.
    for name in ["mock-gpt", "team/mock-gpt"] {
        let response = s
            .http
            .get(format!("{}/v1/models/{name}", s.gateway.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            (body["id"].as_str(), body["object"].as_str()),
            (Some(name), Some("model"))
        );
    }
    let (status, body) = {
        let response = s
            .http
            .get(format!("{}/models/no-such-model", s.gateway.base_url()))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 404);
    assert_error_shape(&body);
    assert_eq!(body["error"]["code"], "model_not_found");
    // A name that is not UTF-8 once decoded: a JSON 400, not a plain-text one.
    let response = s
        .http
        .get(format!("{}/v1/models/%FF", s.gateway.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_error_shape(&body);
    assert_eq!(body["error"]["param"], "model");
    for path in ["/health/liveness", "/health/liveliness", "/health/readiness"] {
        let response = s
            .http
            .get(format!("{}{path}", s.gateway.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_input_takes_the_process_down() {
    let s = setup().await;
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"x\"".to_vec(),
        vec![0xff, 0xfe, 0x00],
        b"{\"model\":\"gpt-test\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}".to_vec(),
        b"{\"model\":\"gpt-test\",\"messages\":[{\"role\":\"user\",\"content\":7}]}".to_vec(),
        b"{\"model\":\"gpt-test\",\"messages\":[{\"role\":\"user\"}],\"stream\":\"yes\"}".to_vec(),
        b"{\"model\":\"gpt-test\",\"prompt\":[[-1]]}".to_vec(),
        "{\"model\":\"\u{1F600}\",\"messages\":[{\"role\":\"user\",\"content\":\"\u{0}\"}]}"
            .as_bytes()
            .to_vec(),
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
    ];
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
        for body in &bodies {
            let (status, json) = s.post_raw(path, body.clone()).await;
            assert!(status < 500, "{path} {body:?} -> {status} {json}");
            if status >= 400 {
                assert_error_shape(&json);
            }
        }
    }
    let response = s
        .http
        .get(format!("{}/health/liveness", s.gateway.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[test]
fn check_config_accepts_good_files_and_names_the_bad_key() {
    let good = "model_list:\n  - model_name: a\n    deployments:\n      - provider: mock\n        model: m\n";
    let output = run_check_config(Path::new(BIN), good);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 models"));

    let bad = "model_list:\n  - model_name: a\n    deployments:\n      - provider: mock\n        model: m\n        api_bsae: x\n";
    let output = run_check_config(Path::new(BIN), bad);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("api_bsae"), "{stderr}");

    // A configuration mistake is reported on one line, without a
    // backtrace, even where `RUST_BACKTRACE` asks for them.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, bad).unwrap();
    let output = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("Error: ") && stderr.contains("api_bsae"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    // Kubernetes' service link for a Service named `switchyard` is not a
    // port: it is left alone, and said so.
    let good = "model_list:\n  - model_name: a\n    deployments:\n      - provider: mock\n        model: m\n";
    std::fs::write(&path, good).unwrap();
    let output = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .env("SWITCHYARD_PORT", "tcp://10.96.0.12:4000")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    assert!(said.contains("service link"), "{said}");

    // Where the server would write is checked, and warned about: a data
    // directory under a file cannot be made; the request log's can.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let writes = format!(
        "{good}policy:\n  data_dir: {}\ntelemetry:\n  request_log:\n    path: {}\n",
        blocker.join("state").display(),
        dir.path().join("logs/requests.jsonl").display()
    );
    std::fs::write(&path, writes).unwrap();
    let output = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("warning: policy.data_dir:") && said.contains("is not a directory"),
        "{said}"
    );
    assert!(!said.contains("telemetry.request_log"), "{said}");
    assert!(!dir.path().join("logs").exists(), "the check creates nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_override_the_file() {
    let mock = MockUpstream::start().await;
    let gateway = GatewayProcess::start_with(
        Path::new(BIN),
        &config(&mock),
        &[],
        &[
            ("TEST_UPSTREAM_KEY", "k"),
            ("TEST_AZURE_KEY", "k"),
            ("SWITCHYARD_SERVER__MAX_BODY_BYTES", "40"),
        ],
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gateway.base_url()))
        .json(&chat("gpt-test", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}

/// Browsers may call the origins in `server.cors_allowed_origins`: their
/// preflights are answered without a key, and answers are marked readable
/// by them only. Without the setting an `OPTIONS` request is a JSON 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_of_the_allowed_origins_may_call_it() {
    const APP: &str = "https://app.example.com";
    // Written as a person might: browsers send it lower-case, without the default port.
    let yaml = "server:\n  cors_allowed_origins: [\"https://App.Example.com:443\"]\npolicy:\n  master_key: sk-master-cors-0000000000\nmodel_list:\n  - model_name: m\n    deployments:\n      - provider: mock\n        model: mock-1\n";
    let gateway = GatewayProcess::start(Path::new(BIN), yaml);
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.base_url());
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
    };
    let answer = preflight(APP).await.unwrap();
    assert_eq!(answer.status(), 200);
    let header =
        |r: &reqwest::Response, name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_ascii_lowercase());
    assert_eq!(header(&answer, "access-control-allow-origin").as_deref(), Some(APP));
    assert!(
        header(&answer, "access-control-allow-headers").is_some_and(|h| h.contains("authorization")),
        "{:?}",
        answer.headers()
    );
    let other = preflight("https://evil.example.net").await.unwrap();
    assert!(header(&other, "access-control-allow-origin").is_none());

    let call = http
        .post(&url)
        .header("origin", APP)
        .bearer_auth("sk-master-cors-0000000000")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(call.status(), 200);
    assert_eq!(header(&call, "access-control-allow-origin").as_deref(), Some(APP));
    assert!(
        header(&call, "access-control-expose-headers").is_some(),
        "x-request-id and the rate-limit headers are readable"
    );

    // Off by default.
    let s = setup().await;
    let answer = s
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", s.gateway.base_url()),
        )
        .header("origin", APP)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 405);
    assert!(answer.headers().get("access-control-allow-origin").is_none());
    assert_error_shape(&answer.json::<Value>().await.unwrap());
}
