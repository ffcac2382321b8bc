"""The plain HTTP routes, answered before any websocket upgrade: health, readiness, metrics, the
provider list, the kiosk page and its assets. :attr:`HttpRoutes.table` says which path is which;
every other request is a websocket handshake, which the server admits or refuses.
"""

from __future__ import annotations

import http
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from . import web
from .config import Config
from .errors import CapacityError, ForbiddenError, NotFoundError, SttServerError
from .handshake import error_body, offered_subprotocols, token_from_request
from .metrics import CONTENT_TYPE, Metrics
from .providers import Provider
from .tokens import TokenStore

# Seconds a refused client is asked to wait before retrying (503 over capacity or draining).
RETRY_AFTER_SECONDS = 5


def json_response(status: http.HTTPStatus, body: bytes, extra: Mapping[str, str] | None = None,
                  content_type: str = "application/json") -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Connection", "close"), *(extra or {}).items()])
    return Response(status.value, status.phrase, headers, body)


def file_response(page: web.StaticFile) -> Response:
    headers = Headers([*page.headers().items(), ("Content-Length", str(len(page.body))), ("Connection", "close")])
    return Response(http.HTTPStatus.OK.value, http.HTTPStatus.OK.phrase, headers, page.body)


def error_response(error: SttServerError) -> Response:
    retry_after = (error.retry_after if isinstance(error, CapacityError) else None) or RETRY_AFTER_SECONDS
    extra = {"Retry-After": str(retry_after)} if error.http_status == 503 else None
    return json_response(http.HTTPStatus(error.http_status), error_body(error), extra)


class ServerView(Protocol):
    """What the routes read from the server."""

    config: Config
    tokens: TokenStore
    providers: dict[str, Provider]
    metrics: Metrics
    draining: bool

    def engines_behind(self) -> list[tuple[str, float]]: ...


Handler = Callable[[ServerConnection, Request], Response]


@dataclass(frozen=True)
class Route:
    answer: Handler
    # Whether the route reads tokens, so a changed token file is read first.
    reads_tokens: bool = False
    # Whether a websocket upgrade to the same path is a session instead ("/": the kiosk page,
    # and vosk's and WhisperLive's endpoint).
    page: bool = False


class HttpRoutes:
    def __init__(self, server: ServerView) -> None:
        self.server = server
        self.table: Mapping[str, Route] = {
            "/healthz": Route(self.health),
            "/readyz": Route(self.readiness),
            "/metrics": Route(self.metrics, reads_tokens=True),
            web.PROVIDERS_PATH: Route(self.providers, reads_tokens=True),
            **{path: Route(self.static_file, page=True) for path in web.PAGES},
        }

    def route(self, request: Request) -> Route | None:
        """The route answering ``request``, or None for a websocket handshake."""
        route = self.table.get(request.path.split("?", 1)[0])
        if route is None or (route.page and "Upgrade" in request.headers):
            return None
        return route

    @staticmethod
    def health(_connection: ServerConnection, _request: Request) -> Response:
        return json_response(http.HTTPStatus.OK, b'{"status":"ok"}\n')

    def readiness(self, _connection: ServerConnection, _request: Request) -> Response:
        server = self.server
        problems = [f"provider {name!r} is not ready" for name, provider in sorted(server.providers.items())
                    if not provider.is_ready()]
        missing = set(server.config.enabled_providers()) - set(server.providers)
        problems += [f"provider {name!r} is not loaded" for name in sorted(missing)]
        problems += [f"provider {name!r} is behind: {wait:.1f} s of queued audio to transcribe"
                     for name, wait in server.engines_behind()]
        if server.draining:
            problems.append("draining for shutdown")
        if problems:
            body = {"status": "not_ready", "reasons": problems}
            return json_response(http.HTTPStatus.SERVICE_UNAVAILABLE, json.dumps(body).encode() + b"\n")
        return json_response(http.HTTPStatus.OK, b'{"status":"ready"}\n')

    def metrics(self, connection: ServerConnection, request: Request) -> Response:
        """Raises SttServerError (403, 401, 404) for a request that may not read them."""
        config = self.server.config.metrics
        if not config.enabled:
            raise NotFoundError("/metrics is turned off (metrics.enabled)", code="not_found")
        address = connection.remote_address[0] if connection.remote_address else ""
        if not config.allows(address):
            raise ForbiddenError(f"/metrics is not open to {address}", code="metrics_forbidden")
        if config.require_token:
            self.server.tokens.authenticate(token_from_request(request.path, request.headers,
                                                               offered_subprotocols(request.headers)))
        return json_response(http.HTTPStatus.OK, self.server.metrics.render(), content_type=CONTENT_TYPE)

    def providers(self, _connection: ServerConnection, request: Request) -> Response:
        """The kiosk page's menu. No token needed; a presented token narrows the list to what
        it may use, and a bad one gets 401, so the page can say so before connecting."""
        server = self.server
        token = token_from_request(request.path, request.headers, [])
        allowed = None
        if token is not None:
            try:
                entry = server.tokens.authenticate(token)
            except SttServerError as error:
                return error_response(error)
            allowed = [name for name in server.providers if entry.allows(name)]
        body = web.providers_body(enabled=server.providers.keys(), default=server.config.server.default_provider,
                                  language=server.config.session.language, allowed=allowed,
                                  languages={name: p.languages() for name, p in server.providers.items()})
        return json_response(http.HTTPStatus.OK, body, {"Cache-Control": "no-store"})

    @staticmethod
    def static_file(_connection: ServerConnection, request: Request) -> Response:
        page = web.static_file(request.path.split("?", 1)[0])
        assert page is not None  # the table holds only web.PAGES
        return file_response(page)
