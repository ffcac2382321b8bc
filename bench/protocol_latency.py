"""Final latency of one stream on each protocol (Wyoming, OpenAI Realtime), against /v1/listen, in the same run.

Usage: python bench/protocol_latency.py [--rounds N] [--clip jfk|jfk-twice]

A real `stt-server` (Whisper, the default tiny.en) with every protocol under test enabled. One
client at a time streams the same speech at real time (100 ms chunks on a real-time schedule),
then says it is done (/v1/listen: CloseStream; Wyoming: audio-stop; OpenAI Realtime:
input_audio_buffer.commit). The figure is the **final latency**: from that end-of-audio message
to the arrival of the last final (/v1/listen: the last ``is_final`` Results; Wyoming: the
``transcript``; OpenAI: the last item's ``...transcription.completed``). OpenAI's client is the
official SDK, sending the same speech resampled to its 24 kHz pcm16, with server_vad at the
same 800 ms endpointing as the others. Rounds alternate protocols so that a
slow moment of the machine hits each alike. WER is printed too (the same audio, the same engine:
it should not differ).

Adding a protocol: write ``async def stream_<name>(server, pcm) -> (text, latency)`` and add it
to :data:`CLIENTS` (and its config section to :data:`CONFIG` if it needs one).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

import websockets
from accuracy_set import wer
from audio_files import encode
from openai import AsyncOpenAI
from server_process import TOKEN, ServerProcess, start_server
from support import JFK_FLAC, JFK_TEXT, load_pcm16
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient

RATE = 16_000
CHUNK_SECONDS = 0.1
CHUNK = int(RATE * 2 * CHUNK_SECONDS)
OPENAI_RATE = 24_000
OPENAI_CHUNK = int(OPENAI_RATE * 2 * CHUNK_SECONDS)
CONFIG = {"wyoming": {"enabled": True, "port": 0, "token": "bench", "transcript_streaming": False}}


async def paced(chunks: list[bytes], send: Callable[[bytes], Awaitable[None]]) -> None:
    """Send each chunk when its audio would have been spoken (real time)."""
    start = time.monotonic()
    for index, chunk in enumerate(chunks):
        await asyncio.sleep(max(0.0, start + index * CHUNK_SECONDS - time.monotonic()))
        await send(chunk)
    await asyncio.sleep(max(0.0, start + len(chunks) * CHUNK_SECONDS - time.monotonic()))


async def stream_listen(server: ServerProcess, pcm: bytes) -> tuple[str, float]:
    url = f"{server.url}/v1/listen?token={TOKEN}&interim_results=false"
    finals: list[str] = []
    last_final = 0.0
    async with websockets.connect(url, max_size=None) as ws:
        async def read() -> None:
            nonlocal last_final
            async for message in ws:
                data = json.loads(message)
                if data.get("type") == "Results" and data["is_final"]:
                    finals.append(data["channel"]["alternatives"][0]["transcript"])
                    last_final = time.monotonic()

        reader = asyncio.create_task(read())
        await paced(chunks(pcm), ws.send)
        await ws.send(json.dumps({"type": "CloseStream"}))
        end = time.monotonic()
        await reader
    return " ".join(t for t in finals if t).strip(), last_final - end


async def stream_wyoming(server: ServerProcess, pcm: bytes) -> tuple[str, float]:
    async with AsyncTcpClient("127.0.0.1", wyoming_port(server)) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(RATE, 2, 1).event())
        await paced(chunks(pcm), lambda chunk: client.write_event(AudioChunk(RATE, 2, 1, chunk).event()))
        await client.write_event(AudioStop().event())
        end = time.monotonic()
        while True:
            event = await client.read_event()
            if event is None or event.type == "error":
                raise RuntimeError(f"wyoming: {event}")
            if Transcript.is_type(event.type):
                return Transcript.from_event(event).text, time.monotonic() - end


async def stream_openai(server: ServerProcess, pcm: bytes, *, interims: bool = True) -> tuple[str, float]:
    """``interims``: OpenAI sessions stream deltas, so the engine decodes interims (the other
    clients here ask for finals only); without them, the protocol alone is measured."""
    client = AsyncOpenAI(api_key=TOKEN, base_url=server.url.replace("ws", "http", 1) + "/v1",
                         websocket_base_url=f"{server.url}/v1", max_retries=0)
    audio = encode("s16le", "pcm_s16le", rate=OPENAI_RATE, pcm16=pcm)
    transcripts: list[str] = []
    last_final = 0.0
    query = {"intent": "transcription", **({} if interims else {"interim_results": "false"})}
    async with client.realtime.connect(extra_query=query) as connection:
        await connection.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": OPENAI_RATE}, "transcription": {"language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 800}}}})
        await paced(chunks(audio, OPENAI_CHUNK),
                    lambda chunk: connection.input_audio_buffer.append(audio=base64.b64encode(chunk).decode()))
        await connection.input_audio_buffer.commit()
        end = time.monotonic()
        # A second commit finds the buffer empty; its error comes after the first one's transcript.
        await connection.send({"type": "input_audio_buffer.commit", "event_id": "end"})
        async for event in connection:
            if event.type == "conversation.item.input_audio_transcription.completed":
                transcripts.append(event.transcript)
                last_final = time.monotonic()
            elif event.type == "error":
                if event.error.event_id != "end":
                    raise RuntimeError(f"openai: {event.error.message}")
                break
    return " ".join(t for t in transcripts if t).strip(), last_final - end


CLIENTS: dict[str, Callable[[ServerProcess, bytes], Awaitable[tuple[str, float]]]] = {
    "/v1/listen": stream_listen,
    "wyoming": stream_wyoming,
    "openai": stream_openai,
    "openai, finals only": lambda server, pcm: stream_openai(server, pcm, interims=False),
}


def chunks(pcm: bytes, size: int = CHUNK) -> list[bytes]:
    return [pcm[i:i + size] for i in range(0, len(pcm), size)]


def wyoming_port(server: ServerProcess) -> int:
    for line in server.log_lines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "wyoming listening":
            return int(event["port"])
    raise RuntimeError("the server did not log its Wyoming port")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clip", choices=["jfk", "jfk-twice"], default="jfk")
    args = parser.parse_args()
    jfk = load_pcm16(JFK_FLAC)
    pcm, reference = (jfk, JFK_TEXT) if args.clip == "jfk" else (jfk + bytes(2 * RATE) + jfk,
                                                                  f"{JFK_TEXT} {JFK_TEXT}")
    with tempfile.TemporaryDirectory() as folder:
        server = await start_server(Path(folder), CONFIG)
        try:
            await stream_listen(server, pcm[:RATE * 2])  # warm-up
            latencies: dict[str, list[float]] = {name: [] for name in CLIENTS}
            errors: dict[str, list[float]] = {name: [] for name in CLIENTS}
            for round_ in range(args.rounds):
                for name, client in CLIENTS.items():
                    text, latency = await client(server, pcm)
                    latencies[name].append(latency)
                    errors[name].append(wer(reference, text))
                    print(f"round {round_ + 1} {name:>19}: final latency {latency * 1000:6.0f} ms, "
                          f"WER {errors[name][-1]:.3f}", flush=True)
            print(f"\n{args.clip} ({len(pcm) / 32000:.1f} s at real time), {args.rounds} rounds, one stream at a time:")
            for name in CLIENTS:
                values = latencies[name]
                print(f"  {name:>19}: final latency median {statistics.median(values) * 1000:.0f} ms "
                      f"(min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f}); "
                      f"WER {statistics.mean(errors[name]):.3f}")
            print(f"server tracebacks in the log: {server.tracebacks()}")
        finally:
            await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
