"""``stt-client``: stream an audio file to stt_server and print the transcript.

By default the file is sent as it is (its own container, ``encoding=auto``), so the server's
decoder does the work a browser's audio would need; ``--pcm`` decodes it here and sends
16 kHz PCM16 instead. Audio is paced at real time (``--speed`` to change). Interim text is
shown updating in place on stderr; finals line by line; the full transcript goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import av
import websockets

CHUNK_SECONDS = 0.25
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stt-client", description="Stream an audio file to stt_server.")
    parser.add_argument("file", help="audio file (wav, flac, mp3, ogg, webm, ...)")
    parser.add_argument("--url", default="ws://127.0.0.1:8765",
                        help="server URL; /v1/listen is added when no path is given")
    parser.add_argument("--token", default=os.environ.get("STT_TOKEN"), help="API token (default: $STT_TOKEN)")
    parser.add_argument("--provider", help="speech engine (default: the server's)")
    parser.add_argument("--language", help="language tag, e.g. en-US")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="pace as a multiple of real time; 0 sends as fast as possible (default 1)")
    parser.add_argument("--pcm", action="store_true", help="decode here and send 16 kHz PCM16")
    parser.add_argument("--no-interim", action="store_true", help="ask for final results only")
    parser.add_argument("--json", action="store_true", help="print every server message as JSON on stdout")
    return parser


def listen_url(base: str, params: dict[str, str]) -> str:
    parts = urlsplit(base)
    path = parts.path if parts.path not in ("", "/") else "/v1/listen"
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def file_duration(path: Path) -> float:
    with av.open(str(path)) as container:
        if container.duration:
            return container.duration / av.time_base
        stream = container.streams.audio[0]
        return float(sum(frame.samples for frame in container.decode(stream)) / (stream.rate or 16000))


def decode_pcm16(path: Path, rate: int = 16_000) -> bytes:
    out = bytearray()
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        for frame in container.decode(audio=0):
            for piece in resampler.resample(frame):
                out += piece.to_ndarray().tobytes()
        for piece in resampler.resample(None):
            out += piece.to_ndarray().tobytes()
    return bytes(out)


async def paced_chunks(data: bytes, bytes_per_second: float, speed: float) -> AsyncIterator[bytes]:
    size = max(1, int(bytes_per_second * CHUNK_SECONDS))
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, offset in enumerate(range(0, len(data), size)):
        if speed > 0:
            delay = start + index * CHUNK_SECONDS / speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        yield data[offset:offset + size]


class Display:
    """Interim text rewritten in place on a terminal; plain lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.pending = False

    def interim(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K\033[2m" + text[-200:] + "\033[0m")
            self.stream.flush()
            self.pending = True

    def final(self, text: str) -> None:
        if self.pending:
            self.stream.write("\r\033[K")
            self.pending = False
        self.stream.write(text + "\n")
        self.stream.flush()


async def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        print(f"stt-client: no such file: {path}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.pcm:
            data = decode_pcm16(path)
            params = {"encoding": "linear16", "sample_rate": "16000"}
            bytes_per_second = 32_000.0
        else:
            data = path.read_bytes()
            params = {"encoding": "auto"}
            bytes_per_second = len(data) / max(file_duration(path), 0.1)
    except (av.error.FFmpegError, IndexError) as exc:
        print(f"stt-client: cannot read {path} as audio: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.provider:
        params["provider"] = args.provider
    if args.language:
        params["language"] = args.language
    if args.no_interim:
        params["interim_results"] = "false"
    headers = {"Authorization": f"Token {args.token}"} if args.token else {}
    display = Display(sys.stderr)
    finals: list[str] = []
    failed = False
    try:
        async with websockets.connect(listen_url(args.url, params), additional_headers=headers,
                                      max_size=None) as ws:
            sender = asyncio.create_task(_send(ws, data, bytes_per_second, args.speed))
            async for raw in ws:
                message: dict[str, Any] = json.loads(raw)
                if args.json:
                    print(json.dumps(message), flush=True)
                kind = message.get("type")
                if kind == "Results":
                    text = message["channel"]["alternatives"][0]["transcript"]
                    if message["is_final"]:
                        if text:
                            finals.append(text)
                            display.final(text)
                    elif text:
                        display.interim(" ".join([*finals[-1:], text]))
                elif kind == "Error":
                    failed = True
                    print(f"stt-client: server error {message.get('code')}: {message.get('message')}",
                          file=sys.stderr)
            sender.cancel()
            if ws.close_code not in (1000, None):
                failed = True
                print(f"stt-client: closed with {ws.close_code} {ws.close_reason}", file=sys.stderr)
    except websockets.InvalidStatus as exc:
        response = exc.response
        detail = bytes(response.body or b"").decode(errors="replace").strip()
        try:
            detail = json.loads(detail).get("message", detail)
        except ValueError:
            pass
        print(f"stt-client: refused with HTTP {response.status_code}: {detail}", file=sys.stderr)
        return EXIT_REFUSED
    except (OSError, websockets.InvalidURI, websockets.InvalidHandshake) as exc:
        print(f"stt-client: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if not args.json:
        print(" ".join(finals))
    return EXIT_ERROR if failed else EXIT_OK


async def _send(ws: Any, data: bytes, bytes_per_second: float, speed: float) -> None:
    try:
        async for chunk in paced_chunks(data, bytes_per_second, speed):
            await ws.send(chunk)
        await ws.send(json.dumps({"type": "CloseStream"}))
    except websockets.ConnectionClosed:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.speed < 0:
        print("stt-client: --speed must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
