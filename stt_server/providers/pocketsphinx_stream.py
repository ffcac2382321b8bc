"""One pocketsphinx session's stream: relays audio and commands to its worker process, results back."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from ..errors import ProviderError
from .base import TranscriptionStream
from .pocketsphinx_decoder import StreamSettings
from .pocketsphinx_worker import Command, Reply, WorkerProcess
from .toolkit import Pcm16Aligner


class PocketsphinxStream(TranscriptionStream):
    """One session, decoded in a worker process; this object only relays.

    ``finalize()`` returns once the final for the audio sent so far has been *emitted*;
    ``close()`` once every final has been emitted and the results ended. If the worker fails,
    both return and ``results()`` raises ProviderError.
    """

    def __init__(self, worker: WorkerProcess, sid: int, settings: StreamSettings, max_backlog_bytes: int) -> None:
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
