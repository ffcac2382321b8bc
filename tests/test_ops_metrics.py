"""/healthz, /readyz and /metrics on the session port: metrics are parsed with
prometheus_client's own parser and checked against what a real Whisper session did."""

from __future__ import annotations

import json

import pytest
import websockets
from conftest import deep_merge
from ops_support import NULL_ONLY, http_get, metric, scrape
from support import JFK_FLAC, chunked, load_pcm16, stream_audio

CHUNK = 3200


@pytest.fixture(scope="module")
def jfk_pcm() -> bytes:
    return load_pcm16(JFK_FLAC)


async def test_metrics_match_what_a_session_did(make_server, jfk_pcm: bytes) -> None:
    live = make_server()  # whisper and null, fresh registry
    frames: list[bytes | str] = ["{not json", *chunked(jfk_pcm, CHUNK)]
    transcript = await stream_audio(live.url(interim_results="false"), frames)
    assert transcript.close_code == 1000 and transcript.finals
    with pytest.raises(websockets.InvalidStatus):  # an auth failure
        async with websockets.connect(live.url(token="not-a-real-token-123")):
            pass
    wav_header = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(3000)  # a container sent as raw PCM
    bad = await stream_audio(live.url(provider="null", **{"encoding": "linear16"}), [wav_header], close=False)

    samples = scrape(live.http_url)
    m = lambda name, **labels: metric(samples, name, **labels)  # noqa: E731
    assert m("stt_sessions_opened_total", provider="whisper", protocol="native") == 1
    assert m("stt_sessions_closed_total", provider="whisper", protocol="native", code="1000") == 1
    assert m("stt_sessions_active", provider="whisper", protocol="native") == 0
    assert m("stt_audio_bytes_total", provider="whisper") == len(jfk_pcm)
    assert m("stt_audio_seconds_total", provider="whisper") == pytest.approx(len(jfk_pcm) / 32000)
    assert m("stt_messages_received_total", provider="whisper") == len(frames) + 1  # + CloseStream
    finals = len(transcript.finals)
    assert m("stt_results_sent_total", provider="whisper", kind="final") == finals
    assert m("stt_results_sent_total", provider="whisper", kind="interim") == 0
    assert m("stt_result_latency_seconds_count", provider="whisper", kind="final") == finals
    latency_sum = m("stt_result_latency_seconds_sum", provider="whisper", kind="final")
    assert 0 < latency_sum < 60 * finals
    assert m("stt_errors_total", code="bad_json") == 1
    assert m("stt_auth_failures_total", code="token_invalid") == 1
    assert m("stt_errors_total", code="token_invalid") == 1
    if bad.close_code == 1008:  # raw decoding, not pass-through
        assert m("stt_decode_errors_total", provider="null") == 1
        assert m("stt_sessions_closed_total", provider="null", protocol="native", code="1008") == 1
    assert m("stt_provider_inference_seconds_count", provider="whisper") >= finals  # one decode per final at least
    assert 0 < m("stt_provider_inference_seconds_sum", provider="whisper") < 60
    assert m("stt_draining") == 0


async def test_health_and_readiness(make_server) -> None:
    live = make_server(NULL_ONLY)
    assert http_get(f"{live.http_url}/healthz")[0] == 200
    status, _, body = http_get(f"{live.http_url}/readyz")
    assert (status, json.loads(body)["status"]) == (200, "ready")
    live.call(live.server.drain(timeout=5))
    # Drained and stopped: nothing listens any more; readiness during a drain is in test_ops_drain.


@pytest.mark.parametrize(("metrics", "headers", "status"), [
    ({"allow_from": ["10.0.0.0/8"]}, {}, 403),
    ({"allow_from": []}, {}, 200),
    ({"require_token": True}, {}, 401),
    ({"require_token": True}, {"Authorization": "Bearer alice-token-0123456789"}, 200),
    ({"enabled": False}, {}, 404),  # no /metrics: just an unknown path
])
async def test_metrics_access_is_restricted_by_config(make_server, metrics, headers, status) -> None:
    live = make_server(deep_merge(NULL_ONLY, {"metrics": metrics}))
    code, response_headers, body = http_get(f"{live.http_url}/metrics", headers)
    assert code == status, body
    if status == 200:
        assert response_headers["Content-Type"].startswith("text/plain") and b"stt_sessions_opened" in body
