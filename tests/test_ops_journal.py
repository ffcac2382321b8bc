"""The transcript journal on a live Whisper server: a client killed with SIGKILL mid-stream
still gets every final of the audio the server received written, fsynced, to the journal."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap

from support import (
    JFK_FLAC,
    JFK_TEXT,
    chunked,
    load_pcm16,
    stream_audio,
    wait_until,
    wer,
)

CHUNK = 3200

# The client: streams all of jfk as PCM, says nothing more, and waits to be killed.
CLIENT = textwrap.dedent("""
    import asyncio, sys, websockets
    async def main(url, path):
        pcm = open(path, "rb").read()
        async with websockets.connect(url) as ws:
            for i in range(0, len(pcm), 3200):
                await ws.send(pcm[i:i + 3200])
            print("sent", flush=True)
            await asyncio.sleep(3600)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


def journal_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


async def test_journal_has_every_final_after_the_client_is_killed(make_server, tmp_path) -> None:
    journal = tmp_path / "journal" / "transcripts.jsonl"
    live = make_server({"journal": {"enabled": True, "file": str(journal)}})
    pcm = load_pcm16(JFK_FLAC)

    # A session that ends normally: the journal holds exactly the finals the client got.
    transcript = await stream_audio(live.url(interim_results="false"), chunked(pcm, CHUNK))
    lines = journal_lines(journal)
    assert [line["text"] for line in lines] == [m["channel"]["alternatives"][0]["transcript"]
                                                for m in transcript.finals]
    assert {line["token_name"] for line in lines} == {"alice"} and {line["provider"] for line in lines} == {"whisper"}
    first_session = lines[0]["session_id"]

    # A client killed with SIGKILL once the server has all its audio: nothing is lost.
    raw = tmp_path / "jfk.pcm"
    raw.write_bytes(pcm)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, live.url(), str(raw),
                                                stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"sent"
        await wait_until(lambda: any(r.stats.bytes_in == len(pcm) for r in live.server.open_sessions()),
                         what="the server to read all the audio")
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    # Its slot is free at once; its audio is still transcribed (the session runs on until then).
    await wait_until(lambda: live.server.active_sessions == 0, timeout=60, what="the slot to be freed")
    await wait_until(lambda: not live.server.open_sessions(), timeout=120, what="the orphaned session to end")
    killed = [line for line in journal_lines(journal) if line["session_id"] != first_session]
    assert killed, "no final journaled for the killed client's session"
    assert len({line["session_id"] for line in killed}) == 1
    text = " ".join(line["text"] for line in killed)
    assert wer(JFK_TEXT, text) <= 0.15, text
    assert len(killed) == len(transcript.finals)
    ends = [line["end"] for line in killed]
    assert ends == sorted(ends) and ends[-1] <= 11.5
