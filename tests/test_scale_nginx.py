"""Three instances behind a real nginx (Debian's) running deploy/nginx/stt_server.conf's
upstream and location blocks: what proxy_next_upstream really retries for a websocket
upgrade, and a rolling restart (SIGTERM one instance mid-stream) that loses no final and
no new session."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from pathlib import Path

import accuracy_set
import pytest
import websockets
from accuracy_paths import stream_until_closed
from conftest import deep_merge
from ops_support import free_port, http_get
from scale_support import NGINX, NULL_INSTANCE, Instance, connect_following_retry_after, refusal_of
from support import REPO, wait_until

pytest_plugins = ("scale_fixtures",)
pytestmark = pytest.mark.slow

DEPLOY_CONF = REPO / "deploy" / "nginx" / "stt_server.conf"


def cluster_conf(prefix: Path, listen: int, ports: list[int], *, retry_503: bool = True) -> str:
    """The deployment file's map, upstream and location blocks, on loopback, with the test's ports."""
    text = DEPLOY_CONF.read_text()
    mapping = re.search(r"^map .*?^\}", text, re.S | re.M)
    upstream = re.search(r"^upstream stt_server \{.*?^\}", text, re.S | re.M)
    locations = re.findall(r"^    location .*?^    \}", text, re.S | re.M)
    assert mapping and upstream and len(locations) == 2, "deploy/nginx/stt_server.conf lost a block"
    servers = re.findall(r"^    server 127\.0\.0\.1:\d+(.*);$", upstream.group(0), re.M)
    assert len(servers) == len(ports), "the deployment upstream lists three instances"
    block = re.sub(r"^    server 127\.0\.0\.1:\d+.*$\n", "", upstream.group(0), flags=re.M).rstrip("}")
    block += "".join(f"    server 127.0.0.1:{port}{params};\n" for port, params in zip(ports, servers)) + "}"
    location = "\n".join(locations)
    if not retry_503:
        location = location.replace("proxy_next_upstream error timeout http_503;", "proxy_next_upstream error timeout;")
    temp = "\n".join(f"    {kind}_temp_path {prefix / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
daemon off;
master_process off;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} info;
events {{ worker_connections 256; }}
http {{
    log_format upstreams '$status $request_uri upstreams=$upstream_addr statuses=$upstream_status';
    access_log {prefix / 'access.log'} upstreams;
{temp}
    {mapping.group(0)}
    {block}
    server {{
        listen 127.0.0.1:{listen};
{location}
    }}
}}
"""


@pytest.fixture
def nginx(tmp_path: Path):
    procs: list[subprocess.Popen] = []

    async def start(ports: list[int], **variant: bool) -> int:
        prefix = tmp_path / f"nginx-{len(procs)}"
        prefix.mkdir()
        listen = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(cluster_conf(prefix, listen, ports, **variant))
        args = [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
        check = subprocess.run([*args[:1], "-t", *args[1:]], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def answers() -> bool:
            try:
                return http_get(f"http://127.0.0.1:{listen}/healthz")[0] == 200
            except OSError:
                return False

        await wait_until(answers, timeout=20, what="nginx to answer")
        return listen

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def through(instance: Instance, port: int, token: str = "alice", **params: str) -> str:
    return instance.url(token, port=port, **params)


async def test_nginx_retries_a_503_on_the_next_instance_only_with_http_503(instances, nginx) -> None:
    (full,) = await instances(deep_merge(NULL_INSTANCE, {"limits": {"max_sessions": 1}}))
    b, c = await instances(NULL_INSTANCE, count=2)
    blocker = await websockets.connect(full.url("alice"))  # `full` now answers every upgrade with 503
    proxy = await nginx([full.port, b.port, c.port])
    held = []
    for _ in range(6):
        ws, refusals = await connect_following_retry_after(through(full, proxy), attempts=1)
        assert refusals == 0
        held.append(ws)
    # nginx did send handshakes to the full instance, got its 503 and moved them on.
    await wait_until(lambda: bool(full.named("handshake refused")), timeout=10, what="a handshake tried on `full`")
    await wait_until(lambda: len(b.named("session opened")) + len(c.named("session opened")) == 6, timeout=10,
                     what="6 sessions on the two instances with room")
    for ws in held:
        await ws.close()

    # Without http_503 in proxy_next_upstream the 503 (with its body) reaches the client.
    plain = await nginx([full.port, b.port, c.port], retry_503=False)
    outcomes = [await refusal_of(through(full, plain)) for _ in range(4)]
    assert (503, "server_session_limit") in outcomes, outcomes
    await blocker.close()


async def test_rolling_restart_loses_no_final_and_no_new_session(instances, nginx, tmp_path: Path) -> None:
    """SIGTERM one of three instances while three clients stream A Tale of Two Cities through
    nginx at 1x: the drained instance's clients get every phrase they sent before its notice,
    the others all of it; new sessions during and after the drain all land elsewhere."""
    whisper = {"server": {"host": "127.0.0.1", "port": 0, "drain_timeout_seconds": 60},
               "logging": {"format": "json"}, "limits": {"max_sessions": 20, "ping_interval_seconds": 120},
               "providers": {"whisper": {"workers": 1}}}
    group = await instances(whisper, count=3)
    proxy = await nginx([instance.port for instance in group])
    tale = accuracy_set.phrased("tale", tmp_path)
    streams = [asyncio.create_task(stream_until_closed(through(group[0], proxy, interim_results="false"), tale,
                                                       realtime=True, close_stream=True)) for _ in range(3)]
    await wait_until(lambda: sum(len(i.named("session opened")) for i in group) == 3, timeout=30, what="3 sessions")
    victim = next(i for i in group if i.named("session opened"))
    victim_sessions = {e["session_id"] for e in victim.named("session opened")}
    await asyncio.sleep(7.0)  # mid-stream: about a third of the reading sent

    mark = victim.signal(signal.SIGTERM)
    await victim.wait_for(lambda: bool(victim.named("draining", mark)), "draining")
    # New sessions while the victim drains: nginx moves the victim's 503s on; none fails.
    during = [await connect_following_retry_after(through(victim, proxy)) for _ in range(3)]
    for ws, _ in during:
        await ws.close()

    read = {}
    for result in await asyncio.gather(*streams):
        drained = result.session_id in victim_sessions
        assert result.close_code == (1001 if drained else 1000), result.close_code
        assert not [m for m in result.messages if m.get("type") in ("Draining", "Error")]
        if not drained:
            assert accuracy_set.wer(tale.reference, result.text) <= tale.max_wer, result.text
            continue
        if not read:
            await victim.wait_for(lambda: len(victim.named("session closed", mark)) == len(victim_sessions),
                                  "the drained sessions' summaries")
            read = {e["session_id"]: e["bytes_in"] for e in victim.named("session closed", mark)}
        # Every phrase the client sent before the drain's ping reached it (through nginx) is in its finals.
        assert result.sent_at_ping is not None and result.sent_at_ping <= read[result.session_id]
        assert result.sent_at_ping < len(tale.pcm16)
        errors, needed, invented = tale.errors(result.text, result.sent_at_ping, read[result.session_id])
        assert needed > 0 and errors <= tale.max_wer * needed and invented <= 2, (errors, needed, result.text)
    assert await victim.wait(60) == 0
    assert victim.named("drained", mark)[0]["cut_sessions"] == 0

    # After it exited: connections to it are refused and nginx tries the next instance.
    after = [await connect_following_retry_after(through(victim, proxy)) for _ in range(3)]
    for ws, _ in after:
        await ws.close()
    assert all(refusals == 0 for _, refusals in during + after)
    assert not victim.named("session opened", mark), "a new session landed on the draining instance"
    others = [i for i in group if i is not victim]
    assert sum(len(i.named("session opened")) for i in others) == 3 - len(victim_sessions) + 6
