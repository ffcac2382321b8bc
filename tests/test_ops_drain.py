"""Graceful drain with 20 live Whisper streams: every stream is told, every final for the
audio already received arrives, every stream closes 1001, and nothing new is accepted."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from typing import Any

import pytest
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.uri import parse_uri
from ops_support import NULL_ONLY, http_get
from support import (
    JFK_FLAC,
    Transcript,
    chunked,
    collect,
    load_pcm16,
    normalize,
    stream_audio,
    wait_until,
)

STREAMS = 20
CHUNK = 3200


@pytest.fixture(scope="module")
def short_pcm() -> bytes:
    """The first ~4.5 s of jfk: "And so my fellow Americans, ask not..." (short: 2 cores, 20 streams)."""
    return load_pcm16(JFK_FLAC)[: 16000 * 2 * 9 // 2]


def words(transcript: Transcript) -> list[str]:
    return normalize(transcript.text)


async def open_stream(url: str, pcm: bytes) -> tuple[websockets.ClientConnection, Transcript, asyncio.Task]:
    ws = await websockets.connect(url, max_size=None)
    transcript = Transcript()
    reader = asyncio.create_task(collect(ws, transcript))
    for chunk in chunked(pcm, CHUNK):
        await ws.send(chunk)
    return ws, transcript, reader


async def test_drain_during_20_live_streams_loses_no_final(make_server, short_pcm: bytes) -> None:
    live = make_server({"limits": {"max_sessions": 64}})
    url = live.url(interim_results="false")
    reference = await stream_audio(url, chunked(short_pcm, CHUNK))
    assert reference.close_code == 1000 and reference.finals
    expected = len(reference.finals)

    streams = await asyncio.gather(*(open_stream(url, short_pcm) for _ in range(STREAMS)))
    # Everything has been sent; wait until the server has read it all (it has "received" it).
    runners = live.server.open_sessions
    await wait_until(lambda: len(runners()) == STREAMS and all(r.stats.bytes_in == len(short_pcm)
                                                               for r in runners()), what="all audio read")
    loop = asyncio.get_running_loop()
    began = time.monotonic()
    drained = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(live.server.drain(120), live.loop))
    await wait_until(lambda: live.server.draining, what="drain to start")
    # While draining: readiness fails and new sessions are refused with 503.
    status, _, body = await loop.run_in_executor(None, http_get, f"{live.http_url}/readyz")
    assert status == 503 and "draining for shutdown" in json.loads(body)["reasons"]
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url):
            pass
    assert info.value.response.status_code == 503
    assert json.loads(bytes(info.value.response.body))["error"] == "draining"

    assert await asyncio.wait_for(drained, 150) is True
    elapsed = time.monotonic() - began
    await asyncio.gather(*(asyncio.wait_for(reader, 30) for _, _, reader in streams))
    total = 0
    for _, transcript, _ in streams:
        types = [m["type"] for m in transcript.messages]
        # Nothing Deepgram's SDKs could not type: the opening Metadata, results, the closing Metadata.
        assert types[0] == "Metadata" and types[-1] == "Metadata"
        assert all(t == "Results" for t in types[1:-1])
        assert transcript.close_code == 1001, transcript.close_reason
        assert len(transcript.finals) == expected
        assert words(transcript) == words(reference)
        total += len(transcript.finals)
    assert total == STREAMS * expected
    print(f"drained {STREAMS} streams, {total} finals, in {elapsed:.1f} s")


async def test_drain_timeout_cuts_what_cannot_finish(make_server) -> None:
    # More than can be transcribed in a second, even on a fast machine: the full-window decoder.
    live = make_server({"providers": {"whisper": {"full_window": True}}, "limits": {"max_backlog_seconds": 120}})
    pcm = load_pcm16(JFK_FLAC)
    ws, transcript, reader = await open_stream(live.url(), pcm * 6)  # 66 s of speech
    await wait_until(lambda: any(r.stats.bytes_in == 6 * len(pcm) for r in live.server.open_sessions()),
                     what="all audio read")
    began = time.monotonic()
    finished = await asyncio.get_running_loop().run_in_executor(None, live.call, live.server.drain(1.0))
    assert finished is False and time.monotonic() - began < 3
    await asyncio.wait_for(reader, 10)
    # Not a plain 1001: the Error, the closing Metadata and the close reason say what was lost.
    assert transcript.close_code == 1001 and transcript.close_reason.startswith("untranscribed_audio"), (
        transcript.close_reason)
    (error,) = transcript.of_type("Error")
    assert error["code"] == "untranscribed_audio" and "not transcribed" in error["description"]
    closing = transcript.messages[-1]
    assert closing["type"] == "Metadata" and closing["untranscribed_seconds"] > 10, closing
    assert f"{closing['untranscribed_seconds']:.1f} s not transcribed" in transcript.close_reason


async def test_clients_that_keep_sending_do_not_stretch_the_drain(make_server) -> None:
    live = make_server()
    pcm = load_pcm16(JFK_FLAC)
    url = live.url(interim_results="false")
    clients = []
    for _ in range(3):
        ws = await websockets.connect(url, max_size=None)
        transcript = Transcript()
        clients.append((ws, transcript, asyncio.create_task(collect(ws, transcript))))

    async def keep_sending(ws: websockets.ClientConnection) -> None:
        """Real time, forever: the drain must not wait for this client to stop."""
        try:
            for chunk in chunked(pcm * 20, CHUNK):
                await ws.send(chunk)
                await asyncio.sleep(0.1)
        except websockets.ConnectionClosed:
            pass

    senders = [asyncio.create_task(keep_sending(ws)) for ws, _, _ in clients]
    await asyncio.sleep(6)
    timeout = 30.0  # the clients would send for 220 s: reading them would overrun it
    began = time.monotonic()
    drained = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(live.server.drain(timeout), live.loop))
    await wait_until(lambda: live.server.draining, what="drain to start")
    read_at_drain = [r.stats.bytes_in for r in live.server.open_sessions()]
    runners = list(live.server.open_sessions())
    assert await asyncio.wait_for(drained, timeout + 5) is True  # every session finished, none cut
    assert time.monotonic() - began < timeout + 1
    await asyncio.gather(*(asyncio.wait_for(reader, 10) for _, _, reader in clients))
    for task in senders:
        task.cancel()
    # At most about a second was read after the drain began, and all that was read was transcribed.
    late = [r.stats.bytes_in - before for r, before in zip(runners, read_at_drain)]
    assert all(0 <= extra <= 1.5 * 32000 for extra in late), late
    assert all(r.stats.untranscribed_seconds == 0 for r in runners)
    for _, transcript, _ in clients:
        assert transcript.close_code == 1001, transcript.close_reason
        assert transcript.finals and not transcript.of_type("Error")
        # About 6 s were read before the drain: "And so my fellow Americans, ask not ..."
        assert "fellow americans ask not" in " ".join(words(transcript))


async def raw_session(live) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
    """A session opened by websockets' sans-I/O client over a bare socket, one audio frame sent:
    nothing answers the server's pings unless the test writes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    protocol = ClientProtocol(parse_uri(live.url()))
    protocol.send_request(protocol.connect())
    writer.write(b"".join(protocol.data_to_send()))
    while protocol.state is not State.OPEN:
        protocol.receive_data(await asyncio.wait_for(reader.read(65536), 10))
    protocol.send_binary(b"\0" * CHUNK)
    writer.write(b"".join(protocol.data_to_send()))
    return reader, writer, protocol


async def test_a_client_that_never_answers_the_drain_ping_is_read_no_longer_and_told(make_server) -> None:
    """A client whose websocket never answers pings (it sends, but reads nothing back): the
    drain reads it for 5 s at most, and the close says why reading stopped."""
    live = make_server(NULL_ONLY)
    reader, writer, protocol = await raw_session(live)  # the last bytes this client ever writes
    await wait_until(lambda: any(r.stats.bytes_in for r in live.server.open_sessions()), what="audio read")
    began = time.monotonic()
    drained = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(live.server.drain(30), live.loop))
    pings = 0
    while data := await asyncio.wait_for(reader.read(65536), 30):
        protocol.receive_data(data)
        pings += sum(1 for event in protocol.events_received() if getattr(event, "opcode", None) is Opcode.PING)
        if protocol.close_rcvd is not None:
            break
    writer.close()
    assert await asyncio.wait_for(drained, 35) is True
    assert pings >= 1 and protocol.close_rcvd is not None
    assert protocol.close_rcvd.code == 1001 and "did not answer the drain's ping" in protocol.close_rcvd.reason
    assert 4.5 <= time.monotonic() - began <= 15


async def test_a_client_gone_while_the_drain_waits_for_its_pong_leaves_no_error(make_server, caplog) -> None:
    live = make_server(NULL_ONLY)
    reader, writer, protocol = await raw_session(live)
    await wait_until(lambda: any(r.stats.bytes_in for r in live.server.open_sessions()), what="audio read")
    caplog.set_level(logging.DEBUG)
    drained = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(live.server.drain(30), live.loop))
    await asyncio.wait_for(reader.read(65536), 10)  # the drain's ping (and whatever came with it)
    writer.transport.abort()  # gone without a pong or a close frame
    assert await asyncio.wait_for(drained, 35) is True
    live.call(asyncio.sleep(0.1))
    gc.collect()
    live.call(asyncio.sleep(0.1))
    assert not [r for r in caplog.records if r.exc_info or "never retrieved" in r.getMessage()]
