"""`stt-client` as a user runs it: the real CLI in a subprocess against a real server.

A refusal after the upgrade, a server that goes away and no server at all each give one line
and a documented exit code, never a traceback; interims fit the terminal (a pty of a known
width) and are not drawn off a terminal; ``--json`` prints every server message as a line.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import start_live_server
from ops_support import free_port
from support import JFK_FLAC, JFK_TEXT, REPO, load_pcm16, wer

from stt_server import client

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def stt_client(*args: str, stderr: int | None = subprocess.PIPE, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stt_server.client", *args], stdout=subprocess.PIPE,
                          stderr=stderr, env=ENV, cwd=REPO, timeout=timeout)


def make_m4a(path: Path) -> Path:
    """jfk.flac as AAC in an MP4 container: a format the server's decoder does not take."""
    pcm = np.frombuffer(load_pcm16(JFK_FLAC, 16_000), dtype=np.int16)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16_000, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16_000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def assert_no_traceback(stderr: bytes) -> None:
    assert b"Traceback" not in stderr and b"Error:" not in stderr.split(b"stt-client:")[0], stderr.decode()


# --------------------------------------------------------------------------- pure parts


def test_fit_line_keeps_the_newest_words_within_the_width() -> None:
    assert client.fit_line("ask not   what", 80) == "ask not what"
    fitted = client.fit_line("and so my fellow americans ask not what your country", 20)
    assert len(fitted) == 19 and fitted.startswith("…") and fitted.endswith("your country")


# --------------------------------------------------------------------------- the real CLI


def test_refusal_after_the_upgrade_is_one_line_with_the_pcm_hint(live_server, tmp_path: Path) -> None:
    m4a = make_m4a(tmp_path / "jfk.m4a")
    proc = stt_client("--url", live_server.base_url, "--token", live_server.tokens["alice"], "--speed", "0", str(m4a))
    stderr = proc.stderr
    assert proc.returncode == client.EXIT_SESSION, stderr.decode()
    assert_no_traceback(stderr)
    lines = stderr.decode().splitlines()
    assert any("undecodable_audio" in line and "1008" in line for line in lines), lines
    assert any("--pcm" in line and "FFmpeg" in line for line in lines), lines
    assert len(lines) == 2

    # The hint is right: --pcm decodes the same file here and the server transcribes it.
    decoded = stt_client("--url", live_server.base_url, "--token", live_server.tokens["alice"], "--speed", "0",
                         "--pcm", str(m4a))
    assert decoded.returncode == client.EXIT_OK, decoded.stderr.decode()
    assert wer(JFK_TEXT, decoded.stdout.decode()) <= 0.15


def test_refusal_before_the_upgrade_names_the_reason(live_server) -> None:
    proc = stt_client("--url", live_server.base_url, "--token", live_server.tokens["alice"], "--language", "de-DE",
                      str(JFK_FLAC))
    assert proc.returncode == client.EXIT_REFUSED
    assert_no_traceback(proc.stderr)
    assert "HTTP 400" in proc.stderr.decode() and "de-DE" in proc.stderr.decode()


def test_no_server_is_one_line_and_its_own_exit_code() -> None:
    proc = stt_client("--url", f"ws://127.0.0.1:{free_port()}", "--token", "x", str(JFK_FLAC))
    assert proc.returncode == client.EXIT_UNREACHABLE
    assert_no_traceback(proc.stderr)
    assert len(proc.stderr.decode().splitlines()) == 1 and "nothing is listening" in proc.stderr.decode()


def test_a_server_that_stops_mid_session_is_one_line(tmp_path: Path) -> None:
    live = start_live_server(tmp_path, {"server": {"default_provider": "null"},
                                        "providers": {"whisper": {"enabled": False}}})
    proc = subprocess.Popen([sys.executable, "-m", "stt_server.client", "--url", live.base_url, "--token",
                             live.tokens["alice"], "--pcm", str(JFK_FLAC)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=REPO)
    try:
        # Real-time pacing: the session is open for 11 s; stop the server while it runs.
        deadline = 30.0
        while not live.server._contexts and deadline > 0:  # noqa: SLF001 (the test looks inside)
            deadline -= 0.1
            threading.Event().wait(0.1)
        live.stop()
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == client.EXIT_SESSION, stderr.decode()
    assert_no_traceback(stderr)
    assert "1001" in stderr.decode() and len(stderr.decode().splitlines()) == 1, stderr.decode()


def test_json_prints_every_message_as_a_line(live_server) -> None:
    proc = stt_client("--url", live_server.base_url, "--token", live_server.tokens["alice"], "--speed", "0",
                      "--json", str(JFK_FLAC))
    assert proc.returncode == client.EXIT_OK, proc.stderr.decode()
    messages = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert messages[0]["type"] == "Metadata" and messages[0]["model_info"]["model"] == "tiny.en"
    assert "/" not in json.dumps(messages[0]["model_info"])  # no server file paths
    finals = [m["channel"]["alternatives"][0]["transcript"] for m in messages
              if m["type"] == "Results" and m["is_final"]]
    assert wer(JFK_TEXT, " ".join(finals)) <= 0.15
    assert proc.stderr == b""  # the transcript is not repeated on stderr for scripts


def read_all(fd: int, into: bytearray) -> None:
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the other side closed
            return
        if not data:
            return
        into += data


@pytest.mark.slow
def test_interims_fit_a_narrow_terminal_and_show_only_the_current_utterance(live_server) -> None:
    columns = 24
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    screen = bytearray()
    reader = threading.Thread(target=read_all, args=(master, screen), daemon=True)
    reader.start()
    try:
        proc = stt_client("--url", live_server.base_url, "--token", live_server.tokens["alice"], str(JFK_FLAC),
                          stderr=slave)
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    assert proc.returncode == client.EXIT_OK
    text = ANSI.sub("", screen.decode(errors="replace")).replace("\r\n", "\n")
    # The display writes "\r" + interim for each redraw and "\r" + final + "\n" for a final.
    pieces = re.split(r"(\r|\n)", text)
    finals: list[str] = []
    drawings: list[str] = []
    for piece, separator in zip(pieces[::2], [*pieces[1::2], ""], strict=True):
        if not piece.strip():
            continue
        if separator == "\n":
            finals.append(piece.strip())
            continue
        drawings.append(piece)
        # The interim line is the current utterance: never a final already printed again.
        assert not any(piece.startswith(final) for final in finals if len(final) > 8), (finals, piece)
    assert drawings, f"no interim was drawn: {text!r}"
    # Every drawing fits in one row, so a carriage return can rewrite it.
    assert all(len(piece) < columns for piece in drawings), drawings
    assert any(piece.startswith("…") for piece in drawings), drawings  # jfk's last utterance is long
    assert wer(JFK_TEXT, " ".join(finals)) <= 0.15 and wer(JFK_TEXT, proc.stdout.decode()) <= 0.15


def test_off_a_terminal_no_interims_are_drawn(live_server) -> None:
    proc = stt_client("--url", live_server.base_url, "--token", live_server.tokens["alice"], "--speed", "4",
                      str(JFK_FLAC))
    assert proc.returncode == client.EXIT_OK
    assert b"\r" not in proc.stderr and b"\x1b[" not in proc.stderr
    assert wer(JFK_TEXT, proc.stderr.decode()) <= 0.15  # the finals, line by line
