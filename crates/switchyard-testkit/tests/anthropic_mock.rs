#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]
//! The mock upstream's Anthropic Messages API over real HTTP.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_testkit::{MOCK_CACHE_READ_TOKENS, MOCK_CACHE_WRITE_TOKENS, MockUpstream};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn post(mock: &MockUpstream, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", mock.base_url()))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn message(mock: &MockUpstream, body: &Value) -> Value {
    let response = post(mock, "/messages", body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Splits an SSE body into `(event, data)` pairs, parsing the data as JSON.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            let (name, data) = event.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data = data.strip_prefix("data: ").unwrap();
            let value: Value = serde_json::from_str(data).unwrap_or_else(|_| panic!("bad data: {data}"));
            assert_eq!(value["type"], name.as_str());
            (name, value)
        })
        .collect()
}

async fn stream(mock: &MockUpstream, body: &Value) -> Vec<(String, Value)> {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let response = post(mock, "/messages", &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    sse_events(&response.text().await.unwrap())
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}

fn weather_tools() -> Value {
    json!([
        {"name": "get_weather", "description": "w", "input_schema": {"type": "object"}},
        {"name": "get_time", "description": "t", "input_schema": {"type": "object"}},
    ])
}

#[tokio::test]
async fn non_streaming_shape_usage_and_cache() {
    let mock = MockUpstream::start().await;
    let request = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": "be brief",
        "messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
        ],
    });
    let body = message(&mock, &request).await;
    assert!(body["id"].as_str().unwrap().starts_with("msg_mock_"));
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "mock reply: hello there"}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 7, "output_tokens": 4, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}})
    );

    let mut cached = request.clone();
    cached["system"] = json!([{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]);
    let body = message(&mock, &cached).await;
    assert_eq!(body["usage"]["cache_read_input_tokens"], MOCK_CACHE_READ_TOKENS);
    assert_eq!(body["usage"]["cache_creation_input_tokens"], MOCK_CACHE_WRITE_TOKENS);
    assert_eq!(
        body["usage"]["cache_creation"]["ephemeral_5m_input_tokens"],
        MOCK_CACHE_WRITE_TOKENS
    );
    let mut hour = cached.clone();
    hour["system"][0]["cache_control"]["ttl"] = json!("1h");
    let body = message(&mock, &hour).await;
    assert_eq!(body["usage"]["cache_creation"]["ephemeral_5m_input_tokens"], 0);
    assert_eq!(
        body["usage"]["cache_creation"]["ephemeral_1h_input_tokens"],
        MOCK_CACHE_WRITE_TOKENS
    );

    let request = mock.last_request().unwrap();
    assert_eq!(request.path, "/v1/messages");
    assert_eq!(request.header("x-api-key"), Some("sk-ant-test"));

    let tokens = post(&mock, "/messages/count_tokens", &cached).await;
    assert_eq!(tokens.status(), 200);
    assert_eq!(tokens.json::<Value>().await.unwrap(), json!({"input_tokens": 7}));
}

#[tokio::test]
async fn auth_and_validation_errors() {
    let mock = MockUpstream::start().await;
    let valid = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let url = format!("{}/v1/messages", mock.root_url());
    let response = client()
        .post(&url)
        .header("anthropic-version", "2023-06-01")
        .json(&valid)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");

    let response = client()
        .post(&url)
        .header("x-api-key", "k")
        .json(&valid)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("anthropic-version"));

    for (field, body) in [
        (
            "max_tokens",
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("messages", json!({"model": "m", "max_tokens": 5, "messages": []})),
        (
            "messages.0.role",
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}),
        ),
        (
            "model",
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ] {
        let response = post(&mock, "/messages", &body).await;
        assert_eq!(response.status(), 400, "{field}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["message"].as_str().unwrap().contains(field), "{body}");
    }
}

#[tokio::test]
async fn injected_errors_take_anthropic_shape() {
    let mock = MockUpstream::start().await;
    let request = json!({
        "model": "claude::status=429,retry_after=3",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    });
    let response = post(&mock, "/messages", &request).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(body["error"]["message"].is_string());

    for (code, kind) in [
        (529, "overloaded_error"),
        (503, "api_error"),
        (400, "invalid_request_error"),
    ] {
        let response = client()
            .post(format!("{}/v1/messages", mock.root_url()))
            .header("x-api-key", "k")
            .header("anthropic-version", "2023-06-01")
            .header("x-mock-scenario", format!("status={code}"))
            .json(&json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), code);
        assert_eq!(response.json::<Value>().await.unwrap()["error"]["type"], kind);
    }
}

#[tokio::test]
async fn streaming_reassembles_the_non_streaming_reply() {
    let mock = MockUpstream::start().await;
    let request = json!({
        "model": "claude-haiku",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "tell me a story"}],
    });
    let full = message(&mock, &request).await;
    let events = stream(&mock, &request).await;
    assert_eq!(
        names(&events),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_mock_"));
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["usage"]["input_tokens"], full["usage"]["input_tokens"]);
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(events[2].1["content_block"], json!({"type": "text", "text": ""}));
    let text: String = events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .map(|(_, data)| {
            assert_eq!(data["index"], 0);
            assert_eq!(data["delta"]["type"], "text_delta");
            data["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, full["content"][0]["text"].as_str().unwrap());
    let delta = &events[10].1;
    assert_eq!(
        delta["delta"],
        json!({"stop_reason": "end_turn", "stop_sequence": null})
    );
    assert_eq!(delta["usage"]["output_tokens"], full["usage"]["output_tokens"]);
    assert_eq!(mock.stream_stats().completed, 1);
}

#[tokio::test]
async fn tool_use_json_and_stream_agree() {
    let mock = MockUpstream::start().await;
    let request = json!({
        "model": "claude",
        "max_tokens": 50,
        "tools": weather_tools(),
        "tool_choice": {"type": "tool", "name": "get_time"},
        "messages": [{"role": "user", "content": "weather?"}],
    });
    let full = message(&mock, &request).await;
    assert_eq!(full["stop_reason"], "tool_use");
    assert_eq!(full["content"][0], json!({"type": "text", "text": "Let me check."}));
    assert_eq!(
        full["content"][1],
        json!({"type": "tool_use", "id": "toolu_mock_0", "name": "get_time", "input": {"q": "mock", "n": 1}})
    );

    let events = stream(&mock, &request).await;
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "content_block_start")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(starts[1]["index"], 1);
    assert_eq!(
        starts[1]["content_block"],
        json!({"type": "tool_use", "id": "toolu_mock_0", "name": "get_time", "input": {}})
    );
    let pieces: Vec<&str> = events
        .iter()
        .filter(|(_, data)| data["delta"]["type"] == "input_json_delta")
        .map(|(_, data)| data["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert!((2..=3).contains(&pieces.len()), "{pieces:?}");
    let input: Value = serde_json::from_str(&pieces.concat()).unwrap();
    assert_eq!(input, full["content"][1]["input"]);
    let last = &events[events.len() - 2].1;
    assert_eq!(last["delta"]["stop_reason"], "tool_use");

    let mut parallel = request.clone();
    parallel["model"] = json!("claude::parallel_tools");
    parallel["tool_choice"] = json!({"type": "any"});
    let full = message(&mock, &parallel).await;
    let calls: Vec<(&str, &str, &Value)> = full["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| (b["id"].as_str().unwrap(), b["name"].as_str().unwrap(), &b["input"]))
        .collect();
    assert_eq!(
        calls,
        [
            ("toolu_mock_0", "get_weather", &json!({"q": "mock", "n": 1})),
            ("toolu_mock_1", "get_time", &json!({"q": "mock", "n": 2})),
        ]
    );

    let mut auto = request.clone();
    auto["tool_choice"] = json!({"type": "auto"});
    assert_eq!(message(&mock, &auto).await["stop_reason"], "end_turn");
}

#[tokio::test]
async fn tool_results_limits_and_stop_sequences() {
    let mock = MockUpstream::start().await;
    let request = json!({
        "model": "claude",
        "max_tokens": 50,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny and warm"}]},
            ]},
        ],
    });
    let body = message(&mock, &request).await;
    assert_eq!(body["content"][0]["text"], "mock reply: tool said sunny and warm");

    let mut limited = request.clone();
    limited["max_tokens"] = json!(3);
    let body = message(&mock, &limited).await;
    assert_eq!(body["content"][0]["text"], "mock reply: tool");
    assert_eq!(body["stop_reason"], "max_tokens");
    assert_eq!(body["usage"]["output_tokens"], 3);

    let mut stopped = request.clone();
    stopped["stop_sequences"] = json!(["warm", "and"]);
    let body = message(&mock, &stopped).await;
    assert_eq!(body["content"][0]["text"], "mock reply: tool said sunny");
    assert_eq!(body["stop_reason"], "stop_sequence");
    assert_eq!(body["stop_sequence"], "and");
}

#[tokio::test]
async fn stream_faults() {
    let mock = MockUpstream::start().await;
    let request = |spec: &str| {
        json!({
            "model": format!("claude::{spec}"),
            "max_tokens": 50,
            "stream": true,
            "messages": [{"role": "user", "content": "one two three"}],
        })
    };

    let events = stream(&mock, &request("no_stop")).await;
    assert_eq!(names(&events).last(), Some(&"message_delta"));
    assert!(!names(&events).contains(&"message_stop"));

    let events = stream(&mock, &request("error_event")).await;
    assert_eq!(
        names(&events),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(events[4].1["error"]["type"], "overloaded_error");

    let events = stream(&mock, &request("chunks=2")).await;
    let deltas = names(&events).iter().filter(|n| **n == "content_block_delta").count();
    assert_eq!(deltas, 2);

    let response = post(&mock, "/messages", &request("malformed_sse")).await;
    let text = response.text().await.unwrap();
    assert!(text.starts_with("event: message_start\ndata: {"));
    assert!(text.contains("\n\nevent: content_block_delta\ndata: {not json}\n\nevent: ping\n"));

    let response = post(&mock, "/messages", &request("reset_after=1")).await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.is_err());
    assert_eq!(mock.stream_stats().aborted, 1);

    let response = post(&mock, "/messages", &request("status=529")).await;
    assert_eq!(response.status(), 529);
}
