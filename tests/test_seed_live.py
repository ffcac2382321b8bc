"""The seed protocol against a live server over real websocket connections.

``EchoProvider`` (below, loaded through the config's ``module:`` key) turns each audio chunk
into a final whose text is the chunk's ASCII, a little later: what the client sent becomes
visible in the replies, and results arrive after the acknowledgement like a real engine's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import websockets
from conftest import LiveServer
from websockets.exceptions import InvalidStatus

from stt_server.audio_format import AudioFormat
from stt_server.providers import Provider, TranscriptionStream
from stt_server.results import Result
from stt_server.session import SessionParams

SEED_PATH = "/ws/transcription/"
ECHO_DELAY = 0.2


@dataclass(frozen=True)
class EchoOptions:
    pass


class EchoStream(TranscriptionStream):
    def __init__(self) -> None:
        super().__init__()
        self.pending: set[asyncio.Task[None]] = set()
        self.position = 0.0

    async def send_audio(self, audio: bytes) -> None:
        start, self.position = self.position, self.position + 1

        async def later() -> None:
            await asyncio.sleep(ECHO_DELAY)
            self.emit(Result(text=audio.decode("ascii", "replace"), is_final=True, start=start, end=start + 1))

        task = asyncio.get_running_loop().create_task(later())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def finalize(self) -> None:
        pass

    async def close(self) -> None:
        if self.pending:
            await asyncio.wait(self.pending)
        self.end_results()


class EchoProvider(Provider):
    name = "echo"
    Options = EchoOptions

    def input_format(self, client_format: AudioFormat) -> AudioFormat:
        return client_format

    def open_stream(self, session: SessionParams, audio_format: AudioFormat) -> TranscriptionStream:
        return EchoStream()


@pytest.fixture(scope="module")
def seed_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from conftest import start_live_server

    live = start_live_server(tmp_path_factory.mktemp("seed"), {
        "server": {"default_provider": "echo"},
        "providers": {"whisper": {"enabled": False}, "echo": {"module": f"{__name__}:EchoProvider"}},
    })
    yield live
    live.stop()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def transcribe(request_id: Any, text: str, *, prefix: str = "") -> str:
    return json.dumps({"action": "transcribe", "request_id": request_id, "voice_stream": prefix + b64(text)})


async def recv_json(ws: Any, timeout: float = 5) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


def transcript_of(reply: dict[str, Any]) -> str:
    """What the seed's browser code shows: JSON.parse(data).transcript."""
    return json.loads(reply["data"])["transcript"]


async def replies_until(ws: Any, done: Callable[[dict[str, Any]], bool], timeout: float = 5) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while not got or not done(got[-1]):
        got.append(await recv_json(ws, timeout))
    return got


@pytest.mark.parametrize("path", ["/ws/transcription/", "/ws/transcription"])
async def test_reply_envelope_verbatim(seed_server: LiveServer, path: str) -> None:
    async with websockets.connect(seed_server.url(path)) as ws:
        await ws.send(transcribe(1700000000000, "hello"))
        raw = await asyncio.wait_for(ws.recv(), 5)
        # The exact frame the seed's consumer sent: key order and json.dumps spacing included.
        assert raw == ('{"errors": [], "data": "{\\"transcript\\": \\"\\"}", "action": "transcribe", '
                       '"response_status": 200, "request_id": 1700000000000}')
        follow_up = await recv_json(ws)  # the echo result arrives after the acknowledgement
        assert transcript_of(follow_up) == "hello"
        assert follow_up["request_id"] == 1700000000000 and follow_up["response_status"] == 200


async def test_running_text_grows_and_a_reply_follows_the_last_chunk(seed_server: LiveServer) -> None:
    async with websockets.connect(seed_server.url(SEED_PATH, stt_provider="echo", language="en-US")) as ws:
        for request_id, word in enumerate(["ask", "not", "what"], start=1):
            await ws.send(transcribe(request_id, word))
        replies = await replies_until(ws, lambda r: r["data"] and transcript_of(r) == "ask not what")
    acks = [r for r in replies if r["request_id"] in (1, 2, 3)]
    assert [r["request_id"] for r in replies][:3] == [1, 2, 3]  # one reply per message, in order
    assert len(acks) == len(replies)
    # The last reply came from the engine after the last chunk, carrying the latest request_id.
    assert replies[-1]["request_id"] == 3
    texts = [transcript_of(r) for r in replies]
    assert texts[-1] == "ask not what" and texts == sorted(texts, key=len)


async def test_data_url_prefix_and_binary_frames(seed_server: LiveServer) -> None:
    async with websockets.connect(seed_server.url(SEED_PATH)) as ws:
        await ws.send(transcribe("a", "ask", prefix="data:audio/webm;codecs=opus;base64,"))
        await ws.send(b"not")
        await ws.send(transcribe("b", "what", prefix="data:audio/ogg;base64,"))
        replies = await replies_until(ws, lambda r: r["data"] and transcript_of(r) == "ask not what")
    assert all(r["errors"] == [] and r["response_status"] == 200 for r in replies)
    assert {r["request_id"] for r in replies} <= {"a", "b"}  # binary frames get no reply of their own


async def test_error_envelopes_and_the_session_goes_on(seed_server: LiveServer) -> None:
    async with websockets.connect(seed_server.url(SEED_PATH)) as ws:
        await ws.send(json.dumps({"request_id": 1, "voice_stream": b64("x")}))
        assert await recv_json(ws) == {"errors": ["Unable to find action in message body."], "data": None,
                                       "action": None, "response_status": 405, "request_id": 1}
        await ws.send(json.dumps({"action": "subscribe", "request_id": 2}))
        assert await recv_json(ws) == {"errors": ['Method "subscribe" not allowed.'], "data": None,
                                       "action": "subscribe", "response_status": 405, "request_id": 2}
        await ws.send(json.dumps({"action": "transcribe", "request_id": 3, "voice_stream": "%%%"}))
        bad = await recv_json(ws)
        assert bad["response_status"] == 400 and bad["request_id"] == 3 and bad["data"] is None
        assert bad["errors"] == ["voice_stream is not valid base64"]
        await ws.send("this is not json")
        bad = await recv_json(ws)
        assert bad["response_status"] == 400 and bad["errors"] == ["messages must be JSON objects"]
        await ws.send(transcribe(4, "still here"))
        replies = await replies_until(ws, lambda r: r["data"] and transcript_of(r) == "still here")
        assert replies[0]["request_id"] == 4


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_bad_or_missing_token_is_refused_at_the_handshake(seed_server: LiveServer, token: str | None) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(seed_server.url(SEED_PATH, token=token)):
            pass
    assert refused.value.response.status_code == 401


async def test_unknown_stt_provider_is_refused(seed_server: LiveServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(seed_server.url(SEED_PATH, stt_provider="google")):
            pass
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body)["parameter"] == "stt_provider"


async def test_server_session_limit_is_a_503_before_the_upgrade(make_server: Callable[..., LiveServer]) -> None:
    live = make_server({"server": {"default_provider": "null"}, "limits": {"max_sessions": 2},
                        "providers": {"whisper": {"enabled": False}}})
    url = live.url(SEED_PATH)
    async with websockets.connect(url), websockets.connect(url):
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        assert refused.value.response.status_code == 503
        assert json.loads(refused.value.response.body)["error"] == "server_session_limit"
    for _ in range(50):  # the server notices the closes shortly after the clients
        if live.server.active_sessions == 0:
            break
        await asyncio.sleep(0.05)
    async with websockets.connect(url) as ws:
        await ws.send(transcribe(1, "ok"))
        assert (await recv_json(ws))["response_status"] == 200


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def test_providers_endpoint(seed_server: LiveServer) -> None:
    status, headers, body = await asyncio.to_thread(http_get, seed_server.http_url + "/v1/providers")
    assert status == 200 and headers["Content-Type"] == "application/json"
    listed = json.loads(body)
    assert {key: listed[key] for key in ("providers", "default", "language")} == {
        "providers": ["echo", "null"], "default": "echo", "language": "en-US"}
    assert [entry["name"] for entry in listed["details"]] == ["echo", "null"]
    token = seed_server.tokens["nullonly"]
    status, _, body = await asyncio.to_thread(http_get, seed_server.http_url + "/v1/providers",
                                              {"Authorization": f"Bearer {token}"})
    assert status == 200 and json.loads(body)["providers"] == ["null"]
    assert json.loads(body)["default"] == "null"
    status, _, body = await asyncio.to_thread(http_get, seed_server.http_url + "/v1/providers",
                                              {"Authorization": "Bearer nope"})
    assert status == 401 and json.loads(body)["error"] == "token_invalid"


@pytest.mark.parametrize(("path", "content_type"), [
    ("/", "text/html; charset=utf-8"),
    ("/static/kiosk.js", "text/javascript; charset=utf-8"),
    ("/static/kiosk.css", "text/css; charset=utf-8"),
])
async def test_kiosk_page_is_served_offline(seed_server: LiveServer, path: str, content_type: str) -> None:
    status, headers, body = await asyncio.to_thread(http_get, seed_server.http_url + path)
    assert status == 200 and headers["Content-Type"] == content_type and body
    # Nothing loaded from elsewhere (no CDN): the page must work offline.
    assert not re.search(rb"""(?:src|href)=["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import""", body)
    if path == "/":
        assert "script-src 'self'" in headers["Content-Security-Policy"]


async def test_unknown_http_path_is_404(seed_server: LiveServer) -> None:
    status, _, _ = await asyncio.to_thread(http_get, seed_server.http_url + "/static/../../etc/passwd")
    assert status == 404


async def test_bad_audio_is_a_400_and_a_new_recording_still_decodes(make_server: Callable[..., LiveServer]) -> None:
    from audio_files import encode

    # null without passthrough: the server decodes the audio as it would for a real engine.
    live = make_server({"server": {"default_provider": "null"},
                        "providers": {"whisper": {"enabled": False}, "null": {"passthrough": False}}})
    webm = encode("webm", "libopus", rate=48_000, layout="stereo", bit_rate=64_000, live=True)
    chunks = [webm[i:i + 4800] for i in range(0, len(webm), 4800)][:10]
    async with websockets.connect(live.url(SEED_PATH)) as ws:
        garbage = base64.b64encode(b"this is no audio container at all" * 4).decode()
        await ws.send(json.dumps({"action": "transcribe", "request_id": 1, "voice_stream": garbage}))
        bad = await recv_json(ws)
        assert bad["response_status"] == 400 and bad["request_id"] == 1 and bad["action"] == "transcribe"
        assert "could not recognise the audio container" in bad["errors"][0]
        # The recorder restarts (a fresh WebM header): decoding works again on the same session.
        for request_id, chunk in enumerate(chunks, start=2):
            await ws.send(json.dumps({"action": "transcribe", "request_id": request_id,
                                      "voice_stream": base64.b64encode(chunk).decode()}))
            reply = await recv_json(ws, timeout=10)
            assert (reply["response_status"], reply["request_id"], reply["errors"]) == (200, request_id, [])
