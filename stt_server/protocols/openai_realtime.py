"""OpenAI's Realtime API, transcription sessions (``GET /v1/realtime?intent=transcription``), so
OpenAI's SDKs and the voice-agent frameworks built on them transcribe here unchanged.

Client events: ``session.update`` (a ``"type": "transcription"`` session) or the beta
``transcription_session.update``; ``input_audio_buffer.append`` (base64 audio),
``input_audio_buffer.commit``, ``input_audio_buffer.clear``.

Server events: ``session.created`` on connect; ``session.updated`` (or
``transcription_session.updated``, answering the beta update); with turn detection
(``server_vad``, the default) ``input_audio_buffer.speech_started`` when the engine hears an
utterance begin and ``.speech_stopped`` + ``.committed`` + the item's
``conversation.item.input_audio_transcription.completed`` at its endpoint; without it
(``turn_detection: null``) the client's commit ends the item. ``...transcription.delta`` carries
the words as they settle: the item's finals, and the words two interims in a row agree on.
``completed`` is the item's transcript, the authority when the two differ. ``error`` events are
OpenAI's shape (type, code, message, param, event_id of the client event).

Every item is completed: at the end of the session (a close, a drain), audio not yet committed
is committed and its transcript sent, so nothing received is lost. What is accepted and not
acted on: the ``model`` (the engine is the session's, chosen by ``?provider=``), ``prompt``,
``threshold``, ``prefix_padding_ms``, noise reduction; ``semantic_vad`` runs as ``server_vad``.
Each is echoed as it is in force.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..audio_format import PCM16, AudioFormat
from ..errors import ProtocolError, ProviderError, SttServerError
from ..results import Result
from ..session import SessionParams
from .events import (
    AudioIn,
    ClientEvent,
    Finalize,
    Reconfigure,
    SetAudioFormat,
    WireProtocol,
    decode_base64_audio,
    parse_json_object,
)

SAMPLE_RATE = 24_000  # OpenAI's pcm16 is 24 kHz mono

# Beta names (``input_audio_format``) and GA names (``audio.input.format.type``) of each format.
BETA_FORMATS: Mapping[str, AudioFormat] = {
    "pcm16": AudioFormat(PCM16, SAMPLE_RATE, 1),
    "g711_ulaw": AudioFormat("mulaw", 8_000, 1),
    "g711_alaw": AudioFormat("alaw", 8_000, 1),
}
GA_FORMAT_NAMES: Mapping[str, str] = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
BETA_TO_GA = {beta: ga for ga, beta in GA_FORMAT_NAMES.items()}

MAX_SILENCE_MS = 60_000


def _dumps(message: Mapping[str, Any]) -> str:
    # ASCII escapes: a client's string echoed back (an event_id, a prompt) may hold a lone
    # surrogate, which the websocket's UTF-8 cannot carry; "\ud800" in JSON text it can.
    return json.dumps(message)


def _event_id() -> str:
    return f"event_{uuid.uuid4().hex[:20]}"


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


class RealtimeEventError(ProtocolError):
    """A client event OpenAI's API would refuse, naming the offending field (``param``)."""

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message, code=code)
        self.param = param


# --- the session's settings -----------------------------------------------------------------


@dataclass(frozen=True)
class TurnDetection:
    """``server_vad``: an item ends at the engine's endpoint, after ``silence_duration_ms``."""

    silence_duration_ms: int
    threshold: float = 0.5
    prefix_padding_ms: int = 300

    def to_json(self) -> dict[str, Any]:
        return {"type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms}


@dataclass(frozen=True)
class TranscriptionSettings:
    audio_format: str = "pcm16"  # a BETA_FORMATS key
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    turn_detection: TurnDetection | None = None  # None: the client commits
    noise_reduction: Mapping[str, Any] | None = None

    def transcription_json(self) -> dict[str, Any]:
        return {"model": self.model, "language": self.language, "prompt": self.prompt}

    def ga_session(self, session_id: str) -> dict[str, Any]:
        """A ``RealtimeTranscriptionSessionCreateRequest`` as the GA API returns it."""
        audio_format: dict[str, Any] = {"type": BETA_TO_GA[self.audio_format]}
        if self.audio_format == "pcm16":
            audio_format["rate"] = SAMPLE_RATE
        return {
            "type": "transcription", "id": f"sess_{session_id}", "object": "realtime.transcription_session",
            "audio": {"input": {
                "format": audio_format,
                "transcription": self.transcription_json(),
                "turn_detection": self.turn_detection.to_json() if self.turn_detection else None,
                "noise_reduction": self.noise_reduction,
            }},
            "include": [],
        }

    def beta_session(self, session_id: str) -> dict[str, Any]:
        """A beta ``TranscriptionSession``."""
        return {
            "id": f"sess_{session_id}", "object": "realtime.transcription_session", "modalities": ["text"],
            "input_audio_format": self.audio_format,
            "input_audio_transcription": self.transcription_json(),
            "turn_detection": self.turn_detection.to_json() if self.turn_detection else None,
            "input_audio_noise_reduction": self.noise_reduction,
        }


def _object(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise RealtimeEventError(f"{param} must be an object", code="invalid_value", param=param)
    return value


def _optional_text(section: Mapping[str, Any], name: str, param: str, current: str | None) -> str | None:
    if name not in section:
        return current
    value = section[name]
    if value is not None and (not isinstance(value, str) or len(value) > 4096):
        raise RealtimeEventError(f"{param}.{name} must be a string", code="invalid_value", param=f"{param}.{name}")
    return value or None


def _number(section: Mapping[str, Any], name: str, param: str, default: float, low: float, high: float) -> float:
    value = section.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RealtimeEventError(f"{param}.{name} must be a number from {low:g} to {high:g}",
                                 code="invalid_value", param=f"{param}.{name}")
    return value


def _turn_detection(value: Any, param: str, default_silence_ms: int) -> TurnDetection | None:
    if value is None:
        return None
    section = _object(value, param)
    kind = section.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise RealtimeEventError(f"{param}.type must be server_vad, semantic_vad or null (no turn detection)",
                                 code="invalid_value", param=f"{param}.type")
    return TurnDetection(
        silence_duration_ms=int(_number(section, "silence_duration_ms", param, default_silence_ms, 0, MAX_SILENCE_MS)),
        threshold=float(_number(section, "threshold", param, 0.5, 0.0, 1.0)),
        prefix_padding_ms=int(_number(section, "prefix_padding_ms", param, 300, 0, MAX_SILENCE_MS)),
    )


def _transcription(settings: TranscriptionSettings, value: Any, param: str) -> TranscriptionSettings:
    if value is None:
        return settings
    section = _object(value, param)
    language = _optional_text(section, "language", param, settings.language)
    if language is not None and (len(language) > 35 or not all(c.isalnum() or c in "-_" for c in language)):
        raise RealtimeEventError(f"{param}.language must be a language code such as 'en'",
                                 code="invalid_value", param=f"{param}.language")
    return replace(settings, model=_optional_text(section, "model", param, settings.model), language=language,
                   prompt=_optional_text(section, "prompt", param, settings.prompt))


def _noise_reduction(settings: TranscriptionSettings, section: Mapping[str, Any], name: str,
                     param: str) -> TranscriptionSettings:
    if name not in section:
        return settings
    value = section[name]
    if value is not None:
        value = {k: v for k, v in _object(value, f"{param}.{name}").items() if k in ("type", "strength")}
    return replace(settings, noise_reduction=value)


def apply_ga_update(settings: TranscriptionSettings, session: Any, default_silence_ms: int) -> TranscriptionSettings:
    """``session.update``'s ``session`` (GA shape) applied to ``settings``."""
    session = _object(session, "session")
    if session.get("type", "transcription") != "transcription":
        raise RealtimeEventError("this server serves transcription sessions only: session.type must be "
                                 "'transcription' (connect with ?intent=transcription)",
                                 code="invalid_value", param="session.type")
    audio = _object(session.get("audio") or {}, "session.audio")
    audio_input = _object(audio.get("input") or {}, "session.audio.input")
    param = "session.audio.input"
    if audio_input.get("format") is not None:
        audio_format = _object(audio_input["format"], f"{param}.format")
        kind = audio_format.get("type", "audio/pcm")
        name = GA_FORMAT_NAMES.get(kind) if isinstance(kind, str) else None
        if name is None:
            raise RealtimeEventError(f"{param}.format.type must be one of {', '.join(GA_FORMAT_NAMES)}",
                                     code="invalid_value", param=f"{param}.format.type")
        if name == "pcm16" and audio_format.get("rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise RealtimeEventError(f"{param}.format.rate must be {SAMPLE_RATE}", code="invalid_value",
                                     param=f"{param}.format.rate")
        settings = replace(settings, audio_format=name)
    settings = _transcription(settings, audio_input.get("transcription"), f"{param}.transcription")
    if "turn_detection" in audio_input:
        settings = replace(settings, turn_detection=_turn_detection(
            audio_input["turn_detection"], f"{param}.turn_detection", default_silence_ms))
    return _noise_reduction(settings, audio_input, "noise_reduction", param)


def apply_beta_update(settings: TranscriptionSettings, session: Any,
                      default_silence_ms: int) -> TranscriptionSettings:
    """``transcription_session.update``'s ``session`` (beta shape) applied to ``settings``."""
    session = _object(session, "session")
    if session.get("input_audio_format") is not None:
        name = session["input_audio_format"]
        if not isinstance(name, str) or name not in BETA_FORMATS:
            raise RealtimeEventError(f"session.input_audio_format must be one of {', '.join(BETA_FORMATS)}",
                                     code="invalid_value", param="session.input_audio_format")
        settings = replace(settings, audio_format=name)
    settings = _transcription(settings, session.get("input_audio_transcription"), "session.input_audio_transcription")
    if "turn_detection" in session:
        settings = replace(settings, turn_detection=_turn_detection(
            session["turn_detection"], "session.turn_detection", default_silence_ms))
    return _noise_reduction(settings, session, "input_audio_noise_reduction", "session")


# --- items ----------------------------------------------------------------------------------


def _agreed(previous: list[str], current: list[str]) -> list[str]:
    """The words two hypotheses in a row begin with alike (LocalAgreement-2)."""
    agreed = []
    for before, now in zip(previous, current):
        if before != now:
            break
        agreed.append(now)
    return agreed


@dataclass
class Item:
    """One utterance: its finals so far, the words sent as deltas, the last interim's words."""

    id: str
    start: float | None = None
    end: float = 0.0
    finals: list[str] = field(default_factory=list)
    sent_words: list[str] = field(default_factory=list)
    interim_words: list[str] = field(default_factory=list)
    committed: bool = False

    @property
    def transcript(self) -> str:
        return " ".join(self.finals)

    def settled_words(self, interim: Result | None) -> list[str]:
        """The finals' words, then those the last two interims agree on."""
        words = self.transcript.split()
        if interim is not None:
            current = interim.text.split()
            words += _agreed(self.interim_words, current)
            self.interim_words = current
        else:
            self.interim_words = []
        return words

    def delta(self, settled: list[str]) -> str | None:
        """Text to append to what was sent, when what was sent still stands."""
        if len(settled) <= len(self.sent_words) or settled[:len(self.sent_words)] != self.sent_words:
            return None
        new = settled[len(self.sent_words):]
        text = (" " if self.sent_words else "") + " ".join(new)
        self.sent_words = settled
        return text


# --- the session ----------------------------------------------------------------------------


class OpenAIRealtimeProtocol(WireProtocol):
    """One transcription session; see the module docstring."""

    audio_errors_are_fatal = False  # OpenAI answers bad audio with an error event and goes on

    def __init__(self, *, session_id: str = "", language: str | None = None, silence_ms: int = 500) -> None:
        """``silence_ms``: the engine's endpointing, which server_vad's silence_duration_ms sets;
        0 starts the session without turn detection."""
        self.session_id = session_id or uuid.uuid4().hex
        self.default_silence_ms = silence_ms or 500  # OpenAI's default, when turn detection is asked for
        self.default_language = language
        self.settings = TranscriptionSettings(language=language,
                                              turn_detection=TurnDetection(silence_ms) if silence_ms else None)
        self._pending: tuple[TranscriptionSettings, str] | None = None  # an update and its answer's type
        self._client_event_id: str | None = None
        self._item: Item | None = None
        self._previous_item_id: str | None = None
        self._appended = 0  # bytes since the last commit or clear
        self._commit_pending = False
        self._clearing = False

    @classmethod
    def for_session(cls, params: SessionParams) -> OpenAIRealtimeProtocol:
        return cls(language=params.language, silence_ms=params.endpointing_ms)

    # --- client events ---

    def opening(self, metadata: Mapping[str, Any]) -> list[str]:
        self.session_id = str(metadata.get("session_id") or self.session_id)
        return [self._event("session.created", session=self.settings.ga_session(self.session_id))]

    def parse(self, frame: str | bytes) -> list[ClientEvent]:
        self._client_event_id = None
        if isinstance(frame, bytes):
            raise RealtimeEventError("send audio as input_audio_buffer.append events (base64 in JSON text frames)",
                                     code="invalid_event")
        message = parse_json_object(frame, what="client events")
        event_id = message.get("event_id")
        self._client_event_id = event_id if isinstance(event_id, str) and len(event_id) <= 256 else None
        kind = message.get("type")
        if kind == "input_audio_buffer.append":
            audio = decode_base64_audio(message.get("audio"), field="audio")
            self._appended += len(audio)
            return [AudioIn(audio)] if audio else []
        if kind == "input_audio_buffer.commit":
            if not self._appended:
                raise RealtimeEventError("Error committing input audio buffer: the buffer is empty",
                                         code="input_audio_buffer_commit_empty")
            self._appended = 0
            self._commit_pending = True
            return [Finalize()]
        if kind == "input_audio_buffer.clear":
            self._appended = 0
            self._clearing = True
            return [Finalize()]
        if kind in ("session.update", "transcription_session.update"):
            update = apply_ga_update if kind == "session.update" else apply_beta_update
            settings = update(self.settings, message.get("session"), self.default_silence_ms)
            if settings.language is None:  # no language: the session's own (the URL's, or the server's)
                settings = replace(settings, language=self.default_language)
            answer = "session.updated" if kind == "session.update" else "transcription_session.updated"
            self._pending = (settings, answer)
            return self._changes(settings)
        raise RealtimeEventError(f"unknown or unsupported client event type {repr(kind)[:80]} in a "
                                 "transcription session", code="invalid_event", param="type")

    def _changes(self, settings: TranscriptionSettings) -> list[ClientEvent]:
        events: list[ClientEvent] = []
        silence = settings.turn_detection.silence_duration_ms if settings.turn_detection else 0
        old_silence = self.settings.turn_detection.silence_duration_ms if self.settings.turn_detection else 0
        if settings.language != self.settings.language or silence != old_silence:
            events.append(Reconfigure(language=settings.language, endpointing_ms=silence))
        if settings.audio_format != self.settings.audio_format:
            events.append(SetAudioFormat(BETA_FORMATS[settings.audio_format]))
        return events

    def acknowledge(self) -> list[str]:
        """Answer an update once the runner applied it (an error in between withdrew it)."""
        if self._pending is None:
            return []
        self.settings, answer = self._pending
        self._pending = None
        if answer == "session.updated":
            return [self._event(answer, session=self.settings.ga_session(self.session_id))]
        return [self._event(answer, session=self.settings.beta_session(self.session_id))]

    # --- results ---

    def result(self, result: Result) -> list[str]:
        text = result.text.strip()
        vad = self.settings.turn_detection is not None
        frames: list[str] = []
        if self._item is None:
            if not text:
                return []
            self._item = Item(id=f"item_{uuid.uuid4().hex[:20]}", start=result.start)
            if vad:
                frames.append(self._event("input_audio_buffer.speech_started", audio_start_ms=_ms(result.start),
                                          item_id=self._item.id))
        item = self._item
        item.end = max(item.end, result.end)
        if result.is_final and text:
            item.finals.append(text)
        if self._commit_pending and not vad and not item.committed:  # committed before its deltas
            frames += self._committed(item)
        if vad or item.committed:  # without turn detection an item is known from its commit on
            delta = item.delta(item.settled_words(None if result.is_final else result))
            if delta:
                frames.append(self._event("conversation.item.input_audio_transcription.delta", item_id=item.id,
                                          content_index=0, delta=delta))
        # An endpoint commits the item, during a clear too: that audio came before the clear.
        if vad and result.is_final and result.speech_final:
            frames.append(self._event("input_audio_buffer.speech_stopped", audio_end_ms=_ms(result.end),
                                      item_id=item.id))
            frames += self._complete()
        return frames

    def finalized(self) -> list[str]:
        """After a commit's or a clear's Finalize, once its finals went out."""
        if self._clearing:
            self._clearing = False
            self._item = None  # its audio is dropped, as asked
            return [self._event("input_audio_buffer.cleared")]
        if not self._commit_pending:
            return []
        self._commit_pending = False
        if self._item is None:  # silence was committed: an item with an empty transcript
            self._item = Item(id=f"item_{uuid.uuid4().hex[:20]}")
        return self._complete()

    def closing(self, untranscribed_seconds: float = 0.0) -> list[str]:
        """The session ends: what was not committed is, so every word heard is delivered."""
        if self._item is None or not self._item.finals:
            return []
        return self._complete()

    def _committed(self, item: Item) -> list[str]:
        item.committed = True
        return [self._event("input_audio_buffer.committed", item_id=item.id,
                            previous_item_id=self._previous_item_id)]

    def _complete(self) -> list[str]:
        item = self._item
        assert item is not None
        frames = [] if item.committed else self._committed(item)
        seconds = max(0.0, item.end - item.start) if item.start is not None else 0.0
        frames.append(self._event("conversation.item.input_audio_transcription.completed", item_id=item.id,
                                  content_index=0, transcript=item.transcript,
                                  usage={"type": "duration", "seconds": round(seconds, 3)}))
        self._previous_item_id = item.id
        self._item = None
        return frames

    # --- errors ---

    def error(self, error: SttServerError) -> list[str]:
        self._pending = None  # an update that failed is not in force
        client_fault = error.http_status < 500 and not isinstance(error, ProviderError)
        body: dict[str, Any] = {
            "type": "invalid_request_error" if client_fault else "server_error",
            "code": error.code, "message": error.message,
            "param": getattr(error, "param", None) or getattr(error, "parameter", None),
            "event_id": self._client_event_id if client_fault else None,
        }
        return [self._event("error", error=body)]

    @staticmethod
    def _event(kind: str, **fields: Any) -> str:
        return _dumps({"type": kind, "event_id": _event_id(), **fields})
