"""/healthz latency while the token file is reloaded (issue 10: a 53 MB file once froze every
session and health check for 66-94 s). A real `stt-server` (null engine); the token file is
replaced by ~50 MB of garbage lines (a good line first) and a handshake triggers the reload;
/healthz is timed every 20 ms meanwhile, from this (separate) process.

    python bench/token_reload.py [--megabytes 50]

Two runs: with the default tokens.max_file_bytes (8 MiB: the file is refused unread) and with
the cap raised above the file's size (the file is read and parsed in a worker thread).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_process import TOKEN, start_server  # noqa: E402


async def healthz(port: int) -> float:
    began = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    writer.close()
    return time.perf_counter() - began


async def run(megabytes: int, cap: int | None, valid: bool = False) -> None:
    with tempfile.TemporaryDirectory() as folder:
        config = {"server": {"default_provider": "null"},
                  "providers": {"whisper": {"enabled": False}, "null": {"enabled": True}}}
        server = await start_server(Path(folder), {**config, "tokens": {"max_file_bytes": cap}} if cap else config)
        port = int(server.url.rsplit(":", 1)[1])
        try:
            rng = random.Random(1)
            path = Path(folder) / "tokens.txt"
            tmp = path.with_name("tokens.new")
            if valid:  # distinct hashed entries, as `stt-server tokens add` writes them
                count = megabytes * 1024 * 1024 // 86
                body = "".join(f"sha256:{rng.randbytes(32).hex()} kiosk-{i:07d}\n" for i in range(count)).encode()
            else:
                line = f"{rng.randbytes(20).hex()} bad name! x\n".encode()
                body = line * (megabytes * 1024 * 1024 // len(line))
            tmp.write_bytes(f"{TOKEN} bench\n".encode() + body)
            os.replace(tmp, path)
            size = path.stat().st_size
            baseline = [await healthz(port) for _ in range(20)]
            began = time.perf_counter()

            async def handshake() -> None:
                async with websockets.connect(f"{server.url}/v1/listen?token={TOKEN}", open_timeout=120):
                    pass

            trigger = asyncio.create_task(handshake())
            latencies = []
            while True:
                latencies.append(await healthz(port))
                log_text = server.log_path.read_text()
                if "token file not used" in log_text or log_text.count("token file loaded") >= 2:
                    break
                await asyncio.sleep(0.02)
            reload_s = time.perf_counter() - began
            await trigger
            latencies += [await healthz(port) for _ in range(5)]
            ordered = sorted(latencies)
            limit = cap or 8 * 2**20
            label = f"cap {limit // 2**20} MiB ({'refused unread' if size > limit else 'parsed'})"
            kind = "valid" if valid else "garbage"
            print(f"{size / 2**20:.0f} MiB {kind} token file, {label}: reload noticed after {reload_s:.2f} s; "
                  f"/healthz during it: n={len(ordered)} p50={statistics.median(ordered) * 1000:.1f} ms "
                  f"p99={ordered[int(0.99 * (len(ordered) - 1))] * 1000:.1f} ms max={ordered[-1] * 1000:.1f} ms "
                  f"(idle p50 {statistics.median(baseline) * 1000:.1f} ms); "
                  f"log {server.log_path.stat().st_size} bytes, tracebacks {server.tracebacks()}")
        finally:
            await server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=50)
    args = parser.parse_args()
    await run(args.megabytes, None)
    await run(args.megabytes, (args.megabytes + 10) * 2**20)
    await run(args.megabytes, (args.megabytes + 10) * 2**20, valid=True)


if __name__ == "__main__":
    asyncio.run(main())
