"""Everything decided from the HTTP upgrade request, before any websocket frame. Pure.

Turns a request (target and headers) into either an accepted :class:`SessionContext` or an
:class:`SttServerError` that the server answers with a plain HTTP status and a JSON body.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from websockets.datastructures import Headers

from . import web
from .config import Config
from .errors import ForbiddenError, NotFoundError, RequestError, SttServerError
from .endpoints import ENDPOINT_PATHS, Endpoint
from .session import SessionParams, parse_session, split_target
from .tokens import TokenEntry, TokenTable

# Browsers cannot set headers on a websocket, so a token may come as the subprotocol pair
# ["token", "<token>"] (Deepgram's convention); the server then selects "token".
TOKEN_SUBPROTOCOL = "token"
# OpenAI's browser convention: the key as the subprotocol "openai-insecure-api-key.<key>" beside
# "realtime", which the server selects.
OPENAI_KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
OPENAI_SUBPROTOCOL = "realtime"

# The request headers as websockets gives them (a multi-valued Headers) or a plain mapping
# (unit tests, and callers that already hold single values).
RequestHeaders = Headers | Mapping[str, str]


def header_values(headers: RequestHeaders, name: str) -> list[str]:
    """Every value of header ``name``. ``Headers.get`` and ``headers[name]`` raise
    MultipleValuesError when a client repeats a header; this never does."""
    if isinstance(headers, Headers):
        return headers.get_all(name)
    value = headers.get(name)
    return [] if value is None else [value]


def single_header(headers: RequestHeaders, name: str) -> str | None:
    """The one value of a header that may appear once (RFC 9110 fields that are not lists), or
    a 400 ``duplicate_header`` naming it: two ``Authorization`` headers could otherwise make
    two layers (a proxy and this server) authenticate different credentials."""
    values = header_values(headers, name)
    if len(values) > 1:
        raise RequestError(f"the {name} header appears {len(values)} times; send it once",
                           parameter=name, code="duplicate_header")
    return values[0] if values else None


# Headers this server reads that must come once (Sec-WebSocket-Protocol may repeat: RFC 6455).
SINGLE_HEADERS = ("Authorization", "Origin")


def check_single_headers(headers: RequestHeaders) -> None:
    """400 ``duplicate_header`` for the first of SINGLE_HEADERS that is repeated: checked
    before anything else, so the answer does not depend on which check would come first."""
    for name in SINGLE_HEADERS:
        single_header(headers, name)


@dataclass(frozen=True)
class SessionContext:
    session_id: str
    params: SessionParams
    token: TokenEntry
    peer: str

    def log_fields(self) -> dict[str, str]:
        return {"session_id": self.session_id, "token_name": self.token.name,
                "provider": self.params.provider, "peer": self.peer}


def token_from_request(target: str, headers: RequestHeaders, subprotocols: Collection[str]) -> str | None:
    """The presented token: query ``token``, then ``Authorization``, then the subprotocol pair
    (or OpenAI's key subprotocol).

    A repeated ``Authorization`` header is a 400 even when the query holds the token."""
    _, query = split_target(target)
    authorization = single_header(headers, "Authorization") or ""
    if query.get("token"):
        return query["token"]
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() in ("bearer", "token") and credential.strip():
        return credential.strip()
    offered = list(subprotocols)
    if TOKEN_SUBPROTOCOL in offered:
        index = offered.index(TOKEN_SUBPROTOCOL)
        if index + 1 < len(offered):
            return offered[index + 1]
    for subprotocol in offered:
        key = subprotocol.removeprefix(OPENAI_KEY_SUBPROTOCOL_PREFIX)
        if key and key != subprotocol:
            return key
    return None


def offered_subprotocols(headers: RequestHeaders) -> list[str]:
    """The offered subprotocols, in order. RFC 6455 (4.1) lets ``Sec-WebSocket-Protocol``
    appear several times, meaning one list of all the values; websockets' own negotiation
    reads it so, and the token pair must be found in that same list."""
    return [part.strip() for raw in header_values(headers, "Sec-WebSocket-Protocol")
            for part in raw.split(",") if part.strip()]


def check_origin(headers: RequestHeaders, allowed: Collection[str]) -> None:
    """Refuse a browser page from an origin not in ``allowed`` (cross-site websocket hijacking).

    An empty ``allowed`` admits every origin. A request without ``Origin`` is not from a browser
    page and is admitted: non-browser clients can send any Origin they like anyway.
    """
    origin = single_header(headers, "Origin")  # twice: 400, whatever ``allowed`` says
    if not allowed or origin is None or origin in allowed:
        return
    raise ForbiddenError(f"origin {origin!r} is not allowed to open sessions", code="origin_forbidden")


def accept_session(
    target: str,
    headers: RequestHeaders,
    *,
    config: Config,
    tokens: TokenTable,
    providers: Collection[str],
    peer: str,
) -> SessionContext:
    """Validate the headers' shape, the origin, the URL, then the token, then the token's right
    to the provider and model. A token limited to some models gets the first of them when the
    URL names none."""
    check_single_headers(headers)
    check_origin(headers, config.limits.allowed_origins)
    params = parse_session(target, defaults=config.session, default_provider=config.server.default_provider,
                           providers=providers)
    if params.endpoint is Endpoint.OPENAI and not config.openai_realtime.enabled:
        raise NotFoundError("OpenAI Realtime transcription is turned off here (openai_realtime.enabled)",
                            code="not_found")
    token = token_from_request(target, headers, offered_subprotocols(headers))
    entry = tokens.authenticate(token)
    return SessionContext(session_id=uuid.uuid4().hex, params=within_rights(entry, params), token=entry, peer=peer)


def within_rights(entry: TokenEntry, params: SessionParams) -> SessionParams:
    """``params`` as ``entry`` may use them, or ForbiddenError: its provider, and its model (a
    token limited to some models gets the first of them when the session names none)."""
    TokenTable.check_provider(entry, params.provider)
    if entry.models is None:
        return params
    model = params.model or entry.models[0]
    TokenTable.check_model(entry, model)
    return replace(params, model=model)


# Paths that are logged as they are; any other path may carry a secret (a token pasted in as
# /v1/listen/<token>) and is logged with everything after its known prefix masked.
_LOGGABLE_PATHS = frozenset([*ENDPOINT_PATHS, *(p + "/" for p in ENDPOINT_PATHS), *web.PAGES, web.PROVIDERS_PATH,
                             "/healthz", "/readyz", "/metrics"])
REDACTED_PATH = "[redacted]"


def path_for_log(path: str) -> str:
    """``path`` fit for the log: known paths as they are; under a known endpoint, the endpoint
    and ``/[redacted]``; any other path only as ``/[redacted]`` and its length."""
    if path in _LOGGABLE_PATHS:
        return path
    for endpoint in ENDPOINT_PATHS:
        if path.startswith(endpoint + "/"):
            return f"{endpoint}/{REDACTED_PATH}"
    return f"/{REDACTED_PATH} ({len(path)} chars)"


def error_body(error: SttServerError) -> bytes:
    body: dict[str, object] = {"error": error.code, "message": error.message}
    parameter = getattr(error, "parameter", None)
    if parameter:
        body["parameter"] = parameter
    return json.dumps(body).encode() + b"\n"
