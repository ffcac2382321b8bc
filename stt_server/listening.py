"""What a listening socket needs besides its address: the TLS context, and a bind failure said
in one line that names the config keys (the start-up faults of docs/operations.md, exit 3)."""

from __future__ import annotations

import errno
import ssl

from .config import Config
from .errors import ConfigError, ListenError


def listen_error(exc: OSError, host: str, port: int, section: str) -> ListenError:
    """Why a listening socket could not be bound, naming the config keys."""
    reason = {errno.EADDRINUSE: "the port is already in use",
              errno.EADDRNOTAVAIL: "the address is not one of this machine's",
              errno.EACCES: "permission denied (ports below 1024 need privileges)"}.get(
        exc.errno or 0, exc.strerror or str(exc))
    where = f"{host}:{port}"
    return ListenError(f"cannot listen on {where} ({section}.host, {section}.port): {reason}")


def tls_context(config: Config) -> ssl.SSLContext | None:
    """A server TLS context from ``tls.cert_file``/``key_file``; ConfigError if they cannot be loaded."""
    if not config.tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    load_certificate(context, config)
    return context


def load_certificate(context: ssl.SSLContext, config: Config) -> None:
    cert, key = config.resolve_path(config.tls.cert_file), config.resolve_path(config.tls.key_file)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{config.source or 'built-in defaults'}: tls: cannot load certificate {cert} "
                          f"and key {key}: {exc}") from None
