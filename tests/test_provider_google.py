"""The Google provider driven directly, with the real google-cloud-speech async client talking
gRPC to the local stand-in (tests/google_standin.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from google.cloud.speech_v1 import RecognitionConfig
from google_standin import (
    SLOT_SECONDS,
    GoogleStandIn,
    encode_opus,
    synthetic_speech,
    utterances,
)
from test_google_resend import decoded_seconds

from stt_server.audio_format import AudioFormat
from stt_server.config import build
from stt_server.errors import ConfigError, ProviderError
from stt_server.providers.google import GoogleOptions, GoogleProvider
from stt_server.results import Result
from stt_server.session import Endpoint, SessionParams

PCM16K = AudioFormat("linear16", 16_000, 1)


@pytest.fixture
async def standin() -> AsyncIterator[GoogleStandIn]:
    async with GoogleStandIn() as server:
        yield server


async def started(standin: GoogleStandIn, **options: object) -> GoogleProvider:
    opts = {"api_endpoint": standin.address, "insecure": True, "pace_realtime": False,
            "retry_backoff_seconds": 0.05, **options}
    provider = GoogleProvider(GoogleOptions(**opts))  # type: ignore[arg-type]
    await provider.start()
    return provider


def session(audio: AudioFormat = PCM16K, **fields: object) -> SessionParams:
    values = {"endpoint": Endpoint.NATIVE, "provider": "google", "language": "en-US", "audio": audio,
              "interim_results": True, "punctuate": True, "words": True, "endpointing_ms": 800, **fields}
    return SessionParams(**values)  # type: ignore[arg-type]


async def transcribe(provider: GoogleProvider, params: SessionParams, audio: bytes, *,
                     chunk: int = 3_200, delay: float = 0.0) -> list[Result]:
    """Send ``audio`` as a client would (in chunks), close, and collect every result."""
    stream = provider.open_stream(params, provider.input_format(params.audio))
    results: list[Result] = []

    async def collect() -> None:
        async for result in stream.results():
            results.append(result)

    collector = asyncio.create_task(collect())
    for i in range(0, len(audio), chunk):
        await stream.send_audio(audio[i:i + chunk])
        await asyncio.sleep(delay)
    await stream.close()
    async with asyncio.timeout(60):
        await collector
    return results


def finals(results: list[Result]) -> list[Result]:
    return [r for r in results if r.is_final]


def expected_words(count: int) -> list[str]:
    return [f"w{n}" for n in range(1, 3 * count + 1)]


def check_words(results: list[Result], count: int) -> None:
    """Every word once, in order, at the session time of its slot; finals contiguous."""
    words = [w for r in finals(results) for w in r.words]
    assert [w.word for w in words] == expected_words(count)
    for w in words:
        n = int(w.word[1:]) - 1
        slot = n // 3 * 4 + n % 3  # three words then a silent slot per utterance
        assert w.start == pytest.approx(slot * SLOT_SECONDS, abs=1e-3)
        assert w.end == pytest.approx((slot + 1) * SLOT_SECONDS, abs=1e-3)
    ends = [r.end for r in finals(results)]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    for previous, result in zip(finals(results), finals(results)[1:]):
        assert result.start == previous.end


async def test_end_to_end(standin: GoogleStandIn) -> None:
    provider = await started(standin)
    audio = synthetic_speech(utterances(10))
    results = await transcribe(provider, session(), audio)
    await provider.stop()

    assert [r.text for r in finals(results)][:2] == ["w1 w2 w3", "w4 w5 w6"]
    check_words(results, 10)
    assert all(r.confidence == pytest.approx(0.9) and r.speech_final for r in finals(results)[:-1])
    last_final_end = 0.0
    for r in results:  # in emitted order: an interim always continues after the latest final
        assert r.start == pytest.approx(last_final_end)
        if r.is_final:
            last_final_end = r.end
    interim = [r for r in results if not r.is_final]
    assert interim and interim[0].text == "w1" and interim[0].stability == pytest.approx(0.8)
    (stream,) = standin.streams
    assert bytes(stream.audio) == audio and stream.half_closed and stream.status == "ok"
    assert stream.largest_request <= 15_000
    config = stream.config
    assert config.interim_results and not config.single_utterance
    rc = config.config
    assert (rc.encoding, rc.sample_rate_hertz, rc.audio_channel_count) == (RecognitionConfig.AudioEncoding.LINEAR16,
                                                                          16_000, 1)
    assert rc.language_code == "en-US" and rc.enable_word_time_offsets and rc.enable_automatic_punctuation


async def test_session_switches_and_options_reach_the_config(standin: GoogleStandIn) -> None:
    provider = await started(standin, model="latest_long", profanity_filter=True, phrase_hints=("w7", "w8"),
                             phrase_boost=5.0, max_request_bytes=4_000)
    params = session(language="de-DE", interim_results=False, punctuate=False, model="phone_call")
    results = await transcribe(provider, params, synthetic_speech(utterances(3)), chunk=10_000)
    await provider.stop()
    assert all(r.is_final for r in results) and len(results) == 3
    (stream,) = standin.streams
    rc = stream.config.config
    assert rc.language_code == "de-DE" and rc.model == "phone_call" and rc.profanity_filter
    assert not rc.enable_automatic_punctuation and not stream.config.interim_results
    assert list(rc.speech_contexts[0].phrases) == ["w7", "w8"] and rc.speech_contexts[0].boost == 5.0
    assert stream.largest_request <= 4_000


@pytest.mark.parametrize("how", ["out_of_range", "planned"])
async def test_thirty_seconds_across_restarts(how: str) -> None:
    """Restarts on OUT_OF_RANGE (Google's limit made 8 s), or planned after 3 s of audio."""
    async with GoogleStandIn(max_stream_seconds=8 if how == "out_of_range" else 305) as standin:
        restart_after = 3.0 if how == "planned" else 240.0
        provider = await started(standin, restart_after_seconds=restart_after)
        # Planned restarts need time to pass: send at ten times real time, as a fast client would.
        delay = 0.01 if how == "planned" else 0.0
        results = await transcribe(provider, session(), synthetic_speech(utterances(30)), delay=delay)
        await provider.stop()

    assert len(standin.streams) >= 4  # at least three restarts
    check_words(results, 30)
    statuses = {s.status for s in standin.streams}
    if how == "planned":  # ended by the provider at a final
        assert statuses <= {"ok", "cancelled", "open"} and standin.streams[-1].status == "ok"
    else:
        assert "OUT_OF_RANGE" in statuses
    # Re-sent audio: each call began at the previous call's last final.
    assert sum(len(s.audio) for s in standin.streams) >= 30 * 16_000 * 2


async def test_single_utterance_calls_follow_one_another(standin: GoogleStandIn) -> None:
    provider = await started(standin, single_utterance=True)
    results = await transcribe(provider, session(), synthetic_speech(utterances(5)), delay=0.01)
    await provider.stop()
    check_words(results, 5)
    assert standin.configs[0].single_utterance and len(standin.streams) >= 5


async def test_webm_opus_passes_through(standin: GoogleStandIn) -> None:
    provider = await started(standin)
    webm = encode_opus("webm")
    params = session(AudioFormat("webm"))
    assert provider.input_format(params.audio) == params.audio
    results = await transcribe(provider, params, webm, chunk=4_800)
    await provider.stop()
    (stream,) = standin.streams
    rc = stream.config.config
    assert rc.encoding == RecognitionConfig.AudioEncoding.WEBM_OPUS and rc.sample_rate_hertz == 48_000
    assert bytes(stream.audio) == webm
    assert [r.text for r in finals(results)] == [f"container audio {len(webm)} bytes"]


async def test_webm_restart_resends_a_decodable_stream(standin: GoogleStandIn) -> None:
    """A planned restart mid-WebM: the next call gets the header, a Cluster and the blocks."""
    provider = await started(standin, restart_after_seconds=1.0)
    webm = encode_opus("webm")  # 11 s
    await transcribe(provider, session(AudioFormat("webm")), webm, chunk=4_800, delay=0.05)
    await provider.stop()
    assert len(standin.streams) >= 3
    covered = 0.0
    for stream in standin.streams:
        audio = bytes(stream.audio)
        assert audio.startswith(b"\x1a\x45\xdf\xa3")  # EBML header
        _, seconds = decoded_seconds(audio)
        assert seconds > 0
        covered += seconds
    assert covered >= 11.0  # every call decodes, together they cover the session (with re-sends)


def test_formats_google_cannot_take_are_decoded() -> None:
    provider = GoogleProvider(GoogleOptions())
    for fmt in (AudioFormat("auto"), AudioFormat("mp3"), AudioFormat("flac"), AudioFormat("wav"),
                AudioFormat("float32", 16_000), AudioFormat("linear16", 96_000), AudioFormat("alaw", 8_000)):
        assert provider.input_format(fmt) == AudioFormat("linear16", 16_000, 1), fmt
    for fmt in (AudioFormat("ogg"), AudioFormat("mulaw", 8_000), AudioFormat("linear16", 44_100, 2)):
        assert provider.input_format(fmt) == fmt


@pytest.mark.parametrize("status,code", [
    (grpc.StatusCode.INVALID_ARGUMENT, "google_invalid_argument"),
    (grpc.StatusCode.PERMISSION_DENIED, "google_permission_denied"),
    (grpc.StatusCode.UNAUTHENTICATED, "google_unauthenticated"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "google_resource_exhausted"),
])
async def test_permanent_errors_end_the_session(standin: GoogleStandIn, status: grpc.StatusCode,
                                                code: str) -> None:
    provider = await started(standin)
    standin.inject(status, f"stand-in says {status.name.lower()}", times=10)
    with pytest.raises(ProviderError) as info:
        await transcribe(provider, session(), synthetic_speech(utterances(4)))
    await provider.stop()
    assert info.value.code == code and info.value.close_code == 1011
    assert status.name in info.value.message and "stand-in says" in info.value.message
    assert len(standin.streams) <= 2  # at most one retry, after grpc.aio lost the status


async def test_transient_error_is_retried(standin: GoogleStandIn) -> None:
    provider = await started(standin)
    standin.inject(grpc.StatusCode.UNAVAILABLE, "connection reset", after_bytes=48_000)
    results = await transcribe(provider, session(), synthetic_speech(utterances(6)))
    await provider.stop()
    check_words(results, 6)
    assert len(standin.streams) == 2 and standin.streams[1].status == "ok"


async def test_transient_errors_give_up_after_max_retries(standin: GoogleStandIn) -> None:
    provider = await started(standin, max_retries=2)
    standin.inject(grpc.StatusCode.UNAVAILABLE, "down for maintenance", times=10)
    with pytest.raises(ProviderError) as info:
        await transcribe(provider, session(), synthetic_speech(utterances(2)))
    await provider.stop()
    assert info.value.code in ("google_unavailable", "google_internal")
    assert len(standin.streams) == 3


async def test_finalize_closes_the_utterance(standin: GoogleStandIn) -> None:
    provider = await started(standin)
    stream = provider.open_stream(session(), PCM16K)
    await stream.send_audio(synthetic_speech([1, 2, None, 3, 4]))
    results: list[Result] = []
    async with asyncio.timeout(10):
        async for result in stream.results():
            results.append(result)
            if result.text == "w3 w4":
                break
        await stream.finalize()
        async for result in stream.results():
            results.append(result)
            if result.is_final:
                break
    forced = finals(results)[-1]
    assert forced.text == "w3 w4" and not forced.speech_final
    assert finals(results)[0].speech_final
    await stream.send_audio(synthetic_speech([None, 5, None]))
    await stream.close()
    async with asyncio.timeout(10):
        rest = [r async for r in stream.results()]
    await provider.stop()
    assert finals(rest)[-1].text == "w5" and finals(rest)[-1].words[0].start == pytest.approx(6 * SLOT_SECONDS)
    assert len(standin.streams) == 2


async def test_audio_is_paced_at_real_time(standin: GoogleStandIn) -> None:
    provider = await started(standin, pace_realtime=True)
    began = time.monotonic()
    results = await transcribe(provider, session(), synthetic_speech(utterances(3)))  # 3 s
    elapsed = time.monotonic() - began
    await provider.stop()
    check_words(results, 3)
    assert 1.7 <= elapsed <= 6  # 3 s of audio less the 1 s burst allowance


async def test_twenty_five_concurrent_sessions(standin: GoogleStandIn) -> None:
    provider = await started(standin)
    audio = synthetic_speech(utterances(5))
    outcomes = await asyncio.gather(*(transcribe(provider, session(), audio) for _ in range(25)))
    await provider.stop()
    for results in outcomes:
        check_words(results, 5)
    assert len(standin.streams) == 25 and standin.max_active > 1


async def test_credentials_problems_are_named(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ProviderError) as info:
        await GoogleProvider(GoogleOptions(credentials_file=str(tmp_path / "missing.json"))).start()
    assert info.value.code == "google_credentials" and "missing.json" in info.value.message
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "adc.json"))
    with pytest.raises(ProviderError) as info:
        await GoogleProvider(GoogleOptions()).start()
    assert info.value.code == "google_credentials" and "GOOGLE_APPLICATION_CREDENTIALS" in info.value.message


@pytest.mark.parametrize("options,key", [
    ({"insecure": True}, "providers.google"),
    ({"max_request_bytes": 30_000}, "providers.google"),
    ({"restart_after_seconds": 300}, "providers.google"),
    ({"phrase_hints": "w1"}, "providers.google.phrase_hints"),
    ({"restart_after": 100}, "providers.google.restart_after"),
])
def test_bad_options_are_config_errors(options: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(GoogleOptions, options, key="providers.google", source="config.yaml")
    assert f"config.yaml: {key}" in info.value.message
