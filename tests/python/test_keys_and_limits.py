"""Virtual keys through the official SDKs: bad keys, model allow-lists, and
an upstream 429 whose Retry-After the SDK's own retry honours.

A gateway of its own (with a master key, so every request needs a key) is
started for this module, on the session's mock upstream.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import anthropic
import httpx
import openai
import pytest

from conftest import Service, _binary, child_env

if TYPE_CHECKING:
    from conftest import Gateway

MASTER = "sk-master-key-for-python-tests"
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def keyed(gateway: Gateway) -> Iterator[str]:
    """A gateway that requires keys; yields its base URL."""
    config = f"""\
policy:
  master_key: {MASTER}
router_settings:
  num_retries: 0
model_list:
  - model_name: gpt-test
    deployments:
      - {{provider: openai, model: mock-model, api_base: "{gateway.mock_url}/v1", api_key: k}}
  - model_name: limited
    deployments:
      - {{provider: openai, model: "limited-model::fail_first=1,status=429,retry_after=1", api_base: "{gateway.mock_url}/v1", api_key: k}}
  - model_name: claude-test
    deployments:
      - {{provider: anthropic, model: claude-mock, api_base: "{gateway.mock_url}", api_key: k}}
"""
    with tempfile.TemporaryDirectory(prefix="switchyard-keys-") as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_text(config, encoding="utf-8")
        service = Service(
            "switchyard-keyed",
            [_binary("GATEWAY_BIN"), "--config", str(path), "--host", "127.0.0.1", "--port", "0"],
            child_env(),
        )
        try:
            yield service.wait_for_url()
        finally:
            service.stop()


def generate(url: str, body: dict[str, object]) -> str:
    with httpx.Client(trust_env=False, timeout=30.0) as http:
        resp = http.post(f"{url}/key/generate", json=body, headers={"authorization": f"Bearer {MASTER}"})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["key"])


def openai_client(url: str, key: str, retries: int = 0, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{url}/v1",
        api_key=key,
        max_retries=retries,
        timeout=30.0,
        http_client=openai.DefaultHttpxClient(trust_env=False, **kwargs),  # type: ignore[arg-type]
    )


def test_a_bad_key_is_an_authentication_error_in_both_sdks(keyed: str) -> None:
    with openai_client(keyed, "sk-not-a-key-000000000000") as sdk:
        with pytest.raises(openai.AuthenticationError) as excinfo:
            sdk.chat.completions.create(model="gpt-test", messages=HELLO)  # type: ignore[arg-type]
    err = excinfo.value
    assert err.status_code == 401
    assert err.type == "authentication_error"
    assert err.code == "invalid_api_key"

    claude = anthropic.Anthropic(
        base_url=keyed,
        api_key="sk-not-a-key-000000000000",
        max_retries=0,
        timeout=30.0,
        http_client=anthropic.DefaultHttpxClient(trust_env=False),
    )
    with claude, pytest.raises(anthropic.AuthenticationError) as aexc:
        claude.messages.create(model="claude-test", max_tokens=20, messages=HELLO)  # type: ignore[arg-type]
    assert aexc.value.status_code == 401
    body = aexc.value.body
    assert isinstance(body, dict) and body.get("type") == "error", body
    assert body["error"]["type"] == "authentication_error", body


def test_a_key_calls_only_its_models(keyed: str) -> None:
    key = generate(keyed, {"key_alias": "only-claude", "models": ["claude-test"]})
    with openai_client(keyed, key) as sdk:
        with pytest.raises(openai.PermissionDeniedError) as excinfo:
            sdk.chat.completions.create(model="gpt-test", messages=HELLO)  # type: ignore[arg-type]
        assert excinfo.value.status_code == 403
        assert excinfo.value.code == "model_not_allowed"
        # The model it may call answers, through the OpenAI API too.
        resp = sdk.chat.completions.create(model="claude-test", messages=HELLO)  # type: ignore[arg-type]
        assert resp.choices[0].message.content
        listed = [m.id for m in sdk.models.list()]
        assert listed == ["claude-test"], listed


def test_the_sdk_retries_a_429_after_its_retry_after(keyed: str) -> None:
    key = generate(keyed, {"key_alias": "retrying"})
    attempts: list[float] = []

    def count(request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            attempts.append(time.monotonic())

    with openai_client(keyed, key, retries=1, event_hooks={"request": [count]}) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model="limited", messages=HELLO)  # type: ignore[arg-type]
    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content
    assert len(attempts) == 2, attempts
    assert attempts[1] - attempts[0] >= 0.9, "the SDK waited for Retry-After: 1"


def test_a_429_reaches_the_sdk_with_retry_after(keyed: str) -> None:
    key = generate(keyed, {"key_alias": "limited", "rpm_limit": 1})
    with openai_client(keyed, key) as sdk:
        sdk.chat.completions.create(model="gpt-test", messages=HELLO)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as excinfo:
            sdk.chat.completions.create(model="gpt-test", messages=HELLO)  # type: ignore[arg-type]
    err = excinfo.value
    assert err.status_code == 429
    assert err.code == "rate_limit_exceeded"
    headers = err.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
