"""The real `stt-server` process and real signals: SIGHUP with a valid and an invalid config,
SIGTERM draining an open session, and a second signal that exits at once."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
import yaml
from conftest import write_token_file
from ops_support import read_events, spawn_server
from support import JFK_FLAC, Transcript, chunked, collect, load_pcm16

NULL_CONFIG = {"server": {"port": 0, "default_provider": "null", "drain_timeout_seconds": 10},
               "providers": {"whisper": {"enabled": False}, "null": {"enabled": True}},
               "logging": {"format": "json"}, "limits": {"max_sessions": 5}}


class ServerProcess:
    """`python -m stt_server.cli --config FILE`, its JSON log lines collected as they come."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        self.directory = directory
        self.config_path = directory / "config.yaml"
        self.tokens = write_token_file(directory / "tokens.txt")
        self.write_config(config)
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""

    def write_config(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        self.config_path.write_text(text)

    async def start(self) -> None:
        self.proc = await spawn_server(self.config_path, self.directory)
        self._reader = asyncio.create_task(self._read())
        self.url = (await self.event("listening"))["url"]

    async def _read(self) -> None:
        assert self.proc is not None
        await read_events(self.proc, self.events)

    async def event(self, name: str, after: int = 0, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events[after:]:
                if event.get("event") == name:
                    return event
            if self._reader.done():
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {name!r} log line; got {[e.get('event') for e in self.events]}")

    def signal(self, signum: int) -> int:
        assert self.proc is not None
        mark = len(self.events)
        self.proc.send_signal(signum)
        return mark

    def session_url(self, token: str = "alice") -> str:
        return f"{self.url}/v1/listen?token={self.tokens[token]}"

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def server_process(tmp_path: Path):
    started: list[ServerProcess] = []

    async def start(config: dict[str, Any]) -> ServerProcess:
        process = ServerProcess(tmp_path, config)
        started.append(process)
        await process.start()
        return process

    yield start
    for process in started:
        await process.close()


async def open_sessions(url: str, count: int) -> int:
    """How many of ``count`` sessions opened at once are accepted."""
    accepted = 0
    connections = []
    try:
        for _ in range(count):
            try:
                connections.append(await websockets.connect(url))
                accepted += 1
            except websockets.InvalidStatus as refusal:
                assert refusal.response.status_code == 503
    finally:
        for ws in connections:
            await ws.close()
    return accepted


async def test_sighup_applies_a_valid_config_and_rejects_an_invalid_one(server_process) -> None:
    server = await server_process(NULL_CONFIG)
    assert await open_sessions(server.session_url(), 3) == 3

    changed = {**NULL_CONFIG, "limits": {"max_sessions": 1}, "server": {**NULL_CONFIG["server"], "port": 1}}
    server.write_config(changed)
    mark = server.signal(signal.SIGHUP)
    reloaded = await server.event("configuration reloaded", mark)
    assert reloaded["changed"] == ["limits.max_sessions"]
    restart = await server.event("configuration changes that need a restart were not applied", mark)
    assert restart["keys"] == ["server.port"]
    assert await open_sessions(server.session_url(), 3) == 1

    server.write_config("limits:\n  max_sessions: -3\n")
    mark = server.signal(signal.SIGHUP)
    rejected = await server.event("reload rejected: invalid configuration; the running one is kept", mark)
    assert "limits.max_sessions" in rejected["reason"] and str(server.config_path) in rejected["reason"]
    assert await open_sessions(server.session_url(), 3) == 1  # still serving, old limits
    server.write_config("limits: [not, a, mapping\n")
    mark = server.signal(signal.SIGHUP)
    assert "not valid YAML" in (await server.event("reload rejected: invalid configuration; the running one is kept",
                                                   mark))["reason"]
    assert server.proc is not None and server.proc.returncode is None


async def test_sigterm_drains_open_sessions_and_exits_0(server_process) -> None:
    server = await server_process(NULL_CONFIG)
    transcript = Transcript()
    async with websockets.connect(server.session_url()) as ws:
        reader = asyncio.create_task(collect(ws, transcript))
        for chunk in chunked(bytes(32000), 3200):
            await ws.send(chunk)
        began = time.monotonic()
        server.signal(signal.SIGTERM)
        await asyncio.wait_for(reader, 20)
    assert server.proc is not None
    assert await asyncio.wait_for(server.proc.wait(), 20) == 0
    assert time.monotonic() - began < NULL_CONFIG["server"]["drain_timeout_seconds"]
    # No message Deepgram's SDKs cannot type: the opening Metadata, then the closing one (1 s of audio).
    assert [m["type"] for m in transcript.messages] == ["Metadata", "Metadata"]
    assert transcript.messages[-1]["duration"] == 1.0
    assert (transcript.close_code, transcript.close_reason) == (1001, "server shutting down")
    await server.event("drained")


async def test_a_second_signal_exits_at_once(server_process) -> None:
    config = {"server": {"port": 0, "drain_timeout_seconds": 60}, "logging": {"format": "json"}}
    server = await server_process(config)  # Whisper: finishing 33 s of speech takes a while
    pcm = load_pcm16(JFK_FLAC) * 3
    async with websockets.connect(server.session_url()) as ws:
        for chunk in chunked(pcm, 3200):
            await ws.send(chunk)
        await asyncio.sleep(0.5)
        mark = server.signal(signal.SIGTERM)
        await server.event("draining", mark)
        began = time.monotonic()
        server.signal(signal.SIGINT)
        assert server.proc is not None
        assert await asyncio.wait_for(server.proc.wait(), 10) == 128 + signal.SIGINT
        assert time.monotonic() - began < 5
    assert any(e.get("event") == "second stop signal: exiting now" for e in server.events)
