"""Helpers for the scale-out tests: real `stt-server` processes (one folder each), a real
redis-server and a real nginx on loopback, and a client that follows Retry-After."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import websockets
import yaml
from conftest import deep_merge, write_token_file
from ops_support import free_port, read_events, spawn_server

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# A token allowed two sessions at once, on top of conftest's test tokens.
PAIR_TOKEN = "pair-token-0123456789"

NULL_INSTANCE: dict[str, Any] = {
    "server": {"host": "127.0.0.1", "port": 0, "default_provider": "null", "drain_timeout_seconds": 20},
    "providers": {"whisper": {"enabled": False}, "null": {"enabled": True}},
    "logging": {"format": "json"},
    "limits": {"max_sessions": 20},
}


class Instance:
    """`python -m stt_server.cli --config FILE` in its own folder; JSON log lines collected."""

    def __init__(self, directory: Path, config: dict[str, Any], name: str) -> None:
        self.name = name
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.tokens = write_token_file(directory / "tokens.txt")
        with open(directory / "tokens.txt", "a", encoding="utf-8") as tokens:
            tokens.write(f"{PAIR_TOKEN} pair max_sessions=2\n")
        self.tokens["pair"] = PAIR_TOKEN
        self.config = deep_merge(config, {"tokens": {"file": "tokens.txt", "create_if_missing": False}})
        (directory / "config.yaml").write_text(yaml.safe_dump(self.config))
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self, listening: int = 1) -> None:
        """Start; wait for ``listening`` "listening" lines (one per worker)."""
        self.proc = await spawn_server(self.directory / "config.yaml", self.directory)
        self._reader = asyncio.create_task(self._read())
        await self.wait_for(lambda: len(self.named("listening")) >= listening, "listening")
        self.port = int(self.named("listening")[0]["url"].rsplit(":", 1)[1])

    async def _read(self) -> None:
        assert self.proc is not None
        await read_events(self.proc, self.events)

    def named(self, name: str, after: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.events[after:] if e.get("event") == name]

    async def wait_for(self, predicate: Any, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline or (self._reader.done() and not predicate()):
                raise AssertionError(f"{self.name}: no {what}; log: {[e.get('event') for e in self.events][-30:]}")
            await asyncio.sleep(0.05)

    def url(self, token: str = "pair", port: int | None = None, **params: str) -> str:
        query = "&".join([f"token={self.tokens[token]}", *(f"{k}={v}" for k, v in params.items())])
        return f"ws://127.0.0.1:{port or self.port}/v1/listen?{query}"

    def signal(self, signum: int) -> int:
        assert self.proc is not None
        mark = len(self.events)
        self.proc.send_signal(signum)
        return mark

    async def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        # A supervisor's workers get SIGTERM from the kernel when it dies (PR_SET_PDEATHSIG);
        # wait until they are gone so no test leaves a process behind.
        for event in self.named("worker started"):
            await _wait_gone(event["pid"])


async def _wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


class RedisServer:
    """Debian's redis-server on a loopback port, no persistence."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis  # the client the server uses

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError(f"redis-server did not start: {self.proc.poll()}") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


async def refusal_of(url: str) -> tuple[int, str] | None:
    """Open and close a session: None when accepted, else (HTTP status, error code)."""
    try:
        async with websockets.connect(url, open_timeout=20):
            return None
    except websockets.InvalidStatus as refused:
        body = refused.response.body or b"{}"
        return refused.response.status_code, json.loads(body).get("error", "")


async def connect_following_retry_after(url: str, attempts: int = 6, **kwargs: Any) -> tuple[Any, int]:
    """Connect; on 503 wait Retry-After seconds and try again. Returns (connection, 503s seen)."""
    refusals = 0
    for _ in range(attempts):
        try:
            return await websockets.connect(url, open_timeout=30, max_size=None, **kwargs), refusals
        except websockets.InvalidStatus as refused:
            if refused.response.status_code != 503:
                raise
            refusals += 1
            await asyncio.sleep(float(refused.response.headers.get("Retry-After", "1")))
    raise AssertionError(f"still refused after {attempts} attempts")
