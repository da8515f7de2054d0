#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]
//! Claude on Bedrock in Anthropic's native format (InvokeModel and
//! InvokeModelWithResponseStream), driven by the real AWS SDK.

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::{Credentials, Region};
use aws_sdk_bedrockruntime::error::ProvideErrorMetadata;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::ResponseStream;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use serde_json::{Value, json};
use switchyard_testkit::{MOCK_CACHE_READ_TOKENS, MOCK_CACHE_WRITE_TOKENS, MockUpstream};

const CLAUDE: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";

/// An SDK client pointed at the mock: static credentials, retries off, rustls (ring).
fn client(mock: &MockUpstream) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .endpoint_url(mock.root_url())
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .retry_config(RetryConfig::disabled())
        .http_client(http)
        .build();
    Client::from_conf(config)
}

/// A Bedrock Claude body: an Anthropic Messages request without `model`.
fn claude_body(text: &str) -> Value {
    json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": text}],
    })
}

fn tool_body() -> Value {
    let mut body = claude_body("weather?");
    body["tools"] = json!([
        {"name": "get_weather", "description": "a tool", "input_schema": {"type": "object"}},
        {"name": "get_time", "description": "a tool", "input_schema": {"type": "object"}},
    ]);
    body["tool_choice"] = json!({"type": "any"});
    body
}

async fn invoke(client: &Client, model: &str, body: &Value) -> Value {
    let output = client
        .invoke_model()
        .model_id(model)
        .content_type("application/json")
        .accept("application/json")
        .body(Blob::new(body.to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(output.content_type(), "application/json");
    serde_json::from_slice(output.body().as_ref()).unwrap()
}

#[tokio::test]
async fn invoke_model_answers_like_the_anthropic_mock() {
    let mock = MockUpstream::start().await;
    let client = client(&mock);
    let body = invoke(&client, CLAUDE, &claude_body("hello there")).await;
    assert_eq!(body["type"], "message");
    assert_eq!(body["model"], CLAUDE);
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "mock reply: hello there"}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(
        body["usage"],
        json!({
            "input_tokens": 4,
            "output_tokens": 4,
            "cache_read_input_tokens": MOCK_CACHE_READ_TOKENS,
            "cache_creation_input_tokens": MOCK_CACHE_WRITE_TOKENS,
            "cache_creation": {"ephemeral_5m_input_tokens": MOCK_CACHE_WRITE_TOKENS, "ephemeral_1h_input_tokens": 0},
        })
    );
    let request = mock.last_request().unwrap();
    assert_eq!(
        request.path,
        "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke"
    );
    assert!(request.header("authorization").unwrap().starts_with("AWS4-HMAC-SHA256"));

    // The same request sent to /v1/messages gets the same answer, id and model aside.
    let mut messages_request = tool_body();
    let bedrock = invoke(&client, &format!("{CLAUDE}::parallel_tools"), &messages_request).await;
    messages_request["model"] = json!(CLAUDE);
    messages_request.as_object_mut().unwrap().remove("anthropic_version");
    let anthropic: Value = reqwest::Client::new()
        .post(format!("{}/v1/messages", mock.root_url()))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .header("x-mock-scenario", "parallel_tools")
        .json(&messages_request)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let without_id = |mut v: Value| {
        v.as_object_mut().unwrap().remove("id");
        v
    };
    assert_eq!(without_id(bedrock.clone()), without_id(anthropic));
    assert_eq!(bedrock["stop_reason"], "tool_use");
    let content = bedrock["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    assert_eq!(content[1]["type"], "tool_use");
    assert_eq!(content[1]["name"], "get_weather");
    assert_eq!(content[2]["name"], "get_time");
}

#[tokio::test]
async fn invoke_model_validates_the_body() {
    let mock = MockUpstream::start().await;
    let client = client(&mock);
    let cases = [
        ("model", json!(CLAUDE), "extraneous key [model] is not permitted"),
        ("stream", json!(true), "extraneous key [stream] is not permitted"),
        ("anthropic_version", json!("2023-06-01"), "anthropic_version"),
        ("max_tokens", json!(0), "max_tokens"),
        ("messages", json!([]), "messages"),
    ];
    for (key, value, message) in cases {
        let mut body = claude_body("hi");
        body[key] = value;
        let error = client
            .invoke_model()
            .model_id(CLAUDE)
            .body(Blob::new(body.to_string()))
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert!(error.is_validation_exception(), "{error:?}");
        assert!(error.message().unwrap().contains(message), "{error:?}");
    }
    let error = client
        .invoke_model()
        .model_id(format!("{CLAUDE}::status=429"))
        .body(Blob::new(claude_body("hi").to_string()))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_throttling_exception(), "{error:?}");
}

/// Streams a request; returns the decoded events and the error that ended the stream, if any.
async fn stream(client: &Client, model: &str, body: &Value) -> (Vec<Value>, Option<String>) {
    let output = client
        .invoke_model_with_response_stream()
        .model_id(model)
        .content_type("application/json")
        .accept("application/json")
        .body(Blob::new(body.to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(output.content_type(), "application/json");
    let mut receiver = output.body;
    let mut events = Vec::new();
    loop {
        match receiver.recv().await {
            Ok(Some(ResponseStream::Chunk(part))) => {
                let bytes = part.bytes().unwrap().as_ref();
                match serde_json::from_slice(bytes) {
                    Ok(event) => events.push(event),
                    Err(_) => events.push(Value::String(String::from_utf8_lossy(bytes).into_owned())),
                }
            }
            Ok(Some(other)) => panic!("unexpected event {other:?}"),
            Ok(None) => return (events, None),
            Err(error) => return (events, Some(format!("{error:?}"))),
        }
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap_or("?")).collect()
}

#[tokio::test]
async fn stream_reassembles_to_the_invoke_answer() {
    let mock = MockUpstream::start().await;
    let client = client(&mock);
    let full = invoke(&client, CLAUDE, &claude_body("tell me a story")).await;
    let (events, error) = stream(&client, CLAUDE, &claude_body("tell me a story")).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        types(&events),
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
    assert_eq!(events[0]["message"]["model"], CLAUDE);
    assert_eq!(
        events[0]["message"]["usage"]["cache_read_input_tokens"],
        MOCK_CACHE_READ_TOKENS
    );
    let text: String = events
        .iter()
        .filter_map(|e| e.pointer("/delta/text").and_then(Value::as_str))
        .collect();
    assert_eq!(json!(text), full["content"][0]["text"]);
    assert_eq!(events[10]["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[10]["usage"]["output_tokens"], full["usage"]["output_tokens"]);
    assert_eq!(
        events[11]["amazon-bedrock-invocationMetrics"],
        json!({
            "inputTokenCount": full["usage"]["input_tokens"],
            "outputTokenCount": full["usage"]["output_tokens"],
            "invocationLatency": 1,
            "firstByteLatency": 1,
        })
    );
    assert_eq!(
        mock.last_request().unwrap().path,
        "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke-with-response-stream"
    );
    assert_eq!(mock.stream_stats().completed, 1);
}

#[tokio::test]
async fn stream_tool_use_matches_invoke() {
    let mock = MockUpstream::start().await;
    let client = client(&mock);
    let full = invoke(&client, CLAUDE, &tool_body()).await;
    let (events, error) = stream(&client, CLAUDE, &tool_body()).await;
    assert!(error.is_none(), "{error:?}");
    let start = events
        .iter()
        .find(|e| e.pointer("/content_block/type") == Some(&json!("tool_use")))
        .unwrap();
    assert_eq!(start["content_block"]["id"], full["content"][1]["id"]);
    assert_eq!(start["content_block"]["name"], "get_weather");
    let input: String = events
        .iter()
        .filter_map(|e| e.pointer("/delta/partial_json").and_then(Value::as_str))
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&input).unwrap(),
        full["content"][1]["input"]
    );
    let delta = events.iter().find(|e| e["type"] == "message_delta").unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(types(&events).last(), Some(&"message_stop"));
}

#[tokio::test]
async fn stream_faults() {
    let mock = MockUpstream::start().await;
    let client = client(&mock);
    let body = claude_body("one two three");

    let (events, error) = stream(&client, &format!("{CLAUDE}::no_stop"), &body).await;
    assert!(error.is_none());
    assert_eq!(types(&events).last(), Some(&"message_delta"));

    let (events, error) = stream(&client, &format!("{CLAUDE}::error_event"), &body).await;
    assert_eq!(
        types(&events),
        ["message_start", "ping", "content_block_start", "content_block_delta"]
    );
    assert!(error.unwrap().contains("InternalServerException"));

    let (events, error) = stream(&client, &format!("{CLAUDE}::malformed_sse"), &body).await;
    assert!(error.is_none());
    assert_eq!(events[1], json!("{not json"));

    let (events, error) = stream(&client, &format!("{CLAUDE}::reset_after=1"), &body).await;
    assert_eq!(types(&events).last(), Some(&"content_block_delta"));
    assert!(error.is_some());
    assert_eq!(mock.stream_stats().aborted, 1);

    let (events, _) = stream(&client, &format!("{CLAUDE}::chunks=2"), &body).await;
    assert_eq!(
        types(&events).iter().filter(|t| **t == "content_block_delta").count(),
        2
    );

    let error = client
        .invoke_model_with_response_stream()
        .model_id(format!("{CLAUDE}::status=503"))
        .body(Blob::new(body.to_string()))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_service_unavailable_exception(), "{error:?}");

    let mut with_stream = body.clone();
    with_stream["stream"] = json!(true);
    let error = client
        .invoke_model_with_response_stream()
        .model_id(CLAUDE)
        .body(Blob::new(with_stream.to_string()))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_validation_exception(), "{error:?}");
    assert_eq!(error.message(), Some("extraneous key [stream] is not permitted"));
}
