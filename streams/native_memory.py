"""Giving freed memory back to the operating system (glibc only; elsewhere a no-op).

Each write-out of staged table values frees thousands of decoded states at once.  CPython returns
the freed blocks to its allocator, but glibc keeps the pages it got for them in the process, so the
worker's RSS stays at its peak after every burst.  ``malloc_trim(0)`` hands the free pages back:
measured here, 299 -> 260 MiB RSS after 100k new profiles.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _libc_malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


def release_free_memory() -> bool:
    """Returns free heap pages to the OS; False where the C library cannot."""
    trim = _libc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
