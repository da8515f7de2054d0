//! Provider contract tests: the same cases, through the real `switchyard`
//! binary, against a mock of each provider's real wire protocol (OpenAI JSON and
//! SSE, Azure, Anthropic Messages and its event stream, Bedrock Converse and the
//! AWS event-stream framing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::Path;

use serde_json::{Value, json};
use switchyard_testkit::{GatewayProcess, MockUpstream};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// The YAML of one deployment of `provider` serving upstream model `model`.
fn deployment(provider: &str, mock: &MockUpstream, model: &str, extra: &str) -> String {
    let root = mock.root_url();
    let base = mock.base_url();
    let body = match provider {
        "openai" => {
            format!("provider: openai\n        model: \"{model}\"\n        api_base: {base}\n        api_key: k")
        }
        "azure" => format!(
            "provider: azure\n        model: \"{model}\"\n        api_base: {root}\n        api_version: 2024-10-21\n        api_key: k"
        ),
        "anthropic" => {
            format!("provider: anthropic\n        model: \"{model}\"\n        api_base: {root}\n        api_key: k")
        }
        "bedrock" => format!(
            "provider: bedrock\n        model: \"{model}\"\n        api_base: {root}\n        aws_region: us-east-1\n        aws_access_key_id: os.environ/TEST_AWS_ID\n        aws_secret_access_key: os.environ/TEST_AWS_SECRET"
        ),
        other => panic!("no such provider {other}"),
    };
    format!("      - {body}\n{extra}")
}

/// A gateway with the model groups the contract cases use, all on `provider`.
fn start(provider: &str, mock: &MockUpstream) -> GatewayProcess {
    let base_model = if provider == "bedrock" {
        // A Claude that takes cache points on Bedrock (3.5 Sonnet does not).
        "anthropic.claude-3-7-sonnet-20250219-v1:0"
    } else {
        "mock-model"
    };
    let groups = [
        ("contract", String::new(), String::new()),
        // Used by one check only, so no other request moves its metrics.
        ("metered", String::new(), String::new()),
        ("parallel", "::parallel_tools".to_owned(), String::new()),
        ("limited", "::status=429,retry_after=3".to_owned(), String::new()),
        ("failing", "::status=500".to_owned(), String::new()),
        (
            "slow",
            "::first_byte_ms=5000".to_owned(),
            "        timeouts:\n          first_byte_ms: 300\n          total_ms: 600\n".to_owned(),
        ),
        ("reset", "::reset_after=2".to_owned(), String::new()),
        ("malformed", "::malformed_sse".to_owned(), String::new()),
        ("pretty", "::multiline_sse".to_owned(), String::new()),
        ("truncated", "::no_stop".to_owned(), String::new()),
        ("unnamed", "::unnamed_events".to_owned(), String::new()),
        ("broken", "::malformed_json".to_owned(), String::new()),
        // 17 MiB in one event, past the 16 MiB a stream's event may hold.
        ("huge", "::huge_event_kib=17408".to_owned(), String::new()),
        (
            "hesitant",
            "::chunk_delay_ms=3000".to_owned(),
            "        timeouts:\n          first_byte_ms: 500\n".to_owned(),
        ),
        (
            "stalled",
            "::chunk_delay_ms=200".to_owned(),
            "        timeouts:\n          total_ms: 1500\n".to_owned(),
        ),
    ];
    // One attempt per request: these cases check how each provider's faults
    // are reported; retries and fallbacks are tested in `faults.rs`.
    let mut yaml = String::from("router_settings:\n  num_retries: 0\nmodel_list:\n");
    for (name, suffix, extra) in groups {
        yaml += &format!("  - model_name: {name}\n    deployments:\n");
        yaml += &deployment(provider, mock, &format!("{base_model}{suffix}"), &extra);
    }
    if provider == "bedrock" {
        yaml += "  - model_name: llama\n    deployments:\n";
        yaml += &deployment(provider, mock, "meta.llama3-1-70b-instruct-v1:0", "");
    }
    GatewayProcess::start_with(
        Path::new(BIN),
        &yaml,
        &[],
        &[
            ("TEST_AWS_ID", "AKIDTEST"),
            ("TEST_AWS_SECRET", "test-secret"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    )
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn chat(&self, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The answer to an Anthropic-format request on `/v1/messages`.
    async fn messages(&self, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/messages", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// The `data:` payloads of a streaming chat request.
    async fn stream(&self, mut body: Value) -> (u16, Vec<String>) {
        body["stream"] = json!(true);
        let response = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, sse_data(&response.text().await.unwrap()))
    }
}

/// The data of each event of an SSE body, its `data:` lines joined by `\n`.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .map(|event| {
            event
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|data| !data.is_empty())
        .collect()
}

/// Streams finished and output tokens counted for model group `model`.
async fn streams_and_output(c: &Client, model: &str) -> (f64, f64) {
    let label = format!("model=\"{model}\"");
    (
        metric_sum(c, "switchyard_stream_duration_seconds_count", &[&label]).await,
        metric_sum(c, "switchyard_tokens_total", &[&label, "direction=\"output\""]).await,
    )
}

/// The sum of the `/metrics` samples of metric `name` that carry every one
/// of `labels` (each `key="value"`).
async fn metric_sum(c: &Client, name: &str, labels: &[&str]) -> f64 {
    let text = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|line| line.starts_with(&prefix) && labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn user(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

const TOOLS: &str = r#"[{"type":"function","function":{"name":"get_weather","description":"weather","parameters":{"type":"object","properties":{"q":{"type":"string"}}}}},
{"type":"function","function":{"name":"get_time","parameters":{"type":"object"}}}]"#;

fn with_tools(mut body: Value) -> Value {
    body["tools"] = serde_json::from_str(TOOLS).unwrap();
    body["tool_choice"] = json!("required");
    body
}

/// What a stream reassembles to: text, tool calls (name, arguments) by index, finish reason, usage.
type Reassembled = (String, Vec<(String, String)>, Option<String>, Option<Value>);

/// Reassembles streamed content and tool-call arguments (by tool index).
fn reassemble(events: &[String]) -> Reassembled {
    let mut text = String::new();
    let mut tools: Vec<(String, String)> = Vec::new();
    let mut finish = None;
    let mut usage = None;
    for event in events.iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(event).unwrap();
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            usage = Some(u.clone());
        }
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
        for call in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap() as usize;
            if tools.len() <= index {
                tools.resize(index + 1, (String::new(), String::new()));
            }
            if let Some(name) = call["function"]["name"].as_str() {
                tools[index].0.push_str(name);
            }
            tools[index]
                .1
                .push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    (text, tools, finish, usage)
}

async fn run_contract(provider: &str) {
    let mock = MockUpstream::start().await;
    let gateway = start(provider, &mock);
    let c = Client {
        http: reqwest::Client::new(),
        base: gateway.base_url(),
    };

    // Plain chat.
    let (status, body) = c.chat(user("contract", "hello there")).await;
    assert_eq!(status, 200, "{provider}: {body}");
    assert_eq!(
        body["choices"][0]["message"]["content"], "mock reply: hello there",
        "{provider}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{provider}");
    assert!(
        body["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{provider}: {body}"
    );

    // The upstream's own request id comes back, from the header each
    // provider names it in (Bedrock's is a UUID).
    for stream in [false, true] {
        let mut body = user("contract", "hello there");
        body["stream"] = json!(stream);
        let response = c
            .http
            .post(format!("{}/v1/chat/completions", c.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{provider}");
        let id = response
            .headers()
            .get("x-switchyard-upstream-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let expected = if provider == "bedrock" {
            id.ends_with("-0000-4000-8000-000000000000")
        } else {
            id.starts_with("req_mock")
        };
        assert!(expected, "{provider} stream={stream}: {id:?}");
        response.bytes().await.unwrap();
    }

    // Multi-turn with a system prompt: the last user turn is answered, the system text reaches the upstream.
    let (status, body) = c
        .chat(json!({"model": "contract", "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "second question"}
        ]}))
        .await;
    assert_eq!(status, 200, "{provider}: {body}");
    assert_eq!(
        body["choices"][0]["message"]["content"], "mock reply: second question",
        "{provider}"
    );
    let seen = mock.last_request().unwrap().body.to_string();
    assert!(
        seen.contains("You are terse."),
        "{provider}: system prompt missing upstream: {seen}"
    );
    assert!(
        seen.contains("first answer"),
        "{provider}: history missing upstream: {seen}"
    );

    // Image input (base64 data URL).
    let (status, body) = c
        .chat(json!({"model": "contract", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
        ]}]}))
        .await;
    assert_eq!(status, 200, "{provider}: {body}");
    assert!(
        mock.last_request().unwrap().body.to_string().contains("iVBORw0KGgo="),
        "{provider}: image missing upstream"
    );

    // Tool call round trip.
    let (status, body) = c.chat(with_tools(user("contract", "weather?"))).await;
    assert_eq!(status, 200, "{provider}: {body}");
    let message = &body["choices"][0]["message"];
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls", "{provider}: {body}");
    let call = &message["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather", "{provider}");
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments["q"], "mock", "{provider}");
    let (status, body) = c
        .chat(
            json!({"model": "contract", "tools": serde_json::from_str::<Value>(TOOLS).unwrap(), "messages": [
                {"role": "user", "content": "weather?"},
                message,
                {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{provider}: {body}");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("mock reply"),
        "{provider}: {body}"
    );
    assert!(
        mock.last_request().unwrap().body.to_string().contains("sunny"),
        "{provider}: tool result missing upstream"
    );

    // Parallel tool calls.
    let (status, body) = c.chat(with_tools(user("parallel", "weather and time?"))).await;
    assert_eq!(status, 200, "{provider}: {body}");
    let calls = body["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{provider}: {body}");
    assert_ne!(calls[0]["id"], calls[1]["id"], "{provider}");

    // Streaming text reassembles to the non-streaming answer; so do events
    // whose JSON spans several `data:` lines ("pretty"; the Bedrock mock
    // frames its events instead).
    let groups: &[&str] = if provider == "bedrock" {
        &["contract"]
    } else {
        &["contract", "pretty"]
    };
    for group in groups {
        let (status, events) = c.stream(user(group, "stream me please")).await;
        assert_eq!(status, 200, "{provider}/{group}");
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{provider}/{group}: {events:?}"
        );
        let (text, _, finish, _) = reassemble(&events);
        assert_eq!(text, "mock reply: stream me please", "{provider}/{group}");
        assert_eq!(finish.as_deref(), Some("stop"), "{provider}/{group}");
    }
    if provider == "anthropic" {
        // Passed through on /v1/messages: each line keeps its `data:`.
        let response = c
            .messages(json!({"model": "pretty", "max_tokens": 64, "stream": true,
                "messages": [{"role": "user", "content": "stream me please"}]}))
            .await;
        assert_eq!(response.status(), 200);
        let body = response.text().await.unwrap();
        let mut text = String::new();
        for data in sse_data(&body) {
            let event: Value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data:?}"));
            text.push_str(event["delta"]["text"].as_str().unwrap_or_default());
        }
        assert_eq!(text, "mock reply: stream me please", "{body}");
    }
    if provider == "anthropic" || provider == "bedrock" {
        // A Claude stream passed through on /v1/messages ends at
        // `message_stop`: it is recorded as a completed stream and charged
        // the output tokens the upstream reported, not one per event.
        let (before, output_before) = streams_and_output(&c, "metered").await;
        let response = c
            .messages(json!({"model": "metered", "max_tokens": 64, "stream": true,
                "messages": [{"role": "user", "content": "stream me please"}]}))
            .await;
        assert_eq!(response.status(), 200, "{provider}");
        let body = response.text().await.unwrap();
        assert!(body.contains("event: message_stop"), "{provider}: {body}");
        let reported = sse_data(&body)
            .iter()
            .filter_map(|data| serde_json::from_str::<Value>(data).ok())
            .filter(|event| event["type"] == "message_delta")
            .find_map(|event| event["usage"]["output_tokens"].as_f64())
            .unwrap();
        assert!(
            reported < 7.0,
            "fewer tokens than events, or the check shows nothing: {body}"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (after, output) = streams_and_output(&c, "metered").await;
            if after == before + 1.0 && output == output_before + reported {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{provider}: streams {before} -> {after}, output tokens {output_before} -> {output} (reported {reported})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }

        // Events sent without their `event:` line (a compatible proxy's)
        // are passed on under the names their data's `type` gives.
        if provider == "anthropic" {
            let response = c
                .messages(json!({"model": "unnamed", "max_tokens": 64, "stream": true,
                    "messages": [{"role": "user", "content": "stream me please"}]}))
                .await;
            let body = response.text().await.unwrap();
            for name in ["message_start", "content_block_delta", "message_stop"] {
                assert!(body.contains(&format!("event: {name}\n")), "{name}: {body}");
            }
            assert!(
                !body.contains("event: error") && !body.contains("event: message\n"),
                "{body}"
            );
        }

        // A passed-through stream that closes before `message_stop` ends with
        // an error event for the client, and counts as a failed stream.
        let response = c
            .messages(json!({"model": "truncated", "max_tokens": 64, "stream": true,
                "messages": [{"role": "user", "content": "stream me please"}]}))
            .await;
        let body = response.text().await.unwrap();
        assert!(body.contains("event: error"), "{provider}: {body}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while metric_sum(&c, "switchyard_stream_errors_total", &["model=\"truncated\""]).await < 1.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{provider}: the cut stream was not counted as failed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }

        // A native answer that is not JSON is a bad answer (502), not a 200
        // passed on to the client.
        let response = c
            .messages(json!({"model": "broken", "max_tokens": 64,
                "messages": [{"role": "user", "content": "hello"}]}))
            .await;
        assert_eq!(response.status(), 502, "{provider}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "api_error", "{provider}: {body}");

        // Reasoning another model gave comes back as `thinking` blocks
        // without a signature, which Claude refuses: they are left out;
        // Claude's own, signed, are kept.
        let response = c
            .messages(json!({"model": "contract", "max_tokens": 64, "messages": [
                {"role": "user", "content": "what is 2 + 2?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "from another model"},
                    {"type": "text", "text": "4"}]},
                {"role": "user", "content": "and 3 + 3?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "only reasoning here"}]},
                {"role": "user", "content": "go on"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "from Claude", "signature": "c2lnbmVk"},
                    {"type": "text", "text": "6"}]},
                {"role": "user", "content": "thanks"}
            ]}))
            .await;
        assert_eq!(response.status(), 200, "{provider}: {}", response.text().await.unwrap());
        let sent = mock.last_request().unwrap().body;
        // A message of nothing but unsigned thinking keeps its text.
        assert_eq!(
            sent["messages"][3]["content"],
            json!([{"type": "text", "text": "only reasoning here"}]),
            "{provider}: {sent}"
        );
        assert_eq!(
            sent["messages"][1]["content"],
            json!([{"type": "text", "text": "4"}]),
            "{provider}: {sent}"
        );
        assert_eq!(
            sent["messages"][5]["content"][0]["signature"], "c2lnbmVk",
            "{provider}: {sent}"
        );

        // A tool loop another model began (vLLM's call ids, no signed
        // thinking): Claude gets ids it takes, paired as they were, and no
        // thinking on a turn whose calls came without it.
        let response = c
            .messages(json!({"model": "contract", "max_tokens": 4096,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
                "messages": [
                {"role": "user", "content": "look it up"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "I will look", "signature": ""},
                    {"type": "tool_use", "id": "functions.lookup:0", "name": "lookup", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "functions.lookup:0", "content": "found"}]}
            ]}))
            .await;
        assert_eq!(response.status(), 200, "{provider}: {}", response.text().await.unwrap());
        let sent = mock.last_request().unwrap().body;
        assert!(sent.get("thinking").is_none(), "{provider}: {sent}");
        let id = &sent["messages"][1]["content"][0]["id"];
        assert_ne!(id, "functions.lookup:0", "{provider}: {sent}");
        assert_eq!(
            &sent["messages"][2]["content"][0]["tool_use_id"], id,
            "{provider}: {sent}"
        );

        // Beta features the client names reach Anthropic as its header and
        // Bedrock as the body's `anthropic_beta`, there only those Bedrock
        // takes (Claude Code also names some it refuses).
        let response = c
            .http
            .post(format!("{}/v1/messages", c.base))
            .header(
                "anthropic-beta",
                "interleaved-thinking-2025-05-14, claude-code-20250219",
            )
            .json(&json!({"model": "contract", "max_tokens": 64,
                "messages": [{"role": "user", "content": "hello"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{provider}");
        let seen = mock.last_request().unwrap();
        if provider == "anthropic" {
            let header = seen.headers.iter().find(|(name, _)| name == "anthropic-beta");
            assert_eq!(
                header.map(|(_, v)| v.as_str()),
                Some("interleaved-thinking-2025-05-14,claude-code-20250219"),
                "{:?}",
                seen.headers
            );
        } else {
            assert_eq!(
                seen.body["anthropic_beta"],
                json!(["interleaved-thinking-2025-05-14"]),
                "{}",
                seen.body
            );
        }
    }

    // Streaming tool calls reassemble to the same arguments as the non-streaming call.
    let (_, whole) = c.chat(with_tools(user("parallel", "weather and time?"))).await;
    let (status, events) = c.stream(with_tools(user("parallel", "weather and time?"))).await;
    assert_eq!(status, 200, "{provider}");
    let (_, tools, finish, _) = reassemble(&events);
    let expected: Vec<(String, String)> = whole["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["function"]["name"].as_str().unwrap().to_owned(),
                t["function"]["arguments"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(tools.len(), expected.len(), "{provider}: {events:?}");
    for ((name, args), (want_name, want_args)) in tools.iter().zip(&expected) {
        assert_eq!(name, want_name, "{provider}");
        let got: Value = serde_json::from_str(args).unwrap();
        let want: Value = serde_json::from_str(want_args).unwrap();
        assert_eq!(got, want, "{provider}");
    }
    assert_eq!(finish.as_deref(), Some("tool_calls"), "{provider}");

    // Usage with cached tokens, non-streaming and streaming.
    let cached = json!({"model": "contract", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a long shared prefix", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "question"}
    ]}]});
    let (status, body) = c.chat(cached.clone()).await;
    assert_eq!(status, 200, "{provider}: {body}");
    assert_eq!(
        body["usage"]["prompt_tokens_details"]["cached_tokens"], 7,
        "{provider}: {body}"
    );
    let mut streamed = cached;
    streamed["stream_options"] = json!({"include_usage": true});
    let (_, events) = c.stream(streamed).await;
    let (_, _, _, usage) = reassemble(&events);
    let usage = usage.unwrap_or_else(|| panic!("{provider}: no usage chunk in {events:?}"));
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"], 7,
        "{provider}: {usage}"
    );
    assert!(usage["total_tokens"].as_u64().unwrap() >= 7, "{provider}");

    if provider == "anthropic" || provider == "bedrock" {
        // A JSON `response_format` is asked for as one forced tool, whose
        // input comes back as the message's text, as JSON and streamed.
        let schema = json!({"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}});
        let mut asked = user("contract", "give me json");
        asked["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}});
        let (status, body) = c.chat(asked.clone()).await;
        assert_eq!(status, 200, "{provider}: {body}");
        let message = &body["choices"][0]["message"];
        let content: Value = serde_json::from_str(message["content"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{provider}: not JSON ({e}): {body}"));
        assert_eq!(content, json!({"q": "mock", "n": 1}), "{provider}");
        assert!(
            message.get("tool_calls").is_none_or(Value::is_null),
            "{provider}: {body}"
        );
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{provider}: {body}");
        let seen = mock.last_request().unwrap();
        let (tool, choice) = if provider == "anthropic" {
            (seen.body["tools"][0].clone(), seen.body["tool_choice"].clone())
        } else {
            (
                seen.body["toolConfig"]["tools"][0]["toolSpec"].clone(),
                seen.body["toolConfig"]["toolChoice"].clone(),
            )
        };
        assert_eq!(tool["name"], "json_tool_call", "{provider}: {}", seen.body);
        let sent_schema = if provider == "anthropic" {
            &tool["input_schema"]
        } else {
            &tool["inputSchema"]["json"]
        };
        assert_eq!(sent_schema, &schema, "{provider}: {}", seen.body);
        assert!(choice.to_string().contains("json_tool_call"), "{provider}: {choice}");
        let (status, events) = c.stream(asked).await;
        assert_eq!(status, 200, "{provider}");
        let (text, calls, finish, _) = reassemble(&events);
        assert!(calls.is_empty(), "{provider}: {events:?}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap_or_default(),
            json!({"q": "mock", "n": 1}),
            "{provider}: {events:?}"
        );
        assert_eq!(finish.as_deref(), Some("stop"), "{provider}");
        // Next to the client's own tools the JSON tool is offered, not
        // forced: a model that calls a client tool gets the call back, one
        // that answers in text gets its text.
        let mut both = with_tools(user("contract", "json and tools"));
        both["response_format"] = json!({"type": "json_object"});
        let (status, body) = c.chat(both.clone()).await;
        assert_eq!(status, 200, "{provider}: {body}");
        assert_eq!(
            body["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather",
            "{provider}: {body}"
        );
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls", "{provider}: {body}");
        let seen = mock.last_request().unwrap();
        let names: Vec<String> = if provider == "anthropic" {
            seen.body["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect()
        } else {
            seen.body["toolConfig"]["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["toolSpec"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            names,
            ["get_weather", "get_time", "json_tool_call"],
            "{provider}: {}",
            seen.body
        );
        both["tool_choice"] = json!("auto");
        for stream in [false, true] {
            let (text, calls, finish) = if stream {
                let (status, events) = c.stream(both.clone()).await;
                assert_eq!(status, 200, "{provider}");
                let (text, calls, finish, _) = reassemble(&events);
                (text, calls.len(), finish)
            } else {
                let (status, body) = c.chat(both.clone()).await;
                assert_eq!(status, 200, "{provider}: {body}");
                let choice = &body["choices"][0];
                (
                    choice["message"]["content"].as_str().unwrap_or_default().to_owned(),
                    choice["message"]["tool_calls"].as_array().map_or(0, Vec::len),
                    choice["finish_reason"].as_str().map(str::to_owned),
                )
            };
            assert_eq!(text, "mock reply: json and tools", "{provider} stream {stream}");
            assert_eq!(calls, 0, "{provider} stream {stream}");
            assert_eq!(finish.as_deref(), Some("stop"), "{provider} stream {stream}");
        }
    }
    if provider == "bedrock" {
        // Converse forces a named tool only on Claude and Nova: another
        // model gets the request without `response_format`, as before.
        let mut llama = user("llama", "give me json");
        llama["response_format"] = json!({"type": "json_object"});
        let (status, body) = c.chat(llama).await;
        assert_eq!(status, 200, "{body}");
        assert!(mock.last_request().unwrap().body.get("toolConfig").is_none());
    }

    // Faults.
    let (status, body) = c.chat(user("limited", "x")).await;
    assert_eq!(status, 429, "{provider}: {body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{provider}: {body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{provider}"
    );
    let (status, body) = c.chat(user("failing", "x")).await;
    assert_eq!(status, 502, "{provider}: {body}");
    let (status, body) = c.chat(user("slow", "x")).await;
    assert_eq!(status, 504, "{provider}: {body}");
    // A stream that starts (a role chunk, `message_start`) but sends no
    // output within the first-byte timeout fails the same way.
    let (status, body) = c
        .chat(json!({"model": "hesitant", "stream": true,
        "messages": [{"role": "user", "content": "one two three"}]}))
        .await;
    assert_eq!(status, 504, "{provider}: {body}");
    // A malformed event before any content fails the attempt: a plain error.
    let (status, body) = c
        .chat(json!({"model": "malformed", "stream": true,
        "messages": [{"role": "user", "content": "one two"}]}))
        .await;
    assert_eq!(status, 502, "{provider}: {body}");
    assert_eq!(body["error"]["code"], "upstream_invalid_response", "{provider}: {body}");
    // An event that never ends is cut at 16 MiB instead of filling memory
    // (the Bedrock mock frames its events, so it has no such case).
    if provider != "bedrock" {
        let (status, body) = c
            .chat(json!({"model": "huge", "stream": true,
            "messages": [{"role": "user", "content": "one two"}]}))
            .await;
        assert_eq!(status, 502, "{provider}: {body}");
        assert_eq!(body["error"]["code"], "upstream_invalid_response", "{provider}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("larger than 16 MiB"), "{provider}: {message}");
    }
    // A failure after content started ends the stream with an error event.
    let (status, events) = c.stream(user("reset", "one two three four five six")).await;
    assert_eq!(status, 200, "{provider}/reset");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "upstream_error", "{provider}/reset: {events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"), "{provider}/reset");
    // A stream still running at the deployment's total timeout is cut there,
    // with an error event (40 words at 200 ms each would take 8 s).
    let (status, events) = c.stream(user("stalled", &"word ".repeat(40))).await;
    assert_eq!(status, 200, "{provider}/stalled");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(
        last["error"]["type"], "upstream_error",
        "{provider}/stalled: {events:?}"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"), "{provider}/stalled");
}

/// One test per provider, each running every contract case.
macro_rules! provider_contract {
    ($($name:ident => $provider:literal),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run_contract($provider).await;
            }
        )*
    };
}

provider_contract! {
    openai_contract => "openai",
    azure_contract => "azure",
    anthropic_contract => "anthropic",
    bedrock_contract => "bedrock",
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_embeddings_and_anthropic_count_tokens() {
    let mock = MockUpstream::start().await;
    let mut yaml = String::from("model_list:\n");
    for (name, model) in [
        ("titan", "amazon.titan-embed-text-v2:0"),
        ("cohere", "cohere.embed-english-v3"),
        ("cohere-v4", "cohere.embed-v4:0"),
        ("nova", "amazon.nova-lite-v1:0"),
        (
            "titan-throttled",
            "amazon.titan-embed-text-v2:0::fail_first=1,status=429",
        ),
    ] {
        yaml += &format!("  - model_name: {name}\n    deployments:\n");
        yaml += &deployment("bedrock", &mock, model, "");
    }
    yaml += "  - model_name: claude\n    deployments:\n";
    yaml += &deployment(
        "anthropic",
        &mock,
        "claude-mock",
        "        headers: {anthropic-beta: context-1m-2025-08-07}\n",
    );
    yaml += "  - model_name: bedrock-claude\n    deployments:\n";
    yaml += &deployment("bedrock", &mock, "anthropic.claude-3-5-sonnet-20240620-v1:0", "");
    let gateway = GatewayProcess::start_with(
        Path::new(BIN),
        &yaml,
        &[],
        &[("TEST_AWS_ID", "AKIDTEST"), ("TEST_AWS_SECRET", "test-secret")],
    );
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let request = http.post(format!("{}{path}", gateway.base_url())).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    for model in ["titan", "cohere", "cohere-v4"] {
        let (status, body) = post("/v1/embeddings", json!({"model": model, "input": ["alpha", "beta"]})).await;
        assert_eq!(status, 200, "{model}: {body}");
        for (i, text) in ["alpha", "beta"].iter().enumerate() {
            let got: Vec<f32> = serde_json::from_value(body["data"][i]["embedding"].clone()).unwrap();
            assert_eq!(got, switchyard_testkit::mock_embedding(&json!(text), 16), "{model}");
            assert_eq!(body["data"][i]["index"], i);
        }
        let (_, b64) = post(
            "/v1/embeddings",
            json!({"model": model, "input": "alpha", "encoding_format": "base64"}),
        )
        .await;
        let encoded = b64["data"][0]["embedding"].as_str().unwrap();
        assert_eq!(
            encoded,
            switchyard_testkit::encode_base64_embedding(&switchyard_testkit::mock_embedding(&json!("alpha"), 16))
        );
    }
    // One Titan call of a batch throttled is tried again: the batch is
    // answered whole, each text embedded once more at most.
    let (status, body) = post(
        "/v1/embeddings",
        json!({"model": "titan-throttled", "input": ["alpha", "beta", "gamma"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(3), "{body}");
    let titan_calls = mock.requests().iter().filter(|r| r.path.contains("fail_first")).count();
    assert_eq!(titan_calls, 4, "three texts, one throttled and tried again");
    // Token ids are refused, not embedded as the text of their digits.
    for input in [json!([9906, 1917]), json!([[9906], [1917]])] {
        let (status, body) = post("/v1/embeddings", json!({"model": "cohere", "input": input})).await;
        assert_eq!((status, &body["error"]["param"]), (400, &json!("input")), "{body}");
    }
    // Cohere's `input_type` reaches it (`search_document` when none is given);
    // `dimensions` is v4's `output_dimension`; v3 has one size (1,024),
    // so another is refused, not answered in it.
    let (status, body) = post(
        "/v1/embeddings",
        json!({"model": "cohere-v4", "input": "alpha", "input_type": "search_query", "dimensions": 8}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 8, "{body}");
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.body["input_type"], "search_query", "{}", seen.body);
    let (status, body) = post(
        "/v1/embeddings",
        json!({"model": "cohere", "input": "alpha", "dimensions": 8}),
    )
    .await;
    assert_eq!((status, &body["error"]["param"]), (400, &json!("dimensions")), "{body}");
    let (status, body) = post(
        "/v1/embeddings",
        json!({"model": "cohere", "input": "alpha", "dimensions": 1024}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = mock.last_request().unwrap().body;
    assert_eq!(seen["input_type"], "search_document");
    assert!(seen.get("output_dimension").is_none(), "{seen}");
    let (status, body) = post("/v1/embeddings", json!({"model": "nova", "input": "x"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unsupported")),
        "{body}"
    );

    let request = json!({"model": "claude", "tags": ["eval"], "metadata": {"tags": ["nightly"]},
        "messages": [{"role": "user", "content": "one two three"}]});
    let (status, body) = post("/v1/messages/count_tokens", request).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["input_tokens"].as_u64().unwrap() >= 3, "{body}");
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/messages/count_tokens");
    assert_eq!(seen.body["model"], "claude-mock");
    // Tags are the gateway's, taken out of what Anthropic counts.
    assert!(
        seen.body.get("tags").is_none() && seen.body.get("metadata").is_none(),
        "{}",
        seen.body
    );
    // Another model's tool ids are counted as Claude takes them.
    let (status, body) = post(
        "/v1/messages/count_tokens",
        json!({"model": "claude", "tools": [{"name": "lookup", "input_schema": {"type": "object"}}], "messages": [
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "functions.lookup:0", "name": "lookup", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "functions.lookup:0", "content": "found"}]}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = mock.last_request().unwrap();
    let id = &seen.body["messages"][1]["content"][0]["id"];
    assert_ne!(id, "functions.lookup:0", "{}", seen.body);
    assert_eq!(
        &seen.body["messages"][2]["content"][0]["tool_use_id"], id,
        "{}",
        seen.body
    );
    // Beta features reach the count too, beside the deployment's own.
    let counted = http
        .post(format!("{}/v1/messages/count_tokens", gateway.base_url()))
        .header("anthropic-beta", "beta-one-2025-01-01")
        .json(&json!({"model": "claude", "messages": [{"role": "user", "content": "one"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(counted.status(), 200);
    let betas = |seen: switchyard_testkit::RecordedRequest| -> Vec<String> {
        seen.headers
            .iter()
            .filter(|(n, _)| n == "anthropic-beta")
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(
        betas(mock.last_request().unwrap()),
        ["context-1m-2025-08-07,beta-one-2025-01-01"]
    );
    // So does a message's; without the client's, the deployment's goes alone.
    for (client, sent) in [
        (
            Some("context-1m-2025-08-07, beta-two"),
            "context-1m-2025-08-07,beta-two",
        ),
        (None, "context-1m-2025-08-07"),
    ] {
        let mut request = http
            .post(format!("{}/v1/messages", gateway.base_url()))
            .json(&json!({"model": "claude", "max_tokens": 16, "messages": [{"role": "user", "content": "one"}]}));
        if let Some(client) = client {
            request = request.header("anthropic-beta", client);
        }
        let answered = request.send().await.unwrap();
        assert_eq!(answered.status(), 200);
        assert_eq!(betas(mock.last_request().unwrap()), [sent], "{client:?}");
    }
    // Claude on Bedrock is counted by Bedrock's CountTokens.
    let counted = http
        .post(format!("{}/v1/messages/count_tokens", gateway.base_url()))
        .json(&json!({"model": "bedrock-claude", "messages": [{"role": "user", "content": "one two three four five"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(counted.status(), 200);
    assert!(
        counted.headers().get("x-switchyard-token-count").is_none(),
        "not an estimate"
    );
    let body: Value = counted.json().await.unwrap();
    assert!(body["input_tokens"].as_u64().unwrap() >= 5, "{body}");
    let seen = mock.last_request().unwrap();
    assert!(seen.path.ends_with("/count-tokens"), "{}", seen.path);
    assert!(seen.body.pointer("/input/invokeModel/body").is_some(), "{}", seen.body);
    // A request Bedrock finds invalid stays the client's error, not an estimate.
    let (status, body) = post(
        "/v1/messages/count_tokens",
        json!({"model": "bedrock-claude", "messages": []}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "error", "{body}");

    // Other Bedrock models have no token count: the gateway estimates.
    let (status, body) = post(
        "/v1/messages/count_tokens",
        json!({"model": "nova", "messages": [{"role": "user", "content": "one two three four"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Four bytes a token, of the text and of a message's 16-byte allowance.
    assert_eq!(
        body["input_tokens"],
        ("one two three four".len() + 16).div_ceil(4),
        "{body}"
    );
}

/// Azure API versions before 2024-09-01 refuse `stream_options`: streams to
/// them are sent without it (and charged from the gateway's estimate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_azure_api_version_streams_without_stream_options() {
    let mock = MockUpstream::start().await;
    let yaml = format!(
        "model_list:\n  - model_name: old-azure\n    deployments:\n      - provider: azure\n        model: dep\n        api_base: {}\n        api_version: 2024-06-01\n        api_key: k\n",
        mock.root_url()
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &yaml);
    for include_usage in [false, true] {
        let mut body = json!({"model": "old-azure", "stream": true,
            "messages": [{"role": "user", "content": "hello there"}]});
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let response = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", gateway.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let events = sse_data(&text);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
        let seen = mock.last_request().unwrap();
        assert!(seen.query.as_deref().unwrap_or("").contains("api-version=2024-06-01"));
        assert!(seen.body.get("stream_options").is_none(), "{}", seen.body);
    }
}

/// An upstream that refuses `stream_options` (Mistral's API: 422
/// `extra_forbidden`, its message an object) gets the stream again without
/// it, and never again; completions too. The client's stream is whole, with
/// usage only when it asked for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_refusing_stream_options_is_streamed_without_them() {
    let mock = MockUpstream::start().await;
    let yaml = format!(
        "model_list:\n  - model_name: mistral\n    deployments:\n      - provider: openai\n        model: \"mistral-small::refuses_stream_options\"\n        api_base: {}\n",
        mock.base_url()
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &yaml);
    let client = reqwest::Client::new();
    let mut sent = 0;
    for (path, include_usage) in [
        ("chat/completions", false),
        ("chat/completions", true),
        ("completions", false),
    ] {
        let mut body = if path == "completions" {
            json!({"model": "mistral", "stream": true, "prompt": "hello there"})
        } else {
            json!({"model": "mistral", "stream": true, "messages": [{"role": "user", "content": "hello there"}]})
        };
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let response = client
            .post(format!("{}/v1/{path}", gateway.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let text = response.text().await.unwrap();
        let events = sse_data(&text);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
        let usage_seen = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .any(|e| e["usage"].is_object());
        assert_eq!(usage_seen, include_usage, "usage only for a client that asked: {text}");
        let requests = mock.requests();
        let new = &requests[sent..];
        sent = requests.len();
        // The first stream learns it (two requests); the others go without.
        let expected = if sent == new.len() { 2 } else { 1 };
        assert_eq!(new.len(), expected, "{path}: {new:?}");
        assert!(new.last().unwrap().body.get("stream_options").is_none());
    }
}

/// Azure's v1 API (`api_version: v1`, `preview` or `latest`) is called at
/// `/openai/v1/…` with the deployment as the body's `model`, not on the
/// dated deployments path, which does not serve those versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_v1_api_versions_use_the_v1_path() {
    let mock = MockUpstream::start().await;
    let mut yaml = String::from("model_list:\n");
    for version in ["v1", "preview"] {
        yaml += &format!(
            "  - model_name: azure-{version}\n    deployments:\n      - provider: azure\n        model: dep-{version}\n        api_base: {}\n        api_version: {version}\n        api_key: k\n",
            mock.root_url()
        );
    }
    let gateway = GatewayProcess::start(Path::new(BIN), &yaml);
    let http = reqwest::Client::new();
    for (version, query) in [("v1", None), ("preview", Some("api-version=preview"))] {
        for (path, body) in [
            ("chat/completions", user(&format!("azure-{version}"), "hello")),
            (
                "embeddings",
                json!({"model": format!("azure-{version}"), "input": "hello"}),
            ),
        ] {
            let response = http
                .post(format!("{}/v1/{path}", gateway.base_url()))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                200,
                "{version} {path}: {}",
                response.text().await.unwrap()
            );
            let seen = mock.last_request().unwrap();
            assert_eq!(seen.path, format!("/openai/v1/{path}"), "{version}");
            assert_eq!(seen.query.as_deref(), query, "{version}");
            assert_eq!(seen.body["model"], format!("dep-{version}"), "{version}");
        }
    }
}

/// A Bedrock deployment whose AWS credentials cannot be loaded (no static
/// keys, an empty provider chain) is a configuration fault: nothing is sent,
/// no retry is spent on it, another deployment of the group answers, and
/// alone it fails with a 502 that keeps the credential chain's details in
/// the gateway's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_without_credentials_is_a_configuration_fault_not_retried() {
    let mock = MockUpstream::start().await;
    let bedrock = format!(
        "      - provider: bedrock\n        model: amazon.nova-lite-v1:0\n        api_base: {}\n        aws_region: us-east-1\n        input_cost_per_token: 0.0000001\n",
        mock.root_url()
    );
    let yaml = format!(
        "router_settings:\n  num_retries: 2\nmodel_list:\n  - model_name: nova\n    deployments:\n{bedrock}  - model_name: either\n    routing_strategy: cost-based\n    deployments:\n{bedrock}      - {{provider: openai, model: gpt-4o-mini, api_base: \"{}\", api_key: k, input_cost_per_token: 0.00001}}\n",
        mock.base_url()
    );
    let gateway = GatewayProcess::start_with(
        Path::new(BIN),
        &yaml,
        &[],
        &[
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent/aws/config"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws/credentials"),
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
        ],
    );
    let ask = |model: &'static str| {
        let url = format!("{}/v1/chat/completions", gateway.base_url());
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .json(&user(model, "hello"))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            let (attempts, deployment) = (header("x-switchyard-attempts"), header("x-switchyard-deployment"));
            let body: Value = response.json().await.unwrap();
            (status, attempts, deployment, body)
        }
    };
    let (status, attempts, _, body) = ask("nova").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(attempts, "1", "{body}");
    assert_eq!(body["error"]["code"], "deployment_misconfigured", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("nova/0") && !message.contains("AWS") && !message.contains("credentials"),
        "{message}"
    );
    assert!(mock.requests().is_empty(), "nothing is sent without credentials");

    // Beside a deployment that can be called, the group still answers:
    // cost-based tries the cheaper Bedrock one first.
    let (status, attempts, deployment, body) = ask("either").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(deployment, "either/1", "{body}");
    assert_eq!(attempts, "2", "{body}");
    assert_eq!(mock.requests().len(), 1);
}

/// What Bedrock refuses of an OpenAI conversation is reshaped before it
/// goes: no `maxTokens` nobody chose (past a Llama's limit), a user message
/// after tool results in a turn of its own, Cohere's inputs in batches of
/// 96; a model id Bedrock cannot call as configured is the deployment's
/// fault, and another deployment answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_requests_are_shaped_as_bedrock_takes_them() {
    let mock = MockUpstream::start().await;
    let mut yaml = String::from("model_list:\n");
    yaml += "  - model_name: llama\n    deployments:\n";
    yaml += &deployment("bedrock", &mock, "meta.llama3-70b-instruct-v1:0::max_output=2048", "");
    yaml += "  - model_name: cohere\n    deployments:\n";
    yaml += &deployment("bedrock", &mock, "cohere.embed-english-v3", "");
    yaml += "  - model_name: profiled\n    routing_strategy: cost-based\n    deployments:\n";
    yaml += &deployment(
        "bedrock",
        &mock,
        "anthropic.claude-3-5-sonnet-20241022-v2:0::profile_only",
        "        input_cost_per_token: 0.000001\n",
    );
    yaml += &deployment(
        "bedrock",
        &mock,
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "        input_cost_per_token: 0.00001\n",
    );
    let gateway = GatewayProcess::start_with(
        Path::new(BIN),
        &yaml,
        &[],
        &[("TEST_AWS_ID", "AKIDTEST"), ("TEST_AWS_SECRET", "test-secret")],
    );
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let request = http.post(format!("{}{path}", gateway.base_url())).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let attempts = response
                .headers()
                .get("x-switchyard-attempts")
                .map(|v| v.to_str().unwrap().to_owned());
            (
                response.status().as_u16(),
                attempts,
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, _, body) = post(
        "/v1/chat/completions",
        json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        mock.last_request().unwrap().body["inferenceConfig"]
            .get("maxTokens")
            .is_none()
    );

    let tool = json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]);
    let (status, _, body) = post(
        "/v1/chat/completions",
        json!({"model": "llama", "tools": tool, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "user", "content": "and tomorrow?"}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let before = mock.requests().len();
    let inputs: Vec<String> = (0..100).map(|i| format!("text {i}")).collect();
    let (status, _, body) = post("/v1/embeddings", json!({"model": "cohere", "input": inputs})).await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 100);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["index"], i);
        let got: Vec<f32> = serde_json::from_value(item["embedding"].clone()).unwrap();
        assert_eq!(got, switchyard_testkit::mock_embedding(&json!(format!("text {i}")), 16));
    }
    let calls = &mock.requests()[before..];
    assert_eq!(calls.len(), 2, "96 texts, then 4");
    assert_eq!(calls[0].body["texts"].as_array().unwrap().len(), 96);

    let (status, attempts, body) = post(
        "/v1/chat/completions",
        json!({"model": "profiled", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!((status, attempts.as_deref()), (200, Some("2")), "{body}");
}

/// What Converse refuses or reports as broken, handled: blank text is left
/// out, a system prompt keeps its cache marks (with their lifetime), a model
/// error (424) or an output the model could not form fails over, and
/// parameters Converse cannot express are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_converse_edges() {
    let mock = MockUpstream::start().await;
    let mut yaml = String::from("router_settings:\n  num_retries: 0\nmodel_list:\n");
    for (name, model) in [
        ("nova", "amazon.nova-lite-v1:0"),
        ("failing", "amazon.nova-lite-v1:0::status=424"),
        ("malformed", "amazon.nova-lite-v1:0::malformed_tool_use"),
        ("malformed-alone", "amazon.nova-lite-v1:0::malformed_tool_use"),
        ("denied", "amazon.nova-lite-v1:0::status=403"),
        ("denied-alone", "amazon.nova-lite-v1:0::status=403"),
        ("expired", "amazon.nova-lite-v1:0::expired_token"),
        ("expired-session", "amazon.nova-lite-v1:0::expired_token"),
        ("skewed", "amazon.nova-lite-v1:0::skewed_clock"),
    ] {
        let fallbacks = if matches!(
            name,
            "failing" | "malformed" | "denied" | "expired" | "expired-session" | "skewed"
        ) {
            "    fallbacks: [nova]\n"
        } else {
            ""
        };
        yaml += &format!("  - model_name: {name}\n{fallbacks}    deployments:\n");
        // A session token of the configuration's own: nothing renews it.
        let extra = if name == "expired-session" {
            "        aws_session_token: a-session-token\n"
        } else {
            ""
        };
        yaml += &deployment("bedrock", &mock, model, extra);
    }
    let gateway = GatewayProcess::start_with(
        Path::new(BIN),
        &yaml,
        &[],
        &[("TEST_AWS_ID", "AKIDTEST"), ("TEST_AWS_SECRET", "test-secret")],
    );
    let http = reqwest::Client::new();
    let chat = |body: Value| {
        let request = http
            .post(format!("{}/v1/chat/completions", gateway.base_url()))
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let model = response
                .headers()
                .get("x-switchyard-model")
                .map(|v| v.to_str().unwrap().to_owned());
            (
                response.status().as_u16(),
                model,
                response.json::<Value>().await.unwrap(),
            )
        }
    };

    let (status, _, body) = chat(json!({"model": "nova", "messages": [
        {"role": "system", "content": [
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            {"type": "text", "text": "  "}
        ]},
        {"role": "developer", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "hello"}]}
    ]}))
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = mock.last_request().unwrap();
    assert_eq!(
        seen.body["system"],
        json!([{"text": "You are terse."}, {"cachePoint": {"type": "default", "ttl": "1h"}}]),
        "{}",
        seen.body
    );
    assert_eq!(seen.body["messages"][0]["content"], json!([{"text": "hello"}]));
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 7, "{body}");

    // Bedrock's AccessDeniedException is about the model or the action
    // (model access not granted), not the keys; temporary credentials that
    // ran out are renewed by the credential chain: the fallback answers, and
    // the deployment is not taken for one whose key is invalid (state 3).
    for group in ["denied", "expired", "skewed"] {
        let (status, answered_by, body) = chat(user(group, "hello")).await;
        assert_eq!((status, answered_by.as_deref()), (200, Some("nova")), "{group}: {body}");
        let metrics = http
            .get(format!("{}/metrics", gateway.base_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let deployment = format!(r#"deployment="{group}/0""#);
        let state = metrics
            .lines()
            .find(|l| l.starts_with("switchyard_deployment_state{") && l.contains(&deployment))
            .unwrap_or_else(|| panic!("{metrics}"));
        assert!(!state.ends_with(" 3"), "{state}");
    }
    // A session token the configuration holds is renewed by nothing: its
    // expiry marks the deployment's key rejected (state 3).
    let (status, answered_by, body) = chat(user("expired-session", "hello")).await;
    assert_eq!((status, answered_by.as_deref()), (200, Some("nova")), "{body}");
    let metrics = http
        .get(format!("{}/metrics", gateway.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("switchyard_deployment_state{")
            && l.contains(r#"deployment="expired-session/0""#)
            && l.ends_with(" 3")),
        "{metrics}"
    );
    // Its words name the gateway's AWS account and role: the client is not
    // shown them.
    let (status, _, body) = chat(user("denied-alone", "hello")).await;
    assert!(status >= 400, "{body}");
    let shown = body.to_string();
    assert!(
        !shown.contains("123456789012") && !shown.contains("gateway-role"),
        "{shown}"
    );
    assert!(shown.contains("AccessDeniedException"), "{shown}");

    for (model, retried) in [("failing", true), ("malformed", true), ("malformed-alone", false)] {
        let (status, answered_by, body) = chat(user(model, "hello")).await;
        if retried {
            assert_eq!((status, answered_by.as_deref()), (200, Some("nova")), "{model}: {body}");
        } else {
            assert_eq!(status, 502, "{model}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("malformed_tool_use"),
                "{body}"
            );
        }
    }
    let mut streamed = user("malformed-alone", "hello");
    streamed["stream"] = json!(true);
    let text = http
        .post(format!("{}/v1/chat/completions", gateway.base_url()))
        .json(&streamed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (_, _, finish, _) = reassemble(&sse_data(&text));
    assert_eq!(finish, None, "a broken answer does not finish: {text}");
    assert!(text.contains("malformed_tool_use"), "{text}");

    // A tool's result made of parts keeps its image (a screenshot).
    let (status, _, body) = chat(json!({"model": "nova",
    "tools": [{"type": "function", "function": {"name": "shot", "parameters": {"type": "object"}}}],
    "messages": [
        {"role": "user", "content": "take a screenshot"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "shot", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [
            {"type": "text", "text": "the screen"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
        ]}
    ]}))
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = mock.last_request().unwrap();
    let result = &seen.body["messages"][2]["content"][0]["toolResult"]["content"];
    assert_eq!(result[0], json!({"text": "the screen"}), "{}", seen.body);
    assert_eq!(result[1]["image"]["format"], "png", "{}", seen.body);

    // Files go as documents, each with a neutral name of its own: PDFs (a
    // `file` part, or a PDF in an `image_url` part) and text; a turn of
    // documents alone gets the text Converse requires beside them.
    let pdf = "JVBERi0xLjQK";
    let (status, _, body) = chat(json!({"model": "nova", "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "compare these"},
            {"type": "file", "file": {"filename": "report.pdf", "file_data": format!("data:application/pdf;base64,{pdf}")}},
            {"type": "image_url", "image_url": {"url": format!("data:application/pdf;base64,{pdf}")}}
        ]},
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": [
            {"type": "file", "file": {"filename": "report.pdf", "file_data": "data:text/plain;base64,aGVsbG8="}}
        ]}
    ]}))
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = mock.last_request().unwrap();
    let first = &seen.body["messages"][0]["content"];
    assert_eq!(
        first[1],
        json!({"document": {"format": "pdf", "name": "document 0-1", "source": {"bytes": pdf}}}),
        "{}",
        seen.body
    );
    assert_eq!(first[2]["document"]["name"], "document 0-2", "{}", seen.body);
    assert_eq!(
        seen.body["messages"][2]["content"],
        json!([
            {"document": {"format": "txt", "name": "document 2-0", "source": {"bytes": "aGVsbG8="}}},
            {"text": "."}
        ]),
        "{}",
        seen.body
    );
    // A tool's result may hold a file too.
    let (status, _, body) = chat(json!({"model": "nova",
    "tools": [{"type": "function", "function": {"name": "fetch", "parameters": {"type": "object"}}}],
    "messages": [
        {"role": "user", "content": "fetch the report"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "fetch", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [
            {"type": "text", "text": "the report"},
            {"type": "file", "file": {"file_data": format!("data:application/pdf;base64,{pdf}")}}
        ]}
    ]}))
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = mock.last_request().unwrap();
    let result = &seen.body["messages"][2]["content"][0]["toolResult"]["content"];
    assert_eq!(result[1]["document"]["format"], "pdf", "{}", seen.body);
    // A file id, a link or a type Bedrock does not read: 400 naming the part.
    for file in [
        json!({"type": "file", "file": {"file_id": "file-abc"}}),
        json!({"type": "file", "file": {"file_data": "data:image/svg+xml;base64,PHN2Zz4="}}),
        json!({"type": "file", "file": {"file_data": "https://example.com/a.pdf"}}),
    ] {
        let (status, _, body) = chat(json!({"model": "nova", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "read"}, file]}
        ]}))
        .await;
        assert_eq!(
            (status, &body["error"]["param"]),
            (400, &json!("messages[0].content[1]")),
            "{body}"
        );
    }

    let mut legacy = user("nova", "hello");
    legacy["functions"] = json!([{"name": "f", "parameters": {"type": "object"}}]);
    let (status, _, body) = chat(legacy).await;
    assert_eq!((status, &body["error"]["param"]), (400, &json!("functions")), "{body}");
}

/// A Bedrock guardrail that intervenes answers 200 with its own message and
/// `stopReason: guardrail_intervened`; clients see `finish_reason:
/// content_filter`, as from Azure's output filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bedrock_guardrail_intervention_is_a_content_filter_finish() {
    let mock = MockUpstream::start().await;
    // With the response cache on: a filtered answer is not kept.
    let mut yaml = String::from("cache:\n  enabled: true\nmodel_list:\n  - model_name: guarded\n    deployments:\n");
    yaml += &deployment("bedrock", &mock, "amazon.nova-lite-v1:0::content_filter", "");
    let gateway = GatewayProcess::start_with(
        Path::new(BIN),
        &yaml,
        &[],
        &[("TEST_AWS_ID", "AKIDTEST"), ("TEST_AWS_SECRET", "test-secret")],
    );
    let http = reqwest::Client::new();
    let json_answer: Value = http
        .post(format!("{}/v1/chat/completions", gateway.base_url()))
        .json(&user("guarded", "something forbidden"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        json_answer["choices"][0]["finish_reason"], "content_filter",
        "{json_answer}"
    );
    assert!(
        json_answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("cannot answer"),
        "{json_answer}"
    );
    let mut stream = user("guarded", "something forbidden");
    stream["stream"] = json!(true);
    let text = http
        .post(format!("{}/v1/chat/completions", gateway.base_url()))
        .json(&stream)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (content, _, finish, _) = reassemble(&sse_data(&text));
    assert_eq!(finish.as_deref(), Some("content_filter"), "{text}");
    assert!(content.contains("cannot answer"), "{text}");

    // Neither the JSON answer nor the stream was kept for later callers.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for streamed in [false, true] {
        let mut again = user("guarded", "something forbidden");
        again["stream"] = json!(streamed);
        let response = http
            .post(format!("{}/v1/chat/completions", gateway.base_url()))
            .json(&again)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-switchyard-cache"], "miss", "stream {streamed}");
    }
}

/// A Bedrock deployment on an application inference profile: `aws_model_id`
/// is the ARN invoked, while `model` names the Claude model behind it, which
/// decides the request format (native Anthropic body for `/v1/messages`,
/// Claude's sampling rules on Converse) and is what CountTokens counts with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bedrock_inference_profile_is_invoked_as_its_foundation_model() {
    const ARN: &str = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/claude7x2k";
    const FOUNDATION: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
    let mock = MockUpstream::start().await;
    let mut yaml = String::from("model_list:\n  - model_name: profiled\n    deployments:\n");
    yaml += &deployment(
        "bedrock",
        &mock,
        FOUNDATION,
        &format!("        aws_model_id: \"{ARN}\"\n"),
    );
    let gateway = GatewayProcess::start_with(
        Path::new(BIN),
        &yaml,
        &[],
        &[("TEST_AWS_ID", "AKIDTEST"), ("TEST_AWS_SECRET", "test-secret")],
    );
    let http = reqwest::Client::new();
    let invoked = |path: &str| {
        let (_, rest) = path.split_once("/model/").unwrap();
        let (id, tail) = rest.rsplit_once('/').unwrap();
        (id.replace("%3A", ":").replace("%2F", "/"), tail.to_owned())
    };

    let answer = http
        .post(format!("{}/v1/messages", gateway.base_url()))
        .json(&json!({"model": "profiled", "max_tokens": 50, "messages": [{"role": "user", "content": "hello there"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["type"], "message", "{body}");
    let seen = mock.last_request().unwrap();
    assert_eq!(invoked(&seen.path), (ARN.to_owned(), "invoke".to_owned()));
    assert_eq!(
        seen.body["anthropic_version"], "bedrock-2023-05-31",
        "native Claude body"
    );

    let mut chat = user("profiled", "hello there");
    chat["temperature"] = json!(0.5);
    chat["top_p"] = json!(0.9);
    let answer = http
        .post(format!("{}/v1/chat/completions", gateway.base_url()))
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let seen = mock.last_request().unwrap();
    assert_eq!(invoked(&seen.path), (ARN.to_owned(), "converse".to_owned()));
    assert_eq!(seen.body["inferenceConfig"]["temperature"], 0.5, "{}", seen.body);
    assert!(
        seen.body["inferenceConfig"].get("topP").is_none(),
        "Claude takes one of the two: {}",
        seen.body
    );

    let counted = http
        .post(format!("{}/v1/messages/count_tokens", gateway.base_url()))
        .json(&json!({"model": "profiled", "messages": [{"role": "user", "content": "one two three"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(counted.status(), 200);
    assert!(
        counted.headers().get("x-switchyard-token-count").is_none(),
        "counted by Bedrock"
    );
    let seen = mock.last_request().unwrap();
    assert_eq!(invoked(&seen.path), (FOUNDATION.to_owned(), "count-tokens".to_owned()));
}

/// Azure's content filter refuses with the verdict per category in
/// `innererror`; the client gets that refusal as it came, details included,
/// so an app can tell its user which category was caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_content_filter_refusal_keeps_its_details() {
    let mock = MockUpstream::start().await;
    let mut yaml = String::from("model_list:\n  - model_name: filtered\n    deployments:\n");
    yaml += &deployment("azure", &mock, "dep::content_filter", "");
    let gateway = GatewayProcess::start(Path::new(BIN), &yaml);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gateway.base_url()))
        .json(&user("filtered", "something violent"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["code"], "content_filter", "{body}");
    assert_eq!(error["param"], "prompt", "{body}");
    assert_eq!(error["type"], "invalid_request_error", "{body}");
    assert_eq!(error["innererror"]["code"], "ResponsibleAIPolicyViolation", "{body}");
    assert_eq!(
        error["innererror"]["content_filter_result"]["violence"],
        json!({"filtered": true, "severity": "medium"}),
        "{body}"
    );
}

/// Prompt-cache writes are charged at the write price whichever API the
/// client speaks, and writes kept for an hour (`ttl: "1h"`) at theirs:
/// through `/v1/chat/completions` (translated usage) and `/v1/messages`
/// (Anthropic's usage passed through), as JSON and as a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_cache_writes_are_charged_at_their_prices() {
    use switchyard_testkit::{MOCK_CACHE_READ_TOKENS, MOCK_CACHE_WRITE_TOKENS};
    let mock = MockUpstream::start().await;
    const MASTER: &str = "sk-master-key-for-provider-tests";
    let mut yaml = format!("policy:\n  master_key: {MASTER}\nmodel_list:\n  - model_name: claude\n    deployments:\n");
    // Per token, in nano-dollars: input 1000, output 2000, cache read 100,
    // write 1250, hour-long write 2000.
    yaml += &deployment(
        "anthropic",
        &mock,
        "mock-model",
        "        input_cost_per_token: 0.000001\n        output_cost_per_token: 0.000002\n        cache_read_input_token_cost: 0.0000001\n        cache_creation_input_token_cost: 0.00000125\n        cache_creation_input_token_cost_above_1hr: 0.000002\n",
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &yaml);
    let http = reqwest::Client::new();
    let (read, write) = (
        i64::try_from(MOCK_CACHE_READ_TOKENS).unwrap(),
        i64::try_from(MOCK_CACHE_WRITE_TOKENS).unwrap(),
    );
    for ttl in [None, Some("1h")] {
        let mut cache_control = json!({"type": "ephemeral"});
        if let Some(ttl) = ttl {
            cache_control["ttl"] = json!(ttl);
        }
        let write_price = if ttl.is_some() { 2000 } else { 1250 };
        let content = json!([
            {"type": "text", "text": "a long shared prefix", "cache_control": cache_control},
            {"type": "text", "text": "question"}
        ]);
        for path in ["/v1/chat/completions", "/v1/messages"] {
            for stream in [false, true] {
                let mut body = json!({"model": "claude", "max_tokens": 50, "stream": stream,
                    "messages": [{"role": "user", "content": content}]});
                if stream && path == "/v1/chat/completions" {
                    body["stream_options"] = json!({"include_usage": true});
                }
                let response = http
                    .post(format!("{}{path}", gateway.base_url()))
                    .bearer_auth(MASTER)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{path}");
                let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
                let (cost, request_id) = (
                    header("x-switchyard-response-cost"),
                    header("x-switchyard-request-id").unwrap(),
                );
                let text = response.text().await.unwrap();
                // The usage the client saw: uncached input and output tokens.
                let usage = if stream {
                    sse_data(&text)
                        .iter()
                        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                        .filter_map(|e| {
                            let u = if path == "/v1/messages" {
                                e.pointer("/message/usage").or_else(|| e.get("usage"))
                            } else {
                                e.get("usage")
                            };
                            u.filter(|u| u.is_object()).cloned()
                        })
                        .fold(json!({}), |mut all, u| {
                            for (k, v) in u.as_object().unwrap() {
                                if v.as_i64().is_some_and(|n| n > 0) || !all.as_object().unwrap().contains_key(k) {
                                    all[k] = v.clone();
                                }
                            }
                            all
                        })
                } else {
                    serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
                };
                let (input, output) = if path == "/v1/messages" {
                    (
                        usage["input_tokens"].as_i64().unwrap(),
                        usage["output_tokens"].as_i64().unwrap(),
                    )
                } else {
                    (
                        usage["prompt_tokens"].as_i64().unwrap() - read - write,
                        usage["completion_tokens"].as_i64().unwrap(),
                    )
                };
                let nanos = input * 1000 + read * 100 + write * write_price + output * 2000;
                if !stream {
                    let expected = format!("0.{nanos:09}");
                    assert_eq!(cost.as_deref(), Some(expected.as_str()), "{path} ttl {ttl:?}: {text}");
                }
                // The spend record (a stream's once it ended) says the same.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                loop {
                    let logs: Value = http
                        .get(format!("{}/spend/logs", gateway.base_url()))
                        .bearer_auth(MASTER)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap_or_default();
                    let record = logs
                        .as_array()
                        .and_then(|all| all.iter().find(|r| r["request_id"] == request_id.as_str()));
                    if let Some(record) = record {
                        assert_eq!(
                            record["cost_nanos"], nanos,
                            "{path} stream {stream} ttl {ttl:?}: {record}"
                        );
                        break;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{path} stream {stream} ttl {ttl:?}: no spend record {request_id}: {logs}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// `drop_params` on an Anthropic or Bedrock deployment drops the chat
/// parameters it cannot express (`logprobs`, `n` > 1…) instead of
/// answering 400; without it they are refused, naming the parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_params_drops_what_anthropic_and_bedrock_cannot_express() {
    let mock = MockUpstream::start().await;
    let mut yaml = String::from("router_settings:\n  num_retries: 0\nmodel_list:\n");
    for (provider, model) in [("anthropic", "claude-mock"), ("bedrock", "amazon.nova-lite-v1:0")] {
        for drop in [true, false] {
            yaml += &format!("  - model_name: {provider}-{drop}\n    deployments:\n");
            yaml += &deployment(provider, &mock, model, &format!("        drop_params: {drop}\n"));
        }
    }
    let gateway = GatewayProcess::start_with(
        Path::new(BIN),
        &yaml,
        &[],
        &[("TEST_AWS_ID", "AKIDTEST"), ("TEST_AWS_SECRET", "test-secret")],
    );
    let http = reqwest::Client::new();
    for provider in ["anthropic", "bedrock"] {
        for (drop, stream) in [(true, false), (true, true), (false, false)] {
            let response = http
                .post(format!("{}/v1/chat/completions", gateway.base_url()))
                .json(&json!({
                    "model": format!("{provider}-{drop}"), "stream": stream, "logprobs": true, "top_logprobs": 2, "n": 2,
                    "messages": [{"role": "user", "content": "hello"}]
                }))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            if drop {
                assert_eq!(status, 200, "{provider} stream {stream}: {text}");
                let done = if stream { "data: [DONE]" } else { "mock reply: hello" };
                assert!(text.contains(done), "{provider}: {text}");
            } else {
                assert_eq!(status, 400, "{provider}: {text}");
                let body: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(body["error"]["param"], "logprobs", "{provider}: {body}");
            }
        }
    }
    let sent = mock.requests();
    assert!(
        sent.iter()
            .all(|r| r.body.get("logprobs").is_none() && r.body.get("n").is_none()),
        "nothing it cannot express reached the upstream"
    );
}

/// Bedrock beyond Claude: a `json_schema` response format goes to Qwen as
/// Converse's structured output, and the answer (JSON and streamed) is the
/// schema's JSON; Llama, which refuses structured output, gets the request
/// without it. A forced tool choice, which Llama refuses, is a 400 naming
/// `tool_choice`, or is sent as `auto` with `drop_params`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_structured_output_and_forced_tool_choices_fit_the_model() {
    let mock = MockUpstream::start().await;
    let mut yaml = String::from("router_settings:\n  num_retries: 0\nmodel_list:\n");
    yaml += "  - model_name: qwen\n    deployments:\n";
    yaml += &deployment("bedrock", &mock, "qwen.qwen3-32b-v1:0", "");
    for drop in [true, false] {
        yaml += &format!("  - model_name: llama-{drop}\n    deployments:\n");
        yaml += &deployment(
            "bedrock",
            &mock,
            "meta.llama3-3-70b-instruct-v1:0",
            &format!("        drop_params: {drop}\n"),
        );
    }
    let gateway = GatewayProcess::start_with(
        Path::new(BIN),
        &yaml,
        &[],
        &[("TEST_AWS_ID", "AKIDTEST"), ("TEST_AWS_SECRET", "test-secret")],
    );
    let http = reqwest::Client::new();
    let chat = |body: Value| {
        http.post(format!("{}/v1/chat/completions", gateway.base_url()))
            .json(&body)
            .send()
    };
    let schema = json!({"type": "object", "additionalProperties": false, "required": ["city", "rank", "size"],
        "properties": {"city": {"type": "string"}, "rank": {"type": "integer"}, "size": {"enum": ["big", "small"]}}});
    let expected = json!({"city": "mock", "rank": 0, "size": "big"});
    for stream in [false, true] {
        let mut body = user("qwen", "Name a city.");
        body["stream"] = json!(stream);
        body["response_format"] = json!({"type": "json_schema",
            "json_schema": {"name": "city", "strict": true, "schema": schema}});
        let response = chat(body).await.unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let content = if stream {
            sse_data(&text)
                .iter()
                .filter(|d| *d != "[DONE]")
                .filter_map(|d| {
                    serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_owned)
                })
                .collect::<String>()
        } else {
            let answer: Value = serde_json::from_str(&text).unwrap();
            answer["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
        };
        let parsed: Value = serde_json::from_str(&content).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(parsed, expected, "stream {stream}");
        let sent = mock.requests().pop().unwrap();
        let format = &sent.body["outputConfig"]["textFormat"];
        assert_eq!(format["type"], "json_schema", "{}", sent.body);
        assert_eq!(format["structure"]["jsonSchema"]["name"], "city");
        let sent_schema: Value =
            serde_json::from_str(format["structure"]["jsonSchema"]["schema"].as_str().unwrap()).unwrap();
        assert_eq!(sent_schema, schema);
    }
    let mut body = user("llama-false", "Name a city.");
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "city", "schema": schema}});
    let response = chat(body).await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let sent = mock.requests().pop().unwrap();
    assert!(sent.body.get("outputConfig").is_none(), "{}", sent.body);

    let tools: Value = serde_json::from_str(TOOLS).unwrap();
    for choice in [
        json!("required"),
        json!({"type": "function", "function": {"name": "get_time"}}),
    ] {
        let mut body = user("llama-false", "What time is it?");
        body["tools"] = tools.clone();
        body["tool_choice"] = choice.clone();
        let before = mock.requests().len();
        let response = chat(body.clone()).await.unwrap();
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], "tool_choice", "{error}");
        assert_eq!(mock.requests().len(), before, "refused before the upstream");

        body["model"] = json!("llama-true");
        let response = chat(body).await.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        let sent = mock.requests().pop().unwrap();
        let config = &sent.body["toolConfig"];
        assert!(
            config["toolChoice"].get("any").is_none() && config["toolChoice"].get("tool").is_none(),
            "{config}"
        );
        let names: Vec<&str> = config["tools"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["toolSpec"]["name"].as_str())
            .collect();
        let expected: &[&str] = if choice.is_object() {
            &["get_time"]
        } else {
            &["get_weather", "get_time"]
        };
        assert_eq!(names, expected);
    }
}

/// An Anthropic-compatible server without `/v1/messages/count_tokens`
/// (it answers 404): the count is the gateway's estimate, marked as one,
/// not a 502 a client would meet on every turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_on_a_server_without_the_route_is_estimated() {
    let mock = MockUpstream::start().await;
    let config = format!(
        "model_list:\n  - model_name: compatible\n    deployments:\n      - provider: anthropic\n        model: kimi\n        api_base: {}/no-count-route\n        api_key: k\n",
        mock.root_url()
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &config);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages/count_tokens", gateway.base_url()))
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "compatible", "messages": [{"role": "user", "content": "count these words please"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.headers());
    assert_eq!(response.headers()["x-switchyard-token-count"], "estimate");
    let body: Value = response.json().await.unwrap();
    assert!(body["input_tokens"].as_u64().is_some_and(|n| n > 0), "{body}");
    assert!(
        mock.requests()
            .iter()
            .any(|r| r.path.ends_with("/v1/messages/count_tokens")),
        "the upstream was asked first"
    );
}

/// Claude Code's thinking, on `/v1/messages` to an OpenAI deployment:
/// a reasoning model (GPT-5.1, which reasons only when asked) gets the
/// matching `reasoning_effort`; a model that refuses the field gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_thinking_reaches_openai_reasoning_models_as_an_effort() {
    let mock = MockUpstream::start().await;
    let mut yaml = String::from("model_list:\n");
    for (group, model) in [
        ("thinker", "gpt-5.1"),
        ("plain", "gpt-4o"),
        ("chatty", "gpt-5-chat-latest"),
    ] {
        yaml += &format!("  - model_name: {group}\n    deployments:\n");
        yaml += &deployment("openai", &mock, model, "");
    }
    let gateway = GatewayProcess::start(Path::new(BIN), &yaml);
    let http = reqwest::Client::new();
    for (group, thinking, expected) in [
        (
            "thinker",
            json!({"type": "enabled", "budget_tokens": 16000}),
            Some("high"),
        ),
        (
            "thinker",
            json!({"type": "enabled", "budget_tokens": 1024}),
            Some("low"),
        ),
        ("thinker", json!({"type": "disabled"}), None),
        ("plain", json!({"type": "enabled", "budget_tokens": 16000}), None),
        // GPT-5's chat model is of the family but refuses the field.
        ("chatty", json!({"type": "enabled", "budget_tokens": 16000}), None),
    ] {
        let response = http
            .post(format!("{}/v1/messages", gateway.base_url()))
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": group, "max_tokens": 20000, "thinking": thinking,
                "messages": [{"role": "user", "content": "think"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{group}: {}", response.text().await.unwrap());
        let sent = mock.requests().pop().unwrap();
        assert_eq!(
            sent.body.get("reasoning_effort").and_then(Value::as_str),
            expected,
            "{group} {thinking}: {}",
            sent.body
        );
    }
}

/// Gemini signs its tool calls and refuses a call sent back unsigned;
/// Anthropic clients keep a `tool_use` block's id, not fields they do not
/// know: on `/v1/messages` the signature rides in the id (JSON and
/// streamed), and goes back upstream as the call's `extra_content`, the
/// tool result naming the call's own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_signatures_ride_in_tool_use_ids_on_v1_messages() {
    let mock = MockUpstream::start().await;
    let config = format!(
        "model_list:\n  - model_name: gemini\n    deployments:\n{}",
        deployment("openai", &mock, "mock-model::signed_calls", "")
    );
    let gateway = GatewayProcess::start(Path::new(BIN), &config);
    let messages = |body: Value| {
        reqwest::Client::new()
            .post(format!("{}/v1/messages", gateway.base_url()))
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
    };
    let tools = json!([{"name": "lookup", "input_schema": {"type": "object"}}]);
    let ask = json!({"model": "gemini", "max_tokens": 100, "tools": tools, "tool_choice": {"type": "any"},
        "messages": [{"role": "user", "content": "look it up"}]});
    let response = messages(ask.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    let first: Value = response.json().await.unwrap();
    let block = first["content"][0].clone();
    assert_eq!(block["type"], "tool_use", "{first}");
    assert_eq!(block["id"], "call_mock_0__thought__sig-call_mock_0", "{first}");

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let text = messages(streamed).await.unwrap().text().await.unwrap();
    let start = sse_data(&text)
        .into_iter()
        .map(|data| serde_json::from_str::<Value>(&data).unwrap())
        .find(|e| e["type"] == "content_block_start" && e["content_block"]["type"] == "tool_use")
        .unwrap();
    assert_eq!(start["content_block"]["id"], block["id"], "{text}");

    let result = json!({"type": "tool_result", "tool_use_id": block["id"], "content": "found"});
    let conversation = json!({"model": "gemini", "max_tokens": 100, "tools": tools, "messages": [
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": [block]},
        {"role": "user", "content": [result]},
    ]});
    let response = messages(conversation).await.unwrap();
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap());
    let sent = mock.last_request().unwrap();
    let call = &sent.body["messages"][1]["tool_calls"][0];
    assert_eq!(call["id"], "call_mock_0", "{}", sent.body);
    assert_eq!(call["extra_content"]["google"]["thought_signature"], "sig-call_mock_0");
    assert_eq!(sent.body["messages"][2]["tool_call_id"], "call_mock_0", "{}", sent.body);
}
