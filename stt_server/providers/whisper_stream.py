"""One Whisper session's stream: VAD-gated utterances, adaptive interims, finals in order.

Whisper is not a streaming model: it transcribes a window of up to 30 s at once, and every
call costs a full encoder pass (~0.3–0.6 s of one CPU core for ``tiny.en``) whatever the audio
length. So streaming is built around it:

* Silero VAD (:mod:`.vad`, the ONNX model bundled with faster-whisper), run incrementally on
  each chunk, cuts the audio into utterances (:mod:`.segmenter`). Nothing the VAD does not
  call speech reaches Whisper, which otherwise invents text on silence and noise.
* An utterance ends on ``endpointing_ms`` of silence (a final with ``speech_final``), on
  ``finalize()``/``close()``, or after ``max_utterance_seconds`` (a forced final), and is then
  transcribed once, with word timestamps.
* While an utterance goes on, interims re-decode it from its start; their cadence adapts to
  load (see :meth:`WhisperStream._maybe_interim`) and they only use idle workers, so they
  never delay a final and never fall behind real time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from ..errors import ProviderError
from ..results import Result, Word
from ..session import SessionParams
from .base import TranscriptionStream
from .scheduler import EngineScheduler, Lane, Priority, Superseded
from .segmenter import AudioBuffer, Cut, Segmenter
from .toolkit import Pcm16Aligner, UtteranceOptions
from .vad import SAMPLE_RATE, VAD_WINDOW, StreamingVad
from .whisper_decode import Decoded, DecodeRequest
from .whisper_options import WhisperOptions

PUNCTUATION = str.maketrans("", "", ".,?!;:\"“”…¿¡")

T = TypeVar("T")


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


class WhisperEngine(Protocol):
    """What a stream uses of its provider (:class:`~.whisper.WhisperProvider`): shared model,
    VAD and scheduler."""

    options: WhisperOptions
    model: Any
    vad_session: Any
    # Recent wall time of one decode: paces interims to the real load.
    decode_estimate: float
    scheduler: EngineScheduler[ModelJob, Decoded]

    def scheduler_lane(self) -> Lane: ...

    async def run_vad(self, fn: Callable[..., T], *args: Any) -> T: ...


class WhisperStream(TranscriptionStream):
    """One session: VAD-gated utterances, interims while speech goes on, finals at the end.

    ``finalize()`` returns once the final for the current utterance (and every final before it)
    has been *emitted*; ``close()`` returns once every final has been emitted and the results
    ended.
    """

    def __init__(self, provider: WhisperEngine, session: SessionParams, language: str | None,
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
        utterances = UtteranceOptions.for_session(session, sample_rate=SAMPLE_RATE,
                                                  pause_final_ms=options.pause_final_ms,
                                                  max_utterance_seconds=options.max_utterance_seconds)
        self._segmenter = Segmenter(
            threshold=options.vad_threshold,
            pad=options.speech_pad_ms * SAMPLE_RATE // 1000,
            silence_samples=utterances.silence_samples,
            speech_final=utterances.speech_final,
            max_samples=utterances.max_samples,
            split_samples=int(options.split_after_seconds * SAMPLE_RATE),
        )
        self._audio = AudioBuffer()
        self._aligner = Pcm16Aligner()
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
        data = self._aligner.push(audio)
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
        shorter one it is thrown away if speech resumes (a decode already running cannot be
        stopped), so it starts only while the engine has nothing else to do (checked again on
        each chunk of the pause): one idle worker was not enough, as every stream that found one
        started a decode that most often went to waste, and the finals of a burst then queued
        behind them (16 streams of reading: engine time per stream 0.058 → 0.045, 32
        desynchronised streams' p95 2.0-2.2 → 1.6 s, bench/RESULTS.md).
        """
        tentative = self._segmenter.tentative_end()
        current = self._speculation
        if current is not None and (tentative is None or current[:2] != tentative):
            current[2].cancel()
            self._speculation = current = None
        if (tentative is None or current is not None or self._segmenter.voiced < self._min_voiced
                or self._done or self._closing):
            return
        if not (self._segmenter.splits_at(tentative[1]) or self._provider.scheduler.is_idle()):
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
