"""The re-send buffers: raw arithmetic, and WebM/Ogg cut at a boundary still decoding."""

from __future__ import annotations

import io

import av
import pytest
from google_standin import encode_opus

from stt_server.audio_format import AudioFormat
from stt_server.providers.google_resend import (
    OggBuffer,
    RawBuffer,
    WebmBuffer,
    resend_buffer,
)


def decoded_seconds(data: bytes) -> tuple[float, float]:
    """(first timestamp, decoded duration) of a container's audio."""
    samples, first = 0, None
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(audio=0):
            if first is None and frame.pts is not None:
                first = float(frame.pts * frame.time_base)
            samples += frame.samples
            rate = frame.sample_rate
    return first or 0.0, samples / rate


def test_raw_buffer_keeps_audio_since_the_cut() -> None:
    buffer = resend_buffer(AudioFormat("linear16", 16_000, 1))
    assert isinstance(buffer, RawBuffer)
    buffer.append(bytes(64_000))  # 2 s
    buffer.forget_before(0.50003, limit=buffer.end)
    point = buffer.restart_point()
    assert point.offset == 16_000 and point.time == 0.5 and point.prefix == b""
    buffer.forget_before(1.9, limit=20_000)  # never past what was sent
    assert buffer.restart_point().offset == 20_000
    assert buffer.read(20_000, 10) == bytes(10)


@pytest.mark.parametrize("container,cls", [("webm", WebmBuffer), ("ogg", OggBuffer)])
def test_container_cut_decodes_from_the_cut(container: str, cls: type) -> None:
    data = encode_opus(container)
    buffer = resend_buffer(AudioFormat(container))
    assert isinstance(buffer, cls)
    for i in range(0, len(data), 4800):  # MediaRecorder-sized chunks
        buffer.append(data[i:i + 4800])
    assert buffer.restart_point().prefix == b"" and buffer.restart_point().offset == 0
    buffer.forget_before(5.0, limit=buffer.end)
    point = buffer.restart_point()
    assert 4.0 <= point.time <= 5.0
    tail = point.prefix + buffer.read(point.offset, len(data))
    assert len(tail) < len(data) * 0.7
    _, full = decoded_seconds(data)
    _, rest = decoded_seconds(tail)
    assert rest == pytest.approx(full - point.time, abs=0.1)
