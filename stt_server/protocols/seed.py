"""The seed's protocol on ``/ws/transcription/``: the Django design's client works unchanged.

The seed was a djangochannelsrestframework ``AsyncAPIConsumer`` with one action::

    client → {"action": "transcribe", "request_id": 1700000000000, "voice_stream": "<base64>"}
    server ← {"errors": [], "data": "{\\"transcript\\": \\"...\\"}", "action": "transcribe",
              "response_status": 200, "request_id": 1700000000000}

``data`` is a JSON *string* (the seed's client parses it a second time), and the transcript is
the session's running text: finals so far plus the current interim, so a page that replaces
its text with each reply shows it growing.

When replies go out:

* one per ``transcribe`` message, once its audio has been handed to the engine (the seed
  answered every message); it carries the running text at that moment;
* one more whenever a result changes the running text, with the latest ``request_id``, so the
  page keeps updating while the engine catches up and after the last chunk.

Errors use the library's envelopes (``data`` null, ``errors`` a list of strings): no action
→ 405, unknown action → 405, a message that is not a JSON object, bad or missing
``voice_stream`` and undecodable audio → 400. The session goes on after each. Binary frames
are audio too (no reply of their own: there is no request to answer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import AudioError, ProtocolError, ProviderError, SttServerError
from ..results import Result
from ..session import SessionParams
from .events import AudioIn, ClientEvent, WireProtocol, decode_base64_audio, parse_json_object

TRANSCRIBE = "transcribe"

# HTTP-like statuses the library puts in ``response_status``.
STATUS_OK = 200
STATUS_BAD_REQUEST = 400
STATUS_METHOD_NOT_ALLOWED = 405
STATUS_SERVER_ERROR = 500
STATUS_UNAVAILABLE = 503

# The library's own wording, which clients may match on.
ACTION_MISSING = "Unable to find action in message body."


class ActionError(ProtocolError):
    """A message naming no action, or one this endpoint does not have (the library's 405)."""

    code = "method_not_allowed"


def envelope(*, action: str | None, data: str | None, errors: list[str], status: int, request_id: Any) -> str:
    """One reply, as ``AsyncAPIConsumer.reply`` sends it (same keys, order and JSON style)."""
    return json.dumps({"errors": errors, "data": data, "action": action, "response_status": status,
                       "request_id": request_id})


def transcript_data(text: str) -> str:
    """The seed's ``data``: ``json.dumps({'transcript': transcript})``."""
    return json.dumps({"transcript": text})


def status_for(error: SttServerError) -> int:
    if isinstance(error, ActionError):
        return STATUS_METHOD_NOT_ALLOWED
    if isinstance(error, (ProtocolError, AudioError)):
        return STATUS_BAD_REQUEST
    if isinstance(error, ProviderError):
        return STATUS_UNAVAILABLE if error.code == "provider_unavailable" else STATUS_SERVER_ERROR
    return error.http_status if 400 <= error.http_status < 600 else STATUS_SERVER_ERROR


class RunningTranscript:
    """Finals so far plus the current interim, as one line of text."""

    def __init__(self) -> None:
        self._finals: list[str] = []
        self._interim = ""

    def add(self, result: Result) -> None:
        text = result.text.strip()
        if result.is_final:
            if text:
                self._finals.append(text)
            self._interim = ""
        else:
            self._interim = text

    @property
    def text(self) -> str:
        return " ".join([*self._finals, *([self._interim] if self._interim else [])])


class SeedProtocol(WireProtocol):
    """One session of the seed protocol. See the module docstring for the reply rules."""

    # A bad chunk gets a 400 and the session goes on: the seed's client keeps sending, and a
    # recorder restart (a fresh WebM header) can be decoded again.
    audio_errors_are_fatal = False

    def __init__(self) -> None:
        self.transcript = RunningTranscript()
        # The message being handled: errors and the acknowledgement answer it.
        self._action: str | None = None
        self._request_id: Any = None
        self._answer_due = False
        # Latest request_id of a transcribe message: result-driven replies carry it.
        self._latest_request_id: Any = None
        self._replied_text: str | None = None

    @classmethod
    def for_session(cls, params: SessionParams) -> SeedProtocol:
        return cls()

    def opening(self, metadata: Mapping[str, Any]) -> list[str]:
        return []  # the seed's consumer sent nothing on connect

    def parse(self, frame: str | bytes) -> list[ClientEvent]:
        self._answer_due = False
        if isinstance(frame, bytes):
            self._action, self._request_id = TRANSCRIBE, None
            return [AudioIn(frame)] if frame else []
        self._action, self._request_id = None, None
        message = parse_json_object(frame, what="messages")
        self._request_id = message.get("request_id")
        action = message.get("action")
        if action is None:
            raise ActionError(ACTION_MISSING, code="action_missing")
        self._action = action if isinstance(action, str) else str(action)
        if action != TRANSCRIBE:
            raise ActionError(f'Method "{self._action}" not allowed.', code="action_not_allowed")
        self._latest_request_id = self._request_id
        if "voice_stream" not in message:
            raise ProtocolError('"voice_stream" is required: base64 of an audio chunk '
                                "(e.g. a MediaRecorder audio/webm;codecs=opus blob)", code="bad_base64")
        audio = decode_base64_audio(message["voice_stream"], field="voice_stream")
        self._answer_due = True
        return [AudioIn(audio)] if audio else []

    def acknowledge(self) -> list[str]:
        """The reply to a transcribe message whose audio the engine now has."""
        if not self._answer_due:
            return []
        self._answer_due = False
        return [self._reply(self._request_id)]

    def result(self, result: Result) -> list[str]:
        self.transcript.add(result)
        if self.transcript.text == self._replied_text:
            return []
        return [self._reply(self._latest_request_id)]

    def error(self, error: SttServerError) -> list[str]:
        self._answer_due = False  # the error is this message's answer
        return [envelope(action=self._action, data=None, errors=[error.message], status=status_for(error),
                         request_id=self._request_id)]

    def _reply(self, request_id: Any) -> str:
        text = self.transcript.text
        self._replied_text = text
        return envelope(action=TRANSCRIBE, data=transcript_data(text), errors=[], status=STATUS_OK,
                        request_id=request_id)
