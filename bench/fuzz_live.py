"""Live fuzzing (issue 10): malformed messages over many sessions against a real `stt-server`,
while one healthy Whisper session keeps transcribing jfk.flac.

Sessions on the null engine, on both protocols (native /v1/listen and the seed's
/ws/transcription/), each get a batch of messages: random bytes as text, random and deeply
nested JSON, wrong types, huge strings, bad base64, fragmented frames, plus a few valid ones as
controls. Every malformed text message must get exactly one answer (a native ``Error`` or a
seed 4xx envelope) and the session must go on; some sessions end with a message that must close
them with a documented code: invalid UTF-8 (1007), a text frame over
limits.max_base64_message_bytes (1009). Afterwards the server log must hold no traceback.

    python bench/fuzz_live.py [--messages 20000] [--per-session 100] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_process import TOKEN, start_server  # noqa: E402
from support import JFK_FLAC, JFK_TEXT, load_pcm16, wer  # noqa: E402

MAX_TEXT = 1024 * 1024  # limits.max_base64_message_bytes (default)
CONFIG = {"providers": {"null": {"enabled": True, "passthrough": True},
                        "whisper": {"enabled": True, "workers": 1, "cpu_threads": 1}},
          "limits": {"max_sessions": 64, "idle_timeout_seconds": 60}}


def malformed(rng: random.Random) -> tuple[str, str | list[str]]:
    """(kind, a text message that must be refused with one answer); a list is sent fragmented."""
    kind = rng.choice(["random_text", "random_json", "deep_json", "wrong_type", "huge_string", "bad_base64",
                       "fragmented", "no_object", "surrogate"])
    if kind == "random_text":
        return kind, "".join(chr(rng.randint(32, 0xD7FF)) for _ in range(rng.randint(1, 200)))
    if kind == "random_json":
        return kind, json.dumps({rng.choice(["type", "x", "action"]): rng.choice([1, None, [], {}, "?", 2.5])})
    if kind == "deep_json":
        depth = rng.choice([40, 500, 1000, 5000, 50_000])
        opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
        return kind, opener * depth + "1" + closer * depth
    if kind == "wrong_type":
        return kind, json.dumps({"type": rng.choice(["audio", "Close", "", "KeepAlive ", "Results"]), "action": 3})
    if kind == "huge_string":
        return kind, json.dumps({"type": "x" * rng.randint(10_000, 500_000)})
    if kind == "bad_base64":
        data = rng.choice(["%%%", "AAA", "data:audio/wav,AAAA", "A" * 4001, "\u00e9\u00e9"])
        return kind, json.dumps({"type": "Audio", "data": data, "action": "transcribe", "voice_stream": data})
    if kind == "fragmented":
        text = '{"type": "Audio", "data": "' + "!" * 300 + '"}'
        return kind, [text[:10], text[10:100], text[100:]]
    if kind == "no_object":
        return kind, rng.choice(["[]", "null", "1", '"str"', "1" * 5000, "", " "])
    return kind, '{"type": "\\ud800", "action": "\\udfff", "request_id": "\\ud800"}'


def valid(rng: random.Random, seed: bool) -> str | bytes:
    if rng.random() < 0.5:
        return rng.randbytes(rng.randint(2, 3200)) if not seed else b"\0" * 3200
    if seed:
        chunk = base64.b64encode(bytes(640)).decode()
        return json.dumps({"action": "transcribe", "request_id": 1, "voice_stream": chunk})
    return rng.choice([json.dumps({"type": "KeepAlive"}),
                       json.dumps({"type": "Audio", "data": base64.b64encode(rng.randbytes(640)).decode()})])


async def fuzz_session(url: str, rng: random.Random, count: int, seed: bool, stats: Counter[str]) -> None:
    path = "/ws/transcription/" if seed else "/v1/listen"
    ending = rng.choice([None, None, None, "invalid_utf8", "too_big"])
    plan: list[tuple[str, Any]] = []
    for _ in range(count - (1 if ending else 0)):
        plan.append(malformed(rng) if rng.random() < 0.85 else ("valid", valid(rng, seed)))
    answers: list[dict[str, Any]] = []
    async with websockets.connect(f"{url}{path}?provider=null&token={TOKEN}", max_size=None,
                                  open_timeout=60, close_timeout=30) as ws:
        async def read() -> None:
            try:
                async for raw in ws:
                    answers.append(json.loads(raw))
            except websockets.ConnectionClosed:
                pass

        reader = asyncio.create_task(read())
        for kind, message in plan:
            stats[f"sent:{kind}"] += 1
            await ws.send(message)
        expected = sum(kind != "valid" for kind, _ in plan)
        if seed:
            expected += sum(isinstance(m, str) for kind, m in plan if kind == "valid")  # each transcribe is answered
        deadline = time.monotonic() + 120
        while len(answers) < expected and time.monotonic() < deadline and not reader.done():
            await asyncio.sleep(0.02)
        if ending == "invalid_utf8":
            stats["sent:invalid_utf8"] += 1
            await ws.send(b'{"type": "\xff\xfe"}', text=True)
        elif ending == "too_big":
            stats["sent:too_big"] += 1
            await ws.send(json.dumps({"type": "Audio", "data": "A" * MAX_TEXT}))
        else:
            await ws.send(json.dumps({"type": "CloseStream"}) if not seed else b"")
            if seed:
                await ws.close()
        await asyncio.wait_for(reader, 60)
    if seed:
        refused = [a for a in answers if a.get("response_status", 200) >= 400]
        stats["answered"] += len(refused)
        stats["unanswered"] += max(0, sum(k != "valid" for k, _ in plan) - len(refused))
    else:
        errors = [a for a in answers if a.get("type") == "Error"]
        stats["answered"] += len(errors)
        stats["unanswered"] += max(0, expected - len(errors))
        for error in errors:
            stats[f"error:{error['code']}"] += 1
    close = ws.close_code
    documented = {None: {1000, 1005} if seed else {1000}, "invalid_utf8": {1007}, "too_big": {1009}}[ending]
    stats[f"close:{close}"] += 1
    if close not in documented:
        stats["undocumented_close"] += 1
        print(f"  undocumented close {close} {ws.close_reason!r} (ending={ending}, seed={seed})")


async def healthy_whisper(url: str, stop: asyncio.Event, results: list[float]) -> None:
    """jfk.flac at real time, again and again until the fuzzing ends; the WER of each pass."""
    pcm = load_pcm16(JFK_FLAC)
    while not stop.is_set():
        finals: list[str] = []
        async with websockets.connect(f"{url}/v1/listen?interim_results=false&token={TOKEN}") as ws:
            async def read() -> None:
                async for raw in ws:
                    message = json.loads(raw)
                    if message.get("type") == "Results" and message["is_final"]:
                        finals.append(message["channel"]["alternatives"][0]["transcript"])

            reader = asyncio.create_task(read())
            began = time.perf_counter()
            for index in range(0, len(pcm), 3200):
                await ws.send(pcm[index:index + 3200])
                await asyncio.sleep(max(0.0, began + (index + 3200) / 32000 - time.perf_counter()))
            await ws.send(json.dumps({"type": "CloseStream"}))
            await asyncio.wait_for(reader, 120)
        results.append(wer(JFK_TEXT, " ".join(finals)))
        print(f"  healthy whisper pass {len(results)}: WER {results[-1]:.3f}: {' '.join(finals)[:80]!r}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--per-session", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    stats: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as folder:
        server = await start_server(Path(folder), CONFIG)
        try:
            before = server.figures()
            stop = asyncio.Event()
            wers: list[float] = []
            healthy = asyncio.create_task(healthy_whisper(server.url, stop, wers))
            sessions = args.messages // args.per_session
            slots = asyncio.Semaphore(args.concurrency)
            began = time.perf_counter()

            async def one(index: int) -> None:
                async with slots:
                    await fuzz_session(server.url, random.Random(rng.random()), args.per_session, index % 3 == 2, stats)

            await asyncio.gather(*(one(i) for i in range(sessions)))
            elapsed = time.perf_counter() - began
            stop.set()
            await healthy
            after = server.figures()
        finally:
            await server.stop()
        sent = sum(v for k, v in stats.items() if k.startswith("sent:"))
        malformed_sent = sent - stats["sent:valid"]
        print(f"sessions: {sessions} ({sessions - sessions // 3} native, {sessions // 3} seed), "
              f"concurrency {args.concurrency}, {elapsed:.1f} s")
        print(f"messages sent: {sent} ({malformed_sent} malformed, {stats['sent:valid']} valid controls)")
        print("  by kind: " + ", ".join(f"{k[5:]}={v}" for k, v in sorted(stats.items()) if k.startswith("sent:")))
        print(f"answered with an Error / 4xx envelope: {stats['answered']}; unanswered: {stats['unanswered']}")
        print("  native error codes: " + ", ".join(f"{k[6:]}={v}" for k, v in sorted(stats.items())
                                                  if k.startswith("error:")))
        print("closes: " + ", ".join(f"{k[6:]}={v}" for k, v in sorted(stats.items()) if k.startswith("close:"))
              + f"; undocumented: {stats['undocumented_close']}")
        print(f"healthy whisper session: {len(wers)} passes, WER " + ", ".join(f"{w:.3f}" for w in wers))
        print(f"server tracebacks in the log: {server.tracebacks()}; error-level lines: {len(server.error_lines())}")
        print(f"server before: {before}; after: {after}")
        for line in server.error_lines()[:5]:
            print("  " + line[:300])
        ok = (server.tracebacks() == 0 and stats["unanswered"] == 0 and stats["undocumented_close"] == 0
              and wers and max(wers) < 0.15)
        print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    asyncio.run(main())
