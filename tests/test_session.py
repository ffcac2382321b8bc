"""URL → session parameters: pure parsing, no socket."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stt_server.config import SessionDefaults
from stt_server.errors import NotFoundError, RequestError
from stt_server.session import Endpoint, parse_session

PROVIDERS = {"whisper", "null"}


def parse(target: str):
    return parse_session(target, defaults=SessionDefaults(), default_provider="whisper", providers=PROVIDERS)


def test_defaults() -> None:
    params = parse("/v1/listen")
    assert params.endpoint is Endpoint.NATIVE
    assert (params.provider, params.language, params.audio.encoding, params.audio.sample_rate) == (
        "whisper", "en-US", "linear16", 16000)
    assert params.interim_results and params.endpointing_ms == 800


def test_seed_path_and_alias() -> None:
    for path in ("/ws/transcription/", "/ws/transcription"):
        params = parse(f"{path}?token=abc&stt_provider=null&language=de-DE")
        assert (params.endpoint, params.provider, params.language) == (Endpoint.SEED, "null", "de-DE")
        assert params.audio.encoding == "auto"


def test_value_containing_equals_and_repeats() -> None:
    params = parse("/v1/listen?token=YWJj%3D%3D&token=ZGVm==&language=en-GB&language=fr-FR")
    assert params.language == "fr-FR"  # the last wins


def test_full_native_query() -> None:
    params = parse("/v1/listen?provider=null&encoding=mulaw&sample_rate=8000&channels=2"
                   "&interim_results=false&punctuate=0&words=no&endpointing=300&utm_source=x")
    assert params.audio.encoding == "mulaw" and params.audio.sample_rate == 8000 and params.audio.channels == 2
    assert not params.interim_results and not params.punctuate and not params.words
    assert params.endpointing_ms == 300
    assert params.ignored_params == ("utm_source",)


def test_endpointing_false_disables() -> None:
    assert parse("/v1/listen?endpointing=false").endpointing_ms == 0


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("provider=google", "provider"),
        ("stt_provider=nope", "stt_provider"),
        ("encoding=opus7", "encoding"),
        ("sample_rate=abc", "sample_rate"),
        ("sample_rate=5", "sample_rate"),
        ("channels=0", "channels"),
        ("interim_results=maybe", "interim_results"),
        ("endpointing=-5", "endpointing"),
        ("language=en US;drop", "language"),
    ],
)
def test_invalid_values_name_the_parameter(query: str, parameter: str) -> None:
    with pytest.raises(RequestError) as info:
        parse(f"/v1/listen?{query}")
    assert info.value.parameter == parameter
    assert info.value.http_status == 400


def test_unknown_path_is_404() -> None:
    with pytest.raises(NotFoundError) as info:
        parse("/v2/listen")
    assert info.value.http_status == 404


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_query_parses_or_raises_a_request_error(query: str) -> None:
    try:
        parse("/v1/listen?" + query)
    except RequestError:
        pass
