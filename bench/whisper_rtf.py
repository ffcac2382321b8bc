"""Measure the whisper provider on jfk.flac: WER, time from close() to the last final, RSS,
and interims at real-time pace.

    python bench/whisper_rtf.py [--pace 1.0] [--interim] [--endpointing 800] [--streams 1]

``--pace 0`` feeds as fast as possible; 1.0 is real time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support import JFK_FLAC, JFK_TEXT, load_pcm16, wer

from stt_server.audio_format import pcm16_mono
from stt_server.providers.whisper import WhisperOptions, WhisperProvider
from stt_server.session import Endpoint, SessionParams

CHUNK = 3200  # 100 ms of 16 kHz PCM16


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_stream(provider: WhisperProvider, pcm: bytes, args: argparse.Namespace) -> dict:
    session = SessionParams(endpoint=Endpoint.NATIVE, provider="whisper", language="en-US",
                            audio=pcm16_mono(16_000), interim_results=args.interim, punctuate=True,
                            words=True, endpointing_ms=args.endpointing)
    stream = provider.open_stream(session, pcm16_mono(16_000))
    results = []
    first_final_at = None

    async def collect() -> None:
        nonlocal first_final_at
        async for result in stream.results():
            results.append((time.perf_counter(), result))
            if result.is_final and first_final_at is None:
                first_final_at = time.perf_counter()

    collector = asyncio.create_task(collect())
    began = time.perf_counter()
    for i in range(0, len(pcm), CHUNK):
        await stream.send_audio(pcm[i:i + CHUNK])
        if args.pace:
            due = began + (i + CHUNK) / 32_000 / args.pace
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
    sent = time.perf_counter()
    await stream.close()
    closed = time.perf_counter()
    await collector
    finals = [r for _, r in results if r.is_final]
    text = " ".join(r.text for r in finals)
    return {
        "wer": wer(JFK_TEXT, text),
        "text": text,
        "finals": len(finals),
        "interims": sum(1 for _, r in results if not r.is_final),
        "send_s": sent - began,
        "close_to_last_final_s": (max((t for t, r in results if r.is_final), default=sent) - sent),
        "close_returned_s": closed - sent,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pace", type=float, default=0.0, help="x real time; 0 = as fast as possible")
    parser.add_argument("--interim", action="store_true")
    parser.add_argument("--endpointing", type=int, default=800)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--beam", type=int, default=5)
    args = parser.parse_args()

    pcm = load_pcm16(JFK_FLAC)
    before = rss_mib()
    provider = WhisperProvider(WhisperOptions(workers=args.workers, beam_size=args.beam))
    t = time.perf_counter()
    await provider.start()
    print(f"start (load + warm-up): {time.perf_counter() - t:.2f} s; RSS {before:.0f} -> {rss_mib():.0f} MiB")
    print(f"provider: {dict(provider.describe())}")
    t = time.perf_counter()
    reports = await asyncio.gather(*(one_stream(provider, pcm, args) for _ in range(args.streams)))
    wall = time.perf_counter() - t
    audio_s = len(pcm) / 32_000
    for report in reports:
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in report.items()})
    print(f"{args.streams} stream(s) x {audio_s:.1f} s audio in {wall:.2f} s wall: "
          f"RTF {wall / (audio_s * args.streams):.3f}; RSS after {rss_mib():.0f} MiB")
    await provider.stop()


if __name__ == "__main__":
    asyncio.run(main())
