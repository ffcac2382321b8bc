"""The options of the Whisper provider (``providers.whisper`` in config.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import require, within


@dataclass(frozen=True)
class WhisperOptions:
    # Default model: a name (tiny.en, base) or a CTranslate2 model directory; "" = tiny.en.
    model: str = "tiny.en"
    # More models a session may pick with ?model= (names or directories); each is loaded once.
    models: tuple[str, ...] = ()
    # Where split models (base) are joined once; "" = $CACHE_DIRECTORY (systemd), else
    # $XDG_CACHE_HOME/stt_server, else ~/.cache/stt_server.
    model_cache_dir: str = ""
    # Where CTranslate2 runs the model.
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    # CTranslate2 quantisation (int8 is fastest on CPU; float16 on GPU). "default" is taken as
    # int8 on CPU: CTranslate2 would pick float32 there (1.5-2x slower, same accuracy).
    compute_type: str = "int8"
    # Model calls that may run at once, shared by all sessions (size of the worker pool).
    workers: int = 2
    # CPU threads per model call; workers x cpu_threads should not exceed the cores (0 = CTranslate2 default).
    cpu_threads: int = 1
    # Beam width for finals; interims always decode greedily.
    beam_size: int = 5
    # Decode each utterance in Whisper's full 30 s window (faster-whisper's transcribe(), one at a
    # time) instead of a window sized to the audio, batched: 2-3x the CPU per utterance, for
    # comparison or a model the right-sized window does not suit.
    full_window: bool = False
    # Most audio window (s, members x window) beam-searched in one call; only utterances with
    # equal windows share one: 48 = four of up to 8 s together; memory grows with it
    # (bench/RESULTS.md).
    batch_window_seconds: float = 48.0
    # Shortest encoder window (s): each utterance is padded with silence to at least this
    # (much shorter windows garble two-word utterances; longer ones cost CPU and memory).
    min_window_seconds: float = 8.0
    # Silero VAD speech probability (0..1) above which audio counts as speech.
    vad_threshold: float = 0.5
    # Audio kept before speech starts and after it ends, so onsets and trailing sounds are not clipped (ms).
    speech_pad_ms: int = 300
    # Utterances with less detected speech than this are dropped without decoding (clicks, coughs) (ms).
    min_speech_ms: int = 150
    # Longest utterance before a forced final; Whisper sees at most 30 s at once.
    max_utterance_seconds: float = 20.0
    # An utterance longer than this is split where speech resumes after a pause of speech_pad_ms
    # (a final with speech_final false, decoded from the pause on): long speech gets its finals
    # as it goes, and each decode stays short (bench/RESULTS.md). A pause that reaches the
    # endpoint is an endpoint as ever. 0 = split only at endpoints and max_utterance_seconds.
    split_after_seconds: float = 6.0
    # Minimum time between two interim re-decodes of one stream (ms).
    interim_interval_ms: int = 500
    # Interims also wait this many times the recent decode time, so under load they thin out.
    interim_load_factor: float = 2.0
    # With endpointing off, a pause this long still commits a final (speech_final false); 0 = never.
    pause_final_ms: int = 2000

    def __post_init__(self) -> None:
        require(bool(self.compute_type.strip()), "compute_type must not be empty")
        require(all(spec.strip() for spec in self.models), "models must not contain empty names")
        within("workers", self.workers, 1, 64)
        within("cpu_threads", self.cpu_threads, 0, 256)
        within("beam_size", self.beam_size, 1, 20)
        within("batch_window_seconds", self.batch_window_seconds, 1, 240)
        within("min_window_seconds", self.min_window_seconds, 0, 30)
        require(0.0 < self.vad_threshold < 1.0, f"vad_threshold must be between 0 and 1, got {self.vad_threshold}")
        within("speech_pad_ms", self.speech_pad_ms, 0, 2000)
        within("min_speech_ms", self.min_speech_ms, 0, 5000)
        # Pads on both sides must still fit in Whisper's 30 s window.
        within("max_utterance_seconds", self.max_utterance_seconds, 1, 28)
        within("split_after_seconds", self.split_after_seconds, 0, 28)
        within("interim_interval_ms", self.interim_interval_ms, 50, 60_000)
        require(self.interim_load_factor >= 1.0,
                f"interim_load_factor must be at least 1 (or interims fall behind), got {self.interim_load_factor}")
        within("pause_final_ms", self.pause_final_ms, 0, 60_000)
