"""An output file written whole or not at all."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def write_lines(out: Path, lines: Iterable[bytes]) -> None:
    """``lines`` into ``out`` through a temporary file beside it, moved into place once all is written:
    a failure part-way (a full disk, a file size limit) leaves ``out`` as it was, instead of cut short
    with what it held before gone.  Raises the ``OSError`` (the temporary file removed, as on Ctrl-C).  An
    ``out`` that is a symlink, a FIFO or a device (``/dev/stdout``) is written to, as it is: moved into
    place, the file would replace it."""
    if out.is_symlink() or (out.exists() and not out.is_file()):
        with out.open("wb") as handle:
            handle.writelines(lines)
        return
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.writelines(lines)
        tmp.replace(out)
    except BaseException:  # (Ctrl-C too: the partial file was left beside ``out``)
        tmp.unlink(missing_ok=True)
        raise
