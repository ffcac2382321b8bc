"""The one provider interface: a provider opens a stream per session; a stream takes audio,
can be told to finalize, and yields results.

Engines whose calls block (Whisper, pocketsphinx) must run them off the event loop: in the
provider's own bounded executor, or another process.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, ClassVar

from ..audio_format import AudioFormat, pcm16_mono
from ..errors import ProviderError
from ..results import Result
from ..session import SessionParams
from .scheduler import SchedulerStats


class TranscriptionStream(ABC):
    """One session's audio in, results out.

    The server calls ``send_audio`` in order, ``finalize`` when the client asks, and ``close``
    exactly once when no more audio will come; ``results`` must then yield the finals for
    everything received and stop. Subclasses call :meth:`emit` and :meth:`end_results`
    (or :meth:`fail`); the queue behind ``results`` is unbounded because results are small
    and the consumer is the session's own sender.
    """

    def __init__(self) -> None:
        self._results: asyncio.Queue[Result | BaseException | None] = asyncio.Queue()
        # Set whenever the backlog shrinks or the results end: wakes a session held back by
        # backpressure (see :meth:`wait_for_room`).
        self._room = asyncio.Event()
        self._results_ended = False
        #: Results emitted so far (the session uses it to know when the sender has caught up).
        self.emitted = 0

    def backlog_seconds(self) -> float:
        """Seconds of audio received and handed to the engine but not yet transcribed.

        The session stops reading its socket while this is above ``limits.max_backlog_seconds``,
        so a fast sender is slowed down by TCP instead of filling memory. Engines that keep up
        by construction (a network service streaming at its own pace) keep the default 0."""
        return 0.0

    def untranscribed_seconds(self) -> float:
        """Seconds of received audio that would be lost if the stream ended now (abort, failure):
        the backlog plus any utterance still open. Reported to the client and the log."""
        return self.backlog_seconds()

    def backlog_shrank(self) -> None:
        """Providers call this when work for this stream finishes."""
        self._room.set()

    async def wait_for_room(self, max_backlog_seconds: float) -> float:
        """Wait until the backlog is at most ``max_backlog_seconds`` (or the results ended);
        returns the seconds waited."""
        began = time.monotonic()
        while self.backlog_seconds() > max_backlog_seconds and not self._results_ended:
            self._room.clear()
            await self._room.wait()
        return time.monotonic() - began

    @abstractmethod
    async def send_audio(self, audio: bytes) -> None:
        """Audio in the format the provider asked for in :meth:`Provider.input_format`."""

    @abstractmethod
    async def finalize(self) -> None:
        """Close the current utterance now: emit its final result."""

    @abstractmethod
    async def close(self) -> None:
        """No more audio: transcribe what is buffered, emit the finals, then end results."""

    async def abort(self) -> None:
        """Stop without transcribing what is left (server shutting down hard)."""
        self.end_results()

    def emit(self, result: Result) -> None:
        self.emitted += 1
        self._results.put_nowait(result)

    def end_results(self) -> None:
        self._results_ended = True
        self._room.set()
        self._results.put_nowait(None)

    def fail(self, error: ProviderError) -> None:
        """End the results with an error the session reports to the client."""
        self._results_ended = True
        self._room.set()
        self._results.put_nowait(error)

    async def results(self) -> AsyncIterator[Result]:
        while True:
            item = await self._results.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class Provider(ABC):
    """A speech engine. One instance serves every session; heavy state (a model) is shared."""

    #: Name in the provider dict and the URL's ``provider=``.
    name: ClassVar[str]
    #: Frozen dataclass of this provider's ``providers.<name>`` options, checked by config.build.
    Options: ClassVar[type]
    #: Options that are file paths: a relative one is taken relative to the config file's
    #: folder (as tokens.file is), so a service's working directory does not matter.
    path_options: ClassVar[tuple[str, ...]] = ()
    #: Modules the engine imports only when it starts (to keep ``import`` cheap). Listed here so
    #: ``stt-server providers`` can say truthfully whether the engine can load.
    required_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Any) -> None:
        self.options = options
        #: Set by the server: called with the seconds each engine call took (for metrics).
        self.inference_observer: Callable[[float], None] | None = None
        #: Set by the server: called with (batch size, call seconds, each job's queue wait).
        self.batch_observer: Callable[[int, float, Sequence[float]], None] | None = None
        #: Set by the server before start() (limits.engine_call_timeout_seconds): an engine call
        #: running longer fails only the session it belongs to.
        self.call_timeout: float = 60.0

    def record_inference(self, seconds: float) -> None:
        """Providers call this after each engine call (a decode, a request round trip)."""
        if self.inference_observer is not None:
            self.inference_observer(seconds)

    def record_batch(self, size: int, seconds: float, waits: Sequence[float]) -> None:
        """Providers with an :class:`EngineScheduler` call this after each call (any thread)."""
        self.record_inference(seconds)
        if self.batch_observer is not None:
            self.batch_observer(size, seconds, waits)

    def scheduler_stats(self) -> SchedulerStats | None:
        """The engine scheduler's queue figures, for admission and metrics; None without one."""
        return None

    def input_format(self, client_format: AudioFormat) -> AudioFormat:
        """The format the stream wants. Default: 16 kHz mono PCM16, decoded by the server.
        A provider that takes the client's encoding as it is returns ``client_format``."""
        return pcm16_mono(16_000)

    async def start(self) -> None:
        """Load models and open clients. Raise ProviderError when the engine cannot work."""

    async def stop(self) -> None:
        """Release models, clients and worker threads."""

    def check_session(self, session: SessionParams) -> None:
        """Raise RequestError if this engine cannot serve the session (say, its language).
        Called before the upgrade, so the client gets a 400 naming the parameter."""

    def is_ready(self) -> bool:
        return True

    @classmethod
    def missing_modules(cls) -> list[str]:
        """The :attr:`required_modules` that cannot be imported here (empty: all present)."""
        missing = []
        for module in cls.required_modules:
            try:
                importlib.import_module(module)
            except Exception:  # ImportError, or a broken package failing at import time
                missing.append(module)
        return missing

    def languages(self) -> tuple[str, ...] | None:
        """Primary language subtags this engine serves ("en", "de"), for clients' menus;
        None: any tag is passed on to the engine (which may still refuse it)."""
        return None

    def describe(self) -> Mapping[str, Any]:
        """Facts for ``stt-server providers`` and Metadata (model, device...)."""
        return {}

    def describe_session(self, session: SessionParams) -> Mapping[str, Any]:
        """The facts for one session's Metadata (the model it picked, say); default describe()."""
        return self.describe()

    @abstractmethod
    def open_stream(self, session: SessionParams, audio_format: AudioFormat) -> TranscriptionStream:
        """A new stream for one session; must not block."""
