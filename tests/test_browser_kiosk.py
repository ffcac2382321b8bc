"""The kiosk page (served at /) in real headless Chromium, a wav file as the microphone.

Saves screenshots to test-artifacts/: kiosk.png (1280x800 after the session),
kiosk-listening.png (while tentative text shows), kiosk-phone.png (390x844),
kiosk-phone-error.png (a wrong token on a phone), kiosk-busy.png (the server's own refusal),
kiosk-mode.png / kiosk-mode-reconnecting.png / kiosk-mode-resumed.png (kiosk mode, 1280x800,
across a server restart) and kiosk-mode-phone.png (390x844).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from browser import (ARTIFACTS, allow_downloads, chromium, console_log, downloaded, emulate_viewport,
                     require_chromium, wait_for, write_mic_wav)
from conftest import LiveServer, start_live_server
from support import JFK_TEXT, normalize, wer

MAX_WER = 0.25


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.execute_script(f"return document.getElementById('{element_id}').textContent || ''")).strip()


def state_of(driver: Any) -> str:
    return str(driver.execute_script("return document.getElementById('state').dataset.state"))


def level_of(driver: Any) -> float:
    return float(driver.execute_script("return document.getElementById('level').dataset.level"))


def cue_texts(subtitles: str) -> list[str]:
    """The text lines of WebVTT or SRT cues (not the header, numbers or timings)."""
    texts = []
    for block in subtitles.strip().split("\n\n"):
        lines = block.splitlines()
        if "-->" in "".join(lines):
            timing = next(i for i, line in enumerate(lines) if "-->" in line)
            texts.append(" ".join(lines[timing + 1:]))
    return texts


@pytest.mark.browser
@pytest.mark.slow
def test_kiosk_page_transcribes_the_microphone(live_server: LiveServer, tmp_path: Path) -> None:
    require_chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    mic = write_mic_wav(tmp_path / "jfk-mic.wav")
    with chromium(mic, tmp_path / "profile", width=1280, height=800) as driver:
        emulate_viewport(driver, 1280, 800, mobile=False)
        driver.get(live_server.http_url + "/")
        assert wait_for(lambda: driver.find_element(By.ID, "toggle").is_enabled(), timeout=10), console_log(driver)
        providers = [o.get_attribute("value") for o in Select(driver.find_element(By.ID, "provider")).options]
        assert providers == sorted(live_server.server.providers)

        # Start without a token: a plain error, no connection.
        driver.find_element(By.ID, "toggle").click()
        assert "token" in text_of(driver, "error").lower()

        driver.find_element(By.ID, "token").send_keys(live_server.tokens["alice"])
        Select(driver.find_element(By.ID, "provider")).select_by_value("whisper")
        # The English-only model: the menu offers English and nothing the server would refuse.
        offered = [o.get_attribute("value") for o in Select(driver.find_element(By.ID, "language")).options]
        assert offered == ["en-US"], offered
        Select(driver.find_element(By.ID, "provider")).select_by_value("null")
        assert driver.find_element(By.ID, "language-other").is_displayed()  # null takes any tag
        Select(driver.find_element(By.ID, "provider")).select_by_value("whisper")
        driver.find_element(By.ID, "toggle").click()
        assert wait_for(lambda: state_of(driver) == "listening", timeout=15), (
            f"state {state_of(driver)!r}, error {text_of(driver, 'error')!r}\n{console_log(driver)}")
        # The level meter follows the voice: it moves while jfk speaks.
        levels = []
        for _ in range(25):
            levels.append(level_of(driver))
            time.sleep(0.1)
        assert max(levels) > 0.3 and len(set(levels)) > 5, levels

        # Tentative text shows while speech goes on, styled differently from final text.
        saw_interim = wait_for(lambda: text_of(driver, "interim"), timeout=15)
        interim_style = driver.execute_script(
            "return getComputedStyle(document.getElementById('interim')).fontStyle")
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "kiosk-listening.png"))
        # The whole recording is played in real time (11.5 s), then a second of silence ends it.
        wait_for(lambda: wer(JFK_TEXT, text_of(driver, "final")) <= MAX_WER, timeout=60)
        driver.find_element(By.ID, "toggle").click()  # Stop: the last finals, then a normal close
        assert wait_for(lambda: state_of(driver) == "idle", timeout=30), (
            f"state {state_of(driver)!r}, error {text_of(driver, 'error')!r}")
        final = text_of(driver, "final")
        assert not driver.find_element(By.ID, "error").is_displayed(), text_of(driver, "error")

        driver.save_screenshot(str(ARTIFACTS / "kiosk.png"))

        # Downloads: the finals as plain text, WebVTT and SRT, with the finals' timestamps.
        allow_downloads(driver, tmp_path / "downloads")
        saved = {}
        for format_name in ("txt", "vtt", "srt"):
            driver.find_element(By.ID, f"download-{format_name}").click()
            saved[format_name] = downloaded(tmp_path / "downloads", f".{format_name}").read_text(encoding="utf-8")
        finals_in_page = driver.execute_script("return window.sttKiosk.transcript()")
        assert saved["vtt"].startswith("WEBVTT\n")
        assert normalize(" ".join(cue_texts(saved["vtt"]))) == normalize(final)
        assert cue_texts(saved["srt"]) == cue_texts(saved["vtt"]) == [entry["text"] for entry in finals_in_page]
        assert normalize(saved["txt"]) == normalize(final)
        starts = re.findall(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) --> ", saved["vtt"], flags=re.M)
        seconds = [int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000 for h, m, s, ms in starts]
        assert seconds == sorted(seconds) and seconds[-1] > 3  # real times, in order, not all zero
        (ARTIFACTS / "kiosk-transcript.vtt").write_text(saved["vtt"], encoding="utf-8")

        emulate_viewport(driver, 390, 844, mobile=True)
        driver.save_screenshot(str(ARTIFACTS / "kiosk-phone.png"))
        # Nothing overflows sideways on a phone.
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        # The token is remembered locally for the next visit.
        assert driver.execute_script("return localStorage.getItem('stt_server.token')") == live_server.tokens["alice"]

    measured = wer(JFK_TEXT, final)
    (ARTIFACTS / "kiosk.txt").write_text(f"WER {measured:.3f}\n{final}\n", encoding="utf-8")
    print(f"kiosk transcript (WER {measured:.1%}): {final!r}")
    assert saw_interim and interim_style == "italic"
    assert measured <= MAX_WER, f"WER {measured:.1%} for {final!r}"


@pytest.mark.browser
def test_kiosk_page_says_when_the_token_is_wrong(live_server: LiveServer, tmp_path: Path) -> None:
    require_chromium()
    from selenium.webdriver.common.by import By

    mic = write_mic_wav(tmp_path / "jfk-mic.wav")
    with chromium(mic, tmp_path / "profile", width=500, height=900) as driver:
        emulate_viewport(driver, 390, 844, mobile=True)
        driver.get(live_server.http_url + "/")
        assert wait_for(lambda: driver.find_element(By.ID, "toggle").is_enabled(), timeout=10)
        driver.find_element(By.ID, "token").send_keys("not-a-token")
        driver.find_element(By.ID, "toggle").click()
        assert wait_for(lambda: "rejected this token" in text_of(driver, "error"), timeout=10), text_of(driver, "error")
        assert state_of(driver) == "error"
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "kiosk-phone-error.png"))


@pytest.mark.browser
def test_kiosk_page_shows_the_servers_own_refusal(live_server: LiveServer, tmp_path: Path) -> None:
    """The "single" token allows one session; with one open, the page says what the server says
    (a refused websocket would hide it) and, since a full server may free up, keeps trying."""
    require_chromium()
    import websockets.sync.client

    mic = write_mic_wav(tmp_path / "jfk-mic.wav")
    with websockets.sync.client.connect(live_server.url(token="single", provider="null")) as held:
        held.recv()
        with chromium(mic, tmp_path / "profile", width=1280, height=800) as driver:
            emulate_viewport(driver, 390, 844, mobile=True)
            driver.get(live_server.http_url + f"/#token={live_server.tokens['single']}&provider=null")
            from selenium.webdriver.common.by import By
            assert wait_for(lambda: driver.find_element(By.ID, "toggle").is_enabled(), timeout=10)
            driver.find_element(By.ID, "toggle").click()
            assert wait_for(lambda: "already has 1 open sessions" in text_of(driver, "error"), timeout=10), (
                text_of(driver, "error"))
            assert state_of(driver) == "reconnecting"
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "kiosk-busy.png"))
            # The token left the address bar; the other options stayed.
            assert "token" not in driver.current_url and "provider=null" in driver.current_url


@pytest.mark.browser
@pytest.mark.slow
def test_kiosk_mode_survives_a_server_restart(tmp_path: Path) -> None:
    """/#kiosk=1 starts by itself; the server is stopped and a new one started on the same port;
    the page says it is reconnecting, then goes on transcribing, with nobody touching it."""
    require_chromium()
    from selenium.webdriver.common.by import By

    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    live = start_live_server(tmp_path / "first")
    port = live.port
    token = live.tokens["alice"]
    mic = write_mic_wav(tmp_path / "jfk-mic.wav", tail_s=2.0)
    second = None
    # A kiosk browser is started with autoplay allowed (docs/clients.md): audio runs without a click.
    with chromium(mic, tmp_path / "profile", loop=True,
                  extra_flags=("--autoplay-policy=no-user-gesture-required",)) as driver:
        try:
            emulate_viewport(driver, 1280, 800, mobile=False)
            driver.get(f"http://127.0.0.1:{port}/#kiosk=1&token={token}")
            assert wait_for(lambda: state_of(driver) == "listening", timeout=20), (
                f"state {state_of(driver)!r}, error {text_of(driver, 'error')!r}\n{console_log(driver)}")
            assert not driver.find_element(By.ID, "controls").is_displayed()
            font_px = float(driver.execute_script(
                "return parseFloat(getComputedStyle(document.querySelector('.transcript')).fontSize)"))
            assert font_px >= 48, font_px
            heard = wait_for(lambda: wer(JFK_TEXT, text_of(driver, "final")) <= 0.3, timeout=40)
            assert heard, text_of(driver, "final")
            assert wait_for(lambda: level_of(driver) > 0.2, timeout=10)  # the meter runs without a click
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "kiosk-mode.png"))
            before = len(driver.execute_script("return window.sttKiosk.transcript()"))

            live.stop()  # sessions close with 1001, then nothing listens on the port
            assert wait_for(lambda: state_of(driver) == "reconnecting", timeout=15), state_of(driver)
            time.sleep(2)  # a refused connection or two while the server is down
            message = text_of(driver, "error")
            assert "Reconnecting automatically" in message and "fetch" not in message.lower(), message
            driver.save_screenshot(str(ARTIFACTS / "kiosk-mode-reconnecting.png"))

            second = start_live_server(tmp_path / "second", {"server": {"port": port}})
            assert wait_for(lambda: state_of(driver) == "listening", timeout=40), (
                f"state {state_of(driver)!r}, error {text_of(driver, 'error')!r}")
            assert not driver.find_element(By.ID, "error").is_displayed()
            grew = wait_for(lambda: len(driver.execute_script("return window.sttKiosk.transcript()")) >= before + 2,
                            timeout=45)
            assert grew, driver.execute_script("return window.sttKiosk.transcript()")
            driver.save_screenshot(str(ARTIFACTS / "kiosk-mode-resumed.png"))
            emulate_viewport(driver, 390, 844, mobile=True)
            time.sleep(0.3)
            driver.save_screenshot(str(ARTIFACTS / "kiosk-mode-phone.png"))
            assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        finally:
            if second is not None:
                second.stop()
            elif live.thread.is_alive():
                live.stop()
