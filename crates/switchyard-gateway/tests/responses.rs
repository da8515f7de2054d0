//! `/v1/responses` end to end: what the upstream receives, continuations
//! with `previous_response_id`, kept responses per key, and streams that
//! fail after they started.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::Path;

use serde_json::{Value, json};
use switchyard_testkit::{GatewayProcess, MockUpstream, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const MASTER: &str = "sk-master-key-for-responses-01";
const KEY_A: &str = "sk-responses-key-a-0000000001";
const KEY_B: &str = "sk-responses-key-b-0000000002";

fn config(mock: &MockUpstream, policy: &str) -> String {
    let base = mock.base_url();
    format!(
        "{policy}router_settings:\n  retry_backoff_ms: 10\nmodel_list:\n  - model_name: gpt\n    deployments:\n      - {{provider: openai, model: mock-model, api_base: {base}}}\n  - model_name: reset\n    deployments:\n      - {{provider: openai, model: \"mock-model::reset_after=2\", api_base: {base}}}\n  - model_name: quiet\n    deployments:\n      - {{provider: openai, model: \"mock-model::no_usage\", api_base: {base}}}\n  - model_name: gemini\n    deployments:\n      - {{provider: openai, model: \"mock-model::signed_calls\", api_base: {base}}}\n  - model_name: deepseek\n    deployments:\n      - {{provider: openai, model: \"mock-model::reasons\", api_base: {base}}}\n  - model_name: groq\n    deployments:\n      - {{provider: openai, model: \"mock-model::refuses_reasoning\", api_base: {base}}}\n"
    )
}

async fn post(gw: &GatewayProcess, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/responses", gw.base_url()))
        .json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn call(gw: &GatewayProcess, method: reqwest::Method, key: &str, id: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .request(method, format!("{}/v1/responses/{id}", gw.base_url()))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The upstream gets a chat request: instructions as a system message,
/// items as messages, `max_output_tokens` as `max_tokens`, function tools
/// in the chat shape. A continuation sends the kept conversation first,
/// without the earlier instructions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_conversation_a_continuation_builds() {
    let mock = MockUpstream::start().await;
    let gw = GatewayProcess::start(Path::new(BIN), &config(&mock, ""));
    let (status, first) = post(
        &gw,
        None,
        &json!({
            "model": "gpt",
            "instructions": "first rules",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "first question"}]}],
            "max_output_tokens": 50,
            "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
            "metadata": {"session": "s-1"},
        }),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "system", "content": "first rules"},
               {"role": "user", "content": [{"type": "text", "text": "first question"}]}])
    );
    assert_eq!(sent.body["max_tokens"], 50);
    assert_eq!(sent.body["tools"][0]["function"]["name"], "lookup");
    // The client's metadata is echoed, not sent to a chat API that refuses
    // it without `store`.
    assert!(sent.body.get("metadata").is_none(), "{}", sent.body);
    assert_eq!(first["metadata"], json!({"session": "s-1"}));
    let answer = first["output"][0]["content"][0]["text"].as_str().unwrap().to_owned();

    let (status, second) = post(
        &gw,
        None,
        &json!({"model": "gpt", "instructions": "second rules", "previous_response_id": first["id"], "input": "second question"}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["previous_response_id"], first["id"]);
    let sent = mock.last_request().unwrap();
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "system", "content": "second rules"},
               {"role": "user", "content": [{"type": "text", "text": "first question"}]},
               {"role": "assistant", "content": answer},
               {"role": "user", "content": "second question"}])
    );
}

/// A kept response is read, continued and deleted only with the key that
/// made it; another key gets a 404, as for an id that never existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_responses_belong_to_the_key_that_made_them() {
    let mock = MockUpstream::start().await;
    let policy = format!("policy:\n  master_key: {MASTER}\n  keys:\n    - key: {KEY_A}\n    - key: {KEY_B}\n");
    let gw = GatewayProcess::start(Path::new(BIN), &config(&mock, &policy));
    let (status, made) = post(&gw, Some(KEY_A), &json!({"model": "gpt", "input": "private"})).await;
    assert_eq!(status, 200, "{made}");
    let id = made["id"].as_str().unwrap();

    let (status, read) = call(&gw, reqwest::Method::GET, KEY_A, id).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read, made);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let (status, body) = call(&gw, method.clone(), KEY_B, id).await;
        assert_eq!(status, 404, "{method}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (status, body) = post(
        &gw,
        Some(KEY_B),
        &json!({"model": "gpt", "previous_response_id": id, "input": "more"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "previous_response_id");
    let (status, body) = post(
        &gw,
        Some(KEY_A),
        &json!({"model": "gpt", "previous_response_id": id, "input": "more"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = call(&gw, reqwest::Method::DELETE, KEY_A, id).await;
    assert_eq!((status, &body["deleted"]), (200, &json!(true)), "{body}");
    let (status, _) = call(&gw, reqwest::Method::GET, KEY_A, id).await;
    assert_eq!(status, 404);

    // An id that is not text is an OpenAI-style error naming it.
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let (status, body) = call(&gw, method.clone(), KEY_A, "%FF").await;
        assert_eq!(status, 400, "{method}: {body}");
        assert_eq!(body["error"]["param"], "response_id", "{body}");
    }
    // Chat fields are refused by name, not sent on beside `input`.
    for (field, value) in [
        ("messages", json!([{"role": "user", "content": "other"}])),
        ("n", json!(4)),
    ] {
        let mut body = json!({"model": "gpt", "input": "hi"});
        body[field] = value;
        let (status, answer) = post(&gw, Some(KEY_A), &body).await;
        assert_eq!(status, 400, "{field}: {answer}");
        assert_eq!(answer["error"]["param"], field, "{answer}");
    }
}

/// The events of a streamed response.
async fn stream_events(gw: &GatewayProcess, body: &Value) -> Vec<Value> {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/responses", gw.base_url()))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

/// Gemini signs its tool calls (`extra_content.google.thought_signature`)
/// and refuses a call sent back without its signature: the signature is on
/// the `function_call` item, JSON or streamed, and goes back with the call
/// when the conversation continues from the kept response or from the
/// items the client sends again. An image a tool returned goes in a user
/// message after the outputs (chat APIs refuse it in a tool message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_their_outputs_go_back_as_the_upstream_takes_them() {
    let mock = MockUpstream::start().await;
    let gw = GatewayProcess::start(Path::new(BIN), &config(&mock, ""));
    let tools = json!([{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]);
    let signature = json!({"google": {"thought_signature": "sig-call_mock_0"}});
    let (status, first) = post(
        &gw,
        None,
        &json!({"model": "gemini", "input": "look it up", "tools": tools, "tool_choice": "required"}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let call = first["output"][0].clone();
    assert_eq!(call["type"], "function_call", "{first}");
    assert_eq!(call["extra_content"], signature, "{first}");
    let output = json!({"type": "function_call_output", "call_id": call["call_id"], "output": "found"});

    // From the kept response.
    let (status, body) = post(
        &gw,
        None,
        &json!({"model": "gemini", "previous_response_id": first["id"], "input": [output], "tools": tools}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.body["messages"][1]["tool_calls"][0]["extra_content"], signature);

    // From the items the client sends again.
    let input = json!([{"role": "user", "content": "look it up"}, call, output]);
    let (status, body) = post(&gw, None, &json!({"model": "gemini", "input": input, "tools": tools})).await;
    assert_eq!(status, 200, "{body}");

    // Streamed: on the item when it is added and in the final response,
    // which a continuation sends back.
    let events = stream_events(
        &gw,
        &json!({"model": "gemini", "input": "look it up", "tools": tools, "tool_choice": "required", "stream": true}),
    )
    .await;
    let added = events
        .iter()
        .find(|e| e["type"] == "response.output_item.added")
        .unwrap();
    assert_eq!(added["item"]["extra_content"], signature, "{added}");
    let completed = events.last().unwrap();
    assert_eq!(completed["type"], "response.completed", "{completed}");
    assert_eq!(completed["response"]["output"][0]["extra_content"], signature);
    let (status, body) = post(
        &gw,
        None,
        &json!({"model": "gemini", "previous_response_id": completed["response"]["id"], "input": [output], "tools": tools}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // A screenshot a tool returned reaches a chat upstream, which takes
    // only text in tool messages, in a user message after the outputs.
    let screenshot = json!({"type": "function_call_output", "call_id": call["call_id"], "output": [
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]});
    let input = json!([{"role": "user", "content": "look it up"}, call, screenshot]);
    let (status, body) = post(&gw, None, &json!({"model": "gemini", "input": input, "tools": tools})).await;
    assert_eq!(status, 200, "{body}");
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.body["messages"][3]["role"], "user", "{}", sent.body);
    assert_eq!(
        sent.body["messages"][3]["content"][0]["type"], "image_url",
        "{}",
        sent.body
    );

    // A call sent back without its signature is what Gemini refuses.
    let mut unsigned = call.clone();
    unsigned.as_object_mut().unwrap().remove("extra_content");
    let input = json!([{"role": "user", "content": "look it up"}, unsigned, output]);
    let (status, body) = post(&gw, None, &json!({"model": "gemini", "input": input, "tools": tools})).await;
    assert_eq!(status, 400, "{body}");
}

/// DeepSeek's thinking mode refuses a turn that called tools sent back
/// without its reasoning: the reasoning of a kept response (JSON or
/// streamed) goes back with the turn it led to. Groq refuses reasoning in
/// messages: the deployment gets the request again without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_goes_back_to_servers_that_want_it() {
    let mock = MockUpstream::start().await;
    let gw = GatewayProcess::start(Path::new(BIN), &config(&mock, ""));
    let tools = json!([{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]);
    let (status, first) = post(
        &gw,
        None,
        &json!({"model": "deepseek", "input": "look it up", "tools": tools, "tool_choice": "required"}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["output"][0]["type"], "reasoning", "{first}");
    assert_eq!(
        first["output"][0]["content"][0]["text"], "mock reasoning first",
        "{first}"
    );
    let call = first["output"][1].clone();
    assert_eq!(call["type"], "function_call", "{first}");
    let output = json!({"type": "function_call_output", "call_id": call["call_id"], "output": "found"});
    let (status, body) = post(
        &gw,
        None,
        &json!({"model": "deepseek", "previous_response_id": first["id"], "input": [output], "tools": tools}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.body["messages"][1]["reasoning_content"], "mock reasoning first");

    let events = stream_events(
        &gw,
        &json!({"model": "deepseek", "input": "look it up", "tools": tools, "tool_choice": "required", "stream": true}),
    )
    .await;
    let completed = &events.last().unwrap()["response"];
    assert_eq!(completed["status"], "completed", "{completed}");
    let (status, body) = post(
        &gw,
        None,
        &json!({"model": "deepseek", "previous_response_id": completed["id"], "input": [output], "tools": tools}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // A client that sends reasoning items back without their `content`
    // (Codex keeps only `encrypted_content`) still gives the text back,
    // from a JSON answer or a stream.
    for reasoning in [first["output"][0].clone(), completed["output"][0].clone()] {
        assert!(reasoning["encrypted_content"].is_string(), "{reasoning}");
        let mut bare = reasoning.clone();
        bare.as_object_mut().unwrap().remove("content");
        let input = json!([{"role": "user", "content": "look it up"}, bare, call, output]);
        let (status, body) = post(&gw, None, &json!({"model": "deepseek", "input": input, "tools": tools})).await;
        assert_eq!(status, 200, "{body}");
        let sent = mock.last_request().unwrap();
        assert_eq!(
            sent.body["messages"][1]["reasoning_content"], "mock reasoning first",
            "{}",
            sent.body
        );
    }

    // The items a client sends again carry it too; Groq refuses it once.
    let reasoning = first["output"][0].clone();
    let input = json!([{"role": "user", "content": "look it up"}, reasoning, call, output]);
    let (status, body) = post(&gw, None, &json!({"model": "deepseek", "input": input, "tools": tools})).await;
    assert_eq!(status, 200, "{body}");
    let before = mock.requests().len();
    for _ in 0..2 {
        let (status, body) = post(&gw, None, &json!({"model": "groq", "input": input, "tools": tools})).await;
        assert_eq!(status, 200, "{body}");
    }
    let echoed: Vec<bool> = mock.requests()[before..]
        .iter()
        .map(|r| r.body["messages"][1].get("reasoning_content").is_some())
        .collect();
    assert_eq!(echoed, [true, false, false]);
}

/// A stream that breaks after it started ends with an `error` event and
/// `response.failed`, never `response.completed`; a failed stream is not
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_ends_with_response_failed() {
    let mock = MockUpstream::start().await;
    let gw = GatewayProcess::start(Path::new(BIN), &config(&mock, ""));
    let response = reqwest::Client::new()
        .post(format!("{}/v1/responses", gw.base_url()))
        .json(&json!({"model": "reset", "input": "tell me a long story", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"), "{kinds:?}");
    assert!(kinds.contains(&"response.output_text.delta"), "{kinds:?}");
    assert_eq!(&kinds[kinds.len() - 2..], ["error", "response.failed"], "{kinds:?}");
    let failed = &events.last().unwrap()["response"];
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"]["message"].as_str().unwrap().contains("reset/0"),
        "{failed}"
    );
    let id = failed["id"].as_str().unwrap();
    let (status, _) = post(
        &gw,
        None,
        &json!({"model": "gpt", "previous_response_id": id, "input": "go on"}),
    )
    .await;
    assert_eq!(status, 400);
}

/// Clients send `"tools": [], "tool_choice": "auto"`: chat APIs refuse tool
/// settings without tools, so none go upstream; a choice that needs a tool
/// is a 400. An upstream without usage gets the client the estimates it is
/// charged, in JSON answers and in streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_tools_stay_home_and_answers_without_usage_report_estimates() {
    let mock = MockUpstream::start().await;
    let gw = GatewayProcess::start(Path::new(BIN), &config(&mock, ""));
    let (status, body) = post(
        &gw,
        None,
        &json!({"model": "gpt", "input": "hi", "tools": [], "tool_choice": "auto", "parallel_tool_calls": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = mock.last_request().unwrap().body;
    for key in ["tools", "tool_choice", "parallel_tool_calls"] {
        assert!(sent.get(key).is_none(), "{key} went upstream: {sent}");
    }
    assert_eq!(body["tools"], json!([]));
    let (status, body) = post(
        &gw,
        None,
        &json!({"model": "gpt", "input": "hi", "tools": [], "tool_choice": "required"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "tool_choice");

    let (status, body) = post(
        &gw,
        None,
        &json!({"model": "quiet", "input": "one two three four five six seven eight"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0, "{body}");
    assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0, "{body}");
    let text = reqwest::Client::new()
        .post(format!("{}/v1/responses", gw.base_url()))
        .json(&json!({"model": "quiet", "input": "one two three", "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let completed: Value = text
        .split("\n\n")
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str::<Value>(data).unwrap())
        .find(|e| e["type"] == "response.completed")
        .unwrap();
    assert!(
        completed["response"]["usage"]["output_tokens"].as_u64().unwrap() > 0,
        "{completed}"
    );
}

/// With `server.responses_store: redis`, responses are kept in the policy's
/// Redis: a response made on one replica is continued, read and deleted on
/// another; without it they stay in memory, even with the policy on Redis. While Redis is
/// down, a continuation is a 503 and a new request is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_redis_continue_each_others_responses() {
    let mut redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let policy = format!(
        "server:\n  responses_store: redis\npolicy:\n  master_key: {MASTER}\n  redis:\n    url: {}\n    timeout_ms: 300\n    failure_mode: fail_open\n  keys:\n    - key: {KEY_A}\n",
        redis.url()
    );
    let a = GatewayProcess::start(Path::new(BIN), &config(&mock, &policy));
    let b = GatewayProcess::start(Path::new(BIN), &config(&mock, &policy));
    let (status, made) = post(&a, Some(KEY_A), &json!({"model": "gpt", "input": "asked on a"})).await;
    assert_eq!(status, 200, "{made}");
    let id = made["id"].as_str().unwrap();

    let (status, body) = post(
        &b,
        Some(KEY_A),
        &json!({"model": "gpt", "previous_response_id": id, "input": "asked on b"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = mock.last_request().unwrap().body;
    assert_eq!(sent["messages"][0]["content"], "asked on a", "{sent}");
    assert_eq!(sent["messages"][2]["content"], "asked on b", "{sent}");
    let (status, read) = call(&b, reqwest::Method::GET, KEY_A, id).await;
    assert_eq!((status, &read), (200, &made));
    let (status, _) = call(&b, reqwest::Method::DELETE, KEY_A, id).await;
    assert_eq!(status, 200);
    let (status, _) = call(&a, reqwest::Method::GET, KEY_A, id).await;
    assert_eq!(status, 404);

    let memory_policy = policy.replace("server:\n  responses_store: redis\n", "");
    let local = GatewayProcess::start(Path::new(BIN), &config(&mock, &memory_policy));
    let (status, _) = call(&local, reqwest::Method::GET, KEY_A, made["id"].as_str().unwrap()).await;
    assert_eq!(
        status, 404,
        "a gateway keeping responses in memory does not read Redis's"
    );
    let (status, later) = post(&a, Some(KEY_A), &json!({"model": "gpt", "input": "before the outage"})).await;
    assert_eq!(status, 200, "{later}");
    redis.stop();
    let (status, body) = post(
        &b,
        Some(KEY_A),
        &json!({"model": "gpt", "previous_response_id": later["id"], "input": "during it"}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "response_store_unavailable");
    // A new answer is given even though it cannot be kept.
    let (status, body) = post(&a, Some(KEY_A), &json!({"model": "gpt", "input": "new during it"})).await;
    assert_eq!(status, 200, "{body}");
}

/// Sends `request`; its `x-switchyard-cache` header and its body.
async fn send_request(request: reqwest::RequestBuilder) -> (Option<String>, String) {
    let response = request.send().await.unwrap();
    let cache = response
        .headers()
        .get("x-switchyard-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    (cache, response.text().await.unwrap())
}

/// The response cache serves `/v1/responses` through the chat request it is
/// written as: a repeated request is a hit, written back as a new response
/// with its own id, JSON and streamed alike, without another upstream call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_response_comes_from_the_cache_as_a_new_response() {
    let mock = MockUpstream::start().await;
    let gw = GatewayProcess::start(Path::new(BIN), &config(&mock, "cache:\n  enabled: true\n"));
    let ask = json!({"model": "gpt", "input": "cache this answer", "store": false});
    let send = |body: Value| {
        let request = reqwest::Client::new()
            .post(format!("{}/v1/responses", gw.base_url()))
            .json(&body);
        send_request(request)
    };
    // Asks that store nothing, so a miss does not replace the entry.
    let peek = |body: Value| {
        let request = reqwest::Client::new()
            .post(format!("{}/v1/responses", gw.base_url()))
            .header("cache-control", "no-store")
            .json(&body);
        send_request(request)
    };
    let (first_cache, first) = send(ask.clone()).await;
    let (second_cache, second) = send(ask.clone()).await;
    assert_eq!(
        (first_cache.as_deref(), second_cache.as_deref()),
        (Some("miss"), Some("hit"))
    );
    let (first, second): (Value, Value) = (
        serde_json::from_str(&first).unwrap(),
        serde_json::from_str(&second).unwrap(),
    );
    assert_ne!(first["id"], second["id"]);
    assert_eq!(first["output"][0]["content"], second["output"][0]["content"]);
    let upstream_calls = mock.requests().len();

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    send(streamed.clone()).await;
    // A stream's entry is written once it has ended, after the last byte.
    let (mut cache, mut text) = peek(streamed.clone()).await;
    let mut misses = 0;
    for _ in 0..400 {
        if cache.as_deref() == Some("hit") {
            break;
        }
        misses += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        (cache, text) = peek(streamed.clone()).await;
    }
    assert_eq!(cache.as_deref(), Some("hit"));
    assert!(text.contains("event: response.completed"), "{text}");
    assert!(text.contains("cache this answer"), "{text}");
    assert_eq!(
        mock.requests().len(),
        upstream_calls + 1 + misses,
        "one upstream call for the two streams"
    );
}

/// `GET /v1/responses/{id}` with the master key, until its status is no
/// longer `queued` or `in_progress` (or 20 s pass).
async fn settled(gw: &GatewayProcess, id: &str) -> Value {
    for _ in 0..200 {
        let (status, body) = call(gw, reqwest::Method::GET, MASTER, id).await;
        assert_eq!(status, 200, "{body}");
        if !matches!(body["status"].as_str(), Some("queued" | "in_progress")) {
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("response {id} never finished");
}

async fn cancel(gw: &GatewayProcess, key: &str, id: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/responses/{id}/cancel", gw.base_url()))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// `background: true`: the response comes back `queued` at once, is
/// answered on its own while the client polls, and ends `completed` (or
/// `failed` with the error); a cancel stops one still running and keeps it
/// `cancelled` (a finished one is returned as it is, a foreground one
/// cannot be cancelled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_responses_are_polled_and_cancelled() {
    let mock = MockUpstream::start().await;
    let base = mock.base_url();
    let yaml = format!(
        "policy:\n  master_key: {MASTER}\nrouter_settings:\n  num_retries: 0\nmodel_list:\n  - model_name: gpt\n    deployments:\n      - {{provider: openai, model: mock-model, api_base: {base}}}\n  - model_name: slow\n    deployments:\n      - {{provider: openai, model: \"mock-model::first_byte_ms=400\", api_base: {base}}}\n  - model_name: stuck\n    deployments:\n      - {{provider: openai, model: \"mock-model::first_byte_ms=3000\", api_base: {base}}}\n  - model_name: broken\n    deployments:\n      - {{provider: openai, model: \"mock-model::status=503\", api_base: {base}}}\n"
    );
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let (status, queued) = post(
        &gw,
        Some(MASTER),
        &json!({"model": "slow", "input": "answer in the background", "background": true}),
    )
    .await;
    assert_eq!(status, 200, "{queued}");
    assert_eq!(queued["status"], "queued", "{queued}");
    assert_eq!(queued["background"], true, "{queued}");
    let id = queued["id"].as_str().unwrap().to_owned();
    let done = settled(&gw, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["background"], true, "{done}");
    assert!(done["output"][0]["content"][0]["text"].is_string(), "{done}");
    assert!(done["usage"]["output_tokens"].as_u64().unwrap() > 0, "{done}");
    // A finished response is returned as it is.
    let (status, again) = cancel(&gw, MASTER, &id).await;
    assert_eq!((status, again["status"].as_str()), (200, Some("completed")), "{again}");

    // One still running is the key's that made it: others cannot see or
    // cancel it; it cannot be continued yet; its key's cancel stops it, and
    // it stays cancelled.
    let made: Value = reqwest::Client::new()
        .post(format!("{}/key/generate", gw.base_url()))
        .bearer_auth(MASTER)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = made["key"].as_str().unwrap().to_owned();
    let (_, queued) = post(
        &gw,
        Some(&key),
        &json!({"model": "stuck", "input": "never mind", "background": true}),
    )
    .await;
    let id = queued["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(cancel(&gw, MASTER, &id).await.0, 404, "another caller's response");
    let (status, _) = call(&gw, reqwest::Method::GET, MASTER, &id).await;
    assert_eq!(status, 404);
    let (status, early) = post(
        &gw,
        Some(&key),
        &json!({"model": "gpt", "input": "next", "previous_response_id": id}),
    )
    .await;
    assert_eq!(
        (status, early["error"]["param"].as_str()),
        (400, Some("previous_response_id")),
        "{early}"
    );
    let (status, cancelled) = cancel(&gw, &key, &id).await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (200, Some("cancelled")),
        "{cancelled}"
    );
    // One deleted while it runs does not come back when its answer does.
    let (_, queued) = post(
        &gw,
        Some(&key),
        &json!({"model": "stuck", "input": "forget it", "background": true}),
    )
    .await;
    let deleted = queued["id"].as_str().unwrap().to_owned();
    let (status, _) = call(&gw, reqwest::Method::DELETE, &key, &deleted).await;
    assert_eq!(status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    let (_, later) = call(&gw, reqwest::Method::GET, &key, &id).await;
    assert_eq!(later["status"], "cancelled", "{later}");
    let (status, _) = call(&gw, reqwest::Method::GET, &key, &deleted).await;
    assert_eq!(status, 404);

    // A failure is kept with its error.
    let (_, queued) = post(
        &gw,
        Some(MASTER),
        &json!({"model": "broken", "input": "x", "background": true}),
    )
    .await;
    let failed = settled(&gw, queued["id"].as_str().unwrap()).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["error"]["message"].is_string(), "{failed}");
    assert!(failed["error"]["code"].is_string(), "{failed}");

    // A foreground response cannot be cancelled; an unknown one is a 404.
    let (_, foreground) = post(&gw, Some(MASTER), &json!({"model": "gpt", "input": "now"})).await;
    let (status, refused) = cancel(&gw, MASTER, foreground["id"].as_str().unwrap()).await;
    assert_eq!(status, 400, "{refused}");
    let (status, _) = cancel(&gw, MASTER, "resp_unknown").await;
    assert_eq!(status, 404);
    // Background answers are not streamed by the gateway, and are kept.
    for (extra, param) in [(json!({"stream": true}), "stream"), (json!({"store": false}), "store")] {
        let mut body = json!({"model": "gpt", "input": "x", "background": true});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, refused) = post(&gw, Some(MASTER), &body).await;
        assert_eq!(
            (status, refused["error"]["param"].as_str()),
            (400, Some(param)),
            "{refused}"
        );
    }
}

/// A background response holds its request's `server.max_concurrent_requests`
/// slot while it runs; reading, cancelling and deleting stored responses do
/// not need one, so a job that fills the limit can still be stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_responses_are_reached_when_jobs_fill_the_limit() {
    let mock = MockUpstream::start().await;
    let base = mock.base_url();
    let yaml = format!(
        "server:\n  max_concurrent_requests: 1\npolicy:\n  master_key: {MASTER}\nmodel_list:\n  - model_name: stuck\n    deployments:\n      - {{provider: openai, model: \"mock-model::first_byte_ms=5000\", api_base: {base}}}\n"
    );
    let gw = GatewayProcess::start(Path::new(BIN), &yaml);
    let (status, queued) = post(
        &gw,
        Some(MASTER),
        &json!({"model": "stuck", "input": "take your time", "background": true}),
    )
    .await;
    assert_eq!(status, 200, "{queued}");
    let id = queued["id"].as_str().unwrap().to_owned();
    gw.wait_in_flight(Some(MASTER)).await;
    // The job holds the one slot: another request waits its turn…
    let (status, busy) = post(&gw, Some(MASTER), &json!({"model": "stuck", "input": "me too"})).await;
    assert_eq!(status, 429, "{busy}");
    // …but the job itself is still reached.
    let (status, running) = call(&gw, reqwest::Method::GET, MASTER, &id).await;
    assert_eq!(status, 200, "{running}");
    let (status, cancelled) = cancel(&gw, MASTER, &id).await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (200, Some("cancelled")),
        "{cancelled}"
    );
    let (status, _) = call(&gw, reqwest::Method::DELETE, MASTER, &id).await;
    assert_eq!(status, 200);
}
