"""Live-server fixtures: a real SttServer on 127.0.0.1, port 0, in a background thread.

The server runs on its own event loop in this process, so tests can look at its threads and
state, while clients connect over real sockets from the test's loop.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from stt_server.config import from_mapping
from stt_server.logs import configure
from stt_server.server import SttServer
from stt_server.tokens import TokenStore, digest_of

BASE_CONFIG: dict[str, Any] = {
    "server": {"host": "127.0.0.1", "port": 0},
    "providers": {"whisper": {"enabled": True}, "null": {"enabled": True}},
}

# name → (token, extra fields for the token file line)
TEST_TOKENS = {
    "alice": ("alice-token-0123456789", ""),
    "nullonly": ("nullonly-token-0123456789", "providers=null"),
    "single": ("single-token-0123456789", "max_sessions=1"),
}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass
class LiveServer:
    server: SttServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    token_file: Path
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def base_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/v1/listen", *, token: str | None = "alice", **params: Any) -> str:
        """A websocket URL; ``token`` is a token *name* from TEST_TOKENS (None for no token)."""
        query = dict(params)
        if token is not None:
            query = {"token": self.tokens.get(token, token), **query}
        return f"{self.base_url}{path}" + (f"?{urlencode(query)}" if query else "")

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the server's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def stop(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def write_token_file(path: Path) -> dict[str, str]:
    lines = ["# test tokens"]
    for name, (token, extra) in TEST_TOKENS.items():
        secret = f"sha256:{digest_of(token)}" if name != "alice" else token  # both forms
        lines.append(f"{secret} {name} {extra}".rstrip())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {name: token for name, (token, _) in TEST_TOKENS.items()}


def start_live_server(directory: Path, config_data: dict[str, Any] | None = None) -> LiveServer:
    data = deep_merge(BASE_CONFIG, config_data or {})
    token_file = directory / "tokens.txt"
    tokens = write_token_file(token_file) if not token_file.exists() else {
        name: token for name, (token, _) in TEST_TOKENS.items()}
    data = deep_merge(data, {"tokens": {"file": str(token_file), "create_if_missing": False}})
    config = from_mapping(data, source=str(directory / "config.yaml"))
    server = SttServer(config, tokens=TokenStore(token_file))
    loop = asyncio.new_event_loop()
    started: Future[None] = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            try:
                await server.start()
                started.set_result(None)
            except BaseException as exc:  # report start failures to the test
                started.set_exception(exc)

        loop.create_task(boot())
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name="live-server", daemon=True)
    thread.start()
    started.result(timeout=120)
    return LiveServer(server, loop, thread, token_file, tokens)


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure("info", "console")


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One shared server with whisper and null enabled."""
    live = start_live_server(tmp_path_factory.mktemp("live"))
    yield live
    live.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start a server with config overrides: ``make_server({"providers": {...}})``."""
    started: list[LiveServer] = []

    def factory(config_data: dict[str, Any] | None = None, directory: Path | None = None) -> LiveServer:
        folder = directory or tmp_path / f"server{len(started)}"
        folder.mkdir(parents=True, exist_ok=True)
        live = start_live_server(folder, config_data)
        started.append(live)
        return live

    yield factory
    for live in started:
        live.stop()
