"""The websockets layer: an explicit lifecycle (start, serve, shut down) around the pure core.

``process_request`` answers everything that can be answered before the upgrade (health,
auth, bad URLs, capacity) with a plain HTTP response; accepted connections get a
:class:`SessionRunner`.
"""

from __future__ import annotations

import http
from collections import Counter
from collections.abc import Mapping
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from . import providers as provider_registry
from .config import Config
from .errors import CapacityError, ProviderError, SttServerError
from .handshake import TOKEN_SUBPROTOCOL, SessionContext, accept_session, error_body
from .logs import get_logger
from .protocols import WireProtocol
from .protocols.native import NativeProtocol
from .providers import Provider
from .session import Endpoint, SessionParams
from .session_runner import SessionRunner
from .tokens import TokenStore


def protocol_for(params: SessionParams) -> WireProtocol:
    if params.endpoint is Endpoint.NATIVE:
        return NativeProtocol(include_words=params.words)
    from .protocols.seed import SeedProtocol  # the Django design's protocol

    return SeedProtocol()


def json_response(status: http.HTTPStatus, body: bytes, extra: Mapping[str, str] | None = None) -> Response:
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                       ("Connection", "close"), *(extra or {}).items()])
    return Response(status.value, status.phrase, headers, body)


class SttServer:
    def __init__(self, config: Config, *, tokens: TokenStore, providers: Mapping[str, Provider] | None = None) -> None:
        self.config = config
        self.tokens = tokens
        self.providers: dict[str, Provider] = dict(providers or {})
        self.log = get_logger("stt_server.server")
        self._server: Server | None = None
        self._contexts: dict[ServerConnection, SessionContext] = {}
        self._sessions_by_token: Counter[str] = Counter()

    # --- lifecycle -------------------------------------------------------------------------

    async def load_providers(self) -> None:
        """Import, validate and start every enabled provider that is not given already."""
        specs = provider_registry.discover(self.config)
        for entry in self.config.providers:
            if not entry.enabled or entry.name in self.providers:
                continue
            provider = provider_registry.create(entry, specs, self.config.source)
            try:
                await provider.start()
            except ProviderError:
                raise
            except Exception as exc:
                raise ProviderError(f"provider {entry.name!r} failed to start: {type(exc).__name__}: {exc}",
                                    code="provider_unavailable") from exc
            self.providers[entry.name] = provider
            self.log.info("provider ready", provider=entry.name, **dict(provider.describe()))

    async def start(self) -> None:
        self.tokens.refresh()
        self._log_token_problems()
        await self.load_providers()
        server_config = self.config.server
        self._server = await serve(
            self._handle,
            server_config.host,
            server_config.port,
            # HTTP: answered before the upgrade.
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            process_response=self._process_response,
            server_header=None,
            # Limits.
            max_size=server_config.max_message_bytes,
        )
        self.log.info("listening", url=self.url, providers=sorted(self.providers))

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.config.server.host
        return f"ws://{'[' + host + ']' if ':' in host else host}:{self.port}"

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.wait_closed()

    async def stop(self) -> None:
        """Stop accepting, close open sessions (1001), release engines."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for provider in self.providers.values():
            await provider.stop()

    # --- handshake -------------------------------------------------------------------------

    def _select_subprotocol(self, connection: ServerConnection, subprotocols: list[str]) -> str | None:
        return TOKEN_SUBPROTOCOL if TOKEN_SUBPROTOCOL in subprotocols else None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return json_response(http.HTTPStatus.OK, b'{"status":"ok"}\n')
        if self.tokens.refresh():
            self.log.info("token file reloaded", entries=len(self.tokens.table.entries))
            self._log_token_problems()
        try:
            context = accept_session(
                request.path, request.headers, config=self.config, tokens=self.tokens.table,
                providers=self.providers.keys(), peer=self._peer(connection),
            )
            self.providers[context.params.provider].check_session(context.params)
            self._check_capacity(context)
        except SttServerError as error:
            self.log.info("handshake refused", status=error.http_status, code=error.code,
                          path=path, peer=self._peer(connection))
            return json_response(http.HTTPStatus(error.http_status), error_body(error))
        self._contexts[connection] = context
        self._sessions_by_token[context.token.name] += 1
        return None

    def _process_response(self, connection: ServerConnection, request: Request, response: Response) -> None:
        # A handshake that failed after process_request accepted it never reaches _handle.
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            self._release(connection)

    def _release(self, connection: ServerConnection) -> None:
        context = self._contexts.pop(connection, None)
        if context is None:
            return
        self._sessions_by_token[context.token.name] -= 1
        if self._sessions_by_token[context.token.name] <= 0:
            del self._sessions_by_token[context.token.name]

    def _check_capacity(self, context: SessionContext) -> None:
        limit = context.token.max_sessions
        if limit is not None and self._sessions_by_token[context.token.name] >= limit:
            raise CapacityError(f"token {context.token.name!r} already has {limit} open sessions",
                                code="token_session_limit")

    @staticmethod
    def _peer(connection: ServerConnection) -> str:
        address = connection.remote_address
        return f"{address[0]}:{address[1]}" if address else "?"

    def _log_token_problems(self) -> None:
        if self.tokens.load_error:
            self.log.warning("token file unreadable; keeping the last good one", reason=self.tokens.load_error)
        for problem in self.tokens.problems:
            self.log.warning("token file: line skipped", file=str(self.tokens.path), line=problem.line,
                             reason=problem.message)

    # --- sessions --------------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        context = self._contexts.get(connection)
        if context is None:  # cannot happen: process_request accepted it
            await connection.close(1011, "no session context")
            return
        try:
            runner = SessionRunner(connection, context, protocol_for(context.params),
                                   self.providers[context.params.provider], logger=self.log,
                                   flush_timeout=self.config.server.flush_timeout_seconds)
            await runner.run()
        except Exception:
            self.log.exception("session failed", **context.log_fields())
            await connection.close(1011, "internal error")
        finally:
            self._release(connection)

    @property
    def active_sessions(self) -> int:
        return len(self._contexts)

    def status(self) -> dict[str, Any]:
        return {"sessions": self.active_sessions, "providers": sorted(self.providers)}
