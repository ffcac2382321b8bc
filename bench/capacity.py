"""Capacity of one server on this machine: many real-time streams, a fast sender beside
real-time clients, and connect/close churn. Prints numbers; asserts nothing.

Starts `stt-server` as a subprocess on 127.0.0.1 (port 0) with the default config (Whisper
tiny.en) and talks to it over real websockets with 16 kHz PCM16 binary frames.

Final latency = arrival of a final minus the moment the last audio of its span was sent
(the span's end, in stream seconds, mapped to the send time of the chunk that held it).

    python bench/capacity.py levels [--levels 1,4,8,16,24,32] [--repeats 4] [--recording jfk|reading [--desync]]
    python bench/capacity.py fast-sender [--minutes 20] [--real-time 3]
    python bench/capacity.py churn [--sessions 500] [--at-once 20]

Options before the scenario: ``--config YAML`` (merged into the server's config),
``--interim-results`` (clients ask for interims too; only finals are timed).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from accuracy_set import wer as accuracy_set_wer  # noqa: E402  (numbers as digits, as Whisper writes them)
from support import JFK_FLAC, JFK_TEXT, load_pcm16, wer  # noqa: E402

import foundation  # noqa: E402  (bench/ is on sys.path: python bench/capacity.py)
from foundation import rss_mib  # noqa: E402

RATE = 16_000
CHUNK = 8_000  # 0.25 s
GAP = bytes(2 * RATE)  # 1 s of silence between repetitions of the recording


async def start_server(folder: Path, extra: str = "") -> tuple[asyncio.subprocess.Process, str, str]:
    return await foundation.start_server(folder, "limits:\n  max_sessions: 200\n" + extra)


@dataclass
class Session:
    finals: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    close_code: int | None = None
    refused: int | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(f["channel"]["alternatives"][0]["transcript"] for f in self.finals)

    @property
    def transcribed_through(self) -> float:
        return max((f["start"] + f["duration"] for f in self.finals), default=0.0)


# What clients ask for: "false", or "true" with --interim-results (only finals are timed either way).
INTERIM_RESULTS = "false"


async def stream(url: str, token: str, pcm: bytes, *, speed: float, delay: float = 0.0) -> Session:
    """One client: send ``pcm`` (speed 0 = as fast as possible), CloseStream, read to the close."""
    await asyncio.sleep(delay)
    session = Session()
    ends: list[float] = []  # stream seconds at the end of each chunk sent
    sent_at: list[float] = []
    try:
        ws = await websockets.connect(f"{url}/v1/listen?interim_results={INTERIM_RESULTS}", max_size=None,
                                      additional_headers={"Authorization": f"Token {token}"})
    except websockets.InvalidStatus as refusal:
        session.refused = refusal.response.status_code
        return session
    async with ws:
        async def read() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if message.get("type") == "Error":
                    session.errors.append(message)
                if message.get("type") != "Results" or not message["is_final"]:
                    continue
                now = time.perf_counter()
                session.finals.append(message)
                end = message["start"] + message["duration"]
                index = min(bisect.bisect_left(ends, end - 0.001), len(ends) - 1)
                if index >= 0 and speed > 0:
                    session.latencies.append(now - sent_at[index])

        reader = asyncio.create_task(read())
        started = time.perf_counter()
        for index in range(0, len(pcm), CHUNK):
            await ws.send(pcm[index:index + CHUNK])
            ends.append(min(index + CHUNK, len(pcm)) / (2 * RATE))
            sent_at.append(time.perf_counter())
            if speed > 0:
                target = started + (index + CHUNK) / (2 * RATE) / speed
                await asyncio.sleep(max(0.0, target - time.perf_counter()))
        await ws.send(json.dumps({"type": "CloseStream"}))
        await reader
    session.close_code = ws.close_code
    return session


async def engine_counters(ws_url: str) -> dict[str, float]:
    """Engine jobs and call seconds, and finals sent, so far (the server's /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> str:
        with urllib.request.urlopen(ws_url.replace("ws://", "http://") + "/metrics", timeout=10) as response:
            return response.read().decode()

    totals = {"jobs": 0.0, "busy": 0.0, "finals": 0.0}
    for family in text_string_to_metric_families(await asyncio.to_thread(scrape)):
        for sample in family.samples:
            if sample.name == "stt_engine_batch_size_sum":
                totals["jobs"] += sample.value
            elif sample.name == "stt_provider_inference_seconds_sum":
                totals["busy"] += sample.value
            elif sample.name == "stt_results_sent_total" and sample.labels.get("kind") == "final":
                totals["finals"] += sample.value
    return totals


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._task = pid, 0.0, None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mib(self.pid))
            await asyncio.sleep(0.2)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def reading() -> Any:
    """A long read-speech recording without repeats of its own: the accuracy set's passages
    (A Tale of Two Cities, "We shall fight on the beaches", "I have a dream", the lighthouse;
    flite and espeak-ng, phrase by phrase) and jfk.flac, one after another (a PhrasedClip)."""
    import accuracy_set

    with tempfile.TemporaryDirectory() as folder:
        return accuracy_set.joined("reading", [accuracy_set.phrased(name, Path(folder))
                                               for name in ("tale", "beaches", "dream", "lighthouse", "jfk")])


def recordings(args: argparse.Namespace, pcm: bytes) -> list[tuple[bytes, str]]:
    """The recordings clients may send, with their references: the recording from its start;
    with --desync (the reading only) also the reading rotated to start at each of its phrases,
    so that clients picking one at random pause at different times."""
    if args.recording != "reading":
        return [((pcm + GAP) * args.repeats, " ".join([JFK_TEXT] * args.repeats))]
    clip = reading()
    starts = [0, *clip.ends[:-1]] if args.desync else [0]
    phrases = list(clip.phrases)
    return [(clip.pcm16[cut:] + clip.pcm16[:cut], " ".join(phrases[k:] + phrases[:k]))
            for k, cut in enumerate(starts)]


async def levels(args: argparse.Namespace, url: str, token: str, proc: Any, pcm: bytes) -> None:
    if args.desync and args.recording != "reading":
        raise SystemExit("--desync needs --recording reading")
    choices = recordings(args, pcm)
    seconds = len(choices[0][0]) / 2 / RATE
    if args.recording == "reading":
        print(f"recording: the reading (five passages, {seconds:.0f} s), real time, clients start spread over 1 s"
              + (f", each from one of its {len(choices)} phrases at random" if args.desync else ""))
    else:
        print(f"recording: jfk.flac x{args.repeats} with 1 s gaps = {seconds:.0f} s, real time, "
              "clients start spread over 1 s")
    # jobs/final: engine jobs (finals, finals decoded ahead, interims) per final sent; busy: engine
    # call seconds per second of audio sent (both from /metrics).
    print(f"{'streams':>7} {'WER mean':>8} {'WER max':>8} {'p50 s':>6} {'p95 s':>6} {'max s':>6} "
          f"{'finals':>6} {'bad closes':>10} {'RSS peak MiB':>12} {'jobs/final':>10} {'busy':>6}")
    for level in args.levels:
        before = await engine_counters(url)
        picked = [random.choice(choices) for _ in range(level)]
        with RssSampler(proc.pid) as rss:
            sessions = await asyncio.gather(*(stream(url, token, recording, speed=1.0, delay=random.uniform(0, 1))
                                              for recording, _ in picked))
        after = await engine_counters(url)
        jobs, busy, finals = (after[k] - before[k] for k in ("jobs", "busy", "finals"))
        latencies = [x for s in sessions for x in s.latencies]
        wers = [accuracy_set_wer(reference, s.text) for s, (_, reference) in zip(sessions, picked)]
        bad = sum(s.close_code != 1000 for s in sessions)
        print(f"{level:>7} {statistics.mean(wers):>8.3f} {max(wers):>8.3f} {percentile(latencies, 0.5):>6.2f} "
              f"{percentile(latencies, 0.95):>6.2f} {max(latencies, default=float('nan')):>6.2f} "
              f"{len(latencies):>6} {bad:>10} {rss.peak:>12.0f} {jobs / max(finals, 1):>10.2f} "
              f"{busy / (level * seconds):>6.3f}", flush=True)
        await asyncio.sleep(2)


async def fast_sender(args: argparse.Namespace, url: str, token: str, proc: Any, pcm: bytes) -> None:
    repeats = max(1, round(args.minutes * 60 / (len(pcm + GAP) / 2 / RATE)))
    bulk = (pcm + GAP) * repeats
    live = (pcm + GAP) * 4
    seconds = len(bulk) / 2 / RATE
    await asyncio.sleep(1)
    rss_before = rss_mib(proc.pid)
    began = time.perf_counter()
    with RssSampler(proc.pid) as rss:
        fast = asyncio.create_task(stream(url, token, bulk, speed=0))
        await asyncio.sleep(1)
        real_time = await asyncio.gather(*(stream(url, token, live, speed=1.0, delay=i * 0.3)
                                           for i in range(args.real_time)))
        bulk_session = await fast
    elapsed = time.perf_counter() - began
    latencies = [x for s in real_time for x in s.latencies]
    print(f"fast sender: {seconds:.0f} s of speech (jfk x{repeats}) at full speed, beside {args.real_time} "
          "real-time clients (jfk x4 each)")
    print(f"  fast sender: close {bulk_session.close_code}, errors {len(bulk_session.errors)}, "
          f"transcribed through {bulk_session.transcribed_through:.0f} s of {seconds:.0f} s "
          f"({100 * bulk_session.transcribed_through / seconds:.1f}%), "
          f"WER {wer(' '.join([JFK_TEXT] * repeats), bulk_session.text):.3f}, "
          f"done in {elapsed:.0f} s ({seconds / elapsed:.1f}x real time)")
    print(f"  real-time clients: WER {[round(wer(' '.join([JFK_TEXT] * 4), s.text), 3) for s in real_time]}, "
          f"final latency p50 {percentile(latencies, 0.5):.2f} s, p95 {percentile(latencies, 0.95):.2f} s, "
          f"max {max(latencies, default=float('nan')):.2f} s, closes {[s.close_code for s in real_time]}")
    # The real-time clients send the fast sender's first four repetitions: the same audio at
    # real time, so their finals must be the same (cuts and text) and so must the WER.
    live_seconds = len(live) / 2 / RATE
    head = [spans(s.finals) for s in real_time]
    bulk_head = spans([f for f in bulk_session.finals if f["start"] < live_seconds])
    head_text = " ".join(text for _, _, text in bulk_head)
    print(f"  fast sender's first {live_seconds:.0f} s (the real-time clients' audio): "
          f"WER {wer(' '.join([JFK_TEXT] * 4), head_text):.3f}, finals the same as the real-time clients': "
          f"{'yes' if all(h == bulk_head for h in head) else 'NO'}")
    print(f"  server RSS: before {rss_before:.0f} MiB, peak {rss.peak:.0f} MiB "
          f"(growth {rss.peak - rss_before:.0f} MiB)")


def spans(finals: list[dict[str, Any]]) -> list[tuple[float, float, str]]:
    return [(f["start"], f["duration"], f["channel"]["alternatives"][0]["transcript"]) for f in finals]


async def churn(args: argparse.Namespace, url: str, token: str, proc: Any, pcm: bytes) -> None:
    speech = pcm[: 2 * RATE * 2]  # 2 s: "And so my fellow Americans"
    results: list[Session] = []
    began = time.perf_counter()
    for start in range(0, args.sessions, args.at_once):
        batch = min(args.at_once, args.sessions - start)
        results += await asyncio.gather(*(stream(url, token, speech, speed=0) for _ in range(batch)))
    elapsed = time.perf_counter() - began
    refused = [s.refused for s in results if s.refused]
    clean = [s for s in results if s.refused is None]
    empty = sum(not s.finals for s in clean)
    print(f"churn: {args.sessions} sessions of 2 s of speech, {args.at_once} at a time, in {elapsed:.0f} s")
    print(f"  refused: {len(refused)} {sorted(set(refused))}; closed 1000: "
          f"{sum(s.close_code == 1000 for s in clean)}; other closes: "
          f"{sorted({s.close_code for s in clean if s.close_code != 1000})}; "
          f"sessions without a final (audio dropped): {empty}; errors: {sum(len(s.errors) for s in clean)}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="scenario", required=True)
    p = sub.add_parser("levels")
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8, 16, 24, 32])
    p.add_argument("--repeats", type=int, default=4, help="repetitions of jfk.flac per stream (11 s each)")
    p.add_argument("--desync", action="store_true",
                   help="each client starts the reading at a phrase of its own (rotated), so pauses do not fall "
                        "together as they do when all send the same audio within a second")
    p.add_argument("--recording", choices=["jfk", "reading"], default="jfk",
                   help="jfk.flac repeated, or a 72 s reading of five passages (bench/capacity.py reading())")
    p = sub.add_parser("fast-sender")
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("--real-time", type=int, default=3)
    p = sub.add_parser("churn")
    p.add_argument("--sessions", type=int, default=500)
    p.add_argument("--at-once", type=int, default=20)
    parser.add_argument("--config", default="", help="extra YAML appended to the server's config")
    parser.add_argument("--interim-results", action="store_true",
                        help="clients ask for interim results too (the server then decodes interims beside "
                             "the finals; only the finals are timed)")
    args = parser.parse_args()
    global INTERIM_RESULTS
    INTERIM_RESULTS = "true" if args.interim_results else "false"
    random.seed(1)
    pcm = load_pcm16(JFK_FLAC)
    with tempfile.TemporaryDirectory() as folder:
        proc, url, token = await start_server(Path(folder), args.config)
        try:
            await asyncio.sleep(1.0)
            print(f"server RSS idle with the model loaded: {rss_mib(proc.pid):.0f} MiB")
            scenario = {"levels": levels, "fast-sender": fast_sender, "churn": churn}[args.scenario]
            await scenario(args, url, token, proc, pcm)
        finally:
            proc.terminate()
            await proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
