"""vosk-server's and WhisperLive's clients, unchanged, against a real server on ``/`` (Whisper,
jfk): each written to its project's own client code.

* vosk: ``websocket/test.py``'s pattern: ``{ "config" : { "sample_rate" : N } }``, 0.2 s PCM16
  chunks with one ``recv()`` after each, ``{"eof" : 1}`` and one last ``recv()``. A ``recv()``
  that would block fails the test (timeout).
* WhisperLive 0.10 (``whisper_live/client.py``): websocket-client's ``WebSocketApp`` on
  ``ws://host:port``, the options message (uid, language, task, model, use_vad, ..., token),
  ``SERVER_READY``, float32 chunks of 4096 samples, ``END_OF_AUDIO`` as a binary frame, and
  the transcript kept the way its ``process_segments`` keeps it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

import numpy as np
import pytest
import websocket  # websocket-client, what WhisperLive's client uses
import websockets
from ops_support import http_get
from support import JFK_FLAC, JFK_TEXT, chunked, load_pcm16, wer

ANSWER_TIMEOUT = 10  # seconds; a vosk answer that does not come is a failure, not a hang


@pytest.fixture(scope="module")
def jfk_16k() -> bytes:
    return load_pcm16(JFK_FLAC)


def root_url(live: Any, token: str | None = "alice") -> str:
    return f"{live.base_url}/" + (f"?token={live.tokens[token]}" if token else "")


# --- vosk-server ----------------------------------------------------------------------------


async def vosk_test_py(url: str, pcm: bytes, rate: int) -> tuple[list[dict[str, Any]], int]:
    """vosk-server's websocket/test.py, async: returns every answer and the close code."""
    answers = []
    async with websockets.connect(url) as ws:
        await ws.send('{ "config" : { "sample_rate" : %d } }' % rate)
        buffer_size = int(rate * 0.2)  # 0.2 seconds of audio
        for chunk in chunked(pcm, buffer_size * 2):
            await ws.send(chunk)
            answers.append(json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT)))
        await ws.send('{"eof" : 1}')
        answers.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        with pytest.raises(websockets.ConnectionClosedOK):  # nothing more: the server closes
            await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT)
        return answers, ws.close_code or 0


@pytest.mark.parametrize("rate", [16_000, 8_000])
async def test_vosk_client(live_server, rate: int) -> None:
    pcm = load_pcm16(JFK_FLAC, rate=rate)
    answers, close_code = await vosk_test_py(root_url(live_server), pcm, rate)
    chunks = len(chunked(pcm, int(rate * 0.2) * 2))
    assert len(answers) == chunks + 1 and close_code == 1000
    assert all(set(a) in ({"partial"}, {"text", "result"}) for a in answers)
    # test.py sends as fast as the answers come, which is faster than Whisper decodes: most
    # answers are empty partials and the finals arrive late, many in the answer to eof.
    assert all(isinstance(a.get("partial", a.get("text")), str) for a in answers)
    text = " ".join(a["text"] for a in answers if a.get("text"))
    words = [w for a in answers for w in a.get("result", [])]
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    assert words[-1]["end"] <= len(pcm) / 2 / rate + 0.5
    score = wer(JFK_TEXT, text)
    print(f"vosk client at {rate} Hz: WER {score:.3f}, {len(answers)} answers for {chunks} chunks")
    assert score <= 0.15


async def test_vosk_client_without_a_token_is_told_why(live_server, jfk_16k: bytes) -> None:
    async with websockets.connect(root_url(live_server, token=None)) as ws:
        await ws.send('{ "config" : { "sample_rate" : 16000 } }')
        answer = json.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT))
        with pytest.raises(websockets.ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT)
    assert "token" in answer["error"] and ws.close_code == 1008


def test_a_plain_get_of_root_still_serves_the_page(live_server) -> None:
    status, headers, body = http_get(f"{live_server.http_url}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"<html" in body.lower()


# --- WhisperLive ----------------------------------------------------------------------------


class WhisperLiveClient:
    """whisper_live/client.py's Client, reduced to its protocol: the same library, messages,
    order and bookkeeping; no microphone, no playback."""

    END_OF_AUDIO = "END_OF_AUDIO"

    def __init__(self, host: str, port: int, token: str) -> None:
        self.uid = str(uuid.uuid4())
        self.token = token
        self.recording = False
        self.waiting = False
        self.server_error = False
        self.server_backend: str | None = None
        self.status_messages: list[dict[str, Any]] = []
        self.transcript: list[dict[str, Any]] = []
        self.last_segment: dict[str, Any] | None = None
        self.messages: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self.close_status: int | None = None
        self.client_socket = websocket.WebSocketApp(
            f"ws://{host}:{port}", on_open=self.on_open, on_message=self.on_message,
            on_error=self.on_error, on_close=self.on_close)
        self.ws_thread = threading.Thread(target=self.client_socket.run_forever, daemon=True)
        self.ws_thread.start()

    def on_open(self, ws: Any) -> None:
        ws.send(json.dumps({"uid": self.uid, "language": "en", "task": "transcribe", "model": "small",
                            "use_vad": True, "max_clients": 4, "max_connection_time": 600,
                            "platform": "test_platform", "meeting_url": "test_url", "token": self.token}))

    def on_message(self, ws: Any, message: str) -> None:
        data = json.loads(message)
        self.messages.append(data)
        assert data.get("uid") == self.uid
        if "status" in data:
            self.status_messages.append(data)
            self.waiting = data["status"] == "WAIT"
            self.server_error = data["status"] == "ERROR"
            return
        if data.get("message") == "SERVER_READY":
            self.recording = True
            self.server_backend = data["backend"]
            return
        if "segments" in data:
            self.process_segments(data["segments"])

    def process_segments(self, segments: list[dict[str, Any]]) -> None:
        text: list[str] = []
        for i, seg in enumerate(segments):
            if not text or text[-1] != seg["text"]:
                text.append(seg["text"])
                if i == len(segments) - 1 and not seg.get("completed", False):
                    self.last_segment = seg
                elif (self.server_backend == "faster_whisper" and seg.get("completed", False) and
                      (not self.transcript or float(seg["start"]) >= float(self.transcript[-1]["end"]))):
                    self.transcript.append(seg)

    def on_error(self, ws: Any, error: Any) -> None:
        self.server_error = True

    def on_close(self, ws: Any, close_status_code: int | None, close_msg: str | None) -> None:
        self.recording = False
        self.close_status = close_status_code
        self.closed.set()

    def send_packet_to_server(self, message: bytes) -> None:
        self.client_socket.send(message, websocket.ABNF.OPCODE_BINARY)

    @staticmethod
    def bytes_to_float_array(audio_bytes: bytes) -> np.ndarray:
        return np.frombuffer(audio_bytes, dtype=np.int16).astype(np.float32) / 32768.0

    def play(self, pcm16: bytes, *, chunk: int = 4096, pace: float = 0.05) -> None:
        """TranscriptionTeeClient.play_file with mute_audio_playback: 4096-sample chunks."""
        import time

        for data in chunked(pcm16, chunk * 2):
            if not self.recording:
                break
            self.send_packet_to_server(self.bytes_to_float_array(data).tobytes())
            time.sleep(pace)
        self.send_packet_to_server(self.END_OF_AUDIO.encode("utf-8"))

    def wait_ready(self, timeout: float = 20) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not self.recording and not (self.waiting or self.server_error) and time.monotonic() < deadline:
            time.sleep(0.01)

    @property
    def text(self) -> str:
        segments = list(self.transcript)
        if self.last_segment is not None and (not segments or segments[-1]["text"] != self.last_segment["text"]):
            segments.append(self.last_segment)
        return " ".join(s["text"] for s in segments)


def run_whisperlive(live: Any, pcm: bytes, token: str) -> WhisperLiveClient:
    client = WhisperLiveClient("127.0.0.1", live.port, token)
    client.wait_ready()
    if client.recording:
        client.play(pcm)
    assert client.closed.wait(90), "the server did not close after END_OF_AUDIO"
    return client


async def test_whisperlive_client(live_server, jfk_16k: bytes) -> None:
    loop = asyncio.get_running_loop()
    client = await loop.run_in_executor(None, run_whisperlive, live_server, jfk_16k, live_server.tokens["alice"])
    # (websocket-client reports the server's normal close through on_error, which sets
    # server_error in WhisperLive's client too: only the status messages tell a real error.)
    assert client.server_backend == "faster_whisper" and not client.status_messages
    assert client.messages[0] == {"uid": client.uid, "message": "SERVER_READY", "backend": "faster_whisper"}
    segment_messages = [m for m in client.messages if "segments" in m]
    interims = sum(not s["completed"] for m in segment_messages for s in m["segments"])  # load decides
    last = segment_messages[-1]["segments"]
    # After END_OF_AUDIO: the final segments (and an empty incomplete one: nothing pending).
    assert last and all(s["completed"] for s in last if s["text"]) and last[-1]["text"] == ""
    assert client.close_status == 1000
    score = wer(JFK_TEXT, client.text)
    print(f"WhisperLive client: WER {score:.3f}, {len(segment_messages)} segment messages, {interims} interims")
    assert score <= 0.15


async def test_whisperlive_bad_token_is_an_error_status(live_server, jfk_16k: bytes) -> None:
    loop = asyncio.get_running_loop()
    client = await loop.run_in_executor(None, run_whisperlive, live_server, jfk_16k, "not-a-token")
    assert client.status_messages == [{"uid": client.uid, "status": "ERROR", "message": "unknown token"}]
    assert client.close_status == 1008 and not client.recording


async def test_whisperlive_waits_when_the_server_is_full(make_server, jfk_16k: bytes) -> None:
    live = make_server({"limits": {"max_sessions": 1}, "server": {"default_provider": "null"}})
    loop = asyncio.get_running_loop()
    async with websockets.connect(root_url(live)) as holder:  # takes the only slot
        await holder.send('{"config": {"sample_rate": 16000}}')
        client = await loop.run_in_executor(None, run_whisperlive, live, jfk_16k, live.tokens["alice"])
    (wait,) = client.status_messages
    assert wait["status"] == "WAIT" and wait["uid"] == client.uid and wait["message"] > 0
    assert client.close_status == 1013 and client.waiting and not client.transcript
