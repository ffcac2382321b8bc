"""The configuration's sections: frozen dataclasses whose fields carry their defaults, and the
checks of their values (``__post_init__``). Pure. Loading them from YAML, environment and
command-line overrides is :mod:`stt_server.config`, which also hands these names on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


def resolve_config_path(path: str, source: str | None) -> Path:
    """``~`` expanded; a relative path is relative to the config file's folder (or the working
    folder when running on built-in defaults)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or source is None:
        return candidate
    return Path(source).resolve().parent / candidate


class InvalidValue(Exception):
    """A key's value that cannot stand; :func:`~stt_server.config.build` names the file too."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def check(ok: bool, key: str, reason: str) -> None:
    """Validation inside ``__post_init__``; not ``assert``, which ``python -O`` skips."""
    if not ok:
        raise InvalidValue(key, reason)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    # Provider used when the URL names none.
    default_provider: str = "whisper"
    # Largest websocket message accepted, in bytes (binary audio frame or JSON text frame).
    max_message_bytes: int = 4 * 1024 * 1024
    # Deprecated and ignored: finishing a stream no longer has a deadline that drops audio
    # (limits.engine_call_timeout_seconds bounds each engine call instead). Kept so old configs load.
    flush_timeout_seconds: float = 60.0
    # Graceful shutdown (SIGTERM/SIGINT): how long open sessions get to finish the audio they
    # have sent before they are cut and the process exits. Keep systemd's TimeoutStopSec above it.
    drain_timeout_seconds: float = 30.0
    # Server processes on this box sharing the port (SO_REUSEPORT), started and supervised by a
    # main process. 1 = one process, no supervisor. Each worker loads its own engines.
    workers: int = 1

    def __post_init__(self) -> None:
        check(0 <= self.port <= 65535, "server.port", "must be between 0 and 65535")
        check(1 <= self.workers <= 64, "server.workers", "must be between 1 and 64")
        check(self.max_message_bytes >= 1024, "server.max_message_bytes", "must be at least 1024")
        check(self.flush_timeout_seconds > 0, "server.flush_timeout_seconds", "must be positive")
        check(0 < self.drain_timeout_seconds <= 3600, "server.drain_timeout_seconds", "must be in (0, 3600]")


@dataclass(frozen=True)
class LimitsConfig:
    """What one client, one token and the whole server may use. 0 means no limit where noted."""

    # Open sessions on the whole server; more are refused with 503 (0 = no limit).
    max_sessions: int = 32
    # Open sessions per token when the token file gives no max_sessions (0 = no limit).
    max_sessions_per_token: int = 0
    # Largest JSON text frame (base64 audio included); a larger one closes the session with 1009.
    # Binary frames are bounded by server.max_message_bytes.
    max_base64_message_bytes: int = 1024 * 1024
    # Longest session; at this age the audio received is transcribed and the session closed 1008 (0 = no limit).
    max_session_seconds: float = 3600.0
    # No audio and no KeepAlive for this long: transcribe what came, close 1011, as Deepgram does (0 = never).
    idle_timeout_seconds: float = 10.0
    # TCP connect to completed websocket upgrade (slow or silent clients are dropped).
    handshake_timeout_seconds: float = 10.0
    # Websocket ping every N s; no pong within ping_timeout_seconds closes the session 1011 (0 = off).
    ping_interval_seconds: float = 20.0
    ping_timeout_seconds: float = 20.0
    # After the server's close frame (or a ping timeout), how long the client gets to answer
    # before the TCP connection is dropped.
    close_timeout_seconds: float = 5.0
    # Browser Origin values allowed to open sessions (exact match, e.g. "https://app.example.com");
    # empty = any. Requests without an Origin header (non-browser clients) are always allowed.
    allowed_origins: tuple[str, ...] = ()
    # Audio a session may have received and not yet had transcribed; above it the server stops
    # reading that socket until the engine catches up (TCP slows the sender) (0 = no limit).
    max_backlog_seconds: float = 30.0
    # One engine call running longer fails only the session(s) it belongs to (Error + 1011)
    # and its worker is replaced (0 = no timeout).
    engine_call_timeout_seconds: float = 60.0
    # New sessions get 503 + Retry-After while an engine needs longer than this to clear the
    # finals queued (0 = never refuse for engine load).
    max_engine_wait_seconds: float = 10.0

    def __post_init__(self) -> None:
        check(self.max_backlog_seconds >= 0, "limits.max_backlog_seconds", "must be 0 (no limit) or positive")
        check(self.engine_call_timeout_seconds >= 0, "limits.engine_call_timeout_seconds",
               "must be 0 (no timeout) or positive")
        check(self.max_engine_wait_seconds >= 0, "limits.max_engine_wait_seconds", "must be 0 (never) or positive")
        check(self.max_sessions >= 0, "limits.max_sessions", "must be 0 (no limit) or positive")
        check(self.max_sessions_per_token >= 0, "limits.max_sessions_per_token", "must be 0 (no limit) or positive")
        check(self.max_base64_message_bytes >= 1024, "limits.max_base64_message_bytes", "must be at least 1024")
        check(self.max_session_seconds >= 0, "limits.max_session_seconds", "must be 0 (no limit) or positive")
        check(self.idle_timeout_seconds >= 0, "limits.idle_timeout_seconds", "must be 0 (never) or positive")
        check(self.handshake_timeout_seconds > 0, "limits.handshake_timeout_seconds", "must be positive")
        check(self.ping_interval_seconds >= 0, "limits.ping_interval_seconds", "must be 0 (off) or positive")
        check(self.ping_timeout_seconds >= 0, "limits.ping_timeout_seconds", "must be 0 (off) or positive")
        check(self.close_timeout_seconds > 0, "limits.close_timeout_seconds", "must be positive")
        for index, origin in enumerate(self.allowed_origins):
            check("://" in origin and not origin.endswith("/"), f"limits.allowed_origins[{index}]",
                   f"{origin!r} is not an origin like https://app.example.com (scheme, host, no path)")


@dataclass(frozen=True)
class MetricsConfig:
    # Serve Prometheus metrics at /metrics on the server's own port.
    enabled: bool = True
    # Client addresses (CIDR) that may read /metrics; others get 403. Empty = anyone.
    # Behind a reverse proxy every request comes from the proxy: block /metrics there too.
    allow_from: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # Also require a token from the token file (?token= or Authorization: Bearer), as sessions do.
    require_token: bool = False

    def __post_init__(self) -> None:
        for index, network in enumerate(self.allow_from):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise InvalidValue(f"metrics.allow_from[{index}]",
                               f"{network!r} is not an address or CIDR network") from None

    def allows(self, address: str) -> bool:
        if not self.allow_from:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(network, strict=False) for network in self.allow_from)


@dataclass(frozen=True)
class TlsConfig:
    # PEM certificate chain and private key; with both set the server speaks wss:// (and https
    # for /healthz, /readyz, /metrics). Relative paths are taken from the config file's folder.
    cert_file: str = ""
    key_file: str = ""

    def __post_init__(self) -> None:
        check(bool(self.cert_file) == bool(self.key_file), "tls", "set both cert_file and key_file, or neither")

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


@dataclass(frozen=True)
class JournalConfig:
    """Every final result appended to a JSONL file, fsynced per line, even if the client left."""

    enabled: bool = False
    # Relative paths are taken from the config file's folder.
    file: str = "transcripts.jsonl"
    # Rotate when the file would grow past this; FILE.1 is the newest old file.
    max_bytes: int = 100 * 1024 * 1024
    # Rotated files kept (FILE.1 .. FILE.N); older ones are deleted.
    backups: int = 5

    def __post_init__(self) -> None:
        check(bool(self.file.strip()), "journal.file", "must not be empty")
        check(self.max_bytes >= 4096, "journal.max_bytes", "must be at least 4096")
        check(1 <= self.backups <= 1000, "journal.backups", "must be between 1 and 1000")


@dataclass(frozen=True)
class ClusterConfig:
    """Session limits shared by every instance through Redis (optional)."""

    # redis://[:password@]host:port/db (or rediss:// for TLS); "" = limits count this box only.
    redis_url: str = ""
    # Prefix of the Redis keys; instances sharing it share the counts.
    key_prefix: str = "stt_server"
    # Open sessions across all instances (0 = no limit); limits.max_sessions still holds per box.
    max_sessions: int = 0
    # A lease on a session slot lives this long unless its instance refreshes it (every third of
    # it): the slots of a killed instance come back within this time.
    lease_ttl_seconds: float = 15.0
    # Redis unreachable: admit sessions (limits per box only, logged) or refuse them with 503.
    on_redis_down: Literal["admit", "refuse"] = "admit"
    # Longest wait for one Redis command (and for connecting) before Redis counts as down.
    redis_timeout_seconds: float = 1.0

    def __post_init__(self) -> None:
        check(not self.redis_url or self.redis_url.startswith(("redis://", "rediss://", "unix://")),
               "cluster.redis_url", f"{self.redis_url!r} is not a redis://, rediss:// or unix:// URL")
        check(bool(self.key_prefix.strip()), "cluster.key_prefix", "must not be empty")
        check(self.max_sessions >= 0, "cluster.max_sessions", "must be 0 (no limit) or positive")
        check(0.5 <= self.lease_ttl_seconds <= 3600, "cluster.lease_ttl_seconds", "must be in [0.5, 3600]")
        check(0 < self.redis_timeout_seconds <= 60, "cluster.redis_timeout_seconds", "must be in (0, 60]")


@dataclass(frozen=True)
class TokensConfig:
    # Token file; a relative path is taken relative to the config file's folder.
    file: str = "tokens.txt"
    # Create the file with one fresh token when it does not exist.
    create_if_missing: bool = True
    # A bigger file is not read (a warning says so) and the tokens in force stay: a file
    # replaced by a log or a disk image must not stall reloads. ~100 bytes per token.
    max_file_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        check(bool(self.file.strip()), "tokens.file", "must not be empty")
        check(self.max_file_bytes >= 1024, "tokens.max_file_bytes", "must be at least 1024")


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


@dataclass(frozen=True)
class SessionDefaults:
    """Defaults for the per-session URL parameters."""

    language: str = "en-US"
    interim_results: bool = True
    punctuate: bool = True
    words: bool = True
    # Silence (ms) that ends an utterance; 0 disables endpointing.
    endpointing_ms: int = 800

    def __post_init__(self) -> None:
        check(0 <= self.endpointing_ms <= 60_000, "session.endpointing_ms", "must be 0..60000")


@dataclass(frozen=True)
class OpenAIRealtimeConfig:
    """OpenAI's Realtime API, transcription sessions, at /v1/realtime?intent=transcription."""

    enabled: bool = True
    # limits.idle_timeout_seconds for these sessions: OpenAI's clients send no keep-alive, and
    # a push-to-talk client sends nothing between turns (0 = never).
    idle_timeout_seconds: float = 300.0

    def __post_init__(self) -> None:
        check(self.idle_timeout_seconds >= 0, "openai_realtime.idle_timeout_seconds", "must be 0 (never) or positive")


@dataclass(frozen=True)
class WyomingConfig:
    """Home Assistant's Wyoming protocol on its own TCP port. Wyoming has no authentication:
    the listener is off by default, binds to loopback by default, and every session on it is
    counted as the one token named here (its providers, models and max_sessions apply)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 10300
    # The NAME (second column) of a token in the token file, never the token itself.
    token: str = ""
    # Engine when the client names none ("" = server.default_provider).
    provider: str = ""
    # Language when the client names none ("" = session.language).
    language: str = ""
    # Send transcript-start/-chunk/-stop as finals come, and say so in info.
    transcript_streaming: bool = True
    # Open TCP connections at once; more are answered with an error event and closed.
    max_connections: int = 16

    def __post_init__(self) -> None:
        check(0 <= self.port <= 65535, "wyoming.port", "must be between 0 and 65535")
        check(bool(self.host.strip()), "wyoming.host", "must not be empty")
        check(not self.enabled or bool(self.token.strip()), "wyoming.token",
               "is required when wyoming.enabled is true: the name of a token in the token file, whose "
               "providers, models and max_sessions apply to Wyoming clients (Wyoming has no authentication)")
        check(all(c.isalnum() or c in "-_.@" for c in self.token), "wyoming.token",
               "must be a token's name from the token file (letters, digits, - _ . @), not the token itself")
        check(len(self.language) <= 35 and all(c.isalnum() or c in "-_" for c in self.language),
               "wyoming.language", f"{self.language!r} is not a language tag like en or en-US")
        check(1 <= self.max_connections <= 10_000, "wyoming.max_connections", "must be between 1 and 10000")


@dataclass(frozen=True)
class ProviderConfig:
    """One entry of ``providers:``; ``options`` are checked by the provider's own dataclass."""

    name: str
    enabled: bool
    # Import string "module:Class"; empty means the built-in or entry-point provider of that name.
    module: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)


BUILTIN_PROVIDER_DEFAULTS: dict[str, bool] = {"whisper": True, "null": False, "pocketsphinx": False,
                                              "google": False}


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    tokens: TokensConfig = TokensConfig()
    logging: LoggingConfig = LoggingConfig()
    session: SessionDefaults = SessionDefaults()
    limits: LimitsConfig = LimitsConfig()
    metrics: MetricsConfig = MetricsConfig()
    tls: TlsConfig = TlsConfig()
    journal: JournalConfig = JournalConfig()
    cluster: ClusterConfig = ClusterConfig()
    openai_realtime: OpenAIRealtimeConfig = OpenAIRealtimeConfig()
    wyoming: WyomingConfig = WyomingConfig()
    providers: tuple[ProviderConfig, ...] = tuple(
        ProviderConfig(name, enabled) for name, enabled in BUILTIN_PROVIDER_DEFAULTS.items()
    )
    # Where the config came from (for messages and relative paths); None = built-in defaults.
    source: str | None = None

    def enabled_providers(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.providers if p.enabled)

    def provider(self, name: str) -> ProviderConfig:
        for entry in self.providers:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def resolve_path(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        return resolve_config_path(path, self.source)


