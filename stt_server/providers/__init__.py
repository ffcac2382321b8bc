"""The provider plugin dict: name → import string, imported only when a provider is used.

Finding, loading and validating are separate steps (as flake8's plugin finder does): a
provider that fails to import becomes a ProviderError naming it, not a crash elsewhere.
Third-party engines register under the entry-point group ``stt_server.providers``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from ..config import Config, ProviderConfig, build, resolve_config_path
from ..errors import ConfigError, ProviderError
from .base import Provider, TranscriptionStream

__all__ = ["BUILTIN_PROVIDERS", "ENTRY_POINT_GROUP", "Provider", "TranscriptionStream", "discover",
           "load_class", "create", "options_for", "validate_options"]

BUILTIN_PROVIDERS: Mapping[str, str] = {
    "whisper": "stt_server.providers.whisper:WhisperProvider",
    "null": "stt_server.providers.null:NullProvider",
    "google": "stt_server.providers.google:GoogleProvider",
    "pocketsphinx": "stt_server.providers.pocketsphinx:PocketsphinxProvider",
}

ENTRY_POINT_GROUP = "stt_server.providers"


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    import_string: str
    origin: str  # "built-in", "entry point" or "config"


def discover(config: Config | None = None) -> dict[str, ProviderSpec]:
    """Every provider we know of: built-ins, entry points, then ``module:`` keys in config."""
    found = {name: ProviderSpec(name, target, "built-in") for name, target in BUILTIN_PROVIDERS.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ProviderSpec(ep.name, ep.value, "entry point"))
    if config is not None:
        for entry in config.providers:
            if entry.module:
                found[entry.name] = ProviderSpec(entry.name, entry.module, "config")
    return found


def load_class(spec: ProviderSpec) -> type[Provider]:
    module_name, _, attr = spec.import_string.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, attr) if attr else module
    except Exception as exc:  # any import failure is this provider's, not the server's
        raise ProviderError(f"provider {spec.name!r} ({spec.import_string}) cannot be imported: "
                            f"{type(exc).__name__}: {exc}", code="provider_unavailable") from exc
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ProviderError(f"provider {spec.name!r}: {spec.import_string} is not a Provider subclass",
                            code="provider_unavailable")
    return cls


def options_for(entry: ProviderConfig, cls: type[Provider], source: str | None) -> Any:
    """The provider's options dataclass from a config entry: paths resolved, keys and values
    checked (ConfigError naming ``providers.<name>.<key>`` and the file)."""
    raw = dict(entry.options)
    # Values that are names rather than paths (a model name such as "tiny.en") stay as they are.
    not_paths: frozenset[str] = getattr(cls, "not_paths", frozenset())
    for name in cls.path_options:
        value = raw.get(name)
        if isinstance(value, str) and value and value not in not_paths:
            raw[name] = str(resolve_config_path(value, source))
        elif isinstance(value, list):
            raw[name] = [str(resolve_config_path(item, source))
                         if isinstance(item, str) and item and item not in not_paths else item for item in value]
    return build(cls.Options, raw, key=f"providers.{entry.name}", source=source)


def validate_options(config: Config) -> None:
    """Check every enabled provider's options when the config is loaded, so ``check-config``,
    a SIGHUP reload and a start give the same answer to a typo such as ``beam_sise``.

    Imports each enabled provider's module (not its engine: models load in ``start``). One that
    cannot be imported is a ConfigError too: the config enables something this install lacks.
    Disabled providers are not checked; their options take effect only once enabled.
    """
    specs = discover(config)
    where = config.source or "built-in defaults"
    for entry in config.providers:
        if not entry.enabled:
            continue
        spec = specs.get(entry.name)
        if spec is None:
            raise ConfigError(f"{where}: providers.{entry.name}: no such provider "
                              f"(known: {', '.join(sorted(specs))}); set 'module: package.module:Class'")
        try:
            cls = load_class(spec)
        except ProviderError as error:
            raise ConfigError(f"{where}: providers.{entry.name}: {error.message}") from None
        options_for(entry, cls, config.source)


def create(entry: ProviderConfig, specs: Mapping[str, ProviderSpec], source: str | None) -> Provider:
    """Import the provider named in a config entry, resolve its path options and validate them."""
    spec = specs.get(entry.name)
    if spec is None:
        raise ConfigError(f"{source or 'built-in defaults'}: providers.{entry.name}: no such provider "
                          f"(known: {', '.join(sorted(specs))}); set 'module: package.module:Class'")
    cls = load_class(spec)
    return cls(options_for(entry, cls, source))
