"""Giving freed memory back to the OS."""

import platform

from streams.native_memory import release_free_memory


def test_release_free_memory_runs_and_says_whether_it_could() -> None:
    blocks = [bytes(4096) for _ in range(10_000)]  # 40 MiB freed just before the call
    del blocks
    done = release_free_memory()
    assert done is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert release_free_memory() is done  # again: same answer, no error
