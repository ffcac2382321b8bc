"""Headerless PCM: sample conversion, mix-down to mono and resampling, chunk by chunk.

Cheap enough to run on the event loop (a 250 ms chunk converts in well under a millisecond).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..audio_format import AudioFormat
from ..errors import AudioError
from .base import AudioDecoder
from .detect import sniff
from .resample import Resampler

_DTYPES: dict[str, np.dtype[Any]] = {
    "linear16": np.dtype("<i2"), "linear32": np.dtype("<i4"), "float32": np.dtype("<f4"),
           "mulaw": np.dtype("u1"), "alaw": np.dtype("u1")}


def _mulaw_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign, -magnitude, magnitude).astype(np.float32) / 32768.0


def _alaw_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1))
    return np.where(sign, magnitude, -magnitude).astype(np.float32) / 32768.0


_TABLES = {"mulaw": _mulaw_table(), "alaw": _alaw_table()}


def to_float(samples: bytes, encoding: str) -> np.ndarray:
    """Interleaved samples of ``encoding`` → float32 in [-1, 1]."""
    raw = np.frombuffer(samples, dtype=_DTYPES[encoding])
    if encoding == "linear16":
        return raw.astype(np.float32) / 32768.0
    if encoding == "linear32":
        return raw.astype(np.float32) / 2147483648.0
    if encoding == "float32":
        return np.nan_to_num(raw.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    return _TABLES[encoding][raw]


class RawPcmDecoder(AudioDecoder):
    def __init__(self, client: AudioFormat, target: AudioFormat) -> None:
        if client.sample_rate is None or target.sample_rate is None:
            raise ValueError("raw PCM needs a sample rate on both sides")
        self._encoding = client.encoding
        self._channels = client.channels
        self._frame_bytes = _DTYPES[client.encoding].itemsize * client.channels
        self._pending = b""  # a partial sample frame split across websocket frames
        self._resampler = Resampler(client.sample_rate, target.sample_rate)
        # Already what the provider takes: pass the bytes through (after the header check).
        self._identity = client == target
        self._first = True
        self._finished = False

    async def decode(self, data: bytes) -> bytes:
        if self._finished:
            return b""  # nothing is decoded after the end of the stream
        if self._first and data:
            self._first = False
            # A bare MPEG frame sync is too weak a sign: PCM may start with those 11 bits.
            container = sniff(data, frame_sync=False)
            if container is not None:
                raise AudioError(
                    f"the audio starts with a {container} header but the session declared "
                    f"encoding={self._encoding}; connect with encoding={container} or encoding=auto",
                    code="encoding_mismatch")
        data = self._pending + data
        usable = len(data) - len(data) % self._frame_bytes
        self._pending = data[usable:]
        if not usable:
            return b""
        if self._identity:
            return data[:usable]
        samples = to_float(data[:usable], self._encoding)
        if self._channels > 1:
            samples = samples.reshape(-1, self._channels).mean(axis=1)
        return self._resampler.process(samples)

    async def finish(self) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        self._pending = b""
        return self._resampler.flush()
