"""Configuration: YAML (and overrides) → validated, frozen dataclasses. Pure: no I/O but reading.

Every section is a frozen dataclass whose fields carry their defaults (``config_sections.py``,
whose names this module hands on); :func:`build` turns a
mapping into one, rejecting unknown keys, wrong types and impossible values with a
:class:`ConfigError` that names the key and the file. Providers reuse :func:`build` for their
own option dataclasses, so their keys get the same checks.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from .config_sections import (
    BUILTIN_PROVIDER_DEFAULTS,
    ClusterConfig,
    Config,
    InvalidValue,
    JournalConfig,
    LimitsConfig,
    LoggingConfig,
    MetricsConfig,
    OpenAIRealtimeConfig,
    ProviderConfig,
    ServerConfig,
    SessionDefaults,
    TlsConfig,
    TokensConfig,
    WyomingConfig,
    check,
    resolve_config_path,
)
from .errors import ConfigError

# The sections are defined in config_sections; ``from stt_server.config import LimitsConfig`` goes on working.
__all__ = ["BUILTIN_PROVIDER_DEFAULTS", "ClusterConfig", "Config", "ENV_PREFIX", "InvalidValue", "JournalConfig",
           "LimitsConfig", "LoggingConfig", "MetricsConfig", "OpenAIRealtimeConfig", "ProviderConfig", "ServerConfig",
           "SessionDefaults", "TlsConfig", "TokensConfig", "WyomingConfig", "apply_overrides", "build", "check",
           "env_overrides", "from_mapping", "load", "read_yaml", "require", "resolve_config_path", "within"]

ENV_PREFIX = "STT_SERVER_"


def require(ok: bool, message: str) -> None:
    """For option dataclasses of providers: a ValueError that :func:`build` reports as a
    config error naming the section and the file."""
    if not ok:
        raise ValueError(message)


def within(name: str, value: float, low: float, high: float) -> None:
    """``low <= value <= high`` or a ValueError naming the option (see :func:`require`)."""
    require(low <= value <= high, f"{name} must be between {low:g} and {high:g}, got {value!r}")


T = typing.TypeVar("T")


def build(cls: type[T], data: Any, *, key: str, source: str | None) -> T:
    """Build dataclass ``cls`` from ``data``, checking keys, types and values."""
    try:
        return _build(cls, data, key)
    except InvalidValue as invalid:
        raise ConfigError(f"{_where(source)}: {invalid.key}: {invalid.reason}", code="config_error") from None


def _where(source: str | None) -> str:
    return source or "built-in defaults"


def _build(cls: type[T], data: Any, key: str) -> T:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InvalidValue(key or "(top level)", f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise InvalidValue(_join(key, unknown[0]), f"unknown key (known keys: {known})")
    values = {name: _coerce(hints[name], data[name], _join(key, name)) for name in data}
    try:
        return cls(**values)
    except InvalidValue:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidValue(key or "(top level)", str(exc)) from None


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except InvalidValue as exc:
                errors.append(exc.reason)
        raise InvalidValue(key, " or ".join(errors))
    if origin is Literal:
        if value not in args:
            raise InvalidValue(key, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)  # type: ignore[arg-type]
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise InvalidValue(key, f"expected a list, got {type(value).__name__}")
        return tuple(_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidValue(key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue(key, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidValue(key, f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InvalidValue(key, f"expected a string, got {value!r}")
        return value
    if hint is Any or origin in (Mapping, dict) or hint in (Mapping, dict):
        return value
    raise InvalidValue(key, f"unsupported type {hint!r}")  # a bug in a dataclass, not in the file


def _providers(data: Any, source: str | None) -> tuple[ProviderConfig, ...]:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where(source)}: providers: expected a mapping of provider name to options")
    merged: dict[str, Any] = {name: {} for name in BUILTIN_PROVIDER_DEFAULTS}
    # A bare `null:` key is YAML for None; it can only mean the null provider.
    merged.update({"null" if name is None else name: options for name, options in data.items()})
    entries = []
    for name, options in merged.items():
        key = f"providers.{name}"
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise ConfigError(f"{_where(source)}: {key}: expected a mapping, got {type(options).__name__}")
        options = dict(options)
        enabled = options.pop("enabled", BUILTIN_PROVIDER_DEFAULTS.get(str(name), True))
        module = options.pop("module", "")
        if not isinstance(enabled, bool):
            raise ConfigError(f"{_where(source)}: {key}.enabled: expected true or false, got {enabled!r}")
        if not isinstance(module, str):
            raise ConfigError(f"{_where(source)}: {key}.module: expected an import string, got {module!r}")
        entries.append(ProviderConfig(str(name), enabled, module, types.MappingProxyType(options)))
    return tuple(entries)


def from_mapping(data: Any, *, source: str | None = None) -> Config:
    """Validate a parsed YAML document into a :class:`Config`."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where(source)}: expected a mapping at the top level")
    sections = dict(data)
    if "source" in sections:
        raise ConfigError(f"{_where(source)}: source: unknown key")
    providers = _providers(sections.pop("providers", None), source)
    sections["source"] = source
    config = build(Config, {k: v for k, v in sections.items() if k != "providers"}, key="", source=source)
    config = dataclasses.replace(config, providers=providers)
    if config.server.default_provider not in config.enabled_providers():
        raise ConfigError(
            f"{_where(source)}: server.default_provider: {config.server.default_provider!r} is not an "
            f"enabled provider (enabled: {', '.join(config.enabled_providers()) or 'none'})"
        )
    if config.wyoming.provider and config.wyoming.provider not in config.enabled_providers():
        raise ConfigError(
            f"{_where(source)}: wyoming.provider: {config.wyoming.provider!r} is not an enabled provider "
            f"(enabled: {', '.join(config.enabled_providers()) or 'none'})"
        )
    return config


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """The file's YAML, or a one-line ConfigError naming the file (and the line, for YAML errors)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte offset {exc.start}); is it the right file?") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = _one_line(exc.problem or exc.context or "error")
        raise ConfigError(f"{path}: not valid YAML: {where}{problem}") from None
    except yaml.YAMLError as exc:  # ReaderError (a control character: binary data) and others
        raise ConfigError(f"{path}: not valid YAML: {_one_line(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def apply_overrides(data: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``data`` with dotted keys (``server.port``) set; creates sections as needed."""
    result: dict[str, Any] = _deep_copy(data or {})
    for dotted, value in overrides.items():
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[leaf] = value
    return result


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    return data


# Short environment names for the overrides people reach for most.
_ENV_SHORTCUTS = {"HOST": "server.host", "PORT": "server.port", "LOG_LEVEL": "logging.level",
                  "LOG_FORMAT": "logging.format", "TOKEN_FILE": "tokens.file"}


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``STT_SERVER_PORT=9000`` or ``STT_SERVER_SERVER__PORT=9000`` → ``{"server.port": 9000}``.

    Values are parsed as YAML scalars so ``9000`` is an int and ``false`` a bool.
    ``STT_SERVER_CONFIG`` names the file and is not an override.
    """
    overrides: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        suffix = name[len(ENV_PREFIX):]
        dotted = _ENV_SHORTCUTS.get(suffix) or suffix.lower().replace("__", ".")
        try:
            overrides[dotted] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            overrides[dotted] = raw
    return overrides


def load(path: str | None, *, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
         default_path: str = "config.yaml") -> Config:
    """Load the config file (or defaults when there is none), then env, then explicit overrides.

    ``path`` None means ``$STT_SERVER_CONFIG`` or ``config.yaml`` in the working folder if it
    exists; an explicitly named file that does not exist is an error.
    """
    environ = os.environ if environ is None else environ
    explicit = path or environ.get(ENV_PREFIX + "CONFIG")
    if explicit:
        source: str | None = str(explicit)
        data = read_yaml(explicit)
    elif Path(default_path).is_file():
        source = default_path
        data = read_yaml(default_path)
    else:
        source, data = None, {}
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{_where(source)}: expected a mapping at the top level")
    data = apply_overrides(data, {**env_overrides(environ), **dict(overrides or {})})
    return from_mapping(data, source=source)
