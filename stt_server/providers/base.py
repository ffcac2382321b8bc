"""The one provider interface: a provider opens a stream per session; a stream takes audio,
can be told to finalize, and yields results.

Engines whose calls block (Whisper, pocketsphinx) must run them off the event loop: in the
provider's own bounded executor, or another process.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, ClassVar

from ..audio_format import AudioFormat, pcm16_mono
from ..errors import ProviderError
from ..results import Result
from ..session import SessionParams


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
        self._results.put_nowait(result)

    def end_results(self) -> None:
        self._results.put_nowait(None)

    def fail(self, error: ProviderError) -> None:
        """End the results with an error the session reports to the client."""
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

    def __init__(self, options: Any) -> None:
        self.options = options
        #: Set by the server: called with the seconds each engine call took (for metrics).
        self.inference_observer: Callable[[float], None] | None = None

    def record_inference(self, seconds: float) -> None:
        """Providers call this after each engine call (a decode, a request round trip)."""
        if self.inference_observer is not None:
            self.inference_observer(seconds)

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

    def describe(self) -> Mapping[str, Any]:
        """Facts for ``stt-server providers`` and Metadata (model, device...)."""
        return {}

    def describe_session(self, session: SessionParams) -> Mapping[str, Any]:
        """The facts for one session's Metadata (the model it picked, say); default describe()."""
        return self.describe()

    @abstractmethod
    def open_stream(self, session: SessionParams, audio_format: AudioFormat) -> TranscriptionStream:
        """A new stream for one session; must not block."""
