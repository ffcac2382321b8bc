"""Does latency or memory grow over a long session? Streams minutes of speech (jfk.flac
repeated, with a second of silence between) through one Whisper session and reports, per
minute of audio, the lag of each final (received − the moment the end of its audio was sent)
and the server's RSS.

    python bench/long_session.py [--minutes 5] [--speed 2]

Starts `stt-server` as a subprocess on 127.0.0.1 (port 0), as bench/foundation.py does.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from foundation import rss_mib, start_server  # noqa: E402
from support import JFK_FLAC, JFK_TEXT, load_pcm16, wer  # noqa: E402

CHUNK = 3200  # 100 ms of 16 kHz PCM16
BYTES_PER_SECOND = 32_000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--speed", type=float, default=2.0, help="multiple of real time")
    args = parser.parse_args()
    clip = load_pcm16(JFK_FLAC) + bytes(BYTES_PER_SECOND)
    repeats = max(1, int(args.minutes * 60 * BYTES_PER_SECOND / len(clip)))
    audio = clip * repeats
    sent_audio_s: list[float] = []  # audio seconds sent so far, at each send
    sent_wall: list[float] = []
    lags: list[tuple[float, float]] = []  # (audio end of the final, lag in s)
    rss: list[tuple[float, float]] = []
    finals: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        proc, url, token = await start_server(Path(folder))
        try:
            async with websockets.connect(f"{url}/v1/listen?interim_results=false",
                                          additional_headers={"Authorization": f"Token {token}"}) as ws:
                async def read() -> None:
                    async for raw in ws:
                        message = json.loads(raw)
                        if message.get("type") != "Results" or not message["is_final"]:
                            continue
                        now = time.perf_counter()
                        end = message["start"] + message["duration"]
                        finals.append(message["channel"]["alternatives"][0]["transcript"])
                        index = bisect.bisect_left(sent_audio_s, end)
                        if index < len(sent_wall):
                            lags.append((end, now - sent_wall[index]))

                reader = asyncio.create_task(read())
                started = time.perf_counter()
                for offset in range(0, len(audio), CHUNK):
                    await ws.send(audio[offset:offset + CHUNK])
                    sent_audio_s.append((offset + CHUNK) / BYTES_PER_SECOND)
                    sent_wall.append(time.perf_counter())
                    if offset % (60 * BYTES_PER_SECOND) == 0:
                        rss.append((offset / BYTES_PER_SECOND, rss_mib(proc.pid)))
                    target = started + (offset + CHUNK) / BYTES_PER_SECOND / args.speed
                    await asyncio.sleep(max(0.0, target - time.perf_counter()))
                await ws.send(json.dumps({"type": "CloseStream"}))
                await reader
            rss.append((len(audio) / BYTES_PER_SECOND, rss_mib(proc.pid)))
        finally:
            proc.terminate()
            await proc.wait()
    total = len(audio) / BYTES_PER_SECOND
    print(f"{total / 60:.1f} min of audio ({repeats} x jfk + 1 s silence) at {args.speed}x real time; "
          f"{len(finals)} finals; WER {wer(' '.join([JFK_TEXT] * repeats), ' '.join(finals)):.3f}")
    print("minute  finals  lag p50 s  lag max s")
    for minute in range(int(total // 60) + 1):
        bucket = [lag for end, lag in lags if minute * 60 <= end < (minute + 1) * 60]
        if bucket:
            print(f"{minute:6d}  {len(bucket):6d}  {statistics.median(bucket):9.2f}  {max(bucket):9.2f}")
    print("server RSS MiB at audio minute: " + ", ".join(f"{t / 60:.0f}: {m:.0f}" for t, m in rss))


if __name__ == "__main__":
    asyncio.run(main())
