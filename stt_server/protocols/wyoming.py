"""Wyoming (Home Assistant's voice pipelines) as a session protocol. Pure: events in, frames out.

A Wyoming connection (see :mod:`wyoming_wire` for the framing) may carry, in order:

* ``describe`` → ``info`` (one speech-to-text program per engine, with its models and
  languages), ``ping`` → ``pong``, ``select-program`` (an engine by name), any number of times;
* a transcription: ``transcribe`` (optional: ``name``, a program or model, and ``language``),
  ``audio-start`` (rate, width, channels), ``audio-chunk``s of PCM, ``audio-stop`` →
  ``transcript`` (all the finals, joined). With ``wyoming.transcript_streaming`` the finals also
  go out as they come: ``transcript-start``, a ``transcript-chunk`` per final, then the
  ``transcript`` and ``transcript-stop`` (the order the Wyoming spec gives);
* then the same again, on the same connection.

:class:`Preamble` reads the events before a transcription (its session parameters come from
them); :class:`WyomingProtocol` is one transcription's :class:`WireProtocol`. Wyoming has no
close frame and no non-fatal error: every error is an ``error`` event, then the server closes.
A transcription that ends any other way than by the client's ``audio-stop`` (a limit, a drain
the client did not finish in time, an engine failure) ends with an ``error`` event saying so,
never with a transcript that silently lacks part of the audio.

:func:`session_context` turns the preamble's request into the session's parameters, checked as
a URL's are, and :func:`describe_programs` the engines into ``info``'s programs.

The runner sees audio chunks as binary frames (their payload) and every other event of the
transcription as a text frame ``{"type": ..., "data": {...}}`` (:func:`runner_frame`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..audio_format import AudioFormat
from ..config import Config
from ..endpoints import Endpoint
from ..errors import ProtocolError, RequestError, SttServerError
from ..handshake import SessionContext, within_rights
from ..results import Result
from ..session import params_from_query
from ..session_state import CLOSE_GOING_AWAY, CLOSE_NORMAL, DRAIN_REASON
from ..tokens import TokenEntry
from .events import AudioIn, ClientEvent, CloseStream, SetAudioFormat, WireProtocol, parse_json_object
from .wyoming_wire import (
    AUDIO_CHUNK,
    AUDIO_START,
    AUDIO_STOP,
    DESCRIBE,
    PING,
    PONG,
    SELECT_PROGRAM,
    TRANSCRIBE,
    TRANSCRIPT_CHUNK,
    TRANSCRIPT_START,
    TRANSCRIPT_STOP,
    AsrModel,
    AsrProgram,
    TranscribeRequest,
    WyomingEvent,
    audio_format_of,
    encode_event,
    error_event,
    transcript_event,
)

if TYPE_CHECKING:
    from ..providers import Provider


def runner_frame(event: WyomingEvent) -> str | bytes:
    """An event of a running transcription as the session runner reads it."""
    if event.type == AUDIO_CHUNK:
        return event.payload
    return json.dumps({"type": event.type, "data": dict(event.data)}, ensure_ascii=False)


def frame(event: WyomingEvent) -> str:
    """A payload-less event as the text frame the runner sends (UTF-8 on the wire)."""
    return encode_event(event).decode()


@dataclass(frozen=True)
class SessionRequest:
    """What the preamble said about the transcription that starts with its ``audio-start``."""

    name: str | None  # a program (engine) or model name: transcribe's, else select-program's
    language: str | None
    audio: AudioFormat


class Preamble:
    """The events before a transcription. :meth:`handle` returns the events that answer one
    (``info``, ``pong``) and, at ``audio-start``, the request that opens the transcription;
    it raises ProtocolError for anything else (audio before ``audio-start``, an unknown type)."""

    def __init__(self) -> None:
        self.program: str | None = None  # select-program's, for the rest of the connection
        self._transcribe: TranscribeRequest | None = None

    def handle(self, event: WyomingEvent, info: Callable[[], WyomingEvent]
               ) -> tuple[list[WyomingEvent], SessionRequest | None]:
        if event.type == DESCRIBE:
            return [info()], None
        if event.type == PING:
            return [WyomingEvent(PONG, {"text": event.data.get("text")})], None
        if event.type == SELECT_PROGRAM:
            name = event.data.get("name")
            if not isinstance(name, str) or not name or len(name) > 100:
                raise ProtocolError("select-program needs a program name", code="bad_event")
            self.program = name
            return [], None
        if event.type == TRANSCRIBE:
            self._transcribe = TranscribeRequest.from_event(event)
            return [], None
        if event.type == AUDIO_START:
            transcribe, self._transcribe = self._transcribe or TranscribeRequest(), None
            return [], SessionRequest(transcribe.name or self.program, transcribe.language, audio_format_of(event))
        if event.type in (AUDIO_CHUNK, AUDIO_STOP):
            raise ProtocolError(f"{event.type} before audio-start: send transcribe (optional), then audio-start "
                                "with rate, width and channels, then the audio", code="audio_before_start")
        raise ProtocolError(f"unknown or unsupported event type {event.type!r}; this server does speech to text: "
                            "describe, transcribe, audio-start, audio-chunk, audio-stop", code="unknown_type")


class WyomingProtocol(WireProtocol):
    """One transcription, from ``audio-start`` to its ``transcript`` (or ``error``)."""

    def __init__(self, *, language: str | None = None, streaming: bool = False) -> None:
        self.language = language
        self.streaming = streaming
        self.failed = False  # an error event went out: the connection closes after it
        self._chunks: list[str] = []
        self._started = False
        self._pong: str | None = None
        self._untranscribed = 0.0

    # --- client → server

    def opening(self, metadata: Mapping[str, Any]) -> list[str]:
        return []

    def parse(self, frame_in: str | bytes) -> list[ClientEvent]:
        if isinstance(frame_in, bytes):
            return [AudioIn(frame_in)] if frame_in else []
        message = parse_json_object(frame_in, what="events")  # runner_frame's JSON
        kind, data = message.get("type"), message.get("data") or {}
        if not isinstance(kind, str) or not isinstance(data, dict):
            raise ProtocolError('events need a "type" string and a "data" object', code="bad_event")
        event = WyomingEvent(kind, data)
        if event.type == AUDIO_STOP:
            return [CloseStream()]
        if event.type == AUDIO_START:  # a new format for what follows
            return [SetAudioFormat(audio_format_of(event))]
        if event.type == PING:
            self._pong = str(event.data.get("text") or "")
            return []
        if event.type in (DESCRIBE, TRANSCRIBE, SELECT_PROGRAM):
            raise ProtocolError(f"{event.type} during a transcription: send audio-stop first", code="bad_event")
        raise ProtocolError(f"unknown or unsupported event type {event.type!r} during a transcription",
                            code="unknown_type")

    def acknowledge(self) -> list[str]:
        if self._pong is None:
            return []
        text, self._pong = self._pong, None
        return [frame(WyomingEvent(PONG, {"text": text or None}))]

    # --- server → client

    def result(self, result: Result) -> list[str]:
        text = result.text.strip()
        if not result.is_final or not text:
            return []
        chunk = f" {text}" if self._chunks else text
        self._chunks.append(chunk)
        if not self.streaming:
            return []
        return [*self._start(), frame(WyomingEvent(TRANSCRIPT_CHUNK, {"text": chunk}))]

    def error(self, error: SttServerError) -> list[str]:
        self.failed = True
        return [frame(error_event(error.message, error.code))]

    def closing(self, untranscribed_seconds: float = 0.0) -> list[str]:
        self._untranscribed = untranscribed_seconds
        return []  # what ends it depends on the close: see ending()

    def ending(self, code: int, reason: str) -> list[str]:
        """The last events of the transcription, given how the session closes: the transcript
        when every bit of audio up to the client's ``audio-stop`` was transcribed, else an
        ``error`` saying why it is not complete. Nothing after an error already sent."""
        if self.failed:
            return []
        complete = code == CLOSE_NORMAL or (code == CLOSE_GOING_AWAY and reason == DRAIN_REASON)
        if complete and self._untranscribed <= 0:
            transcript = frame(transcript_event("".join(self._chunks), self.language))
            if not self.streaming:
                return [transcript]
            return [*self._start(), transcript, frame(WyomingEvent(TRANSCRIPT_STOP))]
        self.failed = True
        prefix, colon, _ = reason.partition(":")  # "idle_timeout: no audio ..." names its code
        code_name = prefix if colon and prefix.isidentifier() else (
            "draining" if code == CLOSE_GOING_AWAY else "incomplete")
        text = f"transcription not complete: {reason or 'closed'}"
        if self._untranscribed > 0 and "not transcribed" not in text:
            text += f"; {self._untranscribed:.1f} s of the audio received were not transcribed"
        return [frame(error_event(text, code_name))]

    def _start(self) -> list[str]:
        if self._started:
            return []
        self._started = True
        data = {"language": self.language} if self.language else {}
        return [frame(WyomingEvent(TRANSCRIPT_START, data))]


# --- what the engines serve, as Wyoming describes it ---------------------------------------------


def engine_models(provider: Provider, default_language: str) -> dict[str, list[str]]:
    """Model name → the languages it serves, as the engine really has them loaded. An engine
    that takes any language tag (it passes it on) is listed with the default language."""
    per_model = getattr(provider, "model_languages", None)
    if callable(per_model):
        models = per_model()
        if models:
            return {str(name): [str(tag) for tag in tags] for name, tags in models.items()}
    described = provider.describe().get("model")
    name = described if isinstance(described, str) and described else provider.name
    return {name: list(provider.languages() or (default_language,))}


def program_order(providers: Mapping[str, Provider], default: str, token: TokenEntry | None) -> list[str]:
    """The engines a Wyoming client may use, the default first (Home Assistant uses the first)."""
    names = [name for name in providers if token is None or token.allows(name)]
    return sorted(names, key=lambda name: name != default)


def describe_programs(config: Config, providers: Mapping[str, Provider], token: TokenEntry | None
                      ) -> list[AsrProgram]:
    default = config.wyoming.provider or config.server.default_provider
    language = config.wyoming.language or config.session.language
    programs = []
    for name in program_order(providers, default, token):
        models = engine_models(providers[name], language)
        if token is not None and token.models is not None:
            models = {model: tags for model, tags in models.items() if token.allows_model(model)} or models
        programs.append(AsrProgram(name, f"stt_server {name} engine",
                                   [AsrModel(model, tags) for model, tags in models.items()],
                                   config.wyoming.transcript_streaming))
    return programs


def resolve_engine(name: str | None, providers: Mapping[str, Provider], default: str,
                   default_language: str) -> tuple[str, str | None]:
    """transcribe's (or select-program's) name → (provider, model or None for its default).
    The name may be a provider (program) or one of a provider's models."""
    if not name or name in providers:
        return name or default, None
    for provider_name, provider in providers.items():
        if name in engine_models(provider, default_language):
            has_models = callable(getattr(provider, "model_languages", None))
            return provider_name, name if has_models else None
    raise RequestError(f"unknown program or model {name!r}; describe lists them (programs: "
                       f"{', '.join(sorted(providers))})", parameter="name", code="bad_request")


def session_context(request: SessionRequest, *, config: Config, providers: Mapping[str, Provider],
                    token: TokenEntry, peer: str) -> SessionContext:
    """A transcription's parameters, checked as a URL's are, under the tied token's rights."""
    wyoming = config.wyoming
    default_language = wyoming.language or config.session.language
    provider, model = resolve_engine(request.name, providers, wyoming.provider or config.server.default_provider,
                                     default_language)
    query = {"provider": provider, "language": request.language or default_language, "encoding": "linear16",
             "sample_rate": str(request.audio.sample_rate), "channels": str(request.audio.channels),
             "interim_results": "false"}
    if model:
        query["model"] = model
    params = params_from_query(Endpoint.WYOMING, query, defaults=config.session,
                               default_provider=config.server.default_provider, providers=providers.keys())
    return SessionContext(session_id=uuid.uuid4().hex, params=within_rights(token, params), token=token, peer=peer)
