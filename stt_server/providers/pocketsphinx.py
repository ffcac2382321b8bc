"""pocketsphinx 5 behind the streaming provider interface, decoding in worker processes.

pocketsphinx is a true streaming recogniser (``start_utt``, ``process_raw``, ``hyp()``), but
it holds the GIL while it decodes, so it never runs in the server's process: a few worker
processes (``processes``) each host the decoders of several streams (at most
``max_streams_per_process``), keyed by stream id.

Process model and IPC, per worker:

* two one-way pipes: commands in (open, audio, finalize, close, abort, stop), replies out
  (ready, result, ack, finalized, closed, failed). Each end is held by one process only, so a
  worker that dies is seen at once as EOF on its reply pipe, and a worker whose server died
  sees EOF on its command pipe and exits.
* in the server, a *sender* thread writes commands (``send_audio`` never blocks the event
  loop on a full pipe) and a *reader* thread reads replies and hands each to its stream's
  event loop with ``call_soon_threadsafe``; streams may live on different loops.
* the reader thread alone reaps its process (no zombies). When a worker dies, its streams
  fail with ProviderError; the others go on, and the next ``open_stream`` starts a new
  worker in the dead one's slot.

Inside a worker, each stream runs the same pipeline (:class:`StreamDecoder`): pocketsphinx's
WebRTC-style VAD on 30 ms frames gates the audio; an utterance starts when ``min_speech_ms``
of the last ``speech_pad_ms`` is voiced (that padding is decoded too, so onsets are kept),
and ends after ``endpointing_ms`` of non-speech (a final with ``speech_final``), on
``finalize()``/``close()``, after ``pause_final_ms`` when endpointing is off, or after
``max_utterance_seconds``. Interims are ``hyp()`` while the utterance goes on; finals carry
words from ``seg()`` (100 frames/s) with their lattice posteriors as confidence.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import multiprocessing
import os
import queue
import re
import signal
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from ..audio_format import AudioFormat
from ..config import require, within
from ..errors import CapacityError, ProviderError
from ..results import Result, Word
from ..session import SessionParams
from .base import Provider, TranscriptionStream
from .toolkit import Pcm16Aligner, match_language

SAMPLE_RATE = 16_000
# pocketsphinx computes one feature frame every 10 ms: seg() frame indices are 1/100 s.
FRAMES_PER_SECOND = 100
# Confidence of interims: pocketsphinx computes posteriors only from the lattice, at the end
# of an utterance. Also used for a final whose words carry no posterior.
UNKNOWN_CONFIDENCE = 0.5
# Alternate pronunciations come out of seg() as "word(2)".
_VARIANT = re.compile(r"\(\d+\)$")
# How long stop() lets workers exit on their own before terminating, then killing them (s).
STOP_GRACE_SECONDS = 2.0


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


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class StreamSettings:
    """What a worker needs to know about one stream; sent with its open command."""

    interim_results: bool
    words: bool
    # Non-speech that ends an utterance (0 = none) and whether that end is an endpoint.
    silence_ms: int
    speech_final: bool
    vad_mode: int
    speech_pad_ms: int
    min_speech_ms: int
    max_utterance_ms: int
    interim_interval_ms: int


class StreamDecoder:
    """One stream's VAD-gated utterances on one pocketsphinx decoder. Blocking; no I/O.

    ``feed``, ``cut`` and ``finish`` return the results they produced, in order. Positions
    are sample counts from the stream start.
    """

    def __init__(self, decoder: Any, settings: StreamSettings) -> None:
        from pocketsphinx import Vad

        self.decoder = decoder
        self.settings = settings
        self.vad = Vad(settings.vad_mode, SAMPLE_RATE)
        self.frame_bytes: int = self.vad.frame_bytes
        frame = self.frame_bytes // 2
        self.frame_samples = frame
        self.pad_frames = max(1, settings.speech_pad_ms * SAMPLE_RATE // 1000 // frame)
        self.pad = settings.speech_pad_ms * SAMPLE_RATE // 1000
        self.min_voiced = settings.min_speech_ms * SAMPLE_RATE // 1000
        self.silence = settings.silence_ms * SAMPLE_RATE // 1000
        self.max_samples = settings.max_utterance_ms * SAMPLE_RATE // 1000
        self.interim_samples = settings.interim_interval_ms * SAMPLE_RATE // 1000
        self.pos = 0  # samples consumed into VAD frames (or flushed by a cut)
        self._pending = bytearray()  # bytes short of a whole VAD frame
        self._ring: deque[tuple[int, bytes, bool]] = deque(maxlen=self.pad_frames)
        self._undecoded = bytearray()  # utterance audio not yet given to the decoder
        self.in_utterance = False
        self.utterance_start = 0
        self._last_voiced_end = 0
        self._interim_at = 0
        self._interim_text = ""

    def feed(self, pcm: bytes) -> list[Result]:
        out: list[Result] = []
        self._pending += pcm
        usable = len(self._pending) - len(self._pending) % self.frame_bytes
        view = bytes(self._pending[:usable])
        del self._pending[:usable]
        for i in range(0, usable, self.frame_bytes):
            frame = view[i:i + self.frame_bytes]
            result = self._frame(frame, self.vad.is_speech(frame))
            if result is not None:
                out.append(result)
        interim = self._maybe_interim()
        if interim is not None:
            out.append(interim)
        return out

    def cut(self) -> list[Result]:
        """Finalize: close the current utterance (with any odd samples) now."""
        if not self.in_utterance:
            return []
        self._undecoded += self._pending
        self.pos += len(self._pending) // 2
        self._pending.clear()
        result = self._end(self.pos, speech_final=False)
        return [result] if result is not None else []

    def finish(self) -> list[Result]:
        """Stream end: the last final, if any; the decoder is then free for another stream."""
        return self.cut()

    def release(self) -> None:
        """Abort: leave the decoder between utterances, dropping what it held."""
        if self.in_utterance:
            self.in_utterance = False
            self.decoder.end_utt()

    # -- internals

    def _frame(self, frame: bytes, speech: bool) -> Result | None:
        start = self.pos
        self.pos += self.frame_samples
        if not self.in_utterance:
            self._ring.append((start, frame, speech))
            voiced = sum(self.frame_samples for _, _, is_speech in self._ring if is_speech)
            if voiced >= self.min_voiced:
                self._begin(voiced)
            return None
        self._undecoded += frame
        if speech:
            self._last_voiced_end = self.pos
        quiet = self.pos - self._last_voiced_end
        if self.silence and quiet >= self.silence:
            return self._end(min(self._last_voiced_end + self.pad, self.pos), self.settings.speech_final)
        if self.pos - self.utterance_start >= self.max_samples:
            return self._end(self.pos, speech_final=False)
        return None

    def _begin(self, voiced: int) -> None:
        self.in_utterance = True
        self.utterance_start = self._ring[0][0]
        self._last_voiced_end = max(start + self.frame_samples for start, _, speech in self._ring if speech)
        self._undecoded = bytearray(b"".join(frame for _, frame, _ in self._ring))
        self._ring.clear()
        self._interim_at = self.pos
        self._interim_text = ""
        self.decoder.start_utt()

    def _flush(self) -> None:
        if self._undecoded:
            self.decoder.process_raw(bytes(self._undecoded), False, False)
            self._undecoded.clear()

    def _maybe_interim(self) -> Result | None:
        if (not self.settings.interim_results or not self.in_utterance
                or self.pos - self._interim_at < self.interim_samples):
            return None
        self._interim_at = self.pos
        self._flush()
        hyp = self.decoder.hyp()
        text = " ".join(hyp.hypstr.split()) if hyp is not None else ""
        if not text or text == self._interim_text:
            return None
        self._interim_text = text
        return Result(text=text, is_final=False, start=_seconds(self.utterance_start), end=_seconds(self.pos),
                      confidence=UNKNOWN_CONFIDENCE)

    def _end(self, end: int, speech_final: bool) -> Result | None:
        self._flush()
        self.decoder.end_utt()
        self.in_utterance = False
        start = self.utterance_start
        hyp = self.decoder.hyp()
        text = " ".join(hyp.hypstr.split()) if hyp is not None else ""
        if not text:
            return None
        begin, finish = _seconds(start), _seconds(end)
        words: list[Word] = []
        for seg in self.decoder.seg():
            token = _VARIANT.sub("", seg.word)
            if not token or token[0] in "<[+":  # <s>, </s>, <sil>, [NOISE], ++fillers++
                continue
            prob = getattr(seg, "prob", None)
            confidence = _clamp(prob) if isinstance(prob, (int, float)) else UNKNOWN_CONFIDENCE
            w_start = min(max(begin, round(begin + seg.start_frame / FRAMES_PER_SECOND, 3)), finish)
            w_end = min(max(w_start, round(begin + (seg.end_frame + 1) / FRAMES_PER_SECOND, 3)), finish)
            words.append(Word(token, w_start, w_end, confidence))
        confidence = sum(w.confidence for w in words) / len(words) if words else UNKNOWN_CONFIDENCE
        return Result(text=text, is_final=True, start=begin, end=finish, confidence=round(confidence, 4),
                      words=tuple(words) if self.settings.words else (), speech_final=speech_final)


def _seconds(samples: int) -> float:
    return round(samples / SAMPLE_RATE, 3)


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


class Command(IntEnum):
    """Server → worker. Every message is ``(command, stream id, payload)``."""

    OPEN = 1  # payload: StreamSettings
    AUDIO = 2  # payload: PCM16 bytes
    FINALIZE = 3  # payload: a sequence number, echoed in FINALIZED
    CLOSE = 4
    ABORT = 5
    STOP = 6  # stream id 0: exit after the commands before it


class Reply(IntEnum):
    """Worker → server. Every message is ``(reply, stream id, payload)``."""

    READY = 1  # stream id 0, payload: the worker's pid
    FATAL = 2  # stream id 0, payload: why the worker cannot work (it then exits)
    RESULT = 3  # payload: Result
    ACK = 4  # payload: bytes of audio processed
    FINALIZED = 5  # payload: the FINALIZE's sequence number
    CLOSED = 6  # the stream's last results were sent
    FAILED = 7  # payload: message; the worker dropped the stream


def worker_main(commands: Connection, replies: Connection, decoder_config: dict[str, Any]) -> None:
    """A worker process: decoders for several streams, one command at a time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers end
    try:
        from pocketsphinx import Decoder

        idle = [Decoder(**decoder_config)]  # load now: a bad model fails start(), not a session
    except Exception as exc:  # noqa: BLE001 - reported to the server, which raises ProviderError
        replies.send((Reply.FATAL, 0, f"{type(exc).__name__}: {exc}"))
        return
    streams: dict[int, StreamDecoder] = {}
    replies.send((Reply.READY, 0, os.getpid()))
    while True:
        try:
            command, sid, payload = commands.recv()
        except (EOFError, OSError):  # the server is gone
            return
        if command == Command.STOP:
            return
        try:
            if command == Command.OPEN:
                decoder = idle.pop() if idle else Decoder(**decoder_config)
                streams[sid] = StreamDecoder(decoder, payload)
                continue
            stream = streams.get(sid)
            if stream is None:  # failed or aborted earlier: drop what was already on its way
                continue
            if command == Command.AUDIO:
                results = stream.feed(payload)
                tail: tuple[Reply, Any] = (Reply.ACK, len(payload))
            elif command == Command.FINALIZE:
                results, tail = stream.cut(), (Reply.FINALIZED, payload)
            elif command == Command.CLOSE:
                results, tail = stream.finish(), (Reply.CLOSED, None)
                idle.append(streams.pop(sid).decoder)
            else:  # ABORT
                stream.release()
                idle.append(streams.pop(sid).decoder)
                continue
            for result in results:
                replies.send((Reply.RESULT, sid, result))
            replies.send((tail[0], sid, tail[1]))
        except (BrokenPipeError, EOFError):
            return
        except Exception as exc:  # noqa: BLE001 - one stream's failure; its decoder is discarded
            streams.pop(sid, None)
            try:
                replies.send((Reply.FAILED, sid, f"pocketsphinx failed: {type(exc).__name__}: {exc}"))
            except OSError:
                return


# --------------------------------------------------------------------------- server side


class _Worker:
    """One worker process seen from the server: its pipes, threads and streams."""

    def __init__(self, context: Any, decoder_config: dict[str, Any], slot: int) -> None:
        self.slot = slot
        commands_in, self._commands = context.Pipe(duplex=False)
        self._replies, replies_out = context.Pipe(duplex=False)
        self.process = context.Process(target=worker_main, args=(commands_in, replies_out, decoder_config),
                                       name=f"pocketsphinx-{slot}", daemon=True)
        self.ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self.streams: dict[int, PocketsphinxStream] = {}
        self.lock = threading.Lock()
        self.alive = True
        self.stopping = False
        self.exit_message = ""
        self._outbox: queue.SimpleQueue[tuple[Command, int, Any] | None] = queue.SimpleQueue()
        self.process.start()
        # Only the worker holds these ends now, so its death is EOF here, and ours is EOF there.
        commands_in.close()
        replies_out.close()
        self._sender = threading.Thread(target=self._send_loop, name=f"pocketsphinx-{slot}-send", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name=f"pocketsphinx-{slot}-read", daemon=True)
        self._sender.start()
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def load(self) -> int:
        with self.lock:
            return len(self.streams)

    def send(self, command: Command, sid: int, payload: Any = None) -> None:
        if self.alive:
            self._outbox.put((command, sid, payload))

    def attach(self, stream: PocketsphinxStream) -> bool:
        with self.lock:
            if not self.alive:
                return False
            self.streams[stream.sid] = stream
        return True

    def forget(self, sid: int) -> None:
        with self.lock:
            self.streams.pop(sid, None)

    def stop(self) -> None:
        """Blocking: ask the worker to exit, then terminate, then kill; wait until it is reaped."""
        self.stopping = True
        self.send(Command.STOP, 0)
        self._reader.join(STOP_GRACE_SECONDS)
        for signal_it in (self.process.terminate, self.process.kill):
            if not self._reader.is_alive():
                break
            try:
                signal_it()
            except (OSError, ValueError):  # already reaped
                pass
            self._reader.join(STOP_GRACE_SECONDS)
        self._sender.join(STOP_GRACE_SECONDS)

    # -- threads

    def _send_loop(self) -> None:
        while True:
            message = self._outbox.get()
            if message is None:
                break
            try:
                self._commands.send(message)
            except (OSError, ValueError):  # the worker died; the reader reports it
                break
        self._commands.close()

    def _read_loop(self) -> None:
        try:
            while True:
                reply, sid, payload = self._replies.recv()
                if reply == Reply.READY:
                    self.ready.set_result(payload)
                elif reply == Reply.FATAL:
                    self.exit_message = f"pocketsphinx worker cannot load its decoder: {payload}"
                else:
                    with self.lock:
                        stream = self.streams.get(sid)
                    if stream is not None:
                        stream.deliver(reply, payload)
        except (EOFError, OSError):
            pass
        finally:
            self._exited()

    def _exited(self) -> None:
        """The worker is gone: reap it, fail its streams, end the sender thread."""
        self.alive = False
        self._replies.close()
        self.process.join(STOP_GRACE_SECONDS)
        if self.process.exitcode is None:  # closed its pipe but lives on: make sure
            self.process.kill()
            self.process.join()
        if not self.exit_message:
            self.exit_message = ("pocketsphinx provider stopped" if self.stopping else
                                 f"pocketsphinx worker process {self.process.pid} exited "
                                 f"(exit code {self.process.exitcode})")
        if not self.ready.done():
            self.ready.set_exception(ProviderError(self.exit_message))
        with self.lock:
            streams = list(self.streams.values())
            self.streams.clear()
        for stream in streams:
            stream.deliver(Reply.FAILED, self.exit_message)
        self._outbox.put(None)


class PocketsphinxStream(TranscriptionStream):
    """One session, decoded in a worker process; this object only relays.

    ``finalize()`` returns once the final for the audio sent so far has been *emitted*;
    ``close()`` once every final has been emitted and the results ended. If the worker fails,
    both return and ``results()`` raises ProviderError.
    """

    def __init__(self, worker: _Worker, sid: int, settings: StreamSettings, max_backlog_bytes: int) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._worker = worker
        self.sid = sid
        self._max_backlog = max_backlog_bytes
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._sequence = itertools.count(1)
        self._aligner = Pcm16Aligner()
        self._closing = False
        self._done = False
        if not worker.attach(self):
            raise ProviderError(worker.exit_message or "pocketsphinx worker is gone")
        worker.send(Command.OPEN, sid, settings)

    @property
    def pid(self) -> int | None:
        """The worker process decoding this stream."""
        return self._worker.pid

    async def send_audio(self, audio: bytes) -> None:
        if self._done or self._closing:
            return
        data = self._aligner.push(audio)
        if not data:
            return
        # Backpressure: a worker that falls behind slows its senders instead of queueing forever.
        while self._in_flight > self._max_backlog and not self._done:
            self._drained.clear()
            await self._drained.wait()
        if self._done:
            return
        self._in_flight += len(data)
        self._worker.send(Command.AUDIO, self.sid, data)

    async def finalize(self) -> None:
        if self._done or self._closing:
            return
        sequence = next(self._sequence)
        waiter = self._loop.create_future()
        self._waiters[sequence] = waiter
        self._worker.send(Command.FINALIZE, self.sid, sequence)
        await waiter

    async def close(self) -> None:
        if self._done or self._closing:
            return
        self._closing = True
        waiter = self._loop.create_future()
        self._waiters[0] = waiter
        self._worker.send(Command.CLOSE, self.sid)
        await waiter

    async def abort(self) -> None:
        if self._done:
            return
        self._worker.send(Command.ABORT, self.sid)
        self._finish()
        self.end_results()

    # -- from the reader thread

    def deliver(self, reply: Reply, payload: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_reply, reply, payload)
        except RuntimeError:  # the stream's loop is closed: nobody is listening
            self._worker.forget(self.sid)

    def _on_reply(self, reply: Reply, payload: Any) -> None:
        if self._done:
            return
        if reply == Reply.RESULT:
            self.emit(payload)
        elif reply == Reply.ACK:
            self._in_flight -= payload
            if self._in_flight <= self._max_backlog:
                self._drained.set()
        elif reply == Reply.FINALIZED:
            waiter = self._waiters.pop(payload, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif reply == Reply.CLOSED:
            self._finish()
            self.end_results()
        elif reply == Reply.FAILED:
            self._finish()
            self.fail(ProviderError(str(payload)))

    def _finish(self) -> None:
        self._done = True
        self._worker.forget(self.sid)
        self._drained.set()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()


class PocketsphinxProvider(Provider):
    """pocketsphinx (CMU Sphinx) decoders in worker processes; the bundled model is US English."""

    name = "pocketsphinx"
    Options = PocketsphinxOptions
    path_options = ("model", "language_model", "dictionary")
    required_modules = ("pocketsphinx",)
    options: PocketsphinxOptions

    def __init__(self, options: PocketsphinxOptions) -> None:
        super().__init__(options)
        self._workers: list[_Worker] = []
        self._ids = itertools.count(1)
        self._context: Any = None
        self._decoder_config: dict[str, Any] = {}
        self._started = False

    async def start(self) -> None:
        self._decoder_config = self._resolve_decoder_config()
        self._context = multiprocessing.get_context(self.options.start_method)
        loop = asyncio.get_running_loop()
        try:
            self._workers = [_Worker(self._context, self._decoder_config, slot)
                             for slot in range(self.options.processes)]
            waits = [asyncio.wrap_future(worker.ready, loop=loop) for worker in self._workers]
            await asyncio.wait_for(asyncio.gather(*waits), self.options.start_timeout_seconds)
        except Exception as exc:
            await self.stop()
            if isinstance(exc, ProviderError):
                raise
            if isinstance(exc, asyncio.TimeoutError):
                raise ProviderError(f"pocketsphinx workers did not start within "
                                    f"{self.options.start_timeout_seconds} s") from None
            raise ProviderError(f"pocketsphinx: cannot start worker processes: {exc}") from exc
        self._started = True

    async def stop(self) -> None:
        self._started = False
        workers, self._workers = self._workers, []
        if workers:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(None, worker.stop) for worker in workers))

    def is_ready(self) -> bool:
        return self._started

    def describe(self) -> Mapping[str, Any]:
        options = self.options
        return {
            # A name, never a path: Metadata goes to clients, who need not see the server's files.
            "model": Path(options.model).expanduser().name if options.model else "en-us",
            "bundled_model": not (options.model or options.language_model or options.dictionary),
            "languages": list(options.languages),
            "processes": options.processes,
            "max_streams_per_process": options.max_streams_per_process,
            "worker_pids": self.worker_pids(),
            "vad_mode": options.vad_mode,
        }

    def worker_pids(self) -> list[int]:
        return [worker.pid for worker in self._workers if worker.alive and worker.pid is not None]

    def languages(self) -> tuple[str, ...] | None:
        return tuple(language.lower() for language in self.options.languages)

    def check_session(self, session: SessionParams) -> None:
        check_language(session.language, self.options.languages)

    def open_stream(self, session: SessionParams, audio_format: AudioFormat) -> TranscriptionStream:
        if not self._started:
            raise ProviderError("pocketsphinx provider is not started")
        check_language(session.language, self.options.languages)
        worker = self._pick_worker()
        options = self.options
        silence_ms = session.endpointing_ms or options.pause_final_ms
        settings = StreamSettings(
            interim_results=session.interim_results,
            words=session.words,
            silence_ms=silence_ms,
            speech_final=session.endpointing_ms > 0,
            vad_mode=options.vad_mode,
            speech_pad_ms=options.speech_pad_ms,
            min_speech_ms=options.min_speech_ms,
            max_utterance_ms=int(options.max_utterance_seconds * 1000),
            interim_interval_ms=options.interim_interval_ms,
        )
        backlog = int(options.max_backlog_seconds * SAMPLE_RATE * 2)
        return PocketsphinxStream(worker, next(self._ids), settings, backlog)

    # -- internals

    def _pick_worker(self) -> _Worker:
        """The least loaded live worker with room; a dead worker's slot gets a new process."""
        for slot, worker in enumerate(self._workers):
            if not worker.alive:
                try:
                    self._workers[slot] = _Worker(self._context, self._decoder_config, slot)
                except Exception as exc:  # OSError, EAGAIN...: the running workers go on
                    raise ProviderError(f"pocketsphinx: cannot restart a worker process: {exc}") from exc
        candidates = [(worker.load(), worker.slot, worker) for worker in self._workers if worker.alive]
        candidates = [entry for entry in candidates if entry[0] < self.options.max_streams_per_process]
        if not candidates:
            limit = self.options.processes * self.options.max_streams_per_process
            raise CapacityError(f"pocketsphinx is serving its maximum of {limit} streams")
        return min(candidates, key=lambda entry: entry[:2])[2]

    def _resolve_decoder_config(self) -> dict[str, Any]:
        try:
            import pocketsphinx
        except ImportError as exc:
            raise ProviderError("pocketsphinx: the pocketsphinx package is not installed "
                                "(pip install 'stt_server[pocketsphinx]')") from exc
        bundled = Path(pocketsphinx.get_model_path())
        options = self.options
        hmm = Path(options.model).expanduser() if options.model else bundled / "en-us" / "en-us"
        lm = Path(options.language_model).expanduser() if options.language_model else bundled / "en-us" / "en-us.lm.bin"
        dictionary = (Path(options.dictionary).expanduser() if options.dictionary
                      else bundled / "en-us" / "cmudict-en-us.dict")
        if not (hmm.is_dir() and (hmm / "mdef").is_file()):
            raise ProviderError(f"pocketsphinx: {hmm} is not an acoustic model directory (no mdef)")
        for what, path in (("language model", lm), ("dictionary", dictionary)):
            if not path.is_file():
                raise ProviderError(f"pocketsphinx: {what} {path} is not a file")
        return {"hmm": str(hmm), "lm": str(lm), "dict": str(dictionary), "samprate": SAMPLE_RATE,
                "loglevel": "ERROR"}
