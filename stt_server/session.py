"""The connection URL → a session's parameters. Pure: ``urllib.parse`` and dataclasses.

The seed's middleware split the query by hand and broke on a value containing ``=`` (base64
tokens) and on an empty query; here every value is parsed by ``urllib.parse.parse_qs``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from .audio_format import CONTAINER_ENCODINGS, RAW_ENCODINGS, AudioFormat
from .config import SessionDefaults
from .errors import NotFoundError, RequestError
from .endpoints import ENDPOINT_PATHS, ENDPOINTS, Endpoint


# Accepted but not acted on: parameters of Deepgram's API that clients commonly send, and the
# token (read by the auth step). Anything else unknown is reported back in Metadata.
_KNOWN = {
    "token", "provider", "stt_provider", "language", "encoding", "sample_rate", "channels",
    "interim_results", "punctuate", "words", "endpointing", "model", "utterance_end_ms", "vad_events",
}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}

MAX_SAMPLE_RATE = 192_000
MAX_CHANNELS = 8


@dataclass(frozen=True)
class SessionParams:
    endpoint: Endpoint
    provider: str
    language: str
    audio: AudioFormat
    interim_results: bool
    punctuate: bool
    words: bool
    # Silence in ms that ends an utterance (speech_final); 0 = no endpointing (engines may
    # still commit a final at a long pause, as Deepgram does).
    endpointing_ms: int
    # Provider-specific model name, passed through to providers that support choosing one.
    model: str | None = None
    # Query parameters we did not recognise; echoed in Metadata so typos are visible.
    ignored_params: tuple[str, ...] = field(default=())
    # Deepgram's UtteranceEnd: audio ms without a new word after the last one (0 = off).
    utterance_end_ms: int = 0
    # Deepgram's SpeechStarted messages.
    vad_events: bool = False


def endpoint_for_path(path: str) -> Endpoint:
    """Map a request path (with or without trailing slash) to its protocol; 404 otherwise."""
    normalized = path.rstrip("/") or "/"
    try:
        return ENDPOINT_PATHS[normalized]
    except KeyError:
        raise NotFoundError(f"no websocket endpoint at {path!r}", code="not_found") from None


def parse_query(query: str) -> dict[str, str]:
    """Query string → one value per name (the last wins); blank values kept as ''."""
    parsed = parse_qs(query, keep_blank_values=True, max_num_fields=100) if query else {}
    return {name: values[-1] for name, values in parsed.items()}


def split_target(target: str) -> tuple[str, dict[str, str]]:
    """A request target such as ``/v1/listen?token=a%3D&language=en`` → path and query."""
    try:
        parts = urlsplit(target)
        return parts.path, parse_query(parts.query)
    except ValueError as exc:  # too many fields, or a malformed target
        raise RequestError(f"malformed request URL: {exc}", parameter=None) from None


def parse_session(
    target: str,
    *,
    defaults: SessionDefaults,
    default_provider: str,
    providers: Collection[str],
) -> SessionParams:
    """Parse a request target into :class:`SessionParams`, or raise a 400/404 error."""
    path, query = split_target(target)
    return params_from_query(endpoint_for_path(path), query, defaults=defaults,
                             default_provider=default_provider, providers=providers)


def params_from_query(
    endpoint: Endpoint,
    query: Mapping[str, str],
    *,
    defaults: SessionDefaults,
    default_provider: str,
    providers: Collection[str],
) -> SessionParams:
    """Session parameters from URL-style values, checked as a URL's are (a protocol without a
    URL, Wyoming, builds them from its own events), or a RequestError naming the parameter."""
    entry = ENDPOINTS[endpoint]
    for name, value in entry.required_query.items():
        if query.get(name) != value:
            raise RequestError(f"{entry.path} serves {name}={value} sessions only; add ?{name}={value} to the URL",
                               parameter=name)
    provider = query.get("provider") or query.get("stt_provider") or default_provider
    if provider not in providers:
        raise RequestError(
            f"unknown or disabled provider {provider!r}; available: {', '.join(sorted(providers))}",
            parameter="provider" if "provider" in query else "stt_provider",
        )

    encoding = (query.get("encoding") or entry.default_encoding).lower()
    if encoding not in RAW_ENCODINGS and encoding not in CONTAINER_ENCODINGS:
        names = ", ".join(sorted(RAW_ENCODINGS | CONTAINER_ENCODINGS))
        raise RequestError(f"unknown encoding {encoding!r}; one of: {names}", parameter="encoding")
    sample_rate = _int(query, "sample_rate", None, 1_000, MAX_SAMPLE_RATE)
    if sample_rate is None and encoding == entry.default_encoding:
        sample_rate = entry.default_sample_rate
    if sample_rate is None and encoding in RAW_ENCODINGS:
        sample_rate = 8_000 if encoding in ("mulaw", "alaw") else 16_000
    channels = _int(query, "channels", 1, 1, MAX_CHANNELS)
    assert channels is not None  # has a default

    language = query.get("language") or defaults.language
    if len(language) > 35 or not all(c.isalnum() or c in "-_" for c in language):
        raise RequestError(f"invalid language tag {language!r}", parameter="language")

    endpointing = _endpointing(query, defaults.endpointing_ms)
    model = (query.get("model") or None) if entry.model_in_query else None
    if model is not None and (len(model) > 100 or not all(c.isalnum() or c in "-_.:" for c in model)):
        raise RequestError(f"invalid model name {model!r}", parameter="model")

    return SessionParams(
        endpoint=endpoint,
        provider=provider,
        language=language,
        audio=AudioFormat(encoding=encoding, sample_rate=sample_rate, channels=channels,
                          declared=bool(query.get("encoding"))),
        interim_results=_bool(query, "interim_results", defaults.interim_results),
        punctuate=_bool(query, "punctuate", defaults.punctuate),
        words=_bool(query, "words", defaults.words),
        endpointing_ms=endpointing,
        model=model,
        ignored_params=tuple(sorted(set(query) - _KNOWN - set(entry.required_query)
                                    - (set() if entry.model_in_query else {"model"}))),
        utterance_end_ms=_int(query, "utterance_end_ms", 0, 0, 60_000) or 0,
        vad_events=_bool(query, "vad_events", False),
    )


def _bool(query: Mapping[str, str], name: str, default: bool) -> bool:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise RequestError(f"{name} must be true or false, got {raw!r}", parameter=name)


def _int(query: Mapping[str, str], name: str, default: int | None, low: int, high: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RequestError(f"{name} must be an integer, got {raw!r}", parameter=name) from None
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low} and {high}, got {value}", parameter=name)
    return value


def _endpointing(query: Mapping[str, str], default_ms: int) -> int:
    """Deepgram accepts ``endpointing=false`` (off) or a number of milliseconds."""
    raw = query.get("endpointing")
    if raw is None or raw == "":
        return default_ms
    if raw.lower() in _FALSE:
        return 0
    if raw.lower() in _TRUE:
        return default_ms or 800
    value = _int(query, "endpointing", default_ms, 0, 60_000)
    assert value is not None
    return value
