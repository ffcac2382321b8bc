"""Shared test helpers: the reference audio, decoding it, and word error rate."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED_AUDIO = REPO.parent / "shared" / "audio"
JFK_FLAC = SHARED_AUDIO / "jfk.flac"
JFK_TEXT = (SHARED_AUDIO / "jfk.txt").read_text(encoding="utf-8").strip()


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
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


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
