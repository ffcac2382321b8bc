"""Scaffolding for engine authors: the pieces every provider otherwise writes again.

Pure helpers (no ``await``, no engine):

* :func:`primary_language` / :func:`match_language`: a BCP-47 tag from the URL ("en-US",
  "pt_BR", "multi") → the code an engine knows, or a 400 naming ``language``;
* :class:`UtteranceOptions`: a session's endpointing turned into the numbers a segmenter needs
  (silence that ends an utterance, whether that is a ``speech_final``);
* :class:`Pcm16Aligner`: audio chunks split mid-sample (a websocket frame may end on an odd
  byte) → whole 16-bit samples;
* :func:`clamp` and :func:`seconds`: confidences into 0..1, sample counts into stream seconds.

See ``stt_server.testing`` for the conformance kit that checks a provider keeps the
interface's promises.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from ..errors import RequestError
from ..session import SessionParams

#: Language values that ask a multilingual engine to detect the language itself.
DETECT_LANGUAGE = frozenset({"multi", "auto"})


def primary_language(tag: str) -> str:
    """"en-US" → "en", "pt_BR" → "pt", "MULTI" → "multi" (lower-case primary subtag)."""
    return tag.replace("_", "-").split("-")[0].lower()


def match_language(tag: str, supported: Collection[str], *, detects: bool, engine: str) -> str | None:
    """The engine's code for ``tag``, or None when the engine should detect the language.

    ``detects``: the engine can identify the language (then "multi"/"auto", and an empty tag,
    mean detect). A language the engine does not know is a RequestError naming ``language``:
    an English-only model fed French returns confident English nonsense.
    """
    primary = primary_language(tag)
    if detects and (primary in DETECT_LANGUAGE or not primary):
        return None
    if primary in supported:
        return primary
    if primary in DETECT_LANGUAGE:
        raise RequestError(f"language {tag!r} (detection) needs a multilingual model; {engine} serves "
                           f"only {', '.join(sorted(supported))}", parameter="language")
    shown = ", ".join(sorted(supported)) if len(supported) <= 12 else f"{len(supported)} languages"
    raise RequestError(f"language {tag!r} is not supported by {engine} (supported: {shown})",
                       parameter="language")


@dataclass(frozen=True)
class UtteranceOptions:
    """How a session wants utterances cut, in samples at ``sample_rate``.

    ``silence_samples``: a pause this long ends an utterance (0 = never); ``speech_final``:
    such an end is an endpoint (the client asked for endpointing) rather than a convenient cut
    after the engine's own long pause (``pause_final_ms``, used when endpointing is off).
    """

    silence_samples: int
    speech_final: bool
    max_samples: int

    @classmethod
    def for_session(cls, session: SessionParams, *, sample_rate: int, pause_final_ms: int,
                    max_utterance_seconds: float) -> UtteranceOptions:
        silence_ms = session.endpointing_ms or pause_final_ms
        return cls(silence_samples=silence_ms * sample_rate // 1000,
                   speech_final=session.endpointing_ms > 0,
                   max_samples=int(max_utterance_seconds * sample_rate))


class Pcm16Aligner:
    """Keeps a trailing odd byte for the next chunk, so every chunk out is whole samples."""

    def __init__(self) -> None:
        self._odd = b""

    def push(self, audio: bytes) -> bytes:
        data = self._odd + audio if self._odd else audio
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        return data[:cut]

    @property
    def pending(self) -> int:
        """Bytes held back (0 or 1); dropped at the end of a stream, half a sample is noise."""
        return len(self._odd)


def clamp(value: float, low: float = 0.0, high: float = 1.0) -> float:
    """Engines report probabilities slightly outside 0..1 (exp of a logprob, float error)."""
    return min(high, max(low, float(value)))


def seconds(samples: int, sample_rate: int = 16_000) -> float:
    """A sample position → stream seconds, rounded to the millisecond the wire formats use."""
    return round(samples / sample_rate, 3)
