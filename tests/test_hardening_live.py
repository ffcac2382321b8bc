"""Issue 10 against a live server over raw sockets: repeated headers, a token in the URL path,
deeply nested JSON. Each gets a clear answer, nothing reaches the log as a traceback, and no
token reaches the log at all."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import websockets
from support import stream_audio

KEY_HEADERS = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


@contextmanager
def server_log() -> Iterator[io.StringIO]:
    """Everything the in-process server logs meanwhile, rendered as the real handler renders it
    (redaction and traceback formatting included)."""
    root = logging.getLogger()
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(root.handlers[0].formatter)
    root.addHandler(handler)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)


async def raw_request(port: int, request: str) -> tuple[int, dict[str, str], bytes]:
    """Send one HTTP request as typed; the status, headers and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request.encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = b""
        if status != 101:
            body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 15)
        return status, headers, body
    finally:
        writer.close()


def upgrade(path: str, extra_headers: str = "") -> str:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{KEY_HEADERS}{extra_headers}\r\n"


async def test_repeated_authorization_or_origin_is_a_400_naming_it(live_server) -> None:
    token = live_server.tokens["alice"]
    cases = {
        "Authorization": f"Authorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\n",
        "Origin": "Origin: https://a.example\r\nOrigin: https://b.example\r\n",
    }
    with server_log() as log:
        for name, headers in cases.items():
            # The token in the query too: a repeated header is refused even when it is not needed.
            status, _, body = await raw_request(live_server.port, upgrade(f"/v1/listen?provider=null&token={token}",
                                                                          headers))
            answer = json.loads(body)
            assert status == 400, body
            assert answer["error"] == "duplicate_header" and answer["parameter"] == name
            assert name in answer["message"]
    text = log.getvalue()
    assert "Traceback" not in text and "duplicate_header" in text
    assert token not in text


async def test_repeated_subprotocol_header_is_one_list_as_rfc_6455_says(live_server) -> None:
    """RFC 6455 4.1: Sec-WebSocket-Protocol may appear several times; websockets negotiates
    over all the values, and the token pair split across two headers is still found."""
    token = live_server.tokens["alice"]
    headers = f"Sec-WebSocket-Protocol: token\r\nSec-WebSocket-Protocol: {token}\r\n"
    with server_log() as log:
        status, answer_headers, _ = await raw_request(live_server.port, upgrade("/v1/listen?provider=null", headers))
    assert status == 101 and answer_headers["sec-websocket-protocol"] == "token"
    assert "Traceback" not in log.getvalue() and token not in log.getvalue()


async def test_repeated_handshake_headers_websockets_checks_itself(live_server) -> None:
    token = live_server.tokens["alice"]
    with server_log() as log:
        status, _, _ = await raw_request(live_server.port, upgrade(
            f"/v1/listen?provider=null&token={token}", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"))
        assert status == 400
        status, _, _ = await raw_request(live_server.port, upgrade(
            f"/v1/listen?provider=null&token={token}", "Sec-WebSocket-Version: 13\r\n"))
        assert status == 400
        status, _, body = await raw_request(live_server.port, (
            f"GET /v1/providers?token={token} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n"
            "Authorization: Bearer b\r\n\r\n"))
        assert status == 400 and json.loads(body)["parameter"] == "Authorization"
        for odd in ("Transfer-Encoding: chunked\r\n", "Content-Length: 0\r\nContent-Length: 5\r\n",
                    "Host: a\r\nHost: b\r\n", "Upgrade: websocket\r\nConnection: Upgrade\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", live_server.port)
            writer.write(upgrade(f"/v1/listen?provider=null&token={token}", odd).encode())
            answer = await asyncio.wait_for(reader.read(200), 15)
            writer.close()
            assert answer == b"" or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.1 101")), (odd, answer)
        reader, writer = await asyncio.open_connection("127.0.0.1", live_server.port)
        writer.write("GET /v1/listen/caf\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(200), 15)
        writer.close()
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer
    assert "Traceback" not in log.getvalue() and "[error" not in log.getvalue()


async def test_a_token_in_the_url_path_never_reaches_the_log(live_server) -> None:
    token = live_server.tokens["alice"]
    with server_log() as log:
        for path in (f"/v1/listen/{token}", f"/ws/transcription/{token}/", f"/{token}", f"/v1/{token}?x=1"):
            status, _, _ = await raw_request(live_server.port, upgrade(path))
            assert status == 404
    text = log.getvalue()
    assert "handshake refused" in text and "/v1/listen/[redacted]" in text
    assert token not in text and token[:12] not in text


async def test_deeply_nested_json_is_bad_json_and_the_session_goes_on(live_server) -> None:
    deep = ["[" * 5000 + "]" * 5000, '{"type": ' + "[" * 100 + "]" * 100 + "}", '{"a":' * 3000 + "1" + "}" * 3000,
            "[" * 200_000]
    with server_log() as log:
        transcript = await stream_audio(live_server.url(provider="null"), [*deep, b"\0" * 3200])
        seed_replies = []
        async with websockets.connect(live_server.url("/ws/transcription/", provider="null")) as ws:
            for frame in deep:
                await ws.send(frame)
                seed_replies.append(json.loads(await asyncio.wait_for(ws.recv(), 15)))
            await ws.send(json.dumps({"action": "transcribe", "request_id": 7, "voice_stream": ""}))
            seed_replies.append(json.loads(await asyncio.wait_for(ws.recv(), 15)))
    errors = transcript.of_type("Error")
    assert [e["code"] for e in errors] == ["bad_json"] * len(deep)
    assert transcript.close_code == 1000  # the session went on to a clean CloseStream
    assert [r["response_status"] for r in seed_replies] == [400] * len(deep) + [200]
    assert seed_replies[-1]["request_id"] == 7
    assert "Traceback" not in log.getvalue() and "RecursionError" not in log.getvalue()
