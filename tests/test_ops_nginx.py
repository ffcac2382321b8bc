"""Real nginx (the Debian package) on loopback in front of a live server, running the map and
location blocks of deploy/nginx/stt_server.conf: jfk is transcribed through it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ops_support import free_port, http_get
from support import (
    JFK_FLAC,
    JFK_TEXT,
    REPO,
    chunked,
    load_pcm16,
    stream_audio,
    wait_until,
    wer,
)

DEPLOY_CONF = REPO / "deploy" / "nginx" / "stt_server.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def deployment_blocks() -> tuple[str, str]:
    """The deployment file's ``map`` block and its ``location`` blocks (TLS and names stay out)."""
    text = DEPLOY_CONF.read_text()
    mapping = re.search(r"^map .*?^\}", text, re.S | re.M)
    locations = re.findall(r"^    location .*?^    \}", text, re.S | re.M)
    assert mapping and len(locations) == 2, "deploy/nginx/stt_server.conf lost its map or location blocks"
    return mapping.group(0), "\n".join(locations)


def loopback_conf(prefix: Path, listen: int, upstream: int) -> str:
    mapping, locations = deployment_blocks()
    temp = "\n".join(f"    {kind}_temp_path {prefix / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
daemon off;
master_process off;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix / 'access.log'};
{temp}
    {mapping}
    upstream stt_server {{ server 127.0.0.1:{upstream}; }}
    server {{
        listen 127.0.0.1:{listen};
{locations}
    }}
}}
"""


@pytest.fixture
def nginx(tmp_path: Path):
    def start(upstream: int) -> int:
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(loopback_conf(tmp_path, port, upstream))
        check = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        procs.append(subprocess.Popen([NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        return port

    procs: list[subprocess.Popen] = []
    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


async def test_transcribe_through_nginx(make_server, nginx) -> None:
    live = make_server()
    port = nginx(live.port)

    def healthz() -> bool:
        try:
            return http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        except OSError:
            return False

    await wait_until(healthz, timeout=20, what="nginx to answer")
    assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
    assert http_get(f"http://127.0.0.1:{port}/metrics")[0] == 403  # closed at the proxy
    url = live.url(interim_results="false").replace(f":{live.port}/", f":{port}/", 1)
    transcript = await stream_audio(url, chunked(load_pcm16(JFK_FLAC), 3200), delay=0.005)
    assert transcript.close_code == 1000
    assert wer(JFK_TEXT, transcript.text) <= 0.15, transcript.text
