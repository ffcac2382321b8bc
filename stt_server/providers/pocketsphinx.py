"""The pocketsphinx provider (pocketsphinx 5, CMU Sphinx): starts the worker processes that
decode, places each session's stream on one, and says what it serves.

pocketsphinx is a true streaming recogniser (``start_utt``, ``process_raw``, ``hyp()``), but
it holds the GIL while it decodes, so it never runs in the server's process: a few worker
processes (``processes``, :mod:`.pocketsphinx_worker`) each host the decoders of several
streams (at most ``max_streams_per_process``, each decoded by :mod:`.pocketsphinx_decoder`),
keyed by stream id. A :class:`~.pocketsphinx_stream.PocketsphinxStream` only relays. When a
worker dies, the next ``open_stream`` starts a new worker in the dead one's slot.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..audio_format import AudioFormat
from ..errors import CapacityError, ProviderError
from ..session import SessionParams
from .base import Provider, TranscriptionStream
from .pocketsphinx_decoder import SAMPLE_RATE, StreamSettings
from .pocketsphinx_options import PocketsphinxOptions, check_language
from .pocketsphinx_stream import PocketsphinxStream
from .pocketsphinx_worker import WorkerProcess


class PocketsphinxProvider(Provider):
    """pocketsphinx (CMU Sphinx) decoders in worker processes; the bundled model is US English."""

    name = "pocketsphinx"
    Options = PocketsphinxOptions
    path_options = ("model", "language_model", "dictionary")
    required_modules = ("pocketsphinx",)
    options: PocketsphinxOptions

    def __init__(self, options: PocketsphinxOptions) -> None:
        super().__init__(options)
        self._workers: list[WorkerProcess] = []
        self._ids = itertools.count(1)
        self._context: Any = None
        self._decoder_config: dict[str, Any] = {}
        self._started = False

    async def start(self) -> None:
        self._decoder_config = self._resolve_decoder_config()
        self._context = multiprocessing.get_context(self.options.start_method)
        loop = asyncio.get_running_loop()
        try:
            self._workers = [WorkerProcess(self._context, self._decoder_config, slot)
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

    def _pick_worker(self) -> WorkerProcess:
        """The least loaded live worker with room; a dead worker's slot gets a new process."""
        for slot, worker in enumerate(self._workers):
            if not worker.alive:
                try:
                    self._workers[slot] = WorkerProcess(self._context, self._decoder_config, slot)
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
