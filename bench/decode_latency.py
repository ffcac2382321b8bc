"""Added latency of the audio decoders: a 250 ms chunk in, how long until its PCM comes out.

Usage: python bench/decode_latency.py [--repeat N]

The reference speech (jfk.flac, 11 s) is made into each client format and cut into 250 ms
byte shares (a MediaRecorder ``start(250)`` stream). Chunk k "arrives" at k × 250 ms of a
virtual clock, so the run needs no sleeping; decode() calls are timed for real. A chunk's
added latency runs from its arrival until the decoder has returned all the audio its bytes
hold completely (packets that straddle the chunk's end are not counted against it):

* ``call``: how long decode() took for a chunk (the thread hop, demuxing, decoding, resampling).
* ``added``: the latency above; equal to ``call`` when the chunk's audio comes out of the same
  call, 250 ms more for each later chunk a demuxer waits for (FLAC's parser looks ahead).
* ``held``: audio that had arrived but was not returned yet, right after each decode() call.
* ``cpu``: process CPU time (all threads) per second of audio decoded.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the test helpers make the sample files

from audio_files import CHUNK_SECONDS, Sample, audio_available, make_samples, seconds_available

from stt_server.audio import open_decoder
from stt_server.audio_format import pcm16_mono

TARGET = pcm16_mono(16_000)
BYTES_PER_SECOND = 32_000
# Output may stop short of a packet's end by the resampler's few samples of delay.
TOLERANCE_S = 0.005


async def run_once(sample: Sample) -> tuple[list[float], list[float], list[float], float]:
    """(call seconds, added latency, held-back audio seconds) per chunk, and CPU seconds."""
    points = audio_available(sample)
    chunks = sample.chunks(CHUNK_SECONDS)
    decoder = open_decoder(sample.client, TARGET)
    cpu_start = time.process_time()
    calls: list[float] = []
    finished_at: list[tuple[float, float]] = []  # (virtual time the output was complete, seconds out)
    expected: list[float] = []
    sent = decoded = 0
    for index, chunk in enumerate(chunks):
        arrival = index * CHUNK_SECONDS
        sent += len(chunk)
        expected.append(seconds_available(points, sent))
        started = time.perf_counter()
        decoded += len(await decoder.decode(chunk))
        took = time.perf_counter() - started
        calls.append(took)
        finished_at.append((arrival + took, decoded / BYTES_PER_SECOND))
    started = time.perf_counter()
    decoded += len(await decoder.finish())
    end = len(chunks) * CHUNK_SECONDS + time.perf_counter() - started
    finished_at.append((end, decoded / BYTES_PER_SECOND))
    decoder.close()
    cpu = time.process_time() - cpu_start
    # Audio a container never returns (Opus pre-skip trims a few ms) is not latency.
    shortfall = max(0.0, expected[-1] - decoded / BYTES_PER_SECOND)
    added = []
    for index, want in enumerate(expected):
        arrival = index * CHUNK_SECONDS
        done = next(at for at, out in finished_at[index:] if out >= want - shortfall - TOLERANCE_S)
        added.append(done - arrival)
    held = [max(0.0, want - shortfall - out) for want, (_, out) in zip(expected, finished_at, strict=False)]
    return calls, added, held, cpu


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered) * 1000:7.1f} {p95 * 1000:7.1f} {ordered[-1] * 1000:7.1f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="passes over the file per format")
    args = parser.parse_args()
    samples = make_samples()
    print(f"{'format':<28} {'call ms p50 p95 max':>23}   {'added ms p50 p95 max':>23}   "
          f"{'held ms p50 p95 max':>23}   cpu ms/s of audio")
    for name in ("webm", "ogg", "wav", "flac", "mp3", "mulaw", "linear16"):
        sample = samples[name]
        calls: list[float] = []
        added: list[float] = []
        held: list[float] = []
        cpu = 0.0
        for _ in range(args.repeat):
            c, a, h, u = await run_once(sample)
            calls += c
            added += a
            held += h
            cpu += u
        print(f"{describe(sample):<28} {percentiles(calls)}   {percentiles(added)}   {percentiles(held)}   "
              f"{cpu / args.repeat / sample.seconds * 1000:6.1f}")


def describe(sample: Sample) -> str:
    if sample.client.is_raw:
        return f"{sample.name} {sample.client.sample_rate} Hz x{sample.client.channels}"
    return sample.name


if __name__ == "__main__":
    asyncio.run(main())
