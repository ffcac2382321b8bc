"""Start-up and config faults against the real `stt-server` process (issue 10): each is one
line naming the file, key or port, with its documented exit status, and no traceback;
check-config, a start and a SIGHUP reload give the same answer."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets
import yaml
from conftest import write_token_file
from support import REPO
from test_ops_cli import NULL_CONFIG, ServerProcess

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
EXIT_CONFIG, EXIT_LISTEN = 2, 3


def stt_server(directory: Path, *args: str, timeout: float = 120,
               prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "stt_server.cli", "--config",
                           str(directory / "config.yaml"), *args],
                          cwd=directory, env=ENV, capture_output=True, text=True, timeout=timeout)


def write_config(directory: Path, config: dict | bytes) -> None:
    path = directory / "config.yaml"
    if isinstance(config, bytes):
        path.write_bytes(config)
    else:
        path.write_text(yaml.safe_dump(config))


def one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The run's output holds exactly one error line, containing every needle, and no traceback."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines()
              if "invalid configuration" in line or "[error" in line or '"level": "error"' in line]
    assert len(errors) == 1, output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def test_port_in_use_fails_fast_before_the_engines_load(tmp_path: Path) -> None:
    write_token_file(tmp_path / "tokens.txt")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Whisper enabled: its model load takes seconds; the port must be found taken first.
        write_config(tmp_path, {"server": {"port": port}})
        began = time.monotonic()
        result = stt_server(tmp_path, "serve")
        elapsed = time.monotonic() - began
    assert result.returncode == EXIT_LISTEN, result.stderr
    one_error_line(result, f"127.0.0.1:{port}", "already in use")
    assert "provider ready" not in result.stderr
    assert elapsed < 30, elapsed


@pytest.mark.parametrize("content, needle", [
    (b"server:\n  port: 0\n  host: caf\xe9\n", "not UTF-8"),
    (bytes(range(256)) * 4, "not UTF-8"),
    (b"server:\n  port: 0\x00\x01\x02\n", "not valid YAML"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "not UTF-8"),
    (b"[" * 20_000, "not valid YAML"),
])
def test_a_binary_or_non_utf8_config_is_one_line_and_exit_2(tmp_path: Path, content: bytes, needle: str) -> None:
    write_config(tmp_path, content)
    for command in ("check-config", "serve"):
        result = stt_server(tmp_path, command)
        assert result.returncode == EXIT_CONFIG, (command, result.stderr)
        one_error_line(result, str(tmp_path / "config.yaml"), needle)


def test_tokens_file_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "tokens-dir").mkdir()
    write_config(tmp_path, {**NULL_CONFIG, "tokens": {"file": "tokens-dir"}})
    for command in ("check-config", "serve"):
        result = stt_server(tmp_path, command)
        assert result.returncode == EXIT_CONFIG, (command, result.stderr)
        one_error_line(result, "tokens.file", "tokens-dir", "is a directory")


def test_a_typo_in_provider_options_is_caught_by_check_config_start_and_reload(tmp_path: Path) -> None:
    write_token_file(tmp_path / "tokens.txt")
    write_config(tmp_path, {"providers": {"whisper": {"beam_sise": 3}}})
    for command in ("check-config", "serve"):
        result = stt_server(tmp_path, command)
        assert result.returncode == EXIT_CONFIG, (command, result.stderr)
        one_error_line(result, "providers.whisper.beam_sise", "unknown key", str(tmp_path / "config.yaml"))
    # A disabled provider's options are not checked: they take effect only once it is enabled.
    write_config(tmp_path, {"providers": {"whisper": {"enabled": False, "beam_sise": 3}, "null": {"enabled": True}},
                            "server": {"default_provider": "null"}})
    assert stt_server(tmp_path, "check-config").returncode == 0


async def test_sighup_with_a_provider_option_typo_keeps_the_running_config(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, NULL_CONFIG)
    try:
        await server.start()
        server.write_config({**NULL_CONFIG, "providers": {**NULL_CONFIG["providers"],
                                                          "null": {"enabled": True, "passthru": False}}})
        mark = server.signal(signal.SIGHUP)
        rejected = await server.event("reload rejected: invalid configuration; the running one is kept", mark)
        assert "providers.null.passthru" in rejected["reason"]
        async with websockets.connect(server.session_url()) as ws:
            assert "Metadata" in await asyncio.wait_for(ws.recv(), 10)
        assert not any("Traceback" in str(event) for event in server.events)
    finally:
        await server.close()


def test_a_token_file_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    write_config(tmp_path, {**NULL_CONFIG, "tokens": {"file": "ro/missing/tokens.txt"}})
    (tmp_path / "ro").chmod(0o500)
    try:
        result = stt_server(tmp_path, "serve", prefix=WITHOUT_ROOTS_OVERRIDE)
    finally:
        (tmp_path / "ro").chmod(0o700)
    assert result.returncode == EXIT_CONFIG, result.stderr
    one_error_line(result, "tokens.file", "Permission denied")


# Root reads any file whatever its mode; without these two capabilities it reads only what
# the mode bits allow it (as the owner), like a service user. setpriv is in util-linux.
WITHOUT_ROOTS_OVERRIDE: tuple[str, ...] = (
    ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search", "--")
    if os.geteuid() == 0 else ())


async def test_an_unreadable_token_file_while_serving_is_a_warning_and_keeps_the_tokens(tmp_path: Path) -> None:
    """chmod 000 while serving, with the server unable to override file modes (see above)."""
    server = ServerProcess(tmp_path, NULL_CONFIG)
    server.proc = await asyncio.create_subprocess_exec(
        *WITHOUT_ROOTS_OVERRIDE, sys.executable, "-m", "stt_server.cli", "--config", str(server.config_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=tmp_path, env=ENV)
    server._reader = asyncio.create_task(server._read())
    token_file = tmp_path / "tokens.txt"
    try:
        server.url = (await server.event("listening"))["url"]
        mark = len(server.events)
        token_file.chmod(0)
        async with websockets.connect(server.session_url()) as ws:  # the last good tokens hold
            assert "Metadata" in await asyncio.wait_for(ws.recv(), 10)
        warning = await server.event("token file not used; the last good one stays in force", mark)
        assert "Permission denied" in warning["reason"] and warning["tokens"] == 3
        token_file.chmod(stat.S_IRUSR | stat.S_IWUSR)  # readable again: read again, no restart
        async with websockets.connect(server.session_url()):
            pass
        await server.event("token file loaded", mark)
        assert not any("Traceback" in str(event) for event in server.events)
    finally:
        token_file.chmod(stat.S_IRUSR | stat.S_IWUSR)
        await server.close()
