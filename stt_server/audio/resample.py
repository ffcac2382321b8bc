"""Streaming resampling of mono float audio to PCM16, via FFmpeg's resampler (PyAV)."""

from __future__ import annotations

import av
import numpy as np


class Resampler:
    def __init__(self, source_rate: int, target_rate: int) -> None:
        self._source_rate = source_rate
        self._target_rate = target_rate
        self._resampler = (None if source_rate == target_rate
                           else av.AudioResampler(format="s16", layout="mono", rate=target_rate))

    def process(self, samples: np.ndarray) -> bytes:
        """float32 mono samples → PCM16 mono bytes at the target rate (some may be held back)."""
        if self._resampler is None:
            return _to_pcm16(samples)
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32).reshape(1, -1), format="flt",
                                           layout="mono")
        frame.sample_rate = self._source_rate
        return b"".join(bytes(out.planes[0])[: out.samples * 2] for out in self._resampler.resample(frame))

    def flush(self) -> bytes:
        if self._resampler is None:
            return b""
        return b"".join(bytes(out.planes[0])[: out.samples * 2] for out in self._resampler.resample(None))


def _to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
