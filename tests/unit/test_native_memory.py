"""Keeping the worker's native heap small: malloc arenas and giving freed memory back to the OS."""

import os
import platform
import subprocess
import sys

import pytest

from streams.native_memory import release_free_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def test_release_free_memory_runs_and_says_whether_it_could() -> None:
    blocks = [bytes(4096) for _ in range(10_000)]  # 40 MiB freed just before the call
    del blocks
    done = release_free_memory()
    assert done is GLIBC
    assert release_free_memory() is done  # again: same answer, no error


def _fresh_process_prints(code: str, *args: str, unset: str, **env: str) -> str:
    """What ``code`` prints in a new interpreter (mallopt changes a process for good), with the
    environment variable ``unset`` removed and ``env`` added."""
    clean = {k: v for k, v in os.environ.items() if k != unset}
    result = subprocess.run([sys.executable, "-c", code, *args], env={**clean, **env}, capture_output=True,
                            text=True, check=True)
    return result.stdout.strip()


def _limit_in_fresh_process(**env: str) -> str:
    code = "from streams.native_memory import limit_malloc_arenas; print(limit_malloc_arenas())"
    return _fresh_process_prints(code, unset="MALLOC_ARENA_MAX", **env)


def test_malloc_arenas_are_capped_unless_the_environment_says_how_many() -> None:
    assert _limit_in_fresh_process() == str(GLIBC)
    assert _limit_in_fresh_process(MALLOC_ARENA_MAX="4") == "False"  # glibc already read the user's choice


_MAPPED_AFTER_A_LARGE_FREE = """
import ctypes, sys
from streams.native_memory import fix_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
fixed = fix_mmap_threshold() if sys.argv[1] == "fixed" else None
libc.free(libc.malloc(4 * 2**20))  # a mapped block freed: glibc raises its threshold to 4 MiB
before = libc.mallinfo2().hblks
block = libc.malloc(512 * 1024)
print(fixed, libc.mallinfo2().hblks - before)  # 1: the 512 KiB block got a mapping of its own
libc.free(block)
"""


def _mapped_blocks_in_fresh_process(mode: str, **env: str) -> str:
    return _fresh_process_prints(_MAPPED_AFTER_A_LARGE_FREE, mode, unset="MALLOC_MMAP_THRESHOLD_", **env)


def test_fixed_mmap_threshold_keeps_large_blocks_out_of_the_heap() -> None:
    if not GLIBC:
        pytest.skip("needs glibc's mallinfo2")
    assert _mapped_blocks_in_fresh_process("glibc default") == "None 0"  # the raised threshold: heap
    assert _mapped_blocks_in_fresh_process("fixed") == "True 1"
    # glibc read the user's setting at start (fixed too): left alone
    assert _mapped_blocks_in_fresh_process("fixed", MALLOC_MMAP_THRESHOLD_="262144") == "False 1"
