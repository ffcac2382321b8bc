"""TLS: with a certificate and key in the config the server speaks wss:// (and https for the
health endpoints). The certificate is self-signed, made by the test with openssl."""

from __future__ import annotations

import ssl

import pytest
import websockets
from conftest import deep_merge, start_live_server
from ops_support import NULL_ONLY, http_get, self_signed_certificate
from support import JFK_FLAC, JFK_TEXT, chunked, load_pcm16, stream_audio, wer

from stt_server.errors import ConfigError


async def test_wss_with_a_self_signed_certificate(make_server, tmp_path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    live = make_server({"tls": {"cert_file": str(cert), "key_file": str(key)}})
    assert live.server.url.startswith("wss://127.0.0.1:")
    client = ssl.create_default_context(cafile=str(cert))
    url = live.url(interim_results="false").replace("ws://", "wss://", 1)
    transcript = await stream_audio(url, chunked(load_pcm16(JFK_FLAC), 3200), ssl=client)
    assert transcript.close_code == 1000
    assert wer(JFK_TEXT, transcript.text) <= 0.15
    assert http_get(f"https://127.0.0.1:{live.port}/healthz", context=client)[0] == 200
    # A client that does not trust the certificate cannot connect.
    with pytest.raises(ssl.SSLCertVerificationError):
        async with websockets.connect(url, ssl=ssl.create_default_context()):
            pass
    # Plain ws:// to a TLS port gets no websocket.
    with pytest.raises((websockets.InvalidMessage, websockets.InvalidHandshake, OSError, EOFError)):
        async with websockets.connect(live.url(), open_timeout=5):
            pass


def test_a_missing_certificate_is_a_clear_config_error(tmp_path) -> None:
    data = deep_merge(NULL_ONLY, {"tls": {"cert_file": "missing.pem", "key_file": "missing.key"}})
    with pytest.raises(ConfigError) as info:
        start_live_server(tmp_path, data)
    assert "tls: cannot load certificate" in info.value.message and "missing.pem" in info.value.message
