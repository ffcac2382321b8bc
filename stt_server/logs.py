"""Logging: structlog for our lines, the same renderer for the stdlib (websockets) lines.

Tokens must never reach a log line. The session code logs token *names* only; as a second
line of defence every rendered value passes through :func:`redact`, which masks anything
shaped like ``token=...`` or an ``Authorization`` credential.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import IO, Any

import structlog

_SECRET_PATTERNS = (
    (re.compile(r"(?i)(token=)[^&\s\"',;]+"), r"\1[redacted]"),
    (re.compile(r"(?i)\b(bearer|token)(\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1\2[redacted]"),
)

CHATTY_LIBRARIES = ("websockets", "faster_whisper")

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def redact(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_event(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def configure(level: str = "info", fmt: str = "console", stream: IO[str] | None = None) -> None:
    """Route structlog and stdlib logging through one handler on ``stream`` (stderr)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _redact_event, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    set_level(level)


def set_level(level: str) -> None:
    numeric = LEVELS[level]
    logging.getLogger().setLevel(numeric)
    # Libraries that log per frame or per decode: websockets (every frame and header at DEBUG,
    # each connection at INFO), faster-whisper (two INFO lines per model call). Our session
    # lines say the same with context, so only their warnings are worth showing.
    for chatty in CHATTY_LIBRARIES:
        logging.getLogger(chatty).setLevel(max(numeric, logging.WARNING))


def get_logger(name: str = "stt_server") -> Any:
    return structlog.get_logger(name)
