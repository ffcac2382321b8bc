"""Hostile and broken input against a live server: each gets a clear answer, and neither the
server nor other sessions are harmed."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.error
import urllib.request

import pytest
import websockets
from support import JFK_FLAC, JFK_TEXT, chunked, load_pcm16, stream_audio, wer


async def healthy(live) -> None:
    transcript = await stream_audio(live.url(provider="null"), [b"\0" * 3200])
    assert transcript.close_code == 1000


async def test_plain_http_on_the_websocket_path_releases_the_session_slot(live_server) -> None:
    url = live_server.url(token="single", provider="null").replace("ws://", "http://")
    for _ in range(3):  # the "single" token allows one session: a leaked slot would show at once
        with pytest.raises(urllib.error.HTTPError) as info:
            await asyncio.to_thread(urllib.request.urlopen, url, timeout=10)
        assert info.value.code in (400, 426)
    async with websockets.connect(live_server.url(token="single", provider="null")) as ws:
        assert json.loads(await ws.recv())["type"] == "Metadata"


async def test_raw_garbage_instead_of_a_handshake(live_server) -> None:
    for junk in (b"GARBAGE\r\n\r\n", b"\x16\x03\x01\x02\x00" + bytes(200), b"GET /v1/listen HTTP/1.1\r\n" * 50):
        reader, writer = await asyncio.open_connection("127.0.0.1", live_server.port)
        writer.write(junk)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(200), 15)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
        writer.close()
    await healthy(live_server)


@pytest.mark.parametrize("query", ["%zz=1", "token=%ff%fe", "language=%00", "&&&&", "=", "sample_rate=1e9",
                                   "channels=" + "9" * 400])
async def test_malformed_queries_get_a_status_not_a_crash(live_server, query: str) -> None:
    url = f"{live_server.base_url}/v1/listen?{query}"
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url):
            pass
    assert info.value.response.status_code in (400, 401)
    await healthy(live_server)


async def test_random_frames_are_answered_and_other_sessions_unharmed(live_server) -> None:
    rng = random.Random(1234)
    frames: list[bytes | str] = []
    for _ in range(60):
        kind = rng.choice(["bytes", "text", "json"])
        if kind == "bytes":
            frames.append(rng.randbytes(rng.randint(1, 5000)))
        elif kind == "text":
            frames.append("".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 200))))
        else:
            frames.append(json.dumps({"type": rng.choice(["Audio", "KeepAlive", "Nope", None, 5]),
                                      "data": rng.choice(["!!", "AAAA", 7, None, "data:x;base64,QUJD"])}))
    pcm = load_pcm16(JFK_FLAC)
    noisy, clean = await asyncio.gather(
        stream_audio(live_server.url(provider="whisper"), frames),
        stream_audio(live_server.url(), chunked(pcm, 3200)),
    )
    # Random bytes are valid linear16 noise: no text, and the session ends normally.
    assert noisy.close_code == 1000
    assert {m["code"] for m in noisy.of_type("Error")} <= {"bad_json", "bad_base64", "unknown_type"}
    assert noisy.of_type("Error"), "malformed text frames must be answered"
    assert wer(JFK_TEXT, clean.text) <= 0.15


@pytest.mark.parametrize("encoding", ["webm", "ogg", "mp3", "flac", "wav", "auto"])
async def test_garbage_in_every_container_is_refused_cleanly(live_server, encoding: str) -> None:
    garbage = random.Random(encoding).randbytes(64 * 1024)
    transcript = await stream_audio(live_server.url(encoding=encoding), chunked(garbage, 4096))
    assert transcript.close_code == 1008
    assert [m["code"] for m in transcript.of_type("Error")][-1] in ("undecodable_audio", "encoding_mismatch")
    await healthy(live_server)
