"""The Google provider through the real server and real websocket connections, with the real
google-cloud-speech client talking to the local gRPC stand-in (tests/google_standin.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
import websockets
from google.cloud.speech_v1 import RecognitionConfig
from google_standin import (
    SLOT_SECONDS,
    GoogleStandIn,
    encode_opus,
    synthetic_speech,
    utterances,
)
from support import Transcript, chunked, collect, stream_audio

CHUNK = 3200  # 100 ms of 16 kHz PCM16
PCM = {"encoding": "linear16", "sample_rate": 16000}


@pytest.fixture
async def standin() -> AsyncIterator[GoogleStandIn]:
    async with GoogleStandIn(max_stream_seconds=8) as server:
        yield server


@pytest.fixture
def google_server(make_server: Callable[..., object], standin: GoogleStandIn):
    """A server with google (pointed at the stand-in) and null enabled."""
    return make_server({
        "server": {"default_provider": "null"},
        "providers": {
            "whisper": {"enabled": False},
            "google": {"enabled": True, "api_endpoint": standin.address, "insecure": True,
                       "pace_realtime": False, "retry_backoff_seconds": 0.05},
        },
    })


async def stream_until_closed(url: str, frames: list[bytes], delay: float) -> Transcript:
    """Like support.stream_audio, but the server may close first (sends then just stop)."""
    transcript = Transcript()
    async with websockets.connect(url) as ws:
        reader = asyncio.create_task(collect(ws, transcript))
        try:
            for frame in frames:
                await ws.send(frame)
                await asyncio.sleep(delay)
            await ws.send('{"type": "CloseStream"}')
        except websockets.ConnectionClosed:
            pass
        await asyncio.wait_for(reader, 30)
    return transcript


def words_of(transcript: Transcript) -> list[dict]:
    return [w for m in transcript.finals for w in m["channel"]["alternatives"][0]["words"]]


def check_words(transcript: Transcript, utterance_count: int) -> None:
    """Every word once, in order, at its slot's session time (three words + a pause each)."""
    words = words_of(transcript)
    assert [w["word"] for w in words] == [f"w{n}" for n in range(1, 3 * utterance_count + 1)]
    for n, w in enumerate(words):
        slot = n // 3 * 4 + n % 3
        assert w["start"] == pytest.approx(slot * SLOT_SECONDS, abs=2e-3)


async def test_session_end_to_end_across_restarts(google_server, standin: GoogleStandIn) -> None:
    audio = synthetic_speech(utterances(20))  # 20 s; the stand-in ends calls after 8 s
    transcript = await stream_audio(google_server.url(provider="google", **PCM), chunked(audio, CHUNK))
    assert transcript.close_code == 1000
    metadata = transcript.messages[0]
    assert metadata["type"] == "Metadata" and metadata["provider"] == "google"
    check_words(transcript, 20)
    assert transcript.finals[0]["channel"]["alternatives"][0]["transcript"] == "w1 w2 w3"
    assert transcript.interims and transcript.interims[0]["stability"] == pytest.approx(0.8)
    assert len(standin.streams) >= 3
    assert standin.configs[0].config.language_code == "en-US"


async def test_webm_passes_through_the_server(google_server, standin: GoogleStandIn) -> None:
    webm = encode_opus("webm")
    standin.max_stream_seconds = 305  # the stand-in gives no finals for containers: no restarts here
    transcript = await stream_audio(google_server.url(provider="google", encoding="webm"), chunked(webm, 4800))
    assert transcript.close_code == 1000
    (stream,) = standin.streams
    assert stream.config.config.encoding == RecognitionConfig.AudioEncoding.WEBM_OPUS
    assert bytes(stream.audio) == webm
    assert transcript.text == f"container audio {len(webm)} bytes"


async def test_permanent_error_closes_1011_and_spares_other_sessions(google_server, standin: GoogleStandIn) -> None:
    standin.inject(grpc.StatusCode.PERMISSION_DENIED, "Cloud Speech API has not been used in project 42",
                   times=10)
    audio = synthetic_speech(utterances(4))
    google, other = await asyncio.gather(
        stream_until_closed(google_server.url(provider="google", **PCM), chunked(audio, CHUNK), 0.01),
        stream_until_closed(google_server.url(provider="null", **PCM), chunked(audio, CHUNK), 0.01),
    )
    (error,) = google.of_type("Error")
    assert error["code"] == "google_permission_denied"
    assert "PERMISSION_DENIED" in error["message"] and "has not been used" in error["message"]
    assert google.close_code == 1011
    assert other.close_code == 1000 and not other.of_type("Error")
    # The server goes on serving Google sessions once Google does.
    standin._injections.clear()
    after = await stream_audio(google_server.url(provider="google", **PCM), chunked(audio, CHUNK))
    assert after.close_code == 1000
    check_words(after, 4)


async def test_twenty_five_concurrent_google_sessions(google_server, standin: GoogleStandIn) -> None:
    audio = synthetic_speech(utterances(5))
    transcripts = await asyncio.gather(*(
        stream_audio(google_server.url(provider="google", **PCM), chunked(audio, CHUNK), delay=0.005)
        for _ in range(25)))
    for transcript in transcripts:
        assert transcript.close_code == 1000
        check_words(transcript, 5)
    assert len(standin.streams) == 25 and standin.max_active > 1
    for _ in range(100):  # the server's bookkeeping ends just after the close frames
        if google_server.server.active_sessions == 0:
            break
        await asyncio.sleep(0.05)
    assert google_server.server.active_sessions == 0
