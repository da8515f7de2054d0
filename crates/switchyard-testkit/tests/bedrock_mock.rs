#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]
//! The mock upstream's Bedrock Runtime API, driven by the real AWS SDK.

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::{Credentials, Region};
use aws_sdk_bedrockruntime::operation::converse::ConverseOutput;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    AnyToolChoice, CachePointBlock, CachePointType, ContentBlock, ContentBlockDelta, ContentBlockStart,
    ConversationRole, ConverseStreamOutput, DocumentBlock, DocumentFormat, DocumentSource, InferenceConfiguration,
    Message, StopReason, SystemContentBlock, Tool, ToolChoice, ToolConfiguration, ToolInputSchema, ToolSpecification,
};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_types::{Document, Number};
use serde_json::{Value, json};
use switchyard_testkit::{MOCK_CACHE_READ_TOKENS, MOCK_CACHE_WRITE_TOKENS, MockUpstream, mock_embedding};

/// An SDK client pointed at the mock, as the gateway's provider builds one:
/// static credentials, retries off, and an explicit rustls (ring) HTTP client,
/// which also speaks plain `http://`.
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

fn user(text: &str) -> Message {
    Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text(text.to_owned()))
        .build()
        .unwrap()
}

fn tools(choice: ToolChoice) -> ToolConfiguration {
    let schema = Document::Object([("type".to_owned(), Document::String("object".to_owned()))].into());
    let spec = |name: &str| {
        Tool::ToolSpec(
            ToolSpecification::builder()
                .name(name)
                .description("a tool")
                .input_schema(ToolInputSchema::Json(schema.clone()))
                .build()
                .unwrap(),
        )
    };
    ToolConfiguration::builder()
        .tools(spec("get_weather"))
        .tools(spec("get_time"))
        .tool_choice(choice)
        .build()
        .unwrap()
}

fn any_tool() -> ToolConfiguration {
    tools(ToolChoice::Any(AnyToolChoice::builder().build()))
}

/// Converts an SDK document to JSON for comparisons.
fn to_json(document: &Document) -> Value {
    match document {
        Document::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        Document::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Document::Number(Number::PosInt(n)) => json!(n),
        Document::Number(Number::NegInt(n)) => json!(n),
        Document::Number(Number::Float(f)) => json!(f),
        Document::String(s) => json!(s),
        Document::Bool(b) => json!(b),
        Document::Null => Value::Null,
    }
}

fn content(output: &ConverseOutput) -> &[ContentBlock] {
    output.output().unwrap().as_message().unwrap().content()
}

#[tokio::test]
async fn converse_text_usage_and_cache_points() {
    let mock = MockUpstream::start().await;
    let client = client(&mock);
    let output = client
        .converse()
        .model_id("anthropic.claude-3-haiku-20240307-v1:0")
        .system(SystemContentBlock::Text("be brief".into()))
        .messages(user("hello there"))
        .send()
        .await
        .unwrap();
    assert_eq!(content(&output), [ContentBlock::Text("mock reply: hello there".into())]);
    assert_eq!(output.stop_reason(), &StopReason::EndTurn);
    let usage = output.usage().unwrap();
    assert_eq!(
        (usage.input_tokens(), usage.output_tokens(), usage.total_tokens()),
        (4, 4, 8)
    );
    assert_eq!(usage.cache_read_input_tokens(), Some(0));

    let request = mock.last_request().unwrap();
    assert_eq!(request.path, "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse");
    assert!(request.header("authorization").unwrap().starts_with("AWS4-HMAC-SHA256"));
    assert_eq!(request.body["system"], json!([{"text": "be brief"}]));

    let cache_point = CachePointBlock::builder()
        .r#type(CachePointType::Default)
        .build()
        .unwrap();
    let output = client
        .converse()
        .model_id("amazon.nova-pro-v1:0")
        .system(SystemContentBlock::Text("be brief".into()))
        .system(SystemContentBlock::CachePoint(cache_point))
        .messages(user("hi"))
        .inference_config(InferenceConfiguration::builder().max_tokens(2).build())
        .send()
        .await
        .unwrap();
    assert_eq!(content(&output), [ContentBlock::Text("mock reply:".into())]);
    assert_eq!(output.stop_reason(), &StopReason::MaxTokens);
    let usage = output.usage().unwrap();
    assert_eq!(usage.cache_read_input_tokens(), Some(MOCK_CACHE_READ_TOKENS as i32));
    assert_eq!(usage.cache_write_input_tokens(), Some(MOCK_CACHE_WRITE_TOKENS as i32));
}

#[tokio::test]
async fn converse_tool_use_and_stream_agree() {
    let mock = MockUpstream::start().await;
    let client = client(&mock);
    let output = client
        .converse()
        .model_id("m")
        .messages(user("weather?"))
        .tool_config(any_tool())
        .send()
        .await
        .unwrap();
    assert_eq!(output.stop_reason(), &StopReason::ToolUse);
    let blocks = content(&output);
    assert_eq!(blocks[0], ContentBlock::Text("Let me check.".into()));
    let call = blocks[1].as_tool_use().unwrap();
    assert_eq!((call.tool_use_id(), call.name()), ("tooluse_mock_0", "get_weather"));
    assert_eq!(to_json(call.input()), json!({"q": "mock", "n": 1}));

    let mut stream = client
        .converse_stream()
        .model_id("m")
        .messages(user("weather?"))
        .tool_config(any_tool())
        .send()
        .await
        .unwrap()
        .stream;
    let (mut started, mut input, mut stop) = (None, String::new(), None);
    while let Some(event) = stream.recv().await.unwrap() {
        match event {
            ConverseStreamOutput::ContentBlockStart(start) => {
                assert_eq!(start.content_block_index(), 1);
                if let Some(ContentBlockStart::ToolUse(tool)) = start.start() {
                    started = Some((tool.tool_use_id().to_owned(), tool.name().to_owned()));
                }
            }
            ConverseStreamOutput::ContentBlockDelta(delta) => {
                if let Some(ContentBlockDelta::ToolUse(piece)) = delta.delta() {
                    input.push_str(piece.input());
                }
            }
            ConverseStreamOutput::MessageStop(event) => stop = Some(event.stop_reason().clone()),
            _ => {}
        }
    }
    assert_eq!(started, Some(("tooluse_mock_0".to_owned(), "get_weather".to_owned())));
    assert_eq!(serde_json::from_str::<Value>(&input).unwrap(), to_json(call.input()));
    assert_eq!(stop, Some(StopReason::ToolUse));
}

#[tokio::test]
async fn converse_stream_text_matches_converse() {
    let mock = MockUpstream::start().await;
    let client = client(&mock);
    let full = client
        .converse()
        .model_id("m")
        .messages(user("tell me a story"))
        .send()
        .await
        .unwrap();
    let response = client
        .converse_stream()
        .model_id("meta.llama3:0")
        .messages(user("tell me a story"))
        .send()
        .await
        .unwrap();
    let mut stream = response.stream;
    let mut kinds = Vec::new();
    let mut text = String::new();
    let mut usage = None;
    while let Some(event) = stream.recv().await.unwrap() {
        match &event {
            ConverseStreamOutput::MessageStart(start) => assert_eq!(start.role(), &ConversationRole::Assistant),
            ConverseStreamOutput::ContentBlockDelta(delta) => {
                assert_eq!(delta.content_block_index(), 0);
                text.push_str(delta.delta().unwrap().as_text().unwrap());
            }
            ConverseStreamOutput::MessageStop(stop) => assert_eq!(stop.stop_reason(), &StopReason::EndTurn),
            ConverseStreamOutput::Metadata(metadata) => usage = metadata.usage().cloned(),
            _ => {}
        }
        kinds.push(format!("{event:?}").split('(').next().unwrap().to_owned());
    }
    assert_eq!(
        kinds,
        [
            "MessageStart",
            "ContentBlockDelta",
            "ContentBlockDelta",
            "ContentBlockDelta",
            "ContentBlockDelta",
            "ContentBlockDelta",
            "ContentBlockDelta",
            "ContentBlockStop",
            "MessageStop",
            "Metadata",
        ]
    );
    assert_eq!(ContentBlock::Text(text), content(&full)[0]);
    assert_eq!(usage.as_ref(), full.usage());
    assert_eq!(mock.stream_stats().completed, 1);
}

#[tokio::test]
async fn errors_become_typed_exceptions() {
    let mock = MockUpstream::start().await;
    let client = client(&mock);
    let error = client
        .converse()
        .model_id("m::status=429,retry_after=1")
        .messages(user("hi"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_throttling_exception(), "{error:?}");

    let error = client
        .converse_stream()
        .model_id("m::status=503")
        .messages(user("hi"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_service_unavailable_exception(), "{error:?}");

    let error = client
        .converse()
        .model_id("m")
        .messages(user("hi"))
        .inference_config(InferenceConfiguration::builder().max_tokens(0).build())
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_validation_exception(), "{error:?}");

    let unsigned = reqwest::Client::new()
        .post(format!("{}/model/m/converse", mock.root_url()))
        .json(&json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 403);
    assert_eq!(
        unsigned.headers()["x-amzn-errortype"],
        "MissingAuthenticationTokenException"
    );
    assert_eq!(
        unsigned.json::<Value>().await.unwrap(),
        json!({"message": "Missing Authentication Token"})
    );
}

/// A PDF document block named `name`.
fn pdf(name: &str) -> ContentBlock {
    ContentBlock::Document(
        DocumentBlock::builder()
            .format(DocumentFormat::Pdf)
            .name(name)
            .source(DocumentSource::Bytes(Blob::new(b"%PDF-1.4\n".to_vec())))
            .build()
            .unwrap(),
    )
}

/// Converse's rules for documents: text beside them, names of their own
/// made of the characters it allows.
#[tokio::test]
async fn documents_follow_converse_rules() {
    let mock = MockUpstream::start().await;
    let client = client(&mock);
    let send = |blocks: Vec<ContentBlock>| {
        let message = Message::builder()
            .role(ConversationRole::User)
            .set_content(Some(blocks))
            .build()
            .unwrap();
        client.converse().model_id("m").messages(message).send()
    };
    let text = || ContentBlock::Text("read".into());
    send(vec![pdf("document 0-1"), pdf("document 0-2"), text()])
        .await
        .unwrap();
    let assistant = Message::builder()
        .role(ConversationRole::Assistant)
        .set_content(Some(vec![pdf("a"), text()]))
        .build()
        .unwrap();
    let error = client
        .converse()
        .model_id("m")
        .messages(user("hi"))
        .messages(assistant)
        .messages(user("and?"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(format!("{error:?}").contains("if the role is user"), "{error:?}");
    for (blocks, refusal) in [
        (vec![pdf("document 0-1")], "A text block must be included"),
        (vec![pdf("a"), pdf("a"), text()], "duplicate document names"),
        (vec![pdf("report.pdf"), text()], "not allowed"),
        (vec![pdf("two  spaces"), text()], "not allowed"),
        (
            (0..6).map(|i| pdf(&format!("d{i}"))).chain([text()]).collect(),
            "more than 5 documents",
        ),
    ] {
        let error = send(blocks).await.unwrap_err().into_service_error();
        assert!(error.is_validation_exception(), "{error:?}");
        assert!(format!("{error:?}").contains(refusal), "{refusal}: {error:?}");
    }
}

/// Receives events until the stream ends or fails; returns the events and the failure.
async fn drain(client: &Client, model: &str) -> (Vec<ConverseStreamOutput>, Option<String>) {
    let mut stream = client
        .converse_stream()
        .model_id(model)
        .messages(user("one two three"))
        .send()
        .await
        .unwrap()
        .stream;
    let mut events = Vec::new();
    loop {
        match stream.recv().await {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return (events, None),
            Err(error) => return (events, Some(format!("{error:?}"))),
        }
    }
}

#[tokio::test]
async fn stream_faults() {
    let mock = MockUpstream::start().await;
    let client = client(&mock);

    let (events, error) = drain(&client, "m::error_event").await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(error.unwrap().contains("InternalServerException"));

    let (events, error) = drain(&client, "m::no_stop").await;
    assert!(error.is_none());
    assert!(matches!(events.last(), Some(ConverseStreamOutput::ContentBlockStop(_))));

    let (events, error) = drain(&client, "m::reset_after=2").await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(error.is_some());
    assert_eq!(mock.stream_stats().aborted, 1);

    let (events, error) = drain(&client, "m::malformed_sse").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(error.is_some());

    let (events, error) = drain(&client, "m::chunks=2").await;
    assert!(error.is_none());
    let deltas = events
        .iter()
        .filter(|e| matches!(e, ConverseStreamOutput::ContentBlockDelta(_)))
        .count();
    assert_eq!(deltas, 2);
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test]
async fn invoke_model_embeddings() {
    let mock = MockUpstream::start().await;
    let client = client(&mock);
    let output = client
        .invoke_model()
        .model_id("amazon.titan-embed-text-v2:0")
        .content_type("application/json")
        .body(Blob::new(
            json!({"inputText": "hello world", "dimensions": 8}).to_string(),
        ))
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(output.body().as_ref()).unwrap();
    assert_eq!(body["inputTextTokenCount"], 2);
    assert_eq!(floats(&body["embedding"]), mock_embedding(&json!("hello world"), 8));

    let output = client
        .invoke_model()
        .model_id("cohere.embed-english-v3")
        .content_type("application/json")
        .body(Blob::new(
            json!({"texts": ["a", "b c"], "input_type": "search_document"}).to_string(),
        ))
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(output.body().as_ref()).unwrap();
    assert_eq!(body["response_type"], "embeddings_floats");
    assert_eq!(body["texts"], json!(["a", "b c"]));
    assert_eq!(body["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(floats(&body["embeddings"][1]), mock_embedding(&json!("b c"), 16));

    let error = client
        .invoke_model()
        .model_id("amazon.titan-embed-text-v2:0::status=500")
        .body(Blob::new(json!({"inputText": "x"}).to_string()))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_internal_server_exception(), "{error:?}");
}
