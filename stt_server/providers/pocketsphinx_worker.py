"""pocketsphinx worker processes: the process's main loop, and its handle in the server.

Per worker, two one-way pipes: commands in (open, audio, finalize, close, abort, stop), replies
out (ready, result, ack, finalized, closed, failed). Each end is held by one process only, so
a worker that dies is seen at once as EOF on its reply pipe, and a worker whose server died
sees EOF on its command pipe and exits.

In the server (:class:`WorkerProcess`), a *sender* thread writes commands (``send_audio``
never blocks the event loop on a full pipe) and a *reader* thread reads replies and hands each
to its stream, which passes it to its own event loop with ``call_soon_threadsafe``; streams may
live on different loops. The reader thread alone reaps its process (no zombies). When a worker
dies, its streams fail with ProviderError; the others go on.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import signal
import threading
from enum import IntEnum
from multiprocessing.connection import Connection
from typing import Any, Protocol

from ..errors import ProviderError
from .pocketsphinx_decoder import StreamDecoder

# How long stop() lets workers exit on their own before terminating, then killing them (s).
STOP_GRACE_SECONDS = 2.0


class Command(IntEnum):
    """Server → worker. Every message is ``(command, stream id, payload)``."""

    OPEN = 1  # payload: StreamSettings
    AUDIO = 2  # payload: PCM16 bytes
    FINALIZE = 3  # payload: a sequence number, echoed in FINALIZED
    CLOSE = 4
    ABORT = 5
    STOP = 6  # stream id 0: exit after the commands before it


class Reply(IntEnum):
    """Worker → server. Every message is ``(reply, stream id, payload)``."""

    READY = 1  # stream id 0, payload: the worker's pid
    FATAL = 2  # stream id 0, payload: why the worker cannot work (it then exits)
    RESULT = 3  # payload: Result
    ACK = 4  # payload: bytes of audio processed
    FINALIZED = 5  # payload: the FINALIZE's sequence number
    CLOSED = 6  # the stream's last results were sent
    FAILED = 7  # payload: message; the worker dropped the stream


def worker_main(commands: Connection, replies: Connection, decoder_config: dict[str, Any]) -> None:
    """A worker process: decoders for several streams, one command at a time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers end
    try:
        from pocketsphinx import Decoder

        idle = [Decoder(**decoder_config)]  # load now: a bad model fails start(), not a session
    except Exception as exc:  # noqa: BLE001 - reported to the server, which raises ProviderError
        replies.send((Reply.FATAL, 0, f"{type(exc).__name__}: {exc}"))
        return
    streams: dict[int, StreamDecoder] = {}
    replies.send((Reply.READY, 0, os.getpid()))
    while True:
        try:
            command, sid, payload = commands.recv()
        except (EOFError, OSError):  # the server is gone
            return
        if command == Command.STOP:
            return
        try:
            if command == Command.OPEN:
                decoder = idle.pop() if idle else Decoder(**decoder_config)
                streams[sid] = StreamDecoder(decoder, payload)
                continue
            stream = streams.get(sid)
            if stream is None:  # failed or aborted earlier: drop what was already on its way
                continue
            if command == Command.AUDIO:
                results = stream.feed(payload)
                tail: tuple[Reply, Any] = (Reply.ACK, len(payload))
            elif command == Command.FINALIZE:
                results, tail = stream.cut(), (Reply.FINALIZED, payload)
            elif command == Command.CLOSE:
                results, tail = stream.finish(), (Reply.CLOSED, None)
                idle.append(streams.pop(sid).decoder)
            else:  # ABORT
                stream.release()
                idle.append(streams.pop(sid).decoder)
                continue
            for result in results:
                replies.send((Reply.RESULT, sid, result))
            replies.send((tail[0], sid, tail[1]))
        except (BrokenPipeError, EOFError):
            return
        except Exception as exc:  # noqa: BLE001 - one stream's failure; its decoder is discarded
            streams.pop(sid, None)
            try:
                replies.send((Reply.FAILED, sid, f"pocketsphinx failed: {type(exc).__name__}: {exc}"))
            except OSError:
                return


class WorkerClient(Protocol):
    """A stream as its worker sees it (:class:`~.pocketsphinx_stream.PocketsphinxStream`)."""

    sid: int

    def deliver(self, reply: Reply, payload: Any) -> None:
        """Called on the worker's reader thread with each reply for this stream."""


class WorkerProcess:
    """One worker process seen from the server: its pipes, threads and streams."""

    def __init__(self, context: Any, decoder_config: dict[str, Any], slot: int) -> None:
        self.slot = slot
        commands_in, self._commands = context.Pipe(duplex=False)
        self._replies, replies_out = context.Pipe(duplex=False)
        self.process = context.Process(target=worker_main, args=(commands_in, replies_out, decoder_config),
                                       name=f"pocketsphinx-{slot}", daemon=True)
        self.ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self.streams: dict[int, WorkerClient] = {}
        self.lock = threading.Lock()
        self.alive = True
        self.stopping = False
        self.exit_message = ""
        self._outbox: queue.SimpleQueue[tuple[Command, int, Any] | None] = queue.SimpleQueue()
        self.process.start()
        # Only the worker holds these ends now, so its death is EOF here, and ours is EOF there.
        commands_in.close()
        replies_out.close()
        self._sender = threading.Thread(target=self._send_loop, name=f"pocketsphinx-{slot}-send", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name=f"pocketsphinx-{slot}-read", daemon=True)
        self._sender.start()
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def load(self) -> int:
        with self.lock:
            return len(self.streams)

    def send(self, command: Command, sid: int, payload: Any = None) -> None:
        if self.alive:
            self._outbox.put((command, sid, payload))

    def attach(self, stream: WorkerClient) -> bool:
        with self.lock:
            if not self.alive:
                return False
            self.streams[stream.sid] = stream
        return True

    def forget(self, sid: int) -> None:
        with self.lock:
            self.streams.pop(sid, None)

    def stop(self) -> None:
        """Blocking: ask the worker to exit, then terminate, then kill; wait until it is reaped."""
        self.stopping = True
        self.send(Command.STOP, 0)
        self._reader.join(STOP_GRACE_SECONDS)
        for signal_it in (self.process.terminate, self.process.kill):
            if not self._reader.is_alive():
                break
            try:
                signal_it()
            except (OSError, ValueError):  # already reaped
                pass
            self._reader.join(STOP_GRACE_SECONDS)
        self._sender.join(STOP_GRACE_SECONDS)

    # -- threads

    def _send_loop(self) -> None:
        while True:
            message = self._outbox.get()
            if message is None:
                break
            try:
                self._commands.send(message)
            except (OSError, ValueError):  # the worker died; the reader reports it
                break
        self._commands.close()

    def _read_loop(self) -> None:
        try:
            while True:
                reply, sid, payload = self._replies.recv()
                if reply == Reply.READY:
                    self.ready.set_result(payload)
                elif reply == Reply.FATAL:
                    self.exit_message = f"pocketsphinx worker cannot load its decoder: {payload}"
                else:
                    with self.lock:
                        stream = self.streams.get(sid)
                    if stream is not None:
                        stream.deliver(reply, payload)
        except (EOFError, OSError):
            pass
        finally:
            self._exited()

    def _exited(self) -> None:
        """The worker is gone: reap it, fail its streams, end the sender thread."""
        self.alive = False
        self._replies.close()
        self.process.join(STOP_GRACE_SECONDS)
        if self.process.exitcode is None:  # closed its pipe but lives on: make sure
            self.process.kill()
            self.process.join()
        if not self.exit_message:
            self.exit_message = ("pocketsphinx provider stopped" if self.stopping else
                                 f"pocketsphinx worker process {self.process.pid} exited "
                                 f"(exit code {self.process.exitcode})")
        if not self.ready.done():
            self.ready.set_exception(ProviderError(self.exit_message))
        with self.lock:
            streams = list(self.streams.values())
            self.streams.clear()
        for stream in streams:
            stream.deliver(Reply.FAILED, self.exit_message)
        self._outbox.put(None)
