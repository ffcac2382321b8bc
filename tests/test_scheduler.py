"""The engine scheduler on its own: real threads, an engine that records what it was given."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from stt_server.providers.scheduler import EngineScheduler, EngineTimeout, Priority, SchedulerStopped, Superseded


class RecordingEngine:
    """Runs jobs one batch at a time; a gate lets a test fill the queue before anything runs."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.hang = threading.Event()  # set = payloads named "hang" block until released
        self.release = threading.Event()

    def __call__(self, payloads: Sequence[str]) -> list[str]:
        self.gate.wait(10)
        if "hang" in payloads:
            self.release.wait(30)
        self.batches.append(list(payloads))
        return [f"done:{p}" for p in payloads]


async def _started(scheduler: EngineScheduler[str, str]) -> None:
    """Let the loop hand queued work to the threads."""
    await asyncio.sleep(0.05)


async def test_lanes_are_served_round_robin_and_finals_before_interims() -> None:
    engine = RecordingEngine()
    scheduler = EngineScheduler("t", engine, workers=1, call_timeout=0)
    scheduler.start()
    bulk, live = scheduler.lane("bulk"), scheduler.lane("live")
    blocker = asyncio.ensure_future(bulk.run("first", weight=1.0))  # occupies the only worker
    await _started(scheduler)
    jobs = [asyncio.ensure_future(bulk.run(f"bulk{i}", weight=1.0)) for i in range(4)]
    jobs.append(asyncio.ensure_future(live.run("live-interim", priority=Priority.INTERIM)))
    jobs += [asyncio.ensure_future(live.run(f"live{i}", weight=1.0)) for i in range(2)]
    await asyncio.sleep(0.05)
    assert scheduler.stats().queued_final_seconds == pytest.approx(7.0)  # 6 queued + 1 running
    engine.gate.set()
    await asyncio.gather(blocker, *jobs)
    order = [payload for batch in engine.batches for payload in batch]
    # The bulk lane's four queued finals do not hold back the live lane's: they alternate.
    assert order[:5] == ["first", "bulk0", "live0", "bulk1", "live1"]
    assert order[-1] == "live-interim"  # interims only once no final waits
    assert scheduler.stats().queued_final_seconds == 0
    scheduler.stop()


async def test_a_newer_interim_replaces_a_queued_one() -> None:
    engine = RecordingEngine()
    scheduler = EngineScheduler("t", engine, workers=1, call_timeout=0)
    scheduler.start()
    lane = scheduler.lane("a")
    blocker = asyncio.ensure_future(lane.run("final", weight=1.0))
    await _started(scheduler)
    old = asyncio.ensure_future(lane.run("old", priority=Priority.INTERIM))
    await asyncio.sleep(0)
    new = asyncio.ensure_future(lane.run("new", priority=Priority.INTERIM))
    await asyncio.sleep(0.05)  # both are queued before anything runs
    engine.gate.set()
    with pytest.raises(Superseded):
        await old
    assert await new == "done:new"
    await blocker
    assert [p for b in engine.batches for p in b] == ["final", "new"]
    scheduler.stop()


async def test_queued_finals_are_batched_up_to_max_batch() -> None:
    engine = RecordingEngine()
    scheduler = EngineScheduler("t", engine, workers=1, max_batch=3, call_timeout=0)
    scheduler.start()
    lanes = [scheduler.lane(str(i)) for i in range(4)]
    blocker = asyncio.ensure_future(lanes[0].run("x", weight=1.0))
    await _started(scheduler)
    jobs = [asyncio.ensure_future(lane.run(f"j{i}", weight=1.0)) for i, lane in enumerate(lanes)]
    await asyncio.sleep(0.05)
    engine.gate.set()
    results = await asyncio.gather(blocker, *jobs)
    assert results[1:] == [f"done:j{i}" for i in range(4)]
    assert [len(batch) for batch in engine.batches] == [1, 3, 1]
    scheduler.stop()


async def test_a_batch_takes_only_jobs_with_its_key_and_passed_over_lanes_keep_their_turn() -> None:
    """Whisper batches only utterances of one window: a lane whose next job has another key is
    passed over, and served first when the worker comes back."""
    engine = RecordingEngine()
    scheduler = EngineScheduler("t", engine, workers=1, max_batch=4, call_timeout=0,
                                batch_key=lambda payload: payload[0])
    scheduler.start()
    lanes = [scheduler.lane(str(i)) for i in range(5)]
    blocker = asyncio.ensure_future(lanes[0].run("x", weight=1.0))
    await _started(scheduler)
    # Queued while the blocker runs, in round-robin order: a1, b2, a3, b4 (lanes 1-4), then a second job of lane 1.
    jobs = [asyncio.ensure_future(lanes[i].run(p, weight=1.0))
            for i, p in ((1, "a1"), (2, "b2"), (3, "a3"), (4, "b4"), (1, "a1'"))]
    await asyncio.sleep(0.05)
    engine.gate.set()
    results = await asyncio.gather(blocker, *jobs)
    assert results[1:] == ["done:a1", "done:b2", "done:a3", "done:b4", "done:a1'"]
    assert engine.batches[1:] == [["a1", "a3", "a1'"], ["b2", "b4"]], engine.batches
    scheduler.stop()


async def test_idle_workers_share_the_queue_before_anyone_batches() -> None:
    engine = RecordingEngine()
    scheduler = EngineScheduler("t", engine, workers=2, max_batch=4, call_timeout=0)
    scheduler.start()
    lanes = [scheduler.lane(str(i)) for i in range(4)]
    # Queued in one turn of the loop, while both workers wait for work.
    jobs = [asyncio.ensure_future(lane.run(f"j{i}", weight=1.0)) for i, lane in enumerate(lanes)]
    await asyncio.sleep(0.05)
    engine.gate.set()
    await asyncio.gather(*jobs)
    # Never one batch of four while the other worker waits.
    assert max(len(batch) for batch in engine.batches) < 4, engine.batches
    scheduler.stop()


async def test_a_hung_call_fails_its_own_job_and_the_worker_is_replaced() -> None:
    engine = RecordingEngine()
    engine.gate.set()
    scheduler = EngineScheduler("t", engine, workers=1, call_timeout=0.3)
    scheduler.start()
    stuck, other = scheduler.lane("stuck"), scheduler.lane("other")
    began = time.monotonic()
    hung = asyncio.ensure_future(stuck.run("hang", weight=2.0))
    await asyncio.sleep(0.05)
    fine = asyncio.ensure_future(other.run("fine", weight=1.0))
    with pytest.raises(EngineTimeout):
        await hung
    # The only worker hung, yet the other lane's job is served by its replacement.
    assert await asyncio.wait_for(fine, 5) == "done:fine"
    assert time.monotonic() - began < 5
    stats = scheduler.stats()
    assert stats.hung_calls == 1 and stats.workers == 1 and stats.queued_final_seconds == 0
    engine.release.set()
    await asyncio.sleep(0.1)
    scheduler.stop()


async def test_stop_fails_queued_jobs_and_a_cancelled_waiter_leaves_the_queue() -> None:
    engine = RecordingEngine()
    scheduler = EngineScheduler("t", engine, workers=1, call_timeout=0)
    scheduler.start()
    lane = scheduler.lane("a")
    running = asyncio.ensure_future(lane.run("running", weight=1.0))
    await _started(scheduler)
    cancelled = asyncio.ensure_future(lane.run("cancelled", weight=1.0))
    queued = asyncio.ensure_future(lane.run("queued", weight=1.0))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await asyncio.sleep(0.01)
    assert scheduler.stats().queued_jobs == 1
    scheduler.stop()
    with pytest.raises(SchedulerStopped):
        await queued
    engine.gate.set()
    await asyncio.wait([running], timeout=5)
    assert "cancelled" not in [p for b in engine.batches for p in b]


async def test_engine_errors_reach_only_the_jobs_in_the_failing_call() -> None:
    def execute(payloads: Sequence[str]) -> list[str]:
        if "bad" in payloads:
            raise ValueError("engine exploded")
        return list(payloads)

    scheduler: EngineScheduler[str, str] = EngineScheduler("t", execute, workers=2, call_timeout=0)
    scheduler.start()
    lane = scheduler.lane("a")
    with pytest.raises(ValueError):
        await lane.run("bad")
    assert await lane.run("good") == "good"
    scheduler.stop()
