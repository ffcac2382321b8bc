"""The options of the pocketsphinx provider (``providers.pocketsphinx`` in config.yaml), and the
check that a session's language is one the model serves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import require, within
from .toolkit import match_language


@dataclass(frozen=True)
class PocketsphinxOptions:
    # Acoustic model directory; "" = the en-us model bundled with the pocketsphinx package.
    model: str = ""
    # N-gram language model file (.lm.bin or ARPA); "" = the bundled en-us.lm.bin.
    language_model: str = ""
    # Pronunciation dictionary; "" = the bundled cmudict-en-us.dict.
    dictionary: str = ""
    # Primary language subtags the model serves; other session languages are refused (400).
    languages: tuple[str, ...] = ("en",)
    # Decoder worker processes; each decodes its streams one after another on one core.
    processes: int = 2
    # Streams one worker process hosts (each costs a ~90 MB decoder); more are refused (503).
    max_streams_per_process: int = 4
    # How worker processes are started ("fork" is not offered: the server has threads).
    start_method: Literal["spawn", "forkserver"] = "spawn"
    # Aggressiveness of pocketsphinx's voice activity detector, 0 (loose) to 3 (very aggressive).
    vad_mode: int = 3
    # Audio decoded before the detected speech start, and kept after its end (ms).
    speech_pad_ms: int = 300
    # Voiced audio within the last speech_pad_ms that starts an utterance (ms).
    min_speech_ms: int = 120
    # With endpointing off, a pause this long still commits a final (speech_final false); 0 = never.
    pause_final_ms: int = 2000
    # Longest utterance before a forced final (speech_final false).
    max_utterance_seconds: float = 30.0
    # Least audio between two interim results of one stream (ms); an unchanged text is not resent.
    interim_interval_ms: int = 250
    # Unprocessed audio a stream may have queued for its worker before send_audio waits (s).
    max_backlog_seconds: float = 5.0
    # Longest wait for the workers to load their first decoder at start (s).
    start_timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        require(bool(self.languages) and all(tag.strip() for tag in self.languages),
                "languages must name at least one language")
        within("processes", self.processes, 1, 64)
        within("max_streams_per_process", self.max_streams_per_process, 1, 256)
        within("vad_mode", self.vad_mode, 0, 3)
        within("speech_pad_ms", self.speech_pad_ms, 30, 2000)
        within("min_speech_ms", self.min_speech_ms, 30, self.speech_pad_ms)
        within("pause_final_ms", self.pause_final_ms, 0, 60_000)
        within("max_utterance_seconds", self.max_utterance_seconds, 1, 600)
        within("interim_interval_ms", self.interim_interval_ms, 10, 60_000)
        within("max_backlog_seconds", self.max_backlog_seconds, 0.5, 600)
        require(self.start_timeout_seconds > 0,
                f"start_timeout_seconds must be positive, got {self.start_timeout_seconds}")


def check_language(tag: str, languages: tuple[str, ...]) -> None:
    """Raise RequestError unless the tag's primary subtag ("en" of "en-US") is served."""
    match_language(tag, {language.lower() for language in languages}, detects=False,
                   engine="the pocketsphinx model")
