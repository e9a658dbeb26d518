"""Keeping the worker's native heap small: malloc arenas and giving freed memory back to the OS."""

import os
import platform
import subprocess
import sys

from streams.native_memory import release_free_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def test_release_free_memory_runs_and_says_whether_it_could() -> None:
    blocks = [bytes(4096) for _ in range(10_000)]  # 40 MiB freed just before the call
    del blocks
    done = release_free_memory()
    assert done is GLIBC
    assert release_free_memory() is done  # again: same answer, no error


def _limit_in_fresh_process(**env: str) -> str:
    """Calls limit_malloc_arenas in a new interpreter (it changes the process for good)."""
    code = "from streams.native_memory import limit_malloc_arenas; print(limit_malloc_arenas())"
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    result = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                            check=True)
    return result.stdout.strip()


def test_malloc_arenas_are_capped_unless_the_environment_says_how_many() -> None:
    assert _limit_in_fresh_process() == str(GLIBC)
    assert _limit_in_fresh_process(MALLOC_ARENA_MAX="4") == "False"  # glibc already read the user's choice
