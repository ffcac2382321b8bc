"""`server.workers: 2`: the real `stt-server` supervisor and its two worker processes on one
port. Sessions land on both workers, the box-wide limit holds across them, /metrics sums them,
SIGTERM drains both, SIGHUP reloads both, and a worker killed with -9 is restarted and its
slots are freed at once."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import websockets
import yaml
from conftest import deep_merge
from ops_support import metric, scrape
from scale_support import NULL_INSTANCE, refusal_of
from support import Transcript, collect, wait_until

pytest_plugins = ("scale_fixtures",)
pytestmark = pytest.mark.slow


def two_workers(max_sessions: int) -> dict:
    return deep_merge(NULL_INSTANCE, {"server": {"workers": 2}, "limits": {"max_sessions": max_sessions}})


async def open_tracked(url: str) -> tuple[websockets.ClientConnection, Transcript, asyncio.Task]:
    ws = await websockets.connect(url)
    transcript = Transcript()
    return ws, transcript, asyncio.create_task(collect(ws, transcript))


def worker_of_sessions(instance) -> dict[int, int]:
    """worker index → sessions opened on it, from the workers' own log lines."""
    counts: dict[int, int] = {}
    for event in instance.named("session opened"):
        counts[event["worker"]] = counts.get(event["worker"], 0) + 1
    return counts


async def test_two_workers_share_the_port_the_limit_and_metrics_and_both_drain(instances) -> None:
    (box,) = await instances(two_workers(max_sessions=12), listening=2)
    pids = {e["pid"] for e in box.named("listening")}
    assert len(pids) == 2 and all(e["url"].endswith(f":{box.port}") for e in box.named("listening"))

    sessions = [await open_tracked(box.url("alice")) for _ in range(12)]
    await wait_until(lambda: len(box.named("session opened")) == 12, timeout=20, what="12 sessions opened")
    spread = worker_of_sessions(box)
    assert set(spread) == {0, 1}, spread  # the kernel spread the connections over both workers
    # The limit is the box's, not each worker's (each alone would take 12 more).
    assert await refusal_of(box.url("alice")) == (503, "server_session_limit")
    for _ in range(4):  # whichever worker answers /metrics reports the sum over both
        samples = scrape(f"http://127.0.0.1:{box.port}")
        assert metric(samples, "stt_sessions_active", provider="null", protocol="native") == 12
        assert metric(samples, "stt_sessions_opened_total", provider="null", protocol="native") == 12
        assert metric(samples, "stt_errors_total", code="server_session_limit") == 1

    for ws, _, _ in sessions:
        await ws.send(bytes(3200))
    mark = box.signal(signal.SIGTERM)
    assert await box.wait(30) == 0
    for _, transcript, reader in sessions:
        await asyncio.wait_for(reader, 10)
        # Opening and closing Metadata (Deepgram has no Draining message), then 1001.
        assert [m["type"] for m in transcript.messages] == ["Metadata", "Metadata"]
        assert transcript.close_code == 1001
    assert {e["worker"] for e in box.named("drained", mark)} == {0, 1}
    assert box.named("supervisor exiting")[-1]["exit_code"] == 0


async def test_a_killed_worker_is_restarted_its_slots_freed_and_sighup_reaches_every_worker(instances) -> None:
    (box,) = await instances(two_workers(max_sessions=4), listening=2)
    sessions = [await open_tracked(box.url("alice")) for _ in range(4)]
    await wait_until(lambda: len(box.named("session opened")) == 4, timeout=20, what="4 sessions opened")
    assert await refusal_of(box.url("alice")) == (503, "server_session_limit")
    victim = max(worker_of_sessions(box).items(), key=lambda item: item[1])  # (index, sessions)
    pid = next(e["pid"] for e in box.named("worker started") if e["worker"] == victim[0])
    mark = len(box.events)
    os.kill(pid, signal.SIGKILL)

    await wait_until(lambda: bool(box.named("worker exited: restarting", mark)), timeout=10,
                     what="the supervisor to notice")
    exited = box.named("worker exited: restarting", mark)[0]
    assert (exited["worker"], exited["pid"], exited["exit_code"]) == (victim[0], pid, -signal.SIGKILL)
    assert exited["leases_freed"] == victim[1]
    # Its slots are free again (the surviving worker takes them before the restart is done).
    replacements = [await open_tracked(box.url("alice")) for _ in range(victim[1])]
    assert await refusal_of(box.url("alice")) == (503, "server_session_limit")
    await wait_until(lambda: len(box.named("listening", mark)) == 1, timeout=60, what="the new worker")
    restarted = box.named("worker started", mark)[0]
    assert restarted["worker"] == victim[0] and restarted["pid"] != pid

    config = deep_merge(box.config, {"limits": {"max_sessions": 5}})
    (box.directory / "config.yaml").write_text(yaml.safe_dump(config))
    mark = box.signal(signal.SIGHUP)
    await wait_until(lambda: len(box.named("configuration reloaded", mark)) == 2, timeout=20, what="both reloads")
    assert {e["worker"] for e in box.named("configuration reloaded", mark)} == {0, 1}
    extra = await websockets.connect(box.url("alice"))  # the new box limit, 5
    assert await refusal_of(box.url("alice")) == (503, "server_session_limit")
    await extra.close()
    for ws, _, _ in sessions + replacements:
        await ws.close()
