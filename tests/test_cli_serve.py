"""The README's first run: `stt-server` with no token file creates one and prints the token."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import sys
from pathlib import Path

import websockets
from support import REPO

# This checkout's package, whatever is installed (the server runs in a temporary folder).
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


async def read_banner(stdout: asyncio.StreamReader) -> str:
    """The start-up text on stdout: lines up to the kiosk page's URL."""
    lines = []
    while not lines or "://" not in lines[-1] or "/v1" in lines[-1] or "stt-client" in lines[-1]:
        line = (await stdout.readline()).decode()
        assert line, f"stdout ended: {lines}"
        lines.append(line)
    return "".join(lines)


async def test_first_run_creates_token_file_and_serves(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  port: 0\nlogging:\n  format: json\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stt_server.cli", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path, env=ENV)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        banner = (await asyncio.wait_for(read_banner(proc.stdout), 60))
        token = re.search(r"--token (\S+)", banner).group(1)  # type: ignore[union-attr]
        url = None
        log_lines = []
        while url is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 120)).decode()
            assert line, "server exited before listening"
            log_lines.append(line)
            event = json.loads(line)
            if event.get("event") == "listening":
                url = event["url"]
        assert f"stt-client --url {url} --token {token}" in banner  # the real port, not :0
        assert url.replace("ws://", "http://") + "/" in banner  # the kiosk page
        token_file = tmp_path / "tokens.txt"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert token not in token_file.read_text()
        async with websockets.connect(f"{url}/v1/listen?token={token}") as ws:
            metadata = json.loads(await ws.recv())
            assert metadata["provider"] == "whisper"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        rest = (await proc.stderr.read()).decode()
        assert token not in "".join(log_lines) + rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_first_run_under_systemd_does_not_print_the_token(tmp_path: Path) -> None:
    """With stdout connected to the journal (JOURNAL_STREAM set), the token would be logged."""
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  port: 0\n  default_provider: 'null'\n"
                      "providers:\n  whisper:\n    enabled: false\n  'null':\n    enabled: true\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stt_server.cli", "--config", str(config), cwd=tmp_path,
        env={**ENV, "JOURNAL_STREAM": "8:12345"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        banner = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert "not shown" in banner and "stt-server tokens add" in banner
        assert (tmp_path / "tokens.txt").exists()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_later_starts_say_how_to_make_a_token_and_never_print_one(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  port: 0\n  default_provider: 'null'\n"
                      "providers:\n  whisper:\n    enabled: false\n  'null':\n    enabled: true\n")
    existing = "existing-token-0123456789"
    (tmp_path / "tokens.txt").write_text(f"{existing} laptop\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stt_server.cli", "--config", str(config), cwd=tmp_path, env=ENV,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        banner = await asyncio.wait_for(read_banner(proc.stdout), 60)
        assert "stt-server tokens add NAME" in banner and "--token TOKEN" in banner
        page = re.search(r"http://127\.0\.0\.1:(\d+)/", banner)
        assert page is not None and page.group(1) != "0", banner
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        rest = (await proc.stdout.read() + await proc.stderr.read()).decode()
        assert existing not in banner + rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
