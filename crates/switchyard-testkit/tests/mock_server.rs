#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]
//! Behaviour of the mock OpenAI-compatible upstream over real HTTP.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use switchyard_testkit::{MockUpstream, mock_embedding};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn post(mock: &MockUpstream, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", mock.base_url()))
        .bearer_auth("sk-test")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Splits an SSE body into the `data:` payloads of its events.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn chat_non_streaming_shape_and_usage() {
    let mock = MockUpstream::start().await;
    let request = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
    });
    let response = post(&mock, "/chat/completions", &request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"].to_str().unwrap(), "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["system_fingerprint"], "fp_mock");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "mock reply: hello there");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["mock_choice_extension"]["seen"], true);
    assert_eq!(body["mock_extension"]["echo"], true);
    // 4 prompt words over all messages, 4 reply words.
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert_eq!(body["usage"]["total_tokens"], 8);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    let recorded = mock.last_request().unwrap();
    assert_eq!(recorded.method, "POST");
    assert_eq!(recorded.path, "/v1/chat/completions");
    assert_eq!(recorded.header("Authorization"), Some("Bearer sk-test"));
    assert_eq!(recorded.body, request);
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn chat_n_choices_tools_and_validation() {
    let mock = MockUpstream::start().await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    let body: Value = post(
        &mock,
        "/chat/completions",
        &json!({"model": "m", "messages": messages, "n": 3}),
    )
    .await
    .json()
    .await
    .unwrap();
    let indexes: Vec<u64> = body["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, vec![0, 1, 2]);

    let tools = json!([{"type": "function", "function": {"name": "search", "parameters": {}}}]);
    let body: Value = post(
        &mock,
        "/chat/completions",
        &json!({"model": "m", "messages": messages, "tools": tools, "tool_choice": "required"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_mock_0");
    assert_eq!(call["function"]["name"], "search");
    assert_eq!(call["function"]["arguments"], "{\"q\":\"mock\"}");

    let response = post(&mock, "/chat/completions", &json!({"model": "m", "messages": []})).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "messages");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let response = post(&mock, "/chat/completions", &json!({"messages": messages})).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "model");
}

async fn stream_events(mock: &MockUpstream, include_usage: Option<bool>) -> Vec<String> {
    let mut request = json!({
        "model": "gpt-4o",
        "stream": true,
        "messages": [{"role": "user", "content": "hello there"}],
    });
    if let Some(include) = include_usage {
        request["stream_options"] = json!({"include_usage": include});
    }
    let response = post(mock, "/chat/completions", &request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    sse_data(&response.text().await.unwrap())
}

#[tokio::test]
async fn chat_streaming_events() {
    let mock = MockUpstream::start().await;
    for include_usage in [None, Some(false), Some(true)] {
        let events = stream_events(&mock, include_usage).await;
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        for chunk in &chunks {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["model"], "gpt-4o");
            assert_eq!(chunk["mock_extension"]["echo"], true);
        }
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let with_usage = include_usage == Some(true);
        let finish_at = chunks.len() - if with_usage { 2 } else { 1 };
        let content: String = chunks[1..finish_at]
            .iter()
            .map(|c| {
                assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
                c["choices"][0]["delta"]["content"].as_str().unwrap()
            })
            .collect();
        assert_eq!(content, "mock reply: hello there");
        assert_eq!(finish_at - 1, 4, "one content chunk per word");
        let finish = &chunks[finish_at];
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        if with_usage {
            let usage = chunks.last().unwrap();
            assert_eq!(usage["choices"], json!([]));
            assert_eq!(usage["usage"]["prompt_tokens"], 2);
            assert_eq!(usage["usage"]["completion_tokens"], 4);
            assert_eq!(usage["usage"]["total_tokens"], 6);
            assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()));
        } else {
            assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        }
    }
    let stats = mock.stream_stats();
    assert_eq!(stats.started, 3);
    assert_eq!(stats.completed, 3);
    assert_eq!(stats.cancelled, 0);
}

#[tokio::test]
async fn streaming_chunk_count_malformed_sse_and_reset() {
    let mock = MockUpstream::start().await;
    let request = json!({
        "model": "m::chunks=7,malformed_sse",
        "stream": true,
        "messages": [{"role": "user", "content": "one two"}],
    });
    let text = post(&mock, "/chat/completions", &request).await.text().await.unwrap();
    let events = sse_data(&text);
    assert_eq!(events[1], "{not json}");
    let content_chunks = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert_eq!(content_chunks, 7);
    assert_eq!(events.last().unwrap(), "[DONE]");

    let request = json!({
        "model": "m::reset_after=2",
        "stream": true,
        "messages": [{"role": "user", "content": "one two three four"}],
    });
    let mut response = post(&mock, "/chat/completions", &request).await;
    assert_eq!(response.status(), 200);
    let mut received = Vec::new();
    let error = loop {
        match response.chunk().await {
            Ok(Some(bytes)) => received.extend_from_slice(&bytes),
            Ok(None) => panic!("stream ended cleanly instead of resetting"),
            Err(error) => break error,
        }
    };
    drop(error);
    let text = String::from_utf8(received).unwrap();
    assert!(!text.contains("[DONE]"));
    assert_eq!(sse_data(&text).len(), 3, "role chunk plus two content chunks");
    assert_eq!(mock.stream_stats().aborted, 1);
}

#[tokio::test]
async fn non_streaming_reset_fails_the_request() {
    let mock = MockUpstream::start().await;
    let request = json!({"model": "m::reset_after=0", "messages": [{"role": "user", "content": "x"}]});
    let result = match client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&request)
        .send()
        .await
    {
        Ok(response) => response.bytes().await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(result.is_err());
}

#[tokio::test]
async fn injected_status_with_retry_after() {
    let mock = MockUpstream::start().await;
    let request = json!({
        "model": "gpt-4o::status=429,retry_after=2",
        "messages": [{"role": "user", "content": "hi"}],
    });
    let response = post(&mock, "/chat/completions", &request).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"].to_str().unwrap(), "2");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {
            "message": "Rate limit reached for gpt-4o in organization org-mock on tokens per min (TPM): \
                        Limit 30000, Used 29500, Requested 1200. Please try again in 1.4s.",
            "type": "rate_limit_error",
            "param": null,
            "code": null,
        }})
    );

    // The header takes precedence over the model suffix.
    let response = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .header("x-mock-scenario", "status=503")
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");

    let response = post(
        &mock,
        "/chat/completions",
        &json!({"model": "m::bogus=1", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("bogus"));
}

#[tokio::test]
async fn malformed_json_body_does_not_parse() {
    let mock = MockUpstream::start().await;
    let request = json!({"model": "m::malformed_json", "messages": [{"role": "user", "content": "x"}]});
    let response = post(&mock, "/chat/completions", &request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"].to_str().unwrap(), "application/json");
    let text = response.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err());
    assert!(text.starts_with(r#"{"id": "broken""#));
}

#[tokio::test]
async fn base64_embeddings_match_float_embeddings() {
    let mock = MockUpstream::start().await;
    let input = json!(["alpha", "beta gamma"]);
    let floats: Value = post(
        &mock,
        "/embeddings",
        &json!({"model": "text-embedding-3-small", "input": input}),
    )
    .await
    .json()
    .await
    .unwrap();
    let encoded: Value = post(
        &mock,
        "/embeddings",
        &json!({"model": "text-embedding-3-small", "input": input, "encoding_format": "base64"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(floats["object"], "list");
    assert_eq!(floats["model"], "text-embedding-3-small");
    assert_eq!(floats["usage"]["prompt_tokens"], 3);
    assert_eq!(floats["usage"]["total_tokens"], 3);
    for index in 0..2 {
        let float_values: Vec<f32> = floats["data"][index]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(float_values.len(), 16);
        assert_eq!(float_values, mock_embedding(&input[index], 16));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded["data"][index]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(decoded, float_values);
        assert_eq!(encoded["data"][index]["index"], index);
    }

    let body: Value = post(
        &mock,
        "/embeddings",
        &json!({"model": "e::embedding_dims=8", "input": [[1, 2, 3], [4]]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    let body: Value = post(
        &mock,
        "/embeddings",
        &json!({"model": "e", "input": "x", "dimensions": 5}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn azure_route_requires_api_version_and_key() {
    let mock = MockUpstream::start().await;
    let url = format!("{}/openai/deployments/my-gpt/chat/completions", mock.root_url());
    let request = json!({"messages": [{"role": "user", "content": "hi"}]});

    let response = client()
        .post(&url)
        .header("api-key", "k")
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {
            "message": "Missing required query parameter: api-version",
            "type": "invalid_request_error",
            "param": null,
            "code": "missing_api_version",
        }})
    );

    let response = client()
        .post(format!("{url}?api-version=2024-06-01"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let response = client()
        .post(format!("{url}?api-version=2024-06-01"))
        .header("api-key", "k")
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "my-gpt");
    let recorded = mock.last_request().unwrap();
    assert_eq!(recorded.query.as_deref(), Some("api-version=2024-06-01"));
    assert_eq!(recorded.header("api-key"), Some("k"));

    // Scenario directives in the deployment name apply.
    let response = client()
        .post(format!(
            "{}/openai/deployments/d::status=500/embeddings?api-version=2024-06-01",
            mock.root_url()
        ))
        .header("api-key", "k")
        .json(&json!({"input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
}

#[tokio::test]
async fn completions_models_and_bad_auth() {
    let mock = MockUpstream::start().await;
    let body: Value = post(
        &mock,
        "/completions",
        &json!({"model": "davinci", "prompt": "say this"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-mock-"));
    assert_eq!(body["choices"][0]["text"], "mock completion: say this");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 2);
    assert_eq!(body["usage"]["completion_tokens"], 4);

    let text = post(
        &mock,
        "/completions",
        &json!({"model": "davinci", "prompt": ["say this"], "stream": true,
                "stream_options": {"include_usage": true}}),
    )
    .await
    .text()
    .await
    .unwrap();
    let events = sse_data(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(streamed, "mock completion: say this");
    assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 6);

    let response = client()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"][0]["id"], "mock-model");

    // Routes also work without the /v1 prefix.
    let response = client()
        .get(format!("{}/models", mock.root_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let response = client()
        .get(format!("{}/models", mock.base_url()))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let response = client().get(format!("{}/nope", mock.base_url())).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(mock.requests().len(), 6);
}

#[tokio::test]
async fn dropped_stream_is_counted_as_cancelled() {
    let mock = MockUpstream::start().await;
    let request = json!({
        "model": "m::chunk_delay_ms=50,chunks=100",
        "stream": true,
        "messages": [{"role": "user", "content": "hello"}],
    });
    let mut response = post(&mock, "/chat/completions", &request).await;
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(response);
    assert!(
        mock.wait_for_cancelled(1, Duration::from_secs(10)).await,
        "stats: {:?}",
        mock.stream_stats()
    );
    let stats = mock.stream_stats();
    assert_eq!(stats.started, 1);
    assert_eq!(stats.completed, 0);
    assert_eq!(stats.cancelled, 1);
}

#[tokio::test]
async fn first_byte_delay_is_applied() {
    let mock = MockUpstream::start().await;
    let request = json!({"model": "m::first_byte_ms=100", "messages": [{"role": "user", "content": "x"}]});
    let started = std::time::Instant::now();
    let response = post(&mock, "/chat/completions", &request).await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn hang_never_responds() {
    let mock = MockUpstream::start().await;
    let request = json!({"model": "m::hang", "messages": [{"role": "user", "content": "x"}]});
    let result = reqwest::Client::new()
        .post(format!("{}/chat/completions", mock.base_url()))
        .timeout(Duration::from_millis(300))
        .json(&request)
        .send()
        .await;
    assert!(result.unwrap_err().is_timeout());
}
