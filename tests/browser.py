"""Real headless Chromium driven by selenium, with a wav file as its microphone.

Flags from REFERENCE.md: ``--use-file-for-fake-audio-capture=FILE%noloop`` plays the file once
into getUserMedia (then silence); a wrong path silently gives silence, so the file is checked
first. Each browser gets a fresh ``--user-data-dir``.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import time
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import JFK_FLAC, load_pcm16

CHROMIUM = Path("/usr/lib/chromium/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MIC_RATE = 48_000
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"


def require_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing or shutil.which("chromedriver") is None:
        # A failure, not a skip: CI must install what the tests need.
        pytest.fail(f"needs Debian's chromium and chromium-driver (.ci/run installs them); missing: {missing}")


def write_mic_wav(path: Path, *, lead_s: float = 0.5, tail_s: float = 1.0) -> Path:
    """jfk.flac as 48 kHz mono s16 wav, with silence before (the recorder starts a moment after
    the capture) and a second after (so the engine hears the utterance end)."""
    pcm = np.frombuffer(load_pcm16(JFK_FLAC, MIC_RATE), dtype=np.int16)
    silence = np.zeros(int(MIC_RATE * lead_s), dtype=np.int16), np.zeros(int(MIC_RATE * tail_s), dtype=np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(MIC_RATE)
        out.writeframes(np.concatenate([silence[0], pcm, silence[1]]).tobytes())
    return path


@contextmanager
def chromium(mic_wav: Path, profile_dir: Path, *, width: int = 1280, height: int = 800, loop: bool = False,
             extra_flags: tuple[str, ...] = ()) -> Iterator[Any]:
    """``loop``: the recording plays again and again (a kiosk that hears people all day);
    ``extra_flags``: more command-line switches, as a kiosk browser would be started with."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert mic_wav.is_file(), mic_wav  # a wrong path would silently record silence
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={mic_wav}{'' if loop else '%noloop'}",
                 f"--user-data-dir={profile_dir}", f"--window-size={width},{height}", "--hide-scrollbars",
                 "--force-device-scale-factor=1", *extra_flags):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def emulate_viewport(driver: Any, width: int, height: int, *, mobile: bool) -> None:
    """Exact viewport (window sizes include browser chrome, and headless has a minimum width)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


def allow_downloads(driver: Any, folder: Path) -> None:
    """Save downloads into ``folder`` without asking (headless Chromium drops them otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})


def downloaded(folder: Path, suffix: str, timeout: float = 10) -> Path:
    """The file with ``suffix`` once Chromium has finished writing it."""
    found = wait_for(lambda: [p for p in folder.glob(f"*{suffix}") if p.stat().st_size > 0], timeout)
    assert found, f"no *{suffix} in {folder}: {list(folder.iterdir())}"
    return found[0]


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """Poll ``condition`` until it returns something truthy; return it, or the last value on timeout."""
    deadline = time.monotonic() + timeout
    value = condition()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = condition()
    return value


def console_log(driver: Any) -> str:
    try:
        return "\n".join(entry["message"] for entry in driver.get_log("browser"))
    except Exception:  # not every driver keeps the log
        return ""


@contextmanager
def static_site(files: dict[str, str]) -> Iterator[str]:
    """Serve ``files`` (name → text) on http://127.0.0.1:<free port>/ from a thread."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = files.get(self.path.lstrip("/") or "index.html")
            if body is None:
                self.send_error(404)
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=functools.partial(server.serve_forever, poll_interval=0.1), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
