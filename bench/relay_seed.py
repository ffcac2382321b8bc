"""Relay benchmark on the seed endpoint (/ws/transcription/) with the null provider.

    python bench/relay_seed.py                       # the whole suite, server started here
    python bench/relay_seed.py --closed 10 --duration 10
    python bench/relay_seed.py --open 1000 --rate 4
    python bench/relay_seed.py --url ws://127.0.0.1:8765 --token T --closed 10
    python bench/relay_seed.py --workers 2 --closed 50 --open 1000   # server.workers: 2

Each message is the seed client's ``{"action": "transcribe", "request_id": N, "voice_stream":
<base64 of 4096 random bytes>}``; the server answers each with one reply envelope.

* Closed loop: each connection sends, waits for the reply, sends again.
* Open loop: each connection sends ``--rate`` messages/s on a fixed schedule (connections
  staggered); latency is measured from the *scheduled* send time, so a server (or client)
  that falls behind shows it instead of hiding it (no coordinated omission).

Without ``--url`` the server runs in a subprocess (null provider, passthrough, a token file
in a temporary folder), so the load generator (this process) and the server do not share a
Python interpreter; its RSS and CPU are read from /proc (with ``--workers N``: summed over the
supervisor and its workers). Loopback only; every loop is bounded by
``--duration``. At the end it checks that past ``limits.max_sessions`` new sessions get a
503 before the upgrade.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets
from websockets.exceptions import InvalidStatus

REPO = Path(__file__).resolve().parent.parent
PATH = "/ws/transcription/"
PAYLOAD_BYTES = 4096
PAYLOADS = 64  # distinct random payloads, reused round-robin (the server never decodes them)
CONNECT_CONCURRENCY = 64


# --------------------------------------------------------------------------- the server


@dataclass
class Server:
    url: str
    token: str
    pid: int | None = None
    process: subprocess.Popen[bytes] | None = None

    def rss_mib(self) -> float | None:
        return _summed(_status_field(pid, "VmRSS") for pid in _tree(self.pid))

    def hwm_mib(self) -> float | None:
        return _summed(_status_field(pid, "VmHWM") for pid in _tree(self.pid))

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process (and its workers) so far."""
        return _summed(_cpu_seconds(pid) for pid in _tree(self.pid))


def _tree(pid: int | None) -> list[int]:
    """The process and its descendants (a supervisor's workers)."""
    if pid is None:
        return []
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pids
    for child in children:
        pids += _tree(int(child))
    return pids


def _summed(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_field(pid: int | None, name: str) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def started_server(max_sessions: int, workers: int = 1) -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix="relay-seed-") as folder:
        token = secrets.token_urlsafe(24)
        (Path(folder) / "tokens.txt").write_text(f"{token} bench\n")
        port = _free_port()
        config = {
            "server": {"host": "127.0.0.1", "port": port, "default_provider": "null", "workers": workers},
            "limits": {"max_sessions": max_sessions},
            "tokens": {"file": "tokens.txt", "create_if_missing": False},
            "logging": {"level": "warning"},
            "providers": {"whisper": {"enabled": False}, "null": {"enabled": True, "passthrough": True}},
        }
        (Path(folder) / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        command = [sys.executable, "-c", _SERVER_BOOT, str(Path(folder) / "config.yaml"), str(max_sessions)]
        process = subprocess.Popen(command, cwd=folder, env=env)
        try:
            _wait_healthy(port, process)
            if workers > 1:
                _wait_workers(process.pid, workers)
            yield Server(f"ws://127.0.0.1:{port}", token, process.pid, process)
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


# The server as `stt-server --config FILE`, with a higher file-descriptor limit: 1000 sessions
# need more than the usual soft limit of 1024 descriptors.
_SERVER_BOOT = """
import resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
from stt_server.cli import main
sys.exit(main(["--config", sys.argv[1], "serve"]))
"""


def _wait_workers(pid: int, workers: int) -> None:
    """Every worker is up once each has its listening socket (it answered /healthz for one)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listening = sum(1 for child in _tree(pid)[1:] if _listens(child))
        if listening >= workers:
            return
        time.sleep(0.2)
    raise SystemExit(f"{workers} workers did not start in 60 s")


def _listens(pid: int) -> bool:
    """Whether the process holds a TCP socket in LISTEN state (from /proc/net/tcp inodes)."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    listening = {f"socket:[{line.split()[9]}]" for line in table if line.split()[3] == "0A"}
    return bool(inodes & listening)


def _wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not become healthy in 60 s")


# --------------------------------------------------------------------------- the load


@dataclass
class Run:
    name: str
    connections: int
    duration: float
    latencies: list[float] = field(default_factory=list)  # seconds
    sent: int = 0
    errors: int = 0  # error replies, refused or dropped connections, replies never received
    error_kinds: dict[str, int] = field(default_factory=dict)
    rss_loaded_mib: float | None = None
    server_cpu: float | None = None  # CPU seconds per second (1.0 = one core busy)
    client_cpu: float | None = None

    def error(self, kind: str, count: int = 1) -> None:
        self.errors += count
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + count

    def row(self) -> dict[str, Any]:
        lat = np.array(self.latencies) * 1000 if self.latencies else np.array([np.nan])
        return {
            "run": self.name, "conns": self.connections, "sent": self.sent, "replies": len(self.latencies),
            "msg_s": len(self.latencies) / self.duration,
            "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
            "p99": float(np.percentile(lat, 99)), "max": float(np.max(lat)),
            "errors": self.errors, "error_kinds": dict(self.error_kinds), "rss_loaded_mib": self.rss_loaded_mib,
            "server_cpu": self.server_cpu, "client_cpu": self.client_cpu,
            # Server CPU per reply: what the relay costs, whatever else the machine is running.
            "server_us_per_msg": (self.server_cpu * self.duration / len(self.latencies) * 1e6
                                  if self.server_cpu is not None and self.latencies else None),
        }


def payloads() -> list[str]:
    return [base64.b64encode(os.urandom(PAYLOAD_BYTES)).decode() for _ in range(PAYLOADS)]


def message(request_id: int, voice_stream: str) -> str:
    return f'{{"action": "transcribe", "request_id": {request_id}, "voice_stream": "{voice_stream}"}}'


async def connect_all(url: str, count: int, compression: bool, run: Run) -> list[Any]:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> Any:
        async with gate:
            try:
                return await websockets.connect(url, compression="deflate" if compression else None,
                                                open_timeout=30, max_size=None, ping_interval=None)
            except (TimeoutError, OSError, InvalidStatus, websockets.WebSocketException) as exc:
                run.error(f"connect: {type(exc).__name__}")
                return None

    connections = await asyncio.gather(*(one() for _ in range(count)))
    return [c for c in connections if c is not None]


async def close_all(connections: list[Any]) -> None:
    await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)


async def closed_loop(url: str, connections: int, duration: float, warmup: float, compression: bool,
                      server: Server) -> Run:
    run = Run(f"closed {connections}", connections, duration)
    pool = payloads()
    sockets = await connect_all(url, connections, compression, run)
    start = time.perf_counter() + warmup
    stop = start + duration

    async def worker(index: int, ws: Any) -> None:
        request_id = index * 10_000_000
        try:
            while (now := time.perf_counter()) < stop:
                request_id += 1
                await ws.send(message(request_id, pool[request_id % PAYLOADS]))
                reply = json.loads(await ws.recv())
                done = time.perf_counter()
                if now >= start:
                    run.sent += 1
                    if reply.get("response_status") != 200 or reply.get("request_id") != request_id:
                        run.error(f"reply {reply.get('response_status')}")
                    else:
                        run.latencies.append(done - now)
        except websockets.ConnectionClosed:
            run.error("connection closed")

    sampler = asyncio.create_task(sample_rss(server, run, start, stop))
    await asyncio.gather(*(worker(i, ws) for i, ws in enumerate(sockets)))
    await sampler
    await close_all(sockets)
    return run


async def open_loop(url: str, connections: int, rate: float, duration: float, warmup: float, compression: bool,
                    server: Server) -> Run:
    run = Run(f"open {connections} x {rate:g}/s", connections, duration)
    pool = payloads()
    sockets = await connect_all(url, connections, compression, run)
    interval = 1.0 / rate
    t0 = time.perf_counter() + 0.5
    start = t0 + warmup
    stop = start + duration
    grace = 10.0  # replies still owed after the last send are errors if they take longer

    async def sender(index: int, ws: Any, scheduled: dict[int, float]) -> None:
        offset = interval * index / max(1, len(sockets))  # stagger connections over one interval
        k = 0
        try:
            while True:
                at = t0 + offset + k * interval
                if at >= stop:
                    return
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                request_id = index * 10_000_000 + k
                scheduled[request_id] = at
                await ws.send(message(request_id, pool[k % PAYLOADS]))
                k += 1
        except websockets.ConnectionClosed:
            run.error("connection closed")

    async def receiver(ws: Any, scheduled: dict[int, float], sending: asyncio.Task[None]) -> None:
        try:
            while not (sending.done() and not scheduled):
                raw = await asyncio.wait_for(ws.recv(), timeout=max(0.1, stop + grace - time.perf_counter()))
                done = time.perf_counter()
                reply = json.loads(raw)
                at = scheduled.pop(reply.get("request_id"), None)
                if at is None or at < start:
                    continue
                run.sent += 1
                if reply.get("response_status") != 200:
                    run.error(f"reply {reply.get('response_status')}")
                else:
                    run.latencies.append(done - at)
        except (TimeoutError, websockets.ConnectionClosed):
            lost = sum(1 for at in scheduled.values() if at >= start)
            run.sent += lost
            run.error("no reply", lost)

    async def connection(index: int, ws: Any) -> None:
        scheduled: dict[int, float] = {}
        sending = asyncio.create_task(sender(index, ws, scheduled))
        await receiver(ws, scheduled, sending)
        await sending

    sampler = asyncio.create_task(sample_rss(server, run, start, stop))
    await asyncio.gather(*(connection(i, ws) for i, ws in enumerate(sockets)))
    await sampler
    await close_all(sockets)
    return run


async def sample_rss(server: Server, run: Run, start: float, until: float) -> None:
    """Peak server RSS while loaded, and both processes' CPU use over the measured window."""
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    server_cpu0, client_cpu0 = server.cpu_seconds(), _client_cpu()
    peak = 0.0
    while time.perf_counter() < until:
        rss = server.rss_mib()
        if rss is not None:
            peak = max(peak, rss)
        await asyncio.sleep(0.25)
    server_cpu1 = server.cpu_seconds()
    if server_cpu0 is not None and server_cpu1 is not None:
        run.server_cpu = (server_cpu1 - server_cpu0) / run.duration
    run.client_cpu = (_client_cpu() - client_cpu0) / run.duration
    run.rss_loaded_mib = peak or None


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def idle_rss(server: Server, connections: int, compression: bool) -> dict[str, Any]:
    """Server RSS with no session, then with ``connections`` idle sessions open."""
    await asyncio.sleep(1.0)
    before = server.rss_mib()
    run = Run("idle", connections, 1)
    sockets = await connect_all(server_url(server), connections, compression, run)
    await asyncio.sleep(2.0)
    after = server.rss_mib()
    await close_all(sockets)
    per = (after - before) * 1024 / max(1, len(sockets)) if before is not None and after is not None else None
    return {"rss_idle_mib": before, "idle_sessions": len(sockets), "rss_with_idle_sessions_mib": after,
            "kib_per_idle_session": per}


async def over_limit(server: Server, limit: int, compression: bool, extra: int = 20) -> dict[str, Any]:
    """Fill the server to its session limit, then count what happens to ``extra`` more."""
    run = Run("limit", limit, 1)
    held = await connect_all(server_url(server), limit, compression, run)
    statuses: dict[str, int] = {}
    for _ in range(extra):
        try:
            async with websockets.connect(server_url(server), open_timeout=10):
                statuses["accepted"] = statuses.get("accepted", 0) + 1
        except InvalidStatus as exc:
            key = str(exc.response.status_code)
            statuses[key] = statuses.get(key, 0) + 1
        except (TimeoutError, OSError, websockets.WebSocketException) as exc:
            statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
    rss = server.rss_mib()
    await close_all(held)
    return {"limit": limit, "held": len(held), "extra_attempts": extra, "outcomes": statuses, "rss_at_limit_mib": rss}


def server_url(server: Server) -> str:
    return f"{server.url}{PATH}?token={server.token}&stt_provider=null&language=en-US"


# --------------------------------------------------------------------------- reporting


def print_table(rows: list[dict[str, Any]]) -> None:
    print(TABLE_HEADER, flush=True)
    for r in rows:
        print(table_row(r), flush=True)


TABLE_HEADER = ("| run | conns | replies | msg/s | p50 ms | p95 ms | p99 ms | max ms | errors "
                "| server RSS peak MiB | server CPU | server CPU µs/msg | client CPU |\n"
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def table_row(r: dict[str, Any]) -> str:
    def fmt(value: float | None, pattern: str) -> str:
        return pattern.format(value) if value is not None else "-"

    errors = f"{r['errors']}" + (f" {r['error_kinds']}" if r["error_kinds"] else "")
    return (f"| {r['run']} | {r['conns']} | {r['replies']} | {r['msg_s']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} "
            f"| {r['p99']:.1f} | {r['max']:.1f} | {errors} | {fmt(r['rss_loaded_mib'], '{:.0f}')} "
            f"| {fmt(r['server_cpu'], '{:.0%}')} | {fmt(r['server_us_per_msg'], '{:.0f}')} "
            f"| {fmt(r['client_cpu'], '{:.0%}')} |")


async def suite(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    url = server_url(server)
    out: dict[str, Any] = {"rows": [], "loadavg_before": os.getloadavg()}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs",
          flush=True)
    out["idle"] = await idle_rss(server, args.idle_sessions, args.compression)
    print(f"idle: {json.dumps(out['idle'])}", flush=True)
    print(TABLE_HEADER, flush=True)
    for n in args.closed:
        run = await closed_loop(url, n, args.duration, args.warmup, args.compression, server)
        out["rows"].append(run.row())
        print(table_row(out["rows"][-1]), flush=True)
    for n in args.open:
        run = await open_loop(url, n, args.rate, args.duration, args.warmup, args.compression, server)
        out["rows"].append(run.row())
        print(table_row(out["rows"][-1]), flush=True)
    if args.check_limit and server.process is not None:
        out["over_limit"] = await over_limit(server, args.max_sessions, args.compression)
        print(f"over limit: {json.dumps(out['over_limit'])}", flush=True)
    out["rss_peak_mib"] = server.hwm_mib()
    out["loadavg_after"] = os.getloadavg()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already running server (ws://host:port); default: start one")
    parser.add_argument("--token", help="token for --url")
    parser.add_argument("--closed", type=int, nargs="*", help="closed-loop connection counts (default 1 10 50)")
    parser.add_argument("--open", type=int, nargs="*", help="open-loop connection counts (default 100 500 1000)")
    parser.add_argument("--rate", type=float, default=4.0, help="open loop: messages/s per connection")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    parser.add_argument("--idle-sessions", type=int, default=200, help="idle sessions for the RSS-per-session figure")
    parser.add_argument("--max-sessions", type=int, default=1000, help="limits.max_sessions of the started server")
    parser.add_argument("--workers", type=int, default=1, help="server.workers of the started server")
    parser.add_argument("--no-limit-check", dest="check_limit", action="store_false",
                        help="skip the over-the-limit check")
    parser.add_argument("--no-compression", dest="compression", action="store_false",
                        help="do not offer permessage-deflate (browsers always offer it)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.closed is None and args.open is None:
        args.closed, args.open = [1, 10, 50], [100, 500, 1000]
    args.closed, args.open = args.closed or [], args.open or []

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))

    if args.url:
        if not args.token:
            parser.error("--url needs --token")
        server = Server(args.url.rstrip("/"), args.token)
        results = asyncio.run(suite(args, server))
    else:
        with started_server(args.max_sessions, args.workers) as server:
            results = asyncio.run(suite(args, server))
    print(f"server RSS peak (VmHWM): {results.get('rss_peak_mib')} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
