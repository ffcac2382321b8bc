"""The accuracy gate: the accuracy set (tests/accuracy_set.py) within its absolute per-clip
bounds through a live server, in every path: 1x real time with interims, uploaded as fast as
the socket allows, every clip's session at once (batched in the engine), each container format;
and across a SIGTERM drain of a real `stt-server` process, with the engine idle and busy, where
every phrase a client sent before the drain's notice must be in its finals.

bench/accuracy.py prints the same table; its figures are in bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import accuracy_set
import pytest
from accuracy_paths import PATHS, DrainedClip, run_path, stream_until_closed, table
from conftest import LiveServer, start_live_server

pytest_plugins = ("scale_fixtures",)

# A real process with the default engine; no keepalive ping inside the test's minute, so that the
# last ping a client sees is the drain's.
WHISPER_PROCESS: dict[str, Any] = {
    "server": {"host": "127.0.0.1", "port": 0, "drain_timeout_seconds": 120},
    "logging": {"format": "json"},
    "limits": {"ping_interval_seconds": 120, "ping_timeout_seconds": 120},
}
# The drain comes this long after the real-time clients began: every clip is mid-stream.
SIGTERM_AFTER_SECONDS = 7.0
DRAIN_CLIPS = ("tale", "beaches", "lighthouse", "jfk")


@pytest.fixture(scope="module")
def clips() -> list[accuracy_set.Clip]:
    return accuracy_set.build()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    live = start_live_server(tmp_path_factory.mktemp("accuracy"))  # the default config: Whisper tiny.en
    yield live
    live.stop()


@pytest.mark.parametrize("path", list(PATHS))
async def test_every_clip_within_its_bound(server: LiveServer, clips: list[accuracy_set.Clip], path: str) -> None:
    results = await run_path(lambda **query: server.url(**query), clips, PATHS[path])
    print("\n" + table({path: results}))
    failing = {r.clip.name: r.problems() for r in results if r.problems()}
    assert not failing, failing


@pytest.fixture(scope="module")
def drain_clips(tmp_path_factory: pytest.TempPathFactory) -> list[accuracy_set.PhrasedClip]:
    folder = tmp_path_factory.mktemp("phrases")
    return [accuracy_set.phrased(name, folder) for name in DRAIN_CLIPS]


@pytest.mark.parametrize("engine", ["idle", "busy"])
async def test_a_sigterm_drain_transcribes_everything_sent_before_its_notice(
        instances: Any, drain_clips: list[accuracy_set.PhrasedClip], engine: str) -> None:
    """SIGTERM while clients stream at 1x (and, with the engine busy, two more upload 48 s of
    speech each as fast as they can): each client's finals hold every phrase it had sent when
    the drain's ping reached it, the close is 1001 with no Error, and nothing read went
    untranscribed."""
    (process,) = await instances(WHISPER_PROCESS)
    live = [asyncio.create_task(stream_until_closed(process.url("alice", interim_results="true"), clip,
                                                    realtime=True)) for clip in drain_clips]
    uploads: list[asyncio.Task[DrainedClip]] = []
    if engine == "busy":
        await asyncio.sleep(SIGTERM_AFTER_SECONDS - 1.5)
        upload = accuracy_set.joined("upload", drain_clips[:3])
        uploads = [asyncio.create_task(stream_until_closed(process.url("alice", interim_results="false"), upload,
                                                           realtime=False)) for _ in range(2)]
        await asyncio.sleep(1.5)
    else:
        await asyncio.sleep(SIGTERM_AFTER_SECONDS)
    mark = process.signal(signal.SIGTERM)
    results = await asyncio.gather(*live, *uploads)
    assert await process.wait(150) == 0
    assert process.named("drained", mark)[0]["cut_sessions"] == 0
    read = {e["session_id"]: e["bytes_in"] for e in process.named("session closed", mark)}
    for result in results:
        clip, label = result.clip, f"{result.clip.name} ({engine})"
        assert result.close_code == 1001, (label, result.close_code, result.close_reason)
        assert not [m for m in result.messages if m.get("type") == "Error"], label
        assert result.messages[-1]["type"] == "Metadata" and result.messages[-1]["untranscribed_seconds"] == 0
        assert result.sent_at_ping is not None, f"{label}: no ping after the drain"
        # Everything the client had sent when the notice reached it was read ...
        assert result.sent_at_ping <= read[result.session_id], (label, result.sent_at_ping, read[result.session_id])
        # ... and transcribed: every phrase sent by then is in the finals.
        errors, needed, invented = clip.errors(result.text, result.sent_at_ping, read[result.session_id])
        print(f"{label}: sent {result.sent_at_ping / 32000:.1f} s before the notice, read "
              f"{read[result.session_id] / 32000:.1f} s, {needed} words due, {errors} errors: {result.text!r}")
        assert needed > 0 and errors <= clip.max_wer * needed and invented <= 2, (label, errors, needed, result.text)
        must, _ = clip.expected(result.sent_at_ping, read[result.session_id])
        for phrase in clip.repeats:
            said = accuracy_set.occurrences(phrase, " ".join(must))
            assert accuracy_set.occurrences(phrase, result.text) >= said, (label, phrase, result.text)
    for result in results[:len(live)]:  # the drain came mid-stream
        assert result.sent_at_ping is not None and result.sent_at_ping < len(result.clip.pcm16)
    for result in results[len(live):]:  # the uploads were sent whole before it: all of it
        assert result.sent_at_ping == len(result.clip.pcm16)
