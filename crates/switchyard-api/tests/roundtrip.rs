//! Wire types must keep every field they do not model.
#![allow(clippy::unwrap_used, reason = "tests")]

use serde_json::{Value, json};
use switchyard_api::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse,
    EmbeddingRequest, EmbeddingResponse, ErrorBody, MessageContent, Role,
};

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(value: &Value) -> Value {
    let typed: T = serde_json::from_value(value.clone()).unwrap();
    serde_json::to_value(&typed).unwrap()
}

#[test]
fn chat_request_keeps_unknown_parameters_everywhere() {
    let request = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "developer", "content": "be brief", "future_message_field": {"x": 1}},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?", "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}, "extra_call": true}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"}
        ],
        "stream": true,
        "stream_options": {"include_usage": true, "future_option": "yes"},
        "temperature": 0.2,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "a_parameter_from_tomorrow": {"nested": [1, 2, 3]},
        "seed": 7
    });
    assert_eq!(roundtrip::<ChatCompletionRequest>(&request), request);

    let typed: ChatCompletionRequest = serde_json::from_value(request).unwrap();
    assert!(typed.is_stream());
    assert!(typed.wants_stream_usage());
    assert_eq!(typed.messages[0].role, Role::Developer);
    assert!(matches!(typed.messages[1].content, Some(MessageContent::Parts(_))));
    assert_eq!(typed.messages[1].content_text(), "what is this?");
    assert_eq!(typed.extra["a_parameter_from_tomorrow"]["nested"][2], 3);
}

#[test]
fn chat_response_and_chunk_keep_unknown_fields() {
    let response = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                     "message": {"role": "assistant", "content": "hi", "refusal": null, "annotations": []},
                     "brand_new": 1}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,
                  "prompt_tokens_details": {"cached_tokens": 2}},
        "service_tier": "default"
    });
    assert_eq!(roundtrip::<ChatCompletionResponse>(&response), response);
    let typed: ChatCompletionResponse = serde_json::from_value(response).unwrap();
    assert_eq!(typed.usage.unwrap().cached_prompt_tokens(), 2);

    let chunk = json!({
        "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": "he", "reasoning": "x"}, "finish_reason": null, "logprobs": null}],
        "obfuscation": "abc"
    });
    assert_eq!(roundtrip::<ChatCompletionChunk>(&chunk), chunk);
}

#[test]
fn completion_and_embedding_types_keep_unknown_fields() {
    let request = json!({"model": "m", "prompt": ["a", "b"], "max_tokens": 5, "echo": false, "suffix": "z"});
    assert_eq!(roundtrip::<CompletionRequest>(&request), request);
    let tokens = json!({"model": "m", "prompt": [1, 2, 3]});
    assert_eq!(roundtrip::<CompletionRequest>(&tokens), tokens);

    let response = json!({"id": "x", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"text": "t", "index": 0, "finish_reason": "length", "logprobs": null}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}, "new_field": [true]});
    assert_eq!(roundtrip::<CompletionResponse>(&response), response);

    let embed =
        json!({"model": "e", "input": [[1, 2], [3]], "dimensions": 8, "user": "u", "encoding_format": "base64"});
    assert_eq!(roundtrip::<EmbeddingRequest>(&embed), embed);
    let embed_response = json!({"object": "list", "model": "e",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25], "new_entry_field": {"a": 1}},
                 {"object": "embedding", "index": 1, "embedding": "AAAAPw=="}],
        "usage": {"prompt_tokens": 2, "total_tokens": 2}, "extra_top": 1});
    assert_eq!(roundtrip::<EmbeddingResponse>(&embed_response), embed_response);
}

#[test]
fn error_code_may_be_a_number_upstream() {
    let body: ErrorBody = serde_json::from_value(json!({
        "error": {"message": "m", "type": "t", "param": null, "code": 429}
    }))
    .unwrap();
    assert_eq!(body.error.code.as_deref(), Some("429"));
}

#[test]
fn unknown_role_is_rejected() {
    let bad = json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]});
    assert!(serde_json::from_value::<ChatCompletionRequest>(bad).is_err());
}

#[test]
fn anthropic_types_keep_unknown_fields() {
    use switchyard_api::anthropic::{MessagesRequest, MessagesResponse, StreamEvent};
    let request = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 100,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "hi"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
            ]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42", "is_error": false}]}
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
        "tool_choice": {"type": "auto"},
        "top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}
    });
    assert_eq!(roundtrip::<MessagesRequest>(&request), request);
    let response = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"}, {"type": "text", "text": "hi", "citations": []}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 3, "output_tokens": 1, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 0, "service_tier": "standard"},
        "container": null
    });
    assert_eq!(roundtrip::<MessagesResponse>(&response), response);
    let event = json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\""}});
    assert_eq!(roundtrip::<StreamEvent>(&event), event);
}

#[test]
fn anthropic_server_tool_results_of_any_shape_round_trip() {
    let request = serde_json::json!({
        "model": "claude", "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "search, then run it"},
            {"role": "assistant", "content": [
                {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {"query": "x"}},
                {"type": "web_search_tool_result", "tool_use_id": "srv_1",
                 "content": {"type": "web_search_tool_result_error", "error_code": "max_uses_exceeded"}},
                {"type": "bash_code_execution_tool_result", "tool_use_id": "srv_2",
                 "content": {"type": "bash_code_execution_result", "stdout": "4\n", "stderr": "", "return_code": 0}},
                {"type": "web_search_tool_result", "tool_use_id": "srv_3",
                 "content": [{"type": "web_search_result", "url": "https://example.com", "title": "t", "encrypted_content": "e"}]}
            ]},
            {"role": "user", "content": "thanks"}
        ]
    });
    assert_eq!(
        roundtrip::<switchyard_api::anthropic::MessagesRequest>(&request),
        request
    );
    // Malformed content is still refused.
    for content in [
        json!(null),
        json!(42),
        json!([{"text": "no type"}]),
        json!({"text": "no type"}),
    ] {
        let bad = json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": content}]});
        assert!(
            serde_json::from_value::<switchyard_api::anthropic::MessagesRequest>(bad).is_err(),
            "{content}"
        );
    }
}

#[test]
fn token_prompts_are_sized_by_their_ids_not_their_digits() {
    use switchyard_api::{EmbeddingInput, Prompt};
    // 4 bytes an id: the gateway's 4-bytes-a-token estimate counts them exactly.
    let tokens: Prompt = serde_json::from_value(json!([1, 2, 3])).unwrap();
    assert_eq!(tokens.size_in_bytes(), 12);
    assert!(tokens.is_tokens());
    let batches: EmbeddingInput = serde_json::from_value(json!([[9906, 1917], [1]])).unwrap();
    assert_eq!(batches.size_in_bytes(), 12);
    let texts: Prompt = serde_json::from_value(json!(["héllo", "ab"])).unwrap();
    assert_eq!(texts.size_in_bytes(), 8);
    assert!(!texts.is_tokens());
}

/// Tool calls as some OpenAI-compatible servers send them (no id, a `null`
/// type, arguments as an object) are read, not refused.
#[test]
fn loosely_shaped_tool_calls_are_read() {
    let response: ChatCompletionResponse = serde_json::from_value(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null,
            "tool_calls": [
                {"type": "function", "function": {"name": "f", "arguments": {"a": 1}}},
                {"id": null, "type": null, "function": {"name": "g", "arguments": null}},
                {"id": "call_1", "type": "function", "function": {"name": "h", "arguments": "{\"b\":2}"}}
            ]
        }}]
    }))
    .unwrap();
    let calls = response.choices[0].message.tool_calls.clone().unwrap();
    let function = |i: usize| calls[i].function.clone().unwrap();
    assert_eq!((calls[0].id.as_str(), calls[0].kind.as_str()), ("", "function"));
    assert_eq!(
        serde_json::from_str::<Value>(&function(0).arguments).unwrap(),
        json!({"a": 1})
    );
    assert_eq!(
        (
            calls[1].id.as_str(),
            calls[1].kind.as_str(),
            function(1).arguments.as_str()
        ),
        ("", "function", "")
    );
    assert_eq!(
        (calls[2].id.as_str(), function(2).arguments.as_str()),
        ("call_1", "{\"b\":2}")
    );
}

/// Answers of loose OpenAI-compatible servers are read: no `object`, `id`
/// or `index`, `created` with a fraction; the usage chunk of a stream
/// without them either.
#[test]
fn loosely_shaped_answers_are_read() {
    let answer: ChatCompletionResponse = serde_json::from_value(json!({
        "created": 1_700_000_000.75,
        "model": "local",
        "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]
    }))
    .unwrap();
    assert_eq!(
        (answer.created, answer.id.as_str(), answer.choices[0].index),
        (1_700_000_000, "", 0)
    );
    let chunk: ChatCompletionChunk = serde_json::from_value(json!({
        "created": null,
        "choices": [{"delta": {"content": "h"}}]
    }))
    .unwrap();
    assert_eq!((chunk.created, chunk.choices[0].index), (0, 0));
    // Nulls where a server has nothing to say: an id, a delta, the choices
    // of a usage chunk.
    let chunk: ChatCompletionChunk = serde_json::from_value(json!({
        "id": null, "object": null,
        "choices": [{"index": null, "delta": null, "finish_reason": "stop"}]
    }))
    .unwrap();
    assert_eq!(
        (chunk.id.as_str(), chunk.choices[0].delta.content.as_deref()),
        ("", None)
    );
    let usage_chunk = json!({"id": "c", "choices": null, "usage": {"prompt_tokens": 1, "completion_tokens": 2}});
    let chunk: ChatCompletionChunk = serde_json::from_value(usage_chunk).unwrap();
    assert!(chunk.choices.is_empty() && chunk.usage.is_some());
    // A usage chunk may leave `choices` out (Fireworks).
    let chunk: ChatCompletionChunk = serde_json::from_value(json!({
        "id": "c", "object": "chat.completion.chunk",
        "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
    }))
    .unwrap();
    assert!(chunk.choices.is_empty() && chunk.usage.map(|u| u.completion_tokens) == Some(5));
    // An object without `choices` is not a chunk (a status object some
    // proxies interleave), and a translated stream reports it.
    assert!(serde_json::from_value::<ChatCompletionChunk>(json!({"object": "status", "status": "busy"})).is_err());
    assert!(serde_json::from_value::<ChatCompletionChunk>(json!({"object": "status", "usage": null})).is_err());
    // Without `choices`, an answer is still not one.
    assert!(serde_json::from_value::<ChatCompletionResponse>(json!({"id": "x", "usage": {}})).is_err());
}

#[test]
fn stream_deltas_are_read_leniently() {
    // MiniMax and some GLM hosts send an empty role; an unknown one is no role either.
    for role in [json!(""), json!("narrator"), Value::Null] {
        let chunk: ChatCompletionChunk = serde_json::from_value(json!({
            "id": "c", "choices": [{"index": 0, "delta": {"role": role, "content": "hi"}}]
        }))
        .unwrap();
        assert_eq!(chunk.choices[0].delta.role, None);
        assert_eq!(chunk.choices[0].delta.content.as_deref(), Some("hi"));
    }
    let chunk: ChatCompletionChunk = serde_json::from_value(json!({
        "id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]
    }))
    .unwrap();
    assert_eq!(chunk.choices[0].delta.role, Some(Role::Assistant));
    // Mistral's reasoning models stream content as parts: thinking, then text.
    let chunk: ChatCompletionChunk = serde_json::from_value(json!({
        "id": "c", "choices": [{"index": 0, "delta": {"content": [
            {"type": "thinking", "thinking": [{"type": "text", "text": "Let me "}, {"type": "text", "text": "see."}]}
        ]}}]
    }))
    .unwrap();
    let delta = &chunk.choices[0].delta;
    assert_eq!(delta.content, None);
    assert_eq!(delta.extra["reasoning_content"], "Let me see.");
    let chunk: ChatCompletionChunk = serde_json::from_value(json!({
        "id": "c", "choices": [{"index": 0, "delta": {"content": [
            {"type": "text", "text": "The answer"}, {"type": "text", "text": " is 4."}
        ]}}]
    }))
    .unwrap();
    assert_eq!(chunk.choices[0].delta.content.as_deref(), Some("The answer is 4."));
    assert!(!chunk.choices[0].delta.extra.contains_key("reasoning_content"));
    // Written back, a delta is OpenAI's: string content, reasoning beside it.
    let written = serde_json::to_value(&chunk.choices[0].delta).unwrap();
    assert_eq!(written, json!({"content": "The answer is 4."}));
}

#[test]
fn a_null_model_of_images_and_moderations_is_left_out() {
    // LangChain's moderation chain sends `model: null`.
    let request: switchyard_api::ModerationRequest =
        serde_json::from_value(json!({"input": "text", "model": null})).unwrap();
    assert_eq!(request.model, "");
    let request: switchyard_api::ImageGenerationRequest =
        serde_json::from_value(json!({"prompt": "a cat", "model": null})).unwrap();
    assert_eq!(request.model, "");
}
