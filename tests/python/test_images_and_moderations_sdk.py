"""The official OpenAI Python SDK's image, moderation and audio calls through the gateway.

``dall-e-3``, ``gpt-image-1``, ``omni-moderation-latest``, ``tts-1`` and
``whisper-1`` are served by the ``mock-upstream`` binary through the
``openai`` provider; ``mock-images`` by the built-in mock provider (see
conftest.py).
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


def test_images_edit_uploads_several_images(client: openai.OpenAI) -> None:
    # The SDK sends a list of images as parts of a multipart form.
    raw = client.images.with_raw_response.edit(
        model="gpt-image-1",
        image=[("a.png", PNG_MAGIC + b"a" * 64, "image/png"), ("b.png", PNG_MAGIC + b"b" * 64, "image/png")],
        prompt="put them side by side",
        n=2,
    )
    images = raw.parse()
    assert len(images.data) == 2
    assert all(base64.b64decode(i.b64_json or "").startswith(PNG_MAGIC) for i in images.data)
    assert images.usage is not None
    # The prompt's 5 words and 272 tokens for each of the two images in.
    assert images.usage.input_tokens == 5 + 2 * 272
    assert float(raw.headers["x-switchyard-response-cost"]) > 0
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(model="gpt-image-1", image=("a.png", PNG_MAGIC, "image/png"), prompt=" ")
    assert refused.value.param == "prompt"


def test_the_built_in_mock_edits_too(client: openai.OpenAI) -> None:
    images = client.images.edit(
        model="mock-images", image=("a.png", PNG_MAGIC, "image/png"), prompt="add a hat", n=2, response_format="b64_json"
    )
    assert len(images.data) == 2
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


def test_an_image_request_without_a_model_names_the_missing_default(client: openai.OpenAI) -> None:
    # OpenAI's default image model, dall-e-2, is not configured here.
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt="a kite")
    assert refused.value.param == "model"
    assert "dall-e-2" in str(refused.value)


def test_speech_streams_back_the_audio(client: openai.OpenAI) -> None:
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="good morning", response_format="opus"
    ) as response:
        assert response.headers["content-type"] == "audio/opus"
        # tts-1: $15 per million characters.
        assert response.headers["x-switchyard-response-cost"] == "0.000180000"
        audio = response.read()
    assert audio.startswith(b"OggS")
    assert len(audio) == 4 + 32 * len("good morning")


def test_transcriptions_and_translations_take_an_upload(client: openai.OpenAI) -> None:
    audio = ("meeting.mp3", b"\x07" * 32_000, "audio/mpeg")
    transcript = client.audio.transcriptions.create(model="whisper-1", file=audio, language="en")
    assert transcript.text == "transcript of meeting.mp3"
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=audio, response_format="verbose_json"
    )
    assert verbose.duration == 2.0
    srt = client.audio.translations.create(model="whisper-1", file=audio, response_format="srt")
    assert "transcript of meeting.mp3" in srt
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model="claude-test", file=audio)
    assert "transcriptions" in str(refused.value)
