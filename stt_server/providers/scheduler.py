"""One scheduler per engine, in front of its worker threads.

A plain thread pool serves jobs first come, first served: one client uploading a file at full
speed queues minutes of work and every other session waits behind it, and one call that hangs
holds a worker for good. The scheduler instead

* keeps a queue per session (a :class:`Lane`) and serves lanes round robin, so a bulk sender
  gets its share and real-time sessions keep their latency;
* serves finals before interims; an interim still queued is replaced by a newer one of the same
  lane (interims are previews: under load they thin out first, finals are never dropped);
* hands a worker several queued jobs of one kind at once when the engine can decode a batch in
  one call (``max_batch``), which raises throughput when the queue is long; with a
  ``batch_key``, only jobs with the first one's key (Whisper: the same model and window);
* bounds the time of each call: a call still running after ``call_timeout`` fails the jobs in it
  with :class:`EngineTimeout` (only the sessions whose call hung), and the worker is replaced
  by a fresh thread (a thread cannot be killed; the stuck one exits when its call returns).

It also keeps the figures admission needs: seconds of audio queued for finals, and how fast
the engine clears them.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..errors import ProviderError

P = TypeVar("P")
R = TypeVar("R")

# Smoothing of the throughput estimate (weight of the newest batch).
THROUGHPUT_EMA_WEIGHT = 0.2


class Priority(enum.IntEnum):
    FINAL = 0
    INTERIM = 1


class EngineTimeout(ProviderError):
    """An engine call ran past ``call_timeout``: the session it belongs to fails with 1011."""

    code = "engine_timeout"


class Superseded(Exception):
    """An interim replaced in the queue by a newer one of the same session (not an error)."""


class SchedulerStopped(ProviderError):
    code = "provider_unavailable"


@dataclass(frozen=True)
class SchedulerStats:
    """A snapshot for metrics and admission."""

    queued_final_seconds: float  # audio waiting for (or in) a final decode, all sessions
    queued_jobs: int
    busy_workers: int
    workers: int
    # Seconds of audio the engine finishes per second of wall time, all workers together.
    throughput: float
    hung_calls: int

    @property
    def estimated_wait(self) -> float:
        """Seconds until the finals queued now are done, at the recent pace."""
        return self.queued_final_seconds / self.throughput if self.throughput > 0 else 0.0


@dataclass(eq=False)
class _Job(Generic[P]):
    lane: Lane
    priority: Priority
    payload: P
    # Seconds of audio this job transcribes (finals count toward the backlog).
    weight: float
    future: Future[Any] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Worker:
    number: int
    thread: threading.Thread | None = None
    retired: bool = False  # its call hung: the scheduler stopped counting on it


class Lane:
    """One session's queue. Create with :meth:`EngineScheduler.lane`; close when the session ends."""

    def __init__(self, scheduler: EngineScheduler[Any, Any], name: str) -> None:
        self._scheduler = scheduler
        self.name = name
        self.queues: dict[Priority, collections.deque[_Job[Any]]] = {
            Priority.FINAL: collections.deque(), Priority.INTERIM: collections.deque()}
        # Final audio queued or being decoded for this lane (seconds): its backlog.
        self.final_seconds = 0.0
        self.closed = False

    async def run(self, payload: Any, *, priority: Priority = Priority.FINAL, weight: float = 0.0) -> Any:
        """Queue one job and wait for its result (raises EngineTimeout, Superseded, the engine's error)."""
        return await self._scheduler.run(self, payload, priority=priority, weight=weight)

    def close(self) -> None:
        """The session is over: drop what is still queued (interims; finals only on abort)."""
        self._scheduler.close_lane(self)


class EngineScheduler(Generic[P, R]):
    """Fair, prioritised, batching front of ``workers`` threads that call ``execute``.

    ``execute`` gets a list of payloads (never more than ``max_batch``, all of one priority)
    and returns their results in order; it runs in a worker thread and may block.
    """

    def __init__(self, name: str, execute: Callable[[Sequence[P]], Sequence[R]], *, workers: int,
                 max_batch: int = 1, call_timeout: float = 60.0,
                 on_batch: Callable[[int, float, Sequence[float]], None] | None = None,
                 batch_key: Callable[[P], Hashable] | None = None) -> None:
        self.name = name
        self._execute = execute
        self.workers = workers
        self.max_batch = max(1, max_batch)
        # Jobs share a batch only with jobs of the same key (None: any jobs of one priority).
        self._batch_key = batch_key
        self.call_timeout = call_timeout
        # Called (in the worker thread) with batch size, call seconds and each job's queue wait.
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        # Lanes with queued jobs, per priority, in round-robin order.
        self._rings: dict[Priority, collections.deque[Lane]] = {
            Priority.FINAL: collections.deque(), Priority.INTERIM: collections.deque()}
        self._queued = 0
        self._queued_final_seconds = 0.0
        self._busy = 0
        self._throughput = 0.0  # audio seconds per wall second per worker, smoothed
        self._hung = 0
        self._stopped = False
        self._numbers = itertools.count(1)
        self._workers: list[_Worker] = []
        # Threads of workers still counted (a retired, hung one is left to finish on its own).
        self._threads: set[threading.Thread] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._stopped = False
            for _ in range(self.workers - len(self._workers)):
                self._spawn_locked()

    def stop(self) -> None:
        """Fail every queued job; running calls finish in their threads and are discarded."""
        with self._lock:
            self._stopped = True
            jobs = [job for ring in self._rings.values() for lane in ring
                    for queue in lane.queues.values() for job in queue]
            for ring in self._rings.values():
                for lane in ring:
                    for queue in lane.queues.values():
                        queue.clear()
                ring.clear()
            self._queued = 0
            self._queued_final_seconds = 0.0
            self._workers.clear()
            self._ready.notify_all()
        for job in jobs:
            _settle(job.future, error=SchedulerStopped(f"{self.name}: the engine stopped before the audio "
                                                       "was transcribed"))

    def join(self, timeout: float) -> bool:
        """After :meth:`stop`: wait (blocking) for the worker threads to finish their current
        call, so an engine's native code is not torn down under them at exit. A hung thread is
        not waited for. True when all ended in time."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            if thread is threading.current_thread():
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def lane(self, name: str) -> Lane:
        return Lane(self, name)

    # --- submitting --------------------------------------------------------------------------

    async def run(self, lane: Lane, payload: P, *, priority: Priority, weight: float) -> R:
        self._loop = asyncio.get_running_loop()
        job: _Job[P] = _Job(lane, priority, payload, weight)
        superseded: _Job[P] | None = None
        with self._lock:
            if self._stopped or lane.closed:
                raise SchedulerStopped(f"{self.name}: the engine is stopped")
            queue = lane.queues[priority]
            if priority is Priority.INTERIM and queue:
                superseded = queue.popleft()  # at most one interim waits per lane
                self._queued -= 1
            if not queue:
                self._rings[priority].append(lane)
            queue.append(job)
            self._queued += 1
            if priority is Priority.FINAL:
                lane.final_seconds += weight
                self._queued_final_seconds += weight
            self._ready.notify()
        if superseded is not None:
            _settle(superseded.future, error=Superseded())
        try:
            return await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            self._withdraw(job)
            raise

    def _withdraw(self, job: _Job[P]) -> None:
        """A cancelled waiter: drop its job if it has not started (a running call goes on)."""
        with self._lock:
            queue = job.lane.queues[job.priority]
            if job in queue:
                queue.remove(job)
                self._dequeued_locked(job)
                if not queue and job.lane in self._rings[job.priority]:
                    self._rings[job.priority].remove(job.lane)
        job.future.cancel()

    def close_lane(self, lane: Lane) -> None:
        with self._lock:
            if lane.closed:
                return
            lane.closed = True
            dropped: list[_Job[Any]] = []
            for priority, queue in lane.queues.items():
                dropped += queue
                for job in queue:
                    self._dequeued_locked(job)
                queue.clear()
                if lane in self._rings[priority]:
                    self._rings[priority].remove(lane)
        for job in dropped:
            job.future.cancel()

    # --- state for streams, admission and metrics ----------------------------------------------

    def has_idle_worker(self) -> bool:
        with self._lock:
            return self._busy + self._queued < len(self._workers)

    def is_idle(self) -> bool:
        """No job running or queued: work that may be wasted costs nobody anything now."""
        with self._lock:
            return not self._busy and not self._queued

    def stats(self) -> SchedulerStats:
        with self._lock:
            return SchedulerStats(self._queued_final_seconds, self._queued, self._busy, len(self._workers),
                                  self._throughput * max(1, len(self._workers)), self._hung)

    # --- workers -----------------------------------------------------------------------------

    def _spawn_locked(self) -> None:
        worker = _Worker(next(self._numbers))
        worker.thread = threading.Thread(target=self._work, args=(worker,), daemon=True,
                                         name=f"{self.name}-{worker.number}")
        self._workers.append(worker)
        self._threads.add(worker.thread)
        worker.thread.start()

    def _take_locked(self) -> list[_Job[P]]:
        """Round robin over lanes: finals first, up to max_batch jobs of one priority, and no
        more than this worker's share of the queue: with idle workers beside it, jobs go to them
        in parallel rather than wait in one worker's batch (a batch encodes and aligns its
        members one after another; taking three while the other worker idled made 16 streams'
        calls p95 1.5 s on the 2-core box, bench/RESULTS.md). With a batch key, a lane whose
        next job has another key than the batch's first is passed over and keeps its turn."""
        idle = max(1, len(self._workers) - self._busy)
        share = min(self.max_batch, -(-self._queued // idle))
        for priority in (Priority.FINAL, Priority.INTERIM):
            ring = self._rings[priority]
            batch: list[_Job[P]] = []
            passed_over: list[Lane] = []
            served: set[int] = set()
            key: Hashable = None
            while ring and len(batch) < share:
                lane = ring.popleft()
                queue = lane.queues[priority]
                if self._batch_key is not None:
                    if not batch:
                        key = self._batch_key(queue[0].payload)
                    elif self._batch_key(queue[0].payload) != key:
                        passed_over.append(lane)
                        continue
                job = queue.popleft()
                served.add(id(lane))
                if queue:
                    ring.append(lane)
                self._queued -= 1
                if job.future.set_running_or_notify_cancel():
                    batch.append(job)
                else:  # cancelled while queued
                    self._dequeued_locked(job, queued=False)
            # Passed over, a lane keeps its place; one already served in this batch goes last.
            ring.extendleft(reversed([lane for lane in passed_over if id(lane) not in served]))
            ring.extend(lane for lane in passed_over if id(lane) in served)
            if batch:
                return batch
        return []

    def _work(self, worker: _Worker) -> None:
        while True:
            with self._lock:
                while not self._stopped and not worker.retired and not self._queued:
                    self._ready.wait()
                if self._stopped or worker.retired:
                    return
                batch = self._take_locked()
                if not batch:
                    continue
                self._busy += 1
            began = time.monotonic()
            waits = [began - job.queued_at for job in batch]
            cancel_timeout = self._arm_timeout(worker, batch)
            results: Sequence[Any] | None = None
            error: BaseException | None = None
            try:
                results = self._execute([job.payload for job in batch])
                if len(results) != len(batch):
                    error = ProviderError(f"{self.name}: engine returned {len(results)} results for "
                                          f"{len(batch)} jobs", code="provider_crashed")
            except BaseException as exc:  # noqa: BLE001 - handed to the sessions that asked
                results, error = None, exc
            elapsed = time.monotonic() - began
            cancel_timeout()
            weight = sum(job.weight for job in batch)
            with self._lock:
                if worker.retired:  # _expire already failed these jobs and stopped counting this worker
                    return
                self._busy -= 1
                for job in batch:
                    self._dequeued_locked(job, queued=False)
                if error is None and weight > 0 and elapsed > 0:
                    rate = weight / elapsed
                    self._throughput = rate if not self._throughput else (
                        self._throughput + THROUGHPUT_EMA_WEIGHT * (rate - self._throughput))
            for index, job in enumerate(batch):
                if error is not None or results is None:
                    _settle(job.future, error=error or ProviderError("engine failed"))
                else:
                    _settle(job.future, result=results[index])
            if self._on_batch is not None and error is None:
                self._on_batch(len(batch), elapsed, waits)

    def _arm_timeout(self, worker: _Worker, batch: list[_Job[P]]) -> Callable[[], None]:
        """From the worker thread: start the call's timer on the loop; returns its cancel.

        Arming and cancelling both go through call_soon_threadsafe, so they run in that order."""
        loop = self._loop
        if loop is None or not self.call_timeout:
            return _nothing
        timers: list[asyncio.TimerHandle] = []

        def arm() -> None:
            timers.append(loop.call_later(self.call_timeout, self._expire, worker, batch))

        def cancel() -> None:
            for timer in timers:
                timer.cancel()

        try:
            loop.call_soon_threadsafe(arm)
        except RuntimeError:  # the loop is closed: nobody waits for these jobs any more
            return _nothing

        def cancel_from_thread() -> None:
            try:
                loop.call_soon_threadsafe(cancel)
            except RuntimeError:
                pass

        return cancel_from_thread

    def _expire(self, worker: _Worker, batch: list[_Job[P]]) -> None:
        """On the event loop: a call ran past call_timeout. Fail its jobs, replace its worker."""
        if all(job.future.done() for job in batch):
            return
        with self._lock:
            if worker.retired:
                return
            self._hung += 1
            worker.retired = True
            self._busy -= 1
            self._threads.discard(worker.thread)  # type: ignore[arg-type]
            if worker in self._workers:
                self._workers.remove(worker)
            for job in batch:
                self._dequeued_locked(job, queued=False)
            if not self._stopped:
                self._spawn_locked()
        for job in batch:
            _settle(job.future, error=EngineTimeout(
                f"{self.name}: an engine call took longer than {self.call_timeout:g} s"))

    def _dequeued_locked(self, job: _Job[P], queued: bool = True) -> None:
        if queued:
            self._queued -= 1
        if job.priority is Priority.FINAL and job.weight:
            job.lane.final_seconds = max(0.0, job.lane.final_seconds - job.weight)
            self._queued_final_seconds = max(0.0, self._queued_final_seconds - job.weight)
            job.weight = 0.0


def _nothing() -> None:
    pass


def _settle(future: Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    """Set a future's outcome unless it already has one (timed out, cancelled)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
