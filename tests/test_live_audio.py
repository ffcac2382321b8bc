"""Issue 3 end to end: every client audio format, streamed to a live server over real
websockets, decoded incrementally and transcribed by the real Whisper engine."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time

import pytest
import websockets
from audio_files import Sample, make_samples
from support import JFK_TEXT, Transcript, as_base64_frame, collect, stream_audio, wer

FORMATS = ["webm", "ogg", "wav", "flac", "mp3", "mulaw", "linear16"]
MAX_WER = 0.20
DECODER_THREAD = "stt-audio-decode"


@pytest.fixture(scope="module")
def samples() -> dict[str, Sample]:
    return make_samples()


def frames_of(chunks: list[bytes], framing: str) -> list[bytes | str]:
    return list(chunks) if framing == "binary" else [as_base64_frame(c) for c in chunks]


def decoder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(DECODER_THREAD)]


async def wait_for_threads(count: int, timeout: float = 30.0) -> tuple[int, int]:
    """Poll (without blocking the loop or starting threads) until at most ``count`` threads
    run and no decoder thread is left; returns (threads, decoder threads)."""
    deadline = time.monotonic() + timeout
    while (threading.active_count() > count or decoder_threads()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return threading.active_count(), len(decoder_threads())


@pytest.mark.parametrize("framing", ["binary", "base64"])
@pytest.mark.parametrize("name", FORMATS)
async def test_format_is_transcribed(live_server, samples: dict[str, Sample], name: str, framing: str) -> None:
    sample = samples[name]
    transcript = await stream_audio(live_server.url(**sample.query), frames_of(sample.chunks(), framing))
    assert not transcript.of_type("Error"), transcript.of_type("Error")
    assert transcript.close_code == 1000
    score = wer(JFK_TEXT, transcript.text)
    print(f"{name}/{framing}: WER {score:.3f} {transcript.text!r}")
    assert score <= MAX_WER


@pytest.mark.parametrize("name", ["webm", "ogg", "wav", "flac", "mp3"])
async def test_auto_detects_the_container(live_server, samples: dict[str, Sample], name: str) -> None:
    transcript = await stream_audio(live_server.url(encoding="auto"), samples[name].chunks())
    assert transcript.close_code == 1000
    assert wer(JFK_TEXT, transcript.text) <= MAX_WER


async def test_two_webm_recordings_back_to_back(live_server, samples: dict[str, Sample]) -> None:
    """A MediaRecorder restart mid-session: a second WebM header starts a second stream."""
    chunks = samples["webm"].chunks()
    transcript = await stream_audio(live_server.url(encoding="webm"), chunks + chunks)
    assert not transcript.of_type("Error")
    assert transcript.close_code == 1000
    score = wer(f"{JFK_TEXT} {JFK_TEXT}", transcript.text)
    print(f"webm twice: WER {score:.3f} {transcript.text!r}")
    assert score <= MAX_WER


async def test_truncated_file_yields_finals_for_what_arrived(live_server, samples: dict[str, Sample]) -> None:
    data = samples["webm"].data
    cut = data[: int(len(data) * 0.6)]
    transcript = await stream_audio(live_server.url(encoding="webm"),
                                    [cut[i:i + 2000] for i in range(0, len(cut), 2000)])
    assert not transcript.of_type("Error")
    assert transcript.close_code == 1000
    text = transcript.text.lower()
    assert "fellow americans" in text and "country" in text  # the first 6.6 s
    assert "freedom" not in text  # the last words never arrived


@pytest.mark.parametrize("encoding", ["auto", "webm"])
async def test_garbage_gets_an_error_and_close_1008(live_server, encoding: str) -> None:
    garbage = os.urandom(40_000)
    transcript = await stream_audio(live_server.url(encoding=encoding),
                                    [garbage[i:i + 4000] for i in range(0, len(garbage), 4000)])
    errors = transcript.of_type("Error")
    assert [e["code"] for e in errors] == ["undecodable_audio"]
    assert errors[0]["message"]
    assert transcript.close_code == 1008
    assert not transcript.finals


async def test_bad_bytes_mid_stream_finals_first_then_error(live_server, samples: dict[str, Sample]) -> None:
    """Good audio, then bytes the decoder rejects: the good part is transcribed first."""
    data = samples["mp3"].data
    half = len(data) // 2
    bad = data[:half] + bytes([0xFF, 0xFB, 0x90, 0x64]) + random.Random(3).randbytes(8000) + data[half:]
    transcript = await stream_audio(live_server.url(encoding="mp3"),
                                    [bad[i:i + 2000] for i in range(0, len(bad), 2000)])
    assert transcript.close_code == 1008
    kinds = [m["type"] for m in transcript.messages]
    assert kinds[-1] == "Error" and transcript.messages[-1]["code"] == "undecodable_audio"
    assert "fellow americans" in transcript.text.lower()


async def test_wav_sent_as_linear16_is_reported(live_server, samples: dict[str, Sample]) -> None:
    transcript = await stream_audio(live_server.url(encoding="linear16", sample_rate=16000),
                                    samples["wav"].chunks())
    errors = transcript.of_type("Error")
    assert [e["code"] for e in errors] == ["encoding_mismatch"]
    assert "wav" in errors[0]["message"]
    assert transcript.close_code == 1008
    assert not transcript.text  # not transcribed as noise


async def test_bad_audio_does_not_harm_another_session(live_server, samples: dict[str, Sample]) -> None:
    good = stream_audio(live_server.url(encoding="ogg"), samples["ogg"].chunks())
    bad = stream_audio(live_server.url(encoding="webm"), [os.urandom(4000) for _ in range(10)])
    good_transcript, bad_transcript = await asyncio.gather(good, bad)
    assert bad_transcript.close_code == 1008
    assert good_transcript.close_code == 1000
    assert wer(JFK_TEXT, good_transcript.text) <= MAX_WER


@pytest.mark.parametrize("how", ["abort", "close"])
async def test_disconnect_mid_stream_ends_the_decoder_thread(live_server, samples: dict[str, Sample],
                                                             how: str) -> None:
    """The server runs in this process: its threads are visible here, decoders by name."""
    # A first session warms up what the engine starts once (its executor threads).
    await stream_audio(live_server.url(encoding="webm"), samples["webm"].chunks()[:8])
    baseline = threading.active_count()
    assert not decoder_threads()
    chunks = samples["webm"].chunks()
    async with websockets.connect(live_server.url(encoding="webm")) as ws:
        transcript = Transcript()
        reader = asyncio.create_task(collect(ws, transcript))
        for chunk in chunks[:12]:  # 3 s, then the client vanishes without CloseStream
            await ws.send(chunk)
        deadline = time.monotonic() + 10
        while not decoder_threads() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(decoder_threads()) == 1
        if how == "abort":
            ws.transport.abort()  # a dropped network connection: no close frame
        else:
            await ws.close()
        await asyncio.wait_for(reader, 30)
    assert await wait_for_threads(baseline) == (baseline, 0)


async def test_no_encoding_in_the_url_detects_webm(live_server, samples: dict[str, Sample]) -> None:
    """A browser that names no encoding still gets its MediaRecorder WebM transcribed."""
    transcript = await stream_audio(live_server.url(), samples["webm"].chunks())
    assert not transcript.of_type("Error")
    assert transcript.close_code == 1000
    assert wer(JFK_TEXT, transcript.text) <= MAX_WER
