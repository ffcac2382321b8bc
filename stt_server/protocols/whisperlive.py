"""WhisperLive's websocket protocol (collabora/WhisperLive 0.10), so its client works unchanged.

Client → server: first a JSON options message ``{"uid", "language", "task", "model", "use_vad",
…, "token"}``; then binary frames of float32 16 kHz mono samples; then the binary (or text)
``END_OF_AUDIO``. ``language``, ``task``, ``model`` and ``use_vad`` are accepted and have no
effect: the session's engine and language come from the URL and the config, and the server's VAD
always runs.

Server → client, every message carrying the client's ``uid``:

* ``{"uid", "message": "SERVER_READY", "backend": "faster_whisper"}`` once the options are read;
* ``{"uid", "status": "WAIT", "message": minutes}`` instead, when the server is full (the
  client gives up and may retry later), and ``{"uid", "status": "ERROR", "message"}`` for a
  refused token or a bad message;
* ``{"uid", "segments": [{"start", "end", "text", "completed"}]}`` after each result: the
  last completed segments and the utterance still being decoded (``completed`` false);
* after ``END_OF_AUDIO``, the final segments, then the close (1000). WhisperLive itself drops
  the tail; this server transcribes everything received.

Both it and vosk's clients connect to ``/``; the first message tells them apart (see
:mod:`stt_server.protocols.root`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..audio_format import AudioFormat
from ..errors import ProtocolError, SttServerError
from ..results import Result
from .events import AudioIn, ClientEvent, CloseStream, SetAudioFormat, WireProtocol

END_OF_AUDIO = "END_OF_AUDIO"
# What WhisperLive's clients send: float32 samples at 16 kHz, mono.
AUDIO_FORMAT = AudioFormat("float32", 16_000, 1)
# WhisperLive names its backends; its client keeps a transcript only for "faster_whisper".
BACKENDS: Mapping[str, str] = {"whisper": "faster_whisper"}
# WhisperLive sends the last this many completed segments with each update.
SEND_LAST_SEGMENTS = 10


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False)


# --- client → server ------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionsMessage:
    uid: str
    language: str | None = None
    token: str | None = None

    @staticmethod
    def looks_like(message: Mapping[str, Any]) -> bool:
        """Whether a first message is WhisperLive's (vosk's is ``config`` or ``eof``)."""
        return "uid" in message

    @classmethod
    def from_json(cls, message: Mapping[str, Any]) -> OptionsMessage:
        uid = message.get("uid")
        if not isinstance(uid, str) or not uid or len(uid) > 200:
            raise ProtocolError('"uid" must be a non-empty string', code="bad_options")
        language = message.get("language")
        token = message.get("token")
        return cls(uid=uid, language=language if isinstance(language, str) else None,
                   token=token if isinstance(token, str) and token else None)


# --- server → client ------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerReadyMessage:
    uid: str
    backend: str

    def to_frame(self) -> str:
        return _dumps({"uid": self.uid, "message": "SERVER_READY", "backend": self.backend})


@dataclass(frozen=True)
class StatusMessage:
    uid: str
    status: str  # "WAIT", "ERROR" or "WARNING"
    message: str | float  # minutes to wait for WAIT

    def to_frame(self) -> str:
        return _dumps({"uid": self.uid, "status": self.status, "message": self.message})


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    completed: bool

    def to_json(self) -> dict[str, Any]:
        # WhisperLive formats times as strings with three decimals; its client calls float().
        return {"start": f"{self.start:.3f}", "end": f"{self.end:.3f}", "text": self.text,
                "completed": self.completed}


@dataclass(frozen=True)
class SegmentsMessage:
    uid: str
    segments: tuple[Segment, ...]

    def to_frame(self) -> str:
        return _dumps({"uid": self.uid, "segments": [s.to_json() for s in self.segments]})


# --- the session ----------------------------------------------------------------------------


class WhisperLiveProtocol(WireProtocol):
    """One WhisperLive session, from its options message on."""

    def __init__(self, options: OptionsMessage, *, provider: str = "whisper") -> None:
        self.uid = options.uid
        self.backend = BACKENDS.get(provider, provider)
        self._completed: list[Segment] = []
        self._current: Segment | None = None

    def opening(self, metadata: Mapping[str, Any]) -> list[str]:
        return [ServerReadyMessage(self.uid, self.backend).to_frame()]

    def first_events(self) -> list[ClientEvent]:
        """What the options message means for the session: float32 audio at 16 kHz."""
        return [SetAudioFormat(AUDIO_FORMAT)]

    def parse(self, frame: str | bytes) -> list[ClientEvent]:
        if isinstance(frame, bytes):
            if frame == END_OF_AUDIO.encode():
                return [CloseStream()]
            return [AudioIn(frame)] if frame else []
        if frame.strip() == END_OF_AUDIO:
            return [CloseStream()]
        raise ProtocolError("after the options, send float32 audio in binary frames, then END_OF_AUDIO",
                            code="unknown_type")

    def result(self, result: Result) -> list[str]:
        text = result.text.strip()
        segment = Segment(result.start, result.end, text, completed=result.is_final)
        if result.is_final:
            self._current = None
            if not text:
                return []
            self._completed.append(segment)
        else:
            self._current = segment if text else None
        return [self._segments()]

    def error(self, error: SttServerError) -> list[str]:
        return [StatusMessage(self.uid, "ERROR", error.message).to_frame()]

    def closing(self, untranscribed_seconds: float = 0.0) -> list[str]:
        self._current = None
        return [self._segments()] if self._completed else []

    def _segments(self) -> str:
        segments = self._completed[-SEND_LAST_SEGMENTS:]
        if self._current is not None:
            segments = [*segments, self._current]
        elif segments:
            # WhisperLive's client shows its last incomplete segment after the transcript until
            # another incomplete one replaces it: an empty one says the utterance it held is done
            # (else the client repeats an interim the final already replaced).
            end = segments[-1].end
            segments = [*segments, Segment(end, end, "", completed=False)]
        return SegmentsMessage(self.uid, tuple(segments)).to_frame()
