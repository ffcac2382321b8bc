"""What an engine produces: interim and final transcripts with timing. Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Word:
    word: str
    # Seconds from the start of the session's audio.
    start: float
    end: float
    confidence: float = 1.0


@dataclass(frozen=True)
class Result:
    """One transcript hypothesis for a span of the session's audio.

    An interim result may be replaced by later ones for the same span; a final one never is,
    and the next result starts after it.
    """

    text: str
    is_final: bool
    # Seconds from the start of the session's audio.
    start: float
    end: float
    confidence: float = 0.0
    words: tuple[Word, ...] = field(default=())
    # True when the final closes an utterance (silence seen), not a forced cut or a Finalize.
    speech_final: bool = False
    # For interim results: how unlikely the text is to change (0..1), where the engine says.
    stability: float | None = None
    # The language the engine heard, when it detected it (``language=multi``): a primary
    # subtag such as "de". None when the session named the language or the engine cannot tell.
    language: str | None = None
    # Words the engine's loop guard removed from this result: repeated copies that the audio
    # does not hold (a Whisper loop). Counted in the metrics and logged, never sent.
    loop_words_removed: int = 0

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)
