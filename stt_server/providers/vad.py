"""Silero VAD over a stream: speech probabilities per 512-sample window, state kept between chunks.

Engine-neutral: it takes an ONNX Runtime session of Silero VAD (the model faster-whisper
bundles); :mod:`.segmenter` turns its probabilities into utterances.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
# Silero VAD consumes 512-sample windows (32 ms) with the previous window's last 64 samples.
VAD_WINDOW = 512
VAD_CONTEXT = 64
# Silero's recurrent state drifts over a long stream: on jfk.flac repeated with 1 s gaps, the
# onset of the quiet "ask not" scored 0.61 in the first repetition, 0.48 in the third and 0.40
# in the seventh, so the utterance started later each time ("Masked off!", "Knock!"). The
# state is restarted (StreamingVad.restart) after a pause ended an utterance, and every this
# many seconds without an utterance, so each utterance is judged on its recent past only.
VAD_IDLE_RESTART_SECONDS = 10.0
VAD_WARM_UP_SECONDS = 4.0
VAD_WARM_UP_WINDOWS = int(VAD_WARM_UP_SECONDS * SAMPLE_RATE) // VAD_WINDOW


class StreamingVad:
    """Silero VAD over a stream: keeps the model state and the odd samples between calls.

    faster-whisper's ONNX export treats the batch axis as time, carrying ``h``/``c`` through
    it, so feeding windows in pieces with the returned state gives exactly the probabilities of
    one pass over the whole audio (checked on jfk.flac).

    ``restart()`` bounds how far back the state remembers (VAD_IDLE_RESTART_SECONDS): a fresh
    state warmed on the last VAD_WARM_UP_SECONDS of audio. Fresh alone is not enough: right
    after a reset the quiet "ask not" scored too few speech windows to count as an utterance;
    warmed on 3-5 s it started within 50 ms of a stream's first repetition, wherever the reset.
    """

    def __init__(self, session: Any) -> None:
        self._session = session
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(VAD_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        # The windows of the latest calls: the last one's and at least VAD_WARM_UP_WINDOWS before
        # them, kept as the calls gave them (joined only by restart(), off the per-chunk path).
        self._recent: deque[np.ndarray] = deque()
        self._recent_windows = 0

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Blocking: probabilities for each complete window the new samples finish."""
        audio = np.concatenate([self._pending, samples]) if self._pending.size else samples
        usable = audio.size - audio.size % VAD_WINDOW
        self._pending = audio[usable:].copy()
        if not usable:
            return np.zeros(0, dtype=np.float32)
        windows = audio[:usable].reshape(-1, VAD_WINDOW)
        self._recent.append(windows)
        self._recent_windows += windows.shape[0]
        while self._recent_windows - self._recent[0].shape[0] >= VAD_WARM_UP_WINDOWS + windows.shape[0]:
            self._recent_windows -= self._recent.popleft().shape[0]
        return self._run(windows)

    def restart(self, last_windows: int) -> np.ndarray:
        """Blocking: a fresh state, warmed on the audio before the last ``last_windows`` windows
        seen; returns those windows' probabilities again, from the new state."""
        history = np.concatenate(self._recent) if self._recent else np.zeros((0, VAD_WINDOW), dtype=np.float32)
        split = history.shape[0] - last_windows
        self._h = np.zeros_like(self._h)
        self._c = np.zeros_like(self._c)
        self._context = np.zeros(VAD_CONTEXT, dtype=np.float32)
        warm_up = history[max(0, split - VAD_WARM_UP_WINDOWS):split]
        if warm_up.shape[0]:
            self._run(warm_up)
        if not last_windows:
            return np.zeros(0, dtype=np.float32)
        return self._run(history[split:])

    def _run(self, windows: np.ndarray) -> np.ndarray:
        contexts = np.concatenate([self._context[None], windows[:-1, -VAD_CONTEXT:]], axis=0)
        batch = np.concatenate([contexts, windows], axis=1).astype(np.float32)
        out, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = windows[-1, -VAD_CONTEXT:].copy()
        return np.asarray(out, dtype=np.float32).reshape(-1)
