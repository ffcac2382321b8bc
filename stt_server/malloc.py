"""glibc malloc tuning for the engines' working memory. Pure ctypes; a no-op off glibc.

Whisper's decoder (CTranslate2) allocates and frees tens of MiB per call. glibc keeps what is
freed for reuse, per arena, so the resident size ratchets up to the worst mix of calls ever
seen (+100 MiB for the fast sender of bench/capacity.py with nothing else done) although the
memory in use is bounded.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

# Each thread that allocates would get its own arena; the engines' worker threads (CTranslate2,
# ONNX Runtime) then kept ~100 MB more resident under load than with two (bench/RESULTS.md).
# MALLOC_ARENA_MAX in the environment, when set, wins.
ARENAS = 2
M_ARENA_MAX = -8  # glibc's mallopt() parameter number


def _libc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    # musl (Alpine) has neither: nothing to tune.
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def limit_arenas() -> None:
    """At start-up, before the engines' threads exist."""
    if _LIBC is not None and "MALLOC_ARENA_MAX" not in os.environ:
        _LIBC.mallopt(M_ARENA_MAX, ARENAS)


def release_free_memory() -> None:
    """Hand the pages freed by the last engine call back to the system (malloc_trim).

    Called after each Whisper batch: ~6 ms, plus page faults when the next call touches them
    again (~5% of the decode throughput); in exchange the fast sender's RSS growth fell from
    ~100 to ~60 MiB (bench/RESULTS.md).
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
