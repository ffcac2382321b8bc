"""The websocket endpoints: which protocol a path speaks, and what its URL defaults to. Pure data.

The session parser reads it to turn a URL into a session; the protocol registry
(``protocols/registry.py``) maps each endpoint to its protocol class. Adding a protocol adds an
:class:`Endpoint` member and an :data:`ENDPOINTS` entry here, and its class in the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum


class Endpoint(str, Enum):
    """Which wire protocol a path speaks."""

    NATIVE = "native"  # /v1/listen, Deepgram's live API
    SEED = "seed"  # /ws/transcription/, the Django design's protocol
    ROOT = "root"  # /, vosk-server's protocol or WhisperLive's, told apart by the first message
    OPENAI = "openai"  # /v1/realtime?intent=transcription, OpenAI's Realtime API
    WYOMING = "wyoming"  # Home Assistant's Wyoming protocol, on its own TCP listener (wyoming: in config)


@dataclass(frozen=True)
class EndpointSpec:
    path: str | None  # without a trailing slash; requests may add one. None: no websocket path
    # The audio a client sends when its URL names no encoding (and no rate: None, the
    # encoding's usual one).
    default_encoding: str = "linear16"
    default_sample_rate: int | None = None
    # Query parameters the URL must carry, and their values.
    required_query: Mapping[str, str] = field(default_factory=dict)
    # Whether the URL's ``model`` names one of this server's models; False: it names the peer
    # service's model (OpenAI's), which says nothing about the engine here, and is ignored.
    model_in_query: bool = True


ENDPOINTS: Mapping[Endpoint, EndpointSpec] = {
    Endpoint.NATIVE: EndpointSpec("/v1/listen"),
    # The seed's browser sends WebM or Ogg: detect the container from the first bytes.
    Endpoint.SEED: EndpointSpec("/ws/transcription", "auto"),
    Endpoint.ROOT: EndpointSpec("/"),
    Endpoint.OPENAI: EndpointSpec("/v1/realtime", default_sample_rate=24_000,
                                  required_query={"intent": "transcription"}, model_in_query=False),
    Endpoint.WYOMING: EndpointSpec(None),
}

ENDPOINT_PATHS: Mapping[str, Endpoint] = {spec.path: endpoint for endpoint, spec in ENDPOINTS.items()
                                          if spec.path is not None}
