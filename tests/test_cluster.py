"""Session leases and the supervisor's decisions, without a server: the refusal rule, the
Redis-state tracker, the restart policy, the in-process counters, and the box-wide SQLite
file used by two "workers" (two stores with different owners) at once."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from stt_server.cli import worker_journal
from stt_server.cluster import (
    BoxLeases,
    LeaseRequest,
    LocalLeases,
    Reachability,
    create_box_file,
    purge_owner,
    refusal,
)
from stt_server.config import from_mapping
from stt_server.errors import CapacityError
from stt_server.supervisor import RestartPolicy, reserve_port


def request(lease: str, token: str = "t", token_limit: int = 0, box_limit: int = 0) -> LeaseRequest:
    return LeaseRequest(lease, token, token_limit, box_limit)


def test_refusal_names_the_limit_that_is_reached() -> None:
    assert refusal(3, 1, total_limit=4, token_limit=2, token_name="a", where="this box") is None
    full = refusal(4, 0, total_limit=4, token_limit=2, token_name="a", where="this box")
    assert full is not None and (full.code, full.http_status) == ("server_session_limit", 503)
    assert "this box already has 4" in full.message
    over = refusal(1, 2, total_limit=0, token_limit=2, token_name="a", where="the cluster")
    assert over is not None and over.code == "token_session_limit" and "on the cluster" in over.message
    cluster = refusal(9, 0, total_limit=9, token_limit=0, token_name="a", where="the cluster")
    assert cluster is not None and cluster.code == "cluster_session_limit"
    assert refusal(100, 100, total_limit=0, token_limit=0, token_name="a", where="the server") is None


def test_reachability_reports_each_change_once() -> None:
    state = Reachability()
    assert [state.observe(ok) for ok in (True, True, False, False, False, True, True, False)] == \
        [False, False, True, False, False, True, False, True]
    assert Reachability().observe(False)  # down from the start is worth a line


def test_restart_policy_backs_off_then_gives_up_and_forgives_a_long_life() -> None:
    policy = RestartPolicy(first_delay=0.5, max_delay=4.0, stable_after=30.0, max_quick_failures=4)
    failures, delays = 0, []
    for _ in range(4):
        failures = policy.failures_after(failures, uptime=1.0)
        delays.append(policy.delay(failures))
    assert delays == [0.5, 1.0, 2.0, None]  # the 4th failure in a row: give up
    assert policy.failures_after(3, uptime=31.0) == 1  # it ran for a while: start afresh
    assert RestartPolicy().delay(4) == 4.0 and RestartPolicy(max_quick_failures=99).delay(20) == 30.0


async def test_local_leases_count_per_token_and_in_total() -> None:
    leases = LocalLeases()
    await leases.acquire(request("1", "a", token_limit=2, box_limit=3))
    await leases.acquire(request("2", "a", token_limit=2, box_limit=3))
    with pytest.raises(CapacityError) as info:
        await leases.acquire(request("3", "a", token_limit=2, box_limit=3))
    assert info.value.code == "token_session_limit"
    await leases.acquire(request("3", "b", token_limit=2, box_limit=3))
    with pytest.raises(CapacityError) as info:
        await leases.acquire(request("4", "c", box_limit=3))
    assert info.value.code == "server_session_limit"
    await leases.release("1")
    await leases.release("1")  # twice is harmless
    await leases.acquire(request("4", "a", token_limit=2, box_limit=3))


async def test_box_leases_are_shared_by_workers_and_freed_when_one_dies(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite"
    create_box_file(path)
    first, second = BoxLeases(path, ttl=30, owner=101), BoxLeases(path, ttl=30, owner=102)
    await first.start()
    await second.start()
    # Two workers race for the last two of three slots: exactly the limit is admitted.
    await first.acquire(request("a1", box_limit=3))
    outcomes = await asyncio.gather(*(store.acquire(request(f"x{i}", box_limit=3))
                                      for i, store in enumerate([first, second, first, second, second])),
                                    return_exceptions=True)
    assert sum(o is None for o in outcomes) == 2
    assert all(isinstance(o, CapacityError) for o in outcomes if o is not None)
    # The supervisor reaps worker 102: its leases go at once.
    held_by_second = [f"x{i}" for i, o in enumerate(outcomes) if o is None and i in (1, 3, 4)]
    assert purge_owner(path, 102) == len(held_by_second)
    for _ in held_by_second:
        await first.acquire(request(f"again-{_}", box_limit=3))
    with pytest.raises(CapacityError):
        await first.acquire(request("over", box_limit=3))
    await first.close()  # a clean stop gives back everything it held
    await second.acquire(request("b1", box_limit=1))
    await second.close()


async def test_box_leases_expire_without_a_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite"
    create_box_file(path)
    frozen = BoxLeases(path, ttl=0.6, owner=201)  # a worker stopped with SIGSTOP, say
    live = BoxLeases(path, ttl=0.6, owner=202)
    await frozen.start()
    await live.start()
    assert frozen._heartbeat is not None
    frozen._heartbeat.cancel()
    await frozen.acquire(request("f", "a", token_limit=1))
    await live.acquire(request("l", "b", token_limit=1))
    with pytest.raises(CapacityError):
        await live.acquire(request("l2", "a", token_limit=1))
    await asyncio.sleep(1.0)  # past the TTL: the frozen lease is gone, the live one was refreshed
    await live.acquire(request("l2", "a", token_limit=1))
    with pytest.raises(CapacityError):
        await live.acquire(request("l3", "b", token_limit=1))
    await live.close()
    await frozen.close()


def test_reserved_port_is_shared_with_reuse_port_listeners() -> None:
    port, holder = reserve_port("127.0.0.1", 0)
    assert holder is not None and port > 0
    listeners = []
    for _ in range(2):  # what two workers do
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        listeners.append(sock)
    for sock in [*listeners, holder]:
        sock.close()
    assert reserve_port("127.0.0.1", 8765) == (8765, None)


def test_each_worker_has_its_own_journal_file() -> None:
    config = from_mapping({"journal": {"enabled": True, "file": "logs/transcripts.jsonl"}})
    assert worker_journal(config, 1).journal.file == "logs/transcripts.w1.jsonl"
    assert worker_journal(from_mapping({}), 1) == from_mapping({})


@pytest.mark.parametrize(("data", "key"), [
    ({"cluster": {"redis_url": "localhost:6379"}}, "cluster.redis_url"),
    ({"cluster": {"on_redis_down": "maybe"}}, "cluster.on_redis_down"),
    ({"cluster": {"lease_ttl_seconds": 0}}, "cluster.lease_ttl_seconds"),
    ({"cluster": {"max_sessions": -1}}, "cluster.max_sessions"),
    ({"server": {"workers": 0}}, "server.workers"),
])
def test_bad_scale_values_name_the_key(data: dict, key: str) -> None:
    from stt_server.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        from_mapping(data, source="scale.yaml")
    assert f"scale.yaml: {key}" in info.value.message
