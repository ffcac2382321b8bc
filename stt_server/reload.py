"""What a SIGHUP may change in a running server. Pure: two configs in, a plan out.

Keys that only matter when a session or a handshake starts (limits, token rules, session
defaults, metrics access, the log level) take effect at once; keys baked into the listening
socket, the engines or open files (address, TLS paths, providers, journal, websocket
timeouts) need a restart: the plan keeps their running values and names them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import Config

# Dotted keys (or whole sections) that a reload does not apply.
RESTART_ONLY = (
    "server.host", "server.port", "server.default_provider", "server.max_message_bytes", "server.workers",
    "limits.handshake_timeout_seconds", "limits.ping_interval_seconds", "limits.ping_timeout_seconds",
    "limits.close_timeout_seconds", "limits.engine_call_timeout_seconds",
    "tokens", "logging.format", "tls", "journal", "providers", "cluster",
    # The Wyoming listener's socket; its token, defaults and limits apply to the next session.
    "wyoming.enabled", "wyoming.host", "wyoming.port",
)
_IGNORED = ("source",)


@dataclass(frozen=True)
class ReloadPlan:
    config: Config  # the config to run with: the new one, less the restart-only changes
    applied: tuple[str, ...]  # changed keys now in force
    needs_restart: tuple[str, ...]  # changed keys kept at their running value


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the leaf fields that differ; a changed ``providers`` entry counts as one key."""
    if dataclasses.is_dataclass(old) and type(old) is type(new) and not prefix.startswith("providers"):
        keys: list[str] = []
        for f in dataclasses.fields(old):
            name = f"{prefix}.{f.name}" if prefix else f.name
            if name in _IGNORED:
                continue
            keys += changed_keys(getattr(old, f.name), getattr(new, f.name), name)
        return keys
    return [] if old == new else [prefix]


def restart_only(key: str) -> bool:
    """Whether a SIGHUP leaves the dotted ``key`` at its running value (the configuration
    reference's SIGHUP column)."""
    return any(key == rule or key.startswith(rule + ".") for rule in RESTART_ONLY)


def _with(config: Any, dotted: str, value: Any) -> Any:
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: _with(getattr(config, head), rest, value)})


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    changed = changed_keys(old, new)
    applied = tuple(k for k in changed if not restart_only(k))
    kept = tuple(k for k in changed if restart_only(k))
    config = new
    for key in kept:
        config = _with(config, key, _get(old, key))
    return ReloadPlan(config, applied, kept)
