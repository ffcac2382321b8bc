"""Deepgram's official SDKs, unchanged, against a real server: deepgram-sdk 7.17 (Python) and
@deepgram/sdk 5.13 (JavaScript, under node) on /v1/listen, with the real Whisper engine on jfk.

Every message must come through typed (the SDKs turn what they cannot type into None or drop
it) with no None in a field the SDKs declare, and a SIGTERM mid-session must leave the SDK's
README-style handler with every final and no exception.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.core.events import EventType
from deepgram.listen.v1.types import (
    ListenV1Configure,
    ListenV1ConfigureFailure,
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from pydantic import BaseModel
from support import JFK_FLAC, JFK_TEXT, chunked, load_pcm16, wait_until, wer
from test_ops_cli import ServerProcess

CHUNK = 3200  # 100 ms of 16 kHz PCM16
JS_CLIENT = Path(__file__).resolve().parent / "js"
# Optional fields the SDKs declare for features this server does not have (entities, language
# detection, diarization, keyterms); everything else must carry a value.
FEATURE_FIELDS = {"entities", "languages", "languages_hinted", "language", "speaker", "diarize_info", "keyterms"}


@pytest.fixture(scope="module")
def jfk_pcm() -> bytes:
    return load_pcm16(JFK_FLAC)


def environment(ws_url: str) -> DeepgramClientEnvironment:
    http_url = ws_url.replace("ws://", "http://", 1)
    return DeepgramClientEnvironment(base=http_url, production=ws_url, agent=ws_url, agent_rest=http_url)


def none_fields(model: Any, path: str = "") -> list[str]:
    """Declared fields of an SDK model (recursively) that came through as None."""
    missing = []
    if isinstance(model, BaseModel):
        for name in type(model).model_fields:
            value = getattr(model, name)
            if value is None and name not in FEATURE_FIELDS:
                missing.append(f"{path}{name}")
            missing += none_fields(value, f"{path}{name}.")
    elif isinstance(model, list):
        for index, item in enumerate(model):
            missing += none_fields(item, f"{path}{index}.")
    return missing


def final_text(results: list[Any]) -> str:
    return " ".join(r.channel.alternatives[0].transcript for r in results if r.is_final).strip()


async def send_paced(connection: Any, audio: bytes) -> None:
    for chunk in chunked(audio, CHUNK):
        await connection.send_media(chunk)
        await asyncio.sleep(0.02)  # 5x real time


async def test_python_sdk_live_session(live_server, jfk_pcm: bytes) -> None:
    client = AsyncDeepgramClient(api_key=live_server.tokens["alice"], environment=environment(live_server.base_url))
    received: list[Any] = []
    errors: list[Any] = []
    half = len(jfk_pcm) // 2 // CHUNK * CHUNK
    silence = bytes(16000 * 2 * 2)
    async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000,
                                        interim_results="true", punctuate="true", utterance_end_ms="1000",
                                        vad_events="true") as connection:
        connection.on(EventType.MESSAGE, received.append)
        connection.on(EventType.ERROR, errors.append)
        listener = asyncio.create_task(connection.start_listening())
        await send_paced(connection, jfk_pcm[:half])
        await connection.send_keep_alive()
        await connection.send_configure(ListenV1Configure(keyterms=["Kennedy"]))
        await connection.send_finalize()
        await wait_until(lambda: any(isinstance(m, ListenV1Results) and m.from_finalize for m in received),
                         what="the final answering Finalize")
        await send_paced(connection, jfk_pcm[half:] + silence)
        await connection.send_close_stream()
        await asyncio.wait_for(listener, 120)

    assert not errors and None not in received
    problems = {f"{type(m).__name__}.{field}" for m in received for field in none_fields(m)}
    assert not problems, problems
    results = [m for m in received if isinstance(m, ListenV1Results)]
    opening, closing = received[0], received[-1]
    assert isinstance(opening, ListenV1Metadata) and isinstance(closing, ListenV1Metadata)
    assert closing.request_id == opening.request_id and closing.duration == pytest.approx(
        (len(jfk_pcm) + len(silence)) / 32000, abs=0.01)
    assert closing.sha256 == hashlib.sha256(jfk_pcm[:half] + jfk_pcm[half:] + silence).hexdigest()
    assert {r.metadata.request_id for r in results} == {opening.request_id}
    assert results[0].metadata.model_info.arch == "whisper"
    assert sum(bool(r.from_finalize) for r in results) == 1
    words = [w for r in results if r.is_final for w in r.channel.alternatives[0].words]
    assert all(w.word == w.word.lower() and w.word.strip(".,!?") == w.word for w in words)
    assert any(w.punctuated_word != w.word for w in words)  # capitals and punctuation
    assert any(isinstance(m, ListenV1SpeechStarted) for m in received)
    utterance_ends = [m for m in received if isinstance(m, ListenV1UtteranceEnd)]
    assert utterance_ends and utterance_ends[-1].last_word_end == pytest.approx(words[-1].end, abs=0.01)
    (failure,) = [m for m in received if isinstance(m, ListenV1ConfigureFailure)]
    assert failure.code == "CONFIGURE_KEYTERMS_NOT_SUPPORTED"
    score = wer(JFK_TEXT, final_text(results))
    print(f"Python SDK: WER {score:.3f}, {len(received)} messages")
    assert score <= 0.15


# The fields @deepgram/sdk 5.13 declares required (dist/cjs/api/resources/listen/resources/v1/
# types/ListenV1*.d.ts), with the optional ones this server fills in (is_final, speech_final,
# from_finalize, punctuated_word).
JS_DECLARED = {
    "Results": ["type", "channel_index", "duration", "start", "is_final", "speech_final", "channel", "metadata",
                "from_finalize"],
    "Metadata": ["type", "transaction_key", "request_id", "sha256", "created", "duration", "channels"],
    "UtteranceEnd": ["type", "channel", "last_word_end"],
    "SpeechStarted": ["type", "channel", "timestamp"],
}


def js_missing(message: dict[str, Any]) -> list[str]:
    missing = [f for f in JS_DECLARED[message["type"]] if message.get(f) is None]
    if message["type"] == "Results":
        alternative = message["channel"]["alternatives"][0]
        missing += [f"alternative.{f}" for f in ("transcript", "confidence", "words") if alternative.get(f) is None]
        missing += [f"metadata.{f}" for f in ("request_id", "model_uuid") if message["metadata"].get(f) is None]
        missing += [f"model_info.{f}" for f in ("name", "version", "arch")
                    if message["metadata"]["model_info"].get(f) is None]
        missing += [f"word.{f}" for w in alternative["words"]
                    for f in ("word", "start", "end", "confidence", "punctuated_word") if w.get(f) is None]
    return missing


def node_modules_ready() -> None:
    if shutil.which("node") is None:
        pytest.fail("node is required: .ci/run installs nodejs and runs npm ci in tests/js")
    if not (JS_CLIENT / "node_modules" / "@deepgram" / "sdk").is_dir():
        pytest.fail("tests/js/node_modules is missing: run `npm ci` in tests/js (.ci/run does)")


async def test_js_sdk_live_session(live_server, jfk_pcm: bytes, tmp_path: Path) -> None:
    node_modules_ready()
    pcm_file = tmp_path / "jfk.pcm"
    pcm_file.write_bytes(jfk_pcm)
    process = await asyncio.create_subprocess_exec(
        "node", str(JS_CLIENT / "deepgram_live.mjs"), live_server.base_url, live_server.tokens["alice"],
        str(pcm_file), cwd=JS_CLIENT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, stderr.decode()
    events = [json.loads(line) for line in stdout.decode().splitlines()]
    assert not [e for e in events if e["event"] == "error"], events
    assert events[-1] == {"event": "close", "code": 1000, "reason": ""}
    messages = [e["message"] for e in events if e["event"] == "message"]
    assert {m["type"] for m in messages} <= set(JS_DECLARED)  # the SDK's V1Socket.Response union
    problems = {f"{m['type']}.{field}" for m in messages for field in js_missing(m)}
    assert not problems, problems
    results = [m for m in messages if m["type"] == "Results"]
    assert sum(m["from_finalize"] for m in results) == 1
    assert {m["type"] for m in messages} == set(JS_DECLARED)
    text = " ".join(m["channel"]["alternatives"][0]["transcript"] for m in results if m["is_final"])
    score = wer(JFK_TEXT, text)
    print(f"JS SDK: WER {score:.3f}, {len(messages)} messages")
    assert score <= 0.15


async def test_sigterm_mid_session_the_readme_handler_gets_every_final(tmp_path: Path, jfk_pcm: bytes) -> None:
    """The real `stt-server` process, SIGTERM while the Python SDK streams: the handler from
    the SDK's README (``message.type``) sees every final the server sent, then the close."""
    server = ServerProcess(tmp_path, {"server": {"port": 0, "drain_timeout_seconds": 60},
                                      "logging": {"format": "json"}})
    await server.start()
    try:
        client = AsyncDeepgramClient(api_key=server.tokens["alice"], environment=environment(server.url))
        seen: list[str] = []
        finals: list[str] = []
        failures: list[BaseException] = []

        async def on_message(message: Any) -> None:  # as in the SDK's README, plus keeping the finals
            seen.append(message.type)
            if message.type == "Results" and message.is_final:
                finals.append(message.channel.alternatives[0].transcript)

        async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000,
                                            interim_results="true") as connection:
            connection.on(EventType.MESSAGE, on_message)
            connection.on(EventType.ERROR, failures.append)
            listener = asyncio.create_task(connection.start_listening())
            began = time.monotonic()
            sent = 0
            for chunk in chunked(jfk_pcm, CHUNK):
                if sent == 60:  # 6 s of speech sent: the operator stops the server
                    mark = server.signal(signal.SIGTERM)
                try:
                    await connection.send_media(chunk)
                except Exception:  # the server stopped reading: the sender's concern, not the handler's
                    break
                sent += 1
                await asyncio.sleep(0.05)
            await asyncio.wait_for(listener, 90)
        assert server.proc is not None and await asyncio.wait_for(server.proc.wait(), 60) == 0
        closed = await server.event("session closed", mark)
        assert closed["close_code"] == 1001 and time.monotonic() - began < 60
        assert not failures, failures
        assert len(finals) == closed["finals"] >= 1
        assert seen[0] == seen[-1] == "Metadata" and set(seen) <= {"Metadata", "Results"}
        heard = " ".join(finals)
        print(f"SIGTERM after {sent} chunks: {len(finals)} finals: {heard!r}")
        # The finals are the speech sent before the stop (cut mid-utterance, so loosely).
        assert wer(" ".join(JFK_TEXT.split()[:len(heard.split())]), heard) <= 0.4
    finally:
        await server.close()


async def test_sigterm_mid_session_js_sdk_gets_every_final(tmp_path: Path, jfk_pcm: bytes) -> None:
    """The same stop under the JavaScript SDK: its README's `on("message")` handler gets every
    final, then the 1001 close, and no error event."""
    node_modules_ready()
    pcm_file = tmp_path / "jfk.pcm"
    pcm_file.write_bytes(jfk_pcm)
    server = ServerProcess(tmp_path, {"server": {"port": 0, "drain_timeout_seconds": 60},
                                      "logging": {"format": "json"}})
    await server.start()
    try:
        process = await asyncio.create_subprocess_exec(
            "node", str(JS_CLIENT / "deepgram_live.mjs"), server.url, server.tokens["alice"], str(pcm_file),
            "stream", cwd=JS_CLIENT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert process.stdout is not None
        events = []
        mark = None
        while line := await asyncio.wait_for(process.stdout.readline(), 90):
            event = json.loads(line)
            events.append(event)
            if event["event"] == "sent" and event["chunks"] >= 60 and mark is None:
                mark = server.signal(signal.SIGTERM)  # 6 s of speech sent
        assert await asyncio.wait_for(process.wait(), 30) == 0
        assert mark is not None and await asyncio.wait_for(server.proc.wait(), 60) == 0  # type: ignore[union-attr]
        closed = await server.event("session closed", mark)
        assert closed["close_code"] == 1001
        assert not [e for e in events if e["event"] == "error"], events
        assert events[-1]["event"] == "close" and events[-1]["code"] == 1001
        messages = [e["message"] for e in events if e["event"] == "message"]
        finals = [m for m in messages if m["type"] == "Results" and m["is_final"]]
        assert len(finals) == closed["finals"] >= 1
        assert {m["type"] for m in messages} <= set(JS_DECLARED) and messages[-1]["type"] == "Metadata"
    finally:
        await server.close()


def test_js_lockfile_pins_the_sdk() -> None:
    lock = json.loads((JS_CLIENT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@deepgram/sdk"]["version"].startswith("5.13.")
    assert subprocess.run(["node", "--version"], capture_output=True).returncode == 0
