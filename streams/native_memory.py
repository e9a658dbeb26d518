"""Keeping the worker's native heap small (glibc only; elsewhere a no-op).

Each write-out of staged table values frees thousands of them at once.  glibc keeps the pages it got
for them in the process, so the worker's RSS stayed at its peak after every burst.
``malloc_trim(0)`` hands the free pages back: measured here, 299 -> 260 MiB RSS after 100k new
profiles.  :func:`limit_malloc_arenas` keeps the worker's threads from spreading what they free over
many heaps of their own, and :func:`fix_mmap_threshold` keeps large blocks out of the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache
from typing import Any

#: glibc's mallopt parameter for the most malloc arenas (malloc.h).
M_ARENA_MAX = -8
#: Arenas the worker allows itself (glibc's default: 8 per core).
WORKER_MALLOC_ARENAS = 2
#: glibc's mallopt parameter for the size from which malloc maps a block of its own (malloc.h).
M_MMAP_THRESHOLD = -3
#: That size for the worker: glibc's starting value, kept fixed.
WORKER_MMAP_THRESHOLD = 128 * 1024


@lru_cache(maxsize=2)
def _libc_function(name: str) -> Any:
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


def limit_malloc_arenas(arenas: int = WORKER_MALLOC_ARENAS) -> bool:
    """Caps glibc's malloc arenas, before the worker starts its threads.

    glibc gives a thread that finds the heap busy an arena of its own, up to 8 per core.  The
    worker's threads (librdkafka's, RocksDB's, the aiokafka consumer's, the metrics server) then
    each keep freed memory in their own arena, where neither it nor ``malloc_trim`` gives much
    back.  Measured here, one worker after 100k new profiles: 1,967 -> 1,688 bytes of RSS per
    profile with 2 arenas, and no fewer events/s.  ``MALLOC_ARENA_MAX`` in the environment, read
    by glibc itself, wins: then this does nothing.  False where it did nothing."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _libc_function("mallopt")
    return bool(mallopt is not None and mallopt(M_ARENA_MAX, arenas) == 1)


def fix_mmap_threshold(threshold: int = WORKER_MMAP_THRESHOLD) -> bool:
    """Keeps blocks of ``threshold`` bytes and more out of the heap, for good.

    glibc starts by mapping such blocks one by one (unmapped when freed), but raises the threshold
    to the size of each mapped block freed, up to 32 MiB.  In the worker RocksDB's memtable blocks
    (an eighth of a write buffer: 512 KiB by default) and large Python objects then came from the heap, between
    small long-lived blocks, and the heap grew for as long as the worker ran while the memory in use
    did not (README, `make soak`: 15 -> 38 MiB of free heap in a 26-minute soak).  Setting the threshold
    turns glibc's raising off.  ``MALLOC_MMAP_THRESHOLD_`` in the environment, read by glibc itself,
    wins: then this does nothing.  False where it did nothing."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    mallopt = _libc_function("mallopt")
    return bool(mallopt is not None and mallopt(M_MMAP_THRESHOLD, threshold) == 1)


def release_free_memory() -> bool:
    """Returns free heap pages to the OS; False where the C library cannot."""
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True
