"""Helpers for the operations tests: plain HTTP, metrics parsing, waiting, certificates."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from support import REPO

NULL_ONLY = {"server": {"default_provider": "null"}, "providers": {"whisper": {"enabled": False}}}


async def spawn_server(config_path: Path, directory: Path) -> asyncio.subprocess.Process:
    """`stt-server --config FILE` as a child process, this checkout's package whatever is
    installed, its JSON log on stderr."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stt_server.cli", "--config", str(config_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=directory,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})


async def read_events(proc: asyncio.subprocess.Process, events: list[dict]) -> None:
    """Append each log line of ``proc`` to ``events``: its JSON object, or the raw text as ``event``."""
    assert proc.stderr is not None
    async for line in proc.stderr:
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"event": line.decode(errors="replace").rstrip()})


def http_get(url: str, headers: dict[str, str] | None = None,
             context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def scrape(base_http_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics → {(sample name, labels): value}, parsed by prometheus_client's own parser."""
    status, _, body = http_get(f"{base_http_url}/metrics")
    assert status == 200, body
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, made with the openssl command line."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key
