"""What the kiosk page asks the server over plain HTTP: each provider's languages, and a dry
run of the handshake (``check=1``) whose refusal body a browser can read."""

from __future__ import annotations

import asyncio
import json

import websockets
from ops_support import http_get


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    status, _, body = await asyncio.to_thread(http_get, url, headers)
    return status, json.loads(body)


async def test_providers_list_their_languages(live_server) -> None:
    status, body = await get(live_server.http_url + "/v1/providers")
    assert status == 200
    languages = {entry["name"]: entry["languages"] for entry in body["details"]}
    # The bundled model is tiny.en: English only. null takes any tag.
    assert languages == {"whisper": ["en"], "null": None}
    assert body["providers"] == ["null", "whisper"]


async def test_check_runs_every_handshake_step_and_reserves_nothing(live_server) -> None:
    base = live_server.http_url + "/v1/listen"
    single = {"Authorization": f"Token {live_server.tokens['single']}"}
    for _ in range(3):  # the "single" token allows one session: a held slot would refuse the second
        status, body = await get(base + "?provider=whisper&language=en-GB&check=1", single)
        assert status == 200 and body == {"status": "ok", "provider": "whisper", "language": "en-GB"}
    status, body = await get(base + "?provider=whisper&language=de-DE&check=1", single)
    assert status == 400 and body["parameter"] == "language" and "de-DE" in body["message"]
    status, body = await get(base + "?provider=null&check=1", {"Authorization": "Token wrong-token-123456"})
    assert status == 401 and body["error"] == "token_invalid"
    # While the one session is open, the check says why a second would be refused.
    async with websockets.connect(live_server.url(token="single", provider="null")) as ws:
        assert json.loads(await ws.recv())["type"] == "Metadata"
        status, body = await get(base + "?provider=null&check=1", single)
        assert status == 503 and body["error"] == "token_session_limit"
