"""The kiosk page (served at /) in real headless Chromium, a wav file as the microphone.

Saves screenshots to test-artifacts/: kiosk.png (1280x800 after the session),
kiosk-listening.png (while tentative text shows), kiosk-phone.png (390x844) and
kiosk-phone-error.png (a wrong token on a phone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from browser import ARTIFACTS, chromium, console_log, emulate_viewport, require_chromium, wait_for, write_mic_wav
from conftest import LiveServer
from support import JFK_TEXT, wer

MAX_WER = 0.25


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.execute_script(f"return document.getElementById('{element_id}').textContent || ''")).strip()


def state_of(driver: Any) -> str:
    return str(driver.execute_script("return document.getElementById('state').dataset.state"))


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
        driver.find_element(By.ID, "toggle").click()
        assert wait_for(lambda: state_of(driver) == "listening", timeout=15), (
            f"state {state_of(driver)!r}, error {text_of(driver, 'error')!r}\n{console_log(driver)}")

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
