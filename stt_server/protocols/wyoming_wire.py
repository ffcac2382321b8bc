"""Wyoming's framing and events, pure: bytes in → events, events → bytes. No I/O, no ``await``.

A Wyoming event on the wire (https://github.com/rhasspy/wyoming) is one JSON line, the header
``{"type": ..., "data": {...}, "data_length": N, "payload_length": M}``, then N bytes of JSON
data (merged into ``data``) and M bytes of payload (audio). Every length is checked against a
limit *before* anything is read or kept for it: a client announcing a 2 GB payload, or sending a
megabyte with no line break, gets a :class:`~stt_server.errors.ProtocolError` and the server
never allocates more than the bytes that actually arrived.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..audio_format import PCM16, AudioFormat
from ..errors import ProtocolError
from .events import MAX_JSON_DEPTH, nested_deeper_than

# Longest header line. Real ones are under 200 bytes; the data that may be large goes after it.
MAX_HEADER_BYTES = 16 * 1024
# Largest JSON data block (a transcribe's context and bias lists, an info).
MAX_DATA_BYTES = 256 * 1024
# Largest payload by default (one audio chunk); the server passes server.max_message_bytes.
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
# The Wyoming version this server speaks (sent in each header, as the reference library does).
WYOMING_VERSION = "1.10.2"

# Event types.
DESCRIBE, INFO = "describe", "info"
TRANSCRIBE, TRANSCRIPT = "transcribe", "transcript"
TRANSCRIPT_START, TRANSCRIPT_CHUNK, TRANSCRIPT_STOP = "transcript-start", "transcript-chunk", "transcript-stop"
AUDIO_START, AUDIO_CHUNK, AUDIO_STOP = "audio-start", "audio-chunk", "audio-stop"
PING, PONG = "ping", "pong"
SELECT_PROGRAM = "select-program"
ERROR = "error"


@dataclass(frozen=True)
class WyomingEvent:
    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    payload: bytes = b""


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ProtocolError(f"{what} nests too deeply", code="bad_event") from None
    except ValueError:  # not UTF-8, not JSON, an integer too long
        raise ProtocolError(f"{what} is not JSON", code="bad_event") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object", code="bad_event")
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and nested_deeper_than(value, MAX_JSON_DEPTH):
        raise ProtocolError(f"{what} may nest at most {MAX_JSON_DEPTH} levels", code="bad_event")
    return value


def _length(header: Mapping[str, Any], key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"{key} must be a non-negative integer", code="bad_event")
    if value > limit:
        raise ProtocolError(f"{key} {value} is over this server's limit of {limit} bytes", code="event_too_big")
    return value


@dataclass(frozen=True)
class _Header:
    type: str
    data: dict[str, Any]
    data_length: int
    payload_length: int


class FrameDecoder:
    """Bytes from the socket, fed as they come → complete events, in order.

    After a :class:`ProtocolError` the stream cannot be resynchronised (the next header's start
    is unknown): the caller reports it and closes. Events that came before the bad bytes come
    first: the error is raised by the call that found it when it decoded no event, else by the
    next call (``feed(b"")`` will do).
    """

    def __init__(self, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        self.max_payload_bytes = max_payload_bytes
        self._buffer = bytearray()
        self._header: _Header | None = None
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet part of a returned event."""
        return len(self._buffer)

    @property
    def mid_event(self) -> bool:
        """Whether an event has begun and not ended (an end of stream here cut it off)."""
        return bool(self._buffer) or self._header is not None

    def feed(self, data: bytes) -> list[WyomingEvent]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        events: list[WyomingEvent] = []
        try:
            while (event := self._next()) is not None:
                events.append(event)
        except ProtocolError as error:
            self._error = error
            self._buffer.clear()
            if not events:
                raise
        return events

    def _next(self) -> WyomingEvent | None:
        if self._header is None:
            end = self._buffer.find(b"\n", 0, MAX_HEADER_BYTES + 1)
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    raise ProtocolError(f"no event header line within {MAX_HEADER_BYTES} bytes", code="event_too_big")
                return None
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            self._header = self._parse_header(line)
        header = self._header
        need = header.data_length + header.payload_length
        if len(self._buffer) < need:
            return None
        data = dict(header.data)
        if header.data_length:
            data.update(_json_object(bytes(self._buffer[:header.data_length]), f"{header.type!r} data"))
        payload = bytes(self._buffer[header.data_length:need])
        del self._buffer[:need]
        self._header = None
        return WyomingEvent(header.type, data, payload)

    def _parse_header(self, line: bytes) -> _Header:
        if not line.strip():
            raise ProtocolError("an empty line where an event header was expected", code="bad_event")
        header = _json_object(line, "the event header")
        kind = header.get("type")
        if not isinstance(kind, str) or not kind or len(kind) > 64:
            raise ProtocolError('the event header needs a "type" string', code="bad_event")
        data = header.get("data") or {}
        if not isinstance(data, dict):
            raise ProtocolError('the event header\'s "data" must be an object', code="bad_event")
        return _Header(kind, data, _length(header, "data_length", MAX_DATA_BYTES),
                       _length(header, "payload_length", self.max_payload_bytes))


def encode_event(event: WyomingEvent) -> bytes:
    """An event as the bytes on the wire (the reference library's layout)."""
    header: dict[str, Any] = {"type": event.type, "version": WYOMING_VERSION}
    data = json.dumps(dict(event.data), ensure_ascii=False).encode() if event.data else b""
    if data:
        header["data_length"] = len(data)
    if event.payload:
        header["payload_length"] = len(event.payload)
    return json.dumps(header).encode() + b"\n" + data + event.payload


# --- client events → what the server needs ----------------------------------------------------


@dataclass(frozen=True)
class TranscribeRequest:
    """``transcribe``: which model (a provider's name or one of its models) and language."""

    name: str | None = None
    language: str | None = None

    @classmethod
    def from_event(cls, event: WyomingEvent) -> TranscribeRequest:
        return cls(name=_optional_text(event.data, "name"), language=_optional_text(event.data, "language"))


def _optional_text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 100:
        raise ProtocolError(f"{key} must be a short string", code="bad_event")
    return value


MAX_RATE, MAX_CHANNELS = 192_000, 8


def audio_format_of(event: WyomingEvent) -> AudioFormat:
    """The PCM format ``audio-start`` (or a chunk) declares. Only 16-bit samples (width 2), which
    is what Home Assistant and every Wyoming satellite send."""
    data = event.data
    values = {}
    for key, low, high in (("rate", 1000, MAX_RATE), ("width", 1, 4), ("channels", 1, MAX_CHANNELS)):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ProtocolError(f"{event.type}: {key} must be an integer from {low} to {high}, got {value!r}",
                                code="bad_audio_format")
        values[key] = value
    if values["width"] != 2:
        raise ProtocolError(f"{event.type}: width {values['width']} is not supported; send 16-bit PCM (width 2)",
                            code="bad_audio_format")
    return AudioFormat(PCM16, values["rate"], values["channels"], declared=True)


# --- server events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AsrModel:
    name: str
    languages: Sequence[str]
    description: str = ""


@dataclass(frozen=True)
class AsrProgram:
    name: str
    description: str
    models: Sequence[AsrModel]
    supports_transcript_streaming: bool


# Who made the programs (Wyoming asks for a name and a URL; this server has no public home page).
ATTRIBUTION = {"name": "stt_server", "url": ""}


def info_event(programs: Sequence[AsrProgram], *, version: str) -> WyomingEvent:
    """``info``: the speech-to-text programs (one per engine), each with its models."""
    asr = [{
        "name": program.name, "description": program.description, "attribution": ATTRIBUTION,
        "installed": True, "version": version,
        "models": [{"name": model.name, "description": model.description or model.name,
                    "attribution": ATTRIBUTION, "installed": True, "version": None,
                    "languages": list(model.languages)} for model in program.models],
        "supports_transcript_streaming": program.supports_transcript_streaming,
    } for program in programs]
    return WyomingEvent(INFO, {"asr": asr, "tts": [], "handle": [], "intent": [], "wake": [], "mic": [], "snd": []})


def transcript_event(text: str, language: str | None) -> WyomingEvent:
    data: dict[str, Any] = {"text": text}
    if language:
        data["language"] = language
    return WyomingEvent(TRANSCRIPT, data)


def error_event(text: str, code: str) -> WyomingEvent:
    return WyomingEvent(ERROR, {"text": text, "code": code})
