use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use switchyard_api::anthropic::MessagesResponse;
use switchyard_api::{ChatCompletionChunk, ChatCompletionRequest};

use super::stream::to_chat_chunks;
use super::translate::{to_chat_response, to_messages_request};
use crate::ProviderError;
use crate::sse::Event;

fn chat(body: Value) -> ChatCompletionRequest {
    serde_json::from_value(body).unwrap()
}

#[test]
fn request_translation_covers_system_tools_images_and_results() {
    let req = chat(json!({
        "model": "claude",
        "messages": [
            {"role": "system", "content": "rule one"},
            {"role": "developer", "content": "rule two"},
            {"role": "user", "content": [
                {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]},
            {"role": "assistant", "content": "checking", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "one"},
            {"role": "tool", "tool_call_id": "c2", "content": [
                {"type": "text", "text": "two"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,BBBB"}}
            ]},
            {"role": "user", "content": "thanks"}
        ],
        "stop": "END", "temperature": 1.7, "top_p": 0.9, "user": "u1",
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}],
        "tool_choice": "required", "parallel_tool_calls": false
    }));
    let out = serde_json::to_value(to_messages_request(&req, 4096).unwrap()).unwrap();
    assert_eq!(out["system"][0]["text"], "rule one");
    assert_eq!(out["system"][1]["text"], "rule two");
    assert_eq!(out["max_tokens"], 4096);
    assert_eq!(out["stop_sequences"], json!(["END"]));
    assert_eq!(out["temperature"], 1.0);
    assert!(
        out.get("top_p").is_none(),
        "with temperature set, top_p is left out: {out}"
    );
    assert_eq!(out["metadata"], json!({"user_id": "u1"}));
    // Opus 4.7 and later take no sampling parameters, and think adaptively.
    let mut later = req.clone();
    later.model = "claude-opus-4-7".into();
    let out = serde_json::to_value(to_messages_request(&later, 4096).unwrap()).unwrap();
    assert!(out.get("temperature").is_none() && out.get("top_p").is_none(), "{out}");
    let thinker: ChatCompletionRequest = serde_json::from_value(json!({"model": "claude-opus-4-7",
        "reasoning_effort": "medium", "temperature": 0.2, "messages": [{"role": "user", "content": "hi"}]}))
    .unwrap();
    let out = serde_json::to_value(to_messages_request(&thinker, 4096).unwrap()).unwrap();
    assert_eq!(out["thinking"]["type"], "adaptive", "{out}");
    assert_eq!(out["output_config"], json!({"effort": "medium"}), "{out}");
    // An email address (Anthropic refuses one) goes as its SHA-256.
    let mut by_email = req.clone();
    by_email.extra.insert("user".into(), json!("alice@example.com"));
    let out = serde_json::to_value(to_messages_request(&by_email, 4096).unwrap()).unwrap();
    let id = out["metadata"]["user_id"].as_str().unwrap();
    assert_eq!(id.len(), 64, "{out}");
    assert!(
        !id.contains("alice") && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{out}"
    );
    assert_eq!(
        out["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        out["tools"][0],
        json!({"name": "f", "description": "d", "input_schema": {"type": "object"}})
    );
    let messages = out["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        3,
        "tool results and the next user turn merge into one user message"
    );
    let user = &messages[0]["content"];
    assert_eq!(user[0]["cache_control"], json!({"type": "ephemeral"}));
    assert_eq!(
        user[1]["source"],
        json!({"type": "base64", "media_type": "image/png", "data": "AAAA"})
    );
    assert_eq!(
        user[2]["source"],
        json!({"type": "url", "url": "https://example.com/cat.jpg"})
    );
    let assistant = &messages[1]["content"];
    assert_eq!(
        assistant[1],
        json!({"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}})
    );
    assert_eq!(assistant[2]["input"], json!({}));
    let results = &messages[2]["content"];
    assert_eq!(
        results[0],
        json!({"type": "tool_result", "tool_use_id": "c1", "content": "one"})
    );
    assert_eq!(results[1]["tool_use_id"], "c2");
    // A tool's parts keep their image (a computer-use screenshot).
    assert_eq!(results[1]["content"][0], json!({"type": "text", "text": "two"}));
    assert_eq!(
        results[1]["content"][1]["source"],
        json!({"type": "base64", "media_type": "image/png", "data": "BBBB"})
    );
    assert_eq!(results[2]["text"], "thanks");
}

#[test]
fn request_translation_rejects_what_it_cannot_express() {
    let base = json!({"model": "c", "messages": [{"role": "user", "content": "x"}]});
    let mut n = base.clone();
    n["n"] = json!(2);
    assert!(
        matches!(to_messages_request(&chat(n), 10), Err(ProviderError::InvalidRequest { param: Some(p), .. }) if p == "n")
    );
    let mut logprobs = base.clone();
    logprobs["logprobs"] = json!(true);
    assert!(to_messages_request(&chat(logprobs), 10).is_err());
    let bad_args = json!({"model": "c", "messages": [
        {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}
    ]});
    let err = to_messages_request(&chat(bad_args), 10).unwrap_err();
    assert!(err.to_string().contains("not valid JSON"), "{err}");
    let mut max = base;
    max["max_completion_tokens"] = json!(7);
    assert_eq!(to_messages_request(&chat(max), 10).unwrap().max_tokens, Some(7));
}

#[test]
fn response_translation_maps_tools_stop_reasons_and_cached_usage() {
    let response: MessagesResponse = serde_json::from_value(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [{"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"q": 1}},
                    {"type": "tool_use", "id": "t2", "name": "g", "input": {}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 7, "cache_creation_input_tokens": 3}
    }))
    .unwrap();
    let chat = serde_json::to_value(to_chat_response(response, 1, false)).unwrap();
    let choice = &chat["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "Let me check.");
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"],
        json!({"name": "f", "arguments": "{\"q\":1}"})
    );
    assert_eq!(choice["message"]["tool_calls"][1]["id"], "t2");
    assert_eq!(chat["usage"]["prompt_tokens"], 20);
    assert_eq!(chat["usage"]["completion_tokens"], 5);
    assert_eq!(chat["usage"]["prompt_tokens_details"]["cached_tokens"], 7);
    assert_eq!(chat["usage"]["cache_creation_input_tokens"], 3);
    for (anthropic, openai) in [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
    ] {
        assert_eq!(
            super::translate::finish_reason(Some(anthropic)).as_deref(),
            Some(openai)
        );
    }
}

fn events(items: &[(&str, Value)]) -> crate::sse::EventStream {
    let items: Vec<Result<Event, ProviderError>> = items
        .iter()
        .map(|(name, data)| {
            Ok(Event {
                event: (*name).to_owned(),
                data: data.to_string(),
                id: String::new(),
                retry: None,
            })
        })
        .collect();
    Box::pin(stream::iter(items))
}

fn tool_stream(stop: bool) -> Vec<(&'static str, Value)> {
    let mut items = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_9", "type": "message", "role": "assistant", "model": "claude", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 4, "output_tokens": 1, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 1}}}),
        ),
        ("ping", json!({"type": "ping"})),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        ),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"q\":"}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"x\"}"}}),
        ),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 9}}),
        ),
    ];
    if stop {
        items.push(("message_stop", json!({"type": "message_stop"})));
    }
    items
}

#[tokio::test]
async fn stream_conversion_streams_tool_arguments_and_cached_usage() {
    let chunks: Vec<_> = to_chat_chunks(events(&tool_stream(true)), true, 1, false)
        .collect()
        .await;
    let parsed: Vec<ChatCompletionChunk> = chunks
        .iter()
        .map(|c| serde_json::from_slice(&c.as_ref().unwrap().data).unwrap())
        .collect();
    let text: String = parsed
        .iter()
        .filter_map(|c| c.choices.first()?.delta.content.clone())
        .collect();
    assert_eq!(text, "Hi");
    let mut arguments = String::new();
    for chunk in &parsed {
        for call in chunk
            .choices
            .first()
            .and_then(|c| c.delta.extra.get("tool_calls"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            assert_eq!(call["index"], 0);
            if let Some(id) = call.get("id") {
                assert_eq!(id, "toolu_1");
            }
            arguments.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(arguments, "{\"q\":\"x\"}");
    let finish: Vec<_> = parsed
        .iter()
        .filter_map(|c| c.choices.first()?.finish_reason.clone())
        .collect();
    assert_eq!(finish, vec!["tool_calls"]);
    let usage = parsed.last().unwrap().usage.clone().unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (7, 9));
    assert_eq!(usage.cached_prompt_tokens(), 2);
    assert!(parsed.iter().all(|c| c.id == "msg_9"));
}

#[tokio::test]
async fn a_stream_without_message_stop_is_an_error() {
    let chunks: Vec<_> = to_chat_chunks(events(&tool_stream(false)), false, 1, false)
        .collect()
        .await;
    assert!(matches!(chunks.last(), Some(Err(ProviderError::Stream(m))) if m.contains("message_stop")));
    // The counts seen so far travel on the chunks (outside their JSON), so
    // a stream cut before its end is charged by them: the prompt's from
    // `message_start`, the output's from `message_delta`.
    let carried: Vec<(u64, u64, u64)> = chunks
        .iter()
        .filter_map(|c| c.as_ref().ok()?.usage.as_ref())
        .map(|u| (u.prompt_tokens, u.cached_prompt_tokens(), u.completion_tokens))
        .collect();
    assert_eq!(carried.first(), Some(&(7, 2, 1)), "{carried:?}");
    assert_eq!(carried.last(), Some(&(7, 2, 9)), "{carried:?}");
    let first: Value = serde_json::from_slice(&chunks[0].as_ref().unwrap().data).unwrap();
    assert!(
        first.get("usage").is_none_or(Value::is_null),
        "not in the chunk's JSON: {first}"
    );
    let error = vec![
        tool_stream(true)[0].clone(),
        (
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
    ];
    let chunks: Vec<_> = to_chat_chunks(events(&error), false, 1, false).collect().await;
    // An overload reported in the stream is the 529 it stands for.
    assert!(
        matches!(chunks.last(), Some(Err(ProviderError::Status { status: 529, message, kind: Some(kind), .. }))
            if message.contains("Overloaded") && &**kind == "overloaded_error"),
        "{:?}",
        chunks.last()
    );
    assert!(chunks.last().unwrap().as_ref().unwrap_err().is_retryable());
    for (kind, status) in [("rate_limit_error", 429), ("api_error", 500), ("timeout_error", 504)] {
        let data = json!({"type": "error", "error": {"type": kind, "message": "m"}}).to_string();
        assert!(
            matches!(super::stream::error_event(&data), ProviderError::Status { status: s, .. } if s == status),
            "{kind}"
        );
    }
    // A client or auth error after a 200 is a broken stream, not a verdict
    // on the request or the key.
    for kind in [
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "billing_error",
    ] {
        let data = json!({"type": "error", "error": {"type": kind, "message": "m"}}).to_string();
        assert!(
            matches!(super::stream::error_event(&data), ProviderError::Stream(_)),
            "{kind}"
        );
    }
    // A prompt too long keeps its kind, for the context-window fallbacks.
    let data = json!({"type": "error", "error": {"type": "invalid_request_error",
        "message": "prompt is too long: 210000 tokens > 200000 maximum"}})
    .to_string();
    let long = super::stream::error_event(&data);
    assert!(long.is_context_window_exceeded(), "{long:?}");
    assert!(matches!(
        super::stream::error_event("not json"),
        ProviderError::Stream(_)
    ));
}

#[test]
fn empty_text_parts_legacy_functions_and_tool_ids_fit_anthropic() {
    let req: ChatCompletionRequest = serde_json::from_value(json!({
        "model": "m",
        "tools": [{"type": "function", "function": {"name": "get_weather"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "weather?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": ""}], "tool_calls": [
                {"id": "functions.get_weather:0", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "sunny"}
        ]
    }))
    .unwrap();
    let out = serde_json::to_value(to_messages_request(&req, 100).unwrap()).unwrap();
    // Empty text blocks are left out.
    assert_eq!(
        out["messages"][0]["content"],
        json!([{"type": "text", "text": "weather?"}])
    );
    let call = &out["messages"][1]["content"][0];
    assert_eq!(call["type"], "tool_use");
    // An id Anthropic would refuse becomes one it takes, the same in the call and its result.
    let id = call["id"].as_str().unwrap();
    assert!(id.starts_with("functions_get_weather_0_"), "{id}");
    assert!(
        id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "{id}"
    );
    assert_eq!(out["messages"][2]["content"][0]["tool_use_id"], id);
    // Ids that differ only in the characters replaced stay apart; ids that fit stay as they are.
    assert_ne!(
        crate::chunks::tool_use_id("call.1"),
        crate::chunks::tool_use_id("call:1")
    );
    assert_eq!(crate::chunks::tool_use_id("toolu_01-A"), "toolu_01-A");
    // Ids past 64 characters are cut to 64, keeping apart ids that differ only at their end.
    let long = |end: &str| crate::chunks::tool_use_id(&format!("{}{end}", "x".repeat(80)));
    assert_eq!(long("a").len(), 64);
    assert_ne!(long("a"), long("b"));
    assert_eq!(long("a"), long("a"));
    assert_eq!(crate::chunks::tool_use_id(&"y".repeat(64)), "y".repeat(64));

    for legacy in [
        json!({"model": "m", "functions": [{"name": "f"}], "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "m", "messages": [{"role": "user", "content": "x"},
            {"role": "function", "name": "f", "content": "done"}]}),
    ] {
        let req: ChatCompletionRequest = serde_json::from_value(legacy).unwrap();
        assert!(matches!(
            to_messages_request(&req, 100),
            Err(ProviderError::InvalidRequest { .. })
        ));
    }
}

#[tokio::test]
async fn a_json_answer_is_the_first_json_tool_input_alone() {
    // Text before the JSON tool, and a second JSON tool block, are left out.
    let response: MessagesResponse = serde_json::from_value(json!({
        "id": "msg_j", "type": "message", "role": "assistant", "model": "claude",
        "content": [{"type": "text", "text": "Here it is:"},
                    {"type": "tool_use", "id": "t1", "name": "json_tool_call", "input": {"a": 1}},
                    {"type": "tool_use", "id": "t2", "name": "json_tool_call", "input": {"b": 2}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 3, "output_tokens": 4}
    }))
    .unwrap();
    let chat = serde_json::to_value(to_chat_response(response, 1, true)).unwrap();
    assert_eq!(chat["choices"][0]["message"]["content"], r#"{"a":1}"#);
    assert_eq!(chat["choices"][0]["finish_reason"], "stop");
    assert!(
        chat["choices"][0]["message"]
            .get("tool_calls")
            .is_none_or(Value::is_null)
    );

    let start = |index: u32, name: &str| {
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": format!("t{index}"), "name": name, "input": {}}}),
        )
    };
    let piece = |index: u32, json: &str| {
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": json}}),
        )
    };
    let stream = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_s", "type": "message", "role": "assistant", "model": "claude", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Here it is:"}}),
        ),
        start(1, "json_tool_call"),
        piece(1, r#"{"a":"#),
        piece(1, "1}"),
        start(2, "json_tool_call"),
        piece(2, r#"{"b":2}"#),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 4}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    let chunks: Vec<_> = to_chat_chunks(events(&stream), false, 1, true).collect().await;
    let mut text = String::new();
    let mut finish = None;
    for chunk in chunks {
        let chunk: ChatCompletionChunk = serde_json::from_slice(&chunk.unwrap().data).unwrap();
        let choice = serde_json::to_value(&chunk).unwrap()["choices"][0].clone();
        text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
        assert!(choice["delta"].get("tool_calls").is_none_or(Value::is_null), "{choice}");
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    assert_eq!(text, r#"{"a":1}"#);
    assert_eq!(finish.as_deref(), Some("stop"));

    // An empty object streams no piece of input: it is still `{}`.
    let stream = vec![
        stream[0].clone(),
        start(0, "json_tool_call"),
        piece(0, ""),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        stream[8].clone(),
        stream[9].clone(),
    ];
    let chunks: Vec<_> = to_chat_chunks(events(&stream), false, 1, true).collect().await;
    let mut text = String::new();
    for chunk in chunks {
        let chunk: ChatCompletionChunk = serde_json::from_slice(&chunk.unwrap().data).unwrap();
        let choice = serde_json::to_value(&chunk).unwrap()["choices"][0].clone();
        text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
    }
    assert_eq!(text, "{}");
}

#[test]
fn reasoning_effort_asks_claude_to_think_with_room_for_the_answer() {
    let req = chat(json!({
        "model": "claude",
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null,
             "thinking_blocks": [{"type": "thinking", "thinking": "need the tool", "signature": "sig-1"},
                                 {"type": "redacted_thinking", "data": "opaque"}],
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
        ],
        "reasoning_effort": "medium", "max_tokens": 100, "temperature": 0.3, "top_p": 0.5,
        "tools": [{"type": "function", "function": {"name": "f"}}]
    }));
    let out = serde_json::to_value(to_messages_request(&req, 4096).unwrap()).unwrap();
    assert_eq!(out["thinking"], json!({"type": "enabled", "budget_tokens": 2048}));
    assert_eq!(out["max_tokens"], 2148, "the budget is added to a smaller max_tokens");
    assert!(out.get("temperature").is_none() && out.get("top_p").is_none(), "{out}");
    let assistant = &out["messages"][1]["content"];
    assert_eq!(
        assistant[0],
        json!({"type": "thinking", "thinking": "need the tool", "signature": "sig-1"})
    );
    assert_eq!(assistant[1], json!({"type": "redacted_thinking", "data": "opaque"}));
    assert_eq!(assistant[2]["type"], "tool_use");

    // A forced tool call wins over a reasoning effort; without thinking, the
    // earlier thinking blocks are not sent.
    let mut forced = req.clone();
    forced.extra.insert("tool_choice".into(), json!("required"));
    let out = serde_json::to_value(to_messages_request(&forced, 4096).unwrap()).unwrap();
    assert!(out.get("thinking").is_none(), "{out}");
    assert_eq!(out["max_tokens"], 100);
    assert_eq!(out["messages"][1]["content"][0]["type"], "tool_use");

    let mut none = req.clone();
    none.extra.insert("reasoning_effort".into(), json!("none"));
    let out = serde_json::to_value(to_messages_request(&none, 4096).unwrap()).unwrap();
    assert!(out.get("thinking").is_none() && out["temperature"] == 0.3, "{out}");
}

#[test]
fn a_json_answer_asked_with_thinking_offers_the_json_tool_instead_of_forcing_it() {
    let req = chat(json!({
        "model": "claude", "messages": [{"role": "user", "content": "json please"}],
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 3000,
        "response_format": {"type": "json_object"}
    }));
    let out = serde_json::to_value(to_messages_request(&req, 4096).unwrap()).unwrap();
    assert_eq!(out["thinking"]["budget_tokens"], 1024);
    assert_eq!(out["tool_choice"], json!({"type": "auto"}));
    assert_eq!(out["tools"][0]["name"], "json_tool_call");
    // Tools the client forbade are not offered beside it, unless the
    // conversation already holds their calls.
    let mut forbidden = json!({
        "model": "claude", "messages": [{"role": "user", "content": "json please"}],
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 3000,
        "response_format": {"type": "json_object"}, "tool_choice": "none",
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    });
    let names = |body: &Value| -> Vec<String> {
        let out = serde_json::to_value(to_messages_request(&chat(body.clone()), 4096).unwrap()).unwrap();
        out["tools"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(names(&forbidden), ["json_tool_call"]);
    forbidden["messages"] = json!([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    ]);
    assert_eq!(names(&forbidden), ["get_weather", "json_tool_call"]);
    // From an effort, the JSON tool stays forced and thinking gives way.
    let effort = chat(json!({
        "model": "claude", "messages": [{"role": "user", "content": "json please"}],
        "reasoning_effort": "low", "response_format": {"type": "json_object"}
    }));
    let out = serde_json::to_value(to_messages_request(&effort, 4096).unwrap()).unwrap();
    assert!(out.get("thinking").is_none(), "{out}");
    assert_eq!(out["tool_choice"]["type"], "tool");
}

#[test]
fn thinking_comes_back_as_reasoning_content_and_signed_blocks() {
    let resp: MessagesResponse = serde_json::from_value(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [
            {"type": "thinking", "thinking": "Let me think.", "signature": "sig-9"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Answer."}
        ],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 3, "output_tokens": 5}
    }))
    .unwrap();
    let out = serde_json::to_value(to_chat_response(resp, 1, false)).unwrap();
    let message = &out["choices"][0]["message"];
    assert_eq!(message["content"], "Answer.");
    assert_eq!(message["reasoning_content"], "Let me think.");
    assert_eq!(
        message["thinking_blocks"],
        json!([{"type": "thinking", "thinking": "Let me think.", "signature": "sig-9"},
               {"type": "redacted_thinking", "data": "opaque"}])
    );
}

#[tokio::test]
async fn streamed_thinking_becomes_reasoning_deltas_and_a_signed_block() {
    let items = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_2", "type": "message", "role": "assistant", "model": "claude", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 4, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm, "}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "sunny."}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig-2"}}),
        ),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Sunny"}}),
        ),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 9}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    let chunks: Vec<_> = to_chat_chunks(events(&items), false, 1, false).collect().await;
    let deltas: Vec<Value> = chunks
        .into_iter()
        .map(|c| serde_json::from_slice::<Value>(&c.unwrap().data).unwrap())
        .filter_map(|c| c["choices"].get(0).map(|choice| choice["delta"].clone()))
        .collect();
    let reasoning: String = deltas.iter().filter_map(|d| d["reasoning_content"].as_str()).collect();
    assert_eq!(reasoning, "Hmm, sunny.");
    let blocks: Vec<&Value> = deltas.iter().filter_map(|d| d.get("thinking_blocks")).collect();
    assert_eq!(
        blocks,
        [&json!([{"index": 0, "type": "thinking", "thinking": "Hmm, sunny.", "signature": "sig-2"}])]
    );
    let text: String = deltas.iter().filter_map(|d| d["content"].as_str()).collect();
    assert_eq!(text, "Sunny");
}

/// A `max_tokens` above what the model writes is lowered to it (Anthropic
/// refuses it); models whose limit is not known keep what was asked.
#[test]
fn max_tokens_stay_within_the_models_output() {
    for (model, asked, sent) in [
        ("claude-3-5-haiku-20241022", 32_000, 8_192),
        ("claude-3-5-haiku-20241022", 1_000, 1_000),
        ("claude-opus-4-1", 40_000, 32_000),
        ("claude-opus-4-6", 100_000, 100_000),
        ("claude-prod", 100_000, 100_000),
    ] {
        let req = chat(json!({"model": model, "max_tokens": asked, "messages": [{"role": "user", "content": "hi"}]}));
        let out = serde_json::to_value(to_messages_request(&req, 100).unwrap()).unwrap();
        assert_eq!(out["max_tokens"], sent, "{model}");
    }
}

#[test]
fn blank_text_and_stop_sequences_are_left_out_and_jpg_is_jpeg() {
    let req = chat(json!({
        "model": "m",
        "stop": ["\n", " ", "END"],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "messages": [
            {"role": "system", "content": "  "},
            {"role": "user", "content": [
                {"type": "text", "text": "\n\n"},
                {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,AAAA"}},
                {"type": "text", "text": "what is it?"}
            ]},
            {"role": "assistant", "content": "\n\n", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"}
        ]
    }));
    let out = serde_json::to_value(to_messages_request(&req, 100).unwrap()).unwrap();
    assert_eq!(out["stop_sequences"], json!(["END"]));
    assert!(out.get("system").is_none_or(Value::is_null), "{out}");
    let user = out["messages"][0]["content"].as_array().unwrap();
    assert_eq!(user.len(), 2, "{user:?}");
    assert_eq!(user[0]["source"]["media_type"], "image/jpeg");
    let assistant = out["messages"][1]["content"].as_array().unwrap();
    assert_eq!(assistant.len(), 1, "{assistant:?}");
    assert_eq!(assistant[0]["type"], "tool_use");

    // Only blank stop sequences: none is sent.
    let only_blank = chat(json!({"model": "m", "stop": "\n", "messages": [{"role": "user", "content": "hi"}]}));
    let out = serde_json::to_value(to_messages_request(&only_blank, 100).unwrap()).unwrap();
    assert!(out.get("stop_sequences").is_none_or(Value::is_null), "{out}");

    // A data URL that is not base64 is refused here, naming the part.
    let svg = chat(json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/svg+xml,<svg/>"}}]}]}));
    match to_messages_request(&svg, 100) {
        Err(ProviderError::InvalidRequest { param, .. }) => {
            assert_eq!(param.as_deref(), Some("messages[0].content[0]"));
        }
        other => panic!("{other:?}"),
    }
}

/// A tool without parameters, streamed: Anthropic sends no argument text,
/// and the client still gets `{}`, as OpenAI sends.
#[tokio::test]
async fn a_streamed_call_of_a_tool_without_parameters_has_empty_object_arguments() {
    let items = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 4, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 9}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    let chunks: Vec<_> = to_chat_chunks(events(&items), false, 1, false).collect().await;
    let mut arguments = String::new();
    for chunk in &chunks {
        let parsed: ChatCompletionChunk = serde_json::from_slice(&chunk.as_ref().unwrap().data).unwrap();
        for call in parsed
            .choices
            .first()
            .and_then(|c| c.delta.extra.get("tool_calls"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            arguments.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(arguments, "{}");
}

/// What Anthropic would refuse, or lose, is made to fit: a tool schema
/// without a root `type`, a prefill ending in white space, a cache mark on
/// a tool message, PDFs as files, and tool definitions a conversation
/// holding tool calls needs beside a forced JSON tool.
#[test]
fn schemas_prefills_tool_cache_marks_pdfs_and_tool_definitions_fit_anthropic() {
    let pdf = "data:application/pdf;base64,JVBERi0=";
    let req = chat(json!({
        "model": "m",
        "tools": [
            {"type": "function", "function": {"name": "now", "parameters": {}}},
            {"type": "function", "function": {"name": "later", "parameters": null}},
            {"type": "function", "function": {"name": "typed", "parameters": {"type": "object", "properties": {}}}}
        ],
        "tool_choice": "none",
        "response_format": {"type": "json_object"},
        "messages": [
            {"role": "user", "content": [
                {"type": "file", "file": {"filename": "a.pdf", "file_data": pdf}},
                {"type": "image_url", "image_url": {"url": pdf}, "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "summarise"}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "noon", "cache_control": {"type": "ephemeral"}},
            {"role": "assistant", "content": "Here it is:\n "}
        ]
    }));
    let out = serde_json::to_value(to_messages_request(&req, 100).unwrap()).unwrap();
    let tools = out["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["now", "later", "typed", "json_tool_call"], "{out}");
    for tool in &tools[..3] {
        assert_eq!(tool["input_schema"]["type"], "object", "{tool}");
    }
    assert_eq!(out["tool_choice"]["name"], "json_tool_call");
    let user = out["messages"][0]["content"].as_array().unwrap();
    for document in &user[..2] {
        assert_eq!(document["type"], "document", "{document}");
        assert_eq!(document["source"]["media_type"], "application/pdf");
        assert_eq!(document["source"]["data"], "JVBERi0=");
    }
    assert_eq!(user[1]["cache_control"]["type"], "ephemeral");
    let result = &out["messages"][2]["content"][0];
    assert_eq!(result["type"], "tool_result", "{out}");
    assert_eq!(result["cache_control"]["type"], "ephemeral", "{result}");
    let prefill = &out["messages"][3];
    assert_eq!(prefill["role"], "assistant");
    assert_eq!(prefill["content"][0]["text"], "Here it is:", "{prefill}");
    // A part's cache mark in a tool result moves up to the result: Anthropic
    // refuses one inside its content.
    let marked: ChatCompletionRequest = serde_json::from_value(json!({"model": "m",
    "tools": [{"type": "function", "function": {"name": "shot", "parameters": {}}}],
    "messages": [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "shot", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [
            {"type": "text", "text": "the screen", "cache_control": {"type": "ephemeral"}}]}
    ]}))
    .unwrap();
    let out = serde_json::to_value(to_messages_request(&marked, 64).unwrap()).unwrap();
    let result = &out["messages"][2]["content"][0];
    assert_eq!(result["cache_control"]["type"], "ephemeral", "{result}");
    assert!(result["content"][0].get("cache_control").is_none(), "{result}");
    // Tool history in a request that offers no tools (a summary turn) goes
    // as text: Anthropic refuses tool blocks without tool definitions.
    let untooled: ChatCompletionRequest = serde_json::from_value(json!({"model": "m", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
        {"role": "user", "content": "summarise the conversation"}
    ]}))
    .unwrap();
    let out = serde_json::to_value(to_messages_request(&untooled, 64).unwrap()).unwrap();
    let kinds: Vec<&str> = out["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["content"].as_array().unwrap().iter())
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert!(kinds.iter().all(|k| *k == "text"), "{out}");
    let text = out.to_string();
    assert!(
        text.contains("called the tool `weather`") && text.contains("rain"),
        "{out}"
    );
    // A chat that opens with the assistant's greeting gets a user turn first.
    let greeted: ChatCompletionRequest = serde_json::from_value(json!({"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": "what time is it?"}
    ]}))
    .unwrap();
    let out = serde_json::to_value(to_messages_request(&greeted, 64).unwrap()).unwrap();
    let roles: Vec<&str> = out["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"], "{out}");
    assert_eq!(out["messages"][0]["content"][0]["text"], ".", "{out}");

    // A file by id cannot be sent: a 400 naming the part.
    let by_id = chat(json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-abc"}}]}]}));
    match to_messages_request(&by_id, 100) {
        Err(ProviderError::InvalidRequest { param, .. }) => {
            assert_eq!(param.as_deref(), Some("messages[0].content[0]"));
        }
        other => panic!("{other:?}"),
    }
}

/// OpenAI's defaults of parameters Anthropic cannot express ask for
/// nothing and pass; values that ask for audio or log probabilities do not.
#[test]
fn default_values_of_unsupported_parameters_pass() {
    let base = json!({"model": "c", "messages": [{"role": "user", "content": "x"}],
        "modalities": ["text"], "top_logprobs": 0, "logprobs": false});
    assert!(to_messages_request(&chat(base.clone()), 10).is_ok());
    for (key, value) in [("modalities", json!(["text", "audio"])), ("top_logprobs", json!(2))] {
        let mut asked = base.clone();
        asked[key] = value;
        let err = to_messages_request(&chat(asked.clone()), 10).unwrap_err();
        assert!(
            matches!(&err, ProviderError::InvalidRequest { param: Some(p), .. } if p == key),
            "{err}"
        );
        let dropped = super::translate::without_rejected(&chat(asked)).unwrap();
        assert!(!dropped.extra.contains_key(key));
    }
}

/// A tool that printed nothing: its result goes without content, as
/// Anthropic refuses empty text.
#[test]
fn an_empty_tool_result_goes_without_content() {
    for content in [
        json!(""),
        json!(" \n"),
        json!(null),
        json!([{"type": "text", "text": ""}]),
    ] {
        let req = chat(json!({"model": "c",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "user", "content": "run it"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": content}
        ]}));
        let out = serde_json::to_value(to_messages_request(&req, 10).unwrap()).unwrap();
        let result = &out["messages"][2]["content"][0];
        assert_eq!(result["type"], "tool_result", "{out}");
        assert!(result.get("content").is_none(), "{result}");
    }
}

/// A plain text file goes as a text document (Anthropic takes base64 for
/// PDFs only); a conversation of instructions alone is the user's turn;
/// an image's media type is the one its bytes show.
#[test]
fn text_files_instructions_alone_and_image_types_fit_anthropic() {
    let req = chat(json!({"model": "c", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_data": "data:text/plain;base64,SGVsbG8sIHdvcmxk"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,/9j/4AAQSkZJRgABAQ=="}}
    ]}]}));
    let out = serde_json::to_value(to_messages_request(&req, 10).unwrap()).unwrap();
    let blocks = &out["messages"][0]["content"];
    assert_eq!(
        blocks[0]["source"],
        json!({"type": "text", "media_type": "text/plain", "data": "Hello, world"})
    );
    assert_eq!(blocks[1]["source"]["type"], "base64");
    assert_eq!(blocks[1]["source"]["media_type"], "application/pdf");
    assert_eq!(blocks[2]["source"]["media_type"], "image/jpeg", "{out}");

    let alone = chat(json!({"model": "c", "messages": [{"role": "system", "content": "Write a haiku."}]}));
    let out = serde_json::to_value(to_messages_request(&alone, 10).unwrap()).unwrap();
    assert!(out.get("system").is_none_or(Value::is_null), "{out}");
    assert_eq!(out["messages"][0]["role"], "user");
    assert_eq!(out["messages"][0]["content"][0]["text"], "Write a haiku.");
}

/// Claude 5 models think unless told not to: their blocks go back on a tool
/// turn, `max_tokens` makes room for the thinking, and a request that turns
/// it off or forces a tool says so (Opus 5) or thinks as little as it can
/// (Opus 5.5, which always thinks and refuses a forced tool).
#[test]
fn claude_5_models_think_by_default() {
    let tool_loop = |model: &str, extra: Value| {
        let mut body = json!({
            "model": model,
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null,
                 "thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "sig-1"}],
                 "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
            ],
            "temperature": 0.3,
            "tools": [{"type": "function", "function": {"name": "f"}}]
        });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        chat(body)
    };
    for model in [
        "claude-opus-5",
        "claude-opus-5-5",
        "claude-fable-5-1",
        "claude-sonnet-5-5",
    ] {
        let out = serde_json::to_value(to_messages_request(&tool_loop(model, json!({})), 4096).unwrap()).unwrap();
        assert!(out.get("thinking").is_none(), "left to the model: {out}");
        assert_eq!(
            out["messages"][1]["content"][0],
            json!({"type": "thinking", "thinking": "", "signature": "sig-1"}),
            "{model}: the blocks go back"
        );
        assert_eq!(out["max_tokens"], 8192, "{model}: room for the thinking");
        assert!(out.get("temperature").is_none(), "{out}");
    }
    // Before Claude 5, thinking is only what is asked for.
    let out =
        serde_json::to_value(to_messages_request(&tool_loop("claude-opus-4-7", json!({})), 4096).unwrap()).unwrap();
    assert_eq!(out["messages"][1]["content"][0]["type"], "tool_use", "{out}");
    assert_eq!(out["max_tokens"], 4096);

    // Opus 5 may be told not to think: when asked, and for a forced tool.
    for extra in [
        json!({"reasoning_effort": "none"}),
        json!({"thinking": {"type": "disabled"}}),
        json!({"tool_choice": "required"}),
        json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}),
    ] {
        let out = serde_json::to_value(to_messages_request(&tool_loop("claude-opus-5", extra.clone()), 4096).unwrap())
            .unwrap();
        assert_eq!(out["thinking"], json!({"type": "disabled"}), "{extra}: {out}");
        assert_eq!(
            out["messages"][1]["content"][0]["type"], "tool_use",
            "{extra}: no blocks without thinking"
        );
        assert_eq!(out["max_tokens"], 4096);
    }
    // A JSON answer forces the JSON tool on Opus 5, thinking off.
    let json_schema = json!({"response_format": {"type": "json_schema",
        "json_schema": {"name": "a", "schema": {"type": "object", "properties": {"x": {"type": "string"}}}}}});
    let plain = |model: &str, extra: &Value| {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        chat(body)
    };
    let out = serde_json::to_value(to_messages_request(&plain("claude-opus-5", &json_schema), 4096).unwrap()).unwrap();
    assert_eq!(out["tool_choice"]["type"], "tool", "{out}");
    assert_eq!(out["thinking"], json!({"type": "disabled"}), "{out}");

    // Opus 5.5 always thinks: the JSON tool is offered, not forced; turned
    // off, it thinks as little as it can; a forced tool is refused, or sent
    // as `auto` by a deployment that drops what it cannot send.
    let out =
        serde_json::to_value(to_messages_request(&plain("claude-opus-5-5", &json_schema), 4096).unwrap()).unwrap();
    assert_eq!(out["tool_choice"], json!({"type": "auto"}), "{out}");
    assert!(out.get("thinking").is_none(), "{out}");
    let off = to_messages_request(&tool_loop("claude-opus-5-5", json!({"reasoning_effort": "none"})), 4096).unwrap();
    let off = serde_json::to_value(off).unwrap();
    assert!(off.get("thinking").is_none(), "{off}");
    assert_eq!(off["output_config"], json!({"effort": "low"}), "{off}");
    assert_eq!(off["messages"][1]["content"][0]["type"], "thinking", "{off}");
    let forced = tool_loop("claude-opus-5-5", json!({"tool_choice": "required"}));
    match to_messages_request(&forced, 4096) {
        Err(ProviderError::InvalidRequest { param, .. }) => assert_eq!(param.as_deref(), Some("tool_choice")),
        other => panic!("{other:?}"),
    }
    let sent = super::translate::as_sent(&forced, true);
    let out = serde_json::to_value(to_messages_request(&sent, 4096).unwrap()).unwrap();
    assert_eq!(out["tool_choice"], json!({"type": "auto"}), "{out}");
    assert_eq!(out["tools"].as_array().map(Vec::len), Some(1), "{out}");
    // An effort asked of it is sent as its effort, its thinking summarised.
    let asked = to_messages_request(&tool_loop("claude-opus-5-5", json!({"reasoning_effort": "high"})), 4096).unwrap();
    let asked = serde_json::to_value(asked).unwrap();
    assert_eq!(
        asked["thinking"],
        json!({"type": "adaptive", "display": "summarized"}),
        "{asked}"
    );
    assert_eq!(asked["output_config"], json!({"effort": "high"}), "{asked}");
}

/// Base64 as clients write it (wrapped, URL-safe, unpadded) goes as
/// Anthropic takes it; a PDF's data URL may carry parameters.
#[test]
fn media_base64_is_sent_standard() {
    let req = chat(json!({
        "model": "claude",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO\nRw0K"}},
            {"type": "image_url", "image_url": {"url": "data:application/pdf;name=a.pdf;base64,JVBERi0-_w"}},
            {"type": "file", "file": {"file_data": "data:text/plain;base64,aGk"}}
        ]}]
    }));
    let out = serde_json::to_value(to_messages_request(&req, 4096).unwrap()).unwrap();
    let content = &out["messages"][0]["content"];
    assert_eq!(content[0]["source"]["data"], "iVBORw0K", "{content}");
    assert_eq!(content[1]["type"], "document", "{content}");
    assert_eq!(content[1]["source"]["data"], "JVBERi0+/w==", "{content}");
    assert_eq!(content[2]["source"]["data"], "hi", "{content}");
    let broken = chat(json!({"model": "claude", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,not base64!"}}]}]}));
    assert!(matches!(
        to_messages_request(&broken, 4096),
        Err(ProviderError::InvalidRequest { .. })
    ));
}

/// A system message after the assistant's last message asks for its next
/// one: it goes as a user turn, so Claude answers it rather than continue
/// the assistant's message; one earlier stays a system prompt.
#[test]
fn instructions_after_the_assistant_are_a_user_turn() {
    let req = chat(json!({
        "model": "claude",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "system", "content": "Now summarise the chat"}
        ]
    }));
    let out = serde_json::to_value(to_messages_request(&req, 4096).unwrap()).unwrap();
    assert_eq!(out["system"], json!([{"type": "text", "text": "be brief"}]), "{out}");
    let last = out["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "user", "{out}");
    assert_eq!(last["content"][0]["text"], "Now summarise the chat", "{out}");
}

/// A blank user turn stays a turn: not a prefill of the assistant's last
/// message, nor an empty conversation.
#[test]
fn a_blank_user_turn_is_kept_as_a_turn() {
    let req = chat(json!({
        "model": "claude",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "  "}
        ]
    }));
    let out = serde_json::to_value(to_messages_request(&req, 4096).unwrap()).unwrap();
    let last = out["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["role"], &last["content"][0]["text"]),
        (&json!("user"), &json!(".")),
        "{out}"
    );
    let alone = chat(json!({"model": "claude", "messages": [{"role": "user", "content": ""}]}));
    let out = serde_json::to_value(to_messages_request(&alone, 4096).unwrap()).unwrap();
    assert_eq!(out["messages"][0]["content"][0]["text"], ".", "{out}");
    // Instructions with a blank turn: the instructions are the turn.
    let instructed = chat(json!({"model": "claude", "messages": [
        {"role": "system", "content": "Write a haiku."}, {"role": "user", "content": ""}]}));
    let out = serde_json::to_value(to_messages_request(&instructed, 4096).unwrap()).unwrap();
    assert_eq!(out["messages"][0]["content"][0]["text"], "Write a haiku.", "{out}");
    // Before tool results, nothing is added: they open their user message.
    let tools = chat(json!({"model": "claude",
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": ""},
        {"role": "tool", "tool_call_id": "c1", "content": "done"}
    ]}));
    let out = serde_json::to_value(to_messages_request(&tools, 4096).unwrap()).unwrap();
    assert_eq!(out["messages"][2]["content"][0]["type"], "tool_result", "{out}");
}

#[test]
fn cache_marks_on_messages_and_tools_reach_claude() {
    let mark = json!({"type": "ephemeral"});
    let req = chat(json!({
        "model": "claude",
        "tools": [
            {"type": "function", "function": {"name": "a", "parameters": {}}},
            {"type": "function", "function": {"name": "b", "parameters": {}}, "cache_control": mark}
        ],
        "messages": [
            {"role": "system", "content": "long instructions", "cache_control": mark},
            {"role": "user", "content": "question", "cache_control": mark},
            {"role": "assistant", "content": "let me look", "cache_control": mark, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "found"},
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
             "cache_control": mark}
        ]
    }));
    let out = serde_json::to_value(to_messages_request(&req, 100).unwrap()).unwrap();
    assert_eq!(out["system"][0]["cache_control"], mark, "{out}");
    assert!(out["tools"][0].get("cache_control").is_none(), "{out}");
    assert_eq!(out["tools"][1]["cache_control"], mark, "{out}");
    let messages = out["messages"].as_array().unwrap();
    assert_eq!(messages[0]["content"][0]["cache_control"], mark, "{out}");
    // The assistant's mark goes on its last block, the tool call.
    assert_eq!(messages[1]["content"][1]["type"], "tool_use", "{out}");
    assert_eq!(messages[1]["content"][1]["cache_control"], mark, "{out}");
    assert!(messages[1]["content"][0].get("cache_control").is_none(), "{out}");
    let last = messages[2]["content"].as_array().unwrap();
    assert!(last[1].get("cache_control").is_none(), "{out}");
    assert_eq!(last[2]["cache_control"], mark, "{out}");
}

/// Claude 4.6 and later models refuse to continue an assistant message:
/// the request is refused before it is sent, naming `messages` (another
/// deployment may take it); earlier models still take a prefill.
#[test]
fn a_prefill_goes_only_to_claude_models_that_continue_one() {
    let prefill = |model: &str| {
        chat(json!({
            "model": model,
            "messages": [{"role": "user", "content": "Give JSON"}, {"role": "assistant", "content": "{"}]
        }))
    };
    for model in [
        "claude-opus-4-6",
        "claude-sonnet-4-6-20260301",
        "claude-opus-5",
        "claude-mythos-preview",
    ] {
        match to_messages_request(&prefill(model), 100) {
            Err(ProviderError::InvalidRequest { param, .. }) => assert_eq!(param.as_deref(), Some("messages")),
            other => panic!("{model}: {other:?}"),
        }
    }
    for model in ["claude-sonnet-4-5", "claude-3-7-sonnet-latest", "claude-opus-4-1"] {
        let out = serde_json::to_value(to_messages_request(&prefill(model), 100).unwrap()).unwrap();
        assert_eq!(out["messages"][1]["content"][0]["text"], "{", "{model}: {out}");
    }
    // Ending with a user turn, the newer models take the conversation.
    let mut answered = prefill("claude-opus-4-6");
    answered
        .messages
        .push(serde_json::from_value(json!({"role": "user", "content": "go on"})).unwrap());
    assert!(to_messages_request(&answered, 100).is_ok());
}

/// Claude refuses to think before continuing an assistant message that
/// does not open with its thinking: the prefill is sent, without thinking.
#[test]
fn a_prefill_without_thinking_blocks_goes_without_thinking() {
    let req = chat(json!({
        "model": "claude-sonnet-4-5", "reasoning_effort": "low", "temperature": 0.2,
        "messages": [{"role": "user", "content": "Give JSON"}, {"role": "assistant", "content": "{"}]
    }));
    let out = serde_json::to_value(to_messages_request(&req, 100).unwrap()).unwrap();
    assert!(out.get("thinking").is_none(), "{out}");
    assert_eq!(out["temperature"], 0.2, "{out}");
    assert_eq!(out["messages"][1]["content"][0]["text"], "{", "{out}");
}

/// Thinking left unsent takes a message of thinking alone with it, and the
/// messages it stood between become one turn (Anthropic refuses a message
/// without content and two of one role in a row).
#[test]
fn a_message_of_thinking_alone_goes_with_its_thinking() {
    let req = chat(json!({
        "model": "claude-sonnet-4-5", "reasoning_effort": "low", "tool_choice": "required",
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "",
             "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "s"}]},
            {"role": "user", "content": "again"}
        ]
    }));
    let out = serde_json::to_value(to_messages_request(&req, 100).unwrap()).unwrap();
    assert!(out.get("thinking").is_none(), "{out}");
    let messages = out["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{out}");
    assert_eq!(messages[0]["role"], "user");
    let texts: Vec<&Value> = messages[0]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["text"])
        .collect();
    assert_eq!(texts, [&json!("q"), &json!("again")], "{out}");
}

/// Two assistant messages in a row (text, then a tool call with its
/// thinking) become one that opens with the thinking, as Claude requires.
#[test]
fn merged_assistant_messages_open_with_their_thinking() {
    let req = chat(json!({
        "model": "claude-sonnet-4-5", "reasoning_effort": "low",
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "Let me check."},
            {"role": "assistant", "content": null,
             "thinking_blocks": [{"type": "thinking", "thinking": "need the tool", "signature": "sig-1"}],
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
        ]
    }));
    let out = serde_json::to_value(to_messages_request(&req, 4096).unwrap()).unwrap();
    assert!(out.get("thinking").is_some(), "{out}");
    let kinds: Vec<&Value> = out["messages"][1]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["type"])
        .collect();
    assert_eq!(kinds, [&json!("thinking"), &json!("text"), &json!("tool_use")], "{out}");
}

/// Anthropic takes a tool call's input as an object only: `null` (how some
/// servers write a call without arguments) is `{}`, anything else a 400
/// naming the arguments.
#[test]
fn tool_call_arguments_must_be_an_object() {
    let with = |arguments: &str| {
        chat(json!({
            "model": "claude-sonnet-4-5",
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "done"}
            ]
        }))
    };
    let out = serde_json::to_value(to_messages_request(&with("null"), 100).unwrap()).unwrap();
    assert_eq!(out["messages"][1]["content"][0]["input"], json!({}), "{out}");
    for arguments in ["[1]", "\"x\"", "3"] {
        match to_messages_request(&with(arguments), 100) {
            Err(ProviderError::InvalidRequest { param, .. }) => {
                assert_eq!(param.as_deref(), Some("messages[1].tool_calls[0].function.arguments"))
            }
            other => panic!("{arguments}: {other:?}"),
        }
    }
}

/// A compatible server that sends a tool's whole input, or its thinking,
/// in the block's start: both reach the client.
#[tokio::test]
async fn content_in_a_blocks_start_is_streamed() {
    let items = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 4, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "look it up", "signature": "sig"}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
        ),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {"x": 1}}}),
        ),
        // A server that also streams what the start held: not sent twice.
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"x\":1}"}}),
        ),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 9}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    let chunks: Vec<_> = to_chat_chunks(events(&items), false, 1, false).collect().await;
    let parsed: Vec<Value> = chunks
        .iter()
        .map(|c| serde_json::from_slice(&c.as_ref().unwrap().data).unwrap())
        .collect();
    let deltas: Vec<&Value> = parsed.iter().map(|c| &c["choices"][0]["delta"]).collect();
    let reasoning: String = deltas.iter().filter_map(|d| d["reasoning_content"].as_str()).collect();
    assert_eq!(reasoning, "look it up");
    let blocks: Vec<&Value> = deltas.iter().filter_map(|d| d.get("thinking_blocks")).collect();
    assert_eq!(blocks[0][0]["signature"], "sig", "{blocks:?}");
    let arguments: String = deltas
        .iter()
        .filter_map(|d| d["tool_calls"].as_array())
        .flatten()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, "{\"x\":1}");
}

/// A JSON answer whose tool input comes whole in the block's start is the
/// answer's content, not `{}`.
#[tokio::test]
async fn a_json_answer_in_a_blocks_start_is_the_content() {
    let items = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 4, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "json_tool_call", "input": {"city": "Paris"}}}),
        ),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 9}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    let chunks: Vec<_> = to_chat_chunks(events(&items), false, 1, true).collect().await;
    let text: String = chunks
        .iter()
        .map(|c| serde_json::from_slice::<Value>(&c.as_ref().unwrap().data).unwrap())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "{\"city\":\"Paris\"}");
}
