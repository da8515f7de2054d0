#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]
//! Directives that behave the same across the mock's OpenAI, Anthropic and
//! Bedrock protocols.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_testkit::{MOCK_CACHE_READ_TOKENS, MockUpstream};

/// A request to `path` with the headers its protocol requires.
fn request(mock: &MockUpstream, path: &str, body: &Value) -> reqwest::RequestBuilder {
    let authorization = if path.starts_with("/model/") {
        "AWS4-HMAC-SHA256 Credential=AKIDTEST/20240101/us-east-1/bedrock/aws4_request"
    } else {
        "Bearer sk-test"
    };
    reqwest::Client::new()
        .post(format!("{}{path}", mock.root_url()))
        .header("authorization", authorization)
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .timeout(Duration::from_secs(10))
        .json(body)
}

fn openai_tools(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "weather and time?"}],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {}}},
        ],
        "tool_choice": "required",
    })
}

#[tokio::test]
async fn openai_parallel_tools_and_cached_tokens() {
    let mock = MockUpstream::start().await;
    let body: Value = request(&mock, "/v1/chat/completions", &openai_tools("m::parallel_tools"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let calls: Vec<(&str, &str)> = body["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c["function"]["name"].as_str().unwrap()))
        .collect();
    assert_eq!(calls, [("call_mock_0", "get_weather"), ("call_mock_1", "get_time")]);

    let mut streamed = openai_tools("m::parallel_tools");
    streamed["stream"] = json!(true);
    let text = request(&mock, "/v1/chat/completions", &streamed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut arguments = [String::new(), String::new()];
    for data in text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        for call in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = call["index"].as_u64().unwrap() as usize;
            arguments[index].push_str(call["function"]["arguments"].as_str().unwrap());
        }
    }
    assert_eq!(arguments, [r#"{"q":"mock"}"#, r#"{"q":"mock"}"#]);

    let cached = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "shared prefix", "cache_control": {"type": "ephemeral"}},
    ]}]});
    let body: Value = request(&mock, "/v1/chat/completions", &cached)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["usage"]["prompt_tokens_details"]["cached_tokens"],
        MOCK_CACHE_READ_TOKENS
    );
}

#[tokio::test]
async fn timing_directives_apply_to_every_protocol() {
    let mock = MockUpstream::start().await;
    let anthropic = json!({"model": "claude::first_byte_ms=150", "max_tokens": 5, "messages": [
        {"role": "user", "content": "x"},
    ]});
    let bedrock = json!({"messages": [{"role": "user", "content": [{"text": "x"}]}]});
    for (path, body) in [
        ("/v1/messages", anthropic),
        ("/model/m%3A%3Afirst_byte_ms%3D150/converse", bedrock.clone()),
    ] {
        let started = Instant::now();
        let response = request(&mock, path, &body).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(started.elapsed() >= Duration::from_millis(150), "{path}");
    }

    let hung = request(&mock, "/model/m%3A%3Ahang/converse-stream", &bedrock)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());

    let response = request(&mock, "/model/m%3A%3Abogus/converse", &bedrock)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["x-amzn-errortype"], "ValidationException");
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("bogus"));
}
