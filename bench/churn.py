"""Connect/disconnect churn (issue 10) against a real `stt-server`: thousands of short sessions,
half closed cleanly (close frame), half dropped with a TCP reset (SO_LINGER 0, then abort), and
the server's file descriptors, threads and RSS before and after. A leak shows as growth.

    python bench/churn.py [--null 5000] [--whisper 300] [--concurrency 16]

Each session sends some audio first (speech, on Whisper) so that an engine stream is open
when it goes. A warm-up round runs before the "before" figures, so that one-off allocations
(imports, the model's first decode, thread pools) are not counted as growth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_process import TOKEN, ServerProcess, start_server  # noqa: E402
from support import JFK_FLAC, load_pcm16  # noqa: E402

CONFIG = {"providers": {"null": {"enabled": True, "passthrough": False},
                        "whisper": {"enabled": True, "workers": 1, "cpu_threads": 1}},
          # No session limit: a session whose client is gone still transcribes the audio it
          # received, so on Whisper closed sessions pile up for a while; none may be refused.
          "limits": {"max_sessions": 0}}


async def one_session(url: str, provider: str, audio: bytes, reset: bool, stats: Counter[str]) -> None:
    try:
        ws = await websockets.connect(f"{url}/v1/listen?provider={provider}&token={TOKEN}", open_timeout=60)
    except websockets.InvalidStatus as exc:
        stats[f"refused:{exc.response.status_code}"] += 1
        return
    except (OSError, asyncio.TimeoutError) as exc:
        stats[f"refused:{type(exc).__name__}"] += 1
        return
    try:
        json.loads(await asyncio.wait_for(ws.recv(), 30))  # Metadata
        for index in range(0, len(audio), 3200):
            await ws.send(audio[index:index + 3200])
    except websockets.ConnectionClosed:
        stats["closed_early"] += 1
    if reset:
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.transport.abort()  # RST, no close frame
        stats["reset"] += 1
    else:
        await ws.close()
        stats["clean"] += 1


async def churn(server: ServerProcess, provider: str, count: int, audio: bytes, concurrency: int) -> Counter[str]:
    stats: Counter[str] = Counter()
    slots = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with slots:
            await one_session(server.url, provider, audio, index % 2 == 1, stats)

    await asyncio.gather(*(one(i) for i in range(count)))
    return stats


async def settle(server: ServerProcess, seconds: float, timeout: float = 600) -> dict[str, float]:
    """Figures once every session opened is closed (each has a "session closed" log line: its
    audio transcribed, its engine stream gone), and ``seconds`` more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = server.log_lines()
        opened = sum('"session opened"' in line for line in lines)
        if opened == sum('"session closed"' in line for line in lines):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(seconds)
    return server.figures()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--null", type=int, default=5000)
    parser.add_argument("--whisper", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2,
                        help="churn rounds per engine: a leak grows every round, allocator high water once")
    args = parser.parse_args()
    speech = load_pcm16(JFK_FLAC)[16000: 16000 + 32000]  # 1 s of speech: a Whisper stream with work to do
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        server = await start_server(Path(folder), CONFIG)
        try:
            for provider, count, audio in (("null", args.null, bytes(3200)), ("whisper", args.whisper, speech)):
                if not count:
                    continue
                await churn(server, provider, min(100, count), audio, args.concurrency)  # warm-up
                before = await settle(server, 3)
                for round_number in range(1, args.rounds + 1):
                    began = time.perf_counter()
                    stats = await churn(server, provider, count, audio, args.concurrency)
                    elapsed = time.perf_counter() - began
                    after = await settle(server, 5)
                    rows.append((f"{provider} round {round_number}", count, elapsed, stats, before, after))
        finally:
            tracebacks, errors = server.tracebacks(), server.error_lines()
            await server.stop()
    ok = tracebacks == 0
    for provider, count, elapsed, stats, before, after in rows:
        print(f"{provider}: {count} sessions in {elapsed:.1f} s ({count / elapsed:.0f}/s), "
              + ", ".join(f"{k}={v}" for k, v in sorted(stats.items())))
        growth = {key: round(after[key] - before[key], 1) for key in before}
        print(f"  before round 1: {before}\n  after:  {after}\n  growth: {growth}")
        refused = sum(v for k, v in stats.items() if k.startswith("refused"))
        ok = ok and not refused and growth["fds"] <= 2 and growth["threads"] <= 1 and growth["rss_mib"] < 40
    print(f"server tracebacks in the log: {tracebacks}; error-level lines: {len(errors)}")
    for line in errors[:5]:
        print("  " + line[:300])
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    asyncio.run(main())
