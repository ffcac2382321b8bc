"""``/``: vosk-server's protocol or WhisperLive's, told apart by the client's first message.

Both projects' clients connect to the server's root and cannot be pointed at a path of their
own (WhisperLive's client builds ``ws://{host}:{port}``), so the first message decides: a JSON
object with ``uid`` is WhisperLive's options message; anything else (``{"config": ...}``, audio,
``{"eof" : 1}``) is vosk's. A plain GET of ``/`` still serves the kiosk page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import SttServerError
from ..results import Result
from ..session import SessionParams
from .events import ClientEvent, WireProtocol, parse_json_object
from .vosk import ErrorMessage, VoskProtocol
from .whisperlive import OptionsMessage, StatusMessage, WhisperLiveProtocol


def whisperlive_options(frame: str | bytes) -> OptionsMessage | None:
    """WhisperLive's options when ``frame`` is its first message, else None (vosk's).
    Raises ProtocolError for a WhisperLive message with a bad ``uid``."""
    if not isinstance(frame, str):
        return None
    try:
        message = parse_json_object(frame, what="first message")  # depth-limited, as every parse
    except SttServerError:
        return None
    if not OptionsMessage.looks_like(message):
        return None
    return OptionsMessage.from_json(message)


def refusal(frame: str | bytes, error: SttServerError, *, wait_minutes: float) -> list[str]:
    """What to send before closing a session refused after the upgrade (at capacity, or no
    valid token), in the protocol its first message speaks."""
    try:
        options = whisperlive_options(frame)
    except SttServerError:
        options = None
    if options is None:
        return [ErrorMessage(error.message).to_frame()]
    if error.close_code == 1013:  # over capacity: WhisperLive's client waits and retries
        return [StatusMessage(options.uid, "WAIT", wait_minutes).to_frame()]
    return [StatusMessage(options.uid, "ERROR", error.message).to_frame()]


class RootProtocol(WireProtocol):
    """Delegates to the protocol the first message chose."""

    def __init__(self, *, provider: str = "whisper") -> None:
        self.provider = provider
        self.inner: WireProtocol | None = None
        self._metadata: Mapping[str, Any] = {}
        self._replies: list[str] = []

    @classmethod
    def for_session(cls, params: SessionParams) -> RootProtocol:
        return cls(provider=params.provider)

    @property
    def audio_errors_are_fatal(self) -> bool:  # type: ignore[override]
        return self.inner.audio_errors_are_fatal if self.inner is not None else True

    def opening(self, metadata: Mapping[str, Any]) -> list[str]:
        self._metadata = metadata
        return []  # neither protocol says anything before the client does

    def parse(self, frame: str | bytes) -> list[ClientEvent]:
        if self.inner is not None:
            return self.inner.parse(frame)
        options = whisperlive_options(frame)
        if options is not None:
            whisperlive = WhisperLiveProtocol(options, provider=self.provider)
            self.inner = whisperlive
            self._replies = whisperlive.opening(self._metadata)
            return whisperlive.first_events()
        self.inner = VoskProtocol()
        self.inner.opening(self._metadata)
        return self.inner.parse(frame)

    def acknowledge(self) -> list[str]:
        replies, self._replies = self._replies, []
        return replies + (self.inner.acknowledge() if self.inner is not None else [])

    def result(self, result: Result) -> list[str]:
        return self.inner.result(result) if self.inner is not None else []

    def error(self, error: SttServerError) -> list[str]:
        if self.inner is None:
            return [ErrorMessage(error.message).to_frame()]
        return self.inner.error(error)

    def draining(self, message: str) -> list[str]:
        return self.inner.draining(message) if self.inner is not None else []

    def closing(self, untranscribed_seconds: float = 0.0) -> list[str]:
        return self.inner.closing(untranscribed_seconds) if self.inner is not None else []
