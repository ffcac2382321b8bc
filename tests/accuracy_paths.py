"""The ways audio reaches the engine, each a "path" the accuracy set must pass through.

A path is a format (linear16 or a container, encoded from the clip with PyAV), a pace (real
time, or as fast as the socket allows), whether the clips' sessions run one at a time or all
at once (their utterances then share the engine's batches) and whether interim results are on.
Each clip is one session on /v1/listen that ends with CloseStream; its finals are its text.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.frames import Frame, Opcode
from accuracy_set import Clip, PhrasedClip, lost_repeats, wer
from audio_files import encode

LINEAR16_FRAME = 3200  # 0.1 s of 16 kHz PCM16
CONTAINER_CHUNK_SECONDS = 0.25  # a MediaRecorder's timeslice


def finals_text(messages: list[dict[str, Any]]) -> str:
    """The transcript: every final's text, in order."""
    return " ".join(m["channel"]["alternatives"][0]["transcript"] for m in messages
                    if m.get("type") == "Results" and m.get("is_final")).strip()


@dataclass(frozen=True)
class Format:
    name: str
    query: dict[str, str]
    encoder: Callable[[bytes], bytes] | None = None  # None: the PCM itself


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("linear16", {"encoding": "linear16", "sample_rate": "16000"}),
    Format("webm", {"encoding": "webm"}, lambda pcm: encode("webm", "libopus", rate=48_000, layout="stereo",
                                                             bit_rate=64_000, live=True, pcm16=pcm)),
    Format("ogg", {"encoding": "ogg"}, lambda pcm: encode("ogg", "libopus", rate=48_000, bit_rate=32_000,
                                                           options={"page_duration": "20000"}, pcm16=pcm)),
    Format("mp3", {"encoding": "mp3"}, lambda pcm: encode("mp3", "libmp3lame", rate=44_100, bit_rate=64_000,
                                                           pcm16=pcm)),
    Format("flac", {"encoding": "flac"}, lambda pcm: encode("flac", "flac", rate=16_000, pcm16=pcm)),
    Format("wav", {"encoding": "wav"}, lambda pcm: encode("wav", "pcm_s16le", rate=22_050, layout="stereo",
                                                           pcm16=pcm)),
    Format("mulaw", {"encoding": "mulaw", "sample_rate": "8000"},
           lambda pcm: encode("mulaw", "pcm_mulaw", rate=8_000, pcm16=pcm)),
)}


@dataclass(frozen=True)
class Path:
    name: str
    format: str = "linear16"
    realtime: bool = False  # False: as fast as the socket allows
    together: bool = True  # every clip's session at once (batched), or one after another
    interim: bool = False


PATHS: dict[str, Path] = {p.name: p for p in (
    Path("realtime", realtime=True, interim=True),
    Path("fast", together=False),
    Path("batched", interim=True),
    *(Path(name, format=name) for name in ("webm", "ogg", "mp3", "flac", "wav")),
)}


@dataclass
class ClipResult:
    clip: Clip
    path: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def text(self) -> str:
        return finals_text(self.messages)

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "Error"]

    @property
    def wer(self) -> float:
        return wer(self.clip.reference, self.text)

    def problems(self) -> list[str]:
        """Why this result fails the gate (empty: it passes)."""
        found = []
        if self.close_code != 1000:
            found.append(f"close {self.close_code} {self.close_reason!r}")
        if self.errors:
            found.append(f"errors {self.errors}")
        if self.wer > self.clip.spec.max_wer + 1e-9:
            found.append(f"WER {self.wer:.3f} > {self.clip.spec.max_wer} ({self.text!r})")
        if lost := lost_repeats(self.clip.spec, self.text):
            found.append(f"repetitions changed: {', '.join(lost)} ({self.text!r})")
        return found


def frames_of(clip: Clip, fmt: Format) -> tuple[list[bytes], float]:
    """The bytes a client sends for ``clip`` in ``fmt``, and the seconds each frame holds."""
    if fmt.encoder is None:
        data, size = clip.pcm16, LINEAR16_FRAME
        return [data[i:i + size] for i in range(0, len(data), size)], size / 32_000
    data = fmt.encoder(clip.pcm16)
    size = max(1, round(len(data) * CONTAINER_CHUNK_SECONDS / clip.seconds))
    return [data[i:i + size] for i in range(0, len(data), size)], CONTAINER_CHUNK_SECONDS


async def collect(ws: websockets.ClientConnection, messages: list[dict[str, Any]]) -> None:
    """Append every message the server sends, until it closes."""
    try:
        async for message in ws:
            messages.append(json.loads(message))
    except websockets.ConnectionClosed:
        pass


async def send_clip(url: str, frames: list[bytes], frame_seconds: float, *, realtime: bool,
                    result: ClipResult, timeout: float = 300) -> ClipResult:
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
        reader = asyncio.create_task(collect(ws, result.messages))
        began = time.monotonic()
        for number, frame in enumerate(frames):
            if realtime:  # on a schedule, so a slow send does not slow the pace down
                await asyncio.sleep(max(0.0, began + number * frame_seconds - time.monotonic()))
            await ws.send(frame)
        await ws.send(json.dumps({"type": "CloseStream"}))
        await asyncio.wait_for(reader, timeout)
        result.close_code, result.close_reason = ws.close_code, ws.close_reason or ""
    return result


async def run_path(url: Callable[..., str], clips: list[Clip], path: Path) -> list[ClipResult]:
    """Every clip through ``path``; ``url(**query)`` gives a /v1/listen URL with a token."""
    fmt = FORMATS[path.format]
    prepared = [(clip, *frames_of(clip, fmt)) for clip in clips]
    target = url(**fmt.query, interim_results=str(path.interim).lower())

    def one(clip: Clip, frames: list[bytes], seconds: float) -> Any:
        return send_clip(target, frames, seconds, realtime=path.realtime, result=ClipResult(clip, path.name))

    if path.together:
        return list(await asyncio.gather(*(one(*item) for item in prepared)))
    return [await one(*item) for item in prepared]


def table(results: dict[str, list[ClipResult]]) -> str:
    """Clip × path WER table (and each clip's bound), for the log and bench/RESULTS.md."""
    paths = list(results)
    clips = [r.clip for r in next(iter(results.values()))]
    lines = [f"{'clip':14} {'bound':>5} " + " ".join(f"{p:>8}" for p in paths)]
    for index, clip in enumerate(clips):
        # "*": the clip fails the gate on that path (its WER, its close or an Error).
        cells = [f"{results[p][index].wer:.3f}{'*' if results[p][index].problems() else ' '}".rjust(8)
                 for p in paths]
        lines.append(f"{clip.name:14} {clip.spec.max_wer:5.2f} " + " ".join(cells))
    means = [sum(r.wer for r in results[p]) / len(results[p]) for p in paths]
    lines.append(f"{'mean':14} {'':5} " + " ".join(f"{m:8.3f}" for m in means))
    return "\n".join(lines)


# --- the drain path ---------------------------------------------------------------------------


class PingNotingConnection(websockets.ClientConnection):
    """A client connection that notes how many audio bytes it had sent when each ping arrived.
    The server pings right after its drain notice, so the last such count is what the client
    had sent before it could see the drain: all of it must be transcribed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bytes_sent = 0
        self.sent_at_ping: list[int] = []

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.sent_at_ping.append(self.bytes_sent)
        super().process_event(event)


@dataclass
class DrainedClip:
    clip: PhrasedClip
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    sent_at_ping: int | None = None  # None: no ping came
    bytes_sent: int = 0

    @property
    def text(self) -> str:
        return finals_text(self.messages)

    @property
    def session_id(self) -> str:
        return str(self.messages[0]["request_id"]) if self.messages else ""


async def stream_until_closed(url: str, clip: PhrasedClip, *, realtime: bool, close_stream: bool = False,
                              timeout: float = 300) -> DrainedClip:
    """Send ``clip`` as linear16 (in real time, or as fast as the socket allows) until the server
    closes the session, collecting what comes back; CloseStream after the clip only if
    ``close_stream``."""
    result = DrainedClip(clip)
    async with websockets.connect(url, max_size=None, open_timeout=30,
                                  create_connection=PingNotingConnection) as ws:
        assert isinstance(ws, PingNotingConnection)
        reader = asyncio.create_task(collect(ws, result.messages))
        began = time.monotonic()
        try:
            for number, start in enumerate(range(0, len(clip.pcm16), LINEAR16_FRAME)):
                if realtime:
                    await asyncio.sleep(max(0.0, began + number * LINEAR16_FRAME / 32_000 - time.monotonic()))
                await ws.send(clip.pcm16[start:start + LINEAR16_FRAME])
                ws.bytes_sent += len(clip.pcm16[start:start + LINEAR16_FRAME])
            if close_stream:
                await ws.send(json.dumps({"type": "CloseStream"}))
        except websockets.ConnectionClosed:
            pass
        await asyncio.wait_for(reader, timeout)
        result.close_code, result.close_reason = ws.close_code, ws.close_reason or ""
        result.sent_at_ping = ws.sent_at_ping[-1] if ws.sent_at_ping else None
        result.bytes_sent = ws.bytes_sent
    return result
