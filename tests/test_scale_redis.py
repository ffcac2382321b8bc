"""Cluster-wide limits with the real thing: three `stt-server` processes sharing a real
redis-server on loopback. A token's limit holds across instances, a killed instance's slots
come back within the lease time, and a Redis outage follows cluster.on_redis_down."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import websockets
from conftest import deep_merge
from scale_support import NULL_INSTANCE, refusal_of
from support import wait_until

# The fixtures `instances` and `redis_server`.
pytest_plugins = ("scale_fixtures",)
LEASE_TTL = 2.0

pytestmark = pytest.mark.slow


def clustered(redis_url: str, **cluster: object) -> dict:
    return deep_merge(NULL_INSTANCE, {"cluster": {"redis_url": redis_url, "lease_ttl_seconds": LEASE_TTL,
                                                  "redis_timeout_seconds": 0.5, **cluster}})


async def test_a_token_limit_holds_across_instances_and_a_killed_instance_frees_its_slots(
        instances, redis_server) -> None:
    a, b, c = await instances(clustered(redis_server.url), count=3)
    held = [await websockets.connect(a.url("pair")), await websockets.connect(b.url("pair"))]
    # pair has max_sessions=2: the third session, on a third instance, is refused before the upgrade.
    assert await refusal_of(c.url("pair")) == (503, "token_session_limit")
    # Other tokens are not affected.
    assert await refusal_of(c.url("alice")) is None
    await held.pop().close()  # b's session ends: its slot is free at once
    await wait_until(lambda: len(b.named("session closed")) == 1, timeout=10, what="b closed the session")
    third = await websockets.connect(c.url("pair"))
    held.append(third)
    assert await refusal_of(b.url("pair")) == (503, "token_session_limit")

    # kill -9 the instance holding one of the two: no release, no drain. Its lease expires.
    assert a.proc is not None
    a.proc.kill()
    await a.proc.wait()
    killed = time.monotonic()
    assert await refusal_of(b.url("pair")) == (503, "token_session_limit")  # still leased
    while (outcome := await refusal_of(b.url("pair"))) is not None:
        assert outcome == (503, "token_session_limit")
        assert time.monotonic() - killed < LEASE_TTL + 2.0, "slots of the killed instance did not come back"
        await asyncio.sleep(0.1)
    freed_after = time.monotonic() - killed
    assert freed_after <= LEASE_TTL + 2.0
    # The survivor's lease (on c) is kept alive by its heartbeat well past the TTL.
    await asyncio.sleep(LEASE_TTL * 1.5)
    first = await websockets.connect(b.url("pair"))
    assert await refusal_of(b.url("pair")) == (503, "token_session_limit")
    await first.close()
    for ws in held:
        await ws.close()


async def test_cluster_max_sessions_counts_every_instance_and_worker(instances, redis_server) -> None:
    (a,) = await instances(clustered(redis_server.url, max_sessions=5))
    (box,) = await instances(deep_merge(clustered(redis_server.url, max_sessions=5), {"server": {"workers": 2}}),
                             listening=2)
    held = [await websockets.connect(a.url("alice")), await websockets.connect(a.url("nullonly"))]
    held += [await websockets.connect(box.url("alice")) for _ in range(3)]
    await wait_until(lambda: len(box.named("session opened")) == 3, timeout=10, what="3 sessions on the box")
    assert await refusal_of(a.url("alice")) == (503, "cluster_session_limit")
    assert await refusal_of(box.url("alice")) == (503, "cluster_session_limit")
    # A worker killed with -9: its box leases go at once, its Redis leases within the TTL.
    victim = next(e for e in box.named("session opened"))["worker"]
    pid = next(e["pid"] for e in box.named("worker started") if e["worker"] == victim)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    while await refusal_of(a.url("alice")) is not None:
        assert time.monotonic() - killed < LEASE_TTL + 3, "the killed worker's slots did not come back"
        await asyncio.sleep(0.1)
    for ws in held:
        await ws.close()


async def test_redis_down_admit_or_refuse_logged_once_per_change(instances, redis_server) -> None:
    (refusing,) = await instances(clustered(redis_server.url, on_redis_down="refuse"))
    (admitting,) = await instances(clustered(redis_server.url, on_redis_down="admit"))
    assert await refusal_of(refusing.url("pair")) is None

    redis_server.stop()
    for _ in range(3):
        assert await refusal_of(refusing.url("pair")) == (503, "cluster_unavailable")
    during_outage = await websockets.connect(admitting.url("pair"))  # admitted: box limits only
    assert await refusal_of(admitting.url("pair")) is None
    for instance in (refusing, admitting):
        down = instance.named("redis unreachable")
        assert len(down) == 1, down  # once per change of state, not once per session
        assert down[0]["level"] == "warning"
    assert refusing.named("redis unreachable")[0]["on_redis_down"] == "refuse"

    redis_server.start()  # same port, empty: the counts come back from the heartbeats
    await wait_until(lambda: all(i.named("redis reachable again") for i in (refusing, admitting)),
                     timeout=LEASE_TTL * 3, what="both instances to see Redis again")
    # The session admitted during the outage is counted again: pair has room for one more.
    second = await websockets.connect(refusing.url("pair"))
    assert await refusal_of(refusing.url("pair")) == (503, "token_session_limit")
    assert len(refusing.named("redis unreachable")) == 1 and len(refusing.named("redis reachable again")) == 1
    await second.close()
    await during_outage.close()
    mark = refusing.signal(signal.SIGTERM)
    assert await refusing.wait() == 0
    assert refusing.named("drained", mark)
