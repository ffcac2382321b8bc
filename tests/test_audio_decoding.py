"""Decoders without a server: every client format → 16 kHz mono PCM16, chunk by chunk."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time

import pytest
from audio_files import JFK_SECONDS, Sample, audio_available, envelope_similarity, make_samples, seconds_available
from support import JFK_FLAC, load_pcm16

from stt_server.audio import AudioDecoder, open_decoder
from stt_server.audio.detect import is_mpeg_audio_frame, sniff
from stt_server.audio.wav import parse_wav_header
from stt_server.audio_format import AudioFormat, pcm16_mono
from stt_server.errors import AudioError

TARGET = pcm16_mono(16_000)
BYTES_PER_SECOND = 32_000
FORMATS = ["webm", "ogg", "wav", "flac", "mp3", "mulaw", "linear16"]


@pytest.fixture(scope="module")
def samples() -> dict[str, Sample]:
    return make_samples()


@pytest.fixture(scope="module")
def reference() -> bytes:
    return load_pcm16(JFK_FLAC)


async def decode_chunks(decoder: AudioDecoder, chunks: list[bytes]) -> bytes:
    out = bytearray()
    try:
        for chunk in chunks:
            out += await decoder.decode(chunk)
        out += await decoder.finish()
    finally:
        decoder.close()
    return bytes(out)


def wait_for_threads(count: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while threading.active_count() > count and time.monotonic() < deadline:
        time.sleep(0.01)
    return threading.active_count()


# sniff() and the WAV header parser: pure functions.

@pytest.mark.parametrize(("head", "expected"), [
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81", "webm"),
    (b"OggS\x00\x02\x00\x00\x00\x00\x00\x00", "ogg"),
    (b"RIFF\x24\x00\x00\x00WAVE", "wav"),
    (b"RIFF\x24\x00\x00\x00AVI ", None),
    (b"fLaC\x00\x00\x00\x22", "flac"),
    (b"ID3\x04\x00\x00", "mp3"),
    (b"\xff\xfb\x90\x64\x00", "mp3"),  # MPEG-1 Layer III frame, no ID3 tag
    (b"\xff\xf1\x50\x80\x00", None),  # AAC ADTS: same sync bits, layer 00
    (b"\x00\x00\x01\x00", None),
    (b"", None),
])
def test_sniff(head: bytes, expected: str | None) -> None:
    assert sniff(head) == expected


def test_sniff_without_frame_sync_ignores_bare_mpeg_headers() -> None:
    # 16-bit PCM samples of -1, 0 pass for an MPEG Layer I frame header; the raw path must
    # not take them for an MP3.
    assert is_mpeg_audio_frame(b"\xff\xff\x00\x00") is True
    assert sniff(b"\xff\xff\x00\x00", frame_sync=False) is None
    assert is_mpeg_audio_frame(b"\xff\xff\xf0\x00") is False  # bad bitrate index
    assert sniff(b"ID3\x04", frame_sync=False) == "mp3"


def test_wav_header_needs_whole_header(samples: dict[str, Sample]) -> None:
    data = samples["wav"].data
    assert parse_wav_header(data[:30]) is None
    header = parse_wav_header(data)
    assert header is not None
    assert (header.raw_encoding, header.sample_rate, header.channels) == ("linear16", 22_050, 2)
    assert data[header.data_offset - 8:header.data_offset - 4] == b"data"
    with pytest.raises(AudioError) as caught:
        parse_wav_header(b"RIFF\x00\x00\x00\x00WAVEdata\x00\x00\x00\x00")
    assert caught.value.code == "undecodable_audio"


# Each format, decoded chunk by chunk.

@pytest.mark.parametrize("name", FORMATS)
async def test_format_decodes_to_reference(name: str, samples: dict[str, Sample], reference: bytes) -> None:
    sample = samples[name]
    pcm = await decode_chunks(open_decoder(sample.client, TARGET), sample.chunks())
    assert abs(len(pcm) / BYTES_PER_SECOND - JFK_SECONDS) <= 0.3
    assert envelope_similarity(pcm, reference) > 0.9


@pytest.mark.parametrize("name", ["webm", "ogg", "wav", "flac", "mp3"])
async def test_auto_detects_container(name: str, samples: dict[str, Sample]) -> None:
    pcm = await decode_chunks(open_decoder(AudioFormat("auto"), TARGET), samples[name].chunks())
    assert abs(len(pcm) / BYTES_PER_SECOND - JFK_SECONDS) <= 0.3


async def test_webm_output_keeps_pace_with_chunks(samples: dict[str, Sample]) -> None:
    """decode() returns the audio of each chunk with it, not some chunks later."""
    sample = samples["webm"]
    points = audio_available(sample)
    decoder = open_decoder(sample.client, TARGET)
    sent = decoded = 0
    lags = []
    for chunk in sample.chunks():
        sent += len(chunk)
        decoded += len(await decoder.decode(chunk))
        lags.append(seconds_available(points, sent) - decoded / BYTES_PER_SECOND)
    decoder.close()
    # Opus packets are 20 ms; the resampler holds back a few ms more.
    assert max(lags) < 0.05


async def test_tiny_frames_decode(samples: dict[str, Sample]) -> None:
    """Frames split anywhere, even inside the header, still decode."""
    sample = samples["webm"]
    chunks = [sample.data[i:i + 7] for i in range(0, 2002, 7)] + [sample.data[2002:]]
    pcm = await decode_chunks(open_decoder(sample.client, TARGET), chunks)
    assert abs(len(pcm) / BYTES_PER_SECOND - JFK_SECONDS) <= 0.3


# Recorder restarts and truncation.

async def test_two_webm_streams_back_to_back(samples: dict[str, Sample]) -> None:
    chunks = samples["webm"].chunks()
    baseline = threading.active_count()
    pcm = await decode_chunks(open_decoder(AudioFormat("webm"), TARGET), chunks + chunks)
    assert abs(len(pcm) / BYTES_PER_SECOND - 2 * JFK_SECONDS) <= 0.6
    assert wait_for_threads(baseline) == baseline


async def test_restart_returns_first_stream_before_second(samples: dict[str, Sample]) -> None:
    chunks = samples["webm"].chunks()
    decoder = open_decoder(AudioFormat("auto"), TARGET)
    first = b"".join([await decoder.decode(c) for c in chunks])
    restart = await decoder.decode(chunks[0])  # flushes the first recording's tail
    total = len(first + restart) / BYTES_PER_SECOND
    assert abs(total - JFK_SECONDS) <= 0.3
    decoder.close()


@pytest.mark.parametrize("name", ["webm", "ogg", "wav", "flac", "mp3"])
async def test_truncated_stream_yields_what_arrived(name: str, samples: dict[str, Sample]) -> None:
    sample = samples[name]
    cut = sample.data[: int(len(sample.data) * 0.6)]
    pcm = await decode_chunks(open_decoder(sample.client, TARGET), [cut[i:i + 4096] for i in range(0, len(cut), 4096)])
    assert abs(len(pcm) / BYTES_PER_SECOND - 0.6 * JFK_SECONDS) <= 0.5


# Bad audio.

@pytest.mark.parametrize("encoding", ["auto", "webm", "ogg", "wav", "flac", "mp3"])
async def test_garbage_is_undecodable(encoding: str) -> None:
    garbage = os.urandom(24_000)
    decoder = open_decoder(AudioFormat(encoding), TARGET)
    with pytest.raises(AudioError) as caught:
        for i in range(0, len(garbage), 4000):
            await decoder.decode(garbage[i:i + 4000])
        await decoder.finish()
    assert caught.value.code == "undecodable_audio"
    assert await decoder.finish() == b""  # reported once; nothing decoded
    decoder.close()


async def test_error_after_audio_keeps_decoded_audio(samples: dict[str, Sample]) -> None:
    """Bad bytes mid-stream: decode() raises, finish() returns the audio decoded before."""
    data = samples["mp3"].data
    half = len(data) // 2
    bad = data[:half] + bytes([0xFF, 0xFB, 0x90, 0x64]) + random.Random(3).randbytes(8000) + data[half:]
    decoder = open_decoder(AudioFormat("mp3"), TARGET)
    decoded = bytearray()
    with pytest.raises(AudioError) as caught:
        for i in range(0, len(bad), 2000):
            decoded += await decoder.decode(bad[i:i + 2000])
    decoded += await decoder.finish()
    decoder.close()
    assert caught.value.code == "undecodable_audio"
    assert len(decoded) / BYTES_PER_SECOND >= 0.4 * JFK_SECONDS


async def test_wav_sent_as_linear16_is_a_mismatch(samples: dict[str, Sample]) -> None:
    decoder = open_decoder(AudioFormat("linear16", 16_000, 1), TARGET)
    with pytest.raises(AudioError) as caught:
        await decoder.decode(samples["wav"].chunks()[0])
    assert caught.value.code == "encoding_mismatch"
    assert "wav" in caught.value.message


async def test_declared_container_differs_from_bytes(samples: dict[str, Sample]) -> None:
    decoder = open_decoder(AudioFormat("webm"), TARGET)
    with pytest.raises(AudioError) as caught:
        await decoder.decode(samples["ogg"].chunks()[0])
    assert caught.value.code == "encoding_mismatch"
    decoder.close()


async def test_raw_pcm_starting_with_frame_sync_bits_is_accepted(samples: dict[str, Sample]) -> None:
    sample = samples["linear16"]
    assert sample.data[:2] == b"\xff\xff"  # looks like an MPEG frame sync
    pcm = await decode_chunks(open_decoder(sample.client, TARGET), sample.chunks()[:2])
    assert len(pcm) > 0


# Threads: one per stream, gone after close() or finish().

async def test_close_mid_stream_ends_the_thread(samples: dict[str, Sample]) -> None:
    baseline = threading.active_count()
    decoders = [open_decoder(samples[name].client, TARGET) for name in ("webm", "ogg", "flac", "mp3")]
    for name, decoder in zip(("webm", "ogg", "flac", "mp3"), decoders, strict=True):
        for chunk in samples[name].chunks()[:3]:
            await decoder.decode(chunk)
    assert threading.active_count() == baseline + 4  # blocked in read(), waiting for bytes
    for decoder in decoders:
        decoder.close()
        decoder.close()  # idempotent
    assert threading.active_count() == baseline


async def test_finish_ends_the_thread(samples: dict[str, Sample]) -> None:
    baseline = threading.active_count()
    decoder = open_decoder(samples["webm"].client, TARGET)
    await decoder.decode(samples["webm"].chunks()[0])
    assert threading.active_count() == baseline + 1
    await decoder.finish()
    assert threading.active_count() == baseline
    assert await decoder.finish() == b""  # idempotent
    decoder.close()


async def test_cancelled_decode_then_close_ends_the_thread(samples: dict[str, Sample]) -> None:
    """A session torn down while decode() awaits (a disconnect) still frees the thread."""
    baseline = threading.active_count()
    decoder = open_decoder(samples["flac"].client, TARGET)
    task = asyncio.ensure_future(decoder.decode(samples["flac"].data[:400_000]))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    decoder.close()
    assert threading.active_count() == baseline


async def test_decode_does_not_block_the_event_loop(samples: dict[str, Sample]) -> None:
    """FLAC's whole file in one call: the loop keeps ticking while the thread decodes."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.ensure_future(ticker())
    decoder = open_decoder(samples["flac"].client, TARGET)
    started = time.perf_counter()
    await decoder.decode(samples["flac"].data)
    elapsed = time.perf_counter() - started
    decoder.close()
    task.cancel()
    assert ticks >= min(5, int(elapsed / 0.002))


# No encoding in the URL: the default raw format unless the bytes are a known container.

@pytest.mark.parametrize("name", ["webm", "ogg", "wav", "flac", "mp3"])
async def test_undeclared_encoding_detects_containers(name: str, samples: dict[str, Sample]) -> None:
    default = AudioFormat("linear16", 16_000, 1, declared=False)
    pcm = await decode_chunks(open_decoder(default, TARGET), samples[name].chunks())
    assert abs(len(pcm) / BYTES_PER_SECOND - JFK_SECONDS) <= 0.3


async def test_undeclared_encoding_defaults_to_raw(reference: bytes) -> None:
    default = AudioFormat("linear16", 16_000, 1, declared=False)
    pcm = await decode_chunks(open_decoder(default, TARGET), [reference[i:i + 5] for i in range(0, 40, 5)]
                              + [reference[40:]])
    assert pcm == reference
