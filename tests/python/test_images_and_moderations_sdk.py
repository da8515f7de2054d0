"""The official OpenAI Python SDK's image and moderation calls through the gateway.

``dall-e-3``, ``gpt-image-1`` and ``omni-moderation-latest`` are served by the
``mock-upstream`` binary through the ``openai`` provider; ``mock-images`` by
the built-in mock provider (see conftest.py).
"""

from __future__ import annotations

import base64

import openai
import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_images_generate_returns_urls(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(
        model="dall-e-3", prompt="a lighthouse at dusk", size="1024x1792", quality="hd"
    )
    images = raw.parse()
    assert len(images.data) == 1
    assert images.data[0].url is not None and images.data[0].url.endswith(".png")
    assert images.data[0].revised_prompt == "a lighthouse at dusk"
    # OpenAI's list price of one HD 1024x1792 DALL-E 3 image.
    assert raw.headers["x-switchyard-response-cost"] == "0.120000000"
    assert raw.headers["x-switchyard-model"] == "dall-e-3"


def test_gpt_image_answers_base64_with_token_usage(client: openai.OpenAI) -> None:
    images = client.images.generate(model="gpt-image-1", prompt="two cats", n=2, quality="low")
    assert len(images.data) == 2
    for image in images.data:
        assert image.b64_json is not None
        assert base64.b64decode(image.b64_json).startswith(PNG_MAGIC)
    assert images.usage is not None
    assert images.usage.output_tokens == 2 * 272


def test_the_built_in_mock_draws_too(client: openai.OpenAI) -> None:
    images = client.images.generate(model="mock-images", prompt="a map", response_format="b64_json", n=3)
    assert len(images.data) == 3
    assert all(base64.b64decode(i.b64_json or "").startswith(PNG_MAGIC) for i in images.data)


def test_image_errors_are_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(model="dall-e-3", prompt="two boats", n=2)
    assert refused.value.param == "n"
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.images.generate(model="claude-test", prompt="x")
    assert "images" in str(unsupported.value)


def test_moderations_create_flags_what_the_upstream_flags(client: openai.OpenAI) -> None:
    result = client.moderations.create(input=["good morning", "a violent threat"])
    assert result.model == "omni-moderation-latest"
    assert [r.flagged for r in result.results] == [False, True]
    assert result.results[1].categories.violence is True
    assert result.results[1].category_scores.violence > 0.9
