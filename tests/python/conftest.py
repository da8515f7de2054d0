"""Fixtures for the OpenAI-SDK client tests against a real Switchyard gateway.

A session-scoped fixture starts the ``mock-upstream`` binary, writes a
gateway config that routes to it, starts the ``switchyard`` gateway and
hands out an ``openai.OpenAI`` client pointed at the gateway.

The binaries are taken from the ``GATEWAY_BIN`` and ``MOCK_UPSTREAM_BIN``
environment variables (``cargo xtask ci`` sets both).
"""

from __future__ import annotations

import collections
import os
import queue
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import anthropic
import openai
import pytest

STARTUP_TIMEOUT_S = 60.0
LISTEN_RE = re.compile(r"listening on (http://[A-Za-z0-9._:\[\]-]+)")
ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
LOOPBACK_NO_PROXY = "127.0.0.1,localhost,::1"


def _binary(var: str) -> str:
    """Return the executable named by ``var`` or fail the session loudly."""
    value = os.environ.get(var)
    if not value:
        pytest.fail(
            f"{var} is not set: point it at the built binary "
            "(`cargo xtask ci` does this after `cargo build --workspace --bins`)",
            pytrace=False,
        )
    path = Path(value)
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"{var}={value} is not an executable file", pytrace=False)
    return str(path)


def child_env() -> dict[str, str]:
    """The test process environment minus every ``SWITCHYARD_*`` variable.

    Loopback addresses are added to ``NO_PROXY`` so that a proxy configured on
    the machine never intercepts gateway-to-mock traffic.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    for key in ("NO_PROXY", "no_proxy"):
        existing = env.get(key, "").strip()
        env[key] = f"{existing},{LOOPBACK_NO_PROXY}" if existing else LOOPBACK_NO_PROXY
    env["NO_COLOR"] = "1"
    return env


def parse_listen_url(line: str) -> str | None:
    """Extract ``http://HOST:PORT`` from a ``listening on ...`` log line."""
    match = LISTEN_RE.search(ANSI_RE.sub("", line))
    if not match:
        return None
    url = match.group(1).rstrip(".:")
    if not re.search(r":\d+$", url):
        return None
    return url


class Service:
    """A child process whose combined output is drained by a thread."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._started = threading.Event()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._thread = threading.Thread(target=self._drain, name=f"{name}-output", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self.tail.append(line)
            if not self._started.is_set():
                self._lines.put(line)
        self._lines.put(None)

    def output(self) -> str:
        return "\n".join(self.tail) or "(no output)"

    def wait_for_url(self, timeout: float = STARTUP_TIMEOUT_S) -> str:
        """Block until the ``listening on http://HOST:PORT`` line appears."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                pytest.fail(
                    f"{self.name} did not report `listening on http://...` within "
                    f"{timeout:.0f}s ({' '.join(self.argv)}); output:\n{self.output()}",
                    pytrace=False,
                )
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait()
                pytest.fail(
                    f"{self.name} exited with status {code} before listening "
                    f"({' '.join(self.argv)}); output:\n{self.output()}",
                    pytrace=False,
                )
            url = parse_listen_url(line)
            if url:
                self._started.set()
                return url

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._thread.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def gateway_config(mock_url: str) -> str:
    """Gateway YAML routing to the mock upstream and the built-in mock provider."""
    return f"""\
server:
  host: 127.0.0.1
  port: 4000
model_list:
  - model_name: gpt-test
    deployments:
      - provider: openai
        model: mock-model
        api_base: {mock_url}/v1
        api_key: test-upstream-key
  - model_name: gpt-parallel
    deployments:
      - provider: openai
        model: "mock-model::parallel_tools"
        api_base: {mock_url}/v1
        api_key: test-upstream-key
  - model_name: mock-gpt
    deployments:
      - provider: mock
        model: mock-gpt-1
  - model_name: broken
    deployments:
      - provider: openai
        model: "mock-model::status=500"
        api_base: {mock_url}/v1
        api_key: test-upstream-key
  - model_name: claude-test
    deployments:
      - provider: anthropic
        model: claude-mock
        api_base: {mock_url}
        api_key: test-anthropic-key
  - model_name: bedrock-claude
    deployments:
      - provider: bedrock
        model: anthropic.claude-3-5-sonnet-20240620-v1:0
        api_base: {mock_url}
        aws_region: us-east-1
        aws_access_key_id: AKIDTEST
        aws_secret_access_key: test-secret
  - model_name: bedrock-claude-4
    deployments:
      - provider: bedrock
        model: anthropic.claude-sonnet-4-20250514-v1:0
        api_base: {mock_url}
        aws_region: us-east-1
        aws_access_key_id: AKIDTEST
        aws_secret_access_key: test-secret
  - model_name: dall-e-3
    deployments:
      - provider: openai
        model: dall-e-3
        api_base: {mock_url}/v1
        api_key: test-upstream-key
  - model_name: gpt-image-1
    deployments:
      - provider: openai
        model: gpt-image-1
        api_base: {mock_url}/v1
        api_key: test-upstream-key
  - model_name: omni-moderation-latest
    deployments:
      - provider: openai
        model: omni-moderation-latest
        api_base: {mock_url}/v1
        api_key: test-upstream-key
  - model_name: tts-1
    deployments:
      - provider: openai
        model: tts-1
        api_base: {mock_url}/v1
        api_key: test-upstream-key
  - model_name: whisper-1
    deployments:
      - provider: openai
        model: whisper-1
        api_base: {mock_url}/v1
        api_key: test-upstream-key
  - model_name: mock-images
    deployments:
      - provider: mock
        model: mock-image-model
  - model_name: bedrock-nova
    deployments:
      - provider: bedrock
        model: amazon.nova-lite-v1:0
        api_base: {mock_url}
        aws_region: us-east-1
        aws_access_key_id: AKIDTEST
        aws_secret_access_key: test-secret
pass_through:
  - path: /anthropic-native
    target: {mock_url}
    include_subpath: true
    forward_headers: true
    headers:
      x-api-key: upstream-key-for-tests
"""


@dataclass(frozen=True)
class Gateway:
    """Addresses of the running gateway and mock upstream."""

    url: str
    """Gateway base URL without a path, e.g. ``http://127.0.0.1:4000``."""
    mock_url: str
    """Mock upstream base URL without a path."""
    config_path: Path
    """The generated gateway config file."""


@pytest.fixture(scope="session")
def gateway() -> Iterator[Gateway]:
    """Start mock-upstream and the gateway for the whole test session."""
    gateway_bin = _binary("GATEWAY_BIN")
    mock_bin = _binary("MOCK_UPSTREAM_BIN")
    env = child_env()
    services: list[Service] = []
    with tempfile.TemporaryDirectory(prefix="switchyard-pytest-") as tmp:
        try:
            mock = Service("mock-upstream", [mock_bin, "--host", "127.0.0.1", "--port", "0"], env)
            services.append(mock)
            mock_url = mock.wait_for_url()

            config_path = Path(tmp) / "gateway.yaml"
            config_path.write_text(gateway_config(mock_url), encoding="utf-8")
            gw = Service(
                "switchyard",
                [gateway_bin, "--config", str(config_path), "--host", "127.0.0.1", "--port", "0"],
                env,
            )
            services.append(gw)
            url = gw.wait_for_url()
            yield Gateway(url=url, mock_url=mock_url, config_path=config_path)
        finally:
            for service in reversed(services):
                service.stop()


@pytest.fixture(scope="session")
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    """An OpenAI SDK client talking to the gateway's ``/v1`` API."""
    http_client = openai.DefaultHttpxClient(trust_env=False)
    sdk = openai.OpenAI(
        base_url=f"{gateway.url}/v1",
        api_key="test-key",
        max_retries=0,
        timeout=30.0,
        http_client=http_client,
    )
    try:
        yield sdk
    finally:
        sdk.close()


@pytest.fixture(scope="session")
def claude(gateway: Gateway) -> Iterator[anthropic.Anthropic]:
    """An Anthropic SDK client talking to the gateway's ``/v1/messages``."""
    http_client = anthropic.DefaultHttpxClient(trust_env=False)
    sdk = anthropic.Anthropic(
        base_url=gateway.url,
        api_key="test-key",
        max_retries=0,
        timeout=30.0,
        http_client=http_client,
    )
    try:
        yield sdk
    finally:
        sdk.close()
