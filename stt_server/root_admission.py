"""Admission on ``/`` after the upgrade: WhisperLive's client sends its token only in its first
message and reads a full server's WAIT only in-band, so a ``/`` handshake without a token, or on
a full server, is upgraded and decided from that first message."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, cast
from urllib.parse import urlencode

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from .config import Config
from .endpoints import Endpoint
from .errors import AuthError, CapacityError, SttServerError
from .handshake import SessionContext, accept_session
from .http_routes import RETRY_AFTER_SECONDS
from .metrics import Metrics
from .protocols.root import refusal, whisperlive_options
from .session import endpoint_for_path
from .tokens import TokenStore


class AdmittingServer(Protocol):
    """What admission reads from the server."""

    config: Config
    tokens: TokenStore
    metrics: Metrics
    draining: bool
    log: Any

    providers: dict[str, Any]

    async def admit(self, context: SessionContext) -> None: ...

    def remember(self, connection: ServerConnection, context: SessionContext) -> None: ...


def peer_of(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"


class ReplayConnection:
    """A connection whose first recv() returns a message already read (a ``/`` session's first
    message, read to admit it); everything else is the connection's own."""

    def __init__(self, connection: ServerConnection, first: str | bytes) -> None:
        self._connection = connection
        self._first: str | bytes | None = first

    async def recv(self) -> str | bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await self._connection.recv()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def admits_after_upgrade(path: str, request: Request, error: SttServerError) -> bool:
    """On ``/``, a missing token or a full server is decided after the upgrade, from the first
    message: WhisperLive's client can only send its token, and only read WAIT, in-band."""
    if "Upgrade" not in request.headers:
        return False
    try:
        root = endpoint_for_path(path) is Endpoint.ROOT
    except SttServerError:
        return False
    missing_token = isinstance(error, AuthError) and error.code == "token_missing"
    full = isinstance(error, CapacityError) and error.code != "draining"
    return root and (missing_token or full)


async def admit_after_upgrade(
    server: AdmittingServer, connection: ServerConnection, target: str, headers: Headers, error: SttServerError,
) -> tuple[SessionContext, ServerConnection] | None:
    """Read the first message of a ``/`` session refused before the upgrade, and admit it (its
    token in WhisperLive's options, or a slot freed since) or refuse it in its protocol."""
    try:
        first = await asyncio.wait_for(connection.recv(), server.config.limits.handshake_timeout_seconds)
    except (TimeoutError, ConnectionClosed):
        await connection.close(error.close_code, error.code)
        return None
    try:
        if server.draining:  # the drain began while the first message was awaited
            raise CapacityError("the server is shutting down; retry on another instance", code="draining")
        if isinstance(error, AuthError):
            options = whisperlive_options(first)
            if options is None or options.token is None:
                raise error
            target = f"{target}{'&' if '?' in target else '?'}{urlencode({'token': options.token})}"
        context = accept_session(target, headers, config=server.config, tokens=server.tokens.table,
                                 providers=server.providers.keys(), peer=peer_of(connection))
        await server.admit(context)
    except SttServerError as refused:
        server.log.info("session refused after the upgrade", code=refused.code, peer=peer_of(connection))
        server.metrics.refused(refused.code, auth=isinstance(refused, AuthError))
        try:
            for frame in refusal(first, refused, wait_minutes=RETRY_AFTER_SECONDS / 60):
                await connection.send(frame)
        except ConnectionClosed:
            pass
        await connection.close(refused.close_code, refused.code)
        return None
    server.remember(connection, context)
    return context, cast(ServerConnection, ReplayConnection(connection, first))

