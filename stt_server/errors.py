"""One error tree. Only the I/O edge turns these into HTTP statuses, close codes and messages."""

from __future__ import annotations


class SttServerError(Exception):
    """Base of every error this package raises on purpose.

    ``code`` is a stable machine-readable string sent to clients; ``http_status`` is used when
    the error happens before the websocket upgrade; ``close_code`` when it ends a session.
    """

    code = "internal_error"
    http_status = 500
    close_code = 1011

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(SttServerError):
    """The configuration file or an override is invalid; names the key and the file."""

    code = "config_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        # One line, always (a log line, a systemd status): a key name from the file may hold
        # a line break.
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"), code=code)


class RequestError(SttServerError):
    """The connection URL is invalid (bad query parameter, unknown provider)."""

    code = "bad_request"
    http_status = 400
    close_code = 1008

    def __init__(self, message: str, *, parameter: str | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.parameter = parameter


class NotFoundError(RequestError):
    """No endpoint at this path."""

    code = "not_found"
    http_status = 404


class AuthError(SttServerError):
    """Missing or unknown token."""

    code = "unauthorized"
    http_status = 401
    close_code = 1008


class ForbiddenError(AuthError):
    """A known token that may not use what it asked for (a provider, say)."""

    code = "forbidden"
    http_status = 403


class CapacityError(SttServerError):
    """The server or the token is at its session limit, or the server is draining."""

    code = "over_capacity"
    http_status = 503
    close_code = 1013

    def __init__(self, message: str, *, code: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message, code=code)
        #: Seconds the client should wait before retrying (the Retry-After header); None = default.
        self.retry_after = retry_after


class ProtocolError(SttServerError):
    """A client frame could not be understood; the session goes on."""

    code = "bad_message"
    http_status = 400
    close_code = 1008


class AudioError(SttServerError):
    """Audio bytes that cannot be decoded, or that do not match the declared encoding."""

    code = "bad_audio"
    http_status = 400
    close_code = 1008


class ProviderError(SttServerError):
    """A speech engine failed: could not load, or failed mid-stream."""

    code = "provider_error"
    http_status = 503
    close_code = 1011


class ListenError(SttServerError):
    """The server cannot listen on its address: the port is in use, or the address is not
    this machine's. Raised at start, before any engine loads."""

    code = "cannot_listen"
