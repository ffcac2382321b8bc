"""Everything decided from the HTTP upgrade request, before any websocket frame. Pure.

Turns a request (target and headers) into either an accepted :class:`SessionContext` or an
:class:`SttServerError` that the server answers with a plain HTTP status and a JSON body.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from .config import Config
from .errors import ForbiddenError, SttServerError
from .session import SessionParams, parse_session, split_target
from .tokens import TokenEntry, TokenTable

# Browsers cannot set headers on a websocket, so a token may come as the subprotocol pair
# ["token", "<token>"] (Deepgram's convention); the server then selects "token".
TOKEN_SUBPROTOCOL = "token"


@dataclass(frozen=True)
class SessionContext:
    session_id: str
    params: SessionParams
    token: TokenEntry
    peer: str

    def log_fields(self) -> dict[str, str]:
        return {"session_id": self.session_id, "token_name": self.token.name,
                "provider": self.params.provider, "peer": self.peer}


def token_from_request(target: str, headers: Mapping[str, str], subprotocols: Collection[str]) -> str | None:
    """The presented token: query ``token``, then ``Authorization``, then the subprotocol pair."""
    _, query = split_target(target)
    if query.get("token"):
        return query["token"]
    authorization = headers.get("Authorization", "")
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() in ("bearer", "token") and credential.strip():
        return credential.strip()
    offered = list(subprotocols)
    if TOKEN_SUBPROTOCOL in offered:
        index = offered.index(TOKEN_SUBPROTOCOL)
        if index + 1 < len(offered):
            return offered[index + 1]
    return None


def offered_subprotocols(headers: Mapping[str, str]) -> list[str]:
    raw = headers.get("Sec-WebSocket-Protocol", "")
    return [part.strip() for part in raw.split(",") if part.strip()]


def check_origin(headers: Mapping[str, str], allowed: Collection[str]) -> None:
    """Refuse a browser page from an origin not in ``allowed`` (cross-site websocket hijacking).

    An empty ``allowed`` admits every origin. A request without ``Origin`` is not from a browser
    page and is admitted: non-browser clients can send any Origin they like anyway.
    """
    origin = headers.get("Origin")
    if not allowed or origin is None or origin in allowed:
        return
    raise ForbiddenError(f"origin {origin!r} is not allowed to open sessions", code="origin_forbidden")


def accept_session(
    target: str,
    headers: Mapping[str, str],
    *,
    config: Config,
    tokens: TokenTable,
    providers: Collection[str],
    peer: str,
) -> SessionContext:
    """Validate the origin, the URL, then the token, then the token's right to the provider and
    model. A token limited to some models gets the first of them when the URL names none."""
    check_origin(headers, config.limits.allowed_origins)
    params = parse_session(target, defaults=config.session, default_provider=config.server.default_provider,
                           providers=providers)
    token = token_from_request(target, headers, offered_subprotocols(headers))
    entry = tokens.authenticate(token)
    tokens.check_provider(entry, params.provider)
    if entry.models is not None:
        model = params.model or entry.models[0]
        tokens.check_model(entry, model)
        params = replace(params, model=model)
    return SessionContext(session_id=uuid.uuid4().hex, params=params, token=entry, peer=peer)


def error_body(error: SttServerError) -> bytes:
    body: dict[str, object] = {"error": error.code, "message": error.message}
    parameter = getattr(error, "parameter", None)
    if parameter:
        body["parameter"] = parameter
    return json.dumps(body).encode() + b"\n"
