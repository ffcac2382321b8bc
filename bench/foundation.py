"""End-to-end figures for the foundation: WER on jfk.flac, time from CloseStream to the last
final, and the server's RSS (idle with the model loaded, and after sessions).

Starts `stt-server` as a subprocess on 127.0.0.1 (port 0) with the default Whisper engine,
streams jfk.flac as 16 kHz PCM16 at real-time pace (or --speed), and prints the numbers.

    python bench/foundation.py [--runs 3] [--speed 1] [--concurrent 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import JFK_FLAC, JFK_TEXT, load_pcm16, wer  # noqa: E402

CHUNK = 3200  # 100 ms


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def start_server(folder: Path, extra: str = "") -> tuple[asyncio.subprocess.Process, str, str]:
    """`stt-server` on port 0 with ``extra`` YAML appended to a minimal config; its log is
    drained in the background once it listens (a full pipe would block the server)."""
    (folder / "config.yaml").write_text("server:\n  port: 0\nlogging:\n  format: json\n" + extra)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stt_server.cli", "--config", str(folder / "config.yaml"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout and proc.stderr
    banner = (await proc.stdout.read(600)).decode()
    token = banner.split("--token ", 1)[1].split()[0]
    while True:
        line = await proc.stderr.readline()
        if not line:
            raise RuntimeError("server exited")
        event = json.loads(line)
        if event.get("event") == "listening":
            asyncio.get_running_loop().create_task(_drain_pipe(proc.stderr))
            return proc, event["url"], token


async def _drain_pipe(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def one_session(url: str, token: str, pcm: bytes, speed: float) -> dict[str, float]:
    finals: list[str] = []
    last_final_at = 0.0
    first_interim_at = None
    async with websockets.connect(f"{url}/v1/listen", additional_headers={"Authorization": f"Token {token}"}) as ws:
        async def read() -> None:
            nonlocal last_final_at, first_interim_at
            async for raw in ws:
                message = json.loads(raw)
                if message.get("type") != "Results":
                    continue
                if message["is_final"]:
                    finals.append(message["channel"]["alternatives"][0]["transcript"])
                    last_final_at = time.perf_counter()
                elif first_interim_at is None:
                    first_interim_at = time.perf_counter()

        reader = asyncio.create_task(read())
        started = time.perf_counter()
        for index in range(0, len(pcm), CHUNK):
            await ws.send(pcm[index:index + CHUNK])
            if speed > 0:
                target = started + (index + CHUNK) / 32000 / speed
                await asyncio.sleep(max(0.0, target - time.perf_counter()))
        closed_at = time.perf_counter()
        await ws.send(json.dumps({"type": "CloseStream"}))
        await reader
    return {"wer": wer(JFK_TEXT, " ".join(finals)),
            "close_to_last_final_s": max(0.0, last_final_at - closed_at),
            "first_interim_s": (first_interim_at - started) if first_interim_at else float("nan")}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--speed", type=float, default=1.0, help="multiple of real time; 0 = no pacing")
    parser.add_argument("--concurrent", type=int, default=1, help="sessions at once per run")
    args = parser.parse_args()
    pcm = load_pcm16(JFK_FLAC)
    with tempfile.TemporaryDirectory() as folder:
        proc, url, token = await start_server(Path(folder))
        try:
            await asyncio.sleep(1.0)
            idle = rss_mib(proc.pid)
            runs = []
            for _ in range(args.runs):
                runs += await asyncio.gather(*(one_session(url, token, pcm, args.speed)
                                               for _ in range(args.concurrent)))
            after = rss_mib(proc.pid)
        finally:
            proc.terminate()
            await proc.wait()
    print(f"sessions: {len(runs)} ({args.runs} runs x {args.concurrent} concurrent), speed {args.speed}x real time")
    for key in ("wer", "close_to_last_final_s", "first_interim_s"):
        values = [r[key] for r in runs]
        print(f"{key:24} median {statistics.median(values):.3f}  min {min(values):.3f}  max {max(values):.3f}")
    print(f"server RSS idle with model loaded: {idle:.0f} MiB; after sessions: {after:.0f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
