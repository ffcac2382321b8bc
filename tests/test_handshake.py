"""The upgrade request → session context or an HTTP error; pure."""

from __future__ import annotations

import pytest

from stt_server.config import from_mapping
from stt_server.errors import AuthError, ForbiddenError, NotFoundError, RequestError
from stt_server.handshake import accept_session, token_from_request
from stt_server.logs import redact
from stt_server.tokens import TokenTable, parse_token_file

CONFIG = from_mapping({"providers": {"null": {"enabled": True}}})
TABLE = TokenTable(parse_token_file("good-token-1234 alice\nlimited-token-1234 bob providers=null\n")[0])


def accept(target: str, headers: dict | None = None):
    return accept_session(target, headers or {}, config=CONFIG, tokens=TABLE, providers={"whisper", "null"},
                          peer="127.0.0.1:1")


def test_three_ways_to_pass_a_token() -> None:
    assert token_from_request("/v1/listen?token=a%3Db", {}, []) == "a=b"
    assert token_from_request("/v1/listen", {"Authorization": "Bearer xyz"}, []) == "xyz"
    assert token_from_request("/v1/listen", {"Authorization": "Token xyz"}, []) == "xyz"
    assert token_from_request("/v1/listen", {}, ["token", "xyz"]) == "xyz"
    assert token_from_request("/v1/listen", {"Authorization": "Basic xyz"}, ["token"]) is None


def test_accepts_and_names_the_token() -> None:
    context = accept("/v1/listen?token=good-token-1234")
    assert context.token.name == "alice" and context.params.provider == "whisper"
    assert len(context.session_id) == 32
    assert "good-token" not in str(context.log_fields())


def test_errors_in_order_of_checks() -> None:
    with pytest.raises(NotFoundError):
        accept("/nope?token=good-token-1234")
    with pytest.raises(RequestError):
        accept("/v1/listen?token=nope&sample_rate=x")  # the URL is checked before the token
    with pytest.raises(AuthError):
        accept("/v1/listen?token=nope")
    with pytest.raises(ForbiddenError):
        accept("/v1/listen?token=limited-token-1234&provider=whisper")


def test_redaction() -> None:
    line = "GET /v1/listen?token=abc123&language=en Authorization: Bearer s3cr3t-s3cr3t"
    cleaned = redact(line)
    assert "abc123" not in cleaned and "s3cr3t" not in cleaned and "language=en" in cleaned
