"""Shared test helpers: the reference audio, decoding it, and word error rate."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parent.parent
# Test data lives in the repository: a clone alone runs every test.
DATA = Path(__file__).resolve().parent / "data"
JFK_FLAC = DATA / "jfk.flac"
JFK_TEXT = (DATA / "jfk.txt").read_text(encoding="utf-8").strip()


def load_pcm16(path: str | Path, rate: int = 16_000, layout: str = "mono") -> bytes:
    """Decode any audio file to s16le at ``rate`` with PyAV (what a client would send)."""
    out = bytearray()
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout=layout, rate=rate)
        for frame in container.decode(audio=0):
            for piece in resampler.resample(frame):
                out += piece.to_ndarray().tobytes()
        for piece in resampler.resample(None):
            out += piece.to_ndarray().tobytes()
    return bytes(out)


def normalize(text: str) -> list[str]:
    """Lower-case words, punctuation dropped, accents kept (German, French, Spanish tests)."""
    return re.sub(r"[^\w' ]+", " ", text.lower().replace("_", " ")).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the reference length."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    d = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, start=1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, start=1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return float(d[len(hyp)]) / len(ref)


def test_wer_helper() -> None:
    assert wer("a b c d", "a b c d") == 0.0
    assert wer("a b c d", "a x c") == 0.5
    assert wer("Ask not, what!", "ask not what") == 0.0


# --- a minimal client for live tests ---------------------------------------------------------

import asyncio  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import websockets  # noqa: E402


@dataclass
class Transcript:
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [m for m in self.of_type("Results") if m["is_final"]]

    @property
    def interims(self) -> list[dict[str, Any]]:
        return [m for m in self.of_type("Results") if not m["is_final"]]

    @property
    def text(self) -> str:
        return " ".join(m["channel"]["alternatives"][0]["transcript"] for m in self.finals).strip()


async def wait_until(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def as_base64_frame(chunk: bytes) -> str:
    return json.dumps({"type": "Audio", "data": base64.b64encode(chunk).decode()})


async def collect(ws: Any, transcript: Transcript) -> None:
    try:
        async for message in ws:
            transcript.messages.append(json.loads(message))
    except websockets.ConnectionClosed:
        pass
    transcript.close_code = ws.close_code
    transcript.close_reason = ws.close_reason or ""


async def stream_audio(url: str, frames: list[bytes | str], *, delay: float = 0.0, close: bool = True,
                       timeout: float = 120, **connect_kwargs: Any) -> Transcript:
    """Send frames (binary audio or text), then CloseStream; collect everything until close."""
    transcript = Transcript()
    async with websockets.connect(url, max_size=None, **connect_kwargs) as ws:
        reader = asyncio.create_task(collect(ws, transcript))
        for frame in frames:
            await ws.send(frame)
            if delay:
                await asyncio.sleep(delay)
        if close:
            await ws.send(json.dumps({"type": "CloseStream"}))
        await asyncio.wait_for(reader, timeout)
    return transcript
