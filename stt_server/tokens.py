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
import io
import os
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import AuthError, ForbiddenError

HASH_PREFIX = "sha256:"
_HEX_DIGITS = frozenset("0123456789abcdef")
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


# A parse in a worker thread holds the GIL but for CPython's 5 ms switch interval; the event
# loop needs it several times per request, so a long parse would still slow every answer.
# Giving it up every so many lines (a few ms of work) keeps /healthz prompt during a reload.
PAUSE_EVERY_LINES = 2000


def parse_token_file(text: str) -> tuple[list[TokenEntry], list[TokenFileProblem]]:
    """Parse the file's text; bad lines are reported with their number and skipped."""
    parsed = parse_token_text(text)
    return parsed.entries, parsed.problems


@dataclass(frozen=True)
class ParsedTokens:
    entries: list[TokenEntry]
    problems: list[TokenFileProblem]  # the first ``max_problems`` bad lines
    problem_count: int  # every bad line


def parse_token_text(text: str, *, max_problems: int | None = None,
                     pause: Callable[[], None] | None = None) -> ParsedTokens:
    """Parse the file's text, keeping at most ``max_problems`` problems (all are counted): a
    garbage file of millions of lines must not become millions of objects in a server.
    ``pause`` is called every PAUSE_EVERY_LINES lines (see read_token_file)."""
    entries: list[TokenEntry] = []
    problems: list[TokenFileProblem] = []
    problem_count = 0
    names: set[str] = set()

    def problem(number: int, message: str) -> None:
        nonlocal problem_count
        problem_count += 1
        if max_problems is None or len(problems) < max_problems:
            problems.append(TokenFileProblem(number, message))

    # Line by line, not text.splitlines(): that one C call on a 50 MB file holds the GIL for
    # ~100 ms. StringIO reads \n, \r\n and \r as line ends.
    for number, raw in enumerate(io.StringIO(text, newline=None), start=1):
        if pause is not None and number % PAUSE_EVERY_LINES == 0:
            pause()
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            entry = _parse_line(line, number)
        except ValueError as exc:
            problem(number, str(exc))
            continue
        if entry.name in names:
            problem(number, f"duplicate name {entry.name!r}; later line ignored")
            continue
        names.add(entry.name)
        entries.append(entry)
    return ParsedTokens(entries, problems, problem_count)


def _parse_line(line: str, number: int) -> TokenEntry:
    fields = line.split()
    if len(fields) < 2:
        raise ValueError("expected a token (or sha256:<hex>) and a name")
    secret, name, *options = fields
    if secret.startswith(HASH_PREFIX):
        digest = secret[len(HASH_PREFIX):].lower()
        if len(digest) != 64 or not set(digest) <= _HEX_DIGITS:
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

    def named(self, name: str) -> TokenEntry:
        """The entry called ``name`` (a listener without authentication, Wyoming, is tied to one
        token by name in the config); AuthError ``token_invalid`` when the file has none."""
        for entry in self.entries:
            if entry.name == name:
                return entry
        holder = self._by_digest.get(digest_of(name))
        if holder is not None:  # a token pasted where its name goes: never echo it
            raise AuthError(f"holds a token itself, not a token's name; use its name, {holder.name!r}",
                            code="token_invalid")
        raise AuthError(f"no token named {name!r} in the token file", code="token_invalid")

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


# A file's identity for "has it changed?": mtime, ctime (a chmod changes only that), size,
# inode. None: it could not be stat'ed.
FileStamp = tuple[int, int, int, int]
DEFAULT_MAX_FILE_BYTES = 8 * 1024 * 1024
# Bad lines quoted in the one warning a reload logs; the rest are only counted.
PROBLEMS_SHOWN = 5


@dataclass(frozen=True)
class TokenFileRead:
    """One attempt to read the token file. ``entries`` None: the file could not be used
    (``error`` says why) and the last good table stays in force."""

    stamp: FileStamp | None
    entries: list[TokenEntry] | None
    problems: list[TokenFileProblem]  # the first few bad lines
    error: str | None = None
    problem_count: int = 0  # every bad line
    # Built with the read, in the same worker thread: indexing 100,000s of entries is work too.
    table: TokenTable | None = None


@dataclass(frozen=True)
class TokenReload:
    """What applying a :class:`TokenFileRead` did, for the caller to log."""

    path: Path
    before: int  # tokens in force before
    after: int  # tokens in force now
    problems: list[TokenFileProblem]  # the first few bad lines
    error: str | None  # set: the file was not used, the last good table is kept
    problem_count: int = 0  # every bad line

    @property
    def emptied(self) -> bool:
        return self.error is None and self.after == 0

    def problem_summary(self) -> str:
        """The first few bad lines with their numbers, then how many more: one log value."""
        parts = [f"line {p.line}: {p.message}" for p in self.problems]
        if self.problem_count > len(self.problems):
            parts.append(f"and {self.problem_count - len(self.problems)} more")
        return "; ".join(parts)


def stamp_of(path: Path) -> FileStamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def read_token_file(path: Path, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> TokenFileRead:
    """Read and parse the token file. Blocking (file I/O, and parsing a big file takes seconds):
    the server runs it in a worker thread. Never raises for what is in or around the file."""
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not hang the reader until a writer
        # appears; regular files ignore the flag.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return TokenFileRead(None, None, [], f"{path}: missing")
    except OSError as exc:
        return TokenFileRead(stamp_of(path), None, [], f"{path}: cannot open: {exc.strerror}")
    try:
        st = os.fstat(fd)
        stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            return TokenFileRead(stamp, None, [], f"{path}: is {kind}")
        if st.st_size > max_bytes:
            return TokenFileRead(stamp, None, [], f"{path}: {st.st_size} bytes, over tokens.max_file_bytes "
                                                  f"({max_bytes})")
        chunks = []
        remaining = max_bytes + 1  # the file may have grown since fstat
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        return TokenFileRead(stamp_of(path), None, [], f"{path}: cannot read: {exc.strerror}")
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        return TokenFileRead(stamp, None, [], f"{path}: over tokens.max_file_bytes ({max_bytes})")
    if b"\0" in data:
        return TokenFileRead(stamp, None, [], f"{path}: binary data (a NUL byte at offset {data.index(0)}), "
                                              "not a token file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return TokenFileRead(stamp, None, [], f"{path}: not UTF-8 text (byte offset {exc.start})")
    parsed = parse_token_text(text, max_problems=PROBLEMS_SHOWN, pause=lambda: time.sleep(0))
    return TokenFileRead(stamp, parsed.entries, parsed.problems, problem_count=parsed.problem_count,
                         table=TokenTable(parsed.entries))


class TokenStore:
    """The token table in force, and which version of the file it came from.

    Reading is separate from applying: :func:`read_token_file` (blocking) can run in a worker
    thread while the event loop keeps serving with the current table, and :meth:`apply`
    swaps the new table in at once. A file that cannot be used keeps the last good table.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.table = TokenTable([])
        self.problems: list[TokenFileProblem] = []
        self.load_error: str | None = None
        self._seen: FileStamp | None | str = "never read"  # the stamp of the last attempt

    def changed(self) -> bool:
        """Whether the file differs from the last attempt to read it (a stat; cheap). A file
        that failed is not retried, nor reported again, until it changes."""
        return stamp_of(self.path) != self._seen

    def read(self) -> TokenFileRead:
        return read_token_file(self.path, max_bytes=self.max_bytes)

    def apply(self, read: TokenFileRead) -> TokenReload:
        before = len(self.table.entries)
        self._seen = read.stamp
        self.load_error = read.error
        if read.entries is not None:
            self.table = read.table if read.table is not None else TokenTable(read.entries)
            self.problems = read.problems
        return TokenReload(self.path, before, len(self.table.entries), read.problems, read.error,
                           read.problem_count)

    def refresh(self, *, force: bool = False) -> bool:
        """Read and apply the file now, if it changed (or always, with ``force``: a SIGHUP).
        True if a new table is in force. Blocking: for start-up and the CLI."""
        if not force and not self.changed():
            return False
        return self.apply(self.read()).error is None

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
