"""The reference speech (jfk.flac) in every format a client may send, made with PyAV.

Shared by the decoder unit tests and the live-server tests. Each sample is the bytes a client
would send and how it would cut them into frames: MediaRecorder-like 250 ms chunks.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
from support import JFK_FLAC, load_pcm16

from stt_server.audio_format import AudioFormat

JFK_SECONDS = 11.0
CHUNK_SECONDS = 0.25


@dataclass(frozen=True)
class Sample:
    name: str
    data: bytes
    # What the client declares in the URL (encoding, sample_rate, channels).
    client: AudioFormat
    seconds: float = JFK_SECONDS

    def chunks(self, seconds: float = CHUNK_SECONDS) -> list[bytes]:
        """The bytes cut the way a recorder flushes them: equal shares of ``seconds`` each.

        A byte count, not a packet boundary, so chunks end mid-packet as real ones may.
        """
        size = max(1, round(len(self.data) * seconds / self.seconds))
        return [self.data[i:i + size] for i in range(0, len(self.data), size)]

    @property
    def query(self) -> dict[str, str]:
        params = {"encoding": self.client.encoding}
        if self.client.is_raw:
            params |= {"sample_rate": str(self.client.sample_rate), "channels": str(self.client.channels)}
        return params


class _StreamWriter(io.RawIOBase):
    """A write-only, non-seekable sink: muxers then write a live stream, as MediaRecorder
    does (WebM with unknown sizes, no cues)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.buffer += data
        return len(data)


def _frames(rate: int, layout: str, fmt: str, frame_size: int | None,
            pcm16: bytes | None = None) -> Iterator[av.AudioFrame]:
    resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate, frame_size=frame_size)
    if pcm16 is not None:  # 16 kHz mono s16le, in 0.1 s frames
        samples = np.frombuffer(pcm16, dtype="<i2")
        for start in range(0, samples.size, 1600):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1600].copy(), format="s16",
                                               layout="mono")
            frame.sample_rate = 16_000
            yield from resampler.resample(frame)
    else:
        with av.open(str(JFK_FLAC)) as source:
            for frame in source.decode(audio=0):
                frame.pts = None
                yield from resampler.resample(frame)
    yield from resampler.resample(None)


def encode(container: str, codec: str, *, rate: int, layout: str = "mono", bit_rate: int | None = None,
           options: dict[str, str] | None = None, live: bool = False, pcm16: bytes | None = None) -> bytes:
    """jfk.flac (or ``pcm16``: 16 kHz mono s16le) re-encoded with ``codec`` into ``container``
    (a PyAV/FFmpeg muxer name)."""
    sink: io.RawIOBase | io.BytesIO = _StreamWriter() if live else io.BytesIO()
    with av.open(sink, mode="w", format=container, options=options or {}) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if bit_rate:
            stream.bit_rate = bit_rate
        stream.codec_context.open()  # fixes the encoder's sample format and frame size
        fmt = stream.codec_context.format.name
        frame_size = stream.codec_context.frame_size or None
        for frame in _frames(rate, layout, fmt, frame_size, pcm16):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return bytes(sink.buffer) if isinstance(sink, _StreamWriter) else sink.getvalue()


def make_samples() -> dict[str, Sample]:
    """Every format of issue 3, from the one reference recording. Takes about a second."""
    samples = [
        # Browsers: MediaRecorder audio/webm;codecs=opus, often a stereo track.
        Sample("webm", encode("webm", "libopus", rate=48_000, layout="stereo", bit_rate=64_000, live=True),
               AudioFormat("webm")),
        # Firefox-style Ogg/Opus, a page per 20 ms packet as a live sender flushes them.
        Sample("ogg", encode("ogg", "libopus", rate=48_000, bit_rate=32_000,
                             options={"page_duration": "20000"}), AudioFormat("ogg")),
        Sample("wav", encode("wav", "pcm_s16le", rate=22_050, layout="stereo"), AudioFormat("wav")),
        Sample("flac", JFK_FLAC.read_bytes(), AudioFormat("flac")),
        Sample("mp3", encode("mp3", "libmp3lame", rate=44_100, bit_rate=64_000), AudioFormat("mp3")),
        Sample("mulaw", encode("mulaw", "pcm_mulaw", rate=8_000), AudioFormat("mulaw", 8_000, 1)),
        Sample("linear16", load_pcm16(JFK_FLAC, 44_100, "stereo"), AudioFormat("linear16", 44_100, 2)),
    ]
    return {sample.name: sample for sample in samples}


def envelope(pcm16: bytes, rate: int = 16_000, frame_ms: int = 20) -> np.ndarray:
    """RMS energy per frame: a shape that survives lossy codecs, resampling and mix-down."""
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float32)
    size = rate * frame_ms // 1000
    frames = samples[: len(samples) // size * size].reshape(-1, size)
    return np.sqrt((frames ** 2).mean(axis=1))


def envelope_similarity(pcm16: bytes, reference: bytes, max_shift: int = 5) -> float:
    """Best correlation of the two energy envelopes within ±max_shift frames (±100 ms)."""
    a, b = envelope(pcm16), envelope(reference)
    best = -1.0
    for shift in range(-max_shift, max_shift + 1):
        x, y = (a[shift:], b) if shift >= 0 else (a, b[-shift:])
        n = min(len(x), len(y))
        if n > 10:
            best = max(best, float(np.corrcoef(x[:n], y[:n])[0, 1]))
    return best


def audio_available(sample: Sample) -> list[tuple[int, float]]:
    """(bytes received, seconds of audio those bytes hold completely), ascending.

    The yardstick for latency: a decoder cannot return audio whose packet has not arrived, and
    should return all audio whose packet has.
    """
    if sample.client.is_raw:
        rate = sample.client.bytes_per_second or 1
        return [(n, n / rate) for n in range(0, len(sample.data) + 1, max(1, rate // 100))]
    points = []
    with av.open(io.BytesIO(sample.data)) as source:
        stream = source.streams.audio[0]
        if sample.client.encoding == "wav":  # 16-bit samples after the header, no packets
            start = sample.data.index(b"data") + 8
            rate = stream.sample_rate * stream.channels * 2
            return [(n, max(0, n - start) / rate) for n in range(0, len(sample.data) + 1, rate // 100)]
        packets = [(packet.pos, float((packet.pts + packet.duration) * packet.time_base))
                   for packet in source.demux(stream)
                   if packet.pos is not None and packet.pts is not None and packet.duration is not None]
    # A packet is whole once the next page or block begins (packet.size leaves out headers).
    starts = sorted({pos for pos, _ in packets} | {len(sample.data)})
    for pos, end in packets:
        points.append((next(s for s in starts if s > pos), end))
    return points


def seconds_available(points: list[tuple[int, float]], received: int) -> float:
    """How much audio the first ``received`` bytes hold (see :func:`audio_available`)."""
    best = 0.0
    for end, seconds in points:
        if end > received:
            break
        best = max(best, seconds)
    return best
