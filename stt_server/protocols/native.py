"""The native protocol on ``/v1/listen``, shaped like Deepgram's live API.

Client → server: binary frames are audio; text frames are JSON:
``{"type": "Audio", "data": "<base64>"}``, ``{"type": "KeepAlive"}``, ``{"type": "Finalize"}``,
``{"type": "CloseStream"}``.
Server → client: ``Metadata`` on open, ``Results``, ``Error``, and ``Draining`` when the server
starts a graceful shutdown (finals for the audio already sent follow, then close 1001).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import ProtocolError, SttServerError
from ..results import Result
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

_CONTROL: Mapping[str, ClientEvent] = {"KeepAlive": KeepAlive(), "Finalize": Finalize(),
                                       "CloseStream": CloseStream()}


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def parse_client_frame(frame: str | bytes) -> list[ClientEvent]:
    if isinstance(frame, bytes):
        return [AudioIn(frame)] if frame else []
    message = parse_json_object(frame, what="text frames")
    kind = message.get("type")
    if kind == "Audio":
        return [AudioIn(decode_base64_audio(message.get("data"), field="data"))]
    control = _CONTROL.get(kind) if isinstance(kind, str) else None
    if control is None:
        known = ", ".join(["Audio", *_CONTROL])
        raise ProtocolError(f"unknown message type {kind!r}; expected one of: {known}", code="unknown_type")
    return [control]


def results_message(result: Result, *, include_words: bool = True) -> dict[str, Any]:
    alternative: dict[str, Any] = {"transcript": result.text, "confidence": round(result.confidence, 4)}
    alternative["words"] = [
        {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3), "confidence": round(w.confidence, 4)}
        for w in result.words
    ] if include_words else []
    if result.language is not None:
        # Deepgram's multilingual shape: the languages heard in this alternative, and per word.
        alternative["languages"] = [result.language]
        for word in alternative["words"]:
            word["language"] = result.language
    message: dict[str, Any] = {
        "type": "Results",
        "is_final": result.is_final,
        "speech_final": result.speech_final,
        "start": round(result.start, 3),
        "duration": round(result.duration, 3),
        "channel": {"alternatives": [alternative]},
    }
    if result.stability is not None:
        message["stability"] = round(result.stability, 3)
    return message


def error_message(error: SttServerError) -> dict[str, Any]:
    return {"type": "Error", "code": error.code, "message": error.message}


class NativeProtocol(WireProtocol):
    def __init__(self, *, include_words: bool = True) -> None:
        self.include_words = include_words

    def opening(self, metadata: Mapping[str, Any]) -> list[str]:
        return [_dumps({"type": "Metadata", **metadata})]

    def parse(self, frame: str | bytes) -> list[ClientEvent]:
        return parse_client_frame(frame)

    def result(self, result: Result) -> list[str]:
        return [_dumps(results_message(result, include_words=self.include_words))]

    def error(self, error: SttServerError) -> list[str]:
        return [_dumps(error_message(error))]

    def draining(self, message: str) -> list[str]:
        return [_dumps({"type": "Draining", "message": message})]
