"""Plain HTTP answers given before any upgrade: the kiosk page, its assets, and the provider list.

Pure apart from reading the packaged files in ``stt_server/static/`` (once, then cached).
The page is served from the same origin as the websocket endpoints, so it needs no CORS and
no CDN: everything it uses ships in the package.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

STATIC_FOLDER = "static"

# URL path → file in stt_server/static/. A fixed table: no client-chosen path reaches the
# file system.
PAGES: Mapping[str, str] = {
    "/": "kiosk.html",
    "/index.html": "kiosk.html",
    "/static/kiosk.js": "kiosk.js",
    "/static/kiosk.css": "kiosk.css",
    "/static/favicon.svg": "favicon.svg",
    "/favicon.ico": "favicon.svg",
}

CONTENT_TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

# The page loads only its own files and talks only to its own origin (ws/wss included).
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self' ws: wss:; media-src 'self' blob:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'")

PROVIDERS_PATH = "/v1/providers"
# ``GET /v1/listen?...&check=1`` without an upgrade: every handshake check, then 200 or the
# refusal's JSON body (a browser cannot read the body of a refused websocket upgrade).
CHECK_PARAMETER = "check"


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": self.content_type, "Cache-Control": "no-cache",
                   "X-Content-Type-Options": "nosniff"}
        if self.content_type.startswith("text/html"):
            headers["Content-Security-Policy"] = _CSP
            headers["Referrer-Policy"] = "no-referrer"
        return headers


def static_file(path: str) -> StaticFile | None:
    """The packaged file served at ``path``, or None when ``path`` is not a page or asset."""
    name = PAGES.get(path)
    return _load(name) if name is not None else None


@cache
def _load(name: str) -> StaticFile:
    body = resources.files("stt_server").joinpath(STATIC_FOLDER, name).read_bytes()
    suffix = name[name.rfind("."):]
    return StaticFile(body, CONTENT_TYPES.get(suffix, "application/octet-stream"))


def asks_for_check(target: str) -> bool:
    """Whether a request target (path and query) asks for a handshake dry run."""
    values = parse_qs(urlsplit(target).query).get(CHECK_PARAMETER, [])
    return any(value.lower() in ("1", "true", "yes") for value in values)


def providers_body(*, enabled: Collection[str], default: str, language: str,
                   allowed: Collection[str] | None = None,
                   languages: Mapping[str, Sequence[str] | None] | None = None) -> bytes:
    """``GET /v1/providers``: what a client may choose. ``allowed`` narrows the list to what a
    presented token may use (None: no token presented, every enabled provider).

    ``providers`` stays a list of names (what clients read since the first release); ``details``
    holds one object per provider that later keys can join (models, say). ``languages`` is a
    list of primary subtags ("en") or null for "any tag; the engine decides".
    """
    names = sorted(name for name in enabled if allowed is None or name in allowed)
    fallback = names[0] if names else None
    known = languages or {}
    details = [{"name": name, "languages": _language_list(known.get(name))} for name in names]
    body: dict[str, Any] = {"providers": names, "default": default if default in names else fallback,
                            "language": language, "details": details}
    return json.dumps(body).encode() + b"\n"


def _language_list(languages: Sequence[str] | None) -> list[str] | None:
    return None if languages is None else sorted(set(languages))
