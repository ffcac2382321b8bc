"""A third-party engine, loaded through ``module:``, whose call hangs for sessions that ask
with ``?model=hang``: a stand-in for a stuck plugin (a wedged driver, a dead network share).

It uses the engine scheduler as a plugin author would: blocking calls go through a lane, and
``limits.engine_call_timeout_seconds`` fails only the session whose call hung.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stt_server.audio_format import AudioFormat
from stt_server.providers import Provider, TranscriptionStream
from stt_server.providers.scheduler import EngineScheduler, Priority, SchedulerStats
from stt_server.results import Result
from stt_server.session import SessionParams

# Released when the provider stops, so the stuck thread ends with the test.
_RELEASE = threading.Event()


def _run_each(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    return [call() for call in calls]


@dataclass(frozen=True)
class HangingOptions:
    # Worker threads: 1, so the test proves the stuck one is replaced.
    workers: int = 1


class HangingStream(TranscriptionStream):
    def __init__(self, provider: HangingProvider, hang: bool) -> None:
        super().__init__()
        self._lane = provider.scheduler.lane("hanging")
        self._hang = hang
        self._received = 0
        self._done = False

    async def send_audio(self, audio: bytes) -> None:
        self._received += len(audio)

    def backlog_seconds(self) -> float:
        return 0.0 if self._done else self._received / 32000  # all of it waits for close()

    async def finalize(self) -> None:
        pass

    async def close(self) -> None:
        seconds = self._received / 32000
        try:
            text = await self._lane.run(self._work, priority=Priority.FINAL, weight=seconds)
        except Exception as error:  # noqa: BLE001 - the session reports it
            self._lane.close()
            self.fail(error)  # type: ignore[arg-type]
            return
        self._done = True
        self.emit(Result(text=text, is_final=True, start=0.0, end=seconds))
        self._lane.close()
        self.end_results()

    def _work(self) -> str:
        if self._hang:
            _RELEASE.wait(120)
        return f"received {self._received} bytes"


class HangingProvider(Provider):
    name = "hanging"
    Options = HangingOptions

    def __init__(self, options: HangingOptions) -> None:
        super().__init__(options)
        self.scheduler: EngineScheduler[Callable[[], Any], Any] = EngineScheduler(
            "hanging", _run_each, workers=options.workers)

    async def start(self) -> None:
        _RELEASE.clear()
        self.scheduler.call_timeout = self.call_timeout
        self.scheduler.start()

    async def stop(self) -> None:
        _RELEASE.set()
        self.scheduler.stop()

    def scheduler_stats(self) -> SchedulerStats | None:
        return self.scheduler.stats()

    def open_stream(self, session: SessionParams, audio_format: AudioFormat) -> TranscriptionStream:
        return HangingStream(self, hang=session.model == "hang")
