"""The plain HTTP answers' pure parts: the static file table and the provider list."""

from __future__ import annotations

import json

from stt_server import web


def test_every_page_in_the_table_ships_with_the_package() -> None:
    for path in web.PAGES:
        page = web.static_file(path)
        assert page is not None and page.body, path
        assert page.headers()["Content-Type"] == page.content_type


def test_paths_outside_the_table_are_not_files() -> None:
    for path in ("/static/../config.py", "/static/", "/kiosk.html", "/static/kiosk.js/", "//etc/passwd"):
        assert web.static_file(path) is None


def test_only_the_page_gets_a_content_security_policy() -> None:
    assert "Content-Security-Policy" in web.static_file("/").headers()  # type: ignore[union-attr]
    assert "Content-Security-Policy" not in web.static_file("/static/kiosk.js").headers()  # type: ignore[union-attr]


def test_providers_body_narrows_to_what_a_token_may_use() -> None:
    everything = json.loads(web.providers_body(enabled=["whisper", "null"], default="whisper", language="en-US"))
    assert everything["providers"] == ["null", "whisper"]  # names, as clients have always read them
    assert (everything["default"], everything["language"]) == ("whisper", "en-US")
    narrowed = json.loads(web.providers_body(enabled=["whisper", "null"], default="whisper", language="en-US",
                                             allowed=["null"]))
    assert narrowed["providers"] == ["null"] and narrowed["default"] == "null"
    nothing = json.loads(web.providers_body(enabled=["whisper"], default="whisper", language="en-US", allowed=[]))
    assert nothing["providers"] == [] and nothing["default"] is None


def test_providers_body_lists_each_providers_languages() -> None:
    body = json.loads(web.providers_body(enabled=["whisper", "null"], default="whisper", language="en-US",
                                         languages={"whisper": ("en",), "null": None}))
    assert body["details"] == [{"name": "null", "languages": None}, {"name": "whisper", "languages": ["en"]}]
    narrowed = json.loads(web.providers_body(enabled=["whisper", "null"], default="whisper", language="en-US",
                                             allowed=["whisper"], languages={"whisper": ("en",), "null": None}))
    assert [entry["name"] for entry in narrowed["details"]] == ["whisper"]


def test_check_parameter() -> None:
    assert web.asks_for_check("/v1/listen?provider=null&check=1")
    assert web.asks_for_check("/v1/listen?check=true")
    assert not web.asks_for_check("/v1/listen?provider=null")
    assert not web.asks_for_check("/v1/listen?check=0")
