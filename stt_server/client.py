"""``stt-client``: stream an audio file to stt_server and print the transcript.

By default the file is sent as it is (its own container, ``encoding=auto``), so the server's
decoder does the work a browser's audio would need; ``--pcm`` decodes it here and sends
16 kHz PCM16 instead. Audio is paced at real time (``--speed`` to change). Interim text is
shown updating in place on stderr (terminals only); finals line by line; the full transcript
goes to stdout, or with ``--json`` every server message as one JSON line. Exit codes: EXIT_*.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import av
import websockets

CHUNK_SECONDS = 0.25

# Exit codes (docs/clients.md, "`stt-client`", lists them): scripts can tell "fix the request"
# from "try again later".
EXIT_OK = 0          # every final received, normal close
EXIT_SESSION = 1     # the session ended with an error: an Error message or an abnormal close
EXIT_USAGE = 2       # bad arguments, or a file that cannot be read as audio here
EXIT_REFUSED = 3     # the server refused the connection (HTTP 4xx/5xx before the upgrade)
EXIT_UNREACHABLE = 4  # no server answered: refused connection, DNS, TLS, timeout, not a websocket
EXIT_INTERRUPTED = 130

# Error codes that mean "the server could not read this file": decoding it here may work.
DECODING_CODES = frozenset({"undecodable_audio", "bad_audio", "encoding_mismatch"})
PCM_HINT = ("hint: --pcm decodes the file here (anything FFmpeg reads: m4a, aac, wma, ...) "
            "and sends plain 16 kHz PCM")


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
    """Interim text rewritten in place on a terminal, cut to its width; finals line by line.

    Off a terminal (a pipe, a log file) interims are not drawn at all: carriage returns
    would pile up as garbage lines.
    """

    def __init__(self, stream: TextIO, *, show_finals: bool = True) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.show_finals = show_finals
        self.pending = False

    def width(self) -> int:
        """Columns of the terminal ``stream`` writes to (asked each time: terminals resize)."""
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return shutil.get_terminal_size().columns

    def interim(self, text: str) -> None:
        if not self.tty:
            return
        self.stream.write("\r\033[K\033[2m" + fit_line(text, self.width()) + "\033[0m")
        self.stream.flush()
        self.pending = True

    def final(self, text: str) -> None:
        self.clear()
        if self.show_finals:
            self.stream.write(text + "\n")
            self.stream.flush()

    def clear(self) -> None:
        if self.pending:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.pending = False


def fit_line(text: str, columns: int) -> str:
    """The end of ``text`` (the newest words), short enough not to wrap in ``columns``: a
    wrapped line cannot be rewritten with a carriage return."""
    room = max(columns - 1, 1)  # the last column would wrap on some terminals
    text = " ".join(text.split())
    return text if len(text) <= room else "…" + text[len(text) - room + 1:]


class SessionFailed(Exception):
    """The server ended the session with an error; ``str()`` is the line to print."""

    def __init__(self, line: str, code: str | None) -> None:
        super().__init__(line)
        self.code = code


def close_line(code: int | None, reason: str) -> str:
    return f"the server closed the session: {code}" + (f" {reason}" if reason else "")


def message_of(raw: str | bytes) -> dict[str, Any] | None:
    """A server message as a dict, or None for something that is not one (not our server?)."""
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


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
    display = Display(sys.stderr, show_finals=not args.json)
    finals: list[str] = []
    try:
        async with websockets.connect(listen_url(args.url, params), additional_headers=headers,
                                      max_size=None) as ws:
            sender = asyncio.create_task(_send(ws, data, bytes_per_second, args.speed))
            try:
                await _receive(ws, display, finals, as_json=args.json)
            finally:
                sender.cancel()
                display.clear()
    except websockets.InvalidStatus as exc:
        response = exc.response
        detail = bytes(response.body or b"").decode(errors="replace").strip()
        body = message_of(detail)
        if body is not None:
            detail = str(body.get("message", detail))
        print(f"stt-client: refused with HTTP {response.status_code}: {detail}", file=sys.stderr)
        return EXIT_REFUSED
    except SessionFailed as failure:
        print(f"stt-client: {failure}", file=sys.stderr)
        if failure.code in DECODING_CODES and not args.pcm:
            print(f"stt-client: {PCM_HINT}", file=sys.stderr)
        return EXIT_SESSION
    except websockets.ConnectionClosed as exc:  # closed before or while we sent
        print(f"stt-client: {close_line(exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else '')}",
              file=sys.stderr)
        return EXIT_SESSION
    except ConnectionRefusedError:
        print(f"stt-client: cannot connect to {args.url}: nothing is listening there (is stt-server "
              f"running, and on that port?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (OSError, asyncio.TimeoutError, websockets.InvalidURI, websockets.InvalidHandshake,
            websockets.InvalidMessage) as exc:
        print(f"stt-client: cannot connect to {args.url}: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not args.json:
        print(" ".join(finals))
    return EXIT_OK


async def _receive(ws: Any, display: Display, finals: list[str], *, as_json: bool) -> None:
    """Print messages until the server closes; raise SessionFailed when it ends with an error."""
    error: dict[str, Any] | None = None
    try:
        async for raw in ws:
            message = message_of(raw)
            if message is None:
                raise SessionFailed(f"the server sent something that is not a JSON message: {str(raw)[:80]!r}",
                                    None)
            if as_json:
                print(json.dumps(message), flush=True)
            kind = message.get("type")
            if kind == "Results":
                alternatives = (message.get("channel") or {}).get("alternatives") or [{}]
                text = str(alternatives[0].get("transcript") or "")
                if message.get("is_final"):
                    if text:
                        finals.append(text)
                        display.final(text)
                elif text:
                    display.interim(text)  # this utterance only: its finals are already printed
            elif kind == "Error":
                error = message
    except websockets.ConnectionClosedError:
        pass  # ws.close_code and ws.close_reason say why; handled below with the Error message
    code, reason = ws.close_code, ws.close_reason or ""
    if error is not None:
        raise SessionFailed(f"server error {error.get('code')}: {error.get('message')}"
                            + (f" (closed with {code})" if code not in (None, 1000) else ""),
                            str(error.get("code")))
    if code != 1000:
        raise SessionFailed(close_line(code, reason), reason.split(":", 1)[0] or None)


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
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
