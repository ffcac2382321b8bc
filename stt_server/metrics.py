"""Prometheus metrics: one :class:`Metrics` (and one registry) per server instance.

Not the global default registry: tests run several servers in one process, and each must
report only what it did. With ``server.workers`` > 1 every worker writes its samples to files
in the supervisor's folder (prometheus_client's multiprocess mode, chosen by the
``PROMETHEUS_MULTIPROC_DIR`` the supervisor sets before the worker starts) and ``/metrics`` on
any worker renders the sum over all of them. The session code sees a small :class:`SessionMetrics` whose label
children are bound once per session, so counting a frame is a dict-free increment.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from .results import Result

if TYPE_CHECKING:
    from .providers.scheduler import SchedulerStats

__all__ = ["CONTENT_TYPE", "AudioClock", "Metrics", "SessionMetrics", "SessionStats"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Result latency and engine calls: from well under a second (PCM, idle box) to the 30 s
# that would mean an engine has fallen far behind.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16)
INFERENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None) -> None:
        """``multiprocess_dir``: the workers' shared folder (PROMETHEUS_MULTIPROC_DIR), or None."""
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        r = self.registry
        # ``protocol``: the endpoint a session came in on (native, seed, root for vosk and WhisperLive
        # on /, openai, wyoming).
        self.sessions_active = Gauge("stt_sessions_active", "Open sessions.", ["provider", "protocol"], registry=r,
                                     multiprocess_mode="livesum")  # workers: the box's total
        self.sessions_opened = Counter("stt_sessions_opened", "Sessions opened (upgrade accepted).",
                                       ["provider", "protocol"], registry=r)
        self.sessions_closed = Counter("stt_sessions_closed", "Sessions ended, by websocket close code.",
                                       ["provider", "protocol", "code"], registry=r)
        self.audio_seconds = Counter("stt_audio_seconds", "Seconds of audio handed to engines "
                                     "(PCM engines only; pass-through containers are not counted).",
                                     ["provider"], registry=r)
        self.audio_bytes = Counter("stt_audio_bytes", "Audio bytes received from clients (after base64).",
                                   ["provider"], registry=r)
        self.messages = Counter("stt_messages_received", "Websocket messages received from clients.",
                                ["provider"], registry=r)
        self.results = Counter("stt_results_sent", "Results sent to clients.", ["provider", "kind"], registry=r)
        self.errors = Counter("stt_errors", "Errors reported to clients (HTTP refusals and in-session "
                              "Error messages), by stable error code.", ["code"], registry=r)
        self.auth_failures = Counter("stt_auth_failures", "Refused handshakes for a missing, unknown or "
                                     "unauthorised token.", ["code"], registry=r)
        self.decode_errors = Counter("stt_decode_errors", "Sessions whose audio could not be decoded.",
                                     ["provider"], registry=r)
        self.inference_seconds = Histogram("stt_provider_inference_seconds", "Time of one engine call "
                                           "(a Whisper decode, say).", ["provider"],
                                           buckets=INFERENCE_BUCKETS, registry=r)
        self.result_latency = Histogram("stt_result_latency_seconds", "From the arrival of the audio a "
                                        "result ends with to the result being sent.", ["provider", "kind"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.journal_errors = Counter("stt_journal_errors", "Finals that could not be written to the "
                                      "transcript journal.", registry=r)
        self.draining = Gauge("stt_draining", "1 while the server is draining for shutdown.", registry=r,
                              multiprocess_mode="livemax")  # workers: 1 while any worker drains
        # The engine under load: backpressure, queues, batches, and audio lost (must stay 0).
        self.held_seconds = Counter("stt_backpressure_seconds", "Time sessions stopped reading their socket "
                                    "because the engine was behind on their audio.", ["provider"], registry=r)
        self.untranscribed_seconds = Counter("stt_untranscribed_audio_seconds", "Audio received that was "
                                             "never transcribed (hung engine call, drain deadline); "
                                             "should stay 0.", ["provider"], registry=r)
        self.engine_backlog = Gauge("stt_engine_backlog_seconds", "Audio queued for (or in) a final "
                                    "decode, all sessions.", ["provider"], registry=r)
        self.engine_wait = Gauge("stt_engine_estimated_wait_seconds", "Time the engine needs to clear "
                                 "its queued finals at the recent pace (admission refuses above "
                                 "limits.max_engine_wait_seconds).", ["provider"], registry=r)
        self.engine_hung_calls = Gauge("stt_engine_hung_calls", "Engine calls that ran past "
                                       "limits.engine_call_timeout_seconds.", ["provider"], registry=r)
        self.queue_wait = Histogram("stt_engine_queue_wait_seconds", "Time a job waited in the engine "
                                    "scheduler's queue.", ["provider"], buckets=LATENCY_BUCKETS, registry=r)
        # Whisper's loop guard: how often it removes words, so operators see it fire.
        self.loop_cuts = Counter("stt_loop_cuts", "Results from which the engine's loop guard removed "
                                 "repeated words the audio does not hold.", ["provider", "kind"], registry=r)
        self.loop_words_removed = Counter("stt_loop_words_removed", "Words the engine's loop guard "
                                          "removed.", ["provider", "kind"], registry=r)
        self.batch_size = Histogram("stt_engine_batch_size", "Jobs decoded in one engine call.", ["provider"],
                                    buckets=BATCH_BUCKETS, registry=r)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged)

    def session(self, provider: str, protocol: str) -> SessionMetrics:
        return SessionMetrics(self, provider, protocol)

    def refused(self, code: str, *, auth: bool) -> None:
        self.errors.labels(code).inc()
        if auth:
            self.auth_failures.labels(code).inc()

    def inference_observer(self, provider: str) -> Callable[[float], None]:
        """What a provider calls with the duration of each engine call."""
        return self.inference_seconds.labels(provider).observe

    def batch_observer(self, provider: str) -> Callable[[int, float, Sequence[float]], None]:
        """What a provider's scheduler calls after each engine call (from a worker thread)."""
        batch, wait = self.batch_size.labels(provider), self.queue_wait.labels(provider)

        def observe(size: int, _seconds: float, waits: Sequence[float]) -> None:
            batch.observe(size)
            for seconds in waits:
                wait.observe(seconds)

        return observe

    def watch_scheduler(self, provider: str, stats: Callable[[], SchedulerStats | None]) -> None:
        """Gauges read from the provider's scheduler when /metrics is scraped."""
        def read(field: str) -> Callable[[], float]:
            def value() -> float:
                current = stats()
                return float(getattr(current, field)) if current is not None else 0.0
            return value

        self.engine_backlog.labels(provider).set_function(read("queued_final_seconds"))
        self.engine_wait.labels(provider).set_function(read("estimated_wait"))
        self.engine_hung_calls.labels(provider).set_function(read("hung_calls"))


@dataclass
class SessionStats:
    """One session's counts, for its closing log line; SessionMetrics keeps them with /metrics."""

    started: float = field(default_factory=time.monotonic)
    frames_in: int = 0
    bytes_in: int = 0
    audio_seconds: float = 0.0
    results_out: int = 0
    finals_out: int = 0
    errors_out: int = 0
    # Time the reader spent held back by backpressure, and audio that was never transcribed.
    held_seconds: float = 0.0
    untranscribed_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"duration_s": round(time.monotonic() - self.started, 3), "audio_s": round(self.audio_seconds, 3),
                "frames_in": self.frames_in, "bytes_in": self.bytes_in, "results": self.results_out,
                "finals": self.finals_out, "errors": self.errors_out, "held_s": round(self.held_seconds, 3),
                "untranscribed_s": round(self.untranscribed_seconds, 3)}


class SessionMetrics:
    """One session's view: label children bound once, and the session's own counts
    (:attr:`stats`), so each event is counted in one place."""

    def __init__(self, metrics: Metrics, provider: str, protocol: str) -> None:
        self._metrics = metrics
        self.provider = provider
        self.protocol = protocol
        self.stats = SessionStats()
        self._active = metrics.sessions_active.labels(provider, protocol)
        self._audio_seconds = metrics.audio_seconds.labels(provider)
        self._audio_bytes = metrics.audio_bytes.labels(provider)
        self._messages = metrics.messages.labels(provider)
        self._latency = {True: metrics.result_latency.labels(provider, "final"),
                         False: metrics.result_latency.labels(provider, "interim")}
        self._results = {True: metrics.results.labels(provider, "final"),
                         False: metrics.results.labels(provider, "interim")}

    def opened(self) -> None:
        self._metrics.sessions_opened.labels(self.provider, self.protocol).inc()
        self._active.inc()

    def closed(self, code: int) -> None:
        self._active.dec()
        self._metrics.sessions_closed.labels(self.provider, self.protocol, str(code)).inc()

    def message(self) -> None:
        self.stats.frames_in += 1
        self._messages.inc()

    def audio(self, nbytes: int) -> None:
        self.stats.bytes_in += nbytes
        self._audio_bytes.inc(nbytes)

    def audio_seconds(self, seconds: float) -> None:
        self.stats.audio_seconds += seconds
        self._audio_seconds.inc(seconds)

    def loop_cut(self, result: Result) -> None:
        kind = "final" if result.is_final else "interim"
        self._metrics.loop_cuts.labels(self.provider, kind).inc()
        self._metrics.loop_words_removed.labels(self.provider, kind).inc(result.loop_words_removed)

    def result_sent(self, result: Result, latency: float | None) -> None:
        self.stats.results_out += 1
        self.stats.finals_out += result.is_final
        self._results[result.is_final].inc()
        if latency is not None:
            self._latency[result.is_final].observe(latency)

    def error(self, code: str) -> None:
        self.stats.errors_out += 1
        self._metrics.errors.labels(code).inc()

    def decode_error(self) -> None:
        self._metrics.decode_errors.labels(self.provider).inc()

    def held(self, seconds: float) -> None:
        self.stats.held_seconds += seconds
        self._metrics.held_seconds.labels(self.provider).inc(seconds)

    def untranscribed(self, seconds: float) -> None:
        self.stats.untranscribed_seconds += seconds
        self._metrics.untranscribed_seconds.labels(self.provider).inc(seconds)


class AudioClock:
    """When each point of a session's audio arrived, so a result's latency can be measured
    from the arrival of the audio it ends with. Pure; times come from the caller."""

    def __init__(self) -> None:
        self._ends: list[float] = []  # cumulative audio seconds after each chunk, ascending
        self._times: list[float] = []  # arrival time of that chunk

    def received(self, audio_end: float, now: float) -> None:
        self._ends.append(audio_end)
        self._times.append(now)

    def latency(self, result_end: float, now: float) -> float | None:
        """Seconds since the chunk holding ``result_end`` arrived; None before any audio."""
        if not self._ends:
            return None
        # Engines round timestamps; allow a millisecond so a result ending exactly on a chunk
        # boundary maps to that chunk, and clamp results that end past the last chunk to it.
        index = min(bisect.bisect_left(self._ends, result_end - 0.001), len(self._ends) - 1)
        return max(0.0, now - self._times[index])

    def forget_before(self, audio_time: float) -> None:
        """Drop chunks wholly before ``audio_time`` (a final never goes back)."""
        index = bisect.bisect_left(self._ends, audio_time - 0.001)
        if index > 0:
            del self._ends[:index], self._times[:index]
