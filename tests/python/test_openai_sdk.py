"""The official OpenAI Python SDK against the Switchyard gateway.

The gateway routes ``gpt-test`` to the ``mock-upstream`` binary through the
``openai`` provider, ``mock-gpt`` to the built-in ``mock`` provider, and
``broken`` to an upstream that always answers HTTP 500 (see conftest.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

if TYPE_CHECKING:
    from conftest import Gateway

HELLO = [{"role": "user", "content": "hello there"}]
EXPECTED_REPLY = "mock reply: hello there"


def contains_key(value: Any, key: str) -> bool:
    """Whether ``key`` appears as a mapping key anywhere inside ``value``."""
    if isinstance(value, dict):
        return key in value or any(contains_key(v, key) for v in value.values())
    if isinstance(value, list):
        return any(contains_key(v, key) for v in value)
    return False


def stream_text(chunks: list[Any]) -> str:
    """Concatenate the content deltas of streamed chat chunks."""
    return "".join(
        choice.delta.content or ""
        for chunk in chunks
        for choice in chunk.choices
        if choice.delta is not None
    )


def test_chat_completion(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="gpt-test", messages=HELLO)

    assert resp.object == "chat.completion"
    assert len(resp.choices) == 1
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == EXPECTED_REPLY
    assert resp.choices[0].finish_reason is not None
    assert resp.usage is not None
    assert resp.usage.total_tokens > 0
    # Fields the SDK does not know about must survive the gateway untouched.
    assert contains_key(resp.model_extra or {}, "mock_extension") or contains_key(
        resp.to_dict(), "mock_extension"
    ), f"mock_extension was not passed through: {resp.to_dict()}"


def test_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="gpt-test", messages=HELLO)
    chunks = list(client.chat.completions.create(model="gpt-test", messages=HELLO, stream=True))

    assert len(chunks) >= 2, "expected the reply to be streamed in several chunks"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert stream_text(chunks) == full.choices[0].message.content == EXPECTED_REPLY
    finish_reasons = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert finish_reasons, "no chunk carried a finish_reason"


def test_streaming_include_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-test",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert chunks, "the stream produced no chunks"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.total_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert stream_text(chunks) == EXPECTED_REPLY


@pytest.mark.parametrize("base", ["endpoint", "v1"])
def test_azure_clients_name_the_group_as_their_deployment(gateway: Gateway, base: str) -> None:
    """``AzureOpenAI`` calls ``/openai/deployments/{name}/...`` (``base_url``
    ``.../v1``: ``/v1/deployments/{name}/...``) with ``api-version`` and an
    ``api-key`` header; the deployment in the path is the model group."""
    where: dict[str, Any] = (
        {"azure_endpoint": gateway.url} if base == "endpoint" else {"base_url": f"{gateway.url}/v1"}
    )
    azure = openai.AzureOpenAI(
        api_key="test-key",
        api_version="2024-10-21",
        max_retries=0,
        timeout=30.0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
        **where,
    )
    try:
        resp = azure.chat.completions.create(model="gpt-test", messages=HELLO)
        assert resp.choices[0].message.content == EXPECTED_REPLY
        chunks = list(azure.chat.completions.create(model="gpt-test", messages=HELLO, stream=True))
        assert stream_text(chunks) == EXPECTED_REPLY
        vectors = azure.embeddings.create(model="gpt-test", input=["a", "b"], encoding_format="float")
        assert len(vectors.data) == 2
        text = azure.completions.create(model="gpt-test", prompt="hello there", max_tokens=5)
        assert text.choices
        with pytest.raises(openai.NotFoundError) as missing:
            azure.chat.completions.create(model="no-such-group", messages=HELLO)
        assert missing.value.code == "model_not_found"
    finally:
        azure.close()


def test_embeddings_base64_default_matches_float(client: openai.OpenAI) -> None:
    inputs = ["first input", "second input", "third input"]
    # Without encoding_format the SDK asks for base64 and decodes it itself.
    default = client.embeddings.create(model="gpt-test", input=inputs)
    floats = client.embeddings.create(model="gpt-test", input=inputs, encoding_format="float")

    assert len(default.data) == 3
    assert [item.index for item in default.data] == [0, 1, 2]
    assert all(len(item.embedding) == 16 for item in default.data)
    assert len(floats.data) == 3
    assert all(len(item.embedding) == 16 for item in floats.data)
    for decoded, plain in zip(default.data, floats.data):
        assert decoded.embedding == pytest.approx(plain.embedding, rel=1e-5, abs=1e-6)


def test_models_list(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}

    assert {"gpt-test", "mock-gpt"} <= ids, f"models listed: {sorted(ids)}"


def test_models_retrieve(client: openai.OpenAI) -> None:
    model = client.models.retrieve("mock-gpt")

    assert (model.id, model.object, model.owned_by) == ("mock-gpt", "model", "switchyard")

    with pytest.raises(openai.NotFoundError) as excinfo:
        client.models.retrieve("no-such-model")
    assert excinfo.value.code == "model_not_found"


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.chat.completions.create(model="no-such-model", messages=HELLO)

    err = excinfo.value
    assert err.status_code == 404
    body = err.body if isinstance(err.body, dict) else {}
    assert (err.code or body.get("code")) == "model_not_found"
    assert err.type == "invalid_request_error"
    assert err.param == "model"


def test_invalid_role_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "wizard", "content": "x"}],  # type: ignore[list-item]
        )

    assert excinfo.value.status_code == 400
    assert isinstance(excinfo.value.body, dict), "error body is not an OpenAI error object"
    assert excinfo.value.body.get("message")
    assert excinfo.value.type == "invalid_request_error"
    assert excinfo.value.param is not None and excinfo.value.param.startswith("messages"), excinfo.value.param


@pytest.mark.parametrize(
    ("payload", "description"),
    [
        ({"model": "gpt-test"}, "missing messages"),
        ({"model": "gpt-test", "messages": "hello"}, "messages is not a list"),
    ],
)
def test_malformed_request_is_bad_request(
    gateway: Gateway, payload: dict[str, Any], description: str
) -> None:
    with httpx.Client(trust_env=False, timeout=30.0) as http:
        resp = http.post(f"{gateway.url}/v1/chat/completions", json=payload)

    assert resp.status_code == 400, f"{description}: {resp.status_code} {resp.text}"
    error = resp.json()["error"]
    assert error["message"]
    assert error["type"] == "invalid_request_error"


def test_builtin_mock_provider(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="mock-gpt", messages=HELLO)
    content = resp.choices[0].message.content

    assert isinstance(content, str) and content
    assert resp.usage is not None and resp.usage.total_tokens > 0

    chunks = list(client.chat.completions.create(model="mock-gpt", messages=HELLO, stream=True))
    assert stream_text(chunks) == content, "the stream says what the JSON answer says"


def test_base_url_without_v1_prefix(client: openai.OpenAI, gateway: Gateway) -> None:
    bare = client.with_options(base_url=gateway.url)
    resp = bare.chat.completions.create(model="gpt-test", messages=HELLO)

    assert resp.choices[0].message.content == EXPECTED_REPLY


def test_upstream_500_becomes_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as excinfo:
        client.chat.completions.create(model="broken", messages=HELLO)

    assert excinfo.value.status_code == 502
    assert isinstance(excinfo.value, openai.InternalServerError)
    assert excinfo.value.type == "upstream_error"
    assert "500" in excinfo.value.message, excinfo.value.message


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]


def test_tool_calls_streamed_and_not_agree(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "what is the weather?"}]
    full = client.chat.completions.create(
        model="gpt-test", messages=ask, tools=TOOLS, tool_choice="required"  # type: ignore[arg-type]
    )
    calls = full.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert full.choices[0].finish_reason == "tool_calls"

    name, arguments, finish = "", "", None
    for chunk in client.chat.completions.create(
        model="gpt-test", messages=ask, tools=TOOLS, tool_choice="required", stream=True  # type: ignore[arg-type]
    ):
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.index == 0 and call.function is not None:
                    name += call.function.name or ""
                    arguments += call.function.arguments or ""
            finish = choice.finish_reason or finish
    assert name == calls[0].function.name
    assert arguments == calls[0].function.arguments
    assert finish == "tool_calls"
