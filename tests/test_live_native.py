"""The foundation end to end: a real server, real websocket connections, the real Whisper
engine on real speech (jfk.flac), over the native /v1/listen protocol."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys

import pytest
import websockets
from support import (
    JFK_FLAC,
    JFK_TEXT,
    Transcript,
    as_base64_frame,
    chunked,
    collect,
    load_pcm16,
    stream_audio,
    wait_until,
    wer,
)

from stt_server.logs import configure

CHUNK = 3200  # 100 ms of 16 kHz PCM16


@pytest.fixture(scope="module")
def jfk_pcm() -> bytes:
    return load_pcm16(JFK_FLAC)


async def test_jfk_binary_frames(live_server, jfk_pcm: bytes) -> None:
    transcript = await stream_audio(live_server.url(), chunked(jfk_pcm, CHUNK))
    assert transcript.close_code == 1000
    metadata = transcript.messages[0]
    assert metadata["type"] == "Metadata" and metadata["provider"] == "whisper"
    score = wer(JFK_TEXT, transcript.text)
    print(f"WER binary: {score:.3f} text={transcript.text!r}")
    assert score <= 0.15
    words = [w for m in transcript.finals for w in m["channel"]["alternatives"][0]["words"]]
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] <= 11.5


async def test_jfk_base64_frames(live_server, jfk_pcm: bytes) -> None:
    frames = [as_base64_frame(c) for c in chunked(jfk_pcm, CHUNK)]
    transcript = await stream_audio(live_server.url(), frames)
    assert transcript.close_code == 1000
    assert wer(JFK_TEXT, transcript.text) <= 0.15


async def test_interim_results_arrive_before_the_final(live_server, jfk_pcm: bytes) -> None:
    # Paced at twice real time, as a live client would send (faster, to keep the test short).
    # Endpointing off: the whole clip is one utterance, so interims have 5 s to appear even
    # when a loaded machine thins them out.
    transcript = await stream_audio(live_server.url(endpointing="false"), chunked(jfk_pcm, CHUNK), delay=0.05)
    results = transcript.of_type("Results")
    first_final = next(i for i, m in enumerate(results) if m["is_final"])
    assert any(not m["is_final"] and m["channel"]["alternatives"][0]["transcript"] for m in results[:first_final])
    assert wer(JFK_TEXT, transcript.text) <= 0.15


async def test_interim_results_false_sends_finals_only(live_server, jfk_pcm: bytes) -> None:
    transcript = await stream_audio(live_server.url(interim_results="false"), chunked(jfk_pcm, CHUNK),
                                    delay=0.05)
    assert transcript.finals and not transcript.interims


async def test_finalize_flushes_the_utterance(live_server, jfk_pcm: bytes) -> None:
    async with websockets.connect(live_server.url(endpointing="false")) as ws:
        transcript = Transcript()
        reader = asyncio.create_task(collect(ws, transcript))
        for chunk in chunked(jfk_pcm[: 16000 * 2 * 4], CHUNK):  # "And so my fellow Americans"
            await ws.send(chunk)
        await ws.send('{"type":"Finalize"}')
        for _ in range(300):
            if transcript.finals:
                break
            await asyncio.sleep(0.1)
        assert transcript.finals, "no final after Finalize while the stream stays open"
        assert "americans" in transcript.text.lower()
        await ws.send('{"type":"CloseStream"}')
        await asyncio.wait_for(reader, 60)
    assert transcript.close_code == 1000


async def test_bad_json_gets_an_error_and_the_session_goes_on(live_server, jfk_pcm: bytes) -> None:
    frames: list[bytes | str] = ["{not json", '{"type":"Audio","data":"!!"}', '{"type":"Dance"}',
                                 *chunked(jfk_pcm, CHUNK)]
    transcript = await stream_audio(live_server.url(), frames)
    codes = [m["code"] for m in transcript.of_type("Error")]
    assert codes == ["bad_json", "bad_base64", "unknown_type"]
    assert transcript.close_code == 1000
    assert wer(JFK_TEXT, transcript.text) <= 0.15


async def test_silence_produces_no_text(live_server) -> None:
    transcript = await stream_audio(live_server.url(), chunked(bytes(32000 * 4), CHUNK))
    assert transcript.close_code == 1000
    assert transcript.text == ""


@pytest.mark.parametrize("how", ["query", "bearer", "token_header", "subprotocol"])
async def test_three_ways_to_pass_a_token(live_server, how: str) -> None:
    token = live_server.tokens["alice"]
    kwargs: dict = {}
    url = live_server.url(token=None, provider="null")
    if how == "query":
        url = live_server.url(provider="null")
    elif how == "bearer":
        kwargs["additional_headers"] = {"Authorization": f"Bearer {token}"}
    elif how == "token_header":
        kwargs["additional_headers"] = {"Authorization": f"Token {token}"}
    else:
        kwargs["subprotocols"] = ["token", token]
    async with websockets.connect(url, **kwargs) as ws:
        metadata = json.loads(await ws.recv())
        assert metadata["type"] == "Metadata"
        if how == "subprotocol":
            assert ws.subprotocol == "token"


@pytest.mark.parametrize(
    ("path", "token", "params", "status", "parameter"),
    [
        ("/v1/listen", "alice", {"sample_rate": "fast"}, 400, "sample_rate"),
        ("/v1/listen", "alice", {"provider": "nope"}, 400, "provider"),
        ("/v1/listen", "alice", {"encoding": "pcm99"}, 400, "encoding"),
        ("/v1/listen", "alice", {"language": "fr-FR"}, 400, "language"),  # tiny.en is English-only
        ("/v1/listen", None, {}, 401, None),
        ("/v1/listen", "not-a-real-token", {}, 401, None),
        ("/v1/listen", "nullonly", {"provider": "whisper"}, 403, None),
        ("/v2/nothing", "alice", {}, 404, None),
    ],
)
async def test_refused_before_the_upgrade(live_server, path, token, params, status, parameter) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(live_server.url(path, token=token, **params)):
            pass
    response = info.value.response
    assert response.status_code == status
    body = json.loads(bytes(response.body))
    assert body["message"]
    if parameter:
        assert body["parameter"] == parameter


async def test_per_token_session_limit(live_server) -> None:
    async with websockets.connect(live_server.url(token="single", provider="null")) as first:
        await first.recv()
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(live_server.url(token="single", provider="null")):
                pass
        assert info.value.response.status_code == 503
    # The slot is free again once the first session has ended.
    for _ in range(50):
        try:
            async with websockets.connect(live_server.url(token="single", provider="null")) as again:
                await again.recv()
            break
        except websockets.InvalidStatus:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("the per-token slot was never released")


async def test_huge_frame_closes_with_1009_and_server_lives_on(make_server, jfk_pcm: bytes) -> None:
    live = make_server({"server": {"max_message_bytes": 65536, "default_provider": "null"},
                        "providers": {"whisper": {"enabled": False}}})
    transcript = await stream_audio(live.url(provider="null"), [bytes(200_000)], close=False)
    assert transcript.close_code == 1009
    transcript = await stream_audio(live.url(provider="null"), [bytes(1000)])
    assert transcript.close_code == 1000


async def test_client_vanishing_mid_stream_leaves_others_served(live_server, jfk_pcm: bytes) -> None:
    ws = await websockets.connect(live_server.url())
    for chunk in chunked(jfk_pcm[: len(jfk_pcm) // 2], CHUNK):
        await ws.send(chunk)
    ws.transport.abort()  # no close frame: the TCP connection just drops
    transcript = await stream_audio(live_server.url(), chunked(jfk_pcm, CHUNK))
    assert wer(JFK_TEXT, transcript.text) <= 0.15
    await wait_until(lambda: live_server.server.active_sessions == 0, timeout=20, what="no open sessions")


async def test_token_file_reloads_on_change(live_server) -> None:
    original = live_server.token_file.read_text()
    url = live_server.url(token="fresh-token-for-reload", provider="null")
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(url):
            pass
    try:
        live_server.token_file.write_text(original + "fresh-token-for-reload reloaded\n")
        os.utime(live_server.token_file, ns=(10**18, 10**18))  # a distinct mtime even on coarse clocks
        async with websockets.connect(url) as ws:
            assert json.loads(await ws.recv())["type"] == "Metadata"
    finally:
        live_server.token_file.write_text(original)
        os.utime(live_server.token_file, ns=(2 * 10**18, 2 * 10**18))
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(url):
            pass


async def test_no_token_in_log_output(live_server, jfk_pcm: bytes) -> None:
    buffer = io.StringIO()
    configure("debug", "console", stream=buffer)
    try:
        token = live_server.tokens["alice"]
        await stream_audio(live_server.url(), chunked(jfk_pcm[:32000], CHUNK))
        await stream_audio(live_server.url(token=None, provider="null"), [b"\0" * 100],
                           additional_headers={"Authorization": f"Bearer {token}"})
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(live_server.url(token="wrong-secret-value-123")):
                pass
        await asyncio.sleep(0.2)
    finally:
        configure("info", "console")
        logging.getLogger().handlers[0].flush()
    output = buffer.getvalue()
    assert "session closed" in output and "token_name=alice" in output
    assert token not in output and "wrong-secret-value-123" not in output


@pytest.mark.parametrize("mode", [["--pcm"], []], ids=["pcm", "file-container"])
async def test_stt_client_transcribes_a_file(live_server, mode: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stt_server.client", "--url", live_server.base_url,
        "--token", live_server.tokens["alice"], "--speed", "0", *mode, str(JFK_FLAC),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()
    assert wer(JFK_TEXT, stdout.decode()) <= 0.15


async def test_stt_client_reports_a_refusal(live_server) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stt_server.client", "--url", live_server.base_url, "--token", "bad-token",
        "--pcm", str(JFK_FLAC), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3
    assert b"HTTP 401" in stderr and b"unknown token" in stderr
