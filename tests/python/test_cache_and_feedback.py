"""The response cache, the request log and feedback through the official SDKs.

A gateway of its own (cache on, request log with prompts) in front of the
``mock-upstream`` binary: a repeated request is a hit with the same answer,
streams are replayed, ``cache`` controls pass through ``extra_body``, and
feedback on an answer lands in the request log next to its record.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import anthropic
import httpx
import openai
import pytest

from conftest import Service, _binary, child_env

HELLO = [{"role": "user", "content": "what is cached stays cached"}]


@pytest.fixture(scope="module")
def cached() -> Iterator[tuple[str, Path]]:
    """A gateway with the cache and the request log on: (url, log path)."""
    env = child_env()
    services: list[Service] = []
    with tempfile.TemporaryDirectory(prefix="switchyard-cache-") as tmp:
        try:
            mock = Service("mock-upstream", [_binary("MOCK_UPSTREAM_BIN"), "--host", "127.0.0.1", "--port", "0"], env)
            services.append(mock)
            mock_url = mock.wait_for_url()
            log_path = Path(tmp) / "requests.jsonl"
            config = Path(tmp) / "gateway.yaml"
            config.write_text(
                f"""\
cache:
  enabled: true
telemetry:
  request_log:
    path: {log_path}
    include_prompt: true
model_list:
  - model_name: gpt-test
    deployments:
      - provider: openai
        model: mock-model
        api_base: {mock_url}/v1
        api_key: test-upstream-key
  - model_name: claude-test
    deployments:
      - provider: anthropic
        model: claude-mock
        api_base: {mock_url}
        api_key: test-anthropic-key
""",
                encoding="utf-8",
            )
            gw = Service(
                "switchyard",
                [_binary("GATEWAY_BIN"), "--config", str(config), "--host", "127.0.0.1", "--port", "0"],
                env,
            )
            services.append(gw)
            yield gw.wait_for_url(), log_path
        finally:
            for service in reversed(services):
                service.stop()


@pytest.fixture(scope="module")
def sdk(cached: tuple[str, Path]) -> Iterator[openai.OpenAI]:
    url, _ = cached
    client = openai.OpenAI(
        base_url=f"{url}/v1",
        api_key="test-key",
        max_retries=0,
        timeout=30.0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )
    try:
        yield client
    finally:
        client.close()


def log_until(path: Path, ready: Callable[[list[dict]], bool], timeout: float = 30.0) -> list[dict]:
    """The request log's records once ``ready`` accepts them; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    lines: list[dict] = []
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if ready(lines):
                return lines
        time.sleep(0.025)
    pytest.fail(f"the request log never held the records expected; it has: {lines}")


def test_a_repeated_request_is_a_hit_with_the_same_answer(sdk: openai.OpenAI) -> None:
    first = sdk.chat.completions.with_raw_response.create(model="gpt-test", messages=HELLO, temperature=0)
    second = sdk.chat.completions.with_raw_response.create(model="gpt-test", messages=HELLO, temperature=0)
    assert first.headers["x-switchyard-cache"] == "miss"
    assert second.headers["x-switchyard-cache"] == "hit"
    assert second.parse().id == first.parse().id
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content

    fresh = sdk.chat.completions.with_raw_response.create(
        model="gpt-test", messages=HELLO, temperature=0, extra_body={"cache": {"no-cache": True}}
    )
    assert fresh.headers["x-switchyard-cache"] == "miss"
    assert fresh.parse().id != first.parse().id

    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="gpt-test", messages=HELLO, extra_body={"cache": {"ttl": "long"}})
    assert err.value.body["param"] == "cache.ttl"


def test_a_stream_is_replayed_from_the_cache(sdk: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "stream me twice"}]

    def run(no_store: bool = False) -> tuple[str, list[str], str]:
        extra = {"cache": {"no-store": True}} if no_store else None
        raw = sdk.chat.completions.with_raw_response.create(
            model="gpt-test", messages=messages, stream=True, extra_body=extra
        )
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return raw.headers["x-switchyard-cache"], [c.id for c in chunks], text

    state, ids, text = run()
    assert state == "miss" and text
    # The entry is written once the stream has ended. The polls ask not to
    # be stored, so that the hit can only be the first answer.
    deadline = time.monotonic() + 30.0
    while True:
        again, again_ids, again_text = run(no_store=True)
        if again == "hit" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert again == "hit"
    assert again_ids == ids and again_text == text


def test_feedback_lands_in_the_request_log(cached: tuple[str, Path], sdk: openai.OpenAI) -> None:
    url, log_path = cached
    answer = sdk.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "rate this answer"}]
    )
    request_id = answer.headers["x-request-id"]
    float(answer.headers["x-switchyard-overhead-ms"])

    claude = anthropic.Anthropic(
        base_url=url,
        api_key="test-key",
        max_retries=0,
        timeout=30.0,
        http_client=anthropic.DefaultHttpxClient(trust_env=False),
    )
    message = claude.messages.with_raw_response.create(
        model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "hello claude"}]
    )
    claude_id = message.headers["x-request-id"]
    claude.close()

    with httpx.Client(trust_env=False) as http:
        ok = http.post(f"{url}/v1/feedback", json={"request_id": request_id, "score": 0.9, "comment": "good"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["status"] == "recorded"
        bad = http.post(f"{url}/v1/feedback", json={"request_id": request_id, "score": 7})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "score"

    def complete(lines: list[dict]) -> bool:
        kinds = {(line.get("type"), line.get("request_id")) for line in lines}
        return {("request", request_id), ("request", claude_id), ("feedback", request_id)} <= kinds

    lines = log_until(log_path, complete)
    record = next(line for line in lines if line.get("request_id") == request_id and line["type"] == "request")
    assert record["prompt"] == "rate this answer"
    assert record["served_model"] == "gpt-test"
    assert record["status"] == 200
    feedback = next(line for line in lines if line["type"] == "feedback")
    assert feedback["request_id"] == request_id and feedback["score"] == 0.9
    claude_record = next(line for line in lines if line.get("request_id") == claude_id)
    assert claude_record["endpoint"] == "messages"
    assert claude_record["deployment"] == "claude-test/0"
