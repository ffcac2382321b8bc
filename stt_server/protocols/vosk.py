"""vosk-server's websocket protocol (``websocket/asr_server.py``), so its clients work unchanged.

Client → server:

* ``{"config": {"sample_rate": N, "words": bool, "max_alternatives": N, "phrase_list": [...]}}``
  (optional, before the audio): the rate of the PCM that follows; ``words`` turns the ``result``
  word list on or off; the other keys are accepted and have no effect here;
* binary frames of 16-bit little-endian mono PCM;
* the text ``{"eof" : 1}``: no more audio.

Server → client: **each audio message is answered by exactly one message** (its clients block in
``recv()`` after every chunk): ``{"text": "...", "result": [{"conf", "start", "end", "word"}]}``
when finals came since the last answer (all of them, combined), else ``{"partial": "..."}``
with the utterance's running interim. ``eof`` is answered by one last result: everything still
pending, combined; then the server closes (1000). A bad text message is answered by
``{"error": "..."}`` (vosk-server has no error message; its clients read ``text``/``partial``
with ``.get`` and go on).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..audio_format import PCM16, AudioFormat
from ..errors import ProtocolError, SttServerError
from ..results import Result, Word
from ..session import MAX_SAMPLE_RATE, SessionParams
from .events import AudioIn, ClientEvent, CloseStream, SetAudioFormat, WireProtocol, parse_json_object


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False)


# --- client → server ------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigMessage:
    sample_rate: int | None
    words: bool | None

    @classmethod
    def from_json(cls, message: Mapping[str, Any]) -> ConfigMessage:
        config = message["config"]
        if not isinstance(config, dict):
            raise ProtocolError('"config" must be an object, e.g. {"config": {"sample_rate": 16000}}',
                                code="bad_config")
        rate = config.get("sample_rate")
        if rate is not None:
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 1000 <= rate <= MAX_SAMPLE_RATE:
                raise ProtocolError(f"config.sample_rate must be a number from 1000 to {MAX_SAMPLE_RATE}",
                                    code="bad_config")
            rate = int(rate)
        words = config.get("words")
        return cls(sample_rate=rate, words=bool(words) if words is not None else None)


@dataclass(frozen=True)
class EofMessage:
    @staticmethod
    def matches(message: Mapping[str, Any]) -> bool:
        return "eof" in message


def parse_text(frame: str) -> ConfigMessage | EofMessage:
    message = parse_json_object(frame, what="text messages")
    if "config" in message:
        return ConfigMessage.from_json(message)
    if EofMessage.matches(message):
        return EofMessage()
    raise ProtocolError('text messages are {"config": {...}} or {"eof" : 1}; audio goes in binary frames',
                        code="unknown_type")


# --- server → client ------------------------------------------------------------------------


@dataclass(frozen=True)
class PartialMessage:
    partial: str

    def to_frame(self) -> str:
        return _dumps({"partial": self.partial})


@dataclass(frozen=True)
class ResultMessage:
    text: str
    words: tuple[Word, ...] = field(default=())
    include_words: bool = True

    def to_frame(self) -> str:
        message: dict[str, Any] = {}
        if self.include_words:
            message["result"] = [{"conf": round(w.confidence, 6), "end": round(w.end, 6),
                                  "start": round(w.start, 6), "word": w.word.strip()} for w in self.words]
        message["text"] = self.text
        return _dumps(message)


@dataclass(frozen=True)
class ErrorMessage:
    error: str

    def to_frame(self) -> str:
        return _dumps({"error": self.error})


# --- the session ----------------------------------------------------------------------------


class VoskProtocol(WireProtocol):
    """One vosk session; see the module docstring for when each answer goes out."""

    def __init__(self, *, words: bool = True) -> None:
        self.words = words
        self._finals: list[Result] = []  # not yet sent
        self._partial = ""
        self._answer_due = False

    @classmethod
    def for_session(cls, params: SessionParams) -> VoskProtocol:
        return cls()

    def opening(self, metadata: Mapping[str, Any]) -> list[str]:
        return []  # vosk-server sends nothing until the first audio

    def parse(self, frame: str | bytes) -> list[ClientEvent]:
        self._answer_due = False
        if isinstance(frame, bytes):
            self._answer_due = True
            return [AudioIn(frame)] if frame else []
        message = parse_text(frame)
        if isinstance(message, EofMessage):
            return [CloseStream()]
        if message.words is not None:
            self.words = message.words
        if message.sample_rate is None:
            return []
        return [SetAudioFormat(AudioFormat(PCM16, message.sample_rate, 1))]

    def acknowledge(self) -> list[str]:
        if not self._answer_due:
            return []
        self._answer_due = False
        if self._finals:
            return [self._combined()]
        return [PartialMessage(self._partial).to_frame()]

    def result(self, result: Result) -> list[str]:
        if result.is_final:
            if result.text.strip():
                self._finals.append(result)
            self._partial = ""
        else:
            self._partial = result.text.strip()
        return []  # results go out as answers to audio, one per message

    def error(self, error: SttServerError) -> list[str]:
        self._answer_due = False  # the error answers this message
        return [ErrorMessage(error.message).to_frame()]

    def closing(self, untranscribed_seconds: float = 0.0) -> list[str]:
        return [self._combined()]  # the answer to eof: everything still pending

    def _combined(self) -> str:
        finals, self._finals = self._finals, []
        text = " ".join(r.text.strip() for r in finals)
        words = tuple(w for r in finals for w in r.words)
        return ResultMessage(text, words, include_words=self.words).to_frame()
