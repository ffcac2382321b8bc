"""Wyoming's TCP listener: asyncio streams around the pure :mod:`protocols.wyoming_wire` and
:mod:`protocols.wyoming`, driving the same :class:`SessionRunner` as every websocket session.

Part of :class:`~stt_server.server.SttServer` (started, drained and stopped with it): sessions
pass the same admission (the engine can serve them, engine load, the lease store's limits),
count in the same metrics (``protocol="wyoming"``), write the same journal and are drained the
same way. Wyoming has no authentication: every session counts as the token ``wyoming.token``
names (its providers, models and max_sessions).

Drain: Wyoming has no ping and no shutdown notice. :meth:`WyomingSessionConnection.ping` answers
with a future that completes when the client's ``audio-stop`` is read, so the runner's drain reads
the utterance to its end (bounded by its usual drain timeouts) and sends the whole transcript.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

from . import __version__
from .audio_format import AudioFormat
from .cluster import SessionLeases
from .config import Config
from .errors import AuthError, CapacityError, ProtocolError, SttServerError
from .handshake import SessionContext
from .metrics import Metrics
from .protocols import WireProtocol
from .protocols.wyoming import (
    Preamble,
    SessionRequest,
    WyomingProtocol,
    describe_programs,
    runner_frame,
    session_context,
)
from .protocols.wyoming_wire import (
    AUDIO_CHUNK,
    AUDIO_START,
    AUDIO_STOP,
    FrameDecoder,
    WyomingEvent,
    audio_format_of,
    encode_event,
    error_event,
    info_event,
)
from .providers import Provider
from .session_state import CLOSE_NORMAL, CLOSE_POLICY
from .tokens import TokenEntry, TokenStore



class SessionHost(Protocol):
    """What the listener needs of the server it belongs to (an SttServer): its settings, tokens,
    engines and metrics, and its admission and session running, so that Wyoming sessions are
    admitted, run, drained and counted as the websocket ones are."""

    config: Config
    tokens: TokenStore
    providers: dict[str, Provider]
    metrics: Metrics
    leases: SessionLeases
    draining: bool
    log: Any

    async def admit(self, context: SessionContext) -> None: ...

    async def run_session(self, connection: Any, context: SessionContext, protocol: WireProtocol, *,
                          key: Any = None) -> None: ...


# Events decoded ahead of the session: small, so that a session that stops reading
# (backpressure) stops the socket being read, and TCP slows the client down.
READ_AHEAD_EVENTS = 4
READ_BYTES = 64 * 1024
# After an error: how long, and how many bytes, the client's last bytes are read and dropped
# before the close (see WyomingConnection.finish).
LINGER_SECONDS = 1.0
LINGER_BYTES = 8 * 1024 * 1024
# stop(): how long sessions whose connection was closed get to finish transcribing.
STOP_WAIT_SECONDS = 10.0
# Close code recorded when the client went away (as websockets says 1006).
CLOSE_ABNORMAL = 1006


class ConnectionLost(Exception):
    """The client closed the TCP connection (or it broke)."""


class WyomingConnection:
    """One TCP connection. A reader task decodes events into a small queue, so a read can be
    cancelled without losing bytes (the runner cancels reads) and reading stops while the
    session does not take events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 max_payload_bytes: int) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(max_payload_bytes=max_payload_bytes)
        self._events: asyncio.Queue[WyomingEvent | BaseException] = asyncio.Queue(READ_AHEAD_EVENTS)
        self._end: BaseException | None = None  # why no more events come (sticky)
        self.closed = False
        self.in_session = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"
        self._task = asyncio.create_task(self._read(), name=f"wyoming-read-{self.peer}")

    async def _read(self) -> None:
        end: BaseException
        try:
            while True:
                data = await self._reader.read(READ_BYTES)
                if not data:
                    end = ConnectionLost("the client closed the connection"
                                         + (" in the middle of an event" if self._decoder.mid_event else ""))
                    break
                for event in self._decoder.feed(data):
                    await self._events.put(event)
                self._decoder.feed(b"")  # bad bytes after those events: now their error
        except ProtocolError as error:
            end = error
        except OSError as exc:  # a reset
            end = ConnectionLost(f"the connection broke: {exc.strerror or exc}")
        await self._events.put(end)

    async def next_event(self) -> WyomingEvent:
        """The next event; ConnectionLost when the client is gone, ProtocolError for bad bytes."""
        if self._end is not None:
            raise self._end
        item = await self._events.get()
        if isinstance(item, BaseException):
            self._end = item
            raise item
        return item

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionLost("the connection is closed")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self.close()
            raise ConnectionLost(f"the connection broke: {exc}") from None

    async def send_error(self, error: SttServerError) -> None:
        """An ``error`` event (Wyoming's only error), then the close."""
        try:
            await self.send(encode_event(error_event(error.message, error.code)))
        except ConnectionLost:
            pass
        await self.finish()

    async def finish(self) -> None:
        """Close after what was sent, so that the client reads it: closing a socket with unread
        bytes in it (a client still sending) makes the kernel send a reset, and the client may
        lose the error event. So: no more reading of events, our side half-closed, what the
        client still sends read and dropped for a moment, then the close."""
        if self.closed:
            return
        self.closed = True  # nothing more is sent
        self._task.cancel()
        await asyncio.wait({self._task})  # one reader at a time
        try:
            if self._writer.can_write_eof():
                self._writer.write_eof()
            async with asyncio.timeout(LINGER_SECONDS):
                dropped = 0
                while dropped < LINGER_BYTES and (data := await self._reader.read(READ_BYTES)):
                    dropped += len(data)
        except (TimeoutError, OSError):
            pass
        self._writer.close()
        self._no_more_events()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._task.cancel()
        self._writer.close()
        self._no_more_events()

    def _no_more_events(self) -> None:
        """Wake a reader waiting for an event that will not come now (the reader task is
        cancelled): events not yet taken are dropped, the connection is closing."""
        while not self._events.empty():
            self._events.get_nowait()
        self._events.put_nowait(ConnectionLost("the connection is closed"))


class WyomingSessionConnection:
    """What a :class:`SessionRunner` needs of a connection (recv, send, ping, close, close_code),
    for one transcription on a Wyoming connection. A close with 1000 (the client's audio-stop,
    every final sent) leaves the TCP connection open for the next transcription."""

    def __init__(self, connection: WyomingConnection, protocol: WyomingProtocol, audio: AudioFormat, *,
                 metrics: Metrics) -> None:
        self.connection = connection
        self.protocol = protocol
        self.metrics = metrics  # errors found here (bad bytes) are counted as the runner's are
        self.audio = audio  # audio-start's; each chunk says its format too, and must agree
        self.close_code: int | None = None
        self.close_reason = ""
        self._audio_stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A close fails the future; that is no error to log ("exception was never retrieved").
        self._audio_stop.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def recv(self) -> str | bytes:
        if self.close_code is not None:
            raise ConnectionClosed(None, None)
        if self._audio_stop.done() and not self._audio_stop.exception():
            # What follows audio-stop belongs to the next transcription (a client may send it
            # before the transcript comes): never taken here, even by the runner's last reads.
            await asyncio.Event().wait()  # until cancelled
        try:
            event = await self.connection.next_event()
        except ProtocolError as error:  # bad bytes: the stream cannot be resynchronised
            await self._fail(error)
            raise ConnectionClosed(None, None) from None
        except ConnectionLost:
            self._gone(CLOSE_ABNORMAL)
            raise ConnectionClosed(None, None) from None
        if event.type == AUDIO_STOP and not self._audio_stop.done():
            self._audio_stop.set_result(None)
        elif event.type == AUDIO_START:
            try:
                self.audio = audio_format_of(event)
            except ProtocolError:
                pass  # the protocol reports it
        elif event.type == AUDIO_CHUNK and event.data:
            try:
                chunk = audio_format_of(event)
            except ProtocolError as error:
                await self._fail(error)
                raise ConnectionClosed(None, None) from None
            if (chunk.sample_rate, chunk.channels) != (self.audio.sample_rate, self.audio.channels):
                await self._fail(ProtocolError(
                    f"audio-chunk says {chunk.sample_rate} Hz, {chunk.channels} channel(s); audio-start said "
                    f"{self.audio.sample_rate} Hz, {self.audio.channels}: send audio-start again to change it",
                    code="bad_audio_format"))
                raise ConnectionClosed(None, None)
        return runner_frame(event)

    async def send(self, text: str) -> None:
        if self.close_code is not None:
            raise ConnectionClosed(None, None)
        try:
            await self.connection.send(text.encode())
        except ConnectionLost:
            self._gone(CLOSE_ABNORMAL)
            raise ConnectionClosed(None, None) from None
        if self.protocol.failed:  # an error event went out: Wyoming closes after it
            await self._finish(CLOSE_POLICY)

    async def ping(self) -> asyncio.Future[None]:
        """Wyoming has no ping: the "pong" is the client's audio-stop, after which the client
        sends nothing more for this transcription."""
        if self.close_code is not None:
            raise ConnectionClosed(None, None)
        return self._audio_stop

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if self.close_code is not None:
            return
        for text in self.protocol.ending(code, reason):
            try:
                await self.connection.send(text.encode())
            except ConnectionLost:
                break
        self.close_code, self.close_reason = code, reason
        if code != CLOSE_NORMAL or self.protocol.failed:
            await self.connection.finish()

    async def _fail(self, error: ProtocolError) -> None:
        self.metrics.errors.labels(error.code).inc()
        self.protocol.failed = True
        self.close_code = error.close_code
        await self.connection.send_error(error)
        if not self._audio_stop.done():
            self._audio_stop.set_exception(ConnectionClosed(None, None))

    async def _finish(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        if not self._audio_stop.done():
            self._audio_stop.set_exception(ConnectionClosed(None, None))
        await self.connection.finish()

    def _gone(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        self.connection.close()
        if not self._audio_stop.done():
            self._audio_stop.set_exception(ConnectionClosed(None, None))


# --- the listener --------------------------------------------------------------------------------


class WyomingListener:
    """The TCP listener and its connections, owned by an :class:`~stt_server.server.SttServer`."""

    def __init__(self, server: SessionHost) -> None:
        self.server = server
        self.log = server.log.bind(protocol="wyoming")
        self._listener: asyncio.Server | None = None
        self._connections: dict[WyomingConnection, asyncio.Task[Any]] = {}

    @property
    def config(self) -> Config:
        return self.server.config

    async def bind(self, *, reuse_port: bool) -> None:
        """Bind (not yet accepting); OSError as the caller reports it."""
        wyoming = self.config.wyoming
        self._listener = await asyncio.start_server(self._serve, wyoming.host, wyoming.port, start_serving=False,
                                                    reuse_port=reuse_port or None)

    async def start_serving(self) -> None:
        assert self._listener is not None, "bind() first"
        await self._listener.start_serving()
        self.log.info("wyoming listening", host=self.config.wyoming.host, port=self.port,
                      token_name=self.config.wyoming.token)

    @property
    def port(self) -> int:
        assert self._listener is not None, "bind() first"
        return int(self._listener.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        """The drain: no new connections; connections not in a transcription are closed (nothing
        they sent was acknowledged); transcriptions finish with the runner's drain."""
        if self._listener is not None:
            self._listener.close()
        for connection in list(self._connections):
            if not connection.in_session:
                connection.close()

    async def stop(self) -> None:
        """Close every connection; a transcription whose client is gone still has the audio it
        received transcribed (for the journal), as a websocket session's does at stop()."""
        self.stop_accepting()
        for connection in list(self._connections):
            connection.close()
        tasks = list(self._connections.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_WAIT_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None

    def _info(self) -> WyomingEvent:
        try:
            token: TokenEntry | None = self.server.tokens.table.named(self.config.wyoming.token)
        except SttServerError:
            token = None
        return info_event(describe_programs(self.config, self.server.providers, token), version=__version__)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = WyomingConnection(reader, writer, max_payload_bytes=self.config.server.max_message_bytes)
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.config.wyoming.max_connections or self.server.draining:
            self.log.info("wyoming connection refused", peer=connection.peer,
                          reason="draining" if self.server.draining else "max_connections")
            await connection.send_error(CapacityError(
                "the server is shutting down" if self.server.draining else
                f"too many Wyoming connections (wyoming.max_connections: {self.config.wyoming.max_connections})",
                code="draining" if self.server.draining else "server_session_limit"))
            return
        self._connections[connection] = task
        try:
            await self._transcriptions(connection)
        except Exception:  # a bug here ends this connection only
            self.log.exception("wyoming connection failed", peer=connection.peer)
            await connection.send_error(SttServerError("internal error", code="internal_error"))
        finally:
            connection.close()
            self._connections.pop(connection, None)

    async def _transcriptions(self, connection: WyomingConnection) -> None:
        preamble = Preamble()
        while not connection.closed and not self.server.draining:
            try:
                request = await asyncio.wait_for(self._preamble(connection, preamble),
                                                 self.config.limits.handshake_timeout_seconds)
            except ConnectionLost:
                return
            except TimeoutError:
                await connection.send_error(ProtocolError(
                    f"no audio-start within {self.config.limits.handshake_timeout_seconds:g} s "
                    "(limits.handshake_timeout_seconds)", code="timeout"))
                return
            except ProtocolError as error:
                self.log.info("wyoming bad input", peer=connection.peer, code=error.code, reason=error.message)
                self.server.metrics.refused(error.code, auth=False)
                await connection.send_error(error)
                return
            if not await self._transcribe(connection, request):
                return

    async def _preamble(self, connection: WyomingConnection, preamble: Preamble) -> SessionRequest:
        while True:
            event = await connection.next_event()
            replies, request = preamble.handle(event, self._info)
            for reply in replies:
                await connection.send(encode_event(reply))
            if request is not None:
                return request

    async def _transcribe(self, connection: WyomingConnection, request: SessionRequest) -> bool:
        """One transcription; whether the connection may carry another."""
        server = self.server
        try:
            if server.draining:
                raise CapacityError("the server is shutting down; retry on another instance", code="draining")
            token = server.tokens.table.named(self.config.wyoming.token)
            context = session_context(request, config=self.config, providers=server.providers, token=token,
                                      peer=connection.peer)
            await server.admit(context)
        except SttServerError as error:
            if isinstance(error, AuthError) and error.code == "token_invalid":
                error = AuthError("this server's wyoming.token names no token in the token file (revoked?); "
                                  "ask its administrator", code="token_invalid")
            self.log.info("wyoming session refused", peer=connection.peer, code=error.code, reason=error.message)
            server.metrics.refused(error.code, auth=isinstance(error, AuthError))
            await connection.send_error(error)
            return False
        protocol = WyomingProtocol(language=context.params.language,
                                   streaming=self.config.wyoming.transcript_streaming)
        session = WyomingSessionConnection(connection, protocol, request.audio, metrics=server.metrics)
        connection.in_session = True
        try:
            await server.run_session(session, context, protocol)
        finally:
            connection.in_session = False
            await server.leases.release(context.session_id)
        return session.close_code == CLOSE_NORMAL and not connection.closed

