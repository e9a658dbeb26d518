"""An output file of `generate`, `score` and `resolve` is written whole or not at all."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.cli import main
from streams.tools.output_file import write_lines


def test_a_write_that_fails_part_way_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "history.jsonl"
    out.write_text("previous\n")

    def lines() -> Iterator[bytes]:
        for n in range(10_000):
            if n == 5_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            yield b'{"n": %d}\n' % n

    with pytest.raises(OSError, match="No space"):
        write_lines(out, lines())
    assert out.read_text() == "previous\n" and [p.name for p in tmp_path.iterdir()] == ["history.jsonl"]
    write_lines(out, (b"%d\n" % n for n in range(3)))
    assert out.read_text() == "0\n1\n2\n"


def test_generate_that_cannot_write_leaves_the_previous_file(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    """`generate` wrote --out in place: a write that failed part-way (a file size limit here, a full disk
    in life) left a history cut in the middle of a line where the previous file had been (found in
    review)."""
    import resource
    import signal

    out = tmp_path / "history.jsonl"
    out.write_text("previous\n")
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (the write then fails with EFBIG)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, limit[1]))
    try:
        code = main(["generate", "--users", "50", "--days", "30", "--seed", "1", "--out", str(out)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("mailpulse: error: cannot write") and err.count("\n") == 1
    assert out.read_text() == "previous\n" and [p.name for p in tmp_path.iterdir()] == ["history.jsonl"]


def test_an_out_that_is_a_symlink_is_written_through_not_replaced(tmp_path: Path) -> None:
    """Moved into place, the new file replaced a symlink given as ``--out`` (and a FIFO, ``/dev/stdout``),
    and its target got nothing (found in review)."""
    target = tmp_path / "target.jsonl"
    target.write_text("previous\n")
    link = tmp_path / "out.jsonl"
    link.symlink_to(target)
    write_lines(link, [b"1\n", b"2\n"])
    assert link.is_symlink() and target.read_text() == "1\n2\n"


def test_a_write_stopped_by_ctrl_c_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Ctrl-C during `generate` (or `score`, `resolve`) left the hidden ``.<name>.<pid>.tmp`` beside
    ``--out``, as large as what was written by then (found in review)."""
    out = tmp_path / "history.jsonl"
    out.write_text("previous\n")

    def lines() -> Iterator[bytes]:
        yield b'{"n": 1}\n'
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_lines(out, lines())
    assert out.read_text() == "previous\n" and [p.name for p in tmp_path.iterdir()] == ["history.jsonl"]
