"""The native protocol on ``/v1/listen``: Deepgram's live API, as its official SDKs type it.

Client → server: binary frames are audio; text frames are JSON: ``{"type": "Audio", "data":
"<base64>"}`` (ours: audio for clients that cannot send binary), ``KeepAlive``, ``Finalize``,
``CloseStream`` and ``Configure`` (answered by ``ConfigureFailure``: nothing can change mid-stream
here).

Server → client, every field the SDKs declare (deepgram-sdk 7.17 ``listen/v1/types``,
@deepgram/sdk 5.13 ``listen/resources/v1/types``) filled with a real value:

* ``Metadata`` on open (ours: the session's id, provider, settings; duration 0) and, as
  Deepgram sends it, at the end of the stream: duration and sha256 of the audio received;
* ``Results``, with ``from_finalize`` on the final answering a ``Finalize`` and each word as
  Deepgram spells it (``word`` plain, ``punctuated_word`` as transcribed);
* ``SpeechStarted`` (``vad_events=true``) before the first result of each utterance;
* ``UtteranceEnd`` (``utterance_end_ms=N``) once N ms of audio followed the last word;
* ``Error`` with ``variant`` and ``description`` (and our ``code`` and ``message``).

On a graceful drain nothing new is sent (Deepgram has no such message): the finals, the closing
Metadata, then close 1001.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .. import __version__
from ..errors import ProtocolError, SttServerError
from ..results import Result, Word
from ..session import SessionParams
from .events import (
    AudioIn,
    ClientEvent,
    CloseStream,
    Finalize,
    KeepAlive,
    WireProtocol,
    decode_base64_audio,
    parse_json_object,
)

# Deepgram's channel fields: [index of this channel, number of channels]; we transcribe one mix.
CHANNEL = (0, 1)
# Deepgram sends this constant since transaction keys were retired.
TRANSACTION_KEY = "deprecated"
# The code Deepgram gives a Configure its model cannot apply, and the one for anything else.
CONFIGURE_KEYTERMS_NOT_SUPPORTED = "CONFIGURE_KEYTERMS_NOT_SUPPORTED"
CONFIGURE_INTERNAL_ERROR = "CONFIGURE_INTERNAL_ERROR"
# Deepgram's variant for a client text message it could not parse.
SCHEMA_ERROR = "SchemaError"

_EDGE_PUNCTUATION = re.compile(r"^[^\w']+|[^\w']+$")


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def plain_word(word: str) -> str:
    """Deepgram's ``word``: lower case, without the punctuation around it (``"Country."`` →
    ``"country"``); the word as transcribed goes in ``punctuated_word``."""
    return _EDGE_PUNCTUATION.sub("", word.strip()).lower()


@dataclass(frozen=True)
class ModelInfo:
    """``metadata.model_info`` and ``model_uuid`` of every Results, from the engine's describe()."""

    name: str
    version: str
    arch: str

    @property
    def uuid(self) -> str:
        # Stable for a given engine and model, as Deepgram's model UUIDs are.
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"stt-server:{self.arch}:{self.name}:{self.version}"))

    @classmethod
    def from_describe(cls, provider: str, description: Mapping[str, Any]) -> ModelInfo:
        model = str(description.get("model") or "default")
        name = model.rstrip("/").rsplit("/", 1)[-1] or model
        version = str(description.get("version") or __version__)
        return cls(name=name, version=version, arch=provider)

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "arch": self.arch}


# --- server → client ------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultsMessage:
    type: ClassVar[str] = "Results"
    result: Result
    request_id: str
    model: ModelInfo
    include_words: bool = True
    from_finalize: bool = False

    def to_frame(self) -> str:
        result = self.result
        words = [self._word(w) for w in result.words] if self.include_words else []
        alternative: dict[str, Any] = {"transcript": result.text, "confidence": round(result.confidence, 4),
                                       "words": words}
        if result.language is not None:
            # Deepgram's multilingual shape: the languages heard in this alternative, and per word.
            alternative["languages"] = [result.language]
            for word in words:
                word["language"] = result.language
        message: dict[str, Any] = {
            "type": self.type,
            "channel_index": list(CHANNEL),
            "duration": round(result.duration, 3),
            "start": round(result.start, 3),
            "is_final": result.is_final,
            "speech_final": result.speech_final,
            "channel": {"alternatives": [alternative]},
            "metadata": {"request_id": self.request_id, "model_info": self.model.to_json(),
                         "model_uuid": self.model.uuid},
            "from_finalize": self.from_finalize,
        }
        if result.stability is not None:
            message["stability"] = round(result.stability, 3)
        return _dumps(message)

    @staticmethod
    def _word(word: Word) -> dict[str, Any]:
        return {"word": plain_word(word.word), "start": round(word.start, 3), "end": round(word.end, 3),
                "confidence": round(word.confidence, 4), "punctuated_word": word.word.strip()}


@dataclass(frozen=True)
class MetadataMessage:
    type: ClassVar[str] = "Metadata"
    request_id: str
    created: str
    duration: float
    channels: int
    sha256: str
    # Ours, beside Deepgram's fields (the opening Metadata's session facts).
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_frame(self) -> str:
        return _dumps({"type": self.type, **self.extra, "transaction_key": TRANSACTION_KEY,
                       "request_id": self.request_id, "sha256": self.sha256, "created": self.created,
                       "duration": round(self.duration, 3), "channels": self.channels})


@dataclass(frozen=True)
class SpeechStartedMessage:
    type: ClassVar[str] = "SpeechStarted"
    timestamp: float

    def to_frame(self) -> str:
        return _dumps({"type": self.type, "channel": list(CHANNEL), "timestamp": round(self.timestamp, 3)})


@dataclass(frozen=True)
class UtteranceEndMessage:
    type: ClassVar[str] = "UtteranceEnd"
    last_word_end: float

    def to_frame(self) -> str:
        return _dumps({"type": self.type, "channel": list(CHANNEL), "last_word_end": round(self.last_word_end, 3)})


@dataclass(frozen=True)
class ErrorMessage:
    type: ClassVar[str] = "Error"
    variant: str
    description: str
    code: str

    @classmethod
    def from_error(cls, error: SttServerError) -> ErrorMessage:
        variant = SCHEMA_ERROR if isinstance(error, ProtocolError) else type(error).__name__
        return cls(variant=variant, description=error.message, code=error.code)

    def to_frame(self) -> str:
        # ``message`` repeats the description for clients of earlier versions of this server.
        return _dumps({"type": self.type, "variant": self.variant, "description": self.description,
                       "code": self.code, "message": self.description})


@dataclass(frozen=True)
class ConfigureFailureMessage:
    type: ClassVar[str] = "ConfigureFailure"
    request_id: str
    code: str
    description: str

    def to_frame(self) -> str:
        return _dumps({"type": self.type, "request_id": self.request_id, "code": self.code,
                       "description": self.description})


# --- client → server ------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioMessage:
    """``{"type": "Audio", "data": "<base64>"}``: ours, for clients that cannot send binary."""

    type: ClassVar[str] = "Audio"
    data: bytes

    @classmethod
    def from_json(cls, message: Mapping[str, Any]) -> AudioMessage:
        return cls(decode_base64_audio(message.get("data"), field="data"))


@dataclass(frozen=True)
class ConfigureMessage:
    type: ClassVar[str] = "Configure"
    keyterms: bool  # whether it asked to replace the keyterms

    @classmethod
    def from_json(cls, message: Mapping[str, Any]) -> ConfigureMessage:
        return cls(keyterms=message.get("keyterms") is not None)

    def failure(self, request_id: str) -> ConfigureFailureMessage:
        if self.keyterms:
            return ConfigureFailureMessage(request_id, CONFIGURE_KEYTERMS_NOT_SUPPORTED,
                                           "this server's engines take no keyterms")
        return ConfigureFailureMessage(request_id, CONFIGURE_INTERNAL_ERROR,
                                       "this server cannot change a stream's settings; reconnect with "
                                       "new query parameters")


_CONTROL: Mapping[str, ClientEvent] = {"KeepAlive": KeepAlive(), "Finalize": Finalize(),
                                       "CloseStream": CloseStream()}
_KNOWN_TYPES = ", ".join(["Audio", *_CONTROL, "Configure"])

ClientMessage = ClientEvent | AudioMessage | ConfigureMessage


def parse_client_message(frame: str | bytes) -> ClientMessage | None:
    """A client frame → its message (None for an empty binary frame); ProtocolError if bad."""
    if isinstance(frame, bytes):
        return AudioIn(frame) if frame else None
    message = parse_json_object(frame, what="text frames")
    kind = message.get("type")
    if kind == AudioMessage.type:
        return AudioMessage.from_json(message)
    if kind == ConfigureMessage.type:
        return ConfigureMessage.from_json(message)
    control = _CONTROL.get(kind) if isinstance(kind, str) else None
    if control is None:
        raise ProtocolError(f"unknown message type {kind!r}; expected one of: {_KNOWN_TYPES}", code="unknown_type")
    return control


# --- the session ----------------------------------------------------------------------------


class UtteranceTracker:
    """When to send SpeechStarted and UtteranceEnd, from results and the audio clock. Pure.

    SpeechStarted: the first result of an utterance (the engine's VAD opened it at its start).
    UtteranceEnd: ``gap`` seconds of audio received after the last word, once no interim is
    pending (a final closed the utterance), so a word still being decoded cannot follow it.
    """

    def __init__(self, *, gap: float) -> None:
        self.gap = gap
        self._in_utterance = False  # a result came since the last final
        self._last_word_end: float | None = None  # of words not yet followed by an UtteranceEnd
        self._interim_pending = False
        self._interim_end: float | None = None  # of the latest interim, when no final followed it

    def speech_started(self, result: Result) -> float | None:
        """The utterance's start when ``result`` is the first of a new utterance."""
        if not result.text.strip() and not result.is_final:
            return None
        started = not self._in_utterance and bool(result.text.strip())
        self._in_utterance = not result.is_final
        return result.start if started else None

    def heard(self, result: Result) -> None:
        self._interim_pending = not result.is_final and bool(result.text.strip())
        if result.words:
            end: float | None = result.words[-1].end
        else:
            end = result.end if result.text.strip() else None
        if end is None:
            return
        if result.is_final:
            # A final replaces its utterance's interims, whose ends were guesses (no word timings).
            self._last_word_end = max(self._last_word_end or 0.0, end)
            self._interim_end = None
        else:
            self._interim_end = end

    def utterance_end(self, audio_seconds: float, *, stream_over: bool = False) -> float | None:
        """The last word's end when an UtteranceEnd is due now, else None."""
        last = self._last_word_end
        if last is None and stream_over:  # words only an interim heard
            last = self._interim_end
        if not self.gap or last is None or (self._interim_pending and not stream_over):
            return None
        if audio_seconds + 1e-6 < last + self.gap:
            return None
        self._last_word_end = self._interim_end = None
        return last


class NativeProtocol(WireProtocol):
    def __init__(self, *, include_words: bool = True, bytes_per_second: int | None = None,
                 channels: int = 1, utterance_end_ms: int = 0, vad_events: bool = False) -> None:
        self.include_words = include_words
        self.channels = channels
        self.vad_events = vad_events
        # Raw audio's rate lets the protocol keep the audio clock itself; containers fall back
        # to the end of the latest result.
        self._bytes_per_second = bytes_per_second
        self._utterances = UtteranceTracker(gap=utterance_end_ms / 1000)
        self._sha256 = hashlib.sha256()
        self._bytes = 0
        self._results_end = 0.0
        self._finalize_before: float | None = None  # audio time of an unanswered Finalize
        self._languages: dict[str, int] = {}  # detected language → words of finals in it
        self._replies: list[str] = []  # answers to the frame just parsed (ConfigureFailure)
        self.request_id = ""
        self.created = ""
        self.model = ModelInfo(name="default", version=__version__, arch="unknown")

    @classmethod
    def for_session(cls, params: SessionParams) -> NativeProtocol:
        return cls(include_words=params.words, bytes_per_second=params.audio.bytes_per_second,
                   channels=params.audio.channels, utterance_end_ms=params.utterance_end_ms,
                   vad_events=params.vad_events)

    @property
    def audio_seconds(self) -> float:
        if self._bytes_per_second:
            return self._bytes / self._bytes_per_second
        return self._results_end

    def opening(self, metadata: Mapping[str, Any]) -> list[str]:
        self.request_id = str(metadata.get("request_id") or metadata.get("session_id") or "")
        self.created = str(metadata.get("created") or "")
        self.model = ModelInfo.from_describe(str(metadata.get("provider") or "unknown"),
                                             metadata.get("model_info") or {})
        return [self._metadata(extra=metadata).to_frame()]

    def parse(self, frame: str | bytes) -> list[ClientEvent]:
        message = parse_client_message(frame)
        if isinstance(message, AudioMessage):
            message = AudioIn(message.data)
        if isinstance(message, ConfigureMessage):
            self._replies.append(message.failure(self.request_id).to_frame())
            return []
        if isinstance(message, AudioIn):
            self._sha256.update(message.data)
            self._bytes += len(message.data)
        elif isinstance(message, Finalize):
            self._finalize_before = self.audio_seconds if self._bytes_per_second else float("inf")
        return [message] if message is not None else []

    def acknowledge(self) -> list[str]:
        replies, self._replies = self._replies, []
        return replies + self._utterance_end()

    def result(self, result: Result) -> list[str]:
        self._results_end = max(self._results_end, result.end)
        if result.is_final and result.language is not None:
            self._languages[result.language] = self._languages.get(result.language, 0) + len(result.text.split())
        frames = []
        started = self._utterances.speech_started(result)
        if started is not None and self.vad_events:
            frames.append(SpeechStartedMessage(started).to_frame())
        from_finalize = False
        if result.is_final and self._finalize_before is not None and result.start < self._finalize_before:
            from_finalize, self._finalize_before = True, None
        frames.append(ResultsMessage(result, self.request_id, self.model, include_words=self.include_words,
                                     from_finalize=from_finalize).to_frame())
        self._utterances.heard(result)
        return frames + self._utterance_end()

    def finalized(self) -> list[str]:
        """A Finalize with nothing left to finalize (the last utterance had already ended) is
        still answered, as clients wait for it: an empty final marked from_finalize."""
        if self._finalize_before is None:
            return []
        self._finalize_before = None
        at = self.audio_seconds if self._bytes_per_second else self._results_end
        empty = Result(text="", is_final=True, start=at, end=at)
        return [ResultsMessage(empty, self.request_id, self.model, include_words=self.include_words,
                               from_finalize=True).to_frame()]

    def error(self, error: SttServerError) -> list[str]:
        return [ErrorMessage.from_error(error).to_frame()]

    def draining(self, message: str) -> list[str]:
        return []  # Deepgram has no such message: the SDKs could not type it

    def closing(self, untranscribed_seconds: float = 0.0) -> list[str]:
        # Deepgram's closing Metadata also names the models used (fields the SDKs leave untyped).
        # Ours: the seconds of audio received that were never transcribed (0 when none were).
        extra: dict[str, Any] = {"models": [self.model.uuid],
                                 "model_info": {self.model.uuid: self.model.to_json()},
                                 "untranscribed_seconds": round(untranscribed_seconds, 3)}
        if self._languages:  # detected (language=multi): every language heard, most words first
            extra["languages"] = sorted(self._languages, key=lambda code: -self._languages[code])
        return self._utterance_end(stream_over=True) + [self._metadata(extra=extra).to_frame()]

    def _utterance_end(self, *, stream_over: bool = False) -> list[str]:
        last_word_end = self._utterances.utterance_end(self.audio_seconds, stream_over=stream_over)
        return [UtteranceEndMessage(last_word_end).to_frame()] if last_word_end is not None else []

    def _metadata(self, extra: Mapping[str, Any] | None = None) -> MetadataMessage:
        return MetadataMessage(request_id=self.request_id, created=self.created, duration=self.audio_seconds,
                               channels=self.channels, sha256=self._sha256.hexdigest(), extra=extra or {})
