"""Token-file faults while serving (issue 10): garbage, binary, too big, a directory or a FIFO
in its place, deleted, empty. Each is read off the event loop and named in one warning; a file
that cannot be used keeps the last good tokens; health checks keep answering meanwhile."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import websockets
from ops_support import NULL_ONLY
from test_hardening_live import server_log


def replace_file(path: Path, data: bytes) -> None:
    """A new file (a new inode) in the old one's place, as editors and `tokens add` do."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def accepted(live, token: str = "alice") -> bool:
    try:
        async with websockets.connect(live.url(token=token, provider="null"), open_timeout=30):
            return True
    except websockets.InvalidStatus as refusal:
        assert refusal.response.status_code == 401, refusal.response.status_code
        return False


async def health_latencies(port: int, until: asyncio.Event) -> list[float]:
    """/healthz round trips (a fresh connection each) until ``until`` is set."""
    latencies = []
    while not until.is_set() or not latencies:
        began = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
        latencies.append(time.perf_counter() - began)
        await asyncio.sleep(0.02)
    return latencies


def assert_prompt(latencies: list[float]) -> None:
    """Nine in ten /healthz answers within 100 ms, none over a second, while a reload runs (it
    once froze the loop for 66-94 s). Not every one: on a shared 2-core box the OS alone can
    hold a thread back for 100 ms; bench/RESULTS.md has the figures on a quiet machine."""
    ordered = sorted(latencies)
    assert ordered[int(0.9 * (len(ordered) - 1))] < 0.1 and ordered[-1] < 1.0, ordered


async def until_logged(log, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.getvalue():
        assert time.monotonic() < deadline, f"no log line with {text!r}:\n{log.getvalue()[-2000:]}"
        await asyncio.sleep(0.05)


async def test_token_file_faults_while_serving(make_server) -> None:
    live = make_server(NULL_ONLY)
    path = live.token_file
    good = path.read_bytes()
    assert await accepted(live)

    # Garbage after the good lines, ~4 MB: parsed in a worker thread while /healthz answers.
    rng = random.Random(10)
    garbage = "".join(f"{rng.randbytes(12).hex()} bad name! opt\n" for _ in range(100_000)).encode()
    with server_log() as log:
        replace_file(path, good + garbage)
        done = asyncio.Event()
        prober = asyncio.create_task(health_latencies(live.port, done))
        assert await accepted(live)  # this handshake starts the reload; old and new both hold alice
        await until_logged(log, "token file loaded")
        done.set()
        latencies = await prober
        assert await accepted(live)
    text = log.getvalue()
    assert_prompt(latencies)
    assert text.count("token file: lines skipped") == 1  # one summarising warning, not 100,000
    assert "skipped=100000" in text and "line 5:" in text and "and 99995 more" in text
    assert len(text) < 5_000

    faults = {
        "binary": (lambda: replace_file(path, bytes(range(256)) * 100), "binary data"),
        "not UTF-8": (lambda: replace_file(path, good + b"\xff\xfe caf\xe9 x\n"), "not UTF-8"),
        "too big": (lambda: _sparse(path, 50 * 1024 * 1024), "over tokens.max_file_bytes"),
        "a directory": (lambda: (path.unlink(), path.mkdir()), "is a directory"),
        "a FIFO": (lambda: (path.rmdir(), os.mkfifo(path)), "is not a regular file"),
        "deleted": (lambda: path.unlink(), "missing"),
    }
    for name, (make_fault, reason) in faults.items():
        with server_log() as log:
            make_fault()
            done = asyncio.Event()
            prober = asyncio.create_task(health_latencies(live.port, done))
            assert await accepted(live), f"{name}: the last good tokens must stay in force"
            await until_logged(log, "token file not used")
            assert await accepted(live) and await accepted(live)  # no new warning until it changes
            done.set()
            latencies = await prober
        text = log.getvalue()
        assert text.count("token file not used") == 1, (name, text)
        assert reason in text, (name, text)
        assert_prompt(latencies)
        assert "Traceback" not in text

    with server_log() as log:
        replace_file(path, b"")
        assert not await accepted(live)
        await until_logged(log, "every session will be refused")
    assert "3 → 0" in log.getvalue()
    replace_file(path, good)
    assert await accepted(live)


def _sparse(path: Path, size: int) -> None:
    """A file of ``size`` bytes that takes no disk (the cap is checked before reading)."""
    tmp = path.with_name(path.name + ".new")
    with open(tmp, "wb") as f:
        f.truncate(size)
    os.replace(tmp, path)
