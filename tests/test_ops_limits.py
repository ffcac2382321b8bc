"""Each limit on a live server (null engine: these are about the transport): session counts,
message sizes, idle and duration timeouts, handshake and ping timeouts, origins, and the
1013 close of a running session an engine refuses."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
import websockets
from conftest import deep_merge
from ops_support import NULL_ONLY
from support import Transcript, collect, stream_audio, wait_until

CHUNK = b"\0" * 3200


def null_server(make_server, **sections):
    return make_server(deep_merge(NULL_ONLY, sections))


async def refused(url: str, **kwargs) -> tuple[int, dict]:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url, **kwargs):
            pass
    response = info.value.response
    body = json.loads(bytes(response.body))
    return response.status_code, {**body, "retry_after": response.headers.get("Retry-After")}


async def test_total_session_limit_refuses_with_503(make_server) -> None:
    live = null_server(make_server, limits={"max_sessions": 2})
    async with websockets.connect(live.url()) as a, websockets.connect(live.url(token="nullonly")) as b:
        await a.recv(), await b.recv()
        status, body = await refused(live.url())
        assert (status, body["error"], body["retry_after"]) == (503, "server_session_limit", "5")
    await wait_until(lambda: live.server.active_sessions == 0, what="sessions to end")
    assert (await stream_audio(live.url(), [CHUNK])).close_code == 1000


async def test_per_token_default_and_the_token_file_wins(make_server) -> None:
    # Config default 1 per token; "single" has max_sessions=1 in the file, alice has none.
    live = null_server(make_server, limits={"max_sessions_per_token": 1})
    async with websockets.connect(live.url()) as first:
        await first.recv()
        status, body = await refused(live.url())
        assert (status, body["error"]) == (503, "token_session_limit")
        async with websockets.connect(live.url(token="nullonly")) as other:  # another token: fine
            await other.recv()
    # The file's max_sessions wins over the config default, both ways.
    live.token_file.write_text(live.token_file.read_text() + "two-token-0123456789 two max_sessions=2\n")
    async with websockets.connect(live.url(token="two-token-0123456789")) as a, \
            websockets.connect(live.url(token="two-token-0123456789")) as b:
        await a.recv(), await b.recv()
        assert (await refused(live.url(token="two-token-0123456789")))[0] == 503


async def test_oversized_base64_message_closes_1009(make_server) -> None:
    live = null_server(make_server, limits={"max_base64_message_bytes": 4096})
    small = json.dumps({"type": "Audio", "data": base64.b64encode(bytes(2000)).decode()})
    big = json.dumps({"type": "Audio", "data": base64.b64encode(bytes(4000)).decode()})
    transcript = await stream_audio(live.url(), [small, big], close=False)
    assert transcript.close_code == 1009 and transcript.close_reason.startswith("message_too_big")
    assert (await stream_audio(live.url(), [small])).close_code == 1000


async def test_oversized_binary_frame_closes_1009(make_server) -> None:
    live = null_server(make_server, server={"max_message_bytes": 8192})
    assert (await stream_audio(live.url(), [bytes(10_000)], close=False)).close_code == 1009


async def test_idle_session_closes_1011_and_keepalive_prevents_it(make_server) -> None:
    live = null_server(make_server, limits={"idle_timeout_seconds": 0.6})
    began = time.monotonic()
    transcript = await stream_audio(live.url(), [CHUNK], close=False)
    assert transcript.close_code == 1011
    assert transcript.close_reason == "idle_timeout: no audio or KeepAlive for 0.6 s"
    assert 0.5 < time.monotonic() - began < 5
    # KeepAlive every 0.3 s for 1.5 s: no idle close.
    frames = [CHUNK, *['{"type":"KeepAlive"}'] * 5]
    assert (await stream_audio(live.url(), frames, delay=0.3)).close_code == 1000


async def test_max_session_duration_closes_1008(make_server) -> None:
    live = null_server(make_server, limits={"max_session_seconds": 0.8})
    transcript = await stream_audio(live.url(), [CHUNK] * 5, delay=0.05, close=False)
    assert transcript.close_code == 1008
    assert transcript.close_reason == "max_duration: sessions are limited to 0.8 s"


async def test_handshake_timeout_drops_a_silent_connection(make_server) -> None:
    live = null_server(make_server, limits={"handshake_timeout_seconds": 0.5})
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    began = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed without a word
    assert time.monotonic() - began < 5
    writer.close()


async def test_unanswered_pings_close_the_session(make_server) -> None:
    live = null_server(make_server, limits={"ping_interval_seconds": 0.3, "ping_timeout_seconds": 0.3,
                                            "close_timeout_seconds": 0.5, "idle_timeout_seconds": 0})
    # A client that never reads cannot answer pings: a raw upgrade over a socket, then silence.
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write((f"GET /v1/listen?token={live.tokens['alice']} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101")
    await wait_until(lambda: live.server.active_sessions == 1, what="session to open")
    await wait_until(lambda: live.server.active_sessions == 0, timeout=5, what="ping timeout to close it")
    writer.close()


async def test_allowed_origins(make_server) -> None:
    live = null_server(make_server, limits={"allowed_origins": ["https://app.example"]})
    status, body = await refused(live.url(), origin="https://evil.example")
    assert (status, body["error"]) == (403, "origin_forbidden")
    assert (await stream_audio(live.url(), [CHUNK], origin="https://app.example")).close_code == 1000
    assert (await stream_audio(live.url(), [CHUNK])).close_code == 1000  # no Origin: not a browser


async def test_engine_at_capacity_closes_a_running_session_1013(make_server) -> None:
    live = make_server(deep_merge(NULL_ONLY, {"providers": {"busy": {"module": "ops_providers:BusyProvider"}}}))
    transcript = Transcript()
    async with websockets.connect(live.url(provider="busy")) as ws:
        await collect(ws, transcript)
    assert transcript.close_code == 1013 and transcript.close_reason == "engine_busy"
    assert [m["code"] for m in transcript.of_type("Error")] == ["engine_busy"]
