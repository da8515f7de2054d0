"""The official Anthropic SDK against Switchyard's ``/v1/messages``.

``gpt-test`` is an OpenAI-style deployment and ``bedrock-nova`` a non-Claude
Bedrock model (the request is translated); ``claude-test`` is an Anthropic
deployment and ``bedrock-claude`` Claude on Bedrock (the request passes
through). The OpenAI SDK is also pointed at the Anthropic and Bedrock models
to check the other direction of translation.
"""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

MODELS = ["gpt-test", "claude-test", "bedrock-claude", "bedrock-nova"]

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}


@pytest.mark.parametrize("model", MODELS)
def test_plain_message(claude: anthropic.Anthropic, model: str) -> None:
    message = claude.messages.create(
        model=model,
        max_tokens=100,
        system="be brief",
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text == "mock reply: hello there"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_streaming_message(claude: anthropic.Anthropic, model: str) -> None:
    with claude.messages.stream(
        model=model,
        max_tokens=100,
        messages=[{"role": "user", "content": "stream this please"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "mock reply: stream this please"
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_tool_use_round_trip(claude: anthropic.Anthropic, model: str) -> None:
    first = claude.messages.create(
        model=model,
        max_tokens=100,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "weather in Paris?"}],
    )
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1
    assert uses[0].name == "get_weather"
    assert isinstance(uses[0].input, dict) and uses[0].input.get("q") == "mock"

    second = claude.messages.create(
        model=model,
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny"}]},
        ],
    )
    assert second.content[0].type == "text"
    assert second.stop_reason == "end_turn"


@pytest.mark.parametrize("model", MODELS)
def test_streaming_tool_use(claude: anthropic.Anthropic, model: str) -> None:
    with claude.messages.stream(
        model=model,
        max_tokens=100,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "weather?"}],
    ) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert len(uses) == 1
    assert uses[0].name == "get_weather"
    assert uses[0].input.get("q") == "mock"
    assert final.stop_reason == "tool_use"


def test_parallel_tool_use_streams_one_block_at_a_time(claude: anthropic.Anthropic) -> None:
    """An OpenAI-format upstream opens both calls in one chunk, then streams
    each one's arguments: each block still stops before the next starts, and
    the SDK's finished blocks are the right ones."""
    other = dict(WEATHER_TOOL, name="get_time")
    open_blocks: list[int] = []
    finished: list[str] = []
    with claude.messages.stream(
        model="gpt-parallel",
        max_tokens=100,
        tools=[WEATHER_TOOL, other],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "weather and time?"}],
    ) as stream:
        for event in stream:
            if event.type == "content_block_start":
                assert not open_blocks, f"block {event.index} started while {open_blocks} is open"
                open_blocks.append(event.index)
            elif event.type == "content_block_delta":
                assert open_blocks == [event.index]
            elif event.type == "content_block_stop":
                assert open_blocks == [event.index]
                open_blocks.clear()
                # The SDK names the block it just finished.
                finished.append(event.content_block.name)  # type: ignore[union-attr]
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["get_weather", "get_time"]
    assert finished == ["get_weather", "get_time"]
    assert [u.input.get("q") for u in uses] == ["mock", "mock"]
    assert final.stop_reason == "tool_use"


def anthropic_error(err: anthropic.APIStatusError) -> dict:
    """The Anthropic-shaped error body, checked for its envelope."""
    body = err.body
    assert isinstance(body, dict) and body.get("type") == "error", body
    assert isinstance(body.get("error"), dict) and body["error"].get("message"), body
    return body["error"]


def test_a_zero_max_tokens_is_a_bad_request(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(
            model="gpt-test",
            max_tokens=0,
            messages=[{"role": "user", "content": "x"}],
        )
    assert info.value.status_code == 400
    error = anthropic_error(info.value)
    assert error["type"] == "invalid_request_error"
    assert "max_tokens" in error["message"]


def test_unknown_model_is_not_found(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404
    error = anthropic_error(info.value)
    assert error["type"] == "not_found_error"
    assert "no-such-model" in error["message"]


@pytest.mark.parametrize("model", ["claude-test", "bedrock-claude", "bedrock-nova"])
def test_openai_sdk_against_anthropic_and_bedrock(client: openai.OpenAI, model: str) -> None:
    resp = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
    )
    assert resp.choices[0].message.content == "mock reply: hello there"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens > 0

    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "mock reply: hello there"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


@pytest.mark.parametrize("model", ["claude-test", "bedrock-claude"])
def test_openai_sdk_tool_call_against_anthropic_and_bedrock(client: openai.OpenAI, model: str) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL["input_schema"]}}]
    resp = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "weather?"}],
        tools=tools,
        tool_choice="required",
    )
    call = resp.choices[0].message.tool_calls[0]
    assert resp.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["q"] == "mock"


@pytest.mark.parametrize("model", MODELS)
def test_image_input(claude: anthropic.Anthropic, model: str) -> None:
    message = claude.messages.create(
        model=model,
        max_tokens=100,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "text", "text": "what is this"},
                ],
            }
        ],
    )
    assert message.content[0].text == "mock reply: what is this"


def test_models_list_and_retrieve_in_anthropic_shape(claude: anthropic.Anthropic, client: openai.OpenAI) -> None:
    everything = [model.id for model in client.models.list()]
    first = claude.models.list()
    assert first.data, "no models listed"
    model = first.data[0]
    assert (model.type, model.display_name) == ("model", model.id)
    assert model.created_at.year >= 2024

    # One model per page: the SDK follows `after_id` through every page, in
    # the order OpenAI clients see.
    paged = [model.id for model in claude.models.list(limit=1)]
    assert paged == everything
    one_page = claude.models.list(limit=2)
    assert (one_page.has_more, one_page.last_id) == (len(everything) > 2, everything[1])
    before = claude.models.list(before_id=everything[2], limit=1)
    assert [m.id for m in before.data] == [everything[1]] and before.has_more

    retrieved = claude.models.retrieve("claude-test")
    assert (retrieved.id, retrieved.type) == ("claude-test", "model")
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("no-such-model")
    with pytest.raises(anthropic.BadRequestError):
        claude.models.list(limit=0)


# Claude models that think (an Anthropic deployment, Claude Sonnet 4 on
# Bedrock); `bedrock-claude` is Claude 3.5 Sonnet, which cannot.
THINKING_MODELS = ["claude-test", "bedrock-claude-4"]

OPENAI_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}


@pytest.mark.parametrize("model", THINKING_MODELS)
def test_reasoning_effort_gets_claude_thinking_and_its_blocks_go_back(client: openai.OpenAI, model: str) -> None:
    ask = {"role": "user", "content": "weather in Paris?"}
    # Claude refuses a temperature other than 1 while thinking, and a
    # max_tokens at or under the budget: the gateway leaves the one out and
    # makes room for the other.
    first = client.chat.completions.create(
        model=model, reasoning_effort="low", max_tokens=100, temperature=0.2, messages=[ask]  # type: ignore[list-item]
    )
    message = first.choices[0].message
    extra = message.model_extra or {}
    assert extra.get("reasoning_content") == "mock thinking about it", extra
    blocks = extra["thinking_blocks"]
    assert blocks[0]["type"] == "thinking" and blocks[0]["signature"], blocks
    assert message.content == "mock reply: weather in Paris?"

    # A turn that answers a tool call sends the signed blocks back, as
    # Claude requires while thinking (the mock refuses the turn otherwise);
    # without them, the turn is served without thinking.
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"q": "Paris"}'}}
    turn = {"role": "assistant", "content": None, "tool_calls": [call], "thinking_blocks": blocks}
    result = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    second = client.chat.completions.create(
        model=model, reasoning_effort="low", tools=[OPENAI_WEATHER_TOOL], messages=[ask, turn, result]  # type: ignore[list-item]
    )
    assert second.choices[0].message.content.startswith("mock reply")
    assert (second.choices[0].message.model_extra or {}).get("reasoning_content") == "mock thinking about it"
    bare = {k: v for k, v in turn.items() if k != "thinking_blocks"}
    unthought = client.chat.completions.create(
        model=model, reasoning_effort="low", tools=[OPENAI_WEATHER_TOOL], messages=[ask, bare, result]  # type: ignore[list-item]
    )
    assert unthought.choices[0].message.content.startswith("mock reply")
    assert not (unthought.choices[0].message.model_extra or {}).get("reasoning_content")

    reasoning, streamed_blocks = "", []
    for chunk in client.chat.completions.create(
        model=model, reasoning_effort="medium", messages=[ask], stream=True  # type: ignore[list-item]
    ):
        for choice in chunk.choices:
            delta_extra = choice.delta.model_extra or {}
            reasoning += delta_extra.get("reasoning_content") or ""
            streamed_blocks += delta_extra.get("thinking_blocks") or []
    assert reasoning == "mock thinking about it"
    # Each streamed block carries its position, which the SDK's stream
    # accumulator needs; sent back, the gateway leaves it out.
    assert [b.pop("index") for b in streamed_blocks] == list(range(len(blocks)))
    assert streamed_blocks == blocks


@pytest.mark.parametrize("model", THINKING_MODELS)
def test_a_forced_call_then_its_answer_with_an_effort_are_both_served(client: openai.OpenAI, model: str) -> None:
    ask = {"role": "user", "content": "weather in Oslo?"}
    # Claude cannot think while a tool is forced: the effort gives way.
    first = client.chat.completions.create(
        model=model, reasoning_effort="low", tools=[OPENAI_WEATHER_TOOL], tool_choice="required", messages=[ask]  # type: ignore[list-item]
    )
    message = first.choices[0].message
    assert message.tool_calls and not (message.model_extra or {}).get("thinking_blocks")
    call = message.tool_calls[0]
    # Its answer carries no thinking to give back, so the next turn is
    # served without thinking rather than refused.
    second = client.chat.completions.create(
        model=model,
        reasoning_effort="low",
        tools=[OPENAI_WEATHER_TOOL],
        messages=[
            ask,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "snow"},
        ],  # type: ignore[list-item]
    )
    assert second.choices[0].message.content.startswith("mock reply")


def test_a_claude_model_that_cannot_think_ignores_the_effort(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="bedrock-claude", reasoning_effort="high", temperature=0.3, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "mock reply: hi"
    assert not (answer.choices[0].message.model_extra or {}).get("reasoning_content")


@pytest.mark.parametrize("model", THINKING_MODELS)
def test_responses_reasoning_effort_gives_a_reasoning_item(client: openai.OpenAI, model: str) -> None:
    response = client.responses.create(model=model, reasoning={"effort": "low"}, input="think first")
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "mock thinking about it"
    assert response.output_text == "mock reply: think first"
    with client.responses.stream(model=model, reasoning={"effort": "low"}, input="think first") as stream:
        deltas = [e.delta for e in stream if e.type == "response.reasoning_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "mock thinking about it"
    assert final.output[0].type == "reasoning"
    # Asked for a summary (as Codex does), the reasoning is also the summary.
    summarised = client.responses.create(model=model, reasoning={"effort": "low", "summary": "auto"}, input="think first")
    assert [part.text for part in summarised.output[0].summary] == ["mock thinking about it"]
    with client.responses.stream(
        model=model, reasoning={"effort": "low", "summary": "auto"}, input="think first"
    ) as stream:
        summary = [e.delta for e in stream if e.type == "response.reasoning_summary_text.delta"]
        final = stream.get_final_response()
    assert "".join(summary) == "mock thinking about it"
    assert [part.text for part in final.output[0].summary] == ["mock thinking about it"]


@pytest.mark.parametrize("model", THINKING_MODELS)
def test_responses_reasoning_items_carry_claudes_thinking_to_the_next_turn(client: openai.OpenAI, model: str) -> None:
    first = client.responses.create(model=model, reasoning={"effort": "low"}, input="weather?")
    reasoning = first.output[0]
    assert reasoning.type == "reasoning" and reasoning.encrypted_content
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"q": "Paris"}'}
    output = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
    ask = {"role": "user", "content": "weather?"}
    # The reasoning item sent back as it came gives Claude its signed
    # thinking before the call; without it, Claude refuses the turn.
    second = client.responses.create(
        model=model,
        reasoning={"effort": "low"},
        tools=[tool],
        input=[ask, reasoning.model_dump(exclude_none=True), call, output],
    )
    assert second.status == "completed" and second.output_text.startswith("mock reply")
    assert second.output[0].type == "reasoning"
    # Without it, the turn is served without thinking.
    bare = client.responses.create(model=model, reasoning={"effort": "low"}, tools=[tool], input=[ask, call, output])
    assert [item.type for item in bare.output] == ["message"]
    streamed = None
    with client.responses.stream(model=model, reasoning={"effort": "low"}, input="weather?") as stream:
        streamed = stream.get_final_response()
    assert streamed.output[0].encrypted_content == reasoning.encrypted_content


def test_pass_through_serves_the_native_api(gateway) -> None:
    """The SDK against a pass-through route: the upstream's own API, as it is."""
    sdk = anthropic.Anthropic(
        base_url=f"{gateway.url}/anthropic-native",
        api_key="client-key-not-sent-upstream",
        max_retries=0,
        timeout=30.0,
        http_client=anthropic.DefaultHttpxClient(trust_env=False),
    )
    try:
        raw = sdk.messages.with_raw_response.create(
            model="claude-sonnet-4",
            max_tokens=100,
            messages=[{"role": "user", "content": "hello there"}],
        )
        message = raw.parse()
        assert message.content[0].text == "mock reply: hello there"
        # Not routed by the gateway: none of its routing headers.
        assert "x-switchyard-model" not in raw.headers
        with sdk.messages.stream(
            model="claude-sonnet-4", max_tokens=100, messages=[{"role": "user", "content": "hello there"}]
        ) as stream:
            assert "".join(stream.text_stream) == "mock reply: hello there"
    finally:
        sdk.close()
