"""Fixtures of the scale-out tests, loaded with ``pytest_plugins = ("scale_fixtures",)``:
`instances` starts real `stt-server` processes, `redis_server` a real redis-server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from scale_support import Instance, RedisServer


@pytest.fixture
async def instances(tmp_path: Path):
    started: list[Instance] = []

    async def start(config: dict[str, Any], count: int = 1, listening: int = 1) -> list[Instance]:
        new = [Instance(tmp_path / f"instance-{len(started) + i}", config, f"instance-{len(started) + i}")
               for i in range(count)]
        started.extend(new)
        await asyncio.gather(*(instance.start(listening) for instance in new))
        return new

    yield start
    await asyncio.gather(*(instance.close() for instance in started))


@pytest.fixture
def redis_server(tmp_path: Path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
