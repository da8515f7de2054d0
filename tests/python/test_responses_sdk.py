"""The official OpenAI SDK's Responses API (``client.responses``) against Switchyard.

``gpt-test`` is an OpenAI-style deployment, ``claude-test`` an Anthropic one
and ``bedrock-nova`` a Bedrock Converse model: the gateway writes each
request as a chat completion and the answer back as a response object or
as Responses events. The mock replies ``mock reply: <last user text>`` and
calls a tool with ``{"q": "mock"}`` when one is required.
"""

from __future__ import annotations

import json
import time

import openai
import pytest

MODELS = ["gpt-test", "claude-test", "bedrock-nova"]

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}


@pytest.mark.parametrize("model", MODELS)
def test_plain_response(client: openai.OpenAI, model: str) -> None:
    response = client.responses.create(model=model, instructions="be brief", input="hello there")
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "mock reply: hello there"
    assert response.output[0].type == "message"
    assert response.instructions == "be brief"
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


@pytest.mark.parametrize("model", MODELS)
def test_streamed_response_matches_the_text_and_completes(client: openai.OpenAI, model: str) -> None:
    with client.responses.stream(model=model, input="stream this please") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "mock reply: stream this please"
    assert final.status == "completed"
    assert final.output_text == "mock reply: stream this please"
    assert final.usage is not None and final.usage.output_tokens > 0


def test_raw_events_come_in_order_with_sequence_numbers(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="gpt-test", input="count", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.output_item.added" in kinds and "response.output_text.done" in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created, completed = events[0], events[-1]
    assert created.response.id == completed.response.id
    assert created.response.status == "in_progress"


@pytest.mark.parametrize("model", MODELS)
def test_function_call_round_trip(client: openai.OpenAI, model: str) -> None:
    ask = [{"role": "user", "content": "weather in Paris?"}]
    first = client.responses.create(model=model, input=ask, tools=[WEATHER_TOOL], tool_choice="required")
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments)["q"] == "mock"
    assert calls[0].call_id

    # The whole conversation sent back, as clients that keep no state do.
    second = client.responses.create(
        model=model,
        tools=[WEATHER_TOOL],
        store=False,
        input=ask
        + [item.model_dump(exclude_none=True) for item in first.output]
        + [{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
    )
    assert second.status == "completed"
    assert second.output_text.startswith("mock reply")


def test_streamed_function_call(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="gpt-test",
        input="weather?",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
    ) as stream:
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments)["q"] == "mock"


def test_parallel_calls_stream_one_item_at_a_time(client: openai.OpenAI) -> None:
    """The upstream opens both calls in one chunk, then streams each one's
    arguments: the events still close each item before the next opens."""
    other = dict(WEATHER_TOOL, name="get_time")
    open_items: list[int] = []
    order: list[tuple[str, int]] = []
    with client.responses.stream(
        model="gpt-parallel", input="weather and time?", tools=[WEATHER_TOOL, other], tool_choice="required"
    ) as stream:
        for event in stream:
            if event.type == "response.output_item.added":
                assert not open_items, f"item {event.output_index} opened while {open_items} is open"
                open_items.append(event.output_index)
            elif event.type == "response.output_item.done":
                assert open_items == [event.output_index]
                open_items.clear()
            elif event.type.startswith("response.function_call_arguments"):
                assert open_items == [event.output_index]
                order.append((event.type, event.output_index))
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [call.name for call in calls] == ["get_weather", "get_time"]
    assert [json.loads(call.arguments)["q"] for call in calls] == ["mock", "mock"]
    assert len({call.call_id for call in calls}) == 2
    assert ("response.function_call_arguments.done", 1) in order


def test_previous_response_id_continues_and_responses_can_be_read_and_deleted(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="gpt-test", input="weather in Rome?", tools=[WEATHER_TOOL], tool_choice="required"
    )
    call = next(item for item in first.output if item.type == "function_call")
    second = client.responses.create(
        model="gpt-test",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "cloudy"}],
    )
    assert second.previous_response_id == first.id
    assert second.status == "completed" and second.output_text.startswith("mock reply")
    # A response's input items are its own input, not the continued one's.
    items = client.responses.input_items.list(second.id)
    assert [item.type for item in items.data] == ["function_call_output"]
    assert items.data[0].call_id == call.call_id
    first_items = client.responses.input_items.list(first.id, order="asc")
    assert [(item.type, item.role) for item in first_items.data] == [("message", "user")]
    assert first_items.data[0].content[0].text == "weather in Rome?"
    third = client.responses.create(model="gpt-test", previous_response_id=second.id, input="and tomorrow?")
    assert third.output_text == "mock reply: and tomorrow?"

    kept = client.responses.retrieve(first.id)
    assert kept.id == first.id
    assert [item.type for item in kept.output] == [item.type for item in first.output]
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gpt-test", previous_response_id=first.id, input="again")
    assert info.value.body["param"] == "previous_response_id"
    assert info.value.body["code"] == "previous_response_not_found"


def test_a_response_not_stored_cannot_be_continued(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-test", input="forget me", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_structured_output_format_reaches_the_upstream_and_parses(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="mock-gpt",
        input="give me json",
        text={"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}}},
    )
    assert response.status == "completed"
    assert response.text.format.type == "json_schema"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"background": True, "store": False}, "store"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_what_cannot_be_served_is_a_400_naming_the_field(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gpt-test", input="x", **kwargs)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="no-such-model", input="x")
    assert info.value.body["code"] == "model_not_found"


def test_an_upstream_failure_is_an_openai_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.responses.create(model="broken", input="x")
    assert info.value.status_code == 502


def test_a_background_response_is_polled_to_completion(client: openai.OpenAI) -> None:
    queued = client.responses.create(model="mock-gpt", input="answer later", background=True)
    assert queued.status == "queued"
    assert queued.background is True
    response = queued
    for _ in range(200):
        response = client.responses.retrieve(queued.id)
        if response.status not in ("queued", "in_progress"):
            break
        time.sleep(0.05)
    assert response.status == "completed"
    assert response.output_text
    # Finished: a cancel returns it as it is.
    assert client.responses.cancel(queued.id).status == "completed"
