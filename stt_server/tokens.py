"""The flat token file and the authentication of a presented token.

Format, one entry per line, ``#`` starts a comment::

    # token-or-hash          name     options
    sha256:9f86d08...        kiosk-1  providers=whisper,google max_sessions=2
    sha256:3a7bd3e...        berlin   models=base,tiny.en
    s3cr3t-plain-token       laptop

Lookups go by the token's SHA-256 (a dict, so no scan), then a constant-time compare.
Tokens never leave this module: callers get the entry's *name*.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import AuthError, ForbiddenError

HASH_PREFIX = "sha256:"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@")


@dataclass(frozen=True)
class TokenEntry:
    name: str
    digest: str  # hex SHA-256 of the token
    providers: frozenset[str] | None = None  # None = any enabled provider
    max_sessions: int | None = None
    line: int = 0
    # Models (?model=) this token may use, in the file's order; the first is its default.
    # None = any model the provider enables.
    models: tuple[str, ...] | None = None

    def allows(self, provider: str) -> bool:
        return self.providers is None or provider in self.providers

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(frozen=True)
class TokenFileProblem:
    line: int
    message: str


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A random token: 32 bytes, URL-safe, so it can go in a query string unescaped."""
    return secrets.token_urlsafe(32)


def parse_token_file(text: str) -> tuple[list[TokenEntry], list[TokenFileProblem]]:
    """Parse the file's text; bad lines are reported with their number and skipped."""
    entries: list[TokenEntry] = []
    problems: list[TokenFileProblem] = []
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            entry = _parse_line(line, number)
        except ValueError as exc:
            problems.append(TokenFileProblem(number, str(exc)))
            continue
        if entry.name in names:
            problems.append(TokenFileProblem(number, f"duplicate name {entry.name!r}; later line ignored"))
            continue
        names.add(entry.name)
        entries.append(entry)
    return entries, problems


def _parse_line(line: str, number: int) -> TokenEntry:
    fields = line.split()
    if len(fields) < 2:
        raise ValueError("expected a token (or sha256:<hex>) and a name")
    secret, name, *options = fields
    if secret.startswith(HASH_PREFIX):
        digest = secret[len(HASH_PREFIX):].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError("sha256: must be followed by 64 hex digits")
    else:
        digest = digest_of(secret)
    if not set(name) <= _NAME_CHARS:
        raise ValueError(f"name {name!r} may hold only letters, digits and -_.@")
    providers: frozenset[str] | None = None
    max_sessions: int | None = None
    models: tuple[str, ...] | None = None
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not value:
            raise ValueError(f"option {option!r} is not key=value")
        if key == "providers":
            providers = frozenset(p for p in value.split(",") if p)
        elif key == "models":
            models = tuple(dict.fromkeys(m for m in value.split(",") if m))
        elif key == "max_sessions":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"max_sessions must be a positive integer, got {value!r}")
            max_sessions = int(value)
        else:
            raise ValueError(f"unknown option {key!r} (known: providers, models, max_sessions)")
    return TokenEntry(name, digest, providers, max_sessions, number, models=models or None)


def format_entry(token_digest: str, name: str, providers: frozenset[str] | None = None,
                 max_sessions: int | None = None, models: tuple[str, ...] | None = None) -> str:
    parts = [HASH_PREFIX + token_digest, name]
    if providers:
        parts.append("providers=" + ",".join(sorted(providers)))
    if models:
        parts.append("models=" + ",".join(models))
    if max_sessions:
        parts.append(f"max_sessions={max_sessions}")
    return " ".join(parts)


class TokenTable:
    """Parsed entries, indexed by digest. Immutable; a reload builds a new one."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self.entries = tuple(entries)
        self._by_digest: Mapping[str, TokenEntry] = {e.digest: e for e in entries}

    def authenticate(self, token: str | None) -> TokenEntry:
        if not token:
            raise AuthError("a token is required: ?token=, 'Authorization: Bearer <token>' or the "
                            "subprotocol pair 'token, <token>'", code="token_missing")
        presented = digest_of(token)
        entry = self._by_digest.get(presented)
        # compare_digest keeps the final check constant-time even though the dict lookup is not;
        # the dict is keyed by a hash of the token, so its timing reveals nothing useful.
        if entry is None or not hmac.compare_digest(entry.digest, presented):
            raise AuthError("unknown token", code="token_invalid")
        return entry

    @staticmethod
    def check_provider(entry: TokenEntry, provider: str) -> None:
        if not entry.allows(provider):
            raise ForbiddenError(f"token {entry.name!r} may not use provider {provider!r}",
                                 code="provider_forbidden")

    @staticmethod
    def check_model(entry: TokenEntry, model: str) -> None:
        if not entry.allows_model(model):
            raise ForbiddenError(f"token {entry.name!r} may not use model {model!r} "
                                 f"(allowed: {', '.join(entry.models or ())})", code="model_forbidden")


class TokenStore:
    """The token file, re-read when it changes (a stat per handshake; cheap next to a handshake)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.table = TokenTable([])
        self.problems: list[TokenFileProblem] = []
        self._stamp: tuple[int, int, int] | None = None
        self.load_error: str | None = None

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the file if it changed since the last read (or always, with ``force``: a
        SIGHUP); True if it was re-read.

        If the file vanishes or cannot be read, the last good table stays in force.
        """
        stamp = self._current_stamp()
        if stamp is None:
            self.load_error = f"{self.path}: cannot read"
            return False
        if stamp == self._stamp and not force:
            return False
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.load_error = f"{self.path}: cannot read: {exc}"
            return False
        entries, self.problems = parse_token_file(text)
        self.table = TokenTable(entries)
        self._stamp = stamp
        self.load_error = None
        return True

    def authenticate(self, token: str | None) -> TokenEntry:
        return self.table.authenticate(token)


def ensure_token_file(path: Path) -> str | None:
    """Create the file (mode 0600) with one fresh token if it is missing; return that token."""
    if path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    token = new_token()
    header = ("# stt_server tokens: <token or sha256:hex> <name> [providers=a,b] [models=x,y] [max_sessions=N]\n"
              "# Add one with: stt-server tokens add NAME\n")
    _write_private(path, header + format_entry(digest_of(token), "default") + "\n", exclusive=True)
    return token


def add_token(path: Path, name: str, providers: frozenset[str] | None = None,
              max_sessions: int | None = None, models: tuple[str, ...] | None = None) -> str:
    """Append a hashed entry for a fresh token; return the token (shown once, never stored)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    entries, _ = parse_token_file(text)
    if any(e.name == name for e in entries):
        raise ValueError(f"a token named {name!r} already exists; revoke it first")
    _parse_line(f"sha256:{'0' * 64} {name}", 0)  # validates the name
    token = new_token()
    if text and not text.endswith("\n"):
        text += "\n"
    _write_private(path, text + format_entry(digest_of(token), name, providers, max_sessions, models) + "\n")
    return token


def revoke_token(path: Path, name: str) -> bool:
    """Remove the entry named ``name``; keeps comments and other lines as they are."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    removed = False
    for raw in lines:
        fields = raw.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[1] == name:
            removed = True
            continue
        kept.append(raw)
    if removed:
        _write_private(path, "".join(kept))
    return removed


def _write_private(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write via a temp file and rename, so a concurrent reload never sees half a file."""
    if exclusive:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
